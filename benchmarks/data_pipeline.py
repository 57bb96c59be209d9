"""Loader throughput alone, images/second for one training epoch of each data set: the classic per-item
torchvision pipeline (PIL image -> tensor in DataLoader workers), xray_cls's per-item path
(``data.on_device=false``) and its device-resident fast path (``data.on_device=true``), augmentation included.

    python -m benchmarks.data_pipeline [--repeat 3] [--out benchmarks/results/data_pipeline.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from benchmarks.common import machine_info, median, print_table, write_json_atomic
from tests.formats import write_idx
from xray_cls.config import config_dir
from xray_cls.data.base import SplitArrays

REPO = Path(__file__).resolve().parents[1]
# The real data sets' shapes: (train images, channels, size).
SHAPES = {"mnist": (60_000, 1, 28), "fashion_mnist": (60_000, 1, 28), "cifar10": (50_000, 3, 32),
          "pneumoniamnist": (4_708, 1, 28)}  # fmt: skip


class SyntheticSource:
    """Random uint8 splits of a data set's real shape (loader speed does not depend on the pixels)."""

    def __init__(self, n: int, channels: int, size: int, classes: int) -> None:
        rng = np.random.default_rng(0)
        self.train = SplitArrays(
            rng.integers(0, 256, (n, channels, size, size), dtype=np.uint8), rng.integers(0, classes, n)
        )

    def prepare(self, root: Path) -> None:
        pass

    def load(self, root: Path) -> dict[str, SplitArrays]:
        return {"train": self.train, "test": self.train}


def loader_epoch(datamodule) -> float:
    """Seconds for one pass over the training loader, with the batch-level steps a training step sees."""
    loader = datamodule.train_dataloader()
    start = time.perf_counter()
    for images, _labels in loader:
        images = images.float().div_(255)
        if datamodule.batch_augment is not None:
            images = datamodule.batch_augment(images)
    return time.perf_counter() - start


def classic_mnist_epoch(root: Path, batch_size: int) -> float:
    dataset = torchvision.datasets.MNIST(
        str(root), train=True, transform=v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    )
    start = time.perf_counter()
    for _ in DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=2):
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "data_pipeline.json")
    args = parser.parse_args()
    rows = []
    for name, (n, channels, size) in SHAPES.items():
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose("train", overrides=[f"data={name}", "paths.output_dir=/tmp/unused"])
        source = SyntheticSource(n, channels, size, len(cfg.data.class_names))
        row = {"data": name, "images": int(n * (1 - cfg.data.val_fraction))}
        for label, on_device in (("per_item_img_s", False), ("device_img_s", True)):
            datamodule = instantiate(cfg.data, source=source, on_device=on_device)
            datamodule.setup("fit")
            seconds = median([loader_epoch(datamodule) for _ in range(args.repeat)])
            row[label] = row["images"] / seconds
        row["speedup"] = row["device_img_s"] / row["per_item_img_s"]
        rows.append(row)
        print_table([row])
    root = Path(tempfile.mkdtemp(prefix="xray_cls_pipeline_"))
    write_idx(root, "MNIST", n_train=60_000, n_test=100)
    classic = 60_000 / median([classic_mnist_epoch(root, 128) for _ in range(args.repeat)])
    print_table(rows)
    print(f"classic torchvision MNIST per-item pipeline (PIL -> tensor, 2 workers): {classic:.0f} images/s")
    write_json_atomic(
        args.out, {"loaders": rows, "classic_torchvision_mnist_img_s": classic, "machine": machine_info()}
    )


if __name__ == "__main__":
    main()
