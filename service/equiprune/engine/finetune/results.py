"""What the fine-tuning loop reports: a `ProgressEvent` after every step, `EpochStats` per epoch
and the `FinetuneResult` at the end.

Separate from the loop so that code which only reads progress or results (the pipeline, job
summaries) need not depend on the training code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..jsonable import json_safe
from .config import FinetuneConfig


@dataclass(frozen=True)
class ProgressEvent:
    """What the loop reports after every step; a callback may raise to cancel the run."""

    phase: str
    epoch: int
    step: int
    steps_per_epoch: int
    epochs: int
    loss: float
    multipliers: dict[str, float]


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    mean_loss: float
    seconds: float
    samples: int
    multipliers: dict[str, float]


@dataclass(frozen=True)
class FinetuneResult:
    config: FinetuneConfig
    epochs: tuple[EpochStats, ...]
    resumed_from_step: int
    mode_fixed: bool = False  # a torch.export program: trained in the mode it was exported in
    calibration: dict | None = None  # fair_distill's held-out output calibration (calibrate.py)

    def to_dict(self) -> dict:
        return json_safe({
            "config": self.config.to_dict(),
            "epochs": [vars(e) for e in self.epochs],
            "resumed_from_step": self.resumed_from_step,
            "mode_fixed": self.mode_fixed,
            "calibration": self.calibration,
        })


def _named(values: torch.Tensor, names: tuple[str, ...]) -> dict[str, float]:
    return {name: float(v) for name, v in zip(names, values.tolist())}
