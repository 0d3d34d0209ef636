"""The service's planes, protocol-neutral: driven here with plain Python values, a real
artifact store in a temporary folder, and fakes for the job manager, the monitor, the model
server and the sandbox — no gRPC, no Ray."""

from __future__ import annotations

import asyncio
import dataclasses
import types

import pytest

from equiprune.engine.finetune.config import FinetuneConfig
from equiprune.engine.jobs import DataConfig, JobSpec
from equiprune.engine.prune import PruningConfig
from equiprune.service.artifacts.plane import ArtifactsPlane
from equiprune.service.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from equiprune.service.jobs.plane import JobsPlane
from equiprune.service.jobs.wire import ArtifactSource
from equiprune.service.serving.plane import DeployRequest, EvaluationRecord, Instance, ServingPlane
from equiprune.service.artifacts.store import ArtifactStore
from equiprune.service.jobs.records import _not_found
from equiprune.service.tenants.auth import Caller

ME = Caller("admin", "admin")
DATASET = {"attributes": "cohort,ink", "splits": "train,test", "sample_shape": "1x8x8", "classes": "10"}
MODEL = {"input_shape": "1x8x8", "outputs": "10", "format": "safetensors"}


def run(coroutine):
    return asyncio.run(coroutine)


@pytest.fixture()
def store(tmp_path) -> ArtifactStore:
    return ArtifactStore(str(tmp_path / "store"), cache_dir=str(tmp_path / "cache"))


def _put(store, tmp_path, kind: str, description: dict, content: bytes) -> str:
    path = tmp_path / f"{kind}-{len(content)}.bin"
    path.write_bytes(content)
    return store.put_file(str(path), kind, path.name, source="test", description=description).artifact_id


@dataclasses.dataclass
class FakeManager:
    created: list = dataclasses.field(default_factory=list)
    events_pages: list = dataclasses.field(default_factory=list)

    async def create(self, kind, spec, request_id, tenant, max_concurrent_jobs):
        self.created.append((kind, spec, request_id))
        return {"job_id": "job-0000000000000001", "spec": spec}

    async def wait(self, job_id, timeout_s):
        return ("waited", job_id, timeout_s)

    async def events(self, job_id, after, wait_s):
        return self.events_pages.pop(0)

    async def get(self, job_id):
        if job_id == "job-0000000000000001":
            return types.SimpleNamespace(job_id=job_id, tenant="admin")
        if job_id == "job-00000000000000ff":
            return types.SimpleNamespace(job_id=job_id, tenant="someone-else")
        raise _not_found(job_id)


def _spec(dataset: str, model: str, **data) -> JobSpec:
    return JobSpec(kind="prune_and_finetune", dataset=dataset, model=model,
                   data=DataConfig(group_by=("cohort",), **data), pruning=PruningConfig(sparsity=0.8),
                   finetune=FinetuneConfig(epochs=1))


def test_the_job_plane_checks_a_spec_against_its_artifacts_and_stores_it_normalised(store, tmp_path):
    dataset, model = _put(store, tmp_path, "dataset", DATASET, b"d"), _put(store, tmp_path, "model", MODEL, b"mm")
    manager = FakeManager()
    plane = JobsPlane(store, manager)
    run(plane.create(ME, _spec(dataset, model, tolerance=0.03), "retry-1"))
    kind, stored, request_id = manager.created[0]
    assert (kind, request_id) == ("prune_and_finetune", "retry-1")
    assert stored["finetune"]["tolerance"] == 0.03 and stored["finetune"]["method"] == "fair_distill"
    assert JobSpec.from_dict(stored) == _spec(dataset, model, tolerance=0.03)  # the stored form is lossless

    refusals = [
        (lambda: plane.create(ME, _spec(model, model)), "spec.dataset", FailedPrecondition),  # a model as the dataset
        (lambda: plane.create(ME, dataclasses.replace(_spec(dataset, model), data=DataConfig(group_by=("age",)))),
         "spec.data.group_by", InvalidArgument),
        (lambda: plane.create(ME, _spec(dataset, model, eval_split="validation")), "spec.data.eval_split", InvalidArgument),
        (lambda: plane.create(ME, _spec(dataset, model), "no spaces allowed"), "request_id", InvalidArgument),
    ]
    for make, field, error in refusals:
        with pytest.raises(error) as caught:
            run(make())
        assert caught.value.field == field
    assert len(manager.created) == 1  # nothing refused reached the manager


def test_the_job_plane_bounds_waits_and_ends_a_watch_on_the_last_event(store):
    manager = FakeManager(events_pages=[([_Event(1), _Event(2)], False), ([_Event(3)], True)])
    plane = JobsPlane(store, manager)
    assert run(plane.wait(ME, "job-0000000000000001", None))[2] == 60.0
    with pytest.raises(InvalidArgument) as caught:
        run(plane.wait(ME, "job-0000000000000001", 601))
    assert caught.value.field == "timeout"
    with pytest.raises(InvalidArgument) as caught:
        run(plane.wait(ME, "job-1", 1))
    assert caught.value.field == "job_id"

    async def watch():
        return [(e.sequence, last) async for e, last in plane.watch(ME, "job-0000000000000001", 0)]
    assert run(watch()) == [(1, False), (2, False), (3, True)]

    # Another tenant's job is refused in the same words as one that does not exist.
    for method in (plane.get, plane.cancel):
        with pytest.raises(NotFound) as theirs:
            run(method(ME, "job-00000000000000ff"))
        with pytest.raises(NotFound) as absent:
            run(method(ME, "job-00000000000000fe"))
        assert str(theirs.value).replace("ff", "fe") == str(absent.value)


@dataclasses.dataclass
class _Event:
    sequence: int


def test_the_artifact_plane_bounds_pages_and_chunks_and_names_job_spec_fields(store, tmp_path):
    dataset = _put(store, tmp_path, "dataset", DATASET, b"x" * 200_000)
    plane = ArtifactsPlane(store, validate=None, samples_dir=tmp_path / "samples")
    with pytest.raises(InvalidArgument) as caught:
        plane.list(ME, None, 5000, "")
    assert caught.value.field == "page_size"
    with pytest.raises(InvalidArgument) as caught:
        plane.download(ME, dataset, 0, 1)
    assert caught.value.field == "chunk_bytes"
    record, chunks = plane.download(ME, dataset, 0, 64 * 1024)
    assert b"".join(chunks) == b"x" * 200_000 and record.size_bytes == 200_000
    assert plane.resolve(ME, ArtifactSource(artifact_id=dataset), "spec.dataset") == dataset
    assert plane.resolve(ME, ArtifactSource(), "spec.model") is None
    with pytest.raises(NotFound) as caught:
        plane.resolve(ME, ArtifactSource(artifact_id="art-0000000000000009"), "spec.model")
    assert caught.value.field == "spec.model.artifact_id"
    with pytest.raises(InvalidArgument) as caught:
        plane.import_artifact(ME, "dataset", ArtifactSource(uri=""), "")
    assert caught.value.field == "source.uri"


class FakeMonitor:
    def __init__(self):
        self.registry, self.predictions, self.outcomes, self.evaluations, self.asked = {}, [], [], [], 0

    async def deploy(self, served):
        self.registry[served["name"]] = served
        return served

    async def served(self, name):
        self.asked += 1
        if name not in self.registry:
            raise NotFound(f"no served model {name!r}", field="model")
        return self.registry[name]

    async def record_predictions(self, model, items):
        self.predictions.extend(items)

    async def record_outcomes(self, items):
        self.outcomes.extend(items)
        return {"joined": len(items)}

    async def record_evaluations(self, model, records):
        self.evaluations.extend(records)
        return {"accepted": len(records)}


class FakeModels:
    def __init__(self, primary: str):
        self.calls, self.primary = [], primary

    async def predict(self, artifact_id, inputs, shape):
        self.calls.append(artifact_id)
        hot = 1 if artifact_id == self.primary else 2  # the model and its shadow disagree
        return [[1.0 if c == hot else 0.0 for c in range(3)] for _ in inputs]


class FakeSandbox:
    def __init__(self, width: int):
        self.width, self.probed = width, []

    def run(self, op, args, files, **kwargs):
        self.probed.append((op, args["input_shape"]))
        return {"outputs": self.width}


def test_the_serving_plane_probes_deploys_fans_out_to_the_shadow_and_records(store, tmp_path):
    model = _put(store, tmp_path, "model", MODEL, b"m1")
    shadow = _put(store, tmp_path, "model", MODEL, b"m22")
    monitor, models, sandbox = FakeMonitor(), FakeModels(model), FakeSandbox(width=3)
    plane = ServingPlane(store, sandbox, JobsPlane(store, FakeManager()), monitor, models, probe_timeout_s=5)
    request = DeployRequest(name="faces", artifact_id=model, shadow_artifact_id=shadow, group_by=("race",),
                            reference_accuracy={"a": 0.9}, input_shape=(2,))
    served = run(plane.deploy(ME, request))
    assert served["num_classes"] == 3 and served["tolerance"] == 0.01 and len(sandbox.probed) == 2

    predictions = run(plane.predict(ME, "faces", [Instance([0.0, 1.0], {"race": "a"}), Instance([1.0, 0.0], {"race": "b"})]))
    assert len(models.calls) == 2 and [(p.predicted_class, p.shadow_class) for p in predictions] == [(1, 2), (1, 2)]
    assert [item[2] for item in monitor.predictions] == [{"race": "a"}, {"race": "b"}]
    run(plane.predict(ME, "faces", [Instance([0.0, 1.0], {"race": "a"})]))
    assert monitor.asked == 1  # the served model came from the plane's cache the second time

    for make, field in [
        (lambda: plane.predict(ME, "faces", [Instance([0.0], {"race": "a"})]), "instances[0].values"),
        (lambda: plane.predict(ME, "faces", [Instance([0.0, float("nan")], {"race": "a"})]), "instances[0].values"),
        (lambda: plane.predict(ME, "faces", [Instance([0.0, 1.0], {})]), "instances[0].groups.race"),
        (lambda: plane.report_outcomes(ME, []), "outcomes"),
        (lambda: plane.record_evaluations(ME, "faces", [EvaluationRecord(None, {}, 1, 1, confidence=2.0)]),
         "records[0].confidence"),
        (lambda: plane.deploy(ME, dataclasses.replace(request, name="Faces!")), "name"),
        (lambda: plane.deploy(ME, dataclasses.replace(request, tolerance=1.5)), "tolerance"),
        (lambda: plane.deploy(ME, dataclasses.replace(request, reference_accuracy={})), "reference_job_id"),
    ]:
        with pytest.raises(InvalidArgument) as caught:
            run(make())
        assert caught.value.field == field

    sandbox.width = 4  # a model whose outputs do not match its shadow's is refused at deploy
    narrow = FakeSandbox(width=3)
    plane.sandbox = _Alternating(sandbox, narrow)
    with pytest.raises(FailedPrecondition) as caught:
        run(plane.deploy(ME, dataclasses.replace(request, name="faces-two")))
    assert caught.value.field == "shadow_artifact_id"
    assert run(plane.report_outcomes(ME, [("admin/faces.x", 1), ("other/faces.y", 1)]))["joined"] == 1


class _Alternating:
    def __init__(self, *sandboxes):
        self.sandboxes, self.calls = sandboxes, 0

    def run(self, *args, **kwargs):
        sandbox = self.sandboxes[self.calls % len(self.sandboxes)]
        self.calls += 1
        return sandbox.run(*args, **kwargs)


def test_a_tenant_holding_its_storage_quota_starts_no_job_counting_open_uploads(store, tmp_path):
    """The job gate counts what uploads and imports count (held_bytes): stored plus announced."""
    from equiprune.service.tenants.store import Quotas

    dataset, model = _put(store, tmp_path, "dataset", DATASET, b"d"), _put(store, tmp_path, "model", MODEL, b"mm")
    tight = Caller("admin", "admin", quotas=Quotas(max_stored_bytes=12))
    manager = FakeManager()
    plane = JobsPlane(store, manager)
    run(plane.create(tight, _spec(dataset, model)))  # 3 bytes held of 12
    store.start_upload("dataset", "big.bin", 9, "0" * 64, tenant="admin", quotas=tight.quotas)
    with pytest.raises(ResourceExhausted) as caught:  # 3 stored + 9 announced = 12
        run(plane.create(tight, _spec(dataset, model)))
    assert caught.value.field == "quotas.max_stored_bytes" and "holds 12 bytes" in str(caught.value)
    assert len(manager.created) == 1
