"""Sweeps through Hydra's engines: grid and Optuna multiruns, failed jobs, the leaderboard."""

from __future__ import annotations

import csv
import json
import math
import signal
from pathlib import Path

import optuna
import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import QUICK, SMALL
from tests.test_cli import run
from xray_cls.errors import RunInterrupted, UserError
from xray_cls.sweep import Job, finished_metrics, rank, run_trial, same_sweep


def _sweep_dir(log_dir: Path) -> Path:
    (sweep,) = (log_dir / "train" / "multiruns").iterdir()
    return sweep


def _leaderboard(sweep: Path) -> list[dict[str, str]]:
    with (sweep / "leaderboard.csv").open() as f:
        return list(csv.DictReader(f))


def _common(data_dir: Path, log_dir: Path) -> list[str]:
    return [f"paths.data_dir={data_dir}", f"paths.log_dir={log_dir}", *QUICK]


# -- in process ---------------------------------------------------------------------------------------------
def _job(name: str, status: str, value: float | None) -> Job:
    metrics = {"status": status, "val/loss_best": value} if value is not None else {"status": status}
    return Job(name, Path(name), [f"x={name}"], metrics)


def test_rank_follows_the_mode_and_puts_failed_jobs_last() -> None:
    jobs = [_job("0", "failed", None), _job("1", "ok", 0.3), _job("2", "ok", None), _job("3", "ok", 0.1)]
    assert [j.name for j in rank(jobs, "val/loss", "min")] == ["3", "1", "2", "0"]
    assert [j.name for j in rank(jobs, "val/loss", "max")] == ["1", "3", "2", "0"]


def test_trial_with_a_nan_objective_is_recorded_as_failed(make_cfg) -> None:
    cfg = make_cfg()
    assert run_trial(cfg, lambda cfg: {"val/acc_best": math.nan, "test/acc": 0.5}) is None
    written = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert written["status"] == "failed" and "val/acc" in written["error"] and written["test/acc"] == 0.5


@pytest.mark.parametrize(
    "error",
    [UserError("impossible setting"), torch.cuda.OutOfMemoryError("CUDA out of memory"), KeyError("x")],
)
def test_trial_that_raises_is_recorded_and_returns_none(make_cfg, error: Exception) -> None:
    def broken(cfg):
        raise error

    cfg = make_cfg()
    assert run_trial(cfg, broken) is None
    written = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert written == {"status": "failed", "error": f"{type(error).__name__}: {error}"}


def test_interrupted_trial_stops_the_sweep(make_cfg) -> None:
    def interrupted(cfg):
        raise RunInterrupted("training interrupted by SIGINT", signal.SIGINT)

    with pytest.raises(SystemExit) as stop:
        run_trial(make_cfg(), interrupted)
    assert stop.value.code == 128 + signal.SIGINT


def test_trial_returns_the_best_value_of_the_monitored_metric(make_cfg) -> None:
    assert run_trial(make_cfg(), lambda cfg: {"val/acc": 0.5, "val/acc_best": 0.75}) == 0.75


def test_only_a_job_that_finished_ok_with_this_config_counts_as_finished(make_cfg) -> None:
    cfg = make_cfg()
    run_dir = Path(cfg.paths.output_dir)
    assert finished_metrics(cfg) is None  # nothing there yet
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text('{"status": "ok", "val/acc_best": 0.5}')
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(make_cfg("optimizer.lr=0.5"), resolve=True))
    assert finished_metrics(cfg) is None  # another job's result (a resumed Optuna study's trial numbers)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    for written, finished in [
        ('{"status": "failed", "error": "x"}', None),
        ('{"status": "ok", "val/acc_best": 0.5', None),  # cut short
        ('{"status": "ok", "val/acc_best": 0.5}', {"status": "ok", "val/acc_best": 0.5}),
    ]:
        (run_dir / "metrics.json").write_text(written)
        assert finished_metrics(cfg) == finished


def test_a_sweep_directory_takes_the_same_sweep_again_and_no_other(tmp_path: Path) -> None:
    same_sweep(tmp_path, ["optimizer.lr=1e-3,3e-4"])  # a new directory
    OmegaConf.save(
        {"hydra": {"overrides": {"task": ["optimizer.lr=1e-3,3e-4", "seed=1"]}}}, tmp_path / "multirun.yaml"
    )
    same_sweep(tmp_path, ["seed=1", "optimizer.lr=1e-3,3e-4"])
    with pytest.raises(
        UserError, match=r"holds a sweep of other overrides \(optimizer.lr=1e-3,3e-4 seed=1\)"
    ):
        same_sweep(tmp_path, ["optimizer.lr=1e-3,3e-4,1e-4", "seed=1"])


# -- the command line ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_grid_sweep_writes_a_leaderboard_sorted_by_the_objective(data_dir: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    proc = run(
        "xray_cls.train", "-m", *SMALL, "model=simple_cnn,lenet", "optimizer.lr=0.001,0.003",
        *_common(data_dir, tmp_path), cwd=tmp_path,
    )  # fmt: skip
    sweep = _sweep_dir(tmp_path)
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0", "1", "2", "3"]
    rows = _leaderboard(sweep)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    values = [float(r["objective"]) for r in rows]
    assert values == sorted(values, reverse=True)  # monitor.mode=max
    for row in rows:
        metrics = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())
        assert float(row["objective"]) == pytest.approx(metrics["val/acc_best"])
        assert "model=" in row["overrides"] and "optimizer.lr=" in row["overrides"]
        # TensorBoard's HParams tab on the sweep directory: each job's hyperparameters with its metrics.
        events = EventAccumulator(str(Path(row["run_dir"]) / "tensorboard")).Reload()
        assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")
    assert "4 jobs, 0 failed" in proc.stdout and "best val/acc" in proc.stdout


@pytest.mark.slow
def test_failed_job_is_recorded_and_the_sweep_goes_on_with_non_zero_status(
    data_dir: Path, tmp_path: Path
) -> None:
    proc = run(
        "xray_cls.train", "-m", *SMALL, "model=lenet", "data.image_size=4,28",  # lenet: 4x4 is too small
        *_common(data_dir, tmp_path), cwd=tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    sweep = _sweep_dir(tmp_path)
    failed = json.loads((sweep / "0" / "metrics.json").read_text())
    assert failed["status"] == "failed" and "4x4" in failed["error"]
    assert "Traceback" in (sweep / "0" / "train.log").read_text()
    assert json.loads((sweep / "1" / "metrics.json").read_text())["status"] == "ok"
    rows = _leaderboard(sweep)
    assert [(r["job"], r["status"]) for r in rows] == [("1", "ok"), ("0", "failed")]
    assert "4x4" in rows[1]["error"]
    assert "2 jobs, 1 failed" in proc.stdout


@pytest.mark.slow
def test_optuna_sweep_tells_failed_trials_and_reports_the_best(data_dir: Path, tmp_path: Path) -> None:
    # The preset's sampler, direction and storage with a search space of our own: sampler seed 4 draws image
    # sizes 28, 4, 28 for the three trials, and lenet cannot run the second.
    proc = run(
        "xray_cls.train", *SMALL, "hparams_search=mnist_optuna", "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.seed=4", "hydra.sweeper.params=null", "model=lenet",
        "optimizer.lr=tag(log,interval(1e-4,1e-2))", "data.image_size=choice(4,28)",
        *_common(data_dir, tmp_path), cwd=tmp_path, check=False,
    )  # fmt: skip
    sweep = _sweep_dir(tmp_path)
    rows = _leaderboard(sweep)
    assert len(rows) == 3
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    assert "data.image_size=4" in rows[2]["overrides"]
    assert proc.returncode == 1 and "3 jobs, 1 failed" in proc.stdout

    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == pytest.approx(float(rows[0]["objective"]))
    assert f"best val/acc: {best.best_value:.6g}" in proc.stdout
    # The study lives in SQLite in the sweep directory (optuna 2.x storage needs SQLAlchemy < 2).
    study = optuna.load_study(study_name="train", storage=f"sqlite:///{sweep / 'optuna.db'}")
    states = sorted(t.state.name for t in study.trials)
    assert states == ["COMPLETE", "COMPLETE", "FAIL"]


def test_only_an_earlier_attempt_of_the_same_job_is_continued(make_cfg, monkeypatch) -> None:
    from xray_cls.cluster import own_last_checkpoint

    cfg = make_cfg()
    run_dir = Path(cfg.paths.output_dir)
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_text("not a checkpoint: loading it would be an error")
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    assert own_last_checkpoint(cfg) is None  # a single run written into a used folder starts afresh

    monkeypatch.setenv("SLURM_JOB_ID", "7")  # a requeued SLURM job: it goes on from its own last.ckpt
    with pytest.raises(UserError, match=r"last\.ckpt"):
        own_last_checkpoint(cfg)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(make_cfg("optimizer.lr=0.5"), resolve=True))
    assert own_last_checkpoint(cfg) is None  # another job's folder
    assert own_last_checkpoint(make_cfg("ckpt_path=/elsewhere.ckpt")) is None
