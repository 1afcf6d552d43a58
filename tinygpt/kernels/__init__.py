"""Compute backends: the NumPy reference in ``tinygpt.layers`` and Numba kernels (``cpu``, ``cuda``)."""
