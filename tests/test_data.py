"""Tests for refsparse.data: tokenizer, corpus, splits, LM batches and the synthetic seq2seq tasks."""

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refsparse.data import (
    BOS,
    EOS,
    N_SPECIAL,
    PAD,
    TASKS,
    CharTokenizer,
    SeqTask,
    builtin_corpus,
    exact_match,
    exact_match_accuracy,
    get_lm_batch,
    lm_eval_batches,
    load_text,
    make_task,
    split_train_val,
    unigram_entropy,
)

# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def test_tokenizer_vocab_is_sorted_set():
    tok = CharTokenizer.from_text("hello world")
    assert tok.chars == " dehlorw"
    assert tok.vocab_size == 8 == len(tok)


def test_tokenizer_round_trip_and_dtype():
    text = "The quick brown fox — jumps over ‘the’ lazy dog.\n\tÄß…"
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    assert ids.dtype == np.int64 and ids.shape == (len(text),)
    assert ids.min() >= 0 and ids.max() < tok.vocab_size
    assert tok.decode(ids) == text
    assert tok.decode(ids.tolist()) == text  # plain lists work too
    # the id of a character is its index in chars
    assert [tok.chars[i] for i in ids] == list(text)


@given(st.text(min_size=1, max_size=200))
def test_tokenizer_round_trip_any_text(text):
    tok = CharTokenizer.from_text(text)
    assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == len(set(text))


def test_tokenizer_empty_strings():
    tok = CharTokenizer.from_text("ab")
    assert tok.encode("").shape == (0,) and tok.encode("").dtype == np.int64
    assert tok.decode(np.zeros(0, dtype=np.int64)) == ""
    assert tok.decode([]) == ""


def test_tokenizer_unsorted_vocabulary_given_explicitly():
    tok = CharTokenizer("zax")
    assert tok.encode("xaz").tolist() == [2, 1, 0]
    assert tok.decode([0, 1, 2]) == "zax"


def test_tokenizer_unknown_character_error():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError) as e:
        tok.encode("abcab?c")
    msg = str(e.value)
    assert "'?'" in msg and "position 5" in msg and "not in the vocabulary" in msg


def test_tokenizer_unknown_character_lists_all_distinct_unknowns():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"'x'.*position 1.*'x', 'y'"):
        tok.encode("axbyx")


def test_tokenizer_json_round_trip_exact():
    tok = CharTokenizer.from_text(builtin_corpus())
    d = tok.to_json()
    again = CharTokenizer.from_json(json.loads(json.dumps(d)))
    assert again == tok and again.chars == tok.chars
    assert CharTokenizer.from_json(json.dumps(d)) == tok  # a JSON string is accepted too
    text = builtin_corpus()[:5000]
    np.testing.assert_array_equal(again.encode(text), tok.encode(text))


def test_tokenizer_json_round_trip_odd_characters():
    tok = CharTokenizer(["\x00", "\n", '"', "\\", "\u2028", "\U0001f600", "é"])
    again = CharTokenizer.from_json(json.loads(json.dumps(tok.to_json())))
    assert again.chars == tok.chars


def test_tokenizer_errors():
    with pytest.raises(ValueError, match="distinct"):
        CharTokenizer("aba")
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer("")
    with pytest.raises(ValueError, match="one-character"):
        CharTokenizer(["a", "bc"])
    with pytest.raises(TypeError, match="chars"):
        CharTokenizer(123)
    with pytest.raises(ValueError, match="text"):
        CharTokenizer.from_text("")
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(TypeError, match="text"):
        tok.encode(b"abc")
    with pytest.raises(ValueError, match="ids"):
        tok.decode([0, 3])
    with pytest.raises(ValueError, match="ids"):
        tok.decode([-1])
    with pytest.raises(TypeError, match="ids"):
        tok.decode(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="ids"):
        tok.decode(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="kind"):
        CharTokenizer.from_json({"kind": "bpe", "version": 1, "chars": "ab"})
    with pytest.raises(ValueError, match="missing"):
        CharTokenizer.from_json({"kind": "char"})
    with pytest.raises(ValueError, match="JSON"):
        CharTokenizer.from_json("{not json")


def test_unigram_entropy():
    assert unigram_entropy(np.array([3, 3, 3])) == 0.0
    assert unigram_entropy(np.array([0, 1, 0, 1])) == pytest.approx(math.log(2))
    assert unigram_entropy(np.arange(8)) == pytest.approx(math.log(8))
    ids = np.array([0, 0, 0, 1])
    assert unigram_entropy(ids) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    # only the frequencies matter, not which ids
    assert unigram_entropy(np.array([7, 7, 7, 100])) == pytest.approx(unigram_entropy(ids))
    with pytest.raises(ValueError, match="ids"):
        unigram_entropy(np.zeros(0, dtype=np.int64))
    with pytest.raises(TypeError, match="ids"):
        unigram_entropy([0, 1])


# --------------------------------------------------------------------------------------------
# Corpus and text files
# --------------------------------------------------------------------------------------------


def test_builtin_corpus_size_and_determinism():
    from pydoc_data.topics import topics

    text = builtin_corpus()
    assert isinstance(text, str)
    assert len(text.encode("utf-8")) > 400_000
    assert text == builtin_corpus.__wrapped__()  # rebuilt from scratch: identical
    # topics in sorted key order, one blank line between them, no trailing newline
    keys = sorted(topics)
    first, second = topics[keys[0]].rstrip("\n"), topics[keys[1]].rstrip("\n")
    assert text.startswith(first + "\n\n" + second + "\n\n")
    assert text.endswith(topics[keys[-1]].rstrip("\n"))
    # a language-model-sized vocabulary, and a non-trivial entropy yardstick
    tok = CharTokenizer.from_text(text)
    assert 60 < tok.vocab_size < 200
    assert 2.0 < unigram_entropy(tok.encode(text)) < 4.5


def test_load_text_round_trip(tmp_path):
    p = tmp_path / "t.txt"
    content = "héllo\r\nwörld — ok\n"
    p.write_bytes(content.encode("utf-8"))
    assert load_text(p) == content  # exact: no newline translation
    assert load_text(str(p)) == content
    p.write_bytes(b"\xef\xbb\xbfabc")  # a UTF-8 BOM is dropped
    assert load_text(p) == "abc"


def test_load_text_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_text(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="directory"):
        load_text(tmp_path)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"line one\ncaf\xe9\n")
    with pytest.raises(ValueError, match=r"not UTF-8.*0xe9.*offset 12.*line 2"):
        load_text(bad)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_text(empty)
    with pytest.raises(TypeError, match="path"):
        load_text(42)


# --------------------------------------------------------------------------------------------
# Train / validation split
# --------------------------------------------------------------------------------------------


def test_split_train_val_deterministic_and_contiguous():
    ids = np.arange(1000, dtype=np.int64)
    train, val = split_train_val(ids, 0.1)
    assert train.shape == (900,) and val.shape == (100,)
    np.testing.assert_array_equal(np.concatenate([train, val]), ids)
    train2, val2 = split_train_val(ids, 0.1)
    np.testing.assert_array_equal(train, train2)
    np.testing.assert_array_equal(val, val2)
    # default fraction is 0.1
    assert split_train_val(ids)[1].shape == (100,)


def test_split_train_val_never_empty():
    train, val = split_train_val(np.array([5, 6]), 0.01)
    assert train.tolist() == [5] and val.tolist() == [6]
    train, val = split_train_val(np.array([5, 6, 7]), 0.99)
    assert train.tolist() == [5] and val.tolist() == [6, 7]


def test_split_train_val_errors():
    with pytest.raises(ValueError, match="val_fraction"):
        split_train_val(np.arange(10), 0.0)
    with pytest.raises(ValueError, match="val_fraction"):
        split_train_val(np.arange(10), 1.0)
    with pytest.raises(TypeError, match="val_fraction"):
        split_train_val(np.arange(10), "0.1")
    with pytest.raises(ValueError, match="at least 2"):
        split_train_val(np.arange(1), 0.5)
    with pytest.raises(TypeError, match="ids"):
        split_train_val(np.arange(10.0), 0.1)
    with pytest.raises(ValueError, match="ids"):
        split_train_val(np.zeros((2, 5), dtype=np.int64), 0.1)


# --------------------------------------------------------------------------------------------
# LM batches
# --------------------------------------------------------------------------------------------


def test_get_lm_batch_shapes_dtypes_shift():
    data = np.arange(500, dtype=np.int64)  # ids equal to positions: windows are visible
    x, y = get_lm_batch(data, 8, 32, np.random.default_rng(0))
    assert x.shape == y.shape == (8, 32)
    assert x.dtype == y.dtype == np.int64
    np.testing.assert_array_equal(y, x + 1)  # y is the next token
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    # each row is a contiguous window of data
    np.testing.assert_array_equal(np.diff(x, axis=1), 1)
    assert x.min() >= 0 and y.max() <= 499


def test_get_lm_batch_from_int32_data_gives_int64():
    data = np.arange(100, dtype=np.int32)
    x, y = get_lm_batch(data, 2, 5, np.random.default_rng(0))
    assert x.dtype == y.dtype == np.int64


def test_get_lm_batch_deterministic_under_seed():
    text = builtin_corpus()[:20000]
    data = CharTokenizer.from_text(text).encode(text)
    a = get_lm_batch(data, 4, 64, np.random.default_rng(7))
    b = get_lm_batch(data, 4, 64, np.random.default_rng(7))
    c = get_lm_batch(data, 4, 64, np.random.default_rng(8))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_get_lm_batch_reaches_both_ends():
    # with N = T + 1 there is exactly one window; with N = T + 2 both offsets 0 and 1 appear
    data = np.arange(11, dtype=np.int64)
    x, y = get_lm_batch(data, 3, 10, np.random.default_rng(0))
    np.testing.assert_array_equal(x, np.tile(np.arange(10), (3, 1)))
    np.testing.assert_array_equal(y, np.tile(np.arange(1, 11), (3, 1)))
    x, _ = get_lm_batch(np.arange(12), 200, 10, np.random.default_rng(0))
    assert set(x[:, 0].tolist()) == {0, 1}


def test_get_lm_batch_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"data.*seq_len \+ 1 = 11.*got 10"):
        get_lm_batch(np.arange(10), 2, 10, rng)
    with pytest.raises(TypeError, match="rng"):
        get_lm_batch(np.arange(100), 2, 10, 0)
    with pytest.raises(TypeError, match="rng"):
        get_lm_batch(np.arange(100), 2, 10, np.random.RandomState(0))
    with pytest.raises(ValueError, match="batch_size"):
        get_lm_batch(np.arange(100), 0, 10, rng)
    with pytest.raises(TypeError, match="seq_len"):
        get_lm_batch(np.arange(100), 2, 10.0, rng)
    with pytest.raises(TypeError, match="data"):
        get_lm_batch(list(range(100)), 2, 10, rng)


def test_lm_eval_batches_cover_windows_in_order():
    data = np.arange(103, dtype=np.int64)  # (103 - 1) // 10 = 10 windows
    batches = list(lm_eval_batches(data, 4, 10))
    assert [x.shape for x, _ in batches] == [(4, 10), (4, 10), (2, 10)]
    xs = np.concatenate([x for x, _ in batches])
    ys = np.concatenate([y for _, y in batches])
    assert xs.dtype == ys.dtype == np.int64
    np.testing.assert_array_equal(xs.ravel(), np.arange(100))
    np.testing.assert_array_equal(ys, xs + 1)
    # deterministic
    again = list(lm_eval_batches(data, 4, 10))
    for (x1, y1), (x2, y2) in zip(batches, again):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


def test_lm_eval_batches_max_batches_and_exact_fit():
    data = np.arange(101, dtype=np.int64)  # exactly 10 windows, all targets used
    batches = list(lm_eval_batches(data, 5, 10))
    assert len(batches) == 2 and batches[-1][1][-1, -1] == 100
    assert len(list(lm_eval_batches(data, 3, 10, max_batches=2))) == 2
    assert len(list(lm_eval_batches(data, 3, 10, max_batches=100))) == 4


def test_lm_eval_batches_errors_at_call_time():
    with pytest.raises(ValueError, match="data"):
        lm_eval_batches(np.arange(5), 2, 10)  # raised before any next()
    with pytest.raises(ValueError, match="max_batches"):
        lm_eval_batches(np.arange(50), 2, 10, max_batches=0)


# --------------------------------------------------------------------------------------------
# Synthetic seq2seq tasks
# --------------------------------------------------------------------------------------------


def _rows(batch):
    """Yield (source, answer) per row, unpadded, using the lengths."""
    for b in range(batch.src.shape[0]):
        n = int(batch.src_lengths[b])
        yield batch.src[b, :n], batch.tgt_out[b, :n]


@pytest.mark.parametrize("name", TASKS)
def test_task_batch_layout(name):
    task = make_task(name, alphabet_size=10, min_len=1, max_len=12)
    batch = task.sample_batch(256, np.random.default_rng(0))
    B = 256
    S = batch.src.shape[1]
    assert batch.src.shape == (B, S) and batch.tgt_in.shape == batch.tgt_out.shape == (B, S + 1)
    for a in batch:
        assert a.dtype == np.int64
    L = batch.src_lengths
    assert L.shape == (B,) and batch.tgt_lengths.shape == (B,)
    assert L.min() >= 1 and L.max() <= 12 and S == L.max()
    assert len(np.unique(L)) > 5  # variable lengths
    np.testing.assert_array_equal(batch.tgt_lengths, L + 1)
    pos = np.arange(S + 1)[None, :]
    # source: symbols up to the length, then PAD
    assert np.all((batch.src != PAD) == (pos[:, :S] < L[:, None]))
    assert np.all(batch.src[batch.src != PAD] >= N_SPECIAL)
    assert batch.src.max() < task.vocab_size == 13
    # decoder input: BOS, symbols, PAD
    assert np.all(batch.tgt_in[:, 0] == BOS)
    assert np.all((batch.tgt_in != PAD) == (pos < batch.tgt_lengths[:, None]))
    # decoder target: symbols, EOS at position length, PAD after
    assert np.all(batch.tgt_out[np.arange(B), L] == EOS)
    assert np.all((batch.tgt_out == EOS).sum(axis=1) == 1)
    assert np.all((batch.tgt_out != PAD) == (pos < batch.tgt_lengths[:, None]))
    assert not np.any(np.isin(batch.tgt_out[pos < L[:, None]], (PAD, BOS, EOS)))
    # teacher forcing: tgt_in is tgt_out shifted right by one behind BOS
    np.testing.assert_array_equal(batch.tgt_in[:, 1:][pos[:, 1:] <= L[:, None]],
                                  batch.tgt_out[:, :-1][pos[:, 1:] <= L[:, None]])


def test_task_reverse_is_reverse():
    batch = make_task("reverse").sample_batch(128, np.random.default_rng(1))
    for src, ans in _rows(batch):
        np.testing.assert_array_equal(ans, src[::-1])


def test_task_sort_is_sorted():
    batch = make_task("sort").sample_batch(128, np.random.default_rng(2))
    for src, ans in _rows(batch):
        assert np.all(np.diff(ans) >= 0)
        np.testing.assert_array_equal(ans, np.sort(src))


def test_task_copy_is_copy():
    batch = make_task("copy").sample_batch(128, np.random.default_rng(3))
    for src, ans in _rows(batch):
        np.testing.assert_array_equal(ans, src)


def test_task_all_symbols_used_and_lengths_bounded():
    task = make_task("copy", alphabet_size=5, min_len=3, max_len=4)
    batch = task.sample_batch(500, np.random.default_rng(4))
    assert set(batch.src_lengths.tolist()) == {3, 4}
    assert set(batch.src[batch.src != PAD].tolist()) == set(range(N_SPECIAL, N_SPECIAL + 5))
    assert batch.src.shape[1] <= task.max_src_len and batch.tgt_out.shape[1] <= task.max_tgt_len


def test_task_fixed_length():
    batch = make_task("reverse", min_len=6, max_len=6).sample_batch(10, np.random.default_rng(0))
    assert batch.src.shape == (10, 6) and np.all(batch.src != PAD)
    assert np.all(batch.tgt_out[:, 6] == EOS)


def test_task_deterministic_under_seed():
    task = make_task("sort")
    a = task.sample_batch(32, np.random.default_rng(5))
    b = task.sample_batch(32, np.random.default_rng(5))
    c = task.sample_batch(32, np.random.default_rng(6))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert a.src.shape != c.src.shape or not np.array_equal(a.src, c.src)


def test_task_decode_encode():
    task = make_task("reverse")
    batch = task.sample_batch(16, np.random.default_rng(0))
    for b in range(16):
        src = task.decode(batch.src[b])
        ans = task.decode(batch.tgt_out[b])
        assert ans == src[::-1] == task.decode(batch.tgt_in[b])
        assert len(src) == batch.src_lengths[b]
        np.testing.assert_array_equal(task.encode(src), batch.src[b, : len(src)])
    assert task.decode([BOS, 3, 4, 12, EOS, PAD], strip_special=False) == "^019$_"
    assert task.decode([3, 4, EOS, 5]) == "01"  # stops at EOS
    big = make_task("copy", alphabet_size=100)
    assert big.decode([N_SPECIAL + 0, N_SPECIAL + 99]) == "<0><99>"
    with pytest.raises(ValueError, match="alphabet"):
        task.encode("01a")
    with pytest.raises(ValueError, match="ids"):
        task.decode([13])


def test_exact_match():
    task = make_task("reverse")
    batch = task.sample_batch(8, np.random.default_rng(0))
    # the targets themselves are a perfect prediction
    assert exact_match_accuracy(batch.tgt_out, batch.tgt_out) == 1.0
    # garbage after EOS is ignored (argmax of teacher-forced logits)
    noisy = batch.tgt_out.copy()
    noisy[noisy == PAD] = 5
    assert exact_match(noisy, batch.tgt_out).all()
    # ragged lists of greedy decodes
    preds = [list(row[: int(n) + 1]) for row, n in zip(batch.tgt_out, batch.src_lengths)]
    assert exact_match_accuracy(preds, batch.tgt_out) == 1.0
    # one wrong symbol, one missing EOS, one too short, one too long
    wrong = [p.copy() for p in preds]
    wrong[0][0] = N_SPECIAL if wrong[0][0] != N_SPECIAL else N_SPECIAL + 1
    wrong[1] = wrong[1][:-1]
    wrong[2] = wrong[2][1:]
    wrong[3] = wrong[3][:-1] + [N_SPECIAL, EOS]
    got = exact_match(wrong, batch.tgt_out)
    assert got.tolist() == [False] * 4 + [True] * 4
    assert exact_match_accuracy(wrong, batch.tgt_out) == 0.5


def test_exact_match_errors():
    tgt = np.array([[3, EOS]])
    with pytest.raises(ValueError, match="pred.*1 rows"):
        exact_match(np.array([[3, EOS], [3, EOS]]), tgt)
    with pytest.raises(TypeError, match="pred"):
        exact_match("3", tgt)
    with pytest.raises(ValueError, match="tgt_out"):
        exact_match([[3, EOS]], np.array([3, EOS]))


def test_task_errors():
    with pytest.raises(ValueError) as e:
        make_task("transpose")
    assert "'copy', 'reverse', 'sort'" in str(e.value) and "'transpose'" in str(e.value)
    with pytest.raises(ValueError, match="max_len"):
        make_task("copy", min_len=5, max_len=4)
    with pytest.raises(ValueError, match="min_len"):
        make_task("copy", min_len=0)
    with pytest.raises(ValueError, match="alphabet_size"):
        make_task("copy", alphabet_size=0)
    with pytest.raises(TypeError, match="max_len"):
        make_task("copy", max_len=12.0)
    with pytest.raises(ValueError, match="name"):
        SeqTask("Copy")
    task = make_task("copy")
    with pytest.raises(TypeError, match="rng"):
        task.sample_batch(4, 0)
    with pytest.raises(ValueError, match="batch_size"):
        task.sample_batch(0, np.random.default_rng(0))


def test_split_train_val_in_pieces():
    ids = np.arange(1000)
    train, val = split_train_val(ids, 0.1, pieces=10)
    assert train.size == 900 and val.size == 100
    # the last 10 tokens of each tenth are validation, in order
    assert np.array_equal(val, np.concatenate([np.arange(k * 100 + 90, k * 100 + 100) for k in range(10)]))
    assert np.array_equal(np.sort(np.concatenate([train, val])), ids)  # a partition
    assert np.array_equal(split_train_val(ids, 0.1, pieces=1)[1], ids[900:])
    with pytest.raises(ValueError, match="ids"):
        split_train_val(np.arange(5), 0.1, pieces=3)
    with pytest.raises(ValueError, match="pieces"):
        split_train_val(ids, 0.1, pieces=0)
