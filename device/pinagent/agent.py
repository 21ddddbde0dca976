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

Sessions: what each request does is pinagent.handler's (loaded only while a host is connected;
the Handler methods here call it). When a serial session ends (the I/O loop calls
Service.end_session: idle, or serving stopped), an upload never committed and the READ_REPORTS
snapshot are dropped, so their buffers (up to 32 KB) go back to the heap before the application
runs. TEST_CONNECT reaches only hosts the installed bundle has a rule for: the cable is no way to
make the device probe its network.

Heap: at boot the agent loads the store, the installed bundle's decoded form (pinagent.installed,
kept beside the slot when it was installed; only a boot that finds none for the slot loads the
bundle decoder, without pinagent.ecdsa: no signature is checked at boot), the policy, the pin check
and the reports; the update path (service, link, handler, install, bundle, signers, ecdsa) comes
and goes with a host's session.
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


import hashlib

from . import forget
from . import store as _store
from .policy import MATCHED, REPORT_ONLY_MISMATCH, canonical_host

CONNECT_TIMEOUT = const(10)  # seconds, TEST_CONNECT and connect() without a timeout
FLOOR_STEP = const(3600)  # trusted times closer than this to the floor are not written to flash
_MAX_TIME = 253402300799  # 9999-12-31T23:59:59Z


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
        self._reports = None  # pinagent.reports.Reports, made on first use (.reports)
        self._report_settings = None
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
        """Loads the installed bundle (store.Store.boot: never raises for anything in storage).
        The bundle decoder it needed is forgotten afterwards (pinagent.UPDATE_PATH): only an
        update needs it again."""
        try:
            st = self.store.boot()
        except Exception as e:  # a bug: stay up in the safe state
            from .connect import error_text

            st = _store.BootState()
            st.problems.append("boot: " + error_text(e))
            self.store.state = st
        self.state = st
        self._loaded()
        forget()
        return st

    def _loaded(self):
        st = self.state
        b = st.decoded
        if b is not None:
            settings = b.report
        else:
            from .bundle import REPORT_DEFAULTS as settings
        self._report_settings = settings
        if self._reports is not None:
            self._reports.max_bytes = settings["max_bytes"]
            self._reports.max_entries = settings["max_entries"]
        self.report_enabled = settings["enabled"] is True
        self.bundle_sha256 = None if st.bundle is None else hashlib.sha256(st.bundle).digest().hex()
        self.bundle_id = None if b is None else b.digest.hex()
        if self.fleet is None and b is not None:
            self.fleet = b.fleet

    @property
    def reports(self):
        """The failure reports (pinagent.reports.Reports), loaded on first use: a board whose
        connections all pass never loads the module."""
        r = self._reports
        if r is None:
            from .reports import Reports

            s = self._report_settings
            if s is None:
                self.boot()
                s = self._report_settings
            r = self._reports = Reports(self.fs, self.root, s["max_bytes"], s["max_entries"])
        return r

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
        pinagent.store). At boot (installed_version None) the installed bundle is decoded, not
        verified again: its signatures were checked when it was installed, and the store has
        just checked the slot's digest (pinagent.bundle, "Trust is established at install"). No
        rollback, same-version or from-the-future check then either: a clock reading 2000 must
        not reject the installed bundle. pinagent.signers is loaded only for an update, or for
        a bundle that carries a new signer set."""
        if installed_version is None:
            return self._boot_decode(data, signers_bytes)
        from . import bundle as _bundle

        if self.fleet is None:
            raise _bundle.BundleWrongFleet("this device has no fleet configured")
        from . import signers as _signers

        # The trusted set is already trusted: loaded without the key checks a NEW set gets at
        # install (pinagent.signers), so a set an older agent stored never bricks the board.
        trusted = _signers.load_signers(signers_bytes, False)
        floor = self.state.time_floor if self.state is not None else 0
        b = _bundle.decode_bundle(data, trusted, fleet=self.fleet, installed_version=installed_version,
                                  now=self.now(), time_floor=floor, below_ok=True)
        return self._verified(b, signers_bytes)

    def _boot_decode(self, data, signers_bytes):
        # the decoded form kept beside the slot when it was installed (pinagent.installed), else
        # the decoder, whose result is kept for the next boot
        from . import installed as _installed

        v = _installed.load(self.fs, self.root, signers_bytes, data, self.fleet)
        if v is not None:
            return v
        from . import bundle as _bundle

        b = _bundle.decode_bundle(data, None, fleet=self.fleet, installed_version=None, now=None, time_floor=0,
                                  at_boot=True)
        from . import signers as _signers

        # Who signed it (pinagent.store, "A stolen key"): the keys of the slot's set, the set that
        # verified it at install, where every trusted signature had to verify, among its signatures.
        try:
            t = _signers.load_signers(signers_bytes, False)
            b.keys = _signers.xids([t.get(k) for k in b.key_ids if t.get(k) is not None], b.signers)
        except Exception:  # an unreadable set: who signed stays unknown
            pass
        v = self._verified(b, signers_bytes)
        _installed.save(self.fs, self.root, b, signers_bytes, data, v)
        return v

    def _verified(self, b, signers_bytes):
        if b.signers is None:
            return _store.Verified(b, b.version, b.issued, signers_bytes, b.keys)
        from . import signers as _signers

        return _store.Verified(b, b.version, b.issued, _signers.dump_signers(b.signers), b.keys,
                               _signers.xids(b.signers.signers), b.below)

    # ---- pinned connections

    def pin_check(self, host, port=None):
        """(check, ca_certs) for one handshake with `host`: a fresh connect.PinCheck under the
        installed bundle's policy, the clock and the time floor, and the bundle's CA certificates.
        Safe mode raises NoBundle (recorded as the last verdict)."""
        from . import connect as _connect

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
        from . import connect as _connect

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
            from .reports import make_report

            r = make_report(verdict.to_obj(), port, subjects, when, st.version, self.device_id)
            if check is not None and check.detail:
                r["detail"] = check.detail
            return self.reports.add(r)
        except Exception:  # a report must never turn a verdict into a crash
            return None

    # ---- service Handler: what each request does is pinagent.handler's, loaded only while a
    # host is connected (pinagent.io.console drops it, with the service, when the session ends)

    def identify(self):
        return _handler().identify(self)

    def read_bundle(self, offset, length):
        return _handler().read_bundle(self, offset, length)

    def write_begin(self, size, sha256):
        return _handler().write_begin(self, size, sha256)

    def write_chunk(self, offset, data):
        return _handler().write_chunk(self, offset, data)

    def write_commit(self):
        return _handler().write_commit(self)

    def read_reports(self, offset, length):
        return _handler().read_reports(self, offset, length)

    def ack_reports(self, seq):
        return _handler().ack_reports(self, seq)

    def test_connect(self, host, port):
        return _handler().test_connect(self, host, port)

    def end_session(self):
        # An upload not committed goes to flash (pinagent.handler.stage) and its buffer back to
        # the heap; a later session resumes it.
        inc, self._incoming = self._incoming, None
        self._served = None
        if inc is not None:
            try:
                _handler().stage(self, inc)
            except Exception:  # must not raise (service.Handler); the upload then starts again
                pass

    def reboot(self):
        self.reboot_requested = True


def _handler():
    from . import handler

    return handler
