"""Loss-level vectors: the ``gpt2`` preset and its debug state, held against transformers.

The port under test is transformers' GPT2LMHeadModel, loaded from the file's parameters
(Hugging Face names and layouts, ``names=hf``) and run by torch autograd: an independent
implementation. A correct port matches the float64 vectors to 1e-10; a port with a wrong
LayerNorm eps or erf GELU passes a float32 check at llm.c's tolerances (1e-2 on the loss and
logits, 2e-2 on the gradients, absolute) and fails the float64 one.
"""

import json

import numpy as np
import pytest

from refsparse import vectors
from refsparse.cli import main

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _port(tensors, meta, *, eps=None, activation=None):
    """GPT2LMHeadModel from a names=hf file; ``eps``/``activation`` plant a bug."""
    cfg = json.loads(meta["hf_config"])
    if eps is not None:
        cfg["layer_norm_epsilon"] = eps
    if activation is not None:
        cfg["activation_function"] = activation
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg, bos_token_id=0, eos_token_id=0))
    dtype = getattr(torch, meta["dtype"])
    model = model.to(dtype).eval()
    state = {k[len("param."):]: torch.from_numpy(v.copy())
             for k, v in tensors.items() if k.startswith("param.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    model.tie_weights()
    return model


def _run(model, tensors, meta):
    """What a port computes from the file's inputs: the shifted loss and every gradient."""
    opts = json.loads(meta["options"])
    ids = torch.from_numpy(tensors["input.ids"])
    labels = torch.from_numpy(tensors["input.labels"])
    logits = model(ids).logits
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
        ignore_index=opts["ignore_index"], label_smoothing=opts["label_smoothing"])
    model.zero_grad()
    loss.backward()
    out = {"output": loss.detach().numpy().reshape(1), "logits": logits.detach().numpy()}
    for name, p in model.named_parameters():
        out["grad.param." + name] = p.grad.numpy()
    return out


def _export(dtype, **options):
    return vectors.export("gpt2", dtype=dtype, options={"names": "hf", **options})


def test_a_correct_port_matches_the_float64_loss_vectors():
    tensors, meta = _export("float64")
    cand = _run(_port(tensors, meta), tensors, meta)
    # atol: the key bias's gradient is zero in exact arithmetic (~1e-17 of rounding on each side)
    report = vectors.compare(tensors, cand, rtol=1e-10, atol=1e-13, only=["output", "logits", "grad.*"])
    assert report.ok, str(report)
    assert len(report.results) == 2 + len([k for k in tensors if k.startswith("grad.")])


BUGS = {"wrong eps 1e-6 for 1e-5": {"eps": 1e-6}, "erf GELU for tanh GELU": {"activation": "gelu"}}


@pytest.mark.parametrize("bug", list(BUGS))
def test_float64_catches_what_float32_at_llmc_tolerances_misses(bug):
    # float32 at llm.c's tolerances: the buggy port passes
    t32, m32 = _export("float32")
    cand = _run(_port(t32, m32, **BUGS[bug]), t32, m32)
    loose = [vectors.compare(t32, cand, rtol=0, atol=1e-2, only=["output", "logits"]),
             vectors.compare(t32, cand, rtol=0, atol=2e-2, only=["grad.*"])]
    assert all(r.ok for r in loose), f"{bug}: float32 at 1e-2/2e-2 should miss it"
    # float64 at 1e-10: the same bug fails, on the loss, the logits and the gradients
    t64, m64 = _export("float64")
    cand = _run(_port(t64, m64, **BUGS[bug]), t64, m64)
    report = vectors.compare(t64, cand, rtol=1e-10, atol=1e-13, only=["output", "logits", "grad.*"])
    failed = {r.name for r in report.failures}
    assert {"output", "logits", "grad.param.transformer.h.0.mlp.c_fc.weight"} <= failed, str(report)


def test_the_debug_state_s_adamw_losses_match_torch():
    tensors, meta = vectors.export("gpt2.debug", options={"names": "hf", "weight_decay": 0.01})
    opts = json.loads(meta["options"])
    model = _port(tensors, meta)
    opt = torch.optim.AdamW(model.parameters(), lr=opts["lr"], weight_decay=opts["weight_decay"])
    losses = []
    for _ in range(opts["steps"]):
        out = _run(model, tensors, meta)  # the loss before this step, and its gradients
        losses.append(float(out["output"][0]))
        opt.step()
    np.testing.assert_allclose(losses, tensors["steps.loss"], rtol=1e-10, atol=0)
    assert tensors["steps.loss"][-1] < tensors["steps.loss"][0]  # the steps do train


def test_preset_options_and_recompute(tmp_path, capsys):
    path = tmp_path / "g.safetensors"
    assert main(["vectors", "export", "gpt2", "--option", "eps=1e-6", "--option", "max_len=24", "--T", "8",
                 "--option", "tie_embeddings=false", "-o", str(path)]) == 0
    tensors, meta = vectors.load(path)
    cfg = json.loads(meta["config"])
    assert cfg["layer_norm_eps"] == 1e-6 and cfg["max_len"] == 24 and cfg["d_ff"] == 4 * cfg["d_model"]
    assert cfg["activation"] == "gelu_tanh" and not cfg["tie_embeddings"]
    assert tensors["param.pos_embed.weight"].shape == (24, cfg["d_model"])
    assert tensors["output"].shape == (1,) and float(tensors["grad_output"][0]) == 1.0
    assert "param.head.proj.weight" in tensors
    again = vectors.recompute(tensors, meta)
    for k, v in again.items():
        assert np.array_equal(v, tensors[k]), k
    capsys.readouterr()
    assert main(["vectors", "export", "gpt2", "--option", "max_len=4", "-o", str(path)]) == 2
    assert "max_len: expected at least T=16" in capsys.readouterr().err
