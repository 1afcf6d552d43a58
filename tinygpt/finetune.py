"""Fine-tuning: a pre-trained GPT turned into a sequence classifier, forward and backward by hand.

GPT-1's second stage (Radford et al. 2018, section 3.2): keep the pre-trained transformer, read its final
hidden state at the last token of each input, and learn a linear layer from it to the labels with the same
cross-entropy loss as pre-training::

    h = GPT body(idx)                        (B, T, C)   final LayerNorm's output (``GPT.forward_hidden``)
    z = h[b, lengths[b] - 1]                 (B, C)      the LAST REAL token of each sequence
    logits = z @ W + b                       (B, K)      W (C, K), b (K,): the classification head
    loss = mean_b -log softmax(logits[b])[label[b]]

Why the last token: attention is causal, so position t sees tokens 0..t and only the last real token has
read the whole text. Sequences of a batch are padded on the RIGHT with ``PAD_ID`` up to the longest one;
a padded position comes after every real token, so causality alone keeps it out of the pooled state (no
attention mask needed), and the pooling never reads it. The logits of a text therefore do not depend on
what it is batched with (a test checks this).

Backward walks the same path: the cross-entropy and the Linear layer give dz (B, C); the pooling puts dz
back at (b, lengths[b] - 1) of an all-zero dh (B, T, C); ``GPT.backward_hidden(dh)`` takes it through the
body. With ``freeze_body`` only W and b train: the body is a fixed feature extractor, so its features
are computed once (eval mode) and the head is a softmax regression on them.

Texts longer than ``block_size`` tokens are TRUNCATED to their FIRST ``block_size`` tokens (the right end
is dropped, as ``transformers``' tokenizers do by default); the run reports how many were.

Labelled data (``read_labelled``): JSON Lines (``.jsonl``: one object per line) or CSV with a header, each
row a ``text`` and a ``label`` (all strings or all integers), and optionally ``split`` ("train" / "val")
to fix the split, e.g. to hold out whole plays. Without ``split``, the validation set is a stratified
``val_fraction`` of each class, drawn by a seeded generator (the same split for the same file and seed);
``val_fraction`` 0 means no validation split: the run then reports (and logs) training metrics only.

An output directory holds a checkpoint in the layout of ``tinygpt.checkpoint`` (written atomically by
``save_checkpoint``): ``model.safetensors`` carries the body under GPT-2's names plus ``classifier.weight``
(C, K) and ``classifier.bias`` (K,), and ``config.json`` a ``tinygpt_classifier`` entry with the label
names. ``tinygpt.checkpoint.load_model`` still reads the body as a language model; :func:`load_classifier`
reads all of it. ``optimizer.safetensors`` holds the AdamW moments and ``state.json`` the step, the best
score, the dropout stream and where the batch order stands, so a run resumes exactly (``resume=True``,
``tinygpt finetune --resume``), as ``tinygpt.train`` runs do.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinygpt import layers
from tinygpt.data import refuse_device, wide_encoding_error
from tinygpt.errors import TinyGPTError, is_int, is_number, say_on_stderr, shown
from tinygpt.files import loads_json, write_atomic
from tinygpt.optim import check_decay_fits_rate

__all__ = [
    "PAD_ID", "FinetuneConfig", "Classifier", "read_labelled", "label_vocabulary", "split_indices",
    "encode_texts", "pad_batch", "last_token_pool_forward", "last_token_pool_backward", "init_head",
    "head_loss_forward", "head_loss_backward", "classifier_forward", "classifier_backward",
    "finetune_classifier", "load_classifier", "load_gpt2_dir", "is_classifier_dir", "predict_proba",
    "evaluate_classifier", "confusion_matrix", "plot_confusion_matrix",
]

PAD_ID = 0  # any id in the vocabulary works: right padding is never seen by a real token (causal attention)
HEAD_WEIGHT, HEAD_BIAS = "classifier.weight", "classifier.bias"


# --- labelled data -----------------------------------------------------------------------------------


def read_labelled(path) -> tuple[list[str], list, list[str | None]]:
    """``(texts, labels, splits)`` of a ``.jsonl`` or ``.csv`` file with ``text`` and ``label`` fields.

    ``splits[i]`` is the row's ``split`` field ("train" or "val") or None. Labels are all str or all int
    (CSV labels are str); anything else -> TinyGPTError naming the row.
    """
    path = Path(path)
    if path.is_dir():
        raise TinyGPTError(f"labelled data path is a directory, not a file: {path}")
    refuse_device(path, "labelled data path")  # (it read "not found" for /dev/zero)
    if path.exists() and not path.is_file():  # a FIFO or a socket, read "not found": a run reads its rows
        # twice (the rows, then the file's checksum for --resume), and a pipe gives them once
        raise TinyGPTError(f"labelled data path is not a regular file (a pipe or a socket): {path}")
    if not path.is_file():
        raise TinyGPTError(f"labelled data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise TinyGPTError(f"{path}: labelled data must be .jsonl or .csv, got {suffix or 'no extension'!r}")
    data = path.read_bytes()
    try:
        raw = data.decode("utf-8-sig")  # (-sig: a leading BOM, as Excel writes, is dropped)
    except UnicodeDecodeError as exc:  # (Excel's "Unicode Text" is UTF-16: named, with how to convert it)
        raise TinyGPTError(wide_encoding_error(data, path)
                           or f"{path} is not UTF-8 text (byte {exc.start})") from None
    rows = []  # (row number as a person counts it, dict)
    if suffix == ".jsonl":
        # lines end at \n only (a \r before it is JSON whitespace): str.splitlines would also cut at
        # U+2028, U+0085 or a form feed, which JSON strings may hold raw
        for number, line in enumerate(raw.split("\n"), 1):
            if not line.strip():
                continue
            try:
                row = loads_json(line)
            except ValueError as exc:
                raise TinyGPTError(f"{path}:{number}: not valid JSON ({exc})") from None
            if not isinstance(row, dict):
                raise TinyGPTError(f"{path}:{number}: expected a JSON object with text and label")
            rows.append((number, row))
    else:
        # the csv module splits the records itself (newline="" semantics): a quoted field may hold line
        # breaks of any kind; reader.line_num is the line a record ends on. No field is longer than the
        # file: the csv module's default limit (131,072 characters) made a long text a traceback
        limit = csv.field_size_limit(max(csv.field_size_limit(), len(raw)))
        try:
            # strict: a quote left open is an error, not a field swallowing the rest of the file
            reader = csv.DictReader(io.StringIO(raw, newline=""), strict=True)
            if reader.fieldnames is None or not {"text", "label"} <= set(reader.fieldnames):
                raise TinyGPTError(f"{path}: the CSV header must name the columns text and label, got "
                                   f"{reader.fieldnames}")
            twice = [name for name in ("text", "label", "split") if reader.fieldnames.count(name) > 1]
            if twice:  # (a dict keeps the last one's value: the other column would be ignored silently)
                raise TinyGPTError(f"{path}: the CSV header names the column {twice[0]!r} twice")
            for row in reader:
                extra = row.pop(None, None)  # fields past the header's: an unquoted comma in a text
                if extra is not None:
                    raise TinyGPTError(
                        f"{path}:{reader.line_num}: {len(reader.fieldnames) + len(extra)} fields for the "
                        f"header's {len(reader.fieldnames)} ({', '.join(reader.fieldnames)}); quote a text "
                        'that holds a comma ("like, this")')
                rows.append((reader.line_num, row))
        except csv.Error as exc:
            after = rows[-1][0] if rows else 1  # the line the last whole record (or the header) ended on
            hint = (f": a quoted field after line {after} is never closed" if "end of data" in str(exc)
                    else "")
            raise TinyGPTError(f"{path}:{reader.line_num}: not valid CSV ({exc}){hint}") from None
        finally:
            csv.field_size_limit(limit)
    if not rows:
        raise TinyGPTError(f"{path} holds no rows")
    texts, labels, splits = [], [], []
    for number, row in rows:
        where = f"{path}:{number}"
        text, label, split = row.get("text"), row.get("label"), row.get("split")
        if not isinstance(text, str):
            raise TinyGPTError(f"{where}: missing text" if text is None else
                               f"{where}: text must be a string, got {type(text).__name__}")
        if not text:
            raise TinyGPTError(f"{where}: empty text")
        if label is None or label == "":
            raise TinyGPTError(f"{where}: missing label")
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise TinyGPTError(f"{where}: a label must be a string or an integer, got {shown(label)}")
        if isinstance(label, str):  # JSON's "\ud800" is a string with no UTF-8 to print or save it as
            try:
                label.encode("utf-8")
            except UnicodeEncodeError:
                raise TinyGPTError(f"{where}: the label {label!r} holds a lone surrogate, which UTF-8 cannot "
                                   "encode") from None
        if split in ("", None):
            split = None
        elif split not in ("train", "val"):
            raise TinyGPTError(f"{where}: split must be train or val, got {shown(split)}")
        texts.append(text)
        labels.append(label)
        splits.append(split)
    kinds = {type(label) for label in labels}
    if len(kinds) > 1:
        first_int = next(i for i, label in enumerate(labels) if isinstance(label, int))
        first_str = next(i for i, label in enumerate(labels) if isinstance(label, str))
        raise TinyGPTError(f"{path}: labels of mixed types: {labels[first_int]!r} (integer, row "
                           f"{rows[first_int][0]}) and {labels[first_str]!r} (string, row "
                           f"{rows[first_str][0]})")
    if len({s is None for s in splits}) > 1:
        raise TinyGPTError(f"{path}: either every row has a split field or none does")
    return texts, labels, splits


def label_vocabulary(labels: list, names: list | None = None) -> tuple[list, np.ndarray]:
    """``(names, ids)``: the class names (sorted, or as given) and each row's class index (N,) int64.

    Every class must have at least one example and there must be at least two classes.
    Example: ``label_vocabulary(["b", "a", "b"]) -> (["a", "b"], array([1, 0, 1]))``.
    """
    present = sorted(set(labels))
    if names is None:
        names = present
    else:
        names = given = list(names)
        integer_text = all(isinstance(n, str) and re.fullmatch(r"-?[0-9]+", n.strip()) for n in names)
        integer_data = bool(present) and all(isinstance(label, int) for label in present)
        read_as = ""  # the messages below show the names as given, and what they were read as
        if integer_data and integer_text:
            names = [int(n) for n in names]  # given as text (the CLI), the data's are integers (a .jsonl)
            read_as = f" (read as {shown(names)}: the data's labels are integers)"
        elif integer_data and all(isinstance(n, str) for n in names):  # "x" matches none of them: the data's
            # 0 was said not to be among ['0', 'x'], when the user had typed 0
            bad = next(n for n in names if not re.fullmatch(r"-?[0-9]+", n.strip()))
            raise TinyGPTError(f"the given label {bad!r} is not an integer, but the data's labels are "
                               f"integers: {shown(present)}")
        elif names and all(is_int(n) for n in names) and all(
                isinstance(label, str) and re.fullmatch(r"-?[0-9]+", label.strip()) for label in present):
            # ... and the reverse: integers (a run's saved classes, from a .jsonl) for a .csv's text, "0"
            # the label 0, as evaluate_classifier reads them (resuming on a CSV of the rows was refused)
            labels = [int(label) for label in labels]
            present = sorted(set(labels))
        if len(set(names)) != len(names):
            second = next(i for i, name in enumerate(names) if name in names[:i])
            first = names.index(names[second])
            if given[first] != given[second]:  # two spellings of one integer ("01" and "1"): the list
                # [1, 1] was said to repeat a label, a list the user never typed
                raise TinyGPTError(f"the given labels {given[first]!r} and {given[second]!r} are both the "
                                   f"data's label {names[first]} (its labels are integers)")
            raise TinyGPTError(f"the label list {given} repeats a label")
        unknown = [label for label in present if label not in names]
        if unknown:
            raise TinyGPTError(f"label {unknown[0]!r} is not among the given labels {given}{read_as}")
        empty = [name for name in names if name not in present]
        if empty:
            raise TinyGPTError(f"class {empty[0]!r} has no examples in the data")
    if len(names) < 2:
        raise TinyGPTError(f"classification needs at least two classes; the data has only {names}")
    index = {name: i for i, name in enumerate(names)}
    return names, np.array([index[label] for label in labels], dtype=np.int64)


def split_indices(label_ids: np.ndarray, splits: list, val_fraction: float, seed: int,
                  n_classes: int, names: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(train, val)``: the rows' own ``split`` fields, else a stratified seeded split.

    Stratified: each class gives ``round(val_fraction * n)`` of its n rows (at least 1 when n >= 2, never
    all of them) to validation, so both sides see every class in its proportion. Every class with rows must
    keep at least one training example (a class with none, as in a test file scored by ``eval``, is absent
    from both sides).
    """
    n = len(label_ids)
    if splits and splits[0] is not None:
        is_val = np.array([s == "val" for s in splits])
    else:
        if not 0.0 <= val_fraction < 1.0:
            raise TinyGPTError(f"--val-fraction must be in [0, 1), got {val_fraction}")
        rng = np.random.default_rng([seed, 5])
        is_val = np.zeros(n, dtype=bool)
        for k in range(n_classes):
            rows = np.flatnonzero(label_ids == k)
            n_val = int(round(val_fraction * len(rows)))
            if val_fraction > 0 and len(rows) >= 2:
                n_val = max(n_val, 1)
            # never all of them, a class of one row included: above a val_fraction of 0.5 its only row
            # went to validation and the run stopped with "no training examples", a split it drew itself
            n_val = min(n_val, max(len(rows) - 1, 0))
            is_val[rng.permutation(rows)[:n_val]] = True
    train, val = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    missing = sorted(set(label_ids.tolist()) - set(label_ids[train].tolist()))
    if missing:
        which = f"label {names[missing[0]]!r}" if names else f"class number {missing[0]}"
        raise TinyGPTError(f"{which} has no training examples (all of its rows are in the validation split)")
    return train, val


_FINE_TUNING_ADVICE = "; fine-tune from a model whose vocabulary covers the data"


def encode_texts(tokenizer, texts: list[str], block_size: int, vocab_size: int,
                 where: str = "data", advice: str = _FINE_TUNING_ADVICE, numbers=None
                 ) -> tuple[list[np.ndarray], int]:
    """Token ids of each text, truncated to its FIRST ``block_size`` tokens; and how many were truncated.

    A text the tokenizer cannot encode (a character model without the text's characters) or that encodes
    to ids outside the model's vocabulary raises TinyGPTError naming the row (``advice`` follows when the
    tokenizer cannot encode it: how to fine-tune instead; "" where a trained classifier reads the text):
    "text i + 1" for ``texts[i]``, or ``numbers[i]`` where the texts are some of a file's (a split of it).
    """
    seqs, truncated = [], 0
    for i, text in enumerate(texts):
        number = i + 1 if numbers is None else numbers[i]
        try:
            ids = tokenizer.encode(text)
        except TinyGPTError as exc:
            raise TinyGPTError(f"{where}, text {number}: the model's tokenizer cannot encode it ({exc})"
                               f"{advice}") from None
        if not ids:
            raise TinyGPTError(f"{where}, text {number}: encodes to no tokens")
        if max(ids) >= vocab_size:
            raise TinyGPTError(f"{where}, text {number}: token id {max(ids)} is outside the model's "
                               f"vocabulary of {vocab_size}")
        if len(ids) > block_size:
            ids, truncated = ids[:block_size], truncated + 1
        seqs.append(np.asarray(ids, dtype=np.int64))
    return seqs, truncated


def pad_batch(seqs: list[np.ndarray], pad_id: int = PAD_ID) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad sequences to the longest: -> idx (B, T_max) int64, lengths (B,) int64.

    Example: ``pad_batch([[5, 6, 7], [8]]) -> ([[5, 6, 7], [8, 0, 0]], [3, 1])``.
    """
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    idx = np.full((len(seqs), int(lengths.max())), pad_id, dtype=np.int64)
    for b, s in enumerate(seqs):
        idx[b, : len(s)] = s
    return idx, lengths


# --- the head, forward and backward by hand -------------------------------------------------------------


def last_token_pool_forward(hidden: np.ndarray, lengths: np.ndarray):
    """hidden (B, T, C), lengths (B,) int in [1, T] -> pooled (B, C) = hidden[b, lengths[b] - 1], cache."""
    B, T, _ = hidden.shape
    lengths = np.asarray(lengths)
    if lengths.shape != (B,) or lengths.min() < 1 or lengths.max() > T:
        raise TinyGPTError(f"lengths must be (B,) = ({B},) integers in [1, {T}], got {lengths}")
    last = lengths - 1
    return hidden[np.arange(B), last], (hidden.shape, last)


def last_token_pool_backward(dpooled: np.ndarray, cache) -> np.ndarray:
    """dpooled (B, C) -> dhidden (B, T, C): zero everywhere but the pooled positions (padding gets 0)."""
    shape, last = cache
    dhidden = np.zeros(shape, dtype=dpooled.dtype)
    dhidden[np.arange(shape[0]), last] = dpooled  # one position per row: no accumulation needed
    return dhidden


def init_head(n_embd: int, n_classes: int, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    """The head's parameters: weight (C, K) ~ N(0, 0.02) as GPT-2's other weights, bias (K,) = 0."""
    rng = np.random.default_rng([seed, 4])
    return {HEAD_WEIGHT: (rng.standard_normal((n_embd, n_classes)) * 0.02).astype(dtype),
            HEAD_BIAS: np.zeros(n_classes, dtype=dtype)}


def head_loss_forward(pooled, weight, bias, labels=None):
    """pooled (B, C) @ weight (C, K) + bias (K,) -> logits (B, K); with labels (B,) int the mean CE loss.

    Returns ``(logits, loss or None, cache)``. The cross-entropy is layers' (B, T, V) one with T = 1.
    """
    logits, c_lin = layers.linear_forward(pooled, weight, bias)
    if labels is None:
        return logits, None, None
    loss, c_ce = layers.cross_entropy_forward(logits[:, None, :], np.asarray(labels)[:, None])
    return logits, loss, (c_lin, c_ce)


def head_loss_backward(dloss, cache):
    """-> dpooled (B, C), dweight (C, K), dbias (K,) of ``dloss * loss``."""
    c_lin, c_ce = cache
    dlogits = layers.cross_entropy_backward(dloss, c_ce)[:, 0, :]  # (B, 1, K) -> (B, K)
    return layers.linear_backward(dlogits, c_lin)


def classifier_forward(model, head: dict, idx, lengths, labels=None):
    """The whole classifier: idx (B, T), lengths (B,) -> logits (B, K), loss (or None), cache.

    With labels the body's caches are kept (in ``model``) for one :func:`classifier_backward`.
    """
    hidden = model.forward_hidden(idx)  # (B, T, C)
    pooled, c_pool = last_token_pool_forward(hidden, lengths)
    logits, loss, c_head = head_loss_forward(pooled, head[HEAD_WEIGHT], head.get(HEAD_BIAS), labels)
    return logits, loss, (model, c_pool, c_head)


def classifier_backward(cache, dloss: float = 1.0) -> dict[str, np.ndarray]:
    """Gradients of ``dloss * loss`` of the last ``classifier_forward``: the body's and the head's params."""
    model, c_pool, c_head = cache
    dpooled, dweight, dbias = head_loss_backward(dloss, c_head)
    grads = model.backward_hidden(last_token_pool_backward(dpooled, c_pool))
    grads[HEAD_WEIGHT] = dweight
    if dbias is not None:
        grads[HEAD_BIAS] = dbias
    return grads


# --- batched inference --------------------------------------------------------------------------------


def _batches_by_length(seqs, batch_size):
    """Index batches with similar lengths together (less padding computed); order restored by callers."""
    if not is_int(batch_size) or batch_size < 1:
        raise TinyGPTError(f"--batch-size must be a positive integer, got {shown(batch_size)}")
    order = np.argsort([len(s) for s in seqs], kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pooled_features(model, seqs, batch_size: int = 64) -> np.ndarray:
    """The pooled last-token hidden state of every sequence, in eval mode: (N, C)."""
    was_training = model.training
    model.eval()
    try:
        features = np.empty((len(seqs), model.config.n_embd), dtype=model.dtype)
        for rows in _batches_by_length(seqs, batch_size):
            idx, lengths = pad_batch([seqs[i] for i in rows])
            hidden = model.forward_hidden(idx, keep_caches=False)
            features[rows] = last_token_pool_forward(hidden, lengths)[0]
    finally:
        model.train(was_training)
    return features


def _softmax(logits):
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _scores(features, head, label_ids=None):
    """(probabilities (N, K), mean loss or None, accuracy or None) of the head on pooled features."""
    logits, loss, _ = head_loss_forward(features, head[HEAD_WEIGHT], head.get(HEAD_BIAS), label_ids)
    probs = _softmax(logits.astype(np.float64))
    if label_ids is None:
        return probs, None, None
    return probs, float(loss), float(np.mean(probs.argmax(axis=1) == label_ids))


# --- fine-tuning run ----------------------------------------------------------------------------------


# The settings of a model from scratch and their defaults (FinetuneConfig's None: not given).
SCRATCH_DEFAULTS = {"tokenizer": "char", "n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128,
                    "bias": False}


@dataclass
class FinetuneConfig:
    """Every setting of ``tinygpt finetune --task classify`` (defaults suit a small character model)."""

    data: str = ""
    out: str = "out-classify"
    init_from: str | None = None  # a tinygpt training output directory
    pretrained: str | None = None  # a transformers GPT-2 directory
    freeze_body: bool = False
    labels: list | None = None  # class names in this order (default: sorted labels of the data)
    val_fraction: float = 0.1
    seed: int = 1337
    backend: str = "auto"
    epochs: int = 3
    max_iters: int | None = None  # overrides epochs
    batch_size: int = 16
    learning_rate: float = 3e-4
    min_lr: float | None = None  # None: learning_rate / 10
    warmup_iters: int = 20
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_interval: int = 50
    dropout: float | None = None  # None: the checkpoint's
    recompute: bool = False  # activation recomputation (GPT.recompute): less memory, the same gradients
    # a model from scratch (neither init_from nor pretrained): its tokenizer and shape. None = not given:
    # validate() fills in SCRATCH_DEFAULTS for a model from scratch; with init_from / pretrained they come
    # from the checkpoint, and giving any of them is an error (it could not be honoured).
    tokenizer: str | None = None
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    block_size: int | None = None
    bias: bool | None = None

    def validate(self) -> FinetuneConfig:
        if not self.data:
            raise TinyGPTError("--data FILE.jsonl|csv is required")
        if not str(self.out).strip():  # Path("") is the working directory
            raise TinyGPTError("--out must name a directory, got an empty string")
        for name in ("init_from", "pretrained"):  # "" would be read as not given: a model from scratch
            value = getattr(self, name)
            if value is not None and not str(value).strip():
                raise TinyGPTError(f"--{name.replace('_', '-')} must name a directory, got an empty string")
        if self.init_from and self.pretrained:
            raise TinyGPTError("give --init-from or --pretrained, not both")
        start = self.init_from or self.pretrained
        if start:
            given = [name for name in SCRATCH_DEFAULTS if getattr(self, name) is not None]
            if given:
                what = "tokenizer" if given[0] == "tokenizer" else "shape"
                raise TinyGPTError(
                    f"--{given[0].replace('_', '-')} is for a model from scratch: with "
                    f"{'--init-from' if self.init_from else '--pretrained'} the model's {what} comes from "
                    f"the checkpoint {start}")
        else:
            for name, default in SCRATCH_DEFAULTS.items():
                if getattr(self, name) is None:
                    setattr(self, name, default)
        # is_int / is_number as TrainConfig checks: NumPy's numbers too (np.int64, np.float32 were refused),
        # never a bool (--warmup-iters True and --max-iters True ran as 1)
        for name in ("epochs", "batch_size", "eval_interval", "n_layer", "n_head", "n_embd", "block_size"):
            value = getattr(self, name)
            if value is None and start and name in SCRATCH_DEFAULTS:
                continue  # the checkpoint's
            if not is_int(value) or value <= 0:
                raise TinyGPTError(f"--{name.replace('_', '-')} must be a positive integer, "
                                   f"got {shown(value)}")
        if self.max_iters is not None and (not is_int(self.max_iters) or self.max_iters <= 0):
            raise TinyGPTError(f"--max-iters must be a positive integer, got {shown(self.max_iters)}")
        if not is_int(self.seed) or self.seed < 0:
            raise TinyGPTError(f"--seed must be a non-negative integer, got {shown(self.seed)}")
        if not is_int(self.warmup_iters) or self.warmup_iters < 0:
            raise TinyGPTError("--warmup-iters must be a non-negative integer, "
                               f"got {shown(self.warmup_iters)}")
        if not (is_number(self.learning_rate) and math.isfinite(self.learning_rate)
                and self.learning_rate > 0):
            raise TinyGPTError(f"--learning-rate must be a positive number, got {shown(self.learning_rate)}")
        if self.min_lr is not None:
            if not is_number(self.min_lr) or not math.isfinite(self.min_lr) or self.min_lr < 0:
                raise TinyGPTError(f"--min-lr must be a number >= 0, got {shown(self.min_lr)}")
            if self.min_lr > self.learning_rate:
                raise TinyGPTError(f"--min-lr ({self.min_lr:g}) must not exceed --learning-rate "
                                   f"({self.learning_rate:g}): the schedule decays from the peak to it")
        for name in ("weight_decay", "grad_clip"):  # finite too: inf decay ran and then blamed the
            # learning rate ("fine-tuning diverged"), as train refuses it
            value = getattr(self, name)
            if not is_number(value) or not 0 <= value < math.inf:
                raise TinyGPTError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        check_decay_fits_rate(self.learning_rate, self.weight_decay)  # (train's rule too)
        # checked here too, not only where the split is drawn: a file with split fields never draws one,
        # and --val-fraction 5 was then accepted without a word
        if not (is_number(self.val_fraction) and 0.0 <= self.val_fraction < 1.0):
            raise TinyGPTError(f"--val-fraction must be in [0, 1), got {shown(self.val_fraction)}")
        if self.dropout is not None and not (is_number(self.dropout) and 0.0 <= self.dropout < 1.0):
            # ("0.1": a TypeError)
            raise TinyGPTError(f"--dropout must be in [0, 1), got {shown(self.dropout)}")
        for name in ("epochs", "max_iters", "batch_size", "eval_interval", "n_layer", "n_head", "n_embd",
                     "block_size", "seed", "warmup_iters"):  # NumPy integers as Python ints, NumPy floats as
            if isinstance(getattr(self, name), np.integer):  # floats: the run's record is saved as JSON,
                setattr(self, name, int(getattr(self, name)))  # which takes neither np.int64 nor np.float32
        for name in ("learning_rate", "min_lr", "weight_decay", "grad_clip", "val_fraction", "dropout"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (int, float)):
                setattr(self, name, float(value))
        for name in ("freeze_body", "recompute"):  # a truthy "no" or "false" froze the body without a word
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TinyGPTError(f"{name} must be true or false, got {shown(getattr(self, name))}")
            setattr(self, name, bool(getattr(self, name)))
        if self.labels is not None and not isinstance(self.labels, (list, tuple)):  # a string was split into
            # its characters: "neg,pos" named the classes n, e, g, ",", ...
            raise TinyGPTError(f"labels must be a list of class names, got {shown(self.labels)}")
        if not start and self.tokenizer not in ("char", "gpt2"):
            raise TinyGPTError(f"--tokenizer must be char or gpt2 for a model from scratch, got "
                               f"{self.tokenizer!r}")
        if not start and not isinstance(self.bias, bool):
            raise TinyGPTError(f"bias must be true or false, got {shown(self.bias)}")
        if not start and self.n_embd % self.n_head:
            raise TinyGPTError(f"--n-embd ({self.n_embd}) must be divisible by --n-head ({self.n_head})")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name for f in dataclasses.fields(FinetuneConfig)}
# Settings a resumed run must keep: the model's shape, tokenizer and dropout (train's FROZEN_ON_RESUME); the
# seed, the validation share and the labels, which draw the split and name the head's classes; and whether
# the body is frozen, which decides what the saved AdamW moments are of
FROZEN_ON_RESUME = ("n_layer", "n_head", "n_embd", "block_size", "bias", "dropout", "tokenizer", "seed",
                    "val_fraction", "labels", "freeze_body")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class _ClassifierForSaving:
    """What ``tinygpt.checkpoint.save_checkpoint`` needs of a model (params, config, save_pretrained),
    writing the body in GPT-2's format plus the head tensors and the label names."""

    def __init__(self, model, head, labels, info):
        self.params, self.config, self._model, self._head = model.params, model.config, model, head
        self._meta = {"labels": list(labels), "pooling": "last", "truncation": "first block_size tokens",
                      "pad_id": PAD_ID, **info}

    def save_pretrained(self, path):
        from safetensors.numpy import load_file, save_file

        self._model.save_pretrained(path)
        path = Path(path)
        tensors = load_file(str(path / "model.safetensors"))
        tensors.update({name: np.ascontiguousarray(a) for name, a in self._head.items()})
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
        config = json.loads((path / "config.json").read_text())
        config["tinygpt_classifier"] = self._meta
        (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def load_gpt2_dir(path, backend: str = "numpy"):
    """``(GPT, tokenizer, description)`` of a transformers GPT-2 directory: the model, and the tokenizer
    files beside it (vocab.json + merges.txt, or encoder.json + vocab.bpe), else GPT-2's own tokenizer
    (the description then says so). A tokenizer with more ids than the model is refused: that is what a
    tinygpt run directory (no GPT-2 files, a small vocabulary) looks like here.

    Or of a nanoGPT checkpoint (``ckpt.pt``, or the out_dir holding it: ``model.nanogpt_checkpoint``): a
    char-level run's characters come from its dataset's meta.pkl (``model.nanogpt_meta_path``, read by
    ``data.read_char_vocabulary``), as nanoGPT's sample.py finds them; without one the tokenizer is GPT-2's,
    which nanoGPT's GPT-2 runs use (their vocabulary often padded to 50,304), and a vocabulary smaller than
    GPT-2's is refused: it is a char-level run's whose meta.pkl was not found.

    Weights holding a NaN or an infinity are refused (``model.check_finite_weights``): scored, they gave
    ``loss nan`` with exit 0; sampled, an error after the prompt; trained from, a stop at step 0.
    """
    from tinygpt.model import check_finite_weights

    model, tokenizer, description = _read_gpt2_dir(path, backend)
    check_finite_weights(model, str(path), "use another checkpoint")
    return model, tokenizer, description


def _read_gpt2_dir(path, backend: str):
    """``load_gpt2_dir``'s reading of the model and its tokenizer, before the check of its weights."""
    from tinygpt.data import read_char_vocabulary
    from tinygpt.model import GPT, load_nanogpt, nanogpt_checkpoint, nanogpt_meta_path
    from tinygpt.tokenizer import BPETokenizer

    ckpt = nanogpt_checkpoint(path)
    if ckpt is not None:
        model, entries = load_nanogpt(ckpt, backend=backend)
        meta = nanogpt_meta_path(ckpt, entries)
        if meta is not None:
            tokenizer = read_char_vocabulary(meta)
            description = f"{ckpt} (nanoGPT's, with the characters of {meta})"
        else:
            tokenizer, description = BPETokenizer.gpt2(), f"{ckpt} (nanoGPT's, with GPT-2's tokenizer)"
            if model.config.vocab_size < tokenizer.vocab_size:
                raise TinyGPTError(
                    f"{ckpt}: a nanoGPT checkpoint of vocab_size {model.config.vocab_size}, fewer than "
                    f"GPT-2's {tokenizer.vocab_size} tokens: a char-level run, whose characters are in its "
                    "dataset's meta.pkl, not in ckpt.pt; none was found beside ckpt.pt or in "
                    "data/<dataset>/ (copy it beside ckpt.pt)")
        if tokenizer.vocab_size > model.config.vocab_size:
            raise TinyGPTError(f"{meta}: {tokenizer.vocab_size} characters, but the model of {ckpt} has "
                               f"{model.config.vocab_size} ids: not the meta.pkl of its dataset")
        return model, tokenizer, description
    model = GPT.from_pretrained(path, backend=backend)
    path = Path(path)
    for encoder_json, vocab_bpe in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
        if (path / encoder_json).is_file() and (path / vocab_bpe).is_file():
            tokenizer = BPETokenizer.from_gpt2_files(path / encoder_json, path / vocab_bpe)
            description = str(path)
            break
    else:
        tokenizer, description = BPETokenizer.gpt2(), f"{path} (with GPT-2's tokenizer)"
    if tokenizer.vocab_size > model.config.vocab_size:
        raise TinyGPTError(f"{description}: its tokenizer has {tokenizer.vocab_size} tokens but the model "
                           f"only {model.config.vocab_size}; for a tinygpt training directory use "
                           "--init-from (train, finetune) or --out (sample, eval)")
    return model, tokenizer, description


def _load_body(cfg: FinetuneConfig, texts: list[str]):
    """(model, tokenizer, where it came from) for the run: a checkpoint, a GPT-2 dir, or a fresh model."""
    from tinygpt.model import GPT, GPTConfig
    from tinygpt.tokenizer import CharTokenizer, load_tokenizer

    if cfg.init_from or cfg.pretrained:
        if cfg.init_from:
            from tinygpt.checkpoint import load_checkpoint

            ckpt = load_checkpoint(cfg.init_from, backend=cfg.backend, with_optimizer=False)
            model, tokenizer = ckpt.model, ckpt.tokenizer
            source = f"checkpoint {cfg.init_from} (step {ckpt.state.get('step')})"
        else:
            model, tokenizer, source = load_gpt2_dir(cfg.pretrained, backend=cfg.backend)
        # a loaded model was built with seed 0: its dropout masks must follow --seed as a new model's do
        model.dropout_rng = np.random.default_rng([cfg.seed, 1])
        return model, tokenizer, source
    tokenizer = CharTokenizer.train("".join(texts)) if cfg.tokenizer == "char" else load_tokenizer("gpt2")
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer,
                       n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout or 0.0, bias=cfg.bias)
    return GPT(config, seed=cfg.seed, backend=cfg.backend), tokenizer, "a fresh random initialisation"


def finetune_classifier(cfg: FinetuneConfig, quiet: bool = False, resume: bool = False,
                        overrides: dict | None = None) -> dict:
    """Fine-tune (or, without init_from / pretrained, train from scratch) a classifier into ``cfg.out``.

    Every ``eval_interval`` steps and at the end: one metrics.jsonl row (step, epoch, train loss and
    accuracy as running means over the steps since the last row, val loss and accuracy on the whole
    validation split, lr, elapsed) and an atomic checkpoint of the current weights, the AdamW moments and
    where the batch order stands. Returns a summary dict. One run at a time writes a directory, and never
    one holding files it did not write.

    With ``resume`` the run in ``cfg.out`` continues from its latest checkpoint with its saved settings,
    ``overrides`` (the settings given explicitly) replacing some of them; ``cfg`` is then ignored but for
    ``cfg.out``, as in ``train.train``. Continued so, a run writes the weights, metrics rows (``elapsed``
    aside) and ``best`` of the uninterrupted run.
    """
    from tinygpt.checkpoint import exclusive_run_dir

    if not resume:
        cfg.validate()
    elif not str(cfg.out).strip():  # Path("") is the working directory
        raise TinyGPTError("--out must name a directory, got an empty string")
    with exclusive_run_dir(Path(cfg.out), create=not resume):
        return _finetune_classifier(cfg, quiet, resume, dict(overrides or {}))


def _resume_config(out: Path, overrides: dict):
    """``(config, checkpoint)`` of the run in ``out`` that --resume continues: its saved settings with
    ``overrides``. What cannot be continued is refused before anything is written."""
    from tinygpt.checkpoint import check_run_to_resume, load_checkpoint

    check_run_to_resume(out, "fine-tuning run", overrides)
    unknown = sorted(set(overrides) - FIELDS)
    if unknown:
        raise TinyGPTError(f"unknown setting {unknown[0]!r}")
    ckpt = load_checkpoint(out, backend=overrides.get("backend"))  # None: the run's own
    if "tinygpt_classifier" not in loads_json((ckpt.path / "config.json").read_text()):
        raise TinyGPTError(f"{out} holds a language model from `tinygpt train`, not a `tinygpt finetune` "
                           "classifier, so --resume cannot continue it (`tinygpt train --resume` does)")
    if "sampler_rng" not in ckpt.state:  # (saved before fine-tuning could resume: no moments either)
        raise TinyGPTError(f"{out} was fine-tuned by an older tinygpt, whose checkpoints lack what --resume "
                           "needs (the AdamW moments and the batch order's position): start a new run; "
                           "predict and eval still read this one")
    saved = ckpt.train_config
    for name in FROZEN_ON_RESUME:
        value = saved.get(name)
        if name not in overrides or (value is None and name in SCRATCH_DEFAULTS):
            continue  # (a shape or tokenizer flag on a run from --init-from / --pretrained: validate() says
            # it is for a model from scratch, as to a new run)
        if value is None and name == "dropout":  # not given: the model's own, which the run kept
            value = ckpt.model.config.dropout
        if not _same_setting(overrides[name], value):
            raise TinyGPTError(f"cannot change {_flag(name)} when resuming ({value!r} in {out})")
    values = {**{k: v for k, v in saved.items() if k in FIELDS}, **overrides, "out": str(out)}
    if "epochs" in overrides and "max_iters" not in overrides:  # the length given, in epochs: not lost to a
        values["max_iters"] = None  # saved --max-iters, which a new run's --epochs never had to beat
    return FinetuneConfig(**values).validate(), ckpt


def _same_setting(given, saved) -> bool:
    """Whether a setting given again on --resume is the saved one: label lists compare as text (the CLI's
    are text, a .jsonl's saved labels may be integers)."""
    if isinstance(given, (list, tuple)) and isinstance(saved, list):
        return [str(x).strip() for x in given] == [str(x) for x in saved]
    return given == saved


def _split_digest(train_rows: np.ndarray, val_rows: np.ndarray) -> str:
    """The sha256 of a split's row numbers: a resumed run's batch order is of the training rows it names."""
    digest = hashlib.sha256(np.asarray(train_rows, dtype="<i8").tobytes())
    digest.update(b"/")
    digest.update(np.asarray(val_rows, dtype="<i8").tobytes())
    return digest.hexdigest()


def _rows_digest(texts: list[str], label_ids: np.ndarray, names: list) -> str:
    """The sha256 of the rows themselves, each text and its class name: what a resumed run is trained on,
    whatever the file's layout (.jsonl or .csv, key order, spacing, other fields)."""
    rows = [texts, [str(names[i]) for i in label_ids]]
    return hashlib.sha256(json.dumps(rows, ensure_ascii=True).encode()).hexdigest()


def _warn_if_resume_is_not_exact(saved: dict, now: dict, step: int) -> None:
    """One line on stderr (even with --quiet) for each change that makes a resumed run differ from the
    uninterrupted one, as ``tinygpt train --resume`` warns: allowed, but metrics.jsonl is then not one
    run's."""
    from tinygpt.train import backend_change

    notes = []
    # the rows' digest where the run saved one (a file rewritten with the same rows changes nothing), else
    # the file's, as the first resumable checkpoints recorded it (the split is the run's: checked before)
    key = "rows_sha256" if "rows_sha256" in saved else "data_sha256"
    if saved.get(key) != now[key]:
        if saved.get("data") != now["data"]:
            notes.append(f"the data changed from {saved.get('data')} to {now['data']}: its rows split as "
                         "before, but their texts or labels differ")
        else:
            notes.append(f"the texts or labels of {now['data']} changed since the run started (its rows "
                         "split as before)")
    if saved.get("batch_size") != now["batch_size"]:
        notes.append(f"--batch-size changed from {saved.get('batch_size')!r} to {now['batch_size']!r}: the "
                     "batches change")
    notes += filter(None, [backend_change(saved, now)])  # (the backends that ran, not their names: "auto")
    if saved.get("total_steps") != now["total_steps"] and step < now["total_steps"]:
        notes.append(f"the run's length changed from {saved.get('total_steps')} to {now['total_steps']} "
                     f"steps: the learning rate now decays to --min-lr at step {now['total_steps']}, where "
                     f"the steps so far followed a decay to step {saved.get('total_steps')}")
    for note in notes:
        say_on_stderr(f"tinygpt: warning: {note}; the resumed run is not the uninterrupted one")


def _finetune_classifier(cfg: FinetuneConfig, quiet: bool, resume: bool, overrides: dict) -> dict:
    from tinygpt.checkpoint import (
        check_metrics_are_ours,
        check_new_run_dir,
        check_out_holds_no_run,
        repair_best_link,
        save_checkpoint,
    )
    from tinygpt.data import rng_from_state, rng_state
    from tinygpt.kernels import fused_adamw, host_sum_squares
    from tinygpt.optim import AdamW, clip_grad_norm, grad_norm, lr_at
    from tinygpt.train import append_jsonl, read_metrics, truncate_metrics

    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise TinyGPTError(f"--out {out} exists and is not a directory")
    ckpt = None
    if resume:
        cfg, ckpt = _resume_config(out, overrides)
    elif out.is_dir():
        # before anything is written: never replace or delete what tinygpt did not write
        check_out_holds_no_run(out, classifier=True)
        check_new_run_dir(out)
        check_metrics_are_ours(out, {"step", "epoch"}, with_plot=False)  # (finetune draws no loss.png)

    def say(message):
        if not quiet:
            say_on_stderr(message)

    if ckpt is not None and "data" not in overrides and not Path(cfg.data).exists():
        raise TinyGPTError(f"the run's data file {cfg.data} is gone (moved or deleted?): to resume, give "
                           "--data FILE holding its rows")
    texts, raw_labels, splits = read_labelled(cfg.data)
    data_path = Path(cfg.data).resolve()
    try:
        names, label_ids = label_vocabulary(raw_labels, cfg.labels)
    except TinyGPTError as exc:
        if ckpt is None:
            raise
        raise TinyGPTError(f"cannot resume {out} on {cfg.data}: {exc}, where the run's classes are "
                           f"{cfg.labels}; restore the file or start a new run") from None
    train_rows, val_rows = split_indices(label_ids, splits, cfg.val_fraction, cfg.seed, len(names), names)
    # Another file, or this one edited, continues the run only if its rows split as the run's did: the
    # saved batch order is a permutation of those training rows, and the best checkpoint was chosen on
    # those validation rows. Texts or labels changed in place split alike: only a warning, as train's
    split_sha256 = _split_digest(train_rows, val_rows)
    if ckpt is not None and ckpt.train_config.get("split_sha256") != split_sha256:
        raise TinyGPTError(f"cannot resume {out} on {cfg.data}: its rows no longer split into the run's "
                           "training and validation rows (rows added, removed, moved or given another split "
                           "or label since it started), and the batch order it continues is of those rows; "
                           "restore the file or start a new run")
    if ckpt is not None:
        model, tokenizer = ckpt.model, ckpt.tokenizer
        meta, head = _classifier_parts(ckpt, out)
        source = meta.get("source", "its checkpoint")
    else:
        model, tokenizer, source = _load_body(cfg, texts)
        head = init_head(model.config.n_embd, len(names), cfg.seed, model.dtype)
    if cfg.dropout is not None:
        model.config.dropout = float(cfg.dropout)
    model.recompute = bool(cfg.recompute)
    seqs, n_truncated = encode_texts(tokenizer, texts, model.config.block_size, model.config.vocab_size,
                                     where=str(cfg.data))
    train_seqs = [seqs[i] for i in train_rows]
    val_seqs = [seqs[i] for i in val_rows]
    y_train, y_val = label_ids[train_rows], label_ids[val_rows]
    trainable = dict(head) if cfg.freeze_body else {**model.params, **head}
    # as train's: with the numba backend one fused pass per tensor (same math, same state)
    optimizer = AdamW(trainable, lr=cfg.learning_rate, betas=(0.9, 0.99), weight_decay=cfg.weight_decay,
                      kernel=fused_adamw(model.ops))
    # the gradient norm's sum of host arrays: numba's one pass, else NumPy's; never the cuda backend's, which
    # sent the head's gradients (on the host) to the GPU and back, two waits each step
    sum_squares = host_sum_squares(model.ops)
    steps_per_epoch = math.ceil(len(train_rows) / cfg.batch_size)
    max_iters = cfg.max_iters or cfg.epochs * steps_per_epoch
    min_lr = cfg.learning_rate / 10 if cfg.min_lr is None else cfg.min_lr
    warmup = min(cfg.warmup_iters, max_iters)
    info = {"data": str(data_path), "val_fraction": cfg.val_fraction, "seed": cfg.seed,
            "freeze_body": cfg.freeze_body, "source": source}
    # the data path absolute (resumable from any directory), the file's sha256 and its split's, and the
    # run's length in steps (its schedule decays over it): what a resume checks its own against
    record = {**cfg.to_dict(), "data": str(data_path), "task": "classify", "labels": names,
              "data_sha256": hashlib.sha256(data_path.read_bytes()).hexdigest(), "split_sha256": split_sha256,
              "rows_sha256": _rows_digest(texts, label_ids, names), "total_steps": max_iters,
              "backend_used": model.ops.name}
    metrics_path = out / "metrics.jsonl"
    # the loop's state, saved with each checkpoint: the best evaluation so far (DIR/best names it; its
    # accuracy is the best accuracy, its val loss the tie-breaker) and the seconds run, over every run
    state = {"step": 0, "best_step": None, "best_val_acc": None, "best_val_loss": None, "elapsed": 0.0}
    # the batch order: a permutation of the training rows each epoch, drawn from `rng`, taken batch by
    # batch from `position`. A checkpoint saves the generator as it was BEFORE it drew this epoch's order
    # (`order_drawn_from`) and the position: a resume draws the same order again, which leaves the
    # generator where the uninterrupted run's is, without saving the order itself (one id a row)
    rng = np.random.default_rng([cfg.seed, 6])
    position = 0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt.optimizer_state)
        optimizer.weight_decay = cfg.weight_decay  # (a flag that may change on resume)
        state.update({k: ckpt.state[k] for k in state if k in ckpt.state})
        rng = rng_from_state(ckpt.state["sampler_rng"])
        position = ckpt.state.get("epoch_position")
        if not (is_int(position) and 0 <= position <= len(train_rows)):
            raise TinyGPTError(f"corrupt checkpoint: {ckpt.path / 'state.json'} has an invalid "
                               f"epoch_position ({position!r}) for {len(train_rows)} training rows")
        best_score = [state["best_val_acc"], state["best_val_loss"]]  # compared with each new evaluation's
        if state["best_step"] is not None and not all(is_number(v) and math.isfinite(v) for v in best_score):
            raise TinyGPTError(f"corrupt checkpoint: {ckpt.path / 'state.json'} has best_step "
                               f"{state['best_step']} with best_val_acc and best_val_loss {best_score}")
        if ckpt.state.get("dropout_rng"):
            model.dropout_rng = rng_from_state(ckpt.state["dropout_rng"])
        repair_best_link(out, ckpt.state)
        truncate_metrics(metrics_path, state["step"])
        _warn_if_resume_is_not_exact(ckpt.train_config, record, state["step"])
    first_step = int(state["step"])
    verb = "fine-tuning" if cfg.init_from or cfg.pretrained else "training"
    if ckpt is None:
        say(f"{verb} {'the head only (body frozen)' if cfg.freeze_body else 'every parameter'} of a "
            f"{model.num_params():,}-parameter GPT from {source}: {len(names)} classes {names}, "
            f"{len(train_rows)} train / {len(val_rows)} val texts, "
            f"{max_iters} step{'s' * (max_iters != 1)} of {cfg.batch_size}")
    elif first_step >= max_iters:
        length = f"--max-iters {max_iters}" if cfg.max_iters else f"{max_iters} steps (--epochs {cfg.epochs})"
        say(f"{out} is already at step {first_step} >= {length}; nothing to do")
    else:
        say(f"resuming {out} at step {first_step} of {max_iters}")
    if not len(val_rows):
        say("note: no validation split: only the training loss and accuracy are reported")
    if n_truncated:
        say(f"note: {n_truncated} of {len(texts)} texts are longer than block_size "
            f"{model.config.block_size} tokens and were truncated to their first {model.config.block_size}")

    if ckpt is None:
        out.mkdir(parents=True, exist_ok=True)
        if metrics_path.exists():
            metrics_path.unlink()  # metrics of an earlier run that never saved a checkpoint
    # With a frozen body its features never change: compute them once, then train a softmax regression
    # (not for a finished run resumed, which trains nothing: a forward of the body over every text)
    frozen = cfg.freeze_body and first_step < max_iters
    frozen_train = pooled_features(model, train_seqs) if frozen else None
    frozen_val = pooled_features(model, val_seqs) if frozen and len(val_rows) else None
    order_drawn_from = rng_state(rng)
    epoch_order = rng.permutation(len(train_rows))
    start = time.perf_counter()
    elapsed_before = float(state["elapsed"])
    running = {"loss": 0.0, "correct": 0, "seen": 0}

    def evaluate_and_save(step, epoch, lr):
        row = {"step": step, "epoch": round(epoch, 3)}
        if running["seen"]:
            row["train_loss"] = running["loss"] / running["seen"]
            row["train_acc"] = running["correct"] / running["seen"]
        if len(val_rows):
            features = frozen_val if cfg.freeze_body else pooled_features(model, val_seqs)
            _, row["val_loss"], row["val_acc"] = _scores(features, head, y_val)
            # weights that give no finite val loss are not saved: they were the latest checkpoint, and the
            # best one too when the broken model's picks (argmax of NaN: class 0) scored a higher accuracy
            if not math.isfinite(row["val_loss"]):
                value = row["val_loss"]
                if step == 0:  # (a new run's first evaluation: no update ran, no learning rate is to blame)
                    raise TinyGPTError(f"the val loss is {value} at step 0, before any update: the starting "
                                       f"weights give no finite loss; nothing was saved in {out}")
                raise TinyGPTError(f"fine-tuning diverged: the val loss is {value} at step {step}; the last "
                                   f"good checkpoint (step {state['step']}) is kept in {out}; try a lower "
                                   "--learning-rate")
        elif not math.isfinite(grad_norm({**model.params, **head}, sum_squares)):
            # no val split to score them: that they are finite is what can be told (one pass, as a gradient
            # norm is); NaN weights were saved
            if step == 0:
                raise TinyGPTError(f"the starting weights hold a non-finite value (step 0, before any "
                                   f"update); nothing was saved in {out}")
            raise TinyGPTError(f"fine-tuning diverged: the weights hold a non-finite value at step {step}; "
                               f"the last good checkpoint (step {state['step']}) is kept in {out}; try a "
                               "lower --learning-rate")
        # the checkpoint DIR/best names: the highest val accuracy, then the lowest val loss
        best = "val_acc" in row and (state["best_step"] is None or (row["val_acc"], -row["val_loss"]) >
                                     (state["best_val_acc"], -state["best_val_loss"]))
        if best:
            state.update(best_step=step, best_val_acc=row["val_acc"], best_val_loss=row["val_loss"])
        state["step"] = step
        state["elapsed"] = elapsed_before + time.perf_counter() - start
        row.update({"lr": lr, "elapsed": round(state["elapsed"], 3)})
        append_jsonl(metrics_path, row)  # before the checkpoint: resume truncates rows past its step
        save_checkpoint(out, _ClassifierForSaving(model, head, names, info), tokenizer, optimizer, record, {
            **state, **{k: row[k] for k in ("val_acc", "val_loss") if k in row},
            "sampler_rng": order_drawn_from, "epoch_position": position,
            "dropout_rng": rng_state(model.dropout_rng)}, best=best)
        shown = ", ".join(f"{k} {row[k]:.4f}" for k in ("train_loss", "train_acc", "val_loss", "val_acc")
                          if k in row)
        # step 0 without a validation split has nothing measured yet (train metrics are running means)
        say(f"step {step} (epoch {epoch:.2f}): {shown or 'nothing to evaluate yet (no validation split)'}")
        running.update(loss=0.0, correct=0, seen=0)

    if ckpt is None:
        evaluate_and_save(0, 0.0, lr_at(0, cfg.learning_rate, warmup, max_iters, min_lr))
    model.train()
    for step in range(first_step, max_iters):
        if position >= len(epoch_order):
            order_drawn_from = rng_state(rng)
            epoch_order, position = rng.permutation(len(train_rows)), 0
        batch = epoch_order[position : position + cfg.batch_size]
        position += len(batch)
        lr = lr_at(step, cfg.learning_rate, warmup, max_iters, min_lr)
        if cfg.freeze_body:
            logits, loss, c_head = head_loss_forward(frozen_train[batch], head[HEAD_WEIGHT], head[HEAD_BIAS],
                                                     y_train[batch])
            _, dweight, dbias = head_loss_backward(1.0, c_head)
            grads = {HEAD_WEIGHT: dweight, HEAD_BIAS: dbias}
        else:
            idx, lengths = pad_batch([train_seqs[i] for i in batch])
            logits, loss, cache = classifier_forward(model, head, idx, lengths, y_train[batch])
            grads = classifier_backward(cache)
        if not math.isfinite(loss):
            # named by `step`, the updates these weights have had, as the val loss's check names them: the
            # weights the third update broke were "at step 3" when an evaluation found them and "at step 4"
            # when the next training batch did (train names them so too)
            if state["step"] != step:
                raise TinyGPTError(f"fine-tuning diverged: the loss is {loss} at step {step}, on a training "
                                   f"batch; the last good checkpoint (step {state['step']}) is kept in "
                                   f"{out}; try a lower --learning-rate")
            # on a checkpoint's own weights, which no learning rate moves: a --resume restores them and the
            # batch order's place, draws this batch again and stops on it, so a lower rate cannot help there
            if step == 0:
                raise TinyGPTError(f"the loss is {loss} at step 0, on a training batch, before any update: "
                                   "the starting weights give it, whatever the --learning-rate (the "
                                   f"checkpoint of these weights is kept in {out})")
            raise TinyGPTError(f"fine-tuning diverged: the loss is {loss} at step {step}, on a training "
                               f"batch; the checkpoint of these weights (step {step}) is kept in {out}; a "
                               "--resume draws this batch on them again, whatever its --learning-rate: start "
                               "the run again with a lower --learning-rate")
        clip_grad_norm(grads, cfg.grad_clip, sum_squares)
        optimizer.step(grads, lr=lr)
        running["loss"] += float(loss) * len(batch)
        running["correct"] += int(np.sum(logits.argmax(axis=1) == y_train[batch]))
        running["seen"] += len(batch)
        done = step + 1
        if done % cfg.eval_interval == 0 or done == max_iters:
            evaluate_and_save(done, done / steps_per_epoch,
                              lr_at(done, cfg.learning_rate, warmup, max_iters, min_lr))
            model.train()
    try:
        rows = read_metrics(metrics_path)
    except OSError as exc:
        # every step ran and was saved: a summary without its last val figures is no reason to report the
        # finished run as failed (exit 2), as train's summary does without its val loss
        say_on_stderr(f"tinygpt: warning: the summary has no val accuracy ({exc.strerror or exc}: "
                      f"{metrics_path}); the run's checkpoint and metrics are saved")
        rows = [{}]
    last = rows[-1] if rows else {}
    elapsed = elapsed_before + time.perf_counter() - start
    summary = {"out": str(out), "step": int(state["step"]), "val_acc": last.get("val_acc"),
               "val_loss": last.get("val_loss"), "best_val_acc": state["best_val_acc"],
               "best_step": state["best_step"], "elapsed": elapsed, "labels": names,
               "train_size": len(train_rows), "val_size": len(val_rows), "truncated": n_truncated}
    if not quiet:
        acc = (f"{summary['val_acc']:.4f}" if summary["val_acc"] is not None
               else "n/a (no val split)" if len(val_rows) == 0 else "n/a")
        took = f"{elapsed:.1f} s"
        if elapsed_before:  # a resumed run: the total is over every run of this directory
            took += f" in all, {elapsed - elapsed_before:.1f} s in this run"
        print(f"done: {summary['step']} steps in {took}; val accuracy {acc}; checkpoint in {out}")
    return summary


# --- using a fine-tuned classifier --------------------------------------------------------------------


@dataclass
class Classifier:
    """A loaded classifier: the GPT body, its tokenizer, the head and the label names."""

    model: object
    tokenizer: object
    head: dict
    labels: list
    meta: dict  # config.json's tinygpt_classifier entry
    train_config: dict


def is_classifier_dir(out_dir) -> bool:
    """True when ``out_dir``'s current checkpoint is a classifier (its config has tinygpt_classifier)."""
    from tinygpt.checkpoint import checkpoint_path

    try:
        path = checkpoint_path(out_dir)
        return path is not None and "tinygpt_classifier" in loads_json((path / "config.json").read_text())
    except (OSError, ValueError):
        return False


def load_classifier(out_dir, backend: str = "numpy") -> Classifier:
    """The classifier saved in ``out_dir`` by :func:`finetune_classifier` (verified like any checkpoint)."""
    from tinygpt.checkpoint import load_checkpoint
    from tinygpt.model import non_finite_weight

    ckpt = load_checkpoint(out_dir, backend=backend, with_optimizer=False)
    meta, head = _classifier_parts(ckpt, out_dir)
    # a weight that is NaN or inf (a diverged run's, saved before finetune checked) made predict and eval
    # print NaN probabilities as scores
    found = non_finite_weight({**ckpt.model.params, **head}, ckpt.model.ops)
    if found is not None:
        raise TinyGPTError(f"the classifier checkpoint {ckpt.path} holds non-finite weights ({found}), which "
                           "give NaN probabilities; use an earlier checkpoint or fine-tune again")
    return Classifier(ckpt.model, ckpt.tokenizer, head, meta["labels"], meta, ckpt.train_config)


def _classifier_parts(ckpt, out_dir) -> tuple[dict, dict]:
    """``(config.json's tinygpt_classifier entry, the head's tensors)`` of a loaded checkpoint."""
    from safetensors.numpy import load_file

    config = json.loads((ckpt.path / "config.json").read_text())
    meta = config.get("tinygpt_classifier")
    if not isinstance(meta, dict) or not isinstance(meta.get("labels"), list):
        raise TinyGPTError(f"{out_dir} holds a language model, not a classifier (train one with "
                           "`tinygpt finetune --task classify`)")
    tensors = load_file(str(ckpt.path / "model.safetensors"))
    if HEAD_WEIGHT not in tensors:
        raise TinyGPTError(f"corrupt classifier checkpoint in {ckpt.path}: no {HEAD_WEIGHT}")
    head = {name: np.ascontiguousarray(tensors[name], dtype=ckpt.model.dtype)
            for name in (HEAD_WEIGHT, HEAD_BIAS) if name in tensors}
    if head[HEAD_WEIGHT].shape != (ckpt.model.config.n_embd, len(meta["labels"])):
        raise TinyGPTError(f"corrupt classifier checkpoint in {ckpt.path}: {HEAD_WEIGHT} has shape "
                           f"{head[HEAD_WEIGHT].shape} for {len(meta['labels'])} labels")
    return meta, head


def predict_proba(clf: Classifier, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Label probabilities (N, K) of texts (truncated like the training texts)."""
    # a str was read as a list of its characters: one row of probabilities per character, without a word
    not_a_list = (f"predict_proba: texts must be a list of strings (for one text: [text]), got "
                  f"{type(texts).__name__}")
    if isinstance(texts, (str, bytes)):
        raise TinyGPTError(not_a_list)
    try:
        texts = list(texts)
    except TypeError:  # (None: list()'s own error)
        raise TinyGPTError(not_a_list) from None
    cfg = clf.model.config
    seqs, _ = encode_texts(clf.tokenizer, texts, cfg.block_size, cfg.vocab_size, where="input", advice="")
    return _scores(pooled_features(clf.model, seqs, batch_size), clf.head)[0]


def confusion_matrix(true_ids: np.ndarray, pred_ids: np.ndarray, n_classes: int) -> np.ndarray:
    """(K, K) counts: row = true class, column = predicted class."""
    true_ids, pred_ids = np.asarray(true_ids), np.asarray(pred_ids)
    for name, ids in (("true_ids", true_ids), ("pred_ids", pred_ids)):  # a -1 was counted as class K - 1
        if ids.shape != true_ids.shape or ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise TinyGPTError(f"confusion_matrix: {name} must be a 1-D integer array of the length of "
                               f"true_ids, got {ids.dtype} {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= n_classes):
            raise TinyGPTError(f"confusion_matrix: {name} must be class ids in [0, {n_classes}), got "
                               f"[{ids.min()}, {ids.max()}]")
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (true_ids, pred_ids), 1)
    return matrix


def evaluate_classifier(out_dir, data: str | None = None, split: str = "val", batch_size: int = 64,
                        backend: str = "numpy", max_batches: int | None = None) -> dict:
    """Loss, accuracy and confusion matrix of a classifier on a split of labelled data.

    ``data`` defaults to the file it was fine-tuned on; the split is recomputed exactly as in training
    (same rows with the same val_fraction and seed, or the file's own split fields).
    """
    if split not in ("train", "val", "all"):
        raise TinyGPTError(f"unknown split {split!r}: choose train, val or all")
    _batches_by_length([], batch_size)  # checks batch_size before anything loads
    if max_batches is not None and (not is_int(max_batches) or max_batches < 1):  # (1.5 ran 2 batches)
        raise TinyGPTError(f"--max-batches must be an integer >= 1, got {shown(max_batches)}")
    clf = load_classifier(out_dir, backend=backend)
    path = data or clf.meta.get("data")
    texts, raw_labels, splits = read_labelled(path)
    if all(isinstance(name, int) for name in clf.labels):  # a CSV's labels are text: "0" is the label 0
        # (ASCII digits, as label_vocabulary reads them: \d and int() also took "١", an Arabic-Indic one)
        raw_labels = [int(label) if isinstance(label, str) and re.fullmatch(r"-?[0-9]+", label.strip())
                      else label for label in raw_labels]
    elif all(isinstance(name, str) for name in clf.labels):  # ... and a JSONL's 0 is a CSV's label "0"
        raw_labels = [str(label) if isinstance(label, int) and not isinstance(label, bool) else label
                      for label in raw_labels]
    unknown = sorted({label for label in raw_labels if label not in clf.labels}, key=str)
    if unknown:
        raise TinyGPTError(f"{path}: label {unknown[0]!r} is not one of the classifier's {clf.labels}")
    index = {name: i for i, name in enumerate(clf.labels)}
    label_ids = np.array([index[label] for label in raw_labels], dtype=np.int64)
    if split == "all":
        rows = np.arange(len(texts))
    else:
        train_rows, val_rows = _split_for_eval(label_ids, splits, clf, len(clf.labels))
        rows = val_rows if split == "val" else train_rows
    if max_batches is not None:
        rows = rows[: max_batches * batch_size]
    if not len(rows):
        hint = " (as after fine-tuning with --val-fraction 0): try --split train" if split == "val" else ""
        raise TinyGPTError(f"the {split} split of {path} is empty{hint}")
    cfg = clf.model.config
    # (an error names the text by its place in the file, not in the split)
    seqs, truncated = encode_texts(clf.tokenizer, [texts[i] for i in rows], cfg.block_size, cfg.vocab_size,
                                   where=str(path), advice="", numbers=[int(i) + 1 for i in rows])
    probs, loss, acc = _scores(pooled_features(clf.model, seqs, batch_size), clf.head, label_ids[rows])
    pred = probs.argmax(axis=1)
    return {"data": str(path), "split": split, "n": len(rows), "loss": loss, "accuracy": acc,
            "labels": clf.labels, "confusion": confusion_matrix(label_ids[rows], pred, len(clf.labels)),
            "truncated": truncated,
            "majority_accuracy": float(np.max(np.bincount(label_ids[rows], minlength=len(clf.labels))))
            / len(rows)}


def _split_for_eval(label_ids, splits, clf, n_classes):
    try:
        return split_indices(label_ids, splits, clf.meta.get("val_fraction", 0.1), clf.meta.get("seed", 0),
                             n_classes, clf.labels)
    except TinyGPTError:  # a class without training rows in this file: the validation side is still valid
        is_val = np.array([s == "val" for s in splits]) if splits and splits[0] else None
        if is_val is None:
            raise
        return np.flatnonzero(~is_val), np.flatnonzero(is_val)


# the confusion matrix figure: its largest side, and up to how many classes have their names on the axes
# and their counts in the cells
_CONFUSION_MAX_INCHES, _CONFUSION_MAX_NAMED, _CONFUSION_MAX_COUNTED = 16, 60, 30


def plot_confusion_matrix(matrix: np.ndarray, labels: list, path, title: str = "") -> Path:
    """A PNG of the confusion matrix (rows: true class, columns: predicted), counts in the cells.

    The figure grows with the classes up to 16 inches a side; past 30 classes the cells hold no counts and
    past 60 the axes name no classes (they are in the printed matrix's order).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(labels)
    # about an inch a class, up to a bound: a figure growing with the classes peaked at 5 GB of memory
    # for 100 classes and was killed for want of memory at 600, after the scoring had finished
    side = _CONFUSION_MAX_INCHES
    fig = Figure(figsize=(min(1.2 * n + 2.5, side), min(1.1 * n + 1.8, side)), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = range(n)
    if n <= _CONFUSION_MAX_NAMED:  # (more names than fit: the classes are the printed matrix's, in order)
        # the labels are the user's text: "$$" (a price level) is not mathtext, whose parser raised on it
        ax.set_xticks(ticks, [str(label) for label in labels], rotation=30, ha="right", parse_math=False)
        ax.set_yticks(ticks, [str(label) for label in labels], parse_math=False)
    ax.set_xlabel("predicted" if n <= _CONFUSION_MAX_NAMED else f"predicted (class index of {n})")
    ax.set_ylabel("true" if n <= _CONFUSION_MAX_NAMED else f"true (class index of {n})")
    threshold = matrix.max() / 2 if matrix.size else 0
    if n <= _CONFUSION_MAX_COUNTED:  # a count per cell only where a cell can hold one
        for i in ticks:
            for j in ticks:
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                        color="white" if matrix[i, j] > threshold else "black")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    if path.is_dir():
        raise TinyGPTError(f"cannot write the confusion matrix to {path}: it is a directory")
    image = io.BytesIO()
    fig.savefig(image, format="png")
    write_atomic(path, image.getvalue())  # whole or absent, and no temporary left behind on failure
    return path
