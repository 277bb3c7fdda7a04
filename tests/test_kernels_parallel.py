"""The split matrix products and the thread loop (refsparse.kernels.parallel, the fast
path) against the reference kernels (refsparse.kernels.reference.matmul: plain ``@``)."""

import numpy as np
import pytest

from refsparse import functional as F
from refsparse import kernels
from refsparse.kernels import parallel
from refsparse.kernels.reference import matmul as ref


@pytest.fixture
def split_products(monkeypatch):
    """Split over 2 threads whatever the environment says, down to small products, on the
    fast path."""
    monkeypatch.setattr(parallel, "_blas_single", True)
    monkeypatch.setattr(parallel, "MIN_FLOPS", 1)
    monkeypatch.setattr(parallel.numba, "get_num_threads", lambda: 2)
    with kernels.use("fast"):
        assert parallel.num_threads() == 2
        yield


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,k,n", [(4, 3, 5), (101, 17, 33), (7, 64, 1)])
def test_matmul_pieces_equal_np_dot(split_products, dtype, m, k, n):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((n, k)).astype(dtype).T  # a transposed view, as linear passes Wᵀ
    c = parallel.matmul(a, b)
    assert c.dtype == dtype and c.flags.c_contiguous
    tol = 1e-13 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(c, ref.matmul(a, b), rtol=tol, atol=tol)
    bias = rng.standard_normal(n).astype(dtype)
    np.testing.assert_allclose(parallel.matmul(a, b, bias), ref.matmul(a, b, bias), rtol=tol, atol=tol)
    out = np.empty((m, n), dtype=dtype)
    assert parallel.matmul(a, b, bias, out=out) is out
    np.testing.assert_allclose(out, ref.matmul(a, b, bias), rtol=tol, atol=tol)
    # Aᵀ B with the summed axis in slices, and the column sums of A
    at = rng.standard_normal((m, n)).astype(dtype)
    bt = rng.standard_normal((m, k)).astype(dtype)
    ct, colsum = parallel.matmul_tn(at, bt, colsum=True)
    ref_ct, ref_colsum = ref.matmul_tn(at, bt, colsum=True)
    np.testing.assert_allclose(ct, ref_ct, rtol=tol, atol=tol)
    np.testing.assert_allclose(colsum, ref_colsum, rtol=tol, atol=tol)
    np.testing.assert_allclose(parallel.matmul_tn(at, bt), ref_ct, rtol=tol, atol=tol)
    # the reference against a product written out
    np.testing.assert_allclose(ref_ct, [[sum(at[r, i] * bt[r, j] for r in range(m)) for j in range(k)]
                                        for i in range(n)], rtol=tol, atol=tol)


@pytest.mark.parametrize("path", ["fast", "reference"])
def test_matmul_each_equals_one_product_per_matrix(path):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 5, 2 * 4))
    q = x.reshape(3, 5, 2, 4).transpose(0, 2, 1, 3)  # (3, 2, 5, 4): the heads, a strided view
    out = np.empty((3, 2, 5, 5))
    with kernels.use(path):
        assert parallel.matmul_each(q, q.swapaxes(-1, -2), out) is out
    for i in range(3):
        for h in range(2):
            np.testing.assert_allclose(out[i, h], np.dot(q[i, h], q[i, h].T), rtol=1e-14, atol=1e-14)


def test_reference_path_is_one_thread(monkeypatch):
    monkeypatch.setattr(parallel, "_blas_single", True)
    monkeypatch.setattr(parallel.numba, "get_num_threads", lambda: 2)
    with kernels.use("reference"):
        assert parallel.num_threads() == 1
    with kernels.use("fast"):
        assert parallel.num_threads() == 2


def test_linear_on_threads_equals_one_thread(split_products, monkeypatch):
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((3, 50, 20)), rng.standard_normal((30, 20)), rng.standard_normal(30)
    y, cache = F.linear_forward(x, w, b)
    dy = rng.standard_normal(y.shape)
    grads = F.linear_backward(dy, cache)
    with kernels.use("reference"):  # one plain product each
        assert parallel.num_threads() == 1
        y1, cache1 = F.linear_forward(x, w, b)
        grads1 = F.linear_backward(dy, cache1)
    np.testing.assert_allclose(y, y1, rtol=1e-14, atol=1e-14)
    for g, g1 in zip(grads, grads1):
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
