"""DecoderLM on padded batches: ``forward(ids, key_padding_mask, position_ids)`` and its backward.

The independent computation is the same model run on each sequence alone, unpadded: a padded
batch (left or right) must give the same logits at the real positions, and — with the padded
targets ignored — the same loss and the same gradient as those separate runs add up to.
Fully masked query rows (a left-padded row's padding) follow the zero-row convention: finite,
never NaN.
"""

import numpy as np
import pytest

from refsparse.gradcheck import check_module
from refsparse.models import DecoderLM, DecoderLMConfig

V, C, H, L, T = 13, 8, 2, 2, 7
LENGTHS = [7, 4, 2]


def _model(attention="full", dtype="float64", **kw):
    cfg = DecoderLMConfig(vocab_size=V, d_model=C, n_heads=H, n_layers=L, d_ff=16, max_len=T + 2,
                          activation="gelu_tanh", attention=attention, dtype=dtype, **kw)
    model = DecoderLM(cfg, rng=np.random.default_rng(0))
    r = np.random.default_rng(5)  # move LayerNorm off ones/zeros so every path counts
    for name, p in model.parameters():
        if "norm" in name:
            p.values[...] += 0.1 * r.standard_normal(p.values.shape)
    return model


def _padded(side, pad_id=0):
    rng = np.random.default_rng(1)
    seqs = [rng.integers(1, V, n) for n in LENGTHS]
    ids = np.full((len(seqs), T), pad_id, dtype=np.int64)
    pad = np.ones((len(seqs), T), dtype=bool)  # True = padding
    pos = np.zeros((len(seqs), T), dtype=np.int64)
    for b, s in enumerate(seqs):
        sl = slice(0, len(s)) if side == "right" else slice(T - len(s), T)
        ids[b, sl], pad[b, sl], pos[b, sl] = s, False, np.arange(len(s))
    return seqs, ids, pad, pos, sl


def _where(side, n):
    return slice(0, n) if side == "right" else slice(T - n, T)


@pytest.mark.parametrize("attention", ["full", "local:window=3"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_each_sequence_alone(side, attention):
    model = _model(attention)
    seqs, ids, pad, pos, _ = _padded(side)
    logits = model.forward(ids, key_padding_mask=pad, position_ids=pos)
    assert np.all(np.isfinite(logits))  # padded query rows: zero attention output, no NaN
    for b, s in enumerate(seqs):
        alone = model.forward(s[None, :])
        np.testing.assert_allclose(logits[b, _where(side, len(s))], alone[0], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_loss_and_gradients_equal_the_separate_runs(side):
    model = _model()
    seqs, ids, pad, pos, _ = _padded(side)
    targets = np.full_like(ids, -100)
    n_targets = 0
    for b, s in enumerate(seqs):
        w = _where(side, len(s))
        t = np.full(len(s), -100)
        t[:-1] = s[1:]  # position t predicts token t + 1; the last predicts nothing here
        targets[b, w] = t
        n_targets += len(s) - 1
    model.zero_grad()
    loss = model.forward_backward(ids, targets, key_padding_mask=pad, position_ids=pos)
    grads = {n: p.grad.copy() for n, p in model.parameters()}

    # the independent sum: each sequence alone, its mean loss weighted by its share of targets
    want_loss = 0.0
    want = {n: np.zeros_like(g) for n, g in grads.items()}
    for s in seqs:
        if len(s) < 2:
            continue
        model.zero_grad()
        t = np.full(len(s), -100)
        t[:-1] = s[1:]
        share = (len(s) - 1) / n_targets
        want_loss += share * model.forward_backward(s[None, :], t[None, :])
        for n, p in model.parameters():
            want[n] += share * p.grad
    assert loss == pytest.approx(want_loss, rel=1e-13)
    # each tensor to 1e-12 of its own scale; a gradient that is zero in exact arithmetic (the
    # key bias's: softmax ignores a shift shared by a row) to 1e-12 of the largest gradient
    floor = 1e-12 * max(np.abs(g).max() for g in want.values())
    for n, g in grads.items():
        atol = max(1e-12 * np.abs(want[n]).max(), floor)
        np.testing.assert_allclose(g, want[n], rtol=0, atol=atol, err_msg=n)


def test_a_padded_batch_gradchecks():
    model = _model()
    _, ids, pad, pos, _ = _padded("left")
    check_module(model, ids, kwargs={"key_padding_mask": pad, "position_ids": pos},
                 max_entries=20).raise_if_failed()


def test_padding_arguments_are_checked():
    model = _model()
    ids = np.zeros((2, 4), dtype=np.int64)
    with pytest.raises(TypeError, match="key_padding_mask: expected dtype bool"):
        model.forward(ids, key_padding_mask=np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"key_padding_mask: expected shape \(2, 4\)"):
        model.forward(ids, key_padding_mask=np.zeros((2, 5), bool))
    with pytest.raises(ValueError, match=r"position_ids: expected values < 9"):
        model.forward(ids, position_ids=np.full((2, 4), 9))
    with pytest.raises(ValueError, match=r"position_ids: expected shape \(2, 4\) or \(4,\)"):
        model.forward(ids, position_ids=np.zeros((3, 4), dtype=np.int64))
    # (T,) positions are every row's
    a = model.forward(ids, position_ids=np.arange(4))
    np.testing.assert_array_equal(a, model.forward(ids))
