"""Sweeps (``-m``, Optuna presets, SLURM): one failed job does not end the sweep, and every sweep ends with a
leaderboard of its jobs.

Light to import: Hydra instantiates the Leaderboard callback for every command, before the config is checked,
so torch and Lightning are imported only when a job runs.
"""

from __future__ import annotations

import csv
import gc
import io
import json
import logging
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from xray_cls.cluster import same_run
from xray_cls.crossval import write_cv_summary
from xray_cls.errors import RunInterrupted, UserError
from xray_cls.io import write_json_atomic, write_text_atomic
from xray_cls.runtime import report_error

log = logging.getLogger(__name__)


def objective(metrics: Mapping[str, Any], metric: str) -> float | None:
    """The value a sweep ranks a job by: the best ``metric`` of the run, else its last value."""
    value = metrics.get(f"{metric}_best", metrics.get(metric))
    return float(value) if isinstance(value, int | float) else None


def finished_metrics(cfg: DictConfig) -> dict[str, Any] | None:
    """The metrics of a sweep job that already finished in this run directory (``status: ok``) with this very
    config, else None. Re-running a sweep in the same ``hydra.sweep.dir`` skips such jobs; failed and missing
    ones run again, and so does a job whose folder holds another config (an Optuna study resumed there
    numbers its new trials from 0 again)."""
    if not same_run(cfg):
        return None
    path = Path(cfg.paths.output_dir) / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or an unreadable one: the job runs
        return None
    return metrics if isinstance(metrics, dict) and metrics.get("status") == "ok" else None


def same_sweep(sweep_dir: Path, overrides: list[str]) -> None:
    """Refuse to run a sweep in a directory that holds another sweep: job N would be skipped (or continued)
    with results of other overrides. The earlier launch's overrides are in its ``multirun.yaml``."""
    earlier_file = sweep_dir / "multirun.yaml"
    if not earlier_file.is_file():
        return
    earlier = OmegaConf.select(OmegaConf.load(earlier_file), "hydra.overrides.task", default=None)
    earlier = [str(o) for o in earlier or []]
    if sorted(earlier) != sorted(overrides):
        raise UserError(
            f"{sweep_dir} holds a sweep of other overrides ({' '.join(earlier)}); re-run that command, "
            "or give this sweep another hydra.sweep.dir"
        )


def run_trial(cfg: DictConfig, train: Callable[[DictConfig], dict[str, Any]]) -> float | None:
    """Run one job of a sweep; a failure is recorded, not raised, so that the sweep goes on.

    A failed job's ``metrics.json`` says ``status: failed`` and why; its traceback is in the job's log. It
    returns None, never NaN: the Optuna sweeper marks a trial that returns None as failed, but crashes the
    study on NaN (optuna 2.10's ``tell`` rejects NaN, then the sweeper tells FAIL with the value attached).
    """
    import torch
    from lightning.pytorch.utilities import rank_zero_only

    from xray_cls.distributed import check_ddp_in_sweep

    metrics: dict[str, Any] = {}
    try:
        check_ddp_in_sweep(cfg)
        metrics = train(cfg)
        value = objective(metrics, cfg.monitor.metric)
        if value is None:
            raise LookupError(f"the run reported no {cfg.monitor.metric}: is it one of its metrics?")
        if not math.isfinite(value):
            raise FloatingPointError(f"the objective {cfg.monitor.metric} is {value}: the run diverged")
    except RunInterrupted as err:
        # Ctrl-C or a preemption stops the sweep, as it stops a single run; SystemExit passes through Hydra.
        report_error(str(err))
        sys.exit(err.exit_code)
    except Exception as err:
        # One line on the console; the traceback goes to the job's log file only.
        message = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
        log_file = Path(cfg.paths.output_dir) / f"{cfg.task_name}.log"
        report_error(f"job failed: {message}; the sweep goes on (traceback in {log_file})", err)
        if rank_zero_only.rank == 0:
            measured = getattr(err, "measured", {})  # the epochs' metrics, before a checkpoint failed
            failed = {**measured, **metrics, "status": "failed", "error": f"{type(err).__name__}: {err}"}
            write_json_atomic(Path(cfg.paths.output_dir) / "metrics.json", failed)
    else:
        return value
    # The next job runs in this process: give back what the failed one held (after an out-of-memory error
    # above all). The exception and its frames are gone once the except block has ended.
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return None


@dataclass
class Job:
    name: str
    run_dir: Path
    overrides: list[str]
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return str(self.metrics.get("status", "failed"))

    @property
    def error(self) -> str:
        if not self.metrics:
            return "no metrics.json: the job died before writing it (see its log)"
        return str(self.metrics.get("error") or "")


def read_jobs(sweep_dir: Path) -> list[Job]:
    """Every job that started under ``sweep_dir`` (Hydra saved its overrides), with its final metrics."""
    jobs = []
    for overrides_file in sweep_dir.glob("**/.hydra/overrides.yaml"):
        run_dir = overrides_file.parent.parent
        metrics_file = run_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        overrides = OmegaConf.to_container(OmegaConf.load(overrides_file)) or []
        jobs.append(Job(str(run_dir.relative_to(sweep_dir)), run_dir, [str(o) for o in overrides], metrics))
    return jobs


def rank(jobs: list[Job], metric: str, mode: str) -> list[Job]:
    """Best first in the ``mode`` direction; jobs without a value next, failed jobs last."""
    sign = -1.0 if mode == "max" else 1.0

    def key(job: Job) -> tuple[bool, bool, float, int, str]:
        value = objective(job.metrics, metric)
        missing = value is None or not math.isfinite(value)
        number = int(job.name) if job.name.isdigit() else sys.maxsize
        return (job.status != "ok", missing, 0.0 if missing else sign * value, number, job.name)

    return sorted(jobs, key=key)


def leaderboard_csv(jobs: list[Job], metric: str) -> str:
    scalar_keys = sorted({k for job in jobs for k, v in job.metrics.items() if isinstance(v, int | float)})
    columns = ["rank", "job", "status", "objective", "overrides", *scalar_keys, "error", "run_dir"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for i, job in enumerate(jobs, 1):
        writer.writerow(
            {
                **{k: job.metrics.get(k) for k in scalar_keys},
                "rank": i,
                "job": job.name,
                "status": job.status,
                "objective": objective(job.metrics, metric),
                "overrides": " ".join(job.overrides),
                "error": job.error,
                "run_dir": str(job.run_dir),
            }
        )
    return out.getvalue()


def leaderboard_table(jobs: list[Job], metric: str) -> str:
    """A fixed-width table of the ranked jobs, showing only the overrides that differ between them. A test
    metric as the objective comes with its confidence interval, where the job's metrics.json has one."""
    shared = set.intersection(*(set(job.overrides) for job in jobs)) if len(jobs) > 1 else set()
    rows = [["rank", "job", "status", f"{metric} (best)", "overrides"]]
    for i, job in enumerate(jobs, 1):
        value = objective(job.metrics, metric)
        cell = "-" if value is None else f"{value:.4f}"
        low, high = job.metrics.get(f"{metric}_ci_low"), job.metrics.get(f"{metric}_ci_high")
        if value is not None and f"{metric}_best" not in job.metrics and None not in (low, high):
            cell += f" (CI {low:.3f}-{high:.3f})"
        swept = " ".join(o for o in job.overrides if o not in shared)
        detail = swept if job.status == "ok" else f"{swept}  [{job.error[:120]}]".strip()
        rows.append([str(i), job.name, job.status, cell, detail])
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in rows
    )


class Leaderboard(Callback):
    """Hydra callback: after every multirun, ``leaderboard.csv`` in the sweep directory and a table on
    stdout, ranked by ``monitor.metric`` in the ``monitor.mode`` direction; after a ``cv=`` run also
    ``cv_summary.json`` and its table. When a job failed the command exits with status 1 (``fail_on_error``),
    after the leaderboard is written."""

    def __init__(self, fail_on_error: bool = True) -> None:
        self.fail_on_error = fail_on_error

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:  # a re-run sweep (the same hydra.sweep.dir) must be the same sweep
            same_sweep(sweep_dir, [str(o) for o in config.hydra.overrides.task])
        except UserError as err:
            # SystemExit passes through Hydra's callback wrapper, which swallows (warns about) exceptions.
            report_error(str(err))
            sys.exit(err.exit_code)
        # Created before the sweeper starts, so that an Optuna study can be stored in the sweep directory.
        sweep_dir.mkdir(parents=True, exist_ok=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        metric, mode = config.monitor.metric, config.monitor.mode
        jobs = rank(read_jobs(sweep_dir), metric, mode)
        if not any(job.metrics for job in jobs):
            return  # a sweep of a command that writes no metrics.json (predict): nothing to rank
        path = sweep_dir / "leaderboard.csv"
        write_text_atomic(path, leaderboard_csv(jobs, metric))
        failed = sum(job.status != "ok" for job in jobs)
        summary = f"{len(jobs)} jobs, {failed} failed; leaderboard: {path}"
        best = objective(jobs[0].metrics, metric) if jobs and jobs[0].status == "ok" else None
        if best is not None:
            summary += f"\nbest {metric}: {best:.6g} (job {jobs[0].name}, {jobs[0].run_dir})"
        print(f"\n{leaderboard_table(jobs, metric)}\n\n{summary}", flush=True)
        if config.get("cv"):  # cv=kfold, cv=seeds: mean and spread over the folds or seeds
            print(f"\n{write_cv_summary(config, sweep_dir, jobs)}", flush=True)
        if failed and self.fail_on_error:
            # SystemExit passes through Hydra's callback wrapper, which swallows (warns about) exceptions.
            sys.exit(1)
