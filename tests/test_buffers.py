"""refsparse.kernels.buffers: aligned memory for the kernels, and the recycler that reuses
large blocks only once no array uses them."""

import gc

import numpy as np
import pytest

from refsparse.kernels import buffers
from refsparse.kernels.buffers import RECYCLE_BYTES, aligned_empty, release_buffers, set_recycling
from refsparse.kernels.simd import CACHE_LINE

BIG = (RECYCLE_BYTES // 4 // 256, 256)  # float32 rows: a block the recycler serves


@pytest.fixture(autouse=True)
def fresh_recycler():
    """Each test starts and ends with an empty recycler, switched on."""
    set_recycling(False)
    set_recycling(True)
    yield
    set_recycling(False)
    set_recycling(True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.uint8])
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 33, 17), (4, 0, 3), 13, BIG])
@pytest.mark.parametrize("align", [CACHE_LINE, 256, 4096])
def test_aligned_empty_is_an_aligned_writable_c_array(dtype, shape, align):
    """Small and recycled (BIG) alike."""
    a = aligned_empty(shape, dtype, align)
    expected = (shape,) if isinstance(shape, int) else shape
    assert a.shape == expected and a.dtype == np.dtype(dtype)
    assert a.flags.c_contiguous and a.flags.writeable
    if a.size:
        assert a.ctypes.data % align == 0
    a[...] = 3  # every number is ours to write, and reads back
    assert np.all(a == 3)
    b = aligned_empty(shape, dtype, align)  # a second one does not share the first's memory
    b[...] = 5
    assert np.all(a == 3)


def test_aligned_empty_of_many_sizes_all_start_on_a_line():
    """Small arrays come from malloc's heap at 16-byte steps; each of ours starts on a line."""
    offsets = {aligned_empty((n,), np.float32).ctypes.data % CACHE_LINE for n in range(1, 200)}
    assert offsets == {0}


def test_a_block_in_use_is_never_handed_out_again():
    """While an output, or any view of it, is alive, its memory is not given to another."""
    a = aligned_empty(BIG, np.float32)
    a[...] = 1.0
    b = aligned_empty(BIG, np.float32)
    assert not np.shares_memory(a, b)
    view = a[5:, ::2]  # only a view of a kept
    del a
    c = aligned_empty(BIG, np.float32)
    c[...] = 2.0
    assert not np.shares_memory(view, c) and not np.shares_memory(b, c)
    assert np.all(view == 1.0)
    flat = view.reshape(-1) if view.flags.c_contiguous else view.ravel()
    del view, flat, b, c
    gc.collect()


def test_an_idle_block_is_reused_for_the_same_size():
    """Once the last array made from a block is gone, the next request of the same number
    of bytes gets the same memory (any shape or dtype); another size gets other memory."""
    a = aligned_empty(BIG, np.float32)
    address = a.ctypes.data
    view = a.T
    del a
    assert aligned_empty(BIG, np.float32).ctypes.data != address  # view still holds it
    del view
    same = aligned_empty((BIG[0] // 2, BIG[1]), np.float64)  # the same bytes, another dtype
    assert same.ctypes.data == address
    other = aligned_empty((BIG[0] + 1, BIG[1]), np.float32)
    assert not np.shares_memory(same, other)


def test_every_block_in_use_stays_tracked_and_comes_back():
    """More blocks alive at once than any fixed count (an earlier version forgot the oldest
    beyond 64): once they are dropped, the same memory serves the next round of requests."""
    n = 80
    live = [aligned_empty(BIG, np.float32) for _ in range(n)]
    assert len(buffers._recycler._blocks) == n
    addresses = {a.ctypes.data for a in live}
    assert len(addresses) == n  # all distinct while alive
    del live
    again = [aligned_empty(BIG, np.float32) for _ in range(n)]
    assert {a.ctypes.data for a in again} == addresses
    del again
    release_buffers()  # every tracked block is idle now, and dropped
    assert buffers._recycler._blocks == []


def test_release_keeps_blocks_in_use():
    a = aligned_empty(BIG, np.float32)
    b = aligned_empty(BIG, np.float32)
    del b
    release_buffers()
    assert len(buffers._recycler._blocks) == 1
    c = aligned_empty(BIG, np.float32)
    assert not np.shares_memory(a, c)


def test_switched_off_every_block_is_fresh():
    assert set_recycling(False) is True
    a = aligned_empty(BIG, np.float32)
    assert buffers._recycler._blocks == []
    del a
    assert set_recycling(True) is False


def test_idle_blocks_beyond_the_byte_cap_are_dropped_oldest_first(monkeypatch):
    """With room for two idle blocks, a third size's block drops the oldest idle one."""
    monkeypatch.setattr(buffers, "RECYCLE_IDLE_BYTES", 2 * (RECYCLE_BYTES + 2 * CACHE_LINE))
    sizes = [(BIG[0] + k, BIG[1]) for k in range(3)]
    first = aligned_empty(sizes[0], np.float32)
    second = aligned_empty(sizes[1], np.float32)
    del first, second  # both idle, within the cap
    third = aligned_empty(sizes[2], np.float32)  # now the idle ones exceed it: the oldest goes
    kept = sorted(b.size for b in buffers._recycler._blocks)
    second_bytes = 4 * sizes[1][0] * sizes[1][1] + CACHE_LINE  # a block holds the align bytes of slack too
    assert kept == sorted([second_bytes, third.nbytes + CACHE_LINE])
