# host side: not installed on the device
"""The host end of the serial link (see link.py and device/PROTOCOL.md): HostLink and the
events it returns. Sans-I/O like the device end: queue requests, write what data_to_send()
returns, feed what you read, pass the time. The frame codec, op codes and limits it uses are
link.py's; only the device end (link.DeviceLink) ships to the board.

Loss recovery (host behaviour only; the wire format is link.py's):
- fast retransmit: the device answers in order over an in-order line, so the answer to one
  transmission proves every transmission sent before it and still unanswered lost (request
  or answer): those are sent again at once, without waiting for a timer;
- a corrupted frame from the device is most likely the answer to the oldest unanswered
  transmission: that request is sent again at once (a duplicate is answered from the
  device's cache, so guessing wrong costs only its bytes);
- the timers know the line: given the line's time per byte (byte_ms), each transmission's
  answer is expected when the request has crossed the line and its answer, of the size the
  request asks for, has crossed back behind the answers still queued before it; the timer
  then adds only a margin for what the line does not explain (the device's own time, the
  OS), which adapts to the measured excess (Jacobson: srtt + 4 rttvar, between min_rto_ms
  and rto_ms) and grows by half on every expiry. So an answer still on the wire is never
  asked for again, on a fast line or a slow one;
- the observed frame loss gives a per-byte error-rate estimate, from which best_payload()
  picks the chunk size that moves the most data per wire byte.
"""

from pinagent.link import (
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
    """Event: request `seq` will never be answered. reason: "timeout", "restarted", "version",
    or "lost": a request queued with retransmit=False lost a transmission (its owner sends the
    data again, as it sees fit, under a new seq; the device may have executed it)."""

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
    def __init__(self, seq, op, body, exclusive, slow_ms, retransmit, answer=0, marker=False):
        self.seq = seq
        self.marker = marker  # sent right behind an exclusive request: its answer proves that one lost
        self.answer = answer  # expected answer body, bytes (sizes the timer on a slow line)
        self.op = op
        self.body = body
        self.exclusive = exclusive
        self.slow_ms = slow_ms  # its own rto (a request the device may take long over), or None
        self.retransmit = retransmit
        self.attempts = 0
        self.timeouts = 0  # transmissions whose timer expired unanswered
        self.first_sent = None  # when its first transmission's last byte was handed out
        self.latest = None  # its latest _Tx
        self.key = best_key(body) if len(body) > 16 else 0


class _Tx:
    """One transmission of a request: its wire bytes count against the window until it is
    answered, proven lost, or presumed drained (drain_at)."""

    def __init__(self, req, attempt):
        self.req = req
        self.attempt = attempt
        self.nbytes = 0  # handed out so far
        self.sent_at = None  # when its last byte was handed out
        self.expect = None  # when its answer should have arrived, by the line model
        self.expect0 = None  # the same, as first predicted (what its round trip is measured by)
        self.retx_at = None  # send the request again if still unanswered then
        self.drain_at = None  # forget it then: presume its bytes consumed or lost
        self.free_at = None  # its bytes leave the window then (the device has read them)
        self.freed = False
        self.resolved = False  # its outcome went into the loss estimate
        self.suspect = False  # a corrupted answer was taken for its own


# Loss estimate: exponentially decayed counts of transmissions, answered ones and the bytes
# they exposed (request + answer). The prior says "no loss seen", so big frames come first.
_DECAY = 0.9
_ANSWER_GUESS = 9  # wire bytes of an answer never seen (an empty one: flags, header, CRC)
_MAX_BACKOFF = 12
_FRAME = 9  # wire bytes of a frame besides its body: two flags, seq, ctl, key, CRC
_ERROR_ANSWER = 110  # wire bytes an error answer may take (code + message of up to 96 bytes)
_HARD_ATTEMPTS = 400  # a line that keeps delivering only damaged answers: give up at last


def _grow(k):
    """1.5 ** k, for k up to _MAX_BACKOFF: a timer grows gently, since on a serial line a
    lost frame is noise, not congestion (a dead line is given up on by time, not count)."""
    k = min(k, _MAX_BACKOFF)
    return 3**k / 2**k


class HostLink:
    """The host end: queue requests, write what data_to_send() returns, feed what you read to
    receive_data(), call tick() when next_deadline() passes.

    Window: wire bytes handed out and not yet acknowledged never exceed the device's window.
    The device answers a frame only after reading it out of its receive buffer, so the answer
    to a transmission (its attempt number is echoed) frees that transmission's bytes, and so
    does the answer to any later one (the device reads in order); a transmission unanswered
    for its rto is presumed consumed or lost and freed too, which is sound as long as the
    device handles a pipelined request faster than that. Requests marked exclusive (those that
    order others or take long) wait for everything else to finish, and nothing is sent while
    one is outstanding.

    byte_ms is the line's time per byte (10 bits per byte: 10000 / baud), 0 when unknown:
    each timer then runs from when the answer should have arrived over the line (the request's
    bytes behind those already handed out, then the answer behind those still expected), and
    rto_ms / min_rto_ms bound only the margin on top of that (rto_ms before anything was
    measured). A request is given up ("timeout") after max_attempts transmissions once the
    device has also been silent (not one byte, even damaged) for max_attempts times its rto:
    a noisy line that keeps delivering damaged answers is retried (up to _HARD_ATTEMPTS).
    """

    def __init__(self, rto_ms=1000, max_attempts=8, rx_max_frame=2048, min_rto_ms=50, byte_ms=0.0):
        self.byte_ms = byte_ms
        self.slow_probe_ms = 0  # a slow request is first probed after at least this (its work takes time)
        self.drain_ms = None  # a transmission's bytes leave the window this long after they crossed
        #                       (None: only when it is answered or its timer expires)
        self._down_free = 0.0  # when the bytes handed out so far will have crossed to the device
        self._up_free = 0.0  # when the answers expected so far will have crossed back
        self.last_rx = None  # when any byte (even damaged) last arrived from the device
        self.rto_ms = rto_ms
        self.min_rto_ms = min_rto_ms
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
        self._tx = []  # live _Tx, in the order their bytes went out
        self._partial = None  # [_Request, wire bytes, bytes handed out, its _Tx]
        self._inflight = 0
        self._events = []
        self._srtt = None  # smoothed round trip, ms (None: no sample yet)
        self._rttvar = 0.0
        self._backoff = 0  # the rto is grown this many times (reset by a fresh sample)
        self._heard = False  # an answer came since the last timer expired
        self._q_ok = 2.0
        self._q_n = 2.0
        self._q_bytes = 200.0
        self.last_heard = None  # when the last good frame from the device arrived
        self.bad_frames = 0
        self.duplicates = 0
        self.retransmissions = 0  # transmissions taken for lost and sent again (by us or the owner)
        self.fast_retransmissions = 0  # of those, the ones no timer had to wait for
        self.probes = 0  # slow requests sent again on a timer while the device may still be busy
        self.resent_ops = {}  # op -> requests of that op sent again (or re-cut), for receipts
        self.wire_bytes_sent = 0
        self._hello()

    # -- API -------------------------------------------------------------------------------
    def reseed(self, seq):
        """Numbers requests from seq on (before anything was sent): a session that starts at a
        random number never takes an answer left on the wire by an earlier one for its own."""
        if self._out or self._partial is not None:
            raise ValueError("reseed before anything is sent")
        self._seq = seq & 0xFF
        for r in self._queue:
            r.seq = self._seq
            self._seq = (self._seq + 1) & 0xFF

    def request(self, op, body=b"", exclusive=False, rto_ms=None, retransmit=True, answer=0, marker=False):
        """Queues a request; returns its sequence number (matched by Response/Failed events).
        answer: the size of the answer body it expects (a read's length), for its timer.
        rto_ms: its own timeout, for a request the device may take long over (it is still
        probed sooner: a duplicate is answered from the device's cache). retransmit=False: a
        lost transmission fails it with reason "lost" instead of being sent again.
        marker=True (with retransmit=False): a request that may go out right behind an exclusive
        one (a PING): the device answers it only after that one, so if its answer comes first the
        exclusive request was lost on the way, and is known lost at once, not after its timer.
        A lost marker is only forgotten.
        Raises OversizeFrame if the frame would not fit the device's receive buffer."""
        if MIN_FRAME + len(body) > self.device_max_frame:
            raise OversizeFrame("request of %d bytes, the device takes %d" % (len(body), self.device_max_frame - MIN_FRAME))
        r = _Request(self._seq, op, bytes(body), exclusive, rto_ms, retransmit, answer, marker)
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
                self._out[r.seq] = r
                tx = _Tx(r, attempt)
                r.latest = tx
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
            tx.nbytes += take
            self._down_free = max(self._down_free, now_ms) + take * self.byte_ms
            if p[2] == len(wire):
                self._sent(tx, now_ms)
                self._partial = None
        self.wire_bytes_sent += len(out)
        return bytes(out)

    def receive_data(self, data, now_ms):
        """Feeds bytes read from the device; returns the events they complete."""
        if data:
            self.last_rx = now_ms
        self._dec.feed(data)
        while True:
            try:
                f = self._dec.next_frame()
            except FrameError:
                self.bad_frames += 1
                self._corrupted_answer(now_ms)
                continue
            if f is None:
                break
            self._on_frame(f, now_ms)
        return self._take_events()

    def tick(self, now_ms):
        """Runs the timers; returns the events (Failed) they produce."""
        expired = False
        for tx in list(self._tx):
            if tx.sent_at is None:
                continue
            if tx.retx_at is not None and now_ms >= tx.retx_at:
                tx.retx_at = None
                tx.suspect = True  # taken for lost: a damaged frame now is a later one's answer
                if self._is_latest(tx):
                    tx.req.timeouts += 1
                    if tx.req.slow_ms is None:
                        expired = True
                    self._observe(tx, False, 0)
                    self._lost(tx.req, now_ms, False)
            if not tx.freed and now_ms >= tx.free_at:
                # crossed and read by now: its bytes no longer take room in the device's buffer
                tx.freed = True
                self._inflight -= tx.nbytes
            if now_ms >= tx.drain_at:
                # unanswered for its rto: presume its bytes consumed or lost
                self._drop_tx(tx)
                self._observe(tx, False, 0)
        if expired:
            if self._heard:
                self._heard = False  # answers still come: a lost frame is the line's noise
            elif self._backoff < _MAX_BACKOFF:
                self._backoff += 1  # nothing since the last expiry: the device may be slow, wait longer
        return self._take_events()

    def next_deadline(self):
        """When tick() should next run, or None when no timer runs."""
        t = None
        for tx in self._tx:
            if tx.sent_at is None:
                continue
            d = tx.drain_at
            if tx.retx_at is not None and tx.retx_at < d:
                d = tx.retx_at
            if not tx.freed and tx.free_at < d:
                d = tx.free_at
            if t is None or d < t:
                t = d
        return t

    def rto(self):
        """The current retransmission margin, ms, on top of the line time an answer takes:
        srtt + 4 rttvar of the measured excess within [min_rto_ms, rto_ms] (rto_ms before the
        first sample), times 1.5 per expiry since the last sample."""
        return int(min(self.rto_ms, self._base_rto() * _grow(self._backoff)))

    def _base_rto(self):
        if self._srtt is None:
            return self.rto_ms
        base = self._srtt + 4 * self._rttvar
        return max(min(self.min_rto_ms, self.rto_ms), min(base, self.rto_ms))

    def pipelined_frame(self):
        """The largest frame that keeps the line busy: while one frame's answer comes back (the
        measured excess round trip, in line bytes), the rest of the window must hold the next
        one. At least 128 bytes (smaller ones cost more in overhead and in the device's time per
        frame); no limit without a line rate or a measurement."""
        if not self.byte_ms or self._srtt is None:
            return self.window
        wait = (self._srtt + self._rttvar) / self.byte_ms
        return max(128, int(self.window - wait))

    @property
    def srtt(self):
        return self._srtt

    def byte_error_rate(self):
        """Estimated probability that a byte on the line is lost or damaged, from the recent
        transmissions' fate (a frame of n bytes survives with (1 - p) ** n)."""
        ok = self._q_ok / self._q_n
        if ok >= 1.0:
            return 0.0
        if ok < 0.01:
            ok = 0.01
        mean = self._q_bytes / self._q_n
        return 1.0 - ok ** (1.0 / mean)

    def best_payload(self, overhead, most):
        """The payload size (at most `most`) that moves the most data per wire byte when each
        frame also carries `overhead` bytes: n / (n + o) * (1 - p) ** (n + o) peaks where
        n * (n + o) = o / p, i.e. n ~ sqrt(o / p) (about 30 bytes at 1% byte errors, 13 of
        overhead; any size on a clean line)."""
        p = self.byte_error_rate()
        if p <= 0.0:
            return most
        n = int((-overhead + (overhead * overhead + 4.0 * overhead / p) ** 0.5) / 2)
        return max(1, min(most, n))

    @property
    def idle(self):
        """Nothing queued, on the line or awaiting an answer."""
        return not self._queue and not self._out and not self._retx and self._partial is None

    @property
    def waiting(self):
        """Requests queued (new or to retransmit) and not yet started on the line."""
        return len(self._queue) + len(self._retx)

    @property
    def outstanding(self):
        """Requests sent and not yet answered."""
        return len(self._out)

    @property
    def in_flight(self):
        return self._inflight

    # -- internals -------------------------------------------------------------------------
    def _hello(self):
        r = _Request(self._seq, OP_HELLO, bytes((PROTOCOL_VERSION,)), True, None, True)
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
            if r.marker and len(self._out) < self.max_outstanding:
                return self._queue.pop(0)
            if r.exclusive or len(self._out) >= self.max_outstanding:
                return None
            for o in self._out.values():
                # the device's duplicate cache must still hold every outstanding answer
                if o.exclusive or (r.seq - o.seq) & 0xFF >= self.max_outstanding:
                    return None
        return self._queue.pop(0)

    def _sent(self, tx, now):
        r = tx.req
        tx.sent_at = now
        if r.first_sent is None:
            r.first_sent = now
        # The line model: the request reaches the device when its last byte has crossed (behind
        # every byte handed out before it); its answer crosses back behind the answers still
        # expected. An error answer may be longer than the one expected: allowed for in the
        # timer only, not in the schedule of the answers behind it.
        bm = self.byte_ms
        arrive = max(now, self._down_free)
        start = max(arrive, self._up_free)
        size = _FRAME + r.answer + (r.answer >> 2)  # escapes: DER has ~13%, JSON none
        tx.expect = tx.expect0 = start + size * bm
        self._up_free = tx.expect
        extra = (_ERROR_ANSWER - size) * bm if size < _ERROR_ANSWER else 0
        due = tx.expect + extra
        if r.slow_ms is None:
            tx.retx_at = tx.drain_at = int(due + self.rto())
        else:
            # probed from the quick rto up, 1.5 times longer each time (a duplicate waits in the
            # device's buffer and is answered from its cache), but its bytes are presumed drained
            # only after its own timeout
            probe = max(self._base_rto(), self.slow_probe_ms) * _grow(r.timeouts)
            tx.retx_at = int(due + min(probe, r.slow_ms))
            tx.drain_at = int(due) + r.slow_ms
        tx.free_at = tx.drain_at
        if self.drain_ms is not None:
            # the device reads what arrives at once (an answer may take longer: that is its
            # timer's business): the window then has room for what proves a loss sooner
            tx.free_at = min(tx.drain_at, int(arrive + self.drain_ms))

    def _is_latest(self, tx):
        r = tx.req
        return r.latest is tx and self._out.get(r.seq) is r

    def _drop_tx(self, tx):
        self._tx.remove(tx)
        if not tx.freed:
            self._inflight -= tx.nbytes

    def _observe(self, tx, ok, answer_bytes):
        if tx.resolved:
            return
        tx.resolved = True
        self._q_ok = self._q_ok * _DECAY + (1.0 if ok else 0.0)
        self._q_n = self._q_n * _DECAY + 1.0
        self._q_bytes = self._q_bytes * _DECAY + tx.nbytes + (answer_bytes or _ANSWER_GUESS)

    def _sample_rtt(self, ms):
        if self._srtt is None:
            self._srtt = float(ms)
            self._rttvar = ms / 2.0
        else:
            self._rttvar += (abs(self._srtt - ms) - self._rttvar) / 4.0
            self._srtt += (ms - self._srtt) / 8.0
        self._backoff = 0

    def _lost(self, r, now, fast):
        """r's latest transmission is taken for lost: send it again, or give up."""
        if r.marker:
            del self._out[r.seq]  # it proved nothing: forget it
            self._events.append(Failed(r.seq, r.op, "lost"))
            return
        if not r.retransmit:
            del self._out[r.seq]
            silent = self.last_heard is None or now - self.last_heard >= self.max_attempts * self.rto_ms
            if silent:
                self._events.append(Failed(r.seq, r.op, "timeout"))
            else:
                self.retransmissions += 1
                self._count_resent(r.op)
                if fast:
                    self.fast_retransmissions += 1
                self._events.append(Failed(r.seq, r.op, "lost"))
            return
        budget = self.max_attempts * (r.slow_ms or self.rto_ms)
        heard = self.last_rx if self.last_rx is not None and self.last_rx > r.first_sent else r.first_sent
        if (r.attempts >= self.max_attempts and now - heard >= budget) or r.attempts >= _HARD_ATTEMPTS:
            del self._out[r.seq]
            if r in self._retx:
                self._retx.remove(r)
            self._events.append(Failed(r.seq, r.op, "timeout"))
            if r.op == OP_HELLO:  # no device answering: nothing queued will ever go out
                self._fail_all("timeout")
            return
        self._count_resent(r.op)
        if r.slow_ms is not None and not fast:
            self.probes += 1
        else:
            self.retransmissions += 1
            if fast:
                self.fast_retransmissions += 1
        if r not in self._retx:
            self._retx.append(r)

    def _count_resent(self, op):
        self.resent_ops[op] = self.resent_ops.get(op, 0) + 1

    def _corrupted_answer(self, now):
        # Answers come in order: a damaged frame is most likely the answer to the oldest
        # transmission not yet answered, nor already taken for lost (blamed for an earlier
        # damaged frame, or its timer expired). The device is answering on time: the loss is
        # the line's noise, so no timer needs to stretch for it.
        self._backoff = 0
        for tx in self._tx:
            if tx.sent_at is None:
                return
            if tx.suspect:
                continue
            tx.suspect = True
            self._observe(tx, False, 0)
            if self._is_latest(tx):
                self._lost(tx.req, now, True)
            return

    def _on_frame(self, f, now):
        seq = f[0]
        ctl = f[1]
        if not ctl & CTL_RESPONSE:
            self.bad_frames += 1  # a request: our own bytes echoed back (a REPL, a loopback)
            return
        op = ctl & OP_MASK
        if op == OP_HELLO and (len(f) < 10 or f[9] & 1):
            self._restarted()  # the device's start-up announcement
            return
        self.last_heard = now
        attempt = (ctl & ATTEMPT_MASK) >> ATTEMPT_SHIFT
        i = 0
        n = len(self._tx)
        while i < n:
            tx = self._tx[i]
            if tx.sent_at is not None and tx.req.seq == seq and tx.attempt == attempt:
                break
            i += 1
        if i < n:
            tx = self._tx[i]
            # the device has read this transmission out of its buffer, and every one before it:
            # those still unanswered were lost on the way there or back
            for old in self._tx[:i]:
                latest = self._is_latest(old)
                self._observe(old, False, 0)
                if latest:
                    self._lost(old.req, now, True)
            del self._tx[: i + 1]
            self._inflight = 0
            for t in self._tx:
                if not t.freed:
                    self._inflight += t.nbytes
            self._observe(tx, True, len(f) + 6)
            self._heard = True
            if tx.req.slow_ms is None:
                excess = now - tx.expect0
                self._sample_rtt(max(0, excess))
            late = now - tx.expect
            if late > 0:
                # the answers behind it are that much later too (the device took its time)
                self._up_free += late
                for t in self._tx:
                    if t.sent_at is not None:
                        t.expect += late
                        if t.retx_at is not None:
                            t.retx_at += int(late)
                        t.drain_at += int(late)
                        t.free_at += int(late)
        r = self._out.get(seq)
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
        # oldest first, so the events come out in the same order on every runtime
        age = self._seq
        for r in sorted(self._out.values(), key=lambda r: (r.seq - age) & 0xFF):
            if r.op != OP_HELLO:
                self._events.append(Failed(r.seq, r.op, reason))
        for r in self._queue:
            if r.op != OP_HELLO:
                self._events.append(Failed(r.seq, r.op, reason))
        self._out = {}
        self._queue = []
        self._retx = []
