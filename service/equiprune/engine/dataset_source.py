"""From arrays named as in the `.npz` format to a `GroupDataset` or to a `DatasetSummary`.

The arrays come from an `ArraySource`: a dict of numpy arrays (`ArrayMapping`) or an open
archive (`NpzReader`). Both are handled alike: first the rules that need only names, dtypes
and shapes (`check_layout`, reading nothing but the small name and statistics arrays), then the
data in bounded chunks, either written into the tensors a job needs (`dataset_from_source`:
the final tensors plus one chunk) or only checked and counted (`summary_from_source`: one chunk
at a time). Either way the value checks are `check_dataset_parts`, the same as a `GroupDataset`'s.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from equiprune.engine.array_chunks import ChunkedArray, ChunkScratch, Selector, plan_chunks
from equiprune.engine.dataset_checks import (
    ATTR_PREFIX,
    MAX_CLASSES,
    MAX_NAME_LENGTH,
    MAX_SPLITS,
    MAX_VALUES_PER_ATTRIBUTE,
    NAMES_SUFFIX,
    DatasetSummary,
    check_dataset_parts,
    check_input_dims,
    check_name_count,
    describe,
    fail,
)
from equiprune.engine.group_dataset import GroupDataset

INPUT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.uint8))
PLAIN_KEYS = ("inputs", "labels", "split", "split__names", "label_names", "input_mean", "input_std")
_INT64_MAX = np.iinfo(np.int64).max
# numpy stores unicode as 4 bytes per character.
_MAX_NAME_ITEMSIZE = 4 * MAX_NAME_LENGTH


class ArraySpec(Protocol):
    dtype: np.dtype
    shape: tuple[int, ...]


class ArraySource(Protocol):
    """Named arrays, known by spec first and read on demand."""

    def keys(self) -> list[str]: ...

    def spec(self, key: str) -> ArraySpec: ...

    def read(self, key: str) -> np.ndarray: ...

    def chunks(self, key: str) -> Iterator[tuple[Selector, np.ndarray]]: ...


class ArrayMapping:
    """A dict of numpy arrays as an ArraySource; chunks are views, nothing is copied."""

    def __init__(self, arrays: Mapping[str, Any]) -> None:
        self._arrays = arrays

    def keys(self) -> list[str]:
        return list(self._arrays)

    def spec(self, key: str) -> np.ndarray:
        value = self._arrays[key]
        if not isinstance(value, np.ndarray):
            fail(f"dataset.{key}", f"must be a numpy array, got {describe(value)}")
        return value

    def read(self, key: str) -> np.ndarray:
        return self._arrays[key]

    def chunks(self, key: str) -> Iterator[tuple[Selector, np.ndarray]]:
        array = self._arrays[key]
        for selector in plan_chunks(array.shape):
            yield selector, array[selector]


def is_code_key(key: str) -> bool:
    """Arrays the engine holds as int64 codes: labels, split and every attr__<name>."""
    return key in ("labels", "split") or (key.startswith(ATTR_PREFIX) and not key.endswith(NAMES_SUFFIX))


def loaded_bytes(source: ArraySource) -> int:
    """The memory the engine needs to hold the dataset once loaded, from the specs alone:
    inputs as float32 (4 bytes an element, whatever the file's dtype), codes as int64 (8 bytes),
    the small name and statistics arrays as stored."""
    total = 0
    for key in source.keys():
        spec = source.spec(key)
        elements = math.prod(spec.shape)
        if key == "inputs":
            total += elements * 4
        elif is_code_key(key):
            total += elements * 8
        else:
            total += elements * spec.dtype.itemsize
    return total


# --------------------------------------------------------------------------------------------
# Rules on names, dtypes and shapes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputScaling:
    """How stored inputs become model inputs: uint8 scaled by 1/255, then per-channel
    (axis 1) `(x - mean) / std` when the file gives statistics."""

    from_uint8: bool
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None

    def apply(self, target: torch.Tensor, stored: np.ndarray, selector: Selector) -> None:
        """Write the stored values of chunk `selector` into `target` (float32, same shape)."""
        np.copyto(target.numpy(), stored, casting="unsafe")
        if self.from_uint8:
            target.div_(255.0)
        if self.mean is not None:
            channels = selector[1]
            view = (1, -1) + (1,) * (target.dim() - 2)
            target.sub_(self.mean[channels].view(view)).div_(self.std[channels].view(view))


@dataclass(frozen=True)
class DatasetLayout:
    """What check_layout found: everything but the per-sample values."""

    input_shape: tuple[int, ...]
    scaling: InputScaling
    attribute_values: dict[str, tuple[str, ...]]  # unchecked names, in file order
    split_names: tuple[str, ...] | None  # None: no split array
    label_names: tuple[str, ...]


def check_layout(source: ArraySource) -> DatasetLayout:
    """Refuse missing, unpaired or unknown arrays and wrong dtypes or shapes, reading only the
    name and statistics arrays (after their headers show them to be small)."""
    attribute_names = _check_keys(source.keys())
    specs = {key: source.spec(key) for key in source.keys()}
    inputs = specs["inputs"]
    if inputs.dtype.newbyteorder("=") not in INPUT_DTYPES:
        fail("dataset.inputs", f"dtype must be float32, float16 or uint8, got {inputs.dtype}")
    check_input_dims(tuple(inputs.shape))
    scaling = _read_scaling(source, specs, channels=inputs.shape[1])
    for name in attribute_names:
        _check_code_dtype(f"{ATTR_PREFIX}{name}", specs)
    values = {
        name: _read_names(source, f"{ATTR_PREFIX}{name}{NAMES_SUFFIX}", MAX_VALUES_PER_ATTRIBUTE)
        for name in attribute_names
    }
    _check_code_dtype("labels", specs)
    split_names = None
    if "split" in specs:
        _check_code_dtype("split", specs)
        split_names = _read_names(source, "split__names", MAX_SPLITS)
    label_names = _read_names(source, "label_names", MAX_CLASSES) if "label_names" in specs else ()
    return DatasetLayout(tuple(inputs.shape), scaling, values, split_names, label_names)


def _check_keys(keys: list[str]) -> list[str]:
    """Refuse missing, unpaired or unknown arrays; return the attribute names in file order."""
    for key in ("inputs", "labels"):
        if key not in keys:
            fail(f"dataset.{key}", "missing: every dataset needs the arrays 'inputs' and 'labels'")
    for key in keys:
        if key in PLAIN_KEYS or key.startswith(ATTR_PREFIX):
            continue
        fail(
            f"dataset.{key}",
            f"unknown array; the format knows {', '.join(PLAIN_KEYS)}, "
            f"{ATTR_PREFIX}<name> and {ATTR_PREFIX}<name>{NAMES_SUFFIX}",
        )
    for key in keys:
        if key.startswith(ATTR_PREFIX) and key.endswith(NAMES_SUFFIX) and key[: -len(NAMES_SUFFIX)] not in keys:
            codes = key[: -len(NAMES_SUFFIX)]
            fail(f"dataset.{codes}", f"missing: {key} is given, so the codes {codes} are required too")
    attributes = [key[len(ATTR_PREFIX) :] for key in keys if is_code_key(key) and key.startswith(ATTR_PREFIX)]
    for name in attributes:
        if f"{ATTR_PREFIX}{name}{NAMES_SUFFIX}" not in keys:
            fail(f"dataset.{ATTR_PREFIX}{name}{NAMES_SUFFIX}", f"missing: the value names of attribute {name!r}")
    _check_pair(keys, "split", "split__names")
    _check_pair(keys, "input_mean", "input_std")
    return attributes


def _check_pair(keys: list[str], first: str, second: str) -> None:
    if (first in keys) != (second in keys):
        present, absent = (first, second) if first in keys else (second, first)
        fail(f"dataset.{absent}", f"missing: {present} is given, so {absent} is required too")


def _check_code_dtype(key: str, specs: Mapping[str, ArraySpec]) -> None:
    if specs[key].dtype.kind not in "iu":
        fail(f"dataset.{key}", f"must hold integers, got dtype {specs[key].dtype}")


def _read_names(source: ArraySource, key: str, max_count: int) -> tuple[str, ...]:
    """A 1-d unicode array, read only once its header shows it to be small."""
    spec = source.spec(key)
    if spec.dtype.kind != "U" or len(spec.shape) != 1:
        fail(f"dataset.{key}", f"must be a 1-d unicode string array (numpy dtype '<U...'), got {describe(spec)}")
    check_name_count(f"dataset.{key}", spec.shape[0], max_count)
    if spec.dtype.itemsize > _MAX_NAME_ITEMSIZE:
        fail(
            f"dataset.{key}",
            f"dtype {spec.dtype} holds names of up to {spec.dtype.itemsize // 4} characters; "
            f"names are at most {MAX_NAME_LENGTH}, so store them with numpy's default dtype",
        )
    return tuple(str(name) for name in source.read(key))


def _read_scaling(source: ArraySource, specs: Mapping[str, ArraySpec], channels: int) -> InputScaling:
    from_uint8 = specs["inputs"].dtype == np.uint8
    if "input_mean" not in specs:
        return InputScaling(from_uint8)
    stats = []
    for key in ("input_mean", "input_std"):
        spec = specs[key]
        if spec.dtype.kind != "f" or tuple(spec.shape) != (channels,):
            fail(
                f"dataset.{key}",
                f"must be a float array of shape ({channels},), one value per channel (axis 1 of inputs), "
                f"got {describe(spec)}",
            )
        value = source.read(key)
        if not np.all(np.isfinite(value)):
            fail(f"dataset.{key}", "must be finite")
        stats.append(torch.from_numpy(value.astype(np.float32)))
    if not bool((stats[1] > 0).all()):
        fail("dataset.input_std", f"every channel's std must be > 0, got {stats[1].tolist()}")
    return InputScaling(from_uint8, stats[0], stats[1])


def _int64_ready(key: str, stored: np.ndarray) -> np.ndarray:
    """Stored integer codes, refused when a uint64 value would not survive the cast to int64."""
    if stored.dtype.kind == "u" and stored.dtype.itemsize == 8 and stored.size and int(stored.max()) > _INT64_MAX:
        fail(f"dataset.{key}", f"holds a value too large for int64: {int(stored.max())}")
    return stored


# --------------------------------------------------------------------------------------------
# Reading the values
# --------------------------------------------------------------------------------------------


def dataset_from_source(source: ArraySource) -> GroupDataset:
    """The validated dataset; peak memory is the final tensors plus one chunk."""
    layout = check_layout(source)
    inputs = torch.empty(layout.input_shape, dtype=torch.float32)
    for selector, stored in source.chunks("inputs"):
        layout.scaling.apply(inputs[selector], stored, selector)
    attributes = {name: _codes_tensor(source, f"{ATTR_PREFIX}{name}") for name in layout.attribute_values}
    labels = _codes_tensor(source, "labels")
    has_split = layout.split_names is not None
    return GroupDataset(
        inputs=inputs,
        labels=labels,
        attributes=attributes,
        attribute_values=layout.attribute_values,
        split_codes=_codes_tensor(source, "split") if has_split else None,
        split_names=layout.split_names if has_split else (),
        label_names=layout.label_names,
    )


def _codes_tensor(source: ArraySource, key: str) -> torch.Tensor:
    codes = torch.empty(tuple(source.spec(key).shape), dtype=torch.int64)
    target = codes.numpy()
    for selector, stored in source.chunks(key):
        target[selector] = _int64_ready(key, stored)
    return codes


def summary_from_source(source: ArraySource) -> DatasetSummary:
    """Every check `dataset_from_source` makes, holding one chunk at a time instead of the data."""
    layout = check_layout(source)

    def scaled_inputs() -> Iterator[tuple[Selector, torch.Tensor]]:
        scratch = ChunkScratch(np.float32)
        for selector, stored in source.chunks("inputs"):
            values = torch.from_numpy(scratch.take(stored.shape))
            layout.scaling.apply(values, stored, selector)
            yield selector, values

    def streamed_codes(key: str) -> ChunkedArray:
        def chunks() -> Iterator[tuple[Selector, torch.Tensor]]:
            scratch = ChunkScratch(np.int64)
            for selector, stored in source.chunks(key):
                codes = scratch.take(stored.shape)
                np.copyto(codes, _int64_ready(key, stored), casting="unsafe")
                yield selector, torch.from_numpy(codes)

        return ChunkedArray(tuple(source.spec(key).shape), chunks)

    checked = check_dataset_parts(
        inputs=ChunkedArray(layout.input_shape, scaled_inputs),
        labels=streamed_codes("labels"),
        attributes={name: streamed_codes(f"{ATTR_PREFIX}{name}") for name in layout.attribute_values},
        attribute_values=layout.attribute_values,
        split_codes=streamed_codes("split") if layout.split_names is not None else None,
        split_names=layout.split_names or (),
        label_names=layout.label_names,
    )
    return checked.summary
