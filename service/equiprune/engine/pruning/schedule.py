"""Gradual magnitude pruning on the cubic schedule of Zhu & Gupta (2017).

    s(t) = s_f + (s_i - s_f) * (1 - t/T)^3

which, with s_i = 0, is the science brief's s(t) = s_f * (1 - (1 - t/T)^3): sparsity rises fast
at first, while the network has redundancy to spare, and slowly near the end. This module only
orchestrates; training between pruning steps is the caller's, passed in as `train_between`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..errors import InvalidConfigError
from .magnitude import magnitude_masks, validate_sparsity
from .masks import Masks, apply_masks


def cubic_sparsity(step: int, total_steps: int, final: float, initial: float = 0.0) -> float:
    """Target sparsity after `step` of `total_steps` pruning steps (step 0 = before any)."""
    _validate_steps(total_steps)
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= total_steps:
        raise InvalidConfigError("pruning.step", f"expected an integer in [0, {total_steps}], got {step!r}")
    validate_sparsity(final)
    validate_sparsity(initial, "pruning.initial_sparsity")
    if initial > final:
        raise InvalidConfigError(
            "pruning.initial_sparsity", f"initial sparsity {initial} exceeds the final sparsity {final}"
        )
    remaining = 1.0 - step / total_steps
    return final + (initial - final) * remaining**3


def gradual_magnitude_prune(
    model: nn.Module,
    params: Sequence[str],
    final_sparsity: float,
    *,
    steps: int,
    scope: str = "layerwise",
    train_between: Callable[[int, Masks], None],
    initial_sparsity: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Prune to `final_sparsity` in `steps` cubic steps, training between them; returns the final masks.

    After step k (1..steps) the weights hold exactly cubic_sparsity(k, steps) and
    `train_between(k, masks)` is called for every step but the last: the caller trains with
    those masks fixed (apply_masks after each optimiser step, mask_gradients before it) and
    fine-tunes after this function returns.
    """
    _validate_steps(steps)
    # Fail on a bad target before the first step changes any weight.
    cubic_sparsity(steps, steps, final_sparsity, initial_sparsity)
    masks: dict[str, torch.Tensor] = {}
    for step in range(1, steps + 1):
        target = cubic_sparsity(step, steps, final_sparsity, initial_sparsity)
        masks = magnitude_masks(model, params, target, scope=scope, current_masks=masks if step > 1 else None)
        apply_masks(model, masks)
        if step < steps:
            # A copy: the next step builds on these masks, whatever the callback does to its argument.
            train_between(step, dict(masks))
    return masks


def _validate_steps(total_steps: int) -> None:
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise InvalidConfigError("pruning.steps", f"expected a positive integer, got {total_steps!r}")
