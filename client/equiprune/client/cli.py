"""`equiprune`: the command-line client of an equiprune server.

    equiprune serve                                   # start a server (needs the `server` extra)
    equiprune demo                                    # the whole story on scikit-learn's digits
    equiprune upload dense.safetensors --kind model
    equiprune prune-finetune --model art-1f2e --dataset sample:digits --group-by cohort \\
        --sparsity 0.9 --epochs 3 --tolerance 0.02
    equiprune budget --model art-1f2e --dataset art-77aa --group-by race --plot sweep.png
    equiprune jobs --state running
    equiprune job watch job-3c9d
    equiprune deploy digits --model art-9a0b --group-by cohort --reference-job job-3c9d
    equiprune predict digits --instances requests.jsonl --out predictions.jsonl
    equiprune outcomes --from predictions.jsonl       # once the true labels are known
    equiprune metrics digits --window 1h              # per-group accuracy, ψ_g, confidence

--model and --dataset take an artifact id (art-…) or a URI the server imports (sample:digits,
a path under the server's import roots, s3://…; give --model-sha256/--dataset-sha256 for
anything but sample:). Global options (--server, --timeout, --retries, --json) may come
before or after the command. --json prints one JSON document on stdout (proto field names).

Exit codes: 0 success; 1 the job failed or was cancelled (or the server failed); 2 a usage or
validation error (`error: <field>: <problem>`); 3 the server could not be reached.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc

from .errors import EquipruneError, SpecError
from .runner import (EXIT_JOB_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, Output, finish, follow,
                     job_exit_code, to_dict)
from .sdk import DEFAULT_TARGET, EquipruneClient
from .specs import (ARTIFACT_KINDS, FINETUNE_METHODS, JOB_KINDS, JOB_STATES, PRUNING_KINDS, PRUNING_SCHEDULES,
                    PRUNING_SCOPES)
from . import serving_commands, specs, tables

SERVE_MISSING = "equiprune serve needs the server extra: pip install 'equiprune[server]'"
# Global options that take a value, for finding the command word before argparse runs.
_GLOBAL_WITH_VALUE = ("--server", "--timeout", "--retries")
_USAGE_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS,
                grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE,
                grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.UNAUTHENTICATED}
_UNREACHABLE_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    serve_argv = _serve_arguments(argv)
    if serve_argv is not None:
        return _serve(serve_argv)
    args = build_parser().parse_args(argv)
    out = Output(json=args.json)
    try:
        with EquipruneClient(args.server, timeout=args.timeout, retries=args.retries) as client:
            return args.handler(client, args, out)
    except SpecError as err:
        out.warn(f"error: {err.field}: {err.problem}")
        return EXIT_USAGE
    except EquipruneError as err:
        return _report_error(err, args.server, args.timeout, out)
    except BrokenPipeError:  # `equiprune jobs | head`: the reader left; say nothing more
        _silence_stdout()
        return EXIT_JOB_FAILED
    except OSError as err:  # a local file: unreadable, unwritable, disk full
        out.warn(f"error: {err}")
        return EXIT_JOB_FAILED
    except KeyboardInterrupt:
        return 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that flushing it at exit raises no second BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _report_error(err: EquipruneError, server: str, timeout: float, out: Output) -> int:
    if err.code in _UNREACHABLE_CODES:
        why = "did not answer in time" if err.code == grpc.StatusCode.DEADLINE_EXCEEDED else "is unreachable"
        out.warn(f"error: the equiprune server at {server} {why} ({err.code.name}: {err.message}).\n"
                 f"Is it running? Start one with `equiprune serve`, or point --server (or EQUIPRUNE_SERVER) "
                 f"at it; --timeout (now {timeout:g} s) sets how long a call may take.")
        return EXIT_UNREACHABLE
    if err.code in _USAGE_CODES:
        out.warn(f"error: {err.field}: {err.problem}" if err.field else f"error: {err.message}")
        return EXIT_USAGE
    out.warn(f"error: {err.code.name}: {err.message}")
    return EXIT_JOB_FAILED


# ------------------------------------------------------------------ serve

def _serve_arguments(argv: list[str]) -> list[str] | None:
    """The arguments after `serve` when the command is `serve`, else None."""
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in _GLOBAL_WITH_VALUE:
            i += 2
        elif token.startswith("-"):
            i += 1
        else:
            return argv[i + 1:] if token == "serve" else None
    return None


def _serve(argv: list[str]) -> int:
    try:
        from equiprune.service.launcher import main as launch
    except ImportError as err:
        print(SERVE_MISSING, file=sys.stderr)
        print(f"({err})", file=sys.stderr)
        return EXIT_USAGE
    return launch(argv) or EXIT_OK


# ------------------------------------------------------------------ the parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="equiprune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _global_options(parser, suppress=False)
    shared = argparse.ArgumentParser(add_help=False)
    _global_options(shared, suppress=True)
    sub = parser.add_subparsers(metavar="command", required=True)

    def command(name: str, handler, helptext: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=helptext, description=helptext, parents=[shared])
        if handler is not None:
            cmd.set_defaults(handler=handler)
        return cmd

    sub.add_parser("serve", help="start a server (arguments go to the server's launcher)", add_help=False)
    _artifact_commands(command)
    _job_commands(command, sub, shared)
    _submit_commands(command)
    serving_commands.add_commands(command)
    demo = command("demo", _demo, "the whole story against a running server: train, prune, fine-tune, compare")
    demo.add_argument("--dataset", help="local .npz to upload instead of the digits sample")
    demo.add_argument("--group-by", action="append", help="group attribute of --dataset (repeatable)")
    demo.add_argument("--arch", help="architecture to train on --dataset (default for digits: small_cnn)")
    demo.add_argument("--arch-kwargs", help="JSON object of architecture keyword arguments")
    demo.add_argument("--sparsity", type=float, default=0.9)
    demo.add_argument("--out", default="runs/demo", help="folder for the downloaded model and report")
    demo.add_argument("--deploy", metavar="NAME", help="then serve the fine-tuned model under NAME, its dense "
                      "model as shadow and the job's dense report as reference")
    return parser


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The options every command takes, before or after the command word. Subcommands get
    them with SUPPRESS defaults, so one given before the command is not reset after it."""
    def default(value):
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("--server", metavar="HOST:PORT",
                        default=default(os.environ.get("EQUIPRUNE_SERVER", DEFAULT_TARGET)),
                        help=f"server address (default: $EQUIPRUNE_SERVER or {DEFAULT_TARGET})")
    parser.add_argument("--timeout", type=float, metavar="SECONDS", default=default(30.0),
                        help="deadline of each call (default: 30)")
    parser.add_argument("--retries", type=int, default=default(5),
                        help="retries of a call when the server is unavailable (default: 5)")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="print one JSON document on stdout instead of tables")


def _artifact_commands(command) -> None:
    upload = command("upload", _upload, "upload a local file as an artifact (resumable)")
    upload.add_argument("path")
    upload.add_argument("--kind", required=True, choices=ARTIFACT_KINDS.choices())
    upload.add_argument("--name", help="display name (default: the file name)")
    imported = command("import", _import, "have the server import a URI as an artifact")
    imported.add_argument("uri")
    imported.add_argument("--kind", required=True, choices=ARTIFACT_KINDS.choices())
    imported.add_argument("--sha256", default="", help="the content's sha256 (required except for sample:)")
    imported.add_argument("--name", default="", help="display name")
    listed = command("artifacts", _artifacts, "list stored artifacts, newest first")
    listed.add_argument("--kind", choices=ARTIFACT_KINDS.choices())
    download = command("download", _download, "download an artifact (resumable, verified)")
    download.add_argument("artifact_id")
    download.add_argument("path", help="file to write, or a directory to write into under the artifact's name")


def _job_commands(command, sub, shared) -> None:
    listed = command("jobs", _jobs, "list jobs, newest first")
    listed.add_argument("--state", action="append", default=[], choices=JOB_STATES.choices(),
                        help="only jobs in this state (repeatable)")
    listed.add_argument("--kind", choices=JOB_KINDS.choices())
    job = command("job", None, "one job: get, watch, wait or cancel")
    actions = job.add_subparsers(metavar="action", required=True)
    for name, handler, helptext in (("get", _job_get, "show a job"),
                                    ("watch", _job_watch, "follow a job's progress to its end"),
                                    ("wait", _job_wait, "wait for a job to finish"),
                                    ("cancel", _job_cancel, "cancel a job")):
        action = actions.add_parser(name, help=helptext, description=helptext, parents=[shared])
        action.add_argument("job_id")
        action.set_defaults(handler=handler)
        if name in ("watch", "wait"):
            action.add_argument("--download-dir", help="download the job's outputs here when it succeeds")
        if name == "wait":
            action.add_argument("--wait-timeout", type=float, help="give up after this many seconds")


def _submit_commands(command) -> None:
    for name, kind, helptext in (
            ("train", "train", "train a dense model from scratch"),
            ("evaluate", "evaluate", "per-group report of a model"),
            ("diagnose", "diagnose", "per-group gradient and curvature diagnostics"),
            ("prune", "prune", "prune a model and report the per-group damage"),
            ("finetune", "finetune", "fair fine-tuning of a pruned model"),
            ("prune-finetune", "prune_and_finetune", "prune, then fine-tune, in one job"),
            ("budget", "budget", "highest sparsity at which every group stays within tolerance")):
        cmd = command(name, _submit, helptext)
        cmd.set_defaults(job_kind=kind)
        _job_arguments(cmd, kind)


def _job_arguments(cmd: argparse.ArgumentParser, kind: str) -> None:
    if kind != "train":
        cmd.add_argument("--model", required=True, help="artifact id (art-…) or URI")
        cmd.add_argument("--model-sha256", default="", help="sha256 of a --model URI")
    cmd.add_argument("--dataset", required=True, help="artifact id (art-…) or URI, e.g. sample:digits")
    cmd.add_argument("--dataset-sha256", default="", help="sha256 of a --dataset URI")
    cmd.add_argument("--group-by", action="append", required=kind != "train", default=[],
                     help="group attribute (repeatable: intersectional groups)")
    cmd.add_argument("--train-split", help="split trained on (default: train)")
    cmd.add_argument("--eval-split", help="split reported on (default: test)")
    if kind != "train":
        cmd.add_argument("--tolerance", type=float, help="ε: allowed excess accuracy gap ψ_g (default: 0.01)")
        cmd.add_argument("--min-group-size", type=int, help="smaller groups are shown, not judged (default: 30)")
    if kind in ("prune", "prune_and_finetune", "diagnose", "budget"):
        if kind != "budget":
            cmd.add_argument("--sparsity", type=float, help="fraction of prunable weights removed, in (0, 1)")
        cmd.add_argument("--kind", default="unstructured", choices=PRUNING_KINDS.choices())
        cmd.add_argument("--scope", choices=PRUNING_SCOPES.choices())
    if kind in ("prune", "prune_and_finetune"):
        cmd.add_argument("--schedule", choices=PRUNING_SCHEDULES.choices())
        cmd.add_argument("--diagnose", action="store_true", help="diagnose the dense model first")
    if kind in ("finetune", "prune_and_finetune", "budget"):
        cmd.add_argument("--method", choices=FINETUNE_METHODS.choices(),
                         help="fine-tuning objective (default: the server's fair default, fair_distill)"
                         + (" (budget: fine-tune every probe when given)" if kind == "budget" else ""))
        cmd.add_argument("--dual-lr", type=float,
                         help="integral gain of the dual step, multiplier change per epoch per unit violation (default: 10)")
        if kind != "budget":
            cmd.add_argument("--no-output-calibration", action="store_true",
                             help="fair_distill: skip the output calibration on the held-out constraint split "
                                  "(the primal step then trains on the whole training split)")
    if kind in ("finetune", "prune_and_finetune", "budget", "train"):
        cmd.add_argument("--epochs", type=int)
        cmd.add_argument("--lr", type=float)
    if kind in ("finetune", "prune_and_finetune", "train"):
        cmd.add_argument("--seed", type=int)
    if kind == "train":
        cmd.add_argument("--arch", required=True, help="registered architecture, e.g. small_cnn")
        cmd.add_argument("--arch-kwargs", help="JSON object of architecture keyword arguments")
    if kind == "diagnose":
        cmd.add_argument("--probes", type=int, help="Hutchinson probes (default: 10)")
        cmd.add_argument("--samples-per-group", type=int, help="samples diagnosed per group (default: 1000)")
    if kind == "budget":
        cmd.add_argument("--low", type=float, help="lowest sparsity tried (default: 0.5)")
        cmd.add_argument("--high", type=float, help="highest sparsity tried (default: 0.95)")
        cmd.add_argument("--resolution", type=float, help="stop when the bracket is this narrow (default: 0.025)")
        cmd.add_argument("--max-probes", type=int, help="most probes (default: 8)")
        cmd.add_argument("--require-confidence", action="store_true",
                         help="judge every ψ_g by its upper 95%% bound")
        cmd.add_argument("--plot", metavar="PNG", help="write per-group accuracy vs sparsity here (needs matplotlib)")
    if kind not in ("evaluate",):
        cmd.add_argument("--workers", type=int, help="data-parallel workers (Ray Train)")
        cmd.add_argument("--gpus", type=int, help="GPUs per worker")
    cmd.add_argument("--request-id", help="idempotency key: resubmitting with it never starts a second job")
    cmd.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    cmd.add_argument("--download-dir", help="download the job's outputs here when it succeeds")


# ------------------------------------------------------------------ handlers: artifacts

def _upload(client: EquipruneClient, args, out: Output) -> int:
    progress = out.byte_progress(f"upload {os.path.basename(args.path)}")
    try:
        artifact = client.upload_file(args.path, args.kind, display_name=args.name, on_progress=progress)
    finally:
        if progress:
            progress.close()
    out.say(tables.artifact_line(artifact))
    out.document(to_dict(artifact))
    return EXIT_OK


def _import(client: EquipruneClient, args, out: Output) -> int:
    artifact = client.import_uri(args.uri, args.kind, sha256=args.sha256, display_name=args.name)
    out.say(tables.artifact_line(artifact))
    out.document(to_dict(artifact))
    return EXIT_OK


def _artifacts(client: EquipruneClient, args, out: Output) -> int:
    artifacts = list(client.list_artifacts(kind=args.kind))
    out.say(tables.artifacts_table(artifacts))
    out.document({"artifacts": [to_dict(a) for a in artifacts]})
    return EXIT_OK


def _download(client: EquipruneClient, args, out: Output) -> int:
    progress = out.byte_progress(f"download {args.artifact_id}")
    try:
        artifact, path = client.download_to(args.artifact_id, args.path, on_progress=progress)
    finally:
        if progress:
            progress.close()
    out.say(f"{tables.artifact_line(artifact)}\n→ {path}")
    out.document({"artifact": to_dict(artifact), "path": str(path)})
    return EXIT_OK


# ------------------------------------------------------------------ handlers: jobs

def _jobs(client: EquipruneClient, args, out: Output) -> int:
    jobs = list(client.list_jobs(states=args.state, kind=args.kind))
    out.say(tables.jobs_table(jobs))
    out.document({"jobs": [to_dict(j) for j in jobs]})
    return EXIT_OK


def _job_get(client: EquipruneClient, args, out: Output) -> int:
    job = client.get_job(args.job_id)
    out.say(tables.job_report(job))
    out.document(to_dict(job))
    return EXIT_OK


def _job_watch(client: EquipruneClient, args, out: Output) -> int:
    job = follow(client, client.get_job(args.job_id), out)
    return finish(client, job, out, args.download_dir)


def _job_wait(client: EquipruneClient, args, out: Output) -> int:
    job = client.wait_job(args.job_id, timeout=args.wait_timeout)
    if not job.done:
        out.say(tables.job_headline(job))
        out.document({"job": to_dict(job), "downloads": []})
        return job_exit_code(job, out)
    return finish(client, job, out, args.download_dir)


def _job_cancel(client: EquipruneClient, args, out: Output) -> int:
    job = client.cancel_job(args.job_id)
    out.say(tables.job_headline(job))
    out.document(to_dict(job))
    return EXIT_OK


def _submit(client: EquipruneClient, args, out: Output) -> int:
    spec = spec_from_args(args)
    plot = getattr(args, "plot", None)
    if plot:
        _check_plot_possible()
    job = client.create_job(spec, request_id=args.request_id)
    if args.no_wait:
        out.say(f"submitted {job.job_id}: `equiprune job watch {job.job_id}` follows it")
        out.document({"job": to_dict(job), "downloads": []})
        return EXIT_OK
    out.say(f"submitted {job.job_id}")
    job = follow(client, job, out)
    return finish(client, job, out, args.download_dir, extra=(lambda done: _write_plot(done, plot, out)) if plot else None)


def spec_from_args(args):
    """The JobSpec the flags of a submit command describe."""
    def opt(name):
        return getattr(args, name, None)

    common = dict(dataset=args.dataset, dataset_sha256=args.dataset_sha256)
    data = dict(train_split=args.train_split, eval_split=args.eval_split)
    judged = dict(group_by=args.group_by, tolerance=opt("tolerance"), min_group_size=opt("min_group_size"), **data)
    model = dict(model=opt("model"), model_sha256=opt("model_sha256") or "")
    compute = dict(workers=opt("workers"), gpus=opt("gpus"))
    kind = args.job_kind
    if kind == "train":
        return specs.train_spec(architecture=args.arch, architecture_kwargs=args.arch_kwargs, epochs=args.epochs,
                                lr=args.lr, seed=args.seed, group_by=args.group_by, **data, **common, **compute)
    if kind == "evaluate":
        return specs.evaluate_spec(**model, **common, **judged)
    if kind == "diagnose":
        return specs.diagnose_spec(**model, **common, group_by=args.group_by, tolerance=args.tolerance,
                                   min_group_size=args.min_group_size, probes=args.probes,
                                   samples_per_group=args.samples_per_group, sparsity=args.sparsity,
                                   kind=args.kind, scope=args.scope, gpus=args.gpus)
    if kind == "prune":
        return specs.prune_spec(**model, **common, **judged, **compute, sparsity=args.sparsity, kind=args.kind,
                                scope=args.scope, schedule=args.schedule, diagnose=args.diagnose)
    if kind == "finetune":
        return specs.finetune_spec(**model, **common, **judged, **compute, method=args.method, epochs=args.epochs,
                                   lr=args.lr, dual_lr=args.dual_lr, seed=args.seed,
                                   calibrate_outputs=False if args.no_output_calibration else None)
    if kind == "prune_and_finetune":
        return specs.prune_and_finetune_spec(**model, **common, **judged, **compute, sparsity=args.sparsity,
                                             kind=args.kind, scope=args.scope, schedule=args.schedule,
                                             method=args.method, epochs=args.epochs, lr=args.lr,
                                             dual_lr=args.dual_lr, seed=args.seed, diagnose=args.diagnose,
                                             calibrate_outputs=False if args.no_output_calibration else None)
    if kind == "budget":
        return specs.budget_spec(**model, **common, **judged, **compute, low=args.low, high=args.high,
                                 resolution=args.resolution, max_probes=args.max_probes,
                                 require_confidence=args.require_confidence, kind=args.kind, scope=args.scope,
                                 method=args.method, epochs=args.epochs, lr=args.lr, dual_lr=args.dual_lr)
    raise SpecError("command", f"unknown job kind {kind!r}")


def _check_plot_possible() -> None:
    """Refuse --plot before submitting anything when matplotlib is missing."""
    import importlib.util

    from .plots import MISSING_MATPLOTLIB

    try:
        found = importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise SpecError("plot", MISSING_MATPLOTLIB)


def _write_plot(job, path: str, out: Output) -> None:
    from .plots import PlotUnavailable, plot_sweep

    try:
        plot_sweep(job.result, path, title=f"{job.job_id}: per-group accuracy vs sparsity")
    except (PlotUnavailable, ValueError) as err:
        out.warn(f"error: {err}")
        return
    out.say(f"plot → {path}")


def _demo(client: EquipruneClient, args, out: Output) -> int:
    from .demo import run_demo

    return run_demo(client, args, out)


if __name__ == "__main__":
    sys.exit(main())
