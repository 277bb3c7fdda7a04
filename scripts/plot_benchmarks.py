"""Draw the benchmarks' results (bench/results/*.json) as PNGs for the docs' benchmarks page.

    python scripts/plot_benchmarks.py                                  # -> docs/img/bench/*.png
    python scripts/plot_benchmarks.py --results DIR --out DIR

One function per benchmark, each drawing one PNG from the JSON its script wrote:

- attention.png            ms of forward + backward against T (log-log), refsparse's patterns,
                           dense NumPy and torch SDPA, float32 solid and float64 dashed; beside
                           it, refsparse's extra memory against T, with one dense T × T float32
                           matrix as the reference line;
- sparse_linear.png        float32 forward + backward ms against sparsity, a panel per weight
                           shape, a line per library;
- train_step.png           ms per AdamW step, refsparse against torch, float32 and float64;
- attention_training.png   the loss curves of each attention pattern, or (when the JSON holds
                           only the end of each run) the final losses as bars.

The plots read only what the JSON holds (any set of T, sparsities, libraries, dtypes): a
missing file, or a key a plot needs, skips that plot with a message; it never stops the
others. bench/sparsity_sweep.py draws its own plot (docs/img/sparsity_sweep.png). Needs
matplotlib (the ``plot`` extra: ``pip install -e ".[plot]"``); draws with the Agg backend.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "bench", "results")
OUT_DIR = os.path.join(ROOT, "docs", "img", "bench")
DPI = 110
# Sizes for the docs' text column (~690 px at a 1280 px window): a plot is at most 8.6 in (946 px)
# wide, so it is shown at >= 0.73 of its size and 10 pt legends read at >= 11 px; a click on it
# opens it full size.
LEGEND_PT = 10
TITLE_PT = 11


class Skip(Exception):
    """The results hold nothing this plot can draw; the message says why."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
    return path


def _rows(data, key):
    """Flatten ``data["results"][i][key]`` into rows that carry their parent's lib and dtype."""
    rows = []
    for res in data["results"]:
        for row in res.get(key, []):
            rows.append({"lib": res["lib"], "dtype": res["dtype"], **row})
    return rows


def _log_y(ax):
    """A log y axis labelled with plain numbers (1,000 rather than 10³), with more ticks when
    the data span few decades. Call it after plotting, when the limits are known."""
    import math

    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    decades = math.log10(hi / lo)
    subs = (1.0,) if decades > 3 else (1.0, 2.0, 5.0) if decades > 1 else (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)
    ax.yaxis.set_major_locator(LogLocator(subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:,.0f}" if y >= 10 else f"{y:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _legend_below(ax, ncol=1):
    """The legend under the axes, where it hides no point whatever the data."""
    return ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol, fontsize=LEGEND_PT, frameon=False)


# ---------------------------------------------------------------------------------------------
# attention.json: {"results": [{"lib", "dtype", "rows": [{"T", "pattern", "fwd_bwd_ms",
#                  "extra_mb"?, "rss_extra_mb"?}]}]}


def _attention_series(rows):
    """Group rows into lines: one per (lib, pattern kind); refsparse's strided pattern changes
    its stride with T (stride ≈ √T), so its rows share a line under the kind "strided"."""
    series = {}
    for r in rows:
        kind = r["pattern"].split(":")[0] if r["lib"] == "refsparse" else r["pattern"]
        series.setdefault((r["lib"], kind), []).append(r)
    labels = {}
    for (lib, kind), rs in series.items():
        names = sorted({r["pattern"] for r in rs}, key=lambda n: next(r["T"] for r in rs if r["pattern"] == n))
        if len(names) == 1:
            labels[(lib, kind)] = f"{lib}: {names[0]}"
        else:  # e.g. "refsparse: strided (stride=23 … 128)"
            labels[(lib, kind)] = f"{lib}: {kind} ({names[0].split(':', 1)[-1]} … {names[-1].split('=')[-1]})"
    return series, labels


def _log2_T_axis(ax, Ts):
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log", base=2)
    ax.set_xticks(Ts)
    ax.set_xticklabels([str(T) for T in Ts])
    ax.xaxis.set_minor_formatter(NullFormatter())
    if len(Ts) == 1:  # one T: give the lone point some room
        ax.set_xlim(Ts[0] / 2, Ts[0] * 2)
    ax.set_xlabel("sequence length T")


def plot_attention(data, path):
    """Forward + backward ms against T per library and pattern; extra memory against T."""
    from matplotlib.lines import Line2D

    plt = _pyplot()
    rows = [r for r in _rows(data, "rows") if "fwd_bwd_ms" in r and "T" in r]
    if not rows:
        raise Skip("no rows with T and fwd_bwd_ms")
    Ts = sorted({r["T"] for r in rows})
    dtypes = sorted({r["dtype"] for r in rows})
    styles = {d: ("--" if d == "float64" else "-") for d in dtypes}
    mem_dtype = "float32" if "float32" in dtypes else dtypes[0]
    mem_rows = [r for r in rows if r["lib"] == "refsparse" and r["dtype"] == mem_dtype and "extra_mb" in r]

    series, labels = _attention_series(rows)
    colors = {key: f"C{i}" for i, key in enumerate(series)}
    fig, axes = plt.subplots(1, 2 if mem_rows else 1, figsize=(8.6, 5.6) if mem_rows else (6.4, 5.2),
                             squeeze=False)
    ax = axes[0, 0]
    for key, rs in series.items():
        for dtype in dtypes:
            pts = sorted((r["T"], r["fwd_bwd_ms"]) for r in rs if r["dtype"] == dtype)
            if pts:
                ax.plot([T for T, _ in pts], [ms for _, ms in pts], marker="o", ls=styles[dtype], color=colors[key])
    _log2_T_axis(ax, Ts)
    _log_y(ax)
    ax.set_ylabel("forward + backward (ms, median)")
    ax.set_title(f"Attention, {data.get('H', '?')} heads × d_head {data.get('D', '?')}, batch 1", fontsize=TITLE_PT)
    ax.grid(alpha=0.3, which="both")
    # the legend: a colour per line, then a line style per dtype
    handles = [Line2D([], [], color=colors[key], marker="o", label=labels[key]) for key in series]
    handles += [Line2D([], [], color="0.3", ls=styles[d], label=d) for d in dtypes]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=LEGEND_PT,
              frameon=False, ncol=1)

    if mem_rows:
        ax = axes[0, 1]
        mem_series, mem_labels = _attention_series(mem_rows)
        for key, rs in mem_series.items():
            pts = sorted((r["T"], r["extra_mb"]) for r in rs)
            ax.plot([T for T, _ in pts], [mb for _, mb in pts], marker="o", color=colors[key],
                    label=f"{mem_labels[key]} (tracemalloc)")
            rss = sorted((r["T"], r["rss_extra_mb"]) for r in rs if r.get("rss_extra_mb") is not None)
            if rss:
                ax.plot([T for T, _ in rss], [mb for _, mb in rss], marker="s", ls=":", color=colors[key],
                        label=f"{mem_labels[key]} (peak-RSS growth)")
        # the reference the benchmark's table uses: one dense T × T float32 matrix (one head's scores)
        ax.plot(Ts, [4 * T * T / 2**20 for T in Ts], "k--", marker="x", label="one dense T×T float32 matrix")
        _log2_T_axis(ax, Ts)
        _log_y(ax)
        ax.set_ylabel("memory beyond inputs and outputs (MB)")
        ax.set_title(f"refsparse's extra memory, fwd + bwd\n({mem_dtype}, all heads)", fontsize=TITLE_PT)
        ax.grid(alpha=0.3, which="both")
        _legend_below(ax)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# sparse_linear.json: {"results": [{"lib", "dtype", "records": [{"shape", "sparsity", "op",
#                      "median_ms"}]}], "breakeven_sparsity"?: {"float32 2048×512": s}}

LIB_ORDER = ["refsparse", "numpy", "scipy", "torch"]


def _fwd_bwd_ms(recs):
    """{sparsity: ms} of forward + backward, and how it was made: the lib's own "fwd+bwd" op,
    or the sum of the ops it timed apart (torch: fwd + dX + dW; scipy has no dW)."""
    by = {}
    for r in recs:
        by.setdefault(r["sparsity"], {})[r["op"]] = r["median_ms"]
    if all("fwd+bwd" in ops for ops in by.values()):
        return {s: ops["fwd+bwd"] for s, ops in by.items()}, ""
    parts = [op for op in ("fwd", "dx", "dw") if all(op in ops for ops in by.values())]
    if not parts:
        return {}, ""
    names = {"fwd": "fwd", "dx": "dX", "dw": "dW"}
    how = " + ".join(names[op] for op in parts) + (" timed apart" if "dw" in parts else " only, no dW")
    return {s: sum(ops[op] for op in parts) for s, ops in by.items()}, how


def _sparsity_axis(ax, sparsities):
    """x = sparsity, spaced by -log10(density): 0, 0.9 and 0.99 are equally far apart."""
    import numpy as np

    def forward(s):
        return -np.log10(1 - np.minimum(s, 0.9999))

    def inverse(x):
        return 1 - 10.0 ** (-np.asarray(x))

    ax.set_xscale("function", functions=(forward, inverse))
    lo, hi = forward(min(sparsities)), forward(max(sparsities))
    pad = 0.06 * max(hi - lo, 1.0)
    ax.set_xlim(inverse(lo - pad), inverse(hi + pad))
    ax.set_xticks(sparsities)
    ax.set_xticklabels([f"{s:g}" for s in sparsities], fontsize=9)
    ax.set_xlabel("sparsity of W (fraction of zero weights)")


def plot_sparse_linear(data, path, dtype="float32"):
    """Forward + backward ms against sparsity, a panel per weight shape, a line per library."""
    plt = _pyplot()
    recs = [r for r in _rows(data, "records") if r["dtype"] == dtype and "median_ms" in r]
    if not recs:
        raise Skip(f"no {dtype} records with median_ms")
    shapes = list(dict.fromkeys(tuple(r["shape"]) for r in recs))
    sparsities = sorted({r["sparsity"] for r in recs})
    libs = sorted({r["lib"] for r in recs}, key=lambda lib: (LIB_ORDER + [lib]).index(lib))
    breakeven = data.get("breakeven_sparsity") or {}
    fig, axes = plt.subplots(1, len(shapes), figsize=(min(4.3 * len(shapes), 8.6), 5.4),
                             squeeze=False, sharey=True)
    handles = {}
    for ax, shape in zip(axes[0], shapes):
        for i, lib in enumerate(libs):
            ms, how = _fwd_bwd_ms([r for r in recs if r["lib"] == lib and tuple(r["shape"]) == shape])
            if not ms:
                continue
            label = f"{lib} ({how})" if how else lib
            if list(ms) == [0.0] and len(sparsities) > 1:  # a dense baseline, timed once: a level line
                line = ax.axhline(next(iter(ms.values())), color=f"C{i}", ls="--", label=f"{label}, dense W")
            else:
                pts = sorted(ms.items())
                (line,) = ax.plot([s for s, _ in pts], [m for _, m in pts], marker="o", color=f"C{i}",
                                  ls=":" if "no dW" in how else "-", label=label)
            handles.setdefault(line.get_label(), line)
        title = f"W {shape[0]}×{shape[1]} (out × in), {data.get('n_tokens', '?')} rows of x"
        s_even = breakeven.get(f"{dtype} {shape[0]}×{shape[1]}")
        if s_even is not None:  # where refsparse's fwd+bwd meets dense numpy's
            ax.axvline(s_even, color="0.5", ls="-.", lw=1)
            title += f"\nbreak-even with dense numpy: {s_even:.2f} (dash-dot)"
        _sparsity_axis(ax, sparsities)
        _log_y(ax)
        ax.set_title(title, fontsize=LEGEND_PT)
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].set_ylabel(f"forward + backward (ms, median, {dtype})")
    fig.suptitle("SparseLinear: y = x Wᵀ + b and its backward, against the sparsity of W", fontsize=TITLE_PT)
    fig.legend(handles=list(handles.values()), loc="lower center", ncol=2, fontsize=LEGEND_PT, frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))  # room for the legend below the panels
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# train_step.json: {"shape": {...}, "results": [{"lib", "dtype", "median_ms"}]}


def _train_step_variants(data, path):
    """One panel per shape: torch dense and each refsparse variant, labelled with ms and the
    ratio to torch dense (the first dtype measured)."""
    plt = _pyplot()
    runs = [r for r in data["runs"] if "median_ms" in r]
    dtype = runs[0]["dtype"]
    names = list(dict.fromkeys(r["shape_name"] for r in runs))
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        rows = [r for r in runs if r["shape_name"] == name and r["dtype"] == dtype]
        torch_ms = next((r["median_ms"] for r in rows if r["lib"] == "torch"), None)
        labels = [("torch " if r["lib"] == "torch" else "") + r["variant"] for r in rows]
        ms = [r["median_ms"] for r in rows]
        colors = ["C1" if r["lib"] == "torch" else "C0" for r in rows]
        bars = ax.bar(range(len(rows)), ms, 0.7, color=colors)
        text = [f"{m:,.0f} ms" + (f"\n{m / torch_ms:.2f}×" if torch_ms and r["lib"] != "torch" else "")
                for m, r in zip(ms, rows)]
        ax.bar_label(bars, labels=text, fontsize=LEGEND_PT, padding=2)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=LEGEND_PT)
        s = rows[0]["shape"]
        ax.set_title(f"{name}: {s['n_layers']} layers, d_model {s['d_model']}, T {s['seq_len']}, "
                     f"batch {s['batch']}", fontsize=TITLE_PT)
        ax.margins(y=0.18)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel(f"one training step, {dtype} (ms, median; lower is better)")
    return _save(fig, path)


def plot_train_step(data, path):
    """ms per training step: with the sparse variants, a panel per shape and a bar per variant
    (`_train_step_variants`); else bars per dtype, a bar per library, each labelled with its ms."""
    if any("shape_name" in r for r in data.get("runs", [])):
        return _train_step_variants(data, path)
    plt = _pyplot()
    res = [r for r in data["results"] if "median_ms" in r]
    if not res:
        raise Skip("no results with median_ms")
    dtypes = sorted({r["dtype"] for r in res})
    libs = sorted({r["lib"] for r in res}, key=lambda lib: (LIB_ORDER + [lib]).index(lib))
    width = 0.8 / len(libs)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, lib in enumerate(libs):
        xs, ms = [], []
        for j, dtype in enumerate(dtypes):
            for r in res:
                if r["lib"] == lib and r["dtype"] == dtype:
                    xs.append(j + (i - (len(libs) - 1) / 2) * width)
                    ms.append(r["median_ms"])
        bars = ax.bar(xs, ms, width, color=f"C{i}", label=lib)
        ax.bar_label(bars, labels=[f"{m:,.0f} ms" for m in ms], fontsize=LEGEND_PT, padding=2)
    ax.set_xticks(range(len(dtypes)))
    ax.set_xticklabels(dtypes)
    ax.set_ylabel("one training step (ms, median; lower is better)")
    ax.margins(y=0.12)
    s = data.get("shape") or {}
    if s:
        ax.set_title(f"One AdamW step: {s.get('n_layers')} layers, d_model {s.get('d_model')}, "
                     f"T {s.get('seq_len')}, batch {s.get('batch')}", fontsize=TITLE_PT)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=LEGEND_PT)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# attention_training.json: {"runs": [{"attention", "val_loss", "train_loss", ...,
#                            a loss curve "history"?: [{"step", "loss", "val_loss"?}]}]}


def _curve(run):
    """A run's loss curve as (steps, losses), if it holds one: a list of records with "step"
    and "loss" (or "train_loss"), under any key."""
    for value in run.values():
        if isinstance(value, list) and value and all(isinstance(x, dict) and "step" in x for x in value):
            key = "loss" if "loss" in value[0] else "train_loss" if "train_loss" in value[0] else None
            if key:
                pts = [(x["step"], x[key]) for x in value if x.get(key) is not None]
                return [p for p, _ in pts], [v for _, v in pts]
    return None


def plot_attention_training(data, path):
    """The loss curve of each attention pattern, or else the final losses as bars."""
    plt = _pyplot()
    runs = [r for r in data["runs"] if "attention" in r]
    curves = {r["attention"]: _curve(r) for r in runs if _curve(r)}
    finals = [r for r in runs if r.get("val_loss") is not None or r.get("train_loss") is not None]
    if not curves and not finals:
        raise Skip("no loss curves or final losses in 'runs'")
    args = data.get("args") or {}
    setting = f"T {args.get('seq_len', '?')}, batch {args.get('batch_size', '?')}, {args.get('steps', '?')} steps"
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if curves:
        for name, (steps, losses) in curves.items():
            ax.plot(steps, losses, lw=1, label=name)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (nats / char)")
    else:
        names = [r["attention"] for r in finals]
        width = 0.38
        for i, (key, label) in enumerate([("train_loss", "train (last batch)"), ("val_loss", "validation")]):
            xs = [j + (i - 0.5) * width for j, r in enumerate(finals) if r.get(key) is not None]
            ys = [r[key] for r in finals if r.get(key) is not None]
            if ys:
                bars = ax.bar(xs, ys, width, color=f"C{i}", label=label)
                ax.bar_label(bars, labels=[f"{y:.3f}" for y in ys], fontsize=LEGEND_PT, padding=2)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, fontsize=LEGEND_PT)
        ax.set_xlabel("attention pattern")
        ax.set_ylabel("loss after training (nats / char)")
    entropy = next((r["unigram_entropy"] for r in runs if r.get("unigram_entropy")), None)
    if entropy:
        ax.axhline(entropy, color="0.4", ls="--", lw=1, label=f"unigram entropy {entropy:.3f} (no context)")
    ax.margins(y=0.12)
    ax.set_title(f"Same model, data and seed; only the attention differs\n({setting})", fontsize=TITLE_PT)
    ax.grid(alpha=0.3, axis="y")
    _legend_below(ax, ncol=2)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------

PLOTS = {
    "attention": plot_attention,
    "sparse_linear": plot_sparse_linear,
    "train_step": plot_train_step,
    "attention_training": plot_attention_training,
}


def plot_all(results_dir=RESULTS_DIR, out_dir=OUT_DIR):
    """Draw every plot whose results exist; return the paths written. Prints one line per plot."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, plot in PLOTS.items():
        src = os.path.join(results_dir, name + ".json")
        out = os.path.join(out_dir, name + ".png")
        if not os.path.exists(src):
            print(f"skip {name}.png: no {src}")
            continue
        try:
            with open(src) as f:
                data = json.load(f)
            written.append(plot(data, out))
            print(f"wrote {out}")
        except Skip as e:
            print(f"skip {name}.png: {e}")
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
            print(f"skip {name}.png: could not read {src} ({type(e).__name__}: {e})")
        finally:
            _pyplot().close("all")
    return written


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=RESULTS_DIR, help="the benchmarks' JSON files (default: bench/results)")
    p.add_argument("--out", default=OUT_DIR, help="where to write the PNGs (default: docs/img/bench)")
    args = p.parse_args(argv)
    try:
        _pyplot()
    except ImportError:
        print('plot_benchmarks needs matplotlib: pip install -e ".[plot]"', file=sys.stderr)
        return 1
    plot_all(args.results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
