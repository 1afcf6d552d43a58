"""Benchmarks: each measures tinygpt and its peer side by side in one run (``tinygpt bench NAME``).

The helpers below are shared by the benchmarks that race PyTorch / transformers.
"""

from __future__ import annotations

import os

from tinygpt.errors import TinyGPTError


def blas_threads() -> int:
    """NumPy's OpenBLAS thread count: OPENBLAS_NUM_THREADS / OMP_NUM_THREADS, else the usable cores.

    The PyTorch side is given the same count (``torch.set_num_threads``), so both race on equal terms.
    """
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def import_torch_peer(side: str = "PyTorch"):
    """``(torch, transformers)``, quietened; a TinyGPTError naming ``--no-peer`` if either is missing."""
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise TinyGPTError(
            f"the {side} side needs torch and transformers ({exc.name} is missing); use --no-peer"
        ) from None
    transformers.logging.set_verbosity_error()
    return torch, transformers


def decay_matrices_only(params, weight_decay: float) -> list[dict]:
    """torch.optim param groups that decay the 2-D weights only, as tinygpt's AdamW (and nanoGPT) do:
    torch's own default decays biases and LayerNorm weights too."""
    params = list(params)
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def inference_peer_config(transformers, config):
    """The transformers GPT-2 config of an inference peer of a tinygpt ``GPTConfig`` (decoding, scoring):
    its shape, no dropout, no bos/eos ids, and its GELU (transformers' "gelu" is the exact one, nanoGPT's;
    GPT-2's tanh form is "gelu_new")."""
    return transformers.GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_layer=config.n_layer,
        n_head=config.n_head, n_embd=config.n_embd, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=None, eos_token_id=None,
        activation_function="gelu" if config.gelu == "erf" else "gelu_new",
    )  # fmt: skip


def training_peer_config(transformers, vocab_size: int, n_positions: int, n_layer: int, n_head: int,
                         n_embd: int):
    """The transformers GPT-2 config of a training peer, set as our training model is: no dropout, no
    key/value cache built and returned at each step, no bos/eos ids (a character vocabulary has none)."""
    return transformers.GPT2Config(
        vocab_size=vocab_size, n_positions=n_positions, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
        use_cache=False,
    )  # fmt: skip
