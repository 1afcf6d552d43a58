"""AdamW against torch.optim.AdamW, gradient clipping against torch's, and the learning-rate schedule."""

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tinygpt.errors import TinyGPTError
from tinygpt.optim import AdamW, clip_grad_norm, grad_norm, lr_at


def _params(rng, dtype):
    # GPT-like shapes: 2-D weights and an embedding decay, 1-D biases and LayerNorm gains do not.
    return {
        "wte.weight": rng.standard_normal((11, 6)).astype(dtype),
        "h.0.attn.c_attn.weight": rng.standard_normal((6, 18)).astype(dtype),
        "h.0.attn.c_attn.bias": rng.standard_normal(18).astype(dtype),
        "ln_f.weight": (1.0 + 0.1 * rng.standard_normal(6)).astype(dtype),
    }


def _run_both(dtype, torch_dtype, steps, lr_schedule, betas, weight_decay, seed=0):
    rng = np.random.default_rng(seed)
    params = _params(rng, dtype)
    tparams = {k: torch.tensor(v.copy(), dtype=torch_dtype, requires_grad=True) for k, v in params.items()}
    decay = [t for k, t in tparams.items() if t.ndim >= 2]
    no_decay = [t for k, t in tparams.items() if t.ndim < 2]
    topt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr_schedule(0), betas=betas, eps=1e-8, foreach=False)
    opt = AdamW(params, lr=lr_schedule(0), betas=betas, eps=1e-8, weight_decay=weight_decay)
    for step in range(steps):
        # Gradients of very different scales, some exactly zero, fresh every step.
        grads = {k: (rng.standard_normal(v.shape) * 10.0 ** rng.integers(-4, 2)).astype(dtype)
                 for k, v in params.items()}
        grads["h.0.attn.c_attn.bias"][:3] = 0.0
        lr = lr_schedule(step)
        for group in topt.param_groups:
            group["lr"] = lr
        for k, t in tparams.items():
            t.grad = torch.tensor(grads[k].copy(), dtype=torch_dtype)
        topt.step()
        opt.step(grads, lr=lr)
    return params, tparams


def test_adamw_matches_torch_float64_over_many_steps():
    def schedule(step):
        return lr_at(step, 1e-2, warmup_iters=5, lr_decay_iters=150, min_lr=1e-3)

    params, tparams = _run_both(np.float64, torch.float64, 200, schedule, (0.9, 0.95), 0.1)
    for k, p in params.items():
        np.testing.assert_allclose(p, tparams[k].detach().numpy(), rtol=1e-11, atol=1e-12, err_msg=k)


def test_adamw_matches_torch_float32():
    params, tparams = _run_both(np.float32, torch.float32, 100, lambda s: 3e-3, (0.9, 0.99), 0.5, seed=1)
    for k, p in params.items():
        assert p.dtype == np.float32
        np.testing.assert_allclose(p, tparams[k].detach().numpy(), rtol=2e-5, atol=2e-6, err_msg=k)


@settings(max_examples=25, deadline=None)
@given(lr=st.floats(0.0, 0.1), beta1=st.sampled_from([0.0, 0.5, 0.9]),
       beta2=st.sampled_from([0.0, 0.9, 0.99]), eps=st.sampled_from([1e-12, 1e-8, 1e-3]),
       weight_decay=st.floats(0.0, 1.0), steps=st.integers(1, 4), fused=st.booleans(),
       seed=st.integers(0, 2**16))
def test_adamw_matches_torch_for_any_hyperparameters(lr, beta1, beta2, eps, weight_decay, steps, fused, seed):
    """For any lr (0 too), betas (0 too: no averaging), eps and weight decay, a few AdamW steps of ours, the
    NumPy arithmetic or the fused Numba kernel, give torch.optim.AdamW's parameters and moments (float64)."""
    rng = np.random.default_rng(seed)
    params = _params(rng, np.float64)
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    groups = [{"params": [t for t in tparams.values() if t.ndim >= 2], "weight_decay": weight_decay},
              {"params": [t for t in tparams.values() if t.ndim < 2], "weight_decay": 0.0}]
    topt = torch.optim.AdamW(groups, lr=lr, betas=(beta1, beta2), eps=eps, foreach=False)
    kernel = None
    if fused:
        from tinygpt.kernels import get_ops

        kernel = get_ops("numba").adamw_update
    opt = AdamW(params, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay, kernel=kernel)
    for _ in range(steps):
        grads = {k: rng.standard_normal(v.shape) * 10.0 ** rng.integers(-3, 2) for k, v in params.items()}
        for k, t in tparams.items():
            t.grad = torch.tensor(grads[k].copy())
        topt.step()
        opt.step(grads)
    for k, t in tparams.items():
        state = topt.state[t]
        np.testing.assert_allclose(params[k], t.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=k)
        for ours, theirs in ((opt.exp_avg[k], state["exp_avg"]), (opt.exp_avg_sq[k], state["exp_avg_sq"])):
            np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-10, atol=1e-14, err_msg=k)


def test_adamw_updates_in_place_and_decays_only_matrices():
    rng = np.random.default_rng(0)
    params = _params(rng, np.float32)
    before = {k: v.copy() for k, v in params.items()}
    ids = {k: id(v) for k, v in params.items()}
    opt = AdamW(params, lr=0.1, weight_decay=0.5)
    opt.step({k: np.zeros_like(v) for k, v in params.items()})  # zero gradient: only decay moves p
    assert {k: id(v) for k, v in params.items()} == ids
    np.testing.assert_allclose(params["wte.weight"], before["wte.weight"] * (1 - 0.1 * 0.5), rtol=1e-6)
    np.testing.assert_array_equal(params["ln_f.weight"], before["ln_f.weight"])
    np.testing.assert_array_equal(params["h.0.attn.c_attn.bias"], before["h.0.attn.c_attn.bias"])


def test_first_adam_step_moves_each_coordinate_by_lr():
    # With bias correction, step 1 is lr * g / (|g| + eps): every coordinate moves by ~lr against its sign.
    params = {"w": np.array([1.0, -2.0, 3.0])}
    opt = AdamW(params, lr=0.01, weight_decay=0.0)
    opt.step({"w": np.array([5.0, -0.001, 0.0])})
    np.testing.assert_allclose(params["w"], [0.99, -1.99, 3.0], rtol=0, atol=1e-7)


def test_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(3)
    a = _params(rng, np.float32)
    b = {k: v.copy() for k, v in a.items()}
    opt_a = AdamW(a, lr=1e-2)
    grads = [{k: rng.standard_normal(v.shape).astype(np.float32) for k, v in a.items()} for _ in range(6)]
    for g in grads[:3]:
        opt_a.step(g)
    state = opt_a.state_dict()
    b.update({k: v.copy() for k, v in a.items()})
    opt_b = AdamW(b, lr=1e-2)
    opt_b.load_state_dict(state)
    for g in grads[3:]:
        opt_a.step(g)
        opt_b.step(g)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert opt_b.step_count == 6


def test_load_state_dict_rejects_mismatched_state():
    params = {"w": np.zeros((2, 2), np.float32)}
    opt = AdamW(params, lr=1e-3)
    state = opt.state_dict()
    state["exp_avg"]["w"] = np.zeros((3, 2), np.float32)
    with pytest.raises(TinyGPTError, match="shape"):
        opt.load_state_dict(state)
    with pytest.raises(TinyGPTError, match="missing"):
        opt.load_state_dict({"step": 1, "exp_avg": {}, "exp_avg_sq": {}})


def test_load_state_dict_rejects_extra_moments_and_a_misshapen_second_moment():
    # the names must match both ways, and exp_avg_sq is checked as exp_avg is (a (3, 2) v loaded silently
    # and broadcast, or failed, at the next step)
    params = {"w": np.zeros((2, 2), np.float32)}
    opt = AdamW(params, lr=1e-3)
    state = opt.state_dict()
    state["exp_avg"]["other"] = np.zeros(3, np.float32)
    with pytest.raises(TinyGPTError, match=r"missing \[\], unexpected \['other'\]"):
        opt.load_state_dict(state)
    state = opt.state_dict()
    state["exp_avg_sq"]["w"] = np.zeros((3, 2), np.float32)
    with pytest.raises(TinyGPTError, match=r"exp_avg_sq\.w has shape \(3, 2\)"):
        opt.load_state_dict(state)


def test_state_dict_is_a_snapshot_and_load_state_dict_copies():
    """state_dict's moments are copies (as documented), so they do not move when the optimizer steps on,
    and an optimizer that loaded a state does not write into the caller's arrays: sharing them either
    way would silently change a state the caller holds."""
    rng = np.random.default_rng(4)
    params = _params(rng, np.float32)
    grads = [{k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
             for _ in range(2)]
    opt = AdamW(params, lr=1e-2)
    opt.step(grads[0])
    state = opt.state_dict()
    saved = {key: {k: a.copy() for k, a in state[key].items()} for key in ("exp_avg", "exp_avg_sq")}
    opt.step(grads[1])
    for key in saved:
        for k, a in saved[key].items():
            np.testing.assert_array_equal(state[key][k], a, err_msg=f"state_dict()[{key!r}][{k!r}] moved")

    other = AdamW({k: v.copy() for k, v in params.items()}, lr=1e-2)
    other.load_state_dict(state)
    other.step(grads[1])
    for key in saved:
        for k, a in saved[key].items():
            np.testing.assert_array_equal(state[key][k], a, err_msg=f"load_state_dict wrote into {key}.{k}")


def test_load_state_dict_restores_the_saved_hyperparameters():
    """A resumed optimizer continues with the hyperparameters it was saved with, not its constructor's."""
    params = {"w": np.ones((2, 3))}
    saved = AdamW(params, lr=3e-4, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.25).state_dict()
    opt = AdamW({"w": np.ones((2, 3))}, lr=1.0, betas=(0.5, 0.6), eps=1e-3, weight_decay=0.0)
    opt.load_state_dict(saved)
    assert (opt.lr, opt.betas, opt.eps, opt.weight_decay) == (3e-4, (0.8, 0.9), 1e-6, 0.25)


@pytest.mark.parametrize(
    "bad", [{"lr": -1.0}, {"betas": (0.9, 1.0)}, {"weight_decay": -0.1}, {"lr": math.nan}, {"eps": -1e-8}]
)
def test_bad_hyperparameters_raise(bad):
    kwargs = {"lr": 1e-3, **bad}
    with pytest.raises(TinyGPTError):
        AdamW({"w": np.zeros(2)}, **kwargs)


def test_the_norm_of_many_float32_gradients_is_summed_in_float64():
    # np.dot of float32 (BLAS sdot) summed the squares in float32: over 4M entries the norm was ~1e-5 off
    # (GPT-2 small's 124M gradients: 1.1e-4), where the cuda backend's, in float64, agrees to 1e-13. The
    # numpy backend's ops.sum_squares is grad_norm's own reference; numba's, its compiled pass, sums alike
    from tinygpt.kernels import SUM_SQUARES_BLOCK, get_ops

    rng = np.random.default_rng(5)
    grads = {"wte": rng.standard_normal((2**22 + 3,), dtype=np.float32),  # (a last block that is not full)
             "bias": np.full(1000, 0.01, np.float32)}
    assert grads["wte"].size > 64 * SUM_SQUARES_BLOCK
    exact = {name: float(np.square(g, dtype=np.float64).sum()) for name, g in grads.items()}
    assert grad_norm(grads) == pytest.approx(math.sqrt(sum(exact.values())), rel=1e-12)
    for backend in ("numpy", "numba"):
        assert get_ops(backend).sum_squares(grads["wte"]) == pytest.approx(exact["wte"], rel=1e-12), backend
        assert grad_norm(grads, get_ops(backend).sum_squares) == pytest.approx(math.sqrt(sum(exact.values())),
                                                                               rel=1e-12), backend
    assert grad_norm({"w": np.arange(5.0)}) == math.sqrt(30.0)  # float64: one dot, as before


@settings(max_examples=40, deadline=None)
@given(scale=st.floats(1e-3, 1e3), max_norm=st.floats(0.01, 100.0), seed=st.integers(0, 2**16))
def test_clip_grad_norm_matches_torch(scale, max_norm, seed):
    rng = np.random.default_rng(seed)
    grads = {"a": rng.standard_normal((4, 5)) * scale, "b": rng.standard_normal(7) * scale}
    tgrads = [torch.tensor(g.copy()) for g in grads.values()]
    tensors = [torch.zeros_like(t, requires_grad=True) for t in tgrads]
    for t, g in zip(tensors, tgrads):
        t.grad = g
    expected_norm = torch.nn.utils.clip_grad_norm_(tensors, max_norm).item()
    norm = clip_grad_norm(grads, max_norm)
    assert norm == pytest.approx(expected_norm, rel=1e-12)
    for g, t in zip(grads.values(), tensors):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-12)
    assert grad_norm(grads) <= max_norm * (1 + 1e-9)  # clipped, or already within max_norm


@settings(max_examples=40, deadline=None)
@given(shapes=st.lists(st.lists(st.integers(0, 4), max_size=3).map(tuple), min_size=1, max_size=5),
       scale=st.floats(1e-3, 1e3), max_norm=st.floats(0.01, 100.0),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_clip_grad_norm_shortens_every_gradient_by_one_factor(shapes, scale, max_norm, dtype, seed):
    """For gradients of any shapes (empty and 0-d ones too) and either float dtype: the returned norm is
    the global norm before clipping, the norm after is at most max_norm, and every gradient is its old
    self times one common factor in (0, 1], 1 when the norm was within max_norm: the direction of the
    whole update is kept."""
    rng = np.random.default_rng(seed)
    # (np.asarray: a 0-d gradient is an array, updated in place, not a NumPy scalar)
    grads = {f"g{i}": np.asarray(rng.standard_normal(s) * scale, dtype=dtype) for i, s in enumerate(shapes)}
    before = {k: g.astype(np.float64) for k, g in grads.items()}
    norm_before = math.sqrt(sum(float((g**2).sum()) for g in before.values()))
    norm = clip_grad_norm(grads, max_norm)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    assert norm == pytest.approx(norm_before, rel=rtol, abs=1e-30)
    assert all(g.dtype == dtype and g.shape == before[k].shape for k, g in grads.items())
    assert grad_norm(grads) <= max_norm * (1 + rtol)
    factor = min(1.0, max_norm / (norm_before + 1e-6))
    for k, g in grads.items():
        np.testing.assert_allclose(g, before[k] * factor, rtol=rtol, atol=0, err_msg=k)


@pytest.mark.parametrize("over", [0.999, 1.001, 1.25, 1.9, 3.0])
def test_clip_just_over_or_under_max_norm(over):
    """Gradients whose norm is ``over`` times max_norm: above it every one is scaled by
    max_norm / (norm + 1e-6) (torch's factor), below it none is touched. The hypothesis test above rarely
    draws norms within a factor 2 of max_norm, where clipping only when far over passed it."""
    rng = np.random.default_rng(3)
    grads = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}
    unit = math.sqrt(sum(float((g**2).sum()) for g in grads.values()))
    max_norm = 2.0
    grads = {k: g * (over * max_norm / unit) for k, g in grads.items()}  # global norm = over * max_norm
    before = {k: g.copy() for k, g in grads.items()}
    tensors = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads.values()]
    for t, g in zip(tensors, grads.values()):
        t.grad = torch.tensor(g.copy())
    torch.nn.utils.clip_grad_norm_(tensors, max_norm)
    norm = clip_grad_norm(grads, max_norm)
    assert norm == pytest.approx(over * max_norm, rel=1e-12)
    factor = max_norm / (over * max_norm + 1e-6) if over > 1 else 1.0
    for (k, g), t in zip(grads.items(), tensors):
        np.testing.assert_allclose(g, before[k] * factor, rtol=1e-12, err_msg=k)
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-12, err_msg=k)
    assert grad_norm(grads) == pytest.approx(min(over, 1.0) * max_norm, rel=1e-6)


def test_clip_disabled_returns_norm_and_keeps_grads():
    grads = {"a": np.array([3.0, 4.0])}
    assert clip_grad_norm(grads, 0.0) == pytest.approx(5.0)
    np.testing.assert_array_equal(grads["a"], [3.0, 4.0])
    assert clip_grad_norm(grads, 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(np.linalg.norm(grads["a"]), 1.0, rtol=1e-6)


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_clip_leaves_non_finite_gradients_alone(bad):
    """A non-finite norm is returned and the gradients are not touched: scaling by max_norm / inf = 0 would
    zero them (and turn inf into nan), hiding the overflow the caller is about to report."""
    grads = {"a": np.array([3.0, bad]), "b": np.array([4.0])}
    norm = clip_grad_norm(grads, 1.0)
    assert not math.isfinite(norm)
    np.testing.assert_array_equal(grads["a"], [3.0, bad])
    np.testing.assert_array_equal(grads["b"], [4.0])


def test_lr_schedule_shape():
    kw = {"learning_rate": 1e-3, "warmup_iters": 100, "lr_decay_iters": 2000, "min_lr": 1e-4}
    assert lr_at(0, **kw) == pytest.approx(1e-3 / 101)
    assert lr_at(100, **kw) == pytest.approx(1e-3)
    assert lr_at(1050, **kw) == pytest.approx(5.5e-4)
    assert lr_at(2000, **kw) == pytest.approx(1e-4)
    assert lr_at(5000, **kw) == 1e-4
    lrs = [lr_at(s, **kw) for s in range(2101)]
    assert all(a < b for a, b in zip(lrs[:100], lrs[1:101]))  # warmup rises
    assert all(a >= b for a, b in zip(lrs[100:2000], lrs[101:2001]))  # decay never rises
    assert min(lrs[100:]) == pytest.approx(1e-4) and max(lrs) == pytest.approx(1e-3)


@example(warmup=7, extra=0)  # a run no longer than its warmup (train resolves lr_decay_iters to warmup_iters)
@example(warmup=0, extra=0)
@settings(max_examples=40, deadline=None)
@given(warmup=st.integers(0, 500), extra=st.integers(0, 5000))
def test_lr_schedule_reaches_min_lr_at_lr_decay_iters(warmup, extra):
    """At step lr_decay_iters the cosine has run its course, r = 1, cos(pi) = -1: exactly min_lr, also when
    lr_decay_iters == warmup_iters (no decay span: the schedule drops straight to min_lr). The step before
    is still above min_lr, and the first step past the warmup is the peak when there is a decay span."""
    decay = warmup + extra
    kw = {"learning_rate": 6e-4, "warmup_iters": warmup, "lr_decay_iters": decay, "min_lr": 6e-5}
    assert lr_at(decay, **kw) == pytest.approx(6e-5, rel=1e-12)
    assert lr_at(decay + 1, **kw) == 6e-5
    if decay > 0:
        assert lr_at(decay - 1, **kw) > 6e-5
    if extra > 0:
        assert lr_at(warmup, **kw) == pytest.approx(6e-4, rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(lr=st.floats(1e-6, 1.0), min_fraction=st.floats(0.0, 1.0), warmup=st.integers(0, 300),
       extra=st.integers(0, 2000))
def test_lr_schedule_rises_in_equal_steps_then_never_rises_and_stays_in_range(lr, min_fraction, warmup,
                                                                               extra):
    """For any peak lr >= min_lr >= 0: the warmup climbs in equal steps of lr / (warmup + 1) and the
    first step after it is one more such step, to the peak (no jump where the warmup hands over to the
    cosine); from there on the rate never rises and stays within [min_lr, lr]."""
    min_lr = lr * min_fraction
    decay = warmup + extra
    lrs = [lr_at(s, lr, warmup, decay, min_lr) for s in range(decay + 3)]
    rise = lr / (warmup + 1)
    for s in range(warmup):
        assert lrs[s] == pytest.approx(rise * (s + 1), rel=1e-12)
    if extra > 0:
        assert lrs[warmup] == pytest.approx(lr, rel=1e-12)
    after = lrs[warmup:]
    assert all(a >= b for a, b in zip(after, after[1:]))
    assert all(min_lr * (1 - 1e-12) <= x <= lr * (1 + 1e-12) for x in after)
    assert after[-1] == min_lr


@settings(max_examples=60, deadline=None)
@given(step=st.integers(0, 10_000), warmup=st.integers(0, 500), decay=st.integers(0, 5000))
def test_lr_always_between_zero_and_peak(step, warmup, decay):
    lr = lr_at(step, 6e-4, warmup, max(decay, warmup), 6e-5)
    assert 0.0 < lr <= 6e-4 + 1e-15


def test_lr_at_refuses_a_negative_step_or_warmup():
    kw = {"learning_rate": 1e-3, "lr_decay_iters": 100, "min_lr": 1e-4}
    with pytest.raises(TinyGPTError, match=r"^lr_at: step must be >= 0, got -5$"):
        lr_at(-5, warmup_iters=0, **kw)  # was -4e-3, a negative rate
    with pytest.raises(TinyGPTError, match=r"^lr_at: warmup_iters must be >= 0, got -1$"):
        lr_at(0, warmup_iters=-1, **kw)  # was 9.8e-4: a cosine begun before step 0, below the peak
    # lr_decay_iters below warmup_iters is no decay span, as lr_decay_iters == warmup_iters
    assert ([lr_at(s, 1e-3, 10, 3, 1e-4) for s in range(15)]
            == [lr_at(s, 1e-3, 10, 10, 1e-4) for s in range(15)])


def test_fused_kernel_gives_the_same_updates():
    from tinygpt.kernels import get_ops

    rng = np.random.default_rng(5)
    a = _params(rng, np.float32)
    b = {k: v.copy() for k, v in a.items()}
    opt_a = AdamW(a, lr=3e-3, weight_decay=0.2)
    opt_b = AdamW(b, lr=3e-3, weight_decay=0.2, kernel=get_ops("numba").adamw_update)
    for _ in range(20):
        grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in a.items()}
        opt_a.step(grads)
        opt_b.step(grads)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert not np.array_equal(a["ln_f.weight"], _params(np.random.default_rng(5), np.float32)["ln_f.weight"])


def test_step_refuses_missing_or_misshapen_grads_before_updating_anything():
    params = {"w": np.ones((2, 3)), "b": np.zeros(3)}
    opt = AdamW(params, lr=0.1)
    b = np.ones(3)
    for grads in ({"w": np.ones((2, 3))}, {"w": np.ones(1), "b": b}, {"w": np.ones((3, 2)), "b": b}):
        with pytest.raises(TinyGPTError, match="AdamW.step"):
            opt.step(grads)
    # the constructor refuses these; a schedule's may come per step. An infinite rate moved every weight to
    # inf or nan, and one past float's range (10**400) was float()'s OverflowError
    for lr in (float("nan"), -1.0, float("inf"), 10**400):
        with pytest.raises(TinyGPTError, match="AdamW.step: lr must be a finite number >= 0"):
            opt.step({"w": np.ones((2, 3)), "b": b}, lr=lr)
    for lr in ("x", "0.1"):  # float()'s ValueError, and a string taken as a rate (the constructor refuses it)
        with pytest.raises(TinyGPTError, match="AdamW.step: lr must be a number"):
            opt.step({"w": np.ones((2, 3)), "b": b}, lr=lr)
    assert opt.step_count == 0
    np.testing.assert_array_equal(params["w"], np.ones((2, 3)))
    np.testing.assert_array_equal(params["b"], np.zeros(3))


def test_a_zero_learning_rate_moves_no_weight_but_advances_the_moments():
    # lr = 0 is allowed (the constructor's ">= 0"): a schedule with min_lr = 0 ends on it, step by step
    params = {"w": np.array([[1.0, -2.0]]), "b": np.array([0.5])}
    opt = AdamW(params, lr=0.0, weight_decay=0.1)
    grads = {"w": np.array([[0.3, -0.4]]), "b": np.array([2.0])}
    opt.step(grads)
    opt.step(grads, lr=0.0)
    assert opt.step_count == 2
    np.testing.assert_array_equal(params["w"], [[1.0, -2.0]])  # no decay either: lr * wd = 0
    np.testing.assert_array_equal(params["b"], [0.5])
    np.testing.assert_allclose(opt.exp_avg["w"], (1 - 0.9**2) * grads["w"], rtol=1e-12)
    np.testing.assert_allclose(opt.exp_avg_sq["b"], (1 - 0.95**2) * grads["b"] ** 2, rtol=1e-12)


def test_adamw_rates_that_are_not_finite_are_refused():
    # an infinite rate or decay moved every weight to inf or nan; one past float's range (10**400) was
    # float()'s OverflowError
    for name in ("lr", "eps", "weight_decay"):
        for bad, shown in ((float("inf"), "inf"), (-1.0, "-1.0"), (10**400, "<an integer of 1,329 bits>")):
            message = f"^AdamW: {name} must be a finite number >= 0, got {shown}$"
            with pytest.raises(TinyGPTError, match=message):
                AdamW({"w": np.ones(3)}, **{"lr": 0.1, name: bad})


def test_clip_grad_norm_refuses_a_nan_max_norm():
    grads = {"w": np.full(4, 10.0)}
    with pytest.raises(TinyGPTError, match="max_norm is nan"):
        clip_grad_norm(grads, float("nan"))
    np.testing.assert_array_equal(grads["w"], np.full(4, 10.0))


@pytest.mark.parametrize("kwargs, message", [
    ({"lr": "a"}, "lr must be a number"),
    ({"lr": None}, "lr must be a number"),
    ({"lr": 0.1, "betas": 0.9}, "betas must be a pair"),
    ({"lr": 0.1, "betas": (0.9,)}, "betas must be a pair"),
    ({"lr": 0.1, "betas": (0.9, 0.95, 0.99)}, "betas must be a pair"),
    ({"lr": 0.1, "eps": "1e-8"}, "eps must be a number"),
    ({"lr": 0.1, "weight_decay": True}, "weight_decay must be a number"),
])
def test_adamw_arguments_of_the_wrong_kind_are_one_line_errors(kwargs, message):
    # they were a TypeError, an IndexError or an AttributeError from inside the constructor
    with pytest.raises(TinyGPTError, match=message):
        AdamW({"w": np.ones(3)}, **kwargs)
    with pytest.raises(TinyGPTError, match="params must be a dict"):
        AdamW([np.ones(3)], lr=0.1)
