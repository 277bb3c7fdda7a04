"""No module of nn/, models.py, vectors/, interop/ or validate.py imports another module's
private name: what two modules share has a public home (argument checks in refsparse/_checks.py).
"""

import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = sorted(
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
    assert len(FILES) > 15
    assert not offenders, offenders


def test_the_checks_nn_used_to_keep_private_are_in_checks():
    from refsparse import _checks

    for name in ("check_positive_int", "check_rng", "check_features", "check_positions"):
        assert callable(getattr(_checks, name)), name
    for path in FILES:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        assert "def _default_rng" not in text and "def _check_positive_int" not in text, path
