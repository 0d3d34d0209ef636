"""The Ray task that runs one job and streams its progress back to the job manager.

A streaming generator task: it yields ("started", None) once it holds its resources, then
("progress", dict) events, then one ("result", dict) or ("error", status dict) — or ("crash",
reason) when a data-parallel job's Ray Train worker died, which the manager treats like the
death of this task itself (it runs the job again from its checkpoint). The work runs
in a thread because progress arrives through a callback while the generator must yield from
its own frame. Errors come back as data — already mapped to a client status here, whose log
keeps any traceback — rather than as a wrapped Ray exception. Cancellation is
`ray.cancel(generator, force=True)`: the worker process exits, which frees its CPUs/GPUs at
once, and its sandboxed worker (which dies with its parent) or Ray Train workers with it.

Where the job runs: a single-worker job in a sandboxed worker (`sandbox.worker`), which gets
the job's model and dataset as read-only files and its working folder, and nothing else; this
task then stores the files it wrote — opened without following links, as the hostile files
they may be — as artifacts. A data-parallel job runs here, in Ray Train (its workers need the
network), on data-only formats only.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import stat
import sys
import threading
import time
from pathlib import Path

import ray

from equiprune.engine.errors import EngineError
from equiprune.engine.jobs.outcome import ends_epoch
from equiprune.engine.jobs.spec import spec_field

from equiprune.service.artifacts import wire as artifacts_wire
from equiprune.service.jobs import wire
from equiprune.service.jobs.checkpoints import CheckpointKeeper, CheckpointStore
from equiprune.service.errors import FailedPrecondition, ResourceExhausted, client_status
from equiprune.engine.models.pt2_check import plain_relative_path

from equiprune.service.artifacts.validation import checked_description

MAX_RESULT_BYTES = 16 * 2**20
MAX_EVENT_BYTES = 256 * 2**10
MAX_EVENTS = 20_000  # per run: every event is a row of the job store
MAX_OUTPUT_FILES = 8
CHECKPOINT = "checkpoint.pt"


@ray.remote(num_returns="streaming", max_retries=0)
def execute_job(job_id: str, spec_json: dict, settings_json: dict, threads: int, tenant: str = "admin"):
    events: queue.Queue = queue.Queue()

    def work() -> None:
        try:
            result = run_job(job_id, spec_json, settings_json, threads, lambda progress: events.put(("progress", progress)),
                             tenant)
            events.put(("result", result))
        except BaseException as exc:  # noqa: BLE001 - every failure must reach the job record
            if _workers_lost(exc):  # a crash, as if this process had died: the manager retries
                events.put(("crash", str(exc)))
            else:
                events.put(("error", client_status(exc).to_dict()))

    threading.Thread(target=work, name=f"job-{job_id}", daemon=True).start()
    yield ("started", None)
    while True:
        kind, payload = events.get()
        yield (kind, payload)
        if kind in ("result", "error", "crash"):
            return


def _workers_lost(exc: BaseException) -> bool:
    """A data-parallel job's Ray Train worker died (distributed.py is imported only for those)."""
    distributed = sys.modules.get("equiprune.service.jobs.distributed")
    return distributed is not None and isinstance(exc, distributed.WorkersLost)


def run_job(job_id: str, spec_json: dict, settings_json: dict, threads: int, emit, tenant: str = "admin") -> dict:
    """Compute the job (sandboxed unless data-parallel), store its files as `tenant`'s (the
    job's owner), return its result."""
    import torch

    from equiprune.engine.jobs import JobSpec

    from equiprune.service.factory import artifact_store, settings_from
    from equiprune.service.sandbox import sandbox_from_settings

    settings = settings_from(settings_json)
    spec = JobSpec.from_dict(spec_json)  # validated at create time; stored normalised
    artifacts = artifact_store(settings)
    work_dir = fresh_work_dir(settings.jobs_dir, job_id)
    say = Throttled(emit, settings.progress_interval_s)
    # The checkpoint lives in the artifact store too, so the job resumes on any node.
    keeper = CheckpointKeeper(CheckpointStore.from_settings(settings), job_id, work_dir, _open_inside, _node_id())
    resumed = _restore_checkpoint(keeper)
    if resumed:
        say({"phase": "load", "message": resumed})
    say = keeper.watching(say)
    inputs = {"dataset": artifacts.local_path(spec.dataset)}
    if spec.model is not None:
        inputs["model"] = artifacts.local_path(spec.model)
    sandbox = sandbox_from_settings(settings)
    try:
        if spec.resources.workers == 1:
            result = sandbox.run("job", {"spec": spec.to_dict(), "device": spec.device}, inputs, purpose="job",
                                 work_dir=str(work_dir), on_event=say, threads=threads,
                                 timeout_s=settings.sandbox_job_timeout_s)
        else:
            from equiprune.engine.jobs import JobInputs

            from equiprune.service.jobs.distributed import run_on_ray_train  # Ray Train only when asked for

            torch.set_num_threads(max(1, threads))
            config = sandbox.config
            result = run_on_ray_train(spec, JobInputs(
                dataset=inputs["dataset"], model=inputs.get("model"), work_dir=work_dir,
                limits=config.engine_model_limits(), max_dataset_bytes=config.max_dataset_bytes),
                storage_path=str(work_dir / "ray_train"), on_event=say)
    except EngineError as err:  # the engine names spec fields without the `spec.` of the request
        raise type(err)(f"spec.{spec_field(err.field)}", err.problem) from None
    finally:
        keeper.close()
    result = checked_result(result)
    result["outputs"] = store_outputs(result.pop("files"), work_dir, artifacts, job_id, settings.max_upload_bytes,
                                      tenant)
    try:  # what GetJob will do with it: a result that cannot be shown must not be stored
        wire.result_to_proto(result, lambda artifact_id: artifacts_wire.artifact_to_proto(artifacts.get(artifact_id)))
    except Exception:  # noqa: BLE001 - any failure to convert is the result's fault
        raise FailedPrecondition("the job's sandbox returned a result that cannot be reported", field="spec") from None
    # The run is complete: its checkpoint and scratch files have nothing left to resume.
    shutil.rmtree(settings.job_dir(job_id), ignore_errors=True)
    return result


def _node_id() -> str:
    try:
        return ray.get_runtime_context().get_node_id() or ""
    except Exception:  # noqa: BLE001 - outside a Ray worker (tests)
        return ""


def _restore_checkpoint(keeper: CheckpointKeeper) -> str:
    """Put the newest checkpoint (stored or this node's) in place; a line for the job's history
    saying which, or "" when the run starts from the beginning."""
    where, record = keeper.restore()
    node = f" on node {keeper.node_id[:12]}" if keeper.node_id else ""
    if where == "stored":
        came_from = f" (written on node {record.node_id[:12]})" if record.node_id else ""
        return f"run{node}: resuming from {record.describe()}, restored from the artifact store{came_from}"
    if where == "local":
        return f"run{node}: resuming from {record.describe() if record else 'its last checkpoint'}, kept on this node"
    return ""


def fresh_work_dir(jobs_dir: Path, job_id: str) -> Path:
    """A new working folder for this run of the job, made by the service (mode 0700, inside a
    job folder and a jobs folder only the service can enter), holding at most the checkpoint
    of the previous run. The previous run's folder belonged to a sandbox: nothing else of it is
    kept, and the checkpoint is taken only as a plain file opened without following links."""
    jobs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    jobs_dir.chmod(0o700)
    job_dir = jobs_dir / job_id
    job_dir.mkdir(mode=0o700, exist_ok=True)
    job_dir.chmod(0o700)
    previous, fresh = job_dir / "work", job_dir / f"work-{os.getpid()}-{time.monotonic_ns()}"
    fresh.mkdir(mode=0o700)
    if previous.is_dir() and not previous.is_symlink():
        try:
            with _open_inside(previous, CHECKPOINT) as source, open(fresh / CHECKPOINT, "wb") as target:
                shutil.copyfileobj(source, target)
                written = os.fstat(source.fileno()).st_mtime_ns
            # Its age is what tells it from a newer one in the artifact store (checkpoints.py).
            os.utime(fresh / CHECKPOINT, ns=(written, written))
        except FailedPrecondition:
            pass  # no checkpoint (or none that is a plain file): the run starts from the beginning
    shutil.rmtree(previous, ignore_errors=True)
    if previous.is_symlink() or previous.exists():
        previous.unlink()
    fresh.rename(previous)
    return previous


def checked_result(result) -> dict:
    """A job's result from the sandbox is hostile input: a JSON object of bounded size whose
    files are plain relative names."""
    text = json.dumps(result, allow_nan=False) if isinstance(result, dict) else ""
    if not text or len(text) > MAX_RESULT_BYTES or not isinstance(result.get("files"), list):
        raise FailedPrecondition("the job's sandbox returned a malformed result", field="spec")
    files = result["files"]
    if len(files) > MAX_OUTPUT_FILES or len({entry.get("path") for entry in files if isinstance(entry, dict)}) != len(files):
        raise FailedPrecondition("the job's sandbox returned too many or repeated files", field="spec")
    for entry in files:
        if not (isinstance(entry, dict) and {"role", "path", "kind", "name"} <= set(entry) <= _FILE_KEYS
                and all(isinstance(entry[k], str) and 0 < len(entry[k]) <= 256 for k in ("role", "path", "kind", "name"))
                and entry["kind"] in ("model", "report") and plain_relative_path(entry["path"])):
            raise FailedPrecondition("the job's sandbox returned a malformed list of files", field="spec")
    return result


_FILE_KEYS = {"role", "path", "kind", "name", "description"}


def store_outputs(files: list[dict], work_dir: Path, artifacts, job_id: str, max_bytes: int,
                  tenant: str = "admin") -> list[dict]:
    """Store each file the job wrote. The sandbox owned the folder, so every path component is
    opened without following links, and only a regular file with one link is taken."""
    outputs = []
    for entry in files:
        with _open_inside(work_dir, entry["path"]) as stream:
            size = os.fstat(stream.fileno()).st_size
            if size > max_bytes:
                raise ResourceExhausted(f"the job wrote {size} bytes to {entry['name']}; the artifact limit is "
                                        f"{max_bytes} (setting max_upload_bytes)", field="spec")
            # At most the size measured now: nothing may still be appending (the worker is gone,
            # and so is every process of its user), but the copy does not rely on it.
            record = artifacts.put_stream(_Bounded(stream, size), entry["kind"], entry["name"], source=f"job:{job_id}",
                                          description=checked_description(entry.get("description") or {}),
                                          tenant=tenant)
        outputs.append({"role": entry["role"], "artifact_id": record.artifact_id})
    return outputs


def _open_inside(folder: Path, relative: str):
    directory = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        parts = relative.split("/")
        for part in parts[:-1]:
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=directory)
            os.close(directory)
            directory = child
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=directory)
    except OSError as err:
        raise FailedPrecondition(f"the job's output {relative!r} cannot be read safely ({err.strerror})",
                                 field="spec") from None
    finally:
        os.close(directory)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise FailedPrecondition(f"the job's output {relative!r} is not a plain file", field="spec")
    return os.fdopen(fd, "rb")


class _Bounded:
    """A stream cut off after `size` bytes."""

    def __init__(self, stream, size: int) -> None:
        self._stream, self._left = stream, size

    def read(self, size: int = -1) -> bytes:
        size = self._left if size < 0 else min(size, self._left)
        data = self._stream.read(size) if size else b""
        self._left -= len(data)
        return data


class Throttled:
    """Pass every event through, except step events closer than `interval` s to the last one
    (the last step of each epoch always goes out, so epoch boundaries are never lost), and
    events larger than MAX_EVENT_BYTES (a sandbox must not fill the job store)."""

    def __init__(self, emit, interval: float) -> None:
        self._emit, self._interval, self._last, self._sent = emit, interval, 0.0, 0

    def __call__(self, progress) -> None:
        from equiprune.engine.jsonable import json_safe

        if not isinstance(progress, dict) or len(json.dumps(progress, default=str)) > MAX_EVENT_BYTES:
            return
        if self._sent >= MAX_EVENTS and progress.get("phase") != "done":
            return
        try:  # what Watch and GetJob will do with it
            wire.progress_to_proto(json_safe(progress))
        except Exception:  # noqa: BLE001 - a malformed event is dropped, the job goes on
            return
        now = time.monotonic()
        if not ends_epoch(progress.get("step", 0), progress.get("total_steps"), progress.get("epochs", 1)) \
                and now - self._last < self._interval:
            return
        self._last = now
        self._sent += 1
        self._emit(json_safe(progress))
