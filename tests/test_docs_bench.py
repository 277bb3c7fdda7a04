"""scripts/mkdocs_hooks.py renders the benchmark results into tables a reader can read.

The results here are small and synthetic, shaped like what the bench/ scripts write; the
expected cells are computed in the test from those numbers. One test renders the real
bench/results/ as the site build does.
"""

import importlib.util
import json
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_hooks():
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", os.path.join(ROOT, "scripts", "mkdocs_hooks.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _load_hooks()


def _write(tmp_path, name, data):
    d = tmp_path / "bench" / "results"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.json").write_text(json.dumps(data))
    return str(tmp_path)


def _tables(md):
    """Each Markdown table of md as a list of rows (lists of cell strings), header first."""
    tables, cur = [], []
    for line in md.split("\n") + [""]:
        line = line.strip()
        if line.startswith("|"):
            if not re.match(r"^\|[-:|]+\|$", line):
                cur.append([c.strip() for c in line.strip("|").split("|")])
        elif cur:
            tables.append(cur)
            cur = []
    return tables


def test_sparsity_sweep_rows_are_labelled_by_method_and_sparsity(tmp_path):
    runs = [{"spec": {"seed": 0, "steps": 10}, "val_loss": 1.5, "unigram_entropy": 3.0, "wall_s": 2.0,
             "checkpoint_bytes": 2_000_000, "stored": 0, "cells": 0}]
    for method, s, loss in (("static", 0.5, 1.6), ("set", 0.5, 1.7), ("set", 0.9, 2.25)):
        runs.append({"spec": {"seed": 0, "steps": 10, "sparsity": s, "method": method, "distribution": "uniform"},
                     "val_loss": loss, "unigram_entropy": 3.0, "wall_s": 3.0, "checkpoint_bytes": 1_000_000,
                     "stored": 50, "cells": 100, "checkpoint": "/tmp/somewhere/ckpt.npz"})
    root = _write(tmp_path, "sparsity_sweep", {"command": "python bench/sparsity_sweep.py", "results": runs})
    md = hooks.render("sparsity_sweep", root)
    pivot, full = _tables(md)
    assert pivot[0] == ["method", "0%", "50%", "90%"]
    rows = {r[0]: r[1:] for r in pivot[1:]}
    assert rows == {"dense": ["1.500", "", ""], "static": ["", "1.600", ""], "set": ["", "1.700", "2.250"]}
    assert full[0][:3] == ["method", "sparsity", "val loss"]
    assert ["set", "90%", "2.250", f"{2.25 / 3.0:.3f}"] == full[-1][:4]
    assert "/tmp/" not in md
    assert "(bench-results/sparsity_sweep.json)" in md


def test_attention_table_has_one_labelled_row_per_T_and_the_torch_ratio(tmp_path):
    results = [
        {"lib": "refsparse", "dtype": "float32", "rows": [
            {"T": T, "pattern": "local:window=8", "fwd_bwd_ms": T / 100, "extra_mb": 1.0, "dense_TxT_f32_mb": 4.0}
            for T in (64, 128)]},
        {"lib": "torch", "dtype": "float32", "rows": [
            {"T": T, "pattern": "SDPA is_causal (dense)", "fwd_bwd_ms": T / 10} for T in (64, 128)]},
        {"lib": "refsparse", "dtype": "float64", "rows": [
            {"T": 64, "pattern": "local:window=8", "fwd_bwd_ms": 3.0}]},
    ]
    root = _write(tmp_path, "attention", {"H": 2, "D": 4, "results": results})
    md = hooks.render("attention", root)
    main = _tables(md)[0]
    assert main[0] == ["T", "refsparse local", "torch SDPA", "torch ÷ local"]
    assert main[1] == ["64", "0.64", "6.40", "10.0×"]
    assert main[2] == ["128", "1.28", "12.8", "10.0×"]
    assert '??? note "float64' in md  # the second dtype is folded away


def test_spmm_locality_compares_the_entries_time_and_names_the_cpu(tmp_path):
    env = {"numpy": "2.0", "cpu": {"model": "Some CPU 9000", "extensions": ["avx2", "fma"]}, "cpu_count": 2}
    results = [{"shape": [512, 512], "op": "forward", "nnz": 26112,
                "ms": {"random": 5.0, "confined": 3.5, "floor": 1.0},
                "entries_ms": {"random": 4.0, "confined": 2.5}},
               {"shape": [512, 2048], "op": "forward", "nnz": 104960,
                "ms": {"random": 17.0, "floor": 2.0}, "entries_ms": {"random": 15.0}}]
    root = _write(tmp_path, "spmm_locality", {"results": results, "n_tokens": 4096,
                                              "args": {"density": 0.1, "span": 64}, "env": env})
    md = hooks.render("spmm_locality", root)
    (table,) = _tables(md)
    rows = {(r[0], r[1]): r for r in table[1:]}
    assert rows[("512 × 512", "forward")][-1] == f"{4.0 / 2.5:.1f}×"
    assert rows[("512 × 2048", "forward")][4] == "n/a" and rows[("512 × 2048", "forward")][-1] == "n/a"
    assert "CPU Some CPU 9000 (avx2, fma)" in md


def test_unknown_results_are_summarised_not_dumped(tmp_path):
    root = _write(tmp_path, "new_bench", {"n": 3, "out_dir": "/home/someone/x",
                                          "records": [{"a": i, "b": i * 2} for i in range(500)]})
    md = hooks.render_page("<!-- bench-results -->", root)
    assert "### new_bench" in md and "n = 3" in md
    assert not _tables(md)
    assert "/home/" not in md


def test_the_real_results_render_labelled_without_machine_paths():
    names = hooks.result_names(ROOT)
    if not names:
        return
    with open(os.path.join(ROOT, "docs", "benchmarks.md"), encoding="utf-8") as f:
        md = hooks.render_page(f.read(), ROOT)
    assert "<!-- bench" not in md
    assert "Could not render" not in md
    assert not re.search(r"(?<![\w.])/(tmp|home|root|Users)/", md)
    for table in _tables(md):
        assert all(h for h in table[0]), f"a blank header: {table[0]}"
        assert len(table[0]) <= 8, f"too many columns for the text column: {table[0]}"
