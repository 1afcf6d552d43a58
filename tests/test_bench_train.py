"""``tinygpt bench train`` runs end to end (tiny settings) and rejects bad arguments; no timings asserted."""

import io
import json
import os
import sys
import types

import numpy as np
import pytest

from tinygpt.bench import blas_threads, train
from tinygpt.cli import main
from tinygpt.errors import TinyGPTError


def test_bench_train_prints_a_row_per_side(capsys, monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")  # one PyTorch thread: fast on a busy machine too
    code = main(
        ["bench", "train", "--configs", "small", "--steps", "1", "--warmup", "0", "--memory-config", "small"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "GFLOP/s" in out
    rows = [line for line in out.splitlines() if line.startswith("4L/4H/128d/T64/B12")]
    assert [r.split()[1] for r in rows] == ["tinygpt", "PyTorch"]
    # each figure consistent with the others: tokens/s = B*T / (ms/step), and ours "vs PyTorch" is PyTorch's
    # step time over ours (the peer's own 1.00x is a tautology, not checked)
    (ours_tok, ours_ms, ours_ratio), (peer_tok, peer_ms, _) = [
        (float(r.split()[3].replace(",", "")), float(r.split()[4]), r.split()[-1]) for r in rows]
    for tokens, ms in ((ours_tok, ours_ms), (peer_tok, peer_ms)):
        assert tokens == pytest.approx(12 * 64 * 1000 / ms, rel=0.01)
    assert float(ours_ratio.rstrip("x")) == pytest.approx(peer_ms / ours_ms, abs=0.01 + 0.1 / ours_ms)


def test_the_peer_decays_what_ours_decays():
    # torch's AdamW(model.parameters(), weight_decay=0.1) decayed the biases and LayerNorm weights too
    import torch
    import transformers

    from tinygpt.bench.train import torch_adamw
    from tinygpt.model import GPT, GPTConfig

    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=11, n_positions=8, n_layer=2,
                                                              n_head=2, n_embd=8))
    decayed, kept = torch_adamw(torch, hf).param_groups
    ours = GPT(GPTConfig(11, 8, 2, 2, 8), seed=0)
    n_decayed = sum(p.size for p in ours.params.values() if p.ndim >= 2)
    assert decayed["weight_decay"] == 0.1 and kept["weight_decay"] == 0.0
    assert sum(p.numel() for p in decayed["params"]) == n_decayed
    assert sum(p.numel() for p in kept["params"]) == ours.num_params() - n_decayed


def test_the_gpu_training_peer_is_set_up_as_bench_trains_peer(monkeypatch):
    # bench kernels' GPU training race ran transformers' defaults (a key/value cache built every step, GPT-2's
    # bos/eos ids) and torch's AdamW decaying every tensor; it builds its peer as bench train now does. No GPU
    # here: our side is stubbed, the peer is built on the CPU, and its optimizer stops the run once built.
    import torch
    import transformers

    from tinygpt import model as model_module
    from tinygpt import optim
    from tinygpt.bench import kernels

    class Built(Exception):
        pass

    seen = {}

    class PeerOnTheCPU(transformers.GPT2LMHeadModel):
        def cuda(self):  # the CPU stands in for the GPU
            return self

    def peer_model(config):
        seen["config"] = config
        return PeerOnTheCPU(config)

    def peer_adamw(groups, **kwargs):
        seen["groups"], seen["kwargs"] = groups, kwargs
        raise Built

    monkeypatch.setattr(model_module, "GPT", lambda *args, **kwargs: types.SimpleNamespace(params={}))
    monkeypatch.setattr(optim, "AdamW", lambda *args, **kwargs: None)
    # (transformers' lazy module keeps its own attributes: a stand-in module carries the recording class)
    monkeypatch.setitem(sys.modules, "transformers", types.SimpleNamespace(
        GPT2LMHeadModel=peer_model, GPT2Config=transformers.GPT2Config, logging=transformers.logging))
    monkeypatch.setattr(torch.optim, "AdamW", peer_adamw)
    with pytest.raises(Built):
        kernels.bench_train_gpu(torch, None, None, 1, 2, shape=(2, 2, 8, 16, 11))
    config = seen["config"]
    assert config.use_cache is False and config.bos_token_id is None and config.eos_token_id is None
    assert config.resid_pdrop == config.embd_pdrop == config.attn_pdrop == 0.0
    decayed, kept = seen["groups"]
    assert decayed["weight_decay"] == 0.1 and kept["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(p.dim() < 2 for p in kept["params"])
    assert seen["kwargs"] == {"lr": 1e-4, "betas": (0.9, 0.95)}  # ours: AdamW(lr=1e-4), betas (0.9, 0.95)


def test_bench_train_recompute_on_both_sides(capsys, monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    argv = ["--configs", "small", "--steps", "1", "--warmup", "0", "--memory-config", "small", "--recompute"]
    assert main(["bench", "train", *argv]) == 0
    out = capsys.readouterr().out
    assert "activation recomputation on both sides" in out
    assert [ln.split()[1] for ln in out.splitlines() if ln.startswith("4L/4H/128d/T64/B12")] == ["tinygpt",
                                                                                                "PyTorch"]
    # kept for backward, at the peak: the other 3 blocks' inputs (C = 128 floats a token each) and ONE
    # block's caches (16 C + H T' + 4 = 2,308 floats, T' = 64 keys; its own input among them), plus ln_f's,
    # the logits' and the loss's 2 C + V + 3 = 324: 384 + 2,308 + 324 = 3,016 floats = 11.8 KiB a token
    # (without: 4 * 2,308 + 324 = 9,556, 37 KiB)
    kept = next(ln for ln in out.splitlines() if "activations kept for backward" in ln)
    assert "12 KiB/token" in kept, kept
    assert "PyTorch eager        peak" in out


def test_bench_train_without_peer_with_memory_probe(capsys):
    argv = ["--configs", "small", "--steps", "1", "--warmup", "0", "--no-peer", "--memory-config", "small"]
    code = main(["bench", "train", *argv])
    out = capsys.readouterr().out
    assert code == 0 and "tinygpt (numpy)" in out and "PyTorch eager" not in out
    assert "peak RSS of one training step at 4L/128d/T64/B12" in out
    assert "step added" in out and "KiB/token" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--configs", "huge"], "unknown config huge"),
        (["--steps", "0"], "--steps"),
        (["--isolate", "-1"], "--isolate must be >= 0"),
        (["--backend", "no-such-backend"], "no-such-backend"),
        (["--backend", ","], "--backend names no backend"),  # an UnboundLocalError traceback
        # (with --configs small --steps 1, so that a missing check fails the test fast)
        (["--warmup", "-1", "--configs", "small", "--steps", "1"], "--warmup >= 0"),
        # with --no-memory, --memory-config is refused, not ignored without a word
        (["--memory-config", "huge", "--configs", "small", "--steps", "1"], "--no-memory skips the probe"),
        (["--memory-config", "small", "--configs", "small", "--steps", "1"], "--no-memory skips the probe"),
    ],
)
def test_bench_train_bad_arguments(capsys, argv, message):
    assert main(["bench", "train", "--no-peer", "--no-memory", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name, message", [("huge", "unknown config huge"), ("", "unknown config (none)")])
def test_bench_train_refuses_an_unknown_memory_config_before_measuring(capsys, name, message):
    assert main(["bench", "train", "--no-peer", "--memory-config", name, "--configs", "small",
                 "--steps", "1"]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and len(captured.err.strip().splitlines()) == 1
    assert captured.out == ""  # before the first row


def test_bench_train_isolated_runs_each_side_in_its_own_processes(capsys):
    argv = ["--configs", "small", "--steps", "1", "--warmup", "0", "--no-peer", "--no-memory",
            "--isolate", "2", "--backend", "numpy,numba"]
    assert main(["bench", "train", *argv]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any("each side alone in a fresh process, median of 2 rounds' medians of 1" in ln for ln in lines)
    for side in ("numpy", "numba"):
        row = next(ln for ln in lines if ln.startswith("4L/4H/128d/T64/B12 ") and f"({side})" in ln)
        rounds = next(ln for ln in lines if ln.strip().startswith(f"tinygpt ({side}) rounds"))
        # " / " between rounds: a round of 1,336 ms (numba loading its cache in a fresh process, no warm-up)
        # read as two rounds when they were joined by ", "
        times = [float(t.replace(",", "")) for t in rounds.split(":")[1].split(" / ")]
        assert len(times) == 2 and all(t > 0 for t in times)
        # the row's ms/step is the median of the rounds (of two: their mean)
        assert float(row.split()[4]) == pytest.approx(sum(times) / 2, abs=1.0)


# --- the arithmetic, the processes and the fairness, on injected timings (mutation review) -------------


def test_interleaved_medians_warm_up_then_alternate_the_sides_and_take_the_median(fake_clock):
    fake_clock.install(train)
    sides = {"ours": fake_clock.side("ours", [100.0, 1.0, 2.0, 9.0]),  # the warm-up first
             "peer": fake_clock.side("peer", [100.0, 4.0, 4.0, 1.0])}
    medians = train._interleaved_medians(sides, n_steps=3, n_warmup=1)
    assert medians == {"ours": 2.0, "peer": 4.0}  # the medians (the means are 4 and 3), warm-up left out
    assert fake_clock.calls == ["ours", "peer"] * 4  # in turn, so that background load slows both alike


def test_matmul_gflops_is_2_n_cubed_over_the_best_of_the_repeats(monkeypatch):
    ticks = iter([0.0, 0.5, 10.0, 10.25, 20.0, 21.0])  # (start, stop) of each timed product
    monkeypatch.setattr(train, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    assert train.matmul_gflops(n=8, repeats=3) == pytest.approx(2 * 8**3 / 0.25 / 1e9)


def _fake_processes(monkeypatch, medians):
    """``train.subprocess.run`` answering each timing process with the next of ``medians[label]``."""
    launched = []

    def fake_run(cmd, capture_output, text):
        assert cmd[:3] == [sys.executable, "-c", train._TIMING]
        launched.append(cmd[3:])
        side, backend = cmd[3], cmd[5]
        label = "PyTorch eager" if side == "torch" else f"tinygpt ({backend})"
        median = json.dumps({"median_s": next(medians[label])})
        return types.SimpleNamespace(returncode=0, stderr="", stdout=f"numba noise\n{median}\n")

    monkeypatch.setattr(train, "subprocess", types.SimpleNamespace(run=fake_run))
    return launched


def test_isolated_medians_alternate_the_order_of_the_fresh_processes(monkeypatch):
    launched = _fake_processes(monkeypatch, {"tinygpt (numba)": iter([0.2, 0.4, 0.1]),
                                             "PyTorch eager": iter([0.3, 0.3, 0.9])})
    sides = {"tinygpt (numba)": ("tinygpt", "numba"), "PyTorch eager": ("torch", "numpy")}
    seconds, per_round = train._isolated_medians(sides, "small", threads=3, with_optimizer=True,
                                                 recompute=False, n_steps=5, n_warmup=2, rounds=3)
    assert seconds == {"tinygpt (numba)": 0.2, "PyTorch eager": 0.3}  # the median of the rounds
    assert per_round == {"tinygpt (numba)": [0.2, 0.4, 0.1], "PyTorch eager": [0.3, 0.3, 0.9]}
    # round 1 in the reverse order, so neither side always runs first; every argument as given
    assert launched == [["tinygpt", "small", "numba", "3", "1", "0", "5", "2"],
                        ["torch", "small", "numpy", "3", "1", "0", "5", "2"],
                        ["torch", "small", "numpy", "3", "1", "0", "5", "2"],
                        ["tinygpt", "small", "numba", "3", "1", "0", "5", "2"],
                        ["tinygpt", "small", "numba", "3", "1", "0", "5", "2"],
                        ["torch", "small", "numpy", "3", "1", "0", "5", "2"]]


def test_a_failed_timing_process_is_named_with_its_last_error_line(monkeypatch):
    monkeypatch.setattr(train, "subprocess", types.SimpleNamespace(run=lambda *a, **k: types.SimpleNamespace(
        returncode=1, stdout="", stderr="Traceback (most recent call last):\nMemoryError: out of memory\n")))
    with pytest.raises(TinyGPTError, match=r"^timing process for tinygpt \(numpy\) failed: MemoryError: out"):
        train._isolated_medians({"tinygpt (numpy)": ("tinygpt", "numpy")}, "small", 1, True, False, 1, 0, 1)


def test_subprocess_entry_points_read_their_arguments_in_order(monkeypatch, capsys):
    built = []
    monkeypatch.setattr(train, "tinygpt_step", lambda *a: built.append(("tinygpt", *a)) or ("ours", None))
    monkeypatch.setattr(train, "torch_step", lambda *a: built.append(("torch", *a)) or ("theirs", None))
    assert train._side_step("tinygpt", "small", "numba", "3", "1", "0") == "ours"
    assert train._side_step("torch", "medium", "numpy", "3", "0", "1") == "theirs"
    assert built == [("tinygpt", "small", "numba", True, False), ("torch", "medium", 3, False, True)]

    # --isolate's process: the median of n_steps timed steps after n_warmup, printed as JSON
    import tinygpt.train

    timed = []
    monkeypatch.setattr(tinygpt.train, "retain_freed_memory", lambda: None)
    monkeypatch.setattr(train, "_side_step", lambda *a: timed.append(a) or "step")
    monkeypatch.setattr(train, "_interleaved_medians", lambda steps, n_steps, n_warmup: timed.append(
        (steps, n_steps, n_warmup)) or {"torch": 0.25})
    train._timing_main(["torch", "small", "numpy", "3", "1", "0", "7", "2"])
    assert timed == [("torch", "small", "numpy", "3", "1", "0"), ({"torch": "step"}, 7, 2)]
    assert json.loads(capsys.readouterr().out) == {"median_s": 0.25}


def test_memory_probe_measures_the_second_step_from_the_rss_before_it(monkeypatch, capsys):
    # the warm-up step first (kernels loaded, moments made), then RSS now, the peak reset, and the peak after
    events = []
    monkeypatch.setattr(train, "_side_step", lambda *a: lambda: events.append("step"))
    monkeypatch.setattr(train, "_status_kb",
                        lambda field: events.append(field) or {"VmRSS": 100, "VmHWM": 350}[field])

    class File(io.StringIO):
        def close(self):
            if not self.closed:
                events.append(("wrote", self.getvalue()))
            super().close()

    assert not hasattr(train, "open")  # (the builtin: shadowed in the module for this test only)
    monkeypatch.setattr(train, "open", lambda path, mode: events.append((path, mode)) or File(),
                        raising=False)
    train._probe_main(["tinygpt", "small", "numpy", "1", "1", "0"])
    assert events == ["step", "VmRSS", ("/proc/self/clear_refs", "w"), ("wrote", "5"), "step", "VmHWM"]
    assert json.loads(capsys.readouterr().out) == {"before_kb": 100, "peak_kb": 350}


def _injected_run(monkeypatch, seconds):
    """``bench train`` with every measurement replaced: ``seconds`` per side, 50 GFLOP/s, 100 -> 350 MiB."""
    import tinygpt.train

    calls = {"tinygpt_step": [], "torch_step": [], "medians": [], "peak_rss": []}
    monkeypatch.setattr(tinygpt.train, "retain_freed_memory", lambda: None)
    monkeypatch.setattr(train, "import_torch_peer", lambda: None)
    monkeypatch.setattr(train, "blas_threads", lambda: 3)
    monkeypatch.setattr(train, "matmul_gflops", lambda: 50.0)
    real_tinygpt_step = train.tinygpt_step
    monkeypatch.setattr(train, "tinygpt_step",
                        lambda *a: calls["tinygpt_step"].append(a) or real_tinygpt_step(*a))
    monkeypatch.setattr(train, "torch_step", lambda *a: calls["torch_step"].append(a) or ("peer", None))

    def medians(steps, n_steps, n_warmup):
        calls["medians"].append((list(steps), n_steps, n_warmup))
        return {name: seconds[name] for name in steps}

    monkeypatch.setattr(train, "_interleaved_medians", medians)
    monkeypatch.setattr(train, "peak_rss", lambda *a: calls["peak_rss"].append(a) or {"before_kb": 100 * 1024,
                                                                                       "peak_kb": 350 * 1024})
    return calls


def test_bench_train_table_is_the_arithmetic_of_its_measurements(monkeypatch, capsys):
    from tinygpt.model import GPT, GPTConfig, activation_floats_per_token

    calls = _injected_run(monkeypatch, {"tinygpt (numpy)": 0.02, "PyTorch eager": 0.03})
    argv = ["--configs", "small", "--steps", "4", "--warmup", "1", "--memory-config", "small"]
    assert main(["bench", "train", *argv]) == 0
    out = capsys.readouterr().out
    assert calls["medians"] == [(["tinygpt (numpy)", "PyTorch eager"], 4, 1)]
    assert calls["tinygpt_step"] == [("small", "numpy", True, False)]
    assert calls["torch_step"] == [("small", 3, True, False)]  # the PyTorch side gets our thread count
    assert calls["peak_rss"] == [("tinygpt", "small", "numpy", 3, True, False),
                                 ("torch", "small", "numpy", 3, True, False)]
    rows = {ln.split()[1]: ln.split()[3:] for ln in out.splitlines() if ln.startswith("4L/4H/128d/T64/B12 ")}
    # B T = 768 tokens a step; MFU = FLOPs a token x tokens/s over the 50 GFLOP/s of the matmul
    flops = GPT(GPTConfig(65, 64, 4, 4, 128)).flops_per_token(64)
    assert rows["tinygpt"] == ["38,400", "20.0", f"{flops * 38_400 / 50e9:.1%}", "1.50x"]
    assert rows["PyTorch"] == ["25,600", "30.0", f"{flops * 25_600 / 50e9:.1%}", "1.00x"]
    assert "50 GFLOP/s (the MFU denominator)" in out
    peaks = [ln.split() for ln in out.splitlines() if " peak " in ln]
    assert [p[-7:] for p in peaks] == [["peak", "350", "MiB", "step", "added", "250", "MiB"]] * 2
    per_token = activation_floats_per_token(GPTConfig(65, 64, 4, 4, 128), 64)
    assert f"{per_token * 4 / 1024:.0f} KiB/token, {per_token * 4 * 768 / 2**20:.0f} MiB per step" in out


def test_bench_train_no_optimizer_times_forward_and_backward_on_every_side(monkeypatch, capsys):
    calls = _injected_run(monkeypatch, {"tinygpt (numpy)": 0.02, "PyTorch eager": 0.03})
    argv = ["--configs", "small", "--steps", "1", "--memory-config", "small", "--no-optimizer"]
    assert main(["bench", "train", *argv]) == 0
    assert "training step = forward + backward (no AdamW)" in capsys.readouterr().out
    assert calls["tinygpt_step"] == [("small", "numpy", False, False)]
    assert calls["torch_step"] == [("small", 3, False, False)]
    assert [a[4] for a in calls["peak_rss"]] == [False, False]


def test_a_cuda_step_is_timed_to_the_end_of_its_gpu_work(monkeypatch):
    # the cuda backend's kernels run asynchronously, and only forward's loss came back to the host: the
    # timed step ended with backward's and AdamW's kernels launched, not run, and they ran on during the
    # peer's timed step. No GPU here: the model is a stand-in whose ops are named cuda.
    from numba import cuda

    events = []
    model = types.SimpleNamespace(ops=types.SimpleNamespace(name="cuda"),
                                  forward=lambda idx, targets: events.append("forward"),
                                  backward=lambda: events.append("backward") or {})
    optimizer = types.SimpleNamespace(step=lambda grads: events.append("adamw"))
    monkeypatch.setattr(train, "tinygpt_training", lambda *a, **k: (model, optimizer, None, None))
    monkeypatch.setattr(cuda, "synchronize", lambda: events.append("synchronize"))
    step, _ = train.tinygpt_step("small", "cuda", True)
    step()
    assert events == ["forward", "backward", "adamw", "synchronize"]
    events.clear()
    model.ops.name = "numpy"  # a CPU backend has nothing to wait for
    train.tinygpt_step("small", "numpy", True)[0]()
    assert events == ["forward", "backward", "adamw"]


def test_bench_train_gives_a_cuda_side_no_mfu_over_the_cpus_matmul_rate(monkeypatch, capsys):
    # MFU divides by NumPy's matmul rate on this CPU: a GPU's step over it read as 3,000% "utilisation"
    import tinygpt.model

    calls = _injected_run(monkeypatch, {"tinygpt (numpy)": 0.02, "tinygpt (cuda)": 0.01,
                                        "PyTorch eager": 0.03})
    real_get_layer_ops, real_tinygpt_step = tinygpt.model.get_layer_ops, train.tinygpt_step
    # (no GPU here: the cuda side runs the numpy backend's step; its time is injected above)
    monkeypatch.setattr(tinygpt.model, "get_layer_ops",
                        lambda backend: real_get_layer_ops("numpy" if backend == "cuda" else backend))
    monkeypatch.setattr(train, "tinygpt_step", lambda config, backend, *a: real_tinygpt_step(
        config, "numpy" if backend == "cuda" else backend, *a))
    argv = ["--configs", "small", "--steps", "1", "--no-memory", "--backend", "numpy,cuda"]
    assert main(["bench", "train", *argv]) == 0
    assert calls["medians"] == [(["tinygpt (numpy)", "tinygpt (cuda)", "PyTorch eager"], 1, 2)]
    rows = {ln.split()[2]: ln.split()[3:] for ln in capsys.readouterr().out.splitlines()
            if ln.startswith("4L/4H/128d/T64/B12 ")}
    assert rows["(cuda)"] == ["76,800", "10.0", "-", "3.00x"]
    assert rows["(numpy)"][2].endswith("%") and rows["eager"][2].endswith("%")  # the CPU sides keep theirs


def test_tinygpt_training_takes_the_batch_and_recompute_it_is_given():
    model, optimizer, idx, targets = train.tinygpt_training("small", "numpy", False, batch_size=3,
                                                            recompute=True)
    assert idx.shape == targets.shape == (3, 64) and model.recompute and optimizer is None
    model, optimizer, idx, _ = train.tinygpt_training("small", "numpy", True)
    assert idx.shape == (12, 64) and not model.recompute and optimizer is not None


def test_both_sides_step_on_the_same_batch_and_update_their_weights(monkeypatch):
    import torch
    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)  # (the process's setting left alone)
    seen = {}
    ours_step, ours = train.tinygpt_step("small", "numpy", True)
    peer_step, peer = train.torch_step("small", 3, True)
    assert threads == [3]

    forward, peer_forward, cross_entropy = ours.forward, peer.forward, torch.nn.functional.cross_entropy
    monkeypatch.setattr(ours, "forward", lambda idx, targets: seen.update(ours=(idx, targets)) or
                        forward(idx, targets))
    monkeypatch.setattr(peer, "forward", lambda idx, **kw: seen.update(peer_idx=idx.numpy()) or
                        peer_forward(idx, **kw))
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda logits, targets: seen.update(
        peer_targets=targets.numpy()) or cross_entropy(logits, targets))
    before = {name: p.copy() for name, p in ours.params.items()}
    peer_before = {name: p.detach().clone() for name, p in peer.named_parameters()}
    ours_step()
    peer_step()
    idx, targets = seen["ours"]
    assert idx.shape == (12, 64)
    assert np.array_equal(seen["peer_idx"], idx) and np.array_equal(seen["peer_targets"], targets.reshape(-1))
    # a step is forward + backward + AdamW on both sides: every weight moves
    assert all(not np.array_equal(before[name], p) for name, p in ours.params.items())
    assert all(not torch.equal(peer_before[name], p) for name, p in peer.named_parameters())
    assert all(p.grad is None for p in peer.parameters())  # zeroed for the next step

    # no dropout on the peer (ours has none): two forwards in training mode agree
    monkeypatch.undo()
    assert peer.training and not peer.config.use_cache
    with torch.no_grad():
        x = torch.from_numpy(idx)
        assert torch.equal(peer(x).logits, peer(x).logits)


def test_recompute_is_on_for_both_sides_or_for_neither():
    def checkpointing(model):  # transformers v5 renamed the flag
        flag = getattr(model, "is_activation_checkpointing", None)
        return model.is_gradient_checkpointing if flag is None else flag

    for recompute in (False, True):
        assert train.tinygpt_step("small", "numpy", False, recompute)[1].recompute is recompute
        assert bool(checkpointing(train.torch_step("small", 1, False, recompute)[1])) is recompute


def test_blas_threads_reads_openblas_then_omp_then_the_cores(monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert blas_threads() == 3
    for openblas in ("0", "four", ""):  # not a thread count: the next one is
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", openblas)
        assert blas_threads() == 2
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "0")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert blas_threads() == cores
