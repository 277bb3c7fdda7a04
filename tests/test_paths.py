"""The two paths give the same model: whole-model forward, loss and every gradient agree between
the reference kernels and the fast ones to 1e-12 relative in float64, for dense, local, strided,
fixed and RigL-sparse models; and a training run prints the same losses on both paths.

The reference path is the definition (``refsparse/kernels/reference/``); the fast path is tested
equal to it op by op elsewhere. Here the whole model is: every kernel a training step calls, in the
order it calls them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import refsparse.kernels as K
from refsparse.models import DecoderLM, DecoderLMConfig
from refsparse.prune import sparsify

V, B, T = 23, 3, 16


def _model(attention, sparse):
    cfg = DecoderLMConfig(vocab_size=V, d_model=32, n_heads=4, n_layers=2, d_ff=64, max_len=T,
                          attention=attention, dtype="float64")
    model = DecoderLM(cfg, rng=np.random.default_rng(1))
    if sparse:
        sparsify(model, 0.8, distribution="erk", criterion="random", rng=np.random.default_rng(2))
    return model


def _step(model, ids, targets):
    """Loss, logits and every gradient (as dense copies) of one forward + backward."""
    model.zero_grad()
    logits = model.forward(ids)
    loss = model.forward_backward(ids, targets)
    grads = {name: np.array(p.grad, copy=True) for name, p in model.parameters()}
    return loss, np.array(logits, copy=True), grads


def _rel(a, b):
    scale = max(np.max(np.abs(b)), 1e-300)
    return float(np.max(np.abs(a - b)) / scale)


@pytest.mark.parametrize("attention", ["full", "local:window=5", "strided:stride=4", "fixed:block=4,c=1"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense-weights", "sparse-weights"])
def test_whole_model_agrees_between_paths(attention, sparse):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, size=(B, T))
    targets = rng.integers(0, V, size=(B, T))
    results = {}
    for path in ("reference", "fast"):
        with K.use(path):
            results[path] = _step(_model(attention, sparse), ids, targets)
    (loss_r, logits_r, grads_r), (loss_f, logits_f, grads_f) = results["reference"], results["fast"]
    assert abs(loss_f - loss_r) <= 1e-12 * abs(loss_r), (loss_f, loss_r)
    assert _rel(logits_f, logits_r) <= 1e-12
    assert grads_r.keys() == grads_f.keys()
    # each gradient against its layer's scale (the largest entry of the gradients whose names share
    # the prefix up to the last dot): a gradient that is zero by the math — the key projection's
    # bias, since softmax ignores a number added to a whole row of scores — holds only rounding
    # noise, and relative to itself that noise is O(1) whatever the paths do
    def layer(n):
        return n.rsplit(".", 1)[0]

    scale = {}
    for n, g in grads_r.items():
        scale[layer(n)] = max(scale.get(layer(n), 0.0), float(np.max(np.abs(g))))
    errors = {n: float(np.max(np.abs(grads_f[n] - grads_r[n]))) / max(scale[layer(n)], 1e-300) for n in grads_r}
    bad = {n: e for n, e in errors.items() if e > 1e-12}
    assert not bad, f"gradients differ between the paths (max error / layer scale): {bad}"
    assert max(errors.values()) > 0 or attention == "full"  # the paths really are two


def test_rigl_training_agrees_between_paths(tmp_path):
    """Twelve steps of a RigL run through the real Trainer (its drop-and-grow every 3 steps reads
    the dense gradient; AdamW; warm-up and clipping): the same weights, patterns and losses on both
    paths, float64."""
    from refsparse.train import TrainConfig, Trainer
    from test_train import tiny_text

    finals = {}
    for path in ("reference", "fast"):
        cfg = TrainConfig(text=tiny_text(tmp_path), out_dir=str(tmp_path / path), name="r", dtype="float64",
                          d_model=32, n_heads=2, n_layers=1, d_ff=64, seq_len=16, batch_size=4, steps=12,
                          warmup_steps=2, eval_every=6, eval_batches=2, log_every=1,
                          attention="local:window=5", sparsity=0.8, method="rigl", update_every=3)
        with K.use(path):
            tr = Trainer(cfg, progress=False, log=lambda *a: None)
            tr.run()
        finals[path] = {n: (np.array(p.values, copy=True), getattr(p.value, "indices", None))
                        for n, p in tr.model.parameters()}
    assert finals["reference"].keys() == finals["fast"].keys()
    for name, (v_r, idx_r) in finals["reference"].items():
        v_f, idx_f = finals["fast"][name]
        if idx_r is not None:
            np.testing.assert_array_equal(idx_f, idx_r, err_msg=f"{name}: the patterns differ")
        assert _rel(v_f, v_r) <= 1e-12, (name, _rel(v_f, v_r))


def _train_losses(tmp_path, kernels):
    out = tmp_path / kernels
    cmd = [sys.executable, "-m", "refsparse.cli", "train", "--kernels", kernels, "--steps", "8",
           "--dtype", "float64", "--no-progress", "--out-dir", str(out), "--name", "run",
           "--attention", "local:window=8", "--sparsity", "0.8", "--method", "rigl",
           "--set", "d_model=32", "--set", "n_layers=1", "--set", "d_ff=64", "--set", "seq_len=16",
           "--set", "batch_size=4", "--set", "log_every=1", "--set", "eval_every=4",
           "--set", "update_every=3", "--set", "sample_chars=0"]
    env = {**os.environ, "REFSPARSE_KERNELS": "fast"}  # the flag, not the environment, picks the path
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    with open(out / "run" / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    losses = [r["loss"] for r in records if r.get("loss") is not None]
    final = [r["final_val_loss"] for r in records if r.get("eval") == "final"]
    assert len(losses) == 8 and len(final) == 1
    return np.array(losses + final)


def test_train_command_prints_the_same_losses_on_both_paths(tmp_path):
    """`refsparse train --kernels reference` and `--kernels fast`: the same losses to 1e-12."""
    ref, fast = _train_losses(tmp_path, "reference"), _train_losses(tmp_path, "fast")
    np.testing.assert_allclose(fast, ref, rtol=1e-12, atol=0)
