"""Validate an artifact's content against its kind, once, on arrival — inside the sandbox.

A model must load (safetensors with a registered architecture, compact sparse safetensors,
or an audited torch.export archive — never a pickle) within the model limits and run on one
sample of the shape it declares; a dataset must pass the engine's format checks, streamed so
that validation holds only a chunk at a time. What validation learns becomes the artifact's
description, which later lets CreateJob and DeployModel check that a model, a dataset and a
request fit together without reading either file again.

`describe_model` and `describe_dataset` run in the sandboxed worker; `SandboxValidator` is
what the artifact store calls (it starts that worker); the rest reads descriptions.
"""

from __future__ import annotations

import math
from typing import BinaryIO

from equiprune.service.errors import FailedPrecondition, InvalidArgument, ServiceError, naming

# Description keys (strings, as stored in the artifact record).
INPUT_SHAPE, OUTPUTS, FLATTENS = "input_shape", "outputs", "flattens_input"


def describe_model(source: BinaryIO, limits=None) -> dict[str, str]:
    """Load the model within `limits`, run it on one zero sample, describe it."""
    import torch

    from equiprune.engine.fit import output_width
    from equiprune.engine.models.io import load_model
    from equiprune.engine.models.registry import flattens_input

    loaded = load_model(source, limits=limits)
    description = {"format": loaded.format, "parameters": str(sum(p.numel() for p in loaded.module.parameters()))}
    if loaded.spec is not None:
        description["architecture"] = loaded.spec.name
        if flattens_input(loaded.spec.name):
            description[FLATTENS] = "yes"
    shape = loaded.example_input_shape
    if shape:
        description["example_input_shape"] = "x".join(str(d) for d in shape)
        description[INPUT_SHAPE] = "x".join(str(d) for d in shape[1:])
        description[OUTPUTS] = str(output_width(loaded.module, torch.zeros((1, *shape[1:])), "model",
                                                f"one sample of the shape it declares {list(shape[1:])}"))
    return description


def describe_dataset(source: BinaryIO, max_bytes: int | None = None) -> dict[str, str]:
    from equiprune.engine.dataset import inspect_dataset

    summary = inspect_dataset(source, max_bytes=max_bytes)
    return {
        "rows": str(summary.num_samples),
        "sample_shape": "x".join(str(d) for d in summary.sample_shape),
        "classes": str(summary.num_classes),
        "attributes": ",".join(summary.attribute_counts),
        "splits": ",".join(summary.split_counts),
    }


class SandboxValidator:
    """The artifact store's validator: (local path, kind) → description, computed by a
    sandboxed worker; its refusals come back as INVALID_ARGUMENT naming `data`."""

    def __init__(self, sandbox, timeout_s: float | None = None) -> None:
        self.sandbox, self.timeout_s = sandbox, timeout_s

    def __call__(self, path: str, kind: str) -> dict[str, str]:
        if kind not in ("model", "dataset"):
            return {}
        try:
            described = self.sandbox.run("describe", {"kind": kind}, {"content": path}, purpose="validation",
                                         timeout_s=self.timeout_s)
        except ServiceError as refusal:
            if refusal.code == "INTERNAL":
                raise
            where = f"{refusal.field}: " if refusal.field else ""
            raise type(refusal)(f"not a valid {kind}: {where}{refusal.message}", field="data") from None
        return checked_description(described)


def checked_description(described) -> dict[str, str]:
    """A description from a sandboxed worker is hostile input too: string keys and values, bounded."""
    if not isinstance(described, dict) or len(described) > 32:
        raise InvalidArgument("the sandbox returned a malformed description", field="data")
    checked = {}
    for key, value in described.items():
        if not isinstance(key, str) or not isinstance(value, str) or len(key) > 64 or len(value) > 4096:
            raise InvalidArgument("the sandbox returned a malformed description", field="data")
        checked[key] = value
    return checked


def check_job_fit(spec, model_description: dict[str, str] | None, dataset_description: dict[str, str],
                  model_limits=None) -> None:
    """Refuse, at create time, a job whose model, dataset and settings cannot work together:
    samples of another shape than the model takes, more classes than it has outputs, a .pt2
    asked to train data-parallel, a TRAIN architecture that cannot take the samples or exceeds
    the limits (measured on the meta device: nothing allocated). Artifacts described before
    these keys existed are checked when the job starts instead."""
    samples = described_shape(dataset_description, "sample_shape")
    classes = described_int(dataset_description, "classes")
    if model_description is not None:
        takes = described_shape(model_description, INPUT_SHAPE)
        # A model that flattens its samples takes any shape of as many elements.
        flat = model_description.get(FLATTENS) == "yes" and takes is not None and len(takes) == 1
        if samples is not None and takes is not None and samples != takes and not (
                flat and math.prod(samples) == takes[0]):
            raise FailedPrecondition(f"the dataset's samples have shape {list(samples)} but the model takes "
                                     f"{list(takes)}", field="spec.dataset")
        outputs = described_int(model_description, OUTPUTS)
        if classes is not None and outputs is not None and classes > outputs:
            raise FailedPrecondition(f"the dataset has {classes} classes but the model has {outputs} outputs",
                                     field="spec.dataset")
        if spec.resources.workers > 1 and model_description.get("format") == "exported":
            raise FailedPrecondition("data-parallel fine-tuning takes safetensors models only: a .pt2 program is only "
                                     "ever run in the sandbox, and data-parallel workers need the network; use one "
                                     "worker or upload the weights as safetensors", field="spec.resources.workers")
    if spec.kind == "train" and samples is not None:
        _check_train_fit(spec.train, samples, classes, model_limits)


def _check_train_fit(train, samples: tuple[int, ...], classes: int | None, model_limits) -> None:
    from equiprune.engine.errors import EngineError
    from equiprune.engine.models.footprint import measure
    from equiprune.engine.models.registry import ArchitectureSpec

    field = "spec.train.architecture_kwargs"
    try:
        limits = model_limits
        footprint = measure(ArchitectureSpec(train.architecture, dict(train.architecture_kwargs)), samples,
                            limits=limits, field=field)
    except EngineError as err:
        raise InvalidArgument(err.problem, field=field) from None
    except Exception as exc:  # noqa: BLE001 - our own factory on the meta device: only the kwargs can be at fault
        raise InvalidArgument(f"architecture {train.architecture!r} cannot be built with these arguments: "
                              f"{type(exc).__name__}", field=field) from None
    if classes is not None and footprint.outputs is not None and footprint.outputs < classes:
        raise InvalidArgument(f"the architecture has {footprint.outputs} outputs but the dataset has {classes} classes",
                              field=field)


def artifact_of_kind(artifacts, artifact_id: str, kind: str, field: str, tenant: str | None):
    """The stored artifact `artifact_id` of `tenant` (None: anyone's), which must be a `kind`;
    refusals name `field`."""
    with naming(field):
        record = artifacts.get(artifact_id, tenant)
    if record.kind != kind:
        raise FailedPrecondition(f"artifact {artifact_id} is a {record.kind}, not a {kind}", field=field)
    return record


def described_list(description: dict[str, str], key: str) -> tuple[str, ...]:
    value = description.get(key, "")
    return tuple(v for v in value.split(",") if v)


def described_shape(description: dict[str, str], key: str) -> tuple[int, ...] | None:
    """A shape stored as "3x32x32", or None when the description does not know it."""
    value = description.get(key, "")
    try:
        shape = tuple(int(d) for d in value.split("x")) if value else None
    except ValueError:
        return None
    return shape if shape and all(d >= 1 for d in shape) else None


def described_int(description: dict[str, str], key: str) -> int | None:
    try:
        return int(description[key])
    except (KeyError, ValueError):
        return None
