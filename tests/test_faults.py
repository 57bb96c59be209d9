"""Fault injection: interruption and exact resume, NaN losses, truncated files, bad configs, secrets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import QUICK, SMALL
from tests.xray_fixtures import fake_kaggle_download, make_zip, write_kaggle_tree
from xray_cls.errors import UserError
from xray_cls.train import train

REPO = Path(__file__).resolve().parents[1]
# Three epochs of 9 batches each on the test's MNIST files; deterministic, augmented, with dropout.
LONG = [
    "trainer.max_epochs=3", "trainer.limit_train_batches=null", "trainer.limit_val_batches=null",
    "trainer.limit_test_batches=null", "trainer.deterministic=true", "data.augment.crop_padding=2",
    "callbacks.early_stopping=null", "scheduler=cosine",
]  # fmt: skip


def _train(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "xray_cls.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_ends_like_an_unbroken_run(data_dir: Path, tmp_path: Path) -> None:
    common = [f"paths.data_dir={data_dir}", *SMALL, *QUICK, *LONG]
    unbroken = _train(*common, f"paths.log_dir={tmp_path / 'unbroken'}", cwd=tmp_path)
    assert unbroken.returncode == 0, unbroken.stderr[-2000:]
    (reference,) = (tmp_path / "unbroken" / "train" / "runs").iterdir()

    logs = tmp_path / "broken"
    fault = ["+callbacks.fault._target_=tests.faults.SignalAtStep", "+callbacks.fault.step=13"]  # mid epoch 1
    killed = _train(*common, *fault, f"paths.log_dir={logs}", cwd=tmp_path)
    assert killed.returncode != 0
    (run_dir,) = (logs / "train" / "runs").iterdir()
    assert "resume=" in killed.stderr + killed.stdout
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not (run_dir / "metrics.json").exists()

    resumed = _train(f"resume={run_dir}", "+callbacks.fault=null", f"paths.data_dir={data_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert list((logs / "train" / "runs").iterdir()) == [run_dir]  # the same run directory
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) >= 2  # the same TensorBoard run
    expected, got = _metrics(reference), _metrics(run_dir)
    for key in [k for k in expected if k.startswith(("train/", "val/", "test/"))]:
        assert got[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-7), key


@pytest.mark.slow
def test_nan_loss_stops_with_epoch_step_and_last_good_checkpoint(data_dir: Path, tmp_path: Path) -> None:
    fault = ["+callbacks.fault._target_=tests.faults.NaNLossAtStep", "+callbacks.fault.step=12"]
    proc = _train(
        f"paths.data_dir={data_dir}", f"paths.log_dir={tmp_path}", *SMALL, *QUICK, *LONG, *fault, cwd=tmp_path
    )
    assert proc.returncode == 2
    message = proc.stderr
    assert "epoch 1, step 12" in message and "last good checkpoint" in message and "Traceback" not in message
    assert "last.ckpt" in message


def test_nan_loss_can_skip_the_batch(make_cfg) -> None:
    from tests.faults import NaNLossAtStep

    cfg = make_cfg(
        "on_nonfinite_loss=skip",
        "+callbacks.fault._target_=tests.faults.NaNLossAtStep",
        "+callbacks.fault.step=1",
    )
    assert cfg.callbacks.fault._target_.endswith(NaNLossAtStep.__name__)
    metrics = train(cfg)
    assert (
        metrics["train/loss"] == metrics["train/loss"]
    )  # not NaN: the poisoned batch never reached the metrics


def test_truncated_checkpoint_is_refused_clearly_and_left_alone(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg()
    train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    before = last.read_bytes()
    with pytest.raises(UserError, match="truncated"):
        train(make_cfg(f"ckpt_path={last}", f"paths.output_dir={tmp_path / 'again'}"))
    assert last.read_bytes() == before


BAD_CONFIGS = [
    ("optimizer.lr=0", "optimizer.lr"),
    ("optimizer.lr=-0.1", "optimizer.lr"),
    ("data.batch_size=0", "data.batch_size"),
    ("data.val_fraction=1.5", "data.val_fraction"),
    ("data.val_fraction=0", "data.val_fraction"),
    ("data.balance=oversample", "data.balance"),
    ("data.positive_class=cat", "data.positive_class"),
    ("trainer=gpu", "trainer.accelerator"),
    ("eval.threshold=magic", "eval.threshold"),
]


@pytest.mark.parametrize(("override", "key"), BAD_CONFIGS, ids=[o for o, _ in BAD_CONFIGS])
def test_bad_config_is_refused_before_any_data_is_loaded(
    make_cfg, tmp_path: Path, override: str, key: str
) -> None:
    if override == "trainer=gpu":
        pytest.importorskip("torch")
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    empty = tmp_path / "no_data_here"
    with pytest.raises(UserError) as err:
        train(make_cfg(override, f"paths.data_dir={empty}", "data.source.download=false"))
    message = str(err.value)
    assert key in message and "allowed" in message and "\n" not in message
    assert not empty.exists()


@pytest.mark.parametrize("overrides", [["model=resnet18", "model.net.pretrained=false"], ["model=lenet"]])
def test_image_smaller_than_the_model_accepts_is_refused(
    make_cfg, tmp_path: Path, overrides: list[str]
) -> None:
    with pytest.raises(UserError, match=r"image_size|does not fit"):
        train(make_cfg(*overrides, "data.image_size=8", f"paths.data_dir={tmp_path / 'none'}"))


@pytest.mark.slow
def test_no_secret_reaches_any_run_artefact(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive_root = tmp_path / "archive"
    write_kaggle_tree(archive_root, corrupt=False, nested_duplicate=False, macosx=False)
    archive = make_zip(tmp_path / "chest-xray-pneumonia.zip", archive_root)
    calls = fake_kaggle_download(monkeypatch, tmp_path / "home", archive)
    # The Kaggle login of fake_kaggle_download (KAGGLE_USERNAME=someone, KAGGLE_KEY=0123456789abcdef), and
    # other secrets a cluster's environment holds.
    secrets = {
        "KAGGLE_KEY": "0123456789abcdef",
        "AWS_SECRET_ACCESS_KEY": "aws-s3cr3t-9f8e",
        "WANDB_API_KEY": "wb-s3",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    cfg = make_cfg(
        f"paths.data_dir={tmp_path / 'data'}", "data=chest_xray", "data.image_size=32", "model=simple_cnn"
    )
    train(cfg)
    assert calls == ["paultimothymooney/chest-xray-pneumonia"]
    run_dir = Path(cfg.paths.output_dir)
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".ckpt" for p in files) and any("tfevents" in p.name for p in files)
    for path in files:
        content = path.read_bytes()
        for value in [*secrets.values(), "someone"]:
            assert value.encode() not in content, f"{value} leaked into {path}"


def test_endless_training_with_a_schedule_that_needs_its_length_is_refused(make_cfg) -> None:
    with pytest.raises(UserError, match=r"trainer\.max_epochs=-1"):
        train(make_cfg("scheduler=cosine", "trainer.max_epochs=-1"))
