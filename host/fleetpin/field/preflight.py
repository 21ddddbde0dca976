"""Preflight: what devices holding a bundle would conclude about the servers as they are now.

For every domain of a bundle (or policy file), connect to its live server(s), take the chain
they present, and decide exactly as a device would:

1. CA validation against the bundle's CA certificates ONLY (the ESP32 has no CA store; it runs
   CERT_REQUIRED against the bundle's CAs). A chain that fails it is refused in the handshake,
   whatever the pins say: devices are locked out.
2. The pin verdict from pinagent.policy.decide, the device's own code, on the chain mbedTLS
   would hand the verify callback (fleetpin.bundles.view.device_chain: the built chain, anchor
   included, so CA pins match at the depth the device sees).

and report around it what lets a fleet survive the next change: which pin matched at which
depth, whether the pins meant as backups are really outside the served chain, expiry headroom
of the pins and certificates.

Chains are fetched WITHOUT validation (`openssl s_client` minus -verify_return_error): a chain
that fails validation must still be seen, to say why. Validation is done here, at `now`, which
also lets `--now` ask "will devices still connect on that date?".

Exact-host domains are checked on port 443 by default; a --host target for the same name
replaces that default. Wildcard domains have no name to connect to: they need a --host.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from fleetpin.bundles.verdicts import reason_text
from fleetpin.bundles.view import (
    BUNDLE,
    CaCert,
    ServedChain,
    View,
    days_left,
    device_chain,
    host_key,
    iso_date,
    label_says,
)
from fleetpin.errors import FleetpinError
from fleetpin.pki import certs
from fleetpin.pki.certs import HostTarget
from pinagent import pins as dev_pins
from pinagent import policy as dev_policy
from pinagent.policy import Rule

WARN_DAYS = 30
ERROR = "error"
WARNING = "warning"

# Server status, worst first. Exit code 1 for the first three.
LOCKOUT = "lockout"  # devices would refuse the server
UNREACHABLE = "unreachable"  # no TLS handshake from here: nothing could be checked
FAILED = "error"  # devices connect today, but the bundle is wrong in a way that must be fixed
WARN = "warning"
OK = "ok"
FAILING_STATUSES = (LOCKOUT, UNREACHABLE, FAILED)

_BACKUP_WORDS = ("backup", "spare", "standby", "next", "offline")

@dataclass(frozen=True)
class Server:
    """One server to check: a target and the rule its name falls under (None: no rule)."""

    target: HostTarget
    rule: Rule | None
    given: bool  # from --host (else the default HOST:443 of an exact domain)


@dataclass(frozen=True)
class NotChecked:
    domain: str
    reason: str


@dataclass
class Problem:
    severity: str  # ERROR or WARNING
    message: str


@dataclass
class PinStatus:
    pin: bytes
    label: str | None
    depths: list[int]  # where the key is in the chain the device sees
    matched: bool

    @property
    def role(self) -> str:
        return "matched" if self.matched else "in chain" if self.depths else "backup"


@dataclass
class ChainCert:
    depth: int
    digest: bytes
    subject: str
    not_after: int | None  # None: a certificate neither sent nor in the bundle (cannot happen)
    sent: bool  # sent by the server (else: the bundle's CA certificate the chain was built to)


@dataclass
class ServerResult:
    server: Server
    now: int
    fetch_error: str | None = None  # set: the server could not be reached; nothing else is
    chain: list[ChainCert] = field(default_factory=list)
    verified: bool = False
    anchor: CaCert | None = None
    ca_error: str | None = None
    verdict: Any = None  # pinagent.policy.Verdict
    pins: list[PinStatus] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def would_connect(self) -> bool | None:
        """What a device would do: None if the server could not be reached from here."""
        if self.fetch_error is not None:
            return None
        return self.verified and bool(self.verdict.allowed)

    @property
    def status(self) -> str:
        if self.fetch_error is not None:
            return UNREACHABLE
        if not self.would_connect:
            return LOCKOUT
        if any(p.severity == ERROR for p in self.problems):
            return FAILED
        return WARN if self.problems else OK

    @property
    def lockout_reason(self) -> str | None:
        if self.would_connect is not False:
            return None
        if not self.verified:
            return f"the chain does not validate against the bundle's CA certificates: {self.ca_error}"
        return f"{self.verdict.reason}: {reason_text(self.verdict.reason)}"

    def to_obj(self) -> dict[str, Any]:
        rule = self.server.rule
        t = self.server.target
        obj: dict[str, Any] = {
            "domain": rule.host if rule else None,
            "host": t.host, "port": t.port, "address": t.connect,
            "source": "--host" if self.server.given else "default",
            "status": self.status,
            "would_connect": self.would_connect,
            "lockout_reason": self.lockout_reason,
            "fetch_error": self.fetch_error,
            "problems": [{"severity": p.severity, "message": p.message} for p in self.problems],
        }
        if rule is not None:
            obj["rule"] = {"enforce": rule.enforce, "on_expiry": rule.on_expiry, "expires": iso_date(rule.expires),
                           "expires_at": rule.expires, "days_left": days_left(rule.expires, self.now)}
        if self.fetch_error is not None:
            return obj
        v = self.verdict
        obj["ca_validation"] = {"verified": self.verified, "error": self.ca_error,
                                "anchor": _name(self.anchor.cert) if self.anchor else None}
        obj["verdict"] = {
            "allowed": bool(v.allowed), "reason": v.reason, "explain": reason_text(v.reason),
            "matched_pin": _text(v.matched_pin) if v.matched_pin is not None else None,
            "matched_label": rule.label_of(v.matched_pin) if rule is not None and v.matched_pin is not None else None,
            "matched_depth": v.matched_depth, "expired": v.expired, "clock_trusted": v.clock_trusted,
        }
        obj["chain"] = [{"depth": c.depth, "pin": _text(c.digest), "subject": c.subject, "sent": c.sent,
                         "expires": iso_date(c.not_after) if c.not_after is not None else None,
                         "days_left": days_left(c.not_after, self.now) if c.not_after is not None else None}
                        for c in self.chain]
        obj["pins"] = [{"pin": _text(p.pin), "label": p.label, "role": p.role, "depths": p.depths}
                       for p in self.pins]
        return obj


@dataclass
class Report:
    source: str
    now: int
    results: list[ServerResult]
    not_checked: list[NotChecked]

    @property
    def lockouts(self) -> int:
        return sum(1 for r in self.results if r.status == LOCKOUT)

    @property
    def failed(self) -> bool:
        return any(r.status in FAILING_STATUSES for r in self.results)

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    def hint(self) -> str:
        """What to do next, for the worst problem found."""
        if self.lockouts:
            return ("fix the server (chain, key) or the bundle (pins, CA certificates) before pushing the bundle "
                    "or rotating the key: see the verdicts above")
        if self.count(UNREACHABLE):
            return ("check the server is up, or point --host NAME:PORT@ADDRESS at one reachable from here; "
                    "an unchecked server is not a passed check")
        return "fix the errors above in the bundle before pushing it"

    def summary(self) -> str:
        checked = len(self.results) - self.count(UNREACHABLE)
        line = f"{checked} server{'' if checked == 1 else 's'} checked, {self.lockouts} would lock devices out"
        extra = [f"{n} {what}" for n, what in ((self.count(FAILED), "with errors"),
                                                (self.count(UNREACHABLE), "unreachable"),
                                                (len(self.not_checked), "not checked (wildcard domains)")) if n]
        return line + (" (" + ", ".join(extra) + ")" if extra else "")

    def to_obj(self) -> dict[str, Any]:
        return {
            "source": self.source, "now": self.now, "now_iso": iso_date(self.now),
            "ok": not self.failed,
            "servers": [r.to_obj() for r in self.results],
            "not_checked": [{"domain": n.domain, "reason": n.reason} for n in self.not_checked],
            "summary": {"servers": len(self.results), "checked": len(self.results) - self.count(UNREACHABLE),
                        "lockouts": self.lockouts, "errors": self.count(FAILED),
                        "unreachable": self.count(UNREACHABLE), "not_checked": len(self.not_checked),
                        "line": self.summary()},
        }


def _text(digest: bytes) -> str:
    return "sha256/" + str(dev_pins.pin_to_text(digest))


# --- which servers ------------------------------------------------------------------------------


def plan(view: View, targets: Sequence[HostTarget]) -> tuple[list[Server], list[NotChecked]]:
    """The servers to check, in domain order, then the --host targets no rule covers; and the
    domains nothing can be checked for (wildcards without a --host)."""
    policy = view.policy
    given: dict[int, list[Server]] = {}  # id(rule) -> servers
    uncovered: list[Server] = []
    for t in targets:
        rule = policy.rule_for(host_key(t.host))
        server = Server(t, rule, True)
        if rule is None:
            uncovered.append(server)
        else:
            given.setdefault(id(rule), []).append(server)
    servers: list[Server] = []
    not_checked: list[NotChecked] = []
    for rule in view.rules:
        mine = given.get(id(rule), [])
        if rule.kind == dev_policy.EXACT:
            # HOST:443 unless a --host names HOST itself (a subdomain under include_subdomains
            # does not replace it: both are checked).
            if not any(host_key(s.target.host) == rule.host for s in mine):
                servers.append(Server(HostTarget(rule.host, 443, rule.host), rule, False))
        elif not mine:
            not_checked.append(NotChecked(rule.host, f"not checked: give --host x.{rule.base} (a name the "
                                                     "wildcard covers, [:PORT][@ADDRESS] as needed)"))
        servers += mine
    return servers + uncovered, not_checked


# --- fetching a chain without validating it ---------------------------------------------------

Fetcher = Callable[[HostTarget, float], list[bytes]]


def fetch_served_chain(target: HostTarget, timeout: float) -> list[bytes]:
    """The chain `target` presents, as sent, NOT validated: a chain that fails validation
    still has to be looked at. certs.FetchError if there is no handshake."""
    return certs.fetch_chain(target, timeout=timeout, verify=False)


# --- checking one server ----------------------------------------------------------------------


def check_server(view: View, server: Server, ders: list[bytes], now: int) -> ServerResult:
    """The device's view of the chain `server` presented, and what to warn about."""
    result = ServerResult(server, now)
    host = host_key(server.target.host)
    dc = device_chain(ServedChain(str(server.target), ders, host), host, view.ca_certs, now)
    result.verified, result.anchor, result.ca_error = dc.verified, dc.anchor, _validation_error(dc.error)
    result.chain = _describe(dc.digests, ders, view.ca_certs)
    # The device's time floor is at least the bundle's issue time: a clock below it is not believed.
    floor = view.header["issued"] if view.kind == BUNDLE and view.header else 0
    # `now` is taken as authenticated time (a device that knows the time): expiry as the rule says.
    result.verdict = v = dev_policy.decide(view.policy, host, dc.digests, now, dc.verified, floor, now)
    rule = server.rule
    if rule is not None:
        result.pins = [PinStatus(d, label, [depth for depth, c in dc.digests if c == d], d == v.matched_pin)
                       for d, label in zip(rule.pins, rule.labels)]
        result.problems = _rule_problems(result, rule, now)
    elif v.allowed:
        result.problems.append(Problem(WARNING, f"{host}: no domain of the bundle covers it: CA validation "
                                                "alone decides"))
    result.problems += _chain_problems(result, rule, now)
    return result


def _describe(digests: list[tuple[int, bytes]], ders: list[bytes], cas: list[CaCert]) -> list[ChainCert]:
    known: dict[bytes, tuple[str, int, bool]] = {}
    for ca in cas:
        known[ca.digest] = (_name(ca.cert), ca.not_after, False)
    for der in ders:  # what the server sent wins: it is what the device receives
        cert = x509.load_der_x509_certificate(der)
        digest = dev_pins.spki_digest(certs.raw_spki_of_tbs(cert.tbs_certificate_bytes))
        known[digest] = (_name(cert), int(cert.not_valid_after_utc.timestamp()), True)
    out = []
    for depth, digest in digests:
        subject, not_after, sent = known.get(digest, ("(unknown)", None, True))
        out.append(ChainCert(depth, digest, subject, not_after, sent))
    return out


def _name(cert: x509.Certificate) -> str:
    """The subject's common name (what people call a certificate by), else the whole subject."""
    cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if cns:
        return str(cns[0].value)
    return cert.subject.rfc4514_string() or "(empty subject)"


def _validation_error(error: str | None) -> str | None:
    # cryptography appends "(encountered processing <Certificate(...)>)": noise in a report.
    return None if error is None else str(re.sub(r"\s*\(encountered processing <Certificate.*$", "", error, flags=re.S))


def _rule_problems(result: ServerResult, rule: Rule, now: int) -> list[Problem]:
    out: list[Problem] = []
    v = result.verdict
    where = rule.host
    for p in result.pins:
        if p.depths and label_says(p.label, _BACKUP_WORDS):
            out.append(Problem(WARNING, f"{where}: pin {p.label!r} is in the served chain (depth "
                                        f"{', '.join(map(str, p.depths))}): it is not a backup"))
    if result.pins and all(p.depths for p in result.pins):
        out.append(Problem(WARNING, f"{where}: every pin is a key of the served chain: no backup, so a lost "
                                    "or replaced key locks devices out until an update reaches them"))
    left = days_left(rule.expires, now)
    if rule.expires <= now:
        if rule.on_expiry == dev_policy.ON_EXPIRY_ENFORCE:
            out.append(Problem(ERROR, f"{where}: the pins expired on {iso_date(rule.expires)} and on_expiry = "
                                      "enforce: devices keep enforcing pins nobody renews"))
        else:
            out.append(Problem(WARNING, f"{where}: the pins expired on {iso_date(rule.expires)}: devices no "
                                        "longer check them (on_expiry = fallback), CA validation alone decides"))
    elif left < WARN_DAYS:
        out.append(Problem(WARNING, f"{where}: the pins expire on {iso_date(rule.expires)}, in {left} days"))
    if not rule.enforce and v.reason == dev_policy.REPORT_ONLY_MISMATCH:
        out.append(Problem(WARNING, f"{where}: report-only, and no pin matches: every connection is reported, "
                                    "and enforcing this rule would lock devices out"))
    return out


def _chain_problems(result: ServerResult, rule: Rule | None, now: int) -> list[Problem]:
    out: list[Problem] = []
    if not result.verified:
        return out  # the lockout says it all
    for c in result.chain:
        if c.not_after is None:
            continue
        what = "the server's certificate" if c.depth == 0 else f"CA certificate {c.subject}"
        left = days_left(c.not_after, now)
        if left < WARN_DAYS:
            out.append(Problem(WARNING, f"{what} expires on {iso_date(c.not_after)}, in {left} days: from then "
                                        "devices refuse the chain"))
        elif c.depth > 0 and rule is not None and rule.enforce and c.not_after < rule.expires:
            out.append(Problem(WARNING, f"{what} expires on {iso_date(c.not_after)}, before the pins "
                                        f"({iso_date(rule.expires)}): ship its successor in the bundle before then"))
    return out


# --- the whole run -------------------------------------------------------------------------------


def run(view: View, targets: Sequence[HostTarget], now: int, timeout: float = 10.0,
        fetch: Fetcher = fetch_served_chain, workers: int = 8,
        progress: Callable[[ServerResult], None] | None = None) -> Report:
    """Checks every server (fetches in parallel; results in plan order)."""
    servers, not_checked = plan(view, targets)

    def one(server: Server) -> ServerResult:
        try:
            ders = fetch(server.target, timeout)
        except certs.FetchError as e:  # the report names the server already
            result = ServerResult(server, now, fetch_error=e.reason)
        except FleetpinError as e:
            result = ServerResult(server, now, fetch_error=str(e))
        else:
            try:
                result = check_server(view, server, ders, now)
            except ValueError as e:  # cryptography cannot read what the server sent
                result = ServerResult(server, now, fetch_error=f"cannot parse the served certificates: {e}")
        if progress is not None:
            progress(result)
        return result

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(servers)))) as pool:
        results = list(pool.map(one, servers))
    return Report(str(view.path), now, results, not_checked)
