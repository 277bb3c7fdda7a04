"""Matrix products: the driver, and the fast path's work split over threads (big matrix
products on every core with a one-thread BLAS).

The driver, called by [`functional`][refsparse.functional] (linear layers, dense attention):

    matmul(a, b, bias=None)        C = A B (+ bias)          A (M, K), B (K, N)
    matmul_tn(a, b, colsum=False)  C = Aᵀ B (, Σ_rows A)     A (K, M), B (K, N)
    matmul_each(a, b, out)         out[j] = a[j] @ b[j] over the leading axes
    parallel_for(fn, n)            fn(i) for i in range(n), on the threads

runs the path that is switched on ([`kernels.current`][refsparse.kernels.current]):
the reference, [`kernels.reference.matmul`][refsparse.kernels.reference.matmul] (plain
``@``, one BLAS call; and ``parallel_for`` a plain loop), or the split products below. The
tests hold them together.

Why: ``refsparse train`` (and the benchmarks) run OpenBLAS on one thread, because its own
threads busy-wait between calls and, on a 2-core machine, fight the Numba kernels' threads
and any other process (measured 2–10× slower steps). One thread leaves the other cores
idle during the matrix products, which are ~85% of a training step's flops. So the big
products are cut into independent pieces — blocks of rows of the result, or slices of
the summed axis — and each piece is one ordinary single-threaded BLAS call, made from a
small pool of Python threads. NumPy releases the GIL inside BLAS, so the pieces run side
by side; a thread with nothing to do sleeps on a lock instead of spinning.

    matmul(a, b):     C = A B,    A (M, K), B (K, N): rows of A (and of C) in blocks
    matmul_tn(a, b):  C = Aᵀ B,   A (K, M), B (K, N): K in slices, C = Σ_s A_sᵀ B_s

``parallel_for(fn, n)`` is the primitive under both: it calls ``fn(i)`` for i in
range(n) on the calling thread and the pool's, each taking the next i as it comes free
(so a core slowed down by another process simply takes fewer pieces).

Splitting happens only when it can help: more than one thread (``numba.get_num_threads()``,
so ``NUMBA_NUM_THREADS`` and ``numba.set_num_threads`` set both), a one-thread BLAS
(``OPENBLAS_NUM_THREADS``, ``GOTO_NUM_THREADS`` or ``OMP_NUM_THREADS`` set to 1 in the
environment, read once; otherwise BLAS threads the product itself) and a product of at
least ``MIN_FLOPS``. Small products — all of the tests' and the golden vectors' — are one
plain ``np.dot``.

Numba's OpenMP threads spin for milliseconds after each parallel kernel by default, and the
product that follows ran 19 → 24–26 ms here for it. ``refsparse train`` and the benchmarks
set ``GOMP_SPINCOUNT=10000`` before the first kernel runs: a spin of about 0.1–0.3 ms, then
sleep (`refsparse.cli.THREAD_ENV`, where the choice is measured).

End-to-end gain, measured: one AdamW training step of a small float32 DecoderLM (4
layers, d_model 128, d_ff 512, T 128, batch 16) with ``OPENBLAS_NUM_THREADS=1`` took 1.09×
as long (dense attention) and 1.06× (local attention, window 32) when every product was one
plain ``np.dot`` instead of split — medians over 40 paired rounds, interleaved step by step
in one process, on a shared 2-core machine (load ~11, so other processes held the second
core much of the time: wall times, the only measure of a gain from threads, are noisy
there, and the figure is a rough one). Kept.

Numerics: a block of rows of C is computed by the same BLAS kernel with the same K loop as
the whole product. Slicing K (``matmul_tn``) adds the slices' partial products at the end:
the float64 result moves by a few ulps of the terms summed, as any reordering of a sum.
"""

from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from .reference import matmul as ref
from .switch import current

__all__ = ["MIN_FLOPS", "matmul", "matmul_each", "matmul_tn", "num_threads", "parallel_for"]

# products of fewer flops (2·M·N·K) than this are one BLAS call: ~0.2 ms on one core,
# where handing pieces to other threads (~20 µs each) stops paying
MIN_FLOPS = 1 << 24

_pool = None
_pool_size = 0
_pool_lock = threading.Lock()
_blas_single = None


def _blas_is_single_threaded():
    """True when the environment asks OpenBLAS for one thread (read once, as OpenBLAS does)."""
    global _blas_single
    if _blas_single is None:
        value = None
        for var in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"):
            if os.environ.get(var, "").strip():
                value = os.environ[var].strip()
                break
        _blas_single = value == "1"
    return _blas_single


def num_threads():
    """How many threads the products are split over: 1 unless BLAS runs on one thread
    (and 1 on the reference path)."""
    if current() == "reference" or not _blas_is_single_threaded():
        return 1
    return numba.get_num_threads()


def _get_pool(n_workers):
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < n_workers:
            _pool = ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="refsparse")
            _pool_size = n_workers
        return _pool


def parallel_for(fn, n, threads=None):
    """Call ``fn(i)`` for every i in range(n), on up to ``threads`` threads; return None.

    The calling thread works too; each thread takes the next i when it is free. ``fn``
    should spend its time in code that releases the GIL (BLAS, ``nogil`` Numba kernels).
    An exception in any call is raised here, after every thread has stopped. On the
    reference path (``threads`` not given) it is a plain loop.
    """
    threads = num_threads() if threads is None else threads
    threads = min(threads, n)
    if threads <= 1:
        for i in range(n):
            fn(i)
        return
    counter = itertools.count()  # next() on it is atomic under the GIL
    failed = []

    def work():
        for i in counter:
            if i >= n or failed:
                return
            try:
                fn(i)
            except Exception as e:  # noqa: BLE001 - stop the others, re-raise it below
                failed.append(e)
                return

    pool = _get_pool(threads - 1)
    futures = [pool.submit(work) for _ in range(threads - 1)]
    work()
    for f in futures:
        f.result()
    if failed:
        raise failed[0]


def _pieces(length, threads):
    """Bounds of ~2 pieces per thread along an axis of ``length`` (balance under load)."""
    k = min(length, 2 * threads)
    edges = [length * i // k for i in range(k + 1)]
    return list(itertools.pairwise(edges))


def matmul(a, b, bias=None, *, out=None):
    """C = A B (+ bias) for 2-D A (M, K) and B (K, N), blocks of rows of A on the threads.

    ``a`` and ``b`` may be transposed views (BLAS reads them as they are); ``out``, if
    given, is a C-contiguous (M, N) array of the result's dtype; ``bias`` (N,), if given,
    is added to every row, each block's rows while they are in cache. Returns C (M, N).
    """
    if current() == "reference":
        c = ref.matmul(a, b, bias)
        if out is None:
            return c
        out[...] = c
        return out
    M, K = a.shape
    N = b.shape[1]
    if out is None:
        out = np.empty((M, N), dtype=np.result_type(a, b))
    threads = num_threads()
    if threads <= 1 or 2 * M * N * K < MIN_FLOPS or M < 2 * threads:
        np.dot(a, b, out=out)
        if bias is not None:
            out += bias
        return out
    pieces = _pieces(M, threads)

    def piece(i):
        r0, r1 = pieces[i]
        np.dot(a[r0:r1], b, out=out[r0:r1])  # (r1 − r0, K) @ (K, N)
        if bias is not None:
            out[r0:r1] += bias

    parallel_for(piece, len(pieces), threads)
    return out


def matmul_tn(a, b, colsum=False):
    """C = Aᵀ B for 2-D A (K, M) and B (K, N): the summed axis K in slices on the threads.

        C = Σ_s A[s]ᵀ B[s]   over slices s of the rows 0..K−1

    This is the weight gradient of a linear layer, dW = dyᵀ x, whose summed axis (the
    tokens) is by far the longest. With ``colsum=True`` each slice also sums its rows of A,
    the bias gradient db = Σ_rows dy, while they are fresh in cache.

    Returns C (M, N), a new array; or (C, A.sum(axis=0)) with ``colsum``.
    """
    if current() == "reference":
        return ref.matmul_tn(a, b, colsum)
    K, M = a.shape
    N = b.shape[1]
    dtype = np.result_type(a, b)
    threads = num_threads()
    if threads <= 1 or 2 * M * N * K < MIN_FLOPS or K < 2 * threads:
        c = np.dot(a.T, b)
        return (c, a.sum(axis=0)) if colsum else c
    pieces = _pieces(K, threads)
    partial = np.empty((len(pieces), M, N), dtype=dtype)  # (S, M, N) one product per slice
    partial_sum = np.empty((len(pieces), M), dtype=a.dtype) if colsum else None  # (S, M)

    def piece(i):
        k0, k1 = pieces[i]
        np.dot(a[k0:k1].T, b[k0:k1], out=partial[i])  # (M, k1 − k0) @ (k1 − k0, N)
        if colsum:
            a[k0:k1].sum(axis=0, out=partial_sum[i])  # (M,)

    parallel_for(piece, len(pieces), threads)
    c = partial.sum(axis=0)  # (M, N)
    return (c, partial_sum.sum(axis=0)) if colsum else c


def matmul_each(a, b, out):
    """out[j] = a[j] @ b[j] for every index j of the leading axes; returns out.

    a (..., M, K), b (..., K, N), out (..., M, N) C-contiguous, the same leading axes;
    a and b may be transposed or strided views (kᵀ, the heads of a (B, T, C) array).
    The fast path makes one 2-D ``np.dot`` per matrix (on the calling thread): NumPy's
    stacked matmul (and 2-D ``np.matmul`` with ``out=``) once took a slow non-BLAS path
    for such views (measured ~1.5 s against ~60 ms for (16, 4, 256, 64) @ (16, 4, 64, 256)
    float32; with NumPy 2.x on this machine both are BLAS-fast: 21 against 16 ms).
    The reference is ``np.matmul(a, b, out=out)``.
    """
    if current() == "reference":
        return ref.matmul_each(a, b, out)
    for j in np.ndindex(*a.shape[:-2]):
        np.dot(a[j], b[j], out=out[j])
    return out
