"""One AdamW training step of a decoder-only LM: refsparse against PyTorch CPU.

The model: 4 layers, d_model 256, 4 heads, d_ff 1024, T 256, batch 16, the built-in
corpus's vocabulary; the same initial weights and batch on both sides. One step is
zero_grad, forward, cross-entropy, backward, global-norm clipping and AdamW.

Each library runs in its own process, warms up, then times ``--steps`` steps; this is
repeated ``--rounds`` times with the libraries taking turns to go first, and the figure
is the median over all rounds' steps (this machine's speed drifts from minute to minute,
so one round each can favour either side). The script checks that both sides compute
the same first loss.

Peak RSS is each process's whole lifetime peak. The torch process also imports numba and
scipy and builds the refsparse model that it copies its weights from, about 120 MB of its
figure (measured: 218 MB after ``import torch``, 336 MB once the model is built), so its
column overstates torch's own memory by that much.

Run it as:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/train_step.py

Prints a markdown table and writes bench/results/train_step.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    environment,
    markdown_table,
    peak_rss_mb,
    run_worker,
    warn_openblas_env,
    write_json,
)

SHAPE = dict(n_layers=4, d_model=256, n_heads=4, d_ff=1024, seq_len=256, batch=16)


def build(dtype):
    import numpy as np

    from refsparse.data import CharTokenizer, builtin_corpus, get_lm_batch
    from refsparse.models import DecoderLM, DecoderLMConfig

    text = builtin_corpus()
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    cfg = DecoderLMConfig(vocab_size=tok.vocab_size, d_model=SHAPE["d_model"], n_heads=SHAPE["n_heads"],
                          n_layers=SHAPE["n_layers"], d_ff=SHAPE["d_ff"], max_len=SHAPE["seq_len"],
                          dtype=dtype)
    model = DecoderLM(cfg, rng=np.random.default_rng(0))
    x, y = get_lm_batch(ids, SHAPE["batch"], SHAPE["seq_len"], np.random.default_rng(1))
    return model, x, y


def worker_refsparse(dtype, steps, warmup):
    from refsparse.optim import AdamW, clip_grad_norm

    model, x, y = build(dtype)
    opt = AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)

    def step():
        model.zero_grad()
        loss = model.forward_backward(x, y)
        clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        return loss

    first = step()
    for _ in range(warmup - 1):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return first, times, model.num_parameters()


def worker_torch(dtype, steps, warmup):
    import torch

    from refsparse.interop.torch_models import TorchDecoderLM, copy_lm_to_torch

    model, x, y = build(dtype)
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
    first = step()
    for _ in range(warmup - 1):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    n = sum(p.numel() for p in tmodel.parameters())
    return first, times, n, {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def _split_threads():
    """Over how many threads refsparse splits its big matrix products (1: BLAS threads them)."""
    from refsparse.kernels.parallel import num_threads

    return num_threads()


def worker(args):
    extra = {}
    if args.lib == "refsparse":
        first, times, n = worker_refsparse(args.dtype, args.steps, args.warmup)
    else:
        first, times, n, extra = worker_torch(args.dtype, args.steps, args.warmup)
    tokens = SHAPE["batch"] * SHAPE["seq_len"]
    med = statistics.median(times)
    result = {"lib": args.lib, "dtype": args.dtype, "first_loss": first, "times_s": times,
              "median_ms": 1000 * med, "tokens_per_s": tokens / med, "peak_rss_mb": peak_rss_mb(),
              "parameters": n, "env": environment(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
              "refsparse_split_threads": _split_threads() if args.lib == "refsparse" else None, **extra}
    with open(args.json, "w") as f:
        json.dump(result, f)


def _pool_rounds(runs):
    """One library's rounds as one result: the median over all their timed steps."""
    times = [t for r in runs for t in r["times_s"]]
    med = statistics.median(times)
    tokens = SHAPE["batch"] * SHAPE["seq_len"]
    return {**runs[0], "times_s": times, "median_ms": 1000 * med, "tokens_per_s": tokens / med,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "round_median_ms": [r["median_ms"] for r in runs]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile, caches)")
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    p.add_argument("--rounds", type=int, default=3,
                   help="run each library this many times, alternating which goes first; the "
                        "median is over the timed steps of all rounds (this machine's speed "
                        "drifts by 20%% from minute to minute)")
    p.add_argument("--refsparse-blas-threads", default=os.environ.get("OPENBLAS_NUM_THREADS", "1"),
                   help="OPENBLAS_NUM_THREADS for the refsparse process (default 1, as refsparse train)")
    p.add_argument("--refsparse-omp-wait-policy", default=os.environ.get("OMP_WAIT_POLICY", "passive"),
                   help="OMP_WAIT_POLICY for the refsparse process (default passive: Numba's OpenMP "
                        "threads sleep between kernels instead of spinning for milliseconds)")
    p.add_argument("--worker", choices=["refsparse", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--lib", help=argparse.SUPPRESS)
    p.add_argument("--dtype", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.lib = args.worker
        return worker(args)

    warn_openblas_env()
    results = []
    for dtype in args.dtypes:
        runs = {"refsparse": [], "torch": []}
        for rnd in range(args.rounds):
            order = ("refsparse", "torch") if rnd % 2 == 0 else ("torch", "refsparse")
            for lib in order:
                print(f"round {rnd + 1}: {lib} {dtype} ...", file=sys.stderr)
                # refsparse as `refsparse train` runs it: OpenBLAS on one thread (refsparse
                # splits the big products over its own threads), Numba on all cores, and
                # Numba's OpenMP threads asleep between kernels instead of spinning into
                # the next product
                env = {"OPENBLAS_NUM_THREADS": args.refsparse_blas_threads,
                       "OMP_WAIT_POLICY": args.refsparse_omp_wait_policy} if lib == "refsparse" else None
                runs[lib].append(run_worker(__file__, [lib, "--dtype", dtype, "--steps", str(args.steps),
                                                       "--warmup", str(args.warmup)], env=env))
        for lib in ("refsparse", "torch"):
            results.append(_pool_rounds(runs[lib]))
    rows = []
    checks = []
    for dtype in args.dtypes:
        mine = next(r for r in results if r["lib"] == "refsparse" and r["dtype"] == dtype)
        theirs = next(r for r in results if r["lib"] == "torch" and r["dtype"] == dtype)
        rel = abs(mine["first_loss"] - theirs["first_loss"]) / abs(theirs["first_loss"])
        tol = 1e-10 if dtype == "float64" else 1e-4
        checks.append({"dtype": dtype, "first_loss_rel_diff": rel, "ok": rel <= tol})
        for r in (mine, theirs):
            rows.append([r["lib"], dtype, f"{r['median_ms']:.1f}", f"{r['tokens_per_s']:,.0f}",
                         f"{r['peak_rss_mb']:.0f}",
                         f"{r['median_ms'] / theirs['median_ms']:.2f}×",
                         " / ".join(f"{m / t:.2f}" for m, t in zip(mine["round_median_ms"],
                                                                   theirs["round_median_ms"]))])
    print(f"\nDecoder-only LM training step: {SHAPE['n_layers']} layers, d_model {SHAPE['d_model']}, "
          f"{SHAPE['n_heads']} heads, T {SHAPE['seq_len']}, batch {SHAPE['batch']}, "
          f"{results[0]['parameters']:,} parameters; median of {args.rounds} × {args.steps} steps "
          f"({args.rounds} rounds, each after {args.warmup} warm-up steps, the libraries taking turns "
          f"to go first), each library in its own process; refsparse with OPENBLAS_NUM_THREADS="
          f"{args.refsparse_blas_threads} and OMP_WAIT_POLICY={args.refsparse_omp_wait_policy} "
          f"(Numba kernels and the split matrix products on all cores), torch with its defaults.\n")
    print(markdown_table(["library", "dtype", "ms/step", "tokens/s", "peak RSS (MB)",
                          "ratio to torch", "refsparse ÷ torch, round by round"], rows))
    for c in checks:
        print(f"\nfirst-step loss, refsparse vs torch, {c['dtype']}: relative difference "
              f"{c['first_loss_rel_diff']:.2e} ({'ok' if c['ok'] else 'MISMATCH'})")
    blas = results[0]["env"].get("blas")
    print(f"\nnumpy BLAS: {blas}")
    path = write_json("train_step.json", {"shape": SHAPE, "results": results, "checks": checks})
    print(f"wrote {path}")
    if not all(c["ok"] for c in checks):
        sys.exit(1)


if __name__ == "__main__":
    main()
