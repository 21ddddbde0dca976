"""The agent's side of the serial update service: what each request does, for
pinagent.agent.Agent (whose service.Handler methods call these with the agent). Loaded only while
a host is connected: pinagent.io.console imports the service (and so this module) when a frame
starts on the console, and drops them when the session ends, so an application never holds
their code; the session's state (the upload being received, the reports snapshot, the last
commit's answer) stays on the agent, which drops it from RAM in end_session.

Upload: WRITE_BEGIN allocates the bundle's buffer, WRITE_CHUNKs fill it (any order, duplicates
free), WRITE_COMMIT checks the digest and installs it through the store, which verifies its
signatures (pinagent.bundle, with pinagent.ecdsa and pinagent.signers, which this module loads:
IDENTIFY says the trusted set's keys).

An upload the session ends before committing is kept, in flash, not RAM: the agent's
end_session gives the buffer back to the heap after stage() wrote its received start to
/fleetpin/upload.part (head: b"FPU1", size u32, the bundle's sha256, the staged bytes' sha256).
The next WRITE_BEGIN takes it back (unstage): the same bundle resumes from there, any other one
drops it. A staged file that is torn or altered fails its digest and is dropped (the upload
starts from zero); what is resumed is checked by the bundle's digest and signatures at the
commit, as any upload.
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


import hashlib
import struct

from . import VERSION
from . import bundle as _bundle
from . import install as _install  # loaded with the session, before an upload's buffer fragments the heap
from . import signers as _signers
from . import store as _store
from .policy import canonical_host

MAX_GAPS = const(64)  # separate received pieces of a bundle being written (in-order hosts make 1-8)
_STAGED_HEAD = "<4sI32s32s"
_STAGED_HEAD_LEN = const(72)
_STAGED_MAGIC = b"FPU1"
_STAGE_SLACK_BLOCKS = const(4)  # a staged upload never takes the last blocks (reports, state)
_READ_PIECE = const(512)
_MAX_PROBLEMS = const(4)
_MAX_PROBLEM = const(80)

# Bundle and storage errors -> service error codes (names in pinagent.service; PROTOCOL.md)
_CODES = (
    (_bundle.BundleSignatureError, "E_SIGNATURE"),
    (_bundle.BundleWrongFleet, "E_FLEET"),
    (_bundle.BundleRollback, "E_ROLLBACK"),
    (_store.Rollback, "E_ROLLBACK"),
    (_store.NoTrustAnchor, "E_SIGNATURE"),
    (_signers.SignerSetError, "E_SIGNATURE"),
    (_store.NoSpace, "E_NO_SPACE"),
    (_store.TooLarge, "E_BUNDLE"),
    (_store.StoreError, "E_STORAGE"),
    (_bundle.BundleError, "E_BUNDLE"),  # malformed, too large, schema, from the future
)


def _refuse(name, reason):
    """A service.ServiceError with the code named `name` (the service is loaded: it called us)."""
    from . import service

    return service.ServiceError(getattr(service, name), reason)


class _Incoming:
    """A bundle being received: its buffer and the byte ranges that arrived ([start, end),
    sorted and merged, so duplicates and retransmissions cost nothing)."""

    __slots__ = ("size", "sha256", "buf", "ranges")

    def __init__(self, size, sha256):
        self.size = size
        self.sha256 = sha256
        self.buf = bytearray(size)
        self.ranges = []

    def add(self, start, end):
        out = []
        for r in self.ranges:
            if r[1] < start or r[0] > end:
                out.append(r)
            else:
                start = min(start, r[0])
                end = max(end, r[1])
        out.append([start, end])
        out.sort(key=_first)
        self.ranges = out

    def prefix(self):
        """How many bytes from the start arrived without a gap."""
        r = self.ranges
        return r[0][1] if r and r[0][0] == 0 else 0

    def complete(self):
        return self.size == 0 or (len(self.ranges) == 1 and self.ranges[0][0] == 0 and self.ranges[0][1] == self.size)


def _first(r):
    return r[0]


def identify(agent):
    st = agent.state
    now = agent.now()
    try:
        free = agent.fs.free(agent.root)[0]
    except Exception:
        free = None
    try:
        pending = agent.reports.pending()
        kept = len(agent.reports._entries)
    except Exception:
        pending = kept = None
    problems = [p[:_MAX_PROBLEM] for p in st.problems[:_MAX_PROBLEMS]]
    return {
        "device_id": agent.device_id,
        "mac": agent.mac,
        "agent": VERSION,
        "format": _bundle.FORMAT,
        "fleet": agent.fleet,
        "mode": st.mode,
        "bundle_version": st.version,
        "bundle_sha256": agent.bundle_sha256,
        "bundle_id": agent.bundle_id,
        "clock": agent.clock_state(now),
        "now": now,
        "time_floor": st.time_floor,
        "trusted_time": agent.trusted_now(),
        "trust": st.signers is not None,
        "signers": _signers_info(agent),
        "free": free,
        "reports": pending,
        "reports_kept": kept,
        "problems": problems,
    }


def _signers_info(agent):
    """The trusted set for IDENTIFY: key ids and thresholds (None without a readable set), and
    `vouched`: the ids of those keys that signed the bundle of the highest version installed
    (pinagent.store, "A stolen key": a rotation must retire one of them to reset the record)."""
    try:
        t = _signers.load_signers(agent.state.signers, False)
    except Exception:  # none (None), or unreadable
        return None
    vouchers = agent.state.max_keys
    return {"ids": [s.key_id.hex() for s in t.signers], "threshold": t.threshold,
            "rotation_threshold": t.rotation_threshold,
            "vouched": [s.key_id.hex() for s in t.signers if _store.holds(vouchers, _signers.xid_of_point(s.point))]}


def read_bundle(agent, offset, length):
    data = agent.state.bundle or b""
    if offset > len(data):
        raise _refuse("E_RANGE", "offset %d past the bundle's %d bytes" % (offset, len(data)))
    return len(data), memoryview(data)[offset:offset + length]


def write_begin(agent, size, sha256):
    sha256 = bytes(sha256)
    inc = agent._incoming
    if inc is not None and inc.size == size and inc.sha256 == sha256:
        return inc.ranges  # the same upload again: keep what arrived, and say what that is
    if size < 1 or size > _bundle.MAX_BUNDLE:
        raise _refuse("E_BUNDLE", "a bundle is 1 to %d bytes, not %d" % (_bundle.MAX_BUNDLE, size))
    agent._incoming = None  # free the old buffer before allocating the new one
    inc = _Incoming(size, sha256)
    unstage(agent, inc)  # before the space check: a staged upload's room is free again
    try:
        free, block = agent.fs.free(agent.root)
    except Exception:
        free, block = None, 0
    # the slot adds the signer set and 42 bytes; bundle.prev may be dropped to make room
    if free is not None and free + _prev_size(agent) < size + 1024 + 2 * block:
        raise _refuse("E_NO_SPACE", "%d bytes, %d free" % (size, free))
    agent._incoming = inc
    return inc.ranges


def stage(agent, inc):
    """Writes the received start of `inc` to flash for a later session (module docstring).
    Best effort: without room, or on a storage error, nothing is kept (the upload will start
    from zero); a power cut leaves upload.new, which boot removes."""
    n = inc.prefix()
    if n == 0:
        return
    fs = agent.fs
    path = agent.store.path(_store.UPLOAD)
    tmp = agent.store.path(_store.UPLOAD_NEW)
    try:
        free, block = fs.free(agent.root)
        if free < _STAGED_HEAD_LEN + n + _STAGE_SLACK_BLOCKS * block:
            return
        data = memoryview(inc.buf)[:n]
        head = struct.pack(_STAGED_HEAD, _STAGED_MAGIC, inc.size, inc.sha256, hashlib.sha256(data).digest())
        fs.write_atomic(path, tmp, (head, data))
    except Exception:
        try:
            fs.remove_quiet(tmp)
        except Exception:
            pass


def unstage(agent, inc):
    """Takes a staged upload out of flash: if it is the start of `inc`'s bundle and its digest
    holds, into inc's buffer (inc.ranges then say what it holds); whatever it was, the file goes."""
    fs = agent.fs
    path = agent.store.path(_store.UPLOAD)
    try:
        size = fs.size(path)
        if size < 0:
            return  # nothing staged
        n = size - _STAGED_HEAD_LEN
        try:
            if 0 < n <= inc.size:
                _load_staged(fs, path, inc, n)
        finally:
            fs.remove_quiet(path)
    except Exception:  # unreadable, or cannot be removed: the upload starts from zero
        inc.ranges = []


def _load_staged(fs, path, inc, n):
    f = fs.open(path, "rb")
    try:
        magic, size, sha, staged_sha = struct.unpack(_STAGED_HEAD, f.read(_STAGED_HEAD_LEN))
        if magic != _STAGED_MAGIC or size != inc.size or sha != inc.sha256:
            return  # another upload (replaced), or not a staged upload at all
        buf = memoryview(inc.buf)
        got = 0
        while got < n:  # in pieces: a second buffer the bundle's size would double the heap it needs
            piece = f.read(min(_READ_PIECE, n - got))
            if not piece:
                return
            buf[got:got + len(piece)] = piece
            got += len(piece)
    finally:
        f.close()
    if hashlib.sha256(buf[:n]).digest() == staged_sha:
        inc.add(0, n)


def _prev_size(agent):
    try:
        return max(0, agent.fs.size(agent.root + "/" + _store.BUNDLE_PREV))
    except Exception:
        return 0


def write_chunk(agent, offset, data):
    inc = agent._incoming
    if inc is None:
        raise _refuse("E_NO_WRITE", "WRITE_BEGIN first")
    end = offset + len(data)
    if end > inc.size:
        raise _refuse("E_RANGE", "chunk %d..%d past the bundle's %d bytes" % (offset, end, inc.size))
    inc.buf[offset:end] = data
    inc.add(offset, end)
    if len(inc.ranges) > MAX_GAPS:  # a host sends in order; scattered chunks would cost heap and time
        agent._incoming = None
        raise _refuse("E_RANGE", "more than %d separate pieces: start again with WRITE_BEGIN" % MAX_GAPS)


def write_commit(agent):
    inc = agent._incoming
    if inc is None:
        if agent._committed is not None:
            return agent._committed[1]  # committed already: the same answer
        raise _refuse("E_NO_WRITE", "nothing received: WRITE_BEGIN first")
    if not inc.complete():
        raise _refuse("E_INCOMPLETE", "bytes missing before the commit")
    if hashlib.sha256(inc.buf).digest() != inc.sha256:
        raise _refuse("E_DIGEST", "the received bytes do not match WRITE_BEGIN's sha256")
    data = inc.buf
    floor = agent.state.time_floor
    try:
        v = _install.install(agent.store, data)
    except _bundle.BundleSameVersion as e:
        agent._incoming = None
        answer = {"version": agent.state.version, "installed": False, "reason": e.reason}
        agent._committed = (inc.sha256, answer)
        return answer
    except Exception as e:
        agent._incoming = None  # refused for good: give its buffer (up to 32 KB) back to the heap
        raise _refuse(_code_of(e), _reason_of(e))
    agent._incoming = None
    if agent.state.time_floor < floor:  # a rotation retired the key behind the floor: in RAM too
        agent._trusted = 0
    agent._loaded()
    answer = {"version": v.version, "installed": True, "issued": v.issued, "bundle_sha256": agent.bundle_sha256,
              "bundle_id": agent.bundle_id}
    agent._committed = (inc.sha256, answer)
    return answer


def read_reports(agent, offset, length):
    if offset == 0 or agent._served is None:
        # One snapshot per read-through: the chunks of one read are consistent.
        agent._served = agent.reports.export()
    data = agent._served
    if offset > len(data):
        raise _refuse("E_RANGE", "offset %d past the log's %d bytes" % (offset, len(data)))
    return len(data), memoryview(data)[offset:offset + length]


def ack_reports(agent, seq):
    acked = agent.reports.ack(seq)
    return {"acked": acked, "pending": agent.reports.pending()}


def test_connect(agent, host, port):
    canon = canonical_host(host)
    b = agent.state.decoded if agent.state is not None else None
    if canon is None or (b is not None and b.policy.rule_for(canon) is None):
        raise _refuse("E_CONNECT", "%r: no rule for this host in the installed bundle (TEST_CONNECT "
                                   "reaches pinned hosts only)" % (host[:64],))
    host = canon
    from . import connect as _connect  # the application's module: a session without this request never loads it

    try:
        sock, check = agent.open(host, port)
    except _connect.NetworkError as e:
        raise _refuse("E_CONNECT", "%s:%d: %s" % (host, port, e.detail or e.reason))
    except _connect.ConnectError as e:
        return _verdict_answer(e.verdict, port, e.detail)
    _connect._close(sock)  # nothing is sent: the handshake is the test
    return _verdict_answer(check.verdict, port, None)


def _verdict_answer(v, port, detail):
    chain = []
    for depth, digest in v.chain:
        chain.append({"depth": depth, "pin": _pin_text(digest)})
    rule = v.rule
    out = {
        "allowed": v.allowed,
        "reason": v.reason,
        "host": v.host,
        "port": port,
        "rule": None if rule is None else rule.host,
        "matched_label": None if rule is None or v.matched_pin is None else rule.label_of(v.matched_pin),
        "matched_depth": v.matched_depth,
        "clock_trusted": v.clock_trusted,
        "expired": v.expired,
        "chain": chain,
    }
    if detail:
        out["detail"] = detail
    return out


def _pin_text(digest):
    from .pins import pin_to_text

    return pin_to_text(digest)


def _code_of(e):
    for cls, code in _CODES:
        if isinstance(e, cls):
            return code
    return "E_STORAGE" if isinstance(e, OSError) else "E_INTERNAL"


def _reason_of(e):
    reason = getattr(e, "reason", None)
    if not isinstance(reason, str):
        return _store.why(e)  # loaded: no import while failing (a MemoryError, say); the link cuts it short
    if isinstance(e, _store.NoTrustAnchor):
        return reason + ": reprovision the board"
    return reason
