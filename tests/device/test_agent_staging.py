# What a session leaves behind when it ends: an upload never committed is staged in flash (the
# buffer goes back to the heap) and resumed by the next session, never torn or from another
# bundle (pinagent.handler; helpers: agent_support.py). A module of its own for the VM's heap.
# Runs unchanged under CPython and on the MicroPython runtimes.

import hashlib
import sys

from agent_support import E_NO_WRITE, R, _agent, _board, _bundle, _refused
from faultfs import PowerCut

from pinagent import agent  # noqa: F401  (named so the VM runner imports it in a call of its own)
from pinagent import service as SV


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


def _end(a):
    """The session ends, as on a board: what it held is staged and the update path forgotten
    (forget: a no-op on CPython)."""
    from pinagent import forget

    a.end_session()
    forget()


def _finish(a, data, held):
    """The rest of the upload after a WRITE_BEGIN that said `held`; the commit's answer. Then the
    update path is forgotten, as when a board's session ends (a no-op on CPython)."""
    from pinagent import forget

    start = held[0][1] if held else 0
    try:
        _send(a, data, start, len(data))
        return a.write_commit()
    finally:
        forget()


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
    _end(a)


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
    _end(a)


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
