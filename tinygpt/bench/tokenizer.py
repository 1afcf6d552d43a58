"""``tinygpt bench tokenizer``: BPE training and GPT-2 encoding against HF tokenizers and tiktoken.

One run, side by side, on one corpus (default: tiny shakespeare at ../shared/data, else ``--data``):

- training: ``BPETokenizer.train(text, V)`` against HF tokenizers' ``BpeTrainer`` (ByteLevel
  pre-tokenizer, the 256 byte alphabet, same vocabulary size V, ``min_frequency=0``) fed the whole text as
  one sequence, as tinygpt is; a second HF row feeds it line by line, which lets it use all cores;
- quality: the tokens each trained tokenizer makes of the corpus (fewer is better; ratio tinygpt / HF);
- encoding with GPT-2's tokenizer (all three loaded from the same files): MB of UTF-8 per second for
  tinygpt (chunk memo emptied before each run, so every distinct chunk is merged again), tiktoken
  (``encode_ordinary``) and HF tokenizers (``encode``), all three single-threaded calls on the whole text.

Runs of the sides alternate (ours, theirs, ours, ...) so other load on the machine slows both alike; each
figure is the median run. Numba compiles tinygpt's batch merge kernel on first use (then loads it from
its disk cache); that first call is timed apart and excluded from the encoding figure.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from tinygpt.errors import TinyGPTError


def add_arguments(parser):
    parser.add_argument("--data", help="UTF-8 text corpus (default: ../shared/data/tinyshakespeare.txt)")
    parser.add_argument("--vocab-size", type=int, default=4096, help="vocabulary size to train (4096)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side, median (3)")


def default_data() -> Path:
    """tiny shakespeare beside the checkout (../shared/data), looked for from the cwd and the repo."""
    repo = Path(__file__).resolve().parents[2]
    for base in (Path.cwd(), repo):
        path = base.parent / "shared" / "data" / "tinyshakespeare.txt"
        if path.is_file():
            return path
    raise TinyGPTError("no corpus: ../shared/data/tinyshakespeare.txt is not here; give one with --data FILE")


def _import_peers():
    try:
        import tiktoken
        import tiktoken.load
        import tokenizers
    except ImportError as exc:
        raise TinyGPTError(
            f"this benchmark compares against tiktoken and HF tokenizers ({exc.name} is missing): "
            "pip install -e '.[dev]'"
        ) from None
    return tiktoken, tokenizers


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _alternate(fns: dict, repeats: int) -> dict:
    """Median wall time of each function, their runs interleaved (a, b, c, a, b, c, ...)."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_timed(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def _hf_trainer(tokenizers, vocab_size):
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=0, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    return tok, trainer


def run(args):
    from tinygpt.data import read_text
    from tinygpt.tokenizer import GPT2_SPLIT_PATTERN, BPETokenizer, gpt2_files

    tiktoken, tokenizers = _import_peers()
    path = Path(args.data) if args.data else default_data()
    if not path.exists():
        raise TinyGPTError(f"corpus not found: {path}")
    text = read_text(path)  # a directory, a device, an empty or non-UTF-8 file: one line, before any timing
    n_bytes = len(text.encode("utf-8"))
    if args.repeats < 1:
        raise TinyGPTError(f"--repeats must be >= 1, got {args.repeats}")
    if args.vocab_size < 256:  # refused here, not by the first timed training, after the header was printed
        raise TinyGPTError(f"--vocab-size must be >= 256 (one token per byte), got {args.vocab_size}")
    print(f"corpus {path} ({n_bytes / 1e6:.2f} MB), vocab {args.vocab_size}, median of {args.repeats} runs")

    # --- training ---
    trained = {}

    def train_ours():
        trained["ours"] = BPETokenizer.train(text, args.vocab_size)

    def train_hf_whole():
        tok, trainer = _hf_trainer(tokenizers, args.vocab_size)
        tok.train_from_iterator([text], trainer=trainer)
        trained["hf"] = tok

    lines = text.splitlines(keepends=True)

    def train_hf_lines():
        tok, trainer = _hf_trainer(tokenizers, args.vocab_size)
        tok.train_from_iterator(lines, trainer=trainer)

    train_times = _alternate(
        {"ours": train_ours, "hf": train_hf_whole, "hf_lines": train_hf_lines}, args.repeats
    )
    ours, hf = trained["ours"], trained["hf"]
    ours_ids = ours.encode(text)
    if ours.decode(ours_ids) != text:
        raise TinyGPTError("the trained tokenizer did not round-trip the corpus")
    n_ours, n_hf = len(ours_ids), len(hf.encode(text).ids)

    # --- GPT-2 encoding: the same files for all three ---
    encoder_json, vocab_bpe = map(str, gpt2_files())
    gpt2 = BPETokenizer.from_gpt2_files(encoder_json, vocab_bpe)
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", "")  # read the local files, no cache keyed by path
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(vocab_bpe, encoder_json)
    specials = {"<|endoftext|>": 50256}
    tk = tiktoken.Encoding("gpt2", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
    from tokenizers import decoders, models, pre_tokenizers

    hf_gpt2 = tokenizers.Tokenizer(models.BPE.from_file(encoder_json, vocab_bpe))
    hf_gpt2.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf_gpt2.decoder = decoders.ByteLevel()

    first_call = _timed(lambda: gpt2.encode(text))  # loads (or compiles) the Numba kernel
    results = {}

    def encode_ours():
        gpt2.clear_cache()
        results["ours"] = gpt2.encode(text)

    def encode_ours_warm():
        gpt2.encode(text)

    def encode_tiktoken():
        results["tiktoken"] = tk.encode_ordinary(text)

    def encode_hf():
        results["hf"] = hf_gpt2.encode(text).ids

    enc_times = _alternate(
        {"ours": encode_ours, "tiktoken": encode_tiktoken, "hf": encode_hf, "ours_warm": encode_ours_warm},
        args.repeats,
    )
    same = results["ours"] == results["tiktoken"] == results["hf"]

    def mb_s(seconds):
        return n_bytes / seconds / 1e6

    warm = mb_s(enc_times["ours_warm"])
    rows = [
        ("train BPE, seconds (HF: whole text)", train_times["ours"], train_times["hf"], "lower"),
        ("train BPE, seconds (HF: lines, all cores)", train_times["ours"], train_times["hf_lines"], "lower"),
        ("tokens of the corpus, trained tokenizer", n_ours, n_hf, "lower"),
        ("GPT-2 encode MB/s vs tiktoken", mb_s(enc_times["ours"]), mb_s(enc_times["tiktoken"]), "higher"),
        ("GPT-2 encode MB/s vs HF tokenizers", mb_s(enc_times["ours"]), mb_s(enc_times["hf"]), "higher"),
        ("GPT-2 encode MB/s, memo warm, vs tiktoken", warm, mb_s(enc_times["tiktoken"]), "higher"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'figure':<{width}}  {'tinygpt':>10}  {'peer':>10}  {'tinygpt/peer':>12}")
    for name, value, peer, better in rows:
        fmt = (lambda v: f"{v:>10d}") if isinstance(value, int) else (lambda v: f"{v:>10.3f}")
        print(f"{name:<{width}}  {fmt(value)}  {fmt(peer)}  {value / peer:>11.3f}x  ({better} is better)")
    print(
        f"\nGPT-2 ids identical in all three: {same}; tinygpt's first encode call {first_call:.2f} s "
        f"(includes loading/compiling the Numba kernel, excluded above); trained vocab: tinygpt "
        f"{ours.vocab_size}, HF {hf.get_vocab_size()}"
    )
    if not same:
        raise TinyGPTError("GPT-2 ids differ between tinygpt, tiktoken and HF tokenizers")
