"""bench/reproduce_paper.py: what --quick changes (and what the full run keeps), the command
line its summary prints, and its progress lines (docs/bench/quick-paper.md times the quick run)."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import reproduce_paper  # noqa: E402
from _paper_report import _command  # noqa: E402


def test_the_full_run_keeps_its_science_defaults():
    args = reproduce_paper.parse_args([])
    assert (args.sparsities, args.seeds, args.dense_epochs, args.ft_epochs) == ("0.5,0.8,0.9,0.95", 3, 15, 3)
    assert (args.probes, args.power_iterations, args.diag_overall, args.diag_per_group) == (8, 10, True, 400)
    assert (args.max_train, args.max_test) == (None, None)
    assert Path(args.out) == ROOT / "bench" / "out" / "paper"


def test_quick_mode_is_small_and_writes_apart_from_the_full_run():
    args = reproduce_paper.parse_args(["--quick"])
    assert (args.sparsities, args.seeds, args.dense_epochs, args.ft_epochs) == ("0.5,0.9", 1, 6, 1)
    assert (args.max_train, args.max_test, args.probes, args.diag_per_group) == (3000, 1500, 4, 200)
    assert (args.power_iterations, args.diag_overall) == (5, False)
    assert Path(args.out) == ROOT / "bench" / "out" / "paper-quick"


@pytest.mark.parametrize("argv", [[], ["--quick"], ["--no-diag-overall", "--setups", "race", "--arch-kwargs", '{"width": 8}'],
                                  ["--jobs", "1", "--out", "somewhere"]])
def test_the_printed_command_reproduces_the_arguments(argv):
    args = vars(reproduce_paper.parse_args(argv))
    words = shlex.split(_command(args))
    assert words[:3] == ["OMP_NUM_THREADS=1", "python", "bench/reproduce_paper.py"]
    assert "--jobs" not in words  # how many processes, not what they compute
    again = vars(reproduce_paper.parse_args(words[3:]))
    assert {k: v for k, v in again.items() if k != "jobs"} == {k: v for k, v in args.items() if k != "jobs"}


def test_a_long_step_says_it_is_still_running_and_how_long_it_took(monkeypatch, capsys):
    monkeypatch.setattr(reproduce_paper, "HEARTBEAT_SECONDS", 0.05)
    log = reproduce_paper.Progress(time.monotonic(), "race")
    with log.step("diagnostics", announce=True) as step:
        time.sleep(0.2)
        step["note"] = "5 groups"
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("[race] diagnostics ...")
    assert any("[race] diagnostics: still running (" in line for line in lines[1:-1])
    assert lines[-1].endswith("[race] diagnostics: 0s; 5 groups")
    assert all(line.split()[0].endswith("s") and line.split()[0][:-1].isdigit() for line in lines)


def test_a_failed_step_does_not_say_done(capsys):
    log = reproduce_paper.Progress(time.monotonic())
    with pytest.raises(ValueError):
        with log.step("pruning"):
            raise ValueError("boom")
    assert capsys.readouterr().out == ""


def test_training_reports_each_finished_epoch(capsys):
    from equiprune.engine.finetune.results import ProgressEvent

    on_progress = reproduce_paper.Progress(time.monotonic(), "gender").epochs("dense training")
    for step in range(1, 7):  # 2 epochs of 3 steps
        on_progress(ProgressEvent("dense", (step - 1) // 3, step, 3, 2, float(step), {}))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("] ", 1)[1].rsplit(" (", 1)[0] for line in lines] == [
        "dense training: epoch 1/2, mean batch loss 2.000", "dense training: epoch 2/2, mean batch loss 5.000"]
