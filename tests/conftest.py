"""Test tiers: every collected test is marked exactly one of `unit` or `e2e` (docs/testing.md).

e2e  talks to a real server process, a real Ray, Serve or Prometheus: it uses (directly or
     through other fixtures) a fixture that starts one, its own body starts one, or it is
     marked `@pytest.mark.e2e` by hand.
unit everything else (fakes, in-process servers, subprocesses that start no Ray).

"Starts one" is read from the source: a call of `ray.init`, `serve.run`/`serve.start`,
`ServerProcess(...)` (harness/server.py), or a subprocess of the launcher or `equiprune serve`.
Such a call may sit in a fixture or a test body. Anywhere else (a helper, module level) the
scan cannot tell which tests reach it: that module's tests match neither tier and collection
fails, saying what to do. A unit test that still starts Ray or a ServerProcess at run time
fails (the guard at the end). tests/test_tiers.py checks all of this over the whole suite.
"""

from __future__ import annotations

import ast
import functools
import inspect
import os
import re
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Servers the tests start write their admin token where the SDK and CLI find it
# (client/equiprune/client/credentials.py): a folder of this run's, never the user's own
# ~/.config. Subprocesses inherit it. An ambient EQUIPRUNE_TOKEN would override every file.
os.environ["EQUIPRUNE_CONFIG_DIR"] = tempfile.mkdtemp(prefix="equiprune-config-")
for _variable in ("EQUIPRUNE_TOKEN", "EQUIPRUNE_TOKEN_FILE", "EQUIPRUNE_TLS_CA"):
    os.environ.pop(_variable, None)
TIERS = ("unit", "e2e")

# Fixtures that start a real server or Ray in a way the scan cannot see (through a helper,
# say): "file relative to the repository::name". Fixtures that call a starter themselves
# need no entry. Keep this short.
E2E_FIXTURES: dict[str, str] = {}

_RAY_CALLS = {("ray", "init"), ("serve", "run"), ("serve", "start")}
_SUBPROCESS_CALLS = {"Popen", "run", "call", "check_call", "check_output"}


def _starts_something(call: ast.Call) -> str | None:
    """What this call starts (a short description), or None."""
    func = call.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and (func.value.id, func.attr) in _RAY_CALLS:
        return f"{func.value.id}.{func.attr}()"
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name == "ServerProcess":
        return "ServerProcess()"
    if name in _SUBPROCESS_CALLS:
        strings = {n.value for arg in call.args for n in ast.walk(arg) if isinstance(n, ast.Constant)}
        if "equiprune.service.launcher" in strings or {"equiprune", "serve"} <= strings:
            return "a subprocess of `equiprune serve`"
    return None


def _is_fixture(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if (isinstance(target, ast.Attribute) and target.attr == "fixture") or (
            isinstance(target, ast.Name) and target.id == "fixture"
        ):
            return True
    return False


def scan_source(source: str, filename: str = "<test module>") -> dict[str, list[str]]:
    """Where code starts Ray or the service: {enclosing top-level function (or "<module>"):
    [what it starts]}, with fixture names prefixed "fixture:"."""
    found: dict[str, list[str]] = {}
    tree = ast.parse(source, filename)
    for top in tree.body:
        if isinstance(top, ast.ClassDef):
            scopes = [(f"{top.name}.{n.name}", n) for n in top.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        elif isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef)):
            scopes = [(top.name, top)]
        else:
            scopes = [("<module>", top)]
        for name, node in scopes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _is_fixture(node):
                name = f"fixture:{name}"
            for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
                what = _starts_something(call)
                if what:
                    found.setdefault(name, []).append(what)
    return found


@functools.cache
def _scan_file(path: Path) -> dict[str, list[str]]:
    try:
        return scan_source(path.read_text(), str(path))
    except (OSError, SyntaxError):
        return {}


def _relative(path: Path | str) -> str:
    try:
        return Path(path).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def _fixture_key(fixturedef) -> str:
    func = inspect.unwrap(fixturedef.func)
    try:
        source = inspect.getsourcefile(func) or "?"
    except TypeError:  # built-in fixtures of plugins written in other ways
        source = "?"
    return f"{_relative(source)}::{fixturedef.argname}"


def used_fixtures(item: pytest.Item) -> set[str]:
    """The "file::name" of every fixture the item runs (the active definition of each name in
    its closure, plus the ones an override requests under its own name)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return set()
    keys = set()
    for name in info.names_closure:
        defs = list(info.name2fixturedefs.get(name, ()))
        while defs:
            active = defs.pop()
            keys.add(_fixture_key(active))
            if name not in active.argnames:
                break
    return keys


class TierError(Exception):
    pass


def _is_test_scope(scope: str) -> bool:
    return scope.startswith("test") or ".test" in scope


def e2e_fixtures(item: pytest.Item) -> list[str]:
    """The fixtures the item runs that start a real server or Ray ("file::name")."""
    found = []
    for key in sorted(used_fixtures(item)):
        path, name = key.split("::", 1)
        if key in E2E_FIXTURES or (path.endswith(".py") and f"fixture:{name}" in _scan_file(ROOT / path)):
            found.append(key)
    return found


def tier_of(item: pytest.Item) -> str:
    """"unit" or "e2e" for one collected test; TierError when it matches neither or both."""
    explicit = {mark.name for mark in item.iter_markers() if mark.name in TIERS}
    if len(explicit) > 1:
        raise TierError(f"{item.nodeid} is marked both unit and e2e")
    reasons = [f"fixture {key}" for key in e2e_fixtures(item)]
    path = Path(str(item.path))
    starts = _scan_file(path) if path.suffix == ".py" else {}
    function = getattr(item, "originalname", None) or item.name.split("[")[0]
    cls = getattr(item, "cls", None)
    own = starts.get(f"{cls.__name__}.{function}" if cls is not None else function)
    if own:
        reasons.append(f"its body starts {', '.join(sorted(set(own)))}")
    if explicit == {"unit"} and reasons:
        raise TierError(f"{item.nodeid} is marked unit but talks to a real server or Ray: {'; '.join(reasons)}")
    if explicit:
        return explicit.pop()
    if reasons:
        return "e2e"
    unresolved = {scope: what for scope, what in starts.items() if not scope.startswith("fixture:")
                  and not _is_test_scope(scope)}
    if unresolved:
        where = "; ".join(f"{scope} starts {', '.join(sorted(set(w)))}" for scope, w in sorted(unresolved.items()))
        raise TierError(
            f"{item.nodeid} matches neither tier: {_relative(path)} starts Ray or the service outside a fixture "
            f"or test ({where}). Start it in a fixture, or mark the module's tests @pytest.mark.e2e "
            f"(pytestmark), or list the fixture in E2E_FIXTURES (tests/conftest.py)."
        )
    return "unit"


def conftest_starters_outside_fixtures(root: Path = ROOT / "tests") -> list[str]:
    """Code in conftest.py files that starts Ray or the service outside a fixture (no test
    could be told apart by the fixtures it uses)."""
    found = []
    for path in sorted(root.rglob("conftest.py")):
        for scope, what in _scan_file(path).items():
            if not scope.startswith("fixture:"):
                found.append(f"{_relative(path)}: {scope} starts {', '.join(sorted(set(what)))}")
    return found


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by these markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    errors = [f"{where}; start it in a fixture" for where in conftest_starters_outside_fixtures()]
    for item in items:
        try:
            tier = tier_of(item)
        except TierError as err:
            errors.append(str(err))
            continue
        if item.get_closest_marker(tier) is None:
            item.add_marker(getattr(pytest.mark, tier))
    if errors:
        shown = "\n  ".join(errors[:20]) + (f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else "")
        raise pytest.UsageError(f"test tiers (tests/conftest.py, docs/testing.md):\n  {shown}")
    # `-m EXPR` replaces the default `-m 'not slow'`: slow tests run only when EXPR names `slow`,
    # so `-m e2e` is the e2e tier without the long fuzzing (`-m "e2e or slow"` adds it).
    if not re.search(r"\bslow\b", config.getoption("markexpr", "") or ""):
        slow = [item for item in items if item.get_closest_marker("slow") is not None]
        if slow:
            config.hook.pytest_deselected(items=slow)
            items[:] = [item for item in items if item.get_closest_marker("slow") is None]


class UnitTierStartedSomething(RuntimeError):
    pass


def _refuse(what: str):
    def refuse(*args, **kwargs):
        raise UnitTierStartedSomething(
            f"a unit-tier test started {what}; start it in a fixture (its tests become e2e) or mark the test e2e"
        )
    return refuse


@pytest.fixture(autouse=True)
def _unit_tier_guard(request):
    """In unit-tier tests, starting Ray or a real server raises (for what is imported already:
    the guard imports nothing, so unit tests keep their import footprint)."""
    if request.node.get_closest_marker("unit") is None:
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        server = sys.modules.get("harness.server")
        if server is not None:
            patch.setattr(server.ServerProcess, "start", _refuse("a real server (ServerProcess.start)"))
        ray = sys.modules.get("ray")
        if ray is not None and hasattr(ray, "init"):
            patch.setattr(ray, "init", _refuse("Ray (ray.init)"))
        yield
