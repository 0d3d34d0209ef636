"""Group-labelled datasets: the `.npz` format, its validation, and choosing a grouping.

A dataset arrives once as an `.npz` archive (docs/dataset-format.md), is checked field by field,
and becomes a `GroupDataset`: normalised float32 inputs, int64 labels, one or more group
attributes (integer codes plus value names) and an optional split. `GroupDataset.select` turns
it into the `GroupedData` every engine step works on.

Every refusal is an `InvalidDatasetError` whose field names the array, e.g. `dataset.labels`
or `dataset.attr__race`. Archives are read header first: every `.npy` header is checked (no
object or structured dtypes, no size beyond what the member holds) and the memory the dataset
would take once loaded is compared with `max_bytes` before any data is read; then the data is
streamed in bounded chunks. `inspect_dataset` makes every check `load_dataset` makes while
holding only a chunk at a time, so validating an upload costs little memory whatever its size.

This module is the public face; the work is split across
- `dataset_checks`: the rules, each written once, applied to arrays seen chunk by chunk;
- `group_dataset`: the in-memory `GroupDataset`, groupings, and `validate_for_model`;
- `dataset_source`: from named arrays (a dict or an archive) to a dataset or a summary;
- `npz`: reading an archive header-first and in chunks; `array_chunks`: the chunk walk.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from equiprune.engine import machine
from equiprune.engine.dataset_checks import (
    ATTR_PREFIX,
    ATTRIBUTE_NAME_PATTERN,
    INTERSECTION_SEPARATOR,
    MAX_ATTRIBUTE_NAME_LENGTH,
    MAX_ATTRIBUTES,
    MAX_CLASSES,
    MAX_GROUPS,
    MAX_NAME_LENGTH,
    MAX_SAMPLE_DIMS,
    MAX_SPLITS,
    MAX_VALUES_PER_ATTRIBUTE,
    NAMES_SUFFIX,
    DatasetSummary,
    fail,
)
from equiprune.engine.dataset_source import ArrayMapping, dataset_from_source, loaded_bytes, summary_from_source
from equiprune.engine.group_dataset import DEFAULT_MIN_GROUP_SIZE, GroupDataset, validate_for_model
from equiprune.engine.npz import MAX_ARCHIVE_MEMBERS, NpzReader, PathOrFile

__all__ = [
    "ATTRIBUTE_NAME_PATTERN",
    "ATTR_PREFIX",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MIN_GROUP_SIZE",
    "INTERSECTION_SEPARATOR",
    "MAX_ARCHIVE_MEMBERS",
    "MAX_ATTRIBUTES",
    "MAX_ATTRIBUTE_NAME_LENGTH",
    "MAX_CLASSES",
    "MAX_GROUPS",
    "MAX_NAME_LENGTH",
    "MAX_SAMPLE_DIMS",
    "MAX_SPLITS",
    "MAX_VALUES_PER_ATTRIBUTE",
    "NAMES_SUFFIX",
    "DatasetSummary",
    "GroupDataset",
    "dataset_from_arrays",
    "dataset_to_arrays",
    "default_max_dataset_bytes",
    "inspect_dataset",
    "load_dataset",
    "save_dataset",
    "validate_for_model",
]

# The most the default limit ever allows, however much memory the machine has.
DEFAULT_MAX_BYTES = 8 * 2**30
# Share of the machine's memory one loaded dataset may take by default: a job holds the dataset
# next to a model, its copies and activations, and a host runs more than one job.
DEFAULT_MEMORY_SHARE = 4
def default_max_dataset_bytes() -> int:
    """The default `max_bytes`: a quarter of the memory this machine (or its container's
    cgroup limit, when lower) can hold (`machine.memory_bytes`), at most DEFAULT_MAX_BYTES."""
    return min(DEFAULT_MAX_BYTES, machine.memory_bytes() // DEFAULT_MEMORY_SHARE)


def load_dataset(source: PathOrFile, *, max_bytes: int | None = None) -> GroupDataset:
    """Read and validate an `.npz` dataset from a path or a seekable binary file object.

    max_bytes: the most memory the loaded dataset may take, as the engine holds it: inputs as
    float32 (4 bytes an element, also for uint8 files), codes as int64 (8 bytes a sample per
    array), names and statistics as stored. Checked from the headers before any data is read;
    None means `default_max_dataset_bytes()`. Peak memory is about the loaded tensors plus one
    chunk (2 Mi elements, a few MiB).
    """
    with _open_checked(source, max_bytes) as reader:
        return dataset_from_source(reader)


def inspect_dataset(source: PathOrFile, *, max_bytes: int | None = None) -> DatasetSummary:
    """Make every check `load_dataset` makes and describe the dataset, without loading it.

    Same refusals (the same `InvalidDatasetError` fields), same `max_bytes` limit, but the
    arrays are streamed from the archive in chunks and only checked and counted, so memory stays
    at a few chunks (tens of MiB) whatever the dataset's size. For validating uploads.
    """
    with _open_checked(source, max_bytes) as reader:
        return summary_from_source(reader)


def _open_checked(source: PathOrFile, max_bytes: int | None) -> NpzReader:
    limit = default_max_dataset_bytes() if max_bytes is None else max_bytes
    reader = NpzReader(source)
    try:
        needed = loaded_bytes(reader)
        if needed > limit:
            fail(
                "dataset",
                f"the dataset needs {needed} bytes of memory once loaded (float32 inputs, int64 codes); "
                f"the limit is {limit}",
            )
    except BaseException:
        reader.close()
        raise
    return reader


def save_dataset(dataset: GroupDataset, target: PathOrFile) -> None:
    """Write `dataset` so that `load_dataset` gives back identical tensors and names.

    Written uncompressed and without the `.npz` suffix numpy would otherwise append.
    """
    arrays = dataset_to_arrays(dataset)
    if hasattr(target, "write"):
        np.savez(target, **arrays)
        return
    with open(target, "wb") as handle:
        np.savez(handle, **arrays)


def dataset_from_arrays(arrays: Mapping[str, np.ndarray]) -> GroupDataset:
    """Build a dataset from arrays named as in the `.npz` format (docs/dataset-format.md).

    uint8 inputs are scaled by 1/255, then `input_mean`/`input_std` (per channel, axis 1),
    when given, normalise them; the result holds float32 inputs and int64 codes.
    """
    return dataset_from_source(ArrayMapping(arrays))


def dataset_to_arrays(dataset: GroupDataset) -> dict[str, np.ndarray]:
    """The arrays `save_dataset` writes: inputs as stored (float32, already normalised)."""
    arrays: dict[str, np.ndarray] = {
        "inputs": dataset.inputs.detach().cpu().numpy(),
        "labels": dataset.labels.cpu().numpy(),
    }
    for name, codes in dataset.attributes.items():
        arrays[f"{ATTR_PREFIX}{name}"] = codes.cpu().numpy()
        arrays[f"{ATTR_PREFIX}{name}{NAMES_SUFFIX}"] = np.array(dataset.attribute_values[name], dtype=np.str_)
    if dataset.split_codes is not None:
        arrays["split"] = dataset.split_codes.cpu().numpy()
        arrays["split__names"] = np.array(dataset.split_names, dtype=np.str_)
    if dataset.label_names:
        arrays["label_names"] = np.array(dataset.label_names, dtype=np.str_)
    return arrays
