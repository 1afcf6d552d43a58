"""``tinygpt bench profile``: where one training step's time goes, op by op, on one backend.

A diagnostic, not a race: the peer-side figures are in ``tinygpt bench train`` and ``bench kernels``. It
builds the model and optimizer of ``tinygpt bench train`` (same configs, same random batch), times some
plain steps, then swaps the model's op namespace for one whose every function is timed
(``timed_ops``) and times as many steps again. The table gives each op's calls and milliseconds per
step, the optimizer step as one row, and what is left: Python between the ops (building caches,
reshapes, the tape). On the cuda backend each timed call waits for the GPU before and after
(``cuda.synchronize``), so a row is that op's whole cost, launch latency included, and the instrumented
step is slower than a plain one by the waits: both step times are printed.
"""

from __future__ import annotations

import statistics
import time
import types
from collections import defaultdict

from tinygpt.errors import TinyGPTError

OPTIMIZER_ROW = "optimizer.step (AdamW)"
OTHER_ROW = "other (Python between the ops)"


def add_arguments(parser):
    from tinygpt.bench.train import CONFIGS

    parser.add_argument("--backend", default="auto", help="numpy, numba, cuda or auto (default auto)")
    parser.add_argument("--config", default="medium", help=f"one of {', '.join(CONFIGS)} (default medium)")
    parser.add_argument("--batch", type=int, help="sequences per step (default: the config's)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps, plain and profiled (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--recompute", action="store_true",
                        help="activation recomputation (GPT.recompute): where its extra forward goes")


class OpTimes:
    """Seconds and calls per op name, summed over the calls made while it is attached to a model, and the
    floating-point operations of the linear layers' matmuls (forward: 2 rows in out; backward: twice)."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)
        self.linear_flops = {"linear_forward": 0.0, "linear_backward": 0.0}


def timed(name: str, fn, times: OpTimes, sync=lambda: None):
    """``fn`` that adds its wall time and one call to ``times`` under ``name``; ``sync`` runs before the
    clock starts and before it stops (the GPU's ``synchronize``: its kernels run asynchronously, so without
    it the time would be the launch's only)."""

    def run(*args, **kwargs):
        sync()
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        sync()
        times.seconds[name] += time.perf_counter() - start
        times.calls[name] += 1
        if name == "linear_forward":  # x (..., in) @ weight (in, out): 2 rows in out = 2 x.size out
            times.linear_flops[name] += 2.0 * args[0].size * args[1].shape[1]
        elif name == "linear_backward":  # dx (..., in) and dweight (in, out): two products of that size
            dx, dweight = result[0], result[1]
            times.linear_flops[name] += 4.0 * dx.size * dweight.shape[1]
        return result

    return run


def timed_ops(ops: types.SimpleNamespace, times: OpTimes, sync=lambda: None) -> types.SimpleNamespace:
    """A copy of a backend's op namespace in which every function is ``timed`` under its own name.

    Example: ``model.ops = timed_ops(model.ops, times)``, one training step, then
    ``times.calls["gelu_forward"]`` is the model's n_layer. (No op calls another through the namespace,
    so no time is counted twice.)"""
    return types.SimpleNamespace(**{name: timed(name, value, times, sync) if callable(value) else value
                                    for name, value in vars(ops).items()})


def profile_step(step, model, optimizer, steps: int, sync=lambda: None) -> tuple[list, float, float]:
    """Time ``steps`` plain steps, then as many with the ops timed. ``step()`` runs forward, backward and
    ``optimizer.step``; the optimizer's time is caught by timing its ``step`` method the same way.

    Returns (rows, plain median s, profiled mean s); rows are (name, calls per step, s per step, GFLOP/s
    or None), the slowest first, ending with "other" (the profiled step's time outside every timed call).
    GFLOP/s is given for the linear layers: the forward's matmul, and the backward's two (dx and dW)."""

    def timed_steps():
        durations = []
        for _ in range(steps):
            sync()
            start = time.perf_counter()
            step()
            sync()
            durations.append(time.perf_counter() - start)
        return durations

    plain = statistics.median(timed_steps())
    times = OpTimes()
    ops, optimizer_step, own_step = model.ops, optimizer.step, vars(optimizer).get("step")
    model.ops = timed_ops(ops, times, sync)
    optimizer.step = timed(OPTIMIZER_ROW, optimizer_step, times, sync)  # (its kernel is not a timed op)
    try:
        total = sum(timed_steps())
    finally:
        model.ops = ops
        if own_step is None:
            del optimizer.step  # (the instance attribute: the class's method is back)
        else:
            optimizer.step = own_step
    flops = times.linear_flops
    rows = sorted(((name, times.calls[name] / steps, seconds / steps,
                    flops[name] / seconds / 1e9 if name in flops and seconds > 0 else None)
                   for name, seconds in times.seconds.items()), key=lambda row: -row[2])
    rows.append((OTHER_ROW, None, (total - sum(times.seconds.values())) / steps, None))
    return rows, plain, total / steps


def run(args):
    from tinygpt.bench.train import CONFIGS, VOCAB_SIZE, tinygpt_training
    from tinygpt.kernels import resolve_backend
    from tinygpt.train import retain_freed_memory

    if args.config not in CONFIGS:
        raise TinyGPTError(f"unknown config {args.config!r}; choose from {', '.join(CONFIGS)}")
    for flag, value, least in (("--steps", args.steps, 1), ("--warmup", args.warmup, 0),
                               ("--batch", args.batch, 1)):
        if value is not None and value < least:
            raise TinyGPTError(f"{flag} must be at least {least}, got {value}")
    backend = resolve_backend(args.backend)
    L, H, C, T, B = CONFIGS[args.config]
    B = args.batch or B
    retain_freed_memory()  # as `tinygpt train` and `bench train` run
    model, optimizer, idx, targets = tinygpt_training(args.config, backend, True, B, recompute=args.recompute)
    sync = lambda: None  # noqa: E731
    if backend == "cuda":
        from numba import cuda

        sync = cuda.synchronize

    def step():
        model.forward(idx, targets)
        optimizer.step(model.backward())

    for _ in range(args.warmup):
        step()
    sync()
    rows, plain, profiled = profile_step(step, model, optimizer, args.steps, sync)
    print_profile(rows, plain, profiled,
                  f"training step, {L}L/{H}H/{C}d, T {T}, B {B}, vocab {VOCAB_SIZE}, backend {backend}"
                  + (", activation recomputation" if args.recompute else ""))
    if backend != "cuda":  # what the linear layers' GFLOP/s compare with, on the same BLAS
        from tinygpt.bench.train import matmul_gflops

        print(f"NumPy float32 matmul, 2048 x 2048: {matmul_gflops():.0f} GFLOP/s (best of 3)")
    return 0


def print_profile(rows, plain: float, profiled: float, title: str) -> None:
    """``profile_step``'s result as a table under ``title``."""
    print(f"{title}: {plain * 1e3:,.1f} ms a step plain, {profiled * 1e3:,.1f} ms with every op timed")
    width = max(len(row[0]) for row in rows)
    print(f"{'op':<{width}}  {'calls':>6}  {'ms/step':>9}  {'share':>6}  {'GFLOP/s':>8}")
    for name, calls, seconds, gflops in rows:
        count = "" if calls is None else f"{calls:.0f}"
        rate = "" if gflops is None else f"{gflops:.1f}"
        print(f"{name:<{width}}  {count:>6}  {seconds * 1e3:>9.2f}  {seconds / profiled:>6.1%}  {rate:>8}")
