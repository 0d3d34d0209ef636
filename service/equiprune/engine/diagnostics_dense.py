"""`diagnose`: every group's loss, gradient, curvature and boundary proxies at the dense weights θ*.

Decides which parameters are diagnosed, runs the estimators of `diagnostics_hessian` on each
group's own samples (and optionally on all samples as "overall"), and keeps the gradients and a
weight fingerprint that `diagnostics_prediction` reuses. See `equiprune.engine.diagnostics`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from equiprune.engine.diagnostics_hessian import (
    _first_pass,
    _gaussian,
    _group_generator,
    _hvp_pass,
    _norm,
    _Objective,
    _power_iteration,
    _rademacher,
)
from equiprune.engine.diagnostics_types import (
    Diagnostics,
    DiagnosticsConfig,
    GroupDiagnostics,
    Vector,
    _DenseState,
)
from equiprune.engine.errors import InvalidConfigError, InvalidModelError
from equiprune.engine.groups import GroupedData
from equiprune.engine.modes import mode


# --------------------------------------------------------------------------- model plumbing


def _diagnosed_names(model: nn.Module, config: DiagnosticsConfig) -> tuple[str, ...]:
    params = dict(model.named_parameters())
    if config.parameters is None:
        names = tuple(n for n, p in params.items() if p.requires_grad)
        if not names:
            raise InvalidModelError("model", "has no trainable parameters to diagnose")
        return names
    unknown = [n for n in config.parameters if n not in params]
    if unknown:
        raise InvalidConfigError(
            "diagnostics.parameters", f"not parameters of the model: {unknown}; expected names from named_parameters()"
        )
    return config.parameters


def _fingerprint(model: nn.Module, names: Sequence[str]) -> tuple[tuple[float, float], ...]:
    params = dict(model.named_parameters())
    with torch.no_grad():
        return tuple(
            (float(params[n].double().sum()), float(params[n].double().square().sum())) for n in names
        )


# --------------------------------------------------------------------------- diagnose


def _diagnose_group(
    objective: _Objective, name: str, index: torch.Tensor, group_index: int, config: DiagnosticsConfig
) -> tuple[GroupDiagnostics, Vector | None]:
    if index.numel() == 0:
        return GroupDiagnostics.empty(name), None
    generator = _group_generator(config.seed, group_index)
    probes = [_rademacher(objective.dense, generator) for _ in range(config.probes)]
    first = _first_pass(objective, index, probes)
    quads = first.probe_quadratics
    stderr = float(quads.std(correction=1)) / math.sqrt(config.probes) if config.probes > 1 else None
    eigenvalue, used = _power_iteration(
        lambda v: _hvp_pass(objective, index, v),
        _gaussian(objective.dense, generator),
        config.power_iterations,
        config.power_tolerance,
    )
    result = GroupDiagnostics(
        group=name,
        n=int(index.numel()),
        loss=first.loss,
        grad_norm=_norm(first.gradient),
        hessian_trace=float(quads.mean()),
        hessian_trace_stderr=stderr,
        top_eigenvalue=eigenvalue,
        power_iterations_used=used,
        mean_uncertainty=first.mean_uncertainty,
        mean_margin=first.mean_margin,
        mean_logit_margin=first.mean_logit_margin,
    )
    return result, first.gradient


def _group_indices(data: GroupedData) -> list[torch.Tensor]:
    return [torch.nonzero(data.groups == g).flatten() for g in range(data.num_groups)]


def diagnose(model: nn.Module, data: GroupedData, config: DiagnosticsConfig | None = None) -> Diagnostics:
    """Diagnose every group (and, if configured, all samples together) at the model's weights.

    The model is evaluated in eval mode and left exactly as it was: weights, gradients,
    BatchNorm statistics and each module's training flag.
    """
    config = config or DiagnosticsConfig()
    names = _diagnosed_names(model, config)
    objective = _Objective(model, names, data, config.batch_size)
    groups: list[GroupDiagnostics] = []
    gradients: dict[int, Vector] = {}
    with mode(model, training=False):
        for g, index in enumerate(_group_indices(data)):
            result, gradient = _diagnose_group(objective, data.group_names[g], index, g, config)
            groups.append(result)
            if gradient is not None:
                gradients[g] = gradient
        overall = None
        if config.include_overall:
            everyone = torch.arange(len(data))
            overall, gradient = _diagnose_group(objective, "overall", everyone, data.num_groups, config)
            if gradient is not None:
                gradients[-1] = gradient
    state = _DenseState(
        gradients=gradients,
        fingerprint=_fingerprint(model, names),
        group_names=data.group_names,
        group_counts=tuple(int(c) for c in data.group_counts()),
    )
    return Diagnostics(
        groups=tuple(groups),
        overall=overall,
        config=config,
        parameters=names,
        num_parameters=sum(p.numel() for p in objective.dense),
        _state=state,
    )
