"""Runs that lose nothing: interrupts at every point of a step, SIGKILL mid-save, a full disk,
two runs with one name, resuming from elsewhere — each against an uninterrupted run, bit for bit.

The run: d_model 32, 1 layer, seq_len 16, batch 4, 12 steps, an estimate every 4 steps, a
checkpoint every 5; dense (with dropout, so the model's random stream matters) and RigL
(50% sparse, an update every 3 steps, so interrupts land on update steps too).
"""

import errno
import glob
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import refsparse.data as D
import refsparse.train as T
from refsparse.checkpoint import load_checkpoint
from refsparse.cli import main
from refsparse.train import RunWriteError, TrainConfig, Trainer

from test_train import DENSE, tiny_text

RUN = dict(d_model=32, n_heads=2, n_layers=1, d_ff=64, seq_len=16, batch_size=4, steps=12,
           warmup_steps=2, eval_every=4, eval_batches=2, log_every=1, save_every=5)
KINDS = {"dense": dict(dropout=0.1, **DENSE), "rigl": dict(sparsity=0.5, method="rigl", update_every=3),
         "set": dict(sparsity=0.5, method="set", update_every=3),
         "gmp": dict(sparsity=0.5, method="gmp", prune_begin=0.25, prune_end=0.75, prune_every=2)}
QUIET = dict(progress=False, log=lambda *a: None)
TIMING = ("elapsed", "tokens_per_s", "run_id")


def config(tmp, kind, **kw):
    return TrainConfig(text=tiny_text(tmp), out_dir=str(tmp / "runs"), name="r",
                       **{**RUN, **KINDS[kind], **kw})


def snapshot(tr):
    """Everything a run's state is: weights with patterns, optimizer, step, random streams."""
    params = {}
    for name, p in tr.model.parameters():
        v = p.value
        params[name] = (v.indptr.copy(), v.indices.copy(), v.data.copy()) if p.is_sparse else (v.copy(),)
    return {"params": params, "optim": tr.opt.state_dict(), "step": tr.step, "rng": tr._rng_states()}


def _untimed(record):
    out = {k: v for k, v in record.items() if k not in TIMING}
    if "savings" in out:  # the step times the final record measured, and the files' sizes
        # (their JSON header holds fields of this run's history, a few bytes longer or shorter)
        out["savings"] = {k: v for k, v in out["savings"].items() if k not in ("step_ms", "checkpoint_bytes")}
    return out


def records(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [_untimed(json.loads(line)) for line in f]


def assert_same_state(a, b):
    assert a["step"] == b["step"]
    assert a["params"].keys() == b["params"].keys()
    for name in a["params"]:
        for x, y in zip(a["params"][name], b["params"][name]):
            assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert a["optim"].keys() == b["optim"].keys()
    for k in a["optim"]:
        assert np.array_equal(np.asarray(a["optim"][k]), np.asarray(b["optim"][k])), k
    assert a["rng"] == b["rng"]


@pytest.fixture(autouse=True, scope="module")
def one_numba_thread():
    """Tiny models on a shared machine: one kernel thread is ~20x faster than waiting for
    busy cores, and the subprocess of the SIGKILL test runs the same way."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


_straight = {}


@pytest.fixture
def straight(tmp_path_factory):
    """The uninterrupted run of each kind: (state, metrics records, summary), computed once."""

    def get(kind):
        if kind not in _straight:
            tmp = tmp_path_factory.mktemp(f"straight-{kind}")
            tr = Trainer(config(tmp, kind), **QUIET)
            summary = tr.run()
            _straight[kind] = (snapshot(tr), records(tr.run_dir), summary)
        return _straight[kind]

    return get


def resume_and_finish(run_dir):
    assert not glob.glob(os.path.join(run_dir, ".tmp-*"))
    tr = Trainer.resume(os.path.join(run_dir, "checkpoint.npz"), **QUIET)
    summary = tr.run()
    assert not summary["interrupted"]
    assert not glob.glob(os.path.join(run_dir, ".tmp-*"))
    return tr, summary


def check_against_straight(tr, summary, want):
    state, recs, final = want
    assert_same_state(snapshot(tr), state)
    assert records(tr.run_dir) == recs  # every step once, in order, the same numbers
    assert summary["val_loss"] == final["val_loss"]
    assert recs[-1]["eval"] == "final" and recs[-1]["final_val_loss"] == final["val_loss"]


# -- the interrupt points of one step -------------------------------------------------------

def _nth(n, before=None, after=None):
    """A wrapper factory: the n-th call runs ``before`` (which may raise), the call, ``after``."""
    def wrap(fn):
        calls = [0]

        def wrapped(*a, **kw):
            calls[0] += 1
            if calls[0] == n and before is not None:
                before(*a, **kw)
            out = fn(*a, **kw)
            if calls[0] == n and after is not None:
                after()
            return out
        return wrapped
    return wrap


def _raise(*a, **kw):
    raise KeyboardInterrupt


def _ctrl_c():
    signal.raise_signal(signal.SIGINT)  # a real Ctrl-C, delivered where it lands


def inject(point, tr, monkeypatch):
    if point == "before the batch":
        monkeypatch.setattr(D, "get_lm_batch", _nth(6, before=_raise)(D.get_lm_batch))
    elif point == "inside forward":
        model = tr.model
        fb = model.forward_backward

        def forward_backward(x, y):
            forward_backward.calls += 1
            if forward_backward.calls == 6:
                model.forward(x)  # the forward runs (dropout draws) and Ctrl-C lands at its end
                raise KeyboardInterrupt
            return fb(x, y)
        forward_backward.calls = 0
        model.forward_backward = forward_backward
    elif point == "inside backward":
        # the first block's backward: the head's gradients are in, the rest are not
        block = dict(tr.model.named_modules())["blocks.0"]
        block.backward = _nth(6, before=_raise)(block.backward)
    elif point == "inside the optimizer step":
        opt = tr.opt
        seen = [0]
        update = opt._update

        def _update(name, *a):
            seen[0] += 1  # the 2nd parameter of the 6th optimizer step: Ctrl-C lands mid-update
            if opt.step_count == 6 and seen[0] == 6 * len(opt.params) - len(opt.params) + 2:
                _ctrl_c()
            return update(name, *a)
        opt._update = _update
    elif point == "during an estimate":
        tr.evaluate = _nth(2, after=_raise)(tr.evaluate)  # the estimate at step 8, done, then Ctrl-C
    elif point == "during the final evaluation":
        evaluate = tr.evaluate

        def final_interrupted(max_batches=None):
            if max_batches is None:
                evaluate(1)
                raise KeyboardInterrupt
            return evaluate(max_batches)
        tr.evaluate = final_interrupted
    elif point == "during a checkpoint write":
        real = np.savez

        def savez(f, **arrays):
            savez.calls += 1
            if savez.calls == 1:  # the checkpoint of step 5, half written
                f.write(b"PK\x03\x04 half a checkpoint")
                raise KeyboardInterrupt
            return real(f, **arrays)
        savez.calls = 0
        monkeypatch.setattr(np, "savez", savez)
    else:  # pragma: no cover
        raise AssertionError(point)


POINTS = ["before the batch", "inside forward", "inside backward", "inside the optimizer step",
          "during an estimate", "during the final evaluation", "during a checkpoint write"]


@pytest.mark.parametrize("kind,point", [(k, p) for p in POINTS for k in ("dense", "rigl")] +
                         [(k, p) for p in ("inside forward", "inside the optimizer step") for k in ("set", "gmp")])
def test_an_interrupt_anywhere_resumes_bit_identically(tmp_path, monkeypatch, straight, kind, point):
    want = straight(kind)
    tr = Trainer(config(tmp_path, kind), **QUIET)
    inject(point, tr, monkeypatch)
    summary = tr.run()
    assert summary["interrupted"], point
    monkeypatch.undo()
    # what was saved is the state of the last completed step, loadable
    assert load_checkpoint(os.path.join(tr.run_dir, "checkpoint.npz")).step == tr.step
    again, summary = resume_and_finish(tr.run_dir)
    assert again.run_id == tr.run_id and again.run_dir == tr.run_dir
    check_against_straight(again, summary, want)


def test_an_interrupted_update_is_completed_not_half_applied(tmp_path, monkeypatch):
    """Ctrl-C inside the optimizer step is held back until the update is whole."""
    tr = Trainer(config(tmp_path, "dense"), **QUIET)
    inject("inside the optimizer step", tr, monkeypatch)
    assert tr.run()["interrupted"]
    assert tr.step == 6 and tr.opt.step_count == 6  # the 6th update was completed, then saved


# -- SIGKILL in the middle of a save ------------------------------------------------------

KILLER = r"""
import json, os, signal, sys
import numpy as np
from refsparse.train import TrainConfig, Trainer

real, calls = np.savez, [0]
def savez(f, **arrays):
    calls[0] += 1
    if calls[0] == 2:  # the checkpoint of step 10: half written, then the process is killed
        f.write(b"PK\x03\x04 half a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real(f, **arrays)
np.savez = savez
Trainer(TrainConfig.from_dict(json.loads(sys.argv[1])), progress=False, log=lambda *a: None).run()
"""


RUNNER = r"""
import json, sys
from refsparse.train import TrainConfig, Trainer
quiet = dict(progress=False, log=lambda *a: None)
if sys.argv[1] == "straight":
    Trainer(TrainConfig.from_dict(json.loads(sys.argv[2])), **quiet).run()
else:
    Trainer.resume(sys.argv[2], **quiet).run()
"""


def _final_state(run_dir):
    """The final checkpoint's weights (with patterns), optimizer state and step, as plain arrays."""
    ckpt = load_checkpoint(os.path.join(run_dir, "checkpoint.npz"))
    params = {}
    for name, v in ckpt.model_state.items():
        params[name] = (v.indptr, v.indices, v.data) if hasattr(v, "indptr") else (v,)
    return {"step": ckpt.step, "params": params, "optim": ckpt.optim_state, "rng": ckpt.meta["rng"]}


def test_sigkill_mid_save_keeps_the_previous_checkpoint_and_resumes_exactly(tmp_path):
    """Every run of this test — killed, resumed, and the uninterrupted one it is held to — is a
    process of its own with the same environment, so no state of the test process (threads, BLAS,
    caches) can tell them apart."""
    cfg = config(tmp_path, "rigl")
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(T.__file__))), os.environ.get("PYTHONPATH", "")])}

    def run(code, *args, expect=0):
        proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, timeout=300)
        assert proc.returncode == expect, proc.stderr.decode()[-2000:]

    os.makedirs(tmp_path / "straight", exist_ok=True)
    straight_cfg = config(tmp_path / "straight", "rigl")
    run(RUNNER, "straight", json.dumps(straight_cfg.to_dict()))
    straight_dir = str(tmp_path / "straight" / "runs" / "r")

    run(KILLER, json.dumps(cfg.to_dict()), expect=-signal.SIGKILL)
    run_dir = str(tmp_path / "runs" / "r")
    assert glob.glob(os.path.join(run_dir, ".tmp-*.npz"))  # what the kill left behind
    assert load_checkpoint(os.path.join(run_dir, "checkpoint.npz")).step == 5  # the previous one
    assert [r["step"] for r in records(run_dir)] == list(range(1, 11))  # steps 6-10 were logged
    run(RUNNER, "resume", os.path.join(run_dir, "checkpoint.npz"))
    assert not glob.glob(os.path.join(run_dir, ".tmp-*"))  # cleaned by the next run
    assert_same_state(_final_state(run_dir), _final_state(straight_dir))
    assert records(run_dir) == records(straight_dir)  # steps 6-10 redone and logged once


# -- a full disk --------------------------------------------------------------------------

def _full_disk_open(fail_at):
    """``open`` whose ``fail_at``-th opening of metrics.jsonl for appending fails with ENOSPC."""
    calls = [0]

    def fake(path, mode="r", *a, **kw):
        if str(path).endswith("metrics.jsonl") and "a" in mode:
            calls[0] += 1
            if calls[0] == fail_at:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return open(path, mode, *a, **kw)
    return fake


def test_a_full_disk_at_the_metrics_saves_the_state_and_says_so_in_one_line(tmp_path, monkeypatch, straight):
    want = straight("dense")
    tr = Trainer(config(tmp_path, "dense"), **QUIET)
    monkeypatch.setattr(T, "open", _full_disk_open(7), raising=False)
    with pytest.raises(RunWriteError) as e:
        tr.run()
    monkeypatch.undo()
    msg = str(e.value)
    assert "\n" not in msg and os.path.join(tr.run_dir, "metrics.jsonl") in msg
    assert "No space left on device" in msg and "step 7 is saved" in msg
    assert load_checkpoint(os.path.join(tr.run_dir, "checkpoint.npz")).step == 7
    again, summary = resume_and_finish(tr.run_dir)  # step 7's record is written first
    check_against_straight(again, summary, want)


def test_a_full_disk_at_the_metrics_and_the_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    tr = Trainer(config(tmp_path, "dense"), **QUIET)
    monkeypatch.setattr(T, "open", _full_disk_open(7), raising=False)
    real = np.savez

    def savez(f, **arrays):
        savez.calls += 1
        if savez.calls == 2:
            f.write(b"PK\x03\x04 half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(f, **arrays)
    savez.calls = 0
    monkeypatch.setattr(np, "savez", savez)
    with pytest.raises(RunWriteError) as e:
        tr.run()
    monkeypatch.undo()
    msg = str(e.value)
    assert "\n" not in msg and "metrics.jsonl" in msg and "checkpoint.npz" in msg
    assert msg.count("No space left on device") == 2
    assert not glob.glob(os.path.join(tr.run_dir, ".tmp-*"))
    assert load_checkpoint(os.path.join(tr.run_dir, "checkpoint.npz")).step == 5


def test_cli_reports_a_full_disk_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(T, "open", _full_disk_open(3), raising=False)
    rc = main(["train", "--text", tiny_text(tmp_path), "--out-dir", str(tmp_path / "runs"), "--no-progress",
               *[f"--set={k}={v}" for k, v in RUN.items()]])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("refsparse train: error: metrics: cannot write ") and "No space left" in err


# -- run directories ------------------------------------------------------------------------

def _cli(tmp_path, *extra):
    return main(["train", "--text", tiny_text(tmp_path), "--out-dir", str(tmp_path / "runs"), "--no-progress",
                 *[f"--set={k}={v}" for k, v in {**RUN, "steps": 3, "save_every": 10}.items()], *extra])


def test_two_runs_with_one_name_get_two_directories(tmp_path, capsys):
    assert _cli(tmp_path, "--name", "x") == 0
    first = capsys.readouterr().out
    assert _cli(tmp_path, "--name", "x", "--seed", "1") == 0
    out = capsys.readouterr().out
    runs = tmp_path / "runs"
    assert f"run directory {runs / 'x'}" in first and f"run directory {runs / 'x-1'}" in out
    assert f"{runs / 'x'} exists" in out
    for name, seed in (("x", 0), ("x-1", 1)):
        ckpt = load_checkpoint(str(runs / name / "checkpoint.npz"))
        assert ckpt.extra["train_config"]["run"]["seed"] == seed
        recs = records(str(runs / name))
        assert [r["step"] for r in recs] == [1, 2, 3, 3]
    ids = {json.loads(line)["run_id"] for name in ("x", "x-1") for line in open(runs / name / "metrics.jsonl")}
    assert len(ids) == 2
    # --overwrite: the same directory, started afresh
    assert _cli(tmp_path, "--name", "x", "--overwrite") == 0
    capsys.readouterr()
    assert [r["step"] for r in records(str(runs / "x"))] == [1, 2, 3, 3]
    assert not (runs / "x-2").exists()


def test_resume_from_another_directory_writes_next_to_the_checkpoint(tmp_path, monkeypatch, capsys):
    (tmp_path / "X").mkdir()
    (tmp_path / "Y").mkdir()
    text = tiny_text(tmp_path)
    monkeypatch.chdir(tmp_path / "X")
    args = ["--text", text, "--no-progress", *[f"--set={k}={v}" for k, v in {**RUN, "steps": 3}.items()]]
    assert main(["train", *args]) == 0
    capsys.readouterr()
    ckpt = str(tmp_path / "X" / "runs" / "lm-0" / "checkpoint.npz")
    monkeypatch.chdir(tmp_path / "Y")
    assert main(["train", "--resume", ckpt, "--steps", "5", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"run directory {tmp_path / 'X' / 'runs' / 'lm-0'}" in out
    assert not (tmp_path / "Y" / "runs").exists()
    assert load_checkpoint(ckpt).step == 5
    assert [r["step"] for r in records(str(tmp_path / "X" / "runs" / "lm-0"))] == [1, 2, 3, 4, 5, 5]


@pytest.mark.parametrize("flags,named", [
    (["--sparsity", "0.5"], "sparsity"), (["--attention", "local:window=4"], "attention"),
    (["--seed", "3"], "seed"), (["--set", "d_model=64"], "d_model"), (["--method", "rigl"], "method"),
    (["--name", "other"], "--name"), (["--out-dir", "elsewhere"], "--out-dir"),
])
def test_resume_refuses_flags_that_would_change_the_run(tmp_path, capsys, flags, named):
    assert _cli(tmp_path) == 0
    capsys.readouterr()
    ckpt = str(tmp_path / "runs" / "lm-0" / "checkpoint.npz")
    before = open(ckpt, "rb").read()
    assert main(["train", "--resume", ckpt, "--no-progress", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err
    assert open(ckpt, "rb").read() == before


def test_resume_applies_steps_and_the_same_values_pass(tmp_path, capsys):
    assert _cli(tmp_path) == 0
    capsys.readouterr()
    ckpt = str(tmp_path / "runs" / "lm-0" / "checkpoint.npz")
    assert main(["train", "--resume", ckpt, "--no-progress", "--steps", "4", "--seed", "0",
                 "--set", "d_model=32"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert load_checkpoint(ckpt).step == 4


def test_the_start_line_names_the_attention_and_the_method(tmp_path, capsys):
    assert _cli(tmp_path, "--attention", "local:window=4", "--sparsity", "0.5", "--method", "set") == 0
    out = capsys.readouterr().out.splitlines()[0]
    assert "set, sparsity 0.5, uniform" in out and "attention local:window=4" in out
    assert "lm-0" in out


def test_readme_sequence_keeps_every_model(tmp_path, monkeypatch, capsys):
    """README's Quickstart: train (the Sparsity Transformer), train the dense baseline, train
    sparse with RigL, then sample / eval / plot runs/lm-0 — each model in its own run directory
    with its own metrics."""
    monkeypatch.chdir(tmp_path)
    tiny = ["--text", tiny_text(tmp_path), "--no-progress",
            *[f"--set={k}={v}" for k, v in {**RUN, "steps": 3}.items()]]
    assert main(["train", *tiny]) == 0
    printed = capsys.readouterr().out.split("val loss ")[1].split(" nats")[0]
    assert f"{records('runs/lm-0')[-1]['final_val_loss']:.4f}" == printed  # the number printed
    assert main(["train", *tiny, "--dense"]) == 0
    assert main(["train", *tiny, "--method", "rigl"]) == 0
    capsys.readouterr()
    runs = sorted(os.listdir("runs"))
    assert runs == ["lm-0", "lm-1", "lm-2"]
    attn = []
    for name in runs:
        ckpt = load_checkpoint(os.path.join("runs", name, "checkpoint.npz"))
        attn.append((ckpt.extra["train_config"]["model"]["attention"],
                     ckpt.extra["train_config"]["sparse"]["method"] if
                     ckpt.extra["train_config"]["sparse"]["sparsity"] else "dense"))
        recs = records(os.path.join("runs", name))
        assert [r["step"] for r in recs] == [1, 2, 3, 3] and recs[-1]["eval"] == "final"
    assert attn == [("local:window=8", "gmp"), ("full", "dense"), ("local:window=8", "rigl")]
    assert main(["sample", "--checkpoint", "runs/lm-0/checkpoint.npz", "--prompt", "alpha", "--length", "5"]) == 0
    assert main(["eval", "--checkpoint", "runs/lm-0/checkpoint.npz"]) == 0
    pytest.importorskip("matplotlib")
    assert main(["plot", "runs/lm-0"]) == 0
    assert os.path.getsize("runs/lm-0/loss.png") > 0
