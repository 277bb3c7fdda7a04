"""One AdamW training step of a decoder-only LM: refsparse, dense and sparse, against PyTorch dense.

What is timed: one training step — zero_grad, forward, cross-entropy, backward, global-norm
clipping (1.0) and AdamW (lr 1e-3, weight decay 0.1) — on a fixed batch of the built-in
corpus, in these variants of refsparse (``--variants``):

- ``dense``: every weight dense, full causal attention (dense BLAS products);
- ``sparse90``: the attention projections and feed-forward layers 90% sparse (CSR
  ``SparseLinear``), uniform over those layers, at random positions — what
  ``refsparse train --sparsity 0.9`` starts from (its default method, static sparse
  training: ``refsparse.prune.sparsify(model, 0.9, criterion="random")``); embeddings,
  norms, biases and the tied output head stay dense. ``sparseNN`` gives NN% instead;
- ``local``: dense weights, causal local attention ``local:window=W`` through the sparse
  attention kernels, each query attending to itself and the W − 1 positions before it, with
  the shape's W (``localW`` sets W);
- ``sparse90+local``: both.

each against the same model in PyTorch, DENSE with full causal attention (the dense
refsparse model's initial weights copied into ``TorchDecoderLM``): the ratio column is
refsparse's ms/step ÷ torch dense's ms/step at the same shape and dtype.

Shapes (``--shapes``):

- ``default``: the model ``refsparse train`` trains by default (``TrainConfig``'s d_model,
  n_layers, n_heads, d_ff, seq_len and batch_size, read at run time), and its local window
  (``attention``'s ``local:window=W``; 32 if the default attention is another pattern);
- ``large``: 4 layers, d_model 512, 8 heads, d_ff 2048, T 1024, batch 4, local window 128;
- ``medium``: 4 layers, d_model 256, 4 heads, d_ff 1024, T 256, batch 16, window 64 (this
  script's only shape before the sparse variants).

Each library (and each refsparse variant) runs in its own process, warms up, then times
``--steps`` steps; this is repeated ``--rounds`` times, the processes taking turns to go first
(reversed order every other round), and the figure is the median over all rounds' steps (this
machine's speed drifts from minute to minute, so one round each can favour either side).

Checks, before timing: dense refsparse's first loss equals torch's (relative 1e-4 in float32,
1e-10 in float64: the same weights and batch); every refsparse variant's first loss on the
fast kernels equals the same model's loss on the reference path
(``refsparse.kernels.use("reference")``), to the same tolerances (torch, being dense,
cannot check the sparse variants). A failed check makes the script exit with status 1.

Peak RSS is each process's whole lifetime peak. The torch process also imports numba and
scipy and builds the refsparse model that it copies its weights from, about 120 MB of its
figure at the medium shape (measured: 218 MB after ``import torch``, 336 MB once the model is
built), so its column overstates torch's own memory by that much.

Run it as:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/train_step.py \\
        --shapes default large --variants dense sparse90 local sparse90+local --dtypes float32

Prints a markdown table per shape and dtype and writes bench/results/train_step.json:
``runs`` holds one record per (shape, variant, library, dtype), ``table`` the printed rows;
``shape``, ``results`` and ``checks`` keep the format of the dense-only script (dense
refsparse and torch at the first shape, and their first-loss checks), which the docs read.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    cpu_line,
    environment,
    markdown_table,
    peak_rss_mb,
    run_worker,
    warn_openblas_env,
    write_json,
)

from refsparse.cli import THREAD_ENV  # noqa: E402  (stdlib only: no thread starts here)


def shapes():
    """The named shapes: ``default`` is ``refsparse train``'s model, read from TrainConfig."""
    from refsparse.train import TrainConfig

    c = TrainConfig().flat()  # the flat keys of --set
    spec = c["attention"]  # the default run's window ("local:window=W")
    window = int(spec.split("window=")[1].split(",")[0]) if spec.startswith("local:window=") else 32
    return {
        "default": dict(n_layers=c["n_layers"], d_model=c["d_model"], n_heads=c["n_heads"], d_ff=c["d_ff"],
                        seq_len=c["seq_len"], batch=c["batch_size"], window=window),
        "medium": dict(n_layers=4, d_model=256, n_heads=4, d_ff=1024, seq_len=256, batch=16, window=64),
        "large": dict(n_layers=4, d_model=512, n_heads=8, d_ff=2048, seq_len=1024, batch=4, window=128),
    }


def parse_variant(name, shape):
    """``"dense"``, ``"sparseNN"``, ``"local"``/``"localW"`` or sparse and local joined by
    ``+`` -> {"name", "sparsity", "attention", "window"} (window None: full attention)."""
    sparsity, window = 0.0, None
    parts = name.split("+")
    for part in parts:
        m_sparse = re.fullmatch(r"sparse(\d+)", part)
        m_local = re.fullmatch(r"local(\d*)", part)
        if part == "dense" and len(parts) == 1:
            pass
        elif m_sparse and 0 < int(m_sparse.group(1)) < 100:
            sparsity = int(m_sparse.group(1)) / 100
        elif m_local and m_local.group(1) != "0":
            window = int(m_local.group(1)) if m_local.group(1) else int(shape["window"])
        else:
            raise ValueError(f"variant: expected 'dense', 'sparseNN' (0 < NN < 100), 'local', 'localW' "
                             f"(W ≥ 1) or a sparse and a local part joined by '+', got {name!r}")
    attention = "full" if window is None else f"local:window={window}"
    return {"name": name, "sparsity": sparsity, "attention": attention, "window": window}


def build(shape, dtype, sparsity=0.0, attention="full"):
    """The model (seed 0), then made sparse as ``refsparse train --sparsity s`` does, and a batch."""
    import numpy as np

    from refsparse.data import CharTokenizer, builtin_corpus, get_lm_batch
    from refsparse.models import DecoderLM, DecoderLMConfig
    from refsparse.prune import sparsify

    text = builtin_corpus()
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    cfg = DecoderLMConfig(vocab_size=tok.vocab_size, d_model=shape["d_model"], n_heads=shape["n_heads"],
                          n_layers=shape["n_layers"], d_ff=shape["d_ff"], max_len=shape["seq_len"],
                          dtype=dtype, attention=attention)
    model = DecoderLM(cfg, rng=np.random.default_rng(0))
    if sparsity > 0:
        # refsparse train's default method (static, refsparse.prune.methods.Static.setup) with
        # seed 0: uniform over the attention projections and feed-forward layers, random positions
        sparsify(model, sparsity, distribution="uniform", criterion="random", rng=np.random.default_rng(2))
    x, y = get_lm_batch(ids, shape["batch"], shape["seq_len"], np.random.default_rng(1))
    return model, x, y


def reference_loss(model, x, y):
    """The model's loss on the reference path (forward only; no parameter changes)."""
    import refsparse.kernels
    from refsparse import functional as F

    with refsparse.kernels.use("reference"):
        loss, _ = F.cross_entropy_forward(model.forward(x), y)
    return float(loss)


def _time_steps(step, steps, warmup):
    first = step()
    for _ in range(warmup - 1):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return first, times


def worker_refsparse(shape, dtype, variant, steps, warmup, check=True):
    """Time refsparse's step for one variant; with ``check``, first its reference-path loss."""
    from refsparse.optim import AdamW, clip_grad_norm
    from refsparse.prune import overall_sparsity

    model, x, y = build(shape, dtype, variant["sparsity"], variant["attention"])
    out = {}
    if check:
        t = time.perf_counter()
        out["reference_loss"] = reference_loss(model, x, y)
        out["reference_check_s"] = time.perf_counter() - t
    opt = AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)

    def step():
        model.zero_grad()
        loss = model.forward_backward(x, y)
        clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        return loss

    first, times = _time_steps(step, steps, warmup)
    return {"first_loss": first, "times_s": times, "parameters": model.num_parameters(),
            "weight_sparsity": overall_sparsity(model), **out}


def worker_torch(shape, dtype, steps, warmup):
    """Time torch's step: the dense model, full causal attention, refsparse's dense initial weights."""
    import torch

    from refsparse.interop.torch_models import TorchDecoderLM, copy_lm_to_torch

    model, x, y = build(shape, dtype)
    tmodel = TorchDecoderLM(model.config)
    copy_lm_to_torch(model, tmodel)
    del model
    tx, ty = torch.from_numpy(x), torch.from_numpy(y).reshape(-1)
    opt = torch.optim.AdamW(tmodel.parameters(), lr=1e-3, weight_decay=0.1)
    V = tmodel.config.vocab_size

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(tmodel(tx).reshape(-1, V), ty)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tmodel.parameters(), 1.0)
        opt.step()
        return loss.item()

    time.sleep(0.5)  # let any OpenBLAS threads from the set-up stop spinning
    first, times = _time_steps(step, steps, warmup)
    return {"first_loss": first, "times_s": times, "parameters": sum(p.numel() for p in tmodel.parameters()),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def _split_threads():
    """Over how many threads refsparse splits its big matrix products (1: BLAS threads them)."""
    from refsparse.kernels.parallel import num_threads

    return num_threads()


def worker(args):
    shape = json.loads(args.shape)
    if args.lib == "refsparse":
        variant = parse_variant(args.variant, shape)
        res = worker_refsparse(shape, args.dtype, variant, args.steps, args.warmup, check=args.check)
    else:
        variant = parse_variant("dense", shape)
        res = worker_torch(shape, args.dtype, args.steps, args.warmup)
    tokens = shape["batch"] * shape["seq_len"]
    med = statistics.median(res["times_s"])
    result = {"lib": args.lib, "dtype": args.dtype, "variant": variant["name"],
              "sparsity": variant["sparsity"], "attention": variant["attention"], **res,
              "median_ms": 1000 * med, "tokens_per_s": tokens / med, "peak_rss_mb": peak_rss_mb(),
              "env": environment(),
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
              "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
              "refsparse_split_threads": _split_threads() if args.lib == "refsparse" else None}
    with open(args.json, "w") as f:
        json.dump(result, f)


def _pool_rounds(runs, shape):
    """One process kind's rounds as one result: the median over all their timed steps."""
    times = [t for r in runs for t in r["times_s"]]
    med = statistics.median(times)
    tokens = shape["batch"] * shape["seq_len"]
    checked = next((r for r in runs if "reference_loss" in r), {})
    return {**runs[0], **{k: checked[k] for k in ("reference_loss", "reference_check_s") if k in checked},
            "times_s": times, "median_ms": 1000 * med, "tokens_per_s": tokens / med,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "round_median_ms": [r["median_ms"] for r in runs]}


def _rel(a, b):
    return abs(a - b) / abs(b)


def _parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", default=["default", "large"],
                   choices=["default", "medium", "large"],
                   help="model shapes (see the module docstring); default: default large")
    p.add_argument("--variants", nargs="+", default=["dense", "sparse90", "local", "sparse90+local"],
                   help="refsparse variants: dense, sparseNN, local (the shape's window), localW, and "
                        "sparseNN+local[W]; each against torch dense")
    p.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile, caches)")
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    p.add_argument("--rounds", type=int, default=3,
                   help="run each process this many times, alternating the order; the median is "
                        "over the timed steps of all rounds (this machine's speed drifts by 20%% "
                        "from minute to minute)")
    p.add_argument("--refsparse-blas-threads",
                   default=os.environ.get("OPENBLAS_NUM_THREADS", THREAD_ENV["OPENBLAS_NUM_THREADS"]),
                   help="OPENBLAS_NUM_THREADS for the refsparse process (default 1, as refsparse train)")
    p.add_argument("--refsparse-spincount",
                   default=os.environ.get("GOMP_SPINCOUNT", THREAD_ENV["GOMP_SPINCOUNT"]),
                   help="GOMP_SPINCOUNT for the refsparse process (default as refsparse train: "
                        "Numba's OpenMP threads spin briefly between kernels, then sleep)")
    p.add_argument("--refsparse-omp-wait-policy", default=os.environ.get("OMP_WAIT_POLICY"),
                   help="OMP_WAIT_POLICY for the refsparse process (default unset, as refsparse "
                        "train; passive ignores the spin count)")
    p.add_argument("--out", default=None,
                   help="where to write the JSON (default bench/results/train_step.json)")
    p.add_argument("--worker", choices=["refsparse", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--shape", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dtype", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    return p


def _measure(shape, dtype, variants, args):
    """Every round of torch dense and each refsparse variant at one shape and dtype, each in
    its own process, the order reversed every other round; the reference check in round 1."""
    jobs = [("torch", "dense")] + [("refsparse", v["name"]) for v in variants]
    done = {job: [] for job in jobs}
    for rnd in range(args.rounds):
        for lib, vname in (jobs if rnd % 2 == 0 else jobs[::-1]):
            print(f"round {rnd + 1}: {dtype} {lib} {vname} ...", file=sys.stderr)
            # refsparse as `refsparse train` runs it (refsparse.cli.THREAD_ENV): OpenBLAS on one
            # thread (refsparse splits the big products over its own threads), Numba on all
            # cores, its OpenMP threads spinning briefly between kernels, then asleep
            env = None
            wargs = [lib, "--shape", json.dumps(shape), "--dtype", dtype, "--steps", str(args.steps),
                     "--warmup", str(args.warmup)]
            if lib == "refsparse":
                env = {"OPENBLAS_NUM_THREADS": args.refsparse_blas_threads,
                       "GOMP_SPINCOUNT": args.refsparse_spincount}
                if args.refsparse_omp_wait_policy:
                    env["OMP_WAIT_POLICY"] = args.refsparse_omp_wait_policy
                wargs += ["--variant", vname] + (["--check"] if rnd == 0 else [])
            done[(lib, vname)].append(run_worker(__file__, wargs, env=env))
    return {job: _pool_rounds(done[job], shape) for job in jobs}


def _compare(pooled, variants, dtype):
    """Ratios to torch dense and the first-loss checks, stored in the refsparse records;
    returns the table rows and the checks."""
    theirs = pooled[("torch", "dense")]
    tol = 1e-10 if dtype == "float64" else 1e-4
    rows = [["torch", "dense", "full", f"{theirs['median_ms']:.1f}", f"{theirs['tokens_per_s']:,.0f}",
             f"{theirs['peak_rss_mb']:.0f}", "1.00×", "", f"first loss {theirs['first_loss']:.6f}"]]
    checks = []
    for v in variants:
        r = pooled[("refsparse", v["name"])]
        r["ratio_to_torch_dense"] = r["median_ms"] / theirs["median_ms"]
        # dense: the same weights as torch's; every variant: the same model on the reference path
        against = ([("torch", theirs["first_loss"])] if v["name"] == "dense" else []) \
            + [("reference", r["reference_loss"])]
        r["checks"] = []
        for name, loss in against:
            rel = _rel(r["first_loss"], loss)
            r["checks"].append({"dtype": dtype, "shape_name": r["shape_name"], "variant": v["name"],
                                "against": name, "first_loss_rel_diff": rel, "ok": rel <= tol})
        checks += r["checks"]
        rounds = " / ".join(f"{m / t:.2f}" for m, t in zip(r["round_median_ms"], theirs["round_median_ms"]))
        rows.append(["refsparse", f"{v['sparsity']:.0%} sparse" if v["sparsity"] else "dense", v["attention"],
                     f"{r['median_ms']:.1f}", f"{r['tokens_per_s']:,.0f}", f"{r['peak_rss_mb']:.0f}",
                     f"{r['ratio_to_torch_dense']:.2f}×", rounds,
                     ", ".join(f"vs {c['against']} {c['first_loss_rel_diff']:.1e}" for c in r["checks"])
                     + ("" if all(c["ok"] for c in r["checks"]) else " **MISMATCH**")])
    return rows, checks


def main(argv=None):
    p = _parser()
    args = p.parse_args(argv)
    if args.worker:
        args.lib = args.worker
        return worker(args)
    if args.steps < 1 or args.warmup < 1 or args.rounds < 1:
        p.error(f"--steps, --warmup, --rounds: expected each ≥ 1, got {args.steps}, {args.warmup}, "
                f"{args.rounds}")

    all_shapes = shapes()
    plan = {}  # shape name -> the parsed variants
    for sname in dict.fromkeys(args.shapes):
        shape = all_shapes[sname]
        try:
            plan[sname] = [parse_variant(v, shape) for v in dict.fromkeys(args.variants)]
        except ValueError as e:
            p.error(str(e))
        for v in plan[sname]:
            if v["window"] is not None and v["window"] >= shape["seq_len"]:
                print(f"warning: {v['name']} at shape {sname}: window {v['window']} ≥ T "
                      f"{shape['seq_len']}, so it is full causal attention run through the sparse "
                      f"kernels", file=sys.stderr)

    warn_openblas_env()
    print(cpu_line())
    runs, tables, checks = [], [], []
    for sname, variants in plan.items():
        s = all_shapes[sname]
        for dtype in args.dtypes:
            print(f"shape {sname}:", file=sys.stderr)
            pooled = _measure(s, dtype, variants, args)
            for r in pooled.values():
                r.update(shape_name=sname, shape=s)
            rows, found = _compare(pooled, variants, dtype)
            checks += found
            runs += pooled.values()
            tables.append({"shape_name": sname, "shape": s, "dtype": dtype,
                           "rows": [{"lib": r["lib"], "variant": r["variant"], "sparsity": r["sparsity"],
                                     "attention": r["attention"], "median_ms": r["median_ms"],
                                     "ratio_to_torch_dense": r.get("ratio_to_torch_dense", 1.0)}
                                    for r in pooled.values()]})
            wait = args.refsparse_omp_wait_policy
            wait_policy = f", OMP_WAIT_POLICY={wait}" if wait else ""
            print(f"\nDecoder-only LM training step, shape {sname}: {s['n_layers']} layers, d_model "
                  f"{s['d_model']}, {s['n_heads']} heads, d_ff {s['d_ff']}, T {s['seq_len']}, batch "
                  f"{s['batch']}, {dtype}, {pooled[('torch', 'dense')]['parameters']:,} parameters dense; "
                  f"median of {args.rounds} × {args.steps} steps ({args.rounds} round(s), each after "
                  f"{args.warmup} warm-up steps, the processes taking turns to go first), each in its own "
                  f"process; refsparse with OPENBLAS_NUM_THREADS={args.refsparse_blas_threads}, "
                  f"GOMP_SPINCOUNT={args.refsparse_spincount}"
                  f"{wait_policy}"
                  f" (Numba kernels and the split matrix "
                  f"products on all cores), torch dense with its defaults. Sparse weights: the attention "
                  f"projections and feed-forward layers, uniform, random positions; local: causal window "
                  f"(the query and the window − 1 positions before it).\n")
            print(markdown_table(["library", "weights", "attention", "ms/step", "tokens/s", "peak RSS (MB)",
                                  "ratio to torch dense", "÷ torch dense, round by round",
                                  "first-loss check (relative difference)"], rows))
    print(f"\nnumpy BLAS: {runs[0]['env'].get('blas')}")
    bad = [c for c in checks if not c["ok"]]
    for c in bad:
        print(f"MISMATCH: first loss of refsparse {c['variant']} at {c['shape_name']} {c['dtype']} against "
              f"{c['against']}: relative difference {c['first_loss_rel_diff']:.2e}", file=sys.stderr)
    # the dense-only script's format (read by scripts/plot_benchmarks.py and scripts/mkdocs_hooks.py):
    # dense refsparse and torch at the first shape, and their refsparse-vs-torch checks
    first = next(iter(plan))
    payload = {"shape": all_shapes[first],
               "results": [r for r in runs if r["shape_name"] == first and r["variant"] == "dense"],
               "checks": [c for c in checks if c["shape_name"] == first and c["against"] == "torch"],
               "runs": runs, "table": tables, "all_checks": checks,
               "args": {k: v for k, v in vars(args).items()
                        if k not in ("worker", "shape", "variant", "check", "dtype", "json", "out")}}
    if args.out is None:
        path = write_json("train_step.json", payload)
    else:
        path = args.out
        with open(path, "w") as f:
            json.dump(payload, f, indent=2)
    print(f"wrote {path}")
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    main()
