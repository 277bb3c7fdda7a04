"""Train the default language model at T = 256 with dense and with sparse attention.

The network of ``refsparse train`` with dense weights (``sparsity=0``, as ``--dense``), so
that only the attention differs. Same data, seed, steps and batch for every run; only
``--attention`` differs. Prints the
final validation loss of each and its ratio to the dense model's, and writes
bench/results/attention_training.json. Run:

    python bench/attention_training.py            # ~10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import cpu_line, environment, markdown_table, write_json  # noqa: E402

SPECS = ["full", "local:window=32", "strided:stride=16"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--specs", nargs="+", default=SPECS)
    p.add_argument("--out-dir", default="/tmp/refsparse-attention-training")
    args = p.parse_args()

    from refsparse.train import TrainConfig, Trainer

    rows, results = [], []
    for spec in args.specs:
        cfg = TrainConfig(attention=spec, seq_len=args.seq_len, batch_size=args.batch_size, steps=args.steps,
                          eval_every=args.steps, out_dir=args.out_dir, name=spec.replace(":", "_"),
                          sparsity=0.0, method="static")  # dense weights: only the attention differs
        t = time.perf_counter()
        summary = Trainer(cfg, progress=False, log=lambda *a: None).run()
        summary["wall_s"] = time.perf_counter() - t
        summary["attention"] = spec
        results.append(summary)
        print(f"{spec}: val loss {summary['val_loss']:.4f} in {summary['wall_s']:.0f} s", file=sys.stderr)
    dense = next((r["val_loss"] for r in results if r["attention"] == "full"), None)
    for r in results:
        rows.append([r["attention"], f"{r['val_loss']:.4f}", f"{r['bits_per_char']:.3f}",
                     f"{r['val_loss'] / dense:.3f}" if dense else "—", f"{r['wall_s']:.0f}"])
    print(f"\n{cpu_line()}\nDecoder-only LM (TrainConfig defaults, dense weights), T = {args.seq_len}, "
          f"batch {args.batch_size}, "
          f"{args.steps} steps, the built-in corpus; validation loss after training.\n")
    print(markdown_table(["attention", "val loss (nats)", "bits/char", "ratio to dense", "wall s"], rows))
    print("\nwrote", write_json("attention_training.json", {"runs": results, "args": vars(args),
                                                          "env": environment()}))


if __name__ == "__main__":
    main()
