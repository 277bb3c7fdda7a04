"""The two paths agree on a whole model: a float64 DecoderLM with dense attention, large
enough that every dense fast kernel runs (LayerNorm, GELU, the attention softmax), gives
the same loss and gradients on the fast and the reference path, to 1e-12 relative to each
layer's largest gradient entry. (The Adam kernel is held to its reference bit for bit in
tests/test_optim.py.)"""

import numpy as np
import pytest

from refsparse import kernels
from refsparse.kernels import activations, dense_attention, layernorm
from refsparse.models import DecoderLM, DecoderLMConfig


def forward_backward(path, activation):
    cfg = DecoderLMConfig(vocab_size=40, d_model=128, n_heads=2, n_layers=2, d_ff=256, max_len=128,
                          activation=activation, dtype="float64")
    model = DecoderLM(cfg, rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 40, (2, 128)), rng.integers(0, 40, (2, 128))
    with kernels.use(path):
        model.zero_grad()
        loss = model.forward_backward(x, y)
    return loss, {name: p.grad.copy() for name, p in model.parameters()}


def layer_scale(name, grads):
    """The largest gradient entry of the parameter's layer (names sharing the prefix up to
    the last dot): the key projection's bias has a zero gradient by the math (softmax
    ignores a constant added to a row), so its own entries are rounding noise."""
    layer = name.rsplit(".", 1)[0] + "."
    return max(float(np.abs(g).max()) for n, g in grads.items() if n.startswith(layer))


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh"])
def test_decoder_lm_fast_path_equals_reference_path(activation, monkeypatch):
    calls = set()
    for module, name in [(layernorm, "layernorm_fwd"), (layernorm, "layernorm_bwd"),
                         (activations, "gelu_exact_fwd" if activation == "gelu" else "gelu_tanh_fwd"),
                         (dense_attention, "softmax_rows"), (dense_attention, "softmax_grad")]:
        kernel = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _k=kernel, _n=name: (calls.add(_n), _k(*a))[1])
    loss, grads = forward_backward("fast", activation)
    assert len(calls) == 5, calls  # every dense fast kernel ran
    calls.clear()
    ref_loss, ref_grads = forward_backward("reference", activation)
    assert not calls  # and none on the reference path
    assert abs(loss - ref_loss) <= 1e-12 * abs(ref_loss)
    assert sorted(grads) == sorted(ref_grads)
    for name in ref_grads:
        err = np.abs(grads[name] - ref_grads[name]).max()
        assert err <= 1e-12 * layer_scale(name, ref_grads), f"{name}: {err:.3e}"
