"""TorchXRayVision's DenseNet-121: its features on its own input scale, weights from a state dict or
torchxrayvision's own file (never downloaded: written here with the real architecture), one clear error
offline, and a run that fine-tunes the head alone and is evaluated."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
import torch

from tests.pretrained_runs import images, train_and_evaluate
from xray_cls.config import register_resolvers
from xray_cls.errors import UserError
from xray_cls.evaluation.gradcam import gradcam

# torchxrayvision as our module imported it: a plain import here could run first and silence every warning
# of the test session (its models module calls warnings.filterwarnings("ignore")).
from xray_cls.models.xrv_backbone import XRVDenseNet121, xrv
from xray_cls.runtime import build_module

WEIGHTS = "densenet121-res224-all"
URL = xrv.models.model_urls[WEIGHTS]["weights_url"]
FILE_NAME = URL.rsplit("/", 1)[1]


def _reference() -> torch.nn.Module:
    """torchxrayvision's DenseNet, randomly initialised (seeded), with its 18 pathology outputs."""
    torch.manual_seed(0)
    return xrv.models.DenseNet(weights=None).eval()


def _same_features(net: XRVDenseNet121, reference: torch.nn.Module) -> None:
    expected = reference.features.state_dict()
    for key, value in net.features.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=f"{key} differs")


def test_config_builds_with_its_own_input_scaling(make_cfg) -> None:
    register_resolvers()
    cfg = make_cfg("model=xrv_densenet121", "model.net.pretrained=false", "model.net.image_size=null")
    module = build_module(cfg.model)

    # The network scales [0, 1] to torchxrayvision's range itself: the module's normalisation is the identity.
    assert module.mean.flatten().tolist() == [0.0] and module.std.flatten().tolist() == [1.0]
    assert module.net.head[1].out_features == 10
    assert module.net.cam_layer is module.net.features.norm5


def test_weights_path_gives_torchxrayvision_logits_on_its_pixel_scale(tmp_path: Path) -> None:
    reference = _reference()
    state = reference.state_dict()
    # A state dict of a model built with weights also holds their operating points: they go with its head.
    state["op_threshs"] = torch.tensor(xrv.models.model_urls[WEIGHTS]["op_threshs"])
    torch.save(state, tmp_path / "xrv.pth")
    net = XRVDenseNet121(18, 1, weights_path=str(tmp_path / "xrv.pth"))
    net.head[1].load_state_dict(reference.classifier.state_dict())
    net.eval()

    x = images(2)
    with torch.no_grad():
        # Raw logits: torchxrayvision's forward without weights applies neither sigmoid nor op_threshs.
        torch.testing.assert_close(net(x), reference(x * 2048 - 1024), rtol=1e-5, atol=1e-4)
        rgb = XRVDenseNet121(18, 3, weights_path=str(tmp_path / "xrv.pth"))
        rgb.head.load_state_dict(net.head.state_dict())
        torch.testing.assert_close(rgb.eval()(x.repeat(1, 3, 1, 1)), net(x), rtol=1e-5, atol=1e-4)


def test_torchxrayvisions_own_file_is_read_by_its_loader(tmp_path: Path) -> None:
    reference = _reference()
    torch.save(reference, tmp_path / FILE_NAME)  # what torchxrayvision downloads: the pickled model

    _same_features(XRVDenseNet121(2, 1, weights_path=str(tmp_path / FILE_NAME)), reference)


@pytest.mark.parametrize(
    ("write", "match"),
    [
        (None, "no such file"),
        (lambda p: p.write_bytes(b"<html>proxy login</html>"), "cannot read .*xrv.pth as a state dict"),
        (lambda p: torch.save(_reference(), p), f"only under its own name, {FILE_NAME}"),
        (
            lambda p: torch.save({"conv1.weight": torch.zeros(64, 1, 7, 7)}, p),
            r"do not fit: missing \(\d+\): features.conv0.weight.*unexpected \(1\): conv1.weight",
        ),
    ],
    ids=["absent", "not weights", "renamed xrv file", "another model"],
)
def test_unfit_weights_are_one_user_error(tmp_path: Path, write, match: str) -> None:
    path = tmp_path / "xrv.pth"
    if write is not None:
        write(path)

    with pytest.raises(UserError, match=match) as error:
        XRVDenseNet121(2, 1, weights_path=str(path))
    assert "\n" not in str(error.value)


def test_unknown_weights_are_refused() -> None:
    with pytest.raises(
        UserError, match=r"model.net.weights='densenet121-res224-none'; allowed: densenet121-res"
    ):
        XRVDenseNet121(2, 1, weights="densenet121-res224-none")


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty home (torchxrayvision's cache) and a network that refuses every download; returns the
    cache folder."""

    def refuse(*args, **kwargs):
        raise requests.ConnectionError("[Errno 101] Network is unreachable")

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(xrv.utils.requests, "get", refuse)
    return Path(xrv.utils.get_cache_dir())


def test_pretrained_offline_says_which_file_to_fetch(offline: Path) -> None:
    with pytest.raises(UserError) as error:
        XRVDenseNet121(2, 1, pretrained=True)
    message = str(error.value)
    assert URL in message and str(offline / FILE_NAME) in message
    assert f"model.net.weights_path=/path/to/{FILE_NAME}" in message
    assert "Network is unreachable" in message and "\n" not in message
    assert not any(offline.glob("*"))  # no partial download left behind


def test_pretrained_offline_uses_a_file_in_torchxrayvisions_cache(offline: Path) -> None:
    reference = _reference()
    offline.mkdir(parents=True)
    torch.save(reference, offline / FILE_NAME)

    _same_features(XRVDenseNet121(2, 1, pretrained=True), reference)


@pytest.mark.slow
def test_xrv_densenet_trains_its_head_alone_and_is_evaluated(make_cfg, tmp_path: Path) -> None:
    reference = _reference()
    torch.save(reference.state_dict(), tmp_path / "xrv.pth")
    run = train_and_evaluate(
        make_cfg, tmp_path, "model=xrv_densenet121", f"model.net.weights_path={tmp_path / 'xrv.pth'}",
        "model.finetune.mode=linear_probe",
    )  # fmt: skip

    _same_features(run.module.net, reference)  # batch norm's running statistics included
    head_size = sum(p.numel() for p in run.module.net.head.parameters())
    assert run.trained["model/trainable_params"] == head_size
    assert run.module.mean.flatten().tolist() == [0.0] and run.module.std.flatten().tolist() == [1.0]

    assert run.evaluated["status"] == "ok" and run.evaluated["model"] == f"XRVDenseNet121 {WEIGHTS}"
    assert (run.eval_dir / "figures" / "gradcam.png").is_file()
    # At 64 px the last feature map is 2x2 (1x1 at the 32 px of training): a map with a place in it.
    maps = gradcam(run.module, images(2, 64), targets=1)
    assert maps.shape == (2, 1, 64, 64) and maps.amax(dim=(1, 2, 3)).tolist() == [1.0, 1.0]
    assert maps.amin(dim=(1, 2, 3)).max() < 1.0
