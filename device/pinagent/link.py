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

This module is what both ends share (the frame codec, op codes, limits) plus the device end,
DeviceLink. The host end, HostLink, is fleetpin/protocol/link_host.py, on the host.
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
OP_READ_CACHED = const(0x1E)  # link: a piece of a cached answer (a long answer over a noisy line)
OP_ERROR = const(0x1F)  # response op for every failed request: code u8, utf-8 message

# Error codes the link itself answers with (the full table is in service.py).
E_NO_SESSION = const(1)
E_VERSION = const(2)
E_BAD_REQUEST = const(3)
E_RANGE = const(7)
E_INTERNAL = const(18)
MAX_PIECE = const(512)  # largest piece of a cached answer READ_CACHED returns

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
        if op == OP_READ_CACHED:
            return self._read_cached(seq, rctl, f)
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

    def _read_cached(self, seq, rctl, f):
        # READ_CACHED: seq u8, offset u16, length u16 -> answer op u8, total u16, the piece.
        # Read-only and not cached itself: it never pushes the answer it reads out of the cache.
        if len(f) != 8:
            return encode_frame(seq, rctl | OP_ERROR, error_body(E_BAD_REQUEST, "READ_CACHED: seq u8, offset u16, length u16"))
        want = f[3]
        off = f[4] | (f[5] << 8)
        n = f[6] | (f[7] << 8)
        for i in range(self.cache_size):
            body = self._c_body[i]
            if body is not None and self._c_seq[i] == want:
                if off > len(body):
                    break
                n = min(n, MAX_PIECE)
                t = len(body)
                head = bytes((self._c_op[i], t & 0xFF, t >> 8))
                return encode_frame(seq, rctl | OP_READ_CACHED, head + bytes(body[off : off + n]))
        return encode_frame(seq, rctl | OP_ERROR, error_body(E_RANGE, "no cached answer to request %d" % want))
