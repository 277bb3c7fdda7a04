"""One trial in a process of its own: train (or resume), evaluate, measure the checkpoint.

Both backends run the same command, in the sweep's directory, with the same thread
variables (`trial_env`)::

    python -m refsparse.sweep.worker '{"id": ..., "argv": [...], "parent": PID}'

The process

1. looks in ``<trial id>/`` for the trial's checkpoint. With one that has not reached its
   last step it resumes: ``refsparse train --resume <checkpoint>``; with one at its last
   step it only evaluates; with none (or an unreadable one, or an ``imp`` run, which cannot
   resume part-way) it deletes whatever a killed attempt left and trains from the start:
   ``refsparse train <argv>``;
2. runs ``refsparse eval --checkpoint <checkpoint>`` for the final validation loss over the
   whole validation split (the JSON it prints, read to the last bit);
3. counts the checkpoint's stored entries, sparsity and bytes
   (`refsparse.checkpoint.load_checkpoint`), and writes everything to
   ``logs/<trial id>.result.json``.

Both commands go through `refsparse.cli.main`, the command line itself. Exit status:
0 done, 130 interrupted (Ctrl-C saved a checkpoint, or came before training), anything else
failed (the last line of ``logs/<trial id>.log`` says why). If the process that started it
dies, the trial stops itself as on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

__all__ = ["trial_env", "run_trial", "stop_process", "Gate", "checkpoint_stats", "worker_main", "THREAD_VARS"]

# OpenBLAS/MKL on one thread: refsparse splits big products over its own Numba threads
# (refsparse.kernels.parallel), so NUMBA_NUM_THREADS alone sets a trial's threads.
THREAD_VARS = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def trial_env(threads):
    """The environment variables every trial runs with, whatever the backend and ``--jobs``.

    A Numba reduction split over T threads sums in another order than over T' threads, so
    a trial is bit-for-bit reproducible only at one thread count: it is a sweep setting
    (``[sweep] threads``), never derived from ``--jobs`` or the machine.
    """
    env = {"NUMBA_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "passive"}
    kernels = os.environ.get("REFSPARSE_KERNELS")
    if kernels:
        env["REFSPARSE_KERNELS"] = kernels  # the kernel path the sweep was started on
    return env


def _tail(path, n=4000):
    """The last non-empty line of a log file ('' if none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines()]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln]
    return lines[-1] if lines else ""


def stop_process(proc, grace=30.0):
    """Ctrl-C to ``proc``'s process group (it saves a checkpoint), SIGKILL after ``grace`` s."""
    if proc.poll() is not None:
        return proc.returncode
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            return proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.poll()


class Gate:
    """What the local backend shares with its threads: a lock, a stop flag, the live processes."""

    def __init__(self):
        self.lock = threading.Lock()
        self.stopped = False
        self.procs = set()


def run_trial(spec, cwd, env, *, gate=None, grace=30.0):
    """Run one trial's process to its end; return ``{"rc", "result", "error", "host"}``.

    ``spec`` is ``{"id", "argv"}``; ``cwd`` the sweep's directory; ``env`` the variables set
    over this process's environment (`trial_env`). The process's output goes to
    ``cwd/logs/<id>.log``. A KeyboardInterrupt while waiting (Ctrl-C, or Ray cancelling
    the task) stops the process as `stop_process` does and returns rc 130.
    With a `Gate` that is stopped, nothing starts (``rc`` None).
    """
    import platform

    logs = os.path.join(cwd, "logs")
    os.makedirs(logs, exist_ok=True)
    log_path = os.path.join(logs, spec["id"] + ".log")
    result_path = os.path.join(logs, spec["id"] + ".result.json")
    cmd = [sys.executable, "-m", "refsparse.sweep.worker",
           json.dumps({**spec, "parent": os.getpid()})]
    out = {"rc": None, "result": None, "error": None, "host": platform.node()}
    with open(log_path, "ab") as log:
        log.write(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd[:3])} {spec['id']}\n".encode())
        log.flush()
        with contextlib.ExitStack() as stack:
            if gate is not None:
                stack.enter_context(gate.lock)
                if gate.stopped:
                    return out
            if os.path.exists(result_path):
                os.unlink(result_path)
            proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **env}, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            if gate is not None:
                gate.procs.add(proc)
        try:
            rc = proc.wait()
        except KeyboardInterrupt:
            stop_process(proc, grace)
            rc = 130
        finally:
            if gate is not None:
                with gate.lock:
                    gate.procs.discard(proc)
    out["rc"] = rc
    if rc == 0:
        try:
            with open(result_path) as f:
                out["result"] = json.load(f)
        except (OSError, ValueError) as e:
            out["rc"], out["error"] = 1, f"the trial wrote no result ({e})"
    elif rc is not None and rc < 0:
        out["error"] = f"killed by signal {-rc}" + (f"; its last output: {_tail(log_path)}" if _tail(log_path) else "")
    elif rc != 130:
        out["error"] = _tail(log_path) or f"exit status {rc}"
    return out


# ---------------------------------------------------------------------------------------
# Inside the trial's process
# ---------------------------------------------------------------------------------------


def checkpoint_stats(path):
    """Stored entries, sparsity and size of a checkpoint, counted from its arrays.

    ``stored``: entries of every parameter (a dense one counts all its cells);
    ``stored_sparse`` of ``cells_sparse``: those of the CSR weights; ``sparsity``:
    ``1 − stored_sparse / cells_sparse`` (0 for a model without CSR weights).
    """
    import numpy as np

    from ..checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    stored = cells = stored_sparse = cells_sparse = 0
    for value in ckpt.model_state.values():
        n_cells = int(np.prod(value.shape))
        n_stored = int(value.nnz) if hasattr(value, "nnz") else n_cells
        stored, cells = stored + n_stored, cells + n_cells
        if hasattr(value, "nnz"):
            stored_sparse, cells_sparse = stored_sparse + n_stored, cells_sparse + n_cells
    return {"stored": stored, "cells": cells, "stored_sparse": stored_sparse,
            "cells_sparse": cells_sparse,
            "sparsity": 1.0 - stored_sparse / cells_sparse if cells_sparse else 0.0,
            "checkpoint_bytes": os.path.getsize(path), "step": ckpt.step,
            "config": (ckpt.meta.get("extra") or {}).get("train_config")}


class _Tee(io.TextIOBase):
    """Writes to a stream and keeps a copy (to read the CLI's output after it printed)."""

    def __init__(self, stream):
        self.stream, self.copy = stream, io.StringIO()

    def write(self, s):
        self.copy.write(s)
        return self.stream.write(s)

    def flush(self):
        self.stream.flush()


def _watch_parent(parent):
    """Stop as on Ctrl-C when the process that started this one is gone."""
    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(60.0)
        os._exit(130)

    threading.Thread(target=watch, daemon=True).start()


def _find_checkpoint(trial_dir):
    path = os.path.join(trial_dir, "checkpoint.npz")
    if os.path.exists(path):
        return path
    try:
        found = [os.path.join(trial_dir, n) for n in os.listdir(trial_dir)
                 if n.endswith(".npz") and not n.startswith(".")]
    except OSError:
        return None
    return max(found, key=os.path.getmtime) if found else None


def _plan(trial_dir):
    """('fresh' | 'resume' | 'evaluate', checkpoint or None, its step)."""
    from ..checkpoint import CheckpointError, load_checkpoint
    from ..config import TrainConfig

    path = _find_checkpoint(trial_dir)
    if path is None:
        return "fresh", None, 0
    try:
        ckpt = load_checkpoint(path)
    except (CheckpointError, OSError):
        return "fresh", None, 0  # a checkpoint a kill cut short: start again
    cfg = (ckpt.meta.get("extra") or {}).get("train_config") or {}
    if not cfg or ckpt.meta.get("optimizer") is None:
        return "fresh", None, 0
    try:  # grouped (or, from older checkpoints, flat) -> flat keys
        cfg = TrainConfig.from_dict(cfg).flat()
    except (TypeError, ValueError):
        return "fresh", None, 0
    if cfg.get("method") == "imp" and cfg.get("sparsity"):
        return "fresh", None, 0  # iterative pruning cannot resume part-way
    if ckpt.step >= cfg.get("steps", float("inf")):
        return "evaluate", path, ckpt.step
    return "resume", path, ckpt.step


def _run_trial_here(spec):
    from .. import cli

    trial_id = spec["id"]
    attempts_path = os.path.join("logs", trial_id + ".attempts.jsonl")
    plan, ckpt, start = _plan(trial_id)
    print(f"trial {trial_id}: {plan}" + (f" from step {start} ({ckpt})" if ckpt else ""), flush=True)
    if plan != "evaluate":
        if plan == "fresh":
            shutil.rmtree(trial_id, ignore_errors=True)  # what a killed attempt left
            if os.path.exists(attempts_path):  # the wall time counts from this fresh start
                os.unlink(attempts_path)
            argv = spec["argv"]
        else:
            argv = ["train", "--resume", ckpt, "--no-progress"]
        tee = _Tee(sys.stdout)
        t0 = time.perf_counter()
        try:
            with contextlib.redirect_stdout(tee):
                rc = cli.main(argv)
        except KeyboardInterrupt:
            rc = 130
        wall = time.perf_counter() - t0
        with open(attempts_path, "a") as f:
            f.write(json.dumps({"plan": plan, "start_step": start, "rc": rc, "wall_s": wall}) + "\n")
        if rc != 0:
            return rc
        found = re.findall(r"^checkpoint: (.+)$", tee.copy.getvalue(), re.MULTILINE)
        ckpt = found[-1].strip() if found else os.path.join(trial_id, "checkpoint.npz")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli.main(["eval", "--checkpoint", ckpt])
    if rc != 0:
        return rc
    final = json.loads(buf.getvalue())
    stats = checkpoint_stats(ckpt)
    attempts = []
    if os.path.exists(attempts_path):
        with open(attempts_path) as f:
            attempts = [json.loads(line) for line in f if line.strip()]
    tokens_per_s = None
    metrics_path = os.path.join(os.path.dirname(ckpt), "metrics.jsonl")
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            for line in f:
                try:
                    tokens_per_s = json.loads(line).get("tokens_per_s", tokens_per_s)
                except ValueError:
                    pass
    result = {**final, **stats, "checkpoint": ckpt, "wall_s": sum(a["wall_s"] for a in attempts),
              "attempts": len(attempts), "tokens_per_s": tokens_per_s,
              "resumed_from_step": max([a["start_step"] for a in attempts if a["plan"] == "resume"],
                                       default=None),
              "thread_env": {k: os.environ.get(k) for k in THREAD_VARS}}
    path = os.path.join("logs", trial_id + ".result.json")
    with open(path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(path + ".tmp", path)
    print(f"trial {trial_id}: val loss {final['val_loss']!r}", flush=True)
    return 0


def worker_main(argv=None):
    """The trial process's entry point (``python -m refsparse.sweep.worker SPEC``)."""
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(argv[0])
    if spec.get("parent"):
        _watch_parent(spec["parent"])
    try:
        return _run_trial_here(spec)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(worker_main())
