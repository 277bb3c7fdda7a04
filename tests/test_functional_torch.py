"""Every functional op against PyTorch autograd, with identical inputs and upstream gradients.

Outputs and every input gradient agree to <= 1e-10 relative (to the tensor's max abs) in
float64 and <= 1e-4 in float32. A mismatch names the tensor and prints mine vs theirs,
the max abs and max relative error.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refsparse.functional as F

torch = pytest.importorskip("torch")
TF = torch.nn.functional

pytestmark = pytest.mark.torch

RTOL = {np.float64: 1e-10, np.float32: 1e-4}
DTYPES = pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])

batch = st.integers(1, 3)
length = st.integers(1, 9)
width = st.integers(1, 16)
seeds = st.integers(0, 2**32 - 1)


@st.composite
def head_dims(draw):
    h = draw(st.integers(1, 4))
    return h, draw(st.integers(1, 16 // h))


# ----------------------------------------------------------------------------------------
# helpers


def assert_close(name, mine, theirs, dtype, floor=0.0):
    """Compare one named tensor, relative to its largest entry; print mine vs theirs on failure.

    ``floor`` raises the scale the error is measured against, for a gradient that is a
    difference of much larger terms (a softmax row near one-hot, LayerNorm over two
    channels, an attention row with a single key): both libraries then lose the same
    digits to cancellation, and the honest yardstick is the size of those terms.
    """
    if isinstance(theirs, torch.Tensor):
        theirs = theirs.detach().numpy()
    mine = np.asarray(mine)
    assert mine.shape == theirs.shape, f"{name}: shape mine {mine.shape} vs theirs {theirs.shape}"
    assert mine.dtype == theirs.dtype, f"{name}: dtype mine {mine.dtype} vs theirs {theirs.dtype}"
    a, b = mine.astype(np.float64), theirs.astype(np.float64)
    diff = np.abs(a - b)
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = max(float(np.abs(b).max()), float(np.abs(a).max())) if diff.size else 0.0
    scale = max(scale, float(floor))
    max_rel = max_abs / scale if scale > 0 else max_abs
    rtol = RTOL[dtype]
    if not (np.all(np.isfinite(a)) and max_rel <= rtol):
        where = np.unravel_index(np.argmax(diff), diff.shape) if diff.size else ()
        msg = (
            f"{name} [{np.dtype(dtype).name}]: mine vs theirs: max abs {max_abs:.3e}, "
            f"max rel {max_rel:.3e} (tolerance {rtol:g}, scale {scale:.3e}); worst at "
            f"{tuple(int(i) for i in where)}: mine {a[where]!r} vs theirs {b[where]!r}"
        )
        print(msg)
        raise AssertionError(msg)


def tt(a, grad=True):
    """A torch copy of a numpy array (a leaf that records its gradient)."""
    return torch.tensor(a, requires_grad=grad and np.issubdtype(a.dtype, np.floating))


def randn(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


# ----------------------------------------------------------------------------------------
# linear, embedding, positional


@DTYPES
@given(b=batch, t=length, c_in=width, c_out=width, bias=st.booleans(), seed=seeds)
def test_linear(dtype, b, t, c_in, c_out, bias, seed):
    rng = np.random.default_rng(seed)
    x, w = randn(rng, (b, t, c_in), dtype), randn(rng, (c_out, c_in), dtype)
    bb = randn(rng, c_out, dtype) if bias else None
    g = randn(rng, (b, t, c_out), dtype)

    y, cache = F.linear_forward(x, w, bb)
    dx, dw, db = F.linear_backward(g, cache)

    X, W = tt(x), tt(w)
    B = tt(bb) if bias else None
    Y = TF.linear(X, W, B)
    Y.backward(torch.tensor(g))
    assert_close("y", y, Y, dtype)
    assert_close("dx", dx, X.grad, dtype)
    assert_close("dweight", dw, W.grad, dtype)
    if bias:
        assert_close("dbias", db, B.grad, dtype)
    else:
        assert db is None


@DTYPES
@given(b=batch, t=length, v=width, c=width, seed=seeds)
def test_embedding(dtype, b, t, v, c, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, v, size=(b, t))
    w, g = randn(rng, (v, c), dtype), randn(rng, (b, t, c), dtype)

    y, cache = F.embedding_forward(ids, w)
    dw = F.embedding_backward(g, cache)

    W = tt(w)
    Y = TF.embedding(torch.tensor(ids), W)
    Y.backward(torch.tensor(g))
    assert_close("y", y, Y, dtype)
    assert_close("dweight", dw, W.grad, dtype)


@pytest.mark.parametrize("d_model", [1, 2, 7, 16, 33])
def test_sinusoidal_encoding(d_model):
    length = 50
    mine = F.sinusoidal_encoding(length, d_model)
    # the usual torch formulation: div_term = exp(2i · (−ln 10000 / d_model))
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : d_model // 2]
    assert_close("pe", mine, pe, np.float64)
    assert_close("pe float32", F.sinusoidal_encoding(length, d_model, np.float32), pe.float(), np.float32)


@DTYPES
@given(b=batch, t=length, extra=st.integers(0, 4), c=width, seed=seeds)
def test_positional(dtype, b, t, extra, c, seed):
    rng = np.random.default_rng(seed)
    x, table, g = (
        randn(rng, (b, t, c), dtype),
        randn(rng, (t + extra, c), dtype),
        randn(rng, (b, t, c), dtype),
    )

    y, cache = F.positional_forward(x, table)
    dx, dtable = F.positional_backward(g, cache)

    X, TB = tt(x), tt(table)
    Y = X + TB[:t]
    Y.backward(torch.tensor(g))
    assert_close("y", y, Y, dtype)
    assert_close("dx", dx, X.grad, dtype)
    assert_close("dtable", dtable, TB.grad, dtype)


# ----------------------------------------------------------------------------------------
# layernorm, activations, dropout, softmax, residual


@DTYPES
@given(b=batch, t=length, c=width, eps=st.sampled_from([1e-5, 1e-3]), seed=seeds)
def test_layernorm(dtype, b, t, c, eps, seed):
    rng = np.random.default_rng(seed)
    x = randn(rng, (b, t, c), dtype, 2.0) + dtype(0.5)
    gamma, beta, g = randn(rng, c, dtype), randn(rng, c, dtype), randn(rng, (b, t, c), dtype)

    y, cache = F.layernorm_forward(x, gamma, beta, eps)
    dx, dgamma, dbeta = F.layernorm_backward(g, cache)

    X, G, B = tt(x), tt(gamma), tt(beta)
    Y = TF.layer_norm(X, (c,), G, B, eps)
    Y.backward(torch.tensor(g))
    assert_close("y", y, Y, dtype)
    assert_close("dbeta", dbeta, B.grad, dtype)
    if c == 1:
        # y = β whatever x is: the true dx and dγ are exactly 0 (x̂ = 0 exactly); torch's
        # carry rounding noise, against which no relative comparison makes sense.
        assert not dx.any() and not dgamma.any()
        return
    # dx = rstd (g − mean(g) − x̂ mean(g x̂)), g = dy γ: terms of size rstd |dy γ| that
    # nearly cancel when x̂ is close to ±1 (C = 2)
    floor = float(cache.rstd.max()) * float(np.abs(g * gamma).max())
    assert_close("dx", dx, X.grad, dtype, floor=floor)
    assert_close("dgamma", dgamma, G.grad, dtype)


@DTYPES
@given(b=batch, t=length, c=width, seed=seeds)
def test_relu(dtype, b, t, c, seed):
    rng = np.random.default_rng(seed)
    x, g = randn(rng, (b, t, c), dtype), randn(rng, (b, t, c), dtype)
    x[rng.random(x.shape) < 0.2] = 0  # exact zeros: both take the derivative there as 0

    y, cache = F.relu_forward(x)
    dx = F.relu_backward(g, cache)

    X = tt(x)
    Y = TF.relu(X)
    Y.backward(torch.tensor(g))
    assert_close("y", y, Y, dtype)
    assert_close("dx", dx, X.grad, dtype)


@DTYPES
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@given(b=batch, t=length, c=width, seed=seeds)
def test_gelu(dtype, approximate, b, t, c, seed):
    rng = np.random.default_rng(seed)
    x, g = randn(rng, (b, t, c), dtype, 3.0), randn(rng, (b, t, c), dtype)

    y, cache = F.gelu_forward(x, approximate)
    dx = F.gelu_backward(g, cache)

    # 1. Against torch.nn.functional.gelu in the same dtype, where it is accurate: torch
    # evaluates 1 + erf(·) and 1 + tanh(·) literally, which loses digits for x ≪ 0 (all
    # of them in float32 by x ≈ −5). refsparse uses erfc and the logistic function there.
    X = tt(x)
    Y = TF.gelu(X, approximate=approximate)
    Y.backward(torch.tensor(g))
    ok = x > (-4.0 if dtype == np.float64 else -2.5)
    assert_close("y", y[ok], Y.detach().numpy()[ok], dtype)
    assert_close("dx", dx[ok], X.grad.numpy()[ok], dtype)

    # 2. Everywhere, against the same function written out in torch float64 in a
    # cancellation-free form, differentiated by autograd.
    X64 = tt(x.astype(np.float64))
    if approximate == "none":
        Y64 = X64 * 0.5 * torch.special.erfc(-X64 / math.sqrt(2.0))
    else:
        Y64 = X64 * torch.sigmoid(2.0 * math.sqrt(2.0 / math.pi) * (X64 + 0.044715 * X64**3))
    Y64.backward(torch.tensor(g.astype(np.float64)))
    assert_close("y vs float64 erfc/sigmoid form", y, Y64.detach().numpy().astype(dtype), dtype)
    assert_close("dx vs float64 erfc/sigmoid form", dx, X64.grad.numpy().astype(dtype), dtype)


@DTYPES
@given(b=batch, t=length, c=width, p=st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]), seed=seeds)
def test_dropout_same_mask(dtype, b, t, c, p, seed):
    rng = np.random.default_rng(seed)
    x, g = randn(rng, (b, t, c), dtype), randn(rng, (b, t, c), dtype)

    y, cache = F.dropout_forward(x, p, np.random.default_rng(seed))
    dx = F.dropout_backward(g, cache)

    # the same keep mask, applied the torch way: x · mask / (1 − p)
    keep = np.random.default_rng(seed).random(x.shape) >= p
    X = tt(x)
    if p == 1.0:
        Y = X * 0.0
    else:
        mask = torch.tensor(keep.astype(dtype))
        Y = X * (mask / (1.0 - p))
    Y.backward(torch.tensor(g))
    assert_close("y", y, Y, dtype)
    assert_close("dx", dx, X.grad, dtype)


@DTYPES
@given(b=batch, t=length, c=width, axis=st.integers(-3, 2), seed=seeds)
def test_softmax(dtype, b, t, c, axis, seed):
    rng = np.random.default_rng(seed)
    x, g = randn(rng, (b, t, c), dtype, 3.0), randn(rng, (b, t, c), dtype)

    y, cache = F.softmax_forward(x, axis)
    dx = F.softmax_backward(g, cache)

    X = tt(x)
    Y = torch.softmax(X, dim=axis)
    Y.backward(torch.tensor(g))
    assert_close("y", y, Y, dtype)
    # dx = y dy − y Σ(y dy): terms of size |y dy| that cancel when y is near one-hot
    assert_close("dx", dx, X.grad, dtype, floor=float(np.abs(y * g).max()))


@DTYPES
@given(b=batch, t=length, c=width, seed=seeds)
def test_residual(dtype, b, t, c, seed):
    rng = np.random.default_rng(seed)
    x, fx, g = randn(rng, (b, t, c), dtype), randn(rng, (b, t, c), dtype), randn(rng, (b, t, c), dtype)

    y, cache = F.residual_forward(x, fx)
    dx, dfx = F.residual_backward(g, cache)

    X, FX = tt(x), tt(fx)
    Y = X + FX
    Y.backward(torch.tensor(g))
    assert_close("y", y, Y, dtype)
    assert_close("dx", dx, X.grad, dtype)
    assert_close("dfx", dfx, FX.grad, dtype)


# ----------------------------------------------------------------------------------------
# attention


def nonempty_mask(rng, shape, density=0.5):
    """A random boolean mask in which every query row allows at least one key."""
    mask = rng.random(shape) < density
    tk = shape[-1]
    pick = rng.integers(0, tk, size=shape[:-1])
    np.put_along_axis(mask, pick[..., None], True, axis=-1)
    return mask


def attention_data(rng, dtype, b, h, tq, tk, d, dv):
    q, k = randn(rng, (b, h, tq, d), dtype), randn(rng, (b, h, tk, d), dtype)
    v, g = randn(rng, (b, h, tk, dv), dtype), randn(rng, (b, h, tq, dv), dtype)
    return q, k, v, g


def check_attention(dtype, out, grads, cache, Q, K, V, OUT, g):
    OUT.backward(torch.tensor(g))
    assert_close("out", out, OUT, dtype)
    # ds = p (dp − Σ p dp) cancels exactly for a row with a single allowed key (p = 1):
    # measure dq, dk against the size of the terms, |p dp| |k| / √D and |p dp| |q| / √D
    q, k, v = cache.q, cache.k, cache.v
    p_dp = float(np.abs(cache.p * (g @ v.swapaxes(-1, -2))).max()) * cache.scale
    floors = (p_dp * float(np.abs(k).max()), p_dp * float(np.abs(q).max()), 0.0)
    for name, mine, leaf, floor in zip(("dq", "dk", "dv"), grads, (Q, K, V), floors):
        assert_close(name, mine, leaf.grad, dtype, floor=floor)


@DTYPES
@given(
    b=batch,
    hd=head_dims(),
    tq=length,
    tk=length,
    dv=st.integers(1, 8),
    kind=st.sampled_from(["none", "random", "broadcast", "causal"]),
    seed=seeds,
)
def test_attention_vs_sdpa(dtype, b, hd, tq, tk, dv, kind, seed):
    h, d = hd
    rng = np.random.default_rng(seed)
    q, k, v, g = attention_data(rng, dtype, b, h, tq, tk, d, dv)
    mask = {
        "none": None,
        "random": nonempty_mask(rng, (b, h, tq, tk)) if kind == "random" else None,
        "broadcast": nonempty_mask(rng, (b, 1, 1, tk)) if kind == "broadcast" else None,
        "causal": F.causal_mask(tq, tk),
    }[kind]

    out, cache = F.attention_forward(q, k, v, mask)
    grads = F.attention_backward(g, cache)

    Q, K, V = tt(q), tt(k), tt(v)
    if kind == "causal":
        OUT = TF.scaled_dot_product_attention(Q, K, V, is_causal=True)
    else:
        OUT = TF.scaled_dot_product_attention(Q, K, V, attn_mask=None if mask is None else torch.tensor(mask))
    check_attention(dtype, out, grads, cache, Q, K, V, OUT, g)


@DTYPES
@given(
    b=batch,
    hd=head_dims(),
    tq=length,
    tk=length,
    dropout_p=st.sampled_from([0.0, 0.3]),
    seed=seeds,
)
def test_attention_vs_manual_torch(dtype, b, hd, tq, tk, dropout_p, seed):
    """The textbook computation, written out in torch, with the same dropout mask."""
    h, d = hd
    rng = np.random.default_rng(seed)
    q, k, v, g = attention_data(rng, dtype, b, h, tq, tk, d, d)
    mask = nonempty_mask(rng, (b, 1, tq, tk))

    out, cache = F.attention_forward(q, k, v, mask, dropout_p=dropout_p, rng=np.random.default_rng(seed))
    grads = F.attention_backward(g, cache)

    Q, K, V = tt(q), tt(k), tt(v)
    s = (Q @ K.transpose(-1, -2)) / math.sqrt(d)
    s = s.masked_fill(~torch.tensor(mask), float("-inf"))
    p = torch.softmax(s, dim=-1)
    if dropout_p > 0:
        keep = np.random.default_rng(seed).random((b, h, tq, tk)) >= dropout_p
        np.testing.assert_array_equal(cache.dropout.keep, keep)
        p = p * (torch.tensor(keep.astype(dtype)) / (1.0 - dropout_p))
    OUT = p @ V
    check_attention(dtype, out, grads, cache, Q, K, V, OUT, g)


@DTYPES
@given(b=batch, t=length, hd=head_dims(), seed=seeds)
def test_split_merge_heads(dtype, b, t, hd, seed):
    h, d = hd
    rng = np.random.default_rng(seed)
    x, g4 = randn(rng, (b, t, h * d), dtype), randn(rng, (b, h, t, d), dtype)

    y, n_heads = F.split_heads_forward(x, h)
    dx = F.split_heads_backward(g4, n_heads)
    X = tt(x)
    Y = X.view(b, t, h, d).transpose(1, 2)  # (B, H, T, D)
    Y.backward(torch.tensor(g4))
    assert_close("split y", y, Y, dtype)
    assert_close("split dx", dx, X.grad, dtype)

    x4, g3 = randn(rng, (b, h, t, d), dtype), randn(rng, (b, t, h * d), dtype)
    y, cache = F.merge_heads_forward(x4)
    dx = F.merge_heads_backward(g3, cache)
    X = tt(x4)
    Y = X.transpose(1, 2).reshape(b, t, h * d)  # (B, T, C)
    Y.backward(torch.tensor(g3))
    assert_close("merge y", y, Y, dtype)
    assert_close("merge dx", dx, X.grad, dtype)


# ----------------------------------------------------------------------------------------
# cross-entropy


@DTYPES
@given(
    b=batch,
    t=length,
    v=width,
    reduction=st.sampled_from(["mean", "sum", "none"]),
    label_smoothing=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    ignore=st.sampled_from(["none", "some", "in_vocab"]),
    seed=seeds,
)
def test_cross_entropy(dtype, b, t, v, reduction, label_smoothing, ignore, seed):
    rng = np.random.default_rng(seed)
    logits = randn(rng, (b, t, v), dtype, 3.0)
    targets = rng.integers(0, v, size=(b, t))
    ignore_index = -100
    if ignore == "some":
        targets[rng.random((b, t)) < 0.3] = ignore_index
    elif ignore == "in_vocab":
        ignore_index = 0
    if reduction == "mean" and np.all(targets == ignore_index):  # torch's mean would be NaN
        if ignore_index == -100:
            targets[0, 0] = 0
        else:
            ignore_index = -100
    g = randn(rng, (b, t), dtype) if reduction == "none" else dtype(rng.standard_normal())

    loss, cache = F.cross_entropy_forward(
        logits, targets, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction
    )
    dlogits = F.cross_entropy_backward(g, cache)

    L = tt(logits)
    LOSS = TF.cross_entropy(
        L.reshape(-1, v),
        torch.tensor(targets.reshape(-1)),
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        reduction=reduction,
    )
    if reduction == "none":
        LOSS = LOSS.reshape(b, t)
    LOSS.backward(torch.tensor(g))
    assert_close("loss", loss, LOSS, dtype)
    assert_close("dlogits", dlogits, L.grad, dtype)
