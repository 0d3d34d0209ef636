"""The sandbox, used directly (no Ray, no gRPC): what a payload running inside it could and
could not reach, its limits, and every operation the service runs in it — including each job
kind, which also proves that the worker imported everything before giving up its privileges."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from equiprune.engine.dataset import GroupDataset, save_dataset
from equiprune.engine.models import ArchitectureSpec, build_model, save_exported, save_safetensors
from equiprune.service.errors import InvalidArgument
from equiprune.service.sandbox import Limits, Sandbox, SandboxConfig
from equiprune.engine.jobs import JobSpec
from tests.hostile import payloads

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="full isolation needs root (it switches users)")

LIMITS = Limits(memory_bytes=3 * 2**30, cpu_seconds=120, file_size_bytes=16 * 2**20)
SPEC = ArchitectureSpec("small_cnn", {"num_classes": 2, "in_channels": 1, "input_size": 8, "channels": [2, 4]})


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Sandbox:
    root = tmp_path_factory.mktemp("sandbox-root")
    return Sandbox(SandboxConfig(limits={"validation": LIMITS, "job": LIMITS, "serving": LIMITS},
                                 work_root=str(root)))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("files")
    torch.manual_seed(0)
    model = build_model(SPEC).eval()
    paths = {"safetensors": str(folder / "m.safetensors"), "pt2": str(folder / "m.pt2"), "dataset": str(folder / "d.npz")}
    save_safetensors(model, SPEC, paths["safetensors"])
    save_exported(model, torch.randn(2, 1, 8, 8), paths["pt2"], training=False, spec=SPEC)
    n = 80
    save_dataset(GroupDataset(inputs=torch.randn(n, 1, 8, 8), labels=torch.arange(n) % 2,
                              attributes={"g": (torch.arange(n) // 2) % 2}, attribute_values={"g": ("a", "b")},
                              split_codes=(torch.arange(n) % 4 == 0).long(), split_names=("train", "test")),
                 paths["dataset"])
    return paths


@pytest.fixture()
def world_writable():
    with payloads.marker_folder() as folder:
        yield folder


def test_a_payload_inside_reaches_nothing_of_the_service(sandbox, tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "jobs.sqlite").write_text("secret")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        report = sandbox.run("self_check", {
            "read": [str(data / "jobs.sqlite"), "/root/.bashrc", "/proc/1/environ"],
            "write": [str(data / "pwned"), "/etc/pwned", os.path.join(os.getcwd(), "pwned")],
            "connect": [["127.0.0.1", port], ["8.8.8.8", 53]], "signal_pid": os.getpid()}, {}, purpose="validation")
    checks = report["checks"]
    for name, outcome in checks.items():
        if name != "identity":
            assert outcome["stopped"], f"{name}: {outcome}"
    identity = checks["identity"]
    assert identity["uid"] >= 2**20 and identity["gid"] == identity["uid"] and identity["groups"] == []
    assert not (data / "pwned").exists()


def test_a_shell_command_run_by_a_payload_is_confined_too(tmp_path) -> None:
    # What a pickle payload does (os.system): a shell in the same confinement.
    secret = tmp_path / "secret"
    secret.mkdir(mode=0o700)
    work = tmp_path / "work"
    work.mkdir()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        script = (f"touch {secret}/marker; echo > /dev/tcp/127.0.0.1/{port} && echo CONNECTED; "
                  f"kill -0 {os.getpid()} && echo SIGNALLED; id -u")
        done = subprocess.run([sys.executable, "-m", "equiprune.service.sandbox.confined", json.dumps(LIMITS.to_json()),
                               str(work), "--", "/bin/bash", "-c", script], capture_output=True, text=True, timeout=60)
    isolation = json.loads(done.stderr.splitlines()[0])
    assert isolation["full"], isolation
    assert "CONNECTED" not in done.stdout and "SIGNALLED" not in done.stdout
    assert int(done.stdout.split()[-1]) >= 2**20
    assert not (secret / "marker").exists()


def test_describe_models_and_datasets(sandbox, files) -> None:
    for fmt in ("safetensors", "pt2"):
        described = sandbox.run("describe", {"kind": "model"}, {"content": files[fmt]}, purpose="validation")
        assert described["input_shape"] == "1x8x8" and described["outputs"] == "2"
    described = sandbox.run("describe", {"kind": "dataset"}, {"content": files["dataset"]}, purpose="validation")
    assert described == {"rows": "80", "sample_shape": "1x8x8", "classes": "2", "attributes": "g", "splits": "train,test"}


@pytest.mark.parametrize("build", [payloads.torch_save_named_pt2, payloads.pickle_named_safetensors],
                         ids=["torch.save named .pt2", "pickle named .safetensors"])
def test_hostile_models_are_refused_and_never_run(sandbox, tmp_path, world_writable, build) -> None:
    path = tmp_path / "hostile"
    path.write_bytes(build(os.path.join(world_writable, "ran")))
    with pytest.raises(InvalidArgument):
        sandbox.run("describe", {"kind": "model"}, {"content": str(path)}, purpose="validation")


def test_hostile_datasets_are_refused_and_never_run(sandbox, tmp_path, world_writable) -> None:
    for build in (payloads.npz_object_array, payloads.npz_raw_pickle_member):
        path = tmp_path / "hostile.npz"
        path.write_bytes(build(os.path.join(world_writable, "ran")))
        with pytest.raises(InvalidArgument):
            sandbox.run("describe", {"kind": "dataset"}, {"content": str(path)}, purpose="validation")


def test_probe_refuses_a_shape_the_model_cannot_take(sandbox, files) -> None:
    assert sandbox.run("probe", {"input_shape": [1, 8, 8]}, {"model": files["pt2"]}, purpose="validation") == {"outputs": 2}
    with pytest.raises(InvalidArgument) as info:
        sandbox.run("probe", {"input_shape": [3, 8, 8]}, {"model": files["pt2"]}, purpose="validation")
    assert info.value.field == "input_shape"


def test_serving_answers_and_flags_non_finite_outputs(sandbox, files) -> None:
    served = sandbox.serve({"model": files["safetensors"]})
    try:
        rows = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
        rows[1] = 3.4e38  # finite inputs whose output overflows: inf - inf inside the model
        rows[1, 0, ::2] = -3.4e38
        payload, classes, bad = served.forward(rows.tobytes(), (1, 8, 8), 3)
        probabilities = np.frombuffer(payload, dtype=np.float32).reshape(3, classes)
        assert classes == 2 and 1 in bad and 0 not in bad
        assert np.allclose(probabilities[0].sum(), 1.0)
    finally:
        served.close()
    assert not served.alive


JOBS = {
    "train": {"train": {"architecture": "small_cnn", "architecture_kwargs": dict(SPEC.kwargs), "epochs": 1}},
    "evaluate": {},
    "diagnose": {"diagnostics": {"probes": 2, "power_iterations": 2, "samples_per_group": 8}},
    "prune": {"pruning": {"sparsity": 0.5}},
    "finetune": {"finetune": {"epochs": 1, "batch_size": 16}},
    "prune_and_finetune": {"pruning": {"sparsity": 0.5, "kind": "n_m"}, "finetune": {"epochs": 1, "method": "heldout_ceag"}},
    "budget_search": {"pruning": {}, "budget": {"max_probes": 2}},
}


@pytest.mark.parametrize("kind", list(JOBS))
@pytest.mark.parametrize("fmt", ["pt2", "safetensors"])
def test_every_job_kind_runs_in_the_sandbox(sandbox, files, tmp_path, kind, fmt) -> None:
    if kind == "train" and fmt == "pt2":
        pytest.skip("a train job takes no model")
    spec = JobSpec.from_dict({
        "kind": kind, "dataset": "art-0000000000000000", "model": None if kind == "train" else "art-0000000000000001",
        "data": {"group_by": ["g"], "min_group_size": 1}, **JOBS[kind]})
    work = tmp_path / "work"
    work.mkdir()
    inputs = {"dataset": files["dataset"]} | ({} if kind == "train" else {"model": files[fmt]})
    events = []
    result = sandbox.run("job", {"spec": spec.to_dict(), "device": "cpu"}, inputs, purpose="job", work_dir=str(work),
                         on_event=events.append)
    assert events and events[-1]["phase"] == "done"
    for entry in result["files"]:
        assert (work / entry["path"]).is_file()
    if kind == "train":
        assert result["files"][0]["path"] == "model.safetensors"


_AFTER_PRELOAD = r"""
import importlib, json, os, pathlib, shutil, sys
from equiprune.service.sandbox import worker
from equiprune.service.sandbox.warmup import warm_up
kit, files, jobs = (json.loads(a) for a in sys.argv[1:4])
for name in worker._PRELOAD["common"] + worker._PRELOAD["job"]:
    importlib.import_module(name)
warm_up({k: open(v, "rb") for k, v in kit.items()})
before = set(sys.modules)
from equiprune.engine.jobs import JobInputs, JobSpec, run_job
from equiprune.service.sandbox import operations
os.chdir(sys.argv[4])
for fmt in ("safetensors", "pt2"):
    for kind, extra in jobs.items():
        if kind == "prune" and fmt == "pt2":
            continue  # structured pruning needs the eager model
        for entry in pathlib.Path(".").iterdir():
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        spec = JobSpec.from_dict({"kind": kind, "dataset": "art-0000000000000000",
                                  "model": None if kind == "train" else "art-0000000000000001",
                                  "data": {"group_by": ["g"], "min_group_size": 1}, **extra})
        run_job(spec, JobInputs(dataset=open(files["dataset"], "rb"), model=open(files[fmt], "rb"),
                                work_dir=pathlib.Path(".")), lambda event: event.to_dict())
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_the_preload_covers_every_operation(files, tmp_path) -> None:
    # After the switch to its own user a worker may not read the Python installation (here the
    # stdlib lives under /root): every module any operation needs must be imported before.
    # Run every job kind, with every pruning kind and fine-tuning method, after the preload and
    # warm-up, in a fresh interpreter: nothing new may be imported.
    from equiprune.service.sandbox.warmup import warmup_kit

    jobs = {**JOBS, "prune": {"pruning": {"sparsity": 0.5, "kind": "structured"}},
            "finetune": {"finetune": {"epochs": 1, "method": "equalized_loss"}},
            "prune_and_finetune": {"pruning": {"sparsity": 0.5, "schedule": "gradual", "gradual_steps": 2},
                                   "finetune": {"epochs": 1, "method": "ceag"}},
            "budget_search": {"pruning": {}, "budget": {"max_probes": 2},
                              "finetune": {"epochs": 1, "method": "heldout_ceag"}}}
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run([sys.executable, "-c", _AFTER_PRELOAD, json.dumps(warmup_kit()), json.dumps(files),
                           json.dumps(jobs), str(work)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_a_job_that_does_not_fit_is_refused_with_its_field(sandbox, files, tmp_path) -> None:
    spec = JobSpec.from_dict({
        "kind": "train", "dataset": "art-0000000000000000", "data": {"group_by": ["g"]},
        "train": {"architecture": "mlp", "architecture_kwargs": {"in_features": 10, "num_classes": 2}}})
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(InvalidArgument) as info:
        sandbox.run("job", {"spec": spec.to_dict()}, {"dataset": files["dataset"]}, purpose="job", work_dir=str(work))
    assert info.value.field == "spec.train.architecture_kwargs"


def test_full_isolation_is_required_unless_relaxed(files, tmp_path) -> None:
    # What a worker reports decides: incomplete isolation is refused unless the operator chose
    # limits-only (a non-root parent cannot be staged here: the stdlib is root-only).
    from equiprune.service.sandbox.confine import Isolation
    from equiprune.service.sandbox.process import isolation_problem

    unprivileged = Isolation(limits=True, network=True, problems=["not started as root"]).to_json()
    assert not unprivileged["full"]
    assert "could not isolate itself (not started as root)" in isolation_problem(unprivileged, required=True)
    assert isolation_problem(unprivileged, required=False) is None
    no_namespaces = Isolation(limits=True, socket_filter=True, uid=2**20 + 7).to_json()
    assert no_namespaces["full"]  # a root container without CAP_SYS_ADMIN: own user, no sockets
    assert isolation_problem(None, required=False) == "the sandbox did not report its isolation"
    relaxed = Sandbox(SandboxConfig(limits={"validation": LIMITS}, require_full_isolation=False, work_root=str(tmp_path)))
    assert relaxed.run("describe", {"kind": "dataset"}, {"content": files["dataset"]}, purpose="validation")["rows"] == "80"
