"""HellaSwag in the completion style (tinygpt.hellaswag, `tinygpt eval --hellaswag`): per-ending
log-likelihoods against transformers' GPT2LMHeadModel scoring each ending alone, the token layout and mask,
the left truncation, --limit, and every refusal (one line, exit 2, no traceback)."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import _gpt2_tokenizer_files, _tiktoken_gpt2, one_line_error

from tinygpt import hellaswag
from tinygpt.checkpoint import load_model, save_checkpoint
from tinygpt.cli import main
from tinygpt.errors import TinyGPTError
from tinygpt.finetune import load_gpt2_dir
from tinygpt.model import GPT, GPTConfig
from tinygpt.tokenizer import CharTokenizer

# synthetic items in HellaSwag's layout (the fields a real line has besides ctx, endings and label are
# there to be ignored); contexts and endings of different lengths, so the rows of one batch are padded
ITEMS = [
    ("A man is sitting on a roof. he",
     ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.", "is holding a rubik's cube.",
      "starts pulling up roofing on a roof."]),
    ("A woman is outside with a bucket and a dog. The dog is running around trying to avoid a bath. She",
     ["rinses the bucket off with soap and blow dry the dog's head.", "uses a hose to keep it from getting "
      "soapy.", "gets the dog wet, then it runs away again.", "gets into a bath tub with the dog."]),
    ("Then, the man writes over the snow covering the window of a car, and a woman wearing winter clothes "
     "smiles. then",
     ["the man adds wax to the windshield and cuts it.",
      "a person boards a ski lift while two men watch the snow.",
      "the man puts on a christmas coat, knitted with netting.", "the man continues removing the snow on his "
      "car."]),
    ("How to make tea. Boil water in a kettle.",
     ["Pour it.", "Put the tea bag in a cup and pour the water."]),
    ("The crowd cheers as", ["the team scores.", "it rains.", "a bird flies over the stadium, very slowly."]),
]


def _row(i, ctx, endings, label):
    return {"ind": i, "activity_label": "Test", "ctx_a": ctx, "ctx_b": "", "ctx": ctx, "split": "val",
            "split_type": "indomain", "label": label, "endings": endings, "source_id": f"test~{i}"}


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _torch_scores(hf, ctx, endings, block_size):
    """(summed, mean) log-likelihood of each ending's tokens, computed in torch one ending at a time (no
    padding): tiktoken's ids of ctx and " " + ending, the last block_size + 1 of them, the model reading all
    but the last."""
    import torch

    enc = _tiktoken_gpt2()
    ctx_ids = enc.encode_ordinary(ctx)
    summed, mean = [], []
    for ending in endings:
        end_ids = enc.encode_ordinary(" " + ending)
        row = torch.tensor((ctx_ids + end_ids)[-(block_size + 1):])
        with torch.no_grad():
            logits = hf(row[None, :-1]).logits[0]  # (L-1, V)
        log_probs = torch.log_softmax(logits, dim=-1)[-len(end_ids):]  # the positions predicting the ending
        picked = log_probs.gather(1, row[-len(end_ids):, None])[:, 0].double()
        summed.append(picked.sum().item())
        mean.append(picked.mean().item())
    return np.array(summed), np.array(mean)


@pytest.fixture(scope="module")
def gpt2_dirs(tmp_path_factory):
    """{block_size: (directory, transformers model)}: tiny random GPT-2s with GPT-2's tokenizer files, of
    contexts 64 (every example fits) and 16 (most are cut)."""
    from conftest import save_hf_gpt2

    dirs = {}
    for block_size in (64, 16):
        directory = tmp_path_factory.mktemp(f"gpt2-{block_size}")
        hf = save_hf_gpt2(directory, vocab_size=50257, block_size=block_size, seed=block_size,
                          perturb_affines=True, tokenizer_files=_gpt2_tokenizer_files())
        dirs[block_size] = directory, hf
    return dirs


@pytest.mark.parametrize("block_size", [64, 16])
def test_log_likelihoods_and_accuracies_match_transformers(gpt2_dirs, block_size, tmp_path, capsys):
    directory, hf = gpt2_dirs[block_size]
    expected = [_torch_scores(hf, ctx, endings, block_size) for ctx, endings in ITEMS]
    # labels: torch's pick by the summed log-likelihood, which the mean per token does not always agree with
    labels = [int(np.argmax(s)) for s, _ in expected]
    path = _write(tmp_path / "hellaswag.jsonl", [_row(i, c, e, y) for i, ((c, e), y) in
                                                 enumerate(zip(ITEMS, labels))])
    model, tokenizer, _ = load_gpt2_dir(directory)
    examples = list(hellaswag.iter_examples(path))
    assert [(e.ctx, list(e.endings), e.label) for e in examples] == [(c, e, y) for (c, e), y in
                                                                      zip(ITEMS, labels)]
    padded = 0
    for example, (want_summed, want_mean) in zip(examples, expected):
        tokens, mask, _ = hellaswag.render(example, tokenizer, block_size)
        padded += int(not mask[:, -1].all())  # a row ends before the longest: it is padded
        summed, mean = hellaswag.score(model, tokens, mask)
        np.testing.assert_allclose(summed, want_summed, rtol=1e-5)
        np.testing.assert_allclose(mean, want_mean, rtol=1e-5)
    assert padded >= 3  # rows of unequal length in most batches: the padding was there to be ignored
    correct = sum(int(np.argmax(s) == y) for (s, _), y in zip(expected, labels))
    correct_norm = sum(int(np.argmax(m) == y) for (_, m), y in zip(expected, labels))
    result = hellaswag.evaluate(model, tokenizer, path)
    assert (result["correct"], result["correct_norm"]) == (5, correct_norm)
    result = hellaswag.evaluate(model, tokenizer, path)
    assert (result["examples"], result["correct"], result["correct_norm"]) == (5, correct, correct_norm)
    assert result["acc"] == correct / 5 and result["acc_norm"] == correct_norm / 5
    assert correct == 5 and correct_norm < 5  # (so that acc and acc_norm swapped would show)
    # the command prints the same
    assert main(["eval", "--pretrained", str(directory), "--hellaswag", str(path), "--backend", "numpy",
                 "--quiet"]) == 0
    printed = capsys.readouterr()
    cut = f" ({result['cut']} with their context cut to fit the model's 16 tokens)" if result["cut"] else ""
    assert printed.out == (f"hellaswag: 5 examples{cut}, acc {correct / 5:.4f} (summed log-likelihood), "
                           f"acc_norm {correct_norm / 5:.4f} (per token)\n")
    assert printed.err == ""  # --quiet: no bar; the directory's own tokenizer: no note
    assert (result["cut"] > 0) == (block_size == 16)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_nanogpt_checkpoint_scores_as_its_torch_model(backend, tmp_path, make_nanogpt_ckpt, capsys):
    # the exact GELU, a vocabulary padded to 50,304 (the softmax over every logit, as in torch), and the
    # forward of another backend
    import types

    torch_model = make_nanogpt_ckpt(tmp_path / "ckpt.pt", vocab_size=50304, block_size=32, n_embd=16)
    as_transformers = lambda x: types.SimpleNamespace(logits=torch_model(x))  # noqa: E731
    expected = [_torch_scores(as_transformers, ctx, endings, 32) for ctx, endings in ITEMS]
    labels = [int(np.argmax(s)) for s, _ in expected]
    path = _write(tmp_path / "hellaswag.jsonl", [_row(i, c, e, y) for i, ((c, e), y) in
                                                 enumerate(zip(ITEMS, labels))])
    model, tokenizer, _ = load_gpt2_dir(tmp_path, backend=backend)
    for example, (want_summed, want_mean) in zip(hellaswag.iter_examples(path), expected):
        summed, mean = hellaswag.score(model, *hellaswag.render(example, tokenizer, 32)[:2])
        np.testing.assert_allclose(summed, want_summed, rtol=1e-5)
        np.testing.assert_allclose(mean, want_mean, rtol=1e-5)
    correct_norm = sum(int(np.argmax(m) == y) for (_, m), y in zip(expected, labels))
    result = hellaswag.evaluate(model, tokenizer, path)
    assert (result["correct"], result["correct_norm"]) == (5, correct_norm)
    assert main(["eval", "--pretrained", str(tmp_path / "ckpt.pt"), "--hellaswag", str(path), "--backend",
                 backend, "--quiet"]) == 0
    printed = capsys.readouterr()
    assert f"acc 1.0000 (summed log-likelihood), acc_norm {correct_norm / 5:.4f} (per token)" in printed.out
    assert "is a nanoGPT checkpoint" in printed.err  # the tokenizer note, as eval's


def test_render_puts_the_context_then_each_ending_and_masks_only_the_ending(gpt2_dirs):
    enc = _tiktoken_gpt2()
    _, tokenizer, _ = load_gpt2_dir(gpt2_dirs[64][0])
    ctx, endings = ITEMS[0]
    tokens, mask, cut = hellaswag.render(hellaswag.Example(ctx, tuple(endings), 3), tokenizer, 64)
    ctx_ids = enc.encode_ordinary(ctx)
    rows = [ctx_ids + enc.encode_ordinary(" " + ending) for ending in endings]
    width = max(map(len, rows))
    assert cut == 0 and tokens.shape == mask.shape == (4, width)
    for i, row in enumerate(rows):
        assert tokens[i].tolist() == row + [0] * (width - len(row))  # right-padded with id 0
        # the ending's tokens, the space before it included, and nothing of the context or the padding
        assert mask[i].tolist() == [False] * len(ctx_ids) + [True] * (len(row) - len(ctx_ids)) + [False] * (
            width - len(row))


def test_a_long_example_keeps_the_end_of_its_context(gpt2_dirs):
    enc = _tiktoken_gpt2()
    _, tokenizer, _ = load_gpt2_dir(gpt2_dirs[16][0])
    ctx, endings = ITEMS[1]
    ctx_ids = enc.encode_ordinary(ctx)
    ending_ids = [enc.encode_ordinary(" " + ending) for ending in endings]
    tokens, mask, cut = hellaswag.render(hellaswag.Example(ctx, tuple(endings), 0), tokenizer, 16)
    assert tokens.shape == (4, 17)  # every row cut to the model's 16 tokens and the one it predicts after
    for i, ids in enumerate(ending_ids):
        assert tokens[i].tolist() == (ctx_ids + ids)[-17:]  # the context's oldest tokens dropped
        assert mask[i].tolist() == [False] * (17 - len(ids)) + [True] * len(ids)
    assert cut == len(ctx_ids) + max(map(len, ending_ids)) - 17
    # a row that fits is left whole, beside a longer one that is cut
    short = hellaswag.render(hellaswag.Example("The crowd cheers as", ("a.", "b " * 14), 0), tokenizer, 16)
    whole = enc.encode_ordinary("The crowd cheers as a.")
    assert short.tokens[0].tolist() == whole + [0] * (17 - len(whole))
    assert short.tokens[1].tolist() == enc.encode_ordinary("The crowd cheers as " + "b " * 14)[-17:]
    assert short.cut == len(enc.encode_ordinary("The crowd cheers as " + "b " * 14)) - 17 > 0


@pytest.mark.parametrize("share_context", [True, False])
def test_score_refuses_an_id_outside_the_vocabulary_in_the_last_column(share_context):
    # the last column is only predicted, read by no forward: 7 was an IndexError out of the log-softmax,
    # -1 silently the log-probability of token 6
    model = GPT(GPTConfig(vocab_size=7, block_size=8, n_layer=1, n_head=2, n_embd=8), seed=1)
    mask = np.array([[0, 0, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=bool)
    for bad in (7, -1):
        tokens = np.array([[1, 2, 3, 4, 0], [1, 2, 5, 6, bad]])
        with pytest.raises(TinyGPTError, match=f"tokens contains id {bad}, outside the vocabulary"):
            hellaswag.score(model, tokens, mask, share_context=share_context)


@pytest.mark.parametrize("share_context", [True, False])
def test_score_is_in_eval_mode_and_restores_the_mode(share_context):
    # dropout 0.5 in training mode would change every score; after, the model is in training mode again.
    # These rows share their context, so the row path (a cut example's, the cuda backend's), which is the
    # one that reads the model's dropout, is asked for too: the shared path never applies dropout
    model = GPT(GPTConfig(vocab_size=7, block_size=8, n_layer=1, n_head=2, n_embd=8, dropout=0.5), seed=1)
    tokens = np.array([[1, 2, 3, 4, 0], [1, 2, 5, 6, 6]])
    mask = np.array([[0, 0, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=bool)
    first = hellaswag.score(model, tokens, mask, share_context=share_context)
    assert model.training
    model.eval()
    again = hellaswag.score(model, tokens, mask, share_context=share_context)
    assert not model.training
    np.testing.assert_array_equal(first[0], again[0])
    logits, _ = model.forward(tokens[:, :-1])  # (2, 4, V), in eval mode
    lp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))  # (2, 4, V) log-softmax
    # row 0 scores its tokens 2 and 3 (predicted at positions 1 and 2), row 1 its tokens 2, 3 and 4; the
    # padding at row 0's end and the contexts are not scored
    summed = [lp[0, 1, 3] + lp[0, 2, 4], lp[1, 1, 5] + lp[1, 2, 6] + lp[1, 3, 6]]
    np.testing.assert_allclose(first[0], summed, rtol=1e-6)
    np.testing.assert_allclose(first[1], [summed[0] / 2, summed[1] / 3], rtol=1e-6)


def _head_rows(model, monkeypatch):
    """The number of rows each call of the model's LM head computes, appended as it is called."""
    rows_seen, head = [], model.ops.lm_head_forward

    def lm_head_forward(x, wte):
        rows_seen.append(int(np.prod(x.shape[:-1])))
        return head(x, wte)

    monkeypatch.setattr(model.ops, "lm_head_forward", lm_head_forward)  # (the model's own copy of the ops)
    return rows_seen


def test_score_applies_the_lm_head_at_the_scored_positions_only(gpt2_dirs, monkeypatch):
    # at GPT-2's vocabulary the head is a third of a forward's work and its logits E x L x V floats: a
    # context's positions, which predict no ending token, need neither
    model, tokenizer, _ = load_gpt2_dir(gpt2_dirs[64][0])
    tokens, mask, _ = hellaswag.render(hellaswag.Example(ITEMS[1][0], tuple(ITEMS[1][1]), 0), tokenizer, 64)
    expected = hellaswag.score(model, tokens, mask, share_context=False)
    rows_seen = _head_rows(model, monkeypatch)
    summed, mean = hellaswag.score(model, tokens, mask, share_context=False)
    assert rows_seen == [int(mask.sum())] and int(mask.sum()) < mask.size // 2
    np.testing.assert_array_equal(summed, expected[0])
    np.testing.assert_array_equal(mean, expected[1])
    # sharing the context, the context's last position, which predicts each ending's first token, is one row
    rows_seen.clear()
    summed, mean = hellaswag.score(model, tokens, mask)
    assert rows_seen == [int(mask.sum()) - len(mask) + 1]
    np.testing.assert_allclose(summed, expected[0], rtol=1e-5)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_the_shared_context_scores_as_the_rows_do(backend, gpt2_dirs, monkeypatch):
    # the context once and the endings as one batch over its keys and values, against every row whole:
    # endings of unequal lengths (the shorter rows padded), and one of a single token (read by nothing: the
    # context's last position predicts it)
    model, tokenizer, _ = load_gpt2_dir(gpt2_dirs[64][0], backend=backend)
    rows_seen = _head_rows(model, monkeypatch)
    items = ITEMS + [("The crowd cheers as", ["a", "the team scores.", "b"]), ("Then", ["a", "b"])]
    for ctx, endings in items:
        tokens, mask, cut = hellaswag.render(hellaswag.Example(ctx, tuple(endings), 0), tokenizer, 64)
        assert cut == 0
        rows_seen.clear()
        summed, mean = hellaswag.score(model, tokens, mask)
        assert rows_seen == [int(mask.sum()) - len(mask) + 1]  # the shared path
        want_summed, want_mean = hellaswag.score(model, tokens, mask, share_context=False)
        np.testing.assert_allclose(summed, want_summed, rtol=1e-5)
        np.testing.assert_allclose(mean, want_mean, rtol=1e-5)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("settings", [{}, {"bias": False}, {"gelu": "erf"}, {"dropout": 0.3}])
def test_the_shared_context_at_its_edges_scores_as_the_rows_do(backend, settings, monkeypatch):
    # in float64, where the two paths agree to its rounding: nanoGPT's settings (no biases, the exact GELU),
    # a model left in training mode with dropout, and the edges of the layout: a context of one token,
    # endings of one token (nothing read after the context), and a row of exactly block_size + 1 tokens
    config = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, **settings)
    model = GPT(config, seed=2, dtype=np.float64, backend=backend)
    model.train("dropout" in settings)  # (the dropout model in training mode, the others in eval mode)
    rows_seen = _head_rows(model, monkeypatch)
    examples = [([5], [[7], [8, 9, 10]]), ([5, 6], [[7], [8]]), ([1, 2, 3, 4, 5], [[6, 7, 8, 9], [10, 1]])]
    for context, endings in examples:
        width = len(context) + max(map(len, endings))
        tokens, mask = np.zeros((len(endings), width), dtype=np.int64), np.zeros((len(endings), width), bool)
        for i, ending in enumerate(endings):
            tokens[i, : len(context) + len(ending)] = context + ending
            mask[i, len(context) : len(context) + len(ending)] = True
        rows_seen.clear()
        summed, mean = hellaswag.score(model, tokens, mask)
        assert rows_seen == [int(mask.sum()) - len(mask) + 1]  # the shared path
        want_summed, want_mean = hellaswag.score(model, tokens, mask, share_context=False)
        np.testing.assert_allclose(summed, want_summed, rtol=1e-12)
        np.testing.assert_allclose(mean, want_mean, rtol=1e-12)
    assert model.training == ("dropout" in settings)  # (the mode restored)


def test_rows_cut_to_fit_or_not_sharing_a_context_keep_the_row_path(gpt2_dirs, monkeypatch):
    model, tokenizer, _ = load_gpt2_dir(gpt2_dirs[16][0])
    rows_seen = _head_rows(model, monkeypatch)
    # cut to fit the model's 16 tokens, the rows keep different parts of the context
    tokens, mask, cut = hellaswag.render(hellaswag.Example(ITEMS[1][0], tuple(ITEMS[1][1]), 0), tokenizer, 16)
    assert cut > 0 and hellaswag._shared_context(tokens, mask) == 0
    hellaswag.score(model, tokens, mask)
    assert rows_seen == [int(mask.sum())]
    # and rows made by hand: scored runs starting in different columns, a gap in a run, different contexts
    tokens = np.array([[1, 2, 3, 4, 0], [1, 2, 5, 6, 7]])
    for mask in ([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]], [[0, 0, 1, 0, 1], [0, 0, 1, 1, 1]]):
        assert hellaswag._shared_context(tokens, np.array(mask, dtype=bool)) == 0
    mask = np.array([[0, 0, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=bool)
    assert hellaswag._shared_context(tokens, mask) == 2
    assert hellaswag._shared_context(np.array([[1, 2, 3, 4, 0], [1, 9, 5, 6, 7]]), mask) == 0


def test_the_cuda_backend_keeps_the_row_path(monkeypatch):
    # the shared path is the decoder's NumPy code on the host: on the GPU it would copy every weight off
    # it for each example (an ops namespace that calls itself cuda stands in for the GPU here)
    import types

    model = GPT(GPTConfig(vocab_size=7, block_size=8, n_layer=1, n_head=2, n_embd=8), seed=1)
    tokens = np.array([[1, 2, 3, 4, 0], [1, 2, 5, 6, 6]])
    mask = np.array([[0, 0, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=bool)
    model.ops = types.SimpleNamespace(**{**vars(model.ops), "name": "cuda"})
    rows_seen = _head_rows(model, monkeypatch)
    hellaswag.score(model, tokens, mask)
    assert rows_seen == [int(mask.sum())]


# --- a training run's model (--out), --limit, the progress bar -------------------------------------------

CHAR_TEXT = "the cat sat on a mat. a dog ran to the park, then it slept by the door.\n"
CHAR_ITEMS = [("the cat sat on", ["a mat.", "the dog."], 0),
              ("a dog ran to the", ["park.", "cat sat on it."], 0),
              ("then it slept by the door, the cat sat on a mat, the dog ran to the park",
               ["a dog.", "it."], 1)]


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    """A run directory (as `tinygpt train` leaves it) of a 1-layer character model of context 32, and a
    HellaSwag file of CHAR_ITEMS, whose third context is cut to fit."""
    root = tmp_path_factory.mktemp("char-run")
    tokenizer = CharTokenizer.train(CHAR_TEXT)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=8)
    model = GPT(config, seed=3)
    save_checkpoint(root / "out", model, tokenizer, None, {"backend": "numpy"}, {"step": 7})
    path = _write(root / "hellaswag_val.jsonl", [_row(i, *item) for i, item in enumerate(CHAR_ITEMS)])
    return root / "out", path


def test_eval_of_a_run_directory_with_limit_and_a_progress_bar(char_run, tmp_path, capsys):
    out, path = char_run
    model, tokenizer = load_model(out)
    whole = hellaswag.evaluate(model, tokenizer, path)
    first_two = hellaswag.evaluate(model, tokenizer, path, limit=2)
    assert (whole["examples"], whole["cut"], first_two["examples"], first_two["cut"]) == (3, 1, 2, 0)
    assert main(["eval", "--out", str(out), "--hellaswag", str(path), "--backend", "numpy"]) == 0
    printed = capsys.readouterr()
    assert printed.out == (f"hellaswag: 3 examples (1 with their context cut to fit the model's 32 tokens), "
                           f"acc {whole['acc']:.4f} (summed log-likelihood), "
                           f"acc_norm {whole['acc_norm']:.4f} (per token)\n")
    assert "hellaswag: 100%" in printed.err and "3/3" in printed.err  # the bar, without --quiet
    # --limit: the first N examples, and the lines past them are not read (a broken fourth line is no error)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(path.read_text(encoding="utf-8") + "{not json\n", encoding="utf-8")
    assert main(["eval", "--out", str(out), "--hellaswag", str(broken), "--limit", "2", "--quiet"]) == 0
    printed = capsys.readouterr()
    assert printed.out.startswith("hellaswag: 2 examples, acc ") and printed.err == ""
    assert f"acc_norm {first_two['acc_norm']:.4f} (per token)" in printed.out
    assert main(["eval", "--out", str(out), "--hellaswag", str(broken), "--limit", "3", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", "--out", str(out), "--hellaswag", str(broken), "--limit", "1", "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("hellaswag: 1 example, acc ")  # (not "1 examples")
    assert f"{broken}:4: not valid JSON" in one_line_error(capsys, ["eval", "--out", str(out), "--hellaswag",
                                                                     str(broken)])


# --- bad input: one line on stderr, exit status 2, no traceback ------------------------------------------


GOOD = {"ctx": "the cat sat on", "endings": ["a mat.", "the dog."], "label": 0}
BAD_LINES = [
    ("not json", ":2: not valid JSON"),
    ("[1, 2]", ":2: expected a JSON object with ctx, endings and label, got list"),
    ({"endings": ["a", "b"], "label": 0}, ":2: missing ctx"),
    ({"ctx": "a", "label": 0}, ":2: missing endings"),
    ({"ctx": "a", "endings": ["a", "b"]}, ":2: missing label (an unlabelled example: HellaSwag's test "
                                          "split has none; score the val split)"),
    ({**GOOD, "ctx": 5}, ":2: ctx must be a string, got 5"),
    ({**GOOD, "ctx": ""}, ":2: ctx is empty"),
    ({**GOOD, "endings": "ab"}, ":2: endings must be a list of strings, got 'ab'"),
    ({**GOOD, "endings": ["a", 1]}, ":2: endings must be a list of strings, got ['a', 1]"),
    ({**GOOD, "endings": ["a"]}, ":2: 1 ending, a choice needs at least 2"),
    ({**GOOD, "endings": []}, ":2: 0 endings, a choice needs at least 2"),
    ({**GOOD, "label": "one"}, ":2: label must be an integer index into endings (or a string of its digits), "
                               "got 'one'"),
    ({**GOOD, "label": "-1"}, ":2: label must be an integer index into endings (or a string of its digits), "
                              "got '-1'"),
    ({**GOOD, "label": ""}, ":2: label is empty: an unlabelled example (HellaSwag's test split has no "
                            "labels"),
    ({**GOOD, "label": "2"}, ":2: label 2 is out of range for 2 endings (0 to 1)"),
    ({**GOOD, "label": True}, ":2: label must be an integer index into endings (or a string of its digits), "
                              "got True"),
    ({**GOOD, "label": 1.0}, ":2: label must be an integer index into endings (or a string of its digits), "
                             "got 1.0"),
    ({**GOOD, "label": 2}, ":2: label 2 is out of range for 2 endings (0 to 1)"),
    ({**GOOD, "label": -1}, ":2: label -1 is out of range for 2 endings (0 to 1)"),
    # the model's own limits, found before any example is scored
    ({**GOOD, "endings": ["a mat.", "the dog " * 4]}, ":2: ending 1 is 33 tokens, more than the model's "
                                                      "context of 32 can score"),
    ({**GOOD, "endings": ["a mat.", "the Dog."]}, ":2: character 'D' is not in"),
]


@pytest.mark.parametrize("line, message", BAD_LINES, ids=[m.split(": ", 1)[1][:30] for _, m in BAD_LINES])
def test_a_bad_line_is_one_line_naming_file_and_line(char_run, line, message, tmp_path, capsys):
    out, _ = char_run
    path = tmp_path / "h.jsonl"
    text = line if isinstance(line, str) else json.dumps(line)
    path.write_text(json.dumps(GOOD) + "\n" + text + "\n" + json.dumps(GOOD) + "\n", encoding="utf-8")
    error = one_line_error(capsys, ["eval", "--out", str(out), "--hellaswag", str(path), "--quiet"])
    assert f"tinygpt: error: {path}{message}" in error
    with pytest.raises(TinyGPTError, match=re.escape(message)):  # the Python API says the same
        hellaswag.evaluate(*load_model(out), path)


def test_an_example_it_cannot_tokenize_is_refused_on_a_line_of_its_own_after_the_bar(char_run, tmp_path,
                                                                                      capsys):
    out, _ = char_run
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "ctx": "the Cat"}) + "\n", encoding="utf-8")
    assert main(["eval", "--out", str(out), "--hellaswag", str(path)]) == 2
    err = capsys.readouterr().err
    assert "tokenizing:" in err  # the bar was drawn, then cleared: the error starts a line, not the bar's end
    before, error = err.rsplit("tinygpt: error: ", 1)
    assert before.endswith("\r")
    assert error == f"{path}:2: character 'C' is not in this tokenizer's vocabulary\n"


def test_a_model_whose_logits_are_not_finite_is_refused_not_scored(char_run):
    # argmax picks the first NaN: every example went to ending 0, and CHAR_ITEMS' labels 0, 0, 1 gave a
    # broken model acc 0.67, printed as any other
    out, path = char_run
    model, tokenizer = load_model(out)
    model.params["ln_f.weight"][:] = np.nan
    message = f"{path}:1: ending 0's log-likelihood is nan: the model's logits are not all finite"
    with pytest.raises(TinyGPTError, match=re.escape(message)):
        hellaswag.evaluate(model, tokenizer, path)


@pytest.mark.skipif(not os.path.isdir("/dev/fd"), reason="/dev/fd names a pipe's end")
def test_examples_read_from_a_pipe(tmp_path):
    # `tinygpt eval --hellaswag <(zcat hellaswag_val.jsonl.gz)`, the shell's /dev/fd/N of a pipe, was
    # "HellaSwag file not found: /dev/fd/63" (Path.is_file is False for a pipe); it is read once
    read, write = os.pipe()
    os.write(write, (json.dumps(GOOD) + "\n").encode() * 2)
    os.close(write)
    try:
        examples = list(hellaswag.iter_examples(f"/dev/fd/{read}"))
    finally:
        os.close(read)
    assert [(e.ctx, e.endings, e.label) for e in examples] == [("the cat sat on", ("a mat.", "the dog."),
                                                                 0)] * 2
    with pytest.raises(TinyGPTError, match="^HellaSwag file not found: "):
        list(hellaswag.iter_examples(tmp_path / "absent.jsonl"))  # as before


def test_blank_lines_are_skipped_and_counted(char_run, tmp_path, capsys):
    out, _ = char_run
    path = tmp_path / "h.jsonl"
    path.write_text(f"\n{json.dumps(GOOD)}\n  \n{json.dumps(GOOD)}\n\n", encoding="utf-8")
    assert main(["eval", "--out", str(out), "--hellaswag", str(path), "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("hellaswag: 2 examples, ")
    path.write_text(f"\n{json.dumps(GOOD)}\n\n{{}}\n", encoding="utf-8")
    assert f"{path}:4: missing ctx" in one_line_error(capsys, ["eval", "--out", str(out), "--hellaswag",
                                                                str(path)])


def test_bad_files_and_flags_are_one_line(char_run, tmp_path, capsys):
    from tinygpt.finetune import FinetuneConfig, finetune_classifier

    out, path = char_run
    run = ["eval", "--out", str(out)]
    empty, blank, binary = tmp_path / "empty.jsonl", tmp_path / "blank.jsonl", tmp_path / "binary.jsonl"
    empty.write_text("")
    blank.write_text("\n \n")
    binary.write_bytes(json.dumps(GOOD).encode() + b'\n{"ctx": "\xff"}\n')
    rows = [{"text": "the cat sat", "label": "a"}, {"text": "the dog ran", "label": "b"}] * 4
    _write(tmp_path / "labelled.jsonl", rows)
    finetune_classifier(FinetuneConfig(data=str(tmp_path / "labelled.jsonl"), out=str(tmp_path / "clf"),
                                       n_layer=1, n_head=2, n_embd=8, block_size=16, max_iters=1,
                                       val_fraction=0.0, backend="numpy"), quiet=True)
    for argv, message in (
        ([*run, "--hellaswag", str(empty)], f"{empty} holds no examples (HellaSwag's: github.com/rowanz"),
        ([*run, "--hellaswag", str(blank)], f"{blank} holds no examples"),
        ([*run, "--hellaswag", str(binary)], f"{binary}:2: not UTF-8 text (byte 9 of the line)"),
        ([*run, "--hellaswag", str(tmp_path / "absent.jsonl")], "HellaSwag file not found: "),
        ([*run, "--hellaswag", str(tmp_path)], f"HellaSwag path is a directory, not a file: {tmp_path}"),
        ([*run, "--hellaswag", "/dev/zero"], "HellaSwag path is a device"),
        ([*run, "--hellaswag", ""], "--hellaswag must name a file, got an empty string"),
        ([*run, "--hellaswag", str(path), "--limit", "0"], "--limit must be an integer >= 1, got 0"),
        ([*run, "--hellaswag", str(path), "--limit", "-2"], "--limit must be an integer >= 1, got -2"),
        ([*run, "--limit", "2"], "--limit is for --hellaswag"),
        ([*run, "--hellaswag", str(path), "--data", str(path)], "--data cannot be combined with --hellaswag"),
        ([*run, "--hellaswag", str(path), "--split", "val"], "--split cannot be combined with --hellaswag"),
        ([*run, "--hellaswag", str(path), "--stride", "4"], "--stride cannot be combined with --hellaswag"),
        ([*run, "--hellaswag", str(path), "--batch-size", "4"], "--batch-size cannot be combined with"),
        ([*run, "--hellaswag", str(path), "--max-batches", "1"], "--max-batches cannot be combined with"),
        (["eval", "--out", str(tmp_path / "clf"), "--hellaswag", str(path)],
         "is a classifier (tinygpt finetune): --hellaswag scores a language model"),
        (["eval", "--pretrained", str(tmp_path / "missing"), "--hellaswag", str(path)],
         "no model directory or nanoGPT ckpt.pt at"),
    ):
        assert message in one_line_error(capsys, argv)
    with pytest.raises(TinyGPTError, match="--limit must be an integer >= 1, got 1.5"):
        list(hellaswag.iter_examples(path, limit=1.5))
    # and as a real process: exit status 2, one line, no traceback
    proc = subprocess.run([sys.executable, "-m", "tinygpt", *run, "--hellaswag", str(empty)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "holds no examples" in proc.stderr



def test_a_label_written_as_a_string_of_digits_reads_as_its_index(tmp_path):
    # Hugging Face's copy of HellaSwag ("Rowan/hellaswag", saved with to_json) writes "label": "1"; it was
    # refused as not an integer
    path = tmp_path / "hf.jsonl"
    path.write_text(json.dumps({**GOOD, "label": "1"}) + "\n" + json.dumps({**GOOD, "label": 0}) + "\n")
    assert [example.label for example in hellaswag.iter_examples(path)] == [1, 0]
