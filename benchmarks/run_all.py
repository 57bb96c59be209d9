"""Every benchmark, one after the other (about 15 minutes on a 2-core CPU): ``python -m benchmarks.run_all``
(or ``make bench``). Each writes its table to ``benchmarks/results/<name>.json``."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = ["overhead", "startup", "data_pipeline", "image_cache", "end_to_end", "fast_path_accuracy"]


def main() -> None:
    failed = []
    for name in BENCHMARKS:
        print(f"\n== benchmarks.{name} ==", flush=True)
        if subprocess.run(
            [
                sys.executable,
                "-m",
                f"benchmarks.{name}",
            ]
        ).returncode:
            failed.append(name)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
