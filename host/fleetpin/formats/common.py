"""What the mobile exports share, and what each format can say. A fleet's pin policy in the formats mobile apps ship: Android network-security-config XML,
TrustKit (iOS/macOS) configuration, OkHttp `CertificatePinner` code.

The apps talk to the same servers as the devices, so they should pin the same keys. Each
format has its own semantics, checked in its sources; where one cannot say what the policy
says, the export does the safest close thing and returns a warning naming the domain:

Android (android.security.net.config, XmlConfigSource / ApplicationConfig)
  - <domain includeSubdomains> = the name and every name below it; the exact name wins, else
    the longest includeSubdomains match: fleetpin's exact hosts and include_subdomains, 1:1.
  - no wildcards: "*.x" and "**.x" become x with includeSubdomains, which also covers x itself
    (and, for "*.x", names two or more labels down); a name may appear only once in the file
    ("x has already been specified"), so a wildcard whose base has its own rule is left out.
  - <pin-set expiration="yyyy-MM-dd">: parsed with SimpleDateFormat in the DEVICE'S time zone;
    from 00:00 that day the pins are not checked and CA validation alone decides = on_expiry
    "fallback". The date is rounded down to a UTC day (warning unless expires is 00:00 UTC).
    on_expiry "enforce" = no expiration attribute: Android then enforces the pins forever,
    which is what a device does after `expires` with "enforce" (no warning; the date is lost).
  - no report-only mode: a report-only domain is exported WITHOUT a pin-set, i.e. plain CA
    validation for its names (what the device does, minus the report), so that no broader
    pinned rule catches them.
  - <domain> is documented for host names; Android compares the text, so an IP literal only
    pins connections made to that exact literal: warning.
TrustKit (TSKTrustKitConfig.h, parse_configuration.m, configuration_utils.m)
  - TSKPinnedDomains: {name: {TSKPublicKeyHashes, TSKIncludeSubdomains, TSKEnforcePinning,
    TSKExpirationDate "yyyy-MM-dd" (UTC), TSKDisableDefaultReportUri, TSKReportUris}}.
    Same name mapping and wildcard handling as Android. TrustKit refuses (throws at start-up)
    an enforced domain with fewer than 2 pins, an IP address, a name whose TLD is not on the
    public suffix list (e.g. ".test", ".internal": not checked here) and an empty domain list.
  - TSKEnforcePinning NO = report-only (reports go to TSKReportUris: --report-uri).
  - TSKDisableDefaultReportUri is always YES: otherwise TrustKit also sends every pin failure
    report (hostname, certificate chain) to Data Theorem's server.
  - includeSubdomains lookup takes the FIRST matching parent it finds, not the most specific:
    nested includeSubdomains domains with different pins get a warning. (Its subdomain test is
    also a plain text suffix test: "example.com" covers "myexample.com" too.)
  - TSKSwizzleNetworkDelegates is NO: the app calls TSKPinningValidator in its delegates.
  Output: a plist whose root dict holds TSKConfiguration (copy that key into Info.plist), or
  `--format json`: the same TSKConfiguration dictionary as JSON, for an app that builds the
  configuration in code.
OkHttp (okhttp3.CertificatePinner, 4.x/5.x)
  - patterns: "x" exactly; "*.x" exactly one label below x; "**.x" any number of labels INCLUDING
    x itself. So include_subdomains x -> "**.x" (exact), "*.x" -> "*.x" (exact), "**.x" ->
    "**.x" (widened to x itself: warning).
  - every matching pattern applies and any of their pins is accepted, where fleetpin uses the
    most specific rule only: overlapping rules with different pins get a warning.
  - no expiry: with on_expiry "fallback" the app keeps enforcing after `expires` (warning: ship
    an update before then); no report-only mode: report-only domains are left out (warning).
All formats: `unpinned = "block"` (refuse hosts without a rule) is not expressible (warning).

The cross-rule effects (widening, overlaps, names taken) are found by comparing, for every
rule's name and for names one and two labels below it, the rule fleetpin would apply with what
the exported configuration would apply (`compare_matching`), so the warnings follow from the formats'
matching rules rather than from a list of special cases.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetpin.bundles.view import load_policy_obj
from fleetpin.errors import UsageError
from pinagent import pins as dev_pins
from pinagent import policy as dev_policy
from pinagent.policy_load import policy_from_obj

TRUSTKIT_FORMATS = ("plist", "json")
UNPINNED_DOMAIN = "(hosts without a rule)"
_DAY = 86400
_WITNESS = "~"  # a label no real host has: stands for "any other name at this depth"


@dataclass(frozen=True)
class ExportWarning:
    """Something the target format cannot say as the policy does; `domain` is the policy host
    it concerns (as written in the policy, e.g. "*.ota.example.org")."""

    domain: str
    message: str

    def __str__(self) -> str:
        return f"{self.domain}: {self.message}"


@dataclass(frozen=True)
class ExportOptions:
    """What a user may choose about an export; a format ignores what does not apply to it."""

    trustkit_format: str = "plist"  # plist or json
    report_uris: Sequence[str] = ()


@dataclass
class ExportResult:
    text: str
    warnings: list[ExportWarning] = field(default_factory=list)


# --- input ----------------------------------------------------------------------------------


def load_policy_source(path: Path) -> dict[str, Any]:
    """The device policy JSON object of a bundle or a policy TOML file (fleetpin.bundles.view)."""
    return load_policy_obj(path)


def parse_policy(obj: dict[str, Any]) -> Any:
    try:
        return policy_from_obj(obj)
    except dev_policy.PolicyError as e:
        raise UsageError(f"invalid policy: {e}") from None


# --- shared helpers -------------------------------------------------------------------------


def is_ip_rule(rule: Any) -> bool:
    return ":" in rule.base or rule.base[rule.base.rfind(".") + 1:].isdigit()


def _day(expires: int) -> str:
    return dt.datetime.fromtimestamp(expires, dt.timezone.utc).strftime("%Y-%m-%d")


def iso_time(expires: int) -> str:
    return dt.datetime.fromtimestamp(expires, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def expiry_date(rule: Any, fmt: str, warnings: list[ExportWarning]) -> str | None:
    """The yyyy-MM-dd after which the format stops checking the pins, or None (never)."""
    if rule.on_expiry == dev_policy.ON_EXPIRY_ENFORCE:
        return None  # the device keeps enforcing after `expires`; so does a pin set without expiry
    if rule.expires % _DAY:
        warnings.append(ExportWarning(rule.host, (
            f"expires {iso_time(rule.expires)} is not 00:00 UTC and {fmt} takes a date: exported as "
            f"{_day(rule.expires)}, so the app falls back to CA validation up to a day earlier")))
    return _day(rule.expires)


def pin_texts(rule: Any) -> list[str]:
    return [dev_pins.pin_to_text(d) for d in rule.pins]


def pin_lines(rule: Any, line: Callable[[str], str], note: Callable[[str], str]) -> list[str]:
    """A line per pin of the rule, its label (if any) appended as a comment."""
    return [line(text) + ("" if label is None else note(comment_line(label)))
            for text, label in zip(pin_texts(rule), rule.labels)]


def comment_line(text: str) -> str:
    """Text safe inside an XML or a // comment: one line, no "--"."""
    text = re.sub(r"[\x00-\x1f\x7f]", " ", text)
    while "--" in text:
        text = text.replace("--", "- -")
    return text


def unpinned_warning(policy: Any, fmt: str, warnings: list[ExportWarning]) -> None:
    if policy.unpinned == dev_policy.UNPINNED_BLOCK:
        warnings.append(ExportWarning(UNPINNED_DOMAIN, (
            f'unpinned = "block" refuses hosts without a rule; {fmt} cannot say that: '
            "the app uses plain CA validation for them")))


def _names_by_priority(rules: list[Any]) -> list[Any]:
    """Who gets a name when two rules map to the same <domain> name: exact hosts first (they
    are expressed exactly), then "**." (loses only the base itself), then "*."."""
    order = {dev_policy.EXACT: 0, dev_policy.ANY_LABELS: 1, dev_policy.ONE_LABEL: 2}
    return sorted(rules, key=lambda r: (order[r.kind], r.index))


def domain_name(rule: Any) -> tuple[str, bool]:
    """The (name, includeSubdomains) of a rule in a format without wildcards."""
    if rule.kind == dev_policy.EXACT:
        return rule.host, bool(rule.include_subdomains)
    return rule.base, True


@dataclass
class Entry:
    """One exported domain entry: its name or pattern, the rule it came from, and the key that
    says what it enforces (equal keys = the same behaviour for a connection)."""

    name: str
    include: bool
    rule: Any
    key: Hashable


def claim_names(rules: list[Any], fmt: str, key: Callable[[Any], Hashable], skipped: set[int],
                 warnings: list[ExportWarning]) -> dict[str, Entry]:
    """The entries of a format that allows each domain name once: the rules not in `skipped`, by
    priority; a rule whose name is taken is left out (added to `skipped`) with a warning."""
    entries: dict[str, Entry] = {}
    for rule in _names_by_priority(rules):
        if rule.index in skipped:
            continue
        name, include = domain_name(rule)
        other = entries.get(name)
        if other is not None:
            skipped.add(rule.index)
            warnings.append(ExportWarning(rule.host, (
                f"not exported: {fmt} allows each name once, and {name} is taken by the rule for {other.rule.host}")))
            continue
        entries[name] = Entry(name, include, rule, key(rule))
    return entries


# Outcome of a name in the exported configuration: (key, what to call it in a warning).
Outcome = tuple[Hashable, str]


def _witnesses(rules: list[Any]) -> list[tuple[str, str]]:
    """Names that stand for every class of host name the rules treat differently: each rule's
    name, and "other" names one and two-or-more labels below it."""
    out: dict[str, str] = {}
    for rule in rules:
        out.setdefault(rule.base, rule.base)
    for rule in rules:
        if is_ip_rule(rule):
            continue
        out.setdefault(f"{_WITNESS}.{rule.base}", f"other names one label below {rule.base}")
        out.setdefault(f"{_WITNESS}.{_WITNESS}.{rule.base}", f"other names two or more labels below {rule.base}")
    return list(out.items())


def compare_matching(policy: Any, fmt: str, fleet: Callable[[Any], Outcome], target: Callable[[str], tuple[Outcome, Any]],
             skipped: set[int], warnings: list[ExportWarning]) -> None:
    """Warns wherever the exported configuration would treat a name differently from fleetpin.
    `fleet(rule)` is what the format would say for a rule; `target(name)` what the export says
    for a name, with the rule it came from (for the warning's domain when fleetpin has none)."""
    found: dict[tuple[str, str, str], list[str]] = {}  # (domain, got, want) -> names it applies to
    for name, desc in _witnesses(policy.rules):
        rule = policy.rule_for(name)
        want: Outcome = (None, "no pins (CA validation only)") if rule is None else fleet(rule)
        got, source = target(name)
        if got[0] == want[0]:
            continue
        if rule is not None and rule.index in skipped and got[0] is None:
            continue  # already warned: the rule was left out
        concern = rule.host if rule is not None else source.host
        found.setdefault((concern, got[1], want[1]), []).append(desc)
    for (concern, got_text, want_text), descs in found.items():
        warnings.append(ExportWarning(concern, f"{'; '.join(descs)}: {fmt} would apply {got_text}, fleetpin {want_text}"))


def is_below(name: str, base: str) -> bool:
    return name.endswith("." + base)


def dedupe_warnings(warnings: list[ExportWarning]) -> list[ExportWarning]:
    seen: set[ExportWarning] = set()
    out = []
    for w in warnings:
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


# --- Android ------------------------------------------------------------------------------


# --- TrustKit -----------------------------------------------------------------------------


# --- OkHttp -------------------------------------------------------------------------------


