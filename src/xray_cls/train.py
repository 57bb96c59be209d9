"""``python -m xray_cls.train [group=option ...] [key=value ...]``: train, validate and test one model."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from xray_cls.checkpoints import load_checkpoint, restore_config
from xray_cls.config import config_dir
from xray_cls.distributed import file_logs_from_rank_zero
from xray_cls.errors import RunInterrupted
from xray_cls.io import write_json_atomic, write_text_atomic
from xray_cls.models.finetune import finetune_callback
from xray_cls.runtime import (
    build,
    build_module,
    command_line_overrides,
    instantiate_all,
    is_multirun,
    seed_everything,
    user_errors,
)
from xray_cls.sweep import objective, run_trial
from xray_cls.validation import validate

log = logging.getLogger("xray_cls.train")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit on train/val, test the best checkpoint, write ``metrics.json``; returns the final metrics."""
    cfg, resume_from = _resume(cfg)
    validate(cfg)
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
        _fit(trainer, module, datamodule, resume_from, output_dir)
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


def _fit(
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    ckpt: str | None,
    run: Path,
) -> None:
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
    except (
        SystemExit
    ) as stop:  # Lightning ends a Ctrl-C or SIGTERM this way, after on_exception saved a checkpoint
        if not trainer.interrupted:
            raise
        signal_number = signal.SIGTERM if isinstance(stop, SIGTERMException) else signal.SIGINT
        saved = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""
        raise RunInterrupted(
            f"training interrupted by {signal.Signals(signal_number).name} at epoch {trainer.current_epoch}, "
            f"step {trainer.global_step}; checkpoint saved to {saved or 'nowhere (checkpointing is off)'}. "
            f"Continue with: python -m xray_cls.train resume={run}",
            signal_number,
        ) from None


def _resume(cfg: DictConfig) -> tuple[DictConfig, str | None]:
    """``resume=<run dir>``: that run's config and last checkpoint (the command line still overrides);
    ``ckpt_path=<file>``: today's config, trained on from that checkpoint in a new run directory."""
    if cfg.get("resume"):
        path = Path(cfg.resume) / "checkpoints" / "last.ckpt"
    elif cfg.get("ckpt_path"):
        path = Path(cfg.ckpt_path)
    else:
        return cfg, None
    checkpoint = load_checkpoint(path)  # a clear error for a missing or truncated file
    if cfg.get("resume"):
        stored = checkpoint["xray_cls"]["config"]
        keys = [key for key in stored if key not in ("paths", "resume", "ckpt_path")]
        cfg = restore_config(cfg, checkpoint, command_line_overrides(), keys)
        log.info("resuming %s from %s", cfg.resume, path)
    return cfg, str(path)


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
    """Returns what a sweeper optimises: the best ``monitor.metric``, or None for a failed sweep job."""
    file_logs_from_rank_zero()
    if is_multirun():
        return run_trial(cfg, train)
    with user_errors():
        metrics = train(cfg)
    return objective(metrics, cfg.monitor.metric)


if __name__ == "__main__":
    main()
