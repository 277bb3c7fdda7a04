"""Sparsity sweep: the default language model trained dense and sparse, method by method.

Every run is ``refsparse train`` with the same settings (the defaults unless ``--steps``
or ``--set`` change them), the same seed and the same budget of steps; only the sparsity,
the method and the distribution change. Each run goes in a process of its own; ``--jobs
2`` runs two at once, each on one core (one BLAS thread and one Numba thread), so wall
times are comparable among the runs of one sweep, not with a lone ``refsparse train``.

For each run: the final validation loss (nats per character, on the whole validation
split), its ratio to the corpus's unigram entropy, the wall time of training, the stored
weights of the sparse layers, and the checkpoint's size (model + AdamW state).
Markdown table to stdout, JSON to ``bench/results/sparsity_sweep.json``, a plot to
``docs/img/sparsity_sweep.png`` (with matplotlib).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/sparsity_sweep.py --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import environment, markdown_table, run_worker, warn_openblas_env, write_json  # noqa: E402

SPARSITIES = [0.5, 0.8, 0.9, 0.95]
METHODS = ["static", "gmp", "set", "rigl"]


def worker(args):
    from refsparse.prune import sparse_layers
    from refsparse.train import TrainConfig, Trainer

    spec = json.loads(args.spec)
    with tempfile.TemporaryDirectory() as out_dir:
        cfg = TrainConfig(**spec, out_dir=out_dir, name="run")
        trainer = Trainer(cfg, progress=False, log=lambda *a: None)
        t0 = time.perf_counter()
        summary = trainer.run()
        wall = time.perf_counter() - t0
        size = os.path.getsize(summary["checkpoint"])
    layers = sparse_layers(trainer.model)
    stored = sum(m.nnz for _, m in layers)
    cells = sum(m.in_features * m.out_features for _, m in layers)
    result = {"spec": spec, "val_loss": summary["val_loss"],
              "unigram_entropy": summary["unigram_entropy"], "wall_s": wall,
              "checkpoint_bytes": size, "sparse_layers": len(layers), "stored": stored,
              "cells": cells, "rounds": summary.get("rounds")}
    with open(args.json, "w") as f:
        json.dump(result, f)


# settings a dense run ignores: a dense run with any of them is the same run
SPARSE_ONLY = {"method", "distribution", "erk_power_scale", "prune_begin", "prune_end",
               "prune_every", "update_every", "drop_fraction", "update_end", "imp_rounds",
               "imp_rewind", "imp_control"}


def _key(spec):
    """What identifies a run: its settings, without the sparse ones for a dense run."""
    if not spec.get("sparsity"):
        spec = {k: v for k, v in spec.items() if k not in SPARSE_ONLY and k != "sparsity"}
    return json.dumps(spec, sort_keys=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sparsities", type=float, nargs="+", default=SPARSITIES)
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--imp", type=float, nargs="*", default=[0.8],
                   help="sparsities at which to run iterative pruning (imp_rounds rounds, each "
                        "a whole budget: it costs (rounds + 1) runs)")
    p.add_argument("--distribution", default="uniform", choices=["uniform", "erk"])
    p.add_argument("--steps", type=int, default=None, help="steps per run (default: train's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other TrainConfig setting, as for refsparse train")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--reuse", metavar="JSON", action="append", default=[],
                   help="take every run whose settings match one in this earlier sweep's JSON "
                        "instead of training it again (same settings, seed and code give the same "
                        "losses); reused rows are marked † and keep that sweep's wall times; may "
                        "be given more than once")
    p.add_argument("--output", default="sparsity_sweep.json", help="file name under bench/results/")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    warn_openblas_env()

    base = {"seed": 0}
    if args.steps:
        base["steps"] = args.steps
    for item in args.set:
        k, v = item.split("=", 1)
        base[k] = json.loads(v) if v[:1] in "0123456789-[{" or v in ("true", "false") else v
    specs = [dict(base)]  # dense
    for s in args.sparsities:
        for m in args.methods:
            specs.append({**base, "sparsity": s, "method": m, "distribution": args.distribution})
    for s in args.imp:
        specs.append({**base, "sparsity": s, "method": "imp", "distribution": args.distribution})

    env = {"OPENBLAS_NUM_THREADS": "1"}
    if args.jobs > 1:
        env["NUMBA_NUM_THREADS"] = "1"
    script = os.path.abspath(__file__)

    def one(spec):
        r = run_worker(script, ["--spec", json.dumps(spec)], env=env)
        print(f"  {spec.get('method', 'dense'):>6} s={spec.get('sparsity', 0.0):<4}  val "
              f"{r['val_loss']:.4f}  {r['wall_s']:.0f} s", file=sys.stderr, flush=True)
        return r

    earlier = {}
    for path in args.reuse:
        with open(path) as f:
            for r in json.load(f)["results"]:  # marked: another sweep, maybe of other code
                earlier.setdefault(_key(r["spec"]), {**r, "reused_from": os.path.abspath(path)})
    reused = {i: earlier[_key(spec)] for i, spec in enumerate(specs) if _key(spec) in earlier}
    for i in reused:
        print(f"  {specs[i].get('method', 'dense'):>6} s={specs[i].get('sparsity', 0.0):<4}  "
              f"reused from an earlier sweep", file=sys.stderr)
    order = sorted((i for i in range(len(specs)) if i not in reused),
                   key=lambda i: specs[i].get("method") != "imp")  # the longest runs first
    todo = [specs[i] for i in order]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        trained = dict(zip(order, pool.map(one, todo)))
    results = [reused[i] if i in reused else trained[i] for i in range(len(specs))]
    total = time.perf_counter() - t0

    dense = results[0]
    rows = []
    for r in results:
        spec = r["spec"]
        s = spec.get("sparsity", 0.0)
        mark = " †" if "reused_from" in r else ""  # not trained by this sweep
        rows.append([(spec.get("method", "dense") if s else "dense") + mark, f"{s:.2f}",
                     f"{r['val_loss']:.4f}", f"{r['val_loss'] / r['unigram_entropy']:.3f}",
                     f"{r['wall_s']:.0f}", f"{r['stored']:,}" if r["sparse_layers"] else "—",
                     f"{r['checkpoint_bytes'] / 1e6:.2f}",
                     f"{r['checkpoint_bytes'] / dense['checkpoint_bytes']:.2f}"])
    table = markdown_table(["method", "sparsity", "val loss", "÷ entropy", "wall s",
                            "stored sparse weights", "checkpoint MB", "size ÷ dense"], rows)
    command = "python bench/sparsity_sweep.py " + " ".join(sys.argv[1:])
    print(table)
    print(f"\n{len(results) - len(reused)} runs trained in {total / 60:.1f} min; command: {command}")
    if reused:
        print(f"† {len(reused)} runs reused from {', '.join(args.reuse)}, not trained by this sweep: "
              "their wall times are another sweep's, and that sweep may have run other code")
    path = write_json(args.output, {"command": command, "results": results,
                                              "total_s": total, "env": environment()})
    print(f"wrote {path}")
    try:
        plot(results, args.output.replace(".json", ".png"))
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)


def plot(results, name="sparsity_sweep.png"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    dense = results[0]["val_loss"]
    ax.axhline(dense, color="k", lw=1, ls="--", label="dense")
    methods = sorted({r["spec"]["method"] for r in results[1:]}, key=(METHODS + ["imp"]).index)
    for m in methods:
        pts = sorted((r["spec"]["sparsity"], r["val_loss"]) for r in results[1:]
                     if r["spec"]["method"] == m)
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=m)
    ax.set_xlabel("sparsity of attention and feed-forward weights")
    ax.set_ylabel("validation loss (nats / char)")
    ax.set_title("Same budget, same seed: sparse training methods")
    ax.legend()
    fig.tight_layout()
    out = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "img",
                       name)
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
