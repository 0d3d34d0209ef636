"""The monitor's configuration and the small values its API speaks in: the monitor-wide
status, the outcome results, and prediction ids that name their model."""

from __future__ import annotations

import os
from dataclasses import dataclass

OUTCOME_RESULTS = ("joined", "unknown", "duplicate", "late", "invalid")


@dataclass(frozen=True)
class MonitorConfig:
    windows_s: tuple[int, ...] = (300, 3600, 86400)
    buckets_per_window: int = 60
    min_count: int = 30  # outcomes a group needs in a window to be judged
    max_pending: int = 1_000_000  # predictions awaiting an outcome (oldest forgotten first)
    pending_ttl_s: float = 7 * 86400.0
    remembered_outcome_ids: int = 1_000_000  # joined ids kept to recognise duplicates
    max_groups_per_model: int = 256  # label cardinality and memory bound

    def __post_init__(self) -> None:
        windows = tuple(int(w) for w in self.windows_s)
        if not windows or any(w <= 0 for w in windows) or len(set(windows)) != len(windows):
            raise ValueError(f"windows_s must be distinct positive seconds, got {self.windows_s!r}")
        object.__setattr__(self, "windows_s", tuple(sorted(windows)))
        for name in ("buckets_per_window", "min_count", "max_pending", "remembered_outcome_ids",
                     "max_groups_per_model"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if not self.pending_ttl_s > 0:
            raise ValueError(f"pending_ttl_s must be positive, got {self.pending_ttl_s!r}")

    @property
    def longest_window_s(self) -> int:
        return self.windows_s[-1]


@dataclass(frozen=True)
class MonitorStatus:
    """Monitor-wide numbers (not per model)."""

    pending_predictions: int
    evicted_predictions: int  # forgotten for room or age before an outcome came
    heartbeat_time: float  # last maintain(), or creation/restore (clock seconds)
    last_persist_time: float | None  # when the last saved snapshot was taken
    unattributed_outcomes: dict[str, int]  # results whose prediction id names no known model
    repaired_values: dict[str, int]  # per model: non-finite window values reset (a bug let them in)


def make_prediction_id(model: str) -> str:
    """A fresh prediction id that names its model ("<model>.<24 hex>"), so an outcome for an id
    the monitor has forgotten can still be counted as that model's "unknown"."""
    return f"{model}.{os.urandom(12).hex()}"


def model_of_prediction_id(prediction_id: str) -> str:
    return prediction_id.partition(".")[0]
