"""Pure forward/backward pairs: the math of refsparse.

Every op is two plain functions, ``y, cache = <op>_forward(...)`` and
``grads = <op>_backward(dy, cache)``; the cache is a small NamedTuple holding exactly
what the backward pass needs. float32 in → float32 out, float64 in → float64 out.
Derivations: [docs/backprop.md](../backprop.md).
"""

from .activations import (
    GeluCache,
    ReluCache,
    gelu_backward,
    gelu_forward,
    relu_backward,
    relu_forward,
)
from .attention import (
    AttentionCache,
    attention_backward,
    attention_forward,
    causal_mask,
    merge_heads_backward,
    merge_heads_forward,
    split_heads_backward,
    split_heads_forward,
)
from .dropout import DropoutCache, dropout_backward, dropout_forward
from .embedding import (
    EmbeddingCache,
    PositionalCache,
    embedding_backward,
    embedding_forward,
    positional_backward,
    positional_forward,
    sinusoidal_encoding,
)
from .layernorm import LayerNormCache, layernorm_backward, layernorm_forward
from .linear import LinearCache, linear_backward, linear_forward
from .loss import CrossEntropyCache, cross_entropy_backward, cross_entropy_forward
from .residual import residual_backward, residual_forward
from .softmax import SoftmaxCache, softmax_backward, softmax_forward
from .sparse_linear import SparseLinearCache, sparse_linear_backward, sparse_linear_forward

__all__ = [
    "AttentionCache",
    "CrossEntropyCache",
    "DropoutCache",
    "EmbeddingCache",
    "GeluCache",
    "LayerNormCache",
    "LinearCache",
    "PositionalCache",
    "ReluCache",
    "SoftmaxCache",
    "SparseLinearCache",
    "attention_backward",
    "attention_forward",
    "causal_mask",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "dropout_backward",
    "dropout_forward",
    "embedding_backward",
    "embedding_forward",
    "gelu_backward",
    "gelu_forward",
    "layernorm_backward",
    "layernorm_forward",
    "linear_backward",
    "linear_forward",
    "merge_heads_backward",
    "merge_heads_forward",
    "positional_backward",
    "positional_forward",
    "relu_backward",
    "relu_forward",
    "residual_backward",
    "residual_forward",
    "sinusoidal_encoding",
    "softmax_backward",
    "softmax_forward",
    "sparse_linear_backward",
    "sparse_linear_forward",
    "split_heads_backward",
    "split_heads_forward",
]
