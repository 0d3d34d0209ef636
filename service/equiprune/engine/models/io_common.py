"""What every model format's reader and writer shares: `LoadedModel`, the accepted sources,
the error field and metadata key names, and reading/atomically writing the bytes.

Separate so that the safetensors, .pt2 and sparse modules can build on it without importing
each other (see `equiprune.engine.models.io` for the formats themselves).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, BinaryIO, Union

from torch import nn

from equiprune.engine.errors import InvalidModelError
from equiprune.engine.models.registry import ArchitectureSpec

ModelSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]

WEIGHTS_FIELD = "model.weights"
SPEC_METADATA_KEY = "equiprune.spec"
FORMAT_METADATA_KEY = "equiprune.format"
DENSE_FORMAT = "dense-v1"


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to use, with what is known about where it came from.

    `format` is "safetensors" (eager module built from a registered architecture, returned in
    eval mode) or "exported" (a ``torch.export`` module whose mode is fixed).
    `exported_training` is the mode a .pt2 was exported in (None for safetensors, or when
    neither the graph nor our metadata tells). `example_input_shape` is the shape of an input
    batch the model accepts (for .pt2 the batch the export was traced with).
    """

    module: nn.Module
    format: str
    spec: ArchitectureSpec | None
    exported_training: bool | None
    example_input_shape: tuple[int, ...] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "spec": self.spec.to_dict() if self.spec is not None else None,
            "exported_training": self.exported_training,
            "example_input_shape": list(self.example_input_shape) if self.example_input_shape else None,
            "num_parameters": sum(p.numel() for p in self.module.parameters()),
        }


# --- reading and writing bytes -------------------------------------------------------------


def read_source(source: ModelSource, field: str) -> bytes:
    """All bytes of a path, a bytes-like object or a readable binary file object."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as handle:
                return handle.read()
        except OSError as exc:
            raise InvalidModelError(field, f"cannot read {os.fspath(source)!r}: {exc.strerror or exc}") from None
    if hasattr(source, "read"):
        data = source.read()
        if not isinstance(data, (bytes, bytearray)):
            raise InvalidModelError(field, "file object must be opened in binary mode")
        return bytes(data)
    raise InvalidModelError(field, f"expected a path, bytes or a binary file object, got {type(source).__name__}")


def write_target(data: bytes, target: str | os.PathLike | BinaryIO) -> None:
    """Write to a path (atomically, via a temporary file) or to a writable file object."""
    if hasattr(target, "write"):
        target.write(data)
        return
    path = os.fspath(target)
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)
