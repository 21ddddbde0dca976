# pinagent.agent's reports over the serial service (read, acknowledged, never erased), what a
# session leaves behind when it ends, and test_connect (helpers: agent_support.py). Runs
# unchanged under CPython and on the MicroPython VM.

import hashlib
import json
import struct
import sys

from agent_support import (
    E_CONNECT,
    E_NO_WRITE,
    GOOD,
    R,
    WRONG,
    FakeTls,
    _agent,
    _board,
    _bundle,
    _refused,
    _reports,
    _upload,
)
from faultfs import PowerCut
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


UPLOAD = R + "upload.part"
PIECE = 187  # what a host's chunk holds on a clean line


def _send(a, data, start, end):
    for off in range(start, end, PIECE):
        a.write_chunk(off, memoryview(data)[off:min(off + PIECE, end)])


def _begin(a, data):
    return a.write_begin(len(data), hashlib.sha256(data).digest())


def _half_sent(ffs):
    """An agent over ffs with v2 begun: 5 chunks from the start, then one after a gap."""
    a = _agent(ffs)
    data = _bundle("v2.bin")
    assert not _begin(a, data)
    _send(a, data, 0, 5 * PIECE)
    _send(a, data, 8 * PIECE, 9 * PIECE)
    return a, data


def _finish(a, data, held):
    """The rest of the upload after a WRITE_BEGIN that said `held`; the commit's answer."""
    start = held[0][1] if held else 0
    _send(a, data, start, len(data))
    return a.write_commit()


def test_an_upload_never_committed_leaves_the_heap_for_flash_and_the_next_session_resumes_it():
    ffs = _board("v1.bin")
    a, data = _half_sent(ffs)
    a.read_reports(0, 100)
    assert a._incoming is not None and a._served is not None
    SV.Service(a).end_session()  # the session went idle, or serving ended: give the heap back
    assert a._incoming is None and a._served is None
    # what arrived from the start is in flash (the piece after the gap is not)
    assert len(ffs.files[UPLOAD]) == 72 + 5 * PIECE
    assert _refused(a.write_chunk, 100, b"x").code == E_NO_WRITE
    assert _refused(a.write_commit).code == E_NO_WRITE
    # a reset, then a new session: WRITE_BEGIN of the same bundle says what the board holds
    a = _agent(ffs.reboot())
    ffs = a.fs.os
    held = _begin(a, data)
    assert [list(r) for r in held] == [[0, 5 * PIECE]] and UPLOAD not in ffs.files
    assert _finish(a, data, held)["installed"] and a.identify()["bundle_version"] == 2


def test_a_staged_upload_goes_when_another_bundle_begins_or_it_was_altered():
    other = _bundle("v3_reports_off.bin")
    # each way a staged file can be wrong; every one starts the upload from zero and installs
    for how in ("another bundle", "a byte flipped", "cut short", "head damaged", "empty"):
        ffs = _board("v1.bin")
        a, data = _half_sent(ffs)
        a.end_session()
        staged = bytearray(ffs.files[UPLOAD])
        if how == "a byte flipped":
            staged[100] ^= 1
        elif how == "cut short":
            staged = staged[:50]
        elif how == "head damaged":
            staged[0] ^= 0xFF
        elif how == "empty":
            staged = b""
        ffs.files[UPLOAD] = bytes(staged)
        a = _agent(ffs.reboot())
        ffs = a.fs.os
        upload = other if how == "another bundle" else data
        held = _begin(a, upload)
        assert not held and UPLOAD not in ffs.files, how
        assert _finish(a, upload, held)["installed"], how


def test_an_upload_is_not_staged_where_it_would_take_the_last_free_blocks():
    ffs = _board("v1.bin")
    a, data = _half_sent(ffs)
    ffs.blocks = ffs.used_blocks() + 4  # 4 blocks left: the margin a staged upload keeps free
    a.end_session()
    assert UPLOAD not in ffs.files and a._incoming is None
    ffs.blocks = 256
    assert not _begin(a, data)


def test_a_power_cut_while_an_upload_is_staged_never_resumes_torn_bytes():
    # The power is cut at every file-system step (and byte) of staging; the board boots with v1,
    # leaves no temp behind, and the next WRITE_BEGIN holds either nothing or the whole start.
    # (every 11th on the VM, which collects no garbage within one call: test_power_loss.py)
    stride = 11 if sys.implementation.name == "micropython" else 1
    k = 0
    outcomes = {}
    while True:
        ffs = _board("v1.bin")
        a, data = _half_sent(ffs)
        ffs.cut_at = ffs.ticks + k
        try:
            a.end_session()
            completed = True
        except PowerCut:
            completed = False
        a = _agent(ffs.reboot())
        ffs = a.fs.os
        assert a.identify()["bundle_version"] == 1 and R + "upload.new" not in ffs.files, k
        held = [list(r) for r in _begin(a, data)]
        assert held in ([], [[0, 5 * PIECE]]), (k, held)
        assert completed <= (held != []), k
        outcomes[len(held)] = outcomes.get(len(held), 0) + 1
        assert _finish(a, data, held)["installed"], k
        if completed:
            break
        k += stride
    assert k > 3 and outcomes.get(0) and outcomes.get(1), outcomes
    print("RESULT: power loss while staging an upload: %d cut points (stride %d), WRITE_BEGIN held "
          "(ranges: times) %s" % (k // stride, stride, outcomes))


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
