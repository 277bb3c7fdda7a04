"""Recording: the context a recipe runs in, the registry of recipes, export and recompute.

A *recipe* (refsparse/vectors/recipes.py) is a function ``recipe(rec) -> (output, backward)``
that asks the [`Recorder`][refsparse.vectors.record.Recorder] for its inputs and parameters by name. On export the recorder
draws them from the seed and records them; on recompute it hands back the stored ones, so the
same recipe both writes a file and re-runs today's code on it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .. import __version__

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
    "loss_gradients": "output is the scalar loss; grad_output is 1, so grad.<name> = d loss / d<name>",
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
    "lm_loss": "output = mean cross-entropy of logits[:, :-1] against input.labels[:, 1:] (labels shifted "
               "inside, as Hugging Face's labels=); a label equal to ignore_index counts for nothing; "
               "logits (B, T, V) are stored too",
    "gpt2": "pre-LN blocks, tanh GELU (gelu_new), d_ff = 4 d_model, learned positions, LayerNorm eps as "
            "the eps option; names=hf: parameters under GPT2LMHeadModel's names and layouts (Conv1D "
            "weights (in, out); attn.c_attn = [q | k | v] by columns; hf_config holds the GPT2Config)",
    "trajectory": "steps.loss[k] = the loss before AdamW update k on the same batch (torch.optim.AdamW "
                  "with the lr and weight_decay options, betas (0.9, 0.999), eps 1e-8); empty for steps=0",
}


def check_sizes(sizes):
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
class Recorder:
    """The context a recipe runs in: draws its tensors on export, takes them from a file on recompute.

    ``rec.normal(name, shape)``, ``rec.ints``, ``rec.const``, ``rec.pattern`` and
    ``rec.module(build)`` give the recipe its inputs and parameters by name; ``rec.B``,
    ``rec.T``, ... are the sizes and ``rec.opt(key)`` the options. ``rec.outputs`` holds
    results besides the output and the gradients (a model's logits, a trajectory's losses).
    """

    op: str
    dtype: np.dtype
    seed: int
    sizes: dict
    options: dict
    stored: dict | None = None  # None: export (draw); else: recompute (take)
    tensors: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)  # extra metadata an op adds (pattern text, module)
    outputs: dict = field(default_factory=dict)  # results besides output and grads (logits, steps.loss)
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

    def take(self, name):
        if name not in self.stored:
            raise ValueError(f"vectors: the file has no tensor {name!r}, which op {self.op!r} needs")
        value = self.stored[name]
        self.tensors[name] = value
        return value

    def record(self, name, value):
        value = np.ascontiguousarray(value)
        self.tensors[name] = value
        return value

    def normal(self, name, shape, scale=1.0, loc=0.0, stream=1):
        """A float tensor ``loc + scale · N(0, 1)``, drawn in float64, rounded to the dtype."""
        if self.stored is not None:
            return self.take(name)
        x = loc + scale * self.rng(stream).standard_normal(shape)
        return self.record(name, x.astype(self.dtype))

    def ints(self, name, shape, high):
        """An int64 tensor of uniform ids in [0, high)."""
        if self.stored is not None:
            return self.take(name)
        return self.record(name, self.rng(1).integers(0, high, size=shape).astype(np.int64))

    def const(self, name, make):
        """A non-random input (a mask, a pattern's arrays): ``make()`` on export, stored else."""
        if self.stored is not None:
            return self.take(name)
        return self.record(name, make())

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
            self.record(name + ".indptr", p.indptr.astype(np.int64))
            self.record(name + ".indices", p.indices.astype(np.int64))
            self.meta.setdefault("pattern_nnz", str(int(p.nnz)))
            return p, True
        indptr = self.take(name + ".indptr")
        indices = self.take(name + ".indices")
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

        from ..nn import Module

        m = build(self.rng(0))
        assert isinstance(m, Module)
        m.eval()  # dropout is 0 anyway; eval makes that explicit
        if self.stored is None:
            for name, p in m.parameters():
                v = p.values
                if v.size and np.all(v == v.flat[0]):
                    v[...] = (v + 0.1 * self.rng(0).standard_normal(v.shape)).astype(v.dtype)
                self.record_param(name, p)
        else:
            state = {}
            for name, p in m.parameters():
                values = self.take("param." + name)
                if p.is_sparse:
                    indptr = self.take(f"param.{name}.indptr")
                    indices = self.take(f"param.{name}.indices")
                    state[name] = sp.csr_array((values.copy(), indices, indptr), shape=p.shape)
                else:
                    state[name] = values
            m.load_state_dict(state)
        self.meta["module"] = type(m).__name__
        return m

    def record_param(self, name, p):
        if p.is_sparse:
            w = p.value
            self.record(f"param.{name}", w.data.copy())
            self.record(f"param.{name}.indptr", w.indptr.astype(np.int64))
            self.record(f"param.{name}.indices", w.indices.astype(np.int64))
        else:
            self.record(f"param.{name}", p.value.copy())


def param_grads(module):
    return {f"param.{name}": p.grad for name, p in module.parameters()}


# ----------------------------------------------------------------------------------------
# the registry


@dataclass(frozen=True)
class OpInfo:
    """One exportable op: its name, kind, summary, the call it makes, its options' defaults.

    ``loss`` marks an op whose output is a scalar loss: its ``grad_output`` is 1 and its
    gradients are those of the loss itself. ``elements(sizes)`` is a lower bound on the
    number of floats the op holds at once (its largest input or activation), which
    [`export`][refsparse.vectors.record.export] holds against the memory available before it draws anything.
    """

    name: str
    kind: str  # "functional" | "sparse_attention" | "layer" | "model" | "preset"
    summary: str
    call: str
    conventions: tuple
    defaults: dict
    fn: Callable = field(repr=False, compare=False)
    loss: bool = False
    elements: Callable = field(default=None, repr=False, compare=False)


REGISTRY: dict = {}


def register(name, kind, summary, call, conventions=(), *, loss=False, elements=None, **defaults):
    """Decorator: add ``recipe(rec) -> (output, backward)`` to the registry under ``name``.

    ``backward(grad_output)`` returns ``{"input.x": dx, "param.w": dw, ...}``.
    """
    first = "loss_gradients" if loss else "gradients"

    def add(fn):
        REGISTRY[name] = OpInfo(name, kind, summary, call, (first,) + tuple(conventions), defaults, fn,
                                loss, elements)
        return fn

    return add


def ops():
    """Every exportable op, as a list of [`OpInfo`][refsparse.vectors.record.OpInfo], in a stable order."""
    return list(REGISTRY.values())


def op_names():
    """The names ``refsparse vectors export`` accepts, in a stable order."""
    return [info.name for info in ops()]


# ----------------------------------------------------------------------------------------
# export, write, recompute


def lookup(op):
    if not isinstance(op, str):
        raise TypeError(f"op: expected an op name (str), got {type(op).__name__}")
    if op not in REGISTRY:
        raise ValueError(f"op: unknown op {op!r}; `refsparse vectors list` shows them: "
                         f"{', '.join(op_names())}")
    return REGISTRY[op]


def check_options(info, options):
    out = dict(info.defaults)
    for key, value in (options or {}).items():
        if key not in info.defaults:
            known = ", ".join(info.defaults) or "none"
            raise ValueError(f"options: op {info.name!r} has no option {key!r}; its options: {known}")
        out[key] = value
    return out


def check_dtype(dtype):
    if str(dtype) not in ("float32", "float64"):
        raise ValueError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
    return np.dtype(str(dtype))


def run(ctx, info):
    """Forward, the upstream gradient, backward; returns the outputs and gradients."""
    ctx.input_names = []
    y, backward = info.fn(ctx)
    y = np.asarray(y)
    if ctx.stored is None:
        if info.loss:  # d loss / d loss
            dy = np.ones(y.shape, dtype=ctx.dtype)
        else:
            dy = ctx.rng(2).standard_normal(y.shape).astype(ctx.dtype)
        ctx.record("grad_output", dy)
    else:
        dy = ctx.take("grad_output")
    out = {"output": np.ascontiguousarray(y)}
    grads = backward(dy.copy())  # a copy: no op may change the stored upstream gradient
    for name, g in grads.items():
        if g is None:
            continue
        out["grad." + name] = np.ascontiguousarray(np.asarray(g))
    out.update({name: np.ascontiguousarray(v) for name, v in ctx.outputs.items()})
    return out


def metadata_of(info, ctx, tensors):
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


def available_memory():
    """Bytes of memory available to a new allocation (Linux's MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def needed_bytes(info, sizes, dtype):
    """A lower bound on the bytes an export holds at once: 3 × the op's largest tensor
    (an input or activation, the output, and a gradient of the same size)."""
    if info.elements is not None:
        elements = info.elements(sizes)
    else:  # the default: one (B, T, d_model) activation
        elements = sizes["B"] * sizes["T"] * sizes["d_model"]
    return 3 * int(elements) * np.dtype(dtype).itemsize


def check_memory(info, sizes, dtype, available=None):
    """Refuse, before drawing anything, sizes whose tensors cannot fit in memory."""
    need = needed_bytes(info, sizes, dtype)
    available = available_memory() if available is None else available
    if available is not None and need > available:
        shown = ", ".join(f"{k}={v}" for k, v in sizes.items() if v != DEFAULT_SIZES[k]) or "default sizes"
        raise ValueError(f"sizes: {info.name} at {shown} would need at least {need / 2**30:,.1f} GiB of "
                         f"memory ({np.dtype(dtype).name}); {available / 2**30:,.1f} GiB are available")


def export(op, *, dtype="float64", seed=0, options=None, **sizes):
    """The golden vectors of one op: ``(tensors, metadata)``.

    Parameters
    ----------
    op : str
        An op name from [`op_names`][refsparse.vectors.record.op_names] (``refsparse vectors list``): a functional op
        (``"layernorm"``), a sparse attention family (``"sparse_attention.strided"``), a
        layer (``"nn.EncoderLayer"``) or a model (``"model.DecoderLM"``).
    dtype : "float64" (the reference precision) or "float32"
    seed : int >= 0
    options : dict, optional
        The op's options (``OpInfo.defaults``), e.g. ``{"eps": 1e-6}``, ``{"pattern":
        "strided:stride=8"}``, ``{"label_smoothing": 0.0}``.
    **sizes : ints
        Any of `DEFAULT_SIZES` (B, T, S, d_model, n_heads, d_ff, vocab, n_layers, d_in,
        d_out).

    Returns
    -------
    tensors : dict name → contiguous ndarray (the names of the module docstring)
    metadata : dict str → str, the safetensors header metadata
    """
    info = lookup(op)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
    ctx = Recorder(info.name, check_dtype(dtype), int(seed), check_sizes(sizes), check_options(info, options))
    check_memory(info, ctx.sizes, ctx.dtype)
    results = run(ctx, info)
    tensors = {**ctx.tensors, **results}
    return tensors, metadata_of(info, ctx, tensors)


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
    info = lookup(metadata["op"])
    sizes = json.loads(metadata["sizes"])
    ctx = Recorder(info.name, check_dtype(metadata["dtype"]), int(metadata["seed"]), check_sizes(sizes),
                   check_options(info, json.loads(metadata["options"])), stored=dict(tensors))
    if "pattern_shape" in metadata:
        ctx.meta["pattern_shape"] = tuple(json.loads(metadata["pattern_shape"]))
    return run(ctx, info)

