"""CNNs trained from scratch. Each works for any channel count and any image size it can shrink.

Each is a :class:`~xray_cls.models.classifier.Classifier`: ``head`` is the final linear layer, ``cam_layer``
the last spatial feature map. Too small an input is refused when the network is built.
"""

from __future__ import annotations

import torch
from torch import nn

from xray_cls.errors import UserError
from xray_cls.models.classifier import Classifier


def _flat_size(features: nn.Module, in_channels: int, image_size: int, name: str) -> int:
    """Size of the flattened feature map for this input, or a clear error when the input is too small."""
    try:
        with torch.no_grad():
            out = features(torch.zeros(1, in_channels, image_size, image_size))
    except RuntimeError as err:
        out = None
        reason = str(err).splitlines()[0]
    if out is None or out.numel() == 0:
        raise UserError(
            f"model {name} does not fit {image_size}x{image_size} images: its convolutions and pooling "
            f"shrink them to nothing{f' ({reason})' if out is None else ''}. Use a larger data.image_size "
            "or a model with fewer downsampling steps."
        )
    return out.numel()


class SimpleCNN(Classifier):
    """Conv 32 3x3 + ReLU, max-pool 2x2, dense 64 + ReLU, dropout, dense to classes."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, 32, 3), nn.ReLU(), nn.MaxPool2d(2))
        flat = _flat_size(self.features, in_channels, image_size, "simple_cnn")
        self.head = nn.Linear(64, num_classes)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, 64), nn.ReLU(), nn.Dropout(dropout), self.head
        )
        self.cam_layer = self.features[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class LeNet(Classifier):
    """LeNet-5: two conv blocks with max-pooling, three fully connected layers."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        flat = _flat_size(self.features, in_channels, image_size, "lenet")
        self.head = nn.Linear(84, num_classes)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), self.head
        )
        self.cam_layer = self.features[4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MedicalCNN(Classifier):
    """Two conv + ReLU + max-pool blocks and two fully connected layers."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int, hidden: int = 128) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        flat = _flat_size(self.features, in_channels, image_size, "medical_cnn")
        self.head = nn.Linear(hidden, num_classes)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), self.head)
        self.cam_layer = self.features[4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class ModernCNN(Classifier):
    """A small VGG-style CNN with batch norm and global average pooling (>= 99.3% on MNIST)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int,
        widths: tuple[int, ...] = (32, 64, 128),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i, width in enumerate(widths):
            layers += [_conv_bn(cin, width), _conv_bn(width, width)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = width
        self.features = nn.Sequential(*layers)
        _flat_size(self.features, in_channels, image_size, "modern_cnn")
        self.head = nn.Linear(cin, num_classes)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), self.head)
        self.cam_layer = self.features[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
