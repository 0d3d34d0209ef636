"""Per-group replay buffers: the last k outcomes of each group, as a ring buffer.

CEAG estimates each group's current accuracy from its last k correctness bits instead of the
noisy mini-batch; a group gets no dual update until its buffer is full.
"""

from __future__ import annotations

import torch


class ReplayBuffers:
    """`size` outcomes kept per group; a group's estimate counts once it holds `min_count`.

    CEAG uses min_count = size (the paper's "full buffer" rule); the held-out variant keeps a
    longer window for a tighter estimate but starts its dual updates once k outcomes are in.
    """

    def __init__(self, num_groups: int, size: int, min_count: int | None = None) -> None:
        self.size = size
        self.min_count = size if min_count is None else min(min_count, size)
        self.values = torch.zeros(num_groups, size, dtype=torch.float64)
        self.count = torch.zeros(num_groups, dtype=torch.int64)  # total ever pushed

    def push(self, values: torch.Tensor, groups: torch.Tensor) -> None:
        """Append each value to its group's ring, in order (the oldest are overwritten)."""
        values, groups = values.detach().double().cpu(), groups.cpu()
        for g in torch.unique(groups).tolist():
            arriving = values[groups == g]
            kept = arriving[-self.size :]
            # The kept values are the last of `arriving`: they land where the ring would be
            # after writing all of them one by one.
            first = int(self.count[g]) + arriving.numel() - kept.numel()
            positions = (first + torch.arange(kept.numel())) % self.size
            self.values[g, positions] = kept
            self.count[g] += arriving.numel()

    def ready(self) -> torch.Tensor:
        """Groups holding at least `min_count` outcomes."""
        return self.count >= self.min_count

    def means(self) -> torch.Tensor:
        """Mean of the outcomes held per group; NaN for groups that are not ready."""
        held = self.count.clamp(max=self.size)
        # Unfilled slots are zero, so the sum over the row is the sum of what is held.
        means = self.values.sum(dim=1) / held.clamp(min=1)
        return torch.where(self.ready(), means, torch.full_like(means, float("nan")))

    def state_dict(self) -> dict:
        return {"values": self.values.clone(), "count": self.count.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.values.copy_(state["values"])
        self.count.copy_(state["count"])
