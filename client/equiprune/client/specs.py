"""Job spec builders, so callers need not know the proto.

    spec = prune_and_finetune_spec(model="art-1f2e", dataset="sample:digits", group_by=["cohort"],
                                   sparsity=0.9, epochs=3, tolerance=0.01)
    job = client.create_job(spec)

Models and datasets are given as an artifact id (`art-…`) or a URI the service imports
(`sample:digits`, `/data/x.npz`, `file:///…`, `s3://…`; a URI other than `sample:` needs its
sha256). Enum options are plain strings (`"ceag"`, `"n_m"`, `"global"`); an unknown one raises
SpecError (a ValueError) naming the argument. Options left as None keep the server's
documented default. The result is a protobuf message: fields no builder argument covers can be
set on it directly before submitting.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, Mapping

from equiprune.v1 import artifacts_pb2, jobs_pb2, reports_pb2

from .errors import SpecError


# ---------------------------------------------------------------- enum names

@dataclass(frozen=True)
class EnumNames:
    """Short lower-case names of a proto enum's values: `ceag` for FINETUNE_METHOD_CEAG."""

    prefix: str
    names: Mapping[str, int]

    @classmethod
    def of(cls, enum, prefix: str, aliases: Mapping[str, str] | None = None) -> "EnumNames":
        names = {name[len(prefix):].lower(): number for name, number in enum.items()
                 if not name.endswith("_UNSPECIFIED")}
        for alias, target in (aliases or {}).items():
            names[alias] = names[target]
        return cls(prefix, names)

    def choices(self) -> list[str]:
        """The canonical names (aliases left out), in proto order."""
        return [self.name(number) for number in dict.fromkeys(self.names.values())]

    def value(self, value: str | int, field: str) -> int:
        """The enum number of a short name (`n_m`, `n-m`, `N_M`), the full proto name, or a number."""
        if isinstance(value, int) and not isinstance(value, bool):
            if value in self.names.values():
                return value
        else:
            key = str(value).strip().lower().replace("-", "_")
            prefix = self.prefix.lower()
            key = key[len(prefix):] if key.startswith(prefix) else key
            if key in self.names:
                return self.names[key]
        raise SpecError(field, f"unknown value {value!r}; expected one of: {', '.join(self.choices())}")

    def name(self, number: int) -> str:
        """The short name of a number (the first name wins over aliases), or the number itself."""
        for name, value in self.names.items():
            if value == number:
                return name
        return str(number)


ARTIFACT_KINDS = EnumNames.of(artifacts_pb2.ArtifactKind, "ARTIFACT_KIND_")
JOB_KINDS = EnumNames.of(jobs_pb2.JobKind, "JOB_KIND_", {"budget": "budget_search"})
JOB_STATES = EnumNames.of(jobs_pb2.JobState, "JOB_STATE_", {"canceled": "cancelled"})
PRUNING_KINDS = EnumNames.of(jobs_pb2.PruningKind, "PRUNING_KIND_", {"nm": "n_m", "n:m": "n_m"})
PRUNING_SCOPES = EnumNames.of(jobs_pb2.PruningScope, "PRUNING_SCOPE_")
PRUNING_SCHEDULES = EnumNames.of(jobs_pb2.PruningSchedule, "PRUNING_SCHEDULE_", {"oneshot": "one_shot"})
FINETUNE_METHODS = EnumNames.of(jobs_pb2.FinetuneMethod, "FINETUNE_METHOD_")
LR_SCHEDULES = EnumNames.of(jobs_pb2.LrSchedule, "LR_SCHEDULE_")
REPORT_STAGES = EnumNames.of(reports_pb2.ReportStage, "REPORT_STAGE_")


# ---------------------------------------------------------------- building blocks

def artifact_ref(value: str, *, field: str, sha256: str = "") -> artifacts_pb2.ArtifactRef:
    """An artifact id (`art-…`) or a URI to import (with its sha256 unless `sample:`)."""
    if not isinstance(value, str) or not value.strip():
        raise SpecError(field, "required: an artifact id (art-…) or a URI")
    value = value.strip()
    if value.startswith("art-"):
        if sha256:
            raise SpecError(f"{field}_sha256", "only URIs take a sha256; an artifact id is already verified")
        return artifacts_pb2.ArtifactRef(artifact_id=value)
    return artifacts_pb2.ArtifactRef(uri=artifacts_pb2.UriSource(uri=value, sha256=sha256.lower()))


def data_options(*, group_by: Iterable[str] | str = (), train_split: str | None = None,
                 eval_split: str | None = None, constraint_split: str | None = None,
                 constraint_fraction: float | None = None, min_group_size: int | None = None,
                 tolerance: float | None = None) -> jobs_pb2.DataOptions:
    """Splits, group attributes and the tolerance ε. None keeps the server default."""
    group_by = [group_by] if isinstance(group_by, str) else list(group_by)
    data = jobs_pb2.DataOptions(group_by=group_by)
    _set_optional(data, train_split=train_split, eval_split=eval_split,
                  constraint_split=constraint_split, tolerance=tolerance)
    if constraint_fraction is not None:
        data.constraint_fraction = constraint_fraction
    if min_group_size is not None:
        data.min_group_size = min_group_size
    return data


def pruning_options(*, sparsity: float | None = None, kind: str = "unstructured", scope: str | None = None,
                    schedule: str | None = None, gradual_steps: int | None = None, n: int | None = None,
                    m: int | None = None, exclude_names: Iterable[str] = (), exclude_types: Iterable[str] = (),
                    keep_first_and_last: bool | None = None,
                    recalibrate_batchnorm: bool | None = None) -> jobs_pb2.PruningOptions:
    """How to prune. `kind`: unstructured, n_m or structured; `scope`: layerwise or global;
    `schedule`: one_shot or gradual. Sparsity is required except for N:M."""
    pruning = jobs_pb2.PruningOptions(kind=PRUNING_KINDS.value(kind, "kind"),
                                      exclude_names=list(exclude_names), exclude_types=list(exclude_types))
    if sparsity is None:
        if pruning.kind != jobs_pb2.PRUNING_KIND_N_M:
            raise SpecError("sparsity", f"required for {PRUNING_KINDS.name(pruning.kind)} pruning")
    elif not 0.0 < sparsity < 1.0:
        raise SpecError("sparsity", f"must be in (0, 1), got {sparsity}")
    else:
        pruning.sparsity = sparsity
    if scope is not None:
        pruning.scope = PRUNING_SCOPES.value(scope, "scope")
    if schedule is not None:
        pruning.schedule = PRUNING_SCHEDULES.value(schedule, "schedule")
    _set_nonzero(pruning, gradual_steps=gradual_steps, n=n, m=m)
    _set_optional(pruning, keep_first_and_last=keep_first_and_last, recalibrate_batchnorm=recalibrate_batchnorm)
    return pruning


def finetune_options(*, method: str | None = None, epochs: int | None = None, batch_size: int | None = None,
                     lr: float | None = None, momentum: float | None = None, weight_decay: float | None = None,
                     dual_lr: float | None = None, replay_size: int | None = None, lr_schedule: str | None = None,
                     augment_hflip: bool = False, seed: int | None = None,
                     checkpoint_every_steps: int | None = None, calibrate_outputs: bool | None = None,
                     max_multiplier: float | None = None,
                     distill_alpha: float | None = None) -> jobs_pb2.FinetuneOptions:
    """How to fine-tune. `method`: naive, equalized_loss, ceag, heldout_ceag or fair_distill;
    None leaves it to the server's fair default (fair_distill). `lr_schedule`: cosine or constant."""
    finetune = jobs_pb2.FinetuneOptions(augment_hflip=augment_hflip)
    if method is not None:
        finetune.method = FINETUNE_METHODS.value(method, "method")
    if lr_schedule is not None:
        finetune.lr_schedule = LR_SCHEDULES.value(lr_schedule, "lr_schedule")
    _set_nonzero(finetune, epochs=epochs, batch_size=batch_size, replay_size=replay_size, seed=seed,
                 checkpoint_every_steps=checkpoint_every_steps)
    _set_optional(finetune, lr=lr, momentum=momentum, weight_decay=weight_decay, dual_lr=dual_lr,
                  calibrate_outputs=calibrate_outputs, max_multiplier=max_multiplier, distill_alpha=distill_alpha)
    return finetune


def diagnostics_options(*, probes: int | None = None, power_iterations: int | None = None,
                        samples_per_group: int | None = None, seed: int | None = None) -> jobs_pb2.DiagnosticsOptions:
    """Diagnostics settings; None keeps the defaults of docs/diagnostics.md."""
    diagnostics = jobs_pb2.DiagnosticsOptions()
    _set_nonzero(diagnostics, probes=probes, power_iterations=power_iterations,
                 samples_per_group=samples_per_group, seed=seed)
    return diagnostics


def budget_options(*, low: float | None = None, high: float | None = None, resolution: float | None = None,
                   max_probes: int | None = None, require_confidence: bool = False) -> jobs_pb2.BudgetOptions:
    """The budget search range and stopping rule."""
    budget = jobs_pb2.BudgetOptions(require_confidence=require_confidence)
    _set_optional(budget, low=low, high=high, resolution=resolution)
    _set_nonzero(budget, max_probes=max_probes)
    return budget


def train_options(*, architecture: str, architecture_kwargs: Mapping | str | None = None,
                  epochs: int | None = None, lr: float | None = None, seed: int | None = None) -> jobs_pb2.TrainOptions:
    """A registered architecture to train; its kwargs as a mapping or a JSON object string."""
    if not architecture:
        raise SpecError("architecture", "required: a registered architecture name such as small_cnn")
    train = jobs_pb2.TrainOptions(architecture=architecture)
    kwargs = _json_object(architecture_kwargs, "architecture_kwargs")
    if kwargs:
        # The field is JSON text (jobs.proto says why), checked here so the mistake is local.
        train.architecture_kwargs = _json_text(kwargs, "architecture_kwargs")
    _set_nonzero(train, epochs=epochs, seed=seed)
    _set_optional(train, lr=lr)
    return train


def resources(*, workers: int | None = None, cpus_per_worker: int | None = None,
              gpus_per_worker: int | None = None) -> jobs_pb2.Resources:
    """Compute a job asks for; None means one CPU process."""
    res = jobs_pb2.Resources()
    _set_nonzero(res, workers=workers, cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker)
    return res


# ---------------------------------------------------------------- job specs

def train_spec(*, dataset: str, architecture: str, architecture_kwargs: Mapping | str | None = None,
               epochs: int | None = None, lr: float | None = None, seed: int | None = None,
               train_split: str | None = None, eval_split: str | None = None, group_by: Iterable[str] | str = (),
               dataset_sha256: str = "", workers: int | None = None, gpus: int | None = None) -> jobs_pb2.JobSpec:
    """Train a dense model of a registered architecture from scratch."""
    spec = _base(jobs_pb2.JOB_KIND_TRAIN, None, dataset, "", dataset_sha256, workers, gpus,
                 data_options(group_by=group_by, train_split=train_split, eval_split=eval_split))
    spec.train.CopyFrom(train_options(architecture=architecture, architecture_kwargs=architecture_kwargs,
                                      epochs=epochs, lr=lr, seed=seed))
    return spec


def evaluate_spec(*, model: str, dataset: str, group_by: Iterable[str] | str, tolerance: float | None = None,
                  min_group_size: int | None = None, eval_split: str | None = None, train_split: str | None = None,
                  model_sha256: str = "", dataset_sha256: str = "") -> jobs_pb2.JobSpec:
    """Per-group report of a model on a dataset."""
    return _base(jobs_pb2.JOB_KIND_EVALUATE, model, dataset, model_sha256, dataset_sha256, None, None,
                 _grouped_data(group_by, tolerance, min_group_size, train_split, eval_split))


def diagnose_spec(*, model: str, dataset: str, group_by: Iterable[str] | str, probes: int | None = None,
                  samples_per_group: int | None = None, sparsity: float | None = None, kind: str = "unstructured",
                  scope: str | None = None, min_group_size: int | None = None, tolerance: float | None = None,
                  model_sha256: str = "", dataset_sha256: str = "", gpus: int | None = None) -> jobs_pb2.JobSpec:
    """Per-group gradient and curvature diagnostics; with `sparsity`, also the predicted and
    measured excess loss of that pruning."""
    spec = _base(jobs_pb2.JOB_KIND_DIAGNOSE, model, dataset, model_sha256, dataset_sha256, None, gpus,
                 _grouped_data(group_by, tolerance, min_group_size, None, None))
    spec.diagnostics.CopyFrom(diagnostics_options(probes=probes, samples_per_group=samples_per_group))
    if sparsity is not None:
        spec.pruning.CopyFrom(pruning_options(sparsity=sparsity, kind=kind, scope=scope))
    return spec


def prune_spec(*, model: str, dataset: str, group_by: Iterable[str] | str, sparsity: float | None = None,
               kind: str = "unstructured", scope: str | None = None, schedule: str | None = None,
               n: int | None = None, m: int | None = None, tolerance: float | None = None,
               min_group_size: int | None = None, eval_split: str | None = None, train_split: str | None = None,
               diagnose: bool = False, model_sha256: str = "", dataset_sha256: str = "",
               workers: int | None = None, gpus: int | None = None) -> jobs_pb2.JobSpec:
    """Prune a model and report the per-group damage."""
    spec = _base(jobs_pb2.JOB_KIND_PRUNE, model, dataset, model_sha256, dataset_sha256, workers, gpus,
                 _grouped_data(group_by, tolerance, min_group_size, train_split, eval_split))
    spec.pruning.CopyFrom(pruning_options(sparsity=sparsity, kind=kind, scope=scope, schedule=schedule, n=n, m=m))
    if diagnose:
        spec.diagnostics.CopyFrom(diagnostics_options())
    return spec


def finetune_spec(*, model: str, dataset: str, group_by: Iterable[str] | str, method: str | None = None,
                  epochs: int | None = None, lr: float | None = None, dual_lr: float | None = None,
                  tolerance: float | None = None, min_group_size: int | None = None, eval_split: str | None = None,
                  train_split: str | None = None, seed: int | None = None, model_sha256: str = "",
                  dataset_sha256: str = "", workers: int | None = None, gpus: int | None = None,
                  calibrate_outputs: bool | None = None) -> jobs_pb2.JobSpec:
    """Fine-tune an already pruned model (its zero weights stay zero)."""
    spec = _base(jobs_pb2.JOB_KIND_FINETUNE, model, dataset, model_sha256, dataset_sha256, workers, gpus,
                 _grouped_data(group_by, tolerance, min_group_size, train_split, eval_split))
    spec.finetune.CopyFrom(finetune_options(method=method, epochs=epochs, lr=lr, dual_lr=dual_lr, seed=seed,
                                            calibrate_outputs=calibrate_outputs))
    return spec


def prune_and_finetune_spec(*, model: str, dataset: str, group_by: Iterable[str] | str,
                            sparsity: float | None = None, kind: str = "unstructured", scope: str | None = None,
                            schedule: str | None = None, n: int | None = None, m: int | None = None,
                            method: str | None = None, epochs: int | None = None, lr: float | None = None,
                            dual_lr: float | None = None, tolerance: float | None = None,
                            min_group_size: int | None = None, eval_split: str | None = None,
                            train_split: str | None = None, seed: int | None = None, diagnose: bool = False,
                            model_sha256: str = "", dataset_sha256: str = "", workers: int | None = None,
                            gpus: int | None = None, calibrate_outputs: bool | None = None) -> jobs_pb2.JobSpec:
    """Prune, then fine-tune, in one job. `calibrate_outputs=False` turns fair_distill's
    held-out output calibration off."""
    spec = _base(jobs_pb2.JOB_KIND_PRUNE_AND_FINETUNE, model, dataset, model_sha256, dataset_sha256, workers, gpus,
                 _grouped_data(group_by, tolerance, min_group_size, train_split, eval_split))
    spec.pruning.CopyFrom(pruning_options(sparsity=sparsity, kind=kind, scope=scope, schedule=schedule, n=n, m=m))
    spec.finetune.CopyFrom(finetune_options(method=method, epochs=epochs, lr=lr, dual_lr=dual_lr, seed=seed,
                                            calibrate_outputs=calibrate_outputs))
    if diagnose:
        spec.diagnostics.CopyFrom(diagnostics_options())
    return spec


def budget_spec(*, model: str, dataset: str, group_by: Iterable[str] | str, tolerance: float | None = None,
                low: float | None = None, high: float | None = None, resolution: float | None = None,
                max_probes: int | None = None, require_confidence: bool = False, kind: str = "unstructured",
                scope: str | None = None, method: str | None = None, epochs: int | None = None,
                lr: float | None = None, dual_lr: float | None = None, min_group_size: int | None = None,
                eval_split: str | None = None, train_split: str | None = None, model_sha256: str = "",
                dataset_sha256: str = "", workers: int | None = None, gpus: int | None = None) -> jobs_pb2.JobSpec:
    """Highest sparsity within tolerance. With `method`, every probe is also fine-tuned."""
    if PRUNING_KINDS.value(kind, "kind") == jobs_pb2.PRUNING_KIND_N_M:
        raise SpecError("kind", "N:M pruning has a fixed sparsity (n/m); there is nothing to search")
    spec = _base(jobs_pb2.JOB_KIND_BUDGET_SEARCH, model, dataset, model_sha256, dataset_sha256, workers, gpus,
                 _grouped_data(group_by, tolerance, min_group_size, train_split, eval_split))
    # The search chooses every probe's sparsity; the kind and scope still apply to each probe.
    spec.pruning.kind = PRUNING_KINDS.value(kind, "kind")
    if scope is not None:
        spec.pruning.scope = PRUNING_SCOPES.value(scope, "scope")
    spec.budget.CopyFrom(budget_options(low=low, high=high, resolution=resolution, max_probes=max_probes,
                                        require_confidence=require_confidence))
    if method is not None:
        spec.finetune.CopyFrom(finetune_options(method=method, epochs=epochs, lr=lr, dual_lr=dual_lr))
    return spec


# ---------------------------------------------------------------- helpers

def _base(kind: int, model: str | None, dataset: str, model_sha256: str, dataset_sha256: str,
          workers: int | None, gpus: int | None, data: jobs_pb2.DataOptions) -> jobs_pb2.JobSpec:
    spec = jobs_pb2.JobSpec(kind=kind, dataset=artifact_ref(dataset, field="dataset", sha256=dataset_sha256), data=data)
    if model is not None:
        spec.model.CopyFrom(artifact_ref(model, field="model", sha256=model_sha256))
    if workers or gpus:
        spec.resources.CopyFrom(resources(workers=workers, gpus_per_worker=gpus))
    return spec


def _grouped_data(group_by, tolerance, min_group_size, train_split, eval_split) -> jobs_pb2.DataOptions:
    data = data_options(group_by=group_by, tolerance=tolerance, min_group_size=min_group_size,
                        train_split=train_split, eval_split=eval_split)
    if not data.group_by:
        raise SpecError("group_by", "required: at least one group attribute")
    if any(not name for name in data.group_by):
        raise SpecError("group_by", "attribute names must not be empty")
    return data


def _set_optional(message, **values) -> None:
    """Set proto3 `optional` fields that were given (None leaves them unset)."""
    for name, value in values.items():
        if value is not None:
            setattr(message, name, value)


def _set_nonzero(message, **values) -> None:
    """Set fields whose 0 means 'default' when given; a negative count is refused here."""
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(name, f"must be an integer, got {value!r}")
        if value < 0:
            raise SpecError(name, f"must be ≥ 0, got {value}")
        setattr(message, name, value)


def _json_object(value: Mapping | str | None, field: str) -> dict:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise SpecError(field, f"not valid JSON: {err}") from None
    if not isinstance(value, Mapping):
        raise SpecError(field, "must be a JSON object")
    return dict(value)


def _json_text(values: Mapping, field: str) -> str:
    """Compact JSON text of a mapping; NaN/Infinity and non-JSON values are refused here."""
    try:
        return json.dumps(dict(values), separators=(",", ":"), allow_nan=False)
    except (ValueError, TypeError) as err:
        raise SpecError(field, f"not representable as JSON: {err}") from None
