"""Text generation: sampling controls, KV-cached decoding and streaming decode, on a params dict alone.

Everything here is a function of ``(params, config)``, picoGPT style: ``params`` is the dict of NumPy arrays
with GPT-2 names (``wte.weight``, ``h.0.attn.c_attn.weight``, ...) that ``tinygpt.model.GPT.params`` holds
and GPT-2 checkpoints store, and ``config`` anything with ``vocab_size, block_size, n_layer, n_head,
n_embd`` (a ``GPTConfig``). No model object, no autograd: generation is forward-only.

One step of generation::

    logits = model(context)[:, -1, :]                   (B, V) scores for the next token
    logits = apply_repetition_penalty(logits, seq, r)   the ids already in each row's sequence: a positive
                                                        logit / r, a negative one * r; r = 1 is off
    logits = apply_temperature(logits, T)               sharpen (T < 1) or flatten (T > 1); T = 0 is greedy
    logits = top_k_filter(logits, k)                    keep the k most likely tokens, the rest -> -inf
    logits = top_p_filter(logits, p)                    keep the smallest set holding probability >= p
    logits = min_p_filter(logits, m)                    keep tokens at least m times as likely as the top one
    next   = sample(softmax(logits))                    (B,) one token per row, from a seeded Generator

This is the order of transformers' ``generate``: the repetition penalty is a logits processor, which sees
the raw scores (and applies in greedy decoding too); temperature, top-k, top-p and min-p follow, in that
order, when sampling.

KV cache. Recomputing the whole context for every new token costs O(T) forwards of T tokens. But in a causal
transformer the keys and values of token t never change once computed (they only see tokens <= t), so we
keep them: the prompt runs once ("prefill") and fills per-layer key/value arrays preallocated to
``block_size``; every later step feeds ONE token, appends its key and value, and attends over the cache.
Past ``block_size`` the context is cropped to the last ``block_size`` tokens and the cache is RECOMPUTED
for that window at every step, not rolled: GPT-2 adds a learned absolute position embedding, so once the
window slides every token sits at a new position and every cached key/value is stale. Rolling the cache
would keep wrong values and change the tokens; recomputing keeps the cached path exactly equal to the
uncached one (``use_cache=False``), at the price of a full-window forward per token beyond block_size.
"""

from __future__ import annotations

import codecs
import math
import numbers

import numpy as np

from tinygpt.errors import TinyGPTError, is_finite, is_int, is_number, shown
from tinygpt.kernels import BACKENDS, checked_token_ids
from tinygpt.layers import (
    attention_forward,
    embedding_forward,
    gelu_erf_forward,
    gelu_forward,
    layernorm_forward,
    linear_forward,
)
from tinygpt.model import GPTConfig, param_shapes

__all__ = [
    "validate_sampling",
    "apply_repetition_penalty",
    "apply_temperature",
    "top_k_filter",
    "top_p_filter",
    "min_p_filter",
    "softmax",
    "next_token_probs",
    "sample_next",
    "new_kv_cache",
    "forward_cached",
    "forward_uncached",
    "forward_shared_context",
    "generate",
    "StreamDecoder",
    "StopStrings",
]

# Below this many decode steps the (C, V) copy of wte for the LM head costs more than it saves (see
# _lm_head_weight): the copy takes about 60 steps' worth of the time it saves per step.
_LM_HEAD_COPY_MIN_STEPS = 64
# top_p_filter sorts only this many of the most likely tokens first (all of them if these hold < p).
_TOP_P_CANDIDATES = 256


# --- sampling: pure functions on (B, V) logits -----------------------------------------------------


def validate_sampling(temperature=1.0, top_k=None, top_p=None, min_p=None, repetition_penalty=None):
    """Raise TinyGPTError unless temperature >= 0 (finite), top_k is None or an int >= 0, 0 < top_p <= 1,
    min_p is None or in [0, 1], and repetition_penalty is None or a finite number > 0."""
    if not is_number(temperature):
        raise TinyGPTError(f"temperature must be a number >= 0, got {shown(temperature)}")
    if not (is_finite(temperature) and temperature >= 0):
        raise TinyGPTError(f"temperature must be a finite number >= 0 (0 = greedy), got {shown(temperature)}")
    if top_k is not None:
        if not is_int(top_k):
            raise TinyGPTError(f"top_k must be an integer >= 0 (0 or None = off), got {shown(top_k)}")
        if top_k < 0:
            raise TinyGPTError(f"top_k must be >= 0 (0 or None = off), got {top_k}")
    if top_p is not None:
        if not is_number(top_p):
            raise TinyGPTError(f"top_p must be a number in (0, 1], got {shown(top_p)}")
        if not 0.0 < top_p <= 1.0:
            raise TinyGPTError(f"top_p must be in (0, 1] (1 = off), got {shown(top_p)}")
    if min_p is not None:
        if not is_number(min_p):
            raise TinyGPTError(f"min_p must be a number in [0, 1], got {shown(min_p)}")
        if not 0.0 <= min_p <= 1.0:  # (NaN fails it too)
            raise TinyGPTError(f"min_p must be in [0, 1] (0 or None = off), got {shown(min_p)}")
    if repetition_penalty is not None:
        if not is_number(repetition_penalty):
            raise TinyGPTError(f"repetition_penalty must be a number > 0, got {shown(repetition_penalty)}")
        if not (is_finite(repetition_penalty) and repetition_penalty > 0):
            raise TinyGPTError(f"repetition_penalty must be a finite number > 0 (1 or None = off), got "
                               f"{shown(repetition_penalty)}")


def _float_logits(logits) -> np.ndarray:
    """logits as a float array: integer logits (a hand-made example) would cut -inf and 1/T to integers."""
    logits = np.asarray(logits)
    if logits.ndim == 0 or logits.shape[-1] == 0:  # no vocabulary axis: top-k/top-p's IndexError,
        # while softmax of a 0-d array gave 1.0 and temperature 0.0 without a word
        raise TinyGPTError(f"logits must have shape (..., V) with V >= 1, got {logits.shape}")
    if logits.dtype.kind == "f":
        return logits
    if logits.dtype.kind not in "biu":  # strings, objects, complex numbers: no order to sample by
        raise TinyGPTError(f"logits must be real numbers, got an array of {logits.dtype}")
    return logits.astype(np.float64)


def apply_repetition_penalty(logits, ids, penalty):
    """Penalise the tokens each row has already seen (CTRL, Keskar et al. 2019): (..., V) -> (..., V).

    ``ids`` (..., n) are the sequences so far, prompt and generated tokens, one per row of ``logits``. For
    every id i in a row's sequence (once, however often it occurs) the logit l_i becomes

        l_i / r   if l_i > 0,        l_i * r   if l_i < 0

    and every other logit is left as it is, so r > 1 makes a seen token less likely whatever its sign
    (r < 1 rewards repetition) and r = 1 (or None) is off: the logits are returned unchanged. Ids at or past
    V (a tokenizer's ids past a model's cut vocabulary, ``vocab_limit``) cannot be drawn and are skipped.
    This is transformers' RepetitionPenaltyLogitsProcessor; the product and quotient are taken in the
    logits' dtype, as there.

    Example: ``apply_repetition_penalty([[2., -1., 3.]], [[0, 1, 1]], 2.0) -> [[1., -2., 3.]]``.
    """
    validate_sampling(repetition_penalty=penalty)
    logits = _float_logits(logits)
    if penalty is None or penalty == 1.0:
        return logits
    try:
        ids = np.asarray(ids)
    except ValueError:  # ragged rows (histories of different lengths): NumPy's "inhomogeneous shape"
        raise TinyGPTError(f"apply_repetition_penalty: the rows of ids differ in length; pad the shorter "
                           f"ones with {logits.shape[-1]} (V: ids at or past V are skipped)") from None
    if not (np.issubdtype(ids.dtype, np.integer) and ids.ndim >= 1 and ids.shape[:-1] == logits.shape[:-1]):
        raise TinyGPTError(f"apply_repetition_penalty: ids must be integers of shape (..., n) for logits of "
                           f"shape {logits.shape}, got {ids.dtype} {ids.shape}")
    if ids.size and ids.min() < 0:
        raise TinyGPTError(f"apply_repetition_penalty: token ids must be >= 0, got {ids.min()}")
    V = logits.shape[-1]
    N = logits.size // V
    ids = ids.reshape(N, ids.shape[-1])  # (N, n): n may be 0, which reshape(-1, 0) cannot infer N from
    seen = np.zeros((N, V), dtype=bool)
    rows = np.broadcast_to(np.arange(N)[:, None], ids.shape)
    inside = ids < V
    seen[rows[inside], ids[inside]] = True
    return _penalize_seen(logits.reshape(-1, V), seen, penalty).reshape(logits.shape)


def _penalize_seen(logits, seen, penalty):
    """``apply_repetition_penalty`` given each row's seen tokens as a mask: logits (N, V), seen (N, V) bool.

    generate keeps the mask up to date one token at a time, so a step costs a scan of N * V booleans and
    arithmetic on the seen tokens only, not a pass over the whole sequence.
    """
    out = np.array(logits)  # a copy, C-contiguous even for the view generate cuts to vocab_limit
    flat = out.reshape(-1)
    at = np.flatnonzero(seen)
    values = flat[at]
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        # r in the logits' dtype, as transformers multiplies a float32 tensor by it: the same bits. A zero
        # logit stays 0, where 0 * r or 0 / r gives NaN for an r that float32 rounds to inf or 0
        r = values.dtype.type(penalty)
        flat[at] = np.where(values < 0, values * r, np.where(values > 0, values / r, values))
    return out


def apply_temperature(logits, temperature):
    """Divide logits by the temperature: (..., V) -> (..., V), a new array.

    softmax(l / T): T < 1 sharpens the distribution, T > 1 flattens it, T = 1 leaves it. We compute
    ``(l - max(l)) / T`` instead: softmax ignores a per-row shift, and with the row max at 0 a tiny T gives
    -inf (probability 0) rather than inf - inf = nan. T = 0 is greedy: a point mass on the first row
    maximum (the rest -inf), as ``np.argmax`` picks it. That is the limit T -> 0 when the maximum is unique;
    with exact ties, a tiny T > 0 spreads evenly over the tied tokens, T = 0 takes the first.

    Example: ``apply_temperature([[1., 2.]], 0.5) -> [[-2., 0.]]`` (softmax [0.12, 0.88] instead of
    [0.27, 0.73] at T = 1).
    """
    validate_sampling(temperature)
    logits = _float_logits(logits)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    if temperature == 0:
        best = np.argmax(logits, axis=-1)[..., None]
        greedy = np.full_like(shifted, -np.inf)
        np.put_along_axis(greedy, best, 0.0, axis=-1)
        return greedy
    with np.errstate(over="ignore"):  # (T past float32's largest rounds to inf: handled below)
        divisor = shifted.dtype.type(temperature)
    if np.isinf(divisor):  # the limit T -> inf: uniform over the tokens still possible; x / inf gave
        # -inf / inf = NaN for a token already at -inf, with an "overflow in cast" warning first
        return np.where(shifted == -np.inf, -np.inf, 0.0).astype(shifted.dtype)
    if divisor == 0:  # T under the dtype's smallest number (float32: 1.4e-45) rounds to 0, and 0 / 0 would
        # make the row max NaN: this is T -> 0's limit, every logit below the row max at -inf
        return np.where(shifted < 0, -np.inf, 0.0).astype(shifted.dtype)
    with np.errstate(over="ignore"):  # -large / tiny T -> -inf is the intended result
        shifted /= divisor
    return shifted


def top_k_filter(logits, k):
    """Keep the k largest logits of each row, set the rest to -inf: (..., V) -> (..., V).

    ``k`` None or 0 means off (logits returned unchanged); k >= V keeps everything. A logit tied with the
    k-th largest is kept too, so the result does not depend on the order of tied tokens.

    Example: ``top_k_filter([[1., 3., 2.]], 2) -> [[-inf, 3., 2.]]``.
    """
    validate_sampling(top_k=k)
    logits = _float_logits(logits)
    V = logits.shape[-1]
    if not k or k >= V:
        return logits
    kth_largest = np.partition(logits, V - k, axis=-1)[..., V - k : V - k + 1]  # (..., 1)
    return np.where(logits < kth_largest, -np.inf, logits).astype(logits.dtype, copy=False)


def top_p_filter(logits, p):
    """Nucleus filter: keep the smallest set of most likely tokens whose probability sums to >= p.

    (..., V) -> (..., V) with the other logits -inf. ``p`` None or 1 means off. Sorted from most to least
    likely, token i is kept when the tokens before it hold less than p, so the most likely token always
    survives; tokens tied with the last one kept are kept too (order independent). This is Holtzman et al.
    (2019) and the rule of transformers' TopPLogitsWarper.

    Example: probabilities [0.5, 0.3, 0.2] with p = 0.7 keep the first two (0.5 < 0.7, then 0.8 >= 0.7).
    """
    validate_sampling(top_p=p)
    logits = _float_logits(logits)
    if p is None or p >= 1.0:
        return logits
    rows = logits.reshape(-1, logits.shape[-1])  # (N, V)
    thresholds = np.array([_nucleus_threshold(row, p) for row in rows], dtype=logits.dtype)
    thresholds = thresholds.reshape(*logits.shape[:-1], 1)  # (..., 1) smallest logit kept, per row
    return np.where(logits < thresholds, -np.inf, logits).astype(logits.dtype, copy=False)


def _nucleus_threshold(row, p):
    """The smallest logit in the nucleus of one row (V,) of logits: see ``top_p_filter``."""
    finite = row[row > -np.inf]  # tokens already masked (by top-k) have probability 0: never in the nucleus
    n = len(finite)
    shift = finite.max()
    # exp in the logits' dtype (float32's is ~10x faster than float64's), sums in float64: the running sum
    # of probabilities decides the cut
    denominator = np.exp(finite - shift).sum(dtype=np.float64)  # softmax's sum
    # The nucleus is usually a few dozen tokens of GPT-2's 50257, and sorting costs n log n; so first sort
    # only the m largest (np.partition finds them in O(n)). If they hold >= p the cut is among them;
    # otherwise (a flat distribution) sort everything.
    for m in (_TOP_P_CANDIDATES, n):
        candidates = np.partition(finite, n - m)[n - m :] if m < n // 2 else finite
        candidates = -np.sort(-candidates)  # descending: the m largest, or all n when m >= n // 2
        probs = np.exp(candidates - shift).astype(np.float64) / denominator
        mass = np.cumsum(probs)  # mass[i]: probability of the i + 1 most likely tokens
        if len(candidates) == n or mass[-1] >= p:
            break
    n_keep = np.count_nonzero(mass - probs < p)  # token i is in when the tokens before it hold < p; >= 1
    return candidates[n_keep - 1]


def min_p_filter(logits, min_p):
    """Min-p filter (Nguyen et al. 2024): keep the tokens at least ``min_p`` times as likely as the top one.

    (..., V) -> (..., V) with the other logits -inf. Token i is kept when

        p_i >= min_p * max_j p_j,   that is   exp(l_i - max_j l_j) >= min_p

    (softmax's denominator cancels), so the cut follows the model's confidence: a peaked row keeps few
    tokens, a flat one many. The most likely token (and any tied with it) always survives. ``min_p`` None
    or 0 means off; 1 keeps only the row maximum. This is transformers' MinPLogitsWarper; it is applied
    after temperature, top-k and top-p, where the top token's probability is taken among the survivors.

    Example: probabilities [0.6, 0.3, 0.1] with min_p = 0.4 keep the first two (0.3 >= 0.4 * 0.6 = 0.24).
    """
    validate_sampling(min_p=min_p)
    logits = _float_logits(logits)
    if not min_p:
        return logits
    relative = np.exp(logits - logits.max(axis=-1, keepdims=True))  # p_i / max_j p_j, in [0, 1]
    return np.where(relative < logits.dtype.type(min_p), -np.inf, logits).astype(logits.dtype, copy=False)


def softmax(logits):
    """Softmax over the last axis, max-subtracted so exp never overflows; -inf logits get probability 0."""
    logits = _float_logits(logits)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    e /= e.sum(axis=-1, keepdims=True)
    return e


def next_token_probs(logits, temperature=1.0, top_k=None, top_p=None, min_p=None):
    """The distribution ``sample_next`` draws from: temperature, top-k, top-p, min-p, then softmax.

    logits (..., V) -> probabilities (..., V), each row summing to 1, exactly 0 where a filter masked a
    token. The order is transformers': top-p's nucleus is taken from the top k, and min-p's top token and
    threshold from what top-p kept. A row with no finite maximum (a NaN or +inf logit, or every logit -inf)
    is refused with a TinyGPTError. (The repetition penalty needs the sequence, not only the logits:
    ``generate`` applies it before this.)
    """
    validate_sampling(temperature, top_k, top_p, min_p)
    logits = _float_logits(logits)
    row_max = logits.max(axis=-1).reshape(-1)  # NaN if the row has one
    if not np.isfinite(row_max).all():  # softmax would be NaN: sample_next drew the last id, top-p raised
        # NumPy's "zero-size array" ValueError; transformers' multinomial refuses such rows too
        row = int(np.flatnonzero(~np.isfinite(row_max))[0])
        raise TinyGPTError(f"the logits of row {row} have no finite maximum ({row_max[row]}): a NaN or +inf "
                           "logit, or every logit -inf, leaves no distribution to sample from")
    logits = apply_temperature(logits, temperature)
    logits = top_k_filter(logits, top_k)
    logits = top_p_filter(logits, top_p)
    logits = min_p_filter(logits, min_p)
    return softmax(logits)


def sample_next(logits, rng, temperature=1.0, top_k=None, top_p=None, min_p=None):
    """Draw one token per row: logits (B, V) -> ids (B,) int64.

    temperature 0 is greedy: the argmax, no random number drawn. Otherwise inverse-CDF sampling: one
    uniform draw u per row, and the token whose interval of the cumulative distribution contains u. A token
    of probability 0 has an empty interval and is never drawn; and every step consumes exactly B numbers
    of ``rng`` whatever the filters, so two runs (cached or not) stay in step.
    """
    validate_sampling(temperature, top_k, top_p, min_p)
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[1] == 0:  # (V,) logits drew V tokens and ended in an IndexError
        raise TinyGPTError(f"sample_next: logits must have shape (B, V) with V >= 1, got {logits.shape}")
    if temperature == 0:
        return np.argmax(logits, axis=-1).astype(np.int64)
    if not isinstance(rng, np.random.Generator):  # (greedy draws nothing: it needs none)
        raise TinyGPTError(f"sample_next: rng must be a numpy.random.Generator, got {type(rng).__name__}")
    probs = next_token_probs(logits, temperature, top_k, top_p, min_p)  # (B, V)
    u = rng.random(probs.shape[0])  # (B,) uniform in [0, 1)
    ids = np.empty(len(u), dtype=np.int64)
    for b in range(len(u)):
        # Only the support: after top-k/top-p/min-p a few dozen tokens, so the float64 running sum is short.
        support = np.flatnonzero(probs[b])  # the tokens with probability > 0, in vocabulary order
        cdf = probs[b, support].astype(np.float64).cumsum()  # non-decreasing, cdf[-1] ~ 1
        i = np.searchsorted(cdf, u[b] * cdf[-1], side="right")  # first cdf > u: u falls in token i's interval
        ids[b] = support[min(i, len(support) - 1)]  # u * cdf[-1] can round up to cdf[-1] itself
    return ids


# --- the forward pass for inference -----------------------------------------------------------------


def _check_params(params, config):
    if not isinstance(config, GPTConfig):  # (a dict, say: an AttributeError on n_layer)
        raise TinyGPTError(f"config must be a GPTConfig, got {type(config).__name__}")
    if not isinstance(params, dict):
        raise TinyGPTError(f"params must be a dict of name -> array, got {type(params).__name__}")
    required = ["wte.weight", "wpe.weight", "ln_f.weight"]
    for i in range(config.n_layer):
        required += [f"h.{i}.{name}.weight" for name in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2")]
        required += [f"h.{i}.mlp.c_fc.weight", f"h.{i}.mlp.c_proj.weight"]
    missing = [name for name in required if name not in params]
    if missing:
        raise TinyGPTError(f"params lack {len(missing)} GPT-2 weights, e.g. {missing[0]!r}")
    if config.n_embd % config.n_head:
        raise TinyGPTError(f"n_embd {config.n_embd} is not divisible by n_head {config.n_head}")
    wte_shape, wpe_shape = np.shape(params["wte.weight"]), np.shape(params["wpe.weight"])
    if wte_shape != (config.vocab_size, config.n_embd):
        expected = (config.vocab_size, config.n_embd)
        raise TinyGPTError(f"wte.weight has shape {wte_shape}, the config says {expected}")
    if len(wpe_shape) != 2 or wpe_shape[0] < config.block_size or wpe_shape[1] != config.n_embd:
        raise TinyGPTError(f"wpe.weight has shape {wpe_shape}: too few positions or the wrong width for "
                           f"block_size {config.block_size}, n_embd {config.n_embd}")
    # every other weight and bias there (biases are used where present) against the config's shapes, and
    # floating point: a transposed c_attn or a short bias was NumPy's reshape or broadcast error mid-step,
    # integer weights a casting error, a list an AttributeError
    expected = param_shapes(GPTConfig(**{**config.to_dict(), "bias": True}))
    for name, shape in expected.items():
        if name not in params:
            continue
        value = params[name]
        if not (isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating)):
            kind = f"an array of {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__
            raise TinyGPTError(f"params[{name!r}] must be a floating-point NumPy array, got {kind}")
        if name != "wpe.weight" and value.shape != shape:
            raise TinyGPTError(f"params[{name!r}] has shape {value.shape}, the config says {shape}")


def new_kv_cache(config, batch_size, dtype=np.float32, length=None):
    """Keys and values of every layer, preallocated to the full context: (n_layer, 2, B, H, block_size, hs).

    ``cache[i, 0]`` holds layer i's keys, ``cache[i, 1]`` its values; position t lives at ``[..., t, :]``.
    One allocation up front means no array grows or is copied while decoding. float32, 6 layers, 384 wide,
    block 1024: 18.9 MB per sequence. ``length`` (at most block_size) holds positions 0..length-1 only, for
    a caller that knows how far it will go (``forward_shared_context``).
    """
    hs = config.n_embd // config.n_head
    length = config.block_size if length is None else length
    shape = (config.n_layer, 2, batch_size, config.n_head, length, hs)
    return np.empty(shape, dtype=dtype)


def _cached_attention(qkv, kv, pos, n_head):
    """Attention of T new tokens at positions pos..pos+T-1 over the cache, after appending their keys/values.

    qkv (B, T, 3C), kv (2, B, H, L, hs), one layer's cache of L >= pos + T positions (block_size, or
    ``new_kv_cache``'s ``length``) -> (B, T, C). The new keys and values are written into
    ``kv[:, :, :, pos:pos+T]``; query i attends to keys 0..pos+i (causal), all from the cache.
    """
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    q, k, v = qkv.reshape(B, T, 3, n_head, hs).transpose(2, 0, 3, 1, 4)  # 3 x (B, H, T, hs) views
    end = pos + T
    kv[0, :, :, pos:end] = k
    kv[1, :, :, pos:end] = v
    keys = kv[0, :, :, :end]  # (B, H, end, hs) views of the cache, nothing copied
    values = kv[1, :, :, :end]
    att = (q * (1.0 / math.sqrt(hs))) @ keys.swapaxes(-1, -2)  # (B, H, T, end); scaling q costs T*hs
    if T > 1:  # prefill: query i must not see keys after pos + i; one new token sees the whole cache
        att += np.triu(np.full((T, end), -np.inf, dtype=att.dtype), k=pos + 1)
    att -= att.max(axis=-1, keepdims=True)
    np.exp(att, out=att)
    att /= att.sum(axis=-1, keepdims=True)
    y = att @ values  # (B, H, T, hs)
    return y.transpose(0, 2, 1, 3).reshape(B, T, C)


def _check_backend(backend) -> None:
    if backend not in BACKENDS:
        raise TinyGPTError(f"backend must be one of {', '.join(BACKENDS)}, got {shown(backend)}")


def _mlp_gelu(config, backend: str):
    """The MLP's GELU for the decoder: GPTConfig.gelu's, NumPy's, except the exact one off the reference.

    The exact GELU x Phi(x) has no NumPy ufunc: the reference calls math.erfc element by element, some 130
    ns an element against 14 for the compiled kernel (a (1024, 3072) float32 array on the development
    machine), so a 1024-token prompt to a GPT-2-sized nanoGPT checkpoint spent seconds in it. With any
    backend but "numpy" the decoder takes the Numba CPU kernel instead (decoding runs on the host, the cuda
    backend's too; Numba is a hard dependency). Both take erfc in float64; the kernel rounds x Phi(x) to
    float32 once where NumPy rounds Phi first, so in float32 a fifth of the outputs differ by an ulp, and in
    float64 none. The tanh form is a few NumPy passes already and stays the reference's.
    """
    if getattr(config, "gelu", "tanh") != "erf":  # (GPTConfig.gelu; a bare config is GPT-2's)
        return gelu_forward
    if backend == "numpy":
        return gelu_erf_forward
    from tinygpt.kernels import cpu

    return cpu.gelu_erf_forward


def _transformer(params, config, x, attention, backend="numpy"):
    """The residual stream through every block: x (B, T, C) -> (B, T, C), x updated in place (ln_f is the
    caller's).

    ``attention(i, qkv)`` is layer i's causal self-attention, (B, T, 3C) -> (B, T, C): the only part in
    which the cached and the uncached forward passes differ. ``backend`` picks the GELU (``_mlp_gelu``).
    """
    gelu = _mlp_gelu(config, backend)
    for i in range(config.n_layer):
        p = f"h.{i}."
        h, _ = layernorm_forward(x, params[p + "ln_1.weight"], params.get(p + "ln_1.bias"))
        qkv, _ = linear_forward(h, params[p + "attn.c_attn.weight"], params.get(p + "attn.c_attn.bias"))
        y, _ = linear_forward(
            attention(i, qkv), params[p + "attn.c_proj.weight"], params.get(p + "attn.c_proj.bias")
        )
        x += y  # residual, in place: x is ours
        h, _ = layernorm_forward(x, params[p + "ln_2.weight"], params.get(p + "ln_2.bias"))
        h, _ = linear_forward(h, params[p + "mlp.c_fc.weight"], params.get(p + "mlp.c_fc.bias"))  # (B, T, 4C)
        h, _ = gelu(h)
        h, _ = linear_forward(h, params[p + "mlp.c_proj.weight"], params.get(p + "mlp.c_proj.bias"))
        x += h
    return x


def _last_logits(params, x, lm_head=None):
    """ln_f and the tied LM head on the last position only: x (B, T, C) -> logits (B, V).

    Generation needs the next-token scores alone; the other T-1 rows of the (T, C) @ (C, V) head would be
    wasted work, by far the largest matmul of the model.
    """
    x_last, _ = layernorm_forward(x[:, -1, :], params["ln_f.weight"], params.get("ln_f.bias"))  # (B, C)
    return x_last @ (params["wte.weight"].T if lm_head is None else lm_head)  # (B, C) @ (C, V)


def forward_cached(params, config, idx, kv_cache, pos, lm_head=None, backend="numpy"):
    """Run T new tokens at positions pos..pos+T-1 through the model, reading and extending the KV cache.

    idx (B, T) int, kv_cache from ``new_kv_cache`` holding positions 0..pos-1 -> logits (B, V) of the LAST
    new token (the next-token scores). Prefill is ``pos=0`` with the whole prompt; a decode step is
    ``pos=t`` with one token. ``lm_head`` is the (C, V) unembedding, ``wte.T`` (a view) when None.
    ``backend`` other than "numpy" runs the exact GELU compiled (see ``generate``).
    """
    _check_backend(backend)
    # as the uncached path's embedding_forward checks them: an id of -1 read wte's last row
    idx = checked_token_ids(idx, config.vocab_size, config.block_size)
    B, T = idx.shape
    if not is_int(pos) or pos < 0:
        raise TinyGPTError(f"forward_cached: pos must be an integer >= 0, got {shown(pos)}")
    if pos + T > config.block_size:
        raise TinyGPTError(f"positions up to {pos + T} exceed block_size {config.block_size}")
    x = params["wte.weight"][idx]  # (B, T, C)
    x += params["wpe.weight"][pos : pos + T]  # the absolute positions of the new tokens

    def attention(i, qkv):
        return _cached_attention(qkv, kv_cache[i], pos, config.n_head)

    return _last_logits(params, _transformer(params, config, x, attention, backend), lm_head)


def forward_uncached(params, config, idx, backend="numpy"):
    """The reference: the full forward pass of ``tinygpt.layers`` over idx, nothing cached.

    idx (B, T) int with T <= block_size -> logits (B, V) of the last position. Full causal attention over
    the whole window (``layers.attention_forward``, the training model's), so generating with
    ``use_cache=False`` checks the KV cache against it. ``backend`` as in ``forward_cached``.
    """
    _check_backend(backend)
    x, _ = embedding_forward(idx, params["wte.weight"], params["wpe.weight"])  # (B, T, C)

    def attention(i, qkv):
        return attention_forward(qkv, config.n_head)[0]

    return _last_logits(params, _transformer(params, config, x, attention, backend))


def forward_shared_context(params, config, context, continuations, backend="numpy"):
    """The final hidden states (ln_f's output) of one context and of B continuations of it, the context
    computed once: what B rows of context + continuation through the full forward would give, without the
    context's work B times.

    context (T_c,) int, continuations (B, T) int, T_c + T <= block_size -> (context hidden (T_c, C),
    continuation hidden (B, T, C)), continuation token j at position T_c + j. The context runs as a prefill
    of batch 1 into a KV cache of B rows; its keys and values are then copied to the other rows, and the
    continuations run as one batch at position T_c over them (``_cached_attention``: each sees the context
    and its own earlier tokens). The copy is n_layer x 2 x (B - 1) x T_c x C floats, a small part of the T_c
    tokens' forward it replaces B - 1 times. ``backend`` as in ``forward_cached``.
    """
    _check_backend(backend)
    try:  # (one at a time: a ragged context's error blamed the continuations' rows)
        context = np.asarray(context)
    except ValueError:  # nested rows of different lengths: NumPy's "inhomogeneous shape" error
        raise TinyGPTError("forward_shared_context: the context must be one sequence of token ids, got rows "
                           "of different lengths") from None
    try:
        continuations = np.asarray(continuations)
    except ValueError:  # ragged rows: NumPy's "inhomogeneous shape" error
        raise TinyGPTError("forward_shared_context: the continuations' rows differ in length; pad the "
                           "shorter ones (a row's padding is read by none of its earlier tokens)") from None
    if context.ndim != 1:  # (a (2, 3) context was flattened into one of 6 tokens, a scalar taken as one)
        raise TinyGPTError("forward_shared_context: the context must be one sequence of token ids, got "
                           f"shape {context.shape}")
    # counted before the ids are checked: an empty list is a float64 array, which the check called "not a
    # (B, T) integer array" of embedding_forward's, where what is wrong is that nothing was given
    T_c, B = context.size, len(continuations) if continuations.ndim else 1
    if T_c == 0 or B == 0:
        raise TinyGPTError(f"forward_shared_context: needs a context and a continuation, got {T_c} context "
                           f"tokens and {B} continuations")
    if continuations.ndim != 2:
        raise TinyGPTError(f"forward_shared_context: continuations must be a (B, T) array of token ids, got "
                           f"shape {continuations.shape}")
    if not continuations.size:  # (B, 0), which NumPy makes float64 of [[], []]: each continuation one token
        continuations = continuations.astype(np.int64)  # that only the context's last position predicts
    context = checked_token_ids(context.reshape(1, -1), config.vocab_size, config.block_size)
    continuations = checked_token_ids(continuations, config.vocab_size, config.block_size)
    T = continuations.shape[1]
    if T_c + T > config.block_size:
        raise TinyGPTError(f"positions up to {T_c + T} exceed block_size {config.block_size}")
    wte, wpe = params["wte.weight"], params["wpe.weight"]
    kv_cache = new_kv_cache(config, B, dtype=wte.dtype, length=T_c + T)

    def context_attention(i, qkv):  # batch 1, written into the cache's first row (a view of it)
        return _cached_attention(qkv, kv_cache[i, :, :1], 0, config.n_head)

    x = _transformer(params, config, wte[context] + wpe[:T_c], context_attention, backend)  # (1, T_c, C)
    context_hidden, _ = layernorm_forward(x[0], params["ln_f.weight"], params.get("ln_f.bias"))
    C = config.n_embd
    if T == 0:  # (each continuation a single token, which only the context's last position predicts)
        return context_hidden, np.empty((B, 0, C), dtype=context_hidden.dtype)
    kv_cache[:, :, 1:, :, :T_c] = kv_cache[:, :, :1, :, :T_c]

    def attention(i, qkv):
        return _cached_attention(qkv, kv_cache[i], T_c, config.n_head)

    x = _transformer(params, config, wte[continuations] + wpe[T_c : T_c + T], attention, backend)
    hidden, _ = layernorm_forward(x, params["ln_f.weight"], params.get("ln_f.bias"))  # (B, T, C)
    return context_hidden, hidden


def _lm_head_weight(wte, n_steps):
    """The (C, V) matrix for ``logits = x @ W``: a C-contiguous copy of wte.T when decoding long enough.

    The LM head is the biggest matmul of a decode step: (B, C) @ (C, V), for GPT-2's V = 50257 at
    C = 384 a 77 MB float32 matrix streamed from memory for every token. On the transposed view ``wte.T``
    OpenBLAS walks it with stride C between consecutive outputs; on a C-contiguous (C, V) copy it reads
    each row once, in order, which we measured at 2.5 ms instead of 3.8 ms per token. The copy itself takes
    about 80 ms (roughly 60 tokens' worth of saving), so short generations keep the view.
    """
    if n_steps >= _LM_HEAD_COPY_MIN_STEPS:
        return np.ascontiguousarray(wte.T)
    return wte.T


def _check_idx(idx, vocab_size):
    try:
        idx = np.asarray(idx)
    except ValueError:  # ragged rows
        raise TinyGPTError("idx must be a (B, T) array of token ids; its rows differ in length") from None
    if idx.ndim == 1:
        idx = idx[None, :]
    if idx.ndim != 2 or idx.shape[1] == 0 or idx.shape[0] == 0:
        raise TinyGPTError(f"idx must be a (B, T) array of token ids with B, T >= 1, got shape {idx.shape}")
    if not np.issubdtype(idx.dtype, np.integer):
        raise TinyGPTError(f"idx must hold integer token ids, got dtype {idx.dtype}")
    if idx.min() < 0 or idx.max() >= vocab_size:
        raise TinyGPTError(f"token ids must be in [0, {vocab_size}), got {idx.min()}..{idx.max()}")
    return idx.astype(np.int64)


def generate(
    params,
    config,
    idx,
    max_new_tokens,
    temperature=1.0,
    top_k=None,
    top_p=None,
    seed=None,
    eos_token=None,
    on_token=None,
    use_cache=True,
    vocab_limit=None,
    min_p=None,
    repetition_penalty=None,
    backend="numpy",
):
    """Continue B prompts of equal length by up to ``max_new_tokens`` tokens each.

    idx (B, T) int (or (T,), taken as B = 1) -> (B, T + n) int64, the prompts followed by the n new tokens.

    - ``temperature`` 0 is greedy (argmax); ``top_k`` None/0, ``top_p`` None/1 and ``min_p`` None/0 are
      off; they apply in transformers' order, temperature, top-k, top-p, min-p (see ``next_token_probs``).
    - ``repetition_penalty`` r (None/1 = off) divides the positive logits of every id already in a row's
      sequence by r and multiplies its negative ones by r (``apply_repetition_penalty``), before
      temperature and the filters, in greedy decoding too. The sequence is all of the row: the whole
      prompt, even where it was cropped to block_size, and every token generated.
    - ``seed``: an int or a ``numpy.random.Generator`` (drawn from and advanced); None draws fresh entropy.
    - ``eos_token``: a row that produces it is finished; its later positions are filled with eos_token
      (the padding), and generation stops early, n < max_new_tokens, once every row has finished.
    - ``on_token(ids)`` is called after every step with the (B,) new tokens, for streaming; when it returns
      True (or ``np.True_``) generation ends there, for every row (``tinygpt sample --stop`` ends on a stop
      string so).
    - ``use_cache=False`` recomputes the full forward (``forward_uncached``) for every token: the reference
      the KV cache must match, and the baseline of its speed-up.
    - ``vocab_limit``: sample only ids below it, for a model whose vocabulary was padded past its
      tokenizer's (nanoGPT pads GPT-2's 50,257 to 50,304 for speed): the padding ids have no text.
    - ``backend``: the model's layer backend. Decoding is this module's NumPy code on every backend; any
      but "numpy" swaps in one compiled kernel, the exact GELU of ``GPTConfig(gelu="erf")`` (nanoGPT's
      checkpoints), which the NumPy reference computes element by element in Python's math.erfc, 10x slower.

    Prompts longer than ``block_size`` are cropped to their last block_size tokens, as is the context once
    it outgrows block_size (see the module docstring for how the cache follows).
    """
    validate_sampling(temperature, top_k, top_p, min_p, repetition_penalty)
    _check_backend(backend)
    if not is_int(max_new_tokens) or max_new_tokens < 0:
        raise TinyGPTError(f"max_new_tokens must be an integer >= 0, got {shown(max_new_tokens)}")
    _check_params(params, config)
    idx = _check_idx(idx, config.vocab_size)
    if eos_token is not None and not (is_int(eos_token) and 0 <= eos_token < config.vocab_size):
        raise TinyGPTError(f"eos_token {eos_token} is not a token id in [0, {config.vocab_size})")
    if vocab_limit is not None and not (is_int(vocab_limit) and 0 < vocab_limit <= config.vocab_size):
        raise TinyGPTError(f"vocab_limit must be an integer in [1, {config.vocab_size}], "
                           f"got {shown(vocab_limit)}")
    if eos_token is not None and vocab_limit is not None and eos_token >= vocab_limit:
        raise TinyGPTError(f"eos_token {eos_token} is at or past vocab_limit {vocab_limit}")
    if not (seed is None or isinstance(seed, np.random.Generator) or (is_int(seed) and seed >= 0)):
        raise TinyGPTError("seed must be an integer >= 0, a numpy.random.Generator or None, "
                           f"got {shown(seed)}")
    rng = np.random.default_rng(seed)  # a Generator passes through unchanged

    B, T = idx.shape
    block = config.block_size
    # the output grows as tokens come (a huge max_new_tokens that eos ends early must not be allocated)
    out = np.empty((B, T + min(max_new_tokens, 1024)), dtype=np.int64)
    out[:, :T] = idx
    finished = np.zeros(B, dtype=bool)
    if use_cache:
        wte = params["wte.weight"]
        lm_head = _lm_head_weight(wte, B * max_new_tokens)
        kv_cache = new_kv_cache(config, B, dtype=wte.dtype)
        cached = 0  # at the top of a step, cache positions 0..cached-1 hold tokens out[:, n-1-cached : n-1]
    penalize = repetition_penalty is not None and repetition_penalty != 1.0  # (off: no work per token)
    if penalize:  # seen[b, i]: id i is in row b's sequence; kept up to date as tokens come
        seen = np.zeros((B, vocab_limit or config.vocab_size), dtype=bool)
        inside = idx < seen.shape[1]  # prompt ids past vocab_limit have no logit to penalise
        seen[np.nonzero(inside)[0], idx[inside]] = True
    n = T
    for _ in range(max_new_tokens):
        start = max(0, n - block)  # the context window: the last block_size tokens
        if not use_cache:
            logits = forward_uncached(params, config, out[:, start:n], backend)
        elif start == 0 and cached == n - 1:  # the cache holds all but the newest token: one decode step
            logits = forward_cached(params, config, out[:, n - 1 : n], kv_cache, cached, lm_head, backend)
            cached = n
        else:  # the prompt, or a window that slid: (re)fill the cache for the whole window
            logits = forward_cached(params, config, out[:, start:n], kv_cache, 0, lm_head, backend)
            cached = n - start
        if vocab_limit is not None:
            logits = logits[:, :vocab_limit]
        if penalize:
            logits = _penalize_seen(logits, seen, repetition_penalty)
        next_ids = sample_next(logits, rng, temperature, top_k, top_p, min_p)  # (B,)
        if eos_token is not None:
            next_ids[finished] = eos_token  # finished rows are padded with eos
            finished |= next_ids == eos_token
        if n == out.shape[1]:  # full: double the room, up to what max_new_tokens can still need
            room = min(out.shape[1], T + max_new_tokens - n)
            out = np.concatenate([out, np.empty((B, room), dtype=np.int64)], axis=1)
        out[:, n] = next_ids
        if penalize:
            seen[np.arange(B), next_ids] = True
        n += 1
        # True ends it, NumPy's too (a callback's np.all(ids == stop)); a count or a list's None goes on
        if on_token is not None and ((done := on_token(next_ids.copy())) is True or done is np.True_):
            break
        if eos_token is not None and finished.all():
            break
    return out[:, :n]


# --- streaming decode --------------------------------------------------------------------------------


class StreamDecoder:
    """Token ids in, text out, as they arrive, never splitting a character.

    A byte-level BPE token need not end on a character boundary: GPT-2 writes the 4 UTF-8 bytes of an emoji
    as 2 or 3 tokens, and decoding each token alone would print replacement characters (U+FFFD). This
    decoder turns ids into bytes with ``tokenizer.decode_bytes`` and feeds them to an incremental UTF-8
    decoder, which returns every complete character and holds back the bytes of an unfinished one until
    a later push completes it (the example below holds them for two pushes). Bytes that can never be valid
    UTF-8 become U+FFFD, as in ``tokenizer.decode``; ``flush()`` ends the stream (an unfinished character
    left then becomes U+FFFD).

    Example (GPT-2): ``"🤖"`` is tokens [8582, 97, 244]; ``push(8582) -> ""``, ``push(97) -> ""``,
    ``push(244) -> "🤖"``. The concatenation of all pushes and the flush equals ``tokenizer.decode(ids)``.
    """

    def __init__(self, tokenizer):
        # ("gpt2" or None: an AttributeError at the first push, once a sample had started)
        if not callable(getattr(tokenizer, "decode_bytes", None)):
            raise TinyGPTError(f"StreamDecoder needs a tokenizer (with decode_bytes), got "
                               f"{type(tokenizer).__name__}")
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, ids):
        """Add one id or a sequence of ids; return the newly completed text (possibly "")."""
        if isinstance(ids, numbers.Integral):
            ids = [ids]  # (a bool is Integral too: decode_bytes refuses it, as decode does)
        elif isinstance(ids, np.ndarray):
            ids = ids.reshape(-1)
        return self._utf8.decode(self.tokenizer.decode_bytes(ids))  # validates the ids as decode does

    def flush(self):
        """End the stream: return what is still held back (U+FFFD for an unfinished character)."""
        return self._utf8.decode(b"", final=True)


class StopStrings:
    """Streamed text in, the text before the first stop string out: what ``tinygpt sample --stop`` prints.

    The text ends where a stop string is first completed (the earliest end; of two ending there, the
    longer), and the stop string itself is not returned. Streaming, a push may end inside what could
    become a stop string: that tail is held back until later text completes the stop string (dropped) or
    rules it out (returned); ``flush()`` returns what is held at the end. The concatenation of the pushes
    and the flush depends only on the text, not on how it was cut into pushes.

    Example: at a blank line; the first push's newline is held back, the last push completes the stop:

    >>> stop = StopStrings(["\\n\\n"])
    >>> stop.push("To be,\\n"), stop.push("or not"), stop.push("\\n\\nNext"), stop.stopped, stop.flush()
    ('To be,', '\\nor not', '', True, '')
    """

    def __init__(self, stops):
        self.stops = list(stops) if isinstance(stops, (list, tuple)) else None  # (a str: its characters)
        if not self.stops or not all(isinstance(stop, str) and stop for stop in self.stops):
            raise TinyGPTError(f"stop strings must be a list of non-empty strings, got {stops!r:.80}")
        self.stopped = False
        self._held = ""

    def push(self, text: str) -> str:
        """Add text; return the part of it (and of what was held) now known to come before any stop."""
        if self.stopped:
            return ""
        text = self._held + text
        # the stop completed first: the earliest end, then the earliest start (a longer one ending there);
        # none can end inside the held part, which is shorter than every stop it is a prefix of
        ends = [(i + len(stop), i) for stop in self.stops if (i := text.find(stop)) >= 0]
        if ends:
            self.stopped, self._held = True, ""
            return text[: min(ends)[1]]
        # hold back the longest tail that begins some stop string: the next push may complete it
        held = max((k for stop in self.stops for k in range(1, min(len(stop), len(text) + 1))
                    if text.endswith(stop[:k])), default=0)
        self._held = text[len(text) - held :]
        return text[: len(text) - held]

    def flush(self) -> str:
        """End the stream: return the held tail (no stop string came to complete it)."""
        held, self._held = self._held, ""
        return "" if self.stopped else held
