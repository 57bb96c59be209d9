"""Time and peak memory of a full short run (one epoch of training, validation and test with simple_cnn) for
each data set, each in a fresh process, on synthetic data written in each data set's real format and size.

    python -m benchmarks.end_to_end [--epochs 1] [--out benchmarks/results/end_to_end.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine_info, print_table, write_json_atomic

REPO = Path(__file__).resolve().parents[1]
DATASETS = ["mnist", "fashion_mnist", "cifar10", "pneumoniamnist", "chest_xray"]


def write_data(root: Path) -> None:
    from tests.formats import write_cifar10, write_idx
    from tests.xray_fixtures import write_kaggle_tree, write_pneumoniamnist_npz

    write_idx(root, "MNIST", n_train=60_000, n_test=10_000)
    write_idx(root, "FashionMNIST", n_train=60_000, n_test=10_000, seed=1)
    md5 = write_cifar10(root, n_per_batch=10_000, n_test=10_000)
    (root / "cifar_md5.json").write_text(json.dumps(md5))
    write_pneumoniamnist_npz(
        root / "medmnist" / "pneumoniamnist.npz", n={"train": 4708, "val": 524, "test": 624}
    )
    write_kaggle_tree(
        root, normal={"train": 120, "val": 8, "test": 40}, patients={"train": 150, "val": 4, "test": 60}
    )


def child(name: str, root: Path, out: Path, epochs: int) -> None:
    """One run in this process; prints its wall time and peak memory as JSON."""
    from hydra import compose, initialize_config_dir
    from torchvision.datasets import CIFAR10

    from xray_cls.config import config_dir
    from xray_cls.train import train

    md5 = json.loads((root / "cifar_md5.json").read_text())  # synthetic batches: point the checksums at them
    CIFAR10.train_list = [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)]
    CIFAR10.test_list = [["test_batch", md5["test_batch"]]]
    CIFAR10.meta = {**CIFAR10.meta, "md5": md5["batches.meta"]}
    overrides = [
        f"data={name}", "model=simple_cnn", f"paths.data_dir={root}", f"paths.output_dir={out}",
        f"trainer.max_epochs={epochs}", "callbacks.progress_bar.refresh_rate=0", "data.source.download=false",
    ]  # fmt: skip
    start = time.perf_counter()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        metrics = train(compose("train", overrides=overrides))
    print(
        json.dumps(
            {
                "run_s": time.perf_counter() - start,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "test_acc": metrics.get("test/acc"),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "end_to_end.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.root, args.out, args.epochs)
        return
    work = Path(tempfile.mkdtemp(prefix="xray_cls_e2e_"))
    write_data(work / "data")
    rows = []
    for name in DATASETS:
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.end_to_end", "--child", name, "--root", str(work / "data"),
             "--out", str(work / name), "--epochs", str(args.epochs)],
            cwd=REPO, env={**os.environ, "PYTHONWARNINGS": "ignore"}, capture_output=True, text=True,
            check=True,
        )  # fmt: skip
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append({"data": name, "process_s": time.perf_counter() - start, **result})
        print_table(rows[-1:])
    print_table(rows)
    write_json_atomic(args.out, {"epochs": args.epochs, "runs": rows, "machine": machine_info()})


if __name__ == "__main__":
    main()
