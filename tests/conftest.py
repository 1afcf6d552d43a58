"""Fixtures shared by several test files."""

import types

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
