"""Finite-difference gradient checking, public: check your own ops with it.

For a function ``y = f(x_1, …, x_n)`` and a *random* upstream gradient ``g`` (a random
``g`` finds bugs that ``g = 1`` hides, such as a transposed or summed-away axis), the
scalar

    L(x) = Σ g ⊙ f(x)

has ∂L/∂x_k = (the backward pass of f applied to g)_k. Each entry of ∂L/∂x_k is
estimated in float64 with the five-point central difference

    ∂L/∂x[i] ≈ (−L(x + 2h e_i) + 8 L(x + h e_i) − 8 L(x − h e_i) + L(x − 2h e_i)) / 12h,

whose truncation error is O(h⁴) and rounding error about ε·Σ|g ⊙ y| / h (ε = 2⁻⁵², float64's
machine epsilon);
h = 1e-5 makes both small enough to resolve a relative error of 1e-7 on ordinary
layers (the plain two-point difference, O(h²), cannot in deep stacks).

The error of a tensor is reported relative to its largest entry,

    rel = max_i |analytic_i − numeric_i| / max(max_i |numeric_i|, max_i |analytic_i|),

so an entry that is tiny beside its neighbours does not make a correct gradient fail.
A tensor passes when ``rel <= rtol``, or when its absolute error is below ``atol`` or
below the *resolution* of the finite difference itself (4 · u · Σ|g ⊙ y| / h):
a gradient that is exactly zero — the key bias of attention, for one, since softmax
ignores a constant added to a row of scores — leaves only rounding noise to compare.

Two entry points:

- [`check_op`][refsparse.gradcheck.check_op] for a functional pair ``forward(**inputs) -> (y, cache)`` and
  ``backward(dy, cache) -> grads``;
- [`check_module`][refsparse.gradcheck.check_module] for a [`refsparse.nn.Module`][refsparse.nn.module.Module]: the gradient of every
  float input and of every parameter (dense or sparse: the stored entries).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["TensorReport", "GradcheckReport", "check_op", "check_module", "numerical_gradient"]


@dataclass
class TensorReport:
    """The comparison of one tensor's analytic and numerical gradient."""

    name: str
    shape: tuple
    max_abs_err: float
    max_rel_err: float
    checked: int  # how many entries were differenced
    passed: bool


@dataclass
class GradcheckReport:
    """One [`TensorReport`][refsparse.gradcheck.TensorReport] per input and parameter; ``ok`` when all pass."""

    tensors: list = field(default_factory=list)
    rtol: float = 1e-7
    atol: float = 0.0

    @property
    def ok(self) -> bool:
        return all(t.passed for t in self.tensors)

    def __getitem__(self, name) -> TensorReport:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def __str__(self):
        lines = [
            f"{'tensor':<40} {'shape':<18} {'max abs err':>12} {'max rel err':>12}  result",
        ]
        lines.append(f"(rtol {self.rtol:g}; absolute errors below {self.atol:.2e} are the "
                     "finite difference's resolution and pass)")
        for t in self.tensors:
            lines.append(
                f"{t.name:<40} {str(t.shape):<18} {t.max_abs_err:12.3e} {t.max_rel_err:12.3e}  "
                f"{'ok' if t.passed else 'FAIL'}"
            )
        return "\n".join(lines)

    def raise_if_failed(self):
        """Raise AssertionError with the whole table when any tensor fails."""
        if not self.ok:
            raise AssertionError(
                f"gradcheck failed (rtol={self.rtol:g}, atol={self.atol:g}):\n{self}"
            )
        return self


def _weighted_sum(y, g):
    """L = Σ g ⊙ y, accumulated in float64; y may be a tuple of arrays."""
    if isinstance(y, tuple):
        return sum(_weighted_sum(a, b) for a, b in zip(y, g))
    return float(np.sum(np.asarray(y, dtype=np.float64) * g))


def _random_like(y, rng):
    if isinstance(y, tuple):
        return tuple(_random_like(a, rng) for a in y)
    return rng.standard_normal(np.shape(y))


def numerical_gradient(loss, x, *, eps=1e-5, indices=None):
    """Five-point central differences of the scalar ``loss()`` with respect to ``x``.

    ``x`` is perturbed in place and restored; ``loss`` must read it. ``indices`` (flat)
    restricts the entries differenced; the others are returned as NaN.
    """
    flat = x.reshape(-1)  # a view: x is contiguous
    if not np.shares_memory(flat, x):
        raise ValueError("x: expected a contiguous array (it is perturbed in place)")
    grad = np.full(x.size, np.nan)
    for i in range(x.size) if indices is None else indices:
        old = flat[i]
        values = []
        for step in (2.0, 1.0, -1.0, -2.0):
            flat[i] = old + step * eps
            values.append(loss())
        flat[i] = old
        p2, p1, m1, m2 = values
        grad[i] = (-p2 + 8.0 * p1 - 8.0 * m1 + m2) / (12.0 * eps)
    return grad.reshape(x.shape)


def _resolution(y, g, eps):
    """The smallest gradient error the finite difference can resolve (rounding in L)."""
    if isinstance(y, tuple):
        return sum(_resolution(a, b, eps) for a, b in zip(y, g))
    return 4 * np.finfo(np.float64).eps * float(np.sum(np.abs(np.asarray(y, np.float64) * g))) / eps


def _compare(name, analytic, numeric, rtol, atol, indices=None):
    analytic = np.zeros(numeric.shape) if analytic is None else np.asarray(analytic, dtype=np.float64)
    if analytic.shape != numeric.shape:
        raise ValueError(f"{name}: analytic gradient has shape {analytic.shape}, expected {numeric.shape}")
    a = analytic.reshape(-1)
    n = numeric.reshape(-1)
    if indices is not None:
        a, n = a[indices], n[indices]
    if a.size == 0:
        return TensorReport(name, numeric.shape, 0.0, 0.0, 0, True)
    abs_err = float(np.max(np.abs(a - n)))
    scale = max(float(np.max(np.abs(n))), float(np.max(np.abs(a))))
    rel_err = abs_err / scale if scale > 0 else 0.0
    passed = bool(np.all(np.isfinite(a))) and (rel_err <= rtol or abs_err <= atol)
    return TensorReport(name, numeric.shape, abs_err, rel_err, int(a.size), passed)


def _pick(size, max_entries, rng):
    if max_entries is None or size <= max_entries:
        return None
    return np.sort(rng.choice(size, size=max_entries, replace=False))


def check_op(forward, backward, inputs, *, wrt=None, kwargs=None, rng=None, eps=1e-5,
             rtol=1e-7, atol=0.0, max_entries=None):
    """Check a functional forward/backward pair by central differences in float64.

    Parameters
    ----------
    forward : callable
        ``forward(**inputs, **kwargs) -> (y, cache)``; ``y`` an array or a tuple of arrays.
    backward : callable
        ``backward(dy, cache)`` returning the gradients of the inputs named in ``wrt``,
        in that order (one array, or a tuple; ``None`` stands for a zero gradient).
    inputs : dict
        Name → array. The float64 arrays named in ``wrt`` are differenced.
    wrt : sequence of str, optional
        The inputs whose gradients ``backward`` returns; default: every float64 input.
    rng : numpy.random.Generator, optional
        Draws the upstream gradient (and the entries checked when ``max_entries`` is set).
    max_entries : int, optional
        Difference at most this many random entries per tensor (all by default).

    Returns
    -------
    GradcheckReport
    """
    rng = np.random.default_rng(0) if rng is None else rng
    kwargs = {} if kwargs is None else kwargs
    inputs = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in inputs.items()}
    if wrt is None:
        wrt = [k for k, v in inputs.items() if isinstance(v, np.ndarray) and v.dtype == np.float64]
    for k in wrt:
        v = inputs.get(k)
        if not isinstance(v, np.ndarray) or v.dtype != np.float64:
            raise TypeError(f"inputs[{k!r}]: expected a float64 ndarray to difference, got "
                            f"{type(v).__name__ if not isinstance(v, np.ndarray) else v.dtype}")
        inputs[k] = np.ascontiguousarray(v)

    y, cache = forward(**inputs, **kwargs)
    g = _random_like(y, rng)
    grads = backward(g, cache)
    if not isinstance(grads, tuple):
        grads = (grads,)
    if len(grads) != len(wrt):
        raise ValueError(f"backward returned {len(grads)} gradients for wrt={list(wrt)}")

    def loss():
        return _weighted_sum(forward(**inputs, **kwargs)[0], g)

    floor = max(atol, _resolution(y, g, eps))
    report = GradcheckReport(rtol=rtol, atol=floor)
    for name, analytic in zip(wrt, grads):
        x = inputs[name]
        idx = _pick(x.size, max_entries, rng)
        numeric = numerical_gradient(loss, x, eps=eps, indices=idx)
        report.tensors.append(_compare(name, analytic, numeric, rtol, floor, idx))
    return report


def check_module(module, *inputs, kwargs=None, rng=None, eps=1e-5, rtol=1e-7, atol=0.0,
                 max_entries=None, check_inputs=True):
    """Check a module's backward: every float input and every parameter.

    ``module.forward(*inputs, **kwargs)`` must be deterministic (put dropout in eval mode
    or set it to 0). ``module.backward(dy)`` must return the gradients of the positional
    inputs (one array, or a tuple aligned with ``inputs``; ``None`` for integer inputs)
    and accumulate parameter gradients into ``.grad``. Parameters must be float64.

    Returns a [`GradcheckReport`][refsparse.gradcheck.GradcheckReport] with one entry per float input (``input0``, …)
    and per parameter (by dotted name; a sparse weight is checked on its stored entries).
    """
    rng = np.random.default_rng(0) if rng is None else rng
    kwargs = {} if kwargs is None else kwargs
    inputs = [np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x for x in inputs]
    params = list(module.parameters())
    for name, p in params:
        if p.dtype != np.float64:
            raise TypeError(f"module parameter {name!r}: expected float64 for gradcheck, got {p.dtype}")

    y = module.forward(*inputs, **kwargs)
    g = _random_like(y, rng)
    module.zero_grad()
    dinputs = module.backward(g)
    if not isinstance(dinputs, tuple):
        dinputs = (dinputs,)
    analytic_params = {name: p.grad.copy() for name, p in params}

    def loss():
        return _weighted_sum(module.forward(*inputs, **kwargs), g)

    floor = max(atol, _resolution(y, g, eps))
    report = GradcheckReport(rtol=rtol, atol=floor)
    if check_inputs:
        for k, x in enumerate(inputs):
            if isinstance(x, np.ndarray) and x.dtype == np.float64:
                idx = _pick(x.size, max_entries, rng)
                numeric = numerical_gradient(loss, x, eps=eps, indices=idx)
                analytic = dinputs[k] if k < len(dinputs) else None
                report.tensors.append(_compare(f"input{k}", analytic, numeric, rtol, floor, idx))
    for name, p in params:
        v = p.values
        idx = _pick(v.size, max_entries, rng)
        numeric = numerical_gradient(loss, v, eps=eps, indices=idx)
        report.tensors.append(_compare(name, analytic_params[name], numeric, rtol, floor, idx))
    return report
