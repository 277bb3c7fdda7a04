"""What a training run is made of: five small configs and the `TrainConfig` that holds them.

=================  ===================================================================
``model``          `ModelConfig` — the network's shape, precision and attention
``data``           `DataConfig` — the task, the text and the validation split
``optim``          `OptimConfig` — steps, batch, AdamW, the learning-rate schedule
``sparse``         `SparseConfig` — sparse weights and how they change (prune/)
``run``            `RunConfig` — seed, run directory, evaluation, logging, saving
=================  ===================================================================

Every field name is unique over the five groups, so a setting has one *flat key*: the name
users type in ``refsparse train --set lr=1e-3`` (also ``--set optim.lr=1e-3``) and in a TOML
file. ``TrainConfig(lr=1e-3, d_model=64)`` takes flat keys too, and `TrainConfig.from_dict`
reads both the grouped dict of `TrainConfig.to_dict` and the flat dict that older
checkpoints stored.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

__all__ = ["DENSE_BASELINE", "DataConfig", "GROUPS", "ModelConfig", "OptimConfig", "RunConfig",
           "SparseConfig", "TrainConfig", "flat_keys", "group_of"]


@dataclass
class ModelConfig:
    """The network: sizes, activation, normalisation, precision and attention pattern."""

    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 3  # lm: blocks; seq2seq: encoder layers and decoder layers each
    d_ff: int = 512
    seq_len: int = 64  # lm: context length T
    dropout: float = 0.0
    activation: str = "gelu"
    norm_first: bool = True  # pre-LN trains more easily at high learning rates
    dtype: str = "float32"
    attention: str = "local:window=8"  # pattern spec: e.g. "local:window=64", or "full" (dense)


@dataclass
class DataConfig:
    """The task and its data."""

    task: str = "lm"  # "lm" (language model on a text) or "copy" | "reverse" | "sort"
    text: str | None = None  # lm: path of a UTF-8 text file; None = the built-in corpus
    val_fraction: float = 0.1
    val_pieces: int = 10  # validation = the tail of each of this many parts of the text
    # seq2seq tasks
    alphabet_size: int = 10
    min_len: int = 1
    max_len: int = 12


@dataclass
class OptimConfig:
    """AdamW with warm-up and cosine decay, gradient clipping, for ``steps`` batches."""

    steps: int = 1200
    batch_size: int = 32
    lr: float = 3e-3  # peak learning rate
    min_lr: float = 3e-4  # reached at the last step
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # global gradient norm; 0 disables clipping


@dataclass
class SparseConfig:
    """Sparse weights of the attention projections and feed-forward layers (refsparse.prune)."""

    sparsity: float = 0.9  # fraction of those weights NOT stored; 0 = a dense model
    method: str = "gmp"  # static | gmp | imp | set | rigl (see refsparse.prune.factory)
    distribution: str = "uniform"  # uniform | erk: how the kept weights are shared by layers
    erk_power_scale: float = 1.0
    prune_begin: float = 0.1  # gmp: first pruning step, as a fraction of steps
    prune_end: float = 0.6  # gmp: last pruning step (sparsity reached), fraction of steps
    prune_every: int = 10  # gmp: steps between prunings
    update_every: int = 50  # set/rigl: steps between drop-and-grow updates
    drop_fraction: float = 0.3  # set: ζ; rigl: initial α of the cosine-annealed fraction
    set_drop: str = "magnitude"  # set: "magnitude" (Evci et al.) or "signed" (Mocanu et al.)
    update_end: float = 0.75  # rigl: no updates from this fraction of steps on
    imp_rounds: int = 2  # imp: pruning rounds after the dense run (each retrains)
    imp_rewind: float = 0.05  # imp: rewind survivors to this fraction of steps (0: to init)
    imp_control: str = "rewind"  # imp: "rewind" (the ticket) or "reinit" (random control)


@dataclass
class RunConfig:
    """Randomness, where the run's files go, and how often it evaluates, logs and saves."""

    seed: int = 0
    name: str | None = None  # run directory name; default the task ("lm-0", "lm-1", …)
    out_dir: str = "runs"
    eval_every: int = 200
    eval_batches: int = 4  # validation batches at each evaluation (all of them at the end)
    log_every: int = 10
    save_every: int = 200  # steps between checkpoints (and one at the end, and on Ctrl-C)
    sample_chars: int = 200  # lm: length of the sample printed at the end
    compare_steps: int = 8  # lm: timed steps of the final model and of its dense twin (0: none)


# `refsparse train --dense`: the baseline of the Sparsity Transformer the defaults train — the
# same network with dense weights and full causal attention, for the 600 steps that take it
# about as long as the sparse default's 1200 (the default run before the sparse one)
DENSE_BASELINE = {"sparsity": 0.0, "method": "static", "attention": "full", "steps": 600}

GROUPS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "sparse": SparseConfig,
          "run": RunConfig}
_GROUP_OF = {f.name: g for g, cls in GROUPS.items() for f in fields(cls)}
assert len(_GROUP_OF) == sum(len(fields(c)) for c in GROUPS.values()), "flat keys must be unique"


def flat_keys():
    """Every flat key, mapped to its type as written in the dataclass (``"int"``, ``"str | None"``…)."""
    return {f.name: f.type for cls in GROUPS.values() for f in fields(cls)}


def group_of(key):
    """The group holding the flat key ``key`` (also accepts ``"group.key"``); ValueError if none."""
    if "." in key:
        group, _, name = key.partition(".")
        if group in GROUPS and _GROUP_OF.get(name) == group:
            return group, name
    elif key in _GROUP_OF:
        return _GROUP_OF[key], key
    raise ValueError(f"unknown key {key!r}; known keys: {', '.join(sorted(_GROUP_OF))}")


@dataclass(init=False)
class TrainConfig:
    """Everything a run needs, in five groups; the defaults train the Sparsity Transformer — the
    decoder-only LM pruned to 90% sparse weights by GMP, with local attention of window 8 — in
    about 2 minutes on 2 cores (``DENSE_BASELINE`` holds what ``--dense`` changes).

    ``TrainConfig(model=ModelConfig(d_model=64), run=RunConfig(seed=1))`` or, with flat keys,
    ``TrainConfig(d_model=64, seed=1)``; both may be mixed (a flat key wins over its group).
    """

    model: ModelConfig
    data: DataConfig
    optim: OptimConfig
    sparse: SparseConfig
    run: RunConfig

    def __init__(self, model=None, data=None, optim=None, sparse=None, run=None, **flat):
        given = {"model": model, "data": data, "optim": optim, "sparse": sparse, "run": run}
        for g, cls in GROUPS.items():
            value = given[g]
            if value is None:
                value = cls()
            elif isinstance(value, dict):
                value = cls(**value)
            elif not isinstance(value, cls):
                raise TypeError(f"{g}: expected a {cls.__name__} or a dict, got {type(value).__name__}")
            setattr(self, g, value)
        for key, v in flat.items():
            g, name = group_of(key)
            setattr(getattr(self, g), name, v)

    # -- flat keys ------------------------------------------------------------------------
    def get(self, key):
        """The value of a flat key (``"lr"``) or a dotted one (``"optim.lr"``)."""
        g, name = group_of(key)
        return getattr(getattr(self, g), name)

    def flat(self):
        """The config as one flat dict {key: value} (the keys of ``--set``)."""
        return {k: v for g in GROUPS for k, v in asdict(getattr(self, g)).items()}

    def to_dict(self):
        """The config as a grouped plain dict (what checkpoints store)."""
        return {g: asdict(getattr(self, g)) for g in GROUPS}

    @classmethod
    def from_dict(cls, d):
        """The config of a dict made by `to_dict` or `flat` (older checkpoints
        stored the flat form); unknown keys are an error."""
        d = dict(d)
        groups = {g: d.pop(g) for g in GROUPS if isinstance(d.get(g), dict)}
        for g, values in groups.items():
            known = {f.name for f in fields(GROUPS[g])}
            unknown = sorted(set(values) - known)
            if unknown:
                raise ValueError(f"config: unknown keys {unknown} in {g}; known keys: {sorted(known)}")
        unknown = sorted(k for k in d if k not in _GROUP_OF and not ("." in k and k.split(".")[0] in GROUPS))
        if unknown:
            raise ValueError(f"config: unknown keys {unknown}; known keys: {sorted(_GROUP_OF)}")
        return cls(**groups, **d)

    def replace(self, **flat):
        """A copy with some flat keys changed."""
        return TrainConfig.from_dict({**self.flat(), **flat})

    # -- checks ----------------------------------------------------------------------------
    def validate(self):
        """Check every field; raise ValueError naming the first bad one; return self."""
        from . import data as D
        from .prune.factory import METHODS

        m, d, o, s, r = self.model, self.data, self.optim, self.sparse, self.run
        if d.task != "lm" and d.task not in D.TASKS:
            raise ValueError(f"task: expected 'lm' or one of {D.TASKS}, got {d.task!r}")
        for k, v in (("steps", o.steps), ("batch_size", o.batch_size), ("eval_every", r.eval_every),
                     ("eval_batches", r.eval_batches), ("log_every", r.log_every),
                     ("save_every", r.save_every), ("seq_len", m.seq_len),
                     ("prune_every", s.prune_every), ("update_every", s.update_every),
                     ("imp_rounds", s.imp_rounds)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{k}: expected a positive integer, got {v!r}")
        if isinstance(r.compare_steps, bool) or not isinstance(r.compare_steps, int) or r.compare_steps < 0:
            raise ValueError(f"compare_steps: expected an integer >= 0, got {r.compare_steps!r}")
        if isinstance(r.seed, bool) or not isinstance(r.seed, int) or r.seed < 0:
            raise ValueError(f"seed: expected an integer >= 0, got {r.seed!r}")
        for k, v in (("lr", o.lr), ("min_lr", o.min_lr), ("weight_decay", o.weight_decay),
                     ("beta1", o.beta1), ("beta2", o.beta2), ("grad_clip", o.grad_clip),
                     ("dropout", m.dropout), ("sparsity", s.sparsity),
                     ("erk_power_scale", s.erk_power_scale), ("val_fraction", d.val_fraction)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{k}: expected a finite number, got {v!r}")
        if not o.lr > 0:
            raise ValueError(f"lr: expected a number > 0, got {o.lr!r}")
        if not 0 <= o.min_lr <= o.lr:
            raise ValueError(f"min_lr: expected 0 <= min_lr <= lr={o.lr}, got {o.min_lr}")
        if isinstance(o.warmup_steps, bool) or not isinstance(o.warmup_steps, int) \
                or not 0 <= o.warmup_steps <= o.steps:
            raise ValueError(f"warmup_steps: expected 0..steps={o.steps}, got {o.warmup_steps}")
        if o.grad_clip < 0:
            raise ValueError(f"grad_clip: expected a number >= 0 (0 disables clipping), "
                             f"got {o.grad_clip!r}")
        if not 0.0 <= s.sparsity < 1.0:
            raise ValueError(f"sparsity: expected a number in [0, 1), got {s.sparsity!r}")
        if s.method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {s.method!r}")
        if s.distribution not in ("uniform", "erk"):
            raise ValueError(f"distribution: expected 'uniform' or 'erk', got {s.distribution!r}")
        if s.set_drop not in ("magnitude", "signed"):
            raise ValueError(f"set_drop: expected 'magnitude' or 'signed', got {s.set_drop!r}")
        for k in ("prune_begin", "prune_end", "update_end", "imp_rewind", "drop_fraction"):
            v = getattr(s, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{k}: expected a fraction in [0, 1], got {v!r}")
        if s.method == "imp" and round(s.imp_rewind * o.steps) >= o.steps:
            raise ValueError(f"imp_rewind: expected a step k = round(imp_rewind · steps) before the last "
                             f"(k < steps={o.steps}), got {s.imp_rewind!r} (k = "
                             f"{round(s.imp_rewind * o.steps)}): the rewind state is taken before step k + 1")
        if s.prune_begin > s.prune_end:
            raise ValueError(f"prune_end: expected >= prune_begin={s.prune_begin}, got {s.prune_end}")
        if s.imp_control not in ("rewind", "reinit"):
            raise ValueError(f"imp_control: expected 'rewind' or 'reinit', got {s.imp_control!r}")
        if s.method not in ("static", "dense") and s.sparsity == 0:
            raise ValueError(f"sparsity: method {s.method!r} needs a sparsity in (0, 1) "
                             f"(e.g. --sparsity 0.9), got 0")
        if r.name is not None and (not isinstance(r.name, str) or not r.name
                                   or r.name in (".", "..") or "/" in r.name or "\\" in r.name):
            raise ValueError(f"name: expected a directory name (no '/'), got {r.name!r}")
        self._check_attention()
        return self

    def _check_attention(self):
        """Build each layer's pattern once at seq_len: a bad spec or value is found here, before
        anything is written."""
        from . import patterns as P

        m = self.model
        specs = m.attention if isinstance(m.attention, (list, tuple)) else [m.attention]
        t = m.seq_len if self.data.task == "lm" else self.data.max_len + 2
        for spec in specs:
            if not isinstance(spec, str):
                raise TypeError(f"attention: expected a pattern spec string, got {spec!r}")
            if spec.strip() in ("full", ""):
                continue
            try:
                P.parse(spec, t)
            except (ValueError, TypeError) as e:
                raise ValueError(f"attention: {spec!r} is not a valid pattern at seq_len={t}: {e}") from None
