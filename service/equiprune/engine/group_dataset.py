"""`GroupDataset`: a validated, group-labelled dataset in memory, and choosing a grouping.

`GroupDataset.select` turns it into the `GroupedData` every engine step works on, for one
grouping (an attribute, or the intersection of several) and one split. Its checks are the
shared ones of `dataset_checks`, so a dataset built in code obeys the file format's rules.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from equiprune.engine.array_chunks import chunked_tensor
from equiprune.engine.dataset_checks import (
    ATTR_PREFIX,
    INTERSECTION_SEPARATOR,
    MAX_GROUPS,
    DatasetSummary,
    check_codes_below,
    check_dataset_parts,
    describe,
    fail,
    scan_codes,
    short,
)
from equiprune.engine.errors import InvalidConfigError, InvalidModelError
from equiprune.engine.groups import GroupedData

DEFAULT_MIN_GROUP_SIZE = 2


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
    # Computed once by __post_init__'s checks, so num_classes and summary() do not rescan.
    _summary: DatasetSummary = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_tensor_types(self)
        checked = check_dataset_parts(
            inputs=chunked_tensor(self.inputs),
            labels=chunked_tensor(self.labels),
            attributes={name: chunked_tensor(codes) for name, codes in self.attributes.items()},
            attribute_values=self.attribute_values,
            split_codes=chunked_tensor(self.split_codes) if self.split_codes is not None else None,
            split_names=self.split_names,
            label_names=self.label_names,
        )
        object.__setattr__(self, "_summary", checked.summary)
        object.__setattr__(self, "label_names", checked.summary.label_names)
        object.__setattr__(self, "attributes", MappingProxyType(dict(self.attributes)))
        object.__setattr__(self, "attribute_values", MappingProxyType(checked.attribute_values))
        object.__setattr__(self, "split_names", checked.split_names)

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
        return self._summary.num_classes

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.inputs.shape[1:])

    def summary(self) -> DatasetSummary:
        return self._summary

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

    def _check_group_by(self, group_by: Sequence[str] | str) -> tuple[str, ...]:
        if not isinstance(group_by, str | Sequence):
            fail("dataset.group_by", f"must be an attribute name or a sequence of them, got {describe(group_by)}")
        names = (group_by,) if isinstance(group_by, str) else tuple(group_by)
        known = ", ".join(self.attributes)
        if not names:
            fail("dataset.group_by", f"names no attribute; choose one or more of: {known}")
        for name in names:
            if not isinstance(name, str) or name not in self.attributes:
                fail("dataset.group_by", f"unknown attribute {short(name)}; known attributes: {known}")
        if len(set(names)) != len(names):
            fail("dataset.group_by", f"names an attribute twice: {list(names)}")
        count = math.prod(len(self.attribute_values[a]) for a in names)
        if count > MAX_GROUPS:
            fail("dataset.group_by", f"{list(names)} makes {count} groups; at most {MAX_GROUPS} are allowed")
        return names

    def _group_codes(self, names: tuple[str, ...]) -> torch.Tensor:
        # Mixed-radix index, first attribute most significant: matches itertools.product order.
        codes = torch.zeros(len(self), dtype=torch.int64)
        for name in names:
            codes = codes * len(self.attribute_values[name]) + self.attributes[name]
        return codes

    def _split_mask(self, split: str) -> torch.Tensor:
        if self.split_codes is None:
            fail("dataset.split", f"split {split!r} requested but the dataset has no split array")
        if split not in self.split_names:
            fail("dataset.split", f"unknown split {short(split)}; known splits: {', '.join(self.split_names)}")
        mask = self.split_codes == self.split_names.index(split)
        if not bool(mask.any()):
            fail("dataset.split", f"split {split!r} has no samples")
        return mask


def _check_tensor_types(dataset: GroupDataset) -> None:
    """What only a dataset built in code can get wrong: the kinds of its fields. Every other
    rule is in check_dataset_parts, shared with files."""
    _check_tensor("dataset.inputs", dataset.inputs, torch.float32, "a float32")
    _check_tensor("dataset.labels", dataset.labels, torch.int64, "an int64")
    if not isinstance(dataset.attributes, Mapping) or not isinstance(dataset.attribute_values, Mapping):
        fail("dataset.attributes", "attributes and attribute_values must be mappings keyed by attribute name")
    for name, codes in dataset.attributes.items():
        _check_tensor(f"dataset.{ATTR_PREFIX}{name}", codes, torch.int64, "an int64")
    if dataset.split_codes is not None:
        _check_tensor("dataset.split", dataset.split_codes, torch.int64, "an int64")


def _check_tensor(field_path: str, value: Any, dtype: torch.dtype, kind: str) -> None:
    if not isinstance(value, torch.Tensor) or value.dtype != dtype:
        fail(field_path, f"must be {kind} tensor, got {describe(value)}")


def _check_group_sizes(data: GroupedData, min_group_size: int, split: str | None) -> None:
    counts = data.group_counts().tolist()
    small = [(name, c) for name, c in zip(data.group_names, counts, strict=True) if c < min_group_size]
    if not small:
        return
    where = f"split {split!r}" if split is not None else "the dataset"
    listed = ", ".join(f"{name!r} ({c} sample{'s' if c != 1 else ''})" for name, c in small[:10])
    more = f" and {len(small) - 10} more" if len(small) > 10 else ""
    fail(
        "dataset.group_by",
        f"{len(small)} group(s) of {where} have fewer than min_group_size={min_group_size} samples: "
        f"{listed}{more}; pass a smaller min_group_size (0 allows empty groups) or merge groups",
    )


def validate_for_model(dataset: GroupDataset, num_classes: int, input_shape: Sequence[int] | None = None) -> None:
    """Refuse a dataset whose labels or samples do not fit a model's outputs and input.

    num_classes: the model's output count; input_shape: one sample's shape, without batch.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise InvalidModelError("model.num_classes", f"must be an integer >= 1, got {num_classes!r}")
    if dataset.label_names and len(dataset.label_names) != num_classes:
        fail(
            "dataset.label_names",
            f"names {len(dataset.label_names)} classes but the model has {num_classes} outputs",
        )
    scan = scan_codes(chunked_tensor(dataset.labels), num_classes)
    check_codes_below("dataset.labels", scan, f"the model's {num_classes} outputs")
    if input_shape is not None and tuple(input_shape) != dataset.sample_shape:
        fail(
            "dataset.inputs",
            f"samples have shape {dataset.sample_shape} but the model expects {tuple(input_shape)}",
        )
