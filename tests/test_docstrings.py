"""The worked examples in the library's docstrings run and give what they show.

Two forms: ``>>>`` lines (doctest), and the inline example docstrings use for a single call, "Example:"
followed by a double-backquoted ``call -> result`` (or ``call`` -> ``result``). Every module of the package
that holds either is found here, so a new example is tested from the day it is written; one that no longer
matches the code fails like any other test.
"""

import doctest
import importlib
import re
from pathlib import Path

import numpy as np
import pytest

import tinygpt

PACKAGE_DIR = Path(tinygpt.__file__).parent


def modules_with_examples() -> list[str]:
    """Dotted names of the package's modules whose source holds a ``>>>`` line (read as text, not imported:
    finding them must not need what a module imports)."""
    names = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        if ">>>" in path.read_text(encoding="utf-8"):
            parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


MODULES = modules_with_examples()


# Example: ``call -> result`` or Example: ``call`` -> ``result``; the call, then what it returns
INLINE_EXAMPLE = re.compile(r"Example:\s+``([^`]+?)(?:``)?\s+->\s+(?:``)?([^`]+)``")


def inline_examples() -> list[tuple[str, str, str]]:
    """(module, call, result) of each inline example in the package's source (read as text, as above)."""
    found = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for call, result in INLINE_EXAMPLE.findall(path.read_text(encoding="utf-8")):
            found.append((name, " ".join(call.split()), " ".join(result.split())))
    return found


INLINE = inline_examples()


def test_the_examples_are_found():
    # the modules known to carry examples: an empty or short list would pass every test below vacuously
    assert {"tinygpt.tokenizer", "tinygpt.data"} <= set(MODULES)
    assert {"tinygpt.generate", "tinygpt.layers", "tinygpt.finetune"} <= {name for name, _, _ in INLINE}


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), verbose=False)
    assert result.attempted > 0, f"{name} has a '>>>' that doctest does not run"
    assert result.failed == 0, f"{result.failed} of {name}'s {result.attempted} examples failed (see stdout)"


@pytest.mark.parametrize("name, call, result", INLINE, ids=[call for _, call, _ in INLINE])
def test_inline_examples(name, call, result):
    # the call in the module's namespace (np for hash32's example), the result as NumPy prints it
    got = eval(call, {"np": np, **vars(importlib.import_module(name))})
    np.testing.assert_equal(got, eval(result, {"array": np.array, "inf": np.inf}), err_msg=f"{name}: {call}")
