"""The backend seam and the Numba CPU kernels, each against the NumPy reference in tinygpt.layers."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygpt import layers
from tinygpt.errors import TinyGPTError
from tinygpt.gradcheck import assert_gradcheck, relative_error
from tinygpt.kernels import OP_NAMES, available_backends, cpu, get_ops, has_real_gpu, resolve_backend

# float32 kernels differ from the reference only by summation order; float64 by a few ulps
TOL = {np.float32: 1e-5, np.float64: 1e-12}
DTYPES = [np.float32, np.float64]
SETTINGS = settings(max_examples=12, deadline=None)

# ragged shapes: nothing a power of two, T = 1 (a single query attends only to itself) included
shapes = st.fixed_dictionaries({
    "B": st.integers(1, 3),
    "T": st.integers(1, 17),
    "H": st.integers(1, 3),
    "hs": st.integers(1, 9),
    "V": st.integers(2, 41),
    "seed": st.integers(0, 2**31 - 1),
})


def assert_close(actual, expected, dtype, what="", exact=None, scale=None):
    """actual within TOL of the reference; or, where the result is a cancellation (LayerNorm's dx at C = 2 is
    ~1e-5 of the terms that make it), within TOL of ``scale``, the size of those terms (summation order can
    move a sum by ~ulp * sum|terms|, however small the sum); or at least as close as the reference is to
    ``exact`` (float64)."""
    assert actual.shape == expected.shape, what
    assert actual.dtype == expected.dtype, what
    err = relative_error(actual, expected)
    if err < TOL[dtype]:
        return
    if scale is not None:
        abs_err = float(np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max())
        if abs_err <= TOL[dtype] * scale:
            return
    assert exact is not None, f"{what}: relative error {err:.2e}"
    ours, theirs = relative_error(actual, exact), relative_error(expected, exact)
    assert ours <= 2 * theirs + TOL[dtype], f"{what}: error {ours:.2e}, the reference's {theirs:.2e}"


# --- the seam -------------------------------------------------------------------------------------


def test_numpy_backend_is_the_reference():
    ops = get_ops("numpy")
    assert ops.name == "numpy"
    for op in OP_NAMES:
        if op != "adamw_update":
            assert getattr(ops, op) is getattr(layers, op)


def test_numba_backend_swaps_in_cpu_kernels_and_keeps_blas_matmul():
    ops = get_ops("numba")
    assert ops.name == "numba"
    assert all(callable(getattr(ops, op)) for op in OP_NAMES)
    # every op tinygpt.kernels.cpu compiles is the one the backend runs (a kernel left out of NUMBA_OVERRIDES
    # in pairs still passed every numerical test, on the slower reference); the rest is tinygpt.layers
    for op in OP_NAMES:
        assert getattr(ops, op) is (getattr(cpu, op, None) or getattr(layers, op)), op
    assert ops.linear_forward is layers.linear_forward  # matmuls stay on BLAS
    assert ops.cross_entropy_forward is cpu.cross_entropy_forward  # with our SIMD exp (_exp) it wins


def test_numba_backend_leaves_the_cores_to_blas(monkeypatch):
    # get_ops("numba") runs share_cores_with_blas: one kernel thread, on the non-spinning workqueue layer
    # (Numba's default pool spun against BLAS's, a training step 4x slower on 2 cores)
    import numba

    get_ops("numba")  # the threading layer starts as a model would start it
    threads = numba.get_num_threads()
    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    monkeypatch.delenv("NUMBA_THREADING_LAYER", raising=False)
    monkeypatch.setattr(numba.config, "THREADING_LAYER", "default")
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)  # as many as Numba may use (every core)
    try:
        get_ops("numba")
        assert numba.config.THREADING_LAYER == "workqueue"
        assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(threads)


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(TinyGPTError, match="unknown backend 'tpu'"):
        get_ops("tpu")


def test_auto_and_available_backends():
    assert {"numpy", "numba"} <= set(available_backends())
    assert resolve_backend("auto") == ("cuda" if has_real_gpu() else "numba")
    assert get_ops("auto").name == resolve_backend("auto")


def test_auto_never_picks_the_cuda_simulator():
    # guards: "auto" resolving to "cuda" whenever get_ops("cuda") can run, the simulator included (which
    # runs the kernels in Python, thousands of times slower than "numba"); only a real GPU means "cuda".
    # A fresh interpreter: numba picks the simulator when numba.cuda is first imported, never later.
    if has_real_gpu():
        pytest.skip("this machine has a real GPU, where 'auto' rightly picks cuda")
    code = ("from tinygpt.kernels import available_backends, resolve_backend\n"
            "print(available_backends(), resolve_backend('auto'))\n")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['numpy', 'numba', 'cuda'] numba"


def _ask_for_cuda_in_a_fresh_interpreter(prelude: str = "") -> list[str]:
    """The lines a fresh interpreter (simulator off) prints when, after ``prelude``, it lists the available
    backends and asks for "cuda": ``[available backends, "ERR " + the error]``. Skips on a real GPU."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    code = prelude + (
        "from tinygpt.kernels import available_backends, get_ops, has_real_gpu\n"
        "from tinygpt.errors import TinyGPTError\n"
        "if has_real_gpu():\n    print('GPU')\nelse:\n"
        "    print(available_backends())\n"
        "    try:\n        get_ops('cuda')\n    except TinyGPTError as e:\n        print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    if out.stdout.startswith("GPU"):
        pytest.skip("this machine has a real GPU, so backend 'cuda' is available")
    return out.stdout.splitlines()


def test_cuda_backend_without_gpu_names_the_cause():
    # what a user on a laptop sees
    backends, line = _ask_for_cuda_in_a_fresh_interpreter()  # (two lines: the error is one line)
    assert backends == "['numpy', 'numba']"
    assert line.startswith("ERR backend 'cuda' is unavailable")
    assert "numba.cuda.is_available() is False" in line  # the driver's message folded in


def test_simulator_switched_on_after_numba_was_imported_is_a_one_line_error():
    # NUMBA_ENABLE_CUDASIM=1 set after numba.cuda was imported changes nothing: numba.cuda stays the real
    # target (the notebook's own cell says "before numba is first imported"). The seam used to believe the
    # variable, so get_ops("cuda") succeeded and the first kernel launch died in numba's multi-line
    # CudaSupportError instead.
    late = "import os\nfrom numba import cuda\nos.environ['NUMBA_ENABLE_CUDASIM'] = '1'\n"
    backends, line = _ask_for_cuda_in_a_fresh_interpreter(late)
    assert backends == "['numpy', 'numba']" and line.startswith("ERR backend 'cuda' is unavailable")
    assert "NUMBA_ENABLE_CUDASIM=1 was set too late" in line


def test_bench_kernels_without_gpu_is_a_one_line_error():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    code = (
        "import sys\nfrom tinygpt.kernels import has_real_gpu\n"
        "if has_real_gpu():\n    print('GPU')\n    sys.exit(0)\n"
        "from tinygpt.cli import main\nsys.exit(main(['bench', 'kernels']))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if out.stdout.startswith("GPU"):
        pytest.skip("this machine has a real GPU")
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("tinygpt: error: bench kernels needs an NVIDIA GPU")
    assert out.stderr.count("\n") == 1


@pytest.mark.parametrize("flags, message", [
    (["--sizes", "0"], "--sizes must be positive integers, got '0'"),  # a ValueError traceback on a GPU
    (["--sizes", "1024,-5"], "--sizes must be positive integers, got '1024,-5'"),
    (["--sizes", ","], "--sizes must be positive integers, got ','"),
    (["--train-batch", "0"], "--train-batch must be at least 1, got 0"),  # after the SGEMM and attention runs
])
def test_bench_kernels_bad_sizes_are_refused_before_any_device_work(capsys, flags, message):
    from tinygpt.cli import main

    for device in ("cuda", "cpu"):
        assert main(["bench", "kernels", "--device", device, *flags]) == 2
        assert capsys.readouterr().err == f"tinygpt: error: {message}\n"


@pytest.mark.parametrize("device, flags, message", [
    ("cpu", ["--sizes", "512"], "--sizes is for --device cuda"),  # the CPU ops' figures came, no SGEMM at 512
    ("cpu", ["--train-batch", "8"], "--train-batch is for --device cuda"),
    ("cuda", ["--compile-times"], "--compile-times is for --device cpu"),
])
def test_bench_kernels_flags_of_the_other_device_are_refused_not_ignored(capsys, device, flags, message):
    from tinygpt.cli import main

    assert main(["bench", "kernels", "--device", device, *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tinygpt: error: {message}") and err.count("\n") == 1, err


# --- each kernel against the reference ------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(s=shapes)
def test_layernorm_matches_reference(dtype, s):
    rng = np.random.default_rng(s["seed"])
    C = s["H"] * s["hs"]
    x = (rng.standard_normal((s["B"], s["T"], C)) * 3 + 1).astype(dtype)
    w, b = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    f64 = [a.astype(np.float64) for a in (x, w, b, dout)]
    for bias, bias64 in ((b, f64[2]), (None, None)):
        out, cache = cpu.layernorm_forward(x, w, bias)
        ref, ref_cache = layers.layernorm_forward(x, w, bias)
        out64, cache64 = layers.layernorm_forward(f64[0], f64[1], bias64)
        assert_close(out, ref, dtype, "out", exact=out64)  # x - mean cancels when x's entries are close
        grads, ref_grads = cpu.layernorm_backward(dout, cache), layers.layernorm_backward(dout, ref_cache)
        exact = layers.layernorm_backward(f64[3], cache64)
        # dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), dxhat = dout w: its terms' size
        x64 = f64[0]
        rstd = 1 / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
        xhat = (x64 - x64.mean(-1, keepdims=True)) * rstd
        dx_terms = float((rstd * np.abs(f64[3] * f64[1]).max(-1, keepdims=True) * (2 + xhat**2)).max())
        scales = (dx_terms, None, None)
        for name, g, r, e, sc in zip(("dx", "dweight", "dbias"), grads, ref_grads, exact, scales):
            if r is None:
                assert g is None
            else:
                assert_close(g, r, dtype, name, exact=e, scale=sc)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layernorm_uses_the_eps_it_is_given(dtype):
    # every other test ran the default eps, which a kernel ignoring its argument matches; at eps = 0.1, about
    # these rows' variance, eps moves every output
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((2, 3, 8)) * 0.3).astype(dtype)
    w, b = rng.standard_normal(8).astype(dtype), rng.standard_normal(8).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    out, cache = cpu.layernorm_forward(x, w, b, eps=0.1)
    ref, ref_cache = layers.layernorm_forward(x, w, b, eps=0.1)
    assert_close(out, ref, dtype, "out")
    for name, g, r in zip(("dx", "dweight", "dbias"), cpu.layernorm_backward(dout, cache),
                          layers.layernorm_backward(dout, ref_cache)):
        assert_close(g, r, dtype, name)


def test_float32_layernorm_of_rows_far_from_zero_keeps_float64_statistics():
    # mean and rstd stay float64 from forward to backward: 1000.1 +- 0.01 in float32 normalises to float32
    # rounding (the reference, whose mean is rounded to float32, is 1e-3 off; a float32 mean cache was too)
    rng = np.random.default_rng(12)
    x = (1000.1 + 0.01 * rng.standard_normal((3, 5, 64))).astype(np.float32)
    w, b = rng.standard_normal(64).astype(np.float32), rng.standard_normal(64).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    out, cache = cpu.layernorm_forward(x, w, b)
    exact, exact_cache = layers.layernorm_forward(*(a.astype(np.float64) for a in (x, w, b)))
    assert relative_error(out, exact) < TOL[np.float32]
    grads = cpu.layernorm_backward(dout, cache)
    for name, g, e in zip(("dx", "dweight", "dbias"), grads,
                          layers.layernorm_backward(dout.astype(np.float64), exact_cache)):
        assert relative_error(g, e) < TOL[np.float32], name


def _exp_kernel():
    from numba import njit

    @njit(error_model="numpy", fastmath={"contract"})
    def exp_all(x, out):
        for i in range(x.size):
            out[i] = cpu._exp(x[i])

    return exp_all


def test_simd_exp_is_within_one_ulp_and_keeps_ieee_edges():
    exp_all = _exp_kernel()
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-88, 89, 200_000), rng.standard_normal(50_000)]).astype(np.float32)
    out = np.empty_like(x)
    exp_all(x, out)
    exact = np.exp(x.astype(np.float64))
    normal = (exact >= np.finfo(np.float32).tiny) & (exact <= np.finfo(np.float32).max)
    ulp = np.spacing(exact[normal].astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(out[normal] - exact[normal]) / ulp) < 1.0
    assert np.all(out[exact < np.finfo(np.float32).tiny] == 0)  # subnormals flushed to zero
    assert np.all(np.isinf(out[exact > np.finfo(np.float32).max]))
    edges = np.array([-np.inf, -1e4, 0.0, np.inf, np.nan], np.float32)
    exp_all(edges, out[:5])
    np.testing.assert_array_equal(out[:5], [0.0, 0.0, 1.0, np.inf, np.nan])
    x64 = rng.uniform(-700, 700, 1000)  # float64: libm's exp itself, as Python's math.exp calls it
    out64 = np.empty_like(x64)
    exp_all(x64, out64)
    # (not np.exp: NumPy's own SIMD exp differs from libm's by an ulp on some CPUs)
    np.testing.assert_array_equal(out64, [math.exp(v) for v in x64])


def test_gelu_and_softmax_leave_no_subnormals():
    # A subnormal operand slows every later multiply (BLAS's too); the reference gives exact zeros there.
    x = np.array([-60.0, -20.0, -10.0, 0.0, 3.0], np.float32)
    out, _ = cpu.gelu_forward(x)
    assert np.all((out == 0) | (np.abs(out) >= np.finfo(np.float32).tiny))
    qkv = np.zeros((1, 3, 6), np.float32)  # C = 2, one head: q = qkv[..., :2], k = qkv[..., 2:4]
    qkv[0, :, 0] = 130.0
    qkv[0, 2, 2] = 1.0  # query 2 scores key 2 at 130 / sqrt(2) = 91.9, keys 0 and 1 at 0: exp(-91.9) is
    probs = cpu.attention_forward(qkv, 1)[1][3][0]  # subnormal (1.2e-40) in float32
    ref = layers.attention_forward(qkv, 1)[1][2][0]
    assert 0 < ref[0, 0, 2, 0] < np.finfo(np.float32).tiny  # the reference keeps the subnormal
    assert np.all((probs == 0) | (probs >= np.finfo(np.float32).tiny))
    np.testing.assert_allclose(probs, ref, atol=1e-38)


def test_parallel_builds_equal_serial_builds():
    # NUMBA_NUM_THREADS > 1 runs the parallel build of each kernel: the same source, the same results.
    rng = np.random.default_rng(3)
    x = rng.standard_normal(1000).astype(np.float32)
    serial, parallel = np.empty_like(x), np.empty_like(x)
    cpu._gelu_forward_kernel.serial(x, serial)
    cpu._gelu_forward_kernel.parallel(x, parallel)
    np.testing.assert_array_equal(serial, parallel)
    scores = rng.standard_normal((3, 5, 7)).astype(np.float32)
    a, b = scores.copy(), scores.copy()
    cpu._causal_softmax_kernel.serial(a, 2, np.float32(0.5))
    cpu._causal_softmax_kernel.parallel(b, 2, np.float32(0.5))
    np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(s=shapes)
def test_gelu_matches_reference(dtype, s):
    rng = np.random.default_rng(s["seed"])
    x = (rng.standard_normal((s["B"], s["T"], 4 * s["hs"])) * 3).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    for gelu in ("gelu", "gelu_erf"):  # GPT-2's tanh form, x Phi(x) itself
        out, cache = getattr(cpu, gelu + "_forward")(x)
        ref, ref_cache = getattr(layers, gelu + "_forward")(x)
        assert_close(out, ref, dtype, f"{gelu} out")
        dx = getattr(cpu, gelu + "_backward")(dout, cache)
        assert_close(dx, getattr(layers, gelu + "_backward")(dout, ref_cache), dtype, f"{gelu} dx")


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(s=shapes, dropout=st.sampled_from([0.0, 0.25]), query_block=st.sampled_from([64, 4, 5]))
def test_attention_matches_reference(dtype, s, dropout, query_block):
    rng = np.random.default_rng(s["seed"])
    B, T, H = s["B"], s["T"], s["H"]
    C = H * s["hs"]
    qkv = (rng.standard_normal((B, T, 3 * C)) * 2).astype(dtype)
    dout = rng.standard_normal((B, T, C)).astype(dtype)
    # the same generator state gives the same dropout masks on both backends, query blocks and all
    out, cache = cpu.attention_forward(qkv, H, dropout, np.random.default_rng(7), query_block=query_block)
    ref, ref_cache = layers.attention_forward(qkv, H, dropout, np.random.default_rng(7),
                                              query_block=query_block)
    assert_close(out, ref, dtype, "out")
    # the cache holds the dropout key, not a mask the size of the probabilities: backward recomputes it
    mask_key = cache[4]
    assert mask_key is None if not dropout else all(np.ndim(c) == 0 for c in mask_key)
    dqkv = cpu.attention_backward(dout, cache)
    assert_close(dqkv, layers.attention_backward(dout, ref_cache), dtype, "dqkv")


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(s=shapes)
def test_cross_entropy_matches_reference(dtype, s):
    rng = np.random.default_rng(s["seed"])
    B, T, V = s["B"], s["T"], s["V"]
    logits = (rng.standard_normal((B, T, V)) * 4).astype(dtype)
    targets = rng.integers(0, V, size=(B, T))
    targets[rng.random((B, T)) < 0.3] = -1  # some positions ignored
    dloss = float(rng.standard_normal())
    loss, cache = cpu.cross_entropy_forward(logits, targets)
    ref, ref_cache = layers.cross_entropy_forward(logits, targets)
    assert isinstance(loss, float)
    assert abs(loss - ref) <= TOL[dtype] * max(1.0, abs(ref))
    assert_close(cpu.cross_entropy_backward(dloss, cache), layers.cross_entropy_backward(dloss, ref_cache),
                 dtype, "dlogits")


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_of_logits_far_apart_or_far_from_zero(dtype):
    # log-sum-exp subtracts each row's max: a logit 1000 below the rest must not overflow exp (in either
    # dtype) and shifting every logit by 1e4 changes nothing, the loss accumulated in float64 (exact here, to
    # float32 rounding, where a float32 log-sum-exp is 1e-4 off)
    rng = np.random.default_rng(11)
    logits = (rng.standard_normal((2, 3, 7)) * 4).astype(dtype)
    targets = np.array([[0, 3, -1], [6, 0, 2]])
    shifted = logits + dtype(1e4)
    exact = layers.cross_entropy_forward(shifted.astype(np.float64), targets)[0]
    assert abs(cpu.cross_entropy_forward(shifted, targets)[0] - exact) <= TOL[dtype] * exact
    logits[..., 0] -= 1000
    loss, cache = cpu.cross_entropy_forward(logits, targets)
    ref, ref_cache = layers.cross_entropy_forward(logits, targets)
    assert math.isfinite(loss) and abs(loss - ref) <= TOL[dtype] * abs(ref)
    assert_close(cpu.cross_entropy_backward(1.0, cache), layers.cross_entropy_backward(1.0, ref_cache), dtype,
                 "dlogits")


def test_cross_entropy_all_ignored_is_zero_not_nan():
    logits = np.random.default_rng(0).standard_normal((2, 3, 5)).astype(np.float32)
    loss, cache = cpu.cross_entropy_forward(logits, np.full((2, 3), -1))
    assert loss == 0.0
    assert not cpu.cross_entropy_backward(1.0, cache).any()


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(s=shapes)
def test_embedding_matches_reference(dtype, s):
    rng = np.random.default_rng(s["seed"])
    B, T, V = s["B"], s["T"], s["V"]
    C = s["H"] * s["hs"]
    wte, wpe = rng.standard_normal((V, C)).astype(dtype), rng.standard_normal((T + 3, C)).astype(dtype)
    idx = rng.integers(0, min(V, 4), size=(B, T))  # few distinct ids: many repeats to accumulate
    dout = rng.standard_normal((B, T, C)).astype(dtype)
    out, cache = cpu.embedding_forward(idx, wte, wpe)
    ref, ref_cache = layers.embedding_forward(idx, wte, wpe)
    assert_close(out, ref, dtype, "out")
    for name, g, r in zip(("dwte", "dwpe"), cpu.embedding_backward(dout, cache),
                          layers.embedding_backward(dout, ref_cache)):
        assert_close(g, r, dtype, name)


@pytest.mark.parametrize("name", ["attention", "layernorm", "gelu", "cross_entropy"])
def test_cpu_kernels_pass_gradcheck(name):
    # Independent of the reference: central differences in float64 with a random upstream gradient.
    rng = np.random.default_rng(3)
    if name == "attention":
        inputs, kwargs = {"qkv": rng.standard_normal((2, 5, 12))}, {"n_head": 2}
    elif name == "layernorm":
        inputs, kwargs = {"x": rng.standard_normal((2, 3, 6)), "weight": rng.standard_normal(6),
                          "bias": rng.standard_normal(6)}, {}
    elif name == "gelu":
        inputs, kwargs = {"x": rng.standard_normal((3, 7)) * 2}, {}
    else:
        targets = np.array([[1, -1, 4], [0, 2, 2]])
        inputs, kwargs = {"logits": rng.standard_normal((2, 3, 5)), "targets": targets}, {}
    forward, backward = getattr(cpu, f"{name}_forward"), getattr(cpu, f"{name}_backward")
    assert_gradcheck(forward, backward, inputs, tol=1e-7, kwargs=kwargs)


# --- AdamW ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_adamw_kernel_matches_numpy_reference(dtype):
    rng = np.random.default_rng(0)
    shape = (13, 7)
    p1 = rng.standard_normal(shape).astype(dtype)
    m1, v1 = np.zeros_like(p1), np.zeros_like(p1)
    p2, m2, v2 = p1.copy(), m1.copy(), v1.copy()
    ref = get_ops("numpy").adamw_update
    for step in range(1, 6):
        g = rng.standard_normal(shape).astype(dtype)
        args = (3e-3, 0.9, 0.95, 1e-8, 0.1, 1 - 0.9**step, 1 - 0.95**step)
        assert cpu.adamw_update(p1, g, m1, v1, *args) is None  # in place
        ref(p2, g, m2, v2, *args)
    for name, a, b in (("param", p1, p2), ("m", m1, m2), ("v", v1, v2)):
        assert_close(a, b, dtype, name)


def test_adamw_kernel_matches_torch():
    import torch
    rng = np.random.default_rng(1)
    p = rng.standard_normal((6, 5))
    m, v = np.zeros_like(p), np.zeros_like(p)
    tp = torch.tensor(p, requires_grad=True)
    opt = torch.optim.AdamW([tp], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for step in range(1, 8):
        g = rng.standard_normal(p.shape)
        cpu.adamw_update(p, g, m, v, 1e-2, 0.9, 0.95, 1e-8, 0.1, 1 - 0.9**step, 1 - 0.95**step)
        tp.grad = torch.tensor(g)
        opt.step()
    assert relative_error(p, tp.detach().numpy()) < 1e-12


def test_adamw_kernel_rejects_what_it_cannot_update_in_place():
    p = np.zeros((4, 6), np.float32)
    with pytest.raises(TinyGPTError, match="C-contiguous"):
        cpu.adamw_update(p.T, p.T, p.T, p.T, 1e-3, 0.9, 0.95, 1e-8, 0.0, 0.1, 0.05)
    with pytest.raises(TinyGPTError, match="shape"):
        cpu.adamw_update(p, p[:2], p, p, 1e-3, 0.9, 0.95, 1e-8, 0.0, 0.1, 0.05)
    frozen = p.copy()
    frozen.flags.writeable = False  # else Numba's own multi-line typing error ("readonly array")
    with pytest.raises(TinyGPTError, match="param must be a writeable C-contiguous array"):
        cpu.adamw_update(frozen, p, p.copy(), p.copy(), 1e-3, 0.9, 0.95, 1e-8, 0.0, 0.1, 0.05)
    with pytest.raises(TinyGPTError, match="grad must be C-contiguous with the param's dtype"):
        cpu.adamw_update(p, p.astype(np.float64), p.copy(), p.copy(), 1e-3, 0.9, 0.95, 1e-8, 0.0, 0.1, 0.05)


# --- sum of squares -------------------------------------------------------------------------------


def _float64_sum_of_squares(a):
    return float(np.square(np.asarray(a, dtype=np.float64)).sum())


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_squares_kernel_matches_the_float64_reference(dtype):
    # sums in float64 what the NumPy reference sums (float32 squares are exact there): sizes around its
    # chunks (SUM_SQUARES_BLOCK), none, one, and arrays that are not one contiguous run
    from tinygpt.kernels import SUM_SQUARES_BLOCK
    from tinygpt.kernels import sum_squares as reference

    rng = np.random.default_rng(3)
    chunk = SUM_SQUARES_BLOCK
    sizes = (0, 1, 7, chunk - 1, chunk, chunk + 1, 3 * chunk + 5)
    arrays = [rng.standard_normal(n).astype(dtype) for n in sizes]
    grid = (rng.standard_normal((301, 517)) * 40).astype(dtype)
    frozen = grid.copy()
    frozen.flags.writeable = False
    arrays += [grid, grid.T, grid[:, ::3], grid[::2, 5:], grid.reshape(-1)[::7], frozen,
               np.empty((0, 5), dtype), np.array(2.5, dtype)]
    for a in arrays:
        exact = _float64_sum_of_squares(a)
        ours = cpu.sum_squares(a)
        assert type(ours) is float
        assert ours == pytest.approx(exact, rel=1e-12, abs=0.0), (a.shape, a.strides)
        assert ours == pytest.approx(reference(a), rel=1e-12, abs=0.0), (a.shape, a.strides)
    assert cpu.sum_squares(np.empty(0, dtype)) == 0.0


def test_sum_squares_kernel_passes_non_finite_values_on_and_takes_other_dtypes_to_the_reference():
    x = np.ones(70_000, np.float32)
    x[65_537] = np.nan  # in the second chunk: a NaN gradient's norm is NaN (clipping reports it)
    assert math.isnan(cpu.sum_squares(x))
    x[65_537] = -np.inf
    assert cpu.sum_squares(x) == math.inf
    assert cpu.sum_squares(np.arange(5, dtype=np.int64)) == 30.0
    assert cpu.sum_squares(np.full(3, 2.0, np.float16)) == 12.0


def test_sum_squares_kernel_is_the_same_sum_on_any_number_of_threads():
    # fixed-size chunks, not one per thread: the parallel build adds the same partials in the same order
    from tinygpt.kernels import SUM_SQUARES_BLOCK

    x = np.random.default_rng(4).standard_normal(3 * SUM_SQUARES_BLOCK + 11).astype(np.float32)
    kernel = cpu._sum_squares_kernel
    assert kernel.parallel(x, SUM_SQUARES_BLOCK) == kernel.serial(x, SUM_SQUARES_BLOCK)


def test_numba_backend_sums_squares_with_its_kernel_and_numpy_with_the_reference():
    # the gradient norm's seam: train and finetune hand grad_norm their ops.sum_squares
    from tinygpt import kernels

    assert get_ops("numba").sum_squares is cpu.sum_squares
    assert get_ops("numpy").sum_squares is kernels.sum_squares
    # what they hand it: a backend's sum for host arrays; the cuda one's copies each to the GPU and back
    assert kernels.host_sum_squares(get_ops("numba")) is cpu.sum_squares
    assert kernels.host_sum_squares(get_ops("numpy")) is kernels.sum_squares
    on_gpu = types.SimpleNamespace(name="cuda", sum_squares=lambda a: pytest.fail("sent to the GPU"))
    assert kernels.host_sum_squares(on_gpu) is kernels.sum_squares


# --- bad input ------------------------------------------------------------------------------------


def test_cpu_kernels_reject_bad_input_with_one_line_errors():
    wte, wpe = np.zeros((5, 4), np.float32), np.zeros((3, 4), np.float32)
    with pytest.raises(TinyGPTError, match="token ids"):
        cpu.embedding_forward(np.array([[0, 5]]), wte, wpe)
    # (and below 0: Numba wraps a negative index, so -1 would read wte's last row; -1 ignores only TARGETS)
    with pytest.raises(TinyGPTError, match=r"token ids must be in \[0, 5\), got \[-1, 0\]"):
        cpu.embedding_forward(np.array([[0, -1]]), wte, wpe)
    assert cpu.embedding_forward(np.zeros((1, 3), int), wte, wpe)[0].shape == (1, 3, 4)  # T = block_size
    with pytest.raises(TinyGPTError, match="block_size"):
        cpu.embedding_forward(np.zeros((1, 4), int), wte, wpe)
    with pytest.raises(TinyGPTError, match=r"wte must be \(V, C\), got shape \(5, 4, 1\)"):
        cpu.embedding_forward(np.array([[0]]), wte[..., None], wpe)
    with pytest.raises(TinyGPTError, match="divisible"):
        cpu.attention_forward(np.zeros((1, 2, 12), np.float32), n_head=5)
    with pytest.raises(TinyGPTError, match="n_embd 4 is not divisible by n_head 0"):  # not ZeroDivisionError
        cpu.attention_forward(np.zeros((1, 2, 12), np.float32), n_head=0)
    with pytest.raises(TinyGPTError, match=r"qkv must be \(B, T, 3C\), got shape \(1, 2, 10\)"):
        cpu.attention_forward(np.zeros((1, 2, 10), np.float32), n_head=1)
    with pytest.raises(TinyGPTError, match="rng"):
        cpu.attention_forward(np.zeros((1, 2, 12), np.float32), n_head=2, dropout=0.1)
    # guards: dropout 1 let through to the keep mask, whose scale 1 / (1 - p) then divides by zero
    with pytest.raises(TinyGPTError, match=r"dropout must be in \[0, 1\), got 1.0"):
        cpu.attention_forward(np.zeros((1, 2, 12), np.float32), 2, dropout=1.0, rng=np.random.default_rng(0))
    with pytest.raises(TinyGPTError, match=r"dropout must be in \[0, 1\), got -0.1"):
        cpu.attention_forward(np.zeros((1, 2, 12), np.float32), 2, dropout=-0.1, rng=np.random.default_rng(0))
    with pytest.raises(TinyGPTError, match="targets"):
        cpu.cross_entropy_forward(np.zeros((1, 2, 3), np.float32), np.array([[0, 3]]))
    with pytest.raises(TinyGPTError, match="float32 or float64"):
        cpu.gelu_forward(np.zeros(3, np.int64))
    # an integer array would run: dropout's scale 1 / (1 - p) cast to int64 is 1, the gradient truncated
    with pytest.raises(TinyGPTError, match="dropout_forward: numba kernels take float32 or float64 arrays"):
        cpu.dropout_forward(np.ones((2, 3), np.int64), 0.5, np.random.default_rng(0))
    _, cache = cpu.dropout_forward(np.ones((2, 3), np.float32), 0.5, np.random.default_rng(0))
    with pytest.raises(TinyGPTError, match="dropout_backward: numba kernels take float32 or float64 arrays"):
        cpu.dropout_backward(np.ones((2, 3), np.int64), cache)
    with pytest.raises(TinyGPTError, match="cross_entropy_forward: numba kernels take float32 or float64"):
        cpu.cross_entropy_forward(np.zeros((1, 2, 3), np.int64), np.array([[0, 1]]))
    with pytest.raises(TinyGPTError, match="layernorm_forward: mixed dtypes float32 and float64"):
        cpu.layernorm_forward(np.ones((1, 2, 4), np.float32), np.ones(4), None)
    with pytest.raises(TinyGPTError, match="targets must be integers"):  # not truncated to 1
        cpu.cross_entropy_forward(np.zeros((1, 1, 3), np.float32), np.array([[1.9]]))


def test_cpu_kernels_refuse_shapes_they_would_index_past():
    # The compiled kernels have no bounds checks: each of these read or wrote memory outside an array
    # (a LayerNorm output changed with whatever lay past `weight`; embedding_backward wrote into token 1)
    x = np.ones((1, 1, 8), np.float32)
    with pytest.raises(TinyGPTError, match="weight has shape"):
        cpu.layernorm_forward(x, np.ones(4, np.float32), None)
    with pytest.raises(TinyGPTError, match="bias has shape"):
        cpu.layernorm_forward(x, np.ones(8, np.float32), np.ones(9, np.float32))
    _, cache = cpu.layernorm_forward(x, np.ones(8, np.float32), None)
    with pytest.raises(TinyGPTError, match="dout has shape"):
        cpu.layernorm_backward(np.ones((1, 8, 1), np.float32), cache)
    _, cache = cpu.gelu_forward(x)
    with pytest.raises(TinyGPTError, match="dout has shape"):
        cpu.gelu_backward(np.ones(3, np.float32), cache)
    wte = np.zeros((5, 8), np.float32)
    with pytest.raises(TinyGPTError, match="wpe has shape"):
        cpu.embedding_forward(np.array([[0]]), wte, np.zeros((4, 2), np.float32))
    _, cache = cpu.embedding_forward(np.array([[0]]), wte, np.zeros((4, 8), np.float32))
    with pytest.raises(TinyGPTError, match="dout has shape"):
        cpu.embedding_backward(np.ones((1, 1, 16), np.float32), cache)
    _, cache = cpu.attention_forward(np.ones((1, 2, 12), np.float32), n_head=2)
    with pytest.raises(TinyGPTError, match="dout has shape"):
        cpu.attention_backward(np.ones((1, 2, 8), np.float32), cache)


# --- the whole model ------------------------------------------------------------------------------


def test_compiled_dropout_bits_equal_the_reference_bits():
    from numba import njit

    from tinygpt.kernels import make_dropout_bits

    bits = make_dropout_bits(njit)
    key = layers.draw_dropout_key(np.random.default_rng(4))
    index = np.concatenate([np.arange(50, dtype=np.uint64),
                            np.random.default_rng(5).integers(0, 2**63, 200, dtype=np.uint64)])
    compiled = [int(bits(np.uint64(key), i)) for i in index]
    assert compiled == layers.dropout_bits(key, index).tolist()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_matches_the_reference_and_keeps_no_mask(dtype):
    x = np.random.default_rng(6).standard_normal((3, 17, 8)).astype(dtype)
    out, cache = cpu.dropout_forward(x, 0.3, np.random.default_rng(2))
    ref, ref_cache = layers.dropout_forward(x, 0.3, np.random.default_rng(2))
    np.testing.assert_array_equal(out == 0, ref == 0)  # the same entries dropped
    np.testing.assert_allclose(out, ref, rtol=1e-6 if dtype == np.float32 else 1e-15)
    assert not any(isinstance(c, np.ndarray) and c.size > 1 for c in cache)  # a key, not a mask
    dout = np.random.default_rng(7).standard_normal(x.shape).astype(dtype)
    np.testing.assert_allclose(cpu.dropout_backward(dout, cache), layers.dropout_backward(dout, ref_cache),
                               rtol=1e-6 if dtype == np.float32 else 1e-15)
    assert cpu.dropout_forward(x, 0.0, None) == (x, None)
    with pytest.raises(TinyGPTError, match="dropout probability"):
        cpu.dropout_forward(x, 1.0, np.random.default_rng(0))
    with pytest.raises(TinyGPTError, match="dout has shape"):
        cpu.dropout_backward(dout[:, :3], cache)
    # dropped or not, a nan stays nan (0 * nan), as in the reference's x * keep
    bad = np.full(x.shape, np.nan, dtype)
    assert np.isnan(cpu.dropout_forward(bad, 0.5, np.random.default_rng(2))[0]).all()
    assert np.isnan(layers.dropout_forward(bad, 0.5, np.random.default_rng(2))[0]).all()


def test_dropout_takes_a_numpy_probability_as_the_reference_does():
    # a np.float16 p overflowed p * 2^32 in dropout_kernel_args (OverflowError), and rounded the scale
    x = np.random.default_rng(6).standard_normal((3, 17, 8))
    for p in (np.float16(0.1), np.float32(0.3)):
        out, cache = cpu.dropout_forward(x, p, np.random.default_rng(2))
        np.testing.assert_array_equal(out, layers.dropout_forward(x, float(p), np.random.default_rng(2))[0])
        np.testing.assert_array_equal(cpu.dropout_backward(x, cache), out)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_keeps_an_entry_whose_bits_equal_the_threshold(dtype):
    # an entry is kept when its bits are >= the threshold (layers.dropout_keep): p chosen so that entry 0's
    # bits ARE the threshold checks the boundary, which a random p hits once in 2^32
    key = layers.draw_dropout_key(np.random.default_rng(2))
    bits = int(layers.dropout_bits(key, np.zeros(1, np.uint64))[0])
    p = bits / 2**32
    assert 0 < p < 1 and layers.dropout_threshold(p) == bits
    x = np.ones((1, 4), dtype)
    out, cache = cpu.dropout_forward(x, p, np.random.default_rng(2))
    assert out[0, 0] == dtype(1 / (1 - p))
    np.testing.assert_array_equal(out == 0, layers.dropout_forward(x, p, np.random.default_rng(2))[0] == 0)
    assert cpu.dropout_backward(x, cache)[0, 0] == dtype(1 / (1 - p))
    # attention weight (batch 0, head 0, query 0, key 0) is mask entry 0: one token attends to itself, kept
    qkv = np.random.default_rng(0).standard_normal((1, 1, 6)).astype(dtype)
    out, _ = cpu.attention_forward(qkv, 1, p, np.random.default_rng(2))
    np.testing.assert_allclose(out[0, 0], qkv[0, 0, 4:] / (1 - p), rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernels_take_non_contiguous_views(dtype):
    # reshape(-1) of a transposed or strided view is a copy: a kernel writing its output through one would
    # leave the result unwritten, so each kernel makes its arrays contiguous first
    rng = np.random.default_rng(10)

    def view(shape):  # a (a, b, c) view that is neither C- nor F-contiguous
        a, b, c = shape
        return rng.standard_normal((c, 2 * b, a)).astype(dtype).transpose(2, 1, 0)[:, ::2]

    x, dout = view((3, 5, 8)), view((3, 5, 8))
    assert not x.flags.c_contiguous and not x.flags.f_contiguous
    out, cache = cpu.gelu_forward(x)
    ref, ref_cache = layers.gelu_forward(x)
    assert_close(out, ref, dtype, "gelu")
    assert_close(cpu.gelu_backward(dout, cache), layers.gelu_backward(dout, ref_cache), dtype, "gelu dx")
    out, cache = cpu.dropout_forward(x, 0.3, np.random.default_rng(2))
    ref, ref_cache = layers.dropout_forward(x, 0.3, np.random.default_rng(2))
    assert_close(out, ref, dtype, "dropout")
    assert_close(cpu.dropout_backward(dout, cache), layers.dropout_backward(dout, ref_cache), dtype,
                 "dropout dx")
    w, b = rng.standard_normal(8).astype(dtype), rng.standard_normal(8).astype(dtype)
    out, cache = cpu.layernorm_forward(x, w, b)
    ref, ref_cache = layers.layernorm_forward(x, w, b)
    assert_close(out, ref, dtype, "layernorm")
    for name, g, r in zip(("dx", "dweight", "dbias"), cpu.layernorm_backward(dout, cache),
                          layers.layernorm_backward(dout, ref_cache)):
        assert_close(g, r, dtype, f"layernorm {name}")
    targets = rng.integers(0, 8, (3, 5))
    (loss, cache), (ref, ref_cache) = (f(x, targets) for f in (cpu.cross_entropy_forward,
                                                               layers.cross_entropy_forward))
    assert abs(loss - ref) <= TOL[dtype] * ref
    assert_close(cpu.cross_entropy_backward(1.0, cache), layers.cross_entropy_backward(1.0, ref_cache), dtype,
                 "dlogits")


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_model_on_numba_backend_equals_numpy_backend(dropout):
    from tinygpt.model import GPT, GPTConfig

    config = GPTConfig(vocab_size=29, block_size=16, n_layer=2, n_head=3, n_embd=24, dropout=dropout)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 29, (3, 13))
    targets = rng.integers(0, 29, (3, 13))
    targets[0, :3] = -1
    results = {}
    for backend in ("numpy", "numba"):
        model = GPT(config, seed=1, backend=backend)  # same seed: same weights and dropout masks
        logits, loss = model.forward(idx, targets)
        results[backend] = (logits, loss, model.backward())
    (logits, loss, grads), (ref_logits, ref_loss, ref_grads) = results["numba"], results["numpy"]
    assert relative_error(logits, ref_logits) < 1e-4
    assert abs(loss - ref_loss) < 1e-4 * abs(ref_loss)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        assert relative_error(grads[name], ref_grads[name]) < 1e-4, name


def test_device_helpers_on_cpu_backends_match_numpy():
    from tinygpt.kernels import HELPER_NAMES

    rng = np.random.default_rng(2)
    x, wte = rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 4))
    for backend in ("numpy", "numba"):
        ops = get_ops(backend)
        assert all(callable(getattr(ops, name)) for name in HELPER_NAMES)
        assert ops.sum_squares(x) == pytest.approx(float((x**2).sum()))
        logits, cache = ops.lm_head_forward(x, wte)
        assert np.allclose(logits, x @ wte.T)
        dlogits = rng.standard_normal(logits.shape)
        dx, dwte = ops.lm_head_backward(dlogits, cache)
        ref_dx, ref_dwte, _ = layers.linear_backward(dlogits, layers.linear_forward(x, wte.T, None)[1])
        assert relative_error(dx, ref_dx) < 1e-12 and relative_error(dwte, ref_dwte.T) < 1e-12
        a = x.copy()
        assert ops.add_inplace(a, x) is a and np.array_equal(a, 2 * x)
        total = ops.add(x, a)  # a residual: a new array, its inputs left alone
        assert np.array_equal(total, 3 * x) and np.array_equal(a, 2 * x)


def test_attention_leaves_its_input_alone_even_at_one_token():
    # at B = T = 1 the q slice of qkv is contiguous, so ascontiguousarray returned a view and scaling q
    # wrote into the caller's array (and a read-only qkv raised)
    qkv = np.random.default_rng(0).standard_normal((1, 1, 12)).astype(np.float32)
    before = qkv.copy()
    qkv.flags.writeable = False
    out, _ = cpu.attention_forward(qkv, 2)
    np.testing.assert_array_equal(qkv, before)
    np.testing.assert_allclose(out, layers.attention_forward(before, 2)[0], rtol=1e-6)


def test_bench_kernels_cpu_cases_run_and_time_what_training_runs():
    from tinygpt.bench import kernels as bench

    cases, torch_cases = bench.cpu_op_cases(B=2, T=5, C=12, H=2, V=7)
    peer, _ = torch_cases()
    for name, make in cases.items():
        for backend in ("numpy", "numba"):
            make(get_ops(backend))()
        peer[name]()
    assert bench._adamw(get_ops("numba"), np.zeros((2, 2), np.float32)).kernel is not None  # the fused step
    assert bench._adamw(get_ops("numpy"), np.zeros((2, 2), np.float32)).kernel is None


def test_bench_kernels_sections_run_even_after_one_fails(capsys, monkeypatch):
    # a lent GPU's few minutes: one section's crash must not cost the others' figures
    from tinygpt.bench.kernels import run_sections

    ran = []

    def boom():
        ran.append("SGEMM")
        raise RuntimeError("CUDA_ERROR_LAUNCH_FAILED")

    with pytest.raises(TinyGPTError, match=r"^bench kernels: SGEMM failed; the other sections' figures"):
        run_sections({"SGEMM": boom, "attention": lambda: ran.append("attention"),
                      "training": lambda: ran.append("training")})
    assert ran == ["SGEMM", "attention", "training"]
    err = capsys.readouterr().err
    assert "RuntimeError: CUDA_ERROR_LAUNCH_FAILED" in err and "the SGEMM section failed" in err
    run_sections({"attention": lambda: None})  # none failed: no error
    # stderr closed (`2>&-`): the traceback and the line are dropped, where print(file=None) and print_exc
    # wrote them to stdout, among the tables
    monkeypatch.setattr(sys, "stderr", None)
    with pytest.raises(TinyGPTError, match="SGEMM failed"):
        run_sections({"SGEMM": boom, "attention": lambda: print("attention table")})
    assert capsys.readouterr().out == "attention table\n"


def test_bench_kernels_medians_warm_up_each_side_then_alternate(fake_clock):
    from tinygpt.bench import kernels as bench

    fake_clock.install(bench)
    syncs = []
    sides = {"ours": fake_clock.side("ours", [50.0, 1.0, 5.0, 2.0]),  # the warm-up first
             "peer": fake_clock.side("peer", [50.0, 3.0, 3.0, 9.0])}
    t = bench._medians(sides, 3, sync=lambda: syncs.append(len(fake_clock.calls)))
    assert t == {"ours": 2.0, "peer": 3.0}  # the medians, the warm-up's 50 s left out
    assert fake_clock.calls == ["ours", "peer"] * 4
    assert syncs == [2, 3, 4, 5, 6, 7, 8]  # once after the warm-ups, then after every timed call


def test_bench_kernels_medians_run_before_ahead_of_every_call_untimed(fake_clock):
    from tinygpt.bench import kernels as bench

    fake_clock.install(bench)

    def before():  # (an hour, were it timed)
        fake_clock.calls.append("before")
        fake_clock.now += 3600.0

    sides = {"ours": fake_clock.side("ours", [50.0, 1.0, 5.0]),
             "peer": fake_clock.side("peer", [50.0, 3.0, 4.0])}
    assert bench._medians(sides, 2, before=before) == {"ours": 3.0, "peer": 3.5}
    assert fake_clock.calls == ["before", "ours", "before", "peer"] * 3


def test_bench_kernels_cpu_peer_gradients_do_not_pile_up_between_repeats(monkeypatch, capsys):
    # each torch backward added its gradient into the last call's .grad (an in-place add of the whole
    # tensor), work our side, which writes fresh gradients, does not do: they are set to None between calls
    import torch  # (a test peer: README's test command installs it)

    from tinygpt.bench import kernels as bench

    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    cases = bench.cpu_op_cases
    monkeypatch.setattr(bench, "cpu_op_cases", lambda: cases(B=2, T=5, C=12, H=2, V=7))
    F, held = torch.nn.functional, []
    gelu = F.gelu
    # what the peer's input (a leaf) holds as each call starts: the last call's gradient, to be added to
    monkeypatch.setattr(F, "gelu", lambda x, **kw: held.append(x.grad) or gelu(x, **kw))
    bench.bench_cpu(repeats=2)  # (three calls of each side: a warm-up, two timed)
    assert held == [None, None, None]


def test_bench_kernels_cpu_table_is_the_arithmetic_of_its_timings(monkeypatch, capsys):
    import torch

    from tinygpt.bench import blas_threads
    from tinygpt.bench import kernels as bench

    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    cases = bench.cpu_op_cases
    monkeypatch.setattr(bench, "cpu_op_cases", lambda: cases(B=2, T=5, C=12, H=2, V=7))  # (nothing runs)
    timed = []
    seconds = {"numba": 0.001, "numpy": 0.004, "torch": 0.002}
    monkeypatch.setattr(bench, "_medians", lambda sides, repeats, **_: timed.append((list(sides), repeats)) or
                        {name: seconds[name] for name in sides})
    bench.bench_cpu(repeats=7)
    assert threads == [blas_threads()]  # torch gets the threads our BLAS has
    # per op: ours (numba, numpy) interleaved, torch in its own loop
    assert timed == [(["numba", "numpy"], 7), (["torch"], 7)] * 6
    rows = [ln.split() for ln in capsys.readouterr().out.splitlines()[3:]]
    assert [r[0] for r in rows] == ["attention", "layernorm", "gelu", "cross_entropy", "adamw", "grad_norm"]
    assert all(r[1:] == ["1.00", "4.00", "2.00", "4.00", "2.00"] for r in rows)  # ms, then x / numba


def test_bench_kernels_cpu_peer_computes_what_ours_computes(monkeypatch):
    # each torch case runs our op's computation (GPT-2's tanh GELU, our fused qkv layout, ...) on our inputs
    import types

    import torch

    from tinygpt.bench import kernels as bench

    F, peer_out, ours_out = torch.nn.functional, {}, {}
    def recording(fname, key):
        real = getattr(F, fname)

        def recorded(*a, **k):
            peer_out[key] = out = real(*a, **k)
            return out
        return recorded

    for fname, key in (("gelu", "gelu"), ("layer_norm", "layernorm"), ("cross_entropy", "cross_entropy"),
                       ("scaled_dot_product_attention", "attention")):
        monkeypatch.setattr(F, fname, recording(fname, key))
    ops = get_ops("numpy")

    def recorded_op(name):
        def run(*a, **k):
            out = getattr(ops, name)(*a, **k)
            ours_out[name.removesuffix("_forward")] = out[0]
            return out
        return run

    recording_ops = types.SimpleNamespace(**{**vars(ops), **{name: recorded_op(name) for name in vars(ops)
                                                              if name.endswith("_forward")}})
    B, T, C, H, V = 2, 5, 12, 2, 7
    cases, torch_cases = bench.cpu_op_cases(B=B, T=T, C=C, H=H, V=V)
    peer, _ = torch_cases()
    for name in ("attention", "layernorm", "gelu", "cross_entropy"):
        cases[name](recording_ops)()
        peer[name]()
    peer_out["attention"] = peer_out["attention"].transpose(1, 2).reshape(B, T, C)  # (B, H, T, hs) -> ours
    for name, ours in ours_out.items():
        np.testing.assert_allclose(peer_out[name].detach().numpy(), ours, rtol=1e-5, atol=1e-6, err_msg=name)
    assert set(ours_out) == {"attention", "layernorm", "gelu", "cross_entropy"}


def test_attention_keeps_no_copies_of_q_k_v():
    # The forward multiplies the strided views of qkv as the reference does and caches qkv itself: the
    # copies of q, k, v it used to make (and keep for the backward) cost more time than they saved, and
    # held as much memory again as qkv per layer. What it keeps beyond qkv is the probabilities alone.
    rng = np.random.default_rng(0)
    qkv = rng.standard_normal((2, 9, 3 * 8)).astype(np.float32)
    _, cache = cpu.attention_forward(qkv, 2, query_block=4)
    _, ref_cache = layers.attention_forward(qkv, 2, query_block=4)

    def kept_beyond_qkv(c):
        arrays = [a for a in c if isinstance(a, np.ndarray)]
        arrays += [a for part in c if isinstance(part, list) for a in part]  # the blocks' probabilities
        return sum(a.nbytes for a in arrays if not np.shares_memory(a, qkv))

    assert kept_beyond_qkv(cache) == kept_beyond_qkv(ref_cache) == 4 * 2 * 2 * (4 * 4 + 4 * 8 + 1 * 9)
