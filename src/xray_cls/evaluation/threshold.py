"""The operating threshold of a binary classifier: chosen on validation data, applied unchanged to test data.

Every threshold here follows torchmetrics' convention: a prediction is positive when its probability is
strictly greater than the threshold.
"""

from __future__ import annotations

import torch
from torchmetrics.functional.classification import binary_roc

from xray_cls.validation import THRESHOLD_METHODS as METHODS

DESCRIPTIONS = {
    "youden": "Youden's J: the threshold maximising sensitivity + specificity - 1",
    "target_sensitivity": "the highest threshold whose sensitivity is at least {target_sensitivity:g}",
    "fixed": "fixed at {fixed_threshold:g}",
}


def describe(method: str, target_sensitivity: float, fixed_threshold: float) -> str:
    """One human sentence for how ``method`` chooses the threshold."""
    return DESCRIPTIONS[method].format(target_sensitivity=target_sensitivity, fixed_threshold=fixed_threshold)


def select_threshold(
    probs: torch.Tensor,
    targets: torch.Tensor,
    method: str = "youden",
    target_sensitivity: float = 0.95,
    fixed: float = 0.5,
) -> float:
    """The operating threshold for positive-class ``probs`` against 0/1 ``targets``.

    ``youden`` maximises sensitivity + specificity - 1 (the highest such threshold on ties);
    ``target_sensitivity`` takes the highest threshold whose sensitivity is >= ``target_sensitivity``;
    ``fixed`` returns ``fixed``.

    Any threshold between two adjacent distinct scores makes the same predictions on these data; the one
    returned lies midway between them, so that probabilities recomputed elsewhere (another device, another
    batch size) that differ in the last bits do not flip a validation sample to the other side.
    Raises ValueError when ``targets`` lack either class (then no sensitivity or specificity exists).
    """
    if method == "fixed":
        return float(fixed)
    targets = targets.long()
    if targets.min() == targets.max():
        raise ValueError("choosing a threshold needs both classes among the targets")
    # cuts[i] is the ROC point "positive iff prob >= cuts[i]"; cuts descend, cuts[0] = 1 predicts none.
    fpr, tpr, cuts = binary_roc(probs.float(), targets)
    cuts = cuts.double()
    below = torch.cat([cuts[1:], cuts.new_zeros(1)])
    thresholds = (cuts + below) / 2
    if method == "youden":
        best = int(torch.argmax(tpr - fpr))  # argmax returns the first maximum: the highest threshold
    elif method == "target_sensitivity":
        # tpr only grows as the threshold falls; the tolerance keeps 0.95 reachable despite rounding.
        best = int(torch.nonzero(tpr >= target_sensitivity - 1e-6)[0])
    else:  # validation.py refuses other methods in configs
        raise ValueError(f"unknown threshold method {method!r}; one of {', '.join(METHODS)}")
    return float(thresholds[best])


def predicted_labels(probs: torch.Tensor, threshold: float, positive_index: int | None) -> torch.Tensor:
    """Class indices for ``probs`` ``[N, C]``: the positive class when its probability > ``threshold``
    (binary tasks, ``positive_index`` set), else the most probable class."""
    if positive_index is None:
        return probs.argmax(-1)
    negative_index = 1 - positive_index
    positive = probs[:, positive_index] > threshold
    return torch.where(positive, positive_index, negative_index)
