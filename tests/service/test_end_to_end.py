"""End to end over real gRPC: the real Serve application (Ray, SQLite, artifact folder) in a
subprocess on loopback, driven through the client SDK and, for malformed requests, the raw
stubs (the SDK would refuse some of them before sending)."""

from __future__ import annotations

import time

import grpc
import pytest
import torch

from equiprune.client import specs
from equiprune.client.credentials import find_token, open_channel
from equiprune.client.errors import EquipruneError
from equiprune.client.sdk import EquipruneClient
from equiprune.engine.dataset import save_dataset
from equiprune.engine.demo_data import digits_group_dataset
from equiprune.engine.finetune.config import FinetuneConfig
from equiprune.engine.finetune.loop import finetune
from equiprune.engine.models.io import load_model, save_safetensors
from equiprune.engine.models.registry import ArchitectureSpec, build_model
from equiprune.v1 import artifacts_pb2, artifacts_pb2_grpc, jobs_pb2, jobs_pb2_grpc

DIGITS_CNN = ArchitectureSpec("small_cnn", {"num_classes": 10, "in_channels": 1, "input_size": 8, "channels": [16, 32]})


@pytest.fixture(scope="module")
def client(server):
    with EquipruneClient(server.target, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def digits_files(tmp_path_factory):
    """The digits dataset and a dense CNN trained on it, written locally (to be uploaded)."""
    folder = tmp_path_factory.mktemp("digits")
    dataset = digits_group_dataset()
    save_dataset(dataset, folder / "digits.npz")
    torch.manual_seed(0)
    model = build_model(DIGITS_CNN)
    train = dataset.select(("cohort",), split="train", min_group_size=0)
    finetune(model, {}, train, FinetuneConfig(method="naive", epochs=8, lr=0.05))
    save_safetensors(model.eval(), DIGITS_CNN, folder / "dense.safetensors")
    return folder / "dense.safetensors", folder / "digits.npz"


@pytest.fixture(scope="module")
def uploaded(client, digits_files):
    model_path, dataset_path = digits_files
    return (client.upload_file(model_path, "model", chunk_bytes=64 * 1024).artifact_id,
            client.upload_file(dataset_path, "dataset", chunk_bytes=256 * 1024).artifact_id)


def _long_finetune(model: str, dataset: str, epochs: int = 400, cpus: int = 1) -> jobs_pb2.JobSpec:
    spec = specs.finetune_spec(model=model, dataset=dataset, group_by="cohort", method="naive", epochs=epochs,
                               min_group_size=10)
    spec.resources.cpus_per_worker = cpus
    return spec


def test_upload_prune_and_finetune_watch_download(client, uploaded, tmp_path):
    model_id, dataset_id = uploaded
    spec = specs.prune_and_finetune_spec(model=model_id, dataset=dataset_id, group_by="cohort", sparsity=0.8,
                                         method="ceag", epochs=2, tolerance=0.02, dual_lr=0.05, min_group_size=10)
    job = client.create_job(spec)
    assert job.state == jobs_pb2.JOB_STATE_QUEUED and not job.done

    events = list(client.watch(job.job_id))
    sequences = [e.sequence for e in events]
    assert sequences == sorted(set(sequences)) and sequences[0] == 1, "events arrive once, in order"
    phases = [e.progress.phase for e in events]
    for phase in ("load", "prune", "finetune", "done"):
        assert phase in phases, phases
    steps = [e.progress for e in events if e.progress.phase == "finetune" and e.progress.total_steps]
    assert steps and steps[-1].step == steps[-1].total_steps and "loss" in steps[-1].metrics
    assert set(steps[-1].group_multipliers) == {"majority", "minority"}
    pruned_reports = [e.progress.report for e in events if e.progress.HasField("report")
                      and e.progress.report.stage == 2]  # REPORT_STAGE_PRUNED: damage shown before repair
    assert pruned_reports and {g.group for g in pruned_reports[0].report.groups} == {"majority", "minority"}
    assert events[-1].state == jobs_pb2.JOB_STATE_SUCCEEDED

    job = client.get_job(job.job_id)
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED and job.done and job.attempt == 1
    result = job.result
    assert abs(result.measured_sparsity - 0.8) < 0.01
    stages = {(r.stage, r.split) for r in result.reports}
    assert {(1, "test"), (2, "test"), (4, "test")} <= stages  # dense, pruned, fine-tuned on the test split
    finetuned = next(r.report for r in result.reports if r.stage == 4 and r.split == "test")
    assert finetuned.summary.HasField("max_excess_accuracy_gap") and finetuned.overall.accuracy > 0.5
    outputs = {o.role: o.artifact for o in result.outputs}
    assert set(outputs) == {"model", "sparse_model", "report"}

    path = tmp_path / "pruned.safetensors"
    client.download(outputs["model"].artifact_id, path)
    weights = load_model(str(path)).module.state_dict()
    # Prunable: every weight matrix or kernel but the first and the last (kept dense by default).
    inner = [w for name, w in weights.items() if name.endswith("weight") and w.dim() > 1][1:-1]
    zeros = sum(int((w == 0).sum()) for w in inner) / sum(w.numel() for w in inner)
    assert 0.79 < zeros < 0.81, f"the downloaded model's inner layers should be 80 % zeros, got {zeros:.3f}"


def test_cancel_stops_the_job_and_frees_its_cpus(client, uploaded):
    model_id, dataset_id = uploaded
    job = client.create_job(_long_finetune(model_id, dataset_id))
    for event in client.watch(job.job_id):
        if event.progress.phase == "finetune" and event.progress.step > 0:
            break
    started = time.monotonic()
    cancelled = client.cancel_job(job.job_id)
    assert cancelled.state == jobs_pb2.JOB_STATE_CANCELLED and cancelled.error.code == "CANCELLED"
    # A job that needs both CPUs can only start once the cancelled task has let go of its one.
    both = client.create_job(_long_finetune(model_id, dataset_id, epochs=1, cpus=2))
    done = client.wait_job(both.job_id, timeout=120)
    assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED, done.error
    assert time.monotonic() - started < 60
    again = client.get_job(job.job_id)
    assert again.state == jobs_pb2.JOB_STATE_CANCELLED, "a cancelled job stays cancelled"


def test_create_is_idempotent_with_a_request_id(client, uploaded):
    model_id, dataset_id = uploaded
    spec = specs.evaluate_spec(model=model_id, dataset=dataset_id, group_by="cohort")
    first = client.create_job(spec, request_id="e2e-idempotent-1")
    second = client.create_job(spec, request_id="e2e-idempotent-1")
    assert first.job_id == second.job_id
    other = specs.evaluate_spec(model=model_id, dataset=dataset_id, group_by="ink")
    with pytest.raises(EquipruneError) as info:
        client.create_job(other, request_id="e2e-idempotent-1")
    assert info.value.code == grpc.StatusCode.ALREADY_EXISTS and info.value.field == "request_id"
    finished = client.wait_job(first.job_id, timeout=120)
    assert finished.state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert {r.split for r in finished.result.reports} == {"train", "test"}


def test_list_jobs_filters_and_pages(client, uploaded):
    model_id, dataset_id = uploaded
    for i in range(3):
        client.wait_job(client.create_job(specs.evaluate_spec(model=model_id, dataset=dataset_id,
                                                              group_by="cohort"), request_id=f"e2e-list-{i}").job_id)
    stub = jobs_pb2_grpc.JobServiceStub(open_channel(client.target, [], token=find_token(client.target)))
    first = stub.ListJobs(jobs_pb2.ListJobsRequest(kind=jobs_pb2.JOB_KIND_EVALUATE, page_size=2))
    assert len(first.jobs) == 2 and first.next_page_token
    rest = stub.ListJobs(jobs_pb2.ListJobsRequest(kind=jobs_pb2.JOB_KIND_EVALUATE, page_size=2,
                                                  page_token=first.next_page_token))
    ids = [j.job_id for j in (*first.jobs, *rest.jobs)]
    assert len(ids) == len(set(ids)) >= 3
    assert all(j.spec.kind == jobs_pb2.JOB_KIND_EVALUATE for j in (*first.jobs, *rest.jobs))
    listed = list(client.list_jobs(states=["succeeded"], kind="evaluate"))
    assert all(j.state == jobs_pb2.JOB_STATE_SUCCEEDED for j in listed) and len(listed) >= 3


# ---------------------------------------------------------------------------- invalid requests


@pytest.fixture(scope="module")
def stubs(server):
    channel = server.channel()
    yield artifacts_pb2_grpc.ArtifactServiceStub(channel), jobs_pb2_grpc.JobServiceStub(channel)
    channel.close()


def _expect(call, code: grpc.StatusCode, field: str) -> str:
    with pytest.raises(grpc.RpcError) as info:
        response = call()
        if hasattr(response, "__iter__") and not hasattr(response, "DESCRIPTOR"):
            list(response)
    err = info.value
    assert err.code() == code, f"{err.code()}: {err.details()}"
    assert err.details().startswith(f"{field}: "), err.details()
    assert "Traceback" not in err.details() and 'File "' not in err.details()
    return err.details()


def _spec(model: str, dataset: str, **changes) -> jobs_pb2.JobSpec:
    spec = specs.prune_and_finetune_spec(model=model, dataset=dataset, group_by="cohort", sparsity=0.9)
    for name, value in changes.items():
        target, _, attr = name.rpartition("__")
        message = spec
        for part in filter(None, target.split("__")):
            message = getattr(message, part)
        if isinstance(value, list):
            del getattr(message, attr)[:]
            getattr(message, attr).extend(value)
        else:
            setattr(message, attr, value)
    return spec


INVALID_JOBS = [
    ({"data__group_by": ["religion"]}, grpc.StatusCode.INVALID_ARGUMENT, "spec.data.group_by"),
    ({"data__group_by": []}, grpc.StatusCode.INVALID_ARGUMENT, "spec.data.group_by"),
    ({"pruning__sparsity": 1.5}, grpc.StatusCode.INVALID_ARGUMENT, "spec.pruning.sparsity"),
    ({"finetune__lr": -0.1}, grpc.StatusCode.INVALID_ARGUMENT, "spec.finetune.lr"),
    ({"finetune__method": 42}, grpc.StatusCode.INVALID_ARGUMENT, "spec.finetune.method"),
    ({"data__tolerance": 3.0}, grpc.StatusCode.INVALID_ARGUMENT, "spec.data.tolerance"),
    ({"data__eval_split": "validation"}, grpc.StatusCode.INVALID_ARGUMENT, "spec.data.eval_split"),
    ({"kind": jobs_pb2.JOB_KIND_UNSPECIFIED}, grpc.StatusCode.INVALID_ARGUMENT, "spec.kind"),
    ({"kind": jobs_pb2.JOB_KIND_EVALUATE}, grpc.StatusCode.INVALID_ARGUMENT, "spec.pruning"),
    ({"model__artifact_id": "art-0000000000000000"}, grpc.StatusCode.NOT_FOUND, "spec.model.artifact_id"),
    ({"model__artifact_id": "../../etc/passwd"}, grpc.StatusCode.INVALID_ARGUMENT, "spec.model.artifact_id"),
    ({"resources__gpus_per_worker": 1}, grpc.StatusCode.FAILED_PRECONDITION, "spec.resources.gpus_per_worker"),
    ({"resources__workers": 64}, grpc.StatusCode.FAILED_PRECONDITION, "spec.resources.workers"),
]


@pytest.mark.parametrize("changes, code, field", INVALID_JOBS, ids=[f for _, _, f in INVALID_JOBS])
def test_invalid_jobs_are_refused_naming_the_field(stubs, uploaded, changes, code, field):
    _, jobs = stubs
    spec = _spec(*uploaded, **changes)
    _expect(lambda: jobs.CreateJob(jobs_pb2.CreateJobRequest(spec=spec)), code, field)


def test_model_and_dataset_must_be_of_the_right_kind(stubs, uploaded):
    _, jobs = stubs
    model_id, dataset_id = uploaded
    spec = _spec(dataset_id, dataset_id)
    _expect(lambda: jobs.CreateJob(jobs_pb2.CreateJobRequest(spec=spec)), grpc.StatusCode.FAILED_PRECONDITION,
            "spec.model")


def test_a_model_and_dataset_that_do_not_fit_are_refused_at_create(client, stubs, uploaded, tmp_path):
    _, jobs = stubs
    model_id, dataset_id = uploaded
    # Models for 3-channel 8x8 images, and with 4 classes, against 1-channel digits with 10 classes.
    for channels, fragment in ((3, "samples have shape [1, 8, 8] but the model takes [3, 8, 8]"),
                               (1, "10 classes but the model has 4 outputs")):
        wrong = ArchitectureSpec("small_cnn", {"num_classes": 4, "in_channels": channels, "input_size": 8,
                                               "channels": [4, 8]})
        save_safetensors(build_model(wrong), wrong, tmp_path / "wrong.safetensors")
        wrong_id = client.upload_file(tmp_path / "wrong.safetensors", "model").artifact_id
        details = _expect(lambda: jobs.CreateJob(jobs_pb2.CreateJobRequest(spec=_spec(wrong_id, dataset_id))),
                          grpc.StatusCode.FAILED_PRECONDITION, "spec.dataset")
        assert fragment in details
    for kwargs, fragment in (({"num_classes": 4, "in_channels": 1, "input_size": 8}, "4 outputs but the dataset has 10"),
                             ({"num_classes": 10, "in_channels": 3, "input_size": 8}, "cannot take one sample")):
        train = specs.train_spec(dataset=dataset_id, architecture="small_cnn", architecture_kwargs=kwargs)
        details = _expect(lambda: jobs.CreateJob(jobs_pb2.CreateJobRequest(spec=train)),
                          grpc.StatusCode.INVALID_ARGUMENT, "spec.train.architecture_kwargs")
        assert fragment in details


def test_invalid_job_calls(stubs):
    _, jobs = stubs
    _expect(lambda: jobs.GetJob(jobs_pb2.GetJobRequest(job_id="nope")), grpc.StatusCode.INVALID_ARGUMENT, "job_id")
    _expect(lambda: jobs.GetJob(jobs_pb2.GetJobRequest(job_id="job-0000000000000000")), grpc.StatusCode.NOT_FOUND,
            "job_id")
    _expect(lambda: jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id="job-0000000000000000")),
            grpc.StatusCode.NOT_FOUND, "job_id")
    _expect(lambda: jobs.ListJobs(jobs_pb2.ListJobsRequest(page_token="garbage")), grpc.StatusCode.INVALID_ARGUMENT,
            "page_token")
    _expect(lambda: jobs.ListJobs(jobs_pb2.ListJobsRequest(page_size=5000)), grpc.StatusCode.INVALID_ARGUMENT,
            "page_size")
    _expect(lambda: jobs.WaitJob(jobs_pb2.WaitJobRequest(job_id="job-0000000000000000", timeout={"seconds": 9999})),
            grpc.StatusCode.INVALID_ARGUMENT, "timeout")
    _expect(lambda: jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id="job-0000000000000000")),
            grpc.StatusCode.NOT_FOUND, "job_id")
    _expect(lambda: jobs.CreateJob(jobs_pb2.CreateJobRequest(request_id="has spaces", spec=jobs_pb2.JobSpec())),
            grpc.StatusCode.INVALID_ARGUMENT, "request_id")


def test_invalid_artifact_calls(stubs, tmp_path, import_root):
    artifacts, _ = stubs
    good_sha = "ab" * 32
    start = artifacts_pb2.StartUploadRequest
    _expect(lambda: artifacts.StartUpload(start(kind=0, size_bytes=10, sha256=good_sha)),
            grpc.StatusCode.INVALID_ARGUMENT, "kind")
    _expect(lambda: artifacts.StartUpload(start(kind=1, size_bytes=10, sha256="xyz")),
            grpc.StatusCode.INVALID_ARGUMENT, "sha256")
    _expect(lambda: artifacts.StartUpload(start(kind=1, size_bytes=10 ** 13, sha256=good_sha)),
            grpc.StatusCode.RESOURCE_EXHAUSTED, "size_bytes")
    upload = artifacts.StartUpload(start(kind=2, size_bytes=4, sha256=good_sha)).upload_id
    _expect(lambda: artifacts.PutUploadChunk(artifacts_pb2.PutUploadChunkRequest(upload_id=upload, offset=2, data=b"xy")),
            grpc.StatusCode.FAILED_PRECONDITION, "offset")
    _expect(lambda: artifacts.FinishUpload(artifacts_pb2.FinishUploadRequest(upload_id=upload)),
            grpc.StatusCode.FAILED_PRECONDITION, "upload_id")
    artifacts.PutUploadChunk(artifacts_pb2.PutUploadChunkRequest(upload_id=upload, offset=0, data=b"abcd"))
    _expect(lambda: artifacts.FinishUpload(artifacts_pb2.FinishUploadRequest(upload_id=upload)),
            grpc.StatusCode.INVALID_ARGUMENT, "sha256")
    _expect(lambda: artifacts.GetUpload(artifacts_pb2.GetUploadRequest(upload_id="upl-0000000000000000")),
            grpc.StatusCode.NOT_FOUND, "upload_id")
    _expect(lambda: artifacts.GetArtifact(artifacts_pb2.GetArtifactRequest(artifact_id="art-0000000000000000")),
            grpc.StatusCode.NOT_FOUND, "artifact_id")
    _expect(lambda: artifacts.DownloadArtifact(artifacts_pb2.DownloadArtifactRequest(artifact_id="x")),
            grpc.StatusCode.INVALID_ARGUMENT, "artifact_id")
    outside = tmp_path / "secret.npz"
    outside.write_bytes(b"not yours")
    _expect(lambda: artifacts.ImportArtifact(artifacts_pb2.ImportArtifactRequest(
        kind=2, source=artifacts_pb2.UriSource(uri=str(outside), sha256=good_sha))),
        grpc.StatusCode.FAILED_PRECONDITION, "source.uri")
    _expect(lambda: artifacts.ImportArtifact(artifacts_pb2.ImportArtifactRequest(
        kind=2, source=artifacts_pb2.UriSource(uri="sample:nothing"))), grpc.StatusCode.INVALID_ARGUMENT, "source.uri")


def test_content_is_validated_on_arrival(client, import_root):
    bogus = import_root / "bogus.npz"
    bogus.write_bytes(b"PK\x03\x04 this is not a dataset")
    with pytest.raises(EquipruneError) as info:
        client.upload_file(bogus, "dataset")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid dataset" in str(info.value)
    with pytest.raises(EquipruneError) as info:
        client.upload_file(bogus, "model")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid model" in str(info.value)


def test_import_from_an_allowed_root_reuses_identical_content(client, digits_files, import_root):
    import hashlib
    import shutil

    copy = import_root / "digits.npz"
    shutil.copy(digits_files[1], copy)
    digest = hashlib.sha256(copy.read_bytes()).hexdigest()
    first = client.import_uri(str(copy), "dataset", sha256=digest)
    again = client.import_uri(f"file://{copy}", "dataset", sha256=digest)
    assert first.artifact_id == again.artifact_id and first.description["attributes"] == "cohort,ink"


def test_several_workers_fine_tune_data_parallel_through_ray_train(client, uploaded):
    model_id, dataset_id = uploaded
    spec = specs.prune_and_finetune_spec(model=model_id, dataset=dataset_id, group_by="cohort", sparsity=0.5,
                                         method="ceag", epochs=2, min_group_size=10)
    spec.resources.workers = 2
    job = client.create_job(spec)
    events = list(client.watch(job.job_id))
    job = client.get_job(job.job_id)
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED, job.error
    assert abs(job.result.measured_sparsity - 0.5) < 0.01
    assert any(r.stage == 4 for r in job.result.reports), "fine-tuned reports come back from rank 0"
    steps = [e.progress.step for e in events if e.progress.phase == "finetune" and e.progress.total_steps]
    assert steps and steps[-1] == 22, steps  # 2 epochs × 11 global batches, reported once (rank 0)
    assert {o.role for o in job.result.outputs} == {"model", "sparse_model", "report"}


def test_diagnose_predicts_the_damage_of_a_pruning(client, uploaded):
    model_id, dataset_id = uploaded
    job = client.wait_job(client.create_job(specs.diagnose_spec(
        model=model_id, dataset=dataset_id, group_by="cohort", probes=2, samples_per_group=100, sparsity=0.8,
        min_group_size=10)).job_id, timeout=300)
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED, job.error
    groups = {g.group: g for g in job.result.diagnostics.groups}
    assert set(groups) == {"majority", "minority", "overall"}
    for name in ("majority", "minority"):
        g = groups[name]
        assert g.n == 100 and g.gradient_norm > 0 and g.HasField("hessian_trace")
        assert g.HasField("predicted_excess_loss") and g.HasField("measured_excess_loss")
    assert {o.role for o in job.result.outputs} == {"model", "sparse_model", "report"}


def test_budget_search_returns_a_sweep_with_per_group_reports(client, uploaded):
    model_id, dataset_id = uploaded
    job = client.wait_job(client.create_job(specs.budget_spec(
        model=model_id, dataset=dataset_id, group_by="cohort", tolerance=0.05, low=0.3, high=0.95, max_probes=3,
        min_group_size=10)).job_id, timeout=300)
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED, job.error
    sweep = job.result.sweep
    assert 2 <= len(sweep) <= 3 and [p.sparsity for p in sweep] == sorted(p.sparsity for p in sweep)
    assert all({g.group for g in p.report.groups} == {"majority", "minority"} for p in sweep)
    met = [p.sparsity for p in sweep if p.tolerance_met]
    if met:
        assert abs(job.result.best_sparsity - max(met)) < 0.01
    else:
        assert not job.result.HasField("best_sparsity")


def test_a_corrupted_artifact_is_data_loss_and_never_used(client, server, digits_files, tmp_path):
    """256 flipped bytes in a stored model: an evaluate job fails with DATA_LOSS (no job runs on
    it, no artifact is built from it), a deploy is refused, a download streams nothing."""
    from equiprune.client.errors import EquipruneError

    model_path, dataset_path = digits_files
    model = client.upload_file(model_path, "model", chunk_bytes=64 * 1024)  # this test's own copy
    dataset = client.upload_file(dataset_path, "dataset", chunk_bytes=256 * 1024).artifact_id
    stored = next(server.data_dir.glob(f"**/{model.artifact_id}/content"))
    content = bytearray(stored.read_bytes())
    for i in range(1000, 1256):
        content[i] ^= 0xFF
    stored.write_bytes(bytes(content))

    before = {a.artifact_id for a in client.list_artifacts()}
    job = client.wait_job(client.create_job(specs.evaluate_spec(model=model.artifact_id, dataset=dataset,
                                                                 group_by="cohort")).job_id, timeout=300)
    assert job.state == jobs_pb2.JOB_STATE_FAILED and job.error.code == "DATA_LOSS", job.error
    assert model.artifact_id in job.error.message
    assert {a.artifact_id for a in client.list_artifacts()} == before  # nothing built on it
    with pytest.raises(EquipruneError) as caught:
        client.download(model.artifact_id, tmp_path / "m.safetensors")
    assert caught.value.code == grpc.StatusCode.DATA_LOSS and not (tmp_path / "m.safetensors").exists()
    with pytest.raises(EquipruneError) as caught:
        client.deploy_model("corrupt", model.artifact_id, group_by=["cohort"], reference_accuracy={"a": 0.9},
                            input_shape=[1, 8, 8])
    assert caught.value.code == grpc.StatusCode.DATA_LOSS
