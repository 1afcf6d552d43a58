"""Benchmarks: each measures tinygpt and its peer side by side in one run (``tinygpt bench NAME``)."""
