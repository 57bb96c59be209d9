"""A user's own backbone and data set, each one YAML in their own config folder (``hydra.searchpath``), train
and evaluate without a change to the package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import QUICK
from tests.xray_fixtures import write_image_folder

REPO = Path(__file__).resolve().parents[1]

# A torchvision architecture the package has no config for, named by its module paths.
BACKBONE = """\
defaults: [_torchvision, _self_]
net:
  arch: shufflenet_v2_x0_5
  head: fc
  stem: conv1.0
  cam_layer: conv5
  pretrained: false
"""
DATA = """\
defaults: [image_folder, _self_]
source:
  path: {path}
num_channels: 1
image_size: 32
batch_size: 8
card:
  source: "Cats and dogs drawn by the test."
"""


def _run(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", module, *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_backbone_and_a_data_set_of_ones_own(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "pets", {"cats": 12, "dogs": 12})
    configs = tmp_path / "my_configs"
    (configs / "model").mkdir(parents=True)
    (configs / "data").mkdir()
    (configs / "model" / "my_shufflenet.yaml").write_text(BACKBONE)
    (configs / "data" / "pets.yaml").write_text(DATA.format(path=tmp_path / "pets"))
    common = [f"hydra.searchpath=[file://{configs}]", f"paths.log_dir={tmp_path / 'logs'}"]

    trained = _run(
        "xray_cls.train", *common, "model=my_shufflenet", "data=pets", *QUICK, "report=false", cwd=tmp_path
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "ok" and "test/auroc" in metrics  # two classes: the clinical metrics
    recorded = (run / "config.yaml").read_text()
    assert "arch: shufflenet_v2_x0_5" in recorded and str(tmp_path / "pets") in recorded

    # eval needs neither the user's folder nor the options: the checkpoint holds the module and the data set.
    checkpoint = run / "checkpoints" / "last.ckpt"
    evaluated = _run(
        "xray_cls.eval", f"ckpt_path={checkpoint}", f"paths.log_dir={tmp_path / 'logs'}", "trainer=cpu",
        "eval.bootstrap.resamples=0", "eval.figures.gradcam_per_class=1", cwd=tmp_path,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    (eval_run,) = (tmp_path / "logs" / "eval" / "runs").iterdir()
    assert "TorchvisionBackbone shufflenet_v2_x0_5" in (eval_run / "report.md").read_text()
