"""Safetensors files: sniffing, checking the JSON header before any tensor is read, reading,
saving with the `ArchitectureSpec` in ``__metadata__``, and building a model from the weights.

Separate from the .pt2 code because the two formats share nothing but `io_common`: this one is
data only (tensors and JSON, read by our own architecture code), the other is a program.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

import safetensors.torch
import torch
from torch import nn

from equiprune.engine.errors import InvalidModelError
from equiprune.engine.models.footprint import ModelLimits, check_state_shapes, meta_model
from equiprune.engine.models.io_common import (
    DENSE_FORMAT,
    FORMAT_METADATA_KEY,
    SPEC_METADATA_KEY,
    WEIGHTS_FIELD,
    LoadedModel,
    ModelSource,
    read_source,
    write_target,
)
from equiprune.engine.models.io_state_checks import check_state_dict
from equiprune.engine.models.registry import ArchitectureSpec, build_model, example_input_shape
from equiprune.engine.models.sniff import describe_foreign_bytes


def looks_like_safetensors(data: bytes) -> bool:
    """Cheap sniff: an 8-byte little-endian header length followed by a JSON object."""
    if len(data) < 10:
        return False
    (header_length,) = struct.unpack("<Q", data[:8])
    return 2 <= header_length <= len(data) - 8 and data[8:9] == b"{"


# safetensors dtype names → torch dtypes (what the header may declare).
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "C64": torch.complex64,
}


@dataclass(frozen=True)
class SafetensorsHeader:
    """What a safetensors file declares, read from its JSON header alone (no tensor loaded)."""

    metadata: dict[str, str]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]


def read_safetensors(data: bytes, field: str = WEIGHTS_FIELD) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and ``__metadata__`` of a safetensors file, with a clear error for anything
    that is not one (never falling back to another deserialiser)."""
    metadata = safetensors_header(data, field).metadata
    try:
        tensors = safetensors.torch.load(data)
    except Exception as exc:  # the Rust parser raises its own SafetensorError and others
        raise InvalidModelError(field, f"not a valid safetensors file: {exc}") from None
    return tensors, metadata


def safetensors_metadata(data: bytes, field: str = WEIGHTS_FIELD) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, after checking its header (no tensors read)."""
    return safetensors_header(data, field).metadata


def safetensors_header(data: bytes, field: str = WEIGHTS_FIELD) -> SafetensorsHeader:
    """Metadata, tensor shapes and dtypes of a safetensors file, from its header alone, after
    checking that every tensor's bytes lie inside the file."""
    if not looks_like_safetensors(data):
        raise InvalidModelError(
            field, f"not a safetensors file ({describe_foreign_bytes(data)}); save weights with safetensors"
        )
    header_length = struct.unpack("<Q", data[:8])[0]
    header = _parse_safetensors_header(data[8 : 8 + header_length], field)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InvalidModelError(field, "not a valid safetensors file: __metadata__ must map strings to strings")
    available = len(data) - 8 - header_length
    shapes, dtypes = {}, {}
    for name, entry in header.items():
        shapes[name], dtypes[name] = _header_entry(name, entry, available, field)
    return SafetensorsHeader(metadata, shapes, dtypes)


def _parse_safetensors_header(raw: bytes, field: str) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise InvalidModelError(field, "not a safetensors file: its header is not JSON") from None
    if not isinstance(header, dict):
        raise InvalidModelError(field, "not a safetensors file: its header is not a JSON object")
    return header


def _header_entry(name: str, entry: Any, available: int, field: str) -> tuple[tuple[int, ...], torch.dtype]:
    """One tensor's shape and dtype; its declared bytes must match the shape and fit the file."""
    try:
        dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
        shape = tuple(entry["shape"])
        begin, end = (int(v) for v in entry["data_offsets"])
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape) or len(shape) > 8:
            raise ValueError(shape)
    except (KeyError, TypeError, ValueError):
        raise InvalidModelError(field, f"not a valid safetensors file: tensor {name[:80]!r} has a malformed "
                                       "dtype, shape or data_offsets") from None
    expected = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if not 0 <= begin <= end or end - begin != expected:
        raise InvalidModelError(field, f"not a valid safetensors file: tensor {name[:80]!r} declares {end - begin} "
                                       f"bytes for shape {shape}")
    if end > available:
        raise InvalidModelError(
            field, f"truncated safetensors file: header declares {end} bytes of tensor data, file has {available}"
        )
    return shape, dtype


def state_dict_for_saving(module_or_state: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies (copies, so tied weights do not share storage, which
    safetensors refuses)."""
    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    return {name: tensor.detach().cpu().contiguous().clone() for name, tensor in state.items()}


def save_safetensors(module: nn.Module, spec: ArchitectureSpec, path: str | os.PathLike | BinaryIO) -> None:
    """Weights and buffers of `module`, plus `spec` in the header metadata."""
    metadata = {FORMAT_METADATA_KEY: DENSE_FORMAT, SPEC_METADATA_KEY: json.dumps(spec.to_dict())}
    write_target(safetensors.torch.save(state_dict_for_saving(module), metadata=metadata), path)


def spec_from_metadata(metadata: Mapping[str, str], field: str = WEIGHTS_FIELD) -> ArchitectureSpec | None:
    raw = metadata.get(SPEC_METADATA_KEY)
    if raw is None:
        return None
    try:
        return ArchitectureSpec.from_dict(json.loads(raw))
    except json.JSONDecodeError:
        raise InvalidModelError(field, f"metadata {SPEC_METADATA_KEY!r} is not valid JSON") from None


def resolve_spec(given: ArchitectureSpec | None, stored: ArchitectureSpec | None) -> ArchitectureSpec:
    """The spec to build: the caller's, else the one the file carries."""
    if given is not None:
        return given
    if stored is not None:
        return stored
    raise InvalidModelError(
        "model.architecture",
        "no architecture given and the weights file carries none; pass an architecture name and kwargs",
    )


def load_safetensors(source: ModelSource, spec: ArchitectureSpec | None = None, *,
                     limits: ModelLimits | None = None) -> LoadedModel:
    """Build the architecture and load checked weights into it (returned in eval mode).

    Nothing sized by the file is allocated before the architecture passed `limits` on the meta
    device and the header's tensor names and shapes matched it."""
    data = read_source(source, WEIGHTS_FIELD)
    header = safetensors_header(data)
    spec = resolve_spec(spec, spec_from_metadata(header.metadata))
    check_state_shapes(meta_model(spec, limits), header.shapes, header.dtypes, WEIGHTS_FIELD)
    tensors, _ = read_safetensors(data)
    return loaded_from_state(spec, tensors)


def loaded_from_state(spec: ArchitectureSpec, state: Mapping[str, torch.Tensor]) -> LoadedModel:
    """A LoadedModel of format safetensors: the architecture built and the checked state loaded
    (callers check `spec` against the limits on the meta device first)."""
    return LoadedModel(
        module=model_from_state_dict(spec, state),
        format="safetensors",
        spec=spec,
        exported_training=None,
        example_input_shape=example_input_shape(spec),
    )


def model_from_state_dict(spec: ArchitectureSpec, state: Mapping[str, torch.Tensor],
                          field: str = WEIGHTS_FIELD) -> nn.Module:
    """A fresh model of `spec` holding `state`, after checking that `state` fits it."""
    model = build_model(spec)
    check_state_dict(model.state_dict(), state, field)
    model.load_state_dict(dict(state), strict=True)
    return model.eval()
