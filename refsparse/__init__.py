"""refsparse: a sparse Transformer written by hand in NumPy, SciPy and Numba.

Every forward and backward pass is a plain function in [`refsparse.functional`][refsparse.functional];
modules in [`refsparse.nn`][refsparse.nn] own parameters and call them; [`refsparse.models`][refsparse.models]
assembles whole models. See docs/ for the math and conventions.
"""

__version__ = "0.1.0"
