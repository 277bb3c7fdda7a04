"""Sweeps: many training runs from one file, on local processes or on Ray, with error bars.

    refsparse sweep SWEEP.toml [--backend local|ray] [--jobs N] [--address ADDR]
    refsparse sweep report DIR

A sweep file (`refsparse.sweep.spec`) gives a base training config, axes to cross
and explicit trials. Every trial is a normal ``refsparse train`` run in its own directory
under ``sweeps/<name>/<trial id>/``; the sweep appends each trial's final numbers to
``results.jsonl`` and prints a table grouped over seeds (mean ± std and n per cell,
`refsparse.sweep.report`). Re-running skips finished trials and resumes interrupted
ones (`refsparse.sweep.run`); each trial runs in a process of its own with a fixed
number of threads (`refsparse.sweep.worker`), so its result is the same bit for bit
on either backend and with any ``--jobs``.

Ray is imported only by ``--backend ray`` (the ``ray`` extra); matplotlib only by the
report's plots (the ``plot`` extra).
"""

from __future__ import annotations

__all__ = ["command"]


def command(args, *, train_parser=None, train_config=None, log=print):
    """``refsparse sweep``: run a sweep file, or ``report DIR``; returns the exit status.

    ``train_parser()`` (the CLI's parser) and ``train_config(args)`` (its config builder)
    check each trial's ``refsparse train`` arguments exactly as ``refsparse train`` would,
    before anything runs.
    """
    if args.target == "report":
        if not args.directory:
            raise ValueError("report: expected a sweep's directory: refsparse sweep report DIR")
        from .report import write_report

        write_report(args.directory, log=log)
        return 0
    if args.directory:
        raise ValueError(f"DIR: only with report (refsparse sweep report DIR), got {args.directory!r}")
    from .run import run_sweep
    from .spec import load_sweep

    check = None
    if train_parser is not None and train_config is not None:
        check = _cli_check(train_parser, train_config)
    sweep = load_sweep(args.target, out_dir=args.out_dir, check_train=check)
    if args.dry_run:
        from .run import read_results

        records = read_results(sweep.directory)
        log(f"sweep {sweep.name}: {len(sweep.trials)} trials, {sweep.threads} thread(s) each; "
            f"{sweep.directory}")
        for t in sweep.trials:
            log(f"  {records.get(t.id, {}).get('status', 'to run'):>7}  {t.id}")
        return 0
    return run_sweep(sweep, backend=args.backend, jobs=args.jobs, address=args.address, log=log)


def _cli_check(train_parser, train_config):
    """A trial check that runs the CLI's own parser, config builder and validation."""
    import contextlib
    import io

    parser = train_parser()

    def check(argv):
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                targs = parser.parse_args(argv)
        except SystemExit:
            lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
            raise ValueError(lines[-1] if lines else "refsparse train rejected its arguments") from None
        cfg = train_config(targs)
        if hasattr(cfg, "validate"):
            cfg.validate()
        return cfg

    return check
