"""Data-parallel fine-tuning of one compression job on Ray Train workers.

The engine knows nothing of Ray: it takes a `DataParallel` (rank, world size, a DDP wrapper
and an all-reduce). This adapter starts `workers` Ray Train workers (`TorchTrainer`, whose
torch backend sets up the process group: gloo on CPUs, NCCL on GPUs); each one loads the
model and dataset from the given local paths and runs the whole pipeline, of which only
fine-tuning is shared out (see `run_compression`). Rank 0 writes the outputs and hands them
back as a Ray Train checkpoint, so they reach the driver even from another node; the driver
copies them into `out_dir`.

Progress: rank 0 puts (phase, JSON-able payload) on a `ray.util.queue.Queue` the driver
made; the driver runs `fit()` in a thread and feeds the queue to `on_progress`.
Cancellation: when `on_progress` raises, the driver shuts the queue's actor down. Rank 0's
next event then fails, which fails rank 0, and Ray Train tears the whole worker group down
(the other workers, waiting in a collective, are killed). Events come at every training
step, so this is prompt during fine-tuning and gradual pruning; a phase without events
(an evaluation, writing the outputs) runs to its end first. The caller's exception is then
raised. Killing the calling task also ends everything: the Ray Train controller and the
queue are actors it owns.

Errors: Ray Train reports a failed worker as `WorkerGroupError.worker_failures[rank]`.
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

import dataclasses
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
from equiprune.engine.dataset import load_dataset
from equiprune.engine.errors import EngineError
from equiprune.engine.finetune.distributed import DataParallel, from_process_group
from equiprune.engine.jsonable import json_safe
from equiprune.engine.models.footprint import ModelLimits
from equiprune.engine.models.io import load_model
from equiprune.engine.pipeline import CompressionJob, run_compression, write_outputs

Progress = Callable[[str, dict], None]

# What rank 0 puts into its checkpoint beside the outputs: the result and which file is which.
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


def run_compression_on_ray_train(
    model_path: str,
    dataset_path: str,
    job: CompressionJob,
    out_dir: str,
    *,
    workers: int,
    cpus_per_worker: int = 1,
    gpus_per_worker: int = 0,
    storage_path: str,
    checkpoint_path: str | None = None,
    on_progress: Progress | None = None,
    limits: ModelLimits | None = None,
    max_dataset_bytes: int | None = None,
) -> tuple[dict, dict[str, str]]:
    """Run the compression pipeline with data-parallel fine-tuning on `workers` Ray Train workers.
    Returns (result.to_dict(), written) where written maps role ("model", "sparse_model",
    "report") to files under out_dir. `storage_path` is where Ray Train keeps the run (rank
    0's outputs pass through it); it is left in place for the caller to remove."""
    progress = Queue(actor_options={"num_cpus": 0}) if on_progress is not None else None
    trainer = ray.train.torch.TorchTrainer(
        _train_worker,
        train_loop_config={
            "model_path": str(model_path), "dataset_path": str(dataset_path), "job": job,
            "checkpoint_path": str(checkpoint_path) if checkpoint_path is not None else None,
            "threads": cpus_per_worker, "progress": progress, "limits": limits, "max_dataset_bytes": max_dataset_bytes,
        },
        scaling_config=_scaling(workers, cpus_per_worker, gpus_per_worker),
        run_config=RunConfig(storage_path=str(storage_path), name=f"equiprune-{uuid.uuid4().hex[:12]}",
                             failure_config=FailureConfig(max_failures=0)),
    )
    outcome = _fit_while_forwarding(trainer, progress, on_progress)
    return _collect(outcome.checkpoint, Path(out_dir))


def _scaling(workers: int, cpus_per_worker: int, gpus_per_worker: int) -> ScalingConfig:
    resources: dict[str, float] = {"CPU": cpus_per_worker}
    if gpus_per_worker > 0:
        resources["GPU"] = gpus_per_worker
    return ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0, resources_per_worker=resources)


# --------------------------------------------------------------------------- driver side


def _fit_while_forwarding(trainer, progress: Queue | None, on_progress: Progress | None):
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


def _forward(progress: Queue, on_progress: Progress, timeout: float) -> None:
    try:
        phase, payload = progress.get(timeout=timeout)
    except Empty:
        return
    on_progress(phase, payload)


def _forward_rest(progress: Queue, on_progress: Progress) -> None:
    """The events rank 0 put before fit returned (its puts complete before it reports)."""
    while not progress.empty():
        phase, payload = progress.get_nowait()
        on_progress(phase, payload)


def _unwrapped(err: BaseException) -> BaseException:
    """The engine error a worker raised, as itself; any other failure as Ray reported it."""
    failures = getattr(err, "worker_failures", None) or {}
    for rank in sorted(failures):
        if isinstance(failures[rank], WorkerEngineError):
            return failures[rank].engine_error()
    cause = err
    while cause is not None:  # other Ray Train versions chain the worker's exception
        if isinstance(cause, WorkerEngineError):
            return cause.engine_error()
        cause = cause.__cause__
    return err


def _collect(checkpoint, out_dir: Path) -> tuple[dict, dict[str, str]]:
    """Copy rank 0's outputs out of its checkpoint into out_dir; return (result, written)."""
    if checkpoint is None:
        raise RuntimeError("the Ray Train run finished without rank 0's outputs")
    out_dir.mkdir(parents=True, exist_ok=True)
    with checkpoint.as_directory() as folder:
        manifest = json.loads((Path(folder) / MANIFEST).read_text())
        written = {}
        for role, name in manifest["written"].items():
            shutil.copyfile(Path(folder) / name, out_dir / name)
            written[role] = str(out_dir / name)
    return manifest["result"], written


# --------------------------------------------------------------------------- worker side


def _train_worker(config: dict) -> None:
    """One Ray Train worker: the whole pipeline, fine-tuning shared with the others."""
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
    job: CompressionJob = config["job"]
    if job.device is None:
        job = dataclasses.replace(job, device=str(ray.train.torch.get_device()))
    progress: Queue | None = config["progress"]
    with tempfile.TemporaryDirectory(prefix="equiprune-outputs-") as folder:
        try:
            # These workers are not sandboxed (they need the network between them): they read
            # data-only formats only, within the limits, never a .pt2 program.
            loaded = load_model(config["model_path"], limits=config["limits"], allow_exported=False)
            dataset = load_dataset(config["dataset_path"], max_bytes=config["max_dataset_bytes"])
            result = run_compression(
                loaded, dataset, job, checkpoint_path=config["checkpoint_path"], data_parallel=data_parallel,
                on_progress=(lambda phase, payload: progress.put((phase, portable(payload))))
                if progress is not None else None)
            outputs = None
            if data_parallel.is_primary:
                example = dataset.select(job.group_by, split=job.train_split, min_group_size=0).inputs[:2]
                written = write_outputs(result, loaded, folder, example)
                manifest = {"result": result.to_dict(), "written": {role: Path(p).name for role, p in written.items()}}
                (Path(folder) / MANIFEST).write_text(json.dumps(manifest, allow_nan=False))
                outputs = ray.train.Checkpoint.from_directory(folder)
        except EngineError as err:
            raise WorkerEngineError.carrying(err) from None
        # Every worker reports once (Ray Train synchronises on it); only rank 0 has outputs.
        ray.train.report({"rank": data_parallel.rank}, checkpoint=outputs)


def portable(value: Any) -> Any:
    """A progress payload as plain JSON values: reports and other objects with `to_dict`
    (or dataclasses) become dictionaries; NaN and infinity become None."""
    if hasattr(value, "to_dict"):
        return portable(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return portable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v) for v in value]
    return json_safe(value)
