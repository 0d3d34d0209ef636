"""Job specs as the service stores them, and their translation into engine configs.

`JobSpecModel` is the validated, JSON-serialisable form of the proto `JobSpec` with every
default filled in (so a stored job says exactly what ran) and artifact references resolved
to ids. Ranges that are science (sparsity, tolerance, learning rates) are checked by the
engine's own configs; `engine_configs` builds them at create time so a bad value is refused
before anything runs, with the field named as the client wrote it (`spec.pruning.sparsity`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from equiprune.engine.budget import BudgetConfig
from equiprune.engine.diagnostics import DiagnosticsConfig
from equiprune.engine.errors import EngineError
from equiprune.engine.finetune.config import DEFAULT_FAIR_METHOD, FinetuneConfig
from equiprune.engine.pipeline import CompressionJob
from equiprune.engine.prune import PruningConfig

from .errors import InvalidArgument

JobKind = Literal["train", "evaluate", "diagnose", "prune", "finetune", "prune_and_finetune", "budget_search"]
JOB_KINDS: tuple[str, ...] = JobKind.__args__  # type: ignore[attr-defined]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class DataSpec(_Frozen):
    group_by: tuple[str, ...] = ()
    # None: the conventional split when the dataset has it ("train", "test", "constraint");
    # "": no split (every row for training; no evaluation split).
    train_split: str | None = None
    eval_split: str | None = None
    constraint_split: str | None = None
    constraint_fraction: float = 0.2
    min_group_size: int = 30
    tolerance: float = 0.01


class PruningSpec(_Frozen):
    kind: Literal["unstructured", "n_m", "structured"] = "unstructured"
    sparsity: float = 0.0
    scope: Literal["layerwise", "global"] = "layerwise"
    schedule: Literal["one_shot", "gradual"] = "one_shot"
    gradual_steps: int = 5
    exclude_names: tuple[str, ...] = ()
    exclude_types: tuple[str, ...] = ()
    keep_first_and_last: bool = True
    n: int = 2
    m: int = 4
    recalibrate_batchnorm: bool = True


class FinetuneSpec(_Frozen):
    # A job that repairs gets the engine's fair default; the numbers come from the engine's config.
    method: Literal["naive", "equalized_loss", "ceag", "heldout_ceag", "fair_distill"] = DEFAULT_FAIR_METHOD
    epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 1e-4
    dual_lr: float = FinetuneConfig.dual_lr
    replay_size: int = FinetuneConfig.replay_size
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    augment_hflip: bool = False
    seed: int = 0
    checkpoint_every_steps: int = 0
    calibrate_outputs: bool = FinetuneConfig.calibrate_outputs
    max_multiplier: float = FinetuneConfig.max_multiplier
    distill_alpha: float = FinetuneConfig.distill_alpha


class DiagnosticsSpec(_Frozen):
    probes: int = 10
    power_iterations: int = 20
    samples_per_group: int = 1000
    seed: int = 0


class BudgetSpec(_Frozen):
    low: float = 0.5
    high: float = 0.95
    resolution: float = 0.025
    max_probes: int = 8
    require_confidence: bool = False


class TrainSpec(_Frozen):
    architecture: str
    architecture_kwargs: dict[str, Any] = Field(default_factory=dict)
    epochs: int = 15
    lr: float = 0.05
    seed: int = 0


class ResourcesSpec(_Frozen):
    workers: int = Field(1, ge=1, le=256)
    cpus_per_worker: int = Field(1, ge=1, le=256)
    gpus_per_worker: int = Field(0, ge=0, le=16)


class JobSpecModel(_Frozen):
    kind: JobKind
    model: str | None = None  # artifact id
    dataset: str  # artifact id
    data: DataSpec = DataSpec()
    pruning: PruningSpec | None = None
    finetune: FinetuneSpec | None = None
    diagnostics: DiagnosticsSpec | None = None
    budget: BudgetSpec | None = None
    train: TrainSpec | None = None
    resources: ResourcesSpec = ResourcesSpec()

    def to_json(self) -> dict:
        return self.model_dump(mode="json")


# What each kind needs (required) and may take (optional). Anything else is refused: a spec
# that carries settings the job ignores is almost always a client mistake.
_SECTIONS = {
    "train": ({"train"}, set()),
    "evaluate": ({"model"}, set()),
    "diagnose": ({"model"}, {"diagnostics", "pruning"}),
    "prune": ({"model", "pruning"}, {"diagnostics"}),
    "finetune": ({"model", "finetune"}, set()),
    "prune_and_finetune": ({"model", "pruning", "finetune"}, {"diagnostics"}),
    "budget_search": ({"model", "pruning"}, {"finetune", "budget"}),
}


def check_sections(spec: JobSpecModel) -> None:
    """Refuse a spec whose sections do not fit its kind, naming the section."""
    required, optional = _SECTIONS[spec.kind]
    for name in ("model", "pruning", "finetune", "diagnostics", "budget", "train"):
        present = getattr(spec, name) is not None
        if name in required and not present:
            raise InvalidArgument(f"a {spec.kind} job needs it", field=f"spec.{name}")
        if present and name not in required | optional:
            raise InvalidArgument(f"a {spec.kind} job does not use it; leave it unset", field=f"spec.{name}")
    if spec.kind != "train" and not spec.data.group_by:
        raise InvalidArgument("name at least one group attribute", field="spec.data.group_by")
    if spec.resources.workers > 1 and spec.kind not in ("finetune", "prune_and_finetune"):
        raise InvalidArgument("several workers data-parallelise fine-tuning; only finetune and "
                              "prune_and_finetune jobs take more than one", field="spec.resources.workers")


@dataclass(frozen=True)
class EngineConfigs:
    """The engine's view of a job; built once at create time to validate, again to run."""

    compression: CompressionJob | None  # None for train and evaluate jobs
    budget: BudgetConfig | None


def engine_configs(spec: JobSpecModel, split_names: tuple[str, ...]) -> EngineConfigs:
    """Build (and thereby validate) the engine configs; engine errors name proto fields."""
    try:
        return _engine_configs(spec, split_names)
    except EngineError as err:
        raise InvalidArgument(err.problem, field=proto_field(err.field)) from None


def _engine_configs(spec: JobSpecModel, split_names: tuple[str, ...]) -> EngineConfigs:
    budget = None
    if spec.kind == "budget_search":
        b = spec.budget or BudgetSpec()
        budget = BudgetConfig(tolerance=spec.data.tolerance, low=b.low, high=b.high, resolution=b.resolution,
                              max_probes=b.max_probes, require_confidence=b.require_confidence)
        if spec.pruning.kind == "n_m":
            raise InvalidArgument("N:M pruning has a fixed sparsity (n/m); there is nothing to search",
                                  field="spec.pruning.kind")
    if spec.kind == "train":
        _check_train(spec.train)
    if spec.kind in ("train", "evaluate"):
        _check_data(spec.data)
        return EngineConfigs(None, budget)
    # A search chooses each probe's sparsity: validate the rest with the top of its range.
    sparsity = budget.high if budget is not None else None
    return EngineConfigs(compression_job(spec, split_names, sparsity=sparsity), budget)


def _check_train(t: TrainSpec) -> None:
    from equiprune.engine.models.registry import available_architectures

    known = available_architectures()
    if t.architecture not in known:
        raise InvalidArgument(f"unknown architecture {t.architecture!r}; registered: {', '.join(known)}",
                              field="spec.train.architecture")
    try:
        FinetuneConfig(method="naive", epochs=t.epochs, lr=t.lr, seed=t.seed)  # the training loop's own checks
    except EngineError as err:
        raise InvalidArgument(err.problem, field="spec.train." + err.field.rpartition(".")[2]) from None
    if len(json.dumps(t.architecture_kwargs)) > 4096:
        raise InvalidArgument("at most 4 KiB of JSON", field="spec.train.architecture_kwargs")


def _check_data(d: DataSpec) -> None:
    if not 0 <= d.tolerance < 1:
        raise InvalidArgument(f"must be in [0, 1) (a fraction of accuracy), got {d.tolerance}", field="spec.data.tolerance")
    if d.min_group_size < 1:
        raise InvalidArgument(f"must be at least 1, got {d.min_group_size}", field="spec.data.min_group_size")


def compression_job(spec: JobSpecModel, split_names: tuple[str, ...], *, sparsity: float | None = None) -> CompressionJob:
    """The engine job for a diagnose / prune / finetune / prune-and-finetune spec, or for one
    probe of a budget search (at `sparsity`)."""
    d = spec.data
    return CompressionJob(
        group_by=d.group_by,
        train_split=resolve_split(d.train_split, "train", split_names, "spec.data.train_split"),
        eval_split=resolve_split(d.eval_split, "test", split_names, "spec.data.eval_split"),
        constraint_split=resolve_split(d.constraint_split, "constraint", split_names, "spec.data.constraint_split"),
        constraint_fraction=d.constraint_fraction,
        pruning=_pruning(spec.pruning, sparsity) if spec.pruning is not None else None,
        finetune=_finetune(spec.finetune, d.tolerance) if spec.finetune is not None else None,
        diagnostics=_diagnostics(spec) if spec.diagnostics is not None or spec.kind == "diagnose" else None,
        tolerance=d.tolerance,
        min_group_size=d.min_group_size,
        # The device is the worker's business: checking CUDA here would test the machine that
        # validates the request, not the one that runs it (the job manager checks the cluster).
        device=None,
    )


def resolve_split(given: str | None, conventional: str, split_names: tuple[str, ...], field: str) -> str | None:
    """None → the conventional split when the dataset has it; "" → no split."""
    if given is None:
        return conventional if conventional in split_names else None
    if given == "":
        return None
    if given not in split_names:
        known = ", ".join(split_names) or "none: the dataset has no split column"
        raise InvalidArgument(f"the dataset has no split {given!r}; its splits: {known}", field=field)
    return given


def _pruning(p: PruningSpec, sparsity: float | None) -> PruningConfig:
    if p.kind != "n_m" and sparsity is None and p.sparsity == 0.0:
        raise InvalidArgument("required for unstructured and structured pruning: a fraction in (0, 1)",
                              field="spec.pruning.sparsity")
    return PruningConfig(
        kind=p.kind, sparsity=sparsity if sparsity is not None else (p.sparsity if p.kind != "n_m" else 0.5),
        scope=p.scope, schedule=p.schedule, gradual_steps=p.gradual_steps, exclude_names=p.exclude_names,
        exclude_types=p.exclude_types, keep_first_and_last=p.keep_first_and_last, n=p.n, m=p.m,
        recalibrate_batchnorm=p.recalibrate_batchnorm,
    )


def _finetune(f: FinetuneSpec, tolerance: float) -> FinetuneConfig:
    return FinetuneConfig(
        method=f.method, epochs=f.epochs, batch_size=f.batch_size, lr=f.lr, momentum=f.momentum,
        weight_decay=f.weight_decay, tolerance=tolerance, dual_lr=f.dual_lr, replay_size=f.replay_size,
        lr_schedule=f.lr_schedule, augment_hflip=f.augment_hflip, seed=f.seed,
        checkpoint_every_steps=f.checkpoint_every_steps, calibrate_outputs=f.calibrate_outputs,
        max_multiplier=f.max_multiplier, distill_alpha=f.distill_alpha,
    )


def _diagnostics(spec: JobSpecModel) -> DiagnosticsConfig:
    d = spec.diagnostics or DiagnosticsSpec()
    return DiagnosticsConfig(probes=d.probes, power_iterations=d.power_iterations, seed=d.seed,
                             samples_per_group=d.samples_per_group)


# Engine field paths → the proto paths a client wrote.
_ENGINE_PREFIXES = {
    "job.": "spec.data.",
    "pruning.": "spec.pruning.",
    "finetune.": "spec.finetune.",
    "diagnostics.": "spec.diagnostics.",
    "budget.": "spec.budget.",
}
_ENGINE_FIELDS = {
    "job.device": "spec.resources.gpus_per_worker",
    "job.diagnostics_samples_per_group": "spec.diagnostics.samples_per_group",
    "finetune.tolerance": "spec.data.tolerance",
    "budget.tolerance": "spec.data.tolerance",
    "job": "spec",
}


def proto_field(engine_field: str) -> str:
    if engine_field in _ENGINE_FIELDS:
        return _ENGINE_FIELDS[engine_field]
    for prefix, replacement in _ENGINE_PREFIXES.items():
        if engine_field.startswith(prefix):
            return replacement + engine_field[len(prefix):]
    return engine_field
