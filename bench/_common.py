"""Shared helpers of the benchmarks: subprocess workers, environment facts, tables."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(BENCH_DIR, "results")


def warn_openblas_env():
    """The benchmarks want OpenBLAS's own kernel choice; say so if the variables are set."""
    bad = [v for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if v in os.environ]
    if bad:
        print(f"warning: {', '.join(bad)} set; numpy's BLAS runs a slower kernel. Run as\n"
              f"  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python {sys.argv[0]}\n", file=sys.stderr)
    return bad


def peak_rss_mb():
    """Peak resident memory of this process so far, in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu():
    """The CPU the figures come from: its model name and the vector extensions that decide
    which kernels run (AVX2 or AVX-512 here, and so refsparse's vector width), read from
    /proc/cpuinfo (Linux; elsewhere platform.processor() and no flags)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return {"model": model, "extensions": [x for x in ("avx2", "fma", "avx512f") if x in flags]}


def cpu_line():
    """One line for a report's header, e.g. ``CPU: AMD EPYC (avx2, fma), 2 cores``."""
    c = cpu()
    ext = ", ".join(c["extensions"]) or "no AVX2"
    return f"CPU: {c['model']} ({ext}), {os.cpu_count()} cores"


def environment():
    """Versions, thread counts, the CPU and the BLAS kernels (threadpoolctl), for the JSON record."""
    info = {"python": platform.python_version(), "machine": platform.machine(),
            "cpu": cpu(), "cpu_count": os.cpu_count(),
            "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                                   "OMP_NUM_THREADS", "NUMBA_NUM_THREADS")}}
    import numpy
    import scipy

    info["numpy"] = numpy.__version__
    info["scipy"] = scipy.__version__
    try:
        import numba

        info["numba"] = numba.__version__
        info["numba_threads"] = numba.config.NUMBA_NUM_THREADS
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [{k: d.get(k) for k in ("internal_api", "version", "num_threads", "architecture",
                                                "prefix")} for d in threadpool_info()]
    except ImportError:
        info["blas"] = "threadpoolctl not installed"
    return info


def run_worker(script, args, env=None):
    """Run ``python script --worker ...`` in its own process; return its JSON result.

    Each library is timed in a process of its own: right after a numpy BLAS call, OpenBLAS's
    spinning threads slow torch down by about 2× on 2 cores.
    """
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    try:
        cmd = [sys.executable, script, "--worker", *args, "--json", out]
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env=None if env is None else {**os.environ, **env})
        if proc.returncode != 0:
            raise RuntimeError(f"worker {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        with open(out) as fh:
            return json.load(fh)
    finally:
        os.unlink(out)


def dense_twin(x, w, b, dy):
    """SparseLinear's dense masked twin, for the benchmarks' checks before timing: y = x W̃ᵀ + b,
    dx = dy W̃ and dW = dyᵀ x at the stored entries, W̃ = w.toarray()."""
    import numpy as np

    wd = w.toarray()
    rows = np.repeat(np.arange(w.shape[0]), np.diff(w.indptr))
    return {"fwd": x @ wd.T + b, "dx": dy @ wd, "dw": (dy.T @ x)[rows, w.indices]}


def rel_err(mine, ref):
    import numpy as np

    mine = np.asarray(mine, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    err = float(np.max(np.abs(mine - ref))) if ref.size else 0.0
    return err / scale if scale > 0 else err


def write_json(name, payload):
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, name)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    return path


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
