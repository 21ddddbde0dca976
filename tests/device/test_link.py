# The serial link: framing, checksums, window, retransmission and duplicate suppression.
# Runs under CPython and on the MicroPython VM; faults come from a tiny LCG, not `random`.

import binascii

from support import Lcg, raises

from fleetpin.protocol import link_host
from fleetpin.protocol.link_host import HostLink
from pinagent import link
from pinagent.link import (
    CTL_RESPONSE,
    ESC,
    FLAG,
    OP_ERROR,
    OP_HELLO,
    ChecksumError,
    DeviceLink,
    FrameDecoder,
    FrameError,
    OversizeFrame,
    ShortFrame,
    encode_frame,
)

OP_ECHO = 1




def decode_all(dec, data, one_at_a_time=False):
    """Every outcome of feeding data: ("frame", seq, ctl, body) or ("error", class name)."""
    out = []
    pieces = [data[i : i + 1] for i in range(len(data))] if one_at_a_time else [data]
    for p in pieces:
        dec.feed(p)
        while True:
            try:
                f = dec.next_frame()
            except FrameError as e:
                out.append(("error", type(e).__name__))
                continue
            if f is None:
                break
            out.append(("frame", f[0], f[1], bytes(f[3:])))
    return out


# ---- framing ---------------------------------------------------------------------------


def test_roundtrip_every_byte_value_and_key_one_byte_at_a_time():
    body = bytes(range(256)) * 2
    for key in (0, 0x40, 0x7E, 0xFF, None):
        wire = encode_frame(7, 0x25, body, key)
        got = decode_all(FrameDecoder(600), wire, one_at_a_time=True)
        assert got == [("frame", 7, 0x25, body)]


def test_mask_key_removes_escapes_from_der_like_data():
    der = b"\x30\x82\x01\x0a\x02\x82\x01\x01\x00\x03\x04\x05\x01\x00\x30\x0d\x06\x09" * 8
    assert link.stuffed_len(der) == len(der) + 8 * 8
    key = link.best_key(der)
    assert link.masked_stuffed_len(der, key) == len(der) and not link.needs_escape(key)
    plain = encode_frame(1, 5, der, 0)
    masked = encode_frame(1, 5, der, None)
    assert len(plain) - len(masked) >= 8 * 8 - 5  # at most the CRC and header escapes remain
    assert decode_all(FrameDecoder(), masked) == [("frame", 1, 5, der)]


def test_wire_never_carries_repl_control_bytes_or_inner_flags():
    wire = encode_frame(3, 4, bytes(range(256)))
    assert wire[0] == FLAG and wire[-1] == FLAG
    inner = bytes(wire[1:-1])
    for b in (FLAG, 0x01, 0x02, 0x03, 0x04, 0x05):
        assert inner.find(bytes((b,))) == -1
    # 7 byte values are escaped (0x01-0x05, ESC, FLAG), each costs one extra byte
    assert link.stuffed_len(bytes(range(256))) == 256 + 7
    assert link.stuffed_len(inner) == len(inner) + inner.count(bytes((ESC,)))


def test_encoded_frame_matches_known_vector():
    # PING seq 1, attempt 0, key 0, body "hi"
    wire = encode_frame(1, 0x01, b"hi")
    assert binascii.hexlify(wire) == b"7e7d217d210068699b81b4da7e"


def test_garbage_before_first_frame_is_skipped_silently():
    junk = b"ets Jun  8 2016 00:22:57\r\nrst:0x1 (POWERON_RESET),boot:0x13\r\n>>> \x03\x04"
    got = decode_all(FrameDecoder(), junk + encode_frame(9, 1, b"x"))
    assert got == [("frame", 9, 1, b"x")]


def test_garbage_between_frames_is_one_error_then_immediate_resync():
    f1 = encode_frame(1, 1, b"one")
    f2 = encode_frame(2, 1, b"two")
    got = decode_all(FrameDecoder(), f1 + b"MicroPython v1.27 on ESP32\r\n" + f2, one_at_a_time=True)
    assert got == [("frame", 1, 1, b"one"), ("error", "ChecksumError"), ("frame", 2, 1, b"two")]


def test_partial_frames_and_fake_frame_starts_before_a_good_frame():
    good = encode_frame(5, 2, b"payload")
    junk = b"~~" + bytes(good[:6]) + b"~abc~" + bytes(good[:-3])
    got = decode_all(FrameDecoder(), junk + good, one_at_a_time=True)
    assert got[-1] == ("frame", 5, 2, b"payload")
    assert [g for g in got if g[0] == "frame"] == [("frame", 5, 2, b"payload")]
    assert ("error", "ShortFrame") in got  # "abc" between two flags
    assert ("error", "ChecksumError") in got


def test_every_single_bit_flip_is_rejected():
    wire = bytes(encode_frame(0x42, 0x05, b"\x00\x10\x00\x00chunk data \x7e\x7d\x03"))
    for i in range(len(wire)):
        for bit in range(8):
            bad = bytearray(wire)
            bad[i] ^= 1 << bit
            # a good frame after it proves the decoder resynchronised
            got = decode_all(FrameDecoder(), b"\x7e" + bytes(bad) + encode_frame(1, 1, b"ok"))
            frames = [g for g in got if g[0] == "frame"]
            assert frames == [("frame", 1, 1, b"ok")], (i, bit, got)


def test_truncated_frame_is_rejected_and_next_frame_survives():
    full = encode_frame(3, 1, b"abcdefgh")
    got = decode_all(FrameDecoder(), full[:-5] + encode_frame(4, 1, b"next"))
    assert got == [("error", "ChecksumError"), ("frame", 4, 1, b"next")]


def test_truncated_at_end_of_input_waits_for_more():
    full = encode_frame(3, 1, b"abcdefgh")
    dec = FrameDecoder()
    assert decode_all(dec, full[:-1]) == []
    assert decode_all(dec, full[-1:]) == [("frame", 3, 1, b"abcdefgh")]


def test_oversize_frame_is_rejected_then_resync():
    dec = FrameDecoder(32)
    got = decode_all(dec, encode_frame(1, 1, bytes(40)) + encode_frame(2, 1, b"small"), one_at_a_time=True)
    assert got == [("error", "OversizeFrame"), ("frame", 2, 1, b"small")]


def test_short_frame_and_bad_escapes():
    assert decode_all(FrameDecoder(), b"\x7e\x01\x02\x7e") == [("error", "ShortFrame")]
    assert decode_all(FrameDecoder(), b"\x7eabc\x7d\x41def\x7e") == [("error", "EscapeError")]
    # ESC then flag aborts the frame; the flag starts the next one
    got = decode_all(FrameDecoder(), b"\x7eabc\x7d" + encode_frame(6, 1, b"z"))
    assert got == [("error", "EscapeError"), ("frame", 6, 1, b"z")]


def test_errors_carry_a_reason_and_share_one_base_class():
    dec = FrameDecoder()
    dec.feed(b"\x7e\x01\x7e")
    e = raises(ShortFrame, dec.next_frame)
    assert isinstance(e, FrameError) and "at least 7" in e.reason
    dec.feed(b"\x7e1234567\x7e")
    e = raises(ChecksumError, dec.next_frame)
    assert e.reason == "bad CRC32"
    assert dec.next_frame() is None


def test_decoder_state_is_bounded_by_its_buffer():
    dec = FrameDecoder(64)
    lcg = Lcg(3)
    data = bytes(lcg.next(256) for _ in range(3000))
    decode_all(dec, data)
    assert len(dec._buf) == 64 and 0 <= dec._n <= 64


# ---- device link -----------------------------------------------------------------------


class Echo:
    def __init__(self):
        self.calls = []

    def __call__(self, op, body):
        self.calls.append((op, bytes(body)))
        if op == OP_ECHO:
            return op, b"echo:" + bytes(body)
        if op == 9:
            raise KeyError("handler bug")
        return OP_ERROR, link.error_body(4, "unknown op")


def device_answers(dev, wire):
    return decode_all(FrameDecoder(2048), dev.receive_data(wire))


def hello(seq=0):
    return encode_frame(seq, OP_HELLO, bytes((link.PROTOCOL_VERSION,)))


def test_device_requires_hello_first():
    echo = Echo()
    dev = DeviceLink(echo)
    got = device_answers(dev, encode_frame(1, OP_ECHO, b"a"))
    assert got[0][:3] == ("frame", 1, CTL_RESPONSE | OP_ERROR)
    assert got[0][3][0] == link.E_NO_SESSION and echo.calls == []
    got = device_answers(dev, hello(2))
    assert got == [("frame", 2, CTL_RESPONSE | OP_HELLO, bytes((1, 0, 1, 0, 1, 8, 0)))]
    # the same answer, byte for byte: HELLO answer for seq 2, key 0
    assert binascii.hexlify(dev.receive_data(hello(2))) == b"7e7d2280007d21007d21007d2108003f7a26d37e"


def test_device_answers_duplicates_from_cache_and_echoes_attempt():
    echo = Echo()
    dev = DeviceLink(echo)
    device_answers(dev, hello())
    first = device_answers(dev, encode_frame(5, OP_ECHO, b"x"))
    again = device_answers(dev, encode_frame(5, (2 << 5) | OP_ECHO, b"x"))
    assert first == [("frame", 5, CTL_RESPONSE | OP_ECHO, b"echo:x")]
    assert again == [("frame", 5, CTL_RESPONSE | (2 << 5) | OP_ECHO, b"echo:x")]
    assert echo.calls == [(OP_ECHO, b"x")] and dev.duplicates == 1


def test_device_cache_holds_the_last_n_requests_only():
    echo = Echo()
    dev = DeviceLink(echo, cache=4)
    device_answers(dev, hello())
    for s in range(1, 6):
        device_answers(dev, encode_frame(s, OP_ECHO, bytes((s,))))
    device_answers(dev, encode_frame(2, OP_ECHO, b"\x02"))  # still cached
    device_answers(dev, encode_frame(1, OP_ECHO, b"\x01"))  # evicted: runs again
    assert [c[1] for c in echo.calls] == [b"\x01", b"\x02", b"\x03", b"\x04", b"\x05", b"\x01"]


def test_device_ignores_echoed_responses_and_survives_a_raising_dispatch():
    echo = Echo()
    dev = DeviceLink(echo)
    device_answers(dev, hello())
    assert dev.receive_data(encode_frame(3, CTL_RESPONSE | OP_ECHO, b"x")) == b""
    assert dev.ignored == 1
    got = device_answers(dev, encode_frame(4, 9, b""))
    assert got[0][2] == CTL_RESPONSE | OP_ERROR and got[0][3][0] == link.E_INTERNAL
    assert b"KeyError" in got[0][3]


def test_device_hello_with_other_version_refuses_requests():
    dev = DeviceLink(Echo())
    got = device_answers(dev, encode_frame(0, OP_HELLO, b"\x09"))
    assert got[0][3][0] == link.PROTOCOL_VERSION
    got = device_answers(dev, encode_frame(1, OP_ECHO, b"a"))
    assert got[0][2] == CTL_RESPONSE | OP_ERROR and got[0][3][0] == link.E_NO_SESSION


def test_device_counts_junk_and_answers_frames_around_it():
    dev = DeviceLink(Echo())
    wire = b"junk" + hello() + b"\x00\xffnoise" + encode_frame(1, OP_ECHO, b"q")
    got = device_answers(dev, wire)
    assert [g[1] for g in got] == [0, 1] and dev.bad_frames == 1


# ---- host link + device link over a simulated line -------------------------------------


class Sim:
    """Host and device joined by two byte pipes; `fault(direction, bytes)` may return the
    bytes changed, duplicated (a list), or dropped (empty list). Time advances 1 ms a step."""

    def __init__(self, host, dev, fault=None, delay=2):
        self.host = host
        self.dev = dev
        self.fault = fault
        self.delay = delay
        self.now = 0
        self.to_dev = []
        self.to_host = []
        self.events = []
        self.max_inflight = 0

    def _send(self, q, direction, data):
        pieces = [data] if self.fault is None else self.fault(direction, data)
        for p in pieces:
            q.append((self.now + self.delay, p))

    def step(self):
        out = self.host.data_to_send(self.now)
        self.max_inflight = max(self.max_inflight, self.host.in_flight)
        if out:
            self._send(self.to_dev, "down", out)
        while self.to_dev and self.to_dev[0][0] <= self.now:
            r = self.dev.receive_data(self.to_dev.pop(0)[1])
            if r:
                self._send(self.to_host, "up", bytes(r))
        while self.to_host and self.to_host[0][0] <= self.now:
            self.events.extend(self.host.receive_data(self.to_host.pop(0)[1], self.now))
        self.events.extend(self.host.tick(self.now))
        self.now += 1

    def run(self, until_ms=100000):
        while self.now < until_ms and not (self.host.idle and not self.to_dev and not self.to_host):
            self.step()
        return self.events

    def responses(self):
        return [(e.seq, e.body) for e in self.events if isinstance(e, link_host.Response)]


def test_hello_sets_window_and_limits():
    host = HostLink()
    sim = Sim(host, DeviceLink(Echo(), window=200, max_frame=128, cache=4))
    ev = sim.run()
    assert len(ev) == 1 and isinstance(ev[0], link_host.Connected)
    assert (ev[0].version, ev[0].window, ev[0].max_frame, ev[0].cache) == (1, 200, 128, 4)
    assert host.connected and host.window == 200 and host.max_outstanding == 4


def test_requests_are_matched_by_seq():
    host = HostLink()
    echo = Echo()
    sim = Sim(host, DeviceLink(echo))
    seqs = [host.request(OP_ECHO, bytes((i,)) * 10) for i in range(20)]
    sim.run()
    assert sim.responses() == [(s, b"echo:" + bytes((i,)) * 10) for i, s in enumerate(seqs)]
    assert len(echo.calls) == 20 and host.idle and host.in_flight == 0


def test_window_is_never_exceeded_when_the_device_is_silent():
    host = HostLink(rto_ms=100, max_attempts=2)
    host.connected = True
    host.window = 100
    host.max_outstanding = 8
    host._queue = []  # skip HELLO: talk to a device that never answers
    for i in range(10):
        host.request(OP_ECHO, bytes(30))
    first = host.data_to_send(0)
    two = len(encode_frame(1, OP_ECHO, bytes(30))) + len(encode_frame(2, OP_ECHO, bytes(30)))
    assert len(first) == 100 and host.in_flight == 100  # the third frame is cut at the window
    assert host.data_to_send(10) == b""
    # after rto the silent bytes are presumed lost: retransmissions and the rest go out
    ev = host.tick(100)
    # the cut frame's 20 bytes stay counted until it is complete and answered or timed out
    assert ev == [] and host.in_flight == 100 - two and host.retransmissions == 2
    again = host.data_to_send(100)
    assert len(again) == two and host.in_flight == 100


def test_unanswered_request_fails_after_max_attempts():
    host = HostLink(rto_ms=50, max_attempts=3)
    queued = host.request(OP_ECHO, b"waits for HELLO")
    sends = 0
    now = 0
    events = []
    while now < 1000:
        if host.data_to_send(now):
            sends += 1
        events.extend(host.tick(now))
        now += 1
    assert sends == 3
    # no answer to HELLO: it fails, and so does everything queued behind it
    got = [(e.seq, e.op, e.reason) for e in events]
    assert got == [(0, OP_HELLO, "timeout"), (queued, OP_ECHO, "timeout")]
    assert host.idle and not host.connected
    h2 = HostLink(rto_ms=50, max_attempts=3)
    h2.connected = True
    h2._queue = []
    seq = h2.request(OP_ECHO, b"x")
    now = 0
    events = []
    while now < 1000:
        h2.data_to_send(now)
        events.extend(h2.tick(now))
        now += 1
    assert len(events) == 1 and isinstance(events[0], link_host.Failed)
    assert (events[0].seq, events[0].op, events[0].reason) == (seq, OP_ECHO, "timeout")


def drop_nth(direction_wanted, nths):
    """A fault that drops the n-th write(s) in one direction."""
    count = [0]

    def fault(direction, data):
        if direction != direction_wanted:
            return [data]
        count[0] += 1
        return [] if count[0] in nths else [data]

    return fault


def test_lost_request_is_retransmitted_and_executed_once():
    host = HostLink(rto_ms=40)
    echo = Echo()
    sim = Sim(host, DeviceLink(echo), drop_nth("down", (2,)))
    seq = host.request(OP_ECHO, b"lost")
    sim.run()
    assert sim.responses() == [(seq, b"echo:lost")]
    assert echo.calls == [(OP_ECHO, b"lost")] and host.retransmissions == 1


def test_lost_response_is_answered_from_cache_not_executed_twice():
    host = HostLink(rto_ms=40)
    echo = Echo()
    dev = DeviceLink(echo)
    sim = Sim(host, dev, drop_nth("up", (2,)))
    seq = host.request(OP_ECHO, b"once")
    sim.run()
    assert sim.responses() == [(seq, b"echo:once")]
    assert echo.calls == [(OP_ECHO, b"once")] and dev.duplicates == 1


def test_duplicated_frames_each_way_change_nothing():
    def dup(direction, data):
        return [data, data]

    host = HostLink(rto_ms=40)
    echo = Echo()
    dev = DeviceLink(echo)
    sim = Sim(host, dev, dup)
    seqs = [host.request(OP_ECHO, bytes((i,))) for i in range(5)]
    sim.run()
    assert sim.responses() == [(s, b"echo:" + bytes((i,))) for i, s in enumerate(seqs)]
    assert len(echo.calls) == 5 and dev.duplicates >= 5 and host.duplicates >= 5


def test_reordered_writes_are_sorted_out_by_seq():
    held = []

    def swap(direction, data):
        # hold every other write back and release it after the next one
        if direction == "down" and not held:
            held.append(data)
            return []
        if direction == "down":
            return [data, held.pop()]
        return [data]

    host = HostLink(rto_ms=40)
    echo = Echo()
    sim = Sim(host, DeviceLink(echo), swap)
    seqs = [host.request(OP_ECHO, bytes((i,)) * 3) for i in range(6)]
    sim.run()
    got = dict(sim.responses())
    assert sorted(got) == sorted(seqs)
    assert all(got[s] == b"echo:" + bytes((i,)) * 3 for i, s in enumerate(seqs))
    assert sorted(c[1] for c in echo.calls) == sorted(bytes((i,)) * 3 for i in range(6))


def test_corruption_each_way_is_caught_by_crc_and_retried():
    lcg = Lcg(11)

    def flip(direction, data):
        b = bytearray(data)
        if lcg.next(3) == 0:
            i = lcg.next(len(b))
            b[i] ^= 1 << lcg.next(8)
        return [bytes(b)]

    host = HostLink(rto_ms=40)
    echo = Echo()
    dev = DeviceLink(echo)
    sim = Sim(host, dev, flip)
    seqs = [host.request(OP_ECHO, bytes((i,)) * 20) for i in range(30)]
    sim.run()
    got = dict(sim.responses())
    assert [got[s] for s in seqs] == [b"echo:" + bytes((i,)) * 20 for i in range(30)]
    assert sorted(c[1] for c in echo.calls) == sorted(bytes((i,)) * 20 for i in range(30))
    assert dev.bad_frames + host.bad_frames > 0 and host.retransmissions > 0


def test_exclusive_request_waits_for_others_and_blocks_later_ones():
    host = HostLink()
    host.connected = True
    host.max_outstanding = 8
    host.window = 256
    host._queue = []
    a = host.request(OP_ECHO, b"a")
    b = host.request(OP_ECHO, b"b", exclusive=True)
    host.request(OP_ECHO, b"c")
    first = decode_all(FrameDecoder(), host.data_to_send(0))
    assert [f[1] for f in first] == [a]
    host.receive_data(encode_frame(a, CTL_RESPONSE | OP_ECHO, b""), 1)
    second = decode_all(FrameDecoder(), host.data_to_send(1))
    assert [f[1] for f in second] == [b]


def test_device_restart_fails_outstanding_requests_and_rehellos():
    host = HostLink()
    dev = DeviceLink(Echo())
    sim = Sim(host, dev)
    sim.run()
    seq = host.request(OP_ECHO, b"x")
    host.data_to_send(sim.now)
    ev = host.receive_data(DeviceLink(Echo()).announce(), sim.now)
    assert isinstance(ev[0], link_host.Restarted)
    assert isinstance(ev[1], link_host.Failed) and (ev[1].seq, ev[1].reason) == (seq, "restarted")
    assert not host.connected
    sim.events = []
    sim.run()
    assert isinstance(sim.events[0], link_host.Connected) and host.connected


def test_version_mismatch_stops_the_host():
    host = HostLink()
    dev = DeviceLink(Echo())
    host.request(OP_ECHO, b"x")
    wire = host.data_to_send(0)
    reply = decode_all(FrameDecoder(), dev.receive_data(wire))[0]
    body = bytes((7,)) + reply[3][1:]
    ev = host.receive_data(encode_frame(reply[1], reply[2], body), 1)
    assert isinstance(ev[0], link_host.VersionMismatch) and ev[0].version == 7
    assert isinstance(ev[1], link_host.Failed) and ev[1].reason == "version"
    assert host.refused and host.data_to_send(2) == b""


def test_request_larger_than_the_device_frame_is_refused():
    host = HostLink()
    e = raises(OversizeFrame, host.request, OP_ECHO, bytes(250))
    assert "249" in e.reason
    host.request(OP_ECHO, bytes(249))


# ---- loss recovery: fast retransmit, adaptive timer, loss estimate ----------------------


def connected_host(rto_ms=1000, min_rto_ms=50, window=256, cache=8):
    """A HostLink past HELLO (as if the device answered it), talking to a fresh DeviceLink."""
    host = HostLink(rto_ms=rto_ms, min_rto_ms=min_rto_ms)
    dev = DeviceLink(Echo(), window=window, cache=cache)
    sim = Sim(host, dev)
    sim.run()
    assert host.connected
    sim.events = []
    return host, dev, sim


def frames_of(wire):
    """The wire bytes of each frame in wire (flags included)."""
    out = []
    start = None
    for i in range(len(wire)):
        if wire[i] == FLAG:
            if start is not None and i > start + 1:
                out.append(bytes(wire[start : i + 1]))
                start = None
            else:
                start = i
    return out


def test_a_later_answer_proves_an_earlier_frame_lost_and_it_goes_again_at_once():
    host, dev, sim = connected_host()
    a = host.request(OP_ECHO, b"first")
    b = host.request(OP_ECHO, b"second")
    now = sim.now
    fa, fb = frames_of(host.data_to_send(now))
    assert host.in_flight == len(fa) + len(fb)
    # frame a is lost on the line; b arrives and is answered, long before any timer
    ev = host.receive_data(dev.receive_data(fb), now + 3)
    assert [(e.seq, e.body) for e in ev] == [(b, b"echo:second")]
    assert host.in_flight == 0  # a's bytes are freed too: the device read past them
    again = decode_all(FrameDecoder(), host.data_to_send(now + 3))
    assert [(f[1], f[2]) for f in again] == [(a, (1 << 5) | OP_ECHO)]  # attempt 1, no wait
    assert host.retransmissions == 1 and host.fast_retransmissions == 1
    ev = host.receive_data(dev.receive_data(encode_frame(a, (1 << 5) | OP_ECHO, b"first")), now + 6)
    assert [(e.seq, e.body) for e in ev] == [(a, b"echo:first")] and host.idle


def test_a_damaged_answer_sends_the_oldest_request_again_at_once():
    host, dev, sim = connected_host()
    seq = host.request(OP_ECHO, b"x", exclusive=True)
    wire = host.data_to_send(sim.now)
    answer = bytearray(dev.receive_data(wire))
    answer[3] ^= 0x10  # a flipped bit: the CRC rejects it
    assert host.receive_data(bytes(answer), sim.now + 2) == []
    assert host.bad_frames == 1
    again = decode_all(FrameDecoder(), host.data_to_send(sim.now + 2))
    assert [(f[1], f[2] >> 5) for f in again] == [(seq, 1)]
    # the device answers the duplicate from its cache: executed once
    ev = host.receive_data(dev.receive_data(encode_frame(seq, (1 << 5) | OP_ECHO, b"x")), sim.now + 4)
    assert [(e.seq, e.body) for e in ev] == [(seq, b"echo:x")] and dev.duplicates == 1


def test_the_timeout_follows_the_measured_round_trip_and_grows_on_expiry():
    host = HostLink(rto_ms=1000, min_rto_ms=20)
    assert host.rto() == 1000  # nothing measured yet
    sim = Sim(host, DeviceLink(Echo()), delay=5)  # ~10 ms round trips
    for i in range(20):
        host.request(OP_ECHO, bytes((i,)))
    sim.run()
    assert 20 <= host.rto() <= 40 and 9 <= host.srtt <= 13
    # a silent device: each expiry stretches the timer by half, up to rto_ms
    host.request(OP_ECHO, b"lost")
    now = sim.now
    host.data_to_send(now)
    first = host.rto()
    sends = []
    while now < sim.now + 3000 and len(sends) < 6:
        now += 1
        host.tick(now)
        if host.data_to_send(now):
            sends.append(now)
    gaps = [b - a for a, b in zip(sends, sends[1:])]
    assert sends[0] - sim.now <= first + 1
    assert all(g2 > g1 for g1, g2 in zip(gaps, gaps[1:])) and gaps[-1] <= 1000


def test_a_lost_transmission_of_a_no_retransmit_request_fails_it_as_lost():
    host, dev, sim = connected_host(rto_ms=200, min_rto_ms=20)
    seq = host.request(OP_ECHO, b"chunk", retransmit=False)
    host.data_to_send(sim.now)  # lost
    ev = []
    now = sim.now
    while not ev:
        now += 1
        ev = host.tick(now)
    assert [(e.seq, e.reason) for e in ev] == [(seq, "lost")] and host.idle
    # when the device has said nothing for max_attempts x rto_ms, it is a timeout instead
    seq = host.request(OP_ECHO, b"chunk", retransmit=False)
    now += 8 * 200
    host.data_to_send(now)
    ev = host.tick(now + 1000)
    assert [(e.seq, e.reason) for e in ev] == [(seq, "timeout")]


def test_a_slow_request_is_probed_early_and_still_executed_once():
    host, dev, sim = connected_host(rto_ms=100, min_rto_ms=20)
    # the device takes 400 ms over it: the probes wait in its buffer meanwhile
    held = []
    seq = host.request(OP_ECHO, b"commit", exclusive=True, rto_ms=5000)
    now = sim.now
    while now < sim.now + 400:
        out = host.data_to_send(now)
        if out:
            held.append(out)
        host.tick(now)
        now += 1
    assert 2 <= len(held) <= 8  # probes, spaced further and further apart
    ev = []
    for w in held:
        ev.extend(host.receive_data(dev.receive_data(w), now))
    assert [(e.seq, e.body) for e in ev] == [(seq, b"echo:commit")]
    assert dev.duplicates == len(held) - 1 and host.idle


def test_the_loss_estimate_picks_the_payload_size():
    host = HostLink()
    assert host.byte_error_rate() == 0.0 and host.best_payload(13, 187) == 187
    lcg = Lcg(5)
    for _ in range(200):  # 50-byte exchanges on a line losing 1% of its bytes
        ok = all(lcg.next(100) != 0 for _ in range(50))
        tx = link_host._Tx(None, 0)
        tx.nbytes = 41
        host._observe(tx, ok, 9)
    p = host.byte_error_rate()
    assert 0.004 < p < 0.025, p
    assert 18 <= host.best_payload(13, 187) <= 50
    assert host.best_payload(13, 20) == 20


# ---- timers from the line's rate -----------------------------------------------------------


def test_a_slow_line_never_sends_a_request_whose_answer_is_still_on_the_wire():
    # 9600 baud: 1.04 ms a byte; eight 512-byte reads pipelined take ~4.5 s to come back
    host = HostLink(rto_ms=300, min_rto_ms=150, byte_ms=1.0417)
    dev = DeviceLink(lambda op, body: (op, bytes(512)))
    sent = []

    class Line(Sim):
        def step(self):
            out = self.host.data_to_send(self.now)
            if out:
                sent.append(out)
                # the bytes cross at the line's rate, then the answers come back at it
                self.to_dev.append((self.now + int(len(out) * 1.0417) + 1, out))
            while self.to_dev and self.to_dev[0][0] <= self.now:
                r = self.dev.receive_data(self.to_dev.pop(0)[1])
                t = max(self.now, self.to_host[-1][0] if self.to_host else 0)
                for i in range(0, len(r), 32):  # the answers trickle back, 32 bytes at a time
                    piece = bytes(r[i : i + 32])
                    t += len(piece) * 1.0417
                    self.to_host.append((int(t) + 1, piece))
            while self.to_host and self.to_host[0][0] <= self.now:
                self.events.extend(self.host.receive_data(self.to_host.pop(0)[1], self.now))
            self.events.extend(self.host.tick(self.now))
            self.now += 1

    line = Line(host, dev)
    line.run()
    seqs = [host.request(OP_ECHO, bytes((i,)), answer=512) for i in range(8)]
    line.run(until_ms=60000)
    assert sorted(e.seq for e in line.events if isinstance(e, link_host.Response)) == sorted(seqs)
    assert host.retransmissions == 0 and dev.duplicates == 0 and line.now > 4000


def test_the_frame_shrinks_on_a_fast_line_so_the_next_one_keeps_it_busy():
    host = HostLink(byte_ms=0.0109)  # 921600 baud
    host.window = 256  # as the device advertises
    assert host.pipelined_frame() == host.window  # nothing measured yet
    host._srtt, host._rttvar = 1.0, 0.2  # ~110 line bytes of round trip beyond the line time
    assert 130 <= host.pipelined_frame() <= 150
    host.byte_ms = 0.0868  # 115200 baud: the same latency is 14 bytes
    assert host.pipelined_frame() >= 240
    host.byte_ms = 0.0109
    host._srtt = 10.0  # a slow device: never below 128
    assert host.pipelined_frame() == 128
