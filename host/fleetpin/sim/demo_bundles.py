"""Signed bundles for virtual boards in tests, benchmarks and demos, made with FIXED DEMO KEYS.

The keys are derived from their names exactly as tests/vectors/make_bundle_vectors.py derives
its test keys ("everyday" and "backup" give the same set as tests/vectors/bundle/
signers_prod.json). Anyone can recompute them: NEVER let a real device trust them.

    signers = demo_signer_set()                        # bytes for a board's /fleetpin/signers.bin
    b = demo_bundle("acme", 5, {"api.example.com": [pin1, pin2]}, ca_der=[root_der])
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from fleetpin.bundles.build import BundleSource, build_bundle, canonical_json
from fleetpin.pki import keys
from fleetpin.pki.signing import LocalKeySigner

EXPIRES = 1893456000  # 2030-01-01
# Two well-formed pins of nobody's key (SHA-256 of fixed text): fillers for demo policies.
FILLER_PINS = [
    "sha256/" + __import__("base64").b64encode(hashlib.sha256(b"fleetpin demo pin %d" % i).digest()).decode()
    for i in range(64)
]


def demo_signer(name: str = "everyday", role: str = "production") -> LocalKeySigner:
    scalar = int.from_bytes(hashlib.sha256(b"fleetpin test key " + name.encode()).digest(), "big")
    key = ec.derive_private_key(scalar % (2**255), ec.SECP256R1())
    return LocalKeySigner(key, keys.public_info(key.public_key(), name, role))


def demo_signer_set(*names: str) -> bytes:
    """The signer set of these demo keys (default: everyday + backup), canonical JSON bytes."""
    infos = [demo_signer(n).info for n in (names or ("everyday", "backup"))]
    return canonical_json(keys.signer_set_obj(infos))


def demo_bundle(
    fleet: str,
    version: int,
    domains: dict[str, list[str]],
    ca_der: list[bytes] | None = None,
    issued: int | None = None,
    signer: str | tuple[str, ...] = "everyday",
    enforce: dict[str, bool] | None = None,
    new_signers: tuple[str, ...] | None = None,
) -> bytes:
    """A production bundle pinning each host to its pins (first pin "primary", others "backup-N"),
    signed by the demo key `signer` (or each of several); new_signers: the names of the demo keys
    of a signer set it installs (a rotation: sign it with two keys of the devices' set)."""
    policy: dict[str, Any] = {"domains": []}
    for host, pins in domains.items():
        d: dict[str, Any] = {
            "host": host,
            "expires": EXPIRES,
            "on_expiry": "fallback",
            "pins": [{"pin": p, "label": "primary" if i == 0 else f"backup-{i}"} for i, p in enumerate(pins)],
        }
        if enforce and host in enforce:
            d["enforce"] = enforce[host]
        policy["domains"].append(d)
    source = BundleSource(policy=policy, ca_certs=list(ca_der or []))
    return build_bundle(
        source,
        fleet=fleet,
        version=version,
        issued=int(time.time()) - 3600 if issued is None else issued,
        development=False,
        signers=[demo_signer(n) for n in ((signer,) if isinstance(signer, str) else signer)],
        new_signers=None if new_signers is None else json.loads(demo_signer_set(*new_signers)),
    )


def sized_bundle(fleet: str, version: int, size: int, issued: int | None = None) -> bytes:
    """A bundle of about `size` bytes (domains added until it is at least that big)."""
    domains: dict[str, list[str]] = {}
    i = 0
    while True:
        domains[f"host{i}.example.com"] = [FILLER_PINS[(2 * i) % 64], FILLER_PINS[(2 * i + 1) % 64]]
        data = demo_bundle(fleet, version, domains, issued=issued)
        if len(data) >= size:
            return data
        i += 1
