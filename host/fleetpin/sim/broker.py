"""An MQTT broker and a device application for the drills, on 127.0.0.1 only.

    with SimBroker(pki.chain_pem("leaf"), pki.leaf.key_pem) as broker:
        broker.port
        broker.serve(pki.chain_pem("backup_leaf"), pki.backup_leaf.key_pem)   # a key rotation:
                                     # new connections get the new chain, open ones are dropped
    app = MqttApp(lambda: board.agent, "dev-00", API, broker.port); app.start() ... app.stop()
    app.received, app.connects, app.refusals, app.events

SimBroker speaks the part of MQTT 3.1.1 a QoS 0 client uses (CONNECT/CONNACK, SUBSCRIBE/SUBACK,
PUBLISH fanned out to exact-topic subscribers, PINGREQ/PINGRESP, DISCONNECT) over TLS, one
thread per connection. The tests use a real broker (amqtt); the drills need nothing beyond the
`sim` extra.

MqttApp is what a board's application does: in a loop, connect through the agent's pinned
context (agent.tls_context(), the SSLContext stand-in of pinagent.tlsctx) with the umqtt.simple
style client of fleetpin.sim.mqtt, subscribe to its topic, publish and read its own messages
back; when the connection drops, connect again. It runs in the board's process (the CPython
board runtime: fleetpin.sim.board.VirtualBoard.agent).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from fleetpin.sim.tlsserver import TlsServer

LOOPBACK = "127.0.0.1"


class SimBroker:
    def __init__(self, chain_pem: bytes, key_pem: bytes, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self.port = 0
        self.published: list[tuple[str, bytes]] = []  # (topic, payload) of every PUBLISH received
        self.failed: list[str] = []  # refused handshakes (e.g. a client refused the pin)
        self._context = self._make_context(chain_pem, key_pem)
        self._lock = threading.Lock()
        self._subs: dict[str, list[_Conn]] = {}
        self._conns: list[_Conn] = []
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @staticmethod
    def _make_context(chain_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
        return TlsServer(chain_pem, key_pem)._context  # the same server context as the drills' TLS servers

    def serve(self, chain_pem: bytes, key_pem: bytes) -> None:
        """Presents another chain from now on and drops every open connection, as a broker
        restarted with a rotated key does."""
        context = self._make_context(chain_pem, key_pem)
        with self._lock:
            self._context = context
            conns, self._conns, self._subs = self._conns, [], {}
        for c in conns:
            c.close()

    def __enter__(self) -> SimBroker:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, 0))
        listener.listen(16)
        listener.settimeout(0.05)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name=f"mqtt-broker-{self.port}")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            c.close()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                raw, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(self.timeout)
        with self._lock:
            context = self._context
        try:
            tls = context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError) as e:
            with self._lock:
                self.failed.append(f"{type(e).__name__}: {e}")
            raw.close()
            return
        tls.settimeout(None)  # a subscriber may stay quiet for long
        conn = _Conn(tls)
        with self._lock:
            self._conns.append(conn)
        try:
            while self._packet(conn):
                pass
        except (OSError, ValueError, IndexError):
            pass
        finally:
            conn.close()

    def _packet(self, conn: _Conn) -> bool:
        first, body = conn.read_packet()
        kind = first & 0xF0
        if kind == 0x10:  # CONNECT: the client's id and flags are not needed here
            conn.send(b"\x20\x02\x00\x00")
        elif kind == 0x80:  # SUBSCRIBE: packet id, then (topic, qos) pairs
            pid, i, granted = body[:2], 2, b""
            while i < len(body):
                n = (body[i] << 8) | body[i + 1]
                topic = body[i + 2 : i + 2 + n].decode()
                with self._lock:
                    self._subs.setdefault(topic, []).append(conn)
                granted += b"\x00"
                i += 3 + n
            conn.send(bytes([0x90, 2 + len(granted)]) + pid + granted)
        elif kind == 0x30:  # PUBLISH, QoS 0
            n = (body[0] << 8) | body[1]
            topic = body[2 : 2 + n].decode()
            with self._lock:
                self.published.append((topic, body[2 + n :]))
                targets = list(self._subs.get(topic, ()))
            packet = bytes([0x30]) + _length(len(body)) + body
            for target in targets:
                target.send(packet)
        elif kind == 0xC0:  # PINGREQ
            conn.send(b"\xd0\x00")
        elif kind == 0xE0:  # DISCONNECT
            return False
        return True


class _Conn:
    def __init__(self, tls: ssl.SSLSocket) -> None:
        self.tls = tls
        self._wlock = threading.Lock()

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            part = self.tls.recv(n - len(data))
            if not part:
                raise OSError("closed")
            data += part
        return data

    def read_packet(self) -> tuple[int, bytes]:
        first = self._exactly(1)[0]
        n = shift = 0
        while True:
            b = self._exactly(1)[0]
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 21:
                raise ValueError("bad remaining length")
        return first, self._exactly(n) if n else b""

    def send(self, data: bytes) -> None:
        try:
            with self._wlock:
                self.tls.sendall(data)
        except OSError:
            self.close()

    def close(self) -> None:
        try:
            self.tls.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.tls.close()
        except OSError:
            pass


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


class MqttApp:
    """A board's MQTT application over the agent's pinned context (module docstring)."""

    def __init__(self, agent_of: Callable[[], Any], client_id: str, host: str, port: int,
                 interval: float = 0.05, timeout: float = 5.0) -> None:
        self.agent_of = agent_of
        self.client_id = client_id
        self.host = host
        self.port = port
        self.topic = f"fleet/{client_id}/telemetry"
        self.interval = interval
        self.timeout = timeout
        self.received = 0  # messages that came back through the broker
        self.connects: list[str] = []  # the verdict's reason and pin label of every connection made
        self.refusals: list[str] = []  # connections the agent refused (ConnectError)
        self.drops = 0  # connections that ended under the application (the broker rotated, ...)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> MqttApp:
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"app-{self.client_id}")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 2)

    def wait_for_messages(self, more_than: int, timeout: float = 10.0) -> bool:
        """True once more than `more_than` messages came back, False after `timeout` seconds."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.received > more_than:
                return True
            time.sleep(0.02)
        return False

    def _got(self, topic: bytes, msg: bytes) -> None:
        with self._lock:
            self.received += 1

    def _run(self) -> None:
        from fleetpin.sim.mqtt import MQTTClient
        from pinagent.connect import ConnectError

        while not self._stop.is_set():
            agent = self.agent_of()
            client = MQTTClient(self.client_id, self.host, self.port, ssl=agent.tls_context(), keepalive=30,
                                address=(LOOPBACK, self.port))
            client.set_callback(self._got)
            try:
                client.connect(timeout=self.timeout)
            except ConnectError as e:
                self.refusals.append(e.reason)
                self._stop.wait(0.2)
                continue
            except OSError:
                self._stop.wait(0.1)
                continue
            v = agent.last_verdict
            label = v.rule.label_of(v.matched_pin) if v.rule is not None and v.matched_pin is not None else None
            self.connects.append(f"{v.reason}/{label}")
            try:
                client.subscribe(self.topic)
                n = 0
                while not self._stop.is_set():
                    client.publish(self.topic, str(n))
                    n += 1
                    client.wait_msg()
                    self._stop.wait(self.interval)
                client.disconnect()
            except (OSError, ValueError, IndexError):
                self.drops += 1
                client.close()
