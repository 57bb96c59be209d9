"""Short end-to-end runs through the real Trainer, data loaders and loggers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from xray_cls.checkpoints import load_checkpoint
from xray_cls.errors import UserError
from xray_cls.train import train

SCRATCH_MODELS = ["simple_cnn", "lenet", "medical_cnn", "modern_cnn"]
DATASETS = ["mnist", "fashion_mnist", "cifar10"]


def _run_dir(cfg) -> Path:
    return Path(cfg.paths.output_dir)


@pytest.mark.slow
@pytest.mark.parametrize("data", DATASETS)
@pytest.mark.parametrize("model", SCRATCH_MODELS)
def test_every_model_trains_on_every_dataset(make_cfg, data: str, model: str) -> None:
    cfg = make_cfg(f"data={data}", f"model={model}")
    metrics = train(cfg)
    run = _run_dir(cfg)
    written = json.loads((run / "metrics.json").read_text())
    assert written["status"] == "ok"
    assert 0.0 <= written["val/acc_best"] <= 1.0
    assert {"test/acc", "test/loss", "test/f1_macro", "test/auroc", "test/ece"} <= set(written)
    assert len([k for k in written if k.startswith("test/recall_")]) == 10
    assert metrics["test/acc"] == written["test/acc"]
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "config.yaml").is_file()


def test_run_directory_holds_every_artefact_and_tensorboard_content(make_cfg) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_cfg("trainer.max_epochs=2")
    train(cfg)
    run = _run_dir(cfg)
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = events.Tags()
    assert {"train/loss", "val/loss", "val/acc", "val/acc_best", "test/acc"} <= set(tags["scalars"])
    assert "train/samples" in tags["images"]
    assert any("confusion" in t for t in tags["images"])
    # The HParams tab: the run's hyperparameters, with its final metrics among the scalars.
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")
    best = json.loads((run / "metrics.json").read_text())["best_checkpoint"]
    assert Path(best).is_file()
    checkpoint = load_checkpoint(best)
    assert checkpoint["xray_cls"]["config"]["model"]["net"]["_target_"].endswith("SimpleCNN")


def test_same_seed_gives_identical_metrics(make_cfg, tmp_path: Path) -> None:
    runs = []
    for i in range(2):
        cfg = make_cfg(
            "trainer.deterministic=true",
            "data.augment.crop_padding=2",
            f"paths.output_dir={tmp_path / str(i)}",
        )
        runs.append(train(cfg))
    assert runs[0]["test/acc"] == runs[1]["test/acc"]
    assert runs[0]["val/loss"] == runs[1]["val/loss"]


def test_different_seed_changes_the_run(make_cfg, tmp_path: Path) -> None:
    a = train(make_cfg("seed=1", f"paths.output_dir={tmp_path / 'a'}"))
    b = train(make_cfg("seed=2", f"paths.output_dir={tmp_path / 'b'}"))
    assert a["val/loss"] != b["val/loss"]


@pytest.mark.parametrize("on_device", ["true", "false"])
def test_both_data_paths_train(make_cfg, on_device: str) -> None:
    metrics = train(make_cfg(f"data.on_device={on_device}", "data=cifar10"))
    assert torch.isfinite(torch.tensor(metrics["test/loss"]))


def test_model_too_big_for_the_image_is_a_clear_error(make_cfg) -> None:
    with pytest.raises(UserError, match="does not fit 8x8 images"):
        train(make_cfg("model=lenet", "data.image_size=8"))


def test_missing_dataset_names_directory_and_files(make_cfg, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    with pytest.raises(UserError) as err:
        train(make_cfg(f"paths.data_dir={empty}", "data.source.download=false"))
    message = str(err.value)
    assert str(empty / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message
    assert not (empty / "MNIST" / "raw").exists() or not any((empty / "MNIST" / "raw").iterdir())


def test_missing_checkpoint_for_resume_is_a_clear_error(make_cfg, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        train(make_cfg(f"ckpt_path={tmp_path / 'nope.ckpt'}"))


def test_failed_download_is_a_clear_error_and_leaves_nothing_behind(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    empty = tmp_path / "offline"
    with pytest.raises(UserError, match="could not be downloaded") as err:
        train(make_cfg(f"paths.data_dir={empty}"))
    assert "train-images-idx3-ubyte" in str(err.value)
    assert not list(empty.rglob("*-ubyte"))


@pytest.mark.slow
def test_pretrained_backbone_trains_end_to_end_on_mnist_format_data(make_cfg) -> None:
    cfg = make_cfg("model=resnet18", "model.net.pretrained=false", "data.image_size=32", "data.batch_size=16")
    metrics = train(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0
    checkpoint = load_checkpoint(metrics["best_checkpoint"])
    assert checkpoint["state_dict"]["net.model.conv1.weight"].shape[1] == 1  # the gray stem, not 3 channels
