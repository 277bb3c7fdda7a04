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
- ``optim/<key>``: the optimizer's per-parameter buffers;
- ``state/<path>``: the arrays of a nested run state (a sparse training method's, e.g. the
  rewind point of lottery tickets), whose JSON skeleton is the header's ``state``
  (`pack_state`).

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

__all__ = ["Checkpoint", "CheckpointError", "generator_from_state", "load_checkpoint", "pack_state",
           "remove_temporary_files", "restore_model", "save_checkpoint", "unpack_state"]


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated, corrupted, or does not fit the model."""


@dataclass
class Checkpoint:
    """What [`load_checkpoint`][refsparse.checkpoint.load_checkpoint] returns."""

    path: str
    meta: dict  # the JSON header (config, step, rng, tokenizer, …)
    model_state: dict  # name -> ndarray or scipy.sparse.csr_array
    optim_state: dict = field(default_factory=dict)  # as Optimizer.state_dict() returns it
    state_arrays: dict = field(default_factory=dict)  # "state/…" members, for unpack_state

    @property
    def kind(self):
        return self.meta["kind"]

    @property
    def config(self):
        return self.meta["config"]

    @property
    def step(self):
        return self.meta["step"]

    @property
    def extra(self):
        """The run information saved with ``extra=`` (a dict)."""
        return self.meta.get("extra") or {}

    @property
    def state(self):
        """The nested state saved with ``state=`` (None when there was none)."""
        skeleton = self.meta.get("state")
        return None if skeleton is None else unpack_state(skeleton, self.state_arrays)


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


def pack_state(tree, prefix="state"):
    """Split a nested state into a JSON skeleton and the arrays it refers to.

    ``tree`` holds dicts (str keys), lists, JSON scalars, ndarrays and scipy CSR arrays.
    Returns ``(skeleton, arrays)``: each ndarray becomes ``{"__array__": key}`` and each CSR
    array ``{"__csr__": key}`` (its ``key/data``, ``/indices``, ``/indptr``, ``/shape``).
    `unpack_state` inverts it exactly (dtypes and patterns included).
    """
    arrays = {}

    def walk(x, path):
        if isinstance(x, dict):
            return {str(k): walk(v, f"{path}/{k}") for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(x)]
        if sp.issparse(x):
            arrays[f"{path}/data"] = x.data
            arrays[f"{path}/indices"] = x.indices
            arrays[f"{path}/indptr"] = x.indptr
            arrays[f"{path}/shape"] = np.asarray(x.shape, dtype=np.int64)
            return {"__csr__": path}
        if isinstance(x, np.ndarray):
            arrays[path] = x
            return {"__array__": path}
        return _json_safe(x)

    return walk(tree, prefix), arrays


def unpack_state(skeleton, arrays):
    """The nested state of `pack_state`'s ``(skeleton, arrays)``."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {"__array__"}:
            return arrays[skeleton["__array__"]]
        if set(skeleton) == {"__csr__"}:
            k = skeleton["__csr__"]
            w = sp.csr_array((arrays[f"{k}/data"], arrays[f"{k}/indices"], arrays[f"{k}/indptr"]),
                             shape=tuple(int(v) for v in arrays[f"{k}/shape"]))
            w.has_canonical_format = True
            return w
        return {k: unpack_state(v, arrays) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unpack_state(v, arrays) for v in skeleton]
    return skeleton


def save_checkpoint(path, model, *, optimizer=None, step=0, rng_states=None, tokenizer=None,
                    extra=None, state=None):
    """Write ``model`` (and optionally the optimizer and RNG states) to ``path`` atomically.

    Writing is atomic: a temporary ``.tmp-*.npz`` beside ``path``, flushed and fsynced, then
    renamed over ``path``; on any failure (a full disk, Ctrl-C) the temporary file is removed
    and the file at ``path`` is left as it was.

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
    state : dict, optional
        A nested state with arrays (a sparse training method's `state_dict`), stored
        with `pack_state`; read back as ``Checkpoint.state``.
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
    skeleton = None
    if state is not None:
        skeleton, state_arrays = pack_state(state)
        arrays.update(state_arrays)
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
        "state": skeleton,
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
    try:  # make the rename itself durable (not possible on every file system)
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def remove_temporary_files(directory):
    """Delete the ``.tmp-*.npz`` files a killed save left in ``directory``; returns their names."""
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if name.startswith(".tmp-") and name.endswith(".npz"):
            try:
                os.unlink(os.path.join(directory, name))
                removed.append(name)
            except OSError:
                pass
    return removed


def load_checkpoint(path):
    """Read and verify a checkpoint; raises [`CheckpointError`][refsparse.checkpoint.CheckpointError] with a clear message.

    Missing files, files that are not checkpoints, truncated or corrupted files (the
    zip CRCs and the SHA-256 of the header both guard the contents) all raise.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint: no such file: {path}")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint: {path} is a directory, not a checkpoint file")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise CheckpointError(f"checkpoint: {path} is a single .npy array, not a refsparse "
                                  "checkpoint (.npz archive)")
        with loaded as z:
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
    missing = [k for k in ("kind", "config", "step") if k not in meta]
    if missing:
        raise CheckpointError(f"checkpoint: {path} has a header without {', '.join(map(repr, missing))}")
    if not isinstance(meta["config"], dict) or not isinstance(meta["step"], int):
        raise CheckpointError(f"checkpoint: {path} has a header whose 'config' is not a dict or whose "
                              "'step' is not an integer")

    model_state = {}  # in the order the parameters were saved: the model's
    sparse = set(meta.get("sparse", []))
    for key in arrays:
        if not key.startswith("model/"):
            continue
        name = key[6:]
        if name not in sparse and name.endswith("/data") and name[:-5] in sparse:
            name = name[:-5]
            try:
                shape = tuple(int(s) for s in arrays[f"model/{name}/shape"])
                index_dtype = np.int32 if max(shape) < 2**31 else np.int64
                model_state[name] = sp.csr_array(
                    (arrays[f"model/{name}/data"], arrays[f"model/{name}/indices"].astype(index_dtype),
                     arrays[f"model/{name}/indptr"].astype(index_dtype)), shape=shape)
                model_state[name].check_format(full_check=True)
            except (ValueError, KeyError) as e:
                raise CheckpointError(f"checkpoint: {path} holds an invalid sparse weight {name!r} ({e})") \
                    from None
        elif name not in sparse and not any(name.startswith(f"{s}/") for s in sparse):
            model_state[name] = arrays[key]
    absent = sorted(sparse - set(model_state))
    if absent:
        raise CheckpointError(f"checkpoint: {path} lacks the arrays of the sparse weights {absent}")
    optim_state = {k[6:]: a for k, a in arrays.items() if k.startswith("optim/")}
    if meta.get("optimizer") is not None:
        optim_state.update(meta.get("optim_scalars", {}))
    state_arrays = {k: a for k, a in arrays.items() if k.startswith("state/")}
    return Checkpoint(path, meta, model_state, optim_state, state_arrays)


def restore_model(model, ckpt):
    """Load ``ckpt``'s weights into ``model`` after checking the kind and config match.

    Sparse weights take the checkpoint's pattern: a dense ``Linear`` of the model whose
    weight the checkpoint stores as CSR first becomes a ``SparseLinear``
    ([`refsparse.prune.sparsify_like`][refsparse.prune.sparsify.sparsify_like]). Raises [`CheckpointError`][refsparse.checkpoint.CheckpointError] naming every
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
