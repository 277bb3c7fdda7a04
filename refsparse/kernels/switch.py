"""The switch between the two paths: ``"fast"`` (tiled, SIMD, threaded kernels) and
``"reference"`` (the plainest correct loops, written to be read).

Every hot operation has both. The reference is the definition; the fast kernel is tested
equal to it. One switch runs the whole library on either path:

    refsparse.kernels.use("reference")            # from now on
    with refsparse.kernels.use("reference"): ...  # inside the block only
    REFSPARSE_KERNELS=reference python ...        # the environment, read at import
    refsparse train --kernels reference           # the command line

Kernel drivers ask [`current`][refsparse.kernels.switch.current] on each call, so a switch takes effect at the next
call; it is process-wide (not per thread), like NumPy's print options.
"""

from __future__ import annotations

import os

__all__ = ["PATHS", "current", "use"]

PATHS = ("fast", "reference")
ENV_VAR = "REFSPARSE_KERNELS"


def _check_path(name, path):
    if not isinstance(path, str) or path not in PATHS:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, PATHS))}, got {path!r}")
    return path


_current = _check_path(ENV_VAR, os.environ.get(ENV_VAR, "fast") or "fast")


def current():
    """The path the kernel drivers run now: ``"fast"`` or ``"reference"``."""
    return _current


class use:
    """Run the kernels on ``path`` from now on; as a context manager, only inside the block.

    ``use("reference")`` switches at once (so a bare call works as a setter); leaving a
    ``with use(...)`` block restores the path that was current when ``use`` was called.
    """

    def __init__(self, path):
        global _current
        _check_path("path", path)
        self._previous = _current
        _current = path

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        global _current
        _current = self._previous
        return False
