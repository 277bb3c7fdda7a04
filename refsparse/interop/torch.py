"""Copy weights between refsparse modules and their PyTorch counterparts, both ways.

torch is imported only when a function here is called, so refsparse never needs it.

=============================  ==========================================
refsparse                      PyTorch
=============================  ==========================================
``nn.Linear``                  ``torch.nn.Linear``
``nn.LayerNorm``               ``torch.nn.LayerNorm``
``nn.MultiHeadAttention``      ``torch.nn.MultiheadAttention`` — its packed
                               ``in_proj_weight`` is [W_q; W_k; W_v] stacked
                               along the output axis
``nn.EncoderLayer``            ``torch.nn.TransformerEncoderLayer``
``nn.DecoderLayer``            ``torch.nn.TransformerDecoderLayer``
``models.Transformer``         ``torch.nn.Transformer`` (the encoder and decoder
                               stacks with their final norms; embeddings and the
                               output head are not part of torch's module)
=============================  ==========================================

The torch layers must be built with ``batch_first=True`` and the same ``norm_first``,
activation, ``eps`` and sizes. Typical use::

    from refsparse.interop.torch import copy_to_torch
    copy_to_torch(layer, torch_layer)   # now both compute the same function
"""

from __future__ import annotations

import numpy as np


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "refsparse.interop.torch needs PyTorch: pip install torch==2.13.0 (CPU build)"
        ) from e
    return torch


def _join(prefix, name):
    return f"{prefix}.{name}" if prefix else name


def name_map(module, ours="", theirs=""):
    """The list of ``(torch_key, [our parameter names])`` for ``module``.

    A torch tensor is the concatenation, along axis 0, of the listed refsparse
    parameters (one name for all but the packed attention projections).
    """
    from ..models import Transformer
    from ..nn import DecoderLayer, EncoderLayer, LayerNorm, Linear, MultiHeadAttention

    out = []
    if isinstance(module, (Linear, LayerNorm)):
        for name in ("weight", "bias"):
            if getattr(module, name, None) is not None:
                out.append((_join(theirs, name), [_join(ours, name)]))
    elif isinstance(module, MultiHeadAttention):
        out.append((_join(theirs, "in_proj_weight"),
                    [_join(ours, f"{p}_proj.weight") for p in "qkv"]))
        if module.q_proj.bias is not None:
            out.append((_join(theirs, "in_proj_bias"),
                        [_join(ours, f"{p}_proj.bias") for p in "qkv"]))
        out += name_map(module.out_proj, _join(ours, "out_proj"), _join(theirs, "out_proj"))
    elif isinstance(module, (EncoderLayer, DecoderLayer)):
        out += name_map(module.self_attn, _join(ours, "self_attn"), _join(theirs, "self_attn"))
        if isinstance(module, DecoderLayer):
            out += name_map(module.cross_attn, _join(ours, "cross_attn"),
                            _join(theirs, "multihead_attn"))
        out += name_map(module.ff.linear1, _join(ours, "ff.linear1"), _join(theirs, "linear1"))
        out += name_map(module.ff.linear2, _join(ours, "ff.linear2"), _join(theirs, "linear2"))
        norms = ("norm1", "norm2", "norm3") if isinstance(module, DecoderLayer) else ("norm1", "norm2")
        for n in norms:
            out += name_map(getattr(module, n), _join(ours, n), _join(theirs, n))
    elif isinstance(module, Transformer):
        for i, layer in enumerate(module.encoder):
            out += name_map(layer, _join(ours, f"encoder.{i}"), _join(theirs, f"encoder.layers.{i}"))
        out += name_map(module.encoder_norm, _join(ours, "encoder_norm"), _join(theirs, "encoder.norm"))
        for i, layer in enumerate(module.decoder):
            out += name_map(layer, _join(ours, f"decoder.{i}"), _join(theirs, f"decoder.layers.{i}"))
        out += name_map(module.decoder_norm, _join(ours, "decoder_norm"), _join(theirs, "decoder.norm"))
    else:
        raise TypeError(
            f"module: expected Linear, LayerNorm, MultiHeadAttention, EncoderLayer, DecoderLayer "
            f"or Transformer, got {type(module).__name__}"
        )
    return out


def _dense(p):
    return p.value.toarray() if p.is_sparse else p.value


def torch_state_dict(module):
    """refsparse module -> a dict of torch tensors under PyTorch's parameter names."""
    torch = _torch()
    params = dict(module.parameters())
    return {
        tkey: torch.from_numpy(np.concatenate([_dense(params[n]) for n in names], axis=0).copy())
        for tkey, names in name_map(module)
    }


def copy_to_torch(module, torch_module):
    """Copy ``module``'s weights into ``torch_module`` (dtype converted to torch's)."""
    torch = _torch()
    sd = torch_state_dict(module)
    theirs = torch_module.state_dict()
    missing = sorted(set(sd) - set(theirs))
    if missing:
        raise ValueError(f"torch_module: has no parameters named {missing}")
    with torch.no_grad():
        for k, t in sd.items():
            if tuple(theirs[k].shape) != tuple(t.shape):
                raise ValueError(f"torch_module: {k} has shape {tuple(theirs[k].shape)}, expected {tuple(t.shape)}")
            theirs[k].copy_(t.to(theirs[k].dtype))
    return torch_module


def copy_from_torch(torch_module, module):
    """Copy ``torch_module``'s weights into ``module`` (converted to the module's dtype)."""
    theirs = {k: v.detach().cpu().numpy() for k, v in torch_module.state_dict().items()}
    params = dict(module.parameters())
    for tkey, names in name_map(module):
        if tkey not in theirs:
            raise ValueError(f"torch_module: expected a parameter named {tkey!r}")
        t = theirs[tkey]
        sizes = [params[n].shape[0] for n in names]
        if t.shape[0] != sum(sizes):
            raise ValueError(f"torch_module: {tkey} has shape {t.shape}, expected first dim {sum(sizes)}")
        for n, part in zip(names, np.split(t, np.cumsum(sizes)[:-1], axis=0)):
            p = params[n]
            if tuple(part.shape) != tuple(p.shape):
                raise ValueError(f"torch_module: {tkey} gives {n} shape {part.shape}, expected {p.shape}")
            if p.is_sparse:  # copy only the stored entries: the pattern stays as it is
                rows = np.repeat(np.arange(p.shape[0]), np.diff(p.value.indptr))
                p.values[...] = part[rows, p.value.indices].astype(p.dtype)
            else:
                p.values[...] = part.astype(p.dtype)
    return module


def torch_grads(module, torch_module):
    """The gradients of ``torch_module``'s parameters split into refsparse's names (ndarrays)."""
    theirs = dict(torch_module.named_parameters())
    params = dict(module.parameters())
    out = {}
    for tkey, names in name_map(module):
        g = theirs[tkey].grad
        g = np.zeros(tuple(theirs[tkey].shape)) if g is None else g.detach().cpu().numpy()
        sizes = [params[n].shape[0] for n in names]
        for n, part in zip(names, np.split(g, np.cumsum(sizes)[:-1], axis=0)):
            out[n] = part
    return out
