"""``python -m xray_cls.eval ckpt_path=<checkpoint>``: test a saved model on its data set's test split."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from xray_cls.checkpoints import load_checkpoint, module_from_checkpoint, restore_config
from xray_cls.config import config_dir
from xray_cls.io import write_json_atomic, write_text_atomic
from xray_cls.runtime import build, instantiate_all, seed_everything, user_errors
from xray_cls.train import scalars

log = logging.getLogger("xray_cls.eval")


def evaluate(cfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    checkpoint = load_checkpoint(cfg.ckpt_path)
    cfg = restore_config(cfg, checkpoint, overrides)
    output_dir = Path(cfg.paths.output_dir)
    write_text_atomic(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    seed_everything(cfg)
    datamodule: L.LightningDataModule = build(cfg.data)
    module = module_from_checkpoint(cfg, checkpoint)
    loggers = instantiate_all(cfg.get("logger"))
    callbacks = [cb for cb in instantiate_all(cfg.get("callbacks")) if not _is_training_only(cb)]
    trainer: L.Trainer = build(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    trainer.test(module, datamodule=datamodule)
    metrics = {
        "status": "ok",
        "checkpoint": str(Path(cfg.ckpt_path).resolve()),
        **scalars(trainer.callback_metrics),
    }
    if trainer.is_global_zero:
        write_json_atomic(output_dir / "metrics.json", metrics)
    return metrics


def _is_training_only(callback: L.Callback) -> bool:
    return isinstance(callback, EarlyStopping | LearningRateMonitor | ModelCheckpoint)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="eval")
def main(cfg: DictConfig) -> None:
    with user_errors():
        evaluate(cfg, list(HydraConfig.get().overrides.task))


if __name__ == "__main__":
    main()
