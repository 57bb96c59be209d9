"""``xray_cls.eval`` end to end on checkpoints trained here: metrics at the stored threshold, figures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torchmetrics.classification import BinaryRecall, BinarySpecificity

from tests.conftest import QUICK
from tests.eval_fixtures import BINARY_DATA, BinaryRun, binary_run
from xray_cls.callbacks.operating_point import CHECKPOINT_KEY
from xray_cls.checkpoints import load_checkpoint, module_from_checkpoint
from xray_cls.eval import evaluate
from xray_cls.evaluation.report_figures import CAPTIONS
from xray_cls.evaluation.tta import AveragedViews
from xray_cls.train import train

THRESHOLDED = ("acc", "sensitivity", "specificity", "ppv", "npv", "f1")


@pytest.fixture(scope="session")
def run(tmp_path_factory: pytest.TempPathFactory) -> BinaryRun:
    return binary_run(tmp_path_factory)


def _evaluate(make_cfg, out: Path, *overrides: str) -> tuple[dict, Path]:
    cfg = make_cfg(f"paths.output_dir={out}", *overrides, config_name="eval")
    # evaluate() sees the command line's overrides, as Hydra hands them over.
    return evaluate(cfg, [*QUICK, *overrides]), out


def test_eval_writes_metrics_report_and_figures(make_cfg, run: BinaryRun, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics, out = _evaluate(make_cfg, tmp_path / "eval", *run.overrides, f"ckpt_path={run.best}")

    written = json.loads((out / "metrics.json").read_text())
    assert written.keys() == metrics.keys() and written["test/auroc"] == pytest.approx(metrics["test/auroc"])
    assert written["checkpoint"] == str(run.best.resolve())
    assert "PneumoniaMNIST" in written["data"] and written["model"] == "SimpleCNN"
    assert written["test_samples"] == 24 and written["class_counts"] == {"normal": 12, "pneumonia": 12}
    assert written["positive_class"] == "pneumonia"
    # Each thresholded metric at the operating threshold and at 0.5, and the threshold itself.
    for name in THRESHOLDED:
        assert 0 <= written[f"test/op/{name}"] <= 1 and 0 <= written[f"test/{name}"] <= 1
    assert written["test/op/threshold"] == pytest.approx(written["threshold"])
    assert {"test/auroc", "test/ap", "test/ece", "test/loss"} <= set(written)
    # Bootstrap intervals beside the values (tests/test_bootstrap.py), seeded by the checkpoint's seed.
    for key in ("test/auroc", "test/ap"):
        assert written[f"{key}_ci_low"] <= written[key] <= written[f"{key}_ci_high"]
    assert written["bootstrap"]["units"] == 24 and written["bootstrap"]["seed"] == 42

    figures = {p.stem for p in (out / "figures").glob("*.png")}
    assert figures == set(CAPTIONS)
    report = (out / "report.md").read_text()
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report)
    assert sorted(links) == sorted(f"figures/{name}.png" for name in CAPTIONS)
    assert f"{written['threshold']:.4f}" in report and "sensitivity is at least 0.9" in report
    assert str(run.best.resolve()) in report and "| Sensitivity (recall) |" in report
    auroc = f"{written['test/auroc_ci_low']:.3f}-{written['test/auroc_ci_high']:.3f}"
    assert f"| AUROC | {written['test/auroc']:.4f} | {auroc} |" in report
    assert "## Known limitations" in report and "24 test images" in report

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert {f"eval/{name}" for name in CAPTIONS} <= set(events.Tags()["images"])


def _positive_probs(make_cfg, run: BinaryRun, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The best checkpoint's pneumonia probabilities on a split, computed outside any evaluation."""
    checkpoint = load_checkpoint(run.best)
    module = module_from_checkpoint(checkpoint)
    images = torch.from_numpy(run.arrays[f"{split}_images"]).float().div(255)[:, None]
    with torch.no_grad():
        probs = module.eval().probabilities(images)[:, 1]
    return probs, torch.from_numpy(run.arrays[f"{split}_labels"]).long().view(-1)


def test_the_threshold_stored_in_the_checkpoint_is_the_one_applied(
    make_cfg, run: BinaryRun, tmp_path: Path
) -> None:
    checkpoint = load_checkpoint(run.best)
    stored = float(checkpoint["state_dict"]["threshold"])
    # The best checkpoint carries the threshold chosen at its own epoch, and how it was chosen.
    recorded = checkpoint[CHECKPOINT_KEY]
    assert recorded["threshold"] == pytest.approx(stored)
    assert recorded["epoch"] == checkpoint["epoch"] and recorded["method"] == "target_sensitivity"

    metrics, _ = _evaluate(make_cfg, tmp_path / "eval", *run.overrides, f"ckpt_path={run.best}")
    assert metrics["threshold"] == pytest.approx(stored)
    probs, targets = _positive_probs(make_cfg, run, "test")
    assert metrics["test/op/sensitivity"] == pytest.approx(float(BinaryRecall(stored)(probs, targets)))
    assert metrics["test/op/specificity"] == pytest.approx(float(BinarySpecificity(stored)(probs, targets)))


def test_threshold_options_on_the_eval_command_line_choose_anew(
    make_cfg, run: BinaryRun, tmp_path: Path
) -> None:
    chosen = ("eval.threshold=target_sensitivity", "eval.target_sensitivity=0.8")
    metrics, out = _evaluate(make_cfg, tmp_path / "eval", *run.overrides, f"ckpt_path={run.best}", *chosen)
    assert "this evaluation" in metrics["threshold_how"] and "at least 0.8" in metrics["threshold_how"]
    assert metrics["test/op/threshold"] == pytest.approx(metrics["threshold"])
    assert f"{metrics['threshold']:.4f}" in (out / "report.md").read_text()
    probs, targets = _positive_probs(make_cfg, run, "val")
    assert float(BinaryRecall(metrics["threshold"])(probs, targets)) >= 0.8


def test_test_time_augmentation(make_cfg, run: BinaryRun, tmp_path: Path) -> None:
    metrics, _ = _evaluate(
        make_cfg, tmp_path / "eval", *run.overrides, f"ckpt_path={run.best}", "eval.tta=true"
    )
    assert "shifts" in metrics["tta"]  # PneumoniaMNIST never flips
    assert 0 <= metrics["test/auroc"] <= 1


def test_averaged_views_average_the_softmax() -> None:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    images = torch.rand(2, 3, 8, 8)
    for hflip, count in ((True, 2), (False, 5)):
        tta = AveragedViews(net, hflip=hflip, image_size=8)
        views = tta.views(images)
        assert len(views) == count and all(v.shape == images.shape for v in views)
        expected = torch.stack([net(v).softmax(-1) for v in views]).mean(0)
        assert torch.allclose(tta(images).softmax(-1), expected, atol=1e-6)
    assert torch.equal(AveragedViews(net, True, 8).views(images)[1], images.flip(-1))
    # With a temperature: the module divides by it, and gets the average of the calibrated softmaxes.
    tta = AveragedViews(net, hflip=True, image_size=8, temperature=2.0)
    expected = torch.stack([(net(v) / 2).softmax(-1) for v in tta.views(images)]).mean(0)
    assert torch.allclose((tta(images) / 2).softmax(-1), expected, atol=1e-6)


def test_multiclass_eval_has_no_threshold_and_one_vs_rest_curves(make_cfg, tmp_path: Path) -> None:
    trained = train(make_cfg("model=simple_cnn"))
    metrics, out = _evaluate(
        make_cfg,
        tmp_path / "eval",
        f"ckpt_path={trained['best_checkpoint']}",
        "eval.figures.gradcam_per_class=1",
    )
    assert metrics["threshold"] is None and metrics["threshold_how"] is None
    assert not any("/op/" in key for key in metrics)
    assert {p.stem for p in (out / "figures").glob("*.png")} == set(CAPTIONS)
    assert "Operating threshold" not in (out / "report.md").read_text()


def test_eval_of_an_empty_test_split_is_a_clear_error(make_cfg, run: BinaryRun, tmp_path: Path) -> None:
    from xray_cls.errors import UserError

    with pytest.raises(UserError, match="test split is empty"):
        _evaluate(
            make_cfg,
            tmp_path / "eval",
            *run.overrides,
            f"ckpt_path={run.best}",
            "trainer.limit_test_batches=0",
        )


def test_eval_reads_the_data_where_training_did(make_cfg, run: BinaryRun, tmp_path: Path) -> None:
    # The command line names no data folder: the fixture's default folder (empty) must not be used.
    overrides = [*BINARY_DATA, f"ckpt_path={run.best}"]
    cfg = make_cfg(f"paths.output_dir={tmp_path / 'eval'}", *overrides, config_name="eval")
    assert cfg.paths.data_dir != str(run.data_root)
    metrics = evaluate(cfg, [*QUICK, *overrides])
    assert metrics["test_samples"] == 24
    recorded = (tmp_path / "eval" / "config.yaml").read_text()
    assert f"data_dir: {run.data_root}" in recorded
