"""What a model will cost, known before any of it is allocated, and the limits it must fit.

A safetensors file of a few hundred bytes can name a registered architecture with a hidden
width of 10⁹: building it for real would try to allocate terabytes before anything compared
the file with the architecture. So every model is first built on PyTorch's ``meta`` device
(shapes and dtypes, no storage) and measured: parameter count, the input shape its geometry
kwargs imply, and — through one forward pass of a meta tensor — the activations of one
sample and the width of its output. Only a model within `ModelLimits` is ever built for real,
and only after the file's tensor shapes were compared with the meta model's.

Limits default to what this machine can hold (`ModelLimits.for_machine`): the numbers are
stated with their reasoning there, and the service may set its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from equiprune.engine import machine
from equiprune.engine.errors import InvalidModelError
from equiprune.engine.models.registry import ArchitectureSpec, build_model, example_input_shape

KWARGS_FIELD = "model.kwargs"


@dataclass(frozen=True)
class ModelLimits:
    """Largest model the engine will build or load. Elements are float32 (4 bytes) each."""

    max_parameters: int
    max_input_elements: int  # one sample
    max_activation_elements: int  # one sample: the outputs of every module, summed

    def __post_init__(self) -> None:
        for name in ("max_parameters", "max_input_elements", "max_activation_elements"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    @classmethod
    def for_machine(cls, memory_bytes: int | None = None) -> ModelLimits:
        """Defaults that fit `memory_bytes` (this machine's memory when None):
        - parameters: training keeps about 8 float32 copies of every weight (weights, grads,
          momentum, the dense reference, checkpoint and report copies): memory / 32 bytes;
        - one sample's input: a batch of 256 in memory / 4 of it: memory / (4 · 256 · 4);
        - one sample's activations: a batch of 16, kept for the backward pass: memory / (4 · 16 · 2).
        """
        memory = machine.memory_bytes() if memory_bytes is None else int(memory_bytes)
        return cls(max_parameters=max(1, memory // 32), max_input_elements=max(1, memory // 4096),
                   max_activation_elements=max(1, memory // 128))


@dataclass(frozen=True)
class Footprint:
    """A model's measured size. `input_shape` is one sample's shape (no batch dimension);
    `outputs` the width of its output for one sample; both None when unknown."""

    parameters: int
    input_shape: tuple[int, ...] | None
    activation_elements: int | None
    outputs: int | None


def meta_model(spec: ArchitectureSpec, limits: ModelLimits | None = None) -> nn.Module:
    """The architecture built on the meta device (no storage), after its parameters, the input
    its geometry kwargs imply and that input's activations were checked against `limits`."""
    return _measured(spec, None, limits, KWARGS_FIELD)[0]


def measure(spec: ArchitectureSpec, input_shape: Sequence[int] | None = None, *,
            limits: ModelLimits | None = None, field: str = KWARGS_FIELD) -> Footprint:
    """Measure `spec` without allocating, refusing it (InvalidModelError naming `field`) when it
    exceeds `limits` or cannot run on one sample of `input_shape` (default: the shape its
    geometry kwargs imply)."""
    return _measured(spec, input_shape, limits, field)[1]


def _measured(spec: ArchitectureSpec, input_shape: Sequence[int] | None, limits: ModelLimits | None,
              field: str) -> tuple[nn.Module, Footprint]:
    limits = limits or ModelLimits.for_machine()
    if input_shape is None:
        geometry = example_input_shape(spec)
        input_shape = tuple(geometry[1:]) if geometry is not None else None
        shape_field = KWARGS_FIELD  # the geometry came from the kwargs
    else:
        shape_field = field
    if input_shape is not None:
        input_shape = tuple(int(d) for d in input_shape)
        _check_input(input_shape, limits, shape_field)
    with torch.device("meta"):
        model = build_model(spec)
    parameters = sum(p.numel() for p in model.parameters())
    if parameters > limits.max_parameters:
        raise InvalidModelError(
            KWARGS_FIELD, f"architecture {spec.name!r} with these arguments has {parameters:,} parameters; "
                          f"the limit is {limits.max_parameters:,}")
    if input_shape is None:
        return model, Footprint(parameters, None, None, None)
    activations, output = _meta_forward(model, input_shape, spec, shape_field)
    if activations > limits.max_activation_elements:
        raise InvalidModelError(
            shape_field, f"architecture {spec.name!r} produces {activations:,} activations for one sample of shape "
                         f"{input_shape}; the limit is {limits.max_activation_elements:,}")
    return model, Footprint(parameters, input_shape, activations, _output_width(output))


def _check_input(shape: tuple[int, ...], limits: ModelLimits, field: str) -> None:
    if any(d < 1 for d in shape):
        raise InvalidModelError(field, f"one sample's shape {shape} has an empty dimension")
    elements = math.prod(shape)
    if elements > limits.max_input_elements:
        raise InvalidModelError(field, f"one sample of shape {shape} holds {elements:,} values; "
                                       f"the limit is {limits.max_input_elements:,}")


def _meta_forward(model: nn.Module, shape: tuple[int, ...], spec: ArchitectureSpec, field: str
                  ) -> tuple[int, torch.Tensor]:
    """Sum of every leaf module's output elements for one sample, and the model's output."""
    total = 0

    def count(_module, _inputs, output) -> None:
        nonlocal total
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            output = model.eval()(torch.empty((1, *shape), device="meta"))
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise InvalidModelError(field, f"architecture {spec.name!r} with these arguments cannot take one sample "
                                       f"of shape {shape}: {_first_line(exc)}") from None
    finally:
        for hook in hooks:
            hook.remove()
    if not isinstance(output, torch.Tensor):
        raise InvalidModelError(field, f"architecture {spec.name!r} returns {type(output).__name__}, not a tensor")
    return total, output


def _output_width(output: torch.Tensor) -> int | None:
    return int(output.shape[1]) if output.dim() == 2 else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def check_state_shapes(model: nn.Module, shapes: dict[str, tuple[int, ...]], dtypes: dict[str, torch.dtype],
                       field: str) -> None:
    """Compare a file's tensor names, shapes and dtype kinds (read from its header, nothing
    loaded) with a meta model's state dict; refuse naming the first offending tensors."""
    from equiprune.engine.models.io import check_state_dict  # io builds on this module

    declared = {name: torch.empty(shape, dtype=dtypes[name], device="meta") for name, shape in shapes.items()}
    check_state_dict(model.state_dict(), declared, field, check_values=False)


def exported_footprint(program: torch.export.ExportedProgram, input_shape: tuple[int, ...] | None,
                       limits: ModelLimits | None = None, field: str = "model.exported_program") -> Footprint:
    """A loaded .pt2 program measured from what its graph records (every node's output shape),
    with a symbolic batch dimension taken as 1; refused over `limits`. Its weights were already
    allocated from the file's bytes (bounded by the file size). The node shapes are what the
    file declares — torch does not derive them again on load — so this refuses an honest
    program that is too large, not a lying one: what bounds a .pt2 when it runs is the memory
    limit of the sandbox it runs in."""
    limits = limits or ModelLimits.for_machine()
    state = [t for t in (*program.state_dict.values(), *program.constants.values()) if isinstance(t, torch.Tensor)]
    parameters = sum(t.numel() for t in state)
    if parameters > limits.max_parameters:
        raise InvalidModelError(field, f"the program holds {parameters:,} weights; the limit is {limits.max_parameters:,}")
    if input_shape is not None:
        _check_input(tuple(input_shape), limits, field)
    activations, outputs = 0, None
    for node in program.graph.nodes:
        value = node.meta.get("val")
        if node.op == "call_function":
            for tensor in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(tensor, torch.Tensor):
                    activations += _concrete_numel(tensor.shape)
        elif node.op == "output":
            first = node.args[0][0] if node.args and node.args[0] else None
            shape = first.meta.get("val").shape if isinstance(first, torch.fx.Node) and isinstance(
                first.meta.get("val"), torch.Tensor) else None
            outputs = _concrete_numel(shape[1:]) if shape is not None and len(shape) == 2 else None
    if activations > limits.max_activation_elements:
        raise InvalidModelError(field, f"the program's graph produces {activations:,} intermediate values for one "
                                       f"sample; the limit is {limits.max_activation_elements:,}")
    return Footprint(parameters, tuple(input_shape) if input_shape is not None else None, activations, outputs)


def _concrete_numel(shape) -> int:
    """Elements of a shape whose symbolic sizes (the batch) are taken as 1."""
    total = 1
    for size in shape:
        if isinstance(size, int):
            total *= size
            continue
        try:
            expression = size.node.expr
            total *= int(expression.subs({symbol: 1 for symbol in expression.free_symbols}))
        except (AttributeError, TypeError, ValueError):
            total *= 1  # an expression we cannot evaluate: counted as 1, the program still runs in the sandbox
    return total
