"""Language models end to end: a PyTorch LM against its refsparse twin, and loss-level vectors.

[`check_lm`][refsparse.vectors.check_lm] runs one training step's forward and backward on
both sides — logits, the shifted float64 cross-entropy (``ignore_index``, label smoothing),
every parameter gradient — and returns a [`Report`][refsparse.vectors.Report] naming each
tensor by the PyTorch model's own names::

    from transformers import GPT2Config, GPT2LMHeadModel
    from refsparse.validate import check_lm

    hf = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=50)).double()
    report = check_lm(hf, ids)          # ids: int (B, T); labels default to ids (shifted inside)
    print(report); assert report.ok

The loss is computed here, in float64, from each side's logits — never with Hugging Face's own
``labels=`` loss, which is float32 even for a float64 model.
"""

from __future__ import annotations

import json

import numpy as np

from . import recipes  # noqa: F401  (the ops first: the presets come after them in the list)
from .compare import Report, compare
from .record import register

__all__ = ["check_lm", "default_lm_rtol", "shifted_targets"]


def default_lm_rtol(dtype):
    """check_lm's relative tolerance: float64 1e-10 (two correct float64 implementations agree
    to ~1e-15 here; a wrong eps or GELU form is off by >1e-8), float32 1e-4."""
    return 1e-10 if np.dtype(dtype) == np.float64 else 1e-4


def shifted_targets(labels, attention_mask=None, ignore_index=-100):
    """The targets of the logits (B, T-1): ``labels[:, 1:]``, ignored where either end is padding.

    Position t predicts token t + 1. With ``attention_mask`` (1 = a real token, Hugging Face's
    convention), a target is ignored when the token it predicts is padding and when the
    position predicting it is padding (a left-padded row's padding sees no real key: refsparse
    gives it a zero attention row, Hugging Face something else — neither is a prediction).
    """
    labels = np.asarray(labels)
    targets = np.array(labels[:, 1:], dtype=np.int64)
    if attention_mask is not None:
        real = np.asarray(attention_mask).astype(bool)
        targets[~(real[:, :-1] & real[:, 1:])] = ignore_index
    return targets


def _numpy(x, name, kind):
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if kind == "int" and not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"{name}: expected an integer array, got dtype {x.dtype}")
    return x


def _torch_model_dtype(torch_model):
    for p in torch_model.parameters():
        return str(p.dtype).replace("torch.", "")
    raise ValueError("torch_model: has no parameters")


def check_lm(torch_model, ids, labels=None, *, attention_mask=None, position_ids=None, twin=None,
             name_map=None, ignore_index=-100, label_smoothing=0.0, rtol=None):
    """Hold a PyTorch language model to its refsparse twin: logits, loss, every gradient.

    Parameters
    ----------
    torch_model : torch.nn.Module
        A transformers ``GPT2LMHeadModel`` (its twin is built with
        ``refsparse.interop.hf.from_hf``), or any causal LM whose call
        ``torch_model(ids)`` returns logits (B, T, V) (or an object with ``.logits``); then
        give ``twin`` and ``name_map``. It runs in ``eval()`` mode (no dropout); its
        training flag and gradients are restored/cleared afterwards.
    ids : int array (B, T)
    labels : int array (B, T), optional
        Default ``ids``. Shifted here: logits at t are scored against ``labels[:, t + 1]``.
    attention_mask : 0/1 array (B, T), optional
        Hugging Face's convention, 1 = a real token (refsparse's ``key_padding_mask`` is its
        negation, True = padding). Padded positions are left out of the logits compared and
        of the loss (see [`shifted_targets`][refsparse.vectors.shifted_targets]).
    position_ids : int array (B, T), optional
        Given to both models (default 0 .. T-1).
    twin : refsparse.models.DecoderLM, optional
        The refsparse model holding the same weights (default: ``from_hf(torch_model)``).
    name_map : list of refsparse.interop.names.MapEntry, optional
        How each torch parameter is made of the twin's (default: GPT-2's).
    ignore_index, label_smoothing : as ``torch.nn.functional.cross_entropy``
    rtol : float, optional
        Relative tolerance (default [`default_lm_rtol`][refsparse.vectors.default_lm_rtol]).
        Each tensor passes when ``|c − r| <= rtol·max|r|`` entry-wise (max over the tensor); a
        gradient that is zero in exact arithmetic (the key projection's bias: softmax ignores a
        shift shared by a row) is held to the absolute floor ``rtol·max`` over all gradients.

    Returns
    -------
    Report
        Rows ``logits`` (the real positions, (N, V)), ``loss`` and ``grad.<torch name>`` for
        every parameter, refsparse as the reference and the torch model as the candidate.
    """
    import torch

    from .. import functional as F

    ids = _numpy(ids, "ids", "int").astype(np.int64)
    if ids.ndim != 2:
        raise ValueError(f"ids: expected shape (B, T), got {ids.shape}")
    labels = ids if labels is None else _numpy(labels, "labels", "int").astype(np.int64)
    if labels.shape != ids.shape:
        raise ValueError(f"labels: expected shape {ids.shape} (that of ids), got {labels.shape}")
    mask = None if attention_mask is None else _numpy(attention_mask, "attention_mask", "any")
    if mask is not None:
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask: expected shape {ids.shape} (that of ids), got {mask.shape}")
        if not np.isin(mask, (0, 1)).all():
            raise ValueError("attention_mask: expected 0/1 values (1 = a real token, Hugging Face's "
                             "convention; refsparse's key_padding_mask is True = padding)")
    pos = None if position_ids is None else _numpy(position_ids, "position_ids", "int").astype(np.int64)
    is_gpt2 = type(torch_model).__name__ == "GPT2LMHeadModel"
    if twin is None or name_map is None:
        if not is_gpt2:
            raise TypeError(f"twin, name_map: needed for a {type(torch_model).__name__} (built "
                            "automatically only for a transformers GPT2LMHeadModel)")
        from ..interop.hf import from_hf, hf_name_map

        twin = from_hf(torch_model) if twin is None else twin
        name_map = hf_name_map(twin.config.n_layers, twin.config.tie_embeddings)
    dtype = np.dtype(twin.config.dtype)
    if _torch_model_dtype(torch_model) != dtype.name:
        raise TypeError(f"torch_model: expected dtype {dtype.name} (the twin's), got "
                        f"{_torch_model_dtype(torch_model)}; convert with .to(torch.{dtype.name})")
    rtol = default_lm_rtol(dtype) if rtol is None else float(rtol)
    targets = shifted_targets(labels, mask, ignore_index)  # (B, T-1)

    # -- torch: eval mode, logits, the float64 loss of the shifted logits, backward
    was_training = torch_model.training
    torch_model.eval()
    try:
        for p in torch_model.parameters():
            p.grad = None
        kwargs = {}
        if mask is not None:
            kwargs["attention_mask"] = torch.from_numpy(mask.astype(np.int64))
        if pos is not None:
            kwargs["position_ids"] = torch.from_numpy(pos)
        out = torch_model(torch.from_numpy(ids), **kwargs)
        t_logits = out.logits if hasattr(out, "logits") else out
        shifted = t_logits[:, :-1].to(torch.float64)
        t_loss = torch.nn.functional.cross_entropy(
            shifted.reshape(-1, shifted.shape[-1]), torch.from_numpy(targets).reshape(-1),
            ignore_index=ignore_index, label_smoothing=label_smoothing)
        t_loss.backward()
        params = dict(torch_model.named_parameters())
        theirs = {e.key: (np.zeros(tuple(params[e.key].shape), dtype) if params[e.key].grad is None
                          else params[e.key].grad.detach().cpu().numpy()) for e in name_map}
        t_logits = t_logits.detach().cpu().numpy()
        t_loss = float(t_loss.detach())
    finally:
        for p in torch_model.parameters():
            p.grad = None
        torch_model.train(was_training)

    # -- refsparse: the same step by hand
    from ..interop.names import to_theirs

    twin.zero_grad()
    kpm = None if mask is None else ~mask.astype(bool)  # True = padding
    r_logits = twin.forward(ids, key_padding_mask=kpm, position_ids=pos)  # (B, T, V)
    r_loss, cache = F.cross_entropy_forward(np.ascontiguousarray(r_logits[:, :-1], dtype=np.float64), targets,
                                            ignore_index=ignore_index, label_smoothing=label_smoothing)
    dlogits = np.zeros_like(r_logits)
    dlogits[:, :-1] = F.cross_entropy_backward(1.0, cache)  # float64 -> the twin's dtype
    twin.backward(dlogits)
    ours = to_theirs(name_map, {n: p.grad for n, p in twin.parameters()})

    # -- compare, tensor by tensor, each to its own scale
    real = np.ones(ids.shape, bool) if mask is None else mask.astype(bool)
    ref = {"logits": r_logits[real], "loss": np.asarray(float(r_loss))}
    cand = {"logits": t_logits[real], "loss": np.asarray(t_loss)}
    for e in name_map:
        ref["grad." + e.key] = ours[e.key]
        cand["grad." + e.key] = theirs[e.key]
    grad_scale = max((float(np.abs(v).max()) for k, v in ref.items() if k.startswith("grad.") and v.size),
                     default=0.0)
    results = []
    for name, r in ref.items():
        atol = rtol * float(np.abs(r).max()) if r.size else 0.0
        if name.startswith("grad."):
            atol = max(atol, rtol * grad_scale)  # the floor of a zero-in-exact-arithmetic gradient
        results += compare({name: r}, {name: cand[name]}, rtol=0.0, atol=atol).results
    return Report(results, rtol=rtol, atol=None,
                  note=f"each tensor: |candidate - refsparse| <= {rtol:g} * max|refsparse| of the tensor; "
                       f"gradients at least {rtol * grad_scale:.3g} (rtol * the largest gradient)")


# ----------------------------------------------------------------------------------------
# loss-level vectors: the gpt2 preset and its debug state


def _gpt2_elements(s):
    return s["B"] * s["T"] * max(4 * s["d_model"], s["vocab"]) + s["B"] * s["n_heads"] * s["T"] * s["T"]


_GPT2_CONVENTIONS = ("linear", "layernorm", "attention", "gelu", "embedding", "module", "lm_loss", "gpt2",
                     "trajectory")
_GPT2_OPTIONS = {"eps": 1e-5, "max_len": None, "tie_embeddings": True, "names": "refsparse",
                 "ignore_index": -100, "label_smoothing": 0.0, "lr": 1e-3, "weight_decay": 0.0}


def _gpt2_model(ctx):
    """The preset's DecoderLM: built from stream 0, embeddings scaled to std 0.5 so that every
    path weighs in the gradients (GPT-2's own 0.02 leaves the loss nearly flat in them)."""
    from ..models import DecoderLM, DecoderLMConfig

    max_len = ctx.opt("max_len")
    max_len = ctx.T if max_len is None else int(max_len)
    if max_len < ctx.T:
        raise ValueError(f"max_len: expected at least T={ctx.T}, got {max_len}")
    cfg = DecoderLMConfig(vocab_size=ctx.vocab, d_model=ctx.d_model, n_heads=ctx.n_heads,
                          n_layers=ctx.n_layers, d_ff=4 * ctx.d_model, max_len=max_len, dropout=0.0,
                          activation="gelu_tanh", norm_first=True, positional="learned",
                          tie_embeddings=bool(ctx.opt("tie_embeddings")),
                          layer_norm_eps=float(ctx.opt("eps")), dtype=ctx.dtype.name, attention="full")
    ctx.meta["config"] = json.dumps(cfg.to_dict())
    names = ctx.opt("names")
    if names not in ("refsparse", "hf"):
        raise ValueError(f"names: expected 'refsparse' or 'hf', got {names!r}")
    if names == "refsparse":
        return ctx.module(lambda r: _scale_embeddings(DecoderLM(cfg, rng=r))), None
    # Hugging Face names and layouts: Conv1D weights (in, out), c_attn = [q | k | v] by columns
    from ..interop.hf import hf_config, hf_name_map
    from ..interop.names import from_theirs, to_theirs

    model = DecoderLM(cfg, rng=ctx.rng(0))
    model.eval()
    entries = hf_name_map(cfg.n_layers, cfg.tie_embeddings)
    if ctx.stored is None:
        _scale_embeddings(model)
        _perturb_constant(ctx, model)
        for key, value in to_theirs(entries, {n: p.value for n, p in model.parameters()}).items():
            ctx.record("param." + key, value)
    else:
        theirs = {e.key: ctx.take("param." + e.key) for e in entries}
        model.load_state_dict(from_theirs(entries, theirs, {n: p.shape for n, p in model.parameters()},
                                          what="file"))
    ctx.meta["module"] = "GPT2LMHeadModel"
    ctx.meta["hf_config"] = json.dumps(hf_config(model))
    return model, entries


def _scale_embeddings(model):
    model.tok_embed.weight.values[...] *= 25.0
    model.pos_embed.weight.values[...] *= 25.0
    return model


def _perturb_constant(ctx, model):
    for _, p in model.parameters():  # LayerNorm's ones and zeros, as Recorder.module does
        v = p.values
        if v.size and np.all(v == v.flat[0]):
            v[...] = (v + 0.1 * ctx.rng(0).standard_normal(v.shape)).astype(v.dtype)


def _gpt2_recipe(ctx):
    from .. import functional as F
    from ..interop.names import to_theirs
    from ..optim import AdamW

    ignore = int(ctx.opt("ignore_index"))
    smoothing = float(ctx.opt("label_smoothing"))
    ids = ctx.ints("input.ids", (ctx.B, ctx.T), ctx.vocab)

    def make_labels():
        labels = ids.copy()
        labels.reshape(-1)[3::5] = ignore  # every fifth label (from the fourth) is ignored
        return labels

    labels = ctx.const("input.labels", make_labels)
    model, entries = _gpt2_model(ctx)
    targets = shifted_targets(labels, None, ignore)  # (B, T-1): position t predicts labels[t + 1]

    def loss_and_grads():
        model.zero_grad()
        logits = model.forward(ids)  # (B, T, V)
        loss, cache = F.cross_entropy_forward(np.ascontiguousarray(logits[:, :-1]), targets,
                                              ignore_index=ignore, label_smoothing=smoothing)
        dlogits = np.zeros_like(logits)
        dlogits[:, :-1] = F.cross_entropy_backward(np.asarray(1.0, dtype=ctx.dtype), cache)
        model.backward(dlogits)
        return logits, loss

    logits, loss = loss_and_grads()
    ctx.outputs["logits"] = logits

    def backward(dy):
        # the gradients of loss_and_grads (grad_output is 1: d loss / d loss)
        grads = {n: p.grad.copy() for n, p in model.parameters()}
        if entries is not None:
            out = {"param." + k: v for k, v in to_theirs(entries, grads).items()}
        else:
            out = {"param." + n: g for n, g in grads.items()}
        steps = int(ctx.opt("steps"))
        if steps:  # the first N AdamW steps on this one batch: loss before each update
            opt = AdamW(model.parameters(), lr=float(ctx.opt("lr")),
                        weight_decay=float(ctx.opt("weight_decay")))
            losses = []
            for k in range(steps):
                if k:
                    _, step_loss = loss_and_grads()
                else:
                    step_loss = loss
                losses.append(float(step_loss))
                opt.step()
            ctx.outputs["steps.loss"] = np.asarray(losses, dtype=np.float64)
        return out

    return np.asarray(loss, dtype=ctx.dtype).reshape(()), backward



_GPT2_SUMMARY = ("GPT-2 (pre-LN, tanh GELU, d_ff = 4 d_model, learned positions, tied head): the mean "
                 "cross-entropy of ids (B, T) against labels shifted by one")
_GPT2_CALL = ("refsparse.models.DecoderLM(...).forward(ids); cross_entropy(logits[:, :-1], labels[:, 1:], "
              "ignore_index, label_smoothing)")
register("gpt2", "preset", _GPT2_SUMMARY + " (output: the loss)", _GPT2_CALL, _GPT2_CONVENTIONS, loss=True,
         elements=_gpt2_elements, steps=0, **_GPT2_OPTIONS)(_gpt2_recipe)
register("gpt2.debug", "preset", _GPT2_SUMMARY + "; and the losses of the first `steps` AdamW steps "
         "(steps.loss), as llm.c's debug state", _GPT2_CALL + "; refsparse.optim.AdamW steps",
         _GPT2_CONVENTIONS, loss=True, elements=_gpt2_elements, steps=10, **_GPT2_OPTIONS)(_gpt2_recipe)
