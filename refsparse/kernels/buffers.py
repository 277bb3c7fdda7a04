"""Memory for the kernels' outputs and scratch: aligned, and large blocks reused.

Two functions and a switch:

    aligned_empty(shape, dtype)   np.empty whose first number starts on a cache line;
                                  blocks of RECYCLE_BYTES or more come from the recycler
    release_buffers()             hand every idle block back to the system now
    set_recycling(on)             turn the recycler on (the default) or off; returns the
                                  previous setting

**Why aligned.** NumPy's arrays are only 16-byte aligned (malloc's promise; a large array
sits 16 bytes into its pages), so a vector of 64 bytes loaded from one straddles two cache
lines three times in four, and a 256-byte vector touches five lines instead of four. The
kernels' scratch buffers and the outputs they write have rows of whole multiples of 64
bytes, so a 64-byte start puts every row, and every vector at a multiple of L, on line
boundaries. Measured on the AVX-512 Xeon (SparseLinear dX alone, 512 × 2048, 80%,
float32, 2 threads, the same code with six allocations of its scratch): 20.9 ms when the
buffers it streams through started on a line, 28–30.6 ms when they did not.

**Why large blocks are reused.** glibc's malloc serves a block of 32 MiB or more with a
fresh ``mmap`` and gives it back to the system (``munmap``) when it is freed, however
often a block of that size is asked for again. The first write to each page of a fresh
mapping is a page fault, in which the kernel finds a page and fills it with zeros before
the kernel here writes its numbers. A sparse product writes its output once and does
little else, so the faults can cost more than the product: SparseLinear's dX of 4096 ×
2048 float32 (32 MiB) at 99% sparsity took 13.0 ms into fresh memory and 5.0 ms into
memory it had written before (alternating in one process, 2 threads); NumPy alone, a
fresh 32 MiB written once from two threads, took 6.7 ms against 3.7 ms. (Below 32 MiB
glibc keeps freed blocks in its heap and reuses them, which is why outputs of 8 MiB did
not show the cost.)

The recycler keeps the blocks of RECYCLE_BYTES or more that it has handed out. A block is
*idle* when no array uses it any more: every array made from it — the one returned, its
reshapes, slices and other views — holds a reference to it, and CPython counts them, so the
block's reference count falls to the recycler's own references exactly when the last of them
is gone. The next request of the same number of bytes gets an idle block back (its old
contents are still there, as ``np.empty`` promises nothing), and a block in use is never
handed out twice. An array kept alive by a reference cycle only keeps its block busy until
the garbage collector frees it. Beyond RECYCLE_IDLE_BYTES in idle blocks, the oldest idle
ones are dropped (freed as NumPy frees any array) when a new block is made.

**Every block in use stays tracked.** A training step keeps many large arrays alive from
forward to backward — a 4-layer model with d_ff 2048 and 4096 tokens holds each layer's
feed-forward input to GELU, its output and its gate, 32 MiB each, and a dozen more of 4 MiB
or more per layer — and a recycler that forgets a block in use cannot give it back when the
step ends: the next step faults in fresh memory for it. An earlier version tracked at most
16 blocks, then 64, and forgot the oldest beyond that. Measured at that shape (4 layers,
d_model 512, d_ff 2048, T 1024, batch 4, 90% sparse, window 128, float32, 2 threads): GELU's
forward took 32 ms a call with 16 blocks and 18 ms with 64, its backward 23 and 9 ms
(tottime over 3 steps under cProfile; the kernel alone, into memory written before, takes
16–18 and 8–9 ms), about 0.1 s of a 1.2 s step; any count would have been such a cliff for
a model deep enough. So there is no count: the blocks in use are what the program holds
(the memory is the program's either way), and the idle ones are bounded in bytes, at most
RECYCLE_IDLE_BYTES / RECYCLE_BYTES = 128 of them. The cost: a walk over the tracked blocks per
request of 4 MiB or more, one reference count each (a few microseconds).

Numbers never depend on where the memory came from: every kernel writes every element of
its outputs before anyone reads them, and its scratch before it reads it.

**What it gives end to end** (the bar for keeping it: 5% of a training step). One AdamW
step of a decoder-only LM — 4 layers, d_model 256, 4 heads, d_ff 1024, T 256, batch 16,
weights 90% sparse, causal local attention of window 32, float32 — timed with the
recycler on and off in 15 interleaved pairs in one process (each timed step after one
untimed step in the same setting): median 9.05 s on, 10.16 s off (1.12×), median of the
paired ratios 1.22×. Measured on a 2-core AMD EPYC shared with other jobs (load average
about 10), hence the slow steps: the ratio is rough, but well above the bar.
"""

from __future__ import annotations

import math
import sys
import threading

import numpy as np

from .simd import CACHE_LINE

__all__ = ["RECYCLE_BYTES", "RECYCLE_IDLE_BYTES", "aligned_empty", "release_buffers", "set_recycling"]

RECYCLE_BYTES = 4 << 20  # blocks at least this large (4 MiB) go through the recycler
RECYCLE_IDLE_BYTES = 512 << 20  # the most the idle blocks may hold together (512 MiB)


class _Recycler:
    """Raw byte blocks (uint8 arrays) handed out by [`aligned_empty`][refsparse.kernels.buffers.aligned_empty], oldest first."""

    def __init__(self):
        self.on = True
        self._blocks = []  # list of (nbytes,) uint8 arrays, oldest first
        self._lock = threading.Lock()
        probe = [np.empty(1, np.uint8)]
        self._idle_refs = self._refs(probe, 0)  # the count of a block nobody else holds

    @staticmethod
    def _refs(blocks, k):
        """Reference count of blocks[k], counted the same way for the probe and for every
        check (the list's slot plus this call's own temporaries)."""
        return sys.getrefcount(blocks[k])

    def _idle(self, k):
        return self._refs(self._blocks, k) == self._idle_refs

    def take(self, nbytes):
        """A (nbytes,) uint8 block: an idle one of exactly that size, or a new one."""
        with self._lock:
            for k in range(len(self._blocks)):
                if self._blocks[k].size == nbytes and self._idle(k):
                    block = self._blocks.pop(k)
                    self._blocks.append(block)  # now the most recently used
                    return block
            block = np.empty(nbytes, dtype=np.uint8)
            self._blocks.append(block)
            idle = [k for k in range(len(self._blocks) - 1) if self._idle(k)]  # oldest first
            held = sum(self._blocks[k].size for k in idle)
            drop = set()
            for k in idle:  # the oldest idle blocks go first, while they hold too much
                if held <= RECYCLE_IDLE_BYTES:
                    break
                drop.add(k)
                held -= self._blocks[k].size
            if drop:
                self._blocks = [self._blocks[k] for k in range(len(self._blocks)) if k not in drop]
            return block

    def release(self):
        """Drop every idle block (blocks in use stay tracked)."""
        with self._lock:
            busy = [k for k in range(len(self._blocks)) if not self._idle(k)]  # no block held while counting
            self._blocks = [self._blocks[k] for k in busy]

    def clear(self):
        with self._lock:
            self._blocks = []


_recycler = _Recycler()


def set_recycling(on):
    """Turn the reuse of large blocks on or off; returns the previous setting. Turning it
    off forgets every block (those in use are freed when their users drop them)."""
    previous = _recycler.on
    _recycler.on = bool(on)
    if not on:
        _recycler.clear()
    return previous


def release_buffers():
    """Free the idle blocks the recycler keeps (for a long pause between uses, or before
    measuring memory). Blocks in use stay tracked and are reused once idle."""
    _recycler.release()


def aligned_empty(shape, dtype, align=CACHE_LINE):
    """``np.empty(shape, dtype)`` whose first number starts on an ``align``-byte boundary.

    Blocks of RECYCLE_BYTES or more (with the ``align`` bytes of slack) come from the
    recycler, which hands back memory that no array uses any more (see the module's
    docstring); smaller ones are fresh NumPy allocations. Either way the contents are
    undefined, and the array shares its memory with no other live array.
    """
    dtype = np.dtype(dtype)
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(n) for n in shape)
    nbytes = math.prod(shape) * dtype.itemsize
    if _recycler.on and nbytes + align >= RECYCLE_BYTES:
        raw = _recycler.take(nbytes + align)  # (nbytes + align,) bytes
    else:
        raw = np.empty(nbytes + align, dtype=np.uint8)
    skip = -raw.ctypes.data % align  # bytes before the first aligned address
    return raw[skip : skip + nbytes].view(dtype).reshape(shape)
