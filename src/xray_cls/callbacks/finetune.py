"""Fine-tuning strategies: which parameters of ``pl_module.net`` train when, and at which learning rate.

The head is ``net.head``; the backbone is every other part of ``net``. Strategies (``model.finetune.mode``):

- ``full``: everything trains from the first step (no callback).
- ``linear_probe``: the backbone is frozen for the whole run; only the head trains.
- ``gradual``: the backbone is frozen for ``unfreeze_at_epoch`` epochs, then trains at its own rate
  (``backbone_lr_mult`` times the head's).

A frozen backbone is a fixed feature extractor: no gradients, and eval mode, so batch norm uses (and keeps)
its running statistics and dropout / stochastic depth are off.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning, Callback
from torch import nn
from torch.optim import Optimizer

from xray_cls.errors import UserError
from xray_cls.models.classifier import Classifier

log = logging.getLogger(__name__)


def finetune_callback(mode: str, unfreeze_at_epoch: int = 1) -> Callback | None:
    """The callback for ``model.finetune.mode``; ``None`` for ``full``, where nothing is frozen."""
    if mode == "linear_probe":
        return FreezeBackbone(unfreeze_at_epoch=None)
    if mode == "gradual":
        return FreezeBackbone(unfreeze_at_epoch)
    return None


def backbone_modules(net: Classifier) -> list[nn.Module]:
    """The leaf modules of ``net``, and the parents owning parameters directly, outside ``net.head``."""
    head_modules = set(net.head.modules())
    return [m for m in BaseFinetuning.flatten_modules(net) if m not in head_modules]


class FreezeBackbone(BaseFinetuning):
    """Freezes ``pl_module.net``'s backbone before training; unfreezes it at ``unfreeze_at_epoch`` (``None``:
    never). Its parameters are already in the optimizer, at their own rate (:func:`param_groups`).
    """

    def __init__(self, unfreeze_at_epoch: int | None = None) -> None:
        super().__init__()
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self._backbone: list[nn.Module] = []
        self._frozen = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Only fitting trains; BaseFinetuning would freeze again before test or predict too.
        if stage != "fit":
            return
        if self.unfreeze_at_epoch is not None and trainer.world_size > 1:
            # DDP syncs the gradients of the parameters trainable when it wraps the model, so a backbone
            # unfrozen later would train apart on every process (Lightning issue #20340).
            raise UserError(
                "model.finetune.mode=gradual cannot run on several processes (DDP): use one device, or "
                "mode=full with a small model.finetune.backbone_lr_mult, or mode=linear_probe"
            )
        super().setup(trainer, pl_module, stage)

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        self._backbone = backbone_modules(pl_module.net)
        self.freeze(self._backbone, train_bn=False)
        self._frozen = True
        log.info("backbone frozen: %s trainable parameters", f"{_trainable(pl_module):,}")

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        # `>=`, not `==`: a run resumed after the unfreezing epoch starts frozen again (setup froze it).
        if not self._frozen or self.unfreeze_at_epoch is None or epoch < self.unfreeze_at_epoch:
            return
        self.make_trainable(self._backbone)
        self._frozen = False
        log.info(
            "backbone unfrozen at epoch %d: %s trainable parameters", epoch, f"{_trainable(pl_module):,}"
        )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._set_backbone_mode(training=not self._frozen)
        pl_module.log("model/trainable_params", float(_trainable(pl_module)), on_step=False, on_epoch=True)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        # A LightningModule that calls self.train() after validation would wake the frozen backbone mid-epoch.
        if self._frozen:
            self._set_backbone_mode(training=False)

    def _set_backbone_mode(self, training: bool) -> None:
        # Module by module: Module.train() recurses, and the backbone's parents include the head.
        for module in self._backbone:
            module.training = training


def _trainable(pl_module: L.LightningModule) -> int:
    return sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
