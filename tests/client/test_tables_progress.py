"""Tables and progress output, from hand-built messages."""

from __future__ import annotations

import io

from equiprune.client import tables, transfers
from equiprune.client.demo import DamageAfterPruning
from equiprune.client.plots import group_curves
from equiprune.client.runner import Output
from equiprune.client.progress import ByteProgress, JobProgress
from equiprune.v1 import jobs_pb2, reports_pb2

from .fake_server import SWEEP, group_report


def _event(sequence, phase, state=jobs_pb2.JOB_STATE_RUNNING, **progress):
    return jobs_pb2.JobEvent(sequence=sequence, state=state, progress=jobs_pb2.Progress(phase=phase, **progress))


def _finetune_events():
    events = [_event(1, "queued", jobs_pb2.JOB_STATE_QUEUED), _event(2, "load")]
    for step in range(1, 7):
        events.append(_event(2 + step, "finetune", step=step, total_steps=6, epoch=(step - 1) // 2, epochs=3,
                             metrics={"loss": 1 / step}))
    return events + [_event(9, "done", jobs_pb2.JOB_STATE_SUCCEEDED)]


def test_progress_in_a_log_prints_one_line_per_phase_and_epoch():
    stream = io.StringIO()
    progress = JobProgress(stream, tty=False)
    for event in _finetune_events():
        progress.update(event)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines[0] == "queued" and lines[1] == "load"
    assert [line.split("epoch ")[1].split()[0] for line in lines[2:]] == ["1/3", "2/3", "3/3"]
    assert lines[2].startswith("finetune") and "1/6" in lines[2] and "loss 1" in lines[2]


def test_progress_on_a_terminal_redraws_one_line_per_phase():
    stream = io.StringIO()
    progress = JobProgress(stream, tty=True)
    for event in _finetune_events():
        progress.update(event)
    progress.close()
    text = stream.getvalue()
    assert text.count("\rfinetune") == 6
    finished_lines = text.split("\n")
    assert len(finished_lines) == 4  # queued, load, finetune (redrawn), then the final newline
    assert "[########################] 6/6" in finished_lines[2]


def test_byte_progress_prints_once_in_a_log():
    stream = io.StringIO()
    progress = ByteProgress("upload m.bin", stream, tty=False)
    for done in (1000, 2000, 3000):
        progress(done, 3000)
    progress.close()
    assert stream.getvalue() == "upload m.bin: 3.0 kB\n"


def _stage(stage, split, fraction):
    return reports_pb2.StageReport(stage=stage, split=split, report=group_report(fraction))


def test_comparison_uses_the_evaluation_split_and_shows_unset_numbers_as_dashes():
    job = jobs_pb2.Job(job_id="job-1", state=jobs_pb2.JOB_STATE_SUCCEEDED,
                       spec=jobs_pb2.JobSpec(kind=jobs_pb2.JOB_KIND_PRUNE))
    job.result.reports.extend([_stage(reports_pb2.REPORT_STAGE_DENSE, "train", 0.0),
                               _stage(reports_pb2.REPORT_STAGE_PRUNED_WITHOUT_RECALIBRATION, "train", 3.0),
                               _stage(reports_pb2.REPORT_STAGE_DENSE, "holdout", 0.0),
                               _stage(reports_pb2.REPORT_STAGE_PRUNED_WITHOUT_RECALIBRATION, "holdout", 3.0)])
    job.result.reports[3].report.groups[0].ClearField("excess_accuracy_gap")
    assert tables.chosen_split(job) == "holdout"
    text = tables.comparison_table(job.result.reports, "holdout")
    assert "on the holdout split" in text
    young = next(line for line in text.splitlines() if line.startswith("young"))
    assert young.split()[-1] == "-"  # ψ_g unset: not a made-up 0
    assert "[" in young  # the last stage carries its interval
    job.spec.data.eval_split = "train"
    assert tables.chosen_split(job) == "train"


def test_job_report_of_a_failed_job_shows_its_error():
    job = jobs_pb2.Job(job_id="job-2", state=jobs_pb2.JOB_STATE_FAILED, done=True,
                       spec=jobs_pb2.JobSpec(kind=jobs_pb2.JOB_KIND_EVALUATE),
                       error=jobs_pb2.JobError(code="FAILED_PRECONDITION", message="model: not a model"))
    assert tables.job_report(job) == ("job job-2 (evaluate): failed\n"
                                      "error: FAILED_PRECONDITION: model: not a model")


def test_sweep_table_without_a_best_sparsity_says_so():
    result = jobs_pb2.JobResult()
    result.sweep.add(sparsity=0.5, tolerance_met=False, report=group_report(3.0))
    text = tables.sweep_table(result)
    assert "no probed sparsity kept every group within tolerance" in text
    assert text.splitlines()[-2].split()[-1] == "no"


def test_group_curves_follow_sparsity_order():
    result = jobs_pb2.JobResult()
    for sparsity, fraction in reversed(SWEEP):
        result.sweep.add(sparsity=sparsity, report=group_report(fraction))
    curves = group_curves(result)
    assert set(curves) == {"young", "old", "rare"}
    assert [s for s, _ in curves["old"]] == sorted(s for s, _ in SWEEP)
    accuracies = [a for _, a in curves["old"]]
    assert accuracies == sorted(accuracies, reverse=True)


def test_server_names_become_plain_file_names():
    assert transfers.safe_file_name("../../etc/passwd", "art-1") == "passwd"
    assert transfers.safe_file_name("..", "art-1") == "art-1"
    assert transfers.safe_file_name("", "art-1") == "art-1"
    assert transfers.safe_file_name("model.safetensors", "art-1") == "model.safetensors"


def test_damage_after_pruning_shows_the_recalibrated_evaluation_report_once():
    stdout = io.StringIO()
    damage = DamageAfterPruning(Output(stdout=stdout))
    reports = [(reports_pb2.REPORT_STAGE_DENSE, "test", 0.0),
               (reports_pb2.REPORT_STAGE_PRUNED, "train", 2.0),
               (reports_pb2.REPORT_STAGE_PRUNED, "test", 3.0),
               (reports_pb2.REPORT_STAGE_PRUNED_WITHOUT_RECALIBRATION, "test", 4.0)]
    for sequence, (stage, split, fraction) in enumerate(reports, 1):
        damage.see(jobs_pb2.JobEvent(sequence=sequence, progress=jobs_pb2.Progress(
            phase="prune", report=_stage(stage, split, fraction))))
    assert stdout.getvalue() == ""  # still collecting
    damage.see(_event(5, "finetune"))
    damage.see(_event(6, "finetune"))
    damage.show()
    text = stdout.getvalue()
    assert text.count("damage after pruning") == 1 and "pruned vs dense on the test split" in text
    old = next(line for line in text.splitlines() if line.startswith("old"))
    assert "78.0%" in old  # the fraction-3.0 report: recalibrated, test split
