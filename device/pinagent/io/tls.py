"""The ESP32 TLS adapter for pinagent.connect: the native `tls` module (mbedTLS), never `ssl`.

    EspTls().open(host, port, timeout, ca_certs, check) -> TLS socket
    EspTls().wrap(sock, host, ca_certs, check, client_cert=None, do_handshake=True) -> TLS socket

(A TLS socket whose handshake runs on its first read or write, for asyncio: pinagent.io.deferred.)

- tls.SSLContext(tls.PROTOCOL_TLS_CLIENT), verify_mode CERT_REQUIRED (set, then asserted: the
  `ssl` wrapper module and ssl.wrap_socket default to CERT_NONE, which makes intermediate and
  root pins meaningless and CA validation absent);
- each CA certificate of the bundle loaded on its own (`load_verify_locations` of the native
  module takes ONE positional argument, PEM or one DER certificate, and calls accumulate; only
  the `ssl` wrapper takes cadata=...). It needs bytes: the bundle's memoryview is copied, one
  certificate at a time;
- ctx.verify_callback = check.on_cert (mbedTLS calls it top first, leaf last at depth 0; a
  non-zero return aborts the handshake before any application byte is sent);
- client_cert (cert, key: PEM or DER bytes) loaded with load_cert_chain, for mutual TLS;
- wrap_socket(sock, server_hostname=host): mbedTLS then checks the name too.

Failures before the handshake (DNS, TCP connect, timeout) raise connect.NetworkError; the
handshake's own exceptions (OSError, ValueError with mbedTLS's verify text) pass through for
connect.open_pinned to classify. The raw socket is closed on every failure.
"""

class VerificationOff(Exception):
    """The TLS context would not verify the chain: refused before any connection."""


class EspTls:
    """tls_mod / socket_mod are injectable for tests (default: the board's `tls` and `socket`)."""

    def __init__(self, tls_mod=None, socket_mod=None):
        self._tls = tls_mod
        self._socket = socket_mod

    def _mods(self):
        if self._tls is None:
            import tls

            self._tls = tls
        if self._socket is None:
            import socket

            self._socket = socket
        return self._tls, self._socket

    def context(self, ca_certs, check, client_cert=None):
        """A client context that verifies: CERT_REQUIRED, the CAs, the pin check."""
        tls, _ = self._mods()
        ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
        ctx.verify_mode = tls.CERT_REQUIRED  # the default for a client context; said anyway
        for der in ca_certs:
            ctx.load_verify_locations(bytes(der))
        if client_cert is not None:
            ctx.load_cert_chain(client_cert[0], client_cert[1])
        ctx.verify_callback = check.on_cert  # since 1.23, undocumented
        if ctx.verify_mode != tls.CERT_REQUIRED:
            raise VerificationOff("verify_mode is %r, not CERT_REQUIRED" % (ctx.verify_mode,))
        return ctx

    def open(self, host, port, timeout, ca_certs, check):
        _, socket = self._mods()
        ctx = self.context(ca_certs, check)
        sock = None
        try:
            addr = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
            sock = socket.socket(addr[0], addr[1], addr[2])
            sock.settimeout(timeout)
            sock.connect(addr[-1])
        except Exception as e:
            from pinagent.connect import NetworkError, error_text

            if sock is not None:
                _close(sock)
            raise NetworkError("network", None, error_text(e))
        try:
            return ctx.wrap_socket(sock, server_hostname=host)
        except BaseException:
            _close(sock)
            raise

    def wrap(self, sock, host, ca_certs, check, client_cert=None, do_handshake=True):
        """TLS on a socket the caller connected (blocking or not). With do_handshake False,
        mbedTLS runs the handshake (and the check) on the first read or write."""
        try:
            ctx = self.context(ca_certs, check, client_cert)
            return ctx.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=do_handshake)
        except BaseException:
            _close(sock)
            raise


def _close(sock):
    try:
        sock.close()
    except Exception:
        pass
