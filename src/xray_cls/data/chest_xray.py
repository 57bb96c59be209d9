"""The Kaggle chest X-ray pneumonia data set (Kermany et al.): paediatric X-rays, NORMAL vs PNEUMONIA."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from xray_cls.data.base import SplitArrays
from xray_cls.data.folders import find_split_root, patient_id, scan_class_folders
from xray_cls.data.image_cache import load_or_build_cache
from xray_cls.data.kaggle import download_kaggle_dataset
from xray_cls.errors import UserError


class ChestXraySource:
    """Class-per-folder JPEGs with official ``train``/``val``/``test`` splits, from Kaggle.

    Groups are patient ids (``person{ID}`` from the PNEUMONIA file names) so that a validation split
    carved from train never shares a patient with it. The official ``val`` split holds only 16 images,
    so it is returned only when ``use_official_val`` is set.
    """

    def __init__(
        self,
        image_size: int = 224,
        num_channels: int = 1,
        class_names: Sequence[str] = ("NORMAL", "PNEUMONIA"),
        dataset: str = "paultimothymooney/chest-xray-pneumonia",
        folder: str = "chest_xray",
        use_official_val: bool = False,
        download: bool = True,
        workers: int | None = None,
    ) -> None:
        self.image_size = image_size
        self.num_channels = num_channels
        self.class_names = [str(name) for name in class_names]
        self.dataset = dataset
        self.folder = folder
        self.use_official_val = use_official_val
        self.download = download
        self.workers = workers

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", "val", "test") if self.use_official_val else ("train", "test")

    def prepare(self, root: Path) -> None:
        dest = Path(root) / self.folder
        if find_split_root(dest, self.splits) is None:
            self._download(dest)
        # Decode into the cache here, once per node: under DDP only local rank 0 runs prepare_data.
        self.load(root)

    def _download(self, dest: Path) -> None:
        if not self.download:
            raise UserError(
                f"The chest X-ray data set is not in {dest} and data.source.download=false. "
                + self._manual_hint(dest)
            )
        download_kaggle_dataset(self.dataset, dest, self._manual_hint(dest))

    def load(self, root: Path) -> dict[str, SplitArrays]:
        root = Path(root)
        dest = root / self.folder
        tree = find_split_root(dest, self.splits)
        if tree is None:
            raise UserError(
                f"No chest X-ray tree with {', '.join(self.splits)} folders under {dest}. "
                + self._manual_hint(dest)
            )
        return {split: self._load_split(root, tree / split) for split in self.splits}

    def _load_split(self, root: Path, split_dir: Path) -> SplitArrays:
        files, labels = scan_class_folders(split_dir, self.class_names)
        groups = np.asarray([patient_id(f, split_dir) for f in files])
        images, kept = load_or_build_cache(
            files, root, self.image_size, self.num_channels, root / "cache", self.workers
        )
        return SplitArrays(images, labels[kept], groups[kept])

    def _manual_hint(self, dest: Path) -> str:
        return (
            f"To place it by hand, download the archive from https://www.kaggle.com/datasets/{self.dataset} "
            f"and unzip it into {dest}, so that train/ and test/ folders with "
            f"{'/'.join(self.class_names)} inside appear under it."
        )
