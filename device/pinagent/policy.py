"""Pin policy: which server keys each host may present, and the decision for one connection.

Policy JSON (what the device reads; the signed bundle wraps it):

    {"domains": [<domain>, ...],          required, may be empty
     "unpinned": "ca" | "block",          optional, default "ca": hosts without a rule get plain
                                          CA validation ("ca") or are refused ("block")
     "clock_lead": 0}                     optional, seconds 0..MAX_CLOCK_LEAD, default 0: how far
                                          the clock may run ahead of trusted time when it says
                                          pins expired (see "Expiry and time" below)

    <domain> = {
      "host": "api.example.com"           exact host (lowercased, one trailing dot removed)
            | "*.example.com"             exactly one label before example.com
            | "**.example.com"            one or more labels before example.com
            | "10.0.0.5" | "fd00::1",     IP literal: exact only (no wildcard, no include_subdomains);
                                          IPv4 as a dotted quad only; IPv6 is canonicalised
                                          (RFC 5952; ::ffff:a.b.c.d becomes a.b.c.d)
      "include_subdomains": false,        optional; true = the host itself and every name below it
      "pins": [{"pin": "<base64 SHA-256 of the SPKI, optional sha256/ prefix>",
                "label": "primary"}, ...],  required, at least one, no duplicates; label optional
      "enforce": true,                    optional; false = report-only (mismatches do not block)
      "expires": 1767225600,              required, POSIX seconds UTC (the device converts its
                                          2000-epoch clock before calling decide)
      "on_expiry": "fallback" | "enforce" optional, default "fallback": after `expires`, either
                                          plain CA validation (as Android does) or keep enforcing
    }

Expiry and time. Falling back to CA validation after `expires` relaxes security, so the clock
alone (SNTP, which anyone on the path can answer) never decides it. decide() takes two times:
`now`, the device clock (believed only at or above `time_floor`), and `trusted_time`, the newest
time the device holds authenticated evidence for (a verified bundle's signed issue time, a time
a pinned server reported over a pin-matched connection; never below the floor). Pins count as
expired when the clock (if believed) or trusted time is at or past `expires`; a rule with
on_expiry "fallback" falls back only when trusted_time + clock_lead >= expires. So a spoofed
clock can bring an expiry forward by clock_lead seconds at most (0 by default); a mismatch past
an expiry that trusted time does not confirm is blocked as EXPIRY_UNCONFIRMED, and reported.

Unknown keys are refused everywhere, so a newer policy never silently loses a field on an older
agent. Wildcards only as a whole leading label ("*." or "**."), never on a single-label base
(that would cover a whole top-level domain). Two rules covering the same names are refused:
the same host twice, or "**.x" together with "x" + include_subdomains.

decide() picks the most specific rule: exact host, then "*.", then the longest base domain among
"**." and include_subdomains rules. Matching is on label boundaries only.

Hosts: a connection's host and every rule's host go through canonical_host(), the one spelling
they are compared in: lowercase, one trailing dot removed; a name of letters, digits, "-" and
"_" in labels of 1..63; IPv4 as a dotted quad of decimal numbers without leading zeros (a host
whose last label is a number or 0x... is an address to getaddrinfo: 127.1, 0x7f.0.0.1,
0177.0.0.1, 2130706433 and 10.0.0.05 all are, and are refused, not read); IPv6 in RFC 5952 form
(an IPv4-mapped address becomes its IPv4 form). Anything else (a port, brackets, a zone, a
space) is INVALID_HOST. The connection is then made to the canonical host, so the name the
policy judged is the name the TLS stack connects to and checks.

Decision (see decide): leaf pins (depth 0) are sound in any mode, so a leaf match allows even
when the chain was not CA-verified; intermediate and root pins only count when it was
(DESIGN.md: the verify callback never sees mbedTLS's verdict). Wherever the policy falls back
to CA validation (no rule with unpinned "ca", expired pins with on_expiry "fallback", a
report-only mismatch) an unverified chain is blocked with reason UNVERIFIED: falling back to
CA validation must never mean no validation at all.
"""

from . import pins as _pins

# Why a connection was allowed or blocked (Verdict.reason).
MATCHED = "matched"  # a pin matched
MISMATCH = "mismatch"  # enforced rule, no pin matched
CLOCK_UNTRUSTED = "clock_untrusted"  # mismatch, and the clock could not tell if the pins expired
REPORT_ONLY_MISMATCH = "report_only_mismatch"  # no pin matched, rule not enforced: allowed
EXPIRED_FALLBACK = "expired_fallback"  # pins expired, on_expiry fallback: CA validation decided
NO_POLICY = "no_policy"  # no rule for the host, unpinned "ca": CA validation decided
NO_POLICY_BLOCKED = "no_policy_blocked"  # no rule for the host, unpinned "block"
UNVERIFIED = "unverified"  # a fallback to CA validation, but the chain was not verified
INVALID_HOST = "invalid_host"  # not a canonical host (canonical_host): refused before any lookup
EXPIRY_UNCONFIRMED = "expiry_unconfirmed"  # mismatch; the clock says the pins expired, trusted time does not

UNPINNED_CA = "ca"
UNPINNED_BLOCK = "block"
ON_EXPIRY_FALLBACK = "fallback"
ON_EXPIRY_ENFORCE = "enforce"

# Rule kinds
EXACT = 0  # "a.example.com" (also matches below it with include_subdomains)
ONE_LABEL = 1  # "*.example.com"
ANY_LABELS = 2  # "**.example.com"

MAX_CLOCK_LEAD = 2592000  # 30 days: the most a bundle may let the clock run ahead of trusted time
_HOST_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-_"
_IPV6_CHARS = "0123456789abcdef:."
_HEX = "0123456789abcdef"
_DIGITS = "0123456789"



class PolicyError(ValueError):
    """An invalid policy. `field` names the offending field ("domains[2].pins[0].pin"),
    `reason` says what is wrong with it; str(e) is "field: reason"."""

    def __init__(self, field, reason):
        super().__init__(field + ": " + reason)
        self.field = field
        self.reason = reason


class Rule:
    """One validated domain entry. `host` is the normalised pattern as written ("*.x.com"),
    `base` the domain it hangs off ("x.com"), `pins` raw 32-byte digests."""

    __slots__ = (
        "index", "host", "base", "kind", "include_subdomains", "pins", "labels",
        "enforce", "expires", "on_expiry",
    )

    def to_obj(self):
        pins = []
        for i in range(len(self.pins)):
            entry = {"pin": _pins.pin_to_text(self.pins[i])}
            if self.labels[i] is not None:
                entry["label"] = self.labels[i]
            pins.append(entry)
        return {
            "host": self.host,
            "include_subdomains": self.include_subdomains,
            "pins": pins,
            "enforce": self.enforce,
            "expires": self.expires,
            "on_expiry": self.on_expiry,
        }

    def label_of(self, digest):
        for i in range(len(self.pins)):
            if self.pins[i] == digest:
                return self.labels[i]
        return None


class Policy:
    __slots__ = ("rules", "unpinned", "clock_lead", "_exact", "_one", "_suffix")

    def __init__(self, unpinned=UNPINNED_CA, clock_lead=0):
        self.unpinned = unpinned
        self.clock_lead = clock_lead
        self.rules = []
        self._exact = {}  # host -> rule (exact rules, with or without include_subdomains)
        self._one = {}  # base -> "*." rule
        self._suffix = {}  # base -> "**." or include_subdomains rule

    def add(self, rule):
        """Indexes a validated rule; PolicyError if an earlier one covers the same names."""
        if rule.kind == EXACT:
            _index(self._exact, rule.host, rule)
            if rule.include_subdomains:
                _index(self._suffix, rule.base, rule)
        elif rule.kind == ONE_LABEL:
            _index(self._one, rule.base, rule)
        else:
            _index(self._suffix, rule.base, rule)
        self.rules.append(rule)

    def rule_for(self, host):
        """The most specific rule for a normalised host name, or None."""
        rule = self._exact.get(host)
        if rule is not None:
            return rule
        dot = host.find(".")
        if dot < 0:
            return None
        if self._one:
            rule = self._one.get(host[dot + 1 :])
            if rule is not None:
                return rule
        suffix = self._suffix
        if not suffix:
            return None
        # Proper suffixes on label boundaries, longest first: the first hit is the most specific.
        while dot >= 0:
            rule = suffix.get(host[dot + 1 :])
            if rule is not None:
                return rule
            dot = host.find(".", dot + 1)
        return None


def _index(table, key, rule):
    other = table.get(key)
    if other is not None:
        raise PolicyError(
            "domains[%d].host" % rule.index,
            "covers the same names as domains[%d] (%s)" % (other.index, other.host),
        )
    table[key] = rule


class Verdict:
    """The decision for one connection, with everything a failure report needs."""

    __slots__ = (
        "allowed", "reason", "host", "rule", "matched_pin", "matched_depth",
        "clock_trusted", "expired", "verified", "chain",
    )

    def to_obj(self):
        """JSON-able dict; pins as base64 text. Not for the hot path (base64)."""
        rule = self.rule
        chain = []
        for depth, digest in self.chain:
            chain.append({"depth": depth, "pin": _pins.pin_to_text(digest)})
        return {
            "allowed": self.allowed,
            "reason": self.reason,
            "host": self.host,
            "rule": None if rule is None else rule.to_obj(),
            "matched_pin": None if self.matched_pin is None else _pins.pin_to_text(self.matched_pin),
            "matched_label": None if rule is None or self.matched_pin is None
            else rule.label_of(self.matched_pin),
            "matched_depth": self.matched_depth,
            "clock_trusted": self.clock_trusted,
            "expired": self.expired,
            "verified": self.verified,
            "chain": chain,
        }


def normalise_host(host):
    """Lowercase, one trailing dot removed ("FOO.com." == "foo.com"). Not a check: see canonical_host."""
    host = host.lower()
    if host and host[-1] == ".":
        host = host[:-1]
    return host


def canonical_host(host):
    """The spelling hosts and rules are compared in (module docstring, "Hosts"), or None if
    `host` is not a host name or an IP literal in a form that has one meaning."""
    if not isinstance(host, str):
        return None
    host = normalise_host(host)
    if not host or len(host) > 253:
        return None
    if ":" in host:
        return _canonical_ipv6(host)
    if _numeric_label(host[host.rfind(".") + 1 :]):
        return host if _is_ipv4(host) else None
    n = 0  # length of the label so far; a character scan, no list of labels (decide's heap)
    for c in host:
        if c == ".":
            if not n:
                return None
            n = 0
        elif c in _HOST_CHARS and n < 63:
            n += 1
        else:
            return None
    return host if n else None


def _numeric_label(label):
    # What getaddrinfo would read as a number: digits, or 0x and hex digits (WHATWG "ends in a number").
    if label[:2] == "0x":
        return _all_in(label[2:], _HEX)
    return label != "" and _all_in(label, _DIGITS)


def _is_ipv4(text):
    parts = text.split(".")
    if len(parts) != 4:
        return False
    for p in parts:
        if not p or len(p) > 3 or not _all_in(p, _DIGITS) or (len(p) > 1 and p[0] == "0") or int(p) > 255:
            return False
    return True


def _canonical_ipv6(text):
    if not _all_in(text, _IPV6_CHARS):
        return None
    tail = None
    if "." in text:  # an IPv4 address in the last 32 bits
        i = text.rfind(":")
        if not _is_ipv4(text[i + 1 :]):
            return None
        b = [int(x) for x in text[i + 1 :].split(".")]
        tail = ((b[0] << 8) | b[1], (b[2] << 8) | b[3])
        text = text[: i + 1] + "0:0"
    halves = text.split("::")
    if len(halves) > 2:
        return None
    groups = _hex_groups(halves[0])
    if groups is None:
        return None
    if len(halves) == 2:
        rest = _hex_groups(halves[1])
        if rest is None or len(groups) + len(rest) > 7:
            return None
        groups = groups + [0] * (8 - len(groups) - len(rest)) + rest
    elif len(groups) != 8:
        return None
    if tail is not None:
        groups[6], groups[7] = tail
    if groups[5] == 0xFFFF and not (groups[0] or groups[1] or groups[2] or groups[3] or groups[4]):
        g, h = groups[6], groups[7]  # IPv4-mapped: the connection goes to the IPv4 address
        return "%d.%d.%d.%d" % (g >> 8, g & 255, h >> 8, h & 255)
    start, length, i = -1, 1, 0  # RFC 5952: the longest run of two or more zero groups, the first if tied
    while i < 8:
        j = i
        while j < 8 and not groups[j]:
            j += 1
        if j - i > length:
            start, length = i, j - i
        i = j + 1 if j == i else j
    words = ["%x" % g for g in groups]
    if start < 0:
        return ":".join(words)
    return ":".join(words[:start]) + "::" + ":".join(words[start + length :])


def _hex_groups(text):
    if not text:
        return []
    out = []
    for g in text.split(":"):
        if not g or len(g) > 4 or not _all_in(g, _HEX):
            return None
        out.append(int(g, 16))
    return out


def decide(policy, host, chain, now, verified, time_floor=0, trusted_time=None):
    """The verdict for a connection to `host` that presented `chain`.

    chain: list of (depth, 32-byte digest), depth 0 = leaf, as given by pins.chain_digests.
    now: POSIX seconds, or None when the clock is unknown; a clock below time_floor (the newest
    trusted time kept in flash) is not believed either. trusted_time: the newest authenticated
    time (module docstring, "Expiry and time"); None or below the floor means the floor.
    verified: the chain passed CA validation (CERT_REQUIRED). Compares raw digests only: no
    base64, a few small strings per call.
    """
    v = Verdict()
    canon = canonical_host(host)
    v.host = host = canon if canon is not None else (normalise_host(host) if isinstance(host, str) else str(host))
    v.chain = chain
    v.verified = verified = bool(verified)
    v.rule = None
    v.matched_pin = None
    v.matched_depth = -1
    v.clock_trusted = trusted = now is not None and now >= time_floor
    v.expired = False
    if canon is None:
        v.allowed = False
        v.reason = INVALID_HOST
        return v

    rule = policy.rule_for(host)
    if rule is None:
        if policy.unpinned == UNPINNED_BLOCK:
            return _done(v, False, NO_POLICY_BLOCKED)
        return _fallback(v, NO_POLICY)
    v.rule = rule

    known = time_floor if trusted_time is None or trusted_time < time_floor else trusted_time
    expires = rule.expires
    if (trusted and now >= expires) or known >= expires:
        v.expired = True
        if rule.on_expiry == ON_EXPIRY_FALLBACK and expires - known <= policy.clock_lead:
            return _fallback(v, EXPIRED_FALLBACK)

    # Lowest-depth match wins; above the leaf only a CA-verified chain counts.
    best = -1
    pins = rule.pins
    for depth, digest in chain:
        if (depth == 0 or verified) and (best < 0 or depth < best) and digest in pins:
            best = depth
            v.matched_pin = digest
    if best >= 0:
        v.matched_depth = best
        return _done(v, True, MATCHED)

    if not rule.enforce:
        return _fallback(v, REPORT_ONLY_MISMATCH)
    if rule.on_expiry == ON_EXPIRY_FALLBACK:
        if not trusted:
            # The pins may have expired, in which case CA validation would have decided.
            return _done(v, False, CLOCK_UNTRUSTED)
        if v.expired:
            # Only the clock says the pins expired: it may have been set by whoever answered SNTP.
            return _done(v, False, EXPIRY_UNCONFIRMED)
    return _done(v, False, MISMATCH)


def _done(v, allowed, reason):
    v.allowed = allowed
    v.reason = reason
    return v


def _fallback(v, reason):
    # Plain CA validation decides; without it there is no validation at all, so block.
    if v.verified:
        return _done(v, True, reason)
    return _done(v, False, UNVERIFIED)


def _all_in(text, chars):
    return not text.strip(chars)  # (in C: what is left has a character outside chars)
