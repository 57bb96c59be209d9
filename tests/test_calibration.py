"""Temperature scaling: fitted on validation logits, stored with the threshold, applied wherever
probabilities are reported."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.eval_fixtures import BinaryRun, binary_run
from xray_cls.callbacks.operating_point import CHECKPOINT_KEY
from xray_cls.checkpoints import load_checkpoint, module_from_checkpoint
from xray_cls.evaluation.calibration import TEMPERATURE_BOUNDS, fit_temperature


def _labels_drawn_from(logits: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Labels sampled from softmax(logits): for them, ``logits`` are perfectly calibrated."""
    generator = torch.Generator().manual_seed(seed)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


@pytest.mark.parametrize("true_temperature", [3.0, 0.5])
def test_the_fit_recovers_the_temperature_that_calibrates(true_temperature: float) -> None:
    calibrated = torch.randn(20_000, 3, generator=torch.Generator().manual_seed(1)) * 2
    labels = _labels_drawn_from(calibrated)
    # Over-confident (x3) or timid (x0.5) logits of a model whose calibrated logits are `calibrated`.
    fitted = fit_temperature(calibrated * true_temperature, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.05)


def test_the_fit_never_raises_the_likelihood_and_stays_finite() -> None:
    logits = torch.tensor([[2.0, -1.0], [-3.0, 1.0], [0.5, 0.4], [-0.2, 0.9]])
    labels = torch.tensor([0, 1, 0, 1])  # perfectly separated: the likelihood grows as T shrinks
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(TEMPERATURE_BOUNDS[0])
    assert F.cross_entropy(logits / fitted, labels) < F.cross_entropy(logits, labels)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> BinaryRun:
    return binary_run(tmp_path_factory)


def test_training_stores_the_temperature_fitted_on_validation(run: BinaryRun) -> None:
    checkpoint = load_checkpoint(run.best)
    temperature = float(checkpoint["state_dict"]["temperature"])
    assert temperature != 1.0 and checkpoint[CHECKPOINT_KEY]["temperature"] == pytest.approx(temperature)

    # It is the fit of this checkpoint's own validation logits.
    module = module_from_checkpoint(checkpoint).eval()
    images = torch.from_numpy(run.arrays["val_images"]).float().div(255)[:, None]
    labels = torch.from_numpy(run.arrays["val_labels"]).long().view(-1)
    with torch.no_grad():
        logits = module(images)
    assert fit_temperature(logits, labels) == pytest.approx(temperature, rel=1e-3)
