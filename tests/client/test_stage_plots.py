"""The stage PNG of a prune / fine-tune job: its plotted series, the file, `equiprune plot`."""

from __future__ import annotations

import pytest

from equiprune.client import stage_plots
from equiprune.v1 import jobs_pb2, reports_pb2

PNG = b"\x89PNG\r\n\x1a\n"


def _group(name, n, acc, psi=None, sufficient=True):
    g = reports_pb2.GroupMetrics(group=name, n=n, accuracy=acc, accuracy_ci_low=acc - 0.02,
                                 accuracy_ci_high=acc + 0.02, sufficient_data=sufficient)
    if psi is not None:
        g.excess_accuracy_gap = psi
        g.excess_accuracy_gap_ci_low, g.excess_accuracy_gap_ci_high = psi - 0.01, psi + 0.01
    return g


def _stage(stage, split, groups):
    report = reports_pb2.GroupReport(groups=groups, summary=reports_pb2.DisparitySummary(tolerance=0.02))
    return reports_pb2.StageReport(stage=stage, split=split, report=report)


def hand_built_result() -> jobs_pb2.JobResult:
    S = reports_pb2
    result = jobs_pb2.JobResult()
    for split, shift in (("train", 0.05), ("test", 0.0)):
        result.reports.extend([
            _stage(S.REPORT_STAGE_DENSE, split, [_group("a", 400, 0.95 + shift), _group("b", 12, 0.90 + shift, sufficient=False)]),
            _stage(S.REPORT_STAGE_FINETUNED, split, [_group("a", 400, 0.93, 0.004), _group("b", 12, 0.86, 0.02, False)]),
            _stage(S.REPORT_STAGE_PRUNED, split, [_group("a", 400, 0.80, 0.01), _group("b", 12, 0.70, 0.05, False)]),
        ])
    return result


def test_series_picks_the_evaluation_split_in_pipeline_order():
    series = stage_plots.stage_series(hand_built_result())
    assert series.split == "test"
    assert series.stages == ["dense", "pruned", "finetuned"]
    assert series.groups == ["a", "b"]
    assert series.accuracy["dense"][0] == pytest.approx((0.95, 0.93, 0.97))
    assert set(series.psi) == {"pruned", "finetuned"}
    assert series.psi["pruned"][1] == pytest.approx((0.05, 0.04, 0.06))
    assert series.insufficient == {"b"} and series.tolerance == 0.02
    assert stage_plots.stage_series(hand_built_result(), "train").accuracy["dense"][0][0] == pytest.approx(1.0)


def test_series_without_the_split_says_which_exist():
    with pytest.raises(ValueError, match=r"no per-group report on split 'val' \(it has: test, train\)"):
        stage_plots.stage_series(hand_built_result(), "val")


def test_plot_stages_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "stages.png"
    stage_plots.plot_stages(hand_built_result(), path, title="job-1")
    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5000


class _StubClient:
    def __init__(self, job):
        self.job = job

    def get_job(self, job_id):
        return self.job


def _args(tmp_path, **kw):
    import types
    return types.SimpleNamespace(job_id="job-1", out=str(tmp_path / "s.png"), split=None, **kw)


def test_plot_command_refuses_a_job_without_reports(tmp_path):
    from equiprune.client import job_commands
    from equiprune.client.errors import SpecError
    from equiprune.client.runner import Output

    job = jobs_pb2.Job(job_id="job-1", done=True)
    with pytest.raises(SpecError, match="job-1 has no per-group reports to plot"):
        job_commands._plot(_StubClient(job), _args(tmp_path), Output(json=False))


def test_plot_command_draws_a_job_with_reports(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from equiprune.client import job_commands
    from equiprune.client.runner import Output

    job = jobs_pb2.Job(job_id="job-1", done=True, result=hand_built_result())
    assert job_commands._plot(_StubClient(job), _args(tmp_path), Output(json=False)) == 0
    assert (tmp_path / "s.png").read_bytes()[:8] == PNG
    assert "plot →" in capsys.readouterr().out


def test_cli_prune_finetune_plot_and_plot_command(run, server, tmp_path):
    pytest.importorskip("matplotlib")
    model = server.artifacts.store(1, b"weights" * 10, "dense.safetensors", "upload").artifact_id
    png = tmp_path / "not-yet" / "pf.png"  # a folder that --download-dir would only make later
    code, out, err = run("prune-finetune", "--model", model, "--dataset", "sample:digits", "--group-by", "cohort",
                         "--sparsity", "0.9", "--epochs", "2", "--tolerance", "2", "--plot", str(png))
    assert code == 0, err
    assert png.read_bytes()[:8] == PNG
    job_id = next(w for w in out.split() if w.startswith("job-"))
    again = tmp_path / "again.png"
    code, out, err = run("plot", job_id, "--out", str(again))
    assert code == 0, err
    assert again.read_bytes()[:8] == PNG
    code, out, err = run("plot", job_id, "--out", str(again), "--split", "nope")
    assert code == 2 and "error: split:" in err
