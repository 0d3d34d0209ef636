"""Predict traffic both the serving benchmark and the tenant load share: the digits test split
as Predict instances (what `equiprune traffic` writes), cycled into requests, and the
nearest-rank percentile their latencies are reported with."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from equiprune.v1 import serving_pb2


def traffic_rows() -> list[dict]:
    """The digits sample's test split as Predict instances with their labels and cohort."""
    from equiprune.client.traffic import write_traffic

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "traffic.jsonl"
        write_traffic("sample:digits", path, group_by=["cohort"])
        return [json.loads(line) for line in path.read_text().splitlines()]


def instances(rows: list[dict], count: int, offset: int = 0) -> list[serving_pb2.Instance]:
    """`count` instances cycling through `rows`, starting at `offset`."""
    picked = (rows[(offset + i) % len(rows)] for i in range(count))
    return [serving_pb2.Instance(values=r["values"], groups=r["groups"]) for r in picked]


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
