"""A sweep's results as tables (markdown, CSV) and plots, grouped over seeds.

A *cell* is the trials whose settings differ only in ``seed``. For each cell: n (the trials
done), the mean and the sample standard deviation (ddof = 1; "—" when n = 1) of the final
validation loss (nats per token over the whole validation split), bits per character, wall
time; the mean of the measured sparsity, stored entries, checkpoint size and tokens/s.

Wall time is the time of the trial's ``refsparse train`` (training, its own final evaluation
and the sample it prints), summed over the attempts since the trial last started from
scratch; tokens/s is the training loop's own figure (``metrics.jsonl``) in its last attempt.
Both depend on what else ran on the machine: they compare among trials run the same way.

    refsparse sweep report DIR   →  DIR/report.md, DIR/report.csv, DIR/loss_vs_sparsity.png,
                                    DIR/loss_vs_wall_time.png
"""

from __future__ import annotations

import csv
import io
import json
import math
import os

__all__ = ["plot_loss_vs_sparsity", "plot_loss_vs_wall_time", "summarize", "table_csv", "table_markdown",
           "write_report"]


def _mean_std(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    m = math.fsum(xs) / len(xs)
    if len(xs) < 2:
        return m, None
    return m, math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def summarize(records):
    """One row per cell (records grouped over ``seed``), in the order cells first appear.

    Each row: ``label`` (the cell's varying settings, without seed), ``n``, ``failed``,
    ``seeds``, and ``<metric>_mean`` / ``<metric>_std`` for val_loss, bits_per_char,
    wall_s, and ``<metric>_mean`` for sparsity, stored, stored_sparse, checkpoint_bytes,
    tokens_per_s; ``config``: one trial's full training config (for the plots).
    """
    cells = {}
    for r in records:
        label = {k: v for k, v in (r.get("label") or {}).items() if k != "seed"}
        key = json.dumps(label, sort_keys=True)
        cells.setdefault(key, {"label": label, "done": [], "failed": 0})
        if r.get("status") == "done":
            cells[key]["done"].append(r)
        else:
            cells[key]["failed"] += 1
    rows = []
    for cell in cells.values():
        done = cell["done"]
        row = {"label": cell["label"], "n": len(done), "failed": cell["failed"],
               "seeds": sorted({(r.get("settings") or {}).get("seed", (r.get("config") or {}).get("seed"))
                                for r in done}, key=str),
               "config": next((r.get("config") for r in done if r.get("config")), None)}
        for m in ("val_loss", "bits_per_char", "wall_s"):
            row[m + "_mean"], row[m + "_std"] = _mean_std([r.get(m) for r in done])
        for m in ("sparsity", "stored", "stored_sparse", "checkpoint_bytes", "tokens_per_s"):
            row[m + "_mean"] = _mean_std([r.get(m) for r in done])[0]
        rows.append(row)
    return rows


def _label_keys(rows):
    return list(dict.fromkeys(k for r in rows for k in r["label"]))


def _pm(m, s, digits=4):
    if m is None:
        return "—"
    return f"{m:.{digits}f} ± " + ("—" if s is None else f"{s:.{digits}f}")


def _fmt(v):
    if isinstance(v, float):
        return f"{v:g}"
    return "—" if v is None else str(v)


def table_markdown(rows):
    """The cells as a markdown table: mean ± std (ddof 1) over seeds and n per cell."""
    keys = _label_keys(rows)
    head = keys + ["n", "val loss", "bits/char", "measured sparsity", "stored", "checkpoint MB", "wall s",
                   "tokens/s"]
    if any(r["failed"] for r in rows):
        head.append("failed")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [_fmt(r["label"].get(k)) for k in keys]
        if "method" in keys and r["label"].get("sparsity", None) == 0:
            cells[keys.index("method")] = "dense"  # a method without sparsity trains a dense model
        cells += [str(r["n"]), _pm(r["val_loss_mean"], r["val_loss_std"]),
                  _pm(r["bits_per_char_mean"], r["bits_per_char_std"], 3),
                  "—" if r["sparsity_mean"] is None else f"{r['sparsity_mean']:.3f}",
                  "—" if r["stored_mean"] is None else f"{r['stored_mean']:,.0f}",
                  "—" if r["checkpoint_bytes_mean"] is None else f"{r['checkpoint_bytes_mean'] / 1e6:.2f}",
                  _pm(r["wall_s_mean"], r["wall_s_std"], 0),
                  "—" if r["tokens_per_s_mean"] is None else f"{r['tokens_per_s_mean']:,.0f}"]
        if "failed" in head:
            cells.append(str(r["failed"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


CSV_METRICS = ["val_loss_mean", "val_loss_std", "bits_per_char_mean", "bits_per_char_std", "sparsity_mean",
               "stored_mean", "stored_sparse_mean", "checkpoint_bytes_mean", "wall_s_mean", "wall_s_std",
               "tokens_per_s_mean"]


def table_csv(rows):
    """The cells as CSV, full precision (empty where undefined)."""
    keys = _label_keys(rows)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(keys + ["n", "failed", "seeds"] + CSV_METRICS)
    for r in rows:
        w.writerow([r["label"].get(k, "") for k in keys] + [r["n"], r["failed"],
                   " ".join(map(str, r["seeds"]))] + ["" if r[m] is None else repr(r[m]) for m in CSV_METRICS])
    return out.getvalue()


def _series(rows):
    """Cells grouped into lines: every varying setting but sparsity (and seed) names a line."""
    lines = {}
    for r in rows:
        if r["n"] == 0:
            continue
        cfg = r["config"] or {}
        name = {k: v for k, v in r["label"].items() if k != "sparsity"}
        sparsity = r["label"].get("sparsity", cfg.get("sparsity", 0.0))
        if not sparsity:
            name.pop("method", None)  # a dense model has no method
            name = {"dense": True, **name}
        key = ", ".join("dense" if k == "dense" else f"{k}={_fmt(v)}" for k, v in name.items()) or "all"
        lines.setdefault(key, []).append((sparsity, r))
    return lines


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'refsparse[plot]' (or pip install matplotlib)") \
            from None
    return plt


def plot_loss_vs_sparsity(rows, output, *, title=None):
    """Validation loss against sparsity, one line per method, error bars ±1 std over seeds.

    Dense cells (sparsity 0) are a horizontal dashed line with a ±1 std band.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (name, pts) in enumerate(_series(rows).items()):
        pts.sort(key=lambda p: p[0])
        ys = [r["val_loss_mean"] for _, r in pts]
        es = [r["val_loss_std"] or 0.0 for _, r in pts]
        n = ", ".join(sorted({str(r["n"]) for _, r in pts}))
        if all(s == 0 for s, _ in pts):
            m, e = ys[0], es[0]
            ax.axhline(m, color="k", ls="--", lw=1, label=f"{name} (n={n})")
            ax.axhspan(m - e, m + e, color="k", alpha=0.1, lw=0)
            continue
        ax.errorbar([s for s, _ in pts], ys, yerr=es, marker="o", capsize=3, label=f"{name} (n={n})")
    ax.set_xlabel("sparsity of the sparse weights")
    ax.set_ylabel("final validation loss (nats / token)")
    ax.set_title(title or "validation loss against sparsity (mean ± 1 std over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output


def plot_loss_vs_wall_time(rows, output, *, title=None):
    """Final validation loss against wall time per cell, ±1 std over seeds on both axes."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, pts in _series(rows).items():
        xs = [r["wall_s_mean"] for _, r in pts]
        ax.errorbar(xs, [r["val_loss_mean"] for _, r in pts],
                    xerr=[r["wall_s_std"] or 0.0 for _, r in pts],
                    yerr=[r["val_loss_std"] or 0.0 for _, r in pts], ls="none", marker="o", capsize=3,
                    label=name)
        for s, r in pts:
            if s:
                ax.annotate(f"{s:g}", (r["wall_s_mean"], r["val_loss_mean"]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("wall time of a trial (s)")
    ax.set_ylabel("final validation loss (nats / token)")
    ax.set_title(title or "loss against wall time (labels: sparsity)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output


def write_report(directory, *, log=print):
    """Tables and plots of ``directory/results.jsonl``; returns the paths written.

    The tables need nothing beyond the standard library; without matplotlib the plots are
    skipped with a note.
    """
    from .run import RESULTS, read_results

    if not os.path.exists(os.path.join(directory, RESULTS)):
        raise ValueError(f"DIR: no {RESULTS} in {directory} (expected a sweep's directory)")
    records = list(read_results(directory).values())
    rows = summarize(records)
    commits = sorted({str(r["commit"]) for r in records if r.get("status") == "done" and r.get("commit")})
    done = sum(r.get("status") == "done" for r in records)
    md = (table_markdown(rows) + f"\n\n{done} trials done, {len(records) - done} failed; mean ± sample std "
          f"(ddof 1) over seeds; code at commit {', '.join(commits) or '?'}")
    paths = []
    for name, text in (("report.md", md + "\n"), ("report.csv", table_csv(rows))):
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write(text)
        paths.append(path)
    log(md)
    try:
        paths.append(plot_loss_vs_sparsity(rows, os.path.join(directory, "loss_vs_sparsity.png")))
        paths.append(plot_loss_vs_wall_time(rows, os.path.join(directory, "loss_vs_wall_time.png")))
    except ImportError as e:
        log(f"note: {e}: no plots")
    log("wrote " + ", ".join(paths))
    return paths
