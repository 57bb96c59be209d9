"""Every figure of a report, drawn from the test outputs and saved as PNG and to TensorBoard."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from xray_cls.callbacks.outputs import Collected
from xray_cls.evaluation import figures as draw
from xray_cls.evaluation.gradcam import gradcam, overlay
from xray_cls.evaluation.metrics import operating_point_name
from xray_cls.evaluation.threshold import predicted_labels
from xray_cls.tracking import log_figures

# File stem -> caption, in report order.
CAPTIONS = {
    "confusion_matrix": "Confusion matrix",
    "roc": "ROC curve",
    "precision_recall": "Precision-recall curve",
    "reliability": "Reliability diagram",
    "samples": "Test images by class",
    "misclassified": "Most confidently misclassified test images",
    "gradcam": "Grad-CAM of the predicted class",
}


def draw_figures(
    collected: Collected,
    module: torch.nn.Module,
    class_names: Sequence[str],
    threshold: float,
    positive: int | None,
    gradcam_per_class: int,
    metrics: Mapping[str, Any],
) -> dict[str, Figure]:
    """Every figure of the report, keyed by file stem. ``module`` must be the plain (un-augmented) model;
    the curves mark the operating point with the test ``metrics`` measured there."""
    probs, targets = collected.probs, collected.targets
    point = operating_point(metrics)
    figures = {
        "confusion_matrix": draw.confusion_matrix(probs, targets, class_names, threshold, positive),
        "roc": draw.roc_curve(probs, targets, class_names, threshold, positive, point),
        "precision_recall": draw.precision_recall_curve(
            probs, targets, class_names, threshold, positive, point
        ),
        "reliability": draw.reliability_diagram(probs, targets, positive),
    }
    if collected.samples:
        per_row = max(len(s) for s in collected.samples.values())
        figures["samples"] = draw.samples_per_class(collected.samples, class_names, per_row)
    if collected.mistakes is not None and len(collected.mistakes):
        titles = [
            _caption(class_names, int(t), int(pred), p)
            for t, pred, p in zip(
                collected.mistake_targets,
                predicted_labels(collected.mistake_probs, threshold, positive),
                collected.mistake_probs,
                strict=True,
            )
        ]
        figures["misclassified"] = draw.titled_grid(
            collected.mistakes,
            titles,
            columns=8,
            title="most confidently misclassified (true class least likely)",
        )
    if gradcam_per_class > 0 and collected.samples:
        figures["gradcam"] = _gradcam_figure(
            module, collected, class_names, threshold, positive, gradcam_per_class
        )
    return figures


def _gradcam_figure(
    module: torch.nn.Module,
    collected: Collected,
    class_names: Sequence[str],
    threshold: float,
    positive: int | None,
    per_class: int,
) -> Figure:
    images = torch.cat([s[:per_class] for s in collected.samples.values()])
    targets = torch.cat([torch.full((len(s[:per_class]),), c) for c, s in collected.samples.items()])
    device = next(module.parameters()).device
    module.eval()
    with torch.no_grad():
        probs = module.probabilities(images.to(device)).cpu()
    preds = predicted_labels(probs, threshold, positive)
    maps = gradcam(module, images, preds)
    titles = [
        _caption(class_names, int(t), int(p), pr) for t, p, pr in zip(targets, preds, probs, strict=True)
    ]
    return draw.titled_grid(
        overlay(images, maps), titles, columns=per_class, title="Grad-CAM, predicted class"
    )


def operating_point(metrics: Mapping[str, Any]) -> dict[str, float] | None:
    """Sensitivity, specificity and PPV at the operating threshold (``test/op/*``; ``test/*`` when no
    threshold was chosen, which leaves it at 0.5); None for multiclass tasks."""
    for prefix in (operating_point_name("test", ""), "test/"):
        if all(f"{prefix}{name}" in metrics for name in _POINT):
            return {name: float(metrics[f"{prefix}{name}"]) for name in _POINT}
    return None


_POINT = ("sensitivity", "specificity", "ppv")


def _caption(class_names: Sequence[str], true: int, pred: int, probs: torch.Tensor) -> str:
    return f"true {class_names[true]} ({probs[true]:.2f})\npred {class_names[pred]} ({probs[pred]:.2f})"


def write_figures(
    figures: Mapping[str, Figure], folder: Path, loggers: Sequence[Logger], step: int = 0
) -> dict[str, Path]:
    """Each figure as ``folder/<name>.png``, for each TensorBoard logger as ``eval/<name>`` and for each
    MLflow logger as the artifact ``figures/<name>.png``."""
    paths = {}
    for name, fig in figures.items():
        paths[name] = draw.save(fig, folder / f"{name}.png")
        for logger in loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure(f"eval/{name}", fig, step, close=False)
        plt.close(fig)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.flush()  # the trainer has finalised its loggers: nothing else will flush
    log_figures(loggers, paths)
    return paths
