"""Whole models: the encoder-decoder Transformer and the decoder-only language model.

Both are assembled from [`refsparse.nn`][refsparse.nn] modules and follow the module contract:
``forward(...) -> logits`` keeps every cache, ``backward(dlogits)`` walks the layers in
reverse and accumulates every parameter's ``.grad``. ``forward_backward`` does one whole
step: forward, cross-entropy, and backward, and returns the loss.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from . import functional as F
from ._checks import (
    check_bool,
    check_dtype_name,
    check_features,
    check_int,
    check_positions,
    check_rng,
    check_shape,
)
from .nn import (
    DecoderLayer,
    Dropout,
    Embedding,
    EncoderLayer,
    LayerNorm,
    LearnedPositionalEmbedding,
    Linear,
    Module,
    ModuleList,
    SinusoidalPositionalEncoding,
    ready_pattern,
)

__all__ = ["TransformerConfig", "Transformer", "DecoderLMConfig", "DecoderLM", "OutputHead"]


def _check_config(cfg):
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if f.type in ("int", int) and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
            raise ValueError(f"{f.name}: expected a positive integer, got {v!r}")
        if f.type in ("bool", bool) and not isinstance(v, (bool, np.bool_)):
            raise TypeError(f"{f.name}: expected True or False, got {v!r}")
    if cfg.d_model % cfg.n_heads:
        raise ValueError(f"n_heads: expected a divisor of d_model={cfg.d_model}, got {cfg.n_heads}")
    if isinstance(cfg.dropout, bool) or not isinstance(cfg.dropout, (int, float, np.integer, np.floating)):
        raise TypeError(f"dropout: expected a float in [0, 1), got {cfg.dropout!r}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"dropout: expected a probability in [0, 1), got {cfg.dropout!r}")
    eps = cfg.layer_norm_eps
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)):
        raise TypeError(f"layer_norm_eps: expected a positive number, got {eps!r}")
    if not 0 < eps < np.inf:
        raise ValueError(f"layer_norm_eps: expected a positive finite number, got {eps!r}")
    if cfg.activation not in ("relu", "gelu", "gelu_tanh"):
        raise ValueError(f"activation: expected 'relu', 'gelu' or 'gelu_tanh', got {cfg.activation!r}")
    if cfg.positional not in ("sinusoidal", "learned"):
        raise ValueError(f"positional: expected 'sinusoidal' or 'learned', got {cfg.positional!r}")
    check_dtype_name("dtype", cfg.dtype)
    specs = _attention_specs(cfg, getattr(cfg, "n_layers", None) or max(cfg.n_encoder_layers, cfg.n_decoder_layers))
    sparse = sorted({s for s in specs if s != "full"})
    if sparse and cfg.dropout > 0:  # found here, not at the first training step
        raise ValueError(f"dropout: expected 0 with sparse attention ({', '.join(sparse)}): its kernels have no "
                         f"dropout on the attention weights; got {cfg.dropout!r}")
    pad_id = getattr(cfg, "pad_id", None)
    if pad_id is not None:
        vocab = min(cfg.src_vocab_size, cfg.tgt_vocab_size)
        if isinstance(pad_id, bool) or not isinstance(pad_id, (int, np.integer)):
            raise TypeError(f"pad_id: expected None or an int, got {pad_id!r}")
        if not 0 <= pad_id < vocab:
            raise ValueError(f"pad_id: expected None or an id in [0, {vocab}) (both vocabularies), "
                             f"got {pad_id!r}")


def _attention_specs(cfg, n_layers):
    """The per-layer list of attention specs of a config, validated (names and keys)."""
    from . import patterns as P

    spec = cfg.attention
    specs = [spec] * n_layers if isinstance(spec, str) else list(spec) if isinstance(spec, (list, tuple)) else None
    if specs is None or not all(isinstance(s, str) for s in specs):
        raise TypeError(f"attention: expected a pattern spec string or a list of them, got {spec!r}")
    if len(specs) != n_layers:
        raise ValueError(f"attention: expected one spec for all layers or {n_layers} specs, got {len(specs)}")
    for s in specs:
        if s != "full":
            P.parse_spec(s)  # raises ValueError naming what is wrong
    return specs


class _Patterns:
    """Each layer's attention pattern, built from its spec once per sequence length.

    Parsed, made causal (for a decoder) and prepared for the kernels here, once: the
    attention modules take the [`ReadyPattern`][refsparse.nn.ReadyPattern] as it is
    and only remove padded keys.
    """

    def __init__(self, specs, causal, n_heads):
        self.specs = specs
        self.causal = causal
        self.n_heads = n_heads
        self._cache = {}

    def __call__(self, layer, t):
        spec = self.specs[layer]
        if spec == "full":
            return None  # dense attention
        key = (spec, t)
        if key not in self._cache:
            from . import patterns as P

            self._cache[key] = ready_pattern(P.parse(spec, t), self.n_heads, t, t, causal=self.causal)
        return self._cache[key]


def _check_length(name, ids, max_len):
    if ids.shape[1] > max_len:
        raise ValueError(f"{name}: expected at most max_len={max_len} positions, got shape {ids.shape}")


def _check_padding_mask(name, mask, ids):
    if mask is not None:
        check_bool(name, mask)
        check_shape(name, mask, ids.shape)


def _config_from_dict(cls, d):
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"config: unknown keys {unknown} for {cls.__name__}; known: {sorted(names)}")
    return cls(**d)


def _positional(kind, max_len, d_model, rng, dtype):
    if kind == "sinusoidal":
        return SinusoidalPositionalEncoding(max_len, d_model, dtype=dtype)
    return LearnedPositionalEmbedding(max_len, d_model, rng=rng, dtype=dtype)


class OutputHead(Module):
    """logits = h @ W.T (+ b); W is the head's own weight, or the tied embedding's.

    Public so that pruning can recognise the output head (refsparse.prune.sparsify).
    """

    def __init__(self, d_model, vocab_size, tied_to=None, *, rng, dtype):
        super().__init__()
        # kept out of the module tree, so the tied weight is listed once, under the embedding
        object.__setattr__(self, "_tied", tied_to)
        if tied_to is None:
            self.proj = Linear(d_model, vocab_size, bias=False, rng=rng, dtype=dtype)
        self._cache = None

    def compute(self, h):
        """h (…, C) -> logits (…, V); h is checked by the model."""
        if self._tied is None:
            return self.proj.compute(h)
        logits, self._cache = F.linear_forward(h, self._tied.weight.value)
        return logits

    def backward(self, dlogits):
        if self._tied is None:
            return self.proj.backward(dlogits)
        dh, dw, _ = F.linear_backward(dlogits, self._cache_or_raise())
        self._tied.weight.grad += dw  # the embedding's gradient gets both uses, by +=
        return dh


# --------------------------------------------------------------------------------------
# Encoder-decoder
# --------------------------------------------------------------------------------------


class _ConfigDict:
    """to_dict / from_dict, shared by the model configs."""

    def to_dict(self):
        """The config as a plain dict (what checkpoints store)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        """The config of a dict made by `to_dict`; unknown keys are an error."""
        return _config_from_dict(cls, d)


@dataclass
class TransformerConfig(_ConfigDict):
    """The encoder-decoder Transformer; defaults are the base model of Vaswani et al. (2017)."""

    src_vocab_size: int = 32  # source vocabulary (ids 0 .. src_vocab_size-1)
    tgt_vocab_size: int = 32  # target vocabulary
    d_model: int = 512  # width of every residual stream
    n_heads: int = 8  # attention heads; must divide d_model
    n_encoder_layers: int = 6  # N in the paper
    n_decoder_layers: int = 6
    d_ff: int = 2048  # inner width of the feed-forward block
    dropout: float = 0.1  # P_drop: on embeddings+positions, attention weights, sub-layer outputs
    activation: str = "relu"  # "relu" (the paper), "gelu" (erf) or "gelu_tanh"
    norm_first: bool = False  # False: post-LN as in the paper; True: pre-LN
    max_len: int = 512  # longest source or target sequence
    positional: str = "sinusoidal"  # "sinusoidal" (§3.5) or "learned"
    tie_embeddings: bool = False  # share the target embedding with the output projection (§3.4)
    pad_id: int | None = None  # if set, ids equal to it are masked as keys and ignored by the loss
    layer_norm_eps: float = 1e-5
    dtype: str = "float64"  # "float64" (reference) or "float32"
    # self-attention pattern spec (refsparse.patterns.parse): "full" is dense attention; any
    # other spec, e.g. "local:window=64", runs the sparse kernels. One spec for all layers, or
    # a list with one per layer. Encoder and decoder take the same; the decoder's is made
    # causal. Cross-attention stays dense. A sparse spec needs dropout=0 (the sparse kernels
    # have no dropout on the attention weights).
    attention: str | list = "full"


class Transformer(Module):
    """Encoder-decoder Transformer (Vaswani et al. 2017, Figure 1).

    ``forward(src, tgt)`` with src (B, S) and tgt (B, T) integer ids returns logits
    (B, T, tgt_vocab_size): position t predicts the target token after tgt[:, t]
    (the decoder's self-attention is causal).

    Embeddings are multiplied by √d_model (§3.4); the encoder and the decoder each end
    with a LayerNorm, as ``torch.nn.Transformer`` does, in both norm placements.
    """

    def __init__(self, config: TransformerConfig, *, rng=None):
        super().__init__()
        _check_config(config)
        rng = check_rng(rng)
        c = config
        dtype = check_dtype_name("dtype", c.dtype)
        self.config = c
        self.rng = rng
        self.embed_scale = math.sqrt(c.d_model)
        # embeddings drawn with std d^-1/2, so that √d · embedding has unit scale
        std = c.d_model ** -0.5
        self.src_embed = Embedding(c.src_vocab_size, c.d_model, std=std, rng=rng, dtype=dtype)
        self.tgt_embed = Embedding(c.tgt_vocab_size, c.d_model, std=std, rng=rng, dtype=dtype)
        self.src_pos = _positional(c.positional, c.max_len, c.d_model, rng, dtype)
        self.tgt_pos = _positional(c.positional, c.max_len, c.d_model, rng, dtype)
        self.src_dropout = Dropout(c.dropout, rng=rng)
        self.tgt_dropout = Dropout(c.dropout, rng=rng)
        layer_args = (c.d_model, c.n_heads, c.d_ff, c.dropout, c.activation, c.norm_first,
                      c.layer_norm_eps)
        self.encoder = ModuleList(
            EncoderLayer(*layer_args, rng=rng, dtype=dtype) for _ in range(c.n_encoder_layers)
        )
        self.encoder_norm = LayerNorm(c.d_model, c.layer_norm_eps, dtype=dtype)
        self.decoder = ModuleList(
            DecoderLayer(*layer_args, rng=rng, dtype=dtype) for _ in range(c.n_decoder_layers)
        )
        self.decoder_norm = LayerNorm(c.d_model, c.layer_norm_eps, dtype=dtype)
        n = max(c.n_encoder_layers, c.n_decoder_layers)
        object.__setattr__(self, "_enc_patterns", _Patterns(_attention_specs(c, n), False, c.n_heads))
        object.__setattr__(self, "_dec_patterns", _Patterns(_attention_specs(c, n), True, c.n_heads))
        self.head = OutputHead(c.d_model, c.tgt_vocab_size,
                                self.tgt_embed if c.tie_embeddings else None, rng=rng, dtype=dtype)
        self._masks = None

    def _padding(self, ids, given):
        if given is not None or self.config.pad_id is None:
            return given
        return ids == self.config.pad_id  # (B, T) True = padding

    def encode(self, src, src_key_padding_mask=None):
        """src (B, S) ids -> memory (B, S, C)."""
        check_int("src", src, ndim=2, low=0, high=self.config.src_vocab_size)
        _check_length("src", src, self.config.max_len)
        _check_padding_mask("src_key_padding_mask", src_key_padding_mask, src)
        kpm = self._padding(src, src_key_padding_mask)
        x = self.src_embed.forward(src) * self.embed_scale  # (B, S, C)
        x = self.src_dropout.forward(self.src_pos.compute(x))
        for i, layer in enumerate(self.encoder):
            x = layer.compute(x, key_padding_mask=kpm, pattern=self._enc_patterns(i, x.shape[1]))
        return self.encoder_norm.compute(x)

    def decode(self, tgt, memory, src_key_padding_mask=None, tgt_key_padding_mask=None):
        """tgt (B, T) ids and memory (B, S, C) -> logits (B, T, V)."""
        check_int("tgt", tgt, ndim=2, low=0, high=self.config.tgt_vocab_size)
        _check_length("tgt", tgt, self.config.max_len)
        _check_padding_mask("tgt_key_padding_mask", tgt_key_padding_mask, tgt)
        check_features("memory", memory, self.config.d_model, self.decoder_norm.weight.value, ndim=3)
        if memory.shape[0] != tgt.shape[0] or memory.shape[2] != self.config.d_model:
            raise ValueError(f"memory: expected shape ({tgt.shape[0]}, *, {self.config.d_model}) "
                             f"(the batch of tgt), got {memory.shape}")
        if src_key_padding_mask is not None:
            check_bool("src_key_padding_mask", src_key_padding_mask)
            check_shape("src_key_padding_mask", src_key_padding_mask, memory.shape[:2])
        kpm = self._padding(tgt, tgt_key_padding_mask)
        y = self.tgt_embed.forward(tgt) * self.embed_scale  # (B, T, C)
        y = self.tgt_dropout.forward(self.tgt_pos.compute(y))
        for i, layer in enumerate(self.decoder):
            y = layer.compute(y, memory, causal=True, tgt_key_padding_mask=kpm,
                              memory_key_padding_mask=src_key_padding_mask,
                              tgt_pattern=self._dec_patterns(i, y.shape[1]))
        return self.head.compute(self.decoder_norm.compute(y))

    def forward(self, src, tgt, src_key_padding_mask=None, tgt_key_padding_mask=None):
        """src (B, S) and tgt (B, T) ids -> logits (B, T, V): encode, then decode."""
        check_int("src", src, ndim=2)
        check_int("tgt", tgt, ndim=2)
        if tgt.shape[0] != src.shape[0]:
            raise ValueError(f"tgt: expected batch size {src.shape[0]} (that of src {src.shape}), "
                             f"got shape {tgt.shape}")
        src_kpm = self._padding(src, src_key_padding_mask)
        memory = self.encode(src, src_kpm)
        return self.decode(tgt, memory, src_kpm, tgt_key_padding_mask)

    def backward(self, dlogits):
        """Accumulate every parameter's gradient; the ids have none, so returns None."""
        dy = self.decoder_norm.backward(self.head.backward(dlogits))
        dmemory = 0
        for layer in reversed(self.decoder):
            dy, dm = layer.backward(dy)
            dmemory = dmemory + dm  # the memory feeds every decoder layer
        dy = self.tgt_pos.backward(self.tgt_dropout.backward(dy))
        self.tgt_embed.backward(dy * self.embed_scale)
        dx = self.encoder_norm.backward(dmemory)
        for layer in reversed(self.encoder):
            dx = layer.backward(dx)
        dx = self.src_pos.backward(self.src_dropout.backward(dx))
        self.src_embed.backward(dx * self.embed_scale)
        return None

    def forward_backward(self, src, tgt_in, tgt_out, *, ignore_index=None, label_smoothing=0.0,
                         src_key_padding_mask=None, tgt_key_padding_mask=None):
        """One step's worth of work: logits, mean cross-entropy, and the backward pass.

        ``ignore_index`` defaults to ``config.pad_id`` (or -100 when that is None).
        Returns the loss as a Python float; gradients are accumulated into ``.grad``.
        """
        if ignore_index is None:
            ignore_index = -100 if self.config.pad_id is None else self.config.pad_id
        logits = self.forward(src, tgt_in, src_key_padding_mask, tgt_key_padding_mask)
        loss, cache = F.cross_entropy_forward(logits, tgt_out, ignore_index=ignore_index,
                                              label_smoothing=label_smoothing)
        self.backward(F.cross_entropy_backward(1.0, cache))
        return float(loss)


# --------------------------------------------------------------------------------------
# Decoder-only language model
# --------------------------------------------------------------------------------------


@dataclass
class DecoderLMConfig(_ConfigDict):
    """A decoder-only, causal language model in the GPT-2 style."""

    vocab_size: int = 256  # token vocabulary
    d_model: int = 128  # width of the residual stream
    n_heads: int = 4  # attention heads; must divide d_model
    n_layers: int = 4  # number of blocks (self-attention + feed-forward)
    d_ff: int = 512  # inner width of the feed-forward block (4 × d_model in GPT-2)
    max_len: int = 128  # context length (positions available)
    dropout: float = 0.0  # on embeddings, attention weights and sub-layer outputs
    activation: str = "gelu"  # "gelu" (erf), "gelu_tanh" (GPT-2's) or "relu"
    norm_first: bool = True  # pre-LN as GPT-2; False gives post-LN blocks
    positional: str = "learned"  # "learned" (GPT-2) or "sinusoidal"
    tie_embeddings: bool = True  # the output head reuses the token embedding (GPT-2)
    layer_norm_eps: float = 1e-5
    dtype: str = "float64"  # "float64" (reference) or "float32"
    # attention pattern spec (refsparse.patterns.parse), made causal: "full" is dense causal
    # attention (BLAS); "causal" the same function through the sparse kernels; e.g.
    # "local:window=64", "strided:stride=16", "fixed:block=16,c=2". One spec for all layers,
    # or a list with one per layer. A sparse spec needs dropout=0 (the sparse kernels have no
    # dropout on the attention weights).
    attention: str | list = "full"


class DecoderLM(Module):
    """Decoder-only language model: embeddings, N causal blocks, a final norm, the head.

    ``forward(ids)`` with ids (B, T), T ≤ max_len, returns logits (B, T, V) where
    position t predicts token t + 1. Blocks are [`refsparse.nn.EncoderLayer`][refsparse.nn.transformer.EncoderLayer] run with
    a causal mask (a decoder without cross-attention).
    """

    def __init__(self, config: DecoderLMConfig, *, rng=None):
        super().__init__()
        _check_config(config)
        rng = check_rng(rng)
        c = config
        dtype = check_dtype_name("dtype", c.dtype)
        self.config = c
        self.rng = rng
        self.tok_embed = Embedding(c.vocab_size, c.d_model, std=0.02, rng=rng, dtype=dtype)
        self.pos_embed = _positional(c.positional, c.max_len, c.d_model, rng, dtype)
        self.dropout = Dropout(c.dropout, rng=rng)
        self.blocks = ModuleList(
            EncoderLayer(c.d_model, c.n_heads, c.d_ff, c.dropout, c.activation, c.norm_first,
                         c.layer_norm_eps, rng=rng, dtype=dtype)
            for _ in range(c.n_layers)
        )
        self.norm_f = LayerNorm(c.d_model, c.layer_norm_eps, dtype=dtype)
        object.__setattr__(self, "_patterns", _Patterns(_attention_specs(c, c.n_layers), True, c.n_heads))
        self.head = OutputHead(c.d_model, c.vocab_size, self.tok_embed if c.tie_embeddings else None,
                                rng=rng, dtype=dtype)

    def forward(self, ids, key_padding_mask=None, position_ids=None):
        """ids (B, T) -> logits (B, T, V); position t predicts token t + 1.

        Parameters
        ----------
        ids : int array (B, T), T <= max_len
        key_padding_mask : bool array (B, T), optional
            True where the token is *padding* (torch's ``key_padding_mask``; the opposite of
            Hugging Face's ``attention_mask``, where 1 = a real token): no query attends to a
            padded key. Padding may sit on the left or the right. A query left with no key to
            attend to (a left-padded row's padding) gets a zero attention output, never NaN;
            give its targets ``ignore_index`` so that the loss ignores its logits.
        position_ids : int array (B, T) or (T,), optional
            The position of each token, in [0, max_len); default 0 .. T-1 for every row.
            Left-padded rows usually start their real tokens at position 0.
        """
        check_int("ids", ids, ndim=2, low=0, high=self.config.vocab_size)
        if ids.shape[1] > self.config.max_len:
            raise ValueError(f"ids: expected at most max_len={self.config.max_len} positions, "
                             f"got shape {ids.shape}")
        _check_padding_mask("key_padding_mask", key_padding_mask, ids)
        if position_ids is not None:
            check_positions("position_ids", position_ids, ids.shape[0], ids.shape[1], self.config.max_len)
        x = self.tok_embed.forward(ids)  # (B, T, C)
        x = self.dropout.forward(self.pos_embed.compute(x, position_ids))
        for i, block in enumerate(self.blocks):
            # pattern None: dense causal attention; else the sparse kernels on its entries
            x = block.compute(x, causal=True, key_padding_mask=key_padding_mask,
                              pattern=self._patterns(i, x.shape[1]))
        return self.head.compute(self.norm_f.compute(x))  # (B, T, V)

    def attention_pattern(self, layer, t):
        """Block ``layer``'s attention pattern at sequence length ``t``, made causal: a
        [`ReadyPattern`][refsparse.nn.ReadyPattern], or None for dense causal attention
        (spec ``"full"``). The same object every forward at length ``t`` uses."""
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(self.blocks):
            raise ValueError(f"layer: expected a block index in [0, {len(self.blocks)}), got {layer!r}")
        if isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= self.config.max_len:
            raise ValueError(f"t: expected a length in [1, max_len={self.config.max_len}], got {t!r}")
        return self._patterns(layer, t)

    def backward(self, dlogits):
        """Accumulate every parameter's gradient; the ids have none, so returns None."""
        dx = self.norm_f.backward(self.head.backward(dlogits))
        for block in reversed(self.blocks):
            dx = block.backward(dx)
        dx = self.pos_embed.backward(self.dropout.backward(dx))
        self.tok_embed.backward(dx)
        return None

    def forward_backward(self, ids, targets, *, ignore_index=-100, label_smoothing=0.0,
                         key_padding_mask=None, position_ids=None):
        """Logits, mean cross-entropy against ``targets`` (B, T), backward; returns the loss.

        ``targets[b, t]`` is the token that position t should predict (ids shifted by one);
        positions whose target is ``ignore_index`` (padding) do not count.
        """
        logits = self.forward(ids, key_padding_mask, position_ids)
        loss, cache = F.cross_entropy_forward(logits, targets, ignore_index=ignore_index,
                                              label_smoothing=label_smoothing)
        self.backward(F.cross_entropy_backward(1.0, cache))
        return float(loss)

