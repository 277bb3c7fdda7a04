"""Modules: own parameters and gradients, call the functional pairs, keep their caches."""

from .attention import MultiHeadAttention, ReadyPattern, build_attention_mask, ready_pattern, with_key_padding
from .layers import (
    Activation,
    Dropout,
    Embedding,
    LayerNorm,
    LearnedPositionalEmbedding,
    Linear,
    SinusoidalPositionalEncoding,
)
from .module import Module, ModuleList, Parameter
from .sparse import SparseLinear, random_pattern
from .transformer import DecoderLayer, EncoderLayer, FeedForward

__all__ = [
    "Activation", "DecoderLayer", "Dropout", "Embedding", "EncoderLayer", "FeedForward",
    "LayerNorm", "LearnedPositionalEmbedding", "Linear", "Module", "ModuleList",
    "MultiHeadAttention", "Parameter", "ReadyPattern", "SinusoidalPositionalEncoding", "SparseLinear",
    "build_attention_mask", "random_pattern", "ready_pattern", "with_key_padding",
]
