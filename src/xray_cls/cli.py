"""Where ``python -m xray_cls.train|eval|predict|export`` (and the ``xray-*`` scripts) start.

Hydra parses the command line and composes the config here, and the rules of ``validation.py`` check it,
before the pipeline modules are imported: they need torch, Lightning and torchmetrics, which take seconds to
import. So ``--help``, ``--cfg job``, a mistyped key and a refused value answer in about a second. Nothing
imported at the top of this module may import those libraries (tests/test_console.py checks it).
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from xray_cls.cluster import requeue_after_checkpoint
from xray_cls.config import config_dir
from xray_cls.runtime import command_line_overrides, is_multirun, quiet_library_noise, user_errors
from xray_cls.sweep import finished_metrics, objective, run_trial
from xray_cls.validation import validate

log = logging.getLogger("xray_cls.train")


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def train_main(cfg: DictConfig) -> float | None:
    """Returns what a sweeper optimises: the best ``monitor.metric``, or None for a failed sweep job."""
    if is_multirun() and (done := finished_metrics(cfg)) is not None:
        log.info("skipped: %s/metrics.json says this job finished (a re-run sweep)", cfg.paths.output_dir)
        return objective(done, cfg.monitor.metric)
    if not is_multirun() and not cfg.get("resume"):
        # A resumed run takes its config from the checkpoint: train() checks it once restored. A sweep job
        # is checked there too, so that its failure is recorded and the sweep goes on.
        with user_errors():
            validate(cfg)
    # The pipeline, with torch, Lightning and torchmetrics (seconds), once the config is known to be good.
    from xray_cls.distributed import file_logs_from_rank_zero
    from xray_cls.train import train

    quiet_library_noise()
    file_logs_from_rank_zero()
    if is_multirun():
        with requeue_after_checkpoint():  # on SLURM: saved at the warning signal, then requeued by submitit
            return run_trial(cfg, train)
    with user_errors():
        metrics = train(cfg)
    return objective(metrics, cfg.monitor.metric)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="eval")
def eval_main(cfg: DictConfig) -> None:
    # The config is checked once the checkpoint's is restored into it, which needs torch anyway.
    from xray_cls.eval import evaluate

    quiet_library_noise()
    with user_errors():
        evaluate(cfg, command_line_overrides())


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="predict")
def predict_main(cfg: DictConfig) -> None:
    from xray_cls.predict import predict

    quiet_library_noise()
    with user_errors():
        predict(cfg, command_line_overrides())


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="export")
def export_main(cfg: DictConfig) -> None:
    from xray_cls.export import export

    quiet_library_noise()
    with user_errors():
        export(cfg, command_line_overrides())
