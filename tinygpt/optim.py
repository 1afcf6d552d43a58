"""AdamW, global-norm gradient clipping and the warmup + cosine learning-rate schedule, by hand.

Parameters and gradients are plain ``dict[str, np.ndarray]`` (the model's ``params`` and the ``grads``
its ``backward`` returns, same keys and shapes). The optimizer updates the parameter arrays IN PLACE,
so the model sees the new values without any copying back.

GPU arrays. With the cuda backend the parameters and gradients are numba device arrays, which NumPy
cannot compute on. Each function here looks at the array it is given: a device array is handled by the
kernels of ``tinygpt.kernels.cuda`` (AdamW state made with ``zeros_like``, the update by ``adamw_update``,
norms by ``sum_squares_total``), so the moments stay on the GPU beside the weights; everything else is the
NumPy code below, unchanged. Only ``state_dict`` brings the moments to the host (for checkpoints).
"""

from __future__ import annotations

import math

import numpy as np

from tinygpt.errors import TinyGPTError, is_finite, is_number, shown


def _gpu(a):
    """The cuda kernels module when ``a`` is a numba device array (it has ``copy_to_host``), else None."""
    if not hasattr(a, "copy_to_host"):
        return None
    from tinygpt.kernels import cuda

    return cuda


def _host_copy(a) -> np.ndarray:
    return a.copy_to_host() if _gpu(a) else a.copy()


def _zeros_like(p):
    """Zeros beside ``p``: on the GPU for a device array (no host array is made), else NumPy's."""
    gpu = _gpu(p)
    return gpu.zeros_like(p) if gpu else np.zeros_like(p)


class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter), the optimizer GPT-2/3 were trained with.

    For each parameter ``p`` with gradient ``g``, at step ``t = 1, 2, ...``::

        p <- p - lr * wd * p                      # decoupled decay (2-D weights only, see below)
        m <- b1 * m + (1 - b1) * g                # first moment: running mean of g
        v <- b2 * v + (1 - b2) * g^2              # second moment: running mean of g^2
        m_hat = m / (1 - b1^t);  v_hat = v / (1 - b2^t)   # bias correction: m, v start at 0
        p <- p - lr * m_hat / (sqrt(v_hat) + eps)

    "Decoupled" means the decay shrinks the weights directly instead of being added to ``g`` (where
    Adam's per-coordinate scaling would distort it). As in GPT-2 / nanoGPT, only tensors with 2 or more
    dimensions decay (matmul weights and embeddings); biases and LayerNorm gains (1-D) do not.

    The arithmetic follows ``torch.optim.AdamW`` term by term, so both produce the same updates (a test
    checks this over many steps). Every operation writes into ``p``, ``m``, ``v`` or one reusable scratch
    buffer, so a step allocates nothing.

    ``kernel`` optionally replaces the NumPy arithmetic of :meth:`step` with a fused function of the
    signature of ``tinygpt.kernels``' ``adamw_update(param, grad, m, v, lr, beta1, beta2, eps,
    weight_decay, bias_corr1, bias_corr2)``, e.g. ``get_ops("numba").adamw_update``: one fused pass per
    tensor instead of a dozen NumPy passes. The state (and so checkpoints) is the same either way.
    """

    def __init__(self, params: dict[str, np.ndarray], lr: float, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.1, kernel=None):
        if not isinstance(params, dict):
            raise TinyGPTError(f"AdamW: params must be a dict of name -> array, got {type(params).__name__}")
        for name, value in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)):
            if not is_number(value):
                raise TinyGPTError(f"AdamW: {name} must be a number, got {shown(value)}")
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2 and all(map(is_number, betas))):
            raise TinyGPTError(f"AdamW: betas must be a pair of numbers (beta1, beta2), got {shown(betas)}")
        for name, value in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)):
            # (inf moved every weight to inf or nan; 10**400 was float()'s OverflowError)
            if not (is_finite(value) and value >= 0.0):
                raise TinyGPTError(f"AdamW: {name} must be a finite number >= 0, got {shown(value)}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise TinyGPTError(f"betas must be in [0, 1), got {tuple(betas)}")
        self.params = params
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.kernel = kernel
        self.step_count = 0
        self.exp_avg = {name: _zeros_like(p) for name, p in params.items()}  # m
        self.exp_avg_sq = {name: _zeros_like(p) for name, p in params.items()}  # v
        self.decays = {name: p.ndim >= 2 for name, p in params.items()}
        host = [p for p in params.values() if not _gpu(p)]  # the scratch buffer is for NumPy's arithmetic
        largest = max((p.size for p in host), default=0)
        dtype = np.result_type(*host) if host else np.float32
        self._scratch = np.empty(largest, dtype=dtype)

    def step(self, grads: dict[str, np.ndarray], lr: float | None = None) -> None:
        """One update of every parameter from ``grads`` (same keys); ``lr`` overrides ``self.lr``."""
        if lr is not None and not is_number(lr):  # ("x" was float()'s ValueError, "1e-3" taken as a number)
            raise TinyGPTError(f"AdamW.step: lr must be a number, got {shown(lr)}")
        if lr is not None and not (is_finite(lr) and lr >= 0.0):  # the constructor's rule: a nan, infinite
            # or negative rate from a schedule moved every weight, and 10**400 was float()'s OverflowError
            raise TinyGPTError(f"AdamW.step: lr must be a finite number >= 0, got {shown(lr)}")
        lr = self.lr if lr is None else float(lr)
        # every gradient checked before any parameter moves: a missing one failed half-way through the
        # update (KeyError), and a (1,)-shaped one was broadcast over its whole parameter
        missing = [name for name in self.params if name not in grads]
        if missing:
            raise TinyGPTError(f"AdamW.step: grads lack {len(missing)} parameter(s), e.g. {missing[0]!r}")
        for name, p in self.params.items():
            if np.shape(grads[name]) != tuple(p.shape):
                raise TinyGPTError(f"AdamW.step: grads[{name!r}] has shape {np.shape(grads[name])}, "
                                   f"the parameter has {tuple(p.shape)}")
        self.step_count += 1
        b1, b2 = self.betas
        bias_correction1 = 1.0 - b1**self.step_count
        bias_correction2 = 1.0 - b2**self.step_count
        step_size = lr / bias_correction1
        sqrt_bc2 = math.sqrt(bias_correction2)
        for name, p in self.params.items():
            g = grads[name]
            m, v = self.exp_avg[name], self.exp_avg_sq[name]
            gpu = _gpu(p)
            if gpu is not None or self.kernel is not None:  # one fused pass: the GPU's, or the given kernel
                kernel = gpu.adamw_update if gpu is not None else self.kernel
                if _gpu(g) is None:
                    g = np.ascontiguousarray(g, dtype=p.dtype)
                decay = self.weight_decay if self.decays[name] else 0.0
                kernel(p, g, m, v, lr, b1, b2, self.eps, decay, bias_correction1, bias_correction2)
                continue
            tmp = self._scratch[: p.size].reshape(p.shape)
            if self.decays[name] and self.weight_decay:
                p *= 1.0 - lr * self.weight_decay
            m *= b1  # m = b1 m + (1 - b1) g
            np.multiply(g, 1.0 - b1, out=tmp)
            m += tmp
            v *= b2  # v = b2 v + (1 - b2) g^2
            np.multiply(g, g, out=tmp)
            tmp *= 1.0 - b2
            v += tmp
            np.sqrt(v, out=tmp)  # denominator sqrt(v_hat) + eps = sqrt(v) / sqrt(1 - b2^t) + eps
            tmp /= sqrt_bc2
            tmp += self.eps
            np.divide(m, tmp, out=tmp)
            tmp *= step_size
            p -= tmp

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: the step count, hyperparameters and both moments.

        The moments are NumPy copies, also when they live on the GPU (a checkpoint loads on any backend).
        """
        return {
            "step": self.step_count, "lr": self.lr, "betas": list(self.betas), "eps": self.eps,
            "weight_decay": self.weight_decay,
            "exp_avg": {k: _host_copy(a) for k, a in self.exp_avg.items()},
            "exp_avg_sq": {k: _host_copy(a) for k, a in self.exp_avg_sq.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output (host arrays); shapes and names must match the parameters.

        Moments of parameters on the GPU are copied there.
        """
        try:
            for key in ("exp_avg", "exp_avg_sq"):
                moments = state[key]
                if set(moments) != set(self.params):
                    missing = sorted(set(self.params) - set(moments))[:3]
                    extra = sorted(set(moments) - set(self.params))[:3]
                    raise TinyGPTError(f"optimizer state does not match the model: missing {missing}, "
                                       f"unexpected {extra}")
                for name, p in self.params.items():
                    shape = np.shape(moments[name])
                    if shape != tuple(p.shape):
                        raise TinyGPTError(f"optimizer state {key}.{name} has shape {shape}, "
                                           f"the parameter has {p.shape}")
            self.step_count = int(state["step"])
            self.lr = float(state.get("lr", self.lr))
            self.betas = tuple(float(b) for b in state.get("betas", self.betas))
            self.eps = float(state.get("eps", self.eps))
            self.weight_decay = float(state.get("weight_decay", self.weight_decay))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, TinyGPTError):
                raise
            raise TinyGPTError(f"corrupt optimizer state: {exc!r}") from None
        for name, p in self.params.items():
            m = np.array(state["exp_avg"][name], dtype=p.dtype)
            v = np.array(state["exp_avg_sq"][name], dtype=p.dtype)
            gpu = _gpu(p)
            self.exp_avg[name] = gpu.to_device(m) if gpu else m
            self.exp_avg_sq[name] = gpu.to_device(v) if gpu else v


def check_decay_fits_rate(learning_rate: float, weight_decay: float) -> None:
    """The settings of a run (train's and finetune's, so the message names their flags) that AdamW cannot
    follow: it multiplies each decayed weight by ``1 - lr * weight_decay`` every step, and at lr * wd >= 1
    that zeroes or flips the sign of every matrix (a run then diverged, blamed on the learning rate). The
    schedule never goes above the peak ``learning_rate``, so the peak is the one to check."""
    if learning_rate * weight_decay >= 1:
        raise TinyGPTError(f"--weight-decay ({weight_decay:g}) times --learning-rate ({learning_rate:g}) "
                           "must be < 1: each step multiplies the weights by 1 - their product")


def scale_grads(grads: dict, factor: float) -> None:
    """``g *= factor`` for every gradient, IN PLACE (on the GPU for device arrays)."""
    for g in grads.values():
        gpu = _gpu(g)
        if gpu is not None:
            gpu.scale_inplace(g, factor)
        else:
            g *= factor


def grad_norm(grads: dict[str, np.ndarray], sum_squares=None) -> float:
    """The global L2 norm of all gradients together: ``sqrt(sum over every entry of g^2)``, the squares
    summed in float64 on every backend. ``sum_squares`` sums a host array's: ``kernels.host_sum_squares(ops)``
    (numba's one compiled pass), or None for ``tinygpt.kernels.sum_squares``, the NumPy reference."""
    if sum_squares is None:
        from tinygpt.kernels import sum_squares

    total = 0.0
    on_gpu = []
    for g in grads.values():
        gpu = _gpu(g)
        if gpu is not None:
            on_gpu.append(g)
        else:
            total += sum_squares(g)
    if on_gpu:  # squared and summed on the GPU, all arrays at once: one number comes back, one wait
        total += _gpu(on_gpu[0]).sum_squares_total(on_gpu)
    return math.sqrt(total)


def clip_grad_norm(grads: dict[str, np.ndarray], max_norm: float, sum_squares=None) -> float:
    """Scale all gradients IN PLACE so their global norm is at most ``max_norm``; return the norm before.

    As ``torch.nn.utils.clip_grad_norm_``: ``g <- g * min(1, max_norm / (norm + 1e-6))``. One global
    factor keeps the update's direction and only shortens it, which tames the occasional huge step.
    ``max_norm <= 0`` disables clipping (the norm is still returned, e.g. for logging). A non-finite
    norm is returned unchanged and the gradients are left alone, so the caller can report it.
    """
    if math.isnan(max_norm):  # (nan > 0 is False: it read as "clipping off", silently)
        raise TinyGPTError("clip_grad_norm: max_norm is nan; give a number (<= 0 disables clipping)")
    norm = grad_norm(grads, sum_squares)
    if max_norm > 0 and math.isfinite(norm):
        scale = max_norm / (norm + 1e-6)
        if scale < 1.0:
            scale_grads(grads, scale)
    return norm


def lr_at(step: int, learning_rate: float, warmup_iters: int, lr_decay_iters: int, min_lr: float) -> float:
    """Learning rate for update ``step`` (0-based): linear warmup, then cosine decay to ``min_lr``.

    ::

        step <  warmup_iters:   lr * (step + 1) / (warmup_iters + 1)     # ramps up; never exactly 0
        step >  lr_decay_iters: min_lr
        otherwise:              min_lr + (lr - min_lr) * 0.5 * (1 + cos(pi * r)),
                                r = (step - warmup_iters) / (lr_decay_iters - warmup_iters)   in [0, 1]

    Example with lr=1e-3, min_lr=1e-4, warmup 100, decay 2000: step 0 -> 9.9e-6, step 100 -> 1e-3,
    step 1050 -> 5.5e-4 (half way down), step 2000 -> 1e-4.

    ``lr_decay_iters <= warmup_iters`` has no decay span: the rate drops to ``min_lr`` right after the warmup.
    """
    # a negative step made a negative rate; a negative warmup a cosine that starts before step 0 (below the
    # peak), or a division by zero at warmup_iters -1
    if step < 0:
        raise TinyGPTError(f"lr_at: step must be >= 0, got {step}")
    if warmup_iters < 0:
        raise TinyGPTError(f"lr_at: warmup_iters must be >= 0, got {warmup_iters}")
    if step < warmup_iters:
        return learning_rate * (step + 1) / (warmup_iters + 1)
    if step > lr_decay_iters:
        return min_lr
    span = lr_decay_iters - warmup_iters
    ratio = (step - warmup_iters) / span if span > 0 else 1.0
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    return min_lr + coeff * (learning_rate - min_lr)
