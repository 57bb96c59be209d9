"""The start-up baseline of benchmarks/startup.py: a training script shaped like the Lightning+Hydra
template's (ashleve/lightning-hydra-template ``src/train.py``), with its MNIST data and Lightning modules.

    python -m benchmarks.template_baseline paths.data_dir=<dir with MNIST/raw> paths.log_dir=<dir>

As the template does: everything is imported at the top, the project root goes on ``sys.path`` (rootutils,
not installed here, is emulated in two lines), ``hydra.main`` composes benchmarks/template_conf/train.yaml,
the config tree is printed with rich, and data module, model, callbacks (checkpoint, early stopping, rich
model summary and progress bar) and Trainer are instantiated from it; the data module opens torchvision's
``MNIST`` in ``setup`` (per-item PIL -> ``ToTensor`` -> ``Normalize``, no workers) and splits train+test
55k/5k/10k; the Trainer runs its default 2-batch sanity check. A small CNN replaces the template's dense net.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import rich
import rich.syntax
import rich.tree
import torch
from lightning import Callback, LightningDataModule, LightningModule, Trainer
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, random_split
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification.accuracy import Accuracy
from torchvision.datasets import MNIST
from torchvision.transforms import transforms

# rootutils.setup_root(__file__, indicator=".project-root", pythonpath=True)
ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
sys.path.insert(0, str(ROOT))


class MNISTDataModule(LightningDataModule):
    """The template's ``src/data/mnist_datamodule.py``."""

    def __init__(
        self,
        data_dir: str = "data/",
        train_val_test_split: tuple[int, int, int] = (55_000, 5_000, 10_000),
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.transforms = transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]
        )
        self.data_train = self.data_val = self.data_test = None
        self.batch_size_per_device = batch_size

    def prepare_data(self) -> None:
        MNIST(self.hparams.data_dir, train=True, download=True)
        MNIST(self.hparams.data_dir, train=False, download=True)

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None:
            self.batch_size_per_device = self.hparams.batch_size // self.trainer.world_size
        if not self.data_train and not self.data_val and not self.data_test:
            trainset = MNIST(self.hparams.data_dir, train=True, transform=self.transforms)
            testset = MNIST(self.hparams.data_dir, train=False, transform=self.transforms)
            dataset = ConcatDataset(datasets=[trainset, testset])
            self.data_train, self.data_val, self.data_test = random_split(
                dataset=dataset,
                lengths=self.hparams.train_val_test_split,
                generator=torch.Generator().manual_seed(42),
            )

    def _loader(self, dataset: Any, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size_per_device,
            num_workers=self.hparams.num_workers,
            pin_memory=self.hparams.pin_memory,
            shuffle=shuffle,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.data_train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.data_val, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.data_test, shuffle=False)


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MNISTLitModule(LightningModule):
    """The template's ``src/models/mnist_module.py``."""

    def __init__(self, net: nn.Module, optimizer: Any, scheduler: Any, compile: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["net"])
        self.net = net
        self.criterion = nn.CrossEntropyLoss()
        self.train_acc = Accuracy(task="multiclass", num_classes=10)
        self.val_acc = Accuracy(task="multiclass", num_classes=10)
        self.test_acc = Accuracy(task="multiclass", num_classes=10)
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_train_start(self) -> None:
        self.val_loss.reset()
        self.val_acc.reset()
        self.val_acc_best.reset()

    def model_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        x, y = batch
        logits = self.forward(x)
        loss = self.criterion(logits, y)
        return loss, torch.argmax(logits, dim=1), y

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, preds, targets = self.model_step(batch)
        self.train_loss(loss)
        self.train_acc(preds, targets)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        loss, preds, targets = self.model_step(batch)
        self.val_loss(loss)
        self.val_acc(preds, targets)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        loss, preds, targets = self.model_step(batch)
        self.test_loss(loss)
        self.test_acc(preds, targets)
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True, prog_bar=True)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.hparams.optimizer(params=self.trainer.model.parameters())
        scheduler = self.hparams.scheduler(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "monitor": "val/loss",
                "interval": "epoch",
                "frequency": 1,
            },
        }


def print_config_tree(cfg: DictConfig) -> None:
    """The template's ``extras``: the composed config as a rich tree, before anything is built."""
    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    for field in cfg:
        branch = tree.add(str(field), style="dim", guide_style="dim")
        content = (
            OmegaConf.to_yaml(cfg[field], resolve=False)
            if isinstance(cfg[field], DictConfig)
            else str(cfg[field])
        )
        branch.add(rich.syntax.Syntax(content, "yaml"))
    rich.print(tree)


def train(cfg: DictConfig) -> dict[str, Any]:
    if cfg.get("seed"):
        L.seed_everything(cfg.seed, workers=True)
    datamodule: LightningDataModule = hydra.utils.instantiate(cfg.data)
    model: LightningModule = hydra.utils.instantiate(cfg.model)
    callbacks: list[Callback] = [hydra.utils.instantiate(cb) for cb in cfg.callbacks.values() if cb]
    trainer: Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=False)
    if cfg.get("train"):
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = dict(trainer.callback_metrics)
    if cfg.get("test"):
        trainer.test(
            model=model, datamodule=datamodule, ckpt_path=trainer.checkpoint_callback.best_model_path
        )
        metrics |= trainer.callback_metrics
    return metrics


@hydra.main(version_base="1.3", config_path=str(Path(__file__).parent / "template_conf"), config_name="train")
def main(cfg: DictConfig) -> float | None:
    if cfg.extras.print_config:
        print_config_tree(cfg)
    metrics = train(cfg)
    value = metrics.get("val/acc_best")
    return None if value is None else float(value)


if __name__ == "__main__":
    main()
