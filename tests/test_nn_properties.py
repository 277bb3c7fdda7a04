"""Properties of the modules and models that are not numbers: dtypes, errors, names, state.

- float32 in gives float32 out (and float64 gives float64), for every module and both models,
  outputs, input gradients and parameter gradients alike; parameters keep their dtype.
- Bad input raises ValueError or TypeError whose message starts with the argument's name and
  gives the expected and the actual value (one case per kind of mistake).
- parameters() names are dotted, stable and unique; they are the keys of state_dict().
- state_dict / load_state_dict round trip bit-exactly; missing, unexpected, misshapen and
  mistyped entries are refused, and a refused load changes nothing.
- zero_grad, train/eval (dropout), gradient accumulation over two backward calls, tied
  embeddings listed once.
- torch -> refsparse -> torch (and back) copies every weight bit-exactly, for each module
  refsparse.interop.torch supports.
"""

import re

import numpy as np
import pytest

from refsparse import nn
from refsparse.models import DecoderLM, DecoderLMConfig, Transformer, TransformerConfig

DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])

B, T, S, C, H, FF, V = 2, 5, 4, 8, 2, 12, 7


def tiny_lm(dtype="float64", seed=0, **kw):
    cfg = dict(vocab_size=V, d_model=C, n_heads=H, n_layers=2, d_ff=FF, max_len=6, dtype=np.dtype(dtype).name)
    return DecoderLM(DecoderLMConfig(**{**cfg, **kw}), rng=np.random.default_rng(seed))


def tiny_transformer(dtype="float64", seed=0, **kw):
    cfg = dict(src_vocab_size=V, tgt_vocab_size=V + 2, d_model=C, n_heads=H, n_encoder_layers=2,
               n_decoder_layers=2, d_ff=FF, max_len=6, dtype=np.dtype(dtype).name)
    return Transformer(TransformerConfig(**{**cfg, **kw}), rng=np.random.default_rng(seed))


def randn(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


# ----------------------------------------------------------------------------------------
# every module, with inputs: (module, float inputs, kwargs) for a dtype


def _cases(dtype, rng):
    x, mem = randn(rng, (B, T, C), dtype), randn(rng, (B, S, C), dtype)
    ids = rng.integers(0, V, (B, T))
    kpm = np.zeros((B, T), bool)
    kpm[1, 3:] = True
    d = np.dtype(dtype).name
    return {
        "Linear": (nn.Linear(C, 3, rng=rng, dtype=d), (x,), {}),
        "Linear-nobias": (nn.Linear(C, 3, bias=False, rng=rng, dtype=d), (x,), {}),
        "Embedding": (nn.Embedding(V, C, rng=rng, dtype=d), (ids,), {}),
        "LayerNorm": (nn.LayerNorm(C, dtype=d), (x,), {}),
        "Sinusoidal": (nn.SinusoidalPositionalEncoding(6, C, dtype=d), (x,), {}),
        "LearnedPositional": (nn.LearnedPositionalEmbedding(6, C, rng=rng, dtype=d), (x,), {}),
        "relu": (nn.Activation("relu"), (x,), {}),
        "gelu": (nn.Activation("gelu"), (x,), {}),
        "gelu_tanh": (nn.Activation("gelu_tanh"), (x,), {}),
        "Dropout-train": (nn.Dropout(0.3, rng=rng), (x,), {}),
        "MHA-self": (nn.MultiHeadAttention(C, H, 0.1, rng=rng, dtype=d), (x,),
                     dict(causal=True, key_padding_mask=kpm)),
        "MHA-cross": (nn.MultiHeadAttention(C, H, rng=rng, dtype=d), (x, mem), {}),
        "FeedForward": (nn.FeedForward(C, FF, "gelu", 0.1, rng=rng, dtype=d), (x,), {}),
        "EncoderLayer": (nn.EncoderLayer(C, H, FF, 0.1, rng=rng, dtype=d), (x,), dict(key_padding_mask=kpm)),
        "DecoderLayer": (nn.DecoderLayer(C, H, FF, 0.1, norm_first=True, rng=rng, dtype=d), (x, mem), {}),
        "Transformer": (tiny_transformer(dtype, dropout=0.1), (rng.integers(0, V, (B, S)), ids), {}),
        "DecoderLM": (tiny_lm(dtype, dropout=0.1), (ids,), {}),
    }


CASE_NAMES = list(_cases(np.float64, np.random.default_rng(0)))


def _as_tuple(a):
    return a if isinstance(a, tuple) else (a,)


@DTYPES
@pytest.mark.parametrize("case", CASE_NAMES)
def test_dtype_in_is_dtype_out(case, dtype):
    rng = np.random.default_rng(1)
    module, inputs, kw = _cases(dtype, rng)[case]
    y = module.forward(*inputs, **kw)
    assert y.dtype == dtype, f"{case}: output {y.dtype}"
    dinputs = module.backward(randn(rng, y.shape, dtype))
    for x, dx in zip(inputs, _as_tuple(dinputs)):
        if np.issubdtype(x.dtype, np.floating):
            assert dx.dtype == dtype and dx.shape == x.shape, f"{case}: input gradient {dx.dtype} {dx.shape}"
        else:
            assert dx is None  # token ids have no gradient
    for name, p in module.parameters():
        assert p.value.dtype == dtype and p.grad.dtype == dtype, (
            f"{case}: {name} {p.value.dtype}/{p.grad.dtype}")
        assert np.all(np.isfinite(p.grad))
    if module.dtype is not None:
        assert module.dtype == dtype


def test_float32_model_step_stays_float32():
    """forward_backward and a hand-written SGD step keep float32 parameters float32."""
    rng = np.random.default_rng(2)
    model = tiny_lm("float32")
    ids = rng.integers(0, V, (B, 6))
    loss = model.forward_backward(ids[:, :-1], ids[:, 1:])
    assert np.isfinite(loss)
    for _, p in model.parameters():
        p.values[...] -= np.float32(0.1) * p.grad
        assert p.value.dtype == np.float32 and p.grad.dtype == np.float32


# ----------------------------------------------------------------------------------------
# bad input: ValueError / TypeError naming the argument, with expected and actual


def _bad_cases():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((B, T, C))
    mem = rng.standard_normal((B, S, C))
    lin = nn.Linear(C, 3)
    ln = nn.LayerNorm(C)
    emb = nn.Embedding(V, C)
    pos = nn.SinusoidalPositionalEncoding(4, C)
    lpos = nn.LearnedPositionalEmbedding(6, C)
    mha = nn.MultiHeadAttention(C, H)
    dec = nn.DecoderLayer(C, H, FF)
    enc = nn.EncoderLayer(C, H, FF)
    tr = tiny_transformer()
    lm = tiny_lm()
    src, tgt = rng.integers(0, V, (B, S)), rng.integers(0, V, (B, T))
    ids = rng.integers(0, V, (B, T))
    cfg_t = dict(src_vocab_size=V, tgt_vocab_size=V, d_model=C, n_heads=H, max_len=6)
    cfg_lm = dict(vocab_size=V, d_model=C, n_heads=H, max_len=6)
    # (id, call, exception, argument named, fragments: expected and actual)
    return [
        # mismatched shapes
        ("linear-width", lambda: lin.forward(x[..., :5]), ValueError, "x", [str(C), "(2, 5, 5)"]),
        ("layernorm-width", lambda: ln.forward(x[..., :3]), ValueError, "x", [str(C), "(2, 5, 3)"]),
        ("positional-width", lambda: lpos.forward(x[..., :3]), ValueError, "x", [str(C), "(2, 5, 3)"]),
        ("positional-too-long", lambda: pos.forward(x), ValueError, "x", ["4", "5"]),
        ("mha-width", lambda: mha.forward(x[..., :6]), ValueError, "x", [str(C), "(2, 5, 6)"]),
        ("mha-kv-batch", lambda: mha.forward(x, mem[:1]), ValueError, "kv", ["(2, *, 8)", "(1, 4, 8)"]),
        ("mha-kv-width", lambda: mha.forward(x, mem[..., :4]), ValueError, "kv", ["(2, *, 8)", "(2, 4, 4)"]),
        ("decoder-memory-width", lambda: dec.forward(x, mem[..., :4]), ValueError, "memory",
         ["(2, *, 8)", "(2, 4, 4)"]),
        ("decoder-memory-batch", lambda: dec.forward(x, mem[:1]),
         ValueError, "memory", ["(2, *, 8)", "(1, 4, 8)"]),
        ("transformer-batch", lambda: tr.forward(src, tgt[:1]), ValueError, "tgt", ["2", "(1, 5)"]),
        ("transformer-src-too-long", lambda: tr.forward(rng.integers(0, V, (B, 7)), tgt), ValueError, "src",
         ["6", "(2, 7)"]),
        ("transformer-tgt-too-long", lambda: tr.forward(src, rng.integers(0, V, (B, 7))), ValueError, "tgt",
         ["6", "(2, 7)"]),
        ("lm-too-long", lambda: lm.forward(rng.integers(0, V, (B, 7))), ValueError, "ids", ["6", "(2, 7)"]),
        ("backward-shape", lambda: (lin.forward(x), lin.backward(np.ones((B, T, 4))))[1], ValueError, "dy",
         ["(2, 5, 3)", "(2, 5, 4)"]),
        # wrong ndim
        ("linear-0d", lambda: lin.forward(np.array(1.0)), ValueError, "x", ["1", "0"]),
        ("mha-2d", lambda: mha.forward(x[0]), ValueError, "x", ["3", "2", "(5, 8)"]),
        ("mha-kv-2d", lambda: mha.forward(x, mem[0]), ValueError, "kv", ["3", "2"]),
        ("encoder-2d", lambda: enc.forward(x[0]), ValueError, "x", ["3", "2"]),
        ("decoder-memory-2d", lambda: dec.forward(x, mem[0]), ValueError, "memory", ["3", "2"]),
        ("positional-2d", lambda: lpos.forward(x[0]), ValueError, "x", ["3", "2"]),
        ("lm-ids-1d", lambda: lm.forward(ids[0]), ValueError, "ids", ["2", "1"]),
        ("transformer-src-1d", lambda: tr.forward(src[0], tgt), ValueError, "src", ["2", "1"]),
        # integer where float is needed, and not an array
        ("linear-int", lambda: lin.forward(np.ones((B, C), int)), TypeError, "x", ["float", "int64"]),
        ("layernorm-int", lambda: ln.forward(np.ones((B, C), int)), TypeError, "x", ["float", "int64"]),
        ("activation-int", lambda: nn.Activation("gelu").forward(np.ones(3, int)), TypeError, "x",
         ["float", "int64"]),
        ("dropout-int", lambda: nn.Dropout(0.5).forward(np.ones(3, int)), TypeError, "x", ["float", "int64"]),
        ("mha-int", lambda: mha.forward(np.ones((B, T, C), int)), TypeError, "x", ["float", "int64"]),
        ("decoder-memory-int", lambda: dec.forward(x, np.ones((B, S, C), int)), TypeError, "memory",
         ["float", "int64"]),
        ("linear-list", lambda: lin.forward([[1.0] * C]), TypeError, "x", ["ndarray", "list"]),
        # ids: float where integer is needed, outside the vocabulary
        ("embedding-float-ids", lambda: emb.forward(np.ones((B, T))),
         TypeError, "ids", ["integer", "float64"]),
        ("embedding-id-too-large", lambda: emb.forward(np.array([[1, V]])),
         ValueError, "ids", [f"< {V}", str(V)]),
        ("embedding-id-negative", lambda: emb.forward(np.array([[1, -1]])),
         ValueError, "ids", [">= 0", "-1"]),
        ("lm-id-too-large", lambda: lm.forward(np.full((B, T), V)), ValueError, "ids", [f"< {V}", str(V)]),
        ("lm-float-ids", lambda: lm.forward(np.ones((B, T))), TypeError, "ids", ["integer", "float64"]),
        ("transformer-src-id", lambda: tr.forward(src + V, tgt), ValueError, "src", [f"< {V}"]),
        ("transformer-tgt-id", lambda: tr.forward(src, tgt + V + 2), ValueError, "tgt", [f"< {V + 2}"]),
        ("lm-targets", lambda: lm.forward_backward(ids, ids + V), ValueError, "targets", [str(V)]),
        # masks of the wrong shape or dtype
        ("mha-kpm-shape", lambda: mha.forward(x, key_padding_mask=np.zeros((B, T + 1), bool)), ValueError,
         "key_padding_mask", ["(2, 5)", "(2, 6)"]),
        ("mha-kpm-int", lambda: mha.forward(x, key_padding_mask=np.zeros((B, T), int)), TypeError,
         "key_padding_mask", ["bool", "int64"]),
        ("mha-attn-mask-shape", lambda: mha.forward(x, mem, attn_mask=np.ones((T, T), bool)), ValueError,
         "attn_mask", ["(5, 4)", "(5, 5)"]),
        ("mha-attn-mask-float", lambda: mha.forward(x, attn_mask=np.ones((T, T))), TypeError, "attn_mask",
         ["bool", "float64"]),
        ("encoder-kpm-shape", lambda: enc.forward(x, key_padding_mask=np.zeros((B, 2), bool)), ValueError,
         "key_padding_mask", ["(2, 5)", "(2, 2)"]),
        ("decoder-tgt-kpm", lambda: dec.forward(x, mem, tgt_key_padding_mask=np.zeros((B, S), bool)),
         ValueError, "tgt_key_padding_mask", ["(2, 5)", "(2, 4)"]),
        ("decoder-memory-kpm", lambda: dec.forward(x, mem, memory_key_padding_mask=np.zeros((B, T), bool)),
         ValueError, "memory_key_padding_mask", ["(2, 4)", "(2, 5)"]),
        ("decoder-tgt-mask", lambda: dec.forward(x, mem, tgt_mask=np.ones((T, S), bool)),
         ValueError, "tgt_mask", ["(5, 5)", "(5, 4)"]),
        ("decoder-memory-mask", lambda: dec.forward(x, mem, memory_mask=np.ones((T, T), bool)), ValueError,
         "memory_mask", ["(5, 4)", "(5, 5)"]),
        ("transformer-src-kpm", lambda: tr.forward(src, tgt, src_key_padding_mask=np.zeros((B, T), bool)),
         ValueError, "src_key_padding_mask", ["(2, 4)", "(2, 5)"]),
        ("transformer-tgt-kpm", lambda: tr.forward(src, tgt, tgt_key_padding_mask=np.zeros((B, S), bool)),
         ValueError, "tgt_key_padding_mask", ["(2, 5)", "(2, 4)"]),
        # heads not dividing the width
        ("mha-heads", lambda: nn.MultiHeadAttention(C, 3), ValueError, "n_heads", [str(C), "3"]),
        ("encoder-heads", lambda: nn.EncoderLayer(C, 3, FF), ValueError, "n_heads", [str(C), "3"]),
        ("lm-config-heads", lambda: DecoderLM(DecoderLMConfig(**{**cfg_lm, "n_heads": 3})),
         ValueError, "n_heads", [str(C), "3"]),
        ("transformer-config-heads", lambda: Transformer(TransformerConfig(**{**cfg_t, "n_heads": 3})),
         ValueError, "n_heads", [str(C), "3"]),
        # mixed dtypes: the parameters' dtype decides
        ("linear-mixed", lambda: nn.Linear(C, 3, dtype="float32").forward(x), TypeError, "x",
         ["float32", "float64"]),
        ("layernorm-mixed", lambda: nn.LayerNorm(C, dtype="float32").forward(x), TypeError, "x",
         ["float32", "float64"]),
        ("positional-mixed", lambda: pos.forward(x[:, :3].astype(np.float32)), TypeError, "x",
         ["float64", "float32"]),
        ("mha-mixed", lambda: mha.forward(x.astype(np.float32)), TypeError, "x", ["float64", "float32"]),
        ("mha-kv-mixed", lambda: mha.forward(x, mem.astype(np.float32)),
         TypeError, "kv", ["float64", "float32"]),
        ("decoder-memory-mixed", lambda: dec.forward(x, mem.astype(np.float32)), TypeError, "memory",
         ["float64", "float32"]),
        ("feedforward-mixed", lambda: nn.FeedForward(C, FF).forward(x.astype(np.float32)), TypeError, "x",
         ["float64", "float32"]),
        ("backward-mixed", lambda: (lin.forward(x), lin.backward(np.ones((B, T, 3), np.float32)))[1],
         TypeError, "dy", ["float64", "float32"]),
        # constructor and config errors
        ("linear-in-features", lambda: nn.Linear(0, 3), ValueError, "in_features", ["positive", "0"]),
        ("linear-dtype", lambda: nn.Linear(2, 3, dtype="int32"), TypeError, "dtype", ["float32", "int32"]),
        ("linear-rng", lambda: nn.Linear(2, 3, rng=42), TypeError, "rng", ["Generator", "int"]),
        ("layernorm-eps", lambda: nn.LayerNorm(C, eps=0.0), ValueError, "eps", ["positive", "0.0"]),
        ("layernorm-eps-inf", lambda: nn.LayerNorm(C, eps=float("inf")), ValueError, "eps", ["finite", "inf"]),
        ("dropout-p", lambda: nn.Dropout(1.5), ValueError, "p", ["[0, 1]", "1.5"]),
        ("dropout-p-type", lambda: nn.Dropout("0.5"), TypeError, "p", ["float", "str"]),
        ("mha-dropout", lambda: nn.MultiHeadAttention(C, H, dropout=-0.1), ValueError, "dropout", ["-0.1"]),
        ("activation-name", lambda: nn.Activation("tanh"), ValueError, "activation", ["gelu", "'tanh'"]),
        ("feedforward-d-ff", lambda: nn.FeedForward(C, 0), ValueError, "d_ff", ["positive", "0"]),
        ("config-vocab", lambda: DecoderLM(DecoderLMConfig(**{**cfg_lm, "vocab_size": 0})), ValueError,
         "vocab_size", ["positive", "0"]),
        ("config-bool-int", lambda: DecoderLM(DecoderLMConfig(**{**cfg_lm, "n_layers": True})), ValueError,
         "n_layers", ["positive", "True"]),
        ("config-dropout", lambda: DecoderLM(DecoderLMConfig(**{**cfg_lm, "dropout": 1.0})), ValueError,
         "dropout", ["[0, 1)", "1.0"]),
        ("config-dropout-type", lambda: DecoderLM(DecoderLMConfig(**{**cfg_lm, "dropout": "0.1"})), TypeError,
         "dropout", ["float", "'0.1'"]),
        ("config-activation", lambda: DecoderLM(DecoderLMConfig(**{**cfg_lm, "activation": "swish"})),
         ValueError, "activation", ["gelu", "'swish'"]),
        ("config-positional", lambda: DecoderLM(DecoderLMConfig(**{**cfg_lm, "positional": "rope"})),
         ValueError, "positional", ["learned", "'rope'"]),
        ("config-dtype", lambda: DecoderLM(DecoderLMConfig(**{**cfg_lm, "dtype": "float16"})),
         TypeError, "dtype", ["float32", "float16"]),
        ("config-eps", lambda: DecoderLM(DecoderLMConfig(**{**cfg_lm, "layer_norm_eps": -1.0})), ValueError,
         "layer_norm_eps", ["positive", "-1.0"]),
        ("config-eps-inf", lambda: DecoderLM(DecoderLMConfig(**{**cfg_lm, "layer_norm_eps": float("inf")})),
         ValueError, "layer_norm_eps", ["finite", "inf"]),
        ("config-norm-first", lambda: DecoderLM(DecoderLMConfig(**{**cfg_lm, "norm_first": "yes"})),
         TypeError, "norm_first", ["True or False", "'yes'"]),
        ("config-pad-id", lambda: Transformer(TransformerConfig(**{**cfg_t, "pad_id": V})),
         ValueError, "pad_id", [f"[0, {V})", str(V)]),
        ("config-pad-id-type", lambda: Transformer(TransformerConfig(**{**cfg_t, "pad_id": 1.0})),
         TypeError, "pad_id", ["int", "1.0"]),
        ("config-eps-type", lambda: DecoderLM(DecoderLMConfig(**{**cfg_lm, "layer_norm_eps": "1e-5"})),
         TypeError, "layer_norm_eps", ["number", "'1e-5'"]),
        ("config-unknown-key", lambda: DecoderLMConfig.from_dict({**cfg_lm, "n_head": 2}),
         ValueError, "config", ["n_head", "n_heads"]),
    ]


BAD = _bad_cases()


@pytest.mark.parametrize("call, exc, arg, fragments", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_names_the_argument(call, exc, arg, fragments):
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    assert msg.startswith(f"{arg}:"), f"expected the message to name {arg!r} first: {msg!r}"
    for f in fragments:
        assert f in msg, f"expected {f!r} in {msg!r}"


# ----------------------------------------------------------------------------------------
# names


LM_NAMES = [
    "tok_embed.weight", "pos_embed.weight",
    *[f"blocks.{i}.{n}" for i in range(2) for n in (
        "self_attn.q_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.weight",
        "self_attn.k_proj.bias", "self_attn.v_proj.weight", "self_attn.v_proj.bias",
        "self_attn.out_proj.weight", "self_attn.out_proj.bias",
        "ff.linear1.weight", "ff.linear1.bias", "ff.linear2.weight", "ff.linear2.bias",
        "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias")],
    "norm_f.weight", "norm_f.bias", "head.proj.weight",
]


def test_parameter_names_are_dotted_stable_and_unique():
    model = tiny_lm(tie_embeddings=False)
    names = [n for n, _ in model.parameters()]
    assert names == LM_NAMES
    assert "blocks.0.self_attn.q_proj.weight" in names
    assert names == [n for n, _ in tiny_lm(tie_embeddings=False, seed=5).parameters()]  # not seed-dependent
    assert list(model.state_dict()) == names
    t_names = [n for n, _ in tiny_transformer().parameters()]
    for n in ("src_embed.weight", "encoder.1.self_attn.k_proj.bias", "encoder_norm.weight",
              "decoder.0.cross_attn.v_proj.weight", "decoder.1.norm3.bias", "decoder_norm.bias",
              "head.proj.weight"):
        assert n in t_names
    for n in names + t_names:
        assert re.fullmatch(r"[A-Za-z_]\w*(\.\w+)*", n), n
    assert len(set(t_names)) == len(t_names)


def test_every_parameter_is_a_distinct_object():
    for model in (tiny_lm(), tiny_transformer(tie_embeddings=True)):
        params = [p for _, p in model.parameters()]
        assert len({id(p) for p in params}) == len(params)


# ----------------------------------------------------------------------------------------
# state_dict / load_state_dict


@DTYPES
@pytest.mark.parametrize("kind", ["lm", "transformer"])
def test_state_dict_round_trip_is_bit_exact(kind, dtype):
    rng = np.random.default_rng(4)
    make = tiny_lm if kind == "lm" else tiny_transformer
    a, b = make(dtype, seed=1), make(dtype, seed=2)
    ids = rng.integers(0, V, (B, 5))
    inputs = (ids,) if kind == "lm" else (ids[:, :4], ids)
    before = [p for _, p in b.parameters()]
    sd = a.state_dict()
    b.load_state_dict(sd)
    assert [p for _, p in b.parameters()] == before  # loaded in place: the same Parameter objects
    for name, p in b.parameters():
        assert p.value.dtype == dtype
        np.testing.assert_array_equal(p.value, sd[name])
    a.eval(), b.eval()  # the Transformer's default config has dropout
    np.testing.assert_array_equal(a.forward(*inputs), b.forward(*inputs))  # bit-exact
    # state_dict holds copies: changing it does not touch the model
    sd[next(iter(sd))][...] = 123.0
    assert not np.any(next(iter(a.parameters()))[1].value == 123.0)


def test_load_state_dict_errors_change_nothing():
    model = tiny_lm()
    good = tiny_lm(seed=9).state_dict()
    original = model.state_dict()

    def unchanged():
        for name, p in model.parameters():
            np.testing.assert_array_equal(p.value, original[name])

    missing = dict(good)
    del missing["blocks.1.norm2.bias"]
    with pytest.raises(ValueError, match=r"state: missing keys \['blocks.1.norm2.bias'\]"):
        model.load_state_dict(missing)
    unchanged()
    with pytest.raises(ValueError, match=r"unexpected keys \['blocks.2.norm1.weight'\]"):
        model.load_state_dict({**good, "blocks.2.norm1.weight": np.ones(C)})
    unchanged()
    # a shape error on a late key: the keys before it must not have been loaded
    bad_shape = dict(good)
    bad_shape["norm_f.weight"] = np.ones(C + 1)
    with pytest.raises(ValueError, match=r"state\['norm_f.weight'\]: expected shape \(8,\), got \(9,\)"):
        model.load_state_dict(bad_shape)
    unchanged()
    with pytest.raises(TypeError, match=r"state\['norm_f.bias'\]: expected dtype float64, got float32"):
        model.load_state_dict({**good, "norm_f.bias": np.zeros(C, np.float32)})
    unchanged()
    with pytest.raises(TypeError, match=r"state\['norm_f.bias'\]: expected a numpy.ndarray, got list"):
        model.load_state_dict({**good, "norm_f.bias": [0.0] * C})
    unchanged()
    # strict=False loads what is there and leaves the rest
    model.load_state_dict(missing, strict=False)
    np.testing.assert_array_equal(model.state_dict()["blocks.0.norm1.weight"], good["blocks.0.norm1.weight"])
    np.testing.assert_array_equal(model.state_dict()["blocks.1.norm2.bias"], original["blocks.1.norm2.bias"])


# ----------------------------------------------------------------------------------------
# zero_grad, train/eval, accumulation, tied embeddings


def _lm_backward(model, rng, ids):
    logits = model.forward(ids)
    model.backward(rng.standard_normal(logits.shape))


def test_zero_grad():
    rng = np.random.default_rng(5)
    model = tiny_lm()
    _lm_backward(model, rng, rng.integers(0, V, (B, 5)))
    assert any(np.any(p.grad) for _, p in model.parameters())
    params = {n: p for n, p in model.parameters()}
    model.zero_grad()
    for name, p in model.parameters():
        assert p is params[name]
        assert p.grad.shape == p.values.shape and p.grad.dtype == p.dtype
        assert not np.any(p.grad), name


def test_train_eval_switches_dropout():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((B, T, C))
    drop = nn.Dropout(0.5, rng=rng)
    assert drop.training
    y = drop.forward(x)
    assert np.any(y == 0) and np.any(y != x)
    drop.eval()
    assert not drop.training
    assert drop.forward(x) is x  # identity, the generator untouched
    drop.train()
    assert drop.training

    model = tiny_lm(dropout=0.3)
    ids = rng.integers(0, V, (B, 5))
    assert all(m.training for _, m in model.named_modules())
    assert not np.array_equal(model.forward(ids), model.forward(ids))  # fresh masks every call
    assert model.eval() is model
    assert not any(m.training for _, m in model.named_modules())
    reference = tiny_lm(dropout=0.0)
    reference.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(model.forward(ids), model.forward(ids))
    np.testing.assert_array_equal(model.forward(ids), reference.forward(ids))
    model.train()
    assert all(m.training for _, m in model.named_modules())

    mha = nn.MultiHeadAttention(C, H, dropout=0.5, rng=rng).eval()  # attention dropout too
    plain = nn.MultiHeadAttention(C, H, dropout=0.0)
    plain.load_state_dict(mha.state_dict())
    np.testing.assert_array_equal(mha.forward(x), plain.forward(x))


@pytest.mark.parametrize("case", [c for c in CASE_NAMES if "Dropout" not in c])
def test_gradients_accumulate_over_two_backward_calls(case):
    """grad after backward(g1) and backward(g2) = grad of g1 + grad of g2 (no overwrite)."""
    rng = np.random.default_rng(7)
    module, inputs, kw = _cases(np.float64, rng)[case]
    module.eval()  # the same function on every call
    shape = module.forward(*inputs, **kw).shape
    g1, g2 = rng.standard_normal(shape), rng.standard_normal(shape)

    def grads_of(*gs):
        module.zero_grad()
        for g in gs:
            module.forward(*inputs, **kw)
            module.backward(g)
        return {n: p.grad.copy() for n, p in module.parameters()}

    one, two, both = grads_of(g1), grads_of(g2), grads_of(g1, g2)
    for name in both:
        np.testing.assert_allclose(both[name], one[name] + two[name], rtol=1e-12, atol=1e-14, err_msg=name)
    # backward twice on one forward's cache accumulates too
    module.zero_grad()
    module.forward(*inputs, **kw)
    module.backward(g1)
    module.backward(g1)
    for name, p in module.parameters():
        np.testing.assert_allclose(p.grad, 2 * one[name], rtol=1e-12, atol=1e-14, err_msg=name)


@pytest.mark.parametrize("kind", ["lm", "transformer"])
def test_tied_embeddings_appear_once(kind):
    if kind == "lm":
        tied, untied = tiny_lm(tie_embeddings=True), tiny_lm(tie_embeddings=False)
        embed = "tok_embed.weight"
    else:
        tied, untied = tiny_transformer(tie_embeddings=True), tiny_transformer(tie_embeddings=False)
        embed = "tgt_embed.weight"
    t_names = [n for n, _ in tied.parameters()]
    u_names = [n for n, _ in untied.parameters()]
    assert t_names.count(embed) == 1
    assert "head.proj.weight" not in t_names and "head.proj.weight" in u_names
    assert set(u_names) - set(t_names) == {"head.proj.weight"}
    V_out = tied.config.vocab_size if kind == "lm" else tied.config.tgt_vocab_size
    assert untied.num_parameters() - tied.num_parameters() == V_out * C
    assert list(tied.state_dict()) == t_names
    # the head reads the embedding itself: the gradient of both uses lands in one place
    rng = np.random.default_rng(8)
    ids = rng.integers(0, V, (B, 5))
    inputs = (ids,) if kind == "lm" else (ids[:, :4], ids)
    logits = tied.forward(*inputs)
    tied.zero_grad()
    tied.backward(rng.standard_normal(logits.shape))
    emb = dict(tied.parameters())[embed]
    unused = np.setdiff1d(np.arange(V_out), ids)  # rows no token looked up: only the head touched them
    if unused.size:
        assert np.all(np.any(emb.grad[unused] != 0, axis=1))


# ----------------------------------------------------------------------------------------
# interop round trips


def _torch_modules(tdt, kind):
    torch = pytest.importorskip("torch")
    if kind == "Linear":
        return torch.nn.Linear(C, 3, dtype=tdt), lambda d: nn.Linear(C, 3, dtype=d)
    if kind == "Linear-nobias":
        return torch.nn.Linear(C, 3, bias=False, dtype=tdt), lambda d: nn.Linear(C, 3, bias=False, dtype=d)
    if kind == "LayerNorm":
        return torch.nn.LayerNorm(C, dtype=tdt), lambda d: nn.LayerNorm(C, dtype=d)
    if kind == "MultiheadAttention":
        return (torch.nn.MultiheadAttention(C, H, batch_first=True, dtype=tdt),
                lambda d: nn.MultiHeadAttention(C, H, dtype=d))
    if kind == "MultiheadAttention-nobias":
        return (torch.nn.MultiheadAttention(C, H, bias=False, batch_first=True, dtype=tdt),
                lambda d: nn.MultiHeadAttention(C, H, bias=False, dtype=d))
    if kind == "TransformerEncoderLayer":
        return (torch.nn.TransformerEncoderLayer(C, H, FF, batch_first=True, norm_first=True, dtype=tdt),
                lambda d: nn.EncoderLayer(C, H, FF, norm_first=True, dtype=d))
    if kind == "TransformerDecoderLayer":
        return (torch.nn.TransformerDecoderLayer(C, H, FF, batch_first=True, dtype=tdt),
                lambda d: nn.DecoderLayer(C, H, FF, dtype=d))
    if kind == "Transformer":
        return (torch.nn.Transformer(C, H, 2, 3, FF, batch_first=True, dtype=tdt),
                lambda d: tiny_transformer(d, n_encoder_layers=2, n_decoder_layers=3))
    raise AssertionError(kind)


INTEROP_KINDS = ["Linear", "Linear-nobias", "LayerNorm", "MultiheadAttention", "MultiheadAttention-nobias",
                 "TransformerEncoderLayer", "TransformerDecoderLayer", "Transformer"]


@pytest.mark.torch
@pytest.mark.parametrize("ours_dtype", ["float64", "float32"])
@pytest.mark.parametrize("torch_dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", INTEROP_KINDS)
def test_interop_round_trip_is_bit_exact(kind, torch_dtype, ours_dtype):
    """torch -> ours -> torch gives torch's tensors back bit for bit, and every torch parameter
    has a refsparse counterpart (the name maps cover torch's whole state_dict); a float32 side
    takes the float64 values rounded once."""
    torch = pytest.importorskip("torch")
    from refsparse.interop.torch import copy_from_torch, copy_to_torch, torch_state_dict

    torch.manual_seed(0)
    tdt = getattr(torch, torch_dtype)
    src, make = _torch_modules(tdt, kind)
    with torch.no_grad():
        for p in src.parameters():
            p.normal_()  # LayerNorm's ones and zeros and the zero biases would hide a swap
    ours = make(ours_dtype)
    copy_from_torch(src, ours)
    for _, p in ours.parameters():
        assert p.dtype == np.dtype(ours_dtype)
    assert set(torch_state_dict(ours)) == set(src.state_dict())
    dst, _ = _torch_modules(tdt, kind)
    copy_to_torch(ours, dst)
    src_sd, dst_sd = src.state_dict(), dst.state_dict()
    for key, value in src_sd.items():
        expected = value
        if ours_dtype == "float32" and torch_dtype == "float64":  # one rounding to float32 on the way
            expected = value.float().double()
        assert torch.equal(dst_sd[key], expected), key

    # ours -> torch -> ours is bit-exact when torch holds at least our precision
    if not (ours_dtype == "float64" and torch_dtype == "float32"):
        back = make(ours_dtype)
        copy_from_torch(dst, back)
        for (name, p), (_, q) in zip(ours.parameters(), back.parameters()):
            np.testing.assert_array_equal(p.value, q.value, err_msg=name)


@pytest.mark.torch
def test_interop_errors():
    torch = pytest.importorskip("torch")
    from refsparse.interop.torch import copy_from_torch, copy_to_torch, name_map

    with pytest.raises(ValueError, match="torch_module: weight has shape"):
        copy_to_torch(nn.Linear(C, 3), torch.nn.Linear(C, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"torch_module: has no parameters named \['bias'\]"):
        copy_to_torch(nn.Linear(C, 3), torch.nn.Linear(C, 3, bias=False, dtype=torch.float64))
    with pytest.raises(ValueError, match="torch_module: expected a parameter named 'bias'"):
        copy_from_torch(torch.nn.Linear(C, 3, bias=False), nn.Linear(C, 3))
    with pytest.raises(ValueError, match="torch_module: in_proj_weight"):
        copy_from_torch(torch.nn.MultiheadAttention(2 * C, H, batch_first=True), nn.MultiHeadAttention(C, H))
    with pytest.raises(TypeError, match="module: expected Linear, .* got Embedding"):
        name_map(nn.Embedding(V, C))
