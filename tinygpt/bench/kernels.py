"""``tinygpt bench kernels``: our kernels against the peer's, op by op, in one run.

``--device cuda`` (the default; needs an NVIDIA GPU, and torch with CUDA for the peer side):

- SGEMM GFLOP/s at n x n x n against cuBLAS FP32 (``torch.matmul`` with TF32 off);
- causal attention forward and forward+backward at B 8, H 12, T 1024, D 64 against
  ``torch.nn.functional.scaled_dot_product_attention`` in float32;
- end-to-end training tokens/s, 6 layers, 384 wide, against PyTorch eager (transformers' GPT-2 + AdamW).

``--device cpu``: the Numba CPU kernels against the NumPy reference and PyTorch (CPU) at the ``medium``
training shapes (B 8, T 256, C 384, H 6, V 65), forward + backward of each op; ``--compile-times`` also
measures the JIT compile, cold (empty cache) and cached, in fresh processes.

Every row prints our figure, the peer's, and the ratio (> 1: we are faster). Repeats of the sides are
interleaved so background load slows both alike; figures are medians.
"""

from __future__ import annotations

import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from tinygpt.bench import decay_matrices_only, training_peer_config
from tinygpt.errors import TinyGPTError, say_on_stderr

_DEFAULT_SIZES, _DEFAULT_TRAIN_BATCH = "1024,2048,4096,8192", 32


def add_arguments(parser):
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cuda: CUDA kernels vs cuBLAS/SDPA (needs a GPU); cpu: Numba vs NumPy/PyTorch")
    # (defaults None: a flag of the other device is told apart and refused, not ignored)
    parser.add_argument("--sizes", help=f"(cuda) SGEMM sizes n (default {_DEFAULT_SIZES})")
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats per figure (default 10)")
    parser.add_argument("--train-batch", type=int,
                        help=f"(cuda) batch of the GPU training figure (default {_DEFAULT_TRAIN_BATCH})")
    parser.add_argument("--compile-times", action="store_true",
                        help="(cpu) also time the JIT compile, cold and cached")


def _torch():
    try:
        import torch
    except ImportError:
        raise TinyGPTError("the peer side needs PyTorch (pip install torch)") from None
    return torch


def _medians(sides: dict, repeats: int, sync=lambda: None, before=lambda: None) -> dict:
    """Median seconds of each side's callable, timed in turn after one warm-up call each. ``before`` runs
    ahead of every call, untimed: it sets the peer's gradients to None, so that each backward writes fresh
    ones, as ours does, where PyTorch added each repeat's into the last's (an extra in-place add)."""
    for fn in sides.values():
        before()
        fn()
    sync()
    times = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            before()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _table(title, header, rows):
    print(f"\n{title}")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in (header, *rows):
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths)))


# --- GPU ------------------------------------------------------------------------------------------


def _gpu_sides():
    from tinygpt.kernels import cuda_unavailable_reason, has_real_gpu

    if not has_real_gpu():
        reason = cuda_unavailable_reason() or "only the CUDA simulator is enabled"
        raise TinyGPTError(f"bench kernels needs an NVIDIA GPU ({reason}); try --device cpu")
    torch = _torch()
    if not torch.cuda.is_available():
        raise TinyGPTError("bench kernels: PyTorch has no CUDA here, so there is no cuBLAS/SDPA to compare")
    from numba import cuda

    from tinygpt.kernels import cuda as K

    return torch, cuda, K


def bench_gemm(torch, cuda, K, sizes, repeats):
    torch.backends.cuda.matmul.allow_tf32 = False  # true FP32 on both sides
    rows = []
    for n in sizes:
        rng = np.random.default_rng(0)
        a_host = rng.standard_normal((n, n), dtype=np.float32)
        b_host = rng.standard_normal((n, n), dtype=np.float32)
        a, b = cuda.to_device(a_host), cuda.to_device(b_host)
        c = cuda.device_array((n, n), np.float32)
        kernel = K.gemm_kernel(*K.gemm_config(n, n), False, False, False, "float32")
        ta, tb = torch.from_numpy(a_host).cuda(), torch.from_numpy(b_host).cuda()
        err = np.abs(K.matmul(a, b).copy_to_host() - (ta @ tb).cpu().numpy()).max()
        sides = {"ours": functools.partial(K.gemm_launch, kernel, a, b, c, n, n, n),
                 "cublas": functools.partial(torch.matmul, ta, tb)}
        t = _medians(sides, repeats, cuda.synchronize)
        ours, peer = 2 * n**3 / t["ours"] / 1e9, 2 * n**3 / t["cublas"] / 1e9
        rows.append((n, f"{ours:,.0f}", f"{peer:,.0f}", f"{ours / peer:.2f}", f"{err:.1e}"))
    _table("SGEMM, GFLOP/s (float32, TF32 off)", ("n", "tinygpt", "cuBLAS", "ratio", "max|diff|"), rows)


def bench_attention(torch, cuda, K, repeats, B=8, H=12, T=1024, D=64):
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    qkv_host = rng.standard_normal((B, T, 3 * H * D), dtype=np.float32)
    dout_host = rng.standard_normal((B, T, H * D), dtype=np.float32)
    qkv, dout = cuda.to_device(qkv_host), cuda.to_device(dout_host)
    tq = torch.from_numpy(qkv_host).cuda().view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)
    q, k, v = (x.contiguous().requires_grad_() for x in tq)
    tdout = torch.from_numpy(dout_host).cuda().view(B, T, H, D).transpose(1, 2)

    def ours_fwd():
        return K.attention_forward(qkv, H)

    def ours_fwd_bwd():
        _, cache = K.attention_forward(qkv, H)
        K.attention_backward(dout, cache)

    def sdpa_fwd():
        with torch.no_grad():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def sdpa_fwd_bwd():
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out.backward(tdout)

    def clear_grads():
        q.grad = k.grad = v.grad = None

    ref = sdpa_fwd().transpose(1, 2).reshape(B, T, H * D).cpu().numpy()
    err = np.abs(ours_fwd()[0].copy_to_host() - ref).max()
    t_f = _medians({"ours": ours_fwd, "sdpa": sdpa_fwd}, repeats, cuda.synchronize)
    t_fb = _medians({"ours": ours_fwd_bwd, "sdpa": sdpa_fwd_bwd}, repeats, cuda.synchronize, clear_grads)
    rows = [(name, f"{t['ours'] * 1e3:.2f}", f"{t['sdpa'] * 1e3:.2f}", f"{t['sdpa'] / t['ours']:.2f}")
            for name, t in (("forward", t_f), ("forward+backward", t_fb))]
    _table(f"causal attention, ms (float32, B {B} H {H} T {T} D {D}; max|diff| fwd {err:.1e})",
           ("pass", "tinygpt", "SDPA", "ratio"), rows)


def bench_train_gpu(torch, cuda, K, repeats, batch, shape=(6, 6, 384, 256, 65)):
    """Training tokens/s; ``shape`` is (n_layer, n_head, n_embd, T, vocab): 6L/384d, shakespeare_char."""
    import transformers

    from tinygpt.model import GPT, GPTConfig
    from tinygpt.optim import AdamW

    transformers.logging.set_verbosity_error()
    L, H, C, T, V = shape
    rng = np.random.default_rng(0)
    idx = rng.integers(0, V, (batch, T))
    targets = rng.integers(0, V, (batch, T))
    model = GPT(GPTConfig(V, T, L, H, C), seed=0, backend="cuda")  # params live on the GPU
    optimizer = AdamW(model.params, lr=1e-4)  # moments on the GPU too: only ids in, the loss out

    def ours():
        model.forward(idx, targets)
        optimizer.step(model.backward())

    # the peer as bench train sets it: no key/value cache built while training, and AdamW decaying the
    # 2-D weights only, as ours does (torch's default decays biases and LayerNorm weights too)
    hf = transformers.GPT2LMHeadModel(training_peer_config(transformers, V, T, L, H, C)).cuda().train()
    hf_opt = torch.optim.AdamW(decay_matrices_only(hf.parameters(), 0.1), lr=1e-4, betas=(0.9, 0.95))
    t_idx, t_tgt = torch.from_numpy(idx).cuda(), torch.from_numpy(targets).cuda()

    def eager():
        logits = hf(t_idx).logits
        torch.nn.functional.cross_entropy(logits.view(-1, V), t_tgt.view(-1)).backward()
        hf_opt.step()
        hf.zero_grad(set_to_none=True)

    t = _medians({"ours": ours, "torch": eager}, repeats, cuda.synchronize)
    tokens = batch * T
    rows = [("forward+backward+AdamW", f"{tokens / t['ours']:,.0f}", f"{tokens / t['torch']:,.0f}",
             f"{t['torch'] / t['ours']:.2f}")]
    _table(f"training step tokens/s, {L}L/{C}d, T {T}, B {batch} (device-resident on both sides)",
           ("step", "tinygpt cuda", "PyTorch eager", "ratio"), rows)
    # where our step's time goes (each op waited for, so launch latency shows): what to speed up next
    from tinygpt.bench.profile import print_profile, profile_step

    print_profile(*profile_step(ours, model, optimizer, repeats, cuda.synchronize),
                  f"\ntinygpt cuda step by op, {L}L/{C}d, T {T}, B {batch}")


# --- CPU ------------------------------------------------------------------------------------------


def _adamw(ops, param):
    """The AdamW training builds for a backend: the fused kernel with numba, NumPy's in-place step else."""
    from tinygpt.kernels import fused_adamw
    from tinygpt.optim import AdamW

    return AdamW({"p": param}, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1,
                 kernel=fused_adamw(ops))


def cpu_op_cases(B=8, T=256, C=384, H=6, V=65):
    """name -> make(ops) -> callable running forward+backward, at the medium shapes; and ``torch_cases``,
    which makes the torch version of each (name -> callable) and the function that sets their inputs'
    gradients to None between calls (AdamW's given gradient, and grad_norm's, are kept)."""
    from tinygpt.optim import grad_norm

    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, C), dtype=np.float32)
    w, b = np.ones(C, np.float32), np.zeros(C, np.float32)
    qkv = rng.standard_normal((B, T, 3 * C), dtype=np.float32)
    h4 = rng.standard_normal((B, T, 4 * C), dtype=np.float32)
    logits = rng.standard_normal((B, T, V), dtype=np.float32)
    targets = rng.integers(0, V, (B, T))
    # the medium model's parameter count, as one 2-D tensor: weight decay applies to it on both sides
    shape = (10_700, 1_000)
    p, g = rng.standard_normal(shape, dtype=np.float32), rng.standard_normal(shape, dtype=np.float32)

    def run(fwd, bwd, dout, *inputs):
        def fn():
            out, cache = fwd(*inputs)
            bwd(dout if dout is not None else 1.0, cache)
        return fn

    cases = {
        "attention": lambda ops: run(lambda a: ops.attention_forward(a, H), ops.attention_backward, x, qkv),
        "layernorm": lambda ops: run(ops.layernorm_forward, ops.layernorm_backward, x, x, w, b),
        "gelu": lambda ops: run(ops.gelu_forward, ops.gelu_backward, h4, h4),
        "cross_entropy": lambda ops: run(ops.cross_entropy_forward, ops.cross_entropy_backward, None, logits,
                                         targets),
        "adamw": lambda ops: functools.partial(_adamw(ops, p.copy()).step, {"p": g}),
        "grad_norm": lambda ops: functools.partial(grad_norm, {"p": g}, ops.sum_squares),  # as train clips
    }

    def torch_cases():
        torch = _torch()
        F = torch.nn.functional
        tx = torch.from_numpy(x).requires_grad_()
        tqkv = torch.from_numpy(qkv).requires_grad_()

        def attention():  # as ours: fused qkv (B, T, 3C) in, (B, T, C) out, the gradient back to qkv
            q, k, vv = tqkv.view(B, T, 3, H, C // H).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, vv, is_causal=True)
            y.transpose(1, 2).reshape(B, T, C).backward(dx)
        th = torch.from_numpy(h4).requires_grad_()
        tl, tt = torch.from_numpy(logits).requires_grad_(), torch.from_numpy(targets)
        tw, tb = torch.from_numpy(w).requires_grad_(), torch.from_numpy(b).requires_grad_()
        dx = torch.from_numpy(x)
        tp = torch.from_numpy(p.copy()).requires_grad_()
        tp.grad = torch.from_numpy(g)
        opt = torch.optim.AdamW([tp], lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)

        def clear_grads():
            for leaf in (tx, tqkv, th, tl, tw, tb):
                leaf.grad = None

        return {
            "attention": attention,
            "layernorm": lambda: F.layer_norm(tx, (C,), tw, tb).backward(dx),
            "gelu": lambda: F.gelu(th, approximate="tanh").backward(torch.from_numpy(h4)),
            "cross_entropy": lambda: F.cross_entropy(tl.view(-1, V), tt.view(-1)).backward(),
            "adamw": opt.step,
            "grad_norm": lambda: torch.linalg.vector_norm(tp.grad),  # (clip_grad_norm_'s, in float32)
        }, clear_grads

    return cases, torch_cases


def bench_cpu(repeats):
    from tinygpt.bench import blas_threads
    from tinygpt.kernels import get_ops

    torch = _torch()
    # the machine's threads on both sides: ours are BLAS's (attention's matmuls) beside serial kernels
    torch.set_num_threads(blas_threads())
    cases, torch_cases = cpu_op_cases()
    peer, clear_grads = torch_cases()
    numpy_ops, numba_ops = get_ops("numpy"), get_ops("numba")
    rows = []
    for name, make in cases.items():
        # torch's OpenMP threads spin for a while after each op (KMP_BLOCKTIME): interleaved with ours
        # they would steal a core from the next BLAS call, so the torch side is timed in its own loop
        t = _medians({"numba": make(numba_ops), "numpy": make(numpy_ops)}, repeats)
        t.update(_medians({"torch": peer[name]}, repeats, before=clear_grads))
        rows.append((name, f"{t['numba'] * 1e3:.2f}", f"{t['numpy'] * 1e3:.2f}", f"{t['torch'] * 1e3:.2f}",
                     f"{t['numpy'] / t['numba']:.2f}", f"{t['torch'] / t['numba']:.2f}"))
    _table("CPU ops, forward+backward ms (float32, B 8, T 256, C 384, H 6, V 65; AdamW, grad norm: 10.7M "
           "params)",
           ("op", "numba", "numpy", "torch", "numpy/numba", "torch/numba"), rows)


_COMPILE_PROBE = """
import time, numpy as np
t0 = time.perf_counter()
from tinygpt.kernels import cpu
from tinygpt.bench.kernels import cpu_op_cases
from tinygpt.kernels import get_ops
cases, _ = cpu_op_cases(B=1, T=4, C=12, H=2, V=5)
ops = get_ops("numba")
for name, make in cases.items():
    start = time.perf_counter()
    make(ops)()
    print(name, time.perf_counter() - start)
print("total", time.perf_counter() - t0)
"""


def bench_compile_times():
    with tempfile.TemporaryDirectory() as cache_dir:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
        results = []
        for _ in ("cold", "cached"):
            proc = subprocess.run([sys.executable, "-c", _COMPILE_PROBE], env=env, capture_output=True,
                                  text=True)
            if proc.returncode:
                raise TinyGPTError(f"compile-time probe failed: {proc.stderr.strip().splitlines()[-1:]}")
            results.append(dict(line.split() for line in proc.stdout.strip().splitlines()))
    rows = [(name, f"{float(results[0][name]):.2f}", f"{float(results[1][name]):.3f}") for name in results[0]]
    _table("Numba JIT, seconds to first result (float32; fwd+bwd kernels), fresh processes",
           ("op", "cold (compile)", "cached"), rows)


def run(args):
    if args.repeats < 1:
        raise TinyGPTError("--repeats must be at least 1")
    text = _DEFAULT_SIZES if args.sizes is None else args.sizes
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise TinyGPTError(f"--sizes must be comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:  # (checked with either device: a bad value is refused, not ignored)
        raise TinyGPTError(f"--sizes must be positive integers, got {text!r}")
    train_batch = _DEFAULT_TRAIN_BATCH if args.train_batch is None else args.train_batch
    if train_batch < 1:
        raise TinyGPTError(f"--train-batch must be at least 1, got {train_batch}")
    # a good value for the other device's sections: refused too, where it was ignored without a word
    # (--device cpu --sizes 512 printed the CPU ops' figures, no SGEMM at 512)
    given = [flag for flag, value in (("--sizes", args.sizes), ("--train-batch", args.train_batch))
             if value is not None]
    if args.device == "cpu" and given:
        raise TinyGPTError(f"{given[0]} is for --device cuda (its SGEMM and training sections); --device cpu "
                           "times the ops at one fixed shape")
    if args.device == "cuda" and args.compile_times:
        raise TinyGPTError("--compile-times is for --device cpu (the Numba kernels' JIT compile)")
    if args.device == "cpu":
        bench_cpu(args.repeats)
        if args.compile_times:
            bench_compile_times()
        return 0
    torch, cuda, K = _gpu_sides()
    print(f"device: {torch.cuda.get_device_name()}")
    run_sections({
        "SGEMM": lambda: bench_gemm(torch, cuda, K, sizes, args.repeats),
        "attention": lambda: bench_attention(torch, cuda, K, args.repeats),
        "training": lambda: bench_train_gpu(torch, cuda, K, args.repeats, train_batch),
    })
    return 0


def run_sections(sections: dict) -> None:
    """Run each section even if one before it failed: a GPU is lent for minutes at a time, and one
    section's crash must not cost the others' figures. A failure prints its traceback to stderr; at the end
    a TinyGPTError names the sections that failed (exit status 2)."""
    import traceback

    failed = []
    for name, section in sections.items():
        try:
            section()
        except Exception:  # (KeyboardInterrupt still stops the run)
            # on stderr, dropped when it is closed (`2>&-`), where print_exc and print(file=None) wrote both
            # to stdout, among the other sections' tables
            say_on_stderr(traceback.format_exc().rstrip("\n"))
            say_on_stderr(f"bench kernels: the {name} section failed (traceback above); going on")
            failed.append(name)
    if failed:
        raise TinyGPTError(f"bench kernels: {', '.join(failed)} failed; the other sections' figures are "
                           "above")
