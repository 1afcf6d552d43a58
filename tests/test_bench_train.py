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
        (["--backend", "no-such-backend"], "no-such-backend"),
    ],
)
def test_bench_train_bad_arguments(capsys, argv, message):
    assert main(["bench", "train", "--no-peer", "--no-memory", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
