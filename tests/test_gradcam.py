"""Grad-CAM maps: the input's size, finite, in [0, 1], for CNN feature maps and ViT tokens alike."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import VisionTransformer

from xray_cls.evaluation.gradcam import gradcam, overlay
from xray_cls.models.backbones import TorchvisionBackbone
from xray_cls.models.scratch import LeNet, MedicalCNN, ModernCNN, SimpleCNN
from xray_cls.module import ClassificationModule


def _module(net: nn.Module, classes: int = 2) -> ClassificationModule:
    """A module around ``net``, built here (some nets under test are defined by this file only)."""
    simple = {"_target_": "xray_cls.models.scratch.SimpleCNN", "in_channels": 1, "num_classes": classes}
    module = ClassificationModule(
        {**simple, "image_size": 8}, [str(c) for c in range(classes)], {"_target_": "torch.optim.Adam"}
    )
    module.net = net
    return module


def _images(n: int, channels: int, size: int) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(0))


class TinyViT(nn.Module):
    """A one-block torchvision ViT exposing ``cam_layer`` as TorchvisionBackbone's vit_b_16 does."""

    def __init__(self) -> None:
        super().__init__()
        self.model = VisionTransformer(
            image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=2
        )
        nn.init.normal_(self.model.heads.head.weight)  # torchvision starts it at zero: no gradient at all

    @property
    def cam_layer(self) -> nn.Module:
        return self.model.encoder.layers[-1].ln_1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.expand(-1, 3, -1, -1))


def _check(maps: torch.Tensor, images: torch.Tensor) -> None:
    assert maps.shape == (len(images), 1, *images.shape[-2:])
    assert torch.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1
    assert (maps.flatten(1).max(1).values == 1).any()  # scaled per image, not all blank


NETS = {  # built inside the test, after seeding: a random net's map can be blank for an unlucky draw
    "SimpleCNN": lambda: SimpleCNN(1, 2, 28),
    "LeNet": lambda: LeNet(1, 2, 28),
    "MedicalCNN": lambda: MedicalCNN(1, 2, 28),
    "ModernCNN": lambda: ModernCNN(1, 2, 28),
    "TorchvisionBackbone": lambda: TorchvisionBackbone(
        "resnet18", 2, 1, head="fc", stem="conv1", cam_layer="layer4"
    ),
}


@pytest.mark.parametrize("name", NETS)
def test_maps_of_feature_map_layers(name: str) -> None:
    torch.manual_seed(0)
    module = _module(NETS[name]())
    images = _images(3, 1, 64 if name == "TorchvisionBackbone" else 28)
    _check(gradcam(module, images, torch.tensor([0, 1, 1])), images)


def test_maps_of_token_layers() -> None:
    images = _images(2, 1, 32)
    _check(gradcam(_module(TinyViT()), images, 1), images)


def test_images_from_inference_mode_and_the_module_mode_are_handled() -> None:
    module = _module(ModernCNN(3, 4, 16)).train()
    with torch.inference_mode():
        images = _images(2, 3, 16) * 1.0  # as the test loop collects them
    _check(gradcam(module, images, 3), images)
    assert module.training  # left as it was found


def test_overlay_is_rgb_in_unit_range() -> None:
    images = _images(2, 1, 20)
    maps = torch.rand(2, 1, 20, 20)
    out = overlay(images, maps)
    assert out.shape == (2, 3, 20, 20)
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.slow
def test_maps_of_vit_b_16_tokens() -> None:
    net = TorchvisionBackbone(
        "vit_b_16",
        2,
        1,
        head="heads.head",
        stem="conv_proj",
        cam_layer="encoder.layers.encoder_layer_11.ln_1",
    )
    images = _images(1, 1, 224)
    _check(gradcam(_module(net), images, 1), images)
