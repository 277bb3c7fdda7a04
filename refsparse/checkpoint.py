"""Checkpoints: model, optimizer state, RNG states, step, config and tokenizer in one file.

The file is an ``.npz`` (a zip of ``.npy`` arrays) that is read with
``allow_pickle=False``, so loading a checkpoint never runs code. Its members:

- ``__meta__``: UTF-8 JSON as a uint8 array — format name and version, refsparse
  version, the model kind and config, the step, the RNG states, the tokenizer, the
  optimizer's scalars, any extra run information, and a SHA-256 of every other member;
- ``model/<name>``: a dense parameter's values;
- ``model/<name>/data``, ``/indices``, ``/indptr``, ``/shape``: a sparse (CSR)
  weight, stored as its CSR arrays only — never densified; the column indices in the
  narrowest unsigned integer type that holds them (uint16 up to 65536 columns);
- ``optim/<key>``: the optimizer's per-parameter buffers.

Writing is atomic: the file is written next to its destination under a temporary
name, flushed to disk, then renamed over the destination, so a failure in the middle
of a save leaves the previous checkpoint as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

FORMAT = "refsparse-checkpoint"
VERSION = 1

__all__ = ["Checkpoint", "CheckpointError", "save_checkpoint", "load_checkpoint", "restore_model"]


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated, corrupted, or does not fit the model."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns."""

    path: str
    meta: dict  # the JSON header (config, step, rng, tokenizer, …)
    model_state: dict  # name -> ndarray or scipy.sparse.csr_array
    optim_state: dict = field(default_factory=dict)  # as Optimizer.state_dict() returns it

    @property
    def kind(self):
        return self.meta["kind"]

    @property
    def config(self):
        return self.meta["config"]

    @property
    def step(self):
        return self.meta["step"]


def _digest(arrays):
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _index_dtype(n_columns):
    for dt in (np.uint8, np.uint16, np.uint32):
        if n_columns - 1 <= np.iinfo(dt).max:
            return dt
    return np.int64


def _json_safe(x):
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def save_checkpoint(path, model, *, optimizer=None, step=0, rng_states=None, tokenizer=None,
                    extra=None):
    """Write ``model`` (and optionally the optimizer and RNG states) to ``path`` atomically.

    Parameters
    ----------
    path : str or os.PathLike
        The destination; its directory must exist.
    model : refsparse Module with a ``config`` dataclass (``to_dict()``)
    optimizer : refsparse.optim.Optimizer, optional
    step : int
        The number of training steps taken.
    rng_states : dict of str -> numpy Generator or bit_generator.state dict, optional
    tokenizer : object with ``to_json()``, or a dict, optional
    extra : dict, optional
        JSON-serialisable run information (the training config, …).
    """
    from . import __version__

    path = os.fspath(path)
    arrays = {}
    sparse_names = []
    for name, p in model.parameters():
        if p.is_sparse:
            w = p.value
            arrays[f"model/{name}/data"] = w.data
            # column indices in the narrowest unsigned type that holds them (uint16 for up
            # to 65536 columns): a sparse weight costs 4 + 2 bytes per entry in float32
            arrays[f"model/{name}/indices"] = w.indices.astype(_index_dtype(w.shape[1]))
            arrays[f"model/{name}/indptr"] = w.indptr
            arrays[f"model/{name}/shape"] = np.asarray(w.shape, dtype=np.int64)
            sparse_names.append(name)
        else:
            arrays[f"model/{name}"] = p.value
    optim_scalars = {}
    if optimizer is not None:
        for k, v in optimizer.state_dict().items():
            if isinstance(v, np.ndarray):
                arrays[f"optim/{k}"] = v
            else:
                optim_scalars[k] = _json_safe(v)
    rngs = {}
    for k, g in (rng_states or {}).items():
        rngs[k] = _json_safe(g.bit_generator.state if isinstance(g, np.random.Generator) else g)
    if tokenizer is not None and not isinstance(tokenizer, dict):
        tokenizer = tokenizer.to_json()
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "refsparse_version": __version__,
        "kind": type(model).__name__,
        "config": _json_safe(model.config.to_dict()),
        "step": int(step),
        "rng": rngs,
        "tokenizer": tokenizer,
        "sparse": sparse_names,
        "optimizer": None if optimizer is None else type(optimizer).__name__,
        "optim_scalars": optim_scalars,
        "extra": _json_safe(extra or {}),
        "sha256": _digest(arrays),
    }
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path):
    """Read and verify a checkpoint; raises :class:`CheckpointError` with a clear message.

    Missing files, files that are not checkpoints, truncated or corrupted files (the
    zip CRCs and the SHA-256 of the header both guard the contents) all raise.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint: no such file: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            if "__meta__" not in names:
                raise CheckpointError(f"checkpoint: {path} is not a refsparse checkpoint (no header)")
            arrays = {n: z[n] for n in names}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as e:
        raise CheckpointError(
            f"checkpoint: {path} is truncated, corrupted or not a refsparse checkpoint ({e})"
        ) from None
    try:
        meta = json.loads(arrays.pop("__meta__").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint: {path} has a corrupted header ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint: {path} is not a refsparse checkpoint")
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint: {path} has format version {meta.get('version')}, this refsparse reads {VERSION}"
        )
    if _digest(arrays) != meta.get("sha256"):
        raise CheckpointError(f"checkpoint: {path} is corrupted (its contents fail the SHA-256 check)")

    model_state = {}
    sparse = set(meta.get("sparse", []))
    for name in sparse:
        shape = tuple(int(s) for s in arrays[f"model/{name}/shape"])
        index_dtype = np.int32 if max(shape) < 2**31 else np.int64
        try:
            model_state[name] = sp.csr_array(
                (arrays[f"model/{name}/data"], arrays[f"model/{name}/indices"].astype(index_dtype),
                 arrays[f"model/{name}/indptr"].astype(index_dtype)), shape=shape)
            model_state[name].check_format(full_check=True)
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint: {path} holds an invalid sparse weight {name!r} ({e})") \
                from None
    for key, a in arrays.items():
        if key.startswith("model/") and key[6:] not in sparse and not any(
            key.startswith(f"model/{s}/") for s in sparse
        ):
            model_state[key[6:]] = a
    optim_state = {k[6:]: a for k, a in arrays.items() if k.startswith("optim/")}
    if meta.get("optimizer") is not None:
        optim_state.update(meta.get("optim_scalars", {}))
    return Checkpoint(path, meta, model_state, optim_state)


def restore_model(model, ckpt):
    """Load ``ckpt``'s weights into ``model`` after checking the kind and config match.

    Sparse weights take the checkpoint's pattern: a dense ``Linear`` of the model whose
    weight the checkpoint stores as CSR first becomes a ``SparseLinear``
    (:func:`refsparse.prune.sparsify_like`). Raises :class:`CheckpointError` naming every
    config field that differs.
    """
    from .prune.sparsify import sparsify_like

    if type(model).__name__ != ckpt.kind:
        raise CheckpointError(f"checkpoint: holds a {ckpt.kind}, the model is a {type(model).__name__}")
    ours = _json_safe(model.config.to_dict())
    diff = {k: (ckpt.config.get(k), ours.get(k)) for k in set(ours) | set(ckpt.config)
            if ckpt.config.get(k) != ours.get(k)}
    if diff:
        shown = ", ".join(f"{k}: checkpoint {a!r} vs model {b!r}" for k, (a, b) in sorted(diff.items()))
        raise CheckpointError(f"checkpoint: config does not match the model ({shown})")
    try:
        params = dict(model.parameters())
        sparsify_like(model, [n for n in ckpt.meta.get("sparse", [])
                              if n in params and not params[n].is_sparse])
        model.load_state_dict(ckpt.model_state)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint: weights do not fit the model ({e})") from None
    return model


def generator_from_state(state):
    """A numpy Generator continuing exactly from a saved ``bit_generator.state`` dict."""
    bitgen = getattr(np.random, state["bit_generator"])()
    bitgen.state = state
    return np.random.Generator(bitgen)
