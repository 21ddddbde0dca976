# The update service: message codecs, dispatch to a handler, and the host Client with its
# chunked upload, end to end over a simulated lossy line. Runs under CPython and the VM.

import binascii
import hashlib

from support import Lcg, raises

from fleetpin.protocol import client
from fleetpin.protocol.client import Client, LinkFailure, RemoteError
from pinagent import link, service
from pinagent.link import OP_ERROR, DeviceLink, FrameDecoder, encode_frame
from pinagent.service import (
    E_BAD_REQUEST,
    E_CONNECT,
    E_INTERNAL,
    E_NO_SPACE,
    E_NO_WRITE,
    E_RANGE,
    E_UNKNOWN_OP,
    E_UNSUPPORTED,
    Handler,
    Service,
    ServiceError,
)


def all_set(buf):
    for x in buf:
        if x == 0:
            return False
    return True


class FakeHandler(Handler):
    """Enough of the agent to exercise every message: bundles must start with b"SIGNED"."""

    def __init__(self, capacity=16384):
        self.capacity = capacity
        self.bundle = b""
        self.version = 0
        self.incoming = None  # [size, sha256, bytearray, have-bitmap]
        self.committed_sha = None
        self.chunk_calls = 0
        self.reports = bytearray(b'{"host":"a.example","reason":"mismatch"}\n' * 30)
        self.reboots = 0
        self.broken = False
        self.resume = True  # write_begin says what it kept (False: an agent that does not)
        self.identifies = 0
        self.extra = {}  # more IDENTIFY fields (a long answer)

    def identify(self):
        self.identifies += 1
        if self.broken:
            raise ValueError("flash read failed")
        info = {"device_id": "a0b1c2d3e4f5", "bundle_version": self.version, "free": self.capacity}
        info.update(self.extra)
        return info

    def read_bundle(self, offset, length):
        if offset > len(self.bundle):
            raise ServiceError(E_RANGE, "offset %d past %d" % (offset, len(self.bundle)))
        return len(self.bundle), self.bundle[offset : offset + length]

    def write_begin(self, size, sha256):
        if size > self.capacity:
            raise ServiceError(E_NO_SPACE, "%d bytes, %d free" % (size, self.capacity))
        if self.incoming and self.incoming[0] == size and self.incoming[1] == sha256:
            return self.received() if self.resume else None  # the same upload again: keep what arrived
        self.incoming = [size, bytes(sha256), bytearray(size), bytearray(size)]

    def received(self):
        """[start, end) ranges of the incoming bundle that arrived."""
        out = []
        have = self.incoming[3]
        i = 0
        while i < len(have):
            if have[i]:
                j = i
                while j < len(have) and have[j]:
                    j += 1
                out.append([i, j])
                i = j
            else:
                i += 1
        return out

    def write_chunk(self, offset, data):
        self.chunk_calls += 1
        if self.incoming is None:
            raise ServiceError(E_NO_WRITE, "WRITE_BEGIN first")
        size, _, buf, have = self.incoming
        if offset + len(data) > size:
            raise ServiceError(E_RANGE, "chunk past the end")
        buf[offset : offset + len(data)] = data
        for i in range(offset, offset + len(data)):
            have[i] = 1

    def write_commit(self):
        if self.incoming is None:
            if self.committed_sha is not None:
                return {"version": self.version}  # committed already: same answer
            raise ServiceError(E_NO_WRITE, "nothing received")
        size, sha, buf, have = self.incoming
        if not all_set(have):
            raise ServiceError(service.E_INCOMPLETE, "missing bytes")
        if hashlib.sha256(buf).digest() != sha:
            raise ServiceError(service.E_DIGEST, "sha256 differs")
        if bytes(buf[:6]) != b"SIGNED":
            raise ServiceError(service.E_SIGNATURE, "not signed by a fleet key")
        self.bundle = bytes(buf)
        self.version += 1
        self.committed_sha = sha
        self.incoming = None
        return {"version": self.version}

    def read_reports(self, offset, length):
        return len(self.reports), bytes(self.reports[offset : offset + length])

    def ack_reports(self, seq):
        self.acked = max(getattr(self, "acked", 0), seq)
        return {"acked": self.acked, "pending": 0}

    def test_connect(self, host, port):
        if host == "down.example":
            raise ServiceError(E_CONNECT, "ECONNREFUSED")
        return {"host": host, "port": port, "verdict": "matched"}

    def reboot(self):
        self.reboots += 1


class Bench:
    """Client and device joined by two pipes with optional faults; 1 ms per step."""

    def __init__(self, handler=None, fault=None, client=None):
        self.handler = handler or FakeHandler()
        self.svc = Service(self.handler)
        self.dev = DeviceLink(self.svc.dispatch)
        self.client = client or Client(rto_ms=60)
        self.fault = fault
        self.now = 0
        self.down = []
        self.up = []
        self.max_inflight = 0

    def _send(self, q, direction, data):
        for p in [data] if self.fault is None else self.fault(direction, data):
            q.append((self.now + 2, p))

    def run(self, until_ms=600000, stop=None):
        c = self.client
        while self.now < until_ms:
            if stop is not None and stop():
                break
            if stop is None and c.idle and not self.down and not self.up:
                break
            out = c.data_to_send(self.now)
            self.max_inflight = max(self.max_inflight, c.link.in_flight)
            if out:
                self._send(self.down, "down", out)
            while self.down and self.down[0][0] <= self.now:
                r = self.dev.receive_data(self.down.pop(0)[1])
                if r:
                    self._send(self.up, "up", bytes(r))
            while self.up and self.up[0][0] <= self.now:
                c.receive_data(self.up.pop(0)[1], self.now)
            c.tick(self.now)
            self.now += 1


class ByteLine:
    """Client and device joined by a serial line at 115200 baud (11.52 bytes per ms each way,
    so time is line time) whose bytes are dropped, flipped or duplicated at `per_mille`/1000
    (drop 40%, flip 40%, duplicate 20% of the faults, as bench_update's "1% byte faults")
    from the LCG; 1 ms per step, plus 1 ms of latency each way."""

    RATE = 1152  # bytes per 100 ms

    def __init__(self, seed, per_mille=10, handler=None, client=None):
        self.handler = handler or FakeHandler()
        self.svc = Service(self.handler)
        self.dev = DeviceLink(self.svc.dispatch)
        self.client = client or Client(rto_ms=300)
        self.lcg = Lcg(seed)
        self.per_mille = per_mille
        self.now = 0
        self.down = b""  # bytes on the wire towards the device
        self.up = b""
        self.faults = 0
        self.max_inflight = 0

    def _wire(self, data):
        if not self.per_mille:
            return bytes(data)
        out = bytearray()
        lcg = self.lcg
        pm = self.per_mille
        for b in data:
            r = lcg.next(1000 * 10)
            if r < pm * 10:
                self.faults += 1
                if r < pm * 4:
                    continue  # dropped
                if r < pm * 8:
                    b ^= 1 << lcg.next(8)
                else:
                    out.append(b)  # duplicated
            out.append(b)
        return bytes(out)

    def _rate(self):
        # bytes whose last bit arrives within this ms (the line's rate, each direction)
        return (self.now * self.RATE) // 100 - ((self.now - 1) * self.RATE) // 100

    def run(self, stop, until_ms=60000):
        c = self.client
        while self.now < until_ms and not stop():
            out = c.data_to_send(self.now)
            self.max_inflight = max(self.max_inflight, c.link.in_flight)
            if out:
                self.down += self._wire(out)
            self.now += 1
            n = self._rate()
            got, self.down = self.down[:n], self.down[n:]
            if got:
                r = self.dev.receive_data(got)
                if r:
                    self.up += self._wire(bytes(r))
            got, self.up = self.up[:n], self.up[n:]
            if got:
                c.receive_data(got, self.now)
            c.tick(self.now)
        return self.now


def signed_bundle(n, seed=1):
    lcg = Lcg(seed)
    return b"SIGNED" + bytes(lcg.next(256) for _ in range(n - 6))


# ---- dispatch ----------------------------------------------------------------------------


def dispatch(handler, op, body=b""):
    return Service(handler).dispatch(op, memoryview(body))


def error_of(answer):
    op, body = answer
    assert op == OP_ERROR, answer
    return body[0], str(body[1:], "utf-8")


def test_malformed_bodies_are_bad_requests_not_crashes():
    h = FakeHandler()
    assert error_of(dispatch(h, service.OP_WRITE_BEGIN, bytes(10)))[0] == E_BAD_REQUEST
    assert error_of(dispatch(h, service.OP_WRITE_CHUNK, bytes(4)))[0] == E_BAD_REQUEST
    assert error_of(dispatch(h, service.OP_READ_BUNDLE, bytes(5)))[0] == E_BAD_REQUEST
    assert error_of(dispatch(h, service.OP_IDENTIFY, b"x"))[0] == E_BAD_REQUEST
    assert error_of(dispatch(h, service.OP_ACK_REPORTS, b""))[0] == E_BAD_REQUEST
    assert error_of(dispatch(h, service.OP_TEST_CONNECT, b"\x01\xbb"))[0] == E_BAD_REQUEST
    code, msg = error_of(dispatch(h, service.OP_TEST_CONNECT, b"\x01\xbb\xff\xfe"))
    assert (code, msg) == (E_BAD_REQUEST, "TEST_CONNECT: host is not utf-8")
    code, msg = error_of(dispatch(h, 0x1C, b""))
    assert (code, msg) == (E_UNKNOWN_OP, "unknown op 0x1c")


def test_handler_exceptions_become_internal_errors():
    h = FakeHandler()
    h.broken = True
    code, msg = error_of(dispatch(h, service.OP_IDENTIFY))
    assert (code, msg) == (E_INTERNAL, "ValueError: flash read failed")


def test_base_handler_answers_unsupported_for_everything():
    code, msg = error_of(dispatch(Handler(), service.OP_REBOOT))
    assert (code, msg) == (E_UNSUPPORTED, "reboot")
    assert error_of(dispatch(Handler(), service.OP_IDENTIFY))[0] == E_UNSUPPORTED


def test_reboot_is_only_requested_after_the_handler_agrees():
    h = FakeHandler()
    svc = Service(h)
    assert svc.dispatch(service.OP_REBOOT, memoryview(b"")) == (service.OP_REBOOT, b"")
    assert svc.reboot_requested and h.reboots == 1
    svc2 = Service(Handler())
    svc2.dispatch(service.OP_REBOOT, memoryview(b""))
    assert not svc2.reboot_requested


# ---- client over the line ----------------------------------------------------------------


def test_identify_ping_and_test_connect():
    b = Bench()
    ident = b.client.identify()
    ping = b.client.ping(b"\x00\x7e\x7d\x03")
    ok = b.client.test_connect("api.example.com", 443)
    down = b.client.test_connect("down.example", 443)
    b.run()
    assert ident.result == {"device_id": "a0b1c2d3e4f5", "bundle_version": 0, "free": 16384, "proto": 1}
    assert ping.result == b"\x00\x7e\x7d\x03"
    assert ok.result == {"host": "api.example.com", "port": 443, "verdict": "matched"}
    assert isinstance(down.error, RemoteError)
    assert (down.error.code, down.error.name, down.error.message) == (E_CONNECT, "connect", "ECONNREFUSED")
    assert b.client.device.window == 256


def test_client_refuses_bad_arguments_before_sending():
    c = Client()
    raises(ValueError, c.test_connect, "", 443)
    raises(ValueError, c.test_connect, "a.example", 0)
    raises(ValueError, c.write_begin, 10, b"short")
    raises(link.OversizeFrame, c.write_chunk, 0, bytes(300))


def test_upload_then_read_back_identical():
    b = Bench()
    bundle = signed_bundle(1500)
    up = b.client.upload(bundle)
    b.run()
    assert up.done and up.error is None and up.result == {"version": 1}
    assert b.handler.bundle == bundle and up.acked == 1500
    assert b.handler.chunk_calls == up.chunks
    # read it back in pipelined chunks
    reads = [b.client.read_bundle(off, 200) for off in range(0, 1500, 200)]
    b.run()
    assert b"".join(r.result[1] for r in reads) == bundle
    assert all(r.result[0] == 1500 for r in reads)


def test_upload_of_4k_through_a_lossy_noisy_line_completes_identical():
    lcg = Lcg(2024)
    stats = {"drop": 0, "dup": 0, "flip": 0, "junk": 0}

    def fault(direction, data):
        r = lcg.next(100)
        if r < 8:
            stats["drop"] += 1
            return []
        if r < 13:
            stats["dup"] += 1
            return [data, data]
        if r < 21:
            stats["flip"] += 1
            b = bytearray(data)
            b[lcg.next(len(b))] ^= 1 << lcg.next(8)
            return [bytes(b)]
        if r < 26:
            stats["junk"] += 1
            return [b"I (1234) wifi: connected\r\n~>>> ", data]
        return [data]

    b = Bench(fault=fault)
    bundle = signed_bundle(4096, seed=7)
    up = b.client.upload(bundle)
    b.run(stop=lambda: up.done)
    print("faults:", stats, "retransmissions:", b.client.link.retransmissions, "ms:", b.now)
    assert up.done and up.error is None, up.error
    assert up.result == {"version": 1} and b.handler.bundle == bundle and up.acked == 4096
    # every fault kind happened, no chunk request ran twice (a lost one's bytes went again in
    # a new one), and the window held
    assert stats["drop"] >= 3 and stats["dup"] >= 3 and stats["flip"] >= 3 and stats["junk"] >= 3
    assert up.resent > 0 and b.handler.chunk_calls <= up.chunks
    assert b.client.link.retransmissions > 0 and b.dev.duplicates > 0
    assert b.max_inflight <= 256
    # losses are recovered as soon as a later answer or a damaged frame shows them, not after
    # a timeout each (this took 1040 simulated ms with a fixed 60 ms timeout; 2 ms each way)
    assert b.now < 900, b.now


FLOOR_MS = 4096 * 100 // 1152  # a 4 KB bundle's bytes alone at 115200 baud: 355 ms


def upload_over_byte_line(seed, per_mille):
    line = ByteLine(seed, per_mille)
    line.client.ping(b"session")  # HELLO and a first round trip, as Transport.connect does
    line.run(lambda: line.client.idle)
    start = line.now
    bundle = signed_bundle(4096, seed=7)
    up = line.client.upload(bundle)
    line.run(lambda: up.done)
    assert up.done and up.error is None, up.error
    assert line.handler.bundle == bundle and line.max_inflight <= 256
    return line, up, line.now - start


def test_upload_over_a_line_with_1pct_byte_faults_takes_a_few_times_the_line_rate():
    # drop/flip/duplicate 1% of the bytes each way: a 200-byte frame would survive 1 time in
    # 9, so the chunks shrink to ~30 bytes, and each loss is re-sent when the next answer
    # shows it. Typical: 3x the floor (2.4-4 over 60 seeds); a timeout per loss is 12x+
    times = []
    for seed in (1, 2, 3):
        line, up, ms = upload_over_byte_line(seed, 10)
        print("seed", seed, "ms", ms, "x floor", ms / FLOOR_MS, "faults", line.faults, "chunks", up.chunks)
        assert line.faults > 50 and up.resent > 10
        assert ms <= 5 * FLOOR_MS, (seed, ms)
        times.append(ms)
    assert sum(times) <= 3 * 4 * FLOOR_MS, times


def test_upload_over_a_clean_line_keeps_full_frames():
    line, up, ms = upload_over_byte_line(1, 0)
    down = line.client.link.wire_bytes_sent
    print("ms", ms, "x floor", ms / FLOOR_MS, "chunks", up.chunks, "down bytes", down)
    assert up.chunks == 22 and up.resent == 0 and line.client.link.retransmissions == 0
    assert ms <= FLOOR_MS * 12 // 10 and down <= 4096 * 115 // 100


def test_upload_refused_by_the_device_reports_the_named_error():
    b = Bench()
    up = b.client.upload(b"UNSIGNED" + bytes(500))
    b.run()
    assert up.done and isinstance(up.error, RemoteError)
    assert (up.error.name, up.error.message) == ("signature", "not signed by a fleet key")
    assert b.handler.bundle == b""


def test_upload_too_big_stops_at_begin():
    b = Bench(handler=FakeHandler(capacity=1000))
    up = b.client.upload(signed_bundle(2000))
    b.run()
    assert up.error.name == "no_space" and up.chunks == 0 and b.handler.chunk_calls == 0


def test_commit_twice_is_harmless():
    b = Bench()
    up = b.client.upload(signed_bundle(300))
    b.run()
    again = b.client.write_commit()
    b.run()
    assert up.result == again.result == {"version": 1} and b.handler.version == 1


def test_upload_to_a_silent_device_fails_with_timeout():
    b = Bench(fault=lambda d, data: [], client=Client(rto_ms=50, max_attempts=3))
    up = b.client.upload(signed_bundle(300))
    b.run(stop=lambda: up.done, until_ms=10000)
    assert up.done and isinstance(up.error, LinkFailure) and up.error.reason == "timeout"


def test_reports_are_read_then_acknowledged_never_cleared():
    b = Bench()
    first = b.client.read_reports(0)
    b.run()
    total, data = first.result
    assert total == len(b.handler.reports) and data == bytes(b.handler.reports[:512])
    ack = b.client.ack_reports(7)
    b.run()
    assert ack.ok and ack.result == {"acked": 7, "pending": 0} and len(b.handler.reports) == total
    assert not hasattr(b.client, "clear_reports")
    op, body = dispatch(b.handler, service.OP_CLEAR_REPORTS, b"\x00\x00\x00\x00")
    assert op == OP_ERROR and body[0] == service.E_UNSUPPORTED and len(b.handler.reports) == total


def test_requests_before_hello_answer_wait_and_errors_never_block_the_session():
    b = Bench()
    calls = [b.client.read_bundle(5), b.client.identify(), b.client.ping(b"p")]
    b.run()
    assert calls[0].error.name == "range" and calls[1].ok and calls[2].result == b"p"


def test_device_restart_fails_pending_calls_with_restarted():
    b = Bench()
    b.run()
    c = b.client.ping(b"x")
    b.client.data_to_send(b.now)
    done = b.client.receive_data(DeviceLink(lambda op, body: (op, b"")).announce(), b.now)
    assert done == [c] and isinstance(c.error, LinkFailure) and c.error.reason == "restarted"
    assert b.client.restarted == 1


def test_chunk_plan_covers_the_bundle_within_frame_limits():
    data = bytes(range(256)) * 16
    plan = client.plan_chunks(data, 200, 256)
    assert plan[0][0] == 0 and sum(n for _, n in plan) == len(data)
    for (o1, n1), (o2, _) in zip(plan, plan[1:]):
        assert o1 + n1 == o2
    for off, n in plan:
        body = bytes((off & 0xFF, (off >> 8) & 0xFF, off >> 16 & 0xFF, 0)) + data[off : off + n]
        wire = encode_frame(0x10, 5, body, None)
        assert len(wire) <= 200 + 6 and 6 + len(body) <= 256
    assert len(plan) == 23


def test_hex_example_of_protocol_md():
    # WRITE_CHUNK seq 0x11, offset 0x100, data 01 02 'A', masked with the best key (8), as
    # PROTOCOL.md shows it
    body = b"\x00\x01\x00\x00\x01\x02A"
    assert link.best_key(body) == 8
    wire = encode_frame(0x11, service.OP_WRITE_CHUNK, body, None)
    assert binascii.hexlify(wire) == b"7e117d250808090808090a49447d5eef437e"
    dec = FrameDecoder()
    dec.feed(wire)
    f = dec.next_frame()
    assert bytes(f) == b"\x11\x05\x08" + body


def test_device_modules_carry_no_host_code():
    # link.py and service.py are installed on the device; the host ends live in link_host.py
    # and client.py, which are not (they cost the device ~11 KB of heap)
    for name in ("HostLink", "Response", "Failed", "Connected", "Restarted", "VersionMismatch", "link_host"):
        assert not hasattr(link, name), name
    for name in ("Client", "Upload", "Call", "plan_chunks", "RemoteError", "LinkFailure", "BadResponse", "client"):
        assert not hasattr(service, name), name
    assert client.ERROR_NAMES is service.ERROR_NAMES and client.OP_WRITE_CHUNK == service.OP_WRITE_CHUNK


# ---- resuming an interrupted upload; long answers over a noisy line ------------------------


def test_an_interrupted_upload_resumes_from_what_the_device_acknowledged():
    b = Bench()
    bundle = signed_bundle(3000, seed=3)
    up = b.client.upload(bundle)
    b.run(stop=lambda: up.acked >= 1500)
    assert not up.done and up.acked >= 1500
    held = up.acked
    # the host goes away (a pulled cable, Ctrl-C); a new session uploads the same bundle
    b.client = Client(rto_ms=60)
    b.down, b.up = [], []
    calls = b.handler.chunk_calls
    again = b.client.upload(bundle)
    b.run(stop=lambda: again.done)
    assert again.error is None and again.result == {"version": 1} and b.handler.bundle == bundle
    assert again.resumed >= held and again.acked == 3000
    # only what the device lacked went again: fewer chunk requests than the first run made
    assert b.handler.chunk_calls - calls < calls


def test_a_resume_against_an_agent_that_keeps_nothing_sends_everything():
    handler = FakeHandler()
    handler.resume = False
    b = Bench(handler)
    bundle = signed_bundle(2000, seed=4)
    up = b.client.upload(bundle)
    b.run(stop=lambda: up.acked >= 1000)
    b.client = Client(rto_ms=60)
    b.down, b.up = [], []
    again = b.client.upload(bundle)
    b.run(stop=lambda: again.done)
    assert again.error is None and again.resumed == 0 and handler.bundle == bundle


def test_write_begin_answers_the_ranges_it_holds():
    h = FakeHandler()
    svc = Service(h)
    sha = hashlib.sha256(bytes(100)).digest()
    begin = struct_pack_begin(100, sha)
    assert svc.dispatch(service.OP_WRITE_BEGIN, memoryview(begin)) == (service.OP_WRITE_BEGIN, b"")
    svc.dispatch(service.OP_WRITE_CHUNK, memoryview(bytes((10, 0, 0, 0)) + bytes(20)))
    svc.dispatch(service.OP_WRITE_CHUNK, memoryview(bytes((50, 0, 0, 0)) + bytes(5)))
    op, body = svc.dispatch(service.OP_WRITE_BEGIN, memoryview(begin))
    assert op == service.OP_WRITE_BEGIN and client._dec_ranges(body) == [(10, 30), (50, 55)]


def struct_pack_begin(size, sha):
    return bytes((size & 0xFF, (size >> 8) & 0xFF, (size >> 16) & 0xFF, size >> 24)) + sha


def damage_first_long_answer(stats, direction_wanted="up", longer_than=200):
    """A fault that flips one byte of the first write longer than `longer_than` going that way."""

    def fault(direction, data):
        if direction == direction_wanted and len(data) > longer_than and not stats["hit"]:
            stats["hit"] = 1
            d = bytearray(data)
            d[len(d) // 2] ^= 0x40
            return [bytes(d)]
        return [data]

    return fault


def test_a_long_answer_damaged_on_the_line_is_read_from_the_cache_in_pieces():
    stats = {"hit": 0}
    handler = FakeHandler()
    handler.extra = {"problems": ["x" * 60, "y" * 60, "z" * 60], "note": "a long answer"}
    b = Bench(handler, fault=damage_first_long_answer(stats))
    b.run()  # HELLO
    call = b.client.identify()
    b.run(stop=lambda: call.done)
    assert stats["hit"] == 1 and call.error is None, call.error
    assert call.result["note"] == "a long answer" and call.result["problems"][2] == "z" * 60
    assert handler.identifies == 1  # read from the cache, not asked again
    assert not b.client.no_read_cached


def test_a_long_request_lost_on_the_way_is_sent_again():
    stats = {"hit": 0}
    handler = FakeHandler()
    b = Bench(handler, fault=damage_first_long_answer(stats, "down", longer_than=8))
    b.run()  # HELLO (its request is 8 wire bytes: not hit)
    call = b.client.identify()
    b.run(stop=lambda: call.done)
    assert stats["hit"] == 1 and call.error is None and call.result["device_id"] == "a0b1c2d3e4f5"
    assert handler.identifies == 1  # the device never got the damaged request


def test_an_agent_without_read_cached_gets_the_request_again():
    stats = {"hit": 0}
    handler = FakeHandler()
    handler.extra = {"note": "n" * 300}
    b = Bench(handler, fault=damage_first_long_answer(stats))

    def old_agent(seq, rctl, f):
        return encode_frame(seq, rctl | OP_ERROR, link.error_body(E_UNKNOWN_OP, "unknown op 0x1e"))

    b.dev._read_cached = old_agent
    b.run()
    call = b.client.identify()
    b.run(stop=lambda: call.done)
    assert call.error is None and call.result["note"] == "n" * 300
    assert b.client.no_read_cached and handler.identifies == 2


def test_read_cached_serves_pieces_of_a_cached_answer_and_nothing_else():
    dev = DeviceLink(lambda op, body: (op, b"0123456789" * 30))
    dec = FrameDecoder(2048)

    def ask(seq, op, body):
        dec.feed(dev.receive_data(encode_frame(seq, op, body)))
        f = dec.next_frame()
        return f[1] & 0x1F, bytes(f[3:])

    ask(0, 0, b"\x01")  # HELLO
    assert ask(5, 2, b"")[1] == b"0123456789" * 30
    op, body = ask(6, link.OP_READ_CACHED, bytes((5, 100, 0, 7, 0)))
    assert op == link.OP_READ_CACHED and body == bytes((2, 44, 1)) + b"0123456"
    # not cached itself: asking again reads again, and seq 5 is still there after many reads
    for i in range(20):
        ask(7 + i, link.OP_READ_CACHED, bytes((5, 0, 0, 1, 0)))
    op, body = ask(40, link.OP_READ_CACHED, bytes((5, 44, 1, 9, 0)))
    assert body == bytes((2, 44, 1)) and op == link.OP_READ_CACHED
    op, body = ask(41, link.OP_READ_CACHED, bytes((9, 0, 0, 9, 0)))
    assert op == OP_ERROR and body[0] == E_RANGE
    op, body = ask(42, link.OP_READ_CACHED, bytes((5, 0)))
    assert op == OP_ERROR and body[0] == E_BAD_REQUEST


def test_a_commit_lost_on_the_way_is_known_lost_from_the_ping_behind_it():
    # the commit frame is dropped once; the PING sent right behind it is answered at once, so
    # the commit goes again without waiting for its first probe (5 s here)
    state = {"dropped": 0}

    def drop_the_commit(direction, data):
        if direction != "down" or state["dropped"]:
            return [data]
        out = bytearray()
        frames = bytes(data).split(b"\x7e")
        for i, f in enumerate(frames):
            # a frame is seq, ctl, key... between flags; ctl 0x06 (attempt 0): WRITE_COMMIT
            if len(f) >= 3 and f[1] == service.OP_WRITE_COMMIT and not state["dropped"]:
                state["dropped"] = 1
                continue
            out += f
            if i < len(frames) - 1:
                out += b"\x7e"
        return [bytes(out)]

    b = Bench(fault=drop_the_commit)
    b.client.link.slow_probe_ms = 5000
    up = b.client.upload(signed_bundle(600, seed=9))
    b.run(stop=lambda: up.done)
    assert state["dropped"] == 1 and up.error is None and up.result == {"version": 1}
    assert b.now < 1000, b.now  # not the 5 s probe
