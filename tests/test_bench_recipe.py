"""``tinygpt bench recipe``: both sides run end to end (tiny run); bad input refused. No timings asserted."""

import math
import os

import pytest

from tinygpt.cli import main

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40


def test_bench_recipe_runs_both_sides(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "tiny.txt"
    data.write_text(TEXT)
    code = main(["bench", "recipe", "--data", str(data), "--max-iters", "6", "--eval-interval", "3"])
    out = capsys.readouterr().out
    assert code == 0
    rows = [line.split() for line in out.splitlines() if line.startswith(("tinygpt (", "PyTorch,"))]
    assert [r[0] for r in rows] == ["tinygpt", "PyTorch,"]
    for r in rows:
        step, train_loss, val_loss, val_whole = int(r[-5]), float(r[-4]), float(r[-3]), float(r[-2])
        assert step == 6
        assert all(math.isfinite(v) for v in (train_loss, val_loss, val_whole))
        assert val_loss < math.log(len(set(TEXT))) + 0.5  # both start near log(vocab) and do not diverge
        assert abs(val_whole - val_loss) < 0.2  # the same model on more of the same split
    # ours "time vs peer" is our wall time over the peer's. The times print rounded to 0.1 s and the ratio
    # to 0.01, so the printed times' ratio is off by up to 0.05 / peer + 0.05 ours / peer^2, plus 0.005 (a
    # cold JIT cache, as in a fresh clone, makes ours several times the peer's: 13.4 s against 5.9 s once)
    ours_s, peer_s = float(rows[0][-6]), float(rows[1][-6])
    slack = 0.005 + 0.05 / peer_s + 0.05 * ours_s / peer_s**2 + 1e-9
    assert float(rows[0][-1].rstrip("x")) == pytest.approx(ours_s / peer_s, abs=slack)


def test_bench_recipe_runs_both_sides_with_freed_memory_retained_as_tinygpt_train_does(tmp_path, monkeypatch,
                                                                                      capsys):
    # `tinygpt train` keeps freed memory for reuse (300 steps of the default config took 13.9 s against
    # 15.1 s without): the side the table calls "tinygpt train" must run so, and the peer after it with it
    import tinygpt.train
    from tinygpt.bench import recipe

    events = []
    monkeypatch.setattr(tinygpt.train, "retain_freed_memory", lambda: events.append("retain") or True)
    result = {"seconds": 1.0, "step": 2, "train_loss": 1.0, "val_loss": 1.0, "val_loss_whole": 1.0}
    monkeypatch.setattr(recipe, "tinygpt_run", lambda settings, out: events.append("tinygpt") or result)
    monkeypatch.setattr(recipe, "nanogpt_style_run",
                        lambda settings, out, threads: events.append("peer") or result)
    data = tmp_path / "tiny.txt"
    data.write_text(TEXT)
    assert main(["bench", "recipe", "--data", str(data), "--max-iters", "2"]) == 0
    assert events == ["retain", "tinygpt", "peer"]


@pytest.mark.parametrize("argv, message", [
    (["--data", "no/such/file.txt"], "no such file"),
    (["--data", __file__, "--max-iters", "0"], "--max-iters must be at least 1"),
    (["--data", __file__, "--config", "no_such_preset"], "neither a file nor a shipped config"),
])
def test_bench_recipe_bad_input(capsys, argv, message):
    assert main(["bench", "recipe", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_bench_recipe_names_a_directory_or_a_pipe_as_such(tmp_path, capsys):
    # each was '--data PATH: no such file', of a path that exists
    fifo = tmp_path / "text.txt"
    os.mkfifo(fifo)
    for path, message in ((tmp_path, "is a directory: the recipe trains on a text file"),
                          (fifo, "is not a regular file (a pipe, a socket or a device)")):
        assert main(["bench", "recipe", "--data", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"--data {path} {message}" in err[0] and "no such file" not in err[0]


@pytest.mark.parametrize("content, message", [(b" \n", "data file is empty"),
                                              (b"abc\xff", "data file is not UTF-8 text")])
def test_bench_recipe_refuses_a_file_it_cannot_train_on_before_its_header(tmp_path, capsys, content, message):
    # guards: the recipe's header line was printed first, and then the refusal
    data = tmp_path / "bad.txt"
    data.write_bytes(content)
    assert main(["bench", "recipe", "--data", str(data), "--max-iters", "2"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err and len(captured.err.strip().splitlines()) == 1


def _ours_name(peer_name):
    """Our params-dict name of a parameter of the peer's model."""
    for old, new in {"blocks.": "h.", "attn_c_proj": "attn.c_proj", "c_attn": "attn.c_attn",
                     "mlp_c_proj": "mlp.c_proj", "c_fc": "mlp.c_fc"}.items():
        peer_name = peer_name.replace(old, new)
    return peer_name


def test_peer_model_is_ours_but_for_gelu(monkeypatch):
    # The PyTorch side's model, loaded with our weights, gives our loss: the two sides train one architecture.
    import numpy as np
    import torch

    from tinygpt.bench.recipe import _nanogpt_style_model
    from tinygpt.model import GPT, GPTConfig

    gelu = torch.nn.functional.gelu
    monkeypatch.setattr(torch.nn.functional, "gelu", lambda x: gelu(x, approximate="tanh"))  # GPT-2's GELU
    config = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, bias=False)
    ours = GPT(config, seed=3, dtype=np.float64)
    peer = _nanogpt_style_model(torch, 11, 8, 2, 2, 8, bias=False).double()
    loaded = set()
    with torch.no_grad():
        for name, p in peer.named_parameters():
            name = _ours_name(name)
            value = ours.params[name]  # Linear weights are (out, in) in PyTorch, (in, out) in GPT-2's Conv1D
            p.copy_(torch.from_numpy(value.T.copy() if value.ndim == 2 and not name.startswith("wt") and
                                     not name.startswith("wp") else value))
            loaded.add(name)
    assert loaded == set(ours.params)
    rng = np.random.default_rng(0)
    idx, targets = rng.integers(0, 11, (3, 8)), rng.integers(0, 11, (3, 8))
    _, loss = ours.forward(idx, targets)
    assert peer(torch.from_numpy(idx), torch.from_numpy(targets)).item() == pytest.approx(loss, rel=1e-12)


@pytest.mark.parametrize("setting, flag", [("dropout = 0.2", "dropout"),
                                           ("grad_accum_steps = 4", "grad_accum_steps")])
def test_bench_recipe_refuses_settings_the_peer_would_not_follow(tmp_path, capsys, monkeypatch, setting,
                                                                 flag):
    # guards: the PyTorch side has no dropout and takes one batch a step, so a preset with dropout (nanoGPT's
    # GPU recipe has 0.2) or gradient accumulation raced a different training against ours, silently
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "tiny.txt"
    data.write_text(TEXT)
    config = tmp_path / "c.toml"
    config.write_text(f"n_layer = 1\nn_head = 2\nn_embd = 8\nblock_size = 8\nbatch_size = 2\n{setting}\n")
    argv = ["bench", "recipe", "--data", str(data), "--config", str(config), "--max-iters", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0] and "--no-peer" in err[0], err
    assert main([*argv, "--no-peer"]) == 0  # ours alone: nothing to compare


def test_bench_recipe_refuses_a_config_scoring_hellaswag_against_the_peer(tmp_path, capsys):
    # ours scored the file at every evaluation, inside its timed run, and the peer scored nothing: a
    # training config with hellaswag = FILE raced more work against the peer's loop, silently
    data = tmp_path / "tiny.txt"
    data.write_text(TEXT)
    config = tmp_path / "c.toml"
    config.write_text('n_layer = 1\nn_head = 2\nn_embd = 8\nblock_size = 8\n'
                      'hellaswag = "hellaswag_val.jsonl"\n')
    assert main(["bench", "recipe", "--data", str(data), "--config", str(config), "--max-iters", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # before the recipe's header: nothing was run
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "hellaswag = 'hellaswag_val.jsonl'" in err[0] and "--no-peer" in err[0], err


def test_peer_reads_the_data_file_as_ours_does(tmp_path, monkeypatch):
    # guards: the peer read the file with newline translation (Path.read_text), so on a CRLF file (as many
    # Project Gutenberg texts are) it trained on other characters than ours (no "\r": one token fewer a line,
    # a smaller vocabulary) and its losses were not comparable
    import argparse

    from tinygpt.bench import recipe

    data = tmp_path / "crlf.txt"
    data.write_bytes(TEXT.replace("\n", "\r\n").encode())
    vocab = []
    build = recipe._nanogpt_style_model
    monkeypatch.setattr(recipe, "_nanogpt_style_model",
                        lambda torch, v, *a: vocab.append(v) or build(torch, v, *a))
    args = argparse.Namespace(data=str(data), config="shakespeare_char", max_iters=1, eval_interval=1, seed=0)
    settings = {**recipe._settings(args), "eval_iters": 1, "n_layer": 1, "n_embd": 8, "n_head": 2}
    recipe.nanogpt_style_run(settings, str(tmp_path), threads=1)
    assert vocab == [len(set(TEXT + "\r"))]


def test_settings_shrink_the_schedule_with_max_iters(tmp_path):
    import argparse

    from tinygpt.bench import recipe

    data = str(tmp_path / "tiny.txt")
    args = argparse.Namespace(data=data, config="shakespeare_char", max_iters=50, eval_interval=None, seed=7)
    s = recipe._settings(args)
    # the cosine ends with the shorter run, and the warmup (the preset's 100) is at most a tenth of it
    assert (s["max_iters"], s["lr_decay_iters"], s["warmup_iters"]) == (50, 50, 5)
    assert (s["data"], s["tokenizer"], s["seed"], s["eval_interval"]) == (data, "char", 7, 250)
    s = recipe._settings(argparse.Namespace(data=data, config="shakespeare_char", max_iters=None,
                                            eval_interval=10, seed=1337))
    assert (s["max_iters"], s["lr_decay_iters"], s["warmup_iters"]) == (2000, None, 100)
    assert s["eval_interval"] == 10


@pytest.mark.parametrize("setting, flag", [('init_from = "out"', "init_from"),
                                           ('pretrained = "gpt2"', "pretrained")])
def test_bench_recipe_refuses_to_race_a_fine_tuning(tmp_path, capsys, setting, flag):
    # the PyTorch side always trains from scratch: a fine-tuning preset would race two different runs
    data = tmp_path / "tiny.txt"
    data.write_text(TEXT)
    config = tmp_path / "c.toml"
    config.write_text(f"n_layer = 1\nn_head = 2\nn_embd = 8\nblock_size = 8\n{setting}\n")
    assert main(["bench", "recipe", "--data", str(data), "--config", str(config), "--max-iters", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0] and "--no-peer" in err[0], err


def test_peer_init_is_gpt2s_as_ours_is():
    # ours is initialised by tinygpt, the peer by its own code: both GPT-2's N(0, 0.02), the residual
    # projections N(0, 0.02 / sqrt(2 n_layer)), LayerNorm weights 1 and biases 0
    import numpy as np
    import torch

    from tinygpt.bench.recipe import _nanogpt_style_model
    from tinygpt.model import GPT, GPTConfig

    torch.manual_seed(0)
    peer = _nanogpt_style_model(torch, 50, 16, 2, 2, 64, bias=True)
    ours = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=64, bias=True), seed=0)
    for name, p in peer.named_parameters():
        value, p = ours.params[_ours_name(name)], p.detach().numpy()
        if value.std() == 0:
            assert np.array_equal(p, value), name  # the ones and the zeros, exactly
        else:
            assert p.std() == pytest.approx(value.std(), rel=0.15), name


def test_peer_loop_is_nanogpts_on_our_val_split_and_schedule(tmp_path, monkeypatch):
    import argparse

    import numpy as np
    import torch

    import tinygpt.data
    from tinygpt.bench import recipe
    from tinygpt.optim import lr_at

    data = tmp_path / "tiny.txt"
    data.write_text((TEXT * 2)[:3243])  # 0.9 x 3,243 = 2,918.7, which int() and round() split apart
    args = argparse.Namespace(data=str(data), config="shakespeare_char", max_iters=4, eval_interval=2, seed=0)
    settings = {**recipe._settings(args), "eval_iters": 2, "n_layer": 1, "n_embd": 8, "n_head": 2,
                "block_size": 8, "batch_size": 3, "warmup_iters": 1}
    calls, updates, clips, evaluated = [], [], [], []
    build = recipe._nanogpt_style_model

    def recorded_model(*a):
        model = build(*a)
        forward = model.forward
        model.forward = lambda x, y: calls.append((model.training, x, y)) or forward(x, y)
        return model

    class RecordedAdamW(torch.optim.AdamW):
        def step(self, *a, **k):
            updates.append([(g["lr"], g["betas"], g["weight_decay"]) for g in self.param_groups])
            return super().step(*a, **k)

    clip, windows = torch.nn.utils.clip_grad_norm_, tinygpt.data.iter_eval_windows
    monkeypatch.setattr(recipe, "_nanogpt_style_model", recorded_model)
    monkeypatch.setattr(torch.optim, "AdamW", RecordedAdamW)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda p, norm: clips.append(norm) or clip(p, norm))
    monkeypatch.setattr(tinygpt.data, "iter_eval_windows",
                        lambda tokens, *a: evaluated.append(np.array(tokens)) or windows(tokens, *a))
    result = recipe.nanogpt_style_run(settings, str(tmp_path), threads=1)

    assert result["step"] == 4 and len([c for c in calls if c[0]]) == 4  # one batch a step
    # every batch (training, the random eval batches, the whole-split windows): targets are inputs shifted
    assert all(torch.equal(x[:, 1:], y[:, :-1]) for _, x, y in calls)
    # the schedule `tinygpt train` follows (warmup 1, cosine to step 4), AdamW as ours, clipped at 1.0
    assert [u[0][0] for u in updates] == pytest.approx([lr_at(i, 1e-3, 1, 4, 1e-4) for i in range(4)])
    assert all(u == [(u[0][0], (0.9, 0.99), 0.1), (u[0][0], (0.9, 0.99), 0.0)] for u in updates)
    assert clips == [1.0] * 4
    # val (whole) on the very split ours is measured on (it took int(0.9 n) where ours rounds: one token off)
    ours = tinygpt.data.prepare_dataset(data, "char", cache=tmp_path / "cache").val
    assert len(evaluated) == 1 and np.array_equal(evaluated[0], ours)
