"""``logger=mlflow``: params, metrics, figures and best checkpoint, read back with MLflow's own client."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import QUICK
from tests.eval_fixtures import binary_run, compose_cfg
from xray_cls.tracking import RUN_ID_FILE, mlflow_logger, store_uri
from xray_cls.train import train


def _runs(uri: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("xray_cls")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def test_a_training_run_is_read_back_from_the_local_store(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = binary_run(tmp_path_factory)
    quick = [o for o in QUICK if o != "report=false"]
    overrides = [
        f"paths.log_dir={tmp_path}",
        f"paths.output_dir={tmp_path / 'train' / 'runs' / 'one'}",
        *quick,
        *data.overrides,
        "logger=mlflow",
        "eval.bootstrap.resamples=0",
        "eval.figures.gradcam_per_class=0",
        "optimizer.lr=0.0007",
    ]
    metrics = train(compose_cfg("train", overrides))

    store = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"  # the default: under paths.log_dir
    (run,) = _runs(store)
    assert run.info.status == "FINISHED" and run.info.run_name == "train/runs/one"
    params = run.data.params
    assert params["optimizer.lr"] == "0.0007" and params["model"] == "SimpleCNN"
    assert run.data.metrics["test/auroc"] == pytest.approx(metrics["test/auroc"])
    client = MlflowClient(store)
    figures = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "figures")}
    assert {"roc.png", "confusion_matrix.png", "reliability.png"} <= figures
    checkpoints = [Path(a.path).name for a in client.list_artifacts(run.info.run_id, "checkpoints")]
    assert checkpoints == [Path(metrics["best_checkpoint"]).name]
    assert run.info.artifact_uri.startswith((tmp_path / "mlflow" / "artifacts").as_uri())

    # The same run directory again (resume=, a requeued SLURM job) logs on into the same MLflow run.
    run_dir = tmp_path / "train" / "runs" / "one"
    assert (run_dir / RUN_ID_FILE).read_text().strip() == run.info.run_id
    again = mlflow_logger(str(tmp_path / "mlflow"), str(run_dir), str(tmp_path))
    again.log_metrics({"resumed": 1.0})
    (run,) = _runs(store)
    assert run.data.metrics["resumed"] == 1.0


def test_the_environment_picks_the_store_and_the_config_overrides_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = str(tmp_path / "mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert store_uri(None, local) == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.invalid:5000")
    assert store_uri(None, local) == "http://tracking.invalid:5000"
    assert store_uri("sqlite:////elsewhere/mlflow.db", local) == "sqlite:////elsewhere/mlflow.db"
