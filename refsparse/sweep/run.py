"""Running a sweep: which trials are left, the two backends, the results file.

The sweep's directory (``OUT_DIR/NAME/``) holds

- ``<trial id>/``: each trial's run directory (``checkpoint.npz``, ``metrics.jsonl``), as
  ``refsparse train`` writes it;
- ``results.jsonl``: one line per finished or failed trial, appended as each ends; the last
  line of a trial counts;
- ``logs/<trial id>.log``: the trial's output; ``.attempts.jsonl``, ``.result.json``: what
  its process measured;
- ``sweep.toml``: a copy of the sweep file as last run.

Re-running a sweep skips every trial whose last record says ``done``; the others (failed,
interrupted, never started) run again, and an interrupted one resumes from its checkpoint
(see `refsparse.sweep.worker`). One sweep runs in a directory at a time (a lock).

Ray: each trial is a task (``num_cpus`` = the trial's threads) that runs the same trial
process as the local backend, in the sweep's directory, and returns its numbers to the
driver, which alone writes ``results.jsonl``. On a cluster of several machines, every node
needs this refsparse importable and the sweep's directory at the same absolute path on a
shared filesystem (checkpoints are written, and resumed, where the trial runs).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from .worker import Gate, run_trial, stop_process, trial_env

__all__ = ["RESULTS", "code_version", "read_results", "run_sweep"]

RESULTS = "results.jsonl"


def read_results(directory):
    """``{trial id: its last record}`` from ``directory/results.jsonl`` (a cut last line is skipped)."""
    records = {}
    path = os.path.join(directory, RESULTS)
    if not os.path.exists(path):
        return records
    with open(path) as f:
        for line in f:
            try:
                r = json.loads(line)
            except ValueError:
                continue  # a line a kill cut short
            if isinstance(r, dict) and "trial" in r:
                records[r["trial"]] = r
    return records


def _append(directory, record):
    with open(os.path.join(directory, RESULTS), "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def code_version():
    """refsparse's version, and the git commit of its checkout (with ``+dirty`` if changed)."""
    import subprocess

    from .. import __version__

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.exists(os.path.join(root, ".git")):  # an installed copy: no commit to name
        return {"refsparse": __version__, "commit": None}
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    return {"refsparse": __version__, "commit": (commit + "+dirty" if dirty else commit) or None}


def _lock(directory):
    import fcntl

    f = open(os.path.join(directory, ".lock"), "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise ValueError(f"{directory}: another `refsparse sweep` is running in this directory") from None
    return f


class _SigtermAsInterrupt:
    """SIGTERM stops a sweep as Ctrl-C does (children stopped, exit 130)."""

    def __enter__(self):
        def handler(signum, frame):
            raise KeyboardInterrupt

        try:
            self.old = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread
            self.old = None
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)


def _run_local(todo, spec_of, cwd, env, jobs, on_done, grace):
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    gate = Gate()
    pool = ThreadPoolExecutor(max_workers=jobs)
    futures = {pool.submit(run_trial, spec_of(t), cwd, env, gate=gate, grace=grace): t for t in todo}
    pending = set(futures)
    try:
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for f in done:
                on_done(futures[f], f.result())
    except KeyboardInterrupt:
        with gate.lock:
            gate.stopped = True
            procs = list(gate.procs)
        print(f"\nstopping: Ctrl-C to {len(procs)} running trial(s) (they save a checkpoint)",
              file=sys.stderr, flush=True)
        try:
            for p in procs:
                try:
                    os.killpg(p.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            for p in procs:
                while p.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.1)
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: kill now
        for p in procs:
            stop_process(p, grace=0.0)
        for f in pending:  # a trial that ended well while stopping is kept
            if f.done() and f.exception() is None and f.result()["rc"] == 0:
                on_done(futures[f], f.result())
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_ray(todo, spec_of, cwd, env, jobs, address, threads, on_done, grace):
    try:
        import ray
    except ImportError:
        raise ImportError("--backend ray needs Ray: pip install 'refsparse[ray]'") from None

    started = address is None
    if started:
        ray.init(num_cpus=jobs * threads, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    try:
        task = ray.remote(num_cpus=threads, max_retries=0)(run_trial)
        limit = jobs if (started or jobs) else len(todo)
        queue, running = list(todo), {}
        try:
            while queue or running:
                while queue and len(running) < limit:
                    t = queue.pop(0)
                    running[task.remote(spec_of(t), cwd, env, grace=grace)] = t
                ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
                for ref in ready:
                    t = running.pop(ref)
                    try:
                        out = ray.get(ref)
                    except Exception as e:  # the task itself failed (a node lost, …)
                        out = {"rc": 1, "result": None, "error": " ".join(str(e).split())[-500:],
                               "host": None}
                    on_done(t, out)
        except KeyboardInterrupt:
            print(f"\nstopping: cancelling {len(running)} running trial(s) (they save a checkpoint)",
                  file=sys.stderr, flush=True)
            for ref in running:
                ray.cancel(ref)  # a KeyboardInterrupt in the task: run_trial stops its process
            try:
                ready, _ = ray.wait(list(running), num_returns=len(running), timeout=grace + 15)
                for ref in ready:  # a trial that ended well while stopping is kept
                    try:
                        out = ray.get(ref)
                    except Exception:  # cancelled
                        continue
                    if out["rc"] == 0:
                        on_done(running[ref], out)
            except KeyboardInterrupt:
                for ref in running:
                    ray.cancel(ref, force=True)
            raise
    finally:
        if started:
            ray.shutdown()


def run_sweep(sweep, *, backend="local", jobs=None, address=None, grace=30.0, log=print):
    """Run the trials of ``sweep`` that have no ``done`` record; return the exit status.

    0: every trial done; 1: some failed (each recorded with its error); 130: stopped by
    Ctrl-C or SIGTERM (running trials are sent Ctrl-C, which saves their checkpoints, and
    killed after ``grace`` seconds). ``jobs``: trials at once (default: the cores divided
    by the threads per trial); with Ray on a running cluster, default: as many as it takes.
    """
    if backend not in ("local", "ray"):
        raise ValueError(f"--backend: expected 'local' or 'ray', got {backend!r}")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise ValueError(f"--jobs: expected an integer >= 1, got {jobs!r}")
    if address is not None and backend != "ray":
        raise ValueError("--address: only with --backend ray")
    if jobs is None and (backend == "local" or address is None):
        jobs = max(1, (os.cpu_count() or 1) // sweep.threads)
    directory = sweep.directory
    os.makedirs(directory, exist_ok=True)
    lock = _lock(directory)
    try:
        with open(os.path.join(directory, "sweep.toml"), "w") as f:
            f.write(sweep.source)
        records = read_results(directory)
        done = [t for t in sweep.trials if records.get(t.id, {}).get("status") == "done"]
        todo = [t for t in sweep.trials if records.get(t.id, {}).get("status") != "done"]
        log(f"sweep {sweep.name}: {len(sweep.trials)} trials, {len(done)} done, {len(todo)} to run "
            f"({backend}, {jobs or 'all'} at once, {sweep.threads} thread(s) each); {directory}")
        env = trial_env(sweep.threads)
        version = code_version()
        counts = {"done": 0, "failed": 0}

        def spec_of(t):
            return {"id": t.id, "argv": t.argv}

        def on_done(t, out):
            if out["rc"] is None or out["rc"] == 130:
                return  # stopped: no record, the next run resumes it
            base = {"trial": t.id, "label": t.label, "settings": t.settings,
                    "threads": sweep.threads, "backend": backend, "host": out.get("host"), **version,
                    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            if out["rc"] == 0:
                record = {**base, "status": "done", **out["result"]}
                counts["done"] += 1
                log(f"[{len(done) + counts['done'] + counts['failed']}/{len(sweep.trials)}] done    "
                    f"{t.id}: val loss {record['val_loss']:.4f}, {record['wall_s']:.0f} s")
            else:
                record = {**base, "status": "failed", "error": out["error"],
                          "log": os.path.join("logs", t.id + ".log")}
                counts["failed"] += 1
                log(f"[{len(done) + counts['done'] + counts['failed']}/{len(sweep.trials)}] FAILED  "
                    f"{t.id}: {out['error']}")
            _append(directory, record)

        try:
            with _SigtermAsInterrupt():
                if todo and backend == "local":
                    _run_local(todo, spec_of, directory, env, jobs, on_done, grace)
                elif todo:
                    _run_ray(todo, spec_of, directory, env, jobs, address, sweep.threads, on_done,
                             grace)
        except KeyboardInterrupt:
            log(f"stopped: {counts['done']} trial(s) finished in this run; run the same command "
                "again to finish the sweep (interrupted trials resume from their checkpoints)")
            return 130
        from .report import summarize, table_markdown

        records = read_results(directory)
        ours = [records[t.id] for t in sweep.trials if t.id in records]
        log("")
        log(table_markdown(summarize(ours)))
        failed = [t.id for t in sweep.trials if records.get(t.id, {}).get("status") != "done"]
        if failed:
            log(f"\n{len(failed)} of {len(sweep.trials)} trials failed (errors in "
                f"{os.path.join(directory, RESULTS)}); run the same command again to retry them")
            return 1
        log(f"\nresults: {os.path.join(directory, RESULTS)}")
        return 0
    finally:
        lock.close()
