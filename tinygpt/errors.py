"""The one exception type tinygpt raises for bad input.

Every user-facing problem (a bad argument, a missing or corrupt file, an unknown name) raises
``TinyGPTError`` with a one-line message that names the problem. It subclasses ``ValueError`` so callers
that already catch ``ValueError`` keep working. The CLI turns it into a one-line message on stderr and
exit status 2, with no traceback.
"""


class TinyGPTError(ValueError):
    """Bad input: the message says what is wrong and, where it helps, how to fix it."""
