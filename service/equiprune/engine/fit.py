"""Does a model fit a dataset? Checked before any work, by the engine CLI and the service's
jobs alike, so a mismatch is a refusal naming the field — never a crash halfway through.

A model fits when it takes the dataset's samples and has an output for every class the
labels use. For an architecture (a model still to be built) this is measured on the meta
device, within the limits, without allocating anything; for a loaded model by one forward
pass of two samples.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .errors import InvalidModelError
from .group_dataset import GroupDataset, validate_for_model
from .models.footprint import Footprint, ModelLimits, measure
from .models.registry import ArchitectureSpec
from .modes import try_set_mode


def check_model_fits(model: nn.Module, dataset: GroupDataset, field: str = "model") -> int:
    """Refuse a loaded model that cannot take the dataset's samples or has too few outputs;
    return its number of outputs."""
    outputs = model_outputs(model, dataset, field)
    validate_for_model(dataset, outputs)
    return outputs


def check_architecture_fits(spec: ArchitectureSpec, dataset: GroupDataset, limits: ModelLimits | None = None,
                            field: str = "model.kwargs") -> Footprint:
    """Refuse an architecture that exceeds the limits, cannot take the dataset's samples or
    has fewer outputs than the dataset has classes — all measured without allocating. The
    footprint's `outputs` is then always known."""
    footprint = measure(spec, dataset.sample_shape, limits=limits, field=field)
    if footprint.outputs is None:
        raise InvalidModelError(field, f"architecture {spec.name!r} does not return one row of class scores per "
                                       "sample")
    if footprint.outputs < dataset.num_classes:
        raise InvalidModelError(field, f"the architecture has {footprint.outputs} outputs but the dataset has "
                                       f"{dataset.num_classes} classes")
    return footprint


def model_outputs(model: nn.Module, dataset: GroupDataset, field: str = "model") -> int:
    """The width of the model's output for two samples of the dataset (an exported program's
    only reliable description)."""
    return output_width(model, dataset.inputs[:2], field, f"this dataset's samples of shape {dataset.sample_shape}")


def output_width(model: nn.Module, inputs: torch.Tensor, field: str, what: str) -> int:
    """Run `model` on `inputs` (eval mode, no gradients) and return its number of outputs; a
    model that fails on them, in any way, or does not return one row of scores per input is
    refused naming `field` (`what` says what it was given). A program frozen in training mode
    would update its batch-norm statistics: it runs on a copy."""
    if not try_set_mode(model, False):
        model = copy.deepcopy(model)
    with torch.no_grad():
        try:
            output = model(inputs)
        except Exception as exc:  # noqa: BLE001 - whatever a client's model raises is the model's fault
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise InvalidModelError(field, f"the model cannot take {what}: {first}") from None
    if not isinstance(output, torch.Tensor) or output.dim() != 2 or output.shape[0] != inputs.shape[0]:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise InvalidModelError(field, f"the model returns outputs of shape {shape} for {what}; a classifier "
                                       "returns one row of class scores per sample")
    return int(output.shape[1])
