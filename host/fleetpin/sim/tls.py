"""The CPython TLS adapter for pinagent.connect, over `ssl`: what pinagent.io.tls is on the board.

    SimTls().open(host, port, timeout, ca_certs, check) -> ssl.SSLSocket
    SimTls().wrap(sock, host, ca_certs, check, client_cert=None, do_handshake=True) -> ssl.SSLSocket

- ssl.SSLContext(PROTOCOL_TLS_CLIENT) with verify_mode CERT_REQUIRED and check_hostname on, and
  nothing but the bundle's CA certificates as trust anchors (no system store: the board has
  none either), any of which may end the chain, as in mbedTLS (VERIFY_X509_PARTIAL_CHAIN: an
  intermediate the bundle carries is an anchor). Both settings are asserted on the context
  before the TCP connection is opened.
- After the handshake, the chain OpenSSL verified (root first, leaf last at depth 0, as
  mbedTLS calls its verify callback) is fed to `check`; a refusal closes the socket before it
  is returned, so no application byte is ever sent on it. The verified chain comes from
  SSLSocket.get_verified_chain() (public since Python 3.13), else the private
  sslobj._sslobj.get_verified_chain() (3.10-3.12).

Where CPython differs from the board: OpenSSL refuses a chain that fails CA validation inside the
handshake without showing it, so such connections end as TLS_FAILED with no chain, where the
board's callback would have seen (and reported) the chain first. Certificate dates are checked
against this computer's clock, the policy's expiry against the agent's clock.

`resolve(host, port) -> (address, port)` maps names to addresses: by default every name goes to
127.0.0.1 (the simulation never reaches another address); the TLS layer still sees `host` (SNI
and name check).
"""

from __future__ import annotations

import base64
import socket
import ssl
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from pinagent.connect import NetworkError, error_text

Resolver = Callable[[str, int], tuple[str, int]]


class Check(Protocol):
    def on_cert(self, cert: bytes | memoryview, depth: int) -> int: ...


class VerificationOff(Exception):
    """A context that would not verify the chain: refused before any connection."""


class PinRefused(Exception):
    """The pin check refused the verified chain (the socket is closed)."""


def loopback(host: str, port: int) -> tuple[str, int]:
    """The simulation's network: every name resolves to 127.0.0.1 (TLS still sees the name)."""
    return "127.0.0.1", port


class SimTls:
    def __init__(self, resolve: Resolver = loopback) -> None:
        self.resolve = resolve

    def context(self, ca_certs: Sequence[bytes | memoryview]) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # looked up at call time (tests wrap it)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = True
        for der in ca_certs:
            ctx.load_verify_locations(cadata=bytes(der))
        if ctx.verify_mode != ssl.CERT_REQUIRED or not ctx.check_hostname:
            raise VerificationOff(f"verify_mode {ctx.verify_mode!r}, check_hostname {ctx.check_hostname}")
        # mbedTLS takes any trusted certificate as an anchor (an intermediate too) and ends the
        # chain at the first one it reaches; OpenSSL wants a self-signed root unless told so
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        return ctx

    def open(self, host: str, port: int, timeout: float | None, ca_certs: Sequence[bytes | memoryview], check: Check) -> ssl.SSLSocket:
        ctx = self.context(ca_certs)
        address = self.resolve(host, port)
        try:
            raw = socket.create_connection(address, timeout=timeout)
        except OSError as e:
            raise NetworkError("network", None, error_text(e)) from None
        return self._handshake(ctx, raw, host, check)

    def wrap(self, sock: socket.socket, host: str, ca_certs: Sequence[bytes | memoryview], check: Check,
             client_cert: tuple[bytes, bytes] | None = None, do_handshake: bool = True) -> ssl.SSLSocket:
        """TLS on a socket the caller connected (pinagent.tlsctx). CPython always runs the
        handshake here, also when do_handshake is False: the socket must be blocking."""
        try:
            ctx = self.context(ca_certs)
            if client_cert is not None:
                load_client_cert(ctx, client_cert[0], client_cert[1])
        except BaseException:
            sock.close()
            raise
        return self._handshake(ctx, sock, host, check)

    def _handshake(self, ctx: ssl.SSLContext, raw: socket.socket, host: str, check: Check) -> ssl.SSLSocket:
        try:
            tls = ctx.wrap_socket(raw, server_hostname=host)
        except BaseException:
            raw.close()
            raise
        try:
            chain = verified_chain(tls)
            # root first, leaf last at depth 0: the order of mbedTLS's verify callback
            for depth in range(len(chain) - 1, -1, -1):
                if check.on_cert(chain[depth], depth):
                    raise PinRefused(f"refused at depth {depth}")
        except BaseException:
            tls.close()
            raise
        return tls


def load_client_cert(ctx: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """A client certificate and key, PEM or DER (as the board's load_cert_chain takes them);
    `ssl` reads them from files, needed only until load_cert_chain returns."""
    with tempfile.TemporaryDirectory(prefix="fleetpin-client-") as tmp:
        cert_file, key_file = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert_file.write_bytes(cert if cert.lstrip().startswith(b"-----") else _pem("CERTIFICATE", cert))
        key_file.write_bytes(key if key.lstrip().startswith(b"-----") else _pem("PRIVATE KEY", key))
        ctx.load_cert_chain(cert_file, key_file)


def _pem(label: str, der: bytes) -> bytes:
    body = base64.encodebytes(der).decode("ascii")
    return f"-----BEGIN {label}-----\n{body}-----END {label}-----\n".encode("ascii")


def verified_chain(tls: ssl.SSLSocket) -> list[bytes]:
    """DER of the chain OpenSSL verified, leaf first."""
    public = getattr(tls, "get_verified_chain", None)
    items: list[Any] = public() if public is not None else tls._sslobj.get_verified_chain()  # type: ignore[attr-defined]
    out = []
    for item in items:
        out.append(item if isinstance(item, bytes) else item.public_bytes(ssl._ssl.ENCODING_DER))  # type: ignore[attr-defined]
    return out
