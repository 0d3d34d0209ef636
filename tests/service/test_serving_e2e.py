"""Serving and monitoring end to end: deploy a pruned model with its dense shadow, predict over
real gRPC, report delayed outcomes, read per-group metrics over gRPC and through a real
Prometheus server scraping the exporter, then restart the service and find the monitor state
(pending predictions included) again."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections import Counter

import grpc
import pytest

from equiprune.client import specs
from equiprune.client.sdk import EquipruneClient
from equiprune.client.traffic import write_traffic
from equiprune.v1 import jobs_pb2, serving_pb2, serving_pb2_grpc

from .server import ServerProcess, free_port


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A running service with a pruned digits model deployed (dense shadow, reference job)."""
    folder = tmp_path_factory.mktemp("serving")
    server = ServerProcess(folder / "data").start()
    with EquipruneClient(server.target, timeout=60) as client:
        dataset = client.import_uri("sample:digits", "dataset").artifact_id
        train = client.wait_job(client.create_job(specs.train_spec(
            dataset=dataset, architecture="small_cnn", epochs=10,
            architecture_kwargs={"num_classes": 10, "in_channels": 1, "input_size": 8, "channels": [16, 32]})).job_id)
        dense = train.result.outputs[0].artifact.artifact_id
        job = client.wait_job(client.create_job(specs.prune_and_finetune_spec(
            model=dense, dataset=dataset, group_by="cohort", sparsity=0.8, method="naive", epochs=1,
            min_group_size=10)).job_id)
        assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED, job.error
        pruned = next(o.artifact.artifact_id for o in job.result.outputs if o.role == "model")
    channel = server.channel()
    stub = serving_pb2_grpc.ServingServiceStub(channel)
    stub.DeployModel(serving_pb2.DeployModelRequest(name="digits", artifact_id=pruned, shadow_artifact_id=dense,
                                                    group_by=["cohort"], reference_job_id=job.job_id))
    traffic = folder / "traffic.jsonl"
    write_traffic("sample:digits", traffic, group_by=["cohort"])
    rows = [json.loads(line) for line in traffic.read_text().splitlines()]
    yield server, stub, rows, job
    channel.close()
    server.stop()


def _predict(stub, rows):
    predictions = []
    for start in range(0, len(rows), 100):
        request = serving_pb2.PredictRequest(model="digits", instances=[
            serving_pb2.Instance(values=r["values"], groups=r["groups"]) for r in rows[start:start + 100]])
        predictions.extend(stub.Predict(request).predictions)
    return predictions


def _expected(rows, predictions) -> dict:
    """Per group: n, correct, shadow agreements — computed here from what Predict returned."""
    n, correct, agree = Counter(), Counter(), Counter()
    for row, p in zip(rows, predictions):
        g = row["groups"]["cohort"]
        n[g] += 1
        correct[g] += p.predicted_class == row["label"]
        agree[g] += p.shadow_class == p.predicted_class
    return {"n": n, "correct": correct, "agree": agree}


def test_predict_outcomes_metrics_prometheus_and_restart(served, tmp_path):
    server, stub, rows, job = served
    model = stub.ListServedModels(serving_pb2.ListServedModelsRequest()).models[0]
    assert model.name == "digits" and list(model.input_shape) == [1, 8, 8]
    dense_test = next(r.report for r in job.result.reports if r.stage == 1 and r.split == "test")
    assert model.reference_accuracy["minority"] == pytest.approx(dense_test.groups[1].accuracy)

    predictions = _predict(stub, rows)
    assert len(predictions) == len(rows) and len({p.prediction_id for p in predictions}) == len(rows)
    assert all(abs(sum(p.probabilities) - 1) < 1e-4 and p.HasField("shadow_class") for p in predictions)

    # Outcomes arrive later, out of order, some twice, some for ids that never existed; the
    # last 49 only after a restart.
    held_back = 49
    first = [(p.prediction_id, r["label"]) for p, r in zip(predictions, rows)][:-held_back][::-1]
    counts = stub.ReportOutcomes(serving_pb2.ReportOutcomesRequest(outcomes=[
        serving_pb2.Outcome(prediction_id=i, label=label) for i, label in first]))
    assert (counts.joined, counts.duplicate, counts.unknown) == (len(first), 0, 0)
    again = stub.ReportOutcomes(serving_pb2.ReportOutcomesRequest(outcomes=[
        serving_pb2.Outcome(prediction_id=first[0][0], label=first[0][1]),
        serving_pb2.Outcome(prediction_id="never-made", label=1)]))
    assert (again.joined, again.duplicate, again.unknown) == (0, 1, 1)

    expected = _expected(rows[:-held_back], predictions[:-held_back])
    metrics = stub.GetModelMetrics(serving_pb2.GetModelMetricsRequest(model="digits"))
    window = metrics.windows[0]
    assert window.window_seconds == 300
    by_group = {g.group: g for g in window.groups}
    for group in ("majority", "minority"):
        g = by_group[group]
        assert g.n == expected["n"][group] and g.predictions >= expected["n"][group]
        assert g.accuracy == pytest.approx(expected["correct"][group] / expected["n"][group])
        assert g.accuracy_ci_low < g.accuracy < g.accuracy_ci_high
        assert g.shadow_agreement == pytest.approx(
            sum(p.shadow_class == p.predicted_class for p, r in zip(predictions, rows) if r["groups"]["cohort"] == group)
            / sum(r["groups"]["cohort"] == group for r in rows))
    assert metrics.totals.outcomes_joined == len(first) and metrics.totals.outcomes_duplicate == 1

    _check_prometheus(server, expected, tmp_path)

    server.stop()
    server.start()
    stub = serving_pb2_grpc.ServingServiceStub(server.channel())
    after = stub.GetModelMetrics(serving_pb2.GetModelMetricsRequest(model="digits"))
    assert {g.group: g.n for g in after.windows[0].groups} == {g: expected["n"][g] for g in ("majority", "minority")}
    late = [(p.prediction_id, r["label"]) for p, r in zip(predictions, rows)][-held_back:]
    counts = stub.ReportOutcomes(serving_pb2.ReportOutcomesRequest(outcomes=[
        serving_pb2.Outcome(prediction_id=i, label=label) for i, label in late]))
    assert counts.joined == held_back, "predictions made before the restart still join"
    final = stub.GetModelMetrics(serving_pb2.GetModelMetricsRequest(model="digits"))
    assert sum(g.n for g in final.windows[0].groups) == len(rows)


def _check_prometheus(server, expected, tmp_path) -> None:
    """A real Prometheus scrapes the exporter; its HTTP API returns the same per-group values."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus server is not installed (Debian package `prometheus`; .ci/run installs it)")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: equiprune\n    static_configs: [{{targets: ['127.0.0.1:{server.metrics_port}']}}]\n")
    process = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                f"--web.listen-address=127.0.0.1:{port}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # The label is the monitor's key, <tenant>/<name> (docs/tenants.md): the server's admin.
        query = 'equiprune_group_outcomes{model="admin/digits",window="5m"}'
        deadline, values = time.monotonic() + 60, {}
        while time.monotonic() < deadline:
            values = _query(port, query)
            if set(values) == {"majority", "minority"}:
                break
            time.sleep(1)
        assert values == {g: float(expected["n"][g]) for g in ("majority", "minority")}
        accuracy = _query(port, 'equiprune_group_accuracy_ratio{model="admin/digits",window="5m"}')
        for g in ("majority", "minority"):
            assert accuracy[g] == pytest.approx(expected["correct"][g] / expected["n"][g])
    finally:
        process.terminate()
        process.wait(30)


def _query(port: int, expr: str) -> dict[str, float]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
    except OSError:
        return {}
    return {r["metric"]["group"]: float(r["value"][1]) for r in body["data"]["result"]}


def test_bad_serving_requests_name_the_field(served):
    _, stub, rows, _ = served

    def expect(call, code, field):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == code, info.value.details()
        assert info.value.details().startswith(field + ": "), info.value.details()

    expect(lambda: stub.Predict(serving_pb2.PredictRequest(model="nope", instances=[serving_pb2.Instance()])),
           grpc.StatusCode.NOT_FOUND, "model")
    expect(lambda: stub.Predict(serving_pb2.PredictRequest(model="digits", instances=[
        serving_pb2.Instance(values=[1.0, 2.0], groups={"cohort": "majority"})])),
        grpc.StatusCode.INVALID_ARGUMENT, "instances[0].values")
    expect(lambda: stub.Predict(serving_pb2.PredictRequest(model="digits", instances=[
        serving_pb2.Instance(values=rows[0]["values"])])), grpc.StatusCode.INVALID_ARGUMENT, "instances[0].groups.cohort")
    expect(lambda: stub.Predict(serving_pb2.PredictRequest(model="digits")), grpc.StatusCode.INVALID_ARGUMENT,
           "instances")
    expect(lambda: stub.DeployModel(serving_pb2.DeployModelRequest(name="Bad Name")), grpc.StatusCode.INVALID_ARGUMENT,
           "name")
    expect(lambda: stub.DeployModel(serving_pb2.DeployModelRequest(name="x", artifact_id="art-0000000000000000",
                                                                   group_by=["cohort"])),
           grpc.StatusCode.NOT_FOUND, "artifact_id")
    expect(lambda: stub.ReportOutcomes(serving_pb2.ReportOutcomesRequest()), grpc.StatusCode.INVALID_ARGUMENT,
           "outcomes")
    expect(lambda: stub.GetModelMetrics(serving_pb2.GetModelMetricsRequest(model="nope")), grpc.StatusCode.NOT_FOUND,
           "model")


def test_evaluation_records_second_model_and_undeploy(served):
    _, stub, rows, job = served
    pruned = stub.ListServedModels(serving_pb2.ListServedModelsRequest()).models[0].artifact_id
    stub.DeployModel(serving_pb2.DeployModelRequest(
        name="digits-labelled", artifact_id=pruned, group_by=["cohort"], input_shape=[1, 8, 8],
        reference_accuracy={"majority": 0.98, "minority": 0.97}, reference_overall_accuracy=0.978, tolerance=0.02))
    names = {m.name for m in stub.ListServedModels(serving_pb2.ListServedModelsRequest()).models}
    assert names == {"digits", "digits-labelled"}  # two served names, one replica set (multiplexed)
    records = [serving_pb2.EvaluationRecord(groups={"cohort": "minority"}, label=8, predicted_class=8 if i < 30 else 3,
                                            confidence=0.9) for i in range(40)]
    counts = stub.RecordEvaluations(serving_pb2.RecordEvaluationsRequest(model="digits-labelled", records=records))
    assert (counts.recorded, counts.late) == (40, 0)
    window = stub.GetModelMetrics(serving_pb2.GetModelMetricsRequest(model="digits-labelled")).windows[0]
    minority = {g.group: g for g in window.groups}["minority"]
    assert (minority.n, minority.accuracy) == (40, pytest.approx(0.75)) and minority.sufficient_data
    assert minority.accuracy_drop == pytest.approx(0.97 - 0.75)
    predictions = stub.Predict(serving_pb2.PredictRequest(model="digits-labelled", instances=[
        serving_pb2.Instance(values=rows[0]["values"], groups=rows[0]["groups"])])).predictions
    assert predictions[0].prediction_id.startswith("admin/digits-labelled.") and not predictions[0].HasField("shadow_class")

    stub.UndeployModel(serving_pb2.UndeployModelRequest(name="digits-labelled"))
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(serving_pb2.PredictRequest(model="digits-labelled", instances=[
            serving_pb2.Instance(values=rows[0]["values"], groups=rows[0]["groups"])]))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    kept = stub.GetModelMetrics(serving_pb2.GetModelMetricsRequest(model="digits-labelled"))
    assert kept.totals.evaluation_records == 40, "an undeployed model's history stays queryable"


def test_a_deploy_with_a_shape_the_model_cannot_take_is_refused(served):
    _, stub, _, job = served
    pruned = stub.ListServedModels(serving_pb2.ListServedModelsRequest()).models[0].artifact_id
    with pytest.raises(grpc.RpcError) as info:
        stub.DeployModel(serving_pb2.DeployModelRequest(name="misshapen", artifact_id=pruned, group_by=["cohort"],
                                                        reference_accuracy={"minority": 0.9}, input_shape=[3, 8, 8]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("input_shape: the model cannot take one instance of shape [3, 8, 8]")
    names = [m.name for m in stub.ListServedModels(serving_pb2.ListServedModelsRequest()).models]
    assert "misshapen" not in names


def test_non_finite_outputs_fail_their_request_alone_and_record_nothing(served):
    _, stub, rows, _ = served
    before = stub.GetModelMetrics(serving_pb2.GetModelMetricsRequest(model="digits")).totals.predictions
    overflowing = [3.4e38 if i % 2 else -3.4e38 for i in range(64)]  # finite, but inf - inf inside the model
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(serving_pb2.PredictRequest(model="digits", instances=[
            serving_pb2.Instance(values=rows[0]["values"], groups=rows[0]["groups"]),
            serving_pb2.Instance(values=overflowing, groups=rows[0]["groups"])]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("instances[1].values: "), info.value.details()
    with pytest.raises(grpc.RpcError) as info:  # beyond float32: refused before the model runs
        stub.Predict(serving_pb2.PredictRequest(model="digits", instances=[
            serving_pb2.Instance(values=[1e300] * 64, groups=rows[0]["groups"])]))
    assert info.value.details().startswith("instances[0].values: ")
    after = stub.GetModelMetrics(serving_pb2.GetModelMetricsRequest(model="digits"))
    assert after.totals.predictions == before
    # Everyone else is served as before, and the state is still saved and exported.
    assert len(stub.Predict(serving_pb2.PredictRequest(model="digits", instances=[
        serving_pb2.Instance(values=rows[0]["values"], groups=rows[0]["groups"])])).predictions) == 1
