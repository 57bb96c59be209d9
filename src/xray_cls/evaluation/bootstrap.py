"""Confidence intervals of the headline test metrics: a seeded percentile bootstrap over the test images, or
over the test patients where the data set knows which image belongs to whom.

A resample draws as many units (images, or patients) as the test split has, with replacement; a patient
drawn twice brings all of their images twice. Each resample is therefore a weight per test image (how often
it was drawn), and every metric is a weighted sum over the images, so that all resamples are evaluated at
once, as matrix products and cumulative sums over a ``[N images, B resamples]`` weight matrix. (One
torchmetrics call per resample would take about 1 s for 1,000 binary resamples of 600 images and 20 s for
a 10-class macro AUROC on this project's 2-core machine, and patient resamples differ in size.)

The definitions are torchmetrics' own: thresholded metrics from its stat scores (positive when the
probability is strictly above the threshold), AUROC as the area under its trapezoidal ROC curve (ties count
one half), average precision as its step-wise sum over the distinct scores, macro AUROC as the mean of the
one-vs-rest AUROCs over the classes present; ``tests/test_bootstrap.py`` checks each against
``torchmetrics.functional.classification`` on explicit resamples.

A resample in which a metric is undefined (AUROC with one class only, a PPV without a positive call) is left
out of that metric's interval; ``used`` counts the resamples that remained.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from xray_cls.evaluation.metrics import operating_point_name

# The metrics that get intervals. Binary: these thresholded ones at the operating threshold (test/op/<name>),
# and the threshold-free AUROC and AP; multiclass: accuracy and macro one-vs-rest AUROC.
THRESHOLDED = ("sensitivity", "specificity", "ppv", "npv", "acc", "f1")
THRESHOLD_FREE = ("auroc", "ap")

# Resamples are evaluated in chunks of about this many (resample, image) weights: 16 MB of float64.
_CHUNK_ELEMENTS = 1 << 21


@dataclass
class Intervals:
    """Percentile intervals per metric key (``test/auroc``, ``test/op/sensitivity``, ...)."""

    low: dict[str, float]
    high: dict[str, float]
    point: dict[str, float]  # each metric on the whole test split, by the same code
    used: dict[str, int]  # resamples in which the metric was defined (no interval where 0)
    resamples: int
    confidence: float
    seed: int
    unit: str  # "patient" or "image"
    units: int  # patients (or images) in the test split

    def as_metrics(self) -> dict[str, Any]:
        """``<key>_ci_low`` and ``<key>_ci_high`` for metrics.json; ``bootstrap``: how they were computed."""
        flat: dict[str, Any] = {}
        for key in self.low:
            flat[f"{key}_ci_low"], flat[f"{key}_ci_high"] = self.low[key], self.high[key]
        flat["bootstrap"] = {
            "method": "percentile",
            "resamples": self.resamples,
            "confidence": self.confidence,
            "seed": self.seed,
            "unit": self.unit,
            "units": self.units,
            "used": dict(self.used),
        }
        return flat


def confidence_intervals(
    cfg: DictConfig, module: Any, collected: Any, metrics: Mapping[str, Any]
) -> dict[str, Any]:
    """The intervals of the test metrics in ``metrics``, as metrics.json keys; ``{}`` when switched off.

    ``collected`` is the TestOutputs callback's :class:`~xray_cls.callbacks.outputs.Collected` (its
    ``groups`` make the resampling unit the patient), ``module`` the tested ClassificationModule. Binary
    tasks get the intervals at the operating threshold (``test/op/...``) when it was applied, else at 0.5.
    Settings: ``eval.bootstrap.resamples`` (0: off) and ``eval.bootstrap.confidence``; the seed is ``seed``.
    """
    settings = cfg.eval.bootstrap
    resamples = int(settings.resamples)
    if resamples <= 0 or len(collected.targets) == 0:
        return {}
    positive = module.positive_index
    at_op = positive is not None and operating_point_name("test", "sensitivity") in metrics
    intervals = bootstrap(
        collected.probs,
        collected.targets,
        positive=positive,
        threshold=float(module.threshold) if at_op else 0.5,
        thresholded_prefix=operating_point_name("test", "") if at_op else "test/",
        groups=collected.groups,
        resamples=resamples,
        confidence=float(settings.confidence),
        seed=int(cfg.seed),
    )
    # Intervals only beside values the run reports.
    for key in [k for k in intervals.used if k not in metrics]:
        for values in (intervals.low, intervals.high, intervals.used):
            values.pop(key, None)
    return intervals.as_metrics()


def bootstrap(
    probs: torch.Tensor,
    targets: torch.Tensor,
    *,
    positive: int | None,
    threshold: float = 0.5,
    thresholded_prefix: str = "test/op/",
    groups: np.ndarray | None = None,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Intervals:
    """Percentile intervals of the test metrics of ``probs [N, C]`` against ``targets [N]``.

    ``positive``: the positive class of a binary task (None: multiclass). ``groups [N]``: the patient of each
    image; resampled as whole patients when given. Same inputs and ``seed``, same intervals.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    probs, targets = probs.detach().cpu().float(), targets.detach().cpu().long()
    n = len(targets)
    if n == 0:
        raise ValueError("no test samples to resample")
    names = _names(positive, thresholded_prefix)
    ones = torch.ones(n, 1, dtype=torch.float64)
    point = {
        names[k]: float(v[0]) for k, v in resample_metrics(probs, targets, ones, positive, threshold).items()
    }
    values: dict[str, list[torch.Tensor]] = {key: [] for key in point}
    for weights in resample_weights(n, groups, resamples, seed):
        for name, value in resample_metrics(probs, targets, weights, positive, threshold).items():
            values[names[name]].append(value)

    alpha = (1 - confidence) / 2
    low, high, used = {}, {}, {}
    for key, chunks in values.items():
        value = torch.cat(chunks)
        value = value[~value.isnan()]
        used[key] = len(value)
        if len(value):
            bounds = torch.quantile(value, torch.tensor([alpha, 1 - alpha], dtype=value.dtype))
            low[key], high[key] = float(bounds[0]), float(bounds[1])
    units = n if groups is None else len(np.unique(np.asarray(groups)))
    return Intervals(
        low, high, point, used, resamples, confidence, seed, "image" if groups is None else "patient", units
    )


def resample_weights(n: int, groups: np.ndarray | None, resamples: int, seed: int) -> Iterator[torch.Tensor]:
    """The resamples of ``n`` test images, in chunks of ``[n, chunk]`` float64 weights: how often each image
    is in each resample. Each resample draws as many units as there are, with replacement: images, or with
    ``groups [n]`` patients, whose images all get the patient's count. Seeded by ``seed`` alone."""
    if groups is None:
        unit_of, units = torch.arange(n), n
    else:
        if len(groups) != n:
            raise ValueError(f"{n} test samples but {len(groups)} groups")
        _, inverse = np.unique(np.asarray(groups), return_inverse=True)
        unit_of = torch.from_numpy(inverse.reshape(-1).astype(np.int64))
        units = int(unit_of.max()) + 1 if n else 0
    generator = torch.Generator().manual_seed(seed)
    chunk = max(1, _CHUNK_ELEMENTS // max(n, 1))
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        draws = torch.randint(units, (size, units), generator=generator)
        counts = torch.zeros(size, units, dtype=torch.float64)
        counts.scatter_add_(1, draws, torch.ones(size, units, dtype=torch.float64))
        yield counts.T.contiguous()[unit_of]


def _names(positive: int | None, thresholded_prefix: str) -> dict[str, str]:
    if positive is None:
        return {"acc": "test/acc", "auroc": "test/auroc"}
    return {
        **{name: f"{thresholded_prefix}{name}" for name in THRESHOLDED},
        **{name: f"test/{name}" for name in THRESHOLD_FREE},
    }


def resample_metrics(
    probs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, positive: int | None, threshold: float
) -> dict[str, torch.Tensor]:
    """Each metric for each column of ``weights [N, B]`` (how often each image is in that resample); NaN
    where a resample leaves it undefined."""
    if positive is None:
        correct = (probs.argmax(-1) == targets).double()
        return {
            "acc": _ratio(correct @ weights, weights.sum(0)),
            "auroc": _macro_auroc(probs, targets, weights),
        }
    scores, is_pos = probs[:, positive].contiguous(), targets == positive
    called = scores > threshold  # torchmetrics' binary rule, in the probabilities' own precision
    tp, fp, fn, tn = (
        (is_pos & called).double() @ weights,
        (~is_pos & called).double() @ weights,
        (is_pos & ~called).double() @ weights,
        (~is_pos & ~called).double() @ weights,
    )
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "acc": _ratio(tp + tn, tp + fp + fn + tn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "auroc": _auroc(scores, is_pos, weights),
        "ap": _average_precision(scores, is_pos, weights),
    }


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.nan)


def _auroc(scores: torch.Tensor, is_pos: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted AUROC of one score against 0/1 targets, per column of ``weights``: the area under the
    trapezoidal ROC curve, i.e. the weighted share of (positive, negative) pairs that the score ranks right,
    ties counting one half. NaN where a resample holds one class only."""
    negatives, order = scores[~is_pos].sort()
    # below[k]: the weight of the k lowest-scoring negatives (below[0] = 0).
    below = torch.zeros(len(negatives) + 1, weights.shape[1], dtype=torch.float64)
    torch.cumsum(weights[torch.nonzero(~is_pos).view(-1)[order]], 0, out=below[1:])
    positives = scores[is_pos]
    lower = below[torch.searchsorted(negatives, positives)]  # negatives scored below each positive
    upper = below[torch.searchsorted(negatives, positives, right=True)]  # ... below or tied with it
    positive_weights = weights[is_pos]
    pairs = (positive_weights * (lower + upper)).sum(0) / 2
    return _ratio(pairs, positive_weights.sum(0) * below[-1])


def _average_precision(scores: torch.Tensor, is_pos: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted average precision per column of ``weights``: the precision at each distinct score (highest
    first; ties share a threshold, as in torchmetrics' precision-recall curve) times the recall it adds. NaN
    where a resample holds no positive."""
    order = scores.argsort(descending=True)
    ranked = scores[order]
    last_of_tie = torch.cat(
        [torch.nonzero(ranked[1:] != ranked[:-1]).view(-1), torch.tensor([len(ranked) - 1])]
    )
    ranked_weights = weights[order]
    positives = ranked_weights * is_pos[order].double()[:, None]
    tps = positives.cumsum(0)[last_of_tie]  # positives at or above each threshold
    called = ranked_weights.cumsum(0)[last_of_tie]  # all images at or above it
    added = tps.diff(dim=0, prepend=torch.zeros(1, weights.shape[1], dtype=torch.float64))
    precision = torch.where(called > 0, tps / called.clamp_min(1e-300), 0.0)
    return _ratio((added * precision).sum(0), tps[-1])


def _macro_auroc(probs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean one-vs-rest AUROC over the classes the test split holds (torchmetrics leaves the absent ones out);
    NaN for a resample that lacks one of them."""
    present = [c for c in range(probs.shape[1]) if (targets == c).any()]
    if len(present) < 2:
        return torch.full((weights.shape[1],), torch.nan, dtype=torch.float64)
    per_class = [_auroc(probs[:, c].contiguous(), targets == c, weights) for c in present]
    return torch.stack(per_class).mean(0)  # NaN as soon as one class is missing from the resample
