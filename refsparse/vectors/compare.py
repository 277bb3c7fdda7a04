"""Comparison: a candidate's tensors against a reference's, tensor by tensor, by name.

The other half of the golden vectors: refsparse exports float64 inputs, outputs and
gradients to a safetensors file; you run your own kernel on the inputs, save what it
computes under the same names, and compare::

    from refsparse.validate import compare
    report = compare("layernorm.safetensors", "mine.safetensors")
    print(report)          # one row per tensor: shape, dtype, max abs / rel error, max ULP
    assert report.ok

or on the command line, ``refsparse vectors check REFERENCE CANDIDATE`` (exit status 1 on a
failure, so another project's CI can call it).

What is measured, for each tensor present in the reference (``r``) and the candidate (``c``):

- max abs error  ``max |c − r|``;
- max rel error  ``max |c − r| / |r|`` (an entry with ``r = 0`` and ``c ≠ 0`` gives ``inf``,
  as in ``numpy.testing``);
- max ULP distance: how many representable numbers of the dtype lie between ``c`` and ``r``,
  counted exactly on the integer bit patterns (``+0`` and ``−0`` are 0 apart, the largest
  finite number and ``inf`` are 1 apart);
- pass when every entry satisfies ``|c − r| <= atol + rtol·|r|`` (``numpy.isclose``; the same
  NaN or the same infinity on both sides counts as equal) **and**, when ``max_ulp`` is given,
  the max ULP distance is at most ``max_ulp``. Integer and boolean tensors must be equal.

A NaN or an infinity equals only itself, whatever the tolerances. A tensor missing from
the candidate, or of another shape or dtype, fails with a status line saying so; a tensor
only in the candidate is listed as ``extra`` and does not fail the comparison. Nothing here
raises on a mismatch — only on a file that cannot be read, or when nothing would be compared.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field

import numpy as np

from .files import as_tensors

__all__ = ["Report", "TensorResult", "compare", "default_tolerances", "ulp_distance"]

# torch.testing.assert_close's defaults, which users of that ecosystem already know
_DEFAULT_TOL = {
    np.dtype(np.float64): (1e-7, 1e-7),
    np.dtype(np.float32): (1.3e-6, 1e-5),
    np.dtype(np.float16): (1e-3, 1e-5),
}


def default_tolerances(dtype):
    """(rtol, atol) used when none are given: torch.testing.assert_close's for the dtype.

    float64: (1e-7, 1e-7), float32: (1.3e-6, 1e-5), float16: (1e-3, 1e-5); (0, 0) for
    integer and boolean dtypes, which must match exactly.
    """
    return _DEFAULT_TOL.get(np.dtype(dtype), (0.0, 0.0))


# ----------------------------------------------------------------------------------------
# the measures


_INT_OF = {2: (np.int16, np.uint16), 4: (np.int32, np.uint32), 8: (np.int64, np.uint64)}


def _ordered(x):
    """Bit patterns mapped to signed integers that increase with the float's value.

    IEEE floats are sign-magnitude: a non-negative float's bits, read as a signed integer,
    already increase with its value; a negative float's bits are the sign bit plus the
    magnitude, so it maps to −magnitude (−0.0 maps to 0, the same as +0.0).
    """
    signed, _ = _INT_OF[x.dtype.itemsize]
    bits = np.ascontiguousarray(x).view(signed)
    magnitude = bits & signed(np.iinfo(signed).max)  # the bits without the sign
    return np.where(bits < 0, -magnitude, bits)


def ulp_distance(a, b):
    """Entry-wise number of representable floats between ``a`` and ``b`` (same float dtype).

    Counted on the integer views of the bits (float32 → int32, float64 → int64), so it is
    exact: adjacent floats (``np.nextafter``) are 1 apart, ``+0`` and ``−0`` are 0 apart,
    the two sides of zero add up (the smallest subnormals ±5e-324 are 2 apart), and the
    largest finite float is 1 from ``inf``. Returns a uint64 array; an entry where
    exactly one side is NaN (or the two are NaNs of different bits) gives 2**64 − 1, both
    sides NaN give 0.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.dtype.kind != "f" or a.dtype.itemsize not in _INT_OF:
        raise TypeError(f"a, b: expected two arrays of one float dtype (float16/32/64), "
                        f"got {a.dtype} and {b.dtype}")
    a, b = np.broadcast_arrays(a, b)
    _, unsigned = _INT_OF[a.dtype.itemsize]
    oa, ob = _ordered(a), _ordered(b)
    # |oa − ob| can exceed the signed range (e.g. −max to +max): subtract in the unsigned type,
    # larger minus smaller, where the wrap-around gives the exact difference
    ua, ub = oa.view(unsigned), ob.view(unsigned)
    d = np.where(oa >= ob, ua - ub, ub - ua).astype(np.uint64)
    na, nb = np.isnan(a), np.isnan(b)
    d[na != nb] = np.iinfo(np.uint64).max
    d[na & nb] = 0
    return d


@dataclass
class TensorResult:
    """One row of a [`Report`][refsparse.vectors.compare.Report].

    ``status`` is one of "ok", "FAIL" (values out of tolerance), "missing" (in the reference
    only), "extra" (in the candidate only), "shape" or "dtype" (a mismatch). The error fields
    are None when they were not measured (a mismatch, an integer tensor's ULPs, an empty
    tensor's errors are 0).
    """

    name: str
    shape: tuple | None
    dtype: str | None
    status: str
    passed: bool
    max_abs: float | None = None
    max_rel: float | None = None
    max_ulp: int | float | None = None
    message: str = ""


def _fmt_float(v):
    if v is None:
        return "-"
    if isinstance(v, float) and (math.isinf(v) or math.isnan(v)):
        return str(v)
    return f"{v:.3e}"


def _fmt_ulp(v):
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return str(int(v)) if v < 1e6 else f"{float(v):.1e}"  # huge counts: signs differ, or values near 0


@dataclass
class Report:
    """The result of [`compare`][refsparse.vectors.compare.compare]: one [`TensorResult`][refsparse.vectors.compare.TensorResult] per tensor, and the verdict.

    ``ok`` is True when every compared tensor passed (extra tensors do not count).
    ``str(report)`` is a table; ``report[name]`` is one row; ``report.failures`` the failed rows.
    """

    results: list = field(default_factory=list)
    rtol: float | None = None  # as given to compare; None = the dtype's default
    atol: float | None = None
    max_ulp: int | None = None
    note: str = ""  # how the tolerances were set, when not one rtol/atol for all (check_lm)

    @property
    def ok(self) -> bool:
        """True when every tensor of the reference that was compared passed."""
        return all(r.passed for r in self.results)

    @property
    def failures(self):
        """The rows that did not pass."""
        return [r for r in self.results if not r.passed]

    def __getitem__(self, name):
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def __contains__(self, name):
        return any(r.name == name for r in self.results)

    def __bool__(self):
        return self.ok

    def table(self) -> str:
        """The report as a fixed-width text table, then one line per problem and the verdict."""
        head = ("tensor", "shape", "dtype", "max abs err", "max rel err", "max ULP", "result")
        rows = []
        for r in self.results:
            shape = "-" if r.shape is None else str(tuple(int(s) for s in r.shape))
            result = {"ok": "pass", "FAIL": "FAIL"}.get(r.status, r.status if r.passed else "FAIL")
            if r.status in ("missing", "shape", "dtype"):
                result = f"FAIL ({r.status})"
            elif r.status == "extra":
                result = "extra"
            rows.append((r.name, shape, r.dtype or "-", _fmt_float(r.max_abs), _fmt_float(r.max_rel),
                         _fmt_ulp(r.max_ulp), result))
        widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
                  for i, h in enumerate(head)]

        def line(cells):
            return "  ".join(c.ljust(w) if i < 3 or i == 6 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        out = [line(head), line(tuple("-" * w for w in widths))]
        out += [line(row) for row in rows]
        notes = [f"{r.name}: {r.message}" for r in self.results if r.message]
        if notes:
            out.append("")
            out += notes
        tol = [f"rtol={'per dtype' if self.rtol is None else format(self.rtol, 'g')}",
               f"atol={'per dtype' if self.atol is None else format(self.atol, 'g')}"]
        if self.max_ulp is not None:
            tol.append(f"max_ulp={self.max_ulp}")
        n_fail = len(self.failures)
        compared = sum(r.status != "extra" for r in self.results)
        verdict = "OK" if self.ok else "FAILED"
        out.append("")
        if self.note:
            out.append(f"{verdict}: {compared - n_fail} of {compared} tensors pass ({self.note})")
        else:
            out.append(f"{verdict}: {compared - n_fail} of {compared} tensors pass ({', '.join(tol)}; "
                       "per dtype = float64 1e-7, 1e-7; float32 1.3e-6, 1e-5)")
        return "\n".join(out)

    def __str__(self):
        return self.table()


def _worst(err, ref, cand):
    """'worst at (i, j): reference r, candidate c' for the entry of largest error."""
    flat = int(np.nanargmax(err)) if not np.all(np.isnan(err)) else 0
    idx = np.unravel_index(flat, ref.shape) if ref.ndim else ()
    where = str(tuple(int(i) for i in idx))
    return f"worst at {where}: reference {ref[idx].item()!r}, candidate {cand[idx].item()!r}"


def _compare_one(name, ref, cand, rtol, atol, max_ulp):
    shape, dtype = tuple(ref.shape), str(ref.dtype)
    if cand.dtype != ref.dtype:
        return TensorResult(name, shape, dtype, "dtype", False,
                            message=f"dtype mismatch: reference {ref.dtype}, candidate {cand.dtype}")
    if tuple(cand.shape) != shape:
        return TensorResult(name, shape, dtype, "shape", False,
                            message=f"shape mismatch: reference {shape}, candidate {tuple(cand.shape)}")
    if ref.size == 0:
        return TensorResult(name, shape, dtype, "ok", True, 0.0, 0.0,
                            0 if ref.dtype.kind == "f" else None)
    if ref.dtype.kind not in "fiub":  # complex, strings, ...: equal or not
        ok = bool(np.array_equal(ref, cand))
        return TensorResult(name, shape, dtype, "ok" if ok else "FAIL", ok,
                            message="" if ok else "values differ (compared for equality only)")
    if ref.dtype.kind != "f":  # integers and booleans (ids, masks, CSR indices): exact
        r64, c64 = ref.astype(np.int64), cand.astype(np.int64)
        diff = np.abs(c64 - r64)
        max_abs = float(diff.max())
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(diff == 0, 0.0, diff / np.abs(r64))
        ok = max_abs == 0
        msg = "" if ok else f"{int(np.count_nonzero(diff))} of {ref.size} entries differ; " + \
            _worst(diff, ref, cand)
        return TensorResult(name, shape, dtype, "ok" if ok else "FAIL", ok, max_abs, float(rel.max()),
                            None, msg)

    r_rtol, r_atol = default_tolerances(ref.dtype)
    rtol = r_rtol if rtol is None else rtol
    atol = r_atol if atol is None else atol
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        same = (ref == cand) | (np.isnan(ref) & np.isnan(cand))  # equal infinities, NaN with NaN
        err = np.where(same, 0.0, np.abs(cand.astype(np.float64) - ref.astype(np.float64)))
        err = np.where(np.isnan(err), np.inf, err)  # a NaN on one side only
        rel = np.where(err == 0, 0.0, err / np.abs(ref.astype(np.float64)))
        # a NaN or an infinity equals only itself (``same``), whatever the tolerances: with
        # rtol = atol = inf the bound below would otherwise pass a NaN against a number
        finite = np.isfinite(ref) & np.isfinite(cand)
        close = same | (finite & (err <= atol + rtol * np.abs(ref.astype(np.float64))))
    ulp = ulp_distance(ref, cand)
    max_ulp_seen = int(ulp.max())
    ulp_value = float("inf") if max_ulp_seen == np.iinfo(np.uint64).max else max_ulp_seen
    ok = bool(close.all()) and (max_ulp is None or ulp_value <= max_ulp)
    msg = ""
    if not ok:
        bad = int(np.count_nonzero(~close)) if not close.all() else int(np.count_nonzero(ulp > max_ulp))
        why = "out of rtol/atol" if not close.all() else f"more than {max_ulp} ULP apart"
        worst = ulp.astype(np.float64) if close.all() else err
        msg = f"{bad} of {ref.size} entries {why}; " + _worst(worst, ref, cand)
    return TensorResult(name, shape, dtype, "ok" if ok else "FAIL", ok, float(err.max()),
                        float(rel.max()), ulp_value, msg)


def _order_key(name):
    """inputs, parameters, the upstream gradient, outputs, gradients; by name within each."""
    for rank, prefix in enumerate(("input.", "param.", "grad_output", "output", "grad.")):
        if name.startswith(prefix):
            return (rank, name)
    return (5, name)


def compare(reference, candidate, rtol=None, atol=None, max_ulp=None, *, only=None):
    """Compare ``candidate`` with ``reference`` tensor by tensor; never raises on a mismatch.

    Parameters
    ----------
    reference, candidate : path to a safetensors file, or dict name → array
    rtol, atol : float or None
        Entry-wise ``|c − r| <= atol + rtol·|r|``. None: torch.testing.assert_close's
        defaults for the reference tensor's dtype ([`default_tolerances`][refsparse.vectors.compare.default_tolerances]). Give
        ``rtol=0, atol=0`` for bit-exact values.
    max_ulp : int or None
        If given, also require every entry within this many ULPs (``0``: bit for bit,
        with ``+0 == −0``).
    only : iterable of glob patterns, optional
        Compare only the reference tensors whose names match one of them (e.g.
        ``["output", "grad.*"]`` for a candidate that holds only what it computed).

    Returns
    -------
    Report
        ``report.ok``; ``print(report)`` gives the table.

    Raises FileNotFoundError / ValueError only for a file that cannot be read, and
    ValueError when nothing would be compared (an empty reference, or ``only`` matching
    none of its tensors).
    """
    for name, v in (("rtol", rtol), ("atol", atol)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float, np.floating))
                              or not v >= 0):
            raise ValueError(f"{name}: expected a number >= 0 or None, got {v!r}")
    if max_ulp is not None and (isinstance(max_ulp, bool) or not isinstance(max_ulp, (int, np.integer))
                                or max_ulp < 0):
        raise ValueError(f"max_ulp: expected an int >= 0 or None, got {max_ulp!r}")
    if isinstance(only, str):
        only = [only]
    ref = as_tensors(reference, "reference")
    cand = as_tensors(candidate, "candidate")

    def wanted(name):
        return only is None or any(fnmatch.fnmatchcase(name, pat) for pat in only)

    if not any(wanted(n) for n in ref):  # "0 of 0 tensors pass" would read as a pass
        if only is None:
            raise ValueError("reference: holds no tensors: nothing to compare")
        raise ValueError(f"only: no reference tensor matches {', '.join(only)}: nothing to compare; "
                         f"the reference holds {', '.join(sorted(ref, key=_order_key)[:8])}"
                         + (", ..." if len(ref) > 8 else ""))

    results = []
    for name in sorted((n for n in ref if wanted(n)), key=_order_key):
        r = ref[name]
        if name not in cand:
            results.append(TensorResult(name, tuple(r.shape), str(r.dtype), "missing", False,
                                        message="missing from the candidate"))
            continue
        results.append(_compare_one(name, r, np.asarray(cand[name]), rtol, atol, max_ulp))
    for name in sorted((n for n in cand if n not in ref and wanted(n)), key=_order_key):
        c = np.asarray(cand[name])
        results.append(TensorResult(name, tuple(c.shape), str(c.dtype), "extra", True,
                                    message="only in the candidate (not compared)"))
    return Report(results, None if rtol is None else float(rtol), None if atol is None else float(atol),
                  max_ulp)
