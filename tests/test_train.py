"""The trainer, checkpoints and the command line (issue: train from the command line)."""

import json
import os
import zipfile

import numpy as np
import pytest

from refsparse.checkpoint import CheckpointError, load_checkpoint, restore_model
from refsparse.cli import main
from refsparse.models import DecoderLM, DecoderLMConfig
from refsparse.decode import generate
from refsparse.train import TrainConfig, Trainer

# the training machinery on a dense model (the defaults train a sparse one: DENSE undoes it)
DENSE = dict(sparsity=0.0, method="static", attention="full")
TINY = dict(d_model=16, n_heads=2, n_layers=1, d_ff=32, seq_len=16, batch_size=4, steps=6,
            warmup_steps=2, eval_every=3, eval_batches=2, log_every=1, **DENSE)


def tiny_text(tmp_path):
    path = tmp_path / "text.txt"
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "sparse", "dense", "attention"]
    path.write_text(" ".join(rng.choice(words, 400)) + "\n")
    return str(path)


def make_trainer(tmp_path, **kw):
    cfg = TrainConfig(text=tiny_text(tmp_path), out_dir=str(tmp_path / "runs"), name="t",
                      **{**TINY, **kw})
    return Trainer(cfg, progress=False, log=lambda *a: None)


def test_training_lowers_the_loss(tmp_path):
    tr = make_trainer(tmp_path, steps=40, lr=1e-2, warmup_steps=5)
    first = tr.evaluate(2)["val_loss"]
    tr.run()
    assert tr.evaluate(2)["val_loss"] < first - 0.5


def test_metrics_are_json_lines(tmp_path):
    tr = make_trainer(tmp_path)
    tr.run()
    lines = [json.loads(x) for x in open(os.path.join(tr.run_dir, "metrics.jsonl"))]
    assert [r["step"] for r in lines] == list(range(1, 7)) + [6]
    for r in lines[:-1]:
        assert set(r) >= {"run_id", "step", "loss", "val_loss", "eval", "lr", "tokens_per_s", "elapsed"}
    assert lines[2]["val_loss"] is not None and lines[0]["val_loss"] is None
    assert lines[2]["eval"] == "estimate" and lines[2]["eval_batches"] == 2 and lines[0]["eval"] is None
    assert lines[-1]["eval"] == "final" and "val_loss" not in lines[-1]
    assert len({r["run_id"] for r in lines}) == 1


def test_save_load_is_bit_exact(tmp_path):
    tr = make_trainer(tmp_path)
    for _ in range(3):
        tr.train_step()
    path = tr.save(str(tmp_path / "c.npz"))
    ckpt = load_checkpoint(path)
    for name, p in tr.model.parameters():
        assert ckpt.model_state[name].dtype == p.value.dtype
        assert np.array_equal(ckpt.model_state[name], p.value), name
    for key, val in tr.opt.state_dict().items():
        assert np.array_equal(np.asarray(ckpt.optim_state[key]), np.asarray(val)), key
    assert ckpt.step == 3
    assert ckpt.meta["tokenizer"] == tr.tokenizer.to_json()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_resume_continues_bit_identically(tmp_path, dtype):
    straight = make_trainer(tmp_path, dtype=dtype, dropout=0.1, steps=8)
    losses = [straight.train_step() for _ in range(8)]

    first = make_trainer(tmp_path, dtype=dtype, dropout=0.1, steps=8)
    head = [first.train_step() for _ in range(4)]
    path = first.save(str(tmp_path / "mid.npz"))
    resumed = Trainer.resume(path, progress=False, log=lambda *a: None)
    tail = [resumed.train_step() for _ in range(4)]
    assert head + tail == losses  # exact equality, step for step
    for (name, p), (_, p2) in zip(straight.model.parameters(), resumed.model.parameters()):
        assert np.array_equal(p.value, p2.value), name


def test_truncated_corrupted_and_foreign_files_raise(tmp_path):
    tr = make_trainer(tmp_path)
    tr.train_step()
    path = tr.save(str(tmp_path / "c.npz"))
    data = open(path, "rb").read()

    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated|corrupted"):
        load_checkpoint(truncated)

    corrupted = tmp_path / "corrupted.npz"
    b = bytearray(data)
    # flip one byte inside an array's data (not in a zip header, whose place moves with the
    # length of the JSON header, e.g. with the run directory's path)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("model/tok_embed.weight.npy")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    b[start + info.compress_size // 2] ^= 0xFF
    corrupted.write_bytes(bytes(b))
    with pytest.raises(CheckpointError, match="corrupted|truncated"):
        load_checkpoint(corrupted)

    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, a=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a refsparse checkpoint"):
        load_checkpoint(foreign)

    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(CheckpointError):
        load_checkpoint(text)

    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.npz")


def test_tampered_array_fails_the_digest(tmp_path):
    tr = make_trainer(tmp_path)
    path = tr.save(str(tmp_path / "c.npz"))
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    name = next(n for n in members if n.startswith("model/"))
    import io

    arr = np.load(io.BytesIO(members[name]))
    arr = arr.copy()
    arr.flat[0] += 1
    buf = io.BytesIO()
    np.save(buf, arr)
    members[name] = buf.getvalue()  # a consistent zip (valid CRC) with a changed array
    tampered = tmp_path / "tampered.npz"
    with zipfile.ZipFile(tampered, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(tampered)


def test_config_mismatch_is_a_clear_error(tmp_path):
    tr = make_trainer(tmp_path)
    path = tr.save(str(tmp_path / "c.npz"))
    other = DecoderLM(DecoderLMConfig(**{**tr.model.config.to_dict(), "d_ff": 64}))
    with pytest.raises(CheckpointError, match="d_ff"):
        restore_model(other, load_checkpoint(path))


def test_failure_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    tr = make_trainer(tmp_path)
    path = tr.save(str(tmp_path / "c.npz"))
    before = open(path, "rb").read()
    tr.train_step()

    def exploding_savez(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", exploding_savez)
    with pytest.raises(OSError, match="disk full"):
        tr.save(path)
    assert open(path, "rb").read() == before
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
    monkeypatch.undo()
    load_checkpoint(path)


def test_keyboard_interrupt_saves_and_returns(tmp_path, monkeypatch):
    tr = make_trainer(tmp_path, steps=10)
    calls = {"n": 0}
    real = tr.train_step

    def step():
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real()

    monkeypatch.setattr(tr, "train_step", step)
    summary = tr.run()
    assert summary["interrupted"] and summary["step"] == 3
    assert load_checkpoint(summary["checkpoint"]).step == 3


def test_generate_is_deterministic_and_checks_arguments(tmp_path):
    tr = make_trainer(tmp_path)
    ids = tr.tokenizer.encode("alpha ")
    a = generate(tr.model, ids, 10, temperature=0.8, top_k=5, rng=np.random.default_rng(1))
    b = generate(tr.model, ids, 10, temperature=0.8, top_k=5, rng=np.random.default_rng(1))
    assert np.array_equal(a, b) and len(a) == len(ids) + 10
    with pytest.raises(ValueError, match="temperature"):
        generate(tr.model, ids, 1, temperature=-1)
    with pytest.raises(ValueError, match="top_k"):
        generate(tr.model, ids, 1, top_k=0)


def test_seq2seq_task_trains_and_reports_accuracy(tmp_path):
    cfg = TrainConfig(task="copy", d_model=16, n_heads=2, n_layers=1, d_ff=32, steps=5,
                      batch_size=8, warmup_steps=1, eval_every=5, eval_batches=1, max_len=5,
                      out_dir=str(tmp_path), name="copy")
    tr = Trainer(cfg, progress=False)
    summary = tr.run()
    assert 0.0 <= summary["exact_match"] <= 1.0 and np.isfinite(summary["val_loss"])


# -- the command line ------------------------------------------------------------------


def test_cli_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert "refsparse" in capsys.readouterr().out
    assert main([]) == 0
    assert "train" in capsys.readouterr().out


def test_cli_train_sample_eval(tmp_path, capsys):
    text = tiny_text(tmp_path)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[train]\nd_model = 16\nn_heads = 2\nn_layers = 1\nd_ff = 32\nseq_len = 16\n'
                   'batch_size = 4\nwarmup_steps = 1\neval_every = 2\neval_batches = 1\n'
                   'sample_chars = 20\n')
    rc = main(["train", "--text", text, "--config", str(cfg), "--set", "steps=3", "--seed", "1",
               "--out-dir", str(tmp_path / "runs"), "--name", "cli", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "bits per character" in out and "unigram entropy" in out
    ckpt = str(tmp_path / "runs" / "cli" / "checkpoint.npz")
    assert main(["sample", "--checkpoint", ckpt, "--prompt", "alpha", "--length", "5"]) == 0
    assert capsys.readouterr().out.startswith("alpha")
    assert main(["eval", "--checkpoint", ckpt]) == 0
    assert "val_loss" in json.loads(capsys.readouterr().out)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["sample", "--checkpoint", str(tmp_path / "nope.npz")]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "Traceback" not in err
    assert main(["train", "--set", "nonsense=1"]) == 2
    assert "unknown key" in capsys.readouterr().err
    assert main(["train", "--set", "steps"]) == 2
    assert "key=value" in capsys.readouterr().err


def test_cli_unknown_prompt_character(tmp_path, capsys):
    tr = make_trainer(tmp_path)
    path = tr.save(str(tmp_path / "c.npz"))
    assert main(["sample", "--checkpoint", path, "--prompt", "☃"]) == 2
    assert "not in the vocabulary" in capsys.readouterr().err


def test_cli_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    tr = make_trainer(tmp_path)
    tr.run()
    assert main(["plot", tr.run_dir]) == 0
    assert os.path.exists(os.path.join(tr.run_dir, "loss.png"))


# -- one step equals PyTorch's ---------------------------------------------------------


@pytest.mark.torch
def test_one_training_step_equals_torch_float64(tmp_path):
    torch = pytest.importorskip("torch")
    from refsparse.interop.torch_models import TorchDecoderLM, copy_lm_to_torch, lm_torch_grads
    from refsparse.optim import AdamW, clip_grad_norm

    cfg = DecoderLMConfig(vocab_size=17, d_model=16, n_heads=4, n_layers=2, d_ff=32, max_len=12)
    model = DecoderLM(cfg, rng=np.random.default_rng(0))
    tmodel = TorchDecoderLM(cfg)
    copy_lm_to_torch(model, tmodel)
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 17, (3, 12)), rng.integers(0, 17, (3, 12))
    opt = AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
    topt = torch.optim.AdamW(tmodel.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1,
                             foreach=False)
    for step in range(3):
        model.zero_grad()
        loss = model.forward_backward(x, y)
        norm = clip_grad_norm(model.parameters(), 0.5)
        topt.zero_grad()
        tloss = torch.nn.functional.cross_entropy(tmodel(torch.from_numpy(x)).reshape(-1, 17),
                                                  torch.from_numpy(y).reshape(-1))
        tloss.backward()
        tnorm = torch.nn.utils.clip_grad_norm_(tmodel.parameters(), 0.5)
        assert abs(loss - tloss.item()) <= 1e-10 * abs(tloss.item())
        assert abs(norm - tnorm.item()) <= 1e-10 * tnorm.item()
        grads = lm_torch_grads(model, tmodel)
        scale = max(np.abs(g).max() for g in grads.values())
        for name, p in model.parameters():
            err = np.abs(p.grad - grads[name]).max()
            assert err <= 1e-10 * max(np.abs(grads[name]).max(), 1e-6 * scale), (step, name, err)
        opt.step()
        topt.step()
        theirs = dict(tmodel.named_parameters())
        from refsparse.interop.torch_models import lm_name_map

        params = dict(model.parameters())
        for tkey, names in lm_name_map(model):
            mine = np.concatenate([params[n].value for n in names])
            t = theirs[tkey].detach().numpy()
            assert np.abs(mine - t).max() <= 1e-10 * np.abs(t).max(), (step, tkey)
