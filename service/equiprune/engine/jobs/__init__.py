"""The engine's job API: one typed spec (`JobSpec`), four entry points, typed events and outcomes.

    from equiprune.engine.jobs import JobSpec, JobInputs, run_job
    outcome = run_job(spec, JobInputs(dataset="d.npz", model="dense.safetensors", work_dir=out), print)
"""

from .assembly import check_splits, compression_job, resolve_split
from .outcome import BudgetPoint, JobEvent, JobInputs, JobOutcome, OutputFile, StageReport
from .run import budget_search, compress, evaluate, run_job, train
from .spec import COMPRESSION_KINDS, KINDS, DataConfig, JobSpec, ResourcesConfig, TrainConfig

__all__ = [
    "BudgetPoint", "COMPRESSION_KINDS", "DataConfig", "JobEvent", "JobInputs", "JobOutcome", "JobSpec", "KINDS",
    "OutputFile", "ResourcesConfig", "StageReport", "TrainConfig", "budget_search", "check_splits", "compress",
    "compression_job", "evaluate", "resolve_split", "run_job", "train",
]
