# pinagent.tlsctx: agent.tls_context(), the SSLContext stand-in, over a fake TLS adapter
# (fakeclients.py). The real thing, on the unix port against real servers, is
# tests/host/test_pinned_clients.py. Runs unchanged under CPython and on the MicroPython VM.

from fakeclients import GOOD, HOST, WRONG, Raw, make_agent, reasons
from support import raises, read_vector

from pinagent import agent, store  # noqa: F401  (fakeclients' imports, named here: the VM runner loads each alone)
from pinagent import connect as C
from pinagent.io.deferred import DeferredSocket

# ---- the TLS context


def test_wrap_socket_pins_like_connect():
    agent, tls = make_agent()
    tls.chains[HOST] = GOOD
    ctx = agent.tls_context()
    ctx.load_cert_chain(b"cert-der", b"key-der")
    s = ctx.wrap_socket(Raw(), server_hostname="Chain-Leaf.Example.")
    assert s is tls.sockets[0] and s.done
    # the host canonicalised as rules are, the bundle's CA certificates, the client certificate
    assert tls.calls == [("wrap", HOST, (b"cert-der", b"key-der"), True, 1)]
    assert agent.last_verdict.reason == "matched" and reasons(agent) == []


def test_wrap_socket_refuses_and_reports():
    agent, tls = make_agent()
    tls.chains[HOST] = WRONG
    raw = Raw()
    e = raises(C.PinBlocked, agent.tls_context().wrap_socket, raw, server_hostname=HOST)
    assert e.reason == "mismatch" and not e.verdict.allowed and e.verdict.host == HOST
    assert raw.closed and agent.last_verdict is e.verdict
    [r] = agent.reports.read()
    assert (r["validation-result"], r["hostname"], r["port"]) == ("mismatch", HOST, None)


def test_a_handshake_failure_after_the_check_is_a_tls_refusal():
    agent, tls = make_agent()
    tls.chains["elsewhere.example"] = GOOD  # no rule: CA validation decides, and "the CA" fails it

    def failing(sock, host, ca_certs, check, client_cert=None, do_handshake=True):
        check.on_cert(memoryview(read_vector("certs/chain-leaf.der")), 0)
        sock.close()
        raise ValueError("The certificate is not correctly signed by the trusted CA")

    tls.wrap = failing
    e = raises(C.TlsRefused, agent.tls_context().wrap_socket, Raw(), server_hostname="elsewhere.example")
    assert e.reason == C.TLS_FAILED and "not correctly signed" in e.detail
    assert reasons(agent) == ["tls_failed"]


def test_no_server_hostname_is_refused_before_any_handshake():
    agent, tls = make_agent()
    tls.chains[HOST] = GOOD
    for kw in ({}, {"server_hostname": None}, {"server_hostname": ""}):
        raw = Raw()
        e = raises(C.PinBlocked, agent.tls_context().wrap_socket, raw, **kw)
        assert e.reason == "invalid_host" and raw.closed
    assert tls.calls == []
    raw = Raw()
    raises(ValueError, agent.tls_context().wrap_socket, raw, server_side=True, server_hostname=HOST)
    assert raw.closed and tls.calls == []


def test_safe_mode_refuses_every_wrap():
    agent, tls = make_agent(bundle=None)
    raw = Raw()
    e = raises(C.NoBundle, agent.tls_context().wrap_socket, raw, server_hostname=HOST)
    assert e.reason == "no_bundle" and raw.closed and tls.calls == []


def test_the_context_cannot_be_loosened():
    agent, _ = make_agent()
    ctx = agent.tls_context()
    assert ctx.verify_mode == 2  # CERT_REQUIRED
    ctx.verify_mode = 2
    raises(ValueError, setattr, ctx, "verify_mode", 0)  # CERT_NONE
    raises(ValueError, ctx.load_verify_locations, b"a CA of my own")
    assert ctx.verify_mode == 2


def test_deferred_handshake_allowed_on_the_first_write():
    agent, tls = make_agent()
    tls.chains[HOST] = GOOD
    tls.would_block = True
    s = agent.tls_context().wrap_socket(Raw(), server_hostname=HOST, do_handshake_on_connect=False)
    assert isinstance(s, DeferredSocket) and agent.last_verdict is None
    assert s.write(b"hello") is None  # would block: nothing decided, nothing sent
    assert agent.last_verdict is None
    assert s.write(b"hello") == 5
    assert agent.last_verdict.reason == "matched" and tls.sockets[0].sent == b"hello"
    assert s.read(10) == b""  # decided: calls go straight through


def test_deferred_handshake_refused_on_the_first_read_or_write_and_after():
    agent, tls = make_agent()
    tls.chains[HOST] = WRONG
    s = agent.tls_context().wrap_socket(Raw(), server_hostname=HOST, do_handshake_on_connect=False)
    e = raises(C.PinBlocked, s.write, b"secret")
    assert e.reason == "mismatch" and e.verdict.host == HOST
    assert tls.sockets[0].sent == b"" and tls.sockets[0].closed
    assert raises(C.PinBlocked, s.read, 10) is e  # the same refusal, every time
    assert raises(C.PinBlocked, s.readline) is e
    assert reasons(agent) == ["mismatch"]  # reported once
    # polled (asyncio): ready, so that the next call raises the refusal
    assert s.ioctl(3, 1) == 1


def test_deferred_handshake_that_never_ran_the_check_is_refused():
    agent, tls = make_agent()
    tls.chains[HOST] = GOOD
    tls.skip_check = True  # a TLS stack that skipped the verify callback
    s = agent.tls_context().wrap_socket(Raw(), server_hostname=HOST, do_handshake_on_connect=False)
    e = raises(C.PinBlocked, s.read, 10)
    assert e.reason == C.NOT_CHECKED and tls.sockets[0].closed
    raises(C.PinBlocked, agent.tls_context().wrap_socket, Raw(), server_hostname=HOST)


def test_report_only_rules_connect_and_report():
    agent, tls = make_agent()
    tls.chains["report.example"] = GOOD
    agent.tls_context().wrap_socket(Raw(), server_hostname="report.example")
    assert agent.last_verdict.allowed and reasons(agent) == ["report_only_mismatch"]
