"""The ``refsparse`` command line.

    refsparse train                       train the decoder-only LM on the built-in corpus
    refsparse train --task reverse        train the encoder-decoder on a synthetic task
    refsparse train --resume CHECKPOINT   continue an interrupted run exactly where it stopped
    refsparse sample --checkpoint PATH    generate text from a trained LM
    refsparse eval --checkpoint PATH      validation loss (and accuracy) of a checkpoint
    refsparse plot RUN_DIR                loss curves to a PNG
    refsparse patterns show SPEC --T 64   draw a sparse attention pattern
    refsparse train --sparsity 0.9 --method rigl   train with 90%-sparse weights
    refsparse prune CHECKPOINT --sparsity 0.9 -o OUT   one-shot pruning of a trained model
    refsparse info CHECKPOINT             per-layer shapes, stored entries, sparsity, size

Every subcommand has ``--help``. Errors are reported in one line, with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from . import __version__

# Defaults that differ from TrainConfig's for the synthetic seq2seq tasks: a smaller, dense
# encoder-decoder that reaches ~100% exact match on length <= 12 in about two minutes.
TASK_DEFAULTS = {
    "d_model": 64, "n_heads": 4, "n_layers": 2, "d_ff": 256, "steps": 1000, "batch_size": 64,
    "lr": 3e-3, "min_lr": 1e-4, "warmup_steps": 100, "weight_decay": 0.01, "eval_every": 500,
    "eval_batches": 4, "activation": "relu", "sparsity": 0.0, "method": "static", "attention": "full",
}


def _parse_value(text, kind):
    """Turn ``--set key=value`` text into the config field's type."""
    if kind in ("bool", bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if kind in ("int", int):
        return int(text)
    if kind in ("float", float):
        return float(text)
    if text.lower() in ("none", "null"):
        return None
    return text


def _load_toml(path):
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    with open(path, "rb") as f:
        data = tomllib.load(f)
    return data.get("train", data)


def _set_items(args):
    """The ``--set key=value`` items as {flat key: value}, typed like the config field."""
    from .config import flat_keys, group_of

    types = flat_keys()
    out = {}
    for item in args.set or []:
        if "=" not in item:
            raise ValueError(f"--set: expected key=value, got {item!r}")
        key, text = item.split("=", 1)
        try:
            _, key = group_of(key.strip())  # "lr" or "optim.lr"
        except ValueError as e:
            raise ValueError(f"--set: {e}") from None
        try:
            out[key] = _parse_value(text.strip(), types[key].split(" |")[0])
        except ValueError as e:
            raise ValueError(f"--set {key}: {e}") from None
    return out


# the train options that are config keys (same names)
_TRAIN_FLAGS = ("task", "text", "dtype", "seed", "steps", "name", "out_dir", "attention", "sparsity",
                "method", "distribution")


def _build_train_config(args):
    from .config import flat_keys
    from .train import TrainConfig

    types = flat_keys()
    values = {}
    task = args.task or "lm"
    explicit = set()  # keys the user set: from --config or --set
    if args.config:
        from .config import GROUPS

        for key, v in _load_toml(args.config).items():  # flat keys, or [train.model] tables
            if key in GROUPS and isinstance(v, dict):
                values.update(v)
            else:
                values[key] = v
        explicit.update(values)
        task = args.task or values.get("task", "lm")
    if task != "lm":
        values = {**TASK_DEFAULTS, **values}
    sets = _set_items(args)
    if args.dense:
        _apply_dense(args, values, explicit | set(sets), task)
    values["task"] = task
    for key in _TRAIN_FLAGS[1:]:
        v = getattr(args, key, None)
        if v is not None:
            values[key] = v
    values.update(sets)
    explicit.update(sets)
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ValueError(f"config: unknown keys {unknown}; known keys: {', '.join(sorted(types))}")
    if "warmup_steps" not in explicit:
        # the default warm-up (50, or 100 for the tasks) never exceeds a short run's steps;
        # a warm-up the user set that exceeds them stays an error (TrainConfig.validate)
        steps = values.get("steps", TrainConfig().optim.steps)
        if isinstance(steps, int) and not isinstance(steps, bool):
            warmup = values.get("warmup_steps", TrainConfig().optim.warmup_steps)
            values["warmup_steps"] = max(0, min(warmup, steps))
    return TrainConfig.from_dict(values)


def _apply_dense(args, values, explicit, task):
    """--dense: the dense baseline (config.DENSE_BASELINE) under the settings the user gave;
    sparsity and method cannot be given with it."""
    from .config import DENSE_BASELINE

    given = {k: "--" + k for k in _TRAIN_FLAGS if getattr(args, k, None) is not None}
    given.update({k: "--set or --config" for k in explicit})
    for key in ("sparsity", "method"):
        if key in given:
            raise ValueError(f"--dense: trains dense weights, so {key} cannot be given with it "
                             f"(got {key} from {given[key]}); drop --dense to train sparse weights")
    base = DENSE_BASELINE if task == "lm" else {k: DENSE_BASELINE[k] for k in ("sparsity", "method",
                                                                                 "attention")}
    values.update({k: v for k, v in base.items() if k not in explicit})


def _resume_overrides(args):
    """The settings given with --resume, as {flat key: value}; Trainer.resume applies those
    that may change (steps, …) and refuses the others when they differ from the run's."""
    if args.dense:
        raise ValueError("--dense: cannot be used with --resume (the run keeps its own settings)")
    if args.config or args.overwrite:
        raise ValueError(f"--resume: {'--config' if args.config else '--overwrite'} cannot be used "
                         "with --resume (the run keeps its own settings and directory)")
    for flag, key in (("--name", "name"), ("--out-dir", "out_dir")):
        if getattr(args, key) is not None:
            raise ValueError(f"{flag}: a resumed run writes next to its checkpoint "
                             f"({os.path.dirname(os.path.abspath(args.resume))}); {flag} cannot be "
                             "given with --resume")
    overrides = {k: getattr(args, k) for k in _TRAIN_FLAGS if getattr(args, k, None) is not None}
    overrides.update(_set_items(args))
    return overrides


def _describe(trainer):
    cfg = trainer.cfg
    what = "decoder-only LM" if cfg.data.task == "lm" else f"encoder-decoder on the {cfg.data.task!r} task"
    article = "an" if what[0] in "aeiou" else "a"
    s = cfg.sparse
    weights = "dense weights" if s.sparsity == 0 else \
        f"{s.method}, sparsity {s.sparsity:g}, {s.distribution}"
    return (f"{article} {what} ({weights}; attention {cfg.model.attention}): "
            f"{trainer.model.num_parameters():,} parameters, {cfg.model.dtype}, {cfg.optim.steps} "
            f"steps of batch {cfg.optim.batch_size}")


def _mb(n):
    return f"{n / 1e6:.2f} MB"


def savings_lines(s):
    """The summary lines of what sparsity bought (`refsparse.savings.measure`'s dict)."""
    w, p, a, ck = s["weights"], s["parameters"], s["attention"], s["checkpoint_bytes"]
    csr = " (stored as CSR)" if w["all"]["stored"] < w["all"]["cells"] else ""
    lines = [(f"sparsity: attention weights {w['attention']['sparsity']:.3f}, feed-forward "
              f"{w['feedforward']['sparsity']:.3f}, both {w['all']['sparsity']:.3f}{csr}"),
             (f"stored: {w['all']['stored']:,} of {w['all']['cells']:,} weights "
              f"({w['all']['stored'] / w['all']['cells']:.3f}); all parameters {p['stored']:,} of "
              f"{p['dense']:,} ({p['stored'] / p['dense']:.3f})"),
             (f"attention: {a['per_row']:.1f} entries per query row, T = {a['t']} "
              f"(dense causal attention: {a['full_per_row']:.1f})"),
             (f"checkpoint: {_mb(ck['model'])} against {_mb(ck['dense'])} for the same model dense "
              f"({ck['model'] / ck['dense']:.2f}×)")]
    if "step_ms" in s:
        t = s["step_ms"]
        r = t["dense"] / t["model"]
        pace = f"{r:.2f}× faster" if r >= 1 else f"{1 / r:.2f}× slower"
        lines.append(f"step time: {t['model']:.1f} ms against {t['dense']:.1f} ms for the same "
                     f"model dense ({pace}; medians of {t['steps']} steps each, timed in turns "
                     f"in this run)")
    return lines


def _cmd_train(args):
    from .train import Trainer

    if args.kernels is not None:
        from .kernels import use

        use(args.kernels)
    if args.resume:
        trainer = Trainer.resume(args.resume, progress=not args.no_progress,
                                 overrides=_resume_overrides(args))
        print(f"resuming {args.resume} at step {trainer.step}: {_describe(trainer)}; "
              f"run directory {trainer.run_dir}")
    else:
        cfg = _build_train_config(args)
        trainer = Trainer(cfg, progress=not args.no_progress)
        trainer.claim_run_dir(overwrite=args.overwrite)
        print(f"training {_describe(trainer)}; run directory {trainer.run_dir}")
    cfg = trainer.cfg
    summary = trainer.run()
    for r in summary.get("rounds", []):
        print(f"{cfg.sparse.method} round {r['round']}: sparsity {r['sparsity']:.4f}, "
              f"val loss {r['val_loss']:.4f}")
    if summary["interrupted"]:
        if summary["checkpoint"]:
            print(f"to continue: refsparse train --resume {summary['checkpoint']}")
        return 130
    print(f"step {summary['step']}: train loss {summary['train_loss']:.4f}, "
          f"val loss {summary['val_loss']:.4f} nats (the whole validation set), "
          f"{summary['elapsed']:.0f} s")
    if cfg.data.task == "lm":
        h = summary["unigram_entropy"]
        print(f"val loss / unigram entropy = {summary['val_loss']:.4f} / {h:.4f} = "
              f"{summary['val_loss'] / h:.3f};  {summary['bits_per_char']:.3f} bits per character")
        for line in savings_lines(summary["savings"]):
            print(line)
        from .decode import generate

        # "The " on the built-in corpus; on another text, its first characters
        prompt = "The " if all(ch in trainer.tokenizer.chars for ch in "The ") else \
            trainer.tokenizer.decode(trainer.val_ids[:4])
        ids = generate(trainer.model, trainer.tokenizer.encode(prompt), cfg.run.sample_chars,
                       temperature=0.8, top_k=20)
        print("sample:\n" + trainer.tokenizer.decode(ids))
    else:
        print(f"exact match on held-out sequences: {100 * summary['exact_match']:.2f}%")
    print(f"checkpoint: {summary['checkpoint']}")
    print(f"metrics:    {trainer.metrics_path}")
    return 0


def _load_for_use(path):
    from .checkpoint import load_checkpoint, restore_model
    from .data import CharTokenizer
    from .models import DecoderLM, DecoderLMConfig, Transformer, TransformerConfig

    ckpt = load_checkpoint(path)
    if ckpt.kind == "DecoderLM":
        model = DecoderLM(DecoderLMConfig.from_dict(ckpt.config))
    elif ckpt.kind == "Transformer":
        model = Transformer(TransformerConfig.from_dict(ckpt.config))
    else:
        raise ValueError(f"checkpoint: unknown model kind {ckpt.kind!r}")
    restore_model(model, ckpt)
    tok = CharTokenizer.from_json(ckpt.meta["tokenizer"]) if ckpt.meta.get("tokenizer") else None
    return ckpt, model.eval(), tok


def _cmd_sample(args):
    import numpy as np

    from .decode import generate

    if args.length < 0:
        raise ValueError(f"--length: expected an integer >= 0, got {args.length}")
    ckpt, model, tok = _load_for_use(args.checkpoint)
    if tok is None:
        raise ValueError(f"--checkpoint: {args.checkpoint} holds a {ckpt.kind}, not a language model")
    ids = generate(model, tok.encode(args.prompt), args.length, temperature=args.temperature,
                   top_k=args.top_k, rng=np.random.default_rng(args.seed))
    print(tok.decode(ids))
    return 0


def _cmd_eval(args):
    from .checkpoint import load_checkpoint
    from .train import Trainer, TrainConfig

    ckpt = load_checkpoint(args.checkpoint)
    cfg = ckpt.meta["extra"].get("train_config")
    if not cfg:
        raise ValueError(f"--checkpoint: {args.checkpoint} holds no training config to evaluate with")
    trainer = Trainer(TrainConfig.from_dict(cfg), progress=False)
    from .checkpoint import restore_model

    restore_model(trainer.model, ckpt)
    result = trainer.final_evaluation()
    result["step"] = ckpt.step
    if trainer.cfg.data.task == "lm":
        result["bits_per_char"] = result["val_loss"] / math.log(2)
        result["unigram_entropy"] = trainer.unigram_entropy
    print(json.dumps(result, indent=2))
    return 0


def _cmd_prune(args):
    import numpy as np

    from .checkpoint import save_checkpoint
    from .prune import overall_sparsity, sparsify

    ckpt, model, tok = _load_for_use(args.checkpoint)
    kw = {}
    sparsity = args.sparsity
    if args.criterion == "nm":
        try:
            n, m = (int(v) for v in args.nm.split(":"))
        except ValueError:
            raise ValueError(f"--nm: expected N:M with integers 1 <= N <= M, got {args.nm!r}") from None
        if not 1 <= n <= m:
            raise ValueError(f"--nm: expected N:M with 1 <= N <= M (N = 0 keeps no weight, like "
                             f"--sparsity 1.0), got {args.nm!r}")
        kw.update(n=n, m=m)
        if sparsity is not None:
            print(f"note: --sparsity {sparsity:g} is ignored with --criterion nm, which keeps "
                  f"{n} of every {m} weights", file=sys.stderr)
        sparsity = 1.0 - n / m if 0 < n <= m else 0.0  # the N:M density, for the record
    if args.criterion == "block":
        kw["block"] = tuple(int(v) for v in args.block.lower().split("x"))
    sparsify(model, sparsity, distribution=args.distribution, criterion=args.criterion,
             rng=np.random.default_rng(args.seed), **kw)
    if os.path.abspath(args.output) == os.path.abspath(args.checkpoint):
        raise ValueError("-o: expected a path other than CHECKPOINT (it would be overwritten)")
    extra = dict(ckpt.meta.get("extra") or {})
    extra["pruned"] = {"from": args.checkpoint, "sparsity": sparsity,
                       "criterion": args.criterion, "distribution": args.distribution}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    save_checkpoint(args.output, model, step=ckpt.step, tokenizer=tok, extra=extra,
                    rng_states=ckpt.meta.get("rng"))
    print(f"pruned {args.checkpoint} with {args.criterion} to sparsity "
          f"{overall_sparsity(model):.4f} over the prunable layers; wrote {args.output}")
    return 0


def _cmd_info(args):
    import numpy as np

    from .checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    rows, total_stored, total_cells = [], 0, 0
    for name, value in ckpt.model_state.items():
        cells = int(np.prod(value.shape))
        stored = int(value.nnz) if hasattr(value, "nnz") else cells
        rows.append((name, "x".join(map(str, value.shape)), "csr" if hasattr(value, "nnz") else "dense",
                     stored, 1.0 - stored / cells if cells else 0.0))
        total_stored += stored
        total_cells += cells
    width = max(len(r[0]) for r in rows)
    print(f"{args.checkpoint}: a {ckpt.kind} at step {ckpt.step}, "
          f"{os.path.getsize(args.checkpoint):,} bytes")
    print(f"{'parameter':<{width}}  {'shape':>10}  {'kind':>5}  {'stored':>9}  {'sparsity':>8}")
    for name, shape, kind, stored, sparsity in rows:
        print(f"{name:<{width}}  {shape:>10}  {kind:>5}  {stored:>9,}  {sparsity:>8.4f}")
    print(f"{'total':<{width}}  {'':>10}  {'':>5}  {total_stored:>9,}  "
          f"{1.0 - total_stored / total_cells:>8.4f}")
    sparse = [r for r in rows if r[2] == "csr"]
    if sparse:
        s_stored = sum(r[3] for r in sparse)
        s_cells = sum(int(np.prod([int(v) for v in r[1].split("x")])) for r in sparse)
        print(f"sparse layers: {len(sparse)}, {s_stored:,} of {s_cells:,} weights stored "
              f"(sparsity {1.0 - s_stored / s_cells:.4f})")
    return 0


def _cmd_plot(args):
    from .plotting import plot_run

    out = plot_run(args.run_dir, args.output)
    print(f"wrote {out}")
    return 0


def _available_memory():
    """Bytes of physical memory free now (None where the OS does not say)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not Linux
        return None


def _pattern_bytes(spec, T, action):
    """About how many bytes building (and drawing or printing) the pattern ``spec`` at ``T`` takes.

    The entries are counted exactly at T₁ = 512 and T₂ = 1024 and extrapolated as
    nnz(T) ≈ a·T + b·T² (every pattern here grows linearly or quadratically); a CSR boolean
    pattern costs 5 bytes an entry (int32 column, bool value) and is built with about as much
    again in temporaries. ``show`` adds a T × T float64 image, ``text`` T² characters.
    """
    from . import patterns as P

    def count(t):
        p = P.parse(spec, t)
        return sum(h.nnz for h in p) if isinstance(p, list) else p.nnz

    t1 = 512
    n1, n2 = count(t1), count(2 * t1)
    b = max(0.0, (n2 - 2 * n1) / (2 * t1 * t1))
    a = max(0.0, (n1 - b * t1 * t1) / t1)
    nnz = a * T + b * T * T
    need = 2 * (5 * nnz + 8 * (T + 1))
    if action == "show":
        need += 9 * T * T  # toarray (bool) and the float image
    elif action == "text":
        need += 2 * T * T
    return need


def _cmd_patterns(args):
    from . import patterns as P

    if args.T > 1024:
        P.parse_spec(args.spec)  # a bad spec is named before anything is counted
        need, free = _pattern_bytes(args.spec, args.T, args.action), _available_memory()
        if free is not None and need > free:
            raise MemoryError(f"--T: {args.action} of {args.spec!r} at T={args.T} needs about "
                              f"{need / 2**30:.1f} GiB of memory, {free / 2**30:.1f} GiB is free; "
                              "use a smaller --T")
    pattern = P.parse(args.spec, args.T)
    if args.action == "stats":
        print(json.dumps(P.stats(pattern), indent=2))
        return 0
    if args.action == "text":
        panels = pattern if P.is_per_head(pattern) else [pattern]
        for h, p in enumerate(panels):
            if len(panels) > 1:
                print(f"head {h}:")
            print(P.to_text(p))
        return 0
    from .plotting import draw_pattern

    out = args.output or (args.spec.replace(":", "_").replace(",", "_").replace("=", "") + ".png")
    draw_pattern(pattern, out, title=f"{args.spec}  (T={args.T})")
    print(f"wrote {out}")
    return 0


def _cmd_sweep(args):
    from . import sweep

    # each trial's arguments are checked by train's own parser and config builder
    return sweep.command(args, train_parser=build_parser, train_config=_build_train_config)


def _check_prune_args(args, error):
    """After parsing: --sparsity is required by every criterion but nm (which ignores it)."""
    if args.criterion != "nm" and args.sparsity is None:
        error(f"--sparsity: expected a value for --criterion {args.criterion}, got none "
              "(only --criterion nm goes without it)")


def build_parser():
    p = argparse.ArgumentParser(
        prog="refsparse",
        description="A sparse Transformer written by hand in NumPy, SciPy and Numba: train, "
                    "sample and evaluate small models on a CPU.",
    )
    p.add_argument("--version", action="version", version=f"refsparse {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train a model (default: the Sparsity Transformer, a small "
                       "sparse language model, ~2 min)",
                       description="Train a model. With no options: the Sparsity Transformer, a "
                       "3-layer decoder-only character language model on the built-in corpus "
                       "(Python's own documentation) whose attention and feed-forward weights "
                       "are pruned to 90% sparsity (CSR) by gradual magnitude pruning as it "
                       "trains, with causal local attention (window 8); about 2 minutes on 2 "
                       "cores. It ends with what sparsity bought: stored weights, checkpoint "
                       "size and step time against the same model dense. --dense trains the "
                       "dense baseline.")
    t.add_argument("--task", choices=["lm", "copy", "reverse", "sort"],
                   help="lm: language model on a text (default); copy/reverse/sort: an "
                        "encoder-decoder on that synthetic sequence task")
    t.add_argument("--text", metavar="FILE", help="train the LM on this UTF-8 text file instead")
    t.add_argument("--config", metavar="FILE.toml", help="read settings from a TOML file "
                   "(keys of TrainConfig, at top level or under [train])")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override one setting, e.g. --set d_model=64 (repeatable)")
    t.add_argument("--dtype", choices=["float32", "float64"], help="parameter precision (default float32)")
    t.add_argument("--attention", metavar="SPEC",
                   help="attention pattern, e.g. local:window=64, strided:stride=16, "
                        "fixed:block=16,c=2, bigbird:block=16, or full (dense attention); "
                        "default local:window=8 for the language model, full for the tasks; "
                        "see refsparse patterns --help)")
    t.add_argument("--sparsity", type=float, metavar="S",
                   help="make the attention projections and feed-forward weights S-sparse "
                        "(e.g. 0.9 stores 10%% of them, as scipy CSR arrays; default 0.9 for the "
                        "language model, 0 (dense) for the tasks)")
    t.add_argument("--method", choices=["static", "gmp", "imp", "set", "rigl"],
                   help="how the sparse pattern is reached: gmp (gradual magnitude pruning, "
                        "the default), static (a fixed random pattern), imp (lottery tickets: "
                        "prune, rewind, retrain), set (drop smallest, regrow at random), rigl "
                        "(drop smallest, regrow where the gradient is largest). Their knobs: "
                        "--set prune_begin=…, prune_end=…, prune_every=…, update_every=…, "
                        "drop_fraction=…, set_drop=signed (SET as in Mocanu et al.), imp_rounds=…")
    t.add_argument("--distribution", choices=["uniform", "erk"],
                   help="how the stored weights are shared among layers: uniform (every "
                        "layer S-sparse, default) or erk (Erdős–Rényi-Kernel: smaller "
                        "layers denser, same total)")
    t.add_argument("--dense", action="store_true",
                   help="the dense baseline: the same model with dense weights and full "
                        "attention, for 600 steps (about the sparse default's time; the default "
                        "run before the Sparsity Transformer); --attention and --steps still apply")
    t.add_argument("--seed", type=int, help="seed for weights, dropout and batches (default 0)")
    t.add_argument("--steps", type=int,
                   help="number of training steps (default 1200; 600 with --dense; 1000 for "
                        "copy/reverse/sort). The "
                        "default warm-up (warmup_steps: 50; 100 for the tasks) is cut to STEPS "
                        "when it exceeds them; a warmup_steps set with --set or --config that "
                        "exceeds STEPS is an error")
    t.add_argument("--name", help="run name: files go to OUT_DIR/NAME/, or NAME-1, NAME-2, … if it "
                        "exists (default: the first free of TASK-0, TASK-1, …)")
    t.add_argument("--out-dir", dest="out_dir", help="directory of runs (default ./runs)")
    t.add_argument("--resume", metavar="CHECKPOINT",
                   help="continue a saved run exactly where it stopped, writing next to CHECKPOINT; "
                        "--steps (and --set steps/eval_every/eval_batches/log_every/save_every/"
                        "sample_chars) may change, any other setting that differs is an error")
    t.add_argument("--overwrite", action="store_true",
                   help="reuse the run directory OUT_DIR/NAME if it exists (its metrics and "
                        "checkpoint are deleted); without it a new run takes the next free name")
    t.add_argument("--kernels", choices=["fast", "reference"],
                   help="kernel path: fast (default) or reference (the plain loops; slower, same "
                        "numbers to rounding)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train)

    s = sub.add_parser("sample", help="generate text from a trained language model")
    s.add_argument("--checkpoint", required=True, metavar="PATH", help="a checkpoint.npz from train")
    s.add_argument("--prompt", default="The ", help="text to continue (default 'The ')")
    s.add_argument("--length", type=int, default=300, help="characters to generate (default 300)")
    s.add_argument("--temperature", type=float, default=0.8,
                   help="softmax temperature; lower is more conservative, 0 is greedy (default 0.8)")
    s.add_argument("--top-k", dest="top_k", type=int, default=None,
                   help="sample only among the K most likely characters")
    s.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    s.set_defaults(func=_cmd_sample)

    e = sub.add_parser("eval", help="evaluate a checkpoint on its validation data")
    e.add_argument("--checkpoint", required=True, metavar="PATH", help="a checkpoint.npz from train")
    e.set_defaults(func=_cmd_eval)

    pl = sub.add_parser("plot", help="draw a run's loss curves to a PNG (needs matplotlib)")
    pl.add_argument("run_dir", metavar="RUN_DIR", help="a run directory holding metrics.jsonl")
    pl.add_argument("-o", "--output", help="PNG path (default RUN_DIR/loss.png)")
    pl.set_defaults(func=_cmd_plot)
    pr = sub.add_parser("prune", help="one-shot pruning of a trained checkpoint",
                        description="Prune a trained model once: its attention projections and "
                        "feed-forward weights become sparse CSR arrays keeping the entries the "
                        "criterion chooses. Writes a new checkpoint (without optimizer state).")
    pr.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint.npz from train")
    pr.add_argument("--sparsity", type=float, metavar="S",
                    help="fraction of the prunable weights to remove, e.g. 0.9; required for "
                         "every criterion but nm, which ignores it (with a note on stderr)")
    pr.add_argument("--criterion", default="magnitude",
                    choices=["magnitude", "global", "random", "nm", "block"],
                    help="magnitude: largest |w| per layer (default); global: one magnitude "
                         "threshold over all layers; random; nm: N:M along the input "
                         "dimension (--nm; --sparsity is not needed, and ignored if given); "
                         "block: whole blocks (--block)")
    pr.add_argument("--distribution", choices=["uniform", "erk"], default="uniform",
                    help="per-layer sparsities for magnitude/random (default uniform)")
    pr.add_argument("--nm", default="2:4", metavar="N:M", help="for --criterion nm (default 2:4)")
    pr.add_argument("--block", default="1x4", metavar="HxW", help="for --criterion block (default 1x4)")
    pr.add_argument("--seed", type=int, default=0, help="seed for --criterion random (default 0)")
    pr.add_argument("-o", "--output", required=True, metavar="OUT", help="the pruned checkpoint's path")
    pr.set_defaults(func=_cmd_prune, check_args=lambda args: _check_prune_args(args, pr.error))

    inf = sub.add_parser("info", help="per-layer shapes, stored entries, sparsity and file size",
                         description="Describe a checkpoint: every parameter's shape, whether it "
                         "is dense or a CSR array, its stored entries and sparsity, and the file size.")
    inf.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint.npz")
    inf.set_defaults(func=_cmd_info)

    pt = sub.add_parser("patterns", help="show, print or count a sparse attention pattern",
                        description="Sparse attention patterns, given as a text spec such as "
                        "'local:window=16', 'strided:stride=8', 'fixed:block=8,c=2', "
                        "'bigbird:block=4,window_blocks=3,global_blocks=1,random_blocks=1', "
                        "or several joined by '+'.")
    pt.add_argument("action", choices=["show", "text", "stats"],
                    help="show: draw to a PNG (needs matplotlib); text: print as # and .; "
                         "stats: entries per row, density")
    pt.add_argument("spec", help="the pattern spec, e.g. 'strided:stride=8'")
    pt.add_argument("--T", type=int, default=64, help="sequence length (default 64)")
    pt.add_argument("-o", "--output", help="PNG path for show (default: from the spec)")
    pt.set_defaults(func=_cmd_patterns)
    sw = sub.add_parser("sweep", help="train many runs from a sweep file; tables and plots over seeds",
                        description="Run the trials of a sweep file (a base training config, axes "
                        "to cross, explicit trials; see refsparse.sweep.spec) as `refsparse train` "
                        "runs in sweeps/NAME/TRIAL/, each in its own process, and print mean ± std "
                        "over seeds per cell. Re-running skips finished trials and resumes "
                        "interrupted ones. `refsparse sweep report DIR` writes the tables "
                        "(markdown, CSV) and plots of a sweep directory.")
    sw.add_argument("target", metavar="SWEEP.toml|report",
                    help="a sweep file to run, or `report` followed by a sweep's directory")
    sw.add_argument("directory", nargs="?", metavar="DIR",
                    help="with report: the sweep's directory (e.g. sweeps/NAME)")
    sw.add_argument("--backend", choices=["local", "ray"], default="local",
                    help="local: processes on this machine (default); ray: Ray tasks on a running "
                         "cluster (--address) or on a local Ray started for the sweep")
    sw.add_argument("--jobs", type=int, metavar="N",
                    help="trials at once (default: cores ÷ threads per trial; with --address: "
                         "as many as the cluster takes)")
    sw.add_argument("--address", metavar="ADDR", help="a running Ray cluster, e.g. auto or ray://host:10001")
    sw.add_argument("--out-dir", dest="out_dir", help="directory of sweeps (default: the file's "
                    "[sweep] out_dir, or ./sweeps)")
    sw.add_argument("--dry-run", action="store_true", help="check the file and list its trials; run nothing")
    sw.set_defaults(func=_cmd_sweep)
    _add_vectors_parser(sub)
    _add_validate_parser(sub)
    return p


# ----------------------------------------------------------------------------------------
# refsparse vectors export | list | show | check   (golden vectors, refsparse.vectors)


def _parse_vectors_option(text):
    if "=" not in text:
        raise ValueError(f"--option: expected KEY=VALUE, got {text!r}")
    key, value = (s.strip() for s in text.split("=", 1))
    low = value.lower()
    if low in ("true", "false"):
        return key, low == "true"
    if low in ("none", "null"):
        return key, None
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def _cmd_vectors_export(args):
    from .vectors import DEFAULT_SIZES, write

    options = dict(_parse_vectors_option(o) for o in args.option or [])
    if args.pattern is not None:
        options["pattern"] = args.pattern
    sizes = {k: getattr(args, k) for k in DEFAULT_SIZES if getattr(args, k, None) is not None}
    tensors, meta = write(args.output, args.op, dtype=args.dtype, seed=args.seed, options=options, **sizes)
    n_bytes = sum(t.nbytes for t in tensors.values())
    print(f"wrote {args.output}: {meta['op']}, {meta['dtype']}, seed {meta['seed']}, "
          f"{len(tensors)} tensors, {n_bytes:,} bytes")
    return 0


def _cmd_vectors_list(args):
    from .vectors import DEFAULT_SIZES, ops

    rows = []
    for info in ops():
        options = ", ".join(f"{k}={v}" for k, v in info.defaults.items())
        rows.append((info.name, info.kind, info.summary + (f"  [options: {options}]" if options else "")))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    for name, kind, text in rows:
        print(f"{name.ljust(w0)}  {kind.ljust(w1)}  {text}")
    flags = ", ".join("--" + k.replace("_", "-") + f" {v}" for k, v in DEFAULT_SIZES.items())
    print(f"\nsizes (defaults): {flags}")
    return 0


def _cmd_vectors_show(args):
    from .vectors import load

    tensors, meta = load(args.file, what="file")
    for key in sorted(meta):
        print(f"{key}: {meta[key]}")
    print()
    for name in sorted(tensors):
        t = tensors[name]
        print(f"{name}  {tuple(t.shape)}  {t.dtype}")
    return 0


def _cmd_vectors_check(args):
    from .vectors import compare, load

    ref, _ = load(args.reference, what="reference")
    cand, _ = load(args.candidate, what="candidate")
    report = compare(ref, cand, rtol=args.rtol, atol=args.atol, max_ulp=args.max_ulp, only=args.only)
    print(report.table())
    return 0 if report.ok else 1


def _vectors_nonneg_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return v


def _vectors_nonneg_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, got {text!r}")
    return v


def _add_vectors_parser(subparsers):
    """``refsparse vectors export | list | show | check`` (refsparse.vectors)."""
    v = subparsers.add_parser(
        "vectors", help="export golden vectors (safetensors) and check another implementation against them",
        description="Golden vectors: inputs, parameters, outputs and every gradient of an op, layer or "
                    "model, in float64, as safetensors; and a checker that compares a candidate file "
                    "with a reference tensor by tensor (docs/validating.md).")
    vs = v.add_subparsers(dest="vectors_command", metavar="ACTION")

    e = vs.add_parser("export", help="write one op's golden vectors to a safetensors file",
                      description="Write one op's inputs, parameters, upstream gradient, output and "
                                  "gradients to a safetensors file. `refsparse vectors list` shows the ops.")
    e.add_argument("op", metavar="OP", help="an op name, e.g. layernorm, sparse_attention.local, "
                                            "nn.EncoderLayer, model.DecoderLM")
    e.add_argument("-o", "--output", required=True, metavar="FILE.safetensors", help="where to write")
    e.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                   help="precision (default float64, the reference)")
    e.add_argument("--seed", type=_vectors_nonneg_int, default=0,
                   help="seed of every random draw (default 0)")
    from .vectors import DEFAULT_SIZES

    for key, default in DEFAULT_SIZES.items():
        e.add_argument(f"--{key.replace('_', '-')}", dest=key, type=int, metavar="N",
                       help=f"size {key} (default {default})")
    e.add_argument("--pattern", metavar="SPEC", help="attention pattern spec for sparse_attention and the "
                   "layers and models, e.g. strided:stride=8 (see `refsparse patterns --help`)")
    e.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="an op option, e.g. --option eps=1e-6 (repeatable; see `vectors list`)")
    e.set_defaults(func=_cmd_vectors_export)

    ls = vs.add_parser("list", help="list the ops that can be exported, with their options")
    ls.set_defaults(func=_cmd_vectors_list)

    sh = vs.add_parser("show", help="print a vectors file's metadata and tensor names")
    sh.add_argument("file", metavar="FILE.safetensors")
    sh.set_defaults(func=_cmd_vectors_show)

    c = vs.add_parser("check", help="compare a candidate file with a reference, tensor by tensor",
                      description="Compare CANDIDATE with REFERENCE tensor by tensor by name; print a "
                                  "table (max abs / rel error, max ULP distance, pass/fail). Exit status "
                                  "0 when every tensor passes, 1 when one fails, 2 on bad input.")
    c.add_argument("reference", metavar="REFERENCE", help="the reference safetensors file")
    c.add_argument("candidate", metavar="CANDIDATE", help="the candidate safetensors file")
    c.add_argument("--rtol", type=_vectors_nonneg_float, default=None,
                   help="relative tolerance (default per dtype: float64 1e-7, float32 1.3e-6)")
    c.add_argument("--atol", type=_vectors_nonneg_float, default=None,
                   help="absolute tolerance (default per dtype: float64 1e-7, float32 1e-5)")
    c.add_argument("--max-ulp", dest="max_ulp", type=_vectors_nonneg_int, default=None,
                   help="also require every entry within N ULPs (0 = bit for bit)")
    c.add_argument("--only", action="append", metavar="GLOB",
                   help="compare only the reference tensors matching this glob, e.g. 'grad.*' (repeatable)")
    c.set_defaults(func=_cmd_vectors_check)

    def _help(args):
        v.print_help()
        return 0

    v.set_defaults(func=_help)
    return v


# ----------------------------------------------------------------------------------------
# refsparse validate hf DIR   (a saved Hugging Face GPT-2 against refsparse)


def _cmd_validate_hf(args):
    import numpy as np

    from .interop.hf import from_hf
    from .vectors.lm import check_lm

    twin = from_hf(args.directory, dtype=args.dtype)
    try:
        import torch
        from transformers import GPT2LMHeadModel
    except ImportError as e:
        raise ImportError(f"validate hf: needs torch and transformers ({e}): "
                          "pip install transformers") from None
    hf = GPT2LMHeadModel.from_pretrained(args.directory, local_files_only=True)
    hf = hf.to(getattr(torch, args.dtype))
    c = twin.config
    T = min(args.seq_len, c.max_len)
    rng = np.random.default_rng(args.seed)
    ids = rng.integers(0, c.vocab_size, (args.batch, T))
    mask = None
    if args.pad != "none" and T > 2:  # pad the last row: its first (left) or last (right) third
        mask = np.ones((args.batch, T), dtype=np.int64)
        n = max(1, T // 3)
        if args.pad == "left":
            mask[-1, :n] = 0
        else:
            mask[-1, T - n:] = 0
    report = check_lm(hf, ids, attention_mask=mask, twin=twin, rtol=args.rtol)
    print(f"{args.directory}: GPT-2, {c.n_layers} layers, d_model {c.d_model}, {c.n_heads} heads, vocab "
          f"{c.vocab_size}, {args.dtype}; ids ({args.batch}, {T}) from seed {args.seed}"
          + ("" if mask is None else f", {args.pad}-padded last row"))
    print(report.table())
    return 0 if report.ok else 1


def _add_validate_parser(subparsers):
    """``refsparse validate hf DIR`` (refsparse.vectors.lm.check_lm)."""
    va = subparsers.add_parser(
        "validate", help="check a real model against refsparse (logits, loss, every gradient)",
        description="Run one forward and backward of a saved model and of its refsparse twin on the "
                    "same ids, and compare the logits, the float64 loss and every gradient tensor by "
                    "tensor (docs/validating.md). Exit status 0 when all pass, 1 on a mismatch, 2 on "
                    "bad input.")
    vs = va.add_subparsers(dest="validate_command", metavar="KIND")
    h = vs.add_parser("hf", help="a Hugging Face GPT-2 saved with save_pretrained (config.json + "
                                 "model.safetensors); needs torch and transformers")
    h.add_argument("directory", metavar="DIR", help="the model directory (nothing is downloaded)")
    h.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                   help="run both models in this precision (default float64, the reference)")
    h.add_argument("--batch", type=_vectors_positive_int, default=2, help="batch size (default 2)")
    h.add_argument("--seq-len", dest="seq_len", type=_vectors_positive_int, default=16,
                   help="sequence length, at most n_positions (default 16)")
    h.add_argument("--seed", type=_vectors_nonneg_int, default=0, help="seed of the random ids (default 0)")
    h.add_argument("--pad", choices=["none", "left", "right"], default="left",
                   help="pad the last row of the batch (default left), to check the attention mask")
    h.add_argument("--rtol", type=_vectors_nonneg_float, default=None,
                   help="relative tolerance per tensor (default float64 1e-10, float32 1e-4)")
    h.set_defaults(func=_cmd_validate_hf)

    def _help(args):
        va.print_help()
        return 0

    va.set_defaults(func=_help)
    return va


def _vectors_positive_int(text):
    v = _vectors_nonneg_int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}")
    return v


# The threads' environment of `refsparse train` (and of refsparse in bench/), for variables
# the user has not set; see _thread_defaults.
THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "GOMP_SPINCOUNT": "10000"}


def _thread_defaults():
    """Set THREAD_ENV's variables the user has not set, before numpy and Numba start threads.

    ``OPENBLAS_NUM_THREADS=1``: on a 2-core machine OpenBLAS's own threads compete with the
    Numba kernels' threads and with anything else running; for the small matrix products of
    these models that made a training step 2–10× slower (measured: 0.31 s/step with one BLAS
    thread against 0.6–9 s with two, on a machine with other work). With BLAS on one thread,
    refsparse splits big matrix products over its own sleeping threads instead
    ([`refsparse.kernels.parallel`][refsparse.kernels.parallel]).

    ``GOMP_SPINCOUNT=10000``: after a parallel kernel, Numba's OpenMP threads spin this many
    times (about 0.1–0.3 ms) waiting for the next one, then sleep. A training step runs
    ~150 short kernels back to back, each a few hundred µs on the default model: threads
    put to sleep at once (``OMP_WAIT_POLICY=passive``, this setting's predecessor) are woken
    for every one of them, while libgomp's default spin (300,000 times, milliseconds) keeps
    them busy into the matrix product that follows, whose threads they slow. Measured on the
    default model's step (90% sparse, local window 8), 5 paired rounds in alternating
    processes on 2 cores: sparse 87.3 → 75.7 ms, dense 154 → 165 ms (median; the rounds
    spread ±15%). ``OMP_WAIT_POLICY`` set by the user still rules (passive ignores the spin).
    """
    import os

    for key, value in THREAD_ENV.items():
        os.environ.setdefault(key, value)


def main(argv=None):
    _thread_defaults()
    from .checkpoint import CheckpointError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    if getattr(args, "check_args", None) is not None:
        args.check_args(args)  # checks argparse cannot express; a usage error exits with 2
    try:
        return args.func(args)
    except BrokenPipeError:
        # the reader went away (`refsparse info C | head -1`): stop quietly; point stdout at
        # devnull so that the interpreter's last flush does not complain either
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a command a closed pipe stopped
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130  # 128 + SIGINT
    except (ValueError, TypeError, OSError, CheckpointError, ImportError, MemoryError) as e:
        print(f"refsparse {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
