"""File I/O of golden vectors: read and write safetensors, and the machine's fingerprint.

Files are written whole or not at all: to a temporary file beside the target, renamed over
it when complete, so a full disk or a killed process never leaves half a file under the
name. Every failure is one error naming the path.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from .record import export

__all__ = ["as_tensors", "check_output_path", "fingerprint", "load", "save", "write"]


def check_output_path(path, what="output"):
    """``path`` as a string, or IsADirectoryError / FileNotFoundError naming ``what`` when it
    is a directory or its parent directory does not exist."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what}: {path} is a directory; give a file name, "
                                f"e.g. {os.path.join(path, 'ref.safetensors')}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{what}: no such directory: {parent}")
    return path


def save(path, tensors, metadata=None, *, what="output"):
    """Write ``tensors`` (dict name → ndarray) and string ``metadata`` to a safetensors file.

    Raises OSError naming ``path`` (and ``what``) for a directory, a missing parent
    directory, a read-only or full file system; nothing is left behind on failure.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    path = check_output_path(path, what)
    parent = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=parent)
        os.close(fd)
        save_file({k: np.ascontiguousarray(t) for k, t in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
        tmp = None
    except (OSError, SafetensorError) as e:
        detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise OSError(f"{what}: cannot write {path}: {detail}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
    return path


def write(path, op, **kwargs):
    """Export ``op`` (keywords as [`export`][refsparse.vectors.export]) to a safetensors file.

    Returns ``(tensors, metadata)``. The path is checked before the (possibly long) export.
    """
    path = check_output_path(path, "output")
    tensors, metadata = export(op, **kwargs)
    save(path, tensors, metadata)
    return tensors, metadata


def load(path, *, what="file"):
    """Read a safetensors file with the ``safetensors`` package's numpy API.

    Returns ``(tensors, metadata)``: a dict name → ndarray (in the file's order) and the
    header's string → string metadata (empty if none). Raises FileNotFoundError for a path
    that does not exist and ValueError for a directory or a file that is not safetensors;
    ``what`` names the file in those messages ("reference", "candidate").
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what}: no such file: {path}")
    if os.path.isdir(path):
        raise ValueError(f"{what}: {path} is a directory, not a safetensors file")
    try:
        from safetensors import SafetensorError, safe_open
    except ImportError as e:  # pragma: no cover - a runtime dependency
        raise ImportError("refsparse.vectors needs the safetensors package: pip install safetensors") from e
    try:
        with safe_open(path, framework="np") as f:
            metadata = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, ValueError, TypeError, UnicodeDecodeError) as e:  # a bad header or body
        raise ValueError(f"{what}: {path} is not a safetensors file ({e})") from None
    return tensors, metadata


def as_tensors(x, what):
    if isinstance(x, (str, os.PathLike)):
        return load(x, what=what)[0]
    if isinstance(x, dict):
        out = {}
        for name, value in x.items():
            if not isinstance(name, str):
                raise TypeError(f"{what}: expected str tensor names, got {type(name).__name__}")
            out[name] = np.asarray(value)
        return out
    raise TypeError(f"{what}: expected a path to a safetensors file or a dict of arrays, "
                    f"got {type(x).__name__}")



def fingerprint():
    """What decides the last bits of a float64 result on this machine, as a dict of strings.

    The versions of numpy, scipy and numba, the CPU (model name and the SIMD extensions numpy
    dispatches to) and the Numba thread count. Two machines with the same fingerprint run
    the same instructions in the same order, so they reproduce each other's vectors bit for
    bit; across fingerprints, BLAS blocking, numpy's SIMD exp/log and Numba's vectorised
    reductions may move results by a few ULPs (tests/test_golden.py states the bound).
    """
    import platform

    import numba
    import scipy

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        simd = ",".join(np.show_config(mode="dicts")["SIMD Extensions"]["found"])
    except (KeyError, TypeError, AttributeError, ValueError):  # not a stable API of numpy
        simd = "unknown"
    return {"numpy": np.__version__, "scipy": scipy.__version__, "numba": numba.__version__,
            "machine": platform.machine(), "cpu": cpu, "simd": simd,
            "numba_threads": str(numba.get_num_threads())}


