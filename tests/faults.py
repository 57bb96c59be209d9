"""Faults injected into a real training process (importable by the subprocesses the tests start)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time

import lightning as L


class SignalAtStep(L.Callback):
    """Sends a real signal to this very process once training reaches ``step`` (deterministic timing)."""

    def __init__(self, step: int, signum: int = signal.SIGTERM) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class NaNLossAtStep(L.Callback):
    """Makes the next batch's loss NaN once training reaches ``step``, by poisoning the input images."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            batch[0].fill_(float("nan"))


class SlurmAtStep(L.Callback):
    """In the first attempt of a SLURM job, once training reaches ``step``: ``command`` with the job's id
    appended (``scancel --signal=USR2``: SLURM's warning before a time limit; ``scontrol requeue``). With
    ``wait``, training waits until the signal it brings has arrived, so that the run stops at this very step;
    without, the signal lands wherever training has got to (mid-step, most likely)."""

    def __init__(self, step: int, command: str, wait: bool = True) -> None:
        self.step, self.command, self.wait = step, command, wait

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.step or int(os.environ.get("SLURM_RESTART_COUNT", 0)) > 0:
            return
        if trainer.is_global_zero:  # once for the job, however many ranks it has
            subprocess.run([*shlex.split(self.command), os.environ["SLURM_JOB_ID"]], check=True)
        deadline = time.monotonic() + 60
        while self.wait and not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.05)


def without_root_privileges() -> None:
    """``preexec_fn`` of a subprocess: file permissions apply to it even when the tests run as root.

    Root ignores a folder's mode through the capabilities CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH; dropping
    them from the bounding set before ``exec`` leaves the new process without them, still as uid 0, so it
    can run the root-owned interpreter and read the test's files. Nothing to drop for other users.
    """
    if os.geteuid() != 0:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop, cap_dac_override, cap_dac_read_search = 24, 1, 2  # <linux/prctl.h>, <linux/capability.h>
    for capability in (cap_dac_override, cap_dac_read_search):
        if libc.prctl(pr_capbset_drop, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")
