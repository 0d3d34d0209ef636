"""Rank agreement between two per-group quantities (Spearman and Kendall tau-b).

Used to show, every time, how well a prediction (e.g. the Taylor-predicted excess loss) ranked
what was then measured. Written here with numpy (a few lines each, checked against scipy in
the tests) so scipy stays out of the server install.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from equiprune.engine.errors import InvalidConfigError
from equiprune.engine.jsonable import json_float


@dataclass(frozen=True)
class RankAgreement:
    """How well one per-group quantity ranked another.

    spearman: Pearson correlation of average ranks (ties share the mean of their positions).
    kendall: Kendall's tau-b (corrected for ties). Both None, with `reason`, when fewer than
    three groups have both values or either side is constant.
    groups: the groups compared; excluded: groups missing, None or non-finite on either side.
    """

    spearman: float | None
    kendall: float | None
    n_groups: int
    groups: tuple[str, ...]
    excluded: tuple[str, ...]
    reason: str | None

    def to_dict(self) -> dict:
        return {
            "spearman": json_float(self.spearman),
            "kendall": json_float(self.kendall),
            "n_groups": self.n_groups,
            "groups": list(self.groups),
            "excluded": list(self.excluded),
            "reason": self.reason,
        }


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n; tied values share the mean of the positions they occupy (like rankdata)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and values[order[end + 1]] == values[order[start]]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = _average_ranks(x), _average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / math.sqrt((rx * rx).sum() * (ry * ry).sum()))


def _kendall_tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """(concordant − discordant) / √((pairs − ties in x)(pairs − ties in y))."""
    dx = np.sign(x[:, None] - x[None, :])
    dy = np.sign(y[:, None] - y[None, :])
    upper = np.triu_indices(len(x), k=1)
    dx, dy = dx[upper], dy[upper]
    return float((dx * dy).sum() / math.sqrt(np.count_nonzero(dx) * np.count_nonzero(dy)))


def _finite_or_none(key: str, side: str, value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidConfigError(f"rank_agreement.{side}.{key}", f"expected a number or null, got {value!r}") from None
    return number if math.isfinite(number) else None


def rank_agreement(predicted: Mapping[str, Any], measured: Mapping[str, Any]) -> RankAgreement:
    """Spearman and Kendall tau-b between a per-group prediction and a per-group measurement.

    Groups are matched by name; a group missing from either side, or with a None or
    non-finite value, is excluded and listed. Positive values mean the prediction ordered the
    groups like the measurement.
    """
    names = list(predicted) + [k for k in measured if k not in predicted]
    kept, excluded, xs, ys = [], [], [], []
    for name in names:
        x = _finite_or_none(name, "predicted", predicted.get(name))
        y = _finite_or_none(name, "measured", measured.get(name))
        if x is None or y is None:
            excluded.append(name)
            continue
        kept.append(name)
        xs.append(x)
        ys.append(y)
    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    reason = None
    if len(kept) < 3:
        reason = f"needs at least 3 groups with both values, got {len(kept)}"
    elif np.all(x == x[0]) or np.all(y == y[0]):
        reason = "a constant input has no ranking"
    if reason is not None:
        return RankAgreement(None, None, len(kept), tuple(kept), tuple(excluded), reason)
    return RankAgreement(_spearman(x, y), _kendall_tau_b(x, y), len(kept), tuple(kept), tuple(excluded), None)


def prediction_note(prediction: dict | None) -> str:
    """Which damage the second-order prediction models and how well it ranked, in words: the
    prediction removes w_P with the dense BatchNorm statistics, while the model the user gets
    (and fine-tunes) has them re-estimated, and the two rankings can disagree (on UTKFace the
    first held at Spearman +0.81 pooled, the second at −0.5 to −0.7, docs/diagnostics.md)."""
    if not prediction:
        return ""

    def rho(part):
        value = ((prediction.get(part) or {}).get("rank_agreement") or {}).get("spearman")
        return "n/a" if value is None else f"{value:+.2f}"

    note = ("predicted: R(a) of the pruned model with the dense BatchNorm statistics (no recalibration); "
            f"its ranking of the groups held at Spearman {rho('before_recalibration')}")
    if prediction.get("after_recalibration"):
        note += (f"; against the recalibrated model's measured R(a), the damage fine-tuning starts from, "
                 f"Spearman {rho('after_recalibration')} — read the measured columns for that damage")
    return note
