"""The README followed literally, by its own test: every ```bash block runs as written, in
order, against a fresh server, so the README cannot drift from what the product does.

Each block is classified by the HTML comment on the line before it (invisible on GitHub):
- none: run, in order, with `bash -euo pipefail` (exit 0, no traceback);
- `<!-- readme-test: background -->`: `equiprune serve`, started and left running for the
  blocks after it, and stopped at the end as a terminal's Ctrl-C stops it (SIGINT to its
  process group);
- `<!-- readme-test: ci -->`: the set-up and test commands, which .ci/run itself runs
  (tests/test_readme_matches_ci.py checks they are exactly its commands);
- `<!-- readme-test: slow -->`: run only in the slow tier (the quick paper reproduction).

The blocks run in a fresh folder whose `.venv` and `bench` are links to this checkout's, with
HOME in that folder (the admin token the server writes lands there, not in the user's), on the
README's own default ports (9000, 8000, 9464): the README is tested as a user runs it, so
those ports must be free. The next block starts right after `serve`, without waiting for
it: the README says the CLI waits for a starting server, and this checks it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODES = ("run", "background", "ci", "slow")
README_PORTS = (9000, 8000, 9464)  # gRPC, Serve's HTTP proxy, the monitor's exporter
BLOCK = re.compile(r"(?:^<!-- readme-test: (\w+)[^\n]*-->\n)?^```bash\n(.*?)^```", re.M | re.S)


@dataclass(frozen=True)
class Block:
    mode: str
    text: str
    line: int

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.mode})"


def readme_blocks() -> list[Block]:
    readme = (ROOT / "README.md").read_text()
    return [Block(m.group(1) or "run", m.group(2), readme.count("\n", 0, m.start(2)) + 1)
            for m in BLOCK.finditer(readme)]


@pytest.mark.unit
def test_every_readme_block_is_run_somewhere():
    blocks = readme_blocks()
    assert len(blocks) >= 6, blocks
    # Every fenced block is a bash block this test sees: an ```sh or ```console one would
    # silently go untested.
    fences = re.findall(r"^```(\S*)", (ROOT / "README.md").read_text(), re.M)
    assert fences == ["bash", ""] * len(blocks), f"README fences other than ```bash: {fences}"
    assert {b.mode for b in blocks} <= set(MODES), [str(b) for b in blocks if b.mode not in MODES]
    background = [b for b in blocks if b.mode == "background"]
    assert len(background) == 1 and background[0].text.strip() == ".venv/bin/equiprune serve"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for block in blocks:
        if block.mode == "ci":
            assert block.text.strip() in [line.strip() for line in ci], f"{block} is not what .ci/run runs"
    # Nothing in a run block may be a placeholder a user cannot type as is.
    for block in blocks:
        assert "…" not in block.text and "art-…" not in block.text, f"{block} has a placeholder"


def _environment(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EQUIPRUNE_", "RAY_"))}
    env.update(HOME=str(folder / "home"), RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1",
               # Ray's unix sockets need a short path.
               RAY_TMPDIR=tempfile.mkdtemp(prefix="rw", dir="/tmp"))
    return env


def _workdir(tmp_path: Path) -> Path:
    folder = tmp_path / "user"
    (folder / "home").mkdir(parents=True)
    (folder / ".venv").symlink_to(ROOT / ".venv")
    (folder / "bench").symlink_to(ROOT / "bench")
    return folder


def _ports_busy() -> list[int]:
    busy = []
    for port in README_PORTS:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                busy.append(port)
    return busy


def _run(block: Block, folder: Path, env: dict, timeout: float) -> str:
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block.text], cwd=folder, env=env, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert done.returncode == 0, f"{block} exited {done.returncode}:\n{block.text}\n---\n{done.stdout[-6000:]}"
    assert "Traceback" not in done.stdout, f"{block} printed a traceback:\n{done.stdout[-6000:]}"
    return done.stdout


def _stop(server: subprocess.Popen, log: Path) -> str:
    """Ctrl-C as a terminal sends it: SIGINT to the whole foreground process group."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
            pytest.fail(f"`equiprune serve` did not stop within 90 s of Ctrl-C:\n{log.read_text()[-4000:]}")
    return log.read_text()


@pytest.mark.e2e
def test_the_readme_walkthrough_runs_as_written(tmp_path):
    busy = _ports_busy()
    if busy:
        pytest.fail(f"the README's default ports {busy} are taken on this machine; the walkthrough runs the README "
                    "as written, on its own ports (stop whatever listens there)")
    folder, blocks = _workdir(tmp_path), readme_blocks()
    env = _environment(folder)
    log = tmp_path / "serve.log"
    server = None
    outputs = {}
    try:
        for block in blocks:
            if block.mode == "background":
                with open(log, "wb") as sink:
                    server = subprocess.Popen(["bash", "-c", "exec " + block.text.strip()], cwd=folder, env=env,
                                              stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
            elif block.mode == "run":
                assert server is not None and server.poll() is None, f"the server is not running before {block}"
                started = time.monotonic()
                outputs[block.line] = _run(block, folder, env, timeout=900)
                outputs[block.line] += f"\n[{time.monotonic() - started:.0f} s]"
    finally:
        stopped = _stop(server, log) if server is not None else ""
    # What the README promises each block leaves behind.
    text = "\n".join(outputs.values())
    assert "\nverdict: " in text and (folder / "runs/demo/groups.png").read_bytes()[:4] == b"\x89PNG"
    assert (folder / "runs/demo/demo.json").exists() and (folder / "runs/demo/dense.safetensors").exists()
    assert "serving the model the demo in" in text  # --deploy reused the demo's model: no retraining
    assert "equiprune_group_accuracy_ratio{" in text
    assert (folder / "runs/mine/stages.png").exists() and (folder / "runs/sweep.png").exists()
    assert (folder / "home/.config/equiprune/credentials/127.0.0.1_9000.token").exists()
    # A clean stop: the launcher's own lines, no error noise from Ray.
    assert "equiprune is serving gRPC on" in stopped, stopped[-4000:]
    tail = stopped[stopped.rfind("equiprune is serving gRPC on"):]
    assert tail.rstrip().endswith("stopped"), tail[-4000:]
    for noise in ("Traceback", "graceful_shutdown", "killed by ray.kill", " ERROR "):
        assert noise not in tail, f"`equiprune serve` printed {noise!r} on Ctrl-C:\n{tail[-4000:]}"
    assert server.returncode in (0, 130, -signal.SIGINT), f"serve exited {server.returncode}:\n{tail[-4000:]}"


@pytest.mark.unit
@pytest.mark.slow
def test_the_readmes_slow_blocks_run_as_written(tmp_path):
    """The quick paper reproduction, as written (no server needed); its time is measured by
    bench/time_quick_paper.py, not asserted here."""
    folder = _workdir(tmp_path)
    env = _environment(folder)
    slow = [b for b in readme_blocks() if b.mode == "slow"]
    assert slow
    for block in slow:
        out = _run(block, folder, env, timeout=3600)
        assert "summary.md" in out, out[-3000:]


@pytest.mark.unit
def test_the_quick_paper_time_in_the_readme_is_the_benchs():
    """README: "under M minutes on two idle cores (S s measured …)" — S is the recorded run's
    wall time (docs/bench/quick-paper.json, idle) and it is under M minutes."""
    import json

    run = json.loads((ROOT / "docs/bench/quick-paper.json").read_text())["results"]
    readme = " ".join((ROOT / "README.md").read_text().split())
    said = re.search(r"quick mode: under (\d+) minutes on two idle cores \((\d+) s measured", readme)
    assert said, "the README's quick-mode time is gone or reworded: update this test with it"
    minutes, seconds = int(said.group(1)), int(said.group(2))
    assert run["idle"] and run["returncode"] == 0 and run["cpus"] == 2
    assert seconds == round(run["wall_seconds"]) and run["wall_seconds"] < 60 * minutes
