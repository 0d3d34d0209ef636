"""torch.export programs (.pt2): saving in a chosen mode, loading only what `pt2_check` audited
and rebuilt, and reading the mode and input shape back from the graph.

Separate from the safetensors code because a .pt2 is a program torch executes, with its own
audit, footprint check and mode question (see `equiprune.engine.models.io`'s docstring).
"""

from __future__ import annotations

import io
import json
import os
from typing import Any, BinaryIO

import torch
from torch import nn

from equiprune.engine.errors import InvalidModelError
from equiprune.engine.modes import mode
from equiprune.engine.models.footprint import ModelLimits, exported_footprint
from equiprune.engine.models.io_common import LoadedModel, ModelSource, read_source, write_target
from equiprune.engine.models.io_state_checks import _check_finite
from equiprune.engine.models.pt2_check import EXPORTED_FIELD, audit_pt2_archive
from equiprune.engine.models.registry import ArchitectureSpec

EXPORT_METADATA_FILE = "equiprune.json"


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
