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

The context is the same in every row, so it is computed once: the context runs alone (batch 1), its
keys and values are kept per layer (the KV cache of ``tinygpt.generate``), and the endings run as one batch
after it, each attending over the context's keys and values and its own earlier tokens. An example with a
context of 40 tokens and 4 endings of 25 reads 40 + 4 x 24 tokens, not 4 x 64 (``score``; the rows of a
long example cut to fit, which keep different parts of the context unless its endings are of one length, and
the cuda backend read every row whole).

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
    if not path.exists():  # (not is_file: a pipe, `--hellaswag <(zcat hellaswag_val.jsonl.gz)`, read once,
        # as --data's text is, was "HellaSwag file not found: /dev/fd/63")
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


def score(model, tokens: np.ndarray, mask: np.ndarray, share_context: bool = True
          ) -> tuple[np.ndarray, np.ndarray]:
    """(summed, mean) log-likelihood of each row's masked tokens, each given the tokens before it, in eval
    mode (dropout off; the model's mode is restored after), the LM head applied at the scored positions only.

    tokens, mask (E, L) as ``render`` makes them -> summed (E,), mean (E,) float64 (mean: per scored token).

    When the rows share their context (the same tokens before each row's scored run, which starts at the
    same column in every row: what ``render`` makes of an example no row of which was cut), the context runs
    once and the endings as one batch over its keys and values (``generate.forward_shared_context``), and
    the context's last position, which predicts every ending's first token, is one row of the head's input,
    not E. Otherwise, or with ``share_context=False``, or on the cuda backend (below), the E rows are one
    forward pass of ``tokens[:, :-1]``. The two agree to float32's rounding.
    """
    # on the cuda backend the rows stay on the GPU: the shared path is the decoder's NumPy code on the host,
    # which would first copy every weight off the GPU (host_params: GPT-2 small's 500 MB, per example), and
    # E rows of ~64 tokens are far from filling a GPU, so running the context E times there costs little
    # (the host's forward, by contrast, takes time in proportion to the tokens it reads)
    tokens = np.asarray(tokens)
    if tokens.ndim == 2 and tokens.shape[1] > 1:  # the last column is only predicted, read by no forward:
        # an id there past the vocabulary was an IndexError of the log-softmax, a negative one silently
        # another token's log-probability
        model._check_ids(tokens[:, 1:], "tokens")
    context = _shared_context(tokens, mask) if share_context and model.ops.name != "cuda" else 0
    was_training = model.training
    model.eval()  # (the shared path reads no dropout setting; the row path's forward does)
    try:
        if context:
            return _score_shared(model, np.asarray(tokens), np.asarray(mask), context)
        return _score_rows(model, tokens, mask)
    finally:
        model.train(was_training)


def _shared_context(tokens, mask) -> int:
    """How many tokens of context the rows share, 0 when they do not share one: each row's scored tokens
    must be one run from the same column n >= 1, after the same n tokens. A row cut to fit block_size
    (``render``'s cut) starts later in its context than a shorter row, so the rows differ before n."""
    tokens, mask = np.asarray(tokens), np.asarray(mask)
    if tokens.ndim != 2 or mask.shape != tokens.shape or mask.dtype != bool or not tokens.size:
        return 0  # (not render's layout: the row path makes of it what it did)
    n = int(mask[0].argmax())
    lengths = mask.sum(axis=1)  # (E,)
    columns = np.arange(mask.shape[1])
    one_run = (columns >= n) & (columns[None, :] < n + lengths[:, None])  # (E, L) a run of each length from n
    if n < 1 or not lengths.all() or not (mask == one_run).all():
        return 0
    return n if (tokens[:, :n] == tokens[0, :n]).all() else 0


def _score_shared(model, tokens: np.ndarray, mask: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``score`` of rows sharing their first n tokens (``_shared_context``): the context once, the endings as
    one batch at position n over its keys and values."""
    from tinygpt.generate import forward_shared_context

    model._check_ids(tokens[:, :-1], "idx")  # what the row path's forward checks (ids, block_size), alike
    lengths = mask.sum(axis=1)  # (E,) each ending's tokens
    E, T = len(tokens), int(lengths.max()) - 1
    # an ending's last token is only predicted, never read; past a row's own length the batch reads the
    # padding (or its ending's last token), which nothing before it attends to and nothing scores
    read = tokens[:, n : n + T]  # (E, T) each ending's tokens read, at positions n..n+T-1
    scored = np.arange(T)[None, :] < (lengths - 1)[:, None]  # (E, T) read tokens that predict one of its own
    params = model.host_params()  # (the CPU backends' own arrays, no copy)
    context_hidden, hidden = forward_shared_context(params, model.config, tokens[0, :n], read, model.ops.name)
    # the head's input: the context's last position once (it predicts every ending's first token), then
    # each ending's positions that predict its next token: 1 + sum(len - 1) rows where the row path has
    # sum(len)
    head_input = np.concatenate([context_hidden[-1:], hidden[scored]])  # (1 + M, C)
    logits, _ = model.ops.lm_head_forward(head_input, params["wte.weight"])  # (1 + M, V)
    targets = np.concatenate([tokens[:, n], tokens[:, n + 1 : n + 1 + T][scored]])  # (E + M,)
    which = np.concatenate([np.zeros(E, dtype=np.int64), np.arange(1, len(logits))])  # logits row of each
    rows = np.concatenate([np.arange(E), np.nonzero(scored)[0]])  # (E + M,) the ending of each
    log_probs = token_log_probs(logits[which], targets)  # (E + M,)
    summed = np.bincount(rows, weights=log_probs, minlength=E)  # (E,)
    return summed, summed / lengths


def _score_rows(model, tokens: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``score`` with every row whole: one forward of ``tokens[:, :-1]`` (E rows at once)."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]  # (E, L-1) each: position t predicts token t + 1
    scored = mask[:, 1:]  # (E, L-1) the positions that predict an ending token (no row's first token is one)
    hidden = model.forward_hidden(inputs, keep_caches=False)  # (E, L-1, C), on the host on every backend
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
