"""A tiny binary (PneumoniaMNIST-format) model trained once per test session, shared by the eval and predict
tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from tests.conftest import QUICK
from tests.xray_fixtures import write_pneumoniamnist_npz
from xray_cls.config import config_dir
from xray_cls.train import train

BINARY_DATA = ["data=pneumoniamnist", "data.source.download=false", "model=simple_cnn"]


@dataclass
class BinaryRun:
    data_root: Path  # paths.data_dir of the run
    run_dir: Path
    best: Path  # the best checkpoint (by val/auroc)
    arrays: dict[str, np.ndarray]  # what the .npz holds

    @property
    def overrides(self) -> list[str]:
        return [f"paths.data_dir={self.data_root}", *BINARY_DATA]


_RUNS: dict[str, BinaryRun] = {}


def compose_cfg(config_name: str, overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def binary_run(tmp_path_factory: pytest.TempPathFactory) -> BinaryRun:
    """Two epochs on 64 random images; trained on first use, then reused for the whole session."""
    if "binary" not in _RUNS:
        base = tmp_path_factory.mktemp("binary")
        arrays = write_pneumoniamnist_npz(
            base / "data" / "medmnist" / "pneumoniamnist.npz", n={"train": 64, "val": 32, "test": 24}
        )
        overrides = [f"paths.data_dir={base / 'data'}", *BINARY_DATA]
        cfg = compose_cfg(
            "train", [f"paths.output_dir={base / 'run'}", *QUICK, *overrides, "trainer.max_epochs=2"]
        )
        metrics = train(cfg)
        _RUNS["binary"] = BinaryRun(base / "data", base / "run", Path(metrics["best_checkpoint"]), arrays)
    return _RUNS["binary"]
