"""What an evaluation leaves in its run directory besides metrics.json: PNG figures and report.md."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
    # The data module's splits: images per class (train, val, test), and how patients were kept apart.
    splits: dict[str, dict[str, int]] = field(default_factory=dict)
    patients: str | None = None
    card: dict[str, Any] = field(default_factory=dict)  # data.card: source, population, limitations


def summarize(
    cfg: DictConfig,
    module: Any,
    targets: torch.Tensor,
    checkpoint: str,
    threshold_how: str,
    tta: str = "off",
    datamodule: Any = None,
) -> Summary:
    """The report's header facts for ``module`` (a ClassificationModule) tested on ``targets``; the data facts
    of the model card from ``datamodule`` (a ClassificationDataModule after setup)."""
    names = list(module.class_names)
    positive = module.positive_index
    binary = positive is not None
    splits = getattr(datamodule, "splits", None) or {}
    return Summary(
        data=describe_data(cfg),
        model=describe_model(module.hparams["net"]),
        checkpoint=str(Path(checkpoint).resolve())
        if checkpoint
        else "none (the weights at the end of training)",
        test_samples=len(targets),
        class_counts={name: int((targets == c).sum()) for c, name in enumerate(names)},
        threshold=float(module.threshold) if binary else None,
        positive_class=names[positive] if binary else None,
        threshold_how=threshold_how if binary else None,
        tta=tta,
        splits={
            name: {n: int((splits[name].labels == c).sum()) for c, n in enumerate(names)}
            for name in _SPLITS
            if name in splits
        },
        patients=describe_patients(splits, getattr(datamodule, "val_fraction", None), _fold(datamodule)),
        card=_plain_card(getattr(datamodule, "card", None) or {}),
    )


_SPLITS = ("train", "val", "test")


def _fold(datamodule: Any) -> str | None:
    """k-fold cross-validation (data.folds): which fold is the validation split, e.g. "fold 0 of 5"."""
    folds = getattr(datamodule, "folds", None)
    return None if folds is None else f"fold {datamodule.fold} of {folds}"


def describe_patients(
    splits: Mapping[str, Any], val_fraction: float | None, fold: str | None = None
) -> str | None:
    """How the splits keep patients apart, from the data module's SplitViews; ``fold`` names the validation
    fold of a k-fold run instead of ``val_fraction``."""
    if not {"train", "val"} <= set(splits):
        return None
    known = splits["train"].split.groups is not None
    carved = splits["val"].split is splits["train"].split  # val held out of the training pool
    share = fold or ("part" if val_fraction is None else f"{val_fraction:g}")
    if known and carved:
        return (
            f"Patient identifiers known: validation ({share} of the training pool, stratified) was "
            "held out by patient, so no patient is in both; test is the data set's own split."
        )
    if known:
        return "Patient identifiers known; validation and test are the data set's own splits."
    if carved:
        held = f"{fold} (stratified)" if fold else f"a stratified random {share}"
        return (
            f"No patient identifiers: validation is {held} of the training images, so one patient's images "
            "may be in both."
        )
    return "No patient identifiers: the data set's own train, validation and test splits are used as given."


def _plain_card(card: Mapping[str, Any]) -> dict[str, Any]:
    """data.card as plain strings and lists (it arrives as a DictConfig), for metrics.json."""
    plain: dict[str, Any] = {}
    for key, value in card.items():
        if value is None or isinstance(value, str):
            plain[str(key)] = value
        else:
            plain[str(key)] = [str(item) for item in value]
    return plain


def stored_threshold_how(chosen: Mapping[str, Any] | None, when: str) -> str:
    """How the threshold in a checkpoint was chosen (the OperatingPoint callback's record of it)."""
    if chosen is None:
        return "Not chosen on validation data: the checkpoint records no operating point (0.5 by default)."
    return (
        f"Chosen on the validation split ({chosen['validation_samples']} images) at epoch {chosen['epoch']} "
        f"of training: {chosen['description']}. {when}"
    )


def write_run_report(
    output_dir: Path,
    summary: Summary,
    metrics: Mapping[str, Any],
    collected: Collected,
    module: torch.nn.Module,
    gradcam_per_class: int,
    loggers: Sequence[Logger],
) -> Path:
    """Draw every figure into ``output_dir/figures`` (and TensorBoard) and write ``output_dir/report.md``."""
    figures = draw_figures(
        collected,
        module,
        module.class_names,
        float(module.threshold),
        module.positive_index,
        gradcam_per_class,
    )
    paths = write_figures(figures, output_dir / "figures", loggers)
    report = output_dir / "report.md"
    write_report(report, summary, metrics, paths)
    return report


def describe_data(cfg: DictConfig) -> str:
    source = cfg.data.source
    name = source.get("dataset") or source._target_.rsplit(".", 1)[-1].removesuffix("Source")
    size = cfg.data.image_size
    return f"{name} ({cfg.data.num_channels}x{size}x{size}, classes {', '.join(cfg.data.class_names)})"


def describe_model(net: Mapping[str, Any]) -> str:
    """``ModernCNN``, ``TorchvisionBackbone resnet18``: the network's class, and its architecture if named."""
    name = net["_target_"].rsplit(".", 1)[-1]
    return f"{name} {net['arch']}" if net.get("arch") else name


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
    """A Markdown report with the sections of a model card: what was evaluated, intended use, the data, the
    metric tables with confidence intervals, how the intervals were made, calibration, known limitations,
    and the figures (relative links)."""
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
    lines += ["## Intended use", "", INTENDED_USE, ""]
    lines += _data_section(summary)
    lines += _metric_tables(metrics, summary.threshold)
    lines += _intervals_section(metrics)
    lines += _calibration_section(metrics, summary, figures)
    lines += _limitations_section(summary)
    lines += ["## Figures", ""]
    for name, file in figures.items():
        lines += [
            f"**{CAPTIONS.get(name, name)}**",
            "",
            f"![{CAPTIONS.get(name, name)}]({file.relative_to(path.parent).as_posix()})",
            "",
        ]
    write_text_atomic(path, "\n".join(lines))


INTENDED_USE = (
    "Research and education only. This model is not a medical device: no regulator has cleared or approved "
    "it, and it has not been validated prospectively or on other sites. It must not be used to diagnose, "
    "screen or triage patients, nor to inform any clinical decision without a qualified clinician reading "
    "the images."
)

# Limitations of every evaluation this report describes; data-set ones come from data.card.limitations.
GENERIC_LIMITATIONS = (
    "A retrospective evaluation on one held-out test split of one data set: no external or prospective "
    "validation.",
    "Grad-CAM maps show which regions drove the score, not where disease is: they are no localisation.",
)
_CI = ("_ci_low", "_ci_high")


def _data_section(summary: Summary) -> list[str]:
    card = summary.card
    lines = ["## Data", ""]
    lines += [
        f"*{label}.* {card.get(key) or f'not described (data.card.{key})'}  "
        for key, label in (("source", "Source"), ("population", "Population"))
    ]
    if summary.splits:
        names = list(next(iter(summary.splits.values())))
        lines += ["", f"| Split | Images | {' | '.join(names)} |", "|---" + "|---:" * (len(names) + 1) + "|"]
        for split, counts in summary.splits.items():
            total = sum(counts.values())
            shares = [f"{n:,} ({n / max(total, 1):.0%})" for n in counts.values()]
            lines.append(f"| {split} | {total:,} | {' | '.join(shares)} |")
        tested = summary.splits.get("test", {})
        if tested and sum(tested.values()) != summary.test_samples:
            lines += ["", f"The test metrics come from the first {summary.test_samples} test images only."]
    if summary.patients:
        lines += ["", summary.patients]
    return [*lines, ""]


def _metric_tables(metrics: Mapping[str, Any], threshold: float | None) -> list[str]:
    values = {k: v for k, v in metrics.items() if not k.endswith(_CI)}
    op_prefix = operating_point_name("test", "")
    at_op = {
        k.removeprefix(op_prefix): v
        for k, v in values.items()
        if k.startswith(op_prefix) and k != operating_point_name("test", "threshold")
    }
    others = {
        k.removeprefix("test/"): v
        for k, v in values.items()
        if k.startswith("test/") and not k.startswith(op_prefix) and k.removeprefix("test/") not in at_op
    }
    ci = _ci_header(metrics)
    lines = []
    if at_op and threshold is not None:
        lines += [
            "## Test metrics at the operating threshold and at 0.5",
            "",
            f"| Metric | at {threshold:.4f} | {ci} | at 0.5 |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {_label(k)} | {_number(at_op[k])} | {_interval(metrics, op_prefix + k)} | "
            f"{_number(metrics.get(f'test/{k}'))} |"
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
    lines += ["", f"| Metric | value | {ci} |", "|---|---:|---:|"]
    lines += [
        f"| {_label(k)} | {_number(others[k])} | {_interval(metrics, f'test/{k}')} |"
        for k in sorted(others, key=_order)
    ]
    return [*lines, ""]


def _ci_header(metrics: Mapping[str, Any]) -> str:
    confidence = (metrics.get("bootstrap") or {}).get("confidence", 0.95)
    return f"{confidence:.0%} CI"


def _interval(metrics: Mapping[str, Any], key: str) -> str:
    low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    return "" if low is None or high is None else f"{low:.3f}-{high:.3f}"


def _intervals_section(metrics: Mapping[str, Any]) -> list[str]:
    how = metrics.get("bootstrap")
    lines = ["## Confidence intervals", ""]
    if not how:
        return [*lines, "Not computed (eval.bootstrap.resamples=0).", ""]
    unit = "patients" if how["unit"] == "patient" else "images"
    text = (
        f"Percentile bootstrap: {how['resamples']:,} resamples (seed {how['seed']}), each drawing "
        f"{how['units']:,} test {unit} with replacement"
    )
    if how["unit"] == "patient":
        text += (
            " (all images of a drawn patient; an image without a patient identifier counts as one patient)"
        )
    tail = (1 - how["confidence"]) / 2 * 100
    text += (
        f"; each interval runs from the {tail:g}th to the {100 - tail:g}th percentile of the metric over "
        f"the resamples. They cover the sampling of the test {unit}, not retraining (seed, data order) nor "
        "another population."
    )
    if how["unit"] == "image":
        text += " Several images of one patient would count as independent and make them too narrow."
    lines.append(text)
    short = {k: n for k, n in how["used"].items() if n < how["resamples"]}
    if short:
        counts = ", ".join(f"{_label(k.rsplit('/', 1)[-1])} {n:,}" for k, n in short.items())
        lines += [
            "",
            f"Resamples in which a metric is undefined (one class only, no positive call) are left "
            f"out of its interval; used: {counts}.",
        ]
    headline = next((k for k in ("test/auroc", "test/acc") if f"{k}_ci_low" in metrics), None)
    if headline:
        name = _label(headline.removeprefix("test/"))
        lines += [
            "",
            f"For example: {name} {metrics[headline]:.3f} ({_ci_header(metrics)} "
            f"{_interval(metrics, headline)}).",
        ]
    return [*lines, ""]


def _calibration_section(
    metrics: Mapping[str, Any], summary: Summary, figures: Mapping[str, Path]
) -> list[str]:
    ece = metrics.get("test/ece")
    lines = ["## Calibration", ""]
    if ece is None:
        return [*lines, "Not measured.", ""]
    if summary.positive_class is not None:
        positive = summary.positive_class
        what = f"the predicted probability of *{positive}* and the share of {positive} cases in each bin"
    else:
        what = "the top class's probability and how often that class is right, in each bin"
    text = (
        f"Expected calibration error (ECE) {ece:.3f}: the gap between {what} ({CALIBRATION_BINS} equal-width "
        "bins), averaged with the bins' image counts as weights; 0 is perfect. Here a stated probability is "
        f"off by about {ece * 100:.1f} percentage points on average. The probabilities are not recalibrated "
        "after training."
    )
    if "reliability" in figures:
        text += " See the reliability diagram below."
    return [*lines, text, ""]


def _limitations_section(summary: Summary) -> list[str]:
    limitations = summary.card.get("limitations") or []
    if isinstance(limitations, str):
        limitations = [limitations]
    items = [*limitations, *GENERIC_LIMITATIONS]
    if summary.positive_class is not None and summary.test_samples:
        share = summary.class_counts[summary.positive_class] / summary.test_samples
        items.append(
            f"PPV and NPV depend on prevalence: {summary.positive_class} is {share:.0%} of this test split; "
            "at another prevalence they change (sensitivity and specificity do not)."
        )
        on_val = (summary.threshold_how or "").startswith("Chosen")
        chosen = "was chosen on the validation split" if on_val else "was not chosen on validation data"
        items.append(
            f"The operating threshold {chosen}; on other data it may need choosing anew (eval with "
            "eval.threshold=... on local validation data)."
        )
    return ["## Known limitations", "", *[f"- {item}" for item in items], ""]


def _order(key: str) -> tuple[int, str]:
    return (list(_LABELS).index(key) if key in _LABELS else len(_LABELS), key)


def _label(key: str) -> str:
    if key.startswith("recall_"):
        return f"Recall of {key.removeprefix('recall_')}"
    return _LABELS.get(key, key)


def _number(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"
