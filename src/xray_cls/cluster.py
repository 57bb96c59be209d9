"""SLURM jobs (``hydra/launcher=slurm``) that are preempted or reach their time limit lose nothing.

SLURM warns a job before its time limit, and before a preemption where the cluster is set up to: submitit's
sbatch script asks for SIGUSR2 (``SUBMITIT_PREEMPT_SIGNAL``) ``signal_delay_s`` ahead. One party requeues:
submitit, whose handler of that signal runs ``scontrol requeue`` (counting time limits against
``max_num_timeout``) and exits. Here that handler is deferred: the signal first stops training at the next
batch as SIGTERM does, which saves a complete ``checkpoints/last.ckpt``; submitit requeues after that.
Lightning's own SLURM requeueing (on SIGUSR1) is switched off. A bare SIGTERM (``scontrol requeue``, a
preemption without the warning) also saves last.ckpt, and SLURM itself requeues.

When the job runs again, in the same run directory, ``train`` finds that last.ckpt and continues from it.

Light to import (``xray_cls.cli`` and ``xray_cls.sweep`` use it before the config is checked).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def in_submitit_slurm_job() -> bool:
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm"


def same_run(cfg: DictConfig) -> bool:
    """Whether the run directory's ``config.yaml`` records this very config: an earlier attempt of the same
    job (requeued, or a re-run sweep), not another run written into the same folder."""
    try:
        recorded = (Path(cfg.paths.output_dir) / "config.yaml").read_text()
    except OSError:
        return False
    return recorded == OmegaConf.to_yaml(cfg, resolve=True)


def own_last_checkpoint(cfg: DictConfig) -> str | None:
    """``<run dir>/checkpoints/last.ckpt`` where an earlier attempt of this very job left one (a requeued
    SLURM job, a re-run sweep job), else None. Only sweep jobs and SLURM jobs look, and only when their run
    directory records the same config; ``resume=`` and ``ckpt_path=`` say themselves where to go on from."""
    from xray_cls.runtime import is_multirun

    path = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    job = is_multirun() or "SLURM_JOB_ID" in os.environ
    if not job or cfg.get("resume") or cfg.get("ckpt_path") or not path.is_file() or not same_run(cfg):
        return None
    from xray_cls.checkpoints import load_checkpoint

    load_checkpoint(path)  # a truncated file: one clear error naming it, not Lightning's traceback
    log.info("continuing from %s: this run directory's own last checkpoint (a requeued or re-run job)", path)
    return str(path)


def trainer_plugins() -> list[Any]:
    """Lightning's SLURM environment without its auto-requeue: submitit is the one that requeues."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


@contextmanager
def requeue_after_checkpoint() -> Iterator[None]:
    """Around a sweep job: in a submitit SLURM job, SLURM's warning signal stops training at the next batch
    (Lightning's SIGTERM handling saves last.ckpt), then submitit's handler requeues the job and exits.
    Outside training there is nothing to save: submitit requeues at once. Elsewhere nothing changes."""
    if not in_submitit_slurm_job():
        yield
        return
    from submitit import JobEnvironment

    # In the run's log: which SLURM job ran it, and which attempt this is (a requeued job runs again).
    log.info(
        "SLURM job %s, attempt %d, task %s of %s on %s",
        os.environ.get("SLURM_JOB_ID"), int(os.environ.get("SLURM_RESTART_COUNT", 0)) + 1,
        os.environ.get("SLURM_PROCID"), os.environ.get("SLURM_NTASKS"), os.environ.get("SLURMD_NODENAME"),
    )  # fmt: skip

    warning = JobEnvironment._usr_sig()  # the signal submitit's sbatch script asked SLURM for
    requeue = signal.getsignal(warning)  # submitit's: checkpoint_and_try_requeue
    not_training = signal.getsignal(signal.SIGTERM)  # submitit's: logs the signal and goes on
    if not callable(requeue):
        yield
        return
    received: list[int] = []

    def on_warning(signum: int, frame: FrameType | None) -> None:
        stop_training = signal.getsignal(signal.SIGTERM)
        if stop_training == not_training or not callable(stop_training):
            requeue(signum, frame)  # not in trainer.fit/test: requeues and exits now
            return
        log.warning(
            "%s from SLURM: saving a checkpoint at the next batch, then the job is requeued",
            signal.Signals(signum).name,
        )
        received.append(signum)
        stop_training(signal.SIGTERM, frame)  # Lightning's: stop at the next batch and save, as on SIGTERM

    signal.signal(warning, on_warning)
    try:
        yield
    except BaseException:  # the run stopped (RunInterrupted -> SystemExit) after saving its checkpoint
        if received:
            requeue(received[0], None)  # rank 0: requeue, then exit; other ranks return and exit below
        raise
    finally:
        signal.signal(warning, requeue)
