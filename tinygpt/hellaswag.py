"""HellaSwag accuracy in the completion style of llm.c and build-nanogpt.

HellaSwag (Zellers et al. 2019; the files are in github.com/rowanz/hellaswag, ``data/hellaswag_val.jsonl``:
10,042 examples) gives a context and a few candidate endings, one of them right. A language model picks the
ending it finds most likely: each ending is appended to the context (as the tokens of ``" " + ending``), the
model reads context + ending, and the log-probabilities of the ending's tokens, each given the tokens before
it, are added up. The context's own tokens are not scored: they are the same for every ending.

Two accuracies come out of the same forward pass:

* ``acc``: the ending of the highest summed log-likelihood is the prediction. It favours short endings, which
  have fewer tokens to lose probability on.
* ``acc_norm``: the highest mean log-likelihood per ending token, llm.c's and build-nanogpt's normalisation.

EleutherAI's lm-evaluation-harness scores HellaSwag differently: its ``acc_norm`` divides by the ending's
length in characters, not tokens, and it first rewrites the text (the activity label put in front of the
context, WikiHow's bracketed markers such as ``[title]`` removed), so its figures for the same model differ.

An example longer than the model's context (``block_size`` tokens read, so ``block_size + 1`` tokens in all:
the last is only predicted) keeps its last ``block_size + 1`` tokens, each ending with as much of the end of
the context as fits; the context's oldest tokens are dropped, as a sliding window would. An ending that alone
does not fit (more than ``block_size`` tokens: its first token must be predicted from the context's last) is
refused, naming the example: scored on a part of itself it would be a different question.

``evaluate(model, tokenizer, path)`` is the whole evaluation; ``iter_examples``, ``render`` and ``score`` are
its steps, for a notebook to look into one example.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from tinygpt.errors import TinyGPTError, is_int, shown

WHERE_TO_GET_IT = "github.com/rowanz/hellaswag, data/hellaswag_val.jsonl"


@dataclass(frozen=True)
class Example:
    """One HellaSwag item: the context, its candidate endings, the index of the right one, and where it was
    read (``"FILE:LINE"``, for error messages)."""

    ctx: str
    endings: tuple[str, ...]
    label: int
    where: str = "example"


def iter_examples(path: str | os.PathLike, limit: int | None = None):
    """The examples of a HellaSwag ``.jsonl`` file (its first ``limit``), checked one line at a time.

    Each line is a JSON object with ``ctx`` (a non-empty string), ``endings`` (a list of two or more strings)
    and ``label`` (an integer index into ``endings``, or a string of its digits as Hugging Face's copy of the
    dataset writes it); other fields (``ind``, ``activity_label``, ``ctx_a``,
    ...) are ignored, and blank lines skipped. Anything else is a TinyGPTError naming ``FILE:LINE``; so is a
    file with no examples. The lines past the ``limit``-th example are not looked at.
    """
    from tinygpt.data import refuse_device
    from tinygpt.files import loads_json

    if limit is not None and (not is_int(limit) or limit < 1):
        raise TinyGPTError(f"--limit must be an integer >= 1, got {shown(limit)}")
    path = Path(path)
    if path.is_dir():
        raise TinyGPTError(f"HellaSwag path is a directory, not a file: {path}")
    refuse_device(path, "HellaSwag path")
    if not path.is_file():
        raise TinyGPTError(f"HellaSwag file not found: {path} (get it from {WHERE_TO_GET_IT})")
    raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")  # (a leading BOM, as some editors write, dropped)
    count = 0
    # lines end at \n only: str.splitlines would also cut at U+2028 or U+0085, which JSON strings may hold raw
    # (and a \n byte is never inside a UTF-8 character, so the bytes split where the text would)
    for number, data in enumerate(raw.split(b"\n"), 1):
        if limit is not None and count >= limit:
            return
        where = f"{path}:{number}"
        try:
            line = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TinyGPTError(f"{where}: not UTF-8 text (byte {exc.start} of the line)") from None
        if not line.strip():
            continue
        try:
            row = loads_json(line)
        except ValueError as exc:
            raise TinyGPTError(f"{where}: not valid JSON ({exc})") from None
        yield _example(row, where)
        count += 1
    if count == 0:
        raise TinyGPTError(f"{path} holds no examples (HellaSwag's: {WHERE_TO_GET_IT})")


def _example(row, where: str) -> Example:
    """A parsed line checked and made an ``Example``."""
    if not isinstance(row, dict):
        raise TinyGPTError(f"{where}: expected a JSON object with ctx, endings and label, got "
                           f"{type(row).__name__}")
    for name in ("ctx", "endings", "label"):
        if name not in row:
            # (HellaSwag's own hellaswag_test.jsonl has no labels: they are kept secret for its leaderboard)
            hint = " (an unlabelled example: HellaSwag's test split has none; score the val split)" \
                if name == "label" else ""
            raise TinyGPTError(f"{where}: missing {name}{hint}")
    ctx, endings, label = row["ctx"], row["endings"], row["label"]
    if not isinstance(ctx, str):
        raise TinyGPTError(f"{where}: ctx must be a string, got {shown(ctx)}")
    if not ctx:  # its last token predicts each ending's first: with none, that token has nothing to go on
        raise TinyGPTError(f"{where}: ctx is empty")
    if not isinstance(endings, list) or not all(isinstance(e, str) for e in endings):
        raise TinyGPTError(f"{where}: endings must be a list of strings, got {shown(endings)}")
    if len(endings) < 2:
        count = f"{len(endings)} ending" + ("" if len(endings) == 1 else "s")
        raise TinyGPTError(f"{where}: {count}, a choice needs at least 2")
    # Hugging Face's copy of HellaSwag (the "Rowan/hellaswag" dataset, saved with to_json) writes the label
    # as a string of digits, "3", and its test split's as "" (HellaSwag keeps the test labels secret)
    if isinstance(label, str) and label.isascii() and label.isdigit() and len(label) <= 6:
        label = int(label)
    elif label == "":
        raise TinyGPTError(f"{where}: label is empty: an unlabelled example (HellaSwag's test split has no "
                           "labels; score the val split)")
    if not is_int(label):  # (not a bool, nor 1.0: an index into endings)
        raise TinyGPTError(f"{where}: label must be an integer index into endings (or a string of its "
                           f"digits), got {shown(label)}")
    if not 0 <= label < len(endings):
        raise TinyGPTError(f"{where}: label {label} is out of range for {len(endings)} endings (0 to "
                           f"{len(endings) - 1})")
    return Example(ctx, tuple(endings), int(label), where)


class Rendered(NamedTuple):
    """An example as token ids: ``tokens`` (E, L) int64, one row per ending, context + ending, right-padded
    with id 0; ``mask`` (E, L) bool, True on the ending's tokens (the ones scored; the context and the
    padding are not); ``cut``, how many of the context's oldest tokens the longest row dropped to fit."""

    tokens: np.ndarray
    mask: np.ndarray
    cut: int


def render(example: Example, tokenizer, block_size: int | None = None) -> Rendered:
    """Token rows and the mask of the tokens to score, for one example; see ``Rendered``.

    Each ending is tokenized as ``" " + ending``, after the context's tokens. With ``block_size`` (the
    model's context), a row longer than ``block_size + 1`` tokens drops its context's oldest tokens; an
    ending of more than ``block_size`` tokens is refused.

    >>> from tinygpt.tokenizer import CharTokenizer
    >>> tok = CharTokenizer.train(" abcd")  # ids: " " 0, a 1, b 2, c 3, d 4
    >>> tokens, mask, cut = render(Example("ab", ("c", "dd"), 1), tok)
    >>> tokens.tolist(), mask.astype(int).tolist()
    ([[1, 2, 0, 3, 0], [1, 2, 0, 4, 4]], [[0, 0, 1, 1, 0], [0, 0, 1, 1, 1]])
    >>> tokens, mask, cut = render(Example("ab", ("c", "dd"), 1), tok, block_size=3)
    >>> tokens.tolist(), mask.astype(int).tolist(), cut
    ([[1, 2, 0, 3], [2, 0, 4, 4]], [[0, 0, 1, 1], [0, 1, 1, 1]], 1)
    """
    try:
        ctx = tokenizer.encode(example.ctx)
        endings = [tokenizer.encode(" " + ending) for ending in example.endings]
    except TinyGPTError as exc:  # (a character a char-level vocabulary lacks, a lone surrogate)
        raise TinyGPTError(f"{example.where}: {exc}") from None
    cut = 0
    if block_size is not None:
        longest = max(range(len(endings)), key=lambda i: len(endings[i]))
        n = len(endings[longest])
        if n > block_size:
            raise TinyGPTError(f"{example.where}: ending {longest} is {n} tokens, more than the model's "
                               f"context of {block_size} can score")
        cut = max(0, len(ctx) + n - (block_size + 1))
    rows = []
    for ending in endings:  # each row keeps as much of the end of the context as fits beside its ending
        start = 0 if block_size is None else max(0, len(ctx) + len(ending) - (block_size + 1))
        rows.append(ctx[start:] + ending)
    width = max(len(row) for row in rows)
    tokens = np.zeros((len(rows), width), dtype=np.int64)  # (E, L)
    mask = np.zeros((len(rows), width), dtype=bool)  # (E, L)
    for i, (row, ending) in enumerate(zip(rows, endings)):
        tokens[i, : len(row)] = row
        mask[i, len(row) - len(ending) : len(row)] = True
    return Rendered(tokens, mask, cut)


def token_log_probs(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """log softmax(logits)[target] for each row: logits (N, V), targets (N,) int -> (N,) float64.

    log p = (z_t - m) - log(sum exp(z - m)) with m the row's max: exp never overflows, and the two terms are
    kept apart rather than rounded into one log-sum-exp (as ``layers.cross_entropy_forward`` does).

    >>> token_log_probs(np.array([[0.0, 0.0], [1000.0, 0.0]]), np.array([1, 0])).round(4).tolist()
    [-0.6931, 0.0]
    """
    m = logits.max(axis=-1, keepdims=True)  # (N, 1)
    s = np.exp(logits - m).sum(axis=-1)  # (N,) >= 1
    picked = logits[np.arange(len(targets)), targets] - m[:, 0]  # (N,) <= 0
    return picked.astype(np.float64) - np.log(s.astype(np.float64))


def score(model, tokens: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(summed, mean) log-likelihood of each row's masked tokens, each given the tokens before it: one
    forward pass of ``tokens[:, :-1]`` (E rows at once), in eval mode (the model's mode is restored after),
    the LM head applied at the N scored positions only.

    tokens, mask (E, L) as ``render`` makes them -> summed (E,), mean (E,) float64 (mean: per scored token).
    """
    inputs, targets = tokens[:, :-1], tokens[:, 1:]  # (E, L-1) each: position t predicts token t + 1
    scored = mask[:, 1:]  # (E, L-1) the positions that predict an ending token (no row's first token is one)
    was_training = model.training
    model.eval()
    try:
        hidden = model.forward_hidden(inputs, keep_caches=False)  # (E, L-1, C), on the host on every backend
    finally:
        model.train(was_training)
    # the head (x @ wte.T, GPT.forward's) where an ending token is predicted, not at every position: at
    # GPT-2's 50,257 tokens it is about a third of a forward's work, and most positions are the context's;
    # the logits are N x V, not E x (L-1) x V (with the cuda backend, nor copied back from the GPU whole)
    logits, _ = model.ops.lm_head_forward(hidden[scored], model.params["wte.weight"])  # (N, V)
    logits = model.ops.to_host(logits)
    rows = np.nonzero(scored)[0]  # (N,) the row of each scored position
    log_probs = token_log_probs(logits, targets[scored])  # (N,)
    summed = np.bincount(rows, weights=log_probs, minlength=len(tokens))  # (E,)
    return summed, summed / scored.sum(axis=1)


def _progress_bar(quiet: bool, **kwargs):
    """A tqdm bar on stderr, hidden when ``quiet`` or when stderr is closed (tqdm would write to None)."""
    if quiet:  # tqdm.auto in a Jupyter kernel without ipywidgets warns even for a disabled bar
        from tqdm.std import tqdm
    else:
        from tqdm.auto import tqdm
    return tqdm(disable=quiet or sys.stderr is None, unit="example", file=sys.stderr, **kwargs)


def render_all(examples, tokenizer, block_size: int, quiet: bool = True) -> list[Rendered]:
    """``render`` of each example, all before any is scored: one that cannot be scored is refused at once,
    not minutes into the scoring (tokenizing all of HellaSwag takes seconds: ``quiet=False`` shows a bar)."""
    # (the bar is closed, its line cleared, before an example it cannot render is refused: left open, the
    # one-line error was written on the end of the bar's line)
    with _progress_bar(quiet, iterable=examples, desc="tokenizing", leave=False) as tokenizing:
        return [render(example, tokenizer, block_size) for example in tokenizing]


def score_examples(model, tokenizer, examples, quiet: bool = True) -> dict:
    """``evaluate`` of examples already read (``iter_examples``); see there. ``quiet=False`` shows a
    progress bar on stderr."""
    examples = list(examples)
    return score_rendered(model, examples, render_all(examples, tokenizer, model.config.block_size, quiet),
                          quiet=quiet)


def score_rendered(model, examples, rendered, quiet: bool = True) -> dict:
    """``score_examples`` of examples already rendered (``rendered[i]`` is ``render`` of ``examples[i]``
    with the model's tokenizer and block size, as ``render_all`` makes them): what a training run scores at
    each evaluation, having rendered its examples once, at its start."""
    examples, rendered = list(examples), list(rendered)
    if not examples:
        raise TinyGPTError("no HellaSwag examples to score")
    if len(rendered) != len(examples):
        raise TinyGPTError(f"{len(rendered)} rendered examples for {len(examples)} examples")
    correct = correct_norm = cut = 0
    bar = _progress_bar(quiet, total=len(examples), desc="hellaswag")
    try:
        for done, (example, (tokens, mask, dropped)) in enumerate(zip(examples, rendered), 1):
            summed, mean = score(model, tokens, mask)
            # argmax picks a NaN (the first): a broken model's accuracy was the first ending's share of the
            # labels, printed as any other
            if not np.isfinite(summed).all():
                bad = int(np.flatnonzero(~np.isfinite(summed))[0])
                raise TinyGPTError(f"{example.where}: ending {bad}'s log-likelihood is {summed[bad]}: the "
                                   "model's logits are not all finite (a NaN or inf in its weights?)")
            correct += int(np.argmax(summed) == example.label)  # (argmax: the first of a tie)
            correct_norm += int(np.argmax(mean) == example.label)
            cut += dropped > 0
            bar.update(1)
            bar.set_postfix(acc_norm=f"{correct_norm / done:.4f}", refresh=False)
    finally:
        bar.close()
    n = len(examples)
    return {"examples": n, "correct": correct, "correct_norm": correct_norm, "acc": correct / n,
            "acc_norm": correct_norm / n, "cut": cut}


def evaluate(model, tokenizer, path: str | os.PathLike, limit: int | None = None, quiet: bool = True) -> dict:
    """HellaSwag accuracy of ``model`` (a ``GPT``, any backend) and its ``tokenizer`` on the ``.jsonl`` file
    ``path`` (its first ``limit`` examples).

    Returns ``examples`` (how many), ``correct`` and ``acc`` (the highest summed log-likelihood picked the
    right ending), ``correct_norm`` and ``acc_norm`` (the highest mean per ending token did), and ``cut``
    (examples whose context lost its oldest tokens to fit the model's context).
    """
    return score_examples(model, tokenizer, iter_examples(path, limit), quiet=quiet)
