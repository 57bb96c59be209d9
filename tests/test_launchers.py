"""Hydra's submitit launchers: jobs as separate processes here, SLURM jobs on a cluster."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from tests.conftest import QUICK
from tests.test_cli import run
from xray_cls.config import config_dir


def _launcher(*overrides: str) -> dict:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)
            return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    finally:
        GlobalHydra.instance().clear()


def test_slurm_launcher_follows_the_trainer() -> None:
    launcher = _launcher(
        "hydra/launcher=slurm", "trainer=ddp", "trainer.num_nodes=2", "hydra.launcher.gpus_per_node=4"
    )
    assert launcher["_target_"].endswith("SlurmLauncher")
    # srun starts one task per GPU on each node; Lightning's SLURMEnvironment checks both against the trainer.
    assert (launcher["nodes"], launcher["gpus_per_node"], launcher["tasks_per_node"]) == (2, 4, 4)
    assert launcher["partition"] is None and launcher["timeout_min"] > 0 and launcher["mem_gb"] > 0


@pytest.mark.slow
def test_local_launcher_runs_a_two_job_sweep_in_separate_processes(data_dir: Path, tmp_path: Path) -> None:
    run(
        "xray_cls.train", "-m", "hydra/launcher=local", "optimizer.lr=0.001,0.003",
        f"paths.data_dir={data_dir}", f"paths.log_dir={tmp_path}", *QUICK, cwd=tmp_path,
    )  # fmt: skip
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    for job in ("0", "1"):
        assert json.loads((sweep / job / "metrics.json").read_text())["status"] == "ok"
        assert (sweep / job / "train.log").is_file()
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2  # submitit ran them, not Hydra
    with (sweep / "leaderboard.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 2
