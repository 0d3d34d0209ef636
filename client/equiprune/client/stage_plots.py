"""A PNG of a compress / prune-and-fine-tune job's reports: per-group accuracy with its 95 %
interval at every stage (dense, pruned, fine-tuned), and ψ_g of every stage after the dense
one against ε.

    equiprune plot job-3c9d --out stages.png

Like plots.py: matplotlib imported only when a plot is drawn, without pyplot.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from equiprune.text import reports as text
from equiprune.v1 import jobs_pb2

from .plots import MISSING_MATPLOTLIB, PlotUnavailable
from .specs import REPORT_STAGES


@dataclass
class StageSeries:
    """Per stage (pipeline order), per group: what the two panels draw. Accuracies and ψ_g
    are fractions; None where the report has no value."""
    split: str
    groups: list[str]
    stages: list[str]                     # stage names, e.g. ["dense", "pruned", "finetuned"]
    accuracy: dict[str, list[tuple[float, float, float] | None]] = field(default_factory=dict)  # (acc, lo, hi)
    psi: dict[str, list[tuple[float, float | None, float | None] | None]] = field(default_factory=dict)
    insufficient: set[str] = field(default_factory=set)
    tolerance: float | None = None
    labels: dict[str, str] = field(default_factory=dict)  # legend text per stage (default: the stage's)


def default_split(result: jobs_pb2.JobResult) -> str | None:
    """Without the job's spec: the first split reported that is not `train`, else train."""
    splits = list(dict.fromkeys(r.split for r in result.reports))
    others = [s for s in splits if s != "train"]
    return others[0] if others else (splits[0] if splits else None)


def stage_series(result: jobs_pb2.JobResult, split: str | None = None) -> StageSeries:
    """The plotted data of one split (default: `default_split`); ValueError without reports."""
    split = split if split is not None else default_split(result)
    by_stage = text.stage_reports(result.reports, split, REPORT_STAGES.name)
    stages = [s for s in text.COMPARED if s in by_stage]
    if not stages:
        known = sorted({r.split for r in result.reports})
        raise ValueError(f"plot: the job has no per-group report on split {split!r}"
                         + (f" (it has: {', '.join(known)})" if known else ""))
    groups = list(dict.fromkeys(g.group for s in stages for g in by_stage[s].groups))
    series = StageSeries(split=split, groups=groups, stages=stages)
    for stage in stages:
        report = by_stage[stage]
        metrics = {g.group: g for g in report.groups}
        accs, psis = [], []
        for name in groups:
            g = metrics.get(name)
            if g is None or not g.HasField("accuracy"):
                accs.append(None)
            else:
                lo = g.accuracy_ci_low if g.HasField("accuracy_ci_low") else g.accuracy
                hi = g.accuracy_ci_high if g.HasField("accuracy_ci_high") else g.accuracy
                accs.append((g.accuracy, lo, hi))
            if g is None or not g.HasField("excess_accuracy_gap"):
                psis.append(None)
            else:
                psis.append((g.excess_accuracy_gap,
                             g.excess_accuracy_gap_ci_low if g.HasField("excess_accuracy_gap_ci_low") else None,
                             g.excess_accuracy_gap_ci_high if g.HasField("excess_accuracy_gap_ci_high") else None))
            if g is not None and not g.sufficient_data:
                series.insufficient.add(name)
        series.accuracy[stage] = accs
        if stage != "dense":
            series.psi[stage] = psis
        if series.tolerance is None and report.summary.HasField("tolerance"):
            series.tolerance = report.summary.tolerance
    return series


def plot_stages(result: jobs_pb2.JobResult, path: str | os.PathLike, split: str | None = None,
                title: str = "") -> StageSeries:
    """Write the PNG: (a) accuracy ± 95 % interval per group, one marker per stage; (b) ψ_g per
    group per stage after dense against ε. Groups too small to judge are drawn hollow."""
    series = stage_series(result, split)
    draw(series, path, title or "per-group accuracy by stage")
    return series


def repair_series(fair: jobs_pb2.JobResult, naive: jobs_pb2.JobResult, split: str | None = None,
                  fair_label: str = "fair fine-tuning", naive_label: str = "naive fine-tuning") -> StageSeries:
    """Dense, pruned, naive and fair side by side: two prune-and-fine-tune jobs of the same
    pruning (the demo's), the fair job's dense and pruned stages with both fine-tuned ones."""
    series = stage_series(fair, split)
    other = stage_series(naive, series.split)
    if other.groups != series.groups:
        raise ValueError("plot: the two jobs report different groups")
    if "finetuned" not in series.accuracy or "finetuned" not in other.accuracy:
        raise ValueError("plot: both jobs need a fine-tuned report")
    series.accuracy["naive"], series.psi["naive"] = other.accuracy["finetuned"], other.psi["finetuned"]
    series.accuracy["fair"] = series.accuracy.pop("finetuned")
    series.psi["fair"] = series.psi.pop("finetuned")
    series.stages = [s for s in series.stages if s != "finetuned"] + ["naive", "fair"]
    series.insufficient |= other.insufficient
    series.labels.update(naive=naive_label, fair=fair_label)
    return series


_MARKERS = {"dense": "o", "pruned": "s", "finetuned": "D", "naive": "v", "fair": "D"}
_COLOURS = {"dense": "tab:blue", "pruned": "tab:red", "finetuned": "tab:green", "naive": "tab:orange",
            "fair": "tab:green"}


def draw(series: StageSeries, path: str | os.PathLike, title: str) -> None:
    """The two panels of `series` as a PNG at `path`."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotUnavailable(MISSING_MATPLOTLIB) from None
    figure = Figure(figsize=(max(7.0, 1.2 * len(series.groups) + 4), 7.5), dpi=100)
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True)
    width = 0.6 / max(1, len(series.stages))
    for i, stage in enumerate(series.stages):
        offset = (i - (len(series.stages) - 1) / 2) * width
        _points(top, series, series.accuracy[stage], offset, stage)
        if stage in series.psi:
            _points(bottom, series, series.psi[stage], offset, stage)
    if series.tolerance is not None:
        bottom.axhline(100 * series.tolerance, color="black", linestyle="--",
                       label=f"ε = {100 * series.tolerance:g} pts")
    bottom.axhline(0, color="grey", linewidth=0.8)
    top.set_ylabel("group accuracy (%) [95% CI]")
    bottom.set_ylabel("ψ_g (points)")
    bottom.set_xticks(range(len(series.groups)))
    bottom.set_xticklabels([g + (" *" if g in series.insufficient else "") for g in series.groups])
    bottom.set_xlabel("group" + ("  (* hollow: too small to judge)" if series.insufficient else ""))
    top.set_title(f"{title} — {series.split} split")
    bottom.set_title("excess accuracy gap ψ_g against ε")
    for axes in (top, bottom):
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize="small")
    figure.tight_layout()
    # `--plot runs/mine/stages.png` before `--download-dir runs/mine` has made the folder.
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    figure.savefig(os.fspath(path), format="png")


def _points(axes, series: StageSeries, values, offset: float, stage: str) -> None:
    """One stage's points with their intervals; hollow for groups too small to judge."""
    label = series.labels.get(stage) or text.STAGE_LABELS.get(stage, stage)
    markers, colours = _MARKERS, _COLOURS
    for i, (name, v) in enumerate(zip(series.groups, values)):
        if v is None:
            continue
        y, lo, hi = v
        lo, hi = (y if lo is None else lo), (y if hi is None else hi)
        hollow = name in series.insufficient
        axes.errorbar(i + offset, 100 * y, yerr=[[100 * (y - lo)], [100 * (hi - y)]], fmt=markers[stage],
                      color=colours[stage], markerfacecolor="white" if hollow else colours[stage],
                      capsize=3, label=label)
        label = None  # one legend entry per stage
