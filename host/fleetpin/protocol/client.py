# host side: not installed on the device
"""The host side of the update service (see service.py and device/PROTOCOL.md): the Client
session, sans-I/O, its Calls, the chunked Upload plan and the errors a request ends with.
Op codes, error codes and names, and the message layouts are service.py's; only the device
side (service.Service) ships to the board.

    c = Client(); up = c.upload(bundle)
    loop { write(c.data_to_send(now)); c.receive_data(read(), now); c.tick(now) } until up.done
"""

import json
import struct

from fleetpin.protocol import link_host as _host
from pinagent import link as _link
from pinagent.service import (
    ERROR_NAMES,
    MAX_READ,
    OP_ACK_REPORTS,
    OP_IDENTIFY,
    OP_PING,
    OP_READ_BUNDLE,
    OP_READ_REPORTS,
    OP_REBOOT,
    OP_TEST_CONNECT,
    OP_WRITE_BEGIN,
    OP_WRITE_CHUNK,
    OP_WRITE_COMMIT,
    SHA256_LEN,
    _u32,
)


class RemoteError(Exception):
    """The device refused a request: code, name (ERROR_NAMES) and its message."""

    def __init__(self, code, message):
        self.code = code
        self.name = ERROR_NAMES.get(code, "code_%d" % code)
        self.message = message
        super().__init__("%s: %s" % (self.name, message))


class LinkFailure(Exception):
    """A request never got an answer: reason "timeout", "restarted" or "version" ("lost" only
    reaches an Upload's own chunks, which it sends again)."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class BadResponse(Exception):
    """The device's answer did not parse (a device bug or a version mismatch)."""


class Call:
    """One request's fate: done, then either result or error (RemoteError / LinkFailure /
    BadResponse)."""

    def __init__(self, op, seq, decode):
        self.op = op
        self.seq = seq
        self.decode = decode
        self.done = False
        self.result = None
        self.error = None

    @property
    def ok(self):
        return self.done and self.error is None

    def __repr__(self):
        return "Call(op=%d, seq=%d, done=%s, result=%r, error=%r)" % (
            self.op,
            self.seq,
            self.done,
            self.result,
            self.error,
        )


def _dec_empty(b):
    if b:
        raise BadResponse("expected an empty answer, got %d bytes" % len(b))
    return None


def _dec_json(b):
    try:
        obj = json.loads(b)
    except Exception:
        raise BadResponse("answer is not JSON")
    if not isinstance(obj, dict):
        raise BadResponse("answer is not a JSON object")
    return obj


def _dec_read(b):
    if len(b) < 4:
        raise BadResponse("read answer shorter than its size field")
    return _u32(b, 0), bytes(b[4:])


def _dec_bytes(b):
    return bytes(b)


def _dec_ranges(b):
    """WRITE_BEGIN's answer: count u8, then count x (start u32, end u32): the byte ranges of
    this upload the device already holds (empty from a device that keeps none)."""
    if not b:
        return []
    n = b[0]
    if len(b) != 1 + 8 * n:
        raise BadResponse("WRITE_BEGIN answer of %d bytes for %d ranges" % (len(b), n))
    out = []
    for i in range(n):
        out.append((_u32(b, 1 + 8 * i), _u32(b, 5 + 8 * i)))
    return out


# Expected answer bodies, bytes: they size each request's timer on a slow line (a guess too
# high only makes a lost answer's timer later; too low would send a request again while its
# answer is still on the wire). IDENTIFY's JSON is ~350 bytes, a verdict up to ~700.
_ANSWER_IDENTIFY = 512
_ANSWER_COMMIT = 256
_ANSWER_VERDICT = 1024
_ANSWER_BEGIN = 1 + 8 * 4  # a resume lists a few ranges (a host sends in order); more only cost a timer


# Per-frame wire bytes besides the chunk data: flags 2, seq+ctl+key 3, offset 4, crc 4.
_CHUNK_OVERHEAD = 13
DEFAULT_FRAME_TARGET = 200


def fit_chunk(data, off, end, frame_target, max_data):
    """How many bytes of data[off:end] one WRITE_CHUNK frame of at most frame_target wire bytes
    carries (its offset and data masked and escaped as they will be; seq, ctl and CRC assumed
    unescaped: up to 6 more), within max_data; at least 1."""
    n = min(max_data, end - off, frame_target - _CHUNK_OVERHEAD)
    while n > 1:
        body = struct.pack("<I", off) + data[off : off + n]
        est = _CHUNK_OVERHEAD - 4 + _link.masked_stuffed_len(body, _link.best_key(body))
        if est <= frame_target:
            break
        n -= est - frame_target
    return max(n, 1)


def plan_chunks(data, frame_target, max_frame):
    """(offset, length) pairs covering data, each WRITE_CHUNK frame at most frame_target wire
    bytes (see fit_chunk) and within the device's max_frame decoded bytes."""
    out = []
    off = 0
    total = len(data)
    max_data = max_frame - _link.MIN_FRAME - 4
    while off < total:
        n = fit_chunk(data, off, total, frame_target, max_data)
        out.append((off, n))
        off += n
    return out


class _Pieces:
    """What Upload, Read and LongAnswer share: byte ranges still to ask for (_todo, by offset:
    [offset, end, ...]) and requests in flight (_flying: [Call, offset, end]). Subclasses set
    client, done, error, _todo and _flying."""

    def _room(self, link):
        """Whether the link would start one more request of ours now."""
        return link.connected and link.waiting == 0 and len(self._flying) < link.max_outstanding

    def _take(self, n):
        """The next n bytes (at most) off the first range still to ask for: (offset, length, the
        range they came from)."""
        r = self._todo[0]
        off = r[0]
        n = min(n, r[1] - off)
        if off + n < r[1]:
            r[0] = off + n
        else:
            self._todo.pop(0)
        return off, n, r

    def _sweep(self, lost, answered):
        """Takes the finished requests out of _flying: one whose transmission was lost goes to
        lost(item), an answer to answered(item) (False from it ends the transfer), an error
        ends the transfer (_fail). False if the transfer ended."""
        still = []
        for item in self._flying:
            c = item[0]
            if not c.done:
                still.append(item)
            elif isinstance(c.error, LinkFailure) and c.error.reason == "lost":
                lost(item)
            elif self._fail(c) or answered(item) is False:
                return False
        self._flying = still
        return True

    def _fail(self, call):
        if call.error is None:
            return False
        self.error = call.error
        self.done = True
        return True


class Upload(_Pieces):
    """One bundle: WRITE_BEGIN, then WRITE_CHUNKs pipelined within the window, then
    WRITE_COMMIT. Advanced by the Client; watch done / error / result / acked.

    Chunks are cut just before they go out, each as big as the line's current error rate
    pays for (HostLink.best_payload: the whole frame target on a clean line, ~30 bytes at 1%
    byte errors). A chunk whose transmission is lost is not sent again as it was: its bytes
    go back to the ranges still to send and are cut again at the current size (WRITE_CHUNK
    carries its offset, so the device takes any cut, and a chunk it stores twice is harmless)."""

    def __init__(self, client, bundle, frame_target):
        import hashlib

        self.client = client
        self.bundle = bytes(bundle)
        self.sha256 = hashlib.sha256(self.bundle).digest()
        self.frame_target = frame_target
        self.done = False
        self.error = None
        self.result = None
        self.acked = 0  # bundle bytes the device confirmed
        self.chunks = 0  # WRITE_CHUNK requests made
        self.resent = 0  # of those, the ones carrying bytes of a lost one
        self.resumed = 0  # bundle bytes the device already held from an interrupted upload
        self._begin = client.write_begin(len(self.bundle), self.sha256)
        self._todo = None  # [offset, end, resent?] ranges not yet sent (or lost), by offset
        self._flying = []  # [Call, offset, end] chunks sent and not answered
        self._commit = None

    def _advance(self):
        if self.done:
            return
        if self._todo is None:
            if not self._begin.done:
                return
            if self._fail(self._begin):
                return
            self._todo = []
            off = 0
            for start, end in sorted(self._begin.result or []):
                start = max(start, off)
                end = min(end, len(self.bundle))
                if end <= start:
                    continue
                if start > off:
                    self._todo.append([off, start, False])
                self.resumed += end - start
                off = end
            if off < len(self.bundle):
                self._todo.append([off, len(self.bundle), False])
            self.acked = self.resumed
        if self._commit is None:
            if not self._sweep(lambda item: self._requeue(item[1], item[2]), self._acked):
                return
            self._fill()
            if self._todo or self._flying:
                return
            self._commit = self.client.write_commit()
        if self._commit.done and not self._fail(self._commit):
            self.result = self._commit.result
            self.done = True

    def _acked(self, item):
        self.acked += item[2] - item[1]

    def _requeue(self, off, end):
        # back among the ranges to send, joined to its neighbours so it is cut afresh
        todo = self._todo
        i = 0
        while i < len(todo) and todo[i][0] < off:
            i += 1
        if i < len(todo) and todo[i][0] == end:
            end = todo.pop(i)[1]
        if i > 0 and todo[i - 1][1] == off:
            todo[i - 1][1] = end
            todo[i - 1][2] = True
        else:
            todo.insert(i, [off, end, True])

    def _fill(self):
        """Queues chunks while the link would start them now (one waiting at most, so each is
        cut as late as possible, at the size the latest loss estimate asks for)."""
        if self.done or self._todo is None or self._commit is not None:
            return
        link = self.client.link
        while self._todo and self._room(link):
            off, end = self._todo[0][0], self._todo[0][1]
            off, n, r = self._take(self._cut(off, end, link))
            call = self.client._call(
                OP_WRITE_CHUNK, struct.pack("<I", off) + self.bundle[off : off + n], _dec_empty, retransmit=False
            )
            call.length = n
            self._flying.append([call, off, off + n])
            self.chunks += 1
            if r[2]:
                self.resent += 1

    def _cut(self, off, end, link):
        """The length of the next chunk of [off, end): the best size for the line, but a range
        a little longer is sent whole and a longer one in even pieces, so no tiny tail (all
        overhead) is left."""
        max_data = link.device_max_frame - _link.MIN_FRAME - 4
        target = self._target(link)
        n = fit_chunk(self.bundle, off, end, target, max_data)
        left = end - off
        if n >= left:
            return n
        if left * 4 <= n * 5:  # at most 25% over: one frame
            whole = fit_chunk(self.bundle, off, end, min(target + left - n, self._most(link)), max_data)
            if whole >= left:
                return left
        pieces = (left + n - 1) // n
        return (left + pieces - 1) // pieces

    def _most(self, link):
        # worst case still fits the window; on a fast line, small enough that the next frame
        # fills the line while the device's answer to this one is on its way back
        return min(self.frame_target, link.window - 7, link.pipelined_frame())

    def _target(self, link):
        most = self._most(link)
        best = link.best_payload(_CHUNK_OVERHEAD, most - _CHUNK_OVERHEAD) + _CHUNK_OVERHEAD
        return min(most, best)

class Read(_Pieces):
    """The whole stored bundle or report log, read in pieces cut to the line: the first read
    (offset 0, alone: the device takes its report snapshot there) gives the total; the rest
    is pipelined. Like Upload's chunks, each read asks for as many bytes as the line's error
    rate pays for (HostLink.best_payload: 512 on a clean line, ~30 at 1% byte errors), and a
    read whose transmission is lost goes back to the ranges still to read, cut again.
    Watch done / error / data."""

    def __init__(self, client, op):
        self.client = client
        self.op = op
        self.done = False
        self.error = None
        self.data = None
        self.total = None
        self.reads = 0
        self._parts = {}  # offset -> bytes
        self._todo = []  # [offset, end] still to read
        self._flying = []  # [Call, offset, end]
        self._first = None

    def _advance(self):
        if self.done:
            return
        if self.total is None:
            c = self._first
            if c is None or not c.done:
                return
            if isinstance(c.error, LinkFailure) and c.error.reason == "lost":
                self._first = None
                return
            if self._fail(c):
                return
            total, data = c.result
            self.total = total
            self._parts[0] = data
            if len(data) < total:
                self._todo = [[len(data), total]]
        if not self._sweep(lambda item: self._again(item[1], item[2]), self._read):
            return
        self._fill()
        if not self._todo and not self._flying:
            out = bytearray()
            for off in sorted(self._parts):
                if off != len(out):
                    self.error = BadResponse("a gap at byte %d" % len(out))
                    self.done = True
                    return
                out += self._parts[off]
            self.data = bytes(out[: self.total])
            self.done = True

    def _again(self, off, end):
        self._todo.append([off, end])
        self._todo.sort()

    def _read(self, item):
        total, data = item[0].result
        if total != self.total or not data:
            self.error = BadResponse("changed while being read (%d bytes, then %d)" % (self.total, total))
            self.done = True
            return False
        self._parts[item[1]] = data
        if item[1] + len(data) < item[2]:  # a short answer: read the rest
            self._again(item[1] + len(data), item[2])
        return True

    def _length(self, link):
        return link.best_payload(13, MAX_READ)

    def _fill(self):
        if self.done:
            return
        link = self.client.link
        if self.total is None:
            if self._first is None and link.connected and link.waiting == 0:
                n = self._length(link)
                self._first = self.client._call(self.op, struct.pack("<IH", 0, n), _dec_read, retransmit=False, answer=n + 4)
                self.reads += 1
            return
        while self._todo and self._room(link):
            off, n, _ = self._take(self._length(link))
            c = self.client._call(self.op, struct.pack("<IH", off, n), _dec_read, retransmit=False, answer=n + 4)
            self._flying.append([c, off, off + n])
            self.reads += 1

def _dec_piece(b):
    """READ_CACHED's answer: the cached answer's op u8, its total length u16, the piece."""
    if len(b) < 3:
        raise BadResponse("READ_CACHED answer shorter than its header")
    return b[0], b[1] | (b[2] << 8), bytes(b[3:])


_PIECE_OVERHEAD = 12  # wire bytes of a READ_CACHED answer besides the piece


class LongAnswer(_Pieces):
    """A request whose answer is long (IDENTIFY's JSON, a verdict, a commit's answer) on a line
    that may damage it: sent without automatic retransmission. When a transmission is lost,
    the device is asked for the answer from its cache (READ_CACHED) in pieces as long as the
    line's error rate pays for, and the request is sent again only if the device never got it.
    A device that does not know READ_CACHED gets the request again, whole. Completes `call`."""

    def __init__(self, client, call, op, body, decode, exclusive, rto_ms, answer):
        self.client = client
        self.call = call
        self.op = op
        self.body = body
        self.decode = decode
        self.exclusive = exclusive
        self.rto_ms = rto_ms
        self.answer = answer
        self.done = False
        self.sends = 0
        self._req = None
        self._seq = None  # the request whose cached answer is being read
        self._total = None
        self._rop = None
        self._parts = {}
        self._todo = []
        self._flying = []  # [Call, offset, end]
        self._send()

    def _send(self):
        c = self.client
        self._req = c._call(self.op, self.body, self.decode, self.exclusive, self.rto_ms,
                            retransmit=c.no_read_cached, answer=self.answer)
        if self.rto_ms is not None and self.exclusive and not c.no_read_cached:
            # a slow request (a commit, a TLS handshake) lost on the way would be found only by
            # its first probe: a PING right behind it is answered at once if it never arrived
            c._call(OP_PING, b"", _dec_bytes, rto_ms=self.rto_ms, retransmit=False, marker=True)
        self.call.seq = self._req.seq
        self.sends += 1
        self._seq = None
        self._total = None
        self._parts = {}
        self._todo = []
        self._flying = []

    def _finish(self, result=None, error=None):
        self.call.result = result
        self.call.error = error
        self.call.done = True
        self.done = True

    def _piece(self, off, n):
        # quick timers: a slow request was already waited on for its first probe, and a piece
        # asked for while the device still works waits in its buffer (then answered, once)
        body = struct.pack("<BHH", self._seq, off, n)
        c = self.client._call(_link.OP_READ_CACHED, body, _dec_piece, answer=n + 3)
        self._flying.append([c, off, off + n])

    def _advance(self):
        if self.done:
            return
        r = self._req
        if self._seq is None:
            if not r.done:
                return
            if isinstance(r.error, LinkFailure) and r.error.reason == "lost" and not self.client.no_read_cached:
                self._seq = r.seq  # the answer may be in the device's cache: read it in pieces
                self._fill()
                return
            self._finish(r.result, r.error)
            return
        still = []
        for item in self._flying:
            c = item[0]
            if not c.done:
                still.append(item)
                continue
            if c.error is not None:
                if isinstance(c.error, RemoteError) and c.error.name == "range" and self._total is None:
                    self._send()  # the device never got the request: send it again
                    return
                if isinstance(c.error, RemoteError) and c.error.name == "unknown_op":
                    self.client.no_read_cached = True  # an older agent: whole answers only
                    self._send()
                    return
                self._finish(None, c.error)
                return
            rop, total, data = c.result
            if self._total is None:
                self._total, self._rop = total, rop
                if item[2] < total:
                    self._todo.append([item[2], total])
            elif total != self._total:
                self._finish(None, BadResponse("the cached answer changed while being read"))
                return
            self._parts[item[1]] = data
            if item[1] + len(data) < min(item[2], self._total):
                if not data:
                    self._finish(None, BadResponse("an empty piece of the cached answer"))
                    return
                self._todo.append([item[1] + len(data), item[2]])
                self._todo.sort()
        self._flying = still
        self._fill()
        if self._total is None or self._todo or self._flying:
            return
        body = b"".join(self._parts[k] for k in sorted(self._parts))[: self._total]
        if self._rop == _link.OP_ERROR:
            self._finish(None, RemoteError(body[0] if body else 0, str(body[1:], "utf-8", "replace")))
            return
        try:
            self._finish(self.decode(body), None)
        except BadResponse as e:
            self._finish(None, e)

    def _fill(self):
        if self.done or self._seq is None:
            return
        link = self.client.link
        n = link.best_payload(_PIECE_OVERHEAD, MAX_READ)
        if self._total is None:
            if not self._flying and link.connected and link.waiting == 0:
                self._piece(0, n)
            return
        while self._todo and self._room(link):
            off, k, _ = self._take(n)
            self._piece(off, k)


class Client:
    """Host side session: builds requests, lets the link pipeline and retransmit them, and
    turns answers into finished Calls. Sans-I/O: feed bytes and time, write what it returns.

    rto_ms is the first retransmission timeout for quick requests and the ceiling of the
    adaptive one (min_rto_ms its floor, see HostLink); slow_rto_ms the timeout of those the
    device may take seconds over (commit: signature check in pure Python; test_connect: a TLS
    handshake; reboot)."""

    def __init__(self, rto_ms=1000, slow_rto_ms=30000, max_attempts=8, frame_target=DEFAULT_FRAME_TARGET, min_rto_ms=50,
                 byte_ms=0.0):
        self.link = _host.HostLink(rto_ms=rto_ms, max_attempts=max_attempts, min_rto_ms=min_rto_ms, byte_ms=byte_ms)
        self.slow_rto_ms = slow_rto_ms
        self.frame_target = frame_target
        self.device = None  # the link_host.Connected event once the device answered HELLO
        self.restarted = 0
        self.no_read_cached = False  # the device answered READ_CACHED with unknown_op
        self._calls = {}
        self._plans = []

    # -- requests --------------------------------------------------------------------------
    def ping(self, data=b""):
        return self._call(OP_PING, data, _dec_bytes, answer=len(data))

    def identify(self):
        return self._long(OP_IDENTIFY, b"", _dec_json, False, None, _ANSWER_IDENTIFY)

    def read_bundle(self, offset, length=MAX_READ):
        return self._call(OP_READ_BUNDLE, struct.pack("<IH", offset, length), _dec_read, answer=min(length, MAX_READ) + 4)

    def read_reports(self, offset, length=MAX_READ):
        return self._call(OP_READ_REPORTS, struct.pack("<IH", offset, length), _dec_read, answer=min(length, MAX_READ) + 4)

    def read_all(self, which):
        """Starts reading the whole stored bundle ("bundle") or report log ("reports"); returns
        its Read (watch .done, then .data or .error)."""
        plan = Read(self, OP_READ_BUNDLE if which == "bundle" else OP_READ_REPORTS)
        self._plans.append(plan)
        plan._fill()
        return plan

    def write_begin(self, size, sha256):
        """Its result: the byte ranges of this upload the device already holds (a resume)."""
        if len(sha256) != SHA256_LEN:
            raise ValueError("sha256 must be 32 bytes")
        return self._call(OP_WRITE_BEGIN, struct.pack("<I", size) + bytes(sha256), _dec_ranges, exclusive=True,
                          answer=_ANSWER_BEGIN)

    def write_chunk(self, offset, data):
        c = self._call(OP_WRITE_CHUNK, struct.pack("<I", offset) + bytes(data), _dec_empty)
        c.length = len(data)
        return c

    def write_commit(self):
        return self._long(OP_WRITE_COMMIT, b"", _dec_json, True, self.slow_rto_ms, _ANSWER_COMMIT)

    def ack_reports(self, seq):
        """Acknowledges the reports up to sequence number `seq` (the log's "total" when it was
        read): they stay on the device, no longer pending. Answer: {"acked", "pending"}."""
        return self._call(OP_ACK_REPORTS, struct.pack("<I", seq), _dec_json, exclusive=True, answer=64)

    def test_connect(self, host, port):
        h = host.encode()
        if not 1 <= len(h) <= 253 or not 0 < port < 65536:
            raise ValueError("host of 1 to 253 bytes and port 1-65535")
        body = struct.pack("<H", port) + h
        return self._long(OP_TEST_CONNECT, body, _dec_json, True, self.slow_rto_ms, _ANSWER_VERDICT)

    def reboot(self):
        return self._call(OP_REBOOT, b"", _dec_empty, exclusive=True, rto_ms=self.slow_rto_ms)

    def upload(self, bundle):
        """Starts uploading and committing a bundle; returns its Upload (watch .done)."""
        plan = Upload(self, bundle, self.frame_target)
        self._plans.append(plan)
        return plan

    # -- I/O -------------------------------------------------------------------------------
    def data_to_send(self, now_ms):
        """Bytes to write now (uploads cut their next chunk as the window opens)."""
        out = b""
        while True:
            for plan in self._plans:
                plan._fill()
            more = self.link.data_to_send(now_ms)
            if not more:
                return out
            out += more

    def receive_data(self, data, now_ms):
        """Feeds bytes read from the device; returns the Calls that finished."""
        return self._handle(self.link.receive_data(data, now_ms))

    def tick(self, now_ms):
        """Runs timers; returns the Calls that finished (failed)."""
        return self._handle(self.link.tick(now_ms))

    def next_deadline(self):
        return self.link.next_deadline()

    @property
    def idle(self):
        return self.link.idle

    # -- internals -------------------------------------------------------------------------
    def _call(self, op, body, decode, exclusive=False, rto_ms=None, retransmit=True, answer=0, marker=False):
        seq = self.link.request(op, body, exclusive, rto_ms, retransmit, answer, marker)
        c = Call(op, seq, decode)
        self._calls[seq] = c
        return c

    def _long(self, op, body, decode, exclusive, rto_ms, answer):
        call = Call(op, None, decode)
        self._plans.append(LongAnswer(self, call, op, body, decode, exclusive, rto_ms, answer))
        return call

    def _handle(self, events):
        done = []
        for ev in events:
            if isinstance(ev, _host.Response):
                c = self._calls.pop(ev.seq, None)
                if c is None:
                    continue
                if ev.error:
                    code = ev.body[0] if ev.body else 0
                    c.error = RemoteError(code, str(ev.body[1:], "utf-8", "replace"))
                else:
                    try:
                        c.result = c.decode(ev.body)
                    except BadResponse as e:
                        c.error = e
                c.done = True
                done.append(c)
            elif isinstance(ev, _host.Failed):
                c = self._calls.pop(ev.seq, None)
                if c is not None:
                    c.error = LinkFailure(ev.reason)
                    c.done = True
                    done.append(c)
            elif isinstance(ev, _host.Connected):
                self.device = ev
            elif isinstance(ev, _host.Restarted):
                self.restarted += 1
        for plan in self._plans:
            plan._advance()
        self._plans = [p for p in self._plans if not p.done]
        return done
