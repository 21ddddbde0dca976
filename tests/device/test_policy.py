# pinagent.policy: validation of the policy JSON and the per-connection decision.
# Runs unchanged under CPython and on the MicroPython VM.

import json

from support import raises, skip

from pinagent.policy_load import policy_from_obj
from pinagent import policy as P
from pinagent.pins import pin_to_text


def _digest(n):
    return bytes([n]) * 32


LEAF = _digest(1)
INTER = _digest(2)
ROOT = _digest(3)
BACKUP = _digest(4)
CHAIN = [(0, LEAF), (1, INTER), (2, ROOT)]
NOW = 1700000000
EXPIRES = NOW + 86400


def _dom(host, pins=(LEAF, BACKUP), **fields):
    d = {"host": host, "pins": [{"pin": pin_to_text(p)} for p in pins], "expires": EXPIRES}
    d.update(fields)
    return d


def _policy(domains, unpinned=None):
    obj = {"domains": domains}
    if unpinned is not None:
        obj["unpinned"] = unpinned
    return policy_from_obj(obj)


def _rule_host(policy, host):
    v = P.decide(policy, host, CHAIN, NOW, True)
    return None if v.rule is None else v.rule.host


# --- matching ---------------------------------------------------------------------------


def test_exact_match_allows_with_pin_and_depth():
    v = P.decide(_policy([_dom("api.example.com")]), "api.example.com", CHAIN, NOW, True)
    assert v.allowed is True
    assert v.reason == P.MATCHED
    assert v.matched_pin == LEAF
    assert v.matched_depth == 0
    assert v.rule.host == "api.example.com"
    assert v.clock_trusted is True
    assert v.expired is False
    assert v.chain is CHAIN


def test_host_normalised_case_and_one_trailing_dot():
    p = _policy([_dom("API.Example.COM.")])
    assert p.rules[0].host == "api.example.com"
    assert _rule_host(p, "api.example.com") == "api.example.com"
    assert _rule_host(p, "API.EXAMPLE.com.") == "api.example.com"
    v = P.decide(p, "api.example.com..", CHAIN, NOW, True)  # only one dot is stripped
    assert v.allowed is False and v.reason == P.INVALID_HOST


def test_invalid_hosts_are_blocked():
    p = _policy([_dom("example.com", include_subdomains=True)])
    for host in ("", ".", ".example.com", "a..example.com"):
        v = P.decide(p, host, CHAIN, NOW, True)
        assert v.allowed is False, host
        assert v.reason == P.INVALID_HOST, host


def test_a_host_that_c_code_would_read_differently_is_blocked():
    # "api.example.com\0..." is one string here but "api.example.com" to getaddrinfo and mbedTLS:
    # without this check it would miss the pinned rule and get plain CA validation
    p = _policy([_dom("api.example.com")])
    for host in ("api.example.com\x00", "api.example.com\x00.evil.test", "api.example.com/x", "api example.com"):
        v = P.decide(p, host, CHAIN, NOW, True)
        assert v.allowed is False and v.reason == P.INVALID_HOST, repr(host)


def test_include_subdomains_matches_host_and_every_level_below():
    p = _policy([_dom("foo.com", include_subdomains=True)])
    assert _rule_host(p, "foo.com") == "foo.com"
    assert _rule_host(p, "a.foo.com") == "foo.com"
    assert _rule_host(p, "a.b.c.foo.com") == "foo.com"
    assert _rule_host(p, "FOO.com.") == "foo.com"


def test_suffix_confusion_is_not_a_match():
    p = _policy([_dom("foo.com", include_subdomains=True), _dom("domain.com", include_subdomains=True)])
    for host in ("bar.foo.com.notfoo.com", "notfoo.com", "xfoo.com", "foo.com.evil", "oo.com",
                 "test-domain.com", "a.test-domain.com", "com", "domain.co"):
        assert _rule_host(p, host) is None, host
    q = _policy([_dom("*.foo.com"), _dom("**.bar.com")])
    for host in ("xfoo.com", "a.xfoo.com", "a.foo.com.evil", "xbar.com", "a.xbar.com", "a.bar.com.x"):
        assert _rule_host(q, host) is None, host


def test_exact_rule_does_not_cover_subdomains():
    p = _policy([_dom("foo.com")])
    assert _rule_host(p, "a.foo.com") is None
    assert _rule_host(p, "foo.com") == "foo.com"


def test_one_label_wildcard():
    p = _policy([_dom("*.foo.com")])
    assert _rule_host(p, "a.foo.com") == "*.foo.com"
    assert _rule_host(p, "foo.com") is None
    assert _rule_host(p, "a.b.foo.com") is None


def test_any_labels_wildcard():
    p = _policy([_dom("**.foo.com")])
    assert _rule_host(p, "a.foo.com") == "**.foo.com"
    assert _rule_host(p, "a.b.c.foo.com") == "**.foo.com"
    assert _rule_host(p, "foo.com") is None


def test_most_specific_rule_wins():
    p = _policy([
        _dom("foo.com", include_subdomains=True),
        _dom("**.b.foo.com"),
        _dom("*.b.foo.com"),
        _dom("x.b.foo.com"),
        _dom("c.foo.com"),
    ])
    assert _rule_host(p, "x.b.foo.com") == "x.b.foo.com"  # exact beats "*."
    assert _rule_host(p, "y.b.foo.com") == "*.b.foo.com"  # "*." beats "**."
    assert _rule_host(p, "z.y.b.foo.com") == "**.b.foo.com"  # longest base among suffix rules
    assert _rule_host(p, "b.foo.com") == "foo.com"  # "**." does not cover its base
    assert _rule_host(p, "c.foo.com") == "c.foo.com"
    assert _rule_host(p, "d.c.foo.com") == "foo.com"  # exact c.foo.com does not cover below it
    assert _rule_host(p, "foo.com") == "foo.com"


def test_one_label_wildcard_beats_include_subdomains_on_same_base():
    p = _policy([_dom("foo.com", include_subdomains=True), _dom("*.foo.com")])
    assert _rule_host(p, "a.foo.com") == "*.foo.com"
    assert _rule_host(p, "a.b.foo.com") == "foo.com"
    assert _rule_host(p, "foo.com") == "foo.com"


def test_longer_include_subdomains_base_beats_shorter():
    p = _policy([_dom("**.com.example"), _dom("api.com.example", include_subdomains=True)])
    assert _rule_host(p, "x.api.com.example") == "api.com.example"
    assert _rule_host(p, "x.web.com.example") == "**.com.example"


def test_ip_literals_match_exactly():
    p = _policy([_dom("10.0.0.5"), _dom("FD00::1")])
    assert _rule_host(p, "10.0.0.5") == "10.0.0.5"
    assert _rule_host(p, "10.0.0.5.") == "10.0.0.5"
    assert _rule_host(p, "fd00::1") == "fd00::1"
    assert _rule_host(p, "1.10.0.0.5") is None
    assert _rule_host(p, "10.0.0.50") is None


def test_other_spellings_of_a_pinned_address_never_skip_its_rule():
    # getaddrinfo (lwIP's ipaddr_aton, like inet_aton) reads each of these as a pinned address:
    # compared as text they would match no rule and get plain CA validation.
    p = _policy([_dom("10.0.0.5"), _dom("127.0.0.1"), _dom("fd00::1")])
    for host in ("127.1", "0x7f.0.0.1", "0177.0.0.1", "2130706433", "10.0.0.05", "10.0.5", "0x0a000005",
                 "10.0.0.0x5", "127.0.0.1.0x0", "a.0x1f", "1.2.3.4.5", "api.example.com:443", "10.0.0.5:443",
                 "[fd00::1]", "fd00::1%eth0", "fd00::g", "fd00:::1", "1:2:3:4:5:6:7:8:9", "::ffff:10.0.0.05"):
        v = P.decide(p, host, CHAIN, NOW, True)
        assert v.allowed is False and v.reason == P.INVALID_HOST, host
    # spellings of the same address in canonical form (RFC 5952) find the rule
    for host, canonical in (("fd00:0::1", "fd00::1"), ("FD00:0:0:0:0:0:0:0001", "fd00::1"),
                            ("::ffff:10.0.0.5", "10.0.0.5"), ("::FFFF:a00:5", "10.0.0.5"),
                            ("0:0:0:0:0:ffff:127.0.0.1", "127.0.0.1")):
        v = P.decide(p, host, CHAIN, NOW, True)
        assert v.host == canonical and v.rule is not None and v.rule.host == canonical, host
        assert v.reason == P.MATCHED, host


def test_canonical_host():
    for text, canonical in (("API.Example.com.", "api.example.com"), ("10.0.0.5", "10.0.0.5"),
                            ("1:0:0:1:0:0:0:1", "1:0:0:1::1"), ("1:0:0:0:1:0:0:1", "1::1:0:0:1"),
                            ("1:0:1:0:1:0:1:0", "1:0:1:0:1:0:1:0"), ("::", "::"), ("::1", "::1"),
                            ("2001:DB8:0:0:1::1", "2001:db8::1:0:0:1"), ("64:ff9b::1.2.3.4", "64:ff9b::102:304"),
                            ("1-2.example", "1-2.example"), ("3com.com", "3com.com")):
        assert P.canonical_host(text) == canonical, text
    for text in ("", ".", "a..b", "-" * 64 + ".com", "a" * 250 + ".com", None, 5):
        assert P.canonical_host(text) is None, text


def test_rules_are_canonicalised_and_non_canonical_ip_rules_refused():
    p = _policy([_dom("fd00:0::1"), _dom("::ffff:10.0.0.5")])
    assert [r.host for r in p.rules] == ["fd00::1", "10.0.0.5"]
    e = _err({"domains": [_dom("fd00::1"), _dom("FD00:0:0::1")]})
    assert e.field == "domains[1].host" and "same names" in e.reason
    for host in ("127.1", "0x7f.0.0.1", "2130706433", "10.0.0.05", "api.example.com:443", "fd00::1%1"):
        e = _dom_err(_dom(host))
        assert e.field == "domains[0].host", host


# --- decision ---------------------------------------------------------------------------


def test_no_rule_ca_allows_only_verified():
    p = _policy([_dom("foo.com")])
    v = P.decide(p, "other.com", CHAIN, NOW, True)
    assert v.allowed is True and v.reason == P.NO_POLICY and v.rule is None
    v = P.decide(p, "other.com", CHAIN, NOW, False)
    assert v.allowed is False and v.reason == P.UNVERIFIED


def test_no_rule_block():
    p = _policy([_dom("foo.com")], unpinned="block")
    v = P.decide(p, "other.com", CHAIN, NOW, True)
    assert v.allowed is False and v.reason == P.NO_POLICY_BLOCKED
    assert P.decide(p, "foo.com", CHAIN, NOW, True).allowed is True


def test_mismatch_blocks_when_enforced():
    p = _policy([_dom("foo.com", pins=(BACKUP,))])
    v = P.decide(p, "foo.com", CHAIN, NOW, True)
    assert v.allowed is False and v.reason == P.MISMATCH
    assert v.matched_pin is None and v.matched_depth == -1


def test_lowest_depth_match_wins_in_any_chain_order():
    p = _policy([_dom("foo.com", pins=(ROOT, INTER, LEAF))])
    v = P.decide(p, "foo.com", [(2, ROOT), (1, INTER), (0, LEAF)], NOW, True)
    assert v.matched_depth == 0 and v.matched_pin == LEAF
    v = P.decide(p, "foo.com", [(2, ROOT), (1, INTER), (0, BACKUP)], NOW, True)
    assert v.matched_depth == 1 and v.matched_pin == INTER


def test_intermediate_pin_counts_only_when_verified():
    p = _policy([_dom("foo.com", pins=(INTER,))])
    v = P.decide(p, "foo.com", CHAIN, NOW, True)
    assert v.allowed is True and v.reason == P.MATCHED and v.matched_depth == 1
    v = P.decide(p, "foo.com", CHAIN, NOW, False)
    assert v.allowed is False and v.reason == P.MISMATCH and v.matched_pin is None
    q = _policy([_dom("foo.com", pins=(ROOT,))])
    assert P.decide(q, "foo.com", CHAIN, NOW, False).allowed is False


def test_leaf_pin_matches_unverified():
    p = _policy([_dom("foo.com", pins=(LEAF,))])
    v = P.decide(p, "foo.com", CHAIN, NOW, False)
    assert v.allowed is True and v.reason == P.MATCHED and v.matched_depth == 0
    assert v.verified is False


def test_report_only_mismatch():
    p = _policy([_dom("foo.com", pins=(BACKUP,), enforce=False)])
    v = P.decide(p, "foo.com", CHAIN, NOW, True)
    assert v.allowed is True and v.reason == P.REPORT_ONLY_MISMATCH
    # report-only still needs CA validation
    v = P.decide(p, "foo.com", CHAIN, NOW, False)
    assert v.allowed is False and v.reason == P.UNVERIFIED
    # and a match is still a match
    q = _policy([_dom("foo.com", enforce=False)])
    assert P.decide(q, "foo.com", CHAIN, NOW, False).reason == P.MATCHED


def test_expired_fallback_uses_ca_validation():
    # trusted time (authenticated evidence: a bundle's issue time, a pinned server's time)
    # confirms the expiry; the clock agrees
    p = _policy([_dom("foo.com", pins=(BACKUP,), on_expiry="fallback")])
    v = P.decide(p, "foo.com", CHAIN, EXPIRES, True, 0, EXPIRES)  # expiry is inclusive
    assert v.allowed is True and v.reason == P.EXPIRED_FALLBACK and v.expired is True
    v = P.decide(p, "foo.com", CHAIN, EXPIRES + 1, False, 0, EXPIRES + 1)
    assert v.allowed is False and v.reason == P.UNVERIFIED and v.expired is True
    v = P.decide(p, "foo.com", CHAIN, EXPIRES - 1, True, 0, EXPIRES - 1)
    assert v.allowed is False and v.reason == P.MISMATCH and v.expired is False


def test_a_clock_past_expiry_alone_does_not_end_pinning():
    # An on-path attacker answers SNTP with a time past `expires`: the clock reads EXPIRES + 60,
    # but nothing authenticated says so (trusted time: the floor, NOW). The pins stay in force.
    p = _policy([_dom("foo.com", pins=(BACKUP,))])
    v = P.decide(p, "foo.com", CHAIN, EXPIRES + 60, True, NOW)
    assert v.allowed is False and v.reason == P.EXPIRY_UNCONFIRMED
    assert v.expired is True and v.clock_trusted is True
    v = P.decide(p, "foo.com", CHAIN, EXPIRES + 60, True, NOW, NOW + 3600)  # newer, still short of it
    assert v.allowed is False and v.reason == P.EXPIRY_UNCONFIRMED
    # a pinned key still connects, whatever the clock says
    q = _policy([_dom("foo.com")])
    assert P.decide(q, "foo.com", CHAIN, EXPIRES + 60, True, NOW).reason == P.MATCHED
    # on_expiry "enforce" never falls back: a plain mismatch, as before
    r = _policy([_dom("foo.com", pins=(BACKUP,), on_expiry="enforce")])
    assert P.decide(r, "foo.com", CHAIN, EXPIRES + 60, True, NOW).reason == P.MISMATCH


def test_trusted_time_past_expiry_falls_back_even_with_the_clock_unset():
    p = _policy([_dom("foo.com", pins=(BACKUP,))])
    for now in (None, EXPIRES - 5, EXPIRES + 5):  # authenticated time is enough on its own
        v = P.decide(p, "foo.com", CHAIN, now, True, 0, EXPIRES)
        assert v.allowed is True and v.reason == P.EXPIRED_FALLBACK and v.expired is True, now
    # a trusted time below the floor counts as the floor
    v = P.decide(p, "foo.com", CHAIN, EXPIRES + 1, True, EXPIRES, 5)
    assert v.reason == P.EXPIRED_FALLBACK


def test_clock_lead_bounds_how_far_the_clock_may_run_ahead_of_trusted_time():
    p = policy_from_obj({"clock_lead": 3600, "domains": [_dom("foo.com", pins=(BACKUP,))]})
    assert p.clock_lead == 3600 and _policy([]).clock_lead == 0
    v = P.decide(p, "foo.com", CHAIN, EXPIRES + 60, True, EXPIRES - 3600)
    assert v.allowed is True and v.reason == P.EXPIRED_FALLBACK
    v = P.decide(p, "foo.com", CHAIN, EXPIRES + 60, True, EXPIRES - 3601)
    assert v.allowed is False and v.reason == P.EXPIRY_UNCONFIRMED
    # the lead only lets a trusted clock confirm; the clock below the expiry confirms nothing
    v = P.decide(p, "foo.com", CHAIN, EXPIRES - 1, True, EXPIRES - 60)
    assert v.reason == P.MISMATCH and v.expired is False


def test_clock_lead_invalid():
    for bad in (-1, True, "3600", 1.5, P.MAX_CLOCK_LEAD + 1):
        e = _err({"domains": [], "clock_lead": bad})
        assert e.field == "clock_lead", bad
    assert policy_from_obj({"domains": [], "clock_lead": P.MAX_CLOCK_LEAD}).clock_lead == P.MAX_CLOCK_LEAD


def test_expired_enforce_keeps_checking_pins():
    p = _policy([_dom("foo.com", pins=(BACKUP,), on_expiry="enforce")])
    v = P.decide(p, "foo.com", CHAIN, EXPIRES + 1, True)
    assert v.allowed is False and v.reason == P.MISMATCH and v.expired is True
    q = _policy([_dom("foo.com", on_expiry="enforce")])
    v = P.decide(q, "foo.com", CHAIN, EXPIRES + 1, True)
    assert v.allowed is True and v.reason == P.MATCHED and v.expired is True


def test_default_on_expiry_is_fallback():
    p = _policy([_dom("foo.com", pins=(BACKUP,))])
    assert p.rules[0].on_expiry == P.ON_EXPIRY_FALLBACK
    assert P.decide(p, "foo.com", CHAIN, EXPIRES, True, 0, EXPIRES).reason == P.EXPIRED_FALLBACK


def test_unknown_clock_is_untrusted():
    p = _policy([_dom("foo.com", pins=(BACKUP,))])
    v = P.decide(p, "foo.com", CHAIN, None, True)
    assert v.allowed is False and v.reason == P.CLOCK_UNTRUSTED
    assert v.clock_trusted is False and v.expired is False
    q = _policy([_dom("foo.com")])
    v = P.decide(q, "foo.com", CHAIN, None, True)
    assert v.allowed is True and v.reason == P.MATCHED and v.clock_trusted is False


def test_clock_below_time_floor_is_untrusted():
    p = _policy([_dom("foo.com", pins=(BACKUP,))])
    # the clock is below the floor, so it is not believed and expiry is unknown
    v = P.decide(p, "foo.com", CHAIN, NOW - 10, True, time_floor=NOW)
    assert v.allowed is False and v.reason == P.CLOCK_UNTRUSTED and v.expired is False
    assert v.clock_trusted is False
    # a floor past the expiry is authenticated time: it proves the expiry without the clock
    v = P.decide(p, "foo.com", CHAIN, EXPIRES + 10, True, time_floor=EXPIRES + 100)
    assert v.clock_trusted is False and v.reason == P.EXPIRED_FALLBACK and v.expired is True
    v = P.decide(p, "foo.com", CHAIN, EXPIRES + 100, True, time_floor=EXPIRES + 100)
    assert v.clock_trusted is True and v.reason == P.EXPIRED_FALLBACK


def test_untrusted_clock_with_on_expiry_enforce_is_a_plain_mismatch():
    # expiry would change nothing, so the clock is not the reason
    p = _policy([_dom("foo.com", pins=(BACKUP,), on_expiry="enforce")])
    assert P.decide(p, "foo.com", CHAIN, None, True).reason == P.MISMATCH


def test_verdict_to_obj_is_json_with_text_pins():
    d = _dom("*.foo.com", pins=(INTER, LEAF))
    d["pins"][1]["label"] = "primary"
    p = _policy([d])
    v = P.decide(p, "a.foo.com", CHAIN, NOW, True)
    obj = json.loads(json.dumps(v.to_obj()))
    assert obj["allowed"] is True
    assert obj["reason"] == "matched"
    assert obj["host"] == "a.foo.com"
    assert obj["matched_pin"] == pin_to_text(LEAF)
    assert obj["matched_label"] == "primary"
    assert obj["matched_depth"] == 0
    assert obj["clock_trusted"] is True and obj["expired"] is False and obj["verified"] is True
    assert obj["chain"] == [{"depth": d, "pin": pin_to_text(x)} for d, x in CHAIN]
    rule = obj["rule"]
    assert rule["host"] == "*.foo.com" and rule["include_subdomains"] is False
    assert rule["enforce"] is True and rule["expires"] == EXPIRES and rule["on_expiry"] == "fallback"
    assert rule["pins"] == [{"pin": pin_to_text(INTER)}, {"pin": pin_to_text(LEAF), "label": "primary"}]
    v = P.decide(p, "other.com", CHAIN, None, False)
    obj = v.to_obj()
    assert obj["rule"] is None and obj["matched_pin"] is None and obj["matched_depth"] == -1


def test_labels_and_sha256_prefix_accepted():
    d = _dom("foo.com")
    d["pins"] = [{"pin": "sha256/" + pin_to_text(LEAF), "label": "primary"}]
    rule = _policy([d]).rules[0]
    assert rule.pins == [LEAF] and rule.labels == ["primary"]


def test_decide_allocates_under_2kb():
    try:
        import micropython  # noqa: F401  (only the VM/device has gc.mem_alloc)
    except ImportError:
        skip("gc.mem_alloc exists on MicroPython only")
    import gc

    p = _policy([_dom("foo.com", include_subdomains=True), _dom("*.bar.foo.com"), _dom("x.example.com")])
    host = "deep.a.b.c.foo.com"
    P.decide(p, host, CHAIN, NOW, True)
    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()
        P.decide(p, host, CHAIN, NOW, True)
        used = gc.mem_alloc() - before
    finally:
        gc.enable()
    assert used < 2048, used


# --- validation: one test per invalid field, the field named in the message ----------------


def _err(obj):
    e = raises(P.PolicyError, policy_from_obj, obj)
    assert str(e) == e.field + ": " + e.reason
    return e


def _dom_err(domain, index=0):
    return _err({"domains": [_dom("ok%d.example.com" % i) for i in range(index)] + [domain]})


def test_policy_not_an_object():
    assert _err([]).field == "policy"


def test_unknown_top_level_field():
    e = _err({"domains": [], "pinz": 1})
    assert e.field == "pinz" and "unknown" in e.reason


def test_domains_missing_or_not_a_list():
    assert _err({}).field == "domains"
    assert _err({"domains": {}}).field == "domains"


def test_unpinned_invalid():
    e = _err({"domains": [], "unpinned": "allow"})
    assert e.field == "unpinned" and "ca" in e.reason


def test_empty_policy_is_valid():
    p = policy_from_obj({"domains": []})
    assert p.unpinned == "ca" and p.rules == []


def test_domain_not_an_object():
    assert _dom_err("foo.com", 1).field == "domains[1]"


def test_domain_unknown_field():
    e = _dom_err(_dom("foo.com", includeSubdomains=True), 2)
    assert e.field == "domains[2].includeSubdomains" and "unknown" in e.reason


def test_host_missing_or_not_a_string():
    d = _dom("foo.com")
    del d["host"]
    assert _dom_err(d).field == "domains[0].host"
    e = _dom_err(_dom(5))
    assert e.field == "domains[0].host" and "string" in e.reason


def test_host_empty():
    for host in ("", "."):
        e = _dom_err(_dom(host))
        assert e.field == "domains[0].host" and "empty" in e.reason, host


def test_host_invalid_characters_and_labels():
    for host in ("foo com", "foo/com", "f\u00f6o.com", "foo..com", ".foo.com", "a" * 64 + ".com"):
        assert _dom_err(_dom(host)).field == "domains[0].host", host


def test_host_wildcard_elsewhere_refused():
    for host in ("a.*.foo.com", "*foo.com", "f*.foo.com", "foo.*", "***.foo.com", "*.*.foo.com", "*.", "*"):
        e = _dom_err(_dom(host))
        assert e.field == "domains[0].host" and "wildcard" in e.reason, host


def test_host_wildcard_on_top_level_domain_refused():
    for d in (_dom("*.com"), _dom("**.com"), _dom("com", include_subdomains=True)):
        e = _dom_err(d)
        assert e.field == "domains[0].host" and "top-level" in e.reason


def test_host_wildcard_with_include_subdomains_refused():
    e = _dom_err(_dom("*.foo.com", include_subdomains=True))
    assert e.field == "domains[0].host" and "include_subdomains" in e.reason


def test_ip_literal_wildcard_or_subdomains_refused():
    for d in (_dom("*.0.0.5"), _dom("**.10.0.0.5"), _dom("10.0.0.5", include_subdomains=True)):
        e = _dom_err(d)
        assert e.field == "domains[0].host" and "IP" in e.reason


def test_invalid_ip_literals_refused():
    for host in ("10.0.0.256", "010.0.0.1", "10.0.0", "1.2.3.4.5", "foo.123", "[fd00::1]", "fd00:1", "fd00::g"):
        e = _dom_err(_dom(host))
        assert e.field == "domains[0].host" and "IP" in e.reason, host


def test_duplicate_hosts_refused():
    for a, b in (
        (_dom("foo.com"), _dom("FOO.com.")),
        (_dom("foo.com"), _dom("foo.com", include_subdomains=True)),
        (_dom("*.foo.com"), _dom("*.foo.com")),
        (_dom("**.foo.com"), _dom("foo.com", include_subdomains=True)),
    ):
        e = _err({"domains": [_dom("x.example.com"), a, b]})
        assert e.field == "domains[2].host" and "domains[1]" in e.reason


def test_include_subdomains_not_a_boolean():
    assert _dom_err(_dom("foo.com", include_subdomains="yes")).field == "domains[0].include_subdomains"


def test_enforce_not_a_boolean():
    e = _dom_err(_dom("foo.com", enforce=1))
    assert e.field == "domains[0].enforce" and "boolean" in e.reason


def test_on_expiry_invalid():
    e = _dom_err(_dom("foo.com", on_expiry="allow"))
    assert e.field == "domains[0].on_expiry" and "fallback" in e.reason


def test_expires_missing():
    d = _dom("foo.com")
    del d["expires"]
    e = _dom_err(d)
    assert e.field == "domains[0].expires" and "missing" in e.reason


def test_expires_not_an_integer():
    for bad in ("2030-01-01", 1.5, True, None):
        e = _dom_err(_dom("foo.com", expires=bad))
        assert e.field == "domains[0].expires" and "integer" in e.reason, bad


def test_expires_out_of_range():
    for bad in (-1, 1767225600000):  # the second is milliseconds
        e = _dom_err(_dom("foo.com", expires=bad))
        assert e.field == "domains[0].expires" and "range" in e.reason, bad


def test_pins_missing_not_a_list_or_empty():
    d = _dom("foo.com")
    del d["pins"]
    assert _dom_err(d).field == "domains[0].pins"
    d["pins"] = "abc"
    assert _dom_err(d).field == "domains[0].pins"
    e = _dom_err(_dom("foo.com", pins=()))
    assert e.field == "domains[0].pins" and "empty" in e.reason


def test_pin_entry_not_an_object():
    d = _dom("foo.com")
    d["pins"].append(pin_to_text(ROOT))
    assert _dom_err(d).field == "domains[0].pins[2]"


def test_pin_entry_unknown_field():
    d = _dom("foo.com")
    d["pins"][1]["sha"] = "x"
    assert _dom_err(d).field == "domains[0].pins[1].sha"


def test_pin_missing_or_not_a_string():
    d = _dom("foo.com")
    d["pins"][0] = {"label": "primary"}
    assert _dom_err(d).field == "domains[0].pins[0].pin"
    d["pins"][0] = {"pin": 5}
    assert _dom_err(d).field == "domains[0].pins[0].pin"


def test_pin_invalid():
    d = _dom("foo.com")
    d["pins"][1]["pin"] = pin_to_text(LEAF)[:-4] + "===="
    e = _dom_err(d, 2)
    assert e.field == "domains[2].pins[1].pin"
    assert str(e).startswith("domains[2].pins[1].pin: ")


def test_pin_duplicate():
    d = _dom("foo.com", pins=(LEAF, BACKUP, LEAF))
    d["pins"][2]["pin"] = "sha256/" + pin_to_text(LEAF)
    e = _dom_err(d)
    assert e.field == "domains[0].pins[2].pin" and "pins[0]" in e.reason


def test_pin_label_invalid():
    for bad in (5, "", "x" * 65):
        d = _dom("foo.com")
        d["pins"][0]["label"] = bad
        assert _dom_err(d).field == "domains[0].pins[0].label", bad


def test_policy_error_is_a_value_error():
    assert issubclass(P.PolicyError, ValueError)


def test_ip_literals_take_ascii_digits_only():
    # CPython's str.isdigit() accepts "\u00b2" (superscript two), which int() then refuses
    for host in ("1.2.3.\u00b2", "1.2.3.\u0663"):
        e = raises(P.PolicyError, policy_from_obj, {"domains": [_dom(host)]})
        assert "domains[0].host" in str(e), str(e)
