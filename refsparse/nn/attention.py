"""Multi-head attention (self and cross) as a module.

    MultiHead(Q, K, V) = Concat(head_1, …, head_H) W_O,   head_h = Attention(Q W_Q^h, K W_K^h, V W_V^h)

(Vaswani et al. 2017 §3.2.2), with the projections written as four Linear layers
``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` (PyTorch's ``nn.MultiheadAttention``
packs the first three into one ``in_proj_weight``; ``refsparse.interop.torch`` maps them).
"""

from __future__ import annotations

from typing import NamedTuple

from .. import functional as F
from .. import patterns as P
from .._checks import (
    check_bool,
    check_features,
    check_float,
    check_positive_int,
    check_rng,
    check_same_dtype,
    check_shape,
)
from ..functional.dropout import check_probability
from ..functional.sparse_attention import (
    PreparedPattern,
    SparseAttentionCache,
    prepare_pattern,
    sparse_attention_backward,
    sparse_attention_forward,
)
from .layers import Linear
from .module import Module


def build_attention_mask(batch, t_q, t_k, *, causal=False, attn_mask=None, key_padding_mask=None):
    """Combine the three ways of masking into one boolean "may attend" mask, or None.

    Parameters
    ----------
    causal : bool
        Query i may attend to key j only if j <= i.
    attn_mask : bool array (T_q, T_k), optional
        True where the query may attend to the key (torch SDPA's convention).
    key_padding_mask : bool array (B, T_k), optional
        True where the key is *padding* (torch ``nn.MultiheadAttention``'s convention).

    Returns
    -------
    None (every query sees every key) or a bool array broadcastable to (B, H, T_q, T_k).
    """
    allowed = None  # (T_q, T_k) while it is shared by the whole batch
    if causal:
        allowed = F.causal_mask(t_q, t_k)
    if attn_mask is not None:
        check_bool("attn_mask", attn_mask)
        check_shape("attn_mask", attn_mask, (t_q, t_k))
        allowed = attn_mask if allowed is None else (allowed & attn_mask)
    if key_padding_mask is not None:
        check_bool("key_padding_mask", key_padding_mask)
        check_shape("key_padding_mask", key_padding_mask, (batch, t_k))
        keep = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, T_k)
        allowed = keep if allowed is None else (allowed[None, None] & keep)  # (B, 1, T_q, T_k)
    return allowed


class ReadyPattern(NamedTuple):
    """A layer's sparse attention pattern made causal (if asked) and prepared for the kernels.

    Built once by [`ready_pattern`][refsparse.nn.ready_pattern] — a model builds one
    per layer and sequence length — and passed to every forward as ``pattern``; the attention
    module then only removes padded keys, per batch element, when given a ``key_padding_mask``.
    """

    pattern: object  # CSR (T_q, T_k) bool, or a per-head list of them: causal applied
    prepared: PreparedPattern  # the same in the kernels' layout (no padding)
    causal: bool  # whether causal_only was applied


def ready_pattern(pattern, n_heads, t_q, t_k, *, causal=False):
    """Check ``pattern`` against (T_q, T_k) and the heads, apply causal, prepare: a ReadyPattern."""
    heads = P.heads(pattern, n_heads, shape=(t_q, t_k), name="pattern")
    base = heads[0] if all(h is heads[0] for h in heads) else heads  # one shared, or one per head
    if causal:
        base = P.causal_only(base)
    return ReadyPattern(base, prepare_pattern(base), bool(causal))


def with_key_padding(ready, key_padding_mask):
    """The prepared pattern of each batch element: ``ready``'s without the padded keys.

    key_padding_mask : bool (B, T_k), True = padding (torch's ``key_padding_mask``). A query
    left with no key gives a zero output row and zero gradients.
    """
    per_batch = P.mask_keys(ready.pattern, key_padding_mask)  # B patterns (or per-head lists)
    grid = [row if isinstance(row, list) else [row] for row in per_batch]
    return prepare_pattern(grid)


class MultiHeadAttention(Module):
    """Multi-head scaled dot-product attention over a dense boolean mask.

    Parameters
    ----------
    d_model : int
        Width of the queries, keys, values and output.
    n_heads : int
        Number of heads; must divide ``d_model`` (d_head = d_model / n_heads).
    dropout : float
        Dropout on the attention probabilities (training mode only).
    bias : bool
        Whether the four projections have biases.
    """

    def __init__(self, d_model, n_heads, dropout=0.0, bias=True, *, rng=None, dtype="float64"):
        super().__init__()
        d_model = check_positive_int("d_model", d_model)
        n_heads = check_positive_int("n_heads", n_heads)
        if d_model % n_heads:
            raise ValueError(f"n_heads: expected a divisor of d_model={d_model}, got {n_heads}")
        rng = check_rng(rng)
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.dropout = check_probability("dropout", dropout)
        self.rng = rng
        self.q_proj = Linear(d_model, d_model, bias, rng=rng, dtype=dtype)
        self.k_proj = Linear(d_model, d_model, bias, rng=rng, dtype=dtype)
        self.v_proj = Linear(d_model, d_model, bias, rng=rng, dtype=dtype)
        self.out_proj = Linear(d_model, d_model, bias, rng=rng, dtype=dtype)
        self._cache = None

    def check_inputs(self, x, kv=None, *, causal=False, key_padding_mask=None, attn_mask=None,
                     pattern=None):
        """x (B, T_q, C) and kv (B, T_k, C) of the weights' dtype; the masks' dtypes and shapes."""
        check_features("x", x, self.d_model, self.q_proj.weight.value, ndim=3)
        if kv is not None:
            check_float("kv", kv, ndim=3)
            if kv.shape[0] != x.shape[0] or kv.shape[2] != self.d_model:
                raise ValueError(f"kv: expected shape ({x.shape[0]}, *, {self.d_model}), got {kv.shape}")
            check_same_dtype(x=x, kv=kv)
        B, Tq, Tk = x.shape[0], x.shape[1], (x if kv is None else kv).shape[1]
        if attn_mask is not None:
            check_bool("attn_mask", attn_mask)
            check_shape("attn_mask", attn_mask, (Tq, Tk))
        if key_padding_mask is not None:
            check_bool("key_padding_mask", key_padding_mask)
            check_shape("key_padding_mask", key_padding_mask, (B, Tk))
        if pattern is not None:
            if attn_mask is not None:
                raise ValueError("attn_mask: give either attn_mask or pattern, not both")
            if self.dropout > 0 and self.training:
                raise ValueError(f"pattern: sparse attention has no attention dropout; this layer "
                                 f"has dropout={self.dropout} (set it to 0 or call eval())")
            if isinstance(pattern, ReadyPattern) and causal and not pattern.causal:
                raise ValueError("pattern: causal=True with a ReadyPattern built with causal=False; "
                                 "build it with ready_pattern(..., causal=True)")

    def compute(self, x, kv=None, *, causal=False, key_padding_mask=None, attn_mask=None,
                pattern=None):
        """Attend from ``x`` (B, T_q, C) to ``kv`` (B, T_k, C); ``kv=None`` is self-attention.

        Returns (B, T_q, C). See [`build_attention_mask`][refsparse.nn.build_attention_mask]
        for the three masks.

        ``pattern`` — a sparse attention pattern (a CSR boolean (T_q, T_k) array, a per-head
        list, or a [`ReadyPattern`][refsparse.nn.ReadyPattern] that a model built
        once per sequence length; see [`refsparse.patterns`][refsparse.patterns]) — computes
        attention only at the pattern's entries with the Numba kernels (O(nnz) time and
        memory). It combines with ``causal`` (intersection) and ``key_padding_mask`` (padded
        keys removed per batch element), not with ``attn_mask``; attention dropout must then
        be 0. A ReadyPattern is used as it is; this module only removes the padded keys.
        """
        is_self = kv is None
        src = x if is_self else kv
        B, Tq, _ = x.shape
        Tk = src.shape[1]
        if pattern is None:
            # the causal part goes to attention_forward as a flag, which skips the blocks
            # above the diagonal instead of masking them
            mask = build_attention_mask(
                B, Tq, Tk, causal=False, attn_mask=attn_mask, key_padding_mask=key_padding_mask
            )
        else:
            pp = self._prepared(pattern, B, Tq, Tk, causal, key_padding_mask)

        # 1. project, then split the width into heads: (B, T, C) -> (B, H, T, D)
        q, _ = F.split_heads_forward(self.q_proj.compute(x), self.n_heads)
        k, _ = F.split_heads_forward(self.k_proj.compute(src), self.n_heads)
        v, _ = F.split_heads_forward(self.v_proj.compute(src), self.n_heads)
        # 2. scaled dot-product attention per head: (B, H, T_q, D)
        if pattern is None:
            ctx, attn_cache = F.attention_forward(
                q, k, v, mask=mask, dropout_p=self.dropout, rng=self.rng, training=self.training,
                causal=causal,
            )
        else:
            ctx, attn_cache = sparse_attention_forward(q, k, v, pp)
        # 3. merge the heads back and project: (B, H, T_q, D) -> (B, T_q, C)
        merged, _ = F.merge_heads_forward(ctx)
        y = self.out_proj.compute(merged)
        self._cache = (is_self, attn_cache)
        return y

    def backward(self, dy):
        """Walk the forward's steps in reverse. Returns dx, or (dx, dkv) for cross-attention."""
        is_self, attn_cache = self._cache_or_raise()
        # 3. (B, T_q, C) -> (B, H, T_q, D)
        dctx = F.merge_heads_backward(self.out_proj.backward(dy), self.n_heads)
        # 2.
        if isinstance(attn_cache, SparseAttentionCache):
            dq, dk, dv = sparse_attention_backward(dctx, attn_cache)
        else:
            dq, dk, dv = F.attention_backward(dctx, attn_cache)
        # 1. (B, H, T, D) -> (B, T, C), then through the projections
        dx = self.q_proj.backward(F.split_heads_backward(dq, self.n_heads))
        dsrc = self.k_proj.backward(F.split_heads_backward(dk, self.n_heads))
        dsrc += self.v_proj.backward(F.split_heads_backward(dv, self.n_heads))
        if is_self:
            dx += dsrc
            return dx
        return dx, dsrc

    def _prepared(self, pattern, batch, t_q, t_k, causal, key_padding_mask):
        """The pattern in the kernels' layout, causal and padding applied.

        A [`ReadyPattern`][refsparse.nn.ReadyPattern] (what the models pass) is
        already causal and prepared: only the padding is added here. A plain pattern (a
        direct caller's) is made ready here, and kept on the module for the next call while
        the same pattern objects come again: the cache is keyed by the causal flag, the shape
        and the identity of every pattern object and of its index arrays (each head's, for a
        per-head list); writing into a pattern's index arrays in place is not seen (patterns
        are treated as immutable, as everywhere in refsparse).
        """
        if isinstance(pattern, PreparedPattern):
            if causal or key_padding_mask is not None:
                raise ValueError("pattern: a PreparedPattern is used as it is; apply causal and "
                                 "padding before preparing it")
            return pattern
        if isinstance(pattern, ReadyPattern):
            if tuple(pattern.prepared.shape) != (t_q, t_k):
                raise ValueError(f"pattern: expected shape {(t_q, t_k)}, got {tuple(pattern.prepared.shape)}")
            ready = pattern
        else:
            key = (bool(causal), t_q, t_k, self.n_heads)
            items = list(pattern) if P.is_per_head(pattern) else [pattern]
            # each pattern with its index arrays, held by the cache so that no id is reused
            held = [(p, getattr(p, "indptr", None), getattr(p, "indices", None)) for p in items]
            cached = self.__dict__.get("_pattern_cache")
            if (cached is not None and cached[0] == key and len(cached[1]) == len(held)
                    and all(a is b for old, new in zip(cached[1], held) for a, b in zip(old, new))):
                ready = cached[2]
            else:
                ready = ready_pattern(pattern, self.n_heads, t_q, t_k, causal=causal)
                object.__setattr__(self, "_pattern_cache", (key, held, ready))
        if key_padding_mask is None:
            return ready.prepared
        return with_key_padding(ready, key_padding_mask)

    def __repr__(self):
        return f"MultiHeadAttention(d_model={self.d_model}, n_heads={self.n_heads})"
