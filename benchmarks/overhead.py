"""Framework overhead: one training epoch through xray_cls (Lightning + Hydra, progress bar and TensorBoard
on) against a plain PyTorch loop with the same model, data, batch size and optimizer, alternated in one
process. (Start-up, launch to first batch, is benchmarks/startup.py.)

    python -m benchmarks.overhead [--repeat 3] [--resnet-batches 40] [--out benchmarks/results/overhead.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
import torchvision
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from benchmarks.common import EpochTimer, machine_info, median, print_table, write_json_atomic
from tests.formats import write_idx
from xray_cls.config import config_dir
from xray_cls.runtime import build, build_module
from xray_cls.train import train

REPO = Path(__file__).resolve().parents[1]
TIMER = "benchmarks.common.EpochTimer"


def _cfg(data_dir: Path, out: Path, model: str, on_device: bool, batches: int | None, image_size: int):
    overrides = [
        "data=mnist", f"paths.data_dir={data_dir}", f"paths.output_dir={out}", f"model={model}",
        f"data.on_device={on_device}", f"data.image_size={image_size}", "trainer=cpu", "trainer.max_epochs=1",
        "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0", "test=false",
        f"trainer.limit_train_batches={batches or 'null'}", "+callbacks.timer._target_=" + TIMER,
    ]  # fmt: skip
    if model != "simple_cnn":
        overrides.append("model.net.pretrained=false")
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides=overrides)


def framework_epoch(cfg) -> float:
    """Seconds of the training epoch inside a real ``xray_cls.train`` run (setup and validation excluded)."""
    train(cfg)
    return EpochTimer.seconds[-1]


def plain_epoch(cfg, loader_kind: str, batches: int | None) -> float:
    """The seed documents' loop: batches, forward, cross-entropy, backward, Adam step (same model, data)."""
    L.seed_everything(cfg.seed, verbose=False)
    datamodule = build(cfg.data)
    datamodule.setup("fit")
    net = build_module(cfg.model).net  # the same architecture and initialisation as the framework's
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.optimizer.lr)
    mean = torch.tensor(cfg.data.mean).view(1, -1, 1, 1)
    std = torch.tensor(cfg.data.std).view(1, -1, 1, 1)
    if loader_kind == "torchvision":  # the classic per-item pipeline: PIL image -> tensor -> normalise
        dataset = torchvision.datasets.MNIST(
            str(cfg.data.root),
            train=True,
            transform=v2.Compose(
                [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Resize(cfg.data.image_size)]
            ),
        )
        loader = DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=True, num_workers=2)
    else:
        loader = datamodule.train_dataloader()  # the framework's own loader: device batches or per-item
    net.train()
    start = time.perf_counter()
    for i, (images, labels) in enumerate(loader):
        if batches is not None and i >= batches:
            break
        if images.dtype == torch.uint8:
            images = images.float().div_(255)
        loss = F.cross_entropy(net((images - mean) / std), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--resnet-batches", type=int, default=40, help="resnet18 epochs are cut to this many")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "overhead.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="xray_cls_overhead_"))
    data_dir = work / "data"
    write_idx(data_dir, "MNIST", n_train=60_000, n_test=10_000)
    cases = [  # (model, image size, batches per epoch or None for all 422)
        ("simple_cnn", 28, None),
        ("resnet18", 32, args.resnet_batches),
    ]
    rows = []
    for model, size, batches in cases:
        for on_device in (True, False):
            cfg = _cfg(data_dir, work / "run", model, on_device, batches, size)
            framework, plain = [], []
            for _ in range(args.repeat):  # alternate, so drifts of a shared machine hit both sides alike
                framework.append(framework_epoch(cfg))
                plain.append(plain_epoch(cfg, "same", batches))
            row = {
                "model": model,
                "data path": "device batches" if on_device else "per-item DataLoader",
                "images": (batches or 422) * cfg.data.batch_size,
                "plain_s": median(plain),
                "framework_s": median(framework),
                "ratio": median(framework) / median(plain),
            }
            rows.append(row)
            print_table([row])
    # The classic per-item torchvision pipeline (PIL -> ToTensor per item), against the default framework run.
    cfg = _cfg(data_dir, work / "run", "simple_cnn", True, None, 28)
    classic = median([plain_epoch(cfg, "torchvision", None) for _ in range(args.repeat)])
    default = next(r for r in rows if r["model"] == "simple_cnn" and r["data path"] == "device batches")
    result = {
        "overhead": rows,
        "classic_torchvision_loop_s": classic,
        "framework_default_vs_classic_speedup": classic / default["framework_s"],
        "repeat": args.repeat,
        "machine": machine_info(),
    }
    print_table(rows)
    print(json.dumps({k: v for k, v in result.items() if k not in ("overhead", "machine")}, indent=2))
    write_json_atomic(args.out, result)


if __name__ == "__main__":
    main()
