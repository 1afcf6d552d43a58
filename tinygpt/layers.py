"""Every layer of GPT-2, written twice by hand in NumPy: a forward pass and its backward pass.

Each layer is a pair of plain functions::

    out, cache = <layer>_forward(inputs...)      # cache: exactly what the backward pass needs, nothing more
    grads      = <layer>_backward(dout, cache)   # dout = dL/dout, same shape as out

``dout`` is the gradient of the loss with respect to the layer's output; the backward pass returns the
gradients with respect to the layer's inputs, in the order the forward pass takes them. The functions are
dtype preserving: give them float32 arrays (training) or float64 arrays (gradient checks) and every array
they return or cache is in that dtype. Three small steps go through float64 on the way, for accuracy, each
cast back at once: LayerNorm's row means (a float32 sum's few ulps are all of x - mean on a nearly constant
row), the exact GELU's erfc (``math.erfc``, element by element: NumPy has none) and the cross-entropy's sum
of per-token losses (N float32 losses can overflow; the loss is a Python float).

Shapes use GPT-2's letters: B batch, T time (sequence length), C channels (n_embd), H heads, hs = C / H head
size, V vocabulary size. The model (``tinygpt.model``) strings these together::

    x = wte[idx] + wpe[:T]                                   embedding
    for each block:                                          pre-LN residual blocks
        x = x + c_proj(attention(c_attn(layernorm(x))))
        x = x + c_proj(gelu(c_fc(layernorm(x))))
    logits = layernorm(x) @ wte.T                            LM head tied to the token embedding
    loss = cross_entropy(logits, targets)

Memory is the usual limit of training, so caches hold references to arrays the forward pass already made
(inputs, outputs) plus small per-row statistics; they never hold a copy that backward could recompute
cheaply. Where an in-place update or ``out=`` saves a pass over a large array, a one-line comment says so.
"""

from __future__ import annotations

import math

import numpy as np

from tinygpt.errors import TinyGPTError

__all__ = [
    "embedding_forward",
    "embedding_backward",
    "layernorm_forward",
    "layernorm_backward",
    "linear_forward",
    "linear_backward",
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
]


# --- token + position embedding --------------------------------------------------------------------


def embedding_forward(idx, wte, wpe):
    """Token plus position embedding: ``out[b, t] = wte[idx[b, t]] + wpe[t]``.

    idx (B, T) int, wte (V, C), wpe (block_size, C) -> out (B, T, C)

    Example: with ``wte = [[1, 0], [0, 1]]`` and ``wpe = [[10, 10], [20, 20]]``, ``idx = [[1, 1]]`` gives
    ``[[[10, 11], [20, 21]]]``.
    """
    from tinygpt.kernels import checked_token_ids  # (tinygpt.kernels imports this module)

    idx = checked_token_ids(idx, wte.shape[0], wpe.shape[0])  # -1 would silently read wte's last row
    T = idx.shape[1]
    out = wte[idx]  # (B, T, C) a fresh array: one row of wte per token
    out += wpe[:T]  # (T, C) broadcast over the batch; in place, out is ours
    cache = (idx, wte.shape[0], wpe.shape[0])  # ids and table sizes; the tables themselves are not needed
    return out, cache


def embedding_backward(dout, cache):
    """dout (B, T, C) -> dwte (V, C), dwpe (block_size, C).

    A token that appears n times receives the sum of n gradients. ``dwte[idx] += dout`` would silently keep
    only one of them (fancy-indexed assignment does not accumulate), so we use the unbuffered ``np.add.at``.
    """
    idx, vocab_size, block_size = cache
    B, T, C = dout.shape
    dwte = np.zeros((vocab_size, C), dtype=dout.dtype)
    np.add.at(dwte, idx.reshape(-1), dout.reshape(-1, C))  # repeated ids accumulate
    dwpe = np.zeros((block_size, C), dtype=dout.dtype)
    dwpe[:T] = dout.sum(axis=0)  # every sequence in the batch uses positions 0..T-1
    return dwte, dwpe


# --- LayerNorm -------------------------------------------------------------------------------------


def layernorm_forward(x, weight, bias, eps=1e-5):
    """LayerNorm over the last axis: ``out = (x - mean) / sqrt(var + eps) * weight + bias``.

    x (..., C), weight (C,), bias (C,) or None -> out (..., C)

    The cache keeps x (already alive as the residual stream) and two numbers per row, mean and
    rstd = 1 / sqrt(var + eps); backward rebuilds xhat = (x - mean) * rstd from them.
    """
    # (..., 1), summed in float64 whatever x's dtype: a float32 sum is a few ulps off, and for a (nearly)
    # constant row those ulps are all of x - mean (1000.1 repeated 768 times normalised to +-0.019)
    mean = x.mean(axis=-1, keepdims=True, dtype=np.float64).astype(x.dtype, copy=False)
    xc = x - mean  # (..., C) centred; this array becomes the output
    var = np.einsum("...c,...c->...", xc, xc)[..., None] / x.shape[-1]  # (..., 1) biased variance, no temp
    rstd = 1.0 / np.sqrt(var + eps)  # (..., 1)
    out = xc
    out *= rstd  # xhat, in place: saves a (..., C) temporary
    out *= weight
    if bias is not None:
        out += bias
    cache = (x, weight, mean, rstd, bias is not None)
    return out, cache


def layernorm_backward(dout, cache):
    """dout (..., C) -> dx (..., C), dweight (C,), dbias (C,) or None.

    With xhat = (x - mean) * rstd and g = dout * weight (the gradient reaching xhat), the compact form is::

        dx = rstd * (g - mean(g) - xhat * mean(g * xhat))        (means over the C axis)

    the two mean terms being what flows back through ``mean`` and ``var``.
    """
    x, weight, mean, rstd, has_bias = cache
    C = x.shape[-1]
    xhat = x - mean
    xhat *= rstd  # (..., C) rebuilt rather than cached: one cheap pass instead of one more (..., C) array
    dout2d, xhat2d = dout.reshape(-1, C), xhat.reshape(-1, C)
    dweight = np.einsum("nc,nc->c", dout2d, xhat2d)  # sum over all rows of dout * xhat, no temporary
    dbias = dout2d.sum(axis=0) if has_bias else None
    g = dout * weight  # (..., C) gradient reaching xhat
    g_mean = g.mean(axis=-1, keepdims=True)  # (..., 1)
    gx_mean = np.einsum("...c,...c->...", g, xhat)[..., None] / C  # (..., 1) mean(g * xhat)
    dx = g
    dx -= g_mean  # in place: g is ours and no longer needed as itself
    xhat *= gx_mean
    dx -= xhat
    dx *= rstd
    return dx, dweight, dbias


# --- linear (fully connected) ----------------------------------------------------------------------


def linear_forward(x, weight, bias):
    """``out = x @ weight + bias``, weight stored (in, out) as in GPT-2's Conv1D checkpoints.

    x (..., in), weight (in, out), bias (out,) or None -> out (..., out)
    """
    n_in, n_out = weight.shape
    out = x.reshape(-1, n_in) @ weight  # (N, in) @ (in, out): one 2-D BLAS call, not a batched loop
    if bias is not None:
        out += bias  # in place: out is a fresh array
    cache = (x, weight, bias is not None)
    return out.reshape(*x.shape[:-1], n_out), cache


def linear_backward(dout, cache):
    """dout (..., out) -> dx (..., in), dweight (in, out), dbias (out,) or None.

    From out = x W + b:  dx = dout W^T,  dW = x^T dout (summed over every row),  db = sum of dout's rows.
    """
    x, weight, has_bias = cache
    n_in, n_out = weight.shape
    dout2d = dout.reshape(-1, n_out)  # (N, out)
    dx = (dout2d @ weight.T).reshape(x.shape)  # (N, out) @ (out, in); W.T is a view, BLAS reads it transposed
    dweight = x.reshape(-1, n_in).T @ dout2d  # (in, N) @ (N, out)
    dbias = dout2d.sum(axis=0) if has_bias else None
    return dx, dweight, dbias


# --- GELU ------------------------------------------------------------------------------------------

_GELU_K = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715

# Past |x| = 1e4 gelu's derivative is exactly 1 (x > 0) or 0 (x < 0) in float32 and float64 alike: s is
# 1 or 0 there, exp(-2u) having underflowed or overflowed. So backward clips x to this and computes the
# same derivative, while 2 k x (1 + 3 a x^2) stays finite (2e11): unclipped it overflowed to inf from
# |x| ~ 1.2e13 in float32 and 0 * inf made the gradient NaN, where torch's is 1 or 0 up to 1.8e19.
GELU_GRAD_CLIP = 1e4


def gelu_forward(x):
    """GELU, GPT-2's tanh approximation: ``0.5 x (1 + tanh(k (x + a x^3)))``, k = sqrt(2/pi), a = 0.044715.

    x (...,) -> out (...,), same shape. Example: gelu(0) = 0, gelu(1) = 0.8412, gelu(-1) = -0.1588.

    Computed as ``x * sigmoid(2u) = x / (1 + exp(-2u))`` with u = k (x + a x^3): the same function, since
    0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u)), but one exp instead of a tanh (about half its cost in NumPy)
    and no cancellation in 1 + tanh(u) for negative x.
    """
    out = x * x
    out *= -2.0 * _GELU_K * _GELU_A
    out -= 2.0 * _GELU_K
    out *= x  # -2u = x (-2k - 2k a x^2), built in one buffer: no temporaries
    with np.errstate(over="ignore"):  # exp(-2u) = inf for x below about -10 gives gelu = x / inf = -0: right
        np.exp(out, out=out)
    out += 1.0
    np.divide(x, out, out=out)  # x / (1 + exp(-2u))
    return out, x  # the cache is the input alone; backward recomputes the sigmoid rather than keep a copy


def gelu_backward(dout, cache):
    """dout (...,) -> dx (...,).

    With s = sigmoid(2u) = 0.5 (1 + tanh(u)), ds/du = 2 s (1 - s) and du/dx = k (1 + 3 a x^2)::

        d gelu / dx = s + x * 2 s (1 - s) * k (1 + 3 a x^2) = s (1 + 2 k x (1 - s) (1 + 3 a x^2))

    x is first clipped to +-GELU_GRAD_CLIP, where the derivative is already exactly 1 or 0 (see there).
    """
    x = np.clip(cache, -GELU_GRAD_CLIP, GELU_GRAD_CLIP)  # a new array (NaN stays NaN), reused for dx below
    x2 = x * x
    s = x2 * (-2.0 * _GELU_K * _GELU_A)
    s -= 2.0 * _GELU_K
    s *= x  # -2u
    with np.errstate(over="ignore"):  # inf for very negative x: s = 1 / inf = 0, as it should be
        np.exp(s, out=s)
    s += 1.0
    np.reciprocal(s, out=s)  # s = sigmoid(2u)
    x2 *= 3.0 * _GELU_A
    x2 += 1.0
    x2 *= x
    x2 *= 2.0 * _GELU_K  # x2 now holds 2 k x (1 + 3 a x^2)
    dx = np.subtract(1.0, s, out=x)  # into x's buffer: x is not needed any more
    dx *= x2
    dx += 1.0
    dx *= s
    dx *= dout
    return dx


# GELU as defined, x * Phi(x) with Phi the standard normal CDF, is what torch.nn.GELU() computes by default
# and what nanoGPT trains with; GPT-2 (and gelu_forward above) uses the tanh approximation, which differs
# from it by up to 4.7e-4 (at |x| = 2.7): too much to load a nanoGPT model and get its logits.
# Phi(x) = erfc(-x / sqrt 2) / 2, erfc rather than 1 + erf(x / sqrt 2): for negative x that sum cancels
# (1 - 0.9999994 at x = -5 keeps one digit in float32), erfc keeps every digit.
_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
# NumPy has no erfc: math.erfc element by element, correctly rounded in float64 but some 40 times the cost
# of gelu_forward's exp (the numba and cuda backends' kernels call erfc in compiled code)
_erfc = np.frompyfunc(math.erfc, 1, 1)


def gelu_erf_forward(x):
    """GELU without approximation, ``x Phi(x) = 0.5 x erfc(-x / sqrt 2)`` (torch's ``nn.GELU()``, nanoGPT's).

    x (...,) -> out (...,), same shape and dtype. Example: gelu(1) = 0.8413, gelu(-1) = -0.1587 (the tanh
    approximation's 0.8412 and -0.1588).
    """
    phi = _erfc(np.multiply(x, -_SQRT_HALF, dtype=np.float64)).astype(x.dtype)  # (an object array first)
    phi *= 0.5
    return np.multiply(x, phi, out=phi), x  # the cache is the input alone, as gelu_forward's


def gelu_erf_backward(dout, cache):
    """dout (...,) -> dx (...,): d (x Phi(x)) / dx = Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi).

    For |x| past about 39 (float64; 14 in float32) exp underflows to 0 and the derivative is Phi(x) alone,
    exactly 1 or 0 there; no term overflows, so no clip as gelu_backward needs.
    """
    x = cache
    dx = _erfc(np.multiply(x, -_SQRT_HALF, dtype=np.float64)).astype(x.dtype)
    dx *= 0.5  # Phi(x)
    density = np.multiply(x, x)
    density *= -0.5
    np.exp(density, out=density)
    density *= _INV_SQRT_2PI
    density *= x  # x phi(x)
    dx += density
    dx *= dout
    return dx


# --- dropout ---------------------------------------------------------------------------------------
#
# Dropout masks come from a counter-based generator: entry number ``index`` of a mask is kept iff
# dropout_bits(key, index) >= p * 2^32, with one ``key`` drawn from the rng per call. Any entry can then be
# recomputed anywhere, in any order, from (key, index) alone: a GPU kernel drops attention weights with no
# (T, T) mask in memory (flash attention does the same with Philox), and every backend drops exactly the
# entries this reference drops.


def hash32(x):
    """A 32-bit integer mixer ("lowbias32", from Chris Wellons' hash prospector), on uint32 arrays.

    A bijection of [0, 2^32) in which flipping any input bit flips each output bit with probability ~1/2;
    uint32 products wrap around mod 2^32, which is the arithmetic the mixer is defined in. Example:
    ``hash32(np.array([0, 1, 2], np.uint32))`` -> ``[0, 1753845952, 3507691905]``.
    """
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def draw_dropout_key(rng) -> int:
    """The per-call key of a dropout mask: a 32-bit seed from ``rng``, already mixed (one draw per call)."""
    return int(hash32(np.array([rng.integers(0, 2**32)], np.uint32))[0])


def dropout_bits(key: int, index):
    """32 random bits for each mask entry number in ``index`` (a uint64 array) under ``key``.

    The high and low halves of the index are mixed in turn, each time with the key, so neighbouring entries
    and different keys give unrelated bits: ``hash32(hash32(lo ^ hash32(hi ^ key)) ^ key)``.
    """
    key = np.uint32(key)
    hi = hash32((index >> np.uint64(32)).astype(np.uint32) ^ key)
    lo = index.astype(np.uint32)  # the low 32 bits (astype wraps)
    return hash32(hash32(lo ^ hi) ^ key)


def dropout_threshold(p: float) -> int:
    """Entries whose bits are >= this are kept: probability 1 - p, to 2^-32."""
    return min(math.ceil(p * 2**32), 2**32)


def dropout_keep(key: int, index, p: float):
    """Boolean keep-mask, the shape of ``index``: True with probability 1 - p, the same on every backend."""
    return dropout_bits(key, index) >= np.uint64(dropout_threshold(p))


def dropout_forward(x, p, rng):
    """Inverted dropout: zero each entry with probability p, scale survivors by 1 / (1 - p).

    x (...,) -> out (...,). The expectation is unchanged, so eval mode is the identity. ``rng`` is a
    ``numpy.random.Generator`` (one key drawn from it; entry i of x is kept by ``dropout_keep(key, i, p)``);
    the boolean keep-mask is cached (1 byte per entry) for backward. ``p`` is a real number (Python's or
    NumPy's): only its range is checked here, on the hot path; ``GPTConfig`` checks the model's is a number.
    """
    if not 0.0 <= p < 1.0:
        raise TinyGPTError(f"dropout probability must be in [0, 1), got {p}")
    p = float(p)  # any real number type; a np.float16 p overflowed p * 2^32 and rounded 1 / (1 - p)
    if p == 0.0:
        return x, None
    key = draw_dropout_key(rng)
    keep = dropout_keep(key, np.arange(x.size, dtype=np.uint64).reshape(x.shape), p)
    out = x * keep
    out *= 1.0 / (1.0 - p)
    return out, (keep, p)


def dropout_backward(dout, cache):
    """dout (...,) -> dx (...,): the same mask and scale as the forward pass."""
    if cache is None:
        return dout
    keep, p = cache
    dx = dout * keep
    dx *= 1.0 / (1.0 - p)
    return dx


# --- causal multi-head self-attention --------------------------------------------------------------


def _causal_mask(T, dtype):
    """(T, T) additive mask: 0 where key s <= query t, -inf above the diagonal, so exp gives exactly 0."""
    return np.triu(np.full((T, T), -np.inf, dtype=dtype), k=1)  # triu zeroes everything below diagonal 1


# Queries per block of attention_forward (see there): the scores of 64 rows at a time.
QUERY_BLOCK = 64


def attention_dropout_index(B, H, T, t0, t1):
    """Entry numbers of the attention weights of queries t0..t1-1 and keys 0..t1-1, as a (B, H, t1-t0, t1)
    uint64 array: weight (b, h, t, s) is entry ((b H + h) T + t) T + s of a (B, H, T, T) mask. Its
    ``dropout_keep`` is the same whatever the blocks, so kernels with other tiles drop the same weights."""
    b = np.arange(B, dtype=np.uint64)[:, None, None, None]
    h = np.arange(H, dtype=np.uint64)[None, :, None, None]
    t = np.arange(t0, t1, dtype=np.uint64)[:, None]
    s = np.arange(t1, dtype=np.uint64)
    return ((b * np.uint64(H) + h) * np.uint64(T) + t) * np.uint64(T) + s


def attention_forward(qkv, n_head, dropout=0.0, rng=None, query_block=QUERY_BLOCK):
    """Causal multi-head self-attention on the fused projection: ``softmax(q k^T / sqrt(hs) + mask) v``.

    qkv (B, T, 3C) -> out (B, T, C), heads merged back side by side (the input of ``attn.c_proj``).

    qkv is ``[q | k | v]`` along the last axis, each C wide and split into H heads of size hs = C / H.
    Query t attends to keys s <= t only: the mask adds -inf above the diagonal, so those probabilities are
    exactly zero. ``dropout`` drops attention probabilities (training only); it needs ``rng``, a
    ``numpy.random.Generator``, from which one key is drawn (weight (b, h, t, s) is kept by
    ``dropout_keep(key, attention_dropout_index(...), dropout)``).

    Queries go in blocks of ``query_block`` rows: the queries t0..t1-1 can only see keys 0..t1-1, so the
    block's scores are (t1-t0, t1) instead of (t1-t0, T). The keys right of the block, all masked, are never
    computed: with 4 blocks (T = 256) that skips 3/8 of the matmul and softmax work (flash attention's trick,
    without the fusion). Within a block the usual -inf mask handles the diagonal.

    The cache keeps qkv (which the c_attn projection made anyway), each block's probabilities
    (B, H, t1-t0, t1) and, with dropout, the boolean keep-masks.
    """
    B, T, C3 = qkv.shape
    C = C3 // 3
    if C3 % 3 or n_head < 1 or C % n_head:
        raise TinyGPTError(f"attention input width {C3} is not 3 * n_embd with n_embd divisible by {n_head}")
    if not 0.0 <= dropout < 1.0:
        raise TinyGPTError(f"dropout probability must be in [0, 1), got {dropout}")
    if dropout and rng is None:
        raise TinyGPTError("attention dropout > 0 needs an rng (numpy.random.Generator)")
    dropout = float(dropout)  # (as in dropout_forward)
    hs = C // n_head
    # (B, T, 3, H, hs) -> (3, B, H, T, hs): views, no copy; matmul reads the strided rows directly
    q, k, v = qkv.reshape(B, T, 3, n_head, hs).transpose(2, 0, 3, 1, 4)
    k_scaled = k * (1.0 / math.sqrt(hs))  # (B, H, T, hs): scaling k costs T*hs, scaling the scores T*T
    mask = _causal_mask(T, qkv.dtype)
    y = np.empty((B, T, n_head, hs), dtype=qkv.dtype)  # (B, T, H, hs) is (B, T, C) with heads side by side
    y_heads = y.transpose(0, 2, 1, 3)  # (B, H, T, hs) view the blocks write into
    probs, keeps = [], []
    key = draw_dropout_key(rng) if dropout else None  # one key for the whole (B, H, T, T) mask
    for t0 in range(0, T, query_block):
        t1 = min(t0 + query_block, T)
        att = q[:, :, t0:t1] @ k_scaled[:, :, :t1].swapaxes(-1, -2)  # (B, H, bt, t1) scores q.k / sqrt(hs)
        att += mask[t0:t1, :t1]  # -inf on the future
        att -= att.max(axis=-1, keepdims=True)  # max-subtracted softmax: exp never overflows
        np.exp(att, out=att)  # in place: the scores are not needed again
        att /= att.sum(axis=-1, keepdims=True)  # probabilities; each row sums to 1
        probs.append(att)
        if dropout:
            keep = dropout_keep(key, attention_dropout_index(B, n_head, T, t0, t1), dropout)
            keeps.append(keep)
            att = att * keep
            att *= 1.0 / (1.0 - dropout)
        np.matmul(att, v[:, :, :t1], out=y_heads[:, :, t0:t1])  # (B, H, bt, t1) @ (B, H, t1, hs)
    out = y.reshape(B, T, C)  # merge heads: a free reshape, y is contiguous
    cache = (qkv, n_head, probs, keeps if dropout else None, dropout, query_block)
    return out, cache


def attention_backward(dout, cache):
    """dout (B, T, C) -> dqkv (B, T, 3C).

    With P the probabilities and S = q k^T / sqrt(hs) the scores (D the dropout mask / (1 - p), or 1)::

        dv = (P D)^T dy      dPD = dy v^T      dP = dPD * D
        dS = P * (dP - rowsum(dP * P))                          softmax backward
        dq = dS k / sqrt(hs)      dk = dS^T q / sqrt(hs)

    Masked entries have P = 0, so dS is 0 there: no gradient flows to the future. Block by block as in
    the forward pass; every query block adds to dk and dv of the keys it saw.
    """
    qkv, n_head, probs, keeps, dropout, query_block = cache
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    scale = 1.0 / math.sqrt(hs)
    q, k, v = qkv.reshape(B, T, 3, n_head, hs).transpose(2, 0, 3, 1, 4)
    dy = dout.reshape(B, T, n_head, hs).transpose(0, 2, 1, 3)  # (B, H, T, hs)
    dqkv = np.zeros_like(qkv)  # zeros: dk and dv accumulate over query blocks
    dq, dk, dv = dqkv.reshape(B, T, 3, n_head, hs).transpose(2, 0, 3, 1, 4)  # views into dqkv
    for i, t0 in enumerate(range(0, T, query_block)):
        t1 = min(t0 + query_block, T)
        att, dy_block = probs[i], dy[:, :, t0:t1]
        datt = dy_block @ v[:, :, :t1].swapaxes(-1, -2)  # (B, H, bt, t1)
        att_used = att
        if keeps is not None:
            att_used = att * keeps[i]
            att_used *= 1.0 / (1.0 - dropout)
            datt *= keeps[i]
            datt *= 1.0 / (1.0 - dropout)
        dv[:, :, :t1] += att_used.swapaxes(-1, -2) @ dy_block
        # softmax backward, in place on datt: dS = P * (dP - sum_s dP * P)
        datt -= np.einsum("bhts,bhts->bht", datt, att)[..., None]  # row sums without a (.., T) temporary
        datt *= att
        np.matmul(datt, k[:, :, :t1], out=dq[:, :, t0:t1])  # written straight into dqkv
        dk[:, :, :t1] += datt.swapaxes(-1, -2) @ q[:, :, t0:t1]
    dq *= scale
    dk *= scale
    return dqkv


# --- softmax cross-entropy -------------------------------------------------------------------------


def checked_targets(targets, logits_shape) -> np.ndarray:
    """targets as a flat int64 array, after checking them against logits of ``logits_shape`` (..., V):
    the same leading shape, integers, each -1 (ignored) or in [0, V). (NumPy would wrap a -2 around to
    V - 2, and a compiled kernel would read outside the row.)"""
    targets = np.asarray(targets)
    V = logits_shape[-1]
    if targets.shape != tuple(logits_shape[:-1]):
        raise TinyGPTError(f"cross_entropy_forward: targets shape {targets.shape} does not match "
                           f"logits {tuple(logits_shape[:-1])}")
    if targets.size and targets.dtype.kind not in "iu":
        raise TinyGPTError(f"cross_entropy_forward: targets must be integers, got {targets.dtype}")
    t = np.ascontiguousarray(targets, dtype=np.int64).reshape(-1)
    if t.size and (t.min() < -1 or t.max() >= V):
        raise TinyGPTError(f"cross_entropy_forward: targets must be -1 or in [0, {V}), "
                           f"got [{t.min()}, {t.max()}]")
    return t


def cross_entropy_forward(logits, targets):
    """Mean softmax cross-entropy over the tokens whose target is not -1.

    logits (B, T, V), targets (B, T) int in [0, V) or -1 (ignored) -> loss (Python float)

    loss_i = logsumexp(logits_i) - logits_i[target_i] = log(s_i) - (logits_i[target_i] - m_i), with
    m_i = max(logits_i) and s_i = sum exp(logits_i - m_i) >= 1, so exp never overflows. The cache keeps m
    and s apart rather than their log-sum-exp m + log(s): rounded to the logits' dtype that sum loses log(s)
    to the size of m (float32 holds 1e4 to 5e-4, so the probabilities exp(logit - lse) of logits near 1e4
    were 1e-4 off, 4000x torch's error, and at 1e30 log(s) vanished: tied logits each got probability 1).
    Example: logits [0, 0] and target 1 give log 2 = 0.6931. If every target is -1 the loss is 0 (and so
    is its gradient), not NaN.
    """
    V = logits.shape[-1]
    z = logits.reshape(-1, V)  # (N, V) with N = B*T
    t = checked_targets(targets, logits.shape)  # (N,)
    valid = t != -1
    n_valid = int(valid.sum())
    m = z.max(axis=-1, keepdims=True)  # (N, 1)
    e = z - m
    np.exp(e, out=e)
    s = e.sum(axis=-1, keepdims=True)  # (N, 1) sum of exp(z - m)
    del e
    picked = z[np.arange(z.shape[0]), np.where(valid, t, 0)]  # (N,) logit of the target
    losses = np.where(valid, np.log(s[:, 0]) - (picked - m[:, 0]), 0.0)  # logit - max: no huge terms
    loss = float(losses.sum(dtype=np.float64)) / max(n_valid, 1)  # float64: N float32 losses can overflow
    cache = (logits, t, m, s, n_valid)
    return loss, cache


def cross_entropy_backward(dloss, cache):
    """dloss (scalar) -> dlogits (B, T, V) = dloss * (softmax(logits) - onehot(target)) / n_valid.

    softmax = exp(logits - m) / s from the forward's row max m and sum s, the row's 1 / s folded into the
    one scaling pass. Rows whose target is -1 get exactly zero gradient.
    """
    logits, t, m, s, n_valid = cache
    V = logits.shape[-1]
    scale = float(dloss) / max(n_valid, 1)
    dlogits = logits.reshape(-1, V) - m  # (N, V) logits minus their row max, all <= 0
    np.exp(dlogits, out=dlogits)  # in place: s times the softmax probabilities
    dlogits *= (scale / s).astype(logits.dtype, copy=False)  # (N, 1): the probabilities times dloss / n_valid
    valid = t != -1
    rows = np.flatnonzero(valid)
    dlogits[rows, t[rows]] -= logits.dtype.type(scale)
    dlogits[~valid] = 0.0  # set, not multiplied by 0: an inf logit there made inf - inf = nan
    return dlogits.reshape(logits.shape)
