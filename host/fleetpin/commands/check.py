"""`fleetpin check`: would a device with this policy accept this certificate chain?

The verdict comes from the device's own code (pinagent.der, pins, policy), run here under
CPython or on the MicroPython VM, so what this command says is what the agent decides.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from pinagent.connect import TLS_FAILED

from .bundle_build import load_bundle_source
from .certs import host_name, load_certificates
from .errors import FleetpinError, UsageError
from .verdicts import hint_for, reason_text

RUNTIMES = ("device", "micropython")

@dataclass
class Verification:
    verified: bool
    anchor: str | None  # what the chain was verified against
    error: str | None  # why it was not verified
    from_device_cas: bool = False  # against the CAs the device trusts (--ca, the bundle's), not the chain's own root


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--policy", "policy_path", required=True, metavar="POLICY.toml",
              type=click.Path(dir_okay=False, path_type=Path), help="The pin policy (see examples/policy.toml).")
@click.option("--host", required=True, help="The server name the device connects to (its server_hostname).")
@click.argument("chain_path", metavar="CHAIN", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--now", "now_text", metavar="ISO8601|unknown",
              help="The device's clock, e.g. 2026-05-01T12:00:00Z (default: this machine's clock); "
              "'unknown' = a device whose clock was never set.")
@click.option("--ca", "ca_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Trust anchors (PEM/DER) to verify the chain against: the CA certificates your bundle ships.")
@click.option("--unverified", is_flag=True,
              help="Treat the chain as not CA-verified (a device without CERT_REQUIRED): only leaf pins count.")
@click.option("--runtime", type=click.Choice(RUNTIMES), default="device", show_default=True,
              help="Run the agent code under CPython ('device') or on the MicroPython VM with a 100 KB heap.")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
def check(policy_path: Path, host: str, chain_path: Path, now_text: str | None, ca_path: Path | None,
          unverified: bool, runtime: str, as_json: bool) -> None:
    """Check a certificate CHAIN (PEM with one or more certificates, leaf first, or DER) for
    HOST against a pin policy, exactly as the device agent would decide.

    \b
    Whether the chain counts as CA-verified (pins above the leaf count only if it is):
      --ca FILE      verified against the certificates in FILE (host name, validity
                     period, signatures and extensions, at --now);
      otherwise      against the policy's [bundle] ca_certs, as the device does;
      without them   against the chain's last certificate if it is a
                     self-signed root, else not verified;
      --unverified   never verified.
    Leaf pins count either way.

    \b
    Exit codes: 0 the device would connect, 1 it would refuse, 2 usage error.
    """
    source = load_bundle_source(policy_path)  # a policy file may carry the bundle's CA certs too
    obj = source.policy
    ders = load_chain(chain_path)
    now = parse_now(now_text)
    verification = (
        Verification(False, None, "--unverified")
        if unverified
        else verify_chain(ders, host, now, ca_path, source.ca_certs)
    )
    if runtime == "micropython":
        verdict = verdict_on_vm(obj, host, ders, now, verification.verified)
    else:
        verdict = verdict_on_cpython(obj, host, ders, now, verification.verified)
    if verification.from_device_cas and not verification.verified:
        # The device validates under CERT_REQUIRED against exactly these CAs: a chain that fails
        # never reaches the pin check there, whatever the pins say.
        verdict = {**verdict, "allowed": False, "reason": TLS_FAILED, "pin_verdict": verdict["reason"]}
    certificates = describe_chain(ders)

    if as_json:
        click.echo(json.dumps({
            "verdict": verdict,
            "certificates": certificates,
            "verification": {"verified": verification.verified, "anchor": verification.anchor,
                             "error": verification.error},
            "now": now,
            "runtime": runtime,
        }, indent=2))
    else:
        print_report(verdict, certificates, verification, now, chain_path)
    if not verdict["allowed"]:
        raise FleetpinError(
            f"{verdict['host']}: the device would refuse this chain ({verdict['reason']})",
            hint=hint_for(verdict["reason"]),
        )


# --- inputs -----------------------------------------------------------------------------

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


def parse_now(text: str | None) -> int | None:
    """POSIX seconds of --now; None for 'unknown'; this machine's clock if not given."""
    if text is None:
        return int(dt.datetime.now(dt.timezone.utc).timestamp())
    if text.strip().lower() == "unknown":
        return None
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--now: not an ISO 8601 time: {text!r}", hint="e.g. --now 2026-05-01T12:00:00Z") from None
    if when.tzinfo is None:
        if len(text.strip()) > 10:  # a datetime, not a bare date: refuse to guess the zone
            raise UsageError(f"--now: no time zone in {text!r}", hint="append Z for UTC, e.g. 2026-05-01T12:00:00Z")
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp())


# --- CA validation (host side, with cryptography) -------------------------------------------


def verify_chain(ders: list[bytes], host: str, now: int | None, ca_path: Path | None,
                 bundle_cas: list[bytes] | None = None) -> Verification:
    from cryptography import x509
    from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

    try:
        certs = [x509.load_der_x509_certificate(d) for d in ders]
    except ValueError as e:
        return Verification(False, None, f"cryptography cannot parse the chain: {e}")
    leaf, rest = certs[0], certs[1:]
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
        anchors, rest = [certs[-1]], rest[:-1]
        anchor = "the chain's own root: " + certs[-1].subject.rfc4514_string()
    else:
        return Verification(False, None, "no trust anchor (pass --ca with the CA certificates your bundle ships)")

    when = dt.datetime.now(dt.timezone.utc) if now is None else dt.datetime.fromtimestamp(now, dt.timezone.utc)
    try:
        verifier = PolicyBuilder().store(Store(anchors)).time(when).build_server_verifier(
            host_name(host.lower().rstrip(".")))
        verifier.verify(leaf, rest)
    except (VerificationError, ValueError) as e:
        return Verification(False, anchor, str(e), device_cas)
    return Verification(True, anchor, None, device_cas)


def _self_signed(cert: Any) -> bool:
    if cert.subject != cert.issuer:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except Exception:  # any failure (bad signature, unsupported key) means: not a usable root
        return False
    return True


# --- the verdict, from the agent's own code ---------------------------------------------------


def verdict_on_cpython(obj: dict[str, Any], host: str, ders: list[bytes], now: int | None,
                       verified: bool) -> dict[str, Any]:
    from pinagent import pins, policy

    verdict = policy.decide(policy.Policy.from_obj(obj), host, pins.chain_digests(ders), now, verified)
    result: dict[str, Any] = verdict.to_obj()
    return result


_VM_SOURCE = """
import json
from pinagent import pins, policy
with open("/check/args.json") as f:
    args = json.load(f)
with open("/check/policy.json") as f:
    p = policy.Policy.from_obj(json.load(f))
ders = []
for i in range(args["count"]):
    with open("/check/chain/%d.der" % i, "rb") as f:
        ders.append(f.read())
v = policy.decide(p, args["host"], pins.chain_digests(ders), args["now"], args["verified"])
print("FLEETPIN-VERDICT " + json.dumps(v.to_obj()))
"""


def verdict_on_vm(obj: dict[str, Any], host: str, ders: list[bytes], now: int | None,
                  verified: bool) -> dict[str, Any]:
    from .mpvm import run_python

    files = {
        "/check/args.json": json.dumps({"host": host, "now": now, "verified": verified, "count": len(ders)}).encode(),
        "/check/policy.json": json.dumps(obj).encode(),
    }
    for i, der in enumerate(ders):
        files[f"/check/chain/{i}.der"] = der
    out = run_python(_VM_SOURCE, files=files, heap_kb=100)
    for line in out.splitlines():
        if line.startswith("FLEETPIN-VERDICT "):
            result: dict[str, Any] = json.loads(line[len("FLEETPIN-VERDICT "):])
            return result
    raise FleetpinError("the MicroPython VM printed no verdict", hint="its output was:\n" + out)


# --- output ---------------------------------------------------------------------------------


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


def _iso(seconds: int | None) -> str:
    if seconds is None:
        return "unknown"
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def print_report(verdict: dict[str, Any], certificates: list[dict[str, Any]], verification: Verification,
                 now: int | None, chain_path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:  # piped or captured: rich would assume 80 columns and cut pins
        console.width = max(console.width, 120)
    rule = verdict["rule"]
    labels = {} if rule is None else {p["pin"]: p.get("label") or "(no label)" for p in rule["pins"]}
    table = Table(title=f"{verdict['host']}: {chain_path.name}", title_justify="left")
    table.add_column("depth", justify="right")
    table.add_column("pin (sha256 of SPKI)", no_wrap=True, min_width=44)  # a cut pin is useless
    table.add_column("subject CN", overflow="fold")
    table.add_column("in policy", overflow="fold")
    for cert in certificates:
        mark = ""
        if cert["depth"] == verdict["matched_depth"]:
            mark = f"[green]✓ matched[/green] ({labels.get(cert['pin'], '')})"
        elif cert["pin"] in labels:
            counted = cert["depth"] == 0 or verdict["verified"]
            mark = labels[cert["pin"]] + ("" if counted else " [yellow](not counted: chain unverified)[/yellow]")
        table.add_row(str(cert["depth"]), cert["pin"], cert["subject_cn"] or "-", mark)
    console.print(table)

    if rule is None:
        console.print("rule:      none for this host")
    else:
        mode = "enforced" if rule["enforce"] else "report-only"
        sub = ", include_subdomains" if rule["include_subdomains"] else ""
        console.print(f"rule:      {rule['host']}{sub} ({mode}), expires {_iso(rule['expires'])}, "
                      f"on_expiry {rule['on_expiry']}")
        for pin, label in labels.items():
            console.print(f"           pin {pin}  {label}")
    if verification.verified:
        console.print(f"verified:  yes, against {verification.anchor}")
    else:
        console.print(f"verified:  no ({verification.error})")
    clock = _iso(now) + ("" if verdict["clock_trusted"] else " (untrusted)")
    console.print(f"clock:     {clock}" + (", pins expired" if verdict["expired"] else ""))
    word = "[bold green]ALLOWED[/bold green]" if verdict["allowed"] else "[bold red]BLOCKED[/bold red]"
    console.print(f"verdict:   {word} ({verdict['reason']}): {reason_text(verdict['reason'])}")

