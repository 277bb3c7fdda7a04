"""Pictures: a run's loss curves (matplotlib, from the ``plot`` extra, imported lazily)."""

from __future__ import annotations

import json
import os
import tempfile


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
    """The records of ``RUN_DIR/metrics.jsonl`` as a list of dicts (a torn last line is skipped)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"run_dir: no metrics.jsonl in {run_dir}")
    records = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a record cut short by a killed run
    return records


def save_figure(fig, output, dpi=120):
    """``fig.savefig(output)`` through a temporary file renamed over ``output``: a failed
    write (a full disk) leaves no empty or partial PNG behind. Returns ``output``."""
    directory = os.path.dirname(os.path.abspath(output))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, dpi=dpi, format="png")
        os.replace(tmp, output)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return output


def plot_run(run_dir, output=None):
    """Training loss, the validation estimates and the final full evaluation against step,
    written to a PNG; returns its path.

    The estimates (``"eval": "estimate"``: a few validation batches) are a line; the final
    loss on the whole validation set (``"eval": "final"``) is a star of its own, so the
    number the run printed is the one drawn last. Runs resumed after an interruption
    appear once (the trainer drops records past the checkpoint it resumes).
    """
    records = read_metrics(run_dir)
    train = [r for r in records if r.get("loss") is not None]
    if not train:
        raise ValueError(f"run_dir: {os.path.join(run_dir, 'metrics.jsonl')} holds no training "
                         "record; nothing to plot")
    plt = _pyplot()
    output = output or os.path.join(run_dir, "loss.png")
    fig, ax = plt.subplots(figsize=(7, 4))
    try:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, label="train")
        val = [r for r in train if r.get("val_loss") is not None]
        if val:
            ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-",
                    label="validation (estimate)")
        final = [r for r in records if r.get("eval") == "final"]
        if final:
            ax.plot([r["step"] for r in final], [r["final_val_loss"] for r in final], "*",
                    ms=14, color="C3", label="validation (final, whole set)")
            last = final[-1]
            ax.annotate(f"{last['final_val_loss']:.4f}", (last["step"], last["final_val_loss"]),
                        textcoords="offset points", xytext=(-10, 10), ha="right", fontsize=8)
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats)")
        ax.set_title(os.path.basename(os.path.normpath(run_dir)))
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        save_figure(fig, output)
    finally:
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
    try:
        save_figure(fig, output)
    finally:
        plt.close(fig)
    return output
