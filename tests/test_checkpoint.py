"""Checkpoints: exact round trip, atomic publication (a crash at every step of a save), corruption."""

import json
import os
import shutil

import numpy as np
import pytest

from tinygpt import checkpoint
from tinygpt.checkpoint import load_checkpoint, load_model, save_checkpoint
from tinygpt.errors import TinyGPTError
from tinygpt.model import GPT, GPTConfig
from tinygpt.optim import AdamW
from tinygpt.tokenizer import CharTokenizer

TOKENIZER = CharTokenizer.train("abcdefgh \n")


def _model(bias=False, seed=0):
    return GPT(GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=8,
                         bias=bias), seed=seed)


def _trained(bias=False, steps=2):
    model = _model(bias)
    opt = AdamW(model.params, lr=1e-2)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        idx = rng.integers(0, TOKENIZER.vocab_size, (2, 8))
        model.forward(idx, np.roll(idx, -1, axis=1))
        opt.step(model.backward())
    return model, opt


def _save(out, model, opt, step, best=False):
    rng_state = np.random.default_rng(step).bit_generator.state
    state = {"step": step, "best_val_loss": 1.5, "sampler_rng": rng_state}
    if best:
        state["best_step"] = step
    return save_checkpoint(out, model, TOKENIZER, opt, {"max_iters": 10, "note": "x"}, state, best=best)


@pytest.mark.parametrize("bias", [False, True])
def test_round_trip_is_exact(tmp_path, bias):
    model, opt = _trained(bias)
    _save(tmp_path, model, opt, 7)
    ckpt = load_checkpoint(tmp_path)
    assert set(ckpt.model.params) == set(model.params)  # bias=False stays bias-free
    for name, p in model.params.items():
        np.testing.assert_array_equal(ckpt.model.params[name], p)
    assert ckpt.model.config == model.config
    assert ckpt.tokenizer.decode(ckpt.tokenizer.encode("abc h")) == "abc h"
    assert ckpt.train_config == {"max_iters": 10, "note": "x"}
    assert ckpt.state["step"] == 7 and ckpt.state["best_val_loss"] == 1.5
    assert ckpt.state["sampler_rng"] == np.random.default_rng(7).bit_generator.state
    restored = AdamW(ckpt.model.params, lr=1e-2)
    restored.load_state_dict(ckpt.optimizer_state)
    assert restored.step_count == opt.step_count == 2
    for name in model.params:  # both moments, each under its own name (not zeros, not swapped)
        assert opt.exp_avg[name].any() and not np.array_equal(opt.exp_avg[name], opt.exp_avg_sq[name])
        np.testing.assert_array_equal(restored.exp_avg[name], opt.exp_avg[name], err_msg=name)
        np.testing.assert_array_equal(restored.exp_avg_sq[name], opt.exp_avg_sq[name], err_msg=name)
    m, tok = load_model(tmp_path)
    np.testing.assert_array_equal(m.params["wte.weight"], model.params["wte.weight"])


def test_the_erf_gelu_survives_a_round_trip(tmp_path):
    # GPTConfig.gelu "erf" (a nanoGPT model's, fine-tuned) is in the config the checkpoint keeps: loaded
    # back as the tanh default, every logit would move by up to ~1e-4 and training would go on with it
    config = GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=8,
                       gelu="erf")
    model = GPT(config, seed=0)
    _save(tmp_path, model, AdamW(model.params, lr=1e-2), 1)
    loaded = load_model(tmp_path)[0]
    assert loaded.config.gelu == "erf"
    idx = np.array([[1, 2, 3, 4]])
    np.testing.assert_array_equal(loaded.forward(idx)[0], model.forward(idx)[0])


def test_an_optimizer_with_eps_zero_loads_back(tmp_path):
    # AdamW takes eps >= 0, as torch's does: the checkpoint it writes must not then be called corrupt
    model = _model()
    opt = AdamW(model.params, lr=1e-2, eps=0.0)
    _save(tmp_path, model, opt, 1)
    restored = AdamW(model.params, lr=1e-2)
    restored.load_state_dict(load_checkpoint(tmp_path).optimizer_state)
    assert restored.eps == 0.0


def test_layout_pointer_and_cleanup(tmp_path):
    model, opt = _trained()
    first = _save(tmp_path, model, opt, 1)
    second = _save(tmp_path, model, opt, 2)
    assert os.readlink(tmp_path / "latest") == os.path.join("checkpoints", "step-00000002")
    assert not first.exists() and second.is_dir()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000002"]
    for name in checkpoint.CHECKPOINT_FILES:  # DIR reads like a model directory
        assert (tmp_path / name).is_file()
    assert json.loads((tmp_path / "state.json").read_text())["step"] == 2


def test_later_saves_delete_only_their_own_entries(tmp_path):
    # A resumed run's saves must not destroy what the user put beside the checkpoints since the first save:
    # a note in checkpoints/, a copy of a checkpoint under their own name, a real file where a link was.
    model, opt = _trained()
    _save(tmp_path, model, opt, 1)
    ckpt_root = tmp_path / "checkpoints"
    (ckpt_root / "NOTES.txt").write_text("lr 3e-4 was too high")
    shutil.copytree(ckpt_root / "step-00000001", ckpt_root / "keep-step-1")
    shutil.copytree(ckpt_root / "step-00000001", ckpt_root / "step-00000001-best")
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "tokenizer.json").write_text("mine")
    # what a crashed save leaves behind, which the next save does clean up
    (ckpt_root / ".tmp-step-00000002-ab_cd3fg").mkdir()
    (ckpt_root / "step-00000002-4242-xy_z12").mkdir()
    _save(tmp_path, model, opt, 3)
    assert sorted(p.name for p in ckpt_root.iterdir()) == [
        "NOTES.txt", "keep-step-1", "step-00000001-best", "step-00000003"]
    assert (ckpt_root / "NOTES.txt").read_text() == "lr 3e-4 was too high"
    assert (tmp_path / "tokenizer.json").read_text() == "mine"
    assert load_checkpoint(tmp_path).state["step"] == 3


def test_the_best_checkpoint_is_kept_while_newer_ones_replace_one_another(tmp_path):
    model, opt = _trained()
    ckpt_root = tmp_path / "checkpoints"
    _save(tmp_path, model, opt, 1, best=True)
    assert os.readlink(tmp_path / "best") == "checkpoints/step-00000001"
    for step in (2, 3):  # not better: the best stays, the previous latest goes
        _save(tmp_path, model, opt, step)
        assert sorted(p.name for p in ckpt_root.iterdir()) == ["step-00000001", f"step-{step:08d}"]
        assert os.readlink(tmp_path / "best") == "checkpoints/step-00000001"
    assert load_checkpoint(tmp_path / "best").state["step"] == 1  # a checkpoint directory loads as a run
    assert load_checkpoint(tmp_path).state["step"] == 3
    _save(tmp_path, model, opt, 4, best=True)  # better: both links name it, nothing else is kept
    assert sorted(p.name for p in ckpt_root.iterdir()) == ["step-00000004"]
    assert os.readlink(tmp_path / "best") == os.readlink(tmp_path / "latest") == "checkpoints/step-00000004"


def test_a_new_runs_first_save_drops_an_earlier_runs_best(tmp_path):
    # an earlier run's links left behind, its checkpoints gone: a first save that is not a best (a
    # fine-tuning run without a val split never has one) must not leave `best` naming the earlier run's
    model, opt = _trained()
    (tmp_path / "best").symlink_to("checkpoints/step-00000007")
    _save(tmp_path, model, opt, 1)
    assert not (tmp_path / "best").is_symlink()
    (tmp_path / "best").symlink_to("checkpoints/step-00000001")
    _save(tmp_path, model, opt, 2)  # a later save of the run: its best is left alone
    assert os.readlink(tmp_path / "best") == "checkpoints/step-00000001"


def test_a_best_link_spelled_another_way_still_keeps_its_checkpoint(tmp_path):
    # a link the user made by hand (absolute, or ./checkpoints/..., or with a trailing slash) names the
    # same checkpoint as ours: pruning went by the link's text and deleted it, leaving `best` dangling
    model, opt = _trained()
    for i, spelling in enumerate(("{root}/step-00000001", "./checkpoints/step-00000001",
                                  "checkpoints/step-00000001/")):
        run = tmp_path / f"run{i}"
        _save(run, model, opt, 1, best=True)
        (run / "best").unlink()
        (run / "best").symlink_to(spelling.format(root=(run / "checkpoints").resolve()))
        _save(run, model, opt, 2)
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]
        assert load_checkpoint(run / "best").state["step"] == 1, spelling


def test_a_best_of_the_users_is_refused_before_anything_is_written(tmp_path):
    model, opt = _trained()
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "best").mkdir()  # a folder of theirs, where a run would swap its link in
    with pytest.raises(TinyGPTError, match="already holds a best that tinygpt did not write"):
        _save(tmp_path / "new", model, opt, 1, best=True)
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["best"]
    run = tmp_path / "run"  # a run whose best link was replaced by a copy of the checkpoint (cp -rL)
    _save(run, model, opt, 1, best=True)
    (run / "best").unlink()
    shutil.copytree(run / "checkpoints" / "step-00000001", run / "best")
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    with pytest.raises(TinyGPTError, match="best is a directory, not the link tinygpt keeps to the best "
                                           "checkpoint.*nothing was changed"):
        _save(run, model, opt, 2)
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before


def test_transformers_loads_the_output_directory(tmp_path):
    import torch
    import transformers
    model, opt = _trained(bias=True)
    _save(tmp_path, model, opt, 3)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    idx = np.array([[1, 2, 3, 4, 5, 0]])
    model.eval()
    logits, _ = model.forward(idx)
    with torch.no_grad():
        expected = hf(torch.tensor(idx)).logits.numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


# Every operation of a save that a crash could fall between: each fsync, rename, symlink and delete.
_CRASH_POINTS = [(checkpoint, "_fsync_path"), (os, "rename"), (os, "replace"), (os, "symlink"),
                 (os, "unlink"), (shutil, "rmtree")]


def _save_crashing_at(out, model, opt, step, crash_at, monkeypatch, best=False):
    """Save ``step`` in a forked child that dies abruptly (no cleanup, no finally) at its ``crash_at``-th
    operation of _CRASH_POINTS; True if it died there, False if the save completed first."""
    pid = os.fork()
    if pid == 0:  # child
        count = [0]
        for owner, name in _CRASH_POINTS:
            original = getattr(owner, name)

            def crashing(*args, _original=original, _count=count, _at=crash_at, **kwargs):
                _count[0] += 1
                if _count[0] == _at:
                    os._exit(17)
                return _original(*args, **kwargs)

            monkeypatch.setattr(owner, name, crashing)
        try:
            _save(out, model, opt, step, best=best)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 17


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork to crash a process mid-save")
def test_crash_at_every_point_of_a_save_leaves_old_or_new_checkpoint(tmp_path, monkeypatch):
    model, opt = _trained()
    _save(tmp_path, model, opt, 1)
    crash_at = 0
    while True:
        crash_at += 1
        crashed = _save_crashing_at(tmp_path, model, opt, 2, crash_at, monkeypatch)
        step = load_checkpoint(tmp_path).state["step"]  # must load, whatever the crash point
        assert step in (1, 2)
        if not crashed:
            break
        if step == 2:  # the crash came after publication: reset to the old checkpoint and go on
            _save(tmp_path, model, opt, 1)
    assert crash_at > 10  # the save really passed through many crash points
    assert load_checkpoint(tmp_path).state["step"] == 2
    _save(tmp_path, model, opt, 3)  # leftovers of the crashes are cleaned up by the next save
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000003"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork to crash a process mid-save")
def test_a_crash_at_each_operation_of_one_save_leaves_old_or_new_checkpoint(tmp_path, monkeypatch):
    """The test above carries each crash's leftovers into the next save, whose extra deletes shift the
    count, so some operations are never the crash point: a `latest` swapped by unlink + symlink (not one
    atomic rename) passed it. Here every save starts from a copy of the same directory, so each operation
    of that one save is the crash point exactly once."""
    model, opt = _trained()
    template, run = tmp_path / "template", tmp_path / "run"
    _save(template, model, opt, 1)
    crash_at = 0
    while True:
        crash_at += 1
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(template, run, symlinks=True)
        crashed = _save_crashing_at(run, model, opt, 2, crash_at, monkeypatch)
        assert load_checkpoint(run).state["step"] in (1, 2), f"crash at operation {crash_at}"
        if not crashed:
            break
    assert crash_at > 10
    assert load_checkpoint(run).state["step"] == 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork to crash a process mid-save")
def test_a_crash_at_each_operation_of_a_best_save_leaves_a_best_that_loads(tmp_path, monkeypatch):
    # step 1 the best, then step 2 better still: whatever operation the crash falls on, `best` names a
    # complete checkpoint, and a resume's repair_best_link points it at step 2 if step 2 was published
    model, opt = _trained()
    template, run = tmp_path / "template", tmp_path / "run"
    _save(template, model, opt, 1, best=True)
    crash_at, stale = 0, 0
    while True:
        crash_at += 1
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(template, run, symlinks=True)
        crashed = _save_crashing_at(run, model, opt, 2, crash_at, monkeypatch, best=True)
        latest = load_checkpoint(run).state
        best = load_checkpoint(run / "best").state["step"]
        assert (latest["step"], best) in ((1, 1), (2, 1), (2, 2)), f"crash at operation {crash_at}"
        stale += (latest["step"], best) == (2, 1)  # published, then the crash before `best` was swapped
        checkpoint.repair_best_link(run, latest)
        assert load_checkpoint(run / "best").state["step"] == latest["step"]
        if not crashed:
            break
    assert crash_at > 10 and stale >= 1  # the window repair_best_link closes was hit


def test_an_unavailable_backend_is_not_called_a_corrupt_checkpoint(tmp_path):
    from tinygpt.kernels import cuda_unavailable_reason

    model, opt = _trained()
    _save(tmp_path, model, opt, 1)
    with pytest.raises(TinyGPTError, match="^unknown backend 'tpu'"):
        load_model(tmp_path, backend="tpu")
    if cuda_unavailable_reason() is not None:
        with pytest.raises(TinyGPTError, match="^backend 'cuda' is unavailable"):
            load_model(tmp_path, backend="cuda")


def test_load_checkpoint_uses_the_backend_the_run_was_trained_with(tmp_path):
    # backends agree only to rounding: an exact resume must keep the run's own unless told otherwise
    model, opt = _trained()
    save_checkpoint(tmp_path / "numba", model, TOKENIZER, opt, {"backend": "numba"}, {"step": 1})
    save_checkpoint(tmp_path / "unrecorded", model, TOKENIZER, opt, {}, {"step": 1})
    assert load_checkpoint(tmp_path / "numba").model.backend == "numba"
    assert load_checkpoint(tmp_path / "numba", backend="numpy").model.backend == "numpy"
    assert load_checkpoint(tmp_path / "unrecorded").model.backend == "numpy"


def test_missing_and_corrupt_checkpoints_raise(tmp_path):
    with pytest.raises(TinyGPTError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(TinyGPTError, match="no checkpoint"):
        load_checkpoint(tmp_path)
    model, opt = _trained()
    path = _save(tmp_path, model, opt, 4)

    weights = path / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(TinyGPTError, match="corrupt.*model.safetensors"):
        load_checkpoint(tmp_path)
    weights.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # same size, one bit flipped
    with pytest.raises(TinyGPTError, match="corrupt"):
        load_model(tmp_path)
    weights.write_bytes(good)
    load_checkpoint(tmp_path)

    (path / "state.json").write_text("{not json")
    with pytest.raises(TinyGPTError, match="corrupt.*state.json"):
        load_checkpoint(tmp_path)
    shutil.rmtree(path)
    with pytest.raises(TinyGPTError, match="missing directory"):
        load_checkpoint(tmp_path)
    path.write_text("not a checkpoint")  # the link's target a file: it was called "a missing directory"
    with pytest.raises(TinyGPTError, match="latest points to a file, not a checkpoint directory"):
        load_checkpoint(tmp_path)


def test_a_latest_link_that_loops_is_a_corrupt_checkpoint_not_a_traceback(tmp_path, capsys):
    # Path.resolve() raised RuntimeError("Symlink loop") (Python < 3.13): a traceback from `sample --out`
    from tinygpt.cli import main

    model, opt = _trained()
    _save(tmp_path, model, opt, 1)
    (tmp_path / "latest").unlink()
    (tmp_path / "latest").symlink_to("latest")
    with pytest.raises(TinyGPTError, match="corrupt checkpoint"):
        load_checkpoint(tmp_path)
    assert main(["sample", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tinygpt: error: corrupt checkpoint") and err.count("\n") == 1, err


def test_a_run_copied_with_its_latest_link_followed_is_refused_before_anything_is_written(tmp_path, capsys):
    # `cp -rL run copy`: `latest` becomes a real directory. Reading works; a save used to publish its
    # step directory and then fail to swap the link in over the directory (and a resume did so every time)
    import shutil

    model, opt = _trained()
    _save(tmp_path / "run", model, opt, 1)
    shutil.copytree(tmp_path / "run", tmp_path / "copy", symlinks=False)
    copy = tmp_path / "copy"
    assert (copy / "latest").is_dir() and not (copy / "latest").is_symlink()
    assert load_checkpoint(copy).state["step"] == 1
    before = sorted(str(p.relative_to(copy)) for p in copy.rglob("*"))
    with pytest.raises(TinyGPTError, match="is a directory, not the link.*nothing was changed"):
        _save(copy, model, opt, 2)
    assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*")) == before
    from tinygpt.cli import main

    rc = main(["train", "--resume", "--out", str(copy), "--max-iters", "3", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "not a training run" in err and err.count("\n") == 1  # refused before training
    assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*")) == before


def test_a_transformers_directory_where_a_run_is_expected_says_what_it_is(tmp_path, capsys):
    # `sample --out`, `eval --out`, `--init-from` of a GPT-2 directory said "train one first"
    from tinygpt.cli import main

    GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)).save_pretrained(tmp_path)
    with pytest.raises(TinyGPTError, match="looks like a transformers GPT-2 directory.*--pretrained"):
        load_checkpoint(tmp_path)
    assert main(["sample", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--pretrained" in err, err


def test_checkpoint_files_get_the_usual_permissions_not_owner_only(tmp_path):
    """The staging directory comes from mkdtemp (0700); a published checkpoint must be readable as usual."""
    import stat

    from tinygpt.checkpoint import checkpoint_path, save_checkpoint
    from tinygpt.model import GPT, GPTConfig
    from tinygpt.tokenizer import CharTokenizer

    tokenizer = CharTokenizer.train("abc\n")
    model = GPT(GPTConfig(tokenizer.vocab_size, 8, 1, 1, 8), seed=0)
    save_checkpoint(tmp_path / "run", model, tokenizer, None, {}, {"step": 1})
    umask = os.umask(0)
    os.umask(umask)
    ckpt = checkpoint_path(tmp_path / "run")
    assert stat.S_IMODE(ckpt.stat().st_mode) == 0o777 & ~umask
    for entry in ckpt.iterdir():
        assert stat.S_IMODE(entry.stat().st_mode) == 0o666 & ~umask, entry.name


@pytest.mark.parametrize("umask", [0o002, 0o077])
def test_checkpoint_permissions_follow_the_umask(tmp_path, umask):
    """The modes come from the umask (a group-writable 002 on a shared machine, a private 077), not fixed
    0755/0644 values, which the usual umask 022 alone cannot tell apart."""
    import stat

    model, opt = _trained()
    old = os.umask(umask)
    try:
        path = _save(tmp_path / "run", model, opt, 1)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~umask
    for entry in path.iterdir():
        assert stat.S_IMODE(entry.stat().st_mode) == 0o666 & ~umask, entry.name


def test_a_save_that_cannot_write_is_one_error_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """A full disk mid-save is a TinyGPTError saying the previous checkpoint is intact (not an OSError
    traceback), and the staging directory is removed."""
    model, opt = _trained()
    _save(tmp_path, model, opt, 1)

    def disk_full(path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(TOKENIZER, "save", disk_full)
    with pytest.raises(TinyGPTError, match="step 2.*No space left.*previous checkpoint is intact"):
        _save(tmp_path, model, opt, 2)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path).state["step"] == 1
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000001"]



def test_a_save_whose_files_fail_to_reach_the_disk_is_not_published(tmp_path, monkeypatch):
    """A write refused only at fsync (a full disk or a quota as NFS reports them, an I/O error) was ignored:
    the checkpoint was published and the previous one deleted, so once the cached pages were gone neither
    was whole. Now it is the full disk's error, and the previous checkpoint stays the current one."""
    model, opt = _trained()
    _save(tmp_path, model, opt, 1)
    real_fsync = os.fsync

    def fsync_failing_on_the_moments(fd):  # (the file save_checkpoint writes and fsyncs itself)
        moments = {p.stat().st_ino for p in (tmp_path / "checkpoints").glob(".tmp-*/optimizer.safetensors")}
        if os.fstat(fd).st_ino in moments:
            raise OSError(122, "Disk quota exceeded")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_failing_on_the_moments)
    with pytest.raises(TinyGPTError, match="step 2.*Disk quota exceeded.*previous checkpoint is intact"):
        _save(tmp_path, model, opt, 2)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path).state["step"] == 1
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000001"]

def test_a_first_save_that_cannot_write_claims_no_previous_checkpoint(tmp_path, monkeypatch):
    """A run's first save (step 0 of `tinygpt train` on a full disk) has no checkpoint before it: the error
    said 'the previous checkpoint is intact' all the same."""
    model, opt = _trained()

    def disk_full(path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(TOKENIZER, "save", disk_full)
    with pytest.raises(TinyGPTError, match="step 0.*No space left.*no checkpoint was saved") as error:
        _save(tmp_path, model, opt, 0)
    assert "previous" not in str(error.value)
    assert list((tmp_path / "checkpoints").iterdir()) == []  # no staging directory left either


def test_resaving_the_live_step_with_a_relative_dir_never_removes_it_first(tmp_path, monkeypatch):
    model, opt = _trained()
    monkeypatch.chdir(tmp_path)
    _save("run", model, opt, 1)

    def killed(*args):
        raise KeyboardInterrupt  # as if the process died at the rename

    monkeypatch.setattr(checkpoint.os, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        _save("run", model, opt, 1)  # the same step again: must publish beside the live one, not over it
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "run").state["step"] == 1


def test_resaving_the_step_best_names_never_removes_or_rewrites_the_best(tmp_path):
    # step 1 a best, then saved twice more, not as a best: the second re-save took step-00000001 for a
    # leftover (it is not what latest names) and deleted it, then published the new, not-best checkpoint
    # under that name, so `best` named it (and nothing at all in between)
    model, opt = _trained()
    _save(tmp_path, model, opt, 1, best=True)
    best_state = (tmp_path / "checkpoints" / "step-00000001" / "state.json").read_bytes()
    for _ in range(2):
        _save(tmp_path, model, opt, 1)
        assert os.readlink(tmp_path / "best") == "checkpoints/step-00000001"
        assert (tmp_path / "best" / "state.json").read_bytes() == best_state
        assert os.readlink(tmp_path / "latest") != "checkpoints/step-00000001"
    assert len(list((tmp_path / "checkpoints").iterdir())) == 2  # the best and the latest re-save
    _save(tmp_path, model, opt, 1, best=True)  # a re-save that is the best: both links name it, alone
    assert os.readlink(tmp_path / "best") == os.readlink(tmp_path / "latest")
    assert len(list((tmp_path / "checkpoints").iterdir())) == 1


def test_atomic_writes_get_the_mode_open_would_give_or_keep_the_old_one(tmp_path):
    # mkstemp's 0600 leaked into tokenizer files, save_pretrained's weights, token caches, metrics.jsonl
    import stat

    from tinygpt.files import current_umask, write_atomic
    from tinygpt.model import GPT, GPTConfig

    write_atomic(tmp_path / "new.txt", b"x")
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o666 & ~current_umask()
    (tmp_path / "new.txt").chmod(0o640)
    write_atomic(tmp_path / "new.txt", b"y")
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o640
    GPT(GPTConfig(11, 8, 1, 1, 8), seed=0).save_pretrained(tmp_path / "model")
    for entry in (tmp_path / "model").iterdir():
        assert stat.S_IMODE(entry.stat().st_mode) == 0o666 & ~current_umask(), entry.name


def test_a_reader_racing_a_save_gets_the_old_or_the_new_checkpoint_not_an_error(tmp_path, monkeypatch):
    # A run publishes step 2 and deletes step 1 while a reader is between verifying step 1 and loading it:
    # the reader reported "corrupt checkpoint" (5 in 8,000 loads beside a training run)
    import tinygpt.checkpoint as ck
    from tinygpt.model import GPT, GPTConfig
    from tinygpt.tokenizer import CharTokenizer

    tokenizer = CharTokenizer.train("abc\n")
    model = GPT(GPTConfig(tokenizer.vocab_size, 8, 1, 1, 8), seed=0)
    ck.save_checkpoint(tmp_path / "run", model, tokenizer, None, {}, {"step": 1})
    verify = ck._verify
    saves = []

    def verify_then_lose_the_race(path):
        state = verify(path)
        if not saves:
            saves.append(ck.save_checkpoint(tmp_path / "run", model, tokenizer, None, {}, {"step": 2}))
        return state

    monkeypatch.setattr(ck, "_verify", verify_then_lose_the_race)
    assert ck.load_checkpoint(tmp_path / "run").state["step"] == 2
    # nothing published meanwhile: a missing file is still the one-line corrupt-checkpoint error
    (ck.checkpoint_path(tmp_path / "run") / "tokenizer.json").unlink()
    with pytest.raises(TinyGPTError, match="corrupt checkpoint"):
        ck.load_checkpoint(tmp_path / "run")


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update(elapsed="x"), "invalid elapsed"),  # each of these was a traceback on resume
    (lambda s: s.update(tokens_seen=None), "invalid tokens_seen"),
    (lambda s: s.update(best_val_loss="a"), "invalid best_val_loss"),
    (lambda s: s["optimizer"].update(step=-3), "invalid optimizer step"),
    (lambda s: s["optimizer"].update(eps=-1), "invalid optimizer eps"),  # resumed with it: AdamW's eps
    (lambda s: s["optimizer"].update(eps=float("nan")), "invalid optimizer eps"),
    (lambda s: s.update(format=99), "format 99"),  # a newer tinygpt's checkpoint was read as ours
    (lambda s: s.update(sampler_rng="PCG64"), "malformed sampler_rng"),  # not a bit generator state
    (lambda s: s.update(dropout_rng=[1, 2]), "malformed dropout_rng"),
    (lambda s: s["files"].pop("tokenizer.json"), "lacks the file list"),  # that file went unverified
])
def test_state_json_with_values_resuming_cannot_use_is_refused(tmp_path, edit, message):
    import tinygpt.checkpoint as ck
    from tinygpt.model import GPT, GPTConfig
    from tinygpt.tokenizer import CharTokenizer

    tokenizer = CharTokenizer.train("abc\n")
    ck.save_checkpoint(tmp_path / "run", GPT(GPTConfig(tokenizer.vocab_size, 8, 1, 1, 8), seed=0), tokenizer,
                       None, {}, {"step": 1, "elapsed": 1.0, "tokens_seen": 8, "best_val_loss": 2.0})
    state_path = ck.checkpoint_path(tmp_path / "run") / "state.json"
    state = json.loads(state_path.read_text())
    state.setdefault("optimizer", {})
    edit(state)
    state_path.write_text(json.dumps(state))
    with pytest.raises(TinyGPTError, match=message):
        ck.load_checkpoint(tmp_path / "run")


def test_a_new_run_replaces_only_metrics_a_run_of_its_kind_wrote(tmp_path):
    # JSON rows are not enough: a fine-tuning run's rows (or another tool's) are not a training run's
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 0, "epoch": 1, "val_acc": 0.5}\n')
    with pytest.raises(TinyGPTError, match="already holds a metrics.jsonl that tinygpt did not write"):
        checkpoint.check_metrics_are_ours(tmp_path, {"step", "train_loss"})
    checkpoint.check_metrics_are_ours(tmp_path, {"step", "epoch"})
    metrics.write_text('{"step": 0, "train_loss": 3.1, "val_loss": 3.2}\n')
    checkpoint.check_metrics_are_ours(tmp_path, {"step", "train_loss"})


def test_a_tokenizer_larger_than_its_model_is_refused_at_save_and_at_load(tmp_path, monkeypatch):
    # ids the model has no embedding row for failed only later, at the first such id (and only `sample`
    # checked); now the save writes nothing and the load names the checkpoint
    n = TOKENIZER.vocab_size
    small = GPT(GPTConfig(vocab_size=n - 3, block_size=8, n_layer=1, n_head=1, n_embd=8), seed=0)
    too_many = f"the tokenizer has {n} tokens, the model only {n - 3}$"
    with pytest.raises(TinyGPTError, match=f"^cannot save a checkpoint into .*: {too_many}"):
        save_checkpoint(tmp_path / "run", small, TOKENIZER, None, {}, {"step": 1})
    assert not (tmp_path / "run").exists()
    # one written without the check (an older tinygpt's, a hand-made one) is refused when it is loaded
    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "check_tokenizer_fits", lambda *args: None)
        save_checkpoint(tmp_path / "run", small, TOKENIZER, None, {}, {"step": 1})
    for load in (load_checkpoint, load_model):
        with pytest.raises(TinyGPTError, match=f"^corrupt checkpoint in .*step-00000001: {too_many}"):
            load(tmp_path / "run")
    # a model padded past its tokenizer (nanoGPT's 50304 for GPT-2's 50257) is fine
    padded = GPT(GPTConfig(vocab_size=n + 5, block_size=8, n_layer=1, n_head=1, n_embd=8), seed=0)
    save_checkpoint(tmp_path / "padded", padded, TOKENIZER, None, {}, {"step": 1})
    assert load_model(tmp_path / "padded")[0].config.vocab_size == n + 5


def test_a_save_fsyncs_its_files_through_descriptors_that_windows_can_fsync(tmp_path, monkeypatch):
    """Windows' fsync (FlushFileBuffers) refuses a descriptor opened read-only (EBADF). _fsync_path opened the
    checkpoint's files read-only, harmless while it ignored fsync's errors; once those failed the save,
    every save there failed ('could not write the checkpoint of step 1 ... (Bad file descriptor)'). The
    rule is played here: a read-only descriptor's fsync fails (a directory's error is ignored, as there);
    on Windows itself, which has no fcntl to read a descriptor's mode with, its own fsync plays it."""
    import errno

    try:
        import fcntl
    except ImportError:  # (as checkpoint's run lock does: `import fcntl` failed the test on Windows)
        fcntl = None
    real_fsync = os.fsync

    def fsync_as_windows(fd):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, "Bad file descriptor")
        real_fsync(fd)

    model, opt = _trained()
    if fcntl is not None:
        monkeypatch.setattr(os, "fsync", fsync_as_windows)
    _save(tmp_path, model, opt, 1)
    _save(tmp_path, model, opt, 2)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path).state["step"] == 2
