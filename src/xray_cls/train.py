"""``python -m xray_cls.train [group=option ...] [key=value ...]``: train, validate and test one model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from xray_cls.config import config_dir
from xray_cls.errors import UserError
from xray_cls.io import write_json_atomic, write_text_atomic
from xray_cls.models.finetune import finetune_callback
from xray_cls.runtime import build, build_module, instantiate_all, seed_everything, user_errors

log = logging.getLogger("xray_cls.train")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit on train/val, test the best checkpoint, write ``metrics.json``; returns the final metrics."""
    output_dir = Path(cfg.paths.output_dir)
    write_text_atomic(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    seed_everything(cfg)
    datamodule: L.LightningDataModule = build(cfg.data)
    module = build_module(cfg)

    callbacks = instantiate_all(cfg.get("callbacks"))
    finetune = finetune_callback(
        cfg.model.get("finetune", "full"), cfg.model.get("unfreeze_at_epoch", 1), module.backbone_lr_mult
    )
    if finetune is not None:
        callbacks.append(finetune)
    loggers = instantiate_all(cfg.get("logger"))
    trainer: L.Trainer = build(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    metrics: dict[str, Any] = {}
    if cfg.train:
        trainer.fit(module, datamodule=datamodule, ckpt_path=_resume_checkpoint(cfg))
        metrics |= scalars(trainer.callback_metrics)
    if cfg.test:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None)
        metrics |= scalars(trainer.callback_metrics)
        metrics["best_checkpoint"] = best or None
    metrics = {k: v for k, v in sorted(metrics.items()) if not k.endswith("_step")}
    if trainer.is_global_zero:
        write_json_atomic(output_dir / "metrics.json", {"status": "ok", **metrics})
        _log_hparams(trainer, cfg, metrics)
    return metrics


def _resume_checkpoint(cfg: DictConfig) -> str | None:
    if cfg.get("resume"):
        path = Path(cfg.resume) / "checkpoints" / "last.ckpt"
    elif cfg.get("ckpt_path"):
        path = Path(cfg.ckpt_path)
    else:
        return None
    if not path.is_file():
        raise UserError(
            f"checkpoint {path} does not exist: pass resume=<a run directory> or ckpt_path=<a .ckpt>"
        )
    return str(path)


def scalars(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, torch.Tensor) and v.numel() == 1}


def _log_hparams(trainer: L.Trainer, cfg: DictConfig, metrics: dict[str, Any]) -> None:
    """The HParams tab: this run's hyperparameters beside its final metrics."""
    numeric = {k: v for k, v in metrics.items() if isinstance(v, float)}
    hparams = OmegaConf.to_container(cfg, resolve=True)
    hparams.pop("paths", None)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(hparams, metrics=numeric)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> float | None:
    with user_errors():
        metrics = train(cfg)
    objective = metrics.get(cfg.monitor.metric + "_best", metrics.get(cfg.monitor.metric))
    return objective


if __name__ == "__main__":
    main()
