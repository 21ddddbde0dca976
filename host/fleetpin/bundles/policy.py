"""The human policy file (TOML) -> the policy JSON object the device reads.

    [defaults]                      # optional; applies to every [[domain]] that does not say
    enforce = true                  #   false = report-only
    expires = 2026-12-31            #   TOML date (00:00 UTC) or datetime WITH an offset / Z
    on_expiry = "fallback"          #   or "enforce"
    unpinned = "ca"                 #   hosts without a rule: "ca" (CA validation) or "block"
    clock_lead = 0                  #   seconds (0..30 days) the device clock may run ahead of
                                    #   authenticated time when it says pins expired (on_expiry =
                                    #   "fallback"): how much earlier a spoofed clock can end pinning

    [[domain]]
    host = "api.example.com"        # or "*.example.com", "**.example.com", "10.0.0.5"
    include_subdomains = false
    pins = [{ pin = "sha256/...", label = "primary" }, { pin = "sha256/...", label = "backup" }]
    # (a pin without a label may also be written as a plain string: pins = ["sha256/...", ...])
    # enforce / expires / on_expiry override [defaults]

Naive datetimes (no offset) are refused rather than guessed: an expiry hours off in the wrong
direction is an outage. Unknown tables and keys are refused with the field named, so a typo
never silently drops a setting (later issues add tables for CA certificates and reports).

Validity is defined once, in pinagent.policy_load.policy_from_obj; this module only translates
names and dates and maps the device's field names ("domains[1]") back to the file's
("domain[1]").
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from pathlib import Path
from typing import Any

from fleetpin.errors import UsageError
from pinagent.policy import PolicyError
from pinagent.policy_load import policy_from_obj

TOP_KEYS = ("defaults", "domain")
DEFAULT_KEYS = ("enforce", "expires", "on_expiry", "unpinned", "clock_lead")
DOMAIN_KEYS = ("host", "include_subdomains", "pins", "enforce", "expires", "on_expiry")
# Keys a [[domain]] inherits from [defaults] when it does not set them.
INHERITED = ("enforce", "expires", "on_expiry")

_DATE_HINT = "write a TOML date (2026-12-31, taken as 00:00 UTC) or a datetime with an offset (2026-12-31T12:00:00Z)"


def load_policy_toml(path: str | Path) -> dict[str, Any]:
    """Reads and validates a policy TOML file; returns the device policy JSON object.

    Raises UsageError naming the file and field, e.g. "policy.toml: domain[1].pins[0].pin: ...".
    """
    path = Path(path)
    return policy_from_doc(read_toml(path), path.name)


def parse_policy_toml(text: str, name: str = "policy.toml") -> dict[str, Any]:
    return policy_from_doc(parse_toml(text, name), name)


def read_toml(path: Path) -> dict[str, Any]:
    """The parsed TOML document of a policy file, not yet validated (UsageError naming the file)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"{path}: cannot read policy: {e.strerror or e}", hint="check the POLICY.toml path") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text", hint="a policy is a TOML text file") from None
    return parse_toml(text, path.name)


def parse_toml(text: str, name: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{name}: not valid TOML: {e}", hint="fix the syntax at the line shown") from None


def policy_from_doc(doc: dict[str, Any], name: str) -> dict[str, Any]:
    """The device policy JSON object of an already parsed TOML document ([defaults] and
    [[domain]] only: a caller with tables of its own, like bundle_build, removes them first).
    `name` is the file name errors start with."""
    return _PolicyFile(name).convert(doc)


def timestamp_of(value: object, field: str, name: str) -> int:
    """POSIX seconds (UTC) of a TOML date or offset datetime."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise UsageError(f"{name}: {field}: datetime without a time zone", hint=_DATE_HINT)
        return int(value.timestamp())
    if isinstance(value, dt.date):
        return int(dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc).timestamp())
    raise UsageError(f"{name}: {field}: not a date or datetime", hint=_DATE_HINT)


class _PolicyFile:
    def __init__(self, name: str) -> None:
        self.name = name
        # (domain index, key) -> "defaults.<key>" for values a domain took from [defaults]
        self.inherited_from: dict[tuple[int, str], str] = {}

    def error(self, field: str, reason: str, hint: str | None = None) -> UsageError:
        return UsageError(f"{self.name}: {field}: {reason}", hint=hint or f"fix {field} in {self.name}")

    def refuse_unknown(self, table: dict[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
        for key in table:
            if key not in allowed:
                raise self.error(prefix + key, "unknown field", hint="allowed here: " + ", ".join(allowed))

    def convert(self, doc: dict[str, Any]) -> dict[str, Any]:
        self.refuse_unknown(doc, TOP_KEYS, "")
        defaults = doc.get("defaults", {})
        if not isinstance(defaults, dict):
            raise self.error("defaults", "must be a table: [defaults]")
        self.refuse_unknown(defaults, DEFAULT_KEYS, "defaults.")
        domains = doc.get("domain", [])
        if not isinstance(domains, list):
            raise self.error("domain", "must be an array of tables: [[domain]]")

        obj: dict[str, Any] = {"domains": []}
        for key in ("unpinned", "clock_lead"):  # policy-wide settings, not inherited by domains
            if key in defaults:
                obj[key] = defaults[key]
        if "expires" in defaults:
            defaults = dict(defaults, expires=timestamp_of(defaults["expires"], "defaults.expires", self.name))
        for i, domain in enumerate(domains):
            obj["domains"].append(self.convert_domain(i, domain, defaults))

        try:
            policy_from_obj(obj)
        except PolicyError as e:
            reason = re.sub(r"domains\[(\d+)\]", r"domain[\1]", e.reason)
            raise self.error(self.file_field(e.field), reason, hint=self.hint_for(e.field, domains)) from None
        return obj

    def convert_domain(self, i: int, domain: object, defaults: dict[str, Any]) -> object:
        where = f"domain[{i}]"
        if not isinstance(domain, dict):
            raise self.error(where, "must be a table: [[domain]]")
        self.refuse_unknown(domain, DOMAIN_KEYS, where + ".")
        out = dict(domain)
        if isinstance(out.get("pins"), list):
            out["pins"] = [{"pin": p} if isinstance(p, str) else p for p in out["pins"]]
        if "expires" in out:
            out["expires"] = timestamp_of(out["expires"], where + ".expires", self.name)
        for key in INHERITED:
            if key not in out and key in defaults:
                out[key] = defaults[key]
                self.inherited_from[(i, key)] = "defaults." + key
        if "expires" not in out:
            raise self.error(where + ".expires", "missing", hint=f"set expires in {where} or in [defaults]")
        return out

    def file_field(self, field: str) -> str:
        """The device's field name ("domains[2].enforce") as written in the file."""
        if field in ("unpinned", "clock_lead"):
            return "defaults." + field
        m = re.fullmatch(r"domains\[(\d+)\](?:\.(\w+))?(.*)", field)
        if m is None:
            return "domain" if field == "domains" else field
        i, key, rest = int(m.group(1)), m.group(2), m.group(3)
        inherited = self.inherited_from.get((i, key or ""))
        if inherited is not None:
            return f"{inherited} (used by domain[{i}])"
        return f"domain[{i}]" + (f".{key}" if key else "") + rest

    def hint_for(self, field: str, domains: list[Any]) -> str:
        m = re.match(r"domains\[(\d+)\]", field)
        if m is not None:
            i = int(m.group(1))
            host = domains[i].get("host") if isinstance(domains[i], dict) else None
            if isinstance(host, str):
                return f"fix the [[domain]] with host = {host!r} (domain[{i}], counting from 0) in {self.name}"
        return f"fix {self.file_field(field)} in {self.name}"
