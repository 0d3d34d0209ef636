"""What the service does with what a sandboxed worker leaves behind or sends back — planted
modules, links, fifos, leftover processes, floods of events and files, oversized frames — and
what keeps a served model's frames within bounds. No Ray, no gRPC."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from equiprune.engine.models import ArchitectureSpec, build_model, save_safetensors
from equiprune.service.errors import FailedPrecondition, ResourceExhausted
from equiprune.service.sandbox import Limits, Sandbox, SandboxConfig
from equiprune.service.sandbox.process import _kill_user
from equiprune.service.sandbox.protocol import ProtocolError, read_frame, write_frame
from equiprune.service.serving.model_server import SandboxedModel
from equiprune.service.jobs.tasks import MAX_EVENTS, Throttled, checked_result, fresh_work_dir, store_outputs
from equiprune.service.artifacts.store import ArtifactStore

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the sandbox switches users)")

LIMITS = Limits(memory_bytes=3 * 2**30, cpu_seconds=120, file_size_bytes=16 * 2**20)


@pytest.fixture()
def sandbox(tmp_path) -> Sandbox:
    return Sandbox(SandboxConfig(limits={"validation": LIMITS, "job": LIMITS, "serving": LIMITS},
                                 work_root=str(tmp_path / "roots")))


def test_modules_planted_in_a_working_folder_never_run(sandbox, tmp_path) -> None:
    # A compromised run could leave json.py or an equiprune package in its folder; the next
    # run of the job starts there, as root, until it drops its privileges.
    secret = tmp_path / "secret"
    secret.mkdir(mode=0o700)
    work = tmp_path / "work"
    work.mkdir()
    payload = f"open({str(secret / 'planted-ran')!r}, 'w').close()\n"
    (work / "json.py").write_text(payload)
    (work / "equiprune").mkdir()
    (work / "equiprune" / "__init__.py").write_text(payload)
    report = sandbox.run("self_check", {}, {}, purpose="validation", work_dir=str(work))
    assert report["checks"]["become root"]["stopped"]
    assert not (secret / "planted-ran").exists()


def test_a_new_run_keeps_only_the_previous_checkpoint_as_a_plain_file(tmp_path) -> None:
    jobs = tmp_path / "jobs"
    work = fresh_work_dir(jobs, "job-1")
    (work / "checkpoint.pt").write_bytes(b"weights")
    (work / "json.py").write_text("planted")
    (work / "sub").mkdir()
    again = fresh_work_dir(jobs, "job-1")
    assert sorted(p.name for p in again.iterdir()) == ["checkpoint.pt"]
    assert (again / "checkpoint.pt").read_bytes() == b"weights"
    for folder in (jobs, jobs / "job-1", again):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    # A checkpoint that is a link (to something only root may read) is not carried over.
    (again / "checkpoint.pt").unlink()
    (again / "checkpoint.pt").symlink_to("/etc/shadow")
    assert list(fresh_work_dir(jobs, "job-1").iterdir()) == []


def test_processes_a_worker_leaves_behind_are_ended(tmp_path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    # A child that starts a session of its own escapes a process-group kill; the PID
    # namespace (pid 1 ends, everything in it ends) does not let it outlive the command.
    done = subprocess.run([sys.executable, "-m", "equiprune.service.sandbox.confined", json.dumps(LIMITS.to_json()),
                           str(work), "--", "/bin/bash", "-c", "setsid sleep 300 & echo $!"],
                          capture_output=True, text=True, timeout=60)
    isolation = json.loads(done.stderr.splitlines()[-1])
    uid = isolation["uid"]
    time.sleep(0.5)
    if isolation["private_tmp"]:  # the namespaces were made (CAP_SYS_ADMIN), the PID one with them
        assert _processes_of(uid) == []
    # Where there is no PID namespace, the service ends every process of the worker's user.
    sleeper = subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sleep", "300"])
    _kill_user(uid, sys.executable)
    assert sleeper.wait(timeout=10) == -9


def _processes_of(uid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    found.append(int(name))
            except OSError:
                pass
    return found


def _store(tmp_path) -> ArtifactStore:
    return ArtifactStore(str(tmp_path / "store"), cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("make", ["symlink", "fifo", "hardlink", "directory"])
def test_outputs_that_are_not_plain_files_are_refused(tmp_path, make) -> None:
    work = tmp_path / "work"
    work.mkdir()
    target = work / "model.safetensors"
    if make == "symlink":
        target.symlink_to("/etc/shadow")
    elif make == "fifo":
        os.mkfifo(target)
    elif make == "hardlink":
        (tmp_path / "elsewhere").write_bytes(b"x")
        os.link(tmp_path / "elsewhere", target)
    else:
        target.mkdir()
    files = [{"role": "model", "path": "model.safetensors", "kind": "model", "name": "m.safetensors"}]
    with pytest.raises(FailedPrecondition):
        store_outputs(files, work, _store(tmp_path), "job-1", 2**20)


def test_an_output_larger_than_the_artifact_limit_is_refused(tmp_path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "report.json").write_bytes(b"x" * 1000)
    with pytest.raises(ResourceExhausted):
        store_outputs([{"role": "report", "path": "report.json", "kind": "report", "name": "r.json"}], work,
                      _store(tmp_path), "job-1", 999)


@pytest.mark.parametrize("files", [
    [{"role": "model", "path": f"m{i}", "kind": "model", "name": "m"} for i in range(9)],
    [{"role": "model", "path": "m", "kind": "model", "name": "m"}] * 2,
    [{"role": "model", "path": "../../etc/passwd", "kind": "model", "name": "m"}],
    [{"role": "model", "path": "m", "kind": "dataset", "name": "m"}],
    [{"role": "model", "path": "m", "kind": "model", "name": "m", "extra": "x"}],
], ids=["too many", "repeated", "outside", "wrong kind", "unknown key"])
def test_a_malformed_list_of_outputs_is_refused(files) -> None:
    with pytest.raises(FailedPrecondition):
        checked_result({"files": files})


def test_a_flood_of_events_is_capped() -> None:
    sent = []
    throttled = Throttled(sent.append, interval=0.0)
    for step in range(MAX_EVENTS + 500):
        throttled({"phase": "load", "message": str(step)})
    throttled({"phase": "done"})
    assert len(sent) == MAX_EVENTS + 1 and sent[-1]["phase"] == "done"


def test_frames_over_the_limits_are_refused_before_they_are_read() -> None:
    buffer = io.BytesIO()
    write_frame(buffer, {"a": 1}, b"x" * 100)
    buffer.seek(0)
    with pytest.raises(ProtocolError):
        read_frame(buffer, max_payload=99)
    buffer.seek(0)
    assert read_frame(buffer) == ({"a": 1}, b"x" * 100)


def test_a_batch_larger_than_one_frame_is_split(sandbox, tmp_path) -> None:
    spec = ArchitectureSpec("mlp", {"in_features": 4096, "num_classes": 3, "hidden": [4]})
    save_safetensors(build_model(spec), spec, tmp_path / "m.safetensors")
    model = SandboxedModel(sandbox, str(tmp_path / "m.safetensors"), timeout_s=120)
    try:
        rows = np.random.default_rng(0).standard_normal((2500, 4096)).astype(np.float32)  # 40 MB: 3 frames
        probabilities, bad = model.probabilities(rows, (4096,))
        assert probabilities.shape == (2500, 3) and bad == []
        assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    finally:
        model.__del__()


def test_a_model_that_needs_more_memory_than_allowed_is_resource_exhausted(tmp_path) -> None:
    # A sparse file is small, its layout says what decoding allocates: here 164M float32 weights
    # (656 MB, within the machine's model limits) against a 600 MiB worker.
    from equiprune.engine.models.sparse import save_sparse

    spec = ArchitectureSpec("mlp", {"in_features": 4096, "num_classes": 2, "hidden": [40_000]})
    with torch.device("meta"):
        meta = build_model(spec)
    state = {name: torch.zeros(t.shape) for name, t in meta.state_dict().items()}  # all pruned: tiny file
    path = tmp_path / "m.sparse.safetensors"
    save_sparse(state, spec, path)
    assert path.stat().st_size < 30 * 2**20
    small = Limits(memory_bytes=600 * 2**20, cpu_seconds=120, file_size_bytes=2**20)
    tight = Sandbox(SandboxConfig(limits={"validation": small}, work_root=str(tmp_path / "roots")))
    with pytest.raises(ResourceExhausted):
        tight.run("describe", {"kind": "model"}, {"content": str(path)}, purpose="validation")
