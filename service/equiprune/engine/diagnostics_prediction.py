"""Taylor prediction of each group's excess loss R(a) for a mask set, from `diagnose`'s results.

R(a) ≈ −g_aᵀ w_P + ½ w_Pᵀ H_a w_P with the bound ‖g_a‖·‖w_P‖ + ½ |λ|·‖w_P‖². Separate from
`diagnostics_dense` because it runs per mask set (one HVP pass per group) long after the dense
diagnosis, and checks that model and data are still the diagnosed ones.
"""

from __future__ import annotations

import torch
from torch import nn

from equiprune.engine.diagnostics_dense import _fingerprint, _group_indices, diagnose
from equiprune.engine.diagnostics_hessian import _dot, _hvp_pass, _norm, _Objective
from equiprune.engine.diagnostics_types import (
    Diagnostics,
    DiagnosticsConfig,
    GroupDiagnostics,
    PredictedExcessLoss,
    Vector,
)
from equiprune.engine.errors import InvalidConfigError, InvalidDatasetError, InvalidModelError
from equiprune.engine.groups import GroupedData
from equiprune.engine.modes import mode
from equiprune.engine.pruning.masks import Masks


# --------------------------------------------------------------------------- predictions


def _pruned_weights(objective: _Objective, masks: Masks, model: nn.Module) -> Vector:
    """w_P: the dense weights where the mask drops them, zero elsewhere and in unmasked tensors."""
    all_params = dict(model.named_parameters())
    position = {n: i for i, n in enumerate(objective.names)}
    pruned = [torch.zeros_like(p) for p in objective.dense]
    for name, mask in masks.items():
        where = f"masks.{name}"
        if name not in all_params:
            raise InvalidConfigError(where, "not a parameter of the model")
        if name not in position:
            raise InvalidConfigError(where, "not among the diagnosed parameters; add it to diagnostics.parameters")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise InvalidConfigError(where, "expected a bool tensor (True = kept)")
        dense = objective.dense[position[name]]
        if tuple(mask.shape) != tuple(dense.shape):
            raise InvalidConfigError(where, f"expected shape {tuple(dense.shape)}, got {tuple(mask.shape)}")
        pruned[position[name]] = dense * (~mask.to(dense.device))
    return tuple(pruned)


def _check_same_setting(model: nn.Module, data: GroupedData, diagnostics: Diagnostics) -> None:
    state = diagnostics._state
    if _fingerprint(model, diagnostics.parameters) != state.fingerprint:
        raise InvalidModelError(
            "model", "weights differ from the diagnosed dense model; predict with the unpruned model θ*"
        )
    counts = tuple(int(c) for c in data.group_counts())
    if data.group_names != state.group_names or counts != state.group_counts:
        raise InvalidDatasetError("dataset", "differs from the data the diagnostics were computed on")


def _predict_group(
    objective: _Objective, diag: GroupDiagnostics, index: torch.Tensor, gradient: Vector | None, w: Vector
) -> PredictedExcessLoss:
    w_norm = _norm(w)
    if gradient is None:
        return PredictedExcessLoss(diag.group, 0, w_norm, None, None, None, None)
    first = -_dot(gradient, w)
    second = 0.5 * _dot(w, _hvp_pass(objective, index, w)) if w_norm > 0 else 0.0
    bound = diag.grad_norm * w_norm + 0.5 * abs(diag.top_eigenvalue) * w_norm**2
    return PredictedExcessLoss(diag.group, diag.n, w_norm, first, second, first + second, bound)


def predict_excess_loss(
    model: nn.Module,
    data: GroupedData,
    masks: Masks,
    config: DiagnosticsConfig | None = None,
    diagnostics: Diagnostics | None = None,
) -> tuple[PredictedExcessLoss, ...]:
    """Taylor-predicted R(a) of every group for pruning `masks` from the dense `model`.

    Pass the `diagnostics` of this model and data to reuse its gradients and eigenvalues (then
    each call costs one HVP pass per group); without it, `diagnose` runs first. Masks may cover
    any subset of the diagnosed parameters; a masked parameter outside them is an error,
    because its share of w_P would silently be left out.
    """
    if diagnostics is None:
        diagnostics = diagnose(model, data, config)
    elif config is not None and config != diagnostics.config:
        raise InvalidConfigError("diagnostics", "config differs from the one the given diagnostics were computed with")
    _check_same_setting(model, data, diagnostics)
    objective = _Objective(model, diagnostics.parameters, data, diagnostics.config.batch_size)
    w = _pruned_weights(objective, masks, model)
    gradients = diagnostics._state.gradients
    with mode(model, training=False):
        return tuple(
            _predict_group(objective, diag, index, gradients.get(g), w)
            for g, (diag, index) in enumerate(zip(diagnostics.groups, _group_indices(data)))
        )
