"""The budget search's bracket (from a low sparsity up, or halving down when the first probe
breaks ε) and its shortfall when nothing holds (the CLI's words for it: test_cli_output.py)."""

import json
import re

import pytest
import torch

from equiprune.engine.budget import FLOOR, BudgetConfig, search_budget
from equiprune.engine.evaluation import Evaluation
from equiprune.engine.report import build_report


def _report(minority_gap: float, *, tolerance: float, minority_n: int = 200, min_group_size: int = 30):
    """A paired two-group report (1000 majority samples, `minority_n` minority ones, every
    dense prediction right) whose minority ψ_g is about `minority_gap`."""
    n = 1000 + minority_n
    groups = torch.tensor([0] * 1000 + [1] * minority_n)
    dense = torch.ones(n, dtype=torch.bool)
    current = dense.clone()
    share = minority_n / n
    wrong = int(round(minority_gap * minority_n / (1 - share)))  # ψ = Δ_min (1 − w_min) with Δ_maj = 0
    current[1000:1000 + wrong] = False
    ev = lambda c: Evaluation(c, torch.zeros(n), torch.ones(n), groups, ("majority", "minority"))
    return build_report(ev(current), ev(dense), tolerance=tolerance, min_group_size=min_group_size)


def _gap_growing_from(start: float):
    """ψ_minority grows by 10 points per unit of sparsity above `start` (zero below)."""
    return lambda sparsity: max(0.0, (sparsity - start) * 0.1)


@pytest.mark.parametrize("breaks_after, expected", [(0.6, 0.7), (0.02, 0.12)])
def test_the_default_search_brackets_from_a_low_sparsity(breaks_after, expected):
    seen = []

    def probe(sparsity):
        seen.append(sparsity)
        return _report(_gap_growing_from(breaks_after)(sparsity), tolerance=0.01)

    result = search_budget(probe, BudgetConfig())
    assert seen[0] == BudgetConfig().low == 0.1  # a low sparsity first, then the top of the bracket
    assert len(seen) >= 5, "a default run probes several sparsities"
    assert result.best_sparsity == pytest.approx(expected, abs=BudgetConfig().resolution + 0.01)
    assert all(p.met == (p.max_excess_accuracy_gap <= 0.01) for p in result.frontier)
    assert result.best_sparsity == max(p.sparsity for p in result.frontier if p.met)
    assert result.shortfall is None


def test_a_first_probe_that_breaks_the_tolerance_sends_the_search_down():
    seen = []

    def probe(sparsity):
        seen.append(sparsity)
        return _report(_gap_growing_from(0.2)(sparsity), tolerance=0.01)  # breaks ε above 0.3

    result = search_budget(probe, BudgetConfig(low=0.5, resolution=0.02))
    assert seen[:2] == [0.5, 0.25]  # 0.5 broke it: halve, 0.25 holds, then bisect upward
    assert 0.28 <= result.best_sparsity <= 0.3
    assert [p.sparsity for p in result.frontier] == sorted(seen)


def test_when_nothing_holds_the_shortfall_names_the_group_and_what_to_try():
    result = search_budget(lambda s: _report(0.031, tolerance=0.01), BudgetConfig(tolerance=0.01),
                           pruning_kind="structured", finetuned=None)
    assert result.best_sparsity is None
    lowest = min(p.sparsity for p in result.frontier)
    assert lowest >= FLOOR and lowest < 2 * FLOOR
    shortfall = result.shortfall
    assert (shortfall.group, shortfall.n, shortfall.sparsity, shortfall.tolerance) == ("minority", 200, lowest, 0.01)
    assert shortfall.excess_accuracy_gap == pytest.approx(0.03, abs=0.003)
    tips = " | ".join(shortfall.suggestions)
    suggested = float(re.search(r"--tolerance ([0-9.]+)\)", tips).group(1))  # ε just above the gap, in points
    assert 0 <= suggested - 100 * shortfall.excess_accuracy_gap <= 0.1
    assert "fine-tune every probe" in tips and "--kind unstructured" in tips and "nearly dense" in tips
    assert json.loads(json.dumps(result.to_dict()))["shortfall"]["group"] == "minority"


def test_under_require_confidence_a_small_group_is_told_to_bring_data_or_judge_the_point_estimate():
    report = lambda s: _report(0.0, tolerance=0.005, minority_n=40)
    result = search_budget(report, BudgetConfig(tolerance=0.005, require_confidence=True),
                           finetuned="fair_distill for 3 epochs")
    shortfall = result.shortfall
    assert shortfall.judged_with_confidence and shortfall.excess_accuracy_gap_ci_high > 0.005
    tips = " | ".join(shortfall.suggestions)
    assert "more evaluation data for minority" in tips and "leave out --require-confidence" in tips
    assert "fine-tuned (fair_distill for 3 epochs)" in tips


def test_the_shortfall_reports_and_advises_on_the_measured_sparsity():
    """Pruning rounds per layer: a probe aimed at 0.01 may reach 0.0098. The shortfall's number
    and the sparsity its advice names are that measured value, written once."""
    result = search_budget(lambda s: _report(0.031, tolerance=0.01), BudgetConfig(tolerance=0.01),
                           measured=lambda target: round(target * 0.98, 4))
    lowest = min(p.sparsity for p in result.frontier)
    assert result.shortfall.sparsity == round(lowest * 0.98, 4)
    assert any(f"sparsity {result.shortfall.sparsity:.3f}" in tip for tip in result.shortfall.suggestions)
