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
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from xray_cls.hparams import hparams
from xray_cls.io import write_text_atomic

# In the run directory: the id of its MLflow run, so that a resumed or requeued run logs on into that run.
RUN_ID_FILE = "mlflow_run_id.txt"


def mlflow_logger(
    local_store: str,
    output_dir: str,
    log_dir: str,
    tracking_uri: str | None = None,
    experiment_name: str = "xray_cls",
    artifact_location: str | None = None,
) -> MLFlowLogger:
    """A logger for the MLflow run of this run directory: a new run named after it (``train/runs/<time>``, a
    sweep job's ``train/multiruns/<time>/<n>``), or the run it started before (``resume=``, a requeued SLURM
    job). The store: ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else SQLite in ``local_store`` (MLflow 3
    refuses its plain-file store unless told otherwise)."""
    # First use of a store: MLflow announces its table migrations (INFO) and Lightning warns that it creates
    # the experiment; both are expected here, neither asks anything of the user.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.loggers.mlflow").setLevel(logging.ERROR)
    uri = store_uri(tracking_uri, local_store)
    if uri == _local_uri(local_store):
        Path(local_store).mkdir(parents=True, exist_ok=True)
        # Else MLflow puts a new experiment's artifacts in ./mlruns of whatever folder the command ran in.
        artifact_location = artifact_location or (Path(local_store).resolve() / "artifacts").as_uri()
    run_dir = Path(output_dir).resolve()
    try:
        run_name = run_dir.relative_to(Path(log_dir).resolve()).as_posix()
    except ValueError:
        run_name = run_dir.name
    id_file = run_dir / RUN_ID_FILE
    run_id = _earlier_run(id_file, uri)
    logger = MLFlowLogger(
        experiment_name=experiment_name,
        run_name=run_name,
        tracking_uri=uri,
        tags={"run_dir": str(run_dir)},
        artifact_location=artifact_location,
        run_id=run_id,
    )
    if run_id is None and rank_zero_only.rank == 0:  # other DDP ranks log nothing (Lightning's rule)
        write_text_atomic(id_file, f"{logger.run_id}\n")  # creates the run now
    return logger


def store_uri(tracking_uri: str | None, local_store: str) -> str:
    """``tracking_uri`` (the config's), else ``$MLFLOW_TRACKING_URI``, else SQLite in ``local_store``."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or _local_uri(local_store)


def _local_uri(local_store: str) -> str:
    return f"sqlite:///{Path(local_store).resolve() / 'mlflow.db'}"


def _earlier_run(id_file: Path, uri: str) -> str | None:
    """The MLflow run this run directory started, when the store at ``uri`` holds it."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if not id_file.is_file():
        return None
    run_id = id_file.read_text().strip()
    try:
        MlflowClient(uri).get_run(run_id)
    except MlflowException:  # logged to another store before: start a new run in this one
        return None
    return run_id


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
