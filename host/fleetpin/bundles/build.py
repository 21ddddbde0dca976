"""Building a signed bundle from a policy TOML file (the format: pinagent.bundle).

The policy file is the one `fleetpin check` reads ([defaults], [[domain]]: fleetpin.bundles.policy)
plus two optional tables that only bundles need:

    [bundle]
    ca_certs = ["ca/root.pem", "ca/intermediate.der"]   # the CAs the domains chain to; paths
                                                        # relative to the TOML file; PEM (one
                                                        # or more certificates) or DER
    [report]                                            # failure-report settings on the device
    enabled = true
    max_entries = 32                                    # 1..256
    max_bytes = 4096                                    # 512..16384

The file is parsed once; the policy part (the document without these two tables) is validated
by fleetpin.bundles.policy.policy_from_doc, the whole bundle by pinagent.bundle.decode_unverified
before anything is written, and each signature by the signer against its public key.

Thresholds (pinagent.signers): a bundle that changes the signer set (new_signers) must be signed
by the rotation threshold of the devices' current set, at least 2 keys, so one stolen key can
never replace the set. check_thresholds refuses, before any key is used, what devices would
refuse: with the devices' set (trust) exactly, without it the minimum (2 keys for a rotation).
A new signer set gets the device's checks for a new set (keys on the curve, no key twice).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from cryptography import x509

from fleetpin.bundles.policy import policy_from_doc, read_toml
from fleetpin.errors import FleetpinError, UsageError
from fleetpin.pki.certs import load_certificates
from fleetpin.pki.keys import PublicKeyInfo, check_signer_set
from fleetpin.pki.signing import Signer
from pinagent import bundle as dev_bundle
from pinagent import signers as dev_signers

BUNDLE_TABLES = ("bundle", "report")
BUNDLE_KEYS = ("ca_certs",)
REPORT_KEYS = ("enabled", "max_entries", "max_bytes")
_FLEET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass
class BundleSource:
    policy: dict[str, Any]
    ca_certs: list[bytes] = field(default_factory=list)  # DER, in file order, no duplicates
    report: dict[str, Any] | None = None


def canonical_json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def load_bundle_source(path: Path) -> BundleSource:
    return source_from_document(read_toml(path), path.parent, path.name)


def source_from_document(doc: dict[str, Any], base_dir: Path, name: str) -> BundleSource:
    """The bundle contents of a parsed policy document; CA certificate paths are relative to
    base_dir (the policy file's directory), errors start with `name`."""
    source = BundleSource(policy_from_doc({k: v for k, v in doc.items() if k not in BUNDLE_TABLES}, name))
    bundle_table = _table(doc, "bundle", BUNDLE_KEYS, name)
    certs = bundle_table.get("ca_certs", [])
    if not isinstance(certs, list) or not all(isinstance(c, str) for c in certs):
        raise UsageError(f"{name}: bundle.ca_certs: must be a list of file paths")
    for cert_name in certs:
        for der in load_ca_certificates(base_dir / cert_name, f"bundle.ca_certs of {name}"):
            if der not in source.ca_certs:
                source.ca_certs.append(der)
    if "report" in doc:
        source.report = _table(doc, "report", REPORT_KEYS, name)
    return source


def _table(doc: dict[str, Any], name: str, keys: tuple[str, ...], file: str) -> dict[str, Any]:
    table = doc.get(name, {})
    if not isinstance(table, dict):
        raise UsageError(f"{file}: {name}: must be a table: [{name}]")
    for key in table:
        if key not in keys:
            raise UsageError(f"{file}: {name}.{key}: unknown field", hint="allowed here: " + ", ".join(keys))
    return table


def load_ca_certificates(path: Path, what: str) -> list[bytes]:
    """DER of each CA certificate in a PEM (one or more) or DER file (fleetpin.pki.certs
    .load_certificates); refuses what is not a CA certificate."""
    out = []
    for der in load_certificates(path, what):
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            raise UsageError(f"{path}: not a PEM or DER certificate ({what})") from None
        try:
            ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            ca = False
        if not ca:
            raise UsageError(
                f"{path}: {cert.subject.rfc4514_string()} is not a CA certificate ({what})",
                hint="list the root or intermediate CAs the domains chain to, not server certificates",
            )
        out.append(der)
    return out


def payload_bytes(source: BundleSource, new_signers: dict[str, Any] | None = None) -> bytes:
    """The bundle's payload as it is signed: the policy, the report settings, a new signer set."""
    payload: dict[str, Any] = {"policy": source.policy}
    if source.report is not None:
        payload["report"] = source.report
    if new_signers is not None:
        payload["signers"] = new_signers
    return canonical_json(payload)


def largest_envelope(payload_size: int, cert_sizes: Sequence[int]) -> int:
    """The size of a bundle with this payload and these CA certificates, signed by the most keys
    a device accepts, under the largest header `bundle build` writes: the size to check against
    the device's limit before the bundle exists."""
    header = canonical_json({"format": dev_bundle.FORMAT, "fleet": "f" * 64, "version": dev_bundle.MAX_VERSION,
                             "issued": dev_bundle.MAX_TIME, "channel": dev_signers.DEVELOPMENT,
                             "key_ids": ["0" * 16] * dev_bundle.MAX_SIGS})
    signatures: int = dev_bundle.MAX_SIGS * (dev_bundle.KEY_ID_SIZE + dev_bundle.SIG_SIZE)
    return len(dev_bundle.MAGIC) + 2 + len(header) + 4 + payload_size + 1 + sum(2 + n for n in cert_sizes) + 1 + signatures


ROTATION_MIN = 2  # the least rotation threshold a signer set may state (pinagent.signers)


def check_thresholds(infos: Sequence[PublicKeyInfo], rotation: bool, trust: dev_signers.SignerSet | None) -> None:
    """FleetpinError (BundleThresholdError, as the device words it) if these signing keys cannot
    meet the threshold devices holding `trust` apply; without trust, a rotation needs 2 keys."""
    what = "a signer-set change" if rotation else "a bundle"
    if trust is None:
        if not rotation:
            return
        names = [i.name for i in infos]
        needed, whose = ROTATION_MIN, "the devices' keys (--trust SIGNERS.json checks their exact rule)"
    else:
        names, xs = [], []
        for i in infos:  # distinct keys of the set: a key and its negation count once, as on the device
            s = trust.get(i.key_id_bytes)
            if s is not None and s.point[1:33] not in xs:
                xs.append(s.point[1:33])
                names.append(s.name or i.name)
        needed = trust.rotation_threshold if rotation else trust.threshold
        whose = "the trusted keys"
    if len(names) < needed:
        raise FleetpinError(
            f"BundleThresholdError: {what} needs {needed} of {whose}, signed by {len(names)} ({', '.join(names) or 'none'})",
            hint="pass --key once per key: a signer-set change needs the everyday AND the offline backup key"
            if rotation else "sign it with more keys of the devices' signer set")


def build_bundle(
    source: BundleSource,
    *,
    fleet: str,
    version: int,
    issued: int,
    development: bool,
    signers: Sequence[Signer],
    new_signers: dict[str, Any] | None = None,
    trust: dev_signers.SignerSet | None = None,
) -> bytes:
    """The signed bundle bytes. Refuses a production key on a development bundle (and the
    reverse: devices would refuse it), a key twice, a signer-set change by fewer keys than a
    rotation threshold (trust: the devices' set, else the minimum, 2), an invalid new signer set,
    and anything the device would refuse; with trust, verifies the result as a device would."""
    channel = dev_signers.DEVELOPMENT if development else dev_signers.PRODUCTION
    if not _FLEET_RE.fullmatch(fleet):
        raise UsageError(f"--fleet {fleet!r}: use 1-64 letters, digits, '.', '_' or '-'")
    if not 1 <= version <= dev_bundle.MAX_VERSION:
        raise UsageError(f"--version {version}: must be 1..{dev_bundle.MAX_VERSION}")
    if not signers:
        raise UsageError("no signing key", hint="pass --key NAME.key.pem (or NAME.pub.json with --sign-command)")
    if len(signers) > dev_bundle.MAX_SIGS:
        raise UsageError(f"at most {dev_bundle.MAX_SIGS} signing keys")
    ids = [s.info.key_id for s in signers]
    if len(set(ids)) != len(ids):
        raise UsageError("the same signing key was given twice")
    for s in signers:
        if s.info.role != channel:
            if development:
                raise FleetpinError(
                    f"key {s.info.name} is a production key: a development bundle can never be signed with it",
                    hint="sign development bundles with a development key (fleetpin key new --role development)",
                )
            raise FleetpinError(
                f"key {s.info.name} is a development key: production devices would refuse this bundle",
                hint="sign with a production key, or build with --development",
            )
    if new_signers is not None:
        check_signer_set(new_signers, "--new-signers")
        if new_signers.get("channel") != channel:
            raise UsageError(f"--new-signers is a {new_signers.get('channel')} signer set, the bundle is {channel}")
    check_thresholds([s.info for s in signers], new_signers is not None, trust)

    header = {"format": dev_bundle.FORMAT, "fleet": fleet, "version": version, "issued": issued, "channel": channel, "key_ids": ids}
    try:
        signed = dev_bundle.encode_signed(canonical_json(header), payload_bytes(source, new_signers), source.ca_certs)
    except dev_bundle.BundleTooLarge as e:
        raise FleetpinError(f"bundle too large: {e.reason}", hint="fewer domains or CA certificates") from None
    digest = hashlib.sha256(signed).digest()
    sigs = [(s.info.key_id_bytes, s.sign_digest(digest)) for s in signers]
    try:
        data: bytes = dev_bundle.encode_bundle(signed, sigs)
        b = dev_bundle.decode_unverified(data)  # the device's own checks of everything but trust
    except dev_bundle.BundleError as e:
        raise FleetpinError(f"the device would refuse this bundle: {e.reason}", hint="fix the policy file") from None
    if trust is not None:  # and of trust, as devices holding this set check it
        try:
            env = dev_bundle.parse_envelope(data)
            ok = dev_bundle.check_signatures(env, trust, env.digest())
            rotation = b.signers is not None
            dev_bundle.check_threshold(ok, trust.rotation_threshold if rotation else trust.threshold,
                                       "a signer-set change" if rotation else "a bundle")
        except dev_bundle.BundleError as e:
            raise FleetpinError(f"devices holding --trust would refuse this bundle: {type(e).__name__}: {e.reason}",
                                hint="sign with keys of the devices' signer set") from None
    return data
