"""Does an input image look like the images a model was trained on? ``predict`` warns when not: a model
answers confidently on anything, a colour photograph included.

The rule: colour where the model was trained on grey images; a shorter side under ``image_size / SMALLER``
(magnified, so blurred; under ``image_size / MAX_UPSCALE`` the file is refused); and, for data sets of
fixed-size arrays (MNIST, CIFAR-10, PneumoniaMNIST: every training image was ``image_size`` px), a shorter
side over ``image_size * LARGER``. Folder data sets are decoded from files of any size, which the checkpoint
does not record, so a larger input passes there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SMALLER, LARGER = 2, 4
COLOUR_SPREAD = 12  # mean (max - min) over R, G, B above which an image is colour; grey JPEGs stay under 3


def unlike_training(path: Path, image_size: int, num_channels: int, fixed_size: bool) -> str:
    """How the image file ``path`` differs from the training images, or "" when it does not."""
    with Image.open(path) as img:
        (width, height), colour = img.size, num_channels == 1 and is_colour(img)
    differences = ["colour, the model was trained on grey images"] if colour else []
    if min(width, height) * SMALLER < image_size:
        differences.append(f"{width}x{height} px, far smaller than the {image_size} px trained on")
    elif fixed_size and min(width, height) > image_size * LARGER:
        differences.append(f"{width}x{height} px, far larger than the {image_size} px trained on")
    return "; ".join(differences)


def is_colour(img: Image.Image) -> bool:
    """Colour pixels, not grey ones stored as RGB (as many X-ray JPEGs are)."""
    if img.mode not in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr"):
        return False
    img.draft("RGB", (64, 64))  # JPEG: decoded at a fraction of its size, enough to judge its colours
    small = img.convert("RGB")
    small.thumbnail((64, 64))
    pixels = np.asarray(small, dtype=np.int16)
    return float((pixels.max(-1) - pixels.min(-1)).mean()) > COLOUR_SPREAD
