"""The optimizer's param groups, and LR schedulers with one signature, ``(optimizer, total_steps,
**options)``, so configs can swap them.

``total_steps`` counts scheduler steps: optimizer steps for ``interval: step``, else epochs.
"""

from __future__ import annotations

import math
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR, ReduceLROnPlateau, StepLR

from xray_cls.models.classifier import Classifier


def param_groups(
    net: Classifier, lr: float, backbone_lr_mult: float = 1.0, mode: str = "full"
) -> list[dict[str, Any]]:
    """The parameters of ``net`` for the optimizer: the head's at ``lr``, the backbone's at
    ``lr * backbone_lr_mult``.

    A net that trains whole at one rate (``full``, multiplier 1) is one unnamed group: one curve,
    ``lr-<Optimizer>``. Otherwise the groups are named ``head`` and ``backbone`` (LearningRateMonitor logs
    them by name). A frozen backbone is in the optimizer from the start: its parameters get no gradient,
    so the optimizer skips them until they are unfrozen, and the schedulers never meet a group added later.
    """
    params = list(net.parameters())
    if mode == "full" and backbone_lr_mult == 1:
        return [{"params": params, "lr": lr}]
    head_ids = {id(p) for p in net.head.parameters()}
    return [
        {"name": "head", "params": [p for p in params if id(p) in head_ids], "lr": lr},
        {
            "name": "backbone",
            "params": [p for p in params if id(p) not in head_ids],
            "lr": lr * backbone_lr_mult,
        },
    ]


def cosine(
    optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.0, min_lr_ratio: float = 0.0
) -> LRScheduler:
    warmup = int(warmup_fraction * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def step(optimizer: Optimizer, total_steps: int, step_size: int = 3, gamma: float = 0.1) -> LRScheduler:
    return StepLR(optimizer, step_size=step_size, gamma=gamma)


def onecycle(
    optimizer: Optimizer, total_steps: int, max_lr_mult: float = 10.0, pct_start: float = 0.25
) -> LRScheduler:
    max_lr = [group["lr"] * max_lr_mult for group in optimizer.param_groups]
    return OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(1, total_steps), pct_start=pct_start)


def plateau(
    optimizer: Optimizer, total_steps: int, mode: str = "max", factor: float = 0.1, patience: int = 2
) -> ReduceLROnPlateau:
    return ReduceLROnPlateau(optimizer, mode=mode, factor=factor, patience=patience)
