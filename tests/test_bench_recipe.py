"""``tinygpt bench recipe``: both sides run end to end (tiny run); bad input refused. No timings asserted."""

import math

import pytest

from tinygpt.cli import main

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40


def test_bench_recipe_runs_both_sides(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
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
        step, train_loss, val_loss = int(r[-4]), float(r[-3]), float(r[-2])
        assert step == 6
        assert math.isfinite(train_loss) and math.isfinite(val_loss)
        assert val_loss < math.log(len(set(TEXT))) + 0.5  # both start near log(vocab) and do not diverge
    assert rows[1][-1] == "1.00x"  # the peer against itself


@pytest.mark.parametrize("argv, message", [
    (["--data", "no/such/file.txt"], "no such file"),
    (["--data", __file__, "--max-iters", "0"], "--max-iters must be at least 1"),
    (["--data", __file__, "--config", "no_such_preset"], "neither a file nor a shipped config"),
])
def test_bench_recipe_bad_input(capsys, argv, message):
    assert main(["bench", "recipe", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
