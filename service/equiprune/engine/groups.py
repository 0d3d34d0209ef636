"""GroupedData: the in-memory view every engine step works on.

One tensor of inputs, one of labels and one of group indices for a single grouping (an
attribute such as race, or an intersection such as race×gender). Loading, validation and the
on-disk format live in `dataset.py`; this module only holds and slices tensors.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GroupedData:
    """Samples with a class label and a group index each.

    inputs: float tensor (N, ...) already normalised for the model.
    labels: int64 (N,), class indices.
    groups: int64 (N,), indices into `group_names`.
    group_names: names of every group of the grouping, including groups with no sample in
        this particular split, so reports of different splits line up.
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    groups: torch.Tensor
    group_names: tuple[str, ...]

    def __post_init__(self) -> None:
        n = self.inputs.shape[0]
        if self.labels.shape != (n,) or self.groups.shape != (n,):
            raise ValueError(
                f"inputs, labels and groups disagree on the sample count: "
                f"{tuple(self.inputs.shape)}, {tuple(self.labels.shape)}, {tuple(self.groups.shape)}"
            )

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def num_groups(self) -> int:
        return len(self.group_names)

    def group_counts(self) -> torch.Tensor:
        """Samples per group, int64 (num_groups,)."""
        return torch.bincount(self.groups, minlength=self.num_groups)

    def subset(self, index: torch.Tensor) -> GroupedData:
        """The samples at `index` (a bool mask or integer indices), same group names."""
        return GroupedData(self.inputs[index], self.labels[index], self.groups[index], self.group_names)

    def batches(
        self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield (inputs, labels, groups) mini-batches; the last one may be short."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield self.inputs[idx], self.labels[idx], self.groups[idx]

    def sample_per_group(self, max_per_group: int, *, seed: int) -> GroupedData:
        """At most `max_per_group` random samples of every group, in their original order."""
        gen = torch.Generator().manual_seed(seed)
        keep = []
        for g in range(self.num_groups):
            members = torch.nonzero(self.groups == g).flatten()
            keep.append(members[torch.randperm(members.numel(), generator=gen)[:max_per_group]])
        return self.subset(torch.cat(keep).sort().values)

    def split_off(self, fraction: float, *, seed: int) -> tuple[GroupedData, GroupedData]:
        """Split into (rest, held_out) with `fraction` of every group held out.

        Stratified per group, so small groups keep their share in both parts; used to carve a
        constraint split the primal step of fair fine-tuning never sees.
        """
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {fraction}")
        gen = torch.Generator().manual_seed(seed)
        held = torch.zeros(len(self), dtype=torch.bool)
        for g in range(self.num_groups):
            members = torch.nonzero(self.groups == g).flatten()
            if members.numel() == 0:
                continue
            take = int(round(fraction * members.numel()))
            take = min(max(take, 1), members.numel() - 1) if members.numel() > 1 else 0
            chosen = members[torch.randperm(members.numel(), generator=gen)[:take]]
            held[chosen] = True
        return self.subset(~held), self.subset(held)
