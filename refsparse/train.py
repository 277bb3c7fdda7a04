"""The training loop: AdamW, warm-up + cosine, gradient clipping, evaluation, checkpoints.

One training step, the whole of it (see :meth:`Trainer.train_step`)::

    x, y = get_lm_batch(train_ids, B, T, data_rng)     # token ids (B, T) and next tokens
    model.zero_grad()
    loss = model.forward_backward(x, y)                # forward, cross-entropy, backward
    clip_grad_norm(model.parameters(), grad_clip)      # global-norm clipping
    opt.lr = schedule(step + 1)                        # warm-up then cosine
    opt.step()                                         # AdamW on every parameter

Two tasks: ``"lm"`` trains a :class:`~refsparse.models.DecoderLM` on a text (the built-in
corpus by default); ``"copy"``, ``"reverse"`` and ``"sort"`` train a
:class:`~refsparse.models.Transformer` on a synthetic sequence-to-sequence task and
report exact-match accuracy under greedy decoding.

A run lives in ``<out_dir>/<name>/``: ``checkpoint.npz`` (see :mod:`refsparse.checkpoint`)
and ``metrics.jsonl`` (one JSON object per logged step).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields

import numpy as np

from . import data as D
from . import functional as F
from .checkpoint import generator_from_state, load_checkpoint, restore_model, save_checkpoint
from .models import DecoderLM, DecoderLMConfig, Transformer, TransformerConfig
from .optim import AdamW, clip_grad_norm, warmup_cosine
from .kernels.select import topk_indices
from .prune.methods import METHODS, csr_positions, make_method, sparsify_with_positions
from .prune.sparsify import layer_nnz, prunable_layers

__all__ = ["TrainConfig", "Trainer", "generate", "greedy_decode"]


@dataclass
class TrainConfig:
    """Everything a run needs; the defaults train the decoder-only LM in about 2–3 minutes on 2 cores."""

    task: str = "lm"  # "lm" (language model on a text) or "copy" | "reverse" | "sort"
    text: str | None = None  # lm: path of a UTF-8 text file; None = the built-in corpus
    # model
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 3  # lm: blocks; seq2seq: encoder layers and decoder layers each
    d_ff: int = 512
    seq_len: int = 64  # lm: context length T
    dropout: float = 0.0
    activation: str = "gelu"
    norm_first: bool = True  # pre-LN trains more easily at high learning rates
    dtype: str = "float32"
    attention: str = "full"  # attention pattern spec: "full" (dense) or e.g. "local:window=64"
    # sparse weights (refsparse.prune): attention projections and feed-forward layers
    sparsity: float = 0.0  # fraction of those weights NOT stored; 0 = a dense model
    method: str = "static"  # static | gmp | imp | set | rigl (see refsparse.prune.methods)
    distribution: str = "uniform"  # uniform | erk: how the kept weights are shared by layers
    erk_power_scale: float = 1.0
    prune_begin: float = 0.1  # gmp: first pruning step, as a fraction of steps
    prune_end: float = 0.6  # gmp: last pruning step (sparsity reached), fraction of steps
    prune_every: int = 10  # gmp: steps between prunings
    update_every: int = 50  # set/rigl: steps between drop-and-grow updates
    drop_fraction: float = 0.3  # set: ζ; rigl: initial α of the cosine-annealed fraction
    update_end: float = 0.75  # rigl: no updates from this fraction of steps on
    imp_rounds: int = 2  # imp: pruning rounds after the dense run (each retrains)
    imp_rewind: float = 0.05  # imp: rewind survivors to this fraction of steps (0: to init)
    imp_control: str = "rewind"  # imp: "rewind" (the ticket) or "reinit" (random control)
    # optimisation
    steps: int = 600
    batch_size: int = 32
    lr: float = 3e-3  # peak learning rate
    min_lr: float = 3e-4  # reached at the last step
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # global gradient norm; 0 disables clipping
    # evaluation and logging
    eval_every: int = 200
    eval_batches: int = 4  # lm: validation batches at each evaluation (all at the end)
    log_every: int = 10
    val_fraction: float = 0.1
    val_pieces: int = 10  # validation = the tail of each of this many parts of the text
    # seq2seq tasks
    alphabet_size: int = 10
    min_len: int = 1
    max_len: int = 12
    # run
    seed: int = 0
    name: str | None = None  # run directory name; default "<task>-<seed>"
    out_dir: str = "runs"
    sample_chars: int = 200  # lm: length of the sample printed at the end

    def to_dict(self):
        """The config as a plain dict (what checkpoints store)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        """The config of a dict made by :meth:`to_dict`; unknown keys are an error."""
        names = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"config: unknown keys {unknown}; known keys: {sorted(names)}")
        return cls(**d)

    def validate(self):
        """Check every field; raise ValueError naming the first bad one; return self."""
        if self.task != "lm" and self.task not in D.TASKS:
            raise ValueError(f"task: expected 'lm' or one of {D.TASKS}, got {self.task!r}")
        for k in ("steps", "batch_size", "eval_every", "eval_batches", "log_every", "seq_len"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{k}: expected a positive integer, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed: expected an integer >= 0, got {self.seed!r}")
        if self.warmup_steps < 0 or self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps: expected 0..steps={self.steps}, got {self.warmup_steps}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr: expected 0 <= min_lr <= lr={self.lr}, got {self.min_lr}")
        if isinstance(self.grad_clip, bool) or not isinstance(self.grad_clip, (int, float)) \
                or not self.grad_clip >= 0:
            raise ValueError(f"grad_clip: expected a number >= 0 (0 disables clipping), "
                             f"got {self.grad_clip!r}")
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity: expected a number in [0, 1), got {self.sparsity!r}")
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {self.method!r}")
        if self.distribution not in ("uniform", "erk"):
            raise ValueError(f"distribution: expected 'uniform' or 'erk', got {self.distribution!r}")
        for k in ("prune_begin", "prune_end", "update_end", "imp_rewind", "drop_fraction"):
            v = getattr(self, k)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{k}: expected a fraction in [0, 1], got {v!r}")
        if self.method == "imp" and round(self.imp_rewind * self.steps) >= self.steps:
            raise ValueError(f"imp_rewind: expected a step k = round(imp_rewind · steps) before the last "
                             f"(k < steps={self.steps}), got {self.imp_rewind!r} (k = "
                             f"{round(self.imp_rewind * self.steps)}): the rewind state is taken before step k + 1")
        if self.prune_begin > self.prune_end:
            raise ValueError(f"prune_end: expected >= prune_begin={self.prune_begin}, got {self.prune_end}")
        for k in ("prune_every", "update_every", "imp_rounds"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{k}: expected a positive integer, got {v!r}")
        if self.imp_control not in ("rewind", "reinit"):
            raise ValueError(f"imp_control: expected 'rewind' or 'reinit', got {self.imp_control!r}")
        return self


def _lm_config(cfg, vocab_size):
    return DecoderLMConfig(
        vocab_size=vocab_size, d_model=cfg.d_model, n_heads=cfg.n_heads, n_layers=cfg.n_layers,
        d_ff=cfg.d_ff, max_len=cfg.seq_len, dropout=cfg.dropout, activation=cfg.activation,
        norm_first=cfg.norm_first, dtype=cfg.dtype, attention=cfg.attention,
    )


def _seq2seq_config(cfg, task):
    return TransformerConfig(
        src_vocab_size=task.vocab_size, tgt_vocab_size=task.vocab_size, d_model=cfg.d_model,
        n_heads=cfg.n_heads, n_encoder_layers=cfg.n_layers, n_decoder_layers=cfg.n_layers,
        d_ff=cfg.d_ff, dropout=cfg.dropout, activation=cfg.activation, norm_first=cfg.norm_first,
        max_len=task.max_tgt_len, pad_id=D.PAD, dtype=cfg.dtype, attention=cfg.attention,
    )


class Trainer:
    """Builds the data, model and optimizer of a :class:`TrainConfig` and trains them.

    Randomness: ``model.rng`` (initial weights, dropout) is seeded with ``seed``;
    ``data_rng`` (batches) with ``seed + 1``. Both states go into the checkpoint, so a
    resumed run continues bit for bit.
    """

    def __init__(self, cfg: TrainConfig, *, log=print, progress=True):
        self.cfg = cfg.validate()
        self.log = log
        self.progress = progress
        self.step = 0
        self.run_dir = os.path.join(cfg.out_dir, cfg.name or f"{cfg.task}-{cfg.seed}")
        self.data_rng = np.random.default_rng(cfg.seed + 1)
        model_rng = np.random.default_rng(cfg.seed)
        if cfg.task == "lm":
            text = D.builtin_corpus() if cfg.text is None else D.load_text(cfg.text)
            self.tokenizer = D.CharTokenizer.from_text(text)
            ids = self.tokenizer.encode(text)
            self.train_ids, self.val_ids = D.split_train_val(ids, cfg.val_fraction, cfg.val_pieces)
            self._check_lm_split(len(ids))
            self.unigram_entropy = D.unigram_entropy(self.train_ids)
            self.model = DecoderLM(_lm_config(cfg, self.tokenizer.vocab_size), rng=model_rng)
            self.tokens_per_step = cfg.batch_size * cfg.seq_len
        else:
            self.tokenizer = None
            self.task = D.make_task(cfg.task, cfg.alphabet_size, cfg.min_len, cfg.max_len)
            self.model = Transformer(_seq2seq_config(cfg, self.task), rng=model_rng)
            self.tokens_per_step = cfg.batch_size * (cfg.max_len + 2) // 2  # about, for tokens/s
        # sparse weights: the method makes the chosen layers sparse (or not yet, for gmp/imp)
        self.method = None
        if cfg.sparsity > 0:
            self.method = make_method(
                cfg.method, cfg.sparsity, steps=cfg.steps, distribution=cfg.distribution,
                seed=cfg.seed + 2, erk_power_scale=cfg.erk_power_scale,
                prune_begin=cfg.prune_begin, prune_end=cfg.prune_end, prune_every=cfg.prune_every,
                update_every=cfg.update_every, drop_fraction=cfg.drop_fraction,
                update_end=cfg.update_end)
            if self.method is not None:
                self.method.setup(self.model)
        self.opt = self._make_optimizer()
        self.schedule = warmup_cosine(cfg.lr, cfg.warmup_steps, cfg.steps, cfg.min_lr)
        self.imp_round = 0
        self._rewind_state = None
        self._ticket = None  # imp reinit control: the ticket's trained model of the last round

    def _check_lm_split(self, n_tokens):
        # both streams must hold one window: found here, not at the first evaluation
        c = self.cfg
        source = "the built-in corpus" if c.text is None else c.text
        for name, ids, fix in (("train data", self.train_ids, "more text"),
                               ("validation data", self.val_ids,
                                "more text or a larger val_fraction")):
            if len(ids) < c.seq_len + 1:
                raise ValueError(
                    f"{name}: expected at least seq_len + 1 = {c.seq_len + 1} tokens (a window of "
                    f"inputs plus the next token), got {len(ids)} (of the {n_tokens} tokens of "
                    f"{source}, val_fraction={c.val_fraction}); use a shorter seq_len, {fix}")

    def _make_optimizer(self):
        # AdamW as torch.optim.AdamW with one parameter group: every parameter is decayed.
        c = self.cfg
        return AdamW(self.model.parameters(), lr=c.lr, betas=(c.beta1, c.beta2),
                     weight_decay=c.weight_decay)

    # -- one step -------------------------------------------------------------------
    def _batch(self):
        c = self.cfg
        if c.task == "lm":
            return D.get_lm_batch(self.train_ids, c.batch_size, c.seq_len, self.data_rng)
        return self.task.sample_batch(c.batch_size, self.data_rng)

    def train_step(self):
        """One optimisation step; returns the training loss of the batch."""
        c = self.cfg
        self.model.train()
        batch = self._batch()
        if self.method is not None:
            self.method.before_step(self.step + 1, self.model)
        self.model.zero_grad()
        if c.task == "lm":
            x, y = batch
            loss = self.model.forward_backward(x, y)
        else:
            loss = self.model.forward_backward(batch.src, batch.tgt_in, batch.tgt_out)
        if c.grad_clip > 0:
            clip_grad_norm(self.model.parameters(), c.grad_clip)
        self.opt.lr = self.schedule(self.step + 1)
        if self.method is None or not self.method.skips_optimizer_step(self.step + 1):
            self.opt.step()
        self.step += 1
        if self.method is not None:
            self.method.after_step(self.step, self.model, self.opt)
        return loss

    # -- evaluation ----------------------------------------------------------------------
    def evaluate(self, max_batches=None):
        """Validation: {'val_loss': …} for lm; {'val_loss', 'exact_match'} for tasks."""
        c = self.cfg
        self.model.eval()
        try:
            if c.task == "lm":
                total, count = 0.0, 0
                for x, y in D.lm_eval_batches(self.val_ids, c.batch_size, c.seq_len, max_batches):
                    loss, _ = F.cross_entropy_forward(self.model.forward(x), y)
                    total += float(loss) * y.size
                    count += y.size
                return {"val_loss": total / count}
            rng = np.random.default_rng(10_000 + c.seed)  # a held-out stream, fixed per seed
            losses, hits, n = [], 0, 0
            for _ in range(max_batches or c.eval_batches):
                b = self.task.sample_batch(c.batch_size, rng)
                loss, _ = F.cross_entropy_forward(self.model.forward(b.src, b.tgt_in), b.tgt_out,
                                                  ignore_index=D.PAD)
                losses.append(float(loss))
                pred = greedy_decode(self.model, b.src, b.tgt_in.shape[1])
                hits += int(D.exact_match(pred, b.tgt_out).sum())
                n += len(pred)
            return {"val_loss": float(np.mean(losses)), "exact_match": hits / n}
        finally:
            self.model.train()

    # -- the loop ---------------------------------------------------------------------------
    def run(self, steps=None):
        """Train until ``steps`` (default ``cfg.steps``); Ctrl-C saves and returns.

        Returns a summary dict (final losses, bits per character or accuracy, timing).
        With ``method="imp"`` (and a sparsity), runs :meth:`run_imp` instead.
        """
        if self.cfg.method == "imp" and self.cfg.sparsity > 0:
            if steps is not None and steps != self.cfg.steps:
                raise ValueError("steps: iterative pruning (imp) runs cfg.steps per round")
            return self.run_imp()
        return self._run(steps)

    def _run(self, steps=None):
        c = self.cfg
        steps = c.steps if steps is None else steps
        os.makedirs(self.run_dir, exist_ok=True)
        metrics_path = os.path.join(self.run_dir, "metrics.jsonl")
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=steps, initial=self.step, unit="step", dynamic_ncols=True)
        t0 = time.perf_counter()
        tokens = 0
        interrupted = False
        last = {"loss": float("nan")}
        try:
            with open(metrics_path, "a") as metrics:
                while self.step < steps:
                    if self._imp_rewind_step() == self.step and self._rewind_state is None:
                        self._rewind_state = self._capture()
                    loss = self.train_step()
                    tokens += self.tokens_per_step
                    elapsed = time.perf_counter() - t0
                    record = {"step": self.step, "loss": loss, "val_loss": None,
                              **({"round": self.imp_round} if c.method == "imp" and c.sparsity else {}),
                              "lr": self.opt.lr, "tokens_per_s": tokens / elapsed, "elapsed": elapsed}
                    if self.step % c.eval_every == 0 or self.step == steps:
                        record.update(self.evaluate(c.eval_batches))
                    if record["val_loss"] is not None or self.step % c.log_every == 0:
                        metrics.write(json.dumps(record) + "\n")
                        metrics.flush()
                    last = record
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
        except KeyboardInterrupt:
            interrupted = True
        finally:
            if bar is not None:
                bar.close()
        path = self.save()
        summary = {"step": self.step, "train_loss": last["loss"], "interrupted": interrupted,
                   "elapsed": time.perf_counter() - t0, "checkpoint": path}
        if interrupted:
            self.log(f"interrupted at step {self.step}: checkpoint saved to {path}")
            return summary
        final = self.evaluate(None if c.task == "lm" else 4 * c.eval_batches)
        summary.update(final)
        if c.task == "lm":
            summary["unigram_entropy"] = self.unigram_entropy
            summary["bits_per_char"] = final["val_loss"] / math.log(2)
        return summary

    # -- iterative magnitude pruning with rewinding (lottery tickets) ----------------------
    def _imp_rewind_step(self):
        c = self.cfg
        if c.method != "imp" or c.sparsity == 0:
            return None
        return round(c.imp_rewind * c.steps)

    def _capture(self):
        """Copies of the whole training state: what the lottery-ticket rounds rewind to."""
        return {"model": self.model.state_dict(), "optim": self.opt.state_dict(), "step": self.step,
                "data_rng": self.data_rng.bit_generator.state,
                "model_rng": self.model.rng.bit_generator.state}

    def imp_sparsity(self, r):
        """The sparsity after pruning round r of R: ``1 − (1 − s)^(r/R)``.

        Each round removes the same fraction ``1 − (1 − s)^(1/R)`` of the weights that are
        left, and round R reaches s.
        """
        c = self.cfg
        return c.sparsity if r == c.imp_rounds else 1.0 - (1.0 - c.sparsity) ** (r / c.imp_rounds)

    def _new_model(self, seed):
        rng = np.random.default_rng(seed)
        if self.cfg.task == "lm":
            return DecoderLM(_lm_config(self.cfg, self.tokenizer.vocab_size), rng=rng)
        return Transformer(_seq2seq_config(self.cfg, self.task), rng=rng)

    def _imp_positions(self, model, target):
        """The positions each prunable layer of ``model`` keeps at sparsity ``target``: its
        ``layer_nnz`` largest weights by magnitude (among those still stored)."""
        c = self.cfg
        shapes = {n: (m.out_features, m.in_features) for n, m in prunable_layers(model)}
        counts = layer_nnz(shapes, target, c.distribution, erk_power_scale=c.erk_power_scale)
        keep = {}
        for name, layer in prunable_layers(model):
            if layer.weight.is_sparse:
                w = layer.weight.value
                keep[name] = csr_positions(w)[topk_indices(np.abs(w.data), counts[name])]
            else:
                keep[name] = topk_indices(np.abs(layer.weight.value).reshape(-1), counts[name])
        return keep

    def _rewind(self, keep):
        """The whole training state back to step k of the dense run, restricted to ``keep``."""
        snap = self._rewind_state
        model = self._new_model(self.cfg.seed)
        model.load_state_dict(snap["model"])
        model.rng.bit_generator.state = snap["model_rng"]
        self.model = model
        self.opt = self._make_optimizer()
        self.opt.load_state_dict(snap["optim"])
        self.step = snap["step"]
        self.data_rng = generator_from_state(snap["data_rng"])
        for name, positions in keep.items():
            sparsify_with_positions(self.model, name, positions, self.opt)

    def _train_ticket(self, keep):
        """The control's view of the ticket: rewind to ``keep`` and retrain to the end, without
        metrics or checkpoints; returns the trained model. The control's own state is kept."""
        saved = self.model, self.opt, self.step, self.data_rng
        self._rewind(keep)
        while self.step < self.cfg.steps:
            self.train_step()
        ticket = self.model
        self.model, self.opt, self.step, self.data_rng = saved
        return ticket

    def prune_and_rewind(self, r):
        """Round r of IMP: prune the trained weights by magnitude, rewind the survivors.

        Frankle & Carbin 2019 (rewinding to step k: Frankle et al. 2020). Each chosen
        layer keeps its ``layer_nnz(…, imp_sparsity(r))`` largest trained weights
        (among those still stored); then the whole training state — weights, optimizer
        state, step, random streams — goes back to step k = ``imp_rewind · steps`` of
        the dense run, restricted to the survivors.

        The control (``imp_control="reinit"``) trains the *ticket's* pattern of round r from
        fresh random weights at step 0. That pattern is pruned from the ticket's weights of
        round r − 1, not from the control's own: so round r < R also trains the ticket of
        round r (rewound, as above, without metrics or checkpoint), whose weights give
        round r + 1 its pattern — R − 1 more training runs than the ticket itself.
        """
        c = self.cfg
        target = self.imp_sparsity(r)
        if c.imp_control == "rewind":
            self._rewind(self._imp_positions(self.model, target))
        else:
            # round 1: the dense run, shared by the ticket and the control, is self.model
            ticket = self.model if r == 1 else self._ticket
            if ticket is None:
                raise ValueError(f"prune_and_rewind: round {r} of the reinit control needs the ticket "
                                 f"of round {r - 1}; run the rounds in order (run_imp)")
            keep = self._imp_positions(ticket, target)
            self._ticket = self._train_ticket(keep) if r < c.imp_rounds else None
            self.model = self._new_model(c.seed + 7919 * r)  # fresh random weights
            self.opt = self._make_optimizer()
            self.step = 0
            self.data_rng = np.random.default_rng(c.seed + 1)
            for name, positions in keep.items():
                sparsify_with_positions(self.model, name, positions, self.opt)
        self.imp_round = r
        return target

    def run_imp(self):
        """Lottery-ticket training: a dense run, then ``imp_rounds`` prune-rewind-retrain rounds.

        Returns the last round's summary, with ``rounds``: each round's sparsity and
        final validation numbers.
        """
        c = self.cfg
        if self.step != 0 or self.imp_round != 0:
            raise ValueError("run_imp: expected a fresh trainer (step 0, round 0)")
        summary = self._run(c.steps)
        rounds = [{"round": 0, "sparsity": 0.0, "val_loss": summary.get("val_loss")}]
        for r in range(1, c.imp_rounds + 1):
            if summary["interrupted"]:
                break
            target = self.prune_and_rewind(r)
            self.log(f"imp round {r}/{c.imp_rounds}: pruned to sparsity {target:.4f}, "
                     f"rewound to step {self.step}")
            summary = self._run(c.steps)
            rounds.append({"round": r, "sparsity": target, "val_loss": summary.get("val_loss"),
                           **({"exact_match": summary["exact_match"]}
                              if "exact_match" in summary else {})})
        summary["rounds"] = rounds
        return summary

    # -- checkpoints ----------------------------------------------------------------------
    def save(self, path=None):
        """Write a checkpoint (default: ``<run_dir>/checkpoint.npz``); returns its path."""
        path = path or os.path.join(self.run_dir, "checkpoint.npz")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        rngs = {"data": self.data_rng, "model": self.model.rng}
        if self.method is not None:
            rngs["method"] = self.method.rng
        extra = {"train_config": self.cfg.to_dict()}
        if self.cfg.method == "imp" and self.cfg.sparsity > 0:
            extra["imp_round"] = self.imp_round
        return save_checkpoint(path, self.model, optimizer=self.opt, step=self.step,
                               rng_states=rngs, tokenizer=self.tokenizer, extra=extra)

    @classmethod
    def resume(cls, path, *, log=print, progress=True, overrides=None):
        """Rebuild the trainer saved in ``path`` and continue exactly where it stopped."""
        ckpt = load_checkpoint(path)
        cfg_dict = dict(ckpt.meta["extra"].get("train_config") or {})
        if not cfg_dict:
            raise ValueError(f"checkpoint: {path} holds no training config; it cannot be resumed")
        if ckpt.meta.get("optimizer") is None:
            raise ValueError(f"checkpoint: {path} holds no optimizer state (written by refsparse "
                             "prune?); it cannot be resumed; its model can be sampled, evaluated "
                             "and described (refsparse sample / eval / info)")
        cfg_dict.update(overrides or {})
        trainer = cls(TrainConfig.from_dict(cfg_dict), log=log, progress=progress)
        if "imp_round" in ckpt.meta["extra"]:
            raise ValueError(f"checkpoint: {path} is from an iterative-pruning (imp) run, which "
                             "cannot be resumed part-way; its model can be sampled and evaluated")
        restore_model(trainer.model, ckpt)  # sparse layers take the checkpoint's patterns
        trainer.opt = trainer._make_optimizer()  # over the restored parameters
        trainer.opt.load_state_dict(ckpt.optim_state)
        if trainer.method is not None:
            trainer.method.rng = generator_from_state(ckpt.meta["rng"]["method"])
        trainer.step = ckpt.step
        trainer.data_rng = generator_from_state(ckpt.meta["rng"]["data"])
        # the model's Generator is shared by every dropout layer: set its state in place
        trainer.model.rng.bit_generator.state = ckpt.meta["rng"]["model"]
        return trainer


# ------------------------------------------------------------------------------------------
# Using a trained model
# ------------------------------------------------------------------------------------------


def generate(model, prompt_ids, n_new, *, temperature=1.0, top_k=None, rng=None):
    """Sample ``n_new`` tokens after ``prompt_ids`` (1-D) from a :class:`DecoderLM`.

    At each step the last ``max_len`` tokens are fed, the logits at the last position
    are divided by ``temperature`` (0 means greedy), optionally cut to the ``top_k``
    largest, and a token is drawn from their softmax with ``rng``.
    """
    if temperature < 0:
        raise ValueError(f"temperature: expected a number >= 0, got {temperature}")
    if isinstance(n_new, bool) or not isinstance(n_new, (int, np.integer)) or n_new < 0:
        raise ValueError(f"n_new: expected an integer >= 0, got {n_new!r}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k: expected a positive integer or None, got {top_k}")
    rng = np.random.default_rng(0) if rng is None else rng
    ids = list(np.asarray(prompt_ids, dtype=np.int64))
    if not ids:
        raise ValueError("prompt_ids: expected at least one token")
    was_training = model.training
    model.eval()
    try:
        for _ in range(n_new):
            ctx = np.asarray(ids[-model.config.max_len:], dtype=np.int64)[None, :]  # (1, T)
            logits = model.forward(ctx)[0, -1].astype(np.float64)  # (V,)
            if temperature == 0:
                ids.append(int(np.argmax(logits)))
                continue
            logits = logits / temperature
            if top_k is not None and top_k < logits.size:
                kth = np.partition(logits, -top_k)[-top_k]
                logits = np.where(logits < kth, -np.inf, logits)
            p = np.exp(logits - logits.max())
            ids.append(int(rng.choice(logits.size, p=p / p.sum())))
    finally:
        model.train(was_training)
    return np.asarray(ids, dtype=np.int64)


def greedy_decode(model, src, max_steps):
    """Greedy decoding with a :class:`Transformer`: src (B, S) -> predictions (B, ≤ max_steps).

    The encoder runs once; the decoder re-reads the whole prefix at every step (short
    targets make that cheap and keep the code plain). Rows stop mattering after EOS.
    """
    was_training = model.training
    model.eval()
    try:
        pad = model.config.pad_id
        kpm = None if pad is None else src == pad
        memory = model.encode(src, kpm)
        tgt = np.full((src.shape[0], 1), D.BOS, dtype=np.int64)  # (B, 1)
        for _ in range(max_steps):
            logits = model.decode(tgt, memory, kpm)  # (B, t, V)
            nxt = np.argmax(logits[:, -1], axis=-1)[:, None]
            tgt = np.concatenate([tgt, nxt], axis=1)
            if np.all((tgt[:, 1:] == D.EOS).any(axis=1)):
                break
        return tgt[:, 1:]
    finally:
        model.train(was_training)
