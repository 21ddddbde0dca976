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


def load_trust(path: Path, option: str = "--trust", check_keys: bool = False) -> dev_signers.SignerSet:
    """The signer set in `path` (fleetpin key signers), for --trust (the set devices hold: loaded
    as they load it) and --new-signers (check_keys: checked as a device checks a new set)."""
    try:
        trust: dev_signers.SignerSet = dev_signers.load_signers(path.read_bytes(), check_keys)
    except OSError as e:
        raise UsageError(f"{option} {path}: cannot read: {e.strerror or e}") from None
    except dev_signers.SignerSetError as e:
        name = type(e).__name__
        text = e.reason if name == "SignerSetError" else f"{name}: {e.reason}"
        raise UsageError(f"{option} {path}: {text}", hint="pass a signer set made by `fleetpin key signers`") from None
    return trust


def needs_obj(threshold: int, rotation_threshold: int, rotation: bool) -> dict[str, Any]:
    """How many trusted keys a bundle needs (pinagent.bundle's thresholds): a bundle that carries
    a new signer set needs the set's rotation threshold, any other its threshold."""
    return {"keys": rotation_threshold if rotation else threshold, "why": "a signer-set change" if rotation else "a bundle",
            "threshold": threshold, "rotation_threshold": rotation_threshold}


def signed_by(key_ids: list[str], trust: dev_signers.SignerSet) -> list[dict[str, Any]]:
    """The bundle's signing key ids that `trust` holds, with their names, in signature order."""
    names = {s.key_id.hex(): s.name or "" for s in trust.signers}
    return [{"key_id": k, "name": names[k]} for k in key_ids if k in names]


def signers_text(signed: list[dict[str, Any]]) -> str:
    return ", ".join(f"{s['name'] or '(unnamed)'} ({s['key_id']})" for s in signed) or "none of them"


def check_signatures(view: View, trust_path: Path | None) -> dict[str, Any]:
    """{"verified": False, "status": ...} without --trust; with it, verified (signatures and the
    threshold, as a device checks them), or FleetpinError naming the failed check."""
    rotation = view.signers is not None
    if trust_path is None:
        status = _NOT_VERIFIED if view.kind == BUNDLE else "a policy file: not signed"
        if view.kind == BUNDLE and rotation:
            status += "; it changes the signer set: devices need their set's rotation threshold (at least 2 keys)"
        return {"verified": False, "status": status, "signed_by": [], "needs": None}
    if view.kind != BUNDLE or view.data is None:
        raise UsageError(f"--trust: {view.path} is a policy file, not a signed bundle")
    trust = load_trust(trust_path)
    env = dev_bundle.parse_envelope(view.data)
    needs = needs_obj(trust.threshold, trust.rotation_threshold, rotation)
    try:
        signed = dev_bundle.check_signatures(env, trust, env.digest())
        dev_bundle.check_threshold(signed, needs["keys"], needs["why"])
    except dev_bundle.BundleThresholdError as e:
        raise FleetpinError(f"{view.path}: too few trusted signatures: BundleThresholdError: {e.reason}",
                            hint="sign it with more keys of the devices' signer set") from None
    except dev_bundle.BundleSignatureError as e:
        raise FleetpinError(f"{view.path}: signatures do not verify: BundleSignatureError: {e.reason}",
                            hint="check --trust is the signer set the devices hold") from None
    by = signed_by(view.header["key_ids"], trust) if view.header else []
    return {"verified": True, "status": f"signatures verified with {trust_path}: {len(signed)} of its "
            f"{len(trust.signers)} keys signed, {needs['why']} needs {needs['keys']}", "signed_by": by, "needs": needs}
