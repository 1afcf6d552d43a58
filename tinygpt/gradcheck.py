"""Check a hand-written backward pass against central differences.

For a layer ``out, cache = forward(**inputs)`` with backward ``grads = backward(dout, cache)``, we pick a
RANDOM upstream gradient ``dout`` (a fixed ``.sum()`` upstream, all ones, would hide bugs that permute or
mix up output entries) and define the scalar ``L(x) = sum(forward(x) * dout)``. Its exact gradient is what
backward returns for that ``dout``; numerically, for each checked entry ``x_i``::

    dL/dx_i ~= (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)          error O(eps^2)

The comparison is in float64: with eps = 1e-6 the truncation error is ~1e-12 and the rounding error
~1e-16 / 1e-6 = 1e-10, so a correct backward agrees to ~1e-8 while float32 could not tell 1e-3 apart.

Relative error of one tensor (a = analytic, n = numerical, over the checked entries)::

    rel_err = max_i |a_i - n_i| / max(max_i |a_i|, max_i |n_i|, 1e-30)

i.e. the worst absolute error measured against the tensor's own scale. Unlike the per-entry
``|a - n| / max(|a|, |n|)`` it does not blow up on entries that are zero (masked attention, ignored
targets); a correct float64 backward gives ~1e-9, a wrong one ~1e-1.

Example: the linear layer's backward agrees to ~1e-10 (4e-10, 7e-10 and 4e-10 here); one that doubled the
weight's gradient is off by half (relative error 0.5)::

    >>> import numpy as np
    >>> from tinygpt import layers
    >>> from tinygpt.gradcheck import gradcheck
    >>> rng = np.random.default_rng(0)
    >>> x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5)), rng.standard_normal(5)
    >>> inputs = {"x": x, "weight": w, "bias": b}
    >>> errors = gradcheck(layers.linear_forward, layers.linear_backward, inputs)
    >>> {name: error < 1e-8 for name, error in errors.items()}
    {'x': True, 'weight': True, 'bias': True}
    >>> def doubled_weight_grad(dout, cache):
    ...     dx, dweight, dbias = layers.linear_backward(dout, cache)
    ...     return dx, 2 * dweight, dbias
    >>> round(gradcheck(layers.linear_forward, doubled_weight_grad, inputs)["weight"], 6)
    0.5
"""

from __future__ import annotations

import numpy as np

from tinygpt.errors import TinyGPTError

__all__ = ["relative_error", "numerical_gradient", "gradcheck", "assert_gradcheck"]


def relative_error(analytic, numerical) -> float:
    """``max|a - n| / max(max|a|, max|n|, 1e-30)``: 0 when equal, ~1 when unrelated."""
    a = np.asarray(analytic, dtype=np.float64)
    n = np.asarray(numerical, dtype=np.float64)
    if a.shape != n.shape:
        raise TinyGPTError(f"cannot compare gradients of shapes {a.shape} and {n.shape}")
    if a.size == 0:
        return 0.0
    scale = max(float(np.abs(a).max()), float(np.abs(n).max()), 1e-30)
    return float(np.abs(a - n).max()) / scale


def numerical_gradient(f, x, entries, eps=1e-6):
    """Central differences of the scalar function ``f()`` with respect to ``x`` (modified in place, restored).

    x (any shape) float64; entries: flat indices to perturb -> (len(entries),) float64 estimates.
    """
    flat = x.reshape(-1)  # a view: perturbing flat perturbs x, which f reads
    if not np.shares_memory(flat, x):
        raise TinyGPTError("numerical_gradient needs a contiguous array it can perturb in place")
    grad = np.empty(len(entries), dtype=np.float64)
    for j, i in enumerate(entries):
        old = flat[i]
        flat[i] = old + eps
        f_plus = f()
        flat[i] = old - eps
        f_minus = f()
        flat[i] = old
        grad[j] = (f_plus - f_minus) / (2.0 * eps)
    return grad


def _is_float_array(value):
    return isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating)


def gradcheck(forward, backward, inputs: dict, eps=1e-6, seed=0, wrt=None, max_entries=None, kwargs=None):
    """Compare ``backward`` with central differences of ``forward``; return {input name: relative error}.

    forward:  ``forward(**inputs, **kwargs) -> (out, cache)``; out an array or a scalar (a loss).
    backward: ``backward(dout, cache) -> grad or tuple of grads``, one per input that is a floating-point
        array or None (e.g. no bias, whose gradient is None), in the order of ``inputs``.
    inputs:   name -> value. Floating-point arrays must be float64 (a float32 check proves nothing);
        other values (int ids, None) pass through untouched.
    wrt:      names to check (default: every floating-point array).
    max_entries: check at most this many random entries per input (default: all of them).
    forward must be deterministic: give it a fresh, identically seeded rng each call when it uses one.
    """
    kwargs = kwargs or {}
    float_names = [name for name, value in inputs.items() if _is_float_array(value)]
    # backward returns one gradient per differentiable slot: every float array, and None (e.g. no bias)
    slots = [name for name, value in inputs.items() if value is None or _is_float_array(value)]
    for name in float_names:
        if inputs[name].dtype != np.float64:
            raise TinyGPTError(f"gradcheck needs float64 inputs; {name!r} is {inputs[name].dtype}")
    wrt = list(float_names if wrt is None else wrt)
    for name in wrt:
        if name not in float_names:
            raise TinyGPTError(f"cannot check {name!r}: not a floating-point array among the inputs")
    # private C-ordered copies: perturbing them must not touch the caller's arrays (and a transposed input,
    # copied in its own Fortran order, could not be perturbed through a flat view)
    values = {name: (np.array(v, copy=True, order="C") if name in float_names else v)
              for name, v in inputs.items()}
    rng = np.random.default_rng(seed)

    out, cache = forward(**values, **kwargs)
    dout = rng.standard_normal(np.shape(out))  # the random upstream gradient
    grads = backward(dout if np.ndim(out) else float(dout), cache)
    if not isinstance(grads, tuple):
        grads = (grads,)
    if len(grads) != len(slots):
        raise TinyGPTError(f"backward returned {len(grads)} gradients for {len(slots)} float/None inputs")
    analytic = dict(zip(slots, grads))

    def objective():
        o, _ = forward(**values, **kwargs)
        return float(np.sum(np.asarray(o, dtype=np.float64) * dout))

    errors = {}
    for name in wrt:
        x = values[name]
        if analytic[name] is None:
            raise TinyGPTError(f"backward returned None for {name!r}")
        a = np.asarray(analytic[name], dtype=np.float64)
        if a.shape != x.shape:
            raise TinyGPTError(f"gradient of {name!r} has shape {a.shape}, input has {x.shape}")
        entries = np.arange(x.size)
        if max_entries is not None and x.size > max_entries:
            entries = rng.choice(x.size, size=max_entries, replace=False)
        n = numerical_gradient(objective, x, entries, eps=eps)
        errors[name] = relative_error(a.reshape(-1)[entries], n)
    return errors


def assert_gradcheck(forward, backward, inputs: dict, tol=1e-6, **options):
    """Run ``gradcheck`` and raise AssertionError listing every input whose relative error exceeds tol."""
    errors = gradcheck(forward, backward, inputs, **options)
    bad = {name: err for name, err in errors.items() if not err <= tol}  # `not <=` also catches NaN
    if bad:
        detail = ", ".join(f"{name}: {err:.2e}" for name, err in bad.items())
        raise AssertionError(f"gradient check failed (tol {tol:.0e}): {detail}")
    return errors
