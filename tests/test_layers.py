"""Every layer's backward pass against float64 central differences, plus the pitfalls each layer invites."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygpt import layers
from tinygpt.errors import TinyGPTError
from tinygpt.gradcheck import assert_gradcheck, gradcheck, numerical_gradient, relative_error

TOL = 1e-6  # a correct float64 backward lands near 1e-9; a wrong one near 1e-1


def rng_for(seed=0):
    return np.random.default_rng(seed)


# --- gradient checks of every layer ---------------------------------------------------------------


def test_embedding_gradcheck_with_repeated_ids():
    rng = rng_for(1)
    idx = np.array([[3, 1, 3, 3], [0, 3, 2, 1]])  # id 3 appears four times
    wte, wpe = rng.standard_normal((5, 6)), rng.standard_normal((7, 6))
    assert_gradcheck(
        layers.embedding_forward, layers.embedding_backward, {"idx": idx, "wte": wte, "wpe": wpe}, TOL
    )


def test_embedding_gradient_accumulates_repeated_ids():
    idx = np.array([[2, 2, 2]])
    dout = np.arange(9, dtype=np.float64).reshape(1, 3, 3)
    _, cache = layers.embedding_forward(idx, np.zeros((4, 3)), np.zeros((5, 3)))
    dwte, dwpe = layers.embedding_backward(dout, cache)
    np.testing.assert_array_equal(dwte[2], dout[0].sum(axis=0))  # all three, not just the last
    np.testing.assert_array_equal(dwte[[0, 1, 3]], 0.0)
    np.testing.assert_array_equal(dwpe[:3], dout[0])
    np.testing.assert_array_equal(dwpe[3:], 0.0)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_embedding_refuses_ids_it_would_wrap_or_index_past(backend):
    # guards: the NumPy reference indexed wte[-1] (the last token's row, silently: -1 only ignores TARGETS),
    # and failed on id V, on T > block_size or on float ids with NumPy's IndexError / ValueError, where the
    # numba kernel says what is wrong in one TinyGPTError
    from tinygpt.kernels import get_ops

    ops = get_ops(backend)
    wte, wpe = np.zeros((5, 4), np.float32), np.zeros((3, 4), np.float32)
    for idx, message in ((np.array([[0, -1]]), r"token ids must be in \[0, 5\), got \[-1, 0\]"),
                         (np.array([[0, 5]]), r"token ids must be in \[0, 5\), got \[0, 5\]"),
                         (np.zeros((1, 4), int), "exceeds block_size 3"),
                         (np.array([[1.0]]), "integer array"), (np.array([0, 1]), "integer array")):
        with pytest.raises(TinyGPTError, match=message):
            ops.embedding_forward(idx, wte, wpe)


def test_gradcheck_takes_transposed_inputs():
    # its private copies kept a Fortran-ordered input's order, which it could not perturb in place
    rng = np.random.default_rng(0)
    x, weight = rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 4)).T  # weight (4, 5), F-ordered
    errors = assert_gradcheck(layers.linear_forward, layers.linear_backward,
                              {"x": x, "weight": weight, "bias": rng.standard_normal(5)})
    assert errors["weight"] < 1e-7


@pytest.mark.parametrize("with_bias", [True, False])
def test_layernorm_gradcheck(with_bias):
    rng = rng_for(2)
    x = rng.standard_normal((2, 3, 8)) * 3 + 1
    w = rng.standard_normal(8)
    b = rng.standard_normal(8) if with_bias else None
    errors = assert_gradcheck(
        layers.layernorm_forward, layers.layernorm_backward, {"x": x, "weight": w, "bias": b}, TOL
    )
    assert set(errors) == ({"x", "weight", "bias"} if with_bias else {"x", "weight"})
    dbias = layers.layernorm_backward(x, layers.layernorm_forward(x, w, b)[1])[2]
    assert (dbias is None) == (not with_bias)  # no bias, no gradient: not a (C,) sum nobody asked for


@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_gradcheck(with_bias):
    rng = rng_for(3)
    x, w = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5))
    b = rng.standard_normal(5) if with_bias else None
    assert_gradcheck(layers.linear_forward, layers.linear_backward, {"x": x, "weight": w, "bias": b}, TOL)
    out, cache = layers.linear_forward(x, w, b)
    dbias = layers.linear_backward(out, cache)[2]
    assert (dbias is None) == (not with_bias)  # no bias, no gradient: not an (out,) sum nobody asked for


def test_gelu_gradcheck():
    x = np.linspace(-5, 5, 41).reshape(1, 41) + rng_for(4).standard_normal((3, 41)) * 0.1
    assert_gradcheck(layers.gelu_forward, layers.gelu_backward, {"x": x}, TOL)


def test_gelu_erf_gradcheck():
    x = np.linspace(-9, 9, 61).reshape(1, 61) + rng_for(4).standard_normal((3, 61)) * 0.1
    assert_gradcheck(layers.gelu_erf_forward, layers.gelu_erf_backward, {"x": x}, TOL)


@pytest.mark.parametrize("query_block", [64, 2, 3])  # one block; several; several with a ragged last
def test_attention_gradcheck(query_block):
    rng = rng_for(5)
    qkv = rng.standard_normal((2, 7, 3 * 8))
    kwargs = {"n_head": 2, "query_block": query_block}
    errors = assert_gradcheck(layers.attention_forward, layers.attention_backward, {"qkv": qkv}, TOL,
                              kwargs=kwargs)
    assert errors["qkv"] < 1e-8  # gradcheck's default eps = 1e-6 gives 3e-10 here; eps = 1e-3 gave 1e-7


def test_attention_with_dropout_gradcheck():
    qkv = rng_for(6).standard_normal((2, 6, 3 * 8))

    def forward(qkv):  # a fresh, identically seeded rng: the same dropout mask on every call
        return layers.attention_forward(
            qkv, n_head=2, dropout=0.3, rng=np.random.default_rng(7), query_block=4
        )

    out, cache = forward(qkv)
    keeps = cache[3]
    assert len(keeps) == 2 and not all(keep.all() for keep in keeps)  # some probabilities really are dropped
    assert_gradcheck(forward, layers.attention_backward, {"qkv": qkv}, TOL)


def test_dropout_gradcheck_and_mask():
    x = rng_for(8).standard_normal((4, 10))

    def forward(x):
        return layers.dropout_forward(x, 0.4, np.random.default_rng(9))

    out, (keep, p) = forward(x)
    np.testing.assert_allclose(out, np.where(keep, x / 0.6, 0.0))
    assert 0 < keep.sum() < keep.size
    assert_gradcheck(forward, layers.dropout_backward, {"x": x}, TOL)


def _lowbias32(x: int) -> int:
    """lowbias32 in Python's unbounded ints, masked by hand: an independent statement of the mixer."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_dropout_bits_are_lowbias32_of_the_index_halves_and_key():
    values = rng_for(20).integers(0, 2**32, 2000, dtype=np.uint64)
    assert layers.hash32(values.astype(np.uint32)).tolist() == [_lowbias32(int(v)) for v in values]
    assert layers.hash32(np.array([0, 1, 2], np.uint32)).tolist() == [0, 1753845952, 3507691905]
    key = layers.draw_dropout_key(np.random.default_rng(3))
    index = np.array([0, 1, 2**32 - 1, 2**32, 2**32 + 5, 3 * 2**40 + 7], np.uint64)  # both halves count
    expected = [_lowbias32(_lowbias32((i & 0xFFFFFFFF) ^ _lowbias32((i >> 32) ^ key)) ^ key)
                for i in map(int, index)]
    assert layers.dropout_bits(key, index).tolist() == expected
    assert len(set(expected)) == len(expected)


def test_dropout_masks_keep_one_minus_p_independently_of_the_position_and_the_key():
    index = np.arange(1_000_000, dtype=np.uint64)
    keys = [layers.draw_dropout_key(np.random.default_rng(seed)) for seed in (1, 2)]
    for p in (0.1, 0.5):
        kept = layers.dropout_keep(keys[0], index, p)
        sigma = math.sqrt(p * (1 - p) / index.size)
        assert abs(kept.mean() - (1 - p)) < 5 * sigma
        # neighbours and other keys: agreement as for independent draws, p^2 + (1 - p)^2
        for other in (kept[1:], layers.dropout_keep(keys[1], index, p)[:-1]):
            agree = (kept[:-1] == other).mean()
            assert abs(agree - (p * p + (1 - p) ** 2)) < 10 * sigma
    bits = layers.dropout_bits(keys[0], index).astype(np.float64) / 2**32
    assert abs(np.corrcoef(bits[:-1], bits[1:])[0, 1]) < 0.005
    assert layers.dropout_threshold(0.0) == 0 and layers.dropout_threshold(0.25) == 2**30


def test_dropout_keeps_an_entry_iff_its_bits_reach_p_times_2_to_the_32():
    # the rule every backend implements: kept iff bits >= p * 2^32, compared exactly (bits and p * 2^32 are
    # exact in float64); p set right at, just below and just above entry 0's bits b tests the boundary
    key = layers.draw_dropout_key(rng_for(22))
    index = np.arange(4096, dtype=np.uint64)
    bits = layers.dropout_bits(key, index)
    b = int(bits[0])
    for p, kept in ((b / 2**32, True), ((b - 0.5) / 2**32, True), ((b + 0.5) / 2**32, False)):
        keep = layers.dropout_keep(key, index, p)
        assert bool(keep[0]) is kept, p
        np.testing.assert_array_equal(keep, bits.astype(np.float64) >= p * 2.0**32)


def test_attention_dropout_index_numbers_the_full_mask_in_c_order():
    # weight (b, h, t, s) is entry ((b H + h) T + t) T + s of a (B, H, T, T) mask: the compiled kernels
    # number it so too, so a different (still block-independent) numbering would drop different weights
    B, H, T = 2, 3, 7
    full = np.arange(B * H * T * T, dtype=np.uint64).reshape(B, H, T, T)
    for t0, t1 in ((0, 7), (0, 3), (3, 6), (6, 7)):
        index = layers.attention_dropout_index(B, H, T, t0, t1)
        assert index.dtype == np.uint64
        np.testing.assert_array_equal(index, full[:, :, t0:t1, :t1])


def test_attention_dropout_keeps_the_same_weights_whatever_the_query_blocks():
    # each weight's fate is a function of (key, b, h, t, s): kernels with other tiles drop the same ones
    qkv = rng_for(21).standard_normal((2, 9, 3 * 8))
    outs = [layers.attention_forward(qkv, 2, 0.4, np.random.default_rng(5), query_block=qb)[0]
            for qb in (2, 4, 64)]
    no_dropout = layers.attention_forward(qkv, 2)[0]
    assert not np.allclose(outs[0], no_dropout)
    for out in outs[1:]:
        np.testing.assert_allclose(out, outs[0], rtol=1e-12, atol=1e-12)


def test_dropout_zero_is_identity_and_bad_p_raises():
    x = np.ones(3)
    out, cache = layers.dropout_forward(x, 0.0, None)
    assert out is x and cache is None
    for p in (1.0, 1.5, -0.1):  # -0.1 failed in np.uint64 of a negative threshold, not with this message
        with pytest.raises(TinyGPTError, match=r"dropout probability must be in \[0, 1\)"):
            layers.dropout_forward(x, p, rng_for())


def test_dropout_takes_a_probability_of_any_real_number_type():
    """A NumPy or Fraction p is the float it equals: a np.float16 p overflowed p * 2^32 (OverflowError) and
    a np.float32 p computed the scale 1 / (1 - p) in float32 for float64 activations."""
    from fractions import Fraction

    x = rng_for(3).standard_normal((4, 64))
    qkv = rng_for(4).standard_normal((2, 5, 3 * 8))
    for p in (np.float16(0.1), np.float32(0.1), Fraction(1, 3)):
        out, cache = layers.dropout_forward(x, p, rng_for(5))
        expected, _ = layers.dropout_forward(x, float(p), rng_for(5))
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(layers.dropout_backward(x, cache), out)
        att = layers.attention_forward(qkv, 2, p, rng_for(6))[0]
        np.testing.assert_array_equal(att, layers.attention_forward(qkv, 2, float(p), rng_for(6))[0])


def test_cross_entropy_gradcheck_with_ignored_targets():
    rng = rng_for(10)
    logits = rng.standard_normal((2, 4, 7)) * 2
    targets = np.array([[1, -1, 6, 0], [-1, 2, 2, 5]])
    assert_gradcheck(
        layers.cross_entropy_forward,
        layers.cross_entropy_backward,
        {"logits": logits, "targets": targets},
        TOL,
    )
    _, cache = layers.cross_entropy_forward(logits, targets)
    dlogits = layers.cross_entropy_backward(1.0, cache)
    np.testing.assert_array_equal(dlogits[0, 1], 0.0)  # ignored rows get exactly zero gradient
    np.testing.assert_array_equal(dlogits[1, 0], 0.0)


def test_gradcheck_rejects_float32_and_catches_a_wrong_backward():
    x = rng_for(11).standard_normal((3, 4))
    with pytest.raises(TinyGPTError, match="float64"):
        gradcheck(layers.gelu_forward, layers.gelu_backward, {"x": x.astype(np.float32)})

    def wrong_backward(dout, cache):  # forgets the 1 - tanh^2 term
        t = np.tanh(math.sqrt(2 / math.pi) * (cache + 0.044715 * cache**3))
        return dout * 0.5 * (1 + t)

    with pytest.raises(AssertionError, match="gradient check failed"):
        assert_gradcheck(layers.gelu_forward, wrong_backward, {"x": x}, TOL)


def test_gradcheck_default_tol_catches_a_small_relative_error():
    # a backward 1e-4 off (a dropped eps, a float32 constant) is a bug a float64 check must flag
    x = rng_for(17).standard_normal((3, 4))

    def slightly_wrong(dout, cache):
        return layers.gelu_backward(dout, cache) * (1 + 1e-4)

    with pytest.raises(AssertionError, match="gradient check failed"):
        assert_gradcheck(layers.gelu_forward, slightly_wrong, {"x": x})


def test_gradcheck_uses_a_random_upstream_gradient():
    # dout all ones would pass a backward that sends each entry's gradient to the wrong place
    x = rng_for(18).standard_normal(6)

    def permuting_backward(dout, cache):
        return 2.0 * cache * dout[::-1]

    def misplacing_backward(dout, cache):  # every entry's right gradient, each put at another entry
        return (2.0 * cache * dout)[::-1]

    for backward in (permuting_backward, misplacing_backward):
        with pytest.raises(AssertionError, match="gradient check failed"):
            assert_gradcheck(lambda x: (x * x, x), backward, {"x": x})


def test_gradcheck_max_entries_checks_that_many_entries_drawn_from_the_whole_input():
    # max_entries: a random sample of each input, so a backward that is right on the first entries alone
    # (here the first row) is caught; each checked entry costs two forwards, and the output one
    x = rng_for(26).standard_normal((5, 8))
    forwards = []

    def counted_forward(x):
        forwards.append(1)
        return layers.gelu_forward(x)

    def right_on_the_first_row(dout, cache):
        dx = layers.gelu_backward(dout, cache)
        dx[1:] *= 2.0
        return dx

    assert_gradcheck(counted_forward, layers.gelu_backward, {"x": x}, max_entries=6)
    assert len(forwards) == 1 + 2 * 6
    with pytest.raises(AssertionError, match="gradient check failed"):
        assert_gradcheck(counted_forward, right_on_the_first_row, {"x": x}, max_entries=6)


def test_gradcheck_flags_a_nan_gradient():
    x = rng_for(19).standard_normal(4)
    with pytest.raises(AssertionError, match="x: nan"):  # nan > tol is False: the check is `not err <= tol`
        assert_gradcheck(layers.gelu_forward, lambda dout, cache: np.full_like(cache, np.nan), {"x": x})


def test_gradcheck_refuses_a_backward_that_does_not_fit_the_inputs():
    # each of these passed silently (zip truncated, a flat gradient reshaped) or failed with another error
    rng = rng_for(23)
    inputs = {"x": rng.standard_normal((2, 3)), "weight": rng.standard_normal((3, 4)), "bias": None}

    def dropped(dout, cache):  # no slot for the None bias
        return layers.linear_backward(dout, cache)[:2]

    def flat(dout, cache):  # the right numbers, the wrong shape
        dx, dweight, dbias = layers.linear_backward(dout, cache)
        return dx.reshape(-1), dweight, dbias

    def none_for_x(dout, cache):
        return None, *layers.linear_backward(dout, cache)[1:]

    for backward, message in ((dropped, "backward returned 2 gradients for 3 float/None inputs"),
                              (flat, r"gradient of 'x' has shape \(6,\), input has \(2, 3\)"),
                              (none_for_x, "backward returned None for 'x'")):
        with pytest.raises(TinyGPTError, match=message):
            gradcheck(layers.linear_forward, backward, inputs)
    for name in ("bias", "w"):  # None, and not an input at all
        with pytest.raises(TinyGPTError, match=f"cannot check '{name}': not a floating-point array"):
            gradcheck(layers.linear_forward, layers.linear_backward, inputs, wrt=[name])


def test_gradcheck_never_writes_to_the_callers_arrays():
    # it perturbs private copies: a read-only input (a memory-mapped checkpoint) works and stays as it was
    rng = rng_for(24)
    x, w = rng.standard_normal((2, 3)), rng.standard_normal((3, 4))
    before = x.copy()
    x.flags.writeable = False
    assert_gradcheck(layers.linear_forward, layers.linear_backward, {"x": x, "weight": w, "bias": None})
    np.testing.assert_array_equal(x, before)


def test_numerical_gradient_restores_x_and_refuses_a_strided_array():
    x = rng_for(25).standard_normal((3, 4))
    before = x.copy()
    grad = numerical_gradient(lambda: float(np.sum(x**3)), x, [0, 5, 11])
    np.testing.assert_allclose(grad, 3 * before.reshape(-1)[[0, 5, 11]] ** 2, rtol=1e-8)
    np.testing.assert_array_equal(x, before)  # bit for bit: each entry is put back, not re-derived
    # a transposed view reshapes to a copy: perturbing that would leave f unchanged and give 0 silently
    with pytest.raises(TinyGPTError, match="contiguous array"):
        numerical_gradient(lambda: float(np.sum(x**3)), x.T, [0])


def test_relative_error_is_scaled_by_the_larger_tensor_and_checks_shapes():
    assert relative_error([1.0, 2.0], [1.0, 3.0]) == pytest.approx(1 / 3)
    # the worst entry, not the totals: two entries swapped (equal sums) are an error of 1 / 2, not 0
    assert relative_error([1.0, 2.0], [2.0, 1.0]) == 0.5
    # symmetric: a zero analytic gradient against a non-zero estimate is an error of 1, not of 1e30
    assert relative_error([0.0, 0.0], [0.0, 1e-3]) == relative_error([0.0, 1e-3], [0.0, 0.0]) == 1.0
    assert relative_error(np.zeros((2, 0)), np.zeros((2, 0))) == 0.0  # nothing to compare, no max of nothing
    with pytest.raises(TinyGPTError, match=r"shapes \(3,\) and \(3, 1\)"):  # would broadcast to (3, 3)
        relative_error(np.zeros(3), np.zeros((3, 1)))


# --- forward values against straightforward references -------------------------------------------


def naive_attention(qkv, n_head):
    """Loops over batch, head and query: the textbook definition, nothing shared with layers.py."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    out = np.zeros((B, T, C))
    for b in range(B):
        for h in range(n_head):
            q = qkv[b, :, h * hs : (h + 1) * hs]
            k = qkv[b, :, C + h * hs : C + (h + 1) * hs]
            v = qkv[b, :, 2 * C + h * hs : 2 * C + (h + 1) * hs]
            for t in range(T):
                scores = np.array([q[t] @ k[s] / math.sqrt(hs) for s in range(t + 1)])
                p = np.exp(scores - scores.max())
                p /= p.sum()
                out[b, t, h * hs : (h + 1) * hs] = p @ v[: t + 1]
    return out


@pytest.mark.parametrize("query_block", [64, 4])
def test_attention_matches_naive_loops_and_masks_the_future_exactly(query_block):
    T = 10
    qkv = rng_for(12).standard_normal((2, T, 3 * 12))
    out, cache = layers.attention_forward(qkv, n_head=3, query_block=query_block)
    np.testing.assert_allclose(out, naive_attention(qkv, 3), rtol=1e-12, atol=1e-12)
    blocks = cache[2]
    assert len(blocks) == -(-T // query_block)
    att = np.full((2, 3, T, T), np.nan)  # the blocks never compute keys right of themselves
    for i, block in enumerate(blocks):
        t0 = i * query_block
        att[:, :, t0 : t0 + block.shape[2], : block.shape[3]] = block
    upper = np.triu(np.ones((T, T), dtype=bool), k=1)
    computed = att[..., upper]
    assert (computed[~np.isnan(computed)] == 0.0).all()  # exactly zero, not merely small
    assert not np.isnan(att[..., ~upper]).any()  # every causal entry computed
    np.testing.assert_allclose(np.nansum(att, -1), 1.0)


def test_attention_softmax_survives_huge_scores():
    # scores in the thousands: exp overflows unless the row max is subtracted first (inf / inf = nan)
    qkv = rng_for(16).standard_normal((2, 6, 3 * 8)) * 30
    out, cache = layers.attention_forward(qkv, n_head=2, query_block=4)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, naive_attention(qkv, 2), rtol=1e-10, atol=1e-10)
    assert np.isfinite(layers.attention_backward(np.ones_like(out), cache)).all()


@settings(max_examples=20, deadline=None)
@given(T=st.integers(2, 8), t_cut=st.integers(1, 7), block=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_attention_is_causal(T, t_cut, block, seed):
    """Changing tokens at positions >= t_cut never changes the outputs before t_cut."""
    t_cut = min(t_cut, T - 1)
    rng = rng_for(seed)
    qkv = rng.standard_normal((1, T, 3 * 4))
    changed = qkv.copy()
    changed[:, t_cut:] = rng.standard_normal((1, T - t_cut, 12)) * 100
    a, _ = layers.attention_forward(qkv, n_head=2, query_block=block)
    b, _ = layers.attention_forward(changed, n_head=2, query_block=block)
    np.testing.assert_array_equal(a[:, :t_cut], b[:, :t_cut])


def test_gelu_values():
    out, _ = layers.gelu_forward(np.array([0.0, 1.0, -1.0, 3.0]))
    np.testing.assert_allclose(out, [0.0, 0.841192, -0.158808, 2.996363], atol=1e-6)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_erf_is_x_phi_x_as_torch_computes_it(backend, dtype):
    # torch.nn.GELU()'s default, nanoGPT's activation, which the tanh form misses by up to 4.7e-4. The
    # reference is x Phi(x) in Python floats (math.erfc); far out (|x| past 9) the derivative is exactly 1
    # or 0, and negative x keep their digits (torch's 1 + erf(x / sqrt 2) cancels there: -0.0 at -12)
    import torch

    from tinygpt.kernels import get_ops

    ops = get_ops(backend)
    x = np.concatenate([np.linspace(-12, 12, 481), [-1e6, -40, 40, 1e6]]).astype(dtype)
    phi = [0.5 * math.erfc(-v / math.sqrt(2)) for v in x.tolist()]
    density = [math.exp(-v * v / 2) / math.sqrt(2 * math.pi) for v in x.tolist()]
    expected = [v * p for v, p in zip(x.tolist(), phi)]
    expected_dx = [p + v * d for v, p, d in zip(x.tolist(), phi, density)]
    out, cache = ops.gelu_erf_forward(x)
    dx = ops.gelu_erf_backward(np.ones_like(x), cache)
    assert out.dtype == dx.dtype == dtype
    # (float64: an argument's rounding moves erfc(z) by 2 z^2 of it, 1e-14 at z = 8.5)
    rtol = 2e-7 if dtype == np.float32 else 5e-14
    np.testing.assert_allclose(out, expected, rtol=rtol, atol=0)
    np.testing.assert_allclose(dx, expected_dx, rtol=rtol, atol=np.finfo(dtype).eps)
    assert dx[-4] == dx[-3] == 0 and dx[-2] == dx[-1] == 1
    # torch's exact GELU, in float32 as nanoGPT runs it: the same to its rounding
    xt = torch.tensor(x.astype(np.float32), requires_grad=True)
    yt = torch.nn.functional.gelu(xt)
    yt.backward(torch.ones_like(yt))
    np.testing.assert_allclose(out, yt.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-6, atol=1e-6)
    assert np.max(np.abs(out[:481] - ops.gelu_forward(x[:481])[0])) > 4e-4  # not the tanh form


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_gelu_of_huge_inputs_matches_torch_float32(backend):
    # backward's factor 2 k x (1 + 3 a x^2) overflowed to inf from |x| ~ 1.2e13 in float32, and
    # (1 - s) * inf = 0 * inf made the gradient NaN where torch's is 1 (x > 0) or 0 (x < 0): at -1e14 on
    # every backend, at +1e14 in the reference (a diverging run's first NaN came from there). Torch's own
    # x^2 overflows past 1.8e19 (NaN); there, and at +-inf, the gradient is its limit, 1 or 0.
    import torch

    from tinygpt.kernels import get_ops

    ops = get_ops(backend)
    x = np.array([20, 1e4, 1e6, 1e13, 1e14, 1e18], np.float32)
    x = np.concatenate([-x[::-1], x])
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.gelu(xt, approximate="tanh")
    yt.backward(torch.ones_like(yt))
    beyond = np.array([-np.inf, -1e30, -1e20, 1e20, 1e30, np.inf], np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # the forward's x^3 overflows, gelu(-inf) is NaN
        out, cache = ops.gelu_forward(x)
        dx = ops.gelu_backward(np.ones_like(x), cache)
        dx_beyond = ops.gelu_backward(np.ones_like(beyond), ops.gelu_forward(beyond)[1])
    np.testing.assert_array_equal(out, yt.detach().numpy())
    np.testing.assert_array_equal(dx, xt.grad.numpy())
    np.testing.assert_array_equal(dx_beyond, [0, 0, 0, 1, 1, 1])
    assert np.isnan(ops.gelu_backward(np.ones(1, np.float32), ops.gelu_forward(np.float32([np.nan]))[1]))


@settings(max_examples=25, deadline=None)
@given(shift=st.floats(-1e4, 1e4), scale=st.floats(1e-2, 1e3), seed=st.integers(0, 2**16))
def test_layernorm_normalises_any_row(shift, scale, seed):
    x = rng_for(seed).standard_normal((3, 16)) * scale + shift
    out, _ = layers.layernorm_forward(x, np.ones(16), np.zeros(16))
    np.testing.assert_allclose(out.mean(-1), 0.0, atol=1e-6)
    v = x.var(-1)
    np.testing.assert_allclose(out.var(-1), v / (v + 1e-5), rtol=1e-6)  # eps shrinks the variance slightly


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_layernorm_of_a_constant_float32_row_is_its_bias(backend):
    # x - mean is exactly 0 for a constant row, so the output is the bias whatever the weight (a float32 row
    # summed in float64 gives its mean exactly). The float32 reference took the mean with a float32 sum, a
    # few ulps off: 1000.1 repeated 768 times normalised to +-0.019 * weight, 333333.3 to +-1 * weight (as
    # if the row had unit variance); the numba kernel and torch give the bias
    from tinygpt.kernels import get_ops

    ops = get_ops(backend)
    rng = rng_for(15)
    dtype = np.float32
    for C in (768, 7):
        w, b = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
        for value in (0.1, 1000.1, 30000.7, 333333.3, -2.5e6):
            x = np.full((2, C), value, dtype)
            out, cache = ops.layernorm_forward(x, w, b)
            np.testing.assert_array_equal(out, np.broadcast_to(b, x.shape), err_msg=f"{value} x {C}")
            dout = rng.standard_normal(x.shape).astype(dtype)  # xhat = 0: dx = rstd (g - mean(g))
            g = (dout * w).astype(np.float64)
            expected = (g - g.mean(-1, keepdims=True)) / np.sqrt(1e-5)
            np.testing.assert_allclose(ops.layernorm_backward(dout, cache)[0], expected, rtol=1e-4,
                                       atol=1e-4 * np.abs(expected).max(), err_msg=f"{value} x {C}")


@settings(max_examples=25, deadline=None)
@given(offset=st.floats(-1e4, 1e4), seed=st.integers(0, 2**16))
def test_cross_entropy_is_shift_invariant_and_finite(offset, seed):
    """logsumexp(z + c) - (z + c)_t = logsumexp(z) - z_t: huge logits must not overflow."""
    rng = rng_for(seed)
    logits = rng.standard_normal((2, 3, 5))
    targets = rng.integers(0, 5, (2, 3))
    base, _ = layers.cross_entropy_forward(logits, targets)
    shifted, cache = layers.cross_entropy_forward(logits + offset, targets)
    assert math.isfinite(shifted) and shifted > 0
    assert shifted == pytest.approx(base, rel=1e-9, abs=1e-9 * max(1.0, abs(offset)))
    assert np.isfinite(layers.cross_entropy_backward(1.0, cache)).all()


def test_cross_entropy_value_and_all_ignored():
    loss, _ = layers.cross_entropy_forward(np.zeros((1, 1, 2)), np.array([[1]]))
    assert loss == pytest.approx(math.log(2))
    loss, cache = layers.cross_entropy_forward(np.ones((1, 2, 3)), np.full((1, 2), -1))
    assert loss == 0.0
    np.testing.assert_array_equal(layers.cross_entropy_backward(1.0, cache), 0.0)
    # no tokens at all: loss 0, also for an empty float array (np.zeros((1, 0)) has no values to truncate)
    loss, cache = layers.cross_entropy_forward(np.ones((1, 0, 3)), np.zeros((1, 0)))
    assert loss == 0.0 and layers.cross_entropy_backward(1.0, cache).shape == (1, 0, 3)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_cross_entropy_edges_agree_across_backends(backend):
    from tinygpt.kernels import get_ops

    ops = get_ops(backend)
    # an ignored row gets exactly zero gradient even where its logits are inf (0 * nan was nan)
    logits = np.array([[[np.inf, 0.0, 1.0], [0.0, 1.0, 2.0]]], np.float32)
    with np.errstate(invalid="ignore"):  # inf - inf: the ignored row's logits minus their max (unused)
        loss, cache = ops.cross_entropy_forward(logits, np.array([[-1, 2]]))
        dlogits = ops.cross_entropy_backward(1.0, cache)
    np.testing.assert_array_equal(dlogits[0, 0], 0.0)
    assert np.isfinite(loss) and np.all(np.isfinite(dlogits))
    # float32 losses of 3e37 each: their mean is finite, their float32 sum was not
    big = np.zeros((1, 16, 2), np.float32)
    big[..., 0] = 3e37
    loss, _ = ops.cross_entropy_forward(big, np.ones((1, 16), int))
    assert loss == pytest.approx(3e37, rel=1e-6)
    # a dominant logit in any column, the last included: the row max must see every column
    for col in range(3):
        dominant = np.zeros((1, 1, 3), np.float32)
        dominant[..., col] = 100.0
        loss, _ = ops.cross_entropy_forward(dominant, np.array([[(col + 1) % 3]]))
        assert loss == pytest.approx(100.0, rel=1e-6)
    # targets NumPy would wrap (-2), index past (V = 3: the numba kernel would read outside the row),
    # broadcast ((1,) for (1, 1)) or truncate (1.9)
    for targets, message in ((np.array([[-2]]), "-1 or in"), (np.array([[3]]), r"in \[0, 3\), got \[3, 3\]"),
                             (np.array([1]), "shape"),
                             (np.array([[1.9]]), "integers")):
        with pytest.raises(TinyGPTError, match=message):
            ops.cross_entropy_forward(np.zeros((1, 1, 3), np.float32), targets)


def test_cross_entropy_matches_torch():
    import torch
    rng = rng_for(13)
    logits = rng.standard_normal((3, 5, 11)) * 3
    targets = rng.integers(-1, 11, (3, 5))
    loss, cache = layers.cross_entropy_forward(logits, targets)
    tl = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(tl.view(-1, 11), torch.tensor(targets).view(-1), ignore_index=-1)
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-12)
    assert relative_error(layers.cross_entropy_backward(1.0, cache), tl.grad.numpy()) < 1e-12


def huge_logit_rows(rng, V=50):
    """(name, float32 logits (1, 4, V), targets (1, 4)) whose log-sum-exp is far larger than its log term."""
    near = rng.standard_normal((1, 4, V)) * 3
    yield "near 1e4", near + 1e4, rng.integers(0, V, (1, 4))
    yield "near -1e4", near - 1e4, rng.integers(0, V, (1, 4))
    tied = rng.standard_normal((1, 4, V))
    tied[..., ::7] = 1e30  # 8 tied maxima: each has probability 1/8, and a target among them loses log 8
    yield "tied at 1e30", tied, np.array([[0, 7, 21, 49]])
    mixed = rng.standard_normal((1, 4, V)) * 1e-30
    mixed[..., 3], mixed[..., 5] = 1e4, 1e4 - 0.5
    yield "1e4 beside 1e-30", mixed, np.array([[5, 3, 5, 0]])


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_cross_entropy_of_huge_logits_is_as_exact_as_torch_float32(backend):
    # The cache held lse = max + log(sum exp(logit - max)) in float32, and backward took the probabilities
    # as exp(logit - lse). Near 1e4 float32 holds lse to 5e-4, so every probability was ~1e-4 off (torch
    # float32: 3e-8); at 1e30 the log term vanished from lse and each of 8 tied maxima got probability 1,
    # not 1/8, and the reference's loss (lse - logit) was 0, not log 8; near 1e4 it was 4e-5 off (torch:
    # 5e-8). Now every float32 figure is within 1e-6 of torch's float64 result on the same logits.
    import torch

    from tinygpt.kernels import get_ops

    ops = get_ops(backend)
    for name, logits, targets in huge_logit_rows(rng_for(21)):
        logits = logits.astype(np.float32)
        exact_logits = torch.tensor(logits[0], dtype=torch.float64, requires_grad=True)
        exact = torch.nn.functional.cross_entropy(exact_logits, torch.tensor(targets[0]))
        exact.backward()
        exact_grad = exact_logits.grad.numpy()
        loss, cache = ops.cross_entropy_forward(logits, targets)
        dlogits = ops.cross_entropy_backward(1.0, cache)[0]
        assert abs(loss - exact.item()) <= 1e-6 * max(1.0, abs(exact.item())), (name, loss, exact.item())
        assert np.abs(dlogits - exact_grad).max() <= 1e-6 * np.abs(exact_grad).max(), name


# --- dtype: float32 stays float32 ------------------------------------------------------------------


def _float_arrays(cache) -> list:
    """The floating-point arrays a layer's cache holds (tuples and lists of them, nested)."""
    if isinstance(cache, np.ndarray):
        return [cache] if cache.dtype.kind == "f" else []
    if isinstance(cache, (tuple, list)):
        return [a for item in cache for a in _float_arrays(item)]
    return []


def test_every_layer_preserves_float32():
    # what the module docstring promises: every array returned or cached is float32, though LayerNorm's
    # mean, the exact GELU's erfc and the cross-entropy's total pass through float64 on the way
    rng = rng_for(14)
    f32 = np.float32
    x = rng.standard_normal((2, 4, 8)).astype(f32)
    checks = []
    out, c = layers.embedding_forward(
        rng.integers(0, 5, (2, 4)),
        rng.standard_normal((5, 8)).astype(f32),
        rng.standard_normal((6, 8)).astype(f32),
    )
    checks += [out, *layers.embedding_backward(out, c), *_float_arrays(c)]
    out, c = layers.layernorm_forward(x, np.ones(8, f32), np.zeros(8, f32))
    checks += [out, *layers.layernorm_backward(out, c), *_float_arrays(c)]
    out, c = layers.linear_forward(x, np.ones((8, 24), f32), np.zeros(24, f32))
    checks += [out, *layers.linear_backward(out, c), *_float_arrays(c)]
    out, c = layers.gelu_forward(x)
    checks += [out, layers.gelu_backward(out, c), *_float_arrays(c)]
    out, c = layers.gelu_erf_forward(x)
    checks += [out, layers.gelu_erf_backward(out, c), *_float_arrays(c)]
    qkv = rng.standard_normal((2, 4, 24)).astype(f32)
    out, c = layers.attention_forward(qkv, 2, dropout=0.1, rng=rng)
    checks += [out, layers.attention_backward(out, c), *_float_arrays(c)]
    out, c = layers.dropout_forward(x, 0.5, rng)
    checks += [out, layers.dropout_backward(out, c), *_float_arrays(c)]
    logits = rng.standard_normal((2, 4, 7)).astype(f32)
    loss, c = layers.cross_entropy_forward(logits, rng.integers(0, 7, (2, 4)))
    assert type(loss) is float
    checks += [layers.cross_entropy_backward(1.0, c), *_float_arrays(c)]
    assert len(checks) > 20
    assert [a.dtype for a in checks] == [np.dtype(f32)] * len(checks)


def test_attention_bad_width_and_missing_rng():
    with pytest.raises(TinyGPTError, match="n_embd"):
        layers.attention_forward(np.zeros((1, 2, 10)), n_head=2)
    for n_head in (0, -2):  # guards: ZeroDivisionError (0) and a reshape's ValueError (-2) from the check
        with pytest.raises(TinyGPTError, match="n_embd"):
            layers.attention_forward(np.zeros((1, 2, 12)), n_head=n_head)
    with pytest.raises(TinyGPTError, match="rng"):
        layers.attention_forward(np.zeros((1, 2, 12)), n_head=2, dropout=0.1)
    for p in (1.5, -0.1, 1.0):  # 1.5 gave all zeros, -0.1 scaled every output by 1/1.1
        with pytest.raises(TinyGPTError, match="dropout probability"):
            layers.attention_forward(np.zeros((1, 2, 12)), n_head=2, dropout=p, rng=np.random.default_rng(0))
