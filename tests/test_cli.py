"""The commands as a user types them, in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import QUICK

REPO = Path(__file__).resolve().parents[1]


def run(module: str, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{module} {args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


@pytest.mark.slow
def test_train_then_eval_from_another_directory(data_dir: Path, tmp_path: Path) -> None:
    common = [f"paths.data_dir={data_dir}", f"paths.log_dir={tmp_path / 'outputs'}", *QUICK]
    run("xray_cls.train", *common, cwd=tmp_path)
    (run_dir,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert (run_dir / "train.log").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()

    run("xray_cls.eval", f"ckpt_path={trained['best_checkpoint']}", *common, cwd=tmp_path)
    (eval_dir,) = (tmp_path / "outputs" / "eval" / "runs").iterdir()
    evaluated = json.loads((eval_dir / "metrics.json").read_text())
    assert evaluated["test/acc"] == pytest.approx(trained["test/acc"], abs=1e-6)


@pytest.mark.slow
def test_grid_sweep_gives_each_job_its_own_directory(data_dir: Path, tmp_path: Path) -> None:
    run(
        "xray_cls.train", "-m", "model=simple_cnn,lenet", "optimizer.lr=0.001,0.0003",
        f"paths.data_dir={data_dir}", f"paths.log_dir={tmp_path}", *QUICK, "logger=tensorboard",
        cwd=tmp_path,
    )  # fmt: skip
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [j.name for j in jobs] == ["0", "1", "2", "3"]
    swept = {
        tuple(
            line
            for line in (job / ".hydra" / "overrides.yaml").read_text().splitlines()
            if "model=" in line or "lr=" in line
        )
        for job in jobs
    }
    assert swept == {
        (f"- model={m}", f"- optimizer.lr={lr}")
        for m in ("simple_cnn", "lenet")
        for lr in ("0.001", "0.0003")
    }
    for job in jobs:
        assert json.loads((job / "metrics.json").read_text())["status"] == "ok"
        assert list((job / "tensorboard").glob("events.out.tfevents.*"))


def test_unknown_key_gets_hydras_message_not_a_traceback(tmp_path: Path) -> None:
    proc = run("xray_cls.train", "data.no_such_key=1", f"paths.log_dir={tmp_path}", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "no_such_key" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_user_error_is_one_line_and_exit_status_2(tmp_path: Path) -> None:
    proc = run(
        "xray_cls.eval",
        f"ckpt_path={tmp_path / 'missing.ckpt'}",
        f"paths.log_dir={tmp_path}",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr
    # once: not also through the console handler of Hydra's logging
    assert (proc.stdout + proc.stderr).count("does not exist") == 1
    assert "Traceback" not in proc.stderr
