"""The recipes: how each op, layer and model is run for its golden vectors.

Each recipe takes a [`Recorder`][refsparse.vectors.record.Recorder] (``ctx``), asks it for
its inputs and parameters by name (drawn on export, taken from the file on recompute), runs
the refsparse forward and returns ``(output, backward)``; ``backward(grad_output)`` returns
the gradients by name. ``register`` adds a recipe to the registry under its op name.
"""

from __future__ import annotations

import json
import math

import numpy as np

from .record import param_grads, register


# lower bounds on the floats an op holds at once (see OpInfo.elements): refused before drawing
def _linear_elements(s):
    return s["B"] * s["T"] * (s["d_in"] + s["d_out"])


def _dense_attention_elements(s):
    return s["B"] * s["n_heads"] * s["T"] * max(s["T"], s["S"])  # the (B, H, T_q, T_k) scores


def _layer_elements(s):
    return s["B"] * s["T"] * max(s["d_model"], s["d_ff"]) + _dense_attention_elements(s)


def _model_elements(s):
    return s["B"] * s["T"] * max(s["d_ff"], s["vocab"]) + _dense_attention_elements(s)

def _F():
    from .. import functional as F

    return F


# -- functional ops ----------------------------------------------------------------------


@register("linear", "functional", "y = x W^T + b", "refsparse.functional.linear_forward/_backward",
          ("linear",), elements=_linear_elements)
def _linear(ctx):
    F = _F()
    x = ctx.normal("input.x", (ctx.B, ctx.T, ctx.d_in))
    w = ctx.normal("param.weight", (ctx.d_out, ctx.d_in), 1 / math.sqrt(ctx.d_in))
    b = ctx.normal("param.bias", (ctx.d_out,), 0.1)
    y, cache = F.linear_forward(x, w, b)

    def backward(dy):
        dx, dw, db = F.linear_backward(dy, cache)
        return {"input.x": dx, "param.weight": dw, "param.bias": db}

    return y, backward


@register("embedding", "functional", "y = W[ids]", "refsparse.functional.embedding_forward/_backward",
          ("embedding",), elements=lambda s: (s["B"] * s["T"] + s["vocab"]) * s["d_model"])
def _embedding(ctx):
    F = _F()
    ids = ctx.ints("input.ids", (ctx.B, ctx.T), ctx.vocab)
    w = ctx.normal("param.weight", (ctx.vocab, ctx.d_model))
    y, cache = F.embedding_forward(ids, w)
    return y, lambda dy: {"param.weight": F.embedding_backward(dy, cache)}


@register("positional", "functional", "y = x + table[:T] (a learned positional table)",
          "refsparse.functional.positional_forward/_backward", ("positional",))
def _positional(ctx):
    F = _F()
    x = ctx.normal("input.x", (ctx.B, ctx.T, ctx.d_model))
    table = ctx.normal("param.table", (ctx.T + 2, ctx.d_model), 0.1)
    y, cache = F.positional_forward(x, table)

    def backward(dy):
        dx, dtable = F.positional_backward(dy, cache)
        return {"input.x": dx, "param.table": dtable}

    return y, backward


@register("layernorm", "functional", "LayerNorm over the last axis",
          "refsparse.functional.layernorm_forward/_backward", ("layernorm",), eps=1e-5)
def _layernorm(ctx):
    F = _F()
    x = ctx.normal("input.x", (ctx.B, ctx.T, ctx.d_model), 2.0, 0.5)
    g = ctx.normal("param.gamma", (ctx.d_model,), 0.1, 1.0)
    b = ctx.normal("param.beta", (ctx.d_model,), 0.1)
    y, cache = F.layernorm_forward(x, g, b, eps=float(ctx.opt("eps")))

    def backward(dy):
        dx, dg, db = F.layernorm_backward(dy, cache)
        return {"input.x": dx, "param.gamma": dg, "param.beta": db}

    return y, backward


@register("relu", "functional", "y = max(x, 0)", "refsparse.functional.relu_forward/_backward", ("relu",))
def _relu(ctx):
    F = _F()
    x = ctx.normal("input.x", (ctx.B, ctx.T, ctx.d_model))
    y, cache = F.relu_forward(x)
    return y, lambda dy: {"input.x": F.relu_backward(dy, cache)}


def _gelu(ctx, approximate):
    F = _F()
    x = ctx.normal("input.x", (ctx.B, ctx.T, ctx.d_model), 3.0)  # reaches both tails
    y, cache = F.gelu_forward(x, approximate=approximate)
    return y, lambda dy: {"input.x": F.gelu_backward(dy, cache)}


@register("gelu", "functional", "GELU, exact (erf) form", "refsparse.functional.gelu_forward(x, "
          "approximate='none')/gelu_backward", ("gelu",))
def _gelu_exact(ctx):
    return _gelu(ctx, "none")


@register("gelu_tanh", "functional", "GELU, tanh form", "refsparse.functional.gelu_forward(x, "
          "approximate='tanh')/gelu_backward", ("gelu",))
def _gelu_tanh(ctx):
    return _gelu(ctx, "tanh")


@register("dropout", "functional", "inverted dropout with a fixed mask (input.keep) drawn from the seed",
          "refsparse.functional.dropout_forward/_backward", ("dropout",), p=0.25)
def _dropout(ctx):
    F = _F()
    x = ctx.normal("input.x", (ctx.B, ctx.T, ctx.d_model))
    p = float(ctx.opt("p"))
    # the mask is drawn by dropout_forward itself from stream 3 (one uniform per entry)
    y, cache = F.dropout_forward(x, p, np.random.default_rng([ctx.seed, 3]), training=True)
    keep = cache.keep if cache.keep is not None else np.full(x.shape, cache.scale != 0.0)
    stored = ctx.const("input.keep", lambda: keep)
    if not np.array_equal(stored, keep):
        raise ValueError("dropout: the mask drawn from the seed differs from the stored input.keep "
                         "(numpy's random stream changed?)")
    return y, lambda dy: {"input.x": F.dropout_backward(dy, cache)}


@register("softmax", "functional", "softmax over the last axis",
          "refsparse.functional.softmax_forward/_backward",
          ("softmax",))
def _softmax(ctx):
    F = _F()
    x = ctx.normal("input.x", (ctx.B, ctx.T, ctx.d_model), 3.0)
    y, cache = F.softmax_forward(x, axis=-1)
    return y, lambda dy: {"input.x": F.softmax_backward(dy, cache)}


def _qkv(ctx, t_k=None):
    D = ctx.d_model // ctx.n_heads
    t_k = ctx.T if t_k is None else t_k
    q = ctx.normal("input.q", (ctx.B, ctx.n_heads, ctx.T, D))
    k = ctx.normal("input.k", (ctx.B, ctx.n_heads, t_k, D))
    v = ctx.normal("input.v", (ctx.B, ctx.n_heads, t_k, D))
    return q, k, v


@register("attention", "functional", "dense scaled dot-product attention with a boolean mask",
          "refsparse.functional.attention_forward/_backward (dropout_p=0)",
          ("attention", "mask", "empty_rows"), mask="causal", elements=_dense_attention_elements)
def _attention(ctx):
    F = _F()
    q, k, v = _qkv(ctx)
    kind = ctx.opt("mask")
    if kind not in ("causal", "none", "causal_empty_row"):
        raise ValueError(f"mask: expected 'causal', 'causal_empty_row' or 'none', got {kind!r}")

    def make():
        m = F.causal_mask(ctx.T) if kind != "none" else np.ones((ctx.T, ctx.T), dtype=bool)
        if kind == "causal_empty_row":
            m[0, 0] = False  # query 0 has no key: its output and gradients are 0
        return m

    mask = ctx.const("input.mask", make)
    y, cache = F.attention_forward(q, k, v, mask=mask)

    def backward(dy):
        dq, dk, dv = F.attention_backward(dy, cache)
        return {"input.q": dq, "input.k": dk, "input.v": dv}

    return y, backward


@register("split_heads", "functional", "(B, T, C) -> (B, H, T, D)",
          "refsparse.functional.split_heads_forward/_backward", ("heads",))
def _split_heads(ctx):
    F = _F()
    x = ctx.normal("input.x", (ctx.B, ctx.T, ctx.d_model))
    y, cache = F.split_heads_forward(x, ctx.n_heads)
    return y, lambda dy: {"input.x": F.split_heads_backward(dy, cache)}


@register("merge_heads", "functional", "(B, H, T, D) -> (B, T, C)",
          "refsparse.functional.merge_heads_forward/_backward", ("heads",))
def _merge_heads(ctx):
    F = _F()
    x = ctx.normal("input.x", (ctx.B, ctx.n_heads, ctx.T, ctx.d_model // ctx.n_heads))
    y, cache = F.merge_heads_forward(x)
    return y, lambda dy: {"input.x": F.merge_heads_backward(dy, cache)}


@register("cross_entropy", "functional", "mean cross-entropy with ignore_index and label smoothing",
          "refsparse.functional.cross_entropy_forward/_backward", ("cross_entropy",),
          ignore_index=-100, label_smoothing=0.1, reduction="mean",
          elements=lambda s: s["B"] * s["T"] * s["vocab"])
def _cross_entropy(ctx):
    F = _F()
    logits = ctx.normal("input.logits", (ctx.B, ctx.T, ctx.vocab), 2.0)
    ignore = int(ctx.opt("ignore_index"))

    def make_targets():
        t = ctx.rng(1).integers(0, ctx.vocab, size=(ctx.B, ctx.T)).astype(np.int64)
        t.reshape(-1)[::4] = ignore  # every fourth position is ignored
        return t

    targets = ctx.const("input.targets", make_targets)
    loss, cache = F.cross_entropy_forward(logits, targets, ignore_index=ignore,
                                          label_smoothing=float(ctx.opt("label_smoothing")),
                                          reduction=ctx.opt("reduction"))
    return loss, lambda dy: {"input.logits": F.cross_entropy_backward(dy, cache)}


@register("residual", "functional", "y = x + fx", "refsparse.functional.residual_forward/_backward")
def _residual(ctx):
    F = _F()
    x = ctx.normal("input.x", (ctx.B, ctx.T, ctx.d_model))
    fx = ctx.normal("input.fx", (ctx.B, ctx.T, ctx.d_model))
    y, cache = F.residual_forward(x, fx)

    def backward(dy):
        dx, dfx = F.residual_backward(dy, cache)
        return {"input.x": dx, "input.fx": dfx}

    return y, backward


# -- sparse attention, one op per pattern family ---------------------------------------------

SPARSE_FAMILIES = {
    "local": "local:window=4",
    "dilated": "dilated:window=4,dilation=2",
    "strided": "strided:stride=4",
    "fixed": "fixed:block=4,c=1",
    "global": "global:indices=0/5",
    "random": "random:per_row=3,seed=0",
    "bigbird": "bigbird:block=2,window_blocks=3,global_blocks=1,random_blocks=1,seed=0",
    "block_sparse": None,  # no text spec: built from a random block layout (stream 3)
}


def _block_sparse(ctx, block):
    from .. import patterns as P

    if ctx.T % block:
        raise ValueError(f"block: expected a divisor of T={ctx.T}, got {block}")
    nb = ctx.T // block
    layout = ctx.rng(3).random((nb, nb)) < 0.4
    np.fill_diagonal(layout, True)  # every query sees its own block
    ctx.meta["pattern"] = f"block_sparse(block={block}, layout=" + \
        "/".join("".join("1" if v else "0" for v in row) for row in layout) + ")"
    return P.block_sparse(layout, block)


def _sparse_pattern(ctx, name="input.pattern", t_q=None, t_k=None, causal=False):
    """The op's pattern from its ``pattern`` option (a spec), stored as int64 CSR."""
    from .. import patterns as P

    spec = ctx.opt("pattern")
    ctx.meta["pattern_shape"] = (t_q or ctx.T, t_k or ctx.T)

    def make():
        if spec == "block_sparse":
            p = _block_sparse(ctx, int(ctx.options.get("block", 4)))
        else:
            p = P.parse(spec, ctx.T)
        return P.causal_only(p) if causal else p

    if spec != "block_sparse":
        ctx.meta["pattern"] = spec + (" (causal_only)" if causal else "")
    return ctx.pattern(name, make)[0]


def _sparse_attention(ctx):
    from ..functional.sparse_attention import sparse_attention_backward, sparse_attention_forward

    q, k, v = _qkv(ctx)
    p = _sparse_pattern(ctx)
    y, cache = sparse_attention_forward(q, k, v, p)

    def backward(dy):
        dq, dk, dv = sparse_attention_backward(dy, cache)
        return {"input.q": dq, "input.k": dk, "input.v": dv}

    return y, backward


register("sparse_attention", "sparse_attention", "attention at a pattern's entries (any spec: --pattern)",
    "refsparse.functional.sparse_attention.sparse_attention_forward/_backward",
    ("attention", "pattern", "empty_rows"), pattern="local:window=4")(_sparse_attention)
for _family, _spec in SPARSE_FAMILIES.items():
    _defaults = {"pattern": _spec or "block_sparse"}
    if _spec is None:
        _defaults["block"] = 4
    register(f"sparse_attention.{_family}", "sparse_attention",
        f"sparse attention, {_family} pattern" + ("" if _spec else " (random block layout)"),
        "refsparse.functional.sparse_attention.sparse_attention_forward/_backward",
        ("attention", "pattern", "empty_rows"), **_defaults)(_sparse_attention)


# -- SparseLinear ----------------------------------------------------------------------------


def _random_csr(ctx, rows, cols, density):
    import scipy.sparse as sp

    from ..nn.sparse import random_pattern

    indptr, indices = random_pattern(rows, cols, density, ctx.rng(0))
    values = ctx.rng(0).uniform(-1, 1, indices.size) / math.sqrt(cols)
    if values.size:
        values[values.size // 2] = 0.0  # a stored zero: still an entry, with a gradient
    return sp.csr_array((values.astype(ctx.dtype), indices, indptr), shape=(rows, cols))



@register("sparse_linear", "functional", "y = x W^T + b with W a CSR array (stored entries only)",
          "refsparse.functional.sparse_linear.sparse_linear_forward/_backward",
          ("linear", "sparse_weight"), density=0.5, elements=_linear_elements)
def _sparse_linear(ctx):
    import scipy.sparse as sp

    from ..functional.sparse_linear import sparse_linear_backward, sparse_linear_forward

    x = ctx.normal("input.x", (ctx.B, ctx.T, ctx.d_in))
    if ctx.stored is None:
        w = _random_csr(ctx, ctx.d_out, ctx.d_in, float(ctx.opt("density")))
        ctx.record("param.weight", w.data.copy())
        ctx.record("param.weight.indptr", w.indptr.astype(np.int64))
        ctx.record("param.weight.indices", w.indices.astype(np.int64))
    else:
        w = sp.csr_array((ctx.take("param.weight").copy(), ctx.take("param.weight.indices"),
                          ctx.take("param.weight.indptr")), shape=(ctx.d_out, ctx.d_in))
    w.has_canonical_format = True
    b = ctx.normal("param.bias", (ctx.d_out,), 0.1)
    y, cache = sparse_linear_forward(x, w, b)

    def backward(dy):
        dx, dw, db = sparse_linear_backward(dy, cache)
        return {"input.x": dx, "param.weight": dw, "param.bias": db}

    return y, backward


# -- layers --------------------------------------------------------------------------------


def _module_op(ctx, build, inputs, forward_kwargs=None):
    """Run a module: build/load it, forward the inputs, backward the upstream gradient."""
    m = ctx.module(build)
    y = m.forward(*inputs, **(forward_kwargs or {}))

    def backward(dy):
        m.zero_grad()
        dx = m.backward(dy)
        grads = param_grads(m)
        if dx is not None:  # a model's ids have no gradient
            dxs = dx if isinstance(dx, tuple) else (dx,)
            grads.update(zip(ctx.input_names, dxs))
        return grads

    return y, backward


def _x(ctx, width=None):
    ctx.input_names = ["input.x"]
    return ctx.normal("input.x", (ctx.B, ctx.T, width or ctx.d_model))


@register("nn.Linear", "layer", "refsparse.nn.Linear", "refsparse.nn.Linear(d_in, d_out)",
          ("linear", "module"),
          elements=_linear_elements)
def _nn_linear(ctx):
    from ..nn import Linear

    x = _x(ctx, ctx.d_in)
    return _module_op(ctx, lambda r: Linear(ctx.d_in, ctx.d_out, rng=r, dtype=ctx.dtype.name), [x])



@register("nn.SparseLinear", "layer", "refsparse.nn.SparseLinear (CSR weight)",
          "refsparse.nn.sparse.SparseLinear(d_in, d_out, density=...)",
          ("linear", "sparse_weight", "module"), density=0.5, elements=_linear_elements)
def _nn_sparse_linear(ctx):
    from ..nn.sparse import SparseLinear

    x = _x(ctx, ctx.d_in)
    return _module_op(ctx, lambda r: SparseLinear(ctx.d_in, ctx.d_out, density=float(ctx.opt("density")),
                                                   rng=r, dtype=ctx.dtype.name), [x])


@register("nn.LayerNorm", "layer", "refsparse.nn.LayerNorm", "refsparse.nn.LayerNorm(d_model, eps)",
          ("layernorm", "module"), eps=1e-5)
def _nn_layernorm(ctx):
    from ..nn import LayerNorm

    x = _x(ctx)
    return _module_op(ctx, lambda r: LayerNorm(ctx.d_model, float(ctx.opt("eps")), dtype=ctx.dtype.name), [x])


def _layer_pattern(ctx, causal):
    """None for dense attention; else the pattern (causal applied) as stored CSR."""
    if ctx.opt("pattern") in (None, "full"):
        return None
    return _sparse_pattern(ctx, causal=causal)


@register("nn.MultiHeadAttention", "layer", "refsparse.nn.MultiHeadAttention, self-attention",
          "refsparse.nn.MultiHeadAttention(d_model, n_heads).forward(x, causal=..., pattern=...)",
          ("linear", "attention", "mask", "pattern", "empty_rows", "module"), causal=True, pattern=None,
          elements=_layer_elements)
def _nn_mha(ctx):
    from ..nn import MultiHeadAttention

    x = _x(ctx)
    causal = bool(ctx.opt("causal"))
    p = _layer_pattern(ctx, causal)
    kw = {"causal": causal} if p is None else {"pattern": p}  # a stored pattern is already causal
    return _module_op(ctx, lambda r: MultiHeadAttention(ctx.d_model, ctx.n_heads, rng=r,
                                                        dtype=ctx.dtype.name), [x], kw)


@register("nn.FeedForward", "layer", "refsparse.nn.FeedForward",
          "refsparse.nn.FeedForward(d_model, d_ff, activation)",
          ("linear", "gelu", "relu", "module"), activation="gelu",
          elements=lambda s: s["B"] * s["T"] * s["d_ff"])
def _nn_ff(ctx):
    from ..nn import FeedForward

    x = _x(ctx)
    return _module_op(ctx, lambda r: FeedForward(ctx.d_model, ctx.d_ff, ctx.opt("activation"), rng=r,
                                                 dtype=ctx.dtype.name), [x])


@register("nn.EncoderLayer", "layer", "refsparse.nn.EncoderLayer (self-attention + feed-forward)",
          "refsparse.nn.EncoderLayer(d_model, n_heads, d_ff, dropout=0, ...)",
          ("linear", "layernorm", "attention", "mask", "pattern", "post_ln", "module", "padding"),
          norm_first=False, activation="relu", causal=False, pattern=None, elements=_layer_elements)
def _nn_encoder_layer(ctx):
    from ..nn import EncoderLayer

    x = _x(ctx)
    causal = bool(ctx.opt("causal"))
    p = _layer_pattern(ctx, causal)
    kw = {"causal": causal} if p is None else {"pattern": p}
    return _module_op(ctx, lambda r: EncoderLayer(ctx.d_model, ctx.n_heads, ctx.d_ff, 0.0,
                                                  ctx.opt("activation"),
                                                  bool(ctx.opt("norm_first")), rng=r, dtype=ctx.dtype.name),
                      [x], kw)


@register("nn.DecoderLayer", "layer", "refsparse.nn.DecoderLayer (causal self-attention, cross-attention, "
          "feed-forward); inputs x (B, T, C) and memory (B, S, C)",
          "refsparse.nn.DecoderLayer(d_model, n_heads, d_ff, dropout=0, ...)",
          ("linear", "layernorm", "attention", "mask", "pattern", "post_ln", "module", "padding"),
          norm_first=False, activation="relu", pattern=None, elements=_layer_elements)
def _nn_decoder_layer(ctx):
    from ..nn import DecoderLayer

    x = _x(ctx)
    memory = ctx.normal("input.memory", (ctx.B, ctx.S, ctx.d_model))
    ctx.input_names = ["input.x", "input.memory"]
    p = _layer_pattern(ctx, causal=True)
    kw = {"causal": True} if p is None else {"causal": False, "tgt_pattern": p}
    return _module_op(ctx, lambda r: DecoderLayer(ctx.d_model, ctx.n_heads, ctx.d_ff, 0.0,
                                                  ctx.opt("activation"),
                                                  bool(ctx.opt("norm_first")), rng=r, dtype=ctx.dtype.name),
                      [x, memory], kw)


# -- models --------------------------------------------------------------------------------


def _model_pattern(ctx, name, t, causal):
    """Store the pattern a model builds from its attention spec (for the reader; the model
    rebuilds it from the spec)."""
    from .. import patterns as P

    spec = ctx.opt("pattern")
    if spec in (None, "full"):
        return
    ctx.meta["pattern"] = spec
    ctx.meta["pattern_shape"] = (t, t)

    def make():
        p = P.parse(spec, t)
        return P.causal_only(p) if causal else p

    p, _ = ctx.pattern(name, make)
    if ctx.stored is not None and not _same_pattern(p, make()):
        raise ValueError(f"{name}: the stored pattern differs from the one spec {spec!r} builds")


def _same_pattern(a, b):
    import scipy.sparse as sp

    a, b = sp.csr_array(a), sp.csr_array(b)
    return a.shape == b.shape and np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)


@register("model.DecoderLM", "model", "the decoder-only LM: ids (B, T) -> logits (B, T, V)",
          "refsparse.models.DecoderLM(DecoderLMConfig(...)).forward(ids)",
          ("linear", "layernorm", "attention", "pattern", "gelu", "embedding", "module", "padding"),
          pattern=None, norm_first=True, activation="gelu", tie_embeddings=True, positional="learned",
          elements=_model_elements)
def _model_lm(ctx):
    from ..models import DecoderLM, DecoderLMConfig

    ctx.input_names = []
    ids = ctx.ints("input.ids", (ctx.B, ctx.T), ctx.vocab)
    _model_pattern(ctx, "input.pattern", ctx.T, causal=True)
    cfg = DecoderLMConfig(vocab_size=ctx.vocab, d_model=ctx.d_model, n_heads=ctx.n_heads,
                          n_layers=ctx.n_layers, d_ff=ctx.d_ff, max_len=ctx.T, dropout=0.0,
                          activation=ctx.opt("activation"), norm_first=bool(ctx.opt("norm_first")),
                          positional=ctx.opt("positional"), tie_embeddings=bool(ctx.opt("tie_embeddings")),
                          dtype=ctx.dtype.name, attention=ctx.opt("pattern") or "full")
    ctx.meta["config"] = json.dumps(cfg.to_dict())
    return _module_op(ctx, lambda r: DecoderLM(cfg, rng=r), [ids])


@register("model.Transformer", "model", "the encoder-decoder: src (B, S), tgt (B, T) -> logits (B, T, V)",
          "refsparse.models.Transformer(TransformerConfig(...)).forward(src, tgt)",
          ("linear", "layernorm", "attention", "pattern", "relu", "embedding", "post_ln", "module",
           "padding"),
          pattern=None, norm_first=False, activation="relu", tie_embeddings=False, positional="sinusoidal",
          elements=_model_elements)
def _model_transformer(ctx):
    from ..models import Transformer, TransformerConfig

    ctx.input_names = []
    src = ctx.ints("input.src", (ctx.B, ctx.S), ctx.vocab)
    tgt = ctx.ints("input.tgt", (ctx.B, ctx.T), ctx.vocab)
    _model_pattern(ctx, "input.pattern.encoder", ctx.S, causal=False)
    _model_pattern(ctx, "input.pattern.decoder", ctx.T, causal=True)
    cfg = TransformerConfig(src_vocab_size=ctx.vocab, tgt_vocab_size=ctx.vocab, d_model=ctx.d_model,
                            n_heads=ctx.n_heads, n_encoder_layers=ctx.n_layers,
                            n_decoder_layers=ctx.n_layers, d_ff=ctx.d_ff, dropout=0.0,
                            activation=ctx.opt("activation"), norm_first=bool(ctx.opt("norm_first")),
                            max_len=max(ctx.S, ctx.T), positional=ctx.opt("positional"),
                            tie_embeddings=bool(ctx.opt("tie_embeddings")), dtype=ctx.dtype.name,
                            attention=ctx.opt("pattern") or "full")
    ctx.meta["config"] = json.dumps(cfg.to_dict())
    return _module_op(ctx, lambda r: Transformer(cfg, rng=r), [src, tgt])

