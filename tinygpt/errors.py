"""The one exception type tinygpt raises for bad input, the number tests its checks share, and the one way
its notes, warnings and progress lines reach stderr (``say_on_stderr``).

Every user-facing problem (a bad argument, a missing or corrupt file, an unknown name) raises
``TinyGPTError`` with a one-line message that names the problem. It subclasses ``ValueError`` so callers
that already catch ``ValueError`` keep working. The CLI turns it into a one-line message on stderr and
exit status 2, with no traceback.
"""


import math
import numbers
import reprlib
import sys

import numpy as np


class TinyGPTError(ValueError):
    """Bad input: the message says what is wrong and, where it helps, how to fix it."""


def say_on_stderr(line: str) -> None:
    """A note, warning, error or progress line on stderr, dropped when stderr is closed (``2>&-``:
    sys.stderr is None), where print(file=None) writes it to stdout, into the output the user redirected
    there (a sample, ids, the summary line of a run)."""
    if sys.stderr is not None:
        print(line, file=sys.stderr, flush=True)


def is_int(value) -> bool:
    """An integer, Python's or NumPy's (``np.integer`` is a ``numbers.Integral``); not a bool, which
    compares equal to 1 but is a flag, not a count, nor a float such as 2.0 (a loaded file's 256.0)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A real number, Python's or NumPy's (``numbers.Real``); not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_finite(value) -> bool:
    """``math.isfinite`` of a real number, but False for an integer past float's range (10**400, as a
    hand-edited file may hold), where math.isfinite raises OverflowError."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


class _Shown(reprlib.Repr):
    def repr1(self, x, level):
        # a NumPy scalar as the Python number it holds: NumPy 2 writes np.float64(-1.0) where the message
        # means -1.0 (an API caller's value is often one: a config read with np.load, a value from an array)
        if isinstance(x, np.floating):  # in its own precision's shortest digits: np.float32(1.1) is 1.1, not
            return str(x)  # the 1.100000023841858 of the float64 .item() makes (a longdouble has no .item())
        return super().repr1(x.item() if isinstance(x, np.generic) else x, level)

    def repr_int(self, x, level):
        # Python refuses to write an int of more than 4,300 digits (a ValueError), and a file's may be longer
        return f"<an integer of {x.bit_length():,} bits>" if x.bit_length() > 256 else repr(x)


_SHOWN = _Shown()


def shown(value) -> str:
    """``value``, read from a file, as an error message shows it: its repr cut short by reprlib (6 levels
    down, 6 items across, 30 characters of a string), an integer too long to write as its size in bits.
    A pickle can make a list of a list twice, 40 deep, in 1 KB, or 10**5000: repr never finished the
    first and raised a ValueError on the second, where this returns at once. A NumPy scalar is shown as the
    Python value it holds:

    >>> shown(np.float64(-1.0)), shown([np.int64(3), "a"]), shown(np.float32(1.1))
    ('-1.0', "[3, 'a']", '1.1')
    """
    return _SHOWN.repr(value)
