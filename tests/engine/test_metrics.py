"""The metrics core (engine/metrics.py) on counts: known Wilson bounds, the definitions of Δ_g
and ψ_g, small and empty groups, no reference, paired intervals, and that it needs no torch."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from equiprune.engine.metrics import Reference, Tally, group_metrics, summarise, wilson_interval


def test_wilson_matches_reference_values():
    # statsmodels.stats.proportion.proportion_confint(k, n, method="wilson")
    assert wilson_interval(8, 10) == pytest.approx((0.49016, 0.94332), abs=1e-5)
    assert wilson_interval(45, 50) == pytest.approx((0.78640, 0.95652), abs=1e-5)
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and high == pytest.approx(0.16113, abs=1e-5)
    low, high = wilson_interval(20, 20)
    assert high == 1.0 and low == pytest.approx(0.83887, abs=1e-5)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_drop_and_excess_gap_follow_their_definitions():
    tallies = {"a": Tally(60, 54), "b": Tally(40, 28)}  # 0.9 and 0.7
    frame = group_metrics(tallies, Reference({"a": 0.95, "b": 0.85}, overall_accuracy=0.91), tolerance=0.05)
    a, b, overall = frame.group("a"), frame.group("b"), frame.overall
    assert overall.accuracy == pytest.approx(0.82) and overall.accuracy_drop == pytest.approx(0.91 - 0.82)
    assert a.accuracy_drop == pytest.approx(0.05) and b.accuracy_drop == pytest.approx(0.15)
    assert a.excess_accuracy_gap == pytest.approx(0.05 - 0.09) and b.excess_accuracy_gap == pytest.approx(0.15 - 0.09)
    s = frame.summary
    assert (s.max_excess_accuracy_gap_group, s.worst_group) == ("b", "b")
    assert s.max_excess_accuracy_gap == pytest.approx(0.06) and s.accuracy_parity_gap == pytest.approx(0.2)
    assert s.excess_accuracy_gap_spread == pytest.approx(0.1)
    assert s.tolerance_met is False and s.tolerance_met_with_confidence is False
    assert not frame.paired


def test_without_an_overall_reference_the_groups_references_are_weighted_by_n():
    frame = group_metrics({"a": Tally(30, 27), "b": Tally(10, 5), "c": Tally(0, 0)},
                          Reference({"a": 0.9, "b": 0.7, "c": 0.1}))
    assert frame.overall.reference_accuracy == pytest.approx((30 * 0.9 + 10 * 0.7) / 40)  # c has no samples
    ψ = [frame.group(g).excess_accuracy_gap for g in "ab"]
    assert 30 * ψ[0] + 10 * ψ[1] == pytest.approx(0.0, abs=1e-12)  # n-weighted ψ_g sum to zero


def test_unpaired_interval_treats_the_reference_as_exact():
    frame = group_metrics({"a": Tally(75, 60), "b": Tally(25, 20)}, Reference({"a": 0.9, "b": 0.9}, 0.9))
    w = {"a": 0.75, "b": 0.25}
    var = {g: 0.8 * 0.2 / (100 * w[g]) for g in w}
    se_a = math.sqrt((1 - w["a"]) ** 2 * var["a"] + w["b"] ** 2 * var["b"])
    a = frame.group("a")
    assert a.excess_accuracy_gap_ci_high - a.excess_accuracy_gap == pytest.approx(1.959963984540054 * se_a)


def test_paired_interval_counts_only_disagreements_with_a_pseudo_count():
    # No disagreement at all: the interval still has a width (one pseudo-disagreement each way).
    tallies = {"a": Tally(50, 45), "b": Tally(50, 45)}
    reference = Reference({"a": 0.9, "b": 0.9}, 0.9, discordant={"a": (0, 0), "b": (0, 0)})
    frame = group_metrics(tallies, reference, tolerance=0.01)
    a = frame.group("a")
    p = 1 / 52
    var = (2 * p) / 50
    half = 1.959963984540054 * math.sqrt(0.25 * var + 0.25 * var)
    assert frame.paired and a.excess_accuracy_gap == 0.0
    assert (a.excess_accuracy_gap_ci_low, a.excess_accuracy_gap_ci_high) == pytest.approx((-half, half))
    assert frame.summary.tolerance_met is True and frame.summary.tolerance_met_with_confidence is False


def test_small_and_empty_groups_are_shown_but_never_judged():
    tallies = {"big": Tally(100, 90), "small": Tally(5, 0), "empty": Tally(0, 0)}
    frame = group_metrics(tallies, Reference({"big": 0.9, "small": 0.9}, 0.9), tolerance=0.05, min_group_size=10)
    small, empty = frame.group("small"), frame.group("empty")
    assert small.accuracy == 0.0 and small.excess_accuracy_gap is not None and not small.sufficient_data
    assert empty.accuracy is None and empty.accuracy_ci_low is None and not empty.sufficient_data
    s = frame.summary
    assert s.worst_group == "big" and s.accuracy_parity_gap == 0.0 and s.max_excess_accuracy_gap_group == "big"
    assert s.insufficient_groups == ("small", "empty")


def test_nothing_judged_gives_an_empty_summary():
    frame = group_metrics({"a": Tally(3, 3)}, None, tolerance=0.02, min_group_size=10)
    s = frame.summary
    assert s.worst_group is None and s.max_excess_accuracy_gap is None and s.tolerance_met is None
    assert s.insufficient_groups == ("a",) and s.tolerance == 0.02


def test_without_a_reference_there_are_no_differences():
    frame = group_metrics({"a": Tally(10, 8, 2.0), "b": Tally(10, 9, 1.0)}, tolerance=0.05)
    a = frame.group("a")
    assert (a.accuracy, a.loss) == (pytest.approx(0.8), pytest.approx(0.2))
    assert a.reference_accuracy is a.accuracy_drop is a.excess_accuracy_gap is a.excess_accuracy_gap_ci_high is None
    assert frame.overall.accuracy_drop is None and frame.overall.loss == pytest.approx(0.15)
    s = frame.summary
    assert s.worst_group == "a" and s.max_excess_accuracy_gap is None and s.tolerance_met is None


def test_excess_loss_and_its_pairwise_gap():
    frame = group_metrics({"a": Tally(10, 9, 3.0), "b": Tally(10, 7, 6.0)},
                          Reference({"a": 0.9, "b": 0.9}, 0.9, loss={"a": 0.25, "b": 0.2}, overall_loss=0.225))
    assert frame.group("a").excess_loss == pytest.approx(0.05) and frame.group("b").excess_loss == pytest.approx(0.4)
    assert frame.summary.max_pairwise_excess_loss_gap == pytest.approx(0.35)
    assert frame.overall.reference_loss == 0.225


def test_gap_intervals_can_be_skipped_and_the_summary_is_order_driven():
    tallies = {"b": Tally(40, 36), "a": Tally(40, 36)}  # a tie: the first in order wins
    frame = group_metrics(tallies, Reference({"a": 0.95, "b": 0.95}, 0.9), tolerance=0.5, gap_intervals=False)
    assert frame.group("a").excess_accuracy_gap_ci_high is None
    assert frame.summary.max_excess_accuracy_gap_group == "b" and frame.summary.tolerance_met is True
    assert frame.summary.tolerance_met_with_confidence is None  # no interval, no verdict
    assert summarise([frame.group("a"), frame.group("b")], None).max_excess_accuracy_gap_group == "a"


def test_the_core_imports_without_torch_or_numpy():
    # The monitor and torch-free processes (the client tests' fake server) import it.
    code = ("import sys\nclass Hide:\n def find_spec(self, name, path=None, target=None):\n"
            "  if name.split('.')[0] in ('torch', 'numpy'): raise ImportError(name)\n"
            "sys.meta_path.insert(0, Hide())\nimport equiprune.engine.metrics\n")
    subprocess.run([sys.executable, "-c", code], check=True)
