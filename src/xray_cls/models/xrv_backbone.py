"""TorchXRayVision's DenseNet-121, pretrained on several public chest X-ray sets, as a backbone.

Its features come from torchxrayvision's own model and weights (``densenet121-res224-all`` by default);
its 18 pathology outputs (and their sigmoid and operating-point rescaling) are dropped for a new head. The
weights expect 1-channel images scaled to [-1024, 1024] (``xrv.datasets.normalize``), at 224 px: the model
scales our [0, 1] images itself, so the module's normalisation must leave them alone (``input_stats`` is the
identity).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from xray_cls.errors import UserError
from xray_cls.models.backbones import CNN_MIN_IMAGE_SIZE, load_checked
from xray_cls.models.classifier import Classifier
from xray_cls.validation import check_size_limits

# Importing torchxrayvision calls warnings.filterwarnings("ignore") for the whole process: keep it to itself.
with warnings.catch_warnings():
    import torchxrayvision as xrv

log = logging.getLogger(__name__)

XRV_RANGE = 1024.0  # torchxrayvision's pixel scale: [0, maxval] maps to [-1024, 1024]


class XRVDenseNet121(Classifier):
    """TorchXRayVision's DenseNet-121 features with a new dropout + linear head for ``num_classes``.

    Args:
        num_classes: outputs of the new head.
        in_channels: 1, or 3 (averaged to gray: the weights saw gray X-rays).
        weights: torchxrayvision's name of the weights, e.g. ``densenet121-res224-all`` (trained on NIH,
            PadChest, CheXpert, MIMIC-CXR, Google, OpenI and RSNA) or ``densenet121-res224-rsna``.
        pretrained: start from those weights, downloaded by torchxrayvision's own loader into its cache
            (``~/.torchxrayvision/models_data``).
        weights_path: start from a local file instead: the file torchxrayvision downloads, under its own
            name (read by torchxrayvision's loader), or a state dict of ``xrv.models.DenseNet``; takes
            precedence over ``pretrained``.
        dropout: dropout before the head's linear layer.
        cam_layer: dotted path (in this module) of the layer Grad-CAM explains.
        image_size: the input side it will be fed (``data.image_size``), checked before any download.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        weights: str = "densenet121-res224-all",
        pretrained: bool = False,
        weights_path: str | None = None,
        dropout: float = 0.0,
        cam_layer: str = "features.norm5",
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        names = [k for k in xrv.models.model_urls if k.startswith("densenet121")]
        if weights not in names:
            raise UserError(f"model.net.weights={weights!r}; allowed: {' | '.join(names)}")
        self.min_image_size = CNN_MIN_IMAGE_SIZE
        if image_size is not None:
            check_size_limits(image_size, None, self.min_image_size)
        if weights_path is not None:
            source = _from_file(Path(weights_path), weights)
        elif pretrained:
            source = _downloaded(weights)
        else:
            source = xrv.models.DenseNet(weights=None)
        pretrained_features = pretrained or weights_path is not None
        if pretrained_features and image_size is not None and image_size != 224:
            log.warning("%s was trained on 224 px images; data.image_size=%d", weights, image_size)

        self.features = source.features  # the classifier, sigmoid and op_threshs stay behind
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(source.classifier.in_features, num_classes))
        self._gray = in_channels == 3
        self._cam_path = cam_layer
        try:
            self.get_submodule(cam_layer)
        except AttributeError:
            raise UserError(f"model.net.cam_layer={cam_layer!r} names nothing in {weights}") from None
        # Scaled to torchxrayvision's range in forward: the module's normalisation is the identity.
        self.input_stats = ([0.0] * in_channels, [1.0] * in_channels)

    @property
    def cam_layer(self) -> nn.Module:
        return self.get_submodule(self._cam_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._gray:
            x = x.mean(dim=1, keepdim=True)
        x = (2 * x - 1) * XRV_RANGE  # [0, 1] -> [-1024, 1024], as xrv.datasets.normalize
        features = self.features(x)
        # Not in place (torchxrayvision's own forward is): Grad-CAM hooks the features' last layer.
        pooled = F.adaptive_avg_pool2d(F.relu(features), 1).flatten(1)
        return self.head(pooled)


def _file_name(weights: str) -> str:
    return Path(xrv.models.model_urls[weights]["weights_url"]).name


def _downloaded(weights: str) -> nn.Module:
    """torchxrayvision's model with ``weights``, from its cache, downloading them if missing."""
    try:
        return xrv.models.DenseNet(weights=weights)
    except Exception as err:  # offline, proxy, disk, a broken cached file: the same remedy
        cached = Path(xrv.utils.get_cache_dir()) / _file_name(weights)
        raise UserError(
            f"could not get torchxrayvision's {weights} weights ({type(err).__name__}: "
            f"{' '.join(str(err).split())[:300]}). This run needs {_file_name(weights)} from "
            f"{xrv.models.model_urls[weights]['weights_url']}. Put that file at {cached} (torchxrayvision's "
            f"cache, found there on the next run), or pass its path with "
            f"model.net.weights_path=/path/to/{_file_name(weights)}, or train from scratch with "
            "model.net.pretrained=false"
        ) from err


def _from_file(path: Path, weights: str) -> nn.Module:
    if not path.is_file():
        raise UserError(
            f"model.net.weights_path={str(path)!r}: no such file. Point it at {_file_name(weights)} "
            f"(from {xrv.models.model_urls[weights]['weights_url']}) or a state dict of xrv.models.DenseNet"
        )
    if path.name == _file_name(weights):
        # torchxrayvision's own file, a pickled model: its own loader reads it, from the folder it is in.
        try:
            return xrv.models.DenseNet(weights=weights, cache_dir=str(path.parent))
        except Exception as err:
            raise UserError(
                f"torchxrayvision cannot load {path} ({type(err).__name__}: "
                f"{' '.join(str(err).split())[:300]}): delete it if it is a broken download"
            ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated downloads and foreign pickles fail in many ways
        raise UserError(
            f"cannot read {path} as a state dict ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
            f"torchxrayvision's own file is read by its loader only under its own name, {_file_name(weights)}"
        ) from None
    if isinstance(state, dict):
        # A model built with weights carries their operating points as a buffer; they go with the old head.
        state.pop("op_threshs", None)
    model = xrv.models.DenseNet(weights=None)
    load_checked(model, state, path, "a state dict of torchxrayvision's DenseNet-121 (xrv.models.DenseNet)")
    return model
