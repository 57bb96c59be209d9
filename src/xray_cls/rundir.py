"""A run directory that cannot be created is said in one line, before Hydra tries (and prints a traceback)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from xray_cls.runtime import report_error


class RunDirectory(Callback):
    """Hydra callback: create the run (or sweep) directory first; when that fails, ``error: ...`` and exit 2.

    Hydra creates it the same way a moment later, from the same resolved path (``${now:...}`` is resolved
    once per config), so nothing else changes.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _create(str(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _create(str(config.hydra.sweep.dir), "hydra.sweep.dir")


def _create(folder: str, key: str) -> None:
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        report_error(
            f"cannot create the run directory {folder} ({err.strerror or err}): choose a folder you can "
            f"write to with paths.log_dir=<folder> (or {key}=<folder>)"
        )
        sys.exit(2)
