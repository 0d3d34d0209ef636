"""Masks: which weights a pruned model keeps, and keeping them pruned.

A mask set maps a parameter name (as in ``model.named_parameters()``) to a bool tensor of the
same shape, True where the weight is kept. We keep masks beside the model instead of using
``torch.nn.utils.prune`` reparametrisation because that renames parameters
(``weight_orig`` + ``weight_mask``): the state_dict would no longer match the registered
architecture for safetensors export, and it cannot be applied to a ``torch.export`` module.
Zeroing after every optimiser step keeps the mask fixed through fine-tuning.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

Masks = Mapping[str, torch.Tensor]


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Zero every pruned weight in place.

    masked_fill (not multiplication) so pruned negative weights become +0.0, not -0.0: the
    sparse format is bit-exact and would otherwise have to store their sign bits.
    """
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        param = params[name]
        param.masked_fill_(~mask.to(device=param.device, dtype=torch.bool), 0.0)


def mask_gradients(model: nn.Module, masks: Masks) -> None:
    """Zero the gradients of pruned weights so momentum never revives them."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        grad = params[name].grad
        if grad is not None:
            grad.mul_(mask.to(device=grad.device, dtype=grad.dtype))


def masks_from_weights(model: nn.Module, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Masks read off the weights: a weight is kept when it is non-zero."""
    params = dict(model.named_parameters())
    return {name: params[name].detach() != 0 for name in names}


@dataclass(frozen=True)
class SparsityReport:
    """Sparsity measured from the weights themselves, never from the requested target.

    `prunable_*` counts only the parameters that were candidates for pruning; `total_*`
    counts every parameter of the model (biases, norms, excluded layers included).
    """

    prunable_zeros: int
    prunable_total: int
    total_zeros: int
    total_params: int
    per_parameter: Mapping[str, float]

    @property
    def prunable_sparsity(self) -> float:
        return self.prunable_zeros / self.prunable_total if self.prunable_total else 0.0

    @property
    def total_sparsity(self) -> float:
        return self.total_zeros / self.total_params if self.total_params else 0.0

    def to_dict(self) -> dict:
        return {
            "prunable_sparsity": self.prunable_sparsity,
            "total_sparsity": self.total_sparsity,
            "prunable_zeros": self.prunable_zeros,
            "prunable_total": self.prunable_total,
            "total_zeros": self.total_zeros,
            "total_params": self.total_params,
            "per_parameter": dict(self.per_parameter),
        }


@torch.no_grad()
def measure_sparsity(model: nn.Module, prunable: Iterable[str]) -> SparsityReport:
    """Count exact zeros in the model's weights."""
    prunable = set(prunable)
    pz = pt = tz = tt = 0
    per: dict[str, float] = {}
    for name, p in model.named_parameters():
        zeros = int((p == 0).sum())
        tz += zeros
        tt += p.numel()
        if name in prunable:
            pz += zeros
            pt += p.numel()
            per[name] = zeros / p.numel()
    return SparsityReport(pz, pt, tz, tt, per)
