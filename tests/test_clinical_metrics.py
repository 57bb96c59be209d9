"""The reported metrics against values computed by hand from a few scores."""

from __future__ import annotations

import pytest
import torch

from xray_cls.evaluation.metrics import (
    ClassificationMetrics,
    binary_collection,
    operating_point_collection,
    operating_point_name,
)

# Eight cases, positive = 1, sorted by the positive class's probability.
P = torch.tensor([0.95, 0.85, 0.75, 0.65, 0.45, 0.35, 0.25, 0.05])
Y = torch.tensor([1, 1, 0, 1, 0, 1, 0, 0])


def _logits(p_positive: torch.Tensor, positive_index: int = 1) -> torch.Tensor:
    """Logits whose softmax gives ``p_positive`` to the positive class."""
    probs = torch.stack([1 - p_positive, p_positive], dim=1)
    return (probs if positive_index == 1 else probs.flip(1)).log()


# AUROC: of the 4 x 4 (positive, negative) pairs, the positive scores higher in
# 0.95: 4, 0.85: 4, 0.65: 3 (not above 0.75), 0.35: 2 (above 0.25, 0.05) -> 13 / 16.
AUROC = 13 / 16
# Average precision: precision where each positive is reached, in score order: 1/1, 2/2, 3/4, 4/6.
AP = (1 + 1 + 3 / 4 + 4 / 6) / 4
# ECE, 15 equal bins of width 1/15: the eight scores fall into eight different bins (0.95 in
# [14/15, 1], 0.85 in [12/15, 13/15), ..., 0.05 in [0, 1/15)), so ECE = mean |p - y|.
ECE = (0.05 + 0.15 + 0.75 + 0.35 + 0.45 + 0.65 + 0.25 + 0.05) / 8

# At 0.5 (positive when p > 0.5): called positive 0.95, 0.85, 0.75, 0.65 -> TP 3, FP 1, FN 1, TN 3.
AT_HALF = {"sensitivity": 3 / 4, "specificity": 3 / 4, "ppv": 3 / 4, "npv": 3 / 4, "f1": 3 / 4}
# At 0.4: called positive also 0.45 -> TP 3, FP 2, FN 1, TN 2.
AT_04 = {
    "acc": 5 / 8,
    "sensitivity": 3 / 4,
    "specificity": 2 / 4,
    "ppv": 3 / 5,
    "npv": 2 / 3,
    "f1": 2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4),
}


def _values(collection) -> dict[str, float]:
    return {k: float(v) for k, v in collection.compute().items()}


def test_binary_collection_matches_hand_computation() -> None:
    metrics = binary_collection(0.5)
    metrics.update(P, Y)
    values = _values(metrics)
    assert values == pytest.approx({"acc": 6 / 8, **AT_HALF, "auroc": AUROC, "ap": AP, "ece": ECE})


def test_operating_point_collection_is_named_once_and_thresholded() -> None:
    metrics = operating_point_collection("test", 0.4)
    metrics.update(P, Y)
    values = _values(metrics)
    assert values == pytest.approx({operating_point_name("test", k): v for k, v in AT_04.items()})
    assert set(values) == {f"test/op/{k}" for k in AT_04}


@pytest.mark.parametrize("positive_index", [1, 0])
def test_classification_metrics_report_the_positive_class(positive_index: int) -> None:
    metrics = ClassificationMetrics(["normal", "pneumonia"], positive_index=positive_index)
    metrics.update(_logits(P, positive_index), Y if positive_index == 1 else 1 - Y)
    values = {k: float(v) for k, v in metrics.compute().items()}
    assert {k: values[k] for k in (*AT_HALF, "auroc", "ap", "ece")} == pytest.approx(
        {**AT_HALF, "auroc": AUROC, "ap": AP, "ece": ECE}
    )
    assert values["acc"] == pytest.approx(6 / 8)


def test_ece_averages_within_shared_bins() -> None:
    # Bin [12/15, 13/15) = [0.8, 0.867): 0.81, 0.85, 0.86, mean 0.84, 2 of 3 positive: gap 0.84 - 2/3.
    # Bin [1/15, 2/15) = [0.067, 0.133): 0.10, 0.12, mean 0.11, 1 of 2 positive: gap 0.5 - 0.11.
    probs = torch.tensor([0.81, 0.85, 0.86, 0.10, 0.12])
    targets = torch.tensor([1, 1, 0, 0, 1])
    expected = 3 / 5 * (0.84 - 2 / 3) + 2 / 5 * (0.5 - 0.11)
    metrics = binary_collection()
    metrics.update(probs, targets)
    assert float(metrics.compute()["ece"]) == pytest.approx(expected)


def test_multiclass_metrics_match_hand_computation() -> None:
    probs = torch.tensor([[0.70, 0.20, 0.10], [0.50, 0.30, 0.20], [0.10, 0.08, 0.82], [0.20, 0.75, 0.05]])
    targets = torch.tensor([0, 1, 2, 1])
    # Arg-max predictions 0, 0, 2, 1: the second case (class 1) is called class 0.
    # Per-class (precision, recall): 0 (1/2, 1/1), 1 (1/1, 1/2), 2 (1/1, 1/1); F1 2/3, 2/3, 1.
    # Each class's own probability ranks all its cases above all others: one-vs-rest AUROC 1.
    # Top-class confidences 0.70, 0.50, 0.82, 0.75 in four different bins, right, wrong, right, right.
    metrics = ClassificationMetrics(["a", "b", "c"])
    metrics.update(probs.log(), targets)
    values = {k: float(v) for k, v in metrics.compute().items()}
    assert values == pytest.approx(
        {
            "acc": 3 / 4,
            "balanced_acc": (1 + 1 / 2 + 1) / 3,
            "f1_macro": (2 / 3 + 2 / 3 + 1) / 3,
            "recall_a": 1.0,
            "recall_b": 0.5,
            "recall_c": 1.0,
            "auroc": 1.0,
            "ece": (0.30 + 0.50 + 0.18 + 0.25) / 4,
        }
    )
