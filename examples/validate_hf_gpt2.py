"""Validate a Hugging Face GPT-2 against refsparse: logits, float64 loss, every gradient.

    python examples/validate_hf_gpt2.py                  # a tiny random GPT-2, float64 and float32
    python examples/validate_hf_gpt2.py --dir gpt2-tiny  # a saved model (config.json + model.safetensors)
    python examples/validate_hf_gpt2.py --bug gelu       # plant a porting bug: loud FAIL, exit 1

With ``--bug`` the refsparse twin gets the bug a port typically has (``eps``: LayerNorm eps
1e-6 for GPT-2's 1e-5; ``gelu``: erf GELU for tanh GELU; ``qk``: q and k blocks of c_attn
swapped; ``conv1d``: the attention's output Conv1D loaded untransposed), and the report names
every tensor it reaches. Needs torch and transformers (``pip install transformers``); nothing is
downloaded. Exit status: 0 when everything matches, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def tiny_gpt2(torch, transformers, dtype):
    """A random GPT-2 small enough to check in a second, with weights of order one."""
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():  # GPT-2's init (std 0.02) leaves the gradients tiny: make every path count
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
            else:
                p.mul_(10.0)
    return model.to(dtype)


def plant(twin, bug, hf):
    """Give the refsparse twin one classic porting bug (see the module docstring)."""
    for i, block in enumerate(twin.blocks):
        if bug == "eps":
            for norm in (block.norm1, block.norm2):
                norm.eps = 1e-6
        elif bug == "gelu":
            block.ff.act.name = "gelu"
        elif bug == "qk":
            a = block.self_attn
            for part in ("weight", "bias"):
                q, k = getattr(a.q_proj, part), getattr(a.k_proj, part)
                q.value, k.value = k.value.copy(), q.value.copy()
        elif bug == "conv1d":
            c_proj = hf.transformer.h[i].attn.c_proj.weight  # (in, out), copied as if it were (out, in)
            block.self_attn.out_proj.weight.value = c_proj.detach().numpy().copy()
    if bug == "eps":
        twin.norm_f.eps = 1e-6


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", help="a saved GPT-2 (default: a tiny random one)")
    p.add_argument("--bug", choices=["eps", "gelu", "qk", "conv1d"], help="plant a porting bug in the twin")
    args = p.parse_args(argv)
    import torch
    import transformers

    from refsparse.interop.hf import from_hf, hf_name_map
    from refsparse.validate import check_lm

    ok = True
    for dtype in ("float64", "float32"):
        if args.dir:
            hf = transformers.GPT2LMHeadModel.from_pretrained(args.dir, local_files_only=True)
            hf = hf.to(getattr(torch, dtype))
        else:
            hf = tiny_gpt2(torch, transformers, getattr(torch, dtype))
        twin = from_hf(hf)
        if args.bug:
            plant(twin, args.bug, hf)
        c = twin.config
        rng = np.random.default_rng(0)
        ids = rng.integers(0, c.vocab_size, (2, min(16, c.max_len)))
        mask = np.ones_like(ids)
        mask[1, :5] = 0  # row 1 left-padded (HF's attention_mask: 1 = a real token)
        positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
        report = check_lm(hf, ids, attention_mask=mask, position_ids=positions, twin=twin,
                          name_map=hf_name_map(c.n_layers, c.tie_embeddings))
        print(f"== {dtype}" + (f", with the {args.bug} bug planted" if args.bug else ""))
        print(report.table() if not report.ok else report.table().splitlines()[-1])
        ok = ok and report.ok
    print("OK: the GPT-2 matches refsparse" if ok else "FAILED: the GPT-2 does not match refsparse")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
