"""Tests of refsparse.optim: optimizers against torch.optim, sparse parameters, state, schedules."""

import itertools
import math

import numpy as np
import pytest
import scipy.sparse as sp

from refsparse.nn.module import Parameter
from refsparse.optim import SGD, Adam, AdamW, clip_grad_norm, constant_lr, warmup_cosine

N_STEPS = 20
SHAPES = {"w": (5, 7), "b": (7,), "emb.weight": (4, 3)}


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


# ----------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------
def make_values(rng, dtype=np.float64):
    return {name: rng.standard_normal(shape).astype(dtype) for name, shape in SHAPES.items()}


def make_grads(rng, values, n_steps=N_STEPS):
    """One dict of random gradients per step, of varied scale, with a few exact zeros."""
    out = []
    for _ in range(n_steps):
        step = {}
        for name, v in values.items():
            g = rng.standard_normal(v.shape) * 10.0 ** rng.uniform(-3, 1)
            g[rng.random(v.shape) < 0.1] = 0.0
            step[name] = g.astype(v.dtype)
        out.append(step)
    return out


def params_from(values):
    return [(name, Parameter(v.copy())) for name, v in values.items()]


def run_ours(cls, kwargs, values, grads, lrs=None):
    params = params_from(values)
    opt = cls(params, **kwargs)
    for i, g in enumerate(grads):
        for name, p in params:
            p.grad = g[name].copy()
        if lrs is not None:
            opt.lr = lrs[i]
        opt.step()
    return {name: p.value for name, p in params}, opt


def run_torch(torch, cls_name, kwargs, values, grads, lrs=None):
    tparams = {name: torch.tensor(v.copy(), requires_grad=True) for name, v in values.items()}
    opt = getattr(torch.optim, cls_name)(list(tparams.values()), foreach=False, **kwargs)
    for i, g in enumerate(grads):
        for name, p in tparams.items():
            p.grad = torch.tensor(g[name].copy())
        if lrs is not None:
            opt.param_groups[0]["lr"] = lrs[i]
        opt.step()
    return {name: p.detach().numpy() for name, p in tparams.items()}, opt, tparams


def assert_close(mine, theirs, tol, what=""):
    """max |mine - theirs| <= tol * max |theirs|, with a mine-vs-theirs message."""
    mine, theirs = np.asarray(mine), np.asarray(theirs)
    scale = max(float(np.max(np.abs(theirs))), 1e-300)
    err = float(np.max(np.abs(mine.astype(np.float64) - theirs.astype(np.float64))))
    assert err <= tol * scale, f"{what}: max abs err {err:.3e}, relative {err / scale:.3e} > {tol:.0e}"


def torch_state(topt, tparams, key):
    return {name: topt.state[p][key].numpy() for name, p in tparams.items()}


def case_id(kwargs):
    return ",".join(f"{a}={b}" for a, b in kwargs.items()) or "defaults"


def bits(a):
    return np.ascontiguousarray(a).view(np.uint8).tobytes()


# ----------------------------------------------------------------------------------
# against torch.optim, float64
# ----------------------------------------------------------------------------------
ADAM_CASES = [
    {},
    {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1},
    {"lr": 0.05, "betas": (0.6, 0.5), "eps": 1e-8, "weight_decay": 0.01},  # lerp weight 0.4 (< 0.5)
    {"lr": 3e-3, "betas": (0.3, 0.9), "eps": 1e-10, "weight_decay": 0.0},  # lerp weight 0.7 (>= 0.5 form)
    {"lr": 1e-3, "betas": (0.0, 0.0), "eps": 1e-3, "weight_decay": 1.0},  # no averaging at all
]


@pytest.mark.torch
@pytest.mark.parametrize("cls", [Adam, AdamW], ids=["Adam", "AdamW"])
@pytest.mark.parametrize("kwargs", ADAM_CASES, ids=case_id)
def test_adam_family_matches_torch_float64(torch, rng, cls, kwargs):
    values = make_values(rng)
    grads = make_grads(rng, values)
    mine, opt = run_ours(cls, kwargs, values, grads)
    theirs, topt, tparams = run_torch(torch, cls.__name__, kwargs, values, grads)
    for name in values:
        assert_close(mine[name], theirs[name], 1e-12, f"{cls.__name__} param {name}")
        assert mine[name].dtype == np.float64
    for key in ("exp_avg", "exp_avg_sq"):
        ts = torch_state(topt, tparams, key)
        for name in values:
            assert_close(opt.state[name][key], ts[name], 1e-12, f"{key}.{name}")
    assert opt.step_count == N_STEPS


SGD_CASES = [
    {"lr": 0.1},
    {"lr": 0.05, "momentum": 0.9},
    {"lr": 0.05, "momentum": 0.9, "dampening": 0.1},
    {"lr": 0.05, "momentum": 0.9, "nesterov": True},
    {"lr": 0.02, "momentum": 0.5, "weight_decay": 1e-2, "nesterov": True},
    {"lr": 0.02, "momentum": 0.99, "dampening": 0.5, "weight_decay": 0.1},
    {"lr": 0.01, "weight_decay": 0.3},
]


@pytest.mark.torch
@pytest.mark.parametrize("kwargs", SGD_CASES, ids=case_id)
def test_sgd_matches_torch_float64(torch, rng, kwargs):
    values = make_values(rng)
    grads = make_grads(rng, values)
    mine, opt = run_ours(SGD, kwargs, values, grads)
    theirs, topt, tparams = run_torch(torch, "SGD", kwargs, values, grads)
    for name in values:
        assert_close(mine[name], theirs[name], 1e-12, f"SGD param {name}")
    if kwargs.get("momentum", 0):
        ts = torch_state(topt, tparams, "momentum_buffer")
        for name in values:
            assert_close(opt.state[name]["momentum_buffer"], ts[name], 1e-12, f"momentum_buffer.{name}")
    else:
        assert opt.state == {}


@pytest.mark.torch
@pytest.mark.parametrize("cls", [SGD, Adam, AdamW], ids=lambda c: c.__name__)
def test_lr_attribute_set_by_a_schedule_matches_torch(torch, rng, cls):
    values = make_values(rng)
    grads = make_grads(rng, values)
    sched = warmup_cosine(0.05, warmup_steps=4, total_steps=15, min_lr=0.001)
    lrs = [sched(s) for s in range(N_STEPS)]
    kwargs = {"lr": 0.05, "momentum": 0.9} if cls is SGD else {"lr": 0.05, "weight_decay": 0.05}
    mine, _ = run_ours(cls, kwargs, values, grads, lrs=lrs)
    theirs, _, _ = run_torch(torch, cls.__name__, kwargs, values, grads, lrs=lrs)
    for name in values:
        assert_close(mine[name], theirs[name], 1e-12, f"{cls.__name__} param {name}")


# ----------------------------------------------------------------------------------
# float32
# ----------------------------------------------------------------------------------
@pytest.mark.torch
@pytest.mark.parametrize(
    "cls, kwargs",
    [(SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-2}),
     (Adam, {"lr": 1e-2, "weight_decay": 0.1}),
     (AdamW, {"lr": 1e-2, "weight_decay": 0.1})],
    ids=["SGD", "Adam", "AdamW"],
)
def test_float32_stays_float32(torch, rng, cls, kwargs):
    values = make_values(rng, np.float32)
    grads = make_grads(rng, values)
    mine, opt = run_ours(cls, kwargs, values, grads)
    theirs, _, _ = run_torch(torch, cls.__name__, kwargs, values, grads)
    for name in values:
        assert mine[name].dtype == np.float32, name
        for buf in opt.state[name].values():
            assert buf.dtype == np.float32
        assert_close(mine[name], theirs[name], 1e-5, f"{cls.__name__} float32 {name}")
    for key, v in opt.state_dict().items():
        if isinstance(v, np.ndarray):
            assert v.dtype == np.float32, key


# ----------------------------------------------------------------------------------
# sparse parameters
# ----------------------------------------------------------------------------------
def make_sparse(rng, shape=(6, 8), density=0.4, dtype=np.float64):
    """A canonical CSR weight with a few stored entries that hold exactly 0.0."""
    dense = rng.standard_normal(shape).astype(dtype)
    mask = rng.random(shape) < density
    mask[0, 0] = mask[1, 2] = mask[3, 5] = True
    w = sp.csr_array((dense[mask], np.nonzero(mask)), shape=shape)
    w.sort_indices()
    w.data[:3] = 0.0  # stored zeros (RigL grows connections at zero)
    return w


@pytest.mark.torch
@pytest.mark.parametrize(
    "cls, kwargs",
    [(SGD, {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-2}),
     (Adam, {"lr": 1e-2, "weight_decay": 0.1}),
     (AdamW, {"lr": 1e-2, "weight_decay": 0.1})],
    ids=["SGD", "Adam", "AdamW"],
)
def test_sparse_parameter_updates_stored_entries_only(torch, rng, cls, kwargs):
    w = make_sparse(rng)
    indptr, indices, nnz = w.indptr.copy(), w.indices.copy(), w.nnz
    p = Parameter(w)
    value_obj = p.value
    dense_twin = Parameter(w.data.copy())  # the same numbers as a dense 1-D parameter
    opt = cls([("w", p)], **kwargs)
    opt_twin = cls([("w", dense_twin)], **kwargs)

    tw = torch.tensor(w.toarray(), requires_grad=True)
    topt = getattr(torch.optim, cls.__name__)([tw], foreach=False, **kwargs)
    rows = np.repeat(np.arange(w.shape[0]), np.diff(w.indptr))
    for step in range(10):
        g = rng.standard_normal(nnz)
        g[0] = 0.0  # a stored zero with a zero gradient
        p.grad = g.copy()
        dense_twin.grad = g.copy()
        opt.step()
        opt_twin.step()
        gd = np.zeros(w.shape)
        gd[rows, indices] = g
        tw.grad = torch.tensor(gd)
        topt.step()

    assert p.value is value_obj, "the optimizer rebound p.value"
    assert p.value.nnz == nnz
    np.testing.assert_array_equal(p.value.indptr, indptr)
    np.testing.assert_array_equal(p.value.indices, indices)
    assert bits(p.values) == bits(dense_twin.values), "sparse and dense updates differ"
    assert_close(p.value.toarray(), tw.detach().numpy(), 1e-12, "sparse vs torch dense")
    if cls is not SGD:  # zero value, zero gradient, no L2 term in the gradient: stays exactly 0
        assert p.values[0] == 0.0
    assert p.values[1] != 0.0  # a stored zero with gradients moves, and is still stored


# ----------------------------------------------------------------------------------
# state_dict
# ----------------------------------------------------------------------------------
OPT_CASES = [
    (SGD, {"lr": 0.05}),
    (SGD, {"lr": 0.05, "momentum": 0.9, "dampening": 0.2, "weight_decay": 1e-3}),
    (SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    (Adam, {"lr": 1e-2, "weight_decay": 0.1}),
    (AdamW, {"lr": 1e-2, "betas": (0.8, 0.95), "weight_decay": 0.1}),
]
OPT_IDS = ["SGD", "SGD-momentum", "SGD-nesterov", "Adam", "AdamW"]


def mixed_params(rng, dtype=np.float64):
    vals = make_values(rng, dtype)
    params = params_from(vals)
    params.append(("sparse.weight", Parameter(make_sparse(rng, dtype=dtype))))
    return params


def copy_params(params):
    return [(name, Parameter(p.value.copy())) for name, p in params]


def set_grads(params, rng):
    for _, p in params:
        p.grad = rng.standard_normal(p.values.shape).astype(p.dtype)


@pytest.mark.parametrize("cls, kwargs", OPT_CASES, ids=OPT_IDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_state_dict_round_trip_continues_bit_identically(rng, tmp_path, cls, kwargs, dtype):
    params = mixed_params(rng, dtype)
    opt = cls(params, **kwargs)
    for _ in range(5):
        set_grads(params, rng)
        opt.step()
    opt.lr = kwargs["lr"] * 0.5  # as a schedule would

    np.savez(tmp_path / "opt.npz", **opt.state_dict())
    with np.load(tmp_path / "opt.npz") as f:
        loaded = dict(f)
    params2 = copy_params(params)
    opt2 = cls(params2, lr=123.0)  # other hyper-parameters are restored from the state dict
    opt2.load_state_dict(loaded)
    assert opt2.step_count == 5 and opt2.lr == opt.lr
    assert repr(opt2) == repr(opt)

    seed = int(rng.integers(1 << 31))
    r1, r2 = np.random.default_rng(seed), np.random.default_rng(seed)
    for _ in range(5):
        set_grads(params, r1)
        set_grads(params2, r2)
        opt.step()
        opt2.step()
    for (name, p), (_, q) in zip(params, params2):
        assert bits(p.values) == bits(q.values), name
    sd, sd2 = opt.state_dict(), opt2.state_dict()
    assert sd.keys() == sd2.keys()
    for k in sd:
        if isinstance(sd[k], np.ndarray):
            assert bits(sd[k]) == bits(sd2[k]), k
        else:
            assert sd[k] == sd2[k] and type(sd[k]) is type(sd2[k]), k


def test_state_dict_keys_and_copies(rng):
    params = mixed_params(rng)
    opt = Adam(params)
    assert opt.state_dict() == {"step": 0, "lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                                "weight_decay": 0.0}
    set_grads(params, rng)
    opt.step()
    sd = opt.state_dict()
    names = [n for n, _ in params]
    expected = {"step", "lr", "beta1", "beta2", "eps", "weight_decay"}
    expected |= {f"{b}.{n}" for b in ("exp_avg", "exp_avg_sq") for n in names}
    assert set(sd) == expected
    assert sd["step"] == 1 and isinstance(sd["step"], int)
    sd["exp_avg.w"][...] = 99.0  # a copy: the optimizer is untouched
    assert not np.any(opt.state["w"]["exp_avg"] == 99.0)

    sgd = SGD(params, lr=0.1, momentum=0.9)
    assert "momentum_buffer.w" not in sgd.state_dict()  # created at the first step, as torch
    sgd.step()
    assert "momentum_buffer.w" in sgd.state_dict()
    assert "momentum_buffer.w" not in SGD(params, lr=0.1).state_dict()


def test_load_state_dict_errors_name_the_key(rng):
    params = mixed_params(rng)
    opt = Adam(params)
    set_grads(params, rng)
    opt.step()
    good = opt.state_dict()
    before = opt.state_dict()

    fresh = Adam(copy_params(params))
    bad = dict(good)
    del bad["exp_avg_sq.sparse.weight"]
    with pytest.raises(ValueError, match=r"exp_avg_sq\.sparse\.weight"):
        fresh.load_state_dict(bad)
    bad = dict(good)
    del bad["step"]
    with pytest.raises(ValueError, match="step"):
        fresh.load_state_dict(bad)
    bad = dict(good, **{"exp_avg.w": np.zeros((5, 6))})
    with pytest.raises(ValueError, match=r"exp_avg\.w.*\(5, 7\).*\(5, 6\)"):
        fresh.load_state_dict(bad)
    bad = dict(good, **{"exp_avg.w": good["exp_avg.w"].astype(np.float32)})
    with pytest.raises(TypeError, match=r"exp_avg\.w.*float32"):
        fresh.load_state_dict(bad)
    bad = dict(good, **{"exp_avg.nope": np.zeros(3)})
    with pytest.raises(ValueError, match=r"unexpected.*exp_avg\.nope"):
        fresh.load_state_dict(bad)
    bad = dict(good, beta1=1.5)
    with pytest.raises(ValueError, match="beta1"):
        fresh.load_state_dict(bad)
    with pytest.raises(ValueError, match=r"momentum"):
        SGD(copy_params(params), lr=0.1).load_state_dict(good)
    # nothing changed on failure
    assert fresh.step_count == 0 and fresh.state == {}
    for k, v in opt.state_dict().items():
        assert bits(np.asarray(v)) == bits(np.asarray(before[k])), k


# ----------------------------------------------------------------------------------
# remap (sparse pattern changes)
# ----------------------------------------------------------------------------------
def change_pattern(rng, w, n_drop=3, n_grow=4):
    """Drop some stored entries and grow new ones; return (new CSR, old_to_new)."""
    coo = w.tocoo()
    old_keys = coo.row.astype(np.int64) * w.shape[1] + coo.col  # CSR order
    keep = np.ones(w.nnz, bool)
    keep[rng.choice(w.nnz, n_drop, replace=False)] = False
    free = np.setdiff1d(np.arange(w.shape[0] * w.shape[1]), old_keys)
    grown = rng.choice(free, n_grow, replace=False)
    new_keys = np.sort(np.concatenate([old_keys[keep], grown]))
    old_to_new = np.full(new_keys.size, -1, dtype=np.int64)
    pos = np.searchsorted(old_keys, new_keys)
    hit = (pos < old_keys.size) & (old_keys[np.minimum(pos, old_keys.size - 1)] == new_keys)
    old_to_new[hit] = pos[hit]
    data = np.zeros(new_keys.size, w.dtype)
    data[hit] = w.data[pos[hit]]  # new entries grow at zero
    new = sp.csr_array((data, (new_keys // w.shape[1], new_keys % w.shape[1])), shape=w.shape)
    new.sort_indices()
    assert new.nnz == new_keys.size
    return new, old_to_new


@pytest.mark.parametrize("cls, kwargs", [(Adam, {"lr": 1e-2}), (AdamW, {"lr": 1e-2}),
                                         (SGD, {"lr": 0.05, "momentum": 0.9})], ids=["Adam", "AdamW", "SGD"])
@pytest.mark.parametrize("order", ["remap-after-replace", "remap-before-replace"])
def test_remap_keeps_continuing_state_and_zeroes_new_entries(rng, cls, kwargs, order):
    w = make_sparse(rng)
    p, ref = Parameter(w.copy()), Parameter(w.copy())
    opt, opt_ref = cls([("w", p)], **kwargs), cls([("w", ref)], **kwargs)  # ref never changes pattern
    for _ in range(4):
        g = rng.standard_normal(w.nnz)
        p.grad, ref.grad = g.copy(), g.copy()
        opt.step()
        opt_ref.step()
    old_state = {k: v.copy() for k, v in opt.state["w"].items()}

    new, old_to_new = change_pattern(rng, p.value)
    if order == "remap-before-replace":
        opt.remap("w", old_to_new)
    p.value = new
    p.grad = np.zeros_like(p.values)
    if order == "remap-after-replace":
        opt.remap("w", old_to_new)

    cont, fresh = old_to_new >= 0, old_to_new < 0
    assert fresh.sum() == 4 and cont.sum() == w.nnz - 3
    for k, buf in opt.state["w"].items():
        assert buf.shape == (new.nnz,) and buf.dtype == w.dtype
        assert bits(buf[cont]) == bits(old_state[k][old_to_new[cont]]), k
        assert np.all(buf[fresh] == 0.0), k

    # continuing entries evolve exactly as if nothing had happened
    for _ in range(3):
        g_ref = rng.standard_normal(w.nnz)
        g = rng.standard_normal(new.nnz)
        g[cont] = g_ref[old_to_new[cont]]
        p.grad, ref.grad = g, g_ref.copy()
        opt.step()
        opt_ref.step()
    assert bits(p.values[cont]) == bits(ref.values[old_to_new[cont]])


def test_remap_new_entry_starts_from_zero_adam_state(rng):
    w = make_sparse(rng)
    p = Parameter(w.copy())
    opt = Adam([("w", p)], lr=0.1)
    for _ in range(3):
        p.grad = rng.standard_normal(w.nnz)
        opt.step()
    new, old_to_new = change_pattern(rng, p.value)
    p.value, p.grad = new, np.zeros(new.nnz)
    opt.remap("w", old_to_new)
    j = int(np.flatnonzero(old_to_new < 0)[0])
    g = rng.standard_normal(new.nnz)
    p.grad = g.copy()
    opt.step()
    t = 4  # the step count is shared: a grown entry uses the global bias correction
    m = 0.1 * g[j]
    v = 0.001 * g[j] ** 2
    expected = -(0.1 / (1 - 0.9**t)) * m / (math.sqrt(v) / math.sqrt(1 - 0.999**t) + 1e-8)
    assert p.values[j] == pytest.approx(expected, rel=1e-13)


def test_remap_before_first_step_and_without_state(rng):
    w = make_sparse(rng)
    p = Parameter(w.copy())
    opt = Adam([("w", p)])
    new, old_to_new = change_pattern(rng, p.value)
    opt.remap("w", old_to_new)  # no state yet: nothing to carry
    p.value, p.grad = new, rng.standard_normal(new.nnz)
    opt.step()
    assert opt.state["w"]["exp_avg"].shape == (new.nnz,)
    sgd = SGD([("w", p)], lr=0.1)
    sgd.step()
    sgd.remap("w", np.arange(new.nnz))  # SGD without momentum keeps no state
    assert sgd.state == {}


def test_step_after_pattern_change_without_remap_raises(rng):
    w = make_sparse(rng)
    p = Parameter(w.copy())
    opt = Adam([("w", p)])
    p.grad = rng.standard_normal(w.nnz)
    opt.step()
    new, _ = change_pattern(rng, p.value, n_drop=1, n_grow=3)
    p.value, p.grad = new, np.zeros(new.nnz)
    with pytest.raises(ValueError, match=r"remap\('w'"):
        opt.step()


def test_remap_bad_arguments(rng):
    w = make_sparse(rng)
    p = Parameter(w.copy())
    opt = Adam([("w", p)])
    p.grad = rng.standard_normal(w.nnz)
    opt.step()
    n = w.nnz
    with pytest.raises(ValueError, match="name"):
        opt.remap("nope", np.arange(n))
    with pytest.raises(ValueError, match="old_to_new.*< " + str(n)):
        opt.remap("w", np.array([0, n]))
    with pytest.raises(ValueError, match="old_to_new.*>= -1"):
        opt.remap("w", np.array([0, -2]))
    with pytest.raises(ValueError, match="old_to_new.*more than one"):
        opt.remap("w", np.array([0, 0, -1]))
    with pytest.raises(ValueError, match="old_to_new.*integer"):
        opt.remap("w", np.arange(n, dtype=np.float64))
    with pytest.raises(ValueError, match="old_to_new.*1-D"):
        opt.remap("w", np.arange(n).reshape(1, n))
    p.value = sp.csr_array(np.eye(3))  # replaced by a pattern of 3 entries: length must be 3
    with pytest.raises(ValueError, match="old_to_new: expected length 3"):
        opt.remap("w", np.array([0, 1]))
    assert opt.state["w"]["exp_avg"].shape == (n,)  # untouched by the failed calls


# ----------------------------------------------------------------------------------
# schedules
# ----------------------------------------------------------------------------------
def test_constant_lr():
    s = constant_lr(0.25)
    assert s(0) == 0.25 and s(1) == 0.25 and s(10**9) == 0.25


def test_warmup_cosine_key_steps():
    s = warmup_cosine(1.0, warmup_steps=10, total_steps=110, min_lr=0.1)
    assert s(0) == 0.0
    assert s(5) == pytest.approx(0.5, abs=1e-15)
    assert s(10) == pytest.approx(1.0, abs=1e-15)
    assert s(60) == pytest.approx(0.55, abs=1e-15)  # half way: (base + min) / 2
    assert s(35) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)), abs=1e-15)
    assert s(110) == 0.1 and s(10**6) == 0.1
    lrs = [s(i) for i in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))
    assert s(np.int64(60)) == s(60)


def test_warmup_cosine_without_warmup_and_min_lr():
    s = warmup_cosine(0.3, warmup_steps=0, total_steps=100)
    assert s(0) == 0.3
    assert s(50) == pytest.approx(0.15, abs=1e-15)
    assert s(100) == 0.0
    # total == warmup: straight to min_lr after warm-up
    s = warmup_cosine(1.0, 4, 4, min_lr=0.2)
    assert [s(i) for i in range(6)] == [0.0, 0.25, 0.5, 0.75, 0.2, 0.2]


@pytest.mark.parametrize(
    "args, err, match",
    [((-1.0, 0, 10), ValueError, "base_lr"),
     ((1.0, -1, 10), ValueError, "warmup_steps"),
     ((1.0, 2.5, 10), TypeError, "warmup_steps"),
     ((1.0, 10, 5), ValueError, "total_steps"),
     ((1.0, 0, 10, 2.0), ValueError, "min_lr"),
     ((1.0, 0, 10, -0.1), ValueError, "min_lr"),
     ((float("nan"), 0, 10), ValueError, "base_lr")],
)
def test_warmup_cosine_bad_arguments(args, err, match):
    with pytest.raises(err, match=match):
        warmup_cosine(*args)


def test_schedule_bad_step():
    with pytest.raises(ValueError, match="step"):
        warmup_cosine(1.0, 1, 2)(-1)
    with pytest.raises(TypeError, match="step"):
        constant_lr(1.0)(0.5)
    with pytest.raises(ValueError, match="lr"):
        constant_lr(-1.0)


# ----------------------------------------------------------------------------------
# clip_grad_norm
# ----------------------------------------------------------------------------------
@pytest.mark.torch
@pytest.mark.parametrize("max_norm", [0.5, 1e9])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_clip_grad_norm_matches_torch(torch, rng, max_norm, dtype):
    params = mixed_params(rng, dtype)
    set_grads(params, rng)
    before = {name: p.grad.copy() for name, p in params}
    tensors = []
    for _, p in params:
        t = torch.zeros(p.values.shape, dtype=getattr(torch, np.dtype(dtype).name))
        t.grad = torch.tensor(p.grad.copy())
        tensors.append(t)
    total = clip_grad_norm(params, max_norm)
    ttotal = torch.nn.utils.clip_grad_norm_(tensors, max_norm, foreach=False)
    tol = 1e-12 if dtype == np.float64 else 1e-6
    assert isinstance(total, float)
    assert total == pytest.approx(float(ttotal), rel=tol)
    for (name, p), t in zip(params, tensors):
        assert p.grad.dtype == dtype
        assert_close(p.grad, t.grad.numpy(), tol, f"clipped grad {name}")
        if max_norm > total:
            assert bits(p.grad) == bits(before[name]), "unclipped gradients must not change"
    if max_norm < total:
        norm_after = math.sqrt(sum(float(np.sum(p.grad.astype(np.float64) ** 2)) for _, p in params))
        assert norm_after == pytest.approx(max_norm, rel=1e-5)


def test_clip_grad_norm_edge_cases(rng):
    assert clip_grad_norm([], 1.0) == 0.0
    p = Parameter(np.zeros(3))
    p.grad = np.array([3.0, 4.0, 0.0])
    assert clip_grad_norm([p], 1.0) == 5.0  # bare Parameters are accepted too
    np.testing.assert_allclose(p.grad, [0.6, 0.8, 0.0], rtol=1e-6)
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm([("p", p)], -1.0)
    with pytest.raises(TypeError, match="params"):
        clip_grad_norm([np.zeros(3)], 1.0)


@pytest.mark.torch
def test_clip_grad_norm_nan_norm_leaves_gradients_untouched_unlike_torch(torch):
    """docs/conventions.md, differences from PyTorch: a NaN total norm leaves every gradient
    as it was (the NaN is returned); torch makes every gradient NaN. An infinite norm: both
    give coefficient 0 (finite entries 0, infinite ones NaN)."""
    grads = [np.array([1.0, np.nan]), np.array([2.0, 3.0])]
    params = [(f"p{i}", Parameter(np.zeros(2))) for i in range(2)]
    for (_, p), g in zip(params, grads):
        p.grad = g.copy()
    total = clip_grad_norm(params, 1.0)
    assert math.isnan(total)
    assert bits(params[0][1].grad) == bits(grads[0]) and bits(params[1][1].grad) == bits(grads[1])
    tensors = []
    for g in grads:
        t = torch.zeros(2, dtype=torch.float64)
        t.grad = torch.tensor(g.copy())
        tensors.append(t)
    assert math.isnan(float(torch.nn.utils.clip_grad_norm_(tensors, 1.0, foreach=False)))
    assert all(torch.isnan(t.grad).all() for t in tensors)  # torch: every gradient NaN

    # an infinite norm: the same as torch
    grads = [np.array([1.0, np.inf]), np.array([2.0, 3.0])]
    for (_, p), g, t in zip(params, grads, tensors):
        p.grad = g.copy()
        t.grad = torch.tensor(g.copy())
    with np.errstate(invalid="ignore"):  # inf · 0
        assert clip_grad_norm(params, 1.0) == math.inf
    torch.nn.utils.clip_grad_norm_(tensors, 1.0, foreach=False)
    for (_, p), t in zip(params, tensors):
        np.testing.assert_array_equal(p.grad, t.grad.numpy())
    np.testing.assert_array_equal(params[0][1].grad, [0.0, np.nan])


# ----------------------------------------------------------------------------------
# argument checks and the training-loop interface
# ----------------------------------------------------------------------------------
def one_param():
    return [("w", Parameter(np.ones(3)))]


@pytest.mark.parametrize(
    "cls, kwargs, err, match",
    [(Adam, {"lr": -1.0}, ValueError, r"lr.*-1\.0"),
     (Adam, {"lr": float("nan")}, ValueError, "lr"),
     (Adam, {"betas": (1.0, 0.9)}, ValueError, r"betas\[0\].*1\.0"),
     (Adam, {"betas": (0.9, -0.1)}, ValueError, r"betas\[1\].*-0\.1"),
     (Adam, {"betas": 0.9}, ValueError, "betas"),
     (AdamW, {"eps": -1e-8}, ValueError, "eps"),
     (AdamW, {"weight_decay": -0.1}, ValueError, r"weight_decay.*-0\.1"),
     (AdamW, {"lr": "0.1"}, TypeError, "lr"),
     (SGD, {"lr": -0.1}, ValueError, "lr"),
     (SGD, {"lr": 0.1, "momentum": -0.5}, ValueError, r"momentum.*-0\.5"),
     (SGD, {"lr": 0.1, "weight_decay": -1}, ValueError, "weight_decay"),
     (SGD, {"lr": 0.1, "nesterov": True}, ValueError, "nesterov"),
     (SGD, {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "nesterov": True}, ValueError, "nesterov")],
)
def test_bad_arguments_name_the_argument(cls, kwargs, err, match):
    with pytest.raises(err, match=match):
        cls(one_param(), **kwargs)


@pytest.mark.parametrize("cls", [Adam, AdamW, lambda params: SGD(params, lr=0.1)])
def test_bad_params(cls):
    with pytest.raises(ValueError, match="params.*empty"):
        cls([])
    with pytest.raises(ValueError, match="params.*empty"):
        cls(iter([]))
    with pytest.raises(TypeError, match="params"):
        cls([Parameter(np.ones(3))])  # bare Parameters: the state needs names
    with pytest.raises(ValueError, match="'w' appears twice"):
        cls([("w", Parameter(np.ones(3))), ("w", Parameter(np.ones(2)))])
    p = Parameter(np.ones(3))
    with pytest.raises(ValueError, match="two names"):
        cls([("a", p), ("b", p)])


def test_step_checks_lr_and_grads():
    params = one_param()
    opt = Adam(params)
    opt.lr = -0.5
    with pytest.raises(ValueError, match="lr"):
        opt.step()
    opt.lr = 0.1
    params[0][1].grad = np.zeros(4)
    with pytest.raises(ValueError, match=r"params\['w'\]\.grad.*\(3,\).*\(4,\)"):
        opt.step()
    params[0][1].grad = np.zeros(3, np.float32)
    with pytest.raises(TypeError, match=r"params\['w'\]\.grad.*float32"):
        opt.step()
    assert opt.step_count == 0 and opt.state == {}


def test_zero_grad_and_generator_params(rng):
    class Tiny:
        def __init__(self):
            self.w = Parameter(rng.standard_normal((2, 3)))
            self.s = Parameter(make_sparse(rng))

        def parameters(self):
            yield "w", self.w
            yield "s", self.s

    m = Tiny()
    opt = SGD(m.parameters(), lr=0.1)  # a generator, as Module.parameters() returns
    assert list(opt.params) == ["w", "s"]
    m.w.grad += 1.0
    m.s.grad += 1.0
    opt.zero_grad()
    assert not m.w.grad.any() and not m.s.grad.any()
    assert m.s.grad.shape == m.s.values.shape


# ----------------------------------------------------------------------------------
# the Adam(W) driver's fast kernel against the reference kernel, bit for bit
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls,kwargs", [
    (AdamW, {"weight_decay": 0.1}), (AdamW, {"weight_decay": 0.0}),
    (Adam, {"weight_decay": 0.01}), (Adam, {"betas": (0.2, 0.95), "eps": 1e-6}),
])
def test_adam_fast_kernel_is_bit_identical_to_reference(dtype, cls, kwargs):
    from refsparse import kernels
    from refsparse.kernels import adam as K

    n = K.KERNEL_MIN_SIZE + 123  # large enough for the Numba kernel
    rng = np.random.default_rng(0)
    v0 = rng.standard_normal(n).astype(dtype)
    mine, twin = Parameter(v0.copy()), Parameter(v0.copy())
    opt = cls([("w", mine)], lr=3e-3, **kwargs)
    ref = cls([("w", twin)], lr=3e-3, **kwargs)
    calls = []
    kernel = K.adam_update
    for step in range(1, 6):
        g = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 2)).astype(dtype)
        g[::17] = 0
        mine.grad, twin.grad = g.copy(), g.copy()
        with kernels.use("fast"):
            K.adam_update = lambda *a: (calls.append(1), kernel(*a))
            try:
                opt.step()  # the Numba kernel
            finally:
                K.adam_update = kernel
        with kernels.use("reference"):
            ref.step()  # the reference kernel
        assert np.array_equal(mine.value, twin.value), f"step {step}"
        for buf in ("exp_avg", "exp_avg_sq"):
            assert np.array_equal(opt.state["w"][buf], ref.state["w"][buf]), f"{buf}, step {step}"
    assert mine.value.dtype == dtype
    assert len(calls) == 5  # the fast path did run the kernel


def test_a_pattern_swapped_without_remap_is_refused_even_with_the_same_count():
    """SET and RigL keep the count: a pattern changed by hand without remap, to as many
    entries, would leave each AdamW moment on another entry. The optimizer keeps the
    pattern it last stepped on and refuses a different one; the same pattern in new arrays,
    or a change with remap, passes."""
    import scipy.sparse as sp

    from refsparse.nn.module import Parameter

    w = sp.csr_array(np.array([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]]))
    p = Parameter(w)
    opt = AdamW([("w", p)], lr=0.1)
    p.grad = np.ones(3)
    opt.step()
    p.value = sp.csr_array(w.toarray())  # the same pattern, new arrays: fine
    opt.step()
    moved = sp.csr_array(np.array([[1.0, 2.0, 0.0], [0.0, 3.0, 0.0]]))  # 3 entries, one moved
    p.value = moved
    with pytest.raises(ValueError, match=r"params\['w'\]: its sparse pattern changed .* remap\('w'"):
        opt.step()
    opt.remap("w", np.array([0, -1, 2]))  # (0,0) and (1,1) continue; (0,1) is new
    opt.step()
    assert opt.state["w"]["exp_avg"][1] != 0.0  # the new entry's moment started at 0 and moved once
