"""The operating threshold of binary tasks: chosen on validation data at each epoch, applied at test."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import MetricCollection

from xray_cls.callbacks.outputs import Outputs
from xray_cls.evaluation.calibration import fit_temperature
from xray_cls.evaluation.metrics import operating_point_collection, operating_point_name
from xray_cls.evaluation.threshold import describe, select_threshold
from xray_cls.module import Batch, StepOutput

# Where a checkpoint records how its threshold buffer was chosen (beside Lightning's own keys).
CHECKPOINT_KEY = "operating_point"


class OperatingPoint(L.Callback):
    """Binary tasks: choose the operating threshold at each validation epoch end and test at it.

    The threshold goes into the module's ``threshold`` buffer, which every checkpoint saves, so the best
    checkpoint carries the threshold of its own epoch; ``checkpoint["operating_point"]`` records how it was
    chosen. At test time the thresholded metrics at the stored threshold are logged as ``test/op/<name>``
    beside the module's own ``test/<name>`` at 0.5. Multiclass tasks are left alone. ``method="stored"``
    (eval) keeps the threshold the checkpoint holds.
    """

    def __init__(
        self,
        method: str = "youden",
        target_sensitivity: float = 0.95,
        fixed_threshold: float = 0.5,
        calibration: str = "temperature",
    ) -> None:
        self.method = method
        self.target_sensitivity = target_sensitivity
        self.fixed_threshold = fixed_threshold
        self.calibration = calibration
        self.positive: int | None = None
        self.val_outputs = Outputs()
        self.test_metrics: MetricCollection | None = None
        self.chosen: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.positive = pl_module.positive_index

    def _probs_targets(self, outputs: StepOutput, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        probs = outputs["logits"].float().softmax(-1)[:, self.positive]
        return probs, (batch[1] == self.positive).long()

    # -- validation: choose ---------------------------------------------------------------------------
    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: StepOutput,
        batch: Batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.positive is not None and self.method != "stored" and not trainer.sanity_checking:
            logits = outputs["logits"].float()
            self.val_outputs.to(logits.device).update(logits, batch[1])

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.positive is None or trainer.sanity_checking or not self.val_outputs.update_called:
            return
        logits, labels = self.val_outputs.compute()
        self.val_outputs.reset()
        if self.calibration == "temperature":
            raw = logits * pl_module.temperature.to(logits.device)  # the steps divided them by the last fit
            pl_module.temperature.fill_(fit_temperature(raw, labels))
            logits = pl_module.calibrated(raw)
            pl_module.log("val/temperature", float(pl_module.temperature))
        probs, targets = logits.softmax(-1)[:, self.positive], (labels == self.positive).long()
        method = self.method
        if method != "fixed" and targets.min() == targets.max():
            rank_zero_warn(
                f"the validation data hold one class only: no {method} threshold exists, using "
                f"eval.fixed_threshold={self.fixed_threshold:g}"
            )
            method = "fixed"
        threshold = select_threshold(probs, targets, method, self.target_sensitivity, self.fixed_threshold)
        pl_module.threshold.fill_(threshold)
        self.chosen = {
            "threshold": float(pl_module.threshold),
            "method": method,
            "description": describe(method, self.target_sensitivity, self.fixed_threshold),
            "target_sensitivity": self.target_sensitivity,
            "fixed_threshold": self.fixed_threshold,
            "epoch": trainer.current_epoch,
            "validation_samples": len(targets),
            "temperature": float(pl_module.temperature),
        }
        pl_module.log(operating_point_name("val", "threshold"), float(pl_module.threshold))

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.chosen is not None:
            checkpoint[CHECKPOINT_KEY] = dict(self.chosen)

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.chosen = checkpoint.get(CHECKPOINT_KEY, self.chosen)

    # -- test: apply ------------------------------------------------------------------------------------
    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.positive is not None:
            threshold = float(pl_module.threshold)
            self.test_metrics = operating_point_collection("test", threshold).to(pl_module.device)

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: StepOutput,
        batch: Batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.test_metrics is not None:
            self.test_metrics.update(*self._probs_targets(outputs, batch))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.test_metrics is None or not any(m.update_called for m in self.test_metrics.values()):
            return
        values = dict(self.test_metrics.compute())
        values[operating_point_name("test", "threshold")] = pl_module.threshold.detach().clone()
        pl_module.log_dict(values)
        self.test_metrics.reset()
