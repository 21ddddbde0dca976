"""Start-up: what a user waits for before a command does anything. `fleetpin --help`,
`--version` and `pin FILE` as whole processes, each as a ratio to `python -c pass` measured in
the same run (target: --help under 0.2 s). Medians of REPS runs of the installed console script.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CERT = REPO / "tests" / "vectors" / "certs" / "bmp-cn.pem"
REPS = 15


def _median(argv: list[str]) -> float:
    times = []
    for _ in range(REPS):
        started = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run() -> None:
    fleetpin = shutil.which("fleetpin", path=str(Path(sys.executable).parent)) or "fleetpin"
    base = _median([sys.executable, "-c", "pass"])
    print(f"   python -c pass: {base * 1000:.0f} ms (the baseline)")
    for label, argv in (("--help", ["--help"]), ("--version", ["--version"]), ("pin FILE", ["pin", str(CERT)])):
        t = _median([fleetpin, *argv])
        print(f"   fleetpin {label:<9}: {t * 1000:4.0f} ms = {t / base:4.1f}x python -c pass"
              + ("  (target < 200 ms)" if label == "--help" else ""))
