"""Writers of tiny data sets in the real on-disk formats, so the real torchvision loaders read them."""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np


def _images(n: int, size: int, channels: int, labels: np.ndarray, seed: int) -> np.ndarray:
    """Learnable images: each class brightens its own horizontal band, plus noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(n, size, size, channels), dtype=np.uint8)
    classes = int(labels.max()) + 1
    band = max(1, size // classes)
    for i, label in enumerate(labels):
        images[i, label * band % size : label * band % size + band] = 230
    return images


def write_idx(
    root: Path, dataset: str = "MNIST", n_train: int = 300, n_test: int = 100, seed: int = 0
) -> None:
    """MNIST-family IDX files (uncompressed) under ``root/<dataset>/raw``, as torchvision expects."""
    raw = root / dataset / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n, dtype=np.uint8) % 10
        images = _images(n, 28, 1, labels, seed + n)[..., 0]
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())


def write_cifar10(root: Path, n_per_batch: int = 60, n_test: int = 100, seed: int = 0) -> dict[str, str]:
    """CIFAR-10 pickled batches under ``root/cifar-10-batches-py``; returns each file's MD5, which
    torchvision verifies (tests point its checksum table at these files)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    files = {f"data_batch_{i}": n_per_batch for i in range(1, 6)} | {"test_batch": n_test}
    for i, (name, n) in enumerate(files.items()):
        labels = np.arange(n) % 10
        data = _images(n, 32, 3, labels, seed + i).transpose(0, 3, 1, 2).reshape(n, -1)
        _pickle(folder / name, {"data": data, "labels": labels.tolist()})
    _pickle(folder / "batches.meta", {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                                      "frog", "horse", "ship", "truck"]})  # fmt: skip
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def _pickle(path: Path, obj: dict) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f)


def patients(num_groups: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Imbalanced labels (3 classes) over patients with 1-5 images each, as strings like real ids."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 6, num_groups)
    group_labels = rng.choice(3, num_groups, p=[0.6, 0.3, 0.1])
    groups = np.repeat([f"person{i}" for i in range(num_groups)], sizes)
    labels = np.repeat(group_labels, sizes)
    order = rng.permutation(len(labels))  # samples of a patient need not be adjacent
    return labels[order], groups[order]
