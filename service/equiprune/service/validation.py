"""Validate an artifact's content against its kind, once, on arrival.

A model must load (safetensors with a registered architecture, compact sparse safetensors,
or an audited torch.export archive — never a pickle); a dataset must pass the engine's
format checks. What validation learns becomes the artifact's description, which later lets
CreateJob check group attributes and splits without reading the file again.
"""

from __future__ import annotations

from equiprune.engine.dataset import load_dataset
from equiprune.engine.errors import EngineError
from equiprune.engine.models.io import load_model

from .errors import FailedPrecondition, InvalidArgument, naming


def describe_artifact(path: str, kind: str) -> dict[str, str]:
    """The description of a valid artifact; InvalidArgument naming the problem otherwise."""
    try:
        if kind == "model":
            return _describe_model(path)
        if kind == "dataset":
            return _describe_dataset(path)
    except EngineError as err:
        raise InvalidArgument(f"not a valid {kind}: {err}", field="data") from None
    return {}


def _describe_model(path: str) -> dict[str, str]:
    loaded = load_model(path)
    info = loaded.to_dict()
    description = {"format": info["format"], "parameters": str(info["num_parameters"])}
    if loaded.spec is not None:
        description["architecture"] = loaded.spec.name
    if loaded.example_input_shape:
        description["example_input_shape"] = "x".join(str(d) for d in loaded.example_input_shape)
    return description


def _describe_dataset(path: str) -> dict[str, str]:
    dataset = load_dataset(path)
    return {
        "rows": str(len(dataset)),
        "sample_shape": "x".join(str(d) for d in dataset.sample_shape),
        "classes": str(dataset.num_classes),
        "attributes": ",".join(dataset.attribute_names),
        "splits": ",".join(dataset.split_names),
    }


def artifact_of_kind(artifacts, artifact_id: str, kind: str, field: str):
    """The stored artifact `artifact_id`, which must be a `kind`; refusals name `field`."""
    with naming(field):
        record = artifacts.get(artifact_id)
    if record.kind != kind:
        raise FailedPrecondition(f"artifact {artifact_id} is a {record.kind}, not a {kind}", field=field)
    return record


def described_list(description: dict[str, str], key: str) -> tuple[str, ...]:
    value = description.get(key, "")
    return tuple(v for v in value.split(",") if v)
