"""MkDocs hooks: the local MathJax, and bench/results/*.json rendered into docs/benchmarks.md.

MathJax (``on_post_build``): the pages load ``javascripts/mathjax/tex-svg.js`` (mkdocs.yml's
``extra_javascript``); this hook copies it, the TeX extensions MathJax loads on demand, the
accessibility parts its menu offers, and MathJax's LICENSE, from the pinned
``django-static-mathjax`` package (the ``docs`` extra) into the built site. Nothing is fetched
when a page is viewed; the SVG output needs no font files, so the site typesets its formulas
served or opened from disk. Without the package the build stops and says how to install it.

Benchmarks:

docs/benchmarks.md holds the marker ``<!-- bench-results -->``; this hook replaces it with
one section per results file (whatever files exist when the site is built), so the page
always shows the numbers the benchmarks last wrote. The rendering is generic — it does not
know any one benchmark's schema — so a benchmark can change what it records without
breaking the docs build:

- the first paragraph of ``bench/<name>.py``'s docstring introduces the section;
- top-level numbers and strings (and small lists of them) become a list of settings;
- every list of records becomes a table; a record holding its own list of rows (e.g.
  ``results[i].rows``) is flattened, each row keeping its parent's scalar fields (lib, dtype);
- a dict of numbers becomes a two-column table;
- the first ``env`` record found is summarised in one line (versions, threads, BLAS kernel).

Referenced from mkdocs.yml (``hooks:``). Needs nothing beyond the standard library.
"""

from __future__ import annotations

import ast
import glob
import importlib.metadata
import json
import logging
import os
import shutil

MARKER = "<!-- bench-results -->"
log = logging.getLogger("mkdocs.hooks.bench")


def _fmt(v):
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) < 1e-3:
            return f"{v:.3g}"
        return f"{v:.4g}"
    if isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        if len(v) <= 4 and all(isinstance(x, int) for x in v):
            return "×".join(str(x) for x in v)  # a shape
        return ", ".join(_fmt(x) for x in v)
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    if v is None:
        return "—"
    return str(v).replace("|", "\\|")


def _is_scalar(v):
    return v is None or isinstance(v, (bool, int, float, str))


def _is_small_list(v):
    return isinstance(v, list) and 0 < len(v) <= 8 and all(_is_scalar(x) for x in v)


def _table(rows):
    """A markdown table of a list of flat dicts (the union of their keys, in first-seen order)."""
    cols = []
    for r in rows:
        for k, v in r.items():
            if k not in cols and (_is_scalar(v) or _is_small_list(v)) and k != "times_s":
                cols.append(k)
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(c, "")) if c in r else "" for c in cols) + " |")
    return "\n".join(out)


def _flatten(records):
    """Records with nested lists of row dicts -> {nested key: flat rows} (plus their own scalars)."""
    tables = {}
    own = []
    for rec in records:
        if not isinstance(rec, dict):
            continue
        scalars = {k: v for k, v in rec.items() if _is_scalar(v) or _is_small_list(v)}
        nested = {k: v for k, v in rec.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)}
        if nested:
            # the parent's labels (lib, dtype) first, then the row, then the parent's numbers
            labels = {k: v for k, v in scalars.items() if isinstance(v, str)}
            numbers = {k: v for k, v in scalars.items() if not isinstance(v, str)}
            for key, rows in nested.items():
                tables.setdefault(key, []).extend(
                    {**labels, **row, **{k: v for k, v in numbers.items() if k not in row}} for row in rows)
        else:
            own.append(scalars)
    return own, tables


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
    parts = [f"{k} {env[k]}" for k in ("python", "numpy", "scipy", "numba") if env.get(k)]
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


def _intro(script):
    try:
        with open(script) as f:
            doc = ast.get_docstring(ast.parse(f.read())) or ""
    except (OSError, SyntaxError):
        return ""
    return doc.split("\n\n")[0].strip()


def render_file(path, bench_dir):
    """The markdown section of one results file."""
    name = os.path.splitext(os.path.basename(path))[0]
    with open(path) as f:
        data = json.load(f)
    lines = [f"### {name}", ""]
    script = os.path.join(bench_dir, name + ".py")
    intro = _intro(script)
    if intro:
        lines += [intro, ""]
    if os.path.exists(script):
        lines += [f"Script: `bench/{name}.py`; results: `bench/results/{name}.json`.", ""]
    if not isinstance(data, dict):
        data = {"results": data}
    settings = [(k, v) for k, v in data.items() if _is_scalar(v) or _is_small_list(v)]
    if settings:
        lines += ["Settings: " + ", ".join(f"{k} = {_fmt(v)}" for k, v in settings) + ".", ""]
    for key, value in data.items():
        if isinstance(value, dict) and value and all(_is_scalar(v) or _is_small_list(v) for v in value.values()):
            if "numpy" in value:  # an environment record
                continue
            lines += [f"**{key}**", "", "| | |", "|---|---|"]
            lines += [f"| {_fmt(k)} | {_fmt(v)} |" for k, v in value.items()]
            lines.append("")
        elif isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
            own, nested = _flatten(value)
            if own and any(own):
                lines += [f"**{key}**", "", _table(own), ""]
            for sub, rows in nested.items():
                lines += [f"**{key}: {sub}**", "", _table(rows), ""]
    env = _find_env(data)
    if env:
        lines += [f"Measured with {_env_line(env)}.", ""]
    return "\n".join(lines)


def render_all(root):
    bench_dir = os.path.join(root, "bench")
    files = sorted(glob.glob(os.path.join(bench_dir, "results", "*.json")))
    if not files:
        return "*No results in bench/results/ yet: run the benchmarks (below) and rebuild the docs.*\n"
    parts = []
    for path in files:
        try:
            parts.append(render_file(path, bench_dir))
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            log.info("bench results: could not render %s: %s", path, e)
            parts.append(f"### {os.path.basename(path)}\n\n*Could not render this file: {e}*\n")
    return "\n".join(parts)


def on_page_markdown(markdown, page, config, files):
    """MkDocs event: fill the marker of the benchmarks page."""
    if MARKER not in markdown:
        return markdown
    root = os.path.dirname(os.path.abspath(config["config_file_path"]))
    return markdown.replace(MARKER, render_all(root))


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
