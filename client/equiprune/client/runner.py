"""What the CLI does with a job once submitted: follow it, report it, fetch its outputs.

Human text goes to stdout and progress to stderr; with `--json` stdout carries exactly one
JSON document (protobuf messages through json_format.MessageToDict with proto field names) and
progress is not shown.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

from google.protobuf import json_format

from equiprune.v1 import jobs_pb2

from .progress import ByteProgress, JobProgress
from .sdk import EquipruneClient
from .tables import job_report
from .transfers import safe_file_name

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


def to_dict(message) -> dict:
    """A protobuf message as JSON-ready data, with the proto's own field names."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


@dataclass
class Output:
    """Where results and progress go, per `--json`."""

    json: bool = False
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)

    def say(self, text: str = "") -> None:
        """Human output (suppressed in JSON mode, where stdout holds one document)."""
        if not self.json:
            print(text, file=self.stdout, flush=True)

    def document(self, data) -> None:
        """The JSON document (JSON mode only)."""
        if self.json:
            print(json.dumps(data, indent=2, sort_keys=False), file=self.stdout, flush=True)

    def warn(self, text: str) -> None:
        print(text, file=self.stderr, flush=True)

    def job_progress(self) -> JobProgress | None:
        return None if self.json else JobProgress(self.stderr)

    def byte_progress(self, label: str) -> ByteProgress | None:
        return None if self.json else ByteProgress(label, self.stderr)


EventCallback = Callable[[jobs_pb2.JobEvent, "JobProgress | None"], None]


def follow(client: EquipruneClient, job: jobs_pb2.Job, out: Output,
           on_event: EventCallback | None = None) -> jobs_pb2.Job:
    """Watch a job to its end with progress on stderr; returns the finished job (with result).
    `on_event` sees every event after the progress display (e.g. to show a report it carries)."""
    progress = out.job_progress()
    try:
        for event in client.watch(job.job_id):
            if progress:
                progress.update(event)
            if on_event:
                on_event(event, progress)
    except KeyboardInterrupt:
        if progress:
            progress.close()
        out.warn(f"stopped following {job.job_id}; it keeps running: `equiprune job watch {job.job_id}` "
                 f"follows it again, `equiprune job cancel {job.job_id}` stops it")
        raise
    finally:
        if progress:
            progress.close()
    return client.get_job(job.job_id)


def job_exit_code(job: jobs_pb2.Job, out: Output) -> int:
    """0 when the job succeeded; else 1, with its error on stderr."""
    if job.state == jobs_pb2.JOB_STATE_SUCCEEDED:
        return EXIT_OK
    if job.done:
        out.warn(f"error: job {job.job_id} {'was cancelled' if job.state == jobs_pb2.JOB_STATE_CANCELLED else 'failed'}: "
                 f"{job.error.code or 'UNKNOWN'}: {job.error.message or 'no message'}")
    else:
        out.warn(f"error: job {job.job_id} has not finished")
    return EXIT_JOB_FAILED


def download_outputs(client: EquipruneClient, job: jobs_pb2.Job, directory: str | Path, out: Output,
                     roles: tuple[str, ...] | None = None) -> list[dict]:
    """Download the job's output artifacts (those of `roles`, or all) into `directory`."""
    directory = Path(directory)
    outputs = [o for o in job.result.outputs if roles is None or o.role in roles]
    names = _file_names(outputs)
    done = []
    for output, name in zip(outputs, names):
        path = directory / name
        progress = out.byte_progress(f"download {output.role}")
        try:
            client.download(output.artifact.artifact_id, path, on_progress=progress)
        finally:
            if progress:
                progress.close()
        out.say(f"downloaded {output.role} ({output.artifact.artifact_id}) → {path}")
        done.append({"role": output.role, "artifact_id": output.artifact.artifact_id, "path": str(path)})
    return done


def _file_names(outputs) -> list[str]:
    """Each output's display name as a file name; the role is prefixed where names collide."""
    plain = [safe_file_name(o.artifact.display_name, o.artifact.artifact_id) for o in outputs]
    return [name if plain.count(name) == 1 else f"{o.role}-{name}" for o, name in zip(outputs, plain)]


def finish(client: EquipruneClient, job: jobs_pb2.Job, out: Output, download_dir: str | None = None,
           extra: Callable[[jobs_pb2.Job], None] | None = None) -> int:
    """Report a finished job, download its outputs when asked; the exit code."""
    downloads = []
    if job.state == jobs_pb2.JOB_STATE_SUCCEEDED:
        out.say(job_report(job))
        if extra:
            extra(job)
        if download_dir:
            downloads = download_outputs(client, job, download_dir, out)
    else:
        out.say(job_report(job))
    out.document({"job": to_dict(job), "downloads": downloads})
    return job_exit_code(job, out)
