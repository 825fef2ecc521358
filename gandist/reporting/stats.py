"""Per-tick statistics: scalars accumulated on the device during a tick (no host sync per step), reduced
across ranks once per tick (progress.py writes them)."""

from __future__ import annotations

import torch


class TickStats:
    """Running sums of scalar tensors on the device, averaged and reset at each tick."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, value: torch.Tensor) -> None:
        """Add a scalar (detached) to this tick's sum for `name`."""
        value = value.detach().float()
        if name in self.sums:
            self.sums[name] += value
        else:
            self.sums[name] = value.clone()
        self.counts[name] = self.counts.get(name, 0) + 1

    def means(self, reduce_mean) -> dict[str, float]:
        """Per-name means over the tick and over ranks (`reduce_mean` is a collective); then reset."""
        if not self.sums:
            return {}
        names = sorted(self.sums)
        local = torch.stack([self.sums[n] / self.counts[n] for n in names])
        values = reduce_mean(local).tolist()
        self.sums.clear()
        self.counts.clear()
        return dict(zip(names, values))
