"""SIGKILL of every server process (launcher, Ray, Serve replicas) right after ReportOutcomes
replied: after a restart, every acknowledged prediction and outcome is counted, once."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from equiprune.client import specs
from equiprune.client.sdk import EquipruneClient
from equiprune.v1 import serving_pb2, serving_pb2_grpc

from .server import ServerProcess

N = 1000


def _kill_everything(server: ServerProcess) -> None:
    """SIGKILL the launcher's process group and every process living under its Ray folder."""
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait()
    subprocess.run(["pkill", "-9", "-f", server.ray_tmp], check=False)
    time.sleep(2)


def test_sigkill_after_report_outcomes_loses_no_acknowledged_outcome(own_server):
    with EquipruneClient(own_server.target, timeout=60) as client:
        dataset = client.import_uri("sample:digits", "dataset").artifact_id
        train = client.wait_job(client.create_job(specs.train_spec(
            dataset=dataset, architecture="small_cnn", epochs=2,
            architecture_kwargs={"num_classes": 10, "in_channels": 1, "input_size": 8, "channels": [8, 16]})).job_id,
            timeout=300)
        model = train.result.outputs[0].artifact.artifact_id

    with own_server.channel() as channel:
        stub = serving_pb2_grpc.ServingServiceStub(channel)
        stub.DeployModel(serving_pb2.DeployModelRequest(
            name="durable", artifact_id=model, group_by=["cohort"], reference_accuracy={"a": 0.9, "b": 0.9},
            input_shape=[1, 8, 8]), timeout=120)
        instances = [serving_pb2.Instance(values=[0.0] * 64, groups={"cohort": "ab"[i % 2]}) for i in range(N)]
        predicted = stub.Predict(serving_pb2.PredictRequest(model="durable", instances=instances), timeout=120)
        outcomes = [serving_pb2.Outcome(prediction_id=p.prediction_id, label=p.predicted_class)
                    for p in predicted.predictions]
        acknowledged = stub.ReportOutcomes(serving_pb2.ReportOutcomesRequest(outcomes=outcomes), timeout=120)
        assert acknowledged.joined == N
    _kill_everything(own_server)  # at once: no snapshot round (every 10 s) can have run since

    own_server.start()
    with own_server.channel() as channel:
        stub = serving_pb2_grpc.ServingServiceStub(channel)
        totals = stub.GetModelMetrics(serving_pb2.GetModelMetricsRequest(model="durable"), timeout=60).totals
    assert totals.predictions == N and totals.outcomes_joined == N, totals
