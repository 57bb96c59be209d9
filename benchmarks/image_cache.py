"""Per-epoch throughput: decoding JPEGs every epoch (torchvision ImageFolder) vs the decoded-image cache.

    python -m benchmarks.image_cache [--images 1000] [--out benchmarks/results/image_cache.json]

The synthetic tree (chest X-ray sized JPEGs, about 1,500 x 1,200 px and 200-300 KiB each) is written
once to a temporary folder and reused by later runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets, transforms
from torchvision.transforms import v2

from benchmarks.common import median, peak_rss_mib, print_table, timed, write_json_atomic
from xray_cls.data.folders import scan_class_folders
from xray_cls.data.image_cache import load_or_build_cache

CLASSES = ("NORMAL", "PNEUMONIA")


def _write_jpeg(args: tuple[Path, int]) -> int:
    path, seed = args
    rng = np.random.default_rng(seed)
    width, height = 1500 + int(rng.integers(-150, 150)), 1200 + int(rng.integers(-120, 120))
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    # Smooth anatomy-like blobs, a gradient, and sensor noise: JPEG sizes like real X-rays.
    low = Image.fromarray(rng.integers(0, 256, (height // 50 + 1, width // 50 + 1), dtype=np.uint8))
    blobs = np.asarray(low.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    pixels = 60 + 120 * y + 40 * np.sin(6 * x) + 0.4 * blobs + rng.normal(0, 2.5, (height, width))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
    return path.stat().st_size


def synthetic_tree(base: Path, images: int) -> Path:
    """``base/{NORMAL,PNEUMONIA}/*.jpeg``, ``images`` in all; existing files are kept."""
    todo = []
    for i in range(images):
        path = base / CLASSES[i % 2] / f"img_{i:05d}.jpeg"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            todo.append((path, i))
    if todo:
        print(f"Writing {len(todo)} synthetic JPEGs to {base} (once) ...", flush=True)
        with ProcessPoolExecutor() as pool:
            list(pool.map(_write_jpeg, todo, chunksize=16))
    return base


class CachedImages(Dataset):
    """Rows of the memory-mapped cache, augmented per item as tensors."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, image_size: int) -> None:
        self.images, self.labels = images, labels
        self.augment = v2.Compose(
            [v2.RandomResizedCrop(image_size, scale=(0.8, 1.0), antialias=True), v2.RandomHorizontalFlip()]
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(np.array(self.images[index]))  # copy: the memmap is read-only
        return self.augment(image).float().div_(255), int(self.labels[index])


def epoch(loader: DataLoader) -> int:
    seen = 0
    for images, _ in loader:
        seen += len(images)
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per pipeline; the median is kept")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--loader-workers", type=int, default=2)
    parser.add_argument("--tree", type=Path, default=None, help="where the synthetic JPEGs live")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/image_cache.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # the loader workers are the parallelism being measured

    tree = synthetic_tree(
        args.tree or Path(tempfile.gettempdir()) / f"xray_cls_bench_{args.images}", args.images
    )
    files, labels = scan_class_folders(tree, CLASSES)
    jpeg_kib = float(np.mean([f.stat().st_size for f in files]) / 1024)
    # Persistent workers, as in training: the median epoch then measures data loading, not worker startup.
    loader_args = {
        "batch_size": args.batch_size,
        "shuffle": True,
        "num_workers": args.loader_workers,
        "persistent_workers": args.loader_workers > 0,
    }

    naive = datasets.ImageFolder(
        str(tree),
        transforms.Compose(
            [
                transforms.Grayscale(),
                transforms.Resize(args.image_size),
                transforms.CenterCrop(args.image_size),
                transforms.ToTensor(),
            ]
        ),
    )
    naive_loader = DataLoader(naive, **loader_args)
    print(f"Naive: {args.epochs} epochs of {len(naive)} images ...", flush=True)
    naive_s = timed(lambda: epoch(naive_loader), args.epochs)

    with tempfile.TemporaryDirectory() as cache_dir:
        print("Cached: building the cache ...", flush=True)
        (build_s,) = timed(lambda: load_or_build_cache(files, tree, args.image_size, 1, Path(cache_dir)), 1)
        images, kept = load_or_build_cache(files, tree, args.image_size, 1, Path(cache_dir))
        cached_loader = DataLoader(CachedImages(images, labels[kept], args.image_size), **loader_args)
        print(f"Cached: {args.epochs} epochs ...", flush=True)
        cached_s = timed(lambda: epoch(cached_loader), args.epochs)
        cache_mib = images.nbytes / 2**20

    n = len(files)
    result = {
        "images": n,
        "image_size": args.image_size,
        "mean_jpeg_kib": round(jpeg_kib, 1),
        "batch_size": args.batch_size,
        "loader_workers": args.loader_workers,
        "epochs_timed": args.epochs,
        "naive_epoch_s": median(naive_s),
        "naive_images_per_s": n / median(naive_s),
        "cached_epoch_s": median(cached_s),
        "cached_images_per_s": n / median(cached_s),
        "speedup": median(naive_s) / median(cached_s),
        "cache_build_s": build_s,
        "cache_build_images_per_s": n / build_s,
        "cache_mib": round(cache_mib, 1),
        "peak_rss_mib": peak_rss_mib(),
        "machine": {
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "pillow": Image.__version__,
        },
    }
    print_table(
        [
            {"pipeline": "naive (ImageFolder)", "epoch s": median(naive_s), "images/s": n / median(naive_s)},
            {"pipeline": "cached (memmap)", "epoch s": median(cached_s), "images/s": n / median(cached_s)},
            {"pipeline": "cache build (once)", "epoch s": build_s, "images/s": n / build_s},
        ]
    )
    rss = result["peak_rss_mib"]
    print(f"speedup per epoch: {result['speedup']:.1f}x")
    print(f"peak RSS: {rss['self']:.0f} MiB, largest child {rss['children']:.0f} MiB")
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
