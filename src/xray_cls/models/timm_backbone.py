"""Any timm model as a backbone: ``model=timm model.net.name=<name>`` (``timm.list_models()`` lists them).

The model is built by ``timm.create_model`` with timm's own weights (downloaded from the Hugging Face hub, or
a local copy through timm's ``pretrained_cfg_overlay=dict(file=...)``); timm adapts the stem to 1-channel
input itself (summing the RGB filters) and names its classifier, its last feature stage and its
preprocessing, so no module paths need configuring.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from xray_cls.errors import UserError
from xray_cls.models.backbones import CNN_MIN_IMAGE_SIZE
from xray_cls.models.classifier import Classifier
from xray_cls.validation import check_size_limits


class TimmBackbone(Classifier):
    """A timm model with a new classifier for ``num_classes`` and a stem for ``in_channels``.

    Args:
        name: a timm model name, with or without a pretrained tag (``convnext_nano``,
            ``convnext_nano.in12k_ft_in1k``).
        num_classes: outputs of the new classifier.
        in_channels: 1 (grayscale) or 3 (RGB).
        pretrained: start from timm's weights for ``name``, downloaded into the Hugging Face cache.
        weights_path: start from a local copy of those weights instead (the ``model.safetensors`` or
            ``pytorch_model.bin`` that timm downloads, or any state dict of the unmodified model); takes
            precedence over ``pretrained``.
        cam_layer: dotted path of the layer Grad-CAM explains; ``None``: the last feature stage timm lists
            (``feature_info``), e.g. ``stages.3`` of a ConvNeXt.
        dropout: timm's own dropout before the classifier (``drop_rate``).
        image_size: the input side it will be fed (``data.image_size``), checked before any weights are
            downloaded; ``None``: not checked here.
    """

    def __init__(
        self,
        name: str,
        num_classes: int,
        in_channels: int,
        pretrained: bool = False,
        weights_path: str | None = None,
        cam_layer: str | None = None,
        dropout: float = 0.0,
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        if not timm.is_model(name):
            raise UserError(
                f"model.net.name={name!r} is not a timm model; "
                f"timm.list_models('*{name.split('.')[0][:6]}*') lists similar names"
            )
        try:
            weights_cfg = timm.models.get_pretrained_cfg(name)
        except RuntimeError as err:  # an unknown pretrained tag
            raise UserError(f"model.net.name={name!r}: {err}") from None
        # Models with learnt position embeddings (ViTs) take only the size their weights were trained at.
        fixed = None
        if weights_cfg is not None and weights_cfg.fixed_input_size:
            fixed = weights_cfg.input_size[-1]
        self.fixed_image_size: int | None = fixed
        self.min_image_size = fixed or CNN_MIN_IMAGE_SIZE
        if image_size is not None:  # refused before a download that would be wasted (or fail offline)
            check_size_limits(image_size, self.fixed_image_size, self.min_image_size)

        common = {"in_chans": in_channels, "drop_rate": dropout}
        if weights_path is not None:
            self.model = _create_from_file(name, Path(weights_path), num_classes, common)
        elif pretrained:
            self.model = _create_downloaded(name, weights_cfg, num_classes, common)
        else:
            self.model = timm.create_model(name, pretrained=False, num_classes=num_classes, **common)

        self._cam_path = cam_layer or _last_feature_stage(self.model, name)
        try:
            self.model.get_submodule(self._cam_path)
        except AttributeError:
            raise UserError(
                f"model.net.cam_layer={self._cam_path!r} names nothing in timm's {name}: set it to the "
                f"dotted path of a layer (print(timm.create_model({name!r})) lists them)"
            ) from None

        self.input_stats: tuple[list[float], list[float]] | None = None
        if pretrained or weights_path is not None:
            cfg = self.model.pretrained_cfg
            mean, std = list(cfg["mean"]), list(cfg["std"])
            # The data set normalises what it feeds, 1 channel here: timm summed the stem over RGB.
            self.input_stats = (
                ([sum(mean) / len(mean)], [sum(std) / len(std)]) if in_channels == 1 else (mean, std)
            )

    # Properties rather than attributes: registering the modules twice would duplicate them in state dicts.
    @property
    def head(self) -> nn.Module:
        return self.model.get_classifier()

    @property
    def cam_layer(self) -> nn.Module:
        return self.model.get_submodule(self._cam_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _create_from_file(name: str, path: Path, num_classes: int, common: dict) -> nn.Module:
    if not path.is_file():
        raise UserError(
            f"model.net.weights_path={str(path)!r}: no such file. Point it at the weights of timm's {name} "
            "(model.safetensors or pytorch_model.bin from its Hugging Face page)"
        )
    try:
        return _create_strict(name, num_classes, common, {"file": str(path)})
    except Exception as err:  # unreadable files and key mismatches fail in many ways inside timm and torch
        raise UserError(
            f"cannot load the weights in {path} into timm's {name} ({type(err).__name__}: "
            f"{_one_line(err)}). model.net.weights_path needs a state dict of the unmodified {name} "
            "(its own classifier, RGB stem), such as the file timm downloads"
        ) from None


def _create_downloaded(
    name: str, cfg: timm.models.PretrainedCfg | None, num_classes: int, common: dict
) -> nn.Module:
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise UserError(
            f"timm has no pretrained weights for {name}: train it from scratch with "
            "model.net.pretrained=false"
        )
    where = f"https://huggingface.co/{cfg.hf_hub_id}" if cfg.hf_hub_id else cfg.url
    try:
        return _create_strict(name, num_classes, common)
    except Exception as err:  # offline, proxy, disk or a broken cached file: the same remedy
        raise UserError(
            f"could not get the pretrained weights of timm's {name} "
            f"({type(err).__name__}: {_one_line(err)}). "
            f"This run needs them from {where}: download model.safetensors there and pass "
            "model.net.weights_path=/path/to/model.safetensors, or put them in the Hugging Face cache "
            "(HF_HOME) and set HF_HUB_OFFLINE=1, or train from scratch with model.net.pretrained=false"
        ) from None


def _create_strict(name: str, num_classes: int, common: dict, overlay: dict | None = None) -> nn.Module:
    # Built with the weights' own class count, then given a new classifier: timm loads non-strictly (and only
    # logs what is missing) when the class counts differ, so a file of another model would load nothing,
    # silently. At the weights' own count every key must fit.
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **common)
    model.reset_classifier(num_classes)
    return model


def _last_feature_stage(model: nn.Module, name: str) -> str:
    stages = getattr(model, "feature_info", None)
    if not stages:
        raise UserError(
            f"timm's {name} lists no feature stages: set model.net.cam_layer to the dotted path of the layer "
            "Grad-CAM should explain"
        )
    return stages[-1]["module"]


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 400 else text[:400] + " ..."
