"""Serial update throughput: a 4 KB bundle through HELLO, WRITE_BEGIN, pipelined WRITE_CHUNKs
and WRITE_COMMIT at 115200 baud, against the line-rate floor, measured in one run.

What the simulation models (time-stepped, one step per byte time):
- each direction is its own line at 115200 baud, 10 bits per byte (8N1), one byte per step;
- the device is single-threaded: it takes the bytes its UART has delivered (visible 1 ms after
  they arrive: the RX FIFO timeout), runs the real DeviceLink + Service + an in-RAM handler,
  and is busy for the CPU time that call took under CPython, multiplied by `slowdown` (x1 = as
  measured; the VM measured ~30x; an ESP32 is estimated at 100-200x, shown as extra rows);
- the host (the real Client) sees device bytes 1 ms after they arrive (USB IN polling) and its
  writes reach the line 1 ms later (USB OUT), plus its own measured CPU time;
- not modelled: flash erase/program time (the handler writes RAM), the commit's signature
  check (instant here), line errors.
The floor is the bundle's bytes alone at line rate: 4096 * 10 / 115200 s.
"""

from __future__ import annotations

import os
import time
from collections import deque

from fleetpin.protocol.client import Client
from pinagent.link import DeviceLink
from pinagent.service import Handler

BAUD = 115200
BYTE_S = 10 / BAUD
DEV_RX_LATENCY_S = 0.001
HOST_IN_LATENCY_S = 0.001
HOST_OUT_LATENCY_S = 0.001


class RamHandler(Handler):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.stored = b""

    def write_begin(self, size, sha256):  # type: ignore[no-untyped-def]
        self.buf = bytearray(size)

    def write_chunk(self, offset, data):  # type: ignore[no-untyped-def]
        self.buf[offset : offset + len(data)] = data

    def write_commit(self):  # type: ignore[no-untyped-def]
        self.stored = bytes(self.buf)
        return {"version": 1}


def simulate(bundle: bytes, frame_target: int, slowdown: float) -> dict[str, float]:
    from pinagent.service import Service

    handler = RamHandler()
    svc = Service(handler)
    dev = DeviceLink(svc.dispatch)
    client = Client(rto_ms=1000, frame_target=frame_target)
    up = client.upload(bundle)

    down: deque[tuple[float, int]] = deque()  # (time the byte may start on the line, byte)
    up_q: deque[tuple[float, int]] = deque()
    dev_rx: deque[tuple[float, int]] = deque()  # (time the device can read it, byte)
    host_rx: deque[tuple[float, int]] = deque()
    dev_busy = host_busy = 0.0
    down_bytes = up_bytes = 0
    t = 0.0
    while not up.done:
        if t > 60:
            raise RuntimeError("upload did not finish in 60 simulated seconds")
        # one byte time on each line
        if down and down[0][0] <= t:
            dev_rx.append((t + BYTE_S + DEV_RX_LATENCY_S, down.popleft()[1]))
            down_bytes += 1
        if up_q and up_q[0][0] <= t:
            host_rx.append((t + BYTE_S + HOST_IN_LATENCY_S, up_q.popleft()[1]))
            up_bytes += 1
        if t >= dev_busy:
            data = bytearray()
            while dev_rx and dev_rx[0][0] <= t:
                data.append(dev_rx.popleft()[1])
            if data:
                c0 = time.perf_counter()
                out = dev.receive_data(bytes(data))
                dev_busy = t + (time.perf_counter() - c0) * slowdown
                up_q.extend((dev_busy, b) for b in out)
        if t >= host_busy:
            data = bytearray()
            while host_rx and host_rx[0][0] <= t:
                data.append(host_rx.popleft()[1])
            now_ms = t * 1000
            c0 = time.perf_counter()
            if data:
                client.receive_data(bytes(data), now_ms)
            client.tick(now_ms)
            out = client.data_to_send(now_ms)
            host_busy = t + (time.perf_counter() - c0)
            down.extend((host_busy + HOST_OUT_LATENCY_S, b) for b in out)
        t += BYTE_S
    if up.error is not None or handler.stored != bundle:
        raise RuntimeError("upload failed: %r" % up.error)
    floor = len(bundle) * BYTE_S
    return {
        "down": down_bytes / len(bundle),
        "total": (down_bytes + up_bytes) / len(bundle),
        "time": t,
        "ratio": t / floor,
        "chunks": up.chunks,
    }


def der_bundle(size: int) -> bytes:
    """Certificates, the DER that makes up most of a real bundle (and is full of 0x01-0x05)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    out = bytearray()
    i = 0
    while len(out) < size:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca%d.example.com" % i)])
        now = datetime.datetime(2025, 1, 1)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(i + 1)
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        out += cert.public_bytes(serialization.Encoding.DER)
        i += 1
    return bytes(out[:size])


def device_cpu_per_frame_us() -> float:
    """CPython time for the device to take one 200-byte WRITE_CHUNK frame (the x1 row)."""
    from pinagent.link import encode_frame
    from pinagent.service import Service

    dev = DeviceLink(Service(RamHandler()).dispatch)
    dev.receive_data(encode_frame(0, 0, b"\x01"))
    dev.receive_data(encode_frame(1, 4, bytes(36)))
    frames = [bytes(encode_frame(2 + i % 200, 5, b"\0\0\0\0" + os.urandom(180), None)) for i in range(1000)]
    c0 = time.perf_counter()
    for f in frames:
        dev.receive_data(f)
    return (time.perf_counter() - c0) / len(frames) * 1e6


def run() -> None:
    random_bundle = os.urandom(4096)
    der = der_bundle(4096)
    print("   4096-byte bundle, 115200 baud 8N1, window 256 B; targets: down B/B <= 1.15, time/floor <= 1.5")
    print("   floor = %.0f ms (bundle bytes alone at line rate)" % (4096 * BYTE_S * 1000))
    print("   device CPU per 200-byte chunk frame under CPython: %.0f us" % device_cpu_per_frame_us())
    print("   %-7s %-6s %-8s %6s %9s %9s %8s %10s" % ("bundle", "frame", "device", "chunks", "down B/B", "both B/B", "time ms", "time/floor"))
    rows = [("DER", der, t, s) for t in (120, 160, 200, 230) for s in (1,)]
    rows += [("DER", der, 200, s) for s in (30, 100, 200)]
    rows += [("random", random_bundle, 200, s) for s in (1, 100)]
    for name, bundle, target, slowdown in rows:
        r = simulate(bundle, target, slowdown)
        print(
            "   %-7s %-6d %-8s %6d %9.3f %9.3f %8.0f %10.2f"
            % (name, target, "x%d" % slowdown, r["chunks"], r["down"], r["total"], r["time"] * 1000, r["ratio"])
        )
    print("   frame: the client's WRITE_CHUNK frame target in wire bytes (default 200)")
    print("   device xN: device CPU time = N x the CPython time; the MicroPython VM (wasm) measured")
    print("   ~30x, an ESP32 at 240 MHz is estimated at 100-200x: past ~300x the device, not the")
    print("   line, is the bottleneck. down: host->device bytes per bundle byte; both: + answers.")


if __name__ == "__main__":
    run()
