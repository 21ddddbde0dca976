"""`fleetpin check`: would a device with this policy accept this certificate chain?

The verdict comes from the device's own code (pinagent.der, pins, policy), run here under
CPython or on the MicroPython VM, so what this command says is what the agent decides.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from fleetpin import output
from fleetpin.bundles.build import load_bundle_source
from fleetpin.bundles.chains import (
    Verification,
    describe_chain,
    load_chain,
    verdict_on_cpython,
    verdict_on_runtime,
    verify_chain,
)
from fleetpin.bundles.verdicts import hint_for, reason_text
from fleetpin.errors import FleetpinError
from fleetpin.times import iso8601, parse_now
from pinagent.connect import TLS_FAILED

RUNTIMES = ("device", "micropython", "wasm")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--policy", "policy_path", required=True, metavar="POLICY.toml",
              type=click.Path(dir_okay=False, path_type=Path), help="The pin policy (see examples/policy.toml).")
@click.option("--host", required=True, help="The server name the device connects to (its server_hostname).")
@click.argument("chain_path", metavar="CHAIN", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--now", "now_text", metavar="ISO8601|@SECONDS|unknown",
              help="The device's clock, e.g. 2026-05-01T12:00:00Z or @1777636800 (default: this machine's clock), taken as "
              "authenticated time (on a device only a signed bundle or a pinned server can prove that pins "
              "expired); 'unknown' = a device whose clock was never set.")
@click.option("--ca", "ca_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Trust anchors (PEM/DER) to verify the chain against: the CA certificates your bundle ships.")
@click.option("--unverified", is_flag=True,
              help="Treat the chain as not CA-verified (a device without CERT_REQUIRED): only leaf pins count.")
@click.option("--runtime", type=click.Choice(RUNTIMES), default="device", show_default=True,
              help="Run the agent's code under CPython ('device'), on real MicroPython 1.29 (the unix port, "
                   "an ESP32-sized heap) or on the MicroPython 1.27 WebAssembly VM ('wasm').")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
def check(policy_path: Path, host: str, chain_path: Path, now_text: str | None, ca_path: Path | None,
          unverified: bool, runtime: str, as_json: bool) -> None:
    """Check a certificate CHAIN (PEM with one or more certificates, leaf first, or DER) for
    HOST against a pin policy, exactly as the device agent would decide.

    Like the device, the pins are matched against the chain validation BUILDS from CHAIN up to
    an anchor (the one mbedTLS hands the verify callback): a CA certificate the server does not
    send but the anchors hold is on it, a certificate the server sends off the signing path is
    not. An unverified chain is matched as sent (only its leaf can count).

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
    # The device pins the chain it built from the anchors, not the certificates as sent.
    seen = verification.device_chain(ders)
    if runtime == "device":
        verdict = verdict_on_cpython(obj, host, seen, now, verification.verified)
    else:
        verdict = verdict_on_runtime(runtime, obj, host, seen, now, verification.verified)
    if verification.from_device_cas and not verification.verified:
        # The device validates under CERT_REQUIRED against exactly these CAs: a chain that fails
        # never reaches the pin check there, whatever the pins say.
        verdict = {**verdict, "allowed": False, "reason": TLS_FAILED, "pin_verdict": verdict["reason"]}
    certificates = describe_chain(seen)
    for cert, der in zip(certificates, seen):
        cert["sent"] = der in ders
    off_path = [c for c, der in zip(describe_chain(ders), ders) if der not in seen]

    if as_json:
        click.echo(json.dumps({
            "verdict": verdict,
            "certificates": certificates,
            "not_on_path": off_path,
            "verification": {"verified": verification.verified, "anchor": verification.anchor,
                             "error": verification.error},
            "now": now,
            "runtime": runtime,
        }, indent=2))
    else:
        print_report(verdict, certificates, off_path, verification, now, chain_path)
    if not verdict["allowed"]:
        raise FleetpinError(
            f"{verdict['host']}: the device would refuse this chain ({verdict['reason']})",
            hint=hint_for(verdict["reason"]),
        )


# --- inputs -----------------------------------------------------------------------------


# --- CA validation (host side, with cryptography) -------------------------------------------


# --- the verdict, from the agent's own code ---------------------------------------------------


# --- output ---------------------------------------------------------------------------------


def _iso(seconds: int | None) -> str:
    return iso8601(seconds) or "unknown"


def print_report(verdict: dict[str, Any], certificates: list[dict[str, Any]], off_path: list[dict[str, Any]],
                 verification: Verification, now: int | None, chain_path: Path) -> None:
    console = output.console()
    rule = verdict["rule"]
    labels = {} if rule is None else {p["pin"]: p.get("label") or "(no label)" for p in rule["pins"]}
    table = output.Table("depth", "pin (sha256 of SPKI)", "subject CN", "in policy",
                         title=f"{verdict['host']}: {chain_path.name}", right=("depth",))
    for cert in certificates:
        mark = output.assemble()
        if cert["depth"] == verdict["matched_depth"]:
            mark = output.assemble(("✓ matched", "green"), f" ({labels.get(cert['pin'], '')})")
        elif cert["pin"] in labels:
            counted = cert["depth"] == 0 or verdict["verified"]
            mark = output.assemble(labels[cert["pin"]], ("" if counted else (" (not counted: chain unverified)", "yellow")))
        if not cert["sent"]:
            mark = output.assemble(mark, (" (the anchor: not sent)" if mark.plain else "(the anchor: not sent)", "dim"))
        table.add(str(cert["depth"]), cert["pin"], cert["subject_cn"] or "-", mark)
    table.print(console)

    def say(*parts: str | tuple[str, str]) -> None:
        console.print(output.assemble(*parts))

    for cert in off_path:
        pinned = cert["pin"] in labels
        say(f"not on the verified path (the device ignores it): {cert['subject_cn'] or '-'} {cert['pin']}",
            (" (pinned, but never seen by the device)", "yellow") if pinned else "")

    if rule is None:
        say("rule:      none for this host")
    else:
        mode = "enforced" if rule["enforce"] else "report-only"
        sub = ", include_subdomains" if rule["include_subdomains"] else ""
        say(f"rule:      {rule['host']}{sub} ({mode}), expires {_iso(rule['expires'])}, on_expiry {rule['on_expiry']}")
        for pin, label in labels.items():
            say(f"           pin {pin}  {label}")
    if verification.verified:
        say(f"verified:  yes, against {verification.anchor}")
    else:
        say(f"verified:  no ({verification.error})")
    clock = _iso(now) + ("" if verdict["clock_trusted"] else " (untrusted)")
    say(f"clock:     {clock}" + (", pins expired" if verdict["expired"] else ""))
    word = ("ALLOWED", "bold green") if verdict["allowed"] else ("BLOCKED", "bold red")
    say("verdict:   ", word, f" ({verdict['reason']}): {reason_text(verdict['reason'])}")
