"""Test-time augmentation: a model's softmax averaged over its input and a few label-preserving variants."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


class AveragedViews(nn.Module):
    """``net`` applied to the identity and small transforms of its input, softmax averaged.

    The transforms: a horizontal flip when ``hflip`` (only data sets whose training flips may use it:
    a flipped chest X-ray puts the heart on the wrong side), else shifts by ``image_size / 32`` pixels (at
    least one) up, down, left and right, with the border replicated. Each view's probabilities are the
    calibrated ones (logits / ``temperature``); returned is the log of their average times ``temperature``,
    so that the module's own division by the temperature gives back that average under softmax.
    """

    def __init__(self, net: nn.Module, hflip: bool, image_size: int, temperature: float = 1.0) -> None:
        super().__init__()
        self.net, self.hflip, self.temperature = net, hflip, temperature
        self.shift = max(1, round(image_size / 32))

    def views(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.hflip:
            return [x, x.flip(-1)]
        s, (h, w) = self.shift, x.shape[-2:]
        padded = F.pad(x, (s, s, s, s), mode="replicate")
        offsets = ((0, s), (0, -s), (s, 0), (-s, 0))
        return [x] + [padded[..., s + dy : s + dy + h, s + dx : s + dx + w] for dy, dx in offsets]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        probs = torch.stack([(self.net(v).float() / t).softmax(-1) for v in self.views(x)]).mean(0)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log() * t


@contextmanager
def tta(module: nn.Module, hflip: bool, image_size: int) -> Iterator[None]:
    """Within the block, ``module.net`` is wrapped in :class:`AveragedViews`; outside it is the plain net
    again (Grad-CAM explains the plain net: its hooks must see one forward pass, not one per view)."""
    net = module.net
    module.net = AveragedViews(net, hflip, image_size, float(module.temperature))
    try:
        yield
    finally:
        module.net = net
