from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from torchvision.datasets import CIFAR10

from tests.formats import write_cifar10, write_idx
from xray_cls.config import config_dir

REPO = Path(__file__).resolve().parents[1]

# Two cores: torch's own thread pool must not fight the DataLoader workers and pytest.
torch.set_num_threads(2)
os.environ.setdefault("XRAY_CLS_ROOT", str(REPO))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MNIST, Fashion-MNIST (IDX) and CIFAR-10 (pickles) written in their real formats."""
    root = tmp_path_factory.mktemp("data")
    write_idx(root, "MNIST")
    write_idx(root, "FashionMNIST", seed=1)
    md5 = write_cifar10(root)
    (root / "cifar_md5.txt").write_text("\n".join(f"{k} {v}" for k, v in md5.items()))
    return root


@pytest.fixture(autouse=True)
def cifar_checksums(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision verifies CIFAR-10 files by MD5: point its table at the files the tests wrote."""
    md5 = dict(line.split() for line in (data_dir / "cifar_md5.txt").read_text().splitlines())
    monkeypatch.setattr(
        CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)]
    )
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5["batches.meta"]})


# The suite's small set-up: the tiny MNIST files written above and the smallest CNN; put first, so that a
# test's own overrides (and sweeps) win. The default run (the embedded X-rays) has tests of its own.
SMALL = ["data=mnist", "model=simple_cnn", "optimizer=adam", "scheduler=none"]
QUICK = [
    "trainer=cpu",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.num_sanity_val_steps=0",
    "data.num_workers=0",
    "data.batch_size=32",
    "callbacks.progress_bar.refresh_rate=0",
    "report=false",  # the end-of-training report has tests of its own (test_first_run.py)
]


@pytest.fixture
def make_cfg(data_dir: Path, tmp_path: Path) -> Iterator:
    """Compose the train config as the command line would, with data and outputs in temporary dirs."""

    def _make(*overrides: str, config_name: str = "train", small: bool = True) -> DictConfig:
        """``small=False``: the package's own default data and model instead of the suite's SMALL ones."""
        GlobalHydra.instance().clear()
        quick = [*SMALL, *QUICK] if small else QUICK
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose(
                config_name=config_name,
                overrides=[
                    f"paths.data_dir={data_dir}",
                    f"paths.output_dir={tmp_path / 'run'}",
                    *quick,
                    *overrides,
                ],
            )

    yield _make
    GlobalHydra.instance().clear()


@pytest.fixture(autouse=True)
def no_hydra_record() -> Iterator[None]:
    """Hydra's record of a run (choices, overrides) is global: no test sees another's."""
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().cfg = None
    yield
    HydraConfig.instance().cfg = None
