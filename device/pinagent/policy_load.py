"""The policy JSON's validation, and the Policy it builds (pinagent.policy's Policy.from_obj, which
is the way in): every field checked, unknown fields refused, pins decoded, overlapping rules
refused (the format and its rules: pinagent.policy's docstring). Needed to load the installed
bundle at boot and to check an update; a board forgets it after either (pinagent.forget), so
the connection path keeps only what decides.
"""

from . import pins as _pins
from .policy import (
    _HOST_CHARS,
    ANY_LABELS,
    EXACT,
    MAX_CLOCK_LEAD,
    ON_EXPIRY_ENFORCE,
    ON_EXPIRY_FALLBACK,
    ONE_LABEL,
    UNPINNED_BLOCK,
    UNPINNED_CA,
    PolicyError,
    Rule,
    _all_in,
    _canonical_ipv6,
    _is_ipv4,
    _numeric_label,
    normalise_host,
)

_MAX_EXPIRES = 253402300799  # 9999-12-31T23:59:59Z; larger values are milliseconds by mistake
_MAX_LABEL = 64
_POLICY_KEYS = ("domains", "unpinned", "clock_lead")
_DOMAIN_KEYS = ("host", "include_subdomains", "pins", "enforce", "expires", "on_expiry")
_PIN_KEYS = ("pin", "label")


def load(self, obj):
    """Fills the new Policy `self` from a decoded policy JSON object; raises PolicyError naming
    the field."""
    if not isinstance(obj, dict):
        raise PolicyError("policy", "not an object")
    _refuse_unknown(obj, _POLICY_KEYS, "")
    self.unpinned = _choice(obj, "unpinned", (UNPINNED_CA, UNPINNED_BLOCK), UNPINNED_CA, "unpinned")
    lead = obj.get("clock_lead", 0)
    if type(lead) is not int or lead < 0 or lead > MAX_CLOCK_LEAD:  # bool refused too
        raise PolicyError("clock_lead", "not an integer in 0..%d (seconds)" % MAX_CLOCK_LEAD)
    self.clock_lead = lead
    domains = _required(obj, "domains", list, "domains")
    self.rules = []
    self._exact = {}  # host -> rule (exact rules, with or without include_subdomains)
    self._one = {}  # base -> "*." rule
    self._suffix = {}  # base -> "**." or include_subdomains rule
    for i in range(len(domains)):
        rule = _parse_domain(domains[i], i)
        if rule.kind == EXACT:
            _add(self._exact, rule.host, rule)
            if rule.include_subdomains:
                _add(self._suffix, rule.base, rule)
        elif rule.kind == ONE_LABEL:
            _add(self._one, rule.base, rule)
        else:
            _add(self._suffix, rule.base, rule)
        self.rules.append(rule)
    return self


def _add(table, key, rule):
    other = table.get(key)
    if other is not None:
        raise PolicyError(
            "domains[%d].host" % rule.index,
            "covers the same names as domains[%d] (%s)" % (other.index, other.host),
        )
    table[key] = rule


def _refuse_unknown(obj, allowed, prefix):
    for key in obj:
        if key not in allowed:
            raise PolicyError(prefix + str(key), "unknown field")


def _choice(obj, key, choices, default, field):
    if key not in obj:
        return default
    value = obj[key]
    if not isinstance(value, str) or value not in choices:
        raise PolicyError(field, "must be one of " + ", ".join(choices))
    return value


def _bool(obj, key, default, field):
    if key not in obj:
        return default
    value = obj[key]
    if value is not True and value is not False:
        raise PolicyError(field, "not a boolean")
    return value


def _parse_domain(obj, i):
    where = "domains[%d]" % i
    if not isinstance(obj, dict):
        raise PolicyError(where, "not an object")
    _refuse_unknown(obj, _DOMAIN_KEYS, where + ".")
    rule = Rule()
    rule.index = i
    rule.include_subdomains = _bool(obj, "include_subdomains", False, where + ".include_subdomains")
    rule.enforce = _bool(obj, "enforce", True, where + ".enforce")
    rule.on_expiry = _choice(
        obj, "on_expiry", (ON_EXPIRY_FALLBACK, ON_EXPIRY_ENFORCE), ON_EXPIRY_FALLBACK, where + ".on_expiry"
    )
    _parse_host(obj, rule, where + ".host")

    field = where + ".expires"
    if "expires" not in obj:
        raise PolicyError(field, "missing")
    expires = obj["expires"]
    if type(expires) is not int:  # bool is an int subclass: refuse it too
        raise PolicyError(field, "not an integer (POSIX seconds)")
    if expires < 0 or expires > _MAX_EXPIRES:
        raise PolicyError(field, "out of range (POSIX seconds, not milliseconds)")
    rule.expires = expires

    _parse_pins(obj, rule, where + ".pins")
    return rule


def _parse_host(obj, rule, field):
    host = _required(obj, "host", str, field)
    host = normalise_host(host)
    if host.startswith("**."):
        kind, base = ANY_LABELS, host[3:]
    elif host.startswith("*."):
        kind, base = ONE_LABEL, host[2:]
    else:
        kind, base = EXACT, host
    if not base:
        raise PolicyError(field, "empty")
    if len(base) > 253:
        raise PolicyError(field, "longer than 253 characters")
    if "*" in base:
        raise PolicyError(field, "wildcards only as a whole leading label: '*.' or '**.'")
    wide = kind != EXACT or rule.include_subdomains
    if ":" in base or _numeric_label(base[base.rfind(".") + 1 :]):
        base = _check_ip(base, field)
        if wide:
            raise PolicyError(field, "IP literals match exactly: no wildcard, no include_subdomains")
        host = base
    else:
        _check_labels(base, field)
        if wide and "." not in base:
            raise PolicyError(field, "a wildcard or include_subdomains would cover a whole top-level domain")
    if kind != EXACT and rule.include_subdomains:
        raise PolicyError(field, "use either a wildcard or include_subdomains, not both")
    rule.host = host
    rule.base = base
    rule.kind = kind


def _check_labels(host, field):
    for label in host.split("."):
        if not label:
            raise PolicyError(field, "empty label")
        if len(label) > 63:
            raise PolicyError(field, "label longer than 63 characters")
        if not _all_in(label, _HOST_CHARS):
            for c in label:
                if c not in _HOST_CHARS:
                    raise PolicyError(field, "invalid character %r" % c)


def _check_ip(host, field):
    """The canonical form of an IP literal rule (canonical_host), or PolicyError."""
    if ":" in host:
        canon = _canonical_ipv6(host)
        if canon is None:
            raise PolicyError(field, "not a valid IPv6 literal (no brackets, no port, no zone)")
        return canon
    if not _is_ipv4(host):
        raise PolicyError(field, "not a valid IPv4 literal (a dotted quad: 10.0.0.5)")
    return host


_TYPE_NAMES = {list: "a list", str: "a string"}


def _required(obj, key, kind, field):
    """obj[key], which must be there and be a `kind` (list or str)."""
    if key not in obj:
        raise PolicyError(field, "missing")
    value = obj[key]
    if not isinstance(value, kind):
        raise PolicyError(field, "not " + _TYPE_NAMES[kind])
    return value


def _parse_pins(obj, rule, field):
    entries = _required(obj, "pins", list, field)
    if not entries:
        raise PolicyError(field, "empty: at least one pin")
    rule.pins = []
    rule.labels = []
    for j in range(len(entries)):
        where = "%s[%d]" % (field, j)
        entry = entries[j]
        if not isinstance(entry, dict):
            raise PolicyError(where, "not an object")
        _refuse_unknown(entry, _PIN_KEYS, where + ".")
        text = _required(entry, "pin", str, where + ".pin")
        try:
            digest = _pins.parse_pin(text)
        except _pins.PinError as e:
            raise PolicyError(where + ".pin", str(e))
        if digest in rule.pins:
            raise PolicyError(where + ".pin", "duplicate of pins[%d]" % rule.pins.index(digest))
        label = entry.get("label")
        if label is not None and (not isinstance(label, str) or not label or len(label) > _MAX_LABEL):
            raise PolicyError(where + ".label", "not a string of 1 to %d characters" % _MAX_LABEL)
        rule.pins.append(digest)
        rule.labels.append(label)
