"""The evaluation report's pictures, each a small matplotlib figure drawn from test outputs.

Binary tasks (``positive_index`` set) mark the operating point on their curves and call predictions at the
operating threshold; multiclass tasks get one-vs-rest curves and arg-max predictions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on evaluation machines
import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_calibration_error,
    binary_precision_recall_curve,
    binary_roc,
    multiclass_auroc,
    multiclass_calibration_error,
    multiclass_confusion_matrix,
    multiclass_roc,
)
from torchmetrics.utilities.plot import plot_confusion_matrix
from torchvision.utils import make_grid

from xray_cls.evaluation.metrics import CALIBRATION_BINS
from xray_cls.evaluation.threshold import predicted_labels

_SIDE = 3.6  # inches per panel: small PNGs, fast to draw


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def confusion_matrix(
    probs: torch.Tensor,
    targets: torch.Tensor,
    class_names: Sequence[str],
    threshold: float,
    positive: int | None,
) -> Figure:
    """The test predictions' confusion matrix (binary tasks: at the operating threshold)."""
    preds = predicted_labels(probs, threshold, positive)
    counts = multiclass_confusion_matrix(preds, targets, len(class_names))
    title = None if positive is None else f"prediction: {class_names[positive]} when p > {threshold:.3f}"
    return confusion_figure(counts, class_names, title)


def confusion_figure(counts: torch.Tensor, class_names: Sequence[str], title: str | None = None) -> Figure:
    """Counts ``[true, predicted]`` and row-normalised rates (each true class sums to 1) side by side."""
    rates = counts.float() / counts.sum(1, keepdim=True).clamp_min(1)
    side = _SIDE + 0.25 * len(class_names)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side, side), constrained_layout=True)
    plot_confusion_matrix(counts, ax=axes[0], labels=list(class_names))
    plot_confusion_matrix(rates, ax=axes[1], labels=list(class_names))
    axes[0].set_title("counts")
    axes[1].set_title("normalised by true class")
    if title:
        fig.suptitle(title)
    return fig


def roc_curve(
    probs: torch.Tensor,
    targets: torch.Tensor,
    class_names: Sequence[str],
    threshold: float,
    positive: int | None,
    point: Mapping[str, float] | None = None,
) -> Figure:
    """One-vs-rest curves (multiclass), or the positive class's curve with the operating ``point`` (its
    sensitivity and specificity, as the test metrics measured them)."""
    fig, ax = plt.subplots(figsize=(_SIDE, _SIDE), constrained_layout=True)
    if positive is None:
        fpr, tpr, _ = multiclass_roc(probs, targets, len(class_names))
        aurocs = multiclass_auroc(probs, targets, len(class_names), average=None)
        for c, name in enumerate(class_names):
            ax.plot(fpr[c], tpr[c], lw=1, label=f"{name} ({aurocs[c]:.3f})")
        ax.set_title("ROC, one class vs rest (AUROC)")
    else:
        p, y = probs[:, positive], (targets == positive).long()
        fpr, tpr, _ = binary_roc(p, y)
        auroc = binary_auroc(p, y)
        ax.plot(fpr, tpr, lw=1.5, label=f"AUROC {auroc:.3f}")
        if point:
            x, y_point = 1 - point["specificity"], point["sensitivity"]
            ax.plot([x], [y_point], "o", color="crimson", label=f"threshold {threshold:.3f}")
        ax.set_title(f"ROC ({class_names[positive]} positive)")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    ax.set(xlabel="1 - specificity (FPR)", ylabel="sensitivity (TPR)", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower right", fontsize=7)
    return fig


def precision_recall_curve(
    probs: torch.Tensor,
    targets: torch.Tensor,
    class_names: Sequence[str],
    threshold: float,
    positive: int | None,
    point: Mapping[str, float] | None = None,
) -> Figure:
    fig, ax = plt.subplots(figsize=(_SIDE, _SIDE), constrained_layout=True)
    classes = range(len(class_names)) if positive is None else [positive]
    for c in classes:
        p, y = probs[:, c], (targets == c).long()
        precision, recall, _ = binary_precision_recall_curve(p, y)
        ap = binary_average_precision(p, y)
        ax.plot(
            recall, precision, lw=1.5 if positive is not None else 1, label=f"{class_names[c]} (AP {ap:.3f})"
        )
    if positive is not None:
        p, y = probs[:, positive], (targets == positive).long()
        if point:
            ax.plot(
                [point["sensitivity"]],
                [point["ppv"]],
                "o",
                color="crimson",
                label=f"threshold {threshold:.3f}",
            )
        ax.axhline(float(y.float().mean()), ls=":", color="grey", lw=1)  # a random classifier's precision
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title("precision-recall" + ("" if positive is None else f" ({class_names[positive]} positive)"))
    ax.legend(loc="lower left", fontsize=7)
    return fig


def reliability_diagram(probs: torch.Tensor, targets: torch.Tensor, positive: int | None) -> Figure:
    """Observed frequency against predicted probability in the ECE's bins.

    Binary tasks: the positive class's probability against how often the case is positive (as the binary
    ECE is defined); multiclass: the top class's probability against how often it is right.
    """
    if positive is None:
        confidence, hit = probs.max(-1).values, (probs.argmax(-1) == targets).float()
        ece = multiclass_calibration_error(probs, targets, probs.shape[1], n_bins=CALIBRATION_BINS)
        xlabel, ylabel = "confidence (top class probability)", "accuracy"
    else:
        confidence, hit = probs[:, positive].contiguous(), (targets == positive).float()
        ece = binary_calibration_error(confidence, hit.long(), n_bins=CALIBRATION_BINS)
        xlabel, ylabel = "predicted probability of the positive class", "fraction positive"
    edges = torch.linspace(0, 1, CALIBRATION_BINS + 1)
    bins = (torch.bucketize(confidence, edges, right=True) - 1).clamp(0, CALIBRATION_BINS - 1)
    counts = torch.bincount(bins, minlength=CALIBRATION_BINS).float()
    observed = torch.bincount(bins, weights=hit, minlength=CALIBRATION_BINS) / counts.clamp_min(1)
    width = 1 / CALIBRATION_BINS
    fig, ax = plt.subplots(figsize=(_SIDE, _SIDE), constrained_layout=True)
    filled = counts > 0
    ax.bar(edges[:-1][filled], observed[filled], width=width, align="edge", edgecolor="black", lw=0.5)
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1))
    ax.set_title(f"reliability (ECE {ece:.3f}, {CALIBRATION_BINS} bins)")
    return fig


def samples_per_class(samples: dict[int, torch.Tensor], class_names: Sequence[str], per_row: int) -> Figure:
    """One row of test images per class."""
    rows = [c for c in range(len(class_names)) if c in samples]
    fig, axes = plt.subplots(len(rows), 1, figsize=(0.9 * per_row, 1.0 * len(rows)), squeeze=False)
    for ax, c in zip(axes[:, 0], rows, strict=True):
        grid = make_grid(samples[c].float().clamp(0, 1), nrow=per_row, padding=1, pad_value=1.0)
        ax.imshow(grid.permute(1, 2, 0).numpy())
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(class_names[c], rotation=0, ha="right", va="center")
    fig.suptitle("test images by class")
    fig.tight_layout()
    return fig


def titled_grid(images: torch.Tensor, titles: Sequence[str], columns: int, title: str) -> Figure:
    """Images ``[N, C, H, W]`` in [0, 1], each with its own small title."""
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.75 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, text in zip(axes.flat, images, titles, strict=False):
        picture = image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
        ax.imshow(picture[..., 0] if picture.shape[-1] == 1 else picture, cmap="gray", vmin=0, vmax=1)
        ax.set_title(text, fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
