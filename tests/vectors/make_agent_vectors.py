"""Generates the agent test vectors under tests/vectors/agent/ (device/pinagent/agent.py tests).

    .venv/bin/python tests/vectors/make_agent_vectors.py

Signed bundles for tests/device/test_agent.py, made with the fixed test keys of
make_bundle_vectors.py (imported from it: the same "everyday" key A signs, so
bundle/signers_prod.json is the signer set that trusts them; RFC 6979 signatures: running the
script again gives the same bytes). Their policies pin the certificate vectors of certs/
(make_vectors.py): chain-leaf.der (under chain-intermediate, chain-root) and ec-p256.der, and
carry chain-root.der as the CA certificate. A fake TLS adapter in the tests presents those
certificates as server chains.

Files:
  v1.bin              version 1, issued NOW-3600, policy POLICY (unpinned "ca")
  v2.bin              version 2, issued NOW-1800, the same domains, unpinned "block"
  v2_other_fleet.bin  v2 for fleet "other-fleet"
  v2_bad_signature.bin  v2 with its last signature byte flipped
  v3_reports_off.bin  version 3, reports disabled ("report": {"enabled": false})
  info.json           {"fleet", "now", "v1_issued", "v2_issued", "pins": {name: base64 pin}}
"""

from __future__ import annotations

import base64
import hashlib
import json
import pathlib
import sys
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import make_bundle_vectors as MB  # noqa: E402  (the fixed keys and the low-level encoder)

OUT = HERE / "agent"
NOW = MB.NOW
EXPIRES = MB.EXPIRES
EXPIRED = NOW - 86400


def spki_pin(der: bytes) -> str:
    from pinagent.der import spki_of_certificate

    return base64.b64encode(hashlib.sha256(bytes(spki_of_certificate(der))).digest()).decode()


def policy(pins: dict[str, str], unpinned: str) -> dict[str, Any]:
    def pin(name: str, label: str) -> dict[str, str]:
        return {"pin": pins[name], "label": label}

    return {
        "unpinned": unpinned,
        "domains": [
            {"host": "chain-leaf.example", "pins": [pin("leaf", "primary"), pin("other", "backup")],
             "expires": EXPIRES, "on_expiry": "fallback"},
            {"host": "intermediate.example", "pins": [pin("intermediate", "ca")], "expires": EXPIRES},
            {"host": "report.example", "enforce": False, "pins": [pin("other", "primary")], "expires": EXPIRES},
            {"host": "expired.example", "pins": [pin("other", "primary")], "expires": EXPIRED, "on_expiry": "fallback"},
            {"host": "strict.example", "pins": [pin("other", "primary")], "expires": EXPIRED, "on_expiry": "enforce"},
        ],
    }


def main() -> int:
    OUT.mkdir(exist_ok=True)
    certs = HERE / "certs"
    pins = {
        "leaf": spki_pin((certs / "chain-leaf.der").read_bytes()),
        "intermediate": spki_pin((certs / "chain-intermediate.der").read_bytes()),
        "root": spki_pin((certs / "chain-root.der").read_bytes()),
        "other": spki_pin((certs / "ec-p256.der").read_bytes()),
    }
    ca = [(certs / "chain-root.der").read_bytes()]
    report = {"max_entries": 8, "max_bytes": 4096}

    def bundle(version: int, issued: int, unpinned: str, fleet: str = MB.FLEET, rep: dict[str, Any] = report) -> bytes:
        header = {"format": 1, "fleet": fleet, "version": version, "issued": issued, "channel": "production"}
        return MB.raw(header, {"policy": policy(pins, unpinned), "report": rep}, ca, [MB.A])

    v1 = bundle(1, NOW - 3600, "ca")
    v2 = bundle(2, NOW - 1800, "block")
    files = {
        "v1.bin": v1,
        "v2.bin": v2,
        "v2_other_fleet.bin": bundle(2, NOW - 1800, "block", fleet="other-fleet"),
        "v2_bad_signature.bin": v2[:-1] + bytes([v2[-1] ^ 1]),
        "v3_reports_off.bin": bundle(3, NOW - 900, "ca", rep={"enabled": False}),
    }
    for name, data in files.items():
        (OUT / name).write_bytes(data)
    info = {"fleet": MB.FLEET, "now": NOW, "v1_issued": NOW - 3600, "v2_issued": NOW - 1800, "pins": pins}
    (OUT / "info.json").write_text(json.dumps(info, sort_keys=True, indent=1) + "\n")
    print(f"{len(files)} bundles in {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
