"""Reading and writing models: safetensors weights with an architecture spec, or a
``torch.export`` program (.pt2). Nothing here ever unpickles what a client sent.

Safetensors is the preferred format: plain tensors plus a JSON header, into which we write the
`ArchitectureSpec` (``__metadata__["equiprune.spec"]``) so that one file says what to build.
Everything a file could get wrong (keys, shapes, dtypes, NaN/inf) is checked against the
architecture before loading and reported with the offending tensor names.

A .pt2 file carries its own graph, so it needs no registered architecture, but it is frozen
in the mode it was exported in: torch cannot switch an exported module between train and eval
(``.train()``/``.eval()`` raise). `LoadedModel.exported_training` records that mode.

Before torch reads a .pt2, `pt2_check.audit_pt2_archive` refuses archives that could run code
on load (``torch.export.load`` is not safe for untrusted files; that module says why) and
rebuilds the archive from the audited entries: torch only ever reads the rebuilt copy.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, Union

import safetensors.torch
import torch
from torch import nn

from equiprune.engine.errors import InvalidModelError, UnsupportedOperationError
from equiprune.engine.modes import mode
from equiprune.engine.models.pt2_check import EXPORTED_FIELD, audit_pt2_archive
from equiprune.engine.models.sniff import describe_foreign_bytes, is_torch_save_zip
from equiprune.engine.models.footprint import ModelLimits, check_state_shapes, exported_footprint, meta_model
from equiprune.engine.models.registry import ArchitectureSpec, build_model, example_input_shape

ModelSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]

WEIGHTS_FIELD = "model.weights"
SPEC_METADATA_KEY = "equiprune.spec"
FORMAT_METADATA_KEY = "equiprune.format"
DENSE_FORMAT = "dense-v1"
EXPORT_METADATA_FILE = "equiprune.json"
MAX_NAMES_IN_MESSAGE = 5


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


# --- safetensors -----------------------------------------------------------------------------


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


def check_state_dict(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], field: str, *,
                     check_values: bool = True) -> None:
    """Raise naming the first offending tensors: key sets, shapes, dtype kinds and (with
    `check_values`) finiteness."""
    missing = [name for name in expected if name not in given]
    unexpected = [name for name in given if name not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_first(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_first(unexpected)})")
        raise InvalidModelError(field, f"tensor names do not match the architecture: {'; '.join(parts)}")
    wrong_shapes = [
        f"{name}: file {tuple(given[name].shape)} vs architecture {tuple(want.shape)}"
        for name, want in expected.items()
        if given[name].shape != want.shape
    ]
    if wrong_shapes:
        raise InvalidModelError(field, f"{len(wrong_shapes)} tensors have the wrong shape: {_first(wrong_shapes)}")
    wrong_kinds = [
        f"{name}: {given[name].dtype} where {want.dtype} is expected"
        for name, want in expected.items()
        if _dtype_kind(given[name].dtype) != _dtype_kind(want.dtype)
    ]
    if wrong_kinds:
        raise InvalidModelError(field, f"{len(wrong_kinds)} tensors have the wrong dtype: {_first(wrong_kinds)}")
    if check_values:
        _check_finite(given, field)


def _check_finite(tensors: Mapping[str, torch.Tensor], field: str) -> None:
    non_finite = [n for n, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if non_finite:
        raise InvalidModelError(field, f"{len(non_finite)} tensors contain NaN or inf: {_first(non_finite)}")


def _dtype_kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    if dtype.is_floating_point:
        return "float"
    if dtype.is_complex:
        return "complex"
    return "integer"


def _first(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_NAMES_IN_MESSAGE])
    return shown + (", ..." if len(items) > MAX_NAMES_IN_MESSAGE else "")


# --- torch.export programs (.pt2) --------------------------------------------------------------


def save_exported(module: nn.Module, example_input: torch.Tensor, path: str | os.PathLike | BinaryIO,
                  training: bool, *, spec: ArchitectureSpec | None = None, dynamic_batch: bool = True) -> None:
    """Export `module` in train (`training=True`) or eval mode and save it as .pt2.

    The batch dimension is exported as dynamic unless `dynamic_batch` is False, so the
    program accepts any batch size. The mode (and `spec`, if given) is also written to an
    extra file of the archive, for graphs whose ops do not reveal the mode. The module's own
    mode is restored afterwards.
    """
    if example_input.dim() == 0:
        raise InvalidModelError("model.example_input", "needs a batch dimension")
    if dynamic_batch and example_input.shape[0] == 1:
        # A batch of 1 makes torch.export specialise the dimension to 1.
        example_input = torch.cat([example_input, example_input])
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    # An exported program keeps the mode it was exported in (and refuses .train()); an eager
    # module is switched for the export and switched back.
    with mode(module, training):
        program = torch.export.export(module, (example_input,), dynamic_shapes=dynamic_shapes)
    extra = {EXPORT_METADATA_FILE: json.dumps(
        {"training": bool(training), "spec": spec.to_dict() if spec is not None else None})}
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files=extra)
    write_target(buffer.getvalue(), path)


def load_exported(source: ModelSource, spec: ArchitectureSpec | None = None, *,
                  limits: ModelLimits | None = None) -> LoadedModel:
    """Load a .pt2 after auditing it (see the module docstring): torch reads the archive the
    audit rebuilt, never the bytes as they arrived."""
    audited = audit_pt2_archive(read_source(source, EXPORTED_FIELD))
    extra_files = {EXPORT_METADATA_FILE: ""}
    try:
        # Code-running loader (pickle, sympy, exec of guards): it only ever sees the archive the
        # audit rebuilt, and in the service only inside a sandboxed worker (validation, jobs,
        # deploy probe, serving); data-parallel workers refuse .pt2 (load_model(allow_exported=False)).
        program = torch.export.load(io.BytesIO(audited.archive), extra_files=extra_files)
        module = program.module()
    except Exception as exc:  # deserialisation failures come in many exception types
        raise InvalidModelError(
            EXPORTED_FIELD, f"torch.export.load could not read the program: {type(exc).__name__}: {exc}"
        ) from None
    _check_exported_weights(program)
    input_shape = _example_shape(program)
    exported_footprint(program, input_shape[1:] if input_shape else None, limits)
    metadata = _export_metadata(extra_files.get(EXPORT_METADATA_FILE, ""))
    stored_spec = ArchitectureSpec.from_dict(metadata["spec"]) if metadata.get("spec") else None
    training = exported_training_mode(program)
    if training is None and isinstance(metadata.get("training"), bool):
        training = metadata["training"]
    return LoadedModel(
        module=module,
        format="exported",
        spec=spec if spec is not None else stored_spec,
        exported_training=training,
        example_input_shape=input_shape,
    )


def _export_metadata(raw: str) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError:
        raise InvalidModelError(EXPORTED_FIELD, f"extra file {EXPORT_METADATA_FILE!r} is not valid JSON") from None
    if not isinstance(metadata, dict):
        raise InvalidModelError(EXPORTED_FIELD, f"extra file {EXPORT_METADATA_FILE!r} must hold a JSON object")
    return metadata


def _check_exported_weights(program: torch.export.ExportedProgram) -> None:
    constants = {k: v for k, v in program.constants.items() if isinstance(v, torch.Tensor)}
    _check_finite({**program.state_dict, **constants}, EXPORTED_FIELD)


def _example_shape(program: torch.export.ExportedProgram) -> tuple[int, ...] | None:
    """The shape of an input batch the program accepts, read from its first user input's
    placeholder (the sample inputs are never read: they are a pickle). A dynamic batch
    dimension becomes 1; any other dynamic dimension leaves the shape unknown (None)."""
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user_inputs:
            continue
        value = node.meta.get("val")
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            return None
        dims = [d if isinstance(d, int) else None for d in value.shape]
        if dims[0] is None:
            dims[0] = 1
        return tuple(dims) if all(d is not None for d in dims) else None
    return None


# Ops whose behaviour depends on the mode carry a bool argument named like this in their schema
# (batch_norm's `training`, dropout's `train`); this one encodes eval mode in its name.
_MODE_ARGUMENT_NAMES = ("training", "train")
_EVAL_ONLY_OPS = ("aten::_native_batch_norm_legit_no_training",)


def exported_training_mode(program: torch.export.ExportedProgram) -> bool | None:
    """The mode a program was exported in, read from its mode-dependent ops.

    True if any batch-norm/dropout op runs in training mode, False if all of them run in
    eval mode, None if the graph has none (then the mode makes no difference to outputs).
    Works for programs exported by anyone, not only by `save_exported`.
    """
    seen: set[bool] = set()
    for graph_module in program.graph_module.modules():
        graph = getattr(graph_module, "graph", None)
        if not isinstance(graph, torch.fx.Graph):
            continue
        for node in graph.nodes:
            mode = _node_mode(node)
            if mode is not None:
                seen.add(mode)
    if True in seen:
        return True
    return False if seen else None


def _node_mode(node: torch.fx.Node) -> bool | None:
    if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
        return None
    schema = node.target._schema
    if schema.name in _EVAL_ONLY_OPS:
        return False
    for index, argument in enumerate(schema.arguments):
        if argument.name in _MODE_ARGUMENT_NAMES and isinstance(argument.type, torch.BoolType):
            value = node.args[index] if index < len(node.args) else node.kwargs.get(argument.name)
            return value if isinstance(value, bool) else None
    return None


# --- format dispatch ---------------------------------------------------------------------------


def load_model(source: ModelSource, spec: ArchitectureSpec | None = None, *,
               limits: ModelLimits | None = None, allow_exported: bool = True) -> LoadedModel:
    """Load whatever the bytes are: a .pt2 (zip), a sparse or a dense safetensors file, within
    `limits` (this machine's defaults when None). With `allow_exported` False only the
    data-only formats (safetensors: tensors and JSON, read by our own architecture code) are
    accepted: a .pt2 carries a graph torch executes."""
    data = read_source(source, WEIGHTS_FIELD)
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06") and not is_torch_save_zip(data):
        if not allow_exported:
            raise UnsupportedOperationError(
                EXPORTED_FIELD, "only safetensors models are accepted here (a .pt2 program is only ever loaded in "
                                "the sandbox); run the job with one worker, or upload the weights as safetensors")
        return load_exported(data, spec, limits=limits)
    if looks_like_safetensors(data):
        metadata = safetensors_metadata(data)
        # Imported here: sparse builds on this module.
        from equiprune.engine.models import sparse

        if sparse.is_sparse_metadata(metadata):
            return sparse.load_sparse_model(data, spec, limits=limits)
    return load_safetensors(data, spec, limits=limits)
