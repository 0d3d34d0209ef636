"""The words and numbers both CLIs share (equiprune.text): ε typed in percentage points, ψ_g
printed with the digits its verdict needs, and a budget search that found nothing saying
which group broke ε and what to try."""

from __future__ import annotations

import pytest

from equiprune.client import cli, tables
from equiprune.text.formats import gap, tolerance
from equiprune.text.tolerance import parse_tolerance
from equiprune.v1 import jobs_pb2, reports_pb2

from .fake_server import group_report


@pytest.mark.parametrize("typed, fraction", [("2", 0.02), ("2pp", 0.02), ("2%", 0.02), ("1.5 points", 0.015),
                                             ("0.5pp", 0.005), ("0", 0.0), ("1", 0.01), ("99.5", 0.995)])
def test_tolerance_is_typed_in_points(typed, fraction):
    assert parse_tolerance(typed) == pytest.approx(fraction)


@pytest.mark.parametrize("typed, says", [
    ("0.02", "did you mean --tolerance 2 (for 0.02)? For less than one point write the unit: --tolerance 0.02pp"),
    ("100", "must be 0 to under 100 percentage points"),
    ("-1", "must be 0 to under 100 percentage points"),
    ("nan", "must be 0 to under 100 percentage points"),
    ("two", "is not a number of percentage points"),
])
def test_a_tolerance_that_could_be_a_fraction_or_is_not_one_is_refused(typed, says):
    with pytest.raises(ValueError) as err:
        parse_tolerance(typed)
    assert says in str(err.value)


def _spec(*argv: str):
    args = cli.build_parser().parse_args(["budget", "--model", "art-1", "--dataset", "sample:digits",
                                          "--group-by", "cohort", *argv])
    return cli.spec_from_args(args)


def test_every_cli_tolerance_is_points_and_travels_as_a_fraction(capsys):
    assert _spec("--tolerance", "2").data.tolerance == pytest.approx(0.02)
    assert _spec("--tolerance", "0.5pp").data.tolerance == pytest.approx(0.005)
    assert not _spec().data.HasField("tolerance")  # unset: the server's default
    deploy = cli.build_parser().parse_args(["deploy", "digits", "--model", "art-1", "--group-by", "cohort",
                                            "--tolerance", "3"])
    assert deploy.tolerance == pytest.approx(0.03)
    with pytest.raises(SystemExit) as stop:
        _spec("--tolerance", "0.02")
    assert stop.value.code == 2
    assert "tolerance is in percentage points: did you mean --tolerance 2" in capsys.readouterr().err


@pytest.mark.parametrize("value, against, shown", [
    (0.0103, 0.01, "+1.03"), (0.01004, 0.01, "+1.004"), (0.01, 0.01, "+1.00"), (-0.0204, None, "-2.04"),
    (None, 0.01, "-"),
])
def test_psi_prints_with_the_digits_its_verdict_needs(value, against, shown):
    assert gap(value, against=against) == shown


def test_the_tolerance_prints_in_points_with_the_gaps_digits():
    assert tolerance(0.02) == "2.00 points"
    assert tolerance(0.01, against=0.01004) == "1.000 points"


def test_sweep_table_with_a_shortfall_names_the_group_and_what_to_try():
    result = jobs_pb2.JobResult()
    for sparsity in (0.0125, 0.025, 0.05, 0.1):
        result.sweep.add(sparsity=sparsity, tolerance_met=False, report=group_report(3.0))
    result.budget_shortfall.CopyFrom(reports_pb2.BudgetShortfall(
        sparsity=0.0125, group="minority", n=89, excess_accuracy_gap=0.0312, excess_accuracy_gap_ci_high=0.061,
        tolerance=0.01, suggestions=["a larger tolerance: ε of 3.2 points (--tolerance 3.2) …", "more data"]))
    text = tables.sweep_table(result).splitlines()
    assert text[0] == "budget search probes (ε 2.00 points)"  # the reports' own ε
    assert [line.split()[0] for line in text[3:7]] == ["0.013", "0.025", "0.050", "0.100"]
    assert text[7] == "no probed sparsity kept every group within tolerance:"
    assert text[8] == ("  at the lowest sparsity probed, 0.013, group minority (n = 89) had ψ_g +3.12 points "
                       "(upper 95% bound +6.10), over ε 1.00 points")
    assert text[9:] == ["to try:", "  - a larger tolerance: ε of 3.2 points (--tolerance 3.2) …", "  - more data"]
