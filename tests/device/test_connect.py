# pinagent.connect (the verify-callback state machine, open_pinned) and pinagent.io.tls (the
# ESP32 adapter, over a fake `tls` module). Runs unchanged under CPython and on the MicroPython VM.

from support import raises, read_vector, vector_json

from pinagent.policy_load import policy_from_obj
from pinagent import connect as C
from pinagent import policy as P
from pinagent.io.tls import EspTls, VerificationOff
from pinagent.pins import parse_pin

NOW = 1767225600
LATER = NOW + 86400 * 365


def _certs():
    return (read_vector("certs/chain-root.der"), read_vector("certs/chain-intermediate.der"),
            read_vector("certs/chain-leaf.der"), read_vector("certs/ec-p256.der"))


def _pin(name):
    return vector_json("pins.json")["certs"][name]["pin"]


def _policy(unpinned="ca", **rule):
    domain = {"host": "chain-leaf.example", "pins": [{"pin": _pin("chain-leaf"), "label": "primary"}],
              "expires": LATER}
    domain.update(rule)
    return policy_from_obj({"unpinned": unpinned, "domains": [domain]})


def _feed(check, ders):
    """Calls on_cert as mbedTLS does: top first, leaf last at depth 0. Returns the answers."""
    out = []
    for i in range(len(ders)):
        depth = len(ders) - 1 - i
        out.append(check.on_cert(memoryview(ders[i]), depth))
    return out


def test_leaf_pin_allows_and_decides_only_at_depth_0():
    root, inter, leaf, _ = _certs()
    check = C.PinCheck(_policy(), "chain-leaf.example", NOW, 0)
    assert check.on_cert(memoryview(root), 2) == 0 and check.verdict is None
    assert check.on_cert(memoryview(inter), 1) == 0 and check.verdict is None
    assert check.on_cert(memoryview(leaf), 0) == 0
    v = check.verdict
    assert v.allowed and v.reason == P.MATCHED and v.matched_depth == 0
    assert [d for d, _ in v.chain] == [0, 1, 2]  # leaf first, for decide and the reports
    assert v.matched_pin == parse_pin(_pin("chain-leaf"))
    assert check.subjects[0] == "chain-leaf.example" and check.subjects[2] == "fleetpin chain root"


def test_intermediate_pin_counts_because_ca_validation_is_on():
    root, inter, leaf, _ = _certs()
    pol = _policy(pins=[{"pin": _pin("chain-intermediate")}])
    check = C.PinCheck(pol, "chain-leaf.example", NOW, 0)
    assert _feed(check, [root, inter, leaf]) == [0, 0, 0]
    assert check.verdict.allowed and check.verdict.matched_depth == 1 and check.verdict.verified


def test_wrong_leaf_is_refused_at_depth_0_only():
    root, inter, _, other = _certs()
    check = C.PinCheck(_policy(), "chain-leaf.example", NOW, 0)
    assert _feed(check, [root, inter, other]) == [0, 0, 1]
    assert not check.verdict.allowed and check.verdict.reason == P.MISMATCH


def test_report_only_allows_a_mismatch_and_says_so():
    _, _, _, other = _certs()
    check = C.PinCheck(_policy(enforce=False), "chain-leaf.example", NOW, 0)
    assert check.on_cert(other, 0) == 0
    assert check.verdict.allowed and check.verdict.reason == P.REPORT_ONLY_MISMATCH


def test_unpinned_hosts_follow_the_policy():
    _, _, _, other = _certs()
    check = C.PinCheck(_policy(), "elsewhere.example", NOW, 0)
    assert check.on_cert(other, 0) == 0 and check.verdict.reason == P.NO_POLICY
    check = C.PinCheck(_policy("block"), "elsewhere.example", NOW, 0)
    assert check.on_cert(other, 0) == 1 and check.verdict.reason == P.NO_POLICY_BLOCKED


def test_clock_below_the_floor_is_untrusted():
    _, _, _, other = _certs()
    pol = _policy(expires=NOW - 10)
    # the clock reads below the floor: not believed, and the floor is short of the expiry
    check = C.PinCheck(pol, "chain-leaf.example", NOW - 200, NOW - 100)
    assert check.on_cert(other, 0) == 1 and check.verdict.reason == P.CLOCK_UNTRUSTED
    assert not check.verdict.clock_trusted
    check = C.PinCheck(pol, "chain-leaf.example", None, 0)
    assert check.on_cert(other, 0) == 1 and check.verdict.reason == P.CLOCK_UNTRUSTED
    # a floor past the expiry proves it, whatever the clock reads
    check = C.PinCheck(pol, "chain-leaf.example", NOW, NOW + 100)
    assert check.on_cert(other, 0) == 0 and check.verdict.reason == P.EXPIRED_FALLBACK


def test_only_trusted_time_confirms_an_expiry():
    _, _, _, other = _certs()
    pol = _policy(expires=NOW - 10)
    # the clock (believed: above the floor) says the pins expired; nothing authenticated does
    check = C.PinCheck(pol, "chain-leaf.example", NOW, NOW - 100)
    assert check.on_cert(other, 0) == 1 and check.verdict.reason == P.EXPIRY_UNCONFIRMED
    check = C.PinCheck(pol, "chain-leaf.example", NOW, NOW - 100, trusted_time=NOW - 10)
    assert check.on_cert(other, 0) == 0 and check.verdict.reason == P.EXPIRED_FALLBACK


def test_the_certificate_buffer_is_not_kept():
    _, _, leaf, _ = _certs()
    buf = bytearray(leaf)
    check = C.PinCheck(_policy(), "chain-leaf.example", NOW, 0)
    assert check.on_cert(memoryview(buf), 0) == 0
    for i in range(len(buf)):  # mbedTLS reuses the memory after the call
        buf[i] = 0
    assert check.verdict.chain[0][1] == parse_pin(_pin("chain-leaf"))
    assert check.subjects[0] == "chain-leaf.example"


def test_malformed_certificate_refuses_without_raising():
    check = C.PinCheck(_policy(), "chain-leaf.example", NOW, 0)
    assert check.on_cert(read_vector("malformed/truncated-in-tbs.der"), 1) == 1
    assert check.verdict.reason == C.BAD_CERTIFICATE and "depth 1" in check.detail
    assert check.on_cert(_certs()[2], 0) == 1  # stays refused


def test_callback_never_raises():
    _, _, leaf, _ = _certs()
    for bad in (None, 42, "text", memoryview(b""), b"\x30"):
        check = C.PinCheck(_policy(), "chain-leaf.example", NOW, 0)
        assert check.on_cert(bad, 0) == 1 and not check.verdict.allowed
    check = C.PinCheck(None, "chain-leaf.example", NOW, 0)  # a broken policy: a bug, still no raise
    assert check.on_cert(leaf, 0) == 1
    assert check.verdict.reason == C.CALLBACK_ERROR and "AttributeError" in check.detail
    check = C.PinCheck(_policy(), "chain-leaf.example", NOW, 0)
    assert check.on_cert(leaf, -1) == 1 and check.verdict.reason == C.CALLBACK_ORDER
    check = C.PinCheck(_policy(), "chain-leaf.example", NOW, 0)
    assert check.on_cert(leaf, "0") == 1 and check.verdict.reason == C.CALLBACK_ORDER


def test_calls_after_the_decision_fail_closed():
    _, _, leaf, _ = _certs()
    check = C.PinCheck(_policy(), "chain-leaf.example", NOW, 0)
    assert check.on_cert(leaf, 0) == 0
    assert check.on_cert(leaf, 0) == 1
    assert not check.verdict.allowed and check.verdict.reason == C.CALLBACK_ORDER


def test_overlong_chain_is_refused():
    root = _certs()[0]
    check = C.PinCheck(_policy(), "chain-leaf.example", NOW, 0)
    answers = [check.on_cert(root, 20 - i) for i in range(C.MAX_CHAIN + 1)]
    assert answers[-1] == 1 and check.verdict.reason == C.CHAIN_TOO_LONG and len(check.chain) == C.MAX_CHAIN


def test_refused_handshake_keeps_the_pin_verdict_or_says_tls_failed():
    root, inter, leaf, other = _certs()
    check = C.PinCheck(_policy(), "chain-leaf.example", NOW, 0)
    _feed(check, [root, inter, other])
    assert check.refused("OSError: -1").reason == P.MISMATCH  # the pin check's own refusal
    check = C.PinCheck(_policy(), "chain-leaf.example", NOW, 0)
    _feed(check, [root, inter, leaf])  # pins fine, then CA validation failed (e.g. host name)
    v = check.refused("ValueError: name mismatch")
    assert not v.allowed and v.reason == C.TLS_FAILED and v.rule is not None and len(v.chain) == 3
    check = C.PinCheck(_policy(), "chain-leaf.example", NOW, 0)
    v = check.refused("timeout")  # no certificate seen at all
    assert v.reason == C.TLS_FAILED and v.chain == [] and check.detail == "timeout"


# ---- open_pinned with fake adapters


class FakeSock:
    def __init__(self):
        self.closed = False
        self.sent = b""

    def write(self, data):
        self.sent += data

    def close(self):
        self.closed = True


class FakeAdapter:
    """Presents `ders` (top first) to the check, then fails with `fail` or returns a socket."""

    def __init__(self, ders=(), fail=None, run_check=True):
        self.ders = ders
        self.fail = fail
        self.run_check = run_check
        self.sock = FakeSock()
        self.calls = []

    def open(self, host, port, timeout, ca_certs, check):
        self.calls.append((host, port, timeout, len(ca_certs)))
        if isinstance(self.fail, C.NetworkError):
            raise self.fail
        if self.run_check:
            for i in range(len(self.ders)):
                if check.on_cert(self.ders[i], len(self.ders) - 1 - i):
                    raise OSError(1, "verify callback refused")
        if self.fail is not None:
            raise self.fail
        return self.sock


def test_open_pinned_returns_the_socket_and_check():
    root, inter, leaf, _ = _certs()
    ad = FakeAdapter([root, inter, leaf])
    sock, check = C.open_pinned(ad, _policy(), [root], "chain-leaf.example", 443, 5, NOW, 0)
    assert sock is ad.sock and check.verdict.allowed and ad.calls == [("chain-leaf.example", 443, 5, 1)]


def test_open_pinned_errors_carry_the_verdict():
    root, inter, leaf, other = _certs()
    e = raises(C.PinBlocked, C.open_pinned, FakeAdapter([root, inter, other]), _policy(), [root],
               "chain-leaf.example", 443, 5, NOW, 0)
    assert e.reason == P.MISMATCH and e.verdict.reason == P.MISMATCH and e.port == 443
    assert 0 in e.check.subjects and e.check.subjects[1] == "fleetpin chain intermediate"
    e = raises(C.TlsRefused, C.open_pinned, FakeAdapter([root, inter, leaf], fail=ValueError("expired")),
               _policy(), [root], "chain-leaf.example", 443, 5, NOW, 0)
    assert e.reason == C.TLS_FAILED and "expired" in e.detail and e.verdict.rule.host == "chain-leaf.example"
    e = raises(C.NetworkError, C.open_pinned, FakeAdapter(fail=C.NetworkError("network", None, "ECONNREFUSED")),
               _policy(), [root], "chain-leaf.example", 443, 5, NOW, 0)
    assert e.verdict is None and e.host == "chain-leaf.example" and e.port == 443 and "ECONNREFUSED" in str(e)


def test_open_pinned_connects_to_the_canonical_host_only():
    root, inter, leaf, _ = _certs()
    pol = policy_from_obj({"domains": [{"host": "chain-leaf.example", "pins": [{"pin": _pin("chain-leaf")}],
                                          "expires": LATER}, {"host": "10.0.0.5", "pins": [{"pin": _pin("chain-leaf")}],
                                                              "expires": LATER}]})
    # a spelling getaddrinfo would read as another address, or a port in the name: refused
    # before any connection, so nothing reaches the network under a name no rule saw
    for host in ("0x0a.0.0.5", "167772165", "10.0.0.05", "chain-leaf.example:443", "chain-leaf.example\x00.evil"):
        ad = FakeAdapter([root, inter, leaf])
        e = raises(C.PinBlocked, C.open_pinned, ad, pol, [root], host, 443, 5, NOW, 0)
        assert e.reason == P.INVALID_HOST and ad.calls == [], host
    # the adapter gets the canonical host: the name the policy judged is the name TLS checks
    for host, canonical in (("CHAIN-LEAF.example.", "chain-leaf.example"), ("::ffff:10.0.0.5", "10.0.0.5")):
        ad = FakeAdapter([root, inter, leaf])
        sock, check = C.open_pinned(ad, pol, [root], host, 443, 5, NOW, 0)
        assert ad.calls[0][0] == canonical and check.verdict.host == canonical
        assert check.verdict.reason == P.MATCHED and check.verdict.rule.host == canonical


def test_a_socket_the_check_never_approved_is_closed_unused():
    root, inter, leaf, other = _certs()
    ad = FakeAdapter([root, inter, leaf], run_check=False)
    e = raises(C.PinBlocked, C.open_pinned, ad, _policy(), [root], "chain-leaf.example", 443, 5, NOW, 0)
    assert e.reason == C.NOT_CHECKED and ad.sock.closed and ad.sock.sent == b""
    # an adapter that ignores the callback's answer: still refused, still closed
    ad = FakeAdapter([root, inter, other])
    ad.run_check = True

    def lenient_open(host, port, timeout, ca_certs, check):
        for i in range(3):
            check.on_cert([root, inter, other][i], 2 - i)
        return ad.sock

    ad.open = lenient_open
    e = raises(C.PinBlocked, C.open_pinned, ad, _policy(), [root], "chain-leaf.example", 443, 5, NOW, 0)
    assert e.reason == P.MISMATCH and ad.sock.closed and ad.sock.sent == b""


# ---- pinagent.io.tls over a fake native `tls` module


class FakeTls:
    """The native module's API as MicroPython 1.23+ has it (extmod/modtls_mbedtls.c)."""

    PROTOCOL_TLS_CLIENT = 0
    CERT_NONE = 0
    CERT_OPTIONAL = 1
    CERT_REQUIRED = 2

    def __init__(self, chain=(), sticky_mode=None, fail=None):
        self.chain = chain  # top first, as mbedTLS calls the callback
        self.sticky_mode = sticky_mode  # a context whose verify_mode cannot be set
        self.fail = fail  # an error mbedTLS raises after the callbacks (CA validation)
        self.contexts = []
        fake = self

        class SSLContext:
            def __init__(self, protocol):
                assert protocol == fake.PROTOCOL_TLS_CLIENT
                self._mode = fake.CERT_REQUIRED
                self.cadata = []
                self.verify_callback = None
                self.wrapped = []
                fake.contexts.append(self)

            @property
            def verify_mode(self):
                return self._mode if fake.sticky_mode is None else fake.sticky_mode

            @verify_mode.setter
            def verify_mode(self, mode):
                self._mode = mode

            def load_verify_locations(self, cadata):  # one positional argument on the board
                assert isinstance(cadata, bytes)
                self.cadata.append(cadata)

            def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True, server_hostname=None):
                self.wrapped.append((self.verify_mode, server_hostname))
                assert self.verify_mode == fake.CERT_REQUIRED and server_hostname
                for i in range(len(fake.chain)):
                    if self.verify_callback(memoryview(fake.chain[i]), len(fake.chain) - 1 - i):
                        raise OSError(1, "verify callback")
                if fake.fail is not None:
                    raise fake.fail
                return ("tls", sock)

        self.SSLContext = SSLContext


class FakeSocketMod:
    SOCK_STREAM = 1

    def __init__(self, refuse=False):
        self.refuse = refuse
        self.sockets = []

    def getaddrinfo(self, host, port, af=0, kind=0):
        if host == "nxdomain.example":
            raise OSError(-202)
        return [(2, 1, 6, "", ("10.0.0.1", port))]

    def socket(self, af, kind, proto):
        mod = self

        class Sock:
            def __init__(self):
                self.closed = False
                self.timeout = "unset"
                self.peer = None
                mod.sockets.append(self)

            def settimeout(self, t):
                self.timeout = t

            def connect(self, addr):
                if mod.refuse:
                    raise OSError(113)
                self.peer = addr

            def close(self):
                self.closed = True

        return Sock()


def test_esp_adapter_verifies_with_cert_required_and_the_bundles_cas():
    root, inter, leaf, _ = _certs()
    tls = FakeTls([root, inter, leaf])
    sockets = FakeSocketMod()
    sock, check = C.open_pinned(EspTls(tls, sockets), _policy(), [memoryview(root)], "chain-leaf.example", 8443, 7,
                                NOW, 0)
    ctx = tls.contexts[0]
    assert ctx.wrapped == [(FakeTls.CERT_REQUIRED, "chain-leaf.example")]
    assert ctx.cadata == [root] and ctx.verify_callback == check.on_cert
    assert check.verdict.reason == P.MATCHED and sock[0] == "tls"
    assert sockets.sockets[0].timeout == 7 and sockets.sockets[0].peer == ("10.0.0.1", 8443)


def test_esp_adapter_refuses_a_context_that_would_not_verify():
    root, inter, leaf, _ = _certs()
    tls = FakeTls([root, inter, leaf], sticky_mode=FakeTls.CERT_NONE)
    sockets = FakeSocketMod()
    e = raises(C.TlsRefused, C.open_pinned, EspTls(tls, sockets), _policy(), [root], "chain-leaf.example", 443, 5,
               NOW, 0)
    assert "VerificationOff" in e.detail and sockets.sockets == []  # no connection was even opened
    raises(VerificationOff, EspTls(tls, sockets).context, [root], C.PinCheck(_policy(), "x", NOW, 0))


def test_esp_adapter_pin_refusal_and_ca_failure_close_the_socket():
    root, inter, leaf, other = _certs()
    sockets = FakeSocketMod()
    e = raises(C.PinBlocked, C.open_pinned, EspTls(FakeTls([root, inter, other]), sockets), _policy(), [root],
               "chain-leaf.example", 443, 5, NOW, 0)
    assert e.reason == P.MISMATCH and sockets.sockets[0].closed
    ca_fail = ValueError("The certificate is not correctly signed by the trusted CA")
    e = raises(C.TlsRefused, C.open_pinned, EspTls(FakeTls([root, inter, leaf], fail=ca_fail), sockets), _policy(),
               [root], "chain-leaf.example", 443, 5, NOW, 0)
    assert e.reason == C.TLS_FAILED and "trusted CA" in e.detail and sockets.sockets[1].closed


def test_esp_adapter_network_failures():
    root = _certs()[0]
    sockets = FakeSocketMod()
    e = raises(C.NetworkError, C.open_pinned, EspTls(FakeTls(), sockets), _policy(), [root], "nxdomain.example", 443,
               5, NOW, 0)
    assert e.verdict is None and "-202" in e.detail
    sockets = FakeSocketMod(refuse=True)
    e = raises(C.NetworkError, C.open_pinned, EspTls(FakeTls(), sockets), _policy(), [root], "chain-leaf.example", 443,
               5, NOW, 0)
    assert "113" in e.detail and sockets.sockets[0].closed
