"""An Android network-security-config XML -> a fleetpin policy TOML text (fleetpin.bundles.policy).

What Android means (android.security.net.config.XmlConfigSource, checked in its source):
  - <domain-config> holds one or more <domain includeSubdomains="true|false">name</domain>, at
    most one <pin-set expiration="yyyy-MM-dd"> of <pin digest="SHA-256">base64</pin>, and may
    nest further <domain-config>s, which INHERIT the pin-set of their parent unless they have
    their own. A name may appear only once in the whole file.
  - after the expiration date the pins are not checked and CA validation alone decides: that
    is fleetpin's on_expiry = "fallback", with expires = that date at 00:00 UTC (Android reads
    it in the device's time zone). A pin-set without expiration is enforced forever: that is
    on_expiry = "enforce" with expires = --expires (default 9999-12-31: never).
  - pins always block on a mismatch: enforce = true.
  - an empty <pin-set/> (or a domain-config without one) means "no pinning" for its names; a
    fleetpin policy cannot exempt a name below a pinned include_subdomains rule, so such a name
    gets a warning when a pinned rule would cover it.
  - base-config and debug-overrides cannot pin; trust-anchors, cleartextTrafficPermitted and
    hstsEnforced are not pinning: they are ignored with a note. Trust anchors with
    overridePins="true" switch the pins off for chains ending at them; fleetpin devices have no
    such exception: warning.
A comment on the same line right after a <pin> becomes its label (what `fleetpin export
android` writes), so a policy survives the round trip.

Safety: a network-security-config has no DOCTYPE; any DOCTYPE or ENTITY declaration is refused
before parsing, so no entity is ever expanded (ElementTree's expat never fetches external
entities either, but refusing is simpler than reasoning about internal-entity expansion).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

from fleetpin.bundles.policy import parse_policy_toml
from fleetpin.errors import UsageError
from pinagent import pins as dev_pins
from pinagent import policy as dev_policy
from pinagent.policy_load import policy_from_obj

NEVER = 253402214400  # 9999-12-31T00:00:00Z: the default expires of pins that never expire
_MAX_LABEL = 64
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass
class ImportResult:
    toml: str
    warnings: list[str] = field(default_factory=list)  # the policy differs from the app's behaviour
    notes: list[str] = field(default_factory=list)  # settings ignored because they are not pinning


@dataclass
class _PinSet:
    pins: list[tuple[str, str | None]]  # (base64, label)
    expiration: str | None  # "yyyy-MM-dd"
    where: str


@dataclass
class _Domain:
    host: str
    include: bool
    pin_set: _PinSet | None
    where: str


def import_android(data: bytes, name: str = "network_security_config.xml", *, never_expires: int = NEVER) -> ImportResult:
    """Parses the XML; returns the policy TOML text (validated by fleetpin.bundles.policy) with the
    warnings and notes. Raises UsageError naming the element for anything Android would refuse."""
    head = data[:65536].lower()
    if b"<!doctype" in head or b"<!entity" in head:
        raise UsageError(f"{name}: DOCTYPE or ENTITY declarations are not allowed here",
                         hint="a network security config has none: remove them")
    try:
        root = ET.fromstring(data, parser=ET.XMLParser(target=ET.TreeBuilder(insert_comments=True)))
    except ET.ParseError as e:
        raise UsageError(f"{name}: not well-formed XML: {e}") from None
    if root.tag != "network-security-config":
        raise UsageError(f"{name}: the root element is <{root.tag}>, not <network-security-config>")
    result = ImportResult("")
    domains: list[_Domain] = []
    seen: dict[str, str] = {}
    count = 0
    for child in root:
        if not isinstance(child.tag, str):
            continue  # comment
        if child.tag == "domain-config":
            count += 1
            _domain_config(child, f"domain-config[{count}]", None, name, domains, seen, result)
        elif child.tag in ("base-config", "debug-overrides"):
            _ignored_config(child, child.tag, name, result)
        else:
            result.notes.append(f"<{child.tag}> ignored (not part of a network security config)")
    result.toml = _toml(domains, name, never_expires, result)
    return result


def _error(name: str, where: str, reason: str) -> UsageError:
    return UsageError(f"{name}: {where}: {reason}", hint="Android would refuse this file too: fix it")


def _ignored_config(elem: ET.Element, where: str, name: str, result: ImportResult) -> None:
    for child in elem:
        if child.tag == "pin-set":
            raise _error(name, where, "pin-set is allowed in domain-config only")
        if child.tag == "domain":
            raise _error(name, where, "domain is allowed in domain-config only")
        if child.tag == "trust-anchors":
            _trust_anchors(child, where, result)
    if where == "base-config" and elem.attrib:
        result.notes.append(f"{where}: attributes {', '.join(sorted(elem.attrib))} ignored (not pinning)")
    elif where == "debug-overrides":
        result.notes.append("debug-overrides ignored (debug builds only)")


def _trust_anchors(elem: ET.Element, where: str, result: ImportResult) -> None:
    # debug-overrides anchors override pins by default; they only apply to debug builds.
    overriding = [c.get("src", "?") for c in elem if c.tag == "certificates"
                  and c.get("overridePins", "false").lower() == "true"]
    if overriding and where != "debug-overrides":
        result.warnings.append(
            f"{where}: trust anchors {', '.join(overriding)} have overridePins=\"true\": the app skips the pins "
            "for chains ending at them; fleetpin devices never do")
    elif where != "debug-overrides":
        result.notes.append(f"{where}: trust-anchors ignored (fleetpin bundles carry their own CA certificates)")


def _domain_config(elem: ET.Element, where: str, parent: _PinSet | None, name: str, domains: list[_Domain],
                   seen: dict[str, str], result: ImportResult) -> None:
    own: _PinSet | None = None
    names: list[tuple[str, bool, str]] = []
    nested: list[ET.Element] = []
    attrs = sorted(elem.attrib)
    if attrs:
        result.notes.append(f"{where}: {', '.join(attrs)} ignored (not pinning)")
    d = 0
    for child in elem:
        if not isinstance(child.tag, str):
            continue
        if child.tag == "domain":
            d += 1
            host, include = _domain(child, f"{where}.domain[{d}]", name)
            if host in seen:
                raise _error(name, f"{where}.domain[{d}]", f"{host} has already been specified ({seen[host]})")
            seen[host] = f"{where}.domain[{d}]"
            names.append((host, include, f"{where}.domain[{d}]"))
        elif child.tag == "pin-set":
            if own is not None:
                raise _error(name, where, "more than one pin-set")
            own = _pin_set(child, f"{where}.pin-set", name)
        elif child.tag == "domain-config":
            nested.append(child)
        elif child.tag == "trust-anchors":
            _trust_anchors(child, where, result)
        else:
            result.notes.append(f"{where}: <{child.tag}> ignored")
    if not names:
        raise _error(name, where, "no domain elements in domain-config")
    effective = own if own is not None else parent  # nested configs inherit the pin-set
    for host, include, dwhere in names:
        domains.append(_Domain(host, include, effective, dwhere))
    for i, child in enumerate(nested, 1):
        _domain_config(child, f"{where}.domain-config[{i}]", effective, name, domains, seen, result)


def _domain(elem: ET.Element, where: str, name: str) -> tuple[str, bool]:
    if len(elem):
        raise _error(name, where, "domain contains additional elements")
    host = (elem.text or "").strip().lower()
    if not host:
        raise _error(name, where, "domain name missing")
    flag = elem.get("includeSubdomains", "false").strip().lower()
    if flag not in ("true", "false"):
        raise _error(name, where, f"includeSubdomains={flag!r}: must be true or false")
    return host, flag == "true"


def _pin_set(elem: ET.Element, where: str, name: str) -> _PinSet:
    expiration = elem.get("expiration")
    if expiration is not None:
        expiration = expiration.strip()
        try:
            if not _DATE.fullmatch(expiration):
                raise ValueError
            dt.date.fromisoformat(expiration)
        except ValueError:
            raise _error(name, where, f"expiration {expiration!r} is not a date yyyy-MM-dd") from None
    pins: list[tuple[str, str | None]] = []
    children = list(elem)
    j = 0
    for i, child in enumerate(children):
        if child.tag != "pin":
            continue
        j += 1
        pwhere = f"{where}.pin[{j}]"
        digest = child.get("digest")
        if digest != "SHA-256":
            raise _error(name, pwhere, f"digest {digest!r}: Android and fleetpin pins are SHA-256 only")
        if len(child):
            raise _error(name, pwhere, "pin contains additional elements")
        text = (child.text or "").strip()
        try:
            digest_bytes = dev_pins.parse_pin(text)
        except dev_pins.PinError as e:
            raise _error(name, pwhere, e.reason) from None
        pin = dev_pins.pin_to_text(digest_bytes)
        if any(p == pin for p, _ in pins):
            continue  # Android keeps a set: a repeated pin is the same pin
        pins.append((pin, _label_after(child, children[i + 1] if i + 1 < len(children) else None)))
    return _PinSet(pins, expiration, where)


def _label_after(pin: ET.Element, following: ET.Element | None) -> str | None:
    """The text of a comment on the same line right after the pin element, if it fits a label."""
    # ElementTree marks comments by the tag being the ET.Comment factory itself.
    if following is None or following.tag != ET.Comment or "\n" in (pin.tail or ""):  # type: ignore[comparison-overlap]
        return None
    label = (following.text or "").strip()
    return label if 0 < len(label) <= _MAX_LABEL else None


def _toml(domains: list[_Domain], name: str, never_expires: int, result: ImportResult) -> str:
    lines = [
        f"# Imported by `fleetpin import android` from {name}.",
        "# Android semantics kept: pins always enforced; after a pin-set's expiration date, plain CA",
        '# validation (on_expiry = "fallback"); a pin-set without expiration is enforced forever',
        '# (on_expiry = "enforce"). Review the expiry dates before building a bundle.',
    ]
    obj_domains: list[dict[str, Any]] = []
    unpinned: list[_Domain] = []
    for d in domains:
        if d.pin_set is None or not d.pin_set.pins:
            unpinned.append(d)
            result.notes.append(f"{d.where}: {d.host} has no pins in the app: not in the policy")
            continue
        ps = d.pin_set
        if ps.expiration is None:
            expires, on_expiry = never_expires, dev_policy.ON_EXPIRY_ENFORCE
        else:
            day = dt.date.fromisoformat(ps.expiration)
            expires = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp())
            on_expiry = dev_policy.ON_EXPIRY_FALLBACK
        obj_domains.append({"host": d.host, "include_subdomains": d.include, "enforce": True,
                            "expires": expires, "on_expiry": on_expiry,
                            "pins": [{"pin": p} if lab is None else {"pin": p, "label": lab} for p, lab in ps.pins]})
        lines += ["", f"# {d.where}", "[[domain]]", f"host = {_str(d.host)}"]
        if d.include:
            lines.append("include_subdomains = true")
        lines.append("enforce = true")
        lines.append(f"expires = {_date_text(expires)}")
        lines.append(f"on_expiry = {_str(on_expiry)}")
        lines.append("pins = [")
        for p, lab in ps.pins:
            lines.append(f"  {{ pin = {_str('sha256/' + p)} }}," if lab is None
                         else f"  {{ pin = {_str('sha256/' + p)}, label = {_str(lab)} }},")
        lines.append("]")
    text = "\n".join(lines) + "\n"
    if not obj_domains:
        raise UsageError(f"{name}: no pinned domains: nothing to import",
                         hint="a policy needs at least one <domain-config> with a <pin-set>")
    try:
        policy = policy_from_obj({"domains": obj_domains})
    except dev_policy.PolicyError as e:
        i = int(m.group(1)) if (m := re.match(r"domains\[(\d+)\]", e.field)) else None
        where = f" ({[d for d in domains if d not in unpinned][i].where})" if i is not None else ""
        raise UsageError(f"{name}: fleetpin cannot take this: {e}{where}",
                         hint="fleetpin refuses what could brick devices (e.g. includeSubdomains on a top-level "
                              "domain); fix the XML or edit the policy by hand") from None
    for d in unpinned:
        rule = policy.rule_for(d.host)
        if rule is not None:
            result.warnings.append(
                f"{d.where}: {d.host} is not pinned in the app, but the policy pins it with the rule for "
                f"{rule.host} (a policy cannot exempt a name below an include_subdomains rule)")
    parse_policy_toml(text, name + " (imported)")  # what load_policy_toml will read back
    return text


def _str(value: str) -> str:
    """A TOML basic string (JSON escapes are TOML escapes; DEL must be escaped in TOML too)."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def _date_text(expires: int) -> str:
    moment = dt.datetime.fromtimestamp(expires, dt.timezone.utc)
    if expires % 86400 == 0:
        return moment.strftime("%Y-%m-%d")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
