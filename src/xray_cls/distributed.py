"""What a Hydra job needs to know about Lightning's DDP: which process logs, and which launches can work."""

from __future__ import annotations

import logging

from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from xray_cls.errors import UserError

# Strategies whose extra ranks Lightning starts by re-running the command line (its subprocess launcher).
_SCRIPT_LAUNCHED = ("ddp", "ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false")


def file_logs_from_rank_zero() -> None:
    """Every rank of a run shares its directory and log file: only rank zero writes INFO there.

    The other ranks' warnings and errors still go to the file, so a rank that fails says why. The rank comes
    from the environment (LOCAL_RANK from Lightning's launcher, SLURM_PROCID under srun), set before Hydra
    runs the job.
    """
    if rank_zero_only.rank == 0:
        return
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)


def check_ddp_in_sweep(cfg: DictConfig) -> None:
    """Refuse a sweep job that Lightning would have to relaunch by command line: the extra ranks would
    re-run the whole sweep (and an Optuna sweep would sample other hyperparameters for them)."""
    trainer = cfg.trainer
    if str(trainer.get("strategy")) not in _SCRIPT_LAUNCHED:
        return
    if trainer.get("devices") in (1, "1") and trainer.get("num_nodes", 1) == 1:
        return
    if SLURMEnvironment.detect() or TorchElasticEnvironment.detect():
        return  # srun or torchrun started every rank already: nothing is relaunched
    raise UserError(
        f"trainer.strategy={trainer.strategy} in a multirun: Lightning would start each extra rank by "
        "re-running this command, i.e. the whole sweep. Use hydra/launcher=slurm (srun starts one task per "
        "device), or trainer.strategy=ddp_spawn for a sweep on this machine."
    )
