"""Sequence classification: gradient checks of the head, the pooling with padding and the body; frozen
body; padding invariance; the finetune / predict / eval commands; bad input; the genre-task builder."""

import csv
import importlib.util
import json
import os
import re
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import break_weights_at_update
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygpt import finetune as ft
from tinygpt.checkpoint import load_checkpoint, save_checkpoint
from tinygpt.cli import main
from tinygpt.errors import TinyGPTError
from tinygpt.gradcheck import assert_gradcheck, numerical_gradient, relative_error
from tinygpt.model import GPT, GPTConfig
from tinygpt.tokenizer import CharTokenizer
from tinygpt.train import read_metrics

COMEDY = ["o merry day ", "sweet love ", "a jest, a jig "]
TRAGEDY = ["death and blood ", "o woe, o woe ", "the grave "]


def _rows(n=48, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        words, label = (COMEDY, "comedy") if i % 2 else (TRAGEDY, "tragedy")
        rows.append({"text": "".join(rng.choice(words) for _ in range(rng.integers(1, 4))).strip(),
                     "label": label})
    return rows


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _tiny_model(vocab_size, dtype=np.float64, seed=0, bias=True, n_layer=2, block_size=24):
    cfg = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=2, n_embd=8,
                    bias=bias)
    return GPT(cfg, seed=seed, dtype=dtype, backend="numpy")


@pytest.fixture
def lm_dir(tmp_path):
    """A tiny character-level language-model checkpoint whose vocabulary covers _rows()."""
    text = "".join(r["text"] for r in _rows()) + "\n"
    model = _tiny_model(CharTokenizer.train(text).vocab_size, dtype=np.float32)
    out = tmp_path / "lm"
    save_checkpoint(out, model, CharTokenizer.train(text), None, {"backend": "numpy"}, {"step": 7})
    return out


# --- gradient checks (float64, random upstream gradients) --------------------------------------------


def test_pooling_gradcheck_with_padding():
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((4, 7, 5))
    lengths = np.array([7, 1, 4, 2])  # right padding after each length
    errors = assert_gradcheck(ft.last_token_pool_forward, ft.last_token_pool_backward,
                              {"hidden": hidden, "lengths": lengths}, tol=1e-8)
    assert set(errors) == {"hidden"}
    _, cache = ft.last_token_pool_forward(hidden, lengths)
    dhidden = ft.last_token_pool_backward(rng.standard_normal((4, 5)), cache)
    for b, n in enumerate(lengths):  # padding and every earlier position get exactly zero gradient
        assert not dhidden[b, n:].any() and not dhidden[b, : n - 1].any() and dhidden[b, n - 1].all()


@pytest.mark.parametrize("with_bias", [True, False])
def test_head_loss_gradcheck(with_bias):
    rng = np.random.default_rng(1)

    def forward(pooled, weight, bias, labels):
        _, loss, cache = ft.head_loss_forward(pooled, weight, bias, labels)
        return loss, cache

    inputs = {"pooled": rng.standard_normal((6, 5)), "weight": rng.standard_normal((5, 3)),
              "bias": rng.standard_normal(3) if with_bias else None, "labels": rng.integers(0, 3, 6)}
    errors = assert_gradcheck(forward, ft.head_loss_backward, inputs, tol=1e-7)
    assert set(errors) == ({"pooled", "weight", "bias"} if with_bias else {"pooled", "weight"})


def test_pooling_and_head_gradcheck_from_the_hidden_state():
    """hidden (B, T, C) with padding -> pooled -> head -> loss, checked as one function."""
    rng = np.random.default_rng(2)

    def forward(hidden, weight, bias, lengths, labels):
        pooled, c_pool = ft.last_token_pool_forward(hidden, lengths)
        _, loss, c_head = ft.head_loss_forward(pooled, weight, bias, labels)
        return loss, (c_pool, c_head)

    def backward(dloss, cache):
        c_pool, c_head = cache
        dpooled, dweight, dbias = ft.head_loss_backward(dloss, c_head)
        return ft.last_token_pool_backward(dpooled, c_pool), dweight, dbias

    inputs = {"hidden": rng.standard_normal((3, 6, 4)), "weight": rng.standard_normal((4, 3)),
              "bias": rng.standard_normal(3), "lengths": np.array([6, 2, 3]), "labels": np.array([2, 0, 1])}
    assert_gradcheck(forward, backward, inputs, tol=1e-7)


@pytest.mark.parametrize("bias", [True, False])
def test_classifier_gradcheck_through_the_body(bias):
    """Every body parameter and the head, against central differences, with padded sequences."""
    rng = np.random.default_rng(3)
    model = _tiny_model(11, bias=bias).eval()
    head = ft.init_head(8, 3, seed=1, dtype=np.float64)
    head[ft.HEAD_WEIGHT] = rng.standard_normal((8, 3))  # not tiny, so the body's gradients are not either
    head[ft.HEAD_BIAS] = rng.standard_normal(3)
    idx, lengths = ft.pad_batch([rng.integers(0, 11, n) for n in (6, 2, 4)], pad_id=5)
    labels = np.array([2, 0, 1])
    dloss = float(rng.standard_normal())  # a random upstream gradient of the scalar loss
    _, _, cache = ft.classifier_forward(model, head, idx, lengths, labels)
    grads = ft.classifier_backward(cache, dloss)
    assert set(grads) == set(model.params) | set(head)

    def objective():
        return dloss * ft.classifier_forward(model, head, idx, lengths, labels)[1]

    for name, array in {**model.params, **head}.items():
        entries = rng.choice(array.size, size=min(array.size, 12), replace=False)
        numerical = numerical_gradient(objective, array, entries)
        err = relative_error(grads[name].reshape(-1)[entries], numerical)
        assert err < 1e-6, f"{name}: relative error {err:.2e}"
    # the padded positions' token ids get no gradient: wte rows used only as padding stay zero
    only_padding = set(idx[idx == 5].tolist()) - set(np.concatenate([idx[b, :n] for b, n in
                                                                      enumerate(lengths)]).tolist())
    for token in only_padding:
        assert not grads["wte.weight"][token].any()


def test_forward_hidden_is_what_the_lm_head_reads():
    model = _tiny_model(13).eval()
    idx = np.random.default_rng(4).integers(0, 13, (2, 5))
    logits, _ = model.forward(idx)
    hidden = model.forward_hidden(idx)
    np.testing.assert_allclose(hidden @ model.params["wte.weight"].T, logits, rtol=1e-12, atol=1e-12)
    with pytest.raises(TinyGPTError, match="forward"):
        model.backward()  # a hidden-state tape is not a language-model tape
    model.forward_hidden(idx, keep_caches=False)
    with pytest.raises(TinyGPTError, match="forward_hidden"):
        model.backward_hidden(np.zeros_like(hidden))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_backward_hidden_refuses_a_gradient_of_another_shape_and_keeps_the_tape(backend):
    config = GPTConfig(vocab_size=13, block_size=8, n_layer=1, n_head=2, n_embd=4)
    model = GPT(config, seed=0, backend=backend)
    hidden = model.forward_hidden(np.zeros((2, 3), int))
    for wrong in (np.ones((1, 6, 4)), np.ones((2, 3, 5))):  # numba took (1, 6, 4) and returned gradients
        with pytest.raises(TinyGPTError, match=r"dhidden has shape .* expected \(B, T, C\) = \(2, 3, 4\)"):
            model.backward_hidden(wrong)
    assert set(model.backward_hidden(np.ones_like(hidden))) == set(model.params)


# --- pooling and padding -----------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=5), st.integers(0, 2**16))
def test_pooling_picks_each_last_real_token(lengths, seed):
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((len(lengths), 9, 3))
    pooled, _ = ft.last_token_pool_forward(hidden, np.array(lengths))
    for b, n in enumerate(lengths):
        np.testing.assert_array_equal(pooled[b], hidden[b, n - 1])


def test_padding_does_not_change_the_logits():
    rng = np.random.default_rng(5)
    model = _tiny_model(11).eval()
    head = ft.init_head(8, 4, seed=0, dtype=np.float64)
    head[ft.HEAD_WEIGHT] = rng.standard_normal((8, 4))
    seqs = [rng.integers(0, 11, n) for n in (3, 9, 1, 6)]
    alone = np.concatenate([ft.classifier_forward(model, head, *ft.pad_batch([s]))[0] for s in seqs])
    for pad_id in (0, 7):
        together = ft.classifier_forward(model, head, *ft.pad_batch(seqs, pad_id=pad_id))[0]
        np.testing.assert_allclose(together, alone, rtol=1e-10, atol=1e-12)
    # and pooling the wrong position would change them: the test can fail
    idx, lengths = ft.pad_batch(seqs, pad_id=7)
    wrong = ft.classifier_forward(model, head, idx, np.full(4, idx.shape[1]))[0]
    assert not np.allclose(wrong, alone)


def test_texts_longer_than_block_size_keep_their_first_tokens():
    tok = CharTokenizer.train("abcdefgh")
    seqs, truncated = ft.encode_texts(tok, ["abcdefgh", "abc"], block_size=5, vocab_size=8)
    assert truncated == 1
    assert tok.decode(seqs[0].tolist()) == "abcde" and tok.decode(seqs[1].tolist()) == "abc"


# --- data, labels, split -----------------------------------------------------------------------------


def test_read_labelled_jsonl_and_csv_agree(tmp_path):
    rows = _rows(10)
    jsonl = _write_jsonl(tmp_path / "d.jsonl", rows)
    with open(tmp_path / "d.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    assert ft.read_labelled(jsonl) == ft.read_labelled(tmp_path / "d.csv")
    texts, labels, splits = ft.read_labelled(jsonl)
    assert texts == [r["text"] for r in rows] and labels == [r["label"] for r in rows]
    assert splits == [None] * 10


def test_a_label_with_a_lone_surrogate_is_refused(tmp_path):
    # JSON's "\ud800" is valid JSON but no text: fine-tuning took it, then predict and eval, printing it,
    # raised UnicodeEncodeError with a traceback
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "ok"}\n{"text": "b", "label": "\\ud800"}\n')
    with pytest.raises(TinyGPTError, match=r"d.jsonl:2: the label '\\ud800' holds a lone surrogate"):
        ft.read_labelled(path)


def test_labelled_data_saved_as_utf16_is_named_with_how_to_convert_it(tmp_path):
    # Excel's "Unicode Text" is UTF-16 LE with its BOM: "is not UTF-8 text (byte 0)" said nothing of that
    path = tmp_path / "d.csv"
    path.write_bytes("\ufefftext,label\na,x\nb,y\n".encode("utf-16-le"))
    with pytest.raises(TinyGPTError) as caught:
        ft.read_labelled(path)
    assert str(caught.value) == (
        f"{path} is UTF-16 text, not UTF-8 (it starts with UTF-16's byte-order mark): convert it first, e.g. "
        f"with `iconv -f UTF-16 -t UTF-8 {path} > {tmp_path / 'd-utf8.csv'}`")


def test_integer_labels_and_label_order():
    names, ids = ft.label_vocabulary([3, 1, 3, 2])
    assert names == [1, 2, 3] and ids.tolist() == [2, 0, 2, 1]
    names, ids = ft.label_vocabulary(["b", "a"], names=["b", "a"])
    assert names == ["b", "a"] and ids.tolist() == [0, 1]


def test_split_is_stratified_and_deterministic():
    label_ids = np.array([0] * 30 + [1] * 10 + [2] * 2)
    train, val = ft.split_indices(label_ids, [None] * 42, 0.2, seed=1, n_classes=3)
    again = ft.split_indices(label_ids, [None] * 42, 0.2, seed=1, n_classes=3)
    assert train.tolist() == again[0].tolist() and val.tolist() == again[1].tolist()
    assert np.bincount(label_ids[val], minlength=3).tolist() == [6, 2, 1]
    assert sorted(train.tolist() + val.tolist()) == list(range(42))
    other = ft.split_indices(label_ids, [None] * 42, 0.2, seed=2, n_classes=3)[1]
    assert other.tolist() != val.tolist()



def test_split_fields_put_each_row_where_the_file_says():
    # guards: the file's own split fields read the wrong way round (train rows validated on, and vice versa)
    label_ids = np.array([0, 1, 0, 1, 0, 1])
    splits = ["train", "val", "train", "train", "val", "train"]
    train, val = ft.split_indices(label_ids, splits, 0.1, seed=0, n_classes=2)
    assert train.tolist() == [0, 2, 3, 5] and val.tolist() == [1, 4]

def test_split_keeps_a_training_example_of_every_class_at_a_high_val_fraction():
    # guards: the clamp that keeps one training row per class lost (round(0.9 * 2) = 2 rows of class 0
    # would all go to validation, and the run would stop with "no training examples")
    label_ids = np.array([0, 0] + [1] * 10)
    train, val = ft.split_indices(label_ids, [None] * 12, 0.9, seed=0, n_classes=2)
    assert np.bincount(label_ids[val], minlength=2).tolist() == [1, 9]
    assert np.bincount(label_ids[train], minlength=2).tolist() == [1, 1]


def test_split_keeps_the_only_row_of_a_class_for_training():
    # guards: round(0.6 * 1) = 1 put a one-row class wholly in validation, and the run stopped with
    # "label 'rare' has no training examples", a split the stratification had drawn itself
    label_ids = np.array([0] + [1] * 10)
    train, val = ft.split_indices(label_ids, [None] * 11, 0.6, seed=0, n_classes=2, names=["rare", "common"])
    assert np.bincount(label_ids[val], minlength=2).tolist() == [0, 6]
    assert np.bincount(label_ids[train], minlength=2).tolist() == [1, 4]

# --- fine-tuning runs --------------------------------------------------------------------------------


def _config(tmp_path, data, **kw):
    values = {"data": str(data), "out": str(tmp_path / "clf"), "backend": "numpy", "batch_size": 8,
              "learning_rate": 3e-3, "warmup_iters": 2, "eval_interval": 10, "max_iters": 30, **kw}
    return ft.FinetuneConfig(**values)


def test_frozen_body_does_not_change_and_the_head_learns(tmp_path, lm_dir):
    data = _write_jsonl(tmp_path / "d.jsonl", _rows())
    before = load_checkpoint(lm_dir).model.params
    summary = ft.finetune_classifier(_config(tmp_path, data, init_from=str(lm_dir), freeze_body=True,
                                             learning_rate=3e-2, max_iters=40), quiet=True)
    clf = ft.load_classifier(tmp_path / "clf")
    for name, p in before.items():
        np.testing.assert_array_equal(clf.model.params[name], p, err_msg=name)
    assert np.abs(clf.head[ft.HEAD_WEIGHT]).max() > 0.1  # moved well away from its N(0, 0.02) init
    rows = [json.loads(line) for line in (tmp_path / "clf" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[1]["train_loss"] and summary["step"] == 40


@pytest.mark.parametrize("freeze_body", [False, True])
def test_finetune_on_numba_steps_and_clips_with_train_s_kernels(tmp_path, lm_dir, monkeypatch, freeze_body):
    # finetune builds its AdamW as train does (fused_adamw: numba's one-pass update) and clips with numba's
    # compiled sum of squares, where it ran NumPy's in-place step and the float64-block reference: the same
    # weights as numpy's to float32 rounding. (--val-fraction 0: the finite-weights check sums squares too)
    from tinygpt.kernels import cpu

    calls = []
    for name in ("_adamw_kernel", "_sum_squares_kernel"):
        real = getattr(cpu, name)
        monkeypatch.setattr(cpu, name, lambda *args, name=name, real=real: calls.append(name) or real(*args))
    data = _write_jsonl(tmp_path / "d.jsonl", _rows())
    trained = {}
    for backend in ("numpy", "numba"):
        calls.clear()
        ft.finetune_classifier(_config(tmp_path / backend, data, init_from=str(lm_dir), backend=backend,
                                       max_iters=4, eval_interval=2, val_fraction=0.0, grad_clip=0.05,
                                       freeze_body=freeze_body), quiet=True)
        clf = ft.load_classifier(tmp_path / backend / "clf")
        trained[backend] = {**clf.model.params, **clf.head}
        if backend == "numpy":
            assert calls == []
    n_tensors = 2 if freeze_body else len(trained["numba"])  # (the head's weight and bias when frozen)
    assert calls.count("_adamw_kernel") == 4 * n_tensors  # every update of every trainable tensor
    assert calls.count("_sum_squares_kernel") >= 4 * n_tensors  # each clip's norm, and each finite check's
    for name, value in trained["numpy"].items():
        np.testing.assert_allclose(trained["numba"][name], value, rtol=1e-4, atol=1e-6, err_msg=name)
    if freeze_body:
        before = load_checkpoint(lm_dir).model.params
        assert all(np.array_equal(trained["numba"][name], p) for name, p in before.items())


@pytest.mark.parametrize("freeze_body", [True, False])
def test_finetune_on_the_cuda_backend_sums_its_host_gradients_on_the_host(tmp_path, lm_dir, monkeypatch,
                                                                          freeze_body):
    # the head's gradients are host arrays on every backend. The cuda backend's ops.sum_squares takes them,
    # but copies each to the GPU and its sum back: two waits for a few numbers, every step, in a frozen
    # body's loop that ran all on the host. A stand-in for it: numpy's ops named "cuda", whose sum_squares
    # records what it was given (--val-fraction 0: the finite-weights check sums squares too)
    import types

    from tinygpt import kernels

    sent, load_body = [], ft._load_body

    def load_body_on_cuda(cfg, texts):
        model, tokenizer, source = load_body(cfg, texts)
        model.ops = types.SimpleNamespace(**{**vars(model.ops), "name": "cuda", "sum_squares": lambda a:
                                             sent.append(a.shape) or kernels.sum_squares(a)})
        return model, tokenizer, source

    monkeypatch.setattr(ft, "_load_body", load_body_on_cuda)
    data = _write_jsonl(tmp_path / "d.jsonl", _rows())
    summary = ft.finetune_classifier(_config(tmp_path, data, init_from=str(lm_dir), max_iters=4,
                                             eval_interval=2, val_fraction=0.0, freeze_body=freeze_body),
                                     quiet=True)
    assert summary["step"] == 4 and sent == []


def test_training_everything_changes_the_body_and_fits_the_labels(tmp_path, lm_dir):
    data = _write_jsonl(tmp_path / "d.jsonl", _rows())
    before = load_checkpoint(lm_dir).model.params
    summary = ft.finetune_classifier(_config(tmp_path, data, init_from=str(lm_dir), max_iters=60), quiet=True)
    clf = ft.load_classifier(tmp_path / "clf")
    changed = [name for name, p in before.items() if not np.array_equal(clf.model.params[name], p)]
    assert len(changed) == len(before)
    rows = [json.loads(line) for line in (tmp_path / "clf" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 10, 20, 30, 40, 50, 60]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch"} <= set(rows[-1])
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] and summary["val_acc"] == 1.0
    # (a body this small mostly reads the last characters: these end as only one class's phrases do)
    probs = ft.predict_proba(clf, ["o woe, death and blood", "sweet love, o merry day"])
    assert probs.shape == (2, 2) and np.allclose(probs.sum(axis=1), 1)
    assert clf.labels == ["comedy", "tragedy"] and probs[0].argmax() == 1 and probs[1].argmax() == 0
    # the body is still a language model for tinygpt sample / eval
    assert load_checkpoint(tmp_path / "clf").model.config == clf.model.config


def test_recompute_fine_tunes_to_the_same_classifier(tmp_path, lm_dir, monkeypatch):
    # activation recomputation through forward_hidden / backward_hidden: the same weights, dropout on
    from tinygpt.model import GPT

    data = _write_jsonl(tmp_path / "d.jsonl", _rows())
    replays = []
    block_forward = GPT._block_forward
    monkeypatch.setattr(GPT, "_block_forward", lambda self, *a: replays.append(1) or block_forward(self, *a))
    heads, params, calls = [], [], []
    for recompute in (False, True):
        replays.clear()
        out = tmp_path / f"clf{recompute}"
        ft.finetune_classifier(_config(tmp_path, data, init_from=str(lm_dir), out=str(out), max_iters=4,
                                       dropout=0.1, recompute=recompute), quiet=True)
        clf = ft.load_classifier(out)
        heads.append(clf.head)
        params.append(clf.model.params)
        calls.append(len(replays))
    for name in heads[0]:
        np.testing.assert_array_equal(heads[1][name], heads[0][name], err_msg=name)
    for name in params[0]:
        np.testing.assert_array_equal(params[1][name], params[0][name], err_msg=name)
    assert calls[1] > calls[0]  # the blocks really were replayed


def test_eval_of_a_classifier_it_cannot_write_a_figure_beside_is_a_warning(tmp_path, capsys, monkeypatch):
    # eval writes DIR/confusion_val.png: a read-only (shared) model directory printed the scores and then
    # 'tinygpt: error: Permission denied: DIR/confusion_val.png', exit status 2, as if the evaluation failed
    data = _write_jsonl(tmp_path / "d.jsonl", _rows())
    ft.finetune_classifier(_config(tmp_path, data, n_layer=1, n_head=2, n_embd=8, block_size=16,
                                   max_iters=2), quiet=True)

    def read_only(path, data):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(ft, "write_atomic", read_only)
    assert main(["eval", "--out", str(tmp_path / "clf"), "--backend", "numpy"]) == 0
    captured = capsys.readouterr()
    assert "accuracy " in captured.out and "figure:" not in captured.out
    assert captured.err == ("tinygpt: warning: no confusion matrix figure written (Permission denied: "
                            f"{tmp_path / 'clf' / 'confusion_val.png'}); the scores above stand\n")
    assert not (tmp_path / "clf" / "confusion_val.png").exists()


def test_from_scratch_builds_a_char_model_of_the_data(tmp_path):
    data = _write_jsonl(tmp_path / "d.jsonl", _rows())
    ft.finetune_classifier(_config(tmp_path, data, n_layer=1, n_head=2, n_embd=8, block_size=16,
                                   max_iters=5), quiet=True)
    clf = ft.load_classifier(tmp_path / "clf")
    assert clf.model.config.block_size == 16 and clf.meta["source"] == "a fresh random initialisation"
    assert clf.tokenizer.vocab_size == len(set("".join(r["text"] for r in _rows())))


# --- the commands ------------------------------------------------------------------------------------


def test_a_metrics_file_unreadable_at_the_end_does_not_fail_the_finished_run(tmp_path, lm_dir, capsys,
                                                                             monkeypatch):
    # the summary read metrics.jsonl again for its val accuracy: an error there ended a run whose every step
    # was saved with exit 2 ('tinygpt: error: Permission denied: .../metrics.jsonl'), as train's did (f6c8649)
    read_bytes = Path.read_bytes

    def unreadable_metrics(path):
        if path.name == "metrics.jsonl":
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    data = _write_jsonl(tmp_path / "d.jsonl", _rows(16))
    out = tmp_path / "clf"
    monkeypatch.setattr(Path, "read_bytes", unreadable_metrics)
    assert main(["finetune", "--data", str(data), "--init-from", str(lm_dir), "--out", str(out),
                 "--max-iters", "2", "--eval-interval", "2", "--batch-size", "4", "--backend", "numpy"]) == 0
    captured = capsys.readouterr()
    assert (f"warning: the summary has no val accuracy (Permission denied: {out / 'metrics.jsonl'}); the "
            "run's checkpoint and metrics are saved") in captured.err
    assert "done: 2 steps" in captured.out and "val accuracy n/a;" in captured.out
    monkeypatch.undo()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # steps 0 and 2: written, not lost


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_cli_finetune_predict_eval(tmp_path, lm_dir, capsys, fmt):
    rows = _rows()
    if fmt == "jsonl":
        data = _write_jsonl(tmp_path / "d.jsonl", rows)
    else:
        data = tmp_path / "d.csv"
        with open(data, "w", newline="") as f:
            writer = csv.DictWriter(f, ["label", "text"])
            writer.writeheader()
            writer.writerows(rows)
    out = tmp_path / "clf"
    assert main(["finetune", "--task", "classify", "--data", str(data), "--init-from", str(lm_dir), "--out",
                 str(out), "--max-iters", "40", "--eval-interval", "20", "--learning-rate", "3e-3",
                 "--batch-size", "8", "--backend", "numpy", "--quiet"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    capsys.readouterr()
    assert main(["predict", "--out", str(out), "the grave, death and blood"]) == 0
    lines = capsys.readouterr().out.split("\n")
    assert lines[0].split()[0] == "tragedy" and lines[1].split()[0] == "comedy"
    assert sum(float(line.split()[1]) for line in lines[:2]) == pytest.approx(1.0, abs=2e-4)
    assert main(["eval", "--out", str(out), "--backend", "numpy"]) == 0
    text = capsys.readouterr().out
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert f"accuracy {last['val_acc']:.4f}  loss {last['val_loss']:.4f}" in text  # the same split and model
    matrix = text.split("confusion matrix")[1].splitlines()[2:4]
    counts = [int(n) for line in matrix for n in line.split()[1:]]
    assert sum(counts) == 4 and "val split" in text and "4 texts" in text
    assert (out / "confusion_val.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # sampling a classifier is its body's language model, said on stderr (it was silent)
    sample = ["sample", "--out", str(out), "--prompt", "the ", "--max-new-tokens", "5", "--seed", "0"]
    assert main(sample) == 0
    sampled = capsys.readouterr()
    assert sampled.out.startswith("the ") and len(sampled.out) >= len("the ") + 5
    assert sampled.err == (f"tinygpt: note: {out} is a classifier (tinygpt finetune); sampling from its GPT "
                           "body's tied LM head, its classifier head unused (tinygpt predict uses that)\n")


def _fails(capsys, argv, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tinygpt: error: "), err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_bad_input_is_one_line_exit_2(tmp_path, lm_dir, capsys):
    def run(rows, *extra, name="d.jsonl"):
        data = tmp_path / name
        if isinstance(rows, str):
            data.write_text(rows)
        else:
            _write_jsonl(data, rows)
        return ["finetune", "--data", str(data), "--init-from", str(lm_dir), "--out", str(tmp_path / "o"),
                "--backend", "numpy", "--quiet", *extra]

    good = _rows(8)
    _fails(capsys, run(good + [{"text": "the grave"}]), "d.jsonl:9: missing label")
    _fails(capsys, run(good + [{"label": "comedy"}]), "d.jsonl:9: missing text")
    _fails(capsys, run(good + [{"text": "o woe", "label": 1}]), "labels of mixed types")
    _fails(capsys, run(good, "--labels", "comedy,tragedy,history"), "class 'history' has no examples")
    _fails(capsys, run([{"text": t["text"], "label": "comedy"} for t in good]), "at least two classes")
    _fails(capsys, run(good + [{"text": "ZZZ QQQ", "label": "comedy"}]),
           "text 9", "cannot encode", "'Z' is not in this tokenizer's vocabulary")
    _fails(capsys, run("text,label\nhello,a\nHELLO,b\n", name="d.csv"), "cannot encode")
    _fails(capsys, run("label\na\n", name="e.csv"), "must name the columns text and label")
    _fails(capsys, run("{not json\n"), "d.jsonl:1: not valid JSON")
    _fails(capsys, run(good, name="d.txt"), "must be .jsonl or .csv")
    _fails(capsys, run(good, "--seed", "-1"), "--seed must be a non-negative integer")
    # it ran, diverged and advised "try a lower --learning-rate"
    _fails(capsys, run(good, "--weight-decay", "inf"), "--weight-decay must be a finite number >= 0, got inf")
    _fails(capsys, run(good, "--grad-clip", "nan"), "--grad-clip must be a finite number >= 0, got nan")
    split = [{**r, "split": "val" if r["label"] == "comedy" else "train"} for r in good]
    _fails(capsys, run(split), "no training examples")
    _fails(capsys, run([{**r, "split": "test"} for r in good]), "split must be train or val")
    _fails(capsys, ["finetune", "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")],
           "not found")
    # a device or a directory is named as such, not "not found"
    _fails(capsys, ["finetune", "--data", "/dev/zero", "--out", str(tmp_path / "o")],
           "labelled data path is a device, not a text file: /dev/zero")
    _fails(capsys, ["finetune", "--data", str(tmp_path), "--out", str(tmp_path / "o")],
           "labelled data path is a directory")
    _fails(capsys, ["predict", "--out", str(lm_dir), "hello"], "language model, not a classifier")
    # a tinygpt run as --pretrained: it was "d.jsonl, text 1: token id 8818 is outside the model's vocabulary"
    _fails(capsys, ["finetune", "--data", str(_write_jsonl(tmp_path / "g.jsonl", good)), "--pretrained",
                    str(lm_dir), "--out", str(tmp_path / "o"), "--quiet"], "use --init-from")
    _fails(capsys, ["predict", "--out", str(tmp_path / "nothing"), "hello"], "does not exist")


@pytest.mark.parametrize("flags, what", [
    (["--tokenizer", "gpt2"], "tokenizer"),
    (["--tokenizer", "char"], "tokenizer"),  # even the checkpoint's own kind: it is not what decides
    (["--n-layer", "2"], "shape"),
    (["--block-size", "8"], "shape"),
])
@pytest.mark.parametrize("start", ["--init-from", "--pretrained"])
def test_scratch_settings_with_a_checkpoint_are_refused(tmp_path, lm_dir, capsys, flags, what, start):
    """--tokenizer and the shape flags build a model from scratch; a checkpoint brings its own."""
    data = _write_jsonl(tmp_path / "d.jsonl", _rows(8))
    out = tmp_path / "o"
    err = _fails(capsys, ["finetune", "--data", str(data), start, str(lm_dir), "--out", str(out), *flags,
                          "--backend", "numpy", "--quiet"],
                 f"{flags[0]} is for a model from scratch", f"the model's {what} comes from the checkpoint")
    assert str(lm_dir) in err and start in err
    assert not out.exists()  # refused before anything was loaded or written
    with pytest.raises(TinyGPTError, match="--tokenizer is for a model from scratch"):
        ft.FinetuneConfig(data=str(data), init_from=str(lm_dir), tokenizer="gpt2").validate()


def test_scratch_settings_default_only_without_a_checkpoint(tmp_path):
    cfg = ft.FinetuneConfig(data="d.jsonl").validate()
    assert (cfg.tokenizer, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.bias) == (
        "char", 4, 4, 128, 128, False)
    cfg = ft.FinetuneConfig(data="d.jsonl", init_from="lm").validate()
    assert cfg.tokenizer is cfg.n_layer is cfg.block_size is None  # the checkpoint's: recorded as such
    with pytest.raises(TinyGPTError, match="divisible"):
        ft.FinetuneConfig(data="d.jsonl", n_embd=30, n_head=4).validate()


@pytest.mark.parametrize("min_lr, message", [
    (1e-2, "--min-lr (0.01) must not exceed --learning-rate (0.001)"),
    (-1e-4, "--min-lr must be a number >= 0"),
    (float("nan"), "--min-lr must be a number >= 0"),
])
def test_min_lr_above_the_learning_rate_is_refused(tmp_path, lm_dir, capsys, min_lr, message):
    data = _write_jsonl(tmp_path / "d.jsonl", _rows(8))
    out = tmp_path / "o"
    _fails(capsys, ["finetune", "--data", str(data), "--init-from", str(lm_dir), "--out", str(out),
                    "--learning-rate", "1e-3", "--min-lr", str(min_lr), "--backend", "numpy", "--quiet"],
           message)
    assert not out.exists()
    with pytest.raises(TinyGPTError, match="--min-lr"):
        ft.FinetuneConfig(data=str(data), learning_rate=1e-3, min_lr=min_lr).validate()


def test_min_lr_is_the_end_of_the_schedule(tmp_path, lm_dir):
    data = _write_jsonl(tmp_path / "d.jsonl", _rows(16))
    out = tmp_path / "clf"
    assert main(["finetune", "--data", str(data), "--init-from", str(lm_dir), "--out", str(out),
                 "--max-iters", "4", "--eval-interval", "2", "--learning-rate", "2e-3", "--min-lr", "2e-3",
                 "--warmup-iters", "0", "--backend", "numpy", "--quiet"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == pytest.approx([2e-3] * 3)  # min_lr = learning_rate: a constant rate


def test_best_names_the_checkpoint_of_the_best_val_accuracy_then_loss(tmp_path, lm_dir, monkeypatch):
    # evaluations at steps 0, 10, 20, 30, 40: accuracy decides, the val loss breaks a tie (step 30: the
    # same accuracy as step 20 at a lower loss), and a worse last evaluation leaves the best in place
    data = _write_jsonl(tmp_path / "d.jsonl", _rows())
    scripted = iter([(0.5, 0.70), (0.75, 0.60), (0.875, 0.50), (0.875, 0.40), (0.75, 0.30)])  # (acc, loss)
    real_scores = ft._scores

    def scores(features, head, label_ids=None):
        probs, loss, acc = real_scores(features, head, label_ids)
        return (probs, *reversed(next(scripted))) if label_ids is not None else (probs, loss, acc)

    monkeypatch.setattr(ft, "_scores", scores)
    out = tmp_path / "clf"
    summary = ft.finetune_classifier(_config(tmp_path, data, init_from=str(lm_dir), max_iters=40), quiet=True)
    assert os.readlink(out / "best") == "checkpoints/step-00000030"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000030", "step-00000040"]
    assert ft.load_classifier(out / "best").labels == ft.load_classifier(out).labels
    best = load_checkpoint(out / "best").state
    assert (best["step"], best["val_acc"], best["val_loss"]) == (30, 0.875, 0.40)
    assert summary["best_val_acc"] == 0.875 and summary["val_acc"] == 0.75


def test_val_fraction_zero_reports_training_metrics_only(tmp_path, lm_dir, capsys):
    data = _write_jsonl(tmp_path / "d.jsonl", _rows(16))
    out = tmp_path / "clf"
    assert main(["finetune", "--data", str(data), "--init-from", str(lm_dir), "--out", str(out),
                 "--max-iters", "4", "--eval-interval", "2", "--batch-size", "4", "--val-fraction", "0",
                 "--backend", "numpy"]) == 0
    captured = capsys.readouterr()
    assert "16 train / 0 val texts" in captured.err and "no validation split" in captured.err
    steps = [line for line in captured.err.splitlines() if line.startswith("step ")]
    assert len(steps) == 3
    assert steps[0] == "step 0 (epoch 0.00): nothing to evaluate yet (no validation split)"
    for line in steps[1:]:
        shown = line.split(": ", 1)[1]
        assert shown.startswith("train_loss ") and ", train_acc " in shown and "val" not in shown, line
    assert "nan" not in captured.err.lower() and "val accuracy n/a (no val split)" in captured.out
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        assert not {"val_loss", "val_acc"} & set(row), row  # absent, not null or NaN
        assert all(isinstance(v, (int, float)) and np.isfinite(v) for v in row.values()), row
    assert {"train_loss", "train_acc"} <= set(rows[-1])
    state = load_checkpoint(out).state
    assert state["step"] == 4 and "val_acc" not in state and "val_loss" not in state
    assert not (out / "best").exists()  # nothing measured, nothing best
    _fails(capsys, ["eval", "--out", str(out), "--backend", "numpy"], "val split", "is empty",
           "--split train")
    assert main(["eval", "--out", str(out), "--split", "train", "--backend", "numpy"]) == 0
    assert "train split" in capsys.readouterr().out


# --- the genre task builder ----------------------------------------------------------------------------


def _genre_module():
    path = Path(__file__).resolve().parent.parent / "data" / "make_genre_task.py"
    spec = importlib.util.spec_from_file_location("make_genre_task", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PLAY = """THE TRAGEDY OF X

DRAMATIS PERSONAE
KING, a king.

ACT I.

SCENE I. A room.

[Enter KING and QUEEN, with
attendants.]

KING.
Now is the winter of our discontent
Made glorious summer by this sun of York;

Que.
And all the clouds that lour'd upon our house [Aside.]
In the deep bosom of the ocean buried.

Exeunt.
"""


def test_dialogue_lines_drop_cast_speakers_and_directions():
    genre = _genre_module()
    assert genre.dialogue_lines(PLAY) == [
        "Now is the winter of our discontent", "Made glorious summer by this sun of York;",
        "And all the clouds that lour'd upon our house", "In the deep bosom of the ocean buried."]
    assert genre.passages(["a" * 10, "b" * 10, "c" * 10, "d" * 30], max_chars=21) == [
        "a" * 10 + "\n" + "b" * 10, "c" * 10]  # lines are never cut; one longer than a passage is skipped
    assert genre.passages(["a" * 10, "b" * 10, "c" * 9], max_chars=21) == ["a" * 10 + "\n" + "b" * 10]


def test_genre_task_holds_out_whole_plays():
    genre = _genre_module()
    works = {name: PLAY.replace("York", name) for name in genre.GENRE}
    works["sonnets"] = "Shall I compare thee to a summer's day?\n"
    rows, held_out, pretrain = genre.build(works, max_chars=90, per_play=2, seed=0)
    assert len(held_out) == sum(genre.HELD_OUT_PER_GENRE.values())
    assert {genre.GENRE[p] for p in held_out} == {"comedy", "tragedy", "history"}
    for row in rows:
        assert row["label"] == genre.GENRE[row["play"]]
        assert row["split"] == ("val" if row["play"] in held_out else "train")
    for play in held_out:
        assert play not in pretrain  # the held-out plays' text is not in the pre-training corpus
    assert "summer's day" in pretrain and "sonnets" not in {r["play"] for r in rows}


# --- language-model fine-tuning: tinygpt train --init-from / --pretrained ----------------------------


LM_TEXT = "".join(r["text"] + "\n" for r in _rows(200))
LM_FLAGS = ["--eval-iters", "2", "--batch-size", "4", "--warmup-iters", "2", "--backend", "numpy", "--quiet"]


def test_train_init_from_continues_from_the_checkpoint(tmp_path, monkeypatch):

    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "lm.txt"
    corpus.write_text(LM_TEXT)
    base = ["train", "--data", str(corpus), "--block-size", "16", *LM_FLAGS]
    assert main([*base, "--out", str(tmp_path / "a"), "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
                 "--max-iters", "30", "--eval-interval", "30", "--learning-rate", "1e-2"]) == 0
    # the run takes the initial model's shape (1 layer, 16 wide; shape flags are refused with --init-from)
    assert main([*base, "--out", str(tmp_path / "b"), "--init-from", str(tmp_path / "a"),
                 "--max-iters", "4", "--eval-interval", "2", "--learning-rate", "1e-4"]) == 0
    first = read_metrics(tmp_path / "a" / "metrics.jsonl")
    second = read_metrics(tmp_path / "b" / "metrics.jsonl")
    # same model, same data, same seed: step 0 of the fine-tuning run evaluates exactly the model it loaded
    assert second[0]["val_loss"] == first[-1]["val_loss"] < first[0]["val_loss"] - 0.5
    ckpt = load_checkpoint(tmp_path / "b")
    assert ckpt.model.config.n_layer == 1 and ckpt.train_config["init_from"] == str(tmp_path / "a")
    assert ckpt.tokenizer.vocab_size == load_checkpoint(tmp_path / "a").tokenizer.vocab_size


def test_train_init_from_bad_input(tmp_path, lm_dir, capsys, monkeypatch):
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    other = tmp_path / "other.txt"
    other.write_text("QUITE DIFFERENT CHARACTERS\n" * 40)
    _fails(capsys, ["train", "--data", str(other), "--out", str(tmp_path / "x"), "--init-from", str(lm_dir),
                    "--block-size", "8", *LM_FLAGS], "cannot encode", "not in this tokenizer's vocabulary")
    # a file that cannot be read is no fault of the tokenizer: it said 'the tokenizer of DIR cannot encode
    # missing.txt: data file not found: missing.txt'
    for name, content, error in (("missing.txt", None, "data file not found"),
                                 ("empty.txt", b"", "data file is empty"),
                                 ("latin1.txt", b"caf\xe9\n" * 40, "data file is not UTF-8 text")):
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        err = _fails(capsys, ["train", "--data", str(path), "--out", str(tmp_path / "x"), "--init-from",
                              str(lm_dir), "--block-size", "8", *LM_FLAGS], f"tinygpt: error: {error}")
        assert "cannot encode" not in err
    corpus = tmp_path / "lm.txt"
    corpus.write_text(LM_TEXT)
    _fails(capsys, ["train", "--data", str(corpus), "--out", str(tmp_path / "x"), "--init-from", str(lm_dir),
                    "--block-size", "64", *LM_FLAGS], "exceeds the initial model's block_size 24",
           "pass --block-size 24 or less")
    # a tinygpt run directory given as --pretrained: GPT-2's tokenizer would not fit its 37-odd-token model
    _fails(capsys, ["train", "--data", str(corpus), "--out", str(tmp_path / "x"), "--pretrained", str(lm_dir),
                    "--block-size", "8", *LM_FLAGS], "use --init-from")


def test_train_resume_refuses_a_classifier_run(tmp_path, lm_dir, capsys):
    # it failed on the classifier's settings instead: "--min-lr must be a finite number, got None"
    data = _write_jsonl(tmp_path / "d.jsonl", _rows(16))
    out = tmp_path / "clf"
    assert main(["finetune", "--data", str(data), "--init-from", str(lm_dir), "--out", str(out),
                 "--max-iters", "1", "--batch-size", "4", "--backend", "numpy", "--quiet"]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    _fails(capsys, ["train", "--resume", "--out", str(out), "--max-iters", "3"],
           f"{out} holds a classifier", "tinygpt finetune")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_train_pretrained_gpt2_dir_uses_its_shape_and_gpt2_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    hf = tmp_path / "hf"
    GPT(GPTConfig(50257, 32, 1, 2, 8), seed=0).save_pretrained(hf)  # a tiny GPT-2-format checkpoint
    corpus = tmp_path / "lm.txt"
    corpus.write_text(LM_TEXT)
    assert main(["train", "--data", str(corpus), "--out", str(tmp_path / "b"), "--pretrained", str(hf),
                 "--block-size", "8", "--max-iters", "2", "--eval-interval", "2", *LM_FLAGS]) == 0
    ckpt = load_checkpoint(tmp_path / "b")
    assert ckpt.model.config.n_embd == 8 and ckpt.model.config.block_size == 32
    assert ckpt.train_config["tokenizer"] == "gpt2" and ckpt.tokenizer.vocab_size == 50257


def test_train_and_finetune_start_from_a_nanogpt_checkpoint(tmp_path, monkeypatch, make_nanogpt_ckpt):
    # nanoGPT's ckpt.pt (vocab padded to 50304, the exact GELU) fine-tunes with GPT-2's tokenizer, and the
    # run's checkpoint keeps the model's shape and GELU
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    nano = tmp_path / "nano"
    nano.mkdir()
    make_nanogpt_ckpt(nano / "ckpt.pt", vocab_size=50304, block_size=16, n_embd=8)
    corpus = tmp_path / "lm.txt"
    corpus.write_text(LM_TEXT)
    assert main(["train", "--data", str(corpus), "--out", str(tmp_path / "b"), "--pretrained",
                 str(nano / "ckpt.pt"), "--block-size", "8", "--max-iters", "1", "--eval-interval", "1",
                 *LM_FLAGS]) == 0
    ckpt = load_checkpoint(tmp_path / "b")
    start = GPT.from_pretrained(nano)
    assert ckpt.model.config == GPTConfig(50304, 16, 2, 2, 8, gelu="erf")
    assert ckpt.train_config["tokenizer"] == "gpt2" and ckpt.tokenizer.vocab_size == 50257
    assert ckpt.state["step"] == 1 and not np.array_equal(ckpt.model.params["h.0.mlp.c_fc.weight"],
                                                          start.params["h.0.mlp.c_fc.weight"])
    data = tmp_path / "c.jsonl"
    _write_jsonl(data, _rows(12))
    assert main(["finetune", "--data", str(data), "--out", str(tmp_path / "clf"), "--pretrained", str(nano),
                 "--max-iters", "1", "--batch-size", "4", "--backend", "numpy", "--quiet"]) == 0
    assert ft.load_classifier(tmp_path / "clf").model.config.gelu == "erf"


def test_a_char_level_nanogpt_checkpoint_without_its_meta_pkl_is_refused_in_one_line(tmp_path, capsys,
                                                                                      make_nanogpt_ckpt):
    # its vocabulary is in the dataset's meta.pkl, not in ckpt.pt: GPT-2's tokenizer would be wrong for it
    make_nanogpt_ckpt(tmp_path / "ckpt.pt", vocab_size=65, block_size=8, dataset="shakespeare_char")
    corpus = tmp_path / "lm.txt"
    corpus.write_text(LM_TEXT)
    for argv in (["sample", "--pretrained", str(tmp_path / "ckpt.pt")],
                 ["eval", "--pretrained", str(tmp_path), "--data", str(corpus)],
                 ["train", "--pretrained", str(tmp_path), "--data", str(corpus), "--out",
                  str(tmp_path / "o")]):
        _fails(capsys, argv, "ckpt.pt: a nanoGPT checkpoint of vocab_size 65, fewer than GPT-2's 50257",
               "meta.pkl", "none was found")


@pytest.mark.parametrize("where", ["beside", "nanogpt_layout", "cwd"])
def test_a_char_level_nanogpt_checkpoint_reads_its_datasets_meta_pkl(tmp_path, capsys, monkeypatch,
                                                                    make_nanogpt_ckpt, nanogpt_dir, where):
    # nanoGPT's shakespeare_char run: out-shakespeare-char/ckpt.pt beside data/shakespeare_char/meta.pkl, or
    # meta.pkl copied beside ckpt.pt, or data/<dataset>/ under the working directory (where nanoGPT's
    # sample.py looks): the characters are meta.pkl's, so sample decodes what the torch model writes
    import torch
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 8
    chars = sorted(set(text))
    root = tmp_path / "nanoGPT"
    out_dir = root / "out-shakespeare-char"
    out_dir.mkdir(parents=True)
    data = {"beside": out_dir, "nanogpt_layout": root / "data" / "shakespeare_char",
            "cwd": tmp_path / "elsewhere" / "data" / "shakespeare_char"}[where]
    nanogpt_dir(data, text, "char")  # train.bin, val.bin and meta.pkl
    if where == "cwd":
        monkeypatch.chdir(tmp_path / "elsewhere")
    model = make_nanogpt_ckpt(out_dir / "ckpt.pt", vocab_size=len(chars), block_size=16, n_embd=16, seed=3,
                              dataset="shakespeare_char")
    prompt = "First"
    ids = [chars.index(c) for c in prompt]
    with torch.no_grad():
        for _ in range(10):
            ids.append(int(model(torch.tensor([ids[-16:]]))[0, -1].argmax()))
    assert main(["sample", "--pretrained", str(out_dir), "--prompt", prompt, "--max-new-tokens", "10",
                 "--temperature", "0"]) == 0
    out, err = capsys.readouterr()
    assert out == "".join(chars[i] for i in ids) + "\n"
    assert "using the characters of" in err and "meta.pkl" in err
    # eval on the dataset's own val.bin: the torch model's loss on its back-to-back windows
    assert main(["eval", "--pretrained", str(out_dir), "--data", str(data)]) == 0
    val = np.fromfile(data / "val.bin", dtype=np.uint16).astype(np.int64)
    windows = torch.tensor(np.stack([val[i : i + 17] for i in range(0, len(val) - 16, 16)]))
    with torch.no_grad():
        logits = model(windows[:, :-1])
        expected = torch.nn.functional.cross_entropy(logits.reshape(-1, len(chars)),
                                                     windows[:, 1:].reshape(-1)).item()
    loss = float(re.search(r"loss ([0-9.]+)", capsys.readouterr().out).group(1))
    assert loss == pytest.approx(expected, abs=1e-3)  # (the printed loss has 4 decimals)
    # fine-tuning keeps the characters: the run's tokenizer is meta.pkl's
    assert main(["train", "--pretrained", str(out_dir), "--data", str(data), "--out", str(tmp_path / "ft"),
                 "--max-iters", "1", "--block-size", "16", *LM_FLAGS]) == 0
    assert load_checkpoint(tmp_path / "ft").tokenizer.chars == chars


def test_nanogpt_meta_path_follows_only_a_datasets_name(tmp_path, monkeypatch):
    from tinygpt.model import nanogpt_meta_path

    (tmp_path / "run").mkdir()
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "meta.pkl").write_bytes(b"")
    monkeypatch.chdir(tmp_path / "run")
    ckpt = str(tmp_path / "run" / "ckpt.pt")
    for dataset in ("../secret", str(tmp_path / "secret"), "..", ".", "", None, 7):  # (a path is not a name)
        assert nanogpt_meta_path(ckpt, {"config": {"dataset": dataset}}) is None, dataset
    assert nanogpt_meta_path(ckpt, {"config": "not a dict"}) is None
    (tmp_path / "data" / "secret").mkdir(parents=True)
    (tmp_path / "data" / "secret" / "meta.pkl").write_bytes(b"")  # nanoGPT's layout: ../data/<dataset>/
    assert nanogpt_meta_path(ckpt, {"config": {"dataset": "secret"}}) == str(
        tmp_path / "run" / ".." / "data" / "secret" / "meta.pkl")


def test_a_meta_pkl_with_more_characters_than_the_model_is_refused(tmp_path, capsys, make_nanogpt_ckpt,
                                                                   nanogpt_dir):
    nanogpt_dir(tmp_path, "abcdefghij" * 10, "char")  # 10 characters beside a checkpoint of 8 ids
    make_nanogpt_ckpt(tmp_path / "ckpt.pt", vocab_size=8, block_size=8, dataset="shakespeare_char")
    _fails(capsys, ["sample", "--pretrained", str(tmp_path)], "meta.pkl: 10 characters", "has 8 ids")


def test_numeric_label_names_match_csv_and_jsonl_labels(tmp_path, capsys):
    # --labels 1,0 arrives as text: a .csv's labels are text too, a .jsonl's may be integers
    assert ft.label_vocabulary(["1", "0", "1"], names=["1", "0"])[1].tolist() == [0, 1, 0]
    assert ft.label_vocabulary([1, 0, 1], names=["1", "0"])[0] == [1, 0]
    data = tmp_path / "n.csv"
    data.write_text("text,label\nthe fox,1\nlazy dog,0\nthe quick,1\ndog lazy,0\nthe fox,1\nlazy dog,0\n")
    assert main(["finetune", "--data", str(data), "--out", str(tmp_path / "clf"), "--labels", "1,0",
                 "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
                 "--max-iters", "1", "--backend", "numpy", "--quiet"]) == 0
    assert ft.load_classifier(tmp_path / "clf").labels == ["1", "0"]
    # a .jsonl of the same task, with its labels as JSON integers, is scored by that classifier
    _write_jsonl(tmp_path / "n.jsonl", [{"text": "the fox", "label": 1}, {"text": "lazy dog", "label": 0}])
    result = ft.evaluate_classifier(tmp_path / "clf", data=str(tmp_path / "n.jsonl"), split="all")
    assert result["confusion"].sum() == 2 and result["labels"] == ["1", "0"]
    _fails(capsys, ["eval", "--out", str(tmp_path / "clf"), "--batch-size", "0"], "--batch-size")
    # a language model's sliding windows: a classifier reads each text in one window
    _fails(capsys, ["eval", "--out", str(tmp_path / "clf"), "--stride", "4"], "--stride is for language")
    assert main(["eval", "--out", str(tmp_path / "clf"), "--backend", "numpy"]) == 0  # (no --batch-size: 32)
    with pytest.raises(TinyGPTError, match="batch-size"):  # -1 ran no batch and scored uninitialised memory
        ft.predict_proba(ft.load_classifier(tmp_path / "clf"), ["the fox"], batch_size=-1)


def test_labelled_files_as_editors_and_spreadsheets_write_them(tmp_path):
    # A BOM (Excel's "CSV UTF-8"), and line separators inside texts, which JSON and CSV both allow raw:
    # str.splitlines cut the JSONL row at U+2028 and the CSV record at a form feed or U+0085
    texts = ["a\u2028b", "page\x0cbreak", "next\x85line", "two\nlines", "plain"]
    rows = [{"text": t, "label": "x" if i % 2 else "y"} for i, t in enumerate(texts)]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\ufeff" + "".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows),
                     encoding="utf-8", newline="")
    assert ft.read_labelled(jsonl)[0] == texts
    table = tmp_path / "d.csv"
    with open(table, "w", encoding="utf-8-sig", newline="") as f:
        writer = csv.DictWriter(f, ["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    assert ft.read_labelled(table)[:2] == (texts, [r["label"] for r in rows])
    # an error names the line the record is on, after a quoted field of two lines
    (tmp_path / "bad.csv").write_text('text,label\n"two\nlines",pos\nbad,neg\ngood\n')
    with pytest.raises(TinyGPTError, match=r"bad.csv:5: missing label"):
        ft.read_labelled(tmp_path / "bad.csv")
    # a quote never closed swallowed the rest of the file into one text ("missing label" at its end)
    (tmp_path / "open.csv").write_text('text,label\nfine,pos\n"abc,pos\nx,neg\ny,pos\n')
    with pytest.raises(TinyGPTError, match=r"open.csv:\d+: not valid CSV .*quoted field after line 2 is "
                                           "never closed"):
        ft.read_labelled(tmp_path / "open.csv")


def test_finetune_never_replaces_what_it_did_not_write(tmp_path, lm_dir, capsys):
    data = _write_jsonl(tmp_path / "metrics.jsonl", _rows())  # the data file IS out/metrics.jsonl
    before = data.read_bytes()
    _fails(capsys, ["finetune", "--data", str(data), "--init-from", str(lm_dir), "--out", str(tmp_path),
                    "--max-iters", "2", "--backend", "numpy", "--quiet"], "did not write")
    assert data.read_bytes() == before  # it was deleted and replaced by the metrics
    _fails(capsys, ["finetune", "--data", str(data), "--init-from", str(lm_dir), "--out", "",
                    "--max-iters", "2", "--backend", "numpy", "--quiet"], "empty string")


def test_eval_of_a_held_out_file_scores_all_of_it_and_predict_takes_crlf(tmp_path, lm_dir, capsys):
    data = _write_jsonl(tmp_path / "d.jsonl", _rows())
    out = tmp_path / "clf"
    assert main(["finetune", "--data", str(data), "--init-from", str(lm_dir), "--out", str(out),
                 "--max-iters", "4", "--backend", "numpy", "--quiet"]) == 0
    test_file = _write_jsonl(tmp_path / "test.jsonl", _rows(30, seed=5))
    capsys.readouterr()
    assert main(["eval", "--out", str(out), "--data", str(test_file), "--backend", "numpy"]) == 0
    assert "all split of" in capsys.readouterr().out  # it scored the 10% a val split of it would be
    assert main(["eval", "--out", str(out), "--data", str(test_file), "--split", "val"]) == 0
    assert "val split" in capsys.readouterr().out
    # eval without --data finds the training file from anywhere (the path is saved absolute)
    clf = ft.load_classifier(out)
    assert Path(clf.meta["data"]).is_absolute()
    # text the classifier's tokenizer cannot read: the advice was "fine-tune from a model whose vocabulary
    # covers the data", to someone running predict or eval
    _write_jsonl(test_file, [{"text": "ZEBRA", "label": "comedy"}])
    for argv in (["predict", "--out", str(out), "ZEBRA"],
                 ["eval", "--out", str(out), "--data", str(test_file)]):
        err = _fails(capsys, argv, "text 1", "cannot encode", "'Z' is not in this tokenizer's vocabulary")
        assert "fine-tune" not in err, err
    # scoring a split, a text is named by its place in the file, not in the split: the fourth row, the first
    # of the val split, was "text 1"
    _write_jsonl(test_file, [{**row, "split": "train"} for row in _rows(3)]
                 + [{"text": "ZEBRA", "label": "comedy", "split": "val"}])
    _fails(capsys, ["eval", "--out", str(out), "--data", str(test_file), "--split", "val"],
           f"{test_file}, text 4: the model's tokenizer cannot encode it")


def test_predict_from_stdin_drops_a_crlf_line_end_and_a_bom(tmp_path, lm_dir, capsys, monkeypatch):
    import io

    data = _write_jsonl(tmp_path / "d.jsonl", _rows())
    out = tmp_path / "clf"
    assert main(["finetune", "--data", str(data), "--init-from", str(lm_dir), "--out", str(out),
                 "--max-iters", "2", "--backend", "numpy", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["predict", "--out", str(out), "sweet love"]) == 0
    as_argument = capsys.readouterr().out
    for text_arguments in (["-"], []):  # no text at all reads stdin too (it printed nothing)
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"sweet love\r\n")))
        assert main(["predict", "--out", str(out), *text_arguments]) == 0
        assert capsys.readouterr().out == as_argument
    # a leading BOM (Notepad's UTF-8) is dropped, as from the training rows: it was the text's first
    # character, which the character model's vocabulary lacks ("character '\ufeff' is not in ...")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"\xef\xbb\xbfsweet love\r\n")))
    assert main(["predict", "--out", str(out)]) == 0
    assert capsys.readouterr().out == as_argument


def test_predict_and_eval_write_utf8_whatever_stdout_encoding_says(tmp_path, capsys, monkeypatch):
    # class names and texts are any Unicode: on an ASCII or cp1252 stdout (PYTHONIOENCODING, a Windows
    # console) print() raised UnicodeEncodeError, a traceback after the scoring, as sample did before
    import io

    rows = [{"text": text, "label": label} for text, label in
            [("très bien", "café"), ("日本語", "crème"), ("bien très", "café"), ("語日本", "crème")] * 3]
    data = _write_jsonl(tmp_path / "données.jsonl", rows)
    out = tmp_path / "clf"
    assert main(["finetune", "--data", str(data), "--out", str(out), "--n-layer", "1", "--n-head", "2",
                 "--n-embd", "8", "--block-size", "16", "--max-iters", "2", "--backend", "numpy",
                 "--quiet"]) == 0
    for argv, expected in ((["predict", "--out", str(out), "très bien", "日本語"], ["très bien", "crème"]),
                           (["eval", "--out", str(out), "--backend", "numpy"], ["données.jsonl", "café"])):
        stdout = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
        monkeypatch.setattr("sys.stdout", stdout)
        assert main(argv) == 0, argv
        printed = stdout.buffer.getvalue().decode("utf-8")
        assert all(text in printed for text in expected), printed


def test_eval_names_a_data_file_whose_name_is_not_utf8_by_its_bytes(tmp_path, lm_dir, monkeypatch):
    # a file name of bytes that are not UTF-8 is a str with lone surrogates: a stdout that encodes strictly
    # (a UTF-8 locale other than C.UTF-8, PYTHONIOENCODING=utf-8) raised UnicodeEncodeError on it
    import io

    data = _write_jsonl(tmp_path / "d.jsonl", _rows())
    out = tmp_path / "clf"
    assert main(["finetune", "--data", str(data), "--init-from", str(lm_dir), "--out", str(out),
                 "--max-iters", "2", "--backend", "numpy", "--quiet"]) == 0
    odd = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.jsonl"))  # Latin-1's e acute
    shutil.copyfile(data, odd)
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    monkeypatch.setattr("sys.stdout", stdout)
    assert main(["eval", "--out", str(out), "--data", str(odd), "--backend", "numpy"]) == 0
    assert stdout.buffer.getvalue().startswith(b"all split of " + os.fsencode(odd) + b": 48 texts\n")


def test_confusion_matrix_rows_are_true_classes_columns_predictions():
    # guards: the matrix transposed (rows = predictions), invisible when every prediction is right
    matrix = ft.confusion_matrix(np.array([0, 0, 1, 2, 2]), np.array([1, 0, 2, 2, 2]), 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 0, 1], [0, 0, 2]]


def test_confusion_matrix_refuses_ids_outside_the_classes():
    for true, pred in (([0, -1], [0, 0]), ([0, 0], [2, 0]), ([0.0, 1.0], [0, 1]), ([0, 1], [0])):
        # -1 was counted as class 1; 2 and the floats were IndexErrors; the short pred a ValueError
        with pytest.raises(TinyGPTError, match="confusion_matrix"):
            ft.confusion_matrix(np.array(true), np.array(pred), 2)
    assert ft.confusion_matrix(np.array([], np.int64), np.array([], np.int64), 2).sum() == 0


def test_confusion_matrix_png_is_written_atomically(tmp_path):
    # it went through a fixed-name temporary beside the PNG: a user's file of that name was replaced, and
    # when the PNG could not be written (a directory there) the temporary stayed in the run directory
    matrix, labels = np.array([[2, 1], [0, 3]]), ["a", "b"]
    keep = tmp_path / ".confusion_val.png.tmp.png"
    keep.write_text("not ours")
    png = ft.plot_confusion_matrix(matrix, labels, tmp_path / "confusion_val.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert keep.read_text() == "not ours"
    (tmp_path / "confusion_train.png").mkdir()
    with pytest.raises(TinyGPTError, match="it is a directory"):
        ft.plot_confusion_matrix(matrix, labels, tmp_path / "confusion_train.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".confusion_val.png.tmp.png", "confusion_train.png",
                                                          "confusion_val.png"]


def test_confusion_matrix_png_of_many_classes_stays_a_bounded_size(tmp_path):
    # the figure grew an inch a class: 40 classes made a 5,555 x 5,038 PNG, 100 peaked at 5 GB of
    # pixels, 600 were killed for want of memory, each after `tinygpt eval` had scored the data
    for n in (2, 40, 400):
        png = ft.plot_confusion_matrix(np.eye(n, dtype=int), [f"class {i}" for i in range(n)],
                                       tmp_path / f"confusion_{n}.png", title="val")
        width, height = struct.unpack(">II", png.read_bytes()[16:24])  # the PNG's IHDR
        assert width <= 16 * 110 and height <= 16 * 110, (n, width, height)
    assert (width, height) == (16 * 110, 16 * 110)


def test_confusion_matrix_of_labels_with_dollar_signs(tmp_path):
    # guards: the labels are tick labels, and matplotlib read a pair of $ as mathtext: price levels "$$" and
    # "$$$$" (or "$\\bad$") raised ValueError at savefig, a traceback from `tinygpt eval` after it had scored
    labels = ["$", "$$", "$$$", "$$$$", "$\\bad$"]
    png = ft.plot_confusion_matrix(np.eye(5, dtype=int), labels, tmp_path / "confusion_val.png", title="val")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_pooled_features_come_back_in_the_input_order():
    # guards: batching by length (sorted) without putting each feature back at its own row
    model = _tiny_model(11).eval()
    rng = np.random.default_rng(3)
    seqs = [rng.integers(0, 11, n) for n in (7, 2, 9, 1, 5, 3)]
    features = ft.pooled_features(model, seqs, batch_size=2)
    for i, s in enumerate(seqs):
        np.testing.assert_allclose(features[i], model.forward_hidden(s[None], keep_caches=False)[0, -1],
                                   rtol=1e-10, atol=1e-12, err_msg=f"text {i}")


def test_eval_with_a_given_label_order_scores_what_predict_predicts(tmp_path, lm_dir):
    # guards: evaluate_classifier mapping the file's labels to class ids in another order (sorted) than the
    # classifier's own label list, which --labels sets; the expected scores come from predict_proba
    rows = _rows()
    data = _write_jsonl(tmp_path / "d.jsonl", rows)
    ft.finetune_classifier(_config(tmp_path, data, init_from=str(lm_dir), freeze_body=True, max_iters=10,
                                   learning_rate=3e-2, labels=["tragedy", "comedy"]), quiet=True)
    clf = ft.load_classifier(tmp_path / "clf")
    assert clf.labels == ["tragedy", "comedy"]
    predicted = ft.predict_proba(clf, [r["text"] for r in rows]).argmax(axis=1)
    true = np.array([clf.labels.index(r["label"]) for r in rows])
    result = ft.evaluate_classifier(tmp_path / "clf", split="all")
    assert result["accuracy"] == pytest.approx(np.mean(predicted == true))
    assert result["confusion"].tolist() == [[np.sum((true == i) & (predicted == j)) for j in (0, 1)]
                                            for i in (0, 1)]


def test_pooling_refuses_an_empty_sequence():
    # guards: a length of 0 accepted: its "last token" index -1 would pool the padding at the far end
    hidden = np.zeros((2, 4, 3))
    with pytest.raises(TinyGPTError, match="lengths"):
        ft.last_token_pool_forward(hidden, np.array([0, 2]))


@pytest.mark.parametrize("dropout, expected", [(0.0, 0.0), (None, 0.25), (0.1, 0.1)])
def test_dropout_setting_overrides_the_checkpoint_even_when_zero(tmp_path, dropout, expected):
    # guards: --dropout 0 treated as "not given" (falsy): the checkpoint's dropout stays on in fine-tuning
    text = "".join(r["text"] for r in _rows()) + "\n"
    tok = CharTokenizer.train(text)
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=24, n_layer=1, n_head=2, n_embd=8, dropout=0.25)
    model = GPT(config)
    save_checkpoint(tmp_path / "lm", model, tok, None, {"backend": "numpy"}, {"step": 1})
    data = _write_jsonl(tmp_path / "d.jsonl", _rows(12))
    cfg = _config(tmp_path, data, init_from=str(tmp_path / "lm"), max_iters=1, dropout=dropout)
    ft.finetune_classifier(cfg, quiet=True)
    assert ft.load_classifier(tmp_path / "clf").model.config.dropout == expected


def test_seed_sets_the_dropout_masks_of_a_loaded_body(tmp_path, lm_dir):
    # guards: a checkpoint's body is built with seed 0, so with --init-from / --pretrained every --seed
    # drew the same dropout masks (a model from scratch, and `tinygpt train --init-from`, follow --seed)
    data = _write_jsonl(tmp_path / "d.jsonl", _rows(12))
    texts = [r["text"] for r in _rows(12)]
    draws = []
    for seed in (1, 2, 1):
        cfg = _config(tmp_path, data, init_from=str(lm_dir), dropout=0.1, seed=seed).validate()
        model, _, _ = ft._load_body(cfg, texts)
        draws.append(model.dropout_rng.random(3))
    assert not np.array_equal(draws[0], draws[1]) and np.array_equal(draws[0], draws[2])
    scratch = ft._load_body(_config(tmp_path, data, seed=1).validate(), texts)[0]  # as a fresh GPT seeds it
    np.testing.assert_array_equal(scratch.dropout_rng.random(3), draws[0])


def test_encoding_refuses_the_first_id_past_the_vocabulary():
    # guards: an off-by-one letting id == vocab_size through (wte has rows 0..vocab_size - 1)
    tok = CharTokenizer.train("abc")  # a = 0, b = 1, c = 2
    seqs, _ = ft.encode_texts(tok, ["ab", "ba"], block_size=5, vocab_size=2)
    assert [s.tolist() for s in seqs] == [[0, 1], [1, 0]]
    with pytest.raises(TinyGPTError, match="text 2: token id 2 is outside the model's vocabulary of 2"):
        ft.encode_texts(tok, ["ab", "c"], block_size=5, vocab_size=2)


def test_pooled_features_are_computed_without_dropout_and_keep_the_mode():
    # guards: features for inference and for a frozen body computed in training mode (dropout on)
    config = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8, dropout=0.5)
    model = GPT(config, seed=0, dtype=np.float64)
    seqs = [np.array([1, 2, 3]), np.array([4, 5])]
    features = ft.pooled_features(model, seqs)
    assert model.training  # put back as it was
    model.eval()
    for i, s in enumerate(seqs):
        np.testing.assert_allclose(features[i], model.forward_hidden(s[None], keep_caches=False)[0, -1],
                                   rtol=1e-12, atol=1e-12)


def test_eval_max_batches_and_majority_baseline_count_the_rows_scored(tmp_path, lm_dir):
    # guards: --max-batches counting rows instead of batches, and the majority baseline taken from the
    # rarest class instead of the most frequent one (expected values counted by hand from the labels below)
    data = _write_jsonl(tmp_path / "d.jsonl", _rows())
    cfg = _config(tmp_path, data, init_from=str(lm_dir), freeze_body=True, max_iters=1)
    ft.finetune_classifier(cfg, quiet=True)
    labels = ["comedy", "comedy", "tragedy", "comedy", "comedy", "tragedy"] + ["tragedy"] * 4
    test_file = _write_jsonl(tmp_path / "t.jsonl", [{"text": "sweet love", "label": lab} for lab in labels])
    first = ft.evaluate_classifier(tmp_path / "clf", str(test_file), split="all", batch_size=3, max_batches=2)
    assert first["n"] == 6 and first["majority_accuracy"] == pytest.approx(4 / 6)
    assert first["confusion"].sum() == 6
    whole = ft.evaluate_classifier(tmp_path / "clf", str(test_file), split="all", batch_size=3)
    assert whole["n"] == 10 and whole["majority_accuracy"] == pytest.approx(6 / 10)


def test_a_csv_text_longer_than_the_csv_modules_field_limit_is_read(tmp_path, lm_dir, capsys):
    # guards: a text over 131,072 characters (csv's default field limit) in a .csv was a traceback
    # (_csv.Error: field larger than field limit); a .jsonl read it. It is truncated like any long text.
    long_text = "o merry day " * 12_000  # 144,000 characters
    rows = [{"text": long_text, "label": "comedy"}] + _rows(8)
    data = tmp_path / "d.csv"
    with open(data, "w", newline="") as f:
        writer = csv.DictWriter(f, ["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    assert ft.read_labelled(data)[0][0] == long_text
    assert main(["finetune", "--data", str(data), "--init-from", str(lm_dir), "--out", str(tmp_path / "o"),
                 "--max-iters", "1", "--backend", "numpy", "--quiet"]) == 0


def test_a_csv_record_with_more_fields_than_the_header_is_refused(tmp_path, capsys):
    # guards: an unquoted comma in a text split it, silently: text "o merry", label " sweet love" (the
    # real label was dropped as an extra field) trained as a class of its own
    data = tmp_path / "d.csv"
    data.write_text("text,label\nthe grave,tragedy\no merry, sweet love,comedy\no woe,tragedy\n")
    with pytest.raises(TinyGPTError, match=r"d.csv:3: 3 fields for the header's 2 \(text, label\)"):
        ft.read_labelled(data)
    _fails(capsys, ["finetune", "--data", str(data), "--out", str(tmp_path / "o")], "d.csv:3", "quote")
    assert not (tmp_path / "o").exists()


def test_a_csv_header_naming_a_column_twice_is_refused(tmp_path):
    # guards: "text,label,label" (say a gold label and a guess) trained silently on the LAST label column
    data = tmp_path / "d.csv"
    data.write_text("text,label,label\nthe grave,tragedy,comedy\no merry day,comedy,tragedy\n")
    with pytest.raises(TinyGPTError, match="d.csv: the CSV header names the column 'label' twice"):
        ft.read_labelled(data)


def test_eval_val_split_of_a_file_without_some_class(tmp_path, lm_dir):
    # guards: a file with no row of a class (here: no tragedy) stopped `eval --split val` with "label
    # 'tragedy' has no training examples (all of its rows are in the validation split)": it has no rows
    # at all, and the split of the rows it has is well defined
    data = _write_jsonl(tmp_path / "d.jsonl", _rows())
    ft.finetune_classifier(_config(tmp_path, data, init_from=str(lm_dir), freeze_body=True, max_iters=1),
                           quiet=True)
    comedies = _write_jsonl(tmp_path / "t.jsonl", [r for r in _rows(40, seed=3) if r["label"] == "comedy"])
    result = ft.evaluate_classifier(tmp_path / "clf", str(comedies), split="val")
    assert result["n"] == 2 and result["confusion"][1].sum() == 0  # round(0.1 * 20) comedies
    train = ft.evaluate_classifier(tmp_path / "clf", str(comedies), split="train")
    assert train["n"] == 18


# --- mutation review: contracts of the data readers, the split and the encoding ------------------------


@pytest.mark.parametrize("name, content, message", [
    # an empty CSV field is a missing label, not a class named ""
    ("d.csv", "text,label\nthe grave,tragedy\no merry day,\n", "d.csv:3: missing label"),
    # JSON true is a Python int: it would have become the class 1
    ("d.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": true}\n',
     "d.jsonl:2: a label must be a string or an integer, got True"),
    ("d.jsonl", '{"text": "a", "label": "x"}\n{"text": "", "label": "y"}\n', "d.jsonl:2: empty text"),
    # a row without a split field would silently have been a training row
    ("d.jsonl", '{"text": "a", "label": "x", "split": "val"}\n{"text": "b", "label": "y"}\n',
     "d.jsonl: either every row has a split field or none does"),
], ids=["empty-csv-label", "boolean-label", "empty-text", "split-field-on-some-rows"])
def test_read_labelled_refuses_a_bad_row_naming_it(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(TinyGPTError, match=re.escape(message)):
        ft.read_labelled(tmp_path / name)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_named_pipe_for_data_is_refused_as_what_it_is_not_as_missing(tmp_path, capsys):
    # `mkfifo rows.jsonl; finetune --data rows.jsonl` said 'labelled data file not found: rows.jsonl' of a
    # path that exists (refused all the same: a run reads the file twice, its rows and then its checksum)
    fifo = tmp_path / "rows.jsonl"
    os.mkfifo(fifo)
    err = _fails(capsys, ["finetune", "--data", str(fifo), "--out", str(tmp_path / "o"), "--quiet"],
                 f"labelled data path is not a regular file (a pipe or a socket): {fifo}")
    assert "not found" not in err and not (tmp_path / "o").exists()


def test_an_empty_csv_split_column_means_no_split(tmp_path):
    # guards: "" read as a split name ("split must be train or val, got ''") for a column left blank
    (tmp_path / "d.csv").write_text("text,label,split\nthe grave,tragedy,\no merry day,comedy,\n")
    assert ft.read_labelled(tmp_path / "d.csv") == (["the grave", "o merry day"], ["tragedy", "comedy"],
                                                    [None, None])


def test_a_given_label_list_must_name_each_label_once():
    # a repeat mapped both rows' "a" to its last index, silently; a label left out was a KeyError
    with pytest.raises(TinyGPTError, match=re.escape("the label list ['a', 'b', 'a'] repeats a label")):
        ft.label_vocabulary(["a", "b"], names=["a", "b", "a"])
    with pytest.raises(TinyGPTError, match=re.escape("label 'c' is not among the given labels ['a', 'b']")):
        ft.label_vocabulary(["a", "b", "c"], names=["a", "b"])


def test_labels_given_as_text_for_a_jsonls_integers_are_shown_as_given(tmp_path, capsys):
    # --labels arrives as text and a .jsonl's labels may be integers: the messages showed the integers the
    # text was read as ("the label list [1, 1] repeats a label" for --labels 01,1) or compared the user's
    # "0" with the data's 0 ("label 0 is not among the given labels ['0', 'x']")
    data = _write_jsonl(tmp_path / "d.jsonl", [{"text": f"text {i}", "label": i % 2} for i in range(8)])
    run = ["finetune", "--data", str(data), "--out", str(tmp_path / "clf"), "--n-layer", "1", "--n-head", "1",
           "--n-embd", "8", "--block-size", "8", "--max-iters", "1", "--quiet", "--labels"]
    for labels, message in (
        ("01,1", "the given labels '01' and '1' are both the data's label 1 (its labels are integers)"),
        ("0,x", "the given label 'x' is not an integer, but the data's labels are integers: [0, 1]"),
        ("0,2", "label 1 is not among the given labels ['0', '2'] (read as [0, 2]: the data's labels are "
                "integers)"),
        ("1,0,0", "the label list ['1', '0', '0'] repeats a label"),  # one spelling twice: as before
    ):
        _fails(capsys, [*run, labels], message)
    assert not (tmp_path / "clf").exists()
    assert main([*run, "1, 0"]) == 0 and ft.load_classifier(tmp_path / "clf").labels == [1, 0]


def test_split_takes_the_rounded_share_of_each_class():
    # round(0.4 * 4) = 2 and round(0.4 * 7) = 3 (truncating would give 1 and 2), counted by hand
    label_ids = np.array([0] * 4 + [1] * 7)
    train, val = ft.split_indices(label_ids, [None] * 11, 0.4, seed=0, n_classes=2)
    assert np.bincount(label_ids[val], minlength=2).tolist() == [2, 3]
    assert np.bincount(label_ids[train], minlength=2).tolist() == [2, 4]


def test_split_refuses_a_val_fraction_of_one():
    # 1.0 would have been clamped to all rows but one per class, a split nobody asked for
    with pytest.raises(TinyGPTError, match=re.escape("--val-fraction must be in [0, 1), got 1.0")):
        ft.split_indices(np.array([0, 0, 1, 1]), [None] * 4, 1.0, seed=0, n_classes=2)


def test_only_texts_longer_than_block_size_count_as_truncated():
    # guards: a text of exactly block_size tokens counted (and reported) as truncated
    tok = CharTokenizer.train("abcdefgh")
    seqs, truncated = ft.encode_texts(tok, ["abcde", "abcdef", "abc"], block_size=5, vocab_size=8)
    assert truncated == 1 and [len(s) for s in seqs] == [5, 5, 3]


def test_a_text_that_encodes_to_no_tokens_is_refused():
    # `tinygpt predict --out DIR ""` reached max([]): a ValueError traceback
    tok = CharTokenizer.train("abc")
    with pytest.raises(TinyGPTError, match="input, text 2: encodes to no tokens"):
        ft.encode_texts(tok, ["ab", ""], block_size=5, vocab_size=3, where="input")


# --- mutation review: the head, inference and loading ---------------------------------------------------


def test_init_head_is_normal_with_std_0_02_and_a_zero_bias():
    # the docstring's GPT-2 initialisation; 16,384 draws put the sample std within 1% of 0.02
    head = ft.init_head(256, 64, seed=3)
    weight, bias = head[ft.HEAD_WEIGHT], head[ft.HEAD_BIAS]
    assert weight.shape == (256, 64) and bias.shape == (64,) and weight.dtype == bias.dtype == np.float32
    assert weight.std() == pytest.approx(0.02, rel=0.03) and abs(weight.mean()) < 1e-3
    assert not bias.any()
    np.testing.assert_array_equal(ft.init_head(256, 64, seed=3)[ft.HEAD_WEIGHT], weight)
    assert not np.array_equal(ft.init_head(256, 64, seed=4)[ft.HEAD_WEIGHT], weight)


def test_predict_proba_of_large_logits_is_finite():
    # guards: the softmax without its max subtracted: exp(800) overflows and the probabilities were NaN.
    # Logits (800, 801) for every text give (1, e) / (1 + e).
    tok = CharTokenizer.train("abc")
    head = {ft.HEAD_WEIGHT: np.zeros((8, 2)), ft.HEAD_BIAS: np.array([800.0, 801.0])}
    clf = ft.Classifier(_tiny_model(tok.vocab_size).eval(), tok, head, ["x", "y"], {}, {})
    probs = ft.predict_proba(clf, ["abc", "b"])
    np.testing.assert_allclose(probs, [[1 / (1 + np.e), np.e / (1 + np.e)]] * 2, rtol=1e-12)


def test_predict_proba_takes_a_sequence_of_texts_not_one_string():
    tok = CharTokenizer.train("abc")
    head = ft.init_head(8, 2, seed=0)
    clf = ft.Classifier(_tiny_model(tok.vocab_size).eval(), tok, head, ["x", "y"], {}, {})
    probs = ft.predict_proba(clf, ["abc", "b"])
    # one string is not a list of texts: "abc" was scored as "a", "b" and "c", three rows without a word
    for texts in ("abc", None):
        with pytest.raises(TinyGPTError, match=r"texts must be a list of strings \(for one text: \[text\]\)"):
            ft.predict_proba(clf, texts)
    for texts in (("abc", "b"), np.array(["abc", "b"])):  # any sequence of texts
        np.testing.assert_allclose(ft.predict_proba(clf, texts), probs, rtol=1e-12)


def test_pooled_features_leave_a_model_in_eval_mode_in_eval_mode():
    # guards: the mode put back as training whatever it was (the other way round from the test above)
    model = _tiny_model(11).eval()
    ft.pooled_features(model, [np.array([1, 2, 3])])
    assert not model.training


@pytest.mark.parametrize("setting, message", [
    ({"dropout": 1.0}, "--dropout must be in [0, 1), got 1.0"),  # every activation dropped
    ({"max_iters": 0}, "--max-iters must be a positive integer, got 0"),  # was read as "not given"
    ({"val_fraction": 5}, "--val-fraction must be in [0, 1), got 5"),  # data with split fields drew none
    ({"val_fraction": -0.1}, "--val-fraction must be in [0, 1), got -0.1"),
    # AdamW multiplies the weights by 1 - lr * wd: 1e6 ran to a nan "blamed" on the learning rate
    ({"weight_decay": 1e6}, "--weight-decay (1e+06) times --learning-rate (0.0003) must be < 1"),
    ({"weight_decay": 100, "learning_rate": 0.01}, "--weight-decay (100) times --learning-rate (0.01) must"),
    # a flag is no count (True ran as 1 warm-up step, or 1 iteration), as TrainConfig refuses it
    ({"warmup_iters": True}, "--warmup-iters must be a non-negative integer, got True"),
    ({"max_iters": True}, "--max-iters must be a positive integer, got True"),
    ({"dropout": "0.1"}, "--dropout must be in [0, 1), got '0.1'"),  # was a TypeError from the comparison
    ({"freeze_body": "no"}, "freeze_body must be true or false, got 'no'"),  # truthy: the body was frozen
    ({"recompute": 1}, "recompute must be true or false, got 1"),
    ({"labels": "neg,pos"}, "labels must be a list of class names, got 'neg,pos'"),  # its characters
], ids=["dropout-1", "max-iters-0", "val-fraction-5", "val-fraction-negative", "decay-1e6", "decay-lr-1",
        "warmup-true", "max-iters-true", "dropout-str", "freeze-body-str", "recompute-int", "labels-str"])
def test_config_refuses_out_of_range_settings(setting, message):
    with pytest.raises(TinyGPTError, match=re.escape(message)):
        ft.FinetuneConfig(data="d.jsonl", **setting).validate()


def test_config_takes_numpy_numbers_as_train_does_and_saves_them_as_json():
    # guards: np.float32 rates and NumPy integer counts were refused ("--learning-rate must be a positive
    # number, got np.float32(0.5)", "--warmup-iters must be >= 0, got np.int64(3)") where TrainConfig takes
    # them; a np.float32 dropout or val_fraction passed as it was, into a record JSON cannot hold
    numpy = {"learning_rate": np.float32(0.5), "min_lr": np.float16(0.125), "weight_decay": np.float32(0.25),
             "grad_clip": np.float32(1.5), "val_fraction": np.float32(0.25), "dropout": np.float32(0.25),
             "warmup_iters": np.int64(3), "max_iters": np.int32(7), "epochs": np.int64(2),
             "batch_size": np.int64(4), "eval_interval": np.uint8(5), "seed": np.int64(9),
             "n_layer": np.int64(2)}
    cfg = ft.FinetuneConfig(data="d.jsonl", **numpy).validate()
    for name, value in numpy.items():
        kind = int if isinstance(value, np.integer) else float
        assert type(getattr(cfg, name)) is kind and getattr(cfg, name) == value, name
    assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()


def test_load_classifier_refuses_a_head_of_another_width_than_its_labels(tmp_path):
    # a head of 2 columns saved with 3 label names: predict would have named classes it never scores
    tok = CharTokenizer.train("abc")
    model = _tiny_model(tok.vocab_size, dtype=np.float32)
    head = ft.init_head(8, 2)
    save_checkpoint(tmp_path / "clf", ft._ClassifierForSaving(model, head, ["a", "b", "c"], {}), tok, None,
                    {"backend": "numpy"}, {"step": 0})
    with pytest.raises(TinyGPTError, match=re.escape("classifier.weight has shape (8, 2) for 3 labels")):
        ft.load_classifier(tmp_path / "clf")


@pytest.mark.parametrize("where, value", [("body", np.nan), ("head", np.inf)])
def test_predict_and_eval_refuse_a_classifier_of_non_finite_weights(tmp_path, capsys, where, value):
    # predict printed 'comedy  nan' and eval scored NaN probabilities: a classifier whose weights hold NaN or
    # inf (a run that diverged, saved before finetune checked) is refused at load, naming its checkpoint
    rows = _rows(16)
    data = _write_jsonl(tmp_path / "d.jsonl", rows)
    tok = CharTokenizer.train("".join(r["text"] for r in rows))
    model, head = _tiny_model(tok.vocab_size, dtype=np.float32), ft.init_head(8, 2)
    name = "h.0.attn.c_proj.weight" if where == "body" else ft.HEAD_BIAS
    (model.params if where == "body" else head)[name].flat[1] = value
    out = tmp_path / "clf"
    classifier = ft._ClassifierForSaving(model, head, ["comedy", "tragedy"], {"data": str(data)})
    save_checkpoint(out, classifier, tok, None, {"backend": "numpy"}, {"step": 3})
    found = "nan" if np.isnan(value) else "inf"
    message = (f"the classifier checkpoint {load_checkpoint(out).path} holds non-finite weights ({name} has "
               f"{found}), which give NaN probabilities")
    with pytest.raises(TinyGPTError, match=re.escape(message)):
        ft.load_classifier(out)
    for backend in ("numpy", "numba"):
        _fails(capsys, ["predict", "--out", str(out), "--backend", backend, "o woe"], message)
        _fails(capsys, ["eval", "--out", str(out), "--split", "all", "--backend", backend], message)


@pytest.mark.parametrize("setting, message", [
    ({"max_batches": 0}, "--max-batches must be an integer >= 1, got 0"),
    ({"max_batches": 1.5}, "--max-batches must be an integer >= 1, got 1.5"),  # ran 2 batches
    ({"batch_size": 2.5}, "--batch-size must be a positive integer, got 2.5"),
    ({"split": "test"}, "unknown split 'test': choose train, val or all"),  # scored the train split
], ids=["max-batches-0", "max-batches-1.5", "batch-size-2.5", "split-test"])
def test_eval_refuses_bad_arguments_before_loading(setting, message):
    with pytest.raises(TinyGPTError, match=re.escape(message)):
        ft.evaluate_classifier("no-such-dir", **setting)


def test_a_classifier_of_integer_labels_scores_a_csv_file(tmp_path, lm_dir):
    # guards: a CSV's labels are text: "1" is the label 1 of a classifier fine-tuned on a .jsonl's integers
    # (the other way round is checked above); the scores must be those of the same rows as a .jsonl
    rows = [{"text": r["text"], "label": int(r["label"] == "comedy")} for r in _rows()]
    data = _write_jsonl(tmp_path / "d.jsonl", rows)
    ft.finetune_classifier(_config(tmp_path, data, init_from=str(lm_dir), freeze_body=True, max_iters=2),
                           quiet=True)
    table = tmp_path / "t.csv"
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, ["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    as_csv = ft.evaluate_classifier(tmp_path / "clf", str(table), split="all")
    as_jsonl = ft.evaluate_classifier(tmp_path / "clf", str(data), split="all")
    assert as_csv["labels"] == [0, 1] and as_csv["n"] == 48
    assert as_csv["confusion"].tolist() == as_jsonl["confusion"].tolist()
    assert as_csv["loss"] == as_jsonl["loss"]
    # ASCII digits only, as finetune --resume on the CSV reads them: "\u0661" (Arabic-Indic one) was scored
    # as the class 1, which label_vocabulary refuses ("label '\u0661' is not among the given labels")
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, ["text", "label"])
        writer.writeheader()
        writer.writerows([{**rows[0], "label": "\u0661"}, *rows[1:]])
    with pytest.raises(TinyGPTError, match="label '\u0661' is not one of the classifier's \\[0, 1\\]"):
        ft.evaluate_classifier(tmp_path / "clf", str(table), split="all")
    with pytest.raises(TinyGPTError, match="label '\u0661' is not among the given labels"):
        ft.label_vocabulary(["\u0661"], [0, 1])


# --- mutation review: the training run's bookkeeping ------------------------------------------------------


def test_train_metrics_are_the_mean_over_the_texts_seen(tmp_path, lm_dir):
    # guards: the running loss summed per batch, not per text (the last batch of 44 texts in 8s holds 4),
    # and not reset after a row. With a learning rate of 1e-12 the head stays at its initialisation, so
    # the two rows of one epoch (24 texts, then 20) average to the initial head's loss and accuracy on
    # every text, computed here by hand.
    rows = _rows(44)
    data = _write_jsonl(tmp_path / "d.jsonl", rows)
    ft.finetune_classifier(_config(tmp_path, data, init_from=str(lm_dir), freeze_body=True, val_fraction=0.0,
                                   learning_rate=1e-12, max_iters=6, eval_interval=3), quiet=True)
    ckpt = load_checkpoint(lm_dir)
    ids = [ckpt.tokenizer.encode(r["text"])[:24] for r in rows]  # block_size 24: the first 24 tokens
    features = np.stack([ckpt.model.eval().forward_hidden(np.array([i]), keep_caches=False)[0, -1]
                         for i in ids])
    head = ft.init_head(8, 2, seed=1337)
    logits = features.astype(np.float64) @ head[ft.HEAD_WEIGHT] + head[ft.HEAD_BIAS]
    labels = np.array([r["label"] == "tragedy" for r in rows], dtype=int)  # classes sorted: comedy, tragedy
    log_z = np.log(np.exp(logits).sum(axis=1))
    first, second = read_metrics(tmp_path / "clf" / "metrics.jsonl")[1:]
    assert (first["step"], first["epoch"], second["step"], second["epoch"]) == (3, 0.5, 6, 1.0)
    epoch = {k: (24 * first[k] + 20 * second[k]) / 44 for k in ("train_loss", "train_acc")}
    assert epoch["train_loss"] == pytest.approx(np.mean(log_z - logits[np.arange(44), labels]), rel=1e-5)
    assert epoch["train_acc"] == pytest.approx(np.mean(logits.argmax(axis=1) == labels))


def test_the_last_step_is_evaluated_and_the_schedule_ends_at_a_tenth_of_the_rate(tmp_path, lm_dir):
    # 5 steps, every 2: the 5th is evaluated and checkpointed too. The default min_lr is learning_rate / 10,
    # and a warmup longer than the run is cut to it, so the schedule still ends at min_lr (lr_at(5) with
    # an uncut warmup of 10 is 2e-3 * 6 / 11)
    data = _write_jsonl(tmp_path / "d.jsonl", _rows(16))
    summary = ft.finetune_classifier(_config(tmp_path, data, init_from=str(lm_dir), freeze_body=True,
                                             max_iters=5, eval_interval=2, warmup_iters=10,
                                             learning_rate=2e-3), quiet=True)
    rows = read_metrics(tmp_path / "clf" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 2, 4, 5] and summary["step"] == 5
    assert rows[-1]["lr"] == pytest.approx(2e-4)
    assert load_checkpoint(tmp_path / "clf").state["step"] == 5


def test_best_val_acc_is_the_best_of_the_evaluations(tmp_path, lm_dir, monkeypatch):
    # guards: best_val_acc taken as the last (or the first) evaluation's; the validation scores are
    # scripted so that the best is neither
    scripted = iter([0.5, 0.9, 0.7])
    scores = ft._scores
    monkeypatch.setattr(ft, "_scores", lambda *a: scores(*a)[:2] + (next(scripted),))
    data = _write_jsonl(tmp_path / "d.jsonl", _rows(16))
    summary = ft.finetune_classifier(_config(tmp_path, data, init_from=str(lm_dir), freeze_body=True,
                                             max_iters=4, eval_interval=2), quiet=True)
    assert [r["val_acc"] for r in read_metrics(tmp_path / "clf" / "metrics.jsonl")] == [0.5, 0.9, 0.7]
    assert summary["val_acc"] == 0.7 and summary["best_val_acc"] == 0.9


def test_weight_decay_shrinks_the_head_weight_by_lr_times_decay(tmp_path, lm_dir):
    # AdamW decays before its step, and one step's gradient does not depend on the decay: after one step
    # at the peak rate, the runs with and without decay differ by exactly -lr * wd * (initial weight);
    # the bias (1-D) does not decay
    data = _write_jsonl(tmp_path / "d.jsonl", _rows(16))
    heads = []
    for decay in (0.0, 0.5):
        out = tmp_path / f"clf{decay}"
        ft.finetune_classifier(_config(tmp_path, data, init_from=str(lm_dir), out=str(out), freeze_body=True,
                                       max_iters=1, warmup_iters=0, learning_rate=1e-2, weight_decay=decay),
                               quiet=True)
        heads.append(ft.load_classifier(out).head)
    initial = ft.init_head(8, 2, seed=1337)[ft.HEAD_WEIGHT]
    np.testing.assert_allclose(heads[1][ft.HEAD_WEIGHT] - heads[0][ft.HEAD_WEIGHT], -1e-2 * 0.5 * initial,
                               rtol=1e-4, atol=1e-9)
    np.testing.assert_array_equal(heads[1][ft.HEAD_BIAS], heads[0][ft.HEAD_BIAS])


def test_a_new_run_replaces_the_metrics_of_an_earlier_one(tmp_path, lm_dir):
    # an earlier run that stopped before its first checkpoint left its metrics rows: they were appended to
    out = tmp_path / "clf"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 0, "epoch": 0.0, "val_acc": 0.25}\n'
                                       '{"step": 10, "epoch": 1.0, "val_acc": 0.5}\n')
    data = _write_jsonl(tmp_path / "d.jsonl", _rows(16))
    ft.finetune_classifier(_config(tmp_path, data, init_from=str(lm_dir), freeze_body=True, max_iters=2,
                                   eval_interval=2), quiet=True)
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [0, 2]


# --- mutation review: the commands pass their flags on and print what they computed ---------------------


def test_cli_finetune_flags_reach_the_run_and_eval_prints_rows_as_true_classes(tmp_path, lm_dir, capsys):
    # guards: --freeze-body, --dropout or the spaces of --labels "tragedy, comedy" lost between the command
    # line and the run; and eval's printed matrix transposed (the PNG and the result were right)
    data = _write_jsonl(tmp_path / "d.jsonl", _rows())
    out = tmp_path / "clf"
    assert main(["finetune", "--data", str(data), "--init-from", str(lm_dir), "--out", str(out),
                 "--freeze-body", "--labels", "tragedy, comedy", "--dropout", "0.2", "--max-iters", "2",
                 "--learning-rate", "3e-2", "--backend", "numpy", "--quiet"]) == 0
    clf = ft.load_classifier(out)
    assert clf.labels == ["tragedy", "comedy"] and clf.model.config.dropout == 0.2
    for name, p in load_checkpoint(lm_dir).model.params.items():
        np.testing.assert_array_equal(clf.model.params[name], p, err_msg=name)
    # one text 10 times: a single predicted column, 7 tragedies and 3 comedies in the rows
    test_file = _write_jsonl(tmp_path / "t.jsonl", [{"text": "sweet love", "label": label}
                                                    for label in ["tragedy"] * 7 + ["comedy"] * 3])
    capsys.readouterr()
    assert main(["eval", "--out", str(out), "--data", str(test_file), "--backend", "numpy"]) == 0
    lines = capsys.readouterr().out.split("confusion matrix")[1].splitlines()[2:4]
    printed = {line.split()[0]: [int(n) for n in line.split()[1:]] for line in lines}
    assert sum(printed["tragedy"]) == 7 and sum(printed["comedy"]) == 3
    result = ft.evaluate_classifier(out, str(test_file), split="all")
    assert [printed["tragedy"], printed["comedy"]] == result["confusion"].tolist()


# --- resume ---------------------------------------------------------------------------------------------


def _interrupt_after(monkeypatch, updates):
    """Make the run stop as Ctrl-C stops it (KeyboardInterrupt) where it would take update ``updates + 1``."""
    from tinygpt.optim import AdamW

    real_step = AdamW.step

    def step(self, grads, lr=None):
        if self.step_count == updates:
            raise KeyboardInterrupt
        return real_step(self, grads, lr)

    monkeypatch.setattr(AdamW, "step", step)


def _files(out):
    return {p: p.read_bytes() for p in sorted(Path(out).rglob("*")) if p.is_file()}


def _assert_same_run(full, part):
    """Two run directories hold one run: the metrics rows (elapsed aside), the weights, head and AdamW
    moments bit for bit, the best checkpoint, and where the batch order and dropout stream stand."""
    rows = [[{k: v for k, v in r.items() if k != "elapsed"} for r in read_metrics(out / "metrics.jsonl")]
            for out in (full, part)]
    assert rows[0] == rows[1]
    assert os.path.islink(full / "best") == os.path.islink(part / "best")
    for which in ("latest", "best") if os.path.islink(full / "best") else ("latest",):
        assert os.readlink(full / which) == os.readlink(part / which)
        a, b = ft.load_classifier(full / which), ft.load_classifier(part / which)
        for name, p in {**a.model.params, **a.head}.items():
            np.testing.assert_array_equal(b.model.params.get(name, b.head.get(name)), p, err_msg=name)
    a, b = load_checkpoint(full), load_checkpoint(part)
    for key in ("exp_avg", "exp_avg_sq"):
        assert a.optimizer_state[key].keys() == b.optimizer_state[key].keys()
        for name, m in a.optimizer_state[key].items():
            np.testing.assert_array_equal(b.optimizer_state[key][name], m, err_msg=f"{key}.{name}")
    for key in ("step", "sampler_rng", "epoch_position", "dropout_rng", "best_step", "best_val_acc",
                "best_val_loss"):
        assert a.state[key] == b.state[key], key
    assert a.state["optimizer"]["step"] == b.state["optimizer"]["step"] == a.state["step"]


@pytest.mark.parametrize("case", ["file_split_dropout", "stratified_split_frozen_body",
                                  "no_val_from_scratch"])
def test_an_interrupted_and_resumed_run_ends_as_the_uninterrupted_one(tmp_path, lm_dir, monkeypatch, case):
    rows, settings = _rows(), {"eval_interval": 4, "max_iters": 20}
    if case == "file_split_dropout":  # 40 training rows: 5 steps an epoch
        rows = [{**row, "split": "val" if i % 6 == 0 else "train"} for i, row in enumerate(rows)]
        settings.update(init_from=str(lm_dir), dropout=0.1)
    elif case == "stratified_split_frozen_body":  # 44 training rows: 6 steps an epoch
        settings.update(init_from=str(lm_dir), freeze_body=True, learning_rate=3e-2)
    else:  # 48 training rows: 6 steps an epoch
        settings.update(val_fraction=0.0, n_layer=1, n_head=2, n_embd=8, block_size=16, dropout=0.1)
    data = _write_jsonl(tmp_path / "d.jsonl", rows)
    full = tmp_path / "full"
    ft.finetune_classifier(_config(tmp_path, data, out=str(full), **settings), quiet=True)
    assert [r["step"] for r in read_metrics(full / "metrics.jsonl")] == [0, 4, 8, 12, 16, 20]
    for updates, checkpoint in ((13, 12), (10, 8)):  # stopped past a checkpoint at an epoch's end, or not
        part = tmp_path / f"part{updates}"
        with monkeypatch.context() as patch:
            _interrupt_after(patch, updates)
            with pytest.raises(KeyboardInterrupt):
                ft.finetune_classifier(_config(tmp_path, data, out=str(part), **settings), quiet=True)
        assert load_checkpoint(part).state["step"] == checkpoint
        summary = ft.finetune_classifier(ft.FinetuneConfig(out=str(part)), resume=True, quiet=True)
        assert summary["step"] == 20
        _assert_same_run(full, part)


def test_cli_resume_turns_recompute_on_or_off_and_continues_the_run_exactly(tmp_path, lm_dir, monkeypatch,
                                                                           capsys):
    # recomputation changes no bit of a step, so a resume may take either setting: --recompute was a bare
    # switch, and a run started with it could not be resumed without (`--recompute false` was argparse's
    # 'unrecognized arguments: false')
    data = _write_jsonl(tmp_path / "d.jsonl", _rows())
    args = ["finetune", "--data", str(data), "--init-from", str(lm_dir), "--max-iters", "6",
            "--eval-interval", "2", "--batch-size", "8", "--dropout", "0.1", "--backend", "numpy", "--quiet"]
    full = tmp_path / "full"
    assert main([*args, "--out", str(full)]) == 0
    for started, resumed in ((["--recompute"], "false"), ([], "true"), (["--recompute", "true"], "off")):
        part = tmp_path / f"part{len(started)}"
        with monkeypatch.context() as patch:
            _interrupt_after(patch, 3)
            assert main([*args, "--out", str(part), *started]) == 130
        assert load_checkpoint(part).train_config["recompute"] == bool(started)
        assert main(["finetune", "--resume", "--out", str(part), "--recompute", resumed, "--quiet"]) == 0
        assert load_checkpoint(part).train_config["recompute"] == (resumed == "true")
        _assert_same_run(full, part)
    capsys.readouterr()


def test_cli_resume_after_ctrl_c_continues_the_run_exactly(tmp_path, lm_dir, monkeypatch, capsys):
    _write_jsonl(tmp_path / "d.jsonl", _rows())
    monkeypatch.chdir(tmp_path)  # --data relative: the run saves it absolute, for a resume from anywhere
    args = ["finetune", "--data", "d.jsonl", "--init-from", str(lm_dir), "--max-iters", "12",
            "--eval-interval", "4", "--batch-size", "8", "--dropout", "0.1", "--learning-rate", "3e-3",
            "--backend", "numpy"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main([*args, "--out", str(full), "--quiet"]) == 0
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 6)
        assert main([*args, "--out", str(part), "--quiet"]) == 130
    assert "interrupted" in capsys.readouterr().err
    monkeypatch.chdir(lm_dir)
    assert main(["finetune", "--resume", "--out", str(part)]) == 0
    captured = capsys.readouterr()
    assert f"resuming {part} at step 4 of 12" in captured.err
    assert [line.split(" (")[0] for line in captured.err.splitlines() if line.startswith("step ")] == [
        "step 8", "step 12"]
    assert "done: 12 steps in " in captured.out and " s in all, " in captured.out
    _assert_same_run(full, part)


@pytest.mark.parametrize("crash", ["ctrl_c_after_the_best", "between_the_latest_and_best_links"])
def test_resume_keeps_the_best_checkpoints_bookkeeping(tmp_path, lm_dir, monkeypatch, crash):
    # scripted (accuracy, loss) per evaluation (steps 0, 4, ..., 20), told apart by the rows metrics.jsonl
    # holds when it is scored (a resumed run keeps those of its checkpoint's steps). Ctrl-C: step 8 is the
    # best; step 16, resumed, ties its accuracy at a higher loss, the best only to a run that lost the
    # saved best score. Between the links: a save that is the best (step 12) dies after it moved `latest`,
    # before `best`, which still names step 8
    from tinygpt import checkpoint

    if crash == "ctrl_c_after_the_best":
        script, best = [(0.5, 0.7), (0.75, 0.6), (0.875, 0.5), (0.75, 0.4), (0.875, 0.55), (0.75, 0.3)], 8
    else:
        script, best = [(0.5, 0.7), (0.75, 0.6), (0.875, 0.5), (1.0, 0.4), (0.875, 0.3), (0.75, 0.3)], 12
    real_scores, real_link = ft._scores, checkpoint._symlink_atomically
    data = _write_jsonl(tmp_path / "d.jsonl", _rows())
    settings = {"init_from": str(lm_dir), "eval_interval": 4, "max_iters": 20}

    def scripted(out):
        def scores(features, head, label_ids=None):
            probs, loss, acc = real_scores(features, head, label_ids)
            if label_ids is None:
                return probs, loss, acc
            acc, loss = script[len(read_metrics(out / "metrics.jsonl"))]
            return probs, loss, acc
        return scores

    def link(target, path):
        if path.name == "best" and target.endswith("step-00000012"):
            raise KeyboardInterrupt
        real_link(target, path)

    full, part = tmp_path / "full", tmp_path / "part"
    monkeypatch.setattr(ft, "_scores", scripted(full))
    ft.finetune_classifier(_config(tmp_path, data, out=str(full), **settings), quiet=True)
    monkeypatch.setattr(ft, "_scores", scripted(part))
    with monkeypatch.context() as patch:
        if crash == "ctrl_c_after_the_best":
            _interrupt_after(patch, 13)
        else:
            patch.setattr(checkpoint, "_symlink_atomically", link)
        with pytest.raises(KeyboardInterrupt):
            ft.finetune_classifier(_config(tmp_path, data, out=str(part), **settings), quiet=True)
    assert (os.readlink(part / "latest"), os.readlink(part / "best")) == ("checkpoints/step-00000012",
                                                                          "checkpoints/step-00000008")
    summary = ft.finetune_classifier(ft.FinetuneConfig(out=str(part)), resume=True, quiet=True)
    assert os.readlink(part / "best") == f"checkpoints/step-{best:08d}"
    assert (summary["best_step"], summary["best_val_acc"], summary["val_acc"]) == (best, max(script)[0], 0.75)
    assert sorted(p.name for p in (part / "checkpoints").iterdir()) == [f"step-{best:08d}", "step-00000020"]
    _assert_same_run(full, part)


def test_resume_refusals_are_one_line_and_change_nothing(tmp_path, lm_dir, capsys):
    data = _write_jsonl(tmp_path / "d.jsonl", _rows(16))
    out = tmp_path / "clf"
    new_run = ["finetune", "--data", str(data), "--init-from", str(lm_dir), "--out", str(out), "--max-iters",
               "2", "--eval-interval", "1", "--batch-size", "4", "--backend", "numpy", "--quiet"]
    assert main(new_run) == 0
    before = _files(out)
    resume = ["finetune", "--resume", "--out", str(out), "--quiet"]
    for flag in ("--init-from", "--pretrained"):
        _fails(capsys, [*resume, flag, str(lm_dir)], f"{flag} starts a new run; it cannot be combined with "
               "--resume")
    for flags in (["--seed", "5"], ["--val-fraction", "0.3"], ["--labels", "tragedy,comedy"],
                  ["--freeze-body"]):
        _fails(capsys, [*resume, *flags], f"cannot change {flags[0]} when resuming (", f" in {out})")
    # not given, the dropout and shape came from --init-from: the line names the model's dropout, and a shape
    # or tokenizer flag is for a model from scratch, as a new run is told (each said 'None in DIR')
    _fails(capsys, [*resume, "--dropout", "0.2"], f"cannot change --dropout when resuming (0.0 in {out})")
    for flag, value in (("--n-layer", "1"), ("--tokenizer", "char")):
        _fails(capsys, [*resume, flag, value], f"{flag} is for a model from scratch: with --init-from the "
               "model's")
    _fails(capsys, [*resume[:2], "--out", str(out / "latest")], "is a checkpoint, not a fine-tuning run",
           "--resume takes the run's directory")
    _fails(capsys, new_run, f"{out} already holds a checkpoint: pass --resume to continue it, or choose "
           "another --out")
    assert _files(out) == before
    target = os.readlink(out / "best")  # a copy that followed links: no new checkpoint could be published
    (out / "best").unlink()
    shutil.copytree(out / target, out / "best")
    _fails(capsys, [*resume, "--max-iters", "3"], f"{out / 'best'} is a directory, not the link tinygpt "
           "keeps to the best checkpoint")
    shutil.rmtree(out / "best")
    (out / "best").symlink_to(target)
    assert _files(out) == before
    _fails(capsys, ["finetune", "--resume", "--out", str(tmp_path / "none")], "no checkpoint: directory",
           "does not exist")
    assert not (tmp_path / "none").exists()
    (tmp_path / "empty").mkdir()
    _fails(capsys, ["finetune", "--resume", "--out", str(tmp_path / "empty")], "no checkpoint in")
    lm_before = _files(lm_dir)
    _fails(capsys, ["finetune", "--resume", "--out", str(lm_dir)], f"{lm_dir} holds a language model from "
           "`tinygpt train`, not a `tinygpt finetune` classifier, so --resume cannot continue it")
    assert _files(lm_dir) == lm_before
    with pytest.raises(TinyGPTError, match="unknown setting 'max_steps'"):
        ft.finetune_classifier(ft.FinetuneConfig(out=str(out)), resume=True, overrides={"max_steps": 3})
    # given again as they are, the frozen settings are accepted (the labels as text, as the CLI reads them)
    assert main([*resume, "--seed", "1337", "--labels", "comedy, tragedy", "--val-fraction", "0.1",
                 "--dropout", "0"]) == 0
    scratch = tmp_path / "scratch"
    assert main(["finetune", "--data", str(data), "--out", str(scratch), "--n-layer", "1", "--n-head", "2",
                 "--n-embd", "8", "--block-size", "16", "--max-iters", "1", "--quiet"]) == 0
    _fails(capsys, ["finetune", "--resume", "--out", str(scratch), "--n-layer", "2"],
           f"cannot change --n-layer when resuming (1 in {scratch})")
    assert main(["finetune", "--resume", "--out", str(scratch), "--n-layer", "1", "--dropout", "0",
                 "--quiet"]) == 0


def test_a_new_run_into_a_checkpoint_it_cannot_resume_is_not_told_to_pass_resume(tmp_path, lm_dir, capsys):
    # a language model's run (finetune --init-from DIR --out DIR), a checkpoint directory and, for train, a
    # classifier's run: each said "pass --resume to continue it", which --resume then refused
    data = _write_jsonl(tmp_path / "d.jsonl", _rows(16))
    new_run = ["finetune", "--data", str(data), "--init-from", str(lm_dir), "--max-iters", "1", "--quiet"]
    before = _files(lm_dir)
    for out in (lm_dir, lm_dir / "latest"):
        err = _fails(capsys, [*new_run, "--out", str(out)], "choose another --out")
        assert "--resume" not in err
    assert "holds a language model from `tinygpt train`" in _fails(capsys, [*new_run, "--out", str(lm_dir)])
    assert "is a checkpoint" in _fails(capsys, [*new_run, "--out", str(lm_dir / "latest")])
    assert _files(lm_dir) == before
    clf = tmp_path / "clf"
    assert main([*new_run, "--out", str(clf)]) == 0
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(row["text"] + "\n" for row in _rows()) * 20)
    train = ["train", "--data", str(corpus), "--out", str(clf), "--n-layer", "1", "--n-head", "2", "--n-embd",
             "8", "--block-size", "8", "--batch-size", "2", "--max-iters", "1", "--quiet"]
    before = _files(clf)
    assert "--resume" not in _fails(capsys, train, "holds a classifier from `tinygpt finetune`")
    assert _files(clf) == before
    _fails(capsys, [*new_run, "--out", str(clf)], "already holds a checkpoint: pass --resume to continue it")


def test_a_checkpoint_saved_before_resume_existed_is_refused_and_still_predicts_and_evaluates(
        tmp_path, lm_dir, capsys):
    # what finetune saved until now: no AdamW moments, a state of the step and the val scores only
    data = _write_jsonl(tmp_path / "d.jsonl", _rows(16))
    out, names = tmp_path / "clf", ["comedy", "tragedy"]
    ckpt = load_checkpoint(lm_dir)
    info = {"data": str(data.resolve()), "val_fraction": 0.1, "seed": 1337, "freeze_body": False,
            "source": f"checkpoint {lm_dir} (step 7)"}
    record = {**ft.FinetuneConfig(data=str(data), out=str(out), init_from=str(lm_dir), max_iters=4).to_dict(),
              "task": "classify", "labels": names}
    head = ft.init_head(ckpt.model.config.n_embd, len(names))
    save_checkpoint(out, ft._ClassifierForSaving(ckpt.model, head, names, info), ckpt.tokenizer, None, record,
                    {"step": 4, "val_acc": 0.5, "val_loss": 0.69})
    before = _files(out)
    _fails(capsys, ["finetune", "--resume", "--out", str(out)], f"{out} was fine-tuned by an older tinygpt, "
           "whose checkpoints lack what --resume needs", "start a new run")
    assert _files(out) == before
    assert main(["predict", "--out", str(out), "o woe"]) == 0
    assert set(capsys.readouterr().out.split()) >= set(names)
    assert main(["eval", "--out", str(out), "--backend", "numpy"]) == 0
    assert "accuracy" in capsys.readouterr().out



def test_resume_on_the_backend_auto_ran_says_nothing_of_a_backend(tmp_path, lm_dir, capsys, monkeypatch):
    # "auto" is numba without a GPU: resumed with --backend numba the run goes on as it ran, where the
    # resume warned "--backend changed from 'auto' to 'numba'" (train's backend_change, tested there too)
    import tinygpt.kernels

    monkeypatch.setattr(tinygpt.kernels, "has_real_gpu", lambda: False)
    data = _write_jsonl(tmp_path / "d.jsonl", _rows(16))
    ft.finetune_classifier(_config(tmp_path, data, init_from=str(lm_dir), batch_size=4, max_iters=2,
                                   eval_interval=2, backend="auto"), quiet=True)
    capsys.readouterr()
    ft.finetune_classifier(ft.FinetuneConfig(out=str(tmp_path / "clf")), resume=True, quiet=True,
                           overrides={"backend": "numba"})
    assert capsys.readouterr().err == ""

def test_resume_on_changed_data_warns_when_its_rows_split_alike_and_refuses_when_not(tmp_path, lm_dir,
                                                                                     capsys):
    rows = _rows(16)
    data = _write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "clf"
    ft.finetune_classifier(_config(tmp_path, data, init_from=str(lm_dir), batch_size=4, max_iters=2,
                                   eval_interval=2), quiet=True)
    capsys.readouterr()

    def resume(**overrides):
        ft.finetune_classifier(ft.FinetuneConfig(out=str(out)), resume=True, quiet=True, overrides=overrides)
        return capsys.readouterr().err

    tail = "; the resumed run is not the uninterrupted one\n"

    def longer(before, after):
        return (f"tinygpt: warning: the run's length changed from {before} to {after} steps: the learning "
                f"rate now decays to --min-lr at step {after}, where the steps so far followed a decay to "
                f"step {before}{tail}")

    assert resume(max_iters=3) == longer(2, 3)
    assert resume() == ""  # the same file and settings: silent
    copy = _write_jsonl(tmp_path / "copy.jsonl", rows)
    assert resume(data=str(copy), max_iters=4) == longer(3, 4)  # the same rows elsewhere: nothing to say
    # the same rows in another layout (a CSV, as a spreadsheet would save them): nothing to say either (it
    # warned "texts or labels differ", comparing the files' bytes)
    as_csv = tmp_path / "copy.csv"
    with open(as_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, ["text", "label"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    assert resume(data=str(as_csv)) == ""
    assert resume(data=str(copy)) == ""
    _write_jsonl(copy, [{**row, "text": row["text"][::-1]} if i == 3 else row for i, row in enumerate(rows)])
    assert resume(max_iters=5) == (f"tinygpt: warning: the texts or labels of {copy} changed since the run "
                                   f"started (its rows split as before){tail}" + longer(4, 5))
    assert resume(data=str(data), batch_size=2, max_iters=6, backend="numba") == (
        f"tinygpt: warning: the data changed from {copy} to {data}: its rows split as before, but their "
        f"texts or labels differ{tail}"
        f"tinygpt: warning: --batch-size changed from 4 to 2: the batches change{tail}"
        f"tinygpt: warning: --backend changed from 'numpy' to 'numba': backends agree only to rounding{tail}"
        + longer(5, 6))
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [0, 2, 3, 4, 5, 6]
    before = _files(out)
    _write_jsonl(data, rows + [{"text": "o woe", "label": "tragedy"}])  # the stratified split drawn anew
    with pytest.raises(TinyGPTError, match="its rows no longer split into the run's training and validation "
                                           "rows .* restore the file or start a new run"):
        resume(max_iters=7)
    _write_jsonl(data, rows[:8] + [{"text": "o woe", "label": "history"}] + rows[9:])
    with pytest.raises(TinyGPTError, match=r"cannot resume .*: label 'history' is not among the given labels "
                                           r".* where the run's classes are \['comedy', 'tragedy'\]"):
        resume(max_iters=7)
    assert _files(out) == before


def test_resume_of_integer_labels_takes_a_csv_of_the_rows(tmp_path, lm_dir, capsys):
    # a .jsonl's labels 0 and 1 are saved as integers; the same rows as a CSV are text, "0" and "1": resuming
    # on the CSV was refused ("label '0' is not among the given labels [0, 1]"), where README says the same
    # rows in another layout change nothing
    rows = [{"text": row["text"], "label": int(row["label"] == "comedy")} for row in _rows(16)]
    data = _write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "clf"
    ft.finetune_classifier(_config(tmp_path, data, init_from=str(lm_dir), batch_size=4, max_iters=2,
                                   eval_interval=2), quiet=True)
    as_csv = tmp_path / "d.csv"
    with open(as_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, ["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    capsys.readouterr()
    summary = ft.finetune_classifier(ft.FinetuneConfig(out=str(out)), resume=True, quiet=True,
                                     overrides={"data": str(as_csv)})
    assert summary["labels"] == [0, 1] and capsys.readouterr().err == ""  # not even "their labels differ"
    assert ft.label_vocabulary(["1", "0", " 1"], [0, 1])[1].tolist() == [1, 0, 1]


def test_weights_that_give_no_finite_val_loss_are_not_saved(tmp_path, lm_dir):
    # an update past all reason (a learning rate of 1e12) left NaN weights: they were saved as the latest
    # checkpoint, and as the best (the broken model's picks scored 0.5 against step 0's 0.0), and the run
    # stopped only at the next step's loss; train keeps its last good checkpoint, as finetune now does
    data = _write_jsonl(tmp_path / "d.jsonl", _rows(16))
    out = tmp_path / "clf"
    cfg = _config(tmp_path, data, n_layer=1, n_head=2, n_embd=16, block_size=16, learning_rate=1e12,
                  min_lr=0.0, warmup_iters=0, weight_decay=0.0, eval_interval=1, max_iters=4)
    with pytest.raises(TinyGPTError, match=r"^fine-tuning diverged: the val loss is (nan|inf) at step 1; the "
                                           r"last good checkpoint \(step 0\) is kept in .*; try a lower "
                                           r"--learning-rate$"), np.errstate(invalid="ignore", over="ignore"):
        ft.finetune_classifier(cfg, quiet=True)  # (NumPy's warnings on the way to NaN: not what is tested)
    assert os.readlink(out / "latest") == os.readlink(out / "best") == "checkpoints/step-00000000"
    assert [row["step"] for row in read_metrics(out / "metrics.jsonl")] == [0]
    # weights broken before any update: said so, nothing saved
    ckpt = load_checkpoint(lm_dir)
    ckpt.model.params["ln_f.weight"][:] = np.nan
    broken = tmp_path / "broken"
    save_checkpoint(broken, ckpt.model, ckpt.tokenizer, None, {"backend": "numpy"}, {"step": 7})
    with pytest.raises(TinyGPTError, match=r"^the val loss is nan at step 0, before any update: the starting "
                                           r"weights give no finite loss; nothing was saved in "), \
            np.errstate(invalid="ignore"):
        ft.finetune_classifier(_config(tmp_path, data, init_from=str(broken), out=str(tmp_path / "c2")),
                               quiet=True)
    assert not (tmp_path / "c2" / "latest").exists()


@pytest.mark.parametrize("eval_interval", [2, 3, 4])
def test_weights_broken_at_a_step_are_named_by_that_step_whoever_finds_them(tmp_path, monkeypatch,
                                                                          eval_interval):
    # the third update breaks the weights: they are step 3's, as the val loss's check names them. The
    # training batch after the step-2 evaluation said "at step 4", the update it was for, and nothing of the
    # checkpoint kept (train names them by step 3 whoever finds them)
    break_weights_at_update(monkeypatch, 3)
    data = _write_jsonl(tmp_path / "d.jsonl", _rows(16))
    cfg = _config(tmp_path, data, n_layer=1, n_head=2, n_embd=16, block_size=16, eval_interval=eval_interval,
                  max_iters=6, batch_size=4)
    found_by, kept = {2: ("loss", "the last good checkpoint (step 2)"),
                      3: ("val loss", "the last good checkpoint (step 0)"),
                      4: ("loss", "the last good checkpoint (step 0)")}[eval_interval]
    with pytest.raises(TinyGPTError, match=rf"^fine-tuning diverged: the {found_by} is nan at step 3[,;] .*"
                                           rf"{re.escape(kept)} is kept in "), \
            np.errstate(invalid="ignore", over="ignore"):
        ft.finetune_classifier(cfg, quiet=True)


def test_a_non_finite_loss_on_the_checkpoints_weights_says_a_resume_meets_it_again(tmp_path, lm_dir,
                                                                                    monkeypatch):
    # a batch the step-2 checkpoint's weights give NaN on: "try a lower --learning-rate", yet a --resume
    # restores those weights and the batch order's place, draws that batch again and stops on it
    data = _write_jsonl(tmp_path / "d.jsonl", _rows(16))
    seen, forward = [], ft.classifier_forward

    def recording_forward(model, head, idx, lengths, labels=None):
        seen.append(np.array(idx))
        return forward(model, head, idx, lengths, labels)

    monkeypatch.setattr(ft, "classifier_forward", recording_forward)
    settings = {"init_from": str(lm_dir), "eval_interval": 2, "max_iters": 4, "batch_size": 4}
    ft.finetune_classifier(_config(tmp_path, data, out=str(tmp_path / "clean"), **settings), quiet=True)
    poisoned = seen[2]  # the batch drawn on the weights of step 2

    def poisoned_forward(model, head, idx, lengths, labels=None):
        logits, loss, cache = forward(model, head, idx, lengths, labels)
        return logits, float("nan") if np.array_equal(idx, poisoned) else loss, cache

    monkeypatch.setattr(ft, "classifier_forward", poisoned_forward)
    message = (r"^fine-tuning diverged: the loss is nan at step 2, on a training batch; the checkpoint of "
               r"these weights \(step 2\) is kept in .*; a --resume draws this batch on them again, whatever "
               r"its --learning-rate: start the run again with a lower --learning-rate$")
    with pytest.raises(TinyGPTError, match=message):
        ft.finetune_classifier(_config(tmp_path, data, **settings), quiet=True)
    with pytest.raises(TinyGPTError, match=message):  # as the message says
        ft.finetune_classifier(ft.FinetuneConfig(out=str(tmp_path / "clf")), resume=True, quiet=True,
                               overrides={"learning_rate": 1e-6, "min_lr": 1e-7})
    # on the first batch no update has run: no learning rate is to blame (it said try a lower one)
    poisoned = seen[0]
    with pytest.raises(TinyGPTError, match=r"^the loss is nan at step 0, on a training batch, before any "
                                           r"update: the starting weights give it, whatever the "
                                           r"--learning-rate \(the checkpoint of these weights is kept in "):
        ft.finetune_classifier(_config(tmp_path, data, out=str(tmp_path / "first"), **settings), quiet=True)


def test_without_a_val_split_weights_that_are_not_finite_are_not_saved(tmp_path, lm_dir, monkeypatch):
    # with --val-fraction 0 no val loss scores the weights: the NaN weights of an update past all reason were
    # saved as the latest checkpoint (and the run stopped at the next batch, blaming it on that checkpoint)
    break_weights_at_update(monkeypatch, 3)
    data = _write_jsonl(tmp_path / "d.jsonl", _rows(16))
    out = tmp_path / "clf"
    with pytest.raises(TinyGPTError, match=r"^fine-tuning diverged: the weights hold a non-finite value at "
                                           r"step 3; the last good checkpoint \(step 0\) is kept in "), \
            np.errstate(invalid="ignore", over="ignore"):
        ft.finetune_classifier(_config(tmp_path, data, init_from=str(lm_dir), val_fraction=0.0,
                                       eval_interval=3, max_iters=6, batch_size=4), quiet=True)
    assert os.readlink(out / "latest") == "checkpoints/step-00000000"
    # weights broken before any update, in the body that --freeze-body leaves as it is: nothing saved
    ckpt = load_checkpoint(lm_dir)
    ckpt.model.params["ln_f.weight"][:] = np.nan
    broken = tmp_path / "broken"
    save_checkpoint(broken, ckpt.model, ckpt.tokenizer, None, {"backend": "numpy"}, {"step": 7})
    with pytest.raises(TinyGPTError, match=r"^the starting weights hold a non-finite value \(step 0, before "
                                           r"any update\); nothing was saved in "):
        ft.finetune_classifier(_config(tmp_path, data, init_from=str(broken), out=str(tmp_path / "c2"),
                                       val_fraction=0.0, freeze_body=True), quiet=True)
    assert not (tmp_path / "c2" / "latest").exists()


def test_resuming_a_finished_run_does_nothing_and_a_longer_one_continues(tmp_path, lm_dir, capsys):
    data = _write_jsonl(tmp_path / "d.jsonl", _rows(16))
    out = tmp_path / "clf"
    assert main(["finetune", "--data", str(data), "--init-from", str(lm_dir), "--out", str(out), "--epochs",
                 "1", "--eval-interval", "2", "--batch-size", "4", "--backend", "numpy", "--quiet"]) == 0
    before = _files(out)
    capsys.readouterr()
    assert main(["finetune", "--resume", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"{out} is already at step 4 >= 4 steps (--epochs 1); nothing to do" in captured.err
    assert "done: 4 steps" in captured.out and "step " not in captured.err.replace("at step 4", "")
    assert _files(out) == before
    assert main(["finetune", "--resume", "--out", str(out), "--max-iters", "6", "--quiet"]) == 0
    assert "the run's length changed from 4 to 6 steps" in capsys.readouterr().err
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [0, 2, 4, 6]
    capsys.readouterr()
    assert main(["finetune", "--resume", "--out", str(out), "--max-iters", "6"]) == 0
    assert f"{out} is already at step 6 >= --max-iters 6; nothing to do" in capsys.readouterr().err


def test_a_closed_stderr_keeps_finetunes_lines_off_stdout(tmp_path, lm_dir, monkeypatch, capsys):
    # `tinygpt finetune ... 2>&-`: sys.stderr is None, and its progress lines and resume's warnings, as
    # print(file=None)'s, went to stdout, among the run's summary line
    monkeypatch.setattr(sys, "stderr", None)
    data = _write_jsonl(tmp_path / "d.jsonl", _rows(16))
    out = tmp_path / "clf"
    assert main(["finetune", "--data", str(data), "--init-from", str(lm_dir), "--out", str(out),
                 "--max-iters", "2", "--eval-interval", "2", "--batch-size", "4", "--backend", "numpy"]) == 0
    assert capsys.readouterr().out.startswith("done: 2 steps")
    assert main(["finetune", "--resume", "--out", str(out), "--max-iters", "4", "--batch-size", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("done: 4 steps") and len(printed.splitlines()) == 1, printed


def test_resume_after_the_data_file_moved_says_to_give_data(tmp_path, lm_dir, capsys):
    # it said only 'labelled data file not found: PATH', a path the user never typed (the saved, absolute one)
    data = _write_jsonl(tmp_path / "d.jsonl", _rows(16))
    out = tmp_path / "clf"
    ft.finetune_classifier(_config(tmp_path, data, init_from=str(lm_dir), max_iters=2, eval_interval=2),
                           quiet=True)
    moved = data.rename(tmp_path / "moved.jsonl")
    _fails(capsys, ["finetune", "--resume", "--out", str(out), "--max-iters", "4"],
           f"the run's data file {data} is gone (moved or deleted?): to resume, give --data FILE")
    _fails(capsys, ["finetune", "--resume", "--out", str(out), "--data", str(data)],
           f"labelled data file not found: {data}")  # given, it is the user's own path
    assert main(["finetune", "--resume", "--out", str(out), "--data", str(moved), "--max-iters", "4",
                 "--quiet"]) == 0


def test_resuming_a_finished_frozen_body_run_computes_no_features(tmp_path, lm_dir, monkeypatch):
    # 'nothing to do' ran the body over every text first (the frozen body's features), minutes on GPT-2
    data = _write_jsonl(tmp_path / "d.jsonl", _rows(16))
    out = tmp_path / "clf"
    ft.finetune_classifier(_config(tmp_path, data, init_from=str(lm_dir), freeze_body=True, max_iters=2,
                                   eval_interval=2), quiet=True)
    calls = []
    real = ft.pooled_features
    monkeypatch.setattr(ft, "pooled_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert ft.finetune_classifier(ft.FinetuneConfig(out=str(out)), resume=True, quiet=True)["step"] == 2
    assert calls == []
    assert ft.finetune_classifier(ft.FinetuneConfig(out=str(out)), resume=True, quiet=True,
                                  overrides={"max_iters": 4})["step"] == 4
    assert len(calls) == 2  # a longer run: the training and validation features, once


def test_resume_with_epochs_sets_the_length_of_a_run_started_with_max_iters(tmp_path, lm_dir, capsys):
    # the saved --max-iters overrode --epochs given on resume: 'already at step 2 >= --max-iters 2; nothing
    # to do', where README says a larger --epochs continues a run
    data = _write_jsonl(tmp_path / "d.jsonl", _rows(16))  # 14 training rows: 4 steps of 4 an epoch
    out = tmp_path / "clf"
    ft.finetune_classifier(_config(tmp_path, data, init_from=str(lm_dir), batch_size=4, max_iters=2,
                                   eval_interval=2), quiet=True)
    summary = ft.finetune_classifier(ft.FinetuneConfig(out=str(out)), resume=True, quiet=True,
                                     overrides={"epochs": 2})
    assert summary["step"] == 8 and load_checkpoint(out).train_config["max_iters"] is None
    assert "the run's length changed from 2 to 8 steps" in capsys.readouterr().err
    summary = ft.finetune_classifier(ft.FinetuneConfig(out=str(out)), resume=True, quiet=True,
                                     overrides={"epochs": 5, "max_iters": 10})  # both: --max-iters, as ever
    assert summary["step"] == 10


def test_resume_drops_metrics_rows_past_its_checkpoint_and_refuses_a_bad_position_or_best_score(
        tmp_path, lm_dir, capsys):
    data = _write_jsonl(tmp_path / "d.jsonl", _rows(16))
    out = tmp_path / "clf"
    ft.finetune_classifier(_config(tmp_path, data, init_from=str(lm_dir), batch_size=4, max_iters=2,
                                   eval_interval=2), quiet=True)
    with open(out / "metrics.jsonl", "a") as f:  # a crash between a row's append and its checkpoint
        f.write(json.dumps({"step": 4, "epoch": 1.0, "train_loss": 99.0}) + "\n")
    state_path = (out / "state.json").resolve()
    good = json.loads(state_path.read_text())
    for position in (-1, 99, "3", None):  # (state.json has no checksum of its own: hand-edited or damaged)
        state_path.write_text(json.dumps({**good, "epoch_position": position}))
        _fails(capsys, ["finetune", "--resume", "--out", str(out), "--max-iters", "4"], "corrupt checkpoint",
               f"invalid epoch_position ({position!r}) for 14 training rows")
    for acc, loss in (("x", 0.5), (None, 0.5), (0.5, None)):  # a TypeError at the first evaluation
        state_path.write_text(json.dumps({**good, "best_val_acc": acc, "best_val_loss": loss}))
        _fails(capsys, ["finetune", "--resume", "--out", str(out), "--max-iters", "4"], "corrupt checkpoint",
               f"has best_step 2 with best_val_acc and best_val_loss [{acc!r}, {loss!r}]")
    state_path.write_text(json.dumps(good))
    ft.finetune_classifier(ft.FinetuneConfig(out=str(out)), resume=True, quiet=True,
                           overrides={"max_iters": 4})
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 2, 4] and rows[-1]["train_loss"] != 99.0
