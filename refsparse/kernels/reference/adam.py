"""One Adam / AdamW update: the reference path, whole-array NumPy, line by line as
torch's ``_single_tensor_adam`` (torch/optim/adam.py; amsgrad=False, capturable=False).

The definition the fast kernel of [`kernels.adam`][refsparse.kernels.adam] is tested equal to, bit
for bit. With learning rate γ, betas (β₁, β₂), eps ε, weight decay λ, at step t = 1, 2, …:

    decoupled (AdamW):  θ ← θ · (1 − γλ)
    else (Adam, λ ≠ 0): g ← g + λ θ
    m ← m + (1 − β₁)(g − m)               (torch's lerp; another form for 1 − β₁ >= 0.5)
    v ← β₂ v + (1 − β₂) g²
    θ ← θ − (γ / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)

Arrays (one dtype, float32 or float64, one shape): values θ, exp_avg m and exp_avg_sq v
are updated in place; grad g is read only. The Python scalars meet the arrays as NumPy
makes them meet (a Python float against a float32 array is rounded to float32 first).
"""

from __future__ import annotations

import numpy as np

__all__ = ["update"]


def update(values, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay, decoupled, step):
    """One Adam (``decoupled=False``) or AdamW (``decoupled=True``) update in place. O(n)."""
    if weight_decay != 0:
        if decoupled:
            values *= 1 - lr * weight_decay  # param.mul_(1 - lr * weight_decay)
        else:
            grad = grad + weight_decay * values  # grad.add(param, alpha=weight_decay)

    # exp_avg.lerp_(grad, 1 - beta1): ATen's lerp picks its form by the weight's size
    w = 1 - beta1
    if abs(w) < 0.5:
        exp_avg += w * (grad - exp_avg)
    else:
        exp_avg[...] = grad - (grad - exp_avg) * (1 - w)
    # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    exp_avg_sq *= beta2
    exp_avg_sq += (1 - beta2) * grad * grad

    bias_correction1 = 1 - beta1 ** float(step)
    bias_correction2 = 1 - beta2 ** float(step)
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2**0.5

    denom = np.sqrt(exp_avg_sq) / bias_correction2_sqrt  # (exp_avg_sq.sqrt() / bc2_sqrt).add_(eps)
    denom += eps
    values += (-step_size) * exp_avg / denom  # param.addcdiv_(exp_avg, denom, value=-step_size)
