"""bench/train_step.py at a tiny size: the workers build the models they claim to and check
their losses; the whole script writes the JSON the docs read. No timings are asserted."""

import importlib.util
import json
import os

import numpy as np
import pytest

pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(n_layers=1, d_model=16, n_heads=2, d_ff=32, seq_len=8, batch=2, window=3)


def _load(name, *parts):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, *parts))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ts = _load("bench_train_step", "bench", "train_step.py")


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 1e-4)])
def test_dense_first_loss_equals_torch(dtype, tol):
    mine = ts.worker_refsparse(TINY, dtype, ts.parse_variant("dense", TINY), steps=1, warmup=1)
    theirs = ts.worker_torch(TINY, dtype, steps=1, warmup=1)
    assert abs(mine["first_loss"] - theirs["first_loss"]) <= tol * abs(theirs["first_loss"])
    assert mine["parameters"] == theirs["parameters"]
    assert mine["weight_sparsity"] == 0.0
    # the loss of a uniform guess over the vocabulary is near an untrained model's
    assert 0.5 * np.log(ts.build(TINY, dtype)[0].config.vocab_size) < theirs["first_loss"] < 2 * np.log(
        ts.build(TINY, dtype)[0].config.vocab_size)


def test_sparse_and_local_variants_are_what_they_say():
    dense = ts.worker_refsparse(TINY, "float64", ts.parse_variant("dense", TINY), steps=1, warmup=1)
    out = {}
    for name in ("sparse90", "local", "sparse90+local"):
        v = ts.parse_variant(name, TINY)
        out[name] = r = ts.worker_refsparse(TINY, "float64", v, steps=1, warmup=1)
        assert abs(r["first_loss"] - r["reference_loss"]) <= 1e-10 * abs(r["reference_loss"]), name
    # 90% of the attention and feed-forward weights are not stored (uniform: each layer rounds)
    for name in ("sparse90", "sparse90+local"):
        assert out[name]["weight_sparsity"] == pytest.approx(0.9, abs=0.02)
        assert out[name]["parameters"] < dense["parameters"]
    assert out["local"]["weight_sparsity"] == 0.0
    # a window of 3 < T = 8 drops keys: the same weights give another loss than full attention
    assert out["local"]["parameters"] == dense["parameters"]
    assert abs(out["local"]["first_loss"] - dense["first_loss"]) > 1e-8
    assert abs(out["sparse90+local"]["first_loss"] - out["sparse90"]["first_loss"]) > 1e-8


def test_parse_variant():
    assert ts.parse_variant("dense", TINY) == {"name": "dense", "sparsity": 0.0, "attention": "full",
                                               "window": None}
    v = ts.parse_variant("sparse75+local5", TINY)
    assert (v["sparsity"], v["attention"]) == (0.75, "local:window=5")
    assert ts.parse_variant("local", TINY)["attention"] == "local:window=3"
    for bad in ("sparse", "sparse100", "sparse0", "local0", "dense+local", "full", ""):
        with pytest.raises(ValueError, match="variant"):
            ts.parse_variant(bad, TINY)


def test_default_shape_is_refsparse_trains():
    from refsparse.train import TrainConfig

    c, s = TrainConfig(), ts.shapes()["default"]
    assert (s["n_layers"], s["d_model"], s["n_heads"], s["d_ff"], s["seq_len"], s["batch"]) == (
        c.model.n_layers, c.model.d_model, c.model.n_heads, c.model.d_ff, c.model.seq_len, c.optim.batch_size)
    assert s["window"] < s["seq_len"]
    assert ts.shapes()["large"] == dict(n_layers=4, d_model=512, n_heads=8, d_ff=2048, seq_len=1024, batch=4,
                                        window=128)


def test_script_writes_the_json_the_docs_read(tmp_path, monkeypatch, capsys):
    # the workers are subprocesses: they get the tiny shape on their command line
    monkeypatch.setattr(ts, "shapes", lambda: {"default": TINY, "medium": TINY, "large": TINY})
    monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "train_step.json"
    ts.main(["--shapes", "default", "--variants", "dense", "sparse90+local", "--dtypes", "float64",
             "--steps", "1", "--warmup", "1", "--rounds", "1", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "local:window=3" in printed and "90% sparse" in printed
    data = json.loads(out.read_text())
    assert [(r["lib"], r["variant"]) for r in data["runs"]] == [
        ("torch", "dense"), ("refsparse", "dense"), ("refsparse", "sparse90+local")]
    assert sorted((r["lib"], r["dtype"]) for r in data["results"]) == [("refsparse", "float64"),
                                                                       ("torch", "float64")]
    assert data["shape"] == TINY and all(c["ok"] for c in data["all_checks"])
    assert [c["against"] for c in data["all_checks"]] == ["torch", "reference", "reference"]
    torch_ms = data["runs"][0]["median_ms"]
    for r in data["runs"][1:]:
        assert r["ratio_to_torch_dense"] == pytest.approx(r["median_ms"] / torch_ms)
    # the docs' renderer reads the dense records as before
    hooks = _load("mkdocs_hooks", "scripts", "mkdocs_hooks.py")
    text = "\n".join(hooks._train_step(data))
    assert "float64" in text and "A check failed" not in text
