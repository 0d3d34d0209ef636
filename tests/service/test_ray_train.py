"""A compression job fine-tuned data-parallel on two Ray Train workers of a local Ray."""

import json
import os
import shutil
import tempfile
import time

import pytest
import torch

from equiprune.engine.dataset import save_dataset
from equiprune.engine.demo_data import digits_group_dataset
from equiprune.engine.errors import InvalidConfigError
from equiprune.engine.finetune.config import FinetuneConfig
from equiprune.engine.jobs import DataConfig, JobInputs, JobSpec, ResourcesConfig
from equiprune.engine.models.io import load_model, save_safetensors
from equiprune.engine.models.registry import ArchitectureSpec, build_model
from equiprune.engine.prune import PruningConfig

ray = pytest.importorskip("ray")

from equiprune.service.jobs.distributed import run_on_ray_train  # noqa: E402

SPEC = ArchitectureSpec("mlp", {"num_classes": 10, "in_features": 64, "hidden": [64, 32]})
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
TRAIN_SAMPLES = 1348  # digits' training split
BATCH = 128


@pytest.fixture(scope="module")
def local_ray():
    saved = {key: os.environ.get(key) for key in RAY_ENV}
    os.environ.update(RAY_ENV)
    # Short: Ray's socket paths live under it and must stay within the OS limit.
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp)
    yield
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    save_dataset(digits_group_dataset(), folder / "digits.npz")
    torch.manual_seed(0)
    save_safetensors(build_model(SPEC), SPEC, folder / "model.safetensors")
    return str(folder / "model.safetensors"), str(folder / "digits.npz")


def spec(paths, epochs=1) -> JobSpec:
    return JobSpec(kind="prune_and_finetune", model=paths[0], dataset=paths[1],
                   data=DataConfig(group_by=("cohort",), min_group_size=10), pruning=PruningConfig(sparsity=0.5),
                   finetune=FinetuneConfig(method="ceag", epochs=epochs, batch_size=BATCH, dual_lr=0.5),
                   resources=ResourcesConfig(workers=2))


def job_inputs(paths, tmp_path, checkpoint=None) -> JobInputs:
    return JobInputs(dataset=paths[1], model=paths[0], work_dir=tmp_path / "out",
                     checkpoint_path=checkpoint or tmp_path / "finetune.ckpt")


def test_two_workers_prune_and_finetune(local_ray, inputs, tmp_path):
    events = []
    result = run_on_ray_train(spec(inputs), job_inputs(inputs, tmp_path), storage_path=str(tmp_path / "ray_train"),
                              on_event=events.append)

    written = {f["role"]: tmp_path / "out" / f["path"] for f in result["files"]}
    assert set(written) == {"model", "sparse_model", "report"} and all(p.is_file() for p in written.values())
    report = json.loads(written["report"].read_text())
    model = load_model(str(written["model"])).module
    pruned = report["pruning"]["sparsity"]["per_parameter"]
    params = dict(model.named_parameters())
    zeros = sum(int((params[name] == 0).sum()) for name in pruned)
    assert zeros / sum(params[name].numel() for name in pruned) == pytest.approx(0.5, abs=0.01)
    assert result["measured_sparsity"] == pytest.approx(0.5, abs=0.01)

    assert report["finetuned"]["train"]["overall"]["n"] == TRAIN_SAMPLES
    assert report["finetune"]["epochs"][0]["samples"] == TRAIN_SAMPLES  # the global batch, not a shard
    assert [r["stage"] for r in result["reports"]] == ["dense", "dense", "pruned", "pruned", "finetuned", "finetuned"]

    phases = [event["phase"] for event in events]
    assert {"load", "evaluate_dense", "prune", "finetune", "dense", "pruned", "finetuned", "done"} <= set(phases)
    steps = [event["step"] for event in events if event["phase"] == "finetune" and "step" in event]
    assert steps == list(range(1, -(-TRAIN_SAMPLES // BATCH) + 1))  # once each: rank 0 alone reports
    json.dumps(events, allow_nan=False)


def test_raising_from_on_event_cancels_the_run_and_frees_the_workers(local_ray, inputs, tmp_path):
    class Cancelled(Exception):
        pass

    cancelled_at = []

    def cancel_at_the_first_step(event):
        if event["phase"] == "finetune" and "step" in event:
            cancelled_at.append(time.monotonic())
            raise Cancelled

    # 300 epochs take half a minute or more; the run must end soon after the cancellation.
    with pytest.raises(Cancelled):
        run_on_ray_train(spec(inputs, epochs=300), job_inputs(inputs, tmp_path),
                         storage_path=str(tmp_path / "ray_train"), on_event=cancel_at_the_first_step)
    assert time.monotonic() - cancelled_at[0] < 10
    assert not (tmp_path / "out").exists()
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2  # both workers are gone


def test_an_engine_error_in_the_workers_reaches_the_caller_as_itself(local_ray, inputs, tmp_path):
    garbage = tmp_path / "finetune.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InvalidConfigError) as caught:
        run_on_ray_train(spec(inputs), job_inputs(inputs, tmp_path, garbage), storage_path=str(tmp_path / "ray_train"))
    assert caught.value.field == "finetune.checkpoint"
    assert "not a readable checkpoint" in caught.value.problem
