"""The update service on top of the link: op codes, error codes and names, request and
response bodies, and the device-side dispatcher that calls an injected Handler.
device/PROTOCOL.md specifies every message. The host side (Client, Upload, plan_chunks) is
fleetpin/protocol/client.py, on the host.

Device:  svc = Service(handler); link = DeviceLink(svc.dispatch); out = link.receive_data(rx)
         (after writing `out`, reboot if svc.reboot_requested; svc.end_session() when a session
         goes idle or serving stops)
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


import json
import struct

from . import link as _link
from .link import E_BAD_REQUEST, E_INTERNAL, E_NO_SESSION, E_RANGE, E_VERSION, OP_ERROR, PROTOCOL_VERSION

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
OP_ACK_REPORTS = const(0x0B)

E_UNKNOWN_OP = const(4)
E_UNSUPPORTED = const(5)
E_NO_WRITE = const(6)
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
MAX_RANGES = const(31)  # received ranges WRITE_BEGIN's answer lists (1 + 8 * 31 bytes fit a frame)


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
        Beginning again with the same size and digest must keep what was received, and may
        return it as [start, end) ranges (sorted), so the host sends only the rest."""
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

    def ack_reports(self, seq):
        """Acknowledges the reports up to sequence number `seq` (what the host read); they are
        kept. Returns a dict (acked, pending). Nothing on the serial line erases reports."""
        raise ServiceError(E_UNSUPPORTED, "ack_reports")

    def end_session(self):
        """The serial session ended (idle, or serving stopped): give back the RAM only it needed
        (an upload not committed: the agent keeps it in flash for a later session). Must not
        raise."""

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


def _ping(svc, h, body):
    return bytes(body)


def _identify(svc, h, body):
    _need(body, 0, "IDENTIFY")
    info = h.identify()
    if not isinstance(info, dict):
        raise ServiceError(E_INTERNAL, "identify returned %s, not a dict" % type(info).__name__)
    info = dict(info)
    info["proto"] = PROTOCOL_VERSION
    return json.dumps(info).encode()


def _read(reader):
    def run(svc, h, body):
        _need(body, 6, "READ")
        n = min(_u16(body, 4), svc.max_read)
        total, data = getattr(h, reader)(_u32(body, 0), n)
        return _read_answer(total, data[:n])

    return run


def _write_begin(svc, h, body):
    _need(body, 4 + SHA256_LEN, "WRITE_BEGIN")
    ranges = h.write_begin(_u32(body, 0), bytes(body[4:]))
    if not ranges:
        return b""
    # count u8, then (start u32, end u32) each: as many as one answer holds (the host sends
    # again whatever is not listed, which costs only time)
    ranges = ranges[:MAX_RANGES]
    out = bytearray(1 + 8 * len(ranges))
    out[0] = len(ranges)
    i = 1
    for r in ranges:
        struct.pack_into("<II", out, i, r[0], r[1])
        i += 8
    return bytes(out)


def _write_chunk(svc, h, body):
    if len(body) < 5:
        raise ServiceError(E_BAD_REQUEST, "WRITE_CHUNK: no data")
    h.write_chunk(_u32(body, 0), body[4:])
    return b""


def _write_commit(svc, h, body):
    _need(body, 0, "WRITE_COMMIT")
    return _json(h.write_commit())


def _clear_reports(svc, h, body):
    # The console is not authenticated: whoever holds a cable must not wipe an attack's traces.
    raise ServiceError(E_UNSUPPORTED, "reports are never erased over serial: ACK_REPORTS acknowledges them")


def _ack_reports(svc, h, body):
    _need(body, 4, "ACK_REPORTS")
    return _json(h.ack_reports(_u32(body, 0)))


def _test_connect(svc, h, body):
    if len(body) < 3 or len(body) > 2 + 253:
        raise ServiceError(E_BAD_REQUEST, "TEST_CONNECT: host name of 1 to 253 bytes")
    try:
        host = str(bytes(body[2:]), "utf-8")
    except Exception:  # UnicodeError on CPython, its parent on MicroPython
        raise ServiceError(E_BAD_REQUEST, "TEST_CONNECT: host is not utf-8")
    return _json(h.test_connect(host, _u16(body, 0)))


def _reboot(svc, h, body):
    _need(body, 0, "REBOOT")
    h.reboot()
    svc.reboot_requested = True
    return b""


# The serial ops, one row each: code -> (name, what runs it). A new op is one row here, its
# function above and its Handler method; PROTOCOL.md documents the bodies.
OPS = {
    OP_PING: ("PING", _ping),
    OP_IDENTIFY: ("IDENTIFY", _identify),
    OP_READ_BUNDLE: ("READ_BUNDLE", _read("read_bundle")),
    OP_WRITE_BEGIN: ("WRITE_BEGIN", _write_begin),
    OP_WRITE_CHUNK: ("WRITE_CHUNK", _write_chunk),
    OP_WRITE_COMMIT: ("WRITE_COMMIT", _write_commit),
    OP_READ_REPORTS: ("READ_REPORTS", _read("read_reports")),
    OP_CLEAR_REPORTS: ("CLEAR_REPORTS", _clear_reports),
    OP_TEST_CONNECT: ("TEST_CONNECT", _test_connect),
    OP_REBOOT: ("REBOOT", _reboot),
    OP_ACK_REPORTS: ("ACK_REPORTS", _ack_reports),
}


class Service:
    """Device side: decodes a request, calls the handler, encodes the answer. Never raises."""

    def __init__(self, handler, max_read=MAX_READ):
        self.handler = handler
        self.max_read = max_read
        self.reboot_requested = False

    def dispatch(self, op, body):
        try:
            row = OPS.get(op)
            if row is None:
                raise ServiceError(E_UNKNOWN_OP, "unknown op 0x%02x" % op)
            return op, row[1](self, self.handler, body)
        except ServiceError as e:
            return OP_ERROR, _link.error_body(e.code, e.reason)
        except Exception as e:  # a handler bug must not take the service down
            code = getattr(e, "code", None)
            if type(e).__name__ == "ServiceError" and type(code) is int:
                # a refusal from a handler that imported this module again after
                # pinagent.forget() dropped it (its ServiceError is another class object)
                return OP_ERROR, _link.error_body(code, getattr(e, "reason", str(e)))
            return OP_ERROR, _link.error_body(E_INTERNAL, "%s: %s" % (type(e).__name__, e))

    def end_session(self):
        """Called by the I/O loop when a session went idle or serving stops; never raises."""
        try:
            self.handler.end_session()
        except Exception:
            pass
