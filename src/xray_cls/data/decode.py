"""One image file decoded as training sees it: grey or RGB uint8, shorter side resized, centre-cropped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# An image whose shorter side is more than this many times smaller than data.image_size is left out (the
# cache) or refused (predict): magnified that much it holds no detail, only blur (1x1 px: one flat colour).
MAX_UPSCALE = 8
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def decode_image(path: Path, image_size: int, num_channels: int) -> np.ndarray:
    """One image file as uint8 ``[C, image_size, image_size]``.

    Same geometry as torchvision's ``Resize(image_size)`` then ``CenterCrop(image_size)``: the shorter
    side is scaled (bilinear, antialiased) to ``image_size`` and the centre square kept.
    """
    mode = image_mode(num_channels)
    with Image.open(path) as img:
        if min(img.size) * MAX_UPSCALE < image_size:
            raise TooSmall(
                f"{img.width}x{img.height} px, more than {MAX_UPSCALE} times smaller than the "
                f"{image_size} px (data.image_size) it would be magnified to"
            )
        # JPEG only: libjpeg scales by 1/2, 1/4 or 1/8 while decoding, never below the requested size.
        img.draft(mode, (image_size, image_size))
        img = _to_mode(img, mode)
        img = _resize_center_crop(img, image_size)
    array = np.asarray(img, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


class TooSmall(ValueError):
    """An image far smaller than the size it would be magnified to."""


def image_mode(num_channels: int) -> str:
    if num_channels not in (1, 3):
        raise ValueError(f"num_channels must be 1 or 3, got {num_channels}")
    return "L" if num_channels == 1 else "RGB"


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        # Transparent pixels are background, and an X-ray's background is black: composite on black (a plain
        # conversion would drop the alpha and show whatever colour the transparent pixels happen to hold).
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    if img.mode in _SIXTEEN_BIT:
        # PIL clips 16-bit values at 255 when converting to L; scale the full range down instead.
        wide = np.asarray(img, dtype=np.float32) / 257.0
        img = Image.fromarray(np.clip(wide.round(), 0, 255).astype(np.uint8), "L")
    return img if img.mode == mode else img.convert(mode)


def _resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    # Mirrors torchvision.transforms.functional.resize / center_crop so cached and naive pipelines agree.
    width, height = img.size
    long = int(size * max(width, height) / min(width, height))
    new_w, new_h = (size, long) if width <= height else (long, size)
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top, left = round((new_h - size) / 2.0), round((new_w - size) / 2.0)
    return img.crop((left, top, left + size, top + size))
