"""Pinned TLS connections, the runtime-independent part: the verify-callback state machine and
the one call that opens a connection through an injected TLS adapter.

    check = PinCheck(policy, host, now, time_floor, trusted_time=None)
    check.on_cert(der, depth) -> 0 | 1      the verify callback (mbedTLS: top first, leaf last at
                                            depth 0); decides at depth 0; never raises
    check.verdict                           pinagent.policy.Verdict, or None before depth 0

    sock, check = open_pinned(adapter, policy, ca_certs, host, port, timeout, now, time_floor, trusted_time)
    refusal(check, exception, port) -> PinBlocked | TlsRefused   for a handshake that raised
    approve(check, sock, port) -> sock      or closes it and raises, unless the check allowed it

now, time_floor and trusted_time are policy.decide's (trusted_time: the newest authenticated
time, which alone can confirm that pins expired).

The adapter (pinagent.io.tls on the ESP32, fleetpin.sim.tls on CPython) does the I/O:

    adapter.open(host, port, timeout, ca_certs, check) -> socket-like object
        Connects with CA validation ON (CERT_REQUIRED, server_hostname=host, the bundle's CA
        certificates as trust anchors) and makes `check` see the chain before any application
        byte is sent: as the verify callback (mbedTLS) or by feeding it the CA-verified chain
        root first, leaf last (CPython). Raises NetworkError for failures before the TLS
        handshake (DNS, TCP, timeout); any other exception means the handshake failed.
    adapter.wrap(sock, host, ca_certs, check, client_cert=None, do_handshake=True)
        The same on a socket the caller connected (pinagent.tlsctx: the SSLContext stand-in);
        client_cert = (cert, key) for mutual TLS. With do_handshake False the handshake may
        run on the first read or write instead (mbedTLS), where the check sees the chain.

Why the check may assume a CA-verified chain (policy.decide(verified=True)): the adapters only
run under CERT_REQUIRED, where a chain that fails CA validation aborts the handshake even if the
callback returned 0; open_pinned then turns the outcome into TLS_FAILED. So an intermediate or
root pin only ever lets a connection through together with CA validation (DESIGN.md, TLS).

Errors (all ConnectError, each with .reason, .verdict (or None), .detail, .host, .port, .check):
    NetworkError   nothing was decided: no TCP connection, no handshake (no verdict)
    PinBlocked     the pin check refused the chain (policy reasons, bad_certificate, ...)
    TlsRefused     the TLS stack refused: CA validation, host name, dates, or the handshake
                   failed (reason TLS_FAILED; the pin check may have seen the chain)
    NoBundle       no verified bundle on the board: every connection is refused (safe mode)
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from . import policy as _policy
from .der import DerError, spki_of_certificate, subject_cn
from .pins import spki_digest

# Verdict reasons beyond pinagent.policy's (which the check passes through unchanged)
TLS_FAILED = "tls_failed"  # the TLS stack refused the chain or the handshake failed
BAD_CERTIFICATE = "bad_certificate"  # a certificate the DER walker could not read
CALLBACK_ERROR = "callback_error"  # the check itself failed (a bug, or out of memory)
CALLBACK_ORDER = "callback_order"  # called again after the decision, or with a bad depth
CHAIN_TOO_LONG = "chain_too_long"
NOT_CHECKED = "not_checked"  # the adapter returned a socket without running the check
NO_BUNDLE = "no_bundle"  # safe mode: no verified bundle, so no CA certificates and no pins

MAX_CHAIN = const(10)  # mbedTLS allows 8 intermediates: leaf + 8 + root
_MAX_DETAIL = const(120)
_MAX_SUBJECT = const(48)


class ConnectError(Exception):
    """A connection that was not made. `reason`: the verdict's reason (or "network");
    `verdict`: pinagent.policy.Verdict or None; `detail`: the underlying error text."""

    def __init__(self, reason, verdict=None, detail=None, host=None, port=None, check=None):
        super().__init__(reason if not detail else reason + ": " + detail)
        self.reason = reason
        self.verdict = verdict
        self.detail = detail
        self.host = host
        self.port = port
        self.check = check


class NetworkError(ConnectError):
    pass


class PinBlocked(ConnectError):
    pass


class TlsRefused(ConnectError):
    pass


class NoBundle(ConnectError):
    pass


def make_verdict(host, reason, chain=(), base=None, clock_trusted=False):
    """A blocked Verdict for an outcome the policy did not decide (TLS failure, bad
    certificate, safe mode). Keeps the rule and match of `base` (the pin check's verdict)."""
    v = _policy.Verdict()
    v.allowed = False
    v.reason = reason
    v.host = _policy.normalise_host(host) if isinstance(host, str) else str(host)
    v.chain = list(chain)
    v.verified = False
    v.rule = None if base is None else base.rule
    v.matched_pin = None if base is None else base.matched_pin
    v.matched_depth = -1 if base is None else base.matched_depth
    v.clock_trusted = clock_trusted if base is None else base.clock_trusted
    v.expired = False if base is None else base.expired
    return v


def error_text(e):
    """Short text of an exception, for verdict details and reports (never raises)."""
    try:
        text = "%s: %s" % (type(e).__name__, e)
    except Exception:
        text = "error"
    return text[:_MAX_DETAIL]


class PinCheck:
    """The verify callback's state for ONE handshake. `chain`: [(depth, SPKI SHA-256)] in call
    order; `subjects`: {depth: subject CN} (for reports; None if unreadable); `verdict`: set at
    depth 0; `detail`: why the check failed, if it did."""

    __slots__ = ("policy", "host", "now", "time_floor", "trusted_time", "chain", "subjects", "verdict", "detail",
                 "want_subjects")

    def __init__(self, policy, host, now, time_floor=0, subjects=True, trusted_time=None):
        self.policy = policy
        self.host = host
        self.now = now
        self.time_floor = time_floor or 0
        self.trusted_time = trusted_time
        self.chain = []
        self.subjects = {}
        self.verdict = None
        self.detail = None
        self.want_subjects = subjects

    def clock_trusted(self):
        return self.now is not None and self.now >= self.time_floor

    def on_cert(self, cert, depth):
        """The verify callback: 0 to go on, 1 to abort the handshake. `cert` (DER, typically a
        memoryview valid only during the call) is hashed here and not kept. Never raises:
        an exception would unwind through mbedTLS."""
        try:
            return self._on_cert(cert, depth)
        except BaseException as e:  # MemoryError included: record what we can, abort
            try:
                self._block(CALLBACK_ERROR, error_text(e))
            except BaseException:
                pass
            return 1

    def _on_cert(self, cert, depth):
        if self.verdict is not None:
            # one decision per handshake: anything after it is unexpected, so fail closed
            if self.verdict.allowed:
                self._block(CALLBACK_ORDER, "certificate at depth %r after the decision" % (depth,))
            return 1
        if type(depth) is not int or depth < 0:
            return self._block(CALLBACK_ORDER, "bad depth %r" % (depth,))
        if len(self.chain) >= MAX_CHAIN:
            return self._block(CHAIN_TOO_LONG, "more than %d certificates" % MAX_CHAIN)
        try:
            digest = spki_digest(spki_of_certificate(cert))
        except DerError as e:
            return self._block(BAD_CERTIFICATE, "depth %d: %s" % (depth, e.reason))
        self.chain.append((depth, digest))
        if self.want_subjects:
            self.subjects[depth] = _subject(cert)
        if depth != 0:
            return 0
        # leaf first, as policy.decide and the reports expect
        chain = sorted(self.chain, key=_depth_of)
        self.verdict = _policy.decide(self.policy, self.host, chain, self.now, True, self.time_floor,
                                      self.trusted_time)
        return 0 if self.verdict.allowed else 1

    def _block(self, reason, detail):
        self.detail = detail
        self.verdict = make_verdict(self.host, reason, sorted(self.chain, key=_depth_of), self.verdict,
                                    self.clock_trusted())
        return 1

    def refused(self, detail):
        """The verdict for a handshake that failed with `detail`: the check's own refusal if it
        refused, else TLS_FAILED (CA validation, host name, dates, or the handshake itself)."""
        v = self.verdict
        if v is not None and not v.allowed:
            return v
        self.detail = detail
        self.verdict = make_verdict(self.host, TLS_FAILED, sorted(self.chain, key=_depth_of), v, self.clock_trusted())
        return self.verdict


def _depth_of(item):
    return item[0]


def _subject(cert):
    # For reports only: a certificate mbedTLS accepted may still be one the walker refuses,
    # and that must not change the decision.
    try:
        cn = subject_cn(cert)
    except Exception:
        return None
    return None if cn is None else cn[:_MAX_SUBJECT]


def _close(sock):
    try:
        sock.close()
    except Exception:
        pass


def open_pinned(adapter, policy, ca_certs, host, port, timeout=None, now=None, time_floor=0, trusted_time=None,
                check=None):
    """Opens a pinned TLS connection; returns (socket, check) with check.verdict allowed, or
    raises NetworkError / PinBlocked / TlsRefused carrying the verdict. The host is made
    canonical first (policy.canonical_host) and the adapter connects to that spelling; a host
    without one is refused (INVALID_HOST) before anything touches the network. `check`: a fresh
    PinCheck to use (Agent.pin_check's, made for the canonical host), else one is made from
    policy, the host, now, time_floor and trusted_time."""
    canon = _policy.canonical_host(host)
    if check is None:
        check = PinCheck(policy, canon if canon is not None else host, now, time_floor, True, trusted_time)
    if canon is None:
        v = check.verdict = _policy.decide(check.policy, host, [], check.now, True, check.time_floor,
                                           check.trusted_time)
        raise PinBlocked(v.reason, v, "not a host name or canonical IP literal", host, port, check)
    host = canon
    try:
        sock = adapter.open(host, port, timeout, ca_certs, check)
    except NetworkError as e:
        e.host, e.port, e.check = host, port, check
        raise
    except Exception as e:
        raise refusal(check, e, port)
    return approve(check, sock, port), check


def refusal(check, e, port=None):
    """The PinBlocked or TlsRefused for a handshake that failed with exception `e`: the check's
    own refusal if it refused, else TLS_FAILED (see PinCheck.refused)."""
    v = check.refused(error_text(e))
    return _error_for(v)(v.reason, v, check.detail, check.host, port, check)


def approve(check, sock, port=None):
    """`sock` if the check allowed the chain it saw; otherwise closes `sock` and raises. A socket
    whose handshake ran without the check (verdict None) is refused too: fail closed."""
    v = check.verdict
    if v is None or not v.allowed:
        _close(sock)
        if v is None:
            check.detail = "the TLS adapter did not run the pin check"
            v = check.verdict = make_verdict(check.host, NOT_CHECKED, (), None, check.clock_trusted())
        raise _error_for(v)(v.reason, v, check.detail, check.host, port, check)
    return sock


def _error_for(verdict):
    return TlsRefused if verdict.reason == TLS_FAILED else PinBlocked
