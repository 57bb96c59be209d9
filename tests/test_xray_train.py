"""End-to-end training on the chest X-ray data sets, each written in its real on-disk format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.xray_fixtures import write_image_folder, write_kaggle_tree, write_pneumoniamnist_npz
from xray_cls.checkpoints import load_checkpoint, module_from_checkpoint
from xray_cls.runtime import build
from xray_cls.train import train

SMALL = ["data.image_size=32", "model=simple_cnn", "data.batch_size=8"]


def _check_run(cfg, metrics: dict) -> None:
    written = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert written["status"] == "ok"
    assert {"test/auroc", "test/sensitivity", "test/specificity", "val/auroc_best"} <= set(written)
    assert written["test/acc"] == metrics["test/acc"]


@pytest.mark.slow
def test_chest_xray_trains_on_a_kaggle_layout_tree(make_cfg, tmp_path: Path) -> None:
    root = tmp_path / "data"
    tree = write_kaggle_tree(
        root, patients={"train": 12, "val": 2, "test": 4}, normal={"train": 16, "val": 2, "test": 6}
    )
    cfg = make_cfg(f"paths.data_dir={root}", "data=chest_xray", "data.source.download=false", *SMALL)
    assert cfg.monitor.metric == "val/auroc"
    _check_run(cfg, train(cfg))

    datamodule = build(cfg.data)
    datamodule.setup("fit")
    train_patients = set(datamodule.splits["train"].groups) & {g for g in tree.patients["train"]}
    val_patients = set(datamodule.splits["val"].groups) & {g for g in tree.patients["train"]}
    assert train_patients and val_patients and not train_patients & val_patients
    assert len(datamodule.splits["test"]) == sum(tree.counts["test"].values())


@pytest.mark.slow
@pytest.mark.parametrize("balance", ["loss_weights", "sampler"])
def test_image_folder_trains_with_balancing(make_cfg, tmp_path: Path, balance: str) -> None:
    folder = tmp_path / "folder"
    write_image_folder(folder, {"cats": 30, "dogs": 10}, mode="RGB")
    cfg = make_cfg("data=image_folder", f"data.source.path={folder}", f"data.balance={balance}", *SMALL)
    assert list(cfg.data.class_names) == ["cats", "dogs"]
    metrics = train(cfg)
    _check_run(cfg, metrics)
    # The class weights of the loss belong to the training data, not to the checkpoint: eval can load it.
    checkpoint = load_checkpoint(metrics["best_checkpoint"])
    module = module_from_checkpoint(checkpoint)
    assert module.criterion.weight is None


@pytest.mark.slow
def test_pneumoniamnist_trains_from_a_placed_npz(make_cfg, tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_pneumoniamnist_npz(root / "medmnist" / "pneumoniamnist.npz", n={"train": 64, "val": 16, "test": 16})
    cfg = make_cfg(
        f"paths.data_dir={root}", "data=pneumoniamnist", "data.source.download=false", "model=simple_cnn"
    )
    _check_run(cfg, train(cfg))


def test_sampler_balances_the_classes_seen_in_training(make_cfg, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    write_image_folder(folder, {"common": 45, "rare": 5})
    seen = {}
    for on_device in ("true", "false"):
        cfg = make_cfg(
            "data=image_folder", f"data.source.path={folder}", "data.balance=sampler",
            f"data.on_device={on_device}",
            "data.image_size=16", "data.batch_size=4000", "data.source.test_fraction=0.1",
        )  # fmt: skip
        datamodule = build(cfg.data)
        datamodule.setup("fit")
        loader = datamodule.train_dataloader()
        labels = np.concatenate([np.asarray(batch[1]) for _ in range(20) for batch in loader])
        seen[on_device] = labels.mean()
    # About 1 in 10 training images is rare; the sampler draws both classes about equally often.
    assert seen["true"] == pytest.approx(0.5, abs=0.08)
    assert seen["false"] == pytest.approx(0.5, abs=0.08)


def test_loss_weights_are_inverse_class_frequencies(make_cfg, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    write_image_folder(folder, {"a": 30, "b": 10})
    cfg = make_cfg(
        "data=image_folder", f"data.source.path={folder}", "data.balance=loss_weights", "data.image_size=16"
    )
    datamodule = build(cfg.data)
    datamodule.setup("fit")
    counts = np.bincount(datamodule.splits["train"].labels)
    weights = datamodule.class_weights.numpy()
    assert weights[0] * counts[0] == pytest.approx(weights[1] * counts[1])
    assert weights[1] > weights[0]
