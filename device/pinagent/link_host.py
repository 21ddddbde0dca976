# host side: not installed on the device
"""The host end of the serial link (see link.py and device/PROTOCOL.md): HostLink and the
events it returns. Sans-I/O like the device end: queue requests, write what data_to_send()
returns, feed what you read, pass the time. The frame codec, op codes and limits it uses are
link.py's; only the device end (link.DeviceLink) ships to the board.
"""

from .link import (
    ATTEMPT_MASK,
    ATTEMPT_SHIFT,
    CTL_RESPONSE,
    DEFAULT_MAX_FRAME,
    INITIAL_WINDOW,
    MIN_FRAME,
    OP_ERROR,
    OP_HELLO,
    OP_MASK,
    PROTOCOL_VERSION,
    FrameDecoder,
    FrameError,
    OversizeFrame,
    best_key,
    encode_frame,
)


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
