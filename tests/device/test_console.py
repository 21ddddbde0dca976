# pinagent.io.console's serving loop (issue 19, item 5): the update path (link, service,
# handler, signers, ecdsa) is imported only when a frame starts on the console, and forgotten when
# the session ends, so the application never holds its code. The host here sends one request at a
# time over pinagent.link's frames (the real host end, fleetpin.field, is tested with the link; it
# would not leave this test the heap it measures). Runs under CPython and on the MicroPython
# runtimes; whether the modules are gone is checked on MicroPython only (CPython keeps them).

import hashlib
import json
import struct
import sys

from agent_support import E_SIGNATURE, _agent, _board, _bundle
from support import skip

from pinagent import forget
from pinagent.io import console

ON_MICROPYTHON = sys.implementation.name == "micropython"
# Op codes (device/PROTOCOL.md; pinagent.service is not imported here: it is what comes and goes)
OP_HELLO, OP_IDENTIFY, OP_WRITE_BEGIN, OP_WRITE_CHUNK, OP_WRITE_COMMIT, OP_REBOOT, OP_ERROR = 0, 2, 4, 5, 6, 10, 0x1F


class _Host:
    """Says HELLO, then sends its requests one at a time, each when the last was answered; keeps
    the answers by sequence number: (error?, body). A clean line: nothing is lost."""

    def __init__(self):
        from pinagent import link  # whichever the device has loaded now

        self.link = link
        self.dec = link.FrameDecoder(4096)  # IDENTIFY answers grew past 600 bytes (signers, mac)
        self.next = 1
        self.todo = []
        self.waiting = None
        self.answers = {}
        self.call(OP_HELLO, b"\x01")

    def call(self, op, body=b""):
        seq = self.next
        self.next += 1
        self.todo.append((seq, op, bytes(body)))
        return seq

    def upload(self, data):
        """The sequence numbers of WRITE_BEGIN, the chunks and WRITE_COMMIT (last)."""
        seqs = [self.call(OP_WRITE_BEGIN, struct.pack("<I", len(data)) + hashlib.sha256(data).digest())]
        for off in range(0, len(data), 180):
            seqs.append(self.call(OP_WRITE_CHUNK, struct.pack("<I", off) + data[off:off + 180]))
        seqs.append(self.call(OP_WRITE_COMMIT))
        return seqs

    def json(self, seq):
        error, body = self.answers[seq]
        assert not error, body
        return json.loads(body)

    def error_code(self, seq):
        error, body = self.answers[seq]
        return body[0] if error else None

    def data_to_send(self):
        if self.waiting is not None or not self.todo:
            return b""
        seq, op, body = self.todo.pop(0)
        self.waiting = seq
        return bytes(self.link.encode_frame(seq, op, body))

    def receive_data(self, data):
        self.dec.feed(data)
        while True:
            try:
                f = self.dec.next_frame()
            except self.link.FrameError:
                continue
            if f is None:
                return
            if f[1] & 0x80 and f[0] == self.waiting:
                self.answers[f[0]] = ((f[1] & 0x1F) == OP_ERROR, bytes(f[3:]))
                self.waiting = None


class _Line:
    """The console: a host on one end, a fake clock that moves with every read."""

    def __init__(self, host=None, junk=b""):
        self.now = 0
        self.host = host
        self.junk = junk
        self.steps = []  # (time, function) the host does then

    def ticks(self):
        return self.now

    def read(self, timeout_ms):
        self.now += timeout_ms
        for step in [s for s in self.steps if s[0] <= self.now]:
            self.steps.remove(step)
            step[1]()
        if self.junk:
            out, self.junk = self.junk, b""
            return out
        if self.host is None:
            return b""
        return self.host.data_to_send()

    def write(self, data):
        if self.host is not None:
            self.host.receive_data(bytes(data))


def _serve(agent, line, window_ms=3000, idle_ms=30000):
    real = console.ticks_ms
    console.ticks_ms = line.ticks
    try:
        return console.serve(agent, window_ms=window_ms, idle_ms=idle_ms, port=line, reset=lambda: None,
                             ctrl_c_after=False)
    finally:
        console.ticks_ms = real


def _loaded():
    return [name for name in console.SESSION_MODULES if name in sys.modules]


def test_the_announcement_is_the_links():
    from pinagent.link import DeviceLink

    assert console.ANNOUNCE == bytes(DeviceLink(None).announce())


def test_a_window_without_a_host_returns_and_answers_nothing():
    a = _agent(_board("v1.bin"))
    line = _Line(junk=b"ets Jun  8 2016 00:22:57\r\nrst:0x1 (POWERON_RESET)\r\n")  # ROM text, no flag
    assert _serve(a, line) is a
    assert 3000 <= line.now < 3100


def test_a_window_without_a_frame_loads_no_update_code():
    if not ON_MICROPYTHON:
        skip("CPython keeps the update path's modules imported (pinagent.forget is MicroPython's)")
    forget(console.SESSION_MODULES)
    assert _loaded() == []
    _serve(_agent(_board("v1.bin")), _Line(junk=b"rst:0x1 (POWERON_RESET)\r\n"))
    assert _loaded() == []


def test_a_session_loads_the_update_path_and_drops_it_when_it_ends():
    a = _agent(_board("v1.bin"))
    host = _Host()
    line = _Line(host)
    seqs = []
    line.steps.append((100, lambda: seqs.append(host.call(OP_IDENTIFY))))
    line.steps.append((200, lambda: seqs.extend(host.upload(_bundle("v2.bin")))))
    assert _serve(a, line, idle_ms=5000) is a
    assert host.json(seqs[0])["bundle_version"] == 1 and host.json(seqs[-1])["installed"]
    assert a.state.version == 2
    assert line.now >= 5000  # served until the session went idle
    if ON_MICROPYTHON:
        assert _loaded() == []
    # the next session loads it all again: a refusal still has its code, and an update goes in
    host = _Host()
    line = _Line(host)
    bad, good, reboot = [], [], []
    line.steps.append((100, lambda: bad.extend(host.upload(_bundle("v2_bad_signature.bin")))))
    line.steps.append((3000, lambda: good.extend(host.upload(_bundle("v3_reports_off.bin")))))
    line.steps.append((6000, lambda: reboot.append(host.call(OP_REBOOT))))
    _serve(a, line, idle_ms=5000)
    assert host.error_code(bad[-1]) == E_SIGNATURE, host.answers[bad[-1]]
    assert host.json(good[-1])["installed"] and a.state.version == 3
    assert host.answers[reboot[0]] == (False, b"")  # REBOOT answered, then serving stopped
    if ON_MICROPYTHON:
        assert _loaded() == []


def test_an_update_session_never_loads_the_applications_connection_code():
    # pinagent.connect (and der behind it) is the application's: a board in its listening window
    # has not connected yet, and an update's heap peak (the commit) must not hold its code too.
    if not ON_MICROPYTHON:
        skip("CPython keeps the session's modules imported, and what they imported (pinagent.forget is MicroPython's)")
    a = _agent(_board("v1.bin"))
    kept = sys.modules["pinagent.connect"]  # agent_support holds it; put back for later tests
    forget(("pinagent.connect",))
    try:
        host = _Host()
        line = _Line(host)
        seqs = []
        line.steps.append((100, lambda: seqs.append(host.call(OP_IDENTIFY))))
        line.steps.append((200, lambda: seqs.extend(host.upload(_bundle("v2.bin")))))
        line.steps.append((3000, lambda: seqs.append(host.call(OP_REBOOT))))
        _serve(a, line)
        assert host.json(seqs[-2])["installed"] and a.state.version == 2
        assert "pinagent.connect" not in sys.modules
    finally:
        sys.modules["pinagent.connect"] = sys.modules["pinagent"].connect = kept


def test_serving_for_good_drops_an_idle_session_and_keeps_it_open():
    a = _agent(_board("v1.bin"))
    host = _Host()
    line = _Line(host)
    seqs = []
    loaded = []
    line.steps.append((100, lambda: seqs.append(host.call(OP_IDENTIFY))))
    line.steps.append((35000, lambda: loaded.append(_loaded())))
    line.steps.append((40000, lambda: seqs.append(host.call(OP_IDENTIFY))))  # after the session went idle
    line.steps.append((40500, lambda: seqs.append(host.call(OP_REBOOT))))
    _serve(a, line, window_ms=None, idle_ms=30000)
    assert host.json(seqs[0])["bundle_version"] == 1
    assert host.json(seqs[1])["bundle_version"] == 1  # no new HELLO needed: the session went on
    assert host.answers[seqs[2]] == (False, b"")
    if ON_MICROPYTHON:
        assert loaded == [[]]


def test_an_upload_cut_off_by_the_session_going_idle_resumes_in_the_next_session():
    # The host goes away mid-upload (a pulled cable); the session goes idle and its code and
    # buffer go, the received start stays in flash; a host that comes back much later resumes.
    a = _agent(_board("v1.bin"))
    data = _bundle("v2.bin")
    host = _Host()
    line = _Line(host)
    seqs = []

    def part():  # WRITE_BEGIN and the first 5 chunks, then nothing
        seqs.append(host.call(OP_WRITE_BEGIN, struct.pack("<I", len(data)) + hashlib.sha256(data).digest()))
        for off in range(0, 5 * 180, 180):
            seqs.append(host.call(OP_WRITE_CHUNK, struct.pack("<I", off) + data[off:off + 180]))

    line.steps.append((100, part))
    line.steps.append((35000, lambda: seqs.append(_loaded())))
    later = []

    def come_back():  # a new host: a new session (HELLO), the same bundle
        line.host = _Host()
        later.extend(line.host.upload(data))

    line.steps.append((600000, come_back))
    line.steps.append((660000, lambda: later.append(line.host.call(OP_REBOOT))))
    _serve(a, line, window_ms=None, idle_ms=30000)
    if ON_MICROPYTHON:
        assert seqs[-1] == []  # the session's code was gone while the board waited
    error, held = line.host.answers[later[0]]
    assert not error and held == bytes((1,)) + struct.pack("<II", 0, 5 * 180)
    assert line.host.json(later[-2])["installed"] and a.state.version == 2


def test_a_service_held_across_a_boot_still_names_a_refusal():
    # A caller that keeps its own Service while the agent boots again (the simulation's board on
    # the VM does): the boot forgets the update path but not the service, so the handler's
    # refusals are still the running service's ServiceError, answered with their own code.
    from pinagent.service import Service

    a = _agent(_board("v1.bin"))
    held = Service(a)
    b = _agent(a.fs.os.reboot())
    svc = Service(b)
    data = _bundle("v2_bad_signature.bin")
    assert svc.dispatch(OP_WRITE_BEGIN, struct.pack("<I", len(data)) + hashlib.sha256(data).digest())[0] == OP_WRITE_BEGIN
    for off in range(0, len(data), 180):
        assert svc.dispatch(OP_WRITE_CHUNK, struct.pack("<I", off) + data[off:off + 180])[0] == OP_WRITE_CHUNK
    op, body = svc.dispatch(OP_WRITE_COMMIT, b"")
    assert op == OP_ERROR and body[0] == E_SIGNATURE, bytes(body)
    assert held.dispatch(OP_IDENTIFY, b"")[0] == OP_IDENTIFY
