"""Hessian-vector products and the passes over one group's samples that use them.

Holds the objective J_a as a function of the diagnosed parameters, the double-backward HVP,
pass 0 (loss, boundary proxies, gradient and every Hutchinson probe's vᵀHv on one shared graph
per batch), the single-HVP pass, power iteration for the dominant eigenvalue and the seeded
probe vectors. Separate from `diagnostics_dense` (which decides what to estimate per group) and
`diagnostics_prediction` (which reuses the HVP pass) because both build on these estimators;
the cost measurements behind the design are in `equiprune.engine.diagnostics`'s docstring.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from equiprune.engine.diagnostics_types import Vector
from equiprune.engine.errors import InvalidDatasetError, InvalidModelError
from equiprune.engine.groups import GroupedData


# --------------------------------------------------------------------------- vector algebra


def _dot(a: Vector, b: Vector) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def _norm(a: Vector) -> float:
    return math.sqrt(_dot(a, a))


def _scaled(a: Vector, factor: float) -> Vector:
    return tuple(x * factor for x in a)


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
