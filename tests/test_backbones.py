"""torchvision backbones: every config builds and trains a step, weights load exactly or fail clearly."""

from __future__ import annotations

import re
import urllib.error
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torch import nn
from torchvision.models import get_model, get_model_weights

from xray_cls.config import config_dir, register_resolvers
from xray_cls.errors import UserError
from xray_cls.models.backbones import TorchvisionBackbone, tokens_to_feature_map

BACKBONES = [
    "resnet18",
    "resnet34",
    "resnet50",
    "densenet121",
    "efficientnet_b0",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "convnext_tiny",
    "vit_b_16",
]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
RESNET18 = {"arch": "resnet18", "head": "fc", "stem": "conv1", "cam_layer": "layer4"}


def _saved_state(model: nn.Module, path: Path, rename: Callable[[str], str | None] | None = None) -> Path:
    """``model``'s state dict in a file, keys renamed (or dropped where ``rename`` gives None)."""
    state = {rename(k) if rename else k: v for k, v in model.state_dict().items()}
    torch.save({k: v for k, v in state.items() if k is not None}, path)
    return path


def _same_head(net: TorchvisionBackbone, linear: nn.Linear) -> TorchvisionBackbone:
    net.head[1].load_state_dict(linear.state_dict())
    return net.eval()


def test_every_torchvision_config_is_tested() -> None:
    configs = {p.stem for p in (config_dir() / "model").glob("[!_]*.yaml") if "_torchvision" in p.read_text()}
    assert configs == set(BACKBONES)


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("arch", BACKBONES)
def test_config_builds_a_trainable_backbone(make_cfg, arch: str, in_channels: int) -> None:
    register_resolvers()
    data = "mnist" if in_channels == 1 else "cifar10"
    # Built without the data set's image size (28 or 32 px, too small for some): fed its own smallest below.
    cfg = make_cfg(f"model={arch}", f"data={data}", "model.net.pretrained=false", "model.net.image_size=null")
    assert cfg.model.finetune.mode == "full" and cfg.model.mean is None and cfg.model.compile is False
    net = instantiate(cfg.model.net)

    assert net.input_stats is None  # from scratch: the data set's statistics
    assert isinstance(net.head, nn.Sequential) and net.head[1].out_features == 10
    activations = []
    net.cam_layer.register_forward_hook(lambda module, args, out: activations.append(out))
    size, batch = (net.fixed_image_size, 1) if net.fixed_image_size else (net.min_image_size, 2)
    logits = net.train()(torch.rand(batch, in_channels, size, size))
    logits.sum().backward()

    assert logits.shape == (batch, 10)
    assert net.head[1].weight.grad is not None
    stem = net.model.get_submodule(cfg.model.net.stem)
    assert stem.in_channels == in_channels and stem.weight.grad is not None
    feature_map = tokens_to_feature_map(activations[0])
    assert feature_map.ndim == 4 and feature_map.shape[0] == batch


def _as_old_densenet_file(key: str) -> str | None:
    """torchvision's DenseNet file predates PyTorch 0.4.1: 'denselayer1.norm.1.weight', no step counters."""
    return (
        None
        if key.endswith("num_batches_tracked")
        else re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", key)
    )


@pytest.mark.parametrize(
    ("arch", "head", "stem", "rename"),
    [
        ("resnet18", "fc", "conv1", None),
        ("densenet121", "classifier", "features.conv0", _as_old_densenet_file),
    ],
)
def test_weights_path_reproduces_the_torchvision_model(
    tmp_path: Path, arch: str, head: str, stem: str, rename
) -> None:
    reference = get_model(arch).eval()
    path = _saved_state(reference, tmp_path / "weights.pth", rename)
    net = TorchvisionBackbone(arch, 1000, 3, head=head, stem=stem, cam_layer=stem, weights_path=str(path))
    net = _same_head(net, reference.get_submodule(head))

    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x), rtol=0, atol=0)
    assert net.input_stats == (IMAGENET_MEAN, IMAGENET_STD)


def test_mismatched_weights_name_the_offending_keys(tmp_path: Path) -> None:
    state = get_model("resnet18").state_dict()
    del state["layer1.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(3)
    state["fc.weight"] = torch.zeros(10, 512)
    torch.save(state, tmp_path / "wrong.pth")

    with pytest.raises(UserError) as error:
        TorchvisionBackbone(
            num_classes=2, in_channels=3, **RESNET18, weights_path=str(tmp_path / "wrong.pth")
        )
    message = str(error.value)
    assert "missing (1): layer1.0.conv1.weight" in message
    assert "unexpected (1): extra.weight" in message
    assert "fc.weight (10, 512) in the file vs (1000, 512) in the model" in message


def test_unreadable_weights_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        TorchvisionBackbone(
            num_classes=2, in_channels=3, **RESNET18, weights_path=str(tmp_path / "absent.pth")
        )
    (tmp_path / "broken.pth").write_bytes(b"<html>proxy login</html>")
    with pytest.raises(UserError, match="cannot read weights"):
        TorchvisionBackbone(
            num_classes=2, in_channels=3, **RESNET18, weights_path=str(tmp_path / "broken.pth")
        )
    torch.save({"epoch": 3, "state_dict": {}}, tmp_path / "checkpoint.pth")
    with pytest.raises(UserError, match="not a state dict"):
        TorchvisionBackbone(
            num_classes=2, in_channels=3, **RESNET18, weights_path=str(tmp_path / "checkpoint.pth")
        )


def test_grayscale_stem_sums_the_rgb_weights(tmp_path: Path) -> None:
    reference = get_model("resnet18")
    path = str(_saved_state(reference, tmp_path / "weights.pth"))
    rgb = _same_head(
        TorchvisionBackbone(num_classes=1000, in_channels=3, **RESNET18, weights_path=path), reference.fc
    )
    gray = _same_head(
        TorchvisionBackbone(num_classes=1000, in_channels=1, **RESNET18, weights_path=path), reference.fc
    )

    torch.testing.assert_close(gray.model.conv1.weight, reference.conv1.weight.sum(dim=1, keepdim=True))
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(gray(x), rgb(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-4)
    assert gray.input_stats == ([sum(IMAGENET_MEAN) / 3], [sum(IMAGENET_STD) / 3])


def test_repeat_feeds_the_gray_channel_to_the_rgb_stem(tmp_path: Path) -> None:
    reference = get_model("resnet18")
    path = str(_saved_state(reference, tmp_path / "weights.pth"))
    rgb = _same_head(
        TorchvisionBackbone(num_classes=1000, in_channels=3, **RESNET18, weights_path=path), reference.fc
    )
    gray = TorchvisionBackbone(
        num_classes=1000, in_channels=1, **RESNET18, weights_path=path, adapt_input="repeat"
    )
    gray = _same_head(gray, reference.fc)

    assert gray.model.conv1.in_channels == 3
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(gray(x), rgb(x.repeat(1, 3, 1, 1)), rtol=0, atol=0)
    assert len(gray.input_stats[0]) == 1  # the data it is fed has one channel


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch.hub cache, and a network that refuses every download; returns the checkpoints dir."""

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("[Errno 101] Network is unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "urlopen", refuse)
    return Path(torch.hub.get_dir()) / "checkpoints"


def test_pretrained_offline_says_which_file_to_fetch(offline: Path) -> None:
    url = get_model_weights("resnet18").DEFAULT.url
    file_name = url.rsplit("/", 1)[1]

    with pytest.raises(UserError) as error:
        TorchvisionBackbone(num_classes=2, in_channels=1, **RESNET18, pretrained=True)
    message = str(error.value)
    assert url in message
    assert str(offline / file_name) in message
    assert f"model.net.weights_path=/path/to/{file_name}" in message
    assert "Network is unreachable" in message
    assert list(offline.iterdir()) == []  # no partial download left behind


def test_pretrained_offline_uses_a_file_in_the_torchvision_cache(offline: Path) -> None:
    reference = get_model("resnet18")
    file_name = get_model_weights("resnet18").DEFAULT.url.rsplit("/", 1)[1]
    offline.mkdir(parents=True)
    _saved_state(reference, offline / file_name)

    net = TorchvisionBackbone(num_classes=2, in_channels=3, **RESNET18, pretrained=True)
    torch.testing.assert_close(net.model.conv1.weight, reference.conv1.weight, rtol=0, atol=0)
    assert net.input_stats == (IMAGENET_MEAN, IMAGENET_STD)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"arch": "resnet19"}, "not a torchvision classification model"),
        ({"head": "layer4"}, r"head='layer4' names Sequential in resnet18, not a Linear"),
        ({"stem": "conv0"}, r"stem='conv0' names nothing"),
    ],
)
def test_wrong_options_are_user_errors(change: dict, match: str) -> None:
    options = {"num_classes": 2, "in_channels": 1, **RESNET18, **change}
    with pytest.raises(UserError, match=match):
        TorchvisionBackbone(**options)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("data.num_channels=4", "data.num_channels=4; allowed: 1 or 3"),
        ("model.net.adapt_input=tile", "model.net.adapt_input='tile'; allowed: sum | repeat"),
    ],
)
def test_wrong_settings_are_refused_before_the_backbone_is_built(make_cfg, override: str, match: str) -> None:
    from xray_cls.validation import validate

    with pytest.raises(UserError, match=re.escape(match)):
        validate(make_cfg("model=resnet18", "model.net.pretrained=false", override))
