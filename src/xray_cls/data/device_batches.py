"""The fast path for small data sets: a whole split held once as a uint8 tensor on the training device,
shuffled and sliced into batches there, with no per-item Python and no worker processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch


class DeviceBatches:
    """An iterable of ``(images uint8 [B, C, H, W], labels)`` batches, re-shuffled every epoch.

    Shuffling is seeded by ``seed + epoch``, so two runs with one seed see the same batches. Under DDP each
    rank takes every ``world_size``-th sample of the shared permutation, padded by wrapping around (as
    ``DistributedSampler`` does) so that every rank gets the same number of batches: DDP waits forever for a
    rank that has one batch fewer. Padding repeats up to ``world_size - 1`` samples in evaluation metrics.
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
        progress: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.sample_weights = sample_weights
        self.rank, self.world_size = rank, world_size
        # (epoch, batches trained on in it) from the trainer: the loader runs a batch ahead of training, so
        # only the trainer knows where a mid-epoch checkpoint really is.
        self.progress = progress
        self.epoch = 0
        self._resume_at: dict[str, int] | None = None

    def state_dict(self) -> dict[str, int]:
        epoch, done = self.progress() if self.progress else (self.epoch, 0)
        return {"epoch": epoch, "position": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume mid-epoch: the same order as before, without the batches already trained on."""
        self._resume_at = dict(state)

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
        total = -(-n // self.world_size) * self.world_size
        if n and total > n:
            order = order.repeat(-(-total // n))[:total]
        return order[self.rank :: self.world_size].to(self.images.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.progress is not None:
            self.epoch = self.progress()[0]
        skip = 0
        if self._resume_at is not None and self._resume_at["epoch"] == self.epoch:
            skip = self._resume_at["position"]
        self._resume_at = None
        for batch in self._order().split(self.batch_size)[skip:]:
            yield self.images[batch], self.labels[batch]
        self.epoch += 1  # without a trainer, each pass still gets a new order
