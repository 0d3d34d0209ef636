"""Architecture boundaries that must hold for every change."""

import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules_loaded_after(import_code: str) -> set[str]:
    code = f"import sys\n{import_code}\nprint('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return {line.split(".")[0] for line in out.stdout.split()}


def _all_engine_modules() -> list[str]:
    import equiprune.engine

    return [m.name for m in pkgutil.walk_packages(equiprune.engine.__path__, "equiprune.engine.")]


def test_engine_imports_without_ray_grpc_or_protobuf():
    modules = _all_engine_modules()
    assert "equiprune.engine.pipeline" in modules and "equiprune.engine.diagnostics" in modules
    loaded = _modules_loaded_after("\n".join(f"import {m}" for m in modules))
    assert "torch" in loaded  # the check itself works
    assert not loaded & {"ray", "grpc", "google", "pydantic"}, loaded & {"ray", "grpc", "google", "pydantic"}


def test_client_imports_without_torch_or_ray():
    loaded = _modules_loaded_after("import equiprune.client")
    assert not loaded & {"torch", "ray", "numpy"}


def test_every_package_directory_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    roots = {name: ROOT / path for name, path in config["package-dir"].items()}
    found = set()
    for name, root in roots.items():
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root).parts
            found.add(".".join((name, *rel)))
    assert found == listed, f"unlisted: {sorted(found - listed)}, stale: {sorted(listed - found)}"


def test_nothing_installs_as_a_bare_top_level_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert all(p.startswith("equiprune.") for p in config["packages"])
