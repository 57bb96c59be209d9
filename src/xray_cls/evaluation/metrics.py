"""The metrics of a stage, built once from the task's shape; every name is defined here and nowhere else.

Binary tasks (two classes) report clinical metrics of the positive class: sensitivity, specificity, PPV,
NPV, AUROC, average precision and calibration. Multiclass tasks report accuracy, macro F1, per-class
recall, macro one-vs-rest AUROC and calibration.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn
from torchmetrics import ClasswiseWrapper, MetricCollection
from torchmetrics import classification as tmc


def safe_name(name: str) -> str:
    """A class name usable inside a metric tag (TensorBoard splits tags on '/')."""
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", name)


# Equal-width bins of the expected calibration error (and of eval's reliability diagram).
CALIBRATION_BINS = 15

# Binary tasks also report the thresholded metrics at the operating threshold chosen on validation data,
# as "<stage>/op/<name>", with the threshold itself as "<stage>/op/threshold".
OPERATING_POINT = "op"


def _thresholded(threshold: float) -> dict[str, tmc.BinaryStatScores]:
    # torchmetrics calls a prediction positive when its probability is > threshold (strictly).
    return {
        "acc": tmc.BinaryAccuracy(threshold=threshold),
        "sensitivity": tmc.BinaryRecall(threshold=threshold),
        "specificity": tmc.BinarySpecificity(threshold=threshold),
        "ppv": tmc.BinaryPrecision(threshold=threshold),
        "npv": tmc.BinaryNegativePredictiveValue(threshold=threshold),
        "f1": tmc.BinaryF1Score(threshold=threshold),
    }


def binary_collection(threshold: float = 0.5) -> MetricCollection:
    """Metrics of positive-class probabilities against 0/1 targets, at ``threshold``."""
    return MetricCollection(
        {
            **_thresholded(threshold),
            "auroc": tmc.BinaryAUROC(),
            "ap": tmc.BinaryAveragePrecision(),
            "ece": tmc.BinaryCalibrationError(n_bins=CALIBRATION_BINS),
        }
    )


def operating_point_collection(stage: str, threshold: float) -> MetricCollection:
    """The thresholded binary metrics at the operating ``threshold``, named ``<stage>/op/<name>``."""
    return MetricCollection(_thresholded(threshold), prefix=operating_point_name(stage, ""))


def operating_point_name(stage: str, name: str) -> str:
    """``<stage>/op/<name>``; ``operating_point_name(stage, "threshold")`` is the threshold's own tag."""
    return f"{stage}/{OPERATING_POINT}/{name}"


class ClassificationMetrics(nn.Module):
    """``update(logits, targets)``, ``compute() -> {name: value}``, ``reset()`` for one stage.

    ``positive_index``: the positive class of a binary task (its clinical metrics), None for multiclass.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        positive_index: int | None = None,
        full: bool = True,
        threshold: float = 0.5,
    ) -> None:
        super().__init__()
        num_classes = len(class_names)
        # Binary tasks name their positive class (module.positive_index); multiclass ones have none.
        self.binary = positive_index is not None
        self.positive_index = positive_index
        # The training stage updates every step: skip torchmetrics' per-call input checks there (labels are
        # checked once when the data set is loaded); validation and test keep them.
        multiclass = {"acc": tmc.MulticlassAccuracy(num_classes, average="micro", validate_args=full)}
        if full:
            labels = [safe_name(n) for n in class_names]
            multiclass |= {
                "f1_macro": tmc.MulticlassF1Score(num_classes, average="macro"),
                # Balanced accuracy is the mean of per-class recalls.
                "balanced_acc": tmc.MulticlassAccuracy(num_classes, average="macro"),
                "recall": ClasswiseWrapper(
                    tmc.MulticlassRecall(num_classes, average=None), labels=labels, prefix="recall_"
                ),
            }
            if not self.binary:
                multiclass |= {
                    "auroc": tmc.MulticlassAUROC(num_classes, average="macro"),
                    "ece": tmc.MulticlassCalibrationError(num_classes, n_bins=CALIBRATION_BINS),
                }
        # No compute groups: ClasswiseWrapper's inner recall would share state it never updates.
        self.multiclass = MetricCollection(multiclass, compute_groups=False)
        # Accuracy of the binary collection would repeat the multiclass one: it is dropped from the output.
        self.clinical = binary_collection(threshold) if self.binary and full else None

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.multiclass.update(logits, targets)
        if self.clinical is not None:
            probs = logits.float().softmax(-1)[:, self.positive_index]
            self.clinical.update(probs, (targets == self.positive_index).long())

    def compute(self) -> dict[str, torch.Tensor]:
        values = dict(self.multiclass.compute())
        if self.clinical is not None:
            values |= {k: v for k, v in self.clinical.compute().items() if k != "acc"}
        return values

    def reset(self) -> None:
        self.multiclass.reset()
        if self.clinical is not None:
            self.clinical.reset()
