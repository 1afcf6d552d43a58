"""``tinygpt bench profile``: the per-op timing wrapper counts what a step calls and puts everything back;
the command prints a row per op (tiny settings); no timings asserted."""

import types

import numpy as np
import pytest

from tinygpt.bench.profile import OPTIMIZER_ROW, OTHER_ROW, OpTimes, print_profile, profile_step, timed_ops
from tinygpt.cli import main
from tinygpt.model import GPT, GPTConfig
from tinygpt.optim import AdamW


def _tiny(n_layer=2):
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=n_layer, n_head=2, n_embd=8), backend="numpy")
    optimizer = AdamW(model.params, lr=1e-3)
    rng = np.random.default_rng(0)
    idx, targets = rng.integers(0, 11, (2, 8)), rng.integers(0, 11, (2, 8))

    def step():
        model.forward(idx, targets)
        optimizer.step(model.backward())

    return model, optimizer, step


def test_timed_ops_count_every_call_of_a_step_and_wait_around_each():
    model, _, step = _tiny(n_layer=3)
    times, syncs = OpTimes(), []
    original = model.ops
    model.ops = timed_ops(original, times, sync=lambda: syncs.append(1))
    step()
    # per block: 2 LayerNorms, 4 linears (c_attn, c_proj, c_fc, mlp c_proj), 1 GELU, 1 attention; + ln_f
    assert times.calls["linear_forward"] == times.calls["linear_backward"] == 12
    assert times.calls["gelu_forward"] == times.calls["attention_backward"] == 3
    assert times.calls["layernorm_forward"] == 7 and times.calls["embedding_forward"] == 1
    assert len(syncs) == 2 * sum(times.calls.values())  # one wait before and one after every call
    assert set(times.seconds) == set(times.calls) and all(s >= 0 for s in times.seconds.values())
    assert model.ops.name == original.name  # non-callables are carried over as they are


def test_profile_step_rows_add_up_and_leave_model_and_optimizer_as_they_were():
    model, optimizer, step = _tiny()
    ops = model.ops
    rows, plain, profiled = profile_step(step, model, optimizer, steps=2)
    assert model.ops is ops and "step" not in vars(optimizer)  # the timed wrappers are gone
    names = [row[0] for row in rows]
    assert names[-1] == OTHER_ROW and OPTIMIZER_ROW in names and "attention_forward" in names
    assert {name: calls for name, calls, _, _ in rows}[OPTIMIZER_ROW] == 1  # per step
    assert sum(seconds for _, _, seconds, _ in rows) == pytest.approx(profiled)
    assert [s for _, _, s, _ in rows[:-1]] == sorted((s for _, _, s, _ in rows[:-1]), reverse=True)
    # GFLOP/s for the linear layers only: 2 x rows x in x out per forward, twice that per backward
    rates = {name: (seconds, gflops) for name, _, seconds, gflops in rows if gflops is not None}
    assert set(rates) == {"linear_forward", "linear_backward"}
    # 2 layers of c_attn (8 -> 24), attn c_proj (8 -> 8), c_fc (8 -> 32), mlp c_proj (32 -> 8), B T = 16 rows
    per_step = 2 * 16 * 2 * (8 * 24 + 8 * 8 + 8 * 32 + 32 * 8)
    seconds, gflops = rates["linear_forward"]
    assert gflops == pytest.approx(per_step / seconds / 1e9)
    assert rates["linear_backward"][1] == pytest.approx(2 * per_step / rates["linear_backward"][0] / 1e9)
    assert plain > 0
    before = {name: p.copy() for name, p in model.params.items()}
    step()  # the restored step still trains, through the real optimizer
    assert any(not np.array_equal(before[name], p) for name, p in model.params.items())


def test_bench_profile_prints_a_row_per_op(capsys):
    assert main(["bench", "profile", "--backend", "numpy", "--config", "small", "--steps", "1",
                 "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "4L/4H/128d, T 64, B 12, vocab 65, backend numpy" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert rows["linear_forward"][1] == "16" and rows["gelu_backward"][1] == "4"
    assert "NumPy float32 matmul, 2048 x 2048" in out and len(rows["linear_backward"]) == 5
    table = [line for line in out.splitlines()[2:] if "%" in line]
    shares = [float(next(w for w in line.split() if w.endswith("%")).rstrip("%")) for line in table]
    assert sum(shares) == pytest.approx(100, abs=0.1 * len(shares))


def test_bench_profile_with_recompute_counts_the_replayed_forwards(capsys):
    assert main(["bench", "profile", "--backend", "numpy", "--config", "small", "--steps", "1",
                 "--warmup", "0", "--recompute"]) == 0
    out = capsys.readouterr().out
    assert "backend numpy, activation recomputation" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    # every block's forward runs twice (forward, then its replay in backward); its backward once
    assert rows["linear_forward"][1] == "32" and rows["gelu_forward"][1] == "8"
    assert rows["linear_backward"][1] == "16"


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps must be at least 1, got 0"),
    (["--warmup", "-1"], "--warmup must be at least 0, got -1"),
    (["--batch", "0"], "--batch must be at least 1, got 0"),
    (["--config", "huge"], "unknown config 'huge'; choose from small, medium"),
    (["--backend", "tpu"], "backend"),
])
def test_bench_profile_bad_input_is_one_line_exit_2(capsys, argv, message):
    assert main(["bench", "profile", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tinygpt: error: ") and message in err, err


def test_profile_step_figures_on_an_injected_clock(monkeypatch):
    # a step of 1 s in the op, 0.25 s in the optimizer and 0.5 s between them; plain steps of 3, 1, 2 s
    from tinygpt.bench import profile

    now = [0.0]
    monkeypatch.setattr(profile, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    plain = iter([3.0, 1.0, 2.0])

    def op():
        now[0] += 1.0

    class Optimizer:
        def step(self):
            now[0] += 0.25

    model, optimizer = types.SimpleNamespace(ops=types.SimpleNamespace(matmul=op, name="fake")), Optimizer()

    def step():
        if model.ops.matmul is op:  # not timed yet: a plain step
            now[0] += next(plain)
            return
        model.ops.matmul()
        now[0] += 0.5
        optimizer.step()

    rows, plain_s, profiled_s = profile_step(step, model, optimizer, steps=3)
    assert plain_s == 2.0  # the median plain step
    assert profiled_s == pytest.approx(1.75)  # the mean profiled step
    # calls and seconds per step, slowest first, then what is left
    assert rows == [("matmul", 1.0, pytest.approx(1.0), None),
                    (OPTIMIZER_ROW, 1.0, pytest.approx(0.25), None),
                    (OTHER_ROW, None, pytest.approx(0.5), None)]


def test_print_profile_table(capsys):
    rows = [("linear_forward", 16.0, 0.003, 12.345), (OPTIMIZER_ROW, 1.0, 0.0015, None),
            (OTHER_ROW, None, 0.0005, None)]
    print_profile(rows, plain=0.004, profiled=0.005, title="step")
    assert capsys.readouterr().out.splitlines() == [
        "step: 4.0 ms a step plain, 5.0 ms with every op timed",
        "op                               calls    ms/step   share   GFLOP/s",
        "linear_forward                      16       3.00   60.0%      12.3",
        "optimizer.step (AdamW)               1       1.50   30.0%          ",
        "other (Python between the ops)               0.50   10.0%          ",
    ]


def test_bench_profile_steps_the_batch_it_is_given(capsys, monkeypatch):
    from tinygpt.bench import train

    monkeypatch.setattr(train, "matmul_gflops", lambda: 1.0)  # (the 2048^3 product: not what is checked)
    sizes = []
    training = train.tinygpt_training

    def recorded_training(*a, **k):
        built = training(*a, **k)
        sizes.append(built[2].shape)  # idx
        return built

    monkeypatch.setattr(train, "tinygpt_training", recorded_training)
    assert main(["bench", "profile", "--backend", "numpy", "--config", "small", "--batch", "2",
                 "--steps", "1", "--warmup", "0"]) == 0
    assert "4L/4H/128d, T 64, B 2, vocab 65" in capsys.readouterr().out and sizes == [(2, 64)]
