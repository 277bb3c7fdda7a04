"""Bad inputs get named errors (issue 24's table, every row but `refsparse vectors`): one test
per row, each asserting the row's "want" outcome."""

import errno
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from refsparse.checkpoint import CheckpointError, load_checkpoint
from refsparse.cli import main

from test_train import DENSE, TINY, make_trainer, tiny_text

# the tiny shape; the model as the defaults make it (the flags under test may change it)
SETS = [f"--set={k}={v}" for k, v in {**TINY, "steps": 3}.items() if k not in DENSE]


def _one_error_line(capsys, *words):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


def test_text_of_one_repeated_character_is_refused_before_training(tmp_path, capsys):
    text = tmp_path / "a.txt"
    text.write_text("a" * 394)
    rc = main(["train", "--text", str(text), "--set", "seq_len=16", "--steps", "3", "--no-progress",
               "--out-dir", str(tmp_path / "runs")])
    assert rc == 2
    _one_error_line(capsys, "text: expected at least 2 distinct characters", "'a'")
    assert not (tmp_path / "runs").exists()  # before anything is written


def test_patterns_stats_of_a_huge_full_pattern_is_refused_up_front(capsys, monkeypatch):
    import refsparse.cli as cli

    monkeypatch.setattr(cli, "_available_memory", lambda: 16 * 2**30)
    assert main(["patterns", "stats", "full", "--T", "200000"]) == 2
    err = _one_error_line(capsys, "--T", "GiB", "16.0 GiB is free")
    # full at T: T² stored entries of 5 bytes (int32 column + bool), built with as much again
    need = float(err.split("needs about ")[1].split(" GiB")[0])
    assert need == pytest.approx(2 * 5 * 200_000**2 / 2**30, rel=0.01)
    # a pattern that fits is built as before
    assert main(["patterns", "stats", "local:window=4", "--T", "5000"]) == 0
    assert json.loads(capsys.readouterr().out)["nnz"] == sum(min(i + 1, 4) for i in range(5000))


def test_prune_nm_with_n_zero_is_refused_like_sparsity_one(tmp_path, capsys):
    tr = make_trainer(tmp_path)
    path = tr.save(str(tmp_path / "c.npz"))
    out = tmp_path / "p.npz"
    assert main(["prune", path, "--criterion", "nm", "--nm", "0:4", "-o", str(out)]) == 2
    _one_error_line(capsys, "--nm", "0:4")
    assert not out.exists()
    assert main(["prune", path, "--criterion", "nm", "--nm", "x:4", "-o", str(out)]) == 2
    _one_error_line(capsys, "--nm")


def test_train_rigl_with_sparsity_zero_is_an_error(tmp_path, capsys):
    rc = main(["train", "--method", "rigl", "--sparsity", "0", "--text", tiny_text(tmp_path),
               "--no-progress", "--out-dir", str(tmp_path / "runs"), *SETS])
    assert rc == 2
    _one_error_line(capsys, "sparsity", "'rigl'")
    assert not (tmp_path / "runs").exists()


def test_info_into_a_closed_pipe_exits_quietly_with_layers_in_model_order(tmp_path):
    tr = make_trainer(tmp_path, sparsity=0.5, method="static")
    path = tr.save(str(tmp_path / "c.npz"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    code = "import sys; from refsparse.cli import main; sys.exit(main())"
    # a reader that takes one line and leaves: many rows follow into a closed pipe
    p = subprocess.run(f"{sys.executable} -c '{code}' info {path} | head -1; exit ${{PIPESTATUS[0]}}",
                       shell=True, executable="/bin/bash", env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.stderr == "" and p.stdout.startswith(path)
    assert p.returncode in (0, 141)
    full = subprocess.run([sys.executable, "-c", code, "info", path], env=env, capture_output=True,
                          text=True, timeout=120)
    rows = [line.split()[0] for line in full.stdout.splitlines()[2:] if line.split()[0] != "total"
            and not line.startswith("sparse layers")]
    assert rows == [name for name, _ in tr.model.parameters()]


def test_load_checkpoint_of_a_renamed_npy_or_a_header_without_kind(tmp_path):
    npy = tmp_path / "weights.npy"
    np.save(npy, np.zeros(3))
    renamed = tmp_path / "weights.npz"
    os.replace(npy, renamed)
    with pytest.raises(CheckpointError, match="single .npy array"):
        load_checkpoint(renamed)
    tr = make_trainer(tmp_path)
    path = tr.save(str(tmp_path / "c.npz"))
    with zipfile.ZipFile(path) as z:
        arrays = {n[:-4]: np.load(z.open(n)) for n in z.namelist()}
    meta = json.loads(arrays["__meta__"].tobytes())
    del meta["kind"]
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(tmp_path / "nokind.npz", **arrays)
    with pytest.raises(CheckpointError, match="header without 'kind'"):
        load_checkpoint(tmp_path / "nokind.npz")
    with pytest.raises(CheckpointError, match="directory"):
        load_checkpoint(tmp_path)


def test_plot_of_empty_metrics_is_an_error_and_leaves_no_file(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    assert main(["plot", str(run)]) == 2
    _one_error_line(capsys, "no training record")
    assert sorted(os.listdir(run)) == ["metrics.jsonl"]


def test_patterns_show_on_a_full_disk_is_an_error_and_leaves_no_file(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    def savefig(self, f, **kw):
        f.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", savefig)
    out = tmp_path / "p.png"
    assert main(["patterns", "show", "local:window=4", "--T", "16", "-o", str(out)]) == 2
    _one_error_line(capsys, "No space left on device")
    assert os.listdir(tmp_path) == []


def test_ctrl_c_during_sample_exits_130_without_a_traceback(tmp_path, capsys, monkeypatch):
    import refsparse.decode as decode

    tr = make_trainer(tmp_path)
    path = tr.save(str(tmp_path / "c.npz"))

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(decode, "generate", interrupted)
    assert main(["sample", "--checkpoint", path, "--prompt", "alpha", "--length", "5"]) == 130
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("value", ["nan", "-1", "inf", "0"])
def test_a_bad_lr_names_lr(tmp_path, capsys, value):
    rc = main(["train", "--text", tiny_text(tmp_path), "--out-dir", str(tmp_path / "runs"), "--no-progress",
               *SETS, "--set", f"lr={value}"])
    assert rc == 2
    err = _one_error_line(capsys)
    assert err.startswith("refsparse train: error: lr:"), err
    assert not (tmp_path / "runs").exists()


def test_attention_window_zero_is_caught_before_anything_is_written(tmp_path, capsys):
    rc = main(["train", "--attention", "local:window=0", "--text", tiny_text(tmp_path), "--no-progress",
               "--out-dir", str(tmp_path / "runs"), *SETS])
    assert rc == 2
    _one_error_line(capsys, "attention", "window")
    assert not (tmp_path / "runs").exists()


def test_plot_draws_the_final_full_evaluation_as_its_own_mark(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import refsparse.plotting as plotting

    tr = make_trainer(tmp_path)
    summary = tr.run()
    seen = {}
    real = plotting.save_figure

    def capture(fig, output, dpi=120):
        seen["lines"] = {l.get_label(): (list(l.get_xdata()), list(l.get_ydata())) for l in fig.axes[0].lines}
        return real(fig, output, dpi)

    monkeypatch.setattr(plotting, "save_figure", capture)
    assert main(["plot", tr.run_dir]) == 0
    lines = seen["lines"]
    assert lines["validation (final, whole set)"] == ([6], [summary["val_loss"]])
    assert lines["validation (estimate)"][0] == [3, 6]  # the estimates, apart from it
    assert os.path.getsize(os.path.join(tr.run_dir, "loss.png")) > 0
