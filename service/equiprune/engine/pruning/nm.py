"""Semi-structured N:M sparsity: keep the n largest |w| of every m consecutive weights.

Groups run along the input dimension, the layout sparse tensor cores accelerate (2:4). For a
conv the weight of one output channel is flattened over (in_channels, kh, kw) in PyTorch's
memory order and cut into consecutive groups of m. A layer whose flattened input size is not a
multiple of m cannot carry the pattern; it is left dense and reported in `skipped` rather than
padded, so what the report says is exactly what the weights hold. Ties keep the earlier weight.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InvalidConfigError


@dataclass(frozen=True)
class NMResult:
    """masks: bool masks (True = kept) for the layers that carry the pattern.
    skipped: the requested parameters left dense because their input size is not a multiple of m.
    """

    masks: Mapping[str, torch.Tensor]
    skipped: tuple[str, ...]
    n: int
    m: int

    def to_dict(self) -> dict:
        return {
            "n": self.n,
            "m": self.m,
            "masked_parameters": list(self.masks),
            "skipped": list(self.skipped),
        }


def nm_masks(model: nn.Module, params: Sequence[str], n: int = 2, m: int = 4) -> NMResult:
    """N:M masks for `params`; layers that cannot carry the pattern are listed in `skipped`."""
    _validate(n, m)
    if isinstance(params, str):
        raise InvalidConfigError("pruning.parameters", f"expected a list of parameter names, got {params!r}")
    available = dict(model.named_parameters())
    unknown = [p for p in params if p not in available]
    if unknown:
        raise InvalidConfigError("pruning.parameters", f"not parameters of the model: {', '.join(unknown)}")

    masks: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for name in params:
        weight = available[name].detach()
        if weight.dim() < 2:
            raise InvalidConfigError(
                "pruning.parameters",
                f"{name} has shape {tuple(weight.shape)}; N:M needs a weight with an input dimension",
            )
        if weight[0].numel() % m:
            skipped.append(name)
            continue
        masks[name] = _nm_mask(weight, n, m)
    return NMResult(masks=masks, skipped=tuple(skipped), n=n, m=m)


MAX_M = 64


def validate_nm(n: int, m: int) -> None:
    """0 < n < m <= MAX_M (beyond that N:M is no longer a hardware pattern)."""
    _validate(n, m)


def _validate(n: int, m: int) -> None:
    for field, value in (("pruning.n", n), ("pruning.m", m)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidConfigError(field, f"expected an integer, got {value!r}")
    if not 0 < n < m:
        raise InvalidConfigError("pruning.n", f"expected 0 < n < m, got n={n}, m={m}")
    if m > MAX_M:
        raise InvalidConfigError("pruning.m", f"expected m <= {MAX_M}, got {m}")


def _nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    groups = weight.abs().float().reshape(-1, m)
    # Stable descending sort: among equal magnitudes the earlier weight comes first and is kept.
    keep = torch.sort(groups, dim=1, descending=True, stable=True).indices[:, :n]
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(1, keep, True)
    return mask.view(weight.shape)
