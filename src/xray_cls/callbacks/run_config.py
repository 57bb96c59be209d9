"""The run's config inside every checkpoint."""

from __future__ import annotations

from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf


class RunConfig(L.Callback):
    """Writes the run's config, as composed (interpolations kept), into every checkpoint: ``resume=``
    restores it, and eval finds the run's data set in it."""

    def __init__(self, config: DictConfig) -> None:
        self.config = OmegaConf.to_container(config, resolve=False)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint.setdefault("xray_cls", {})["config"] = self.config
