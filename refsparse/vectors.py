"""Golden vectors: every op, layer and model's inputs, outputs and gradients, in safetensors.

For someone who writes their own kernel (CUDA, Triton, Rust, JAX) and needs trusted numbers
to hold it against::

    refsparse vectors export sparse_attention.local -o ref.safetensors    # float64 by default
    # ... run your kernel on ref's inputs, save its output and gradients to mine.safetensors
    refsparse vectors check ref.safetensors mine.safetensors --only 'output' --only 'grad.*'

One file holds one op's tensors, named

    input.<name>          the inputs: float tensors, integer ids and targets (int64), boolean
                          masks; a sparse pattern as input.pattern.indptr and
                          input.pattern.indices (int64 CSR of a (T_q, T_k) pattern)
    param.<name>          the parameters, by the module's dotted names
                          (param.blocks.0.self_attn.q_proj.weight); a sparse weight as
                          param.<name> (its stored values, (nnz,)) with param.<name>.indptr
                          and param.<name>.indices (int64)
    grad_output           the upstream gradient, random (standard normal) from the seed
    output                the op's output
    grad.input.<name>     d(sum(output * grad_output)) / d input, for every float input
    grad.param.<name>     the same for every parameter (a sparse weight's: (nnz,), aligned
                          with param.<name>)

and its metadata in the safetensors header (string → string): ``op``, ``call`` (the refsparse
function or module that produced it), ``dtype``, ``seed``, ``sizes`` and ``options`` (JSON),
``pattern`` (the spec), ``shapes`` (JSON), ``conventions`` (JSON: mask polarity, layouts, …),
``refsparse_version``, ``numpy_version``, ``format``.

Random numbers come from ``numpy.random.default_rng([seed, stream])``: stream 0 initialises
modules, 1 draws the inputs, 2 the upstream gradient, 3 dropout masks and random layouts.
Inputs are drawn in float64 and rounded once to the dtype, so a float32 export holds the
float64 export's inputs rounded. Dropout is 0 in every layer and model (a dropout mask cannot
be reproduced across frameworks); the ``dropout`` op stores its mask as ``input.keep``.

:func:`recompute` runs today's code on a file's stored inputs and parameters (never
re-drawing them), which is how tests/test_golden.py holds the code to tests/golden/.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import __version__

__all__ = ["DEFAULT_SIZES", "add_subparser", "export", "fingerprint", "op_names", "ops", "recompute", "write"]

FORMAT = "refsparse-vectors/1"

DEFAULT_SIZES = {
    "B": 2,  # batch
    "T": 16,  # sequence length (queries; the target length of the encoder-decoder)
    "S": 12,  # source / memory length (encoder-decoder, DecoderLayer's memory)
    "d_model": 16,  # model width C
    "n_heads": 2,  # heads H; d_head = d_model / n_heads
    "d_ff": 32,  # feed-forward inner width
    "vocab": 11,  # vocabulary V (embedding, cross_entropy, models)
    "n_layers": 2,  # layers of each stack (models)
    "d_in": 12,  # linear / sparse_linear input features
    "d_out": 10,  # linear / sparse_linear output features
}

# Each op's metadata quotes the conventions it depends on (docs/conventions.md has them all).
CONVENTIONS = {
    "gradients": "grad.<name> = d(sum(output * grad_output)) / d<name>: the vector-Jacobian "
                 "product with the random upstream gradient grad_output",
    "linear": "weight (out, in); y = x @ weight.T + bias (torch.nn.Linear)",
    "sparse_weight": "param.<w> holds the stored values (nnz,) of a CSR (out, in) weight with "
                     "param.<w>.indptr (out+1,) and param.<w>.indices (nnz,), int64, sorted "
                     "within each row; grad.param.<w> (nnz,) is aligned with param.<w>; a "
                     "stored 0.0 is still an entry",
    "layernorm": "biased variance (divide by C), eps inside the square root (torch.nn.LayerNorm)",
    "mask": "boolean mask, True = the query MAY attend to the key (torch SDPA's attn_mask)",
    "pattern": "input.pattern.indptr (T_q+1,) and input.pattern.indices (nnz,), int64 CSR of a "
               "(T_q, T_k) boolean pattern: entry (i, j) stored <=> query i may attend to key j; "
               "one pattern for every batch element and head",
    "empty_rows": "a query with no allowed key has output 0 and gradients 0, never NaN",
    "attention": "q, k, v (B, H, T, D); scores scaled by 1/sqrt(D); softmax over allowed keys",
    "heads": "split_heads: (B, T, C) -> (B, H, T, D) with x[b, t, h*D + d] = y[b, h, t, d]",
    "gelu": "approximate='none': x * Phi(x) (erf); 'tanh': torch's tanh form",
    "relu": "relu'(0) = 0",
    "softmax": "over the last axis, row max subtracted",
    "cross_entropy": "logits (..., V), classes on the LAST axis; targets int64, ignore_index "
                     "positions contribute nothing; label smoothing as torch; 'mean' divides by "
                     "the number of non-ignored targets",
    "dropout": "inverted dropout: y = (x * keep) * s, s = 1 / (1 - p) rounded to float64 first; "
               "input.keep True = kept; grad.input.x = (grad_output * keep) * s",
    "embedding": "y[..., :] = weight[ids[...], :]; ids int64",
    "positional": "y[b, t] = x[b, t] + table[t]; grad of the table is 0 for rows >= T",
    "module": "parameters by the module's dotted names; dropout 0; biases on; PyTorch layouts",
    "post_ln": "norm_first=False: post-LN as torch.nn.TransformerEncoderLayer; True: pre-LN",
    "padding": "no padding: every key is real",
}


def _check_sizes(sizes):
    out = dict(DEFAULT_SIZES)
    for key, value in sizes.items():
        if key not in DEFAULT_SIZES:
            raise ValueError(f"sizes: unknown size {key!r}; known: {', '.join(DEFAULT_SIZES)}")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{key}: expected a positive int, got {value!r}")
        out[key] = int(value)
    if out["d_model"] % out["n_heads"]:
        raise ValueError(f"n_heads: expected a divisor of d_model={out['d_model']}, got {out['n_heads']}")
    return out


# ----------------------------------------------------------------------------------------
# the context an op runs in: draws its tensors on export, takes them from a file on recompute


@dataclass
class _Ctx:
    op: str
    dtype: np.dtype
    seed: int
    sizes: dict
    options: dict
    stored: dict | None = None  # None: export (draw); else: recompute (take)
    tensors: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)  # extra metadata an op adds (pattern text, module)
    _rngs: dict = field(default_factory=dict)

    def rng(self, stream):
        if stream not in self._rngs:
            self._rngs[stream] = np.random.default_rng([self.seed, stream])
        return self._rngs[stream]

    def __getattr__(self, key):  # ctx.B, ctx.T, ... are the sizes
        sizes = self.__dict__.get("sizes") or {}
        if key in sizes:
            return sizes[key]
        raise AttributeError(key)

    def opt(self, key):
        return self.options[key]

    def _take(self, name):
        if name not in self.stored:
            raise ValueError(f"vectors: the file has no tensor {name!r}, which op {self.op!r} needs")
        value = self.stored[name]
        self.tensors[name] = value
        return value

    def _record(self, name, value):
        value = np.ascontiguousarray(value)
        self.tensors[name] = value
        return value

    def normal(self, name, shape, scale=1.0, loc=0.0, stream=1):
        """A float tensor ``loc + scale · N(0, 1)``, drawn in float64, rounded to the dtype."""
        if self.stored is not None:
            return self._take(name)
        x = loc + scale * self.rng(stream).standard_normal(shape)
        return self._record(name, x.astype(self.dtype))

    def ints(self, name, shape, high):
        """An int64 tensor of uniform ids in [0, high)."""
        if self.stored is not None:
            return self._take(name)
        return self._record(name, self.rng(1).integers(0, high, size=shape).astype(np.int64))

    def const(self, name, make):
        """A non-random input (a mask, a pattern's arrays): ``make()`` on export, stored else."""
        if self.stored is not None:
            return self._take(name)
        return self._record(name, make())

    def pattern(self, name, make):
        """A CSR boolean pattern, stored as ``<name>.indptr`` / ``<name>.indices`` (int64)."""
        import scipy.sparse as sp

        if self.stored is None:
            p = make()
            if isinstance(p, (list, tuple)):
                raise ValueError("pattern: per-head patterns (per_head=true) are not exported; "
                                 "give a spec that builds one pattern for all heads")
            p = sp.csr_array(p)
            p.sum_duplicates()
            self._record(name + ".indptr", p.indptr.astype(np.int64))
            self._record(name + ".indices", p.indices.astype(np.int64))
            self.meta.setdefault("pattern_nnz", str(int(p.nnz)))
            return p, True
        indptr = self._take(name + ".indptr")
        indices = self._take(name + ".indices")
        shape = self.meta["pattern_shape"]
        data = np.ones(indices.size, dtype=bool)
        p = sp.csr_array((data, indices.astype(np.int32), indptr.astype(np.int32)), shape=shape)
        p.has_canonical_format = True
        return p, False

    def module(self, build):
        """Build a module with stream 0; export its parameters, or load the stored ones.

        On export, a parameter whose entries are all equal (LayerNorm's ones and zeros) is
        replaced by ``value + 0.1 · N(0, 1)`` so that every gradient path is exercised.
        """
        import scipy.sparse as sp

        from .nn import Module

        m = build(self.rng(0))
        assert isinstance(m, Module)
        m.eval()  # dropout is 0 anyway; eval makes that explicit
        if self.stored is None:
            for name, p in m.parameters():
                v = p.values
                if v.size and np.all(v == v.flat[0]):
                    v[...] = (v + 0.1 * self.rng(0).standard_normal(v.shape)).astype(v.dtype)
                self._record_param(name, p)
        else:
            state = {}
            for name, p in m.parameters():
                values = self._take("param." + name)
                if p.is_sparse:
                    indptr = self._take(f"param.{name}.indptr")
                    indices = self._take(f"param.{name}.indices")
                    state[name] = sp.csr_array((values.copy(), indices, indptr), shape=p.shape)
                else:
                    state[name] = values
            m.load_state_dict(state)
        self.meta["module"] = type(m).__name__
        return m

    def _record_param(self, name, p):
        if p.is_sparse:
            w = p.value
            self._record(f"param.{name}", w.data.copy())
            self._record(f"param.{name}.indptr", w.indptr.astype(np.int64))
            self._record(f"param.{name}.indices", w.indices.astype(np.int64))
        else:
            self._record(f"param.{name}", p.value.copy())


def _param_grads(module):
    return {f"param.{name}": p.grad for name, p in module.parameters()}


# ----------------------------------------------------------------------------------------
# the registry


@dataclass(frozen=True)
class OpInfo:
    """One exportable op: its name, kind, summary, the call it makes, its options' defaults."""

    name: str
    kind: str  # "functional" | "sparse_attention" | "layer" | "model"
    summary: str
    call: str
    conventions: tuple
    defaults: dict
    fn: Callable = field(repr=False, compare=False)


_OPS: dict = {}


def _op(name, kind, summary, call, conventions=(), **defaults):
    def register(fn):
        _OPS[name] = OpInfo(name, kind, summary, call, ("gradients",) + tuple(conventions), defaults, fn)
        return fn

    return register


_NEEDS_SPARSE_LINEAR = ("sparse_linear", "nn.SparseLinear")


def _available(name):
    return name not in _NEEDS_SPARSE_LINEAR or _sparse_linear_available()


def ops():
    """Every exportable op, as a list of :class:`OpInfo`, in a stable order."""
    return [info for name, info in _OPS.items() if _available(name)]


def op_names():
    """The names ``refsparse vectors export`` accepts, in a stable order."""
    return [info.name for info in ops()]


def _F():
    from . import functional as F

    return F


# -- functional ops ----------------------------------------------------------------------


@_op("linear", "functional", "y = x W^T + b", "refsparse.functional.linear_forward/_backward",
     ("linear",))
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


@_op("embedding", "functional", "y = W[ids]", "refsparse.functional.embedding_forward/_backward",
     ("embedding",))
def _embedding(ctx):
    F = _F()
    ids = ctx.ints("input.ids", (ctx.B, ctx.T), ctx.vocab)
    w = ctx.normal("param.weight", (ctx.vocab, ctx.d_model))
    y, cache = F.embedding_forward(ids, w)
    return y, lambda dy: {"param.weight": F.embedding_backward(dy, cache)}


@_op("positional", "functional", "y = x + table[:T] (a learned positional table)",
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


@_op("layernorm", "functional", "LayerNorm over the last axis",
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


@_op("relu", "functional", "y = max(x, 0)", "refsparse.functional.relu_forward/_backward", ("relu",))
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


@_op("gelu", "functional", "GELU, exact (erf) form", "refsparse.functional.gelu_forward(x, "
     "approximate='none')/gelu_backward", ("gelu",))
def _gelu_exact(ctx):
    return _gelu(ctx, "none")


@_op("gelu_tanh", "functional", "GELU, tanh form", "refsparse.functional.gelu_forward(x, "
     "approximate='tanh')/gelu_backward", ("gelu",))
def _gelu_tanh(ctx):
    return _gelu(ctx, "tanh")


@_op("dropout", "functional", "inverted dropout with a fixed mask (input.keep) drawn from the seed",
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


@_op("softmax", "functional", "softmax over the last axis", "refsparse.functional.softmax_forward/_backward",
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


@_op("attention", "functional", "dense scaled dot-product attention with a boolean mask",
     "refsparse.functional.attention_forward/_backward (dropout_p=0)",
     ("attention", "mask", "empty_rows"), mask="causal")
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


@_op("split_heads", "functional", "(B, T, C) -> (B, H, T, D)",
     "refsparse.functional.split_heads_forward/_backward", ("heads",))
def _split_heads(ctx):
    F = _F()
    x = ctx.normal("input.x", (ctx.B, ctx.T, ctx.d_model))
    y, cache = F.split_heads_forward(x, ctx.n_heads)
    return y, lambda dy: {"input.x": F.split_heads_backward(dy, cache)}


@_op("merge_heads", "functional", "(B, H, T, D) -> (B, T, C)",
     "refsparse.functional.merge_heads_forward/_backward", ("heads",))
def _merge_heads(ctx):
    F = _F()
    x = ctx.normal("input.x", (ctx.B, ctx.n_heads, ctx.T, ctx.d_model // ctx.n_heads))
    y, cache = F.merge_heads_forward(x)
    return y, lambda dy: {"input.x": F.merge_heads_backward(dy, cache)}


@_op("cross_entropy", "functional", "mean cross-entropy with ignore_index and label smoothing",
     "refsparse.functional.cross_entropy_forward/_backward", ("cross_entropy",),
     ignore_index=-100, label_smoothing=0.1, reduction="mean")
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


@_op("residual", "functional", "y = x + fx", "refsparse.functional.residual_forward/_backward")
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
    from . import patterns as P

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
    from . import patterns as P

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
    from .functional.sparse_attention import sparse_attention_backward, sparse_attention_forward

    q, k, v = _qkv(ctx)
    p = _sparse_pattern(ctx)
    y, cache = sparse_attention_forward(q, k, v, p)

    def backward(dy):
        dq, dk, dv = sparse_attention_backward(dy, cache)
        return {"input.q": dq, "input.k": dk, "input.v": dv}

    return y, backward


_op("sparse_attention", "sparse_attention", "attention at a pattern's entries (any spec: --pattern)",
    "refsparse.functional.sparse_attention.sparse_attention_forward/_backward",
    ("attention", "pattern", "empty_rows"), pattern="local:window=4")(_sparse_attention)
for _family, _spec in SPARSE_FAMILIES.items():
    _defaults = {"pattern": _spec or "block_sparse"}
    if _spec is None:
        _defaults["block"] = 4
    _op(f"sparse_attention.{_family}", "sparse_attention",
        f"sparse attention, {_family} pattern" + ("" if _spec else " (random block layout)"),
        "refsparse.functional.sparse_attention.sparse_attention_forward/_backward",
        ("attention", "pattern", "empty_rows"), **_defaults)(_sparse_attention)


# -- SparseLinear ----------------------------------------------------------------------------
# SparseLinear (refsparse/nn/sparse.py, refsparse/functional/sparse_linear.py) is registered
# only when it imports; the two ops below are the hook.

_SPARSE_LINEAR = {}  # cached result of the import check


def _sparse_linear_available():
    """True when refsparse.nn.sparse and refsparse.functional.sparse_linear import cleanly."""
    if "ok" not in _SPARSE_LINEAR:
        try:
            from .functional import sparse_linear  # noqa: F401
            from .nn import sparse  # noqa: F401
        except Exception as e:  # noqa: BLE001 - any failure of a file being written means "not yet"
            _SPARSE_LINEAR.update(ok=False, why=f"{type(e).__name__}: {e}")
        else:
            _SPARSE_LINEAR.update(ok=True, why="")
    return _SPARSE_LINEAR["ok"]


def _random_csr(ctx, rows, cols, density):
    import scipy.sparse as sp

    from .nn.sparse import random_pattern

    indptr, indices = random_pattern(rows, cols, density, ctx.rng(0))
    values = ctx.rng(0).uniform(-1, 1, indices.size) / math.sqrt(cols)
    if values.size:
        values[values.size // 2] = 0.0  # a stored zero: still an entry, with a gradient
    return sp.csr_array((values.astype(ctx.dtype), indices, indptr), shape=(rows, cols))



@_op("sparse_linear", "functional", "y = x W^T + b with W a CSR array (stored entries only)",
     "refsparse.functional.sparse_linear.sparse_linear_forward/_backward",
     ("linear", "sparse_weight"), density=0.5)
def _sparse_linear(ctx):
    import scipy.sparse as sp

    from .functional.sparse_linear import sparse_linear_backward, sparse_linear_forward

    x = ctx.normal("input.x", (ctx.B, ctx.T, ctx.d_in))
    if ctx.stored is None:
        w = _random_csr(ctx, ctx.d_out, ctx.d_in, float(ctx.opt("density")))
        ctx._record("param.weight", w.data.copy())
        ctx._record("param.weight.indptr", w.indptr.astype(np.int64))
        ctx._record("param.weight.indices", w.indices.astype(np.int64))
    else:
        w = sp.csr_array((ctx._take("param.weight").copy(), ctx._take("param.weight.indices"),
                          ctx._take("param.weight.indptr")), shape=(ctx.d_out, ctx.d_in))
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
        grads = _param_grads(m)
        if dx is not None:  # a model's ids have no gradient
            dxs = dx if isinstance(dx, tuple) else (dx,)
            grads.update(zip(ctx.input_names, dxs))
        return grads

    return y, backward


def _x(ctx, width=None):
    ctx.input_names = ["input.x"]
    return ctx.normal("input.x", (ctx.B, ctx.T, width or ctx.d_model))


@_op("nn.Linear", "layer", "refsparse.nn.Linear", "refsparse.nn.Linear(d_in, d_out)", ("linear", "module"))
def _nn_linear(ctx):
    from .nn import Linear

    x = _x(ctx, ctx.d_in)
    return _module_op(ctx, lambda r: Linear(ctx.d_in, ctx.d_out, rng=r, dtype=ctx.dtype.name), [x])



@_op("nn.SparseLinear", "layer", "refsparse.nn.SparseLinear (CSR weight)",
     "refsparse.nn.sparse.SparseLinear(d_in, d_out, density=...)",
     ("linear", "sparse_weight", "module"), density=0.5)
def _nn_sparse_linear(ctx):
    from .nn.sparse import SparseLinear

    x = _x(ctx, ctx.d_in)
    return _module_op(ctx, lambda r: SparseLinear(ctx.d_in, ctx.d_out, density=float(ctx.opt("density")),
                                                   rng=r, dtype=ctx.dtype.name), [x])


@_op("nn.LayerNorm", "layer", "refsparse.nn.LayerNorm", "refsparse.nn.LayerNorm(d_model, eps)",
     ("layernorm", "module"), eps=1e-5)
def _nn_layernorm(ctx):
    from .nn import LayerNorm

    x = _x(ctx)
    return _module_op(ctx, lambda r: LayerNorm(ctx.d_model, float(ctx.opt("eps")), dtype=ctx.dtype.name), [x])


def _layer_pattern(ctx, causal):
    """None for dense attention; else the pattern (causal applied) as stored CSR."""
    if ctx.opt("pattern") in (None, "full"):
        return None
    return _sparse_pattern(ctx, causal=causal)


@_op("nn.MultiHeadAttention", "layer", "refsparse.nn.MultiHeadAttention, self-attention",
     "refsparse.nn.MultiHeadAttention(d_model, n_heads).forward(x, causal=..., pattern=...)",
     ("linear", "attention", "mask", "pattern", "empty_rows", "module"), causal=True, pattern=None)
def _nn_mha(ctx):
    from .nn import MultiHeadAttention

    x = _x(ctx)
    causal = bool(ctx.opt("causal"))
    p = _layer_pattern(ctx, causal)
    kw = {"causal": causal} if p is None else {"pattern": p}  # a stored pattern is already causal
    return _module_op(ctx, lambda r: MultiHeadAttention(ctx.d_model, ctx.n_heads, rng=r,
                                                        dtype=ctx.dtype.name), [x], kw)


@_op("nn.FeedForward", "layer", "refsparse.nn.FeedForward", "refsparse.nn.FeedForward(d_model, d_ff, activation)",
     ("linear", "gelu", "relu", "module"), activation="gelu")
def _nn_ff(ctx):
    from .nn import FeedForward

    x = _x(ctx)
    return _module_op(ctx, lambda r: FeedForward(ctx.d_model, ctx.d_ff, ctx.opt("activation"), rng=r,
                                                 dtype=ctx.dtype.name), [x])


@_op("nn.EncoderLayer", "layer", "refsparse.nn.EncoderLayer (self-attention + feed-forward)",
     "refsparse.nn.EncoderLayer(d_model, n_heads, d_ff, dropout=0, ...)",
     ("linear", "layernorm", "attention", "mask", "pattern", "post_ln", "module", "padding"),
     norm_first=False, activation="relu", causal=False, pattern=None)
def _nn_encoder_layer(ctx):
    from .nn import EncoderLayer

    x = _x(ctx)
    causal = bool(ctx.opt("causal"))
    p = _layer_pattern(ctx, causal)
    kw = {"causal": causal} if p is None else {"pattern": p}
    return _module_op(ctx, lambda r: EncoderLayer(ctx.d_model, ctx.n_heads, ctx.d_ff, 0.0, ctx.opt("activation"),
                                                  bool(ctx.opt("norm_first")), rng=r, dtype=ctx.dtype.name),
                      [x], kw)


@_op("nn.DecoderLayer", "layer", "refsparse.nn.DecoderLayer (causal self-attention, cross-attention, "
     "feed-forward); inputs x (B, T, C) and memory (B, S, C)",
     "refsparse.nn.DecoderLayer(d_model, n_heads, d_ff, dropout=0, ...)",
     ("linear", "layernorm", "attention", "mask", "pattern", "post_ln", "module", "padding"),
     norm_first=False, activation="relu", pattern=None)
def _nn_decoder_layer(ctx):
    from .nn import DecoderLayer

    x = _x(ctx)
    memory = ctx.normal("input.memory", (ctx.B, ctx.S, ctx.d_model))
    ctx.input_names = ["input.x", "input.memory"]
    p = _layer_pattern(ctx, causal=True)
    kw = {"causal": True} if p is None else {"causal": False, "tgt_pattern": p}
    return _module_op(ctx, lambda r: DecoderLayer(ctx.d_model, ctx.n_heads, ctx.d_ff, 0.0, ctx.opt("activation"),
                                                  bool(ctx.opt("norm_first")), rng=r, dtype=ctx.dtype.name),
                      [x, memory], kw)


# -- models --------------------------------------------------------------------------------


def _model_pattern(ctx, name, t, causal):
    """Store the pattern a model builds from its attention spec (for the reader; the model
    rebuilds it from the spec)."""
    from . import patterns as P

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


@_op("model.DecoderLM", "model", "the decoder-only LM: ids (B, T) -> logits (B, T, V)",
     "refsparse.models.DecoderLM(DecoderLMConfig(...)).forward(ids)",
     ("linear", "layernorm", "attention", "pattern", "gelu", "embedding", "module", "padding"),
     pattern=None, norm_first=True, activation="gelu", tie_embeddings=True, positional="learned")
def _model_lm(ctx):
    from .models import DecoderLM, DecoderLMConfig

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


@_op("model.Transformer", "model", "the encoder-decoder: src (B, S), tgt (B, T) -> logits (B, T, V)",
     "refsparse.models.Transformer(TransformerConfig(...)).forward(src, tgt)",
     ("linear", "layernorm", "attention", "pattern", "relu", "embedding", "post_ln", "module", "padding"),
     pattern=None, norm_first=False, activation="relu", tie_embeddings=False, positional="sinusoidal")
def _model_transformer(ctx):
    from .models import Transformer, TransformerConfig

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


# ----------------------------------------------------------------------------------------
# export, write, recompute


def _info(op):
    if not isinstance(op, str):
        raise TypeError(f"op: expected an op name (str), got {type(op).__name__}")
    if op not in _OPS:
        raise ValueError(f"op: unknown op {op!r}; `refsparse vectors list` shows them: {', '.join(op_names())}")
    if not _available(op):
        raise ValueError(f"op: {op!r} needs refsparse's SparseLinear, which does not import here "
                         f"({_SPARSE_LINEAR['why']})")
    return _OPS[op]


def _options(info, options):
    out = dict(info.defaults)
    for key, value in (options or {}).items():
        if key not in info.defaults:
            known = ", ".join(info.defaults) or "none"
            raise ValueError(f"options: op {info.name!r} has no option {key!r}; its options: {known}")
        out[key] = value
    return out


def _dtype(dtype):
    if str(dtype) not in ("float32", "float64"):
        raise ValueError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
    return np.dtype(str(dtype))


def _run(ctx, info):
    """Forward, the upstream gradient, backward; returns the outputs and gradients."""
    ctx.input_names = []
    y, backward = info.fn(ctx)
    y = np.asarray(y)
    if ctx.stored is None:
        dy = ctx.rng(2).standard_normal(y.shape).astype(ctx.dtype)
        ctx._record("grad_output", dy)
    else:
        dy = ctx._take("grad_output")
    out = {"output": np.ascontiguousarray(y)}
    grads = backward(dy.copy())  # a copy: no op may change the stored upstream gradient
    for name, g in grads.items():
        if g is None:
            continue
        out["grad." + name] = np.ascontiguousarray(np.asarray(g))
    return out


def _metadata(info, ctx, tensors):
    meta = {
        "format": FORMAT,
        "op": info.name,
        "kind": info.kind,
        "summary": info.summary,
        "call": info.call,
        "dtype": ctx.dtype.name,
        "seed": str(ctx.seed),
        "sizes": json.dumps(ctx.sizes),
        "options": json.dumps(ctx.options),
        "shapes": json.dumps({k: [list(v.shape), str(v.dtype)] for k, v in tensors.items()}),
        "conventions": json.dumps({k: CONVENTIONS[k] for k in info.conventions}),
        "refsparse_version": __version__,
        "numpy_version": np.__version__,
    }
    for key, value in ctx.meta.items():
        if key == "pattern_shape":
            meta[key] = json.dumps(list(value))
        elif isinstance(value, str):
            meta[key] = value
    return meta


def export(op, *, dtype="float64", seed=0, options=None, **sizes):
    """The golden vectors of one op: ``(tensors, metadata)``.

    Parameters
    ----------
    op : str
        An op name from :func:`op_names` (``refsparse vectors list``): a functional op
        (``"layernorm"``), a sparse attention family (``"sparse_attention.strided"``), a
        layer (``"nn.EncoderLayer"``) or a model (``"model.DecoderLM"``).
    dtype : "float64" (the reference precision) or "float32"
    seed : int >= 0
    options : dict, optional
        The op's options (``OpInfo.defaults``), e.g. ``{"eps": 1e-6}``, ``{"pattern":
        "strided:stride=8"}``, ``{"label_smoothing": 0.0}``.
    **sizes : ints
        Any of :data:`DEFAULT_SIZES` (B, T, S, d_model, n_heads, d_ff, vocab, n_layers, d_in,
        d_out).

    Returns
    -------
    tensors : dict name → contiguous ndarray (the names of the module docstring)
    metadata : dict str → str, the safetensors header metadata
    """
    info = _info(op)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
    ctx = _Ctx(info.name, _dtype(dtype), int(seed), _check_sizes(sizes), _options(info, options))
    results = _run(ctx, info)
    tensors = {**ctx.tensors, **results}
    return tensors, _metadata(info, ctx, tensors)


def write(path, op, **kwargs):
    """Export ``op`` (keywords as :func:`export`) to a safetensors file; returns ``(tensors, metadata)``."""
    from safetensors.numpy import save_file

    tensors, metadata = export(op, **kwargs)
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"output: no such directory: {parent}")
    save_file(tensors, path, metadata=metadata)
    return tensors, metadata


def fingerprint():
    """What decides the last bits of a float64 result on this machine, as a dict of strings.

    The versions of numpy, scipy and numba, the CPU (model name and the SIMD extensions numpy
    dispatches to) and the Numba thread count. Two machines with the same fingerprint run
    the same instructions in the same order, so they reproduce each other's vectors bit for
    bit; across fingerprints, BLAS blocking, numpy's SIMD exp/log and Numba's vectorised
    reductions may move results by a few ULPs (tests/test_golden.py states the bound).
    """
    import platform

    import numba
    import scipy

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        simd = ",".join(np.show_config(mode="dicts")["SIMD Extensions"]["found"])
    except (KeyError, TypeError, AttributeError, ValueError):  # not a stable API of numpy
        simd = "unknown"
    return {"numpy": np.__version__, "scipy": scipy.__version__, "numba": numba.__version__,
            "machine": platform.machine(), "cpu": cpu, "simd": simd,
            "numba_threads": str(numba.get_num_threads())}


def recompute(tensors, metadata):
    """Run today's code on a file's stored inputs, parameters and upstream gradient.

    Returns ``{"output": ..., "grad.<name>": ...}``: what refsparse computes now from exactly
    the stored numbers (nothing is re-drawn from the seed, except the ``dropout`` op's mask,
    which is checked against the stored one). Compare it with the file's own outputs and
    gradients to see whether a change in the code changed any number.
    """
    if metadata.get("format") != FORMAT:
        raise ValueError(f"metadata: expected format {FORMAT!r}, got {metadata.get('format')!r} "
                         "(not a refsparse vectors file?)")
    info = _info(metadata["op"])
    sizes = json.loads(metadata["sizes"])
    ctx = _Ctx(info.name, _dtype(metadata["dtype"]), int(metadata["seed"]), _check_sizes(sizes),
               _options(info, json.loads(metadata["options"])), stored=dict(tensors))
    if "pattern_shape" in metadata:
        ctx.meta["pattern_shape"] = tuple(json.loads(metadata["pattern_shape"]))
    return _run(ctx, info)


# ----------------------------------------------------------------------------------------
# the command line: refsparse vectors export | list | show | check


def _parse_option(text):
    if "=" not in text:
        raise ValueError(f"--option: expected KEY=VALUE, got {text!r}")
    key, value = (s.strip() for s in text.split("=", 1))
    low = value.lower()
    if low in ("true", "false"):
        return key, low == "true"
    if low in ("none", "null"):
        return key, None
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def _cmd_export(args):
    options = dict(_parse_option(o) for o in args.option or [])
    if args.pattern is not None:
        options["pattern"] = args.pattern
    sizes = {k: getattr(args, k) for k in DEFAULT_SIZES if getattr(args, k, None) is not None}
    tensors, meta = write(args.output, args.op, dtype=args.dtype, seed=args.seed, options=options, **sizes)
    n_bytes = sum(t.nbytes for t in tensors.values())
    print(f"wrote {args.output}: {meta['op']}, {meta['dtype']}, seed {meta['seed']}, "
          f"{len(tensors)} tensors, {n_bytes:,} bytes")
    return 0


def _cmd_list(args):
    rows = [(i.name, i.kind, i.summary + (f"  [options: {', '.join(f'{k}={v}' for k, v in i.defaults.items())}]"
                                          if i.defaults else "")) for i in ops()]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    for name, kind, text in rows:
        print(f"{name.ljust(w0)}  {kind.ljust(w1)}  {text}")
    flags = ", ".join("--" + k.replace("_", "-") + f" {v}" for k, v in DEFAULT_SIZES.items())
    print(f"\nsizes (defaults): {flags}")
    return 0


def _cmd_show(args):
    from .validate import load

    tensors, meta = load(args.file, what="file")
    for key in sorted(meta):
        print(f"{key}: {meta[key]}")
    print()
    for name in sorted(tensors):
        t = tensors[name]
        print(f"{name}  {tuple(t.shape)}  {t.dtype}")
    return 0


def _cmd_check(args):
    from .validate import compare, load

    ref, _ = load(args.reference, what="reference")
    cand, _ = load(args.candidate, what="candidate")
    report = compare(ref, cand, rtol=args.rtol, atol=args.atol, max_ulp=args.max_ulp, only=args.only)
    print(report.table())
    return 0 if report.ok else 1


def _nonneg_float(text):
    import argparse

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return v


def _nonneg_int(text):
    import argparse

    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, got {text!r}")
    return v


def add_subparser(subparsers):
    """Register ``refsparse vectors export | list | show | check`` on an argparse subparsers object."""
    v = subparsers.add_parser(
        "vectors", help="export golden vectors (safetensors) and check another implementation against them",
        description="Golden vectors: inputs, parameters, outputs and every gradient of an op, layer or "
                    "model, in float64, as safetensors; and a checker that compares a candidate file "
                    "with a reference tensor by tensor (docs/validating.md).")
    vs = v.add_subparsers(dest="vectors_command", metavar="ACTION")

    e = vs.add_parser("export", help="write one op's golden vectors to a safetensors file",
                      description="Write one op's inputs, parameters, upstream gradient, output and "
                                  "gradients to a safetensors file. `refsparse vectors list` shows the ops.")
    e.add_argument("op", metavar="OP", help="an op name, e.g. layernorm, sparse_attention.local, "
                                            "nn.EncoderLayer, model.DecoderLM")
    e.add_argument("-o", "--output", required=True, metavar="FILE.safetensors", help="where to write")
    e.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                   help="precision (default float64, the reference)")
    e.add_argument("--seed", type=_nonneg_int, default=0, help="seed of every random draw (default 0)")
    for key, default in DEFAULT_SIZES.items():
        e.add_argument(f"--{key.replace('_', '-')}", dest=key, type=int, metavar="N",
                       help=f"size {key} (default {default})")
    e.add_argument("--pattern", metavar="SPEC", help="attention pattern spec for sparse_attention and the "
                   "layers and models, e.g. strided:stride=8 (see `refsparse patterns --help`)")
    e.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="an op option, e.g. --option eps=1e-6 (repeatable; see `vectors list`)")
    e.set_defaults(func=_cmd_export)

    ls = vs.add_parser("list", help="list the ops that can be exported, with their options")
    ls.set_defaults(func=_cmd_list)

    sh = vs.add_parser("show", help="print a vectors file's metadata and tensor names")
    sh.add_argument("file", metavar="FILE.safetensors")
    sh.set_defaults(func=_cmd_show)

    c = vs.add_parser("check", help="compare a candidate file with a reference, tensor by tensor",
                      description="Compare CANDIDATE with REFERENCE tensor by tensor by name; print a "
                                  "table (max abs / rel error, max ULP distance, pass/fail). Exit status "
                                  "0 when every tensor passes, 1 when one fails, 2 on bad input.")
    c.add_argument("reference", metavar="REFERENCE", help="the reference safetensors file")
    c.add_argument("candidate", metavar="CANDIDATE", help="the candidate safetensors file")
    c.add_argument("--rtol", type=_nonneg_float, default=None,
                   help="relative tolerance (default per dtype: float64 1e-7, float32 1.3e-6)")
    c.add_argument("--atol", type=_nonneg_float, default=None,
                   help="absolute tolerance (default per dtype: float64 1e-7, float32 1e-5)")
    c.add_argument("--max-ulp", dest="max_ulp", type=_nonneg_int, default=None,
                   help="also require every entry within N ULPs (0 = bit for bit)")
    c.add_argument("--only", action="append", metavar="GLOB",
                   help="compare only the reference tensors matching this glob, e.g. 'grad.*' (repeatable)")
    c.set_defaults(func=_cmd_check)

    def _help(args):
        v.print_help()
        return 0

    v.set_defaults(func=_help)
    return v
