"""The backend seam: one function, ``get_ops(backend)``, returning the layer functions a model computes with.

A backend is a namespace of plain functions with the signatures of ``tinygpt.layers`` (every
``*_forward`` / ``*_backward`` pair, see its ``__all__``) plus ``adamw_update``. The model calls layers only
through ``self.ops = get_ops(backend)``, so swapping the backend never touches the model code::

    ops = get_ops("numba")
    out, cache = ops.layernorm_forward(x, w, b)      # (B, T, C) -> (B, T, C)
    dx, dw, db = ops.layernorm_backward(dout, cache)

Backends:

``"numpy"``  the readable reference, ``tinygpt.layers``; AdamW is ``adamw_update`` below.
``"numba"``  ``tinygpt.layers`` with the fused CPU kernels of ``tinygpt.kernels.cpu`` swapped in where
             they beat NumPy (attention's softmax, LayerNorm, both GELUs, cross-entropy, embedding, dropout,
             AdamW: ``NUMBA_OVERRIDES``; and ``sum_squares``, the gradient norm's, which train and
             finetune hand ``optim.clip_grad_norm`` through ``host_sum_squares``); matmuls stay on BLAS.
             Serial builds unless NUMBA_NUM_THREADS says otherwise (``cpu.share_cores_with_blas``). Each
             forward/backward pair comes from the same module, so caches always match their backward.
``"cuda"``   ``tinygpt.kernels.cuda``: numba ``cuda.jit`` kernels (tiled SGEMM, flash-style attention,
             element-wise ops). Needs an NVIDIA GPU, or ``NUMBA_ENABLE_CUDASIM=1`` (the slow simulator).
``"auto"``   ``"cuda"`` when a real GPU is present, else ``"numba"``. Numba is a hard dependency, and the
             numba backend only differs from NumPy where its kernels measured faster, so ``"numpy"`` is
             for reading and checking the reference.

Only one thing crosses this seam: the functions. The namespace also carries ``name`` (the resolved backend,
so ``get_ops("auto").name`` says what was picked).

Device-resident training. Given host arrays, the "cuda" ops copy their inputs in and outputs out (correct,
used by the kernel tests); ``GPT(backend="cuda")`` instead keeps its parameters as device arrays
(``ops.to_device``), so a whole step stays on the GPU, and avoids the few NumPy idioms a device array
lacks through the helpers of ``HELPER_NAMES``, which every backend has: ``ops.add`` / ``ops.add_inplace``
for residuals and gradient sums, ``ops.lm_head_forward`` / ``ops.lm_head_backward`` for the tied output
layer (instead of ``wte.T``), ``ops.zeros_like`` and ``ops.sum_squares``. AdamW's state and the gradient
norm for clipping do not go through ``ops``: ``tinygpt.optim`` takes the cuda module's ``zeros_like`` and
``sum_squares_total`` (all of a step's gradients in one copy back, not one copy each) for device arrays,
and sums host arrays on the host (``host_sum_squares``: a fine-tuning head's gradients stay there).
"""

from __future__ import annotations

import os
import types

import numpy as np

from tinygpt import layers
from tinygpt.errors import TinyGPTError

BACKENDS = ("numpy", "numba", "cuda", "auto")


def check_shape(name: str, what: str, array, expected: tuple) -> None:
    """TinyGPTError unless ``array.shape == expected``. Compiled kernels index by the shapes they are told,
    without bounds checks: an array of another shape would be read or written outside its memory."""
    if tuple(array.shape) != tuple(expected):
        raise TinyGPTError(f"{name}: {what} has shape {tuple(array.shape)}, expected {tuple(expected)}")


def checked_token_ids(idx, vocab_size: int, block_size: int) -> np.ndarray:
    """idx as a contiguous (B, T) int64 array, after the checks a compiled kernel cannot make for itself.

    A Numba or CUDA kernel indexing wte with an id outside [0, V) reads or writes outside the array
    (no bounds checks there), so every backend's embedding validates its ids first.
    """
    idx = np.asarray(idx)
    if idx.ndim != 2 or idx.dtype.kind not in "iu":
        raise TinyGPTError(f"embedding_forward: idx must be a (B, T) integer array, got {idx.dtype} "
                           f"{idx.shape}")
    T = idx.shape[1]
    if T > block_size:
        raise TinyGPTError(f"embedding_forward: sequence length {T} exceeds block_size {block_size}")
    if idx.size and (idx.min() < 0 or idx.max() >= vocab_size):
        raise TinyGPTError(f"embedding_forward: token ids must be in [0, {vocab_size}), "
                           f"got [{idx.min()}, {idx.max()}]")
    return np.ascontiguousarray(idx, dtype=np.int64)


def check_dropout(dropout, rng) -> None:
    """TinyGPTError unless ``dropout`` is in [0, 1) and, when > 0, there is an rng to draw the key from."""
    if not 0.0 <= dropout < 1.0:
        raise TinyGPTError(f"dropout must be in [0, 1), got {dropout}")
    if dropout and rng is None:
        raise TinyGPTError("attention dropout > 0 needs an rng (np.random.Generator)")


def dropout_kernel_args(dtype, p, rng) -> tuple:
    """(key, threshold, scale) as compiled dropout kernels take them: the per-call key drawn from ``rng``
    as ``tinygpt.layers`` draws it (none drawn when p is 0: key 0, never read) and the threshold, both
    uint64, and 1 / (1 - p) in ``dtype``. A ``p`` of any real number type is taken as a float (a
    np.float16 p overflowed p * 2^32 and rounded the scale to 3 digits)."""
    p = float(p)
    key = layers.draw_dropout_key(rng) if p else 0
    return np.uint64(key), np.uint64(layers.dropout_threshold(p)), np.dtype(dtype).type(1.0 / (1.0 - p))


def make_dropout_bits(jit):
    """``dropout_bits(key, index)`` on scalars for compiled kernels: ``jit`` is ``numba.njit`` or
    ``cuda.jit(device=True)``. The same bits as ``tinygpt.layers.dropout_bits`` (which works on uint32
    arrays): here every value is a uint64 holding 32 bits, masked after each product (< 2^64, so nothing
    overflows, in a kernel or in the CUDA simulator's NumPy scalars). ``key`` and ``index`` are uint64."""
    M32 = np.uint64(0xFFFFFFFF)
    S15, S16, S32 = np.uint64(15), np.uint64(16), np.uint64(32)
    MUL1, MUL2 = np.uint64(0x7FEB352D), np.uint64(0x846CA68B)

    @jit
    def hash32(x):
        x = x ^ (x >> S16)
        x = (x * MUL1) & M32
        x = x ^ (x >> S15)
        x = (x * MUL2) & M32
        return x ^ (x >> S16)

    @jit
    def dropout_bits(key, index):
        hi = hash32((index >> S32) ^ key)
        return hash32(hash32((index & M32) ^ hi) ^ key)

    return dropout_bits


# The layer functions every backend provides (tinygpt.layers.__all__), plus the optimizer kernel.
OP_NAMES = (*layers.__all__, "adamw_update")

# The functions tinygpt.kernels.cpu replaces; the rest of the "numba" backend is tinygpt.layers (the
# matmuls of linear_*, which are one BLAS call each).
NUMBA_OVERRIDES = (
    "embedding_forward",
    "embedding_backward",
    "layernorm_forward",
    "layernorm_backward",
    "gelu_forward",
    "gelu_backward",
    "gelu_erf_forward",
    "gelu_erf_backward",
    "attention_forward",
    "attention_backward",
    "dropout_forward",
    "dropout_backward",
    "cross_entropy_forward",
    "cross_entropy_backward",
    "adamw_update",
)


def adamw_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, bias_corr1, bias_corr2):
    """One AdamW step in NumPy, IN PLACE on ``param``, ``m`` and ``v`` (the reference; returns None).

    Decoupled weight decay, in PyTorch's order, with ``bias_corr_i = 1 - beta_i**step``::

        param *= 1 - lr * weight_decay
        m = beta1 m + (1 - beta1) grad             v = beta2 v + (1 - beta2) grad^2
        param -= lr / bias_corr1 * m / (sqrt(v) / sqrt(bias_corr2) + eps)

    Example: the first step (m = v = 0, step 1) moves every weight by about ``-lr * sign(grad)``.
    """
    param *= 1.0 - lr * weight_decay
    m *= beta1
    m += (1.0 - beta1) * grad
    v *= beta2
    v += (1.0 - beta2) * grad * grad
    denom = np.sqrt(v)
    denom /= np.sqrt(bias_corr2)
    denom += eps
    param -= (lr / bias_corr1) * m / denom


def fused_adamw(ops):
    """The update ``optim.AdamW(kernel=...)`` should run for a backend's model: numba's fused one-pass kernel,
    else None (AdamW's own in-place NumPy step, faster than the reference above, which allocates)."""
    return ops.adamw_update if getattr(ops, "name", "numpy") == "numba" else None


def host_sum_squares(ops):
    """The sum of squares ``optim.grad_norm`` should run on a backend's host arrays: numba's compiled pass,
    else the NumPy reference below. Not the cuda backend's ``ops.sum_squares``: given a host array (a
    fine-tuning head's gradient) it copies it to the GPU and the sum back, two waits for a few numbers."""
    return ops.sum_squares if getattr(ops, "name", "numpy") == "numba" else sum_squares


# Helpers a model needs to keep a training step on one device (see "Device-resident training" below).
# For the NumPy and Numba backends they are the obvious NumPy one-liners; tinygpt.kernels.cuda has its own.
HELPER_NAMES = ("to_device", "to_host", "add", "add_inplace", "zeros_like", "sum_squares",
                "lm_head_forward", "lm_head_backward")


def to_device(a):
    """CPU backends: arrays already live where the compute is."""
    return a


def to_host(a):
    return a


def add(a, b):
    """a + b, a new array (a residual connection)."""
    return a + b


def add_inplace(a, b):
    """a += b, returning a (accumulating a gradient)."""
    a += b
    return a


def zeros_like(a):
    return np.zeros_like(a)


# Squares are summed in float64, a block at a time. float32's np.dot (BLAS sdot) adds them up in float32,
# and its error grows with the count: a GPT-2 small gradient's global norm (124M entries) came out 1.1e-4
# off, the 38.6M of wte's alone 6.9e-4 in the sum of squares, where the cuda backend's (float64) agrees to
# 1e-13. A block of 2**16 is 512 KiB as float64: it stays in cache, and its cast is the only copy made.
SUM_SQUARES_BLOCK = 2**16


def sum_squares(a) -> float:
    """sum(a**2) as a Python float (for the global gradient norm), summed in float64 whatever a's dtype."""
    flat = a.reshape(-1)
    if flat.dtype == np.float64:
        return float(np.dot(flat, flat))
    total = 0.0
    for start in range(0, flat.size, SUM_SQUARES_BLOCK):
        block = flat[start:start + SUM_SQUARES_BLOCK].astype(np.float64)
        total += float(np.dot(block, block))
    return total


def lm_head_forward(x, wte):
    """Tied output layer: x (..., C) @ wte.T -> logits (..., V), without materialising wte.T."""
    V, C = wte.shape
    logits = x.reshape(-1, C) @ wte.T  # one 2-D BLAS call: (N, C) @ (C, V), not a loop over the batch
    return logits.reshape(*x.shape[:-1], V), (x, wte)


def lm_head_backward(dlogits, cache):
    """dlogits (..., V) -> dx (..., C) = dlogits @ wte, dwte (V, C) = dlogits^T x (summed over rows)."""
    x, wte = cache
    V, C = wte.shape
    dlogits2d = dlogits.reshape(-1, V)
    dx = (dlogits2d @ wte).reshape(x.shape)  # (N, V) @ (V, C)
    dwte = dlogits2d.T @ x.reshape(-1, C)  # (V, N) @ (N, C)
    return dx, dwte


def cuda_unavailable_reason() -> str | None:
    """Why the "cuda" backend cannot run here (one line), or None when it can (real GPU or simulator)."""
    try:
        from numba import cuda
    except ImportError as exc:  # numba built without its CUDA target and no numba-cuda installed
        return f"numba's CUDA target cannot be imported ({exc})"
    if cuda.is_available():  # a real GPU, or numba.cuda is the simulator (always "available")
        return None
    try:
        cuda.current_context()  # raises with the driver's own message
    except Exception as exc:  # CudaSupportError and friends; their text is what the user needs to see
        message = " ".join(str(exc).split())
    else:  # pragma: no cover - is_available() said no, yet a context came up
        message = "numba.cuda.is_available() is False"
    reason = f"no usable NVIDIA GPU: numba.cuda.is_available() is False ({message})"
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":  # asked for, but too late to take effect
        reason += ("; NUMBA_ENABLE_CUDASIM=1 was set too late: numba had read its environment on import and "
                   "loaded the real CUDA target; set it before numba is first imported")
    return reason


def _simulator_enabled() -> bool:
    """True when ``numba.cuda`` IS the simulator. numba chooses once, when numba.cuda is first imported, from
    NUMBA_ENABLE_CUDASIM as numba.config read it; the variable set later (which numba.config picks up when its
    compiler reloads it) switches nothing, so neither is asked: numba.cuda's ``__init__`` star-imports
    ``simulator_init`` or ``device_init``, and its ``is_available`` says which."""
    from numba import cuda

    return cuda.is_available.__module__ == f"{cuda.__name__}.simulator_init"


def has_real_gpu() -> bool:
    """True when numba sees a real CUDA device (the simulator does not count)."""
    return not _simulator_enabled() and cuda_unavailable_reason() is None


def available_backends() -> list[str]:
    """The backends ``get_ops`` can build on this machine, e.g. ``["numpy", "numba"]``."""
    names = ["numpy", "numba"]
    if cuda_unavailable_reason() is None:
        names.append("cuda")
    return names


def resolve_backend(backend: str) -> str:
    """The concrete backend a name stands for: "auto" -> "cuda" on a real GPU, else "numba"."""
    if backend not in BACKENDS:
        raise TinyGPTError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "cuda" if has_real_gpu() else "numba"
    return backend


def get_ops(backend: str = "numpy") -> types.SimpleNamespace:
    """The namespace of layer functions (and ``adamw_update``) for ``backend``; see the module docstring."""
    name = resolve_backend(backend)
    if name == "cuda":
        reason = cuda_unavailable_reason()
        if reason is not None:
            raise TinyGPTError(f"backend 'cuda' is unavailable: {reason}")
        from tinygpt.kernels import cuda as module

        functions = {op: getattr(module, op) for op in OP_NAMES + HELPER_NAMES}
    else:
        functions = {op: getattr(layers, op) for op in OP_NAMES if op != "adamw_update"}
        functions["adamw_update"] = adamw_update
        functions.update({name: globals()[name] for name in HELPER_NAMES})
        if name == "numba":
            from tinygpt.kernels import cpu

            cpu.share_cores_with_blas()
            functions.update({op: getattr(cpu, op) for op in NUMBA_OVERRIDES})
            functions["sum_squares"] = cpu.sum_squares  # (a helper: the gradient norm's, one pass)
    return types.SimpleNamespace(name=name, **functions)
