"""Compute one job: read its model and dataset, call the engine, write its output files.

Plain Python around the engine — no Ray here, and no artifact store: a single-worker job runs
this inside the sandbox (`sandbox.worker`), which can reach nothing but the files it was
handed and its own working folder; the job's task then stores the files this returns
(`tasks.store_outputs`). Data-parallel jobs call it in the task itself (their workers need
the network), with local paths, and load only data-only model formats
(`load_model(allow_exported=False)` in distributed.py). Progress goes out through `emit(progress)` as dictionaries shaped like the proto
`Progress`; `emit` may raise to cancel the run.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Union

import torch

from equiprune.engine.budget import search_budget
from equiprune.engine.dataset import GroupDataset, load_dataset, validate_for_model
from equiprune.engine.evaluation import evaluate
from equiprune.engine.finetune.config import FinetuneConfig
from equiprune.engine.finetune.loop import finetune
from equiprune.engine.jsonable import json_safe
from equiprune.engine.fit import check_architecture_fits, check_model_fits
from equiprune.engine.models.footprint import ModelLimits
from equiprune.engine.models.io import LoadedModel, load_model, save_safetensors
from equiprune.engine.models.registry import ArchitectureSpec, build_model
from equiprune.engine.pipeline import CompressionJob, CompressionResult, run_compression, write_outputs
from equiprune.engine.ranking import prediction_note
from equiprune.engine.report import build_report

from .specs import JobSpecModel, compression_job, engine_configs, resolve_split

Emit = Callable[[dict], None]
Source = Union[str, Path, BinaryIO]

# The engine's pipeline stage names → the proto's ReportStage names.
_STAGES = {"dense": "dense", "pruned": "pruned", "pruned_without_recalibration": "pruned_without_recalibration",
           "finetuned": "finetuned"}


@dataclasses.dataclass
class JobFiles:
    """What one job reads and where it writes. `dataset` and `model` are open binary files (in
    the sandbox) or local paths (data-parallel jobs, whose Ray Train workers open them again);
    `work_dir` holds the checkpoint and the outputs (inside the sandbox it is the working
    folder, so relative paths are used there)."""

    dataset: Source
    model: Source | None
    work_dir: Path
    limits: ModelLimits | None = None
    max_dataset_bytes: int | None = None  # None: the machine's default


@dataclasses.dataclass
class JobContext:
    """One job being computed."""

    spec: JobSpecModel
    files: JobFiles
    emit: Emit

    @property
    def work_dir(self) -> Path:
        return self.files.work_dir

    @property
    def checkpoint_path(self) -> Path:
        return self.work_dir / "checkpoint.pt"


def compute_job(spec: JobSpecModel, files: JobFiles, emit: Emit) -> dict:
    """Execute `spec`; return the result dictionary (shaped like the proto JobResult) whose
    `files` lists what to store: role, path (relative to the work folder), kind, name."""
    ctx = JobContext(spec, files, emit)
    ctx.emit({"phase": "load", "message": "reading the model and dataset"})
    dataset = load_dataset(_rewound(files.dataset), max_bytes=files.max_dataset_bytes)
    result = _RUNNERS[spec.kind](ctx, dataset)
    ctx.emit({"phase": "done"})
    return result


def _rewound(source: Source) -> Source:
    """An open file is read from its start each time (a budget search reads the model often)."""
    if hasattr(source, "seek"):
        source.seek(0)
    return source


# ----------------------------------------------------------------------------- kinds


def _train(ctx: JobContext, dataset: GroupDataset) -> dict:
    t = ctx.spec.train
    spec = ArchitectureSpec(t.architecture, dict(t.architecture_kwargs))
    # Refused before anything is allocated: the architecture within the limits, taking this
    # dataset's samples, with an output per class.
    footprint = check_architecture_fits(spec, dataset, ctx.files.limits, field="spec.train.architecture_kwargs")
    validate_for_model(dataset, footprint.outputs)
    torch.manual_seed(t.seed)
    model = build_model(spec)
    split = _split(ctx, "train_split", "train", dataset)
    # Training needs no grouping: any attribute will do, and small groups do not matter here.
    data = dataset.select(ctx.spec.data.group_by[:1] or dataset.attribute_names[:1], split=split, min_group_size=0)
    ctx.emit({"phase": "train", "message": f"training {t.architecture} for {t.epochs} epochs"})
    finetune(model, {}, data, FinetuneConfig(method="naive", epochs=t.epochs, lr=t.lr, seed=t.seed),
             on_progress=lambda event: ctx.emit(_step_progress("train", vars(event))),
             checkpoint_path=ctx.checkpoint_path, device=_device(ctx))
    model.eval()
    path = ctx.work_dir / "model.safetensors"
    save_safetensors(model.cpu(), spec, path)
    reports = _evaluate_all(ctx, model, dataset) if ctx.spec.data.group_by else []
    return {"files": [_output("model", path, "model", f"{t.architecture}.safetensors", ctx)], "reports": reports,
            "parameters_before": _params(model), "parameters_after": _params(model), "notes": []}


def _evaluate(ctx: JobContext, dataset: GroupDataset) -> dict:
    loaded = _load_model(ctx, dataset)
    ctx.emit({"phase": "evaluate_dense"})
    reports = _evaluate_all(ctx, loaded.module, dataset)
    path = ctx.work_dir / "report.json"
    path.write_text(json.dumps(json_safe({"reports": reports}), indent=2, allow_nan=False))
    return {"files": [_output("report", path, "report", "report.json", ctx)], "reports": reports,
            "parameters_before": _params(loaded.module), "parameters_after": _params(loaded.module), "notes": []}


def _evaluate_all(ctx: JobContext, model: torch.nn.Module, dataset: GroupDataset) -> list[dict]:
    d = ctx.spec.data
    reports = []
    for key, conventional in (("train_split", "train"), ("eval_split", "test")):
        split = _split(ctx, key, conventional, dataset)
        if split is None and key == "eval_split":
            continue
        data = dataset.select(d.group_by, split=split, min_group_size=0)
        report = build_report(evaluate(model, data, device=_device(ctx)), tolerance=d.tolerance,
                              min_group_size=d.min_group_size)
        entry = {"stage": "dense", "split": split or "", "report": report.to_dict()}
        ctx.emit({"phase": "evaluate_dense", "report": entry})
        reports.append(entry)
    return reports


def _compress(ctx: JobContext, dataset: GroupDataset) -> dict:
    """diagnose, prune, finetune and prune_and_finetune: the engine's compression pipeline."""
    resources = ctx.spec.resources
    job = engine_configs(ctx.spec, dataset.split_names).compression
    if resources.workers == 1:
        # Data-parallel workers pick their own device; this task may hold no GPU of its own.
        job = dataclasses.replace(job, device=_device(ctx))
    out_dir = ctx.work_dir / "outputs"
    say = _pipeline_progress(ctx, job)
    if resources.workers > 1:
        from .distributed import run_compression_on_ray_train  # Ray Train only when asked for

        result, written = run_compression_on_ray_train(
            str(ctx.files.model), str(ctx.files.dataset), job, str(out_dir), workers=resources.workers,
            cpus_per_worker=resources.cpus_per_worker, gpus_per_worker=resources.gpus_per_worker,
            storage_path=str(ctx.work_dir / "ray_train"), checkpoint_path=str(ctx.checkpoint_path), on_progress=say,
            limits=ctx.files.limits, max_dataset_bytes=ctx.files.max_dataset_bytes)
    else:
        loaded = _load_model(ctx, dataset)
        outcome = run_compression(loaded, dataset, job, checkpoint_path=ctx.checkpoint_path, on_progress=say)
        ctx.emit({"phase": "write_outputs"})
        written = _write(outcome, loaded, out_dir, dataset, job)
        result = outcome.to_dict()
    files = [_output(role, Path(path), "report" if role == "report" else "model", Path(path).name, ctx)
             for role, path in written.items()]
    return {"files": files, **summarise(result, job)}


def _write(outcome: CompressionResult, loaded: LoadedModel, out_dir: Path, dataset: GroupDataset,
           job: CompressionJob) -> dict[str, str]:
    example = dataset.select(job.group_by, split=job.train_split, min_group_size=0).inputs[:2]
    written = write_outputs(outcome, loaded, out_dir, example)
    if job.pruning is None and job.finetune is None:
        # A diagnosis leaves the model as it was: only its report is an output.
        written = {"report": written["report"]}
    return written


def _budget_search(ctx: JobContext, dataset: GroupDataset) -> dict:
    configs = engine_configs(ctx.spec, dataset.split_names)
    loaded = _load_model(ctx, dataset)
    sweep: list[dict] = []

    def probe(sparsity: float):
        job = dataclasses.replace(compression_job(ctx.spec, dataset.split_names, sparsity=sparsity), device=_device(ctx))
        ctx.emit({"phase": "budget_probe", "metrics": {"sparsity": sparsity},
                  "message": f"probe {len(sweep) + 1}: pruning to {sparsity:.3f}"})
        # Every probe starts from the untouched dense model.
        fresh = dataclasses.replace(loaded, module=copy.deepcopy(loaded.module))
        outcome = run_compression(fresh, dataset, job, on_progress=_pipeline_progress(ctx, job, report_stages=False))
        final = outcome.finetuned or outcome.pruned
        report = final.eval or final.train
        sweep.append({"sparsity": outcome.pruning.sparsity.prunable_sparsity, "target": sparsity,
                      "report": report.to_dict()})
        return report

    found = search_budget(probe, configs.budget, on_probe=lambda p: ctx.emit({
        "phase": "budget_probe", "metrics": {"sparsity": p.sparsity, "accuracy": p.accuracy},
        "message": f"sparsity {p.sparsity:.3f}: {'within' if p.met else 'beyond'} tolerance"}))
    met = {p.sparsity: p.met for p in found.frontier}
    points = sorted(({"sparsity": s["sparsity"], "tolerance_met": met[s["target"]], "report": s["report"]} for s in sweep),
                    key=lambda s: s["sparsity"])
    path = ctx.work_dir / "budget.json"
    path.write_text(json.dumps(json_safe({"budget": found.to_dict(), "sweep": points}), indent=2, allow_nan=False))
    return {"files": [_output("report", path, "report", "budget.json", ctx)], "sweep": points,
            "best_sparsity": found.best_sparsity, "notes": []}


_RUNNERS = {
    "train": _train,
    "evaluate": _evaluate,
    "diagnose": _compress,
    "prune": _compress,
    "finetune": _compress,
    "prune_and_finetune": _compress,
    "budget_search": _budget_search,
}


# ----------------------------------------------------------------------------- results


def summarise(result: dict, job: CompressionJob) -> dict:
    """The proto JobResult's fields from `CompressionResult.to_dict()`."""
    reports = []
    for stage in _STAGES:
        stage_reports = result.get(stage)
        if stage_reports is None:
            continue
        reports.append({"stage": _STAGES[stage], "split": job.train_split or "", "report": stage_reports["train"]})
        if stage_reports.get("eval") is not None:
            reports.append({"stage": _STAGES[stage], "split": job.eval_split or "", "report": stage_reports["eval"]})
    pruning = result.get("pruning")
    summary = {"reports": reports, "notes": list(result.get("notes", []))}
    if pruning is not None:
        summary.update(measured_sparsity=pruning["sparsity"]["prunable_sparsity"],
                       parameters_before=pruning["params_before"], parameters_after=pruning["params_after"])
        summary["notes"] += pruning.get("notes", [])
    if result.get("diagnostics") is not None:
        summary["diagnostics"] = _diagnostics_summary(result["diagnostics"], result.get("prediction"))
    return summary


def _diagnostics_summary(diagnostics: dict, prediction: dict | None) -> dict:
    predicted = (prediction or {}).get("predicted_excess_loss", {})
    before = (prediction or {}).get("before_recalibration", {})
    after = (prediction or {}).get("after_recalibration", {})
    measured = before.get("measured_excess_loss", {})
    measured_after = after.get("measured_excess_loss", {})
    groups = list(diagnostics["groups"])
    if diagnostics.get("overall") is not None:
        groups.append({**diagnostics["overall"], "group": "overall"})
    return {
        "groups": [{
            "group": g["group"], "n": g["n"], "loss": g["loss"], "gradient_norm": g["grad_norm"],
            "hessian_trace": g["hessian_trace"], "hessian_trace_stderr": g["hessian_trace_stderr"],
            "hessian_top_eigenvalue": g["top_eigenvalue"], "mean_uncertainty": g["mean_uncertainty"],
            "mean_margin": g["mean_margin"], "mean_logit_margin": g["mean_logit_margin"],
            "predicted_excess_loss": predicted.get(g["group"]), "measured_excess_loss": measured.get(g["group"]),
            "measured_excess_loss_after_recalibration": measured_after.get(g["group"]),
        } for g in groups],
        "rank_correlation": (before.get("rank_agreement") or {}).get("spearman"),
        "rank_correlation_after_recalibration": (after.get("rank_agreement") or {}).get("spearman"),
        "prediction_note": prediction_note(prediction),
    }



# ----------------------------------------------------------------------------- helpers


def _load_model(ctx: JobContext, dataset: GroupDataset) -> LoadedModel:
    """The job's model within the limits, after checking it fits the dataset (labels within its
    outputs, samples of the shape it takes) — before any work."""
    loaded = load_model(_rewound(ctx.files.model), limits=ctx.files.limits)
    check_model_fits(loaded.module, dataset, field="spec.model")
    return loaded


def _split(ctx: JobContext, key: str, conventional: str, dataset: GroupDataset) -> str | None:
    return resolve_split(getattr(ctx.spec.data, key), conventional, dataset.split_names, f"spec.data.{key}")


def _device(ctx: JobContext) -> str:
    return device_of(ctx.spec)


def device_of(spec: JobSpecModel) -> str:
    """Where a job's work runs: the GPU it reserved, else the CPU."""
    return "cuda" if spec.resources.gpus_per_worker > 0 else "cpu"


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _output(role: str, path: Path, kind: str, name: str, ctx: JobContext) -> dict:
    """A file for the task to store, named relative to the work folder."""
    return {"role": role, "path": str(Path(path).relative_to(ctx.work_dir)), "kind": kind, "name": name}


def _step_progress(phase: str, event: dict) -> dict:
    return {
        "phase": phase, "step": event["step"], "total_steps": event["steps_per_epoch"] * event["epochs"],
        "epoch": event["epoch"], "epochs": event["epochs"], "metrics": {"loss": event["loss"]},
        "group_multipliers": event.get("multipliers") or {},
    }


def _pipeline_progress(ctx: JobContext, job: CompressionJob, *, report_stages: bool = True) -> Callable[[str, dict], None]:
    """Translate the engine pipeline's (phase, payload) calls into Progress dictionaries."""
    splits = {"train": job.train_split or "", "eval": job.eval_split or ""}

    def say(phase: str, payload: dict) -> None:
        if phase in ("finetune_step", "gradual_prune_step"):
            ctx.emit(_step_progress("finetune" if phase == "finetune_step" else "gradual_prune", payload))
        elif phase == "report":
            if not report_stages:
                return
            for key, report in payload["reports"].items():
                if report is not None:
                    ctx.emit({"phase": payload["stage"], "report": {
                        "stage": _STAGES[payload["stage"]], "split": splits[key], "report": report}})
        elif phase != "done":
            ctx.emit({"phase": phase, "message": ", ".join(f"{k}={v}" for k, v in payload.items())})

    return say
