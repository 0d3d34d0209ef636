"""The job commands of `equiprune`: jobs (the list) and job get/watch/wait/cancel.

    equiprune jobs --state running
    equiprune job watch job-3c9d
    equiprune plot job-3c9d --out stages.png

Their arguments and handlers, apart from cli.py like serving_commands; submitting a job is
in submit_commands.
"""

from __future__ import annotations

from . import tables
from .errors import SpecError
from .runner import EXIT_OK, EXIT_USAGE, Output, finish, follow, job_exit_code, to_dict
from .sdk import EquipruneClient
from .specs import JOB_KINDS, JOB_STATES


def add_commands(command, sub, shared) -> None:
    """Register the job commands with cli.build_parser's `command(name, handler, help)`; `job` gets
    its own actions, each taking the global options through `shared`."""
    listed = command("jobs", _jobs, "list jobs, newest first")
    listed.add_argument("--state", action="append", default=[], choices=JOB_STATES.choices(),
                        help="only jobs in this state (repeatable)")
    listed.add_argument("--kind", choices=JOB_KINDS.choices())
    plot = command("plot", _plot, "PNG of a job's per-group accuracy and ψ_g by stage (needs matplotlib)")
    plot.add_argument("job_id")
    plot.add_argument("--out", required=True, metavar="PNG", help="file to write")
    plot.add_argument("--split", help="split to plot (default: the evaluation split, else train)")
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


# ------------------------------------------------------------------ handlers: jobs
def _jobs(client: EquipruneClient, args, out: Output) -> int:
    jobs = list(client.list_jobs(states=args.state, kind=args.kind))
    out.say(tables.jobs_table(jobs))
    out.document({"jobs": [to_dict(j) for j in jobs]})
    return EXIT_OK


def _plot(client: EquipruneClient, args, out: Output) -> int:
    from .plots import PlotUnavailable
    from .report_tables import chosen_split
    from .stage_plots import plot_stages

    job = client.get_job(args.job_id)
    if not job.result.reports:
        raise SpecError("job_id", f"{job.job_id} has no per-group reports to plot"
                        + ("" if job.done else " yet (it has not finished)"))
    try:
        plot_stages(job.result, args.out, split=args.split or chosen_split(job),
                    title=f"{job.job_id}: per-group accuracy by stage")
    except PlotUnavailable as err:
        out.warn(f"error: {err}")
        return EXIT_USAGE
    except ValueError as err:
        raise SpecError("split", str(err).removeprefix("plot: ")) from None
    out.say(f"plot → {args.out}")
    out.document({"job": job.job_id, "plot": args.out})
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
