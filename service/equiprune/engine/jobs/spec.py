"""A job, declared once: the typed form of every job the engine runs.

`JobSpec` is what the engine CLI builds from its flags, what the service builds from the proto
`JobSpec` (one generic conversion: `equiprune.service.jobs.wire`) and stores as `to_dict()`,
and what the job API runs. Its sections *are* the engine's configs (`PruningConfig`,
`FinetuneConfig`, …), so every default and every range has one home: the config's own
dataclass. Section and field names follow the proto's (`pruning.sparsity`,
`data.tolerance`), and every refusal names its field that way; the service only prefixes
`spec.`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field, fields

from ..budget import BudgetConfig
from ..diagnostics import DiagnosticsConfig
from ..errors import InvalidConfigError
from ..finetune.config import FinetuneConfig
from ..prune import PruningConfig

KINDS = ("train", "evaluate", "diagnose", "prune", "finetune", "prune_and_finetune", "budget_search")
COMPRESSION_KINDS = ("diagnose", "prune", "finetune", "prune_and_finetune")
MAX_ARCHITECTURE_KWARGS_BYTES = 4096


@dataclass(frozen=True)
class DataConfig:
    """Which data a job reads and how its groups are judged.

    train_split, eval_split, constraint_split: None takes the conventional split ("train",
        "test", "constraint") when the dataset has it; "" means none (every row trains; no
        evaluation split; the constraint split carved from training data).
    constraint_fraction: the share of the training split set aside when a method needs a
        constraint split and the dataset has none.
    tolerance: ε, the allowed excess accuracy gap ψ_g, as a fraction of accuracy.
    """

    group_by: tuple[str, ...] = ()
    train_split: str | None = None
    eval_split: str | None = None
    constraint_split: str | None = None
    constraint_fraction: float = 0.2
    min_group_size: int = 30
    tolerance: float = 0.01

    def __post_init__(self) -> None:
        if not (isinstance(self.tolerance, (int, float)) and 0 <= self.tolerance < 1):
            raise InvalidConfigError("data.tolerance", f"must be in [0, 1) (a fraction of accuracy), got {self.tolerance}")
        if not 0 < self.constraint_fraction < 1:
            raise InvalidConfigError("data.constraint_fraction", f"must be in (0, 1), got {self.constraint_fraction}")
        if not 1 <= self.min_group_size <= 10**9:
            raise InvalidConfigError("data.min_group_size", f"must be 1 to 10**9, got {self.min_group_size}")
        if len(set(self.group_by)) != len(self.group_by) or not all(self.group_by):
            raise InvalidConfigError("data.group_by", "name each group attribute once, none empty")


@dataclass(frozen=True)
class TrainConfig:
    """Training a dense model of a registered architecture from scratch."""

    architecture: str = ""
    architecture_kwargs: dict = field(default_factory=dict)
    epochs: int = 15
    lr: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        from ..models.registry import available_architectures

        known = available_architectures()
        if self.architecture not in known:
            problem = "required" if not self.architecture else f"unknown architecture {self.architecture!r}"
            raise InvalidConfigError("train.architecture", f"{problem}; registered: {', '.join(known)}")
        if not isinstance(self.architecture_kwargs, dict):
            raise InvalidConfigError("train.architecture_kwargs", "must be a JSON object")
        try:
            size = len(json.dumps(self.architecture_kwargs, allow_nan=False))
        except (TypeError, ValueError, RecursionError):
            raise InvalidConfigError("train.architecture_kwargs", "must be plain JSON (finite numbers)") from None
        if size > MAX_ARCHITECTURE_KWARGS_BYTES:
            raise InvalidConfigError("train.architecture_kwargs", f"at most {MAX_ARCHITECTURE_KWARGS_BYTES} bytes of JSON")
        try:  # the training loop's own checks, named as this section's fields
            self.loop()
        except InvalidConfigError as err:
            raise InvalidConfigError("train." + err.field.rpartition(".")[2], err.problem) from None

    def loop(self) -> FinetuneConfig:
        """Training is the fine-tuning loop with plain cross-entropy and no masks."""
        return FinetuneConfig(method="naive", epochs=self.epochs, lr=self.lr, seed=self.seed)


# The pipeline's own fields (`CompressionJob`, assembled from a spec) as the spec names them.
_PIPELINE_FIELDS = {"job.device": "resources.gpus_per_worker", "job": "kind"}


def spec_field(engine_field: str) -> str:
    """The spec field an engine refusal is about: its sections already use the spec's names;
    the pipeline's `job.*` fields are the data section's, its device the resources'."""
    if engine_field in _PIPELINE_FIELDS:
        return _PIPELINE_FIELDS[engine_field]
    return "data." + engine_field[4:] if engine_field.startswith("job.") else engine_field


def json_object(text: str, field: str) -> dict:
    """A JSON object given as text (the CLI's --arch-kwargs, the wire's architecture_kwargs),
    its size checked before it is parsed."""
    if len(text.encode()) > MAX_ARCHITECTURE_KWARGS_BYTES:
        raise InvalidConfigError(field, f"at most {MAX_ARCHITECTURE_KWARGS_BYTES} bytes of JSON")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise InvalidConfigError(field, f"not a JSON object ({err})") from None
    if not isinstance(value, dict):
        raise InvalidConfigError(field, 'must be a JSON object, e.g. {"num_classes": 10}')
    return value


@dataclass(frozen=True)
class ResourcesConfig:
    """Compute: `workers` > 1 data-parallelises fine-tuning (Ray Train in the service)."""

    workers: int = 1
    cpus_per_worker: int = 1
    gpus_per_worker: int = 0

    def __post_init__(self) -> None:
        for name, low, high in (("workers", 1, 256), ("cpus_per_worker", 1, 256), ("gpus_per_worker", 0, 16)):
            if not low <= getattr(self, name) <= high:
                raise InvalidConfigError(f"resources.{name}", f"must be {low} to {high}, got {getattr(self, name)}")

    @property
    def device(self) -> str:
        """Where a job's work runs: the GPU it reserved, else the CPU."""
        return "cuda" if self.gpus_per_worker > 0 else "cpu"


# What each kind needs (required) and may take (optional). Anything else is refused: a spec
# that carries settings the job ignores is almost always a mistake.
SECTIONS = {
    "train": ({"train"}, set()),
    "evaluate": ({"model"}, set()),
    "diagnose": ({"model"}, {"diagnostics", "pruning"}),
    "prune": ({"model", "pruning"}, {"diagnostics"}),
    "finetune": ({"model", "finetune"}, set()),
    "prune_and_finetune": ({"model", "pruning", "finetune"}, {"diagnostics"}),
    "budget_search": ({"model", "pruning"}, {"finetune", "budget"}),
}
_OPTIONAL_SECTIONS = ("model", "pruning", "finetune", "diagnostics", "budget", "train")


@dataclass(frozen=True)
class JobSpec:
    """One job. `model` and `dataset` name files (the CLI: paths; the service: artifact ids).

    Normalised on construction: the fine-tuning and budget tolerances are the data's, a
    budget search always has its budget section, and a diagnose job its diagnostics section,
    so the stored spec says exactly what ran.
    """

    kind: str
    dataset: str
    model: str | None = None
    data: DataConfig = DataConfig()
    pruning: PruningConfig | None = None
    finetune: FinetuneConfig | None = None
    diagnostics: DiagnosticsConfig | None = None
    budget: BudgetConfig | None = None
    train: TrainConfig | None = None
    resources: ResourcesConfig = ResourcesConfig()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidConfigError("kind", f"unknown kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if not self.dataset:
            raise InvalidConfigError("dataset", "required")
        required, optional = SECTIONS[self.kind]
        for name in _OPTIONAL_SECTIONS:
            present = getattr(self, name) is not None
            if name in required and not present:
                raise InvalidConfigError(name, f"a {self.kind} job needs it")
            if present and name not in required | optional:
                raise InvalidConfigError(name, f"a {self.kind} job does not use it; leave it unset")
        if self.kind != "train" and not self.data.group_by:
            raise InvalidConfigError("data.group_by", "name at least one group attribute")
        if self.resources.workers > 1 and self.kind not in ("finetune", "prune_and_finetune"):
            raise InvalidConfigError("resources.workers", "several workers data-parallelise fine-tuning; only finetune "
                                     "and prune_and_finetune jobs take more than one")
        if self.kind == "budget_search" and self.pruning.kind == "n_m":
            raise InvalidConfigError("pruning.kind", "N:M pruning has a fixed sparsity (n/m); there is nothing to search")
        tolerance = self.data.tolerance
        set_ = object.__setattr__  # frozen: normalising is part of construction
        if self.finetune is not None and self.finetune.tolerance != tolerance:
            set_(self, "finetune", dataclasses.replace(self.finetune, tolerance=tolerance))
        if self.kind == "budget_search":
            set_(self, "budget", dataclasses.replace(self.budget or BudgetConfig(), tolerance=tolerance))
        if self.kind == "diagnose" and self.diagnostics is None:
            set_(self, "diagnostics", DiagnosticsConfig())

    @property
    def device(self) -> str:
        return self.resources.device

    def to_dict(self) -> dict:
        """Plain JSON values (tuples as lists): the form the service stores."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, value: dict) -> JobSpec:
        """The inverse of `to_dict`; unknown keys are refused (naming them), missing ones take
        the defaults, and every config validates itself again."""
        return _build(cls, value, "")


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _build(cls, value, prefix: str):
    if not isinstance(value, dict):
        raise InvalidConfigError(prefix.rstrip(".") or "spec", "must be an object")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(value) - known)
    if unknown:
        raise InvalidConfigError(prefix + unknown[0], "unknown field")
    kwargs = {}
    for name in known & set(value):
        kwargs[name] = _typed(hints[name], value[name], prefix + name)
    return cls(**kwargs)


def _typed(hint, value, path: str):
    """`value` as `hint` wants it: nested configs built, lists as tuples, ints kept ints."""
    if value is None:
        return None
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        hint = args[0]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path + ".")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise InvalidConfigError(path, "must be a list")
        return tuple(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise InvalidConfigError(path, f"must be a finite number, got {value!r}")
    return value
