"""LR schedulers with one signature, ``(optimizer, total_steps, **options)``, so configs can swap them.

``total_steps`` counts scheduler steps: optimizer steps for ``interval: step``, else epochs.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR, ReduceLROnPlateau, StepLR


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
