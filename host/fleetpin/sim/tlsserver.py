"""Real TLS servers on 127.0.0.1 for the tests, one thread each.

    with TlsServer(pki.chain_pem("leaf"), pki.leaf.key_pem) as server:
        connect(("127.0.0.1", server.port)) ...   # send a line, get b"HELLO\\n" back
    server.requests        # the lines clients sent: proof application data flowed
    server.failed          # handshakes that failed (e.g. a client refused the pin)

The protocol is one exchange: the client sends a line (up to 1 KiB), the server answers
`reply` (bytes, or a function of the line that returns them) and closes. A client that refuses the chain never gets that far, so an empty
`requests` proves that no application byte was sent. Several servers can run at once (port 0:
the kernel picks a free port). The server binds 127.0.0.1 and nothing else.
"""

from __future__ import annotations

import socket
import ssl
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

LOOPBACK = "127.0.0.1"


class TlsServer:
    def __init__(
        self,
        chain_pem: bytes,
        key_pem: bytes,
        reply: bytes | Callable[[bytes], bytes] = b"HELLO\n",
        maximum_version: ssl.TLSVersion | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.reply = reply
        self.timeout = timeout
        self.port = 0
        self.requests: list[bytes] = []
        self.server_names: list[str | None] = []  # SNI of every handshake attempt
        self.failed: list[str] = []  # one reason per failed handshake or exchange
        self._context = self._make_context(chain_pem, key_pem, maximum_version)
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._workers: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def _make_context(self, chain_pem: bytes, key_pem: bytes, maximum_version: ssl.TLSVersion | None) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if maximum_version is not None:
            context.maximum_version = maximum_version
        # load_cert_chain only reads files; they are needed only until it returns.
        with tempfile.TemporaryDirectory(prefix="fleetpin-tls-") as tmp:
            cert_file, key_file = Path(tmp, "chain.pem"), Path(tmp, "key.pem")
            cert_file.write_bytes(chain_pem)
            key_file.write_bytes(key_pem)
            context.load_cert_chain(cert_file, key_file)

        def remember_sni(sslobj: ssl.SSLObject | ssl.SSLSocket, name: str | None, ctx: ssl.SSLContext) -> None:
            with self._lock:
                self.server_names.append(name)

        context.sni_callback = remember_sni
        return context

    @property
    def address(self) -> tuple[str, int]:
        return (LOOPBACK, self.port)

    def __enter__(self) -> TlsServer:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> int:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, 0))
        listener.listen(16)
        listener.settimeout(0.05)  # so the accept loop notices stop() quickly
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name=f"tls-server-{self.port}", daemon=True)
        self._thread.start()
        return self.port

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
        for worker in list(self._workers):
            worker.join(timeout=self.timeout + 1)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            worker = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            with self._lock:
                self._workers.append(worker)
            worker.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(self.timeout)
        try:
            with self._context.wrap_socket(conn, server_side=True) as tls:
                line = b""
                while not line.endswith(b"\n") and len(line) < 1024:
                    chunk = tls.recv(1024 - len(line))
                    if not chunk:
                        break
                    line += chunk
                if line:
                    with self._lock:
                        self.requests.append(line)
                    tls.sendall(self.reply(line) if callable(self.reply) else self.reply)
        except (OSError, ssl.SSLError) as e:  # a refused handshake is a normal outcome here
            with self._lock:
                self.failed.append(f"{type(e).__name__}: {e}")
        finally:
            conn.close()


def fetch(port: int, server_hostname: str, cafile: Path | None = None, request: bytes = b"hi\n") -> bytes:
    """A verifying CPython client for the tests: connect, send `request`, return the reply."""
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    with socket.create_connection((LOOPBACK, port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=server_hostname) as tls:
            tls.sendall(request)
            data = b""
            while True:
                chunk = tls.recv(1024)
                if not chunk:
                    return data
                data += chunk
