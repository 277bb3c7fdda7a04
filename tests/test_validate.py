"""Golden vectors and the checker: refsparse.vectors, refsparse.validate, `refsparse vectors`.

- every op exports, writes, reads back and checks against a second export bit for bit;
  the names follow the convention (input./param./grad_output/output/grad.) and every float
  input and parameter has a gradient of its shape;
- a candidate one ULP off in one entry of one tensor fails at max_ulp=0, naming that tensor;
- ULP distances are exact on the integer views (float32 and float64, signs, zeros, inf, NaN);
- missing / extra tensors, shape and dtype mismatches are reported, never raised;
- the stored CSR arrays mean what the conventions say (sparse attention = dense attention
  with the pattern as its mask; a sparse weight = its dense twin);
- the CLI: clear one-line errors and exit 2 for bad input, exit 1 for a failed check, no
  traceback.
"""

import json
import math
import os

import numpy as np
import pytest
import scipy.sparse as sp
from safetensors.numpy import save_file

from refsparse import functional as F
from refsparse import vectors
from refsparse.cli import main
from refsparse.validate import Report, compare, default_tolerances, load, ulp_distance

OPS = vectors.op_names()
# inputs that are not differentiable: ids, targets, masks, dropout's mask, CSR arrays
NON_DIFF = ("input.ids", "input.src", "input.tgt", "input.targets", "input.labels", "input.mask",
            "input.keep")
# results besides the output and the gradients (the loss-level presets: logits, AdamW losses)
EXTRA_OUTPUTS = ("logits", "steps.loss")


def _is_index(name):
    return name.endswith((".indptr", ".indices"))


@pytest.fixture(scope="module")
def exported():
    """Every op's export at the default sizes, float64, seed 0 (computed once)."""
    return {op: vectors.export(op) for op in OPS}


# ----------------------------------------------------------------------------------------
# export → check against itself


def test_the_op_list_covers_the_issue():
    needed = ["linear", "embedding", "positional", "layernorm", "relu", "gelu", "gelu_tanh", "dropout",
              "softmax", "attention", "split_heads", "merge_heads", "cross_entropy", "residual",
              "nn.Linear", "nn.LayerNorm", "nn.MultiHeadAttention", "nn.FeedForward", "nn.EncoderLayer",
              "nn.DecoderLayer", "model.DecoderLM", "model.Transformer"]
    needed += [f"sparse_attention.{f}" for f in ("local", "dilated", "strided", "fixed", "global",
                                                  "random", "bigbird", "block_sparse")]
    missing = [op for op in needed if op not in OPS]
    assert not missing, missing
    assert "sparse_linear" in OPS and "nn.SparseLinear" in OPS


@pytest.mark.parametrize("op", OPS)
def test_export_check_against_itself(op, exported, tmp_path):
    tensors, meta = exported[op]
    ref, cand = tmp_path / "ref.safetensors", tmp_path / "cand.safetensors"
    vectors.write(ref, op)
    vectors.write(cand, op)  # a second, independent export: deterministic from the seed
    report = compare(ref, cand, rtol=0, atol=0, max_ulp=0)
    assert report.ok, str(report)
    assert {r.name for r in report.results} == set(tensors)

    # what was written is what export returned, metadata included
    back, back_meta = load(ref)
    assert back_meta == meta
    assert compare(tensors, back, rtol=0, atol=0, max_ulp=0).ok

    # the names follow the convention, and every float input and parameter has its gradient
    assert meta["op"] == op and meta["dtype"] == "float64" and meta["seed"] == "0"
    assert "output" in tensors and "grad_output" in tensors
    assert tensors["grad_output"].shape == tensors["output"].shape
    for name, t in tensors.items():
        known = name.startswith(("input.", "param.", "grad.")) or name in ("output", "grad_output")
        assert known or name in EXTRA_OUTPUTS, name
        assert t.flags.c_contiguous
        if _is_index(name):
            assert t.dtype == np.int64, name
        elif name.startswith(("input.", "param.")) and name not in NON_DIFF:
            assert t.dtype == np.float64, name
            g = tensors.get("grad." + name)
            assert g is not None, f"{op}: no gradient for {name}"
            assert g.shape == t.shape and g.dtype == t.dtype, name
        if name.startswith("grad."):
            assert name[5:] in tensors, f"{op}: {name} has no tensor it is the gradient of"
            assert np.all(np.isfinite(t)), name
    assert json.loads(meta["shapes"]) == {k: [list(v.shape), str(v.dtype)] for k, v in tensors.items()}
    conventions = json.loads(meta["conventions"])
    info = {i.name: i for i in vectors.ops()}[op]
    assert ("loss_gradients" if info.loss else "gradients") in conventions
    if any(n.startswith("input.pattern") for n in tensors):
        assert "pattern" in conventions and meta["pattern"]


@pytest.mark.parametrize("op", OPS)
def test_one_ulp_in_one_tensor_is_caught_and_named(op, exported):
    tensors, _ = exported[op]
    floats = sorted(n for n, t in tensors.items() if t.dtype.kind == "f" and t.size)
    name = floats[sum(map(ord, op)) % len(floats)]  # a different tensor for different ops
    cand = dict(tensors)
    bad = tensors[name].copy()
    i = bad.size // 2
    bad.flat[i] = np.nextafter(bad.flat[i], np.inf)
    cand[name] = bad

    report = compare(tensors, cand, max_ulp=0)  # default rtol/atol, zero ULP
    assert not report.ok
    assert [r.name for r in report.failures] == [name]
    assert report[name].max_ulp == 1
    assert name in str(report) and "FAIL" in str(report)
    assert compare(tensors, cand).ok  # one ULP is well within the default rtol/atol


@pytest.mark.parametrize("op,options", [
    ("sparse_attention", {"pattern": "local:window=3+global:indices=0"}),
    ("attention", {"mask": "none"}),
    ("nn.MultiHeadAttention", {"pattern": "strided:stride=4"}),
    ("nn.EncoderLayer", {"norm_first": True, "activation": "gelu_tanh", "pattern": "fixed:block=4,c=1"}),
    ("nn.DecoderLayer", {"pattern": "local:window=3"}),
    ("model.Transformer", {"pattern": "local:window=3"}),
    ("model.DecoderLM", {"pattern": "bigbird:block=2,window_blocks=3,global_blocks=1,random_blocks=1"}),
])
def test_options_export_and_recompute(op, options):
    tensors, meta = vectors.export(op, options=options, T=8, S=6)
    assert json.loads(meta["options"])[next(iter(options))] == next(iter(options.values()))
    again = vectors.recompute(tensors, meta)
    assert compare({k: tensors[k] for k in again}, again, rtol=0, atol=0, max_ulp=0).ok


def test_float32_export_rounds_the_float64_inputs():
    t64, _ = vectors.export("layernorm", dtype="float64", seed=3)
    t32, m32 = vectors.export("layernorm", dtype="float32", seed=3)
    assert m32["dtype"] == "float32"
    assert all(t.dtype == np.float32 for t in t32.values())
    np.testing.assert_array_equal(t32["input.x"], t64["input.x"].astype(np.float32))
    r = compare({"output": t64["output"].astype(np.float32)}, {"output": t32["output"]})
    assert r.ok, str(r)  # float32 computation within float32 tolerances of float64's


def test_a_different_seed_gives_different_vectors():
    a, _ = vectors.export("gelu", seed=0)
    b, _ = vectors.export("gelu", seed=1)
    assert not compare(a, b).ok


def test_export_errors_name_the_argument():
    with pytest.raises(ValueError, match="unknown op"):
        vectors.export("nope")
    with pytest.raises(ValueError, match="dtype"):
        vectors.export("gelu", dtype="float16")
    with pytest.raises(ValueError, match="no option 'foo'"):
        vectors.export("gelu", options={"foo": 1})
    with pytest.raises(ValueError, match="unknown size"):
        vectors.export("gelu", Q=3)
    with pytest.raises(ValueError, match="n_heads"):
        vectors.export("split_heads", d_model=10, n_heads=3)
    with pytest.raises(ValueError, match="per-head"):
        vectors.export("sparse_attention", options={"pattern": "strided:stride=4,per_head=true"})


# ----------------------------------------------------------------------------------------
# the stored arrays mean what the conventions say


@pytest.mark.parametrize("op", [o for o in OPS if o.startswith("sparse_attention")])
def test_sparse_attention_vectors_equal_dense_attention_with_the_pattern(op, exported):
    t, meta = exported[op]
    T = json.loads(meta["sizes"])["T"]
    p = sp.csr_array((np.ones(t["input.pattern.indices"].size, bool), t["input.pattern.indices"],
                      t["input.pattern.indptr"]), shape=(T, T))
    mask = p.toarray()
    out, cache = F.attention_forward(t["input.q"], t["input.k"], t["input.v"], mask=mask)
    grads = F.attention_backward(t["grad_output"], cache)
    for name, dense in [("output", out), *zip(("grad.input.q", "grad.input.k", "grad.input.v"), grads)]:
        r = compare({name: dense}, {name: t[name]}, rtol=1e-12, atol=1e-13)
        assert r.ok, f"{op}\n{r}"


@pytest.mark.parametrize("op", ["sparse_linear", "nn.SparseLinear"])
def test_sparse_weight_vectors_equal_the_dense_twin(op, exported):
    t, _ = exported[op]
    w = sp.csr_array((t["param.weight"], t["param.weight.indices"], t["param.weight.indptr"]),
                     shape=(t["grad.param.bias"].size, t["input.x"].shape[-1]))
    assert w.nnz == t["param.weight"].size and t["grad.param.weight"].shape == (w.nnz,)
    y, cache = F.linear_forward(t["input.x"], w.toarray(), t["param.bias"])
    dx, dw, db = F.linear_backward(t["grad_output"], cache)
    rows = np.repeat(np.arange(w.shape[0]), np.diff(w.indptr))
    dense = {"output": y, "grad.input.x": dx, "grad.param.weight": dw[rows, w.indices], "grad.param.bias": db}
    r = compare(dense, {k: t[k] for k in dense}, rtol=1e-12, atol=1e-13)
    assert r.ok, str(r)


def test_dropout_vectors_hold_their_mask(exported):
    t, meta = exported["dropout"]
    p = json.loads(meta["options"])["p"]
    keep = t["input.keep"]
    assert keep.dtype == np.bool_ and 0 < keep.mean() < 1
    s = 1.0 / (1.0 - p)  # as the conventions say: the scale is rounded first, then multiplies
    np.testing.assert_array_equal(t["output"], (t["input.x"] * keep) * s)
    np.testing.assert_array_equal(t["grad.input.x"], (t["grad_output"] * keep) * s)


def test_module_parameter_names_are_the_modules(exported):
    t, _ = exported["model.DecoderLM"]
    assert "param.blocks.0.self_attn.q_proj.weight" in t
    assert "grad.param.blocks.1.ff.linear2.bias" in t
    assert "param.tok_embed.weight" in t and "grad.input.ids" not in t


# ----------------------------------------------------------------------------------------
# ULP distance


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ulp_distance_is_exact(dtype):
    f = np.finfo(dtype)
    one = dtype(1)
    tiny = np.nextafter(dtype(0), dtype(1))  # the smallest subnormal
    cases = [
        (one, one, 0),
        (one, np.nextafter(one, dtype(2)), 1),
        (-one, np.nextafter(-one, dtype(-2)), 1),
        (dtype(0), dtype(-0.0), 0),
        (tiny, -tiny, 2),
        (dtype(0), tiny, 1),
        (f.max, dtype(np.inf), 1),
        (dtype(-np.inf), dtype(np.inf), None),  # checked below
        (dtype(2), dtype(1), 2 ** (f.nmant)),  # one binade: 2**nmant floats
        (dtype(np.nan), dtype(np.nan), 0),
    ]
    for a, b, want in cases:
        got = ulp_distance(np.array([a], dtype), np.array([b], dtype))[0]
        if want is not None:
            assert got == want, (dtype, a, b, got, want)
        assert got == ulp_distance(np.array([b], dtype), np.array([a], dtype))[0]  # symmetric
    # −max to +max: every finite float but one zero, counted without overflow
    n_pos = int(np.array(f.max, dtype).view(np.int64 if dtype == np.float64 else np.int32))
    assert ulp_distance(np.array([-f.max], dtype), np.array([f.max], dtype))[0] == 2 * n_pos
    assert ulp_distance(np.array([1.0], dtype), np.array([np.nan], dtype))[0] == np.iinfo(np.uint64).max
    with pytest.raises(TypeError):
        ulp_distance(np.zeros(2, np.float32), np.zeros(2, np.float64))


def test_default_tolerances_are_torchs():
    assert default_tolerances(np.float64) == (1e-7, 1e-7)
    assert default_tolerances(np.float32) == (1.3e-6, 1e-5)
    assert default_tolerances(np.int64) == (0.0, 0.0)


# ----------------------------------------------------------------------------------------
# mismatches are reported, not raised


def _ref():
    return {"output": np.linspace(-1, 1, 12).reshape(3, 4), "grad.input.x": np.ones(5),
            "input.ids": np.arange(4, dtype=np.int64)}


def test_missing_extra_shape_dtype_are_reported():
    ref = _ref()
    cand = {"output": ref["output"].reshape(4, 3), "grad.input.x": np.ones(5, np.float32),
            "extra.thing": np.zeros(2)}
    report = compare(ref, cand)
    assert isinstance(report, Report) and not report.ok
    assert report["output"].status == "shape" and "(3, 4)" in report["output"].message
    assert report["grad.input.x"].status == "dtype" and "float32" in report["grad.input.x"].message
    assert report["input.ids"].status == "missing"
    assert report["extra.thing"].status == "extra" and report["extra.thing"].passed
    text = str(report)
    for word in ("FAIL (shape)", "FAIL (dtype)", "FAIL (missing)", "extra", "0 of 3 tensors pass"):
        assert word in text, text
    # extra tensors alone do not fail a check
    assert compare(ref, {**ref, "extra": np.zeros(1)}).ok


def test_integers_must_match_exactly_and_nan_fails():
    ref = _ref()
    cand = {**ref, "input.ids": np.array([0, 1, 2, 4])}
    r = compare(ref, cand)
    assert not r.ok and r.failures[0].name == "input.ids" and "worst at (3,)" in r["input.ids"].message
    nan = ref["output"].copy()
    nan[1, 2] = np.nan
    r = compare(ref, {**ref, "output": nan})
    assert not r.ok and r["output"].max_abs == math.inf
    assert compare({"a": nan}, {"a": nan.copy()}, max_ulp=0).ok  # NaN where the reference has NaN


def test_only_selects_tensors():
    ref = _ref()
    cand = {"output": ref["output"].copy()}
    assert not compare(ref, cand).ok
    r = compare(ref, cand, only=["output", "grad.*"], max_ulp=0)
    assert not r.ok and [f.name for f in r.failures] == ["grad.input.x"]
    assert compare(ref, cand, only="output").ok


def test_tolerances_apply():
    ref = {"y": np.array([1.0, 100.0])}
    cand = {"y": np.array([1.0 + 1e-6, 100.0])}
    assert not compare(ref, cand).ok
    assert compare(ref, cand, rtol=2e-6).ok
    assert compare(ref, cand, atol=2e-6).ok
    r = compare(ref, cand, rtol=1e-3, max_ulp=10)  # within rtol but > 10 ULPs
    assert not r.ok and "ULP" in r["y"].message


def test_compare_argument_errors():
    with pytest.raises(ValueError, match="rtol"):
        compare({}, {}, rtol=-1)
    with pytest.raises(ValueError, match="max_ulp"):
        compare({}, {}, max_ulp=1.5)
    with pytest.raises(TypeError, match="candidate"):
        compare({}, [1, 2])


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load(tmp_path / "absent.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_text("this is not a safetensors file")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load(bad)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load(empty)
    with pytest.raises(ValueError, match="directory"):
        load(tmp_path)
    with pytest.raises(FileNotFoundError, match="reference"):
        compare(tmp_path / "absent.safetensors", {})


# ----------------------------------------------------------------------------------------
# the command line


def _no_traceback(captured):
    assert "Traceback" not in captured.out and "Traceback" not in captured.err


@pytest.fixture
def ref_file(tmp_path):
    path = tmp_path / "ref.safetensors"
    assert main(["vectors", "export", "sparse_attention.local", "-o", str(path)]) == 0
    return path


def test_cli_export_check_pass(ref_file, tmp_path, capsys):
    cand = tmp_path / "cand.safetensors"
    assert main(["vectors", "export", "sparse_attention.local", "-o", str(cand)]) == 0
    assert main(["vectors", "check", str(ref_file), str(cand), "--max-ulp", "0"]) == 0
    out = capsys.readouterr().out
    assert "grad.input.q" in out and "OK: 10 of 10 tensors pass" in out


def test_cli_check_fails_on_one_ulp(ref_file, tmp_path, capsys):
    t, meta = load(ref_file)
    t["grad.input.k"] = t["grad.input.k"].copy()
    t["grad.input.k"].flat[7] = np.nextafter(t["grad.input.k"].flat[7], -np.inf)
    cand = tmp_path / "cand.safetensors"
    save_file(t, str(cand), metadata=meta)
    capsys.readouterr()
    assert main(["vectors", "check", str(ref_file), str(cand), "--max-ulp", "0"]) == 1
    out = capsys.readouterr().out
    assert "FAILED: 9 of 10" in out and "grad.input.k: 1 of" in out
    assert main(["vectors", "check", str(ref_file), str(cand)]) == 0  # default tolerances


def test_cli_missing_file(ref_file, tmp_path, capsys):
    code = main(["vectors", "check", str(ref_file), str(tmp_path / "absent.safetensors")])
    cap = capsys.readouterr()
    assert code == 2
    _no_traceback(cap)
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and "candidate: no such file" in lines[0]


def test_cli_not_safetensors(ref_file, tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 3 + b"not safetensors at all")
    for argv in (["vectors", "check", str(bad), str(ref_file)], ["vectors", "show", str(bad)]):
        code = main(argv)
        cap = capsys.readouterr()
        assert code == 2
        _no_traceback(cap)
        assert len(cap.err.strip().splitlines()) == 1 and "not a safetensors file" in cap.err


def test_cli_missing_tensor_shape_and_dtype(ref_file, tmp_path, capsys):
    t, _ = load(ref_file)
    del t["grad.input.v"]
    t["output"] = np.ascontiguousarray(t["output"][:, :, :-1])
    t["grad.input.q"] = t["grad.input.q"].astype(np.float32)
    cand = tmp_path / "cand.safetensors"
    save_file(t, str(cand))
    capsys.readouterr()
    code = main(["vectors", "check", str(ref_file), str(cand)])
    cap = capsys.readouterr()
    assert code == 1
    _no_traceback(cap)
    assert "grad.input.v: missing from the candidate" in cap.out
    assert "output: shape mismatch" in cap.out
    assert "grad.input.q: dtype mismatch: reference float64, candidate float32" in cap.out


def test_cli_bad_export(tmp_path, capsys):
    for argv, words in [
        (["vectors", "export", "nope", "-o", str(tmp_path / "x.safetensors")], "unknown op"),
        (["vectors", "export", "gelu", "-o", str(tmp_path / "no" / "x.safetensors")], "no such directory"),
        (["vectors", "export", "gelu", "--T", "0", "-o", str(tmp_path / "x.safetensors")], "T: expected"),
        (["vectors", "export", "sparse_attention", "--pattern", "bogus:1", "-o",
          str(tmp_path / "x.safetensors")], "unknown pattern"),
    ]:
        code = main(argv)
        cap = capsys.readouterr()
        assert code == 2, argv
        _no_traceback(cap)
        assert words in cap.err and len(cap.err.strip().splitlines()) == 1


def test_cli_list_show_and_options(tmp_path, capsys):
    assert main(["vectors", "list"]) == 0
    out = capsys.readouterr().out
    assert "sparse_attention.bigbird" in out and "model.DecoderLM" in out
    path = tmp_path / "ln.safetensors"
    assert main(["vectors", "export", "layernorm", "--dtype", "float32", "--seed", "4", "--T", "5",
                 "--d-model", "6", "--option", "eps=1e-3", "-o", str(path)]) == 0
    t, meta = load(path)
    assert t["input.x"].shape == (2, 5, 6) and t["output"].dtype == np.float32
    assert json.loads(meta["options"]) == {"eps": 1e-3} and meta["seed"] == "4"
    capsys.readouterr()
    assert main(["vectors", "show", str(path)]) == 0
    assert "op: layernorm" in capsys.readouterr().out
    assert main(["vectors"]) == 0  # no action: help


# ----------------------------------------------------------------------------------------
# bad inputs of `refsparse vectors` (issue 24's table): one line naming what is wrong, no traceback


def test_cli_export_to_a_directory_names_the_path(tmp_path, capsys):
    code = main(["vectors", "export", "layernorm", "-o", str(tmp_path)])
    cap = capsys.readouterr()
    assert code == 2
    _no_traceback(cap)
    assert len(cap.err.strip().splitlines()) == 1
    assert str(tmp_path) in cap.err and "is a directory" in cap.err


@pytest.mark.parametrize("error", ["full", "read-only"])
def test_cli_export_to_a_full_or_read_only_file_system_names_the_path(tmp_path, capsys, monkeypatch, error):
    """The write fails inside safetensors (injected: root ignores a read-only directory's
    mode here): one line naming the path and the OS error, and nothing left behind."""
    import errno

    import safetensors.numpy

    def failing_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:  # half a file, then the OS refuses
            f.write(b"\0" * 16)
        code = errno.ENOSPC if error == "full" else errno.EROFS
        raise OSError(code, os.strerror(code), filename)

    monkeypatch.setattr(safetensors.numpy, "save_file", failing_save_file)
    out = tmp_path / "ref.safetensors"
    code = main(["vectors", "export", "layernorm", "-o", str(out)])
    cap = capsys.readouterr()
    assert code == 2
    _no_traceback(cap)
    assert len(cap.err.strip().splitlines()) == 1
    assert str(out) in cap.err
    assert ("No space left on device" if error == "full" else "Read-only file system") in cap.err
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one


def test_cli_export_too_large_is_refused_up_front(tmp_path, capsys):
    import time

    start = time.monotonic()
    code = main(["vectors", "export", "layernorm", "--B", "100000", "--T", "100000",
                 "-o", str(tmp_path / "x.safetensors")])
    elapsed = time.monotonic() - start
    cap = capsys.readouterr()
    assert code == 2
    _no_traceback(cap)
    assert len(cap.err.strip().splitlines()) == 1
    # 3 × B·T·d_model float64 = 3 · 1e10 · 16 · 8 bytes ≈ 3576 GiB, computed here independently
    need = 3 * 100000 * 100000 * 16 * 8 / 2**30
    assert f"{need:,.1f} GiB" in cap.err and "B=100000, T=100000" in cap.err
    assert elapsed < 30  # refused before any drawing (a MemoryError would take minutes)
    assert list(tmp_path.iterdir()) == []


def test_check_memory_counts_the_op_s_largest_tensor():
    from refsparse.vectors.record import REGISTRY, check_memory

    sizes = dict(vectors.DEFAULT_SIZES, vocab=10**6, B=100, T=100)
    check_memory(REGISTRY["layernorm"], sizes, "float64", available=2**30)  # layernorm has no vocab
    with pytest.raises(ValueError, match="cross_entropy at B=100, T=100, vocab=1000000 would need"):
        check_memory(REGISTRY["cross_entropy"], sizes, "float64", available=2**30)


def test_cli_check_only_matching_nothing_is_an_error(ref_file, capsys):
    code = main(["vectors", "check", str(ref_file), str(ref_file), "--only", "NOMATCH"])
    cap = capsys.readouterr()
    assert code == 2
    _no_traceback(cap)
    assert "only: no reference tensor matches NOMATCH: nothing to compare" in cap.err
    with pytest.raises(ValueError, match="nothing to compare"):
        compare({}, {})


def test_cli_check_nan_fails_even_with_infinite_tolerances(ref_file, tmp_path, capsys):
    tensors, meta = load(ref_file)
    bad = dict(tensors)
    out = bad["output"].copy()
    out.reshape(-1)[3] = np.nan
    bad["output"] = out
    cand = tmp_path / "nan.safetensors"
    save_file(bad, str(cand), metadata=meta)
    code = main(["vectors", "check", str(ref_file), str(cand), "--rtol", "inf", "--atol", "inf"])
    cap = capsys.readouterr()
    assert code == 1
    assert "output" in cap.out and "FAIL" in cap.out
    # and an infinity equals only itself, as a NaN only a NaN
    ref = {"x": np.array([1.0, np.inf, np.nan])}
    assert compare(ref, {"x": np.array([1.0, np.inf, np.nan])}, rtol=np.inf, atol=np.inf).ok
    assert not compare(ref, {"x": np.array([1.0, 5.0, np.nan])}, rtol=np.inf, atol=np.inf).ok
    assert not compare(ref, {"x": np.array([np.nan, np.inf, np.nan])}, rtol=np.inf, atol=np.inf).ok
