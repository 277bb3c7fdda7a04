"""The split matrix products and the thread loop (refsparse.kernels.parallel) against np.dot."""

import numpy as np
import pytest

from refsparse import functional as F
from refsparse.kernels import parallel


@pytest.fixture
def split_products(monkeypatch):
    """Split over 2 threads whatever the environment says, down to small products."""
    monkeypatch.setattr(parallel, "_blas_single", True)
    monkeypatch.setattr(parallel, "MIN_FLOPS", 1)
    monkeypatch.setattr(parallel.numba, "get_num_threads", lambda: 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,k,n", [(4, 3, 5), (101, 17, 33), (7, 64, 1)])
def test_matmul_pieces_equal_np_dot(split_products, dtype, m, k, n):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((n, k)).astype(dtype).T  # a transposed view, as linear passes Wᵀ
    c = parallel.matmul(a, b)
    assert c.dtype == dtype and c.flags.c_contiguous
    tol = 1e-13 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(c, np.dot(a, b), rtol=tol, atol=tol)
    bias = rng.standard_normal(n).astype(dtype)
    np.testing.assert_allclose(parallel.matmul(a, b, bias=bias), np.dot(a, b) + bias, rtol=tol, atol=tol)
    # Aᵀ B with the summed axis in slices, and the column sums of A
    at = rng.standard_normal((m, n)).astype(dtype)
    bt = rng.standard_normal((m, k)).astype(dtype)
    ct, colsum = parallel.matmul_tn(at, bt, colsum=True)
    np.testing.assert_allclose(ct, at.T @ bt, rtol=tol, atol=tol)
    np.testing.assert_allclose(colsum, at.sum(axis=0), rtol=tol, atol=tol)
    np.testing.assert_allclose(parallel.matmul_tn(at, bt), at.T @ bt, rtol=tol, atol=tol)


def test_linear_on_threads_equals_one_thread(split_products, monkeypatch):
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((3, 50, 20)), rng.standard_normal((30, 20)), rng.standard_normal(30)
    y, cache = F.linear_forward(x, w, b)
    dy = rng.standard_normal(y.shape)
    grads = F.linear_backward(dy, cache)
    monkeypatch.setattr(parallel, "_blas_single", False)  # now one plain np.dot each
    assert parallel.num_threads() == 1
    y1, cache1 = F.linear_forward(x, w, b)
    np.testing.assert_allclose(y, y1, rtol=1e-14, atol=1e-14)
    for g, g1 in zip(grads, F.linear_backward(dy, cache1)):
        np.testing.assert_allclose(g, g1, rtol=1e-13, atol=1e-13)


def test_parallel_for_calls_each_index_once_and_raises():
    seen = []
    parallel.parallel_for(seen.append, 50, threads=2)
    assert sorted(seen) == list(range(50))

    def fail(i):
        if i == 7:
            raise ValueError("seven")

    with pytest.raises(ValueError, match="seven"):
        parallel.parallel_for(fail, 20, threads=2)
    parallel.parallel_for(seen.append, 0, threads=2)  # nothing to do is fine


def test_blas_thread_count_is_read_from_the_environment(monkeypatch):
    for env, single in [({"OPENBLAS_NUM_THREADS": "1"}, True), ({"OPENBLAS_NUM_THREADS": "2"}, False),
                        ({"OMP_NUM_THREADS": "1"}, True), ({}, False)]:
        for var in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"):
            monkeypatch.delenv(var, raising=False)
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        monkeypatch.setattr(parallel, "_blas_single", None)
        assert parallel._blas_is_single_threaded() is single
    monkeypatch.setattr(parallel, "_blas_single", None)  # read again by the next caller
