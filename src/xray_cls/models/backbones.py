"""Any torchvision classification model as a backbone: one class, configured by module paths.

Every backbone is built by torchvision's own builder, loaded with torchvision's own weights (downloaded, or a
local copy of the same file), and then adapted: the final ``nn.Linear`` becomes a fresh dropout + linear head
for our classes, and the stem convolution is adapted to grayscale input. Which modules are "the head", "the
stem" and "the Grad-CAM layer" differs per architecture, so each ``conf/model/<arch>.yaml`` names them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import VisionTransformer, get_model, get_model_weights, list_models

from xray_cls.errors import UserError
from xray_cls.models.classifier import Classifier
from xray_cls.validation import check_size_limits

# Smallest input side the CNNs take: their total downsampling. At 32 px the last feature map is 1x1
# (DenseNet's and ConvNeXt's pooling and patchify layers fail below that).
CNN_MIN_IMAGE_SIZE = 32

# Old DenseNet checkpoints (the ones torchvision still downloads) name layers 'norm.1' where the model has
# 'norm1'; torchvision renames them on load with this pattern (torchvision.models.densenet._load_state_dict).
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


class TorchvisionBackbone(Classifier):
    """A torchvision classifier with a new head for ``num_classes`` and a stem for ``in_channels``.

    Args:
        arch: a torchvision classification model name, e.g. ``resnet18`` (``torchvision.models.list_models``).
        num_classes: outputs of the new head.
        in_channels: 1 (grayscale) or 3 (RGB).
        head: dotted path of the model's final ``nn.Linear``, e.g. ``fc``; it becomes
            ``Sequential(Dropout(dropout), Linear(in_features, num_classes))``.
        stem: dotted path of the first ``nn.Conv2d``, adapted when ``in_channels == 1``.
        cam_layer: dotted path of the layer whose activations Grad-CAM explains.
        pretrained: start from torchvision's default ImageNet weights, downloaded into torch.hub's cache.
        weights_path: start from a local copy of those weights instead (a state dict of the unmodified
            torchvision model, such as the file torchvision downloads); takes precedence over ``pretrained``.
        dropout: dropout before the new head's linear layer.
        adapt_input: how a 1-channel input meets an RGB stem. ``sum``: a 1-channel stem whose weights are
            the RGB weights summed over the channels (as timm's ``adapt_input_conv``). ``repeat``: keep the
            RGB stem and repeat the gray channel three times in ``forward``. Both compute the same function
            (the stem is linear); ``sum`` is cheaper, ``repeat`` keeps the checkpoint's stem untouched.
        image_size: the input side it will be fed (``data.image_size``), checked before any weights are
            downloaded; ``None``: not checked here.

    Attributes read by the rest of the framework:
        head: the new head module (the only part a linear probe trains).
        cam_layer: the module Grad-CAM hooks. For ViT its output is tokens ``[B, 1 + N, D]``, not a feature
            map: see :func:`tokens_to_feature_map`.
        input_stats: ``(mean, std)`` the weights were trained with, one value per input channel, or ``None``
            when training from scratch (the data set's statistics are used then).
        min_image_size: the smallest input side the model accepts.
        fixed_image_size: the only input side the model accepts (ViT: its position embeddings are learnt for
            one grid), else ``None``.
    """

    def __init__(
        self,
        arch: str,
        num_classes: int,
        in_channels: int,
        head: str,
        stem: str,
        cam_layer: str,
        pretrained: bool = False,
        weights_path: str | None = None,
        dropout: float = 0.0,
        adapt_input: Literal["sum", "repeat"] = "sum",
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        if arch not in list_models(module=torchvision.models):
            raise UserError(
                f"model.net.arch={arch!r} is not a torchvision classification model; choose one of "
                f"{', '.join(list_models(module=torchvision.models))}"
            )

        # Weights go into the unmodified architecture, so any torchvision checkpoint fits key for key.
        self.model = get_model(arch, weights=None)
        old_head = _find(self.model, head, nn.Linear, "head", arch)
        stem_conv = _find(self.model, stem, nn.Conv2d, "stem", arch)
        _find(self.model, cam_layer, nn.Module, "cam_layer", arch)
        if stem_conv.in_channels != 3:
            raise UserError(
                f"model.net.stem={stem!r} of {arch} takes {stem_conv.in_channels} channels, not 3"
            )
        self.fixed_image_size: int | None = None
        self.min_image_size = CNN_MIN_IMAGE_SIZE
        if isinstance(self.model, VisionTransformer):
            self.fixed_image_size = self.min_image_size = self.model.image_size
        if image_size is not None:  # refused before a download that would be wasted (or fail offline)
            check_size_limits(image_size, self.fixed_image_size, self.min_image_size)
        default_weights = get_model_weights(arch).DEFAULT
        if weights_path is not None:
            state = _read_state_dict(Path(weights_path), arch)
            load_checked(self.model, state, weights_path, _torchvision_state(arch))
        elif pretrained:
            state = _download_state_dict(arch, default_weights)
            load_checked(self.model, state, default_weights.url, _torchvision_state(arch))

        new_head = nn.Sequential(nn.Dropout(dropout), nn.Linear(old_head.in_features, num_classes))
        _replace(self.model, head, new_head)
        if in_channels == 1 and adapt_input == "sum":
            _replace(self.model, stem, _sum_input_channels(stem_conv))
        self._repeat_gray = in_channels == 1 and adapt_input == "repeat"
        self._head_path = head
        self._cam_path = cam_layer

        self.input_stats: tuple[list[float], list[float]] | None = None
        if pretrained or weights_path is not None:
            # Every torchvision classification weight set shares its preprocessing: ImageNet's statistics.
            preset = default_weights.transforms()
            mean, std = list(preset.mean), list(preset.std)
            # The data set normalises what it feeds, 1 channel here (a repeat happens after normalising).
            self.input_stats = ([sum(mean) / 3], [sum(std) / 3]) if in_channels == 1 else (mean, std)

    # Properties rather than attributes: registering the modules twice would duplicate them in state dicts.
    @property
    def head(self) -> nn.Module:
        return self.model.get_submodule(self._head_path)

    @property
    def cam_layer(self) -> nn.Module:
        return self.model.get_submodule(self._cam_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._repeat_gray:
            x = x.repeat(1, 3, 1, 1)
        return self.model(x)


def tokens_to_feature_map(tokens: torch.Tensor) -> torch.Tensor:
    """ViT activations ``[B, 1 + H*W, D]`` (class token first) as a feature map ``[B, D, H, W]`` for Grad-CAM.

    Feature maps ``[B, C, H, W]`` pass through unchanged, so callers need not know the architecture.
    """
    if tokens.ndim != 3:
        return tokens
    patches = tokens[:, 1:]
    side = math.isqrt(patches.shape[1])
    return patches.reshape(patches.shape[0], side, side, patches.shape[2]).permute(0, 3, 1, 2)


def _find(model: nn.Module, path: str, kind: type[nn.Module], role: str, arch: str) -> Any:
    try:
        module = model.get_submodule(path)
    except AttributeError:
        module = None
    if not isinstance(module, kind):
        found = "nothing" if module is None else type(module).__name__
        raise UserError(
            f"model.net.{role}={path!r} names {found} in {arch}, not a {kind.__name__}: set it to the dotted "
            f"path of the right module (print(torchvision.models.get_model({arch!r})) lists them)"
        )
    return module


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent), name, new)


def _sum_input_channels(conv: nn.Conv2d) -> nn.Conv2d:
    """The same convolution for 1-channel input: on a gray image repeated to RGB it gives the same output."""
    gray = nn.Conv2d(
        1,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    with torch.no_grad():
        gray.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            gray.bias.copy_(conv.bias)
    return gray


def _torchvision_state(arch: str) -> str:
    return (
        f"the state dict of torchvision's unmodified {arch} (1000-class head, RGB stem), such as the file "
        "torchvision downloads (model.net.weights_path)"
    )


def _download_state_dict(arch: str, weights: torchvision.models.WeightsEnum) -> dict[str, torch.Tensor]:
    """torchvision's default weights for ``arch``, from torch.hub's cache, downloading them if missing."""
    file_name = Path(urlparse(weights.url).path).name
    cached = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    if not cached.is_file():
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            hash_prefix = torch.hub.HASH_REGEX.search(file_name)
            torch.hub.download_url_to_file(
                weights.url, str(cached), hash_prefix.group(1) if hash_prefix else None, progress=True
            )
        except Exception as err:  # any failure (offline, proxy, disk, hash) has the same remedy
            raise UserError(
                f"could not download the pretrained {arch} weights ({type(err).__name__}: {err}). "
                f"This run needs {file_name} from {weights.url}. Put that file at {cached} (torchvision's "
                "cache, found there on the next run), or pass its path with "
                f"model.net.weights_path=/path/to/{file_name}, or train from scratch with "
                "model.net.pretrained=false"
            ) from err
    return _read_state_dict(cached, arch)


def _read_state_dict(path: Path, arch: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(
            f"model.net.weights_path={str(path)!r}: no such file. Point it at a state dict of torchvision's "
            f"{arch}, e.g. the file at {get_model_weights(arch).DEFAULT.url}"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated downloads and foreign pickles fail in many ways
        raise UserError(
            f"cannot read weights from {path} ({type(err).__name__}: {str(err).splitlines()[0]}): it must be "
            f"a plain state dict of torchvision's {arch} saved with torch.save; delete it if it is a broken "
            "download"
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(
            f"{path} holds a {type(state).__name__}, not a state dict (parameter names to tensors) of "
            f"torchvision's {arch}; a Lightning checkpoint is resumed with ckpt_path, not weights_path"
        )
    if arch.startswith("densenet"):
        state = {_DENSENET_OLD_KEY.sub(r"\1\2", k): v for k, v in state.items()}
    return state


def load_checked(model: nn.Module, state: Any, source: str | Path, expected: str) -> None:
    """``load_state_dict(strict=True)`` with shapes checked too, naming the first offenders in one error;
    ``expected`` says what the file must hold."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{source} holds a {type(state).__name__}, not {expected}")
    wanted = model.state_dict()
    # Checkpoints older than PyTorch 0.4.1 (torchvision's DenseNet) lack batch norm's step counter, which
    # BatchNorm fills in on load; nothing else may be missing.
    missing = [k for k in wanted if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in wanted]
    mismatched = [
        f"{k} {tuple(state[k].shape)} in the file vs {tuple(v.shape)} in the model"
        for k, v in wanted.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"{label} ({len(keys)}): {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched))
        if keys
    ]
    if problems:
        raise UserError(f"the weights in {source} do not fit: {'; '.join(problems)}. It must hold {expected}")
    model.load_state_dict(state, strict=False)  # strict above, but for num_batches_tracked
