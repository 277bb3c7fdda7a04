"""Making a model sparse: which layers, how many entries each keeps, and the swap itself.

[`sparsify`][refsparse.prune.sparsify.sparsify] turns chosen dense [`Linear`][refsparse.nn.layers.Linear] layers of a model into
[`SparseLinear`][refsparse.nn.sparse.SparseLinear] layers, in place, keeping the entries a criterion
([`refsparse.prune.criteria`][refsparse.prune.criteria]) chooses. The pieces:

- [`prunable_layers`][refsparse.prune.sparsify.prunable_layers] — the layers sparsified by default: the attention projections
  (q, k, v, out of every [`MultiHeadAttention`][refsparse.nn.attention.MultiHeadAttention], self and cross) and
  the feed-forward layers (linear1, linear2 of [`FeedForward`][refsparse.nn.transformer.FeedForward]).
  Embeddings, the output head and LayerNorm stay dense.
- [`layer_nnz`][refsparse.prune.sparsify.layer_nnz] — how many entries each layer keeps: the same sparsity everywhere
  ("uniform") or Erdős–Rényi-Kernel densities ("erk", [`erk_densities`][refsparse.prune.sparsify.erk_densities]).
- [`replace_module`][refsparse.prune.sparsify.replace_module] — the swap: ``setattr`` on the parent module. Modules call
  their children through attributes (``self.q_proj.forward(x)``), so the model's forward
  and backward run unchanged with the new layer.
- [`sparse_layers`][refsparse.prune.sparsify.sparse_layers], [`sparsity_report`][refsparse.prune.sparsify.sparsity_report], [`overall_sparsity`][refsparse.prune.sparsify.overall_sparsity] — what is
  sparse now, and how much.
- [`sparsify_like`][refsparse.prune.sparsify.sparsify_like] — gives a freshly built (dense) model the sparse layers a
  checkpoint needs, so that ``load_state_dict`` can take its CSR weights.

Counting rule: a sparsity s on ``total`` cells keeps n_keep(total, s) = round(total·(1 − s))
entries (Python's round, half to even). Ties go to the lower flat (row-major) index.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from .._checks import check_finite, is_int
from ..kernels.select import topk_indices
from ..models import OutputHead
from ..nn import FeedForward, Linear, Module, ModuleList, MultiHeadAttention, SparseLinear
from .criteria import block_mask, check_sparsity, n_keep, nm_mask

__all__ = [
    "CRITERIA",
    "DISTRIBUTIONS",
    "erk_densities",
    "layer_nnz",
    "overall_sparsity",
    "prunable_layers",
    "replace_module",
    "sparse_layers",
    "sparsify",
    "sparsify_like",
    "sparsity_report",
]

CRITERIA = ("magnitude", "global", "random", "nm", "block")
DISTRIBUTIONS = ("uniform", "erk")

_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")  # children of MultiHeadAttention
_FEEDFORWARD = ("linear1", "linear2")  # children of FeedForward
_KINDS = ("attention", "feedforward")


def _check_model(model):
    if not isinstance(model, Module):
        raise TypeError(f"model: expected a refsparse.nn.Module, got {type(model).__name__}")


# ----------------------------------------------------------------------------------------
# which layers
# ----------------------------------------------------------------------------------------
def prunable_layers(model, include=("attention", "feedforward")):
    """The linear layers to sparsify: ``[(dotted_name, layer), …]`` in ``named_modules`` order.

    ``include`` is a tuple (or list) of kinds:

    - ``"attention"``: ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` of every
      [`MultiHeadAttention`][refsparse.nn.attention.MultiHeadAttention] (self- and cross-attention);
    - ``"feedforward"``: ``linear1``, ``linear2`` of every [`FeedForward`][refsparse.nn.transformer.FeedForward];

    or the string ``"all"``: every linear layer of the model except those inside the output
    head (``models.OutputHead``, whose ``proj`` maps to the vocabulary). A single kind may
    be given as a string. The layers are [`Linear`][refsparse.nn.layers.Linear] or, once sparsified,
    [`SparseLinear`][refsparse.nn.sparse.SparseLinear]; embeddings, positional tables, LayerNorm and the head are never
    listed.
    """
    _check_model(model)
    if isinstance(include, str):
        include = "all" if include == "all" else (include,)
    if include != "all" and (not isinstance(include, (tuple, list)) or not all(k in _KINDS for k in include)):
        raise ValueError(f"include: expected 'all' or a tuple of kinds from {_KINDS}, got {include!r}")
    modules = dict(model.named_modules())
    found = []
    for name, mod in model.named_modules():
        if not name or not isinstance(mod, (Linear, SparseLinear)):
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = modules[parent_name]
        if include == "all":
            parts = name.split(".")
            ancestors = (modules[".".join(parts[:i])] for i in range(len(parts)))
            if not any(isinstance(a, OutputHead) for a in ancestors):
                found.append((name, mod))
        elif ("attention" in include and isinstance(parent, MultiHeadAttention) and attr in _ATTENTION) \
                or ("feedforward" in include and isinstance(parent, FeedForward) and attr in _FEEDFORWARD):
            found.append((name, mod))
    return found


def sparse_layers(model):
    """Every [`SparseLinear`][refsparse.nn.sparse.SparseLinear] of ``model``: ``[(dotted_name, layer), …]``, ``named_modules`` order."""
    _check_model(model)
    return [(name, mod) for name, mod in model.named_modules() if isinstance(mod, SparseLinear)]


def replace_module(model, dotted_name, new_module):
    """Put ``new_module`` where ``model``'s submodule ``dotted_name`` is; returns the old one.

    The swap is ``setattr(parent, last_part, new_module)`` (and the parent's list slot, for
    a [`ModuleList`][refsparse.nn.module.ModuleList]), so parameter names stay the same: ``blocks.0.attn.q_proj.weight``
    names the new layer's weight. The root itself (name "") cannot be replaced.
    """
    _check_model(model)
    if not isinstance(new_module, Module):
        raise TypeError(f"new_module: expected a refsparse.nn.Module, got {type(new_module).__name__}")
    if not isinstance(dotted_name, str) or not dotted_name:
        raise ValueError(f"dotted_name: expected the dotted name of a submodule, got {dotted_name!r}")
    parent_name, _, attr = dotted_name.rpartition(".")
    parent = dict(model.named_modules()).get(parent_name)
    if parent is None or attr not in parent._modules:
        raise ValueError(f"dotted_name: expected the name of a submodule of the model, got {dotted_name!r}")
    old = parent._modules[attr]
    setattr(parent, attr, new_module)
    if isinstance(parent, ModuleList):
        parent._list[int(attr)] = new_module
    return old


def _resolve_layers(model, layers):
    """``layers`` (dotted names, or None for [`prunable_layers`][refsparse.prune.sparsify.prunable_layers]) -> [(name, layer)]."""
    if layers is None:
        return prunable_layers(model)
    if isinstance(layers, str) or not isinstance(layers, (list, tuple)) \
            or not all(isinstance(n, str) for n in layers):
        raise TypeError(f"layers: expected a list of dotted module names, got {layers!r}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers: expected distinct names, got {list(layers)}")
    modules = dict(model.named_modules())
    chosen = []
    for name in layers:
        if name not in modules or not name:
            raise ValueError(f"layers: expected names of submodules of the model, got {name!r}")
        if not isinstance(modules[name], (Linear, SparseLinear)):
            raise TypeError(f"layers: expected Linear or SparseLinear layers, {name!r} is a "
                            f"{type(modules[name]).__name__}")
        chosen.append((name, modules[name]))
    return chosen


# ----------------------------------------------------------------------------------------
# how many entries each layer keeps
# ----------------------------------------------------------------------------------------
def _check_shapes(shapes):
    if not isinstance(shapes, dict):
        raise TypeError(f"shapes: expected a dict name -> (out, in), got {type(shapes).__name__}")
    checked = {}
    for name, shape in shapes.items():
        if not (isinstance(shape, (tuple, list)) and len(shape) == 2
                and all(is_int(d) and d >= 1 for d in shape)):
            raise ValueError(f"shapes[{name!r}]: expected (out, in), two positive integers, got {shape!r}")
        checked[name] = (int(shape[0]), int(shape[1]))
    return checked


def _check_power(erk_power_scale):
    if isinstance(erk_power_scale, (bool, np.bool_)) or not isinstance(
            erk_power_scale, (int, float, np.integer, np.floating)):
        raise TypeError(f"erk_power_scale: expected a number >= 0, got {erk_power_scale!r}")
    if not (math.isfinite(erk_power_scale) and erk_power_scale >= 0):
        raise ValueError(f"erk_power_scale: expected a finite number >= 0, got {erk_power_scale!r}")
    return float(erk_power_scale)


def erk_densities(shapes, sparsity, erk_power_scale=1.0):
    """Erdős–Rényi-Kernel layer densities, before any rounding: {name: density in (0, 1]}.

    Evci et al. 2020, "Rigging the Lottery", §3 (their code: ``get_sparsities`` with
    ``erdos_renyi_kernel``). Layer l of shape (n_out, n_in) has N_l = n_out · n_in cells
    and the raw density

        r_l = ((n_in + n_out) / (n_in · n_out)) ** p,     p = erk_power_scale (1 in the paper)

    (for a 2-D weight the "kernel" sum of the shape is n_in + n_out). The density is
    ρ_l = ε · r_l, with ε chosen so that the layers keep (1 − s) of all their cells:

        Σ_{l ∉ D} ε r_l N_l + Σ_{l ∈ D} N_l = (1 − s) Σ_l N_l
        ⇒ ε = ((1 − s) Σ_l N_l − Σ_{l ∈ D} N_l) / Σ_{l ∉ D} r_l N_l,

    where D is the set of layers made dense (ρ = 1). D starts empty; while the largest
    ε r_l of a layer not in D exceeds 1, the layers with that largest r_l join D and ε is
    solved again. Smaller layers (larger r_l) are denser; p < 1 softens the differences,
    p = 0 gives the uniform density 1 − s.

    One difference from the reference code: it counts each layer's kept entries as
    N_l − floor(s N_l) inside the equation for ε; here ε is solved with real numbers and
    the rounding to integers happens once, in [`layer_nnz`][refsparse.prune.sparsify.layer_nnz].
    """
    shapes = _check_shapes(shapes)
    s = check_sparsity("sparsity", sparsity)
    p = _check_power(erk_power_scale)
    size = {name: out * inp for name, (out, inp) in shapes.items()}  # N_l
    raw = {name: ((out + inp) / (out * inp)) ** p for name, (out, inp) in shapes.items()}  # r_l
    total = sum(size.values())
    dense = set()
    eps = 0.0
    while len(dense) < len(shapes):
        rhs = (1.0 - s) * total - sum(size[name] for name in dense)
        divisor = sum(raw[name] * size[name] for name in shapes if name not in dense)
        eps = rhs / divisor
        r_max = max(raw[name] for name in shapes if name not in dense)
        if eps * r_max <= 1.0:
            break
        dense.update(name for name in shapes if name not in dense and raw[name] == r_max)
    return {name: 1.0 if name in dense else eps * raw[name] for name in shapes}


def layer_nnz(shapes, sparsity, distribution="uniform", erk_power_scale=1.0):
    """The number of stored entries of each layer: {name: nnz}.

    ``shapes`` maps a layer's name to its weight shape (out, in); the result has the same
    keys in the same order.

    - ``"uniform"``: every layer keeps n_keep(out · in, s) = round(out · in · (1 − s)).
      Each layer is rounded on its own, so the sum may differ from n_keep(Σ sizes, s) by
      up to half an entry per layer.
    - ``"erk"``: the densities ρ_l of [`erk_densities`][refsparse.prune.sparsify.erk_densities] give real counts a_l = ρ_l N_l
      with Σ_l a_l = (1 − s) Σ_l N_l. They become integers by largest-remainder rounding:
      each layer gets floor(a_l), then the K − Σ floor(a_l) entries left over, where
      K = n_keep(Σ_l N_l, s), go one each to the layers with the largest fractional part
      a_l − floor(a_l) (ties → the earlier layer in ``shapes``), never beyond a layer's
      N_l cells. So the counts add up to K *exactly*: ERK gives the requested overall
      sparsity.
    """
    shapes = _check_shapes(shapes)
    s = check_sparsity("sparsity", sparsity)
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution: expected one of {DISTRIBUTIONS}, got {distribution!r}")
    if distribution == "uniform":
        _check_power(erk_power_scale)
        return {name: n_keep(out * inp, s) for name, (out, inp) in shapes.items()}

    density = erk_densities(shapes, s, erk_power_scale)
    names = list(shapes)
    size = [shapes[name][0] * shapes[name][1] for name in names]  # N_l
    real = [min(density[name] * n, n) for name, n in zip(names, size)]  # a_l
    count = [min(math.floor(a), n) for a, n in zip(real, size)]
    left = n_keep(sum(size), s) - sum(count)  # entries still to hand out (or, by rounding fuzz, < 0)
    by_remainder = sorted(range(len(names)), key=lambda i: (-(real[i] - count[i]), i))
    while left > 0:  # one pass gives each layer at most one more; more passes only by fuzz
        for i in by_remainder:
            if left > 0 and count[i] < size[i]:
                count[i] += 1
                left -= 1
    while left < 0:
        for i in reversed(by_remainder):
            if left < 0 and count[i] > 0:
                count[i] -= 1
                left += 1
    return dict(zip(names, count))


# ----------------------------------------------------------------------------------------
# the swap
# ----------------------------------------------------------------------------------------
def _sparse_from_entries(layer, keep):
    """A new SparseLinear storing the entries ``keep`` (ascending entry indices) of ``layer``.

    Values, bias and stored zeros are copied; nothing is shared with ``layer``.
    """
    w = layer.weight.value  # (out, in) CSR, canonical
    rows = np.repeat(np.arange(w.shape[0]), np.diff(w.indptr))[keep]  # (k,) ascending
    indptr = np.zeros(w.shape[0] + 1, dtype=w.indptr.dtype)
    np.cumsum(np.bincount(rows, minlength=w.shape[0]), out=indptr[1:])
    new_w = sp.csr_array((w.data[keep].copy(), w.indices[keep].copy(), indptr), shape=w.shape)
    new_w.has_canonical_format = True  # a subset of a canonical pattern, in order
    new = SparseLinear(layer.in_features, layer.out_features, bias=layer.bias is not None, weight=new_w)
    if layer.bias is not None:
        new.bias.value[...] = layer.bias.value
    return new


def _pruned(layer, mask=None, keep=None):
    """The SparseLinear keeping ``mask`` (dense layer) or entries ``keep`` (sparse layer)."""
    new = SparseLinear.from_dense(layer, mask) if mask is not None else _sparse_from_entries(layer, keep)
    object.__setattr__(new, "training", layer.training)
    return new


def _magnitudes(name, layer):
    """|W| as a flat vector: every cell of a dense layer, the stored entries of a sparse one."""
    values = layer.weight.values  # (out, in) for a dense layer, (nnz,) for a sparse one
    check_finite(f"{name}.weight", values)
    return np.abs(values).reshape(-1)  # (out·in,) row-major, or (nnz,) in CSR order


def sparsify(model, sparsity, *, distribution="uniform", criterion="magnitude", layers=None, rng=None,
             erk_power_scale=1.0, n=None, m=None, block=None):
    """Make the chosen linear layers of ``model`` sparse, in place; returns ``model``.

    Each chosen layer is replaced ([`replace_module`][refsparse.prune.sparsify.replace_module]) by a [`SparseLinear`][refsparse.nn.sparse.SparseLinear]
    storing the entries the criterion keeps, with their current values (zeros included)
    and the same bias. ``layers`` lists dotted module names (default:
    [`prunable_layers`][refsparse.prune.sparsify.prunable_layers]). The new layers have new Parameter objects: build the
    optimizer afterwards.

    Criteria, and how many entries each layer keeps:

    - ``"magnitude"``: the largest |W| of each layer; counts from
      [`layer_nnz`][refsparse.prune.sparsify.layer_nnz] (``distribution`` "uniform" or "erk", ``erk_power_scale``).
    - ``"random"``: as many entries, at uniformly random positions drawn from ``rng``
      (a ``numpy.random.Generator``, required).
    - ``"global"``: one magnitude threshold over all the chosen layers
      ([`global_magnitude_masks`][refsparse.prune.criteria.global_magnitude_masks]): K = n_keep(Σ out·in, s)
      entries in all, ties by (layer order, flat index).
    - ``"nm"``: N:M along the input dimension (``n``, ``m`` required); the density is
      n/m and ``sparsity`` is not used (it is still checked).
    - ``"block"``: whole blocks ``block`` = (bh, bw) (default (1, 4)) of largest Σ|W|,
      n_keep(n_blocks, s) blocks per layer.

    ``distribution`` other than "uniform" applies to "magnitude" and "random" only;
    giving it (or ``n``/``m``/``block``) to a criterion that does not use it is an error.

    A layer that is already a [`SparseLinear`][refsparse.nn.sparse.SparseLinear] is pruned further among its stored
    entries: "magnitude", "random" and "global" choose among the stored entries only (its
    count must not exceed its nnz: sparsify never grows a pattern; a layer already at its
    count is left as it is). "nm" and "block" need dense layers and raise a TypeError for sparse ones.
    """
    _check_model(model)
    s = check_sparsity("sparsity", sparsity)
    if criterion not in CRITERIA:
        raise ValueError(f"criterion: expected one of {CRITERIA}, got {criterion!r}")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution: expected one of {DISTRIBUTIONS}, got {distribution!r}")
    if distribution != "uniform" and criterion not in ("magnitude", "random"):
        raise ValueError(f"distribution: {distribution!r} applies to criterion 'magnitude' or 'random', "
                         f"got criterion {criterion!r} (which sets its own layer counts)")
    if criterion == "nm":
        if n is None or m is None:
            raise ValueError(f"n, m: expected both for criterion 'nm', got n={n!r}, m={m!r}")
    elif n is not None or m is not None:
        raise ValueError(f"n, m: only used with criterion 'nm', got criterion {criterion!r}")
    if block is not None and criterion != "block":
        raise ValueError(f"block: only used with criterion 'block', got criterion {criterion!r}")
    if criterion == "random" and not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator for criterion 'random', "
                        f"got {type(rng).__name__}")
    chosen = _resolve_layers(model, layers)
    if criterion in ("nm", "block"):
        for name, layer in chosen:
            if isinstance(layer, SparseLinear):
                raise TypeError(f"layers: criterion {criterion!r} needs dense Linear layers, "
                                 f"{name!r} is already a SparseLinear")

    new = {}  # name -> the SparseLinear replacing it
    if criterion in ("magnitude", "random"):
        shapes = {name: (layer.out_features, layer.in_features) for name, layer in chosen}
        counts = layer_nnz(shapes, s, distribution, erk_power_scale)
        for name, layer in chosen:
            k = counts[name]
            sparse = isinstance(layer, SparseLinear)
            candidates = layer.nnz if sparse else layer.weight.value.size
            if k > candidates:
                raise ValueError(f"sparsity: layer {name!r} would keep {k} entries but stores only "
                                 f"{candidates}; sparsify removes entries, never adds them")
            if sparse and k == candidates:
                continue
            if criterion == "magnitude":
                keep = topk_indices(_magnitudes(name, layer), k)  # (k,) ascending
            else:
                keep = np.sort(rng.choice(candidates, size=k, replace=False))
            new[name] = _pruned_by_positions(layer, keep)
    elif criterion == "global":
        scores = [_magnitudes(name, layer) for name, layer in chosen]  # per layer, flat
        cells = sum(layer.out_features * layer.in_features for _, layer in chosen)
        k = n_keep(cells, s)
        flat = np.concatenate(scores) if scores else np.empty(0)
        if k > flat.size:
            raise ValueError(f"sparsity: the layers would keep {k} entries in all but store only "
                             f"{flat.size}; sparsify removes entries, never adds them")
        kept = np.zeros(flat.size, dtype=bool)
        kept[topk_indices(flat, k)] = True
        start = 0
        for (name, layer), sc in zip(chosen, scores):
            keep = np.flatnonzero(kept[start:start + sc.size])
            start += sc.size
            if isinstance(layer, SparseLinear) and keep.size == layer.nnz:
                continue
            new[name] = _pruned_by_positions(layer, keep)
    else:
        for name, layer in chosen:
            w = layer.weight.value
            if criterion == "nm":
                mask = nm_mask(w, n, m)
            else:
                mask = block_mask(w, s, (1, 4) if block is None else block)
            new[name] = _pruned(layer, mask=mask)

    for name, layer in new.items():
        replace_module(model, name, layer)
    return model


def _pruned_by_positions(layer, keep):
    """``keep``: ascending flat positions (dense layer) or entry indices (sparse layer)."""
    if isinstance(layer, SparseLinear):
        return _pruned(layer, keep=keep)
    mask = np.zeros(layer.weight.value.shape, dtype=bool)
    mask.reshape(-1)[keep] = True
    return _pruned(layer, mask=mask)


def sparsify_like(model, sparse_param_names):
    """Make the layers owning the given weights sparse (empty pattern), ready for a load.

    ``sparse_param_names`` are parameter names such as ``"blocks.0.attn.q_proj.weight"``.
    Each owning module that is a dense [`Linear`][refsparse.nn.layers.Linear] becomes a [`SparseLinear`][refsparse.nn.sparse.SparseLinear]
    with no stored entry (same shape, dtype and bias), a placeholder: ``load_state_dict``
    then replaces the weight's value by the checkpoint's CSR array, pattern and all.
    Layers already sparse are left alone. Returns ``model``.
    """
    _check_model(model)
    if isinstance(sparse_param_names, str):
        raise TypeError("sparse_param_names: expected a list of parameter names, got a string")
    modules = dict(model.named_modules())
    todo = []
    for pname in sparse_param_names:
        if not isinstance(pname, str) or not pname.endswith(".weight"):
            raise ValueError(f"sparse_param_names: expected names ending in '.weight', got {pname!r}")
        name = pname[: -len(".weight")]
        layer = modules.get(name)
        if not name or layer is None:
            raise ValueError(f"sparse_param_names: {pname!r} names no layer of the model")
        if isinstance(layer, SparseLinear):
            continue
        if not isinstance(layer, Linear):
            raise TypeError(f"sparse_param_names: {pname!r} belongs to a {type(layer).__name__}, "
                            "expected a Linear")
        todo.append((name, layer))
    for name, layer in todo:  # every name checked before any layer changes
        replace_module(model, name, _pruned(layer, mask=np.zeros(layer.weight.shape, dtype=bool)))
    return model


# ----------------------------------------------------------------------------------------
# reports
# ----------------------------------------------------------------------------------------
def sparsity_report(model):
    """One dict per parameter, in ``parameters()`` order.

    Keys: ``name``, ``shape`` (tuple), ``size`` (cells, ∏ shape), ``nnz`` (stored entries;
    a dense parameter stores all its cells), ``sparsity`` (1 − nnz/size, 0.0 for an empty
    parameter) and ``sparse`` (whether the value is a CSR array).
    """
    _check_model(model)
    rows = []
    for name, p in model.parameters():
        size = int(np.prod(p.shape, dtype=np.int64))
        nnz = int(p.value.nnz) if p.is_sparse else size
        rows.append({"name": name, "shape": tuple(p.shape), "size": size, "nnz": nnz,
                     "sparsity": 1.0 - nnz / size if size else 0.0, "sparse": p.is_sparse})
    return rows


def overall_sparsity(model, only_prunable=True):
    """1 − (Σ stored) / (Σ cells) over a set of parameters (0.0 when the set is empty).

    ``only_prunable=True``: the weights (not the biases) of [`prunable_layers`][refsparse.prune.sparsify.prunable_layers] and of
    every [`SparseLinear`][refsparse.nn.sparse.SparseLinear] — the sparsity [`sparsify`][refsparse.prune.sparsify.sparsify] promises. ``False``: every
    parameter of the model (embeddings, norms, biases, the head included).
    """
    _check_model(model)
    if only_prunable:
        names = {f"{name}.weight" for name, _ in prunable_layers(model) + sparse_layers(model)}
        rows = [r for r in sparsity_report(model) if r["name"] in names]
    else:
        rows = sparsity_report(model)
    cells = sum(r["size"] for r in rows)
    return 1.0 - sum(r["nnz"] for r in rows) / cells if cells else 0.0
