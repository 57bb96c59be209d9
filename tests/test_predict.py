"""``xray_cls.predict`` end to end: a folder of real image files (one corrupt), a checkpoint trained here."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.eval_fixtures import BinaryRun, binary_run
from tests.xray_fixtures import write_corrupt_image, write_image
from xray_cls.checkpoints import load_checkpoint
from xray_cls.errors import UserError
from xray_cls.predict import predict

CLASSES = ["normal", "pneumonia"]


@pytest.fixture(scope="session")
def run(tmp_path_factory: pytest.TempPathFactory) -> BinaryRun:
    return binary_run(tmp_path_factory)


def _predict(make_cfg, run: BinaryRun, out: Path, *overrides: str) -> list[dict[str, str]]:
    args = [f"ckpt_path={run.best}", "predict.num_workers=0", *overrides]
    path = predict(make_cfg(f"paths.output_dir={out}", *args, config_name="predict"), args)
    assert path == out / "predictions.csv"
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def folder(tmp_path: Path, run: BinaryRun) -> Path:
    """The first test images as 28 px PNGs, plus X-ray-like files of other sizes and modes, and junk."""
    base = tmp_path / "inputs"
    base.mkdir()
    for i, pixels in enumerate(run.arrays["test_images"][:4]):
        Image.fromarray(pixels, "L").save(base / f"test_{i}.png")
    write_image(base / "scans" / "wide.jpeg", (60, 40), "RGB", seed=1)
    write_image(base / "scans" / "tall.png", (30, 50), "L", seed=2)
    write_corrupt_image(base / "scans" / "broken.jpeg", "truncated")
    write_corrupt_image(base / "garbage.png", "garbage")
    (base / "notes.txt").write_text("not an image, not listed")
    (base / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return base


def test_folder_predictions_with_a_corrupt_file(
    make_cfg, run: BinaryRun, folder: Path, tmp_path: Path
) -> None:
    rows = _predict(make_cfg, run, tmp_path / "out", f"input={folder}", "predict.batch_size=3")
    by_name = {Path(r["file"]).relative_to(folder).as_posix(): r for r in rows}
    assert set(by_name) == {
        *(f"test_{i}.png" for i in range(4)),
        "scans/wide.jpeg",
        "scans/tall.png",
        "scans/broken.jpeg",
        "garbage.png",
    }
    assert list(rows[0]) == ["file", "predicted", "prob_normal", "prob_pneumonia", "threshold", "error"]

    stored = float(load_checkpoint(run.best)["state_dict"]["threshold"])
    for name, row in by_name.items():
        if name in ("scans/broken.jpeg", "garbage.png"):
            assert row["error"] and not row["predicted"] and not row["prob_normal"]
            continue
        assert not row["error"]
        probs = [float(row["prob_normal"]), float(row["prob_pneumonia"])]
        assert sum(probs) == pytest.approx(1, abs=1e-5)
        # Binary: pneumonia exactly when its probability is above the checkpoint's threshold.
        assert float(row["threshold"]) == pytest.approx(stored, abs=1e-6)
        assert row["predicted"] == ("pneumonia" if probs[1] > stored else "normal")


@pytest.mark.parametrize("calibration", ["temperature", "none"])
def test_probabilities_match_the_model_on_the_data_set(
    make_cfg, run: BinaryRun, folder: Path, tmp_path: Path, calibration: str
) -> None:
    """Files the size of the data set's images are read exactly as the data module feeds them."""
    from xray_cls.checkpoints import module_from_checkpoint

    rows = _predict(make_cfg, run, tmp_path / "out", f"input={folder}", f"eval.calibration={calibration}")
    checkpoint = load_checkpoint(run.best)
    module = module_from_checkpoint(checkpoint)
    images = torch.from_numpy(run.arrays["test_images"][:4]).float().div(255)[:, None]
    temperature = float(checkpoint["state_dict"]["temperature"])
    assert temperature != 1.0  # fitted on validation data in training: predict must apply it...
    if calibration == "none":
        temperature = 1.0  # ...unless told not to
    with torch.no_grad():
        expected = (module.eval()(images) / temperature).softmax(-1)
    got = {Path(r["file"]).name: r["prob_pneumonia"] for r in rows}
    assert [float(got[f"test_{i}.png"]) for i in range(4)] == pytest.approx(expected[:, 1].tolist(), abs=1e-5)


def test_gradcam_writes_one_overlay_per_readable_image(
    make_cfg, run: BinaryRun, folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    rows = _predict(make_cfg, run, out, f"input={folder}", "predict.gradcam=true", "eval.tta=true")
    readable = [r for r in rows if not r["error"]]
    written = sorted(p.relative_to(out).as_posix() for p in (out / "gradcam").glob("*.png"))
    assert written == sorted(r["gradcam"] for r in readable) and len(written) == 6
    assert "gradcam/scans__wide.jpeg.png" in written
    image = np.asarray(Image.open(out / "gradcam" / "scans__wide.jpeg.png"))
    assert image.shape[0] == 28 + 4 and image.shape[2] == 3  # the image beside its overlay, with padding


def test_a_single_file(make_cfg, run: BinaryRun, folder: Path, tmp_path: Path) -> None:
    rows = _predict(make_cfg, run, tmp_path / "out", f"input={folder / 'scans' / 'wide.jpeg'}")
    assert len(rows) == 1 and rows[0]["predicted"] in CLASSES and not rows[0]["error"]


@pytest.mark.parametrize("what", ["missing", "empty"])
def test_no_input_is_a_clear_error(make_cfg, run: BinaryRun, tmp_path: Path, what: str) -> None:
    target = tmp_path / what
    if what == "empty":
        target.mkdir()
    with pytest.raises(UserError, match="does not exist" if what == "missing" else "holds no image files"):
        _predict(make_cfg, run, tmp_path / "out", f"input={target}")
