"""The compression workflow: measure dense → diagnose → prune → measure → repair → measure.

This is what a prune-and-fine-tune job runs, in the CLI and (through a thin adapter) in the
service. It takes a loaded model and dataset, returns every report, and knows nothing of
where they came from or where they go; `write_outputs` saves the artifacts.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .dataset import GroupDataset
from .diagnostics import Diagnostics, DiagnosticsConfig, diagnose
from .ranking import rank_agreement
from .errors import InvalidConfigError
from .evaluation import Evaluation, evaluate
from .finetune.config import FinetuneConfig
from .finetune.distributed import DataParallel
from .finetune.loop import FinetuneResult, finetune
from .groups import GroupedData
from .jsonable import json_safe
from .modes import is_exported_module
from .models.io import LoadedModel, save_exported, save_safetensors
from .models.sparse import save_sparse
from .prune import PruneOutcome, PruningConfig, prune
from .pruning.batchnorm import recalibrate_batchnorm
from .pruning.masks import Masks, masks_from_weights
from .report import GroupReport, build_report

Progress = Callable[[str, dict], None]


@dataclass(frozen=True)
class CompressionJob:
    """What to do with one model on one dataset.

    constraint_split: the split the held-out variant's dual step reads. When None, a split
        named "constraint" is used if the dataset has one, else a stratified
        `constraint_fraction` of the training split is set aside before anything trains on it
        (the dense model may have trained on it: the report says so).
    """

    group_by: tuple[str, ...]
    train_split: str | None = "train"
    eval_split: str | None = "test"
    constraint_split: str | None = None
    constraint_fraction: float = 0.2
    pruning: PruningConfig | None = field(default_factory=PruningConfig)
    finetune: FinetuneConfig | None = field(default_factory=FinetuneConfig)
    diagnostics: DiagnosticsConfig | None = None
    tolerance: float = 0.01
    min_group_size: int = 30
    eval_batch_size: int = 512
    device: str | None = None

    def __post_init__(self) -> None:
        if not self.group_by:
            raise InvalidConfigError("job.group_by", "name at least one group attribute")
        if not 0 <= self.tolerance < 1:
            raise InvalidConfigError("job.tolerance", f"must be in [0, 1) (a fraction of accuracy), got {self.tolerance}")
        for name in ("min_group_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise InvalidConfigError(f"job.{name}", f"must be at least 1, got {getattr(self, name)}")
        if self.device is not None:
            _check_device(self.device)
        if not 0 < self.constraint_fraction < 1:
            raise InvalidConfigError("job.constraint_fraction", f"must be in (0, 1), got {self.constraint_fraction}")
        if self.pruning is None and self.finetune is None and self.diagnostics is None:
            raise InvalidConfigError("job", "nothing to do: give pruning, finetune or diagnostics")


    def to_dict(self) -> dict:
        def opt(x):
            return x.to_dict() if x is not None else None

        return {
            "group_by": list(self.group_by), "train_split": self.train_split, "eval_split": self.eval_split,
            "constraint_split": self.constraint_split, "constraint_fraction": self.constraint_fraction,
            "pruning": opt(self.pruning), "finetune": opt(self.finetune), "diagnostics": opt(self.diagnostics),
            "tolerance": self.tolerance,
            "min_group_size": self.min_group_size, "device": self.device,
        }


def _check_device(name: str) -> None:
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise InvalidConfigError("job.device", f"{name!r} is not a device name ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidConfigError("job.device", "CUDA was requested but this machine has no usable GPU")


@dataclass(frozen=True)
class StageReports:
    """A model's report on the training split and, when there is one, the evaluation split."""

    train: GroupReport
    eval: GroupReport | None

    def to_dict(self) -> dict:
        return {"train": self.train.to_dict(), "eval": self.eval.to_dict() if self.eval else None}


@dataclass(frozen=True)
class CompressionResult:
    job: CompressionJob
    module: nn.Module
    masks: Masks
    dense: StageReports
    pruned: StageReports | None
    pruned_without_recalibration: StageReports | None
    finetuned: StageReports | None
    pruning: PruneOutcome | None
    diagnostics: Diagnostics | None
    prediction: dict | None  # predicted vs measured R(a) and their rank agreement
    finetune: FinetuneResult | None
    notes: tuple[str, ...]

    def to_dict(self) -> dict:
        def opt(x):
            return x.to_dict() if x is not None else None

        return json_safe({
            "job": self.job.to_dict(),
            "dense": self.dense.to_dict(),
            "pruned": opt(self.pruned),
            "pruned_without_recalibration": opt(self.pruned_without_recalibration),
            "finetuned": opt(self.finetuned),
            "pruning": opt(self.pruning),
            "diagnostics": opt(self.diagnostics),
            "prediction": self.prediction,
            "finetune": opt(self.finetune),
            "notes": list(self.notes),
        })


def run_compression(
    loaded: LoadedModel,
    dataset: GroupDataset,
    job: CompressionJob,
    *,
    checkpoint_path: str | Path | None = None,
    on_progress: Progress | None = None,
    data_parallel: DataParallel | None = None,
) -> CompressionResult:
    """Run `job` on `loaded` and `dataset`; return every report.

    The dense model is never modified when the job prunes (pruning works on a copy); a job
    without pruning fine-tunes `loaded.module` itself, in place.

    data_parallel: run as one worker of a data-parallel group. Only the fine-tuning phase is
    shared out; every worker runs the rest (evaluation, diagnostics, pruning with its
    training steps) in full, which is deterministic, so all workers hold the same pruned
    model when fine-tuning starts and the same reports at the end. Callers may pass the same
    `on_progress` on every worker: it is called on rank 0 only.
    """
    if data_parallel is not None and not data_parallel.is_primary:
        on_progress = None
    say = on_progress or (lambda phase, payload: None)
    device = torch.device(job.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    notes: list[str] = []
    if loaded.format == "exported":
        exported_mode = {True: "train", False: "eval", None: "an unknown"}[loaded.exported_training]
        notes.append(f"the .pt2 program was exported in {exported_mode} mode; it is evaluated and "
                     "fine-tuned in that mode (torch 2.13 cannot switch an exported program)")
    dense = loaded.module.to(device)
    # `train` is everything the model may learn from (gradual pruning, BatchNorm statistics,
    # fine-tuning); a constraint split, when the job needs one, is cut away before any of it.
    train, evaluation, constraint = _splits(dataset, job, notes)

    def measure(model: nn.Module, reference: dict[str, Evaluation] | None) -> tuple[StageReports, dict[str, Evaluation]]:
        # The dense model's training logits are fair_distill's targets: kept from this pass.
        keep = reference is None and job.finetune is not None and job.finetune.needs_teacher
        evals = {"train": evaluate(model, train, batch_size=job.eval_batch_size, device=device, keep_logits=keep)}
        if evaluation is not None:
            evals["eval"] = evaluate(model, evaluation, batch_size=job.eval_batch_size, device=device)
        reports = {
            key: build_report(ev, reference[key] if reference else None, tolerance=job.tolerance,
                              min_group_size=job.min_group_size)
            for key, ev in evals.items()
        }
        return StageReports(reports["train"], reports.get("eval")), evals

    def announce(stage: str, reports: StageReports) -> None:
        """Each report as soon as it exists, so a watcher sees the damage before the repair."""
        say("report", {"stage": stage, "reports": reports})

    say("evaluate_dense", {})
    dense_reports, dense_evals = measure(dense, None)
    announce("dense", dense_reports)

    diagnostics = diag_data = None
    if job.diagnostics is not None:
        say("diagnose", {})
        diag_data = train.sample_per_group(job.diagnostics.samples_per_group, seed=job.diagnostics.seed)
        diagnostics = diagnose(dense, diag_data, job.diagnostics)

    # A model that arrives pruned keeps its zeros through fine-tuning.
    module, masks, outcome = dense, _zero_masks(dense) if job.pruning is None else {}, None
    pruned_reports = raw_reports = prediction = None
    if job.pruning is not None:
        say("prune", _pruning_summary(job.pruning))
        outcome = prune(dense, job.pruning, example_input=train.inputs[:2].to(device),
                        train_between=_between_steps(train, job, device, say))
        module, masks = outcome.module, outcome.masks
        pruned_reports, _ = measure(module, dense_evals)
        if job.pruning.recalibrate_batchnorm and _recalibrate(module, train, notes):
            raw_reports = pruned_reports
            announce("pruned_without_recalibration", raw_reports)
            pruned_reports, _ = measure(module, dense_evals)
        announce("pruned", pruned_reports)
        if diagnostics is not None and masks:
            prediction = _check_prediction(dense, diag_data, masks, diagnostics, raw_reports or pruned_reports,
                                           pruned_reports if raw_reports else None)

    finetuned_reports = ft_result = None
    if job.finetune is not None:
        say("finetune", {"method": job.finetune.method})
        needs = job.finetune.needs_reference
        train_ref = dense_evals["train"] if needs else None
        constraint_ref = (evaluate(dense, constraint, batch_size=job.eval_batch_size, device=device,
                                   keep_logits=job.finetune.needs_teacher)
                          if constraint is not None else None)
        ft_result = finetune(
            module, masks, train, job.finetune,
            train_reference=train_ref, constraint=constraint, constraint_reference=constraint_ref,
            device=device, checkpoint_path=checkpoint_path,
            on_progress=lambda event: say("finetune_step", vars(event)),
            data_parallel=data_parallel, teacher=dense,
        )
        if ft_result.calibration is not None:
            notes.append(_calibration_note(ft_result.calibration))
        finetuned_reports, _ = measure(module, dense_evals)
        announce("finetuned", finetuned_reports)

    say("done", {})
    return CompressionResult(
        job=job, module=module, masks=masks, dense=dense_reports, pruned=pruned_reports,
        pruned_without_recalibration=raw_reports, finetuned=finetuned_reports, pruning=outcome,
        diagnostics=diagnostics, prediction=prediction, finetune=ft_result, notes=tuple(notes),
    )


def _calibration_note(calibration: dict) -> str:
    if not calibration["applied"]:
        return f"fair_distill's output calibration was skipped: {calibration['note']}"
    return ("fair_distill fitted output offsets on the constraint split so the pruned model predicts each class "
            "as often as the dense model there (distance between the two prediction-rate profiles "
            f"{calibration['distance_before']:.3f} → {calibration['distance_after']:.3f})")


def _zero_masks(module: nn.Module) -> Masks:
    """Masks holding the zeros of a weight matrix or kernel that has any (an already pruned
    model); a dense model gets none, so fine-tuning it is unconstrained."""
    return masks_from_weights(module, [name for name, p in module.named_parameters()
                                       if p.dim() > 1 and bool((p == 0).any())])


def _pruning_summary(config: PruningConfig) -> dict:
    if config.kind == "n_m":
        return {"kind": "n_m", "n": config.n, "m": config.m}
    return {"kind": config.kind, "sparsity": config.sparsity, "schedule": config.schedule}


def _recalibrate(module: nn.Module, train: GroupedData, notes: list[str]) -> bool:
    """Re-estimate BatchNorm statistics on shuffled training inputs; False when nothing changed.

    Shuffled: the statistics are averaged over chunks, and a file sorted by group, label or age
    would make every chunk homogeneous and the variance too small.
    """
    if is_exported_module(module):
        if any("batch_norm" in str(node.target) for node in module.graph.nodes):
            notes.append("BatchNorm statistics were not re-estimated after pruning: a torch.export "
                         "program cannot be switched to train mode to recompute them")
        return False
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    return recalibrate_batchnorm(module, train.inputs[order]) > 0


def write_outputs(result: CompressionResult, loaded: LoadedModel, out_dir: str | Path,
                  example_input: torch.Tensor) -> dict[str, str]:
    """Save the model in its input format (plus compact sparse storage) and the report."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    module = result.module.to("cpu")
    written: dict[str, str] = {}
    if loaded.format == "exported":
        path = out / "model.pt2"
        save_exported(module, example_input.cpu(), path, training=bool(loaded.exported_training))
        written["model"] = str(path)
    else:
        spec = loaded.spec
        if result.pruning is not None and result.pruning.masks == {} and result.pruning.params_after < result.pruning.params_before:
            # Structured pruning changed the layer shapes: the registered architecture no longer
            # describes the weights, so the shrunk model travels as a .pt2 program.
            path = out / "model.pt2"
            save_exported(module, example_input.cpu(), path, training=False)
        else:
            path = out / "model.safetensors"
            save_safetensors(module, spec, path)
            if result.masks:
                sparse = out / "model.sparse.safetensors"
                save_sparse(module, spec, sparse)
                written["sparse_model"] = str(sparse)
        written["model"] = str(path)
    report = out / "report.json"
    report.write_text(json.dumps(result.to_dict(), indent=2, allow_nan=False))
    written["report"] = str(report)
    return written


def _splits(dataset: GroupDataset, job: CompressionJob, notes: list[str]):
    """(train, evaluation, constraint). Groups too small for a split are not an error here:
    the report marks groups below `min_group_size` as insufficient instead of judging them."""
    def select(split):
        return dataset.select(job.group_by, split=split, min_group_size=0)

    train = select(job.train_split)
    evaluation = select(job.eval_split) if job.eval_split else None
    if evaluation is None:
        notes.append("no evaluation split: every number is measured on training data")
    constraint = None
    if job.finetune is not None and job.finetune.needs_constraint_split:
        name = job.constraint_split or ("constraint" if "constraint" in dataset.split_names else None)
        if name is not None:
            constraint = select(name)
        else:
            train, constraint = train.split_off(job.constraint_fraction, seed=job.finetune.seed)
            notes.append(
                f"held-out constraint split carved from the training split ({job.constraint_fraction:.0%}, "
                "stratified per group) before any training; the dense model may have trained on it, so its "
                "reference accuracies there are optimistic")
    return train, evaluation, constraint


def _between_steps(train: GroupedData, job: CompressionJob, device, say: Progress):
    """Training between gradual pruning steps: one naive epoch with the job's other settings."""
    base = job.finetune or FinetuneConfig(method="naive")

    def train_between(module: nn.Module, step: int, masks: Masks) -> None:
        config = dataclasses.replace(base, method="naive", epochs=1, seed=base.seed + step)
        finetune(module, masks, train, config, device=device,
                 on_progress=lambda event: say("gradual_prune_step", {"prune_step": step, **vars(event)}))

    return train_between


def _check_prediction(dense, diag_data, masks, diagnostics, measured: StageReports,
                      recalibrated: StageReports | None) -> dict:
    """Second-order predicted R(a) next to the measured R(a), and how well the first ranked the
    second. The prediction models removing w_P with the dense BatchNorm statistics, so it is
    compared first with the just-pruned model before recalibration; the comparison with the
    recalibrated model is added when there is one. Predicted on the diagnosed samples,
    measured on the whole training split."""
    predicted = {p.group: p.predicted for p in diagnostics.predict_excess_loss(dense, diag_data, masks)}

    def against(report: GroupReport) -> dict:
        observed = {g.group: g.excess_loss for g in report.groups if g.excess_loss is not None}
        return {"measured_excess_loss": observed,
                "rank_agreement": rank_agreement({k: predicted[k] for k in observed if k in predicted},
                                                 observed).to_dict()}

    result = {"predicted_excess_loss": predicted, "before_recalibration": against(measured.train)}
    if recalibrated is not None:
        result["after_recalibration"] = against(recalibrated.train)
    return result
