"""The method object for a training config: the one module that knows every method.

`make_method` turns the ``[sparse]`` section of a `refsparse.config.TrainConfig` into the
object `refsparse.train.Trainer` calls at its hooks — [`Static`][refsparse.prune.methods.Static],
[`GMP`][refsparse.prune.methods.GMP], [`SET`][refsparse.prune.methods.SET] and
[`RigL`][refsparse.prune.methods.RigL] from `refsparse.prune.methods`, or
[`IMP`][refsparse.prune.imp.IMP] from `refsparse.prune.imp`, which builds on them — and
METHODS names them. It sits above both modules, so neither imports the other back.
"""

from __future__ import annotations

from .imp import IMP
from .methods import GMP, SET, RigL, Static

__all__ = ["METHODS", "make_method"]

METHODS = ("dense", "static", "gmp", "imp", "set", "rigl")


def make_method(method, sparsity, *, steps, distribution="uniform", seed=0, erk_power_scale=1.0,
                prune_begin=0.1, prune_end=0.6, prune_every=10, update_every=50,
                drop_fraction=0.3, update_end=0.75, set_drop="magnitude", imp_rounds=2,
                imp_rewind=0.05, imp_control="rewind", init_seed=0):
    """The method object for a training config; fractions of ``steps`` become step numbers.

    ``prune_begin``/``prune_end``: GMP's t0 and t0 + nΔt as fractions of ``steps``;
    ``prune_every``: GMP's Δt. ``update_every``: SET/RigL's ΔT; ``drop_fraction``:
    SET's ζ, RigL's initial α; ``set_drop``: SET's drop rule ("magnitude" or "signed");
    ``update_end``: RigL's stop step as a fraction of ``steps``. ``imp_rounds``,
    ``imp_rewind`` (a fraction of ``steps``), ``imp_control`` and ``init_seed`` (the run's
    seed, from which the reinit control draws fresh weights): IMP's. "dense" gives None.
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    common = dict(distribution=distribution, seed=seed, erk_power_scale=erk_power_scale)
    if method == "dense":
        return None
    if method == "imp":
        return IMP(sparsity, steps=steps, rounds=imp_rounds, rewind=imp_rewind,
                   control=imp_control, init_seed=init_seed, **common)
    if method == "static":
        return Static(sparsity, **common)
    if method == "gmp":
        return GMP(sparsity, begin=round(prune_begin * steps), end=round(prune_end * steps),
                   every=prune_every, **common)
    if method == "set":
        return SET(sparsity, every=update_every, drop_fraction=drop_fraction, drop=set_drop, **common)
    return RigL(sparsity, every=update_every, drop_fraction=drop_fraction,
                end=max(1, round(update_end * steps)), **common)
