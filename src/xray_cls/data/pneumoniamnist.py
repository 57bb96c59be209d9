"""MedMNIST v2 PneumoniaMNIST: the chest X-ray set pre-resized to 28-224 px, with its own val split."""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from torchvision.datasets.utils import download_url

from xray_cls.data.base import SplitArrays
from xray_cls.errors import UserError

# From medmnist 3.0.2, medmnist/info.py INFO["pneumoniamnist"] (Zenodo record 10519652, MedMNIST+).
_RECORD = "https://zenodo.org/records/10519652/files"
_MD5 = {
    28: "28209eda62fecd6e6a2d98b1501bb15f",
    64: "8f4eceb4ccffa70c672198ea285246c6",
    128: "05b46931834c231683c68f40c47b2971",
    224: "d6a3c71de1b945ea11211b03746c1fe1",
}


class PneumoniaMNISTSource:
    """A MedMNIST ``.npz`` of train/val/test images (N, H, W) uint8 and labels.

    Found as ``<root>/medmnist/pneumoniamnist[_{size}].npz`` (where it is downloaded to) or
    ``<root>/pneumoniamnist[_{size}].npz`` (the ``medmnist`` package's own layout, e.g. ``~/.medmnist``);
    ``file`` names one file instead (the data set embedded in this package), which is never downloaded.
    """

    def __init__(self, size: int = 28, download: bool = True, file: str | None = None) -> None:
        if size not in _MD5 and file is None:
            raise UserError(f"PneumoniaMNIST comes in sizes {sorted(_MD5)}, not data.image_size={size}")
        self.size = size
        self.download = download
        self.file = None if file is None else Path(file)
        self.filename = "pneumoniamnist.npz" if size == 28 else f"pneumoniamnist_{size}.npz"
        self.url = f"{_RECORD}/{self.filename}?download=1"

    def path(self, root: Path) -> Path:
        """The file to read: the first place that has it, else where a download goes."""
        if self.file is not None:
            return self.file
        places = [Path(root) / "medmnist" / self.filename, Path(root) / self.filename]
        return next((place for place in places if place.is_file()), places[0])

    def prepare(self, root: Path) -> None:
        path = self.path(root)
        if path.is_file():
            return
        if self.file is not None:
            raise UserError(self._missing(path, ""))
        if not self.download:
            raise UserError(self._missing(path, "and data.source.download=false"))
        path.parent.mkdir(parents=True, exist_ok=True)
        # Download next to the target and rename when the MD5 matches: never a half file in its place.
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.filename}.download-", dir=path.parent))
        try:
            download_url(self.url, str(tmp), self.filename, _MD5[self.size])
            os.replace(tmp / self.filename, path)
        except Exception as err:  # URLError, HTTPError, OSError, RuntimeError on an MD5 mismatch
            raise UserError(self._missing(path, f"and could not be downloaded ({err})")) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def load(self, root: Path) -> dict[str, SplitArrays]:
        path = self.path(root)
        if not path.is_file():
            raise UserError(self._missing(path, "(run with data.source.download=true to fetch it)"))
        try:
            with np.load(path) as npz:
                return {split: _split(npz, split) for split in ("train", "val", "test")}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            fix = "put an intact copy in its place" if self.file else "delete it and run again to download it"
            raise UserError(f"{path} is damaged ({err}): {fix}.") from None

    def _missing(self, path: Path, why: str) -> str:
        if self.file is not None:
            return f"data.source.file={self.file} does not exist: give the path of a MedMNIST .npz file"
        return (
            f"PneumoniaMNIST ({self.size} px) is not at {path} {why}. Download {self.url} "
            f"(MD5 {_MD5[self.size]}) and save it as {path} (or in paths.data_dir, as medmnist does)."
        )


def _split(npz: np.lib.npyio.NpzFile, split: str) -> SplitArrays:
    images = npz[f"{split}_images"]
    # MedMNIST stores grey sets as (N, H, W) and colour ones as (N, H, W, 3).
    images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    labels = npz[f"{split}_labels"].reshape(-1).astype(np.int64)
    return SplitArrays(np.ascontiguousarray(images, dtype=np.uint8), labels)
