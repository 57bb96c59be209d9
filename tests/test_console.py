"""What a person sees on the console: refused configs answer at once, with one message and no traceback, and a
normal run prints no library noise."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xray_cls.errors import UserError
from xray_cls.sweep import run_trial

REPO = Path(__file__).resolve().parents[1]
# Each takes seconds to import; none is needed to answer --help or to refuse a config.
HEAVY = ("torch", "lightning", "torchvision", "torchmetrics", "matplotlib", "captum", "kornia")


def command(*args: str, root: Path, importtime: bool = False) -> subprocess.CompletedProcess[str]:
    """``python -m xray_cls.train <args>`` as a user runs it: no warning filters of ours, output captured."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"} | {"XRAY_CLS_ROOT": str(root)}
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.run(
        [sys.executable, *flags, "-m", "xray_cls.train", *args, f"paths.log_dir={root / 'outputs'}"],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def split_importtime(stderr: str) -> tuple[set[str], str]:
    """The modules ``-X importtime`` reports (top-level package names) and the rest of stderr."""
    modules, rest = set(), []
    for line in stderr.splitlines():
        if line.startswith("import time:"):
            modules.add(line.rsplit("|", 1)[-1].strip().split(".")[0])
        else:
            rest.append(line)
    return modules, "\n".join(rest)


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--help"], 0, None),
        (["--cfg", "job"], 0, None),
        (["optimizer.lrr=1"], 1, "Could not override 'optimizer.lrr'"),  # a typo: Hydra refuses it
        (["optimizer.lr=-1"], 2, "invalid config: optimizer.lr=-1; allowed: a number > 0"),  # validation.py
    ],
)
def test_help_and_refused_configs_answer_without_heavy_imports(
    tmp_path: Path, args: list[str], status: int, message: str | None
) -> None:
    proc = command(*args, root=tmp_path, importtime=True)
    modules, stderr = split_importtime(proc.stderr)
    assert proc.returncode == status, stderr[-2000:]
    assert "hydra" in modules  # the import log was read
    assert not modules & set(HEAVY), f"imported before the config was checked: {modules & set(HEAVY)}"
    output = proc.stdout + stderr
    assert "Traceback" not in output
    if message is not None:
        assert output.count(message) == 1, output


def test_refused_config_is_in_the_run_log_once(tmp_path: Path) -> None:
    proc = command("optimizer.lr=0", root=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: invalid config: optimizer.lr=0; allowed: a number > 0"
    assert proc.stdout.strip() == ""
    (log,) = (tmp_path / "outputs" / "train" / "runs").glob("*/train.log")
    assert log.read_text().count("invalid config: optimizer.lr=0") == 1


def test_failed_sweep_job_is_one_line_on_the_console(make_cfg, capsys: pytest.CaptureFixture[str]) -> None:
    def failing(cfg):
        raise UserError("invalid config: optimizer.lr=-1; allowed: a number > 0")

    assert run_trial(make_cfg(), failing) is None
    out, err = capsys.readouterr()
    assert err.count("invalid config: optimizer.lr=-1") == 1 and err.startswith("error: job failed:")
    assert "Traceback" not in out + err


def test_image_extensions_are_torchvisions() -> None:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    from xray_cls.data.folders import IMG_EXTENSIONS as ours

    assert ours == IMG_EXTENSIONS


def _write_xrays(path: Path) -> None:
    """A PneumoniaMNIST-format file whose first 16 validation images are all normal: the sanity check's two
    batches of 8 hold one class, the whole validation split both."""
    rng = np.random.default_rng(0)
    labels = {
        "train": np.arange(80) % 2,
        "val": np.r_[np.zeros(16), np.arange(24) % 2],
        "test": np.arange(16) % 2,
    }
    arrays = {}
    for split, y in labels.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (len(y), 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = y.astype(np.uint8).reshape(-1, 1)
    path.parent.mkdir(parents=True)
    np.savez_compressed(path, **arrays)


@pytest.mark.slow
def test_a_normal_run_prints_no_library_noise(tmp_path: Path) -> None:
    _write_xrays(tmp_path / "data" / "medmnist" / "pneumoniamnist.npz")
    proc = command(
        "data=pneumoniamnist", f"paths.data_dir={tmp_path / 'data'}", "trainer=cpu", "trainer.max_epochs=1",
        "data.batch_size=8", "data.num_workers=0", "callbacks.progress_bar.refresh_rate=0",
        root=tmp_path,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    for noise in (
        "No positive samples",  # torchmetrics, on the sanity check's one-class batches
        "No negative samples",
        "LeafSpec",  # torch's deprecation, raised inside Lightning
        "Tip:",  # Lightning's advertisements
        "TPU available",
        "Warning",
        "Traceback",
    ):
        assert noise not in output, f"{noise!r} in:\n{output[-3000:]}"
    # Lightning's own log lines appear once (its package logger has a console handler of its own).
    assert len(re.findall(r"GPU available: \w+", output)) == 1, output[-3000:]
