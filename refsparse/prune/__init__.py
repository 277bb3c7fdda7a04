"""Sparse weights over time: criteria, layer distributions, sparsification and methods.

- [`criteria`][refsparse.prune.criteria] — which entries to keep: magnitude (per layer or with
  one global threshold), random, N:M, blocks;
- [`sparsify`][refsparse.prune.sparsify] — how many per layer (uniform or ERK), and turning a
  model's ``Linear`` layers into [`SparseLinear`][refsparse.nn.sparse.SparseLinear];
- [`methods`][refsparse.prune.methods] — static sparse training, gradual magnitude pruning,
  SET and RigL; `refsparse.prune.imp` — lottery tickets (IMP), the same hooks;
- [`factory`][refsparse.prune.factory] — ``make_method``: a training config's method object.

The math and the papers: [docs/sparse-training.md](../sparse-training.md).
"""

from .criteria import *  # noqa: F401,F403
from .criteria import __all__ as _criteria_all
from .methods import *  # noqa: F401,F403
from .methods import __all__ as _methods_all
from .imp import IMP  # noqa: F401
from .factory import METHODS, make_method
from .sparsify import *  # noqa: F401,F403
from .sparsify import __all__ as _sparsify_all

__all__ = [*_criteria_all, *_sparsify_all, *_methods_all, "IMP", "METHODS", "make_method"]
