"""`refsparse sweep`: bit-identical trials on every backend, resuming, clean stops, errors.

The sweeps here are tiny (2 methods × 2 sparsities × 2 seeds, 4 steps of a 1-layer d_model-16
LM at seq_len 16), each trial a `refsparse train` process of its own. The three sweeps the
comparisons need (local --jobs 1, local --jobs 2, Ray) run at the same time, from one
module fixture, to keep the module near a minute and a half.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

import numpy as np
import pytest

from refsparse.checkpoint import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = """\
[sweep]
name = "tiny"
threads = 1

[base]
steps = 4
d_model = 16
n_heads = 2
n_layers = 1
d_ff = 32
seq_len = 16
batch_size = 8
val_fraction = 0.02
eval_batches = 1
update_every = 2
sample_chars = 0

[axes]
method = ["static", "rigl"]
sparsity = [0.5, 0.8]
seed = [0, 1]
"""


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _sweep_cmd(*args):
    return [sys.executable, "-m", "refsparse.cli", "sweep", *map(str, args)]


def _records(sweep_dir):
    out = {}
    with open(os.path.join(sweep_dir, "results.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            out[r["trial"]] = r
    return out


def _have_ray():
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """The tiny sweep run three ways at once: local --jobs 1, local --jobs 2, and Ray."""
    root = tmp_path_factory.mktemp("sweeps")
    path = root / "tiny.toml"
    path.write_text(TINY)
    runs = {"jobs1": ["--jobs", 1], "jobs2": ["--jobs", 2]}
    if _have_ray():
        runs["ray"] = ["--backend", "ray", "--jobs", 2]
    procs = {k: subprocess.Popen(_sweep_cmd(path, "--out-dir", root / k, *a), cwd=root, env=_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for k, a in runs.items()}
    out = {}
    for k, p in procs.items():
        text, _ = p.communicate(timeout=600)
        assert p.returncode == 0, f"sweep {k} failed:\n{text}"
        out[k] = {"dir": str(root / k / "tiny"), "stdout": text}
    out["file"] = str(path)
    out["root"] = str(root)
    return out


def test_a_tiny_sweep_trains_every_trial_once(sweeps):
    recs = _records(sweeps["jobs1"]["dir"])
    assert len(recs) == 8
    assert {(r["label"]["method"], r["label"]["sparsity"], r["label"]["seed"]) for r in recs.values()} == \
        {(m, s, seed) for m in ("static", "rigl") for s in (0.5, 0.8) for seed in (0, 1)}
    for r in recs.values():
        assert r["status"] == "done" and r["step"] == 4 and r["threads"] == 1
        assert r["thread_env"]["NUMBA_NUM_THREADS"] == "1"
        assert math.isfinite(r["val_loss"]) and r["bits_per_char"] == pytest.approx(r["val_loss"] / math.log(2))
        # sparsity counted from the checkpoint's own CSR arrays
        ckpt = load_checkpoint(os.path.join(sweeps["jobs1"]["dir"], r["checkpoint"]))
        csr = [v for v in ckpt.model_state.values() if hasattr(v, "nnz")]
        assert csr and r["stored_sparse"] == sum(v.nnz for v in csr)
        assert r["sparsity"] == pytest.approx(1 - sum(v.nnz for v in csr) / sum(np.prod(v.shape) for v in csr))
        assert r["sparsity"] == pytest.approx(r["label"]["sparsity"], abs=0.01)
        assert r["checkpoint_bytes"] == os.path.getsize(ckpt.path)
        assert r["wall_s"] > 0 and r["tokens_per_s"] > 0 and r["attempts"] == 1
    # one directory per trial, named by its id, and nothing else: no stray run directories
    assert set(os.listdir(sweeps["jobs1"]["dir"])) == set(recs) | {"logs", "results.jsonl", "sweep.toml",
                                                                 ".lock"}
    for trial in recs:
        assert {"checkpoint.npz", "metrics.jsonl"} <= set(os.listdir(os.path.join(sweeps["jobs1"]["dir"], trial)))
    # the table printed at the end: one row per cell, n = 2 seeds each
    rows = [ln for ln in sweeps["jobs1"]["stdout"].splitlines() if ln.startswith(("| static", "| rigl"))]
    assert len(rows) == 4 and all(" | 2 | " in ln for ln in rows)


def _same_trials(a_dir, b_dir):
    a, b = _records(a_dir), _records(b_dir)
    assert sorted(a) == sorted(b)
    for trial in a:
        assert a[trial]["val_loss"] == b[trial]["val_loss"], trial  # bit for bit, not approx
        assert a[trial]["bits_per_char"] == b[trial]["bits_per_char"], trial
        assert a[trial]["stored"] == b[trial]["stored"], trial
        ca = load_checkpoint(os.path.join(a_dir, a[trial]["checkpoint"])).model_state
        cb = load_checkpoint(os.path.join(b_dir, b[trial]["checkpoint"])).model_state
        for name in ca:
            x, y = ca[name], cb[name]
            if hasattr(x, "nnz"):
                assert np.array_equal(x.indices, y.indices) and np.array_equal(x.indptr, y.indptr)
                x, y = x.data, y.data
            assert np.array_equal(x, y), (trial, name)


def test_jobs_1_and_jobs_2_give_bit_identical_trials(sweeps):
    _same_trials(sweeps["jobs1"]["dir"], sweeps["jobs2"]["dir"])


@pytest.mark.skipif(not _have_ray(), reason="ray is not installed")
def test_ray_gives_the_same_trials_bit_for_bit(sweeps):
    _same_trials(sweeps["jobs1"]["dir"], sweeps["ray"]["dir"])
    assert {r["backend"] for r in _records(sweeps["ray"]["dir"]).values()} == {"ray"}


def test_a_trial_is_a_plain_refsparse_train_run(sweeps, tmp_path):
    """Independent of the sweep: `refsparse train` + `refsparse eval` by hand, same settings."""
    recs = _records(sweeps["jobs1"]["dir"])
    r = next(r for r in recs.values() if r["label"] == {"method": "rigl", "sparsity": 0.8, "seed": 1})
    sets = [a for k, v in r["settings"].items() for a in ("--set", f"{k}={v}")]
    env = {**_env(), "NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    code = ("import sys; from refsparse.cli import main; "
            f"rc = main(['train', '--no-progress', '--out-dir', 'runs', '--name', 'x', *{sets!r}]); "
            "rc or main(['eval', '--checkpoint', 'runs/x/checkpoint.npz'])")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    by_hand = json.loads(p.stdout[p.stdout.rindex("{"):])
    assert by_hand["val_loss"] == r["val_loss"]


def test_an_interrupted_sweep_finishes_only_what_was_missing(sweeps, tmp_path):
    """A copy of the finished jobs-1 sweep, with three trials put back to where a kill leaves them."""
    a_dir = sweeps["jobs1"]["dir"]
    d = tmp_path / "tiny"
    shutil.copytree(a_dir, d)
    recs = _records(d)
    ids = sorted(recs)
    never_started, mid_run, unrecorded = ids[0], ids[3], ids[6]
    # never started: no directory, no record
    shutil.rmtree(d / never_started)
    # killed at step 2 of 4: a checkpoint of the first 2 steps, made by the trainer itself in a
    # process with the trial's thread count
    shutil.rmtree(d / mid_run)
    cfg = load_checkpoint(os.path.join(a_dir, recs[mid_run]["checkpoint"])).meta["extra"]["train_config"]
    cfg = {**cfg, "out_dir": str(d)}
    code = ("import json, sys; from refsparse.train import Trainer, TrainConfig; "
            "t = Trainer(TrainConfig.from_dict(json.loads(sys.argv[1])), progress=False); "
            "s = t.run(2); assert t.step == 2, t.step")
    env = {**_env(), "NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", code, json.dumps(cfg)], env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert load_checkpoint(d / mid_run / "checkpoint.npz").step == 2
    # trained to the end, killed before its result was recorded
    os.unlink(d / "logs" / f"{unrecorded}.result.json")
    kept = [json.dumps(recs[t]) for t in ids if t not in (never_started, mid_run, unrecorded)]
    (d / "results.jsonl").write_text("\n".join(kept) + "\n")
    before = {t: os.path.getmtime(d / t / "checkpoint.npz") for t in ids if t != never_started and t != mid_run}

    p = subprocess.run(_sweep_cmd(sweeps["file"], "--out-dir", tmp_path, "--jobs", 2), cwd=tmp_path,
                       env=_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "5 done, 3 to run" in p.stdout
    after = _records(d)
    for t in ids:
        assert after[t]["val_loss"] == recs[t]["val_loss"], t  # equal to the uninterrupted sweep
        if t not in (never_started, mid_run, unrecorded):
            assert after[t] == recs[t]  # untouched record
    for t, mtime in before.items():
        assert os.path.getmtime(d / t / "checkpoint.npz") == mtime, t  # nothing retrained
    assert after[mid_run]["resumed_from_step"] == 2
    assert after[never_started]["resumed_from_step"] is None and after[never_started]["attempts"] == 1
    # the unrecorded trial was only evaluated: its one attempt is the original one
    assert after[unrecorded]["attempts"] == 1


def _processes_in(directory):
    """Processes whose working directory is inside ``directory`` (the trials')."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                continue
            if cwd.startswith(str(directory)):
                found.append(int(pid))
    return found


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to look for leftover processes")
def test_ctrl_c_stops_the_sweep_and_its_trials(sweeps, tmp_path):
    a = _records(sweeps["jobs1"]["dir"])
    p = subprocess.Popen(_sweep_cmd(sweeps["file"], "--out-dir", tmp_path, "--jobs", 2), cwd=tmp_path,
                         env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    results = tmp_path / "tiny" / "results.jsonl"
    deadline = time.monotonic() + 300
    while not (results.exists() and results.read_text().strip()) and p.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 130, out
    assert "stopped" in out
    assert _processes_in(tmp_path / "tiny") == []
    got = _records(tmp_path / "tiny")
    for t, r in got.items():
        assert r["status"] == "done" and r["val_loss"] == a[t]["val_loss"]
    # run again, it finishes what the stop left and keeps what was recorded: nothing is lost
    p = subprocess.run(_sweep_cmd(sweeps["file"], "--out-dir", tmp_path, "--jobs", 2), cwd=tmp_path,
                       env=_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    after = _records(tmp_path / "tiny")
    assert set(after) == set(a)
    for t, r in after.items():
        assert r["val_loss"] == a[t]["val_loss"], t  # equal to the uninterrupted sweep
        if t in got:
            assert r == got[t], t  # a recorded trial is not run again


def test_a_failed_trial_is_recorded_and_the_others_finish(tmp_path):
    (tmp_path / "short.txt").write_text("too short for a window of 16")
    (tmp_path / "f.toml").write_text(TINY.split("[axes]")[0].replace('name = "tiny"', 'name = "f"') +
                                     '[[trials]]\nseed = 0\n\n[[trials]]\nseed = 1\ntext = "short.txt"\n')
    p = subprocess.run(_sweep_cmd(tmp_path / "f.toml", "--out-dir", tmp_path, "--jobs", 2), cwd=tmp_path,
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stdout + p.stderr
    recs = list(_records(tmp_path / "f").values())
    assert sorted(r["status"] for r in recs) == ["done", "failed"]
    bad = next(r for r in recs if r["status"] == "failed")
    assert "expected at least seq_len + 1" in bad["error"] and bad["settings"]["text"] == "short.txt"
    assert "1 of 2 trials failed" in p.stdout


def test_report_writes_the_table_csv_and_plots(sweeps, capsys):
    from refsparse.cli import main

    d = sweeps["jobs2"]["dir"]
    assert main(["sweep", "report", d]) == 0
    recs = list(_records(d).values())
    with open(os.path.join(d, "report.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    for row in rows:
        cell = [r["val_loss"] for r in recs if r["label"]["method"] == row["method"]
                and r["label"]["sparsity"] == float(row["sparsity"])]
        assert int(row["n"]) == len(cell) == 2
        assert float(row["val_loss_mean"]) == pytest.approx(statistics.mean(cell), rel=1e-12)
        assert float(row["val_loss_std"]) == pytest.approx(statistics.stdev(cell), rel=1e-9)
        with open(os.path.join(d, "report.md")) as f:
            md = f.read()
        assert f"{statistics.mean(cell):.4f} ± {statistics.stdev(cell):.4f}" in md
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    for name in ("loss_vs_sparsity.png", "loss_vs_wall_time.png"):
        with open(os.path.join(d, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


BAD = [
    ("[base]\nstepz = 3\n[axes]\nseed = [0]\n", "base.stepz: unknown key"),
    ("[axes]\nsparsity = []\n", "axes.sparsity: expected a list of one or more values"),
    ("[axes]\nsparsity = 0.9\n", "axes.sparsity: expected a list"),
    ("[axes]\nsparsity = [\"0.9\"]\n", "axes.sparsity[0]: expected a number"),
    ("[base]\nsteps = 2.5\n", "base.steps: expected an integer"),
    ("[base]\nnorm_first = 1\n", "base.norm_first: expected true or false"),
    ("[sweep]\nthreads = 0\n", "sweep.threads: expected an integer >= 1"),
    ("[sweep]\njobs = 2\n", "sweep.jobs: unknown key"),
    ("[sweeps]\nname = 'x'\n", "sweeps: unknown section"),
    ("[base]\nname = 'x'\n", "base.name: not allowed"),
    ("[base]\nseed = 1\n[axes]\nseed = [0, 1]\n", "axes.seed: also set in [base]"),
    ("[axes]\nseed = [0, 0]\n", "axes.seed[1]: 0 is listed twice"),
    ("[axes]\nmethod = ['rigl', 'magic']\nsparsity = [0.9]\n", "method"),  # the CLI's own check
    ("[axes]\nsparsity = [0.5, 1.5]\n", "sparsity: expected a number in [0, 1)"),  # TrainConfig's
    ("[[trials]]\n", "trials[0]: expected at least one key"),
    ("[axes\nseed = [0]\n", "not valid TOML"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_a_malformed_sweep_file_is_one_line_before_anything_runs(text, message, tmp_path, capsys):
    from refsparse.cli import main

    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert main(["sweep", str(path), "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("refsparse sweep: error: ") and str(path) in err
    assert message in err
    assert not (tmp_path / "out").exists()  # nothing ran, nothing was created


def test_the_bench_sweep_files_are_valid(tmp_path, capsys):
    """bench/sweeps/*.toml pass every check (a dry run: nothing trains, nothing is created)."""
    import glob

    from refsparse.cli import main

    files = sorted(glob.glob(os.path.join(ROOT, "bench", "sweeps", "*.toml")))
    assert files
    for f in files:
        assert main(["sweep", f, "--dry-run", "--out-dir", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    # sparse_training.toml: 4 methods × 3 sparsities × 3 seeds, and the dense model at 3 seeds
    assert "sweep sparse_training: 39 trials" in out
    assert not (tmp_path / "out").exists()
