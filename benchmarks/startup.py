"""Start-up: seconds from launching a training command to its first training batch, for ``python -m
xray_cls.train data=mnist`` and for a Lightning+Hydra template-style script (benchmarks/template_baseline.py),
alternated in one session on the same 60,000 MNIST-format training images (IDX files, plus 10,000 test).

Each command runs with its defaults (ours: TensorBoard, device-resident batches; the template's: no logger,
rich progress bar, per-item torchvision MNIST) and its 2-batch sanity check; a timer callback prints the wall
clock at the first training batch, and the process is then killed. Also measured: the time to refuse a bad
config (``optimizer.lr=-1``) and to print ``--help``. Target: ours no slower than the template.

    python -m benchmarks.startup [--repeat 3] [--out benchmarks/results/startup.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine_info, median, print_table, write_json_atomic
from tests.formats import write_idx

REPO = Path(__file__).resolve().parents[1]
TIMER = ["+callbacks.timer._target_=benchmarks.common.EpochTimer", "+callbacks.timer.print_first_batch=true"]


def ours(data_dir: Path, out: Path) -> list[str]:
    return [
        "-m", "xray_cls.train", "data=mnist", "model=simple_cnn", f"paths.data_dir={data_dir}",
        f"paths.log_dir={out}", *TIMER,
    ]  # fmt: skip


def template(data_dir: Path, out: Path) -> list[str]:
    return [
        "-m",
        "benchmarks.template_baseline",
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={out}",
        *TIMER,
    ]


def to_first_batch(args: list[str], env: dict[str, str], log: Path) -> float:
    """Seconds from starting ``python <args>`` to the timer's first-batch line; the process is then killed."""
    start = time.time()
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        try:
            for line in proc.stdout:
                if '{"first_batch_at"' in line:
                    return json.loads(line[line.index("{") :])["first_batch_at"] - start
        finally:
            proc.kill()
            proc.wait()
    raise RuntimeError(f"no first training batch from {' '.join(args)}:\n{log.read_text()[-3000:]}")


def answer_seconds(args: list[str], env: dict[str, str]) -> float:
    """Seconds until a command that does not train (``--help``, a refused config) has answered and exited."""
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "startup.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="xray_cls_startup_") as work:
        result = measure(Path(work), args.repeat)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    write_json_atomic(args.out, result)


def measure(work: Path, repeat: int) -> dict[str, object]:
    data_dir = work / "data"
    write_idx(data_dir, "MNIST", n_train=60_000, n_test=10_000)
    env = {**os.environ, "PYTHONPATH": str(REPO), "XRAY_CLS_ROOT": str(work)}
    commands = {"xray_cls": ours(data_dir, work / "ours"), "template": template(data_dir, work / "template")}
    seconds: dict[str, list[float]] = {name: [] for name in commands}
    for i in range(repeat):  # alternated, so that drifts of a shared machine hit both alike
        for name, command in commands.items():
            seconds[name].append(to_first_batch(command, env, work / f"{name}_{i}.log"))
            print(f"{name}: {seconds[name][-1]:.2f} s to the first batch", flush=True)
    refused = ["-m", "xray_cls.train", "optimizer.lr=-1", f"paths.log_dir={work / 'refused'}"]
    rows = [{"command": name, "to_first_batch_s": median(s)} for name, s in seconds.items()]
    result = {
        "to_first_batch_s": {name: median(s) for name, s in seconds.items()},
        "runs_s": seconds,
        "ratio_ours_to_template": median(seconds["xray_cls"]) / median(seconds["template"]),
        "ours_refused_config_s": median([answer_seconds(refused, env) for _ in range(repeat)]),
        "ours_help_s": median(
            [answer_seconds(["-m", "xray_cls.train", "--help"], env) for _ in range(repeat)]
        ),
        "images": {"train": 60_000, "test": 10_000},
        "repeat": repeat,
        "machine": machine_info(),
    }
    print_table(rows)
    return result


if __name__ == "__main__":
    main()
