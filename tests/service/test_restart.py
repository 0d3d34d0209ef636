"""A restart of the whole service (Ray, Serve, job manager) in the middle of a job: the job is
found again and resumed from its last fine-tuning checkpoint, and its artifacts survive."""

from __future__ import annotations

import json

import pytest

from equiprune.client import specs
from equiprune.client.sdk import EquipruneClient
from equiprune.v1 import jobs_pb2


def test_a_job_interrupted_by_a_restart_resumes_from_its_checkpoint(own_server, tmp_path):
    with EquipruneClient(own_server.target, timeout=60) as client:
        dataset = client.import_uri("sample:digits", "dataset")
        train = client.create_job(specs.train_spec(dataset=dataset.artifact_id, architecture="small_cnn",
                                                   architecture_kwargs={"num_classes": 10, "in_channels": 1,
                                                                        "input_size": 8, "channels": [8, 16]},
                                                   epochs=2))
        model = client.wait_job(train.job_id, timeout=300).result.outputs[0].artifact
        spec = specs.prune_and_finetune_spec(model=model.artifact_id, dataset=dataset.artifact_id, group_by="cohort",
                                             sparsity=0.5, method="naive", epochs=80, min_group_size=10)
        job = client.create_job(spec)
        # Wait for the end of the second epoch: a checkpoint is on disk by then.
        for event in client.watch(job.job_id):
            p = event.progress
            if p.phase == "finetune" and p.total_steps and p.step >= 2 * p.total_steps // p.epochs:
                break
    checkpoint = own_server.data_dir / "jobs" / job.job_id / "work" / "checkpoint.pt"
    assert checkpoint.exists()

    own_server.stop()
    own_server.start()

    with EquipruneClient(own_server.target, timeout=60) as client:
        again = client.get_job(job.job_id)
        assert again.job_id == job.job_id and not again.done
        assert client.get_artifact(model.artifact_id).sha256 == model.sha256, "artifacts survive the restart"
        messages = [e.progress.message for e in client.watch(job.job_id)]
        assert any("restarted" in m and "checkpoint" in m for m in messages), messages
        finished = client.get_job(job.job_id)
        assert finished.state == jobs_pb2.JOB_STATE_SUCCEEDED, finished.error
        assert finished.attempt == 2
        report_id = next(o.artifact.artifact_id for o in finished.result.outputs if o.role == "report")
        path = tmp_path / "report.json"
        client.download(report_id, path)
    resumed_from = json.loads(path.read_text())["finetune"]["resumed_from_step"]
    assert resumed_from > 0, "fine-tuning resumed from its checkpoint rather than starting over"
