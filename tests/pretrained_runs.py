"""Train a pretrained backbone for one short epoch on a tiny gray image folder, then evaluate its checkpoint:
shared by the timm and TorchXRayVision tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tests.conftest import QUICK
from tests.xray_fixtures import write_image_folder
from xray_cls.checkpoints import load_checkpoint, module_from_checkpoint
from xray_cls.eval import evaluate
from xray_cls.module import ClassificationModule
from xray_cls.train import train


@dataclass
class PretrainedRun:
    trained: dict[str, Any]  # train's metrics
    evaluated: dict[str, Any]  # eval's metrics
    eval_dir: Path
    module: ClassificationModule  # rebuilt from the best checkpoint, as eval and predict do


def train_and_evaluate(make_cfg, tmp_path: Path, *model: str) -> PretrainedRun:
    """``model`` overrides (``model=...``, its weights) on 24 gray 32 px images of two classes."""
    write_image_folder(tmp_path / "cxr", {"normal": 12, "pneumonia": 12})
    data = [
        "data=image_folder",
        f"data.source.path={tmp_path / 'cxr'}",
        "data.num_channels=1",
        "data.image_size=32",
        "data.batch_size=4",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
    ]
    trained = train(make_cfg(*data, *model))
    best = trained["best_checkpoint"]
    assert best and "test/auroc" in trained, trained

    out = tmp_path / "eval"
    overrides = [f"ckpt_path={best}", "eval.bootstrap.resamples=0", "eval.figures.gradcam_per_class=1"]
    cfg = make_cfg(f"paths.output_dir={out}", *overrides, config_name="eval")
    evaluated = evaluate(cfg, [*QUICK, *overrides])
    module = module_from_checkpoint(load_checkpoint(best))
    return PretrainedRun(trained, evaluated, out, module.eval())


def images(n: int = 4, size: int = 32) -> torch.Tensor:
    """Gray images in [0, 1], as the data module feeds them."""
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0))
