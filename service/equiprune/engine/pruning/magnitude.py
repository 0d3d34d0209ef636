"""Unstructured magnitude pruning: zero the weights of smallest absolute value.

Counts are exact, not approximate thresholds: layer-wise prunes ``round(s * numel)`` weights of
each tensor, global prunes ``round(s * total)`` over the union of all tensors (so layers end up
with different sparsities). Rounding is half-up. Ties in |w| are broken by position (flattened
index, then the order of `params`), so the same weights always give the same mask.

Weights already masked out (``current_masks``) sort below every live weight, so calling this
again with a higher sparsity only ever removes more: the masks are monotone, which gradual
pruning relies on. If more weights are already pruned than the new target asks for, they stay
pruned and the tensor ends up sparser than requested.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..errors import InvalidConfigError

SCOPES = ("layerwise", "global")


def magnitude_masks(
    model: nn.Module,
    params: Sequence[str],
    sparsity: float,
    *,
    scope: str = "layerwise",
    current_masks: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Bool masks (True = kept) for `params` pruning a `sparsity` fraction by |w|."""
    validate_sparsity(sparsity)
    if scope not in SCOPES:
        raise InvalidConfigError(
            "pruning.scope", f"unknown scope {scope!r}; expected one of {', '.join(SCOPES)}"
        )
    weights = _lookup(model, params)
    scores = {name: _scores(w, _current(current_masks, name, w)) for name, w in weights.items()}
    _reject_stray_masks(current_masks, weights)

    if scope == "layerwise":
        masks = {name: _keep_largest(s, _prune_count(sparsity, s.numel())) for name, s in scores.items()}
    else:
        masks = _global_masks(scores, sparsity)
    masks = {name: m.view(weights[name].shape) for name, m in masks.items()}
    # Already-pruned weights stay pruned even when the target would allow fewer zeros.
    if current_masks is not None:
        masks = {name: m & current_masks[name].to(m.device) for name, m in masks.items()}
    return masks


def validate_sparsity(sparsity: float, field: str = "pruning.sparsity") -> None:
    """Sparsity is a fraction in [0, 1): pruning every weight leaves no model."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise InvalidConfigError(field, f"expected a fraction in [0, 1), got {sparsity!r}")


def _lookup(model: nn.Module, params: Sequence[str]) -> dict[str, torch.Tensor]:
    available = dict(model.named_parameters())
    if isinstance(params, str):
        raise InvalidConfigError("pruning.parameters", f"expected a list of parameter names, got {params!r}")
    unknown = [p for p in params if p not in available]
    if unknown:
        raise InvalidConfigError("pruning.parameters", f"not parameters of the model: {', '.join(unknown)}")
    if len(set(params)) != len(params):
        raise InvalidConfigError("pruning.parameters", "a parameter is listed twice")
    return {name: available[name].detach() for name in params}


def _current(
    current_masks: Mapping[str, torch.Tensor] | None, name: str, weight: torch.Tensor
) -> torch.Tensor | None:
    if current_masks is None:
        return None
    if name not in current_masks:
        raise InvalidConfigError(
            "pruning.current_masks", f"no mask for {name}; expected one per pruned parameter"
        )
    mask = current_masks[name]
    if mask.shape != weight.shape or mask.dtype != torch.bool:
        raise InvalidConfigError(
            "pruning.current_masks",
            f"mask for {name} is {mask.dtype} {tuple(mask.shape)}; expected torch.bool {tuple(weight.shape)}",
        )
    return mask.to(weight.device)


def _reject_stray_masks(
    current_masks: Mapping[str, torch.Tensor] | None, weights: Mapping[str, torch.Tensor]
) -> None:
    # A mask the new set would drop could let its zeros grow back during fine-tuning.
    if current_masks is None:
        return
    stray = sorted(set(current_masks) - set(weights))
    if stray:
        raise InvalidConfigError(
            "pruning.current_masks", f"masks for parameters not being pruned now: {', '.join(stray)}"
        )


def _scores(weight: torch.Tensor, current: torch.Tensor | None) -> torch.Tensor:
    """|w| as float, with already-pruned weights at -1 so they are pruned first."""
    score = weight.abs().float().flatten()
    if current is not None:
        score = torch.where(current.flatten(), score, torch.full_like(score, -1.0))
    return score


def _prune_count(sparsity: float, numel: int) -> int:
    return min(numel, math.floor(sparsity * numel + 0.5))


def _pruned_positions(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Flat indices of the `count` lowest scores; stable sort breaks ties by position."""
    order = torch.sort(scores, stable=True).indices
    return order[:count]


def _keep_largest(scores: torch.Tensor, prune: int) -> torch.Tensor:
    return _mask_from_pruned(scores.numel(), _pruned_positions(scores, prune), scores.device)


def _mask_from_pruned(numel: int, pruned: torch.Tensor, device: torch.device) -> torch.Tensor:
    mask = torch.ones(numel, dtype=torch.bool, device=device)
    mask[pruned] = False
    return mask


def _global_masks(scores: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    if not scores:
        return {}
    names = list(scores)
    device = scores[names[0]].device
    flat = torch.cat([scores[n].to(device) for n in names])
    pruned = _pruned_positions(flat, _prune_count(sparsity, flat.numel()))
    keep_all = _mask_from_pruned(flat.numel(), pruned, device)
    masks: dict[str, torch.Tensor] = {}
    start = 0
    for name in names:
        size = scores[name].numel()
        masks[name] = keep_all[start : start + size].to(scores[name].device)
        start += size
    return masks
