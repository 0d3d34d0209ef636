"""From a job spec to the pipeline's `CompressionJob`: the one place a job is assembled."""

from __future__ import annotations

import dataclasses

from ..errors import InvalidConfigError
from ..pipeline import CompressionJob
from .spec import DataConfig, JobSpec

# The split each DataConfig field falls back to when the dataset has it.
CONVENTIONAL_SPLITS = {"train_split": "train", "eval_split": "test", "constraint_split": "constraint"}


def resolve_split(data: DataConfig, key: str, split_names: tuple[str, ...]) -> str | None:
    """The split `data.<key>` names: None → the conventional one when the dataset has it;
    "" → no split; a name the dataset lacks is refused."""
    given = getattr(data, key)
    if given is None:
        conventional = CONVENTIONAL_SPLITS[key]
        return conventional if conventional in split_names else None
    if given == "":
        return None
    if given not in split_names:
        known = ", ".join(split_names) or "none: the dataset has no split column"
        raise InvalidConfigError(f"data.{key}", f"the dataset has no split {given!r}; its splits: {known}")
    return given


def check_splits(spec: JobSpec, split_names: tuple[str, ...]) -> None:
    """Refuse, before anything runs, a split the dataset does not have."""
    for key in CONVENTIONAL_SPLITS:
        resolve_split(spec.data, key, split_names)


def compression_job(spec: JobSpec, split_names: tuple[str, ...], *, sparsity: float | None = None) -> CompressionJob:
    """The pipeline job for a diagnose / prune / finetune / prune-and-finetune spec, or for one
    probe of a budget search (at `sparsity`)."""
    d = spec.data
    pruning = spec.pruning
    if pruning is not None and sparsity is not None:
        pruning = dataclasses.replace(pruning, sparsity=sparsity)
    return CompressionJob(
        group_by=d.group_by,
        train_split=resolve_split(d, "train_split", split_names),
        eval_split=resolve_split(d, "eval_split", split_names),
        constraint_split=resolve_split(d, "constraint_split", split_names),
        constraint_fraction=d.constraint_fraction,
        pruning=pruning,
        finetune=spec.finetune,
        diagnostics=spec.diagnostics,
        tolerance=d.tolerance,
        min_group_size=d.min_group_size,
        # The device is the worker's business: the machine that validates a spec may not be
        # the one that runs it.
        device=None,
    )
