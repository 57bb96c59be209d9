"""``python -m xray_cls.eval ckpt_path=<checkpoint>``: test a saved model on its data set's test split.

Writes into its own run directory ``metrics.json`` (test metrics at the checkpoint's operating threshold and
at 0.5), ``report.md`` and the PNG figures it embeds (``figures/``); the figures also go to TensorBoard.
Binary tasks apply the threshold stored in the checkpoint; passing ``eval.threshold=...`` (or
``eval.target_sensitivity`` / ``eval.fixed_threshold``) chooses a new one on the validation split first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from xray_cls.checkpoints import load_checkpoint, module_from_checkpoint, restore_config
from xray_cls.config import config_dir
from xray_cls.errors import UserError
from xray_cls.evaluation.callbacks import CHECKPOINT_KEY, OperatingPoint, TestOutputs
from xray_cls.evaluation.report import (
    Summary,
    describe_data,
    describe_model,
    draw_figures,
    write_figures,
    write_report,
)
from xray_cls.evaluation.tta import tta
from xray_cls.io import write_json_atomic, write_text_atomic
from xray_cls.runtime import build, instantiate_all, seed_everything, user_errors
from xray_cls.train import scalars
from xray_cls.validation import validate

log = logging.getLogger("xray_cls.eval")

# Overriding any of these on the eval command line chooses a new threshold on the validation split.
THRESHOLD_KEYS = {"eval.threshold", "eval.target_sensitivity", "eval.fixed_threshold"}


def evaluate(cfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    checkpoint = load_checkpoint(cfg.ckpt_path)
    cfg = restore_config(cfg, checkpoint, overrides)
    validate(cfg)
    output_dir = Path(cfg.paths.output_dir)
    write_text_atomic(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    seed_everything(cfg)
    datamodule: L.LightningDataModule = build(cfg.data)
    module = module_from_checkpoint(cfg, checkpoint)
    positive = module.positive_index
    loggers = instantiate_all(cfg.get("logger"))
    figures_cfg = cfg.eval.figures
    collector = TestOutputs(figures_cfg.samples_per_class, figures_cfg.misclassified)
    callbacks = [cb for cb in instantiate_all(cfg.get("callbacks")) if not _is_training_only(cb)]
    trainer: L.Trainer = build(cfg.trainer, callbacks=[*callbacks, collector], logger=loggers or False)

    how = _stored_threshold_how(checkpoint)
    augment = cfg.eval.tta
    # Grad-CAM (below) explains the plain model: augmentation ends with the test.
    with tta(module, cfg.data.augment.hflip, cfg.data.image_size) if augment else contextlib.nullcontext():
        if positive is not None and _threshold_requested(overrides):
            how = _choose_threshold(trainer, module, datamodule, callbacks)
        trainer.test(module, datamodule=datamodule)

    collected = collector.collected
    if collected is None:
        raise UserError("the test split is empty (or trainer.limit_test_batches=0): nothing to evaluate")
    summary = _summary(cfg, module, collected.targets, positive, how)
    metrics = {
        "status": "ok",
        **dataclasses.asdict(summary),
        **{k: v for k, v in scalars(trainer.callback_metrics).items() if k.startswith("test/")},
    }
    if trainer.is_global_zero:
        threshold = float(module.threshold)
        figures = draw_figures(
            collected, module, module.class_names, threshold, positive, figures_cfg.gradcam_per_class
        )
        paths = write_figures(figures, output_dir / "figures", trainer.loggers)
        write_report(output_dir / "report.md", summary, metrics, paths)
        write_json_atomic(output_dir / "metrics.json", metrics)
        log.info("report: %s", output_dir / "report.md")
    return metrics


def _summary(
    cfg: DictConfig, module: L.LightningModule, targets: torch.Tensor, positive: int | None, how: str
) -> Summary:
    names = list(module.class_names)
    binary = positive is not None
    return Summary(
        data=describe_data(cfg),
        model=describe_model(cfg),
        checkpoint=str(Path(cfg.ckpt_path).resolve()),
        test_samples=len(targets),
        class_counts={name: int((targets == c).sum()) for c, name in enumerate(names)},
        threshold=float(module.threshold) if binary else None,
        positive_class=names[positive] if binary else None,
        threshold_how=how if binary else None,
        tta=_describe_tta(cfg) if cfg.eval.tta else "off",
    )


def _stored_threshold_how(checkpoint: dict[str, Any]) -> str:
    chosen = checkpoint.get(CHECKPOINT_KEY)
    if chosen is None:
        return "Not chosen on validation data: the checkpoint records no operating point (0.5 by default)."
    return (
        f"Chosen on the validation split ({chosen['validation_samples']} images) at epoch {chosen['epoch']} "
        f"of training: {chosen['description']}. Stored in the checkpoint and applied unchanged here."
    )


def _threshold_requested(overrides: list[str]) -> bool:
    keys = {o.key_or_group for o in OverridesParser.create().parse_overrides(overrides)}
    return bool(keys & THRESHOLD_KEYS)


def _choose_threshold(
    trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule, callbacks: list[Any]
) -> str:
    """Run the validation split through the OperatingPoint callback, which sets ``module.threshold``."""
    chooser = next((cb for cb in callbacks if isinstance(cb, OperatingPoint)), None)
    if chooser is None:
        raise UserError(
            f"{', '.join(sorted(THRESHOLD_KEYS))} need the operating_point callback, which "
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


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="eval")
def main(cfg: DictConfig) -> None:
    with user_errors():
        evaluate(cfg, list(HydraConfig.get().overrides.task))


if __name__ == "__main__":
    main()
