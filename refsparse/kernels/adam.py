"""One Adam / AdamW update: the driver, and the fast kernel (a parallel Numba loop over
the parameters' entries).

The driver, called by [`Adam`][refsparse.optim.Adam] and [`AdamW`][refsparse.optim.AdamW]:

    update(values, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay,
           decoupled, step)                       in place on values, exp_avg, exp_avg_sq

runs the path that is switched on ([`kernels.current`][refsparse.kernels.current]): the
reference, [`kernels.reference.adam`][refsparse.kernels.reference.adam] (whole-array
NumPy, line by line as torch's ``_single_tensor_adam``), or the fast kernel below — which
also runs the reference on small parameters (fewer than ``KERNEL_MIN_SIZE`` entries: not
worth starting threads) and on arrays that are not C-contiguous. The tests hold the two
paths together BIT FOR BIT, in float32 and float64. They can: every entry goes through the
same IEEE operations in the same order (no fastmath, no fused multiply-add), and each
Python scalar is first rounded to the arrays' dtype, as NumPy does with a Python float
against a float32 array. The kernel exists for speed: the reference makes ~12 passes over
memory with temporaries on one core, the kernel makes one pass on all cores.

Arrays (one dtype, float32 or float64), flat (n,), C-contiguous:

    values      the parameter's trainable numbers, updated in place
    grad        its gradient (read only)
    exp_avg     m, updated in place
    exp_avg_sq  v, updated in place

Per entry, with the scalars computed by the caller (t is the step number):

    decoupled (AdamW):  θ ← θ · (1 − γλ)
    else (Adam, λ ≠ 0): g ← g + λ θ
    m ← m + w (g − m)             if w = 1 − β₁ < 0.5      (torch's lerp, by weight size)
    m ← g − (g − m)(1 − w)        otherwise
    v ← v β₂ + ((1 − β₂) g) g
    θ ← θ + ((−γ / (1 − β₁ᵗ)) m) / (√v / √(1 − β₂ᵗ) + ε)
"""

from __future__ import annotations

import math

import numba

from .reference import adam as ref
from .switch import current

__all__ = ["KERNEL_MIN_SIZE", "adam_update", "update"]

# parameters with fewer entries run the reference on the fast path too
KERNEL_MIN_SIZE = 16384


def update(values, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay, decoupled, step):
    """One Adam (``decoupled=False``) or AdamW (``decoupled=True``) update of ``values`` in
    place, with its moments ``exp_avg`` and ``exp_avg_sq``; ``step`` = t >= 1."""
    arrays = (values, grad, exp_avg, exp_avg_sq)
    if (current() == "reference" or values.size < KERNEL_MIN_SIZE
            or not all(a.flags.c_contiguous for a in arrays)):
        ref.update(*arrays, lr, beta1, beta2, eps, weight_decay, decoupled, step)
        return
    # the same operations in the same order as the reference, bit for bit
    decay = decoupled and weight_decay != 0
    bias_correction1 = 1 - beta1 ** float(step)
    bias_correction2 = 1 - beta2 ** float(step)
    adam_update(*(a.reshape(-1) for a in arrays),
                1 - lr * weight_decay if decay else 1.0,
                weight_decay if (weight_decay != 0 and not decoupled) else 0.0,
                1 - beta1, beta2, 1 - beta2, -(lr / bias_correction1),
                bias_correction2**0.5, eps)


@numba.njit(parallel=True, cache=True)
def adam_update(values, grad, exp_avg, exp_avg_sq, decay_factor, l2, w, beta2, one_minus_beta2,
                neg_step_size, bc2_sqrt, eps):
    """One Adam(W) update in place; the scalars as in the module docstring. O(n).

    decay_factor = 1 − γλ (AdamW; 1 for none), l2 = λ (Adam; 0 for none).
    """
    t = values.dtype.type
    decay = t(decay_factor)
    lam = t(l2)
    ww = t(w)
    one_minus_w = t(1 - w)
    b2 = t(beta2)
    omb2 = t(one_minus_beta2)
    nss = t(neg_step_size)
    bc2 = t(bc2_sqrt)
    e = t(eps)
    small_w = abs(w) < 0.5
    for i in numba.prange(values.size):
        theta = values[i]
        if decay_factor != 1.0:
            theta = theta * decay
        g = grad[i]
        if l2 != 0.0:
            g = g + lam * theta
        m = exp_avg[i]
        if small_w:
            m = m + ww * (g - m)
        else:
            m = g - (g - m) * one_minus_w
        v = exp_avg_sq[i] * b2 + (omb2 * g) * g
        exp_avg[i] = m
        exp_avg_sq[i] = v
        values[i] = theta + (nss * m) / (math.sqrt(v) / bc2 + e)
