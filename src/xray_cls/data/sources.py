"""MNIST, Fashion-MNIST and CIFAR-10 through torchvision's own dataset classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.datasets import VisionDataset

from xray_cls.data.base import SplitArrays
from xray_cls.errors import UserError


class TorchvisionSource:
    """A torchvision dataset class (``MNIST``, ``FashionMNIST``, ``CIFAR10``) read whole into arrays."""

    def __init__(self, dataset: str, download: bool = True) -> None:
        if not hasattr(torchvision.datasets, dataset):
            raise UserError(f"data.source.dataset={dataset!r} is not a torchvision dataset class")
        self.dataset_cls: type[VisionDataset] = getattr(torchvision.datasets, dataset)
        self.download = download
        self._prepared: dict[bool, VisionDataset] = {}
        self._loaded = False

    def prepare(self, root: Path) -> None:
        # Opening a split checks (or downloads) its files and reads them whole: the first load() takes these
        # rather than reading the files a second time. Lightning prepares again before testing, when the
        # splits are loaded already: then nothing is kept.
        opened = {train: self._open(root, train) for train in (True, False)}
        if not self._loaded:
            self._prepared = opened

    def load(self, root: Path) -> dict[str, SplitArrays]:
        prepared, self._prepared, self._loaded = self._prepared, {}, True
        opened = {
            name: prepared.get(train) or self._open(root, train)
            for name, train in (("train", True), ("test", False))
        }
        return {name: _to_arrays(ds) for name, ds in opened.items()}

    def _open(self, root: Path, train: bool) -> VisionDataset:
        try:
            return self.dataset_cls(str(root), train=train, download=False)
        except RuntimeError:
            if not self.download:
                raise UserError(self._missing(root, "and data.source.download=false")) from None
        try:
            return self.dataset_cls(str(root), train=train, download=True)
        except Exception as err:  # torchvision raises RuntimeError, URLError or OSError when offline
            raise UserError(self._missing(root, f"and could not be downloaded ({err})")) from None

    def _missing(self, root: Path, why: str) -> str:
        cls = self.dataset_cls
        if hasattr(cls, "resources"):  # the MNIST family: IDX files, optionally gzipped
            folder = Path(root) / cls.__name__ / "raw"
            files = [Path(url).name for url, _ in cls.resources]
        else:  # CIFAR: pickled batches inside base_folder
            folder = Path(root) / cls.base_folder
            files = [name for name, _ in [*cls.train_list, *cls.test_list]] + [cls.meta["filename"]]
        return (
            f"{cls.__name__} is not in {folder} {why}. Expected files there: {', '.join(files)}. "
            f"Place them by hand (or unpack the official archive into {root}), or set paths.data_dir "
            "to a directory that has them."
        )


def _to_arrays(ds: VisionDataset) -> SplitArrays:
    images = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
    images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)  # -> [N, C, H, W]
    return SplitArrays(np.ascontiguousarray(images, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int64))
