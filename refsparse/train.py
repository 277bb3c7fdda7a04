"""The training loop: AdamW, warm-up + cosine, gradient clipping, evaluation, checkpoints.

One training step, the whole of it (see `Trainer.train_step`)::

    x, y = get_lm_batch(train_ids, B, T, data_rng)     # token ids (B, T) and next tokens
    model.zero_grad()
    loss = model.forward_backward(x, y)                # forward, cross-entropy, backward
    clip_grad_norm(model.parameters(), grad_clip)      # global-norm clipping
    opt.lr = schedule(step + 1)                        # warm-up then cosine
    opt.step()                                         # AdamW on every parameter

A sparse training method (`refsparse.prune`: static, GMP, SET, RigL, IMP) joins the step
through its hooks; this loop knows none of them by name.

Two tasks: ``"lm"`` trains a `DecoderLM` on a text (the built-in corpus by default);
``"copy"``, ``"reverse"`` and ``"sort"`` train a `Transformer` on a synthetic
sequence-to-sequence task and report exact-match accuracy under greedy decoding.

**A run lives in its own directory** ``<out_dir>/<name>/`` — ``checkpoint.npz`` (see
`refsparse.checkpoint`) and ``metrics.jsonl`` — which no other run writes into: a new run
takes the first free name (``lm-0``, ``lm-1``, …), a resumed run writes next to its checkpoint.

**A step is wholly done or wholly redone.** The random streams are noted before the batch
is drawn and put back if the step is interrupted before its update; the update itself (the
optimizer step and the method's pattern change) runs with Ctrl-C held back until it is
complete. So Ctrl-C at any moment — drawing the batch, forward, backward, the update, an
evaluation, a checkpoint write — leaves the state of the last completed step, which is saved;
the resumed run ends bit-identical to a run that was never interrupted.

**metrics.jsonl**, one JSON object per line, every one with the run's ``run_id``:

- a training record, every ``log_every`` steps and at each evaluation:
  ``{"run_id", "step", "loss", "lr", "eval", "val_loss", "tokens_per_s", "elapsed"}`` with
  ``"eval": null`` and ``"val_loss": null``, or ``"eval": "estimate"``, ``"val_loss"`` the
  loss on ``eval_batches`` validation batches and ``"eval_batches"`` (tasks add
  ``"exact_match"``); IMP adds ``"round"``;
- the last record of a run: ``{"run_id", "step", "eval": "final", "final_val_loss", …}``, the
  loss on the *whole* validation set, the number ``refsparse train`` prints (``lm`` adds
  ``"bits_per_char"`` and ``"savings"``, what sparsity bought, measured against the same model
  dense: see `refsparse.savings`; tasks add ``"final_exact_match"``).

A resumed run appends to it; records written after the checkpoint it resumes are dropped
first, so no step appears twice.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
import uuid
from dataclasses import asdict

import numpy as np

from . import data as D
from . import functional as F
from .checkpoint import (generator_from_state, load_checkpoint, remove_temporary_files,
                         restore_model, save_checkpoint)
from .config import (DataConfig, ModelConfig, OptimConfig, RunConfig, SparseConfig, TrainConfig,
                     group_of)
from .decode import greedy_decode
from .models import DecoderLM, DecoderLMConfig, Transformer, TransformerConfig
from .optim import AdamW, clip_grad_norm, warmup_cosine
from .prune.factory import make_method
from .prune.sparsify import sparsify_like

__all__ = ["DataConfig", "ModelConfig", "OptimConfig", "RESUMABLE_KEYS", "RunConfig", "RunWriteError",
           "SparseConfig", "TrainConfig", "Trainer", "deferred_interrupt"]

# settings a resumed run may change: they do not change what was trained so far
RESUMABLE_KEYS = ("steps", "eval_every", "eval_batches", "log_every", "save_every", "sample_chars",
                  "compare_steps")


class RunWriteError(OSError):
    """A run's metrics or checkpoint could not be written (a full disk, a read-only directory)."""


@contextlib.contextmanager
def deferred_interrupt():
    """Hold back Ctrl-C (SIGINT) inside the block and raise it once the block is complete.

    In the main thread only (elsewhere Python delivers no signals): the update of a training
    step runs inside, so it is never left half-applied.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda sig, frame: caught.append(sig))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
    if caught:
        if callable(previous):
            previous(signal.SIGINT, None)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt


def _lm_config(cfg, vocab_size):
    m = cfg.model
    return DecoderLMConfig(
        vocab_size=vocab_size, d_model=m.d_model, n_heads=m.n_heads, n_layers=m.n_layers,
        d_ff=m.d_ff, max_len=m.seq_len, dropout=m.dropout, activation=m.activation,
        norm_first=m.norm_first, dtype=m.dtype, attention=m.attention,
    )


def _seq2seq_config(cfg, task):
    m = cfg.model
    return TransformerConfig(
        src_vocab_size=task.vocab_size, tgt_vocab_size=task.vocab_size, d_model=m.d_model,
        n_heads=m.n_heads, n_encoder_layers=m.n_layers, n_decoder_layers=m.n_layers,
        d_ff=m.d_ff, dropout=m.dropout, activation=m.activation, norm_first=m.norm_first,
        max_len=task.max_tgt_len, pad_id=D.PAD, dtype=m.dtype, attention=m.attention,
    )


def _read_records(path):
    """The complete JSON lines of a metrics file (a torn last line is left out)."""
    try:
        with open(path) as f:
            lines = f.read().split("\n")
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a record cut short by a kill or a full disk: it and what follows go
    return records


class Trainer:
    """Builds the data, model and optimizer of a `TrainConfig`
    and trains them.

    Randomness: ``model.rng`` (initial weights, dropout) is seeded with ``seed``;
    ``data_rng`` (batches) with ``seed + 1``; the sparse method's with ``seed + 2``. All
    states go into the checkpoint, so a resumed run continues bit for bit.
    """

    def __init__(self, cfg: TrainConfig, *, log=print, progress=True):
        self.cfg = cfg.validate()
        self.log = log
        self.progress = progress
        self.step = 0
        m, d, o, s, r = cfg.model, cfg.data, cfg.optim, cfg.sparse, cfg.run
        self.run_id = uuid.uuid4().hex[:12]  # names this run in every metrics record
        self.records = 0  # metrics records written by this run (saved with the checkpoint)
        self.unlogged = None  # the last step's loss and lr until its record is written
        self.last_loss = float("nan")  # the training loss of the last step
        self._claimed = False
        self.run_dir = os.path.join(r.out_dir, r.name or f"{d.task}-0")
        self.checkpoint_path = None  # default <run_dir>/checkpoint.npz
        self.data_rng = np.random.default_rng(r.seed + 1)
        model_rng = np.random.default_rng(r.seed)
        if d.task == "lm":
            text = D.builtin_corpus() if d.text is None else D.load_text(d.text)
            self.tokenizer = D.CharTokenizer.from_text(text)
            if self.tokenizer.vocab_size < 2:
                raise ValueError(f"text: expected at least 2 distinct characters, got "
                                 f"{self.tokenizer.vocab_size} ({text[:1]!r} repeated) in "
                                 f"{d.text}: there is nothing to predict")
            ids = self.tokenizer.encode(text)
            self.train_ids, self.val_ids = D.split_train_val(ids, d.val_fraction, d.val_pieces)
            self._check_lm_split(len(ids))
            self.unigram_entropy = D.unigram_entropy(self.train_ids)
            self.model = DecoderLM(_lm_config(cfg, self.tokenizer.vocab_size), rng=model_rng)
            self.tokens_per_step = o.batch_size * m.seq_len
        else:
            self.tokenizer = None
            self.task = D.make_task(d.task, d.alphabet_size, d.min_len, d.max_len)
            self.model = Transformer(_seq2seq_config(cfg, self.task), rng=model_rng)
            self.tokens_per_step = o.batch_size * (d.max_len + 2) // 2  # about, for tokens/s
        # sparse weights: the method makes the chosen layers sparse (or later, when it prunes)
        self.method = None
        if s.sparsity > 0:
            # every SparseConfig field is an argument of make_method, by the same name
            self.method = make_method(**asdict(s), steps=o.steps, seed=r.seed + 2, init_seed=r.seed)
            if self.method is not None:
                self.method.setup(self.model)
        self.opt = self._make_optimizer()
        self.schedule = warmup_cosine(o.lr, o.warmup_steps, o.steps, o.min_lr)

    def _check_lm_split(self, n_tokens):
        # both streams must hold one window: found here, not at the first evaluation
        c = self.cfg
        source = "the built-in corpus" if c.data.text is None else c.data.text
        for name, ids, fix in (("train data", self.train_ids, "more text"),
                               ("validation data", self.val_ids,
                                "more text or a larger val_fraction")):
            if len(ids) < c.model.seq_len + 1:
                raise ValueError(
                    f"{name}: expected at least seq_len + 1 = {c.model.seq_len + 1} tokens (a window "
                    f"of inputs plus the next token), got {len(ids)} (of the {n_tokens} tokens of "
                    f"{source}, val_fraction={c.data.val_fraction}); use a shorter seq_len, {fix}")

    def _make_optimizer(self):
        # AdamW as torch.optim.AdamW with one parameter group: every parameter is decayed.
        o = self.cfg.optim
        return AdamW(self.model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2),
                     weight_decay=o.weight_decay)

    def _new_model(self, seed):
        rng = np.random.default_rng(seed)
        if self.cfg.data.task == "lm":
            return DecoderLM(_lm_config(self.cfg, self.tokenizer.vocab_size), rng=rng)
        return Transformer(_seq2seq_config(self.cfg, self.task), rng=rng)

    # -- the run directory ----------------------------------------------------------------
    def claim_run_dir(self, overwrite=False):
        """Make this run's directory; never one that exists, unless ``overwrite``.

        The name is ``name`` (default ``<task>-0``), else the first free of ``<name>-1``,
        ``<name>-2``, … (default ``<task>-1``, …), claimed with an atomic ``mkdir`` so two runs
        started at once cannot take the same one. With ``overwrite`` the directory ``name``
        is reused and its metrics, checkpoint and plot are deleted. Returns the directory.
        """
        if self._claimed:
            return self.run_dir
        r, task = self.cfg.run, self.cfg.data.task
        os.makedirs(r.out_dir, exist_ok=True)
        if r.name is None:
            candidates = (f"{task}-{i}" for i in range(10**6))
        else:
            candidates = (r.name if i == 0 else f"{r.name}-{i}" for i in range(10**6))
        if overwrite:
            path = os.path.join(r.out_dir, next(candidates))
            os.makedirs(path, exist_ok=True)
            for f in ("metrics.jsonl", "checkpoint.npz", "loss.png"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(path, f))
            remove_temporary_files(path)
        else:
            for name in candidates:
                path = os.path.join(r.out_dir, name)
                try:
                    os.mkdir(path)
                    break
                except FileExistsError:
                    continue
            if r.name is not None and name != r.name:
                self.log(f"{os.path.join(r.out_dir, r.name)} exists (another run): this run "
                         f"writes to {path}")
        self.run_dir = path
        self._claimed = True
        return path

    # -- the whole training state ---------------------------------------------------------
    def _rng_states(self):
        states = {"data": self.data_rng.bit_generator.state, "model": self.model.rng.bit_generator.state}
        if self.method is not None:
            states["method"] = self.method.rng.bit_generator.state
        return states

    def _set_rng_states(self, states):
        self.data_rng.bit_generator.state = states["data"]
        self.model.rng.bit_generator.state = states["model"]  # shared by every dropout layer
        if "method" in states:
            self.method.rng.bit_generator.state = states["method"]

    def capture(self):
        """Copies of the whole training state (weights, optimizer, step, random streams)."""
        return {"model": dict(self.model.state_dict()), "optim": self.opt.state_dict(),
                "step": self.step, "data_rng": self.data_rng.bit_generator.state,
                "model_rng": self.model.rng.bit_generator.state}

    def restore(self, snapshot):
        """Go back to a state `capture` returned (sparse weights take their patterns)."""
        model = self._new_model(self.cfg.run.seed)
        sparsify_like(model, [n for n, v in snapshot["model"].items() if hasattr(v, "nnz")])
        model.load_state_dict(snapshot["model"])
        model.rng.bit_generator.state = snapshot["model_rng"]
        self.model = model
        self.opt = self._make_optimizer()
        self.opt.load_state_dict(snapshot["optim"])
        self.step = int(snapshot["step"])
        self.data_rng = generator_from_state(snapshot["data_rng"])
        self.unlogged = None

    def reset(self, model_seed):
        """Fresh weights drawn from ``model_seed``, a fresh optimizer, step 0, the first batches."""
        self.model = self._new_model(model_seed)
        self.opt = self._make_optimizer()
        self.step = 0
        self.data_rng = np.random.default_rng(self.cfg.run.seed + 1)
        self.unlogged = None

    # -- one step -------------------------------------------------------------------------
    def _batch(self):
        c = self.cfg
        if c.data.task == "lm":
            return D.get_lm_batch(self.train_ids, c.optim.batch_size, c.model.seq_len, self.data_rng)
        return self.task.sample_batch(c.optim.batch_size, self.data_rng)

    def train_step(self):
        """One optimisation step; returns the training loss of the batch.

        Interrupted (any exception) before its update, the step leaves no trace: the
        random streams go back to where they were. The update runs with Ctrl-C held back.
        """
        c, method = self.cfg, self.method
        if method is not None:
            method.start_step(self)
        start = self._rng_states()
        try:
            self.model.train()
            batch = self._batch()
            if method is not None:
                method.before_step(self.step + 1, self.model)
            self.model.zero_grad()
            if c.data.task == "lm":
                x, y = batch
                loss = self.model.forward_backward(x, y)
            else:
                loss = self.model.forward_backward(batch.src, batch.tgt_in, batch.tgt_out)
            if c.optim.grad_clip > 0:
                clip_grad_norm(self.model.parameters(), c.optim.grad_clip)
        except BaseException:
            self._set_rng_states(start)  # nothing else changed: the step will be redone
            raise
        with deferred_interrupt():  # the update: wholly applied
            self.opt.lr = self.schedule(self.step + 1)
            if method is None or not method.skips_optimizer_step(self.step + 1):
                self.opt.step()
            self.step += 1
            if method is not None:
                method.after_step(self.step, self.model, self.opt)
            self.unlogged = {"loss": float(loss), "lr": float(self.opt.lr)}
            self.last_loss = float(loss)
        return loss

    # -- evaluation -----------------------------------------------------------------------
    def evaluate(self, max_batches=None):
        """Validation: {'val_loss': …} for lm; {'val_loss', 'exact_match'} for tasks."""
        c = self.cfg
        B = c.optim.batch_size
        self.model.eval()
        try:
            if c.data.task == "lm":
                total, count = 0.0, 0
                for x, y in D.lm_eval_batches(self.val_ids, B, c.model.seq_len, max_batches):
                    loss, _ = F.cross_entropy_forward(self.model.forward(x), y)
                    total += float(loss) * y.size
                    count += y.size
                return {"val_loss": total / count}
            rng = np.random.default_rng(10_000 + c.run.seed)  # a held-out stream, fixed per seed
            losses, hits, n = [], 0, 0
            for _ in range(max_batches or c.run.eval_batches):
                b = self.task.sample_batch(B, rng)
                loss, _ = F.cross_entropy_forward(self.model.forward(b.src, b.tgt_in), b.tgt_out,
                                                  ignore_index=D.PAD)
                losses.append(float(loss))
                pred = greedy_decode(self.model, b.src, b.tgt_in.shape[1])
                hits += int(D.exact_match(pred, b.tgt_out).sum())
                n += len(pred)
            return {"val_loss": float(np.mean(losses)), "exact_match": hits / n}
        finally:
            self.model.train()

    def final_evaluation(self):
        """The whole validation set (lm) or 4 × eval_batches held-out batches (tasks)."""
        c = self.cfg
        return self.evaluate(None if c.data.task == "lm" else 4 * c.run.eval_batches)

    # -- metrics ----------------------------------------------------------------------------
    @property
    def metrics_path(self):
        return os.path.join(self.run_dir, "metrics.jsonl")

    def _sync_metrics(self):
        """Drop the records written after the state this trainer holds (a killed run's)."""
        path = self.metrics_path
        records = _read_records(path)
        if self.records is None:
            self.records = len(records)
        if not os.path.exists(path) or len(records) == self.records and self._file_is_clean(path):
            return
        keep = records[: self.records]
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in keep)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise RunWriteError(f"metrics: cannot rewrite {path}: {e.strerror or e}") from None
        self.records = len(keep)

    @staticmethod
    def _file_is_clean(path):
        with open(path, "rb") as f:
            data = f.read()
        return not data or data.endswith(b"\n")

    def _write(self, record):
        """Append one record (Ctrl-C held back); a failed write saves the state and raises."""
        path = self.metrics_path
        line = json.dumps({"run_id": self.run_id, **record}) + "\n"
        try:
            with deferred_interrupt():
                with open(path, "a") as f:
                    f.write(line)
                    f.flush()
                self.records += 1
                if record.get("eval") != "final":
                    self.unlogged = None
        except OSError as e:
            msg = f"metrics: cannot write {path}: {e.strerror or e}"
            raise RunWriteError(self._save_after_failure(msg)) from None

    def _save_after_failure(self, msg):
        try:
            saved = self.save()
            return f"{msg}; the state of step {self.step} is saved in {saved}"
        except OSError as e:
            return f"{msg}; and {e}"

    def _due(self, step, steps):
        r = self.cfg.run
        evaluate = step % r.eval_every == 0 or step == steps
        return evaluate, evaluate or step % r.log_every == 0

    def _log_step(self, steps, t0, tokens):
        """Write the record of the step just taken, if one is due (with an estimate if due)."""
        if self.unlogged is None:
            return
        evaluate, log = self._due(self.step, steps)
        if not log:
            self.unlogged = None
            return
        elapsed = time.perf_counter() - t0
        record = {"step": self.step, **(self.method.log_fields() if self.method else {}),
                  **self.unlogged, "eval": None, "val_loss": None,
                  "tokens_per_s": tokens / elapsed if tokens and elapsed > 0 else None,
                  "elapsed": elapsed}
        if evaluate:
            n = self.cfg.run.eval_batches
            record.update({"eval": "estimate", **self.evaluate(n), "eval_batches": n})
        self._write(record)
        return record

    # -- the loop ---------------------------------------------------------------------------
    def run(self, steps=None):
        """Train until ``steps`` (default ``cfg.optim.steps``), evaluate, save; Ctrl-C saves
        the last completed step and returns.

        Returns a summary dict: ``step``, ``train_loss``, ``interrupted``, ``elapsed``,
        ``checkpoint`` and, unless interrupted, the final evaluation (``val_loss`` over the
        whole validation set, ``bits_per_char`` and ``savings``, or ``exact_match``). A method that trains
        several runs (IMP) adds ``rounds``: each run's final numbers.
        """
        c = self.cfg
        steps = c.optim.steps if steps is None else steps
        self.claim_run_dir()
        remove_temporary_files(self.run_dir)  # a killed save's leftovers
        self._sync_metrics()
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=steps, initial=self.step, unit="step", dynamic_ncols=True)
        t0 = time.perf_counter()
        tokens = 0
        interrupted, in_transition = False, False
        last_loss = self.last_loss
        rounds, summary, path = [], {}, None
        try:
            self._log_step(steps, t0, 0)  # a record the last run could not write
            while True:
                while self.step < steps:
                    last_loss = float(self.train_step())
                    tokens += self.tokens_per_step
                    record = self._log_step(steps, t0, tokens)
                    if self.step % c.run.save_every == 0 and self.step < steps:
                        self.save()
                    if bar is not None:
                        bar.update(1)
                        if record is not None:
                            shown = {"loss": f"{last_loss:.3f}",
                                     "tok_s": f"{record['tokens_per_s'] or 0:.0f}"}
                            if self.method is not None:  # while a method changes it
                                shown["sparsity"] = f"{self._stored_sparsity():.3f}"
                            bar.set_postfix(shown)
                path = self.save()  # a good state before the final evaluation
                final = self.final_evaluation()
                summary = dict(final)
                record = {"step": self.step, **(self.method.log_fields() if self.method else {}),
                          "eval": "final", "final_val_loss": final["val_loss"]}
                if c.data.task == "lm":
                    record["bits_per_char"] = final["val_loss"] / math.log(2)
                    summary["savings"] = record["savings"] = self.measure_savings(path)
                else:
                    record["final_exact_match"] = final["exact_match"]
                self._write(record)
                if self.method is not None and self.method.log_fields():
                    rounds.append({**self.method.log_fields(),
                                   "sparsity": self._stored_sparsity(), **final})
                in_transition = True  # the state is not whole until end_of_run returns
                more = self.method is not None and self.method.end_of_run(self)
                in_transition = False
                if not more:
                    break
                self.log(f"{self.method.name}: {self.method.log_fields()}, sparsity "
                         f"{self._stored_sparsity():.4f}; training again from step {self.step}")
                if bar is not None:
                    bar.n = self.step
                    bar.refresh()
        except KeyboardInterrupt:
            interrupted = True
            if not in_transition:  # else the checkpoint before the final evaluation stands
                path = self.save()
        finally:
            if bar is not None:
                bar.close()
        out = {"step": self.step, "train_loss": last_loss, "interrupted": interrupted,
               "elapsed": time.perf_counter() - t0, "checkpoint": path}
        if interrupted:
            self.log(f"interrupted at step {self.step}: checkpoint saved to {path}")
            return out
        out.update(summary)
        if c.data.task == "lm":
            out["unigram_entropy"] = self.unigram_entropy
            out["bits_per_char"] = summary["val_loss"] / math.log(2)
        if rounds:
            out["rounds"] = rounds
        return out

    def measure_savings(self, checkpoint):
        """What sparsity bought (`refsparse.savings.measure`): the model against its dense twin,
        with the step times taken on copies (the run's state is not touched) on a batch of
        a stream of its own (seed + 3), and ``checkpoint``'s size against the twin's."""
        from . import savings

        c = self.cfg
        rng = np.random.default_rng(c.run.seed + 3)
        batch = D.get_lm_batch(self.train_ids, c.optim.batch_size, c.model.seq_len, rng)
        state = None if self.method is None else {"method": self.method.state_dict()}
        sparse = self._stored_sparsity() > 0 or any(
            self.model.attention_pattern(i, c.model.seq_len) is not None for i in range(c.model.n_layers))
        fields = {"step": self.step, "rng_states": self._rng_states(), "tokenizer": self.tokenizer,
                  "extra": self._checkpoint_extra(), "state": state}
        return savings.measure(self.model, batch, checkpoint=checkpoint, checkpoint_fields=fields,
                               lr=float(self.opt.lr), weight_decay=c.optim.weight_decay,
                               betas=(c.optim.beta1, c.optim.beta2), grad_clip=c.optim.grad_clip,
                               steps=c.run.compare_steps if sparse else 0)  # dense: its own twin

    def _checkpoint_extra(self):
        return {"train_config": self.cfg.to_dict(), "run_id": self.run_id,
                "metrics_records": self.records, "unlogged": self.unlogged,
                "last_loss": self.last_loss}

    def _stored_sparsity(self):
        from .prune.sparsify import overall_sparsity

        return overall_sparsity(self.model)

    # -- checkpoints ----------------------------------------------------------------------
    def save(self, path=None):
        """Write a checkpoint (default: the run's ``checkpoint.npz``), atomically; returns its path.

        It holds the whole state of the last completed step: weights, optimizer, random
        streams, the method's state, the run id and how many metrics records the run wrote
        by then (plus the step's own record if it is still to be written).
        """
        if path is None:
            if self.checkpoint_path is None:
                self.claim_run_dir()  # never into another run's directory
            path = self.checkpoint_path or os.path.join(self.run_dir, "checkpoint.npz")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        extra = self._checkpoint_extra()
        state = None if self.method is None else {"method": self.method.state_dict()}
        try:
            return save_checkpoint(path, self.model, optimizer=self.opt, step=self.step,
                                   rng_states=self._rng_states(), tokenizer=self.tokenizer,
                                   extra=extra, state=state)
        except OSError as e:
            raise RunWriteError(f"checkpoint: cannot write {path}: {e.strerror or e}; the last "
                                f"checkpoint written there (if any) is unchanged") from None

    @classmethod
    def resume(cls, path, *, log=print, progress=True, overrides=None):
        """Rebuild the trainer saved in ``path`` and continue exactly where it stopped.

        The run keeps writing next to the checkpoint (its directory, its run id). ``overrides``
        ({flat key: value}) may change the keys of ``RESUMABLE_KEYS`` (e.g. ``steps``); any
        other key given with a value that differs from the checkpoint's raises ValueError
        naming it.
        """
        ckpt = load_checkpoint(path)
        extra = ckpt.extra
        cfg_dict = extra.get("train_config")
        if not cfg_dict:
            raise ValueError(f"checkpoint: {path} holds no training config; it cannot be resumed")
        if ckpt.meta.get("optimizer") is None:
            raise ValueError(f"checkpoint: {path} holds no optimizer state (written by refsparse "
                             "prune?); it cannot be resumed; its model can be sampled, evaluated "
                             "and described (refsparse sample / eval / info)")
        cfg = TrainConfig.from_dict(cfg_dict)
        for key, value in (overrides or {}).items():
            _, name = group_of(key)
            old = cfg.get(name)
            if name in RESUMABLE_KEYS:
                setattr(getattr(cfg, group_of(name)[0]), name, value)
            elif value != old:
                raise ValueError(f"{name}: a resumed run keeps the settings it was started with "
                                 f"({name}={old!r} in {path}), got {value!r}; only "
                                 f"{', '.join(RESUMABLE_KEYS)} may change (start a new run to "
                                 f"change {name})")
        if cfg.optim.warmup_steps > cfg.optim.steps:
            raise ValueError(f"steps: expected at least warmup_steps={cfg.optim.warmup_steps} "
                             f"(the run's warm-up), got {cfg.optim.steps}")
        if ckpt.step > cfg.optim.steps:
            raise ValueError(f"steps: expected at least the checkpoint's step {ckpt.step}, got "
                             f"{cfg.optim.steps}")
        trainer = cls(cfg, log=log, progress=progress)
        restore_model(trainer.model, ckpt)  # sparse layers take the checkpoint's patterns
        trainer.opt = trainer._make_optimizer()  # over the restored parameters
        trainer.opt.load_state_dict(ckpt.optim_state)
        state = ckpt.state or {}
        if trainer.method is not None:
            if "method" in state:
                trainer.method.load_state_dict(state["method"])
            elif "method" in ckpt.meta["rng"]:  # written when methods saved their random stream only
                trainer.method.rng = generator_from_state(ckpt.meta["rng"]["method"])
            else:
                raise ValueError(f"checkpoint: {path} holds no state of its {cfg.sparse.method!r} method "
                                 "(an older iterative-pruning run?); it cannot be resumed; its model "
                                 "can be sampled and evaluated")
        trainer.step = ckpt.step
        trainer.data_rng = generator_from_state(ckpt.meta["rng"]["data"])
        # the model's Generator is shared by every dropout layer: set its state in place
        trainer.model.rng.bit_generator.state = ckpt.meta["rng"]["model"]
        trainer.run_id = extra.get("run_id", trainer.run_id)
        trainer.records = extra.get("metrics_records")  # None: keep what the file holds
        trainer.unlogged = extra.get("unlogged")
        trainer.last_loss = extra.get("last_loss", float("nan"))
        trainer.run_dir = os.path.dirname(os.path.abspath(os.fspath(path)))
        trainer.checkpoint_path = os.fspath(path)
        trainer._claimed = True
        return trainer
