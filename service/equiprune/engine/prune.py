"""One entry point for every kind of pruning, returning what was measured.

Kinds: unstructured magnitude (layer-wise or global; one-shot or gradual with training
between steps), N:M, and structured channel pruning that really shrinks the model. The
reported sparsity is always measured from the weights after pruning.
"""

from __future__ import annotations

import copy
from fnmatch import fnmatchcase
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch
from torch import nn

from .errors import InvalidConfigError
from .modes import is_exported_module
from .pruning.counting import count_macs, count_parameters
from .pruning.magnitude import SCOPES, magnitude_masks, validate_sparsity
from .pruning.masks import Masks, SparsityReport, apply_masks, measure_sparsity
from .pruning.nm import nm_masks, validate_nm
from .pruning.schedule import gradual_magnitude_prune
from .pruning.selection import candidate_layers, prunable_parameters
from .pruning.structured import ensure_structured_supported, prune_channels

KINDS = ("unstructured", "n_m", "structured")
SCHEDULES = ("one_shot", "gradual")


@dataclass(frozen=True)
class PruningConfig:
    """What to prune and how.

    sparsity: fraction of prunable weights zeroed (unstructured), or of channels removed
        (structured). Ignored for N:M, where it follows from n and m.
    keep_first_and_last: keep the first conv and the last linear layer dense (science.md's
        reference setting).
    gradual_steps: number of cubic-schedule pruning steps; training runs between them.
    recalibrate_batchnorm: re-estimate BatchNorm statistics on training inputs after pruning
        (the pipeline does it; the report keeps the model before it too).
    """

    kind: str = "unstructured"
    sparsity: float = 0.9
    scope: str = "layerwise"
    schedule: str = "one_shot"
    gradual_steps: int = 5
    exclude_names: tuple[str, ...] = ()
    exclude_types: tuple[str, ...] = ()
    keep_first_and_last: bool = True
    n: int = 2
    m: int = 4
    recalibrate_batchnorm: bool = True
    importance: str = "l1"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidConfigError("pruning.kind", f"unknown kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.scope not in SCOPES:
            raise InvalidConfigError("pruning.scope", f"unknown scope {self.scope!r}; choose one of {', '.join(SCOPES)}")
        if self.schedule not in SCHEDULES:
            raise InvalidConfigError("pruning.schedule", f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.schedule == "gradual" and self.kind != "unstructured":
            raise InvalidConfigError("pruning.schedule", "the gradual schedule applies to unstructured pruning only")
        if not 1 <= self.gradual_steps <= 1000:
            raise InvalidConfigError("pruning.gradual_steps", f"must be 1 to 1000, got {self.gradual_steps}")
        if self.kind != "n_m":
            validate_sparsity(self.sparsity)
        else:
            validate_nm(self.n, self.m)

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


@dataclass(frozen=True)
class PruneOutcome:
    """The pruned model, its masks (empty for structured pruning) and measured sizes."""

    module: nn.Module
    masks: Masks
    sparsity: SparsityReport
    params_before: int
    params_after: int
    macs_before: int | None
    macs_after: int | None
    skipped_layers: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return {
            "sparsity": self.sparsity.to_dict(),
            "params_before": self.params_before,
            "params_after": self.params_after,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "skipped_layers": list(self.skipped_layers),
            "notes": list(self.notes),
        }


def prune(
    model: nn.Module,
    config: PruningConfig,
    *,
    example_input: torch.Tensor | None = None,
    train_between: Callable[[nn.Module, int, Masks], None] | None = None,
) -> PruneOutcome:
    """Prune a copy of `model` (the argument is left untouched).

    `example_input` is needed for MAC counts and structured pruning; `train_between(module,
    step, masks)` trains the copy being pruned, masks fixed, between gradual-schedule steps.
    """
    if config.kind == "structured":
        return _prune_structured(model, config, example_input)
    pruned = copy.deepcopy(model)
    params = _prunable(pruned, config)
    skipped: tuple[str, ...] = ()
    if config.kind == "n_m":
        result = nm_masks(pruned, params, n=config.n, m=config.m)
        masks, skipped = result.masks, tuple(result.skipped)
    elif config.schedule == "gradual":
        if train_between is None:
            raise InvalidConfigError("pruning.schedule", "the gradual schedule needs training data to train between steps")
        masks = gradual_magnitude_prune(
            pruned, params, config.sparsity, steps=config.gradual_steps, scope=config.scope,
            train_between=lambda step, masks: train_between(pruned, step, masks),
        )
    else:
        masks = magnitude_masks(pruned, params, config.sparsity, scope=config.scope)
    apply_masks(pruned, masks)
    sparsity = measure_sparsity(pruned, masks.keys())
    macs = _macs(model, example_input)
    notes = ()
    if skipped:
        notes = (f"N:M left {len(skipped)} layer(s) dense because their input size is not a multiple of m",)
    return PruneOutcome(
        module=pruned,
        masks=masks,
        sparsity=sparsity,
        params_before=count_parameters(model),
        params_after=count_parameters(pruned) - sparsity.prunable_zeros,  # minus the pruned weights
        macs_before=macs,
        macs_after=macs,  # unstructured zeros save no dense MACs; the storage shrinks instead
        skipped_layers=skipped,
        notes=notes,
    )


def _prunable(model: nn.Module, config: PruningConfig) -> list[str]:
    if not is_exported_module(model):
        return prunable_parameters(model, exclude_names=config.exclude_names, exclude_types=config.exclude_types,
                                   keep_first_and_last=config.keep_first_and_last)
    return exported_prunable_parameters(model, config)


def exported_prunable_parameters(model: nn.Module, config: PruningConfig) -> list[str]:
    """Weights to prune in a torch.export program, which has parameters but no layer modules.

    Conv and linear weights are the parameters with two or more dimensions; their order is
    the original model's, so the first and last can still be kept dense. Names are matched
    against the layer path (the parameter name without ``.weight``).
    """
    if config.exclude_types:
        raise InvalidConfigError("pruning.exclude_types", "a torch.export program has no layer types to match; "
                                 "exclude layers by name (pruning.exclude_names) instead")
    names = [name for name, p in model.named_parameters() if p.dim() >= 2]
    if config.keep_first_and_last:
        names = names[1:-1]
    for pattern in config.exclude_names:
        hits = [n for n in names if fnmatchcase(n.rsplit(".", 1)[0], pattern)]
        if not hits:
            raise InvalidConfigError("pruning.exclude_names", f"pattern {pattern!r} matches no prunable weight")
        names = [n for n in names if n not in hits]
    return names


def _prune_structured(model: nn.Module, config: PruningConfig, example_input: torch.Tensor | None) -> PruneOutcome:
    """Channels removed from every layer group; the output layer always keeps its outputs, the
    first conv too with `keep_first_and_last`. Layers are excluded by name only."""
    ensure_structured_supported(model)
    if example_input is None:
        raise InvalidConfigError("pruning.kind", "structured pruning needs an example input to trace the model")
    if config.exclude_types:
        raise InvalidConfigError("pruning.exclude_types", "structured pruning excludes layers by name "
                                 "(pruning.exclude_names), not by type")
    ignored = list(config.exclude_names)
    if config.keep_first_and_last:
        ignored += list(candidate_layers(model))[:1]
    try:
        result = prune_channels(model, example_input, config.sparsity,
                                ignored_layers=ignored or None, importance=config.importance)
    except InvalidConfigError as err:
        if err.field != "pruning.ignored_layers":
            raise
        raise InvalidConfigError("pruning.exclude_names", err.problem) from None
    return PruneOutcome(
        module=result.module,
        masks={},
        sparsity=measure_sparsity(result.module, ()),
        params_before=result.params_before,
        params_after=result.params_after,
        macs_before=result.macs_before,
        macs_after=result.macs_after,
    )


def _macs(model: nn.Module, example_input: torch.Tensor | None) -> int | None:
    if example_input is None:
        return None
    return count_macs(model, example_input)
