"""What an evaluation leaves in its run directory besides metrics.json: PNG figures and report.md."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from omegaconf import DictConfig

from xray_cls.evaluation import figures as draw
from xray_cls.evaluation.callbacks import Collected
from xray_cls.evaluation.gradcam import gradcam, overlay
from xray_cls.evaluation.metrics import CALIBRATION_BINS, operating_point_name
from xray_cls.evaluation.threshold import predicted_labels
from xray_cls.io import write_text_atomic

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

# Metric key -> label, in table order.
_LABELS = {
    "sensitivity": "Sensitivity (recall)",
    "specificity": "Specificity",
    "ppv": "PPV (precision)",
    "npv": "NPV",
    "f1": "F1",
    "acc": "Accuracy",
    "auroc": "AUROC",
    "ap": "Average precision",
    "ece": f"ECE ({CALIBRATION_BINS} bins)",
    "loss": "Cross-entropy loss",
    "f1_macro": "Macro F1",
    "balanced_acc": "Balanced accuracy",
}


@dataclass
class Summary:
    """The facts at the top of the report, also written into metrics.json."""

    data: str
    model: str
    checkpoint: str
    test_samples: int
    class_counts: dict[str, int]
    threshold: float | None  # binary tasks only
    positive_class: str | None
    threshold_how: str | None
    tta: str


def describe_data(cfg: DictConfig) -> str:
    source = cfg.data.source
    name = source.get("dataset") or source._target_.rsplit(".", 1)[-1].removesuffix("Source")
    size = cfg.data.image_size
    return f"{name} ({cfg.data.num_channels}x{size}x{size}, classes {', '.join(cfg.data.class_names)})"


def describe_model(cfg: DictConfig) -> str:
    net = cfg.model.net
    name = net._target_.rsplit(".", 1)[-1]
    return f"{name} {net.arch}" if net.get("arch") else name


def draw_figures(
    collected: Collected,
    module: torch.nn.Module,
    class_names: Sequence[str],
    threshold: float,
    positive: int | None,
    gradcam_per_class: int,
) -> dict[str, Figure]:
    """Every figure of the report, keyed by file stem. ``module`` must be the plain (un-augmented) model."""
    probs, targets = collected.probs, collected.targets
    figures = {
        "confusion_matrix": draw.confusion_matrix(probs, targets, class_names, threshold, positive),
        "roc": draw.roc_curve(probs, targets, class_names, threshold, positive),
        "precision_recall": draw.precision_recall_curve(probs, targets, class_names, threshold, positive),
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
        probs = module(images.to(device)).float().softmax(-1).cpu()
    preds = predicted_labels(probs, threshold, positive)
    maps = gradcam(module, images, preds)
    titles = [
        _caption(class_names, int(t), int(p), pr) for t, p, pr in zip(targets, preds, probs, strict=True)
    ]
    return draw.titled_grid(
        overlay(images, maps), titles, columns=per_class, title="Grad-CAM, predicted class"
    )


def _caption(class_names: Sequence[str], true: int, pred: int, probs: torch.Tensor) -> str:
    return f"true {class_names[true]} ({probs[true]:.2f})\npred {class_names[pred]} ({probs[pred]:.2f})"


def write_figures(
    figures: Mapping[str, Figure], folder: Path, loggers: Sequence[Logger], step: int = 0
) -> dict[str, Path]:
    """Each figure as ``folder/<name>.png`` and, for each TensorBoard logger, as ``eval/<name>``."""
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
    return paths


def write_report(
    path: Path, summary: Summary, metrics: Mapping[str, Any], figures: Mapping[str, Path]
) -> None:
    """A one-page Markdown report: what was evaluated, the metric tables, the figures (relative links)."""
    counts = ", ".join(f"{name} {n}" for name, n in summary.class_counts.items())
    lines = [
        f"# Evaluation: {summary.model} on {summary.data}",
        "",
        "| | |",
        "|---|---|",
        f"| Data set | {summary.data}; test split: {summary.test_samples} images ({counts}) |",
        f"| Model | {summary.model} |",
        f"| Checkpoint | `{summary.checkpoint}` |",
    ]
    if summary.threshold is not None:
        lines.append(
            f"| Operating threshold | **{summary.threshold:.4f}**: *{summary.positive_class}* when its "
            f"probability exceeds it. {summary.threshold_how} |"
        )
    lines += [f"| Test-time augmentation | {summary.tta} |", ""]
    lines += _metric_tables(metrics, summary.threshold)
    lines += ["## Figures", ""]
    for name, file in figures.items():
        lines += [
            f"**{CAPTIONS.get(name, name)}**",
            "",
            f"![{CAPTIONS.get(name, name)}]({file.relative_to(path.parent).as_posix()})",
            "",
        ]
    write_text_atomic(path, "\n".join(lines))


def _metric_tables(metrics: Mapping[str, Any], threshold: float | None) -> list[str]:
    op_prefix = operating_point_name("test", "")
    at_op = {
        k.removeprefix(op_prefix): v
        for k, v in metrics.items()
        if k.startswith(op_prefix) and k != operating_point_name("test", "threshold")
    }
    others = {
        k.removeprefix("test/"): v
        for k, v in metrics.items()
        if k.startswith("test/") and not k.startswith(op_prefix) and k.removeprefix("test/") not in at_op
    }
    lines = []
    if at_op and threshold is not None:
        lines += [
            "## Test metrics at the operating threshold and at 0.5",
            "",
            f"| Metric | at {threshold:.4f} | at 0.5 |",
            "|---|---:|---:|",
        ]
        lines += [
            f"| {_label(k)} | {_number(at_op[k])} | {_number(metrics.get(f'test/{k}'))} |"
            for k in sorted(at_op, key=_order)
        ]
        lines.append("")
    if at_op:
        lines += [
            "## Other test metrics",
            "",
            "Threshold-free (AUROC, AP, ECE, loss), or from arg-max predictions, i.e. at 0.5 (macro F1, "
            "balanced accuracy, per-class recall).",
        ]
    else:
        lines.append("## Test metrics")
    lines += ["", "| Metric | value |", "|---|---:|"]
    lines += [f"| {_label(k)} | {_number(others[k])} |" for k in sorted(others, key=_order)]
    return [*lines, ""]


def _order(key: str) -> tuple[int, str]:
    return (list(_LABELS).index(key) if key in _LABELS else len(_LABELS), key)


def _label(key: str) -> str:
    if key.startswith("recall_"):
        return f"Recall of {key.removeprefix('recall_')}"
    return _LABELS.get(key, key)


def _number(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"
