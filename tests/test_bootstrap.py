"""Confidence intervals of the test metrics (percentile bootstrap over images or patients), their way into
metrics.json, the report and the leaderboard, and the report's model card."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torchmetrics.functional import classification as tmf

from tests.xray_fixtures import write_kaggle_tree
from xray_cls.callbacks.outputs import Collected
from xray_cls.evaluation.bootstrap import (
    THRESHOLDED,
    bootstrap,
    confidence_intervals,
    resample_metrics,
    resample_weights,
)
from xray_cls.runtime import build_module
from xray_cls.sweep import Job, leaderboard_csv, leaderboard_table
from xray_cls.train import train

BINARY_KEYS = [*(f"test/op/{name}" for name in THRESHOLDED), "test/auroc", "test/ap"]
MODEL_CARD = (
    "## Intended use",
    "## Data",
    "## Confidence intervals",
    "## Calibration",
    "## Known limitations",
)


def _binary(n: int = 600, seed: int = 0, ties: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Informative but imperfect scores; rounded to 1/40 so that many of them tie."""
    g = torch.Generator().manual_seed(seed)
    targets = (torch.rand(n, generator=g) < 0.4).long()
    p = 0.35 * targets + 0.65 * torch.rand(n, generator=g)
    if ties:
        p = (p * 40).round() / 40
    return torch.stack([1 - p, p], 1), targets


def _multiclass(n: int = 600, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(classes, (n,), generator=g)
    logits = torch.randn(n, classes, generator=g) + 1.2 * torch.nn.functional.one_hot(targets, classes)
    return (logits.softmax(-1) * 50).round() / 50, targets  # ties again


def _torchmetrics_binary(p: torch.Tensor, t: torch.Tensor, threshold: float) -> dict[str, float]:
    values = {
        "sensitivity": tmf.binary_recall(p, t, threshold),
        "specificity": tmf.binary_specificity(p, t, threshold),
        "ppv": tmf.binary_precision(p, t, threshold),
        "npv": tmf.binary_negative_predictive_value(p, t, threshold),
        "acc": tmf.binary_accuracy(p, t, threshold),
        "f1": tmf.binary_f1_score(p, t, threshold),
        "auroc": tmf.binary_auroc(p, t),
        "ap": tmf.binary_average_precision(p, t),
    }
    return {k: float(v) for k, v in values.items()}


# -- the metric definitions are torchmetrics' ---------------------------------------------------------------
@pytest.mark.parametrize("by_patient", [False, True])
def test_each_resample_metric_equals_torchmetrics_on_the_explicit_resample(by_patient: bool) -> None:
    probs, targets = _binary(240)
    groups = np.arange(240) // 3 if by_patient else None
    weights = next(resample_weights(240, groups, 6, seed=5))
    values = resample_metrics(probs, targets, weights, positive=1, threshold=0.45)
    for b in range(weights.shape[1]):
        # The resample as a list of images: each as often as its weight says.
        index = torch.repeat_interleave(torch.arange(240), weights[:, b].long())
        expected = _torchmetrics_binary(probs[index, 1], targets[index], 0.45)
        for name, value in expected.items():
            assert float(values[name][b]) == pytest.approx(value, abs=1e-6), name

    probs, targets = _multiclass(300)
    weights = next(resample_weights(300, None, 6, seed=5))
    values = resample_metrics(probs, targets, weights, positive=None, threshold=0.5)
    for b in range(weights.shape[1]):
        index = torch.repeat_interleave(torch.arange(300), weights[:, b].long())
        p, t = probs[index], targets[index]
        assert float(values["auroc"][b]) == pytest.approx(float(tmf.multiclass_auroc(p, t, 4)), abs=1e-6)
        accuracy = tmf.multiclass_accuracy(p, t, 4, average="micro")
        assert float(values["acc"][b]) == pytest.approx(float(accuracy), abs=1e-6)


# -- intervals --------------------------------------------------------------------------------------------
def test_every_interval_contains_its_point_estimate_and_is_reproducible() -> None:
    probs, targets = _binary()
    intervals = bootstrap(probs, targets, positive=1, threshold=0.45, resamples=1000, seed=7)
    assert set(intervals.low) == set(BINARY_KEYS)
    # The point estimates are torchmetrics' values on the whole test split.
    expected = _torchmetrics_binary(probs[:, 1], targets, 0.45)
    for key in BINARY_KEYS:
        name = key.rsplit("/", 1)[-1]
        point = intervals.point[key]
        assert point == pytest.approx(expected[name], abs=1e-6)
        assert intervals.low[key] <= point <= intervals.high[key], key
        assert 0 <= intervals.low[key] < intervals.high[key] <= 1, key  # informative, not degenerate
        assert intervals.used[key] == 1000
    # Same seed, same intervals; another seed, other intervals.
    again = bootstrap(probs, targets, positive=1, threshold=0.45, resamples=1000, seed=7)
    assert again.low == intervals.low and again.high == intervals.high
    other = bootstrap(probs, targets, positive=1, threshold=0.45, resamples=1000, seed=8)
    assert other.low != intervals.low and other.high != intervals.high
    # A narrower confidence, a narrower interval inside the wider one.
    narrow = bootstrap(probs, targets, positive=1, threshold=0.45, resamples=1000, seed=7, confidence=0.5)
    assert all(intervals.low[k] <= narrow.low[k] <= narrow.high[k] <= intervals.high[k] for k in BINARY_KEYS)


def test_multiclass_intervals_of_accuracy_and_macro_auroc() -> None:
    probs, targets = _multiclass()
    intervals = bootstrap(probs, targets, positive=None, resamples=500, seed=0)
    assert set(intervals.low) == {"test/acc", "test/auroc"}
    assert intervals.point["test/auroc"] == pytest.approx(float(tmf.multiclass_auroc(probs, targets, 4)))
    for key in intervals.low:
        assert intervals.low[key] <= intervals.point[key] <= intervals.high[key]
        assert intervals.high[key] - intervals.low[key] > 0.01


def _clustered(patients: int = 100, per_patient: int = 6) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Each patient has one label and a score of their own: their images are near copies of each other."""
    g = torch.Generator().manual_seed(0)
    label = (torch.rand(patients, generator=g) < 0.5).long()
    score = (0.2 * label + 0.8 * torch.rand(patients, generator=g)).repeat_interleave(per_patient)
    score = (score + 0.01 * torch.rand(len(score), generator=g)).clamp(0, 1)
    groups = np.repeat([f"person{i}" for i in range(patients)], per_patient)
    return torch.stack([1 - score, score], 1), label.repeat_interleave(per_patient), groups


def test_patients_are_resampled_whole() -> None:
    probs, targets, groups = _clustered()
    _, first_image, patient_of = np.unique(groups, return_index=True, return_inverse=True)
    for weights in resample_weights(len(groups), groups, 300, seed=1):
        # Every image of a patient is in a resample as often as the patient was drawn ...
        per_patient = weights[first_image]
        assert torch.equal(weights, per_patient[patient_of])
        # ... and each resample draws as many patients as there are.
        assert torch.all(per_patient.sum(0) == 100)
    by_image = bootstrap(probs, targets, positive=1, resamples=1000, seed=1)
    by_patient = bootstrap(probs, targets, positive=1, groups=groups, resamples=1000, seed=1)
    assert (by_image.unit, by_image.units) == ("image", 600)
    assert (by_patient.unit, by_patient.units) == ("patient", 100)
    # 600 images of 100 patients carry the information of about 100: the patient intervals are the honest,
    # wider ones (about sqrt(6) times).
    for key in ("test/auroc", "test/op/sensitivity", "test/op/acc"):
        width = {b.unit: b.high[key] - b.low[key] for b in (by_image, by_patient)}
        assert width["patient"] > 1.8 * width["image"], key


def test_resamples_without_a_metric_are_skipped_and_counted() -> None:
    # One positive among ten: about a third of the resamples hold no positive (0.9**10).
    probs = torch.tensor([[0.1, 0.9]] + [[1 - p, p] for p in np.linspace(0.05, 0.6, 9)], dtype=torch.float32)
    targets = torch.tensor([1] + [0] * 9)
    intervals = bootstrap(probs, targets, positive=1, threshold=0.5, resamples=2000, seed=0)
    without_positive = 2000 - intervals.used["test/auroc"]
    assert 0.3 * 2000 < without_positive < 0.4 * 2000
    assert intervals.used["test/op/sensitivity"] == intervals.used["test/auroc"]  # both need a positive
    assert intervals.used["test/op/specificity"] == 2000 and intervals.used["test/op/acc"] == 2000
    assert intervals.low["test/auroc"] == intervals.high["test/auroc"] == 1.0  # ranked first when drawn
    # One class only: no AUROC in any resample, so no interval, and metrics.json gets no keys for it.
    intervals = bootstrap(probs[1:], targets[1:], positive=1, threshold=0.5, resamples=200, seed=0)
    assert intervals.used["test/auroc"] == 0 and "test/auroc" not in intervals.low
    flat = intervals.as_metrics()
    assert "test/auroc_ci_low" not in flat and "test/op/specificity_ci_low" in flat
    assert flat["bootstrap"]["used"]["test/auroc"] == 0
    # Multiclass: a resample that lacks a class of the test split has no macro AUROC (27 - 6 of 27 lack one).
    probs3, targets3 = torch.eye(3)[[0, 1, 2]] * 0.8 + 0.1, torch.tensor([0, 1, 2])
    intervals = bootstrap(probs3, targets3, positive=None, resamples=2700, seed=0)
    assert 400 < intervals.used["test/auroc"] < 800 and intervals.used["test/acc"] == 2700


def test_the_config_sets_resamples_confidence_seed_and_the_operating_threshold(make_cfg) -> None:
    cfg = make_cfg("model=simple_cnn", "data=pneumoniamnist", "seed=3", "eval.bootstrap.resamples=200")
    module = build_module(cfg.model)
    module.threshold.fill_(0.3)
    probs, targets = _binary(200)
    collected = Collected(probs=probs, targets=targets)
    logged = {key: 0.5 for key in BINARY_KEYS} | {"test/sensitivity": 0.5, "test/ece": 0.1}
    flat = confidence_intervals(cfg, module, collected, logged)
    expected = bootstrap(probs, targets, positive=1, threshold=0.3, resamples=200, seed=3)
    assert {k for k in flat if k.endswith("_ci_low")} == {f"{k}_ci_low" for k in BINARY_KEYS}
    assert flat["test/op/sensitivity_ci_low"] == expected.low["test/op/sensitivity"]
    assert flat["bootstrap"] == {
        "method": "percentile",
        "resamples": 200,
        "confidence": 0.95,
        "seed": 3,
        "unit": "image",
        "units": 200,
        "used": {key: 200 for key in BINARY_KEYS},
    }
    # Without the operating point's values (its callback switched off): at 0.5, beside test/<name>.
    flat = confidence_intervals(cfg, module, collected, {"test/sensitivity": 0.5, "test/auroc": 0.5})
    assert {k for k in flat if k.endswith("_ci_low")} == {"test/sensitivity_ci_low", "test/auroc_ci_low"}
    cfg.eval.bootstrap.resamples = 0
    assert confidence_intervals(cfg, module, collected, logged) == {}


def test_the_leaderboard_carries_the_intervals() -> None:
    def job(name: str, auroc: float) -> Job:
        metrics = {"status": "ok", "test/auroc": auroc, "test/auroc_ci_low": auroc - 0.05}
        metrics |= {"test/auroc_ci_high": auroc + 0.03, "bootstrap": {"resamples": 1000}}
        return Job(name, Path(name), [f"seed={name}"], metrics)

    jobs = [job("0", 0.91), job("1", 0.88)]
    header, *rows = leaderboard_csv(jobs, "test/auroc").splitlines()
    assert {"test/auroc", "test/auroc_ci_low", "test/auroc_ci_high"} <= set(header.split(","))
    assert "bootstrap" not in header and "0.86" in rows[0]
    table = leaderboard_table(jobs, "test/auroc")
    assert "0.9100 (CI 0.860-0.940)" in table and "0.8800 (CI 0.830-0.910)" in table
    # A validation objective has no interval: the table shows the value alone.
    assert "CI" not in leaderboard_table(
        [Job("0", Path("0"), [], {"status": "ok", "val/auroc": 0.9})], "val/auroc"
    )


# -- end to end: training writes them into metrics.json and report.md ----------------------------------------
@pytest.mark.slow
def test_training_writes_intervals_into_metrics_json_and_a_model_card_into_the_report(make_cfg) -> None:
    # The whole embedded val and test splits (270 and 468 images; their first 64 are of one class each).
    whole = ("trainer.limit_val_batches=1.0", "trainer.limit_test_batches=1.0")
    cfg = make_cfg("report=true", *whole, "trainer.limit_train_batches=20", small=False)
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    written = json.loads((run / "metrics.json").read_text())
    for key in BINARY_KEYS:
        assert written[f"{key}_ci_low"] <= written[key] <= written[f"{key}_ci_high"], key
        assert written[f"{key}_ci_low"] == metrics[f"{key}_ci_low"]
    assert written["bootstrap"] | {"used": None} == {
        "method": "percentile",
        "resamples": 1000,
        "confidence": 0.95,
        "seed": 42,
        "unit": "image",  # PneumoniaMNIST has no patient identifiers
        "units": 468,
        "used": None,
    }

    report = (run / "report.md").read_text()
    assert [line for line in report.splitlines() if line in MODEL_CARD] == list(MODEL_CARD)
    sensitivity = f"{written['test/op/sensitivity_ci_low']:.3f}-{written['test/op/sensitivity_ci_high']:.3f}"
    assert f"| Sensitivity (recall) | {written['test/op/sensitivity']:.4f} | {sensitivity} |" in report
    auroc = f"{written['test/auroc_ci_low']:.3f}-{written['test/auroc_ci_high']:.3f}"
    assert f"| AUROC | {written['test/auroc']:.4f} | {auroc} |" in report
    assert f"AUROC {written['test/auroc']:.3f} (95% CI {auroc})" in report
    assert "1,000 resamples (seed 42)" in report and "468 test images" in report
    assert "not a medical device" in report and "Guangzhou Women and Children's Medical Center" in report
    assert "| train | 2,428 | 1,214 (50%) | 1,214 (50%) |" in report and "| test | 468 |" in report
    assert f"(ECE) {written['test/ece']:.3f}" in report and "No patient identifiers" in report
    assert "PPV and NPV depend on prevalence: pneumonia is 50% of this test split" in report
    assert re.search(r"- At 28 px, detail", report)  # the data set's own limitations, from data.card


@pytest.mark.slow
def test_a_data_set_with_patient_identifiers_gets_patient_intervals(make_cfg, tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_kaggle_tree(
        root, patients={"train": 12, "val": 2, "test": 6}, normal={"train": 16, "val": 2, "test": 6}
    )
    cfg = make_cfg(
        f"paths.data_dir={root}",
        "data=chest_xray",
        "data.source.download=false",
        "data.image_size=32",
        "model=simple_cnn",
        "data.batch_size=8",
        "trainer.limit_test_batches=1.0",
        "report=true",
        "eval.figures.gradcam_per_class=0",
    )
    train(cfg)
    run = Path(cfg.paths.output_dir)
    written = json.loads((run / "metrics.json").read_text())
    # 6 patients with 1-3 pneumonia images each, 6 normal images without identifier (one patient each).
    how = written["bootstrap"]
    assert (how["unit"], how["units"]) == ("patient", 12)
    assert written["test/auroc_ci_low"] <= written["test/auroc"] <= written["test/auroc_ci_high"]
    report = (run / "report.md").read_text()
    assert "12 test patients" in report and "Patient identifiers known" in report
