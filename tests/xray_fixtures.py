"""Synthetic data sets in the real on-disk formats, for tests: small, fast and deterministic."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SPLITS = ("train", "val", "test")
CLASSES = ("NORMAL", "PNEUMONIA")


def write_image(path: Path, size: tuple[int, int] = (48, 40), mode: str = "L", seed: int = 0) -> Path:
    """A noisy gradient image of ``size`` (width, height) in ``mode``; the format follows the suffix."""
    rng = np.random.default_rng(seed)
    width, height = size
    ramp = np.linspace(0, 200, width, dtype=np.float32)[None, :] + np.linspace(0, 55, height)[:, None]
    pixels = np.clip(ramp + rng.normal(0, 12, (height, width)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "L")
    if mode != "L":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def write_corrupt_image(path: Path, how: str = "garbage") -> Path:
    """An undecodable file with an image name: ``garbage`` bytes, ``empty``, or a ``truncated`` JPEG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if how == "garbage":
        path.write_bytes(b"this is not an image\n" * 20)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        write_image(path, (64, 64), seed=99)
        path.write_bytes(path.read_bytes()[:200])
    else:
        raise ValueError(how)
    return path


@dataclass
class KaggleTree:
    """What :func:`write_kaggle_tree` wrote, for assertions."""

    root: Path  # the data root: the tree is at root/<folder>
    tree: Path  # the one copy to read
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # readable images per split, class
    patients: dict[str, set[str]] = field(default_factory=dict)  # PNEUMONIA patient ids per split
    corrupt: list[Path] = field(default_factory=list)


def write_kaggle_tree(
    root: Path,
    folder: str = "chest_xray",
    normal: dict[str, int] | None = None,
    patients: dict[str, int] | None = None,
    nested_duplicate: bool = True,
    macosx: bool = True,
    corrupt: bool = True,
) -> KaggleTree:
    """The Kaggle chest X-ray layout under ``root/folder``, as its archive unpacks.

    ``<folder>/{train,val,test}/{NORMAL,PNEUMONIA}`` with NORMAL files ``IM-xxxx-0001.jpeg`` and PNEUMONIA
    files ``person{ID}_{bacteria|virus}_{n}.jpeg``, 1 to 3 per patient, patient ids distinct across splits.
    Images mix L and RGB modes and sizes. Junk as in the real archive: a nested duplicate of the tree at
    ``<folder>/chest_xray``, a ``__MACOSX`` shadow tree of ``._*`` files, ``.DS_Store``, ``._*`` and a
    text file inside class folders, and (``corrupt``) one undecodable PNEUMONIA file in train whose patient
    has no other image.
    """
    normal = normal or {"train": 8, "val": 2, "test": 3}
    patients = patients or {"train": 6, "val": 2, "test": 2}
    tree = Path(root) / folder
    result = KaggleTree(root=Path(root), tree=tree)
    seed, next_id = 0, 1
    for split in SPLITS:
        result.counts[split] = {"NORMAL": normal[split], "PNEUMONIA": 0}
        result.patients[split] = set()
        for _ in range(normal[split]):
            seed += 1
            mode = "RGB" if seed % 3 == 0 else "L"
            write_image(
                tree / split / "NORMAL" / f"IM-{seed:04d}-0001.jpeg",
                (40 + seed % 30, 36 + seed % 20),
                mode,
                seed,
            )
        for _ in range(patients[split]):
            pid = next_id
            next_id += 1
            result.patients[split].add(f"person{pid}")
            for n in range(1 + pid % 3):
                seed += 1
                kind = "bacteria" if (pid + n) % 2 else "virus"
                mode = "RGB" if seed % 3 == 0 else "L"
                name = f"person{pid}_{kind}_{seed}.jpeg"
                write_image(tree / split / "PNEUMONIA" / name, (40 + seed % 30, 36 + seed % 20), mode, seed)
                result.counts[split]["PNEUMONIA"] += 1
        for cls in CLASSES:
            (tree / split / cls / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
            (tree / split / cls / "notes.txt").write_text("not an image")
        (tree / split / "NORMAL" / "._IM-0001-0001.jpeg").write_bytes(b"\0\5\26\7AppleDouble")
    (tree / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    if corrupt:
        result.corrupt.append(write_corrupt_image(tree / "train" / "PNEUMONIA" / "person900_bacteria_1.jpeg"))
    if nested_duplicate:
        shutil.copytree(tree, tree / "chest_xray", ignore=shutil.ignore_patterns("chest_xray"))
    if macosx:
        for path in sorted(tree.glob("*/*/*.jpeg")):
            shadow = tree / "__MACOSX" / folder / path.relative_to(tree)
            shadow.parent.mkdir(parents=True, exist_ok=True)
            shadow.with_name("._" + path.name).write_bytes(b"\0\5\26\7AppleDouble resource fork")
    return result


def write_image_folder(
    base: Path, counts: dict[str, int], mode: str = "L", suffix: str = ".png", seed: int = 0
) -> dict[str, list[Path]]:
    """``base/<class>/img_<i><suffix>`` with ``counts[class]`` images each; returns the files per class."""
    files: dict[str, list[Path]] = {}
    for c, (cls, n) in enumerate(counts.items()):
        files[cls] = [
            write_image(
                base / cls / f"img_{i:03d}{suffix}", (30 + i % 7, 26 + i % 5), mode, seed + 100 * c + i
            )
            for i in range(n)
        ]
    return files


def make_zip(zip_path: Path, base: Path) -> Path:
    """Zip every file under ``base`` with names relative to ``base`` (folders included, as zip tools do)."""
    with zipfile.ZipFile(zip_path, "w") as zf:
        for path in sorted(base.rglob("*")):
            zf.write(path, path.relative_to(base).as_posix())
    return zip_path


def write_pneumoniamnist_npz(
    path: Path, n: int | dict[str, int] = 12, size: int = 28, seed: int = 0
) -> dict[str, np.ndarray]:
    """A MedMNIST-format ``.npz``: ``{split}_images`` (N, size, size) uint8, ``{split}_labels`` (N, 1) uint8.

    ``n`` is the number of images per split (or a dict of them). Returns the arrays written.
    """
    counts = n if isinstance(n, dict) else dict.fromkeys(SPLITS, n)
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        arrays[f"{split}_images"] = rng.integers(0, 256, (counts[split], size, size), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(counts[split]) % 2).astype(np.uint8).reshape(-1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return arrays


def fresh_kaggle_api(monkeypatch: pytest.MonkeyPatch, home: Path, **env: str) -> type:
    """Import the kaggle package anew under an empty ``home`` with only the KAGGLE_* variables in ``env``.

    kaggle reads its config folder when imported, so the import is redone here (monkeypatch restores the
    previous one afterwards). Returns the ``KaggleApi`` class that the code under test will use.
    """
    home.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    for name in [n for n in os.environ if n.startswith("KAGGLE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in [n for n in sys.modules if n == "kaggle" or n.startswith("kaggle.")]:
        monkeypatch.delitem(sys.modules, name)
    with contextlib.redirect_stdout(io.StringIO()):  # its import-time login attempt prints help
        from kaggle.api.kaggle_api_extended import KaggleApi

    return KaggleApi


def fake_kaggle_download(monkeypatch: pytest.MonkeyPatch, home: Path, archive: Path) -> list[str]:
    """Kaggle with (fake) legacy credentials whose download writes ``archive``: the network boundary only.

    Returns the list that collects the slugs requested.
    """
    api = fresh_kaggle_api(monkeypatch, home, KAGGLE_USERNAME="someone", KAGGLE_KEY="0123456789abcdef")
    calls: list[str] = []

    def dataset_download_files(self, dataset, path=None, force=False, quiet=True, unzip=False, licenses=()):
        calls.append(dataset)
        shutil.copyfile(archive, Path(path, dataset.split("/")[-1] + ".zip"))

    monkeypatch.setattr(api, "dataset_download_files", dataset_download_files)
    return calls
