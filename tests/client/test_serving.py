"""Serving through the SDK and the CLI against the fake server: deployments, batched Predict,
outcomes and evaluation records with the server's counts, the per-group monitor table, and
which calls are retried (Predict and RecordEvaluations only on UNAVAILABLE)."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

import grpc
import pytest

from equiprune.client import tables
from equiprune.client.errors import EquipruneError, SpecError
from equiprune.v1 import serving_pb2

from .fake_server import wilson_interval

REFERENCE = {"majority": 0.9, "minority": 0.85}


def pixels(cls: int, disagree: bool = False) -> list[float]:
    """64 input values the fake model classifies as `cls` (its shadow disagrees when asked)."""
    values = [0.0] * 64
    values[cls] = 5.0
    if disagree:
        values[0] = -1.0 if cls != 0 else values[0]
    return values


@pytest.fixture
def model_id(server):
    return server.artifacts.store(1, b"weights" * 10, "pruned.safetensors", "upload").artifact_id


@pytest.fixture
def shadow_id(server):
    return server.artifacts.store(1, b"dense" * 10, "dense.safetensors", "upload").artifact_id


@pytest.fixture
def deployed(client, model_id, shadow_id):
    return client.deploy_model("digits", model_id, ["cohort"], shadow_artifact_id=shadow_id,
                               reference_accuracy=REFERENCE, reference_overall_accuracy=0.89, tolerance=0.02,
                               input_shape=[1, 8, 8])


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------ SDK: deployments

def test_deploy_list_replace_and_undeploy(client, model_id):
    served = client.deploy_model("digits", model_id, ["cohort"], reference_accuracy=REFERENCE,
                                 reference_overall_accuracy=0.89, tolerance=0.02, input_shape=[1, 8, 8])
    assert served.name == "digits" and served.artifact_id == model_id and list(served.group_by) == ["cohort"]
    assert dict(served.reference_accuracy) == REFERENCE and served.tolerance == pytest.approx(0.02)
    assert list(served.input_shape) == [1, 8, 8] and served.reference_overall_accuracy == pytest.approx(0.89)
    client.deploy_model("digits", model_id, ["cohort"], reference_accuracy=REFERENCE, input_shape=[64])
    client.deploy_model("alpha", model_id, "cohort", reference_accuracy=REFERENCE, input_shape=[64])
    models = client.list_served_models()
    assert [m.name for m in models] == ["alpha", "digits"]
    assert list(models[1].input_shape) == [64] and models[1].tolerance == pytest.approx(0.01)  # replaced
    client.undeploy_model("digits")
    assert [m.name for m in client.list_served_models()] == ["alpha"]
    with pytest.raises(EquipruneError) as caught:
        client.undeploy_model("digits")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND and caught.value.field == "name"


def test_deploy_takes_the_reference_from_a_job(client, model_id):
    from equiprune.client import specs

    job = client.create_job(specs.evaluate_spec(model=model_id, dataset="sample:digits", group_by=["cohort"]))
    job = client.wait_job(job.job_id, timeout=10)
    served = client.deploy_model("digits", model_id, ["cohort"], reference_job_id=job.job_id)
    assert dict(served.reference_accuracy) == pytest.approx({"young": 0.97, "old": 0.96, "rare": 0.875})
    assert list(served.input_shape) == [1, 8, 8]


@pytest.mark.parametrize("arguments, field", [
    (dict(name="Digits"), "name"),
    (dict(name="9lives"), "name"),
    (dict(group_by=[]), "group_by"),
    (dict(reference_job_id="job-1"), "reference_accuracy"),  # and reference_accuracy: both
    (dict(tolerance=1.0), "tolerance"),
    (dict(input_shape=[1, 0, 8]), "input_shape"),
    (dict(reference_accuracy={"minority": 1.2}), "reference_accuracy[minority]"),
])
def test_deploy_is_refused_before_any_call(client, server, model_id, arguments, field):
    call = dict(name="digits", artifact_id=model_id, group_by=["cohort"], reference_accuracy=REFERENCE,
                input_shape=[64])
    call.update(arguments)
    with pytest.raises(SpecError) as caught:
        client.deploy_model(call.pop("name"), call.pop("artifact_id"), call.pop("group_by"), **call)
    assert caught.value.field == field
    assert server.faults.count("DeployModel") == 0


# ------------------------------------------------------------------ SDK: traffic

def test_predict_splits_big_batches_and_keeps_the_order(client, server, deployed):
    classes = [i % 10 for i in range(2500)]
    instances = [(pixels(c), {"cohort": "majority" if i % 3 else "minority"}) for i, c in enumerate(classes)]
    predictions = client.predict("digits", instances)
    assert [len(r.instances) for r in server.faults.requests["Predict"]] == [1024, 1024, 452]
    assert [p.predicted_class for p in predictions] == classes
    assert len({p.prediction_id for p in predictions}) == 2500
    assert all(p.HasField("shadow_class") and len(p.probabilities) == 10 for p in predictions)
    assert server.serving.totals["digits"].predictions == 2500


def test_predict_accepts_pairs_mappings_and_messages(client, server, deployed):
    message = serving_pb2.Instance(values=pixels(4), groups={"cohort": "minority"})
    predictions = client.predict("digits", [(pixels(1), {"cohort": "majority"}),
                                            {"values": pixels(2), "groups": {"cohort": "minority"}}, message],
                                 batch_size=2)
    assert [p.predicted_class for p in predictions] == [1, 2, 4]
    assert [len(r.instances) for r in server.faults.requests["Predict"]] == [2, 1]
    assert client.predict("digits", []) == [] and server.faults.count("Predict") == 2


@pytest.mark.parametrize("instance, field", [
    ((pixels(1)[:-1] + ["x"], {"cohort": "a"}), "instances[1].values"),
    ((pixels(1)[:-1] + [math.nan], {"cohort": "a"}), "instances[1].values"),
    ((pixels(1)[:-1] + [True], {"cohort": "a"}), "instances[1].values"),
    (([], {"cohort": "a"}), "instances[1].values"),
    ((pixels(1), {"cohort": 1.5}), "instances[1].groups.cohort"),
    ({"groups": {"cohort": "a"}}, "instances[1].values"),
    (pixels(1), "instances[1]"),
])
def test_predict_refuses_malformed_instances_before_any_call(client, server, deployed, instance, field):
    with pytest.raises(SpecError) as caught:
        client.predict("digits", [(pixels(0), {"cohort": "a"}), instance])
    assert caught.value.field == field
    assert server.faults.count("Predict") == 0


def test_predict_batch_size_is_bounded(client, deployed):
    with pytest.raises(SpecError, match="batch_size"):
        client.predict("digits", [(pixels(0), {"cohort": "a"})], batch_size=1025)


def test_server_refusals_name_the_field(client, deployed):
    with pytest.raises(EquipruneError) as caught:
        client.predict("digits", [(pixels(0)[:10], {"cohort": "a"})])
    assert caught.value.field == "instances[0].values" and caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(EquipruneError) as caught:
        client.predict("digits", [(pixels(0), {"age": "old"})])
    assert caught.value.field == "instances[0].groups.cohort"


def test_report_outcomes_sums_the_servers_counts_over_batches(client, server, deployed):
    predictions = client.predict("digits", [(pixels(c), {"cohort": "majority"}) for c in range(6)])
    ids = [p.prediction_id for p in predictions]
    server.serving.predictions[ids[5]].time -= 2 * 86400  # older than every window
    outcomes = [(ids[0], 0), (ids[1], 1), {"prediction_id": ids[2], "label": 3},
                serving_pb2.Outcome(prediction_id=ids[3], label=3), (ids[0], 0), ("pred-nope", 1), (ids[4], 12),
                (ids[5], 5)]
    counts = client.report_outcomes(iter(outcomes), batch_size=3)
    assert counts == {"joined": 4, "unknown": 1, "duplicate": 1, "late": 1, "invalid": 1}
    assert [len(r.outcomes) for r in server.faults.requests["ReportOutcomes"]] == [3, 3, 2]
    assert client.report_outcomes([]) == dict.fromkeys(counts, 0)


@pytest.mark.parametrize("outcome, field", [(("", 1), "outcomes[0].prediction_id"),
                                            (("pred-1", -1), "outcomes[0].label"),
                                            (("pred-1", "3"), "outcomes[0].label"),
                                            ({"prediction_id": "pred-1"}, "outcomes[0].label")])
def test_report_outcomes_refuses_malformed_outcomes(client, server, outcome, field):
    with pytest.raises(SpecError) as caught:
        client.report_outcomes([outcome])
    assert caught.value.field == field and server.faults.count("ReportOutcomes") == 0


def test_record_evaluations_counts_recorded_and_late(client, server, deployed):
    now = datetime.now(timezone.utc)
    records = [{"label": 1, "predicted_class": 1, "groups": {"cohort": "minority"}, "confidence": 0.8},
               {"label": 2, "predicted_class": 1, "groups": {"cohort": "minority"}, "time": now.isoformat()},
               {"label": 2, "predicted_class": 2, "groups": {"cohort": "majority"},
                "time": (now - timedelta(days=3)).timestamp()}]
    assert client.record_evaluations("digits", records, batch_size=2) == {"recorded": 2, "late": 1}
    sent = server.faults.requests["RecordEvaluations"]
    assert [len(r.records) for r in sent] == [2, 1]
    assert sent[0].records[0].confidence == pytest.approx(0.8) and not sent[0].records[1].HasField("confidence")
    assert abs(sent[0].records[1].time.ToDatetime(tzinfo=timezone.utc) - now) < timedelta(milliseconds=1)
    assert server.serving.totals["digits"].evaluation_records == 3


@pytest.mark.parametrize("change, field", [({"confidence": 1.5}, "records[0].confidence"),
                                           ({"label": None}, "records[0].label"),
                                           ({"time": "yesterday"}, "records[0].time"),
                                           ({"groups": ["minority"]}, "records[0].groups")])
def test_record_evaluations_refuses_malformed_records(client, server, change, field):
    record = {"label": 1, "predicted_class": 1, "groups": {"cohort": "minority"}, **change}
    with pytest.raises(SpecError) as caught:
        client.record_evaluations("digits", [record])
    assert caught.value.field == field and server.faults.count("RecordEvaluations") == 0


def test_metrics_cover_every_window_with_wilson_intervals(client, server, deployed):
    predictions = client.predict("digits", [(pixels(c % 10), {"cohort": "majority"}) for c in range(10)])
    client.report_outcomes((p.prediction_id, p.predicted_class if i < 8 else 9 - i) for i, p in enumerate(predictions))
    metrics = client.get_model_metrics("digits")
    assert [w.window_seconds for w in metrics.windows] == [300, 3600, 86400]
    majority = next(g for g in metrics.windows[0].groups if g.group == "majority")
    low, high = wilson_interval(8, 10)
    assert (majority.n, majority.accuracy) == (10, pytest.approx(0.8))
    assert (majority.accuracy_ci_low, majority.accuracy_ci_high) == (pytest.approx(low), pytest.approx(high))
    assert metrics.totals.predictions == 10 and metrics.totals.outcomes_joined == 10


# ------------------------------------------------------------------ SDK: retries

def test_predict_is_retried_on_unavailable(client, server, deployed):
    server.faults.fail("Predict", times=2)
    predictions = client.predict("digits", [(pixels(3), {"cohort": "a"})])
    assert [p.predicted_class for p in predictions] == [3]
    assert server.faults.count("Predict") == 3
    assert server.serving.totals["digits"].predictions == 1  # the failed attempts never reached the model


def test_predict_is_not_retried_on_deadline_exceeded(client, server, deployed):
    server.faults.fail("Predict", code=grpc.StatusCode.DEADLINE_EXCEEDED)
    with pytest.raises(EquipruneError) as caught:
        client.predict("digits", [(pixels(3), {"cohort": "a"})])
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and server.faults.count("Predict") == 1


def test_a_lost_predict_reply_records_the_prediction_twice(client, server, deployed):
    # The documented caveat: UNAVAILABLE after the replica did the work is retried all the same.
    server.faults.fail("Predict", after=True)
    assert len(client.predict("digits", [(pixels(3), {"cohort": "a"})])) == 1
    assert server.serving.totals["digits"].predictions == 2


def test_report_outcomes_retried_after_a_lost_reply_counts_duplicates(client, server, deployed):
    ids = [p.prediction_id for p in client.predict("digits", [(pixels(c), {"cohort": "a"}) for c in range(4)])]
    server.faults.fail("ReportOutcomes", after=True)
    counts = client.report_outcomes((i, 1) for i in ids)
    assert server.faults.count("ReportOutcomes") == 2
    assert counts["duplicate"] == 4 and counts["joined"] == 0  # the retry's counts
    totals = server.serving.totals["digits"]
    assert (totals.outcomes_joined, totals.outcomes_duplicate) == (4, 4)  # joined once, never twice


def test_writes_are_not_retried_on_deadline_exceeded(client, server, deployed):
    for method, call in (("ReportOutcomes", lambda: client.report_outcomes([("pred-1", 1)])),
                         ("RecordEvaluations", lambda: client.record_evaluations(
                             "digits", [{"label": 1, "predicted_class": 1, "groups": {"cohort": "a"}}]))):
        server.faults.fail(method, code=grpc.StatusCode.DEADLINE_EXCEEDED)
        with pytest.raises(EquipruneError):
            call()
        assert server.faults.count(method) == 1


def test_reads_are_retried_on_deadline_exceeded(client, server, deployed):
    server.faults.fail("GetModelMetrics", code=grpc.StatusCode.DEADLINE_EXCEEDED)
    server.faults.fail("ListServedModels", code=grpc.StatusCode.DEADLINE_EXCEEDED)
    assert client.get_model_metrics("digits").model.name == "digits"
    assert [m.name for m in client.list_served_models()] == ["digits"]
    assert server.faults.count("GetModelMetrics") == 2 and server.faults.count("ListServedModels") == 2


def test_undeploy_whose_reply_was_lost_succeeds_on_retry(client, server, deployed):
    server.faults.fail("UndeployModel", after=True)
    client.undeploy_model("digits")
    assert server.faults.count("UndeployModel") == 2 and client.list_served_models() == []


# ------------------------------------------------------------------ CLI

def _deploy_args(model_id: str, *extra: str) -> list[str]:
    return ["deploy", "digits", "--model", model_id, "--group-by", "cohort", "--reference", "majority=0.9",
            "--reference", "minority=85%", "--reference-overall", "0.89", "--input-shape", "1,8,8",
            "--tolerance", "2", *extra]


def test_cli_deploy_models_undeploy(run, model_id, shadow_id):
    code, out, err = run(*_deploy_args(model_id, "--shadow", shadow_id))
    assert code == 0, err
    assert out.strip() == (f"deployed digits: {model_id} (shadow {shadow_id}), monitored by cohort, tolerance ε 2.00 "
                           "points, reference majority 90.0%, minority 85.0% (overall 89.0%), input 1×8×8")
    code, out, err = run("models")
    header, rule, row = out.splitlines()
    assert header.split()[:4] == ["model", "artifact", "shadow", "group"]
    assert row.split()[:6] == ["digits", model_id, shadow_id, "cohort", "2.00", "1×8×8"]
    code, out, err = run("models", "--json")
    model = json.loads(out)["models"][0]
    assert model["name"] == "digits" and model["reference_accuracy"] == REFERENCE and model["input_shape"] == [1, 8, 8]
    code, out, err = run("undeploy", "digits")
    assert code == 0 and "equiprune metrics digits" in out
    assert run("models")[1].strip() == "(no served models)"
    code, out, err = run("undeploy", "digits")
    assert code == 2 and err.strip() == "error: name: no served model named 'digits'"


@pytest.mark.parametrize("extra, message", [
    (["--reference", "minority"], "error: reference: expected GROUP=ACC (e.g. minority=0.91), got 'minority'"),
    (["--reference", "minority=1.3"], "error: reference[minority]: must be in [0, 1] (or 0% to 100%), got '1.3'"),
    (["--input-shape", "1,-8"], "error: input_shape: expected dimensions ≥ 1 such as 1,8,8, got '1,-8'"),
])
def test_cli_deploy_refuses_bad_flags(run, server, model_id, extra, message):
    code, out, err = run("deploy", "digits", "--model", model_id, "--group-by", "cohort", *extra)
    assert code == 2 and err.strip() == message
    assert server.faults.count("DeployModel") == 0


def test_cli_deploy_takes_one_kind_of_reference(run, model_id):
    with pytest.raises(SystemExit) as caught:
        run("deploy", "digits", "--model", model_id, "--group-by", "cohort", "--reference-job", "job-1",
            "--reference", "a=0.9")
    assert caught.value.code == 2


def test_cli_predict_batches_and_passes_labels_through(run, server, deployed, tmp_path):
    lines = [{"values": pixels(i % 10), "groups": {"cohort": "minority" if i % 4 == 0 else "majority"}}
             for i in range(600)]
    for i, line in enumerate(lines):
        if i % 5:
            line["label"] = (i + (i % 7 == 0)) % 10  # every 7th labelled one is wrong
    instances = write_jsonl(tmp_path / "instances.jsonl", lines)
    out_path = tmp_path / "predictions.jsonl"
    code, out, err = run("predict", "digits", "--instances", instances, "--out", str(out_path), "--batch", "256")
    assert code == 0, err
    assert [len(r.instances) for r in server.faults.requests["Predict"]] == [256, 256, 88]
    written = read_jsonl(out_path)
    assert [w["predicted_class"] for w in written] == [i % 10 for i in range(600)]
    assert [w.get("label") for w in written] == [line.get("label") for line in lines]
    first = written[0]
    assert set(first) == {"prediction_id", "predicted_class", "probabilities", "shadow_class"}  # line 0: no label
    assert len(first["probabilities"]) == 10 and sum(first["probabilities"]) == pytest.approx(1, abs=1e-5)
    assert all(len(repr(p)) <= 14 for p in first["probabilities"])  # rounded, not float32 noise
    assert out == "" and "600 predictions with digits in" in err and "predictions/s" in err


def test_cli_predict_writes_to_stdout_or_the_json_document(run, deployed, tmp_path):
    instances = write_jsonl(tmp_path / "in.jsonl", [{"values": pixels(2), "groups": {"cohort": "a"}, "label": 2}] * 3)
    code, out, err = run("predict", "digits", "--instances", instances)
    assert code == 0 and [json.loads(line)["label"] for line in out.splitlines()] == [2, 2, 2]
    code, out, err = run("predict", "digits", "--instances", instances, "--json")
    document = json.loads(out)
    assert document["count"] == 3 and document["out"] is None and len(document["predictions"]) == 3
    assert document["predictions"][0]["predicted_class"] == 2 and err == ""


def test_cli_predict_refuses_a_malformed_line(run, server, deployed, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"values": pixels(1), "groups": {"cohort": "a"}}) + "\n\n"
                    + json.dumps({"values": "abc", "groups": {"cohort": "a"}}) + "\n")
    code, out, err = run("predict", "digits", "--instances", str(path), "--out", str(tmp_path / "o.jsonl"))
    assert code == 2 and err.strip() == f"error: {path}:3: values: must be a list of numbers"
    path.write_text("{not json\n")
    code, out, err = run("predict", "digits", "--instances", str(path))
    assert code == 2 and err.strip().startswith(f"error: {path}:1: not JSON")
    code, out, err = run("predict", "digits", "--instances", str(tmp_path / "none.jsonl"), "--out",
                         str(tmp_path / "never.jsonl"))
    assert code == 2 and err.strip() == f"error: instances: no file {tmp_path / 'none.jsonl'}"
    assert not (tmp_path / "never.jsonl").exists() and server.faults.count("Predict") == 0


def test_cli_outcomes_report_the_servers_counts(run, server, deployed, tmp_path):
    lines = [{"values": pixels(i % 10), "groups": {"cohort": "a"}, **({"label": i % 10} if i % 3 else {})}
             for i in range(30)]
    predictions = tmp_path / "predictions.jsonl"
    code, out, err = run("predict", "digits", "--instances", write_jsonl(tmp_path / "in.jsonl", lines),
                         "--out", str(predictions))
    with predictions.open("a") as extra:
        extra.write(json.dumps({"prediction_id": "pred-unknown", "label": 1}) + "\n")
        extra.write(json.dumps({"prediction_id": read_jsonl(predictions)[1]["prediction_id"], "label": 42}) + "\n")
    code, out, err = run("outcomes", "--from", str(predictions), "--batch", "7")
    assert code == 0, err
    # 20 labelled + 2 extra lines; the bad label (42) goes to a prediction that also has a good one.
    assert out.strip() == ("22 outcomes: joined 20, unknown 1, duplicate 0, late 0, invalid 1 "
                           "(10 lines without a label skipped)")
    assert [len(r.outcomes) for r in server.faults.requests["ReportOutcomes"]] == [7, 7, 7, 1]
    code, out, err = run("outcomes", "--from", str(predictions), "--json")
    assert json.loads(out) == {"joined": 0, "unknown": 1, "duplicate": 20, "late": 0, "invalid": 1, "sent": 22,
                               "skipped_without_label": 10}


def test_cli_outcomes_check_the_whole_file_first(run, server, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prediction_id": "pred-1", "label": 1}, {"label": 2}])
    code, out, err = run("outcomes", "--from", path)
    assert code == 2 and err.strip() == f"error: {path}:2: prediction_id: required: the id Predict returned"
    assert server.faults.count("ReportOutcomes") == 0


def test_cli_evaluations(run, server, deployed, tmp_path):
    old = (datetime.now(timezone.utc) - timedelta(days=2)).isoformat()
    path = write_jsonl(tmp_path / "e.jsonl", [
        {"label": 1, "predicted_class": 1, "groups": {"cohort": "a"}, "confidence": 0.9},
        {"label": 1, "predicted_class": 2, "groups": {"cohort": "a"}},
        {"label": 3, "predicted_class": 3, "groups": {"cohort": "b"}, "time": old}])
    code, out, err = run("evaluations", "digits", "--from", path)
    assert code == 0 and out.strip() == "3 evaluation records: recorded 2, late 1"
    code, out, err = run("evaluations", "nope", "--from", path, "--json")
    assert code == 2 and err.strip() == "error: model: no served model named 'nope'"


def _traffic(client, server):
    """20 labelled majority predictions (18 right), 3 minority (2 right): minority is insufficient."""
    server.serving.min_count = 5
    cases = [("majority", i % 10, i % 10 if i < 18 else (i + 1) % 10) for i in range(20)]
    cases += [("minority", 4, 4), ("minority", 5, 5), ("minority", 6, 0)]
    predictions = client.predict("digits", [(pixels(c, disagree=i == 1), {"cohort": g})
                                            for i, (g, c, _) in enumerate(cases)])
    client.report_outcomes((p.prediction_id, label) for p, (_, _, label) in zip(predictions, cases))


def test_cli_metrics_table(run, client, server, deployed):
    _traffic(client, server)
    code, out, err = run("metrics", "digits")
    assert code == 0, err
    assert [line for line in out.splitlines() if line.startswith("window")] == ["window 5m", "window 1h", "window 1d"]
    lines = out.split("window 5m")[1].split("window 1h")[0].splitlines()
    header = next(line for line in lines if line.startswith("group"))
    for column in ("predictions", "accuracy [95% CI]", "reference", "Δ_g", "ψ_g", "confidence", "boundary",
                   "shadow agreement", "status"):
        assert column in header
    low, high = wilson_interval(18, 20)
    majority = next(line for line in lines if line.startswith("majority"))
    # Δ = 0.9 − 0.9 = 0; overall Δ = 0.89 − 20/23; ψ = −overall Δ = −2.04 points.
    assert f"90.0% [{100 * low:.1f}%,{100 * high:.1f}%]" in majority
    assert majority.split()[:3] == ["majority", "20", "20"] and " +0.0 " in majority and " -2.04 " in majority
    assert "95.0% (20)" in majority and majority.endswith("ok")  # one shadow disagreement in 20
    minority = next(line for line in lines if line.startswith("minority"))
    assert minority.split()[:3] == ["minority", "3", "3"] and minority.endswith("insufficient")
    assert any(line.startswith("overall") and " 23 " in line for line in lines)
    assert ("max ψ_g -2.04 points (majority); accuracy parity gap 0.0 points; tolerance ε 2.00 points: within"
            in lines)
    assert "groups need at least 5 outcomes in a window to be judged" in out
    assert out.strip().endswith("totals: 23 predictions; outcomes 23 joined, 0 unknown, 0 duplicate, 0 late, "
                                "0 invalid; 0 evaluation records")


def test_cli_metrics_flags_a_group_over_tolerance(run, client, server, deployed):
    server.serving.min_count = 2
    cases = [("majority", c, c) for c in range(10)] + [("minority", c, (c + 1) % 10) for c in range(2)] + \
        [("minority", 3, 3)] * 2
    predictions = client.predict("digits", [(pixels(c), {"cohort": g}) for g, c, _ in cases])
    client.report_outcomes((p.prediction_id, label) for p, (_, _, label) in zip(predictions, cases))
    code, out, err = run("metrics", "digits", "--window", "1h")
    minority = next(line for line in out.splitlines() if line.startswith("minority"))
    assert minority.endswith("over ε") and "50.0% [" in minority
    assert "(minority); accuracy parity gap 50.0 points; tolerance ε 2.00 points: EXCEEDED" in out


def test_cli_metrics_window_and_json(run, client, server, deployed):
    _traffic(client, server)
    code, out, err = run("metrics", "digits", "--window", "1h")
    assert code == 0 and "window 1h" in out and "window 5m" not in out and "window 1d" not in out
    code, out, err = run("metrics", "digits", "--window", "60m", "--json")
    document = json.loads(out)
    assert [w["window_seconds"] for w in document["windows"]] == ["3600"]
    groups = {g["group"]: g for g in document["windows"][0]["groups"]}
    assert groups["minority"].get("sufficient_data", False) is False and groups["majority"]["sufficient_data"] is True
    assert document["totals"]["outcomes_joined"] == "23" and document["model"]["name"] == "digits"
    code, out, err = run("metrics", "digits", "--window", "2h")
    assert code == 2 and err.strip() == "error: window: the monitor keeps no 2h window (it keeps: 5m, 1h, 1d)"
    code, out, err = run("metrics", "digits", "--window", "soon")
    assert code == 2 and err.strip() == "error: window: expected a length such as 5m, 1h or 1d, got 'soon'"


def test_cli_metrics_after_undeploy_and_of_an_unknown_model(run, client, server, deployed):
    _traffic(client, server)
    client.undeploy_model("digits")
    code, out, err = run("metrics", "digits", "--window", "5m")
    assert code == 0 and out.startswith("model digits (no longer deployed)")
    assert "tolerance unknown (the model is no longer deployed)" in out and "totals: 23 predictions" in out
    code, out, err = run("metrics", "nope")
    assert code == 2 and err.strip() == "error: model: no served model named 'nope' (now or before)"


def test_cli_metrics_of_an_idle_model(run, deployed):
    code, out, err = run("metrics", "digits", "--window", "5m")
    assert code == 0 and "(no predictions or evaluation records in this window)" in out


# ------------------------------------------------------------------ formats

@pytest.mark.parametrize("seconds, name", [(300, "5m"), (3600, "1h"), (86400, "1d"), (7200, "2h"), (90, "90s"),
                                           (172800, "2d")])
def test_windows_print_as_their_largest_unit(seconds, name):
    assert tables.window_name(seconds) == name
    assert tables.window_seconds(name) == seconds


def test_window_lengths_parse_plain_seconds_and_refuse_nonsense():
    assert tables.window_seconds("3600") == 3600 and tables.window_seconds(" 1H ") == 3600
    for text in ("", "1w", "0m", "-5m", "1.5h"):
        with pytest.raises(SpecError, match="window"):
            tables.window_seconds(text)
