"""Data-parallel fine-tuning of one job on Ray Train workers: Ray plumbing only.

The engine knows nothing of Ray: its job API (`engine.jobs.run_job`) takes a `DataParallel`
(rank, world size, a DDP wrapper and an all-reduce). This adapter starts `workers` Ray Train
workers (`TorchTrainer`, whose torch backend sets up the process group: gloo on CPUs, NCCL on
GPUs); each one runs the very job the sandbox would run, of which only fine-tuning is shared
out (see `run_compression`). Rank 0 writes the outputs and hands them back as a Ray Train
checkpoint, so they reach the driver even from another node; the driver copies them into the
job's work folder.

Progress: rank 0 (the job API lets only it speak) puts each event, as `JobEvent.to_dict()`,
on a `ray.util.queue.Queue` the driver made; the driver runs `fit()` in a thread and feeds
the queue to `on_event`. Cancellation: when `on_event` raises, the driver shuts the queue's actor down. Rank 0's
next event then fails, which fails rank 0, and Ray Train tears the whole worker group down
(the other workers, waiting in a collective, are killed). Events come at every training
step, so this is prompt during fine-tuning and gradual pruning; a phase without events
(an evaluation, writing the outputs) runs to its end first. The caller's exception is then
raised. Killing the calling task also ends everything: the Ray Train controller and the
queue are actors it owns.

Errors: Ray Train reports a failed worker as `WorkerGroupError.worker_failures[rank]`. A worker
whose process or node died (a dead actor, a failed health check) is raised as `WorkersLost`,
which the job's task reports as a crash: the manager runs the job again from its checkpoint.
An `EngineError` cannot cross a process boundary as itself (its two-argument constructor does
not survive pickling), so workers raise `WorkerEngineError` carrying its class name, field
and problem, and the driver raises the engine error again, with its field.

Trust: these workers run outside the sandbox, because data-parallel training needs the
network between them. They load data-only formats only — safetensors weights into our own
architecture code, after the meta-device budget checks, and the .npz reader that never
unpickles — and refuse a .pt2 program (its graph is code; it runs only in the sandbox).

Paths: `model_path`, `dataset_path` and `checkpoint_path` are read on every worker, so on a
multi-node cluster they must name storage every node sees (the fine-tuning checkpoint is
written by rank 0 only; the engine refuses a run whose workers would resume from different
steps).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.util.queue import Empty, Queue

from equiprune.engine import errors as engine_errors
from equiprune.engine.errors import EngineError
from equiprune.engine.finetune.distributed import DataParallel, from_process_group
from equiprune.engine.jobs import JobInputs, JobSpec, run_job

# What rank 0 puts into its checkpoint beside the output files: its outcome.
MANIFEST = "equiprune_result.json"
POLL_S = 0.2


class WorkerEngineError(Exception):
    """An engine error on its way from a worker to the driver, in a picklable form."""

    def __init__(self, kind: str, field: str, problem: str) -> None:
        super().__init__(kind, field, problem)
        self.kind, self.field, self.problem = kind, field, problem

    @classmethod
    def carrying(cls, err: EngineError) -> WorkerEngineError:
        return cls(type(err).__name__, err.field, err.problem)

    def engine_error(self) -> EngineError:
        kind = getattr(engine_errors, self.kind, None)
        if not (isinstance(kind, type) and issubclass(kind, EngineError)):
            kind = EngineError
        return kind(self.field, self.problem)

    def __str__(self) -> str:
        return f"{self.kind}: {self.field}: {self.problem}"


def run_on_ray_train(spec: JobSpec, inputs: JobInputs, *, storage_path: str,
                     on_event: Callable[[dict], None] | None = None) -> dict:
    """Run `spec` with data-parallel fine-tuning on `spec.resources.workers` Ray Train workers;
    return rank 0's `JobOutcome.to_dict()`, its files copied into `inputs.work_dir`.
    `storage_path` is where Ray Train keeps the run (rank 0's outputs pass through it); it is
    left in place for the caller to remove. `on_event` gets rank 0's events as dictionaries."""
    r = spec.resources
    progress = Queue(actor_options={"num_cpus": 0}) if on_event is not None else None
    trainer = ray.train.torch.TorchTrainer(
        _train_worker,
        train_loop_config={
            "spec": spec.to_dict(), "model_path": str(inputs.model), "dataset_path": str(inputs.dataset),
            "checkpoint_path": str(inputs.checkpoint), "threads": r.cpus_per_worker, "progress": progress,
            "limits": inputs.limits, "max_dataset_bytes": inputs.max_dataset_bytes,
        },
        scaling_config=_scaling(r.workers, r.cpus_per_worker, r.gpus_per_worker),
        run_config=RunConfig(storage_path=str(storage_path), name=f"equiprune-{uuid.uuid4().hex[:12]}",
                             failure_config=FailureConfig(max_failures=0)),
    )
    outcome = _fit_while_forwarding(trainer, progress, on_event)
    return _collect(outcome.checkpoint, Path(inputs.work_dir))


def _scaling(workers: int, cpus_per_worker: int, gpus_per_worker: int) -> ScalingConfig:
    resources: dict[str, float] = {"CPU": cpus_per_worker}
    if gpus_per_worker > 0:
        resources["GPU"] = gpus_per_worker
    return ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0, resources_per_worker=resources)


# --------------------------------------------------------------------------- driver side


def _fit_while_forwarding(trainer, progress: Queue | None, on_progress: Callable[[dict], None] | None):
    """trainer.fit() in a thread; meanwhile hand rank 0's events to `on_progress`."""
    box: dict[str, Any] = {}

    def fit() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as err:  # noqa: BLE001 - re-raised in the calling thread
            box["error"] = err

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    stopped_by: BaseException | None = None
    if progress is not None and on_progress is not None:
        try:
            while thread.is_alive():
                _forward(progress, on_progress, timeout=POLL_S)
            _forward_rest(progress, on_progress)
        except BaseException as err:  # the caller cancels by raising from on_progress
            stopped_by = err
        finally:
            # Also what cancels: rank 0's next put fails and Ray Train stops the workers.
            progress.shutdown(force=True)
    thread.join()
    if stopped_by is not None:
        raise stopped_by
    if "error" in box:
        raise _unwrapped(box["error"]) from None
    return box["result"]


def _forward(progress: Queue, on_progress, timeout: float) -> None:
    try:
        event = progress.get(timeout=timeout)
    except Empty:
        return
    on_progress(event)


def _forward_rest(progress: Queue, on_progress) -> None:
    """The events rank 0 put before fit returned (its puts complete before it reports)."""
    while not progress.empty():
        on_progress(progress.get_nowait())


def _unwrapped(err: BaseException) -> BaseException:
    """The engine error a worker raised, as itself; `WorkersLost` when a worker's process (or
    node) died; any other failure as Ray reported it."""
    failures = getattr(err, "worker_failures", None) or {}
    for rank in sorted(failures):
        if isinstance(failures[rank], WorkerEngineError):
            return failures[rank].engine_error()
    cause = err
    while cause is not None:  # other Ray Train versions chain the worker's exception
        if isinstance(cause, WorkerEngineError):
            return cause.engine_error()
        cause = cause.__cause__
    for rank in sorted(failures):
        if _is_lost(failures[rank]):
            return WorkersLost(f"Ray Train worker {rank} of the job died ({type(failures[rank]).__name__})")
    controller_failure = getattr(err, "controller_failure", None)
    if controller_failure is not None and _is_lost(controller_failure):
        return WorkersLost(f"the job's Ray Train controller died ({type(controller_failure).__name__})")
    return err


class WorkersLost(Exception):
    """A Ray Train worker (or the controller) of the job died with its process or node: the run
    is lost, not wrong, and the job manager runs the job again from its last checkpoint."""


def _is_lost(failure: BaseException) -> bool:
    """Whether a worker's failure is its death (a dead actor, a failed health check)."""
    if isinstance(failure, ray.exceptions.RayActorError):
        return True
    return type(failure).__name__ in ("WorkerHealthCheckFailedError", "WorkerHealthCheckTimeoutError")


def _collect(checkpoint, work_dir: Path) -> dict:
    """Copy rank 0's output files out of its checkpoint into `work_dir`; return its outcome."""
    if checkpoint is None:
        raise RuntimeError("the Ray Train run finished without rank 0's outputs")
    work_dir.mkdir(parents=True, exist_ok=True)
    with checkpoint.as_directory() as folder:
        result = json.loads((Path(folder) / MANIFEST).read_text())
        for entry in result["files"]:
            name = Path(entry["path"]).name  # written by our own rank 0: plain names in its folder
            shutil.copyfile(Path(folder) / name, work_dir / name)
            entry["path"] = name
    return result


# --------------------------------------------------------------------------- worker side


def _train_worker(config: dict) -> None:
    """One Ray Train worker: the whole job, fine-tuning shared with the others."""
    torch.set_num_threads(max(1, int(config["threads"])))
    context = ray.train.get_context()
    data_parallel = DataParallel(
        rank=context.get_world_rank(),
        world_size=context.get_world_size(),
        # The engine has already put the model on the job's device; prepare_model wraps it
        # in DDP (with the worker's GPU) and leaves a world of one unwrapped.
        wrap=lambda module: ray.train.torch.prepare_model(module, move_to_device=False),
        all_reduce_mean=from_process_group().all_reduce_mean,
    )
    progress: Queue | None = config["progress"]
    with tempfile.TemporaryDirectory(prefix="equiprune-outputs-") as folder:
        # These workers are not sandboxed (they need the network between them): the job API
        # loads data-only formats only here, within the limits, never a .pt2 program.
        inputs = JobInputs(dataset=config["dataset_path"], model=config["model_path"], work_dir=Path(folder),
                           limits=config["limits"], max_dataset_bytes=config["max_dataset_bytes"],
                           checkpoint_path=Path(config["checkpoint_path"]))
        try:
            outcome = run_job(JobSpec.from_dict(config["spec"]), inputs,
                              (lambda event: progress.put(event.to_dict())) if progress is not None else None,
                              data_parallel=data_parallel, device=str(ray.train.torch.get_device()))
        except EngineError as err:
            raise WorkerEngineError.carrying(err) from None
        outputs = None
        if data_parallel.is_primary:
            (Path(folder) / MANIFEST).write_text(json.dumps(outcome.to_dict(), allow_nan=False))
            outputs = ray.train.Checkpoint.from_directory(folder)
        # Every worker reports once (Ray Train synchronises on it); only rank 0 has outputs.
        ray.train.report({"rank": data_parallel.rank}, checkpoint=outputs)
