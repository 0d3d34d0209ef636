"""Hostile files driven through the real API: upload, import, every job kind, deploy.

Each payload is a real pickle that would create a marker file (tests/hostile/payloads.py),
aimed at a folder anybody may write and that is not under /tmp — so the marker would appear
whether the payload ran in a service process (root) or in a sandboxed worker (its own user,
a private /tmp). It never appears; every refusal is a client status naming what was wrong,
never INTERNAL; and the server keeps answering.

Jobs and deploys can only meet a hostile file that got into the store some other way (every
way in validates): the tests plant such artifacts directly in the store's folder, as a
storage-level compromise or an artifact from an older, laxer version would.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import uuid

import grpc
import pytest
import torch

from equiprune.client import specs
from equiprune.client.errors import EquipruneError
from equiprune.client.sdk import EquipruneClient
from equiprune.engine.dataset import save_dataset
from equiprune.engine.demo_data import digits_group_dataset
from equiprune.engine.models import ArchitectureSpec, build_model, save_exported, save_safetensors
from equiprune.v1 import jobs_pb2, serving_pb2, serving_pb2_grpc
from tests.hostile import payloads

DIGITS_CNN = ArchitectureSpec("small_cnn", {"num_classes": 10, "in_channels": 1, "input_size": 8, "channels": [4, 8]})
CLIENT_CODES = {"INVALID_ARGUMENT", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED"}


@pytest.fixture(scope="module")
def markers():
    """Where every payload aims its marker (payloads.marker_folder)."""
    with payloads.marker_folder() as folder:
        yield folder


@pytest.fixture(scope="module")
def client(server):
    with EquipruneClient(server.target, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def pt2() -> bytes:
    torch.manual_seed(0)
    buffer = io.BytesIO()
    save_exported(build_model(DIGITS_CNN).eval(), torch.randn(2, 1, 8, 8), buffer, training=False, spec=DIGITS_CNN)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def digits(client, tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    save_dataset(digits_group_dataset(), folder / "digits.npz")
    save_safetensors(build_model(DIGITS_CNN).eval(), DIGITS_CNN, folder / "model.safetensors")
    return {"dataset": client.upload_file(folder / "digits.npz", "dataset").artifact_id,
            "model": client.upload_file(folder / "model.safetensors", "model").artifact_id}


def _hostile_models(pt2: bytes, markers: str) -> dict[str, bytes]:
    def marker(name: str) -> str:
        return os.path.join(markers, name)

    layouts = list(payloads.pt2_duplicate_layouts(pt2, marker("duplicate")))
    # One layout per attacked entry, and the central-directory lie (the slow tier tries all).
    picked = {d: a for d, a in layouts if "hostile first, adjacent, hostile copy under 'archive'" in d
              or "disagree" in d}
    return {
        **{f"pt2 duplicate: {d}": a for d, a in picked.items()},
        "pt2 pickled weights": payloads.pt2_pickled_weights(pt2, marker("weights")),
        "pt2 pickled constants": payloads.pt2_pickled_constants(pt2, marker("constants")),
        "torch.save named .pt2": payloads.torch_save_named_pt2(marker("torch-save")),
        "pickle named .safetensors": payloads.pickle_named_safetensors(marker("pickle")),
    }


def _hostile_datasets(markers: str) -> dict[str, bytes]:
    return {"npz object array": payloads.npz_object_array(os.path.join(markers, "object")),
            "npz raw pickle member": payloads.npz_raw_pickle_member(os.path.join(markers, "member")),
            "npz pickle member with another name": payloads.npz_raw_pickle_member(os.path.join(markers, "other"),
                                                                                   "payload.pkl")}


def _refused(call) -> EquipruneError:
    with pytest.raises(EquipruneError) as info:
        call()
    assert info.value.code.name in CLIENT_CODES, info.value
    return info.value


def test_uploads_of_hostile_files_are_refused(client, pt2, markers, tmp_path) -> None:
    for kind, files in (("model", _hostile_models(pt2, markers)), ("dataset", _hostile_datasets(markers))):
        for name, content in files.items():
            path = tmp_path / "hostile"
            path.write_bytes(content)
            err = _refused(lambda: client.upload_file(path, kind))
            assert err.code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid" in str(err), (name, err)


def test_sample_inputs_are_dropped_unread_and_the_model_is_accepted(client, pt2, markers, tmp_path) -> None:
    path = tmp_path / "sample-inputs.pt2"
    path.write_bytes(payloads.pt2_pickled_sample_inputs(pt2, os.path.join(markers, "sample-inputs")))
    artifact = client.upload_file(path, "model")
    assert artifact.description["format"] == "exported" and artifact.description["input_shape"] == "1x8x8"


def test_imports_of_hostile_files_are_refused(client, pt2, markers, import_root) -> None:
    hostile = {"model": payloads.pt2_pickled_weights(pt2, os.path.join(markers, "import-weights")),
               "dataset": payloads.npz_object_array(os.path.join(markers, "import-object"))}
    for kind, content in hostile.items():
        path = import_root / f"hostile-{kind}"
        path.write_bytes(content)
        _refused(lambda: client.import_uri(str(path), kind, sha256=hashlib.sha256(content).hexdigest()))


def _plant(server, content: bytes, kind: str, description: dict[str, str]) -> str:
    """An artifact written straight into the store's folder, never validated."""
    artifact_id = "art-" + uuid.uuid4().hex[:16]
    folder = server.data_dir / "artifacts" / "artifacts" / artifact_id  # <artifact root>/artifacts/<id>
    folder.mkdir(parents=True)
    (folder / "content").write_bytes(content)
    record = {"artifact_id": artifact_id, "kind": kind, "display_name": "planted", "size_bytes": len(content),
              "sha256": hashlib.sha256(content).hexdigest(), "create_time": time.time(), "source": "planted",
              "description": description}
    (folder / "meta.json").write_text(json.dumps(record))
    return artifact_id


DATASET_DESCRIPTION = {"rows": "1797", "sample_shape": "1x8x8", "classes": "10", "attributes": "cohort",
                       "splits": "train,test"}
JOB_SPECS = {
    "evaluate": lambda m, d: specs.evaluate_spec(model=m, dataset=d, group_by="cohort"),
    "diagnose": lambda m, d: specs.diagnose_spec(model=m, dataset=d, group_by="cohort"),
    "prune": lambda m, d: specs.prune_spec(model=m, dataset=d, group_by="cohort", sparsity=0.5),
    "finetune": lambda m, d: specs.finetune_spec(model=m, dataset=d, group_by="cohort", method="naive", epochs=1),
    "prune_and_finetune": lambda m, d: specs.prune_and_finetune_spec(model=m, dataset=d, group_by="cohort",
                                                                     sparsity=0.5, method="naive", epochs=1),
    "budget_search": lambda m, d: specs.budget_spec(model=m, dataset=d, group_by="cohort"),
}


def _fails_as_client_error(client, spec) -> jobs_pb2.Job:
    job = client.wait_job(client.create_job(spec).job_id, timeout=300)
    assert job.state == jobs_pb2.JOB_STATE_FAILED, job
    assert job.error.code in CLIENT_CODES, job.error
    return job


@pytest.mark.parametrize("kind", list(JOB_SPECS))
def test_every_job_kind_refuses_a_planted_hostile_model(server, client, digits, pt2, markers, kind) -> None:
    model = _plant(server, payloads.pt2_pickled_weights(pt2, os.path.join(markers, f"job-{kind}")), "model", {})
    job = _fails_as_client_error(client, JOB_SPECS[kind](model, digits["dataset"]))
    assert "pickle" in job.error.message


@pytest.mark.parametrize("kind", ["train", "evaluate"])
def test_jobs_refuse_a_planted_hostile_dataset(server, client, digits, markers, kind) -> None:
    dataset = _plant(server, payloads.npz_object_array(os.path.join(markers, f"dataset-{kind}")), "dataset",
                     DATASET_DESCRIPTION)
    if kind == "train":
        spec = specs.train_spec(dataset=dataset, architecture="small_cnn", architecture_kwargs=dict(DIGITS_CNN.kwargs),
                                epochs=1)
    else:
        spec = specs.evaluate_spec(model=digits["model"], dataset=dataset, group_by="cohort")
    _fails_as_client_error(client, spec)


def test_deploy_refuses_a_planted_hostile_model(server, client, digits, pt2, markers) -> None:
    model = _plant(server, payloads.torch_save_named_pt2(os.path.join(markers, "deploy")), "model", {})
    serving = serving_pb2_grpc.ServingServiceStub(server.channel())
    with pytest.raises(grpc.RpcError) as info:
        serving.DeployModel(serving_pb2.DeployModelRequest(
            name="hostile", artifact_id=model, group_by=["cohort"], reference_accuracy={"minority": 0.9},
            input_shape=[1, 8, 8]), timeout=120)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "artifact_id" in info.value.details()


def test_the_server_keeps_answering(server, client, digits) -> None:
    job = client.wait_job(client.create_job(specs.evaluate_spec(model=digits["model"], dataset=digits["dataset"],
                                                                group_by="cohort")).job_id, timeout=300)
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED, job


@pytest.mark.slow
def test_every_duplicate_layout_is_refused_through_the_api(client, pt2, markers, tmp_path) -> None:
    for name, content in payloads.pt2_duplicate_layouts(pt2, os.path.join(markers, "all-layouts")):
        path = tmp_path / "layout.pt2"
        path.write_bytes(content)
        err = _refused(lambda: client.upload_file(path, "model"))
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT, (name, err)
