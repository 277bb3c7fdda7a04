"""The grouped TrainConfig, SET's two drop rules, and `refsparse train --kernels`."""

import numpy as np
import pytest
import scipy.sparse as sp

from refsparse.cli import main
from refsparse.config import GROUPS, ModelConfig, TrainConfig, flat_keys
from refsparse.prune import SET

from test_train import TINY, tiny_text

# the flat config of a checkpoint written before the groups (45 keys, as stored then)
OLD_FLAT = {
    "task": "lm", "text": None, "d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32, "seq_len": 16,
    "dropout": 0.0, "activation": "gelu", "norm_first": True, "dtype": "float32", "attention": "full",
    "sparsity": 0.5, "method": "rigl", "distribution": "erk", "erk_power_scale": 1.0,
    "prune_begin": 0.1, "prune_end": 0.6, "prune_every": 10, "update_every": 7, "drop_fraction": 0.3,
    "update_end": 0.75, "imp_rounds": 2, "imp_rewind": 0.05, "imp_control": "rewind", "steps": 600,
    "batch_size": 4, "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 50, "weight_decay": 0.1, "beta1": 0.9,
    "beta2": 0.99, "grad_clip": 1.0, "eval_every": 200, "eval_batches": 4, "log_every": 10,
    "val_fraction": 0.1, "val_pieces": 10, "alphabet_size": 10, "min_len": 1, "max_len": 12,
    "seed": 3, "name": "old", "out_dir": "runs", "sample_chars": 200,
}


def test_every_old_flat_key_has_one_home_and_old_dicts_load():
    keys = flat_keys()
    assert set(OLD_FLAT) <= set(keys)  # every key users typed still exists
    cfg = TrainConfig.from_dict(OLD_FLAT)
    for k, v in OLD_FLAT.items():
        assert cfg.get(k) == v, k
    assert cfg.model.d_model == 16 and cfg.sparse.method == "rigl" and cfg.optim.lr == 1e-3
    assert cfg.run.seed == 3 and cfg.data.task == "lm"
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # the grouped form round-trips
    assert set(cfg.to_dict()) == set(GROUPS)
    assert all(len(c.__dataclass_fields__) <= 14 for c in GROUPS.values())


def test_flat_and_grouped_construction_agree():
    a = TrainConfig(d_model=24, lr=1e-3, seed=5)
    b = TrainConfig(model=ModelConfig(d_model=24), optim={"lr": 1e-3}, run={"seed": 5})
    assert a == b
    with pytest.raises(ValueError, match="unknown key 'd_modle'"):
        TrainConfig(d_modle=3)
    with pytest.raises(ValueError, match="unknown keys"):
        TrainConfig.from_dict({"model": {"nope": 1}})


def _config(argv):
    from refsparse.cli import _build_train_config, build_parser

    return _build_train_config(build_parser().parse_args(["train", *argv]))


def test_set_takes_flat_and_dotted_keys():
    cfg = _config(["--set", "lr=0.01", "--set", "model.d_model=32", "--set", "set_drop=signed"])
    assert cfg.optim.lr == 0.01 and cfg.model.d_model == 32 and cfg.sparse.set_drop == "signed"
    with pytest.raises(ValueError, match="unknown key 'optim.d_model'"):
        _config(["--set", "optim.d_model=3"])


def _layer(values):
    """A stand-in SparseLinear holding one row of stored values."""
    w = sp.csr_array(np.asarray([values]))
    w.data = np.asarray(values, dtype=np.float64)  # keep stored zeros too
    w.indices = np.arange(len(values), dtype=np.int32)
    w.indptr = np.asarray([0, len(values)], dtype=np.int32)
    return w


def test_set_magnitude_drops_the_smallest_overall_signed_drops_per_sign():
    # 6 positive weights, 2 negative ones; ζ = 0.5
    data = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, -0.05, -0.9])
    magnitude = SET(0.5, every=1, drop_fraction=0.5)
    kept = magnitude._keep(data, int(round(0.5 * data.size)))
    # Evci et al.: the 4 smallest |w| over all: -0.05, 0.1, 0.2, 0.3
    np.testing.assert_array_equal(kept, [3, 4, 5, 7])
    signed = SET(0.5, every=1, drop_fraction=0.5, drop="signed")
    kept = signed._keep(data, None)
    # Mocanu et al.: 3 of the 6 positive (0.1, 0.2, 0.3) and 1 of the 2 negative (-0.05)
    np.testing.assert_array_equal(kept, [3, 4, 5, 7])
    data = np.array([0.1, 0.2, 0.3, 0.4, -0.01, -0.02, -0.03, -0.04, 0.0])
    # magnitude: 4 smallest |w| of 9 (round(4.5) = 4): -0.01 -0.02 -0.03 0.0
    np.testing.assert_array_equal(magnitude._keep(data, 4), [0, 1, 2, 3, 7])
    # signed: 2 of 4 positive (0.1, 0.2), 2 of 4 negative (-0.01, -0.02) and the stored zero
    np.testing.assert_array_equal(signed._keep(data, None), [2, 3, 6, 7])
    with pytest.raises(ValueError, match="drop"):
        SET(0.5, every=1, drop_fraction=0.5, drop="sign")


def test_set_signed_keeps_the_stored_count_in_training(tmp_path):
    from test_train import make_trainer

    tr = make_trainer(tmp_path, sparsity=0.5, method="set", set_drop="signed", update_every=2,
                      drop_fraction=0.4, steps=4)
    before = {n: l.nnz for n, l in tr.model.named_modules() if hasattr(l, "nnz")}
    for _ in range(4):
        tr.train_step()
    after = {n: l.nnz for n, l in tr.model.named_modules() if hasattr(l, "nnz")}
    assert before == after and before


def test_train_kernels_flag_switches_the_path(tmp_path, monkeypatch, capsys):
    import refsparse.kernels as K

    seen = []
    real = K.use
    monkeypatch.setattr(K, "use", lambda path: seen.append(path) or real("fast"))
    common = ["train", "--text", tiny_text(tmp_path), "--out-dir", str(tmp_path / "runs"), "--no-progress",
              "--steps", "1", "--set", "warmup_steps=0"] + \
        [f"--set={k}={v}" for k, v in TINY.items() if k not in ("steps", "warmup_steps")]
    assert main([*common, "--kernels", "reference"]) == 0
    assert seen == ["reference"]
    with pytest.raises(SystemExit):
        main([*common, "--kernels", "slow"])
    capsys.readouterr()


def test_toml_takes_flat_keys_and_group_tables(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("[train]\nlr = 0.002\n[train.model]\nd_model = 48\n[train.sparse]\nsparsity = 0.5\n"
                    "method = \"set\"\n")
    cfg = _config(["--config", str(toml)])
    assert cfg.optim.lr == 0.002 and cfg.model.d_model == 48 and cfg.sparse.method == "set"


def test_save_without_a_path_never_writes_into_another_runs_directory(tmp_path):
    from test_train import make_trainer

    first = make_trainer(tmp_path)
    first.run()
    before = open(f"{first.run_dir}/checkpoint.npz", "rb").read()
    second = make_trainer(tmp_path)
    path = second.save()
    assert path.startswith(str(tmp_path / "runs" / "t-1"))
    assert open(f"{first.run_dir}/checkpoint.npz", "rb").read() == before
