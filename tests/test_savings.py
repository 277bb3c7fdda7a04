"""What sparsity bought (refsparse.savings) and the run summary that prints it."""

import json
import os

import numpy as np
import pytest

from refsparse import savings
from refsparse.cli import main
from refsparse.models import DecoderLM, DecoderLMConfig
from refsparse.nn import Linear, SparseLinear
from refsparse.prune import sparsify
from refsparse.train import TrainConfig, Trainer

from test_train import DENSE, TINY, tiny_text

QUIET = {"progress": False, "log": lambda *a: None}


def lm(attention="full", sparsity=0.0, dtype="float64", seed=0):
    cfg = DecoderLMConfig(vocab_size=11, d_model=16, n_heads=2, n_layers=2, d_ff=24, max_len=20,
                          attention=attention, dtype=dtype)
    model = DecoderLM(cfg, rng=np.random.default_rng(seed))
    if sparsity:
        sparsify(model, sparsity, criterion="random", rng=np.random.default_rng(seed + 1))
    return model


def test_weight_counts_per_kind_from_the_layers_themselves():
    model = lm(sparsity=0.75)
    counts = savings.weight_counts(model)
    # counted here from the modules, by name: attention q/k/v/out, feed-forward linear1/2
    want = {"attention": [0, 0], "feedforward": [0, 0]}
    for name, mod in model.named_modules():
        if isinstance(mod, (Linear, SparseLinear)) and not name.startswith("head"):
            kind = "attention" if ".attn." in f".{name}." or "_proj" in name else "feedforward"
            w = mod.weight.value
            want[kind][0] += w.nnz if hasattr(w, "nnz") else w.size
            want[kind][1] += w.shape[0] * w.shape[1]
    for kind, (stored, cells) in want.items():
        assert (counts[kind]["stored"], counts[kind]["cells"]) == (stored, cells)
    assert counts["attention"]["cells"] == 2 * 4 * 16 * 16  # 2 layers × q, k, v, out
    assert counts["feedforward"]["cells"] == 2 * 2 * 16 * 24  # 2 layers × linear1, linear2
    total = counts["all"]
    assert total["stored"] == want["attention"][0] + want["feedforward"][0]
    assert total["sparsity"] == pytest.approx(0.75, abs=0.01)


def test_attention_entries_of_a_causal_window_and_of_full_attention():
    t, w = 20, 6
    per_row = sum(min(i + 1, w) for i in range(t)) / t  # query i sees keys max(0, i-w+1) .. i
    got = savings.attention_entries(lm(f"local:window={w}"), t)
    assert got == {"per_row": pytest.approx(per_row, rel=1e-15), "t": t, "full_per_row": (t + 1) / 2}
    assert savings.attention_entries(lm("full"), t)["per_row"] == (t + 1) / 2
    mixed = lm(["full", f"local:window={w}"])
    assert savings.attention_entries(mixed, t)["per_row"] == pytest.approx(((t + 1) / 2 + per_row) / 2)


def test_dense_twin_computes_what_the_sparse_model_computes():
    model = lm(sparsity=0.8)  # full attention: the twin differs only in how weights are stored
    twin = savings.dense_twin(model)
    assert not any(isinstance(m, SparseLinear) for _, m in twin.named_modules())
    ids = np.random.default_rng(5).integers(0, 11, (3, 20))
    np.testing.assert_allclose(twin.forward(ids), model.forward(ids), rtol=1e-12, atol=1e-14)
    assert twin.config.attention == "full"
    assert savings.dense_twin(lm("local:window=4")).config.attention == "full"


def test_sparse_copy_shares_nothing_with_the_model():
    model = lm("local:window=4", sparsity=0.8)
    copy = savings.sparse_copy(model)
    ids = np.random.default_rng(5).integers(0, 11, (3, 20))
    before = model.forward(ids)
    np.testing.assert_array_equal(copy.forward(ids), before)
    for _, p in copy.parameters():
        (p.value.data if hasattr(p.value, "nnz") else p.value)[...] = 0.0
    np.testing.assert_array_equal(model.forward(ids), before)


def test_the_dense_twins_checkpoint_is_the_size_of_a_dense_runs(tmp_path):
    """The twin's checkpoint bytes against a real dense run of the same model, same steps."""
    base = dict(text=tiny_text(tmp_path), out_dir=str(tmp_path / "runs"), **{**TINY, "steps": 4},
                compare_steps=2)
    sparse = Trainer(TrainConfig(name="s", **{**base, "sparsity": 0.8, "method": "static"}), **QUIET)
    out = sparse.run()
    dense = Trainer(TrainConfig(name="d", **base), **QUIET)
    dense.run()
    got = out["savings"]["checkpoint_bytes"]
    assert got["model"] == os.path.getsize(out["checkpoint"])
    real = os.path.getsize(os.path.join(dense.run_dir, "checkpoint.npz"))
    assert abs(got["dense"] - real) <= 0.01 * real  # the JSON headers differ by a few bytes
    assert got["model"] < got["dense"]  # a tiny model: embeddings and norms are most of it


def test_measuring_leaves_the_run_untouched(tmp_path):
    """Timing steps on copies changes nothing: the same run with and without them ends equal."""
    def run(name, compare_steps):
        cfg = TrainConfig(text=tiny_text(tmp_path), out_dir=str(tmp_path / "runs"), name=name,
                          **{**TINY, "steps": 5, "sparsity": 0.5, "method": "gmp", "prune_begin": 0.2,
                             "prune_end": 0.6, "prune_every": 1, "attention": "local:window=4",
                             "compare_steps": compare_steps})
        tr = Trainer(cfg, **QUIET)
        out = tr.run()
        return tr, out

    a, out_a = run("a", 3)
    b, out_b = run("b", 0)
    assert out_a["val_loss"] == out_b["val_loss"]
    for (name, p), (_, q) in zip(a.model.parameters(), b.model.parameters()):
        va = p.value.toarray() if hasattr(p.value, "nnz") else p.value
        vb = q.value.toarray() if hasattr(q.value, "nnz") else q.value
        np.testing.assert_array_equal(va, vb, err_msg=name)
    assert a._rng_states() == b._rng_states()
    assert out_a["savings"]["step_ms"]["steps"] == 3 and "step_ms" not in out_b["savings"]
    with open(a.metrics_path) as f:
        final = [json.loads(line) for line in f][-1]
    assert final["eval"] == "final" and final["savings"] == out_a["savings"]


def test_the_default_run_prints_what_sparsity_bought(tmp_path, capsys):
    sets = [f"--set={k}={v}" for k, v in {**TINY, "steps": 4, "compare_steps": 2}.items() if k not in DENSE]
    assert main(["train", "--text", tiny_text(tmp_path), "--out-dir", str(tmp_path / "runs"),
                 "--no-progress", *sets]) == 0
    out = capsys.readouterr().out
    assert "gmp, sparsity 0.9" in out and "attention local:window=8" in out  # the start line
    for start in ("sparsity: attention weights ", "stored: ", "attention: ", "checkpoint: ",
                  "step time: "):
        assert any(line.startswith(start) for line in out.splitlines()), start
    assert "(stored as CSR)" in out and "entries per query row, T = 16" in out


def test_dense_is_the_dense_baseline_and_refuses_a_sparsity(tmp_path, capsys):
    from refsparse.cli import _build_train_config, build_parser

    args = build_parser().parse_args(["train", "--dense"])
    cfg = _build_train_config(args)
    assert (cfg.sparse.sparsity, cfg.sparse.method, cfg.model.attention, cfg.optim.steps) == \
        (0.0, "static", "full", 600)
    assert cfg.model == TrainConfig().model.__class__(**{**TrainConfig().model.__dict__, "attention": "full"})
    args = build_parser().parse_args(["train", "--dense", "--steps", "1200",
                                      "--attention", "local:window=16"])
    cfg = _build_train_config(args)
    assert (cfg.optim.steps, cfg.model.attention, cfg.sparse.sparsity) == (1200, "local:window=16", 0.0)
    for extra in (["--sparsity", "0.5"], ["--method", "rigl"], ["--set", "sparsity=0.5"]):
        assert main(["train", "--dense", *extra, "--out-dir", str(tmp_path / "runs")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--dense" in err
    assert not (tmp_path / "runs").exists()


def test_progress_bar_shows_the_sparsity_while_a_method_prunes(tmp_path, capsys):
    cfg = TrainConfig(text=tiny_text(tmp_path), out_dir=str(tmp_path / "runs"), name="p",
                      **{**TINY, "steps": 6, "sparsity": 0.5, "method": "gmp", "prune_begin": 0.0,
                         "prune_end": 0.5, "prune_every": 1, "compare_steps": 0})
    Trainer(cfg, progress=True, log=lambda *a: None).run()
    err = capsys.readouterr().err
    shown = {float(part.split("sparsity=")[1].split("]")[0].split(",")[0])
             for part in err.split("\r") if "sparsity=" in part}
    assert 0.5 in shown and len(shown) >= 2  # it changed while the bar ran
