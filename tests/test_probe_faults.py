"""Faults and bad inputs from a hostile probe of the commands (issue 16): each one injected for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import QUICK, SMALL
from tests.faults import without_root_privileges

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
@pytest.mark.slow
def test_unwritable_checkpoint_folder_stops_the_run_and_keeps_what_was_measured(
    data_dir: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    checkpoints = run_dir / "checkpoints"
    checkpoints.mkdir(parents=True)
    checkpoints.chmod(0o555)  # read-only; the subprocess runs without root's power to ignore that
    proc = _run(
        "train",
        *SMALL,
        *QUICK,
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}",
        "trainer.max_epochs=2",
        cwd=tmp_path,
        preexec_fn=without_root_privileges,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = _one_error_line(proc)
    assert f"checkpoint {checkpoints}/epoch_000.ckpt could not be written (Permission denied)" in line
    assert "writable" in line
    assert list(checkpoints.iterdir()) == []
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "could not be written" in metrics["error"]
    assert metrics["epoch"] == 0 and "val/acc" in metrics and "train/loss" in metrics  # the first epoch's
