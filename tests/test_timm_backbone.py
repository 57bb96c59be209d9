"""timm backbones: the configs build, weights from a file load exactly (or fail in one clear error), offline
downloads say what to fetch, and a timm model trains, fine-tunes its head alone and is evaluated.

timm's own tiny test models (``test_convnext``: 0.2 M parameters) keep these fast; weights are written here
with the real architectures, never downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from hydra.utils import instantiate
from torch import nn

from tests.pretrained_runs import images, train_and_evaluate
from xray_cls.config import register_resolvers
from xray_cls.errors import UserError
from xray_cls.evaluation.gradcam import gradcam
from xray_cls.models.timm_backbone import TimmBackbone

NAME = "test_convnext"
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _reference(name: str = NAME) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name).eval()


def _weights(model: nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


def _same_classifier(net: TimmBackbone, reference: nn.Module) -> TimmBackbone:
    net.head.load_state_dict(reference.get_classifier().state_dict())
    return net.eval()


@pytest.mark.parametrize(
    ("option", "cam_layer"), [("timm_convnext_nano", "stages.3"), ("timm_efficientnet_b0", "blocks.6")]
)
def test_config_builds_a_backbone(make_cfg, option: str, cam_layer: str) -> None:
    register_resolvers()
    cfg = make_cfg(f"model={option}", "model.net.pretrained=false", "model.net.image_size=null")
    net = instantiate(cfg.model.net)

    assert net.input_stats is None  # from scratch: the data set's statistics
    assert net.head is net.model.get_classifier() and net.head.out_features == 10
    assert net.cam_layer is net.model.get_submodule(cam_layer)
    activations = []
    net.cam_layer.register_forward_hook(lambda module, args, out: activations.append(out))
    with torch.no_grad():  # training is tested end to end below, on a smaller model
        logits = net.eval()(torch.rand(2, 1, net.min_image_size, net.min_image_size))
    assert logits.shape == (2, 10) and activations[0].ndim == 4


def test_weights_path_reproduces_the_timm_model(tmp_path: Path) -> None:
    reference = _reference()
    path = _weights(reference, tmp_path / "model.pth")
    net = _same_classifier(TimmBackbone(NAME, 1000, 3, weights_path=str(path)), reference)

    x = images(2).repeat(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x), rtol=0, atol=0)
    assert net.input_stats == (list(reference.pretrained_cfg["mean"]), list(reference.pretrained_cfg["std"]))


def test_gray_input_sums_the_rgb_stem_and_averages_the_statistics(tmp_path: Path) -> None:
    reference = _reference("test_efficientnet")
    path = str(_weights(reference, tmp_path / "model.pth"))
    gray = _same_classifier(TimmBackbone("test_efficientnet", 1000, 1, weights_path=path), reference)

    torch.testing.assert_close(gray.model.conv_stem.weight, reference.conv_stem.weight.sum(1, keepdim=True))
    x = images(2)
    with torch.no_grad():
        torch.testing.assert_close(gray(x), reference(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-4)
    (mean,), (std,) = gray.input_stats
    assert (mean, std) == pytest.approx((sum(IMAGENET_MEAN) / 3, sum(IMAGENET_STD) / 3))


def _without_one_key(path: Path) -> None:
    state = _reference().state_dict()
    del state["stages.1.blocks.0.conv_dw.weight"]
    torch.save(state, path)


@pytest.mark.parametrize(
    ("write", "match"),
    [
        (None, "no such file"),
        (lambda p: p.write_bytes(b"<html>proxy login</html>"), "cannot load the weights in .*model.pth"),
        (lambda p: _weights(_reference("test_efficientnet"), p), "into timm's test_convnext"),
        (_without_one_key, r"Missing key\(s\) in state_dict: \"stages.1.blocks.0.conv_dw.weight\""),
    ],
    ids=["absent", "not weights", "another model", "a key missing"],
)
def test_unfit_weights_are_one_user_error(tmp_path: Path, write, match: str) -> None:
    path = tmp_path / "model.pth"
    if write is not None:
        write(path)

    with pytest.raises(UserError, match=match) as error:
        TimmBackbone(NAME, 2, 1, weights_path=str(path))
    assert "\n" not in str(error.value)


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty Hugging Face cache, and huggingface_hub refusing every request (as without a network)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_pretrained_offline_says_where_to_get_the_weights(offline) -> None:
    with pytest.raises(UserError) as error:
        TimmBackbone(NAME, 2, 1, pretrained=True)
    message = str(error.value)
    assert "https://huggingface.co/timm/test_convnext.r160_in1k" in message
    assert "model.net.weights_path=/path/to/model.safetensors" in message
    assert "model.net.pretrained=false" in message
    assert "LocalEntryNotFoundError" in message  # the cause, as huggingface_hub names it
    assert "\n" not in message


def test_a_fixed_size_model_refuses_another_size_before_downloading(offline) -> None:
    with pytest.raises(UserError, match=r"data.image_size=32; allowed for this model: exactly 160"):
        TimmBackbone("test_vit", 2, 1, pretrained=True, image_size=32)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"name": "no_such_net"}, "model.net.name='no_such_net' is not a timm model"),
        ({"name": "test_convnext.no_such_tag"}, "Invalid pretrained tag"),
        ({"cam_layer": "stages.9"}, "model.net.cam_layer='stages.9' names nothing in timm's test_convnext"),
    ],
)
def test_wrong_options_are_user_errors(options: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        TimmBackbone(**{"name": NAME, "num_classes": 2, "in_channels": 1, **options})


def test_model_timm_without_a_name_is_refused_before_anything_is_built(make_cfg) -> None:
    from xray_cls.validation import validate

    with pytest.raises(UserError, match=r"invalid config: model.net.name=\?\?\?; allowed: a timm model name"):
        validate(make_cfg("model=timm"))


@pytest.mark.slow
def test_a_timm_backbone_trains_its_head_alone_and_is_evaluated(make_cfg, tmp_path: Path) -> None:
    reference = _reference()
    path = _weights(reference, tmp_path / "model.pth")
    run = train_and_evaluate(
        make_cfg, tmp_path, "model=timm", f"model.net.name={NAME}", f"model.net.weights_path={path}",
        "model.finetune.mode=linear_probe",
    )  # fmt: skip

    trained = run.module.net.model.state_dict()
    classifier = reference.pretrained_cfg["classifier"]
    for key, value in reference.state_dict().items():
        if key == "stem.0.weight":  # adapted to gray input
            torch.testing.assert_close(trained[key], value.sum(1, keepdim=True), rtol=0, atol=0)
        elif not key.startswith(classifier):
            torch.testing.assert_close(trained[key], value, rtol=0, atol=0, msg=f"{key} changed")
    head_size = sum(p.numel() for p in run.module.net.head.parameters())
    assert run.trained["model/trainable_params"] == head_size
    # Normalised as the weights were trained (test_convnext: 0.5, 0.5), not with the data set's 0.5, 0.25.
    assert (run.module.mean.flatten().tolist(), run.module.std.flatten().tolist()) == ([0.5], [0.5])

    assert run.evaluated["status"] == "ok" and run.evaluated["model"] == f"TimmBackbone {NAME}"
    assert (run.eval_dir / "figures" / "gradcam.png").is_file()
    # At 64 px the last feature map is 2x2 (1x1 at the 32 px of training): a map with a place in it.
    maps = gradcam(run.module, images(2, 64), targets=1)
    assert maps.shape == (2, 1, 64, 64) and maps.amax(dim=(1, 2, 3)).tolist() == [1.0, 1.0]
    assert maps.amin(dim=(1, 2, 3)).max() < 1.0
