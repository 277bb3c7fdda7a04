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

[`recompute`][refsparse.vectors.recompute] runs today's code on a file's stored inputs and
parameters (never re-drawing them), which is how tests/test_golden.py holds the code to
tests/golden/.

The package, one room per concern:

- ``record.py``: the [`Recorder`][refsparse.vectors.record.Recorder] a recipe runs in
  (draws on export, takes from the file on recompute), the registry, ``export`` and
  ``recompute``;
- ``recipes.py``: one recipe per op, layer and model;
- ``lm.py``: the loss-level language-model exports (the ``gpt2`` preset, the debug state)
  and [`check_lm`][refsparse.vectors.check_lm], a PyTorch language model against its
  refsparse twin;
- ``files.py``: safetensors read and write, the machine's fingerprint;
- ``compare.py``: the tensor-by-tensor comparison and its [`Report`][refsparse.vectors.Report].

The command line is ``refsparse vectors export | list | show | check`` (refsparse/cli.py).
"""

from __future__ import annotations

from . import lm, recipes  # noqa: F401  (register the ops)
from .compare import Report, TensorResult, compare, default_tolerances, ulp_distance
from .files import fingerprint, load, save, write
from .lm import check_lm, default_lm_rtol, shifted_targets
from .record import (
    CONVENTIONS,
    DEFAULT_SIZES,
    FORMAT,
    OpInfo,
    Recorder,
    export,
    op_names,
    ops,
    recompute,
)

__all__ = [
    "CONVENTIONS", "DEFAULT_SIZES", "FORMAT", "OpInfo", "Recorder", "Report", "TensorResult",
    "check_lm", "compare", "default_lm_rtol", "default_tolerances", "export", "fingerprint", "load",
    "op_names", "ops", "recompute", "save", "shifted_targets", "ulp_distance", "write",
]
