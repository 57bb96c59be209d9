"""What an evaluation leaves in its run directory besides metrics.json: PNG figures and report.md."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import Logger

from xray_cls.callbacks.outputs import Collected
from xray_cls.evaluation.metrics import CALIBRATION_BINS, operating_point_name
from xray_cls.evaluation.report_figures import CAPTIONS, draw_figures, write_figures
from xray_cls.evaluation.summary import Summary
from xray_cls.io import write_text_atomic

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
        metrics,
    )
    paths = write_figures(figures, output_dir / "figures", loggers)
    report = output_dir / "report.md"
    write_report(report, summary, metrics, paths)
    return report


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
        f"off by about {ece * 100:.1f} percentage points on average. "
    )
    if summary.temperature != 1.0:
        text += (
            f"The probabilities are calibrated by temperature scaling fitted on the validation split "
            f"(logits divided by T = {summary.temperature:.3f}; T > 1 softens over-confident scores)."
        )
    else:
        text += "The probabilities are not recalibrated after training."
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
