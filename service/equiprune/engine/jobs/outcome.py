"""What a job reads, what it tells while it runs, and what it returns — as types.

`JobEvent.to_dict()` and `JobOutcome.to_dict()` are shaped like the proto's `Progress` and
`JobResult` (field names included), which is what lets the service store and serve them
without re-keying: docs/metrics.md is the schema of both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Union

from ..budget import BudgetShortfall
from ..jsonable import json_safe
from ..models.footprint import ModelLimits
from ..report import GroupReport

Source = Union[str, Path, BinaryIO]

# The stages a job reports (the proto's ReportStage names), in the order JobResult.reports
# has always listed them: the recalibrated pruned model before the one without.
STAGES = ("dense", "pruned", "pruned_without_recalibration", "finetuned")


def ends_epoch(step, total_steps, epochs) -> bool:
    """Whether a progress event is the last step of an epoch (or not a step at all): such
    events are never dropped by a throttle, so epoch boundaries always reach a watcher."""
    if not isinstance(total_steps, int) or not total_steps or not isinstance(step, int):
        return True
    per_epoch = total_steps // max(epochs if isinstance(epochs, int) else 1, 1)
    return bool(per_epoch) and step % per_epoch == 0


@dataclass
class JobInputs:
    """What one job reads and where it writes. `dataset` and `model` are paths or open binary
    files (a sandbox hands the job file descriptors); `work_dir` receives the output files,
    named relative to it in the outcome. `checkpoint_path` is where fine-tuning checkpoints
    (data-parallel workers write their outputs to a private folder but share a checkpoint)."""

    dataset: Source
    model: Source | None
    work_dir: Path
    limits: ModelLimits | None = None
    max_dataset_bytes: int | None = None  # None: the machine's default
    checkpoint_path: Path | None = None
    device: str | None = None  # where this process runs the job (e.g. "cuda:1"); None: the spec's resources decide

    @property
    def checkpoint(self) -> Path:
        return self.checkpoint_path if self.checkpoint_path is not None else self.work_dir / "checkpoint.pt"

    def rewound(self, source: Source) -> Source:
        """An open file is read from its start each time (a budget search reads the model often)."""
        if hasattr(source, "seek"):
            source.seek(0)
        return source


@dataclass(frozen=True)
class StageReport:
    """One stage's report on one split ("" when the job reads the whole dataset)."""

    stage: str
    split: str
    report: GroupReport

    def to_dict(self) -> dict:
        return {"stage": self.stage, "split": self.split, "report": self.report.to_dict()}


@dataclass(frozen=True)
class JobEvent:
    """Progress: a phase, and what is known in it (a step count, a finished stage's report)."""

    phase: str
    message: str = ""
    step: int | None = None
    total_steps: int | None = None
    epoch: int | None = None
    epochs: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    group_multipliers: dict[str, float] = field(default_factory=dict)
    report: StageReport | None = None

    @property
    def ends_epoch(self) -> bool:
        return ends_epoch(self.step, self.total_steps, self.epochs)

    def to_dict(self) -> dict:
        value = {"phase": self.phase}
        for name in ("message", "step", "total_steps", "epoch", "epochs", "metrics", "group_multipliers"):
            if getattr(self, name) not in (None, "", {}):
                value[name] = getattr(self, name)
        if self.report is not None:
            value["report"] = self.report.to_dict()
        return json_safe(value)


OnEvent = Callable[[JobEvent], None]


@dataclass(frozen=True)
class OutputFile:
    """A file the job wrote: its role in the result, path relative to the work folder, the
    artifact kind it becomes, and a display name."""

    role: str
    path: str
    kind: str
    name: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class BudgetPoint:
    sparsity: float
    tolerance_met: bool
    report: GroupReport

    def to_dict(self) -> dict:
        return {"sparsity": self.sparsity, "tolerance_met": self.tolerance_met, "report": self.report.to_dict()}


@dataclass(frozen=True)
class JobOutcome:
    """Everything a finished job produced: its files, its reports, and the summary numbers."""

    files: tuple[OutputFile, ...]
    reports: tuple[StageReport, ...] = ()
    notes: tuple[str, ...] = ()
    measured_sparsity: float | None = None
    parameters_before: int | None = None
    parameters_after: int | None = None
    diagnostics: dict | None = None  # shaped like the proto DiagnosticsSummary
    sweep: tuple[BudgetPoint, ...] = ()
    best_sparsity: float | None = None
    budget_shortfall: BudgetShortfall | None = None  # a budget search in which no probe held

    def report(self, stage: str, split: str | None = None) -> GroupReport | None:
        for entry in self.reports:
            if entry.stage == stage and (split is None or entry.split == split):
                return entry.report
        return None

    def to_dict(self) -> dict:
        """Shaped like the proto JobResult, with `files` (what to store) instead of outputs."""
        value = {"files": [f.to_dict() for f in self.files], "reports": [r.to_dict() for r in self.reports],
                 "notes": list(self.notes)}
        for name in ("measured_sparsity", "parameters_before", "parameters_after", "diagnostics", "best_sparsity"):
            if getattr(self, name) is not None:
                value[name] = getattr(self, name)
        if self.sweep:
            value["sweep"] = [p.to_dict() for p in self.sweep]
        if self.budget_shortfall is not None:
            value["budget_shortfall"] = self.budget_shortfall.to_dict()
        return json_safe(value)
