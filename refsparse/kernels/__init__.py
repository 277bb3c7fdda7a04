"""Numba kernels: the hot loops over sparse structure. They import numpy and numba only.

Every hot operation has two paths, switched by [`use`][refsparse.kernels.switch.use] (see
[`refsparse.kernels.switch`][refsparse.kernels.switch]): a *reference* implementation, the plainest correct
loops, and the *fast* one, tested equal to it. Kernels trust their caller (the
functional wrapper checks shapes, dtypes and contiguity).
"""

from .switch import PATHS, current, use

__all__ = ["PATHS", "current", "use"]
