"""A PNG of per-group accuracy against sparsity, from a budget search's sweep.

matplotlib is the optional `plots` extra: it is imported only here, only when a plot is
drawn, and without pyplot (no global state, no display backend needed).
"""

from __future__ import annotations

import os

from equiprune.v1 import jobs_pb2

MISSING_MATPLOTLIB = "the PNG plot needs matplotlib: pip install 'equiprune[plots]'"


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def group_curves(result: jobs_pb2.JobResult) -> dict[str, list[tuple[float, float]]]:
    """Per group, the (sparsity, accuracy) of every probe that measured it, by sparsity."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for point in sorted(result.sweep, key=lambda p: p.sparsity):
        for group in point.report.groups:
            if group.HasField("accuracy"):
                curves.setdefault(group.group, []).append((point.sparsity, group.accuracy))
    return curves


def plot_sweep(result: jobs_pb2.JobResult, path: str | os.PathLike, title: str = "") -> None:
    """Write the PNG: one line per group through every probe, the probes that broke ε
    crossed out, the best sparsity marked when there is one."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotUnavailable(MISSING_MATPLOTLIB) from None
    curves = group_curves(result)
    if not curves:
        raise ValueError("plot: the job's result has no sweep points to plot")
    figure = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for group, points in curves.items():
        xs, ys = zip(*points)
        axes.plot(xs, [100 * y for y in ys], marker="o", label=group)
    beyond = [(p.sparsity, 100 * g.accuracy) for p in result.sweep if not p.tolerance_met
              for g in p.report.groups if g.HasField("accuracy")]
    if beyond:  # every probe is on its group's line; those that broke ε are crossed out
        xs, ys = zip(*beyond)
        axes.scatter(xs, ys, marker="x", color="black", zorder=3, label="probe beyond ε")
    if result.HasField("best_sparsity"):
        axes.axvline(result.best_sparsity, color="grey", linestyle="--",
                     label=f"best sparsity {result.best_sparsity:.3f}")
    axes.set_xlabel("sparsity of prunable weights")
    axes.set_ylabel("group accuracy (%)")
    axes.set_title((title or "per-group accuracy vs sparsity") + f" ({len(result.sweep)} probes)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    # `--plot runs/mine/stages.png` before `--download-dir runs/mine` has made the folder.
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    figure.savefig(os.fspath(path), format="png")
