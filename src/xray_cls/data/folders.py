"""Reading class-per-folder image trees, as unpacked from archives made on any system."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from xray_cls.errors import UserError

# torchvision's ImageFolder extensions (torchvision.datasets.folder.IMG_EXTENSIONS), written out: the
# class_folders resolver reads folders while the config is composed, before torch is imported.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# macOS zips carry a __MACOSX/ shadow tree of "._name" resource forks: never images.
_JUNK_DIRS = {"__MACOSX"}
# Kaggle names: person{ID}_{bacteria|virus}_{n} (PNEUMONIA) and (NORMAL2-)IM-{study}-{n}[-{m}] (NORMAL), where
# the files of one study (IM-0629-0001.jpeg, IM-0629-0001-0001.jpeg, ...) are X-rays of the same child.
_PATIENT = re.compile(r"^(person\d+)_(?:bacteria|virus)_\d+|^((?:normal2-)?im-\d+)-\d+", re.IGNORECASE)


def _visible(name: str) -> bool:
    return not name.startswith(".") and name not in _JUNK_DIRS  # also drops "._*" and .DS_Store


def is_image_file(path: Path) -> bool:
    """Whether ``path`` names an image to load: a visible file with an image extension."""
    return _visible(path.name) and path.suffix.lower() in IMG_EXTENSIONS


def list_images(folder: Path) -> list[Path]:
    """All image files under ``folder``, recursively, sorted; junk folders and hidden files skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if _visible(d)]
        found += [Path(dirpath, f) for f in filenames if is_image_file(Path(f))]
    return sorted(found)


def subfolders(folder: Path) -> list[str]:
    """Sorted names of the visible folders directly inside ``folder``."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and _visible(e.name))


def find_split_root(base: Path, splits: Sequence[str] = ("train", "test"), max_depth: int = 4) -> Path | None:
    """The shallowest folder under ``base`` (itself included) that holds all of ``splits`` as folders.

    Archives often hold the tree twice (the Kaggle chest X-ray zip nests a full duplicate under
    ``chest_xray/chest_xray``): taking the shallowest copy reads it once. ``None`` when there is none.
    """
    level = [Path(base)] if Path(base).is_dir() else []
    for _ in range(max_depth + 1):
        for folder in level:
            if all((folder / s).is_dir() for s in splits):
                return folder
        level = [folder / name for folder in level for name in subfolders(folder)]
    return None


def scan_class_folders(split_dir: Path, class_names: Sequence[str]) -> tuple[list[Path], np.ndarray]:
    """Image files of ``split_dir/<class>/`` for each class in order, and their int64 class indices."""
    files: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(class_names):
        folder = Path(split_dir) / name
        if not folder.is_dir():
            present = ", ".join(subfolders(split_dir)) if Path(split_dir).is_dir() else "none, it is missing"
            raise UserError(
                f"Class folder {folder} does not exist (folders in {split_dir}: {present}). "
                "Check class_names against the folder names, or fix the data set layout."
            )
        images = list_images(folder)
        if not images:
            raise UserError(
                f"Class folder {folder} holds no images (looked for {', '.join(IMG_EXTENSIONS)}). "
                "The data set is incomplete: unpack it again."
            )
        files += images
        labels += [index] * len(images)
    return files, np.asarray(labels, dtype=np.int64)


def patient_id(path: Path, split_dir: Path) -> str:
    """The patient a chest X-ray file belongs to, for grouping.

    ``person{ID}_{bacteria|virus}_{n}.jpeg`` gives ``person{ID}``; ``IM-{study}-{n}[-{m}].jpeg`` (NORMAL)
    gives ``im-{study}``, ``NORMAL2-IM-...`` ``normal2-im-{study}``. Any other name is its own group, named by
    its path relative to ``split_dir``.
    """
    match = _PATIENT.match(Path(path).name)
    if match is None:
        return Path(path).relative_to(split_dir).as_posix()
    return (match.group(1) or match.group(2)).lower()
