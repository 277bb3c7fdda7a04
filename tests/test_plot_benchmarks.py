"""scripts/plot_benchmarks.py draws a PNG per results file and skips what is missing.

The results here are small and synthetic, shaped like what the bench/ scripts write; the
plots go to a temporary directory (never to docs/img/bench/).
"""

import importlib.util
import json
import os

import pytest

pytest.importorskip("matplotlib")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _load_script():
    path = os.path.join(ROOT, "scripts", "plot_benchmarks.py")
    spec = importlib.util.spec_from_file_location("plot_benchmarks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pb = _load_script()


def _attention():
    results = []
    for dtype in ("float32", "float64"):
        rows = []
        for T in (512, 1024, 2048):
            rows.append({"T": T, "pattern": "local:window=128", "fwd_bwd_ms": T / 10, "extra_mb": T / 100,
                         "rss_extra_mb": T / 90, "dense_TxT_f32_mb": 4 * T * T / 2**20})
            # the strided pattern's name changes with T (stride ≈ √T): still one line
            rows.append({"T": T, "pattern": f"strided:stride={round(T ** 0.5)}", "fwd_bwd_ms": T / 8,
                         "extra_mb": T / 100})
        results.append({"lib": "refsparse", "dtype": dtype, "rows": rows})
        results.append({"lib": "numpy", "dtype": dtype,
                        "rows": [{"T": 512, "pattern": "dense mask, window 128", "fwd_bwd_ms": 30.0}]})
        results.append({"lib": "torch", "dtype": dtype, "rows": [
            {"T": T, "pattern": "SDPA is_causal (dense)", "fwd_bwd_ms": T * T / 1e4} for T in (512, 1024, 2048)]})
    return {"H": 8, "D": 64, "results": results}


def _sparse_linear():
    results = []
    for lib, ops, sparsities in (("refsparse", ["fwd", "dx", "dw", "fwd+bwd"], [0.0, 0.5, 0.9, 0.99]),
                                 ("numpy", ["fwd", "fwd+bwd"], [0.0]),
                                 ("scipy", ["fwd", "dx"], [0.0, 0.5, 0.9, 0.99]),
                                 ("torch", ["fwd", "dx", "dw"], [0.0, 0.5, 0.9, 0.99])):
        for shape in ([64, 32], [32, 64]):
            records = [{"lib": lib, "dtype": "float32", "shape": shape, "sparsity": s, "op": op,
                        "median_ms": 10 * (1 - s) + 1, "times_s": [0.01]} for s in sparsities for op in ops]
            results.append({"lib": lib, "dtype": "float32", "records": records})
    return {"n_tokens": 128, "breakeven_sparsity": {"float32 64×32": 0.7}, "results": results}


def _train_step():
    return {"shape": {"n_layers": 1, "d_model": 8, "seq_len": 4, "batch": 2},
            "results": [{"lib": lib, "dtype": dtype, "median_ms": ms}
                        for lib, dtype, ms in (("refsparse", "float32", 10.0), ("torch", "float32", 20.0),
                                               ("refsparse", "float64", 15.0), ("torch", "float64", 25.0))]}


def _attention_training(curves):
    runs = []
    for i, spec in enumerate(("full", "local:window=32")):
        run = {"attention": spec, "train_loss": 2.0 - i / 10, "val_loss": 2.1 - i / 10, "unigram_entropy": 3.2}
        if curves:
            run["history"] = [{"step": s, "loss": 3.0 - s / 100 - i / 10} for s in range(1, 50)]
        runs.append(run)
    return {"runs": runs, "args": {"steps": 50, "seq_len": 16, "batch_size": 2}}


def _write(directory, name, data):
    with open(os.path.join(directory, name + ".json"), "w") as f:
        json.dump(data, f)


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG_MAGIC


def test_every_plot_is_written(tmp_path, capsys):
    results, out = tmp_path / "results", tmp_path / "img"
    results.mkdir()
    for name, data in (("attention", _attention()), ("sparse_linear", _sparse_linear()),
                       ("train_step", _train_step()), ("attention_training", _attention_training(False))):
        _write(results, name, data)
    assert pb.main(["--results", str(results), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in pb.PLOTS:
        path = out / (name + ".png")
        assert path.exists() and _is_png(path), name
        assert f"wrote {path}" in printed, printed


def test_missing_files_and_keys_are_skipped(tmp_path, capsys):
    results, out = tmp_path / "results", tmp_path / "img"
    results.mkdir()
    _write(results, "train_step", _train_step())
    _write(results, "attention", {"H": 8, "results": [{"lib": "refsparse", "dtype": "float32"}]})  # no rows
    _write(results, "sparse_linear", {"results": "not a list of records"})
    with open(results / "attention_training.json", "w") as f:
        f.write("{ truncated")
    written = pb.plot_all(str(results), str(out))
    printed = capsys.readouterr().out
    assert [os.path.basename(p) for p in written] == ["train_step.png"]
    for name in ("attention", "sparse_linear", "attention_training"):
        assert f"skip {name}.png" in printed, printed
        assert not (out / (name + ".png")).exists()


def test_an_empty_results_dir_writes_nothing(tmp_path, capsys):
    assert pb.plot_all(str(tmp_path), str(tmp_path / "img")) == []
    assert capsys.readouterr().out.count("skip ") == len(pb.PLOTS)


def test_attention_at_a_single_T_and_loss_curves(tmp_path):
    """What a partial run holds: one T, one dtype, no memory column; and a run's loss curves."""
    one_T = {"results": [{"lib": "refsparse", "dtype": "float32",
                          "rows": [{"T": 4096, "pattern": "local:window=128", "fwd_bwd_ms": 968.0}]}]}
    assert _is_png(pb.plot_attention(one_T, str(tmp_path / "attention.png")))
    curves = _attention_training(True)
    assert pb._curve(curves["runs"][0])[0][:2] == [1, 2]
    assert _is_png(pb.plot_attention_training(curves, str(tmp_path / "attention_training.png")))
