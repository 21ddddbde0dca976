"""One in-memory view of a pin policy, whether it comes from a policy TOML file or a bundle file,
for the commands that look at one without installing it (`bundle inspect`, `diff`, `lint`);
and how a device holding that view sees a server's chain.

A bundle is decoded by the device's own decoder (pinagent.bundle.decode_unverified: every
check but trust); a policy file by the same code `bundle build` uses
(fleetpin.bundles.build.source_from_document), so the view is what a bundle built from it
would hold. `lenient=True` (for lint) first takes malformed and duplicate pins out of a
policy file and records them as `pin_problems`, so lint can report them with the rest
instead of stopping at the first.

Served chains: a device validates every chain against its bundle's CA certificates only
(CERT_REQUIRED; the ESP32 has no CA store of its own), and mbedTLS hands the verify callback
the chain it built, anchor included. `verified_path` reproduces that with cryptography's
verifier (`device_chain` for a view's CAs; `fleetpin check` through bundles.chains), so pins
are matched on the chain the device sees, at the depths it sees them: check, lint, diff and
preflight decide on the same chain as the device.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleetpin.bundles.build import BundleSource, source_from_document
from fleetpin.bundles.policy import policy_from_doc, read_toml
from fleetpin.errors import UsageError
from fleetpin.pki.certs import host_name, raw_spki_of_tbs, read_input
from fleetpin.times import iso8601
from pinagent import bundle as dev_bundle
from pinagent import pins as dev_pins
from pinagent.policy import Policy, Rule, canonical_host, normalise_host
from pinagent.policy_load import policy_from_obj

BUNDLE = "bundle"
POLICY = "policy"


@dataclass(frozen=True)
class CaCert:
    der: bytes
    subject: str
    digest: bytes  # SHA-256 of the raw SPKI: what a pin of this CA's key is
    not_after: int  # POSIX seconds
    cert: x509.Certificate = field(repr=False, compare=False)

    @property
    def pin(self) -> str:
        return base64.b64encode(self.digest).decode()

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.der).hexdigest()


@dataclass(frozen=True)
class PinProblem:
    """A pin lenient loading took out of a policy file: malformed, or a duplicate."""

    domain_index: int
    host: str
    pin_index: int
    text: str
    kind: str  # "malformed" | "duplicate"
    reason: str
    domain_dropped: bool  # no valid pin was left: the domain is not in the view


@dataclass
class View:
    path: Path
    kind: str  # BUNDLE or POLICY
    policy_obj: dict[str, Any]
    policy: Policy
    ca_certs: list[CaCert]
    report: dict[str, Any] | None  # the settings given; None = the device's defaults
    header: dict[str, Any] | None = None  # bundles: format, fleet, version, issued, channel, key_ids
    digest: bytes | None = None  # bundles: SHA-256 of the signed bytes
    size: int | None = None
    signers: dict[str, Any] | None = None  # a signer set the bundle installs (key rotation)
    data: bytes | None = None  # bundles: the file
    pin_problems: list[PinProblem] = field(default_factory=list)
    written_hosts: list[str] = field(default_factory=list)  # each domain's host as the file spells it

    @property
    def rules(self) -> list[Rule]:
        rules: list[Rule] = self.policy.rules
        return rules

    @property
    def effective_report(self) -> dict[str, Any]:
        return {**dev_bundle.REPORT_DEFAULTS, **(self.report or {})}

    def ca_for_digest(self, digest: bytes) -> CaCert | None:
        for ca in self.ca_certs:
            if ca.digest == digest:
                return ca
        return None


def ca_cert(der: bytes) -> CaCert:
    cert = x509.load_der_x509_certificate(der)
    spki = raw_spki_of_tbs(cert.tbs_certificate_bytes)
    return CaCert(der, cert.subject.rfc4514_string() or "(empty subject)", hashlib.sha256(spki).digest(),
                  int(cert.not_valid_after_utc.timestamp()), cert)


def load_view(path: Path, lenient: bool = False) -> View:
    """The view of a bundle (by its FPB1 magic) or a policy TOML file; UsageError (exit 2) if
    it is neither, or is refused by the device's checks."""
    data = read_input(path, hint="pass a policy .toml or a bundle file")
    if data[:4] == dev_bundle.MAGIC:
        return _bundle_view(path, data)
    return _policy_view(path, lenient)


def load_policy_obj(path: Path) -> dict[str, Any]:
    """Only the device policy of a bundle (signature NOT checked) or of a policy TOML file,
    whose [bundle] and [report] tables are ignored (their CA files need not exist): what the
    mobile exports need."""
    data = read_input(path, hint="pass a policy .toml or a bundle file")
    if data[:4] == dev_bundle.MAGIC:
        return _bundle_view(path, data).policy_obj
    doc = read_toml(path)
    return policy_from_doc({k: v for k, v in doc.items() if k not in ("bundle", "report")}, path.name)


def bundle_view(data: bytes, name: str) -> View:
    """The view of a bundle's bytes (a file's, or a device's installed bundle), named `name`."""
    return _bundle_view(Path(name), data)


def empty_view(name: str) -> View:
    """No bundle at all (a device in the safe state): no domains, no CA certificates."""
    return View(path=Path(name), kind=BUNDLE, policy_obj={"domains": [], "unpinned": "ca"},
                policy=policy_from_obj({"domains": []}), ca_certs=[], report=None)


def _bundle_view(path: Path, data: bytes) -> View:
    try:
        b = dev_bundle.decode_unverified(data)
    except dev_bundle.BundleError as e:
        raise UsageError(f"{path}: not a bundle a device would read: {type(e).__name__}: {e.reason}",
                         hint="rebuild it with `fleetpin bundle build`") from None
    header = {"format": b.format, "fleet": b.fleet, "version": b.version, "issued": b.issued,
              "channel": b.channel, "key_ids": [k.hex() for k in b.key_ids]}
    policy_obj: dict[str, Any] = {"domains": [r.to_obj() for r in b.policy.rules], "unpinned": b.policy.unpinned}
    if b.policy.clock_lead:
        policy_obj["clock_lead"] = b.policy.clock_lead
    return View(
        path=path, kind=BUNDLE, policy_obj=policy_obj,
        policy=b.policy, ca_certs=[ca_cert(bytes(c)) for c in b.ca_certs], report=dict(b.report), header=header,
        digest=b.digest, size=b.size, signers=None if b.signers is None else b.signers.to_obj(), data=data,
        written_hosts=_signed_hosts(data),
    )


def _signed_hosts(data: bytes) -> list[str]:
    """The domains' hosts as the bundle's signed policy spells them (devices canonicalise them)."""
    payload = json.loads(bytes(dev_bundle.parse_envelope(data).payload))
    return [str(d["host"]) for d in payload["policy"]["domains"]]


def _policy_view(path: Path, lenient: bool) -> View:
    doc = read_toml(path)
    problems: list[PinProblem] = []
    if lenient:
        doc, problems = _take_out_bad_pins(doc)
    return view_of_source(path, source_from_document(doc, path.parent, path.name), problems)


def view_of_source(path: Path, source: BundleSource, pin_problems: list[PinProblem] | None = None) -> View:
    """The view of what `bundle build` would put in a bundle from a policy file."""
    return View(path=path, kind=POLICY, policy_obj=source.policy, policy=policy_from_obj(source.policy),
                ca_certs=[ca_cert(d) for d in source.ca_certs], report=source.report,
                pin_problems=pin_problems or [], written_hosts=[str(d["host"]) for d in source.policy["domains"]])


def _take_out_bad_pins(doc: dict[str, Any]) -> tuple[dict[str, Any], list[PinProblem]]:
    """The document without malformed or duplicate pins (and without domains left with none)."""
    domains = doc.get("domain")
    if not isinstance(domains, list):
        return doc, []
    problems: list[PinProblem] = []
    kept_domains: list[Any] = []
    for i, domain in enumerate(domains):
        if not isinstance(domain, dict) or not isinstance(domain.get("pins"), list):
            kept_domains.append(domain)
            continue
        host = str(domain.get("host", f"domain[{i}]"))
        found: list[PinProblem] = []
        kept: list[Any] = []
        seen: dict[bytes, int] = {}
        for j, entry in enumerate(domain["pins"]):
            text = entry.get("pin") if isinstance(entry, dict) else entry
            if not isinstance(text, str):
                kept.append(entry)  # not a pin at all: the schema check names it
                continue
            try:
                digest = dev_pins.parse_pin(text)
            except dev_pins.PinError as e:
                found.append(PinProblem(i, host, j, text, "malformed", e.reason, False))
                continue
            if digest in seen:
                found.append(PinProblem(i, host, j, text, "duplicate", f"same key as pins[{seen[digest]}]", False))
                continue
            seen[digest] = j
            kept.append(entry)
        if found and not kept:
            found = [PinProblem(p.domain_index, p.host, p.pin_index, p.text, p.kind, p.reason, True) for p in found]
        problems += found
        if kept:
            kept_domains.append({**domain, "pins": kept})
    return {**doc, "domain": kept_domains}, problems


# --- served chains, as a device holding the view sees them ----------------------------------


@dataclass
class ServedChain:
    """A chain a server presents: from a file (`--chain FILE`, `--chain HOST=FILE`) or a live
    server (`--host`). `host` is the name the device connects to, when known."""

    source: str
    ders: list[bytes]
    host: str | None = None

    def names(self) -> list[str]:
        """Host names to look rules up for: the given host, else the leaf's SAN (or its CN)."""
        if self.host:
            return [host_key(self.host)]
        leaf = x509.load_der_x509_certificate(self.ders[0])
        names: list[str] = []
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names += [str(n) for n in san.get_values_for_type(x509.DNSName)]
            names += [str(a) for a in san.get_values_for_type(x509.IPAddress)]
        except x509.ExtensionNotFound:
            pass
        if not names:
            names += [str(a.value) for a in leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
        return [host_key(n) for n in names]


def host_key(name: str) -> str:
    """The spelling rules are looked up under: the device's canonical form (pinagent.policy.
    canonical_host), or, for a name that has none (a certificate's "*.x.com"), lowercased."""
    return canonical_host(name) or normalise_host(name)


def probe_name(name: str) -> str:
    """A concrete host name for a certificate name: "*.x.com" -> "wildcard-probe.x.com"."""
    return "wildcard-probe" + name[1:] if name.startswith("*.") else name


def rules_for_chain(policy: Policy, chain: ServedChain) -> list[tuple[str, Rule]]:
    """(host name, rule) for each distinct rule the chain's names fall under."""
    out: list[tuple[str, Rule]] = []
    for name in chain.names():
        host = probe_name(name)
        rule = policy.rule_for(host)
        if rule is not None and all(r is not rule for _, r in out):
            out.append((host, rule))
    return out


@dataclass
class DeviceChain:
    """What the agent's verify callback would see: (depth, SPKI digest) leaf first, and whether
    the chain validated against the bundle's CA certificates (only then do pins above the leaf
    count). `anchor` is the bundle CA it validated to; `error` why it did not."""

    digests: list[tuple[int, bytes]]
    verified: bool
    anchor: CaCert | None
    error: str | None


def verified_path(ders: list[bytes], host: str, anchors: list[x509.Certificate],
                  when: dt.datetime) -> tuple[list[bytes] | None, str | None]:
    """(the chain a device pins, leaf first, as DER; None) if `ders` (what the server sends, leaf
    first) validates for `host` at `when` against `anchors`, else (None, why not).

    The one place the host builds the device's chain: mbedTLS builds a path from the leaf
    through the certificates sent up to a trusted one (ending at the first it reaches, an
    intermediate the bundle carries included) and calls the verify callback on that path, top
    first. So a root the server does not send is on it, and a certificate the server sends that
    is not on the signing path is not: pins are matched against this path, never the chain as
    sent (cryptography's verifier returns the path it built, and ends it the same way)."""
    from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

    try:
        certs = [x509.load_der_x509_certificate(d) for d in ders]
        verifier = PolicyBuilder().store(Store(anchors)).time(when).build_server_verifier(host_name(host))
        built = verifier.verify(certs[0], certs[1:])
    except (VerificationError, ValueError) as e:
        return None, str(e)
    return [c.public_bytes(serialization.Encoding.DER) for c in built], None


def device_chain(chain: ServedChain, host: str, ca_certs: list[CaCert], now: int) -> DeviceChain:
    presented = [_spki_digest(d) for d in chain.ders]
    unverified = DeviceChain(list(enumerate(presented)), False, None, None)
    if not ca_certs:
        unverified.error = "the bundle carries no CA certificates"
        return unverified
    ders, error = verified_path(chain.ders, host, [c.cert for c in ca_certs],
                                dt.datetime.fromtimestamp(now, dt.timezone.utc))
    if ders is None:
        unverified.error = error
        return unverified
    anchor = next((ca for ca in ca_certs if ca.der == ders[-1]), None)
    return DeviceChain([(i, _spki_digest(d)) for i, d in enumerate(ders)], True, anchor, None)


def _spki_digest(der: bytes) -> bytes:
    return hashlib.sha256(raw_spki_of_tbs(x509.load_der_x509_certificate(der).tbs_certificate_bytes)).digest()


def iso_date(ts: int) -> str:
    return iso8601(ts) or ""


def days_left(ts: int, now: int) -> int:
    """Whole days from now to ts (negative once past)."""
    return (ts - now) // 86400


def label_says(label: str | None, words: tuple[str, ...]) -> bool:
    """Whether a pin's label contains one of `words` as a word ("backup-key" says "backup"):
    what people meant a pin to be, to check against what it is."""
    if not label:
        return False
    return any(w in words for w in label.lower().replace("-", " ").replace("_", " ").split())
