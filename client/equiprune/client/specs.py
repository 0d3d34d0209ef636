"""Job spec builders, so callers need not know the proto.

    spec = prune_and_finetune_spec(model="art-1f2e", dataset="sample:digits", group_by=["cohort"],
                                   sparsity=0.9, epochs=3, tolerance=0.01)
    job = client.create_job(spec)

Models and datasets are given as an artifact id (`art-…`) or a URI the service imports
(`sample:digits`, `/data/x.npz`, `file:///…`, `s3://…`; a URI other than `sample:` needs its
sha256). Enum options are plain strings (`"ceag"`, `"n_m"`, `"global"`); an unknown one raises
SpecError (a ValueError) naming the argument. Options left as None keep the server's
documented default. The result is a protobuf message: fields no builder argument covers can be
set on it directly before submitting. `tolerance` is ε as a fraction (0.01 = 1 point), as on the
wire; only the CLI takes it in points (equiprune.text.tolerance).
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
_ENUMS = {enum.DESCRIPTOR.full_name: names for enum, names in (
    (jobs_pb2.PruningKind, PRUNING_KINDS), (jobs_pb2.PruningScope, PRUNING_SCOPES),
    (jobs_pb2.PruningSchedule, PRUNING_SCHEDULES), (jobs_pb2.FinetuneMethod, FINETUNE_METHODS),
    (jobs_pb2.LrSchedule, LR_SCHEDULES))}


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


def options(message_type, **values):
    """A proto options message from keyword arguments named as its fields, by the wire's one
    rule: None leaves a field unset, which means the server's default (the engine config's);
    enum values are short names (`"n_m"`); every range is the server's to check, so a value
    is refused in one place with one message."""
    message = message_type()
    for name, value in values.items():
        if value is None:
            continue
        fd = message.DESCRIPTOR.fields_by_name.get(name)
        if fd is None:
            known = ", ".join(message.DESCRIPTOR.fields_by_name)
            raise SpecError(name, f"{message.DESCRIPTOR.name} has no such field; its fields: {known}")
        try:
            if fd.is_repeated:
                getattr(message, name).extend([value] if isinstance(value, str) else list(value))
            elif fd.enum_type is not None:
                setattr(message, name, _ENUMS[fd.enum_type.full_name].value(value, name))
            else:
                setattr(message, name, value)
        except (TypeError, ValueError) as err:
            raise SpecError(name, f"not a valid {fd.name} ({err})") from None
    return message


def data_options(**values) -> jobs_pb2.DataOptions:
    """Splits, group attributes and the tolerance ε (DataOptions fields)."""
    return options(jobs_pb2.DataOptions, **values)


def pruning_options(**values) -> jobs_pb2.PruningOptions:
    """How to prune (PruningOptions fields). `kind`: unstructured, n_m or structured; `scope`:
    layerwise or global; `schedule`: one_shot or gradual."""
    return options(jobs_pb2.PruningOptions, **values)


def finetune_options(**values) -> jobs_pb2.FinetuneOptions:
    """How to fine-tune (FinetuneOptions fields). `method`: naive, equalized_loss, ceag,
    heldout_ceag or fair_distill; None leaves it to the server's fair default (fair_distill)."""
    return options(jobs_pb2.FinetuneOptions, **values)


def diagnostics_options(**values) -> jobs_pb2.DiagnosticsOptions:
    """Diagnostics settings (DiagnosticsOptions fields); unset keeps docs/diagnostics.md's defaults."""
    return options(jobs_pb2.DiagnosticsOptions, **values)


def budget_options(**values) -> jobs_pb2.BudgetOptions:
    """The budget search range and stopping rule (BudgetOptions fields)."""
    return options(jobs_pb2.BudgetOptions, **values)


def resources(**values) -> jobs_pb2.Resources:
    """Compute a job asks for (Resources fields); unset means one CPU process."""
    return options(jobs_pb2.Resources, **values)


def train_options(*, architecture: str, architecture_kwargs: Mapping | str | None = None,
                  **values) -> jobs_pb2.TrainOptions:
    """A registered architecture to train; its kwargs as a mapping or a JSON object string."""
    if not architecture:
        raise SpecError("architecture", "required: a registered architecture name such as small_cnn")
    kwargs = _json_object(architecture_kwargs, "architecture_kwargs")
    # The field is JSON text (jobs.proto says why), checked here so the mistake is local.
    return options(jobs_pb2.TrainOptions, architecture=architecture,
                   architecture_kwargs=_json_text(kwargs, "architecture_kwargs") if kwargs else None, **values)


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
                  samples_per_group: int | None = None, sparsity: float | None = None, kind: str | None = None,
                  scope: str | None = None, min_group_size: int | None = None, tolerance: float | None = None,
                  model_sha256: str = "", dataset_sha256: str = "", gpus: int | None = None) -> jobs_pb2.JobSpec:
    """Per-group gradient and curvature diagnostics; with `sparsity`, also the predicted and
    measured excess loss of that pruning."""
    spec = _base(jobs_pb2.JOB_KIND_DIAGNOSE, model, dataset, model_sha256, dataset_sha256, None, gpus,
                 _grouped_data(group_by, tolerance, min_group_size, None, None))
    spec.diagnostics.CopyFrom(options(jobs_pb2.DiagnosticsOptions, probes=probes, samples_per_group=samples_per_group))
    if sparsity is not None:
        spec.pruning.CopyFrom(pruning_options(sparsity=sparsity, kind=kind, scope=scope))
    return spec


def prune_spec(*, model: str, dataset: str, group_by: Iterable[str] | str, sparsity: float | None = None,
               kind: str | None = None, scope: str | None = None, schedule: str | None = None,
               n: int | None = None, m: int | None = None, tolerance: float | None = None,
               min_group_size: int | None = None, eval_split: str | None = None, train_split: str | None = None,
               diagnose: bool = False, model_sha256: str = "", dataset_sha256: str = "",
               workers: int | None = None, gpus: int | None = None,
               keep_first_and_last: bool | None = None) -> jobs_pb2.JobSpec:
    """Prune a model and report the per-group damage."""
    spec = _base(jobs_pb2.JOB_KIND_PRUNE, model, dataset, model_sha256, dataset_sha256, workers, gpus,
                 _grouped_data(group_by, tolerance, min_group_size, train_split, eval_split))
    spec.pruning.CopyFrom(pruning_options(sparsity=sparsity, kind=kind, scope=scope, schedule=schedule, n=n, m=m,
                                          keep_first_and_last=keep_first_and_last))
    if diagnose:
        spec.diagnostics.CopyFrom(jobs_pb2.DiagnosticsOptions())
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
                            sparsity: float | None = None, kind: str | None = None, scope: str | None = None,
                            schedule: str | None = None, n: int | None = None, m: int | None = None,
                            method: str | None = None, epochs: int | None = None, lr: float | None = None,
                            dual_lr: float | None = None, tolerance: float | None = None,
                            min_group_size: int | None = None, eval_split: str | None = None,
                            train_split: str | None = None, seed: int | None = None, diagnose: bool = False,
                            model_sha256: str = "", dataset_sha256: str = "", workers: int | None = None,
                            gpus: int | None = None, calibrate_outputs: bool | None = None,
                            keep_first_and_last: bool | None = None) -> jobs_pb2.JobSpec:
    """Prune, then fine-tune, in one job. `calibrate_outputs=False` turns fair_distill's
    held-out output calibration off; `keep_first_and_last=False` prunes the first and last
    layers too."""
    spec = _base(jobs_pb2.JOB_KIND_PRUNE_AND_FINETUNE, model, dataset, model_sha256, dataset_sha256, workers, gpus,
                 _grouped_data(group_by, tolerance, min_group_size, train_split, eval_split))
    spec.pruning.CopyFrom(pruning_options(sparsity=sparsity, kind=kind, scope=scope, schedule=schedule, n=n, m=m,
                                          keep_first_and_last=keep_first_and_last))
    spec.finetune.CopyFrom(finetune_options(method=method, epochs=epochs, lr=lr, dual_lr=dual_lr, seed=seed,
                                            calibrate_outputs=calibrate_outputs))
    if diagnose:
        spec.diagnostics.CopyFrom(jobs_pb2.DiagnosticsOptions())
    return spec


def budget_spec(*, model: str, dataset: str, group_by: Iterable[str] | str, tolerance: float | None = None,
                low: float | None = None, high: float | None = None, resolution: float | None = None,
                max_probes: int | None = None, require_confidence: bool = False, kind: str | None = None,
                scope: str | None = None, method: str | None = None, epochs: int | None = None,
                lr: float | None = None, dual_lr: float | None = None, min_group_size: int | None = None,
                eval_split: str | None = None, train_split: str | None = None, model_sha256: str = "",
                dataset_sha256: str = "", workers: int | None = None, gpus: int | None = None,
                keep_first_and_last: bool | None = None) -> jobs_pb2.JobSpec:
    """Highest sparsity within tolerance. With `method`, every probe is also fine-tuned."""
    spec = _base(jobs_pb2.JOB_KIND_BUDGET_SEARCH, model, dataset, model_sha256, dataset_sha256, workers, gpus,
                 _grouped_data(group_by, tolerance, min_group_size, train_split, eval_split))
    # The search chooses every probe's sparsity; the other pruning settings apply to each probe.
    spec.pruning.CopyFrom(pruning_options(kind=kind, scope=scope, keep_first_and_last=keep_first_and_last))
    spec.budget.CopyFrom(options(jobs_pb2.BudgetOptions, low=low, high=high, resolution=resolution,
                                 max_probes=max_probes, require_confidence=require_confidence))
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
        spec.resources.CopyFrom(options(jobs_pb2.Resources, workers=workers, gpus_per_worker=gpus))
    return spec


def _grouped_data(group_by, tolerance, min_group_size, train_split, eval_split) -> jobs_pb2.DataOptions:
    data = data_options(group_by=group_by, tolerance=tolerance, min_group_size=min_group_size,
                        train_split=train_split, eval_split=eval_split)
    if not data.group_by:
        raise SpecError("group_by", "required: at least one group attribute")
    if any(not name for name in data.group_by):
        raise SpecError("group_by", "attribute names must not be empty")
    return data


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
