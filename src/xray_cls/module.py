"""One LightningModule for every classifier: any ``net``, loss, optimizer and scheduler from config."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torchmetrics import MaxMetric, MeanMetric, Metric

from xray_cls.callbacks.finetune import finetune_callback
from xray_cls.errors import UserError
from xray_cls.evaluation.metrics import ClassificationMetrics
from xray_cls.models.classifier import Classifier
from xray_cls.optim import param_groups
from xray_cls.runtime import build

log = logging.getLogger(__name__)

STAGES = ("train", "val", "test")


Batch = tuple[torch.Tensor, torch.Tensor]  # float images [N, C, H, W] in [0, 1], class indices [N]


class StepOutput(TypedDict):
    """What the validation and test steps return: callbacks read the batch's logits from it."""

    loss: torch.Tensor
    logits: torch.Tensor  # detached, [N, C], divided by the module's temperature (softmax: calibrated)


def positive_index(class_names: Sequence[str], positive_class: str | None) -> int | None:
    """The positive class of a binary task (``positive_class``, else the last class); None for multiclass."""
    if len(class_names) != 2:
        return None
    return 1 if positive_class is None else list(class_names).index(positive_class)


class ClassificationModule(L.LightningModule):
    """Takes float images in [0, 1]; normalises them, runs ``net`` and logs ``stage/metric`` values.

    ``model/*.yaml`` is this class's config: train builds it with one ``instantiate``, and its arguments (the
    model node, resolved) are saved as hyperparameters in every checkpoint, so eval and predict rebuild the
    module from the checkpoint alone. Arguments are plain configs: ``net``, ``optimizer`` (partial) and
    ``scheduler.factory`` (partial) are instantiated here.
    """

    def __init__(
        self,
        net: Mapping[str, Any],
        class_names: Sequence[str],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        finetune: Mapping[str, Any] | None = None,
        positive_class: str | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        dataset_stats: Mapping[str, Sequence[float]] | None = None,
        label_smoothing: float = 0.0,
        monitor: Mapping[str, str] | None = None,
        nonfinite_loss: str = "stop",
        compile: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)  # hparams.py logs the run's own selection of them
        network: Classifier = build(net)
        if channels_last:
            network = network.to(memory_format=torch.channels_last)
        if compile:
            network.compile()
        self.net = network
        self.class_names = list(class_names)
        self.finetune = {"mode": "full", "unfreeze_at_epoch": 1, "backbone_lr_mult": 1.0, **(finetune or {})}
        monitor = monitor or {"metric": "val/acc", "mode": "max"}
        self.monitor = monitor["metric"]
        self.channels_last = channels_last
        self.nonfinite_loss = nonfinite_loss
        # Explicit mean/std, else the pretrained weights' own statistics, else the data set's.
        stats = (mean, std) if mean is not None else network.input_stats
        if stats is None:
            stats = ((dataset_stats or {}).get("mean", (0.5,)), (dataset_stats or {}).get("std", (0.5,)))
        self.register_buffer("mean", torch.tensor(list(stats[0]), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(stats[1]), dtype=torch.float32).view(1, -1, 1, 1))
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.positive_index = positive_index(self.class_names, positive_class)
        # Keyed "<stage>_..." because a bare "train" would shadow nn.Module.train.
        self.metrics = nn.ModuleDict(
            {
                f"{s}_metrics": ClassificationMetrics(
                    self.class_names, self.positive_index, full=s != "train"
                )
                for s in STAGES
            }
        )
        self.losses = nn.ModuleDict({f"{s}_loss": MeanMetric() for s in STAGES})
        best = MaxMetric if monitor["mode"] == "max" else _MinMetric
        self.best = nn.ModuleDict({"acc": MaxMetric(), "monitor": best()})
        # Training accumulators and best values go into checkpoints, so a run resumed mid-epoch ends with the
        # same numbers as an unbroken one.
        resumable = [*self.metrics["train_metrics"].modules(), self.losses["train_loss"], *self.best.values()]
        for metric in resumable:
            if isinstance(metric, Metric):
                metric.persistent(True)
        # Operating threshold of binary tasks, chosen on validation data at every validation epoch by the
        # OperatingPoint callback (saved with the checkpoint); 0.5 until then.
        self.register_buffer("threshold", torch.tensor(0.5))
        # Temperature scaling of the logits, fitted on validation data by the same callback (1: none).
        # Training sees raw logits; validation, test, eval and predict calibrated ones (:meth:`calibrated`).
        self.register_buffer("temperature", torch.tensor(1.0))

    def configure_callbacks(self) -> list[L.Callback]:
        """The fine-tuning strategy's callback: Lightning adds it to the trainer's."""
        callback = finetune_callback(self.finetune["mode"], self.finetune["unfreeze_at_epoch"])
        return [] if callback is None else [callback]

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        weights = getattr(datamodule, "class_weights", None)
        if weights is not None:
            # Not saved: a checkpoint must load into a module built without the training data (eval, predict).
            self.criterion.register_buffer("weight", weights.to(self.device), persistent=False)
            log.info("class weights in the loss: %s", weights.tolist())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = (images - self.mean) / self.std
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def calibrated(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` divided by the temperature fitted on validation data: their softmax is calibrated."""
        return logits / self.temperature

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities ``[N, C]`` of float images in [0, 1]."""
        return self.calibrated(self(images).float()).softmax(-1)

    # -- steps --------------------------------------------------------------------------------------------
    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> StepOutput | None:
        images, targets = batch
        logits = self(images)
        loss = self.criterion(logits, targets)
        if stage == "train" and not torch.isfinite(loss):
            self._nonfinite_loss(loss)
            return None  # Lightning skips the optimizer step of a batch whose step returns None
        self.losses[f"{stage}_loss"].update(loss.detach(), weight=len(targets))
        if stage != "train":
            logits = self.calibrated(logits)
        self.metrics[f"{stage}_metrics"].update(logits.detach(), targets)
        return StepOutput(loss=loss, logits=logits.detach())

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        if batch_idx == 0 and self.current_epoch == 0:
            self._log_image_grid(batch[0])
        output = self._step(batch, "train")
        if output is None:
            return None
        self.log("train/loss_step", output["loss"], prog_bar=True, on_step=True, on_epoch=False)
        return output["loss"]  # the loss alone: Lightning then has no dict of outputs to walk every step

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> StepOutput | None:
        return self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> StepOutput | None:
        return self._step(batch, "test")

    def _nonfinite_loss(self, loss: torch.Tensor) -> None:
        where = f"epoch {self.current_epoch}, step {self.global_step}"
        if self.nonfinite_loss == "skip":
            log.warning("skipped a batch with a non-finite loss (%s) at %s", loss.item(), where)
            return
        checkpoint = self.trainer.checkpoint_callback
        last_good = (checkpoint.last_model_path or checkpoint.best_model_path) if checkpoint else ""
        for callback in self.trainer.checkpoint_callbacks:  # keep the last good checkpoint as it is
            callback.save_on_exception = False
        raise NonFiniteLossError(
            f"training stopped: the loss became {loss.item()} at {where}. The last good checkpoint is "
            f"{last_good or 'none (no epoch finished yet)'}. Lower optimizer.lr, set "
            "trainer.gradient_clip_val, or skip such batches with on_nonfinite_loss=skip."
        )

    # -- epoch ends ---------------------------------------------------------------------------------------
    def _epoch_values(self, stage: str) -> dict[str, torch.Tensor]:
        values = {f"{stage}/{k}": v for k, v in self.metrics[f"{stage}_metrics"].compute().items()}
        values[f"{stage}/loss"] = self.losses[f"{stage}_loss"].compute()
        self.metrics[f"{stage}_metrics"].reset()
        self.losses[f"{stage}_loss"].reset()
        return values

    def on_train_epoch_end(self) -> None:
        self.log_dict(self._epoch_values("train"))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            # The sanity check only shows that validation runs. Its few batches may hold one class, and
            # metrics computed on them would warn (torchmetrics: "No positive samples ...") about numbers
            # nobody sees.
            self.metrics["val_metrics"].reset()
            self.losses["val_loss"].reset()
            return
        values = self._epoch_values("val")
        self.best["acc"].update(values["val/acc"])
        values["val/acc_best"] = self.best["acc"].compute()
        if self.monitor in values and self.monitor != "val/acc":
            self.best["monitor"].update(values[self.monitor])
            values[f"{self.monitor}_best"] = self.best["monitor"].compute()
        monitored = values.pop(self.monitor, None)
        self.log_dict(values)
        if monitored is not None:
            self.log(self.monitor, monitored, prog_bar=True)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self._epoch_values("test"))

    def _log_image_grid(self, images: torch.Tensor) -> None:
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                from torchvision.utils import make_grid

                grid = make_grid(images[:32].float().clamp(0, 1).cpu(), nrow=8)
                logger.experiment.add_image("train/samples", grid, self.global_step)

    # -- optimisation -------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        config, schedule = self.hparams.optimizer, self.hparams.scheduler or {}
        groups = param_groups(
            self.net, config["lr"], self.finetune["backbone_lr_mult"], self.finetune["mode"]
        )
        optimizer = build(config)(groups)
        if schedule.get("factory") is None:
            return optimizer
        interval = schedule.get("interval", "epoch")
        total = self.trainer.estimated_stepping_batches if interval == "step" else self.trainer.max_epochs
        if not 0 < total < float("inf"):
            raise UserError(
                f"invalid config: trainer.max_epochs={self.trainer.max_epochs}, but this schedule needs the "
                "length of training; allowed: max_epochs >= 1, or trainer.max_steps, or scheduler=none"
            )
        scheduler = build(schedule["factory"])(optimizer, total_steps=int(total))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "interval": interval,
                "monitor": schedule.get("monitor", self.monitor),
            },
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Random states make a resumed run draw the same augmentations and dropout masks as an unbroken one.
        rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint.setdefault("xray_cls", {})["rng"] = rng

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rng = checkpoint.get("xray_cls", {}).get("rng")
        if rng and self.trainer.state.fn == "fit":
            torch.set_rng_state(rng["torch"])
            random.setstate(rng["python"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite."""


class _MinMetric(MaxMetric):
    """The smallest value seen (for metrics where lower is better, such as a loss)."""

    def update(self, value: torch.Tensor) -> None:  # type: ignore[override]
        super().update(-value)

    def compute(self) -> torch.Tensor:
        return -super().compute()
