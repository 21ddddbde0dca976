"""A field update end to end: `fleetpin device update`'s transport (pyserial + the real Client)
sending a 4 KB bundle to a virtual board (the real agent, flash in a LittleFS image file) over a
pty whose line rate is enforced at 115200 baud (10 bits per byte, each way), as a ratio to the
line-rate floor (the bundle's bytes alone: 4096 * 10 / 115200 s), measured in one run.

Rows: the board's main.py on MicroPython's unix port (the default runtime), the CPython agent and
the WebAssembly-VM agent, faults off and with 1% byte faults (drop 0.4%,
flip 0.4%, duplicate 0.2% of the bytes, each direction, fixed seeds). The time runs from the
first WRITE_BEGIN byte to the commit's answer: transfer, signature check and flash writes.
Not modelled: the ESP32's CPU (the agent runs at host speed: the unix port, CPython, or the VM in Node).
Each row is the median of 3 seeded runs, or of 5 when those 3 differ by more than 25% (one
unlucky commit answer on the noisy line is worth ~0.5 x floor).
"""

from __future__ import annotations

import time

from fleetpin.field.transport import Transport
from fleetpin.sim.board import VirtualBoard
from fleetpin.sim.demo_bundles import demo_signer_set, sized_bundle

BAUD = 115200
SIZE = 4096
FAULTS_1PCT = "drop=0.004,flip=0.004,dup=0.002,seed=%d"


def one(runtime: str, faults: str | None, old: bytes, new: bytes, signers: bytes) -> tuple[float, dict[str, int]]:
    with VirtualBoard(runtime=runtime, baud=BAUD, faults=faults, fleet="bench", seed_bundle=old, signers=signers) as b:
        with Transport.open(b.port, BAUD, timeout=20) as t:
            t.connect()
            start = time.perf_counter()
            result = t.upload(new)
            elapsed = time.perf_counter() - start
            assert result.get("installed") is not False, result
            stats = t.stats
        counts = dict(b.faults.counts)
    return elapsed, {**stats, **{"faults": sum(counts.values())}}


def run() -> None:
    signers = demo_signer_set()
    old = sized_bundle("bench", 1, 1024)
    new = sized_bundle("bench", 2, SIZE)
    floor = len(new) * 10 / BAUD
    print(f"   bundle {len(new)} bytes at {BAUD} baud: floor {floor * 1000:.0f} ms")
    for runtime in ("micropython", "cpython", "wasm"):
        for label, faults in (("no faults", None), ("1% byte faults", FAULTS_1PCT)):
            times: list[float] = []
            info: dict[str, int] = {}
            for seed in (1, 2, 3, 4, 5):
                if seed > 3 and max(times) <= 1.25 * min(times):
                    break  # the three agree: more runs would not move the median
                f = faults % seed if faults else None
                elapsed, info = one(runtime, f, old, new, signers)
                times.append(elapsed)
            times.sort()
            med = times[len(times) // 2]
            print(f"   {runtime:11s} {label:15s} median {med * 1000:6.0f} ms = {med / floor:5.2f} x floor "
                  f"(runs {', '.join(f'{t / floor:.2f}' for t in times)}; last run: "
                  f"{info.get('retransmissions', 0)} retransmissions, {info.get('faults', 0)} faults injected)")


if __name__ == "__main__":
    run()
