"""The summary of a cross-validation sweep (``cv=kfold``, ``cv=seeds``): mean, spread and each run's value of
every metric, per setting of the other swept keys; ``cv_summary.json`` and a table."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from xray_cls.io import write_json_atomic

if TYPE_CHECKING:
    from xray_cls.sweep import Job

# cv.kind (conf/cv/*.yaml) -> the override that tells the runs of a cross-validation sweep apart.
CV_KEYS = {"kfold": "data.fold", "seeds": "seed"}


def cv_metric(name: str) -> bool:
    """What a cross-validation summary averages: every test metric (not the bootstrap bounds of one run's
    interval) and the best value of every validation metric."""
    if name.startswith("test/"):
        return not name.endswith(("_ci_low", "_ci_high"))
    return name.startswith("val/") and name.endswith("_best")


def _run_name(job: Job, key: str) -> str:
    """The value of the job's ``key`` override (its fold, its seed), else the job's name."""
    return next((o.split("=", 1)[1] for o in job.overrides if o.split("=", 1)[0] == key), job.name)


def _run_order(job: Job, key: str) -> tuple[int, float, str]:
    value = _run_name(job, key)
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def cv_summary(jobs: list[Job], key: str) -> dict[str, Any]:
    """Mean, sample standard deviation (n - 1) and each run's value of every :func:`cv_metric` over the jobs
    of one cross-validation setting; pure, for the Leaderboard callback to write and print.

    A run is named by its ``key`` override (``data.fold`` -> "0", "1", ...; ``seed``). A failed job (status
    not ok, or no metrics.json) is listed under ``failed`` with its error and never averaged in; so is a
    value that is not a finite number (JSON null) in a job that ran.
    """
    runs = sorted(jobs, key=lambda job: _run_order(job, key))
    ok = [job for job in runs if job.status == "ok"]
    names = sorted(
        {k for job in ok for k, v in job.metrics.items() if cv_metric(k) and isinstance(v, int | float)}
    )
    metrics: dict[str, Any] = {}
    for name in names:
        values = {
            _run_name(job, key): float(job.metrics[name])
            for job in ok
            if isinstance(job.metrics.get(name), int | float) and math.isfinite(job.metrics[name])
        }
        xs = list(values.values())
        metrics[name] = {
            "mean": statistics.fmean(xs) if xs else None,
            "std": statistics.stdev(xs) if len(xs) > 1 else None,
            "n": len(xs),
            "values": values,
        }
    failed = [
        {"run": _run_name(job, key), "job": job.name, "error": job.error, "run_dir": str(job.run_dir)}
        for job in runs
        if job.status != "ok"
    ]
    return {
        "key": key,
        "runs": [_run_name(job, key) for job in runs],
        "ok": len(ok),
        "failed": failed,
        "metrics": metrics,
    }


def cv_settings(jobs: list[Job], key: str) -> list[tuple[list[str], list[Job]]]:
    """The jobs of a cross-validation sweep by setting: a sweep over other keys too (``cv=kfold model=a,b``)
    has one setting per value of them, named by the overrides that differ between settings."""
    by_setting: dict[tuple[str, ...], list[Job]] = {}
    for job in jobs:
        by_setting.setdefault(tuple(o for o in job.overrides if o.split("=", 1)[0] != key), []).append(job)
    shared = set.intersection(*(set(s) for s in by_setting)) if by_setting else set()
    return [([o for o in setting if o not in shared], group) for setting, group in by_setting.items()]


def cv_table(summary: Mapping[str, Any]) -> str:
    """A fixed-width table of one setting's summary: a row per metric with its mean, standard deviation and
    each run's value ("failed" for a failed run), then the failed runs with their errors."""
    label = summary["key"].rsplit(".", 1)[-1]  # fold, seed
    failed = {f["run"]: f for f in summary["failed"]}
    rows = [["metric", "mean", "std", *(f"{label} {run}" for run in summary["runs"])]]
    for name, m in summary["metrics"].items():
        cells = [name, *("-" if m[k] is None else f"{m[k]:.4f}" for k in ("mean", "std"))]
        for run in summary["runs"]:
            value = m["values"].get(run)
            cells.append("failed" if run in failed else "-" if value is None else f"{value:.4f}")
        rows.append(cells)
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines += [f"failed: {label} {f['run']} (job {f['job']}): {f['error'][:200]}" for f in failed.values()]
    return "\n".join(lines)


def write_cv_summary(config: DictConfig, sweep_dir: Path, jobs: list[Job]) -> str:
    """``cv_summary.json`` in the sweep directory of a ``cv=`` run; returns the table(s) to print."""
    kind = str(config.cv.get("kind"))
    key = CV_KEYS.get(kind)
    if key is None:
        return f"cv.kind={kind} is none of {sorted(CV_KEYS)}: no cross-validation summary"
    settings = cv_settings(jobs, key)
    path = sweep_dir / "cv_summary.json"
    if len(settings) == 1:
        summaries = [cv_summary(settings[0][1], key)]
        write_json_atomic(path, {"kind": kind, **summaries[0]})
    else:  # one summary per setting of the other swept keys
        summaries = [{"overrides": o, **cv_summary(group, key)} for o, group in settings]
        write_json_atomic(path, {"kind": kind, "key": key, "settings": summaries})
    tables = []
    for summary in summaries:
        runs, ok = len(summary["runs"]), summary["ok"]
        head = f"cross-validation ({kind}): {runs} runs by {key}, {ok} ok, {runs - ok} failed"
        if "overrides" in summary:
            head += f"; setting: {' '.join(summary['overrides'])}"
        tables.append(f"{head}\n{cv_table(summary)}")
    return "\n\n".join(tables) + f"\n\ncross-validation summary: {path}"
