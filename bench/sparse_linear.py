"""SparseLinear's kernels against dense NumPy, scipy's CSR product and torch's CSR matmul.

For a weight W (C_out, C_in) at a given sparsity and N = 4096 rows of activations:

    forward   y  = x Wᵀ + b              refsparse spmm_forward | numpy x @ W.T | scipy x @ W.T |
                                          torch F.linear(x, W_csr, b)
    dX        dx = dy W                   refsparse spmm_backward, dX only | numpy dy @ W | scipy dy @ W |
                                          torch dy @ W_csr
    dW        dW = (dyᵀ x) at W's entries refsparse spmm_backward, dW only | numpy dy.T @ x (dense) |
                                          torch sparse.sampled_addmm (scipy has no SDDMM: n/a)
    backward  dX, dW and db               refsparse's fused kernel (one pass) | numpy dX + dW
    fwd+bwd   forward then backward       refsparse | numpy

Shapes: W 2048×512 and 512×2048; sparsity 0/50/80/90/95/99 % (exactly round(density·out·in)
entries, uniformly placed); float32 and float64. Each library runs in its own process
(OpenBLAS threads spinning after a numpy call slow the next library down), one process per
(library, dtype, shape), the libraries taken in turn for each shape so that the figures
compared are measured close together in time; ``--rounds R`` repeats the sweep and keeps
each figure's lowest median (for a machine shared with other jobs). Each process
first checks its results against the dense masked twin (x @ W̃ᵀ + b, dy @ W̃, dyᵀ x at the
stored entries; float64 to 1e-12, float32 to 1e-4 relative to the largest entry), then
warms up and takes the median of several timed calls (at least 3, or 1 when a call takes
over a second). Times include allocating the outputs, as numpy's do. The calls are
repeated, as a training loop repeats them: an output of refsparse of 4 MiB or more reuses
the block of an earlier output that is no longer used (``refsparse.kernels.buffers``),
where numpy's, scipy's and torch's come from malloc, which maps fresh pages for every
block of 32 MiB or more (a 4096 × 2048 float32 output is 32 MiB), and the first write to
each page costs a page fault. Measured here, float32, in one process: refsparse's dX of
512 × 2048 at 99% takes 13.0 ms into fresh memory and 5.0 ms into reused memory; a fresh
32 MiB block written once by NumPy takes 6.7 ms against 3.7 ms for a reused one.

What the timed calls leave out, for every library:

- refsparse's preparation of a pattern. Wᵀ's structure (built in O(nnz log nnz)) and the
  forward's block pointers are made once per pattern and cached on the weight, as they are in
  training, where a pattern lives for many steps (SET and RigL change it every 50). The first
  call builds them; the timed calls reuse them. Measured here, float32: the transpose takes
  13.3, 8.0, 4.8 and 0.9 ms for 2048×512 at 80, 90, 95 and 99%, and 11.4, 6.1, 3.5 and 1.2 ms
  for 512×2048. That is 13–50% of one dX or dW call, so a pattern used for a single product
  would not see these ratios. torch and scipy get W as a CSR matrix, built before timing.
- numpy's bias: its forward is x @ W.T and its backward dX + dW, with no + b and no db,
  which refsparse, scipy and torch do include. This leaves a few percent out of numpy's
  times.

Threads: refsparse (Numba) and torch use both cores. scipy's sparse products have no
parallel kernel and run on one core, so up to 2× of each "× scipy" ratio is the second core.

Effective GFLOP/s count 2 · nnz · N per product (the dense baseline: 2 · out · in · N).
The break-even sparsity is where refsparse's fwd+bwd time meets dense numpy's (linear
interpolation between the measured sparsities).

Run it as:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/sparse_linear.py

Prints markdown tables and the acceptance checks of issue 5; writes
bench/results/sparse_linear.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    cpu_line,
    dense_twin,
    environment,
    markdown_table,
    peak_rss_mb,
    rel_err,
    run_worker,
    warn_openblas_env,
    write_json,
)

N_TOKENS = 4096
SHAPES = [(2048, 512), (512, 2048)]  # (C_out, C_in)
SPARSITIES = [0.0, 0.5, 0.8, 0.9, 0.95, 0.99]
LIBS = ["refsparse", "numpy", "scipy", "torch"]
TOL = {"float64": 1e-12, "float32": 1e-4}
PRODUCTS = {"fwd": 1, "dx": 1, "dw": 1, "bwd": 2, "fwd+bwd": 3}  # products per op
# acceptance (issue 5): float32 fwd+bwd speed-up over dense numpy, and over the CSR libraries
TARGET_VS_DENSE = {0.9: 1.3, 0.95: 2.5, 0.99: 8.0}
TARGET_VS_CSR = 3.0


# ----------------------------------------------------------------------------------
# problem data (the same in every process)
def make_problem(shape, sparsity, dtype):
    import numpy as np
    import scipy.sparse as sp

    from refsparse.nn.sparse import random_pattern

    c_out, c_in = shape
    rng = np.random.default_rng([c_out, c_in, round(sparsity * 1000)])
    indptr, indices = random_pattern(c_out, c_in, 1.0 - sparsity, rng)
    bound = 1.0 / np.sqrt(c_in)
    w = sp.csr_array((rng.uniform(-bound, bound, indices.size).astype(dtype), indices, indptr),
                     shape=shape)
    w.has_canonical_format = True
    b = rng.uniform(-bound, bound, c_out).astype(dtype)
    x = rng.standard_normal((N_TOKENS, c_in)).astype(dtype)
    dy = rng.standard_normal((N_TOKENS, c_out)).astype(dtype)
    return x, w, b, dy


def time_call(fn, repeats):
    """Median seconds of ``fn()`` after one untimed call: >= 3 calls, or 1 if a call takes > 1 s."""
    fn()
    times = []
    while len(times) < repeats:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if times[0] > 1.0 and len(times) >= 1:
            break
        if sum(times) > 3.0 and len(times) >= 3:
            break
    return statistics.median(times), times


# ----------------------------------------------------------------------------------
# workers: one library, one dtype, every shape and sparsity
def ops_refsparse(x, w, b, dy):
    import refsparse.functional.sparse_linear as SL

    _, cache = SL.sparse_linear_forward(x, w, b)

    def fwd_bwd():
        _, c = SL.sparse_linear_forward(x, w, b)
        SL.sparse_linear_backward(dy, c)

    ops = {
        "fwd": lambda: SL.sparse_linear_forward(x, w, b)[0],
        "dx": lambda: SL.sparse_linear_dx(dy, cache),
        "dw": lambda: SL.sparse_linear_dw(dy, cache),
        "bwd": lambda: SL.sparse_linear_backward(dy, cache),
        "fwd+bwd": fwd_bwd,
    }
    outputs = {"fwd": ops["fwd"], "dx": ops["dx"], "dw": ops["dw"],
               "bwd": lambda: SL.sparse_linear_backward(dy, cache)}
    return ops, outputs


def ops_numpy(x, w, b, dy):
    wd = w.toarray()  # the dense weight of the same shape: numpy's cost does not see the zeros

    def bwd():
        return dy @ wd, dy.T @ x

    ops = {"fwd": lambda: x @ wd.T, "dx": lambda: dy @ wd, "dw": lambda: dy.T @ x, "bwd": bwd,
           "fwd+bwd": lambda: (x @ wd.T, bwd())}
    return ops, {}


def ops_scipy(x, w, b, dy):
    ops = {"fwd": lambda: x @ w.T + b, "dx": lambda: dy @ w}
    return ops, dict(ops)


def ops_torch(x, w, b, dy):
    import numpy as np
    import torch

    tx, tdy, tb = torch.from_numpy(x), torch.from_numpy(dy), torch.from_numpy(b)
    tw = torch.sparse_csr_tensor(torch.from_numpy(w.indptr.astype(np.int64)),
                                 torch.from_numpy(w.indices.astype(np.int64)),
                                 torch.from_numpy(w.data), size=w.shape)
    F = torch.nn.functional

    def dw():  # SDDMM: (dyᵀ x) sampled at W's pattern; beta = 0 ignores W's values
        return torch.sparse.sampled_addmm(tw, tdy.T, tx, beta=0.0).values()

    ops = {"fwd": lambda: F.linear(tx, tw, tb), "dx": lambda: tdy @ tw, "dw": dw}
    outputs = {k: (lambda f=f: f().numpy()) for k, f in ops.items()}
    return ops, outputs


OPS = {"refsparse": ops_refsparse, "numpy": ops_numpy, "scipy": ops_scipy, "torch": ops_torch}


def worker(args):
    import warnings

    warnings.filterwarnings("ignore", message=".*Sparse.*")  # torch's beta notices
    extra = {}
    if args.lib == "torch":
        import torch

        extra = {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    records, checks = [], []
    compile_s = None
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes]
    for shape in shapes:
        sparsities = [0.0] if args.lib == "numpy" else args.sparsities
        for sparsity in sparsities:
            x, w, b, dy = make_problem(shape, sparsity, args.dtype)
            ops, outputs = OPS[args.lib](x, w, b, dy)
            if args.lib == "refsparse" and compile_s is None:
                t = time.perf_counter()
                ops["fwd+bwd"]()  # compiles (or loads Numba's cache) on the first call
                compile_s = time.perf_counter() - t
            if outputs:  # check against the dense twin before timing
                ref = dense_twin(x, w, b, dy)
                for name, fn in outputs.items():
                    out = fn()
                    if name == "bwd":
                        dx, dw, db = out
                        errs = {"bwd.dx": rel_err(dx, ref["dx"]), "bwd.dw": rel_err(dw, ref["dw"]),
                                "bwd.db": rel_err(db, dy.sum(axis=0))}
                    else:
                        errs = {name: rel_err(out, ref[name])}
                    for k, e in errs.items():
                        checks.append({"shape": shape, "sparsity": sparsity, "op": k, "rel_err": e,
                                       "ok": e <= TOL[args.dtype]})
                del ref
                time.sleep(0.5)  # let the OpenBLAS threads of the twin stop spinning
            for op, fn in ops.items():
                med, times = time_call(fn, args.repeats)
                nnz = shape[0] * shape[1] if args.lib == "numpy" else int(w.nnz)
                flops = 2.0 * nnz * N_TOKENS * PRODUCTS[op]
                records.append({"lib": args.lib, "dtype": args.dtype, "shape": shape,
                                "sparsity": sparsity, "nnz": int(w.nnz), "op": op,
                                "median_ms": 1000 * med, "times_s": times, "gflops": flops / med / 1e9})
                print(f"{args.lib} {args.dtype} {shape} {sparsity:.2f} {op}: {1000 * med:.2f} ms",
                      file=sys.stderr)
    result = {"lib": args.lib, "dtype": args.dtype, "records": records, "checks": checks,
              "compile_or_cache_load_s": compile_s, "peak_rss_mb": peak_rss_mb(),
              "env": environment(), **extra}
    with open(args.json, "w") as f:
        json.dump(result, f)


# ----------------------------------------------------------------------------------
# report
def best_of(rounds):
    """Merge the workers' results of several rounds: per (lib, dtype, shape, sparsity, op)
    the record with the lowest median; checks and environments of every round are kept."""
    merged = [dict(r, records=[dict(rec) for rec in r["records"]]) for r in rounds[0]]
    for later in rounds[1:]:
        for m, r in zip(merged, later):
            m["checks"] = m["checks"] + r["checks"]
            for rec, other in zip(m["records"], r["records"]):
                if other["median_ms"] < rec["median_ms"]:
                    rec.update(other)
    for m in merged:
        m["rounds"] = len(rounds)
    return merged


def break_even(points):
    """Sparsity where speed-up = 1, interpolated; points: [(sparsity, speed-up)] sorted."""
    for (s0, r0), (s1, r1) in itertools.pairwise(points):
        if r0 < 1.0 <= r1:
            return s0 + (1.0 - r0) * (s1 - s0) / (r1 - r0)
    if points and points[0][1] >= 1.0:
        return points[0][0]
    return None


def report(results, args):
    def get(lib, dtype, shape, sparsity, op):
        for r in results:
            if r["lib"] != lib or r["dtype"] != dtype:
                continue
            for rec in r["records"]:
                if (tuple(rec["shape"]) == tuple(shape) and rec["op"] == op
                        and (lib == "numpy" or abs(rec["sparsity"] - sparsity) < 1e-9)):
                    return rec
        return None

    def ms(rec):
        return f"{rec['median_ms']:.1f}" if rec else "n/a"

    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes]
    summary_rows, csr_rows, accept, breakeven = [], [], [], {}
    for dtype in args.dtypes:
        for shape in shapes:
            label = f"{shape[0]}×{shape[1]}"
            dense = get("numpy", dtype, shape, 0.0, "fwd+bwd")
            points = []
            for sp_ in args.sparsities:
                fb = get("refsparse", dtype, shape, sp_, "fwd+bwd")
                if fb is None:
                    continue
                f, bw = get("refsparse", dtype, shape, sp_, "fwd"), get("refsparse", dtype, shape, sp_, "bwd")
                dxr, dwr = get("refsparse", dtype, shape, sp_, "dx"), get("refsparse", dtype, shape, sp_, "dw")
                speed = dense["median_ms"] / fb["median_ms"] if dense else float("nan")
                points.append((sp_, speed))
                summary_rows.append([dtype, label, f"{100 * sp_:g}%", f"{fb['nnz']:,}", ms(f), ms(bw),
                                     f"{ms(dxr)} / {ms(dwr)}", ms(fb), f"{fb['gflops']:.1f}",
                                     ms(dense), f"{speed:.2f}×"])
                if dtype == "float32" and sp_ in TARGET_VS_DENSE:
                    accept.append((f"float32 {label} {100 * sp_:g}% fwd+bwd vs dense numpy", speed,
                                   TARGET_VS_DENSE[sp_]))
                for op in ("fwd", "dx", "dw"):
                    mine = get("refsparse", dtype, shape, sp_, op)
                    sc, to = get("scipy", dtype, shape, sp_, op), get("torch", dtype, shape, sp_, op)
                    dn = get("numpy", dtype, shape, 0.0, op)
                    ratio = {k: (v["median_ms"] / mine["median_ms"] if v else None)
                             for k, v in (("scipy", sc), ("torch", to), ("numpy", dn))}
                    csr_rows.append([dtype, label, f"{100 * sp_:g}%", op, ms(mine), f"{mine['gflops']:.1f}",
                                     ms(dn), ms(sc), ms(to)]
                                    + [f"{ratio[k]:.2f}×" if ratio[k] else "n/a"
                                       for k in ("numpy", "scipy", "torch")])
                    if dtype == "float32" and sp_ >= 0.8:
                        for k in ("scipy", "torch"):
                            if ratio[k] is not None:
                                accept.append((f"float32 {label} {100 * sp_:g}% {op} vs {k} CSR", ratio[k],
                                               TARGET_VS_CSR))
            be = break_even(points)
            breakeven[f"{dtype} {label}"] = be

    print(f"\nSparseLinear, N = {N_TOKENS} rows; median ms (each library in its own process, "
          f"best of {results[0].get('rounds', 1)} round(s)). Effective GFLOP/s = 2·nnz·N per product.\n")
    print("fwd+bwd against dense numpy (x @ W.T, dy @ W, dy.T @ x):\n")
    print(markdown_table(["dtype", "W (out×in)", "sparsity", "nnz", "fwd ms", "bwd ms", "dX / dW ms",
                          "fwd+bwd ms", "GFLOP/s", "numpy fwd+bwd ms", "speed-up"], summary_rows))
    print("\nBreak-even sparsity (refsparse fwd+bwd = dense numpy): "
          + "; ".join(f"{k}: {('%.1f%%' % (100 * v)) if v is not None else 'not reached'}"
                      for k, v in breakeven.items()))
    print("\nEach product against dense numpy, scipy CSR and torch CSR (speed-up = their ms / ours):\n")
    print(markdown_table(["dtype", "W (out×in)", "sparsity", "product", "refsparse ms", "GFLOP/s",
                          "numpy ms", "scipy ms", "torch ms", "× numpy", "× scipy", "× torch"], csr_rows))
    for r in results:
        if r["lib"] == "refsparse":
            print(f"\nrefsparse {r['dtype']} {r['records'][0]['shape']}: first call (Numba compile "
                  f"or cache load) {r['compile_or_cache_load_s']:.2f} s")
    bad = [c for r in results for c in r["checks"] if not c["ok"]]
    n_checks = sum(len(r["checks"]) for r in results)
    print(f"\nchecks against the dense twin: {n_checks - len(bad)}/{n_checks} ok"
          + ("" if not bad else f"; FAILED: {bad[:5]}"))
    print("\nAcceptance (issue 5)" + ("" if not bad else ": no line passes, since a result differs from its twin")
          + ":")
    for name, got, want in accept:  # a speed of wrong results passes nothing
        print(f"  {'PASS' if got >= want and not bad else 'FAIL'}  {name}: {got:.2f}× (target ≥ {want:g}×)")
    env = results[0]["env"]
    print(f"\nnumpy BLAS: {env.get('blas')}")
    print(f"numba threads: {env.get('numba_threads')}; "
          + "; ".join(f"torch {r.get('torch')} threads {r.get('torch_threads')}"
                      for r in results if r["lib"] == "torch"))
    return {"breakeven_sparsity": breakeven, "acceptance": [
        {"check": n, "speedup": g, "target": w, "pass": g >= w and not bad} for n, g, w in accept],
        "all_checks_ok": not bad}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7, help="timed calls per op (median reported)")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat the whole sweep; keep each figure's lowest median (a loaded machine)")
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    p.add_argument("--shapes", nargs="+", default=[f"{o}x{i}" for o, i in SHAPES], help="OUTxIN")
    p.add_argument("--sparsities", nargs="+", type=float, default=SPARSITIES)
    p.add_argument("--libs", nargs="+", default=LIBS, choices=LIBS)
    p.add_argument("--worker", choices=LIBS, help=argparse.SUPPRESS)
    p.add_argument("--dtype", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.lib = args.worker
        return worker(args)

    warn_openblas_env()
    print(cpu_line())
    common = ["--repeats", str(args.repeats), "--sparsities", *map(str, args.sparsities)]
    libs = list(args.libs)
    if "torch" in libs:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("torch not installed: skipped", file=sys.stderr)
            libs.remove("torch")
    # Round-robin over the libraries for each (dtype, shape), so that the machine's load is
    # as alike as possible for the numbers that are compared; with --rounds > 1 the whole
    # sweep repeats and each figure keeps its best (lowest) median over the rounds.
    rounds = []
    for rnd in range(args.rounds):
        results = []
        for dtype in args.dtypes:
            for shape in args.shapes:
                for lib in libs:
                    print(f"round {rnd + 1}: {lib} {dtype} {shape} ...", file=sys.stderr)
                    results.append(run_worker(__file__, [lib, "--dtype", dtype, "--shapes", shape,
                                                         *common]))
        rounds.append(results)
    results = best_of(rounds)
    summary = report(results, args)
    path = write_json("sparse_linear.json", {"n_tokens": N_TOKENS, "shapes": args.shapes,
                                             "sparsities": args.sparsities, "results": results, **summary})
    print(f"wrote {path}")
    if not summary["all_checks_ok"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
