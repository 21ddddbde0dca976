"""The update service on top of the link: request and response bodies, the device-side
dispatcher that calls an injected Handler, and the host-side Client (sans-I/O) with a chunked
upload plan. device/PROTOCOL.md specifies every message.

Device:  svc = Service(handler); link = DeviceLink(svc.dispatch); out = link.receive_data(rx)
         (after writing `out`, reboot if svc.reboot_requested)
Host:    c = Client(); up = c.upload(bundle); loop { write(c.data_to_send(now));
         c.receive_data(read(), now); c.tick(now) } until up.done
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


import json
import struct

from . import link as _link
from .link import E_INTERNAL, E_NO_SESSION, E_VERSION, OP_ERROR, PROTOCOL_VERSION

OP_PING = const(0x01)
OP_IDENTIFY = const(0x02)
OP_READ_BUNDLE = const(0x03)
OP_WRITE_BEGIN = const(0x04)
OP_WRITE_CHUNK = const(0x05)
OP_WRITE_COMMIT = const(0x06)
OP_READ_REPORTS = const(0x07)
OP_CLEAR_REPORTS = const(0x08)
OP_TEST_CONNECT = const(0x09)
OP_REBOOT = const(0x0A)

E_BAD_REQUEST = const(3)
E_UNKNOWN_OP = const(4)
E_UNSUPPORTED = const(5)
E_NO_WRITE = const(6)
E_RANGE = const(7)
E_INCOMPLETE = const(8)
E_DIGEST = const(9)
E_SIGNATURE = const(10)
E_BUNDLE = const(11)
E_ROLLBACK = const(12)
E_FLEET = const(13)
E_STORAGE = const(14)
E_NO_SPACE = const(15)
E_CHANGED = const(16)
E_CONNECT = const(17)

# code -> name, the names the host prints and PROTOCOL.md lists
ERROR_NAMES = {
    E_NO_SESSION: "no_session",
    E_VERSION: "version",
    E_BAD_REQUEST: "bad_request",
    E_UNKNOWN_OP: "unknown_op",
    E_UNSUPPORTED: "unsupported",
    E_NO_WRITE: "no_write",
    E_RANGE: "range",
    E_INCOMPLETE: "incomplete",
    E_DIGEST: "digest",
    E_SIGNATURE: "signature",
    E_BUNDLE: "bundle",
    E_ROLLBACK: "rollback",
    E_FLEET: "fleet",
    E_STORAGE: "storage",
    E_NO_SPACE: "no_space",
    E_CHANGED: "changed",
    E_CONNECT: "connect",
    E_INTERNAL: "internal",
}

MAX_READ = const(512)  # largest READ_BUNDLE / READ_REPORTS answer, bytes of data
SHA256_LEN = const(32)


class ServiceError(Exception):
    """Raised by a Handler to refuse a request: becomes an error response (code, reason)."""

    def __init__(self, code, reason):
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Handler:
    """What the agent implements; the service calls these and nothing else.

    Each method raises ServiceError(code, reason) to refuse; any other exception becomes an
    "internal" error response. `data` arguments are memoryviews valid only during the call.
    Every method must tolerate being called twice with the same arguments (duplicates are
    normally answered from the link's cache, but not across a lost cache).
    """

    def identify(self):
        """A dict for the host: device_id, agent, format, fleet, bundle_version, bundle_sha256
        (hex), clock ("trusted" / "floor" / "unset"), free (bytes)... JSON types only."""
        raise ServiceError(E_UNSUPPORTED, "identify")

    def read_bundle(self, offset, length):
        """(total size, bytes of the stored bundle from offset, at most length)."""
        raise ServiceError(E_UNSUPPORTED, "read_bundle")

    def write_begin(self, size, sha256):
        """Starts receiving a bundle of `size` bytes whose SHA-256 is `sha256` (32 bytes).
        Beginning again with the same size and digest must keep what was received."""
        raise ServiceError(E_UNSUPPORTED, "write_begin")

    def write_chunk(self, offset, data):
        """Stores data at offset of the bundle being received (E_NO_WRITE, E_RANGE)."""
        raise ServiceError(E_UNSUPPORTED, "write_chunk")

    def write_commit(self):
        """Checks the received bundle (complete, digest, signature, fleet, rollback), then
        stores it atomically; returns a dict (e.g. the new bundle version). Committing the
        bundle already stored again returns the same dict."""
        raise ServiceError(E_UNSUPPORTED, "write_commit")

    def read_reports(self, offset, length):
        """(total size, bytes of the failure-report log from offset, at most length)."""
        raise ServiceError(E_UNSUPPORTED, "read_reports")

    def clear_reports(self, size):
        """Clears the report log if it still has `size` bytes (what the host read); succeeds if
        it is already empty; otherwise E_CHANGED, so reports recorded since are never lost."""
        raise ServiceError(E_UNSUPPORTED, "clear_reports")

    def test_connect(self, host, port):
        """Opens a pinned TLS connection to host:port; returns a dict with the verdict."""
        raise ServiceError(E_UNSUPPORTED, "test_connect")

    def reboot(self):
        """Agrees to reboot (or refuses). Must not reset here: the I/O loop resets after
        writing the response, when Service.reboot_requested is set."""
        raise ServiceError(E_UNSUPPORTED, "reboot")


def _u32(b, i):
    return b[i] | (b[i + 1] << 8) | (b[i + 2] << 16) | (b[i + 3] << 24)


def _u16(b, i):
    return b[i] | (b[i + 1] << 8)


def _need(body, n, what):
    if len(body) != n:
        raise ServiceError(E_BAD_REQUEST, "%s: body of %d bytes, expected %d" % (what, len(body), n))


def _read_answer(total, data):
    return struct.pack("<I", total) + bytes(data)


def _json(obj):
    if obj is None:
        obj = {}
    if not isinstance(obj, dict):
        raise ServiceError(E_INTERNAL, "handler returned %s, not a dict" % type(obj).__name__)
    return json.dumps(obj).encode()


class Service:
    """Device side: decodes a request, calls the handler, encodes the answer. Never raises."""

    def __init__(self, handler, max_read=MAX_READ):
        self.handler = handler
        self.max_read = max_read
        self.reboot_requested = False

    def dispatch(self, op, body):
        try:
            return op, self._run(op, body)
        except ServiceError as e:
            return OP_ERROR, _link.error_body(e.code, e.reason)
        except Exception as e:  # a handler bug must not take the service down
            return OP_ERROR, _link.error_body(E_INTERNAL, "%s: %s" % (type(e).__name__, e))

    def _run(self, op, body):
        h = self.handler
        if op == OP_PING:
            return bytes(body)
        if op == OP_IDENTIFY:
            _need(body, 0, "IDENTIFY")
            info = h.identify()
            if not isinstance(info, dict):
                raise ServiceError(E_INTERNAL, "identify returned %s, not a dict" % type(info).__name__)
            info = dict(info)
            info["proto"] = PROTOCOL_VERSION
            return json.dumps(info).encode()
        if op == OP_READ_BUNDLE or op == OP_READ_REPORTS:
            _need(body, 6, "READ")
            off = _u32(body, 0)
            n = min(_u16(body, 4), self.max_read)
            if op == OP_READ_BUNDLE:
                total, data = h.read_bundle(off, n)
            else:
                total, data = h.read_reports(off, n)
            return _read_answer(total, data[:n])
        if op == OP_WRITE_BEGIN:
            _need(body, 4 + SHA256_LEN, "WRITE_BEGIN")
            h.write_begin(_u32(body, 0), bytes(body[4:]))
            return b""
        if op == OP_WRITE_CHUNK:
            if len(body) < 5:
                raise ServiceError(E_BAD_REQUEST, "WRITE_CHUNK: no data")
            h.write_chunk(_u32(body, 0), body[4:])
            return b""
        if op == OP_WRITE_COMMIT:
            _need(body, 0, "WRITE_COMMIT")
            return _json(h.write_commit())
        if op == OP_CLEAR_REPORTS:
            _need(body, 4, "CLEAR_REPORTS")
            h.clear_reports(_u32(body, 0))
            return b""
        if op == OP_TEST_CONNECT:
            if len(body) < 3 or len(body) > 2 + 253:
                raise ServiceError(E_BAD_REQUEST, "TEST_CONNECT: host name of 1 to 253 bytes")
            try:
                host = str(bytes(body[2:]), "utf-8")
            except Exception:  # UnicodeError on CPython, its parent on MicroPython
                raise ServiceError(E_BAD_REQUEST, "TEST_CONNECT: host is not utf-8")
            return _json(h.test_connect(host, _u16(body, 0)))
        if op == OP_REBOOT:
            _need(body, 0, "REBOOT")
            h.reboot()
            self.reboot_requested = True
            return b""
        raise ServiceError(E_UNKNOWN_OP, "unknown op 0x%02x" % op)


# ---- host side -----------------------------------------------------------------------------


class RemoteError(Exception):
    """The device refused a request: code, name (ERROR_NAMES) and its message."""

    def __init__(self, code, message):
        self.code = code
        self.name = ERROR_NAMES.get(code, "code_%d" % code)
        self.message = message
        super().__init__("%s: %s" % (self.name, message))


class LinkFailure(Exception):
    """A request never got an answer: reason "timeout", "restarted" or "version"."""

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


# Per-frame wire bytes besides the chunk data: flags 2, seq+ctl+key 3, offset 4, crc 4.
_CHUNK_OVERHEAD = const(13)
DEFAULT_FRAME_TARGET = const(200)


def plan_chunks(data, frame_target, max_frame):
    """(offset, length) pairs covering data, each WRITE_CHUNK frame at most frame_target wire
    bytes (its offset and data masked and escaped as they will be; seq, ctl and CRC assumed
    unescaped: up to 6 more) and within the device's max_frame decoded bytes."""
    out = []
    off = 0
    total = len(data)
    max_data = max_frame - _link.MIN_FRAME - 4
    while off < total:
        n = min(max_data, total - off, frame_target - _CHUNK_OVERHEAD)
        while n > 1:
            body = struct.pack("<I", off) + data[off : off + n]
            est = _CHUNK_OVERHEAD - 4 + _link.masked_stuffed_len(body, _link.best_key(body))
            if est <= frame_target:
                break
            n -= est - frame_target
        n = max(n, 1)
        out.append((off, n))
        off += n
    return out


class Upload:
    """The plan for one bundle: WRITE_BEGIN, then every WRITE_CHUNK pipelined within the
    window, then WRITE_COMMIT. Advanced by the Client; watch done / error / result / acked."""

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
        self.chunks = 0
        self._begin = client.write_begin(len(self.bundle), self.sha256)
        self._pending = None  # chunk Calls not yet answered
        self._commit = None

    def _advance(self):
        if self.done:
            return
        if self._pending is None:
            if not self._begin.done:
                return
            if self._fail(self._begin):
                return
            link = self.client.link
            target = min(self.frame_target, link.window - 7)  # worst case still fits the window
            self._pending = []
            for off, n in plan_chunks(self.bundle, target, link.device_max_frame):
                self._pending.append(self.client.write_chunk(off, self.bundle[off : off + n]))
            self.chunks = len(self._pending)
        if self._commit is None:
            still = []
            for c in self._pending:
                if not c.done:
                    still.append(c)
                elif self._fail(c):
                    return
                else:
                    self.acked += c.length
            self._pending = still
            if still:
                return
            self._commit = self.client.write_commit()
        if self._commit.done and not self._fail(self._commit):
            self.result = self._commit.result
            self.done = True

    def _fail(self, call):
        if call.error is None:
            return False
        self.error = call.error
        self.done = True
        return True


class Client:
    """Host side session: builds requests, lets the link pipeline and retransmit them, and
    turns answers into finished Calls. Sans-I/O: feed bytes and time, write what it returns.

    rto_ms is the retransmission timeout for quick requests; slow_rto_ms for those the device
    may take seconds over (commit: signature check in pure Python; test_connect: a TLS
    handshake; reboot)."""

    def __init__(self, rto_ms=1000, slow_rto_ms=30000, max_attempts=8, frame_target=DEFAULT_FRAME_TARGET):
        self.link = _link.HostLink(rto_ms=rto_ms, max_attempts=max_attempts)
        self.slow_rto_ms = slow_rto_ms
        self.frame_target = frame_target
        self.device = None  # the link.Connected event once the device answered HELLO
        self.restarted = 0
        self._calls = {}
        self._plans = []

    # -- requests --------------------------------------------------------------------------
    def ping(self, data=b""):
        return self._call(OP_PING, data, _dec_bytes)

    def identify(self):
        return self._call(OP_IDENTIFY, b"", _dec_json)

    def read_bundle(self, offset, length=MAX_READ):
        return self._call(OP_READ_BUNDLE, struct.pack("<IH", offset, length), _dec_read)

    def read_reports(self, offset, length=MAX_READ):
        return self._call(OP_READ_REPORTS, struct.pack("<IH", offset, length), _dec_read)

    def write_begin(self, size, sha256):
        if len(sha256) != SHA256_LEN:
            raise ValueError("sha256 must be 32 bytes")
        return self._call(OP_WRITE_BEGIN, struct.pack("<I", size) + bytes(sha256), _dec_empty, exclusive=True)

    def write_chunk(self, offset, data):
        c = self._call(OP_WRITE_CHUNK, struct.pack("<I", offset) + bytes(data), _dec_empty)
        c.length = len(data)
        return c

    def write_commit(self):
        return self._call(OP_WRITE_COMMIT, b"", _dec_json, exclusive=True, rto_ms=self.slow_rto_ms)

    def clear_reports(self, size):
        return self._call(OP_CLEAR_REPORTS, struct.pack("<I", size), _dec_empty, exclusive=True)

    def test_connect(self, host, port):
        h = host.encode()
        if not 1 <= len(h) <= 253 or not 0 < port < 65536:
            raise ValueError("host of 1 to 253 bytes and port 1-65535")
        body = struct.pack("<H", port) + h
        return self._call(OP_TEST_CONNECT, body, _dec_json, exclusive=True, rto_ms=self.slow_rto_ms)

    def reboot(self):
        return self._call(OP_REBOOT, b"", _dec_empty, exclusive=True, rto_ms=self.slow_rto_ms)

    def upload(self, bundle):
        """Starts uploading and committing a bundle; returns its Upload (watch .done)."""
        plan = Upload(self, bundle, self.frame_target)
        self._plans.append(plan)
        return plan

    # -- I/O -------------------------------------------------------------------------------
    def data_to_send(self, now_ms):
        return self.link.data_to_send(now_ms)

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
    def _call(self, op, body, decode, exclusive=False, rto_ms=None):
        seq = self.link.request(op, body, exclusive, rto_ms)
        c = Call(op, seq, decode)
        self._calls[seq] = c
        return c

    def _handle(self, events):
        done = []
        for ev in events:
            if isinstance(ev, _link.Response):
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
            elif isinstance(ev, _link.Failed):
                c = self._calls.pop(ev.seq, None)
                if c is not None:
                    c.error = LinkFailure(ev.reason)
                    c.done = True
                    done.append(c)
            elif isinstance(ev, _link.Connected):
                self.device = ev
            elif isinstance(ev, _link.Restarted):
                self.restarted += 1
        for plan in self._plans:
            plan._advance()
        self._plans = [p for p in self._plans if not p.done]
        return done
