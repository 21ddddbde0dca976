"""A field update end to end, as a technician runs it: the real `fleetpin device update -p PORT
vN.fpb --yes` (its own process, the installed entry point) against a virtual board (the real
agent, flash in a LittleFS image file) behind a pty whose line rate is enforced (10 bits per
byte, each way), seeded with the previous version, as a ratio to the line-rate floor of the
bytes that had to cross, measured in one run.

- Floor: the new bundle's bytes (plus the installed bundle's, when it had to be read back) at
  10 bits per byte. Framing, headers, the session's small requests and every answer count
  against the ratio, as does the device's own time (the commit's signature check; the agent
  runs at host speed: CPython, or MicroPython in Node, not an ESP32's CPU).
- Start-up: the CLI's own start-up (interpreter, imports: `fleetpin device update --help`,
  best of 3) is printed once and taken out of every ratio.
- Cases: bundles of ~2, 8 and 16 KB (the 16 KB one carries 8 CA certificates, the most a
  bundle may), at 115200 and 921600 baud, and the 2 KB one at 9600; on every board runtime
  (fleetpin.sim.board.RUNTIMES: micropython = the board's main.py on MicroPython's unix port,
  cpython = the agent in this process, wasm = the agent on the WebAssembly VM);
  on a clean line and with 0.1% and 1% mixed byte faults (drop 40%, flip 40%, duplicate 20%
  of them, each way, fixed seeds). The host's bundle cache holds the installed bundle (it
  built it), so nothing is read back; one row per runtime reads 8 KB back (an empty cache).
- "resent": requests sent more than once (the receipt's transfer.retransmissions, probes of
  slow requests included). On a clean line it must be 0. Clean lines: the best of 3 runs (the
  machine's other work only adds time), "resent" the most of the 3.
- Resume: an update cut (SIGINT, as Ctrl-C) when half the bundle has crossed, then run again:
  the second run's time as a ratio to an uncut run's (target <= 0.6).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from fleetpin.sim.board import RUNTIMES, VirtualBoard
from fleetpin.sim.demo_bundles import FILLER_PINS, demo_bundle, demo_signer_set
from pinagent.bundle import MAX_CERTS

FLEET = "bench"
FAULTS = {"clean": None, "0.1%": "drop=0.0004,flip=0.0004,dup=0.0002,seed=%d",
          "1%": "drop=0.004,flip=0.004,dup=0.002,seed=%d"}
# BENCH_UPDATE_LINES=clean,1% runs only those lines (e.g. to time an older fleetpin: PYTHONPATH)
_ONLY = [x for x in os.environ.get("BENCH_UPDATE_LINES", "").split(",") if x]
if _ONLY:
    FAULTS = {k: v for k, v in FAULTS.items() if k in _ONLY}
CASES = [(2048, 9600)] + [(size, baud) for size in (2048, 8192, 16384) for baud in (115200, 921600)]
FLEETPIN = [str(Path(sys.executable).with_name("fleetpin"))]
# The micropython board's default heap (256 KB on the 64-bit unix port) cannot take an 8 KB or
# 16 KB upload (MemoryError at WRITE_BEGIN or during the commit): the line is timed at 512 KB.
HEAP_KB = {"micropython": 512}


def _ca_certs(n: int) -> list[bytes]:
    out = []
    now = dt.datetime.now(dt.UTC)
    for i in range(n):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Bench Root CA {i}"),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fleetpin bench")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(i + 1).not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        out.append(cert.public_bytes(serialization.Encoding.DER))
    return out


def bundle(version: int, size: int, cas: list[bytes]) -> bytes:
    """A bundle of about `size` bytes: domains added until it is that big."""
    domains: dict[str, list[str]] = {}
    i = 0
    while True:
        domains[f"host{i}.example.com"] = [FILLER_PINS[(2 * i + version) % 64], FILLER_PINS[(2 * i + 1) % 64]]
        data = demo_bundle(FLEET, version, domains, ca_der=cas)
        if len(data) >= size:
            return data
        i += 1


def startup(env: dict[str, str]) -> float:
    best = 1e9
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run(FLEETPIN + ["device", "update", "--help"], env=env, capture_output=True, check=True)
        best = min(best, time.perf_counter() - t)
    return best


class Timed:
    """When the first byte of the host reached the board and when the board's last answer left
    it (the line-facing part of one command), from the board's side of the line."""

    def __init__(self, board: VirtualBoard) -> None:
        self.first_in: float | None = None
        self.last_out: float | None = None
        line = board.line
        deliver, send = line.on_receive, line.send
        byte_time = line.byte_time

        def on_receive(data: bytes) -> None:
            if self.first_in is None:
                self.first_in = time.perf_counter() - byte_time  # its first byte started then
            deliver(data)

        def on_send(data: bytes) -> None:
            now = time.perf_counter()
            # the answer leaves behind what is queued, at the line's rate
            start = max(now, self.last_out or 0.0)
            self.last_out = start + len(data) * byte_time
            send(data)

        line.on_receive = on_receive  # type: ignore[method-assign]
        line.send = on_send  # type: ignore[method-assign]

    def reset(self) -> None:
        self.first_in = self.last_out = None


def run_update(board: VirtualBoard, baud: int, path: Path, env: dict[str, str], receipt: Path,
               cut: int | None = None) -> tuple[float, float, float, int, dict]:
    """(wall seconds, start-up seconds, line seconds, exit code, receipt) of one `fleetpin device
    update` process: start-up runs from the spawn to the first byte on the line, the line part
    from there to the end of the last answer."""
    timed = getattr(board, "_timed", None) or Timed(board)
    board._timed = timed  # type: ignore[attr-defined]
    timed.reset()
    t = time.perf_counter()
    proc = subprocess.Popen(FLEETPIN + ["device", "update", "-p", board.port, "--baud", str(baud), str(path), "--yes",
                                        "--json", "--receipt", str(receipt), "--timeout", "20"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if cut is not None:

        def watch() -> None:
            start = board.line.bytes_in
            while proc.poll() is None and board.line.bytes_in - start < cut:
                time.sleep(0.0005)
            proc.send_signal(signal.SIGINT)

        threading.Thread(target=watch, daemon=True).start()
    proc.communicate(timeout=600)
    elapsed = time.perf_counter() - t
    try:
        rec = json.loads(receipt.read_text())
    except (OSError, ValueError):
        rec = {}
    first = timed.first_in if timed.first_in is not None else t
    last = timed.last_out if timed.last_out is not None else t + elapsed
    return elapsed, first - t, last - first, proc.returncode, rec


def one(runtime: str, size: int, baud: int, faults: str | None, files: dict, env: dict[str, str], work: Path,
        remember_old: bool = True) -> tuple[float, float, float, int, dict]:
    old, new = files[size]
    cache = work / "cache" if remember_old else Path(tempfile.mkdtemp(prefix="empty-cache-", dir=work))
    e = {**env, "XDG_CACHE_HOME": str(cache)}
    with VirtualBoard(runtime=runtime, baud=baud, faults=faults, fleet=FLEET, seed_bundle=old.read_bytes(),
                      signers=files["signers"], heap_kb=HEAP_KB.get(runtime)) as b:
        return run_update(b, baud, new, e, work / "receipt.json")


def run() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-update-"))
    env = {**os.environ, "XDG_CACHE_HOME": str(work / "cache")}
    files: dict = {"signers": demo_signer_set()}
    cas = _ca_certs(MAX_CERTS)
    try:
        import fleetpin.bundles.cache

        bundle_cache: Any = fleetpin.bundles.cache
    except ImportError:  # an older fleetpin (PYTHONPATH) keeps no bundles
        bundle_cache = None

    os.environ["XDG_CACHE_HOME"] = str(work / "cache")
    for size in (2048, 8192, 16384):
        with_cas = cas if size == 16384 else []
        old, new = bundle(3, size, with_cas), bundle(4, size, with_cas)
        (work / f"v3-{size}.fpb").write_bytes(old)
        (work / f"v4-{size}.fpb").write_bytes(new)
        if bundle_cache is not None:
            bundle_cache.remember(old)  # the host built v3: its cache has it
        files[size] = (work / f"v3-{size}.fpb", work / f"v4-{size}.fpb")
    start = startup(env)
    print(f"   CLI start-up alone (fleetpin device update --help, best of 3): {start * 1000:.0f} ms; per run, the "
          "start-up (spawn to the first byte on the line) is printed apart and the ratio is the line part's")
    sizes = ", ".join(f"{files[s][1].stat().st_size} B" for s in (2048, 8192, 16384))
    print(f"   bundles: {sizes} (the last with {MAX_CERTS} CA certificates); runtimes: {', '.join(RUNTIMES)}; "
          f"heaps: {', '.join(f'{r} {k} KB' for r, k in HEAP_KB.items())} (the default one cannot take 8 KB)")
    print(f"   {'runtime':11s} {'bundle':>7s} {'baud':>7s} {'line':6s} {'start-up':>8s} {'on line':>8s} {'floor':>8s} "
          f"{'ratio':>6s} resent")

    def row(runtime: str, size: int, baud: int, label: str, res: tuple[float, float, float, int, dict], floor: float,
            note: str = "") -> None:
        _wall, up, line, code, rec = res
        resent = rec.get("transfer", {}).get("retransmissions")
        if resent and label == "clean":
            resent = f"{resent} {rec['transfer'].get('resent')}"
        ok = "" if code == 0 and rec.get("result") == "installed" else f"  FAILED: {rec.get('error')}"
        print(f"   {runtime:11s} {size:7d} {baud:7d} {label:6s} {up * 1000:6.0f}ms {line * 1000:6.0f}ms "
              f"{floor * 1000:6.0f}ms {line / floor:5.2f}x {resent}{ok}{note}", flush=True)

    for runtime in RUNTIMES:
        clean: dict[int, list[tuple[int, float]]] = {}
        for size, baud in CASES:
            new_size = files[size][1].stat().st_size
            floor = new_size * 10 / baud
            for label, faults in FAULTS.items():
                f = faults % (size + baud) if faults else None
                if f is None:
                    # a clean line: the best of 3 (the machine's other work only adds), and the
                    # most requests any of them sent twice
                    runs = [one(runtime, size, baud, f, files, env, work) for _ in range(3)]
                    best = min(runs, key=lambda r: r[2] if r[3] == 0 else 1e9)
                    worst = max(runs, key=lambda r: r[4].get("transfer", {}).get("retransmissions") or 0)
                    best[4].setdefault("transfer", {}).update(
                        {k: worst[4].get("transfer", {}).get(k) for k in ("retransmissions", "resent")})
                    row(runtime, new_size, baud, label, best, floor, "  (best of 3)")
                    clean.setdefault(baud, []).append((new_size, best[2]))
                else:
                    row(runtime, new_size, baud, label, one(runtime, size, baud, f, files, env, work), floor)
        for baud, points in sorted(clean.items()):
            if len(points) < 3:
                continue
            # time = fixed + slope * bytes (least squares): does it grow in proportion to the bytes?
            n = len(points)
            mx = sum(x for x, _ in points) / n
            my = sum(y for _, y in points) / n
            slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
            fixed = my - slope * mx
            print(f"   {runtime:11s} {baud:7d} clean: {slope / (10 / baud):.2f} x the floor per byte of bundle, plus "
                  f"{fixed * 1000:.0f} ms fixed (HELLO, IDENTIFY's answer, WRITE_BEGIN, the commit's check and answer)",
                  flush=True)
        # a read-back: the host never saw the installed bundle
        old_size = files[8192][0].stat().st_size
        new_size = files[8192][1].stat().st_size
        floor = (old_size + new_size) * 10 / 115200
        row(runtime, new_size, 115200, "clean", one(runtime, 8192, 115200, None, files, env, work, remember_old=False),
            floor, f"  (read back {old_size} B first: empty cache; the floor counts both)")
        # resume: cut at 50%, run again, against an uncut run
        old, new = files[8192]
        with VirtualBoard(runtime=runtime, baud=115200, fleet=FLEET, seed_bundle=old.read_bytes(),
                          signers=files["signers"], heap_kb=HEAP_KB.get(runtime)) as b:
            uncut = run_update(b, 115200, new, env, work / "r.json")
        with VirtualBoard(runtime=runtime, baud=115200, fleet=FLEET, seed_bundle=old.read_bytes(),
                          signers=files["signers"], heap_kb=HEAP_KB.get(runtime)) as b:
            # half the transfer's wire bytes: the session's start, then half the chunks (framing ~8%)
            cut = run_update(b, 115200, new, env, work / "r1.json", cut=80 + int(new.stat().st_size * 1.08) // 2)
            second = run_update(b, 115200, new, env, work / "r2.json")
        ratio = second[2] / uncut[2]
        print(f"   {runtime:11s} resume: cut at 50% ({cut[4].get('result')}: {cut[4].get('board_state')}); run "
              f"again: {second[2] * 1000:.0f} ms on the line vs {uncut[2] * 1000:.0f} ms uncut = {ratio:.2f} "
              f"(target <= 0.6; {second[4].get('result')})", flush=True)


if __name__ == "__main__":
    run()
