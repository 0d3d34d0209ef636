"""`equiprune demo`: the whole story against a running server.

1. The dataset: the server's `sample:digits` (scikit-learn's digits with a synthetic `cohort`
   attribute), or a local .npz uploaded with --dataset.
2. A TRAIN job: a dense model (small_cnn for digits).
3. A PRUNE_AND_FINETUNE job on it: 90 % unstructured sparsity, then fair fine-tuning (fair_distill), with the
   per-group damage shown as soon as the model is pruned.
4. The dense → pruned → fine-tuned table per group, and the model and report downloaded.
"""

from __future__ import annotations

from pathlib import Path

from equiprune.v1 import jobs_pb2, reports_pb2

from . import specs, tables
from .runner import EXIT_JOB_FAILED, Output, download_outputs, follow, job_exit_code, to_dict
from .sdk import EquipruneClient
from .specs import SpecError

DIGITS_URI = "sample:digits"
DIGITS_GROUP_BY = ("cohort",)
DIGITS_ARCHITECTURE = "small_cnn"
DIGITS_ARCHITECTURE_KWARGS = {"num_classes": 10, "in_channels": 1, "input_size": 8, "channels": [16, 32]}
TRAIN_EPOCHS = 20
TRAIN_LR = 0.05
# The fair fine-tuning of the digits walkthrough: the service's fair default (fair_distill) at
# its default settings; small groups, so a small minimum size. The demo runs naive fine-tuning
# beside it and prints both, so the difference (or its absence) is measured each run.
FINETUNE = dict(method="fair_distill", epochs=10, min_group_size=10, tolerance=0.02)
BASELINE = {**FINETUNE, "method": "naive"}
_PRUNED_STAGES = (reports_pb2.REPORT_STAGE_PRUNED, reports_pb2.REPORT_STAGE_PRUNED_WITHOUT_RECALIBRATION)


def run_demo(client: EquipruneClient, args, out: Output) -> int:
    group_by, architecture, kwargs = _choices(args)
    dataset = _dataset(client, args, out)
    out.say(f"dataset: {tables.artifact_line(dataset)}")

    train = client.create_job(specs.train_spec(dataset=dataset.artifact_id, architecture=architecture,
                                               architecture_kwargs=kwargs, epochs=TRAIN_EPOCHS, lr=TRAIN_LR))
    out.say(f"\ntraining a dense {architecture} ({train.job_id}, {TRAIN_EPOCHS} epochs)")
    train = follow(client, train, out)
    model_id = _model_output(train)
    if train.state != jobs_pb2.JOB_STATE_SUCCEEDED or model_id is None:
        out.say(tables.job_report(train))
        out.document({"dataset": to_dict(dataset), "train_job": to_dict(train), "job": None, "downloads": []})
        return job_exit_code(train, out) if train.state != jobs_pb2.JOB_STATE_SUCCEEDED else _no_model(train, out)
    out.say(f"dense model: {model_id}")

    # The same pruning repaired naively, for comparison: it runs beside the fair job.
    baseline = client.create_job(specs.prune_and_finetune_spec(model=model_id, dataset=dataset.artifact_id,
                                                               group_by=group_by, sparsity=args.sparsity, **BASELINE))
    job = client.create_job(specs.prune_and_finetune_spec(model=model_id, dataset=dataset.artifact_id,
                                                          group_by=group_by, sparsity=args.sparsity, **FINETUNE))
    out.say(f"\npruning to sparsity {args.sparsity} and fair fine-tuning ({job.job_id}); "
            f"naive fine-tuning for comparison ({baseline.job_id})")
    damage = DamageAfterPruning(out)
    job = follow(client, job, out, on_event=damage.see)
    damage.show()
    out.say("")
    out.say(tables.job_report(job))
    baseline = client.wait_job(baseline.job_id)
    out.say("")
    out.say(tables.repair_comparison({"naive fine-tuning": baseline, "fair fine-tuning (fair_distill)": job}))
    downloads = []
    if job.state == jobs_pb2.JOB_STATE_SUCCEEDED:
        out.say("")
        downloads = download_outputs(client, job, Path(args.out), out, roles=("model", "report"))
    served = None
    if job.state == jobs_pb2.JOB_STATE_SUCCEEDED and getattr(args, "deploy", None):
        served = client.deploy_model(args.deploy, _model_output(job), group_by, shadow_artifact_id=model_id,
                                     reference_job_id=job.job_id, tolerance=FINETUNE["tolerance"])
        out.say(f"\nserving {served.name}: model {served.artifact_id}, dense shadow {served.shadow_artifact_id}, "
                f"reference from {job.job_id}")
    out.document({"dataset": to_dict(dataset), "train_job": to_dict(train), "job": to_dict(job),
                  "baseline_job": to_dict(baseline), "downloads": downloads,
                  "served": to_dict(served) if served is not None else None})
    return job_exit_code(job, out)


def _choices(args) -> tuple[list[str], str, dict | str]:
    """Group attributes, architecture and its kwargs: the digits defaults, or the flags."""
    if args.dataset is None:
        return (list(args.group_by or DIGITS_GROUP_BY), args.arch or DIGITS_ARCHITECTURE,
                args.arch_kwargs or DIGITS_ARCHITECTURE_KWARGS)
    for flag, value in (("group_by", args.group_by), ("arch", args.arch), ("arch_kwargs", args.arch_kwargs)):
        if not value:
            raise SpecError(flag, "required with --dataset (the digits defaults fit only the digits sample)")
    return list(args.group_by), args.arch, args.arch_kwargs


def _dataset(client: EquipruneClient, args, out: Output):
    if args.dataset is None:
        return client.import_uri(DIGITS_URI, "dataset")
    progress = out.byte_progress(f"upload {Path(args.dataset).name}")
    try:
        return client.upload_file(args.dataset, "dataset", on_progress=progress)
    finally:
        if progress:
            progress.close()


def _model_output(job: jobs_pb2.Job) -> str | None:
    return next((o.artifact.artifact_id for o in job.result.outputs if o.role == "model"), None)


def _no_model(job: jobs_pb2.Job, out: Output) -> int:
    out.warn(f"error: job {job.job_id} succeeded without a model output")
    return EXIT_JOB_FAILED


class DamageAfterPruning:
    """Shows the just-pruned model's per-group damage once, as soon as pruning is over.

    The job may send several pruned reports in a row (before and after BatchNorm
    recalibration, on each split); the first event after them triggers the table of the most
    telling one: recalibrated over not, the evaluation split over the training split.
    """

    def __init__(self, out: Output) -> None:
        self._out = out
        self._reports: list[reports_pb2.StageReport] = []
        self._shown = False

    def see(self, event: jobs_pb2.JobEvent, progress=None) -> None:
        report = event.progress.report if event.progress.HasField("report") else None
        if report is not None and report.stage in _PRUNED_STAGES:
            self._reports.append(report)
        elif self._reports:
            self.show(progress)

    def show(self, progress=None) -> None:
        if self._shown or not self._reports:
            return
        self._shown = True
        best = max(self._reports, key=lambda r: (r.stage == reports_pb2.REPORT_STAGE_PRUNED, r.split != "train"))
        if progress:
            progress.interrupt()
        self._out.say("\ndamage after pruning")
        self._out.say(tables.damage_table(best))
        self._out.say("")
