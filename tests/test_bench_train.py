"""``tinygpt bench train`` runs end to end (tiny settings) and rejects bad arguments; no timings asserted."""

import pytest

from tinygpt.cli import main


def test_bench_train_prints_a_row_per_side(capsys, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
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
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
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


def test_bench_train_recompute_on_both_sides(capsys, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    argv = ["--configs", "small", "--steps", "1", "--warmup", "0", "--memory-config", "small", "--recompute"]
    assert main(["bench", "train", *argv]) == 0
    out = capsys.readouterr().out
    assert "activation recomputation on both sides" in out
    assert [ln.split()[1] for ln in out.splitlines() if ln.startswith("4L/4H/128d/T64/B12")] == ["tinygpt",
                                                                                                "PyTorch"]
    # kept for backward, at the peak: the other 3 blocks' inputs (C = 128 floats a token each) and ONE
    # block's caches (16 C + H T' + 4 = 2,308 floats, T' = 64 keys; its own input among them), plus ln_f's
    # and the logits' 2 C + V = 321: 384 + 2,308 + 321 = 3,013 floats = 11.8 KiB a token (without:
    # 4 * 2,308 + 321 = 9,553, 37 KiB)
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
    ],
)
def test_bench_train_bad_arguments(capsys, argv, message):
    assert main(["bench", "train", "--no-peer", "--no-memory", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


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
