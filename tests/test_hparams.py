"""TensorBoard's HParams tab: every run is in it with its final metrics and the hyperparameters that matter,
read back from the event files; one learning-rate curve for a scratch model."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread

from tests.conftest import QUICK
from tests.test_cli import run
from xray_cls.config import config_dir
from xray_cls.hparams import KEYS, hparams, varied_keys
from xray_cls.models.scratch import SimpleCNN
from xray_cls.optim import param_groups
from xray_cls.train import train

# Named, not left to the defaults, which change.
OPTIONS = ("data=mnist", "optimizer=adam", "scheduler=none")
SUMMARIES = {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}


def _read(tensorboard_dir: Path) -> tuple[EventAccumulator, dict[str, HParamsPluginData]]:
    events = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0}).Reload()
    content = events.PluginTagToContent("hparams")
    return events, {tag: HParamsPluginData.FromString(data) for tag, data in content.items()}


def _open_event_files(folder: Path) -> list[str]:
    """Event files under ``folder`` whose writer is still open: its thread is a daemon, so what it still
    queues is lost when the process exits (a race, hence this deterministic check in process)."""
    threads = [t for t in threading.enumerate() if isinstance(t, _AsyncWriterThread)]
    files = [Path(os.fsdecode(t._record_writer._writer.filename)) for t in threads]
    return [str(f) for f in files if f.is_relative_to(folder)]


def _check_run(run_dir: Path) -> dict[str, Any]:
    """The three summaries are there, the metric columns are the run's final val/test metrics with the values
    of metrics.json, and one learning-rate curve; returns the logged hyperparameters."""
    events, summaries = _read(run_dir / "tensorboard")
    assert set(summaries) == SUMMARIES
    written = json.loads((run_dir / "metrics.json").read_text())
    columns = [m.name.tag for m in summaries["_hparams_/experiment"].experiment.metric_infos]
    final = {k for k, v in written.items() if k.startswith(("val/", "test/")) and isinstance(v, float)}
    assert columns[0] == "val/acc_best" and set(columns) == final and "test/acc" in columns
    for tag in columns:  # the tab shows a metric's last value
        assert events.Scalars(tag)[-1].value == pytest.approx(written[tag], abs=1e-6)
    # The final values are not logged again at step 0, where they would start every curve.
    assert min(e.step for e in events.Scalars("val/acc")) > 0
    assert [t for t in events.Tags()["scalars"] if t.startswith("lr-")] == ["lr-Adam"]
    logged = summaries["_hparams_/session_start_info"].session_start_info.hparams
    return {k: getattr(v, v.WhichOneof("kind")) for k, v in logged.items()}


def test_run_writes_the_hparams_summaries_the_keys_that_matter_and_final_metrics(make_cfg) -> None:
    cfg = make_cfg(*OPTIONS, "model=simple_cnn")
    train(cfg)
    assert _open_event_files(Path(cfg.paths.output_dir)) == []
    logged = _check_run(Path(cfg.paths.output_dir))
    # Composed in code, outside Hydra: the groups are named from the config itself.
    assert set(logged) == set(KEYS)
    assert logged["optimizer.lr"] == pytest.approx(1e-3) and logged["data.batch_size"] == 32
    assert (logged["model"], logged["data"], logged["optimizer"], logged["scheduler"]) == (
        "SimpleCNN",
        "MNIST",
        "Adam",
        "none",
    )


def _compose_with_hydra(*overrides: str) -> Any:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    GlobalHydra.instance().clear()
    return cfg


def test_hparams_are_the_chosen_options_and_every_command_line_key(tmp_path: Path) -> None:
    cfg = _compose_with_hydra(
        *OPTIONS, "model=lenet", "optimizer.lr=0.002", "data.batch_size=16", "trainer.max_epochs=7",
        "loss.label_smoothing=0.1", f"paths.data_dir={tmp_path}", "callbacks.progress_bar.refresh_rate=0",
        "model.compile=false",
    )  # fmt: skip
    HydraConfig.instance().set_config(cfg)
    values = hparams(cfg)
    assert {k: values[k] for k in ("model", "data", "optimizer", "scheduler")} == {
        "model": "lenet",
        "data": "mnist",
        "optimizer": "adam",
        "scheduler": "none",
    }
    assert values["optimizer.lr"] == 0.002 and values["data.batch_size"] == 16
    assert values["trainer.max_epochs"] == 7 and values["loss.label_smoothing"] == 0.1  # a key not in KEYS
    assert values["callbacks.progress_bar.refresh_rate"] == 0  # typed on the command line
    assert "paths.data_dir" not in values
    assert not [k for k in values if k.startswith("callbacks") and k != "callbacks.progress_bar.refresh_rate"]
    assert values["model.compile"] == "false"  # torch's summary would write a bool as the number 0
    assert len(values) == len(KEYS) + 3
    assert all(type(v) in (str, int, float) for v in values.values())


def test_the_keys_a_sweep_varies_are_marked_as_varying(tmp_path: Path) -> None:
    cfg = _compose_with_hydra("data=mnist", "model=lenet", "optimizer.lr=0.01", "data.batch_size=64")
    with open_dict(cfg):
        cfg.hydra.mode = "MULTIRUN"
        cfg.hydra.runtime.output_dir = str(tmp_path / "sweep" / "3")
    # What Hydra's basic sweeper saves before launching the jobs: the sweep's own command line.
    (tmp_path / "sweep").mkdir()
    sweep = ["model=lenet", "optimizer.lr=0.001,0.01", "data.batch_size=32,64"]
    OmegaConf.save({"hydra": {"overrides": {"task": sweep}}}, tmp_path / "sweep" / "multirun.yaml")
    HydraConfig.instance().set_config(cfg)
    assert varied_keys(cfg) == {"optimizer.lr", "data.batch_size"}


def test_a_net_that_trains_whole_at_one_rate_is_one_param_group() -> None:
    net = SimpleCNN(in_channels=1, num_classes=10, image_size=28)
    (group,) = param_groups(net, lr=1e-3)
    assert "name" not in group and len(group["params"]) == len(list(net.parameters()))
    assert [g["name"] for g in param_groups(net, lr=1e-3, backbone_lr_mult=0.5)] == ["head", "backbone"]


@pytest.mark.slow
def test_a_run_is_in_the_hparams_tab_after_its_process_exits(data_dir: Path, tmp_path: Path) -> None:
    # The summaries are written last, just before the process exits (unclosed, lost in about 1 run of 3).
    run(
        "xray_cls.train", *OPTIONS, "model=lenet", "optimizer.lr=0.002",
        f"paths.data_dir={data_dir}", f"paths.log_dir={tmp_path}", *QUICK,
        cwd=tmp_path,
    )  # fmt: skip
    (run_dir,) = (tmp_path / "train" / "runs").iterdir()
    logged = _check_run(run_dir)
    assert (logged["model"], logged["data"], logged["optimizer.lr"]) == ("lenet", "mnist", 0.002)
    assert not [k for k in logged if k.startswith("callbacks") and k != "callbacks.progress_bar.refresh_rate"]
    # The tab shows the keys marked as varying first: in a single run, those its command line set.
    experiment = _read(run_dir / "tensorboard")[1]["_hparams_/experiment"].experiment
    varied = {h.name for h in experiment.hparam_infos if h.differs}
    assert {"model", "optimizer.lr", "trainer.max_epochs"} <= varied and "seed" not in varied
