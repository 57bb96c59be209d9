"""Fine-tuning strategies: which parameters of ``pl_module.net`` train when, and at which learning rate.

The head is ``net.head``; the backbone is every other part of ``net``. Strategies (``model.finetune``):

- ``full``: everything trains from the first step (no callback).
- ``linear_probe``: the backbone is frozen for the whole run; only the head trains.
- ``gradual``: the backbone is frozen for ``unfreeze_at_epoch`` epochs, then joins the optimizer as a new
  param group at a lower learning rate.

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
from xray_cls.validation import FINETUNE_STRATEGIES as STRATEGIES

log = logging.getLogger(__name__)


# Hyperparameters of a param group that are learning rates, scaled for the backbone's group; OneCycleLR keeps
# its per-group schedule in initial_lr, max_lr and min_lr.
_LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")
# Per-param-group lists inside LR schedulers: (attribute, scaled like a learning rate). ReduceLROnPlateau's
# min_lrs is a floor, kept as is.
_SCHEDULER_LISTS = (
    ("base_lrs", True),
    ("_last_lr", True),
    ("max_lrs", True),
    ("lr_lambdas", False),
    ("min_lrs", False),
)


def param_groups(net: nn.Module, lr: float, backbone_lr_mult: float = 1.0) -> list[dict[str, Any]]:
    """Trainable parameters of ``net``: the head's at ``lr``, the rest at ``lr * backbone_lr_mult``.

    Groups are named (``head``, ``backbone``; LearningRateMonitor logs them by name) and empty ones left out,
    so a frozen backbone gives only the head group. A net that trains whole at one rate (no ``head``, or
    ``backbone_lr_mult`` 1 with nothing frozen) is one unnamed group: one curve, ``lr-<Optimizer>``.
    """
    if backbone_lr_mult <= 0:
        raise UserError(
            f"optimizer.backbone_lr_mult={backbone_lr_mult} must be > 0; "
            "to keep the backbone fixed use model.finetune=linear_probe"
        )
    head = getattr(net, "head", None)
    trainable = [p for p in net.parameters() if p.requires_grad]
    # A frozen backbone (linear_probe, gradual) keeps the split: `gradual` adds the backbone group later.
    if head is None or (backbone_lr_mult == 1 and len(trainable) == len(list(net.parameters()))):
        return [{"params": trainable, "lr": lr}] if trainable else []
    head_ids = {id(p) for p in head.parameters()}
    groups = [
        {"name": "head", "params": [p for p in trainable if id(p) in head_ids], "lr": lr},
        {
            "name": "backbone",
            "params": [p for p in trainable if id(p) not in head_ids],
            "lr": lr * backbone_lr_mult,
        },
    ]
    return [g for g in groups if g["params"]]


def finetune_callback(
    strategy: str, unfreeze_at_epoch: int = 1, backbone_lr_mult: float = 1.0
) -> Callback | None:
    """The callback for ``model.finetune``; ``None`` for ``full``, where nothing is frozen."""
    if strategy == "full":
        return None
    if strategy == "linear_probe":
        return FreezeBackbone(unfreeze_at_epoch=None)
    if strategy == "gradual":
        if unfreeze_at_epoch < 0:
            raise UserError(f"model.unfreeze_at_epoch={unfreeze_at_epoch} must be >= 0")
        # The backbone must not learn faster than the head: a multiplier >= 1 falls back to a tenth.
        return FreezeBackbone(unfreeze_at_epoch, backbone_lr_mult if backbone_lr_mult < 1 else 0.1)
    raise UserError(f"model.finetune={strategy!r} is not a strategy; choose one of {', '.join(STRATEGIES)}")


def backbone_modules(net: nn.Module) -> list[nn.Module]:
    """The leaf modules of ``net``, and the parents owning parameters directly, outside ``net.head``."""
    head = getattr(net, "head", None)
    if not isinstance(head, nn.Module):
        raise UserError(
            f"{type(net).__name__} has no `head` module, so model.finetune cannot tell the backbone from the "
            "head: use model.finetune=full"
        )
    head_modules = set(head.modules())
    return [m for m in BaseFinetuning.flatten_modules(net) if m not in head_modules]


class FreezeBackbone(BaseFinetuning):
    """Freezes ``pl_module.net``'s backbone before training; unfreezes it at ``unfreeze_at_epoch`` (``None``:
    never), adding it to the optimizer at the head's learning rate times ``backbone_lr_mult``.
    """

    def __init__(self, unfreeze_at_epoch: int | None = None, backbone_lr_mult: float = 0.1) -> None:
        super().__init__()
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.backbone_lr_mult = backbone_lr_mult
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
                "model.finetune=gradual cannot run on several processes (DDP): use one device, or "
                "model.finetune=full with a small optimizer.backbone_lr_mult, or model.finetune=linear_probe"
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
        # Identity, not BaseFinetuning.filter_on_optimizer: that compares values, so a fresh batch-norm weight
        # (all ones) would pass for any other all-ones tensor. On resume the group is already restored.
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        params = [p for p in self.filter_params(self._backbone) if id(p) not in in_optimizer]
        if params:
            head = _head_group(optimizer, pl_module.net)
            group = {k: v for k, v in optimizer.param_groups[head].items() if k != "params"}
            group |= {k: group[k] * self.backbone_lr_mult for k in _LR_KEYS if k in group}
            optimizer.add_param_group({**group, "name": "backbone", "params": params})
            log.info("backbone unfrozen at epoch %d, learning rate %.3g", epoch, group["lr"])
        log.info("%s trainable parameters", f"{_trainable(pl_module):,}")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        for optimizer in trainer.optimizers:
            _sync_schedulers(trainer, optimizer, _head_group(optimizer, pl_module.net), self.backbone_lr_mult)
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


def _head_group(optimizer: Optimizer, net: nn.Module) -> int:
    """Index of the param group holding the head (the first group when the head is not found)."""
    head_ids = {id(p) for p in net.head.parameters()}
    return next(
        (i for i, g in enumerate(optimizer.param_groups) if head_ids & {id(p) for p in g["params"]}), 0
    )


def _sync_schedulers(trainer: L.Trainer, optimizer: Optimizer, source: int, scale: float) -> None:
    """Give the LR schedulers of ``optimizer`` an entry for each param group added since they were built.

    PyTorch schedulers keep per-group lists (``base_lrs``, LambdaLR's ``lr_lambdas``...) and zip them strictly
    with the optimizer's groups, so an added group would stop training at the next scheduler step. The new
    group follows the ``source`` group's schedule, scaled by ``scale``. Idempotent: on resume the restored
    scheduler may lack only some entries (``lr_lambdas`` are not saved).
    """
    pending = [
        config.scheduler for config in trainer.lr_scheduler_configs if config.scheduler.optimizer is optimizer
    ]
    while pending:
        scheduler = pending.pop()
        # SequentialLR and ChainedScheduler delegate to the schedulers they hold.
        pending += getattr(scheduler, "_schedulers", [])
        for name, scaled in _SCHEDULER_LISTS:
            values = getattr(scheduler, name, None)
            while isinstance(values, list) and 0 < len(values) < len(optimizer.param_groups):
                values.append(values[source] * scale if scaled else values[source])
