"""Sparsifying models: layer choice, per-layer counts (uniform, ERK), the swap, reports.

- ERK: the counts add up to round((1 − s) · total) exactly; the densities before
  rounding equal the paper's, computed here by a different route (bisection on
  Σ_l min(1, ε r_l) N_l = (1 − s) Σ_l N_l); smaller layers are denser; layers that would
  exceed density 1 are dense.
- sparsify: every chosen layer becomes a SparseLinear with exactly the promised count,
  every other module is untouched, and the sparse model computes what the dense model
  with the masked weights computes — logits, and every gradient at the stored entries,
  to 1e-12 relative in float64 — for the decoder-only LM and the encoder-decoder.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refsparse.models import DecoderLM, DecoderLMConfig, Transformer, TransformerConfig
from refsparse.nn import Linear, SparseLinear
from refsparse.prune.criteria import global_magnitude_masks, is_nm, n_keep
from refsparse.prune.sparsify import (
    erk_densities,
    layer_nnz,
    overall_sparsity,
    prunable_layers,
    replace_module,
    sparse_layers,
    sparsify,
    sparsify_like,
    sparsity_report,
)

RTOL = 1e-12


def rel_err(mine, ref):
    mine, ref = np.asarray(mine, np.float64), np.asarray(ref, np.float64)
    assert mine.shape == ref.shape, f"shape {mine.shape} vs {ref.shape}"
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    err = float(np.max(np.abs(mine - ref))) if ref.size else 0.0
    return err / scale if scale > 0 else err


def pattern_mask(w):
    """The stored positions of a CSR array, as a dense bool mask (stored zeros included)."""
    mask = np.zeros(w.shape, bool)
    mask[np.repeat(np.arange(w.shape[0]), np.diff(w.indptr)), w.indices] = True
    return mask


def lm(dtype="float64", tie=True):
    cfg = DecoderLMConfig(vocab_size=11, d_model=8, n_heads=2, n_layers=2, d_ff=16, max_len=8,
                          tie_embeddings=tie, dtype=dtype)
    return DecoderLM(cfg, rng=np.random.default_rng(0))


def seq2seq():
    cfg = TransformerConfig(src_vocab_size=7, tgt_vocab_size=9, d_model=8, n_heads=2, n_encoder_layers=1,
                            n_decoder_layers=1, d_ff=16, dropout=0.0, max_len=8)
    return Transformer(cfg, rng=np.random.default_rng(0))


LM_LAYERS = [f"blocks.{b}.{name}" for b in range(2) for name in (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "ff.linear1", "ff.linear2")]


# ----------------------------------------------------------------------------------------
# which layers
def test_prunable_layers_of_the_models():
    assert [n for n, _ in prunable_layers(lm())] == LM_LAYERS
    assert [n for n, _ in prunable_layers(lm(), include=("feedforward",))] == \
        [n for n in LM_LAYERS if ".ff." in n]
    assert [n for n, _ in prunable_layers(lm(), include="attention")] == \
        [n for n in LM_LAYERS if "attn" in n]
    names = [n for n, _ in prunable_layers(seq2seq())]
    assert names == [
        "encoder.0.self_attn.q_proj", "encoder.0.self_attn.k_proj", "encoder.0.self_attn.v_proj",
        "encoder.0.self_attn.out_proj", "encoder.0.ff.linear1", "encoder.0.ff.linear2",
        "decoder.0.self_attn.q_proj", "decoder.0.self_attn.k_proj", "decoder.0.self_attn.v_proj",
        "decoder.0.self_attn.out_proj", "decoder.0.cross_attn.q_proj", "decoder.0.cross_attn.k_proj",
        "decoder.0.cross_attn.v_proj", "decoder.0.cross_attn.out_proj", "decoder.0.ff.linear1",
        "decoder.0.ff.linear2",
    ]
    # "all": every linear layer but the output head's projection
    untied = lm(tie=False)
    assert "head.proj" in dict(untied.named_modules())
    assert [n for n, _ in prunable_layers(untied, include="all")] == LM_LAYERS
    with pytest.raises(ValueError, match="include"):
        prunable_layers(lm(), include=("embeddings",))


# ----------------------------------------------------------------------------------------
# layer counts
def erk_by_bisection(shapes, s, p=1.0):
    """ERK densities from their defining equation Σ_l min(1, ε r_l) N_l = (1 − s) Σ_l N_l."""
    sizes = np.array([o * i for o, i in shapes.values()], float)
    raw = np.array([((o + i) / (o * i)) ** p for o, i in shapes.values()])
    target = (1 - s) * sizes.sum()
    lo, hi = 0.0, 1.0 / raw.min()  # at hi every layer is dense
    for _ in range(200):
        mid = (lo + hi) / 2
        if (np.minimum(1.0, mid * raw) * sizes).sum() < target:
            lo = mid
        else:
            hi = mid
    return dict(zip(shapes, np.minimum(1.0, hi * raw)))


shape_dicts = st.lists(st.tuples(st.integers(1, 64), st.integers(1, 64)), min_size=1, max_size=6).map(
    lambda shapes: {f"l{i}": s for i, s in enumerate(shapes)})


@given(shape_dicts, st.one_of(st.sampled_from([0.0, 0.5, 0.8, 0.9, 0.95, 0.99]), st.floats(0, 0.999)),
       st.sampled_from([1.0, 0.5, 0.0, 2.0]))
def test_erk_counts_add_up_exactly_and_follow_the_paper(shapes, s, p):
    counts = layer_nnz(shapes, s, "erk", erk_power_scale=p)
    total = sum(o * i for o, i in shapes.values())
    assert list(counts) == list(shapes)
    assert sum(counts.values()) == n_keep(total, s)  # the requested overall sparsity, exactly
    for name, (o, i) in shapes.items():
        assert isinstance(counts[name], int) and 0 <= counts[name] <= o * i
    dens = erk_densities(shapes, s, erk_power_scale=p)
    ref = erk_by_bisection(shapes, s, p)
    for name in shapes:
        assert dens[name] == pytest.approx(ref[name], rel=1e-9, abs=1e-12), name
        assert abs(counts[name] - dens[name] * shapes[name][0] * shapes[name][1]) < 1 + 1e-9
    # smaller raw density ((in + out) / (in · out)) ⇒ no denser
    raw = {n: (o + i) / (o * i) for n, (o, i) in shapes.items()}
    for a in shapes:
        for b in shapes:
            if raw[a] < raw[b]:
                assert dens[a] <= dens[b] * (1 + 1e-12)
    if p == 0.0:
        for name in shapes:
            assert dens[name] == pytest.approx(1 - s)


def test_erk_paper_formula_and_dense_capping():
    shapes = {"big": (64, 64), "mid": (16, 64), "tiny": (1, 2)}
    dens = erk_densities(shapes, 0.5)
    assert dens["tiny"] == 1.0  # ε r would exceed 1: dense
    # ε re-solved over the others: ε (r_big N_big + r_mid N_mid) = 0.5 · Σ N − N_tiny
    r = {n: (o + i) / (o * i) for n, (o, i) in shapes.items()}
    eps = (0.5 * (64 * 64 + 16 * 64 + 2) - 2) / (r["big"] * 64 * 64 + r["mid"] * 16 * 64)
    assert dens["big"] == pytest.approx(eps * r["big"], rel=1e-12)
    assert dens["mid"] == pytest.approx(eps * r["mid"], rel=1e-12)
    assert dens["big"] < dens["mid"] < dens["tiny"]
    counts = layer_nnz(shapes, 0.5, "erk")
    assert counts["tiny"] == 2 and sum(counts.values()) == n_keep(64 * 64 + 16 * 64 + 2, 0.5)
    # no capping needed: ε from the plain equation
    shapes = {"a": (8, 8), "b": (8, 32)}
    dens = erk_densities(shapes, 0.9)
    eps = 0.1 * (64 + 256) / ((16 / 64) * 64 + (40 / 256) * 256)
    assert dens["a"] == pytest.approx(eps * 16 / 64) and dens["b"] == pytest.approx(eps * 40 / 256)
    # sparsity 0: everything dense
    assert erk_densities(shapes, 0.0) == {"a": 1.0, "b": 1.0}
    assert layer_nnz(shapes, 0.0, "erk") == {"a": 64, "b": 256}


@given(shape_dicts, st.floats(0, 0.999))
def test_uniform_counts_are_per_layer(shapes, s):
    counts = layer_nnz(shapes, s)
    assert counts == {n: round(o * i * (1 - s)) for n, (o, i) in shapes.items()}


# ----------------------------------------------------------------------------------------
# the swap: exact counts, others untouched, same math as the masked dense model
def masked_dense_twin(sparse_model, make):
    """A fresh dense model with the sparse model's values, zero off every stored pattern."""
    twin = make()
    params = dict(sparse_model.parameters())
    for name, p in twin.parameters():
        src = params[name]
        p.value[...] = src.value.toarray() if src.is_sparse else src.value  # zeros off the pattern
    return twin


def run(model, kind, seed=3):
    rng = np.random.default_rng(seed)
    model.zero_grad()
    if kind == "lm":
        ids = rng.integers(0, 11, (2, 5))
        logits = model.forward(ids)
    else:
        src, tgt = rng.integers(0, 7, (2, 6)), rng.integers(0, 9, (2, 5))
        logits = model.forward(src, tgt)
    model.backward(rng.standard_normal(logits.shape))  # a random upstream gradient
    return logits


def check_same_math(model, make, kind):
    """Logits and every gradient equal those of the masked dense twin, to RTOL relative.

    Relative to the tensor's largest entry — or, for a tensor whose exact gradient is 0
    (the key projection's bias: softmax ignores a shift shared by a row, so both models
    give rounding noise there), to 1e-3 of the model's largest gradient entry.
    """
    twin = masked_dense_twin(model, make)
    logits, logits_twin = run(model, kind), run(twin, kind)
    assert rel_err(logits, logits_twin) <= RTOL
    twin_params = dict(twin.parameters())
    floor = 1e-3 * max(float(np.abs(p.grad).max()) for _, p in twin.parameters())
    for name, p in model.parameters():
        ref = twin_params[name].grad
        if p.is_sparse:
            w = p.value
            rows = np.repeat(np.arange(w.shape[0]), np.diff(w.indptr))
            ref = ref[rows, w.indices]  # the dense gradient at the stored entries
        assert p.grad.shape == ref.shape, name
        err = float(np.abs(p.grad - ref).max()) if ref.size else 0.0
        scale = max(float(np.abs(ref).max()) if ref.size else 0.0, floor)
        assert err <= RTOL * scale, f"{name}: gradient error {err:.3e}, scale {scale:.3e}"


@pytest.mark.parametrize("criterion, kw", [
    ("magnitude", {}), ("magnitude", {"distribution": "erk"}), ("random", {}),
    ("random", {"distribution": "erk", "erk_power_scale": 0.5}), ("global", {}),
    ("nm", {"n": 2, "m": 4}), ("block", {"block": (2, 4)}), ("block", {}),
])
@pytest.mark.parametrize("kind", ["lm", "seq2seq"])
def test_sparsify_counts_untouched_and_same_math(criterion, kw, kind):
    make = lm if kind == "lm" else seq2seq
    model = make()
    s = 0.7
    before = dict(model.named_modules())
    values_before = {n: p.value.copy() for n, p in model.parameters()}
    chosen = {n: (m.out_features, m.in_features) for n, m in prunable_layers(model)}
    if criterion == "random":
        kw = {**kw, "rng": np.random.default_rng(5)}
    out = sparsify(model, s, criterion=criterion, **kw)
    assert out is model
    after = dict(model.named_modules())
    assert [n for n, _ in sparse_layers(model)] == list(chosen)
    if criterion in ("magnitude", "random"):
        promised = layer_nnz(chosen, s, kw.get("distribution", "uniform"), kw.get("erk_power_scale", 1.0))
        assert {n: m.nnz for n, m in sparse_layers(model)} == promised
    elif criterion == "global":
        assert sum(m.nnz for _, m in sparse_layers(model)) == n_keep(sum(o * i for o, i in chosen.values()), s)
    elif criterion == "nm":
        for _, layer in sparse_layers(model):
            assert is_nm(pattern_mask(layer.weight.value), 2, 4)
    else:
        bh, bw = kw.get("block", (1, 4))
        for name, layer in sparse_layers(model):
            o, i = chosen[name]
            assert layer.nnz == n_keep(o * i // (bh * bw), s) * bh * bw
    for name, mod in before.items():
        if name in chosen:
            assert isinstance(after[name], SparseLinear) and isinstance(mod, Linear)
        elif not any(name.startswith(c + ".") for c in chosen):
            assert after[name] is mod, f"{name} was replaced"
    # kept values are the dense values there; unchosen parameters unchanged
    for name, p in model.parameters():
        if p.is_sparse:
            w = p.value
            rows = np.repeat(np.arange(w.shape[0]), np.diff(w.indptr))
            np.testing.assert_array_equal(w.data, values_before[name][rows, w.indices])
        else:
            np.testing.assert_array_equal(p.value, values_before[name])
    check_same_math(model, make, kind)


def test_magnitude_keeps_the_largest_per_layer_and_global_matches_criteria():
    model, ref = lm(), lm()
    sparsify(model, 0.8)
    for name, layer in sparse_layers(model):
        dense = dict(ref.named_modules())[name].weight.value
        kept = pattern_mask(layer.weight.value)
        assert kept.sum() == n_keep(dense.size, 0.8)
        assert np.abs(dense[kept]).min() >= np.abs(dense[~kept]).max()
    model = lm()
    weights = {n: m.weight.value.copy() for n, m in prunable_layers(model)}
    sparsify(model, 0.8, criterion="global")
    masks = global_magnitude_masks(weights, 0.8)
    for name, layer in sparse_layers(model):
        np.testing.assert_array_equal(pattern_mask(layer.weight.value), masks[name])


def test_nm_pattern_and_stored_zeros_kept():
    model = lm()
    q = model.blocks[0].self_attn.q_proj
    q.weight.value[0, :4] = 0.0  # a whole group of zeros: two of them stay stored
    sparsify(model, 0.0, criterion="nm", n=2, m=4)
    for _, layer in sparse_layers(model):
        assert is_nm(pattern_mask(layer.weight.value), 2, 4)
    w = model.blocks[0].self_attn.q_proj.weight.value
    np.testing.assert_array_equal(w.indices[:2], [0, 1])
    np.testing.assert_array_equal(w.data[:2], [0.0, 0.0])


def test_only_the_given_layers_and_float32():
    model = lm("float32")
    sparsify(model, 0.5, layers=["blocks.1.ff.linear1", "blocks.0.self_attn.v_proj"])
    assert {n for n, _ in sparse_layers(model)} == {"blocks.1.ff.linear1", "blocks.0.self_attn.v_proj"}
    assert model.blocks[1].ff.linear1.weight.dtype == np.float32
    logits = model.forward(np.zeros((1, 3), np.int64))
    assert logits.dtype == np.float32 and np.isfinite(logits).all()


def test_already_sparse_layers_are_pruned_among_stored_entries():
    model = lm()
    sparsify(model, 0.5, criterion="random", rng=np.random.default_rng(0))
    before = {n: m.weight.value.copy() for n, m in sparse_layers(model)}
    sparsify(model, 0.75)
    for name, layer in sparse_layers(model):
        old, new = before[name], layer.weight.value
        o, i = old.shape
        assert layer.nnz == n_keep(o * i, 0.75)
        old_pos = np.repeat(np.arange(o), np.diff(old.indptr)) * i + old.indices
        new_pos = np.repeat(np.arange(o), np.diff(new.indptr)) * i + new.indices
        assert np.isin(new_pos, old_pos).all()  # a subset of the old pattern
        kept = np.isin(old_pos, new_pos)
        assert np.abs(old.data[kept]).min() >= np.abs(old.data[~kept]).max()
    same = sparse_layers(model)
    sparsify(model, 0.75)  # already there: left as is
    assert all(a[1] is b[1] for a, b in zip(same, sparse_layers(model)))
    sparsify(model, 0.9, criterion="global")
    cells = sum(m.out_features * m.in_features for _, m in sparse_layers(model))
    assert sum(m.nnz for _, m in sparse_layers(model)) == n_keep(cells, 0.9)
    with pytest.raises(ValueError, match="never adds"):
        sparsify(model, 0.5)
    with pytest.raises(TypeError, match="already a SparseLinear"):
        sparsify(model, 0.5, criterion="nm", n=2, m=4)
    check_same_math(model, lm, "lm")


def test_sparsity_zero_stores_every_entry():
    model = lm()
    sparsify(model, 0.0)
    for _, layer in sparse_layers(model):
        assert layer.nnz == layer.out_features * layer.in_features
    check_same_math(model, lm, "lm")


# ----------------------------------------------------------------------------------------
# replace_module, sparsify_like, reports
def test_replace_module_under_a_module_list():
    model = lm()
    new = Linear(8, 8, dtype="float64")
    old = replace_module(model, "blocks.1.ff.linear2", new)
    assert isinstance(old, Linear) and model.blocks[1].ff.linear2 is new
    block = lm().blocks[0]
    replace_module(model, "blocks.0", block)  # a ModuleList slot: the list follows
    assert model.blocks[0] is block and next(iter(model.blocks)) is block
    assert dict(model.named_modules())["blocks.0"] is block
    with pytest.raises(ValueError, match="dotted_name"):
        replace_module(model, "blocks.7.ff", new)
    with pytest.raises(ValueError, match="dotted_name"):
        replace_module(model, "", new)
    with pytest.raises(TypeError, match="new_module"):
        replace_module(model, "blocks.0", "x")


def test_sparsify_like_then_load_state_dict():
    src = lm()
    sparsify(src, 0.8, criterion="random", rng=np.random.default_rng(1))
    state = src.state_dict()
    sparse_names = [n for n, p in src.parameters() if p.is_sparse]
    dst = lm()
    sparsify_like(dst, sparse_names)
    assert [n for n, _ in sparse_layers(dst)] == [n[: -len(".weight")] for n in sparse_names]
    assert all(m.nnz == 0 for _, m in sparse_layers(dst))
    dst.load_state_dict(state)
    ids = np.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(dst.forward(ids), src.forward(ids))
    sparsify_like(dst, sparse_names)  # already sparse: nothing to do
    assert all(m.nnz for _, m in sparse_layers(dst))
    with pytest.raises(ValueError, match="names no layer"):
        sparsify_like(lm(), ["blocks.9.ff.linear1.weight"])
    with pytest.raises(ValueError, match="'.weight'"):
        sparsify_like(lm(), ["blocks.0.ff.linear1.bias"])
    with pytest.raises(TypeError, match="LayerNorm"):
        sparsify_like(lm(), ["norm_f.weight"])


def test_sparsity_report_and_overall_sparsity():
    model = lm()
    assert overall_sparsity(model) == 0.0
    sparsify(model, 0.75)
    rows = {r["name"]: r for r in sparsity_report(model)}
    assert list(rows) == [n for n, _ in model.parameters()]
    q = rows["blocks.0.self_attn.q_proj.weight"]
    assert q == {"name": "blocks.0.self_attn.q_proj.weight", "shape": (8, 8), "size": 64, "nnz": 16,
                 "sparsity": 0.75, "sparse": True}
    assert rows["tok_embed.weight"]["sparse"] is False and rows["tok_embed.weight"]["sparsity"] == 0.0
    assert overall_sparsity(model) == 0.75  # every prunable layer at exactly 0.75 here
    n_all = sum(r["size"] for r in rows.values())
    n_stored = sum(r["nnz"] for r in rows.values())
    assert overall_sparsity(model, only_prunable=False) == pytest.approx(1 - n_stored / n_all)


# ----------------------------------------------------------------------------------------
# errors
def test_bad_inputs_give_clear_errors():
    cases = [
        (lambda m: sparsify(m, 1.0), ValueError, "sparsity"),
        (lambda m: sparsify(m, -0.5), ValueError, "sparsity"),
        (lambda m: sparsify(m, 0.5, criterion="taylor"), ValueError, "criterion"),
        (lambda m: sparsify(m, 0.5, distribution="normal"), ValueError, "distribution"),
        (lambda m: sparsify(m, 0.5, criterion="global", distribution="erk"), ValueError, "distribution"),
        (lambda m: sparsify(m, 0.5, criterion="nm", n=2), ValueError, "n, m"),
        (lambda m: sparsify(m, 0.5, criterion="nm", n=5, m=4), ValueError, "n"),
        (lambda m: sparsify(m, 0.5, criterion="nm", n=2, m=3), ValueError, "divisible by m=3"),
        (lambda m: sparsify(m, 0.5, n=2, m=4), ValueError, "n, m"),
        (lambda m: sparsify(m, 0.5, block=(1, 4)), ValueError, "block"),
        (lambda m: sparsify(m, 0.5, criterion="block", block=(3, 4)), ValueError, "divisible by block"),
        (lambda m: sparsify(m, 0.5, criterion="random"), TypeError, "rng"),
        (lambda m: sparsify(m, 0.5, layers=["nope"]), ValueError, "layers"),
        (lambda m: sparsify(m, 0.5, layers=["norm_f"]), TypeError, "LayerNorm"),
        (lambda m: sparsify(m, 0.5, layers="blocks.0.ff.linear1"), TypeError, "layers"),
        (lambda m: sparsify(m, 0.5, layers=["blocks.0.ff.linear1"] * 2), ValueError, "distinct"),
        (lambda m: sparsify(m, 0.5, distribution="erk", erk_power_scale=-1.0), ValueError, "erk_power_scale"),
        (lambda m: sparsify("model", 0.5), TypeError, "model"),
        (lambda m: layer_nnz({"a": (0, 3)}, 0.5), ValueError, "shapes\\['a'\\]"),
        (lambda m: layer_nnz({"a": (2, 3)}, 0.5, "erdos"), ValueError, "distribution"),
        (lambda m: layer_nnz([(2, 3)], 0.5), TypeError, "shapes"),
        (lambda m: sparsify_like(m, "blocks.0.ff.linear1.weight"), TypeError, "sparse_param_names"),
    ]
    for call, exc, match in cases:
        model = lm()
        with pytest.raises(exc, match=match):
            call(model)
        assert not sparse_layers(model), "a failed call changed the model"
    m = lm()
    m.blocks[0].ff.linear1.weight.value[0, 0] = np.nan
    with pytest.raises(ValueError, match="blocks.0.ff.linear1.weight"):
        sparsify(m, 0.5)
