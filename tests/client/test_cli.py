"""The `equiprune` CLI against the fake server: tables, JSON, plots, downloads, exit codes."""

from __future__ import annotations

import json
import socket
import sys
import types

import pytest

from equiprune.client import cli
from equiprune.v1 import jobs_pb2


@pytest.fixture
def model_id(server):
    return server.artifacts.store(1, b"weights" * 10, "dense.safetensors", "upload").artifact_id


def _prune_finetune(model_id: str, *extra: str) -> list[str]:
    return ["prune-finetune", "--model", model_id, "--dataset", "sample:digits", "--group-by", "cohort",
            "--sparsity", "0.9", "--method", "ceag", "--epochs", "2", "--tolerance", "2", *extra]


def test_prune_finetune_prints_the_per_group_table(run, model_id):
    code, out, err = run(*_prune_finetune(model_id))
    assert code == 0, err
    assert "per-group accuracy on the test split" in out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("group"))
    assert header.split()[:5] == ["group", "n", "dense", "pruned", "ψ_g"] and "fine-tuned [95% CI]" in header
    old = next(line for line in lines if line.startswith("old "))
    assert old.split()[:6] == ["old", "180", "96.0%", "78.0%", "+5.78", "90.0%"] and old.endswith("+1.93")
    assert any(line.startswith("overall") for line in lines)
    assert ("fine-tuned: max ψ_g +1.93 (old), worst group old 90.0%, tolerance 2.00 points met: yes "
            "(with 95% confidence: no)") in out
    assert "rare *" in out and "fewer than 10 samples" in out
    assert "finetune" in err  # progress went to stderr


def test_json_output_is_one_parseable_document(run, model_id):
    code, out, err = run(*_prune_finetune(model_id), "--json")
    assert code == 0, err
    document = json.loads(out)
    job = document["job"]
    assert job["state"] == "JOB_STATE_SUCCEEDED" and job["job_id"].startswith("job-")
    assert {r["stage"] for r in job["result"]["reports"]} == {"REPORT_STAGE_DENSE", "REPORT_STAGE_PRUNED",
                                                             "REPORT_STAGE_FINETUNED"}
    assert job["spec"]["pruning"]["sparsity"] == 0.9 and document["downloads"] == []
    assert "finetune" not in err  # no progress in JSON mode


def test_global_options_may_follow_the_command(server, capsys, model_id):
    code = cli.main([*_prune_finetune(model_id), "--server", server.target, "--json", "--no-wait"])
    document = json.loads(capsys.readouterr().out)
    assert code == 0 and document["job"]["state"] == "JOB_STATE_QUEUED"


def test_server_defaults_to_the_environment(server, capsys, monkeypatch):
    monkeypatch.setenv("EQUIPRUNE_SERVER", server.target)
    assert cli.main(["artifacts", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"artifacts": []}


def test_budget_prints_the_sweep_and_writes_a_png(run, model_id, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "sweep.png"
    code, out, err = run("budget", "--model", model_id, "--dataset", "sample:digits", "--group-by", "cohort",
                         "--tolerance", "2", "--plot", str(png))
    assert code == 0, err
    assert "highest sparsity within tolerance: 0.838" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("0.950"))
    assert row.split()[-1] == "no"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_download_dir_fetches_the_outputs(run, model_id, server, tmp_path):
    code, out, err = run(*_prune_finetune(model_id, "--download-dir", str(tmp_path / "out")))
    assert code == 0, err
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["model.safetensors", "report.json"]
    assert json.loads((tmp_path / "out" / "report.json").read_text())["job"].startswith("job-")


def test_failed_job_exits_1_with_its_error(run, model_id):
    code, out, err = run("prune", "--model", model_id, "--dataset", "sample:digits", "--group-by", "missing",
                         "--sparsity", "0.5")
    assert code == 1
    assert "failed: INVALID_ARGUMENT: spec.data.group_by: the dataset has no attribute 'missing'" in err


def test_refused_request_exits_2_naming_the_field(run, server):
    code, out, err = run("evaluate", "--model", "art-ffffffff", "--dataset", "sample:digits", "--group-by", "g")
    assert code == 2
    assert err.strip() == "error: spec.model.artifact_id: no artifact 'art-ffffffff'"
    assert server.faults.count("CreateJob") == 1


def test_invalid_flag_value_exits_2_before_any_call(run, server, model_id):
    # Ranges are the server's to check (one place); what only the client can see is refused here.
    code, out, err = run("evaluate", "--model", model_id, "--model-sha256", "ab", "--dataset", "sample:digits",
                         "--group-by", "g")
    assert code == 2 and err.strip().startswith("error: model_sha256: ")
    code, out, err = run("train", "--dataset", "sample:digits", "--arch", "mlp", "--arch-kwargs", "[1]")
    assert code == 2 and err.strip() == "error: architecture_kwargs: must be a JSON object"
    assert server.faults.count("CreateJob") == 0


def test_unknown_choice_is_a_usage_error(run):
    with pytest.raises(SystemExit) as caught:
        run("prune-finetune", "--model", "art-1", "--dataset", "d", "--group-by", "g", "--method", "fancy")
    assert caught.value.code == 2


def test_unreachable_server_exits_3(capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"127.0.0.1:{port}"  # closed again: nothing listens there
    code = cli.main(["--server", address, "--timeout", "1", "--retries", "0", "--wait-for-server", "0", "jobs"])
    err = capsys.readouterr().err
    assert code == 3
    assert address in err and "equiprune serve" in err


def test_upload_download_and_list(run, tmp_path):
    source = tmp_path / "data.npz"
    source.write_bytes(bytes(range(256)) * 300)
    code, out, err = run("upload", str(source), "--kind", "dataset", "--json")
    assert code == 0, err
    artifact = json.loads(out)
    assert artifact["kind"] == "ARTIFACT_KIND_DATASET" and int(artifact["size_bytes"]) == 76_800
    code, out, err = run("download", artifact["artifact_id"], str(tmp_path / "copy.npz"))
    assert code == 0 and (tmp_path / "copy.npz").read_bytes() == source.read_bytes()
    code, out, err = run("artifacts", "--kind", "dataset")
    assert code == 0 and artifact["artifact_id"] in out and "data.npz" in out
    code, out, err = run("import", "s3://bucket/x.npz", "--kind", "dataset")
    assert code == 2 and err.strip() == "error: source.sha256: required for s3://bucket/x.npz"
    code, out, err = run("upload", str(source), "--kind", "dataset", "--id-only")  # for MODEL=$(…)
    assert code == 0 and out.strip().startswith("art-") and "\n" not in out.strip() and err == ""


def test_job_subcommands(run, server, model_id):
    server.jobs.gate.clear()
    code, out, err = run(*_prune_finetune(model_id, "--no-wait", "--request-id", "cli-test-1", "--json"))
    job_id = json.loads(out)["job"]["job_id"]
    code, out, err = run(*_prune_finetune(model_id, "--no-wait", "--request-id", "cli-test-1", "--json"))
    assert json.loads(out)["job"]["job_id"] == job_id  # same key: same job
    code, out, err = run("job", "wait", job_id, "--wait-timeout", "0.2")
    assert code == 1 and "has not finished" in err
    code, out, err = run("jobs", "--state", "running", "--state", "queued")
    assert code == 0 and job_id in out
    server.jobs.gate.set()
    code, out, err = run("job", "watch", job_id)
    assert code == 0 and "fine-tuned [95% CI]" in out
    code, out, err = run("job", "get", job_id, "--json")
    assert code == 0 and json.loads(out)["done"] is True
    code, out, err = run("job", "cancel", job_id)
    assert code == 0 and "succeeded" in out  # finished jobs stay as they are
    code, out, err = run("job", "get", "job-nope")
    assert code == 2 and err.strip() == "error: job_id: no job 'job-nope'"


def test_demo_tells_the_whole_story(run, server, tmp_path):
    code, out, err = run("demo", "--out", str(tmp_path / "demo"))
    assert code == 0, err
    assert out.index("damage after pruning") < out.index("per-group accuracy on the test split")
    assert out.count("damage after pruning") == 1  # the most telling of the four pruned reports
    assert "\npruned vs dense on the test split" in out
    create = server.faults.requests["CreateJob"]
    train, baseline, compress = create[0].spec, create[1].spec, create[2].spec
    assert train.train.architecture == "mlp" and train.train.epochs == 20
    assert json.loads(train.train.architecture_kwargs)["in_features"] == 64
    assert list(compress.data.group_by) == ["cohort"] and compress.data.tolerance == 0.02
    assert compress.finetune.epochs == 10 and compress.finetune.method == jobs_pb2.FINETUNE_METHOD_FAIR_DISTILL and compress.pruning.sparsity == 0.9
    assert compress.pruning.keep_first_and_last is False  # an MLP of three layers: all pruned
    assert baseline.finetune.method == jobs_pb2.FINETUNE_METHOD_NAIVE  # naive, for comparison
    assert baseline.pruning == compress.pruning and baseline.data == compress.data
    assert "repair compared (after fine-tuning)" in out and "naive fine-tuning" in out
    assert compress.data.min_group_size == 10
    assert "\nverdict: " in out and "overall accuracy: dense" in out
    assert f"picture: {tmp_path / 'demo' / 'groups.png'}" in out
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["demo.json", "dense.safetensors", "groups.png",
                                                                     "model.safetensors", "report.json"]
    assert (tmp_path / "demo" / "groups.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert record["model"].startswith("art-") and record["fair_job"].startswith("job-")

    # --deploy serves what that demo built: no job runs again.
    jobs_before = len(server.faults.requests["CreateJob"])
    code, out, err = run("demo", "--out", str(tmp_path / "demo"), "--deploy", "digits")
    assert code == 0, err
    assert len(server.faults.requests["CreateJob"]) == jobs_before
    deployed = server.faults.requests["DeployModel"][-1]
    assert (deployed.name, deployed.artifact_id, deployed.shadow_artifact_id, deployed.reference_job_id) == (
        "digits", record["model"], record["dense_model"], record["fair_job"])
    assert "serving the model the demo in" in out


def test_demo_deploy_without_an_earlier_demo_runs_it_first(run, server, tmp_path):
    code, out, err = run("demo", "--out", str(tmp_path / "fresh"), "--deploy", "digits")
    assert code == 0, err
    assert "no earlier demo in" in out and "\nverdict: " in out
    assert len(server.faults.requests["CreateJob"]) == 3
    record = json.loads((tmp_path / "fresh" / "demo.json").read_text())
    assert server.faults.requests["DeployModel"][-1].artifact_id == record["model"]


def test_demo_with_a_dataset_needs_the_architecture(run, tmp_path):
    data = tmp_path / "mine.npz"
    data.write_bytes(b"npz")
    code, out, err = run("demo", "--dataset", str(data), "--group-by", "race")
    assert code == 2 and err.strip().startswith("error: arch: required with --dataset")


def test_serve_forwards_its_arguments(monkeypatch):
    seen = []
    launcher = types.ModuleType("equiprune.service.launcher")
    launcher.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "equiprune.service.launcher", launcher)
    assert cli.main(["--server", "x:1", "serve", "--port", "9000", "--help"]) == 0
    assert seen == [["--port", "9000", "--help"]]


def test_serve_without_the_server_extra_says_how_to_get_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "equiprune.service.launcher", None)  # import raises ImportError
    assert cli.main(["serve"]) == 2
    assert cli.SERVE_MISSING in capsys.readouterr().err


def _all_parsers(parser):
    import argparse

    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                if name != "serve":  # its arguments belong to the server's launcher
                    yield from _all_parsers(child)


def test_every_command_has_working_help(capsys):
    parsers = list(_all_parsers(cli.build_parser()))
    assert len(parsers) > 15
    for parser in parsers:
        with pytest.raises(SystemExit) as caught:
            parser.parse_args(["--help"])
        assert caught.value.code == 0
        assert "--server" in capsys.readouterr().out


def test_global_options_before_the_command_survive_it(server, capsys):
    assert cli.main(["--json", "--server", server.target, "--timeout", "5", "jobs"]) == 0
    assert json.loads(capsys.readouterr().out) == {"jobs": []}


@pytest.mark.parametrize("option, value, field", [("--timeout", "0", "timeout"), ("--retries", "-1", "retries")])
def test_bad_global_options_exit_2(option, value, field, capsys):
    assert cli.main([option, value, "jobs"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {field}: must be")


def test_a_bad_option_is_said_before_any_wait_for_the_server(capsys, tmp_path):
    """Nothing listens: a usage error must not wait --wait-for-server (120 s) first."""
    import time

    for argv, field in ((["--timeout", "0"], "timeout"), (["--retries", "-1"], "retries"),
                        (["--token-file", str(tmp_path / "none.token")], "token_file")):
        started = time.monotonic()
        assert cli.main(["--server", "127.0.0.1:9", *argv, "jobs"]) == 2
        assert time.monotonic() - started < 5
        err = capsys.readouterr().err
        assert err.startswith(f"error: {field}: ") and "waiting for" not in err


def test_prune_first_and_last_reaches_the_spec_of_every_pruning_command(run, server, model_id):
    for argv in (_prune_finetune(model_id, "--prune-first-and-last"),
                 ["prune", "--model", model_id, "--dataset", "sample:digits", "--group-by", "cohort",
                  "--sparsity", "0.5", "--prune-first-and-last"],
                 ["budget", "--model", model_id, "--dataset", "sample:digits", "--group-by", "cohort",
                  "--prune-first-and-last"]):
        code, out, err = run(*argv)
        assert code in (0, 1), err
        assert server.faults.requests["CreateJob"][-1].spec.pruning.keep_first_and_last is False
    run(*_prune_finetune(model_id))
    assert not server.faults.requests["CreateJob"][-1].spec.pruning.HasField("keep_first_and_last")  # server default


def test_demo_deploy_runs_again_for_other_settings_or_a_broken_record(run, server, tmp_path):
    folder = tmp_path / "demo"
    assert run("demo", "--out", str(folder))[0] == 0
    jobs = len(server.faults.requests["CreateJob"])
    code, out, err = run("demo", "--out", str(folder), "--sparsity", "0.8", "--deploy", "digits")
    assert code == 0, err
    assert "was built with other settings" in out and len(server.faults.requests["CreateJob"]) == jobs + 3
    for broken in ("[1, 2]", '{"server": 5}', "not json"):
        (folder / "demo.json").write_text(broken)
        jobs = len(server.faults.requests["CreateJob"])
        code, out, err = run("demo", "--out", str(folder), "--deploy", "digits")
        assert code == 0 and "Traceback" not in err, err
        assert len(server.faults.requests["CreateJob"]) == jobs + 3  # ran the demo again, saying why
        assert "not a demo record" in out or "no earlier demo" in out
