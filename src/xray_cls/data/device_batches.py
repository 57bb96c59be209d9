"""The fast path for small data sets: a whole split held once as a uint8 tensor on the training device,
shuffled and sliced into batches there, with no per-item Python and no worker processes."""

from __future__ import annotations

from collections.abc import Iterator

import torch


class DeviceBatches:
    """An iterable of ``(images uint8 [B, C, H, W], labels)`` batches, re-shuffled every epoch.

    Shuffling is seeded by ``seed + epoch``, so two runs with one seed see the same batches. Under DDP each
    rank takes every ``world_size``-th sample of the shared permutation.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        sample_weights: torch.Tensor | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.sample_weights = sample_weights
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def __len__(self) -> int:
        per_rank = -(-len(self.labels) // self.world_size)
        return -(-per_rank // self.batch_size)

    def _order(self) -> torch.Tensor:
        n = len(self.labels)
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.sample_weights is not None:
            order = torch.multinomial(self.sample_weights, n, replacement=True, generator=generator)
        elif self.shuffle:
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        return order[self.rank :: self.world_size].to(self.images.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order()
        self.epoch += 1
        for batch in order.split(self.batch_size):
            yield self.images[batch], self.labels[batch]
