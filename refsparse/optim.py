"""Optimizers, learning-rate schedules and gradient clipping.

SGD, Adam and AdamW follow ``torch.optim`` exactly: the single-tensor
(``foreach=False``) code paths of torch 2.x, with the same formulas and the same
order of floating-point operations, so float64 trajectories agree with PyTorch's to
rounding (torch's vectorized CPU kernels fuse some multiply-adds; nothing else differs).

Every optimizer takes ``params``, an iterable of ``(name, Parameter)`` pairs such as
``model.parameters()``, and updates ``p.values`` **in place** from ``p.grad``.
``p.values`` is the flat trainable array: the ndarray itself for a dense parameter,
the CSR array's ``.data`` for a sparse weight. An update never rebinds ``p.value``
and never touches ``indptr``/``indices``, so a sparse weight keeps its pattern, and
a stored entry that holds 0.0 stays stored.

Optimizer state lives in ``opt.state[name]`` (one dict of buffers per parameter,
keyed by the parameter's dotted name), plus one step counter ``opt.step_count``
shared by all parameters. ``state_dict()`` flattens it::

    "step"                 int, updates taken so far
    "lr", hyper-parameters python scalars (restored by load_state_dict, as torch does)
    "<buffer>.<name>"      ndarray aligned with that parameter's values,
                           e.g. "exp_avg.blocks.0.attn.q_proj.weight"

so that ``numpy.savez(path, **opt.state_dict())`` saves it and
``opt.load_state_dict(dict(numpy.load(path)))`` restores it bit for bit.

When a pruner changes a sparse weight's pattern it calls ``opt.remap(name, old_to_new)``:
entries that continue an old entry keep its state, new entries start at zero.

Schedules are plain callables ``s -> lr``; the training loop runs update number s
(s = 1, 2, …) at ``schedule(s)``: ``opt.lr = schedule(step + 1)`` before ``opt.step()``,
``step`` being the number of updates already taken.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from refsparse.nn.module import Parameter

from .kernels import adam as adam_kernels

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "ConstantLR",
    "Optimizer",
    "WarmupCosine",
    "clip_grad_norm",
    "constant_lr",
    "warmup_cosine",
]


# ----------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------
def _check_real(name, value, *, low=None, high=None, low_open=False, high_open=False):
    """Return ``value`` as a python float in the given interval, or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__} {value!r}")
    x = float(value)
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    interval = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
    ok = math.isfinite(x)
    if ok and low is not None:
        ok = x > low if low_open else x >= low
    if ok and high is not None:
        ok = x < high if high_open else x <= high
    if not ok:
        raise ValueError(f"{name}: expected a finite number in {interval}, got {value!r}")
    return x


def _check_count(name, value, *, low=0):
    """Return ``value`` as a python int >= ``low``, or raise naming ``name``."""
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected an integer, got bool {value!r}")
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__} {value!r}") from None
    if n < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {n}")
    return n


def _named_params(params):
    """Materialize ``params`` into an ordered ``{name: Parameter}``; checks names and identity."""
    if isinstance(params, (dict, OrderedDict)):
        params = params.items()
    out = OrderedDict()
    seen = {}
    for item in params:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise TypeError(
                f"params: expected (name, Parameter) pairs such as model.parameters(), got {item!r}"
            )
        name, p = item
        if not isinstance(name, str):
            raise TypeError(f"params: expected a str name, got {type(name).__name__} {name!r}")
        if not isinstance(p, Parameter):
            raise TypeError(f"params[{name!r}]: expected a Parameter, got {type(p).__name__}")
        if name in out:
            raise ValueError(f"params: the name {name!r} appears twice")
        if id(p) in seen:
            raise ValueError(f"params: one Parameter appears under two names, {seen[id(p)]!r} and {name!r}")
        seen[id(p)] = name
        out[name] = p
    if not out:
        raise ValueError("params: expected at least one (name, Parameter) pair, got an empty iterable")
    return out


def _scalar(key, value):
    """A python scalar from a state_dict entry (python number or 0-d / size-1 array from an .npz)."""
    a = np.asarray(value)
    if a.size != 1:
        raise ValueError(f"state_dict[{key!r}]: expected a scalar, got an array of shape {a.shape}")
    return a.reshape(()).item()


# ----------------------------------------------------------------------------------
# the base class
# ----------------------------------------------------------------------------------
class Optimizer:
    """Bookkeeping shared by SGD, Adam and AdamW.

    Subclasses define ``_hyper_names`` (the hyper-parameters saved in the state dict,
    ``lr`` included), ``_buffers`` (the names of the per-parameter state arrays) and
    ``_update(name, values, grad, lr, t)``, which changes ``values`` in place (t is the
    1-based step number).

    Attributes
    ----------
    lr : float
        The learning rate used by the next [`step`][refsparse.optim.Optimizer.step]; a schedule sets it.
    params : OrderedDict[str, Parameter]
        The parameters, by dotted name.
    state : dict[str, dict[str, ndarray]]
        Per-parameter buffers, created at the first step (as in torch), each shaped
        like ``params[name].values``.
    step_count : int
        The number of updates taken so far (torch's ``state["step"]``, shared by all
        parameters here because every parameter is updated at every step).
    """

    _hyper_names: tuple = ("lr",)
    _buffers: tuple = ()

    def __init__(self, params, lr):
        self.params = _named_params(params)
        self.lr = _check_real("lr", lr, low=0.0)
        self.state = {}
        self.step_count = 0
        # name -> (Parameter, indptr, indices): the sparse pattern the state was last stepped on
        self._patterns = {}

    # -- the training-loop interface ---------------------------------------------------
    def zero_grad(self):
        """Set every parameter's ``.grad`` to zeros (shaped like its values)."""
        for p in self.params.values():
            p.zero_grad()

    def step(self):
        """Apply one update to every parameter, in place, from its ``.grad``.

        Raises
        ------
        ValueError
            When ``lr`` is negative or not finite, when a gradient is not shaped like
            its parameter's values, or when a sparse weight's pattern changed since the
            last step without a [`remap`][refsparse.optim.Optimizer.remap] (another number of entries, or other
            entries: the pattern each step ran on is kept by reference and compared).
            ``prune.set_pattern`` calls [`remap`][refsparse.optim.Optimizer.remap] when given the optimizer; SET,
            RigL, GMP and IMP give it.
        TypeError
            When a gradient's dtype differs from its parameter's.
        """
        lr = _check_real("lr", self.lr, low=0.0)
        for name, p in self.params.items():
            values, grad = p.values, p.grad
            if not isinstance(grad, np.ndarray) or grad.shape != values.shape:
                got = grad.shape if isinstance(grad, np.ndarray) else type(grad).__name__
                raise ValueError(f"params[{name!r}].grad: expected shape {values.shape}, got {got}")
            if grad.dtype != values.dtype:
                raise TypeError(f"params[{name!r}].grad: expected dtype {values.dtype}, got {grad.dtype}")
            for buf_name, buf in self.state.get(name, {}).items():
                if buf.shape != values.shape:
                    raise ValueError(
                        f"state {buf_name}.{name}: has shape {buf.shape} but the parameter's values "
                        f"now have shape {values.shape}; after changing a sparse pattern call "
                        f"remap({name!r}, old_to_new)"
                    )
            if self.state.get(name):
                self._check_pattern(name, p)
        for name, p in self.params.items():
            if p.is_sparse:
                self._patterns[name] = (p, p.value.indptr, p.value.indices)
        self.step_count += 1
        t = self.step_count
        for name, p in self.params.items():
            self._update(name, p.values, p.grad, lr, t)

    def _check_pattern(self, name, p):
        """ValueError when sparse parameter ``name`` holds another pattern than at the last
        step, with the same number of entries (the shape check catches other counts), and no
        [`remap`][refsparse.optim.Optimizer.remap] in between: its state would follow entries it does not belong to. The
        same pattern in new arrays passes (compared by value only when the arrays are new)."""
        seen = self._patterns.get(name)
        if seen is None or seen[0] is not p:
            return  # never stepped as this Parameter, or remapped since
        w = p.value
        if (seen[1] is w.indptr and seen[2] is w.indices) or (
                np.array_equal(seen[1], w.indptr) and np.array_equal(seen[2], w.indices)):
            return
        raise ValueError(f"params[{name!r}]: its sparse pattern changed since the last step without "
                         f"remap({name!r}, old_to_new), so its optimizer state would belong to other entries")

    def _update(self, name, values, grad, lr, t):  # pragma: no cover - abstract
        raise NotImplementedError

    def _hyper(self):
        return {k: getattr(self, k) for k in self._hyper_names}

    def _set_hyper(self, hyper):
        """Set hyper-parameters already checked by ``_validate_hyper``."""
        for k, v in hyper.items():
            setattr(self, k, v)

    # -- state --------------------------------------------------------------------------
    def state_dict(self):
        """The whole optimizer state as a flat dict of copies.

        Returns
        -------
        dict
            ``"step"`` (int), the hyper-parameters (``"lr"``, ...; python scalars) and,
            for every parameter that has state, ``"<buffer>.<name>"`` ndarrays aligned
            with its values. Suitable for ``numpy.savez(path, **sd)``.
        """
        sd = {"step": int(self.step_count)}
        sd.update(self._hyper())
        for name in self.params:
            for buf_name, buf in self.state.get(name, {}).items():
                sd[f"{buf_name}.{name}"] = buf.copy()
        return sd

    def _required_buffers(self, hyper, step):
        """The buffer names every parameter must have in a state dict with this step."""
        return self._buffers if step > 0 else ()

    def load_state_dict(self, state_dict):
        """Restore the state saved by [`state_dict`][refsparse.optim.Optimizer.state_dict], bit for bit.

        Arrays are copied; 0-d arrays (as an .npz gives back) are accepted for the
        scalars. The hyper-parameters are restored too, as
        ``torch.optim.Optimizer.load_state_dict`` restores its ``param_groups``.
        Nothing changes unless the whole dict is valid.

        Raises
        ------
        ValueError
            Naming the key: a missing or unexpected key, a buffer whose shape differs
            from the parameter's values, an invalid scalar.
        TypeError
            Naming the key: a buffer whose dtype differs from the parameter's.
        """
        missing = [k for k in ("step",) + self._hyper_names if k not in state_dict]
        if missing:
            raise ValueError(f"state_dict: missing key(s) {missing}")
        step = _check_count("state_dict['step']", _scalar("step", state_dict["step"]))
        hyper = {k: _scalar(k, state_dict[k]) for k in self._hyper_names}
        hyper = self._validate_hyper(hyper)
        required = self._required_buffers(hyper, step)

        known = {"step", *self._hyper_names}
        new_state = {}
        for name, p in self.params.items():
            values = p.values
            bufs = {}
            for buf_name in self._buffers:
                key = f"{buf_name}.{name}"
                known.add(key)
                if key not in state_dict:
                    if buf_name in required:
                        raise ValueError(f"state_dict: missing key {key!r} (step is {step})")
                    continue
                arr = state_dict[key]
                if not isinstance(arr, np.ndarray):
                    raise TypeError(
                        f"state_dict[{key!r}]: expected a numpy.ndarray, got {type(arr).__name__}"
                    )
                if arr.shape != values.shape:
                    raise ValueError(
                        f"state_dict[{key!r}]: expected shape {values.shape} (the parameter's values), "
                        f"got {arr.shape}"
                    )
                if arr.dtype != values.dtype:
                    raise TypeError(f"state_dict[{key!r}]: expected dtype {values.dtype}, got {arr.dtype}")
                bufs[buf_name] = np.array(arr, copy=True)
            if bufs:
                if len(bufs) != len(self._buffers):
                    absent = [f"{b}.{name}" for b in self._buffers if b not in bufs]
                    raise ValueError(f"state_dict: missing key(s) {absent}")
                new_state[name] = bufs
        unexpected = [k for k in state_dict if k not in known]
        if unexpected:
            raise ValueError(f"state_dict: unexpected key(s) {unexpected}")

        self._set_hyper(hyper)
        self.step_count = step
        self.state = new_state
        self._patterns = {}  # the loaded state follows the parameters' current patterns
        return self

    def _validate_hyper(self, hyper, prefix="state_dict"):
        """Check hyper-parameters; errors name ``prefix[key]`` (or just ``key``)."""
        name = f"{prefix}['lr']" if prefix else "lr"
        return {"lr": _check_real(name, hyper["lr"], low=0.0)}

    def remap(self, name, old_to_new):
        """Carry a parameter's state over a change of its sparse pattern.

        Parameters
        ----------
        name : str
            The parameter's dotted name.
        old_to_new : int ndarray (nnz_new,)
            For each entry of the NEW pattern (in CSR order), the index of the OLD entry
            it continues, or -1 for a new entry. Every state buffer becomes
            ``new[j] = old[old_to_new[j]]`` where ``old_to_new[j] >= 0``, else 0: a
            dropped entry loses its state and a new entry starts at zero. (The step count
            is shared, so a new entry's first Adam update uses the global bias correction.)

        Notes
        -----
        It may be called before or after the parameter's values are replaced by the new
        pattern's. Raises ValueError (naming the argument) for an unknown name, indices
        outside [-1, nnz_old), an old entry continued twice, or a length that matches
        neither the parameter's current values nor a not-yet-replaced pattern.
        """
        if name not in self.params:
            raise ValueError(f"name: expected one of the optimizer's parameter names, got {name!r}")
        idx = np.asarray(old_to_new)
        if idx.ndim != 1 or not (np.issubdtype(idx.dtype, np.integer) or idx.size == 0):
            raise ValueError(
                f"old_to_new: expected a 1-D integer array, got dtype {idx.dtype} and shape {idx.shape}"
            )
        idx = idx.astype(np.intp, copy=False)
        n_values = self.params[name].values.size
        bufs = self.state.get(name)
        n_old = next(iter(bufs.values())).size if bufs else None
        if idx.size != n_values and n_old is not None and n_values != n_old:
            raise ValueError(
                f"old_to_new: expected length {n_values} (the parameter's values), got {idx.size}"
            )
        if idx.size and idx.min() < -1:
            raise ValueError(f"old_to_new: expected indices >= -1, got a minimum of {idx.min()}")
        kept = idx[idx >= 0]
        if n_old is not None and kept.size and kept.max() >= n_old:
            raise ValueError(
                f"old_to_new: expected indices < {n_old} (the old number of entries), "
                f"got a maximum of {kept.max()}"
            )
        if kept.size != np.unique(kept).size:
            raise ValueError("old_to_new: an old entry is continued by more than one new entry")
        self._patterns.pop(name, None)  # checked: the next step takes the new pattern as it finds it
        if not bufs:
            return  # no state yet (before the first step, or SGD without momentum)
        keep = idx >= 0
        for buf_name, old in bufs.items():
            new = np.zeros(idx.size, dtype=old.dtype)  # (nnz_new,)
            new[keep] = old[idx[keep]]
            bufs[buf_name] = new

    def __repr__(self):
        hp = ", ".join(f"{k}={v!r}" for k, v in self._hyper().items())
        return f"{type(self).__name__}({len(self.params)} params, {hp}, step={self.step_count})"


# ----------------------------------------------------------------------------------
# SGD
# ----------------------------------------------------------------------------------
class SGD(Optimizer):
    """Stochastic gradient descent with momentum, exactly as ``torch.optim.SGD``.

    With learning rate γ, momentum μ, dampening τ, weight decay λ, at step t::

        g ← ∇θ + λ·θ                         (if λ ≠ 0)
        b ← g                                (t = 1: the buffer starts as the gradient)
        b ← μ·b + (1 − τ)·g                  (t > 1)
        g ← g + μ·b   (nesterov)   or   g ← b   (otherwise)      (if μ ≠ 0)
        θ ← θ − γ·g

    State: ``momentum_buffer.<name>`` (only when μ ≠ 0, from the first step on).

    Parameters
    ----------
    params : iterable of (str, Parameter)
    lr : float >= 0
    momentum : float >= 0
    dampening : float
    weight_decay : float >= 0
        L2 penalty added to the gradient.
    nesterov : bool
        Needs momentum > 0 and dampening == 0.
    """

    _hyper_names = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
    _buffers = ("momentum_buffer",)

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, lr)
        hyper = self._validate_hyper(
            {"lr": lr, "momentum": momentum, "dampening": dampening,
             "weight_decay": weight_decay, "nesterov": nesterov},
            prefix="",
        )
        self._set_hyper(hyper)

    def _validate_hyper(self, hyper, prefix="state_dict"):
        def nm(k):
            return f"{prefix}[{k!r}]" if prefix else k

        out = {
            "lr": _check_real(nm("lr"), hyper["lr"], low=0.0),
            "momentum": _check_real(nm("momentum"), hyper["momentum"], low=0.0),
            "dampening": _check_real(nm("dampening"), hyper["dampening"]),
            "weight_decay": _check_real(nm("weight_decay"), hyper["weight_decay"], low=0.0),
        }
        nesterov = hyper["nesterov"]
        if not isinstance(nesterov, (bool, np.bool_, numbers.Integral)):
            raise TypeError(f"{nm('nesterov')}: expected a bool, got {type(nesterov).__name__} {nesterov!r}")
        out["nesterov"] = bool(nesterov)
        if out["nesterov"] and (out["momentum"] <= 0 or out["dampening"] != 0):
            raise ValueError(
                f"{nm('nesterov')}: Nesterov momentum needs momentum > 0 and dampening == 0, got "
                f"momentum={out['momentum']!r}, dampening={out['dampening']!r}"
            )
        return out

    def _required_buffers(self, hyper, step):
        return self._buffers if step > 0 and hyper["momentum"] != 0 else ()

    def _update(self, name, values, grad, lr, t):
        # torch/optim/sgd.py, _single_tensor_sgd, line by line.
        if self.weight_decay != 0:
            grad = grad + self.weight_decay * values  # grad.add(param, alpha=weight_decay)
        if self.momentum != 0:
            st = self.state.setdefault(name, {})
            buf = st.get("momentum_buffer")
            if buf is None:
                buf = st["momentum_buffer"] = grad.copy()  # buf = grad.detach().clone()
            else:
                buf *= self.momentum  # buf.mul_(momentum).add_(grad, alpha=1 - dampening)
                buf += (1 - self.dampening) * grad
            if self.nesterov:
                grad = grad + self.momentum * buf  # grad.add(buf, alpha=momentum)
            else:
                grad = buf
        values += (-lr) * grad  # param.add_(grad, alpha=-lr)


# ----------------------------------------------------------------------------------
# Adam and AdamW
# ----------------------------------------------------------------------------------
class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with L2 weight decay, exactly as ``torch.optim.Adam``.

    With learning rate γ, betas (β₁, β₂), eps ε, weight decay λ, at step t = 1, 2, …::

        g ← ∇θ + λ·θ                          (if λ ≠ 0: L2, enters the moments)
        m ← m + (1 − β₁)·(g − m)              (= β₁·m + (1 − β₁)·g, torch's lerp)
        v ← β₂·v + (1 − β₂)·g²
        θ ← θ − (γ / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)

    State: ``exp_avg.<name>`` (m) and ``exp_avg_sq.<name>`` (v), zeros before the
    first step. ``amsgrad``, ``maximize`` and tensor hyper-parameters are not offered.

    Parameters
    ----------
    params : iterable of (str, Parameter)
    lr : float >= 0
    betas : (float, float), each in [0, 1)
    eps : float >= 0
    weight_decay : float >= 0
    """

    _hyper_names = ("lr", "beta1", "beta2", "eps", "weight_decay")
    _buffers = ("exp_avg", "exp_avg_sq")
    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"betas: expected a pair (beta1, beta2), got {betas!r}") from None
        hyper = {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps, "weight_decay": weight_decay}
        self._set_hyper(self._validate_hyper(hyper, prefix=""))

    @property
    def betas(self):
        return (self.beta1, self.beta2)

    def _validate_hyper(self, hyper, prefix="state_dict"):
        def nm(k):
            return f"{prefix}[{k!r}]" if prefix else k

        return {
            "lr": _check_real(nm("lr"), hyper["lr"], low=0.0),
            "beta1": _check_real(nm("betas[0]") if not prefix else nm("beta1"), hyper["beta1"],
                                 low=0.0, high=1.0, high_open=True),
            "beta2": _check_real(nm("betas[1]") if not prefix else nm("beta2"), hyper["beta2"],
                                 low=0.0, high=1.0, high_open=True),
            "eps": _check_real(nm("eps"), hyper["eps"], low=0.0),
            "weight_decay": _check_real(nm("weight_decay"), hyper["weight_decay"], low=0.0),
        }

    def _update(self, name, values, grad, lr, t):
        # torch/optim/adam.py, _single_tensor_adam (amsgrad=False, capturable=False): the
        # update is the driver's (refsparse/kernels/adam.py); its reference kernel,
        # refsparse/kernels/reference/adam.py, quotes torch line by line
        st = self.state.get(name)
        if st is None:
            st = self.state[name] = {"exp_avg": np.zeros_like(values), "exp_avg_sq": np.zeros_like(values)}
        adam_kernels.update(values, grad, st["exp_avg"], st["exp_avg_sq"], lr, self.beta1, self.beta2,
                            self.eps, self.weight_decay, self._decoupled, t)


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter, 2019): decoupled weight decay, exactly as ``torch.optim.AdamW``.

    As [`Adam`][refsparse.optim.Adam], except that the decay shrinks the parameter directly and never
    enters the moments; note it is scaled by the learning rate γ, as in torch::

        θ ← θ·(1 − γ·λ)
        m ← m + (1 − β₁)·(∇θ − m)
        v ← β₂·v + (1 − β₂)·(∇θ)²
        θ ← θ − (γ / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)

    Parameters
    ----------
    params : iterable of (str, Parameter)
    lr : float >= 0
    betas : (float, float), each in [0, 1)
    eps : float >= 0
    weight_decay : float >= 0 (default 1e-2, as torch)
    """

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


# ----------------------------------------------------------------------------------
# learning-rate schedules
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConstantLR:
    """``lr(step) = lr`` for every step. Build it with [`constant_lr`][refsparse.optim.constant_lr]."""

    lr: float

    def __call__(self, step):
        """lr(step): always the same."""
        _check_count("step", step)
        return self.lr


@dataclass(frozen=True)
class WarmupCosine:
    """Linear warm-up, then cosine decay. Build it with [`warmup_cosine`][refsparse.optim.warmup_cosine]."""

    base_lr: float
    warmup_steps: int
    total_steps: int
    min_lr: float = 0.0

    def __call__(self, step):
        """lr(step) (see [`warmup_cosine`][refsparse.optim.warmup_cosine]); the trainer runs update number ``step`` at it."""
        s = _check_count("step", step)
        if s < self.warmup_steps:
            return self.base_lr * s / self.warmup_steps
        if s >= self.total_steps:
            return self.min_lr
        progress = (s - self.warmup_steps) / (self.total_steps - self.warmup_steps)  # in [0, 1)
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))


def constant_lr(lr):
    """A schedule that always returns ``lr``.

    Parameters
    ----------
    lr : float >= 0

    Returns
    -------
    callable
        ``step -> lr`` for any integer step >= 0.
    """
    return ConstantLR(_check_real("lr", lr, low=0.0))


def warmup_cosine(base_lr, warmup_steps, total_steps, min_lr=0.0):
    """Linear warm-up from 0 to ``base_lr``, then cosine decay to ``min_lr``.

    With W = warmup_steps and N = total_steps::

        lr(s) = base_lr · s / W                                            0 ≤ s < W
        lr(s) = min_lr + ½·(base_lr − min_lr)·(1 + cos(π·(s − W)/(N − W)))  W ≤ s < N
        lr(s) = min_lr                                                      s ≥ N

    so lr(0) = 0 (when W > 0), lr(W) = base_lr, lr((W + N)/2) = (base_lr + min_lr)/2
    and lr(N) = min_lr. With min_lr = 0 this is HuggingFace's
    ``get_cosine_schedule_with_warmup`` (num_cycles = 0.5) as a function of s.

    How the trainer applies it: with ``step`` the number of updates already taken,
    [`Trainer.train_step`][refsparse.train.Trainer.train_step] sets
    ``opt.lr = schedule(step + 1)`` just before ``opt.step()`` — update number s (s = 1, 2, …) runs at lr(s). So the first
    update runs at base_lr / W (never at lr(0) = 0), update W at base_lr, and every update
    from N on at min_lr. (HuggingFace's usual loop, ``optimizer.step()`` then
    ``scheduler.step()``, runs update s at lr(s − 1): one step behind.)

    Parameters
    ----------
    base_lr : float >= 0
        The peak learning rate, reached at step W.
    warmup_steps : int >= 0
    total_steps : int >= warmup_steps
    min_lr : float in [0, base_lr]

    Returns
    -------
    callable
        ``step -> lr`` (a python float) for any integer step >= 0.
    """
    base_lr = _check_real("base_lr", base_lr, low=0.0)
    warmup_steps = _check_count("warmup_steps", warmup_steps)
    total_steps = _check_count("total_steps", total_steps)
    if total_steps < warmup_steps:
        raise ValueError(
            f"total_steps: expected an integer >= warmup_steps ({warmup_steps}), got {total_steps}"
        )
    min_lr = _check_real("min_lr", min_lr, low=0.0, high=base_lr)
    return WarmupCosine(base_lr, warmup_steps, total_steps, min_lr)


# ----------------------------------------------------------------------------------
# gradient clipping
# ----------------------------------------------------------------------------------
def clip_grad_norm(params, max_norm):
    """Scale all gradients together so that their global L2 norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_`` (norm_type 2)::

        total = ‖(‖g₁‖₂, ‖g₂‖₂, …)‖₂          (the norm of all gradients as one vector)
        c = max_norm / (total + 1e-6)
        g ← g·c  for every gradient, in place, when c < 1

    The arithmetic runs in the gradients' dtype (float32 gradients give a float32
    norm and coefficient, as in torch).

    **Difference from PyTorch** (listed in [docs/conventions.md](../conventions.md)): when the total norm is NaN
    (some gradient holds a NaN; or inf − inf …), c is NaN and ``c < 1`` is False, so the
    gradients are left untouched — the finite ones stay finite — and the NaN is returned
    for the caller to see. torch multiplies every gradient by the NaN coefficient, so all
    of them become NaN. (An infinite norm gives c = 0 in both: the finite entries become
    0 and the infinite ones NaN.)

    Parameters
    ----------
    params : iterable of (str, Parameter) pairs (or of Parameters)
    max_norm : float >= 0

    Returns
    -------
    float
        The total norm before clipping (0.0 when there is no parameter).
    """
    max_norm = _check_real("max_norm", max_norm, low=0.0)
    grads = []
    for item in params:
        p = item[1] if isinstance(item, tuple) and len(item) == 2 else item
        if not isinstance(p, Parameter):
            raise TypeError(f"params: expected (name, Parameter) pairs or Parameters, got {item!r}")
        grads.append(p.grad)
    if not grads:
        return 0.0
    dtype = np.result_type(*grads)
    norms = np.array([np.linalg.norm(g.ravel()) for g in grads], dtype=dtype)  # (n_params,)
    total = np.linalg.norm(norms)
    # torch evaluates `max_norm / (total_norm + 1e-6)` as reciprocal(total + 1e-6) * max_norm
    clip_coef = (dtype.type(1) / (total + dtype.type(1e-6))) * dtype.type(max_norm)
    if clip_coef < 1:
        for g in grads:
            g *= g.dtype.type(clip_coef)
    return float(total)
