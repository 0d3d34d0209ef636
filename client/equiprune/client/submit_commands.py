"""The submit commands of `equiprune` (train, evaluate, diagnose, prune, finetune, prune-finetune,
budget): their flags, the JobSpec those flags describe (`spec_from_args`), and the run of a
submitted job to its end, with the optional --plot (budget: the sweep; prune/finetune: the stages).

    equiprune prune-finetune --model art-1f2e --dataset sample:digits --group-by cohort \\
        --sparsity 0.9 --epochs 3 --tolerance 2

Apart from cli.py like serving_commands: the flags per job kind are most of the CLI's surface.
"""

from __future__ import annotations

import argparse

from equiprune.text.tolerance import tolerance_argument, tolerance_help

from . import specs
from .runner import EXIT_OK, Output, finish, follow, to_dict
from .sdk import EquipruneClient
from .specs import FINETUNE_METHODS, PRUNING_KINDS, PRUNING_SCHEDULES, PRUNING_SCOPES, SpecError


def add_commands(command) -> None:
    """Register the submit commands with cli.build_parser's `command(name, handler, help)`."""
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
        cmd.add_argument("--tolerance", type=tolerance_argument, help=tolerance_help(None))
        cmd.add_argument("--min-group-size", type=int, help="smaller groups are shown, not judged (default: 30)")
    if kind in ("prune", "prune_and_finetune", "diagnose", "budget"):
        if kind != "budget":
            cmd.add_argument("--sparsity", type=float, help="fraction of prunable weights removed, in (0, 1)")
        cmd.add_argument("--kind", default="unstructured", choices=PRUNING_KINDS.choices())
        cmd.add_argument("--scope", choices=PRUNING_SCOPES.choices())
        if kind != "diagnose":
            cmd.add_argument("--prune-first-and-last", dest="keep_first_and_last", action="store_false", default=None,
                             help="prune the first and the last layer too (the server keeps them dense by default)")
    if kind in ("prune", "prune_and_finetune"):
        cmd.add_argument("--schedule", choices=PRUNING_SCHEDULES.choices())
        cmd.add_argument("--diagnose", action="store_true", help="diagnose the dense model first")
    if kind in ("prune", "finetune", "prune_and_finetune"):
        cmd.add_argument("--plot", metavar="PNG",
                         help="write per-group accuracy and ψ_g by stage here (needs matplotlib)")
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
        cmd.add_argument("--low", type=float, help="first probe and bottom of the bracket; when it breaks ε the "
                                                    "search halves it (default: 0.1)")
        cmd.add_argument("--high", type=float, help="top of the bracket (default: 0.95)")
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
                                scope=args.scope, schedule=args.schedule, diagnose=args.diagnose,
                                keep_first_and_last=args.keep_first_and_last)
    if kind == "finetune":
        return specs.finetune_spec(**model, **common, **judged, **compute, method=args.method, epochs=args.epochs,
                                   lr=args.lr, dual_lr=args.dual_lr, seed=args.seed,
                                   calibrate_outputs=False if args.no_output_calibration else None)
    if kind == "prune_and_finetune":
        return specs.prune_and_finetune_spec(**model, **common, **judged, **compute, sparsity=args.sparsity,
                                             kind=args.kind, scope=args.scope, schedule=args.schedule,
                                             method=args.method, epochs=args.epochs, lr=args.lr,
                                             dual_lr=args.dual_lr, seed=args.seed, diagnose=args.diagnose,
                                             calibrate_outputs=False if args.no_output_calibration else None,
                                             keep_first_and_last=args.keep_first_and_last)
    if kind == "budget":
        return specs.budget_spec(**model, **common, **judged, **compute, low=args.low, high=args.high,
                                 resolution=args.resolution, max_probes=args.max_probes,
                                 require_confidence=args.require_confidence, kind=args.kind, scope=args.scope,
                                 method=args.method, epochs=args.epochs, lr=args.lr, dual_lr=args.dual_lr,
                                 keep_first_and_last=args.keep_first_and_last)
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
    from .report_tables import chosen_split
    from .stage_plots import plot_stages

    try:
        if job.result.sweep:
            plot_sweep(job.result, path, title=f"{job.job_id}: per-group accuracy vs sparsity")
        else:
            plot_stages(job.result, path, split=chosen_split(job), title=f"{job.job_id}: per-group accuracy by stage")
    except (PlotUnavailable, ValueError) as err:
        out.warn(f"error: {err}")
        return
    out.say(f"plot → {path}")
