"""``python -m xray_cls.eval ckpt_path=<checkpoint>``: test a saved model on its data set's test split.

Writes into its own run directory ``metrics.json`` (test metrics at the checkpoint's operating threshold and
at 0.5), ``report.md`` and the PNG figures it embeds (``figures/``); the figures also go to TensorBoard.
Binary tasks apply the threshold stored in the checkpoint (``eval.threshold=stored``, the default here); a
method (``eval.threshold=youden|target_sensitivity|fixed``) chooses a new one on the validation split first.
"""

from __future__ import annotations

if __name__ == "__main__":
    # The command starts in the light xray_cls.cli (see xray_cls.train): Hydra's own errors and --help answer
    # before torch and Lightning below are imported.
    import sys

    from xray_cls.cli import eval_main

    eval_main()
    sys.exit()  # done: what follows is the pipeline, which xray_cls.cli imported as xray_cls.eval

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from xray_cls.callbacks.operating_point import CHECKPOINT_KEY, OperatingPoint
from xray_cls.callbacks.outputs import TestOutputs
from xray_cls.checkpoints import load_checkpoint, module_from_checkpoint, restore_config
from xray_cls.errors import UserError
from xray_cls.evaluation.bootstrap import confidence_intervals
from xray_cls.evaluation.report import write_run_report
from xray_cls.evaluation.summary import stored_threshold_how, summarize
from xray_cls.evaluation.tta import tta
from xray_cls.io import write_json_atomic, write_text_atomic
from xray_cls.runtime import build, instantiate_all, seed_everything
from xray_cls.tracking import log_run
from xray_cls.train import scalars
from xray_cls.validation import validate

log = logging.getLogger("xray_cls.eval")


def evaluate(cfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    checkpoint = load_checkpoint(cfg.ckpt_path)
    cfg = restore_config(cfg, checkpoint, overrides)
    validate(cfg)
    output_dir = Path(cfg.paths.output_dir)
    write_text_atomic(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    seed_everything(cfg)
    datamodule: L.LightningDataModule = build(cfg.data)
    module = module_from_checkpoint(checkpoint, calibrated=cfg.eval.calibration != "none")
    positive = module.positive_index
    loggers = instantiate_all(cfg.get("logger"))
    figures_cfg = cfg.eval.figures
    collector = TestOutputs(figures_cfg.samples_per_class, figures_cfg.misclassified)
    callbacks = [cb for cb in instantiate_all(cfg.get("callbacks")) if not _is_training_only(cb)]
    trainer: L.Trainer = build(cfg.trainer, callbacks=[*callbacks, collector], logger=loggers or False)

    how = stored_threshold_how(checkpoint.get(CHECKPOINT_KEY), "Stored in the checkpoint, applied here.")
    augment = cfg.eval.tta
    # Grad-CAM (below) explains the plain model: augmentation ends with the test.
    with tta(module, cfg.data.augment.hflip, cfg.data.image_size) if augment else contextlib.nullcontext():
        if positive is not None and cfg.eval.threshold != "stored":
            how = _choose_threshold(trainer, module, datamodule, callbacks, cfg.eval.threshold)
        trainer.test(module, datamodule=datamodule)

    collected = collector.collected
    if collected is None:
        raise UserError("the test split is empty (or trainer.limit_test_batches=0): nothing to evaluate")
    tta_how = _describe_tta(cfg) if cfg.eval.tta else "off"
    summary = summarize(cfg, module, collected.targets, cfg.ckpt_path, how, tta_how, datamodule)
    metrics = {
        "status": "ok",
        **dataclasses.asdict(summary),
        **{k: v for k, v in scalars(trainer.callback_metrics).items() if k.startswith("test/")},
    }
    if trainer.is_global_zero:
        metrics |= confidence_intervals(cfg, module, collected, metrics)
        report = write_run_report(
            output_dir, summary, metrics, collected, module, figures_cfg.gradcam_per_class, trainer.loggers
        )
        write_json_atomic(output_dir / "metrics.json", metrics)
        log_run(trainer.loggers, cfg, None)  # MLflow: the hyperparameters (the checkpoint is the run's)
        log.info("report: %s", report)
    return metrics


def _choose_threshold(
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    callbacks: list[Any],
    method: str,
) -> str:
    """Run the validation split through the OperatingPoint callback, which sets ``module.threshold``."""
    chooser = next((cb for cb in callbacks if isinstance(cb, OperatingPoint)), None)
    if chooser is None:
        raise UserError(
            f"eval.threshold={method} chooses a threshold through the operating_point callback, which "
            "callbacks.operating_point=null switched off"
        )
    trainer.validate(module, datamodule=datamodule, verbose=False)
    chosen = chooser.chosen
    if chosen is None:
        raise UserError("the validation split is empty: cannot choose a threshold on it")
    return (
        f"Chosen by this evaluation on the validation split ({chosen['validation_samples']} images): "
        f"{chosen['description']}."
    )


def _describe_tta(cfg: DictConfig) -> str:
    if cfg.data.augment.hflip:
        return "softmax averaged over the image and its horizontal flip"
    return "softmax averaged over the image and four small shifts"


def _is_training_only(callback: L.Callback) -> bool:
    return isinstance(callback, EarlyStopping | LearningRateMonitor | ModelCheckpoint)
