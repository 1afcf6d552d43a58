"""Numba CPU kernels: the same functions as ``tinygpt.layers``, fused and parallel where NumPy wastes work.

Every public function here has EXACTLY the signature of its ``tinygpt.layers`` namesake, and each
forward/backward pair shares its own cache format (so a forward from here must be paired with the backward
from here, which ``tinygpt.kernels.get_ops("numba")`` guarantees). Matmuls stay on BLAS: the NumPy
``linear_*`` functions are already one ``@`` each, and no hand loop beats OpenBLAS there.

Where the wins come from (measure them with ``tinygpt bench kernels --device cpu``):

- **Causal attention** per (batch, head) in parallel (``prange``), touching only the lower triangle
  ``j <= i`` of the T x T score matrix: half the arithmetic, no ``-inf`` mask array, no separate
  max / exp / sum / divide passes over a (B, H, T, T) temporary. NumPy's batched BLAS computes the full
  square but at BLAS speed, so single-threaded the two are even; the win is that 48 independent
  (batch, head) problems parallelise perfectly, where BLAS threads split each small 256 x 64 product.
- **LayerNorm**: statistics and output in two passes over each row instead of NumPy's chain of temporaries.
- **GELU**: one pass forward, one backward, with a tanh written in plain arithmetic (``_tanh``) so the
  loop vectorises; NumPy needs ~10 passes over the (B, T, 4C) array.
- **Embedding backward**: a column-parallel scatter-add instead of ``np.add.at`` (about 6x).
- **AdamW**: one pass over each parameter instead of ~10 NumPy temporaries (about 5x).

And where they do not: the cross-entropy kernel is here too, equal to the reference, but the ``numba``
backend does not use it. Its cost is exp, which NumPy evaluates with SIMD code while Numba (without Intel's
SVML library) calls the scalar libm function once per element; at GPT-sized vocabularies it loses to NumPy
(at V = 65 the whole op takes about a millisecond either way). The same was true of GELU until ``_tanh``.

The kernels are ``@njit(parallel=True, cache=True, fastmath=False)``: IEEE semantics, so results match the
NumPy reference to rounding. We get SIMD anyway where the inner loop is ``y[j] += a * x[j]`` over a
contiguous axis (an "axpy"). A dot product, though, is a SUM, which IEEE order forbids vectorising; the two
attention kernels therefore allow re-association and fused multiply-add only (``fastmath={"reassoc",
"contract"}``, no finite-math assumptions), which makes their backward 2x faster and changes results by
summation order alone, as BLAS does. Other reductions (means, log-sum-exps) accumulate in float64 even for
float32 inputs, keeping float32 results within ~1e-6 of the reference. ``cache=True`` writes the compiled
machine code to ``__pycache__``, so only the first run pays the JIT compile (see the README for timings).
"""

from __future__ import annotations

import math
import os

import numba
import numpy as np
from numba import njit, prange

from tinygpt.errors import TinyGPTError
from tinygpt.kernels import checked_token_ids, dropout_keep_mask

_JIT = dict(parallel=True, cache=True, fastmath=False)
# Attention's dot products are sums over the head size; IEEE order forbids SIMD for a sum, so these two
# kernels allow re-association (and fused multiply-add) only: no "finite math" or other fast-math
# assumptions. The result differs from the reference by summation order alone, as BLAS's does.
_JIT_REASSOC = dict(parallel=True, cache=True, fastmath={"reassoc", "contract"})


def _n_chunks(n_rows: int) -> int:
    """How many row chunks a parallel reduction splits into: a few per thread, never more than rows."""
    return max(1, min(n_rows, 4 * numba.get_num_threads()))


def _check_float(name: str, *arrays: np.ndarray) -> np.dtype:
    dtype = arrays[0].dtype
    if dtype not in (np.float32, np.float64):
        raise TinyGPTError(f"{name}: numba kernels take float32 or float64 arrays, got {dtype}")
    for a in arrays[1:]:
        if a is not None and a.dtype != dtype:
            raise TinyGPTError(f"{name}: mixed dtypes {dtype} and {a.dtype}")
    return dtype


# --- embedding ------------------------------------------------------------------------------------


@njit(**_JIT)
def _embedding_forward_kernel(idx, wte, wpe, out):
    # out[b, t, :] = wte[idx[b, t], :] + wpe[t, :]   one pass, no (B, T, C) temporaries
    B, T = idx.shape
    for n in prange(B * T):
        b = n // T
        t = n % T
        tok = idx[b, t]
        for c in range(wte.shape[1]):
            out[b, t, c] = wte[tok, c] + wpe[t, c]


@njit(**_JIT)
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
    idx = checked_token_ids(idx, wte.shape[0], wpe.shape[0])
    B, T = idx.shape
    V, C = wte.shape
    out = np.empty((B, T, C), dtype=wte.dtype)
    _embedding_forward_kernel(idx, np.ascontiguousarray(wte), np.ascontiguousarray(wpe), out)
    return out, (idx, wte.shape, wpe.shape)


def embedding_backward(dout, cache):
    """(B, T, C) -> dwte (V, C), dwpe (block_size, C); a token seen k times gets k rows added."""
    idx, wte_shape, wpe_shape = cache
    dout = np.ascontiguousarray(dout)
    dwte = np.zeros(wte_shape, dtype=dout.dtype)
    dwpe = np.zeros(wpe_shape, dtype=dout.dtype)
    _embedding_backward_kernel(idx, dout, dwte, dwpe, _n_chunks(wte_shape[1]))
    return dwte, dwpe


# --- layernorm ------------------------------------------------------------------------------------


@njit(**_JIT)
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


@njit(**_JIT)
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


@njit(inline="always", cache=True)
def _tanh(u):
    """tanh in plain arithmetic (float64, |error| < 1e-14), so that loops calling it vectorise.

    Without Intel's SVML, numba compiles math.tanh to one scalar libm call per element, while NumPy's
    np.tanh is SIMD code; this version is only multiply, add, divide, min and a select, which LLVM turns
    into SIMD instructions. With a = min(|u|, 19) (tanh(19) = 1 - 6e-17, i.e. 1 in float64)::

        tanh(a) = 1 - 2 / (exp(2a) + 1),    exp(2a) = exp(a/16)^32

    exp(a/16) (a/16 <= 1.19) is its Taylor series to degree 12, evaluated by Horner's rule; five
    squarings raise it to the 32nd power.
    """
    a = min(abs(u), 19.0)
    y = a * 0.0625
    e = 1.0 / 479001600.0  # 1/12!
    e = 1.0 / 39916800.0 + y * e
    e = 1.0 / 3628800.0 + y * e
    e = 1.0 / 362880.0 + y * e
    e = 1.0 / 40320.0 + y * e
    e = 1.0 / 5040.0 + y * e
    e = 1.0 / 720.0 + y * e
    e = 1.0 / 120.0 + y * e
    e = 1.0 / 24.0 + y * e
    e = 1.0 / 6.0 + y * e
    e = 0.5 + y * e
    e = 1.0 + y * e
    e = 1.0 + y * e
    e = e * e
    e = e * e
    e = e * e
    e = e * e
    e = e * e
    t = 1.0 - 2.0 / (e + 1.0)
    return t if u >= 0.0 else -t


_GELU_K = math.sqrt(2.0 / math.pi)


@njit(**_JIT)
def _gelu_forward_kernel(x, out):
    # gelu(x) = 0.5 x (1 + tanh(k (x + 0.044715 x^3))), k = sqrt(2/pi)  (GPT-2's tanh approximation),
    # evaluated in float64 whatever the storage type: exact to float32 rounding and still SIMD
    for i in prange(x.size):
        xi = np.float64(x[i])
        out[i] = 0.5 * xi * (1.0 + _tanh(_GELU_K * (xi + 0.044715 * xi * xi * xi)))


@njit(**_JIT)
def _gelu_backward_kernel(dout, x, dx):
    # d/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 * 0.044715 x^2),  t = tanh(k (x + 0.044715 x^3))
    # t is recomputed from x rather than cached: cheaper than storing and re-reading a (B, T, 4C) array.
    for i in prange(x.size):
        xi = np.float64(x[i])
        t = _tanh(_GELU_K * (xi + 0.044715 * xi * xi * xi))
        dx[i] = dout[i] * (0.5 * (1.0 + t) + 0.5 * xi * (1.0 - t * t) * _GELU_K * (1.0 + 0.134145 * xi * xi))


def gelu_forward(x):
    """Element-wise GELU, tanh approximation (as GPT-2). Any shape -> same shape."""
    _check_float("gelu_forward", x)
    xc = np.ascontiguousarray(x)
    out = np.empty_like(xc)
    _gelu_forward_kernel(xc.reshape(-1), out.reshape(-1))
    return out, xc


def gelu_backward(dout, cache):
    """Any shape -> dx of the same shape."""
    x = cache
    dout = np.ascontiguousarray(dout)
    dx = np.empty_like(x)
    _gelu_backward_kernel(dout.reshape(-1), x.reshape(-1), dx.reshape(-1))
    return dx


# --- causal self-attention ------------------------------------------------------------------------


@njit(**_JIT_REASSOC)
def _attention_forward_kernel(qkv, n_head, keep, use_dropout, out, probs):
    # For each (batch, head), for each query row i, only keys j <= i exist (causal):
    #   s_j = (q_i . k_j) / sqrt(hs),  p_j = exp(s_j - max s) / sum exp(...),  y_i = sum_j a_j v_j
    # with a = p (times the dropout keep mask when training with dropout).
    # probs[b, h, i, :i+1] keeps p (needed by the backward); its upper triangle is never written or read.
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    scale = qkv.dtype.type(1.0 / math.sqrt(hs))
    zero = qkv.dtype.type(0)
    for bh in prange(B * n_head):
        b = bh // n_head
        h = bh % n_head
        # this head's q, k, v as contiguous (T, hs) copies: the dot products below then run along
        # contiguous memory and vectorise
        q = np.ascontiguousarray(qkv[b, :, h * hs:(h + 1) * hs])
        k = np.ascontiguousarray(qkv[b, :, C + h * hs:C + (h + 1) * hs])
        v = np.ascontiguousarray(qkv[b, :, 2 * C + h * hs:2 * C + (h + 1) * hs])
        y = np.empty(hs, dtype=qkv.dtype)
        for i in range(T):
            p = probs[b, h, i]
            m = -np.inf
            for j in range(i + 1):  # the causal skip: keys after i are never touched
                s = zero
                for d in range(hs):
                    s += q[i, d] * k[j, d]
                s *= scale
                p[j] = s
                m = max(m, s)
            total = 0.0
            for j in range(i + 1):
                e = math.exp(p[j] - m)
                p[j] = e
                total += e
            inv = qkv.dtype.type(1.0 / total)
            for d in range(hs):
                y[d] = zero
            for j in range(i + 1):
                p[j] *= inv
                a = p[j] * keep[b, h, i, j] if use_dropout else p[j]
                for d in range(hs):
                    y[d] += a * v[j, d]
            out[b, i, h * hs:(h + 1) * hs] = y


@njit(**_JIT_REASSOC)
def _attention_backward_kernel(dout, qkv, probs, n_head, keep, use_dropout, dqkv):
    # With a_ij = p_ij * keep_ij (keep = 1 without dropout), y_i = sum_j a_ij v_j, p_i = softmax(s_i):
    #   dv_j += a_ij dy_i,   dp_ij = keep_ij (dy_i . v_j),
    #   ds_ij = p_ij (dp_ij - sum_k p_ik dp_ik)                      (softmax backward)
    #   dq_i += ds_ij k_j / sqrt(hs),   dk_j += ds_ij q_i / sqrt(hs)
    # Each (batch, head) owns its own columns of dqkv, so the prange needs no locks.
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    scale = qkv.dtype.type(1.0 / math.sqrt(hs))
    zero = qkv.dtype.type(0)
    for bh in prange(B * n_head):
        b = bh // n_head
        h = bh % n_head
        q = np.ascontiguousarray(qkv[b, :, h * hs:(h + 1) * hs])
        k = np.ascontiguousarray(qkv[b, :, C + h * hs:C + (h + 1) * hs])
        v = np.ascontiguousarray(qkv[b, :, 2 * C + h * hs:2 * C + (h + 1) * hs])
        dy = np.ascontiguousarray(dout[b, :, h * hs:(h + 1) * hs])
        dq = np.zeros((T, hs), dtype=qkv.dtype)
        dk = np.zeros((T, hs), dtype=qkv.dtype)
        dv = np.zeros((T, hs), dtype=qkv.dtype)
        dp = np.empty(T, dtype=qkv.dtype)
        for i in range(T):
            p = probs[b, h, i]
            row_dot = zero
            for j in range(i + 1):
                s = zero
                for d in range(hs):
                    s += dy[i, d] * v[j, d]
                a = p[j]
                if use_dropout:
                    a = a * keep[b, h, i, j]
                    s = s * keep[b, h, i, j]
                dp[j] = s
                row_dot += p[j] * s
                for d in range(hs):
                    dv[j, d] += a * dy[i, d]
            for j in range(i + 1):
                ds = p[j] * (dp[j] - row_dot) * scale
                for d in range(hs):
                    dq[i, d] += ds * k[j, d]
                    dk[j, d] += ds * q[i, d]
        dqkv[b, :, h * hs:(h + 1) * hs] = dq
        dqkv[b, :, C + h * hs:C + (h + 1) * hs] = dk
        dqkv[b, :, 2 * C + h * hs:2 * C + (h + 1) * hs] = dv


def attention_forward(qkv, n_head, dropout=0.0, rng=None):
    """Causal multi-head self-attention. qkv (B, T, 3C) from the fused c_attn projection -> (B, T, C).

    ``dropout`` (probability of zeroing an attention weight, training only) needs ``rng``, a
    ``np.random.Generator``; the keep mask is drawn exactly as ``tinygpt.layers`` draws it, so the same
    generator state gives the same output on either backend.
    """
    _check_float("attention_forward", qkv)
    if qkv.ndim != 3 or qkv.shape[2] % 3 != 0:
        raise TinyGPTError(f"attention_forward: qkv must be (B, T, 3C), got shape {qkv.shape}")
    B, T, C3 = qkv.shape
    C = C3 // 3
    if n_head < 1 or C % n_head != 0:
        raise TinyGPTError(f"attention_forward: n_embd {C} is not divisible by n_head {n_head}")
    qkv = np.ascontiguousarray(qkv)
    keep = dropout_keep_mask(qkv.dtype, (B, n_head, T, T), dropout, rng)
    out = np.empty((B, T, C), dtype=qkv.dtype)
    probs = np.empty((B, n_head, T, T), dtype=qkv.dtype)
    use_dropout = keep is not None
    _attention_forward_kernel(qkv, n_head, keep if use_dropout else _NO_MASK[qkv.dtype.char], use_dropout,
                              out, probs)
    return out, (qkv, probs, n_head, keep)


def attention_backward(dout, cache):
    """(B, T, C) -> dqkv (B, T, 3C)."""
    qkv, probs, n_head, keep = cache
    dout = np.ascontiguousarray(dout)
    dqkv = np.empty_like(qkv)
    use_dropout = keep is not None
    _attention_backward_kernel(dout, qkv, probs, n_head, keep if use_dropout else _NO_MASK[qkv.dtype.char],
                               use_dropout, dqkv)
    return dqkv


# A (1, 1, 1, 1) stand-in for the keep mask when there is no dropout, so the kernel has one type signature.
_NO_MASK = {"f": np.ones((1, 1, 1, 1), np.float32), "d": np.ones((1, 1, 1, 1), np.float64)}



# --- cross-entropy --------------------------------------------------------------------------------


@njit(**_JIT)
def _cross_entropy_forward_kernel(logits, targets, lse, losses):
    # loss_n = logsumexp(logits_n) - logits_n[target_n], computed as m + log(sum exp(l - m)), m = max l.
    # No probability array is built: the backward recomputes exp(l - lse) from the saved lse.
    N, V = logits.shape
    for n in prange(N):
        t = targets[n]
        if t < 0:  # ignored position
            lse[n] = 0.0
            losses[n] = 0.0
            continue
        m = logits[n, 0]
        for j in range(1, V):
            m = max(m, logits[n, j])
        total = 0.0
        for j in range(V):
            total += math.exp(logits[n, j] - m)
        lse[n] = m + math.log(total)
        losses[n] = lse[n] - logits[n, t]


@njit(**_JIT)
def _cross_entropy_backward_kernel(logits, targets, lse, scale, dlogits):
    # dloss/dlogits_n = (softmax(logits_n) - onehot(target_n)) * dloss / n_valid; ignored rows get zeros.
    N, V = logits.shape
    for n in prange(N):
        t = targets[n]
        if t < 0:
            for j in range(V):
                dlogits[n, j] = 0.0
            continue
        for j in range(V):
            dlogits[n, j] = math.exp(logits[n, j] - lse[n]) * scale
        dlogits[n, t] -= scale


def cross_entropy_forward(logits, targets):
    """Mean cross-entropy over positions whose target is not -1. (B, T, V), (B, T) -> loss (Python float).

    If every target is -1 the loss is 0 and so is its gradient (as in ``tinygpt.layers``).
    """
    _check_float("cross_entropy_forward", logits)
    V = logits.shape[-1]
    targets = np.asarray(targets)
    if targets.shape != logits.shape[:-1]:
        raise TinyGPTError(f"cross_entropy_forward: targets shape {targets.shape} does not match "
                           f"logits {logits.shape[:-1]}")
    t = np.ascontiguousarray(targets, dtype=np.int64).reshape(-1)
    valid = t >= 0
    n_valid = int(valid.sum())
    if t.size and (t.min() < -1 or t.max() >= V):
        raise TinyGPTError(f"cross_entropy_forward: targets must be -1 or in [0, {V}), "
                           f"got [{t.min()}, {t.max()}]")
    l2 = np.ascontiguousarray(logits).reshape(-1, V)
    lse = np.empty(l2.shape[0], dtype=np.float64)
    losses = np.empty(l2.shape[0], dtype=np.float64)
    _cross_entropy_forward_kernel(l2, t, lse, losses)
    loss = float(losses.sum()) / max(n_valid, 1)
    return loss, (l2, t, lse, n_valid, logits.shape)


def cross_entropy_backward(dloss, cache):
    """scalar dloss -> dlogits (B, T, V)."""
    l2, t, lse, n_valid, shape = cache
    dlogits = np.empty_like(l2)
    _cross_entropy_backward_kernel(l2, t, lse, float(dloss) / max(n_valid, 1), dlogits)
    return dlogits.reshape(shape)


# --- AdamW ----------------------------------------------------------------------------------------


@njit(**_JIT)
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
    small``). With one thread the kernels still win by fusion: no temporaries, half of causal attention
    skipped. Setting NUMBA_NUM_THREADS or NUMBA_THREADING_LAYER yourself (e.g. with OPENBLAS_NUM_THREADS=1)
    keeps Numba's choices. Both settings apply from the first parallel launch on, in the calling thread.
    """
    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "workqueue"
    if "NUMBA_NUM_THREADS" not in os.environ:
        numba.set_num_threads(1)
    return numba.get_num_threads()
