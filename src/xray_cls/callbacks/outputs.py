"""Test outputs for the report: every probability and target (all ranks), and a few images.

Gathered with torchmetrics states, so under DDP every rank computes from the whole split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from xray_cls.evaluation.threshold import predicted_labels
from xray_cls.module import Batch, StepOutput


class Outputs(Metric):
    """Every ``(scores, targets)`` pair seen (probabilities for the report, logits for the operating point),
    concatenated across batches and ranks."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        self.scores.append(scores.float())
        self.targets.append(targets.long())

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        return dim_zero_cat(self.scores), dim_zero_cat(self.targets)


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

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: StepOutput,
        batch: Batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
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
