"""Every functional pair against central differences in float64 (refsparse.gradcheck.check_op).

Shapes are drawn by hypothesis (batch 1–3, length 1–9, widths 1–16, heads dividing the
width); check_op draws a random upstream gradient, so a transposed or summed-away axis
cannot hide behind an all-ones gradient. Tolerance: rtol 1e-7 relative to each tensor's
largest entry.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refsparse.functional as F
from refsparse.gradcheck import check_op

RTOL = 1e-7

batch = st.integers(1, 3)
length = st.integers(1, 9)
width = st.integers(1, 16)
seeds = st.integers(0, 2**32 - 1)


def check(forward, backward, inputs, seed, **kw):
    report = check_op(forward, backward, inputs, rng=np.random.default_rng(seed), rtol=RTOL, **kw)
    report.raise_if_failed()
    return report


@st.composite
def head_dims(draw):
    """(H, D) with H·D <= 16: heads that divide the width."""
    h = draw(st.integers(1, 4))
    d = draw(st.integers(1, 16 // h))
    return h, d


# ----------------------------------------------------------------------------------------
# linear, embedding, positional


@given(b=batch, t=length, c_in=width, c_out=width, bias=st.booleans(), seed=seeds)
def test_linear(b, t, c_in, c_out, bias, seed):
    rng = np.random.default_rng(seed)
    inputs = {"x": rng.standard_normal((b, t, c_in)), "weight": rng.standard_normal((c_out, c_in))}
    if bias:
        inputs["bias"] = rng.standard_normal(c_out)
        check(F.linear_forward, F.linear_backward, inputs, seed)
    else:
        check(F.linear_forward, lambda dy, c: F.linear_backward(dy, c)[:2], inputs, seed)


@given(n=width, c_in=width, c_out=width, seed=seeds)
def test_linear_2d(n, c_in, c_out, seed):
    rng = np.random.default_rng(seed)
    inputs = {
        "x": rng.standard_normal((n, c_in)),
        "weight": rng.standard_normal((c_out, c_in)),
        "bias": rng.standard_normal(c_out),
    }
    check(F.linear_forward, F.linear_backward, inputs, seed)


@given(b=batch, t=length, v=width, c=width, seed=seeds)
def test_embedding(b, t, v, c, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, v, size=(b, t))  # small V: repeated ids are the rule
    inputs = {"ids": ids, "weight": rng.standard_normal((v, c))}
    check(F.embedding_forward, F.embedding_backward, inputs, seed, wrt=["weight"])


@given(b=batch, t=length, extra=st.integers(0, 4), c=width, seed=seeds)
def test_positional(b, t, extra, c, seed):
    rng = np.random.default_rng(seed)
    inputs = {"x": rng.standard_normal((b, t, c)), "table": rng.standard_normal((t + extra, c))}
    check(F.positional_forward, F.positional_backward, inputs, seed)


# ----------------------------------------------------------------------------------------
# layernorm, activations, dropout, softmax, residual


@given(b=batch, t=length, c=width, seed=seeds)
def test_layernorm(b, t, c, seed):
    rng = np.random.default_rng(seed)
    inputs = {
        "x": rng.standard_normal((b, t, c)) * 2 + 0.5,
        "gamma": rng.standard_normal(c),
        "beta": rng.standard_normal(c),
    }
    check(F.layernorm_forward, F.layernorm_backward, inputs, seed)


@given(b=batch, t=length, c=width, seed=seeds)
def test_relu(b, t, c, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, t, c))
    x[np.abs(x) < 1e-3] = 0.5  # keep clear of the kink at 0 (ε = 1e-6 differences)
    check(F.relu_forward, F.relu_backward, {"x": x}, seed)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@given(b=batch, t=length, c=width, seed=seeds)
def test_gelu(approximate, b, t, c, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, t, c)) * 3
    check(F.gelu_forward, F.gelu_backward, {"x": x}, seed, kwargs={"approximate": approximate})


@given(
    b=batch,
    t=length,
    c=width,
    p=st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]),
    training=st.booleans(),
    seed=seeds,
)
def test_dropout(b, t, c, p, training, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, t, c))

    def forward(x):  # a fresh generator with the same seed: the same mask every call
        return F.dropout_forward(x, p, np.random.default_rng(seed), training=training)

    check(forward, F.dropout_backward, {"x": x}, seed)


@given(b=batch, t=length, c=width, axis=st.integers(-3, 2), seed=seeds)
def test_softmax(b, t, c, axis, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, t, c)) * 3
    check(F.softmax_forward, F.softmax_backward, {"x": x}, seed, kwargs={"axis": axis})


@given(b=batch, t=length, c=width, seed=seeds)
def test_residual(b, t, c, seed):
    rng = np.random.default_rng(seed)
    inputs = {"x": rng.standard_normal((b, t, c)), "fx": rng.standard_normal((b, t, c))}
    check(F.residual_forward, F.residual_backward, inputs, seed)


# ----------------------------------------------------------------------------------------
# attention


def attention_inputs(rng, b, h, tq, tk, d, dv):
    return {
        "q": rng.standard_normal((b, h, tq, d)),
        "k": rng.standard_normal((b, h, tk, d)),
        "v": rng.standard_normal((b, h, tk, dv)),
    }


@given(
    b=batch,
    hd=head_dims(),
    tq=length,
    tk=length,
    dv=st.integers(1, 8),
    kind=st.sampled_from(["none", "causal", "random", "random_empty_rows", "padding", "all_masked"]),
    seed=seeds,
)
def test_attention(b, hd, tq, tk, dv, kind, seed):
    h, d = hd
    rng = np.random.default_rng(seed)
    inputs = attention_inputs(rng, b, h, tq, tk, d, dv)
    if kind == "none":
        mask = None
    elif kind == "causal":
        mask = F.causal_mask(tq, tk)  # (Tq, Tk), broadcast over (B, H); row 0 sees key 0
    elif kind == "random":
        mask = rng.random((b, h, tq, tk)) < 0.6
    elif kind == "random_empty_rows":
        mask = rng.random((b, 1, tq, tk)) < 0.6
        mask[:, :, rng.random(tq) < 0.4, :] = False  # whole query rows with no allowed key
    elif kind == "padding":
        mask = rng.random((b, 1, 1, tk)) < 0.7  # key padding, may pad every key of a sequence
    else:
        mask = np.zeros((tq, tk), dtype=bool)
    check(F.attention_forward, F.attention_backward, inputs, seed, kwargs={"mask": mask})


@given(
    b=batch,
    hd=head_dims(),
    tq=length,
    tk=length,
    p=st.sampled_from([0.2, 0.5]),
    masked=st.booleans(),
    seed=seeds,
)
def test_attention_dropout(b, hd, tq, tk, p, masked, seed):
    h, d = hd
    rng = np.random.default_rng(seed)
    inputs = attention_inputs(rng, b, h, tq, tk, d, d)
    mask = rng.random((tq, tk)) < 0.6 if masked else None

    def forward(q, k, v):  # the same dropout mask on every call
        return F.attention_forward(q, k, v, mask, dropout_p=p, rng=np.random.default_rng(seed))

    check(forward, F.attention_backward, inputs, seed)


@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=2), tq=length, tk=length, d=width, seed=seeds)
def test_attention_any_leading_axes(lead, tq, tk, d, seed):
    rng = np.random.default_rng(seed)
    lead = tuple(lead)
    inputs = {
        "q": rng.standard_normal(lead + (tq, d)),
        "k": rng.standard_normal(lead + (tk, d)),
        "v": rng.standard_normal(lead + (tk, d)),
    }
    check(F.attention_forward, F.attention_backward, inputs, seed, kwargs={"mask": F.causal_mask(tq, tk)})


@given(b=batch, t=length, hd=head_dims(), seed=seeds)
def test_split_merge_heads(b, t, hd, seed):
    h, d = hd
    rng = np.random.default_rng(seed)
    check(
        F.split_heads_forward,
        F.split_heads_backward,
        {"x": rng.standard_normal((b, t, h * d))},
        seed,
        kwargs={"n_heads": h},
    )
    check(F.merge_heads_forward, F.merge_heads_backward, {"x": rng.standard_normal((b, h, t, d))}, seed)


# ----------------------------------------------------------------------------------------
# cross-entropy


@given(
    b=batch,
    t=length,
    v=width,
    reduction=st.sampled_from(["mean", "sum", "none"]),
    label_smoothing=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    ignore=st.sampled_from(["none", "some", "all", "in_vocab"]),
    seed=seeds,
)
def test_cross_entropy(b, t, v, reduction, label_smoothing, ignore, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((b, t, v)) * 3
    targets = rng.integers(0, v, size=(b, t))
    ignore_index = -100
    if ignore == "some":
        targets[rng.random((b, t)) < 0.3] = ignore_index
    elif ignore == "all":
        targets[:] = ignore_index
    elif ignore == "in_vocab":
        ignore_index = 0  # a pad id inside the vocabulary: those targets are ignored
    kwargs = {"ignore_index": ignore_index, "label_smoothing": label_smoothing, "reduction": reduction}
    check(
        F.cross_entropy_forward,
        F.cross_entropy_backward,
        {"logits": logits, "targets": targets},
        seed,
        wrt=["logits"],
        kwargs=kwargs,
    )
