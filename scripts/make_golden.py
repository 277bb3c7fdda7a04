"""Write the regression set: a few float64 golden vectors under tests/golden/.

    python scripts/make_golden.py            # rewrite tests/golden/*.safetensors

tests/test_golden.py recomputes every file here from its stored inputs and parameters and
compares the result with the stored outputs and gradients. Rerun this script only when a
change in the numbers is intended, and say in the commit which change and why.

Each file is ``refsparse.vectors.export(op, dtype="float64", seed=0, ...)`` plus one more
metadata entry, ``golden_fingerprint`` (:func:`refsparse.vectors.fingerprint`: library
versions, CPU, SIMD extensions), which tells the test whether it runs where the vectors
were made (then it asks for bit-for-bit equality) or elsewhere (then for a stated ULP bound).
"""

from __future__ import annotations

import json
import os
import sys

from refsparse import vectors

GOLDEN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "golden")

# (file name, op, export keywords): small sizes, the whole set well under 1 MB
GOLDEN = [
    ("layernorm", "layernorm", {}),
    ("gelu", "gelu", {}),
    ("gelu_tanh", "gelu_tanh", {}),
    ("attention_causal_empty_row", "attention", {"options": {"mask": "causal_empty_row"}}),
    ("sparse_attention_local", "sparse_attention.local", {}),
    ("sparse_attention_strided", "sparse_attention.strided", {}),
    ("cross_entropy", "cross_entropy", {}),
    ("encoder_layer", "nn.EncoderLayer", {}),
    ("decoder_lm_local", "model.DecoderLM", {"options": {"pattern": "local:window=4"}, "T": 12}),
]


def main(out_dir=GOLDEN_DIR):
    os.makedirs(out_dir, exist_ok=True)
    fp = json.dumps(vectors.fingerprint())
    total = 0
    for name, op, kwargs in GOLDEN:
        tensors, meta = vectors.export(op, dtype="float64", seed=0, **kwargs)
        meta["golden_fingerprint"] = fp
        path = os.path.join(out_dir, name + ".safetensors")
        vectors.save(path, tensors, meta)  # whole or not at all
        size = os.path.getsize(path)
        total += size
        print(f"{path}: {op}, {len(tensors)} tensors, {size:,} bytes")
    print(f"total {total:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
