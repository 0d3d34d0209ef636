"""How the client's tables print numbers and columns: percentages, signed points, `-` for a
value the server left unset, byte sizes, UTC times, and padded columns.

Shared by the job, report and serving tables (and progress bars), so every table formats alike.
"""

from __future__ import annotations

from typing import Iterable, Sequence


# ---------------------------------------------------------------- number formats

def pct(message, field: str | None = None) -> str:
    """`message.field` (or the number `message`) as a percentage; `-` when unset."""
    value = _value(message, field)
    return "-" if value is None else f"{100 * value:.1f}%"


def pts(message, field: str | None = None) -> str:
    """`message.field` (or the number `message`) as signed percentage points; `-` when unset."""
    value = _value(message, field)
    return "-" if value is None else f"{100 * value:+.1f}"


def _value(message, field: str | None):
    if field is None:
        return message
    if message is None or not message.HasField(field):
        return None
    return getattr(message, field)


def yes_no(message, field: str) -> str:
    return "-" if not message.HasField(field) else ("yes" if getattr(message, field) else "no")


def size(n_bytes: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n_bytes < 1000 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    return str(n_bytes)


def render(header: Sequence[str], rows: Iterable[Sequence[str]], right: Iterable[int] = ()) -> list[str]:
    """Columns padded to their widest cell; columns in `right` are right-aligned."""
    rows = [list(map(str, row)) for row in rows]
    right = set(right)
    widths = [max([len(header[i])] + [len(row[i]) for row in rows if i < len(row)]) for i in range(len(header))]

    def line(cells):
        return "  ".join(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
                         for i, cell in enumerate(cells)).rstrip()

    rule = "-" * len(line(["-" * w for w in widths]))
    return [line(header), rule] + [line(row) for row in rows]


def _time(stamp) -> str:
    return stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") + " UTC"
