"""Check the float32 softmax exp against the correctly rounded exp at EVERY float32 argument.

    python scripts/check_exp_f32.py

refsparse.kernels.activations.exp_softmax, compiled as the attention kernels compile it
(fastmath "reassoc" and "contract"), is evaluated at each of the ~2.1e9 float32 numbers a in
[−104, 0.01] — the softmax's range, a = s − max <= 0 and a hair above from rounding — and
compared with exp(a) computed in float64 and rounded once to float32, which is the correctly
rounded float32 value unless exp(a) lies within 2^-29 relative of a rounding boundary. Prints
the largest distance in ulps (units in the last place: steps between neighbouring float32
numbers) and where it occurs. About a minute on one core. The test suite checks a sample
of the whole range, every 97th float32 down to −inf (tests/test_kernels_approximations.py).
"""

from __future__ import annotations

import time

import numba
import numpy as np

from refsparse.kernels.activations import exp_softmax


@numba.njit(fastmath={"reassoc", "contract"})
def _apply(a, out):
    for i in range(a.size):
        out[i] = exp_softmax(a[i])


def _worst_in(bits):
    """Largest ulp distance over the float32 numbers with these bit patterns."""
    a = bits.view(np.float32)
    out = np.empty_like(a)
    _apply(a, out)
    ref = np.exp(a.astype(np.float64)).astype(np.float32)
    ulps = np.abs(out.view(np.int32).astype(np.int64) - ref.view(np.int32).astype(np.int64))
    k = int(ulps.argmax())
    return int(ulps[k]), float(a[k])


def main():
    chunk = 1 << 24
    worst, where = 0, 0.0
    start = time.perf_counter()
    # non-negative a: bit patterns 0 … bits(0.01); negative a: bits(−0.0) … bits(−104), as uint32
    ranges = [(0, int(np.float32(0.01).view(np.uint32))),
              (0x80000000, int(np.float32(-104.0).view(np.uint32)))]
    n = 0
    for lo, hi in ranges:
        for s in range(lo, hi + 1, chunk):
            bits = np.arange(s, min(s + chunk, hi + 1), dtype=np.uint32)
            n += bits.size
            u, a = _worst_in(bits)
            if u > worst:
                worst, where = u, a
    print(f"{n:,} float32 arguments in [-104, 0.01]: largest error {worst} ulp (at a = {where!r}), "
          f"{time.perf_counter() - start:.0f} s")
    if worst > 1:
        raise SystemExit("exp_softmax is more than one ulp from the correctly rounded exp")


if __name__ == "__main__":
    main()
