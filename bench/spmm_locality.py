"""How much of SparseLinear's kernel time is the random reads of its cached tile.

The kernels of ``refsparse.kernels.spmm`` read one operand at random: the forward a row of
the transposed input tile xt per stored entry of W, the backward a row of the transposed
gradient tile gt per stored entry of Wᵀ (see the module's docstring). On a large layer that
tile is more than the L1 cache holds (at C_in = 512, TN = 64 float32: 128 KB), so those reads
come mostly from L2. This benchmark asks what a perfect order of W's entries could buy, the
ceiling of any reordering or blocking of a random pattern: it times the same kernels on
patterns with the same number of entries in every row, drawn three ways:

    random     each row's ids drawn from all columns (rows of Wᵀ: from all outputs), as a
               pruned or randomly sparse layer has them
    confined   drawn from the first S ids only (S = 64 by default): the rows of the tile
               read at random then take S · TN · itemsize bytes (16 KB), which stay in L1;
               only where a row's entries fit in S ids (n/a where they don't: at density
               0.1, rows 2048 wide hold 205)
    floor      one entry per row: what the call costs besides its entries (the transposes
               of the activations into and out of the tiles, the output's memory)

The forward runs on a pattern drawn along W's rows; the backward (dX, dW and db in one
pass) on one drawn along Wᵀ's rows, so that in each case the operand read at random is the
one confined. The patterns of one shape take turns in one process, each call's best of
``--repeats`` kept, and the table gives the medians over ``--rounds`` turns. ``entries``
is the time less the floor: the part that grows with the stored entries. Its ratio random /
confined is what locality alone could buy on this CPU.

Run it as:

    python bench/spmm_locality.py

Prints a markdown table; writes bench/results/spmm_locality.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import cpu_line, dense_twin, environment, markdown_table, rel_err, write_json

N_TOKENS = 4096
SHAPES = [(512, 512), (2048, 512), (512, 2048)]  # (C_out, C_in): the large LM's SparseLinear layers


def pattern(c_out, c_in, density, span, along_transpose, rng):
    """A canonical CSR weight (C_out, C_in) with round(density · width) entries in every row
    of W (or of Wᵀ with ``along_transpose``), their ids drawn without repeats from [0, span)."""
    import numpy as np
    import scipy.sparse as sp

    rows, width = (c_in, c_out) if along_transpose else (c_out, c_in)
    per_row = max(1, round(density * width))
    ids = np.concatenate([np.sort(rng.choice(span, per_row, replace=False)) for _ in range(rows)])
    owner = np.repeat(np.arange(rows), per_row)
    r, c = (ids, owner) if along_transpose else (owner, ids)
    w = sp.csr_array((rng.uniform(-1, 1, ids.size), (r, c)), shape=(c_out, c_in))
    w.sum_duplicates()  # sorts the indices; there are no duplicates to sum
    return w


def check(x, w, b, dy):
    """The kernels against the dense masked twin (float32, 1e-4 of the largest entry)."""
    from refsparse.kernels import spmm

    ref = dense_twin(x, w, b, dy)
    dx, dw, db = spmm.backward(dy, x, w)
    for mine, want in ((spmm.forward(x, w, b), ref["fwd"]), (dx, ref["dx"]), (dw, ref["dw"]),
                       (db, dy.sum(axis=0))):
        err = rel_err(mine, want)
        if err > 1e-4:
            raise AssertionError(f"kernel differs from the dense twin: relative error {err:.1e}")


def best_ms(fn, repeats):
    """The fastest of ``repeats`` calls, in ms."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * min(times)


def measure(shape, args):
    import numpy as np

    from refsparse.kernels import spmm

    c_out, c_in = shape
    rng = np.random.default_rng([c_out, c_in])
    x = rng.standard_normal((N_TOKENS, c_in)).astype(np.float32)
    dy = rng.standard_normal((N_TOKENS, c_out)).astype(np.float32)
    b = np.zeros(c_out, np.float32)
    spans = {"random": None, "confined": args.span, "floor": None}
    calls = {}
    for op, along_t in (("forward", False), ("backward", True)):
        full = c_out if along_t else c_in
        for kind, span in spans.items():
            density = 0.0 if kind == "floor" else args.density
            if span is not None and round(density * full) > span:
                continue  # a row's entries do not fit in S ids: no confined pattern of this size
            w = pattern(c_out, c_in, density, span or full, along_t, rng)
            w.data = w.data.astype(np.float32)
            check(x, w, b, dy)
            if op == "forward":
                calls[(op, kind)] = (w.nnz, lambda w=w: spmm.forward(x, w, b))
            else:
                calls[(op, kind)] = (w.nnz, lambda w=w: spmm.backward(dy, x, w))
    for op in ("forward", "backward"):  # the comparison is fair only with as many entries on both sides
        if (op, "confined") in calls and calls[(op, "confined")][0] != calls[(op, "random")][0]:
            raise AssertionError(f"{op}: the confined pattern holds {calls[(op, 'confined')][0]} entries, "
                                 f"the random one {calls[(op, 'random')][0]}")
    times = {key: [] for key in calls}
    for _ in range(args.rounds):
        for key, (_, fn) in calls.items():
            times[key].append(best_ms(fn, args.repeats))
    out = []
    for op in ("forward", "backward"):
        med = {kind: statistics.median(times[(op, kind)]) for kind in spans if (op, kind) in times}
        out.append({"shape": shape, "op": op, "nnz": calls[(op, "random")][0], "ms": med,
                    "entries_ms": {k: med[k] - med["floor"] for k in ("random", "confined") if k in med}})
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--density", type=float, default=0.1, help="stored fraction of each row (default 0.1)")
    p.add_argument("--span", type=int, default=64, help="S, the ids a confined row draws from")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    import numba

    print(cpu_line())
    results, rows = [], []
    for shape in SHAPES:
        for r in measure(shape, args):
            results.append(r)
            ms, ent = r["ms"], r["entries_ms"]
            confined = "confined" in ms
            rows.append([f"{shape[0]}×{shape[1]}", r["op"], f"{r['nnz']:,}", f"{ms['random']:.2f}",
                         f"{ms['confined']:.2f}" if confined else "n/a", f"{ms['floor']:.2f}",
                         f"{ent['random']:.2f}", f"{ent['confined']:.2f}" if confined else "n/a",
                         f"{ent['random'] / ent['confined']:.2f}×" if confined else "n/a"])
    print(f"\nSparseLinear's kernels, float32, N = {N_TOKENS}, density {args.density}, "
          f"{numba.get_num_threads()} threads; confined rows draw from {args.span} ids; medians of "
          f"{args.rounds} rounds of each call's best of {args.repeats} (ms).\n")
    print(markdown_table(["W", "pass", "entries", "random", "confined", "floor", "entries: random",
                          "entries: confined", "locality could buy"], rows))
    print("\nwrote", write_json("spmm_locality.json", {"results": results, "args": vars(args),
                                                       "n_tokens": N_TOKENS, "env": environment()}))


if __name__ == "__main__":
    main()
