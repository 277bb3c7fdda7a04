"""The sweep file: a base training config, axes to cross, explicit trials — read and checked.

A sweep file is TOML with four sections, all optional but ``[axes]`` or ``[[trials]]``::

    [sweep]
    name = "sparse_training"   # the sweep's directory is OUT_DIR/NAME/ (default: the file's stem)
    out_dir = "sweeps"         # relative to the current directory (default "sweeps")
    threads = 1                # Numba threads per trial (default 1), the same on every backend

    [base]                     # anything `refsparse train` takes: the keys of TrainConfig
    steps = 1500

    [axes]                     # crossed: one trial per combination
    method = ["static", "gmp", "set", "rigl"]
    sparsity = [0.8, 0.9, 0.95]
    seed = [0, 1, 2]

    [[trials]]                 # an explicit trial, crossed with the axes it does not set
    sparsity = 0.0             # here: the dense model, at seeds 0, 1, 2
    method = "static"

Every trial is ``refsparse train`` with ``--set key=value`` for each of its settings (and
``--task`` for the task, as on the command line, so a task's defaults apply the same way).
Its id is readable and deterministic: the settings that vary across the sweep, then 8 hex
digits of the SHA-256 of all its settings and the thread count, e.g.
``method-rigl_sparsity-0.9_seed-1-3fa2c1d0``. A trial whose settings change gets a new id:
a result is never reused for a config it was not trained with.

The whole file is checked before anything runs — sections, keys, types, empty axes, and each
trial's arguments through ``refsparse train``'s own parser and config checks — and the first
problem is one ``ValueError`` line that names the file and the key.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass, field

__all__ = ["Sweep", "Trial", "load_sweep", "train_keys", "SECTIONS", "SWEEP_KEYS"]

SECTIONS = ("sweep", "base", "axes", "trials")
SWEEP_KEYS = {"name": "a string", "out_dir": "a string", "threads": "an integer >= 1",
              "description": "a string"}
# set by the sweep for every trial: its directory is <sweep dir>/<trial id>/
RESERVED = {"name": "the sweep names each trial's directory by its id",
            "out_dir": "the sweep puts each trial in its own directory (use [sweep] out_dir)"}


@dataclass
class Trial:
    """One training run of a sweep."""

    id: str
    settings: dict  # every key the sweep sets: base, then the axes' values, then the trial's
    label: dict  # the settings that vary across the sweep (what the table shows), seed included
    argv: list  # the arguments of `refsparse train`, run in the sweep's directory


@dataclass
class Sweep:
    """A checked sweep file and its trials."""

    path: str
    name: str
    directory: str  # absolute: OUT_DIR/NAME
    threads: int
    base: dict
    axes: dict
    explicit: list
    trials: list = field(default_factory=list)
    description: str = ""
    source: str = ""  # the file's text, copied into the sweep's directory


def train_keys():
    """``{key: type text}`` of the settings a trial may set (TrainConfig's flat keys, those of
    ``--set``)."""
    from ..config import flat_keys

    return {name: str(kind) for name, kind in flat_keys().items()}


def _kind(type_text):
    """'int', 'float', 'bool', 'str' or None (anything else) from a field's annotation text."""
    parts = {p.strip() for p in type_text.split("|")} - {"None"}
    if len(parts) == 1:
        (p,) = parts
        return {"int": "int", "float": "float", "bool": "bool", "str": "str"}.get(p)
    return None


def _check_value(where, value, kind):
    """``value`` in the field's type (int widened to float), or ValueError naming ``where``."""
    def bad(expected):
        return ValueError(f"{where}: expected {expected}, got {value!r} ({type(value).__name__})")

    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if kind == "str":
        if not isinstance(value, str):
            raise bad("a string")
        if value.strip().lower() in ("none", "null"):
            raise bad("a string other than none/null (a sweep sets no None values)")
        return value
    if isinstance(value, (dict, list)) or hasattr(value, "isoformat"):
        raise bad("a string, number or boolean")
    return value


def _check_table(where, table, keys, *, many=False):
    """The ``key = value`` pairs of one section, checked and normalized."""
    if not isinstance(table, dict):
        raise ValueError(f"{where}: expected a table of key = value, got {type(table).__name__}")
    out = {}
    for key, value in table.items():
        if key in RESERVED:
            raise ValueError(f"{where}.{key}: not allowed here: {RESERVED[key]}")
        if key not in keys:
            raise ValueError(f"{where}.{key}: unknown key; known keys: "
                             f"{', '.join(sorted(set(keys) - set(RESERVED)))}")
        kind = _kind(keys[key])
        if many:
            if not isinstance(value, list):
                raise ValueError(f"{where}.{key}: expected a list of values, got {value!r}")
            if not value:
                raise ValueError(f"{where}.{key}: expected a list of one or more values, got []")
            values = [_check_value(f"{where}.{key}[{i}]", v, kind) for i, v in enumerate(value)]
            seen = set()
            for i, v in enumerate(values):
                if (type(v), v) in seen:
                    raise ValueError(f"{where}.{key}[{i}]: {v!r} is listed twice")
                seen.add((type(v), v))
            out[key] = values
        else:
            out[key] = _check_value(f"{where}.{key}", value, kind)
    return out


def _text(value):
    """A value as ``--set key=value`` text that the CLI parses back to the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # round-trips exactly
    return str(value)


def _slug(text):
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-")


def _trial_id(label, settings, threads):
    digest = hashlib.sha256(json.dumps({"settings": settings, "threads": threads},
                                       sort_keys=True).encode()).hexdigest()[:8]
    readable = "_".join(_slug(f"{k}-{_text(v)}") for k, v in label.items())[:80].rstrip("_-")
    return f"{readable}-{digest}" if readable else f"trial-{digest}"


def train_argv(trial_id, settings, base_dir):
    """The ``refsparse train`` arguments of a trial, run in the sweep's directory.

    ``text`` (a file path) is made absolute against ``base_dir`` (the directory the sweep
    was started from), since the trial runs in the sweep's directory.
    """
    argv = ["train", "--no-progress", "--out-dir", ".", "--name", trial_id]
    if "task" in settings:
        argv += ["--task", settings["task"]]
    for key in sorted(settings):
        if key == "task":
            continue
        value = settings[key]
        if key == "text":
            value = os.path.abspath(os.path.join(base_dir, value))
        argv += ["--set", f"{key}={_text(value)}"]
    return argv


def _product(axes):
    keys = list(axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]


def load_sweep(path, *, out_dir=None, check_train=None):
    """Read and check a sweep file; return its `Sweep` with every trial.

    Parameters
    ----------
    path : str
        The TOML file.
    out_dir : str, optional
        Overrides ``[sweep] out_dir``.
    check_train : callable, optional
        ``check_train(argv)`` checks one trial's ``refsparse train`` arguments as
        ``refsparse train`` would (the CLI passes its own parser and config builder), raising
        ValueError with a one-line message. Without it, each trial's settings go through
        ``TrainConfig.from_dict(...).validate()``.

    Raises
    ------
    ValueError
        One line naming the file and the first bad key (or trial) and what was wrong.
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            source = f.read().decode("utf-8")
        data = tomllib.loads(source)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such sweep file") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"{path}: not valid TOML: {' '.join(str(e).split())}") from None

    def fail(message):
        return ValueError(f"{path}: {' '.join(str(message).split())}")

    try:
        unknown = [k for k in data if k not in SECTIONS]
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown section; expected {', '.join(SECTIONS)}")
        meta = data.get("sweep", {})
        if not isinstance(meta, dict):
            raise ValueError("sweep: expected a table [sweep]")
        for key, value in meta.items():
            if key not in SWEEP_KEYS:
                raise ValueError(f"sweep.{key}: unknown key; known keys: {', '.join(SWEEP_KEYS)}")
            if key == "threads":
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"sweep.threads: expected an integer >= 1, got {value!r}")
            elif not isinstance(value, str) or (key != "description" and not value.strip()):
                raise ValueError(f"sweep.{key}: expected {SWEEP_KEYS[key]}, got {value!r}")
        name = meta.get("name", os.path.splitext(os.path.basename(path))[0])
        if _slug(name) != name or name in (".", ".."):
            raise ValueError(f"sweep.name: expected letters, digits and . _ + - only, got {name!r}")
        threads = meta.get("threads", 1)
        keys = train_keys()
        base = _check_table("base", data.get("base", {}), keys)
        axes = _check_table("axes", data.get("axes", {}), keys, many=True)
        for key in axes:
            if key in base:
                raise ValueError(f"axes.{key}: also set in [base]; set it in one place")
        explicit = data.get("trials", [])
        if not isinstance(explicit, list):
            raise ValueError("trials: expected an array of tables [[trials]]")
        explicit = [_check_table(f"trials[{i}]", t, keys) for i, t in enumerate(explicit)]
        for i, t in enumerate(explicit):
            if not t:
                raise ValueError(f"trials[{i}]: expected at least one key = value")
    except ValueError as e:
        raise fail(e) from None

    # the settings that vary across the sweep, in the file's order: what labels a trial
    varying = list(axes) + [k for t in explicit for k in t if k not in axes]
    varying = list(dict.fromkeys(varying))
    points = []
    if axes:
        points += [(None, p) for p in _product(axes)]
    for i, t in enumerate(explicit):
        free = {k: v for k, v in axes.items() if k not in t}
        points += [(i, {**p, **t}) for p in _product(free)]
    if not points:
        points = [(None, {})]
    base_dir = os.getcwd()
    directory = os.path.abspath(os.path.join(out_dir or meta.get("out_dir", "sweeps"), name))
    check = check_train or _check_with_train_config
    trials, ids = [], set()
    for _, point in points:
        settings = {**base, **point}
        label = {k: settings[k] for k in varying if k in settings}
        trial_id = _trial_id(label, settings, threads)
        if trial_id in ids:
            continue  # the same settings twice: one trial
        ids.add(trial_id)
        argv = train_argv(trial_id, settings, base_dir)
        try:
            check(argv)
        except (ValueError, TypeError) as e:
            raise fail(f"trial {trial_id}: {e}") from None
        trials.append(Trial(trial_id, settings, label, argv))
    return Sweep(path=path, name=name, directory=directory, threads=threads, base=base, axes=axes,
                 explicit=explicit, trials=trials, description=meta.get("description", ""),
                 source=source)


def _check_with_train_config(argv):
    """The library's check of a trial when no CLI is at hand: TrainConfig's own."""
    from ..train import TrainConfig

    settings = {}
    kinds = train_keys()
    it = iter(argv)
    for a in it:
        if a == "--set":
            key, text = next(it).split("=", 1)
            kind = _kind(kinds[key])
            settings[key] = (int(text) if kind == "int" else float(text) if kind == "float"
                             else text == "true" if kind == "bool" else text)
        elif a == "--task":
            settings["task"] = next(it)
    if "warmup_steps" not in settings:  # as the CLI does: the default warm-up is cut to steps
        defaults = TrainConfig().flat()
        settings["warmup_steps"] = min(defaults["warmup_steps"], settings.get("steps", defaults["steps"]))
    TrainConfig.from_dict(settings).validate()
