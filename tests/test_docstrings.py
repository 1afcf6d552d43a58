"""The worked examples in the library's docstrings (``>>>`` lines) run and print what they show.

Every module of the package whose source holds a ``>>>`` is found here, so a new example is tested from
the day it is written; one that no longer matches the code fails like any other test.
"""

import doctest
import importlib
from pathlib import Path

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


def test_the_examples_are_found():
    # the modules known to carry examples: an empty or short list would pass every test below vacuously
    assert {"tinygpt.tokenizer", "tinygpt.data"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), verbose=False)
    assert result.attempted > 0, f"{name} has a '>>>' that doctest does not run"
    assert result.failed == 0, f"{result.failed} of {name}'s {result.attempted} examples failed (see stdout)"
