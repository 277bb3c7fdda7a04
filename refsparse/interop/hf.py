"""Hugging Face GPT-2 both ways: ``from_hf`` → a refsparse DecoderLM, ``to_hf`` → a GPT2LMHeadModel.

A GPT-2 is refsparse's [`DecoderLM`][refsparse.models.DecoderLM] with pre-LN blocks, a
learned position table, tanh GELU and (usually) a tied head: the same function, parameter
by parameter. The names and layouts differ:

==========================================  ===========================================
Hugging Face (``GPT2LMHeadModel``)          refsparse (``DecoderLM``)
==========================================  ===========================================
``transformer.wte.weight`` (V, C)           ``tok_embed.weight``
``transformer.wpe.weight`` (n_positions, C) ``pos_embed.weight``
``transformer.h.i.ln_1.{weight,bias}``      ``blocks.i.norm1.{weight,bias}``
``transformer.h.i.attn.c_attn.weight``      ``blocks.i.self_attn.{q,k,v}_proj.weight``:
(C, 3C), a ``Conv1D``: y = x W + b          q, k, v side by side in columns, each the
                                            transpose of refsparse's (out, in) weight
``transformer.h.i.attn.c_attn.bias`` (3C,)  ``blocks.i.self_attn.{q,k,v}_proj.bias``
``transformer.h.i.attn.c_proj.*``           ``blocks.i.self_attn.out_proj.*`` (transposed)
``transformer.h.i.ln_2.*``                  ``blocks.i.norm2.*``
``transformer.h.i.mlp.c_fc.*`` (C, 4C)      ``blocks.i.ff.linear1.*`` (transposed)
``transformer.h.i.mlp.c_proj.*`` (4C, C)    ``blocks.i.ff.linear2.*`` (transposed)
``transformer.ln_f.*``                      ``norm_f.*``
``lm_head.weight`` (untied only)            ``head.proj.weight``
==========================================  ===========================================

each row one [`MapEntry`][refsparse.interop.names.MapEntry] of
[`hf_name_map`][refsparse.interop.hf.hf_name_map]. The config translates one to one
(``n_embd`` → ``d_model``, ``n_inner`` or 4·``n_embd`` → ``d_ff``, ``layer_norm_epsilon`` →
``layer_norm_eps``, ``n_positions`` → ``max_len``, ``activation_function`` ``gelu_new`` and
``gelu_pytorch_tanh`` → ``gelu_tanh``, ``gelu`` → ``gelu`` (erf), ``relu``). A setting refsparse
cannot express (``scale_attn_by_inverse_layer_idx``, ``reorder_and_upcast_attn``,
``scale_attn_weights=False``, ``add_cross_attention``, another activation) is refused by name.
Dropout probabilities are not carried over: refsparse's twin runs without dropout, so compare
against the Hugging Face model in ``eval()`` mode.

``from_hf`` reads a live model, or a local directory holding ``config.json`` and
``model.safetensors`` (read with ``safetensors``; nothing is downloaded, and transformers is
not needed for it). ``to_hf`` needs transformers, imported when it is called.
"""

from __future__ import annotations

import json
import os

from .names import MapEntry, from_theirs, to_theirs

__all__ = ["from_hf", "hf_config", "hf_grads", "hf_name_map", "hf_state_dict", "refsparse_config",
           "save_hf", "to_hf"]

# activation_function -> refsparse's activation
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
# settings whose only value refsparse expresses, and why
_FIXED = {
    "scale_attn_weights": (True, "refsparse always scales the scores by 1/sqrt(d_head)"),
    "scale_attn_by_inverse_layer_idx": (False, "refsparse does not scale layer i's scores by 1/(i+1)"),
    "reorder_and_upcast_attn": (False, "refsparse computes the scores in the model's dtype, not in float32"),
    "add_cross_attention": (False, "a DecoderLM has no cross-attention"),
}
# buffers of older transformers versions, not parameters
_BUFFERS = (".attn.bias", ".attn.masked_bias")


def _transformers():
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("refsparse.interop.hf needs transformers for this: pip install transformers "
                          "(from_hf of a directory does not)") from e
    return transformers


def _get(cfg, *names, default=None):
    for n in names:
        if cfg.get(n) is not None:
            return cfg[n]
    return default


def refsparse_config(hf_cfg, *, dtype="float64"):
    """A [`DecoderLMConfig`][refsparse.models.DecoderLMConfig] from a GPT-2 config dict.

    Raises ValueError naming the first GPT-2 setting refsparse cannot express.
    """
    from ..models import DecoderLMConfig

    if not isinstance(hf_cfg, dict):
        raise TypeError(f"config: expected a dict (GPT2Config.to_dict()), got {type(hf_cfg).__name__}")
    model_type = hf_cfg.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise ValueError(f"model_type: expected 'gpt2', got {model_type!r}")
    act = hf_cfg.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise ValueError(f"activation_function: refsparse has {', '.join(sorted(ACTIVATIONS))}, "
                         f"got {act!r}")
    for key, (value, why) in _FIXED.items():
        got = hf_cfg.get(key, value)
        if bool(got) != value:
            raise ValueError(f"{key}: refsparse expresses only {value} ({why}), got {got!r}")
    d_model = int(_get(hf_cfg, "n_embd", "hidden_size", default=768))
    return DecoderLMConfig(
        vocab_size=int(_get(hf_cfg, "vocab_size", default=50257)),
        d_model=d_model,
        n_heads=int(_get(hf_cfg, "n_head", "num_attention_heads", default=12)),
        n_layers=int(_get(hf_cfg, "n_layer", "num_hidden_layers", default=12)),
        d_ff=int(_get(hf_cfg, "n_inner", default=4 * d_model)),
        max_len=int(_get(hf_cfg, "n_positions", "max_position_embeddings", default=1024)),
        dropout=0.0,
        activation=ACTIVATIONS[act],
        norm_first=True,
        positional="learned",
        tie_embeddings=bool(hf_cfg.get("tie_word_embeddings", True)),
        layer_norm_eps=float(_get(hf_cfg, "layer_norm_epsilon", "layer_norm_eps", default=1e-5)),
        dtype=str(dtype),
        attention="full",
    )


def hf_config(model):
    """The GPT2Config keywords of a refsparse DecoderLM; ValueError if GPT-2 cannot express it."""
    c = model.config
    if not c.norm_first:
        raise ValueError("norm_first: GPT-2 is pre-LN (norm_first=True), got False")
    if c.positional != "learned":
        raise ValueError(f"positional: GPT-2 learns its positions ('learned'), got {c.positional!r}")
    if c.attention != "full":
        raise ValueError(f"attention: GPT-2 attends densely ('full'), got {c.attention!r}")
    act = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}[c.activation]
    return {"vocab_size": c.vocab_size, "n_positions": c.max_len, "n_embd": c.d_model, "n_layer": c.n_layers,
            "n_head": c.n_heads, "n_inner": c.d_ff, "activation_function": act,
            "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.dropout,
            "layer_norm_epsilon": c.layer_norm_eps, "tie_word_embeddings": c.tie_embeddings,
            "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False, "add_cross_attention": False}


def hf_name_map(n_layers, tie_embeddings=True, prefix="transformer."):
    """The [`MapEntry`][refsparse.interop.names.MapEntry] list of a GPT-2 with ``n_layers`` blocks."""
    p = prefix
    out = [MapEntry(f"{p}wte.weight", ("tok_embed.weight",)),
           MapEntry(f"{p}wpe.weight", ("pos_embed.weight",))]
    for i in range(n_layers):
        h, b = f"{p}h.{i}.", f"blocks.{i}."
        qkv = tuple(f"{b}self_attn.{x}_proj" for x in "qkv")
        out += [
            MapEntry(f"{h}ln_1.weight", (f"{b}norm1.weight",)),
            MapEntry(f"{h}ln_1.bias", (f"{b}norm1.bias",)),
            # Conv1D: y = x W + b with W (in, out); c_attn holds [Wq^T | Wk^T | Wv^T] by columns
            MapEntry(f"{h}attn.c_attn.weight", tuple(f"{n}.weight" for n in qkv), axis=1, transpose=True),
            MapEntry(f"{h}attn.c_attn.bias", tuple(f"{n}.bias" for n in qkv)),
            MapEntry(f"{h}attn.c_proj.weight", (f"{b}self_attn.out_proj.weight",), transpose=True),
            MapEntry(f"{h}attn.c_proj.bias", (f"{b}self_attn.out_proj.bias",)),
            MapEntry(f"{h}ln_2.weight", (f"{b}norm2.weight",)),
            MapEntry(f"{h}ln_2.bias", (f"{b}norm2.bias",)),
            MapEntry(f"{h}mlp.c_fc.weight", (f"{b}ff.linear1.weight",), transpose=True),
            MapEntry(f"{h}mlp.c_fc.bias", (f"{b}ff.linear1.bias",)),
            MapEntry(f"{h}mlp.c_proj.weight", (f"{b}ff.linear2.weight",), transpose=True),
            MapEntry(f"{h}mlp.c_proj.bias", (f"{b}ff.linear2.bias",)),
        ]
    out += [MapEntry(f"{p}ln_f.weight", ("norm_f.weight",)), MapEntry(f"{p}ln_f.bias", ("norm_f.bias",))]
    if not tie_embeddings:
        out.append(MapEntry("lm_head.weight", ("head.proj.weight",)))
    return out


def _model_map(model):
    return hf_name_map(model.config.n_layers, model.config.tie_embeddings)


def hf_state_dict(model):
    """A refsparse DecoderLM's weights under GPT-2's names and layouts (NumPy arrays)."""
    return to_theirs(_model_map(model), {n: p.value for n, p in model.parameters()})


def hf_grads(model):
    """A refsparse DecoderLM's ``.grad`` under GPT-2's names and layouts (NumPy arrays)."""
    return to_theirs(_model_map(model), {n: p.grad for n, p in model.parameters()})


def _read_dir(path):
    config_path = os.path.join(path, "config.json")
    weights_path = os.path.join(path, "model.safetensors")
    for p in (config_path, weights_path):
        if not os.path.isfile(p):
            extra = " (a sharded checkpoint is not read here)" if p == weights_path and os.path.isfile(
                os.path.join(path, "model.safetensors.index.json")) else ""
            raise FileNotFoundError(f"model_or_dir: no {os.path.basename(p)} in {path}{extra}")
    with open(config_path, encoding="utf-8") as f:
        try:
            cfg = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"model_or_dir: {config_path} is not JSON ({e})") from None
    from ..vectors.files import load

    tensors, _ = load(weights_path, what="model_or_dir")
    return cfg, tensors


def _read_live(model):
    name = type(model).__name__
    if name != "GPT2LMHeadModel" or not hasattr(model, "config"):
        raise TypeError(f"model_or_dir: expected a transformers GPT2LMHeadModel or a directory, got {name}")
    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if v.is_floating_point() and str(v.dtype) not in ("torch.float32", "torch.float64"):
            v = v.double()  # half precision: numpy has no bfloat16; the dtype argument decides
        tensors[k] = v.numpy()
    return model.config.to_dict(), tensors


def _dtype_of(tensors, dtype):
    if dtype is not None:
        if str(dtype) not in ("float32", "float64"):
            raise ValueError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
        return str(dtype)
    floats = {str(t.dtype) for t in tensors.values() if t.dtype.kind == "f"}
    if floats - {"float32", "float64"} or len(floats) != 1:
        raise ValueError(f"dtype: the checkpoint holds {sorted(floats)}; give dtype='float64' or 'float32'")
    return floats.pop()


def from_hf(model_or_dir, *, dtype=None, rng=None):
    """A refsparse [`DecoderLM`][refsparse.models.DecoderLM] computing the same function as a GPT-2.

    Weights are copied bit for bit (Conv1D weights transposed, c_attn split into q, k, v).

    Parameters
    ----------
    model_or_dir : a transformers ``GPT2LMHeadModel``, or a path to a directory with
        ``config.json`` and ``model.safetensors`` (what ``save_pretrained`` writes)
    dtype : "float64" or "float32", optional
        The twin's dtype; default the checkpoint's (float64 is the reference precision).
    rng : numpy.random.Generator, optional
        Only for building the model before its weights are overwritten.
    """
    from ..models import DecoderLM

    if isinstance(model_or_dir, (str, os.PathLike)):
        path = os.fspath(model_or_dir)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"model_or_dir: no such directory: {path}")
        cfg, tensors = _read_dir(path)
    else:
        cfg, tensors = _read_live(model_or_dir)
    dtype = _dtype_of(tensors, dtype)
    config = refsparse_config(cfg, dtype=dtype)
    # GPT2Model's own checkpoints have no "transformer." prefix; GPT2LMHeadModel's have it
    if not any(k.startswith("transformer.") for k in tensors):
        tensors = {(k if k.startswith("lm_head.") else "transformer." + k): v for k, v in tensors.items()}
    tensors = {k: v for k, v in tensors.items() if not k.endswith(_BUFFERS)}
    entries = hf_name_map(config.n_layers, config.tie_embeddings)
    known = {e.key for e in entries} | ({"lm_head.weight"} if config.tie_embeddings else set())
    unknown = sorted(set(tensors) - known)
    if unknown:
        raise ValueError(f"model_or_dir: tensors refsparse's GPT-2 has no place for: {unknown[:6]}"
                         + (" ..." if len(unknown) > 6 else ""))
    model = DecoderLM(config, rng=rng)
    shapes = {n: p.shape for n, p in model.parameters()}
    ours = from_theirs(entries, tensors, shapes, what="model_or_dir")
    model.load_state_dict({n: v.astype(dtype, copy=False) for n, v in ours.items()})
    model.eval()
    return model


def to_hf(model):
    """A transformers ``GPT2LMHeadModel`` (eval mode, the model's dtype) with ``model``'s weights."""
    transformers = _transformers()
    import torch

    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config(model)))
    hf = hf.to(getattr(torch, model.config.dtype))
    theirs = {k: torch.from_numpy(v) for k, v in hf_state_dict(model).items()}
    missing, unexpected = hf.load_state_dict(theirs, strict=False)
    missing = [k for k in missing if not k.endswith(_BUFFERS) and k != "lm_head.weight"]
    if missing or unexpected:  # pragma: no cover - a transformers version with other names
        raise ValueError(f"to_hf: GPT2LMHeadModel names differ: missing {missing}, unexpected {unexpected}")
    if model.config.tie_embeddings:
        hf.tie_weights()
    return hf.eval()


def save_hf(model, directory):
    """Write ``config.json`` and ``model.safetensors`` as ``save_pretrained`` would (tied head omitted).

    The directory is read by [`from_hf`][refsparse.interop.hf.from_hf] and by transformers'
    ``GPT2LMHeadModel.from_pretrained``; no transformers needed to write it.
    """
    from ..vectors.files import save

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    cfg = dict(hf_config(model), model_type="gpt2", architectures=["GPT2LMHeadModel"],
               torch_dtype=model.config.dtype)
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
    save(os.path.join(directory, "model.safetensors"), hf_state_dict(model), {"format": "pt"},
         what="directory")
    return directory
