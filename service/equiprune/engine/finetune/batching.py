"""The loop's inputs as pure functions of (seed, epoch) or (seed, step): the epoch's sample
order, the half of the images mirrored, the balanced constraint draws, and dropout's RNG.

Kept together and apart from the loop because they are what makes a resumed run replay the same
batches as one that never stopped (see loop.py's docstring); moving a device transfer or a seed
here changes nothing about how steps are taken.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..groups import GroupedData
from ..modes import mode
from .distributed import DataParallel


def _has_random_layers(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())


@contextmanager
def _step_rng(random_layers: bool, seed: int, step: int, rank: int = 0) -> Iterator[None]:
    """Dropout draws from the global RNG; seed it per step (inside a fork, so the caller's RNG
    is untouched) so that a resumed run makes the same draws as one that never stopped.
    Data-parallel workers offset the seed by their rank so their slices get distinct draws."""
    if not random_layers:
        yield
        return
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed * 15_485_863 + step + (rank << 40))
        yield


def _flip_half(x: torch.Tensor, seed: int, step: int, global_size: int | None = None,
               data_parallel: DataParallel | None = None) -> torch.Tensor:
    """Mirror a random half of the images (width axis); the choice is a function of (seed, step),
    drawn for the whole global batch so a data-parallel worker flips what one process would."""
    global_size = x.shape[0] if global_size is None else global_size
    flip = torch.rand(global_size, generator=torch.Generator().manual_seed(seed * 7_919 + step)) < 0.5
    if data_parallel is not None:
        flip = data_parallel.shard(flip)
    flip = flip.to(x.device).view(-1, *([1] * (x.dim() - 1)))
    return torch.where(flip, x.flip(-1), x)


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled sample order of one epoch, a pure function of (seed, epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def _to_device(batch: GroupedData, device: torch.device, channels_last: bool):
    x = batch.inputs.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, batch.labels.to(device), batch.groups.to(device)


class ConstraintSampler:
    """Balanced draws of constraint samples, each a pure function of (seed, step).

    Balanced (the same count from every group) so a small group's estimate fills as fast as a
    large one's. Outcomes are measured in eval mode: in train mode BatchNorm would fold the
    constraint samples into its running statistics, and the primal side must never see them.
    """

    def __init__(self, constraint: GroupedData, per_group: int, seed: int) -> None:
        self.data = constraint
        self.per_group = per_group
        self.seed = seed
        self.members = [torch.nonzero(constraint.groups == g).flatten() for g in range(constraint.num_groups)]
        self.members = [m for m in self.members if m.numel()]

    @torch.no_grad()
    def outcomes(self, model: nn.Module, step: int, device, autocast) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        idx = torch.cat([m[torch.randint(m.numel(), (self.per_group,), generator=gen)] for m in self.members])
        x, y, g = _to_device(self.data.subset(idx), device, False)
        with autocast, mode(model, training=False):
            logits = model(x)
        return logits.argmax(dim=1) == y, g
