"""``python -m xray_cls.train [group=option ...] [key=value ...]``: train, validate and test one model."""

from __future__ import annotations

if __name__ == "__main__":
    # The command starts in the light xray_cls.cli: it checks the config and only then imports this module
    # (as xray_cls.train) with torch and Lightning below, so --help and a refused config answer at once.
    import sys

    from xray_cls.cli import train_main

    train_main()
    sys.exit()  # done: what follows is the pipeline, which xray_cls.cli imported as xray_cls.train

import logging
import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from xray_cls.callbacks.operating_point import OperatingPoint
from xray_cls.callbacks.outputs import Collected, TestOutputs
from xray_cls.callbacks.run_config import RunConfig
from xray_cls.checkpoint_io import CheckedCheckpointIO, CheckpointNotSaved
from xray_cls.checkpoints import load_checkpoint, restore_config
from xray_cls.cluster import own_last_checkpoint, trainer_plugins
from xray_cls.errors import RunInterrupted
from xray_cls.evaluation.bootstrap import confidence_intervals
from xray_cls.evaluation.report import write_run_report
from xray_cls.evaluation.summary import stored_threshold_how, summarize
from xray_cls.hparams import log_hparams
from xray_cls.io import write_json_atomic, write_text_atomic
from xray_cls.runtime import (
    build,
    build_module,
    command_line_overrides,
    instantiate_all,
    seed_everything,
)
from xray_cls.tracking import log_run
from xray_cls.validation import check_image_size, validate

log = logging.getLogger("xray_cls.train")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit on train/val, test the best checkpoint, write ``metrics.json``; returns the final metrics."""
    cfg, resume_from = _resume(cfg)
    resume_from = own_last_checkpoint(cfg) or resume_from  # a requeued or re-run job goes on where it stopped
    validate(cfg)
    output_dir = Path(cfg.paths.output_dir)
    resumed = bool(cfg.get("resume"))
    if not resumed:  # a resumed run keeps its record until this attempt has trained (see below)
        _write_config(cfg, output_dir)
    seed_everything(cfg)
    datamodule: L.LightningDataModule = build(cfg.data)
    module = build_module(cfg.model)
    check_image_size(module.net, cfg.data.image_size)

    callbacks = [*instantiate_all(cfg.get("callbacks")), RunConfig(cfg)]
    figures = cfg.eval.figures
    collector = TestOutputs(figures.samples_per_class, figures.misclassified) if cfg.report else None
    if collector is not None:
        callbacks.append(collector)
    loggers = instantiate_all(cfg.get("logger"))
    # A checkpoint that cannot be written stops the run (Lightning's own saving would go on silently).
    # On SLURM, Lightning's environment without its auto-requeue (xray_cls.cluster).
    plugins = [CheckedCheckpointIO(), *trainer_plugins()]
    trainer: L.Trainer = build(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins)

    metrics: dict[str, Any] = {}
    if cfg.train:
        _fit(trainer, module, datamodule, resume_from, output_dir)
        metrics |= scalars(trainer.callback_metrics)
    if resumed:  # a failed attempt leaves config.yaml as it was; Hydra keeps its config in .hydra/resumed_*/
        _write_config(cfg, output_dir)
    if cfg.test:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None)
        metrics |= scalars(trainer.callback_metrics)
        metrics["best_checkpoint"] = best or None
    metrics = {k: v for k, v in sorted(metrics.items()) if not k.endswith("_step")}
    if trainer.is_global_zero:
        collected = collector.collected if collector is not None else None  # None: report=false or no test
        if collected is not None:
            metrics |= confidence_intervals(cfg, module, collected, metrics)
        write_json_atomic(output_dir / "metrics.json", {"status": "ok", **metrics})
        report = None
        try:
            if collected is not None:
                report = _write_report(cfg, trainer, module, collected, metrics)
        except Exception as err:  # the results are saved: a figure that cannot be drawn must not fail the run
            log.warning(
                "report.md not written (%s: %s); metrics.json holds every result, and "
                "python -m xray_cls.eval ckpt_path=%s can write the report again",
                type(err).__name__, err, metrics.get("best_checkpoint"),
            )  # fmt: skip
        log_hparams(trainer, cfg, metrics)
        log_run(trainer.loggers, cfg, metrics.get("best_checkpoint"))
        print(closing_lines(output_dir, metrics, report), flush=True)
    return metrics


def _write_report(
    cfg: DictConfig,
    trainer: L.Trainer,
    module: L.LightningModule,
    collected: Collected,
    metrics: dict[str, Any],
) -> Path:
    """The same report.md and figures/ as ``xray_cls.eval`` writes, for the checkpoint just tested."""
    chooser = next((cb for cb in trainer.callbacks if isinstance(cb, OperatingPoint)), None)
    how = stored_threshold_how(chooser.chosen if chooser else None, "Applied unchanged to the test split.")
    checkpoint = metrics.get("best_checkpoint") or ""
    summary = summarize(cfg, module, collected.targets, checkpoint, how, datamodule=trainer.datamodule)
    return write_run_report(
        Path(cfg.paths.output_dir),
        summary,
        metrics,
        collected,
        module,
        cfg.eval.figures.gradcam_per_class,
        trainer.loggers,
    )


def closing_lines(output_dir: Path, metrics: dict[str, Any], report: Path | None) -> str:
    """What a person needs at the end of a run: where it is, how it did, how to look at it."""
    if "test/op/sensitivity" in metrics:  # binary: at the operating threshold chosen on validation data
        interval = ""
        if "test/auroc_ci_low" in metrics:
            interval = f" (95% CI {metrics['test/auroc_ci_low']:.3f}-{metrics['test/auroc_ci_high']:.3f})"
        op = {k: metrics[f"test/op/{k}"] for k in ("threshold", "sensitivity", "specificity")}
        headline = (
            f"test AUROC {metrics['test/auroc']:.4f}{interval}; at threshold {op['threshold']:.3f} "
            f"(chosen on val): sensitivity {op['sensitivity']:.4f}, specificity {op['specificity']:.4f}"
        )
    elif "test/acc" in metrics:
        headline = f"test accuracy {metrics['test/acc']:.4f}"
    else:
        headline = "not tested (test=false)"
    lines = ["", f"run directory: {output_dir}", f"result:        {headline}"]
    if report is not None:
        lines.append(f"report:        {report}")
    lines.append(f"tensorboard:   tensorboard --logdir {output_dir}")
    return "\n".join(lines)


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
    except CheckpointNotSaved as err:  # no checkpoint to test: keep what the epochs measured
        if trainer.is_global_zero:
            values = {k: v for k, v in scalars(trainer.callback_metrics).items() if not k.endswith("_step")}
            err.measured = {"epoch": trainer.current_epoch, **values}  # a sweep's record keeps them too
            write_json_atomic(run / "metrics.json", {"status": "failed", "error": str(err), **err.measured})
        raise


def _write_config(cfg: DictConfig, output_dir: Path) -> None:
    write_text_atomic(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))


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
