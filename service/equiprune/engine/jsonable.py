"""Values made strict-JSON: NaN and infinity become null, tuples and tensors become lists.

Reports travel as JSON to clients and dashboards; `json.dumps(..., allow_nan=False)` must
never fail on them.
"""

from __future__ import annotations

import math

import torch


def json_float(value: float | None) -> float | None:
    """JSON has no NaN or infinity; an unavailable number is null."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def json_safe(value):
    """Turn NaN/inf into None and tuples into lists so the report is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, torch.Tensor):
        return json_safe(value.tolist())
    return value
