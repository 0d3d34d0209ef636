"""Run one job: read its artifacts, call the engine, store its outputs, return its result.

Plain Python around the engine — no Ray here (the job manager runs this inside a Ray task),
so it is tested directly. Progress goes out through `emit(progress)` as dictionaries shaped
like the proto `Progress`; step events are thinned to one per `progress_interval_s` (a
fine-tuning run takes thousands of steps and every event is a database row), while phase
changes and reports always go out. `emit` may raise to cancel the run.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from equiprune.engine.budget import search_budget
from equiprune.engine.dataset import GroupDataset, load_dataset, validate_for_model
from equiprune.engine.evaluation import evaluate
from equiprune.engine.finetune.config import FinetuneConfig
from equiprune.engine.finetune.loop import finetune
from equiprune.engine.jsonable import json_safe
from equiprune.engine.models.io import LoadedModel, load_model, save_safetensors
from equiprune.engine.models.registry import ArchitectureSpec, build_model
from equiprune.engine.pipeline import CompressionJob, CompressionResult, run_compression, write_outputs
from equiprune.engine.report import build_report

from .settings import ServerSettings
from .specs import JobSpecModel, compression_job, engine_configs, resolve_split
from .store.artifacts import ArtifactStore

Emit = Callable[[dict], None]

# The engine's pipeline stage names → the proto's ReportStage names.
_STAGES = {"dense": "dense", "pruned": "pruned", "pruned_without_recalibration": "pruned_without_recalibration",
           "finetuned": "finetuned"}


@dataclasses.dataclass
class JobContext:
    """Where one job reads and writes."""

    job_id: str
    spec: JobSpecModel
    settings: ServerSettings
    artifacts: ArtifactStore
    emit: Emit

    @property
    def work_dir(self) -> Path:
        return self.settings.job_dir(self.job_id)

    @property
    def checkpoint_path(self) -> Path:
        return self.work_dir / "checkpoint.pt"


def run_job(job_id: str, spec: JobSpecModel, settings: ServerSettings, emit: Emit) -> dict:
    """Execute `spec`; return the result dictionary (shaped like the proto JobResult)."""
    artifacts = ArtifactStore(settings.artifacts, max_upload_bytes=settings.max_upload_bytes,
                              max_chunk_bytes=settings.max_chunk_bytes)
    ctx = JobContext(job_id, spec, settings, artifacts, _Throttled(emit, settings.progress_interval_s))
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    ctx.emit({"phase": "load", "message": "reading the model and dataset"})
    dataset = load_dataset(artifacts.local_path(spec.dataset))
    result = _RUNNERS[spec.kind](ctx, dataset)
    ctx.emit({"phase": "done"})
    # The run is complete: its checkpoint and scratch outputs have nothing left to resume.
    shutil.rmtree(ctx.work_dir, ignore_errors=True)
    return result


# ----------------------------------------------------------------------------- kinds


def _train(ctx: JobContext, dataset: GroupDataset) -> dict:
    t = ctx.spec.train
    spec = ArchitectureSpec(t.architecture, dict(t.architecture_kwargs))
    torch.manual_seed(t.seed)
    model = build_model(spec)
    validate_for_model(dataset, _num_classes(model, dataset))
    split = _split(ctx, "train_split", "train", dataset)
    # Training needs no grouping: any attribute will do, and small groups do not matter here.
    data = dataset.select(ctx.spec.data.group_by[:1] or dataset.attribute_names[:1], split=split, min_group_size=0)
    ctx.emit({"phase": "train", "message": f"training {t.architecture} for {t.epochs} epochs"})
    finetune(model, {}, data, FinetuneConfig(epochs=t.epochs, lr=t.lr, seed=t.seed),
             on_progress=lambda event: ctx.emit(_step_progress("train", vars(event))),
             checkpoint_path=ctx.checkpoint_path, device=_device(ctx))
    model.eval()
    path = ctx.work_dir / "model.safetensors"
    save_safetensors(model.cpu(), spec, path)
    outputs = [_store_output(ctx, "model", path, "model", f"{t.architecture}.safetensors")]
    reports = _evaluate_all(ctx, model, dataset) if ctx.spec.data.group_by else []
    return {"outputs": outputs, "reports": reports, "parameters_before": _params(model),
            "parameters_after": _params(model), "notes": []}


def _num_classes(model: torch.nn.Module, dataset: GroupDataset) -> int:
    with torch.no_grad():
        model.eval()
        return int(model(dataset.inputs[:2]).shape[1])


def _evaluate(ctx: JobContext, dataset: GroupDataset) -> dict:
    loaded = _load_model(ctx, dataset)
    ctx.emit({"phase": "evaluate_dense"})
    reports = _evaluate_all(ctx, loaded.module, dataset)
    path = ctx.work_dir / "report.json"
    path.write_text(json.dumps(json_safe({"reports": reports}), indent=2, allow_nan=False))
    return {"outputs": [_store_output(ctx, "report", path, "report", "report.json")], "reports": reports,
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
    model_path = ctx.artifacts.local_path(ctx.spec.model)
    out_dir = ctx.work_dir / "outputs"
    say = _pipeline_progress(ctx, job)
    if resources.workers > 1:
        from .distributed import run_compression_on_ray_train  # Ray Train only when asked for

        result, written = run_compression_on_ray_train(
            model_path, ctx.artifacts.local_path(ctx.spec.dataset), job, str(out_dir), workers=resources.workers,
            cpus_per_worker=resources.cpus_per_worker, gpus_per_worker=resources.gpus_per_worker,
            storage_path=str(ctx.work_dir / "ray_train"), checkpoint_path=str(ctx.checkpoint_path), on_progress=say)
    else:
        loaded = _load_model(ctx, dataset)
        outcome = run_compression(loaded, dataset, job, checkpoint_path=ctx.checkpoint_path, on_progress=say)
        ctx.emit({"phase": "write_outputs"})
        written = _write(outcome, loaded, out_dir, dataset, job)
        result = outcome.to_dict()
    outputs = [_store_output(ctx, role, Path(path), "report" if role == "report" else "model", Path(path).name)
               for role, path in written.items()]
    return {"outputs": outputs, **summarise(result, job)}


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
    return {"outputs": [_store_output(ctx, "report", path, "report", "budget.json")], "sweep": points,
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
    measured = before.get("measured_excess_loss", {})
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
        } for g in groups],
        "rank_correlation": (before.get("rank_agreement") or {}).get("spearman"),
    }


# ----------------------------------------------------------------------------- helpers


def _load_model(ctx: JobContext, dataset: GroupDataset) -> LoadedModel:
    loaded = load_model(ctx.artifacts.local_path(ctx.spec.model))
    num_classes = _num_classes(loaded.module, dataset) if loaded.format != "exported" else None
    if num_classes is not None:
        validate_for_model(dataset, num_classes)
    return loaded


def _split(ctx: JobContext, key: str, conventional: str, dataset: GroupDataset) -> str | None:
    return resolve_split(getattr(ctx.spec.data, key), conventional, dataset.split_names, f"spec.data.{key}")


def _device(ctx: JobContext) -> str:
    return "cuda" if ctx.spec.resources.gpus_per_worker > 0 else "cpu"


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _store_output(ctx: JobContext, role: str, path: Path, kind: str, name: str) -> dict:
    record = ctx.artifacts.put_file(str(path), kind, name, source=f"job:{ctx.job_id}")
    return {"role": role, "artifact_id": record.artifact_id}


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


class _Throttled:
    """Pass every event through, except step events closer than `interval` s to the last one
    (the last step of each epoch always goes out, so epoch boundaries are never lost)."""

    def __init__(self, emit: Emit, interval: float) -> None:
        self._emit, self._interval, self._last = emit, interval, 0.0

    def __call__(self, progress: dict) -> None:
        now = time.monotonic()
        stepping = progress.get("total_steps")
        if stepping:
            per_epoch = stepping // max(progress.get("epochs", 1), 1)
            epoch_end = per_epoch and progress["step"] % per_epoch == 0
            if not epoch_end and now - self._last < self._interval:
                return
        self._last = now
        self._emit(json_safe(progress))
