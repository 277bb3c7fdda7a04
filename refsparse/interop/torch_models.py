"""PyTorch twins of refsparse's whole models, assembled from torch's own layers.

``TorchDecoderLM(config)`` is the decoder-only LM of [`refsparse.models.DecoderLM`][refsparse.models.DecoderLM]
built from ``nn.Embedding``, ``nn.TransformerEncoderLayer`` (run with a causal mask),
``nn.LayerNorm`` and a tied head; [`copy_lm_to_torch`][refsparse.interop.torch_models.copy_lm_to_torch] and [`lm_torch_grads`][refsparse.interop.torch_models.lm_torch_grads]
move weights and gradients between the two. Benchmarks and tests use them to run the
same model on both sides. torch is imported when this module is imported, so import it
only where torch is wanted.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as TF
from torch import nn

from .torch import name_map


def _activation(name):
    if name == "relu":
        return "relu"
    if name == "gelu":
        return "gelu"
    return lambda x: TF.gelu(x, approximate="tanh")


def sinusoidal_table(length, d_model):
    """Vaswani et al.'s table, computed as refsparse does, as a float64 tensor."""
    from ..functional import sinusoidal_encoding

    return torch.from_numpy(sinusoidal_encoding(length, d_model, dtype=np.float64))


class TorchDecoderLM(nn.Module):
    """The same function as refsparse's DecoderLM, written with torch layers."""

    def __init__(self, config):
        super().__init__()
        c = config
        dtype = getattr(torch, c.dtype)
        self.config = c
        self.tok_embed = nn.Embedding(c.vocab_size, c.d_model, dtype=dtype)
        if c.positional == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(c.max_len, c.d_model, dtype=dtype))
        else:
            self.register_buffer("pos_embed", sinusoidal_table(c.max_len, c.d_model).to(dtype))
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                c.d_model, c.n_heads, c.d_ff, c.dropout, activation=_activation(c.activation),
                layer_norm_eps=c.layer_norm_eps, batch_first=True, norm_first=c.norm_first,
                dtype=dtype,
            )
            for _ in range(c.n_layers)
        )
        self.norm_f = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps, dtype=dtype)
        if not c.tie_embeddings:
            self.head = nn.Linear(c.d_model, c.vocab_size, bias=False, dtype=dtype)

    def forward(self, ids):
        T = ids.shape[1]
        x = self.drop(self.tok_embed(ids) + self.pos_embed[:T])
        mask = nn.Transformer.generate_square_subsequent_mask(T, dtype=x.dtype)
        for block in self.blocks:
            x = block(x, src_mask=mask, is_causal=True)
        x = self.norm_f(x)
        w = self.tok_embed.weight if self.config.tie_embeddings else self.head.weight
        return TF.linear(x, w)


def lm_name_map(model):
    """``(torch_key, [refsparse names])`` pairs for a DecoderLM and its TorchDecoderLM."""
    out = [("tok_embed.weight", ["tok_embed.weight"])]
    if model.config.positional == "learned":
        out.append(("pos_embed", ["pos_embed.weight"]))
    for i, block in enumerate(model.blocks):
        out += name_map(block, f"blocks.{i}", f"blocks.{i}")
    out += name_map(model.norm_f, "norm_f", "norm_f")
    if not model.config.tie_embeddings:
        out.append(("head.weight", ["head.proj.weight"]))
    return out


def copy_lm_to_torch(model, torch_model):
    """Copy a refsparse DecoderLM's weights into a TorchDecoderLM."""
    params = dict(model.parameters())
    theirs = dict(torch_model.named_parameters())
    with torch.no_grad():
        for tkey, names in lm_name_map(model):
            arr = np.concatenate([params[n].value for n in names], axis=0)
            theirs[tkey].copy_(torch.from_numpy(arr).to(theirs[tkey].dtype))
    return torch_model


def lm_torch_grads(model, torch_model):
    """TorchDecoderLM's gradients under refsparse's parameter names (ndarrays)."""
    params = dict(model.parameters())
    theirs = dict(torch_model.named_parameters())
    out = {}
    for tkey, names in lm_name_map(model):
        g = theirs[tkey].grad.detach().numpy()
        sizes = [params[n].shape[0] for n in names]
        for n, part in zip(names, np.split(g, np.cumsum(sizes)[:-1], axis=0)):
            out[n] = part
    return out


