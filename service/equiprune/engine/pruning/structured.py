"""Structured (channel/filter) pruning that really shrinks the model, via torch_pruning.

Unstructured zeros save nothing on dense kernels; removing whole output channels does, because
every layer that consumes those channels shrinks with them. torch_pruning traces the model's
dependency graph (which convs, norms and residual additions must lose the same channels) and
removes channels group by group, ranked by the group's weight magnitude (L1 or L2 norm).

The layer that produces the model's output (the last ``nn.Linear``, or the last conv when
there is none) is always kept whole so the output keeps its shape; `ignored_layers` adds more
modules, by name pattern, whose *output* channels must stay (their inputs may still shrink
when the layer feeding them is pruned). The result is checked: same output shape, fewer
parameters and MACs, or an error.

The pruned model's shapes no longer match the registered architecture, so it cannot be saved
as safetensors for that architecture; it can be exported with ``torch.export``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch
import torch_pruning as tp
from torch import nn

from ..errors import InvalidConfigError, UnsupportedOperationError
from .counting import ExampleInput, count_macs, count_parameters
from .selection import candidate_layers

IMPORTANCE_NORMS = {"l1": 1, "l2": 2}


@dataclass(frozen=True)
class StructuredPruneResult:
    """The pruned copy and what it costs, measured before and after."""

    module: nn.Module
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    ratio: float
    importance: str
    ignored_layers: tuple[str, ...]

    def to_dict(self) -> dict:
        return {
            "params_before": self.params_before,
            "params_after": self.params_after,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "param_reduction": 1 - self.params_after / self.params_before if self.params_before else 0.0,
            "mac_reduction": 1 - self.macs_after / self.macs_before if self.macs_before else 0.0,
            "ratio": self.ratio,
            "importance": self.importance,
            "ignored_layers": list(self.ignored_layers),
        }


def ensure_structured_supported(module: object) -> None:
    """Refuse a torch.export program or the GraphModule its ``.module()`` returns."""
    if isinstance(module, (torch.export.ExportedProgram, torch.fx.GraphModule)):
        raise UnsupportedOperationError(
            "pruning.kind",
            "structured pruning needs the eager model: a torch.export .pt2 has a fixed graph; "
            "submit safetensors + architecture instead",
        )


def prune_channels(
    model: nn.Module,
    example_input: ExampleInput,
    ratio: float,
    *,
    ignored_layers: Sequence[str] | None = None,
    importance: str = "l1",
) -> StructuredPruneResult:
    """Remove a `ratio` fraction of the channels of every prunable layer group, in a deep copy."""
    ensure_structured_supported(model)
    _validate_ratio(ratio)
    if importance not in IMPORTANCE_NORMS:
        raise InvalidConfigError(
            "pruning.importance",
            f"unknown importance {importance!r}; expected one of {', '.join(IMPORTANCE_NORMS)}",
        )
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    pruned = copy.deepcopy(model)
    kept_names = _ignored_names(pruned, ignored_layers)
    modules = dict(pruned.named_modules())

    flags = {module: module.training for module in pruned.modules()}
    trainable = {name: p.requires_grad for name, p in pruned.named_parameters()}
    # Eval mode: tracing runs a forward pass, which must not move BatchNorm statistics.
    pruned.eval()
    # torch_pruning follows grad_fn links: a frozen weight would be invisible to it.
    pruned.requires_grad_(True)
    try:
        shape_before = _output_shapes(pruned, args)
        with torch.enable_grad():  # torch_pruning traces the autograd graph
            pruner = tp.pruner.BasePruner(
                pruned,
                example_inputs=args if len(args) > 1 else args[0],
                importance=tp.importance.GroupMagnitudeImportance(p=IMPORTANCE_NORMS[importance]),
                pruning_ratio=float(ratio),
                ignored_layers=[modules[name] for name in kept_names],
            )
            pruner.step()
        shape_after = _output_shapes(pruned, args)
    finally:
        for module, training in flags.items():
            module.training = training
        # Pruned layers hold new Parameter objects, so the flags go back by name.
        for name, param in pruned.named_parameters():
            param.requires_grad_(trainable[name])
    if shape_after != shape_before:
        raise UnsupportedOperationError(
            "pruning.ignored_layers",
            f"pruning changed the output shape from {shape_before} to {shape_after}; "
            "add the layers that produce the output to ignored_layers",
        )
    params_before, params_after = count_parameters(model), count_parameters(pruned)
    if ratio > 0 and params_after >= params_before:
        raise UnsupportedOperationError(
            "pruning.ratio",
            f"no channel was removed at ratio {ratio}: the layers are too narrow or all ignored; "
            "raise the ratio or ignore fewer layers",
        )
    return StructuredPruneResult(
        module=pruned,
        params_before=params_before,
        params_after=params_after,
        macs_before=count_macs(model, args),
        macs_after=count_macs(pruned, args),
        ratio=float(ratio),
        importance=importance,
        ignored_layers=kept_names,
    )


def _validate_ratio(ratio: float) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise InvalidConfigError("pruning.ratio", f"expected a channel fraction in [0, 1), got {ratio!r}")


def _ignored_names(model: nn.Module, patterns: Sequence[str] | None) -> tuple[str, ...]:
    """The output layer plus every module matching a pattern, by qualified name."""
    names: list[str] = []
    output_layer = _output_layer(model)
    if output_layer is not None:
        names.append(output_layer)
    if patterns is None:
        return tuple(names)
    if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
        raise InvalidConfigError(
            "pruning.ignored_layers", f"expected a list of module names, got {patterns!r}"
        )
    module_names = [name for name, _ in model.named_modules() if name]
    for pattern in patterns:
        hits = [name for name in module_names if fnmatchcase(name, pattern)]
        if not hits:
            raise InvalidConfigError(
                "pruning.ignored_layers", f"pattern {pattern!r} matches no module of the model"
            )
        names.extend(name for name in hits if name not in names)
    return tuple(names)


def _output_layer(model: nn.Module) -> str | None:
    layers = candidate_layers(model)
    linears = [name for name, module in layers.items() if isinstance(module, nn.Linear)]
    if linears:
        return linears[-1]
    return list(layers)[-1] if layers else None


def _output_shapes(model: nn.Module, args: tuple[torch.Tensor, ...]) -> object:
    with torch.no_grad():
        return _shapes(model(*args))


def _shapes(output: object) -> object:
    if isinstance(output, torch.Tensor):
        return tuple(output.shape)
    if isinstance(output, (tuple, list)):
        return tuple(_shapes(item) for item in output)
    if isinstance(output, dict):
        return {key: _shapes(value) for key, value in output.items()}
    return type(output).__name__
