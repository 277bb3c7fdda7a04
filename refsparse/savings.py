"""What sparsity bought: a trained model against the same model dense, measured, never estimated.

`refsparse train` ends with these numbers (and writes them into the final record of
``metrics.jsonl``, under ``"savings"``):

=======================  ================================================================
``weights``              per kind of layer (attention projections, feed-forward) and over
                         both: stored entries, dense cells, sparsity = 1 − stored / cells
``parameters``           every parameter the model stores against the dense model's count
``attention``            mean stored entries per query row of each layer's pattern at the
                         context length T, against dense causal attention's (T + 1) / 2
``checkpoint_bytes``     the run's checkpoint file against the dense twin's, written the
                         same way (weights, AdamW state, random streams) and then removed
``step_ms``              the median time of one training step of the model and of its dense
                         twin, timed in turns on the same batch in this process
=======================  ================================================================

The *dense twin* (`dense_twin`) is the same network with every weight dense (the
pruned ones zero) and full causal attention: what ``refsparse train --dense`` trains. Its
step is the step a dense run of this model would take; its checkpoint holds the same
fields as the run's. Neither the model nor the run's optimizer or random streams are
touched: the steps are timed on copies, with optimizers of their own, at the run's last
learning rate.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from .checkpoint import save_checkpoint
from .models import DecoderLM, DecoderLMConfig
from .optim import AdamW, clip_grad_norm
from .prune.sparsify import prunable_layers, sparse_layers, sparsify_like, sparsity_report

__all__ = ["attention_entries", "dense_twin", "measure", "sparse_copy", "time_steps", "weight_counts"]

KINDS = ("attention", "feedforward")


def weight_counts(model):
    """Stored entries and dense cells of the prunable weights, per kind and over both.

    Returns ``{"attention": {...}, "feedforward": {...}, "all": {...}}``, each
    ``{"stored", "cells", "sparsity"}`` (sparsity = 1 − stored / cells; 0.0 with no cell).
    """
    rows = {r["name"]: r for r in sparsity_report(model)}
    out = {}
    for kind in KINDS:
        weights = [rows[f"{name}.weight"] for name, _ in prunable_layers(model, include=(kind,))]
        out[kind] = {"stored": sum(r["nnz"] for r in weights), "cells": sum(r["size"] for r in weights)}
    out["all"] = {k: out["attention"][k] + out["feedforward"][k] for k in ("stored", "cells")}
    for row in out.values():
        row["sparsity"] = 1.0 - row["stored"] / row["cells"] if row["cells"] else 0.0
    return out


def parameter_counts(model):
    """``{"stored", "dense"}``: numbers the model stores (every parameter) and the dense model's."""
    rows = sparsity_report(model)
    return {"stored": sum(r["nnz"] for r in rows), "dense": sum(r["size"] for r in rows)}


def attention_entries(model, t):
    """Mean stored entries per query row over the blocks' causal patterns at length ``t``.

    Returns ``{"per_row", "t", "full_per_row"}``: a block with dense attention counts
    (t + 1) / 2 per row (query i attends to keys 0..i), as does ``full_per_row``. A pattern
    given per head counts the mean over its heads.
    """
    full = (t + 1) / 2
    rows = []
    for layer in range(len(model.blocks)):
        ready = model.attention_pattern(layer, t)
        if ready is None:
            rows.append(full)
            continue
        heads = ready.pattern if isinstance(ready.pattern, list) else [ready.pattern]
        rows.append(float(np.mean([h.nnz for h in heads])) / t)
    return {"per_row": float(np.mean(rows)), "t": int(t), "full_per_row": full}


def _values(model, dense):
    state = model.state_dict()
    if dense:
        state = {k: v.toarray() if hasattr(v, "toarray") else v for k, v in state.items()}
    return state


def sparse_copy(model):
    """A copy of the `DecoderLM` ``model``: same config, same patterns and values, nothing shared."""
    twin = DecoderLM(model.config, rng=np.random.default_rng(0))
    sparsify_like(twin, [f"{name}.weight" for name, _ in sparse_layers(model)])
    return twin.load_state_dict(_values(model, dense=False))


def dense_twin(model):
    """The `DecoderLM` ``model`` with every weight dense (pruned entries 0) and full causal attention."""
    cfg = DecoderLMConfig.from_dict({**model.config.to_dict(), "attention": "full"})
    twin = DecoderLM(cfg, rng=np.random.default_rng(0))
    return twin.load_state_dict(_values(model, dense=True))


def time_steps(models, batch, *, lr, weight_decay=0.0, betas=(0.9, 0.999), grad_clip=1.0,
               steps=8, warmup=2):
    """Median seconds of one AdamW training step of each model, timed in turns.

    ``models`` is a list of models trained on ``batch = (x, y)``; each gets an AdamW of its own
    (``lr``, ``betas``, ``weight_decay``). Every model takes ``warmup`` untimed steps, then
    ``steps`` rounds in which each takes one timed step, so the machine's drift falls on all
    alike. A step is what `refsparse.train.Trainer.train_step` does: zero_grad, forward,
    cross-entropy, backward, global-norm clipping (if ``grad_clip`` > 0), the update.
    Returns ``(medians, optimizers)`` (medians None when ``steps`` is 0).
    """
    x, y = batch
    opts = [AdamW(m.parameters(), lr=lr, betas=betas, weight_decay=weight_decay) for m in models]

    def step(model, opt):
        model.zero_grad()
        model.forward_backward(x, y)
        if grad_clip > 0:
            clip_grad_norm(model.parameters(), grad_clip)
        opt.step()

    for model, opt in zip(models, opts):
        model.train()
        for _ in range(warmup):
            step(model, opt)
    times = [[] for _ in models]
    for _ in range(steps):
        for k, (model, opt) in enumerate(zip(models, opts)):
            t0 = time.perf_counter()
            step(model, opt)
            times[k].append(time.perf_counter() - t0)
    return [float(np.median(t)) if t else None for t in times], opts


def checkpoint_bytes(model, optimizer, **fields):
    """Bytes of the checkpoint `save_checkpoint` writes for ``model`` and ``optimizer``
    (``fields``: its other arguments), written to a temporary file that is then removed."""
    with tempfile.TemporaryDirectory(prefix="refsparse-size-") as tmp:
        path = save_checkpoint(os.path.join(tmp, "checkpoint.npz"), model, optimizer=optimizer,
                               **fields)
        return os.path.getsize(path)


def measure(model, batch, *, checkpoint, checkpoint_fields, lr, weight_decay, betas, grad_clip,
            steps=8):
    """Every number of the module docstring for a trained `DecoderLM` ``model``.

    ``checkpoint`` is the path of the run's checkpoint (its size is read);
    ``checkpoint_fields`` the other arguments it was saved with (step, random streams,
    tokenizer, extra, state), for the dense twin's. ``batch`` (x, y) is the batch the steps
    are timed on; ``steps`` timed steps each (0: the step times are not measured).
    """
    t = int(batch[0].shape[1])
    out = {"weights": weight_counts(model), "parameters": parameter_counts(model),
           "attention": attention_entries(model, t)}
    twin = dense_twin(model)
    if steps > 0:
        (sparse_s, dense_s), (_, dense_opt) = time_steps(
            [sparse_copy(model), twin], batch, lr=lr, weight_decay=weight_decay, betas=betas,
            grad_clip=grad_clip, steps=steps)
        out["step_ms"] = {"model": 1e3 * sparse_s, "dense": 1e3 * dense_s, "steps": steps}
    else:
        _, (dense_opt,) = time_steps([twin], batch, lr=lr, weight_decay=weight_decay, betas=betas,
                                     grad_clip=grad_clip, steps=0, warmup=1)  # its AdamW state
    fields = {k: v for k, v in checkpoint_fields.items() if k != "state"}
    out["checkpoint_bytes"] = {"model": os.path.getsize(checkpoint),
                               "dense": checkpoint_bytes(twin, dense_opt, **fields)}
    return out
