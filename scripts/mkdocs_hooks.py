"""MkDocs hooks: the local MathJax, and the benchmark results rendered into docs/benchmarks.md.

MathJax (``on_post_build``): the pages load ``javascripts/mathjax/tex-svg.js`` (mkdocs.yml's
``extra_javascript``); this hook copies it, the TeX extensions MathJax loads on demand, the
accessibility parts its menu offers, and MathJax's LICENSE, from the pinned
``django-static-mathjax`` package (the ``docs`` extra) into the built site. Nothing is fetched
when a page is viewed; the SVG output needs no font files, so the site typesets its formulas
served or opened from disk. Without the package the build stops and says how to install it.

Benchmarks (``on_files``, ``on_page_markdown``): docs/benchmarks.md holds a marker
``<!-- bench: NAME -->`` under the prose and plot of each benchmark; the hook replaces it with
the few tables a reader needs, read from ``bench/results/NAME.json`` — the headline numbers and
ratios, every row labelled (method, sparsity, shape, T, library), float64 and the secondary
tables folded away — and a link to the raw JSON, which is copied into the site as
``bench-results/NAME.json``. The marker ``<!-- bench-results -->`` lists the results files no
marker placed (their settings and a link). No machine path is printed. A file this hook cannot
read becomes a one-line note, never a failed build.

Referenced from mkdocs.yml (``hooks:``). Needs nothing beyond the standard library (and mkdocs).
"""

from __future__ import annotations

import ast
import glob
import importlib.metadata
import json
import logging
import os
import re
import shutil

MARKER = "<!-- bench-results -->"
NAMED_MARKER = re.compile(r"<!-- bench: ([\w-]+) -->")
RAW_DIR = "bench-results"  # where the raw JSON goes in the site
log = logging.getLogger("mkdocs.hooks.bench")


# --- formatting ----------------------------------------------------------------------------------

def _ms(v):
    """A time or size: three significant digits, thousands separated."""
    if v is None:
        return "—"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _x(a, b):
    """a ÷ b as a speed-up, or — when either is missing."""
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.1f}×"


def _pct(s):
    return f"{100 * s:g}%"


def _is_path(v):
    return isinstance(v, str) and (v.startswith(("/", "~")) or re.match(r"^[A-Za-z]:\\", v) is not None)


def _cell(v):
    if isinstance(v, float):
        return _ms(v)
    return "—" if v is None else str(v).replace("|", "\\|")


def table(header, rows):
    """A Markdown table; numeric columns right-aligned."""
    cells = [[_cell(c) for c in r] for r in rows]

    def numeric(i):
        col = [r[i] for r in cells if r[i] not in ("—", "")]
        return bool(col) and all(re.match(r"^[\d,.\-−×% /]+$", c) for c in col)

    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---:" if numeric(i) else "---" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join(out)


def folded(title, body):
    """A collapsed block (pymdownx.details) a reader opens when they want it."""
    return f'??? note "{title}"\n\n' + "\n".join(("    " + line) if line else "" for line in body.split("\n"))


def _find_env(obj):
    if isinstance(obj, dict):
        if isinstance(obj.get("env"), dict) and "numpy" in obj["env"]:
            return obj["env"]
        values = obj.values()
    elif isinstance(obj, list):
        values = obj
    else:
        return None
    for v in values:
        env = _find_env(v)
        if env:
            return env
    return None


def _env_line(env):
    parts = []
    cpu = env.get("cpu")
    if isinstance(cpu, dict) and cpu.get("model"):
        ext = ", ".join(cpu.get("extensions") or []) or "no AVX2"
        parts.append(f"CPU {cpu['model']} ({ext})")
    parts += [f"{k} {env[k]}" for k in ("python", "numpy", "scipy", "numba") if env.get(k)]
    if env.get("cpu_count"):
        parts.append(f"{env['cpu_count']} cores")
    if env.get("numba_threads"):
        parts.append(f"{env['numba_threads']} Numba threads")
    blas = env.get("blas")
    if isinstance(blas, list):
        kinds = sorted({f"{b.get('internal_api')} {b.get('architecture') or ''}".strip() for b in blas
                        if isinstance(b, dict) and b.get("internal_api") == "openblas"})
        if kinds:
            parts.append("BLAS: " + ", ".join(kinds))
    return "; ".join(parts)


def _footer(name, data):
    line = f"Raw records: [`bench/results/{name}.json`]({RAW_DIR}/{name}.json)."
    env = _find_env(data)
    if env:
        line += f" Measured with {_env_line(env)}."
    return line


# --- one renderer per benchmark -----------------------------------------------------------------

def _attention(data):
    rows = [{"lib": r["lib"], "dtype": r["dtype"], **row} for r in data["results"] for row in r.get("rows", [])]

    def col(r):
        return f"refsparse {r['pattern'].split(':')[0]}" if r["lib"] == "refsparse" else r["lib"]

    cols = list(dict.fromkeys(col(r) for r in rows if r["lib"] == "refsparse"))
    cols += list(dict.fromkeys(col(r) for r in rows if r["lib"] != "refsparse"))
    names = {"numpy": "NumPy, dense", "torch": "torch SDPA"}
    what = []
    for c in cols:
        pats = list(dict.fromkeys(r["pattern"] for r in rows if col(r) == c))
        desc = pats[0] if len(pats) == 1 else f"{pats[0]} … {pats[-1].split('=')[-1]}"
        what.append(f"*{names.get(c, c)}*: {desc.split(':', 1)[-1].replace('=', ' ')}")
    base = "refsparse local" if "refsparse local" in cols else cols[0]
    other = "torch" if "torch" in cols else None

    def ms_table(dtype, key):
        Ts = sorted({r["T"] for r in rows if r["dtype"] == dtype})
        get = {(r["T"], col(r)): r.get(key) for r in rows if r["dtype"] == dtype}
        header = ["T"] + [names.get(c, c) for c in cols] + ([f"torch ÷ {base.split()[-1]}"] if other else [])
        out = []
        for T in Ts:
            line = [T] + [get.get((T, c)) for c in cols]
            if other:
                line.append(_x(get.get((T, other)), get.get((T, base))))
            out.append(line)
        return table(header, out)

    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    settings = [f"{data['H']} heads" if "H" in data else None, f"d_head {data['D']}" if "D" in data else None,
                f"window {data['window']}" if "window" in data else None,
                f"best of {data['rounds']} rounds" if "rounds" in data else None]
    parts = [f"Forward + backward, ms (median), **{dtypes[0]}**, batch 1, "
             + ", ".join(s for s in settings if s) + ". Columns: " + "; ".join(what) + ".", "",
             ms_table(dtypes[0], "fwd_bwd_ms"), ""]
    for k, v in sorted((data.get("summary") or {}).get(dtypes[0], {}).items()):
        m = re.match(r"fitted_exponent_(\w+?)_(\d+)_(\d+)$", k)
        if m:
            parts += [(f"refsparse's {m.group(1)} time grows as T<sup>{v:.2f}</sup> from T = {m.group(2)} "
                       f"to {m.group(3)}: close to linear, as there is no T × T matrix."), ""]
    for dtype in dtypes[1:]:
        parts += [folded(f"{dtype}: forward + backward, ms", ms_table(dtype, "fwd_bwd_ms")), ""]
    mem = [r for r in rows if r["lib"] == "refsparse" and r["dtype"] == dtypes[0] and "extra_mb" in r]
    if mem:
        mcols = list(dict.fromkeys(col(r) for r in mem))
        get = {(r["T"], col(r)): r["extra_mb"] for r in mem}
        dense = {r["T"]: r.get("dense_TxT_f32_mb") for r in mem}
        body = ("Memory allocated by forward + backward beyond inputs and outputs (tracemalloc, MB, all heads), "
                "against one dense T × T float32 matrix (one head's scores).\n\n"
                + table(["T"] + [f"{c}, MB" for c in mcols] + ["one T × T matrix, MB"],
                        [[T] + [get.get((T, c)) for c in mcols] + [dense.get(T)] for T in sorted(dense)]))
        parts += [folded(f"memory ({dtypes[0]})", body), ""]
    if "twin_max_rel_err_f64" in data:
        parts += [("Before timing, refsparse's outputs were checked against the dense masked NumPy twin: "
                   f"largest relative difference {data['twin_max_rel_err_f64']:.1e} in float64."), ""]
    return parts


def _fwd_bwd(recs):
    """{sparsity: ms} of forward + backward: the lib's own "fwd+bwd", else the sum of what it timed."""
    by = {}
    for r in recs:
        by.setdefault(r["sparsity"], {})[r["op"]] = r["median_ms"]
    if by and all("fwd+bwd" in ops for ops in by.values()):
        return {s: ops["fwd+bwd"] for s, ops in by.items()}
    parts = [op for op in ("fwd", "dx", "dw") if by and all(op in ops for ops in by.values())]
    return {s: sum(ops[op] for op in parts) for s, ops in by.items()} if parts else {}


def _sparse_linear(data):
    recs = [rec for r in data["results"] for rec in r.get("records", [])]
    dtypes = list(dict.fromkeys(r["dtype"] for r in recs))
    shapes = list(dict.fromkeys(tuple(r["shape"]) for r in recs))
    libs = list(dict.fromkeys(r["lib"] for r in recs))
    names = {"refsparse": "refsparse", "numpy": "NumPy, dense", "torch": "torch CSR", "scipy": "SciPy CSR"}

    def fb_table(dtype):
        fb = {(lib, sh): _fwd_bwd([r for r in recs if r["dtype"] == dtype and r["lib"] == lib
                                    and tuple(r["shape"]) == sh]) for lib in libs for sh in shapes}
        out = []
        for sh in shapes:
            dense = fb.get(("numpy", sh), {}).get(0.0)
            for s in sorted(fb.get(("refsparse", sh), {})):
                ref = fb[("refsparse", sh)][s]
                line = [f"{sh[0]}×{sh[1]}", _pct(s)] + [fb.get((lib, sh), {}).get(s, dense if lib == "numpy" else None)
                                                         for lib in libs]
                line.append(_x(dense, ref))
                out.append(line)
        return table(["W", "sparsity"] + [names.get(lib, lib) for lib in libs] + ["refsparse vs NumPy"], out)

    n = data.get("n_tokens")
    parts = [f"Forward + backward of one layer, ms (median), **{dtypes[0]}**"
             + (f", x of {n:,} rows" if n else "") + ". NumPy multiplies the dense W (the same at every "
             "sparsity); torch's forward, dX and dW are timed apart and summed; SciPy's is forward + dX "
             "(it has no sampled product for dW).", "",
             fb_table(dtypes[0]), ""]
    be = data.get("breakeven_sparsity") or {}
    if be:
        parts += ["Break-even with dense NumPy (where refsparse's forward + backward meets it): "
                  + "; ".join(f"{k} at {v:.2f}" for k, v in be.items()) + ".", ""]
    for dtype in dtypes[1:]:
        parts += [folded(f"{dtype}: forward + backward, ms", fb_table(dtype)), ""]
    acc = data.get("acceptance") or []
    if acc:
        ok = [a for a in acc if a.get("pass")]
        low = min(acc, key=lambda a: a["speedup"] / a["target"])
        body = (f"{len(ok)} of {len(acc)} speed-up targets met; the closest: {low['check']}, "
                f"{low['speedup']:.1f}× against a target of {low['target']:g}×.\n\n"
                + table(["check", "speed-up", "target", "met"],
                        [[a["check"], f"{a['speedup']:.1f}×", f"{a['target']:g}×", "yes" if a.get("pass") else "**no**"]
                         for a in acc]))
        parts += [folded(f"speed-up targets: {len(ok)} of {len(acc)} met", body), ""]
    checks = [c for r in data["results"] for c in (r.get("checks") or [])]
    if checks:
        bad = [c for c in checks if not c.get("ok")]
        worst = max(c.get("rel_err", 0) for c in checks)
        parts += ["Before timing, every kernel was checked against the dense masked twin: "
                  + ("all checks pass" if not bad else f"**{len(bad)} checks fail**")
                  + f" (largest relative error {worst:.1e}).", ""]
    return parts


def _train_step(data):
    res = data["results"]
    dtypes = list(dict.fromkeys(r["dtype"] for r in res))
    get = {(r["lib"], r["dtype"]): r for r in res}
    s = data.get("shape") or {}
    out = []
    for d in dtypes:
        ref, tor = get.get(("refsparse", d), {}), get.get(("torch", d), {})
        out.append([d, ref.get("median_ms"), tor.get("median_ms"), _x(tor.get("median_ms"), ref.get("median_ms")),
                    f"{ref['tokens_per_s']:,.0f}" if ref.get("tokens_per_s") else "—",
                    f"{_ms(ref.get('peak_rss_mb'))} / {_ms(tor.get('peak_rss_mb'))}"])
    parts = ["One AdamW step (forward, backward, update), ms (median)"
             + (f": {s.get('n_layers')} layers, d_model {s.get('d_model')}, {s.get('n_heads')} heads, "
                f"d_ff {s.get('d_ff')}, T {s.get('seq_len')}, batch {s.get('batch')}" if s else "") + ".", "",
             table(["dtype", "refsparse, ms", "torch, ms", "torch ÷ refsparse", "refsparse tokens/s",
                    "peak RSS, MB (refsparse / torch)"], out), ""]
    checks = data.get("checks") or []
    if checks:
        parts += ["The two start from the same weights: first losses agree to "
                  + ", ".join(f"{c['first_loss_rel_diff']:.1e} ({c['dtype']})" for c in checks)
                  + " relative." + ("" if all(c.get("ok") for c in checks) else " **A check failed.**"), ""]
    return parts


def _attention_training(data):
    runs = data["runs"]
    a = data.get("args") or {}
    entropy = next((r["unigram_entropy"] for r in runs if r.get("unigram_entropy")), None)
    out = [[r.get("attention"), r.get("step"), r.get("train_loss"), r.get("val_loss"), r.get("bits_per_char"),
            r.get("wall_s")] for r in runs]
    fmt = [[x[0], x[1], f"{x[2]:.3f}" if x[2] is not None else "—", f"{x[3]:.3f}" if x[3] is not None else "—",
            f"{x[4]:.3f}" if x[4] is not None else "—", _ms(x[5])] for x in out]
    parts = [f"The same model trained {a.get('steps', '?')} steps (T {a.get('seq_len', '?')}, batch "
             f"{a.get('batch_size', '?')}, same data and seed), only the attention pattern changed. Losses in nats "
             "per character" + (f"; the corpus's unigram entropy is {entropy:.3f}." if entropy else "."), "",
             table(["attention", "steps", "train loss", "validation loss", "bits / char", "wall, s"], fmt), ""]
    return parts


def _sparsity_sweep(data):
    res = data["results"]

    def method(r):
        spec = r.get("spec") or {}
        m = spec.get("method") or ("dense" if not spec.get("sparsity") else "?")
        dist = spec.get("distribution")
        return m if not dist or dist == "uniform" else f"{m} ({dist})"

    sparsity = [(r.get("spec") or {}).get("sparsity") or 0.0 for r in res]
    methods = list(dict.fromkeys(method(r) for r in res))
    levels = sorted(set(sparsity))
    loss = {(method(r), s): r.get("val_loss") for r, s in zip(res, sparsity)}
    pivot = [[m] + [f"{loss[(m, s)]:.3f}" if loss.get((m, s)) is not None else "" for s in levels] for m in methods]
    steps = {(r.get("spec") or {}).get("steps") for r in res}
    entropy = next((r["unigram_entropy"] for r in res if r.get("unigram_entropy")), None)
    parts = ["Validation loss (nats per character; lower is better) after "
             + (f"{steps.pop():,} steps" if len(steps) == 1 else "training")
             + " of the default language model, by sparsity method (rows) and sparsity of the sparse layers "
             "(columns)" + (f"; the unigram entropy is {entropy:.3f}." if entropy else "."), "",
             table(["method"] + [_pct(s) for s in levels], pivot), ""]
    full = [[method(r), _pct(s), f"{r['val_loss']:.3f}" if r.get("val_loss") is not None else "—",
             f"{r['val_loss'] / r['unigram_entropy']:.3f}" if r.get("val_loss") and r.get("unigram_entropy") else "—",
             f"{r['stored']:,} / {r['cells']:,}" if r.get("cells") else "dense",
             f"{r['checkpoint_bytes'] / 1e6:.1f}" if r.get("checkpoint_bytes") else "—", _ms(r.get("wall_s"))]
            for r, s in zip(res, sparsity)]
    cmd = data.get("command")
    body = (table(["method", "sparsity", "val loss", "÷ entropy", "stored / cells", "checkpoint, MB", "wall, s"], full)
            + (f"\n\nRun as `{cmd}`" + (f", {data['total_s'] / 60:.0f} minutes in all." if data.get("total_s") else ".")
               if cmd and not _is_path(cmd) else ""))
    parts += [folded("every run: loss ratio, stored weights, checkpoint size, wall time", body), ""]
    return parts


def _spmm_locality(data):
    a = data.get("args") or {}
    rows = []
    for r in data["results"]:
        ms, ent = r["ms"], r.get("entries_ms") or {}
        confined = "confined" in ms
        rows.append([f"{r['shape'][0]} × {r['shape'][1]}", r["op"], f"{r['nnz']:,}", _ms(ms["random"]),
                     _ms(ms["confined"]) if confined else "n/a", _ms(ms["floor"]),
                     _x(ent["random"], ent["confined"]) if confined else "n/a"])
    return [f"float32, N = {data.get('n_tokens', '?')}, density {a.get('density', '?')}; a confined row "
            f"draws its ids from {a.get('span', '?')} (n/a: its entries do not fit in them). The last column "
            "is the time less the floor, random against confined: what a perfect order of the entries "
            "could buy.", "",
            table(["W", "pass", "entries", "random, ms", "confined, ms", "floor, ms", "locality could buy"],
                  rows), ""]


RENDERERS = {
    "attention": _attention,
    "sparse_linear": _sparse_linear,
    "train_step": _train_step,
    "attention_training": _attention_training,
    "sparsity_sweep": _sparsity_sweep,
    "spmm_locality": _spmm_locality,
}


def _intro(script):
    try:
        with open(script) as f:
            doc = ast.get_docstring(ast.parse(f.read())) or ""
    except (OSError, SyntaxError):
        return ""
    return doc.split("\n\n")[0].strip()


def _generic(data, name, bench_dir):
    """A results file no renderer knows: its script's first paragraph and its settings, not its records."""
    parts = []
    intro = _intro(os.path.join(bench_dir, name + ".py"))
    if intro:
        parts += [intro, ""]
    if isinstance(data, dict):
        settings = [f"{k} = {v}" for k, v in data.items()
                    if isinstance(v, (int, float, str, bool)) and not _is_path(v) and len(str(v)) < 60]
        if settings:
            parts += ["Settings: " + ", ".join(settings) + ".", ""]
    return parts


def render(name, root):
    """The Markdown of one benchmark's results (tables and the link to its JSON)."""
    path = os.path.join(root, "bench", "results", name + ".json")
    if not os.path.exists(path):
        return f"*No `bench/results/{name}.json` yet: run `bench/{name}.py` and rebuild the docs.*\n"
    try:
        with open(path) as f:
            data = json.load(f)
        renderer = RENDERERS.get(name)
        parts = renderer(data) if renderer else _generic(data, name, os.path.join(root, "bench"))
    except (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError, ZeroDivisionError) as e:
        log.info("bench results: could not render %s: %s", path, e)
        parts, data = [f"*Could not render `bench/results/{name}.json` ({type(e).__name__}: {e}).*", ""], None
    return "\n".join(parts + [_footer(name, data)]) + "\n"


def result_names(root):
    return [os.path.splitext(os.path.basename(p))[0]
            for p in sorted(glob.glob(os.path.join(root, "bench", "results", "*.json")))]


def render_page(markdown, root):
    """Fill every benchmark marker of a page."""
    placed = set(NAMED_MARKER.findall(markdown))
    markdown = NAMED_MARKER.sub(lambda m: render(m.group(1), root), markdown)
    if MARKER in markdown:
        rest = [n for n in result_names(root) if n not in placed]
        text = "\n".join(f"### {n}\n\n" + render(n, root) for n in rest)
        markdown = markdown.replace(MARKER, text or "")
    return markdown


def _root(config):
    return os.path.dirname(os.path.abspath(config["config_file_path"]))


def on_files(files, config):
    """MkDocs event: ship each raw results file with the site, as bench-results/NAME.json."""
    from mkdocs.structure.files import File

    root = _root(config)
    for name in result_names(root):
        files.append(File.generated(config, f"{RAW_DIR}/{name}.json",
                                    abs_src_path=os.path.join(root, "bench", "results", name + ".json")))
    return files


def on_page_markdown(markdown, page, config, files):
    """MkDocs event: fill the benchmark markers of a page."""
    if MARKER not in markdown and not NAMED_MARKER.search(markdown):
        return markdown
    return render_page(markdown, _root(config))


# --- MathJax -------------------------------------------------------------------------------------

MATHJAX_DIST = "django-static-mathjax"
MATHJAX_DEST = os.path.join("javascripts", "mathjax")
# what tex-svg.js may load (relative to MathJax's es5/ folder): TeX packages autoloaded by the
# macros that need them (\boldsymbol, \cancel, ...), and the menu's accessibility tools
MATHJAX_PARTS = ["tex-svg.js", "input/tex/extensions", "ui", "a11y", "sre"]


def mathjax_dir():
    """MathJax's es5/ folder in the installed django-static-mathjax package."""
    try:
        dist = importlib.metadata.distribution(MATHJAX_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(
            f"the docs need MathJax from the {MATHJAX_DIST!r} package: pip install -e \".[docs]\"") from None
    es5 = os.path.join(str(dist.locate_file("mathjax")), "static", "mathjax", "es5")
    if not os.path.isfile(os.path.join(es5, "tex-svg.js")):
        raise RuntimeError(f"{MATHJAX_DIST} is installed but has no {es5}/tex-svg.js")
    return es5


def copy_mathjax(site_dir):
    """Copy MathJax's parts and its licence into ``site_dir/javascripts/mathjax``; return that path."""
    es5 = mathjax_dir()
    dest = os.path.join(site_dir, MATHJAX_DEST)
    for part in MATHJAX_PARTS:
        src = os.path.join(es5, part)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(dest, part), dirs_exist_ok=True)
        else:
            os.makedirs(os.path.dirname(os.path.join(dest, part)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, part))
    shutil.copy2(os.path.join(os.path.dirname(es5), "LICENSE"), os.path.join(dest, "LICENSE"))
    return dest


def on_post_build(config):
    """MkDocs event: ship MathJax with the site (also for ``mkdocs serve``, which builds too)."""
    from mkdocs.exceptions import PluginError

    try:
        copy_mathjax(config["site_dir"])
    except (RuntimeError, OSError) as e:
        raise PluginError(f"MathJax: {e}") from e
