"""Numba CPU kernels: the same functions as ``tinygpt.layers``, fused where NumPy wastes passes.

Every public function here has EXACTLY the signature of its ``tinygpt.layers`` namesake, and each
forward/backward pair shares its own cache format (so a forward from here must be paired with the backward
from here, which ``tinygpt.kernels.get_ops("numba")`` guarantees). Matmuls stay on BLAS, attention's
included: no hand loop beats OpenBLAS there.

Where the wins come from (measure them with ``tinygpt bench kernels --device cpu``):

- **exp in SIMD** (``_exp``): Numba (without Intel's SVML library) turns ``math.exp`` into one scalar libm
  call per element. For float32 we evaluate exp ourselves in plain arithmetic (range reduction, a
  polynomial, the power of two written into the float's exponent bits), which LLVM vectorises: about 10x
  NumPy's own ``np.exp`` here, within 1 ulp. Softmax, GELU and cross-entropy are all exp-bound.
- **Causal attention**: the softmax and its backward are one fused pass each over the lower triangle, in
  place, with the SIMD exp and the 1 / sqrt(hs) folded in (NumPy's reference makes ~6 passes and scales a
  copy of k). The matmuls are the reference's, on the same strided views of qkv: BLAS reads them at full
  speed, and copying q, k, v into contiguous arrays cost more than it saved.
- **GELU**: one pass forward, one backward, in the sigmoid form ``x * sigmoid(2u)`` (one exp, no tanh);
  NumPy needs ~10 passes over the (B, T, 4C) array.
- **LayerNorm**: three passes over each row (mean, variance, output), while it is in cache, instead of
  NumPy's chain of temporaries.
- **Embedding backward**: a column-split scatter-add instead of ``np.add.at`` (about 6x).
- **AdamW**: one pass over each parameter instead of several NumPy passes (2.6x the in-place NumPy step at
  10.7M parameters, ``tinygpt bench kernels --device cpu``).
- **Cross-entropy**: per row a pass for its max and one for its sum of exps (both kept for the backward),
  one for the gradient, with the SIMD exp.
- **Dropout**: the reference's hashed mask computed in the kernel that applies it, one pass, no mask
  stored (the backward recomputes it from the key); attention's masks likewise, a block at a time.
- **Sum of squares** (the global gradient norm): float32 squared and summed in float64 in one pass, where
  the NumPy reference casts each block to a float64 copy before its dot.

Threads. By default the kernels run SERIAL (one thread; ``share_cores_with_blas`` explains why BLAS should
keep the cores), compiled with ``cache=True`` so only the first run pays the JIT. A ``parallel=True`` launch
costs ~40 microseconds even on one thread, and a step launches ~100 kernels, so the serial build is a
separate compilation, not a one-thread parallel one. With NUMBA_NUM_THREADS > 1 the same source is
compiled with ``parallel=True`` (``prange`` splits the outer loop over threads), at first use.

Numerics. Kernels compute in the storage dtype (float32 for training, float64 for gradient checks: there
``_exp`` is ``math.exp``). Reductions that only sum (softmax and LayerNorm statistics, cross-entropy's
sum of exps) may re-associate (``fastmath={"reassoc", "contract"}``: no finite-math assumptions), which
lets LLVM vectorise them and changes results by summation order alone, as BLAS's do; LayerNorm and
cross-entropy accumulate in float64 even for float32 input. Everything matches the NumPy reference to
float32 rounding (tests: 1e-5).
"""

from __future__ import annotations

import math
import os

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from tinygpt import layers
from tinygpt.errors import TinyGPTError
from tinygpt.kernels import (
    SUM_SQUARES_BLOCK,
    check_dropout,
    check_shape,
    checked_token_ids,
    dropout_kernel_args,
    make_dropout_bits,
)
from tinygpt.kernels import sum_squares as _numpy_sum_squares


class _Kernel:
    """One kernel source, two builds: serial (default, cached on disk), parallel (NUMBA_NUM_THREADS > 1).

    ``kernel(*args)`` runs the build that matches Numba's thread count. Numba's on-disk cache does not key
    entries by the ``parallel`` flag, so only the serial build is cached (the parallel one compiles at its
    first call in a process).
    """

    def __init__(self, py_func, fastmath):
        # error_model="numpy": x / 0 gives inf or nan as in NumPy, instead of Python's ZeroDivisionError,
        # whose check on every division keeps LLVM from vectorising a loop that divides
        options = dict(fastmath=fastmath, error_model="numpy")
        self.serial = njit(cache=True, **options)(py_func)
        self.parallel = njit(parallel=True, cache=False, **options)(py_func)
        self.__doc__ = py_func.__doc__

    def __call__(self, *args):
        # numba.get_num_threads() costs ~15 us a call: asked only when the environment may have raised it
        if _THREADS_FROM_ENV and numba.get_num_threads() > 1:
            return self.parallel(*args)
        return self.serial(*args)


# share_cores_with_blas() leaves Numba at one thread unless one of these is set (it reads them alike)
_THREADS_FROM_ENV = "NUMBA_NUM_THREADS" in os.environ or "NUMBA_THREADING_LAYER" in os.environ


def _kernel(fastmath=False):
    """Decorator: a ``_Kernel`` with Numba's ``fastmath`` flags (False: strict IEEE; see below)."""
    return lambda py_func: _Kernel(py_func, fastmath)


# The fast-math flags kernels may use, nothing else (no finite-math or reciprocal assumptions):
_SUMS = {"reassoc"}  # sums may re-associate, so LLVM can vectorise them (summation order changes, as BLAS's)
_SUMS_FMA = {"reassoc", "contract"}  # ... and a * b + c may become one fused multiply-add. Not for
# LayerNorm's backward: g - mean(g) cancels exactly at C = 1 only if both sides round alike.
_FMA = {"contract"}  # fused multiply-add only (element-wise kernels: no sums to re-associate)


def _n_chunks(n_rows: int) -> int:
    """How many row chunks a reduction splits into: a few per thread, never more than rows."""
    return max(1, min(n_rows, 4 * numba.get_num_threads()))


def _check_float(name: str, *arrays: np.ndarray) -> np.dtype:
    dtype = arrays[0].dtype
    if dtype not in (np.float32, np.float64):
        raise TinyGPTError(f"{name}: numba kernels take float32 or float64 arrays, got {dtype}")
    for a in arrays[1:]:
        if a is not None and a.dtype != dtype:
            raise TinyGPTError(f"{name}: mixed dtypes {dtype} and {a.dtype}")
    return dtype


# --- exp ------------------------------------------------------------------------------------------

_F = np.float32
_LOG2E = 1.4426950408889634
_LN2_HI = 0.693359375  # ln 2 = _LN2_HI + _LN2_LO; _LN2_HI has only 9 significant bits, so n * _LN2_HI is
_LN2_LO = -2.12194440e-4  # exact for |n| < 2^15 and the reduction x - n ln 2 loses nothing (Cody & Waite)


def _exp(x):
    """e**x inside kernels: float32 -> ``_exp_float32`` (SIMD), float64 -> ``math.exp`` (see the overload)."""
    return math.exp(x)


@njit(inline="always")
def _exp_float32(x):
    """exp for float32 in plain arithmetic, so that loops calling it vectorise.

    Max error < 1 ulp (0.91 measured) where Horner's multiply-adds are fused, as the kernels' ``contract``
    flag lets LLVM do on a CPU with FMA; unfused, float32's roundings add up to 1.2 ulp.

    exp(x) = 2^n * exp(r) with n = round(x / ln 2) and r = x - n ln 2 in [-ln2/2, ln2/2]; exp(r) is its
    Taylor polynomial to degree 7 (the next term, r^8/8! < 3e-8, is below float32's 6e-8 half-ulp); 2^n
    is built by writing n + 127 into the exponent bits of a float32, so the arithmetic runs on x clamped
    to [-87.34, 88.72], where 2^n is a normal float. Outside: exp(x) = 0 below -87.33 (exp would be subnormal
    there: we flush it to zero, an absolute error < 1.2e-38, because subnormal operands make every later
    multiply, BLAS's included, many times slower) and +inf above 88.72 (float32 overflow, as np.exp).
    NaN passes through the clamps and the arithmetic.
    """
    xc = min(max(x, _F(-87.33654)), _F(88.72284)) if x == x else x  # [ln(min normal), ln(max float32)]
    n = np.rint(xc * _F(_LOG2E))  # -126..128
    r = xc - n * _F(_LN2_HI)
    r = r - n * _F(_LN2_LO)
    p = _F(1.0 / 5040.0)  # Horner's rule: 1 + r (1 + r (1/2 + r (1/6 + ... r / 7!)))
    p = _F(1.0 / 720.0) + r * p
    p = _F(1.0 / 120.0) + r * p
    p = _F(1.0 / 24.0) + r * p
    p = _F(1.0 / 6.0) + r * p
    p = _F(0.5) + r * p
    p = _F(1.0) + r * p
    p = _F(1.0) + r * p
    if n > _F(127.0):  # 2^128 has no float32; 2^127 * 2 keeps exp(88.72) = 3.4e38 finite
        n = _F(127.0)
        p = p * _F(2.0)
    two_to_n = np.int32((np.int32(n) + np.int32(127)) << np.int32(23))  # IEEE-754 bits of 2.0**n
    e = p * two_to_n.view(np.float32)
    if x < _F(-87.33654):  # exp(x) is subnormal or 0
        e = _F(0.0)
    if x > _F(88.72284):  # float32 overflow
        e = _F(np.inf)
    return e


@overload(_exp, inline="always")
def _exp_overload(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return lambda x: _exp_float32(x)
    return lambda x: math.exp(x)


# --- embedding ------------------------------------------------------------------------------------


@_kernel()
def _embedding_forward_kernel(idx, wte, wpe, out):
    # out[b, t, :] = wte[idx[b, t], :] + wpe[t, :]   one pass, no (B, T, C) temporaries
    B, T = idx.shape
    for n in prange(B * T):
        b = n // T
        t = n % T
        tok = idx[b, t]
        for c in range(wte.shape[1]):
            out[b, t, c] = wte[tok, c] + wpe[t, c]


@_kernel()
def _embedding_backward_kernel(idx, dout, dwte, dwpe, n_chunks):
    # Scatter-add of rows. Tokens repeat, so two threads must never add into the same dwte row at once:
    # we split the work over COLUMN ranges instead of tokens, so each thread owns its columns outright.
    B, T = idx.shape
    C = dout.shape[2]
    for ch in prange(n_chunks):
        c0 = ch * C // n_chunks
        c1 = (ch + 1) * C // n_chunks
        for b in range(B):
            for t in range(T):
                tok = idx[b, t]
                for c in range(c0, c1):
                    dwte[tok, c] += dout[b, t, c]
                    dwpe[t, c] += dout[b, t, c]


def embedding_forward(idx, wte, wpe):
    """Token plus position embedding. (B, T) int -> (B, T, C) = wte[idx] + wpe[:T]."""
    _check_float("embedding_forward", wte, wpe)
    if wte.ndim != 2:
        raise TinyGPTError(f"embedding_forward: wte must be (V, C), got shape {wte.shape}")
    check_shape("embedding_forward", "wpe", wpe, (wpe.shape[0], wte.shape[1]))
    idx = checked_token_ids(idx, wte.shape[0], wpe.shape[0])
    B, T = idx.shape
    V, C = wte.shape
    out = np.empty((B, T, C), dtype=wte.dtype)
    _embedding_forward_kernel(idx, np.ascontiguousarray(wte), np.ascontiguousarray(wpe), out)
    return out, (idx, wte.shape, wpe.shape)


def embedding_backward(dout, cache):
    """(B, T, C) -> dwte (V, C), dwpe (block_size, C); a token seen k times gets k rows added."""
    idx, wte_shape, wpe_shape = cache
    check_shape("embedding_backward", "dout", dout, (*idx.shape, wte_shape[1]))
    dout = np.ascontiguousarray(dout)
    dwte = np.zeros(wte_shape, dtype=dout.dtype)
    dwpe = np.zeros(wpe_shape, dtype=dout.dtype)
    _embedding_backward_kernel(idx, dout, dwte, dwpe, _n_chunks(wte_shape[1]))
    return dwte, dwpe


# --- layernorm ------------------------------------------------------------------------------------


@_kernel(_SUMS)
def _layernorm_forward_kernel(x, weight, bias, eps, out, mean, rstd):
    # Per row: mean = sum(x)/C, var = sum((x-mean)^2)/C (two passes: no cancellation), y = (x-mean)*rstd*w + b
    N, C = x.shape
    for n in prange(N):
        s = 0.0
        for c in range(C):
            s += x[n, c]
        m = s / C
        ss = 0.0
        for c in range(C):
            d = x[n, c] - m
            ss += d * d
        r = 1.0 / math.sqrt(ss / C + eps)
        mean[n] = m
        rstd[n] = r
        for c in range(C):
            out[n, c] = (x[n, c] - m) * r * weight[c] + bias[c]


@_kernel(_SUMS)
def _layernorm_backward_kernel(dout, x, weight, mean, rstd, dx, dw_part, db_part):
    # With xhat = (x - mean) * rstd and g = dout * w (the gradient w.r.t. xhat):
    #   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
    #   dw = sum_rows dout * xhat,  db = sum_rows dout
    # dw/db are summed per row chunk (float64) and the chunks added afterwards: no two threads share a sum.
    N, C = x.shape
    n_chunks = dw_part.shape[0]
    for ch in prange(n_chunks):
        for n in range(ch * N // n_chunks, (ch + 1) * N // n_chunks):
            m = mean[n]
            r = rstd[n]
            g_sum = 0.0
            gx_sum = 0.0
            for c in range(C):
                xhat = (x[n, c] - m) * r
                g = dout[n, c] * weight[c]
                g_sum += g
                gx_sum += g * xhat
                dw_part[ch, c] += dout[n, c] * xhat
                db_part[ch, c] += dout[n, c]
            g_mean = g_sum / C
            gx_mean = gx_sum / C
            for c in range(C):
                xhat = (x[n, c] - m) * r
                dx[n, c] = r * (dout[n, c] * weight[c] - g_mean - xhat * gx_mean)


def layernorm_forward(x, weight, bias, eps=1e-5):
    """(..., C) -> (..., C): (x - mean) / sqrt(var + eps) * weight + bias over the last axis."""
    _check_float("layernorm_forward", x, weight, bias)
    C = x.shape[-1]
    check_shape("layernorm_forward", "weight", weight, (C,))
    if bias is not None:
        check_shape("layernorm_forward", "bias", bias, (C,))
    x2 = np.ascontiguousarray(x).reshape(-1, C)
    N = x2.shape[0]
    out = np.empty_like(x2)
    mean = np.empty(N, dtype=np.float64)
    rstd = np.empty(N, dtype=np.float64)
    bias_arr = np.zeros(C, dtype=x.dtype) if bias is None else np.ascontiguousarray(bias)
    _layernorm_forward_kernel(x2, np.ascontiguousarray(weight), bias_arr, float(eps), out, mean, rstd)
    return out.reshape(x.shape), (x2, weight, bias is not None, mean, rstd, x.shape)


def layernorm_backward(dout, cache):
    """(..., C) -> dx (..., C), dweight (C,), dbias (C,) or None when the forward had no bias."""
    x2, weight, has_bias, mean, rstd, shape = cache
    N, C = x2.shape
    check_shape("layernorm_backward", "dout", dout, shape)
    dout2 = np.ascontiguousarray(dout).reshape(N, C)
    dx = np.empty_like(x2)
    n_chunks = _n_chunks(N)
    dw_part = np.zeros((n_chunks, C), dtype=np.float64)
    db_part = np.zeros((n_chunks, C), dtype=np.float64)
    _layernorm_backward_kernel(dout2, x2, np.ascontiguousarray(weight), mean, rstd, dx, dw_part, db_part)
    dweight = dw_part.sum(axis=0).astype(x2.dtype)
    dbias = db_part.sum(axis=0).astype(x2.dtype) if has_bias else None
    return dx.reshape(shape), dweight, dbias


# --- GELU -----------------------------------------------------------------------------------------

_GELU_K = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


@_kernel(_FMA)
def _gelu_forward_kernel(x, out):
    # gelu(x) = 0.5 x (1 + tanh(u)), u = k (x + a x^3), k = sqrt(2/pi), a = 0.044715 (GPT-2's approximation)
    # and 0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u)) = sigmoid(2u), so gelu(x) = x / (1 + exp(-2u)):
    # one exp, no tanh, and no cancellation in 1 + tanh(u) for negative x. Constants typed as x's dtype,
    # so float32 stays float32 (a Python float would promote every operation to float64).
    one = x.dtype.type(1.0)
    c1 = x.dtype.type(-2.0 * _GELU_K)
    c3 = x.dtype.type(-2.0 * _GELU_K * _GELU_A)
    for i in prange(x.size):
        xi = x[i]
        out[i] = xi / (one + _exp(xi * (c1 + c3 * xi * xi)))


@_kernel(_FMA)
def _gelu_backward_kernel(dout, x, dx):
    # With s = sigmoid(2u): d gelu / dx = s + x * 2 s (1 - s) * du/dx = s (1 + 2 x (1 - s) k (1 + 3 a x^2))
    # s is recomputed from x rather than cached: cheaper than storing and re-reading a (B, T, 4C) array.
    # The polynomial takes x clipped to +-GELU_GRAD_CLIP, where s (1 - s) is already exactly 0: unclipped
    # it overflowed past |x| ~ 1.2e13 (float32), and 0 * inf made the gradient NaN (layers.GELU_GRAD_CLIP).
    one = x.dtype.type(1.0)
    c1 = x.dtype.type(-2.0 * _GELU_K)
    c3 = x.dtype.type(-2.0 * _GELU_K * _GELU_A)
    k2 = x.dtype.type(2.0 * _GELU_K)
    a3 = x.dtype.type(3.0 * _GELU_A)
    clip = x.dtype.type(layers.GELU_GRAD_CLIP)
    for i in prange(x.size):
        xi = x[i]
        s = one / (one + _exp(xi * (c1 + c3 * xi * xi)))  # from x itself: NaN stays NaN
        xc = min(max(xi, -clip), clip)
        dx[i] = dout[i] * s * (one + k2 * xc * (one - s) * (one + a3 * xc * xc))


def _elementwise_forward(name, kernel, x):
    """``kernel(x, out)`` over the flattened input: (out, cache), the cache being the input itself."""
    _check_float(name, x)
    xc = np.ascontiguousarray(x)
    out = np.empty_like(xc)
    kernel(xc.reshape(-1), out.reshape(-1))
    return out, xc


def _elementwise_backward(name, kernel, dout, x):
    """``kernel(dout, x, dx)`` over the flattened arrays: dx of x's shape."""
    check_shape(name, "dout", dout, x.shape)
    dout = np.ascontiguousarray(dout, dtype=x.dtype)
    dx = np.empty_like(x)
    kernel(dout.reshape(-1), x.reshape(-1), dx.reshape(-1))
    return dx


def gelu_forward(x):
    """Element-wise GELU, tanh approximation (as GPT-2). Any shape -> same shape."""
    return _elementwise_forward("gelu_forward", _gelu_forward_kernel, x)


def gelu_backward(dout, cache):
    """Any shape -> dx of the same shape."""
    return _elementwise_backward("gelu_backward", _gelu_backward_kernel, dout, cache)


# GELU without approximation, x Phi(x) (layers.gelu_erf_forward): Phi(x) = erfc(-x / sqrt 2) / 2, with no
# cancellation for negative x; math.erfc in float64 for both dtypes (Numba's float32 erfc is the float64
# one anyway), rounded once to x's dtype.
_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@_kernel(_FMA)
def _gelu_erf_forward_kernel(x, out):
    for i in prange(x.size):
        xi = np.float64(x[i])
        out[i] = xi * 0.5 * math.erfc(-_SQRT_HALF * xi)


@_kernel(_FMA)
def _gelu_erf_backward_kernel(dout, x, dx):
    # d (x Phi(x)) / dx = Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi), which underflows to 0
    # (nothing overflows) far out, where the derivative is exactly 1 or 0
    for i in prange(x.size):
        xi = np.float64(x[i])
        dx[i] = dout[i] * (0.5 * math.erfc(-_SQRT_HALF * xi) + xi * _INV_SQRT_2PI * math.exp(-0.5 * xi * xi))


def gelu_erf_forward(x):
    """Element-wise GELU without approximation, x Phi(x) (torch's nn.GELU()). Any shape -> same shape."""
    return _elementwise_forward("gelu_erf_forward", _gelu_erf_forward_kernel, x)


def gelu_erf_backward(dout, cache):
    """Any shape -> dx of the same shape."""
    return _elementwise_backward("gelu_erf_backward", _gelu_erf_backward_kernel, dout, cache)


# --- causal self-attention ------------------------------------------------------------------------


@_kernel(_SUMS_FMA)
def _causal_softmax_kernel(scores, t0, scale):
    # In place on a block of score rows q.k (unscaled), queries t0, t0+1, ... (row r is query i = t0 + r),
    # keys 0..t1-1:  p_j = exp(scale (s_j - max s)) / sum exp(...) over the keys j <= i,  p_j = 0 for j > i
    # (the causal mask: those scores are never read; the zeros make the following BLAS product with v
    # exact). The 1 / sqrt(hs) is applied here, in the same multiply, so no pass scales q, k or the scores;
    # scale > 0, so the max of the scaled scores is scale times the max.
    N, R, K = scores.shape
    zero = scores.dtype.type(0.0)
    one = scores.dtype.type(1.0)
    for n in prange(N):
        for r in range(R):
            n_keys = min(t0 + r + 1, K)
            row = scores[n, r]
            m = row[0]
            for j in range(1, n_keys):
                m = max(m, row[j])
            total = zero
            for j in range(n_keys):
                e = _exp((row[j] - m) * scale)
                row[j] = e
                total += e
            inv = one / total
            for j in range(n_keys):
                row[j] *= inv
            for j in range(n_keys, K):
                row[j] = zero


@_kernel(_SUMS_FMA)
def _causal_softmax_backward_kernel(probs, dprobs, keep, use_dropout, t0, scale):
    # In place on dprobs, the same block layout: with g = dP (times the dropout keep mask, which scaled P
    # in the forward),  dS_j = scale p_j (g_j - sum_k p_k g_k)  for j <= i,  0 above the diagonal. The
    # forward's 1 / sqrt(hs) is folded in here, so dq = dS k and dk = dS^T q are plain products.
    N, R, K = probs.shape
    zero = probs.dtype.type(0.0)
    for n in prange(N):
        for r in range(R):
            n_keys = min(t0 + r + 1, K)
            p = probs[n, r]
            g = dprobs[n, r]
            if use_dropout:
                mask = keep[n, r]
                for j in range(n_keys):
                    g[j] *= mask[j]
            row_dot = zero
            for j in range(n_keys):
                row_dot += p[j] * g[j]
            for j in range(n_keys):
                g[j] = scale * p[j] * (g[j] - row_dot)
            for j in range(n_keys, K):
                g[j] = zero


# --- dropout: masks from the counter-based hash of tinygpt.layers, computed in the kernel ------------

_dropout_bits = make_dropout_bits(njit(cache=True))  # the bits of layers.dropout_bits, on scalars


@_kernel()
def _dropout_kernel(x, out, key, threshold, scale):
    # out_i = x_i * keep_i, keep_i = 1 / (1 - p) where dropout_bits(key, i) >= threshold, else 0: the
    # reference's inverted dropout (a product even when dropped, so nan and inf stay nan as there), with
    # the mask recomputed from (key, i) instead of drawn, stored and read back
    for i in prange(x.size):
        keep = scale if _dropout_bits(key, np.uint64(i)) >= threshold else x.dtype.type(0.0)
        out[i] = x[i] * keep


def dropout_forward(x, p, rng):
    """``tinygpt.layers.dropout_forward``'s mask and result in one pass, keeping no mask: the cache is the
    key, from which the backward recomputes it (the reference caches a byte per entry)."""
    if not 0.0 <= p < 1.0:
        raise TinyGPTError(f"dropout probability must be in [0, 1), got {p}")
    if p == 0.0:
        return x, None
    _check_float("dropout_forward", x)
    key, threshold, scale = dropout_kernel_args(x.dtype, p, rng)
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    _dropout_kernel(x.reshape(-1), out.reshape(-1), key, threshold, scale)
    return out, (key, threshold, scale, x.shape)


def dropout_backward(dout, cache):
    """dout (...,) -> dx (...,): the forward's mask (recomputed from its key) and scale."""
    if cache is None:
        return dout
    key, threshold, scale, shape = cache
    check_shape("dropout_backward", "dout", dout, shape)
    _check_float("dropout_backward", dout)
    dout = np.ascontiguousarray(dout)
    dx = np.empty_like(dout)
    _dropout_kernel(dout.reshape(-1), dx.reshape(-1), key, threshold, dout.dtype.type(scale))
    return dx


@_kernel()
def _attention_keep_kernel(keep, key, threshold, scale, T, t0):
    # keep (B*H, bt, t1): weight (n = b H + h, query t0 + r, key j) is mask entry ((n T + t0 + r) T + j),
    # kept (1 / (1 - p)) or dropped (0) as layers.attention_forward decides for it
    N, R, K = keep.shape
    zero = keep.dtype.type(0.0)
    for n in prange(N):
        for r in range(R):
            row = (n * T + t0 + r) * T
            for j in range(K):
                keep[n, r, j] = scale if _dropout_bits(key, np.uint64(row + j)) >= threshold else zero


def _query_blocks(T: int, query_block: int):
    """(t0, t1) of each block of queries: queries t0..t1-1 see keys 0..t1-1 only."""
    return [(t0, min(t0 + query_block, T)) for t0 in range(0, T, query_block)]


def attention_forward(qkv, n_head, dropout=0.0, rng=None, query_block=layers.QUERY_BLOCK):
    """Causal multi-head self-attention. qkv (B, T, 3C) from the fused c_attn projection -> (B, T, C).

    ``softmax(q k^T / sqrt(hs) + mask) v`` per head, as ``tinygpt.layers.attention_forward`` computes it:
    query blocks of ``query_block`` rows, each against the keys it can see (the blocks right of the
    diagonal are never computed). ``dropout`` (probability of zeroing an attention weight, training only)
    needs ``rng``, a ``np.random.Generator``; one key is drawn from it and each block's mask computed
    from it (``_attention_keep_kernel``) exactly as the reference computes its own.

    What differs from the reference: the masked softmax is one fused pass (``_causal_softmax_kernel``) with
    the SIMD exp, which also applies the 1 / sqrt(hs) (the reference scales a copy of k). The matmuls read
    q, k, v as the same strided views of qkv: each head's rows are dense, one qkv row apart, which BLAS
    takes as its leading dimension at full speed. Copying them into contiguous arrays first (as this
    function did) cost more than it saved: at B 8, T 256, C 384, H 6 the three copies and the heads'
    merge took ~7 ms of a 24 ms forward, mostly faulting in 6 MB of fresh pages, and the products on
    the copies were no faster. The cache keeps qkv, the blocks' probabilities and, with dropout, only
    the key: backward recomputes each block's mask from it (one more pass of the hash, ~1.6 ms a layer at
    6L/384d, where caching the masks held as much memory as the probabilities, ~8 MB a layer).
    """
    _check_float("attention_forward", qkv)
    if qkv.ndim != 3 or qkv.shape[2] % 3 != 0:
        raise TinyGPTError(f"attention_forward: qkv must be (B, T, 3C), got shape {qkv.shape}")
    B, T, C3 = qkv.shape
    C = C3 // 3
    if n_head < 1 or C % n_head != 0:
        raise TinyGPTError(f"attention_forward: n_embd {C} is not divisible by n_head {n_head}")
    check_dropout(dropout, rng)
    hs = C // n_head
    scale = qkv.dtype.type(1.0 / math.sqrt(hs))  # the kernel's dtype: a Python float would make it float64
    q, k, v = qkv.reshape(B, T, 3, n_head, hs).transpose(2, 0, 3, 1, 4)  # (B, H, T, hs) views of qkv
    y = np.empty((B, T, n_head, hs), dtype=qkv.dtype)  # (B, T, H, hs): (B, T, C) with the heads side by side
    y_heads = y.transpose(0, 2, 1, 3)  # the (B, H, T, hs) view the blocks write into
    probs = []
    mask_key = dropout_kernel_args(qkv.dtype, dropout, rng) if dropout else None  # one key, whole mask
    for t0, t1 in _query_blocks(T, query_block):
        att = q[:, :, t0:t1] @ k[:, :, :t1].swapaxes(-1, -2)  # (B, H, bt, t1) scores, unscaled
        _causal_softmax_kernel(att.reshape(B * n_head, t1 - t0, t1), t0, scale)  # in place -> probabilities
        probs.append(att)
        keep = _attention_keep(mask_key, att.shape, T, t0)
        np.matmul(att if keep is None else att * keep, v[:, :, :t1], out=y_heads[:, :, t0:t1])
    return y.reshape(B, T, C), (qkv, n_head, query_block, probs, mask_key)


def _attention_keep(mask_key, shape, T, t0):
    """The keep mask / (1 - p) of the query block starting at t0, shape (B, H, bt, t1), from the key
    (None without dropout). Entries right of the diagonal are computed too, and never used."""
    if mask_key is None:
        return None
    key, threshold, keep_scale = mask_key
    B, H, bt, t1 = shape
    keep = np.empty(shape, dtype=type(keep_scale))
    _attention_keep_kernel(keep.reshape(B * H, bt, t1), key, threshold, keep_scale, T, t0)
    return keep


def attention_backward(dout, cache):
    """(B, T, C) -> dqkv (B, T, 3C).

    Per query block: dv += (P D)^T dy,  dP = dy v^T,  dS = softmax backward (fused kernel, times
    1 / sqrt(hs)),  dq = dS k,  dk += dS^T q, each written into its strided view of dqkv.
    """
    qkv, n_head, query_block, probs, mask_key = cache
    B, T, C3 = qkv.shape
    hs = C3 // 3 // n_head
    check_shape("attention_backward", "dout", dout, (B, T, C3 // 3))
    scale = qkv.dtype.type(1.0 / math.sqrt(hs))
    q, k, v = qkv.reshape(B, T, 3, n_head, hs).transpose(2, 0, 3, 1, 4)
    dy = dout.astype(qkv.dtype, copy=False).reshape(B, T, n_head, hs).transpose(0, 2, 1, 3)  # (B, H, T, hs)
    dqkv = np.zeros((B, T, 3, n_head, hs), dtype=qkv.dtype)  # zeros: dk and dv accumulate over the blocks
    dq, dk, dv = dqkv.transpose(2, 0, 3, 1, 4)
    # Scratch for every block's dP and for its dk, dv terms (each added into dqkv): allocated once, where
    # fresh temporaries per block came to 23 MB a call at B 8, T 256, C 384, H 6, each page of it faulted
    # in anew whenever the allocator had handed the last block's back to the system (forward + backward
    # 50 -> 32-36 ms there, timed alternately with the NumPy reference as the kernel bench does)
    bt = min(query_block, T)
    datt_scratch = np.empty(B * n_head * bt * T, dtype=qkv.dtype)
    term = np.empty((B, n_head, T, hs), dtype=qkv.dtype)
    for (t0, t1), att in zip(_query_blocks(T, query_block), probs):
        keep = _attention_keep(mask_key, att.shape, T, t0)  # the forward's mask, recomputed
        dy_block = dy[:, :, t0:t1]
        np.matmul((att if keep is None else att * keep).swapaxes(-1, -2), dy_block, out=term[:, :, :t1])
        dv[:, :, :t1] += term[:, :, :t1]
        datt = datt_scratch[:att.size].reshape(att.shape)
        np.matmul(dy_block, v[:, :, :t1].swapaxes(-1, -2), out=datt)  # (B, H, bt, t1) dP
        block = (B * n_head, t1 - t0, t1)
        mask = _NO_MASK[qkv.dtype.char] if keep is None else keep.reshape(block)
        _causal_softmax_backward_kernel(att.reshape(block), datt.reshape(block), mask, keep is not None, t0,
                                        scale)
        np.matmul(datt, k[:, :, :t1], out=dq[:, :, t0:t1])  # datt is dS / sqrt(hs) now
        np.matmul(datt.swapaxes(-1, -2), q[:, :, t0:t1], out=term[:, :, :t1])
        dk[:, :, :t1] += term[:, :, :t1]
    return dqkv.reshape(B, T, C3)


# A (1, 1, 1) stand-in for the keep mask when there is no dropout, so the kernel has one type signature.
_NO_MASK = {"f": np.ones((1, 1, 1), np.float32), "d": np.ones((1, 1, 1), np.float64)}


# --- cross-entropy --------------------------------------------------------------------------------


@_kernel(_SUMS_FMA)
def _cross_entropy_forward_kernel(logits, targets, row_max, row_sum, losses):
    # loss_n = logsumexp(logits_n) - logits_n[target_n] = log(s) - (logits_n[target_n] - m), m = max l,
    # s = sum exp(l - m). No probability array is built: the backward recomputes exp(l - m) / s from the
    # saved m and s, kept apart (m + log(s) in one number loses log(s) to the size of m, see layers).
    N, V = logits.shape
    for n in prange(N):
        t = targets[n]
        if t < 0:  # ignored position
            row_max[n] = 0.0
            row_sum[n] = 1.0
            losses[n] = 0.0
            continue
        row = logits[n]
        m = row[0]
        for j in range(1, V):
            m = max(m, row[j])
        total = 0.0  # float64 accumulator
        for j in range(V):
            total += _exp(row[j] - m)
        row_max[n] = m
        row_sum[n] = total
        losses[n] = math.log(total) - (np.float64(row[t]) - np.float64(m))


@_kernel(_FMA)
def _cross_entropy_backward_kernel(logits, targets, row_max, row_sum, scale, dlogits):
    # dloss/dlogits_n = (softmax(logits_n) - onehot(target_n)) * dloss / n_valid, softmax = exp(l - m) / s;
    # ignored rows get zeros.
    N, V = logits.shape
    for n in prange(N):
        t = targets[n]
        if t < 0:
            for j in range(V):
                dlogits[n, j] = 0.0
            continue
        m = logits.dtype.type(row_max[n])  # exact: m is one of the row's logits
        row_scale = logits.dtype.type(scale / row_sum[n])  # the softmax's 1 / s and dloss / n_valid at once
        for j in range(V):
            dlogits[n, j] = _exp(logits[n, j] - m) * row_scale
        dlogits[n, t] -= logits.dtype.type(scale)


def cross_entropy_forward(logits, targets):
    """Mean cross-entropy over positions whose target is not -1. (B, T, V), (B, T) -> loss (Python float).

    If every target is -1 the loss is 0 and so is its gradient (as in ``tinygpt.layers``).
    """
    _check_float("cross_entropy_forward", logits)
    V = logits.shape[-1]
    t = layers.checked_targets(targets, logits.shape)
    n_valid = int((t >= 0).sum())
    l2 = np.ascontiguousarray(logits).reshape(-1, V)
    row_max = np.empty(l2.shape[0], dtype=np.float64)
    row_sum = np.empty(l2.shape[0], dtype=np.float64)
    losses = np.empty(l2.shape[0], dtype=np.float64)
    _cross_entropy_forward_kernel(l2, t, row_max, row_sum, losses)
    loss = float(losses.sum()) / max(n_valid, 1)
    return loss, (l2, t, row_max, row_sum, n_valid, logits.shape)


def cross_entropy_backward(dloss, cache):
    """scalar dloss -> dlogits (B, T, V)."""
    l2, t, row_max, row_sum, n_valid, shape = cache
    dlogits = np.empty_like(l2)
    _cross_entropy_backward_kernel(l2, t, row_max, row_sum, float(dloss) / max(n_valid, 1), dlogits)
    return dlogits.reshape(shape)


# --- sum of squares -------------------------------------------------------------------------------


@_kernel(_SUMS)
def _sum_squares_kernel(x, chunk):
    # Fixed-size chunks, each summed into its own float64 partial (a thread's, in the parallel build), then
    # the partials in order: the chunks do not depend on the thread count, so neither does the sum. A
    # float32 square is exact in float64 (48 significant bits), so only the order of the adds rounds.
    n_chunks = (x.size + chunk - 1) // chunk
    partials = np.empty(n_chunks, dtype=np.float64)
    for c in prange(n_chunks):
        # (a slice counted from 0: the loop over range(c * chunk, min(...)) of x itself ran at half the speed)
        block = x[c * chunk : (c + 1) * chunk]
        acc = 0.0
        for i in range(block.size):
            xi = np.float64(block[i])
            acc += xi * xi
        partials[c] = acc
    total = 0.0
    for c in range(n_chunks):
        total += partials[c]
    return total


def sum_squares(a) -> float:
    """sum(a**2) as a Python float, summed in float64 whatever a's dtype (``tinygpt.kernels.sum_squares``,
    the global gradient norm's), in one pass without its float64 copy of each block. Arrays neither float32
    nor float64 take that NumPy reference."""
    flat = np.ascontiguousarray(a).reshape(-1)  # (a strided view copied: one kernel build per dtype)
    if flat.dtype not in (np.float32, np.float64):
        return _numpy_sum_squares(flat)
    return float(_sum_squares_kernel(flat, SUM_SQUARES_BLOCK))


# --- AdamW ----------------------------------------------------------------------------------------


@_kernel()
def _adamw_kernel(p, g, m, v, lr, beta1, beta2, eps, weight_decay, bias_corr1, bias_corr2):
    # Decoupled weight decay (Loshchilov & Hutter), in PyTorch's order:
    #   p *= 1 - lr*wd;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
    #   p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps),  bc_i = 1 - beta_i^step
    decay = 1.0 - lr * weight_decay
    step = lr / bias_corr1
    sqrt_bc2 = math.sqrt(bias_corr2)
    for i in prange(p.size):
        gi = g[i]
        mi = beta1 * m[i] + (1.0 - beta1) * gi
        vi = beta2 * v[i] + (1.0 - beta2) * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = p[i] * decay - step * mi / (math.sqrt(vi) / sqrt_bc2 + eps)


def adamw_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, bias_corr1, bias_corr2):
    """One AdamW step IN PLACE on ``param``, ``m`` (first moment) and ``v`` (second moment); returns None.

    ``bias_corr1 = 1 - beta1**step`` and ``bias_corr2 = 1 - beta2**step`` (step counts from 1). Pass
    ``weight_decay=0`` for parameters that should not decay (biases, LayerNorm gains).
    """
    _check_adamw_args(param, grad, m, v)
    _adamw_kernel(param.reshape(-1), grad.reshape(-1), m.reshape(-1), v.reshape(-1), float(lr), float(beta1),
                  float(beta2), float(eps), float(weight_decay), float(bias_corr1), float(bias_corr2))


def _check_adamw_args(param, grad, m, v):
    for name, a in (("grad", grad), ("m", m), ("v", v)):
        if a.shape != param.shape:
            raise TinyGPTError(f"adamw_update: {name} shape {a.shape} does not match param {param.shape}")
    for name, a in (("param", param), ("m", m), ("v", v)):
        if not a.flags.c_contiguous or not a.flags.writeable:
            raise TinyGPTError(f"adamw_update: {name} must be a writeable C-contiguous array "
                               "(it is updated in place)")
    _check_float("adamw_update", param, m, v)
    if grad.dtype != param.dtype or not grad.flags.c_contiguous:
        raise TinyGPTError("adamw_update: grad must be C-contiguous with the param's dtype")


def share_cores_with_blas() -> int:
    """Keep Numba's thread pool from fighting BLAS's for the cores; returns the kernel thread count.

    A training step alternates BLAS matmuls with these kernels. After each call OpenBLAS's workers keep
    spinning for a while, and Numba's default OpenMP pool spins too, so the two pools fight for the same
    cores: on 2 cores a 4L/128d step took 299 ms with Numba's default pool against 75 ms with one kernel
    thread on the non-spinning "workqueue" layer (numpy backend: 83 ms; ``tinygpt bench train --configs
    small``), and two workqueue threads measured no faster than one (50 vs 44 ms a step, 2026-11-23). With
    one thread the kernels still win by fusion and SIMD, and run their serial builds (see ``_Kernel``).
    Setting NUMBA_NUM_THREADS > 1 yourself (e.g. with OPENBLAS_NUM_THREADS=1) gets the parallel builds on
    that many threads; NUMBA_THREADING_LAYER, set, is kept (alone it leaves one thread, so the serial
    builds). Both apply from the first parallel launch on, in this thread.
    """
    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "workqueue"
    if "NUMBA_NUM_THREADS" not in os.environ:
        numba.set_num_threads(1)
    return numba.get_num_threads()
