"""Compare a candidate's tensors with a reference's: the checker of the golden vectors.

This module is the short import path for what lives in [`refsparse.vectors`][refsparse.vectors]::

    from refsparse.validate import compare
    report = compare("layernorm.safetensors", "mine.safetensors")
    print(report)          # one row per tensor: shape, dtype, max abs / rel error, max ULP
    assert report.ok

and, for a PyTorch language model (a Hugging Face GPT-2, or your own), ``check_lm``: the
logits, the float64 loss and every gradient against refsparse's twin of it.
"""

from __future__ import annotations

from .vectors.compare import Report, TensorResult, compare, default_tolerances, ulp_distance
from .vectors.files import load
from .vectors.lm import check_lm

__all__ = ["Report", "TensorResult", "check_lm", "compare", "default_tolerances", "load", "ulp_distance"]
