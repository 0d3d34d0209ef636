"""The demo's verdict says what the numbers show: promise kept, not kept, nothing to repair,
and whether one run separates fair from naive beyond noise."""

from equiprune.client.demo_verdict import demo_verdict
from equiprune.v1 import reports_pb2

EPS = 0.02


def _report(accs: dict[str, tuple[float, float, float]], psi: dict[str, float] | None = None,
            overall: float = 0.9) -> reports_pb2.GroupReport:
    """accs: group → (accuracy, ci low, ci high); psi: group → ψ_g (None for a dense report)."""
    report = reports_pb2.GroupReport()
    for name, (acc, lo, hi) in accs.items():
        g = report.groups.add(group=name, n=100, accuracy=acc, accuracy_ci_low=lo, accuracy_ci_high=hi,
                              sufficient_data=True)
        if psi is not None:
            g.excess_accuracy_gap = psi[name]
    report.overall.accuracy = overall
    if psi is not None:
        worst = max(psi, key=psi.get)
        report.summary.max_excess_accuracy_gap = psi[worst]
        report.summary.max_excess_accuracy_gap_group = worst
        report.summary.tolerance = EPS
        report.summary.tolerance_met = psi[worst] <= EPS
        report.summary.tolerance_met_with_confidence = psi[worst] <= EPS / 2  # stands in for the upper bound
    return report


DENSE = _report({"majority": (0.97, 0.95, 0.98), "minority": (0.96, 0.90, 0.99)}, overall=0.97)
HURT = _report({"majority": (0.68, 0.63, 0.73), "minority": (0.45, 0.35, 0.55)},
               {"majority": -0.04, "minority": 0.18}, overall=0.64)


def _verdict(naive, fair, pruned=HURT, held_out=True):
    return demo_verdict(DENSE, pruned, naive, fair, sparsity=0.9, split="test" if held_out else "train",
                        held_out=held_out, fair_name="fair_distill")


def test_promise_kept_when_fair_holds_and_naive_does_not():
    naive = _report({"majority": (0.93, 0.90, 0.95), "minority": (0.84, 0.75, 0.90)},
                    {"majority": -0.01, "minority": 0.066})
    fair = _report({"majority": (0.93, 0.90, 0.95), "minority": (0.955, 0.89, 0.98)},
                   {"majority": 0.007, "minority": -0.029})
    v = _verdict(naive, fair)
    assert v.kept is True
    text = v.text()
    assert "hurt the minority group most on the test split (data no model trained on)" in text
    assert "from 96.0% to 45.0%" in text and "ψ_g +18.00 against ε = 2.00 points" in text
    assert "verdict: promise kept — fair_distill kept every group within ε (worst ψ_g +0.70, majority; also with " \
           "95 % confidence)" in text
    assert "naive fine-tuning did not (worst ψ_g +6.60, minority)" in text
    assert "intervals overlap" in text and "does not show fair_distill beating naive beyond noise" in text


def test_not_repaired_is_said_plainly_with_how_much_the_gap_moved():
    naive = _report({"majority": (0.9, 0.87, 0.93), "minority": (0.6, 0.5, 0.7)}, {"majority": -0.05, "minority": 0.235})
    fair = _report({"majority": (0.9, 0.87, 0.93), "minority": (0.82, 0.74, 0.88)}, {"majority": -0.02, "minority": 0.079})
    v = _verdict(naive, fair)
    assert v.kept is False
    assert "verdict: not repaired — fair_distill did NOT keep every group within ε" in v.text()
    assert "narrowed the worst gap against naive (15.60 points less)" in v.text()
    assert "intervals do not overlap" in v.text() and "fair_distill is ahead beyond" in v.text()


def test_promise_not_kept_when_naive_holds_and_fair_does_not():
    naive = _report({"majority": (0.93, 0.9, 0.95), "minority": (0.93, 0.86, 0.97)}, {"majority": 0.0, "minority": 0.01})
    fair = _report({"majority": (0.93, 0.9, 0.95), "minority": (0.88, 0.8, 0.93)}, {"majority": -0.01, "minority": 0.05})
    v = _verdict(naive, fair)
    assert v.kept is False and "verdict: promise NOT kept" in v.text() and "naive fine-tuning did too" in v.text()


def test_no_damage_means_nothing_to_show():
    mild = _report({"majority": (0.96, 0.94, 0.98), "minority": (0.95, 0.9, 0.98)}, {"majority": 0.01, "minority": 0.0})
    v = _verdict(mild, mild, pruned=mild)
    assert v.kept is None  # demo.json must not record a promise kept when nothing needed repair
    assert v.text().startswith("verdict: nothing to repair — pruning to 90% alone kept every group within ε")
    assert "cannot show the fair method working" in v.text()


def test_reports_without_a_tolerance_verdict_are_not_judged():
    plain = _report({"majority": (0.9, 0.8, 0.95)})
    v = demo_verdict(plain, plain, plain, plain, sparsity=0.9, split="test", held_out=True, fair_name="fair_distill")
    assert v.kept is None and v.text().startswith("verdict: no judgement possible")


def test_both_repaired():
    ok = _report({"majority": (0.95, 0.92, 0.97), "minority": (0.94, 0.88, 0.97)}, {"majority": 0.0, "minority": 0.015})
    v = _verdict(ok, ok)
    assert v.kept is True and "verdict: both repaired" in v.text() and "naive fine-tuning did too" in v.text()
    assert "but not with 95 % confidence" in v.text()  # ψ_g +1.50: within ε = 2, not within its stand-in bound


def test_a_split_the_models_trained_on_is_named_as_such():
    naive = _report({"majority": (0.93, 0.9, 0.95), "minority": (0.84, 0.75, 0.9)}, {"majority": -0.01, "minority": 0.066})
    text = _verdict(naive, naive, held_out=False).text()
    assert "on the train split, which the models trained on" in text and "no model trained on" not in text


def test_a_gap_that_rounds_to_epsilon_prints_unlike_it():
    """ψ_g 2.04 points over ε = 2: printed with the digits that show it is over."""
    naive = _report({"majority": (0.93, 0.9, 0.95), "minority": (0.84, 0.75, 0.9)}, {"majority": -0.01, "minority": 0.0204})
    assert "(worst ψ_g +2.04, minority)" in _verdict(naive, naive).text()
