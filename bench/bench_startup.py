"""Time to ready: ``s3router serve`` on the bundled model, from the process start to ``/readyz`` 200.

Run: ``python -m bench.bench_startup [--runs 2] [-- serve flags]``, e.g. ``-- --device cuda --dtype float16``.
The first run starts with an empty kernel cache (a new machine: kernel timing, Triton compiles), each later
run from the cache the runs before it filled (a restart). Prints each run's wall time and the service's
own start-up stages (engine, speech gate, kernels, warm-up), read from its log.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

from bench.serving import serving
from bench.timing import machine_name

STAGE_LINES = re.compile(r"start-up:|kernels prepared|warm-up")


def time_to_ready(flags: list[str], log_path: Path) -> float:
    """Seconds from starting ``s3router serve FLAGS`` to its ``/readyz`` answering 200."""
    with log_path.open("wb") as log:
        started = time.perf_counter()
        try:
            with serving(*flags, log=log):
                return time.perf_counter() - started
        except RuntimeError:  # it exited or never got ready: show why before the log goes with its folder
            print(log_path.read_text(errors="replace")[-4000:])
            raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2, help="first with an empty kernel cache, then from it")
    parser.add_argument("serve_flags", nargs=argparse.REMAINDER, help="after --: flags for s3router serve")
    args = parser.parse_args()
    flags = [f for f in args.serve_flags if f != "--"]
    print(f"machine: {machine_name()}; serve flags: {' '.join(flags) or '(defaults)'}")
    with tempfile.TemporaryDirectory() as folder:
        for run in range(args.runs):
            log_path = Path(folder) / f"serve-{run}.log"
            seconds = time_to_ready([*flags, "--kernel-cache-dir", str(Path(folder) / "kernels")], log_path)
            cache = "empty kernel cache" if run == 0 else "from the kernel cache"
            print(f"run {run + 1} ({cache}): ready in {seconds:.1f} s")
            for line in log_path.read_text(errors="replace").splitlines():
                if STAGE_LINES.search(line):
                    print("   ", line.split(": ", 1)[-1])


if __name__ == "__main__":
    main()
