"""What a bundle says, as data for `bundle inspect` and the update's confirmation: its header,
its domains with days left, and who signed it (verified against a signer set)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fleetpin.bundles.view import BUNDLE, View, days_left, iso_date
from fleetpin.errors import FleetpinError, UsageError
from pinagent import bundle as dev_bundle
from pinagent import pins as dev_pins
from pinagent import policy as dev_policy
from pinagent import signers as dev_signers

_NOT_VERIFIED = "signatures not verified (pass --trust SIGNERS.json to verify them)"


def pin_text(digest: bytes) -> str:
    return "sha256/" + str(dev_pins.pin_to_text(digest))


def inspect_obj(view: View, now: int, signatures: dict[str, Any]) -> dict[str, Any]:
    """Everything `bundle inspect --json` prints."""
    header = None
    if view.header is not None:
        header = {**view.header, "issued_iso": iso_date(view.header["issued"]),
                  "digest": view.digest.hex() if view.digest else None, "size": view.size}
    return {
        "file": str(view.path),
        "kind": view.kind,
        "signatures": signatures,
        "header": header,
        "unpinned": view.policy.unpinned,
        "clock_lead": view.policy.clock_lead,
        "domains": [domain_obj(r, now) for r in view.rules],
        "ca_certs": [{"subject": ca.subject, "pin": "sha256/" + ca.pin, "sha256": ca.fingerprint,
                      "expires": iso_date(ca.not_after), "expires_at": ca.not_after,
                      "days_left": days_left(ca.not_after, now)} for ca in view.ca_certs],
        "report": view.effective_report,
        "report_defaults": view.effective_report == dev_bundle.REPORT_DEFAULTS,
        "signers": view.signers,
        "now": now,
    }


def domain_obj(r: dev_policy.Rule, now: int) -> dict[str, Any]:
    return {
        "host": r.host,
        "include_subdomains": r.include_subdomains,
        "enforce": r.enforce,
        "mode": "enforce" if r.enforce else "report-only",
        "expires": iso_date(r.expires),
        "expires_at": r.expires,
        "days_left": days_left(r.expires, now),
        "on_expiry": r.on_expiry,
        "pins": [{"pin": pin_text(d), "label": label} for d, label in zip(r.pins, r.labels)],
    }


def load_trust(path: Path) -> dev_signers.SignerSet:
    """The signer set in `path` (fleetpin key signers), for --trust and --new-signers."""
    try:
        trust: dev_signers.SignerSet = dev_signers.load_signers(path.read_bytes())
    except OSError as e:
        raise UsageError(f"--trust {path}: cannot read: {e.strerror or e}") from None
    except dev_signers.SignerSetError as e:
        raise UsageError(f"--trust {path}: {e.reason}", hint="pass a signer set made by `fleetpin key signers`") from None
    return trust


def check_signatures(view: View, trust_path: Path | None) -> dict[str, Any]:
    """{"verified": False, "status": ...} without --trust; verified, or FleetpinError, with it."""
    if trust_path is None:
        return {"verified": False, "status": _NOT_VERIFIED if view.kind == BUNDLE else "a policy file: not signed",
                "signed_by": []}
    if view.kind != BUNDLE or view.data is None:
        raise UsageError(f"--trust: {view.path} is a policy file, not a signed bundle")
    trust = load_trust(trust_path)
    env = dev_bundle.parse_envelope(view.data)
    try:
        dev_bundle.check_signatures(env, trust, env.digest())
    except dev_bundle.BundleSignatureError as e:
        raise FleetpinError(f"{view.path}: signatures do not verify: {e.reason}",
                            hint="check --trust is the signer set the devices hold") from None
    names = {s["id"]: s.get("name", "") for s in trust.to_obj()["signers"]}
    signed = [{"key_id": k, "name": names[k]} for k in view.header["key_ids"] if k in names] if view.header else []
    return {"verified": True, "status": "signatures verified with " + str(trust_path), "signed_by": signed}
