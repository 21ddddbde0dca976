"""The agent: wires storage, the bundle codec, pinned connections and failure reports together,
and serves the update protocol as the service Handler.

    agent = Agent(fs, clock, device_id, fleet, tls_adapter, mac=board_mac)
    agent.boot()                                  loads the installed bundle (never raises)
    sock = agent.connect(host, port, timeout)     THE call for application code (pinned TLS)
    ctx = agent.tls_context()                     the same check for clients that take an
                                                  SSLContext (asyncio, MQTT): pinagent.tlsctx
    agent.requests.get(url, ...)                  pinned HTTP, `requests`' interface: pinagent.http
    Service(agent)                                the serial update service (service.Handler)

fs: a pinagent.store.FS (pinagent.io.flash on the board). clock(): POSIX seconds, or None when
the clock is unset (the io layer converts the ESP32's 2000 epoch). fleet: this device's fleet id,
or None to adopt the fleet of the installed bundle (a board whose config was lost stays usable).
tls_adapter: see pinagent.connect (pinagent.io.tls on the board, fleetpin.sim.tls on CPython).
mac: the board's base MAC ("aa:bb:cc:dd:ee:ff", what esptool read when the line provisioned it),
or None if unknown; IDENTIFY says it, so the fleet's reports join the line's registry.

Time: the clock is believed only at or above the time floor (store.BootState.time_floor: the
newest trusted time kept in flash, at least the installed bundle's issue time). Trusted time is
the newest time the agent holds authenticated evidence for: the floor, the signed issue time of
every bundle it verifies, and times the application reports from pinned servers:

    sock, check = agent.open(host, port)          read the server's time t over the connection
    agent.server_time(check, t)                   taken only if check's verdict is a pin match

trusted_time(t) takes a time from any other authenticated source (never SNTP: anyone on the path
can answer it). Only trusted time can confirm that pins expired (pinagent.policy, "Expiry and
time"): a clock moved past an expiry does not switch pinning off. Trusted time rises at once in
RAM and is written to flash (as the floor) when it moved by FLOOR_STEP or more.

Safe mode (no verifiable bundle): every connection is refused (connect.NoBundle), fail-closed,
while the update service keeps running, so one signed bundle over serial repairs the board.

Reports: every blocked or report-only verdict is recorded through pinagent.reports (read over
serial, never sent over the network), except in safe mode, where each refusal is the same and
IDENTIFY already says why (recording them would only wear the flash). The serial console is not
authenticated, so nothing on it erases reports: a host acknowledges what it read (ack_reports).

Sessions: when a serial session ends (the I/O loop calls Service.end_session: idle, or serving
stopped), an upload never committed and the READ_REPORTS snapshot are dropped, so their buffers
(up to 32 KB) go back to the heap before the application runs. TEST_CONNECT reaches only hosts
the installed bundle has a rule for: the cable is no way to make the device probe its network.
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


import hashlib

from . import VERSION
from . import bundle as _bundle
from . import connect as _connect
from . import reports as _reports
from . import signers as _signers
from . import store as _store
from .policy import MATCHED, REPORT_ONLY_MISMATCH, canonical_host

CONNECT_TIMEOUT = const(10)  # seconds, TEST_CONNECT and connect() without a timeout
FLOOR_STEP = const(3600)  # trusted times closer than this to the floor are not written to flash
MAX_GAPS = const(64)  # separate received pieces of a bundle being written (in-order hosts make 1-8)
_MAX_PROBLEMS = const(4)
_MAX_PROBLEM = const(80)
_MAX_TIME = 253402300799  # 9999-12-31T23:59:59Z

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
    """A service.ServiceError with the code named `name`. The service modules (and the link
    under them, ~12 KB of heap) are imported only when the board serves the protocol: an
    application that only opens connections never loads them."""
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

    def complete(self):
        return self.size == 0 or (len(self.ranges) == 1 and self.ranges[0][0] == 0 and self.ranges[0][1] == self.size)


def _first(r):
    return r[0]


class Agent:
    """See the module docstring. Implements pinagent.service.Handler's methods."""

    def __init__(self, fs, clock, device_id, fleet, tls_adapter, root=_store.ROOT, mac=None):
        self.fs = fs
        self.clock = clock
        self.device_id = device_id
        self.mac = mac
        self.fleet = fleet
        self.tls = tls_adapter
        self.root = root
        self.store = _store.Store(fs, self._verify, root)
        self.state = None  # store.BootState
        self.reports = None
        self.bundle_sha256 = None  # hex SHA-256 of the installed bundle's bytes (transfer read-back)
        self.bundle_id = None  # hex SHA-256 of its signed bytes: the bundle's identity (pinagent.bundle)
        self.report_enabled = True
        self.last_verdict = None
        self.reboot_requested = False
        self._incoming = None
        self._committed = None  # (sha256, answer) of the last commit, for a repeated commit
        self._served = None  # the report log bytes of the current READ_REPORTS read-through
        self._trusted = 0  # newest authenticated time seen since boot (the floor lags it by < FLOOR_STEP)
        self._http = None  # pinagent.http.Client, made on first use of .requests

    # ---- boot and time

    def boot(self):
        """Loads the installed bundle (store.Store.boot: never raises for anything in storage)."""
        try:
            st = self.store.boot()
        except Exception as e:  # a bug: stay up in the safe state
            st = _store.BootState()
            st.problems.append("boot: " + _connect.error_text(e))
            self.store.state = st
        self.state = st
        self._loaded()
        return st

    def _loaded(self):
        st = self.state
        b = st.decoded
        settings = b.report if b is not None else _bundle.REPORT_DEFAULTS
        if self.reports is None:
            self.reports = _reports.Reports(self.fs, self.root, settings["max_bytes"], settings["max_entries"])
        else:
            self.reports.max_bytes = settings["max_bytes"]
            self.reports.max_entries = settings["max_entries"]
        self.report_enabled = settings["enabled"] is True
        self.bundle_sha256 = None if st.bundle is None else hashlib.sha256(st.bundle).digest().hex()
        self.bundle_id = None if b is None else b.digest.hex()
        if self.fleet is None and b is not None:
            self.fleet = b.fleet

    def now(self):
        """The device clock (POSIX seconds) or None; a failing clock counts as unset."""
        try:
            t = self.clock()
        except Exception:
            return None
        return t if isinstance(t, int) else (None if t is None else int(t))

    def clock_state(self, now):
        if now is None:
            return "unset"
        return "trusted" if now >= self.state.time_floor else "floor"

    def trusted_now(self):
        """The newest authenticated time (POSIX seconds): the floor, or newer evidence in RAM."""
        st = self.state
        floor = st.time_floor if st is not None else 0
        return self._trusted if self._trusted > floor else floor

    def trusted_time(self, t):
        """A time from an authenticated source (POSIX seconds; never SNTP): raises trusted time
        at once, and the time floor in flash when it moved by FLOOR_STEP or more. Returns True if
        it was written to flash."""
        st = self.state
        if st is None or type(t) is not int or t < 0 or t > _MAX_TIME:
            return False
        if t > self._trusted:
            self._trusted = t
        if t < st.time_floor + FLOOR_STEP:
            return False
        return self.store.raise_time_floor(t)

    def server_time(self, check, t):
        """A time (POSIX seconds) the application read from a server over a pinned connection:
        `check` is the connect.PinCheck that open() returned with its socket (or its verdict).
        Taken as trusted time only if that connection's pin matched (an unpinned or expired-pin
        connection may be the attacker's); returns True if it was taken."""
        v = getattr(check, "verdict", check)
        if v is None or getattr(v, "reason", None) != MATCHED or getattr(v, "allowed", False) is not True:
            return False
        if type(t) is not int or t < 0 or t > _MAX_TIME:
            return False
        self.trusted_time(t)
        return True

    def _verify(self, data, signers_bytes, installed_version):
        """store.Store's verify: the signed bundle against a signer set (module docstring of
        pinagent.store). At boot (installed_version None) no rollback, same-version or
        from-the-future check: a clock reading 2000 must not reject the installed bundle."""
        # The trusted set is already trusted: loaded without the key checks a NEW set gets at
        # install (pinagent.signers), so a set an older agent stored never bricks the board.
        trusted = _signers.load_signers(signers_bytes, False)
        fleet = self.fleet
        if installed_version is None:
            if fleet is None:
                fleet = _bundle.parse_envelope(data).header["fleet"]
            b = _bundle.decode_bundle(data, trusted, fleet, None, None, 0, True)
        else:
            if fleet is None:
                raise _bundle.BundleWrongFleet("this device has no fleet configured")
            floor = self.state.time_floor if self.state is not None else 0
            b = _bundle.decode_bundle(data, trusted, fleet, installed_version, self.now(), floor)
        nxt = signers_bytes if b.signers is None else _signers.dump_signers(b.signers)
        return _store.Verified(b, b.version, b.issued, nxt)

    # ---- pinned connections

    def pin_check(self, host, port=None):
        """(check, ca_certs) for one handshake with `host`: a fresh connect.PinCheck under the
        installed bundle's policy, the clock and the time floor, and the bundle's CA certificates.
        Safe mode raises NoBundle (recorded as the last verdict)."""
        st = self.state
        if st is None:
            st = self.boot()
        now = self.now()
        b = st.decoded
        if b is None:
            v = _connect.make_verdict(host, _connect.NO_BUNDLE, (), None, self.clock_state(now) == "trusted")
            self.last_verdict = v
            raise _connect.NoBundle(v.reason, v, "safe mode: " + st.mode, host, port)
        return _connect.PinCheck(b.policy, host, now, st.time_floor, True, self.trusted_now()), b.ca_certs

    def record(self, check, port, error=None):
        """Records the outcome of a handshake `check` saw: the verdict as .last_verdict, and a
        failure report when it was refused (`error`, a ConnectError) or allowed report-only.
        Returns `error` (so: raise agent.record(check, port, e))."""
        v = check.verdict if error is None else error.verdict
        self.last_verdict = v
        if v is not None and (error is not None or v.reason == REPORT_ONLY_MISMATCH):
            self._report(v, port, check, check.now)
        return error

    def open(self, host, port, timeout=None):
        """connect() that also returns the check: (socket, connect.PinCheck)."""
        # the canonical spelling, as rules are written: what the check and TLS both see (a host
        # without one is refused by open_pinned before anything touches the network)
        canon = canonical_host(host) if isinstance(host, str) else None
        check, ca_certs = self.pin_check(canon if canon is not None else host, port)
        if timeout is None:
            timeout = CONNECT_TIMEOUT
        try:
            sock, check = _connect.open_pinned(self.tls, None, ca_certs, host, port, timeout, check=check)
        except _connect.ConnectError as e:
            raise self.record(check, port, e)
        self.record(check, port)
        return sock, check

    def connect(self, host, port, timeout=None):
        """Opens a pinned TLS connection to host:port: a socket-like object, or raises a
        pinagent.connect.ConnectError (NetworkError, PinBlocked, TlsRefused, NoBundle) that
        carries the verdict. The verdict of the last attempt is in .last_verdict."""
        return self.open(host, port, timeout)[0]

    def tls_context(self):
        """An SSLContext stand-in for clients that take one (asyncio, MQTT clients, your own):
        every wrap_socket runs the same pin check as connect(). See pinagent.tlsctx."""
        from .tlsctx import PinnedContext

        return PinnedContext(self)

    @property
    def requests(self):
        """A pinned HTTP client with the interface of MicroPython's `requests` (pinagent.http),
        loaded on first use: agent.requests.get(url, ...)."""
        client = self._http
        if client is None:
            from .http import Client

            client = self._http = Client(self)
        return client

    def _report(self, verdict, port, check, now):
        if not self.report_enabled:
            return None
        try:
            st = self.state
            when = now if now is not None and now >= st.time_floor else None
            subjects = check.subjects if check is not None else None
            r = _reports.make_report(verdict.to_obj(), port, subjects, when, st.version, self.device_id)
            if check is not None and check.detail:
                r["detail"] = check.detail
            return self.reports.add(r)
        except Exception:  # a report must never turn a verdict into a crash
            return None

    # ---- service Handler

    def identify(self):
        st = self.state
        now = self.now()
        try:
            free = self.fs.free(self.root)[0]
        except Exception:
            free = None
        try:
            pending = self.reports.pending()
            kept = len(self.reports._entries)
        except Exception:
            pending = kept = None
        problems = [p[:_MAX_PROBLEM] for p in st.problems[:_MAX_PROBLEMS]]
        return {
            "device_id": self.device_id,
            "mac": self.mac,
            "agent": VERSION,
            "format": _bundle.FORMAT,
            "fleet": self.fleet,
            "mode": st.mode,
            "bundle_version": st.version,
            "bundle_sha256": self.bundle_sha256,
            "bundle_id": self.bundle_id,
            "clock": self.clock_state(now),
            "now": now,
            "time_floor": st.time_floor,
            "trusted_time": self.trusted_now(),
            "trust": st.signers is not None,
            "signers": self._signers_info(),
            "free": free,
            "reports": pending,
            "reports_kept": kept,
            "problems": problems,
        }

    def _signers_info(self):
        """The trusted set for IDENTIFY: key ids and thresholds (None without a readable set)."""
        try:
            t = _signers.load_signers(self.state.signers, False)
        except Exception:  # none (None), or unreadable
            return None
        return {"ids": [s.key_id.hex() for s in t.signers], "threshold": t.threshold,
                "rotation_threshold": t.rotation_threshold}

    def read_bundle(self, offset, length):
        data = self.state.bundle or b""
        if offset > len(data):
            raise _refuse("E_RANGE", "offset %d past the bundle's %d bytes" % (offset, len(data)))
        return len(data), memoryview(data)[offset:offset + length]

    def write_begin(self, size, sha256):
        inc = self._incoming
        if inc is not None and inc.size == size and inc.sha256 == bytes(sha256):
            return inc.ranges  # the same upload again: keep what arrived, and say what that is
        if size < 1 or size > _bundle.MAX_BUNDLE:
            raise _refuse("E_BUNDLE", "a bundle is 1 to %d bytes, not %d" % (_bundle.MAX_BUNDLE, size))
        self._incoming = None  # free the old buffer before allocating the new one
        try:
            free, block = self.fs.free(self.root)
        except Exception:
            free, block = None, 0
        # the slot adds the signer set and 42 bytes; bundle.prev may be dropped to make room
        if free is not None and free + self._prev_size() < size + 1024 + 2 * block:
            raise _refuse("E_NO_SPACE", "%d bytes, %d free" % (size, free))
        self._incoming = _Incoming(size, bytes(sha256))

    def _prev_size(self):
        try:
            return max(0, self.fs.size(self.root + "/" + _store.BUNDLE_PREV))
        except Exception:
            return 0

    def write_chunk(self, offset, data):
        inc = self._incoming
        if inc is None:
            raise _refuse("E_NO_WRITE", "WRITE_BEGIN first")
        end = offset + len(data)
        if end > inc.size:
            raise _refuse("E_RANGE", "chunk %d..%d past the bundle's %d bytes" % (offset, end, inc.size))
        inc.buf[offset:end] = data
        inc.add(offset, end)
        if len(inc.ranges) > MAX_GAPS:  # a host sends in order; scattered chunks would cost heap and time
            self._incoming = None
            raise _refuse("E_RANGE", "more than %d separate pieces: start again with WRITE_BEGIN" % MAX_GAPS)

    def write_commit(self):
        inc = self._incoming
        if inc is None:
            if self._committed is not None:
                return self._committed[1]  # committed already: the same answer
            raise _refuse("E_NO_WRITE", "nothing received: WRITE_BEGIN first")
        if not inc.complete():
            raise _refuse("E_INCOMPLETE", "bytes missing before the commit")
        if hashlib.sha256(inc.buf).digest() != inc.sha256:
            raise _refuse("E_DIGEST", "the received bytes do not match WRITE_BEGIN's sha256")
        data = inc.buf
        try:
            v = self.store.install(data)
        except _bundle.BundleSameVersion as e:
            self._incoming = None
            answer = {"version": self.state.version, "installed": False, "reason": e.reason}
            self._committed = (inc.sha256, answer)
            return answer
        except Exception as e:
            self._incoming = None  # refused for good: give its buffer (up to 32 KB) back to the heap
            raise _refuse(_code_of(e), _reason_of(e))
        self._incoming = None
        self._loaded()
        answer = {"version": v.version, "installed": True, "issued": v.issued, "bundle_sha256": self.bundle_sha256,
                  "bundle_id": self.bundle_id}
        self._committed = (inc.sha256, answer)
        return answer

    def read_reports(self, offset, length):
        if offset == 0 or self._served is None:
            # One snapshot per read-through: the chunks of one read are consistent.
            self._served = self.reports.export()
        data = self._served
        if offset > len(data):
            raise _refuse("E_RANGE", "offset %d past the log's %d bytes" % (offset, len(data)))
        return len(data), memoryview(data)[offset:offset + length]

    def ack_reports(self, seq):
        acked = self.reports.ack(seq)
        return {"acked": acked, "pending": self.reports.pending()}

    def end_session(self):
        self._incoming = None
        self._served = None

    def test_connect(self, host, port):
        canon = canonical_host(host)
        b = self.state.decoded if self.state is not None else None
        if canon is None or (b is not None and b.policy.rule_for(canon) is None):
            raise _refuse("E_CONNECT", "%r: no rule for this host in the installed bundle (TEST_CONNECT "
                                       "reaches pinned hosts only)" % (host[:64],))
        host = canon
        try:
            sock, check = self.open(host, port)
        except _connect.NetworkError as e:
            raise _refuse("E_CONNECT", "%s:%d: %s" % (host, port, e.detail or e.reason))
        except _connect.ConnectError as e:
            return _verdict_answer(e.verdict, port, e.detail)
        _connect._close(sock)  # nothing is sent: the handshake is the test
        return _verdict_answer(check.verdict, port, None)

    def reboot(self):
        self.reboot_requested = True


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
        return _connect.error_text(e)
    if isinstance(e, _store.NoTrustAnchor):
        return reason + ": reprovision the board"
    return reason
