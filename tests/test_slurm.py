"""Sweeps on a real SLURM cluster through Hydra's submitit launcher: jobs, DDP over srun, preemption and
requeue, and a sweep that outlives the command that launched it.

The cluster is the one-node one of ``scripts/slurm-local.sh start`` (``.ci/run`` starts it); without one these
tests fail, naming that command.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import QUICK, SMALL
from tests.formats import write_idx
from tests.test_faults import LONG

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slurm

# Each job on one of the node's CPUs, without the GPUs and memory the launcher's defaults ask for.
ON_THIS_NODE = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=null",
    "hydra.launcher.tasks_per_node=1",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=10",
]


@pytest.fixture(scope="session", autouse=True)
def slurm_cluster() -> None:
    """A SLURM cluster with a node ready to take jobs, else a failure that says how to start one."""
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        states = None
    if states is None or states.returncode != 0 or not re.search(r"idle|mix|alloc", states.stdout):
        pytest.fail(
            "no SLURM cluster here: start the local one with `scripts/slurm-local.sh start` (as root)"
        )


def _env() -> dict[str, str]:
    # sbatch hands this environment to the job: the fault callbacks are imported from tests/.
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}


def _sweep(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "xray_cls.train", "-m", *ON_THIS_NODE, *args],
        cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(
            f"sweep failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def _leaderboard(sweep: Path) -> list[dict[str, str]]:
    with (sweep / "leaderboard.csv").open() as f:
        return list(csv.DictReader(f))


def _slurm_job_ids(log: str) -> list[str]:
    return re.findall(r"SLURM job (\d+), attempt", log)


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            queue = subprocess.run(["squeue"], capture_output=True, text=True).stdout
            raise AssertionError(f"timed out waiting for {what}; squeue:\n{queue}")
        time.sleep(0.5)


@pytest.mark.slow
def test_grid_sweep_runs_each_job_as_a_slurm_job(data_dir: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = _sweep(
        "optimizer.lr=0.001,0.003", f"hydra.sweep.dir={sweep}", f"paths.data_dir={data_dir}", *SMALL, *QUICK,
        cwd=tmp_path,
    )  # fmt: skip
    ids = set()
    for job in ("0", "1"):
        assert _metrics(sweep / job)["status"] == "ok"
        (slurm_id,) = _slurm_job_ids((sweep / job / "train.log").read_text())
        ids.add(slurm_id)
    assert len(ids) == 2  # two SLURM jobs (tasks of one array), one per sweep job
    assert [row["status"] for row in _leaderboard(sweep)] == ["ok", "ok"]
    assert "leaderboard:" in proc.stdout


@pytest.mark.slow
def test_ddp_job_runs_as_two_srun_tasks_into_one_run_directory(data_dir: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    quick = [o for o in QUICK if not o.startswith("trainer=")]
    _sweep(
        "trainer=ddp_cpu", "hydra.launcher.tasks_per_node=2", f"hydra.sweep.dir={sweep}",
        f"paths.data_dir={data_dir}", *SMALL, *quick, cwd=tmp_path,
    )  # fmt: skip
    assert [p.parent for p in sweep.glob("**/metrics.json")] == [sweep / "0"]
    assert _metrics(sweep / "0")["status"] == "ok"
    # srun started both ranks (one submitit log per task); they met in one process group of two.
    task_logs = sorted((sweep / ".submitit").glob("*/*_log.out"))
    assert len(task_logs) == 2
    members = {m for log in task_logs for m in re.findall(r"MEMBER: (\d/\d)", log.read_text())}
    assert members == {"1/2", "2/2"}


@pytest.fixture(scope="module")
def unbroken(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The metrics of the preemption tests' run, trained without a break (here, not through SLURM)."""
    logs = tmp_path_factory.mktemp("unbroken")
    proc = subprocess.run(
        [sys.executable, "-m", "xray_cls.train", f"paths.data_dir={data_dir}", f"paths.log_dir={logs}",
         *SMALL, *QUICK, *LONG],
        cwd=logs, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (logs / "train" / "runs").iterdir()
    return _metrics(run_dir)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "requeued_by"),
    [
        # SLURM's warning before the time limit or a preemption, landing wherever training has got to
        ("scancel --signal=USR2", "submitit"),
        ("scontrol requeue", "slurm"),  # SIGTERM, and SLURM itself puts the job back in the queue
    ],
    ids=["warning-signal", "scontrol-requeue"],
)
def test_preempted_job_is_requeued_and_ends_like_an_unbroken_run(
    data_dir: Path, tmp_path: Path, unbroken: dict, command: str, requeued_by: str
) -> None:
    sweep = tmp_path / "sweep"
    fault = [
        "+callbacks.fault._target_=tests.faults.SlurmAtStep",
        "+callbacks.fault.step=13",  # mid epoch 1 of 3
        f"+callbacks.fault.command='{command}'",
        f"+callbacks.fault.wait={requeued_by == 'slurm'}",
    ]
    _sweep(
        f"hydra.sweep.dir={sweep}", f"paths.data_dir={data_dir}", *SMALL, *QUICK, *LONG, *fault, cwd=tmp_path
    )

    run_dir = sweep / "0"
    log = (run_dir / "train.log").read_text()
    first, second = _slurm_job_ids(log)
    assert first == second  # the same SLURM job, run twice
    assert "attempt 2" in log and f"continuing from {run_dir}/checkpoints/last.ckpt" in log
    # One party requeues: submitit says so where it did; Lightning's SLURM auto-requeue is never switched on.
    assert ("Requeued job" in log) == (requeued_by == "submitit")
    assert "SLURM auto-requeueing enabled" not in log
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) >= 2  # the same TensorBoard run
    got = _metrics(run_dir)
    assert got["status"] == "ok"
    for key in [k for k in unbroken if k.startswith(("train/", "val/", "test/"))]:
        assert got[key] == pytest.approx(unbroken[key], rel=1e-6, abs=1e-7), key


@pytest.mark.slow
def test_sweep_outlives_its_launcher_and_a_rerun_completes_it(tmp_path: Path) -> None:
    """Job 1 fails (its data set is missing) and the launching command is killed before the leaderboard; the
    same command again skips job 0, reruns job 1 and writes the whole leaderboard."""
    data = tmp_path / "data"
    write_idx(data, "MNIST")
    sweep = tmp_path / "sweep"
    command = [
        sys.executable, "-m", "xray_cls.train", "-m", *ON_THIS_NODE, "data=mnist,fashion_mnist",
        "data.source.download=false", f"hydra.sweep.dir={sweep}", f"paths.data_dir={data}",
        *[o for o in SMALL if not o.startswith("data=")], *QUICK,
    ]  # fmt: skip
    launcher = subprocess.Popen(
        command, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_for(lambda: len(list(sweep.glob(".submitit/*_1/*_submitted.pkl"))) == 1, "both jobs submitted")
    finally:
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
    _wait_for(lambda: all((sweep / job / "metrics.json").is_file() for job in "01"), "both jobs to end")
    assert not (sweep / "leaderboard.csv").exists()  # the launcher died before it
    assert _metrics(sweep / "0")["status"] == "ok"
    assert _metrics(sweep / "1")["status"] == "failed" and "FashionMNIST" in _metrics(sweep / "1")["error"]
    finished = (sweep / "0" / "metrics.json").read_text()
    array_id = next(sweep.glob(".submitit/*_0")).name.split("_")[0]
    _wait_for(lambda: not subprocess.run(["squeue", "-h", "-j", array_id], capture_output=True).stdout, "")

    write_idx(data, "FashionMNIST", seed=1)  # what made job 1 fail is fixed
    rerun = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert (sweep / "0" / "metrics.json").read_text() == finished
    assert "metrics.json says this job finished" in (sweep / "0" / "train.log").read_text()
    assert [row["status"] for row in _leaderboard(sweep)] == ["ok", "ok"]

    # Another sweep in that directory would mix its jobs with these: refused before anything is submitted.
    submitted = sorted(sweep.glob(".submitit/*"))
    other = subprocess.run(
        [*command, "optimizer.lr=0.01"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert other.returncode == 2 and "holds a sweep of other overrides" in other.stderr
    assert sorted(sweep.glob(".submitit/*")) == submitted
