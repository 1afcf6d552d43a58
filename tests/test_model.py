"""The whole model: config checks, GPT-2 init, float64 gradient check, modes, bad input, checkpoints."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygpt.errors import TinyGPTError
from tinygpt.gradcheck import numerical_gradient, relative_error
from tinygpt.model import GPT, GPTConfig, activation_floats_per_token, param_count, param_shapes
from tinygpt.optim import AdamW

TINY = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)


def randomise(model, seed=0):
    """Non-trivial biases and LayerNorm affines (init makes them 0 and 1, which hides bugs)."""
    rng = np.random.default_rng(seed)
    for name, p in model.params.items():
        if p.ndim == 1:
            p[...] = (rng.standard_normal(p.shape) * 0.5 + (1.0 if name.endswith("weight") else 0.0)).astype(
                p.dtype
            )
        else:
            p[...] = (rng.standard_normal(p.shape) * 0.3).astype(p.dtype)
    return model


def batch(config, B=3, T=None, seed=0):
    rng = np.random.default_rng(seed)
    T = T or config.block_size
    return rng.integers(0, config.vocab_size, (B, T)), rng.integers(0, config.vocab_size, (B, T))


# --- config -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        ({"n_embd": 10, "n_head": 3}, "divisible"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"n_layer": -1}, "n_layer"),
        ({"block_size": 2.5}, "block_size"),
        ({"n_head": True}, "n_head"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"dropout": False}, "dropout must be a number"),  # a flag, not a probability (False read as 0.0)
        ({"dropout": "0.1"}, "dropout must be a number"),
        ({"bias": "yes"}, "bias"),
    ],
)
def test_config_validation(change, message):
    with pytest.raises(TinyGPTError, match=message):
        GPTConfig(**{**TINY, **change})


def test_config_round_trip_and_bad_dicts():
    config = GPTConfig(**TINY, dropout=0.1, bias=False)
    assert GPTConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(TinyGPTError, match="unknown.*n_ctx"):
        GPTConfig.from_dict({**TINY, "n_ctx": 5})
    with pytest.raises(TinyGPTError, match="missing: n_embd"):
        GPTConfig.from_dict({k: v for k, v in TINY.items() if k != "n_embd"})


# --- parameters and initialisation ------------------------------------------------------------------


def test_gpt2_small_names_shapes_and_count():
    shapes = param_shapes(GPTConfig(50257, 1024, 12, 12, 768))
    assert shapes["wte.weight"] == (50257, 768)
    assert shapes["h.11.attn.c_attn.weight"] == (768, 2304)
    assert shapes["h.0.mlp.c_proj.weight"] == (3072, 768)
    assert "lm_head.weight" not in shapes
    assert sum(math.prod(s) for s in shapes.values()) == 124_439_808  # GPT-2 small, as published


def test_gpt2_initialisation():
    config = GPTConfig(vocab_size=500, block_size=64, n_layer=4, n_head=4, n_embd=128)
    model = GPT(config, seed=3)
    p = model.params
    assert p["wte.weight"].dtype == np.float32
    assert p["wte.weight"].std() == pytest.approx(0.02, rel=0.02)
    assert p["h.1.attn.c_attn.weight"].std() == pytest.approx(0.02, rel=0.03)
    residual = 0.02 / math.sqrt(2 * 4)
    assert p["h.2.attn.c_proj.weight"].std() == pytest.approx(residual, rel=0.03)
    assert p["h.3.mlp.c_proj.weight"].std() == pytest.approx(residual, rel=0.03)
    np.testing.assert_array_equal(p["h.0.ln_1.weight"], 1.0)
    np.testing.assert_array_equal(p["ln_f.weight"], 1.0)
    np.testing.assert_array_equal(p["h.0.mlp.c_fc.bias"], 0.0)
    assert model.num_params() == sum(a.size for a in p.values())
    assert model.num_params(non_embedding=True) == model.num_params() - 500 * 128 - 64 * 128
    np.testing.assert_array_equal(GPT(config, seed=3).params["wpe.weight"], p["wpe.weight"])  # seeded
    assert not np.array_equal(GPT(config, seed=4).params["wpe.weight"], p["wpe.weight"])


def test_loss_at_init_is_log_vocab():
    """GPT-2 init gives near-uniform predictions: loss ~ log(V)."""
    config = GPTConfig(vocab_size=65, block_size=32, n_layer=2, n_head=4, n_embd=64)
    _, loss = GPT(config).forward(*batch(config, B=4))
    assert loss == pytest.approx(math.log(65), abs=0.05)


def test_flops_per_token_is_6n_plus_attention():
    config = GPTConfig(vocab_size=101, block_size=16, n_layer=3, n_head=2, n_embd=12)
    model = GPT(config)
    C, T = 12, 16
    weights = [
        w for name, w in model.params.items() if name.endswith("weight") and w.ndim == 2 and "wpe" not in name
    ]
    matmul_macs = sum(w.size for w in weights)  # every 2-D weight but wpe multiplies once per token
    biases_and_norms = sum(p.size for name, p in model.params.items() if p.ndim == 1)
    attention = 3 * 2 * 2 * C * T  # q k^T and att v: 2 C T multiply-adds each per token, x3 for backward
    assert model.flops_per_token() == 6 * (matmul_macs + biases_and_norms) + config.n_layer * attention


def test_activation_floats_per_token_is_the_docstring_s_count_and_what_the_tape_keeps():
    # the module docstring's example (6 blocks, C = 384, H = 6, T = 256 and V = 65), plain and recomputed
    config = GPTConfig(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384)
    assert activation_floats_per_token(config, 256) == 43_485
    assert activation_floats_per_token(config, 256, recompute=True) == 9_865

    def kept_per_token(config, T, B=2):  # distinct float arrays on the tape of a forward with targets
        model = GPT(config)
        model.forward(*batch(config, B=B, T=T))
        params, bases, stack = {id(p) for p in model.params.values()}, {}, [model._tape]
        while stack:
            entry = stack.pop()
            if isinstance(entry, (tuple, list)):
                stack.extend(entry)
            elif isinstance(entry, np.ndarray) and entry.dtype.kind == "f" and id(entry) not in params:
                base = entry if entry.base is None else entry.base
                bases[id(base)] = base
        return sum(a.size for a in bases.values()) / (B * T)

    # one more block keeps exactly the count's per-block floats (130: three query blocks, the last short)
    for T in (5, 64, 130):
        shallow, deep = (GPTConfig(vocab_size=11, block_size=T, n_layer=n, n_head=2, n_embd=8)
                         for n in (2, 3))
        measured = kept_per_token(deep, T) - kept_per_token(shallow, T)
        expected = activation_floats_per_token(deep, T) - activation_floats_per_token(shallow, T)
        assert measured == pytest.approx(expected, rel=1e-12), T
        # and the whole count is what the tape holds, the final LayerNorm, logits and loss included
        assert kept_per_token(deep, T) == pytest.approx(activation_floats_per_token(deep, T), rel=1e-12), T


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_dropout_keep_masks_kept_for_backward_are_the_docstring_s_bytes(backend):
    # the module docstring: with dropout the NumPy reference keeps a byte per attention probability and 2C
    # per block for its two branches' masks, C more for the embeddings'; numba keeps the masks' keys only
    T, C, H, B = 130, 8, 2, 2

    def mask_bytes_per_token(n_layer):
        config = GPTConfig(vocab_size=11, block_size=T, n_layer=n_layer, n_head=H, n_embd=C, dropout=0.1)
        model = GPT(config, backend=backend)
        model.forward(*batch(config, B=B, T=T))
        masks, stack = {}, [model._tape]
        while stack:
            entry = stack.pop()
            if isinstance(entry, (tuple, list)):
                stack.extend(entry)
            elif isinstance(entry, np.ndarray) and entry.dtype == np.bool_:
                base = entry if entry.base is None else entry.base
                masks[id(base)] = base
        return sum(a.nbytes for a in masks.values()) / (B * T)

    shallow, deep = (GPTConfig(vocab_size=11, block_size=T, n_layer=n, n_head=H, n_embd=C) for n in (2, 3))
    block_floats = activation_floats_per_token(deep, T) - activation_floats_per_token(shallow, T)
    probabilities = block_floats - 16 * C - 4  # H T' (the count's attention probabilities)
    per_block, embeddings = (probabilities + 2 * C, C) if backend == "numpy" else (0, 0)
    assert mask_bytes_per_token(3) - mask_bytes_per_token(2) == pytest.approx(per_block, rel=1e-12)
    assert mask_bytes_per_token(2) == pytest.approx(2 * per_block + embeddings, rel=1e-12)


# --- gradients --------------------------------------------------------------------------------------


def model_gradcheck(model, idx, targets, names, max_entries=12, seed=0, before_forward=lambda: None):
    """Central differences of the loss for a sample of entries of each named parameter."""
    before_forward()
    model.forward(idx, targets)
    grads = model.backward()
    rng = np.random.default_rng(seed)

    def loss():
        before_forward()
        return model.forward(idx, targets)[1]

    errors = {}
    for name in names:
        p = model.params[name]
        entries = rng.choice(p.size, size=min(max_entries, p.size), replace=False)
        numerical = numerical_gradient(loss, p, entries)
        errors[name] = relative_error(grads[name].reshape(-1)[entries], numerical)
    return errors


CHECKED = ["wte.weight", "wpe.weight", "h.0.ln_1.weight", "h.0.ln_1.bias", "h.0.attn.c_attn.weight",
           "h.0.attn.c_attn.bias", "h.1.attn.c_proj.weight", "h.1.ln_2.bias", "h.1.mlp.c_fc.weight",
           "h.1.mlp.c_proj.bias", "ln_f.weight", "ln_f.bias"]  # fmt: skip


def test_whole_model_gradcheck_float64():
    config = GPTConfig(**TINY)
    model = randomise(GPT(config, dtype=np.float64))
    idx, targets = batch(config, B=2, T=7)  # T < block_size: wpe rows 7.. get zero gradient
    idx[0, :4] = 5  # repeated ids: their embedding gradients must add up
    targets[1, 2:4] = -1  # ignored targets
    errors = model_gradcheck(model, idx, targets, CHECKED)
    assert max(errors.values()) < 1e-6, errors


def test_every_parameter_gets_a_gradient_of_its_shape():
    config = GPTConfig(**TINY)
    model = randomise(GPT(config, dtype=np.float64))
    idx, targets = batch(config, B=2, T=5)
    model.forward(idx, targets)
    grads = model.backward()
    assert list(grads) == list(model.params)
    for name, g in grads.items():
        assert g.shape == model.params[name].shape and g.dtype == np.float64, name
    np.testing.assert_array_equal(grads["wpe.weight"][5:], 0.0)  # positions never used
    assert np.abs(grads["wpe.weight"][:5]).min() > 0


def test_tied_head_gradient_reaches_tokens_never_seen():
    """A token absent from the input still gets gradient through the LM head (wte is the output layer)."""
    config = GPTConfig(**TINY)
    model = randomise(GPT(config, dtype=np.float64))
    idx = np.zeros((1, 4), dtype=np.int64)  # only token 0 in the input
    model.forward(idx, np.ones((1, 4), dtype=np.int64))
    dwte = model.backward()["wte.weight"]
    assert np.abs(dwte[1:]).min() > 0


def test_gradcheck_with_dropout_and_no_bias():
    config = GPTConfig(**{**TINY, "dropout": 0.2, "bias": False})
    model = randomise(GPT(config, dtype=np.float64))
    assert "h.0.ln_1.bias" not in model.params
    idx, targets = batch(config, B=2, T=6, seed=1)

    def reseed():  # the same dropout masks for every forward
        model.dropout_rng = np.random.default_rng(42)

    names = ["wte.weight", "wpe.weight", "h.0.attn.c_attn.weight", "h.1.mlp.c_fc.weight", "ln_f.weight"]
    errors = model_gradcheck(model, idx, targets, names, before_forward=reseed)
    assert max(errors.values()) < 1e-6, errors


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("dtype, dropout", [(np.float64, 0.0), (np.float64, 0.25), (np.float32, 0.25)])
def test_recompute_gives_the_same_bits_and_keeps_only_block_inputs(backend, dtype, dropout):
    # activation recomputation: backward replays each block forward from its input (and the dropout stream
    # where the block began), so loss and every gradient are the same bits as keeping the caches
    from tinygpt.model import _BlockStart

    config = GPTConfig(**{**TINY, "dropout": dropout})
    plain = randomise(GPT(config, dtype=dtype, backend=backend))
    checkpointed = GPT(config, dtype=dtype, backend=backend, params=plain.params)
    checkpointed.recompute = True
    idx, targets = batch(config, B=2, T=7, seed=3)
    for _ in range(2):  # twice: the model's own dropout stream advances alike in both
        loss, loss_r = plain.forward(idx, targets)[1], checkpointed.forward(idx, targets)[1]
        assert loss_r == loss
        tape = checkpointed._tape
        # per block one _BlockStart instead of ten caches: embedding, its dropout, blocks, ln_f, head, loss
        assert len(tape) == 2 + config.n_layer + 3
        assert sum(isinstance(entry, _BlockStart) for entry in tape) == config.n_layer
        grads, grads_r = plain.backward(), checkpointed.backward()
        for name in grads:
            np.testing.assert_array_equal(grads_r[name], grads[name], err_msg=name)
    # the replays drew from copies: the model's stream is where a plain model's is
    assert checkpointed.dropout_rng.random() == plain.dropout_rng.random()


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_recompute_frees_each_block_s_caches_before_replaying_the_one_below(backend, monkeypatch):
    # guards: backward's locals (c_ln1 ... c_mproj) kept block i's caches alive while block i - 1 was
    # replayed, so two blocks' caches were held at once (the backward's peak 4.5 MiB higher at 4L/128d, B 8)
    import weakref

    config = GPTConfig(**{**TINY, "n_layer": 3, "dropout": 0.1})
    model = GPT(config, backend=backend)
    model.recompute = True
    params = {id(p) for p in model.params.values()}
    model.forward(*batch(config, B=2, T=7))
    replayed = []  # weak references to the arrays of the last replayed block's caches (weights left out)

    def arrays(entry):
        if isinstance(entry, np.ndarray):
            return [] if id(entry) in params else [entry]
        return [a for e in entry for a in arrays(e)] if isinstance(entry, (tuple, list)) else []

    block_forward = GPT._block_forward

    def replay(self, i, x, p_drop, rng, tape):
        alive = [ref for ref in replayed if ref() is not None]
        assert not alive, f"block {i + 1}'s caches still held while block {i} is replayed"
        n = len(tape)
        out = block_forward(self, i, x, p_drop, rng, tape)
        replayed[:] = [weakref.ref(a) for a in arrays(tape[n:])]
        assert replayed
        return out

    monkeypatch.setattr(GPT, "_block_forward", replay)
    model.backward()


@settings(max_examples=15, deadline=None)
@given(n_layer=st.integers(1, 3), n_head=st.sampled_from([1, 2, 3]), T=st.integers(1, 9), B=st.integers(1, 3),
       dropout=st.sampled_from([0.0, 0.5]), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_recompute_is_bit_exact_for_any_shape(n_layer, n_head, T, B, dropout, bias, seed):
    # the property behind --recompute, over shapes (one token, one block, odd heads), with or without bias
    config = GPTConfig(vocab_size=13, block_size=9, n_layer=n_layer, n_head=n_head, n_embd=4 * n_head,
                       dropout=dropout, bias=bias)
    plain = randomise(GPT(config, seed=seed, dtype=np.float64), seed)
    checkpointed = GPT(config, seed=seed, dtype=np.float64, params=plain.params)
    checkpointed.recompute = True
    idx, targets = batch(config, B=B, T=T, seed=seed)
    assert checkpointed.forward(idx, targets)[1] == plain.forward(idx, targets)[1]
    grads, grads_r = plain.backward(), checkpointed.backward()
    assert all(np.array_equal(grads_r[name], grads[name]) for name in grads)


# --- modes, dtypes, bad input -----------------------------------------------------------------------


def test_dropout_only_in_training_mode():
    config = GPTConfig(**{**TINY, "dropout": 0.3})
    model = randomise(GPT(config))
    idx, _ = batch(config)
    assert model.training
    a, _ = model.forward(idx)
    b, _ = model.forward(idx)
    assert not np.array_equal(a, b)  # fresh masks each call
    model.eval()
    assert not model.training
    c, _ = model.forward(idx)
    d, _ = model.forward(idx)
    np.testing.assert_array_equal(c, d)
    plain = GPT(GPTConfig(**TINY))
    plain.params = model.params
    np.testing.assert_array_equal(plain.forward(idx)[0], c)
    assert model.train() is model and model.training


def test_config_takes_a_numpy_dropout():
    # np.float32 is no Python float: GPTConfig refused it ("must be a number"); it is kept as a float
    for p in (np.float32(0.25), np.float16(0.25), np.float64(0.25)):
        config = GPTConfig(**{**TINY, "dropout": p})
        assert type(config.dropout) is float and config.dropout == 0.25
    for bad in (True, "0.1", None):
        with pytest.raises(TinyGPTError, match="GPTConfig.dropout must be a number"):
            GPTConfig(**{**TINY, "dropout": bad})


def test_dropout_set_on_a_built_model_is_checked_as_in_the_constructor():
    # guards: GPTConfig checked dropout only when built, and train and finetune set it on a loaded model:
    # "0.1" or None set so was a TypeError ('<=' not supported) from the first training forward pass
    model = GPT(GPTConfig(**TINY), seed=0)
    idx = np.zeros((1, 4), dtype=np.int64)
    for bad in ("0.1", None, True, 1.0):
        message = "in [0, 1), got 1.0" if isinstance(bad, float) else f"a number in [0, 1), got {bad!r}"
        with pytest.raises(TinyGPTError, match=re.escape(f"GPTConfig.dropout must be {message}")):
            model.config.dropout = bad
        assert model.config.dropout == TINY.get("dropout", 0.0)  # left as it was
    model.config.dropout = np.float32(0.25)
    assert type(model.config.dropout) is float and model.config.dropout == 0.25
    model.forward(idx, idx)  # trains with it


def test_dropout_sits_where_gpt2_has_it():
    # GPT-2 drops the embedding sum, the attention probabilities, and each residual branch (attention's
    # and the MLP's) before it is added back: 1 + 2 * n_layer dropout calls and n_layer attention calls
    # with p, per training forward. (Removing any one of them passed every other test.)
    config = GPTConfig(**{**TINY, "dropout": 0.3})
    model = GPT(config)
    calls = {"dropout": [], "attention": []}
    dropout_forward, attention_forward = model.ops.dropout_forward, model.ops.attention_forward

    def counted_dropout(x, p, rng):
        calls["dropout"].append(p)
        return dropout_forward(x, p, rng)

    def counted_attention(qkv, n_head, dropout=0.0, rng=None):
        calls["attention"].append(dropout)
        return attention_forward(qkv, n_head, dropout, rng)

    model.ops.dropout_forward, model.ops.attention_forward = counted_dropout, counted_attention
    model.forward(*batch(config))
    assert calls == {"dropout": [0.3] * (1 + 2 * config.n_layer), "attention": [0.3] * config.n_layer}
    model.backward()
    calls = {"dropout": [], "attention": []}
    model.eval().forward(*batch(config))
    assert set(calls["dropout"]) <= {0.0} and calls["attention"] == [0.0] * config.n_layer


def test_float32_stays_float32():
    config = GPTConfig(**TINY)
    model = GPT(config)
    logits, loss = model.forward(*batch(config))
    assert logits.dtype == np.float32 and isinstance(loss, float)
    assert {g.dtype for g in model.backward().values()} == {np.dtype(np.float32)}


def test_float32_matches_float64():
    config = GPTConfig(**TINY)
    m64 = randomise(GPT(config, dtype=np.float64))
    m32 = GPT(config)
    m32.params = {k: v.astype(np.float32) for k, v in m64.params.items()}
    idx, targets = batch(config)
    l64, loss64 = m64.forward(idx, targets)
    l32, loss32 = m32.forward(idx, targets)
    assert relative_error(l32, l64) < 1e-5
    assert loss32 == pytest.approx(loss64, rel=1e-5)
    g64, g32 = m64.backward(), m32.backward()
    assert max(relative_error(g32[k], g64[k]) for k in g64) < 1e-4


@pytest.mark.parametrize(
    "idx, message",
    [
        (np.zeros((2, 3), dtype=np.float32), "integer"),
        (np.zeros((2, 3), dtype=bool), "integer"),
        (np.zeros(3, dtype=np.int64), "shape"),
        (np.zeros((1, 2, 3), dtype=np.int64), "shape"),
        (np.zeros((1, 9), dtype=np.int64), "block_size"),
        (np.full((1, 2), 11), "outside the vocabulary"),
        (np.full((1, 2), -1), "outside the vocabulary"),
        (np.zeros((0, 2), dtype=np.int64), "empty"),
        ([[1, 2], [3]], "rows differ in length"),  # a ragged list was NumPy's "inhomogeneous shape"
    ],
)
def test_bad_idx(idx, message):
    with pytest.raises(TinyGPTError, match=message):
        GPT(GPTConfig(**TINY)).forward(idx)


def test_bad_targets_and_backward_order():
    model = GPT(GPTConfig(**TINY))
    idx = np.zeros((2, 3), dtype=np.int64)
    with pytest.raises(TinyGPTError, match="targets.*outside"):
        model.forward(idx, np.full((2, 3), -2))
    with pytest.raises(TinyGPTError, match="does not match"):
        model.forward(idx, np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(TinyGPTError, match="backward"):
        GPT(GPTConfig(**TINY)).backward()  # before any forward
    model.forward(idx)  # no targets: nothing to differentiate
    with pytest.raises(TinyGPTError, match="backward"):
        model.backward()
    model.forward(idx, np.full((2, 3), -1))  # all ignored is fine: zero loss, zero gradient
    assert all(not g.any() for g in model.backward().values())
    with pytest.raises(TinyGPTError, match="backward"):
        model.backward()  # twice


def test_params_argument_is_checked_and_shared():
    config = GPTConfig(**TINY)
    params = GPT(config, seed=5).params
    model = GPT(config, params=params)
    assert model.params["wte.weight"] is params["wte.weight"]  # already float32: shared, not copied
    assert GPT(config, dtype=np.float64, params=params).params["wte.weight"].dtype == np.float64
    with pytest.raises(TinyGPTError, match="missing or unexpected ln_f.bias"):
        GPT(config, params={k: v for k, v in params.items() if k != "ln_f.bias"})
    with pytest.raises(TinyGPTError, match="shape"):
        GPT(config, params={**params, "ln_f.bias": np.zeros(3)})
    # guards: a weight the config has no place for dropped silently (h.2 of a deeper model, an lm_head)
    with pytest.raises(TinyGPTError, match="missing or unexpected h.2.ln_1.weight"):
        GPT(config, params={**params, "h.2.ln_1.weight": np.ones(TINY["n_embd"])})


def test_bad_constructor_arguments():
    with pytest.raises(TinyGPTError, match="dtype"):
        GPT(GPTConfig(**TINY), dtype=np.float16)
    with pytest.raises(TinyGPTError, match="GPTConfig"):
        GPT(TINY)
    with pytest.raises(TinyGPTError):
        GPT(GPTConfig(**TINY), backend="no-such-backend")
    for seed in (None, -1, 1.5, "0", True):  # None, -1, 1.5, "0": TypeError or ValueError from NumPy
        with pytest.raises(TinyGPTError, match="seed"):
            GPT(GPTConfig(**TINY), seed=seed)
    assert GPT(GPTConfig(**TINY), seed=np.int64(3)).params["wte.weight"].shape == (11, 8)
    # a dtype name NumPy does not know, and weights or a head's gradient that are not numbers, were NumPy's
    # TypeError and ValueError
    with pytest.raises(TinyGPTError, match="dtype must be float32 or float64, got 'no-such-type'"):
        GPT(GPTConfig(**TINY), dtype="no-such-type")
    params = {name: np.full(p.shape, "x") for name, p in GPT(GPTConfig(**TINY)).params.items()}
    with pytest.raises(TinyGPTError, match=r"\['wte.weight'\] must be an array of numbers, got an array of"):
        GPT(GPTConfig(**TINY), params=params)
    model = GPT(GPTConfig(**TINY))
    model.forward_hidden(np.zeros((1, 2), int))
    with pytest.raises(TinyGPTError, match="dhidden must be an array of numbers, got str"):
        model.backward_hidden("x")


def test_a_model_whose_weights_alone_exceed_the_memory_is_refused_before_any_allocation():
    # --n-layer 10**12 (train, finetune, bench generate) allocated layer after layer up to the OOM killer
    huge = GPTConfig(**{**TINY, "n_layer": 10**12})
    with pytest.raises(TinyGPTError, match=r"parameters needs [\d,.]+ GiB .* this machine has [\d,.]+ GiB"):
        GPT(huge)
    for bias in (True, False):
        config = GPTConfig(**{**TINY, "bias": bias})
        assert param_count(config) == GPT(config).num_params()


def test_the_memory_check_counts_the_bytes_of_the_weights_dtype(monkeypatch):
    # float32 weights (4 bytes a parameter) fit in 6 bytes a parameter, float64 ones (8) do not
    import os

    config = GPTConfig(**TINY)
    pages = {"SC_PAGE_SIZE": 2, "SC_PHYS_PAGES": 3 * param_count(config)}  # 6 bytes a parameter
    monkeypatch.setattr(os, "sysconf", pages.__getitem__)
    GPT(config)
    with pytest.raises(TinyGPTError, match="float64 weights alone"):
        GPT(config, dtype=np.float64)


def test_numba_backend_matches_numpy():
    config = GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=4, n_embd=32)
    ref = randomise(GPT(config))
    fast = GPT(config, backend="numba")
    fast.params = {k: v.copy() for k, v in ref.params.items()}
    idx, targets = batch(config, B=2)
    (l_ref, loss_ref), (l_fast, loss_fast) = ref.forward(idx, targets), fast.forward(idx, targets)
    assert relative_error(l_fast, l_ref) < 1e-5 and loss_fast == pytest.approx(loss_ref, rel=1e-5)
    g_ref, g_fast = ref.backward(), fast.backward()
    assert max(relative_error(g_fast[k], g_ref[k]) for k in g_ref) < 1e-4


# small configurations of every kind: one layer or three, one head or three, odd widths, with or without bias
small_configs = st.builds(
    lambda n_layer, n_head, head_size, bias: GPTConfig(vocab_size=13, block_size=9, n_layer=n_layer,
                                                       n_head=n_head, n_embd=n_head * head_size, bias=bias),
    st.integers(1, 3), st.integers(1, 3), st.integers(2, 5), st.booleans())  # (a width of 1 normalises to 0)


@settings(max_examples=15, deadline=None)
@given(config=small_configs, backend=st.sampled_from(["numpy", "numba"]), T=st.integers(2, 9),
       t=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_logits_never_depend_on_later_tokens(config, backend, T, t, seed):
    """Changing the tokens at positions >= t leaves the logits at every position < t unchanged (the model
    is causal end to end, not only its attention), on both CPU backends."""
    t = min(t, T - 1)
    model = randomise(GPT(config, dtype=np.float64, backend=backend), seed).eval()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, config.vocab_size, (2, T))
    changed = idx.copy()
    changed[:, t:] = (idx[:, t:] + rng.integers(1, config.vocab_size, (2, T - t))) % config.vocab_size
    before, _ = model.forward(idx)
    after, _ = model.forward(changed)
    np.testing.assert_allclose(after[:, :t], before[:, :t], rtol=1e-12, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(config=small_configs, backend=st.sampled_from(["numpy", "numba"]), B=st.integers(2, 4),
       T=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_each_row_of_a_batch_is_computed_alone(config, backend, B, T, seed):
    """The logits of row b of a batch are those of row b run alone: no layer mixes the rows."""
    model = randomise(GPT(config, dtype=np.float64, backend=backend), seed).eval()
    idx = np.random.default_rng(seed).integers(0, config.vocab_size, (B, T))
    logits, _ = model.forward(idx)
    for b in range(B):
        np.testing.assert_allclose(model.forward(idx[b : b + 1])[0][0], logits[b], rtol=1e-12, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(config=small_configs, dropout=st.sampled_from([0.0, 0.3]), B=st.integers(1, 3), T=st.integers(1, 9),
       ignore=st.booleans(), seed=st.integers(0, 2**16))
def test_numba_backend_matches_numpy_for_any_shape(config, dropout, B, T, ignore, seed):
    """The numba backend's logits, loss and every gradient equal the numpy backend's (float64, so to
    rounding) for any small shape, with the same dropout masks and ignored (-1) targets."""
    config = GPTConfig(**{**config.to_dict(), "dropout": dropout})
    ref = randomise(GPT(config, seed=seed, dtype=np.float64), seed)
    fast = GPT(config, seed=seed, dtype=np.float64, backend="numba", params=ref.params)
    idx, targets = batch(config, B=B, T=T, seed=seed)
    if ignore:
        targets[:, ::2] = -1
    (logits_ref, loss_ref), (logits_fast, loss_fast) = ref.forward(idx, targets), fast.forward(idx, targets)
    np.testing.assert_allclose(logits_fast, logits_ref, rtol=1e-9, atol=1e-9)
    assert loss_fast == pytest.approx(loss_ref, rel=1e-9)
    grads_ref, grads_fast = ref.backward(), fast.backward()
    for name in grads_ref:
        np.testing.assert_allclose(grads_fast[name], grads_ref[name], rtol=1e-7, atol=1e-9, err_msg=name)


# --- generation and checkpoints ---------------------------------------------------------------------


def test_generate_greedy_matches_repeated_forward():
    config = GPTConfig(**TINY)
    model = randomise(GPT(config)).eval()
    prompt = np.array([[1, 2, 3]])
    out = model.generate(prompt, 4, temperature=0)
    assert out.shape == (1, 7)
    seq = prompt
    for _ in range(4):
        logits, _ = model.forward(seq)
        seq = np.concatenate([seq, logits[:, -1:].argmax(-1)], axis=1)
    np.testing.assert_array_equal(out, seq)


@pytest.mark.parametrize("bias", [True, False])
def test_save_and_load_round_trip(tmp_path, bias):
    config = GPTConfig(**{**TINY, "bias": bias, "dropout": 0.1})
    model = randomise(GPT(config, dtype=np.float64)).eval()
    model.save_pretrained(tmp_path)
    hf = json.loads((tmp_path / "config.json").read_text())
    assert hf["model_type"] == "gpt2" and hf["n_layer"] == 2 and hf["n_positions"] == 8
    # transformers' dtype="auto" loads the weights as torch_dtype says: it must be the file's own dtype
    from safetensors.numpy import load_file

    assert hf["torch_dtype"] == "float64"
    assert {a.dtype for a in load_file(tmp_path / "model.safetensors").values()} == {np.dtype(np.float64)}
    loaded = GPT.from_pretrained(tmp_path, dtype=np.float64).eval()
    assert loaded.config.dropout == 0.1 and loaded.config.bias  # GPT-2's format always has biases
    idx, _ = batch(config)
    np.testing.assert_array_equal(loaded.forward(idx)[0], model.forward(idx)[0])
    assert GPT.from_pretrained(tmp_path, dropout=0.0).config.dropout == 0.0


def test_a_failed_save_pretrained_leaves_the_previous_model_whole(tmp_path, monkeypatch):
    # it wrote the new config.json first, then failed on the weights: the pair no longer loaded
    import safetensors.numpy

    GPT(GPTConfig(**TINY), seed=0).save_pretrained(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.numpy, "save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        GPT(GPTConfig(**{**TINY, "n_layer": 3}), seed=1).save_pretrained(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # and no temporaries left
    assert GPT.from_pretrained(tmp_path).config.n_layer == TINY["n_layer"]



def test_save_pretrained_whose_weights_fail_to_reach_the_disk_leaves_the_previous_model_whole(tmp_path,
                                                                                            monkeypatch):
    # the write succeeded and the fsync failed (what NFS or a quota reports of a full disk, or an I/O error):
    # config.json had already replaced its old self, its fsync being the inner block's, so the new config sat
    # beside the old weights and the pair no longer loaded
    from conftest import fail_fsync_of_temporaries

    GPT(GPTConfig(**TINY), seed=0).save_pretrained(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    fail_fsync_of_temporaries(monkeypatch, tmp_path, ".model.safetensors.*")
    with pytest.raises(OSError, match="No space"):
        GPT(GPTConfig(**{**TINY, "n_layer": 3}), seed=1).save_pretrained(tmp_path)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # and no temporaries left
    assert GPT.from_pretrained(tmp_path).config.n_layer == TINY["n_layer"]


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(TinyGPTError, match="no model directory"):
        GPT.from_pretrained(tmp_path / "absent")
    with pytest.raises(TinyGPTError, match="config.json"):
        GPT.from_pretrained(tmp_path)
    GPT(GPTConfig(**TINY)).save_pretrained(tmp_path)
    config_path = tmp_path / "config.json"
    good = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**good, "activation_function": "relu"}))
    with pytest.raises(TinyGPTError, match="activation_function"):
        GPT.from_pretrained(tmp_path)
    config_path.write_text(json.dumps({**good, "n_embd": 16}))
    with pytest.raises(TinyGPTError, match="shape"):
        GPT.from_pretrained(tmp_path)
    config_path.write_text(json.dumps({**good, "n_layer": 3}))
    # (the layer count is checked first, so the message says why: not a list of h.2's missing tensors)
    with pytest.raises(TinyGPTError, match=r"is missing layer h\.2 \(no tensor named transformer\.h\.2\.\*\)"
                                           r", where .*config.json has n_layer = 3: the weights hold 28 "
                                           r"tensors, layers h\.0 to h\.1$"):
        GPT.from_pretrained(tmp_path)
    # a corrupt n_layer of 2**40 listed 2**40 layers' parameter names first: all the memory, then OOM
    config_path.write_text(json.dumps({**good, "n_layer": 2**40}))
    with pytest.raises(TinyGPTError, match=r"missing layer h\.2 .*config.json has n_layer = 1099511627776: "
                                           r"the weights hold 28 tensors, layers h\.0 to h\.1$"):
        GPT.from_pretrained(tmp_path)
    # sizes the weights or GPTConfig refuse name the file, as the errors above do: they said "GPTConfig.n_embd
    # (8) must be divisible by n_head (3)", "GPTConfig.block_size must be ..." of n_positions, "tensor
    # 'transformer.wte.weight' has shape (11, 8), expected (5, 8)" and "unexpected tensor '...h.1...'"
    where = re.escape(str(config_path))
    for bad, message in (({"n_head": 3}, f"^{where}: n_embd \\(8\\) must be divisible by n_head \\(3\\)$"),
                         ({"n_embd": 0}, f"^{where}: n_embd must be a positive integer, got 0$"),
                         ({"n_head": -2}, f"^{where}: n_head must be a positive integer, got -2$"),
                         ({"n_positions": 0}, f"^{where}: n_positions must be a positive integer, got 0$"),
                         ({"resid_pdrop": 1.5}, f"^{where}: resid_pdrop must be in \\[0, 1\\), got 1.5$"),
                         ({"vocab_size": 5}, r"'transformer\.wte\.weight' has shape \(11, 8\), expected "
                                             f"\\(5, 8\\) from the sizes in {where}$"),
                         ({"n_layer": 1}, f"holds h\\.1, past {where}'s n_layer = 1 \\(the weights hold 28 "
                                           r"tensors, layers h\.0 to h\.1\)$")):
        config_path.write_text(json.dumps({**good, **bad}))
        with pytest.raises(TinyGPTError, match=message):
            GPT.from_pretrained(tmp_path)
    config_path.write_text(json.dumps({**good, "resid_pdrop": 1.5}))
    assert GPT.from_pretrained(tmp_path, dropout=0.0).config.dropout == 0.0  # (the caller's overrides it)
    for bad, message in (({"resid_pdrop": None}, "resid_pdrop must be a number"),  # these three were
                         ({"resid_pdrop": "0.1x"}, "resid_pdrop must be a number"),  # tracebacks
                         ({"n_embd": None, "n_inner": 64}, "n_embd must be an integer"),
                         ({"vocab_size": "50257"}, "vocab_size must be an integer")):
        config_path.write_text(json.dumps({**good, **bad}))
        with pytest.raises(TinyGPTError, match=message):
            GPT.from_pretrained(tmp_path)
    config_path.write_text("{not json")
    with pytest.raises(TinyGPTError, match="JSON"):
        GPT.from_pretrained(tmp_path)
    config_path.write_text(json.dumps(good))
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(TinyGPTError, match="cannot read"):
        GPT.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(TinyGPTError, match="no model.safetensors"):
        GPT.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": []}))
    with pytest.raises(TinyGPTError, match="not a valid safetensors index"):
        GPT.from_pretrained(tmp_path)
    for shard in ("../model.safetensors", "/dev/stdin", "..", "sub/model.safetensors"):  # (stdin would hang)
        index = {"weight_map": {"wte.weight": shard}}
        (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
        with pytest.raises(TinyGPTError, match=r"not a valid safetensors index: shard .* is not a file name"):
            GPT.from_pretrained(tmp_path)
    config_path.write_text("[1, 2]")
    with pytest.raises(TinyGPTError, match="not a JSON object"):
        GPT.from_pretrained(tmp_path)


def test_a_safetensors_index_that_is_not_utf8_is_one_error(tmp_path):
    # guards: a binary (not UTF-8) model.safetensors.index.json raised UnicodeDecodeError, a traceback from
    # the CLI, where a truncated one (bad JSON) or a non-UTF-8 config.json is a one-line TinyGPTError
    GPT(GPTConfig(**TINY)).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "model.safetensors.index.json").write_bytes(b"\xff\xfe\x00{garbage")
    with pytest.raises(TinyGPTError, match="not a valid safetensors index"):
        GPT.from_pretrained(tmp_path)


def test_a_git_lfs_pointer_for_model_safetensors_says_so(tmp_path):
    # guards: a GPT-2 directory cloned without Git LFS was "cannot read .../model.safetensors: Error while
    # deserializing header: header too large", naming neither the cause nor the cure
    GPT(GPTConfig(**TINY)).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\n"
                                                "oid sha256:248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b4"
                                                "73182f0f81d3a707\nsize 548105171\n")
    with pytest.raises(TinyGPTError, match=r"model\.safetensors: it is a Git LFS pointer, not the weights "
                       r"\(the 548,105,171-byte file was not downloaded\): run `git lfs pull`"):
        GPT.from_pretrained(tmp_path)


def test_sharded_checkpoint_loads_every_shard(tmp_path):
    # guards: a sharded checkpoint (model.safetensors.index.json) read only partly, e.g. the first shard
    from safetensors.numpy import load_file, save_file

    model = randomise(GPT(GPTConfig(**TINY)))
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(tmp_path / file))
        weight_map.update(dict.fromkeys(keys, file))
    index = {"metadata": {}, "weight_map": weight_map}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    loaded = GPT.from_pretrained(tmp_path)
    assert set(loaded.params) == set(model.params)
    for name, p in model.params.items():
        np.testing.assert_array_equal(loaded.params[name], p, err_msg=name)


def test_a_checkpoint_without_the_transformer_prefix_loads(tmp_path):
    # GPT2Model (no LM head) saves its keys without "transformer.": the layer count must see them too
    from safetensors.numpy import load_file, save_file

    model = randomise(GPT(GPTConfig(**TINY)))
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    bare = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    save_file(bare, str(tmp_path / "model.safetensors"))
    loaded = GPT.from_pretrained(tmp_path)
    for name, p in model.params.items():
        np.testing.assert_array_equal(loaded.params[name], p, err_msg=name)


def test_a_checkpoint_missing_tensors_names_them(tmp_path):
    from safetensors.numpy import load_file, save_file

    GPT(GPTConfig(**TINY)).save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["transformer.ln_f.bias"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    # (named as the file names its others, with what it holds: 'is missing ln_f.bias' was no key of it)
    with pytest.raises(TinyGPTError, match=r"checkpoint at .* is missing 'transformer\.ln_f\.bias' \(the "
                                           r"weights hold 27 tensors, layers h\.0 to h\.1\)$"):
        GPT.from_pretrained(tmp_path)
    for name in ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias"):
        del tensors[f"transformer.h.0.{name}"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(TinyGPTError, match=r"is missing 'transformer\.h\.0\.ln_1\.weight', "
                                           r"'transformer\.h\.0\.ln_1\.bias', "
                                           r"'transformer\.h\.0\.ln_2\.weight' and 2 more \(the weights hold "
                                           r"23 tensors, layers h\.0 to h\.1\)$"):
        GPT.from_pretrained(tmp_path)

def test_a_missing_tensor_message_says_which_layers_the_file_holds():
    from tinygpt.model import _layers_held

    assert _layers_held(set()) == "no layers" and _layers_held({3}) == "layer h.3"
    assert _layers_held({2, 0, 1}) == "layers h.0 to h.2" and _layers_held({0, 2}) == "layers h.0, h.2"
    assert _layers_held(set(range(0, 20, 2))) == "layers h.0, h.2, h.4, h.6, h.8, h.10, ..."


def test_legacy_buffers_are_skipped_and_only_a_tied_lm_head_is_accepted(tmp_path):
    # guards: older transformers checkpoints carry attn.bias / attn.masked_bias buffers (not parameters) and
    # lm_head.weight; the buffers must be skipped, and an lm_head that differs from wte must be refused, not
    # silently replaced by wte (the model's output layer would differ from the checkpoint's)
    from safetensors.numpy import load_file, save_file

    model = randomise(GPT(GPTConfig(**TINY)))
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    T = TINY["block_size"]
    for i in range(TINY["n_layer"]):
        tensors[f"transformer.h.{i}.attn.bias"] = np.tril(np.ones((T, T), np.float32))[None, None]
        tensors[f"transformer.h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"].copy()
    save_file(tensors, str(tmp_path / "model.safetensors"))
    loaded = GPT.from_pretrained(tmp_path)
    for name, p in model.params.items():
        np.testing.assert_array_equal(loaded.params[name], p, err_msg=name)
    tensors["lm_head.weight"][0, 0] += 1.0
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(TinyGPTError, match="lm_head.weight differs"):
        GPT.from_pretrained(tmp_path)


def test_half_precision_tensors_are_widened_by_value(tmp_path):
    # guards: float16 tensors read as raw 16-bit integers (or bits) instead of their values, in a file that
    # also holds bfloat16 (then tinygpt reads the file by hand); the expected values come from torch
    import torch
    from safetensors.numpy import load_file
    from safetensors.torch import save_file

    randomise(GPT(GPTConfig(**TINY))).save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    half = {k: torch.from_numpy(v).to(torch.bfloat16 if v.ndim == 2 else torch.float16)
            for k, v in tensors.items()}
    save_file(half, str(tmp_path / "model.safetensors"))
    loaded = GPT.from_pretrained(tmp_path)
    for key, tensor in half.items():
        np.testing.assert_array_equal(loaded.params[key.removeprefix("transformer.")], tensor.float().numpy(),
                                      err_msg=key)


@pytest.mark.parametrize("change, loads", [
    ({"model_type": "gpt_neo"}, False),  # another architecture whose names and sizes happen to fit
    ({"scale_attn_by_inverse_layer_idx": True}, False),
    ({"reorder_and_upcast_attn": True}, False),
    ({"tie_word_embeddings": False}, False),
    ({"layer_norm_epsilon": 1e-6}, False),
    ({"n_inner": 4 * TINY["n_embd"]}, True),  # transformers writes the MLP width out in some configs
    ({"activation_function": "gelu_pytorch_tanh"}, True),
    ({"activation_function": "gelu_fast"}, False),  # another approximation, neither of tinygpt's two
])
def test_from_pretrained_refuses_what_it_would_compute_differently(tmp_path, change, loads):
    # guards: a transformers option that changes the computation (attention scaling by layer, another
    # LayerNorm eps, an untied head) accepted and silently ignored; or an explicit but standard one refused
    GPT(GPTConfig(**TINY)).save_pretrained(tmp_path)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **change}))
    if loads:
        assert GPT.from_pretrained(tmp_path).config == GPTConfig(**TINY)
    else:
        with pytest.raises(TinyGPTError, match=next(iter(change))):
            GPT.from_pretrained(tmp_path)


@pytest.mark.parametrize("vocab_size, eot", [(50256, None), (50257, 50256), (50304, 50256)])
def test_config_json_names_eot_only_when_the_vocabulary_has_it(tmp_path, vocab_size, eot):
    # guards: an off-by-one that writes bos/eos 50256 for a vocabulary of 50256 ids (0..50255)
    config = GPTConfig(vocab_size=vocab_size, block_size=4, n_layer=1, n_head=1, n_embd=4)
    GPT(config).save_pretrained(tmp_path)
    hf = json.loads((tmp_path / "config.json").read_text())
    assert hf["bos_token_id"] == eot and hf["eos_token_id"] == eot


def test_dropout_comes_from_resid_pdrop(tmp_path):
    # guards: the one dropout tinygpt has read from another of transformers' three (as documented:
    # resid_pdrop), which differ in configs that were not written by tinygpt
    GPT(GPTConfig(**TINY)).save_pretrained(tmp_path)
    config_path = tmp_path / "config.json"
    pdrops = {"resid_pdrop": 0.1, "attn_pdrop": 0.2, "embd_pdrop": 0.3}
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **pdrops}))
    assert GPT.from_pretrained(tmp_path).config.dropout == 0.1


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_forward_that_keeps_no_caches_scores_the_same_and_frees_each_layers(backend):
    """forward(idx, targets, keep_caches=False), what evaluation runs: the same logits and loss bits as a
    training forward, no tape left for backward, and (NumPy, whose arrays tracemalloc sees) a traced peak
    of about one block's activations instead of all six blocks' (measured: 0.18x of the keeping forward's)."""
    import tracemalloc

    config = GPTConfig(vocab_size=11, block_size=64, n_layer=6, n_head=2, n_embd=32, dropout=0.0)
    model = GPT(config, seed=0, backend=backend)
    idx = np.random.default_rng(0).integers(0, 11, (4, 64))
    targets = np.roll(idx, -1, axis=1)

    def run(keep):
        model._tape = None
        tracemalloc.start()
        logits, loss = model.forward(idx, targets, keep_caches=keep)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return np.array(logits), loss, peak

    kept_logits, kept_loss, kept_peak = run(True)
    model.backward()  # (a training forward's tape is there to consume)
    logits, loss, peak = run(False)
    np.testing.assert_array_equal(logits, kept_logits)
    assert loss == kept_loss
    with pytest.raises(TinyGPTError, match="needs a forward"):
        model.backward()
    if backend == "numpy":
        assert peak < 0.5 * kept_peak, (peak, kept_peak)


def test_error_messages_show_numpy_scalars_as_the_numbers_they_hold():
    # guards: NumPy 2's repr put "got np.float64(-1.0)" and "got np.int64(0)" in the one-line messages of
    # values an API caller took from an array; the messages mean the number
    cases = [
        (lambda: GPTConfig(**{**TINY, "dropout": np.float64(-1.0)}), "GPTConfig.dropout must be", "got -1.0"),
        (lambda: GPTConfig(**{**TINY, "n_layer": np.int64(0)}), "GPTConfig.n_layer must be", "got 0"),
        (lambda: GPT(GPTConfig(**TINY)).generate([0], 2, temperature=np.float32(-2.0)), "temperature",
         "got -2.0"),
        (lambda: AdamW({"w": np.zeros(2)}, lr=np.float64(-1.0)), "AdamW: lr", "got -1.0"),
        # a float32 in its own shortest digits, not those of the float64 it widens to (-1.100000023841858)
        (lambda: AdamW({"w": np.zeros(2)}, lr=np.float32(-1.1)), "AdamW: lr", "got -1.1"),
    ]
    for make, start, end in cases:
        with pytest.raises(TinyGPTError) as caught:
            make()
        message = str(caught.value)
        assert start in message and message.endswith(end) and "np." not in message, message


def test_the_finite_weights_check_copies_no_gpu_weight_to_the_host(monkeypatch):
    # eval and sample check the weights at load: on the cuda backend each tensor was copied to the host
    # first (0.5 GB for GPT-2 small), where one sum of squares on the GPU tells the usual case (all finite)
    # and only a non-finite sum is looked into. Stand-ins: device arrays that count their copies, and the
    # GPU's float64 sum of squares
    from types import SimpleNamespace

    import tinygpt.kernels.cuda
    from tinygpt.model import non_finite_weight

    copied = []

    class OnGpu:
        def __init__(self, values):
            self.values = np.asarray(values)

        def copy_to_host(self):
            copied.append(self)
            return self.values.copy()

    def sum_squares_total(arrays):
        with np.errstate(over="ignore"):  # (1e200 squared, below)
            return float(sum(np.square(a.values.astype(np.float64)).sum() for a in arrays))

    monkeypatch.setattr(tinygpt.kernels.cuda, "sum_squares_total", sum_squares_total)
    ops = SimpleNamespace(to_host=lambda a: a.copy_to_host() if isinstance(a, OnGpu) else a)
    params = {"a": OnGpu(np.ones((3, 4), np.float32)), "b": OnGpu(np.full(5, 3e38, np.float32)),
              "head": np.zeros(2, np.float32)}  # (3e38 squared: 9e76; a classifier's head is on the host)
    assert non_finite_weight(params, ops) is None and copied == []
    params["head"][1] = np.inf
    assert non_finite_weight(params, ops) == "head has inf" and copied == []
    params["b"].values[2] = np.nan
    assert non_finite_weight(params, ops) == "b has nan"
    # a float64 weight past 1e154 overflows the sum, not the weight: found finite tensor by tensor
    assert non_finite_weight({"a": OnGpu([1e200])}, ops) is None
