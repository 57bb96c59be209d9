"""Does the device-resident fast path learn as well as the per-item path? Trains the same model on real data
with ``data.on_device=true`` and ``false`` for a few seeds each, and reports test metrics and epoch times.

    python -m benchmarks.fast_path_accuracy [--pneumoniamnist ../shared/datasets/pneumoniamnist_balanced.npz]
        [--mnist-dir DIR_WITH_MNIST_RAW] [--seeds 2] [--out benchmarks/results/fast_path_accuracy.json]

Without real data files the script says so and measures nothing: synthetic pixels would prove nothing here.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir

from benchmarks.common import EpochTimer, machine_info, print_table, write_json_atomic
from xray_cls.config import config_dir
from xray_cls.train import train

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets" / "pneumoniamnist_balanced.npz"


def run(data_dir: Path, data: str, epochs: int, on_device: bool, seed: int, out: Path) -> dict:
    overrides = [
        f"data={data}", "model=simple_cnn", f"paths.data_dir={data_dir}", f"paths.output_dir={out}",
        f"data.on_device={on_device}", f"seed={seed}", f"trainer.max_epochs={epochs}",
        "data.source.download=false",
        "callbacks.early_stopping=null", "callbacks.progress_bar.refresh_rate=0", "trainer=cpu",
        "+callbacks.timer._target_=benchmarks.common.EpochTimer",
    ]  # fmt: skip
    EpochTimer.seconds.clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        metrics = train(compose("train", overrides=overrides))
    keys = ["test/acc", "test/auroc"] if data == "pneumoniamnist" else ["test/acc"]
    return {k: metrics[k] for k in keys} | {"epoch_s": statistics.median(EpochTimer.seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pneumoniamnist", type=Path, default=SHARED)
    parser.add_argument("--mnist-dir", type=Path, help="a paths.data_dir holding MNIST/raw/*-ubyte")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "fast_path_accuracy.json"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="xray_cls_fastpath_"))
    tasks = []
    if args.pneumoniamnist and args.pneumoniamnist.is_file():
        (work / "medmnist").mkdir(parents=True)
        shutil.copy(args.pneumoniamnist, work / "medmnist" / "pneumoniamnist.npz")
        tasks.append(("pneumoniamnist", work, 10))
    if args.mnist_dir and (args.mnist_dir / "MNIST" / "raw").is_dir():
        tasks.append(("mnist", args.mnist_dir, 3))
    if not tasks:
        raise SystemExit("no real data given (--pneumoniamnist FILE.npz, --mnist-dir DIR): nothing measured")
    rows = []
    for data, data_dir, epochs in tasks:
        for on_device in (True, False):
            results = [
                run(data_dir, data, epochs, on_device, s, work / f"{data}_{on_device}_{s}")
                for s in range(args.seeds)
            ]
            row = {"data": data, "epochs": epochs, "path": "device" if on_device else "per-item"}
            for key in results[0]:
                values = [r[key] for r in results]
                row[key] = statistics.mean(values)
                row[key + " range"] = f"{min(values):.4f}-{max(values):.4f}"
            rows.append(row)
        print_table([r for r in rows if r["data"] == data])
    write_json_atomic(
        args.out, {"seeds": args.seeds, "model": "simple_cnn", "rows": rows, "machine": machine_info()}
    )


if __name__ == "__main__":
    main()
