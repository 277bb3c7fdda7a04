"""Data: a character tokenizer, the built-in corpus, batching, and synthetic seq2seq tasks.

Letters used in the shape comments:

    N   length of a token stream (the whole corpus, or its train / validation part)
    B   batch size
    T   sequence length (language model), or target length (seq2seq)
    S   source length (seq2seq)
    V   vocabulary size

Two kinds of data live here.

*Language modelling.* A text becomes one long stream of character ids (``CharTokenizer``);
``split_train_val`` cuts it in two, deterministically; ``get_lm_batch`` draws random windows
for training and ``lm_eval_batches`` walks fixed windows for evaluation. The built-in corpus
(``builtin_corpus``) is the English documentation every CPython install carries in
``pydoc_data.topics``, so training works offline.

*Sequence to sequence.* ``make_task("copy" | "reverse" | "sort")`` builds a ``SeqTask`` whose
``sample_batch`` draws variable-length problems over a small alphabet, padded for an
encoder-decoder trained with teacher forcing and ``ignore_index=PAD``.

No global RNG: every random draw comes from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from refsparse._checks import check_int

__all__ = [
    "CharTokenizer",
    "unigram_entropy",
    "builtin_corpus",
    "load_text",
    "split_train_val",
    "get_lm_batch",
    "lm_eval_batches",
    "PAD",
    "BOS",
    "EOS",
    "N_SPECIAL",
    "TASKS",
    "SeqBatch",
    "SeqTask",
    "make_task",
    "exact_match",
    "exact_match_accuracy",
]


# --------------------------------------------------------------------------------------------
# Small checks for plain Python arguments (the array checks live in refsparse/_checks.py)
# --------------------------------------------------------------------------------------------


def _check_pos_int(name, value, *, minimum=1):
    """An int (not a bool) ``>= minimum``, or a TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return int(value)


def _check_generator(name, rng):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"{name}: expected a numpy.random.Generator (e.g. numpy.random.default_rng(0)), "
            f"got {type(rng).__name__}"
        )
    return rng


def _check_stream(name, data):
    """A 1-D integer ndarray of token ids."""
    return check_int(name, data, ndim=1, low=0)


# --------------------------------------------------------------------------------------------
# Character tokenizer
# --------------------------------------------------------------------------------------------


class CharTokenizer:
    """Map each character of a fixed vocabulary to an id, and back.

    The id of a character is its index in ``chars``. ``CharTokenizer.from_text(text)`` builds
    the vocabulary as the sorted set of the characters of ``text`` (sorted by code point), so
    the same text always gives the same ids. There is no "unknown" token: encoding a character
    outside the vocabulary is an error, because a character-level model has never seen it.

    Args:
        chars: the vocabulary, a string (or sequence of one-character strings) with no repeats.

    Example:
        >>> tok = CharTokenizer.from_text("hello")
        >>> tok.chars
        'ehlo'
        >>> tok.encode("hole")
        array([1, 3, 2, 0])
        >>> tok.decode(tok.encode("hole"))
        'hole'
    """

    JSON_KIND = "char"
    JSON_VERSION = 1

    def __init__(self, chars: str | Sequence[str]):
        if isinstance(chars, str):
            chars_list = list(chars)
        elif isinstance(chars, (list, tuple)):
            chars_list = list(chars)
            for i, c in enumerate(chars_list):
                if not isinstance(c, str) or len(c) != 1:
                    raise ValueError(
                        f"chars: expected one-character strings, got {c!r} at index {i}"
                    )
        else:
            raise TypeError(
                f"chars: expected a str or a list of one-character strings, got {type(chars).__name__}"
            )
        if not chars_list:
            raise ValueError("chars: expected at least one character, got an empty vocabulary")
        seen = {}
        for i, c in enumerate(chars_list):
            if c in seen:
                raise ValueError(
                    f"chars: expected distinct characters, got {c!r} at indices {seen[c]} and {i}"
                )
            seen[c] = i
        self._chars = "".join(chars_list)
        self._char_list = chars_list
        # Lookup for a vectorised encode: code points sorted, with the id each one maps to.
        codes = np.array([ord(c) for c in chars_list], dtype=np.int64)  # (V,)
        order = np.argsort(codes, kind="stable")
        self._sorted_codes = codes[order]  # (V,) ascending
        self._sorted_ids = order.astype(np.int64)  # (V,) id of each sorted code point

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """The tokenizer whose vocabulary is the sorted set of characters of ``text``."""
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        if not text:
            raise ValueError("text: expected a non-empty string to build a vocabulary from, got ''")
        return cls(sorted(set(text)))

    # -- properties -------------------------------------------------------------------------

    @property
    def chars(self) -> str:
        """The vocabulary as one string; the id of a character is its index here."""
        return self._chars

    @property
    def vocab_size(self) -> int:
        """V, the number of characters in the vocabulary."""
        return len(self._char_list)

    def __len__(self) -> int:
        return self.vocab_size

    def __eq__(self, other):
        if not isinstance(other, CharTokenizer):
            return NotImplemented
        return self._chars == other._chars

    def __hash__(self):
        return hash(self._chars)

    def __repr__(self):
        return f"CharTokenizer(vocab_size={self.vocab_size})"

    # -- encode / decode ---------------------------------------------------------------------

    def encode(self, text: str) -> np.ndarray:
        """Turn ``text`` into ids: an int64 array of shape (len(text),).

        Raises ValueError naming the first character that is not in the vocabulary and its
        position in ``text``.
        """
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        # One uint32 per character (surrogatepass: a lone surrogate is still one character).
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        codes = codes.astype(np.int64)  # (N,)
        pos = np.searchsorted(self._sorted_codes, codes)  # (N,)
        pos = np.minimum(pos, self.vocab_size - 1)
        unknown = self._sorted_codes[pos] != codes  # (N,) bool
        if unknown.any():
            first = int(np.argmax(unknown))
            ch = text[first]
            distinct = sorted(set(text[i] for i in np.flatnonzero(unknown)[:1000].tolist()))
            others = ""
            if len(distinct) > 1:
                shown = ", ".join(repr(c) for c in distinct[:10])
                more = ", ..." if len(distinct) > 10 else ""
                others = f" (unknown characters in text: {shown}{more})"
            raise ValueError(
                f"text: character {ch!r} (U+{ord(ch):04X}) at position {first} is not in the "
                f"vocabulary of {self.vocab_size} characters{others}"
            )
        return self._sorted_ids[pos]  # (N,) int64

    def decode(self, ids) -> str:
        """Turn ids (a 1-D integer array or sequence, values in [0, V)) back into a string."""
        arr = np.asarray(ids)
        if arr.size == 0:
            if arr.ndim > 1:
                raise ValueError(f"ids: expected 1 dimension, got {arr.ndim} (shape {arr.shape})")
            return ""
        check_int("ids", arr, ndim=1, low=0, high=self.vocab_size)
        chars = self._char_list
        return "".join([chars[i] for i in arr.tolist()])

    # -- serialisation -----------------------------------------------------------------------

    def to_json(self) -> dict:
        """A JSON-serialisable description, for checkpoints: ``{"kind", "version", "chars"}``.

        ``CharTokenizer.from_json(tok.to_json()) == tok`` exactly, also after a trip through
        ``json.dumps`` / ``json.loads``.
        """
        return {"kind": self.JSON_KIND, "version": self.JSON_VERSION, "chars": self._chars}

    @classmethod
    def from_json(cls, obj) -> "CharTokenizer":
        """Rebuild a tokenizer from ``to_json()``'s dict (or that dict as a JSON string)."""
        if isinstance(obj, (str, bytes)):
            try:
                obj = json.loads(obj)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"obj: expected a tokenizer description in JSON, got invalid JSON ({e})"
                ) from None
        if not isinstance(obj, dict):
            raise TypeError(f"obj: expected a dict from CharTokenizer.to_json(), got {type(obj).__name__}")
        missing = [k for k in ("kind", "version", "chars") if k not in obj]
        if missing:
            raise ValueError(f"obj: expected keys 'kind', 'version', 'chars'; missing {missing}")
        if obj["kind"] != cls.JSON_KIND:
            raise ValueError(f"obj: expected kind {cls.JSON_KIND!r}, got {obj['kind']!r}")
        if obj["version"] != cls.JSON_VERSION:
            raise ValueError(f"obj: expected version {cls.JSON_VERSION}, got {obj['version']!r}")
        if not isinstance(obj["chars"], str):
            raise TypeError(f"obj['chars']: expected a str, got {type(obj['chars']).__name__}")
        return cls(obj["chars"])


def unigram_entropy(ids) -> float:
    """Entropy, in nats, of the empirical distribution of the ids in ``ids``.

        H = -Σ_c p_c log p_c,   p_c = count(c) / N

    This is the loss of the best model that ignores context (it predicts the character
    frequencies), the yardstick for a language model's loss: H / log 2 is in bits per character.

    Args:
        ids: integer array of token ids, any shape, at least one element, values >= 0.
    """
    check_int("ids", ids, low=0)
    if ids.size == 0:
        raise ValueError("ids: expected at least one token, got an empty array")
    counts = np.bincount(ids.ravel())
    counts = counts[counts > 0].astype(np.float64)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


# --------------------------------------------------------------------------------------------
# Text sources
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def builtin_corpus() -> str:
    """The built-in training text: CPython's documentation topics (``pydoc_data.topics``).

    Every CPython install carries this English text (the language reference sections that
    ``help("topic")`` shows), about 460 KB, so training needs no download. The topics are joined
    in sorted key order, each with its trailing newlines removed, with one blank line between.
    The result is deterministic for a given Python version; other Python versions ship slightly
    different text, which is why the tokenizer is saved with each checkpoint.
    """
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data
        raise RuntimeError(
            "builtin_corpus: this Python has no pydoc_data.topics (some distributions remove it); "
            "train on a text file of your own instead (refsparse train --text FILE)"
        ) from None
    return "\n\n".join(topics[key].rstrip("\n") for key in sorted(topics))


def load_text(path) -> str:
    """Read a UTF-8 text file, exactly (no newline translation; a leading BOM is dropped).

    Raises FileNotFoundError for a missing file, ValueError for a directory, for bytes that are
    not UTF-8 (with the byte offset and line of the first bad byte) and for an empty file.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"path: no such file: {path!r}")
    if os.path.isdir(path):
        raise ValueError(f"path: expected a text file, got a directory: {path!r}")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ValueError(
            f"path: {path!r} is not UTF-8 text: byte 0x{raw[e.start]:02x} at offset {e.start} "
            f"(line {line}) cannot be decoded ({e.reason}); convert the file to UTF-8 first"
        ) from None
    if not text:
        raise ValueError(f"path: {path!r} is empty; expected some text to train on")
    return text


# --------------------------------------------------------------------------------------------
# Language-model batches
# --------------------------------------------------------------------------------------------


def split_train_val(ids: np.ndarray, val_fraction: float = 0.1, pieces: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Split a token stream into (train, val), deterministically.

    With ``pieces=1`` the last ``val_fraction`` of the stream is validation. With ``pieces=k``
    the stream is cut into k equal consecutive parts and the last ``val_fraction`` of *each*
    part is validation: still contiguous text the model never trains on (no shuffling, no
    interleaved fragments), but drawn from the whole stream. That matters for the built-in
    corpus, whose topics are in alphabetical order: a single tail would be a handful of
    topics ('while', 'with', 'yield', …) unlike the rest.

    ``n_val = round(N_part * val_fraction)`` per part, kept in [1, N_part - 1] so that no part
    is empty.

    Args:
        ids: (N,) integer token stream, N >= 2 * pieces.
        val_fraction: a float in (0, 1).
        pieces: how many parts the validation text is taken from (>= 1).

    Returns:
        train and val, 1-D: views of ``ids`` when pieces = 1, else new arrays (the parts'
        train and validation segments concatenated in order).
    """
    _check_stream("ids", ids)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float, np.floating)):
        raise TypeError(f"val_fraction: expected a float, got {type(val_fraction).__name__}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction: expected a float in (0, 1), got {val_fraction}")
    pieces = _check_pos_int("pieces", pieces)
    n = ids.shape[0]
    if n < 2 * pieces:
        raise ValueError(f"ids: expected at least {2 * pieces} tokens to split in {pieces} pieces, got {n}")
    bounds = [round(k * n / pieces) for k in range(pieces + 1)]
    trains, vals = [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        n_val = min(max(int(round((b - a) * val_fraction)), 1), b - a - 1)
        trains.append(ids[a : b - n_val])
        vals.append(ids[b - n_val : b])
    if pieces == 1:
        return trains[0], vals[0]
    return np.concatenate(trains), np.concatenate(vals)


def _check_lm_args(data, batch_size, seq_len):
    _check_stream("data", data)
    batch_size = _check_pos_int("batch_size", batch_size)
    seq_len = _check_pos_int("seq_len", seq_len)
    if data.shape[0] < seq_len + 1:
        raise ValueError(
            f"data: expected at least seq_len + 1 = {seq_len + 1} tokens (a window of inputs plus "
            f"the next token), got {data.shape[0]}; use a shorter seq_len or more text"
        )
    return batch_size, seq_len


def get_lm_batch(
    data: np.ndarray, batch_size: int, seq_len: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a random language-model batch: inputs and their next-token targets.

    Each row starts at an offset drawn uniformly from [0, N - T - 1] with ``rng.integers``
    (one call, so a seeded Generator gives the same batches every run):

        x[b, t] = data[o_b + t],   y[b, t] = data[o_b + t + 1]

    Args:
        data: (N,) integer token stream, N >= T + 1.
        batch_size: B.
        seq_len: T.
        rng: the numpy.random.Generator to draw the offsets from.

    Returns:
        x (B, T) int64 and y (B, T) int64, with y[:, :-1] == x[:, 1:].
    """
    batch_size, seq_len = _check_lm_args(data, batch_size, seq_len)
    _check_generator("rng", rng)
    n = data.shape[0]
    offsets = rng.integers(0, n - seq_len, size=batch_size)  # (B,) in [0, N - T - 1]
    idx = offsets[:, None] + np.arange(seq_len)[None, :]  # (B, T)
    x = data[idx].astype(np.int64, copy=False)  # (B, T)
    y = data[idx + 1].astype(np.int64, copy=False)  # (B, T)
    return x, y


def lm_eval_batches(
    data: np.ndarray, batch_size: int, seq_len: int, max_batches: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Iterate over fixed, non-overlapping windows of ``data`` for evaluation.

    Window k covers inputs ``data[k*T : (k+1)*T]`` and targets one token later; there are
    W = (N - 1) // T windows, so together they predict every token of data[1 : W*T + 1] exactly
    once. Windows are grouped B at a time, in order; the last batch may have fewer rows. No
    randomness: the same data always gives the same batches.

    Args:
        data: (N,) integer token stream, N >= T + 1.
        batch_size: B, rows per batch.
        seq_len: T.
        max_batches: stop after this many batches (None: all of them).

    Yields:
        x (b, T) int64 and y (b, T) int64, b <= B, with y[:, :-1] == x[:, 1:].
    """
    # The checks run here, at call time, and not at the first next() of the generator.
    batch_size, seq_len = _check_lm_args(data, batch_size, seq_len)
    if max_batches is not None:
        max_batches = _check_pos_int("max_batches", max_batches)
    n_windows = (data.shape[0] - 1) // seq_len
    n_batches = math.ceil(n_windows / batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)

    def batches():
        for i in range(n_batches):
            starts = np.arange(i * batch_size, min((i + 1) * batch_size, n_windows)) * seq_len  # (b,)
            idx = starts[:, None] + np.arange(seq_len)[None, :]  # (b, T)
            yield data[idx].astype(np.int64, copy=False), data[idx + 1].astype(np.int64, copy=False)

    return batches()


# --------------------------------------------------------------------------------------------
# Synthetic sequence-to-sequence tasks
# --------------------------------------------------------------------------------------------

PAD = 0  # padding; the loss ignores it (ignore_index=PAD)
BOS = 1  # start of the target, fed to the decoder first
EOS = 2  # end of the target, which the decoder must learn to emit
N_SPECIAL = 3  # symbol k of the alphabet has id N_SPECIAL + k

TASKS = ("copy", "reverse", "sort")

# How decode() shows symbols 0, 1, 2, ... (alphabets larger than this show "<k>").
_SYMBOL_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_SPECIAL_CHARS = {PAD: "_", BOS: "^", EOS: "$"}


class SeqBatch(NamedTuple):
    """One batch of a synthetic seq2seq task (all arrays int64).

    src          (B, S)  source symbols, then PAD; S = the longest source in the batch
    src_lengths  (B,)    number of symbols in each source (non-PAD positions of src)
    tgt_in       (B, T)  decoder input:  BOS, target symbols, then PAD; T = S + 1
    tgt_out      (B, T)  decoder target: target symbols, EOS, then PAD (loss: ignore_index=PAD)
    tgt_lengths  (B,)    target length + 1: the non-PAD positions of tgt_in and of tgt_out
    """

    src: np.ndarray
    src_lengths: np.ndarray
    tgt_in: np.ndarray
    tgt_out: np.ndarray
    tgt_lengths: np.ndarray


@dataclass(frozen=True)
class SeqTask:
    """A synthetic sequence-to-sequence task over ``alphabet_size`` symbols.

    name: "copy" (target = source), "reverse" (target = source reversed) or "sort" (target =
    source sorted ascending). Source lengths are drawn uniformly from [min_len, max_len]; the
    symbols uniformly from the alphabet. Ids: PAD=0, BOS=1, EOS=2, symbol k -> 3 + k, so the
    vocabulary (shared by source and target) has ``vocab_size = 3 + alphabet_size`` ids.
    """

    name: str
    alphabet_size: int = 10
    min_len: int = 1
    max_len: int = 12

    def __post_init__(self):
        if not isinstance(self.name, str) or self.name not in TASKS:
            raise ValueError(f"name: expected one of {', '.join(map(repr, TASKS))}, got {self.name!r}")
        _check_pos_int("alphabet_size", self.alphabet_size)
        _check_pos_int("min_len", self.min_len)
        _check_pos_int("max_len", self.max_len)
        if self.max_len < self.min_len:
            raise ValueError(
                f"max_len: expected max_len >= min_len = {self.min_len}, got {self.max_len}"
            )

    @property
    def vocab_size(self) -> int:
        """Number of ids: the 3 special tokens plus the alphabet."""
        return N_SPECIAL + self.alphabet_size

    @property
    def max_src_len(self) -> int:
        """The longest source S a batch can have."""
        return self.max_len

    @property
    def max_tgt_len(self) -> int:
        """The longest decoder sequence T a batch can have (target + BOS/EOS)."""
        return self.max_len + 1

    def target(self, src: np.ndarray) -> np.ndarray:
        """The answer for one unpadded source sequence of ids (1-D): copied, reversed or sorted."""
        src = np.asarray(src)
        if self.name == "copy":
            return src.copy()
        if self.name == "reverse":
            return src[::-1].copy()
        return np.sort(src, kind="stable")

    def sample_batch(self, batch_size: int, rng: np.random.Generator) -> SeqBatch:
        """Draw ``batch_size`` random problems, padded into a ``SeqBatch``.

        Draws, in this order: the lengths (B,) then the symbols (B, S), both with
        ``rng.integers``, so a seeded Generator gives the same batches every run.
        """
        batch_size = _check_pos_int("batch_size", batch_size)
        _check_generator("rng", rng)
        lengths = rng.integers(self.min_len, self.max_len + 1, size=batch_size)  # (B,)
        s = int(lengths.max())
        symbols = rng.integers(N_SPECIAL, self.vocab_size, size=(batch_size, s))  # (B, S)
        valid = np.arange(s)[None, :] < lengths[:, None]  # (B, S) bool
        src = np.where(valid, symbols, PAD).astype(np.int64)  # (B, S)

        t = s + 1
        tgt_in = np.full((batch_size, t), PAD, dtype=np.int64)  # (B, T)
        tgt_out = np.full((batch_size, t), PAD, dtype=np.int64)  # (B, T)
        for b in range(batch_size):
            n = int(lengths[b])
            answer = self.target(src[b, :n])  # (n,)
            tgt_in[b, 0] = BOS
            tgt_in[b, 1 : n + 1] = answer
            tgt_out[b, :n] = answer
            tgt_out[b, n] = EOS
        lengths = lengths.astype(np.int64)
        return SeqBatch(src, lengths, tgt_in, tgt_out, lengths + 1)

    def decode(self, ids, *, strip_special: bool = True) -> str:
        """Show a sequence of ids as a string: symbols as 0-9a-zA-Z (or "<k>" past 62).

        With ``strip_special`` (the default) BOS and PAD are skipped and decoding stops at the
        first EOS, so ``decode(tgt_out[b]) == decode(tgt_in[b])`` is the answer. Without it,
        PAD, BOS and EOS show as "_", "^" and "$".
        """
        arr = np.asarray(ids)
        if arr.size == 0:
            return ""
        check_int("ids", arr, ndim=1, low=0, high=self.vocab_size)
        out = []
        for i in arr.tolist():
            if i < N_SPECIAL:
                if not strip_special:
                    out.append(_SPECIAL_CHARS[i])
                elif i == EOS:
                    break
                continue
            k = i - N_SPECIAL
            out.append(_SYMBOL_CHARS[k] if self.alphabet_size <= len(_SYMBOL_CHARS) else f"<{k}>")
        return "".join(out)

    def encode(self, text: str) -> np.ndarray:
        """The inverse of ``decode`` for plain symbols: "3141" -> ids (int64, (len(text),)).

        Only for alphabets of at most 62 symbols; a character outside the alphabet -> ValueError.
        """
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        if self.alphabet_size > len(_SYMBOL_CHARS):
            raise ValueError(
                f"text: encode supports alphabets of at most {len(_SYMBOL_CHARS)} symbols, "
                f"this task has {self.alphabet_size}"
            )
        alphabet = _SYMBOL_CHARS[: self.alphabet_size]
        ids = np.empty(len(text), dtype=np.int64)
        for pos, ch in enumerate(text):
            k = alphabet.find(ch)
            if k < 0:
                raise ValueError(
                    f"text: character {ch!r} at position {pos} is not in the task's alphabet "
                    f"{alphabet!r}"
                )
            ids[pos] = N_SPECIAL + k
        return ids


def make_task(name: str, alphabet_size: int = 10, min_len: int = 1, max_len: int = 12) -> SeqTask:
    """Build the synthetic task ``name`` ("copy", "reverse" or "sort"); see ``SeqTask``."""
    return SeqTask(name, alphabet_size, min_len, max_len)


def _until_eos(row) -> tuple[np.ndarray, bool]:
    """The ids of a 1-D row before its first EOS, and whether there was an EOS."""
    row = np.asarray(row)
    hits = np.flatnonzero(row == EOS)
    if hits.size == 0:
        return row, False
    return row[: hits[0]], True


def exact_match(pred, tgt_out) -> np.ndarray:
    """Per-row exact match: (B,) bool.

    Row b is right when the prediction contains an EOS and its ids before the first EOS equal
    the target's ids before the target's EOS. Whatever follows the EOS is ignored, so both a
    greedy decode (stopped at EOS, padded) and the argmax of teacher-forced logits work.

    Args:
        pred: (B, T') integer array, or a list of B 1-D integer sequences of any lengths (the
            decoder's output, without the leading BOS).
        tgt_out: (B, T) integer array, as in ``SeqBatch.tgt_out`` (target, EOS, PAD).
    """
    check_int("tgt_out", tgt_out, ndim=2)
    if isinstance(pred, np.ndarray):
        check_int("pred", pred, ndim=2)
    elif not isinstance(pred, (list, tuple)):
        raise TypeError(
            f"pred: expected an integer ndarray or a list of sequences, got {type(pred).__name__}"
        )
    if len(pred) != tgt_out.shape[0]:
        raise ValueError(f"pred: expected {tgt_out.shape[0]} rows (one per row of tgt_out), got {len(pred)}")
    out = np.zeros(tgt_out.shape[0], dtype=bool)
    for b in range(tgt_out.shape[0]):
        want, _ = _until_eos(tgt_out[b])
        got, has_eos = _until_eos(pred[b])
        out[b] = has_eos and got.shape == want.shape and bool(np.all(got == want))
    return out


def exact_match_accuracy(pred, tgt_out) -> float:
    """Fraction of rows predicted exactly (see ``exact_match``), a float in [0, 1]."""
    return float(exact_match(pred, tgt_out).mean())
