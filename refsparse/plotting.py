"""Pictures: a run's loss curves (matplotlib, from the ``plot`` extra, imported lazily)."""

from __future__ import annotations

import json
import os


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "plotting needs matplotlib: pip install 'refsparse[plot]' (or pip install matplotlib)"
        ) from None
    return plt


def read_metrics(run_dir):
    """The records of ``RUN_DIR/metrics.jsonl`` as a list of dicts."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"run_dir: no metrics.jsonl in {run_dir}")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_run(run_dir, output=None):
    """Training and validation loss against step, written to a PNG; returns its path."""
    records = read_metrics(run_dir)
    plt = _pyplot()
    output = output or os.path.join(run_dir, "loss.png")
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], lw=1, label="train")
    val = [r for r in records if r.get("val_loss") is not None]
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_title(os.path.basename(os.path.normpath(run_dir)))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output


def draw_pattern(pattern, output, *, title=None):
    """Draw a pattern (or a per-head list, side by side) as black squares to a PNG.

    Entry (i, j) is black when query i (row, downwards) may attend to key j (column).
    """
    import numpy as np
    import scipy.sparse as sp

    plt = _pyplot()
    panels = [pattern] if sp.issparse(pattern) else list(pattern)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for h, (ax, p) in enumerate(zip(axes[0], panels)):
        ax.imshow(np.asarray(p.toarray(), dtype=float), cmap="Greys", vmin=0, vmax=1,
                  interpolation="nearest")
        nnz, rows = p.nnz, p.shape[0]
        label = f"head {h}: " if len(panels) > 1 else ""
        ax.set_title(f"{label}{nnz} entries, {nnz / max(rows, 1):.1f}/row", fontsize=9)
        ax.set_xlabel("key j")
        ax.set_ylabel("query i")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output
