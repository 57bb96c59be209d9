"""What a new user meets first: the wheel, the embedded X-rays as the default run, the report that comes
with training and the closing lines on the console."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import QUICK
from xray_cls.config import packaged_dataset
from xray_cls.data.pneumoniamnist import PneumoniaMNISTSource
from xray_cls.evaluation.report_figures import CAPTIONS
from xray_cls.train import train

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = "pneumoniamnist_balanced.npz"


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    """The package built as a wheel and unpacked: what ``pip install xray_cls`` puts on a machine."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
         str(REPO)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = out.glob("xray_cls-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(out / "site")
    return out / "site", names


def _offline_env(site: Path, home: Path) -> dict[str, str]:
    # No proxy and an unroutable one for good measure: any download attempt fails at once.
    return {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(site),
        "HOME": str(home),
        "https_proxy": "http://127.0.0.1:9",
        "http_proxy": "http://127.0.0.1:9",
    }


def test_configs_data_and_licences_ship_in_the_wheel(wheel_site, tmp_path: Path) -> None:
    """The Lightning+Hydra template's wart: configs left out of the wheel. Ours carries configs, the embedded
    data set and its licence notice, and runs from any directory."""
    site, names = wheel_site
    assert {
        "xray_cls/conf/train.yaml",
        "xray_cls/conf/data/chest_xray.yaml",
        "xray_cls/conf/data/pneumoniamnist_balanced.yaml",
        "xray_cls/conf/model/resnet18.yaml",
        f"xray_cls/datasets/{EMBEDDED}",
    } <= names
    notice = next(n for n in names if n.endswith("licenses/NOTICE"))
    text = (site / notice).read_text()
    assert "CC BY 4.0" in text and "MedMNIST v2" in text and "Kermany" in text
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _offline_env(site, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "xray_cls.train", "--cfg", "job", "--resolve"],
        cwd=elsewhere, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert f"data_dir: {elsewhere}/data" in proc.stdout  # outside a checkout, data go under the working dir
    assert f"file: {site}/xray_cls/datasets/{EMBEDDED}" in proc.stdout  # the default data: inside the wheel
    where = subprocess.run(
        [sys.executable, "-c", "import xray_cls.config as c; print(c.config_dir())"],
        cwd=elsewhere, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert where.stdout.strip() == str(site / "xray_cls" / "conf")


@pytest.mark.slow
def test_the_default_run_trains_offline_from_the_wheel_and_leaves_a_report(
    wheel_site, tmp_path: Path
) -> None:
    """``python -m xray_cls.train`` with no data arguments, on a machine without network or data folder."""
    site, _ = wheel_site
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    quick = [o for o in QUICK if not o.startswith("report=")]
    proc = subprocess.run(
        [sys.executable, "-m", "xray_cls.train", *quick],
        cwd=elsewhere, env=_offline_env(site, tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = (elsewhere / "outputs" / "train" / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "ok" and 0 <= metrics["test/auroc"] <= 1  # binary: pneumonia vs normal
    assert (run / "report.md").is_file() and {p.stem for p in (run / "figures").glob("*.png")} == set(
        CAPTIONS
    )
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert not (elsewhere / "data").exists()  # nothing was downloaded, nor a folder made for it
    # The closing lines: where the run is, the headline numbers, and how to open TensorBoard.
    tail = proc.stdout.strip().splitlines()[-4:]
    assert tail[0] == f"run directory: {run}"
    assert f"test AUROC {metrics['test/auroc']:.4f}" in tail[1]
    assert f"sensitivity {metrics['test/op/sensitivity']:.4f}" in tail[1]
    assert f"specificity {metrics['test/op/specificity']:.4f}" in tail[1]
    assert tail[2] == f"report:        {run / 'report.md'}"
    assert tail[3] == f"tensorboard:   tensorboard --logdir {run}"


def test_the_embedded_set_is_the_real_balanced_pneumoniamnist_subset() -> None:
    splits = PneumoniaMNISTSource(file=packaged_dataset(EMBEDDED), download=False).load(Path("/nonexistent"))
    sizes = {name: len(split) for name, split in splits.items()}
    assert sizes == {"train": 2428, "val": 270, "test": 468}
    for split in splits.values():
        assert split.images.shape[1:] == (1, 28, 28)
        assert np.bincount(split.labels).tolist() == [len(split) // 2] * 2  # class-balanced
        assert split.images.std() > 20  # real images, not a blank placeholder


def test_training_ends_with_the_report_in_the_run_directory_and_tensorboard(make_cfg, capsys) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_cfg("report=true", small=False)
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    assert cfg.data.source.file == packaged_dataset(EMBEDDED)  # the default data set: no data_dir involved
    report = (run / "report.md").read_text()
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report)
    assert {f"figures/{name}.png" for name in CAPTIONS} - {"figures/misclassified.png"} <= set(links)
    assert all((run / link).is_file() for link in links)
    # The threshold reported is the one chosen on validation and stored with the tested checkpoint.
    assert f"**{metrics['test/op/threshold']:.4f}**" in report and "Chosen on the validation split" in report
    assert str(Path(metrics["best_checkpoint"]).resolve()) in report
    assert f"| Sensitivity (recall) | {metrics['test/op/sensitivity']:.4f} |" in report
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert {f"eval/{Path(link).stem}" for link in links} <= set(events.Tags()["images"])
    assert f"tensorboard --logdir {run}" in capsys.readouterr().out


def test_multiclass_report_and_closing_lines(make_cfg, capsys) -> None:
    cfg = make_cfg("data=mnist", "report=true")
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    report = (run / "report.md").read_text()
    assert "Operating threshold" not in report and "| Accuracy |" in report
    assert f"result:        test accuracy {metrics['test/acc']:.4f}" in capsys.readouterr().out


def test_report_false_writes_no_report(make_cfg) -> None:
    cfg = make_cfg("report=false", small=False)
    train(cfg)
    run = Path(cfg.paths.output_dir)
    assert (run / "metrics.json").is_file()
    assert not (run / "report.md").exists() and not (run / "figures").exists()


def test_medmnist_package_layout_is_found_without_download(tmp_path: Path, monkeypatch) -> None:
    """The ``medmnist`` package keeps ``pneumoniamnist.npz`` directly in its root (``~/.medmnist``)."""
    from tests.xray_fixtures import write_pneumoniamnist_npz

    arrays = write_pneumoniamnist_npz(tmp_path / "pneumoniamnist.npz", {"train": 6, "val": 4, "test": 2})

    def offline(*args, **kwargs):
        raise AssertionError("no download may be attempted")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    source = PneumoniaMNISTSource(size=28)
    source.prepare(tmp_path)
    splits = source.load(tmp_path)
    assert np.array_equal(splits["val"].images[:, 0], arrays["val_images"])


def test_a_missing_embedded_file_is_one_clear_message(tmp_path: Path) -> None:
    from xray_cls.errors import UserError

    with pytest.raises(UserError, match=r"data.source.file=.*nope\.npz does not exist"):
        PneumoniaMNISTSource(file=str(tmp_path / "nope.npz")).prepare(tmp_path)
