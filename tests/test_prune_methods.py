"""Sparse training methods: schedules, pattern changes, optimizer state, the trainer and CLI.

Each method must hold exactly the sparsity it promises per layer at every step where its
schedule fixes it; SET and RigL keep the stored count constant across updates; grown
entries start at zero with zero optimizer state; stored zeros survive steps and
checkpoints; a 90%-sparse checkpoint is at most a quarter of the dense one.
"""

import math
import os

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

from refsparse.checkpoint import load_checkpoint
from refsparse.cli import main
from refsparse.nn.layers import Linear
from refsparse.nn.sparse import SparseLinear
from refsparse.optim import AdamW
from refsparse.prune import (
    GMP,
    SET,
    RigL,
    cosine_drop_fraction,
    csr_positions,
    dense_grad_topk,
    gmp_sparsity,
    grow_random,
    layer_nnz,
    make_method,
    prunable_layers,
    set_pattern,
    sparse_layers,
)
from refsparse.train import Trainer

from test_train import make_trainer, tiny_text

QUIET = dict(progress=False, log=lambda *a: None)


def per_layer_nnz(model):
    return {name: layer.nnz for name, layer in sparse_layers(model)}


def planned(model, sparsity, distribution="uniform"):
    shapes = {n: (m.out_features, m.in_features) for n, m in prunable_layers(model)}
    return layer_nnz(shapes, sparsity, distribution)


# -- schedules ---------------------------------------------------------------------------


def test_gmp_schedule_is_zhu_and_gupta_cubic():
    s_f, s_i, t0, end, dt = 0.9, 0.1, 100, 400, 25
    n = (end - t0) // dt
    for k in range(n + 1):
        t = t0 + k * dt
        want = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3  # the paper's formula
        assert gmp_sparsity(t, s_f, initial=s_i, begin=t0, end=end, every=dt) == pytest.approx(want)
        # constant until the next pruning step
        for u in range(t, min(t + dt, end)):
            assert gmp_sparsity(u, s_f, initial=s_i, begin=t0, end=end, every=dt) == pytest.approx(want)
    assert gmp_sparsity(t0 - 1, s_f, initial=s_i, begin=t0, end=end, every=dt) == s_i
    assert gmp_sparsity(10**6, s_f, initial=s_i, begin=t0, end=end, every=dt) == s_f
    seq = [gmp_sparsity(t, s_f, initial=s_i, begin=t0, end=end, every=dt) for t in range(600)]
    assert all(a <= b for a, b in zip(seq, seq[1:]))


def test_rigl_cosine_drop_fraction():
    for t in (0, 10, 50, 99):
        assert cosine_drop_fraction(t, 0.3, 100) == pytest.approx(0.15 * (1 + math.cos(math.pi * t / 100)))
    assert cosine_drop_fraction(100, 0.3, 100) == 0.0
    assert cosine_drop_fraction(0, 0.3, 100) == pytest.approx(0.3)


# -- the building blocks -----------------------------------------------------------------


@given(total=st.integers(1, 300), data=st.data())
def test_grow_random_draws_distinct_free_positions(total, data):
    n_kept = data.draw(st.integers(0, total))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    kept = np.sort(rng.choice(total, size=n_kept, replace=False)).astype(np.int64)
    count = data.draw(st.integers(0, total - n_kept))
    grown = grow_random(kept, total, count, rng)
    assert grown.size == count and np.unique(grown).size == count
    assert np.all((grown >= 0) & (grown < total))
    assert not np.isin(grown, kept).any()
    with pytest.raises(ValueError, match="count"):
        grow_random(kept, total, total - n_kept + 1, rng)


def test_grow_random_is_uniform_over_free_positions():
    rng = np.random.default_rng(0)
    kept = np.array([0, 1, 5, 6, 7], dtype=np.int64)
    hits = np.zeros(10)
    for _ in range(4000):
        hits[grow_random(kept, 10, 2, rng)] += 1
    free = np.setdiff1d(np.arange(10), kept)
    assert hits[kept].sum() == 0
    assert np.allclose(hits[free] / 4000, 2 / 5, atol=0.04)  # each free cell: P = 2/5


def _trained_sparse_layer(rng, density=0.3, steps=2):
    """A SparseLinear with AdamW state after a few steps (so state buffers are non-zero)."""
    layer = SparseLinear(12, 7, density=density, rng=rng)
    opt = AdamW([("w", layer.weight), ("b", layer.bias)], lr=1e-2, weight_decay=0.1)
    for _ in range(steps):
        x = rng.standard_normal((5, 12))
        layer.zero_grad()
        layer.forward(x)
        layer.backward(rng.standard_normal((5, 7)))
        opt.step()
    return layer, opt


def test_set_pattern_keeps_continuing_entries_and_zeroes_new_ones(rng):
    layer, opt = _trained_sparse_layer(rng)
    old = layer.weight.value.copy()
    old_pos = csr_positions(old)
    old_state = {k: v.copy() for k, v in opt.state["w"].items()}
    keep = old_pos[::2]  # drop every other entry
    free = np.setdiff1d(np.arange(7 * 12), old_pos)
    new = np.union1d(keep, free[:5])
    old_to_new = set_pattern(layer, new, opt, "w")
    w = layer.weight.value
    assert np.array_equal(csr_positions(w), new)
    dense_old, dense_new = old.toarray().reshape(-1), w.toarray().reshape(-1)
    assert np.array_equal(dense_new[keep], dense_old[keep])  # continuing values
    assert np.all(dense_new[free[:5]] == 0.0)  # grown at zero, and stored
    assert w.nnz == new.size
    for k, buf in opt.state["w"].items():
        continuing = old_to_new >= 0
        assert np.array_equal(buf[continuing], old_state[k][old_to_new[continuing]])
        assert np.all(buf[~continuing] == 0.0)  # grown entries: zero optimizer state
    assert np.isin(new[~(old_to_new >= 0)], free[:5]).all()
    opt.step()  # shapes agree: the optimizer takes the new pattern


def test_dense_grad_topk_matches_the_dense_gradient(rng):
    dy, x = rng.standard_normal((9, 11)), rng.standard_normal((9, 6))
    g = np.abs(dy.T @ x).reshape(-1)  # (out · in,), the dense gradient's magnitudes
    exclude = np.sort(rng.choice(g.size, 20, replace=False)).astype(np.int64)
    for k in (0, 1, 7, g.size - 20):
        for block_rows in (1, 4, 64):
            got = dense_grad_topk(dy, x, exclude, k, block_rows)
            free = np.setdiff1d(np.arange(g.size), exclude)
            want = np.sort(free[np.argsort(-g[free], kind="stable")[:k]])
            assert np.array_equal(got, want)


# -- the methods on a model, step by step -------------------------------------------------


@pytest.mark.parametrize("distribution", ["uniform", "erk"])
def test_static_holds_its_pattern(tmp_path, distribution):
    tr = make_trainer(tmp_path, sparsity=0.8, method="static", distribution=distribution)
    want = planned(tr.model, 0.8, distribution)
    assert per_layer_nnz(tr.model) == want and set(want) == {n for n, _ in prunable_layers(tr.model)}
    patterns = {n: csr_positions(m.weight.value) for n, m in sparse_layers(tr.model)}
    for _ in range(4):
        tr.train_step()
    for n, m in sparse_layers(tr.model):
        assert np.array_equal(csr_positions(m.weight.value), patterns[n])
    if distribution == "erk":
        total = sum(m.out_features * m.in_features for _, m in prunable_layers(tr.model))
        assert sum(want.values()) == round(total * 0.2)


@pytest.mark.parametrize("method", ["set", "rigl"])
def test_set_and_rigl_keep_the_count_and_grow_at_zero_state(tmp_path, method):
    tr = make_trainer(tmp_path, sparsity=0.7, method=method, update_every=2, drop_fraction=0.4,
                      steps=12, update_end=0.9)
    counts = per_layer_nnz(tr.model)
    assert counts == planned(tr.model, 0.7)
    changed_any = False
    for step in range(1, 12):
        before = {n: csr_positions(m.weight.value) for n, m in sparse_layers(tr.model)}
        tr.train_step()
        assert per_layer_nnz(tr.model) == counts, f"step {step}"
        for n, m in sparse_layers(tr.model):
            pos = csr_positions(m.weight.value)
            new = ~np.isin(pos, before[n])
            if tr.method.is_update_step(step):
                changed_any |= bool(new.any())
                # grown entries: value 0.0 and zero Adam state, right after the update
                assert np.all(m.weight.value.data[new] == 0.0)
                for buf in tr.opt.state[f"{n}.weight"].values():
                    assert np.all(buf[new] == 0.0)
            else:
                assert not new.any(), f"pattern changed at step {step}, not an update step"
    assert changed_any


def test_rigl_grows_where_the_dense_gradient_is_largest(rng):
    from refsparse.nn import Module

    class Net(Module):
        def __init__(self):
            super().__init__()
            self.ff = Linear(10, 8, rng=rng)

    net = Net()
    net.ff = SparseLinear(10, 8, density=0.5, rng=rng)
    method = RigL(0.5, every=1, drop_fraction=0.5, end=100)
    opt = AdamW(net.parameters(), lr=1e-2)
    method.before_step(1, net)
    x, dy = rng.standard_normal((6, 10)), rng.standard_normal((6, 8))
    net.zero_grad()
    net.ff.forward(x)
    net.ff.backward(dy)
    w = net.ff.weight.value
    pos, data = csr_positions(w), w.data.copy()
    k = round(cosine_drop_fraction(1, 0.5, 100) * w.nnz)
    kept = np.sort(pos[np.argsort(np.abs(data), kind="stable")[k:]])  # drop the k smallest
    g = np.abs(dy.T @ x).reshape(-1)  # the dense gradient, computed here from its definition
    free = np.setdiff1d(np.arange(80), kept)
    grown = free[np.argsort(-g[free], kind="stable")[:k]]
    method.after_step(1, net, opt)
    assert np.array_equal(csr_positions(net.ff.weight.value), np.union1d(kept, grown))
    assert net.ff.grad_output is None and not net.ff.keep_grad_output  # nothing dense kept


def test_rigl_stops_at_its_end_step():
    m = RigL(0.9, every=10, drop_fraction=0.3, end=50)
    assert [t for t in range(1, 100) if m.is_update_step(t)] == [10, 20, 30, 40]


@pytest.mark.parametrize("method", ["set", "rigl"])
def test_rigl_update_steps_change_connections_not_weights(tmp_path, method):
    """Evci et al. 2020, Algorithm 1: at an update step RigL changes the connections *instead
    of* taking the optimizer step, so the entries it keeps hold the values from before the
    step and AdamW's step count does not advance. SET steps the optimizer at every step."""
    tr = make_trainer(tmp_path, sparsity=0.7, method=method, update_every=2, drop_fraction=0.4,
                      steps=8, update_end=0.9)
    for step in range(1, 8):
        before = {n: (csr_positions(m.weight.value), m.weight.value.data.copy()) for n, m in sparse_layers(tr.model)}
        count = tr.opt.step_count
        tr.train_step()
        skipped = method == "rigl" and tr.method.is_update_step(step)
        assert tr.opt.step_count == count + (0 if skipped else 1), f"step {step}"
        for n, m in sparse_layers(tr.model):
            pos, old_pos_data = csr_positions(m.weight.value), before[n]
            kept = np.isin(pos, old_pos_data[0])
            old = old_pos_data[1][np.searchsorted(old_pos_data[0], pos[kept])]
            if skipped:
                np.testing.assert_array_equal(m.weight.value.data[kept], old, err_msg=f"step {step}, {n}")
            else:
                assert not np.array_equal(m.weight.value.data[kept], old), f"step {step}, {n}"


def test_method_arguments_take_numpy_numbers_and_rigl_needs_its_end():
    assert SET(np.float32(0.9), every=2, drop_fraction=0.3).sparsity == pytest.approx(0.9)
    assert RigL(np.float64(0.5), every=np.int64(2), drop_fraction=0.3, end=np.int64(10)).end == 10
    with pytest.raises(ValueError, match=r"end: expected a positive step number .*None"):
        RigL(0.8, every=2, drop_fraction=0.3, end=None)
    with pytest.raises(ValueError, match=r"end: .*got 0"):
        RigL(0.8, every=2, drop_fraction=0.3, end=0)


def test_gmp_prunes_on_schedule_to_the_exact_counts(tmp_path):
    tr = make_trainer(tmp_path, sparsity=0.75, method="gmp", steps=20, prune_begin=0.2,
                      prune_end=0.6, prune_every=2)
    m = tr.method
    assert isinstance(m, GMP) and (m.begin, m.end, m.every) == (4, 12, 2)
    seen = []
    for step in range(1, 21):
        tr.train_step()
        s = m.target(step)
        if s == 0:
            assert not sparse_layers(tr.model), f"step {step}"  # still dense
            continue
        assert per_layer_nnz(tr.model) == planned(tr.model, s), f"step {step}"
        seen.append(s)
    assert len(set(seen)) == 4 and seen[-1] == 0.75  # pruned at steps 6, 8, 10, 12


def test_gmp_keeps_the_largest_and_moves_adam_state(tmp_path):
    tr = make_trainer(tmp_path, sparsity=0.5, method="gmp", steps=10, prune_begin=0.5,
                      prune_end=0.5, prune_every=1)
    for _ in range(4):
        tr.train_step()
    # run step 5's update by hand so the state just before the pruning is visible
    names = [n for n, _ in prunable_layers(tr.model)]
    method, tr.method = tr.method, None
    tr.train_step()
    tr.method = method
    dense = {n: dict(tr.model.named_modules())[n].weight.value.copy() for n in names}
    state = {n: {k: v.copy() for k, v in tr.opt.state[f"{n}.weight"].items()} for n in names}
    assert method.after_step(5, tr.model, tr.opt)
    for n in names:
        lin = dict(tr.model.named_modules())[n]
        assert isinstance(lin, SparseLinear)
        pos = csr_positions(lin.weight.value)
        flat = np.abs(dense[n]).reshape(-1)
        dropped = np.setdiff1d(np.arange(flat.size), pos)
        assert flat[pos].min() >= flat[dropped].max()
        assert np.array_equal(lin.weight.value.data, dense[n].reshape(-1)[pos])
        for k, buf in tr.opt.state[f"{n}.weight"].items():
            assert np.array_equal(buf, state[n][k].reshape(-1)[pos])
        assert tr.opt.params[f"{n}.weight"] is lin.weight
    tr.train_step()  # the optimizer steps on the new parameters


def test_imp_rounds_prune_and_rewind(tmp_path):
    tr = make_trainer(tmp_path, sparsity=0.75, method="imp", steps=6, imp_rounds=2, imp_rewind=0.5)
    summary = tr.run()
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[1]["sparsity"] == pytest.approx(0.5) and rounds[2]["sparsity"] == 0.75
    assert per_layer_nnz(tr.model) == planned(tr.model, 0.75)
    assert tr.step == 6


def test_imp_rewinds_survivors_to_step_k(tmp_path):
    tr = make_trainer(tmp_path, sparsity=0.5, method="imp", steps=6, imp_rounds=1, imp_rewind=0.5)
    while tr.step < 6:  # the dense run, driven by the method's hooks like any other
        tr.train_step()
    snap = tr.method.snapshot
    assert snap["step"] == 3
    trained = {n: lin.weight.value.copy() for n, lin in prunable_layers(tr.model)}
    assert tr.method.end_of_run(tr) is True
    assert tr.method.end_of_run(tr) is False  # one round only
    assert tr.step == 3
    for n, lin in sparse_layers(tr.model):
        pos = csr_positions(lin.weight.value)
        flat = np.abs(trained[n]).reshape(-1)
        assert flat[pos].min() >= np.delete(flat, pos).max()  # chosen by trained magnitude
        rewound = snap["model"][f"{n}.weight"].reshape(-1)[pos]
        assert np.array_equal(lin.weight.value.data, rewound)  # values from step k
        assert np.array_equal(tr.opt.state[f"{n}.weight"]["exp_avg"],
                              snap["optim"][f"exp_avg.{n}.weight"].reshape(-1)[pos])
    for name, p in tr.model.parameters():
        if not p.is_sparse:
            assert np.array_equal(p.value, snap["model"][name]), name


def test_imp_reinit_control_uses_fresh_weights(tmp_path):
    tr = make_trainer(tmp_path, sparsity=0.5, method="imp", steps=4, imp_rounds=1, imp_rewind=0.0,
                      imp_control="reinit")
    while tr.step < 4:
        tr.train_step()
    init = tr.method.snapshot["model"]
    tr.method.end_of_run(tr)
    assert tr.step == 0
    for n, lin in sparse_layers(tr.model):
        pos = csr_positions(lin.weight.value)
        assert not np.array_equal(lin.weight.value.data, init[f"{n}.weight"].reshape(-1)[pos])


def _imp_patterns(tmp_path, control):
    """Each round's pattern of an IMP run: {round: {layer: positions}}."""
    (tmp_path / control).mkdir()
    tr = make_trainer(tmp_path / control, sparsity=0.75, method="imp", steps=6, imp_rounds=3, imp_rewind=0.5,
                      imp_control=control)
    patterns, end_of_run = {}, tr.method.end_of_run

    def record(run):
        more = end_of_run(run)
        if more:
            patterns[tr.method.round] = {n: csr_positions(lin.weight.value) for n, lin in sparse_layers(tr.model)}
        return more

    tr.method.end_of_run = record
    tr.run()
    return patterns


def test_imp_reinit_control_trains_the_tickets_pattern_in_every_round(tmp_path):
    """Frankle & Carbin's control re-initialises the winning ticket: its round-r pattern is
    the ticket's, pruned from the ticket's weights of round r − 1 — not from the control's
    own (which gave another pattern from round 2 on)."""
    ticket, control = _imp_patterns(tmp_path, "rewind"), _imp_patterns(tmp_path, "reinit")
    assert sorted(ticket) == sorted(control) == [1, 2, 3]
    for r in ticket:
        assert ticket[r].keys() == control[r].keys()
        for n in ticket[r]:
            np.testing.assert_array_equal(control[r][n], ticket[r][n], err_msg=f"round {r}, {n}")


def test_imp_rewind_to_the_last_step_is_refused():
    from refsparse.train import TrainConfig

    with pytest.raises(ValueError, match=r"imp_rewind: expected .*k < steps=10.*1\.0 \(k = 10\)"):
        TrainConfig(method="imp", sparsity=0.5, steps=10, warmup_steps=0, imp_rewind=1.0).validate()
    TrainConfig(method="imp", sparsity=0.5, steps=10, warmup_steps=0, imp_rewind=0.9).validate()
    TrainConfig(method="gmp", sparsity=0.5, steps=10, warmup_steps=0, imp_rewind=1.0).validate()  # unused


# -- checkpoints and resume ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["static", "gmp", "set", "rigl"])
def test_sparse_runs_resume_bit_identically(tmp_path, method):
    kw = dict(sparsity=0.6, method=method, steps=10, update_every=2, prune_every=2,
              prune_begin=0.2, prune_end=0.6, dropout=0.1)
    straight = make_trainer(tmp_path, **kw)
    losses = [straight.train_step() for _ in range(10)]
    first = make_trainer(tmp_path, **kw)
    head = [first.train_step() for _ in range(5)]
    path = first.save(str(tmp_path / "mid.npz"))
    resumed = Trainer.resume(path, **QUIET)
    tail = [resumed.train_step() for _ in range(5)]
    assert head + tail == losses
    for (name, p), (_, q) in zip(straight.model.parameters(), resumed.model.parameters()):
        if p.is_sparse:
            assert (p.value != q.value).nnz == 0 and np.array_equal(p.value.indices, q.value.indices)
        else:
            assert np.array_equal(p.value, q.value), name


def _interrupted_at(tr, n):
    """Make the n-th call of tr.train_step raise KeyboardInterrupt (as Ctrl-C would there)."""
    calls, step = [0], tr.train_step

    def train_step():
        calls[0] += 1
        if calls[0] == n:
            raise KeyboardInterrupt
        return step()

    tr.train_step = train_step
    return tr


@pytest.mark.parametrize("control,at", [("rewind", 6), ("reinit", 6), ("reinit", 10)])
def test_imp_resumes_bit_identically_after_an_interrupt(tmp_path, control, at):
    """An IMP run interrupted in a round (or, reinit at 10, while it trains the ticket between
    rounds) resumes to the same final weights, patterns and round records as a straight run."""
    kw = dict(sparsity=0.5, method="imp", steps=4, imp_rounds=2, imp_rewind=0.25, imp_control=control)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = make_trainer(tmp_path / "a", **kw)
    want = straight.run()
    first = _interrupted_at(make_trainer(tmp_path / "b", **kw), at)
    assert first.run()["interrupted"]
    resumed = Trainer.resume(os.path.join(first.run_dir, "checkpoint.npz"), **QUIET)
    got = resumed.run()
    assert resumed.method.round == 2 and got["rounds"][-1]["round"] == 2
    assert got["val_loss"] == want["val_loss"]
    for (name, p), (_, q) in zip(straight.model.parameters(), resumed.model.parameters()):
        if p.is_sparse:
            assert np.array_equal(p.value.indices, q.value.indices), name
            assert np.array_equal(p.value.indptr, q.value.indptr), name
            assert np.array_equal(p.value.data, q.value.data), name
        else:
            assert np.array_equal(p.value, q.value), name


def test_stored_zeros_survive_steps_and_checkpoints(tmp_path):
    tr = make_trainer(tmp_path, sparsity=0.5, method="static")
    name, layer = sparse_layers(tr.model)[0]
    layer.weight.value.data[:5] = 0.0  # five stored zeros
    nnz = layer.nnz
    for _ in range(2):
        tr.train_step()
    assert layer.nnz == nnz
    layer.weight.value.data[:5] = 0.0
    path = tr.save(str(tmp_path / "z.npz"))
    stored = load_checkpoint(path).model_state[f"{name}.weight"]
    assert stored.nnz == nnz and np.all(stored.data[:5] == 0.0)
    resumed = Trainer.resume(path, **QUIET)
    again = dict(resumed.model.named_modules())[name]
    assert again.nnz == nnz and np.all(again.weight.value.data[:5] == 0.0)


def test_a_90_percent_sparse_checkpoint_is_at_most_a_quarter_of_the_dense_one(tmp_path):
    # the default model's shape (d_model 128, 3 layers, d_ff 512), one step, both with AdamW state
    kw = dict(d_model=128, n_heads=4, n_layers=3, d_ff=512, seq_len=64, steps=2)
    sizes = {}
    for s in (0.0, 0.9):
        tr = make_trainer(tmp_path, sparsity=s, **kw)
        tr.train_step()
        sizes[s] = os.path.getsize(tr.save(str(tmp_path / f"c{s}.npz")))
    assert sizes[0.9] <= 0.25 * sizes[0.0], sizes


def test_checkpoints_hold_sparse_weights_as_narrow_csr_arrays(tmp_path):
    tr = make_trainer(tmp_path, sparsity=0.5)
    path = tr.save(str(tmp_path / "c.npz"))
    ckpt = load_checkpoint(path)
    assert any(sp.issparse(v) for v in ckpt.model_state.values())
    with np.load(path) as z:  # d_model 16 columns: indices fit in one byte
        assert z["model/blocks.0.self_attn.q_proj.weight/indices"].dtype == np.uint8
    for name, layer in sparse_layers(tr.model):
        got = ckpt.model_state[f"{name}.weight"]
        assert got.indices.dtype == layer.weight.value.indices.dtype
        assert np.array_equal(got.indices, layer.weight.value.indices)


# -- the command line ---------------------------------------------------------------------


def test_cli_sparse_train_prune_info(tmp_path, capsys):
    text = tiny_text(tmp_path)
    common = ["--text", text, "--out-dir", str(tmp_path / "runs"), "--no-progress",
              "--set", "d_model=16", "--set", "n_heads=2", "--set", "n_layers=1", "--set", "d_ff=32",
              "--set", "seq_len=16", "--set", "batch_size=4", "--set", "warmup_steps=1",
              "--set", "sample_chars=5", "--steps", "4"]
    assert main(["train", *common, "--name", "rigl", "--sparsity", "0.8", "--method", "rigl",
                 "--distribution", "erk", "--set", "update_every=2"]) == 0
    out = capsys.readouterr().out
    assert "rigl, sparsity 0.8, erk" in out
    ckpt = str(tmp_path / "runs" / "rigl" / "checkpoint.npz")
    assert main(["info", ckpt]) == 0
    out = capsys.readouterr().out
    assert "csr" in out and "sparse layers: 6, 410 of 2,048 weights stored" in out  # round(0.2 · 2048)
    assert main(["eval", "--checkpoint", ckpt]) == 0
    capsys.readouterr()

    assert main(["train", *common, "--name", "dense", "--dense"]) == 0
    capsys.readouterr()
    dense = str(tmp_path / "runs" / "dense" / "checkpoint.npz")
    for criterion, extra in [("magnitude", []), ("global", []), ("random", []),
                             ("nm", ["--nm", "2:4"]), ("block", ["--block", "1x4"])]:
        out_path = str(tmp_path / f"pruned-{criterion}.npz")
        assert main(["prune", dense, "--sparsity", "0.5", "--criterion", criterion, *extra,
                     "-o", out_path]) == 0, criterion
        assert "wrote" in capsys.readouterr().out
        assert main(["sample", "--checkpoint", out_path, "--prompt", "alpha", "--length", "3"]) == 0
        assert main(["eval", "--checkpoint", out_path]) == 0
        capsys.readouterr()
        assert main(["info", out_path]) == 0
        assert "sparsity 0.5000" in capsys.readouterr().out
    assert main(["prune", dense, "--sparsity", "1.5", "-o", str(tmp_path / "x.npz")]) == 2
    assert "sparsity" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse rejects it, with the choices
        main(["train", *common, "--sparsity", "0.5", "--method", "nope"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_make_method_checks_its_arguments():
    with pytest.raises(ValueError, match="method"):
        make_method("magic", 0.5, steps=10)
    with pytest.raises(ValueError, match="sparsity"):
        SET(1.0, every=1, drop_fraction=0.1)
    with pytest.raises(ValueError, match="distribution"):
        SET(0.5, every=1, drop_fraction=0.1, distribution="normal")
    with pytest.raises(ValueError, match="every"):
        SET(0.5, every=0, drop_fraction=0.1)
    with pytest.raises(ValueError, match="drop_fraction"):
        RigL(0.5, every=1, drop_fraction=2.0, end=10)
    with pytest.raises(ValueError, match="begin"):
        GMP(0.5, begin=10, end=5, every=1)
