"""The client tests' fake server (tests/client/fake_server.py) against a real `equiprune serve`.

The client tests trust the fake; this module checks that trust. The same SDK calls run against
both servers, and what the client can see is compared: which fields are set, the counts, the
per-group window metrics of GetModelMetrics after the same outcomes (both compute them with
engine/metrics.py, so the numbers must agree, not only the shapes), the shape of a job's
per-group report, and the status code and field of the same bad requests.

What legitimately differs is left out: ids, times, the predicted classes and confidences (the
fake's "model" is a softmax of the first ten values, the real one a CNN), and the numbers of a
job's report (the fake's are scripted). The real server needs about a minute to start.
"""

from __future__ import annotations

import math

import pytest

from equiprune.client import specs
from equiprune.client.errors import EquipruneError, SpecError
from equiprune.client.sdk import EquipruneClient
from equiprune.v1 import jobs_pb2
from harness.server import ServerProcess
from tests.client.fake_server import FakeServer

pytestmark = pytest.mark.e2e

DIGITS_CNN = {"num_classes": 10, "in_channels": 1, "input_size": 8, "channels": [16, 32]}
REFERENCE = {"a": 0.9, "b": 0.8}  # no overall: both derive it from the groups' references
# (group, records, correct ones): a and b are judged (≥ the real default min_count of 30), c is not.
RECORDS = [("a", 40, 34), ("b", 35, 21), ("c", 3, 1)]
MIN_COUNT = 30
# Numbers that depend on the model, not on the monitor: compared as "set" or "unset" only.
MODEL_DEPENDENT = {"mean_confidence", "mean_boundary_proxy"}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """An untrained digits CNN (its predictions do not matter: outcomes repeat them)."""
    import torch

    from equiprune.engine.models.io import save_safetensors
    from equiprune.engine.models.registry import ArchitectureSpec, build_model

    torch.manual_seed(0)
    spec = ArchitectureSpec("small_cnn", DIGITS_CNN)
    path = tmp_path_factory.mktemp("contract-model") / "dense.safetensors"
    save_safetensors(build_model(spec).eval(), spec, path)
    return path


@pytest.fixture(scope="module")
def observed(tmp_path_factory, model_file):
    """{"real": ..., "fake": ...}: what the client saw of the same scenario on each server."""
    real = ServerProcess(tmp_path_factory.mktemp("contract") / "data").start()
    try:
        seen = {"real": _scenario(real.target, model_file)}
    finally:
        real.stop()
    with FakeServer() as fake:
        fake.serving.min_count = MIN_COUNT  # the real server's default
        seen["fake"] = _scenario(fake.target, model_file)
    return seen


def _scenario(target: str, model_file) -> dict:
    seen: dict = {}
    with EquipruneClient(target, timeout=120, retries=2, backoff=0.05, max_backoff=0.2) as client:
        model = client.upload_file(model_file, "model")
        dataset = client.import_uri("sample:digits", "dataset")
        # `description` is left out: the real store describes what it parsed (architecture, rows,
        # attributes); the fake stores opaque bytes and describes nothing (a known gap).
        ignore = {"artifact_id", "create_time", "sha256", "size_bytes", "display_name", "source", "description"}
        seen["artifacts"] = [_fields(model, ignore=ignore), _fields(dataset, ignore=ignore)]
        job = client.wait_job(client.create_job(specs.evaluate_spec(
            model=model.artifact_id, dataset=dataset.artifact_id, group_by="cohort", min_group_size=10)).job_id)
        seen["job_state"] = jobs_pb2.JobState.Name(job.state)
        seen["job_reports"] = sorted((r.stage, r.split, _report_shape(r.report)) for r in job.result.reports)

        served = client.deploy_model("contract", model.artifact_id, ["cohort"], reference_accuracy=REFERENCE,
                                     tolerance=0.05, input_shape=[1, 8, 8])
        seen["deployed"] = _fields(served, ignore={"artifact_id", "create_time"})
        records = [{"label": 1, "predicted_class": 1 if i < correct else 2, "groups": {"cohort": group},
                    **({"confidence": 0.75} if i % 2 else {})}
                   for group, count, correct in RECORDS for i in range(count)]
        seen["recorded"] = client.record_evaluations("contract", records)

        instances = [([0.1 * (i + j % 7) for j in range(64)], {"cohort": "a"}) for i in range(5)]
        predictions = client.predict("contract", instances)
        seen["predictions"] = [(_field_names(p, ignore={"predicted_class"}), len(p.probabilities),
                                round(sum(p.probabilities), 4)) for p in predictions]
        outcomes = [(p.prediction_id, p.predicted_class) for p in predictions]
        seen["outcomes"] = [client.report_outcomes(outcomes[:3]),
                            client.report_outcomes([outcomes[0], *outcomes[3:], ("never-issued", 1)])]
        seen["metrics"] = _metrics(client.get_model_metrics("contract"))
        seen["errors"] = _errors(client, model.artifact_id, dataset.artifact_id)
        client.undeploy_model("contract")
        after = client.get_model_metrics("contract")
        seen["after_undeploy"] = (after.HasField("model"), _fields(after.totals))
    return seen


def _errors(client: EquipruneClient, model: str, dataset: str) -> dict:
    a = {"cohort": "a"}
    calls = {
        "predict an unknown model": lambda: client.predict("nope", [([0.0] * 64, a)]),
        "predict with too few values": lambda: client.predict("contract", [([0.0] * 3, a)]),
        "predict without the group": lambda: client.predict("contract", [([0.0] * 64, {})]),
        "metrics of an unknown model": lambda: client.get_model_metrics("nope"),
        "undeploy an unknown model": lambda: client.undeploy_model("nope"),
        "deploy an unknown artifact": lambda: client.deploy_model(
            "other", "art-0000000000000000", ["cohort"], reference_accuracy=REFERENCE, input_shape=[1, 8, 8]),
        "deploy a dataset": lambda: client.deploy_model(
            "other", dataset, ["cohort"], reference_accuracy=REFERENCE, input_shape=[1, 8, 8]),
        "deploy without a reference": lambda: client.deploy_model("other", model, ["cohort"], input_shape=[1, 8, 8]),
        "record a label outside the classes": lambda: client.record_evaluations(
            "contract", [{"label": 99, "predicted_class": 1, "groups": a}]),
        # Well-formed ids: the real server refuses a malformed job id as INVALID_ARGUMENT, the
        # fake answers NOT_FOUND (tests/client/test_cli.py relies on its message).
        "get an unknown job": lambda: client.get_job("job-0000000000000000"),
        "get an unknown artifact": lambda: client.get_artifact("art-0000000000000000"),
    }
    answers = {}
    for name, call in calls.items():
        try:
            call()
            answers[name] = "accepted"
        except EquipruneError as error:
            answers[name] = (error.code.name, error.field)
        except SpecError as error:  # refused by the SDK before sending: the same on both, but say so
            answers[name] = ("refused by the SDK", error.field)
    return answers


def _metrics(reply) -> dict:
    return {
        "min_count": reply.min_count,
        "model": reply.HasField("model"),
        "totals": _fields(reply.totals),
        "windows": [{"window_seconds": w.window_seconds,
                     "summary": _fields(w, ignore={"groups", "overall", "window_seconds"}),
                     "overall": _fields(w.overall),
                     "groups": [_fields(g) for g in w.groups]} for w in reply.windows],
    }


def _report_shape(report) -> tuple:
    """Which fields a job's report sets in its groups (the datasets' groups differ: the fake
    scripts young/old/rare), its overall and its summary parts."""
    # Whether a group is too small is the data's business (the fake's "rare" has 8 samples).
    groups = sorted({_field_names(g, ignore={"sufficient_data"}) for g in report.groups})
    return (groups, _field_names(report.overall), _field_names(report.summary, ignore={"insufficient_groups"}),
            report.paired, report.min_group_size)


def _field_names(message, ignore=frozenset()) -> tuple[str, ...]:
    return tuple(sorted(f.name for f, _ in message.ListFields() if f.name not in ignore))


def _fields(message, ignore=frozenset()) -> dict:
    """Every set field of `message` → its value (floats to 12 digits: the two servers may sum
    groups in another order), model-dependent ones → "set"."""
    out = {}
    for f, value in message.ListFields():
        if f.name in ignore:
            continue
        if f.name in MODEL_DEPENDENT:
            value = "set"
        elif isinstance(value, float):
            value = round(value, 12) if math.isfinite(value) else repr(value)
        elif hasattr(value, "items"):  # a map
            value = {k: round(v, 12) if isinstance(v, float) else v for k, v in value.items()}
        elif hasattr(value, "extend"):  # a repeated field
            value = list(value)
        out[f.name] = value
    return out


@pytest.mark.parametrize("part", ["artifacts", "job_state", "job_reports", "deployed", "recorded", "predictions",
                                  "outcomes", "metrics", "errors", "after_undeploy"])
def test_the_fake_answers_like_the_real_server(observed, part):
    assert observed["fake"][part] == observed["real"][part]
