"""``tinygpt bench train``: training-step tokens/s of tinygpt against PyTorch eager, side by side.

Both sides train the same GPT-2 architecture (PyTorch side: transformers' ``GPT2LMHeadModel``, dropout 0, its
default SDPA attention, ``torch.set_num_threads`` equal to our BLAS threads) on the same random batch. A step
is forward + backward, plus an AdamW update on both sides when ``tinygpt.optim.AdamW`` exists; the table says
which (the peer's: ``torch.optim.AdamW`` with its CPU default, one tensor at a time, as nanoGPT runs it on a
CPU; its ``fused=True`` took 6.0 ms a step at 10.7M parameters against 26.2 ms for the default (2026-12-02, a
script not kept), where our fused kernel took 13.1 ms on 2026-12-01). Steps of the two sides are interleaved
(ours, theirs, ours, ...) so that other load on the machine slows both alike; the figure is the median step.
``--isolate N`` instead runs each side alone in a fresh process, N rounds in alternating order, and reports
the median of the rounds' medians: no side then shares the process (or its thread pools, still spinning from
the other side's last call) with the other, at the price of the process-to-process drift that interleaving
cancels. Both run with freed memory kept for reuse (``tinygpt.train.retain_freed_memory``, as ``tinygpt
train`` runs): a process-wide setting, and neutral to the ratio here (four A/B pairs at 6L/384d, 2026-12-01:
1.32x, 1.24x, 1.19x, 1.13x with it, 1.33x, 1.24x, 1.23x, 1.23x without).

MFU (model FLOPs utilisation) divides the model's FLOPs per second (``GPT.flops_per_token``: 6N plus
attention) by the float32 matmul GFLOP/s that NumPy reaches on this machine, measured in the same run (a
CPU's rate: a cuda side gets none). A cuda side's step waits for its GPU work to end (``cuda.synchronize``).

The memory probe runs one training step of each side in a fresh subprocess and reports the peak resident
set size (VmHWM) and how much the step added above the built model and optimizer (Linux only).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import numpy as np

from tinygpt.bench import blas_threads, decay_matrices_only, import_torch_peer, training_peer_config
from tinygpt.errors import TinyGPTError

# name -> (n_layer, n_head, n_embd, block_size T, batch B); vocabulary 65 (shakespeare_char) for both
CONFIGS = {
    "small": (4, 4, 128, 64, 12),  # nanoGPT's shakespeare_char CPU config
    "medium": (6, 6, 384, 256, 8),  # nanoGPT's shakespeare_char GPU config, at batch 8
}
VOCAB_SIZE = 65


def add_arguments(parser):
    parser.add_argument(
        "--backend", default="numpy", help="tinygpt backend(s), comma-separated (default numpy)"
    )
    parser.add_argument(
        "--configs", default="small,medium", help=f"comma-separated, from {', '.join(CONFIGS)}"
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps per side and config (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--no-peer", action="store_true", help="skip PyTorch (tinygpt figures only)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS probe")
    parser.add_argument("--memory-config", default=None, help="peak-RSS probe config (default medium)")
    parser.add_argument("--no-optimizer", action="store_true", help="time forward + backward only")
    parser.add_argument("--recompute", action="store_true",
                        help="activation recomputation on both sides (tinygpt's GPT.recompute, transformers' "
                             "activation checkpointing): the time and memory of the trade")
    parser.add_argument("--isolate", type=int, default=0, metavar="N",
                        help="each side alone in a fresh process, N rounds in alternating order, instead of "
                             "interleaving the sides in this one")


def _have_adamw() -> bool:
    try:
        from tinygpt.optim import AdamW  # noqa: F401
    except ImportError:
        return False
    return True


def matmul_gflops(n: int = 2048, repeats: int = 3) -> float:
    """Best float32 GFLOP/s of NumPy's (n, n) @ (n, n) over ``repeats`` tries: the MFU denominator."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    np.matmul(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


# --- the two sides: each a (step function, tokens per step) ---------------------------------------


def tinygpt_training(config_name: str, backend: str, with_optimizer: bool, batch_size: int | None = None,
                     recompute: bool = False):
    """(model, optimizer or None, idx, targets): a fresh model of ``config_name`` (batch: the config's, or
    ``batch_size``; activation recomputation with ``recompute``) and the optimizer `tinygpt train` builds
    for it, on one random batch."""
    from tinygpt.model import GPT, GPTConfig

    L, H, C, T, B = CONFIGS[config_name]
    B = batch_size or B
    model = GPT(GPTConfig(VOCAB_SIZE, T, L, H, C, dropout=0.0), seed=0, backend=backend)
    model.recompute = recompute
    rng = np.random.default_rng(0)
    idx = rng.integers(0, VOCAB_SIZE, (B, T))
    targets = rng.integers(0, VOCAB_SIZE, (B, T))
    optimizer = None
    if with_optimizer:
        from tinygpt.kernels import fused_adamw
        from tinygpt.optim import AdamW

        # the optimizer `tinygpt train` builds: with the numba backend, AdamW runs the fused kernel
        optimizer = AdamW(model.params, lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1,
                          kernel=fused_adamw(model.ops))
    return model, optimizer, idx, targets


def tinygpt_step(config_name: str, backend: str, with_optimizer: bool, recompute: bool = False):
    model, optimizer, idx, targets = tinygpt_training(config_name, backend, with_optimizer,
                                                      recompute=recompute)
    sync = lambda: None  # noqa: E731
    if model.ops.name == "cuda":  # its kernels run asynchronously: without the wait, the step's time ended
        # when its last kernel was launched, and its backward and AdamW ran on during the peer's timed step
        from numba import cuda

        sync = cuda.synchronize

    def step():
        model.forward(idx, targets)
        grads = model.backward()
        if optimizer is not None:
            optimizer.step(grads)
        sync()

    return step, model


def torch_adamw(torch, model):
    """The peer's AdamW, set as ours: decay 0.1 on the 2-D weights only (as tinygpt's AdamW, and nanoGPT's,
    apply it; torch's default decays biases and LayerNorm weights too), lr 1e-3, betas (0.9, 0.99)."""
    groups = decay_matrices_only(model.parameters(), 0.1)
    return torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99), eps=1e-8)


def torch_step(config_name: str, threads: int, with_optimizer: bool, recompute: bool = False):
    torch, transformers = import_torch_peer()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    L, H, C, T, B = CONFIGS[config_name]
    hf_config = training_peer_config(transformers, VOCAB_SIZE, T, L, H, C)
    model = transformers.GPT2LMHeadModel(hf_config).train()
    if recompute:  # transformers' activation recomputation, the peer of GPT.recompute (renamed in v5)
        enable = getattr(model, "activation_checkpointing_enable", None)
        (enable or model.gradient_checkpointing_enable)()
    rng = np.random.default_rng(0)
    idx = torch.from_numpy(rng.integers(0, VOCAB_SIZE, (B, T)))
    targets = torch.from_numpy(rng.integers(0, VOCAB_SIZE, (B, T)))
    optimizer = None
    if with_optimizer:
        optimizer = torch_adamw(torch, model)

    def step():
        logits = model(idx).logits
        loss = torch.nn.functional.cross_entropy(logits.view(-1, VOCAB_SIZE), targets.view(-1))
        loss.backward()
        if optimizer is not None:
            optimizer.step()
        model.zero_grad(set_to_none=True)

    return step, model


def _interleaved_medians(steps: dict, n_steps: int, n_warmup: int) -> dict:
    """Median seconds per step of each side, timing them in turn so background load hits all alike."""
    for step in steps.values():
        for _ in range(n_warmup):
            step()
    times = {name: [] for name in steps}
    for _ in range(n_steps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


# --- peak memory of one training step, in a fresh process ----------------------------------------


def _status_kb(field: str) -> int:
    """A ``/proc/self/status`` figure in KiB (VmRSS: resident now, VmHWM: peak resident)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise TinyGPTError(f"/proc/self/status has no {field}")


def _probe_main(argv):
    """Entry point of the probe subprocess: build one side, run one step, print RSS before and peak during.

    One warm-up step runs first, so the measured step is a steady-state one: compiled kernels loaded
    (numba's JIT cache stays resident), the optimizer's moments made (both sides create them lazily).
    The peak is VmHWM of this process's own memory map. (``getrusage``'s ru_maxrss would not do: across
    fork + exec it keeps the parent's peak, and the parent here holds PyTorch and several models.)
    The probe leaves glibc's defaults (no ``retain_freed_memory``): with it, RSS would sit at the peak
    before the step too, and "step added" would read ~0. (Its peak with it, 2026-12-01: tinygpt numba
    677 against 676 MiB, PyTorch 1,357 against 1,278 MiB.)
    """
    side, config_name, backend, threads, with_optimizer, recompute = argv
    step = _side_step(side, config_name, backend, threads, with_optimizer, recompute)
    step()  # warm-up
    before = _status_kb("VmRSS")
    try:  # reset the peak to the current RSS, so the peak below is this step's (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    step()
    print(json.dumps({"before_kb": before, "peak_kb": _status_kb("VmHWM")}))


_PROBE = "import sys; from tinygpt.bench.train import _probe_main; _probe_main(sys.argv[1:])"


def _flag(value: bool) -> str:
    """A bool as a subprocess argument ("1" / "0")."""
    return "1" if value else "0"


def _side_step(side, config_name, backend, threads, with_optimizer, recompute):
    """A subprocess's step function, from its string arguments."""
    if side == "tinygpt":
        return tinygpt_step(config_name, backend, with_optimizer == "1", recompute == "1")[0]
    return torch_step(config_name, int(threads), with_optimizer == "1", recompute == "1")[0]


def _timing_main(argv):
    """Entry point of an ``--isolate`` subprocess: build one side, print the median of its timed steps."""
    side, config_name, backend, threads, with_optimizer, recompute, n_steps, n_warmup = argv
    from tinygpt.train import retain_freed_memory

    retain_freed_memory()  # as the in-process bench and `tinygpt train`
    step = _side_step(side, config_name, backend, threads, with_optimizer, recompute)
    median = _interleaved_medians({side: step}, int(n_steps), int(n_warmup))[side]
    print(json.dumps({"median_s": median}))


_TIMING = "import sys; from tinygpt.bench.train import _timing_main; _timing_main(sys.argv[1:])"


def _isolated_medians(sides: dict, config_name: str, threads: int, with_optimizer: bool, recompute: bool,
                      n_steps: int, n_warmup: int, rounds: int) -> tuple[dict, dict]:
    """({label: median over rounds of each process's median step}, {label: [each round's median]}).

    ``sides`` maps a label to (side, backend). Round r runs every side once, each in a fresh process, in
    the order of ``sides`` on even rounds and reversed on odd ones."""
    per_round = {label: [] for label in sides}
    order = list(sides)
    for r in range(rounds):
        for label in order if r % 2 == 0 else order[::-1]:
            side, backend = sides[label]
            args = [side, config_name, backend, str(threads), _flag(with_optimizer), _flag(recompute),
                    str(n_steps), str(n_warmup)]
            proc = subprocess.run([sys.executable, "-c", _TIMING, *args], capture_output=True, text=True)
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise TinyGPTError(f"timing process for {label} failed: {last}")
            per_round[label].append(json.loads(proc.stdout.strip().splitlines()[-1])["median_s"])
    return {label: statistics.median(t) for label, t in per_round.items()}, per_round


def peak_rss(side: str, config_name: str, backend: str, threads: int, with_optimizer: bool,
             recompute: bool = False) -> dict:
    """{"before_kb", "peak_kb"}: RSS with the model and optimizer built, and its peak during one step."""
    args = [side, config_name, backend, str(threads), _flag(with_optimizer), _flag(recompute)]
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise TinyGPTError(f"memory probe for {side} failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the command ----------------------------------------------------------------------------------


def run(args):
    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    if args.no_memory and args.memory_config is not None:  # (it was ignored without a word)
        raise TinyGPTError("--memory-config names the peak-RSS probe's config, and --no-memory skips the "
                           "probe: give one or the other")
    # (not `or`: an empty --memory-config is an unknown config, as it was when medium was the flag's default)
    memory_config = "medium" if args.memory_config is None else args.memory_config
    unknown = [c for c in [*names, memory_config] if c not in CONFIGS]
    if unknown or not names:
        raise TinyGPTError(
            f"unknown config {', '.join(unknown) or '(none)'}; choose from {', '.join(CONFIGS)}"
        )
    if not backends:  # (the FLOP count is taken from a tinygpt model: there would be none)
        raise TinyGPTError(f"--backend names no backend ({args.backend!r}): give numpy, numba, cuda or auto, "
                           "comma-separated")
    if args.steps < 1 or args.warmup < 0:
        raise TinyGPTError("--steps must be >= 1 and --warmup >= 0")
    if args.isolate < 0:
        raise TinyGPTError(f"--isolate must be >= 0 (0: interleave in this process), got {args.isolate}")
    from tinygpt.kernels import resolve_backend
    from tinygpt.model import GPTConfig, activation_floats_per_token, get_layer_ops
    from tinygpt.train import retain_freed_memory

    for backend in backends:
        get_layer_ops(backend)  # fail early, with the backend's own message
    on_gpu_sides = {f"tinygpt ({b})" for b in backends if resolve_backend(b) == "cuda"}
    retain_freed_memory()  # as `tinygpt train` does; a process-wide setting, so both sides get it
    threads = blas_threads()
    with_optimizer = _have_adamw() and not args.no_optimizer
    what = "forward + backward + AdamW" if with_optimizer else "forward + backward (no AdamW)"
    if args.recompute:
        what += ", activation recomputation on both sides (transformers: activation checkpointing)"
    peer = not args.no_peer
    if peer:
        import_torch_peer()

    peak = matmul_gflops()
    how = (f"each side alone in a fresh process, median of {args.isolate} rounds' medians of {args.steps}"
           if args.isolate else f"steps interleaved, median of {args.steps}")
    print(f"training step = {what}; float32; {threads} thread(s); vocabulary {VOCAB_SIZE}; {how}")
    print(f"NumPy float32 matmul (2048^3): {peak:.0f} GFLOP/s (the MFU denominator)")
    header = f"{'config':<24} {'side':<20} {'tokens/s':>10} {'ms/step':>9} {'MFU':>6} {'vs PyTorch':>11}"
    print(header)
    print("-" * len(header))
    for name in names:
        L, H, C, T, B = CONFIGS[name]
        label = f"{L}L/{H}H/{C}d/T{T}/B{B}"
        per_round = None
        if args.isolate:
            from tinygpt.model import GPT

            sides = {f"tinygpt ({b})": ("tinygpt", b) for b in backends}
            if peer:
                sides["PyTorch eager"] = ("torch", "numpy")
            seconds, per_round = _isolated_medians(sides, name, threads, with_optimizer, args.recompute,
                                                   args.steps, args.warmup, args.isolate)
            model = GPT(GPTConfig(VOCAB_SIZE, T, L, H, C))  # for its FLOP count only
        else:
            steps = {}
            for backend in backends:
                steps[f"tinygpt ({backend})"], model = tinygpt_step(name, backend, with_optimizer,
                                                                    args.recompute)
            if peer:
                steps["PyTorch eager"], _ = torch_step(name, threads, with_optimizer, args.recompute)
            seconds = _interleaved_medians(steps, args.steps, args.warmup)
        flops_per_token = model.flops_per_token(T)
        for side, s in seconds.items():
            tokens_per_s = B * T / s
            # (a GPU's step over this CPU's matmul rate is no utilisation of anything: no MFU for it)
            on_gpu = side in on_gpu_sides
            mfu = "-" if on_gpu else f"{flops_per_token * tokens_per_s / (peak * 1e9):.1%}"
            ratio = f"{seconds['PyTorch eager'] / s:.2f}x" if peer else "-"
            print(f"{label:<24} {side:<20} {tokens_per_s:>10,.0f} {s * 1e3:>9.1f} {mfu:>6} {ratio:>11}")
        if per_round:
            for side, times in per_round.items():
                print(f"  {side} rounds (ms/step): {' / '.join(f'{t * 1e3:,.0f}' for t in times)}")
    if not args.no_memory:
        name = memory_config
        L, H, C, T, B = CONFIGS[name]
        print(f"\npeak RSS of one training step at {L}L/{C}d/T{T}/B{B} (fresh process each):")
        sides = [("tinygpt", b) for b in backends] + ([("torch", "numpy")] if peer else [])
        for side, backend in sides:
            rss = peak_rss(side, name, backend, threads, with_optimizer, args.recompute)
            label = f"tinygpt ({backend})" if side == "tinygpt" else "PyTorch eager"
            print(f"  {label:<20} peak {rss['peak_kb'] / 1024:7.0f} MiB   step added "
                  f"{(rss['peak_kb'] - rss['before_kb']) / 1024:6.0f} MiB")  # fmt: skip
        per_token = activation_floats_per_token(GPTConfig(VOCAB_SIZE, T, L, H, C), T,
                                                recompute=args.recompute)
        print(f"  activations kept for backward (model.py's count): {per_token * 4 / 1024:.0f} KiB/token, "
              f"{per_token * 4 * B * T / 2**20:.0f} MiB per step")  # fmt: skip
    return 0
