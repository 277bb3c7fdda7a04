"""Bad settings of the trainer and the command line fail at once, with a message naming them."""

import os

import numpy as np
import pytest

from refsparse.checkpoint import load_checkpoint
from refsparse.cli import _build_train_config, build_parser, main
from refsparse.decode import generate
from refsparse.train import TrainConfig, Trainer

TINY = {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32, "seq_len": 16, "batch_size": 2, "steps": 2,
        "warmup_steps": 0, "eval_every": 2, "eval_batches": 1, "log_every": 1, "sample_chars": 5,
        "sparsity": 0.0, "method": "static", "attention": "full"}  # dense: the defaults are sparse


def set_args(*skip):
    """TINY as --set arguments, without the keys in skip."""
    return [a for k, v in TINY.items() if k not in skip for a in ("--set", f"{k}={v}")]


def tiny_text(tmp_path, n_words=400):
    path = tmp_path / "text.txt"
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "sparse", "dense", "attention"]
    path.write_text(" ".join(rng.choice(words, n_words)) + "\n")
    return str(path)


def make_trainer(tmp_path, **kw):
    cfg = TrainConfig(text=tiny_text(tmp_path), out_dir=str(tmp_path / "runs"), name="t",
                      **{**TINY, **kw})
    return Trainer(cfg, progress=False, log=lambda *a: None)


# -- D6: a split too short for one window is found before any step ------------------------


def test_short_validation_split_fails_at_construction(tmp_path, capsys):
    text = tmp_path / "tiny.txt"
    text.write_text("hello world, this is a tiny corpus. " * 3 + "\n")  # 10 validation tokens
    cfg = TrainConfig(text=str(text), out_dir=str(tmp_path / "runs"), name="z", **TINY)
    with pytest.raises(ValueError, match=r"validation data: expected at least seq_len \+ 1 = 17 "
                                         r"tokens .*got 10"):
        Trainer(cfg, progress=False, log=lambda *a: None)
    rc = main(["train", "--text", str(text), *set_args("steps"), "--steps", "5",
               "--out-dir", str(tmp_path / "runs"), "--name", "z", "--no-progress"])
    assert rc == 2
    assert "validation data: expected at least seq_len + 1 = 17" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "runs" / "z")  # nothing trained, nothing written


def test_short_train_split_fails_at_construction(tmp_path):
    with pytest.raises(ValueError, match=r"train data: expected at least seq_len \+ 1 = 65"):
        make_trainer(tmp_path, seq_len=64, val_fraction=0.99, val_pieces=1)  # ~25 train tokens


# -- D7: a pruned checkpoint cannot be resumed, and says why -------------------------------


def test_resume_of_a_pruned_checkpoint_is_a_clear_error(tmp_path, capsys):
    ckpt = make_trainer(tmp_path).save(str(tmp_path / "c.npz"))
    pruned = str(tmp_path / "pruned.npz")
    assert main(["prune", ckpt, "--sparsity", "0.5", "-o", pruned]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", pruned, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint: {pruned} holds no optimizer state" in err and "cannot be resumed" in err
    with pytest.raises(ValueError, match="holds no optimizer state"):
        Trainer.resume(pruned, progress=False, log=lambda *a: None)


# -- D8: prune --sparsity with and without nm ------------------------------------------------


def test_prune_nm_needs_no_sparsity_and_ignores_one_with_a_note(tmp_path, capsys):
    ckpt = make_trainer(tmp_path).save(str(tmp_path / "c.npz"))
    out = str(tmp_path / "nm.npz")
    assert main(["prune", ckpt, "--criterion", "nm", "--nm", "2:4", "-o", out]) == 0
    assert load_checkpoint(out).meta["extra"]["pruned"]["sparsity"] == 0.5
    capsys.readouterr()
    out2 = str(tmp_path / "nm2.npz")
    assert main(["prune", ckpt, "--criterion", "nm", "--sparsity", "0.9", "-o", out2]) == 0
    captured = capsys.readouterr()
    assert "--sparsity 0.9 is ignored with --criterion nm" in captured.err
    assert "sparsity 0.5000" in captured.out


@pytest.mark.parametrize("criterion", ["magnitude", "global", "random", "block"])
def test_prune_needs_sparsity_for_other_criteria(tmp_path, capsys, criterion):
    with pytest.raises(SystemExit) as e:
        main(["prune", str(tmp_path / "c.npz"), "--criterion", criterion, "-o", str(tmp_path / "o.npz")])
    assert e.value.code == 2
    assert f"--sparsity: expected a value for --criterion {criterion}" in capsys.readouterr().err


# -- D8: seed, grad_clip -----------------------------------------------------------------------


def test_negative_seed_is_rejected_by_name(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"seed: expected an integer >= 0, got -1"):
        TrainConfig(seed=-1).validate()
    assert main(["train", "--seed", "-1", "--out-dir", str(tmp_path / "runs"), "--no-progress"]) == 2
    assert "seed: expected an integer >= 0, got -1" in capsys.readouterr().err


def test_negative_grad_clip_is_rejected_zero_disables(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"grad_clip: expected a number >= 0 .*got -1"):
        TrainConfig(grad_clip=-1.0).validate()
    with pytest.raises(ValueError, match="grad_clip"):
        TrainConfig(grad_clip=float("nan")).validate()
    TrainConfig(grad_clip=0.0).validate()  # documented: 0 disables clipping
    assert main(["train", "--set", "grad_clip=-1", "--out-dir", str(tmp_path / "runs"),
                 "--no-progress"]) == 2
    assert "grad_clip: expected a number >= 0" in capsys.readouterr().err


# -- D8: the default warm-up is cut to a short run; an explicit one is not -----------------------


def _config(argv):
    return _build_train_config(build_parser().parse_args(["train", *argv]))


def test_default_warmup_is_cut_to_steps_an_explicit_one_is_kept(tmp_path):
    assert _config(["--steps", "10"]).optim.warmup_steps == 10  # default 50
    assert _config(["--task", "copy", "--steps", "10"]).optim.warmup_steps == 10  # task default 100
    assert _config(["--steps", "1000"]).optim.warmup_steps == 50
    assert _config([]).optim.warmup_steps == 50
    with pytest.raises(ValueError, match=r"warmup_steps: expected 0..steps=10, got 20"):
        _config(["--steps", "10", "--set", "warmup_steps=20"]).validate()
    toml = tmp_path / "c.toml"
    toml.write_text("[train]\nwarmup_steps = 20\n")
    with pytest.raises(ValueError, match=r"warmup_steps: expected 0..steps=10, got 20"):
        _config(["--steps", "10", "--config", str(toml)]).validate()


def test_cli_train_with_few_steps_runs_with_the_default_warmup(tmp_path, capsys):
    rc = main(["train", "--text", tiny_text(tmp_path), *set_args("steps", "warmup_steps"), "--steps", "2",
               "--out-dir", str(tmp_path / "runs"), "--name", "w", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    ckpt = load_checkpoint(str(tmp_path / "runs" / "w" / "checkpoint.npz"))
    assert ckpt.meta["extra"]["train_config"]["optim"]["warmup_steps"] == 2


# -- D8: sample --length ------------------------------------------------------------------------


def test_sample_rejects_a_negative_length(tmp_path, capsys):
    tr = make_trainer(tmp_path)
    path = tr.save(str(tmp_path / "c.npz"))
    assert main(["sample", "--checkpoint", path, "--prompt", "alpha", "--length", "-1"]) == 2
    captured = capsys.readouterr()
    assert "--length: expected an integer >= 0, got -1" in captured.err and captured.out == ""
    with pytest.raises(ValueError, match=r"n_new: expected an integer >= 0, got -1"):
        generate(tr.model, tr.tokenizer.encode("alpha"), -1)
    assert main(["sample", "--checkpoint", path, "--prompt", "alpha", "--length", "0"]) == 0
    assert capsys.readouterr().out.strip() == "alpha"
