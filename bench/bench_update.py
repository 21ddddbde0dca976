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
  bundle may), at 115200 and 921600 baud, and the 2 KB one at 9600; on every board runtime;
  on a clean line and with 0.1% and 1% mixed byte faults (drop 40%, flip 40%, duplicate 20%
  of them, each way, fixed seeds). The host's bundle cache holds the installed bundle (it
  built it), so nothing is read back; one row per runtime reads 8 KB back (an empty cache).
- "resent": requests sent more than once (the receipt's transfer.retransmissions, probes of
  slow requests included). On a clean line it must be 0.
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
CASES = [(2048, 9600)] + [(size, baud) for size in (2048, 8192, 16384) for baud in (115200, 921600)]
FLEETPIN = [str(Path(sys.executable).with_name("fleetpin"))]


def _ca_certs(n: int) -> list[bytes]:
    out = []
    now = dt.datetime.now(dt.timezone.utc)
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


def run_update(port: str, baud: int, path: Path, env: dict[str, str], receipt: Path,
               cut: tuple[VirtualBoard, int] | None = None) -> tuple[float, int, dict]:
    """(seconds, exit code, receipt) of one `fleetpin device update` process."""
    t = time.perf_counter()
    proc = subprocess.Popen(FLEETPIN + ["device", "update", "-p", port, "-b", str(baud), str(path), "--yes", "--json",
                                        "--receipt", str(receipt), "--timeout", "20"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if cut is not None:
        board, at = cut

        def watch() -> None:
            start = board.line.bytes_in
            while proc.poll() is None and board.line.bytes_in - start < at:
                time.sleep(0.0005)
            proc.send_signal(signal.SIGINT)

        threading.Thread(target=watch, daemon=True).start()
    proc.communicate(timeout=300)
    elapsed = time.perf_counter() - t
    try:
        rec = json.loads(receipt.read_text())
    except (OSError, ValueError):
        rec = {}
    return elapsed, proc.returncode, rec


def one(runtime: str, size: int, baud: int, faults: str | None, files: dict, env: dict[str, str], work: Path,
        remember_old: bool = True) -> tuple[float, int, dict]:
    old, new = files[size]
    cache = work / ("cache" if remember_old else "empty-cache")
    e = {**env, "XDG_CACHE_HOME": str(cache)}
    with VirtualBoard(runtime=runtime, baud=baud, faults=faults, fleet=FLEET, seed_bundle=old.read_bytes(),
                      signers=files["signers"]) as b:
        return run_update(b.port, baud, new, e, work / "receipt.json")


def run() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-update-"))
    env = {**os.environ, "XDG_CACHE_HOME": str(work / "cache")}
    files: dict = {"signers": demo_signer_set()}
    cas = _ca_certs(MAX_CERTS)
    from fleetpin.bundles import cache as bundle_cache

    os.environ["XDG_CACHE_HOME"] = str(work / "cache")
    for size in (2048, 8192, 16384):
        with_cas = cas if size == 16384 else []
        old, new = bundle(3, size, with_cas), bundle(4, size, with_cas)
        (work / f"v3-{size}.fpb").write_bytes(old)
        (work / f"v4-{size}.fpb").write_bytes(new)
        bundle_cache.remember(old)  # the host built v3: its cache has it
        files[size] = (work / f"v3-{size}.fpb", work / f"v4-{size}.fpb")
    start = startup(env)
    print(f"   CLI start-up (fleetpin device update --help, best of 3): {start * 1000:.0f} ms, taken out of every ratio")
    sizes = ", ".join(f"{files[s][1].stat().st_size} B" for s in (2048, 8192, 16384))
    print(f"   bundles: {sizes}"
          f" (the last with {MAX_CERTS} CA certificates); runtimes: {', '.join(RUNTIMES)}")
    print(f"   {'runtime':11s} {'bundle':>7s} {'baud':>7s} {'line':6s} {'time':>8s} {'floor':>8s} {'ratio':>6s} resent")
    for runtime in RUNTIMES:
        for size, baud in CASES:
            new_size = files[size][1].stat().st_size
            floor = new_size * 10 / baud
            for label, faults in FAULTS.items():
                f = faults % (size + baud) if faults else None
                elapsed, code, rec = one(runtime, size, baud, f, files, env, work)
                net = elapsed - start
                resent = rec.get("transfer", {}).get("retransmissions")
                ok = "" if code == 0 and rec.get("result") == "installed" else f"  FAILED: {rec.get('error')}"
                print(f"   {runtime:11s} {new_size:7d} {baud:7d} {label:6s} {net * 1000:6.0f}ms {floor * 1000:6.0f}ms "
                      f"{net / floor:5.2f}x {resent}{ok}", flush=True)
        # a read-back: the host never saw the installed bundle
        old_size = files[8192][0].stat().st_size
        new_size = files[8192][1].stat().st_size
        floor = (old_size + new_size) * 10 / 115200
        elapsed, code, rec = one(runtime, 8192, 115200, None, files, env, work, remember_old=False)
        net = elapsed - start
        print(f"   {runtime:11s} {new_size:7d} {115200:7d} clean  {net * 1000:6.0f}ms {floor * 1000:6.0f}ms "
              f"{net / floor:5.2f}x {rec.get('transfer', {}).get('retransmissions')}  (read-back of {old_size} B: "
              "empty cache; floor counts both)", flush=True)
        # resume: cut at 50%, run again, against an uncut run
        old, new = files[8192]
        with VirtualBoard(runtime=runtime, baud=115200, fleet=FLEET, seed_bundle=old.read_bytes(),
                          signers=files["signers"]) as b:
            uncut, _, _ = run_update(b.port, 115200, new, env, work / "r.json")
        with VirtualBoard(runtime=runtime, baud=115200, fleet=FLEET, seed_bundle=old.read_bytes(),
                          signers=files["signers"]) as b:
            _, code1, rec1 = run_update(b.port, 115200, new, env, work / "r1.json", cut=(b, new.stat().st_size // 2))
            second, code2, rec2 = run_update(b.port, 115200, new, env, work / "r2.json")
        ratio = (second - start) / (uncut - start)
        print(f"   {runtime:11s} resume: cut at 50% ({rec1.get('result')}, exit {code1}), run again: "
              f"{(second - start) * 1000:.0f} ms vs {(uncut - start) * 1000:.0f} ms uncut = {ratio:.2f} "
              f"(target <= 0.6; {rec2.get('result')})", flush=True)


if __name__ == "__main__":
    run()
