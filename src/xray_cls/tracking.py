"""MLflow (``logger=mlflow``): where runs are stored, and what a finished run adds to its MLflow run.

Lightning's ``MLFlowLogger`` logs the metrics as training goes; the hyperparameters (the selection of
``hparams.py``, as in TensorBoard's HParams tab), the report's figures and the best checkpoint are logged here
and by ``evaluation.report_figures.write_figures``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch.loggers import Logger, MLFlowLogger
from omegaconf import DictConfig

from xray_cls.hparams import hparams

log = logging.getLogger(__name__)


def mlflow_logger(
    local_store: str,
    output_dir: str,
    log_dir: str,
    tracking_uri: str | None = None,
    experiment_name: str = "xray_cls",
    artifact_location: str | None = None,
) -> MLFlowLogger:
    """A logger for a new MLflow run named after the run directory (``train/runs/<time>``, a sweep job's
    ``train/multiruns/<time>/<n>``). The store: ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else SQLite
    in ``local_store`` (MLflow 3 refuses its plain-file store unless told otherwise)."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        store = Path(local_store).resolve()
        store.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{store / 'mlflow.db'}"
        # Else MLflow puts a new experiment's artifacts in ./mlruns of whatever folder the command ran in.
        artifact_location = artifact_location or (store / "artifacts").as_uri()
    run_dir = Path(output_dir).resolve()
    try:
        run_name = run_dir.relative_to(Path(log_dir).resolve()).as_posix()
    except ValueError:
        run_name = run_dir.name
    return MLFlowLogger(
        experiment_name=experiment_name,
        run_name=run_name,
        tracking_uri=uri,
        tags={"run_dir": str(run_dir)},
        artifact_location=artifact_location,
    )


def log_run(loggers: Sequence[Logger], cfg: DictConfig, best_checkpoint: str | None) -> None:
    """The run's hyperparameters and its best checkpoint (``checkpoints/<file>``), then the run is closed."""
    for logger in loggers:
        if not isinstance(logger, MLFlowLogger):
            continue
        logger.log_hyperparams(hparams(cfg))
        if best_checkpoint and Path(best_checkpoint).is_file():
            logger.experiment.log_artifact(logger.run_id, best_checkpoint, "checkpoints")
        logger.finalize("success")


def log_figures(loggers: Sequence[Logger], paths: dict[str, Path]) -> None:
    """The report's PNG figures as artifacts (``figures/<name>.png``) of each MLflow run."""
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            for path in paths.values():
                logger.experiment.log_artifact(logger.run_id, str(path), "figures")
