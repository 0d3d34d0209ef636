"""How numbers and columns print, for either CLI.

Accuracies are percentages (91.3%); Δ_g and other differences signed percentage points (+2.1);
ψ_g signed points with two decimals, more when that is what it takes to tell it from the
tolerance it is judged against (+1.03 vs 1.00, never +1.0 vs +1.0); a number that could not be
computed is `-`.

Every function reads `obj.field` the same way from a protobuf message (unset optional field →
None), a dataclass or a dict, so the client (proto messages) and the engine (its dataclasses)
share them.
"""

from __future__ import annotations

from typing import Iterable, Sequence


def value(obj, field: str | None = None):
    """`obj.field` (or `obj` itself), None when unset: a proto field without presence that is
    set, an optional one only when present; an empty string counts as unset."""
    if field is None:
        return obj
    if obj is None:
        return None
    if isinstance(obj, dict):
        found = obj.get(field)
    else:
        has_field = getattr(obj, "HasField", None)
        if has_field is not None:
            try:
                if not has_field(field):
                    return None
            except ValueError:  # a proto3 scalar without presence: its value is all there is
                pass
        found = getattr(obj, field, None)
    return None if found == "" else found


def pct(obj, field: str | None = None) -> str:
    """A fraction as a percentage with one decimal; `-` when unset."""
    x = value(obj, field)
    return "-" if x is None else f"{100 * x:.1f}%"


def pts(obj, field: str | None = None) -> str:
    """A difference of fractions as signed percentage points, one decimal; `-` when unset."""
    x = value(obj, field)
    return "-" if x is None else f"{100 * x:+.1f}"


def gap(obj, field: str | None = None, against: float | None = None) -> str:
    """ψ_g as signed points with two decimals, or as many (up to four) as it takes to print it
    unlike `against` (the tolerance) when the two differ; `-` when unset."""
    x = value(obj, field)
    if x is None:
        return "-"
    return f"{100 * x:+.{_decimals(x, against)}f}"


def tolerance(eps: float | None, against: float | None = None) -> str:
    """ε in points with its unit, with as many decimals as `gap` gives the value judged by it."""
    if eps is None:
        return "-"
    return f"{100 * eps:.{_decimals(against, eps) if against is not None else 2}f} points"


def _decimals(x: float | None, other: float | None) -> int:
    if x is None or other is None or x == other:
        return 2
    for decimals in (2, 3, 4):
        if f"{100 * x:.{decimals}f}" != f"{100 * other:.{decimals}f}":
            return decimals
    return 4


def yes_no(obj, field: str | None = None) -> str:
    x = value(obj, field)
    return "-" if x is None else ("yes" if x else "no")


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
