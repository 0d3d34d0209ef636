"""The client must work where only grpcio, protobuf and pydantic are installed.

A subprocess hides torch, ray, numpy and matplotlib behind an import hook, then imports every
module of equiprune.client, prints the CLI help, runs `prune-finetune` against the in-process
fake server (the table formatting path), and checks that `--plot` explains what is missing.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import contextlib, importlib, importlib.abc, io, pkgutil, sys

    HIDDEN = {"torch", "ray", "numpy", "matplotlib"}

    class Hide(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HIDDEN:
                raise ImportError(f"{name} is hidden by the test")
            return None

    sys.meta_path.insert(0, Hide())
    try:
        import numpy
    except ImportError:
        pass
    else:
        raise SystemExit("the import hook does not work")

    import equiprune.client
    names = [m.name for m in pkgutil.walk_packages(equiprune.client.__path__, "equiprune.client.")]
    for name in names:
        importlib.import_module(name)
    expected = {"cli", "sdk", "specs", "retry", "tables", "progress", "plots"}
    missing = {"equiprune.client." + n for n in expected} - set(names)
    assert not missing, missing

    from equiprune.client import cli
    help_text = io.StringIO()
    with contextlib.redirect_stdout(help_text):
        try:
            cli.main(["--help"])
        except SystemExit as stop:
            assert stop.code == 0, stop.code
    assert "prune-finetune" in help_text.getvalue()

    from tests.client.fake_server import FakeServer
    with FakeServer() as server:
        model = server.artifacts.store(1, b"weights", "dense.safetensors", "upload").artifact_id
        base = ["--server", server.target, "--model", model, "--dataset", "sample:digits", "--group-by", "cohort"]
        table, errors = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(table), contextlib.redirect_stderr(errors):
            code = cli.main(["prune-finetune", *base, "--sparsity", "0.9"])
        assert code == 0, errors.getvalue()
        assert "fine-tuned [95% CI]" in table.getvalue(), table.getvalue()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(errors):
            code = cli.main(["budget", *base, "--plot", "sweep.png"])
        assert code == 2 and "pip install 'equiprune[plots]'" in errors.getvalue(), errors.getvalue()

    loaded = {name.split(".")[0] for name in sys.modules}
    assert not loaded & HIDDEN, loaded & HIDDEN
    print("client works without torch, ray, numpy and matplotlib")
''')


def test_client_imports_and_runs_without_torch_ray_numpy_or_matplotlib(tmp_path):
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "client works without" in done.stdout
