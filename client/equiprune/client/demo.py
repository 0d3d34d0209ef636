"""`equiprune demo`: the whole story against a running server.

1. The dataset: the server's `sample:digits` (scikit-learn's digits with a synthetic `cohort`
   attribute and a held-out constraint split), or a local .npz uploaded with --dataset.
2. A TRAIN job: a dense model (an MLP for digits).
3. Two PRUNE_AND_FINETUNE jobs on it, side by side: the same pruning (90 %), repaired by the
   fair default (fair_distill) and, for comparison, by naive fine-tuning; the per-group
   damage is shown as soon as the model is pruned.
4. The dense → pruned → naive → fair comparison on the test split: tables, a verdict computed
   from the numbers (which says so when they show no repair), a PNG of per-group accuracy
   with intervals, the model and report downloaded, and `<out>/demo.json`.
`--deploy NAME` serves the model the last demo built (from `<out>/demo.json`), running the
demo first only when there is none on this server.

The digits set-up (MLP, 90 %, 10 fine-tuning epochs) was chosen on a selection split, never on
the test split the demo reports: bench/demo_setup.py, docs/results/demo-setup.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc

from equiprune.v1 import jobs_pb2, reports_pb2

from . import specs, tables
from .demo_verdict import demo_verdict
from .errors import EquipruneError
from .plots import PlotUnavailable
from .runner import EXIT_JOB_FAILED, Output, download_outputs, follow, job_exit_code, to_dict
from .sdk import EquipruneClient
from .specs import SpecError
from .stage_plots import draw, repair_series

DIGITS_URI = "sample:digits"
# The set-up bench/demo_setup.py chose on a selection split (docs/results/demo-setup.md): a copy
# of engine/demo_data.py's DEMO_* (the client has no engine), held equal by
# tests/client/test_demo_setup_copy.py.
DIGITS_GROUP_BY = ("cohort",)
DIGITS_ARCHITECTURE = "mlp"
DIGITS_ARCHITECTURE_KWARGS = {"in_features": 64, "num_classes": 10, "hidden": [64, 64]}
DIGITS_KEEP_FIRST_AND_LAST = False  # three linear layers: keeping two dense would leave one to prune
DEFAULT_SPARSITY = 0.9
TRAIN_EPOCHS = 20
TRAIN_LR = 0.05
# The service's fair default (fair_distill) at its default settings; small groups, so a small
# minimum size. Naive fine-tuning runs beside it, so the difference (or its absence) is
# measured each run.
FAIR_METHOD = "fair_distill"
FINETUNE = dict(method=FAIR_METHOD, epochs=10, min_group_size=10, tolerance=0.02)
BASELINE = {**FINETUNE, "method": "naive"}
RECORD = "demo.json"
DENSE_FILE = "dense.safetensors"
_PRUNED_STAGES = (reports_pb2.REPORT_STAGE_PRUNED, reports_pb2.REPORT_STAGE_PRUNED_WITHOUT_RECALIBRATION)


def run_demo(client: EquipruneClient, args, out: Output) -> int:
    if getattr(args, "deploy", None):
        record = _last_demo(client, args, out)
        if record is not None:
            served = _deploy(client, args.deploy, record, out)
            out.document({"reused": record, "served": to_dict(served)})
            return 0
    return _run(client, args, out)


def _run(client: EquipruneClient, args, out: Output) -> int:
    group_by, architecture, kwargs, keep = _choices(args)
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

    common = dict(model=model_id, dataset=dataset.artifact_id, group_by=group_by, sparsity=args.sparsity,
                  keep_first_and_last=keep)
    # The same pruning repaired naively, for comparison: it runs beside the fair job.
    baseline = client.create_job(specs.prune_and_finetune_spec(**common, **BASELINE))
    job = client.create_job(specs.prune_and_finetune_spec(**common, **FINETUNE))
    out.say(f"\npruning to sparsity {args.sparsity:g} and fair fine-tuning ({FAIR_METHOD}, {job.job_id}); "
            f"naive fine-tuning for comparison ({baseline.job_id})")
    damage = DamageAfterPruning(out)
    job = follow(client, job, out, on_event=damage.see)
    damage.show()
    out.say("")
    out.say(tables.job_report(job))
    baseline = client.wait_job(baseline.job_id)
    out.say("")
    out.say(tables.repair_comparison({"naive fine-tuning": baseline, f"fair fine-tuning ({FAIR_METHOD})": job}))
    document = {"dataset": to_dict(dataset), "train_job": to_dict(train), "job": to_dict(job),
                "baseline_job": to_dict(baseline), "downloads": [], "verdict": None, "picture": None, "served": None}
    if job.state != jobs_pb2.JOB_STATE_SUCCEEDED or baseline.state != jobs_pb2.JOB_STATE_SUCCEEDED:
        out.document(document)
        return job_exit_code(job if job.state != jobs_pb2.JOB_STATE_SUCCEEDED else baseline, out)

    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    split, held_out = _evaluation_split(job)
    verdict = _verdict(job, baseline, split, held_out, args.sparsity)
    if verdict is not None:
        out.say("\n" + verdict.text())
        document["verdict"] = {"promise_kept": verdict.kept, "split": split, "held_out": held_out,
                               "lines": list(verdict.lines)}
    document["picture"] = _picture(job, baseline, split, folder / "groups.png", args.sparsity, out)
    out.say("")
    document["downloads"] = download_outputs(client, job, folder, out, roles=("model", "report"))
    # The dense model too: the starting point for trying other jobs on it (README, "More").
    client.download(model_id, folder / DENSE_FILE)
    out.say(f"downloaded dense model ({model_id}) → {folder / DENSE_FILE}")
    document["downloads"].append({"role": "dense_model", "artifact_id": model_id, "path": str(folder / DENSE_FILE)})
    record = {"server": args.server, "settings": _settings(args), "dataset": dataset.artifact_id,
              "dense_model": model_id, "model": _model_output(job), "fair_job": job.job_id,
              "naive_job": baseline.job_id, "group_by": list(group_by), "tolerance": FINETUNE["tolerance"]}
    (folder / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    if getattr(args, "deploy", None):
        document["served"] = to_dict(_deploy(client, args.deploy, record, out))
    out.document(document)
    return 0


def _settings(args) -> dict:
    """What a demo was asked to build: a later --deploy serves its model only for the same."""
    return {"dataset": args.dataset or DIGITS_URI, "group_by": list(args.group_by or []), "arch": args.arch,
            "arch_kwargs": args.arch_kwargs, "sparsity": args.sparsity}


_RECORD_KEYS = {"server": str, "settings": dict, "dense_model": str, "model": str, "fair_job": str,
                "group_by": list, "tolerance": float}


def _last_demo(client: EquipruneClient, args, out: Output) -> dict | None:
    """The record of the last demo run into --out against this server with these settings, if
    its models still exist; None (saying why) when the demo must run first."""
    path = Path(args.out) / RECORD
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        out.say(f"no earlier demo in {path}: running the demo first, then serving its model")
        return None
    if not isinstance(record, dict) or any(not isinstance(record.get(k), t) for k, t in _RECORD_KEYS.items()):
        out.say(f"{path} is not a demo record this version wrote: running the demo again")
        return None
    if record["server"] != args.server:
        out.say(f"the demo in {path} ran against {record['server']}, not {args.server}: running it again")
        return None
    if record["settings"] != _settings(args):
        out.say(f"the demo in {path} was built with other settings ({record['settings']}): running it again")
        return None
    try:
        for key in ("model", "dense_model"):
            client.get_artifact(record[key])
    except EquipruneError as err:
        if err.code not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            raise
        out.say(f"the models of the demo in {path} are gone from the server: running the demo again")
        return None
    out.say(f"serving the model the demo in {path} built ({record['model']}, job {record['fair_job']})")
    return record


def _deploy(client: EquipruneClient, name: str, record: dict, out: Output):
    served = client.deploy_model(name, record["model"], record["group_by"], shadow_artifact_id=record["dense_model"],
                                 reference_job_id=record["fair_job"], tolerance=record["tolerance"])
    out.say(f"\nserving {served.name}: model {served.artifact_id}, dense shadow {served.shadow_artifact_id}, "
            f"reference from {record['fair_job']}")
    return served


def _evaluation_split(job: jobs_pb2.Job) -> tuple[str, bool]:
    """(the split the verdict reads, whether it is held out): the tables' and plots' choice,
    the job's evaluation split, else (the dataset has none) the one trained on."""
    split = tables.chosen_split(job) or ""
    data = job.spec.data
    return split, split not in ("", data.train_split if data.HasField("train_split") else "train")


def _verdict(fair: jobs_pb2.Job, naive: jobs_pb2.Job, split: str, held_out: bool, sparsity: float):
    mine, theirs = tables.stage_reports(fair.result.reports, split), tables.stage_reports(naive.result.reports, split)
    reports = (mine.get(reports_pb2.REPORT_STAGE_DENSE), mine.get(reports_pb2.REPORT_STAGE_PRUNED),
               theirs.get(reports_pb2.REPORT_STAGE_FINETUNED), mine.get(reports_pb2.REPORT_STAGE_FINETUNED))
    if any(r is None for r in reports):
        return None
    return demo_verdict(*reports, sparsity=sparsity, split=split, held_out=held_out, fair_name=FAIR_METHOD)


def _picture(fair: jobs_pb2.Job, naive: jobs_pb2.Job, split: str, path: Path, sparsity: float, out: Output):
    try:
        series = repair_series(fair.result, naive.result, split, fair_label=f"fair ({FAIR_METHOD})",
                               naive_label="naive fine-tuning")
        draw(series, path, f"dense → pruned ({sparsity:.0%}) → naive vs fair fine-tuning")
    except (PlotUnavailable, ValueError) as err:
        out.warn(f"no picture: {err}")
        return None
    out.say(f"picture: {path} (per-group accuracy with 95 % intervals; ψ_g against ε)")
    return str(path)


def _choices(args) -> tuple[list[str], str, dict | str, bool | None]:
    """Group attributes, architecture, its kwargs and whether to keep the first and last layers
    dense: the digits defaults, or the flags (the server's pruning default then)."""
    if args.dataset is None:
        if args.arch and not args.arch_kwargs:
            raise SpecError("arch_kwargs", "required with --arch (the digits defaults fit only the default MLP)")
        keep = DIGITS_KEEP_FIRST_AND_LAST if not args.arch else None
        return (list(args.group_by or DIGITS_GROUP_BY), args.arch or DIGITS_ARCHITECTURE,
                args.arch_kwargs or DIGITS_ARCHITECTURE_KWARGS, keep)
    for flag, value in (("group_by", args.group_by), ("arch", args.arch), ("arch_kwargs", args.arch_kwargs)):
        if not value:
            raise SpecError(flag, "required with --dataset (the digits defaults fit only the digits sample)")
    return list(args.group_by), args.arch, args.arch_kwargs, None


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
