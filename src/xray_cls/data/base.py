"""What every data source hands to the data module: whole splits as uint8 arrays."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np


@dataclass
class SplitArrays:
    """One split of a data set, decoded once.

    ``images`` is uint8 ``[N, C, H, W]`` (a ``np.memmap`` for large cached sets), ``labels`` int64 ``[N]``.
    ``groups`` names the patient (or other unit) of each sample: samples sharing a group are never split
    between train and validation. ``None`` means every sample is its own group.
    """

    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 [N, C, H, W], got {self.images.dtype} {self.images.shape}"
            )
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)


class DataSource(Protocol):
    """A data set on disk: knows how to fetch it and how to read it into :class:`SplitArrays`."""

    def prepare(self, root: Path) -> None:
        """Download what is missing under ``root``; runs once per node, before ``load``."""

    def load(self, root: Path) -> dict[str, SplitArrays]:
        """Return ``"train"`` and ``"test"`` splits, and ``"val"`` when the data set has a usable one."""
