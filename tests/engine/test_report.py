import json
import math

import pytest
import torch

from equiprune.engine.evaluation import Evaluation, evaluate
from equiprune.engine.groups import GroupedData
from equiprune.engine.report import build_report, wilson_interval


def make_eval(correct, groups, names=("a", "b"), loss=None):
    correct = torch.tensor(correct, dtype=torch.bool)
    groups = torch.tensor(groups)
    loss = torch.tensor(loss if loss is not None else [0.0] * len(correct), dtype=torch.float32)
    return Evaluation(correct, loss, torch.ones(len(correct)), groups, names)


def test_wilson_matches_reference_values():
    # Reference: Wilson 95 % interval for 8/10 and 0/20 (statsmodels proportion_confint).
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_excess_gap_and_loss_by_hand():
    groups = [0] * 6 + [1] * 4
    dense = make_eval([1] * 6 + [1, 1, 1, 0], groups, loss=[0.1] * 6 + [0.2] * 4)
    pruned = make_eval([1] * 6 + [1, 0, 0, 0], groups, loss=[0.1] * 6 + [0.5] * 4)
    report = build_report(pruned, dense, tolerance=0.01)
    a, b = report.group("a"), report.group("b")
    # Δ_a = 0, Δ_b = 0.75 − 0.25 = 0.5, Δ = 0.9 − 0.7 = 0.2; ψ = Δ_g − Δ.
    assert a.accuracy_drop == pytest.approx(0.0) and b.accuracy_drop == pytest.approx(0.5)
    assert report.overall.accuracy_drop == pytest.approx(0.2)
    assert a.excess_accuracy_gap == pytest.approx(-0.2) and b.excess_accuracy_gap == pytest.approx(0.3)
    assert b.excess_loss == pytest.approx(0.3) and a.excess_loss == pytest.approx(0.0)
    s = report.summary
    assert s.max_excess_accuracy_gap == pytest.approx(0.3) and s.max_excess_accuracy_gap_group == "b"
    assert s.excess_accuracy_gap_spread == pytest.approx(0.5)
    assert s.worst_group == "b" and s.accuracy_parity_gap == pytest.approx(0.75)
    assert s.max_pairwise_excess_loss_gap == pytest.approx(0.3)
    assert s.tolerance_met is False and s.tolerance_met_with_confidence is False
    assert report.paired


def test_paired_variance_matches_formula():
    torch.manual_seed(0)
    groups = torch.tensor([0] * 300 + [1] * 100)
    dense = torch.rand(400) < 0.9
    pruned = dense & (torch.rand(400) < 0.85)
    report = build_report(make_eval(pruned.tolist(), groups.tolist()), make_eval(dense.tolist(), groups.tolist()))
    d = dense.double() - pruned.double()
    w = torch.tensor([0.75, 0.25], dtype=torch.float64)

    def var_of_drop(g):
        n = int((groups == g).sum())
        p_b = (float((d[groups == g] > 0).sum()) + 1) / (n + 2)
        p_c = (float((d[groups == g] < 0).sum()) + 1) / (n + 2)
        return (p_b + p_c - (p_b - p_c) ** 2) / n

    var = [var_of_drop(0), var_of_drop(1)]
    expected = (1 - w[1]) ** 2 * var[1] + w[0] ** 2 * var[0]
    b = report.group("b")
    half = (b.excess_accuracy_gap_ci_high - b.excess_accuracy_gap_ci_low) / 2
    assert half == pytest.approx(1.959964 * math.sqrt(expected), rel=1e-6)


def test_excess_gap_interval_covers_truth_about_95_percent():
    # Simulate paired dense/pruned outcomes with a known true ψ and count coverage.
    gen = torch.Generator().manual_seed(1)
    n0, n1 = 400, 80
    groups = [0] * n0 + [1] * n1
    p_dense, p_keep = torch.tensor([0.9] * n0 + [0.8] * n1), torch.tensor([0.97] * n0 + [0.85] * n1)
    # True Δ_g = p_dense·(1 − p_keep); ψ_b = Δ_b − weighted Δ.
    drop = p_dense * (1 - p_keep)
    true_psi_b = float(drop[-1] - (drop.mean()))
    hits, sims = 0, 400
    for _ in range(sims):
        dense = torch.rand(n0 + n1, generator=gen) < p_dense
        pruned = dense & (torch.rand(n0 + n1, generator=gen) < p_keep)
        b = build_report(make_eval(pruned.tolist(), groups), make_eval(dense.tolist(), groups)).group("b")
        hits += b.excess_accuracy_gap_ci_low <= true_psi_b <= b.excess_accuracy_gap_ci_high
    assert 0.90 <= hits / sims <= 0.99


def test_a_group_without_disagreements_still_gets_an_interval():
    groups = [0] * 1000 + [1] * 30
    dense = make_eval([1] * 1030, groups)
    pruned = make_eval([0] * 100 + [1] * 930, groups)  # only the large group loses anything
    b = build_report(pruned, dense, tolerance=0.0).group("b")
    assert b.excess_accuracy_gap_ci_high - b.excess_accuracy_gap_ci_low > 0.05
    assert build_report(pruned, dense, tolerance=0.0).summary.tolerance_met_with_confidence is False


def test_reference_mapping_empty_group_and_strict_json():
    current = make_eval([1, 0, 1, 1], [0, 0, 0, 0], names=("a", "b", "c"))
    report = build_report(current, {"a": 0.9, "b": 0.5}, reference_overall_accuracy=0.9, tolerance=0.05,
                          min_group_size=2)
    assert report.group("b").n == 0 and report.group("b").accuracy is None
    assert not report.paired
    assert report.group("a").excess_accuracy_gap == pytest.approx(0.0)
    assert report.summary.insufficient_groups == ("b", "c")
    json.dumps(report.to_dict(), allow_nan=False)  # no NaN anywhere
    with pytest.raises(ValueError, match="unknown groups"):
        build_report(current, {"zzz": 0.5})


def test_small_group_marked_insufficient_not_violating():
    groups = [0] * 50 + [1] * 3
    dense = make_eval([1] * 53, groups)
    pruned = make_eval([1] * 50 + [0] * 3, groups)
    report = build_report(pruned, dense, tolerance=0.01, min_group_size=30)
    assert report.summary.insufficient_groups == ("b",)
    assert report.summary.tolerance_met is True  # b is not judged with 3 samples


def test_evaluate_counts_match_manual():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x = torch.randn(37, 4)
    y = torch.randint(0, 3, (37,))
    g = torch.randint(0, 2, (37,))
    ev = evaluate(model, GroupedData(x, y, g, ("u", "v")), batch_size=8)
    with torch.no_grad():
        logits = model(x)
    assert torch.equal(ev.correct, logits.argmax(1) == y)
    assert torch.allclose(ev.loss, torch.nn.functional.cross_entropy(logits, y, reduction="none"))
    assert ev.group_accuracies()["u"] == pytest.approx(float((logits.argmax(1) == y)[g == 0].double().mean()))
