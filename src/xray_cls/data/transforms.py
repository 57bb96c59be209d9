"""Augmentation from one config, two engines: per item (torchvision v2, uint8) or per batch on the device
(kornia, float). Both draw independent random parameters for every image."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn
from torchvision.transforms import v2


def item_augmentation(cfg: Mapping[str, Any], image_size: int) -> v2.Transform | None:
    steps: list[nn.Module] = []
    if cfg["crop_padding"]:
        steps.append(v2.RandomCrop(image_size, padding=cfg["crop_padding"]))
    if cfg["hflip"]:
        steps.append(v2.RandomHorizontalFlip())
    if cfg["degrees"] or cfg["translate"] or tuple(cfg["scale"]) != (1.0, 1.0):
        steps.append(_affine(v2.RandomAffine, cfg))
    if cfg["brightness"] or cfg["contrast"]:
        steps.append(v2.ColorJitter(brightness=cfg["brightness"], contrast=cfg["contrast"]))
    return v2.Compose(steps) if steps else None


def batch_augmentation(cfg: Mapping[str, Any], image_size: int) -> nn.Module | None:
    if item_augmentation(cfg, image_size) is None:
        return None  # nothing to do: kornia, a quarter of a second to import, is left out
    import kornia.augmentation as K

    steps: list[nn.Module] = []
    if cfg["crop_padding"]:
        steps.append(K.RandomCrop((image_size, image_size), padding=cfg["crop_padding"]))
    if cfg["hflip"]:
        steps.append(K.RandomHorizontalFlip())
    if cfg["degrees"] or cfg["translate"] or tuple(cfg["scale"]) != (1.0, 1.0):
        steps.append(_affine(K.RandomAffine, cfg))
    if cfg["brightness"] or cfg["contrast"]:
        steps.append(K.ColorJitter(brightness=cfg["brightness"], contrast=cfg["contrast"]))
    return nn.Sequential(*steps) if steps else None


def _affine(cls: type, cfg: Mapping[str, Any]) -> nn.Module:
    translate = (cfg["translate"], cfg["translate"]) if cfg["translate"] else None
    return cls(degrees=cfg["degrees"], translate=translate, scale=tuple(cfg["scale"]))
