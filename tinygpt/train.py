"""Pre-training: maximise the likelihood of the next token, one AdamW step at a time, crash-safely.

The loop, in the order it runs (nanoGPT's ``train.py``, without the distributed parts)::

    for step in range(start, max_iters):
        lr = lr_at(step)                                    warmup + cosine decay
        for micro in range(grad_accum_steps):               gradient accumulation: a bigger effective batch
            x, y = get_batch(train, B, T, rng)              random windows of the training split
            loss = model.forward(x, y); grads += model.backward() / grad_accum_steps
        clip_grad_norm(grads, grad_clip)                    global-norm clipping
        optimizer.step(grads, lr)                           AdamW, in place
        every eval_interval steps (and at the end):         mean train / val loss over eval_iters batches
            (and HellaSwag accuracy, with --hellaswag), one row -> DIR/metrics.jsonl, then a checkpoint
            (tinygpt.checkpoint, atomic); DIR/best names the checkpoint of the lowest val loss (nanoGPT
            keeps only that one with always_save_checkpoint = False, only the latest by default; we keep
            both)

Exact resume: the checkpoint holds the weights, the AdamW moments, the step, the batch sampler's RNG state
and the dropout RNG state. Evaluation draws its batches from its own fixed-seed generator (the same
batches at every evaluation, which also makes the curve less noisy), so it never perturbs the training
stream. Restoring all of that, a run killed at step k and resumed writes exactly the weights and metrics
rows of the uninterrupted run (``tokens_per_sec`` and ``elapsed`` aside, they are wall-clock measurements).
A run that ended at a ``max_iters`` and is resumed with a higher one has the same weights at each step only
if it was given the uninterrupted run's ``lr_decay_iters`` (the default is its own ``max_iters``, or
``warmup_iters`` if larger), plus the row of its own final evaluation if that fell between two evaluations
(and so, maybe, another ``best_val_loss``).

On a GPU (``--backend cuda``) the weights, gradients, AdamW moments and activations stay in GPU memory for
the whole run: per step the batch goes in and the loss (with the gradient norm, for clipping) comes out.
Only a checkpoint copies the weights and moments to the host (``save_pretrained``, ``state_dict``).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from tinygpt.errors import TinyGPTError, is_finite, is_int, is_number, say_on_stderr, shown
from tinygpt.files import loads_json, write_atomic
from tinygpt.optim import check_decay_fits_rate

TOKENIZER_KINDS = ("char", "bpe", "gpt2")


@dataclass
class TrainConfig:
    """Every setting of a training run; names follow nanoGPT's. Presets: ``tinygpt/configs/*.toml``."""

    # data and run
    data: str | None = None  # a UTF-8 text file, or a directory of token files (nanoGPT's train.bin and
    # val.bin: data.open_token_dir); None = the default Shakespeare corpus
    tokenizer: str | None = None  # char | bpe (trained on the data) | gpt2; None: char for a text file, the
    # folder's own for a token directory. A token directory's ids are made: there it must be None or the
    # folder's, "char" with its meta.pkl, "gpt2" without (GPT-2's ids); another, "bpe" always, is refused
    # before any training (check_token_dir_tokenizer). An initial model's (init_from, pretrained) replaces it
    vocab_size: int | None = None  # BPE only: 256 bytes + merges + <|endoftext|> (its last id)
    out: str = "out"
    init_from: str | None = None  # LM fine-tuning: start from this tinygpt run's weights and tokenizer
    pretrained: str | None = None  # ... or from a transformers GPT-2 directory
    seed: int = 1337
    backend: str = "auto"  # numpy | numba | cuda | auto (cuda with a GPU, else numba)
    # model
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    dropout: float = 0.0
    bias: bool = False
    # optimisation
    batch_size: int = 12
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int | None = None  # None = max(max_iters, warmup_iters), resolved at a run's start
    max_iters: int = 2000
    beta1: float = 0.9
    beta2: float = 0.99
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # 0 disables
    grad_accum_steps: int = 1
    recompute: bool = False  # activation recomputation: less memory for one more forward (GPT.recompute)
    # evaluation
    eval_interval: int = 250
    eval_iters: int = 20
    hellaswag: str | None = None  # a HellaSwag .jsonl file: its accuracy is scored at each evaluation too
    hellaswag_limit: int | None = None  # ... on its first N examples only (scored at each evaluation)

    def validate(self) -> TrainConfig:
        """Raise TinyGPTError naming the first bad setting (NumPy integers become ints); return self."""
        positive = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "max_iters",
                    "grad_accum_steps", "eval_interval", "eval_iters")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise TinyGPTError(f"{_flag(name)} must be a positive integer, got {shown(value)}")
        if self.hellaswag_limit is not None:
            if self.hellaswag is None:  # a limit of nothing: the user meant to score a file and named none
                raise TinyGPTError("--hellaswag-limit is for --hellaswag (its first N examples)")
            value = self.hellaswag_limit
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise TinyGPTError(f"--hellaswag-limit must be a positive integer, got {shown(value)}")
            self.hellaswag_limit = int(value)  # (saved as JSON, which takes no int64)
        for name in ("warmup_iters",) + (("lr_decay_iters",) if self.lr_decay_iters is not None else ()):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                raise TinyGPTError(f"{_flag(name)} must be a non-negative integer, got {shown(value)}")
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool) or self.seed < 0:
            raise TinyGPTError(f"--seed must be a non-negative integer, got {shown(self.seed)}")
        for name in positive + ("warmup_iters", "lr_decay_iters", "seed"):  # NumPy integers as Python ints:
            if isinstance(getattr(self, name), np.integer):  # they are saved as JSON, which takes no int64
                setattr(self, name, int(getattr(self, name)))
        for name in PATH_SETTINGS:
            value = getattr(self, name)
            if not isinstance(value, str) and (value is not None or name == "out"):
                raise TinyGPTError(f"{_flag(name)} must be a path, got {shown(value)}")
            if name != "out" and value is not None and not value.strip():  # "" read as not given:
                # `--data "$UNSET"` trained on the default corpus, `--init-from ""` from scratch
                raise TinyGPTError(f"{_flag(name)} must name a path, got an empty string")
        if not self.out.strip():  # "" trained into the working directory, but resumed ./out
            raise TinyGPTError("--out must name a directory, got an empty string")
        if self.n_embd % self.n_head:
            raise TinyGPTError(f"--n-embd ({self.n_embd}) must be divisible by --n-head ({self.n_head})")
        for name in ("learning_rate", "min_lr", "weight_decay", "grad_clip", "dropout", "beta1", "beta2"):
            value = getattr(self, name)
            if not is_number(value) or not is_finite(value):  # (10**400: math.isfinite's OverflowError)
                raise TinyGPTError(f"{_flag(name)} must be a finite number, got {shown(value)}")
            if not isinstance(value, (int, float)):  # as the integers above: a np.float32 (refused as not
                setattr(self, name, float(value))  # a number before) would not go into the saved JSON
        if not self.learning_rate > 0:
            raise TinyGPTError(f"--learning-rate must be positive, got {self.learning_rate}")
        for name in ("min_lr", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise TinyGPTError(f"{_flag(name)} must be >= 0, got {getattr(self, name)}")
        if self.min_lr > self.learning_rate:  # the "decay" would raise the rate
            raise TinyGPTError(f"--min-lr ({self.min_lr:g}) must not exceed --learning-rate "
                               f"({self.learning_rate:g}); with a low --learning-rate give --min-lr too")
        check_decay_fits_rate(self.learning_rate, self.weight_decay)
        for name in ("dropout", "beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise TinyGPTError(f"{_flag(name)} must be in [0, 1), got {getattr(self, name)}")
        if self.lr_decay_iters is not None and self.lr_decay_iters < self.warmup_iters:
            raise TinyGPTError(f"--lr-decay-iters ({self.lr_decay_iters}) must be >= --warmup-iters "
                               f"({self.warmup_iters})")
        if self.init_from and self.pretrained:
            raise TinyGPTError("give --init-from or --pretrained, not both")
        if self.tokenizer is not None and self.tokenizer not in TOKENIZER_KINDS:
            raise TinyGPTError(f"unknown tokenizer {self.tokenizer!r}: choose char, bpe or gpt2")
        if self.tokenizer == "bpe" and self.vocab_size is None:
            raise TinyGPTError("--tokenizer bpe needs --vocab-size N (more than 256)")
        if self.vocab_size is not None and self.tokenizer != "bpe":
            kind = self.tokenizer or "default"
            raise TinyGPTError(f"--vocab-size applies to --tokenizer bpe only (the {kind} tokenizer's "
                               "vocabulary is fixed by its text or files)")
        if self.vocab_size is not None:  # (a NumPy integer too, as the counts above: np.int64(300) was
            # refused as "must be an integer above 256, got 300")
            if not is_int(self.vocab_size) or self.vocab_size <= 256:
                raise TinyGPTError(f"--vocab-size must be an integer above 256, got {shown(self.vocab_size)}")
            self.vocab_size = int(self.vocab_size)  # (saved as JSON, which takes no int64)
        for name in ("bias", "recompute"):
            value = getattr(self, name)
            if isinstance(value, np.bool_):  # (a NumPy comparison's, `n > 2`: refused as "must be true or
                setattr(self, name, bool(value))  # false, got True"; saved as JSON, which takes no np.bool_)
            elif not isinstance(value, bool):
                raise TinyGPTError(f"{_flag(name)} must be true or false, got {shown(value)}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
PATH_SETTINGS = ("data", "out", "init_from", "pretrained", "hellaswag")  # (a config file's get ~ expanded)
# Settings a resumed run must keep: the model's shape and tokenizer, and the seed (the fixed evaluation
# batches are drawn from it: another seed would evaluate on other text mid-run)
FROZEN_ON_RESUME = ("n_layer", "n_head", "n_embd", "block_size", "bias", "dropout", "tokenizer", "vocab_size",
                    "seed")


def retain_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse rather than return it to the OS; True if it took.

    Every training step allocates and frees the same activations, caches and gradients, most of them large.
    glibc serves a large block with ``mmap`` and unmaps it when freed (and trims the heap's free top), so
    the next step gets fresh pages that the kernel must fault in and zero again: at 6L/384d, B 8, that was
    about 34,000 page faults and 110 ms of system CPU a step, and ~1,110 against ~980 ms a step; 300 steps
    of the default config took 15.1 against 13.9 s (2026-12-01, the 2-core development machine). Raising
    the mmap threshold to glibc's maximum (32 MiB) and turning trimming off keeps those blocks in the heap,
    where the next step reuses them. The process's peak memory is the same; it just stays at its peak
    between steps, as under a caching allocator.

    A process-wide setting, so the library never makes it on its own: the command line does, for
    ``tinygpt train`` and ``tinygpt finetune``, and the benches that time them: ``bench train`` and ``bench
    recipe`` for both of their sides (in ``bench train``, interleaved with PyTorch's steps, it measured
    neutral to the ratio), ``bench profile`` for its step. Call it
    yourself before a long training loop in a notebook. Elsewhere than glibc (macOS, musl) it does nothing
    and returns False.
    """
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's <malloc.h>
    return bool(mallopt(m_mmap_threshold, 32 * 1024 * 1024)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def _warn_if_resume_is_not_exact(saved: dict, now: dict) -> None:
    """One line on stderr (even with --quiet) for each change that makes a resumed run differ from the
    uninterrupted one; they are allowed, but the curve in metrics.jsonl is then not one run's."""
    notes = []
    kinds = [_data_kind(record) for record in (saved, now)]
    digests = [(record.get("data_sha256"), record.get("data_fingerprint")) for record in (saved, now)]
    # (a record without either digest, an older run's, tells nothing)
    if kinds[0] is not None and digests[0] != digests[1]:
        saved_data = saved.get("data", now["data"])
        if kinds[0] != kinds[1] or saved_data != now["data"]:  # other data, not the same data edited
            other = "text" if kinds == ["text file", "text file"] else "tokens"
            notes.append(f"the data changed from {kinds[0]} {saved_data} to {kinds[1]} {now['data']}: "
                         f"training and validation batches now come from other {other}")
        elif kinds[0] == "text file":
            notes.append(f"the text of {now['data']} changed since the run started: training and validation "
                         "batches now come from other text")
        else:
            notes.append(f"the token files of {now['data']} changed since the run started: training and "
                         "validation batches now come from other tokens")
    for name, effect in (("batch_size", "the fixed evaluation batches change"),
                         ("eval_iters", "the fixed evaluation batches change")):
        if name in saved and saved[name] != now[name]:
            notes.append(f"{_flag(name)} changed from {saved[name]!r} to {now[name]!r}: {effect}")
    if "backend" in saved:
        notes += filter(None, [backend_change(saved, now)])
    if saved.get("hellaswag") is not None and now["hellaswag"] is None:  # (--no-hellaswag)
        notes.append("HellaSwag is no longer scored: the rows from here have no hellaswag_acc")
    for name in ("hellaswag", "hellaswag_limit"):  # (added to a run that had none: only new columns)
        if None not in (saved.get("hellaswag"), now["hellaswag"]) and saved.get(name) != now[name]:
            notes.append(f"{_flag(name)} changed from {saved.get(name)!r} to {now[name]!r}: HellaSwag "
                         "accuracy is scored on other examples")
    for note in notes:
        say_on_stderr(f"tinygpt: warning: {note}; the resumed run is not the uninterrupted one")


def backend_change(saved: dict, now: dict) -> str | None:
    """The warning's words when a resumed run computes on another backend than the run did (``saved`` and
    ``now`` are train's or finetune's run records), else None. The backends that ran are compared, not the
    names given: "auto" is cuda on a machine with a GPU and numba on one without, so a run started with it
    on a CPU and resumed with --backend numba is the same run (it was told it was not), and one started on
    a GPU and resumed on a CPU is not (it was told nothing). A record without ``backend_used`` (an older
    run's) reads its name as this machine would."""
    from tinygpt.kernels import resolve_backend

    def used(record):
        if record.get("backend_used") is not None:
            return record["backend_used"]
        try:
            return resolve_backend(record.get("backend"))
        except TinyGPTError:  # (a name this tinygpt does not know: compared as it is)
            return record.get("backend")

    ran = [used(record) for record in (saved, now)]
    if ran[0] == ran[1]:
        return None
    names = [f"{record.get('backend')!r}" + (f" ({backend})" if record.get("backend") != backend else "")
             for record, backend in zip((saved, now), ran)]
    return f"--backend changed from {names[0]} to {names[1]}: backends agree only to rounding"


def _check_schedule_on_resume(values: dict, overrides: dict, out: Path) -> None:
    """Refuse, naming both values and where each came from, a --warmup-iters or --lr-decay-iters given to
    --resume that the other, the run's saved one, cannot follow. validate() said "--lr-decay-iters (4) must be
    >= --warmup-iters (8)" of a value the user never gave: a run's lr_decay_iters is resolved at its start
    (to its --max-iters) and saved, so resumed with --warmup-iters 8 it is still 4."""
    warmup, decay = values.get("warmup_iters"), values.get("lr_decay_iters")
    if not (is_int(warmup) and is_int(decay)) or decay >= warmup:
        return  # (or not numbers: validate() says so)
    if "warmup_iters" in overrides and "lr_decay_iters" not in overrides:
        raise TinyGPTError(f"--warmup-iters {warmup} is past the run's lr_decay_iters, {decay} (saved in "
                           f"{out}: the step its learning rate reaches --min-lr); give --lr-decay-iters N of "
                           f"at least {warmup} with it, or a --warmup-iters of at most {decay}")
    if "lr_decay_iters" in overrides and "warmup_iters" not in overrides:
        raise TinyGPTError(f"--lr-decay-iters {decay} is below the run's --warmup-iters, {warmup} (saved in "
                           f"{out}); give at least {warmup}, or a --warmup-iters of at most {decay} with it")


def _data_kind(record: dict) -> str | None:
    """What a run's record says its data is, by the digest it holds: a text file's sha256 or a token
    folder's fingerprint (``data.token_files_fingerprint``); None for neither."""
    if "data_fingerprint" in record:
        return "token folder"
    return "text file" if "data_sha256" in record else None


def check_token_dir_tokenizer(folder: str | os.PathLike, tokenizer: str | None,
                              vocab_size: int | None) -> None:
    """TinyGPTError unless ``tokenizer`` (a TrainConfig's, or ``--tokenizer``) is None or the one whose ids
    the token directory ``folder`` holds (``data.token_dir_tokenizer``: "char" with nanoGPT's meta.pkl, else
    "gpt2"), and ``vocab_size`` is None: its ids are already made, so no other tokenizer reads them as they
    are meant, and no BPE trained on the data made them. A new run's check, before any training."""
    from tinygpt.data import token_dir_tokenizer

    kind = token_dir_tokenizer(folder)
    holds = "characters (meta.pkl)" if kind == "char" else "GPT-2's ids (no meta.pkl)"
    if tokenizer not in (None, kind):
        raise TinyGPTError(f"--tokenizer {tokenizer}: {folder} is already tokenized, it holds {holds}, so "
                           f"its tokenizer is {kind}")
    if vocab_size is not None:
        raise TinyGPTError(f"--vocab-size: {folder} is already tokenized, it holds {holds}; its vocabulary "
                           "comes with it")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# --- configs -----------------------------------------------------------------------------------------


def shipped_configs() -> list[str]:
    """Names of the presets in ``tinygpt/configs`` (``default``, ``shakespeare_char``, ...)."""
    folder = resources.files("tinygpt") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def read_config_file(spec: str) -> dict:
    """The settings in a TOML config: ``spec`` is a shipped name (``shakespeare_char``) or a file path."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise TinyGPTError("reading TOML configs needs Python 3.11+ or `pip install tomli`") from None
    shipped = resources.files("tinygpt") / "configs" / f"{spec}.toml"
    if os.sep not in spec and not spec.endswith(".toml") and shipped.is_file():
        text, where = shipped.read_text(), f"config {spec!r}"
    else:
        from tinygpt.data import refuse_device

        path = Path(spec)
        # (a pipe is read as a file: `--config <(printf 'max_iters = 10')` was "neither a file nor a shipped
        # config"; it is read once, here)
        if not path.exists() or path.is_dir():
            raise TinyGPTError(f"config {spec!r} is neither a file nor a shipped config "
                               f"({', '.join(shipped_configs())})")
        refuse_device(path, "config")  # (/dev/zero is read forever)
        try:
            # (-sig: a leading BOM, which Notepad writes, is dropped: TOML's reader refuses it as a statement)
            text, where = path.read_text(encoding="utf-8-sig"), str(path)
        except UnicodeDecodeError as exc:
            raise TinyGPTError(f"{path} is not a UTF-8 text file, so not a TOML config ({exc.reason})") \
                from None
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TinyGPTError(f"{where} is not valid TOML: {exc}") from None
    except ValueError:  # (int()'s own, which the parser lets through: Python reads no more decimal digits)
        raise TinyGPTError(f"{where} is not valid TOML: it holds an integer of more than 4,300 digits") \
            from None
    except RecursionError:  # arrays nested deeper than the parser's stack (tinygpt.files.loads_json's case)
        raise TinyGPTError(f"{where} is not valid TOML: nested too deeply") from None
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise TinyGPTError(f"{where}: unknown setting {unknown[0]!r}")
    for name in PATH_SETTINGS:  # the shell expands a flag's ~/runs; nothing did a file's, which trained into
        if isinstance(values.get(name), str):  # ./~/runs or found no ~/corpus.txt
            values[name] = os.path.expanduser(values[name])
    return values


def make_config(values: dict) -> TrainConfig:
    """A validated TrainConfig from a dict of settings (ints where ints are expected, floats accept ints)."""
    cfg = TrainConfig()
    for name, value in values.items():
        if name not in FIELDS:
            raise TinyGPTError(f"unknown setting {name!r}")
        default = getattr(cfg, name)
        if isinstance(default, float) and is_int(value) and is_finite(value):  # (past float's range:
            value = float(value)  # float()'s OverflowError; validate refuses it)
        setattr(cfg, name, value)
    return cfg.validate()


# --- data and evaluation -----------------------------------------------------------------------------


def _read_from_a_pipe(saved: str | None) -> bool:
    """Whether a run's saved path is that of a pipe it read once (``--data <(zcat corpus.gz)``): Path.resolve
    makes the shell's /dev/fd/63 /proc/PID/fd/pipe:[N] on Linux (it stays /dev/fd/63 elsewhere), which no
    later process can read: a --resume said 'data file not found: /proc/4242/fd/pipe:[9]'. A named pipe
    (mkfifo) keeps its name, and can be fed again."""
    return isinstance(saved, str) and re.match(r"/proc/[^/]+/fd/|/dev/fd/", saved) is not None


def _refuse_a_pipe_to_resume(values: dict, overrides: dict, out: Path) -> None:
    """Refuse, in one line that says what to give instead, a --resume of a run whose --data or --hellaswag
    was a pipe (``_read_from_a_pipe``) and is not given again."""
    for name, flag, what, other in (("data", "--data", "text", ""),
                                    ("hellaswag", "--hellaswag", "examples", ", or --no-hellaswag")):
        if name not in overrides and _read_from_a_pipe(values.get(name)):
            raise TinyGPTError(f"cannot resume {out}: its {flag} was read from a pipe ({values[name]}), "
                               f"which cannot be read again; give {flag} FILE holding the same {what} (or a "
                               f"pipe of it again){other}")


def _data_path(cfg_data: str | None, say=None) -> Path:
    from tinygpt.data import default_corpus_path

    return Path(cfg_data) if cfg_data else default_corpus_path(say=say)


class FixedEvalBatches:
    """The ``n_batches`` evaluation batches of one split, the same ones at every evaluation: each pass draws
    them again from the same fixed seed, so they take no memory however many there are (held as a list,
    ``--eval-iters 10000000`` grew until the OOM killer came). Iterate it; ``len`` is ``n_batches``."""

    def __init__(self, tokens: np.ndarray, n_batches: int, batch_size: int, block_size: int, seed: int):
        self.tokens, self.n_batches = tokens, n_batches
        self.batch_size, self.block_size, self.seed = batch_size, block_size, seed

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self):
        from tinygpt.data import get_batch

        rng = np.random.default_rng([self.seed, 3])
        for _ in range(self.n_batches):
            yield get_batch(self.tokens, self.batch_size, self.block_size, rng)


def fixed_eval_batches(tokens: np.ndarray, n_batches: int, batch_size: int, block_size: int,
                       seed: int) -> FixedEvalBatches:
    """The ``n_batches`` evaluation batches of one split: drawn from a fixed seed, the same every eval."""
    return FixedEvalBatches(tokens, n_batches, batch_size, block_size, seed)


def mean_loss(model, batches) -> float:
    """Mean cross-entropy over batches, in eval mode (no dropout), restoring the previous mode after."""
    was_training = model.training
    model.eval()
    try:
        losses = [model.forward(x, y, keep_caches=False)[1] for x, y in batches]
    finally:
        if was_training:
            model.train()
    return float(np.mean(losses))


# --- the training loop -------------------------------------------------------------------------------


def append_jsonl(path: Path, row: dict) -> None:
    """Append ``row`` as one line of a metrics.jsonl, fsynced: a run writes a row before the checkpoint of
    its step, so the row is on disk first (``tinygpt finetune`` appends its rows with this too)."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Rows of a metrics.jsonl file (a torn last line, from a crash mid-write, is ignored, as is any line
    that is not a row: not JSON, not UTF-8, not an object with a step count)."""
    rows = []
    try:
        lines = Path(path).read_bytes().splitlines()  # bytes: a line that is not UTF-8 is one bad line
    except FileNotFoundError:
        return rows
    for line in lines:
        try:
            row = loads_json(line)
        except ValueError:  # (UnicodeDecodeError included)
            continue
        step = row.get("step") if isinstance(row, dict) else None
        if isinstance(step, int) and not isinstance(step, bool) and 0 <= step < 2**63:  # (not hand-edited)
            rows.append(row)
    return rows


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep the rows up to the checkpoint we resume from; rows written after it will be written again
    (train's and finetune's ``--resume``)."""
    rows = [r for r in read_metrics(path) if r.get("step", math.inf) <= last_step]
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows).encode())  # fsynced: never left empty


def _dropout_rng(model):
    """The model's dropout Generator (``GPT.dropout_rng``); saved and restored for exact resume."""
    rng = getattr(model, "dropout_rng", None)
    return rng if isinstance(rng, np.random.Generator) else None


def load_initial_model(cfg: TrainConfig):
    """``(model, tokenizer)`` to fine-tune from (``cfg.init_from`` or ``cfg.pretrained``); sets cfg's shape.

    The model keeps its own ``block_size`` (its position table); ``cfg.block_size``, the length of the
    training windows, may be shorter (GPT-2's 1024 is slow on a CPU) but not longer. ``cfg.dropout`` applies.
    """
    from tinygpt.tokenizer import CharTokenizer

    if cfg.init_from:
        from tinygpt.checkpoint import load_checkpoint

        ckpt = load_checkpoint(cfg.init_from, backend=cfg.backend, with_optimizer=False)
        model, tokenizer = ckpt.model, ckpt.tokenizer
        kind = ckpt.train_config.get("tokenizer") if isinstance(ckpt.train_config, dict) else None
    else:
        from tinygpt.finetune import load_gpt2_dir

        model, tokenizer, _ = load_gpt2_dir(cfg.pretrained, backend=cfg.backend)  # (a tinygpt run: refused)
        kind = None
    if kind not in TOKENIZER_KINDS:
        kind = "char" if isinstance(tokenizer, CharTokenizer) else "gpt2" if tokenizer.vocab_size == 50257 \
            else "bpe"
    if cfg.block_size > model.config.block_size:
        raise TinyGPTError(f"--block-size {cfg.block_size} (the preset's unless you gave it) exceeds the "
                           f"initial model's block_size {model.config.block_size}: pass --block-size "
                           f"{model.config.block_size} or less")
    model.config.dropout = cfg.dropout
    # a loaded model was built with seed 0: its dropout masks must follow --seed as a new model's do
    model.dropout_rng = np.random.default_rng([cfg.seed, 1])
    mc = model.config
    cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.bias = mc.n_layer, mc.n_head, mc.n_embd, mc.bias
    cfg.tokenizer, cfg.vocab_size = kind, (tokenizer.vocab_size if kind == "bpe" else None)
    return model, tokenizer


def train(cfg: TrainConfig, resume: bool = False, quiet: bool = False, overrides: dict | None = None) -> dict:
    """Run (or with ``resume`` continue) training into ``cfg.out``; return a summary dict: out, step,
    val_loss (the last evaluation's), best_val_loss and best_step (the checkpoint ``cfg.out/best`` names;
    None for a run resumed from a checkpoint older than that link that has not improved since), elapsed
    (seconds of training over every run of the directory, as saved with the last checkpoint), plot.

    With ``resume``, the run's saved config is used and ``overrides`` (explicitly given settings) replace
    parts of it; ``cfg`` is then ignored except for ``cfg.out``. One run at a time writes a directory: a
    second one started into it (before or after the first has saved anything) fails at once.

    ``cfg`` itself is left as given: what a run resolves (``lr_decay_iters``, the tokenizer, an initial
    model's shape) is set on a copy, which the saved config records.
    """
    from tinygpt.checkpoint import exclusive_run_dir

    # (resolved into the caller's object, a TrainConfig reused for a second, longer run kept the first's
    # lr_decay_iters: 6 steps decayed over the first run's 2, then 4 at min_lr, with no word of it)
    cfg = dataclasses.replace(cfg)

    with exclusive_run_dir(Path(cfg.out), create=not resume):
        return _train(cfg, resume, quiet, overrides)


def _train(cfg: TrainConfig, resume: bool, quiet: bool, overrides: dict | None) -> dict:
    if quiet:  # no bar: tqdm.auto, imported in a Jupyter kernel without ipywidgets, warns that it has none
        from tqdm.std import tqdm
    else:
        from tqdm.auto import tqdm

    from tinygpt.checkpoint import (
        check_metrics_are_ours,
        check_new_run_dir,
        check_out_holds_no_run,
        check_run_to_resume,
        load_checkpoint,
        repair_best_link,
        save_checkpoint,
    )
    from tinygpt.data import (
        check_split_lengths,
        get_batch,
        open_token_dir,
        prepare_dataset,
        rng_from_state,
        rng_state,
    )
    from tinygpt.kernels import fused_adamw, host_sum_squares
    from tinygpt.model import GPT, GPTConfig
    from tinygpt.optim import AdamW, clip_grad_norm, lr_at, scale_grads

    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise TinyGPTError(f"--out {out} exists and is not a directory")
    metrics_path = out / "metrics.jsonl"
    ckpt = None
    if resume:
        check_run_to_resume(out, "training run", overrides or {})
        from tinygpt.finetune import is_classifier_dir

        if is_classifier_dir(out):  # its saved settings are a classifier's, not a language model's
            raise TinyGPTError(f"{out} holds a classifier from `tinygpt finetune`, not a `tinygpt train` "
                               "run, so --resume cannot continue it")
        ckpt = load_checkpoint(out, backend=(overrides or {}).get("backend"))  # None: the run's own
        saved = dict(ckpt.train_config)
        for name in FROZEN_ON_RESUME:
            if overrides and name in overrides and overrides[name] != saved.get(name):
                raise TinyGPTError(f"cannot change {_flag(name)} when resuming "
                                   f"({saved.get(name)!r} in {out})")
        values = {**{k: v for k, v in saved.items() if k in FIELDS}, **(overrides or {}), "out": str(out)}
        _check_schedule_on_resume(values, overrides or {}, out)
        _refuse_a_pipe_to_resume(values, overrides or {}, out)
        cfg = make_config(values)
    elif out.is_dir():
        check_out_holds_no_run(out, classifier=False)
        check_new_run_dir(out)  # before any training: a run must not replace files it did not write
        check_metrics_are_ours(out, {"step", "train_loss"})
    cfg.validate()
    if ckpt is None and not (cfg.init_from or cfg.pretrained) and cfg.data and Path(cfg.data).is_dir():
        check_token_dir_tokenizer(cfg.data, cfg.tokenizer, cfg.vocab_size)
    if cfg.lr_decay_iters is None:  # resolved once, saved, so a resumed run keeps the same schedule;
        # never below warmup_iters (a run shorter than its warmup), which the saved config must satisfy
        cfg.lr_decay_iters = max(cfg.max_iters, cfg.warmup_iters)

    def say(message):
        # (not on a closed stderr, `2>&-`: tqdm.write(file=None) writes to stdout, where the run's summary
        # line goes, as say_on_stderr drops its lines)
        if not quiet and sys.stderr is not None:
            tqdm.write(message, file=sys.stderr)

    # LM fine-tuning starts from a trained model: its shape and tokenizer replace the config's
    init_model, init_tokenizer = (None, None)
    if ckpt is None and (cfg.init_from or cfg.pretrained):
        init_model, init_tokenizer = load_initial_model(cfg)
        say(f"fine-tuning from {cfg.init_from or cfg.pretrained}")

    # data
    data_path = _data_path(cfg.data, say)
    if data_path.is_dir():  # token files prepared elsewhere: already tokenized, by the tokenizer they name
        data = open_token_dir(data_path, tokenizer=ckpt.tokenizer if ckpt else init_tokenizer,
                              tokenizer_of=str(out) if ckpt else cfg.init_from or cfg.pretrained, say=say)
        if ckpt is None and init_tokenizer is None:
            cfg.tokenizer, cfg.vocab_size = data.meta["tokenizer"], None
    else:
        if cfg.tokenizer is None:  # (a new run's: a run's saved config and an initial model's name one)
            cfg.tokenizer = "char"
        data = prepare_dataset(data_path, cfg.tokenizer, cfg.vocab_size,
                               tokenizer=ckpt.tokenizer if ckpt else init_tokenizer,
                               tokenizer_of=str(out) if ckpt else cfg.init_from or cfg.pretrained, say=say)
    check_split_lengths(data, cfg.block_size)
    tokenizer = data.tokenizer

    # model, optimizer, RNGs
    if ckpt is not None:
        model = ckpt.model
    elif init_model is not None:
        model = init_model
    else:
        gpt_config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=cfg.block_size,
                               n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                               dropout=cfg.dropout, bias=cfg.bias)
        model = GPT(gpt_config, seed=cfg.seed, backend=cfg.backend)
    # HellaSwag's examples read and rendered once, here: a file this run cannot score (a bad line, a character
    # the tokenizer lacks, an ending longer than the context) is refused before the first step and before
    # anything is written to out, not at the first evaluation
    hellaswag_set = None
    if cfg.hellaswag:
        from tinygpt.hellaswag import iter_examples, render_all

        examples = list(iter_examples(cfg.hellaswag, cfg.hellaswag_limit))
        hellaswag_set = examples, render_all(examples, tokenizer, model.config.block_size)
    model.train()
    model.recompute = cfg.recompute  # (a memory-for-compute trade only: the same gradients either way)
    # With the numba backend, AdamW runs as one fused pass per tensor (same math, same state).
    kernel = fused_adamw(model.ops)
    optimizer = AdamW(model.params, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                      weight_decay=cfg.weight_decay, kernel=kernel)
    sum_squares = host_sum_squares(model.ops)  # the gradient norm's, of host arrays (device ones: the GPU's)
    sampler_rng = np.random.default_rng([cfg.seed, 2])  # (GPT uses seed for init, [seed, 1] for dropout)
    state = {"step": 0, "best_val_loss": None, "best_step": None, "elapsed": 0.0, "tokens_seen": 0}
    if ckpt is not None:
        optimizer.load_state_dict(ckpt.optimizer_state)
        optimizer.betas, optimizer.weight_decay = (cfg.beta1, cfg.beta2), cfg.weight_decay  # flags may change
        state.update({k: ckpt.state[k] for k in state if k in ckpt.state})
        if "sampler_rng" not in ckpt.state:
            raise TinyGPTError(f"corrupt checkpoint: {ckpt.path / 'state.json'} lacks the sampler's RNG "
                               "state, which resuming needs")
        sampler_rng = rng_from_state(ckpt.state["sampler_rng"])
        repair_best_link(out, ckpt.state)
        if ckpt.state.get("dropout_rng") and _dropout_rng(model) is not None:
            model.dropout_rng = rng_from_state(ckpt.state["dropout_rng"])
        truncate_metrics(metrics_path, state["step"])
    else:
        out.mkdir(parents=True, exist_ok=True)
        if metrics_path.exists():
            metrics_path.unlink()  # metrics of an earlier run that never saved a checkpoint

    eval_sets = {
        "train": fixed_eval_batches(data.train, cfg.eval_iters, cfg.batch_size, cfg.block_size, cfg.seed),
        "val": fixed_eval_batches(data.val, cfg.eval_iters, cfg.batch_size, cfg.block_size, cfg.seed),
    }
    tokens_per_step = cfg.batch_size * cfg.block_size * cfg.grad_accum_steps
    # the data path (and HellaSwag's) absolute (resumable from any directory) and its text's sha256, or its
    # token files' fingerprint (a resume can tell if the corpus changed), and the backend that ran ("auto"
    # names none: backend_change)
    config_record = {**cfg.to_dict(), "data": str(data_path.resolve()), "backend_used": model.ops.name}
    if cfg.hellaswag:
        config_record["hellaswag"] = str(Path(cfg.hellaswag).resolve())
    if data.token_files is None:
        config_record["data_sha256"] = data.meta["text_sha256"]
    else:
        config_record["data_fingerprint"] = data.meta["fingerprint"]
    if ckpt is not None:
        _warn_if_resume_is_not_exact(ckpt.train_config, config_record)
    run_start = time.perf_counter()
    elapsed_before = float(state["elapsed"])
    train_time = 0.0  # seconds spent in training steps since the last evaluation
    steps_timed = 0

    def diverged(what, value, step):
        if last_saved is None:  # a new run's first evaluation: no update ran, no learning rate is to blame
            return TinyGPTError(f"{what} is {value} at step 0, before any update: the starting weights give "
                                f"no finite loss; nothing was saved in {out}")
        if step == last_saved:  # a training batch's, on the weights the evaluation just found finite: no
            # learning rate moves them, and a --resume draws the same batch again (the sampler's state is
            # saved with them), so lowering it there cannot help; only a run started again can
            if step == 0:  # (the starting weights: no learning rate has touched them at all)
                return TinyGPTError(f"{what} is {value} at step 0, on a training batch, before any update: "
                                    "the starting weights give it, whatever the --learning-rate (the "
                                    f"evaluation there was finite, and its checkpoint is kept in {out})")
            return TinyGPTError(f"training diverged: {what} is {value} at step {step}, on a training "
                                "batch (the evaluation there was finite, and its checkpoint is kept in "
                                f"{out}); a --resume draws this batch on those weights again, whatever its "
                                "--learning-rate: start the run again with a lower --learning-rate")
        return TinyGPTError(f"training diverged: {what} is {value} at step {step}; the last good checkpoint "
                            f"(step {last_saved}) is kept in {out}; try a lower --learning-rate")

    def evaluate_and_checkpoint(step, lr):
        nonlocal train_time, steps_timed
        train_loss = mean_loss(model, eval_sets["train"])
        val_loss = mean_loss(model, eval_sets["val"])
        for name, value in (("the train loss", train_loss), ("the val loss", val_loss)):
            if not math.isfinite(value):  # the last update broke the weights: save nothing of them
                raise diverged(name, value, step)
        best = state["best_val_loss"] is None or val_loss < state["best_val_loss"]  # (as nanoGPT decides)
        if best:
            state["best_val_loss"], state["best_step"] = val_loss, step
        state["step"] = step
        state["elapsed"] = elapsed_before + time.perf_counter() - run_start
        tok_s = tokens_per_step * steps_timed / train_time if train_time > 0 else None
        row = {"step": step, "train_loss": train_loss, "val_loss": val_loss,
               "lr": lr, "tokens_per_sec": round(tok_s, 1) if tok_s else None,
               "elapsed": round(state["elapsed"], 3), "tokens": state["tokens_seen"]}
        hellaswag_text = ""
        if hellaswag_set is not None:
            from tinygpt.hellaswag import score_rendered

            # (in eval mode, restored after; no dropout, so neither RNG stream moves: the losses and
            # weights are the run's without --hellaswag)
            scores = score_rendered(model, *hellaswag_set)
            row["hellaswag_acc"], row["hellaswag_acc_norm"] = scores["acc"], scores["acc_norm"]
            hellaswag_text = f", hellaswag acc_norm {scores['acc_norm']:.4f}"
        append_jsonl(metrics_path, row)  # before the checkpoint: resume truncates rows past its step
        dropout_rng = _dropout_rng(model)
        save_checkpoint(out, model, tokenizer, optimizer, config_record, {
            **state, "sampler_rng": rng_state(sampler_rng),
            "dropout_rng": rng_state(dropout_rng) if dropout_rng is not None else None,
        }, best=best)
        tok_text = f", {tok_s:,.0f} tok/s" if tok_s else ""
        say(f"step {step}: train loss {train_loss:.4f}, val loss {val_loss:.4f}{hellaswag_text}, lr {lr:.2e}"
            f"{tok_text}")
        train_time, steps_timed = 0.0, 0
        return val_loss

    def lr_for(step):
        return lr_at(step, cfg.learning_rate, cfg.warmup_iters, cfg.lr_decay_iters, cfg.min_lr)

    step = int(state["step"])
    last_saved = step if ckpt is not None else None  # the step of the checkpoint in `out`, None: none yet
    if ckpt is None:
        say(f"training {model.num_params():,} parameters on {data.meta['train_tokens']:,} tokens of "
            f"{data_path.name} ({cfg.tokenizer} tokenizer, vocab {tokenizer.vocab_size}); writing {out}")
        evaluate_and_checkpoint(0, lr_for(0))
        last_saved = 0
    elif step >= cfg.max_iters:
        say(f"{out} is already at step {step} >= --max-iters {cfg.max_iters}; nothing to do")
    else:
        say(f"resuming {out} at step {step} of {cfg.max_iters}")

    # (no bar on a closed stderr, `2>&-`: tqdm wrote to None, AttributeError, before the first step; none
    # for a run with no step to take: begun past its total, tqdm drew a bare count, '6step [00:00, ?step/s]')
    no_bar = quiet or sys.stderr is None or step >= cfg.max_iters
    bar = tqdm(total=cfg.max_iters, initial=step, disable=no_bar, unit="step",
               dynamic_ncols=True, file=sys.stderr, smoothing=0.1)
    # a diverging run overflows to inf / nan, which the checks above turn into one clear error: NumPy's
    # RuntimeWarnings on the way there would only bury it
    with bar, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        while step < cfg.max_iters:
            t0 = time.perf_counter()
            lr = lr_for(step)
            grads = None
            loss_sum = 0.0
            for _ in range(cfg.grad_accum_steps):
                x, y = get_batch(data.train, cfg.batch_size, cfg.block_size, sampler_rng)
                _, loss = model.forward(x, y)
                # named by `step`, the updates the weights have had, as metrics.jsonl and the progress lines
                # count: weights the third update broke are "at step 3" whether the evaluation there or the
                # next training batch finds them (step + 1, the update being taken, said 4 for the latter)
                if not math.isfinite(loss):
                    raise diverged("the loss", loss, step)
                loss_sum += loss
                micro = model.backward()
                if grads is None:
                    grads = micro
                else:  # gradient accumulation: sum the micro-batches' gradients (on the device, if there)
                    for k, g in micro.items():
                        model.ops.add_inplace(grads[k], g)
            if cfg.grad_accum_steps > 1:  # their mean is the gradient of the mean loss
                scale_grads(grads, 1.0 / cfg.grad_accum_steps)
            norm = clip_grad_norm(grads, cfg.grad_clip, sum_squares)
            if not math.isfinite(norm):
                raise diverged("the gradient norm", norm, step)
            optimizer.step(grads, lr=lr)
            step += 1
            state["tokens_seen"] += tokens_per_step
            train_time += time.perf_counter() - t0
            steps_timed += 1
            bar.update(1)
            if not quiet:  # the batch's loss, on the weights before this update: named by their step, as a
                # divergence names it (bare, beside the bar's count of updates done, it read as the next's)
                tok_s = tokens_per_step * steps_timed / train_time if train_time else 0.0
                bar.set_postfix_str(f"step {step - 1}: loss {loss_sum / cfg.grad_accum_steps:.4f}, lr "
                                    f"{lr:.2e}, {tok_s:,.0f} tok/s", refresh=False)
            if step % cfg.eval_interval == 0 or step == cfg.max_iters:
                evaluate_and_checkpoint(step, lr_for(step))
                last_saved = step

    png = None
    try:
        png = plot_metrics(out)
    except (TinyGPTError, OSError) as exc:  # the run's work is saved: a plot it cannot write (a full disk, a
        # loss.png that is a directory) is told, not made the run's failure (exit 2 after every step ran)
        # (an OSError's words alone named no file: the file that failed, as the CLI's errors do: the metrics
        # it could not read, else the loss.png it could not write, never the temporary write_atomic named)
        if isinstance(exc, OSError) and exc.strerror:
            read = exc.filename is not None and Path(os.fsdecode(exc.filename)) == metrics_path
            why = f"{exc.strerror}: {metrics_path if read else out / 'loss.png'}"
        else:
            why = exc
        say_on_stderr(f"tinygpt: warning: no loss plot written ({why}); the run's checkpoint and metrics are "
                      "saved")
    try:
        rows = read_metrics(metrics_path)
    except OSError:  # the plot read it first and its warning named the file: the run's work is saved, and a
        rows = []  # summary without its last val loss is no reason to report the finished run as failed
    summary = {"out": str(out), "step": step, "val_loss": rows[-1]["val_loss"] if rows else None,
               "best_val_loss": state["best_val_loss"], "best_step": state["best_step"],
               # the time saved with the last checkpoint, which a --resume adds to: counted to here, the total
               # held this run's plot (half a second of matplotlib), which the next run's "in all" left out
               "elapsed": state["elapsed"], "plot": str(png) if png else None}
    if not quiet:
        val = f"{summary['val_loss']:.4f}" if summary["val_loss"] is not None else "n/a"
        took = f"{summary['elapsed']:.1f} s"
        if elapsed_before:  # a resumed run: the total is over every run of this directory
            took += f" in all, {summary['elapsed'] - elapsed_before:.1f} s in this run"
        best = ""
        if summary["best_step"] is not None and summary["best_step"] != step:  # (the val loss rose since)
            best = (f" (the best, val loss {summary['best_val_loss']:.4f} at step {summary['best_step']}, "
                    f"in {out / 'best'})")
        print(f"done: step {step}, val loss {val}, {took}; checkpoint in {out}{best}"
              + (f", loss curve {png}" if png else ""))
    return summary


# --- plot --------------------------------------------------------------------------------------------


def plot_metrics(out_dir: str | os.PathLike, path: str | os.PathLike | None = None) -> Path:
    """Plot train and val loss against step from ``DIR/metrics.jsonl`` to a PNG (default ``DIR/loss.png``);
    a run trained with ``--hellaswag`` gets its HellaSwag accuracies too, on an axis of their own."""
    out_dir = Path(out_dir)
    metrics = out_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise TinyGPTError(f"no metrics in {out_dir}: {metrics} does not exist")
    rows = [r for r in read_metrics(metrics) if "step" in r]
    if not rows:
        raise TinyGPTError(f"{metrics} holds no metrics rows")
    path = Path(path) if path is not None else out_dir / "loss.png"
    if path.is_dir():
        raise TinyGPTError(f"cannot write the plot to {path}: it is a directory")
    # the directory's name as text: a byte that is not UTF-8 (a surrogate) and a pair of $ (mathtext) made
    # matplotlib raise, after the training it plots had finished
    # (made absolute: `tinygpt plot .`, or a run with --out ., had no name, a title of ": final val loss ...")
    name = Path(os.path.abspath(out_dir)).name
    fig = metrics_figure(rows, os.fsencode(name).decode("utf-8", "replace"))
    image_format = path.suffix[1:].lower() or "png"
    if image_format not in fig.canvas.get_supported_filetypes():
        raise TinyGPTError(f"cannot write a {image_format!r} image; name the file .png, .svg or .pdf")
    image = io.BytesIO()
    fig.savefig(image, format=image_format)
    write_atomic(path, image.getvalue())  # whole or absent, and no temporary left behind on failure
    return path


def metrics_figure(rows: list[dict], name: str):
    """The matplotlib Figure of ``plot_metrics``: train and val loss of ``rows`` (metrics.jsonl's) against
    step, the best val loss starred, and, where rows hold them, the HellaSwag accuracies on a right-hand
    axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Figure + Agg canvas directly (not pyplot): no global backend or figure state is touched.
    fig = Figure(figsize=(7, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    steps = [r["step"] for r in rows]

    def loss(row, key):  # a missing or hand-edited value (null, "x", 400 digits) is a gap in the curve
        value = row.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return math.nan
        try:
            return float(value)
        except OverflowError:  # an int past float's range
            return math.nan

    for key, label in (("train_loss", "train"), ("val_loss", "val")):
        ax.plot(steps, [loss(r, key) for r in rows], marker="o", markersize=3, label=label)
    # the lowest val loss, the first if it recurs: the checkpoint DIR/best keeps (training's rule)
    val = np.array([loss(r, "val_loss") for r in rows])
    best = int(np.nanargmin(val)) if np.isfinite(val).any() else None
    if best is not None:
        ax.plot([steps[best]], [val[best]], marker="*", markersize=12, linestyle="none", color="C3",
                label=f"best val {val[best]:.4f} (step {steps[best]})")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats / token)")
    handles, labels = ax.get_legend_handles_labels()
    if any("hellaswag_acc_norm" in r for r in rows):  # --hellaswag: an accuracy, not a loss: its own axis
        accuracy = ax.twinx()
        for key, label, style in (("hellaswag_acc_norm", "HellaSwag acc_norm", "-"),
                                  ("hellaswag_acc", "HellaSwag acc", ":")):
            accuracy.plot(steps, [loss(r, key) for r in rows], linestyle=style, color="C4", marker="s",
                          markersize=3, label=label)
        accuracy.set_ylabel("HellaSwag accuracy")
        more_handles, more_labels = accuracy.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    title = f"{name}: final val loss {val[-1]:.4f}"
    if best is not None and best != len(rows) - 1:
        title += f", best {val[best]:.4f} at step {steps[best]}"
    ax.set_title(title, parse_math=False)
    ax.grid(alpha=0.3)
    ax.legend(handles, labels)
    fig.tight_layout()
    return fig


# --- tinygpt eval ------------------------------------------------------------------------------------


def evaluate(out_dir: str | os.PathLike | None = None, data: str | None = None, split: str | None = None,
             batch_size: int | None = None, backend: str = "auto", max_batches: int | None = None,
             stride: int | None = None, pretrained: str | os.PathLike | None = None, say=None) -> dict:
    """Loss, perplexity and bits per byte of a trained model on a whole split of a text file.

    The model is a training run's (``out_dir``) or a transformers GPT-2 directory's or nanoGPT checkpoint's
    (``pretrained``, with its tokenizer as ``tinygpt sample --pretrained`` finds it:
    ``finetune.load_gpt2_dir``). A run is scored on the val (default) or train split of its text, or of
    ``data``, split 90/10 as in training, a tail shorter than a window left out; a pretrained model on the
    whole of ``data`` (``split="all"``, its only split: no part of that text is known to be its training
    text), every token but the first, the tail included. ``data`` may also be a directory of token files
    (``data.open_token_dir``): its val (default) or train files are the split (``val.bin``, llm.c's
    ``NAME_val.bin`` or its val shards), for a run and a pretrained model alike (its ids must be ones the
    model's tokenizer reads as the files' do), a tail shorter than a window left out. A run's own data (its
    record's file or folder) that changed since it trained is scored as it is now, with a warning on stderr.

    Windows of the model's ``block_size`` (``data.iter_eval_windows``) advance by ``stride`` tokens (default:
    ``block_size``, non-overlapping), each scoring only the targets the window before did not, so each target
    is predicted once. ``loss`` is the mean cross-entropy in nats per scored token; ``perplexity = exp(loss)``
    (inf past float's range); bits per byte = total nats / ln 2 / number of UTF-8 bytes of the scored tokens:
    unlike per-token loss, it compares models with different tokenizers. ``batch_size`` is windows per forward
    pass: 32 for a run's small windows, 1 for a pretrained model, whose logits over one 1024-token window of
    GPT-2 take 196 MiB. The forwards keep no caches (``keep_caches=False``): one such window peaks at about
    400 MiB (traced, GPT-2 small's shape), where a training forward keeps 1.1 GiB of activations. ``say`` (a
    function of one line) is told before a long wait with nothing else to show: an id scan of more than 1 GiB
    of token files (``data.open_token_dir``; a FineWeb train split is 20 GB).
    """
    from tinygpt.data import VAL_FRACTION, iter_eval_windows, open_token_dir, prepare_dataset

    if (out_dir is None) == (pretrained is None):
        raise TinyGPTError("evaluate: give out_dir (a training run) or pretrained (a GPT-2 directory or a "
                           "nanoGPT checkpoint), not "
                           f"{'both' if out_dir is not None else 'neither'}")
    if pretrained is not None:
        if not data:
            raise TinyGPTError("--pretrained needs --data FILE: the text to score")
        if Path(data).is_dir():  # token files: the folder's own two splits, as for a run
            if split not in (None, "train", "val"):
                raise TinyGPTError(f"--split {split}: a token directory is scored one file at a time, val "
                                   "(default) or train")
            split = split or "val"
        elif split not in (None, "all"):
            raise TinyGPTError(f"--split {split}: a pretrained model has no train or val split of {data}, it "
                               "is scored whole (--split all)")
        else:
            split = "all"
    elif split is None:
        split = "val"
    elif split not in ("train", "val"):
        raise TinyGPTError(f"unknown split {split!r}: choose train or val")
    if batch_size is None:
        batch_size = 1 if pretrained is not None else 32
    # integers, checked before the (slow) load: 2.5 was a TypeError from range(), "4" from the comparison,
    # and a max_batches of 1.5 ran 2 batches
    if not is_int(batch_size) or batch_size <= 0:
        raise TinyGPTError(f"--batch-size must be a positive integer, got {shown(batch_size)}")
    if max_batches is not None and (not is_int(max_batches) or max_batches < 1):
        raise TinyGPTError(f"--max-batches must be an integer >= 1, got {shown(max_batches)}")
    if stride is not None and (not is_int(stride) or stride < 1):  # (its upper bound, once the model is in)
        raise TinyGPTError(f"--stride must be a positive integer, got {shown(stride)}")
    if pretrained is not None:
        from tinygpt.finetune import load_gpt2_dir

        model, tokenizer, source = load_gpt2_dir(pretrained, backend=backend)  # (NaN weights refused)
        step = None
    else:
        from tinygpt.checkpoint import NON_FINITE_REMEDY, load_checkpoint
        from tinygpt.model import check_finite_weights

        ckpt = load_checkpoint(out_dir, backend=backend, with_optimizer=False)
        model, tokenizer, source, step = ckpt.model, ckpt.tokenizer, str(out_dir), ckpt.state.get("step")
        # NaN or inf weights scored "loss nan" with exit 0, as if a number; refused as sample refuses them
        check_finite_weights(model, f"the checkpoint {ckpt.path}", NON_FINITE_REMEDY)
    block = model.config.block_size
    if stride is not None and stride > block:  # windows further apart than they are long skip tokens
        raise TinyGPTError(f"--stride {stride} exceeds the model's context of {block} tokens")
    if not data and _read_from_a_pipe(ckpt.train_config.get("data")):
        raise TinyGPTError(f"{out_dir} was trained on --data read from a pipe ({ckpt.train_config['data']}), "
                           "which cannot be read again; give --data FILE holding that text")
    data_path = Path(data) if data else _data_path(ckpt.train_config.get("data"))
    if data_path.is_dir():
        dataset = open_token_dir(data_path, tokenizer=tokenizer, tokenizer_of=source, splits=(split,),
                                 say=say)
    else:
        # (split "all": the whole text as the "train" part of a split with no val part)
        val_fraction = 0.0 if split == "all" else VAL_FRACTION
        dataset = prepare_dataset(data_path, tokenizer=tokenizer, val_fraction=val_fraction,
                                  tokenizer_of=source, say=say)
    if out_dir is not None and ckpt.train_config.get("data") == str(data_path.resolve()):
        # the run's own data, edited since (or prepared again): its split is no longer the text the run was
        # trained or validated on, and the score said nothing of it
        text = dataset.token_files is None
        recorded = ckpt.train_config.get("data_sha256" if text else "data_fingerprint")
        if recorded is not None and recorded != dataset.meta["text_sha256" if text else "fingerprint"]:
            what, them, are = ("text", "it", "it is") if text else ("token files", "them", "they are")
            say_on_stderr(f"tinygpt: warning: the {what} of {data_path} changed since {out_dir} trained on "
                          f"{them}: the {split} split scored is of the {what} as {are} now, not as the run "
                          f"saw {them}")
    tokens = dataset.val if split == "val" else dataset.train
    if split == "all" and len(tokens) < 2:
        raise TinyGPTError(f"{data_path} is {len(tokens)} token long: scoring needs at least 2 (the first is "
                           "only context)")
    if split != "all" and len(tokens) < block + 1:
        raise TinyGPTError(f"the {split} split of {data_path} has {len(tokens)} tokens, fewer than one "
                           f"window of {block + 1}")
    byte_lengths = np.array([len(tokenizer.decode_bytes([i])) for i in range(tokenizer.vocab_size)])
    model.eval()
    total_nats, total_tokens, total_bytes = 0.0, 0, 0
    windows = iter_eval_windows(tokens, block, batch_size, stride, whole=split == "all")
    for i, (x, y) in enumerate(windows):
        if max_batches is not None and i >= max_batches:
            break
        _, loss = model.forward(x, y, keep_caches=False)
        scored = y[y != -1]  # (the targets an earlier window scored are -1)
        total_nats += float(loss) * scored.size
        total_tokens += scored.size
        total_bytes += int(byte_lengths[scored].sum())
    loss = total_nats / total_tokens
    # exp of a mean loss past 709.78 nats is past float's range: math.exp raised OverflowError (a traceback
    # from `tinygpt eval`) for a model whose logits are huge, where its perplexity is, as a float, inf
    try:
        perplexity = math.exp(loss)  # (a NaN loss, from NaN weights, stays NaN)
    except OverflowError:
        perplexity = math.inf
    return {"data": str(data_path), "split": split, "tokens": total_tokens, "loss": loss,
            "perplexity": perplexity, "bits_per_byte": total_nats / math.log(2) / max(total_bytes, 1),
            "step": step, "model": source, "split_tokens": len(tokens), "window": min(block, len(tokens) - 1),
            "stride": stride or block}
