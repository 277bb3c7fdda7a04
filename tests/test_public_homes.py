"""No module of refsparse/ imports another module's private name: what two modules share has a
public home (argument checks in refsparse/_checks.py, CSR helpers in refsparse/csr.py). And
functional/ holds only the math: no module-level constant but math ones, and the sparse ops
import nothing from kernels/ but their drivers.
"""

import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = sorted(glob.glob(os.path.join(ROOT, "refsparse", "**", "*.py"), recursive=True))
NN_FILES = sorted(
    glob.glob(os.path.join(ROOT, "refsparse", "nn", "*.py"))
    + glob.glob(os.path.join(ROOT, "refsparse", "vectors", "*.py"))
    + glob.glob(os.path.join(ROOT, "refsparse", "interop", "*.py"))
    + [os.path.join(ROOT, "refsparse", p) for p in ("models.py", "validate.py")]
)
# `from .x import a, _b` or `from .x import (\n a,\n _b,\n)`: any imported name with a leading _
FROM_IMPORT = re.compile(r"^from\s+\.[\w.]*\s+import\s+(\([^)]*\)|[^\n]*)", re.MULTILINE)


def test_no_private_name_is_imported_across_modules():
    offenders = []
    for path in FILES:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for m in FROM_IMPORT.finditer(text):
            names = [n.split(" as ")[0].strip() for n in m.group(1).strip("()").replace("\n", " ").split(",")]
            bad = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if bad:
                offenders.append(f"{os.path.relpath(path, ROOT)}: {bad}")
    assert len(FILES) > 60
    assert not offenders, offenders


def test_the_checks_nn_used_to_keep_private_are_in_checks():
    from refsparse import _checks

    for name in ("check_positive_int", "check_rng", "check_features", "check_positions"):
        assert callable(getattr(_checks, name)), name
    for path in NN_FILES:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        assert "def _default_rng" not in text and "def _check_positive_int" not in text, path


FUNCTIONAL = sorted(glob.glob(os.path.join(ROOT, "refsparse", "functional", "*.py")))
# module-level NAME = ... (an upper-case constant) outside a function or class
CONSTANT = re.compile(r"^([A-Z][A-Z0-9_]*)\s*(?::[^=]*)?=", re.MULTILINE)
MATH_CONSTANTS = {"SQRT_2", "SQRT_2_OVER_PI", "INV_SQRT_2", "INV_SQRT_2PI", "GELU_TANH_C", "LOG_2", "PI"}


def test_functional_holds_no_tuning_constants():
    found = {}
    for path in FUNCTIONAL:
        with open(path, encoding="utf-8") as f:
            names = set(CONSTANT.findall(f.read())) - MATH_CONSTANTS
        if names:
            found[os.path.basename(path)] = sorted(names)
    assert not found, f"module-level constants in functional/ that are not math ones: {found}"


def test_sparse_functional_ops_import_only_their_drivers_from_kernels():
    allowed = {"sparse_linear.py": {"spmm"}, "sparse_attention.py": {"sparse_attention"}}
    for name, drivers in allowed.items():
        with open(os.path.join(ROOT, "refsparse", "functional", name), encoding="utf-8") as f:
            text = f.read()
        imported = set()
        for m in re.finditer(r"^from \.\.kernels(\.[\w.]+)? import ([^\n]+)", text, re.MULTILINE):
            module = (m.group(1) or "").lstrip(".")
            for item in m.group(2).split(","):
                item = item.split(" as ")[0].strip()
                imported.add(module or item)
        assert imported and imported <= drivers, f"functional/{name} imports {imported} from kernels/"
        assert "import numba" not in text, name
