"""Feed-forward block and the encoder and decoder layers of Vaswani et al. (2017).

Post-LN (``norm_first=False``, the paper's and PyTorch's default), each sub-layer is

    Output = LayerNorm(x + Dropout(Sublayer(x)));

pre-LN (``norm_first=True``, GPT-2 and most modern models) moves the norm inside:

    Output = x + Dropout(Sublayer(LayerNorm(x))).

Parameter names mirror ``torch.nn.TransformerEncoderLayer`` / ``TransformerDecoderLayer``
(``self_attn``, ``norm1``, …) except that the decoder's ``multihead_attn`` is called
``cross_attn`` and the two linear layers sit in ``ff`` (``ff.linear1``, ``ff.linear2``);
``refsparse.interop.torch`` maps the names.
"""

from __future__ import annotations

from .._checks import (
    check_bool,
    check_features,
    check_float,
    check_positive_int,
    check_rng,
    check_same_dtype,
    check_shape,
)
from .attention import MultiHeadAttention
from .layers import Activation, Dropout, LayerNorm, Linear
from .module import Module


class FeedForward(Module):
    """``FFN(x) = linear2(dropout(act(linear1(x))))``: (…, C) -> (…, d_ff) -> (…, C)."""

    def __init__(self, d_model, d_ff, activation="relu", dropout=0.0, *, rng=None, dtype="float64"):
        super().__init__()
        rng = check_rng(rng)
        self.linear1 = Linear(d_model, check_positive_int("d_ff", d_ff), rng=rng, dtype=dtype)
        self.act = Activation(activation)
        self.dropout = Dropout(dropout, rng=rng)
        self.linear2 = Linear(d_ff, d_model, rng=rng, dtype=dtype)

    def check_inputs(self, x):
        """x: a float array (…, C) of the weights' dtype."""
        self.linear1.check_inputs(x)

    def compute(self, x):
        """x (…, C) -> linear2(dropout(act(linear1(x)))) (…, C)."""
        return self.linear2.compute(self.dropout.forward(self.act.forward(self.linear1.compute(x))))

    def backward(self, dy):
        """dx through linear2, dropout, the activation and linear1, in reverse."""
        return self.linear1.backward(self.act.backward(self.dropout.backward(self.linear2.backward(dy))))


class EncoderLayer(Module):
    """Self-attention then feed-forward, each with a residual connection and a LayerNorm.

    ``forward(x, *, causal=False, key_padding_mask=None, attn_mask=None)`` with x (B, T, C).
    With ``causal=True`` this is also the block of a decoder-only (GPT-style) model.
    """

    def __init__(self, d_model, n_heads, d_ff, dropout=0.1, activation="relu", norm_first=False,
                 eps=1e-5, bias=True, *, rng=None, dtype="float64"):
        super().__init__()
        rng = check_rng(rng)
        self.norm_first = bool(norm_first)
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout, bias, rng=rng, dtype=dtype)
        self.ff = FeedForward(d_model, d_ff, activation, dropout, rng=rng, dtype=dtype)
        self.norm1 = LayerNorm(d_model, eps, dtype=dtype)
        self.norm2 = LayerNorm(d_model, eps, dtype=dtype)
        self.dropout1 = Dropout(dropout, rng=rng)
        self.dropout2 = Dropout(dropout, rng=rng)

    def check_inputs(self, x, *, causal=False, key_padding_mask=None, attn_mask=None, pattern=None):
        """x (B, T, C) of the weights' dtype, and the masks (as MultiHeadAttention checks them)."""
        self.self_attn.check_inputs(x, causal=causal, key_padding_mask=key_padding_mask,
                                    attn_mask=attn_mask, pattern=pattern)

    def compute(self, x, *, causal=False, key_padding_mask=None, attn_mask=None, pattern=None):
        """x (B, T, C) -> (B, T, C); ``pattern`` makes the self-attention sparse (see MultiHeadAttention)."""
        masks = dict(causal=causal, key_padding_mask=key_padding_mask, attn_mask=attn_mask,
                     pattern=pattern)
        if self.norm_first:
            # h = x + Drop(SA(LN1(x)));  y = h + Drop(FF(LN2(h)))
            h = x + self.dropout1.forward(self.self_attn.compute(self.norm1.compute(x), **masks))
            return h + self.dropout2.forward(self.ff.compute(self.norm2.compute(h)))
        # h = LN1(x + Drop(SA(x)));  y = LN2(h + Drop(FF(h)))
        h = self.norm1.compute(x + self.dropout1.forward(self.self_attn.compute(x, **masks)))
        return self.norm2.compute(h + self.dropout2.forward(self.ff.compute(h)))

    def backward(self, dy):
        """Walk the forward in reverse; returns dx (B, T, C)."""
        if self.norm_first:
            # in the forward pass: y = h + Drop(FF(LN2(h)))
            dh = dy + self.norm2.backward(self.ff.backward(self.dropout2.backward(dy)))
            # in the forward pass: h = x + Drop(SA(LN1(x)))
            return dh + self.norm1.backward(self.self_attn.backward(self.dropout1.backward(dh)))
        # in the forward pass: y = LN2(h + Drop(FF(h)))
        dsum = self.norm2.backward(dy)
        dh = dsum + self.ff.backward(self.dropout2.backward(dsum))
        # in the forward pass: h = LN1(x + Drop(SA(x)))
        dsum = self.norm1.backward(dh)
        return dsum + self.self_attn.backward(self.dropout1.backward(dsum))


class DecoderLayer(Module):
    """Masked self-attention, cross-attention over the encoder's output, then feed-forward.

    ``forward(x, memory, *, causal=True, tgt_key_padding_mask=None,
    memory_key_padding_mask=None, tgt_mask=None, memory_mask=None)`` with x (B, T, C) and
    memory (B, S, C). ``backward(dy)`` returns ``(dx, dmemory)``.
    """

    def __init__(self, d_model, n_heads, d_ff, dropout=0.1, activation="relu", norm_first=False,
                 eps=1e-5, bias=True, *, rng=None, dtype="float64"):
        super().__init__()
        rng = check_rng(rng)
        self.norm_first = bool(norm_first)
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout, bias, rng=rng, dtype=dtype)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, dropout, bias, rng=rng, dtype=dtype)
        self.ff = FeedForward(d_model, d_ff, activation, dropout, rng=rng, dtype=dtype)
        self.norm1 = LayerNorm(d_model, eps, dtype=dtype)
        self.norm2 = LayerNorm(d_model, eps, dtype=dtype)
        self.norm3 = LayerNorm(d_model, eps, dtype=dtype)
        self.dropout1 = Dropout(dropout, rng=rng)
        self.dropout2 = Dropout(dropout, rng=rng)
        self.dropout3 = Dropout(dropout, rng=rng)

    def check_inputs(self, x, memory, *, causal=True, tgt_key_padding_mask=None,
                     memory_key_padding_mask=None, tgt_mask=None, memory_mask=None, tgt_pattern=None):
        """x (B, T, C) and memory (B, S, C) of the weights' dtype; the masks' dtypes and shapes.

        Errors name this layer's arguments (``memory``, ``tgt_mask``), not its attention's.
        """
        check_features("x", x, self.norm1.dim, self.norm1.weight.value, ndim=3)
        check_float("memory", memory, ndim=3)
        check_same_dtype(x=x, memory=memory)
        (B, T, C), S = x.shape, memory.shape[1]
        if memory.shape[0] != B or memory.shape[2] != C:
            raise ValueError(f"memory: expected shape ({B}, *, {C}) to match x {x.shape}, got {memory.shape}")
        for name, mask, shape in (("tgt_key_padding_mask", tgt_key_padding_mask, (B, T)),
                                  ("memory_key_padding_mask", memory_key_padding_mask, (B, S)),
                                  ("tgt_mask", tgt_mask, (T, T)), ("memory_mask", memory_mask, (T, S))):
            if mask is not None:
                check_bool(name, mask)
                check_shape(name, mask, shape)
        if tgt_pattern is not None:
            self.self_attn.check_inputs(x, causal=causal, key_padding_mask=tgt_key_padding_mask,
                                        attn_mask=tgt_mask, pattern=tgt_pattern)

    def compute(self, x, memory, *, causal=True, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_mask=None, memory_mask=None, tgt_pattern=None):
        """x (B, T, C), memory (B, S, C) -> (B, T, C); ``tgt_pattern`` makes the self-attention sparse."""
        self_masks = dict(causal=causal, key_padding_mask=tgt_key_padding_mask, attn_mask=tgt_mask,
                          pattern=tgt_pattern)
        cross_masks = dict(key_padding_mask=memory_key_padding_mask, attn_mask=memory_mask)
        sa, ca, ff = self.self_attn, self.cross_attn, self.ff
        if self.norm_first:
            # h1 = x + Drop(SA(LN1(x)));  h2 = h1 + Drop(CA(LN2(h1), m));  y = h2 + Drop(FF(LN3(h2)))
            h1 = x + self.dropout1.forward(sa.compute(self.norm1.compute(x), **self_masks))
            h2 = h1 + self.dropout2.forward(ca.compute(self.norm2.compute(h1), memory, **cross_masks))
            return h2 + self.dropout3.forward(ff.compute(self.norm3.compute(h2)))
        # h1 = LN1(x + Drop(SA(x)));  h2 = LN2(h1 + Drop(CA(h1, m)));  y = LN3(h2 + Drop(FF(h2)))
        h1 = self.norm1.compute(x + self.dropout1.forward(sa.compute(x, **self_masks)))
        h2 = self.norm2.compute(h1 + self.dropout2.forward(ca.compute(h1, memory, **cross_masks)))
        return self.norm3.compute(h2 + self.dropout3.forward(ff.compute(h2)))

    def backward(self, dy):
        """Walk the forward in reverse; returns ``(dx, dmemory)``."""
        if self.norm_first:
            # y = h2 + Drop(FF(LN3(h2)))
            dh2 = dy + self.norm3.backward(self.ff.backward(self.dropout3.backward(dy)))
            # h2 = h1 + Drop(CA(LN2(h1), m))
            dq, dmemory = self.cross_attn.backward(self.dropout2.backward(dh2))
            dh1 = dh2 + self.norm2.backward(dq)
            # h1 = x + Drop(SA(LN1(x)))
            dx = dh1 + self.norm1.backward(self.self_attn.backward(self.dropout1.backward(dh1)))
            return dx, dmemory
        # y = LN3(h2 + Drop(FF(h2)))
        dsum = self.norm3.backward(dy)
        dh2 = dsum + self.ff.backward(self.dropout3.backward(dsum))
        # h2 = LN2(h1 + Drop(CA(h1, m)))
        dsum = self.norm2.backward(dh2)
        dq, dmemory = self.cross_attn.backward(self.dropout2.backward(dsum))
        dh1 = dsum + dq
        # h1 = LN1(x + Drop(SA(x)))
        dsum = self.norm1.backward(dh1)
        dx = dsum + self.self_attn.backward(self.dropout1.backward(dsum))
        return dx, dmemory
