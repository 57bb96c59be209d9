"""Small helpers shared by the benchmarks: repeated timings, a plain table, atomic JSON results."""

from __future__ import annotations

import json
import os
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L

from xray_cls.io import write_json_atomic  # noqa: F401  (re-exported for the benchmarks)


def timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    """Wall-clock seconds of ``repeat`` calls of ``fn``."""
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def peak_rss_mib() -> dict[str, float]:
    """Peak resident memory of this process and of its largest finished child (Linux reports KiB)."""
    scale = 1 / 1024 if os.uname().sysname == "Linux" else 1 / 2**20
    return {
        "self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
        "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale,
    }


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    """Rows of equal keys as an aligned text table; floats to 3 significant digits."""
    if not rows:
        return
    cells = [[f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()] for row in rows]
    header = list(rows[0])
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))


def machine_info() -> dict[str, Any]:
    """What the figures were measured on (they are meaningful only as ratios taken in one run)."""
    import platform

    import torch
    import torchvision

    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if "model name" in line), "?")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


class EpochTimer(L.Callback):
    """Wall time of each training epoch (kept in ``EpochTimer.seconds``), and when the first batch starts."""

    seconds: list[float] = []

    def __init__(self, print_first_batch: bool = False) -> None:
        self.print_first_batch = print_first_batch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.print_first_batch and trainer.global_step == 0 and batch_idx == 0:
            print(json.dumps({"first_batch_at": time.time()}), flush=True)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(time.perf_counter() - self._start)
