"""Numba kernels: the hot loops over sparse structure. They import numpy and numba only.

Every kernel trusts its caller (the functional wrapper checks shapes, dtypes and
contiguity) and names its NumPy twin — the plain dense computation it must agree with.
"""
