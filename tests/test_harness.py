"""Benchmarks import the shared support package `harness`, never test modules; `harness`
itself depends on neither the tests nor pytest at import time."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _top_level(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


def test_benchmarks_do_not_import_tests():
    files = sorted((ROOT / "bench").rglob("*.py"))
    assert files, "no benchmark found"
    offenders = {str(f.relative_to(ROOT)) for f in files if "tests" in _top_level(_imported_modules(f))}
    # The plain-text check as well: imports built at run time (importlib, __import__).
    offenders |= {str(f.relative_to(ROOT)) for f in files
                  if "from tests" in f.read_text() or "import tests" in f.read_text()}
    assert not offenders, f"benchmarks importing test modules (use harness/ instead): {sorted(offenders)}"


def test_harness_imports_neither_tests_nor_pytest():
    files = sorted((ROOT / "harness").glob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "data.py", "server.py", "memory.py"}
    for f in files:
        assert not _top_level(_imported_modules(f)) & {"tests", "bench"}, f
    code = "import sys, harness.data, harness.server, harness.memory; print('pytest' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False", "importing harness must not need pytest (benchmarks run without it)"
