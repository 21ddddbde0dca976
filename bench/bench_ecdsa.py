"""ECDSA P-256 verification: pinagent.ecdsa on the MicroPython VM against pyca/cryptography on
the host, its heap use on the VM, and an ESP32 estimate, all measured in one run.

Timing on the VM: every verification is its own top-level call (fleetpin.vm.wasm.run_steps), so
garbage is collected between them as it would be on a board (this VM never collects inside a
call) and the heap does not grow while timing; the kinds of call are interleaved so a busy
machine slows them alike; the first rounds are discarded (Node compiles
the wasm in tiers), the median of the rest is reported, minus the cost of an empty call.

Heap on the VM, measured after collection (live bytes): the module's code, the G table it
keeps after the first verification, and the per-call state at the start of the ladder (the Q
table, both wNAF digit strings, scalars). The ladder's own temporaries (about 25 integers of
256 to 768 bits, counted from the code) cannot be measured here, since the VM never collects
inside a call: they are added as a bound. Also printed: the bytes one verification allocates
in total (garbage included): on the device that is how much the GC has to reclaim.

ESP32 estimate: the VM's speed is calibrated on a bigint-heavy workload with a published ESP32
figure. MicroPython's own benchmark bm_pidigits (65 digits of pi, Gibbons' spigot with 2x2
integer matrices) scored 591.97 on an ESP32 at 240 MHz (micropython/micropython PR #7850,
2021, N=100 M=100: score = 1e6 * 65 / microseconds, so ~110 ms per run). The same algorithm,
re-implemented below with the same operations, is timed on the VM in this run, and
    ESP32 time ~= VM time * (ESP32 pidigits time / VM pidigits time).
Cross-check printed alongside: the CPython/VM speed ratio of both workloads; if they are close,
the two workloads load the interpreter and the bigint code alike. Uncertainty: about 2x either
way (one published data point from 2021 firmware, on different integer sizes; flash-cache
misses and GC pauses on the device not modelled).
"""

from __future__ import annotations

import hashlib
import statistics
import timeit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature

from pinagent import ecdsa

ESP32_PIDIGITS_SCORE = 591.97  # bm_pidigits on ESP32 @ 240 MHz, PR #7850 (see docstring)
PIDIGITS = 65  # bm_pidigits' work at N=100 M=100: one run of 65 digits
ESP32_PIDIGITS_MS = PIDIGITS * 1e3 / ESP32_PIDIGITS_SCORE
WARMUP = 6  # VM calls discarded before timing
TIMED = 15
TRANSIENT_BOUND = 3 * 1024  # ladder temporaries: ~25 ints of <= 768 bits with object headers

PI_SOURCE = """
def pi_digits(count):
    # Gibbons' unbounded spigot, the work of MicroPython's perf_bench bm_pidigits.
    def compose(a, b):
        return (a[0] * b[0], a[0] * b[1] + a[1] * b[3], a[2] * b[0] + a[3] * b[2], a[2] * b[1] + a[3] * b[3])

    def digit(z, x):
        return (z[0] * x + z[1]) // (z[2] * x + z[3])

    z = (1, 0, 0, 1)
    k = 1
    out = []
    while len(out) < count:
        y = digit(z, 3)
        while y != digit(z, 4):
            z = compose(z, (k, 4 * k + 2, 0, 2 * k + 1))
            k += 1
            y = digit(z, 3)
        z = compose((10, -10 * y, 0, 1), z)
        out.append(y)
    return out
"""


def _case() -> tuple[ec.EllipticCurvePublicKey, bytes, bytes, bytes, bytes]:
    """A fixed key and an RFC 6979 signature: (public key, 04||X||Y, digest, DER sig, raw r||s)."""
    key = ec.derive_private_key(0x5EED5EED5EED5EED5EED5EED5EED5EED5EED5EED5EED5EED5EED5EED5EED5EED, ec.SECP256R1())
    digest = hashlib.sha256(b"fleetpin bench bundle").digest()
    der = key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()), deterministic_signing=True))
    r, s = decode_dss_signature(der)
    point = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return key.public_key(), point, digest, der, r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _host_seconds(fn: object, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number  # type: ignore[arg-type]


def _vm_measure(point: bytes, digest: bytes, sig: bytes) -> dict[str, float]:
    from fleetpin.vm import wasm

    verify = "ecdsa.verify_p256(PUB, D, SIG)"
    cold = "ecdsa._g_table = None\n" + verify  # as after a boot: the G table is built first
    steps = [
        "import sys\nsys.path.insert(0, %r)" % wasm.VM_DEVICE_DIR,  # 0
        "import gc",  # 1: baseline
        "from pinagent import ecdsa",  # 2: the module's code
        "PUB = %r\nD = %r\nSIG = %r\n%s" % (point, digest, sig, PI_SOURCE),  # 3
        verify,  # 4: builds the G table, which stays
        # 5 and 6: the state verify_p256 holds when its ladder starts (scalars, key, Q table,
        # digit strings), built with its own helpers and kept across a collection to weigh it.
        "e = int.from_bytes(D, 'big'); w = pow(int.from_bytes(SIG[32:], 'big'), ecdsa._N - 2, ecdsa._N)\n"
        "u1 = e * w % ecdsa._N; u2 = int.from_bytes(SIG[:32], 'big') * w % ecdsa._N\n"
        "Q = ecdsa._decode_point(PUB)\ndel e, w",
        "S = (ecdsa._odd_multiples(Q[0], Q[1], %d), ecdsa._wnaf(u1, %d), ecdsa._wnaf(u2, %d))"
        % (1 << (ecdsa._W_Q - 2), ecdsa._W_G, ecdsa._W_Q),  # the widths are const()s, gone on the VM
        "del S, Q, u1, u2",
        "a = gc.mem_alloc()\n%s\nprint(gc.mem_alloc() - a)" % verify,  # 8: allocation of one verify
    ]
    # Interleaved rounds, so a busy machine slows every kind alike and the ratios hold.
    blocks = {"empty": "pass", "verify": verify, "cold": cold, "pi": "pi_digits(%d)" % PIDIGITS}
    first_timed = len(steps)
    steps += list(blocks.values()) * (WARMUP + TIMED)
    run = wasm.run_steps(steps, wasm.device_files(), heap_kb=100, timeout=300)
    failed = next((s for s in run.steps if s.error is not None), None)
    if failed is not None:
        raise wasm.VMError(failed.error or "")
    timed = run.steps[first_timed + WARMUP * len(blocks) :]
    ms = {name: statistics.median(s.ms for s in timed[n :: len(blocks)]) for n, name in enumerate(blocks)}
    used = [s.heap_used for s in run.steps]
    return {
        "verify_ms": ms["verify"] - ms["empty"],
        "cold_ms": ms["cold"] - ms["empty"],
        "pi_ms": ms["pi"] - ms["empty"],
        "module": used[2] - used[1],
        "g_table": used[4] - used[3],
        "ladder_state": used[6] - used[4],
        "allocated": float(run.steps[8].stdout.split()[-1]),
    }


def run() -> None:
    public_key, point, digest, der, sig = _case()
    ecdsa.verify_p256(point, digest, sig)  # correct on CPython before anything is timed
    algorithm = ec.ECDSA(Prehashed(hashes.SHA256()))
    host = _host_seconds(lambda: public_key.verify(der, digest, algorithm), 200)
    cpy = _host_seconds(lambda: ecdsa.verify_p256(point, digest, sig), 20)
    namespace: dict[str, object] = {}
    exec(PI_SOURCE, namespace)
    pi = namespace["pi_digits"]
    assert "".join(map(str, pi(20))) == "31415926535897932384"  # type: ignore[operator]
    cpy_pi = _host_seconds(lambda: pi(PIDIGITS), 20)  # type: ignore[operator]

    vm = _vm_measure(point, digest, sig)
    vm_s = vm["verify_ms"] / 1e3
    esp32_factor = ESP32_PIDIGITS_MS / vm["pi_ms"]
    esp32_ms = vm["verify_ms"] * esp32_factor
    esp32_cold_ms = vm["cold_ms"] * esp32_factor
    peak = vm["module"] + vm["g_table"] + vm["ladder_state"] + TRANSIENT_BOUND

    print("   verify, host cryptography (OpenSSL): %8.1f us" % (host * 1e6))
    print("   verify, pinagent.ecdsa on CPython:   %8.2f ms  (%.0fx cryptography)" % (cpy * 1e3, cpy / host))
    print("   verify, pinagent.ecdsa on the VM:    %8.2f ms  (%.0fx cryptography, %.1fx CPython)" % (vm_s * 1e3, vm_s / host, vm_s / cpy))
    print("   first verify after boot (G table):   %8.2f ms on the VM" % vm["cold_ms"])
    print(
        "   calibration: pidigits(%d) VM %.2f ms, CPython %.2f ms (VM/CPython %.1fx; ECDSA %.1fx)"
        % (PIDIGITS, vm["pi_ms"], cpy_pi * 1e3, vm["pi_ms"] / (cpy_pi * 1e3), vm_s / cpy)
    )
    print(
        "   ESP32 @240 MHz estimate: %.0f ms per verify, %.0f ms for a bundle with 2 signatures after boot"
        " (x%.0f of the VM, from pidigits %.0f ms on ESP32; +-2x)"
        % (esp32_ms, esp32_cold_ms + esp32_ms, esp32_factor, ESP32_PIDIGITS_MS)
    )
    print(
        "   VM heap, live: module %.1f KB + G table %.1f KB + ladder state %.1f KB + temporaries <= %.1f KB"
        " = peak ~%.1f KB (budget 24 KB)"
        % (vm["module"] / 1024, vm["g_table"] / 1024, vm["ladder_state"] / 1024, TRANSIENT_BOUND / 1024, peak / 1024)
    )
    print("   VM heap, allocated per verify (garbage for the GC): %.0f KB" % (vm["allocated"] / 1024))
    _on_real_micropython(point, digest, sig, host)


def _on_real_micropython(point: bytes, digest: bytes, sig: bytes, host_s: float) -> None:
    """The same verification on real MicroPython (C bigints, as on the board), and the ESP32
    estimate calibrated there with the same pidigits workload."""
    from bench.unix_timing import median_ms

    setup = "from pinagent import ecdsa\nPUB = %r\nD = %r\nSIG = %r\n%s\necdsa.verify_p256(PUB, D, SIG)\n" % (
        point, digest, sig, PI_SOURCE)
    ms = median_ms(setup, {"verify": "ecdsa.verify_p256(PUB, D, SIG)", "pi": "pi_digits(%d)" % PIDIGITS})
    esp32 = ms["verify"] * ESP32_PIDIGITS_MS / ms["pi"]
    print("   on real MicroPython 1.29 (unix port): verify %.2f ms (%.0fx cryptography), pidigits %.2f ms;"
          " ESP32 estimate from it: %.0f ms per verify (+-2x)" % (ms["verify"], ms["verify"] / 1e3 / host_s, ms["pi"], esp32))
