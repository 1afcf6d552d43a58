"""tinygpt: a from-scratch GPT in NumPy and Numba."""

__version__ = "0.1.0"
