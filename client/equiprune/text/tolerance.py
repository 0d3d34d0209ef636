"""ε as people type it: percentage points, on both command lines.

The rule, one for `equiprune` and `equiprune-engine` alike: `--tolerance 2` means two
percentage points, the unit every table prints ψ_g and ε in (the wire, the SDK and the engine
keep the fraction, 0.02). A unit may be written, `2pp` or `2%`, and must be for less than one
point (`0.5pp`): a bare number below 1 (other than 0) is refused, since `0.02` is what the
fraction of the same ε looks like and the two cannot be told apart.
"""

from __future__ import annotations

import argparse
import math

_UNITS = ("pp", "%", "points", "point")


def parse_tolerance(text: str) -> float:
    """ε as a fraction from its points (`2`, `2pp`, `2%`, `0.5pp`); raises ValueError saying
    what to write instead."""
    raw = str(text).strip()
    number, unit = raw, ""
    for suffix in _UNITS:
        if raw.lower().endswith(suffix):
            number, unit = raw[: -len(suffix)].strip(), suffix
            break
    try:
        points = float(number)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of percentage points (e.g. 2, 2pp or 0.5pp)") from None
    if not math.isfinite(points) or not 0 <= points < 100:
        raise ValueError(f"must be 0 to under 100 percentage points, got {text!r}")
    if not unit and 0 < points < 1:
        raise ValueError(f"tolerance is in percentage points: did you mean --tolerance {_plain(100 * points)} "
                         f"(for {_plain(points)})? For less than one point write the unit: "
                         f"--tolerance {_plain(points)}pp")
    return round(points / 100, 12)


def tolerance_argument(text: str) -> float:
    """`parse_tolerance` for argparse's `type=`: a refusal prints as a usage error (exit 2)."""
    try:
        return parse_tolerance(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def tolerance_help(default: float | None) -> str:
    """The --tolerance help of both CLIs; `default` (a fraction) when this CLI knows it."""
    shown = f"{_plain(100 * default)} points" if default is not None else "the server's, 1 point"
    return (f"ε, the largest excess accuracy gap ψ_g allowed for any group, in percentage points: 2 (or 2pp, "
            f"2%%) means 0.02; below one point write the unit, e.g. 0.5pp (default: {shown})")


def _plain(x: float) -> str:
    return f"{x:.6g}"
