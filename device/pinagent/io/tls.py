"""The ESP32 TLS adapter for pinagent.connect: the native `tls` module (mbedTLS), never `ssl`.

    EspTls().open(host, port, timeout, ca_certs, check) -> TLS socket
    EspTls().wrap(sock, host, ca_certs, check, client_cert=None, do_handshake=True) -> TLS socket
    DeferredSocket(tls_sock, settle)    a TLS socket whose handshake runs on its first read or
                                        write (asyncio); settle(error) decides it (pinagent.tlsctx)

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

from pinagent.connect import NetworkError, error_text


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


# ---- a handshake on the first read or write (asyncio.open_connection)

from io import IOBase  # a user stream: select.poll calls its ioctl (MICROPY_PY_IO_IOBASE, on ESP32)

_POLL = 3  # MP_STREAM_POLL (py/stream.h): select.poll on this object asks for these events
_CLOSE = 4  # MP_STREAM_CLOSE


class DeferredSocket(IOBase):
    """Stands in for a TLS socket whose handshake runs on its first read or write (mbedTLS with
    do_handshake_on_connect=False, as asyncio.open_connection asks for it). Until the pin check
    has decided, every call goes through `settle`:

        settle(error)   error: the exception the call raised (the handshake failed, or the
                        check refused the chain), or None when the call got through; raises the
                        connection's ConnectError, or returns when the verdict allows it

    and a refusal is raised again by every later call. Once allowed, calls go straight to the
    TLS socket. `ioctl` makes it pollable (select.poll, asyncio): it forwards the poll to the
    TLS socket, which knows whether mbedTLS holds decrypted bytes the raw socket does not show.
    """

    def __init__(self, sock, settle):
        self._s = sock
        self._settle = settle
        self._pending = True  # the pin check has not decided yet
        self._error = None
        self._poll = None

    def _call(self, fn, args):
        if not self._pending:
            return fn(*args)
        if self._error is not None:
            raise self._error
        try:
            r = fn(*args)
        except Exception as e:
            self._refuse(e)
        if r is None:  # would block: the handshake (or the data) has not arrived yet
            return None
        try:
            self._settle(None)
        except Exception as e:
            self._refuse(e)
        self._pending = False
        return r

    def _refuse(self, e):
        try:
            self._settle(e)
            err = e  # settle accepted an error: cannot happen, fail closed anyway
        except Exception as refusal:
            err = refusal
        self._error = err
        _close(self._s)
        raise err

    def read(self, n=-1):
        return self._call(self._s.read, (n,))

    def readinto(self, buf, n=-1):
        return self._call(self._s.readinto, (buf,) if n < 0 else (buf, n))

    def readline(self):
        return self._call(self._s.readline, ())

    def write(self, buf):
        return self._call(self._s.write, (buf,))

    def recv(self, n):
        return self._call(self._s.recv, (n,))

    def send(self, buf):
        return self._call(self._s.send, (buf,))

    def sendall(self, buf):
        return self._call(self._s.sendall, (buf,))

    def setblocking(self, flag):
        self._s.setblocking(flag)

    def close(self):
        _close(self._s)

    def ioctl(self, op, arg):
        if op == _POLL:
            if self._error is not None:
                return arg  # ready: the next call raises the refusal
            import select

            p = self._poll
            if p is None:
                p = self._poll = select.poll()
                p.register(self._s, arg)
            else:
                p.modify(self._s, arg)
            ready = p.poll(0)
            return ready[0][1] if ready else 0
        if op == _CLOSE:
            _close(self._s)
            return 0
        return -1  # no file descriptor of its own: select polls it through POLL
