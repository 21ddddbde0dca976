"""Served chains and what the device would decide on them: loading a chain, validating it
against the CAs a device trusts (with cryptography, through view.verified_path: the chain the
device pins is the path validation builds, not the certificates as sent), and the verdict from
the agent's own code (on CPython or on the MicroPython VM). `check`, `bundle lint|diff` and
`preflight` share these."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetpin.bundles.view import ServedChain, View, verified_path
from fleetpin.errors import FleetpinError, UsageError
from fleetpin.pki import certs
from fleetpin.pki.certs import load_certificates


@dataclass
class Verification:
    verified: bool
    anchor: str | None  # what the chain was verified against
    error: str | None  # why it was not verified
    from_device_cas: bool = False  # against the CAs the device trusts (--ca, the bundle's), not the chain's own root
    path: list[bytes] | None = None  # verified: the chain the device pins (view.verified_path), leaf first

    def device_chain(self, sent: list[bytes]) -> list[bytes]:
        """What the device's verify callback sees: the verified path, else (a chain that is
        not verified, where only the leaf can count) the certificates as sent."""
        return self.path if self.verified and self.path else sent


def load_chain(path: Path) -> list[bytes]:
    """The chain's DER certificates, leaf first, each checked by the device's DER walker."""
    from pinagent.der import DerError, parse_certificate

    ders = load_certificates(path, "chain")
    for i, der in enumerate(ders):
        try:
            parse_certificate(der)
        except DerError as e:
            raise UsageError(f"{path}: certificate {i}: not a certificate the device can read: {e}") from None
    return ders


def verify_chain(ders: list[bytes], host: str, now: int | None, ca_path: Path | None,
                 bundle_cas: list[bytes] | None = None) -> Verification:
    from cryptography import x509

    try:
        certs = [x509.load_der_x509_certificate(d) for d in ders]
    except ValueError as e:
        return Verification(False, None, f"cryptography cannot parse the chain: {e}")
    sent = ders
    device_cas = ca_path is not None or bool(bundle_cas)
    if ca_path is not None:
        try:
            anchors = [x509.load_der_x509_certificate(d) for d in load_certificates(ca_path, "--ca file")]
        except ValueError as e:
            raise UsageError(f"{ca_path}: cannot parse a CA certificate: {e}") from None
        anchor = f"--ca {ca_path.name}"
    elif bundle_cas:  # what the device itself trusts: the CA certificates its bundle ships
        anchors = [x509.load_der_x509_certificate(d) for d in bundle_cas]
        anchor = "the CA certificates in the policy file (bundle.ca_certs)"
    elif len(certs) > 1 and _self_signed(certs[-1]):
        anchors, sent = [certs[-1]], ders[:-1]
        anchor = "the chain's own root: " + certs[-1].subject.rfc4514_string()
    else:
        return Verification(False, None, "no trust anchor (pass --ca with the CA certificates your bundle ships)")

    when = dt.datetime.now(dt.timezone.utc) if now is None else dt.datetime.fromtimestamp(now, dt.timezone.utc)
    path, error = verified_path(sent, host.lower().rstrip("."), anchors, when)
    if path is None:
        return Verification(False, anchor, error, device_cas)
    return Verification(True, anchor, None, device_cas, path)


def _self_signed(cert: Any) -> bool:
    if cert.subject != cert.issuer:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except Exception:  # any failure (bad signature, unsupported key) means: not a usable root
        return False
    return True


def verdict_on_cpython(obj: dict[str, Any], host: str, ders: list[bytes], now: int | None,
                       verified: bool) -> dict[str, Any]:
    from pinagent import pins, policy
    from pinagent.policy_load import policy_from_obj

    # `now` is taken as authenticated time (a device that knows the time), so expired pins fall
    # back as the rule says; a device whose clock alone moved past an expiry keeps the pins.
    verdict = policy.decide(policy_from_obj(obj), host, pins.chain_digests(ders), now, verified, 0, now)
    result: dict[str, Any] = verdict.to_obj()
    return result


_VM_SOURCE = """
import json
from pinagent.policy_load import policy_from_obj
from pinagent import pins, policy
with open(ROOT + "/args.json") as f:
    args = json.load(f)
with open(ROOT + "/policy.json") as f:
    p = policy_from_obj(json.load(f))
ders = []
for i in range(args["count"]):
    with open(ROOT + "/chain/%d.der" % i, "rb") as f:
        ders.append(f.read())
v = policy.decide(p, args["host"], pins.chain_digests(ders), args["now"], args["verified"], 0, args["now"])
print("FLEETPIN-VERDICT " + json.dumps(v.to_obj()))
"""


def verdict_on_runtime(runtime: str, obj: dict[str, Any], host: str, ders: list[bytes], now: int | None,
                       verified: bool) -> dict[str, Any]:
    """The device's verdict computed by pinagent on a MicroPython runtime: "micropython" (real,
    the unix port) or "wasm" (the WebAssembly VM)."""
    files = {
        "check/args.json": json.dumps({"host": host, "now": now, "verified": verified, "count": len(ders)}).encode(),
        "check/policy.json": json.dumps(obj).encode(),
    }
    for i, der in enumerate(ders):
        files[f"check/chain/{i}.der"] = der
    if runtime == "micropython":
        from fleetpin.vm import unix

        out = unix.run_with_files('ROOT = "check"\n' + _VM_SOURCE, files).stdout
    else:
        from fleetpin.vm.wasm import run_python

        out = run_python('ROOT = "/check"\n' + _VM_SOURCE, files={"/" + k: v for k, v in files.items()}, heap_kb=100)
    for line in out.splitlines():
        if line.startswith("FLEETPIN-VERDICT "):
            result: dict[str, Any] = json.loads(line[len("FLEETPIN-VERDICT "):])
            return result
    raise FleetpinError(f"pinagent printed no verdict on {runtime}", hint="its output was:\n" + out)


def describe_chain(ders: list[bytes]) -> list[dict[str, Any]]:
    from pinagent import der as der_mod
    from pinagent import pins

    out = []
    for depth, der in enumerate(ders):
        cert = der_mod.parse_certificate(der)
        out.append({
            "depth": depth,
            "pin": pins.pin_to_text(pins.spki_digest(cert.spki)),
            "subject_cn": cert.subject_cn,
            "not_before": cert.not_before,
            "not_after": cert.not_after,
        })
    return out


def load_chains(chain_args: Sequence[str], host_args: Sequence[str], ca_path: Path | None,
                views: Sequence[View], timeout: float = 20.0) -> list[ServedChain]:
    """--chain FILE | HOST=FILE and --host HOST:PORT as served chains. A live server's chain is
    taken as served when the views carry CA certificates: lint and diff validate it against
    them, as devices do and as for --chain (FP011 for one that fails, instead of stopping here).
    With --ca it is validated against those CAs here, without CAs anywhere against the system
    store."""

    out: list[ServedChain] = []
    for arg in chain_args:
        host, sep, file = arg.partition("=")
        if sep and host and not Path(arg).exists():
            out.append(ServedChain(file, load_chain(Path(file)), host))
        else:
            out.append(ServedChain(arg, load_chain(Path(arg))))
    verify = ca_path is not None or not any(v.ca_certs for v in views)
    for arg in host_args:
        target = certs.parse_host(arg)
        records = certs.load_host(target, ca_path, timeout, verify=verify)
        out.append(ServedChain(str(target), [r.der for r in records if r.der is not None], target.host))
    return out
