"""Compact storage for unstructured sparsity, inside an ordinary safetensors file.

Unstructured pruning leaves tensors of the original shape full of zeros, so a dense file is
as large as before pruning. Here each tensor is stored whichever way is smaller:
  * dense: ``dense/<name>``, the tensor itself;
  * bitmask: ``bitmask/<name>``, a uint8 tensor of ``np.packbits`` over the flattened tensor
    (bit set = element non-zero, first element in the most significant bit of byte 0, last
    byte zero-padded), plus ``values/<name>``, the non-zero elements in flattened order and
    the original dtype. Pruning by multiplying with a mask turns pruned negative weights into
    -0.0, which compares equal to 0 but has different bits; when a float tensor has any,
    ``negative_zeros/<name>`` is a second packbits mask over the zero positions (in order)
    marking which were -0.0. NaN counts as non-zero. Decoding is therefore bit-exact.
Integer and bool tensors use the same bitmask layout; other dtypes (complex) stay dense.
``__metadata__`` holds ``equiprune.format = "sparse-bitmask-v1"``, ``equiprune.sparse`` (JSON
``{"order": [names in state-dict order], "shapes": {name: shape}}``, shapes only for bitmask
tensors: everything else is in the safetensors header already, and for small models the
header is a sizeable part of the file) and ``equiprune.spec`` when known.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import safetensors.torch
import torch
from torch import nn

from equiprune.engine.errors import InvalidModelError
from equiprune.engine.models.io import (
    FORMAT_METADATA_KEY,
    SPEC_METADATA_KEY,
    WEIGHTS_FIELD,
    LoadedModel,
    ModelSource,
    loaded_from_state,
    read_safetensors,
    read_source,
    safetensors_header,
    resolve_spec,
    spec_from_metadata,
    state_dict_for_saving,
    write_target,
)
from equiprune.engine.models.footprint import ModelLimits, check_state_shapes, meta_model
from equiprune.engine.models.registry import ArchitectureSpec

SPARSE_FORMAT = "sparse-bitmask-v1"
LAYOUT_METADATA_KEY = "equiprune.sparse"
DENSE = "dense"
BITMASK = "bitmask"
VALUES = "values"
NEGATIVE_ZEROS = "negative_zeros"


@dataclass(frozen=True)
class StorageSizes:
    """Bytes of the same weights saved as a dense and as a sparse safetensors file."""

    dense_bytes: int
    sparse_bytes: int

    @property
    def ratio(self) -> float:
        return self.sparse_bytes / self.dense_bytes if self.dense_bytes else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"dense_bytes": self.dense_bytes, "sparse_bytes": self.sparse_bytes, "ratio": self.ratio}


def is_sparse_metadata(metadata: Mapping[str, str]) -> bool:
    return metadata.get(FORMAT_METADATA_KEY) == SPARSE_FORMAT


def encode_sparse(module_or_state: nn.Module | Mapping[str, torch.Tensor],
                  spec: ArchitectureSpec | None = None) -> bytes:
    """The sparse safetensors file as bytes."""
    tensors: dict[str, torch.Tensor] = {}
    order: list[str] = []
    shapes: dict[str, list[int]] = {}
    for name, tensor in state_dict_for_saving(module_or_state).items():
        order.append(name)
        encoded = _bitmask_encoding(tensor) if _bitmask_supported(tensor.dtype) else None
        if encoded is not None and sum(_nbytes(t) for t in encoded.values()) < _nbytes(tensor):
            tensors.update({f"{part}/{name}": t for part, t in encoded.items()})
            shapes[name] = list(tensor.shape)
        else:
            tensors[f"{DENSE}/{name}"] = tensor
    metadata = {FORMAT_METADATA_KEY: SPARSE_FORMAT, LAYOUT_METADATA_KEY: json.dumps({"order": order, "shapes": shapes})}
    if spec is not None:
        metadata[SPEC_METADATA_KEY] = json.dumps(spec.to_dict())
    return safetensors.torch.save(tensors, metadata=metadata)


def save_sparse(module_or_state: nn.Module | Mapping[str, torch.Tensor], spec: ArchitectureSpec | None,
                path: str | os.PathLike | BinaryIO) -> None:
    """Save weights and buffers in the sparse layout, with `spec` in the metadata if given."""
    write_target(encode_sparse(module_or_state, spec), path)


def load_sparse(source: ModelSource) -> tuple[dict[str, torch.Tensor], ArchitectureSpec | None]:
    """The exact state dict a sparse file holds, and its spec (None if it carries none)."""
    stored, metadata = read_safetensors(read_source(source, WEIGHTS_FIELD))
    if not is_sparse_metadata(metadata):
        raise InvalidModelError(WEIGHTS_FIELD, f"not an equiprune sparse file (metadata {FORMAT_METADATA_KEY!r} "
                                               f"is {metadata.get(FORMAT_METADATA_KEY)!r}, expected {SPARSE_FORMAT!r})")
    order, shapes = _layout(metadata)
    state = {name: _decode(name, shapes.get(name), stored) for name in order}
    expected_keys = {f"{part}/{name}" for name in order for part in (DENSE, BITMASK, VALUES, NEGATIVE_ZEROS)}
    stray = sorted(set(stored) - expected_keys)
    _require(not stray, f"tensors {stray[:5]} belong to no entry of the layout")
    return state, spec_from_metadata(metadata)


def load_sparse_model(source: ModelSource, spec: ArchitectureSpec | None = None, *,
                      limits: ModelLimits | None = None) -> LoadedModel:
    """Build the architecture and load the decoded, checked weights (eval mode).

    The layout's shapes size what decoding allocates, so they are compared with the
    architecture built on the meta device (within `limits`) before anything is decoded."""
    data = read_source(source, WEIGHTS_FIELD)
    header = safetensors_header(data)
    if not is_sparse_metadata(header.metadata):
        raise InvalidModelError(WEIGHTS_FIELD, f"not an equiprune sparse file (metadata {FORMAT_METADATA_KEY!r} "
                                               f"is {header.metadata.get(FORMAT_METADATA_KEY)!r}, expected {SPARSE_FORMAT!r})")
    spec = resolve_spec(spec, spec_from_metadata(header.metadata))
    order, shapes = _layout(header.metadata)
    declared, dtypes = {}, {}
    for name in order:
        stored_as = f"{DENSE}/{name}" if f"{DENSE}/{name}" in header.shapes else f"{VALUES}/{name}"
        _require(stored_as in header.shapes and (name in shapes or stored_as.startswith(DENSE)),
                 f"the tensor {name!r} is missing")
        declared[name] = header.shapes[stored_as] if stored_as.startswith(DENSE) else shapes[name]
        dtypes[name] = header.dtypes[stored_as]
    check_state_shapes(meta_model(spec, limits), declared, dtypes, WEIGHTS_FIELD)
    state, _ = load_sparse(data)
    return loaded_from_state(spec, state)


def storage_sizes(module_or_state: nn.Module | Mapping[str, torch.Tensor],
                  spec: ArchitectureSpec | None = None) -> StorageSizes:
    """File sizes of the dense and the sparse safetensors encodings of the same weights."""
    state = state_dict_for_saving(module_or_state)
    metadata = {SPEC_METADATA_KEY: json.dumps(spec.to_dict())} if spec is not None else None
    dense = len(safetensors.torch.save(state, metadata=metadata))
    return StorageSizes(dense_bytes=dense, sparse_bytes=len(encode_sparse(state, spec)))


def _bitmask_supported(dtype: torch.dtype) -> bool:
    return not dtype.is_complex


def _bitmask_encoding(tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """Bitmask of non-zeros, their values, and (floats only, if any) which zeros were -0.0."""
    flat = tensor.reshape(-1)
    nonzero = flat != 0
    parts = {BITMASK: _packbits(nonzero), VALUES: flat[nonzero]}
    if flat.is_floating_point():
        negative = torch.signbit(flat[~nonzero])
        if bool(negative.any()):
            parts[NEGATIVE_ZEROS] = _packbits(negative)
    return parts


def _packbits(mask: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(mask.numpy()))


def _unpackbits(packed: torch.Tensor, count: int) -> torch.Tensor:
    return torch.from_numpy(np.unpackbits(packed.numpy(), count=count).astype(bool))


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _layout(metadata: Mapping[str, str]) -> tuple[list[str], dict[str, tuple[int, ...]]]:
    try:
        layout = json.loads(metadata[LAYOUT_METADATA_KEY])
        order, shapes = layout["order"], layout["shapes"]
        if not (isinstance(order, list) and all(isinstance(n, str) for n in order) and isinstance(shapes, dict)):
            raise ValueError(layout)
        shapes = {name: tuple(shape) for name, shape in shapes.items()}
        if not all(isinstance(d, int) and d >= 0 for shape in shapes.values() for d in shape):
            raise ValueError(shapes)
    except (KeyError, TypeError, ValueError):
        raise InvalidModelError(WEIGHTS_FIELD, f"sparse file has a malformed {LAYOUT_METADATA_KEY!r} layout") from None
    return order, shapes


def _decode(name: str, shape: tuple[int, ...] | None, stored: Mapping[str, torch.Tensor]) -> torch.Tensor:
    dense_key, bitmask_key = f"{DENSE}/{name}", f"{BITMASK}/{name}"
    _require((dense_key in stored) != (bitmask_key in stored), f"{name!r} must be stored exactly once")
    if dense_key in stored:
        return stored[dense_key]
    _require(shape is not None, f"the layout gives no shape for {name!r}")
    numel = math.prod(shape)
    nonzero = _unpack_mask(stored, bitmask_key, numel)
    values = _stored(stored, f"{VALUES}/{name}")
    _require(values.dim() == 1 and values.numel() == int(nonzero.sum()),
             f"{name!r} has {values.numel()} values for {int(nonzero.sum())} non-zero positions")
    flat = torch.zeros(numel, dtype=values.dtype)
    flat[nonzero] = values
    if f"{NEGATIVE_ZEROS}/{name}" in stored:
        zero_positions = torch.nonzero(~nonzero).reshape(-1)
        negative = _unpack_mask(stored, f"{NEGATIVE_ZEROS}/{name}", zero_positions.numel())
        flat[zero_positions[negative]] = -0.0
    return flat.reshape(shape)


def _unpack_mask(stored: Mapping[str, torch.Tensor], key: str, count: int) -> torch.Tensor:
    packed = _stored(stored, key)
    _require(packed.dtype == torch.uint8 and packed.dim() == 1 and packed.numel() == math.ceil(count / 8),
             f"{key!r} does not cover {count} elements")
    return _unpackbits(packed, count)


def _require(condition: bool, problem: str) -> None:
    if not condition:
        raise InvalidModelError(WEIGHTS_FIELD, f"sparse file: {problem}")


def _stored(stored: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    _require(key in stored, f"the tensor {key!r} is missing")
    return stored[key]
