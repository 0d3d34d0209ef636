"""Every test is exactly one of the unit or e2e tiers, and unit-tier code starts no Ray and no
server (tests/conftest.py marks the tiers; docs/testing.md describes them)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import harness.server  # imported before the guard runs, as the service tests do
from tests import conftest

ROOT = Path(__file__).resolve().parents[1]


def _collect(expression: str) -> subprocess.CompletedProcess:
    # Modules that fail to import are reported by their own run; here they are skipped over.
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "--continue-on-collection-errors", "-m", expression],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_the_whole_suite_collects_with_each_test_in_exactly_one_tier():
    # The expression names `slow`, so slow tests are collected too.
    done = _collect("((unit and e2e) or not (unit or e2e)) and (slow or not slow)")
    out = done.stdout + done.stderr
    # The hook refusing a test that matches neither tier is a usage error (exit 4) naming it.
    assert done.returncode != 4 and "test tiers" not in out, out[-4000:]
    # Nothing selected: no test is in neither or both tiers.
    counts = re.search(r"no tests collected \((\d+) deselected\)", out)
    assert counts, out[-4000:]
    assert int(counts.group(1)) > 1000, out[-2000:]


def test_listed_e2e_fixtures_exist():
    for key in conftest.E2E_FIXTURES:
        path, name = key.split("::")
        source = (ROOT / path).read_text()
        assert re.search(rf"^def {name}\(", source, re.M), f"stale entry in E2E_FIXTURES: {key}"


def test_ray_and_servers_start_only_in_fixtures_and_test_bodies():
    """Over the whole suite, so that no unit-tier module starts Ray unnoticed: every start sits
    where the tier hook can attribute it, and the fixtures that start the real service are found."""
    fixtures = set()
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for scope in conftest.scan_source(path.read_text(), str(path)):
            if scope.startswith("fixture:"):
                fixtures.add(f"{path.relative_to(ROOT).as_posix()}::{scope.removeprefix('fixture:')}")
            else:
                assert conftest._is_test_scope(scope), f"{path}: {scope} starts Ray or the service"
    assert {"tests/service/conftest.py::server", "tests/service/test_ray_train.py::local_ray"} <= fixtures
    assert conftest.conftest_starters_outside_fixtures() == []


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import ray\ndef helper():\n    ray.init(num_cpus=1)\n", {"helper": ["ray.init()"]}),
        ("from ray import serve\ndef test_x():\n    serve.run(app)\n", {"test_x": ["serve.run()"]}),
        ("import pytest\n@pytest.fixture(scope='module')\ndef srv(tmp_path):\n    return ServerProcess(tmp_path).start()\n",
         {"fixture:srv": ["ServerProcess()"]}),
        ("import subprocess, sys\nX = subprocess.Popen([sys.executable, '-m', 'equiprune.service.launcher'])\n",
         {"<module>": ["a subprocess of `equiprune serve`"]}),
        ("import subprocess\nclass TestA:\n    def test_b(self):\n        subprocess.run(['equiprune', 'serve'])\n",
         {"TestA.test_b": ["a subprocess of `equiprune serve`"]}),
        # Not starting anything: a fake launcher module, a CLI string in an assertion, an import.
        ("import sys, types\ndef test_x(monkeypatch):\n    launcher = types.ModuleType('equiprune.service.launcher')\n"
         "    assert ['equiprune', 'serve'] == []\n    from equiprune.service.launcher import _parser\n", {}),
    ],
    ids=["helper-ray-init", "test-serve-run", "fixture-server", "module-launcher", "method-cli", "nothing"],
)
def test_the_scan_finds_what_starts_ray_or_the_service(source, expected):
    assert conftest.scan_source(source) == expected


def test_a_module_starting_ray_outside_a_listed_fixture_fails_the_collection(tmp_path):
    """Run against a throwaway suite with this conftest: the helper's ray.init leaves its module's
    tests in neither tier, and collection fails naming the module and the remedy."""
    suite = tmp_path / "suite"
    (suite / "tests").mkdir(parents=True)
    (suite / "tests" / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (suite / "tests" / "test_fine.py").write_text("def test_plain():\n    pass\n")
    (suite / "pytest.ini").write_text("[pytest]\nmarkers =\n    unit\n    e2e\n    slow\n")
    (suite / "tests" / "test_sneaky.py").write_text(textwrap.dedent("""
        import types

        ray = types.SimpleNamespace(init=lambda **kwargs: None)

        def start():
            ray.init(num_cpus=1)

        def test_uses_helper():
            start()
    """))
    (suite / "tests" / "test_marked.py").write_text(textwrap.dedent("""
        import pytest

        @pytest.mark.unit
        @pytest.mark.e2e
        def test_both():
            pass
    """))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "--rootdir", str(suite),
         "-c", str(suite / "pytest.ini"), str(suite / "tests")],
        cwd=suite, capture_output=True, text=True,
    )
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert "test_sneaky.py::test_uses_helper matches neither tier" in out and "start starts ray.init()" in out, out
    assert "test_marked.py::test_both is marked both unit and e2e" in out, out
    assert "test_fine.py" not in out.split("test tiers", 1)[-1], out


def test_unit_tests_cannot_start_ray_or_a_server(request):
    """The run-time guard: in this (unit) test, ray.init and ServerProcess.start raise."""
    assert request.node.get_closest_marker("unit") is not None
    server = getattr(harness.server, "ServerProcess")(Path("/nonexistent") / "data")
    with pytest.raises(conftest.UnitTierStartedSomething):
        server.start()
    # getattr: the tier scan would (rightly) count a plain ray.init() here as starting Ray.
    ray = sys.modules.get("ray")
    if ray is not None:
        with pytest.raises(conftest.UnitTierStartedSomething):
            getattr(ray, "init")(num_cpus=1)
