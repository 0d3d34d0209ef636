"""The rules a dataset must follow (docs/dataset-format.md), each written once.

Three ways in share them: a `GroupDataset` built in code, arrays given to `dataset_from_arrays`
or read by `load_dataset`, and an archive streamed by `inspect_dataset` without ever holding
its arrays. So every check on values takes a `ChunkedArray` and keeps a running state (counts,
the first offending sample) instead of looking at a whole array at once, and
`check_dataset_parts` applies them all in one fixed order, whatever the arrays are made of.

Every refusal is an `InvalidDatasetError` whose field names the array, e.g. `dataset.labels`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np
import torch

from equiprune.engine.array_chunks import ChunkedArray, ChunkScratch, as_numpy
from equiprune.engine.errors import InvalidDatasetError

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


def fail(field_path: str, problem: str) -> NoReturn:
    raise InvalidDatasetError(field_path, problem)


def short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(value: Any) -> str:
    if isinstance(value, torch.Tensor | np.ndarray):
        return f"{type(value).__name__} of dtype {value.dtype} and shape {tuple(value.shape)}"
    if hasattr(value, "dtype") and hasattr(value, "shape"):  # an array known from its file header
        return f"array of dtype {value.dtype} and shape {tuple(value.shape)}"
    return type(value).__name__


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


# --------------------------------------------------------------------------------------------
# Shapes and names
# --------------------------------------------------------------------------------------------


def check_input_dims(shape: tuple[int, ...]) -> None:
    """Inputs are (N, d1 ... dk) with 1 <= k <= MAX_SAMPLE_DIMS; checkable from a file's header."""
    if not 2 <= len(shape) <= 1 + MAX_SAMPLE_DIMS:
        fail(
            "dataset.inputs",
            f"must have shape (N, ...) with 1 to {MAX_SAMPLE_DIMS} dimensions per sample, got shape {tuple(shape)}",
        )


def check_input_shape(shape: tuple[int, ...]) -> int:
    """The dimension rule, N >= 1 and every dimension >= 1; returns N."""
    check_input_dims(shape)
    if shape[0] == 0:
        fail("dataset.inputs", "the dataset has no samples")
    if 0 in shape:
        fail("dataset.inputs", f"each sample is empty: shape {tuple(shape)}")
    return shape[0]


def check_code_shape(field_path: str, shape: tuple[int, ...], n: int) -> None:
    if tuple(shape) != (n,):
        fail(field_path, f"must have shape ({n},), one entry per sample of inputs, got {tuple(shape)}")


def check_name_count(field_path: str, count: int, max_count: int) -> None:
    if count > max_count:
        fail(field_path, f"lists {count} names; at most {max_count} are allowed")


def check_names(field_path: str, names: Any, *, max_count: int, forbid: str = "") -> tuple[str, ...]:
    """Non-blank, unique strings of at most MAX_NAME_LENGTH characters, at most max_count."""
    if isinstance(names, str) or not isinstance(names, Sequence):
        fail(field_path, f"must be a sequence of strings, got {describe(names)}")
    names = tuple(names)
    check_name_count(field_path, len(names), max_count)
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH:
            fail(
                field_path,
                f"entry {i} ({short(name)}) must be a non-blank string of at most {MAX_NAME_LENGTH} characters",
            )
        if forbid and forbid in name:
            fail(field_path, f"entry {i} ({short(name)}) contains {forbid!r}, which joins the names of intersections")
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        fail(field_path, f"names must be unique; listed more than once: {twice}")
    return names


def check_attribute_names(names: Sequence[Any]) -> None:
    seen: dict[str, str] = {}
    for name in names:
        key = f"dataset.{ATTR_PREFIX}{name}"
        well_formed = isinstance(name, str) and ATTRIBUTE_NAME_PATTERN.fullmatch(name) is not None
        if not well_formed or len(name) > MAX_ATTRIBUTE_NAME_LENGTH:
            fail(
                key,
                f"attribute name {short(name)} must be letters and digits joined by single underscores, "
                f"at most {MAX_ATTRIBUTE_NAME_LENGTH} characters",
            )
        # Names that differ only in case would collide in reports and metric labels.
        folded = name.lower()
        if folded in seen:
            fail(key, f"duplicate attribute name: {name!r} and {seen[folded]!r} differ only in case")
        seen[folded] = name


# --------------------------------------------------------------------------------------------
# Values, chunk by chunk
# --------------------------------------------------------------------------------------------


def check_finite(inputs: ChunkedArray) -> None:
    """Every input value finite (after scaling and normalisation, which the chunks carry)."""
    bad_values, first_sample = 0, None
    scratch = ChunkScratch(np.bool_)
    for selector, chunk in inputs.chunks():
        values = as_numpy(chunk)
        finite = np.isfinite(values, out=scratch.take(values.shape))
        if finite.all():
            continue
        bad = ~finite
        bad_values += int(bad.sum())
        # Fortran-ordered chunks do not arrive in sample order, so keep the smallest.
        sample = selector[0].start + int(bad.reshape(bad.shape[0], -1).any(axis=1).argmax())
        first_sample = sample if first_sample is None else min(first_sample, sample)
    if bad_values:
        fail(
            "dataset.inputs",
            f"{bad_values} values are NaN or infinite (first in sample {first_sample}); "
            f"inputs must be finite after scaling and normalisation",
        )


@dataclass
class CodeScan:
    """What one pass over integer codes (1-d, int64 chunks) found.

    limit: codes must lie in 0..limit-1 when known (value names given), else None.
    With a limit, `counts` holds how many samples carry each code once every code is in range.
    """

    limit: int | None
    minimum: int | None = None
    maximum: int | None = None
    first_negative: int | None = None
    outside: int = 0
    first_outside: tuple[int, int] | None = None  # (sample, code)
    counts: np.ndarray | None = field(default=None, repr=False)

    def update(self, start: int, codes: np.ndarray) -> None:
        if codes.size == 0:
            return
        low, high = int(codes.min()), int(codes.max())
        self.minimum = low if self.minimum is None else min(self.minimum, low)
        self.maximum = high if self.maximum is None else max(self.maximum, high)
        if low < 0 and self.first_negative is None:
            self.first_negative = start + int((codes < 0).argmax())
        if self.limit is None:
            return
        if low >= 0 and high < self.limit:
            counts = np.bincount(codes, minlength=self.limit)
            self.counts = counts if self.counts is None else self.counts + counts
            return
        bad = (codes < 0) | (codes >= self.limit)
        self.outside += int(bad.sum())
        if self.first_outside is None:
            at = int(bad.argmax())
            self.first_outside = (start + at, int(codes[at]))

    def value_counts(self, names: tuple[str, ...]) -> dict[str, int]:
        counts = self.counts.tolist() if self.counts is not None else [0] * len(names)
        return dict(zip(names, counts, strict=True))


def scan_codes(codes: ChunkedArray, limit: int | None) -> CodeScan:
    scan = CodeScan(limit)
    for selector, chunk in codes.chunks():
        scan.update(selector[0].start, as_numpy(chunk))
    return scan


def check_codes_below(field_path: str, scan: CodeScan, meaning: str) -> None:
    """Every code scanned in 0..scan.limit-1; the message names the first one that is not."""
    if scan.outside:
        sample, code = scan.first_outside
        fail(
            field_path,
            f"{scan.outside} values fall outside 0..{scan.limit - 1} ({meaning}); "
            f"the first is {code} at sample {sample}",
        )


def check_labels(labels: ChunkedArray, label_names: tuple[str, ...]) -> int:
    """Labels are class indices: >= 0, below len(label_names) when given. Returns the class count."""
    scan = scan_codes(labels, len(label_names) if label_names else None)
    if scan.minimum < 0:
        fail(
            "dataset.labels",
            f"labels are class indices and cannot be negative; got {scan.minimum} "
            f"(first at sample {scan.first_negative})",
        )
    if label_names:
        check_codes_below("dataset.labels", scan, f"the {len(label_names)} classes in label_names")
        return len(label_names)
    if scan.maximum >= MAX_CLASSES:
        fail("dataset.labels", f"largest label {scan.maximum} implies more than {MAX_CLASSES} classes")
    return scan.maximum + 1


# --------------------------------------------------------------------------------------------
# A whole dataset
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckedDataset:
    """The outcome of `check_dataset_parts`: the summary, and the names as checked tuples."""

    summary: DatasetSummary
    attribute_values: dict[str, tuple[str, ...]]
    split_names: tuple[str, ...]


def check_dataset_parts(
    inputs: ChunkedArray,
    labels: ChunkedArray,
    attributes: Mapping[str, ChunkedArray],
    attribute_values: Mapping[str, Any],
    split_codes: ChunkedArray | None,
    split_names: Any,
    label_names: Any,
) -> CheckedDataset:
    """Every rule on shapes, names and values, walking each array once, in a fixed order.

    inputs: float32 chunks, already scaled and normalised; codes: int64 chunks.
    """
    n = check_input_shape(inputs.shape)
    check_finite(inputs)
    check_code_shape("dataset.labels", labels.shape, n)
    label_names = check_names("dataset.label_names", label_names, max_count=MAX_CLASSES)
    num_classes = check_labels(labels, label_names)
    checked_values, attribute_counts = _check_attributes(attributes, attribute_values, n)
    split_names, split_counts = _check_split(split_codes, split_names, n)
    summary = DatasetSummary(
        num_samples=n,
        sample_shape=tuple(inputs.shape[1:]),
        num_classes=num_classes,
        label_names=label_names,
        attribute_counts=attribute_counts,
        split_counts=split_counts,
    )
    return CheckedDataset(summary, checked_values, split_names)


def _check_attributes(
    attributes: Mapping[str, ChunkedArray], values: Mapping[str, Any], n: int
) -> tuple[dict[str, tuple[str, ...]], dict[str, dict[str, int]]]:
    if not attributes:
        fail("dataset.attributes", f"no group attribute; add at least one {ATTR_PREFIX}<name> array with its names")
    if len(attributes) > MAX_ATTRIBUTES:
        fail("dataset.attributes", f"{len(attributes)} attributes; at most {MAX_ATTRIBUTES} are allowed")
    if set(attributes) != set(values):
        fail("dataset.attributes", f"codes for {sorted(attributes)} but value names for {sorted(values)}")
    check_attribute_names(list(attributes))
    checked_values: dict[str, tuple[str, ...]] = {}
    counts: dict[str, dict[str, int]] = {}
    for name, codes in attributes.items():
        key = f"dataset.{ATTR_PREFIX}{name}"
        names = check_names(
            key + NAMES_SUFFIX, values[name], max_count=MAX_VALUES_PER_ATTRIBUTE, forbid=INTERSECTION_SEPARATOR
        )
        if not names:
            fail(key + NAMES_SUFFIX, "lists no value names")
        check_code_shape(key, codes.shape, n)
        scan = scan_codes(codes, len(names))
        check_codes_below(key, scan, f"the {len(names)} names in {ATTR_PREFIX}{name}{NAMES_SUFFIX}")
        checked_values[name] = names
        counts[name] = scan.value_counts(names)
    return checked_values, counts


def _check_split(
    codes: ChunkedArray | None, names: Any, n: int
) -> tuple[tuple[str, ...], dict[str, int]]:
    names = check_names("dataset.split__names", names, max_count=MAX_SPLITS)
    if codes is None:
        if names:
            fail("dataset.split", "split__names given without split codes")
        return names, {}
    if not names:
        fail("dataset.split__names", "split codes given without split names")
    check_code_shape("dataset.split", codes.shape, n)
    scan = scan_codes(codes, len(names))
    check_codes_below("dataset.split", scan, f"the {len(names)} names in split__names")
    return names, scan.value_counts(names)
