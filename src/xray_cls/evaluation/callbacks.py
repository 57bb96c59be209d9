"""Callbacks that choose the operating threshold on validation data and collect test outputs for the report.

Both gather their data with torchmetrics states, so under DDP every rank computes from the whole split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import Metric, MetricCollection
from torchmetrics.utilities import dim_zero_cat

from xray_cls.evaluation.metrics import operating_point_collection, operating_point_name
from xray_cls.evaluation.threshold import describe, predicted_labels, select_threshold

# Where a checkpoint records how its threshold buffer was chosen (beside Lightning's own keys).
CHECKPOINT_KEY = "operating_point"


class Outputs(Metric):
    """Every ``(probabilities, targets)`` pair seen, concatenated across batches and ranks."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, probs: torch.Tensor, targets: torch.Tensor) -> None:
        self.probs.append(probs.float())
        self.targets.append(targets.long())

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        return dim_zero_cat(self.probs), dim_zero_cat(self.targets)


class OperatingPoint(L.Callback):
    """Binary tasks: choose the operating threshold at each validation epoch end and test at it.

    The threshold goes into the module's ``threshold`` buffer, which every checkpoint saves, so the best
    checkpoint carries the threshold of its own epoch; ``checkpoint["operating_point"]`` records how it was
    chosen. At test time the thresholded metrics at the stored threshold are logged as ``test/op/<name>``
    beside the module's own ``test/<name>`` at 0.5. Multiclass tasks are left alone. ``method="stored"``
    (eval) keeps the threshold the checkpoint holds.
    """

    def __init__(
        self, method: str = "youden", target_sensitivity: float = 0.95, fixed_threshold: float = 0.5
    ) -> None:
        self.method = method
        self.target_sensitivity = target_sensitivity
        self.fixed_threshold = fixed_threshold
        self.positive: int | None = None
        self.val_outputs = Outputs()
        self.test_metrics: MetricCollection | None = None
        self.chosen: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.positive = pl_module.positive_index

    def _probs_targets(self, outputs: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        probs = outputs["logits"].float().softmax(-1)[:, self.positive]
        return probs, (batch[1] == self.positive).long()

    # -- validation: choose ---------------------------------------------------------------------------
    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if self.positive is not None and self.method != "stored" and not trainer.sanity_checking:
            probs, targets = self._probs_targets(outputs, batch)
            self.val_outputs.to(probs.device).update(probs, targets)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.positive is None or trainer.sanity_checking or not self.val_outputs.update_called:
            return
        probs, targets = self.val_outputs.compute()
        self.val_outputs.reset()
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

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.test_metrics is not None:
            self.test_metrics.update(*self._probs_targets(outputs, batch))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.test_metrics is None or not any(m.update_called for m in self.test_metrics.values()):
            return
        values = dict(self.test_metrics.compute())
        values[operating_point_name("test", "threshold")] = pl_module.threshold.detach().clone()
        pl_module.log_dict(values)
        self.test_metrics.reset()


@dataclass
class Collected:
    """What the report's figures need from a test run."""

    probs: torch.Tensor  # [N, C], every test sample of every rank
    targets: torch.Tensor  # [N]
    samples: dict[int, torch.Tensor] = field(default_factory=dict)  # class -> images [k, C, H, W] in [0, 1]
    mistakes: torch.Tensor | None = None  # images [m, C, H, W], most confidently wrong first
    mistake_probs: torch.Tensor | None = None  # [m, C]
    mistake_targets: torch.Tensor | None = None  # [m]
    # [N] the patient of each test sample, from the data module's test split where the data set knows them
    # (SplitView.groups): the confidence intervals then resample patients, not images.
    groups: np.ndarray | None = None


class TestOutputs(L.Callback):
    """Collects the test probabilities and targets (all ranks) and a few images (this rank's only: under DDP
    rank 0 may see no image of some class, which the figures then leave out).

    Kept images: the first ``per_class`` of each class, and the ``misclassified`` test images whose true class
    got the lowest probability. Binary tasks call a prediction at the module's stored threshold.
    """

    def __init__(self, per_class: int = 8, misclassified: int = 16) -> None:
        self.per_class, self.misclassified = per_class, misclassified
        self.outputs = Outputs()
        self.collected: Collected | None = None
        self._samples: dict[int, list[torch.Tensor]] = {}
        self._mistakes: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.outputs.reset()
        self._samples = {c: [] for c in range(len(pl_module.class_names))}
        self._mistakes = None
        self._threshold = float(pl_module.threshold)
        self._positive = pl_module.positive_index

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        images, targets = batch
        probs = outputs["logits"].float().softmax(-1)
        self.outputs.to(probs.device).update(probs, targets)
        images, probs, targets = images.detach().cpu(), probs.cpu(), targets.cpu()
        for c, kept in self._samples.items():
            need = self.per_class - sum(len(k) for k in kept)
            if need > 0 and (targets == c).any():
                kept.append(images[targets == c][:need])
        self._keep_mistakes(images, probs, targets)

    def _keep_mistakes(self, images: torch.Tensor, probs: torch.Tensor, targets: torch.Tensor) -> None:
        wrong = predicted_labels(probs, self._threshold, self._positive) != targets
        batch = (images[wrong], probs[wrong], targets[wrong])
        if self._mistakes is not None:
            batch = tuple(torch.cat(pair) for pair in zip(self._mistakes, batch, strict=True))
        true_prob = batch[1].gather(1, batch[2][:, None])[:, 0]
        keep = true_prob.argsort()[: self.misclassified]
        self._mistakes = (batch[0][keep], batch[1][keep], batch[2][keep])

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.outputs.update_called:
            return
        probs, targets = self.outputs.compute()  # every rank joins the gather
        mistakes = self._mistakes or (None, None, None)
        self.collected = Collected(
            probs=probs.cpu(),
            targets=targets.cpu(),
            samples={c: torch.cat(kept) for c, kept in self._samples.items() if kept},
            mistakes=mistakes[0],
            mistake_probs=mistakes[1],
            mistake_targets=mistakes[2],
            groups=collected_groups(trainer, targets.cpu()),
        )


def collected_groups(trainer: L.Trainer, targets: torch.Tensor) -> np.ndarray | None:
    """The patient of each collected test sample: the data module's test split's ``groups``. They line up with
    the collected outputs when one process tested the split in order (test loaders never shuffle), over the
    whole split or its first ``len(targets)`` samples (``trainer.limit_test_batches``). Under DDP the ranks'
    samples come interleaved and padded: then None, as for data sets without patient identifiers."""
    splits = getattr(trainer.datamodule, "splits", None) or {}
    view = splits.get("test")
    groups = getattr(view, "groups", None)
    if groups is None:
        return None
    n = len(targets)
    if trainer.world_size > 1 or len(view) < n or not np.array_equal(view.labels[:n], targets.numpy()):
        rank_zero_warn(
            "the test outputs do not line up with the test split's patients (DDP, or a reordered loader): "
            "the confidence intervals resample images, not patients"
        )
        return None
    return np.asarray(groups[:n])
