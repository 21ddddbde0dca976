"""A pinned TLS context: an SSLContext stand-in for clients that take one.

    ctx = agent.tls_context()
    ctx.load_cert_chain(cert, key)        optional: a client certificate (PEM or DER bytes), mTLS
    tls_sock = ctx.wrap_socket(sock, server_hostname="broker.example.com")
    reader, writer = await asyncio.open_connection(host, 8883, ssl=ctx)
    MQTTClient(client_id, host, ssl=ctx).connect()       (umqtt.simple's ssl=SSLContext)

Every wrap_socket runs the same pin check as agent.connect (pinagent.connect.PinCheck as the
verify callback, under CERT_REQUIRED with the bundle's CA certificates, the host being
server_hostname, canonicalised as rules are), records the verdict and the same failure
reports, and:

- do_handshake_on_connect=True (the default; umqtt.simple, most clients): the handshake runs
  in wrap_socket, which returns the TLS socket or raises PinBlocked / TlsRefused / NoBundle;
- do_handshake_on_connect=False (asyncio.open_connection): the handshake runs on the first
  read or write, so wrap_socket returns a pinagent.io.deferred.DeferredSocket; a refused chain
  raises PinBlocked or TlsRefused (carrying the verdict) from that first read or write, and
  from every one after it. No application byte is sent before the verdict allows it: mbedTLS
  writes nothing before its handshake is over, and the check aborts the handshake.

A missing server_hostname is refused (PinBlocked, reason invalid_host): without it there is
neither a name check nor a rule to pin against. `sock` must be connected; it is closed
whenever wrap_socket refuses. Reports carry port None: a MicroPython socket cannot say which
port it is connected to. verify_mode reads CERT_REQUIRED and cannot be set to anything else;
load_verify_locations is refused (the signed bundle decides the CAs).
"""

from . import connect as _connect
from .policy import INVALID_HOST, canonical_host

CERT_REQUIRED = 2  # tls.CERT_REQUIRED (and ssl.CERT_REQUIRED on CPython)


class PinnedContext:
    def __init__(self, agent):
        self._agent = agent
        self._client_cert = None

    @property
    def verify_mode(self):
        return CERT_REQUIRED

    @verify_mode.setter
    def verify_mode(self, mode):
        if mode != CERT_REQUIRED:
            raise ValueError("a pinned context always verifies (CERT_REQUIRED)")

    def load_cert_chain(self, cert, key):
        """The client certificate and its private key as bytes, presented on every connection
        made with this context (mutual TLS, e.g. AWS IoT). DER works on every build; PEM only
        where the firmware's mbedTLS parses PEM (the unix port's does not)."""
        self._client_cert = (cert, key)

    def load_verify_locations(self, *args, **kwargs):
        raise ValueError("a pinned context trusts the CA certificates of the signed bundle only")

    def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True, server_hostname=None):
        agent = self._agent
        if server_side:
            _close(sock)
            raise ValueError("a pinned context is for client connections")
        # the canonical spelling, as rules are written, for the check and for TLS; no name, or
        # one without a canonical spelling (127.1, a port, a space), is refused
        canon = canonical_host(server_hostname) if isinstance(server_hostname, str) and server_hostname else None
        if canon is None:
            _close(sock)
            v = _connect.make_verdict(server_hostname if isinstance(server_hostname, str) else "", INVALID_HOST)
            agent.last_verdict = v
            raise _connect.PinBlocked(INVALID_HOST, v, "server_hostname is required, as a host name or canonical "
                                      "IP literal", server_hostname, None)
        server_hostname = canon
        try:
            check, ca_certs = agent.pin_check(server_hostname)
        except _connect.ConnectError:
            _close(sock)
            raise
        try:
            tls_sock = agent.tls.wrap(sock, server_hostname, ca_certs, check, self._client_cert,
                                      do_handshake_on_connect)
        except Exception as e:  # the adapter closed `sock`
            raise agent.record(check, None, _connect.refusal(check, e))
        if do_handshake_on_connect:
            return _settle(agent, check, tls_sock, None)
        from .io.deferred import DeferredSocket

        return DeferredSocket(tls_sock, _Settle(agent, check, tls_sock).decide)


class _Settle:
    """The verdict of a deferred handshake, decided on the socket's first read or write."""

    def __init__(self, agent, check, sock):
        self.agent = agent
        self.check = check
        self.sock = sock

    def decide(self, error):
        _settle(self.agent, self.check, self.sock, error)


def _settle(agent, check, sock, error):
    """`sock` if the check allowed the handshake; else records the refusal and raises it."""
    if error is not None:
        if isinstance(error, _connect.ConnectError):
            raise error
        _close(sock)
        raise agent.record(check, None, _connect.refusal(check, error))
    try:
        sock = _connect.approve(check, sock)
    except _connect.ConnectError as e:
        raise agent.record(check, None, e)
    agent.record(check, None)
    return sock


def _close(sock):
    try:
        sock.close()
    except Exception:
        pass
