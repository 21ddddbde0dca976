"""The policy JSON's validation, and the Policy it builds (policy_from_obj, the way in): every
field checked, unknown fields refused, pins decoded, overlapping rules refused (the format and its rules: pinagent.policy's docstring). Needed to load the installed
bundle at boot and to check an update; a board forgets it after either (pinagent.forget), so
the connection path keeps only what decides. A boot runs it on every wake: the name of a field
("domains[2].pins[0].pin") is only made when it is refused.
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
    Policy,
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


def policy_from_obj(obj):
    """The Policy of a decoded policy JSON object; raises PolicyError naming the field."""
    if not isinstance(obj, dict):
        raise PolicyError("policy", "not an object")
    _refuse_unknown(obj, _POLICY_KEYS, None, "")
    unpinned = _choice(obj, "unpinned", (UNPINNED_CA, UNPINNED_BLOCK), UNPINNED_CA, None)
    lead = obj.get("clock_lead", 0)
    if type(lead) is not int or lead < 0 or lead > MAX_CLOCK_LEAD:  # bool refused too
        raise PolicyError("clock_lead", "not an integer in 0..%d (seconds)" % MAX_CLOCK_LEAD)
    self = Policy(unpinned, lead)
    domains = _required(obj, "domains", list, None)
    for i in range(len(domains)):
        self.add(_parse_domain(domains[i], i))
    return self


def _field(i, key):
    """The name of a field: `key` at the top level (i None), else "domains[i]" + key."""
    return key if i is None else "domains[%d]%s" % (i, key)


def _refuse_unknown(obj, allowed, i, prefix):
    for key in obj:
        if key not in allowed:
            raise PolicyError(_field(i, prefix + str(key)), "unknown field")


def _choice(obj, key, choices, default, i):
    if key not in obj:
        return default
    value = obj[key]
    if not isinstance(value, str) or value not in choices:
        raise PolicyError(_field(i, key if i is None else "." + key), "must be one of " + ", ".join(choices))
    return value


def _bool(obj, key, default, i):
    if key not in obj:
        return default
    value = obj[key]
    if value is not True and value is not False:
        raise PolicyError(_field(i, "." + key), "not a boolean")
    return value


def _parse_domain(obj, i):
    if not isinstance(obj, dict):
        raise PolicyError(_field(i, ""), "not an object")
    _refuse_unknown(obj, _DOMAIN_KEYS, i, ".")
    rule = Rule()
    rule.index = i
    rule.include_subdomains = _bool(obj, "include_subdomains", False, i)
    rule.enforce = _bool(obj, "enforce", True, i)
    rule.on_expiry = _choice(obj, "on_expiry", (ON_EXPIRY_FALLBACK, ON_EXPIRY_ENFORCE), ON_EXPIRY_FALLBACK, i)
    _parse_host(obj, rule, i)

    if "expires" not in obj:
        raise PolicyError(_field(i, ".expires"), "missing")
    expires = obj["expires"]
    if type(expires) is not int:  # bool is an int subclass: refuse it too
        raise PolicyError(_field(i, ".expires"), "not an integer (POSIX seconds)")
    if expires < 0 or expires > _MAX_EXPIRES:
        raise PolicyError(_field(i, ".expires"), "out of range (POSIX seconds, not milliseconds)")
    rule.expires = expires

    _parse_pins(obj, rule, i)
    return rule


def _parse_host(obj, rule, i):
    host = _required(obj, "host", str, i)
    host = normalise_host(host)
    if host.startswith("**."):
        kind, base = ANY_LABELS, host[3:]
    elif host.startswith("*."):
        kind, base = ONE_LABEL, host[2:]
    else:
        kind, base = EXACT, host
    if not base:
        raise PolicyError(_field(i, ".host"), "empty")
    if len(base) > 253:
        raise PolicyError(_field(i, ".host"), "longer than 253 characters")
    if "*" in base:
        raise PolicyError(_field(i, ".host"), "wildcards only as a whole leading label: '*.' or '**.'")
    wide = kind != EXACT or rule.include_subdomains
    if ":" in base or _numeric_label(base[base.rfind(".") + 1 :]):
        base = _check_ip(base, i)
        if wide:
            raise PolicyError(_field(i, ".host"), "IP literals match exactly: no wildcard, no include_subdomains")
        host = base
    else:
        _check_labels(base, i)
        if wide and "." not in base:
            raise PolicyError(_field(i, ".host"),
                              "a wildcard or include_subdomains would cover a whole top-level domain")
    if kind != EXACT and rule.include_subdomains:
        raise PolicyError(_field(i, ".host"), "use either a wildcard or include_subdomains, not both")
    rule.host = host
    rule.base = base
    rule.kind = kind


def _check_labels(host, i):
    for label in host.split("."):
        if not label:
            raise PolicyError(_field(i, ".host"), "empty label")
        if len(label) > 63:
            raise PolicyError(_field(i, ".host"), "label longer than 63 characters")
        if not _all_in(label, _HOST_CHARS):
            for c in label:
                if c not in _HOST_CHARS:
                    raise PolicyError(_field(i, ".host"), "invalid character %r" % c)


def _check_ip(host, i):
    """The canonical form of an IP literal rule (canonical_host), or PolicyError."""
    if ":" in host:
        canon = _canonical_ipv6(host)
        if canon is None:
            raise PolicyError(_field(i, ".host"), "not a valid IPv6 literal (no brackets, no port, no zone)")
        return canon
    if not _is_ipv4(host):
        raise PolicyError(_field(i, ".host"), "not a valid IPv4 literal (a dotted quad: 10.0.0.5)")
    return host


_TYPE_NAMES = {list: "a list", str: "a string"}


def _required(obj, key, kind, i):
    """obj[key], which must be there and be a `kind` (list or str); the field is named `key` at
    the top level (i None), else "domains[i].key"."""
    if key not in obj:
        raise PolicyError(_field(i, key if i is None else "." + key), "missing")
    value = obj[key]
    if not isinstance(value, kind):
        raise PolicyError(_field(i, key if i is None else "." + key), "not " + _TYPE_NAMES[kind])
    return value


def _parse_pins(obj, rule, i):
    entries = _required(obj, "pins", list, i)
    if not entries:
        raise PolicyError(_field(i, ".pins"), "empty: at least one pin")
    rule.pins = []
    rule.labels = []
    for j in range(len(entries)):
        entry = entries[j]
        if not isinstance(entry, dict):
            raise PolicyError(_field(i, ".pins[%d]" % j), "not an object")
        for key in entry:
            if key not in _PIN_KEYS:
                raise PolicyError(_field(i, ".pins[%d].%s" % (j, key)), "unknown field")
        text = entry.get("pin")
        if not isinstance(text, str):
            raise PolicyError(_field(i, ".pins[%d].pin" % j), "not a string" if "pin" in entry else "missing")
        try:
            digest = _pins.parse_pin(text)
        except _pins.PinError as e:
            raise PolicyError(_field(i, ".pins[%d].pin" % j), str(e))
        if digest in rule.pins:
            raise PolicyError(_field(i, ".pins[%d].pin" % j), "duplicate of pins[%d]" % rule.pins.index(digest))
        label = entry.get("label")
        if label is not None and (not isinstance(label, str) or not label or len(label) > _MAX_LABEL):
            raise PolicyError(_field(i, ".pins[%d].label" % j), "not a string of 1 to %d characters" % _MAX_LABEL)
        rule.pins.append(digest)
        rule.labels.append(label)
