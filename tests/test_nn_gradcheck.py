"""Every module and both models against central differences in float64 (refsparse.gradcheck.check_module).

check_module draws a random upstream gradient and differences every float input and every
parameter; a tensor passes at rtol 1e-7 relative to its largest entry. Layer shapes are drawn
by hypothesis (batch 1–3, length 1–9, widths 1–16, heads dividing the width); the models use
tiny fixed configurations. To keep the file fast, the bigger modules difference a random
subset of each tensor's entries (``max_entries``) — a different subset for every example.

Two things make a forward pass unfit for finite differences, and the tests deal with both:

- **Dropout in training mode** draws a fresh mask per call. :class:`Reseeded` restores the
  generator's state before every forward, so each call draws the *same* mask and the module is a
  fixed (piecewise-linear) function that gradcheck can difference.
- **ReLU's kink at 0.** A pre-activation within a few steps h = 1e-5 of 0 makes the difference
  straddle the kink and the check meaningless (not wrong). :func:`assume_clear_of_relu_kinks`
  rejects such rare examples rather than letting them flake.
"""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from refsparse import nn
from refsparse.gradcheck import check_module
from refsparse.models import DecoderLM, DecoderLMConfig, Transformer, TransformerConfig

RTOL = 1e-7

batch = st.integers(1, 3)
length = st.integers(1, 9)
width = st.integers(1, 16)
seeds = st.integers(0, 2**32 - 1)


@st.composite
def heads_and_width(draw):
    """(H, C) with H dividing C and C <= 16."""
    h = draw(st.integers(1, 4))
    return h, h * draw(st.integers(1, 16 // h))


def check(module, *inputs, seed, **kw):
    """check_module at RTOL with an upstream gradient drawn from ``seed``; raise on failure."""
    report = check_module(module, *inputs, rng=np.random.default_rng(seed), rtol=RTOL, **kw)
    report.raise_if_failed()
    return report


class Reseeded(nn.Module):
    """Run ``inner`` with ``rng`` rewound to the same state before every forward.

    Every dropout in ``inner`` that draws from ``rng`` then applies the same mask on every call,
    so a training-mode forward is a deterministic function of the inputs and parameters.
    """

    def __init__(self, inner, rng):
        super().__init__()
        self.inner = inner
        self._rng = rng
        self._state = rng.bit_generator.state  # a snapshot (a dict copy)

    def forward(self, *inputs, **kwargs):
        self._rng.bit_generator.state = self._state
        return self.inner.forward(*inputs, **kwargs)

    def backward(self, dout):
        return self.inner.backward(dout)


def clear_of_relu_kinks(module, margin=1e-3):
    """Whether every ReLU input of the module's last forward lies at least ``margin`` from 0.

    Perturbing one entry by 2h = 2e-5 moves a pre-activation by 2h times its sensitivity; the
    margin leaves room for sensitivities up to ~50. Only FeedForward blocks hold ReLUs; their
    pre-activation is recomputed from linear1's cache.
    """
    for _, m in module.named_modules():
        if isinstance(m, nn.FeedForward) and m.act.name == "relu":
            lin = m.linear1
            pre = lin._cache.x @ lin.weight.value.T + lin.bias.value  # (..., d_ff)
            if np.abs(pre).min() <= margin:
                return False
    return True


def randn(rng, *shape):
    return rng.standard_normal(shape)


# ----------------------------------------------------------------------------------------
# basic layers


@given(b=batch, t=length, c_in=width, c_out=width, bias=st.booleans(), seed=seeds)
def test_linear(b, t, c_in, c_out, bias, seed):
    rng = np.random.default_rng(seed)
    lin = nn.Linear(c_in, c_out, bias, rng=rng)
    report = check(lin, randn(rng, b, t, c_in), seed=seed)
    names = {r.name for r in report.tensors}
    assert names == ({"input0", "weight", "bias"} if bias else {"input0", "weight"})


@given(b=batch, c_in=width, c_out=width, seed=seeds)
def test_linear_2d_input(b, c_in, c_out, seed):
    rng = np.random.default_rng(seed)
    check(nn.Linear(c_in, c_out, rng=rng), randn(rng, b, c_in), seed=seed)


@given(b=batch, t=length, v=width, c=width, seed=seeds)
def test_embedding(b, t, v, c, seed):
    rng = np.random.default_rng(seed)
    emb = nn.Embedding(v, c, rng=rng)
    ids = rng.integers(0, v, size=(b, t))  # repeats are likely: their rows must accumulate
    report = check(emb, ids, seed=seed)
    assert [r.name for r in report.tensors] == ["weight"]  # ids are not differenced


@given(b=batch, t=length, c=width, seed=seeds)
def test_layernorm(b, t, c, seed):
    rng = np.random.default_rng(seed)
    ln = nn.LayerNorm(c)
    ln.weight.value[...] = randn(rng, c)  # not the ones / zeros of the initialisation
    ln.bias.value[...] = randn(rng, c)
    check(ln, randn(rng, b, t, c), seed=seed)


@given(b=batch, t=length, extra=st.integers(0, 3), c=width, seed=seeds)
def test_sinusoidal_positional_encoding(b, t, extra, c, seed):
    rng = np.random.default_rng(seed)
    report = check(nn.SinusoidalPositionalEncoding(t + extra, c), randn(rng, b, t, c), seed=seed)
    assert [r.name for r in report.tensors] == ["input0"]  # a fixed table: no parameter


@given(b=batch, t=length, extra=st.integers(0, 3), c=width, seed=seeds)
def test_learned_positional_embedding(b, t, extra, c, seed):
    rng = np.random.default_rng(seed)
    pos = nn.LearnedPositionalEmbedding(t + extra, c, std=1.0, rng=rng)
    check(pos, randn(rng, b, t, c), seed=seed)  # rows past t have a zero gradient, checked too


@pytest.mark.parametrize("name", nn.Activation.NAMES)
@given(b=batch, t=length, c=width, seed=seeds)
def test_activation(name, b, t, c, seed):
    rng = np.random.default_rng(seed)
    x = randn(rng, b, t, c)
    if name == "relu":
        x[np.abs(x) < 1e-3] = 0.5  # keep clear of the kink
    check(nn.Activation(name), x, seed=seed)


@given(b=batch, t=length, c=width, seed=seeds)
def test_dropout_eval_is_identity(b, t, c, seed):
    rng = np.random.default_rng(seed)
    drop = nn.Dropout(0.3, rng=rng).eval()
    x = randn(rng, b, t, c)
    check(drop, x, seed=seed)
    np.testing.assert_array_equal(drop.forward(x), x)


@pytest.mark.parametrize("p", [0.3, 1.0])
@given(b=batch, t=length, c=width, seed=seeds)
def test_dropout_train(p, b, t, c, seed):
    rng = np.random.default_rng(seed)
    drop = nn.Dropout(p, rng=np.random.default_rng(seed + 1))
    check(Reseeded(drop, drop.rng), randn(rng, b, t, c), seed=seed)


# ----------------------------------------------------------------------------------------
# attention


def _mha(rng, c, h, bias=True, dropout=0.0):
    return nn.MultiHeadAttention(c, h, dropout, bias, rng=rng)


@given(b=batch, t=length, hc=heads_and_width(), bias=st.booleans(), causal=st.booleans(), seed=seeds)
def test_mha_self(b, t, hc, bias, causal, seed):
    rng = np.random.default_rng(seed)
    h, c = hc
    check(_mha(rng, c, h, bias), randn(rng, b, t, c), kwargs=dict(causal=causal), seed=seed,
          max_entries=24)


@given(b=batch, t_q=length, t_k=length, hc=heads_and_width(), causal=st.booleans(), seed=seeds)
def test_mha_cross(b, t_q, t_k, hc, causal, seed):
    assume(t_q != t_k)
    rng = np.random.default_rng(seed)
    h, c = hc
    report = check(_mha(rng, c, h), randn(rng, b, t_q, c), randn(rng, b, t_k, c),
                   kwargs=dict(causal=causal), seed=seed, max_entries=24)
    assert {"input0", "input1"} <= {r.name for r in report.tensors}  # the queries' and the memory's


@given(b=st.integers(2, 3), t_q=length, t_k=length, hc=heads_and_width(), self_attn=st.booleans(),
       seed=seeds)
def test_mha_key_padding_with_a_fully_padded_row(b, t_q, t_k, hc, self_attn, seed):
    rng = np.random.default_rng(seed)
    h, c = hc
    t_k = t_q if self_attn else t_k
    kpm = rng.random((b, t_k)) < 0.4  # True = padded key
    kpm[0] = True  # batch element 0 has nothing to attend to
    kpm[1, rng.integers(t_k)] = False  # element 1 keeps at least one key
    mha = _mha(rng, c, h)
    inputs = (randn(rng, b, t_q, c),) + (() if self_attn else (randn(rng, b, t_k, c),))
    check(mha, *inputs, kwargs=dict(key_padding_mask=kpm), seed=seed, max_entries=24)
    # the fully padded element: a zero attention output, so the layer returns out_proj's bias
    y = mha.forward(*inputs, key_padding_mask=kpm)
    np.testing.assert_array_equal(y[0], np.broadcast_to(mha.out_proj.bias.value, y[0].shape))


@given(b=batch, t_q=length, t_k=length, hc=heads_and_width(), causal=st.booleans(), seed=seeds)
def test_mha_attn_mask(b, t_q, t_k, hc, causal, seed):
    rng = np.random.default_rng(seed)
    h, c = hc
    attn_mask = rng.random((t_q, t_k)) < 0.6  # True = allowed
    attn_mask[rng.integers(t_q)] = False  # one query sees nothing
    kpm = rng.random((b, t_k)) < 0.2
    check(_mha(rng, c, h), randn(rng, b, t_q, c), randn(rng, b, t_k, c),
          kwargs=dict(attn_mask=attn_mask, key_padding_mask=kpm, causal=causal), seed=seed,
          max_entries=24)


@given(b=batch, t=length, hc=heads_and_width(), seed=seeds)
def test_mha_attention_dropout_train(b, t, hc, seed):
    rng = np.random.default_rng(seed)
    h, c = hc
    mha = _mha(rng, c, h, dropout=0.3)
    check(Reseeded(mha, mha.rng), randn(rng, b, t, c), kwargs=dict(causal=True), seed=seed,
          max_entries=24)


# ----------------------------------------------------------------------------------------
# feed-forward, encoder and decoder layers


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh"])
@given(b=batch, t=length, c=width, d_ff=width, seed=seeds)
def test_feedforward(activation, b, t, c, d_ff, seed):
    rng = np.random.default_rng(seed)
    ff = nn.FeedForward(c, d_ff, activation, rng=rng)
    x = randn(rng, b, t, c)
    ff.forward(x)
    assume(clear_of_relu_kinks(ff))
    check(ff, x, seed=seed, max_entries=32)


LAYER_VARIANTS = pytest.mark.parametrize(
    "norm_first, activation",
    [(False, "relu"), (False, "gelu"), (True, "relu"), (True, "gelu")],
    ids=["post-LN-relu", "post-LN-gelu", "pre-LN-relu", "pre-LN-gelu"],
)


@LAYER_VARIANTS
@given(b=batch, t=length, hc=heads_and_width(), d_ff=width, causal=st.booleans(), padded=st.booleans(),
       seed=seeds)
def test_encoder_layer(norm_first, activation, b, t, hc, d_ff, causal, padded, seed):
    rng = np.random.default_rng(seed)
    h, c = hc
    layer = nn.EncoderLayer(c, h, d_ff, 0.0, activation, norm_first, rng=rng)
    x = randn(rng, b, t, c)
    kw = dict(causal=causal, key_padding_mask=(rng.random((b, t)) < 0.3) if padded else None)
    layer.forward(x, **kw)
    assume(clear_of_relu_kinks(layer))
    # Post-LN over C = 2 features maps (a, b) to ±γ + β up to eps: its true gradient is only
    # eps's trace (~1e-7, with curvature ~ 1/|a − b|³), below what central differences at
    # h = 1e-5 resolve to rtol 1e-7. (Seen once in CI: DecoderLayer, C = 2, d_ff = 1, seed 193.)
    assume(norm_first or c != 2)
    check(layer, x, kwargs=kw, seed=seed, max_entries=6)


@LAYER_VARIANTS
@given(b=batch, t=length, s=length, hc=heads_and_width(), d_ff=width, padded=st.booleans(), seed=seeds)
def test_decoder_layer(norm_first, activation, b, t, s, hc, d_ff, padded, seed):
    rng = np.random.default_rng(seed)
    h, c = hc
    layer = nn.DecoderLayer(c, h, d_ff, 0.0, activation, norm_first, rng=rng)
    x, memory = randn(rng, b, t, c), randn(rng, b, s, c)
    kw = {}
    if padded:
        kw = dict(tgt_key_padding_mask=rng.random((b, t)) < 0.3,
                  memory_key_padding_mask=rng.random((b, s)) < 0.3,
                  memory_mask=rng.random((t, s)) < 0.8)
    layer.forward(x, memory, **kw)
    assume(clear_of_relu_kinks(layer))
    assume(norm_first or c != 2)  # post-LN over 2 features: see test_encoder_layer
    report = check(layer, x, memory, kwargs=kw, seed=seed, max_entries=3)
    assert {"input0", "input1"} <= {r.name for r in report.tensors}


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_encoder_layer_dropout_train(norm_first):
    """Attention, activation and residual dropouts in training mode, with rewound masks."""
    rng = np.random.default_rng(7)
    layer = nn.EncoderLayer(8, 2, 12, 0.25, "gelu", norm_first, rng=rng)
    check(Reseeded(layer, rng), randn(rng, 2, 5, 8), kwargs=dict(causal=True), seed=7, max_entries=12)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_decoder_layer_dropout_train(norm_first):
    rng = np.random.default_rng(8)
    layer = nn.DecoderLayer(8, 2, 12, 0.25, "gelu", norm_first, rng=rng)
    check(Reseeded(layer, rng), randn(rng, 2, 4, 8), randn(rng, 2, 6, 8), seed=8, max_entries=12)


# ----------------------------------------------------------------------------------------
# whole models (tiny configurations)


MODEL_VARIANTS = pytest.mark.parametrize(
    "tie, positional, norm_first, activation",
    [
        (False, "sinusoidal", False, "relu"),
        (True, "sinusoidal", True, "gelu"),
        (False, "learned", True, "gelu_tanh"),
        (True, "learned", False, "gelu"),
    ],
    ids=["untied-sin-postLN-relu", "tied-sin-preLN-gelu", "untied-learned-preLN-gelu_tanh",
         "tied-learned-postLN-gelu"],
)


@MODEL_VARIANTS
def test_transformer(tie, positional, norm_first, activation):
    # two decoder layers: the memory's gradient is the sum over the layers that read it
    cfg = TransformerConfig(src_vocab_size=7, tgt_vocab_size=6, d_model=4, n_heads=2, n_encoder_layers=1,
                            n_decoder_layers=2, d_ff=6, dropout=0.0, activation=activation,
                            norm_first=norm_first, max_len=7, positional=positional, tie_embeddings=tie)
    src_kpm = np.zeros((2, 5), bool)
    src_kpm[1, 3:] = True
    tgt_kpm = np.zeros((2, 4), bool)
    tgt_kpm[0, 3:] = True
    kw = dict(src_key_padding_mask=src_kpm, tgt_key_padding_mask=tgt_kpm)
    for seed in range(11, 100):  # the first seed whose ReLU inputs are clear of the kink
        rng = np.random.default_rng(seed)
        model = Transformer(cfg, rng=rng)
        src, tgt = rng.integers(0, 7, (2, 5)), rng.integers(0, 6, (2, 4))
        model.forward(src, tgt, **kw)
        if clear_of_relu_kinks(model):
            break
    report = check(model, src, tgt, kwargs=kw, seed=seed, max_entries=4)
    names = {r.name for r in report.tensors}
    assert ("head.proj.weight" in names) is not tie
    assert ("src_pos.weight" in names) is (positional == "learned")


def test_transformer_pad_id_and_dropout_train():
    """pad_id builds the padding masks; all dropouts on, masks rewound for every forward."""
    rng = np.random.default_rng(12)
    cfg = TransformerConfig(src_vocab_size=6, tgt_vocab_size=6, d_model=4, n_heads=2, n_encoder_layers=1,
                            n_decoder_layers=1, d_ff=6, dropout=0.2, activation="gelu", max_len=6,
                            pad_id=0, tie_embeddings=True)
    model = Transformer(cfg, rng=rng)
    src = np.array([[3, 4, 5, 0, 0], [1, 2, 3, 4, 5]])
    tgt = np.array([[1, 2, 0, 0], [5, 4, 3, 2]])
    check(Reseeded(model, model.rng), src, tgt, seed=12, max_entries=10)


@MODEL_VARIANTS
def test_decoder_lm(tie, positional, norm_first, activation):
    cfg = DecoderLMConfig(vocab_size=7, d_model=4, n_heads=2, n_layers=2, d_ff=6, max_len=7, dropout=0.0,
                          activation=activation, norm_first=norm_first, positional=positional,
                          tie_embeddings=tie)
    for seed in range(13, 100):  # the first seed whose ReLU inputs are clear of the kink
        rng = np.random.default_rng(seed)
        model = DecoderLM(cfg, rng=rng)
        ids = rng.integers(0, 7, (2, 6))
        model.forward(ids)
        if clear_of_relu_kinks(model):
            break
    report = check(model, ids, seed=seed, max_entries=12)
    names = {r.name for r in report.tensors}
    assert ("head.proj.weight" in names) is not tie
    assert ("pos_embed.weight" in names) is (positional == "learned")


def test_decoder_lm_dropout_train():
    rng = np.random.default_rng(14)
    cfg = DecoderLMConfig(vocab_size=7, d_model=4, n_heads=2, n_layers=2, d_ff=6, max_len=6, dropout=0.2)
    model = DecoderLM(cfg, rng=rng)
    check(Reseeded(model, model.rng), rng.integers(0, 7, (2, 5)), seed=14, max_entries=12)
