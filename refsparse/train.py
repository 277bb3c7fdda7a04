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
        if self.warmup_steps < 0 or self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps: expected 0..steps={self.steps}, got {self.warmup_steps}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr: expected 0 <= min_lr <= lr={self.lr}, got {self.min_lr}")
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
            self.unigram_entropy = D.unigram_entropy(self.train_ids)
            self.model = DecoderLM(_lm_config(cfg, self.tokenizer.vocab_size), rng=model_rng)
            self.tokens_per_step = cfg.batch_size * cfg.seq_len
        else:
            self.tokenizer = None
            self.task = D.make_task(cfg.task, cfg.alphabet_size, cfg.min_len, cfg.max_len)
            self.model = Transformer(_seq2seq_config(cfg, self.task), rng=model_rng)
            self.tokens_per_step = cfg.batch_size * (cfg.max_len + 2) // 2  # about, for tokens/s
        # AdamW as torch.optim.AdamW with one parameter group: every parameter is decayed.
        self.opt = AdamW(self.model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                         weight_decay=cfg.weight_decay)
        self.schedule = warmup_cosine(cfg.lr, cfg.warmup_steps, cfg.steps, cfg.min_lr)

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
        self.model.zero_grad()
        if c.task == "lm":
            x, y = batch
            loss = self.model.forward_backward(x, y)
        else:
            loss = self.model.forward_backward(batch.src, batch.tgt_in, batch.tgt_out)
        if c.grad_clip > 0:
            clip_grad_norm(self.model.parameters(), c.grad_clip)
        self.opt.lr = self.schedule(self.step + 1)
        self.opt.step()
        self.step += 1
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
        """
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
                    loss = self.train_step()
                    tokens += self.tokens_per_step
                    elapsed = time.perf_counter() - t0
                    record = {"step": self.step, "loss": loss, "val_loss": None,
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

    # -- checkpoints ----------------------------------------------------------------------
    def save(self, path=None):
        """Write a checkpoint (default: ``<run_dir>/checkpoint.npz``); returns its path."""
        path = path or os.path.join(self.run_dir, "checkpoint.npz")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return save_checkpoint(
            path, self.model, optimizer=self.opt, step=self.step,
            rng_states={"data": self.data_rng, "model": self.model.rng},
            tokenizer=self.tokenizer, extra={"train_config": self.cfg.to_dict()},
        )

    @classmethod
    def resume(cls, path, *, log=print, progress=True, overrides=None):
        """Rebuild the trainer saved in ``path`` and continue exactly where it stopped."""
        ckpt = load_checkpoint(path)
        cfg_dict = dict(ckpt.meta["extra"].get("train_config") or {})
        if not cfg_dict:
            raise ValueError(f"checkpoint: {path} holds no training config; it cannot be resumed")
        cfg_dict.update(overrides or {})
        trainer = cls(TrainConfig.from_dict(cfg_dict), log=log, progress=progress)
        restore_model(trainer.model, ckpt)
        trainer.opt.load_state_dict(ckpt.optim_state)
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
