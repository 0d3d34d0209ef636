"""Group-labelled datasets: the `.npz` format, its validation, and choosing a grouping.

A dataset arrives once as an `.npz` archive (docs/dataset-format.md), is checked here field by
field, and becomes a `GroupDataset`: normalised float32 inputs, int64 labels, one or more group
attributes (integer codes plus value names) and an optional split. `GroupDataset.select` turns
it into the `GroupedData` every engine step works on, for one grouping (an attribute, or the
intersection of several) and one split.

Every refusal is an `InvalidDatasetError` whose field names the array, e.g. `dataset.labels`
or `dataset.attr__race`. Archives are read member by member: each `.npy` header is checked
(no object or structured dtypes, no size beyond what the member holds, no archive beyond
`max_bytes`) before numpy reads the data with pickling disabled.
"""

from __future__ import annotations

import itertools
import math
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from types import MappingProxyType
from typing import IO, Any, NoReturn

import numpy as np
import torch

from equiprune.engine.errors import InvalidConfigError, InvalidDatasetError, InvalidModelError
from equiprune.engine.groups import GroupedData

ATTR_PREFIX = "attr__"
NAMES_SUFFIX = "__names"
# Attribute names may not contain "__", so `attr__<name>__names` parses one way only.
ATTRIBUTE_NAME_PATTERN = re.compile(r"[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*")
# Intersections are named by joining value names with "&" ("Black&female").
INTERSECTION_SEPARATOR = "&"

MAX_ATTRIBUTES = 32
MAX_ATTRIBUTE_NAME_LENGTH = 64
MAX_NAME_LENGTH = 100
MAX_VALUES_PER_ATTRIBUTE = 10_000
MAX_SPLITS = 100
MAX_GROUPS = 10_000
MAX_CLASSES = 100_000
MAX_SAMPLE_DIMS = 4
DEFAULT_MAX_BYTES = 8 * 2**30
# Far above what the format can hold, so the field-level checks name the problem; this only
# stops an archive of countless tiny members before it is walked.
MAX_ARCHIVE_MEMBERS = 1_000
DEFAULT_MIN_GROUP_SIZE = 2

_INPUT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.uint8))
_PLAIN_KEYS = ("inputs", "labels", "split", "split__names", "label_names", "input_mean", "input_std")
_PathOrFile = str | PathLike[str] | IO[bytes]


def _fail(field_path: str, problem: str) -> NoReturn:
    raise InvalidDatasetError(field_path, problem)


# --------------------------------------------------------------------------------------------
# The in-memory dataset
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSummary:
    """What a dataset holds, for a reply to whoever uploaded it."""

    num_samples: int
    sample_shape: tuple[int, ...]
    num_classes: int
    label_names: tuple[str, ...]
    attribute_counts: Mapping[str, Mapping[str, int]]
    split_counts: Mapping[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_samples": self.num_samples,
            "sample_shape": list(self.sample_shape),
            "num_classes": self.num_classes,
            "label_names": list(self.label_names),
            "attribute_counts": {a: dict(c) for a, c in self.attribute_counts.items()},
            "split_counts": dict(self.split_counts),
        }


@dataclass(frozen=True, eq=False)
class GroupDataset:
    """A validated, group-labelled dataset (tensors compared by identity, not by value).

    inputs: float32 (N, ...), already scaled and normalised.
    labels: int64 (N,), class indices.
    attributes: attribute name -> int64 (N,) codes indexing `attribute_values[name]`.
    attribute_values: attribute name -> the names of its values, in code order.
    split_codes: int64 (N,) indexing `split_names`, or None when the data has no split.
    split_names: names of the splits ("train", "test", "constraint", ...); empty without split.
    label_names: class names in label order, or empty when the file gave none.
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    attributes: Mapping[str, torch.Tensor]
    attribute_values: Mapping[str, tuple[str, ...]]
    split_codes: torch.Tensor | None = None
    split_names: tuple[str, ...] = ()
    label_names: tuple[str, ...] = ()
    # Set by __post_init__ so num_classes does not rescan the labels.
    _num_classes: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        n = _check_inputs(self.inputs)
        _check_index_tensor("dataset.labels", self.labels, n)
        label_names = _check_names("dataset.label_names", self.label_names, max_count=MAX_CLASSES)
        object.__setattr__(self, "label_names", label_names)
        object.__setattr__(self, "_num_classes", _check_labels(self.labels, label_names))
        attributes, values = _check_attributes(self.attributes, self.attribute_values, n)
        object.__setattr__(self, "attributes", MappingProxyType(attributes))
        object.__setattr__(self, "attribute_values", MappingProxyType(values))
        object.__setattr__(self, "split_names", _check_split(self.split_codes, self.split_names, n))

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def __repr__(self) -> str:
        # The default repr would print every tensor; shapes and names are what a log needs.
        return (
            f"GroupDataset(num_samples={len(self)}, sample_shape={self.sample_shape}, "
            f"num_classes={self.num_classes}, attributes={list(self.attributes)}, splits={list(self.split_names)})"
        )

    @property
    def attribute_names(self) -> tuple[str, ...]:
        return tuple(self.attributes)

    @property
    def num_classes(self) -> int:
        """len(label_names) when the file named the classes, else the largest label + 1."""
        return self._num_classes

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.inputs.shape[1:])

    def group_names(self, group_by: Sequence[str] | str) -> tuple[str, ...]:
        """Every group of a grouping, in a stable order (the caller's attribute order, then
        each attribute's value order, last attribute varying fastest)."""
        names = self._check_group_by(group_by)
        return tuple(
            INTERSECTION_SEPARATOR.join(combo)
            for combo in itertools.product(*(self.attribute_values[a] for a in names))
        )

    def select(
        self,
        group_by: Sequence[str] | str,
        split: str | None = None,
        *,
        min_group_size: int = DEFAULT_MIN_GROUP_SIZE,
    ) -> GroupedData:
        """The samples of one split, grouped by one attribute or the intersection of several.

        group_by: attribute names; a single name may be passed as a plain string.
        split: a split name, or None for every sample.
        min_group_size: each group must hold at least this many samples of the selection
            (an empty group counts as 0), so per-group numbers mean something; 0 allows
            empty and single-sample groups. `group_names` always lists every group.
        """
        if isinstance(min_group_size, bool) or not isinstance(min_group_size, int) or min_group_size < 0:
            raise InvalidConfigError("min_group_size", f"must be an integer >= 0, got {min_group_size!r}")
        names = self._check_group_by(group_by)
        data = GroupedData(self.inputs, self.labels, self._group_codes(names), self.group_names(names))
        if split is not None:
            data = data.subset(self._split_mask(split))
        _check_group_sizes(data, min_group_size, split)
        return data

    def summary(self) -> DatasetSummary:
        return DatasetSummary(
            num_samples=len(self),
            sample_shape=self.sample_shape,
            num_classes=self.num_classes,
            label_names=self.label_names,
            attribute_counts={a: _value_counts(self.attributes[a], self.attribute_values[a]) for a in self.attributes},
            split_counts=_value_counts(self.split_codes, self.split_names) if self.split_codes is not None else {},
        )

    def _check_group_by(self, group_by: Sequence[str] | str) -> tuple[str, ...]:
        if not isinstance(group_by, str | Sequence):
            _fail("dataset.group_by", f"must be an attribute name or a sequence of them, got {_describe(group_by)}")
        names = (group_by,) if isinstance(group_by, str) else tuple(group_by)
        known = ", ".join(self.attributes)
        if not names:
            _fail("dataset.group_by", f"names no attribute; choose one or more of: {known}")
        for name in names:
            if not isinstance(name, str) or name not in self.attributes:
                _fail("dataset.group_by", f"unknown attribute {_short(name)}; known attributes: {known}")
        if len(set(names)) != len(names):
            _fail("dataset.group_by", f"names an attribute twice: {list(names)}")
        count = math.prod(len(self.attribute_values[a]) for a in names)
        if count > MAX_GROUPS:
            _fail("dataset.group_by", f"{list(names)} makes {count} groups; at most {MAX_GROUPS} are allowed")
        return names

    def _group_codes(self, names: tuple[str, ...]) -> torch.Tensor:
        # Mixed-radix index, first attribute most significant: matches itertools.product order.
        codes = torch.zeros(len(self), dtype=torch.int64)
        for name in names:
            codes = codes * len(self.attribute_values[name]) + self.attributes[name]
        return codes

    def _split_mask(self, split: str) -> torch.Tensor:
        if self.split_codes is None:
            _fail("dataset.split", f"split {split!r} requested but the dataset has no split array")
        if split not in self.split_names:
            _fail("dataset.split", f"unknown split {_short(split)}; known splits: {', '.join(self.split_names)}")
        mask = self.split_codes == self.split_names.index(split)
        if not bool(mask.any()):
            _fail("dataset.split", f"split {split!r} has no samples")
        return mask


def _value_counts(codes: torch.Tensor, names: tuple[str, ...]) -> dict[str, int]:
    counts = torch.bincount(codes, minlength=len(names)).tolist()
    return dict(zip(names, counts, strict=True))


def _check_group_sizes(data: GroupedData, min_group_size: int, split: str | None) -> None:
    counts = data.group_counts().tolist()
    small = [(name, c) for name, c in zip(data.group_names, counts, strict=True) if c < min_group_size]
    if not small:
        return
    where = f"split {split!r}" if split is not None else "the dataset"
    listed = ", ".join(f"{name!r} ({c} sample{'s' if c != 1 else ''})" for name, c in small[:10])
    more = f" and {len(small) - 10} more" if len(small) > 10 else ""
    _fail(
        "dataset.group_by",
        f"{len(small)} group(s) of {where} have fewer than min_group_size={min_group_size} samples: "
        f"{listed}{more}; pass a smaller min_group_size (0 allows empty groups) or merge groups",
    )


# --------------------------------------------------------------------------------------------
# Checks on tensors (they also guard datasets built in code, not loaded from a file)
# --------------------------------------------------------------------------------------------


def _check_inputs(inputs: torch.Tensor) -> int:
    if not isinstance(inputs, torch.Tensor) or inputs.dtype != torch.float32:
        _fail("dataset.inputs", f"must be a float32 tensor, got {_describe(inputs)}")
    if not 2 <= inputs.dim() <= 1 + MAX_SAMPLE_DIMS:
        _fail(
            "dataset.inputs",
            f"must have shape (N, ...) with 1 to {MAX_SAMPLE_DIMS} dimensions per sample, "
            f"got shape {tuple(inputs.shape)}",
        )
    n = int(inputs.shape[0])
    if n == 0:
        _fail("dataset.inputs", "the dataset has no samples")
    if 0 in inputs.shape:
        _fail("dataset.inputs", f"each sample is empty: shape {tuple(inputs.shape)}")
    bad = ~torch.isfinite(inputs)
    if bool(bad.any()):
        first = int(torch.nonzero(bad.reshape(n, -1).any(dim=1))[0])
        _fail(
            "dataset.inputs",
            f"{int(bad.sum())} values are NaN or infinite (first in sample {first}); "
            f"inputs must be finite after scaling and normalisation",
        )
    return n


def _check_index_tensor(field_path: str, codes: Any, n: int) -> None:
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.int64:
        _fail(field_path, f"must be an int64 tensor, got {_describe(codes)}")
    if tuple(codes.shape) != (n,):
        _fail(field_path, f"must have shape ({n},), one entry per sample of inputs, got {tuple(codes.shape)}")


def _check_codes_below(field_path: str, codes: torch.Tensor, limit: int, meaning: str) -> None:
    """Every code in 0..limit-1; the message names the first one that is not."""
    bad = (codes < 0) | (codes >= limit)
    if bool(bad.any()):
        first = int(torch.nonzero(bad)[0])
        _fail(
            field_path,
            f"{int(bad.sum())} values fall outside 0..{limit - 1} ({meaning}); "
            f"the first is {int(codes[first])} at sample {first}",
        )


def _check_labels(labels: torch.Tensor, label_names: tuple[str, ...]) -> int:
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        first = int(torch.nonzero(labels < 0)[0])
        _fail("dataset.labels", f"labels are class indices and cannot be negative; got {low} (first at sample {first})")
    if label_names:
        _check_codes_below("dataset.labels", labels, len(label_names), f"the {len(label_names)} classes in label_names")
        return len(label_names)
    if high >= MAX_CLASSES:
        _fail("dataset.labels", f"largest label {high} implies more than {MAX_CLASSES} classes")
    return high + 1


def _check_names(field_path: str, names: Any, *, max_count: int, forbid: str = "") -> tuple[str, ...]:
    if isinstance(names, str) or not isinstance(names, Sequence):
        _fail(field_path, f"must be a sequence of strings, got {_describe(names)}")
    names = tuple(names)
    if len(names) > max_count:
        _fail(field_path, f"lists {len(names)} names; at most {max_count} are allowed")
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH:
            _fail(
                field_path,
                f"entry {i} ({_short(name)}) must be a non-blank string of at most {MAX_NAME_LENGTH} characters",
            )
        if forbid and forbid in name:
            _fail(field_path, f"entry {i} ({_short(name)}) contains {forbid!r}, which joins the names of intersections")
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        _fail(field_path, f"names must be unique; listed more than once: {twice}")
    return names


def _check_attributes(
    attributes: Mapping[str, torch.Tensor], values: Mapping[str, Sequence[str]], n: int
) -> tuple[dict[str, torch.Tensor], dict[str, tuple[str, ...]]]:
    if not isinstance(attributes, Mapping) or not isinstance(values, Mapping):
        _fail("dataset.attributes", "attributes and attribute_values must be mappings keyed by attribute name")
    if not attributes:
        _fail("dataset.attributes", f"no group attribute; add at least one {ATTR_PREFIX}<name> array with its names")
    if len(attributes) > MAX_ATTRIBUTES:
        _fail("dataset.attributes", f"{len(attributes)} attributes; at most {MAX_ATTRIBUTES} are allowed")
    if set(attributes) != set(values):
        _fail("dataset.attributes", f"codes for {sorted(attributes)} but value names for {sorted(values)}")
    _check_attribute_names(list(attributes))
    checked_values: dict[str, tuple[str, ...]] = {}
    for name, codes in attributes.items():
        key = f"dataset.{ATTR_PREFIX}{name}"
        names = _check_names(
            key + NAMES_SUFFIX, values[name], max_count=MAX_VALUES_PER_ATTRIBUTE, forbid=INTERSECTION_SEPARATOR
        )
        if not names:
            _fail(key + NAMES_SUFFIX, "lists no value names")
        _check_index_tensor(key, codes, n)
        _check_codes_below(key, codes, len(names), f"the {len(names)} names in {ATTR_PREFIX}{name}{NAMES_SUFFIX}")
        checked_values[name] = names
    return dict(attributes), checked_values


def _check_attribute_names(names: list[str]) -> None:
    seen: dict[str, str] = {}
    for name in names:
        key = f"dataset.{ATTR_PREFIX}{name}"
        well_formed = isinstance(name, str) and ATTRIBUTE_NAME_PATTERN.fullmatch(name) is not None
        if not well_formed or len(name) > MAX_ATTRIBUTE_NAME_LENGTH:
            _fail(
                key,
                f"attribute name {_short(name)} must be letters and digits joined by single underscores, "
                f"at most {MAX_ATTRIBUTE_NAME_LENGTH} characters",
            )
        # Names that differ only in case would collide in reports and metric labels.
        folded = name.lower()
        if folded in seen:
            _fail(key, f"duplicate attribute name: {name!r} and {seen[folded]!r} differ only in case")
        seen[folded] = name


def _check_split(codes: torch.Tensor | None, names: Sequence[str], n: int) -> tuple[str, ...]:
    names = _check_names("dataset.split__names", names, max_count=MAX_SPLITS)
    if codes is None:
        if names:
            _fail("dataset.split", "split__names given without split codes")
        return names
    if not names:
        _fail("dataset.split__names", "split codes given without split names")
    _check_index_tensor("dataset.split", codes, n)
    _check_codes_below("dataset.split", codes, len(names), f"the {len(names)} names in split__names")
    return names


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor | np.ndarray):
        return f"{type(value).__name__} of dtype {value.dtype} and shape {tuple(value.shape)}"
    return type(value).__name__


# --------------------------------------------------------------------------------------------
# From the file's arrays to a GroupDataset and back
# --------------------------------------------------------------------------------------------


def dataset_from_arrays(arrays: Mapping[str, np.ndarray]) -> GroupDataset:
    """Build a dataset from arrays named as in the `.npz` format (docs/dataset-format.md).

    uint8 inputs are scaled by 1/255, then `input_mean`/`input_std` (per channel, axis 1),
    when given, normalise them; the result holds float32 inputs and int64 codes.
    """
    attribute_names = _check_keys(arrays)
    inputs = _inputs_tensor(arrays)
    attributes = {a: _codes_tensor(f"{ATTR_PREFIX}{a}", arrays) for a in attribute_names}
    values = {a: _names_tuple(f"{ATTR_PREFIX}{a}{NAMES_SUFFIX}", arrays) for a in attribute_names}
    has_split = "split" in arrays
    return GroupDataset(
        inputs=inputs,
        labels=_codes_tensor("labels", arrays),
        attributes=attributes,
        attribute_values=values,
        split_codes=_codes_tensor("split", arrays) if has_split else None,
        split_names=_names_tuple("split__names", arrays) if has_split else (),
        label_names=_names_tuple("label_names", arrays) if "label_names" in arrays else (),
    )


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


def _check_keys(arrays: Mapping[str, Any]) -> list[str]:
    """Refuse missing, unpaired or unknown arrays; return the attribute names in file order."""
    for key in ("inputs", "labels"):
        if key not in arrays:
            _fail(f"dataset.{key}", "missing: every dataset needs the arrays 'inputs' and 'labels'")
    attributes = [k[len(ATTR_PREFIX) :] for k in arrays if k.startswith(ATTR_PREFIX) and not k.endswith(NAMES_SUFFIX)]
    for key in arrays:
        if key in _PLAIN_KEYS or key.startswith(ATTR_PREFIX):
            continue
        _fail(
            f"dataset.{key}",
            f"unknown array; the format knows {', '.join(_PLAIN_KEYS)}, "
            f"{ATTR_PREFIX}<name> and {ATTR_PREFIX}<name>{NAMES_SUFFIX}",
        )
    for key in arrays:
        if key.startswith(ATTR_PREFIX) and key.endswith(NAMES_SUFFIX) and key[: -len(NAMES_SUFFIX)] not in arrays:
            codes = key[: -len(NAMES_SUFFIX)]
            _fail(f"dataset.{codes}", f"missing: {key} is given, so the codes {codes} are required too")
    for name in attributes:
        if f"{ATTR_PREFIX}{name}{NAMES_SUFFIX}" not in arrays:
            _fail(f"dataset.{ATTR_PREFIX}{name}{NAMES_SUFFIX}", f"missing: the value names of attribute {name!r}")
    _check_pair(arrays, "split", "split__names")
    _check_pair(arrays, "input_mean", "input_std")
    for key, value in arrays.items():
        if not isinstance(value, np.ndarray):
            _fail(f"dataset.{key}", f"must be a numpy array, got {_describe(value)}")
    return attributes


def _check_pair(arrays: Mapping[str, Any], first: str, second: str) -> None:
    if (first in arrays) != (second in arrays):
        present, absent = (first, second) if first in arrays else (second, first)
        _fail(f"dataset.{absent}", f"missing: {present} is given, so {absent} is required too")


def _inputs_tensor(arrays: Mapping[str, np.ndarray]) -> torch.Tensor:
    raw = arrays["inputs"]
    if raw.dtype not in _INPUT_DTYPES:
        _fail("dataset.inputs", f"dtype must be float32, float16 or uint8, got {raw.dtype}")
    if not 2 <= raw.ndim <= 1 + MAX_SAMPLE_DIMS:
        _fail(
            "dataset.inputs",
            f"must have shape (N, ...) with 1 to {MAX_SAMPLE_DIMS} dimensions per sample, got shape {raw.shape}",
        )
    inputs = torch.tensor(raw, dtype=torch.float32)
    if raw.dtype == np.uint8:
        inputs /= 255.0
    if "input_mean" in arrays:
        mean, std = _normalisation_stats(arrays, channels=raw.shape[1])
        view = (1, -1) + (1,) * (raw.ndim - 2)
        inputs.sub_(mean.view(view)).div_(std.view(view))
    return inputs


def _normalisation_stats(arrays: Mapping[str, np.ndarray], channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    stats = []
    for key in ("input_mean", "input_std"):
        value = arrays[key]
        if value.dtype.kind != "f" or value.shape != (channels,):
            _fail(
                f"dataset.{key}",
                f"must be a float array of shape ({channels},), one value per channel (axis 1 of inputs), "
                f"got {_describe(value)}",
            )
        if not np.all(np.isfinite(value)):
            _fail(f"dataset.{key}", "must be finite")
        stats.append(torch.from_numpy(value.astype(np.float32)))
    if not bool((stats[1] > 0).all()):
        _fail("dataset.input_std", f"every channel's std must be > 0, got {stats[1].tolist()}")
    return stats[0], stats[1]


def _codes_tensor(key: str, arrays: Mapping[str, np.ndarray]) -> torch.Tensor:
    """Integer codes as int64; shapes are checked by GroupDataset."""
    raw = arrays[key]
    if raw.dtype.kind not in "iu":
        _fail(f"dataset.{key}", f"must hold integers, got dtype {raw.dtype}")
    if raw.dtype == np.uint64 and raw.size and int(raw.max()) > np.iinfo(np.int64).max:
        _fail(f"dataset.{key}", f"holds a value too large for int64: {int(raw.max())}")
    return torch.from_numpy(raw.astype(np.int64))


def _names_tuple(key: str, arrays: Mapping[str, np.ndarray]) -> tuple[str, ...]:
    raw = arrays[key]
    if raw.dtype.kind != "U" or raw.ndim != 1:
        _fail(f"dataset.{key}", f"must be a 1-d unicode string array (numpy dtype '<U...'), got {_describe(raw)}")
    return tuple(str(name) for name in raw)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def load_dataset(source: _PathOrFile, *, max_bytes: int = DEFAULT_MAX_BYTES) -> GroupDataset:
    """Read and validate an `.npz` dataset from a path or a binary file object.

    max_bytes caps the uncompressed size of the archive, checked before anything is read.
    """
    return dataset_from_arrays(_read_npz(source, max_bytes))


def save_dataset(dataset: GroupDataset, target: _PathOrFile) -> None:
    """Write `dataset` so that `load_dataset` gives back identical tensors and names.

    Written uncompressed and without the `.npz` suffix numpy would otherwise append.
    """
    arrays = dataset_to_arrays(dataset)
    if hasattr(target, "write"):
        np.savez(target, **arrays)
        return
    with open(target, "wb") as handle:
        np.savez(handle, **arrays)


def _read_npz(source: _PathOrFile, max_bytes: int) -> dict[str, np.ndarray]:
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        _fail("dataset", f"not a readable .npz (zip) archive: {exc}")
    with archive:
        members = archive.infolist()
        _check_members(members, max_bytes)
        return {info.filename[: -len(".npy")]: _read_member(archive, info) for info in members}


def _check_members(members: list[zipfile.ZipInfo], max_bytes: int) -> None:
    names = [info.filename for info in members]
    if len(names) > MAX_ARCHIVE_MEMBERS:
        _fail("dataset", f"the archive holds {len(names)} members; at most {MAX_ARCHIVE_MEMBERS} are read")
    for name in names:
        if not name.endswith(".npy"):
            _fail(f"dataset.{name}", "archive member is not a .npy array")
        if names.count(name) > 1:
            _fail(f"dataset.{name[: -len('.npy')]}", "appears more than once in the archive")
    total = sum(info.file_size for info in members)
    if total > max_bytes:
        _fail("dataset", f"the archive unpacks to {total} bytes; the limit is {max_bytes}")


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    key = info.filename[: -len(".npy")]
    try:
        with archive.open(info) as stream:
            _check_npy_header(key, stream, info.file_size)
        with archive.open(info) as stream:
            return np.lib.format.read_array(stream, allow_pickle=False)
    except (ValueError, EOFError, zipfile.BadZipFile) as exc:
        _fail(f"dataset.{key}", f"cannot read the array: {exc}")


def _check_npy_header(key: str, stream: IO[bytes], member_size: int) -> None:
    """Refuse object arrays and headers promising more data than the member holds."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        _fail(f"dataset.{key}", f".npy format version {version} is not supported (use 1.0 or 2.0)")
    if dtype.hasobject or dtype.fields is not None:
        _fail(
            f"dataset.{key}",
            f"dtype {dtype} is not allowed: only plain numeric and unicode arrays, never pickled objects",
        )
    needed = math.prod(shape) * dtype.itemsize
    if needed > member_size:
        _fail(f"dataset.{key}", f"header promises {needed} bytes but the member holds {member_size}")


# --------------------------------------------------------------------------------------------
# Fit to a model
# --------------------------------------------------------------------------------------------


def validate_for_model(dataset: GroupDataset, num_classes: int, input_shape: Sequence[int] | None = None) -> None:
    """Refuse a dataset whose labels or samples do not fit a model's outputs and input.

    num_classes: the model's output count; input_shape: one sample's shape, without batch.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise InvalidModelError("model.num_classes", f"must be an integer >= 1, got {num_classes!r}")
    if dataset.label_names and len(dataset.label_names) != num_classes:
        _fail(
            "dataset.label_names",
            f"names {len(dataset.label_names)} classes but the model has {num_classes} outputs",
        )
    _check_codes_below("dataset.labels", dataset.labels, num_classes, f"the model's {num_classes} outputs")
    if input_shape is not None and tuple(input_shape) != dataset.sample_shape:
        _fail(
            "dataset.inputs",
            f"samples have shape {dataset.sample_shape} but the model expects {tuple(input_shape)}",
        )
