"""Using a trained model: sampling text from a language model, greedy decoding of a seq2seq one.

Both run the model in evaluation mode (no dropout) and put it back as they found it.
"""

from __future__ import annotations

import numpy as np

from . import data as D

__all__ = ["generate", "greedy_decode"]


def generate(model, prompt_ids, n_new, *, temperature=1.0, top_k=None, rng=None):
    """Sample ``n_new`` tokens after ``prompt_ids`` (1-D) from a `DecoderLM`.

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
    """Greedy decoding with a `Transformer`: src (B, S) -> predictions (B, ≤ max_steps).

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
