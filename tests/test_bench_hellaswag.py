"""``tinygpt bench hellaswag``: the three sides run at tiny sizes and print their rows and the agreement
lines; the peer scores as build-nanogpt does and agrees with ours; the synthetic examples are render's layout;
every refusal is one line before any output. No timings asserted."""

import json
import re

import numpy as np
import pytest
from conftest import _gpt2_tokenizer_files, save_hf_gpt2

from tinygpt import hellaswag
from tinygpt.bench.hellaswag import peer_model, peer_score, span, synthetic_examples
from tinygpt.cli import main
from tinygpt.model import GPT, GPTConfig

TINY = ["bench", "hellaswag", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--vocab-size", "97",
        "--block-size", "128"]
SIDES = ("tinygpt, shared context", "tinygpt, rows", "transformers (build-nanogpt's way)")


def _rows(out):
    """{side: (examples/s, ratio, acc, acc_norm)} from the table."""
    rows = {}
    for side in SIDES:
        line = next((ln for ln in out.splitlines() if ln.startswith(side + " ")), None)
        if line is not None:
            rate, ratio, acc, acc_norm = line[len(side):].split()
            rows[side] = (float(rate), ratio, float(acc), float(acc_norm))
    return rows


def test_bench_hellaswag_runs_the_three_sides_and_agrees_with_transformers(capsys, monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    assert main([*TINY, "--limit", "6", "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    # the command line that repeats the run, every setting spelled out
    assert lines[0] == ("command: tinygpt bench hellaswag --n-layer 1 --n-head 2 --n-embd 16 --vocab-size 97 "
                        "--block-size 128 --gelu tanh --context-tokens 40 --ending-tokens 25 --endings 4 "
                        "--limit 6 --seed 0 --backend numpy")
    assert ("6 synthetic examples (seed 0, random labels): contexts of 20 to 60 tokens, 4 endings of 13 to "
            "37") in out
    rows = _rows(out)
    assert list(rows) == list(SIDES)
    peer_rate = rows[SIDES[2]][0]
    assert peer_rate > 0.005  # (the bounds below divide by its least unrounded value)
    for rate, ratio, acc, acc_norm in rows.values():
        assert rate > 0 and 0 <= acc <= 1 and 0 <= acc_norm <= 1
        # "vs transformers": our examples/s over theirs, printed to 2 decimals, as are the rates: each
        # printed rate is within 0.005 of its own, so the unrounded ratio lies between these bounds, and
        # its printing moves it by 0.005 more at most (rel=0.05 let a ratio 3% off pass)
        low, high = (rate - 0.005) / (peer_rate + 0.005), (rate + 0.005) / (peer_rate - 0.005)
        assert low - 0.005 - 1e-9 <= float(ratio.rstrip("x")) <= high + 0.005 + 1e-9
    assert rows[SIDES[2]][1] == "1.00x"
    for side in SIDES[:2]:  # the same picks on every example, and the log-likelihoods close
        line = next(ln for ln in lines if ln.startswith(side + ":"))
        assert "the same picks as transformers' (acc 6/6, acc_norm 6/6)" in line
        assert float(re.search(r"within (\S+) relative", line).group(1)) < 1e-5
        assert rows[side][2:] == rows[SIDES[2]][2:]  # so the same accuracies


def test_bench_hellaswag_without_the_peer_prints_our_two_sides(capsys):
    assert main([*TINY, "--limit", "2", "--no-peer", "--endings", "3"]) == 0
    out = capsys.readouterr().out
    assert list(_rows(out)) == list(SIDES[:2]) and "transformers'" not in out
    assert all(row[1] == "-" for row in _rows(out).values())
    assert out.splitlines()[0].endswith("--backend numba --no-peer") and "3 endings of 13 to 37" in out


@pytest.mark.parametrize("bias, gelu", [(True, "tanh"), (False, "erf")])
def test_the_peer_holds_our_weights_and_scores_as_we_do(bias, gelu):
    # nanoGPT's checkpoints: no biases (the peer's are zero) and the exact GELU (transformers' "gelu")
    import torch
    import transformers

    config = GPTConfig(vocab_size=97, block_size=128, n_layer=2, n_head=2, n_embd=16, bias=bias, gelu=gelu)
    model = GPT(config, seed=3)
    peer = peer_model(torch, transformers, model.host_params(), config)
    for tokens, mask, _ in synthetic_examples(3, 97, seed=1):
        want_summed, want_mean = hellaswag.score(model, tokens, mask, share_context=False)
        summed, mean = peer_score(torch, peer, tokens, mask)
        np.testing.assert_allclose(summed, want_summed, rtol=1e-5)
        np.testing.assert_allclose(mean, want_mean, rtol=1e-5)


def test_synthetic_examples_are_laid_out_as_render_lays_out_an_example():
    examples = synthetic_examples(20, 50, context_tokens=9, ending_tokens=5, endings=3, seed=4)
    assert span(9) == (5, 13) and span(5) == (3, 7) and span(1) == (1, 1)
    for tokens, mask, label in examples:
        n = hellaswag._shared_context(tokens, mask)  # one context, each ending one run right after it
        assert 5 <= n <= 13 and tokens.shape[0] == 3 and 0 <= label < 3
        lengths = mask.sum(axis=1)
        assert ((3 <= lengths) & (lengths <= 7)).all() and tokens.shape[1] == n + lengths.max()
        assert not tokens[~mask & (np.arange(tokens.shape[1]) >= n)].any()  # right-padded with id 0
    again = synthetic_examples(20, 50, context_tokens=9, ending_tokens=5, endings=3, seed=4)
    assert all((a[0] == b[0]).all() and a[2] == b[2] for a, b in zip(examples, again))  # seeded


def test_bench_hellaswag_of_a_pretrained_directory_and_a_real_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    save_hf_gpt2(tmp_path / "gpt2", vocab_size=50257, block_size=16, seed=2,
                 tokenizer_files=_gpt2_tokenizer_files())
    items = [("A man is sitting on a roof. he", ["is here.", "starts."], 1),
             ("The crowd cheers as the team scores a goal in the last minute of the game and",
              ["the fans go home.", "it rains."], 0),  # the second cut to fit 16 tokens
             ("The crowd cheers as the team scores a goal in the last minute of the game and",
              ["yes.", "no."], 1)]  # and the third, its rows cut alike (endings of 2 tokens each): shared
    path = tmp_path / "hellaswag.jsonl"
    path.write_text("".join(json.dumps({"ctx": c, "endings": e, "label": y}) + "\n" for c, e, y in items))
    assert main(["bench", "hellaswag", "--pretrained", str(tmp_path / "gpt2"), "--hellaswag", str(path),
                 "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == (f"command: tinygpt bench hellaswag --pretrained {tmp_path / 'gpt2'} "
                                   f"--hellaswag {path} --limit 100 --seed 0 --backend numpy")
    assert "vocabulary 50257, block 16" in out
    assert (f"3 examples of {path} (2 cut to fit, 1 of them with rows keeping different parts of the "
            "context: scored by rows on both our sides)") in out
    assert list(_rows(out)) == list(SIDES) and "(acc 3/3, acc_norm 3/3)" in out


@pytest.mark.parametrize("argv, message", [
    (["--limit", "0"], "--limit must be >= 1, got 0"),
    (["--endings", "1"], "--endings must be >= 2"),
    (["--n-embd", "15"], "--n-embd 15 is not divisible by --n-head 2"),
    (["--block-size", "40"], "synthetic rows of up to 97 tokens do not fit the model's context of 40"),
    (["--pretrained", "somewhere"], "--n-layer sets the random model's shape; --pretrained PATH has its own"),
    (["--hellaswag", "no/such.jsonl"], "--hellaswag reads the file with GPT-2's tokenizer, whose 50257 ids "
                                       "need --vocab-size 50257 or more, got 97"),
    (["--vocab-size", "50257", "--hellaswag", "no/such.jsonl", "--no-peer"], "HellaSwag file not found"),
    (["--seed", "-1"], "--seed must be >= 0"),
])
def test_bench_hellaswag_refusals_are_one_line_before_any_output(capsys, argv, message):
    assert main([*TINY, *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("tinygpt: error: ") and captured.err.count("\n") == 1, captured.err
    assert message in captured.err, captured.err


def test_bench_hellaswag_refuses_a_pretrained_model_of_non_finite_weights(tmp_path, capsys):
    # as eval and sample refuse it (06052cf): the bench scored NaN logits, accuracies of a model that
    # predicts nothing
    from tinygpt.tokenizer import BPETokenizer

    model = GPT(GPTConfig(vocab_size=270, block_size=128, n_layer=1, n_head=2, n_embd=16), seed=0)
    model.params["h.0.attn.c_attn.weight"].flat[7] = np.nan
    model.save_pretrained(tmp_path / "gpt2")
    BPETokenizer.train("hello world, the king's heart " * 20, 270).save_gpt2_files(tmp_path / "gpt2")
    assert main(["bench", "hellaswag", "--pretrained", str(tmp_path / "gpt2"), "--limit", "2",
                 "--backend", "numpy", "--no-peer"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"tinygpt: error: {tmp_path / 'gpt2'} holds non-finite weights "
                            "(h.0.attn.c_attn.weight has nan), which give non-finite logits; use another "
                            "checkpoint\n")
