"""Faults and bad inputs from a hostile probe of the commands (issue 16): each one injected for real."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.error
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import QUICK, SMALL
from tests.eval_fixtures import BinaryRun, binary_run
from tests.faults import without_root_privileges
from tests.xray_fixtures import write_corrupt_image, write_image, write_image_folder
from xray_cls.data.decode import decode_image
from xray_cls.data.image_cache import load_or_build_cache
from xray_cls.errors import UserError
from xray_cls.predict import predict
from xray_cls.train import train

REPO = Path(__file__).resolve().parents[1]


def _run(
    command: str,
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", f"xray_cls.{command}", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=preexec_fn,
    )


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single ``error: ...`` line of a refused command, which must print no traceback."""
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


# -- 1. a checkpoint that cannot be written ---------------------------------------------------------------
def _file_size_limit() -> None:
    """``preexec_fn``: no file over 1 MiB, as on a full disk or a quota (a checkpoint here is about 5 MiB)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["read_only", "full"])
def test_a_checkpoint_that_cannot_be_written_stops_the_run_and_keeps_what_was_measured(
    data_dir: Path, tmp_path: Path, fault: str
) -> None:
    run_dir = tmp_path / "run"
    checkpoints = run_dir / "checkpoints"
    checkpoints.mkdir(parents=True)
    if fault == "read_only":
        checkpoints.chmod(0o555)  # the subprocess runs without root's power to ignore that
    proc = _run(
        "train",
        *SMALL,
        *QUICK,
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}",
        "trainer.max_epochs=2",
        cwd=tmp_path,
        preexec_fn=without_root_privileges if fault == "read_only" else _file_size_limit,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = _one_error_line(proc)
    reason = "Permission denied" if fault == "read_only" else "File too large"
    assert f"checkpoint {checkpoints}/epoch_000.ckpt could not be written ({reason})" in line
    assert "writable or free space" in line
    assert list(checkpoints.iterdir()) == []  # nothing half written either
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "could not be written" in metrics["error"]
    assert metrics["epoch"] == 0 and "val/acc" in metrics and "train/loss" in metrics  # the first epoch's


@pytest.mark.slow
def test_in_a_sweep_the_failed_job_keeps_what_was_measured(data_dir: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    checkpoints = sweep / "0" / "checkpoints"
    checkpoints.mkdir(parents=True)
    checkpoints.chmod(0o555)
    proc = _run(
        "train", "-m", *SMALL, *QUICK, f"paths.data_dir={data_dir}", f"hydra.sweep.dir={sweep}", "seed=1",
        "trainer.max_epochs=2", cwd=tmp_path, preexec_fn=without_root_privileges,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]  # the sweep's "a job failed"
    assert "job failed: checkpoint" in proc.stderr and "(Permission denied)" in proc.stderr
    metrics = json.loads((sweep / "0" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "could not be written" in metrics["error"]
    assert metrics["epoch"] == 0 and "val/acc" in metrics


# -- 2. kill -9 during the image-cache build ----------------------------------------------------------------
_BUILD = """
import sys
from pathlib import Path
from xray_cls.data.folders import list_images
from xray_cls.data.image_cache import load_or_build_cache

folder = Path(sys.argv[1])
load_or_build_cache(list_images(folder), folder, 16, 1, Path(sys.argv[2]), workers=2)
"""


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has ended; only its exit status waits to be collected


def _wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_killed_cache_build_leaves_no_decoder_running_and_a_later_build_removes_its_temporary_file(
    tmp_path: Path,
) -> None:
    images, cache = tmp_path / "images", tmp_path / "cache"
    for i in range(5):
        write_image(images / f"img{i}.png", (40, 30), seed=i)
    # A file whose reading never ends, as on a hung network mount: its decoder blocks until it is killed.
    os.mkfifo(images / "stuck.png")
    build = subprocess.Popen(
        [sys.executable, "-c", _BUILD, str(images), str(cache)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    decoders: list[int] = []
    other_build = subprocess.Popen(["sleep", "60"])  # the process of another run building in the same folder
    live = cache / f".images_16px_1ch_0123456789abcdef.{other_build.pid}.tmp.npy"
    try:
        assert _wait_for(lambda: len(_children(build.pid)) >= 2 and any(cache.glob(".*.tmp.npy")), 30)
        decoders = _children(build.pid)
        live.write_bytes(b"being written")
        os.kill(build.pid, signal.SIGKILL)
        build.wait()
        assert _wait_for(lambda: not any(_running(pid) for pid in decoders), 5), "decoders outlived the build"
        (stale,) = [p for p in cache.glob(".*.tmp.npy") if p != live]

        (images / "stuck.png").unlink()
        cached, kept = load_or_build_cache(sorted(images.glob("*.png")), images, 16, 1, cache, workers=1)
        assert cached.shape == (5, 1, 16, 16) and len(kept) == 5
        assert not stale.exists()  # the killed build's file is gone, the live one's is kept
        assert live.read_bytes() == b"being written"
    finally:
        for pid in decoders:  # on failure: the orphans, which nothing else would end
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        other_build.kill()
        other_build.wait()


# -- 3. resume=<run dir> keeps the run's data location and record ------------------------------------------
@pytest.mark.slow
def test_resume_reads_the_data_where_the_run_did_and_a_failed_attempt_keeps_config_yaml(
    data_dir: Path, tmp_path: Path
) -> None:
    # Today's default data folder (the project root's data/) is empty: only the run knows where its data is.
    default_root = {"XRAY_CLS_ROOT": str(tmp_path / "root")}
    logs = tmp_path / "logs"
    first = _run(
        "train", *SMALL, *QUICK, f"paths.data_dir={data_dir}", f"paths.log_dir={logs}", cwd=tmp_path,
        env=default_root,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    (run_dir,) = (logs / "train" / "runs").iterdir()
    record = (run_dir / "config.yaml").read_bytes()

    nowhere = tmp_path / "nowhere"
    failed = _run(
        "train", f"resume={run_dir}", f"paths.data_dir={nowhere}", "data.source.download=false",
        cwd=tmp_path, env=default_root,
    )  # fmt: skip
    assert failed.returncode == 2 and "download=false" in _one_error_line(failed)
    assert (run_dir / "config.yaml").read_bytes() == record  # the failed attempt did not overwrite it

    resumed = _run("train", f"resume={run_dir}", "trainer.max_epochs=2", cwd=tmp_path, env=default_root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    config = (run_dir / "config.yaml").read_text()
    assert f"data_dir: {data_dir}\n" in config and "max_epochs: 2\n" in config
    assert not (tmp_path / "root").exists()  # nothing looked for, downloaded or created in the default folder


# -- 4. one line instead of a traceback ---------------------------------------------------------------------
def test_a_seed_that_is_not_a_number_is_refused(make_cfg) -> None:
    with pytest.raises(UserError, match=r"invalid config: seed='abc'; allowed: a whole number"):
        train(make_cfg("seed=abc"))


def test_a_data_set_with_a_single_class_is_refused(make_cfg, tmp_path: Path) -> None:
    write_image_folder(tmp_path / "one_class", {"cats": 6})
    cfg = make_cfg(
        "data=image_folder", f"data.source.path={tmp_path / 'one_class'}", "data.image_size=32",
        "data.positive_class=null",
    )  # fmt: skip
    with pytest.raises(UserError, match=r"data.class_names=\['cats'\]; allowed: two or more classes"):
        train(cfg)


@pytest.mark.parametrize("mode", ["run", "sweep"])
def test_a_run_directory_that_cannot_be_created_is_one_line(tmp_path: Path, mode: str) -> None:
    blocked = tmp_path / "a_file"
    blocked.write_text("a file where the run directory's parent should be")
    where = ["-m", f"hydra.sweep.dir={blocked}/sweep", "seed=1,2"] if mode == "sweep" else []
    proc = _run("train", *where, *SMALL, f"hydra.run.dir={blocked}/run", cwd=tmp_path)
    assert proc.returncode == 2
    line = _one_error_line(proc)
    assert f"cannot create the run directory {blocked}/{mode}" in line and "paths.log_dir=" in line
    assert blocked.read_text().startswith("a file")


# -- 5, 6. nonsense accepted without a word; small ones ------------------------------------------------------
def test_tiny_and_unreadable_images_are_left_out_with_one_warning_per_run(make_cfg, tmp_path: Path) -> None:
    folder = tmp_path / "pets"
    write_image_folder(folder, {"cats": 12, "dogs": 12})
    write_image(folder / "cats" / "tiny.png", (1, 1))  # would become a flat training image
    write_corrupt_image(folder / "dogs" / "broken.png")
    cfg = make_cfg(
        "data=image_folder", f"data.source.path={folder}", "data.image_size=32",
        f"paths.data_dir={tmp_path / 'data'}",
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(cfg)  # loads each split in prepare_data and setup, for fit and again for test
    left_out = [str(w.message) for w in caught if str(w.message).startswith("Left out")]
    assert len(left_out) == 1, left_out
    assert "cats/tiny.png (too small: 1x1 px)" in left_out[0]
    assert "dogs/broken.png (unreadable)" in left_out[0]


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparent_pixels_are_black_like_an_x_ray_background(tmp_path: Path, mode: str) -> None:
    pixels = np.zeros((16, 16, 4), dtype=np.uint8)
    pixels[:, :8] = (100, 100, 100, 255)  # opaque grey on the left
    pixels[:, 8:] = (255, 255, 255, 0)  # white, fully transparent, on the right
    path = tmp_path / "alpha.png"
    Image.fromarray(pixels, "RGBA").convert(mode).save(path)
    for channels in (1, 3):
        decoded = decode_image(path, 16, channels)
        assert (decoded[:, :, :8] == 100).all() and (decoded[:, :, 8:] == 0).all()


def test_a_validation_fraction_that_leaves_too_few_training_images_is_refused(make_cfg) -> None:
    # About 30 images per class: 0.999 would train on 1 image of each and validate on all the others.
    with pytest.raises(UserError, match=r"data.val_fraction=0.999 leaves class '0' 1 training and \d+ valid"):
        train(make_cfg("data.val_fraction=0.999"))


@pytest.fixture(scope="session")
def binary(tmp_path_factory: pytest.TempPathFactory) -> BinaryRun:
    return binary_run(tmp_path_factory)


def _predict(make_cfg, run: BinaryRun, out: Path, inputs: Path) -> Path:
    args = [f"ckpt_path={run.best}", "predict.num_workers=0", f"input={inputs}"]
    return predict(make_cfg(f"paths.output_dir={out}", *args, config_name="predict"), args)


def test_predict_fails_when_no_input_could_be_read(make_cfg, binary: BinaryRun, tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    write_corrupt_image(inputs / "a.png", "garbage")
    write_corrupt_image(inputs / "b.jpeg", "truncated")
    with pytest.raises(UserError, match=r"none of the 2 input files could be read, nothing was predicted"):
        _predict(make_cfg, binary, tmp_path / "out", inputs)
    assert (tmp_path / "out" / "predictions.csv").read_text().count("Error") == 2  # each file's reason kept


def test_predict_warns_about_inputs_unlike_the_training_images(
    make_cfg, binary: BinaryRun, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    # Trained on 28 px grey X-rays: a colour photograph and a large grey image do not look like them.
    Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8), "RGB").save(inputs / "photo.jpeg")
    write_image(inputs / "large_grey.png", (300, 200))
    Image.fromarray(binary.arrays["test_images"][0], "L").save(inputs / "xray.png")  # like the training data
    write_image(inputs / "grey_as_rgb.jpeg", (28, 28), "RGB")  # grey pixels stored as RGB: not colour
    with caplog.at_level(logging.WARNING, logger="xray_cls"):
        _predict(make_cfg, binary, tmp_path / "out", inputs)
    (warning,) = [r.getMessage() for r in caplog.records if "do not look like" in r.getMessage()]
    assert warning.startswith("2 of 4 inputs do not look like the images the model was trained on")
    assert "photo.jpeg: colour, the model was trained on grey images" in warning
    assert "large_grey.png: 300x200 px, far larger than the 28 px trained on" in warning


def test_a_file_that_is_not_a_checkpoint_is_called_so(make_cfg, tmp_path: Path) -> None:
    notes = tmp_path / "notes.ckpt"
    notes.write_text("my notes about the run\n")
    with pytest.raises(UserError) as err:
        train(make_cfg(f"ckpt_path={notes}"))
    message = str(err.value)
    assert f"{notes} is not a checkpoint" in message and "truncated" not in message and "mmap" not in message


def test_offline_a_too_small_image_size_is_refused_before_any_download(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    downloads: list[str] = []

    def offline(url: object, *args: object, **kwargs: object) -> None:  # the network boundary
        downloads.append(str(url))
        raise urllib.error.URLError("[Errno 101] Network is unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached weights
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    cfg = make_cfg("model=resnet18", "data.image_size=8", f"paths.data_dir={tmp_path / 'none'}")
    assert cfg.model.net.pretrained
    with pytest.raises(UserError, match=r"data.image_size=8; allowed for this model: >= 32"):
        train(cfg)
    assert downloads == []
