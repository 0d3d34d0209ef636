"""The engine's job API: `train`, `evaluate`, `compress` and `budget_search`, and `run_job`
to pick one by the spec's kind.

Each takes a validated `JobSpec` and its `JobInputs`, emits `JobEvent`s, writes its output
files into the work folder and returns a `JobOutcome`. The engine CLI, the service's
sandboxed job worker and its data-parallel Ray Train workers all call these: no job is
assembled anywhere else.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import torch

from ..budget import search_budget
from ..dataset import GroupDataset, load_dataset, validate_for_model
from ..evaluation import evaluate as evaluate_model
from ..finetune.distributed import DataParallel
from ..finetune.loop import finetune
from ..fit import check_architecture_fits, check_model_fits
from ..jsonable import json_safe
from ..models.io import LoadedModel, load_model, save_safetensors
from ..models.registry import ArchitectureSpec, build_model
from ..pipeline import CompressionResult, run_compression, write_outputs
from ..report import build_report
from .assembly import compression_job, resolve_split
from .outcome import BudgetPoint, JobEvent, JobInputs, JobOutcome, OnEvent, OutputFile, StageReport
from .progress import pipeline_events, step_event
from .spec import COMPRESSION_KINDS, JobSpec
from .summary import diagnostics_summary, stage_reports


def run_job(spec: JobSpec, inputs: JobInputs, on_event: OnEvent | None = None, *,
            data_parallel: DataParallel | None = None, device: str | None = None) -> JobOutcome:
    """Run `spec` whatever its kind. `data_parallel` and `device`: as one worker of a
    data-parallel group (fine-tuning jobs only; see `compress`)."""
    if data_parallel is not None and spec.kind not in ("finetune", "prune_and_finetune"):
        raise ValueError(f"a {spec.kind} job does not run data-parallel")
    primary = data_parallel is None or data_parallel.is_primary
    # One voice: in a data-parallel group only rank 0 speaks (the others compute the same).
    emit = on_event if on_event is not None and primary else (lambda event: None)
    emit(JobEvent("load", "reading the model and dataset"))
    dataset = load_dataset(inputs.rewound(inputs.dataset), max_bytes=inputs.max_dataset_bytes)
    if spec.kind == "train":
        outcome = train(spec, inputs, dataset, emit)
    elif spec.kind == "evaluate":
        outcome = evaluate(spec, inputs, dataset, emit)
    elif spec.kind == "budget_search":
        outcome = budget_search(spec, inputs, dataset, emit)
    else:
        outcome = compress(spec, inputs, dataset, emit, data_parallel=data_parallel, device=device)
    emit(JobEvent("done"))
    return outcome


def train(spec: JobSpec, inputs: JobInputs, dataset: GroupDataset, emit: OnEvent) -> JobOutcome:
    """A dense model of a registered architecture, trained from scratch on the training split."""
    t = spec.train
    architecture = ArchitectureSpec(t.architecture, dict(t.architecture_kwargs))
    # Refused before anything is allocated: the architecture within the limits, taking this
    # dataset's samples, with an output per class (measured on the meta device).
    footprint = check_architecture_fits(architecture, dataset, inputs.limits, field="train.architecture_kwargs")
    validate_for_model(dataset, footprint.outputs)
    inputs.work_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(t.seed)
    model = build_model(architecture)
    split = _split(spec, "train_split", dataset)
    # Training needs no grouping: any attribute will do, and small groups do not matter here.
    data = dataset.select(spec.data.group_by[:1] or dataset.attribute_names[:1], split=split, min_group_size=0)
    emit(JobEvent("train", f"training {t.architecture} for {t.epochs} epochs"))
    finetune(model, {}, data, t.loop(), on_progress=lambda event: emit(step_event("train", vars(event))),
             checkpoint_path=inputs.checkpoint, device=_device(spec, inputs))
    model.eval()
    path = inputs.work_dir / "model.safetensors"
    save_safetensors(model.cpu(), architecture, path)
    reports = _evaluate_splits(spec, model, dataset, emit, _device(spec, inputs)) if spec.data.group_by else ()
    return JobOutcome(files=(_output("model", path, "model", f"{t.architecture}.safetensors", inputs),),
                      reports=reports, parameters_before=_params(model), parameters_after=_params(model))


def evaluate(spec: JobSpec, inputs: JobInputs, dataset: GroupDataset, emit: OnEvent) -> JobOutcome:
    """The model's per-group report on the training and evaluation splits."""
    loaded = _load_model(inputs, dataset)
    emit(JobEvent("evaluate_dense"))
    reports = _evaluate_splits(spec, loaded.module, dataset, emit, _device(spec, inputs))
    path = inputs.work_dir / "report.json"
    path.write_text(json.dumps(json_safe({"reports": [r.to_dict() for r in reports]}), indent=2, allow_nan=False))
    return JobOutcome(files=(_output("report", path, "report", "report.json", inputs),), reports=reports,
                      parameters_before=_params(loaded.module), parameters_after=_params(loaded.module))


def compress(spec: JobSpec, inputs: JobInputs, dataset: GroupDataset, emit: OnEvent, *,
             data_parallel: DataParallel | None = None, device: str | None = None) -> JobOutcome:
    """diagnose, prune, finetune and prune_and_finetune: measure dense → diagnose → prune →
    measure → repair → measure (`pipeline.run_compression`), then write the outputs.

    data_parallel: run as one worker of a data-parallel group (the service's Ray Train
    workers): every worker computes, rank 0 alone emits events and writes the outputs (the
    others return an outcome without files). `device`: the worker's own device (a GPU index
    on a multi-GPU node); by default the spec's."""
    if spec.kind not in COMPRESSION_KINDS:
        raise ValueError(f"compress runs {', '.join(COMPRESSION_KINDS)} jobs, not {spec.kind}")
    job = compression_job(spec, dataset.split_names)
    job = dataclasses.replace(job, device=device or _device(spec, inputs))
    primary = data_parallel is None or data_parallel.is_primary
    loaded = _load_model(inputs, dataset, allow_exported=data_parallel is None)
    result = run_compression(loaded, dataset, job, checkpoint_path=inputs.checkpoint,
                             on_progress=pipeline_events(emit, job) if primary else None, data_parallel=data_parallel)
    files: tuple[OutputFile, ...] = ()
    if primary:
        emit(JobEvent("write_outputs"))
        files = _write(result, loaded, dataset, inputs)
    return _outcome(result, files)


def budget_search(spec: JobSpec, inputs: JobInputs, dataset: GroupDataset, emit: OnEvent) -> JobOutcome:
    """The highest sparsity whose every group stays within tolerance: each probe prunes (and,
    with a finetune section, repairs) a fresh copy of the dense model."""
    loaded = _load_model(inputs, dataset)
    sweep: list[dict] = []

    def probe(sparsity: float):
        job = dataclasses.replace(compression_job(spec, dataset.split_names, sparsity=sparsity), device=_device(spec, inputs))
        emit(JobEvent("budget_probe", f"probe {len(sweep) + 1}: pruning to {sparsity:.3f}", metrics={"sparsity": sparsity}))
        fresh = dataclasses.replace(loaded, module=copy.deepcopy(loaded.module))  # every probe from the dense model
        result = run_compression(fresh, dataset, job, on_progress=pipeline_events(emit, job, report_stages=False))
        final = result.finetuned or result.pruned
        report = final.eval or final.train
        sweep.append({"sparsity": result.pruning.sparsity.prunable_sparsity, "target": sparsity, "report": report})
        return report

    ft = spec.finetune
    found = search_budget(probe, spec.budget, on_probe=lambda p: emit(JobEvent(
        "budget_probe", f"sparsity {p.sparsity:.3f}: {'within' if p.met else 'beyond'} tolerance",
        metrics={"sparsity": p.sparsity, "accuracy": p.accuracy})), pruning_kind=spec.pruning.kind,
        finetuned=f"{ft.method} for {ft.epochs} epoch{'s' if ft.epochs != 1 else ''}" if ft is not None else None,
        measured=lambda target: next(s["sparsity"] for s in sweep if s["target"] == target))
    met = {p.sparsity: p.met for p in found.frontier}
    measured = {s["target"]: s["sparsity"] for s in sweep}
    points = tuple(sorted((BudgetPoint(s["sparsity"], met[s["target"]], s["report"]) for s in sweep),
                          key=lambda p: p.sparsity))
    # Shown beside the sweep, whose sparsities are the measured ones, not the targets.
    best = measured[found.best_sparsity] if found.best_sparsity is not None else None
    path = inputs.work_dir / "budget.json"
    path.write_text(json.dumps(json_safe({"budget": found.to_dict(), "sweep": [p.to_dict() for p in points]}),
                               indent=2, allow_nan=False))
    return JobOutcome(files=(_output("report", path, "report", "budget.json", inputs),), sweep=points,
                      best_sparsity=best, budget_shortfall=found.shortfall)


# ----------------------------------------------------------------------------- helpers


def _outcome(result: CompressionResult, files: tuple[OutputFile, ...]) -> JobOutcome:
    pruning = result.pruning
    notes = list(result.notes) + (list(pruning.notes) if pruning is not None else [])
    return JobOutcome(
        files=files, reports=stage_reports(result), notes=tuple(notes),
        measured_sparsity=pruning.sparsity.prunable_sparsity if pruning is not None else None,
        parameters_before=pruning.params_before if pruning is not None else None,
        parameters_after=pruning.params_after if pruning is not None else None,
        diagnostics=diagnostics_summary(result.diagnostics, result.prediction) if result.diagnostics else None)


def _write(result: CompressionResult, loaded: LoadedModel, dataset: GroupDataset, inputs: JobInputs):
    job = result.job
    example = dataset.select(job.group_by, split=job.train_split, min_group_size=0).inputs[:2]
    written = write_outputs(result, loaded, inputs.work_dir, example)
    if job.pruning is None and job.finetune is None:
        written = {"report": written["report"]}  # a diagnosis leaves the model as it was
    return tuple(_output(role, Path(path), "report" if role == "report" else "model", Path(path).name, inputs)
                 for role, path in written.items())


def _evaluate_splits(spec: JobSpec, model: torch.nn.Module, dataset: GroupDataset, emit: OnEvent, device: str):
    reports = []
    for key in ("train_split", "eval_split"):
        split = _split(spec, key, dataset)
        if split is None and key == "eval_split":
            continue
        data = dataset.select(spec.data.group_by, split=split, min_group_size=0)
        report = build_report(evaluate_model(model, data, device=device), tolerance=spec.data.tolerance,
                              min_group_size=spec.data.min_group_size)
        entry = StageReport("dense", split or "", report)
        emit(JobEvent("evaluate_dense", report=entry))
        reports.append(entry)
    return tuple(reports)


def _load_model(inputs: JobInputs, dataset: GroupDataset, *, allow_exported: bool = True) -> LoadedModel:
    """The job's model within the limits, after checking it fits the dataset (labels within its
    outputs, samples of the shape it takes) — before any work. Data-parallel workers run
    outside the sandbox and load data-only formats only (never a .pt2 program)."""
    loaded = load_model(inputs.rewound(inputs.model), limits=inputs.limits, allow_exported=allow_exported)
    check_model_fits(loaded.module, dataset, field="model")
    inputs.work_dir.mkdir(parents=True, exist_ok=True)  # only once the inputs are known to fit
    return loaded


def _device(spec: JobSpec, inputs: JobInputs) -> str:
    return inputs.device or spec.device


def _split(spec: JobSpec, key: str, dataset: GroupDataset) -> str | None:
    return resolve_split(spec.data, key, dataset.split_names)


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _output(role: str, path: Path, kind: str, name: str, inputs: JobInputs) -> OutputFile:
    return OutputFile(role, str(Path(path).relative_to(inputs.work_dir)), kind, name)
