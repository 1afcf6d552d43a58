"""GPT-2, forward and backward by hand: ``GPTConfig`` and ``GPT``.

The model is a dict of NumPy arrays (GPU arrays with the cuda backend, see ``GPT``) named exactly as in
OpenAI's GPT-2 checkpoints (as published by Hugging Face, minus the ``transformer.`` prefix), so GPT-2
weights load with no renaming or transposing::

    wte.weight (V, C)                   wpe.weight (block_size, C)
    h.{i}.ln_1.weight, .bias (C,)       h.{i}.attn.c_attn.weight (C, 3C), .bias (3C,)
    h.{i}.attn.c_proj.weight (C, C)     h.{i}.attn.c_proj.bias (C,)
    h.{i}.ln_2.weight, .bias (C,)       h.{i}.mlp.c_fc.weight (C, 4C), .bias (4C,)
    h.{i}.mlp.c_proj.weight (4C, C)     h.{i}.mlp.c_proj.bias (C,)
    ln_f.weight, .bias (C,)             (no lm_head: the output layer is wte, transposed)

and the forward pass is the layers of ``tinygpt.layers`` strung together (pre-LN residual blocks)::

    x = drop(wte[idx] + wpe[:T])                                      (B, T, C)
    for each block i:
        x = x + drop(c_proj(attention(c_attn(ln_1(x)))))              attention: causal, H heads
        x = x + drop(c_proj(gelu(c_fc(ln_2(x)))))                     MLP: C -> 4C -> C
    logits = ln_f(x) @ wte.T                                          (B, T, V)
    loss = mean cross-entropy of logits against targets (-1 = ignore)

``backward()`` walks the same path in reverse with each layer's ``*_backward``. wte is used twice, as the
embedding table and as the output layer, so its gradient is the sum of both uses.

Example::

    import numpy as np
    from tinygpt.model import GPT, GPTConfig
    model = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128))
    idx = np.random.default_rng(0).integers(0, 65, (12, 64))
    logits, loss = model.forward(idx, targets=np.roll(idx, -1, axis=1))   # (12, 64, 65), ~log(65) = 4.17
    grads = model.backward()                                              # same keys and shapes as params

Activation memory. Training keeps, per token and per block, the arrays backward needs (float32, 4 bytes
each; C = n_embd, H = n_head, T = sequence length)::

    ln_1 and ln_2 inputs (the residual stream)   2C     c_attn input (ln_1 output)      C
    qkv (the attention input)                   3C     attention probabilities    ~5/8 H*T
    c_proj input (attention output)              C     c_fc input (ln_2 output)        C
    GELU input (c_fc output)                    4C     MLP c_proj input (GELU output)  4C
    LayerNorm mean and rstd                       4    dropout keep-masks (if p > 0)   bytes: ~5/8 H*T + 2C

i.e. about 16C + H*T' floats per token per block, where T' is the average number of keys a query's
block computes (T for T <= 64; (64 + 128 + 192 + 256) / 4 = 160 at T = 256, see ``attention_forward``),
plus 2C + V + 4 for the final LayerNorm (its input and output, mean and rstd), the logits and the loss's
row max and sum of exps (and V more while backward forms dlogits). At 6 blocks, C = 384, H = 6, T = 256
that is 6 * (6144 + 960 + 4) + 837 = 43,485 floats = 170 KiB per token, 340 MiB for a batch of 8 x 256
tokens (``activation_floats_per_token``); ``tinygpt bench train`` measures the peak RSS of such a step.
The keep-masks, one byte per attention probability and per entry of the two branches' outputs (C bytes
more for the embeddings'), are the NumPy reference's: the numba and cuda backends keep only their keys.
Evaluation without targets keeps nothing. With ``GPT.recompute`` a block keeps only its input (C floats) and
backward rebuilds one block's caches at a time (its input among them): at the peak 5 * 384 + 7,108 + 837 =
9,865 floats, 39 KiB per token there.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from tinygpt.errors import TinyGPTError, is_int, is_number, shown
from tinygpt.files import atomic_path, loads_json, unreadable_weights

__all__ = ["GPTConfig", "GPT", "get_layer_ops", "activation_floats_per_token"]

LAYERNORM_EPS = 1e-5  # GPT-2's layer_norm_epsilon
GELUS = ("tanh", "erf")  # GPTConfig.gelu: GPT-2's tanh approximation, or x Phi(x) itself (nanoGPT's)


@dataclass
class GPTConfig:
    """The shape of a GPT: vocabulary, context length, depth, heads and width.

    ``dropout`` applies to the embeddings, the attention probabilities and both residual branches (training
    only); ``bias=False`` drops every Linear and LayerNorm bias (as nanoGPT allows). ``gelu`` is the MLP's
    GELU: "tanh", GPT-2's approximation, or "erf", the function itself (torch's ``nn.GELU()``, which nanoGPT
    trains with; the two differ by up to 4.7e-4). GPT-2 small is ``GPTConfig(50257, 1024, 12, 12, 768)``.
    """

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool = True
    gelu: str = "tanh"

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not is_int(value) or value <= 0:
                raise TinyGPTError(f"GPTConfig.{name} must be a positive integer, got {shown(value)}")
            setattr(self, name, int(value))
        if self.n_embd % self.n_head:
            raise TinyGPTError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if not isinstance(self.bias, (bool, np.bool_)):
            raise TinyGPTError(f"GPTConfig.bias must be true or false, got {shown(self.bias)}")
        self.bias = bool(self.bias)
        if self.gelu not in GELUS:
            raise TinyGPTError(f"GPTConfig.gelu must be {' or '.join(map(repr, GELUS))}, "
                               f"got {shown(self.gelu)}")

    def __setattr__(self, name, value):
        # dropout is checked on every assignment, not only in __init__: it is the one setting changed on a
        # built model (train and finetune set theirs on a loaded one), and "0.1" or None set so was a
        # TypeError from the dropout layers, which check only the range (they are on the hot path)
        if name == "dropout":
            if not is_number(value):  # (NumPy's too: np.float32 is no Python float)
                raise TinyGPTError(f"GPTConfig.dropout must be a number in [0, 1), got {shown(value)}")
            if not 0.0 <= value < 1.0:
                raise TinyGPTError(f"GPTConfig.dropout must be in [0, 1), got {value}")
            value = float(value)
        super().__setattr__(name, value)

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        if not isinstance(d, dict):
            raise TinyGPTError(f"a model config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TinyGPTError(f"unknown model config field(s): {', '.join(unknown)}")
        missing = sorted(f.name for f in fields(cls) if f.name not in d and f.default is MISSING)
        if missing:
            raise TinyGPTError(f"model config is missing: {', '.join(missing)}")
        return cls(**d)


def activation_floats_per_token(config: GPTConfig, seq_len: int, query_block: int = 64,
                                recompute: bool = False) -> float:
    """Floats a training forward keeps for backward, per token (the count in this module's docstring).

    With ``recompute`` (``GPT.recompute``): the blocks' inputs (C each), and at the peak one block's caches,
    rebuilt one block at a time in backward (that block's input is among them: ln_1 caches it)."""
    C, H, T = config.n_embd, config.n_head, seq_len
    keys = [min(t0 + query_block, T) for t0 in range(0, T, query_block)]  # keys each query block computes
    rows = [min(query_block, T - t0) for t0 in range(0, T, query_block)]
    mean_keys = sum(r * k for r, k in zip(rows, keys)) / T
    per_block = 2 * C + C + 3 * C + H * mean_keys + C + C + 4 * C + 4 * C + 4
    blocks = (config.n_layer - 1) * C + per_block if recompute else config.n_layer * per_block
    return blocks + 2 * C + 2 + config.vocab_size + 2  # ln_f: input, output, mean, rstd; logits; row max, sum


def get_layer_ops(backend: str = "numpy") -> SimpleNamespace:
    """The layer functions (and device helpers) for ``backend``: ``tinygpt.kernels.get_ops``."""
    from tinygpt import layers
    from tinygpt.kernels import get_ops

    ops = SimpleNamespace(**vars(get_ops(backend)))  # our own copy: never mutate the backend's namespace
    for name in ("dropout_forward", "dropout_backward"):  # not every backend has its own dropout
        if not hasattr(ops, name):
            setattr(ops, name, getattr(layers, name))
    return ops


def param_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in checkpoint order; biases only with ``config.bias``."""
    V, C = config.vocab_size, config.n_embd
    shapes = {"wte.weight": (V, C), "wpe.weight": (config.block_size, C)}
    layer = {
        "ln_1.weight": (C,), "ln_1.bias": (C,),
        "attn.c_attn.weight": (C, 3 * C), "attn.c_attn.bias": (3 * C,),
        "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,),
        "ln_2.weight": (C,), "ln_2.bias": (C,),
        "mlp.c_fc.weight": (C, 4 * C), "mlp.c_fc.bias": (4 * C,),
        "mlp.c_proj.weight": (4 * C, C), "mlp.c_proj.bias": (C,),
    }  # fmt: skip
    for i in range(config.n_layer):
        shapes.update({f"h.{i}.{name}": shape for name, shape in layer.items()})
    shapes.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
    if not config.bias:
        shapes = {name: shape for name, shape in shapes.items() if not name.endswith(".bias")}
    return shapes


def param_count(config: GPTConfig) -> int:
    """The number of parameters ``param_shapes(config)`` lists, counted without listing them."""
    V, T, C, L = config.vocab_size, config.block_size, config.n_embd, config.n_layer
    per_layer = 12 * C * C + 2 * C + (11 * C if config.bias else 0)  # 4 matmuls, 2 LayerNorm gains, biases
    return V * C + T * C + L * per_layer + C + (C if config.bias else 0)


def _check_weights_fit_in_memory(config: GPTConfig, dtype: np.dtype) -> None:
    """TinyGPTError when the weights alone would not fit in this machine's memory (a --n-layer of 10**12
    is allocated layer by layer, each small allocation succeeding, until the OOM killer ends it)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): no check
        return
    n = param_count(config)
    if n * dtype.itemsize > memory:
        raise TinyGPTError(f"a GPT of {n:,} parameters needs {n * dtype.itemsize / 2**30:,.1f} GiB for its "
                           f"{dtype} weights alone; this machine has {memory / 2**30:,.1f} GiB (n_layer "
                           f"{config.n_layer}, n_embd {config.n_embd}, vocab_size {config.vocab_size}, "
                           f"block_size {config.block_size})")


def init_params(config: GPTConfig, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    """GPT-2 initialisation: weights N(0, 0.02), biases 0, LayerNorm weight 1.

    The two projections that write into the residual stream (``attn.c_proj`` and ``mlp.c_proj``) get std
    0.02 / sqrt(2 n_layer): each block adds two such terms, so without the scaling the residual stream's
    variance would grow with depth (GPT-2 paper, section 2.3).
    """
    _check_weights_fit_in_memory(config, np.dtype(dtype))
    rng = np.random.default_rng(seed)
    residual_std = 0.02 / math.sqrt(2 * config.n_layer)
    params = {}
    for name, shape in param_shapes(config).items():
        if name.endswith(".bias"):
            params[name] = np.zeros(shape, dtype=dtype)
        elif name.startswith("ln_") or ".ln_" in name:  # LayerNorm gains
            params[name] = np.ones(shape, dtype=dtype)
        else:
            std = residual_std if name.endswith("c_proj.weight") else 0.02
            params[name] = (rng.standard_normal(shape) * std).astype(dtype)
    return params


class GPT:
    """A GPT-2 language model: parameters in ``params``, a hand-written ``forward`` and ``backward``.

    ``GPT(config, seed=0, dtype=np.float32, backend="numpy")``: ``dtype`` is float32 (training) or float64
    (gradient checks); ``backend`` picks the layer implementations (``tinygpt.kernels.get_ops``). A new
    model is in training mode (dropout on if ``config.dropout`` > 0); ``eval()`` turns dropout off.

    With ``backend="cuda"`` the model lives on the GPU: ``params``, the caches, the gradients ``backward``
    returns (and the AdamW state made from them) are numba device arrays, so a training step moves only the
    batch in and the loss out. The glue between layers therefore uses the backend's helpers (``ops.add``,
    ``ops.add_inplace``, ``ops.lm_head_forward``), which are plain NumPy on the CPU backends;
    ``host_params()`` gives NumPy copies for saving and sampling.
    """

    def __init__(
        self, config: GPTConfig, seed: int = 0, dtype=np.float32, backend: str = "numpy", params=None
    ):
        """``params``: use these arrays (name -> array, made ``dtype``) instead of a fresh GPT-2 init."""
        if not isinstance(config, GPTConfig):
            raise TinyGPTError(f"GPT needs a GPTConfig, got {type(config).__name__}")
        # (None, -1 or 1.5 reached NumPy's SeedSequence: a TypeError or ValueError from inside it)
        if not is_int(seed) or seed < 0:
            raise TinyGPTError(f"seed must be a non-negative integer, got {shown(seed)}")
        try:
            dtype = np.dtype(dtype)
        except TypeError:  # a name NumPy does not know ("float", "f4" and np.float32 it does)
            raise TinyGPTError(f"dtype must be float32 or float64, got {shown(dtype)}") from None
        if dtype not in (np.float32, np.float64):
            raise TinyGPTError(f"dtype must be float32 or float64, got {dtype}")
        self.config = config
        self.dtype = dtype
        self.backend = backend
        self.ops = get_layer_ops(backend)
        if params is None:
            params = init_params(config, seed, dtype)
        else:
            params = _checked_params(params, config, dtype)
        # With the cuda backend the weights move to the GPU here, once, and stay there: every layer then
        # reads and writes device arrays. On the CPU backends to_device is the identity.
        self.params = {name: self.ops.to_device(p) for name, p in params.items()}
        self.training = True
        # dropout masks come from here (separate from the init stream); reseed it for reproducible masks
        self.dropout_rng = np.random.default_rng([seed, 1])
        # activation recomputation ("gradient checkpointing"): see _body_forward
        self.recompute = False
        self._tape = None  # the caches of the last forward with targets, consumed by backward

    # --- modes and sizes --------------------------------------------------------------------------

    def train(self, mode: bool = True) -> GPT:
        self.training = bool(mode)
        return self

    def eval(self) -> GPT:
        return self.train(False)

    def host_params(self) -> dict[str, np.ndarray]:
        """``params`` as NumPy arrays, for whatever runs on the CPU: saving, sampling, inspecting.

        The CPU backends return their own arrays (no copy); the cuda backend copies each weight off the GPU.
        """
        return {name: self.ops.to_host(p) for name, p in self.params.items()}

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters (wte counted once although it is also the output layer).

        ``non_embedding=True`` leaves out wte and wpe, the count scaling laws use.
        """
        n = sum(p.size for p in self.params.values())
        if non_embedding:
            n -= self.params["wte.weight"].size + self.params["wpe.weight"].size
        return int(n)

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward), the estimate of PaLM's appendix B / nanoGPT's MFU.

        6 N for the matmuls (2 N forward, 4 N backward, one multiply-add = 2 FLOPs per weight) with N the
        weights that take part in a matmul (all but wpe, a lookup; wte counts for the LM head), plus
        12 n_layer C T for attention's q k^T and att v (2 * 2 C T forward per token, x3 with backward),
        counting the masked half too, as the dense matmuls do compute it.
        """
        cfg = self.config
        T = cfg.block_size if seq_len is None else int(seq_len)
        n_matmul = self.num_params() - self.params["wpe.weight"].size
        return int(6 * n_matmul + 12 * cfg.n_layer * cfg.n_embd * T)

    # --- input checks -----------------------------------------------------------------------------

    def _check_ids(self, ids, what: str, allow_ignore: bool = False) -> np.ndarray:
        try:
            ids = np.asarray(ids)
        except ValueError:  # a ragged list of rows: NumPy's "inhomogeneous shape" ValueError
            raise TinyGPTError(f"{what} must be a (batch, time) array; its rows differ in length") from None
        if ids.dtype == np.bool_ or not np.issubdtype(ids.dtype, np.integer):
            raise TinyGPTError(f"{what} must hold integer token ids, got dtype {ids.dtype}")
        if ids.ndim != 2:
            raise TinyGPTError(f"{what} must have shape (batch, time), got {ids.ndim}-D shape {ids.shape}")
        B, T = ids.shape
        if B == 0 or T == 0:
            raise TinyGPTError(f"{what} is empty (shape {ids.shape})")
        if T > self.config.block_size:
            raise TinyGPTError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        low = -1 if allow_ignore else 0
        lo, hi = int(ids.min()), int(ids.max())
        if lo < low or hi >= self.config.vocab_size:
            bad = lo if lo < low else hi
            allowed = f"[{low}, {self.config.vocab_size})"
            raise TinyGPTError(f"{what} contains id {bad}, outside the vocabulary {allowed}")
        return ids

    # --- forward and backward ---------------------------------------------------------------------

    def forward(self, idx, targets=None, keep_caches: bool = True):
        """idx (B, T) int -> logits (B, T, V), loss (Python float, or None without targets).

        With targets (B, T) int (-1 = ignore), the caches are kept for one ``backward()``; without targets,
        or with ``keep_caches=False`` (a loss to report, not to train on), nothing is kept, and each layer's
        caches are freed as it returns: the forward then holds about one block's activations at a time, not
        all of them (``activation_floats_per_token`` counts what a training forward keeps). idx and targets
        are host arrays; with the cuda backend the logits stay on the GPU (a device array, ``ops.to_host``
        reads it) and only the loss comes back.
        """
        idx = self._check_ids(idx, "idx")
        if targets is not None:
            targets = self._check_ids(targets, "targets", allow_ignore=True)
            if targets.shape != idx.shape:
                raise TinyGPTError(f"targets shape {targets.shape} does not match idx shape {idx.shape}")
        self._tape = None  # a new forward invalidates the old caches (and frees them before we allocate)
        keep = targets is not None and keep_caches
        tape = [] if keep else _NoTape()  # one entry per layer call, in order; backward pops them in reverse
        x = self._body_forward(idx, tape)
        logits, c_head = self.ops.lm_head_forward(x, self.params["wte.weight"])  # x @ wte.T: tied LM head
        tape.append(c_head)
        if targets is None:
            return logits, None
        loss, c_loss = self.ops.cross_entropy_forward(logits, targets)
        tape.append(c_loss)
        self._tape = tape if keep else None
        return logits, float(loss)

    def forward_hidden(self, idx, keep_caches: bool = True):
        """idx (B, T) int -> h (B, T, C): the final LayerNorm's output, the features the LM head reads.

        For task heads (``tinygpt.finetune``): with ``keep_caches`` the caches are kept for one
        ``backward_hidden(dh)``; without (inference), nothing is kept. h is a host (NumPy) array on every
        backend: the task heads are NumPy code.
        """
        idx = self._check_ids(idx, "idx")
        self._tape = None
        tape = [] if keep_caches else _NoTape()
        h = self._body_forward(idx, tape)
        if keep_caches:
            self._tape = ("hidden", tape, tuple(h.shape))  # tagged: backward() must not consume it
        return self.ops.to_host(h)

    def backward_hidden(self, dhidden) -> dict[str, np.ndarray]:
        """dh (B, T, C), the gradient of some loss w.r.t. ``forward_hidden``'s output -> grads of params."""
        if not (isinstance(self._tape, tuple) and self._tape[0] == "hidden"):
            raise TinyGPTError("backward_hidden() needs a forward_hidden(idx) first (once per forward)")
        _, tape, shape = self._tape
        try:
            dhidden = np.asarray(dhidden, dtype=self.dtype)  # the head's gradient, on the host
        except (TypeError, ValueError):  # strings, None: NumPy's conversion error
            raise TinyGPTError(f"backward_hidden: dhidden must be an array of numbers, got "
                               f"{type(dhidden).__name__}") from None
        if dhidden.shape != shape:
            raise TinyGPTError(f"backward_hidden: dhidden has shape {dhidden.shape}, expected (B, T, C) = "
                               f"{shape}, the shape of forward_hidden's output")
        self._tape = None
        dhidden = self.ops.to_device(dhidden)
        return self._body_backward(dhidden, tape)

    def _body_forward(self, idx, tape: list) -> np.ndarray:
        """Embeddings, blocks and the final LayerNorm: idx (B, T) -> (B, T, C); caches appended to tape.

        With ``self.recompute`` (activation recomputation, "gradient checkpointing"), a block keeps none of
        its caches: the tape holds its input and where the dropout stream stood (``_BlockStart``), and
        backward runs the block forward again from them just before its own backward. A block's activations
        then exist one block at a time (about 16C + H*T' floats per token each, see the module docstring)
        for one more forward pass of compute; the gradients are the same bits, dropout included, since
        the replay draws the same dropout keys.
        """
        ops, p, cfg = self.ops, self.params, self.config
        p_drop = cfg.dropout if self.training else 0.0
        rng = self.dropout_rng
        x, cache = ops.embedding_forward(idx, p["wte.weight"], p["wpe.weight"])
        tape.append(cache)
        x = self._dropout(x, p_drop, rng, tape)
        for i in range(cfg.n_layer):
            if self.recompute:
                start = _BlockStart(x, copy.deepcopy(rng), p_drop)  # (a Generator is small to copy)
                x = self._block_forward(i, x, p_drop, rng, [])  # its caches are freed as it returns
                tape.append(start)
            else:
                x = self._block_forward(i, x, p_drop, rng, tape)
        x, c_lnf = ops.layernorm_forward(x, p["ln_f.weight"], p.get("ln_f.bias"), LAYERNORM_EPS)
        tape.append(c_lnf)
        return x

    def _dropout(self, x, p_drop, rng, tape):
        out, cache = self.ops.dropout_forward(x, p_drop, rng)
        tape.append(cache)
        return out

    def _block_forward(self, i: int, x, p_drop: float, rng, tape: list):
        """Block i: x (B, T, C) -> (B, T, C); its ten caches go on tape in the order backward pops them."""
        ops, p, cfg = self.ops, self.params, self.config
        h = f"h.{i}."
        a, c_ln1 = ops.layernorm_forward(x, p[h + "ln_1.weight"], p.get(h + "ln_1.bias"), LAYERNORM_EPS)
        a, c_attn = ops.linear_forward(a, p[h + "attn.c_attn.weight"], p.get(h + "attn.c_attn.bias"))
        a, c_att = ops.attention_forward(a, cfg.n_head, p_drop, rng)
        a, c_proj = ops.linear_forward(a, p[h + "attn.c_proj.weight"], p.get(h + "attn.c_proj.bias"))
        tape += [c_ln1, c_attn, c_att, c_proj]
        a = self._dropout(a, p_drop, rng, tape)
        # residual x + a, summed into `a` (a fresh array no cache refers to; x is cached by ln_1)
        x = ops.add_inplace(a, x)
        m, c_ln2 = ops.layernorm_forward(x, p[h + "ln_2.weight"], p.get(h + "ln_2.bias"), LAYERNORM_EPS)
        m, c_fc = ops.linear_forward(m, p[h + "mlp.c_fc.weight"], p.get(h + "mlp.c_fc.bias"))
        m, c_gelu = (ops.gelu_erf_forward if cfg.gelu == "erf" else ops.gelu_forward)(m)
        m, c_mproj = ops.linear_forward(m, p[h + "mlp.c_proj.weight"], p.get(h + "mlp.c_proj.bias"))
        tape += [c_ln2, c_fc, c_gelu, c_mproj]
        m = self._dropout(m, p_drop, rng, tape)
        return ops.add_inplace(m, x)

    def backward(self) -> dict[str, np.ndarray]:
        """Gradients of the last forward's loss: a dict with the keys and shapes of ``params``."""
        if self._tape is None or isinstance(self._tape, tuple):
            raise TinyGPTError("backward() needs a forward(idx, targets) first (once per forward)")
        tape, self._tape = self._tape, None  # consumed: a second backward would need a new forward
        dlogits = self.ops.cross_entropy_backward(1.0, tape.pop())
        dx, dwte_head = self.ops.lm_head_backward(dlogits, tape.pop())  # dwte_head = dlogits^T x, (V, C)
        del dlogits
        grads = self._body_backward(dx, tape)
        # tied weights: the embedding's and the LM head's gradients add
        self.ops.add_inplace(grads["wte.weight"], dwte_head)
        return grads

    def _body_backward(self, dx, tape: list) -> dict[str, np.ndarray]:
        """dx (B, T, C) at the final LayerNorm's output -> grads of all params (wte: as embedding only)."""
        ops, p, cfg = self.ops, self.params, self.config
        grads = {}

        def put(name, grad):
            if grad is not None and name in p:
                grads[name] = grad

        dx, dw, db = ops.layernorm_backward(dx, tape.pop())
        put("ln_f.weight", dw)
        put("ln_f.bias", db)
        for i in reversed(range(cfg.n_layer)):
            h = f"h.{i}."
            if isinstance(tape[-1], _BlockStart):  # recomputation: run the block again for its caches
                start = tape.pop()
                self._block_forward(i, start.x, start.p_drop, start.rng, tape)
                del start  # (its input lives on in ln_1's cache until this block's backward is done)
            # MLP branch: x_out = x_mid + drop(mlp(ln_2(x_mid))), so dx_mid = dx_out + (branch gradient)
            dm = ops.dropout_backward(dx, tape.pop())
            c_ln2, c_fc, c_gelu, c_mproj = tape[-4:]
            del tape[-4:]
            dm, dw, db = ops.linear_backward(dm, c_mproj)
            put(h + "mlp.c_proj.weight", dw)
            put(h + "mlp.c_proj.bias", db)
            dm = (ops.gelu_erf_backward if cfg.gelu == "erf" else ops.gelu_backward)(dm, c_gelu)
            dm, dw, db = ops.linear_backward(dm, c_fc)
            put(h + "mlp.c_fc.weight", dw)
            put(h + "mlp.c_fc.bias", db)
            dm, dw, db = ops.layernorm_backward(dm, c_ln2)
            put(h + "ln_2.weight", dw)
            put(h + "ln_2.bias", db)
            del c_ln2, c_fc, c_gelu, c_mproj  # freed now, not when the next block's replay is on top
            dx = ops.add(dx, dm)  # a new array: dx may be the very array dropout_backward passed through
            # attention branch
            da = ops.dropout_backward(dx, tape.pop())
            c_ln1, c_attn, c_att, c_proj = tape[-4:]
            del tape[-4:]
            da, dw, db = ops.linear_backward(da, c_proj)
            put(h + "attn.c_proj.weight", dw)
            put(h + "attn.c_proj.bias", db)
            da = ops.attention_backward(da, c_att)
            da, dw, db = ops.linear_backward(da, c_attn)
            put(h + "attn.c_attn.weight", dw)
            put(h + "attn.c_attn.bias", db)
            da, dw, db = ops.layernorm_backward(da, c_ln1)
            put(h + "ln_1.weight", dw)
            put(h + "ln_1.bias", db)
            del c_ln1, c_attn, c_att, c_proj
            dx = ops.add(dx, da)
        dx = ops.dropout_backward(dx, tape.pop())
        dwte, dwpe = ops.embedding_backward(dx, tape.pop())
        grads["wte.weight"] = dwte
        grads["wpe.weight"] = dwpe
        return {name: grads[name] for name in p}  # params' order

    def __call__(self, idx, targets=None):
        return self.forward(idx, targets)

    # --- generation -------------------------------------------------------------------------------

    def generate(
        self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None, eos_token=None,
        vocab_limit=None, min_p=None, repetition_penalty=None,
    ):
        """Continue ``idx`` (B, T) by up to ``max_new_tokens`` tokens: see ``tinygpt.generate.generate``.

        Decoding is the NumPy KV-cache path on every backend, so it reads ``host_params()``; a backend other
        than "numpy" lends it one compiled kernel, the exact GELU (``GPTConfig(gelu="erf")``).
        """
        from tinygpt.generate import generate

        return generate(
            self.host_params(), self.config, idx, max_new_tokens, temperature=temperature, top_k=top_k,
            top_p=top_p, seed=seed, eos_token=eos_token, vocab_limit=vocab_limit, min_p=min_p,
            repetition_penalty=repetition_penalty, backend=self.ops.name,
        )  # fmt: skip

    # --- GPT-2 checkpoints (transformers' format) and nanoGPT's ckpt.pt ----------------------------

    @classmethod
    def from_pretrained(
        cls, path, dtype=np.float32, backend: str = "numpy", dropout: float | None = None
    ) -> GPT:
        """Load a transformers GPT-2 directory (``config.json`` + weights), gpt2 to gpt2-xl, or a nanoGPT
        checkpoint (``ckpt.pt``, or the out_dir holding it: see ``nanogpt_checkpoint``).

        Keys may carry the ``transformer.`` prefix; the attention-mask buffers (``attn.bias``,
        ``attn.masked_bias``) and ``lm_head.weight`` (tied to wte) are skipped. ``dropout`` overrides the
        checkpoint's ``resid_pdrop`` (nanoGPT's: its ``model_args``' dropout). Sharded checkpoints
        (``model.safetensors.index.json``) work too, and so does PyTorch's ``pytorch_model.bin`` (or its
        ``.index.json``) where there is no safetensors file: it is read without torch, by
        ``tinygpt.torchfile``, which refuses a pickle naming anything but tensors (and, in a ``ckpt.pt``,
        the plain data beside them).
        """
        path = os.fspath(path)
        ckpt = nanogpt_checkpoint(path)
        if ckpt is not None:
            return load_nanogpt(ckpt, dtype, backend, dropout)[0]
        config_path = os.path.join(path, "config.json")
        if not os.path.isdir(path):
            raise TinyGPTError(f"no model directory or nanoGPT ckpt.pt at {path}")
        if not os.path.isfile(config_path):
            raise TinyGPTError(f"{path} has no config.json (a transformers GPT-2 directory) nor ckpt.pt (a "
                               "nanoGPT out_dir)")
        try:
            with open(config_path, encoding="utf-8") as f:
                hf = loads_json(f.read())
        except ValueError as exc:  # (bad JSON, nested too deeply, or bytes not UTF-8)
            raise TinyGPTError(f"{config_path} is not valid JSON: {exc}") from None
        if not isinstance(hf, dict):
            raise TinyGPTError(f"{config_path} is not a JSON object (expected a transformers GPT-2 config)")
        config = _config_from_hf(hf, config_path, dropout)
        params = _params_from_state_dict(_read_weights(path), config, f"the checkpoint at {path}",
                                         config_path)
        return cls(config, dtype=dtype, backend=backend, params=params)

    def save_pretrained(self, path) -> None:
        """Write ``config.json`` and ``model.safetensors`` that ``GPT2LMHeadModel.from_pretrained`` loads.

        Each file is written whole or not at all (``tinygpt.files.atomic_path``). A model without biases
        is saved with zero biases (GPT-2's format always has them).
        """
        from safetensors.numpy import save_file

        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        cfg = self.config
        params = self.host_params()
        tensors = {}
        for name, shape in param_shapes(GPTConfig(**{**cfg.to_dict(), "bias": True})).items():
            array = params.get(name)
            if array is None:  # bias=False: an exactly equivalent zero bias
                array = np.zeros(shape, dtype=self.dtype)
            tensors["transformer." + name] = np.ascontiguousarray(array)
        config_text = json.dumps(_config_to_hf(cfg, np.dtype(self.dtype).name), indent=2) + "\n"
        # both files written in full before either replaces its old self: a failed save (a full disk)
        # leaves the previous model whole, not a new config.json beside the old weights
        with atomic_path(os.path.join(path, "model.safetensors")) as weights_tmp, \
                atomic_path(os.path.join(path, "config.json")) as config_tmp:
            save_file(tensors, weights_tmp, metadata={"format": "pt"})
            Path(config_tmp).write_text(config_text, encoding="utf-8")
            # the weights made durable here, not as their own (outer) block ends: that came after config.json
            # had replaced its old self, so an fsync that failed on them (a full disk as NFS or a quota
            # reports it, an I/O error) left the new config beside the old weights
            with open(weights_tmp, "rb+") as f:
                os.fsync(f.fileno())


class _NoTape:
    """The tape of a forward that keeps nothing (inference, evaluation): what is put on it is dropped at
    once, so each layer's caches are freed as soon as the next layer no longer needs its output."""

    def append(self, cache) -> None:
        pass

    def __iadd__(self, caches):  # (``tape += [...]``)
        return self


@dataclass
class _BlockStart:
    """What a recomputed block keeps on the tape: its input, the dropout Generator as it stood when the
    block began (a copy: replaying draws the same keys and leaves the model's stream alone) and p."""

    x: object
    rng: np.random.Generator
    p_drop: float


def non_finite_weight(params: dict, ops) -> str | None:
    """``"NAME has nan"`` (or ``inf``) for the first tensor of ``params`` that holds a NaN or an infinity,
    else None. One pass over the weights, fewer reads than one forward pass makes: what loads a model to
    score or sample it checks it, where NaN weights gave ``loss nan`` (exit 0) or a sampler's error."""
    on_gpu = [w for w in params.values() if hasattr(w, "copy_to_host")]  # (the cuda backend's weights)
    if on_gpu:
        from tinygpt.kernels.cuda import sum_squares_total

        # one float64 sum of their squares on the GPU, finite only if every one of them is (squares never
        # cancel, and float32's largest squared is 1e77), where copying each tensor to the host brought the
        # whole model back over the bus (0.5 GB for GPT-2 small, 6 GB for GPT-2 XL); a non-finite sum (or
        # a float64 weight past 1e154) is looked into tensor by tensor below
        if math.isfinite(sum_squares_total(on_gpu)):
            params = {name: w for name, w in params.items() if not hasattr(w, "copy_to_host")}
    for name, weight in params.items():
        values = ops.to_host(weight)
        if not np.isfinite(values).all():
            return f"{name} has {'nan' if np.isnan(values).any() else 'inf'}"
    return None


def check_finite_weights(model: GPT, where: str, remedy: str) -> None:
    """Raise TinyGPTError naming the first non-finite tensor of ``model``'s weights, if any (``where``: the
    checkpoint it came from; ``remedy``: what to do instead)."""
    found = non_finite_weight(model.params, model.ops)
    if found is not None:
        raise TinyGPTError(f"{where} holds non-finite weights ({found}), which give non-finite logits; "
                           f"{remedy}")


def _checked_params(params, config: GPTConfig, dtype) -> dict[str, np.ndarray]:
    """``params`` checked against the config's names and shapes, as contiguous ``dtype`` arrays.

    Arrays that already are contiguous ``dtype`` are shared, not copied (a checkpoint loads without a copy).
    """
    expected = param_shapes(config)
    if not isinstance(params, dict) or set(params) != set(expected):
        got = set(params) if isinstance(params, dict) else set()
        problems = sorted(set(expected) - got)[:2] + sorted(got - set(expected))[:2]
        raise TinyGPTError(f"params do not match the config: missing or unexpected {', '.join(problems)}")
    out = {}
    for name, shape in expected.items():  # checkpoint order
        try:
            array = np.ascontiguousarray(params[name], dtype=dtype)
        except (TypeError, ValueError):  # strings, None: NumPy's conversion error
            value = params[name]
            kind = f"an array of {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__
            raise TinyGPTError(f"params[{name!r}] must be an array of numbers, got {kind}") from None
        if array.shape != shape:
            raise TinyGPTError(f"params[{name!r}] has shape {array.shape}, expected {shape}")
        out[name] = array
    return out


# --- transformers' config.json and weight files --------------------------------------------------------


def _config_to_hf(cfg: GPTConfig, dtype: str = "float32") -> dict:
    eot = 50256 if cfg.vocab_size > 50256 else None  # GPT-2's <|endoftext|>, when the vocabulary has it
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_ctx": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,
        "activation_function": "gelu" if cfg.gelu == "erf" else "gelu_new",  # (transformers' "gelu" is erf's)
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": LAYERNORM_EPS,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "torch_dtype": dtype,  # the weights' own: transformers' dtype="auto" loads them as saved
    }


def _config_from_hf(hf: dict, where: str, dropout: float | None) -> GPTConfig:
    if hf.get("model_type", "gpt2") != "gpt2":
        raise TinyGPTError(f"{where}: model_type is {hf.get('model_type')!r}, only 'gpt2' is supported")
    unsupported = {
        # the first two are GELU's tanh approximation, "gelu" is x Phi(x) itself (GPTConfig.gelu "erf")
        "activation_function": ("gelu_new", "gelu_pytorch_tanh", "gelu"),
        "layer_norm_epsilon": (LAYERNORM_EPS,),
        "scale_attn_weights": (True,),
        "scale_attn_by_inverse_layer_idx": (False,),
        "reorder_and_upcast_attn": (False,),
        "tie_word_embeddings": (True,),
    }
    for key, allowed in unsupported.items():
        if key in hf and hf[key] not in allowed:
            raise TinyGPTError(f"{where}: {key} = {hf[key]!r} is not supported (GPT-2 has {allowed[0]!r})")
    sizes = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")
    missing = [key for key in sizes if key not in hf]
    if missing:
        raise TinyGPTError(f"{where} is missing {', '.join(missing)}")
    for key in sizes:
        if not isinstance(hf[key], int) or isinstance(hf[key], bool):
            raise TinyGPTError(f"{where}: {key} must be an integer, got {shown(hf[key])}")
        # (checked here, by the file's names, not left to GPTConfig, whose message named neither the file
        # nor the key: "GPTConfig.block_size must be a positive integer, got 0" for n_positions)
        if hf[key] <= 0:
            raise TinyGPTError(f"{where}: {key} must be a positive integer, got {hf[key]}")
    if hf["n_embd"] % hf["n_head"]:
        raise TinyGPTError(f"{where}: n_embd ({hf['n_embd']}) must be divisible by n_head ({hf['n_head']})")
    if hf.get("n_inner") not in (None, 4 * hf["n_embd"]):
        raise TinyGPTError(f"{where}: n_inner = {hf['n_inner']!r} is not supported (the MLP is 4 * n_embd)")
    resid_pdrop = hf.get("resid_pdrop", 0.0)
    if not isinstance(resid_pdrop, (int, float)) or isinstance(resid_pdrop, bool):
        raise TinyGPTError(f"{where}: resid_pdrop must be a number, got {shown(resid_pdrop)}")
    if dropout is None and not 0 <= resid_pdrop < 1:
        raise TinyGPTError(f"{where}: resid_pdrop must be in [0, 1), got {resid_pdrop}")
    return GPTConfig(
        vocab_size=hf["vocab_size"],
        block_size=hf["n_positions"],
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        n_embd=hf["n_embd"],
        dropout=float(resid_pdrop) if dropout is None else dropout,
        bias=True,
        gelu="erf" if hf.get("activation_function") == "gelu" else "tanh",
    )


# nanoGPT's ckpt.pt: what its train.py saves (torch.save of a dict) and how its names and shapes map to ours
NANOGPT_CHECKPOINT = "ckpt.pt"
NANOGPT_MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")  # (and bias, dropout)
# nanoGPT's nn.Linear weights are (out, in), the transpose of GPT-2's Conv1D (in, out) that params follow
_LINEAR_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def nanogpt_checkpoint(path) -> str | None:
    """The nanoGPT checkpoint ``path`` names, or None for a transformers directory (or nothing at all).

    A file is taken as a nanoGPT ``ckpt.pt`` whatever its name, but for a file of a transformers directory
    (JSON, safetensors, or any file but ckpt.pt beside a ``config.json``: ``pytorch_model.bin``, a shard),
    which is refused, naming the directory to give instead; a directory is nanoGPT's out_dir when it holds
    ``ckpt.pt`` and no ``config.json`` (with one, it is a transformers directory, as before).
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        name, folder = os.path.basename(path), os.path.dirname(path) or "."
        if name.endswith((".json", ".safetensors")) or (name != NANOGPT_CHECKPOINT and os.path.isfile(
                os.path.join(folder, "config.json"))):
            raise TinyGPTError(f"{path} is a file of a transformers model directory: give the directory, "
                               f"{folder}")
        return path
    inside = os.path.join(path, NANOGPT_CHECKPOINT)
    if os.path.isfile(inside) and not os.path.exists(os.path.join(path, "config.json")):
        return inside
    return None


def load_nanogpt(ckpt: str, dtype=np.float32, backend: str = "numpy", dropout: float | None = None):
    """``(GPT, entries)`` of nanoGPT's ``ckpt.pt`` (see ``nanogpt_checkpoint``): the model, and the
    checkpoint's plain entries (``model_args``, ``iter_num``, ``config``: ``torchfile.read_checkpoint``)."""
    from tinygpt.torchfile import read_checkpoint

    state_dict, entries = read_checkpoint(ckpt, "model")
    config = _config_from_nanogpt(entries.get("model_args"), ckpt, dropout)
    # torch.compile'd models save every name under _orig_mod. (nanoGPT's own resume strips it too)
    tensors = {}
    for key, array in state_dict.items():
        name = key.removeprefix("_orig_mod.")
        if name in tensors:
            raise TinyGPTError(f"{ckpt}: tensor {name!r} is in the state dict twice (with and without "
                               "_orig_mod.)")
        tensors[name] = array
    params = _params_from_state_dict(tensors, config, ckpt, "model_args", linear_out_in=True)
    return GPT(config, dtype=dtype, backend=backend, params=params), entries


def nanogpt_meta_path(ckpt: str, entries: dict) -> str | None:
    """Where the ``meta.pkl`` of a char-level nanoGPT checkpoint is, or None: nanoGPT keeps a char-level
    run's vocabulary with its dataset (``data/<config['dataset']>/meta.pkl``), not in ``ckpt.pt``.

    Looked for beside ``ckpt.pt``, then where nanoGPT's own layout puts it (the out_dir sits in nanoGPT's
    folder, beside ``data/``), then under the working directory, where nanoGPT's sample.py looks.
    """
    folder = os.path.dirname(os.path.abspath(ckpt))
    places = [os.path.join(folder, "meta.pkl")]
    config = entries.get("config")
    dataset = config.get("dataset") if isinstance(config, dict) else None
    if isinstance(dataset, str) and dataset and dataset == os.path.basename(dataset) and dataset not in (
            ".", ".."):  # a folder's name, not a path that could lead anywhere
        places += [os.path.join(folder, os.pardir, "data", dataset, "meta.pkl"),
                   os.path.join("data", dataset, "meta.pkl")]
    return next((place for place in places if os.path.isfile(place)), None)


def _config_from_nanogpt(model_args, where: str, dropout: float | None) -> GPTConfig:
    """GPTConfig of nanoGPT's ``model_args`` (n_layer, n_head, n_embd, block_size, bias, vocab_size,
    dropout); the MLP's GELU is nanoGPT's, x Phi(x) (``gelu="erf"``)."""
    if not isinstance(model_args, dict):
        raise TinyGPTError(f"{where} has no model_args dict: not a checkpoint of nanoGPT's train.py")
    missing = [key for key in NANOGPT_MODEL_ARGS if key not in model_args]
    if missing:
        raise TinyGPTError(f"{where}: model_args is missing {', '.join(missing)}")
    for key in NANOGPT_MODEL_ARGS:  # (64-bit, as torch's: a longer one can be no shape, nor be printed)
        if not is_int(model_args[key]) or not -2**63 <= model_args[key] < 2**63:
            raise TinyGPTError(f"{where}: model_args' {key} must be a 64-bit integer, got "
                               f"{shown(model_args[key]):.40}")
    bias = model_args.get("bias", True)
    if not isinstance(bias, bool):
        raise TinyGPTError(f"{where}: model_args' bias must be True or False, got {shown(bias):.40}")
    if dropout is None:
        dropout = model_args.get("dropout", 0.0)
        if not is_number(dropout) or not 0 <= dropout < 1:  # (not left to GPTConfig, whose repr of it fails)
            raise TinyGPTError(f"{where}: model_args' dropout must be a number in [0, 1), got "
                               f"{shown(dropout):.40}")
    try:
        return GPTConfig(vocab_size=model_args["vocab_size"], block_size=model_args["block_size"],
                         n_layer=model_args["n_layer"], n_head=model_args["n_head"],
                         n_embd=model_args["n_embd"], dropout=dropout, bias=bias, gelu="erf")
    except TinyGPTError as exc:  # (a size of 0, n_embd not divisible by n_head)
        raise TinyGPTError(f"{where}: {exc}") from None


def _params_from_state_dict(tensors: dict[str, np.ndarray], config: GPTConfig, where: str, config_name: str,
                            linear_out_in: bool = False) -> dict[str, np.ndarray]:
    """A GPT-2 state dict's tensors as ``params`` of ``config``, every name and shape checked.

    Names may carry ``transformer.``; the causal-mask buffers (``attn.bias``, ``attn.masked_bias``) are
    skipped and ``lm_head.weight`` must equal wte (tied). ``linear_out_in``: the four matmul weights are
    stored (out, in), as nn.Linear keeps them (nanoGPT), and are transposed.
    """
    # n_layer against the weights before param_shapes lists every layer's names: a corrupt n_layer of
    # 2**40 would take all the memory there
    layer_of = (re.match(r"(?:transformer\.)?h\.(\d+)\.", key) for key in tensors)
    layers = {int(match[1]) for match in layer_of if match}
    # a missing name as the file spells its others (nanoGPT's and transformers' under transformer.), and
    # what the file holds: 'is missing h.1' named no key, nor which layers were there
    prefix = "transformer." if any(key.startswith("transformer.") for key in tensors) else ""
    held = f"the weights hold {len(tensors)} tensors, {_layers_held(layers)}"
    # the first layer index the weights lack, whatever n_layer says: layers {0, 2} under n_layer 2 lack h.1,
    # which "holds h.2, past n_layer" did not say (a range over what is held, never over n_layer)
    absent = min(set(range(len(layers) + 1)) - layers)
    if absent < config.n_layer:
        raise TinyGPTError(f"{where} is missing layer h.{absent} (no tensor named {prefix}h.{absent}.*), "
                           f"where {config_name} has n_layer = {config.n_layer}: {held}")
    if layers and max(layers) >= config.n_layer:  # (else "unexpected tensor h.1...", no word of n_layer)
        raise TinyGPTError(f"{where} holds h.{max(layers)}, past {config_name}'s n_layer = {config.n_layer} "
                           f"({held})")

    expected = param_shapes(config)
    loaded = {}
    head = None
    for key, array in tensors.items():
        name = key.removeprefix("transformer.")
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # the causal-mask buffers older transformers (and nanoGPT without flash) saved
        if name == "lm_head.weight":
            head = array
            continue
        if name not in expected:
            raise TinyGPTError(f"unexpected tensor {key!r} in {where}")
        transpose = linear_out_in and name.endswith(_LINEAR_WEIGHTS)  # (c_proj's (C, C) too)
        shape = expected[name][::-1] if transpose else expected[name]
        if tuple(array.shape) != shape:
            raise TinyGPTError(f"{where}: tensor {key!r} has shape {tuple(array.shape)}, expected {shape} "
                               f"from the sizes in {config_name}")
        loaded[name] = array.T if transpose else array  # (GPT(params=...) makes it contiguous)
    missing = [name for name in expected if name not in loaded]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        names = ", ".join(repr(prefix + name) for name in missing[:3])
        raise TinyGPTError(f"{where} is missing {names}{more} ({held})")
    if head is not None and not np.array_equal(head, loaded["wte.weight"]):
        raise TinyGPTError(f"{where}: lm_head.weight differs from wte.weight: only a tied output layer is "
                           "supported")
    return loaded


def _layers_held(layers: set) -> str:
    """The blocks a state dict holds, for a message: 'layers h.0 to h.11', 'layers h.0, h.2', 'layer h.0' or
    'no layers'."""
    ordered = sorted(layers)
    if not ordered:
        return "no layers"
    if len(ordered) == 1:
        return f"layer h.{ordered[0]}"
    if ordered[-1] - ordered[0] == len(ordered) - 1:
        return f"layers h.{ordered[0]} to h.{ordered[-1]}"
    return "layers " + ", ".join(f"h.{i}" for i in ordered[:6]) + (", ..." if len(ordered) > 6 else "")


def _read_weights(path: str) -> dict[str, np.ndarray]:
    """All tensors of a transformers directory's weights, in transformers' order of preference:
    ``model.safetensors``, its sharded index ``model.safetensors.index.json``, then PyTorch's
    ``pytorch_model.bin`` and its index ``pytorch_model.bin.index.json`` (read without torch: see
    ``tinygpt.torchfile``)."""
    from tinygpt.torchfile import read_state_dict

    for single, index, kind, read_file in (
        ("model.safetensors", "model.safetensors.index.json", "safetensors", _read_safetensors_file),
        ("pytorch_model.bin", "pytorch_model.bin.index.json", "PyTorch", read_state_dict),
    ):
        if os.path.isfile(os.path.join(path, single)):
            return read_file(os.path.join(path, single))
        if os.path.isfile(os.path.join(path, index)):
            tensors = {}
            for file in _shard_files(os.path.join(path, index), kind):
                tensors.update(read_file(file))
            return tensors
    raise TinyGPTError(f"{path} has no model.safetensors or pytorch_model.bin (nor a sharded index of "
                       "either)")


def _shard_files(index: str, kind: str) -> list[str]:
    """The files a sharded checkpoint's index (``{"weight_map": {tensor name: file name}}``) lists."""
    try:
        with open(index, encoding="utf-8") as f:
            weight_map = loads_json(f.read())["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError("weight_map must map tensor names to file names")
        # a shard is a file beside its index: a path out of the directory ("../x", "/dev/stdin") is not one
        outside = [name for name in weight_map.values()
                   if os.path.basename(name) != name or name in ("", ".", "..")]
        if outside:
            raise TypeError(f"shard {outside[0]!r:.60} is not a file name in the checkpoint's directory")
    except (ValueError, KeyError, TypeError) as exc:  # (ValueError: bad JSON, or bytes not UTF-8)
        raise TinyGPTError(f"{index} is not a valid {kind} index: {exc}") from None
    return [os.path.join(os.path.dirname(index), name) for name in sorted(set(weight_map.values()))]


def _read_safetensors_file(file: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(file)
    except TypeError:  # NumPy has no bfloat16 ("data type 'bfloat16' not understood")
        return _read_safetensors_widening_bfloat16(file)
    except (SafetensorError, OSError) as exc:
        raise TinyGPTError(unreadable_weights(file, exc)) from None


_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
                       "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _read_safetensors_widening_bfloat16(file: str) -> dict[str, np.ndarray]:
    """A safetensors file read by hand, bfloat16 tensors widened to float32 (exactly: bf16 is f32's top half).

    The format is an 8-byte little-endian header length, a JSON header (name -> dtype, shape, byte offsets
    into the data that follows), then the raw tensors. A bfloat16 value is the upper 16 bits of a float32,
    so widening is a 16-bit shift (``torchfile.bfloat16_to_float32``, shared with the .bin reader).
    """
    from tinygpt.torchfile import bfloat16_to_float32

    try:
        with open(file, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            header = loads_json(f.read(header_len))
        data = np.memmap(file, dtype=np.uint8, mode="r", offset=8 + header_len)
        tensors = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            raw = data[start:end]
            if info["dtype"] == "BF16":
                array = bfloat16_to_float32(raw.view(np.uint16))
            elif info["dtype"] in _SAFETENSORS_DTYPES:
                array = raw.view(_SAFETENSORS_DTYPES[info["dtype"]]).copy()
            else:
                raise TinyGPTError(f"cannot read {file}: tensor {name!r} has dtype {info['dtype']}, which "
                                   "tinygpt does not load")
            tensors[name] = array.reshape(info["shape"])
        return tensors
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TinyGPTError(unreadable_weights(file, exc)) from None
