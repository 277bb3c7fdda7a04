"""Input checks shared by the public entry points.

Every error names the argument, what was expected and what came, so that a user
reading it never has to open the source. Kernels and the inner math trust their
callers; these checks run once per public call.
"""

from __future__ import annotations

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_array(name, x, *, ndim=None, min_ndim=None):
    """Return ``x`` as an ndarray, or raise TypeError naming ``name``."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got {x.ndim} (shape {x.shape})")
    if min_ndim is not None and x.ndim < min_ndim:
        raise ValueError(
            f"{name}: expected at least {min_ndim} dimensions, got {x.ndim} (shape {x.shape})"
        )
    return x


def check_float(name, x, *, ndim=None, min_ndim=None):
    """Check that ``x`` is a float32 or float64 ndarray."""
    check_array(name, x, ndim=ndim, min_ndim=min_ndim)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected dtype float32 or float64, got {x.dtype}")
    return x


def check_same_dtype(**arrays):
    """Check that all the given float arrays share one dtype (no silent upcasting)."""
    items = [(k, v) for k, v in arrays.items() if v is not None]
    if not items:
        return
    name0, a0 = items[0]
    for name, a in items[1:]:
        if a.dtype != a0.dtype:
            raise TypeError(
                f"{name}: expected dtype {a0.dtype} (the dtype of {name0}), got {a.dtype}"
            )


def check_shape(name, x, expected):
    """Check ``x.shape`` against ``expected``; ``None`` in ``expected`` matches any size."""
    ok = x.ndim == len(expected) and all(e is None or e == s for e, s in zip(expected, x.shape))
    if not ok:
        shown = tuple("*" if e is None else e for e in expected)
        raise ValueError(f"{name}: expected shape {shown}, got {x.shape}")
    return x


def check_int(name, x, *, ndim=None, low=None, high=None):
    """Check an integer ndarray (token ids, targets); ``low <= x < high`` when given."""
    check_array(name, x, ndim=ndim)
    if not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"{name}: expected an integer dtype, got {x.dtype}")
    if x.size and low is not None and x.min() < low:
        raise ValueError(f"{name}: expected values >= {low}, got a minimum of {x.min()}")
    if x.size and high is not None and x.max() >= high:
        raise ValueError(f"{name}: expected values < {high}, got a maximum of {x.max()}")
    return x


def check_bool(name, x, *, ndim=None):
    """Check a boolean mask."""
    check_array(name, x, ndim=ndim)
    if x.dtype != np.bool_:
        raise TypeError(f"{name}: expected dtype bool, got {x.dtype}")
    return x


def check_dtype_name(name, dtype):
    """Turn 'float32'/'float64' (or a numpy dtype) into a numpy dtype, or raise."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name}: expected 'float32' or 'float64', got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected 'float32' or 'float64', got {dtype!r}")
    return dt


def check_positive_int(name, value):
    """Return ``value`` as an int >= 1, or raise ValueError naming ``name`` (a bool is refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def check_rng(rng, *, default_seed=0):
    """The ``numpy.random.Generator`` a module draws from: ``rng``, or a fresh one seeded
    ``default_seed`` when ``rng`` is None (refsparse has no global random state)."""
    if rng is None:
        return np.random.default_rng(default_seed)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    return rng


def check_features(name, x, width, like, *, ndim=None):
    """``x``: a float array (…, width) — exactly ``ndim`` dimensions when given — of the dtype
    of the parameter ``like`` (the parameters' dtype decides: no silent upcasting)."""
    if ndim is None:
        check_float(name, x, min_ndim=1)
    else:
        check_float(name, x, ndim=ndim)
    if x.shape[-1] != width:
        raise ValueError(f"{name}: expected last dimension {width}, got shape {x.shape}")
    check_same_dtype(weight=like, **{name: x})


def check_positions(name, positions, batch, length, max_len):
    """Position ids: int (B, T) or (T,), each in [0, max_len); returned as a (B, T) array."""
    check_int(name, positions, low=0, high=max_len)
    if positions.shape not in ((batch, length), (length,)):
        raise ValueError(f"{name}: expected shape ({batch}, {length}) or ({length},), got {positions.shape}")
    return np.ascontiguousarray(np.broadcast_to(positions, (batch, length)), dtype=np.int64)


def is_int(x):
    """True for a Python or NumPy integer that is not a bool."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def check_finite(name, x):
    """Raise ValueError naming ``name`` and the first non-finite entry of the array ``x``."""
    if not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(f"{name}: expected finite values, got {x[tuple(bad)]!r} at index {tuple(bad)}")
    return x
