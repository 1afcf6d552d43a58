"""The ``tinygpt`` command: argparse sub-commands, each a thin layer over the Python API.

Errors from bad input (``TinyGPTError``, missing files) are printed as one line on stderr and the
command exits with status 2, never with a traceback. Each command's section below builds its parser
and imports the module that does the work only when the command runs, so ``tinygpt --help`` is quick.
"""

from __future__ import annotations

import argparse
import sys

from tinygpt.errors import TinyGPTError


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line: ``tinygpt: error: ...``, exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


# --- tokenizer (issue 2) ---------------------------------------------------------------------------


def _add_tokenizer(sub):
    p = sub.add_parser("tokenizer", help="train, use and inspect BPE tokenizers")
    p.set_defaults(func=lambda args: p.print_help())
    tsub = p.add_subparsers(dest="tokenizer_command", parser_class=_Parser)
    del tsub  # sub-commands: train, encode, decode


# --- train / eval / plot (issue 4) ----------------------------------------------------------------


def _add_training(sub):
    pass  # sub-commands: train, eval, plot


# --- sample (issue 5) -----------------------------------------------------------------------------


def _add_sample(sub):
    pass  # sub-command: sample


# --- bench ----------------------------------------------------------------------------------------

# Each benchmark lives in tinygpt/bench/<name>.py with ``add_arguments(parser)`` and ``run(args)``; it
# measures tinygpt and its peer side by side in one run and prints a table.
BENCHMARKS = {
    "tokenizer": "training and encoding against HF tokenizers and tiktoken",
    "train": "training-step tokens/s against PyTorch eager",
    "generate": "KV-cached decoding tokens/s against transformers' generate",
    "kernels": "CUDA SGEMM and attention against cuBLAS and SDPA (needs a GPU)",
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
    _add_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except TinyGPTError as exc:
        print(f"tinygpt: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"tinygpt: error: {exc.strerror or exc}: {exc.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tinygpt: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
