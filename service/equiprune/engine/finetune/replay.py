"""Per-group replay buffers: the last k outcomes of each group, as a ring buffer.

CEAG estimates each group's current accuracy from its last k correctness bits instead of the
noisy mini-batch; a group gets no dual update until its buffer is full.
"""

from __future__ import annotations

import torch


class ReplayBuffers:
    def __init__(self, num_groups: int, size: int) -> None:
        self.size = size
        self.values = torch.zeros(num_groups, size, dtype=torch.float64)
        self.count = torch.zeros(num_groups, dtype=torch.int64)  # total ever pushed

    def push(self, values: torch.Tensor, groups: torch.Tensor) -> None:
        """Append each value to its group's ring, in order."""
        values, groups = values.detach().double().cpu(), groups.cpu()
        for g in torch.unique(groups).tolist():
            new = values[groups == g][-self.size :]
            start = int(self.count[g]) % self.size
            positions = (start + torch.arange(new.numel())) % self.size
            self.values[g, positions] = new
            self.count[g] += int((groups == g).sum())

    def full(self) -> torch.Tensor:
        return self.count >= self.size

    def means(self) -> torch.Tensor:
        """Mean of each full buffer; NaN for groups whose buffer is not full yet."""
        means = self.values.mean(dim=1)
        return torch.where(self.full(), means, torch.full_like(means, float("nan")))

    def state_dict(self) -> dict:
        return {"values": self.values.clone(), "count": self.count.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.values.copy_(state["values"])
        self.count.copy_(state["count"])
