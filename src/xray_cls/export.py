"""``python -m xray_cls.export ckpt_path=<checkpoint>``: the trained model as ``model.onnx``, for serving.

The graph takes float images ``[N, C, H, W]`` in [0, 1] (any batch size N) and returns the calibrated class
probabilities ``[N, classes]``: normalisation, the temperature and the softmax are inside it, so a server
needs no code of ours. Its metadata (``metadata_props``) holds the class names, the operating threshold and
positive class of binary tasks, the temperature, the image size and the channel count. Before the file is
kept, onnxruntime runs it on test images of the run's data set beside the Lightning module; the export fails
when their probabilities differ by more than ``export.tolerance``.
"""

from __future__ import annotations

if __name__ == "__main__":
    # The command starts in the light xray_cls.cli (see xray_cls.train): Hydra's own errors and --help answer
    # before torch and Lightning below are imported.
    import sys

    from xray_cls.cli import export_main

    export_main()
    sys.exit()  # done: what follows is the pipeline, which xray_cls.cli imported as xray_cls.export

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from xray_cls.checkpoints import load_checkpoint, module_from_checkpoint, restore_config
from xray_cls.errors import UserError
from xray_cls.io import write_text_atomic
from xray_cls.module import ClassificationModule
from xray_cls.runtime import build, seed_everything
from xray_cls.validation import validate

log = logging.getLogger("xray_cls.export")

INPUT, OUTPUT = "images", "probabilities"


class Probabilities(nn.Module):
    """What the ONNX graph computes: ``module.probabilities`` (normalise, network, temperature, softmax)."""

    def __init__(self, module: ClassificationModule) -> None:
        super().__init__()
        self.module = module

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.module.probabilities(images)


def export(cfg: DictConfig, overrides: list[str]) -> Path:
    """Write ``model.onnx`` into the run directory and check it; returns its path."""
    checkpoint = load_checkpoint(cfg.ckpt_path)
    cfg = restore_config(cfg, checkpoint, overrides)
    with open_dict(cfg):  # the class list as resolved in training (an image folder need not exist here)
        cfg.data.class_names = list(checkpoint["hyper_parameters"]["class_names"])
    validate(cfg)
    output_dir = Path(cfg.paths.output_dir)
    write_text_atomic(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    seed_everything(cfg)
    # A compiled network is traced as the plain one: torch.export reads the Python code, not a compiled graph.
    checkpoint["hyper_parameters"] = {**checkpoint["hyper_parameters"], "compile": False}
    module = module_from_checkpoint(checkpoint, calibrated=cfg.eval.calibration != "none").eval()

    path = output_dir / "model.onnx"
    unchecked = output_dir / "model.unchecked.onnx"  # renamed once onnxruntime agrees with the module
    write_onnx(module, unchecked, cfg.data.num_channels, cfg.data.image_size, cfg.export.opset)
    if cfg.export.check_images > 0:
        images = first_test_images(cfg, cfg.export.check_images)
        try:
            difference = check_onnx(unchecked, module, images, cfg.export.tolerance)
        except UserError:
            unchecked.unlink(missing_ok=True)
            raise
        print(
            f"onnxruntime vs the module on {len(images)} test images: largest absolute difference in "
            f"probabilities {difference:.3g} (export.tolerance={cfg.export.tolerance:g})",
            flush=True,
        )
    else:
        log.warning("export.check_images=0: model.onnx was not checked against the module")
    os.replace(unchecked, path)
    print(f"model.onnx:    {path}", flush=True)
    return path


def metadata(module: ClassificationModule, num_channels: int, image_size: int) -> dict[str, str]:
    """What a server needs besides the graph, as strings (ONNX metadata_props are string pairs)."""
    positive = module.positive_index
    return {
        "class_names": json.dumps(module.class_names),
        "positive_class": "" if positive is None else module.class_names[positive],
        "threshold": "" if positive is None else f"{float(module.threshold):.9g}",
        "temperature": f"{float(module.temperature):.9g}",
        "image_size": str(image_size),
        "num_channels": str(num_channels),
        "input": f"{INPUT}: float32 [N, {num_channels}, {image_size}, {image_size}], pixel values in [0, 1]",
        "output": f"{OUTPUT}: float32 [N, {len(module.class_names)}], calibrated softmax",
    }


def write_onnx(
    module: ClassificationModule, path: Path, num_channels: int, image_size: int, opset: int
) -> None:
    """Export with torch's own exporter (torch.export, then onnxscript), the batch dimension dynamic."""
    import onnx

    # The exporter's optimiser reports each of its passes at INFO: nothing a user of this command acts on.
    for name in ("onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.WARNING)
    example = torch.rand(2, num_channels, image_size, image_size)
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.onnx.export(
            Probabilities(module).eval(),
            (example,),
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes={"images": {0: batch}},
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    except Exception as err:
        first = (str(err).strip().splitlines() or [""])[0]  # the exporter appends pages of diagnostics
        raise UserError(f"torch.onnx.export failed for this model: {type(err).__name__}: {first}") from None
    model = program.model_proto
    onnx.helper.set_model_props(model, metadata(module, num_channels, image_size))
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    onnx.checker.check_model(str(path))


def first_test_images(cfg: DictConfig, count: int) -> torch.Tensor:
    """The first ``count`` images of the data set's test split, as the module takes them (float, [0, 1])."""
    datamodule = build(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    view = datamodule.splits.get("test")
    if view is None or len(view) == 0:
        raise UserError(
            "the data set has no test images to check the export on (export.check_images=0 skips it)"
        )
    chosen = view.index[:count]
    return torch.from_numpy(np.asarray(view.split.images[chosen])).float().div(255)


def check_onnx(path: Path, module: ClassificationModule, images: torch.Tensor, tolerance: float) -> float:
    """The largest absolute difference between the probabilities of onnxruntime and of the module; a
    UserError when it exceeds ``tolerance``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    served = session.run([OUTPUT], {INPUT: images.numpy()})[0]
    with torch.no_grad():
        expected = module.probabilities(images).numpy()
    if served.shape != expected.shape:
        raise UserError(f"the exported model returns shape {served.shape}, the module {expected.shape}")
    difference = float(np.abs(served - expected).max())
    if not difference <= tolerance:  # a NaN fails too
        raise UserError(
            f"export check failed: onnxruntime and the module differ by up to {difference:.3g} in "
            f"probability on {len(images)} test images (export.tolerance={tolerance:g}); model.onnx was "
            "not written"
        )
    return difference
