# pinagent.agent: boot through the store, time, pinned connections with reports (helpers:
# agent_support.py; uploads, reports and test_connect over the service: test_agent_service.py).
# Runs unchanged under CPython and on the MicroPython VM.

import hashlib

from agent_support import (
    BACKUP,
    EXPIRES,
    FLEET,
    GOOD,
    NOW,
    V1_ISSUED,
    WRONG,
    FakeTls,
    _agent,
    _board,
    _bundle,
    _reports,
)
from support import raises, read_vector

from pinagent import connect as C
from pinagent import policy as P
from pinagent import store as S

# ---- boot and identify


def test_boot_loads_the_provisioned_bundle_and_identifies():
    a = _agent(_board("v1.bin"))
    info = a.identify()
    assert info["mode"] == S.MODE_OK and info["bundle_version"] == 1 and info["fleet"] == FLEET
    assert info["bundle_sha256"] == hashlib.sha256(_bundle("v1.bin")).digest().hex()
    assert info["device_id"] == "a0b1c2d3e4f5" and info["format"] == 1 and info["agent"]
    assert info["mac"] == "a0:b1:c2:d3:e4:f5"  # the base MAC: the registry joins the line's records by it
    assert info["clock"] == "trusted" and info["time_floor"] == V1_ISSUED and info["now"] == NOW
    assert info["reports"] == 0 and info["trust"] and info["problems"] == [] and info["free"] > 0


def test_boot_with_the_clock_at_2000_keeps_the_installed_bundle():
    a = _agent(_board("v1.bin"), clock=946684800 + 5)  # after power loss: the ESP32's epoch
    info = a.identify()
    assert info["mode"] == S.MODE_OK and info["bundle_version"] == 1 and info["clock"] == "floor"
    a = _agent(_board("v1.bin"), clock=None)
    assert a.identify()["clock"] == "unset" and a.state.mode == S.MODE_OK


# ---- connect


def test_connect_with_the_pinned_key_returns_the_socket():
    tls = FakeTls()
    tls.chains["chain-leaf.example"] = GOOD
    a = _agent(_board("v1.bin"), tls=tls)
    sock = a.connect("chain-leaf.example", 443)
    assert sock is tls.sockets[0] and a.last_verdict.reason == P.MATCHED
    host, port, timeout, cas = tls.calls[0]
    assert cas == [read_vector("certs/chain-root.der")] and timeout == 10 and port == 443
    assert _reports(a) == []
    tls.chains["chain-leaf.example"] = BACKUP  # the server moved to its backup key
    a.connect("chain-leaf.example", 443)
    assert a.last_verdict.reason == P.MATCHED and a.last_verdict.rule.label_of(a.last_verdict.matched_pin) == "backup"


def test_blocked_connection_raises_with_the_verdict_and_records_a_report():
    tls = FakeTls()
    tls.chains["chain-leaf.example"] = WRONG
    a = _agent(_board("v1.bin"), tls=tls)
    e = raises(C.PinBlocked, a.connect, "chain-leaf.example", 8443, 3)
    assert e.verdict.reason == P.MISMATCH and tls.sockets == [] and tls.calls[0][2] == 3
    reps = _reports(a)
    assert len(reps) == 1
    r = reps[0]
    assert r["hostname"] == "chain-leaf.example" and r["port"] == 8443 and r["validation-result"] == "mismatch"
    assert r["device-id"] == "a0b1c2d3e4f5" and r["bundle-version"] == 1 and r["allowed"] is False
    assert r["date-time"] == "2026-01-01T00:00:00Z"
    assert [c["depth"] for c in r["served-certificate-chain"]] == [0, 1, 2]
    assert r["served-certificate-chain"][1]["subject"] == "fleetpin chain intermediate"
    assert a.identify()["reports"] == 1
    raises(C.PinBlocked, a.connect, "chain-leaf.example", 8443)  # the same failure again: merged
    assert _reports(a)[0]["count"] == 2


def test_report_only_domain_connects_and_records_the_mismatch():
    tls = FakeTls()
    tls.chains["report.example"] = GOOD
    a = _agent(_board("v1.bin"), tls=tls)
    assert a.connect("report.example", 443) is tls.sockets[0]
    assert a.last_verdict.reason == P.REPORT_ONLY_MISMATCH
    r = _reports(a)[0]
    assert r["allowed"] is True and r["validation-result"] == "report_only_mismatch" and r["enforce-pinning"] is False


def test_expiry_policies_and_unpinned_hosts():
    tls = FakeTls()
    for host in ("expired.example", "strict.example", "elsewhere.example"):
        tls.chains[host] = GOOD
    a = _agent(_board("v1.bin"), tls=tls)
    a.connect("expired.example", 443)  # pins expired, on_expiry fallback: CA validation decides
    assert a.last_verdict.reason == P.EXPIRED_FALLBACK
    e = raises(C.PinBlocked, a.connect, "strict.example", 443)  # on_expiry enforce
    assert e.reason == P.MISMATCH and e.verdict.expired
    a.connect("elsewhere.example", 443)  # no rule, unpinned "ca"
    assert a.last_verdict.reason == P.NO_POLICY


def test_clock_below_the_floor_is_not_believed():
    tls = FakeTls()
    tls.chains["chain-leaf.example"] = WRONG
    a = _agent(_board("v1.bin"), clock=946684800 + 5, tls=tls)
    e = raises(C.PinBlocked, a.connect, "chain-leaf.example", 443)
    assert e.reason == P.CLOCK_UNTRUSTED and not e.verdict.clock_trusted
    assert _reports(a)[0]["date-time"] is None  # a 2000 date would mislead
    # expired.example's pins expired before v1 was issued: the signed issue time (the floor)
    # proves it, whatever the clock reads
    tls.chains["expired.example"] = GOOD
    a.connect("expired.example", 443)
    assert a.last_verdict.reason == P.EXPIRED_FALLBACK and not a.last_verdict.clock_trusted


def test_a_spoofed_clock_does_not_end_pinning_but_a_pinned_servers_time_does():
    # chain-leaf.example: on_expiry fallback, expires EXPIRES. The clock is set (SNTP answered by
    # an attacker) to 60 s past it; the installed bundle and the floor say NOW - 3600.
    tls = FakeTls()
    tls.chains["chain-leaf.example"] = WRONG  # a key the bundle does not pin, under its CA
    tls.chains["elsewhere.example"] = GOOD
    a = _agent(_board("v1.bin"), clock=EXPIRES + 60, tls=tls)
    e = raises(C.PinBlocked, a.connect, "chain-leaf.example", 443)
    assert e.reason == P.EXPIRY_UNCONFIRMED and e.verdict.expired and e.verdict.clock_trusted
    assert _reports(a)[0]["validation-result"] == "expiry_unconfirmed"
    assert a.identify()["trusted_time"] == V1_ISSUED
    # a time from a server reached without a pin match is not evidence (it may be the attacker)
    sock, check = a.open("elsewhere.example", 443)
    assert check.verdict.reason == P.NO_POLICY
    assert a.server_time(check, EXPIRES + 60) is False and a.identify()["trusted_time"] == V1_ISSUED
    assert a.server_time(None, EXPIRES + 60) is False
    # the real server (pinned key) says what time it is: that is authenticated
    tls.chains["chain-leaf.example"] = GOOD
    sock, check = a.open("chain-leaf.example", 443)
    assert check.verdict.reason == P.MATCHED
    assert a.server_time(check, "soon") is False and a.server_time(check, -1) is False
    assert a.server_time(check, EXPIRES + 30) is True
    assert a.identify()["trusted_time"] == EXPIRES + 30
    tls.chains["chain-leaf.example"] = WRONG  # the server rotated to a key v1 does not pin
    a.connect("chain-leaf.example", 443)
    assert a.last_verdict.reason == P.EXPIRED_FALLBACK
    # a verdict that fell back is not evidence; trusted time only rises
    assert a.server_time(a.last_verdict, EXPIRES + 10 ** 6) is False
    assert a.server_time(check, EXPIRES) is True and a.identify()["trusted_time"] == EXPIRES + 30


def test_tls_failure_and_network_failure():
    tls = FakeTls()
    tls.chains["chain-leaf.example"] = GOOD
    tls.after["chain-leaf.example"] = ValueError("The certificate Common Name (CN) does not match")
    a = _agent(_board("v1.bin"), tls=tls)
    e = raises(C.TlsRefused, a.connect, "chain-leaf.example", 443)
    assert e.reason == C.TLS_FAILED and "Common Name" in e.detail
    r = _reports(a)[0]
    assert r["validation-result"] == "tls_failed" and "Common Name" in r["detail"]
    e = raises(C.NetworkError, a.connect, "nowhere.example", 443)
    assert e.verdict is None and len(_reports(a)) == 1  # nothing was decided: no report


def test_reboot_and_trusted_time():
    ffs = _board("v1.bin")
    a = _agent(ffs)
    a.reboot()
    assert a.reboot_requested
    assert not a.trusted_time(V1_ISSUED + 60)  # too close to the floor: no flash write
    assert a.trusted_time(NOW + 7200)
    assert _agent(ffs.reboot(), clock=NOW).identify()["clock"] == "floor"  # NOW is below it now
