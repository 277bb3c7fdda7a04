"""Properties of the functional ops: dtypes, empty attention rows, extreme logits,
scatter-add, conventions, and input checks that name the offending argument."""

import numpy as np
import pytest

import refsparse.functional as F

DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])


def randn(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


# ----------------------------------------------------------------------------------------
# every op: dtype in = dtype out, and backward leaves the cache as it found it
#
# Each entry runs a forward pass and returns (y, cache, backward), backward(g) -> grads.


def _linear(rng, dt):
    y, c = F.linear_forward(randn(rng, (2, 3, 4), dt), randn(rng, (5, 4), dt), randn(rng, 5, dt))
    return y, c, F.linear_backward


def _embedding(rng, dt):
    y, c = F.embedding_forward(rng.integers(0, 6, (2, 3)), randn(rng, (6, 4), dt))
    return y, c, F.embedding_backward


def _positional(rng, dt):
    y, c = F.positional_forward(randn(rng, (2, 3, 4), dt), F.sinusoidal_encoding(5, 4, dt))
    return y, c, F.positional_backward


def _layernorm(rng, dt):
    y, c = F.layernorm_forward(randn(rng, (2, 3, 4), dt), randn(rng, 4, dt), randn(rng, 4, dt))
    return y, c, F.layernorm_backward


def _relu(rng, dt):
    y, c = F.relu_forward(randn(rng, (2, 3, 4), dt))
    return y, c, F.relu_backward


def _gelu(approximate):
    def run(rng, dt):
        y, c = F.gelu_forward(randn(rng, (2, 3, 4), dt), approximate)
        return y, c, F.gelu_backward

    return run


def _dropout(rng, dt):
    y, c = F.dropout_forward(randn(rng, (2, 3, 4), dt), 0.3, np.random.default_rng(0))
    return y, c, F.dropout_backward


def _softmax(rng, dt):
    y, c = F.softmax_forward(randn(rng, (2, 3, 4), dt), axis=1)
    return y, c, F.softmax_backward


def _attention(rng, dt):
    q, k, v = randn(rng, (2, 2, 3, 4), dt), randn(rng, (2, 2, 5, 4), dt), randn(rng, (2, 2, 5, 3), dt)
    mask = rng.random((3, 5)) < 0.5
    mask[1] = False  # one empty row
    y, c = F.attention_forward(q, k, v, mask, dropout_p=0.2, rng=np.random.default_rng(0))
    return y, c, F.attention_backward


def _split_heads(rng, dt):
    y, c = F.split_heads_forward(randn(rng, (2, 3, 6), dt), 3)
    return y, c, F.split_heads_backward


def _merge_heads(rng, dt):
    y, c = F.merge_heads_forward(randn(rng, (2, 3, 4, 2), dt))
    return y, c, F.merge_heads_backward


def _cross_entropy(reduction):
    def run(rng, dt):
        targets = rng.integers(0, 7, (2, 3))
        targets[0, 1] = -100
        y, c = F.cross_entropy_forward(
            randn(rng, (2, 3, 7), dt), targets, label_smoothing=0.1, reduction=reduction
        )
        return y, c, F.cross_entropy_backward

    return run


def _residual(rng, dt):
    y, c = F.residual_forward(randn(rng, (2, 3, 4), dt), randn(rng, (2, 3, 4), dt))
    return y, c, F.residual_backward


OPS = {
    "linear": _linear,
    "embedding": _embedding,
    "positional": _positional,
    "layernorm": _layernorm,
    "relu": _relu,
    "gelu_none": _gelu("none"),
    "gelu_tanh": _gelu("tanh"),
    "dropout": _dropout,
    "softmax": _softmax,
    "attention": _attention,
    "split_heads": _split_heads,
    "merge_heads": _merge_heads,
    "cross_entropy_mean": _cross_entropy("mean"),
    "cross_entropy_sum": _cross_entropy("sum"),
    "cross_entropy_none": _cross_entropy("none"),
    "residual": _residual,
}


def _as_tuple(g):
    return g if isinstance(g, tuple) else (g,)


def _arrays(cache):
    """The ndarrays inside a cache (a NamedTuple, a nested one, an int or None)."""
    if isinstance(cache, np.ndarray):
        return [cache]
    if isinstance(cache, tuple):
        return [a for item in cache for a in _arrays(item)]
    return []


@DTYPES
@pytest.mark.parametrize("op", list(OPS))
def test_dtype_is_preserved_and_cache_untouched(op, dtype):
    rng = np.random.default_rng(0)
    y, cache, backward = OPS[op](rng, dtype)
    assert isinstance(y, np.ndarray) and y.dtype == dtype, f"{op}: output dtype {y.dtype}"
    g = randn(rng, y.shape, dtype) if y.ndim else 0.7
    before = [a.copy() for a in _arrays(cache)]
    grads = _as_tuple(backward(g, cache))
    for i, d in enumerate(grads):
        if d is not None:
            assert isinstance(d, np.ndarray) and d.dtype == dtype, f"{op}: gradient {i} dtype {d.dtype}"
            assert np.all(np.isfinite(d)), f"{op}: gradient {i} not finite"
    for a, b in zip(before, _arrays(cache)):
        np.testing.assert_array_equal(a, b, err_msg=f"{op}: backward modified its cache")
    for a, b in zip(grads, _as_tuple(backward(g, cache))):  # a second backward agrees
        if a is not None:
            np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------------------
# attention: empty rows, masks, conventions


@DTYPES
@pytest.mark.parametrize("dropout_p", [0.0, 0.4])
def test_fully_masked_rows_give_zero_output_and_zero_gradients(dtype, dropout_p):
    rng = np.random.default_rng(0)
    B, H, Tq, Tk, D = 2, 3, 5, 6, 4
    q, k, v = (
        randn(rng, (B, H, Tq, D), dtype),
        randn(rng, (B, H, Tk, D), dtype),
        randn(rng, (B, H, Tk, D), dtype),
    )
    mask = rng.random((B, 1, Tq, Tk)) < 0.5
    mask[:, :, 0] = True
    empty = np.zeros((B, 1, Tq), dtype=bool)
    empty[0, 0, [1, 3]] = True
    empty[1, 0, 4] = True
    mask[empty] = False

    with np.errstate(divide="raise", invalid="raise", over="raise"):
        out, cache = F.attention_forward(q, k, v, mask, dropout_p=dropout_p, rng=np.random.default_rng(1))
        dq, dk, dv = F.attention_backward(randn(rng, out.shape, dtype), cache)

    empty_rows = np.broadcast_to(empty, (B, H, Tq))
    for name, a in (("out", out), ("dq", dq), ("dk", dk), ("dv", dv), ("p", cache.p)):
        assert np.all(np.isfinite(a)), name
    assert not out[empty_rows].any() and not dq[empty_rows].any() and not cache.p[empty_rows].any()
    assert np.abs(out[~empty_rows]).sum() > 0
    # the allowed rows are a probability distribution over their allowed keys
    if dropout_p == 0:
        np.testing.assert_allclose(cache.p[~empty_rows].sum(-1), 1, rtol=1e-6)
    assert not np.broadcast_to(~mask, cache.p.shape)[cache.p > 0].any()


@DTYPES
def test_everything_masked(dtype):
    rng = np.random.default_rng(0)
    q, k, v = (randn(rng, (1, 2, 3, 4), dtype) for _ in range(3))
    with np.errstate(divide="raise", invalid="raise", over="raise"):
        out, cache = F.attention_forward(q, k, v, np.zeros((3, 3), dtype=bool))
        grads = F.attention_backward(randn(rng, out.shape, dtype), cache)
    assert out.dtype == dtype and not out.any()
    for g in grads:
        assert g.dtype == dtype and not g.any()


def test_attention_mask_matches_dropping_the_keys():
    """Masking keys out is the same as deleting them (for the rows that keep some)."""
    rng = np.random.default_rng(0)
    q, k, v = (
        rng.standard_normal((1, 1, 4, 3)),
        rng.standard_normal((1, 1, 6, 3)),
        rng.standard_normal((1, 1, 6, 2)),
    )
    keep = np.array([True, False, True, True, False, True])
    out, _ = F.attention_forward(q, k, v, keep)
    ref, _ = F.attention_forward(q, k[..., keep, :], v[..., keep, :])
    np.testing.assert_allclose(out, ref, rtol=1e-14, atol=1e-15)


def test_causal_mask_convention():
    np.testing.assert_array_equal(F.causal_mask(4), np.tril(np.ones((4, 4), dtype=bool)))
    m = F.causal_mask(3, 5)  # top-left aligned, as torch's is_causal
    assert m.dtype == np.bool_ and m.shape == (3, 5)
    np.testing.assert_array_equal(m, np.arange(5)[None, :] <= np.arange(3)[:, None])
    assert F.causal_mask(0).shape == (0, 0)


def test_split_merge_heads_roundtrip():
    x = np.arange(2 * 3 * 8, dtype=np.float64).reshape(2, 3, 8)
    y, h = F.split_heads_forward(x, 4)
    assert y.shape == (2, 4, 3, 2) and h == 4
    np.testing.assert_array_equal(y[1, 2, 0], x[1, 0, 4:6])  # head 2 = channels 4, 5
    z, cache = F.merge_heads_forward(y)
    np.testing.assert_array_equal(z, x)
    np.testing.assert_array_equal(F.merge_heads_backward(x, cache), y)


# ----------------------------------------------------------------------------------------
# extreme logits


@DTYPES
def test_softmax_finite_for_huge_logits(dtype):
    x = np.array([[1e4, -1e4, 1e4], [-1e4, -1e4, -1e4], [1e4, 0.0, -1e4]], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y, cache = F.softmax_forward(x)
        dx = F.softmax_backward(np.ones_like(x), cache)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, np.array([[0.5, 0, 0.5], [1 / 3, 1 / 3, 1 / 3], [1, 0, 0]], dtype=dtype))
    assert np.all(np.isfinite(dx)) and np.allclose(dx, 0)  # softmax ignores a constant shift


@DTYPES
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy_finite_for_huge_logits(dtype, label_smoothing):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]], dtype=dtype)
    targets = np.array([1, 0, 2])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss, cache = F.cross_entropy_forward(
            logits, targets, label_smoothing=label_smoothing, reduction="none"
        )
        d = F.cross_entropy_backward(np.ones(3, dtype), cache)
    assert loss.dtype == dtype and d.dtype == dtype
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(d))
    if label_smoothing == 0:
        np.testing.assert_allclose(loss, [2e4, np.log(3), 2e4 + np.log(2)], rtol=1e-6)


# ----------------------------------------------------------------------------------------
# cross-entropy conventions


@DTYPES
def test_cross_entropy_all_ignored(dtype):
    logits = np.ones((2, 3, 4), dtype)
    targets = np.full((2, 3), -100)
    loss, cache = F.cross_entropy_forward(logits, targets)
    assert isinstance(loss, np.ndarray) and loss.shape == () and loss.dtype == dtype and loss == 0
    d = F.cross_entropy_backward(1.0, cache)
    assert d.shape == logits.shape and d.dtype == dtype and not d.any()


def test_cross_entropy_reductions_and_ignored_positions():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 4, 5))
    targets = rng.integers(0, 5, (3, 4))
    targets[1, 2] = targets[0, 0] = 7  # ignore_index inside the int range, outside the vocabulary
    none, c = F.cross_entropy_forward(logits, targets, ignore_index=7, reduction="none")
    assert none.shape == (3, 4) and none[1, 2] == 0 and none[0, 0] == 0
    s, _ = F.cross_entropy_forward(logits, targets, ignore_index=7, reduction="sum")
    m, _ = F.cross_entropy_forward(logits, targets, ignore_index=7, reduction="mean")
    assert s.shape == () and m.shape == ()
    np.testing.assert_allclose(s, none.sum(), rtol=1e-14)
    np.testing.assert_allclose(m, none.sum() / 10, rtol=1e-14)
    d = F.cross_entropy_backward(np.ones((3, 4)), c)
    assert not d[1, 2].any() and not d[0, 0].any()
    np.testing.assert_allclose(d.sum(-1), 0, atol=1e-15)  # p − q sums to 0 over the classes


# ----------------------------------------------------------------------------------------
# embedding, positional, dropout


def test_embedding_backward_accumulates_repeated_ids():
    weight = np.zeros((4, 3))
    ids = np.array([[1, 1, 3], [1, 0, 3]])
    dy = np.arange(18, dtype=np.float64).reshape(2, 3, 3)
    _, cache = F.embedding_forward(ids, weight)
    dw = F.embedding_backward(dy, cache)
    np.testing.assert_array_equal(dw[1], dy[0, 0] + dy[0, 1] + dy[1, 0])
    np.testing.assert_array_equal(dw[3], dy[0, 2] + dy[1, 2])
    np.testing.assert_array_equal(dw[0], dy[1, 1])
    np.testing.assert_array_equal(dw[2], 0)


def test_embedding_forward_looks_up_rows():
    weight = np.arange(12, dtype=np.float32).reshape(4, 3)
    y, _ = F.embedding_forward(np.array([3, 0, 3]), weight)
    np.testing.assert_array_equal(y, weight[[3, 0, 3]])


def test_sinusoidal_encoding_values():
    pe = F.sinusoidal_encoding(6, 5)
    assert pe.shape == (6, 5) and pe.dtype == np.float64
    np.testing.assert_array_equal(pe[0], [0, 1, 0, 1, 0])  # odd d_model: the last column is a sin
    pos, i = 3, 1
    np.testing.assert_allclose(pe[pos, 2 * i], np.sin(pos / 10000 ** (2 * i / 5)), rtol=1e-15)
    np.testing.assert_allclose(pe[pos, 2 * i + 1], np.cos(pos / 10000 ** (2 * i / 5)), rtol=1e-15)
    np.testing.assert_allclose(pe[pos, 4], np.sin(pos / 10000 ** (4 / 5)), rtol=1e-15)
    assert F.sinusoidal_encoding(6, 5, "float32").dtype == np.float32


def test_positional_backward_zero_past_t():
    x, table = np.ones((2, 3, 4)), np.zeros((7, 4))
    _, cache = F.positional_forward(x, table)
    dy = np.ones((2, 3, 4))
    dx, dtable = F.positional_backward(dy, cache)
    assert dtable.shape == (7, 4)
    np.testing.assert_array_equal(dtable[:3], 2)
    np.testing.assert_array_equal(dtable[3:], 0)
    np.testing.assert_array_equal(dx, dy)


def test_dropout_identity_and_extremes():
    x = np.random.default_rng(0).standard_normal((3, 4))
    rng = np.random.default_rng(5)
    state = rng.bit_generator.state
    for kw in ({"p": 0.5, "training": False}, {"p": 0.0}):
        y, cache = F.dropout_forward(x, rng=rng, **kw)
        np.testing.assert_array_equal(y, x)
        np.testing.assert_array_equal(F.dropout_backward(x, cache), x)
    y, cache = F.dropout_forward(x, 1.0, rng)
    assert not y.any() and not F.dropout_backward(x, cache).any()
    assert rng.bit_generator.state == state  # the generator was never used
    y, cache = F.dropout_forward(x, 0.5, None, training=False)  # no generator needed in eval
    np.testing.assert_array_equal(y, x)


def test_dropout_mask_and_scale():
    x = np.random.default_rng(0).standard_normal((50, 40)) + 3.0
    p = 0.25
    y, _ = F.dropout_forward(x, p, np.random.default_rng(7))
    keep = np.random.default_rng(7).random(x.shape) >= p
    np.testing.assert_array_equal(y != 0, keep)
    np.testing.assert_allclose(y[keep], x[keep] / (1 - p), rtol=1e-15)
    assert abs(keep.mean() - (1 - p)) < 0.05


def test_relu_derivative_at_zero_is_zero():
    y, cache = F.relu_forward(np.array([-1.0, 0.0, 2.0]))
    np.testing.assert_array_equal(y, [0, 0, 2])
    np.testing.assert_array_equal(F.relu_backward(np.ones(3), cache), [0, 0, 1])


def test_residual_returns_the_gradient_to_both_branches():
    dy = np.ones((2, 3))
    dx, dfx = F.residual_backward(dy, None)
    np.testing.assert_array_equal(dx, dy)
    np.testing.assert_array_equal(dfx, dy)


# ----------------------------------------------------------------------------------------
# bad input: the error names the argument


def _bad_cases():
    f64 = np.zeros((2, 3, 4))
    f32 = np.zeros((2, 3, 4), np.float32)
    i64 = np.zeros((2, 3, 4), np.int64)
    w = np.zeros((5, 4))
    rng = np.random.default_rng(0)
    _, lin = F.linear_forward(f64, w)
    _, emb = F.embedding_forward(np.zeros((2, 3), np.int64), np.zeros((6, 4)))
    _, pos = F.positional_forward(f64, np.zeros((5, 4)))
    _, ln = F.layernorm_forward(f64, np.ones(4), np.zeros(4))
    _, relu = F.relu_forward(f64)
    _, gelu = F.gelu_forward(f64)
    _, drop = F.dropout_forward(f64, 0.5, rng)
    _, sm = F.softmax_forward(f64)
    q4 = np.zeros((2, 2, 3, 4))
    _, att = F.attention_forward(q4, q4, q4)
    _, ce_mean = F.cross_entropy_forward(f64, np.zeros((2, 3), np.int64))
    _, ce_none = F.cross_entropy_forward(f64, np.zeros((2, 3), np.int64), reduction="none")
    targets = np.zeros((2, 3), np.int64)

    # fmt: off
    return [
        # linear
        ("linear x int", lambda: F.linear_forward(i64, w), TypeError, "x"),
        ("linear x list", lambda: F.linear_forward([[1.0]], w), TypeError, "x"),
        ("linear weight 1-D", lambda: F.linear_forward(f64, np.zeros(4)), ValueError, "weight"),
        ("linear x width", lambda: F.linear_forward(f64, np.zeros((5, 3))), ValueError, "x"),
        ("linear bias shape", lambda: F.linear_forward(f64, w, np.zeros(4)), ValueError, "bias"),
        ("linear mixed weight", lambda: F.linear_forward(f64, w.astype(np.float32)), TypeError, "weight"),
        ("linear mixed bias", lambda: F.linear_forward(f64, w, np.zeros(5, np.float32)), TypeError, "bias"),
        ("linear dy shape", lambda: F.linear_backward(np.zeros((2, 3, 4)), lin), ValueError, "dy"),
        ("linear dy dtype", lambda: F.linear_backward(np.zeros((2, 3, 5), np.float32), lin), TypeError, "dy"),
        # embedding
        ("embedding ids >= V", lambda: F.embedding_forward(np.array([0, 6]), np.zeros((6, 4))), ValueError, "ids"),
        ("embedding ids < 0", lambda: F.embedding_forward(np.array([-1, 2]), np.zeros((6, 4))), ValueError, "ids"),
        ("embedding ids float", lambda: F.embedding_forward(np.array([0.0]), np.zeros((6, 4))), TypeError, "ids"),
        ("embedding weight int", lambda: F.embedding_forward(np.array([0]), np.zeros((6, 4), int)), TypeError,
         "weight"),
        ("embedding weight 3-D", lambda: F.embedding_forward(np.array([0]), np.zeros((6, 4, 1))), ValueError,
         "weight"),
        ("embedding dy shape", lambda: F.embedding_backward(np.zeros((2, 3, 5)), emb), ValueError, "dy"),
        ("embedding dy dtype", lambda: F.embedding_backward(f32, emb), TypeError, "dy"),
        # sinusoidal / positional
        ("sinusoidal length", lambda: F.sinusoidal_encoding(-1, 4), ValueError, "length"),
        ("sinusoidal d_model 0", lambda: F.sinusoidal_encoding(3, 0), ValueError, "d_model"),
        ("sinusoidal d_model float", lambda: F.sinusoidal_encoding(3, 2.5), TypeError, "d_model"),
        ("sinusoidal dtype", lambda: F.sinusoidal_encoding(3, 4, np.int32), TypeError, "dtype"),
        ("positional T > T_max", lambda: F.positional_forward(f64, np.zeros((2, 4))), ValueError, "x"),
        ("positional x 2-D", lambda: F.positional_forward(np.zeros((3, 4)), np.zeros((5, 4))), ValueError, "x"),
        ("positional table width", lambda: F.positional_forward(f64, np.zeros((5, 3))), ValueError, "table"),
        ("positional mixed", lambda: F.positional_forward(f64, np.zeros((5, 4), np.float32)), TypeError, "table"),
        ("positional dy shape", lambda: F.positional_backward(np.zeros((2, 4, 4)), pos), ValueError, "dy"),
        # layernorm
        ("layernorm x int", lambda: F.layernorm_forward(i64, np.ones(4), np.zeros(4)), TypeError, "x"),
        ("layernorm gamma shape", lambda: F.layernorm_forward(f64, np.ones(3), np.zeros(4)), ValueError, "gamma"),
        ("layernorm beta shape", lambda: F.layernorm_forward(f64, np.ones(4), np.zeros((1, 4))), ValueError,
         "beta"),
        ("layernorm mixed gamma", lambda: F.layernorm_forward(f64, np.ones(4, np.float32), np.zeros(4)),
         TypeError, "gamma"),
        ("layernorm mixed beta", lambda: F.layernorm_forward(f32, np.ones(4, np.float32), np.zeros(4)),
         TypeError, "beta"),
        ("layernorm eps", lambda: F.layernorm_forward(f64, np.ones(4), np.zeros(4), eps=-1.0), ValueError, "eps"),
        ("layernorm eps inf", lambda: F.layernorm_forward(f64, np.ones(4), np.zeros(4), eps=np.inf), ValueError,
         "eps"),
        ("layernorm dy shape", lambda: F.layernorm_backward(np.zeros((2, 3)), ln), ValueError, "dy"),
        # activations
        ("relu x int", lambda: F.relu_forward(i64), TypeError, "x"),
        ("relu dy shape", lambda: F.relu_backward(np.zeros((2, 3)), relu), ValueError, "dy"),
        ("gelu x int", lambda: F.gelu_forward(i64), TypeError, "x"),
        ("gelu approximate", lambda: F.gelu_forward(f64, approximate="erf"), ValueError, "approximate"),
        ("gelu dy dtype", lambda: F.gelu_backward(f32, gelu), TypeError, "dy"),
        # dropout
        ("dropout p > 1", lambda: F.dropout_forward(f64, 1.5, rng), ValueError, "p"),
        ("dropout p < 0", lambda: F.dropout_forward(f64, -0.1, rng), ValueError, "p"),
        ("dropout p str", lambda: F.dropout_forward(f64, "0.5", rng), TypeError, "p"),
        ("dropout rng missing", lambda: F.dropout_forward(f64, 0.5, None), TypeError, "rng"),
        ("dropout rng legacy", lambda: F.dropout_forward(f64, 0.5, np.random.RandomState(0)), TypeError, "rng"),
        ("dropout x int", lambda: F.dropout_forward(i64, 0.5, rng), TypeError, "x"),
        ("dropout dy shape", lambda: F.dropout_backward(np.zeros((2, 3)), drop), ValueError, "dy"),
        # softmax
        ("softmax axis", lambda: F.softmax_forward(f64, axis=3), ValueError, "axis"),
        ("softmax axis float", lambda: F.softmax_forward(f64, axis=1.0), TypeError, "axis"),
        ("softmax x int", lambda: F.softmax_forward(i64), TypeError, "x"),
        ("softmax dy shape", lambda: F.softmax_backward(np.zeros((2, 3)), sm), ValueError, "dy"),
        # attention
        ("causal t_q", lambda: F.causal_mask(-1), ValueError, "t_q"),
        ("causal t_k", lambda: F.causal_mask(3, 1.5), TypeError, "t_k"),
        ("attention q int", lambda: F.attention_forward(q4.astype(int), q4, q4), TypeError, "q"),
        ("attention q 1-D", lambda: F.attention_forward(np.zeros(4), q4, q4), ValueError, "q"),
        ("attention k width", lambda: F.attention_forward(q4, np.zeros((2, 2, 3, 5)), q4), ValueError, "k"),
        ("attention k ndim", lambda: F.attention_forward(q4, np.zeros((2, 3, 4)), q4), ValueError, "k"),
        ("attention k batch", lambda: F.attention_forward(q4, np.zeros((3, 2, 3, 4)), q4), ValueError, "k"),
        ("attention v length", lambda: F.attention_forward(q4, q4, np.zeros((2, 2, 5, 4))), ValueError, "v"),
        ("attention mixed k", lambda: F.attention_forward(q4, q4.astype(np.float32), q4), TypeError, "k"),
        ("attention mixed v", lambda: F.attention_forward(q4, q4, q4.astype(np.float32)), TypeError, "v"),
        ("attention mask shape", lambda: F.attention_forward(q4, q4, q4, np.ones((3, 4), bool)), ValueError,
         "mask"),
        ("attention mask ndim", lambda: F.attention_forward(q4, q4, q4, np.ones((1, 2, 2, 3, 3), bool)),
         ValueError, "mask"),
        ("attention mask float", lambda: F.attention_forward(q4, q4, q4, np.ones((3, 3))), TypeError, "mask"),
        ("attention dropout_p", lambda: F.attention_forward(q4, q4, q4, dropout_p=2.0), ValueError, "dropout_p"),
        ("attention rng", lambda: F.attention_forward(q4, q4, q4, dropout_p=0.1), TypeError, "rng"),
        ("attention dout shape", lambda: F.attention_backward(np.zeros((2, 2, 3, 5)), att), ValueError, "dout"),
        ("attention dout dtype", lambda: F.attention_backward(q4.astype(np.float32), att), TypeError, "dout"),
        ("split heads not dividing", lambda: F.split_heads_forward(f64, 3), ValueError, "n_heads"),
        ("split heads zero", lambda: F.split_heads_forward(f64, 0), ValueError, "n_heads"),
        ("split heads float", lambda: F.split_heads_forward(f64, 2.0), TypeError, "n_heads"),
        ("split heads x 4-D", lambda: F.split_heads_forward(q4, 2), ValueError, "x"),
        ("split heads dy heads", lambda: F.split_heads_backward(np.zeros((2, 3, 3, 2)), 2), ValueError, "dy"),
        ("merge heads x 3-D", lambda: F.merge_heads_forward(f64), ValueError, "x"),
        ("merge heads x int", lambda: F.merge_heads_forward(q4.astype(int)), TypeError, "x"),
        ("merge heads dy width", lambda: F.merge_heads_backward(np.zeros((2, 3, 5)), 2), ValueError, "dy"),
        ("merge heads dy 4-D", lambda: F.merge_heads_backward(q4, 2), ValueError, "dy"),
        # cross-entropy
        ("ce targets >= V", lambda: F.cross_entropy_forward(f64, np.full((2, 3), 4)), ValueError, "targets"),
        ("ce targets < 0", lambda: F.cross_entropy_forward(f64, np.full((2, 3), -1)), ValueError, "targets"),
        ("ce targets float", lambda: F.cross_entropy_forward(f64, np.zeros((2, 3))), TypeError, "targets"),
        ("ce targets shape", lambda: F.cross_entropy_forward(f64, np.zeros((2, 4), int)), ValueError, "targets"),
        ("ce logits int", lambda: F.cross_entropy_forward(i64, targets), TypeError, "logits"),
        ("ce reduction", lambda: F.cross_entropy_forward(f64, targets, reduction="avg"), ValueError, "reduction"),
        ("ce label_smoothing", lambda: F.cross_entropy_forward(f64, targets, label_smoothing=1.5), ValueError,
         "label_smoothing"),
        ("ce ignore_index", lambda: F.cross_entropy_forward(f64, targets, ignore_index=1.5), TypeError,
         "ignore_index"),
        ("ce dloss array for mean", lambda: F.cross_entropy_backward(np.ones(3), ce_mean), ValueError, "dloss"),
        ("ce dloss str", lambda: F.cross_entropy_backward("1", ce_mean), TypeError, "dloss"),
        ("ce dloss shape for none", lambda: F.cross_entropy_backward(np.ones(6), ce_none), ValueError, "dloss"),
        ("ce dloss dtype for none", lambda: F.cross_entropy_backward(np.ones((2, 3), np.float32), ce_none),
         TypeError, "dloss"),
        # residual
        ("residual x int", lambda: F.residual_forward(i64, f64), TypeError, "x"),
        ("residual shape", lambda: F.residual_forward(f64, np.zeros((2, 3, 1))), ValueError, "fx"),
        ("residual mixed", lambda: F.residual_forward(f64, f32), TypeError, "fx"),
        ("residual dy list", lambda: F.residual_backward([1.0], None), TypeError, "dy"),
    ]
    # fmt: on


BAD = _bad_cases()


@pytest.mark.parametrize("call, error, argname", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_names_the_argument(call, error, argname):
    with pytest.raises(error, match=rf"^{argname}:"):
        call()
