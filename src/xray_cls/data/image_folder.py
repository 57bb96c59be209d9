"""Any class-per-folder image data set on disk, with or without its own train/val/test folders."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from xray_cls.data.base import SplitArrays
from xray_cls.data.folders import scan_class_folders, subfolders
from xray_cls.data.image_cache import load_or_build_cache
from xray_cls.data.splits import grouped_stratified_split
from xray_cls.errors import UserError


def _existing(path: str | Path) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(
            f"Image folder {folder} does not exist. Set data.source.path to a folder holding one folder per "
            "class, or train/ (and optionally val/ and test/) folders that each hold one folder per class."
        )
    return folder


def class_folders(path: str) -> list[str]:
    """Sorted class folder names under ``path/train``, or under ``path`` when it has no ``train``."""
    folder = _existing(path)
    base = folder / "train" if (folder / "train").is_dir() else folder
    names = subfolders(base)
    if not names:
        raise UserError(f"{base} holds no class folders: put each class's images in a folder named after it.")
    return names


class ImageFolderSource:
    """Images in ``path/train/<class>/`` (with optional ``val/`` and ``test/``), or in ``path/<class>/``.

    Without a ``test`` folder, a seeded stratified ``test_fraction`` of the training images becomes the
    test split. Every image is its own group. Decoded images are cached under ``<root>/cache``.
    """

    def __init__(
        self,
        path: str,
        image_size: int,
        num_channels: int,
        class_names: Sequence[str],
        test_fraction: float = 0.2,
        seed: int = 0,
        workers: int | None = None,
    ) -> None:
        if not 0.0 < test_fraction < 1.0:
            raise UserError(f"data.source.test_fraction must be between 0 and 1, got {test_fraction}")
        self.path = path
        self.image_size = image_size
        self.num_channels = num_channels
        self.class_names = [str(name) for name in class_names]
        self.test_fraction = test_fraction
        self.seed = seed
        self.workers = workers

    def prepare(self, root: Path) -> None:
        _existing(self.path)  # nothing to download: only say early when the folder is missing
        self.load(root)  # decode into the cache once per node (under DDP only local rank 0 prepares)

    def load(self, root: Path) -> dict[str, SplitArrays]:
        folder = _existing(self.path)
        scanned: dict[str, tuple[list[Path], np.ndarray]] = {}
        if (folder / "train").is_dir():
            for split in ("train", "val", "test"):
                if (folder / split).is_dir():
                    scanned[split] = scan_class_folders(folder / split, self.class_names)
        else:
            scanned["train"] = scan_class_folders(folder, self.class_names)
        if "test" not in scanned:
            files, labels = scanned["train"]
            train_idx, test_idx = grouped_stratified_split(labels, None, self.test_fraction, self.seed)
            scanned["train"] = ([files[i] for i in train_idx], labels[train_idx])
            scanned["test"] = ([files[i] for i in test_idx], labels[test_idx])

        cache_dir = Path(root) / "cache"
        splits = {}
        for split, (files, labels) in scanned.items():
            images, kept = load_or_build_cache(
                files, folder, self.image_size, self.num_channels, cache_dir, self.workers
            )
            splits[split] = SplitArrays(images, labels[kept])
        return splits
