"""Validate someone else's kernels against refsparse's golden vectors — here, PyTorch's.

The workflow a kernel writer follows, with PyTorch standing in for "your kernel":

1. export refsparse's reference vectors (float64 inputs, parameters, upstream gradient,
   output and every gradient) — on the command line the same as

       refsparse vectors export sparse_attention.strided -o ref_attn.safetensors
       refsparse vectors export sparse_linear -o ref_linear.safetensors

2. read the inputs, run your own implementation forward and backward with the stored
   upstream gradient, and save the output and gradients under the same names:

   - sparse attention as ``torch.nn.functional.scaled_dot_product_attention`` with a
     boolean ``attn_mask`` made from the pattern's CSR arrays (True = may attend, the
     same polarity as refsparse's patterns);
   - a sparse linear layer as a dense ``torch.nn.Linear`` masked with
     ``torch.nn.utils.prune.custom_from_mask`` (weight = weight_orig ⊙ mask), its weight
     gradient read at the pattern's stored entries;

3. compare, tensor by tensor — on the command line the same as

       refsparse vectors check ref_attn.safetensors mine_attn.safetensors \\
           --rtol 1e-10 --atol 1e-12 --only output --only 'grad.*'

Run:  python examples/validate_torch_sdpa.py [--out-dir DIR] [--alter-mask]

``--alter-mask`` flips one entry of the attention mask and one of the weight mask before
running torch — a bug of the kind a real kernel has — and the check must then fail loudly,
naming the tensors that are off. Exit status: 0 when everything matches, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

from refsparse import vectors
from refsparse.validate import compare

# float64 tolerances: two correct float64 implementations agree to ~1e-15 relative here;
# 1e-10 leaves room for a different summation order, and any wrong mask entry is ~1e-1 off
RTOL, ATOL = 1e-10, 1e-12
COMPARED = ["output", "grad.*"]  # what the candidate computes (its inputs are refsparse's)


def _csr_to_dense(torch, indptr, indices, values, shape):
    """Densify int64 CSR arrays: entry e of row r sits at (r, indices[e])."""
    indptr, indices = torch.as_tensor(indptr), torch.as_tensor(indices)
    rows = torch.repeat_interleave(torch.arange(shape[0]), torch.diff(indptr))  # (nnz,)
    values = torch.as_tensor(values)
    dense = torch.zeros(shape, dtype=values.dtype)
    dense[rows, indices] = values
    return dense


def candidate_sdpa(ref_path, out_path, alter_mask=False):
    """Run torch SDPA on the reference's inputs; write output and gradients to ``out_path``."""
    import torch
    from safetensors.torch import load_file, save_file

    ref = load_file(ref_path)  # torch tensors, float64
    q, k, v = (ref[f"input.{n}"].clone().requires_grad_(True) for n in "qkv")
    t_q, t_k = q.shape[-2], k.shape[-2]
    indptr, indices = ref["input.pattern.indptr"].numpy(), ref["input.pattern.indices"].numpy()
    mask = _csr_to_dense(torch, indptr, indices, np.ones(indices.size, dtype=bool), (t_q, t_k)).bool()
    if alter_mask:  # a kernel that lets query t_q-1 see one key too many (or one too few)
        mask[t_q - 1, 1] = ~mask[t_q - 1, 1]
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, D)
    out.backward(ref["grad_output"])
    save_file({"output": out.detach().contiguous(), "grad.input.q": q.grad, "grad.input.k": k.grad,
               "grad.input.v": v.grad}, out_path)


def candidate_masked_linear(ref_path, out_path, alter_mask=False):
    """A dense torch Linear masked to the reference's CSR pattern, forward and backward."""
    import torch
    from safetensors.torch import load_file, save_file
    from torch.nn.utils import prune

    ref = load_file(ref_path)
    x = ref["input.x"].clone().requires_grad_(True)  # (B, T, in)
    values = ref["param.weight"].numpy()  # (nnz,) the stored entries
    indptr, indices = ref["param.weight.indptr"].numpy(), ref["param.weight.indices"].numpy()
    c_out, c_in = ref["param.bias"].shape[0], x.shape[-1]
    w = _csr_to_dense(torch, indptr, indices, values, (c_out, c_in))  # zeros off the pattern
    mask = _csr_to_dense(torch, indptr, indices, np.ones(values.size, dtype=bool), (c_out, c_in))
    if alter_mask:  # one stored connection dropped: a pruning-mask bug
        row0 = int(np.searchsorted(indptr, 0, side="right")) - 1  # the row of stored entry 0
        mask[row0, indices[0]] = False
    lin = torch.nn.Linear(c_in, c_out, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(ref["param.bias"])
    prune.custom_from_mask(lin, "weight", mask)  # weight = weight_orig * mask
    y = lin(x)
    y.backward(ref["grad_output"])
    rows = np.repeat(np.arange(c_out), np.diff(indptr))  # the row of each stored entry
    dw = lin.weight_orig.grad[torch.from_numpy(rows), torch.from_numpy(indices)]  # (nnz,)
    save_file({"output": y.detach().contiguous(), "grad.input.x": x.grad, "grad.param.weight": dw,
               "grad.param.bias": lin.bias.grad}, out_path)


def validate(out_dir, alter_mask=False, *, verbose=True):
    """Export, run the torch candidates, compare; returns {name: Report}."""
    reports = {}
    cases = [("sdpa", "sparse_attention.strided", candidate_sdpa)]
    if "sparse_linear" in vectors.op_names():
        cases.append(("masked_linear", "sparse_linear", candidate_masked_linear))
    elif verbose:
        print("(refsparse has no sparse_linear op here: skipping the masked linear layer)")
    for name, op, run in cases:
        ref = os.path.join(out_dir, f"ref_{name}.safetensors")
        mine = os.path.join(out_dir, f"mine_{name}.safetensors")
        vectors.write(ref, op, dtype="float64", seed=0)
        run(ref, mine, alter_mask=alter_mask)
        report = compare(ref, mine, rtol=RTOL, atol=ATOL, only=COMPARED)
        reports[name] = report
        if verbose:
            print(f"== {name}: torch against refsparse's {op} (float64, rtol={RTOL:g}, atol={ATOL:g})")
            print(report)
            print()
    return reports


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", help="where to write the vectors (default: a temporary directory)")
    p.add_argument("--alter-mask", action="store_true",
                   help="flip one mask entry before running torch: the check must fail")
    args = p.parse_args(argv)
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
        reports = validate(args.out_dir, args.alter_mask)
    else:
        with tempfile.TemporaryDirectory() as d:
            reports = validate(d, args.alter_mask)
    failed = [name for name, r in reports.items() if not r.ok]
    if failed:
        print(f"FAILED: {', '.join(failed)} — the candidate does not match refsparse's reference")
        return 1
    print("all candidates match refsparse's reference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
