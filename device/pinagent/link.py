"""The serial link: framing, checksums and reliable request/response, sans-I/O.

Both ends are objects you feed received bytes (any split, one byte at a time included) and
that hand back bytes to write; time is an argument. device/PROTOCOL.md is the specification;
in short:

  wire:    0x7E  stuffed(seq  ctl  key  masked(body  crc32_le))  0x7E
  stuffed: 0x7E 0x7D and 0x01..0x05 are sent as 0x7D, byte ^ 0x20 (PPP style, RFC 1662),
           so a frame never carries the REPL's control characters (Ctrl-A..Ctrl-E) raw.
  masked:  each byte XOR key; the sender picks the key that needs the fewest escapes
           (DER certificates are ~13% escapable bytes unmasked, ~0% with the best key).
  ctl:     bit 7 response, bits 6-5 attempt (echoed), bits 4-0 op
  crc32:   over seq, ctl, key and the unmasked body

The host is the only initiator. It never has more than `window` unacknowledged bytes on the
line (the device console shares one 260-byte receive buffer), retransmits on timeout, and
matches responses by sequence number. The device executes each new sequence number once and
answers a duplicate from its cache of recent responses.
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from binascii import crc32

PROTOCOL_VERSION = const(1)

FLAG = const(0x7E)
ESC = const(0x7D)
XOR = const(0x20)

CTL_RESPONSE = const(0x80)
ATTEMPT_SHIFT = const(5)
ATTEMPT_MASK = const(0x60)
OP_MASK = const(0x1F)

OP_HELLO = const(0x00)  # link: start a session (resets the device's duplicate cache)
OP_ERROR = const(0x1F)  # response op for every failed request: code u8, utf-8 message

# Error codes the link itself answers with (the full table is in service.py).
E_NO_SESSION = const(1)
E_VERSION = const(2)
E_INTERNAL = const(18)

MIN_FRAME = const(7)  # seq + ctl + key + crc32
DEFAULT_MAX_FRAME = const(256)  # decoded bytes (seq..crc) the device accepts
DEFAULT_WINDOW = const(256)  # unacknowledged wire bytes the device can buffer
DEFAULT_CACHE = const(8)  # responses the device keeps for duplicates
INITIAL_WINDOW = const(64)  # host's window before the device's HELLO answer

_HUNT = const(0)  # skipping bytes until a flag
_IN = const(1)  # inside a frame
_ESCAPED = const(2)  # inside a frame, after ESC


class FrameError(Exception):
    """A received frame was rejected (the decoder has already skipped it). `reason` says why."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class ChecksumError(FrameError):
    """The CRC32 did not match: corruption, or junk between frames."""


class ShortFrame(FrameError):
    """Fewer bytes between two flags than a frame's header and CRC."""


class OversizeFrame(FrameError):
    """More decoded bytes than the receive buffer holds; skipped up to the next flag."""


class EscapeError(FrameError):
    """ESC followed by a byte that is never escaped, or by a flag (an aborted frame)."""


def needs_escape(b):
    return b == FLAG or b == ESC or 0 < b < 6


def stuffed_len(data):
    """Length of `data` once byte-stuffed (what it costs on the wire)."""
    n = len(data)
    for b in data:
        if b == FLAG or b == ESC or 0 < b < 6:
            n += 1
    return n


def masked_stuffed_len(data, key):
    """Wire length of data once masked with key and byte-stuffed."""
    n = len(data)
    for b in data:
        b ^= key
        if b == FLAG or b == ESC or 0 < b < 6:
            n += 1
    return n


def _stuff(out, data):
    start = 0
    for i in range(len(data)):
        b = data[i]
        if b == FLAG or b == ESC or 0 < b < 6:
            if i > start:
                out.extend(data[start:i])
            out.append(ESC)
            out.append(b ^ XOR)
            start = i + 1
    if start < len(data):
        out.extend(data[start:])


_ESCAPABLE = b"\x01\x02\x03\x04\x05\x7d\x7e"


def best_key(data):
    """The mask key that leaves the fewest bytes of data to escape (0 on a tie)."""
    hist = [0] * 256
    for b in data:
        hist[b] += 1
    best = 0
    best_cost = len(data) * 2
    for k in range(256):
        cost = 1 if needs_escape(k) else 0
        for v in _ESCAPABLE:
            cost += hist[v ^ k]
        if cost < best_cost:
            best = k
            best_cost = cost
            if cost == 0:
                break
    return best


def encode_frame(seq, ctl, body=b"", key=0):
    """The wire bytes of one frame, flags included; key=None picks the best mask key (the
    host does, for bulk data; the device answers with key 0 to save time)."""
    if key is None:
        key = best_key(body)
    head = bytes((seq & 0xFF, ctl & 0xFF, key))
    crc = crc32(body, crc32(head)) & 0xFFFFFFFF
    tail = bytes((crc & 0xFF, (crc >> 8) & 0xFF, (crc >> 16) & 0xFF, crc >> 24))
    out = bytearray()
    out.append(FLAG)
    _stuff(out, head)
    if key:
        _stuff(out, bytes([b ^ key for b in body]))
        _stuff(out, bytes([b ^ key for b in tail]))
    else:
        _stuff(out, body)
        _stuff(out, tail)
    out.append(FLAG)
    return out


class FrameDecoder:
    """Byte-stuffed frames in, checked frames out, into one preallocated buffer.

    feed(data) hands over received bytes (kept by reference until consumed); next_frame()
    returns the next good frame as a memoryview of seq, ctl, key and the unmasked body (CRC
    stripped), valid
    until the next call; None when it needs more bytes; or raises a FrameError subclass for a
    rejected frame, after skipping it, so calling again continues with the bytes after it.
    Junk before the first flag is skipped silently; junk between frames is reported when the
    next flag closes it. State is bounded: one buffer of max_frame bytes.
    """

    def __init__(self, max_frame=DEFAULT_MAX_FRAME):
        self._buf = bytearray(max_frame)
        self._mv = memoryview(self._buf)
        self._max = max_frame
        self._n = 0
        self._state = _HUNT
        self._key = 0
        self._data = b""
        self._pos = 0

    def feed(self, data):
        if self._pos < len(self._data):  # unconsumed bytes left: rare, so copying is fine
            data = bytes(self._data[self._pos :]) + bytes(data)
        self._data = data
        self._pos = 0

    def reset(self):
        self._n = 0
        self._key = 0
        self._state = _HUNT
        self._data = b""
        self._pos = 0

    def next_frame(self):
        data = self._data
        end = len(data)
        i = self._pos
        n = self._n
        st = self._state
        buf = self._buf
        mx = self._max
        key = self._key
        while i < end:
            b = data[i]
            i += 1
            if st == _HUNT:
                if b == FLAG:
                    st = _IN
                    n = 0
                continue
            if b == FLAG:
                if st == _ESCAPED:
                    self._save(i, 0, _IN)
                    raise EscapeError("aborted frame (escape before flag)")
                if n == 0:
                    continue  # back-to-back flags: nothing between them
                self._save(i, 0, _IN)
                return self._check(n)
            if st == _ESCAPED:
                b ^= XOR
                if not (b == FLAG or b == ESC or 0 < b < 6):
                    self._save(i, 0, _HUNT)
                    raise EscapeError("escape before a byte that is never escaped")
                st = _IN
            elif b == ESC:
                st = _ESCAPED
                continue
            if n == mx:
                self._save(i, 0, _HUNT)
                raise OversizeFrame("frame longer than %d bytes" % mx)
            if n > 2:
                b ^= key
            elif n == 2:
                key = self._key = b
            buf[n] = b
            n += 1
        self._save(i, n, st)
        self._data = b""
        self._pos = 0
        return None

    def _save(self, pos, n, state):
        self._pos = pos
        self._n = n
        self._state = state

    def _check(self, n):
        if n < MIN_FRAME:
            raise ShortFrame("frame of %d bytes, a frame has at least %d" % (n, MIN_FRAME))
        buf = self._buf
        got = buf[n - 4] | (buf[n - 3] << 8) | (buf[n - 2] << 16) | (buf[n - 1] << 24)
        if crc32(self._mv[: n - 4]) & 0xFFFFFFFF != got:
            raise ChecksumError("bad CRC32")
        return self._mv[: n - 4]


def error_body(code, message):
    """An OP_ERROR body: code u8 then the utf-8 message (cut short: frames are small)."""
    m = message.encode()[:96] if isinstance(message, str) else bytes(message[:96])
    return bytes((code,)) + m


class DeviceLink:
    """The device end: bytes in, response bytes out; each new request executed once.

    dispatch(op, body) -> (response_op, response_body) runs one request; `body` is a memoryview
    into the receive buffer, valid only during the call. It should not raise (service.Service
    turns every failure into an OP_ERROR response); if it does, the request is answered with
    an internal error instead of crashing the link.
    """

    def __init__(self, dispatch, max_frame=DEFAULT_MAX_FRAME, window=DEFAULT_WINDOW, cache=DEFAULT_CACHE):
        self._dispatch = dispatch
        self._dec = FrameDecoder(max_frame)
        self.max_frame = max_frame
        self.window = window
        self.cache_size = cache
        # Duplicate cache: request seq and op, response op and body, oldest overwritten first.
        self._c_seq = bytearray(cache)
        self._c_req = bytearray(cache)
        self._c_op = bytearray(cache)
        self._c_body = [None] * cache
        self._c_next = 0
        self.session = False
        self.frames = 0  # good frames received
        self.bad_frames = 0  # rejected by the decoder (junk, corruption)
        self.duplicates = 0  # answered from the cache
        self.ignored = 0  # response-flagged frames (our own output echoed back)

    def announce(self):
        """An unsolicited HELLO answer to write at start-up: tells the host the device (re)started."""
        return encode_frame(0, CTL_RESPONSE | OP_HELLO, self._hello_body(1))

    def receive_data(self, data):
        """Feeds received bytes; returns the bytes to write back (b"" if none)."""
        self._dec.feed(data)
        out = None
        while True:
            try:
                f = self._dec.next_frame()
            except FrameError:
                self.bad_frames += 1
                continue
            if f is None:
                break
            r = self._on_frame(f)
            if r is not None:
                if out is None:
                    out = r
                else:
                    out.extend(r)
        return out if out is not None else b""

    def _hello_body(self, unsolicited=0):
        w = self.window
        m = self.max_frame
        return bytes((PROTOCOL_VERSION, w & 0xFF, w >> 8, m & 0xFF, m >> 8, self.cache_size, unsolicited))

    def _on_frame(self, f):
        self.frames += 1
        seq = f[0]
        ctl = f[1]
        if ctl & CTL_RESPONSE:
            self.ignored += 1
            return None
        op = ctl & OP_MASK
        rctl = CTL_RESPONSE | (ctl & ATTEMPT_MASK)
        if op == OP_HELLO:
            self.session = len(f) >= 4 and f[3] == PROTOCOL_VERSION
            for i in range(self.cache_size):
                self._c_body[i] = None
            return encode_frame(seq, rctl | OP_HELLO, self._hello_body(0))
        if not self.session:
            return encode_frame(seq, rctl | OP_ERROR, error_body(E_NO_SESSION, "send HELLO (protocol %d) first" % PROTOCOL_VERSION))
        for i in range(self.cache_size):
            if self._c_body[i] is not None and self._c_seq[i] == seq and self._c_req[i] == op:
                self.duplicates += 1
                return encode_frame(seq, rctl | self._c_op[i], self._c_body[i])
        try:
            rop, rbody = self._dispatch(op, f[3:])
        except Exception as e:  # dispatch is meant not to raise; never let it kill the link
            rop, rbody = OP_ERROR, error_body(E_INTERNAL, "internal: %s" % type(e).__name__)
        i = self._c_next
        self._c_seq[i] = seq
        self._c_req[i] = op
        self._c_op[i] = rop
        self._c_body[i] = rbody
        self._c_next = (i + 1) % self.cache_size
        return encode_frame(seq, rctl | rop, rbody)


# ---- host end ------------------------------------------------------------------------------


class Response:
    """Event: the device answered request `seq` (op: the request's); error: the answer is an
    OP_ERROR body (code u8, utf-8 message)."""

    def __init__(self, seq, op, body, error=False):
        self.seq = seq
        self.op = op
        self.body = body
        self.error = error

    def __repr__(self):
        return "Response(seq=%d, op=%d, body=%r, error=%r)" % (self.seq, self.op, self.body, self.error)


class Failed:
    """Event: request `seq` will never be answered. reason: "timeout", "restarted", "version"."""

    def __init__(self, seq, op, reason):
        self.seq = seq
        self.op = op
        self.reason = reason

    def __repr__(self):
        return "Failed(seq=%d, op=%d, reason=%r)" % (self.seq, self.op, self.reason)


class Connected:
    """Event: the device answered HELLO with a matching version; window and limits are set."""

    def __init__(self, version, window, max_frame, cache):
        self.version = version
        self.window = window
        self.max_frame = max_frame
        self.cache = cache

    def __repr__(self):
        return "Connected(version=%d, window=%d, max_frame=%d, cache=%d)" % (
            self.version,
            self.window,
            self.max_frame,
            self.cache,
        )


class Restarted:
    """Event: an unsolicited HELLO answer: the device (re)started; all requests were failed."""


class VersionMismatch:
    """Event: the device speaks protocol `version`, not ours; nothing more will be sent."""

    def __init__(self, version):
        self.version = version


class _Request:
    def __init__(self, seq, op, body, exclusive, rto_ms):
        self.seq = seq
        self.op = op
        self.body = body
        self.exclusive = exclusive
        self.rto_ms = rto_ms
        self.attempts = 0
        self.sent_at = None  # when the latest transmission's last byte was handed out
        self.key = best_key(body) if len(body) > 16 else 0


class HostLink:
    """The host end: queue requests, write what data_to_send() returns, feed what you read to
    receive_data(), call tick() when next_deadline() passes.

    Window: wire bytes handed out and not yet acknowledged never exceed the device's window.
    The device answers a frame only after reading it out of its receive buffer, so the answer
    to a transmission (its attempt number is echoed) frees that transmission's bytes; a
    transmission unanswered for rto_ms is presumed consumed or lost and freed too, which is
    sound as long as the device handles a pipelined request faster than rto_ms. Requests marked
    exclusive (those that order others or take long) wait for everything else to finish, and
    nothing is sent while one is outstanding.
    """

    def __init__(self, rto_ms=1000, max_attempts=8, rx_max_frame=2048):
        self.rto_ms = rto_ms
        self.max_attempts = max_attempts
        self._dec = FrameDecoder(rx_max_frame)
        self.window = INITIAL_WINDOW
        self.device_max_frame = DEFAULT_MAX_FRAME
        self.max_outstanding = 1
        self.connected = False
        self.refused = False
        self._seq = 0
        self._queue = []  # _Request not yet sent, FIFO
        self._retx = []  # _Request due for retransmission
        self._out = {}  # seq -> _Request sent and not answered
        self._tx = []  # live transmissions: [seq, attempt, wire bytes, sent_at or None, rto]
        self._partial = None  # [_Request, wire bytes, bytes handed out, its _tx entry]
        self._inflight = 0
        self._events = []
        self.bad_frames = 0
        self.duplicates = 0
        self.retransmissions = 0
        self.wire_bytes_sent = 0
        self._hello()

    # -- API -------------------------------------------------------------------------------
    def request(self, op, body=b"", exclusive=False, rto_ms=None):
        """Queues a request; returns its sequence number (matched by Response/Failed events).
        Raises OversizeFrame if the frame would not fit the device's receive buffer."""
        if MIN_FRAME + len(body) > self.device_max_frame:
            raise OversizeFrame("request of %d bytes, the device takes %d" % (len(body), self.device_max_frame - MIN_FRAME))
        r = _Request(self._seq, op, bytes(body), exclusive, rto_ms or self.rto_ms)
        self._seq = (self._seq + 1) & 0xFF
        self._queue.append(r)
        return r.seq

    def data_to_send(self, now_ms):
        """Bytes to write now: as much of the queued frames as the window allows (a frame may
        be split across calls)."""
        out = bytearray()
        while not self.refused:
            p = self._partial
            if p is None:
                r = self._next_request()
                if r is None:
                    break
                attempt = r.attempts & 3
                r.attempts += 1
                r.sent_at = None
                self._out[r.seq] = r
                tx = [r.seq, attempt, 0, None, r.rto_ms]
                self._tx.append(tx)
                wire = encode_frame(r.seq, (attempt << ATTEMPT_SHIFT) | r.op, r.body, r.key)
                p = self._partial = [r, wire, 0, tx]
            r, wire, done, tx = p
            room = self.window - self._inflight
            if room <= 0:
                if self._inflight > done:
                    break
                # a frame longer than the whole window (only with a tiny window): send it alone
                room = len(wire) - done
            take = min(room, len(wire) - done)
            out.extend(wire[done : done + take])
            p[2] = done + take
            self._inflight += take
            tx[2] += take
            if p[2] == len(wire):
                r.sent_at = now_ms
                tx[3] = now_ms
                self._partial = None
        self.wire_bytes_sent += len(out)
        return bytes(out)

    def receive_data(self, data, now_ms):
        """Feeds bytes read from the device; returns the events they complete."""
        self._dec.feed(data)
        while True:
            try:
                f = self._dec.next_frame()
            except FrameError:
                self.bad_frames += 1
                continue
            if f is None:
                break
            self._on_frame(f)
        return self._take_events()

    def tick(self, now_ms):
        """Runs the timers; returns the events (Failed) they produce."""
        for tx in list(self._tx):
            if tx[3] is not None and now_ms - tx[3] >= tx[4]:
                # unanswered for rto: presume its bytes consumed or lost
                self._tx.remove(tx)
                self._inflight -= tx[2]
        for r in list(self._out.values()):
            if r.sent_at is None or now_ms - r.sent_at < r.rto_ms:
                continue
            r.sent_at = None
            if r.attempts >= self.max_attempts:
                del self._out[r.seq]
                self._events.append(Failed(r.seq, r.op, "timeout"))
                if r.op == OP_HELLO:  # no device answering: nothing queued will ever go out
                    self._fail_all("timeout")
            else:
                self.retransmissions += 1
                self._retx.append(r)
        return self._take_events()

    def next_deadline(self):
        """When tick() should next run, or None when no timer runs."""
        t = None
        for tx in self._tx:
            if tx[3] is not None and (t is None or tx[3] + tx[4] < t):
                t = tx[3] + tx[4]
        return t

    @property
    def idle(self):
        """Nothing queued, on the line or awaiting an answer."""
        return not self._queue and not self._out and not self._retx and self._partial is None

    @property
    def in_flight(self):
        return self._inflight

    # -- internals -------------------------------------------------------------------------
    def _hello(self):
        r = _Request(self._seq, OP_HELLO, bytes((PROTOCOL_VERSION,)), True, self.rto_ms)
        self._seq = (self._seq + 1) & 0xFF
        self._queue.insert(0, r)

    def _take_events(self):
        ev = self._events
        self._events = []
        return ev

    def _next_request(self):
        if self._retx:
            return self._retx.pop(0)
        if not self._queue:
            return None
        r = self._queue[0]
        if not self.connected and r.op != OP_HELLO:
            return None
        if self._out:
            if r.exclusive or len(self._out) >= self.max_outstanding:
                return None
            for o in self._out.values():
                # the device's duplicate cache must still hold every outstanding answer
                if o.exclusive or (r.seq - o.seq) & 0xFF >= self.max_outstanding:
                    return None
        return self._queue.pop(0)

    def _on_frame(self, f):
        seq = f[0]
        ctl = f[1]
        if not ctl & CTL_RESPONSE:
            self.bad_frames += 1  # a request: our own bytes echoed back (a REPL, a loopback)
            return
        op = ctl & OP_MASK
        attempt = (ctl & ATTEMPT_MASK) >> ATTEMPT_SHIFT
        for tx in self._tx:
            if tx[0] == seq and tx[1] == attempt and tx[3] is not None:
                # the device has read this transmission out of its buffer
                self._tx.remove(tx)
                self._inflight -= tx[2]
                break
        r = self._out.get(seq)
        if op == OP_HELLO and (len(f) < 10 or f[9] & 1):
            self._restarted()  # the device's start-up announcement
            return
        if r is None or (op != r.op and op != OP_ERROR):
            self.duplicates += 1
            return
        del self._out[seq]
        if r in self._retx:
            self._retx.remove(r)
        if op == OP_HELLO:
            self._on_hello(bytes(f[3:]))
        else:
            self._events.append(Response(seq, r.op, bytes(f[3:]), op == OP_ERROR))

    def _on_hello(self, body):
        if len(body) < 7 or body[0] != PROTOCOL_VERSION:
            self.refused = True
            self._events.append(VersionMismatch(body[0] if body else 0))
            self._fail_all("version")
            return
        self.window = body[1] | (body[2] << 8)
        self.device_max_frame = body[3] | (body[4] << 8)
        self.max_outstanding = max(1, min(body[5], 64))
        self.connected = True
        self._events.append(Connected(body[0], self.window, self.device_max_frame, self.max_outstanding))

    def _restarted(self):
        # The device's receive buffer and duplicate cache are gone; so is every request's fate.
        self._events.append(Restarted())
        self._fail_all("restarted")
        self.connected = False
        self.window = INITIAL_WINDOW
        self.max_outstanding = 1
        self._tx = []
        self._inflight = 0
        self._partial = None
        self._hello()

    def _fail_all(self, reason):
        for r in list(self._out.values()) + self._queue:
            if r.op != OP_HELLO:
                self._events.append(Failed(r.seq, r.op, reason))
        self._out = {}
        self._queue = []
        self._retx = []
