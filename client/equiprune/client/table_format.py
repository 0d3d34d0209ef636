"""How the client's tables print numbers and columns: percentages, signed points, ψ_g against
ε, `-` for a value the server left unset, byte sizes, UTC times, and padded columns.

The number formats and columns are equiprune.text.formats', shared with `equiprune-engine`
so both CLIs print alike; byte sizes and times are the client's own.
"""

from __future__ import annotations

from equiprune.text.formats import gap, pct, pts, render, tolerance, value, yes_no

__all__ = ["gap", "pct", "pts", "render", "size", "tolerance", "value", "yes_no"]


def size(n_bytes: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n_bytes < 1000 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    return str(n_bytes)


def _time(stamp) -> str:
    return stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") + " UTC"
