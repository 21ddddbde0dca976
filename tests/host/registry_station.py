"""A virtual provisioning station for the registry's concurrency test and benchmark (registry
work only: no esptool). Run as a separate process:

    python registry_station.py URL FLASH_DIR STATION MACS_CSV [--hang-after N] [--fail-every N] [--lease S] [--work S] [--start-at T]

For each MAC (in a shuffled order, until all are confirmed): claim it; if this station may
write, "flash" it (write the claim's token to FLASH_DIR/<mac>, atomically), mark it written,
read the flash back, and confirm it (or, every --fail-every-th board, record a failure, after
which any station claims it again). --hang-after N: on the N+1th write, write b"partial" and hang
(the test SIGKILLs the station there, holding a claim). Prints "ready" once the registry is open,
"hanging" when it hangs, and a JSON line of counts at the end. Exit 0 when every MAC is confirmed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

from fleetpin.line.registry import SKIP, Attempt, ClaimLost, Registry


def _flash(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("flash", type=Path)
    ap.add_argument("station")
    ap.add_argument("macs")
    ap.add_argument("--hang-after", type=int, default=-1)
    ap.add_argument("--fail-every", type=int, default=0)
    ap.add_argument("--lease", type=float, default=2.0)
    ap.add_argument("--work", type=float, default=0.0)
    ap.add_argument("--deadline", type=float, default=120.0)
    ap.add_argument("--start-at", type=float, default=0.0, help="POSIX time to start at (benchmarks: all at once)")
    a = ap.parse_args(argv)
    rng = random.Random(a.station)
    reg = Registry(a.url)
    print("ready", flush=True)
    if a.start_at:
        time.sleep(max(0.0, a.start_at - time.time()))
    pending = a.macs.split(",")
    counts = {"claims": 0, "writes": 0, "confirmed": 0, "failed": 0, "skipped": 0, "busy": 0, "takeovers": 0,
              "lost": 0, "ops": 0}
    end = time.monotonic() + a.deadline
    n = 0
    while pending and time.monotonic() < end:
        rng.shuffle(pending)
        left = []
        for mac in pending:
            c = reg.claim(mac, station=a.station, image_id="img-1", bundle_sha256="b" * 64, board="esp32",
                          port=f"/dev/v{a.station}", operator="test", lease=a.lease)
            counts["ops"] += 1
            counts["claims"] += 1
            if c.outcome == SKIP:
                counts["skipped"] += 1
                continue
            if not c.may_write:
                counts["busy"] += 1
                left.append(mac)
                continue
            counts["takeovers"] += c.outcome == "taken-over"
            started = time.time()
            try:
                if n == a.hang_after:
                    _flash(a.flash / mac, b"partial")
                    print("hanging", flush=True)
                    time.sleep(3600)
                n += 1
                if a.work:
                    time.sleep(a.work)
                _flash(a.flash / mac, c.token.encode())  # type: ignore[union-attr]
                counts["writes"] += 1
                reg.written(c)
                counts["ops"] += 1
                if a.fail_every and n % a.fail_every == 0:
                    reg.failed(c, "simulated: the agent did not answer")
                    counts["failed"] += 1
                    counts["ops"] += 1
                    result, error = "failed", "simulated"
                    left.append(mac)
                elif (a.flash / mac).read_bytes() == c.token.encode():  # type: ignore[union-attr]
                    reg.confirmed(c)
                    counts["confirmed"] += 1
                    counts["ops"] += 1
                    result, error = "provisioned", None
                else:
                    raise ClaimLost(f"{mac}: flash holds another station's write")
                reg.record(Attempt(mac, "esp32", "img-1", "b" * 64, a.station, f"/dev/v{a.station}", "test",
                                   started, time.time(), result, error))
                counts["ops"] += 1
            except ClaimLost:
                counts["lost"] += 1
                left.append(mac)
        pending = left
        if pending:
            time.sleep(0.05)
    print(json.dumps(counts), flush=True)
    reg.close()
    return 0 if not pending else 4


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
