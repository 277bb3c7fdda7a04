"""Parameter and Module: the bookkeeping around the functional forward/backward pairs.

A [`Module`][refsparse.nn.module.Module] owns [`Parameter`][refsparse.nn.module.Parameter] objects and child modules, both found by
attribute assignment (as in PyTorch), so ``parameters()`` yields stable dotted names
such as ``blocks.0.attn.q_proj.weight``. Those names are also the keys of
``state_dict()`` and of checkpoints.

The contract every module keeps:

- ``forward(*inputs)`` computes the output and keeps the functional caches on the
  module for the next ``backward``;
- ``backward(dout)`` returns the gradient of the inputs and *accumulates* (``+=``)
  into each parameter's ``.grad``, so a parameter used twice is right for free. Before any
  ``forward`` it raises ``RuntimeError("<ClassName>.backward called before forward")``
  (see ``Module._cache_or_raise``). The cache is kept after ``backward``: a second
  ``backward`` reuses it and accumulates the parameters' gradients again.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import scipy.sparse as sp


class Parameter:
    """A trainable tensor and its gradient.

    ``value`` is an ndarray for a dense parameter, or a ``scipy.sparse.csr_array``
    (canonical: sorted indices, no duplicates) for a sparse weight. ``grad`` is
    always an ndarray shaped like [`values`][refsparse.nn.module.Parameter.values]: for a sparse weight it is aligned
    with ``value.data``, one number per stored entry.

    Optimizers and pruners work on [`values`][refsparse.nn.module.Parameter.values], the flat writable array of
    trainable numbers, so one optimizer serves dense and sparse parameters alike.
    """

    __slots__ = ("value", "grad")

    def __init__(self, value):
        if sp.issparse(value):
            if value.format != "csr":
                raise TypeError(f"value: expected a CSR sparse array, got format {value.format!r}")
            value = sp.csr_array(value)
            value.sort_indices()
        elif not isinstance(value, np.ndarray):
            raise TypeError(f"value: expected a numpy.ndarray or a CSR array, got {type(value).__name__}")
        if value.dtype not in (np.float32, np.float64):
            raise TypeError(f"value: expected dtype float32 or float64, got {value.dtype}")
        self.value = value
        self.grad = np.zeros_like(self.values)

    @property
    def is_sparse(self) -> bool:
        return sp.issparse(self.value)

    @property
    def values(self) -> np.ndarray:
        """The trainable numbers: the ndarray itself, or the CSR array's ``.data``."""
        return self.value.data if sp.issparse(self.value) else self.value

    @property
    def shape(self):
        return self.value.shape

    @property
    def dtype(self):
        return self.value.dtype

    def zero_grad(self):
        """Set ``.grad`` to zeros shaped like [`values`][refsparse.nn.module.Parameter.values]."""
        self.grad = np.zeros_like(self.values)

    def __repr__(self):
        kind = "sparse" if self.is_sparse else "dense"
        return f"Parameter({kind}, shape={self.shape}, dtype={self.dtype})"


class Module:
    """Base class of every layer: parameters, children, train/eval, state_dict."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError("call Module.__init__() before assigning attributes")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    # -- the contract ---------------------------------------------------------------
    # forward = check_inputs + compute. ``forward`` is the public edge: it checks the inputs
    # once, naming the argument. A module built from others checks its own inputs and then
    # calls its children's ``compute``, so an input is checked once, not on every floor.
    def forward(self, *inputs, **kwargs):
        """Check the inputs (``check_inputs``), then ``compute`` the output."""
        if type(self).compute is Module.compute:
            raise NotImplementedError(f"{type(self).__name__} defines neither forward nor compute")
        self.check_inputs(*inputs, **kwargs)
        return self.compute(*inputs, **kwargs)

    def check_inputs(self, *inputs, **kwargs):
        """Raise TypeError/ValueError naming a bad input; the default checks nothing."""

    def compute(self, *inputs, **kwargs):
        """The output, keeping what backward needs on the module; inputs already checked.

        A module that overrides only ``forward`` (an older or a user's module) is computed
        by its ``forward``.
        """
        if type(self).forward is Module.forward:
            raise NotImplementedError(f"{type(self).__name__} defines neither forward nor compute")
        return self.forward(*inputs, **kwargs)

    def backward(self, dout):
        """Return the inputs' gradient and accumulate into each parameter's ``.grad``."""
        raise NotImplementedError

    def _cache_or_raise(self):
        """The cache the last ``forward`` kept, for ``backward``; RuntimeError if there is none.

        Every module that keeps a cache sets ``self._cache = None`` in ``__init__`` and calls
        this first thing in ``backward``, so that a backward before any forward says so
        instead of failing inside the functional pair.
        """
        cache = getattr(self, "_cache", None)
        if cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return cache

    def __call__(self, *inputs, **kwargs):
        """``module(x)`` is ``module.forward(x)``."""
        return self.forward(*inputs, **kwargs)

    # -- traversal ------------------------------------------------------------------
    def named_modules(self, prefix=""):
        """Yield ``(dotted_name, module)`` for this module and all below it."""
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def parameters(self):
        """Yield ``(dotted_name, Parameter)`` pairs in a stable order."""
        for mod_name, mod in self.named_modules():
            for name, p in mod._parameters.items():
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def num_parameters(self) -> int:
        """The number of trainable numbers (stored entries for sparse weights)."""
        return int(sum(p.values.size for _, p in self.parameters()))

    def zero_grad(self):
        """Set every parameter's ``.grad`` to zeros."""
        for _, p in self.parameters():
            p.zero_grad()

    def train(self, mode: bool = True):
        """Training mode (``mode=True``) or evaluation mode for all modules below; returns self."""
        for _, m in self.named_modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        """Evaluation mode (dropout off) for this module and all below it; returns self."""
        return self.train(False)

    @property
    def dtype(self):
        for _, p in self.parameters():
            return p.dtype
        return None

    # -- state ----------------------------------------------------------------------
    def state_dict(self):
        """Copies of every parameter's value, keyed by dotted name."""
        return OrderedDict((name, p.value.copy()) for name, p in self.parameters())

    def load_state_dict(self, state, strict: bool = True):
        """Copy values into the parameters in place (their identity is kept).

        Raises ValueError for missing or unexpected keys (when ``strict``) and for
        shape mismatches; TypeError for dtype mismatches or a value that is not an array.
        Every entry is checked before any is copied, so a failed load changes nothing.
        """
        params = dict(self.parameters())
        missing = [k for k in params if k not in state]
        unexpected = [k for k in state if k not in params]
        if strict and (missing or unexpected):
            raise ValueError(
                f"state: missing keys {missing}, unexpected keys {unexpected}"
            )
        for name, p in params.items():
            if name not in state:
                continue
            new = state[name]
            if not (isinstance(new, np.ndarray) or sp.issparse(new)):
                raise TypeError(f"state[{name!r}]: expected a numpy.ndarray, got {type(new).__name__}")
            if tuple(new.shape) != tuple(p.shape):
                raise ValueError(f"state[{name!r}]: expected shape {p.shape}, got {tuple(new.shape)}")
            if new.dtype != p.dtype:
                raise TypeError(f"state[{name!r}]: expected dtype {p.dtype}, got {new.dtype}")
        for name, p in params.items():
            if name not in state:
                continue
            new = state[name]
            if sp.issparse(new) or p.is_sparse:
                new = sp.csr_array(new, copy=True)
                new.sort_indices()
                p.value = new
                p.grad = np.zeros_like(p.values)
            else:
                p.value[...] = new
        return self

    def __repr__(self):
        return f"{type(self).__name__}()"


class ModuleList(Module):
    """A list of modules whose parameters are named ``0.``, ``1.``, …"""

    def __init__(self, modules=()):
        super().__init__()
        self._list = []
        for m in modules:
            self.append(m)

    def append(self, module):
        """Add a module; its parameters are named ``<index>.<name>``."""
        if not isinstance(module, Module):
            raise TypeError(f"module: expected a Module, got {type(module).__name__}")
        setattr(self, str(len(self._list)), module)
        self._list.append(module)

    def __getitem__(self, i):
        return self._list[i]

    def __len__(self):
        return len(self._list)

    def __iter__(self):
        return iter(self._list)
