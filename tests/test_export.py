"""``xray_cls.export``: model.onnx, run by onnxruntime, against the Lightning module it came from."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from tests.eval_fixtures import BinaryRun, binary_run
from xray_cls.checkpoints import load_checkpoint, module_from_checkpoint
from xray_cls.errors import UserError
from xray_cls.export import check_onnx, export, first_test_images


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[BinaryRun, Path]:
    from tests.eval_fixtures import compose_cfg

    run = binary_run(tmp_path_factory)
    out = tmp_path_factory.mktemp("export")
    args = [f"ckpt_path={run.best}"]
    cfg = compose_cfg("export", [f"paths.output_dir={out}", *run.overrides, *args, "trainer=cpu"])
    return run, export(cfg, args)


def test_the_exported_model_serves_calibrated_probabilities(exported: tuple[BinaryRun, Path]) -> None:
    run, path = exported
    assert path.name == "model.onnx" and not (path.parent / "model.unchecked.onnx").exists()
    checkpoint = load_checkpoint(run.best)
    module = module_from_checkpoint(checkpoint).eval()
    # Any batch size: 5 test images (the export's example batch had 2), read as a server would get them.
    images = torch.from_numpy(run.arrays["test_images"][:5]).float().div(255)[:, None]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    served = session.run(None, {"images": images.numpy()})[0]
    temperature = float(checkpoint["state_dict"]["temperature"])
    assert temperature != 1.0  # fitted in training: the graph must divide by it
    with torch.no_grad():
        expected = (module(images) / temperature).softmax(-1).numpy()
    assert served.shape == (5, 2)
    assert np.abs(served - expected).max() <= 1e-4

    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["class_names"]) == module.class_names
    assert props["positive_class"] == module.class_names[module.positive_index]
    assert float(props["threshold"]) == pytest.approx(float(checkpoint["state_dict"]["threshold"]))
    assert float(props["temperature"]) == pytest.approx(temperature)
    assert (props["image_size"], props["num_channels"]) == ("28", "1")


def test_a_tampered_file_fails_the_check_with_the_difference(
    exported: tuple[BinaryRun, Path], tmp_path: Path
) -> None:
    run, path = exported
    model = onnx.load(str(path))
    # Every weight of the graph a little off, as a damaged or mismatched file would be.
    for initializer in model.graph.initializer:
        values = numpy_helper.to_array(initializer)
        if values.dtype == np.float32 and values.size > 1:
            initializer.CopyFrom(numpy_helper.from_array(values * 1.05, initializer.name))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(model, tampered)
    module = module_from_checkpoint(load_checkpoint(run.best)).eval()
    images = torch.from_numpy(run.arrays["test_images"][:8]).float().div(255)[:, None]
    assert check_onnx(path, module, images, 1e-4) <= 1e-4  # the untouched file passes the same check
    number = r"\d\.\d+(e-\d+)?"
    with pytest.raises(UserError, match=rf"differ by up to {number} in probability on 8 test images"):
        check_onnx(tampered, module, images, 1e-4)


def test_a_difference_over_the_tolerance_fails_the_export_with_that_number(
    exported: tuple[BinaryRun, Path], tmp_path: Path
) -> None:
    from tests.eval_fixtures import compose_cfg

    run, path = exported
    args = [f"ckpt_path={run.best}", "export.tolerance=0"]
    cfg = compose_cfg("export", [f"paths.output_dir={tmp_path}", *run.overrides, *args, "trainer=cpu"])
    module = module_from_checkpoint(load_checkpoint(run.best)).eval()
    difference = check_onnx(path, module, first_test_images(cfg, cfg.export.check_images), 1.0)
    if difference == 0:  # onnxruntime and torch agreed to the last bit: no tolerance can fail
        pytest.skip("the exported model matches the module exactly")
    with pytest.raises(UserError, match=rf"differ by up to {difference:.3g} in probability .*tolerance=0\)"):
        export(cfg, args)
    assert not list(tmp_path.glob("*.onnx"))  # neither model.onnx nor the unchecked file is left


@pytest.mark.parametrize("override", ["export.tolerance=-1", "export.check_images=-2"])
def test_nonsense_export_settings_are_refused(make_cfg, override: str) -> None:
    from xray_cls.validation import validate

    with pytest.raises(UserError, match=f"invalid config: {re.escape(override)}; allowed: a"):
        validate(make_cfg("ckpt_path=x.ckpt", override, config_name="export"))
