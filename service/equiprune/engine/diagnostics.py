"""Per-group loss-landscape diagnostics at the dense model (science.md §1).

For every group a of a `GroupedData`, at the dense weights θ*, this module measures what the
second-order analysis of Tran et al. (NeurIPS 2022) says decides who pruning hurts:

- the group's mean cross-entropy J_a and the norm of its gradient g_a;
- the curvature of J_a: the Hessian trace (Hutchinson's estimator, with its standard error) and
  the dominant eigenvalue (power iteration on Hessian-vector products);
- boundary proxies from the softmax output: 1 − Σ_k p_k² (the trace of the per-sample logit
  Hessian), the probability margin p_(1) − p_(2) and the logit margin z_(1) − z_(2);

and, for a mask set, the Taylor-predicted excess loss R(a) ≈ −g_aᵀ w_P + ½ w_Pᵀ H_a w_P with
the paper's bound ‖g_a‖·‖w_P‖ + ½ λ_max·‖w_P‖². `rank_agreement` measures how well any such
prediction ranked the groups' measured damage — the diagnostics are evidence to validate per
model, not a verdict (science.md §6).

Cost model: each group's samples are read by the group's own passes only, never the whole data
set. Pass 0 computes the loss, the proxies, the gradient and every Hutchinson probe at once (one
forward and one create-graph backward per batch, then one extra backward per probe on the same
graph); each power iteration is one further pass. Predicting a mask set costs one pass (one HVP)
per group, reusing the gradients kept from `diagnose`.

HVPs use double backward (`torch.autograd.grad` with `create_graph=True`). Measured on CPU
(2 threads, torch 2.13) for a 2-conv BatchNorm CNN, 512 images 3×32×32, batch 256, best of 5:
eval pass 36 ms, gradient pass 70 ms, HVP by double backward 214–268 ms, by torch.func
forward-over-reverse (jvp of grad) 253–333 ms, the quadratic form vᵀHv by forward-over-forward
277–373 ms. Ten Hutchinson probes: 2.27 s as ten separate passes, 1.56 s sharing one graph per
batch, 4.28 s with `is_grads_batched` (vmap) — hence one shared graph per batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from equiprune.engine.errors import InvalidConfigError, InvalidDatasetError, InvalidModelError
from equiprune.engine.groups import GroupedData
from equiprune.engine.jsonable import json_float
from equiprune.engine.modes import mode
from equiprune.engine.pruning.masks import Masks

Vector = tuple[torch.Tensor, ...]


# --------------------------------------------------------------------------- configuration


def _require_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> None:
    if (isinstance(value, bool) or not isinstance(value, int) or value < minimum
            or (maximum is not None and value > maximum)):
        bound = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise InvalidConfigError(f"diagnostics.{name}", f"expected an integer {bound}, got {value!r}")


@dataclass(frozen=True)
class DiagnosticsConfig:
    """How much work the estimates get.

    probes: Rademacher probes for the Hutchinson trace (its standard error shrinks as 1/√probes).
    power_iterations: most HVP passes spent on the top eigenvalue.
    power_tolerance: stop early once the eigenvalue estimate changes by at most this fraction
        of its size between two iterations (0 = always run every iteration).
    batch_size: samples per forward pass; memory grows with it (double backward keeps a graph).
    seed: seeds the probes and the power-iteration start, so results are reproducible.
    parameters: names (as in `named_parameters()`) to diagnose; None = every trainable one.
    include_overall: also diagnose the whole data set as one group (costs as much again).
    samples_per_group: samples per group the pipeline diagnoses; the estimates cost tens of
        evaluation passes and their per-group means need far fewer samples than a split has.
    """

    probes: int = 10
    power_iterations: int = 20
    power_tolerance: float = 1e-3
    batch_size: int = 256
    seed: int = 0
    parameters: tuple[str, ...] | None = None
    include_overall: bool = True
    samples_per_group: int = 1000

    def __post_init__(self) -> None:
        _require_int("probes", self.probes, 1, 10_000)
        _require_int("power_iterations", self.power_iterations, 1, 10_000)
        _require_int("batch_size", self.batch_size, 1)
        _require_int("samples_per_group", self.samples_per_group, 2, 10**7)
        _require_int("seed", self.seed, 0)
        if self.seed >= 2**63:
            raise InvalidConfigError("diagnostics.seed", f"expected an integer below 2**63, got {self.seed}")
        tol = self.power_tolerance
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
            raise InvalidConfigError(
                "diagnostics.power_tolerance", f"expected a finite number >= 0, got {tol!r}"
            )
        if not isinstance(self.include_overall, bool):
            raise InvalidConfigError(
                "diagnostics.include_overall", f"expected true or false, got {self.include_overall!r}"
            )
        self._validate_parameters()

    def _validate_parameters(self) -> None:
        names = self.parameters
        if names is None:
            return
        if isinstance(names, str) or not isinstance(names, (tuple, list)):
            raise InvalidConfigError(
                "diagnostics.parameters", f"expected a list of parameter names or null, got {names!r}"
            )
        if not names:
            raise InvalidConfigError("diagnostics.parameters", "expected at least one parameter name, got none")
        if not all(isinstance(n, str) and n for n in names):
            raise InvalidConfigError("diagnostics.parameters", f"expected non-empty strings, got {names!r}")
        if len(set(names)) != len(names):
            raise InvalidConfigError("diagnostics.parameters", f"names must be unique, got {names!r}")
        object.__setattr__(self, "parameters", tuple(names))

    def to_dict(self) -> dict:
        return {
            "probes": self.probes,
            "power_iterations": self.power_iterations,
            "power_tolerance": float(self.power_tolerance),
            "batch_size": self.batch_size,
            "seed": self.seed,
            "parameters": None if self.parameters is None else list(self.parameters),
            "include_overall": self.include_overall,
        }


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class GroupDiagnostics:
    """The numbers for one group; every field but `group` and `n` is None when n = 0.

    top_eigenvalue is the dominant (largest-magnitude) eigenvalue of H_a, signed; near a
    minimum it is the largest eigenvalue. power_iterations_used counts the HVP passes spent.
    """

    group: str
    n: int
    loss: float | None
    grad_norm: float | None
    hessian_trace: float | None
    hessian_trace_stderr: float | None
    top_eigenvalue: float | None
    power_iterations_used: int | None
    mean_uncertainty: float | None
    mean_margin: float | None
    mean_logit_margin: float | None

    @classmethod
    def empty(cls, group: str) -> GroupDiagnostics:
        return cls(group, 0, None, None, None, None, None, None, None, None, None)

    def to_dict(self) -> dict:
        return {
            "group": self.group,
            "n": self.n,
            "loss": json_float(self.loss),
            "grad_norm": json_float(self.grad_norm),
            "hessian_trace": json_float(self.hessian_trace),
            "hessian_trace_stderr": json_float(self.hessian_trace_stderr),
            "top_eigenvalue": json_float(self.top_eigenvalue),
            "power_iterations_used": self.power_iterations_used,
            "mean_uncertainty": json_float(self.mean_uncertainty),
            "mean_margin": json_float(self.mean_margin),
            "mean_logit_margin": json_float(self.mean_logit_margin),
        }


@dataclass(frozen=True)
class _DenseState:
    """What `diagnose` keeps for later predictions: gradients and a check of the weights.

    gradients maps a group index (-1 for overall) to g_a in float64. The weight fingerprint
    (per-parameter sum and sum of squares) catches a model pruned in place after diagnosis:
    its w_P would read as zero and its HVPs would no longer be taken at θ*.
    """

    gradients: Mapping[int, Vector]
    fingerprint: tuple[tuple[float, float], ...]
    group_names: tuple[str, ...]
    group_counts: tuple[int, ...]


@dataclass(frozen=True)
class Diagnostics:
    """Per-group diagnostics of one dense model on one data split."""

    groups: tuple[GroupDiagnostics, ...]
    overall: GroupDiagnostics | None
    config: DiagnosticsConfig
    parameters: tuple[str, ...]
    num_parameters: int
    _state: _DenseState = field(repr=False, compare=False)

    def predict_excess_loss(self, model: nn.Module, data: GroupedData, masks: Masks) -> tuple[PredictedExcessLoss, ...]:
        """`predict_excess_loss` reusing these diagnostics (one HVP pass per group)."""
        return predict_excess_loss(model, data, masks, diagnostics=self)

    def group(self, name: str) -> GroupDiagnostics:
        for g in self.groups:
            if g.group == name:
                return g
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {
            "parameters": list(self.parameters),
            "num_parameters": self.num_parameters,
            "config": self.config.to_dict(),
            "groups": [g.to_dict() for g in self.groups],
            "overall": None if self.overall is None else self.overall.to_dict(),
        }


@dataclass(frozen=True)
class PredictedExcessLoss:
    """Taylor prediction of R(a) = J(θ*−w_P; D_a) − J(θ*; D_a) for one group and mask set.

    first_order = −g_aᵀ w_P, second_order = ½ w_Pᵀ H_a w_P, predicted = their sum;
    upper_bound = ‖g_a‖·‖w_P‖ + ½·|λ|·‖w_P‖² with λ the dominant eigenvalue (|λ| bounds the
    largest eigenvalue from above even when λ is negative). None when the group is empty.
    """

    group: str
    n: int
    pruned_norm: float
    first_order: float | None
    second_order: float | None
    predicted: float | None
    upper_bound: float | None

    def to_dict(self) -> dict:
        return {
            "group": self.group,
            "n": self.n,
            "pruned_norm": json_float(self.pruned_norm),
            "first_order": json_float(self.first_order),
            "second_order": json_float(self.second_order),
            "predicted": json_float(self.predicted),
            "upper_bound": json_float(self.upper_bound),
        }


# --------------------------------------------------------------------------- vector algebra


def _dot(a: Vector, b: Vector) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def _norm(a: Vector) -> float:
    return math.sqrt(_dot(a, a))


def _scaled(a: Vector, factor: float) -> Vector:
    return tuple(x * factor for x in a)


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


class _Objective:
    """The summed cross-entropy of a batch as a function of the diagnosed parameters.

    Other parameters and buffers are held fixed through `functional_call`, so nothing of the
    model (weights, .grad, requires_grad, BatchNorm statistics) is touched.
    """

    def __init__(self, model: nn.Module, names: tuple[str, ...], data: GroupedData, batch_size: int) -> None:
        self.model = model
        self.names = names
        self.data = data
        self.batch_size = batch_size
        params = dict(model.named_parameters())
        self.dense: Vector = tuple(params[n].detach() for n in names)
        diagnosed = set(names)
        self.fixed = {n: p.detach() for n, p in params.items() if n not in diagnosed}
        self.fixed.update(dict(model.named_buffers()))
        self.device = self.dense[0].device

    def batches(self, index: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The group's own samples, batch by batch (indexing, so no copy of the whole group)."""
        for start in range(0, index.numel(), self.batch_size):
            idx = index[start : start + self.batch_size]
            yield self.data.inputs[idx].to(self.device), self.data.labels[idx].to(self.device)

    def leaves(self) -> Vector:
        return tuple(p.detach().requires_grad_(True) for p in self.dense)

    def logits_and_loss(self, leaves: Vector, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = functional_call(self.model, {**self.fixed, **dict(zip(self.names, leaves))}, (x,))
        _check_logits(logits, y)
        return logits, F.cross_entropy(logits, y, reduction="sum")

    def gradient_graph(self, x: torch.Tensor, y: torch.Tensor) -> tuple[Vector, Vector, torch.Tensor]:
        """(leaves, batch gradient with its graph kept for a second backward, logits)."""
        leaves = self.leaves()
        logits, loss = self.logits_and_loss(leaves, x, y)
        grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
        grads = tuple(torch.zeros_like(p) if g is None else g for g, p in zip(grads, leaves))
        return leaves, grads, logits


def _check_logits(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise InvalidModelError(
            "model", f"expected logits of shape (batch, classes >= 2) for cross-entropy, got {tuple(logits.shape)}"
        )
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
        raise InvalidDatasetError(
            "dataset.labels", f"expected class indices in [0, {logits.shape[1]}), got values outside"
        )
    if not bool(torch.isfinite(logits).all()):
        raise InvalidModelError("model", "produced non-finite logits on the diagnosed data")


def _hessian_product(grads: Vector, leaves: Vector, v: Vector, *, retain_graph: bool) -> Vector:
    """H v from a gradient that kept its graph; parameters with constant gradient give zero."""
    live = [i for i, g in enumerate(grads) if g.requires_grad]
    out = [torch.zeros_like(p) for p in leaves]
    if not live:
        return tuple(out)
    parts = torch.autograd.grad(
        [grads[i] for i in live],
        leaves,
        grad_outputs=[v[i].to(grads[i].dtype) for i in live],
        retain_graph=retain_graph,
        allow_unused=True,
    )
    return tuple(o if p is None else p for o, p in zip(out, parts))


# --------------------------------------------------------------------------- passes


@dataclass(frozen=True)
class _FirstPass:
    loss: float
    gradient: Vector
    probe_quadratics: torch.Tensor
    mean_uncertainty: float
    mean_margin: float
    mean_logit_margin: float


def _boundary_sums(logits: torch.Tensor) -> torch.Tensor:
    """Per-batch sums of (1 − Σp², p_(1) − p_(2), z_(1) − z_(2)) in float64."""
    z = logits.detach().double()
    p = torch.softmax(z, dim=1)
    top_p = p.topk(2, dim=1).values
    top_z = z.topk(2, dim=1).values
    return torch.stack(
        [(1 - p.square().sum(1)).sum(), (top_p[:, 0] - top_p[:, 1]).sum(), (top_z[:, 0] - top_z[:, 1]).sum()]
    )


def _first_pass(objective: _Objective, index: torch.Tensor, probes: Sequence[Vector]) -> _FirstPass:
    """Loss, proxies, gradient and every probe's vᵀHv in one pass over the group's samples."""
    n = index.numel()
    loss_sum = 0.0
    proxy_sums = torch.zeros(3, dtype=torch.float64)
    grad_sum = [torch.zeros_like(p, dtype=torch.float64) for p in objective.dense]
    quad_sums = torch.zeros(len(probes), dtype=torch.float64)
    for x, y in objective.batches(index):
        leaves, grads, logits = objective.gradient_graph(x, y)
        loss_sum += float(F.cross_entropy(logits.detach().double(), y, reduction="sum"))
        proxy_sums += _boundary_sums(logits).cpu()
        for acc, g in zip(grad_sum, grads):
            acc += g.detach().double()
        for k, v in enumerate(probes):
            hv = _hessian_product(grads, leaves, v, retain_graph=k < len(probes) - 1)
            quad_sums[k] += _dot(v, hv)
    means = (proxy_sums / n).tolist()
    return _FirstPass(
        loss=loss_sum / n,
        gradient=tuple(g / n for g in grad_sum),
        probe_quadratics=quad_sums / n,
        mean_uncertainty=means[0],
        mean_margin=means[1],
        mean_logit_margin=means[2],
    )


def _hvp_pass(objective: _Objective, index: torch.Tensor, v: Vector) -> Vector:
    """H_a v (float64) in one pass over the group's samples."""
    acc = [torch.zeros_like(p, dtype=torch.float64) for p in objective.dense]
    for x, y in objective.batches(index):
        leaves, grads, _ = objective.gradient_graph(x, y)
        for a, h in zip(acc, _hessian_product(grads, leaves, v, retain_graph=False)):
            a += h.detach().double()
    return tuple(a / index.numel() for a in acc)


def _power_iteration(
    hvp: Callable[[Vector], Vector], start: Vector, iterations: int, tolerance: float
) -> tuple[float, int]:
    """Dominant eigenvalue by power iteration; returns (eigenvalue, HVPs spent).

    The estimate is the Rayleigh quotient vᵀHv of the current unit vector, which converges
    to the dominant eigenvalue with its sign even when the iterate flips direction.
    """
    v = _scaled(start, 1.0 / _norm(start))
    estimate = 0.0
    for used in range(1, iterations + 1):
        hv = hvp(v)
        previous, estimate = estimate, _dot(v, hv)
        size = _norm(hv)
        if size == 0.0:
            return 0.0, used
        v = _scaled(hv, 1.0 / size)
        if used > 1 and abs(estimate - previous) <= tolerance * abs(estimate):
            return estimate, used
    return estimate, iterations


def _rademacher(like: Vector, generator: torch.Generator) -> Vector:
    return tuple(
        (torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(device=p.device, dtype=p.dtype) for p in like
    )


def _gaussian(like: Vector, generator: torch.Generator) -> Vector:
    return tuple(torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.device) for p in like)


def _group_generator(seed: int, group_index: int) -> torch.Generator:
    """One stream per group, so a group's numbers do not depend on which other groups exist."""
    return torch.Generator().manual_seed((seed * 1_000_003 + group_index + 1) % 2**63)


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
