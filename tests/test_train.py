"""The training loop and its commands: exact resume, SIGKILL at random moments, divergence, eval, plot,
configs, and bad input (one line on stderr, exit 2)."""

import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import break_weights_at_update, one_line_error

from tinygpt import data as tinygpt_data
from tinygpt import train as training
from tinygpt.checkpoint import load_checkpoint
from tinygpt.cli import main
from tinygpt.errors import TinyGPTError
from tinygpt.files import current_umask
from tinygpt.model import GPT, GPTConfig
from tinygpt.tokenizer import BPETokenizer

TEXT = ("ROMEO:\nBut, soft! what light through yonder window breaks?\n"
        "It is the east, and Juliet is the sun.\n\n"
        "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\n\n") * 12

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
        "--eval-iters", "2", "--warmup-iters", "2", "--backend", "numpy", "--quiet"]
WALL_CLOCK = ("tokens_per_sec", "elapsed")  # measurements, not results


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "input.txt"
    path.write_text(TEXT)
    return path


def _rows(out):
    rows = training.read_metrics(Path(out) / "metrics.jsonl")
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in rows]


def _config(corpus, out, **kw):
    values = {"data": str(corpus), "out": str(out), "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16,
              "batch_size": 4, "eval_iters": 2, "warmup_iters": 2, "backend": "numpy", **kw}
    return training.make_config(values)


def test_training_lowers_the_loss_and_writes_metrics(corpus, tmp_path):
    cfg = _config(corpus, tmp_path / "run", max_iters=60, eval_interval=20, learning_rate=1e-2,
                  min_lr=1e-3, bias=True)
    summary = training.train(cfg, quiet=True)
    rows = training.read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 20, 40, 60]
    for row in rows:
        assert {"step", "train_loss", "val_loss", "lr", "tokens_per_sec", "elapsed"} <= set(row)
    assert rows[0]["val_loss"] == pytest.approx(math.log(len(set(TEXT))), abs=0.15)  # uniform at init
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.8
    assert rows[-1]["tokens_per_sec"] > 0 and rows[-1]["tokens"] == 60 * 4 * 16
    assert summary["val_loss"] == rows[-1]["val_loss"] and summary["step"] == 60
    assert (tmp_path / "run" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.state["step"] == 60 and ckpt.state["best_val_loss"] == min(r["val_loss"] for r in rows)
    assert ckpt.train_config["lr_decay_iters"] == 60  # resolved once, saved for resume


def test_stopped_and_resumed_run_writes_exactly_the_uninterrupted_metrics(corpus, tmp_path):
    # dropout and gradient accumulation on, so the dropout RNG and micro-batching must resume exactly too
    kw = {"dropout": 0.1, "grad_accum_steps": 2, "eval_interval": 3, "lr_decay_iters": 9}
    training.train(_config(corpus, tmp_path / "full", max_iters=9, **kw), quiet=True)
    training.train(_config(corpus, tmp_path / "part", max_iters=6, **kw), quiet=True)
    training.train(training.TrainConfig(out=str(tmp_path / "part")), resume=True, quiet=True,
                   overrides={"max_iters": 9})
    assert _rows(tmp_path / "part") == _rows(tmp_path / "full")
    assert [r["step"] for r in _rows(tmp_path / "full")] == [0, 3, 6, 9]
    assert [r["tokens"] for r in _rows(tmp_path / "full")] == [0, 384, 768, 1152]  # B * T * 2 micro-batches
    full, part = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "part")
    for name, p in full.model.params.items():
        np.testing.assert_array_equal(part.model.params[name], p, err_msg=name)
    assert part.state["sampler_rng"] == full.state["sampler_rng"]


def test_recompute_trains_the_same_run_replaying_every_block(corpus, tmp_path, monkeypatch):
    # --recompute trades memory for compute only: the same metrics and weights, each block run twice a step
    from tinygpt.model import GPT

    calls = []
    block_forward = GPT._block_forward
    monkeypatch.setattr(GPT, "_block_forward", lambda self, *a: calls.append(1) or block_forward(self, *a))
    kw = {"dropout": 0.1, "grad_accum_steps": 2, "eval_interval": 3, "max_iters": 6}
    runs = {}
    for recompute in (False, True):
        calls.clear()
        out = tmp_path / str(recompute)
        training.train(_config(corpus, out, recompute=recompute, **kw), quiet=True)
        runs[recompute] = _rows(out), load_checkpoint(out), len(calls)
    (rows, ckpt, n_plain), (rows_r, ckpt_r, n_recompute) = runs[False], runs[True]
    assert [{k: v for k, v in r.items() if k not in ("tokens_per_sec", "elapsed")} for r in rows_r] == [
        {k: v for k, v in r.items() if k not in ("tokens_per_sec", "elapsed")} for r in rows]
    for name, p in ckpt.model.params.items():
        np.testing.assert_array_equal(ckpt_r.model.params[name], p, err_msg=name)
    n_layer = ckpt.model.config.n_layer
    assert n_recompute - n_plain == 6 * 2 * n_layer  # one replay per block, micro-batch and step
    assert ckpt_r.train_config["recompute"] is True


def test_resume_refuses_to_change_the_model_shape(corpus, tmp_path):
    training.train(_config(corpus, tmp_path / "run", max_iters=2, eval_interval=2), quiet=True)
    with pytest.raises(TinyGPTError, match="cannot change --n-layer"):
        training.train(training.TrainConfig(out=str(tmp_path / "run")), resume=True, quiet=True,
                       overrides={"n_layer": 2})
    with pytest.raises(TinyGPTError, match="cannot change --seed"):  # it draws the fixed eval batches
        training.train(training.TrainConfig(out=str(tmp_path / "run")), resume=True, quiet=True,
                       overrides={"seed": 5})
    with pytest.raises(TinyGPTError, match="already holds a checkpoint"):
        training.train(_config(corpus, tmp_path / "run", max_iters=2), quiet=True)


def test_resume_with_a_warmup_past_the_runs_saved_decay_says_so_and_what_to_do(corpus, tmp_path, capsys):
    # the run's lr_decay_iters is resolved at its start (its --max-iters, 4) and saved: --resume
    # --warmup-iters 8 said "--lr-decay-iters (4) must be >= --warmup-iters (8)", a value never given, no cure
    training.train(_config(corpus, tmp_path / "run", max_iters=4, eval_interval=2), quiet=True)
    run = str(tmp_path / "run")
    line = one_line_error(capsys, ["train", "--resume", "--out", run, "--max-iters", "10",
                                   "--warmup-iters", "8"])
    assert line == (f"tinygpt: error: --warmup-iters 8 is past the run's lr_decay_iters, 4 (saved in {run}: "
                    "the step its learning rate reaches --min-lr); give --lr-decay-iters N of at least 8 "
                    "with it, or a --warmup-iters of at most 4")
    line = one_line_error(capsys, ["train", "--resume", "--out", run, "--lr-decay-iters", "1"])
    assert line == (f"tinygpt: error: --lr-decay-iters 1 is below the run's --warmup-iters, 2 (saved in "
                    f"{run}); give at least 2, or a --warmup-iters of at most 1 with it")
    assert "must be >= --warmup-iters" in one_line_error(  # both given: the two flags' own message
        capsys, ["train", "--resume", "--out", run, "--warmup-iters", "8", "--lr-decay-iters", "5"])
    assert load_checkpoint(run).state["step"] == 4
    training.train(training.TrainConfig(out=run), resume=True, quiet=True,
                   overrides={"max_iters": 6, "warmup_iters": 8, "lr_decay_iters": 8})  # the cure it names
    assert load_checkpoint(run).train_config["lr_decay_iters"] == 8


def test_resume_applies_new_weight_decay_and_betas(corpus, tmp_path):
    # they are not frozen on resume: the restored optimizer state must not bring the saved ones back
    training.train(_config(corpus, tmp_path / "run", max_iters=2, eval_interval=2), quiet=True)
    training.train(training.TrainConfig(out=str(tmp_path / "run")), resume=True, quiet=True,
                   overrides={"max_iters": 3, "weight_decay": 0.5, "beta2": 0.9})
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.state["step"] == 3
    assert (ckpt.state["optimizer"]["weight_decay"], ckpt.state["optimizer"]["betas"]) == (0.5, [0.9, 0.9])


def test_a_checkpoint_holds_no_stale_learning_rate_and_an_older_one_with_it_resumes(corpus, tmp_path):
    # state.json's optimizer held "lr": 0.001, AdamW's constructor rate (the peak), beside a step whose rate
    # was min_lr, and still 0.001 after a --resume with --learning-rate 5e-4 (restored from the checkpoint);
    # nothing read it: each step is given its rate from the schedule. metrics.jsonl holds the rates used
    run = tmp_path / "run"
    training.train(_config(corpus, run, max_iters=4, eval_interval=4, learning_rate=1e-3, min_lr=1e-4),
                   quiet=True)
    assert "lr" not in load_checkpoint(run).state["optimizer"]
    state_path = (run / "state.json").resolve()
    older = json.loads(state_path.read_text())
    older["optimizer"]["lr"] = 1e-3  # as checkpoints written before this held it
    state_path.write_text(json.dumps(older))
    training.train(training.TrainConfig(out=str(run)), resume=True, quiet=True,
                   overrides={"max_iters": 6, "learning_rate": 5e-4, "min_lr": 5e-5})
    assert "lr" not in load_checkpoint(run).state["optimizer"]
    rows = training.read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 4, 6] and rows[-1]["lr"] == pytest.approx(5e-5)


def test_resume_drops_metrics_rows_written_after_its_checkpoint(corpus, tmp_path):
    # a crash between a row's append and its checkpoint leaves a row the resumed run writes again
    out = tmp_path / "run"
    training.train(_config(corpus, out, max_iters=2, eval_interval=2), quiet=True)
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 4, "train_loss": 99.0, "val_loss": 99.0}) + "\n")
    training.train(training.TrainConfig(out=str(out)), resume=True, quiet=True, overrides={"max_iters": 4})
    rows = training.read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 2, 4] and rows[-1]["train_loss"] != 99.0


def test_mean_loss_averages_the_batches_in_eval_mode_and_restores_the_mode():
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8, dropout=0.5), seed=0)
    rng = np.random.default_rng(0)
    batches = [(rng.integers(0, 11, (2, 8)), rng.integers(0, 11, (2, 8))) for _ in range(3)]
    expected = np.mean([model.eval().forward(x, y)[1] for x, y in batches])  # no dropout
    for training_mode in (True, False):
        model.train(training_mode)
        assert training.mean_loss(model, batches) == pytest.approx(expected, rel=1e-12)
        assert model.training is training_mode


def test_a_non_finite_gradient_norm_stops_with_the_step_and_keeps_the_checkpoint(corpus, tmp_path,
                                                                                 monkeypatch):
    # the loss is finite, the gradient is not: clipping leaves it alone, so train() must stop before AdamW
    # turns the weights into nan (which surfaced a step later, as "the loss is nan")
    backward = GPT.backward
    calls = {"n": 0}

    def overflowing_backward(self):
        grads = backward(self)
        calls["n"] += 1
        if calls["n"] == 3:
            grads["wte.weight"][0, 0] = np.inf
        return grads

    monkeypatch.setattr(GPT, "backward", overflowing_backward)
    # (the third backward is on the weights of step 2, as metrics.jsonl counts; the evaluation there was
    # finite)
    with pytest.raises(TinyGPTError, match=r"gradient norm is inf at step 2, on a training batch \(the "
                                           r"evaluation there was finite, and its checkpoint is kept in "):
        training.train(_config(corpus, tmp_path / "run", max_iters=4, eval_interval=2), quiet=True)
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.state["step"] == 2 and all(np.isfinite(p).all() for p in ckpt.model.params.values())


def test_a_non_finite_loss_on_the_checkpoints_weights_says_a_resume_meets_it_again(corpus, tmp_path,
                                                                                    monkeypatch):
    # a batch the weights of the step-2 checkpoint give NaN on: the message said "try a lower
    # --learning-rate", yet a --resume restores those weights and the sampler's state, draws that batch
    # again and stops on it whatever its learning rate
    seen = []
    forward = GPT.forward

    def recording_forward(self, idx, targets=None, **kwargs):
        if self.training:
            seen.append(np.array(idx))
        return forward(self, idx, targets, **kwargs)

    monkeypatch.setattr(GPT, "forward", recording_forward)
    training.train(_config(corpus, tmp_path / "clean", max_iters=3, eval_interval=2), quiet=True)
    poisoned = seen[2]  # the batch drawn on the weights of step 2

    def poisoned_forward(self, idx, targets=None, **kwargs):
        logits, loss = forward(self, idx, targets, **kwargs)
        return logits, float("nan") if self.training and np.array_equal(idx, poisoned) else loss

    monkeypatch.setattr(GPT, "forward", poisoned_forward)
    message = (r"loss is nan at step 2, on a training batch \(the evaluation there was finite, and its "
               r"checkpoint is kept in .*\); a --resume draws this batch on those weights again, whatever "
               r"its --learning-rate: start the run again with a lower --learning-rate$")
    with pytest.raises(TinyGPTError, match=message):
        training.train(_config(corpus, tmp_path / "run", max_iters=3, eval_interval=2), quiet=True)
    with pytest.raises(TinyGPTError, match=message):  # as the message says
        training.train(training.TrainConfig(out=str(tmp_path / "run")), resume=True, quiet=True,
                       overrides={"learning_rate": 1e-5, "min_lr": 1e-6})
    assert load_checkpoint(tmp_path / "run").state["step"] == 2
    # on the first training batch, no update has run: no learning rate is to blame (it said try a lower one)
    poisoned = seen[0]
    with pytest.raises(TinyGPTError, match=r"^the loss is nan at step 0, on a training batch, before any "
                                           r"update: the starting weights give it, whatever the "
                                           r"--learning-rate \(the evaluation there was finite"):
        training.train(_config(corpus, tmp_path / "first", max_iters=3, eval_interval=2), quiet=True)


def test_the_progress_bar_names_its_loss_by_the_step_a_divergence_names(corpus, tmp_path, monkeypatch,
                                                                        capsys):
    # the bar counts the updates done; its loss is the batch's before the last of them, on the weights of one
    # step fewer, the step a divergence names: the bar read "3/5 ... loss 102.0000" above "the loss is nan
    # at step 3", where 102 was step 2's loss
    forward = GPT.forward
    calls = {"train": 0}

    def counting_forward(self, idx, targets=None, **kwargs):
        logits, loss = forward(self, idx, targets, **kwargs)
        if self.training:
            calls["train"] += 1  # the n-th training batch: on the weights of step n - 1
            return logits, float("nan") if calls["train"] == 4 else 99.0 + calls["train"]
        return logits, loss

    monkeypatch.setattr(GPT, "forward", counting_forward)
    with pytest.raises(TinyGPTError, match=r"the loss is nan at step 3; the last good checkpoint \(step 0\)"):
        training.train(_config(corpus, tmp_path / "run", max_iters=5, eval_interval=10), quiet=False)
    err = capsys.readouterr().err
    assert re.search(r" 3/5 \[.*step 2: loss 102\.0000, lr ", err.split("\r")[-1]), err  # (the last drawing)


def test_non_finite_loss_stops_with_the_step_and_keeps_the_checkpoint(corpus, tmp_path, monkeypatch):
    forward = GPT.forward
    calls = {"train": 0}

    def exploding_forward(self, idx, targets=None, **kwargs):
        logits, loss = forward(self, idx, targets, **kwargs)
        if self.training:
            calls["train"] += 1
            if calls["train"] == 8:  # the 8th training batch: on the weights of step 7
                return logits, float("nan")
        return logits, loss

    monkeypatch.setattr(GPT, "forward", exploding_forward)
    with pytest.raises(TinyGPTError, match=r"loss is nan at step 7; the last good checkpoint \(step 6\)"):
        training.train(_config(corpus, tmp_path / "run", max_iters=10, eval_interval=2), quiet=True)
    assert load_checkpoint(tmp_path / "run").state["step"] == 6
    assert [r["step"] for r in training.read_metrics(tmp_path / "run" / "metrics.jsonl")] == [0, 2, 4, 6]


def test_weights_broken_by_the_update_before_an_evaluation_are_not_checkpointed(corpus, tmp_path,
                                                                                 monkeypatch):
    # The update of step 4 makes the weights nan; step 4 is an eval step, so the next check would have
    # come at step 5, after a nan checkpoint had replaced the good one of step 2 and a NaN row was written
    break_weights_at_update(monkeypatch, 4)
    with pytest.raises(TinyGPTError, match=r"train loss is nan at step 4.*last good checkpoint \(step 2\)"):
        training.train(_config(corpus, tmp_path / "run", max_iters=10, eval_interval=2), quiet=True)
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.state["step"] == 2 and all(np.isfinite(p).all() for p in ckpt.model.params.values())
    rows = training.read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 2] and all(math.isfinite(r["val_loss"]) for r in rows)


def test_a_divergence_after_the_step_0_checkpoint_says_it_is_kept(corpus, tmp_path, monkeypatch):
    # the first update breaks the weights: the step-0 checkpoint is kept, and the learning rate is to blame
    # (it said "at step 0, before any update ... nothing was saved", beside the saved step-0 checkpoint)
    break_weights_at_update(monkeypatch, 1)
    with pytest.raises(TinyGPTError, match=r"loss is nan at step 1; the last good checkpoint \(step 0\)"):
        training.train(_config(corpus, tmp_path / "run", max_iters=4, eval_interval=2), quiet=True)
    assert load_checkpoint(tmp_path / "run").state["step"] == 0


@pytest.mark.parametrize("eval_interval", [2, 3])
def test_weights_broken_at_a_step_are_named_by_that_step_whoever_finds_them(corpus, tmp_path, monkeypatch,
                                                                          eval_interval):
    # the third update breaks the weights: they are step 3's, as metrics.jsonl and the progress lines count.
    # An evaluation at step 3 said "at step 3", the training batch after it (no evaluation there) said "at
    # step 4", the update being taken
    break_weights_at_update(monkeypatch, 3)
    found_by, kept = ("train loss", 0) if eval_interval == 3 else ("loss", 2)
    with pytest.raises(TinyGPTError, match=rf"training diverged: the {found_by} is nan at step 3; the last "
                                           rf"good checkpoint \(step {kept}\)"):
        training.train(_config(corpus, tmp_path / "run", max_iters=6, eval_interval=eval_interval),
                       quiet=True)


def test_starting_weights_with_no_finite_loss_are_not_called_a_divergence(corpus, tmp_path, monkeypatch):
    # the first evaluation comes before any update: there is no checkpoint to keep, no learning rate to lower
    monkeypatch.setattr(training, "mean_loss", lambda model, batches: float("nan"))
    with pytest.raises(TinyGPTError) as info:
        training.train(_config(corpus, tmp_path / "run", max_iters=4, eval_interval=2), quiet=True)
    message = str(info.value)
    assert "at step 0, before any update" in message and "nothing was saved" in message
    assert "checkpoint (step" not in message and "learning-rate" not in message
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resume_refuses_a_new_starting_point(corpus, tmp_path):
    training.train(_config(corpus, tmp_path / "run", max_iters=2), quiet=True)
    for name in ("init_from", "pretrained"):  # it was ignored, saved, and broke the next resume
        with pytest.raises(TinyGPTError, match="cannot be combined with --resume"):
            training.train(training.TrainConfig(out=str(tmp_path / "run")), resume=True,
                           overrides={name: str(tmp_path / "elsewhere"), "max_iters": 4})
    assert load_checkpoint(tmp_path / "run").train_config.get("init_from") in (None, "")


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_a_second_run_into_the_same_directory_fails_at_once(corpus, tmp_path):
    # two runs into one --out interleaved their metrics rows and deleted each other's staging
    code = ("import sys, time; from pathlib import Path; from tinygpt.checkpoint import exclusive_run_dir\n"
            "with exclusive_run_dir(Path(sys.argv[1]), create=True):\n"
            "    print('locked', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(TinyGPTError, match="being written by another tinygpt run"):
            training.train(_config(corpus, tmp_path / "run", max_iters=2), quiet=True)
    finally:
        holder.kill()
        holder.wait()
    training.train(_config(corpus, tmp_path / "run", max_iters=2), quiet=True)  # free again
    assert load_checkpoint(tmp_path / "run").state["step"] == 2


def test_a_new_run_that_fails_before_writing_leaves_no_directory(tmp_path):
    with pytest.raises(TinyGPTError):
        training.train(_config(tmp_path / "no-such-corpus.txt", tmp_path / "a" / "b" / "run", max_iters=2),
                       quiet=True)
    assert list(tmp_path.iterdir()) == []  # nor the parents it made (a/b was left behind)


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_a_run_that_loses_the_lock_leaves_the_winners_directory_alone(tmp_path, monkeypatch):
    # Run A makes --out, run B locks it first: A's cleanup removed B's (still empty) directory
    import fcntl

    from tinygpt.checkpoint import exclusive_run_dir

    def held_by_another_run(fd, operation):
        raise BlockingIOError

    monkeypatch.setattr(fcntl, "flock", held_by_another_run)
    with pytest.raises(TinyGPTError, match="another tinygpt run"):
        with exclusive_run_dir(tmp_path / "out", create=True):
            pass
    assert (tmp_path / "out").is_dir()


def test_resume_warns_when_it_cannot_be_exact(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    training.train(_config(corpus, tmp_path / "run", max_iters=2), quiet=True)
    capsys.readouterr()
    resume = dict(cfg=training.TrainConfig(out=str(tmp_path / "run")), resume=True, quiet=True)
    training.train(**resume, overrides={"max_iters": 3})
    assert capsys.readouterr().err == ""  # same text, same settings: silent
    corpus.write_text(TEXT[::-1])  # it resumed on the edited corpus without a word
    training.train(**resume, overrides={"max_iters": 4, "eval_iters": 3})
    err = capsys.readouterr().err
    assert "text of" in err and "changed since the run started" in err and "--eval-iters changed" in err



def test_resume_warns_of_another_backend_by_the_one_that_ran_not_its_name(tmp_path, capsys, monkeypatch):
    # "auto" is numba on a machine without a GPU: a run started with it and resumed with --backend numba is
    # the same run, bit for bit, where the resume said "--backend changed from 'auto' to 'numba'"
    import tinygpt.kernels

    monkeypatch.setattr(tinygpt.kernels, "has_real_gpu", lambda: False)
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    training.train(_config(corpus, tmp_path / "run", max_iters=2, backend="auto"), quiet=True)
    capsys.readouterr()
    resume = dict(cfg=training.TrainConfig(out=str(tmp_path / "run")), resume=True, quiet=True)
    training.train(**resume, overrides={"max_iters": 3, "backend": "numba"})
    assert capsys.readouterr().err == ""
    training.train(**resume, overrides={"max_iters": 4, "backend": "numpy"})
    err = capsys.readouterr().err
    assert "--backend changed from 'numba' to 'numpy': backends agree only to rounding" in err
    # and one started with "auto" on a GPU (cuda ran) and resumed with "auto" on a CPU is told, where the
    # names alone were equal; a record from before backend_used reads "auto" as this machine does
    saved, now = {"backend": "auto", "backend_used": "cuda"}, {"backend": "auto", "backend_used": "numba"}
    assert training.backend_change(saved, now) == ("--backend changed from 'auto' (cuda) to 'auto' (numba): "
                                                   "backends agree only to rounding")
    assert training.backend_change({"backend": "auto"}, {"backend": "numba", "backend_used": "numba"}) is None

def test_train_takes_the_steps_a_hand_written_loop_takes(corpus, tmp_path, monkeypatch):
    # nanoGPT's loop written out: average the micro-batches' gradients, clip, AdamW at the scheduled lr.
    # (Resume and backend tests compare train() with itself; summing instead of averaging, not clipping,
    # or ignoring the schedule passed them all.)
    import tinygpt.optim
    from tinygpt.data import get_batch, prepare_dataset
    from tinygpt.optim import AdamW, clip_grad_norm, lr_at

    cfg = _config(corpus, tmp_path / "run", max_iters=3, eval_interval=3, grad_accum_steps=2, grad_clip=0.05,
                  warmup_iters=1, lr_decay_iters=3, learning_rate=3e-2, min_lr=1e-3, seed=7)
    norms_seen = []  # what train() clips: Adam barely notices a gradient scaled by 2 (summed micro-batches),
    real_clip = tinygpt.optim.clip_grad_norm  # so the gradient's norm is checked, before clipping

    def recording_clip(grads, max_norm, sum_squares=None):
        norms_seen.append(real_clip(grads, max_norm, sum_squares))
        return norms_seen[-1]

    monkeypatch.setattr(tinygpt.optim, "clip_grad_norm", recording_clip)
    training.train(cfg, quiet=True)
    monkeypatch.undo()
    trained = load_checkpoint(tmp_path / "run").model.params

    data = prepare_dataset(corpus, "char")
    config = GPTConfig(vocab_size=data.tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16,
                       bias=cfg.bias)
    model = GPT(config, seed=7)
    optimizer = AdamW(model.params, lr=3e-2, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    rng = np.random.default_rng([7, 2])  # the batch sampler's stream, as train() seeds it
    norms = []
    for step in range(3):
        grads = {}
        for _ in range(2):
            model.forward(*get_batch(data.train, 4, 16, rng))
            for name, g in model.backward().items():
                grads[name] = grads.get(name, 0) + g / 2
        norms.append(clip_grad_norm(grads, 0.05))
        optimizer.step(grads, lr=lr_at(step, 3e-2, 1, 3, 1e-3))
    np.testing.assert_allclose(norms_seen, norms, rtol=1e-5)
    assert min(norms) > 0.05  # the clip was active at every step, so dropping it would show
    for name, value in model.params.items():
        np.testing.assert_allclose(trained[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_train_on_numba_clips_with_its_compiled_sum_of_squares_as_numpy_clips(corpus, tmp_path, monkeypatch):
    # the gradient norm on numba is the compiled one-pass sum (tinygpt.kernels.cpu.sum_squares), where it was
    # the NumPy reference's float64 blocks; both sum in float64, so the norms and the clipping agree to the
    # rounding of numba's layers
    import tinygpt.optim
    from tinygpt.kernels import cpu

    real_clip, real_kernel = tinygpt.optim.clip_grad_norm, cpu._sum_squares_kernel
    norms, kernel_calls = {}, []

    def recording_clip(grads, max_norm, sum_squares=None):
        norms.setdefault(backend, []).append(real_clip(grads, max_norm, sum_squares))
        return norms[backend][-1]

    monkeypatch.setattr(tinygpt.optim, "clip_grad_norm", recording_clip)
    monkeypatch.setattr(cpu, "_sum_squares_kernel", lambda *args: kernel_calls.append(backend) or
                        real_kernel(*args))
    trained = {}
    for backend in ("numpy", "numba"):
        cfg = _config(corpus, tmp_path / backend, max_iters=3, eval_interval=3, grad_clip=0.05,
                      learning_rate=3e-2, backend=backend)
        training.train(cfg, quiet=True)
        trained[backend] = load_checkpoint(tmp_path / backend).model.params
    assert kernel_calls and set(kernel_calls) == {"numba"}  # numba's train sums with it, numpy's never
    assert min(norms["numpy"]) > 0.05  # clipped at every step
    np.testing.assert_allclose(norms["numba"], norms["numpy"], rtol=1e-5)
    for name, value in trained["numpy"].items():
        # (atol: 3 AdamW steps of lr 3e-2 turn float32-rounding differences of the two backends' gradients
        # into up to ~2e-6 on a weight whose gradient is near 0, since Adam divides by its size; 1e-5 is
        # still 1/3000 of one step)
        np.testing.assert_allclose(trained["numba"][name], value, rtol=1e-4, atol=1e-5, err_msg=name)


# A child process whose checkpoint writes are slowed down (each fsync sleeps), so that random kills
# often land in the middle of a save.
_SLOW_SAVES = """
import sys, time
import tinygpt.checkpoint as ckpt
fsync = ckpt._fsync_path
ckpt._fsync_path = lambda path: (time.sleep(0.01), fsync(path))
from tinygpt.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_at_random_moments_always_leaves_a_loadable_checkpoint(corpus, tmp_path):
    def train_args(out):
        return ["train", "--data", str(corpus), "--out", str(out), *TINY, "--dropout", "0.1",
                "--max-iters", "60", "--eval-interval", "1", "--lr-decay-iters", "60"]

    out = tmp_path / "killed"
    env = {**os.environ, "TINYGPT_CACHE": os.environ["TINYGPT_CACHE"], "OMP_NUM_THREADS": "1"}
    rng = random.Random(1234)
    steps, mid_save = [], 0
    for life in range(6):
        before = os.readlink(out / "latest") if (out / "latest").is_symlink() else None
        cmd = [sys.executable, "-c", _SLOW_SAVES, *train_args(out), *(["--resume"] if life else [])]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # wait until this process has published a checkpoint of its own (it is in its training loop) ...
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if (out / "latest").is_symlink() and os.readlink(out / "latest") != before:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))  # ... then kill it at a random moment
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stderr = proc.stderr.read().decode()
        assert "Traceback" not in stderr, stderr
        # a save was under way if a temporary or an unpublished step directory is left over (besides the
        # two the links name: the best is kept while newer checkpoints replace one another)
        named = {os.readlink(out / link).rpartition("/")[2] for link in ("latest", "best")
                 if (out / link).is_symlink()}
        mid_save += bool({p.name for p in (out / "checkpoints").iterdir()} - named)
        steps.append(load_checkpoint(out).state["step"])  # must always load
        if (out / "best").is_symlink():  # (absent only if the first save was killed before naming it)
            load_checkpoint(out / "best")  # must always load too
    assert steps == sorted(steps) and steps[0] > 0, steps  # progress, never backwards
    assert mid_save > 0  # at least one kill landed inside a checkpoint write
    # Finish the run and compare with one never interrupted: the same metrics, row for row.
    assert main(["train", "--resume", "--out", str(out), "--quiet"]) == 0
    assert main(train_args(tmp_path / "clean")) == 0
    assert _rows(out) == _rows(tmp_path / "clean")
    assert [r["step"] for r in _rows(out)] == list(range(61))
    assert os.readlink(out / "best") == os.readlink(tmp_path / "clean" / "best")


def test_cli_eval_prints_loss_perplexity_and_bits_per_byte(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(corpus), "--out", str(out), *TINY, "--max-iters", "4",
                 "--eval-interval", "4"]) == 0
    capsys.readouterr()
    assert main(["eval", "--out", str(out), "--backend", "numpy", "--batch-size", "5"]) == 0
    printed = capsys.readouterr().out
    loss = float(printed.split("loss ")[1].split()[0])
    ppl = float(printed.split("perplexity ")[1].split()[0])
    bpb = float(printed.split("bits per byte ")[1].split()[0])
    assert ppl == pytest.approx(math.exp(loss), rel=1e-3)
    assert bpb == pytest.approx(loss / math.log(2), rel=1e-3)  # ASCII: one byte per character

    # the same number computed independently: every val window, mean cross-entropy
    result = training.evaluate(out, backend="numpy")
    model, tok = load_checkpoint(out).model, load_checkpoint(out).tokenizer
    model.eval()
    ids = np.array(tok.encode(TEXT))
    val = ids[int(round(0.9 * len(ids))):]
    n = (len(val) - 1) // 16
    x = np.stack([val[i * 16 : i * 16 + 16] for i in range(n)])
    y = np.stack([val[i * 16 + 1 : i * 16 + 17] for i in range(n)])
    assert result["loss"] == pytest.approx(model.forward(x, y)[1], rel=1e-5)
    assert result["tokens"] == y.size == int(printed.split(": ")[1].split()[0].replace(",", ""))
    # batches of 5, 5 and 1 windows: the mean is over tokens, not over batches
    assert training.evaluate(out, backend="numpy", batch_size=5)["loss"] == pytest.approx(result["loss"],
                                                                                         rel=1e-5)
    first = training.evaluate(out, backend="numpy", batch_size=2, max_batches=1)
    assert first["tokens"] == 2 * 16
    assert first["loss"] == pytest.approx(model.forward(x[:2], y[:2])[1], rel=1e-5)
    # --split, --batch-size and --max-batches reach evaluate(): the first two windows of the training split
    assert main(["eval", "--out", str(out), "--backend", "numpy", "--split", "train", "--batch-size", "2",
                 "--max-batches", "1"]) == 0
    printed = capsys.readouterr().out
    train = ids[: int(round(0.9 * len(ids)))]
    x, y = np.stack([train[:16], train[16:32]]), np.stack([train[1:17], train[17:33]])
    assert printed.startswith(f"train split of {corpus}: 32 tokens, model at step 4\n")
    assert float(printed.split("loss ")[1].split()[0]) == pytest.approx(model.forward(x, y)[1], abs=1e-4)


def test_eval_and_train_with_a_cache_they_cannot_write_run_on_the_ids_in_memory(corpus, tmp_path, capsys,
                                                                                  monkeypatch):
    # a read-only cache folder (a shared one, a read-only home) failed both with exit 2 ('Not a directory:
    # ...' here, a cache under a file: root's test of it), where nothing the command needs is written there
    out = tmp_path / "run"
    assert main(["train", "--data", str(corpus), "--out", str(out), *TINY, "--max-iters", "2",
                 "--eval-interval", "2"]) == 0
    assert main(["eval", "--out", str(out), "--backend", "numpy"]) == 0
    scored = capsys.readouterr().out
    (tmp_path / "blocked").write_text("")
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "blocked" / "cache"))
    assert main(["eval", "--out", str(out), "--backend", "numpy"]) == 0
    printed = capsys.readouterr()
    assert printed.out == scored  # the same windows, the same loss
    assert printed.err.startswith("tinygpt: the token ids were not cached (Not a directory: ")
    assert printed.err.endswith("); the next run encodes the text again\n")
    assert main(["train", "--data", str(corpus), "--out", str(tmp_path / "again"), *TINY, "--max-iters", "2",
                 "--eval-interval", "2"]) == 0
    assert _rows(tmp_path / "again") == _rows(out)


@pytest.mark.parametrize("setting, message", [
    ({"batch_size": 0}, "--batch-size must be a positive integer, got 0"),
    ({"batch_size": 2.5}, "--batch-size must be a positive integer, got 2.5"),  # a TypeError from range()
    ({"batch_size": "4"}, "--batch-size must be a positive integer, got '4'"),  # a TypeError from <=
    ({"batch_size": True}, "--batch-size must be a positive integer, got True"),  # batches of 1
    ({"max_batches": 0}, "--max-batches must be an integer >= 1, got 0"),
    ({"max_batches": 1.5}, "--max-batches must be an integer >= 1, got 1.5"),  # ran 2 batches
])
def test_eval_refuses_a_batch_setting_that_is_not_a_positive_integer_before_loading(setting, message):
    with pytest.raises(TinyGPTError, match=f"^{re.escape(message)}$"):
        training.evaluate("no-such-dir", **setting)


def test_eval_bits_per_byte_counts_the_bytes_of_the_predicted_tokens(tmp_path, monkeypatch):
    # characters of 1, 2 and 3 UTF-8 bytes; per token loss and bits per byte differ by the byte count
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    text = "Ça va? Très bien, merci — à demain! Voilà 5 €.\n" * 40
    corpus = tmp_path / "utf8.txt"
    corpus.write_text(text, encoding="utf-8")
    training.train(_config(corpus, tmp_path / "run", max_iters=1), quiet=True)
    result = training.evaluate(tmp_path / "run", backend="numpy")
    tok = load_checkpoint(tmp_path / "run").tokenizer
    ids = np.array(tok.encode(text))
    val = ids[int(round(0.9 * len(ids))):]
    n = (len(val) - 1) // 16
    targets = [val[i * 16 + 1 : i * 16 + 17] for i in range(n)]
    n_bytes = sum(len(tok.decode(list(t)).encode("utf-8")) for t in targets)
    inputs_bytes = sum(len(tok.decode(list(val[i * 16 : i * 16 + 16])).encode("utf-8")) for i in range(n))
    assert n_bytes not in (inputs_bytes, n * 16)  # counting the inputs', or a byte a token, would show
    nats = result["loss"] * result["tokens"]
    assert result["bits_per_byte"] == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-12)


def test_eval_of_a_loss_past_exps_range_prints_an_infinite_perplexity(tmp_path, monkeypatch, capsys):
    # a GPT-2 directory whose final LayerNorm scales its output 1e4-fold: logits in the tens of thousands,
    # a mean loss of thousands of nats, whose exp math.exp refused with OverflowError, a traceback
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    text = "the cat sat on the mat. " * 20
    tokenizer = BPETokenizer.train(text, 270)
    model = GPT(GPTConfig(vocab_size=270, block_size=16, n_layer=1, n_head=2, n_embd=16), seed=0)
    model.params["ln_f.weight"] *= 1e4
    directory = tmp_path / "gpt2"
    model.save_pretrained(directory)
    tokenizer.save_gpt2_files(directory)
    (tmp_path / "text.txt").write_text(text)
    result = training.evaluate(pretrained=directory, data=str(tmp_path / "text.txt"), backend="numpy")
    assert math.isfinite(result["loss"]) and result["loss"] > 710 and result["perplexity"] == math.inf
    assert main(["eval", "--pretrained", str(directory), "--data", str(tmp_path / "text.txt"),
                 "--backend", "numpy"]) == 0
    assert f"loss {result['loss']:.4f}  perplexity inf  bits per byte" in capsys.readouterr().out


def test_cli_eval_writes_utf8_whatever_stdout_encoding_says(corpus, tmp_path, monkeypatch):
    # the first line names the data file, any Unicode: on an ASCII stdout print() raised UnicodeEncodeError
    import io

    out = tmp_path / "run"
    assert main(["train", "--data", str(corpus), "--out", str(out), *TINY, "--max-iters", "1",
                 "--eval-interval", "1"]) == 0
    data = tmp_path / "données.txt"
    shutil.copyfile(corpus, data)
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr("sys.stdout", stdout)
    assert main(["eval", "--out", str(out), "--data", str(data), "--backend", "numpy"]) == 0
    assert stdout.buffer.getvalue().decode("utf-8").startswith(f"val split of {data}: ")


# --- tinygpt eval --pretrained: a transformers GPT-2 directory on a whole text, sliding windows ----------

# characters of 1, 2, 3 and 4 UTF-8 bytes: bits per byte must count bytes, not tokens or characters
PRETRAINED_TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
                   "Ça va? Très bien — à demain! 5 € 🤖\n") * 6


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory, make_hf_gpt2):
    """(directory, transformers model, tokenizer, text file): a random GPT-2 of context 16 saved by
    transformers with a 300-token BPE of its own (vocab.json + merges.txt), and a text of 300-odd tokens."""
    root = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = BPETokenizer.train(PRETRAINED_TEXT, 300, special_tokens=["<|endoftext|>"])
    files = tokenizer.save_gpt2_files(root / "tokenizer")
    hf = make_hf_gpt2(root / "model", vocab_size=300, block_size=16, seed=0, tokenizer_files=files)
    text = root / "text.txt"
    text.write_text(PRETRAINED_TEXT, encoding="utf-8")
    return root / "model", hf, tokenizer, text


def _sliding_window_loss(hf, ids, T, stride):
    """(mean nats, tokens scored) computed directly in torch, as Hugging Face's perplexity guide does it:
    windows of T tokens every stride tokens, the last one ending at the last token, each scoring its targets
    past those the window before scored."""
    import torch

    nats, scored_to, begin = 0.0, 0, 0  # targets 1 .. scored_to are scored
    while scored_to < len(ids) - 1:
        begin = min(begin, len(ids) - 1 - T)
        window = torch.tensor(ids[begin : begin + T + 1])
        new = begin + T - scored_to  # the window's last `new` targets
        with torch.no_grad():
            logits = hf(window[None, :-1]).logits[0]
        nats += torch.nn.functional.cross_entropy(logits[-new:], window[-new:], reduction="sum").item()
        scored_to, begin = begin + T, begin + stride
    return nats / (len(ids) - 1), len(ids) - 1


@pytest.mark.parametrize("stride", [None, 16, 5, 1])
def test_eval_pretrained_equals_transformers_sliding_window_loss(tiny_gpt2, stride, tmp_path, monkeypatch,
                                                                 capsys):
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    directory, hf, tokenizer, text = tiny_gpt2
    ids = tokenizer.encode(PRETRAINED_TEXT)
    assert len(ids) > 300  # 20-odd windows of 16
    expected, n_scored = _sliding_window_loss(hf, ids, 16, stride or 16)
    result = training.evaluate(pretrained=directory, data=str(text), stride=stride, backend="numpy")
    assert result["tokens"] == n_scored == len(ids) - 1  # every token but the first, the tail too
    assert result["loss"] == pytest.approx(expected, rel=1e-6)  # float32 against float32
    assert result["perplexity"] == pytest.approx(math.exp(expected), rel=1e-6)
    # bits per byte over the scored text: all of it but the first token
    n_bytes = len(PRETRAINED_TEXT.encode("utf-8")) - len(tokenizer.decode_bytes(ids[:1]))
    assert result["bits_per_byte"] == pytest.approx(expected * n_scored / math.log(2) / n_bytes, rel=1e-6)
    # windows batched (3 a forward pass, the last batch short) score the same
    batched = training.evaluate(pretrained=directory, data=str(text), stride=stride, batch_size=3,
                                backend="numpy")
    assert batched["tokens"] == n_scored and batched["loss"] == pytest.approx(expected, rel=1e-6)
    # the command prints the same, saying how many tokens it scored
    argv = ["eval", "--pretrained", str(directory), "--data", str(text), "--backend", "numpy"]
    assert main(argv + (["--stride", str(stride)] if stride else [])) == 0
    printed = capsys.readouterr()
    assert printed.err == ""  # the directory's own tokenizer: no note
    assert printed.out.startswith(f"all of {text}: {n_scored} of its {len(ids)} tokens scored (the first is "
                                  f"only context), windows of 16 tokens every {stride or 16}\n")
    assert float(printed.out.split("loss ")[1].split()[0]) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_eval_pretrained_nanogpt_checkpoint_equals_the_torch_models_loss(backend, tmp_path, monkeypatch,
                                                                         make_nanogpt_ckpt, capsys):
    # the exact GELU on both CPU backends, GPT-2's tokenizer for the text, the loss over all 50304 logits
    import types

    from tinygpt.tokenizer import BPETokenizer

    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    model = make_nanogpt_ckpt(tmp_path / "ckpt.pt", vocab_size=50304, block_size=16, n_embd=16)
    text = tmp_path / "text.txt"
    text.write_text(PRETRAINED_TEXT[:400], encoding="utf-8")
    ids = BPETokenizer.gpt2().encode(text.read_text(encoding="utf-8"))
    as_transformers = lambda x: types.SimpleNamespace(logits=model(x)[0][None])  # noqa: E731
    expected, n_scored = _sliding_window_loss(as_transformers, ids, 16, 5)
    result = training.evaluate(pretrained=tmp_path, data=str(text), stride=5, backend=backend)
    assert result["tokens"] == n_scored and result["loss"] == pytest.approx(expected, rel=1e-6)
    assert result["model"] == f"{tmp_path / 'ckpt.pt'} (nanoGPT's, with GPT-2's tokenizer)"
    assert main(["eval", "--pretrained", str(tmp_path / "ckpt.pt"), "--data", str(text), "--backend",
                 backend]) == 0
    assert "is a nanoGPT checkpoint" in capsys.readouterr().err


def test_eval_pretrained_text_shorter_than_the_context_is_one_window(tiny_gpt2, tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    directory, hf, tokenizer, _ = tiny_gpt2
    short = tmp_path / "short.txt"
    short.write_text("Speak, speak.\n", encoding="utf-8")
    ids = tokenizer.encode(short.read_text(encoding="utf-8"))
    assert 2 <= len(ids) <= 16
    expected, n_scored = _sliding_window_loss(hf, ids, len(ids) - 1, 1)
    result = training.evaluate(pretrained=directory, data=str(short), stride=4, backend="numpy")
    assert result["tokens"] == n_scored and result["window"] == len(ids) - 1
    assert result["loss"] == pytest.approx(expected, rel=1e-6)


def test_eval_pretrained_without_tokenizer_files_uses_gpt2s_as_sample_does(pretrained_dir, tmp_path,
                                                                           monkeypatch, capsys):
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    directory, _ = pretrained_dir  # GPT-2's own files as vocab.json + merges.txt
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(directory / name, bare / name)
    text = tmp_path / "text.txt"
    text.write_text(PRETRAINED_TEXT, encoding="utf-8")
    assert main(["eval", "--pretrained", str(directory), "--data", str(text), "--backend", "numpy"]) == 0
    with_files = capsys.readouterr()
    assert main(["eval", "--pretrained", str(bare), "--data", str(text), "--backend", "numpy"]) == 0
    without = capsys.readouterr()
    assert with_files.err == "" and without.err.count("\n") == 1 and "using GPT-2's tokenizer" in without.err
    assert without.out == with_files.out


def test_eval_pretrained_errors_are_one_line(tiny_gpt2, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    directory, _, _, text = tiny_gpt2
    model = ["eval", "--pretrained", str(directory)]
    scored = [*model, "--data", str(text)]
    one_token = tmp_path / "one.txt"
    one_token.write_text("a", encoding="utf-8")
    for argv, message in (
        (["eval", "--pretrained", str(tmp_path / "missing"), "--data", str(text)],
         "no model directory or nanoGPT ckpt.pt at"),
        ([*model, "--data", str(one_token)], "one.txt is 1 token long: scoring needs at least 2"),
        ([*scored, "--stride", "0"], "--stride must be a positive integer, got 0"),
        ([*scored, "--stride", "-3"], "--stride must be a positive integer, got -3"),
        ([*scored, "--stride", "17"], "--stride 17 exceeds the model's context of 16"),
        ([*scored, "--out", "run"], "argument --out: not allowed with argument --pretrained"),
        ([*scored, "--split", "val"], "--split val: a pretrained model has no train or val split"),
        ([*scored, "--split", "train"], "is scored whole (--split all)"),
        (model, "--pretrained needs --data FILE"),
        ([*model, "--data", str(tmp_path / "absent.txt")], "data file not found"),
        (["eval", "--pretrained", "", "--data", str(text)], "--pretrained must name a directory"),
    ):
        assert message in one_line_error(capsys, argv)
    assert main([*scored, "--split", "all", "--max-batches", "2"]) == 0
    assert capsys.readouterr().out.startswith(f"all of {text}: 32 of its ")  # two windows of 16 targets
    # and as a real process: exit status 2, one line, no traceback
    proc = subprocess.run([sys.executable, "-m", "tinygpt", *model, "--data", str(one_token)],
                          capture_output=True, text=True, env={**os.environ, "TINYGPT_CACHE": str(tmp_path)})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


@pytest.mark.parametrize("source", ["run", "gpt2", "nanogpt"])
def test_eval_and_sample_refuse_a_model_of_non_finite_weights(source, corpus, tmp_path, capsys,
                                                              make_nanogpt_ckpt):
    # NaN or inf weights: eval printed "loss nan  perplexity nan" with exit 0, sample printed the prompt and
    # then blamed the logits; each is refused at load naming the first such tensor, as a classifier is
    import torch

    from tinygpt.checkpoint import save_checkpoint
    from tinygpt.tokenizer import CharTokenizer

    config = GPTConfig(vocab_size=270, block_size=16, n_layer=1, n_head=2, n_embd=16)
    if source == "run":
        tokenizer = CharTokenizer.train(TEXT)
        model = GPT(GPTConfig(**{**config.to_dict(), "vocab_size": tokenizer.vocab_size}), seed=0)
        model.params["h.0.mlp.c_fc.weight"].flat[3] = np.nan
        save_checkpoint(tmp_path / "run", model, tokenizer, None, {"backend": "numpy", "data": str(corpus)},
                        {"step": 3})
        given = ["--out", str(tmp_path / "run")]
        where = f"the checkpoint {load_checkpoint(tmp_path / 'run').path}"
        found = "h.0.mlp.c_fc.weight has nan"
    elif source == "gpt2":
        model = GPT(config, seed=0)
        model.params["wpe.weight"].flat[5] = np.inf
        model.save_pretrained(tmp_path / "gpt2")
        BPETokenizer.train(TEXT, 270).save_gpt2_files(tmp_path / "gpt2")
        given = ["--pretrained", str(tmp_path / "gpt2")]
        where, found = str(tmp_path / "gpt2"), "wpe.weight has inf"
    else:
        path = tmp_path / "ckpt.pt"
        make_nanogpt_ckpt(path, vocab_size=50304, block_size=8, n_embd=8)
        checkpoint = torch.load(path, weights_only=True)
        checkpoint["model"]["transformer.h.1.ln_2.weight"][0] = float("nan")
        torch.save(checkpoint, path)
        given = ["--pretrained", str(path)]
        where, found = str(path), "h.1.ln_2.weight has nan"
    message = f"{where} holds non-finite weights ({found}), which give non-finite logits; use "
    hellaswag = tmp_path / "hellaswag.jsonl"
    hellaswag.write_text(json.dumps({"ctx": "ROMEO:", "endings": ["a", "b"], "label": 0}) + "\n")
    data = [] if source == "run" else ["--data", str(corpus)]
    for argv in (["eval", *given, *data, "--backend", "numpy"], ["sample", *given, "--prompt", "ROMEO",
                 "--max-new-tokens", "2"], ["eval", *given, "--hellaswag", str(hellaswag)]):
        # (not one_line_error, whose read of the error took stdout's too, so no printed prompt was seen)
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
        assert out == ""  # (sample printed its prompt before the error)
    with pytest.raises(TinyGPTError, match=re.escape(message)):
        training.evaluate(**({"out_dir": tmp_path / "run"} if source == "run" else
                             {"pretrained": given[1], "data": str(corpus)}))
    if source != "run":  # train and finetune from it: refused at load too (a stop at step 0, after the data)
        labelled = tmp_path / "labelled.csv"
        labelled.write_text("text,label\n" + "".join(f"ROMEO {i},{i % 2}\n" for i in range(8)))
        for argv in (["train", *given, "--data", str(corpus), "--out", str(tmp_path / "t"),
                      "--max-iters", "1"],
                     ["finetune", *given, "--data", str(labelled), "--out", str(tmp_path / "f"),
                      "--epochs", "1"]):
            assert main([*argv, "--backend", "numpy"]) == 2
            out, err = capsys.readouterr()
            assert message in err and err.count("\n") == 1, err
            assert not (tmp_path / argv[argv.index("--out") + 1]).exists()


def test_eval_stride_on_a_training_run(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(corpus), "--out", str(out), *TINY, "--max-iters", "2",
                 "--eval-interval", "2"]) == 0
    capsys.readouterr()
    default = training.evaluate(out, backend="numpy")
    assert training.evaluate(out, backend="numpy", stride=16) == default  # the context is the default
    # a smaller stride: the val split's windows every 4 tokens, each scoring its last 4 targets (all 16 of
    # the first), up to the last full window, computed window by window
    result = training.evaluate(out, backend="numpy", stride=4)
    model, tok = load_checkpoint(out).model, load_checkpoint(out).tokenizer
    model.eval()
    ids = np.array(tok.encode(TEXT))
    val = ids[int(round(0.9 * len(ids))):]
    nats, n = 0.0, 0
    for begin in range(0, len(val) - 16, 4):
        new = 16 if begin == 0 else 4
        y = np.full(16, -1)
        y[-new:] = val[begin + 17 - new : begin + 17]
        nats += model.forward(val[None, begin : begin + 16], y[None])[1] * new
        n += new
    assert result["tokens"] == n and result["loss"] == pytest.approx(nats / n, rel=1e-6)
    assert result["tokens"] >= default["tokens"]  # a tail shorter than a stride left out, not a window
    assert main(["eval", "--out", str(out), "--backend", "numpy", "--stride", "4"]) == 0
    assert capsys.readouterr().out.startswith(f"val split of {corpus}: {n} tokens, model at step 2, windows "
                                              "of 16 tokens every 4\n")
    assert "--stride 17 exceeds the model's context of 16" in one_line_error(
        capsys, ["eval", "--out", str(out), "--stride", "17", "--backend", "numpy"])


def test_a_loss_plot_that_cannot_be_written_does_not_fail_the_finished_run(corpus, tmp_path, capsys,
                                                                           monkeypatch):
    """The plot is drawn after the last checkpoint: a disk that fills just then made `tinygpt train` exit 2
    with 'No space left on device: .../loss.png', a finished run reported as failed."""
    def disk_full(path, data):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(training, "write_atomic", disk_full)
    out = tmp_path / "run"
    assert main(["train", "--data", str(corpus), "--out", str(out), *TINY, "--max-iters", "2"]) == 0
    err = capsys.readouterr().err
    assert f"warning: no loss plot written (No space left on device: {out / 'loss.png'})" in err  # (named)
    assert "Traceback" not in err
    assert load_checkpoint(out).state["step"] == 2 and not (out / "loss.png").exists()


def test_a_loss_plot_warning_names_the_metrics_file_it_could_not_read(corpus, tmp_path, capsys, monkeypatch):
    """The plot reads the run's metrics.jsonl first: an error reading it was reported as one of loss.png
    ('Permission denied: .../loss.png'), a file the run had not touched."""
    def unreadable(out_dir):  # what Path.read_bytes raises of a metrics file it may not read
        raise PermissionError(13, "Permission denied", str(Path(out_dir) / "metrics.jsonl"))

    monkeypatch.setattr(training, "plot_metrics", unreadable)
    out = tmp_path / "run"
    assert main(["train", "--data", str(corpus), "--out", str(out), *TINY, "--max-iters", "2"]) == 0
    err = capsys.readouterr().err
    assert f"warning: no loss plot written (Permission denied: {out / 'metrics.jsonl'}); the run's" in err


def test_a_metrics_file_unreadable_at_the_end_does_not_fail_the_finished_run(corpus, tmp_path, capsys,
                                                                             monkeypatch):
    """The warning above said the checkpoint and metrics were saved, then the summary read metrics.jsonl
    again for its val loss and the same error ended the finished run with exit 2 ('tinygpt: Permission
    denied: .../metrics.jsonl')."""
    read_bytes = Path.read_bytes

    def unreadable_metrics(path):
        if path.name == "metrics.jsonl":
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", unreadable_metrics)
    out = tmp_path / "run"
    assert main(["train", "--data", str(corpus), "--out", str(out), *TINY, "--max-iters", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count(f"Permission denied: {out / 'metrics.jsonl'}") == 1  # the warning's, alone
    assert f"warning: no loss plot written (Permission denied: {out / 'metrics.jsonl'})" in captured.err
    assert load_checkpoint(out).state["step"] == 2


def test_plot_of_a_run_directory_with_an_unusual_name(tmp_path):
    # its name is the plot's title: a non-UTF-8 byte (surrogate-escaped) and a pair of $ (read as mathtext)
    # made matplotlib raise, a traceback of `tinygpt plot` and of `tinygpt train` once training had finished
    for name in ("run\udcff", "run $\\bad$"):
        out = tmp_path / name
        out.mkdir()
        (out / "metrics.jsonl").write_text('{"step": 0, "train_loss": 3.5, "val_loss": 3.6}\n')
        assert training.plot_metrics(out).read_bytes()[:4] == b"\x89PNG"


def test_cli_plot_and_default_corpus(tmp_path, monkeypatch, capsys):
    # `tinygpt train` without --data trains on the default corpus (here a stand-in, no network)
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    stand_in = tmp_path / "shakespeare.txt"
    stand_in.write_text(TEXT)
    import tinygpt.data

    monkeypatch.setattr(tinygpt.data, "default_corpus_path", lambda say=None: stand_in)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY, "--max-iters", "3", "--eval-interval", "1"]) == 0
    assert load_checkpoint(out).train_config["data"] == str(stand_in)
    (out / "loss.png").unlink()
    capsys.readouterr()
    assert main(["plot", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "loss.png")
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    # bad --output: one line naming the user's path, no stray temporary (it left .adir.tmp.png behind)
    (tmp_path / "adir").mkdir()
    for bad, message in ((tmp_path / "adir", "is a directory"), (tmp_path / "loss.xyz", "'xyz' image")):
        before = set(tmp_path.iterdir())
        assert main(["plot", str(out), "--output", str(bad)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
        assert set(tmp_path.iterdir()) == before
    assert main(["plot", str(out), "--output", str(tmp_path / "loss.svg")]) == 0
    assert b"<svg" in (tmp_path / "loss.svg").read_bytes()[:500]
    assert (tmp_path / "loss.svg").stat().st_mode & 0o777 == 0o666 & ~current_umask()  # not mkstemp's 0600


def test_shipped_configs():
    assert {"default", "shakespeare_char"} <= set(training.shipped_configs())
    sc = training.make_config(training.read_config_file("shakespeare_char"))
    nanogpt_cpu = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "batch_size": 12,
                   "learning_rate": 1e-3, "min_lr": 1e-4, "warmup_iters": 100, "beta2": 0.99,
                   "max_iters": 2000, "dropout": 0.0, "eval_iters": 20,
                   "tokenizer": "char", "grad_clip": 1.0, "weight_decay": 0.1}
    assert {k: getattr(sc, k) for k in nanogpt_cpu} == nanogpt_cpu
    assert sc.lr_decay_iters is None  # = max_iters (nanoGPT's 2000), and follows a --max-iters override
    default = training.make_config(training.read_config_file("default"))
    assert default.data is None and default.tokenizer == "char"


def test_a_config_file_saved_with_a_byte_order_mark_reads(tmp_path):
    # guards: Notepad's "UTF-8" writes EF BB BF first, and Python's TOML reader refused the file as
    # "Invalid statement (at line 1, column 1)"
    path = tmp_path / "notepad.toml"
    path.write_bytes("\ufeffn_layer = 3\nlearning_rate = 2e-3\n".encode("utf-8"))
    assert training.read_config_file(str(path)) == {"n_layer": 3, "learning_rate": 2e-3}


def test_a_config_files_paths_expand_a_tilde_as_the_shell_does_a_flags(corpus, tmp_path, monkeypatch, capsys):
    # `--data ~/input.txt` reaches us expanded by the shell; data = "~/input.txt" in a TOML file did not:
    # 'data file not found: ~/input.txt', and out = "~/run" trained into ./~/run
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")  # (where an unexpanded out = "~/run" went)
    config = tmp_path / "home.toml"
    config.write_text('data = "~/input.txt"\nout = "~/run"\nhellaswag = "~/hs.jsonl"\ninit_from = "~/base"\n'
                      'pretrained = "~/gpt2"\n')
    values = training.read_config_file(str(config))
    assert values == {name: str(tmp_path / path) for name, path in (
        ("data", "input.txt"), ("out", "run"), ("hellaswag", "hs.jsonl"), ("init_from", "base"),
        ("pretrained", "gpt2"))}
    config.write_text('data = "~/input.txt"\nout = "~/run"\nmax_iters = 1\n')
    assert main(["train", "--config", str(config), *TINY]) == 0
    assert load_checkpoint(tmp_path / "run").train_config["data"] == str(corpus)
    assert not (tmp_path / "work" / "~").exists()


@pytest.mark.skipif(not os.path.isdir("/dev/fd"), reason="/dev/fd names a pipe's end")
def test_a_config_from_a_pipe_reads_and_a_device_is_refused(tmp_path):
    # `tinygpt train --config <(printf 'n_layer = 3')`, the shell's /dev/fd/N of a pipe, was "neither a file
    # nor a shipped config": Path.is_file is False for a pipe (read once, as the data's is)
    read, write = os.pipe()
    os.write(write, b"n_layer = 3\nlearning_rate = 2e-3\n")
    os.close(write)
    try:
        assert training.read_config_file(f"/dev/fd/{read}") == {"n_layer": 3, "learning_rate": 2e-3}
    finally:
        os.close(read)
    with pytest.raises(TinyGPTError, match="^config is a device, not a text file: /dev/zero$"):
        training.read_config_file("/dev/zero")  # (which would be read until memory ran out)
    with pytest.raises(TinyGPTError, match="neither a file nor a shipped config"):
        training.read_config_file(str(tmp_path))  # a directory, as before


@pytest.mark.skipif(not os.path.isdir("/dev/fd"), reason="/dev/fd names a pipe's end")
def test_a_run_whose_data_was_a_pipe_says_what_to_give_to_resume_or_evaluate_it(corpus, tmp_path, capsys):
    # `train --data <(zcat corpus.gz)` saves the pipe's path (/proc/PID/fd/pipe:[N] once resolved), which no
    # later process can read: --resume and eval said 'data file not found: /proc/4242/fd/pipe:[9]'
    out = tmp_path / "run"
    read, write = os.pipe()
    os.write(write, corpus.read_bytes())
    os.close(write)
    try:
        assert main(["train", "--data", f"/dev/fd/{read}", "--out", str(out), *TINY, "--max-iters", "2"]) == 0
    finally:
        os.close(read)
    line = one_line_error(capsys, ["train", "--resume", "--out", str(out), "--max-iters", "4", "--quiet"])
    assert re.fullmatch(rf"tinygpt: error: cannot resume {re.escape(str(out))}: its --data was read from a "
                        r"pipe \(/\S+\), which cannot be read again; give --data FILE holding the same text "
                        r"\(or a pipe of it again\)", line), line
    assert "cannot be read again; give --data FILE holding that text" in one_line_error(
        capsys, ["eval", "--out", str(out), "--backend", "numpy"])
    # the same text from a file resumes the run, and is scored
    assert main(["train", "--resume", "--out", str(out), "--max-iters", "4", "--data", str(corpus),
                 "--quiet"]) == 0
    assert "the data changed" not in capsys.readouterr().err  # (its sha256 is the pipe's text's)
    assert main(["eval", "--out", str(out), "--data", str(corpus), "--backend", "numpy"]) == 0
    # HellaSwag's examples alike, where --no-hellaswag is also a way on
    with pytest.raises(TinyGPTError, match=r"its --hellaswag was read from a pipe .*, or --no-hellaswag$"):
        training._refuse_a_pipe_to_resume({"hellaswag": "/proc/7/fd/pipe:[9]"}, {}, out)
    training._refuse_a_pipe_to_resume({"hellaswag": "/proc/7/fd/pipe:[9]"}, {"hellaswag": None}, out)


# --- bad input: one line on stderr, exit status 2, no traceback -----------------------------------------


def test_bad_data_files(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "binary.txt").write_bytes(b"\x00\xff\xfe abc")
    (tmp_path / "short.txt").write_text("abc")
    cases = {str(tmp_path / "missing.txt"): "not found", str(tmp_path / "empty.txt"): "empty",
             str(tmp_path): "directory", str(tmp_path / "binary.txt"): "UTF-8",
             str(tmp_path / "short.txt"): "too small"}
    for path, message in cases.items():
        line = one_line_error(capsys, ["train", "--data", path, "--out", str(tmp_path / "o"), *TINY])
        assert message in line


@pytest.mark.parametrize("flags, message", [
    (["--n-embd", "30", "--n-head", "4"], "divisible"),
    (["--n-layer", "0"], "--n-layer must be a positive integer"),
    (["--batch-size", "-3"], "--batch-size must be a positive integer"),
    (["--block-size", "0"], "--block-size"),
    (["--max-iters", "0"], "--max-iters"),
    (["--learning-rate", "-1"], "--learning-rate must be positive"),
    (["--learning-rate", "1e-3", "--min-lr", "1e-2"], "--min-lr (0.01) must not exceed --learning-rate"),
    (["--learning-rate", "5e-5"], "with a low --learning-rate give --min-lr too"),
    (["--dropout", "1.5"], "--dropout"),
    (["--learning-rate", "abc"], "invalid float value"),
    (["--n-layer", "2.5"], "invalid int value"),
    (["--bias", "maybe"], "invalid boolean"),
    (["--tokenizer", "words"], "invalid choice"),
    (["--tokenizer", "bpe"], "--vocab-size"),
    (["--vocab-size", "512"], "--vocab-size applies to --tokenizer bpe only"),  # was silently ignored
    (["--no-such-option"], "unrecognized arguments"),
    (["--config", "no_such_config"], "neither a file nor a shipped config"),
    (["--seed", "-1"], "--seed must be a non-negative integer"),
])
def test_bad_settings(tmp_path, capsys, flags, message, monkeypatch):
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "in.txt").write_text(TEXT)
    line = one_line_error(capsys, ["train", "--data", str(tmp_path / "in.txt"), "--out", str(tmp_path / "o"),
                                    "--backend", "numpy", *flags])
    assert message in line


def test_bad_config_files(tmp_path, capsys):
    (tmp_path / "typo.toml").write_text("n_layers = 4\n")
    line = one_line_error(capsys, ["train", "--config", str(tmp_path / "typo.toml")])
    assert "unknown setting 'n_layers'" in line
    (tmp_path / "broken.toml").write_text("n_layer = = 4\n")
    assert "not valid TOML" in one_line_error(capsys, ["train", "--config", str(tmp_path / "broken.toml")])
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe bad")  # a traceback (UnicodeDecodeError) before
    line = one_line_error(capsys, ["train", "--config", str(tmp_path / "binary.txt")])
    assert "not a UTF-8 text file" in line
    (tmp_path / "types.toml").write_text('n_layer = "four"\n')
    assert "--n-layer" in one_line_error(capsys, ["train", "--config", str(tmp_path / "types.toml")])
    for setting, flag in (('seed = "x"', "--seed"), ("data = 5", "--data"), ("init_from = 3", "--init-from")):
        (tmp_path / "types.toml").write_text(setting + "\n")
        assert flag in one_line_error(capsys, ["train", "--config", str(tmp_path / "types.toml")])
    # a hand-edited 400-digit rate (TOML's integers have no bound in Python's reader) was float()'s
    # OverflowError traceback in make_config, and math.isfinite's in validate; one of 5,000 digits (from
    # Python) could not be shown by repr, a ValueError
    (tmp_path / "big.toml").write_text(f"learning_rate = 1{'0' * 400}\n")
    line = one_line_error(capsys, ["train", "--config", str(tmp_path / "big.toml")])
    assert line.endswith("--learning-rate must be a finite number, got <an integer of 1,329 bits>"), line
    for digits, shown in ((400, "<an integer of 1,329 bits>"), (5000, "<an integer of 16,610 bits>")):
        with pytest.raises(TinyGPTError, match=f"--min-lr must be a finite number, got {shown}"):
            training.TrainConfig(min_lr=10**digits).validate()
    # past 4,300 digits Python's TOML reader raises int()'s own ValueError, not TOMLDecodeError: a traceback
    # that said to call sys.set_int_max_str_digits()
    (tmp_path / "big.toml").write_text(f"learning_rate = 1{'0' * 5000}\n")
    line = one_line_error(capsys, ["train", "--config", str(tmp_path / "big.toml")])
    assert line.endswith("big.toml is not valid TOML: it holds an integer of more than 4,300 digits"), line


def test_missing_or_corrupt_checkpoint_for_resume_and_eval(corpus, tmp_path, capsys):
    missing = str(tmp_path / "missing")
    assert "does not exist" in one_line_error(capsys, ["train", "--resume", "--out", missing])
    assert "does not exist" in one_line_error(capsys, ["eval", "--out", missing])
    (tmp_path / "empty").mkdir()
    assert "no checkpoint" in one_line_error(capsys, ["eval", "--out", str(tmp_path / "empty")])
    out = tmp_path / "run"
    assert main(["train", "--data", str(corpus), "--out", str(out), *TINY, "--max-iters", "1"]) == 0
    weights = out / "model.safetensors"
    weights.resolve().write_bytes(weights.read_bytes()[:100])
    assert "corrupt" in one_line_error(capsys, ["train", "--resume", "--out", str(out)])
    assert "corrupt" in one_line_error(capsys, ["eval", "--out", str(out), "--backend", "numpy"])
    # and as a real process: no traceback on stderr, exit status 2
    proc = subprocess.run([sys.executable, "-m", "tinygpt.cli", "eval", "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "corrupt" in proc.stderr
    assert "no metrics" in one_line_error(capsys, ["plot", str(tmp_path / "empty")])


def test_config_values_are_checked_when_set_from_python():
    with pytest.raises(TinyGPTError, match="unknown setting"):
        training.make_config({"nlayer": 3})
    with pytest.raises(TinyGPTError, match="--lr-decay-iters"):
        training.make_config({"warmup_iters": 100, "lr_decay_iters": 50})
    assert training.make_config({"learning_rate": 1}).learning_rate == 1.0  # TOML ints are fine as floats
    assert training.make_config({"warmup_iters": 0, "lr_decay_iters": 0}).warmup_iters == 0  # no warmup
    assert training.make_config({"learning_rate": 3e-4, "min_lr": 3e-4}).min_lr == 3e-4  # a constant rate
    with pytest.raises(TinyGPTError, match="--warmup-iters must be a non-negative integer, got -1"):
        training.make_config({"warmup_iters": -1})
    assert json.loads(json.dumps(training.make_config({}).to_dict()))["n_layer"] == 4
    # NumPy floats are numbers (np.float32 was refused: "--dropout must be a finite number, got
    # np.float32(0.25)"), saved as Python floats like NumPy integers as ints
    cfg = training.make_config({"dropout": np.float32(0.25), "learning_rate": np.float32(0.5),
                                "min_lr": np.float16(0.125), "beta2": np.float64(0.5)})
    saved = json.loads(json.dumps(cfg.to_dict()))
    assert [saved[k] for k in ("dropout", "learning_rate", "min_lr", "beta2")] == [0.25, 0.5, 0.125, 0.5]
    for bad in ("0.1", None, True):
        with pytest.raises(TinyGPTError, match="--dropout must be a finite number"):
            training.make_config({"dropout": bad})
    # AdamW multiplies each matrix by 1 - lr * wd a step: at lr * wd >= 1 it is zeroed or flipped, and
    # the run diverged; just below is allowed (finetune checks the same, tinygpt.optim)
    with pytest.raises(TinyGPTError, match=re.escape("--weight-decay (1000) times --learning-rate (0.001) "
                                                     "must be < 1")):
        training.make_config({"weight_decay": 1000, "learning_rate": 1e-3})
    assert training.make_config({"weight_decay": 999, "learning_rate": 1e-3}).weight_decay == 999


def _hashes(directory):
    import hashlib

    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(directory).rglob("*"))
            if p.is_file() and not p.is_symlink()}


def test_a_new_run_never_replaces_files_it_did_not_write(corpus, tmp_path, capsys):
    # A transformers model directory, a folder of the user's own called checkpoints/, their own notes in
    # metrics.jsonl: a run into any of them would have replaced or deleted those files. Refused, untouched.
    hf = tmp_path / "hf"
    GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16)).save_pretrained(hf)
    mine = tmp_path / "mine"
    (mine / "checkpoints").mkdir(parents=True)
    (mine / "checkpoints" / "notes.txt").write_text("keep me")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "metrics.jsonl").write_text("my notes\n")
    nano = tmp_path / "nano"  # nanoGPT's out_dir (named 'out' by default, as ours): our config.json beside
    nano.mkdir()  # its ckpt.pt would make --pretrained read the folder as a transformers directory
    (nano / "ckpt.pt").write_bytes(b"nanoGPT's")
    for out, what in [(hf, "model.safetensors"), (mine, "notes.txt"), (notes, "metrics.jsonl"),
                      (nano, "nanoGPT's ckpt.pt")]:
        before = _hashes(out)
        message = one_line_error(capsys, ["train", "--data", str(corpus), "--out", str(out), *TINY,
                                           "--max-iters", "1"])
        assert what in message and ("did not write" in message or "another --out" in message)
        assert _hashes(out) == before and not (out / "latest").exists()
    # a directory left by a tinygpt run that stopped before its first checkpoint is still fine to reuse
    out = tmp_path / "run"
    assert main(["train", "--data", str(corpus), "--out", str(out), *TINY, "--max-iters", "1"]) == 0
    (out / "latest").unlink()
    for name in ("model.safetensors", "config.json", "tokenizer.json", "optimizer.safetensors", "state.json"):
        (out / name).unlink()
    for published in (out / "checkpoints").iterdir():  # what a crash mid-save leaves: staging only
        published.rename(published.with_name(".tmp-" + published.name + "-abc123"))
    assert main(["train", "--data", str(corpus), "--out", str(out), *TINY, "--max-iters", "1"]) == 0


def test_resume_takes_the_run_directory_not_a_checkpoint_inside_it(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(corpus), "--out", str(out), *TINY, "--max-iters", "2",
                 "--eval-interval", "2"]) == 0
    before = _hashes(out / "latest")
    message = one_line_error(capsys, ["train", "--resume", "--out", str(out / "latest"), "--max-iters", "4",
                                       "--quiet"])
    assert "not a training run" in message
    assert _hashes(out / "latest") == before and not (out / "latest" / "metrics.jsonl").exists()


def test_checkpoint_write_errors_are_one_line_and_keep_the_previous_checkpoint(corpus, tmp_path, capsys,
                                                                              monkeypatch):
    import safetensors.numpy

    out = tmp_path / "run"
    assert main(["train", "--data", str(corpus), "--out", str(out), *TINY, "--max-iters", "2",
                 "--eval-interval", "2"]) == 0

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.numpy, "save_file", disk_full)
    message = one_line_error(capsys, ["train", "--resume", "--out", str(out), "--max-iters", "4", "--quiet"])
    assert "No space left on device" in message and "previous checkpoint is intact" in message
    monkeypatch.undo()
    assert load_checkpoint(out).state["step"] == 2
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]  # no temporary left


def test_a_config_reused_for_a_longer_run_decays_over_the_new_length(corpus, tmp_path):
    # train() resolved lr_decay_iters into the caller's TrainConfig: reused for a 6-step run (a notebook's
    # cfg.max_iters = 6), it decayed over the first run's 2 steps and trained the last 4 at min_lr
    cfg = _config(corpus, tmp_path / "short", max_iters=2, eval_interval=2)
    training.train(cfg, quiet=True)
    assert (cfg.lr_decay_iters, cfg.tokenizer) == (None, None)  # as given
    cfg.max_iters, cfg.out = 6, str(tmp_path / "long")
    training.train(cfg, quiet=True)
    assert load_checkpoint(tmp_path / "long").train_config["lr_decay_iters"] == 6


def test_default_lr_decay_follows_max_iters_and_short_runs_resume(corpus, tmp_path):
    # the shipped presets leave lr_decay_iters unset: --max-iters 4 decays to min_lr at step 4
    values = {**training.read_config_file("default"), "data": str(corpus), "out": str(tmp_path / "a"),
              "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "batch_size": 4, "eval_iters": 1,
              "warmup_iters": 2, "max_iters": 4, "eval_interval": 4, "backend": "numpy"}
    training.train(training.make_config(values), quiet=True)
    rows = training.read_metrics(tmp_path / "a" / "metrics.jsonl")
    assert rows[-1]["step"] == 4 and rows[-1]["lr"] == pytest.approx(values["min_lr"])
    # a run shorter than its warmup resolves the decay to the warmup, so its saved config still resumes
    cfg = _config(corpus, tmp_path / "b", warmup_iters=10, max_iters=2, eval_interval=2)
    training.train(cfg, quiet=True)
    assert load_checkpoint(tmp_path / "b").train_config["lr_decay_iters"] == 10
    training.train(_config(corpus, tmp_path / "b"), resume=True, quiet=True, overrides={"max_iters": 4})
    assert load_checkpoint(tmp_path / "b").state["step"] == 4


def test_done_line_of_a_resumed_run_says_the_total_is_over_every_run(corpus, tmp_path, capsys):
    # `elapsed` is saved and carried over on --resume (metrics.jsonl needs the total); the summary line
    # used to print only the total, which read as the resumed run's own time
    out, loud = tmp_path / "run", [arg for arg in TINY if arg != "--quiet"]
    assert main(["train", "--data", str(corpus), "--out", str(out), *loud, "--max-iters", "1"]) == 0
    first = capsys.readouterr().out
    assert "done: step 1" in first and "in this run" not in first
    assert main(["train", "--resume", "--out", str(out), "--max-iters", "2"]) == 0
    done = [line for line in capsys.readouterr().out.splitlines() if line.startswith("done: step 2")]
    assert len(done) == 1 and " s in all, " in done[0] and " s in this run;" in done[0]
    total, this_run = (float(part.split(" s in")[0].split()[-1]) for part in done[0].split(", ")[2:4])
    assert total >= this_run >= 0


def test_a_resumed_runs_total_is_the_sum_of_the_runs_own_times(corpus, tmp_path, capsys, monkeypatch):
    # the first run's done line counted its plot, which the elapsed time it saved did not: 4 steps read
    # "0.7 s", then --resume to 6 "0.6 s in all, 0.6 s in this run". A slow plot (0.5 s) makes the gap plain
    def slow_plot(out):
        time.sleep(0.5)
        return plot(out)

    plot = training.plot_metrics
    monkeypatch.setattr(training, "plot_metrics", slow_plot)
    out, loud = tmp_path / "run", [arg for arg in TINY if arg != "--quiet"]

    def seconds(line, before):
        return float(line.split(before)[0].split()[-1])

    assert main(["train", "--data", str(corpus), "--out", str(out), *loud, "--max-iters", "4"]) == 0
    first = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("done: step 4"))
    assert main(["train", "--resume", "--out", str(out), "--max-iters", "6"]) == 0
    done = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("done: step 6"))
    total, this_run = seconds(done, " s in all"), seconds(done, " s in this run")
    assert total == pytest.approx(seconds(first, " s;") + this_run, abs=0.1 + 1e-9)  # (each rounded to 0.1)
    # the API's total is what the checkpoint and metrics.jsonl's last row hold, which a --resume adds to
    summary = training.train(_config(corpus, out), resume=True, quiet=True, overrides={"max_iters": 8})
    assert summary["elapsed"] == load_checkpoint(out).state["elapsed"]
    assert round(summary["elapsed"], 3) == training.read_metrics(out / "metrics.jsonl")[-1]["elapsed"]


@pytest.mark.parametrize("max_iters", ["4", "6"])
def test_resuming_a_run_already_past_max_iters_says_nothing_to_do_without_a_bar(max_iters, corpus, tmp_path,
                                                                                capsys):
    # a bar of 4 steps begun at 6 drew tqdm's count-only form, '6step [00:00, ?step/s]', after the line
    # saying there is nothing to do (and at 6 of 6 a bar of no steps at 100%)
    out, loud = tmp_path / "run", [arg for arg in TINY if arg != "--quiet"]
    assert main(["train", "--data", str(corpus), "--out", str(out), *TINY, "--max-iters", "6"]) == 0
    saved = load_checkpoint(out).path
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(out), *loud, "--max-iters", max_iters]) == 0
    captured = capsys.readouterr()
    assert captured.err == f"{out} is already at step 6 >= --max-iters {max_iters}; nothing to do\n"
    assert captured.out.startswith("done: step 6, ") and load_checkpoint(out).path == saved


def test_a_text_the_runs_char_tokenizer_cannot_encode_is_named_with_the_run(corpus, tmp_path, capsys):
    # --resume (or eval --data) on a text with a character the run's tokenizer lacks said only "character
    # 'Z' is not in this tokenizer's vocabulary", naming neither the file nor the run
    out = tmp_path / "run"
    assert main(["train", "--data", str(corpus), "--out", str(out), *TINY, "--max-iters", "1"]) == 0
    other = tmp_path / "other.txt"
    other.write_text(TEXT + "Zounds!\n")
    expected = (f"tinygpt: error: the tokenizer of {out} cannot encode {other}: character 'Z' is not in this "
                "tokenizer's vocabulary")
    assert one_line_error(capsys, ["train", "--resume", "--out", str(out), "--data", str(other)]) == expected
    assert one_line_error(capsys, ["eval", "--out", str(out), "--data", str(other)]) == expected
    assert load_checkpoint(out).state["step"] == 1
    # --init-from's wrapper said "the tokenizer of RUN cannot encode FILE: data file is empty: FILE"
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert one_line_error(capsys, ["train", "--data", str(empty), "--out", str(tmp_path / "b"), "--init-from",
                                   str(out), "--block-size", "16", "--backend", "numpy", "--quiet"]) == \
        f"tinygpt: error: data file is empty: {empty}"


def test_corrupt_state_json_and_bad_eval_batches_are_one_line_errors(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(corpus), "--out", str(out), *TINY, "--max-iters", "1"]) == 0
    assert "--max-batches" in one_line_error(capsys, ["eval", "--out", str(out), "--max-batches", "0"])
    state_path = (out / "state.json").resolve()
    good = json.loads(state_path.read_text())

    def resume_with(state):
        # state.json has no checksum of its own; write it as a damaged or hand-edited file would be
        state_path.write_text(json.dumps(state))
        return one_line_error(capsys, ["train", "--resume", "--out", str(out), "--max-iters", "2",
                                        "--quiet"])

    assert "bit generator" in resume_with({**good, "sampler_rng": {"bit_generator": "seed"}})
    assert "RNG state" in resume_with({k: v for k, v in good.items() if k != "sampler_rng"})
    assert "valid step" in resume_with({**good, "step": "3"})
    assert "JSON object" in resume_with([1, 2])
    state_path.write_text(json.dumps(good))
    assert main(["train", "--resume", "--out", str(out), "--max-iters", "2", "--quiet"]) == 0


def test_a_config_files_init_from_refuses_shape_flags_as_the_flag_does(corpus, tmp_path, capsys):
    # init_from in a TOML config starts from the checkpoint as --init-from does: --n-layer 3 and --n-embd 32
    # were ignored, a model of the checkpoint's 1 layer and 16 wide trained without a word
    base = tmp_path / "base"
    assert main(["train", "--data", str(corpus), "--out", str(base), *TINY, "--max-iters", "1"]) == 0
    config = tmp_path / "ft.toml"
    config.write_text(f"init_from = {json.dumps(str(base))}\nblock_size = 8\nmax_iters = 1\n")
    ft = tmp_path / "ft"
    short = ["--batch-size", "2", "--eval-iters", "1", "--backend", "numpy", "--quiet"]
    message = one_line_error(capsys, ["train", "--config", str(config), "--data", str(corpus), "--out",
                                       str(ft), "--n-layer", "3", "--n-embd", "32", *short])
    # (named as the config file's, not as a flag the user never gave)
    assert f"--n-layer is for a model from scratch: with init_from in {config} the checkpoint's" in message
    assert not ft.exists()
    assert main(["train", "--config", str(config), "--data", str(corpus), "--out", str(ft), *short]) == 0
    assert load_checkpoint(ft).model.config.n_layer == 1


@pytest.mark.parametrize("flag", [["--n-layer", "2"], ["--n-head", "4"], ["--n-embd", "32"],
                                  ["--bias", "false"], ["--tokenizer", "bpe"], ["--vocab-size", "300"]])
def test_fine_tuning_refuses_shape_flags_the_checkpoint_would_override(corpus, tmp_path, capsys, flag):
    # the checkpoint's shape and tokenizer are used: a model flag given with --init-from would be ignored
    base = tmp_path / "base"
    if not base.exists():
        assert main(["train", "--data", str(corpus), "--out", str(base), *TINY, "--max-iters", "1"]) == 0
    ft = tmp_path / "ft"
    short = ["--block-size", "8", "--batch-size", "2", "--eval-iters", "1", "--backend", "numpy", "--quiet"]
    message = one_line_error(capsys, ["train", "--data", str(corpus), "--init-from", str(base), "--out",
                                       str(ft), *flag, *short, "--max-iters", "1"])
    assert f"{flag[0]} is for a model from scratch" in message and "--init-from" in message
    assert not ft.exists()
    # without it (and with a shorter --block-size, which only sets the training windows) fine-tuning runs
    assert main(["train", "--data", str(corpus), "--init-from", str(base), "--out", str(ft), *short,
                 "--max-iters", "1"]) == 0


def test_seed_sets_the_dropout_masks_when_fine_tuning(corpus, tmp_path):
    base = tmp_path / "base"
    training.train(_config(corpus, base, max_iters=1), quiet=True)
    draws = []
    for seed in (1, 2, 1):
        cfg = _config(corpus, tmp_path / f"ft{len(draws)}", init_from=str(base), dropout=0.1, seed=seed)
        model, _ = training.load_initial_model(cfg)
        draws.append(model.dropout_rng.random(3))
    assert not np.array_equal(draws[0], draws[1]) and np.array_equal(draws[0], draws[2])


def test_resume_from_another_working_directory(corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(corpus.parent)
    training.train(_config("input.txt", tmp_path / "run", max_iters=1), quiet=True)
    monkeypatch.chdir(tmp_path / "run")
    training.train(_config("input.txt", tmp_path / "run"), resume=True, quiet=True,
                   overrides={"max_iters": 2})
    assert load_checkpoint(tmp_path / "run").state["step"] == 2


_FAULTS_PROBE = """
import resource, sys
import numpy as np
if sys.argv[1] == "retain":
    from tinygpt.train import retain_freed_memory
    assert retain_freed_memory()
def step():  # a training step's pattern: many large temporaries alive at once, then all freed
    arrays = [np.ones(2**19, np.float32) for _ in range(16)]  # 16 x 2 MiB
    del arrays
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(sys.platform != "linux" or os.confstr("CS_GNU_LIBC_VERSION") is None,
                    reason="glibc's mallopt")
def test_retain_freed_memory_stops_steps_from_page_faulting_their_temporaries_back_in():
    # in subprocesses: the setting is process-wide. Without it glibc hands the 32 MiB back every "step"
    # and the next one faults all 8,192 pages in again (the control shows the probe can tell)
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", _FAULTS_PROBE, mode], capture_output=True, text=True,
                             check=True)
        return int(out.stdout.strip())

    assert faults("default") > 10 * 4096
    assert faults("retain") < 1000


def test_the_train_command_retains_freed_memory(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(training, "retain_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(training, "train", lambda *a, **k: None)
    assert main(["train", "--out", str(tmp_path / "run"), *TINY]) in (0, None)
    assert calls == [1]


def test_a_dangling_latest_link_and_an_empty_out_are_clear_errors(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(corpus), "--out", str(out), *TINY, "--max-iters", "1"]) == 0
    for step_dir in (out / "checkpoints").iterdir():
        step_dir.rename(tmp_path / step_dir.name)  # latest now points nowhere
    # it said "pass --resume", and --resume said "missing directory": no way forward
    line = one_line_error(capsys, ["train", "--data", str(corpus), "--out", str(out), *TINY])
    assert "points to a missing checkpoint: remove that link" in line
    assert "empty string" in one_line_error(capsys, ["train", "--data", str(corpus), "--out", "", *TINY])
    assert "empty string" in one_line_error(capsys, ["train", "--resume", "--out", ""])  # it resumed ./out



@pytest.mark.parametrize("kind", ["file", "directory"])
def test_a_new_run_into_a_folder_holding_a_latest_of_the_users_names_it(corpus, tmp_path, capsys, kind):
    # a file named latest was "a missing checkpoint: remove that link", a folder of notes "a checkpoint (a
    # run's checkpoints/step-N, or a copy of one)"; neither is a link, nor tinygpt's
    out = tmp_path / "models"
    out.mkdir()
    if kind == "file":
        (out / "latest").write_text("my notes\n")
    else:
        (out / "latest").mkdir()
        (out / "latest" / "notes.txt").write_text("my notes\n")
    line = one_line_error(capsys, ["train", "--data", str(corpus), "--out", str(out), *TINY])
    assert f"{out} already holds a {kind} named 'latest', not the link a run keeps to its current " \
           "checkpoint" in line and "choose another --out (nothing was changed)" in line
    assert sorted(p.name for p in out.rglob("*")) == ["latest", "notes.txt"][:1 + (kind == "directory")]


def test_evaluation_batches_take_no_memory_however_many(tmp_path):
    # every batch was drawn up front and kept: --eval-iters 10000000 grew until the OOM killer came
    import tracemalloc

    from tinygpt.data import get_batch

    tokens = np.arange(1000, dtype=np.uint16)
    tracemalloc.start()
    batches = training.fixed_eval_batches(tokens, 20_000, 4, 16, seed=7)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert held < 1 << 20, held  # it held 20,000 batches: about 20 MB
    assert len(batches) == 20_000
    rng = np.random.default_rng([7, 3])  # the batches drawn from the split's fixed seed, at every evaluation
    for (x, y), (x2, y2) in zip(list(batches)[:3], list(batches)[:3]):
        x3, y3 = get_batch(tokens, 4, 16, rng)
        for a, b in ((x, x2), (x, x3), (y, y2), (y, y3)):
            np.testing.assert_array_equal(a, b)


def test_read_metrics_skips_lines_that_are_not_rows(tmp_path):
    # a hand-edited `5` or `"x"` line was a TypeError in plot and an AttributeError on resume
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "val_loss": 3.0}\n5\n"x"\n{"val_loss": 1}\n'
                    '{"step": 2, "val_loss": 2.5}\n{"st')
    assert [r["step"] for r in training.read_metrics(path)] == [0, 2]


def test_metrics_with_bytes_that_are_not_utf8_or_losses_that_are_not_numbers(corpus, tmp_path, capsys):
    # a line of non-UTF-8 bytes (a damaged disk, an editor) was a UnicodeDecodeError traceback in plot and
    # in --resume; a hand-edited null or "x" loss was a TypeError / ValueError traceback in plot
    out = tmp_path / "run"
    assert main(["train", "--data", str(corpus), "--out", str(out), *TINY, "--max-iters", "2",
                 "--eval-interval", "1"]) == 0
    metrics = out / "metrics.jsonl"
    with open(metrics, "ab") as f:
        f.write(b'\xff\xfe{"step": 9}\n')
    assert [r["step"] for r in training.read_metrics(metrics)] == [0, 1, 2]
    capsys.readouterr()
    assert main(["plot", str(out)]) == 0, capsys.readouterr().err
    assert main(["train", "--resume", "--out", str(out), "--max-iters", "3", "--quiet"]) == 0
    assert [r["step"] for r in training.read_metrics(metrics)] == [0, 1, 2, 3]
    for value in ("null", '"x"', "[1]", "{}", "true"):
        (tmp_path / "hand").mkdir(exist_ok=True)
        (tmp_path / "hand" / "metrics.jsonl").write_text(f'{{"step": 0, "train_loss": {value}, "val_loss": '
                                                         f'{value}}}\n{{"step": 1, "train_loss": 2.0}}\n')
        capsys.readouterr()
        assert main(["plot", str(tmp_path / "hand")]) == 0, (value, capsys.readouterr().err)
    # steps are counts: a bool, a negative or a 400-digit "step" (an OverflowError in plot) is no row
    (tmp_path / "hand" / "metrics.jsonl").write_text(
        '{"step": true}\n{"step": -1}\n{"step": 1%s}\n{"step": 0, "train_loss": 1.0}\n' % ("0" * 400))
    assert [r["step"] for r in training.read_metrics(tmp_path / "hand" / "metrics.jsonl")] == [0]
    assert main(["plot", str(tmp_path / "hand")]) == 0, capsys.readouterr().err
    # a 400-digit loss, an int float() cannot take, was an OverflowError traceback in plot: it is a gap too
    big = "1" + "0" * 400
    (tmp_path / "hand" / "metrics.jsonl").write_text(f'{{"step": 0, "train_loss": {big}, "val_loss": 2.0}}\n'
                                                     f'{{"step": 1, "train_loss": 1.0, "val_loss": {big}}}\n')
    assert main(["plot", str(tmp_path / "hand")]) == 0, capsys.readouterr().err


def test_a_new_run_keeps_an_earlier_checkpoint_whose_latest_link_is_gone(corpus, tmp_path, capsys):
    training.train(_config(corpus, tmp_path / "run", max_iters=2), quiet=True)
    (tmp_path / "run" / "latest").unlink()
    saved = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    # the new run deleted it at its first save, and metrics.jsonl with it
    with pytest.raises(TinyGPTError, match=r"holds the checkpoint checkpoints/step-00000002.*ln -s"):
        training.train(_config(corpus, tmp_path / "run", max_iters=2), quiet=True)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == saved
    assert (tmp_path / "run" / "metrics.jsonl").exists()



def test_a_run_killed_between_its_first_saves_rename_and_link_can_be_started_again(corpus, tmp_path,
                                                                                monkeypatch):
    # killed there, it left checkpoints/step-00000000 and no `latest`: started again it was refused ("holds
    # the checkpoint ... of an earlier run ... restore the link (ln -s ...)") and --resume found no checkpoint
    import tinygpt.checkpoint

    class Killed(BaseException):  # (no except clause of the save catches it: nothing is cleaned up)
        pass

    def killed(*args):
        raise Killed

    monkeypatch.setattr(tinygpt.checkpoint, "_symlink_atomically", killed)
    with pytest.raises(Killed):
        training.train(_config(corpus, tmp_path / "run", max_iters=3, eval_interval=2), quiet=True)
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-00000000"]
    assert not (tmp_path / "run" / "latest").is_symlink()
    training.train(_config(corpus, tmp_path / "run", max_iters=3, eval_interval=2), quiet=True)
    training.train(_config(corpus, tmp_path / "clean", max_iters=3, eval_interval=2), quiet=True)
    assert _rows(tmp_path / "run") == _rows(tmp_path / "clean")
    assert load_checkpoint(tmp_path / "run").state["step"] == 3

def test_a_closed_stderr_does_not_stop_training_nor_put_its_lines_on_stdout(corpus, tmp_path, monkeypatch,
                                                                           capsys):
    # `tinygpt train 2>&-`: sys.stderr is None, and the progress bar's first write raised AttributeError (exit
    # 1, no message to be seen) before any step. Then the progress lines (tqdm.write(file=None)), resume's
    # warnings and the plot's (print(file=None)) went to stdout, among the run's summary line, where the
    # command line's own lines are dropped (cli._say)
    monkeypatch.setattr(sys, "stderr", None)
    run = tmp_path / "run"
    training.train(_config(corpus, run, max_iters=2, eval_interval=2), quiet=False)
    assert load_checkpoint(run).state["step"] == 2
    assert capsys.readouterr().out.startswith("done: step 2, val loss")
    (run / "loss.png").unlink()
    (run / "loss.png").mkdir()  # the plot cannot be written: a warning
    training.train(training.TrainConfig(out=str(run)), resume=True, quiet=False,
                   overrides={"max_iters": 4, "batch_size": 2})  # a warning: the eval batches change
    assert load_checkpoint(run).state["step"] == 4
    out = capsys.readouterr().out
    assert out.startswith("done: step 4, val loss") and len(out.splitlines()) == 1, out


def test_numpy_integers_are_accepted_as_settings_and_the_run_saves(corpus, tmp_path):
    # validate() accepts NumPy integers (a notebook's `for n in np.arange(...)`), but the run then died at its
    # first checkpoint with "TypeError: Object of type int64 is not JSON serializable", a metrics row written
    cfg = _config(corpus, tmp_path / "run", max_iters=np.int64(2), eval_interval=np.int32(1),
                  batch_size=np.int64(2), seed=np.uint8(3), lr_decay_iters=np.int64(2))
    training.train(cfg, quiet=True)
    saved = load_checkpoint(tmp_path / "run").train_config
    assert (saved["max_iters"], saved["eval_interval"], saved["batch_size"], saved["seed"]) == (2, 1, 2, 3)
    assert [r["tokens"] for r in training.read_metrics(tmp_path / "run" / "metrics.jsonl")] == [0, 32, 64]


def test_a_numpy_integer_vocab_size_is_accepted_as_the_other_counts_are():
    # np.int64(300) was refused as "--vocab-size must be an integer above 256, got 300"
    cfg = training.make_config({"tokenizer": "bpe", "vocab_size": np.int64(300)})
    assert type(cfg.vocab_size) is int and json.loads(json.dumps(cfg.to_dict()))["vocab_size"] == 300
    for bad in (np.int64(256), 300.0, True):
        with pytest.raises(TinyGPTError, match="--vocab-size must be an integer above 256"):
            training.make_config({"tokenizer": "bpe", "vocab_size": bad})


def test_a_numpy_bool_is_accepted_as_a_true_or_false_setting():
    # a NumPy bool (a comparison's, `n_layer > 2`) was refused as "--bias must be true or false, got True"
    cfg = training.make_config({"bias": np.int64(3) > 2, "recompute": np.bool_(False)})
    assert (cfg.bias, cfg.recompute) == (True, False)
    assert type(cfg.bias) is bool and type(cfg.recompute) is bool  # (saved as JSON)
    with pytest.raises(TinyGPTError, match="--bias must be true or false, got 1"):
        training.make_config({"bias": 1})


# --- token directories prepared elsewhere: nanoGPT's train.bin / val.bin ------------------------------------


def test_a_run_on_nanogpts_char_files_resumes_exactly_evaluates_and_samples(tmp_path, nanogpt_dir, capsys,
                                                                             monkeypatch):
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "shakespeare_char"
    _, val_ids = nanogpt_dir(folder, TEXT, "char")
    kw = {"dropout": 0.1, "eval_interval": 3, "lr_decay_iters": 6}
    training.train(_config(folder, tmp_path / "full", max_iters=6, **kw), quiet=True)
    training.train(_config(folder, tmp_path / "part", max_iters=3, **kw), quiet=True)
    training.train(training.TrainConfig(out=str(tmp_path / "part")), resume=True, quiet=True,
                   overrides={"max_iters": 6})
    assert capsys.readouterr().err == ""  # the same files: no warning
    assert _rows(tmp_path / "part") == _rows(tmp_path / "full")
    assert [r["step"] for r in _rows(tmp_path / "full")] == [0, 3, 6]
    full, part = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "part")
    for name, p in full.model.params.items():
        np.testing.assert_array_equal(part.model.params[name], p, err_msg=name)
    # nanoGPT's ids: the model has meta.pkl's vocabulary, the checkpoint its characters in that order
    assert full.tokenizer.chars == sorted(set(TEXT)) and full.model.config.vocab_size == len(set(TEXT))
    record = full.train_config
    assert (record["tokenizer"], record["data"]) == ("char", str(folder.resolve()))
    assert "data_sha256" not in record and len(record["data_fingerprint"]) == 64
    assert not (tmp_path / "cache").exists()  # nothing tokenized, nothing cached
    # eval: back-to-back windows of val.bin, the same loss as the model's own forward over them
    result = training.evaluate(tmp_path / "full", backend="numpy")
    n = (len(val_ids) - 1) // 16
    x = np.stack([val_ids[i * 16 : i * 16 + 16] for i in range(n)])
    y = np.stack([val_ids[i * 16 + 1 : i * 16 + 17] for i in range(n)])
    model = full.model
    model.eval()
    assert result["tokens"] == y.size and result["loss"] == pytest.approx(model.forward(x, y)[1], rel=1e-5)
    assert main(["eval", "--out", str(tmp_path / "full"), "--split", "train", "--backend", "numpy"]) == 0
    assert capsys.readouterr().out.startswith(f"train split of {folder.resolve()}: ")
    # sample: decoded through meta.pkl's characters
    assert main(["sample", "--out", str(tmp_path / "full"), "--prompt", "ROMEO:", "--max-new-tokens", "30",
                 "--seed", "0"]) == 0
    sample = capsys.readouterr().out
    assert sample.startswith("ROMEO:") and len(sample) == len("ROMEO:") + 30 + 1 and set(sample) <= set(TEXT)


def test_a_run_on_nanogpts_gpt2_files_and_a_pretrained_gpt2_scored_on_them(tmp_path, nanogpt_dir,
                                                                            pretrained_dir, capsys):
    folder = tmp_path / "shakespeare"
    _, val_ids = nanogpt_dir(folder, TEXT * 4, "gpt2")  # tiktoken's ids; 140-odd in val.bin
    out = tmp_path / "run"
    assert main(["train", "--data", str(folder), "--out", str(out), *TINY, "--max-iters", "2",
                 "--eval-interval", "2"]) == 0
    ckpt = load_checkpoint(out)
    assert ckpt.train_config["tokenizer"] == "gpt2" and ckpt.model.config.vocab_size == 50257
    assert main(["sample", "--out", str(out), "--prompt", "ROMEO:", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("ROMEO:")
    # fine-tuning a GPT-2 on them: its tokenizer holds their ids
    directory, hf = pretrained_dir
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "ft"), "--pretrained",
                 str(directory), "--block-size", "16", "--batch-size", "2", "--max-iters", "1",
                 "--eval-iters", "1", "--backend", "numpy", "--quiet"]) == 0
    # the GPT-2 scored on val.bin: transformers' mean loss over the same back-to-back windows of 64
    import torch

    n = (len(val_ids) - 1) // 64
    windows = torch.tensor([val_ids[i * 64 : i * 64 + 65] for i in range(n)])
    with torch.no_grad():
        logits = hf(windows[:, :-1]).logits
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 windows[:, 1:].reshape(-1)).item()
    result = training.evaluate(pretrained=directory, data=str(folder), backend="numpy")
    assert (result["split"], result["tokens"]) == ("val", n * 64)
    assert result["loss"] == pytest.approx(expected, rel=1e-5)
    assert main(["eval", "--pretrained", str(directory), "--data", str(folder), "--backend", "numpy"]) == 0
    assert capsys.readouterr().out.startswith(f"val split of {folder}: {n * 64} of its {len(val_ids)} tokens "
                                              "scored, windows of 64 tokens every 64\n")


def test_a_tokenizer_setting_on_a_token_folder_must_be_its_own_in_python_too(corpus, tmp_path, nanogpt_dir):
    # TrainConfig(tokenizer=...) gave way to the folder's tokenizer without a word (only the command line
    # refused it): "char" trained a GPT-2 model on GPT-2's ids, a BPE spec a model of the folder's tokenizer
    chars, gpt2 = tmp_path / "chars", tmp_path / "gpt2"
    nanogpt_dir(chars, TEXT, "char")
    nanogpt_dir(gpt2, TEXT, "gpt2")
    holds = {chars: "characters (meta.pkl), so its tokenizer is char",
             gpt2: "GPT-2's ids (no meta.pkl), so its tokenizer is gpt2"}
    for folder, other in ((chars, "gpt2"), (gpt2, "char"), (chars, "bpe"), (gpt2, "bpe")):
        out = tmp_path / f"{folder.name}-{other}"
        vocab_size = 300 if other == "bpe" else None
        message = f"--tokenizer {other}: {folder} is already tokenized, it holds {holds[folder]}"
        with pytest.raises(TinyGPTError, match=re.escape(message)):
            training.train(_config(folder, out, tokenizer=other, vocab_size=vocab_size, max_iters=1),
                           quiet=True)
        assert not out.exists()  # refused before any training
    # the folder's own, named or not (None, the default: the folder's for a folder, char for a text file)
    for folder, kind in ((chars, "char"), (gpt2, "gpt2")):
        for tokenizer in (kind, None):
            out = tmp_path / f"{folder.name}-{tokenizer}"
            training.train(_config(folder, out, tokenizer=tokenizer, max_iters=1), quiet=True)
            assert load_checkpoint(out).train_config["tokenizer"] == kind
    assert training.TrainConfig().tokenizer is None
    training.train(_config(corpus, tmp_path / "text", max_iters=1), quiet=True)
    assert load_checkpoint(tmp_path / "text").train_config["tokenizer"] == "char"


def test_resume_warns_when_the_token_files_changed(tmp_path, nanogpt_dir, capsys):
    folder = tmp_path / "chars"
    _, val_ids = nanogpt_dir(folder, TEXT, "char")
    training.train(_config(folder, tmp_path / "run", max_iters=2), quiet=True)
    capsys.readouterr()
    np.array(val_ids[::-1], dtype=np.uint16).tofile(folder / "val.bin")  # the same size, other ids
    training.train(training.TrainConfig(out=str(tmp_path / "run")), resume=True, quiet=True,
                   overrides={"max_iters": 3})
    err = capsys.readouterr().err
    assert f"the token files of {folder.resolve()} changed since the run started" in err


def test_eval_warns_when_the_runs_own_data_changed_since_it_trained(corpus, tmp_path, nanogpt_dir, capsys,
                                                                     monkeypatch):
    # the score of an edited text's val split was printed as the run's, with nothing said
    out = tmp_path / "run"
    assert main(["train", "--data", str(corpus), "--out", str(out), *TINY, "--max-iters", "2",
                 "--eval-interval", "2"]) == 0
    assert main(["eval", "--out", str(out), "--backend", "numpy"]) == 0
    assert capsys.readouterr().err == ""
    corpus.write_text(TEXT.replace("Romeo", "Juliet"))
    for given in ([], ["--data", str(corpus)]):  # its own data, found in its record or given again
        assert main(["eval", "--out", str(out), "--backend", "numpy", *given]) == 0
        assert capsys.readouterr().err == (f"tinygpt: warning: the text of {corpus} changed since {out} "
                                           "trained on it: the val split scored is of the text as it is now, "
                                           "not as the run saw it\n")
    other = tmp_path / "other.txt"
    other.write_text(TEXT)  # another file: scored as asked, no warning
    assert main(["eval", "--out", str(out), "--backend", "numpy", "--data", str(other)]) == 0
    assert capsys.readouterr().err == ""

    folder = tmp_path / "chars"
    _, val_ids = nanogpt_dir(folder, TEXT, "char")
    training.train(_config(folder, tmp_path / "tokens", max_iters=2), quiet=True)
    np.array(val_ids[::-1], dtype=np.uint16).tofile(folder / "val.bin")  # the same size, other ids
    assert main(["eval", "--out", str(tmp_path / "tokens"), "--backend", "numpy", "--split", "train"]) == 0
    assert capsys.readouterr().err == (f"tinygpt: warning: the token files of {folder} changed since "
                                       f"{tmp_path / 'tokens'} trained on them: the train split scored is of "
                                       "the token files as they are now, not as the run saw them\n")


def test_resume_on_other_data_says_what_the_data_changed_from_and_to(corpus, tmp_path, nanogpt_dir, capsys):
    # a run moved from a text file to a token folder (or back) was told that "the token files" of the text
    # file (or "the text" of the folder) changed
    folder, other_folder = tmp_path / "chars", tmp_path / "more-chars"
    nanogpt_dir(folder, TEXT, "char")  # the text's characters: the run's tokenizer reads these ids
    nanogpt_dir(other_folder, TEXT[::-1], "char")
    other_text = tmp_path / "other.txt"
    other_text.write_text(TEXT[::-1])
    training.train(_config(corpus, tmp_path / "run", max_iters=1, eval_interval=1), quiet=True)
    capsys.readouterr()
    tail = "; the resumed run is not the uninterrupted one\n"
    for step, (before, after) in enumerate([(corpus, folder), (folder, corpus), (corpus, other_text),
                                             (other_text, corpus), (corpus, folder), (folder, other_folder)]):
        training.train(training.TrainConfig(out=str(tmp_path / "run")), resume=True, quiet=True,
                       overrides={"max_iters": step + 2, "data": str(after)})
        kinds = ["token folder" if path.is_dir() else "text file" for path in (before, after)]
        other = "text" if kinds == ["text file"] * 2 else "tokens"
        assert capsys.readouterr().err == (
            f"tinygpt: warning: the data changed from {kinds[0]} {before.resolve()} to {kinds[1]} "
            f"{after.resolve()}: training and validation batches now come from other {other}" + tail)
    # a copy of the data elsewhere is the same data: no warning
    shutil.copytree(other_folder, tmp_path / "copy")
    training.train(training.TrainConfig(out=str(tmp_path / "run")), resume=True, quiet=True,
                   overrides={"max_iters": 8, "data": str(tmp_path / "copy")})
    assert capsys.readouterr().err == ""


def test_eval_scans_only_the_token_file_it_scores(tmp_path, nanogpt_dir, monkeypatch):
    # openwebtext's val.bin is 9 MB and its train.bin 17 GB: eval of val.bin read both to check their ids
    from tinygpt import data

    folder = tmp_path / "chars"
    nanogpt_dir(folder, TEXT, "char")
    training.train(_config(folder, tmp_path / "run", max_iters=1), quiet=True)
    scanned, scan = [], data._max_id_below
    monkeypatch.setattr(data, "_max_id_below", lambda tokens, limit, path, vocabulary: (
        scanned.append(path.name), scan(tokens, limit, path, vocabulary))[1])
    for split in ("val", "train"):
        training.evaluate(tmp_path / "run", split=split, backend="numpy")
    assert scanned == ["val.bin", "train.bin"]


def test_bad_token_directories_are_one_line_errors_naming_the_file(tmp_path, nanogpt_dir, capsys):
    chars, gpt2 = tmp_path / "chars", tmp_path / "gpt2"
    nanogpt_dir(chars, TEXT, "char")
    nanogpt_dir(gpt2, TEXT, "gpt2")
    train_argv = ["train", "--out", str(tmp_path / "o"), *TINY, "--max-iters", "1"]
    assert main(["train", "--data", str(chars), "--out", str(tmp_path / "char-run"), *TINY, "--max-iters",
                 "1"]) == 0
    for flags, message in (
        (["--tokenizer", "gpt2"], f"--tokenizer gpt2: {chars} is already tokenized, it holds characters "
                                  "(meta.pkl), so its tokenizer is char"),
        (["--tokenizer", "bpe", "--vocab-size", "300"], "--tokenizer bpe: "),
        (["--vocab-size", "300"], f"--vocab-size: {chars} is already tokenized"),
        (["--block-size", "200"], f"token file {chars / 'val.bin'} is too small: it holds "),
    ):
        assert message in one_line_error(capsys, [*train_argv, "--data", str(chars), *flags])
    line = one_line_error(capsys, [*train_argv, "--data", str(gpt2), "--tokenizer", "char"])
    assert "it holds GPT-2's ids (no meta.pkl), so its tokenizer is gpt2" in line
    line = one_line_error(capsys, ["train", "--data", str(gpt2), "--out", str(tmp_path / "o"), "--init-from",
                                    str(tmp_path / "char-run"), "--block-size", "16", "--quiet"])
    run = tmp_path / "char-run"
    assert f"the tokenizer of {run} is a character tokenizer, and {gpt2} holds GPT-2's ids" in line
    line = one_line_error(capsys, ["eval", "--out", str(tmp_path / "char-run"), "--data", str(gpt2)])
    assert "is a character tokenizer" in line
    line = one_line_error(capsys, ["eval", "--pretrained", str(run), "--data", str(gpt2), "--split", "all"])
    assert "--split all: a token directory is scored one file at a time" in line

    def damaged(name, write):
        broken = tmp_path / name
        shutil.copytree(chars, broken)
        write(broken)
        return one_line_error(capsys, [*train_argv, "--data", str(broken)]), broken

    line, broken = damaged("odd", lambda d: (d / "train.bin").write_bytes((d / "train.bin").read_bytes()[1:]))
    assert f"token file {broken / 'train.bin'} is " in line and "not a whole number of 2-byte" in line
    line, broken = damaged("empty", lambda d: (d / "val.bin").write_bytes(b""))
    assert f"token file {broken / 'val.bin'} holds no tokens" in line
    line, broken = damaged("no-val", lambda d: (d / "val.bin").unlink())
    assert f"data directory {broken} has train.bin but no val.bin" in line
    line, broken = damaged("no-files", lambda d: [(d / n).unlink() for n in ("train.bin", "val.bin")])
    assert f"data directory {broken} has no train.bin and val.bin" in line
    line, broken = damaged("big-id", lambda d: (d / "val.bin").write_bytes(np.array([1, 2, 300], "<u2")
                                                                            .tobytes() * 20))
    assert f"token file {broken / 'val.bin'} holds id 300 at position 2, but its meta.pkl's" in line
    line, broken = damaged("pickle", lambda d: (d / "meta.pkl").write_bytes(
        b"cos\nsystem\n(S'touch " + str(d / "ran").encode() + b"'\ntR."))  # os.system("touch ...")
    assert f"cannot read {broken / 'meta.pkl'}: refused to load os.system" in line
    assert not (broken / "ran").exists()
    # and as a real process: exit status 2, one line, no traceback
    proc = subprocess.run([sys.executable, "-m", "tinygpt", *train_argv, "--data", str(broken)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not (broken / "ran").exists()


def test_a_run_on_llmc_token_files_is_the_run_on_the_same_ids_from_nanogpt(tmp_path, nanogpt_dir):
    train_ids, val_ids = nanogpt_dir(tmp_path / "nanogpt", TEXT, "gpt2")
    llmc = tmp_path / "llmc"
    llmc.mkdir()
    for name, ids in (("tiny_shakespeare_train.bin", train_ids), ("tiny_shakespeare_val.bin", val_ids)):
        header = np.zeros(256, dtype="<i4")
        header[:3] = 20240520, 1, len(ids)  # llm.c's magic, version (GPT-2's ids) and token count
        (llmc / name).write_bytes(header.tobytes() + np.array(ids, dtype="<u2").tobytes())
    for folder in ("nanogpt", "llmc"):
        training.train(_config(tmp_path / folder, tmp_path / f"run-{folder}", max_iters=2, eval_interval=2),
                       quiet=True)
    assert _rows(tmp_path / "run-llmc") == _rows(tmp_path / "run-nanogpt")  # the same batches of the same ids
    assert load_checkpoint(tmp_path / "run-llmc").train_config["tokenizer"] == "gpt2"
    ours = training.evaluate(tmp_path / "run-llmc", backend="numpy")
    theirs = training.evaluate(tmp_path / "run-nanogpt", backend="numpy")
    assert (ours["loss"], ours["tokens"]) == (theirs["loss"], theirs["tokens"])


def _write_llmc_shards(folder, split, parts, numbers):
    """``parts`` as llm.c's fineweb.py writes a split's shards: fineweb_SPLIT_NNNNNN.bin, a header each."""
    folder.mkdir(parents=True, exist_ok=True)
    for number, ids in zip(numbers, parts):
        header = np.zeros(256, dtype="<i4")
        header[:3] = 20240520, 1, len(ids)
        (folder / f"fineweb_{split}_{number:06d}.bin").write_bytes(header.tobytes() + np.array(ids, "<u2")
                                                                   .tobytes())


def test_a_run_on_llmc_shards_is_the_run_on_their_ids_joined_and_resumes_and_evaluates(tmp_path, nanogpt_dir,
                                                                                        capsys, monkeypatch):
    # llm.c cuts its shards where they fill, mid-document: here mid-text, small enough that windows of 17
    # run from one shard into the next
    train_ids, val_ids = nanogpt_dir(tmp_path / "joined", TEXT * 2, "gpt2")
    shards = tmp_path / "fineweb10B"
    _write_llmc_shards(shards, "val", np.array_split(val_ids, 2), (0, 1))
    _write_llmc_shards(shards, "train", np.array_split(train_ids, [150, 260]), (1, 2, 4))  # (a gap: allowed)
    argv = ["train", "--data", str(shards), *TINY, "--eval-interval", "2", "--lr-decay-iters", "4"]
    assert main([*argv, "--out", str(tmp_path / "full"), "--max-iters", "4"]) == 0
    assert main(["train", "--data", str(tmp_path / "joined"), "--out", str(tmp_path / "run-joined"), *TINY,
                 "--eval-interval", "2", "--lr-decay-iters", "4", "--max-iters", "4"]) == 0
    assert _rows(tmp_path / "full") == _rows(tmp_path / "run-joined")  # the same batches of the same ids
    # resumed, it continues exactly
    assert main([*argv, "--out", str(tmp_path / "part"), "--max-iters", "2"]) == 0
    assert main(["train", "--out", str(tmp_path / "part"), "--resume", "--max-iters", "4", "--quiet"]) == 0
    assert capsys.readouterr().err == ""  # the same shards: no warning
    assert _rows(tmp_path / "part") == _rows(tmp_path / "full")
    full, part = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "part")
    for name, p in full.model.params.items():
        np.testing.assert_array_equal(part.model.params[name], p, err_msg=name)
    record = full.train_config
    assert (record["tokenizer"], record["data"]) == ("gpt2", str(shards.resolve()))
    assert len(record["data_fingerprint"]) == 64
    # eval: the val shards (or the train shards), as the joined ids score
    for split in ("val", "train"):
        ours = training.evaluate(tmp_path / "full", split=split, backend="numpy")
        theirs = training.evaluate(tmp_path / "run-joined", split=split, backend="numpy")
        assert (ours["loss"], ours["tokens"], ours["split_tokens"]) == (theirs["loss"], theirs["tokens"],
                                                                        theirs["split_tokens"])
        assert main(["eval", "--out", str(tmp_path / "full"), "--data", str(shards), "--split", split,
                     "--backend", "numpy"]) == 0
        assert capsys.readouterr().out.startswith(f"{split} split of {shards}: {ours['tokens']:,} tokens, "
                                                  "model at step 4\n")
    # too few ids for a window: the split's shards are named by their count and folder
    n = len(val_ids)
    line = one_line_error(capsys, [*argv, "--out", str(tmp_path / "o"), "--block-size", str(n),
                                    "--max-iters", "1"])
    assert (f"the 2 val shards of {shards} are too small: they hold {n} tokens, block size {n} needs at "
            f"least {n + 1}") in line
    # a shard more is other data: the resume says so
    _write_llmc_shards(shards, "train", [train_ids[:40]], (5,))
    assert main(["train", "--out", str(tmp_path / "part"), "--resume", "--max-iters", "5", "--quiet"]) == 0
    assert f"the token files of {shards.resolve()} changed since the run started" in capsys.readouterr().err
    # a scan of many GB is announced (here every scan: the threshold lowered), once, before the first step
    monkeypatch.setattr(tinygpt_data, "_SAY_SCAN_BYTES", 0)
    loud = [flag for flag in argv if flag != "--quiet"]
    assert main([*loud, "--out", str(tmp_path / "told"), "--max-iters", "1"]) == 0
    err = capsys.readouterr().err
    assert err.count(f"checking every id of {shards} (0.0 GB in 6 files) against the vocabulary") == 1
    assert err.index("checking every id") < err.index("step 0:")
    # and eval's, on stderr, its results alone on stdout (it waited in silence)
    assert main(["eval", "--out", str(tmp_path / "told"), "--split", "train"]) == 0
    told = capsys.readouterr()
    assert told.err == (f"tinygpt: checking every id of {shards} (0.0 GB in 4 files) against the vocabulary, "
                        "read once\n")
    assert "checking" not in told.out and "loss" in told.out


def _scripted_val_losses(monkeypatch, out, val_losses):
    """Make evaluation k of a run into ``out`` report ``val_losses[k]`` as its val loss (the train loss is
    computed as usual); k counts the metrics rows written so far, so a resumed run goes on where it was.
    Returns {step: weights} of the model at each scripted evaluation."""
    real = training.mean_loss
    weights = {}

    def mean_loss(model, batches):
        loss = real(model, batches)
        metrics = Path(out) / "metrics.jsonl"
        k = len(training.read_metrics(metrics)) if metrics.exists() else 0
        if batches is _scripted_val_losses.val:  # (the val set: see the fixed_eval_batches patch below)
            weights[k] = {name: p.copy() for name, p in model.params.items()}
            return val_losses[k]
        return loss

    def fixed_eval_batches(tokens, *args):  # remember which of the two sets is val's (built second)
        batches = real_fixed(tokens, *args)
        _scripted_val_losses.val = batches
        return batches

    real_fixed = training.fixed_eval_batches
    monkeypatch.setattr(training, "mean_loss", mean_loss)
    monkeypatch.setattr(training, "fixed_eval_batches", fixed_eval_batches)
    return weights


def test_best_names_the_checkpoint_of_the_lowest_val_loss_and_it_is_kept(corpus, tmp_path, monkeypatch,
                                                                          capsys):
    # nanoGPT keeps only the checkpoint of the best val loss; a run that overfits past it lost it here,
    # every save deleting the one before. Evaluations every 2 steps: the best is step 6 (val 1.5)
    out = tmp_path / "run"
    weights = _scripted_val_losses(monkeypatch, out, [3.0, 2.0, 2.5, 1.5, 1.7, 1.6])
    summary = training.train(_config(corpus, out, max_iters=10, eval_interval=2), quiet=False)
    assert os.readlink(out / "best") == "checkpoints/step-00000006"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000006", "step-00000010"]
    best = load_checkpoint(out / "best")
    assert best.state["step"] == 6 and best.state["best_val_loss"] == 1.5 and best.state["best_step"] == 6
    for name, p in best.model.params.items():
        np.testing.assert_array_equal(p, weights[3][name])  # the weights evaluated at step 6
    assert load_checkpoint(out).state["best_step"] == 6
    assert summary["best_step"] == 6 and summary["best_val_loss"] == 1.5 and summary["val_loss"] == 1.6
    done = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"checkpoint in {out} (the best, val loss 1.5000 at step 6, in {out / 'best'})" in done
    assert main(["sample", "--out", str(out / "best"), "--max-new-tokens", "3", "--seed", "0"]) == 0


def test_a_resume_after_a_crash_between_the_two_link_swaps_ends_with_the_uninterrupted_best(
        corpus, tmp_path, monkeypatch):
    from tinygpt import checkpoint

    val_losses = [3.0, 2.0, 2.5, 1.5, 1.7, 1.6]
    kw = {"max_iters": 10, "eval_interval": 2}
    _scripted_val_losses(monkeypatch, tmp_path / "full", val_losses)
    training.train(_config(corpus, tmp_path / "full", **kw), quiet=True)
    monkeypatch.undo()

    class Crash(BaseException):
        pass

    real_swap = checkpoint._symlink_atomically

    def swap(target, link):  # the process dies after publishing step 6 as latest, before naming it best
        if link.name == "best" and target.endswith("step-00000006"):
            raise Crash
        real_swap(target, link)

    part = tmp_path / "part"
    _scripted_val_losses(monkeypatch, part, val_losses)
    monkeypatch.setattr(checkpoint, "_symlink_atomically", swap)
    with pytest.raises(Crash):
        training.train(_config(corpus, part, **kw), quiet=True)
    assert os.readlink(part / "latest") == "checkpoints/step-00000006"
    assert os.readlink(part / "best") == "checkpoints/step-00000002"  # stale, and still there
    monkeypatch.setattr(checkpoint, "_symlink_atomically", real_swap)
    training.train(training.TrainConfig(out=str(part)), resume=True, quiet=True)
    assert _rows(part) == _rows(tmp_path / "full")
    assert os.readlink(part / "best") == os.readlink(tmp_path / "full" / "best")
    assert os.readlink(part / "best") == "checkpoints/step-00000006"
    assert sorted(p.name for p in (part / "checkpoints").iterdir()) == ["step-00000006", "step-00000010"]


def test_a_resume_refuses_a_best_that_is_not_a_link_before_training(corpus, tmp_path, monkeypatch):
    # `best` replaced by a copy of its checkpoint (latest still a link): the first save of the resumed run
    # refused it, after the steps up to that evaluation were trained (its metrics row already written)
    out = tmp_path / "run"
    _scripted_val_losses(monkeypatch, out, [3.0, 2.0, 2.5])
    training.train(_config(corpus, out, max_iters=4, eval_interval=2), quiet=True)
    monkeypatch.undo()
    assert os.readlink(out / "best") == "checkpoints/step-00000002"  # not the latest, so no repair
    target = (out / "best").resolve()
    (out / "best").unlink()
    shutil.copytree(target, out / "best")
    before = _rows(out)
    with pytest.raises(TinyGPTError, match="best is a directory, not the link tinygpt keeps to the best "
                                           "checkpoint"):
        training.train(training.TrainConfig(out=str(out)), resume=True, quiet=True,
                       overrides={"max_iters": 8})
    assert _rows(out) == before
    assert load_checkpoint(out).state["step"] == 4


def test_the_loss_plot_marks_the_best_val_loss(tmp_path, monkeypatch):
    # the checkpoint DIR/best keeps: the lowest val loss, the first where it recurs; the title says it
    # when the run went on past it
    from matplotlib.figure import Figure

    drawn = []
    savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **kw: drawn.append(fig) or savefig(fig, *a, **kw))
    out = tmp_path / "run"
    out.mkdir()
    rows = [(0, 4.0, 4.1), (10, 3.0, 3.2), (20, 2.0, 2.9), (30, 1.5, 2.9), (40, 1.0, 3.4)]
    (out / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "train_loss": t, "val_loss": v}) + "\n"
                                               for s, t, v in rows))
    training.plot_metrics(out)
    ax = drawn[-1].axes[0]
    assert ax.get_title() == "run: final val loss 3.4000, best 2.9000 at step 20"
    star = [line for line in ax.lines if line.get_marker() == "*"]
    assert len(star) == 1 and list(star[0].get_xdata()) == [20] and list(star[0].get_ydata()) == [2.9]
    assert "best val 2.9000 (step 20)" in [text.get_text() for text in ax.get_legend().get_texts()]
    (out / "metrics.jsonl").write_text('{"step": 0, "train_loss": 3.5, "val_loss": 3.6}\n'
                                       '{"step": 5, "train_loss": 3.0, "val_loss": 3.1}\n')
    training.plot_metrics(out)
    assert drawn[-1].axes[0].get_title() == "run: final val loss 3.1000"  # the best is the last: no repeat
    (out / "metrics.jsonl").write_text('{"step": 0, "train_loss": 3.5, "val_loss": null}\n')
    training.plot_metrics(out)
    assert [line.get_marker() for line in drawn[-1].axes[0].lines] == ["o", "o"]  # nothing to mark

    assert len(drawn[-1].axes) == 1  # no HellaSwag accuracies: no axis for them
    # a run named by `.` or `..` (`tinygpt plot .` in it, or trained with --out .) is titled by its name,
    # where the title began ": final val loss"
    monkeypatch.chdir(out)
    for relative in (".", "sub/.."):
        (out / "sub").mkdir(exist_ok=True)
        training.plot_metrics(relative)
        assert drawn[-1].axes[0].get_title().startswith("run: final val loss"), relative


def test_the_loss_plot_draws_the_hellaswag_accuracies_of_a_run_that_scored_them(tmp_path):
    # --hellaswag's columns in metrics.jsonl were in no plot; an accuracy is not a loss: an axis of its own
    rows = [{"step": 0, "train_loss": 4.0, "val_loss": 4.1, "hellaswag_acc": 0.25,
             "hellaswag_acc_norm": 0.26},
            {"step": 10, "train_loss": 3.0, "val_loss": 3.2, "hellaswag_acc": 0.27,
             "hellaswag_acc_norm": 0.3}]
    fig = training.metrics_figure(rows, "run")
    loss_axis, accuracy_axis = fig.axes
    assert accuracy_axis.get_ylabel() == "HellaSwag accuracy"
    assert [list(line.get_ydata()) for line in accuracy_axis.lines] == [[0.26, 0.3], [0.25, 0.27]]
    legend = [text.get_text() for text in loss_axis.get_legend().get_texts()]
    assert legend == ["train", "val", "best val 3.2000 (step 10)", "HellaSwag acc_norm", "HellaSwag acc"]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert training.plot_metrics(tmp_path / "run").read_bytes()[:4] == b"\x89PNG"


def test_a_quiet_run_does_not_import_tqdm_auto(corpus, tmp_path):
    # in a Jupyter kernel without ipywidgets, importing tqdm.auto warns "IProgress not found" (once a
    # kernel): the notebooks' quiet runs, which draw no bar, had to filter the warning out
    script = ("import sys\nfrom tinygpt import train as training\n"
              f"cfg = training.make_config({{'data': {str(corpus)!r}, 'out': {str(tmp_path / 'run')!r}, "
              "'n_layer': 1, 'n_head': 2, 'n_embd': 16, 'block_size': 16, 'batch_size': 4, 'eval_iters': 2, "
              "'warmup_iters': 2, 'max_iters': 2, 'eval_interval': 2, 'backend': 'numpy'})\n"
              "training.train(cfg, quiet=True)\n"
              "print(sorted(m for m in sys.modules if m.startswith('tqdm')))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(training.__file__).parent.parent)})
    assert done.returncode == 0, done.stderr
    loaded = eval(done.stdout.strip().splitlines()[-1])
    assert "tqdm.std" in loaded and "tqdm.auto" not in loaded and "tqdm.autonotebook" not in loaded


# --- HellaSwag accuracy at each evaluation (--hellaswag) ---------------------------------------------------

# HellaSwag's layout with TEXT's characters only (a char model of TEXT can score them), endings of at most
# --block-size 16 tokens, contexts longer than that (cut to fit)
HELLASWAG_ITEMS = [("But, soft! what light through yonder", ["window breaks?", "is the sun."], 0),
                   ("It is the east, and Juliet", ["is the sun.", "art thou Romeo?"], 0),
                   ("JULIET:\nO Romeo, Romeo! wherefore", ["art thou Romeo?", "the east.", "soft!"], 0),
                   ("ROMEO:\nBut,", ["soft!", "the sun."], 0)]


def _hellaswag_file(path, items=HELLASWAG_ITEMS, tail=""):
    path.write_text("".join(json.dumps({"ctx": c, "endings": e, "label": y}) + "\n" for c, e, y in items)
                    + tail, encoding="utf-8")
    return path


def _hellaswag_scores(out, path, limit=None):
    from tinygpt import hellaswag

    ckpt = load_checkpoint(out)
    return hellaswag.score_examples(ckpt.model, ckpt.tokenizer, hellaswag.iter_examples(path, limit))


def test_hellaswag_is_scored_at_each_evaluation_and_the_run_is_the_one_without_it(corpus, tmp_path,
                                                                                    monkeypatch, capsys):
    # dropout and gradient accumulation on: scoring must take neither the batches' nor dropout's RNG, run in
    # eval mode (else its forwards would draw dropout keys) and leave the model in train mode after (else
    # the steps after an evaluation would train without dropout)
    monkeypatch.chdir(tmp_path)
    # --hellaswag-limit 3: the fourth example is not scored, and a broken line past it is not read
    _hellaswag_file(tmp_path / "hs.jsonl", tail="{not json\n")
    kw = {"dropout": 0.1, "grad_accum_steps": 2, "eval_interval": 3, "max_iters": 6}
    training.train(_config(corpus, tmp_path / "plain", **kw), quiet=True)
    training.train(_config(corpus, tmp_path / "hs", hellaswag="hs.jsonl", hellaswag_limit=3, **kw))
    said = capsys.readouterr().err
    plain, rows = _rows(tmp_path / "plain"), _rows(tmp_path / "hs")
    assert [r["step"] for r in rows] == [0, 3, 6]
    assert not any("hellaswag_acc" in r or "hellaswag_acc_norm" in r for r in plain)  # nothing new without
    assert [{k: v for k, v in r.items() if not k.startswith("hellaswag_")} for r in rows] == plain
    plain_ckpt, ckpt = load_checkpoint(tmp_path / "plain"), load_checkpoint(tmp_path / "hs")
    for name, p in plain_ckpt.model.params.items():
        np.testing.assert_array_equal(ckpt.model.params[name], p, err_msg=name)
    assert ckpt.state["sampler_rng"] == plain_ckpt.state["sampler_rng"]
    assert ckpt.state["dropout_rng"] == plain_ckpt.state["dropout_rng"]
    # the final row's accuracies are the saved model's, scored on the first 3 examples
    scores = _hellaswag_scores(tmp_path / "hs", tmp_path / "hs.jsonl", limit=3)
    assert scores["examples"] == 3
    assert (rows[-1]["hellaswag_acc"], rows[-1]["hellaswag_acc_norm"]) == (scores["acc"], scores["acc_norm"])
    assert all(r["hellaswag_acc"] * 3 in (0, 1, 2, 3) for r in rows)
    assert re.search(r"step 6: train loss \d\.\d{4}, val loss \d\.\d{4}, hellaswag acc_norm "
                     rf"{scores['acc_norm']:.4f}, lr ", said)
    # saved with the run, the path absolute (a resume from another directory finds it)
    assert ckpt.train_config["hellaswag"] == str(tmp_path / "hs.jsonl")
    assert ckpt.train_config["hellaswag_limit"] == 3


def test_a_resumed_run_keeps_hellaswag_and_writes_the_uninterrupted_rows(corpus, tmp_path):
    path = _hellaswag_file(tmp_path / "hs.jsonl")
    kw = {"dropout": 0.1, "eval_interval": 3, "lr_decay_iters": 9, "hellaswag": str(path)}
    training.train(_config(corpus, tmp_path / "full", max_iters=9, **kw), quiet=True)
    training.train(_config(corpus, tmp_path / "part", max_iters=6, **kw), quiet=True)
    scores = _hellaswag_scores(tmp_path / "part", path)  # the step-6 checkpoint's, before it is resumed
    assert _rows(tmp_path / "part")[-1]["hellaswag_acc_norm"] == scores["acc_norm"]
    assert main(["train", "--resume", "--out", str(tmp_path / "part"), "--max-iters", "9", "--quiet"]) == 0
    rows = _rows(tmp_path / "part")
    assert rows == _rows(tmp_path / "full") and all("hellaswag_acc_norm" in r for r in rows)
    assert [r["step"] for r in rows] == [0, 3, 6, 9]
    full, part = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "part")
    for name, p in full.model.params.items():
        np.testing.assert_array_equal(part.model.params[name], p, err_msg=name)
    assert part.train_config["hellaswag"] == str(path)


def test_no_hellaswag_stops_a_resumed_runs_scoring_and_drops_a_configs(corpus, tmp_path, capsys):
    # a run started with --hellaswag scored it at every evaluation of every resume: None, an absent flag,
    # could not clear it (a CPU run could not drop a slow evaluation it no longer wanted)
    path = _hellaswag_file(tmp_path / "hs.jsonl")
    kw = {"eval_interval": 3, "lr_decay_iters": 9, "hellaswag": str(path), "hellaswag_limit": 2}
    training.train(_config(corpus, tmp_path / "full", max_iters=9, **kw), quiet=True)
    training.train(_config(corpus, tmp_path / "part", max_iters=3, **kw), quiet=True)
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(tmp_path / "part"), "--max-iters", "9", "--no-hellaswag",
                 "--quiet"]) == 0
    assert ("tinygpt: warning: HellaSwag is no longer scored: the rows from here have no hellaswag_acc; the "
            "resumed run is not the uninterrupted one") in capsys.readouterr().err
    rows = _rows(tmp_path / "part")
    assert [r["step"] for r in rows] == [0, 3, 6, 9]
    assert ["hellaswag_acc" in r for r in rows] == [True, True, False, False]
    saved = load_checkpoint(tmp_path / "part").train_config
    assert (saved["hellaswag"], saved["hellaswag_limit"]) == (None, None)
    full, part = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "part")
    for name, p in full.model.params.items():  # (scoring draws from no RNG: the same weights)
        np.testing.assert_array_equal(part.model.params[name], p, err_msg=name)
    # a config file's, dropped for one run
    config = tmp_path / "run.toml"
    config.write_text(f"hellaswag = {json.dumps(str(path))}\nmax_iters = 1\n")
    assert main(["train", "--config", str(config), "--data", str(corpus), "--out", str(tmp_path / "run"),
                 *TINY, "--no-hellaswag"]) == 0
    assert not any("hellaswag_acc" in r for r in _rows(tmp_path / "run"))
    for flag in (["--hellaswag", str(path)], ["--hellaswag-limit", "2"]):
        line = one_line_error(capsys, ["train", "--resume", "--out", str(tmp_path / "part"), "--no-hellaswag",
                                       *flag])
        assert f"--no-hellaswag cannot be combined with {flag[0]}" in line


def test_hellaswag_settings_and_files_a_run_cannot_score_are_refused_before_training(corpus, tmp_path,
                                                                                       monkeypatch, capsys):
    def no_batches(*args):  # refused before the first step, and before the step-0 evaluation too
        raise AssertionError("a batch was drawn")

    good = _hellaswag_file(tmp_path / "good.jsonl")
    bad_json = _hellaswag_file(tmp_path / "bad.jsonl", tail="{not json\n")
    unscoreable = _hellaswag_file(tmp_path / "z.jsonl", [HELLASWAG_ITEMS[0], ("ROMEO:", ["Zounds!", "O"], 0)])
    too_long = _hellaswag_file(tmp_path / "long.jsonl", [("ROMEO:", ["soft!", "what light through yond"], 0)])
    out = tmp_path / "run"
    run = ["train", "--data", str(corpus), "--out", str(out), "--max-iters", "2", *TINY]
    for flags, message in (
        (["--hellaswag", str(bad_json)], f"{bad_json}:5: not valid JSON"),
        (["--hellaswag", str(unscoreable)], f"{unscoreable}:2: character 'Z' is not in"),
        (["--hellaswag", str(too_long)], f"{too_long}:1: ending 1 is 24 tokens, more than the model's "
                                         "context of 16 can score"),
        (["--hellaswag", str(tmp_path / "absent.jsonl")], "HellaSwag file not found: "),
        (["--hellaswag", ""], "--hellaswag must name a path, got an empty string"),
        (["--hellaswag-limit", "2"], "--hellaswag-limit is for --hellaswag (its first N examples)"),
        (["--hellaswag", str(good), "--hellaswag-limit", "0"], "--hellaswag-limit must be a positive "
                                                               "integer, got 0"),
        (["--hellaswag", str(good), "--hellaswag-limit", "-1"], "--hellaswag-limit must be a positive "
                                                                "integer, got -1"),
        (["--hellaswag", str(good), "--hellaswag-limit", "1.5"], "invalid int value"),
    ):
        monkeypatch.setattr(tinygpt_data, "get_batch", no_batches)
        assert message in one_line_error(capsys, [*run, *flags])
        assert not out.exists()  # refused before anything was written
    with pytest.raises(TinyGPTError, match="--hellaswag-limit must be a positive integer, got True"):
        _config(corpus, out, hellaswag=str(good), hellaswag_limit=True)
    # a resume is refused before it writes anything too (its metrics are not truncated, no link repaired)
    monkeypatch.undo()
    assert main([*run, "--hellaswag", str(good)]) == 0
    before = _hashes(out)
    monkeypatch.setattr(tinygpt_data, "get_batch", no_batches)
    resume = ["train", "--resume", "--out", str(out), "--max-iters", "4", "--quiet"]
    assert f"{unscoreable}:2: character 'Z'" in one_line_error(capsys, [*resume, "--hellaswag",
                                                                        str(unscoreable)])
    assert "--hellaswag-limit must be a positive integer" in one_line_error(
        capsys, [*resume, "--hellaswag-limit", "0"])
    assert _hashes(out) == before and load_checkpoint(out).state["step"] == 2
    # a resume that scores other examples says so (the losses are the same; the accuracy column is not)
    monkeypatch.undo()
    assert main([*resume, "--hellaswag-limit", "2"]) == 0
    assert capsys.readouterr().err == ("tinygpt: warning: --hellaswag-limit changed from None to 2: "
                                       "HellaSwag accuracy is scored on other examples; the resumed run is "
                                       "not the uninterrupted one\n")
    assert load_checkpoint(out).train_config["hellaswag_limit"] == 2
    # and as a real process: exit status 2, one line, no traceback
    proc = subprocess.run([sys.executable, "-m", "tinygpt", *run[:4], str(tmp_path / "other"), *run[5:],
                           "--hellaswag", str(unscoreable)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(training.__file__).parent.parent)})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "other").exists()


def test_hellaswag_settings_come_from_a_toml_config(corpus, tmp_path, capsys):
    path = _hellaswag_file(tmp_path / "hs.jsonl")
    config = tmp_path / "run.toml"
    config.write_text(f"hellaswag = {json.dumps(str(path))}\nhellaswag_limit = 2\nmax_iters = 1\n")
    assert main(["train", "--config", str(config), "--data", str(corpus), "--out", str(tmp_path / "run"),
                 *TINY]) == 0
    rows = _rows(tmp_path / "run")
    assert [r["step"] for r in rows] == [0, 1] and all(r["hellaswag_acc_norm"] * 2 in (0, 1, 2) for r in rows)
    saved = load_checkpoint(tmp_path / "run").train_config
    assert (saved["hellaswag"], saved["hellaswag_limit"]) == (str(path), 2)


def test_a_user_config_leaves_out_keys_that_take_the_default_presets_values_but_two():
    # README and `train --help` say what a TOML file's missing keys take: TrainConfig's defaults, which are
    # the default preset's but max_iters (2000 against 3000) and the tokenizer (None: chosen by the data)
    preset = training.read_config_file("default")
    defaults = training.TrainConfig()
    differ = {key for key, value in preset.items() if getattr(defaults, key) != value}
    assert differ == {"max_iters", "tokenizer"}
    assert (defaults.max_iters, defaults.tokenizer) == (2000, None)
