"""Confusion matrices of the validation and test sets in TensorBoard."""

from __future__ import annotations

import lightning as L
import matplotlib.pyplot as plt
from lightning.pytorch.loggers import TensorBoardLogger
from torchmetrics.classification import MulticlassConfusionMatrix

from xray_cls.evaluation.figures import confusion_figure
from xray_cls.module import Batch, StepOutput


class ConfusionMatrixFigure(L.Callback):
    """The confusion matrix of the validation and test sets (arg-max predictions) as a TensorBoard figure at
    each epoch end, drawn as the report draws its own."""

    def __init__(self) -> None:
        self.matrices: dict[str, MulticlassConfusionMatrix] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        n = len(pl_module.class_names)
        self.matrices = {s: MulticlassConfusionMatrix(n).to(pl_module.device) for s in ("val", "test")}

    def _update(self, stage: str, pl_module: L.LightningModule, outputs: StepOutput, batch: Batch) -> None:
        matrix = self.matrices[stage].to(pl_module.device)
        matrix.update(outputs["logits"], batch[1])

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: StepOutput,
        batch: Batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking:
            self._update("val", pl_module, outputs, batch)

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: StepOutput,
        batch: Batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._update("test", pl_module, outputs, batch)

    def _draw(self, stage: str, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        matrix = self.matrices[stage]
        if trainer.sanity_checking or not matrix.update_called:
            return
        values = matrix.compute()  # every rank takes part in the sync under DDP
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if loggers and trainer.is_global_zero:
            fig = confusion_figure(values, pl_module.class_names)
            for logger in loggers:
                logger.experiment.add_figure(f"{stage}/confusion_matrix", fig, trainer.global_step)
            plt.close(fig)
        matrix.reset()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._draw("val", trainer, pl_module)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._draw("test", trainer, pl_module)
