# pinagent.agent's reports over the serial service (read, acknowledged, never erased), what a
# session leaves behind when it ends, and test_connect (helpers: agent_support.py). Runs
# unchanged under CPython and on the MicroPython VM.

import json
import struct

from agent_support import (
    E_CONNECT,
    GOOD,
    WRONG,
    FakeTls,
    _agent,
    _board,
    _bundle,
    _refused,
    _reports,
    _upload,
)
from support import raises

from pinagent import agent  # noqa: F401  (named so the VM runner imports it in a call of its own)
from pinagent import connect as C
from pinagent import service as SV


def _log(agent):
    return bytes(agent.read_reports(0, 100000)[1])


def test_reports_are_acknowledged_not_erased():
    tls = FakeTls()
    tls.chains["chain-leaf.example"] = WRONG
    a = _agent(_board("v1.bin"), tls=tls)
    assert a.ack_reports(0) == {"acked": 0, "pending": 0}  # nothing yet: fine
    raises(C.PinBlocked, a.connect, "chain-leaf.example", 443)
    [r] = _reports(a)
    assert a.identify()["reports"] == 1
    assert a.ack_reports(r["seq"]) == {"acked": r["seq"], "pending": 0}
    assert _reports(a) == [r] and a.identify()["reports"] == 0 and a.identify()["reports_kept"] == 1
    raises(C.PinBlocked, a.connect, "chain-leaf.example", 443)  # seen again: pending again
    assert a.identify()["reports"] == 1 and _reports(a)[0]["count"] == 2
    e = _refused(a.read_reports, 10000, 10)
    assert e.code == 7  # E_RANGE


def test_no_serial_command_destroys_reports():
    # The serial console has no authentication: anyone with a cable must not be able to wipe the
    # traces of an interception, whatever they send.
    tls = FakeTls()
    tls.chains["chain-leaf.example"] = WRONG
    a = _agent(_board("v1.bin"), tls=tls)
    raises(C.PinBlocked, a.connect, "chain-leaf.example", 443)
    before = _reports(a)
    svc = SV.Service(a)
    log = _log(a)
    bodies = (b"", struct.pack("<I", len(log)), struct.pack("<I", 0), struct.pack("<I", 0xFFFFFFFF),
              struct.pack("<IH", 0, 512), b"\x00" * 36)
    for op in sorted(SV.OPS):
        if op in (SV.OP_REBOOT, SV.OP_TEST_CONNECT):
            continue
        for body in bodies:
            svc.dispatch(op, memoryview(body))
            assert [x["key"] for x in _reports(a)] == [x["key"] for x in before], (op, body)
    op, answer = svc.dispatch(SV.OP_CLEAR_REPORTS, memoryview(struct.pack("<I", len(_log(a)))))
    assert op == SV.OP_ERROR and answer[0] == SV.E_UNSUPPORTED and b"ACK_REPORTS" in bytes(answer)
    op, answer = svc.dispatch(SV.OP_ACK_REPORTS, memoryview(struct.pack("<I", before[0]["seq"])))
    assert op == SV.OP_ACK_REPORTS and json.loads(bytes(answer)) == {"acked": before[0]["seq"], "pending": 0}
    assert len(_reports(a)) == 1


def test_test_connect_reaches_only_hosts_the_bundle_has_a_rule_for():
    tls = FakeTls()
    for host in ("elsewhere.example", "chain-leaf.example"):
        tls.chains[host] = GOOD
    a = _agent(_board("v1.bin"), tls=tls)
    # v1's unpinned "ca" lets the application reach elsewhere.example; the serial port must not
    # turn the device into a probe of any host on its network
    for host in ("elsewhere.example", "10.1.2.3", "127.1", "chain-leaf.example:443", "chain-leaf.example\x00"):
        e = _refused(a.test_connect, host, 443)
        assert e.code == E_CONNECT and "rule" in e.reason, host
    assert tls.calls == []
    assert a.test_connect("CHAIN-LEAF.example.", 443)["reason"] == "matched"
    assert [c[0] for c in tls.calls] == ["chain-leaf.example"]


def test_reports_can_be_disabled_by_the_bundle():
    tls = FakeTls()
    tls.chains["chain-leaf.example"] = WRONG
    a = _agent(_board("v1.bin"), tls=tls)
    _upload(a, _bundle("v3_reports_off.bin"))
    raises(C.PinBlocked, a.connect, "chain-leaf.example", 443)
    assert _reports(a) == []


def test_test_connect_answers_the_verdict():
    tls = FakeTls()
    tls.chains["chain-leaf.example"] = GOOD
    tls.chains["report.example"] = WRONG
    tls.chains["strict.example"] = GOOD
    a = _agent(_board("v1.bin"), tls=tls)
    ok = a.test_connect("chain-leaf.example", 443)
    assert ok["allowed"] and ok["reason"] == "matched" and ok["matched_label"] == "primary"
    assert ok["rule"] == "chain-leaf.example" and ok["matched_depth"] == 0 and len(ok["chain"]) == 3
    assert tls.sockets[0].closed and tls.sockets[0].sent == b""  # the handshake is the test
    bad = a.test_connect("strict.example", 443)
    assert not bad["allowed"] and bad["reason"] == "mismatch" and bad["expired"]
    e = _refused(a.test_connect, "intermediate.example", 443)  # a rule, but nothing answers
    assert e.code == E_CONNECT and "intermediate.example:443" in e.reason
    assert len(_reports(a)) == 1
