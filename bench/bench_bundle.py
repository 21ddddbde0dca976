"""Bundle verification as the device does it (pinagent.bundle.decode_bundle: envelope, ECDSA
P-256 signature, fleet, version, time, policy schema) on the MicroPython VM with a 100 KB heap,
against the same verification with pyca/cryptography on the host; its peak heap; and an ESP32
estimate (issue 3 targets: peak heap < 24 KB, ESP32 < 2 s).

The bundle: a realistic one built by fleetpin (3 domains with primary and backup pins, a root
and an intermediate CA certificate, 1 signature).

Host baseline ("the same verification with cryptography"): SHA-256 of the signed bytes,
cryptography's ECDSA verify, json parsing of header and payload, and x509 parsing of the CA
certificates.

Heap: this VM collects no garbage inside a call, so one decode's allocation (about 0.8 MB, almost
all ECDSA bigint garbage) says nothing about its peak. The peak is bounded as: live code and data
(the bundle, measured after collection) + the larger of the decoder's transient
allocation with the signature check stubbed out (measured) and the ECDSA ladder's live state
and temporaries (measured and bounded by bench_ecdsa). ESP32 time: the VM time scaled by the
pidigits calibration of bench_ecdsa (one published ESP32 figure; +-2x).
"""

from __future__ import annotations

import json
import statistics
import time
import timeit

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from bench.bench_ecdsa import ESP32_PIDIGITS_MS, PI_SOURCE, PIDIGITS, TRANSIENT_BOUND
from fleetpin.bundles.build import BundleSource, build_bundle, canonical_json
from fleetpin.pki.keys import public_info, signer_set_obj
from fleetpin.pki.signing import LocalKeySigner
from fleetpin.sim.pki import make_pki
from fleetpin.vm import wasm
from pinagent import bundle as dev_bundle
from pinagent import signers as dev_signers

FLEET = "bench-fleet"
ROUNDS = 9
ECDSA_LADDER_STATE = 4.5 * 1024  # bench_ecdsa: the ladder's state at its start (measured there)


def make_case() -> tuple[bytes, bytes, LocalKeySigner]:
    key = ec.derive_private_key(0xB0B0CAFE, ec.SECP256R1())
    signer = LocalKeySigner(key, public_info(key.public_key(), "bench", "production"))
    other = ec.derive_private_key(0xB0B0CAFF, ec.SECP256R1())
    signers = canonical_json(signer_set_obj([signer.info, public_info(other.public_key(), "vault", "production")]))
    domains = []
    for i, host in enumerate(("api.bench.test", "telemetry.bench.test", "ota.bench.test")):
        pki = make_pki(host, namespace="fleetpin-bench-bundle")
        domains.append({"host": host, "include_subdomains": i == 1, "enforce": True, "expires": 4102444800,
                        "on_expiry": "fallback", "pins": [{"pin": pki.leaf.pin, "label": "primary"},
                                                          {"pin": pki.backup_leaf.pin, "label": "backup"}]})
    pki = make_pki("api.bench.test", namespace="fleetpin-bench-bundle")
    source = BundleSource(policy={"domains": domains}, ca_certs=[pki.root.der, pki.intermediate.der])
    data = build_bundle(source, fleet=FLEET, version=7, issued=int(time.time()) - 60, development=False, signers=[signer])
    return data, signers, signer


def run() -> None:
    data, signers, signer = make_case()
    trusted = dev_signers.load_signers(signers)
    dev_bundle.decode_bundle(data, trusted, FLEET, 6, None, 0)  # correct on CPython first

    # host: the same checks with cryptography
    u = dev_bundle.decode_unverified(data)
    sig_start = len(data) - 1 - 72 * len(u.key_ids)
    signed, raw = data[:sig_start], data[sig_start + 1 + 8 : sig_start + 1 + 72]
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    der_sig = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    pub = signer.info.public_key()
    header_len = int.from_bytes(data[4:6], "big")
    payload_len = int.from_bytes(data[6 + header_len : 10 + header_len], "big")
    header = data[6 : 6 + header_len]
    payload = data[10 + header_len : 10 + header_len + payload_len]
    certs = u.ca_certs

    def host() -> None:
        pub.verify(der_sig, signed, ec.ECDSA(hashes.SHA256()))
        json.loads(header)
        json.loads(payload)
        for c in certs:
            x509.load_der_x509_certificate(bytes(c))

    host()
    host_s = min(timeit.repeat(host, number=200, repeat=5)) / 200

    files = {"/bench/bundle.bin": data, "/bench/signers.json": signers}
    decode = "bundle.decode_bundle(DATA, TRUSTED, %r, 6, None, 0)" % FLEET
    steps = [
        "import sys\nsys.path.insert(0, %r)" % wasm.VM_DEVICE_DIR,
        "import gc",  # 1: baseline
        "from pinagent import bundle, signers, ecdsa, policy, der, pins",  # 2: code
        "DATA = open('/bench/bundle.bin','rb').read()\nTRUSTED = signers.load_signers(open('/bench/signers.json','rb').read())",  # 3
        decode,  # 4: first decode (G table built: stays)
        "B = " + decode,  # 5: a decoded bundle kept (what the agent holds)
        # 6: the decoder's own transient allocation, with the signature arithmetic stubbed out
        "real = ecdsa.verify_p256\necdsa.verify_p256 = lambda *a: None\na = gc.mem_alloc()\n" + decode
        + "\nprint(gc.mem_alloc() - a)\necdsa.verify_p256 = real",
        PI_SOURCE,
    ]
    blocks = {"empty": "pass", "decode": decode, "pi": "pi_digits(%d)" % PIDIGITS}
    first = len(steps)
    steps += list(blocks.values()) * (3 + ROUNDS)
    run_ = wasm.run_steps(steps, {**wasm.device_files(compiled=True), **files}, heap_kb=100, timeout=300)
    failed = next((s for s in run_.steps if s.error is not None), None)
    if failed is not None:
        raise wasm.VMError(failed.error or "")
    timed = run_.steps[first + 3 * len(blocks):]
    ms = {name: statistics.median(s.ms for s in timed[n :: len(blocks)]) for n, name in enumerate(blocks)}
    used = [s.heap_used for s in run_.steps]
    code = used[2] - used[1]
    kept = used[5] - used[1]
    decoder_transient = int(run_.steps[6].stdout.split()[-1])
    ecdsa_transient = ECDSA_LADDER_STATE + TRANSIENT_BOUND
    peak = kept + max(decoder_transient, ecdsa_transient)
    vm_ms = ms["decode"] - ms["empty"]
    esp32_ms = vm_ms * ESP32_PIDIGITS_MS / (ms["pi"] - ms["empty"])

    print(f"   bundle: {len(data)} bytes, 3 domains, 2 CA certificates, 1 signature")
    print(f"   verify on the host with cryptography: {host_s * 1e6:8.1f} us")
    print(f"   decode_bundle on the VM (100 KB heap): {vm_ms:8.2f} ms  = {vm_ms / 1e3 / host_s:.0f}x the host")
    print(f"   ESP32 @240 MHz estimate: {esp32_ms:.0f} ms (pidigits calibration, +-2x; target < 2000 ms)")
    print(f"   VM heap: code {code / 1024:.1f} KB; code + decoded bundle kept {kept / 1024:.1f} KB; "
          f"decoder transient {decoder_transient / 1024:.1f} KB; ECDSA transient <= {ecdsa_transient / 1024:.1f} KB")
    working = peak - code
    print(f"   peak heap of the verification's data <= {working / 1024:.1f} KB (target < 24 KB): decoded bundle "
          f"{(kept - code) / 1024:.1f} KB + the larger transient")
    print(f"   with the modules' bytecode loaded from .mpy into RAM: <= {peak / 1024:.1f} KB "
          "(frozen into the firmware, bytecode stays in flash and this is the data figure above)")
    from bench.unix_timing import median_ms

    setup = ("from pinagent import bundle, signers\nDATA = open('bench/bundle.bin','rb').read()\n"
             "TRUSTED = signers.load_signers(open('bench/signers.json','rb').read())\n" + PI_SOURCE)
    real = median_ms(setup, {"decode": decode, "pi": "pi_digits(%d)" % PIDIGITS},
                     {k.lstrip("/"): v for k, v in files.items()}, rounds=9)
    real_esp32 = real["decode"] * ESP32_PIDIGITS_MS / real["pi"]
    print(f"   on real MicroPython 1.29 (unix port): decode_bundle {real['decode']:.2f} ms = "
          f"{real['decode'] / 1e3 / host_s:.0f}x the host; ESP32 estimate from it {real_esp32:.0f} ms (+-2x)")
