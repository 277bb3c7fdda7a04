"""The reference path: for each hot operation, the plainest correct loops, one screen
each, written to be read. They are the definitions the fast kernels in
[`refsparse.kernels`][refsparse.kernels] are tested equal to; ``refsparse.kernels.use("reference")``
runs the whole library on them. Sparse ones run in O(nnz) time and memory.
"""
