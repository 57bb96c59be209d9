"""One LightningDataModule for every data set: a source gives uint8 arrays, this class splits, balances,
augments and batches them."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from xray_cls.data.base import DataSource, SplitArrays
from xray_cls.data.device_batches import DeviceBatches
from xray_cls.data.splits import (
    check_carved_split,
    grouped_stratified_kfold,
    grouped_stratified_split,
    training_pool,
)
from xray_cls.data.transforms import batch_augmentation, item_augmentation
from xray_cls.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class SplitView:
    """The samples ``index`` of a split, without copying its (possibly memory-mapped) images."""

    split: SplitArrays
    index: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        return self.split.labels[self.index]

    @property
    def groups(self) -> np.ndarray | None:
        return None if self.split.groups is None else self.split.groups[self.index]

    @property
    def nbytes(self) -> int:
        return len(self.index) * self.split.images[0].nbytes

    def __len__(self) -> int:
        return len(self.index)


class ArrayDataset(Dataset):
    """Items of a uint8 ``[N, C, H, W]`` array (in memory or memory-mapped), optionally augmented."""

    def __init__(self, view: SplitView, transform: Any = None) -> None:
        self.view, self.transform = view, transform

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = self.view.index[i]
        image = torch.from_numpy(np.array(self.view.split.images[j]))
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.view.split.labels[j])


class ClassificationDataModule(L.LightningDataModule):
    def __init__(
        self,
        source: DataSource,
        root: str,
        class_names: Sequence[str],
        num_channels: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: Mapping[str, Any],
        val_fraction: float = 0.1,
        balance: str = "none",
        batch_size: int = 128,
        num_workers: int = 2,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        on_device: bool | str = "auto",
        on_device_max_bytes: int = 2_000_000_000,
        seed: int = 0,
        positive_class: str | None = None,
        card: Mapping[str, Any] | None = None,
        folds: int | None = None,
        fold: int | None = None,
    ) -> None:
        super().__init__()
        if (folds is None) != (fold is None):
            raise UserError(f"data.folds={folds} and data.fold={fold}: set both (k-fold) or neither")
        self.source, self.root = source, Path(root)
        self.class_names = list(class_names)
        self.positive_class = positive_class
        # What the report's model card says about the data (data.card: source, population, limitations).
        self.card = dict(card or {})
        self.num_channels, self.image_size = num_channels, image_size
        self.mean, self.std = list(mean), list(std)
        self.augment = dict(augment)
        self.val_fraction, self.balance, self.seed = val_fraction, balance, seed
        # k-fold cross-validation (cv=kfold): validation is fold `fold` of `folds` of the training pool.
        self.folds, self.fold = folds, fold
        self.batch_size, self.num_workers = batch_size, num_workers
        self.pin_memory, self.persistent_workers = pin_memory, persistent_workers
        self.on_device, self.on_device_max_bytes = on_device, on_device_max_bytes
        self.splits: dict[str, SplitView] = {}
        self.batch_augment: torch.nn.Module | None = None
        self._train_batches: DeviceBatches | None = None
        self._train_position: dict[str, int] | None = None

    # -- data ---------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        self.source.prepare(self.root)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        loaded = {name: self._conform(split) for name, split in self.source.load(self.root).items()}
        splits = {name: SplitView(split, np.arange(len(split))) for name, split in loaded.items()}
        if self.folds is not None:
            # The fold replaces val_fraction's split and the data set's own val split, which joins the pool.
            pool = training_pool(loaded)
            try:
                train_idx, val_idx = grouped_stratified_kfold(
                    pool.labels, pool.groups, self.folds, self.fold, self.seed
                )
            except ValueError as err:
                raise UserError(f"data.folds={self.folds}, data.fold={self.fold}: {err}") from err
            splits["train"], splits["val"] = SplitView(pool, train_idx), SplitView(pool, val_idx)
        elif "val" not in splits:
            train = loaded["train"]
            train_idx, val_idx = grouped_stratified_split(
                train.labels, train.groups, self.val_fraction, self.seed
            )
            check_carved_split(train.labels, train_idx, val_idx, self.class_names, self.val_fraction)
            splits["train"], splits["val"] = SplitView(train, train_idx), SplitView(train, val_idx)
        for name, split in splits.items():
            bad = set(np.unique(split.labels).tolist()) - set(range(len(self.class_names)))
            if bad:
                raise UserError(
                    f"the {name} split has labels {sorted(bad)} but data.class_names lists "
                    f"{len(self.class_names)} classes: {self.class_names}"
                )
        self.splits = splits
        log.info("splits: %s", {name: len(split) for name, split in splits.items()})

    def _conform(self, split: SplitArrays) -> SplitArrays:
        """Bring images to the configured channel count and size once, not every epoch."""
        images = split.images
        channels, size = images.shape[1], images.shape[2:]
        if channels == self.num_channels and tuple(size) == (self.image_size, self.image_size):
            return split
        tensor = torch.from_numpy(np.asarray(images))
        if channels != self.num_channels:
            if self.num_channels == 3 and channels == 1:
                tensor = tensor.expand(-1, 3, -1, -1)
            elif self.num_channels == 1:
                tensor = tensor.float().mean(1, keepdim=True).round().to(torch.uint8)
            else:
                raise UserError(
                    f"cannot turn {channels}-channel images into data.num_channels={self.num_channels}"
                )
        if tuple(size) != (self.image_size, self.image_size):
            out = [
                F.interpolate(chunk.float(), size=(self.image_size,) * 2, mode="bilinear", antialias=True)
                .round()
                .clamp(0, 255)
                .to(torch.uint8)
                for chunk in tensor.split(4096)
            ]
            tensor = torch.cat(out)
        return SplitArrays(tensor.contiguous().numpy(), split.labels, split.groups)

    @property
    def class_weights(self) -> torch.Tensor | None:
        """Inverse-frequency class weights for the loss when ``balance=loss_weights``."""
        if self.balance != "loss_weights":
            return None
        counts = np.bincount(self.splits["train"].labels, minlength=len(self.class_names)).astype(np.float64)
        return torch.tensor(counts.sum() / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32)

    def _sample_weights(self) -> torch.Tensor | None:
        if self.balance != "sampler":
            return None
        labels = self.splits["train"].labels
        counts = np.bincount(labels, minlength=len(self.class_names))
        return torch.from_numpy(1.0 / np.maximum(counts, 1)[labels])

    # -- loaders ------------------------------------------------------------------------------------------
    def uses_device_batches(self) -> bool:
        if self.on_device == "auto":
            return self.splits["train"].nbytes <= self.on_device_max_bytes
        return bool(self.on_device)

    def train_dataloader(self) -> DataLoader | DeviceBatches:
        self.batch_augment = None
        if self.uses_device_batches():
            self.batch_augment = batch_augmentation(self.augment, self.image_size)
            self._train_batches = self._device_batches("train", shuffle=True)
            if self._train_position is not None:
                self._train_batches.load_state_dict(self._train_position)
            return self._train_batches
        weights = self._sample_weights()
        sampler = None
        if weights is not None:
            generator = torch.Generator().manual_seed(self.seed)
            sampler = WeightedRandomSampler(weights, len(weights), replacement=True, generator=generator)
        dataset = ArrayDataset(self.splits["train"], item_augmentation(self.augment, self.image_size))
        return self._loader(dataset, shuffle=sampler is None, sampler=sampler, drop_last=False)

    def val_dataloader(self) -> DataLoader | DeviceBatches:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader | DeviceBatches:
        return self._eval_loader("test")

    def _eval_loader(self, name: str) -> DataLoader | DeviceBatches:
        if self.uses_device_batches():
            return self._device_batches(name, shuffle=False)
        return self._loader(ArrayDataset(self.splits[name]), shuffle=False)

    def _device_batches(self, name: str, shuffle: bool) -> DeviceBatches:
        view = self.splits[name]
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer else torch.device("cpu")
        return DeviceBatches(
            torch.from_numpy(np.asarray(view.split.images[view.index])).to(device),
            torch.from_numpy(view.labels).to(device),
            self.batch_size,
            shuffle=shuffle,
            seed=self.seed,
            sample_weights=self._sample_weights() if shuffle else None,
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
            progress=(
                lambda: (trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.completed)
            )
            if trainer and shuffle
            else None,
        )

    def _loader(self, dataset: Dataset, shuffle: bool, **kwargs: Any) -> DataLoader:
        pin = torch.cuda.is_available() if self.pin_memory is None else self.pin_memory
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=pin,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            **kwargs,
        )

    # Where training stands in the epoch travels in checkpoints through the data module's own state, which
    # Lightning restores before it first asks for a loader (the loader's state comes too late when a
    # step-wise LR schedule has already asked for the loader's length).
    def state_dict(self) -> dict[str, Any]:
        return {"train_position": self._train_batches.state_dict()} if self._train_batches else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._train_position = state.get("train_position")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """uint8 -> float in [0, 1] on the device (a quarter of the transfer), plus batch augmentation."""
        images, labels = batch
        images = images.float().div_(255)
        if self.batch_augment is not None and self.trainer is not None and self.trainer.training:
            images = self.batch_augment(images)
        return images, labels
