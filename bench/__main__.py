"""`make bench`: runs every bench/bench_*.py (or those named on the command line) in turn.

Each benchmark measures the thing and its baseline in the same run and prints the ratio, so
the figures mean the same on a slow CI machine as on a laptop."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import bench


def main(argv: list[str]) -> int:
    names = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_"))
    if argv:
        names = [n for n in names if any(a in n for a in argv)]
    failed = 0
    for name in names:
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        try:
            importlib.import_module(f"bench.{name}").run()
        except Exception as e:  # one broken benchmark must not hide the others' figures
            failed += 1
            print(f"   FAILED: {type(e).__name__}: {e}")
        print(f"   ({time.perf_counter() - start:.1f} s)\n", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
