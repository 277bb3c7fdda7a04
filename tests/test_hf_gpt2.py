"""Hugging Face GPT-2 against refsparse: from_hf / to_hf, check_lm, `refsparse validate hf`.

Tiny random GPT2Configs (no download): tied and untied heads, gelu_new and
gelu_pytorch_tanh, sdpa and eager attention, padded batches (left and right). The
independent side is transformers' own GPT2LMHeadModel run by torch autograd; refsparse must
agree to 1e-12 of each tensor's scale in float64 (logits, the loss, every gradient), and to
1e-4 in float32. Four ports with a classic bug (wrong LayerNorm eps, erf GELU for tanh GELU,
q and k blocks swapped, a Conv1D weight loaded untransposed) must each fail, naming tensors.
"""


import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from refsparse.cli import main
from refsparse.interop.hf import from_hf, hf_grads, hf_name_map, save_hf, to_hf
from refsparse.interop.names import MapEntry, from_theirs, to_theirs
from refsparse.validate import check_lm

V, C, H, L, T = 29, 16, 2, 2, 9


def _gpt2(tied=True, act="gelu_new", impl="sdpa", dtype=torch.float64, seed=0, **kw):
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=12, n_embd=C, n_layer=L, n_head=H,
                                  activation_function=act, tie_word_embeddings=tied,
                                  bos_token_id=0, eos_token_id=0, **kw)
    cfg._attn_implementation = impl
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():  # weights of order one, so that every path weighs in the gradients
        for name, p in model.named_parameters():
            if "ln_" in name:
                p.add_(0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn_like(p))
            else:
                p.mul_(10.0)
    return model.to(dtype).eval()


def _batch(padded):
    rng = np.random.default_rng(3)
    ids = rng.integers(0, V, (3, T))
    if not padded:
        return ids, None, None
    mask = np.ones((3, T), dtype=np.int64)
    mask[1, :4] = 0  # left padding
    mask[2, 6:] = 0  # right padding
    pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)  # real tokens count from 0
    return ids, mask, pos


CONFIGS = [  # (tied, activation, attention implementation): each value on both sides of a pair
    (True, "gelu_new", "sdpa"),
    (False, "gelu_pytorch_tanh", "eager"),
    (True, "gelu_pytorch_tanh", "eager"),
    (False, "gelu_new", "sdpa"),
]


@pytest.mark.parametrize("padded", [False, True], ids=["dense", "padded"])
@pytest.mark.parametrize("tied,act,impl", CONFIGS)
def test_float64_logits_loss_and_every_gradient_to_1e12(tied, act, impl, padded):
    hf = _gpt2(tied, act, impl)
    ids, mask, pos = _batch(padded)
    report = check_lm(hf, ids, attention_mask=mask, position_ids=pos, label_smoothing=0.1, rtol=1e-12)
    assert report.ok, str(report)
    n_params = len(list(hf.named_parameters()))
    assert len(report.results) == 2 + n_params  # logits, loss, every parameter's gradient
    if padded:
        assert report["logits"].shape == (int(mask.sum()), V)


@pytest.mark.parametrize("tied,act,impl", CONFIGS[:2])
def test_float32_agrees_to_float32_tolerances(tied, act, impl):
    hf = _gpt2(tied, act, impl, dtype=torch.float32)
    ids, mask, pos = _batch(True)
    report = check_lm(hf, ids, attention_mask=mask, position_ids=pos)
    assert report.ok, str(report)
    assert report["logits"].dtype == "float32"


def test_ignore_index_and_labels():
    hf = _gpt2()
    ids, _, _ = _batch(False)
    labels = ids.copy()
    labels[:, 3] = -100
    assert check_lm(hf, ids, labels, rtol=1e-12).ok
    # the independent loss: torch's own cross-entropy of HF's logits, shifted by hand
    with torch.no_grad():
        logits = hf(torch.from_numpy(ids)).logits[:, :-1]
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, V),
                                             torch.from_numpy(labels[:, 1:]).reshape(-1))
    twin = from_hf(hf)
    from refsparse.vectors.lm import shifted_targets

    got = twin.forward_backward(ids[:, :-1], shifted_targets(labels))
    assert got == pytest.approx(float(want), rel=1e-13)


# ----------------------------------------------------------------------------------------
# the weights both ways


@pytest.mark.parametrize("tied", [True, False])
def test_round_trip_is_bit_exact(tied, tmp_path):
    hf = _gpt2(tied)
    model = from_hf(hf)
    back = to_hf(model)
    theirs = hf.state_dict()
    for k, v in back.state_dict().items():
        assert torch.equal(v, theirs[k]), k
    # through a directory: refsparse writes it, transformers and refsparse read it
    save_hf(model, tmp_path / "m")
    again = from_hf(tmp_path / "m")
    for (n, p), (_, q) in zip(model.parameters(), again.parameters()):
        assert np.array_equal(p.value, q.value), n
    loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "m", local_files_only=True)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v.to(torch.float64), theirs[k]), k
    # and transformers' own save_pretrained, read back without transformers
    hf.save_pretrained(tmp_path / "hf")
    again = from_hf(tmp_path / "hf")
    for (n, p), (_, q) in zip(model.parameters(), again.parameters()):
        assert np.array_equal(p.value, q.value), n


def test_gradients_under_hf_names():
    hf = _gpt2(tied=False)
    model = from_hf(hf)
    ids, _, _ = _batch(False)
    model.zero_grad()
    logits = model.forward(ids)
    model.backward(np.ones_like(logits))
    hf.zero_grad()
    hf(torch.from_numpy(ids)).logits.sum().backward()
    ours = hf_grads(model)
    theirs = {k: p.grad.numpy() for k, p in hf.named_parameters()}
    assert set(ours) == set(theirs)
    for k in ours:
        scale = np.abs(theirs[k]).max()
        np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-10, atol=1e-10 * scale, err_msg=k)


def test_name_map_entries_invert_each_other():
    rng = np.random.default_rng(0)
    ours = {"q": rng.standard_normal((4, 3)), "k": rng.standard_normal((4, 3)), "b": rng.standard_normal(5)}
    entries = [MapEntry("fused", ("q", "k"), axis=1, transpose=True), MapEntry("bias", ("b",))]
    theirs = to_theirs(entries, ours)
    assert theirs["fused"].shape == (3, 8)
    np.testing.assert_array_equal(theirs["fused"][:, 4:], ours["k"].T)  # built independently
    back = from_theirs(entries, theirs, {n: v.shape for n, v in ours.items()})
    for n, v in ours.items():
        assert np.array_equal(back[n], v)
    with pytest.raises(ValueError, match=r"theirs: fused has shape \(8, 3\), expected \(3, 8\)"):
        from_theirs(entries, {"fused": theirs["fused"].T, "bias": theirs["bias"]},
                    {n: v.shape for n, v in ours.items()})


@pytest.mark.parametrize("setting,value", [("scale_attn_by_inverse_layer_idx", True),
                                           ("reorder_and_upcast_attn", True),
                                           ("scale_attn_weights", False),
                                           ("activation_function", "gelu_fast")])
def test_settings_refsparse_cannot_express_are_refused_by_name(setting, value):
    hf = _gpt2(**{("act" if setting == "activation_function" else setting): value})
    with pytest.raises(ValueError, match=f"^{setting}: "):
        from_hf(hf)


def test_from_hf_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json in"):
        from_hf(tmp_path)
    with pytest.raises(TypeError, match="expected a transformers GPT2LMHeadModel"):
        from_hf(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="twin, name_map: needed for a Linear"):
        check_lm(torch.nn.Linear(2, 2), np.zeros((1, 3), dtype=np.int64))
    hf = _gpt2(dtype=torch.float32)
    with pytest.raises(TypeError, match="torch_model: expected dtype float64"):
        check_lm(hf, np.zeros((1, 3), dtype=np.int64), twin=from_hf(hf, dtype="float64"),
                 name_map=hf_name_map(L))


# ----------------------------------------------------------------------------------------
# negative controls: four classic porting bugs, each caught and named


def _failed(report):
    return {r.name for r in report.failures}


def test_wrong_layernorm_eps_fails():
    hf = _gpt2()
    ids, _, _ = _batch(False)
    twin = from_hf(hf)
    for _, m in twin.named_modules():
        if hasattr(m, "eps"):
            m.eps = 1e-6  # the port's LayerNorm: 1e-6 for GPT-2's 1e-5
    failed = _failed(check_lm(hf, ids, twin=twin, name_map=hf_name_map(L)))
    assert {"logits", "loss", "grad.transformer.h.0.ln_1.weight"} <= failed


def test_erf_gelu_for_tanh_gelu_fails():
    hf = _gpt2()
    ids, _, _ = _batch(False)
    twin = from_hf(hf)
    for block in twin.blocks:
        block.ff.act.name = "gelu"  # the port's GELU: exact erf, where GPT-2 has the tanh form
    failed = _failed(check_lm(hf, ids, twin=twin, name_map=hf_name_map(L)))
    assert {"logits", "loss", "grad.transformer.h.0.mlp.c_fc.weight"} <= failed


def test_swapped_q_and_k_blocks_fail():
    hf = _gpt2()
    ids, _, _ = _batch(False)
    twin = from_hf(hf)
    for block in twin.blocks:  # the port splits c_attn as k, q, v
        a = block.self_attn
        for part in ("weight", "bias"):
            qp, kp = getattr(a.q_proj, part), getattr(a.k_proj, part)
            qp.value, kp.value = kp.value.copy(), qp.value.copy()
    failed = _failed(check_lm(hf, ids, twin=twin, name_map=hf_name_map(L)))
    assert {"logits", "loss", "grad.transformer.h.0.attn.c_attn.weight"} <= failed


def test_untransposed_conv1d_fails():
    hf = _gpt2()
    ids, _, _ = _batch(False)
    twin = from_hf(hf)
    for i, block in enumerate(twin.blocks):  # the port copies c_proj (in, out) as (out, in)
        w = hf.transformer.h[i].attn.c_proj.weight.detach().numpy()
        block.self_attn.out_proj.weight.value = w.copy()
    failed = _failed(check_lm(hf, ids, twin=twin, name_map=hf_name_map(L)))
    assert {"logits", "loss", "grad.transformer.h.0.attn.c_proj.weight"} <= failed


# ----------------------------------------------------------------------------------------
# the command line


def test_cli_validate_hf(tmp_path, capsys, monkeypatch):
    hf = _gpt2(tied=False)
    hf.save_pretrained(tmp_path / "ok")
    assert main(["validate", "hf", str(tmp_path / "ok"), "--seq-len", "8"]) == 0
    out = capsys.readouterr().out
    assert "grad.transformer.h.1.mlp.c_fc.weight" in out and "OK: " in out and "left-padded" in out

    # a twin with a bug (erf GELU read for gelu_new): exit status 1, the failing tensors named
    import refsparse.interop.hf as H

    monkeypatch.setitem(H.ACTIVATIONS, "gelu_new", "gelu")
    assert main(["validate", "hf", str(tmp_path / "ok"), "--seq-len", "8", "--pad", "right"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "logits" in out
    monkeypatch.undo()

    assert main(["validate", "hf", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "no such directory" in err and len(err.strip().splitlines()) == 1
