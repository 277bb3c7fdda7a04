"""Errors a module or a backward pass must give when it is called wrongly.

- relu_backward and dropout_backward refuse an upstream gradient whose dtype differs from
  the forward pass's (as every other backward does) instead of silently upcasting float32
  to float64; so do the Activation and Dropout modules.
- backward before forward raises ``RuntimeError("<ClassName>.backward called before
  forward")`` for every module that keeps a forward cache, and for the blocks built from
  them (naming the first sub-module whose backward runs), with no gradient touched.
"""

import re

import numpy as np
import pytest

import refsparse.functional as F
from refsparse import nn

DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
SHAPE = (2, 3, 4)


def _other(dtype):
    return np.float64 if dtype == np.float32 else np.float32


# ----------------------------------------------------------------------------------------
# D3: relu_backward and dropout_backward check dy's dtype against the forward's


FORWARDS = {
    "relu": lambda x: F.relu_forward(x),
    "dropout": lambda x: F.dropout_forward(x, 0.5, np.random.default_rng(0)),
    "dropout-eval": lambda x: F.dropout_forward(x, 0.5, None, training=False),
    "dropout-p0": lambda x: F.dropout_forward(x, 0.0, None),
    "dropout-p1": lambda x: F.dropout_forward(x, 1.0, None),
}
BACKWARDS = {"relu": F.relu_backward, "dropout": F.dropout_backward}


@DTYPES
@pytest.mark.parametrize("op", list(FORWARDS))
def test_backward_refuses_dy_of_another_dtype(op, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE).astype(dtype)
    backward = BACKWARDS[op.split("-")[0]]
    _, cache = FORWARDS[op](x)
    dy = rng.standard_normal(SHAPE)

    dx = backward(dy.astype(dtype), cache)
    assert dx.dtype == dtype and dx.shape == SHAPE
    other = np.dtype(_other(dtype))
    msg = f"dy: expected dtype {np.dtype(dtype)} (the forward pass's dtype), got {other}"
    with pytest.raises(TypeError, match=f"^{re.escape(msg)}$"):
        backward(dy.astype(other), cache)
    # the shape is still checked (before the dtype, as everywhere)
    with pytest.raises(ValueError, match="^dy: "):
        backward(np.zeros((2, 3), other), cache)


@DTYPES
@pytest.mark.parametrize("make", [lambda: nn.Activation("relu"), lambda: nn.Dropout(0.5),
                                  lambda: nn.Dropout(0.5).eval()],
                         ids=["Activation-relu", "Dropout", "Dropout-eval"])
def test_module_backward_refuses_dy_of_another_dtype(make, dtype):
    module = make()
    rng = np.random.default_rng(1)
    module.forward(rng.standard_normal(SHAPE).astype(dtype))
    assert module.backward(np.ones(SHAPE, dtype)).dtype == dtype
    with pytest.raises(TypeError, match="^dy: expected dtype"):
        module.backward(np.ones(SHAPE, _other(dtype)))


# ----------------------------------------------------------------------------------------
# D4: backward before forward


B, T, S, C, H, FF, V = 2, 3, 4, 4, 2, 6, 5

CACHED = {  # modules that keep a forward cache (SparseLinear raised this already): (make, dy shape)
    "Linear": (lambda: nn.Linear(C, 2), (B, T, 2)),
    "Linear-nobias": (lambda: nn.Linear(C, 2, bias=False), (B, T, 2)),
    "Embedding": (lambda: nn.Embedding(V, C), (B, T, C)),
    "SinusoidalPositionalEncoding": (lambda: nn.SinusoidalPositionalEncoding(6, C), (B, T, C)),
    "LearnedPositionalEmbedding": (lambda: nn.LearnedPositionalEmbedding(6, C), (B, T, C)),
    "LayerNorm": (lambda: nn.LayerNorm(C), (B, T, C)),
    "Dropout": (lambda: nn.Dropout(0.5), (B, T, C)),
    "Dropout-eval": (lambda: nn.Dropout(0.5).eval(), (B, T, C)),
    "Activation-relu": (lambda: nn.Activation("relu"), (B, T, C)),
    "Activation-gelu": (lambda: nn.Activation("gelu"), (B, T, C)),
    "Activation-gelu_tanh": (lambda: nn.Activation("gelu_tanh"), (B, T, C)),
    "MultiHeadAttention": (lambda: nn.MultiHeadAttention(C, H), (B, T, C)),
}
BLOCKS = {  # modules without a cache of their own: the first sub-module's backward raises
    "FeedForward": (lambda: nn.FeedForward(C, FF), (B, T, C), "Linear"),
    "EncoderLayer": (lambda: nn.EncoderLayer(C, H, FF), (B, T, C), "LayerNorm"),
    "EncoderLayer-norm_first": (lambda: nn.EncoderLayer(C, H, FF, norm_first=True), (B, T, C), "Dropout"),
    "DecoderLayer": (lambda: nn.DecoderLayer(C, H, FF), (B, T, C), "LayerNorm"),
    "DecoderLayer-norm_first": (lambda: nn.DecoderLayer(C, H, FF, norm_first=True), (B, T, C), "Dropout"),
    "DecoderLM-tied": (lambda: _lm(tie_embeddings=True), (B, T, V), "OutputHead"),
    "DecoderLM-untied": (lambda: _lm(tie_embeddings=False), (B, T, V), "Linear"),
}


def _lm(**kw):
    from refsparse.models import DecoderLM, DecoderLMConfig

    return DecoderLM(DecoderLMConfig(vocab_size=V, d_model=C, n_heads=H, n_layers=1, d_ff=FF, max_len=6, **kw))


def _zero_grads(module):
    return all(not p.grad.any() for _, p in module.parameters())


@pytest.mark.parametrize("case", list(CACHED))
def test_backward_before_forward_names_the_module(case):
    make, dy_shape = CACHED[case]
    module = make()
    name = type(module).__name__
    with pytest.raises(RuntimeError, match=f"^{name}\\.backward called before forward$"):
        module.backward(np.ones(dy_shape))
    assert _zero_grads(module)


@pytest.mark.parametrize("case", list(BLOCKS))
def test_block_backward_before_forward_names_its_first_sub_module(case):
    make, dy_shape, first = BLOCKS[case]
    module = make()
    with pytest.raises(RuntimeError, match=f"^{first}\\.backward called before forward$"):
        module.backward(np.ones(dy_shape))
    assert _zero_grads(module)


def test_backward_before_forward_names_a_subclass():
    class MyNorm(nn.LayerNorm):
        pass

    with pytest.raises(RuntimeError, match=r"^MyNorm\.backward called before forward$"):
        MyNorm(C).backward(np.ones((1, C)))
