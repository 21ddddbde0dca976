"""Lint rules for pin policies and bundles: the mistakes that lock a fleet out of its servers.

Each rule has an id, a severity and a fix hint (RULES). `lint(view, chains, ...)` returns the
findings for a fleetpin.bundles.view.View; chains (what servers present now) enable the rules
that need them (FP002, FP003, FP011, FP012, FP015). FP018 to FP024 are the limits the device
enforces on a bundle (pinagent.bundle), one rule each. Severities: error = a likely outage or a
bundle that cannot work (`bundle lint` exits 1, `bundle build` refuses to sign); warning =
a risk to look at; info = worth knowing.

The public-suffix check (FP009) uses a small built-in subset of the Public Suffix List (the
TLDs and second-level registries in common use, and popular shared-hosting suffixes), not the
PSL itself, which is not bundled: a suffix missing from PUBLIC_SUFFIXES is not flagged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fleetpin.bundles.build import BundleSource, largest_envelope, payload_bytes
from fleetpin.bundles.view import (
    BUNDLE,
    ServedChain,
    View,
    days_left,
    device_chain,
    iso_date,
    label_says,
    rules_for_chain,
)
from pinagent import bundle as dev_bundle
from pinagent import der as dev_der
from pinagent import pins as dev_pins
from pinagent.policy import EXACT, Rule

ERROR = "error"
WARNING = "warning"
INFO = "info"
SEVERITIES = (ERROR, WARNING, INFO)

MAX_HORIZON_DAYS = 400
WARN_DAYS = 30


@dataclass(frozen=True)
class LintRule:
    id: str
    severity: str  # the usual severity; FP002 and FP003 are warnings on report-only domains
    title: str
    hint: str


RULES: dict[str, LintRule] = {r.id: r for r in (
    LintRule("FP001", ERROR, "an enforced domain has fewer than two pins",
             "pin a backup key kept offline too (fleetpin key new --backup-pin): with one pin, a lost or "
             "replaced key locks devices out until an update reaches them"),
    LintRule("FP002", ERROR, "no backup pin outside the served chain",
             "add the pin of a key that is NOT in the chain the server presents now (an offline backup "
             "key), so the server can move to it without an update"),
    LintRule("FP003", ERROR, "the served chain matches no pin: devices will be locked out",
             "add the pin of a key in the served chain (fleetpin pin CHAIN), or check --chain/--host"),
    LintRule("FP004", ERROR, "the pins have expired already",
             "set expires to a future date (and renew it in every bundle)"),
    LintRule("FP005", WARNING, "the expiry is beyond the maximum horizon",
             "expire pins within the horizon (--max-horizon days): expiry is what frees devices "
             "(on_expiry = fallback) if every pinned key is lost"),
    LintRule("FP006", WARNING, "the pins expire soon",
             "ship a bundle with a later expiry before then"),
    LintRule("FP007", ERROR, "a pin is malformed",
             "a pin is base64(SHA-256(SubjectPublicKeyInfo)), 44 characters: recompute it with fleetpin pin"),
    LintRule("FP008", ERROR, "a pin is listed twice in one domain",
             "remove the duplicate; if it was meant to be the backup, pin the backup key instead"),
    LintRule("FP009", ERROR, "a wildcard or include_subdomains covers a public suffix",
             "pin your own domain (api.example.co.uk), not a suffix shared with other owners"),
    LintRule("FP010", ERROR, "the bundle carries no CA certificates",
             "fetch the CA each server chains to (fleetpin bundle fetch-cas HOST:PORT -o cas.pem) and list "
             "it in [bundle] ca_certs: devices validate every chain against the bundle's CAs only "
             "(the ESP32 has no CA store)"),
    LintRule("FP011", ERROR, "the served chain does not validate against the bundle's CA certificates",
             "add the CA the chain ends at to [bundle] ca_certs (fleetpin bundle fetch-cas HOST:PORT finds it), "
             "and check the host name and dates"),
    LintRule("FP012", ERROR, "a CA pin without the CA certificate that makes it count",
             "add the CA the chain ends at to [bundle] ca_certs: pins above the leaf count only for a "
             "chain validated against the bundle's CAs"),
    LintRule("FP013", WARNING, "a pin labelled as a CA matches none of the bundle's CA certificates",
             "check the pin, and add that CA's certificate to [bundle] ca_certs if it is one"),
    LintRule("FP014", INFO, "a domain is report-only",
             "switch it to enforce = true once the reports show no mismatches"),
    LintRule("FP015", WARNING, "a served chain falls under no domain of the policy (an error with unpinned = \"block\")",
             "check the host name (--chain HOST=FILE) or add a [[domain]] for it"),
    LintRule("FP016", WARNING, "a CA certificate has expired or expires soon",
             "ship the CA's successor in [bundle] ca_certs before it expires"),
    LintRule("FP017", ERROR, "a host is not written the way devices compare it",
             "write the host in canonical form (lowercase, no trailing dot; IPv6 as RFC 5952, an IPv4-mapped "
             "address as IPv4): the policy must say exactly what devices match"),
    # The limits the device enforces on a bundle (pinagent.bundle): one rule each, so a bundle
    # that would be refused is refused here, naming the limit, before anything is signed.
    LintRule("FP018", ERROR, f"more CA certificates than a device accepts ({dev_bundle.MAX_CERTS})",
             "list only the CAs the domains chain to (their roots or the intermediates they pin), "
             f"at most {dev_bundle.MAX_CERTS}; fleetpin bundle fetch-cas shows which CA each server needs"),
    LintRule("FP019", ERROR, f"a CA certificate larger than a device accepts ({dev_bundle.MAX_CERT} bytes)",
             "use the CA's own certificate (DER), not a bundle file; a certificate this large is rare: "
             "pick another CA of the chain"),
    LintRule("FP020", ERROR, "a CA certificate the device's certificate parser refuses",
             "replace it with the CA's DER-encoded X.509 v3 certificate: the device refuses the whole bundle"),
    LintRule("FP021", ERROR, f"the policy is larger than a bundle's payload may be ({dev_bundle.MAX_PAYLOAD} bytes)",
             "split the fleet's domains, use a wildcard for many hosts of one domain, drop pin labels "
             "or report settings; a signer-set rotation (--new-signers) adds about 150 bytes a key"),
    LintRule("FP022", ERROR, f"the signed bundle would be larger than a device accepts ({dev_bundle.MAX_BUNDLE} bytes)",
             "fewer or smaller CA certificates, or fewer domains"),
    LintRule("FP023", ERROR, "report settings outside what a device accepts",
             "in [report]: enabled = true or false, max_entries "
             + "{}..{}, max_bytes {}..{}".format(*dev_bundle._REPORT_LIMITS["max_entries"],
                                                 *dev_bundle._REPORT_LIMITS["max_bytes"])),
    LintRule("FP024", WARNING, "the bundle is within 10% of a device size limit",
             "the next domain or CA certificate may not fit: trim the policy before it does (FP021, FP022)"),
)}

# What lint cannot see: limits on what `bundle build` takes from its options (the fleet id,
# 1 to 64 characters; the version; 1 to 4 signatures; the header's 1024 bytes) are checked by
# build itself, and the policy's own (host names, labels, expiry times) when it is loaded.
LIMITS_CHECKED_ELSEWHERE = (
    f"bundle build checks what it takes from its options: --fleet 1 to 64 letters, digits, '.', '_' or '-'; "
    f"--version 1..{dev_bundle.MAX_VERSION}; 1 to {dev_bundle.MAX_SIGS} --key signatures; a header of at most "
    f"{dev_bundle.MAX_HEADER} bytes. Host names, pin labels, expiry times and unknown fields are checked "
    "when a policy is loaded (exit 2, naming the field)."
)
NEAR_LIMIT = 0.9

# A subset of the Public Suffix List (https://publicsuffix.org), NOT the list itself.
PUBLIC_SUFFIXES = frozenset("""
com net org edu gov mil int info biz name pro io co me tv cc ws app dev cloud xyz online site tech
uk co.uk org.uk me.uk ltd.uk plc.uk net.uk ac.uk gov.uk nhs.uk sch.uk
de fr it es nl be ch at se no dk fi pl cz pt ie eu ru ua gr hu ro sk tr com.tr
us ca mx com.mx br com.br ar com.ar cl co.co
jp co.jp ne.jp or.jp ac.jp go.jp cn com.cn net.cn org.cn hk com.hk tw com.tw kr co.kr sg com.sg
in co.in net.in org.in au com.au net.au org.au edu.au gov.au nz co.nz org.nz za co.za
github.io gitlab.io herokuapp.com appspot.com firebaseapp.com web.app netlify.app vercel.app
pages.dev workers.dev azurewebsites.net cloudapp.net cloudfront.net amazonaws.com s3.amazonaws.com
blogspot.com fly.dev onrender.com ngrok.io ngrok-free.app duckdns.org dyndns.org no-ip.org
""".split())

_CA_WORDS = ("ca", "root", "intermediate", "issuing", "issuer")


@dataclass
class Finding:
    rule: str
    severity: str
    message: str
    domain: str | None = None  # the host pattern, for domain findings

    @property
    def hint(self) -> str:
        return RULES[self.rule].hint

    def to_obj(self) -> dict[str, Any]:
        return {"rule": self.rule, "severity": self.severity, "title": RULES[self.rule].title,
                "domain": self.domain, "message": self.message, "hint": self.hint}


def has_errors(findings: Sequence[Finding]) -> bool:
    return any(f.severity == ERROR for f in findings)


def lint(view: View, chains: Sequence[ServedChain] = (), *, now: int, max_horizon_days: int = MAX_HORIZON_DAYS,
         warn_days: int = WARN_DAYS) -> list[Finding]:
    """Every finding for the view, errors first, then by rule id (stable otherwise)."""
    out: list[Finding] = []
    for p in view.pin_problems:
        dropped = " (the domain has no valid pin left: the other checks skip it)" if p.domain_dropped else ""
        rule = "FP007" if p.kind == "malformed" else "FP008"
        out.append(Finding(rule, ERROR, f"domain[{p.domain_index}] pins[{p.pin_index}] {p.text!r}: {p.reason}{dropped}",
                           p.host))
    for r in view.rules:
        out += _domain_findings(view, r, now, max_horizon_days, warn_days)
    if not view.ca_certs:  # with or without domains: every connection is validated against them
        out.append(Finding("FP010", ERROR, f"{len(view.rules)} domains and no CA certificate: devices cannot "
                                           "validate any chain (CERT_REQUIRED)"))
    for ca in view.ca_certs:
        left = days_left(ca.not_after, now)
        if ca.not_after <= now:
            out.append(Finding("FP016", WARNING, f"CA {ca.subject} expired on {iso_date(ca.not_after)}"))
        elif left < warn_days:
            out.append(Finding("FP016", WARNING, f"CA {ca.subject} expires on {iso_date(ca.not_after)}, "
                                                 f"in {left} days"))
    out += _limit_findings(view)
    for chain in chains:
        out += _chain_findings(view, chain, now)
    order = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(out, key=lambda f: (order[f.severity], f.rule))


def _limit_findings(view: View) -> list[Finding]:
    """The device's limits on a bundle (pinagent.bundle): a bundle file that broke one would not
    even load here, so for bundles only the nearness warning can fire."""
    out: list[Finding] = []
    cas = view.ca_certs
    if len(cas) > dev_bundle.MAX_CERTS:
        out.append(Finding("FP018", ERROR, f"{len(cas)} CA certificates: a device accepts at most "
                                           f"{dev_bundle.MAX_CERTS} and refuses the whole bundle (BundleTooLarge)"))
    for i, ca in enumerate(cas):
        if len(ca.der) > dev_bundle.MAX_CERT:
            out.append(Finding("FP019", ERROR, f"CA certificate {i} ({ca.subject}) is {len(ca.der)} bytes: a device "
                                               f"accepts at most {dev_bundle.MAX_CERT} (BundleTooLarge)"))
        try:
            dev_der.spki_of_certificate(ca.der)
        except dev_der.DerError as e:
            out.append(Finding("FP020", ERROR, f"CA certificate {i} ({ca.subject}): the device's parser says: "
                                               f"{e} (BundleSchemaError)"))
    report = view.report or {}
    for key, value in report.items():
        limits = dev_bundle._REPORT_LIMITS.get(key)
        if key == "enabled" and not isinstance(value, bool):
            out.append(Finding("FP023", ERROR, f"report.enabled = {value!r}: not true or false"))
        elif limits is not None and (type(value) is not int or not limits[0] <= value <= limits[1]):
            out.append(Finding("FP023", ERROR, f"report.{key} = {value!r}: a device accepts an integer in "
                                               f"{limits[0]}..{limits[1]}"))
    if view.kind == BUNDLE and view.size is not None:
        size, payload = view.size, None
        estimate = ""
    else:
        payload = len(payload_bytes(BundleSource(view.policy_obj, [], view.report)))
        size = largest_envelope(payload, [len(ca.der) for ca in cas])
        estimate = "up to "
        if payload > dev_bundle.MAX_PAYLOAD:
            out.append(Finding("FP021", ERROR, f"the payload (policy and report settings) is {payload} bytes: a device "
                                               f"accepts at most {dev_bundle.MAX_PAYLOAD} (BundleTooLarge)"))
        if size > dev_bundle.MAX_BUNDLE:
            out.append(Finding("FP022", ERROR, f"the bundle would be {estimate}{size} bytes once signed: a device "
                                               f"accepts at most {dev_bundle.MAX_BUNDLE} (BundleTooLarge)"))
    near = []
    if payload is not None and NEAR_LIMIT * dev_bundle.MAX_PAYLOAD < payload <= dev_bundle.MAX_PAYLOAD:
        near.append(f"payload {payload} of {dev_bundle.MAX_PAYLOAD} bytes")
    if NEAR_LIMIT * dev_bundle.MAX_BUNDLE < size <= dev_bundle.MAX_BUNDLE:
        near.append(f"bundle {estimate}{size} of {dev_bundle.MAX_BUNDLE} bytes")
    if near:
        out.append(Finding("FP024", WARNING, "close to the device's limits: " + ", ".join(near)))
    return out


def _domain_findings(view: View, r: Rule, now: int, horizon: int, warn_days: int) -> list[Finding]:
    out: list[Finding] = []
    host = r.host
    written = view.written_hosts[r.index] if r.index < len(view.written_hosts) else host
    if written != host:
        out.append(Finding("FP017", ERROR, f"domain[{r.index}] host {written!r}: devices compare it as {host!r}",
                           host))
    if r.enforce and len(r.pins) < 2:
        out.append(Finding("FP001", ERROR, f"{host}: {len(r.pins)} pin, enforced", host))
    left = days_left(r.expires, now)
    if r.expires <= now:
        effect = ("devices no longer check these pins (on_expiry = fallback)" if r.on_expiry == "fallback"
                  else "devices keep enforcing pins nobody renews (on_expiry = enforce)")
        out.append(Finding("FP004", ERROR, f"{host}: expired on {iso_date(r.expires)}: {effect}", host))
    elif left > horizon:
        out.append(Finding("FP005", WARNING, f"{host}: expires on {iso_date(r.expires)}, in {left} days "
                                             f"(horizon {horizon} days)", host))
    elif left < warn_days:
        out.append(Finding("FP006", WARNING, f"{host}: expires on {iso_date(r.expires)}, in {left} days", host))
    if (r.kind != EXACT or r.include_subdomains) and r.base in PUBLIC_SUFFIXES:
        wide = "include_subdomains" if r.kind == EXACT else f"the wildcard {host!r}"
        out.append(Finding("FP009", ERROR, f"{host}: {wide} covers every name under the public suffix "
                                           f"{r.base!r}", host))
    for digest, label in zip(r.pins, r.labels):
        if label_says(label, _CA_WORDS) and view.ca_for_digest(digest) is None:
            out.append(Finding("FP013", WARNING, f"{host}: pin {dev_pins.pin_to_text(digest)} ({label!r}) is the key "
                                                 "of none of the bundle's CA certificates", host))
    if not r.enforce:
        out.append(Finding("FP014", INFO, f"{host}: report-only: mismatches are reported, not blocked", host))
    return out


def _chain_findings(view: View, chain: ServedChain, now: int) -> list[Finding]:
    matches = rules_for_chain(view.policy, chain)
    if not matches:
        names = ", ".join(chain.names()) or "(no name)"
        if view.policy.unpinned == "block":  # devices refuse hosts without a rule
            return [Finding("FP015", ERROR, f"{chain.source}: {names}: no domain of the policy covers it, and "
                                            "unpinned = \"block\": devices will refuse it")]
        return [Finding("FP015", WARNING, f"{chain.source}: {names}: no domain of the policy covers it")]
    out: list[Finding] = []
    for host, r in matches:
        dc = device_chain(chain, host, view.ca_certs, now)
        where = f"{r.host}: {chain.source}"
        soft = ERROR if r.enforce else WARNING
        if not dc.verified and view.ca_certs:
            out.append(Finding("FP011", ERROR, f"{where}: {dc.error}", r.host))
        leaf = any(depth == 0 and d in r.pins for depth, d in dc.digests)
        above = [depth for depth, d in dc.digests if depth > 0 and d in r.pins]
        if not (leaf or (dc.verified and above)):
            if above:
                out.append(Finding("FP012", ERROR, f"{where}: pins the key at depth {above[0]}, which counts only "
                                                   "when the chain validates against the bundle's CAs", r.host))
            else:
                effect = "devices will refuse it" if r.enforce else "every connection will be reported"
                out.append(Finding("FP003", soft, f"{where}: none of the {len(dc.digests)} keys of the chain is "
                                                  f"pinned: {effect}", r.host))
        served = {d for _, d in dc.digests}
        if all(p in served for p in r.pins):
            out.append(Finding("FP002", soft, f"{where}: all {len(r.pins)} pins are keys of the served chain: "
                                              "no backup", r.host))
    return out
