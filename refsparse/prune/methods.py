"""Sparse training methods: how a model's sparse patterns change while it trains.

Every method is an object with hooks that the training loop calls
([`refsparse.train.Trainer`][refsparse.train.Trainer] does; so can any loop of your own)::

    method.setup(model)                       # once, before the optimizer is built
    while True:
        for step in run.step + 1, …, steps:
            method.start_step(run)            # before the batch is drawn (run.step = step − 1)
            method.before_step(step, model)   # before forward/backward of that step
            … forward, backward, clip, opt.step() unless method.skips_optimizer_step(step) …
            method.after_step(step, model, opt)   # may change patterns; remaps opt's state
        if not method.end_of_run(run):        # True: the method reset the run; train again
            break

``step`` is 1-based: ``after_step(t, …)`` runs once the t-th update has been applied.
``run`` is the training loop's state, for the methods that span whole runs (IMP): it has
``model``, ``opt`` and ``step``, ``capture()`` (a copy of the whole training state),
``restore(snapshot)``, ``reset(model_seed)`` (fresh weights and optimizer at step 0) and
``train_step()``. The methods of one training run only never look at it.

=============  =======================================================================
``static``     a fixed random pattern from step 0 (uniform or ERK layer densities)
``gmp``        gradual magnitude pruning, Zhu & Gupta 2017: dense at first, pruned by
               magnitude to ``s_t = s_f + (s_i − s_f)(1 − (t − t0)/(nΔt))³`` every Δt
               steps from t0 until t0 + nΔt
``set``        Sparse Evolutionary Training, Mocanu et al. 2018: every ΔT steps drop the
               fraction ζ of each layer's smallest-magnitude weights (or, as in the
               paper's Algorithm 1, ζ of the positive and ζ of the negative weights) and
               regrow as many at random empty positions
``rigl``       Rigging the Lottery, Evci et al. 2020: every ΔT steps until a stop step,
               drop by magnitude and grow where the dense gradient is largest, with a
               drop fraction annealed by a cosine
``imp``        iterative magnitude pruning with rewinding (lottery tickets), Frankle &
               Carbin 2019: a dense run, then rounds of prune, rewind, retrain
               (`refsparse.prune.imp.IMP`)
=============  =======================================================================

Changing a pattern, the rules every method keeps (the project's design notes, "sparse
parameters"; [docs/sparse-training.md](../sparse-training.md)):

- the number of stored entries of a layer is exactly what the schedule says;
- an entry stored both before and after an update *continues*: its value and its
  optimizer state are kept;
- a dropped entry loses its value and state; a grown entry starts with value 0.0 and
  zero optimizer state ([`refsparse.optim.Optimizer.remap`][refsparse.optim.Optimizer.remap]). A grown 0.0 is a
  stored zero, part of the pattern, and trains from the next step.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from ..kernels.select import topk_indices
from ..nn.layers import Linear
from ..nn.sparse import SparseLinear
from .sparsify import layer_nnz, prunable_layers, replace_module, sparse_layers, sparsify

__all__ = [
    "GMP", "RigL", "SET", "SparseMethod", "Static", "cosine_drop_fraction",
    "csr_positions", "dense_grad_topk", "gmp_sparsity", "grow_random",
    "prune_to_count", "set_pattern", "sparsify_with_positions",
]


# ----------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------
def gmp_sparsity(step, final, *, initial=0.0, begin, end, every):
    """Zhu & Gupta's cubic schedule, the target sparsity after update ``step``.

    ``s_t = s_f + (s_i − s_f) · (1 − (t − t0) / (n·Δt))³`` for t0 ≤ t ≤ t0 + n·Δt, with
    t0 = ``begin``, n·Δt = ``end − begin``, Δt = ``every``; the sparsity only changes at
    t = t0 + kΔt, so between pruning steps it is the value of the last one. Before t0 it
    is s_i and from t0 + nΔt on it is s_f. (``end − begin`` need not be a multiple of
    Δt: the last pruning step is the last t0 + kΔt ≤ end, and ``end`` itself prunes to
    s_f.)
    """
    if step < begin:
        return float(initial)
    if step >= end:
        return float(final)
    t = begin + ((step - begin) // every) * every  # the last pruning step so far
    frac = (t - begin) / (end - begin)
    if frac == 0.0:
        return float(initial)  # the formula's value, without its rounding
    return float(final + (initial - final) * (1.0 - frac) ** 3)


def cosine_drop_fraction(step, initial, end):
    """RigL's annealed drop fraction: ``f(t) = α/2 · (1 + cos(π t / T_end))``, 0 from T_end on."""
    if step >= end:
        return 0.0
    return 0.5 * initial * (1.0 + math.cos(math.pi * step / end))


# ----------------------------------------------------------------------------------------
# Patterns as sorted flat positions
# ----------------------------------------------------------------------------------------
def csr_positions(w):
    """The stored entries of the CSR ``w`` (out, in) as flat positions ``row · in + col``.

    Canonical CSR (rows in order, sorted columns) gives them ascending; int64 (nnz,).
    """
    rows = np.repeat(np.arange(w.shape[0], dtype=np.int64), np.diff(w.indptr))
    return rows * w.shape[1] + w.indices


def _csr_from_positions(flat, values, shape, index_dtype):
    """The canonical CSR array with ``values`` at the ascending flat positions ``flat``."""
    rows, cols = np.divmod(flat, shape[1])
    indptr = np.zeros(shape[0] + 1, dtype=index_dtype)
    np.cumsum(np.bincount(rows, minlength=shape[0]), out=indptr[1:])
    w = sp.csr_array((values, cols.astype(index_dtype), indptr), shape=shape)
    w.has_canonical_format = True
    return w


def set_pattern(layer, new_positions, optimizer=None, param_name=None):
    """Give the SparseLinear ``layer`` the pattern ``new_positions`` (ascending flat positions).

    Entries in both the old and the new pattern continue (value and optimizer state);
    new entries start at 0.0 with zero optimizer state; dropped entries are forgotten.
    Returns ``old_to_new`` (int64 (nnz_new,)): the old entry each new one continues, or −1.
    """
    old = layer.weight.value
    old_pos = csr_positions(old)
    new_positions = np.asarray(new_positions, dtype=np.int64)
    at = np.searchsorted(old_pos, new_positions)  # (nnz_new,)
    at_ok = np.minimum(at, max(old_pos.size - 1, 0))
    same = (at < old_pos.size) & (old_pos[at_ok] == new_positions) if old_pos.size else \
        np.zeros(new_positions.size, dtype=bool)
    old_to_new = np.where(same, at, -1).astype(np.int64)
    values = np.zeros(new_positions.size, dtype=old.dtype)
    values[same] = old.data[at[same]]
    layer.weight.value = _csr_from_positions(new_positions, values, old.shape, old.indices.dtype)
    layer.weight.grad = np.zeros_like(values)
    if optimizer is not None:
        optimizer.remap(param_name, old_to_new)
    return old_to_new


def prune_to_count(layer, count, optimizer=None, param_name=None):
    """Keep the ``count`` largest-magnitude stored entries of the SparseLinear ``layer``.

    Ties go to the lower position. The survivors keep their values and optimizer state.
    """
    w = layer.weight.value
    if count > w.nnz:
        raise ValueError(f"count: expected at most the layer's {w.nnz} stored entries, got {count}")
    keep = topk_indices(np.abs(w.data), count)  # ascending entry indices
    return set_pattern(layer, csr_positions(w)[keep], optimizer, param_name)


def grow_random(kept, total, count, rng):
    """``count`` distinct flat positions in [0, total) outside the ascending ``kept``, uniformly.

    Draw ``count`` distinct ranks among the ``total − len(kept)`` free positions and map
    each rank r to the r-th free position: the free position p with rank r satisfies
    p = r + #(kept ≤ p), found by a binary search on ``kept − arange(len(kept))``.
    """
    free = total - kept.size
    if count > free:
        raise ValueError(f"count: expected at most {free} free positions, got {count}")
    ranks = np.sort(rng.choice(free, size=count, replace=False)).astype(np.int64)
    shifted = kept - np.arange(kept.size, dtype=np.int64)  # nondecreasing
    return ranks + np.searchsorted(shifted, ranks, side="right")


# ----------------------------------------------------------------------------------------
# The methods
# ----------------------------------------------------------------------------------------
class SparseMethod:
    """Base class: the hooks, the layer selection and the method's random stream.

    Parameters
    ----------
    sparsity : float in [0, 1)
        The sparsity the method reaches (over the chosen layers; see ``distribution``).
    distribution : "uniform" | "erk"
        How the kept entries are shared among layers ([`layer_nnz`][refsparse.prune.sparsify.layer_nnz]).
    seed : int
        Seeds the method's own Generator (random patterns, random regrowth).
    """

    name = "base"

    def __init__(self, sparsity, *, distribution="uniform", seed=0, erk_power_scale=1.0):
        if isinstance(sparsity, (bool, np.bool_)) or not isinstance(sparsity, (int, float, np.integer, np.floating)) \
                or not 0.0 <= float(sparsity) < 1.0:
            raise ValueError(f"sparsity: expected a number in [0, 1), got {sparsity!r}")
        if distribution not in ("uniform", "erk"):
            raise ValueError(f"distribution: expected 'uniform' or 'erk', got {distribution!r}")
        self.sparsity = float(sparsity)
        self.distribution = distribution
        self.erk_power_scale = float(erk_power_scale)
        self.rng = np.random.default_rng(seed)
        self.targets = {}  # layer name -> stored entries at the final sparsity

    def _plan(self, model, sparsity):
        shapes = {name: (lin.out_features, lin.in_features) for name, lin in prunable_layers(model)}
        return layer_nnz(shapes, sparsity, self.distribution, erk_power_scale=self.erk_power_scale)

    def setup(self, model):
        """Prepare ``model`` (e.g. make its layers sparse) before the optimizer is built."""
        self.targets = self._plan(model, self.sparsity)

    def before_step(self, step, model):
        """Called before the forward pass of update ``step`` (1-based)."""

    def after_step(self, step, model, optimizer):
        """Called after update ``step`` was applied; returns True when a pattern changed."""
        return False

    def skips_optimizer_step(self, step):
        """True when update ``step`` changes the pattern *instead of* the weights (RigL's
        update steps): the trainer then does not call the optimizer at that step."""
        return False

    def start_step(self, run):
        """Called before the batch of update ``run.step + 1`` is drawn (IMP takes its rewind
        state here)."""

    def end_of_run(self, run):
        """Called when ``run`` reached its last step (after its final evaluation). Return True
        after resetting ``run`` to train again (IMP's next round); False ends the training."""
        return False

    def log_fields(self):
        """Extra fields for each metrics record (IMP: its round)."""
        return {}

    # the random stream is part of a run's state: checkpoints save and restore it
    def state_dict(self):
        """The method's state: its random stream (IMP adds its round and rewind state)."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        """Restore what `state_dict` returned."""
        self.rng.bit_generator.state = state["rng"]

    def __repr__(self):
        return f"{type(self).__name__}(sparsity={self.sparsity}, distribution={self.distribution!r})"


class Static(SparseMethod):
    """Static sparse training: a random pattern at initialisation, never changed.

    Each chosen layer keeps ``layer_nnz(…)[name]`` entries placed uniformly at random
    (values: the layer's own initial values there).
    """

    name = "static"

    def setup(self, model):
        """Make the chosen layers sparse with random patterns (the layers' own initial values)."""
        super().setup(model)
        if self.sparsity > 0:
            sparsify(model, self.sparsity, distribution=self.distribution, criterion="random",
                     rng=self.rng, erk_power_scale=self.erk_power_scale)


class GMP(SparseMethod):
    """Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune").

    The model starts dense; after update t = t0 + kΔt (k = 0 … n) each chosen layer is
    pruned by magnitude to its share of [`gmp_sparsity`][refsparse.prune.methods.gmp_sparsity] (t). A dense layer becomes
    a SparseLinear at its first pruning with s > 0; from then on only its stored entries
    are computed, and its optimizer state follows its surviving entries.
    """

    name = "gmp"

    def __init__(self, sparsity, *, begin, end, every, initial=0.0, **kw):
        super().__init__(sparsity, **kw)
        begin, end, every = int(begin), int(end), int(every)
        if not (0 <= begin <= end and every >= 1):
            raise ValueError(f"begin, end, every: expected 0 <= begin <= end and every >= 1, "
                             f"got {begin}, {end}, {every}")
        if not 0.0 <= initial <= sparsity:
            raise ValueError(f"initial: expected 0 <= initial <= sparsity={sparsity}, got {initial}")
        self.begin, self.end, self.every, self.initial = begin, end, every, float(initial)

    def is_update_step(self, step):
        """True when update ``step`` is a pruning step: t0 + kΔt ≤ end, or end itself."""
        return self.begin <= step <= self.end and ((step - self.begin) % self.every == 0
                                                   or step == self.end)

    def target(self, step):
        """The schedule's sparsity after update ``step``."""
        return gmp_sparsity(step, self.sparsity, initial=self.initial, begin=self.begin,
                            end=self.end, every=self.every)

    def after_step(self, step, model, optimizer):
        """At a pruning step, prune every chosen layer by magnitude to its share of target(step)."""
        if not self.is_update_step(step):
            return False
        s = self.target(step)
        if s <= 0.0:
            return False
        counts = self._plan(model, s)
        changed = False
        for name, layer in prunable_layers(model):
            pname = f"{name}.weight"
            if isinstance(layer, Linear):
                if counts[name] == layer.weight.value.size:
                    continue
                flat = topk_indices(np.abs(layer.weight.value).reshape(-1), counts[name])
                sparsify_with_positions(model, name, flat, optimizer)
                changed = True
            elif counts[name] < layer.nnz:
                prune_to_count(layer, counts[name], optimizer, pname)
                changed = True
        return changed


def sparsify_with_positions(model, name, positions, optimizer=None):
    """Turn the dense Linear ``name`` of ``model`` into a SparseLinear storing ``positions``.

    ``positions`` are ascending flat positions ``row · in + col`` (CSR order) whose
    current values are kept. When ``optimizer`` holds the layer's parameters, its
    entries move to the new parameters and the weight's state buffers (dense,
    (out, in)) are gathered at the kept positions, so every survivor keeps its state.
    Returns the new layer.
    """
    linear = dict(model.named_modules())[name]
    if not isinstance(linear, Linear):
        raise TypeError(f"name: expected a dense Linear layer, {name!r} is a {type(linear).__name__}")
    w = linear.weight.value  # (out, in)
    positions = np.asarray(positions, dtype=np.int64)
    mask = np.zeros(w.shape, dtype=bool)
    mask.reshape(-1)[positions] = True
    sparse = SparseLinear.from_dense(linear, mask)
    replace_module(model, name, sparse)
    if optimizer is not None:
        for pname, old_p, new_p in ((f"{name}.weight", linear.weight, sparse.weight),
                                    (f"{name}.bias", linear.bias, sparse.bias)):
            if old_p is None:
                continue
            if optimizer.params.get(pname) is not old_p:
                raise ValueError(f"optimizer: does not hold the parameter {pname!r} of the model")
            optimizer.params[pname] = new_p
            bufs = optimizer.state.get(pname)
            if bufs and pname.endswith(".weight"):
                for k, buf in bufs.items():
                    bufs[k] = buf.reshape(-1)[positions].copy()  # (nnz,)
    return sparse


class _DropGrow(SparseMethod):
    """SET and RigL: a random pattern at step 0 (as [`Static`][refsparse.prune.methods.Static]), then drop and grow."""

    def __init__(self, sparsity, *, every, drop_fraction, end=None, **kw):
        super().__init__(sparsity, **kw)
        every = int(every)
        if every < 1:
            raise ValueError(f"every: expected a positive integer, got {every}")
        if not 0.0 <= float(drop_fraction) <= 1.0:
            raise ValueError(f"drop_fraction: expected a number in [0, 1], got {drop_fraction!r}")
        self.every, self.drop_fraction = every, float(drop_fraction)
        self.end = None if end is None else int(end)

    def setup(self, model):
        """Make the chosen layers sparse with random patterns (the layers' own initial values)."""
        super().setup(model)
        if self.sparsity > 0:
            sparsify(model, self.sparsity, distribution=self.distribution, criterion="random",
                     rng=self.rng, erk_power_scale=self.erk_power_scale)

    def is_update_step(self, step):
        """True every ``every`` updates, before ``end`` (if any)."""
        return step % self.every == 0 and (self.end is None or step < self.end)

    def fraction(self, step):
        """The fraction of stored entries dropped (and regrown) at an update."""
        return self.drop_fraction

    def after_step(self, step, model, optimizer):
        """At an update step, drop the smallest-magnitude entries of each layer and grow as many."""
        if self.sparsity == 0 or not self.is_update_step(step):
            return False
        frac = self.fraction(step)
        for name, layer in sparse_layers(model):
            w = layer.weight.value
            k = int(round(frac * w.nnz))
            if k == 0:
                continue
            pos = csr_positions(w)
            kept = pos[self._keep(w.data, k)]
            k = w.nnz - kept.size  # (the signed rule of SET may drop another count)
            grown = self._grow(layer, kept, k)
            set_pattern(layer, np.union1d(kept, grown), optimizer, f"{name}.weight")
        self._after_update(model)
        return True

    def _keep(self, data, k):
        """The entries kept at an update: all but the k of smallest |w| (ascending indices)."""
        return topk_indices(np.abs(data), data.size - k)

    def _after_update(self, model):
        pass


class SET(_DropGrow):
    """Sparse Evolutionary Training (Mocanu et al. 2018).

    Every ``every`` updates, in each sparse layer: drop some stored entries and grow as
    many at positions drawn uniformly among those not kept. A position dropped and drawn
    again continues (it is still stored); truly new entries start at zero. The stored
    count never changes. Which entries are dropped, ``drop``:

    - ``"magnitude"`` (the default): the k = round(ζ · nnz) entries of smallest |w| over
      all stored entries — Evci et al. 2020's SET baseline, and RigL's drop rule;
    - ``"signed"``: Mocanu et al.'s Algorithm 1 — the fraction ζ of the *positive* weights
      closest to zero (round(ζ · n₊) smallest w > 0) and ζ of the *negative* weights
      closest to zero (round(ζ · n₋) largest w < 0), separately; stored exact zeros lie
      between the two thresholds and are dropped too (as in the authors' code). The two
      signs keep their proportions, which the magnitude rule need not.
    """

    name = "set"

    def __init__(self, sparsity, *, every, drop_fraction, drop="magnitude", **kw):
        if drop not in ("magnitude", "signed"):
            raise ValueError(f"drop: expected 'magnitude' or 'signed', got {drop!r}")
        super().__init__(sparsity, every=every, drop_fraction=drop_fraction, **kw)
        self.drop = drop

    def _keep(self, data, k):
        if self.drop == "magnitude":
            return super()._keep(data, k)
        zeta = self.drop_fraction
        pos = np.flatnonzero(data > 0)  # (n₊,) ascending
        neg = np.flatnonzero(data < 0)  # (n₋,)
        keep_pos = pos[topk_indices(data[pos], pos.size - int(round(zeta * pos.size)))]
        keep_neg = neg[topk_indices(-data[neg], neg.size - int(round(zeta * neg.size)))]
        return np.union1d(keep_pos, keep_neg).astype(np.int64)

    def _grow(self, layer, kept, k):
        out, inp = layer.weight.value.shape
        return grow_random(kept, out * inp, k, self.rng)


class RigL(_DropGrow):
    """Rigging the Lottery (Evci et al. 2020).

    Every ``every`` updates while t < ``end``, in each sparse layer, with
    k = round(f(t) · nnz) and f the cosine-annealed [`cosine_drop_fraction`][refsparse.prune.methods.cosine_drop_fraction]:
    drop the k stored entries of smallest |w|; grow the k positions not kept where the
    *dense* gradient |∂L/∂W_ij| = |Σ_n dY[n, i] · X[n, j]| of the update's batch is
    largest (ties to the lower position). As in the paper's Algorithm 1, an update step
    changes the connections instead of the weights: the optimizer does not step there
    ([`skips_optimizer_step`][refsparse.prune.methods.RigL.skips_optimizer_step]). The dense gradient exists only at update
    steps and only in blocks of ``block_rows`` rows: (block_rows, in) at a time,
    never (out, in).
    """

    name = "rigl"

    def __init__(self, sparsity, *, every, drop_fraction, end, block_rows=64, **kw):
        if isinstance(end, bool) or not isinstance(end, (int, np.integer)) or end < 1:
            raise ValueError(f"end: expected a positive step number (RigL's T_end, which its cosine "
                             f"schedule divides by), got {end!r}")
        super().__init__(sparsity, every=every, drop_fraction=drop_fraction, end=end, **kw)
        self.block_rows = int(block_rows)

    def skips_optimizer_step(self, step):
        """RigL's Algorithm 1: at an update step the connections change and the weights do
        not (``if t mod ΔT = 0 and t < T_end: update connections, else θ ← θ − α∇θL``),
        so the drop ranks the weights as they were before the step."""
        return self.sparsity > 0 and self.is_update_step(step)

    def fraction(self, step):
        """The cosine-annealed drop fraction f(step)."""
        return cosine_drop_fraction(step, self.drop_fraction, self.end)

    def before_step(self, step, model):
        """At an update step, ask every sparse layer to keep dY (for the dense gradient)."""
        keep = self.sparsity > 0 and self.is_update_step(step)
        for _, layer in sparse_layers(model):
            layer.keep_grad_output = keep

    def _after_update(self, model):
        for _, layer in sparse_layers(model):
            layer.keep_grad_output = False
            layer.grad_output = None

    def _grow(self, layer, kept, k):
        dy, x = layer.grad_output, layer.last_input  # (N, out), (N, in)
        if dy is None or x is None:
            raise RuntimeError("RigL: the layer kept no gradient for this step; call "
                               "before_step(step, model) before the forward pass")
        return dense_grad_topk(dy, x, kept, k, self.block_rows)


def dense_grad_topk(dy, x, exclude, k, block_rows=64):
    """The k flat positions outside ``exclude`` with the largest |dYᵀ X| entries, ascending.

    dy (N, out), x (N, in). The (out, in) matrix dYᵀX is formed ``block_rows`` rows at a
    time; a running best-k list of (score, position) is merged with each block's best k.
    Ties go to the lower position. ``exclude`` is ascending.
    """
    n_out, n_in = dy.shape[1], x.shape[1]
    best_pos = np.empty(0, np.int64)
    best_score = np.empty(0, dy.dtype)
    for r0 in range(0, n_out, block_rows):
        r1 = min(r0 + block_rows, n_out)
        g = np.abs(dy[:, r0:r1].T @ x)  # (r1 − r0, in): this block of the dense gradient
        lo, hi = np.searchsorted(exclude, [r0 * n_in, r1 * n_in])
        g.reshape(-1)[exclude[lo:hi] - r0 * n_in] = -1.0  # stored entries cannot grow
        top = topk_indices(g.reshape(-1), min(k, g.size))  # ascending within the block
        pos = np.concatenate([best_pos, top + r0 * n_in])  # still ascending
        score = np.concatenate([best_score, g.reshape(-1)[top]])
        keep = topk_indices(score, min(k, score.size))
        best_pos, best_score = pos[keep], score[keep]
    if best_pos.size < k or (best_score < 0).any():
        raise ValueError(f"k: expected at most {n_out * n_in - exclude.size} free positions, got {k}")
    return best_pos
