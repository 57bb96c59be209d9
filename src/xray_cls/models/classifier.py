"""What every network provides to the rest of the framework.

The module, fine-tuning, Grad-CAM and the config checks rely on these attributes and nothing else; a new
network subclasses :class:`Classifier` and sets them.
"""

from __future__ import annotations

from torch import nn


class Classifier(nn.Module):
    """A network from images ``[N, C, H, W]`` (normalised) to class logits ``[N, num_classes]``.

    Attributes:
        head: the final layer (the part a linear probe trains; everything else is the backbone).
        cam_layer: the layer whose activations Grad-CAM explains.
        input_stats: ``(mean, std)`` per input channel that pretrained weights expect, or None (the data
            set's statistics are used).
        min_image_size: the smallest input side the network accepts.
        fixed_image_size: the only input side it accepts (e.g. ViT's learnt position grid), else None.
    """

    head: nn.Module
    cam_layer: nn.Module
    input_stats: tuple[list[float], list[float]] | None = None
    min_image_size: int = 1
    fixed_image_size: int | None = None
