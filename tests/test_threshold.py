"""Choosing the operating threshold: hand-checked examples, and the promises each method makes."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from torchmetrics.classification import BinaryRecall, BinarySpecificity

from xray_cls.callbacks.operating_point import CHECKPOINT_KEY, OperatingPoint
from xray_cls.errors import UserError
from xray_cls.evaluation.threshold import predicted_labels, select_threshold
from xray_cls.module import ClassificationModule
from xray_cls.validation import validate

# Sorted by score:   0.80 P  0.65 P  0.60 P | 0.55 N  0.40 P  0.30 N  0.20 N  0.10 N  0.05 P
# 5 positives, 4 negatives. Calling positive everything at or above a score gives (sensitivity, specificity):
#   >= 0.80: (1/5, 4/4) J 0.20      >= 0.40: (4/5, 3/4) J 0.55      >= 0.10: (4/5, 0/4) J -0.20
#   >= 0.65: (2/5, 4/4) J 0.40      >= 0.30: (4/5, 2/4) J 0.30      >= 0.05: (5/5, 0/4) J 0.00
#   >= 0.60: (3/5, 4/4) J 0.60 <-   >= 0.20: (4/5, 1/4) J 0.05
#   >= 0.55: (3/5, 3/4) J 0.35
# The threshold returned lies midway between the last score called positive and the next one below.
PROBS = torch.tensor([0.80, 0.65, 0.60, 0.55, 0.40, 0.30, 0.20, 0.10, 0.05])
TARGETS = torch.tensor([1, 1, 1, 0, 1, 0, 0, 0, 1])


def _sensitivity(threshold: float) -> float:
    return float(BinaryRecall(threshold=threshold)(PROBS, TARGETS))


def test_youden_takes_the_point_of_largest_j() -> None:
    threshold = select_threshold(PROBS, TARGETS, "youden")
    assert threshold == pytest.approx((0.60 + 0.55) / 2)
    assert _sensitivity(threshold) == pytest.approx(0.6)
    assert float(BinarySpecificity(threshold=threshold)(PROBS, TARGETS)) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (0.95, (0.05 + 0.0) / 2),  # only calling everything positive reaches 5/5
        (0.80, (0.40 + 0.30) / 2),  # 4/5 is exactly the target: it counts
        (0.75, (0.40 + 0.30) / 2),
        (0.60, (0.60 + 0.55) / 2),
        (0.20, (0.80 + 0.65) / 2),
    ],
)
def test_target_sensitivity_takes_the_highest_threshold_reaching_it(target: float, expected: float) -> None:
    threshold = select_threshold(PROBS, TARGETS, "target_sensitivity", target_sensitivity=target)
    assert threshold == pytest.approx(expected)
    assert _sensitivity(threshold) >= target
    # Any higher threshold that changes a prediction misses the target.
    higher = PROBS[PROBS.gt(threshold)].min()
    assert _sensitivity(float(higher)) < target


def test_fixed_returns_the_fixed_threshold() -> None:
    assert select_threshold(PROBS, TARGETS, "fixed", fixed=0.3) == 0.3


@pytest.mark.parametrize("seed", range(5))
def test_promises_hold_on_random_scores(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, 2, (200,), generator=generator)
    probs = (torch.rand(200, generator=generator) + 0.3 * targets).clamp(0, 1)
    # Every distinct decision on these data: one threshold per gap between sorted scores, plus the ends.
    scores = probs.unique().sort(descending=True).values
    candidates = torch.cat([torch.ones(1), (scores[:-1] + scores[1:]) / 2, scores[-1:] / 2])

    def youden(t: float) -> float:
        return _metric(BinaryRecall, t, probs, targets) + _metric(BinarySpecificity, t, probs, targets) - 1

    best_j = max(youden(float(t)) for t in candidates)
    assert youden(select_threshold(probs, targets, "youden")) == pytest.approx(best_j)
    chosen = select_threshold(probs, targets, "target_sensitivity", target_sensitivity=0.9)
    reaching = [float(t) for t in candidates if _metric(BinaryRecall, float(t), probs, targets) >= 0.9]
    assert _metric(BinaryRecall, chosen, probs, targets) >= 0.9
    assert chosen == pytest.approx(max(reaching))


def _metric(cls: type, threshold: float, probs: torch.Tensor, targets: torch.Tensor) -> float:
    return float(cls(threshold=threshold)(probs, targets))


def test_one_class_only_has_no_threshold() -> None:
    with pytest.raises(ValueError, match="both classes"):
        select_threshold(PROBS, torch.ones_like(TARGETS), "youden")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.threshold=best", "eval.threshold='best'; allowed: youden | target_sensitivity | fixed"),
        ("eval.threshold=stored", "eval.threshold='stored'"),  # only eval and predict have a stored one
        ("eval.target_sensitivity=1.5", "eval.target_sensitivity=1.5"),
        ("eval.fixed_threshold=-0.1", "eval.fixed_threshold=-0.1"),
    ],
)
def test_bad_settings_are_refused_with_the_key(make_cfg, override: str, message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        validate(make_cfg(override))


def test_predicted_labels_call_the_positive_class_above_the_threshold() -> None:
    probs = torch.tensor([[0.7, 0.3], [0.8, 0.2], [0.4, 0.6]])
    assert predicted_labels(probs, 0.25, positive_index=1).tolist() == [1, 0, 1]
    # The positive class may be the first one.
    assert predicted_labels(probs, 0.75, positive_index=0).tolist() == [1, 0, 1]
    # Multiclass (or no positive class): the most probable class.
    assert predicted_labels(probs, 0.25, positive_index=None).tolist() == [0, 0, 1]


def _validate(callback, module, probs: torch.Tensor, targets: torch.Tensor, epoch: int = 3) -> None:
    """One validation epoch as the Trainer drives the callback, with logits giving ``probs`` to class 1."""
    trainer = SimpleNamespace(sanity_checking=False, current_epoch=epoch)
    logits = torch.stack([1 - probs, probs], dim=1).log()
    callback.setup(trainer, module, "fit")
    for chunk in range(0, len(targets), 4):  # a few batches
        batch = (None, targets[chunk : chunk + 4])
        callback.on_validation_batch_end(trainer, module, {"logits": logits[chunk : chunk + 4]}, batch, 0)
    callback.on_validation_epoch_end(trainer, module)


def _module(class_names: list[str]) -> ClassificationModule:
    net = {"_target_": "xray_cls.models.scratch.SimpleCNN", "in_channels": 1, "image_size": 8}
    adam = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}
    return ClassificationModule({**net, "num_classes": len(class_names)}, class_names, adam)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")  # no Trainer here
def test_operating_point_callback_stores_the_threshold_and_how() -> None:
    module, callback = _module(["normal", "pneumonia"]), OperatingPoint("youden", calibration="none")
    _validate(callback, module, PROBS, TARGETS)
    assert float(module.threshold) == pytest.approx((0.60 + 0.55) / 2)
    checkpoint: dict = {}
    callback.on_save_checkpoint(None, module, checkpoint)
    assert checkpoint[CHECKPOINT_KEY]["method"] == "youden" and checkpoint[CHECKPOINT_KEY]["epoch"] == 3
    assert checkpoint[CHECKPOINT_KEY]["threshold"] == pytest.approx(float(module.threshold))

    # Validation data of one class: no ROC, so the fixed threshold, and the record says so.
    callback = OperatingPoint("target_sensitivity", fixed_threshold=0.4, calibration="none")
    with pytest.warns(UserWarning, match="one class only"):
        _validate(callback, module, PROBS, torch.zeros_like(TARGETS))
    assert float(module.threshold) == pytest.approx(0.4)
    assert callback.chosen["method"] == "fixed"


def test_operating_point_callback_leaves_multiclass_tasks_alone() -> None:
    module, callback = _module(["a", "b", "c"]), OperatingPoint()
    callback.setup(None, module, "fit")
    assert callback.positive is None
    callback.on_validation_epoch_end(SimpleNamespace(sanity_checking=False), module)
    assert float(module.threshold) == 0.5 and callback.chosen is None
