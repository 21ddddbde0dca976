"""Rotation drills: the ways pinning fails in production, rehearsed on a virtual fleet.

Each scenario builds fresh keys and PKIs, boots virtual boards (the real agent behind real
ptys, fleetpin.sim.board) with a signed bundle, serves TLS on 127.0.0.1, and then plays the
incident: servers change keys or CAs, the clock moves, bundles are pushed over serial. Every
device question goes over the serial protocol, as a technician's laptop would ask it:
TEST_CONNECT gives the device's own verdict, WRITE_* installs a bundle, READ_REPORTS reads
its failure reports. The devices' application (World.sync_time) is the one thing that runs on
the board itself: it asks the API for the time over a pinned connection, the authenticated time
that alone can confirm pins expired (a clock set by SNTP cannot).

At the end every device is accounted for:

    connected        it reaches the real server with the bundle it has
    updated          it needed a field update, took it, and now reaches the server
    blocked          it refuses the server (expected in some scenarios: the server is an attacker)
    UNREACHABLE      it can neither reach the server nor be updated: a bricked device

A drill passes when its expectations hold and no device is UNREACHABLE.
"""

from __future__ import annotations

import base64
import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from fleetpin.bundles.build import BundleSource, build_bundle, canonical_json
from fleetpin.bundles.lint import has_errors, lint
from fleetpin.bundles.view import ServedChain, load_view
from fleetpin.errors import FleetpinError
from fleetpin.field import preflight
from fleetpin.field.transport import DeviceRefused, Transport
from fleetpin.pki import keys
from fleetpin.pki.certs import parse_host
from fleetpin.pki.signing import LocalKeySigner
from fleetpin.sim.board import DEFAULT_RUNTIME, VirtualBoard
from fleetpin.sim.broker import MqttApp, SimBroker
from fleetpin.sim.pki import Pki, make_pki, pin_of_key
from fleetpin.sim.tlsserver import TlsServer
from pinagent.connect import ConnectError

API = "api.drill.test"
FLEET = "drill-fleet"
DAY = 86400


# ---- the world of one drill -----------------------------------------------------------------


@dataclass
class Outcome:
    device: str
    bundle: str
    status: str  # connected | updated | blocked | UNREACHABLE
    detail: str


@dataclass
class Drill:
    name: str
    title: str
    story: str
    run: Callable[[World], None]


@dataclass
class World:
    """Keys, PKIs, servers and boards of one drill, and its timeline."""

    scenario: str
    devices: int
    runtime: str
    echo: Callable[[str], None]
    now: int = field(default_factory=lambda: int(time.time()))
    shift: int = 0  # seconds the drill moved time forward (the servers' time is real time + shift)
    pki: Pki = field(init=False)
    boards: list[VirtualBoard] = field(default_factory=list)
    servers: dict[str, TlsServer] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)
    stack: ExitStack = field(default_factory=ExitStack)
    broker: SimBroker | None = None  # the MQTT broker of the API (under the API's name and keys)
    apps: list[MqttApp] = field(default_factory=list)
    _t0: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        # Fresh keys every drill (the namespace scopes the PKI's key cache to this run).
        self.ns = f"drill-{self.scenario}-{time.time_ns()}"
        self.pki = make_pki(API, namespace=self.ns)
        self.ops = _fresh_signer("ops")
        self.vault = _fresh_signer("vault")
        self.signers = canonical_json(keys.signer_set_obj([self.ops.info, self.vault.info]))

    # ---- narration

    def log(self, text: str) -> None:
        line = f"t+{time.monotonic() - self._t0:5.1f}s  {text}"
        self.timeline.append(line)
        self.echo(line)

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            self.failures.append(what)
            self.log(f"EXPECTATION FAILED: {what}")

    # ---- bundles

    def bundle(self, version: int, pins: list[tuple[str, str]], cas: list[bytes], *, enforce: bool = True,
               expires: int | None = None, on_expiry: str = "fallback", issued: int | None = None,
               signers: list[LocalKeySigner] | None = None, new_signers: list[LocalKeySigner] | None = None) -> bytes:
        """Bundle `version` pinning the API; signed by the everyday key (ops) unless `signers`;
        new_signers: the keys of a signer set it installs (a rotation)."""
        policy = {"domains": [{
            "host": API,
            "pins": [{"pin": p, "label": label} for label, p in pins],
            "enforce": enforce,
            "expires": expires if expires is not None else self.now + 180 * DAY,
            "on_expiry": on_expiry,
        }]}
        return build_bundle(BundleSource(policy=policy, ca_certs=cas), fleet=FLEET, version=version,
                            issued=issued if issued is not None else self.now - 60, development=False,
                            signers=signers or [self.ops],
                            new_signers=None if new_signers is None else keys.signer_set_obj([k.info for k in new_signers]))

    # ---- servers and boards

    def start_pinned(self) -> bytes:
        """The usual start: bundle v1 pins the primary and the backup leaf keys under the root,
        the API serves the primary key, every device boots with v1. Returns v1."""
        p = self.pki
        v1 = self.bundle(1, [("primary", p.leaf.pin), ("backup", p.backup_leaf.pin)], [p.root.der])
        self.serve("api", p, "leaf")
        self.boot(v1, "v1")
        return v1

    def serve(self, name: str, pki: Pki, leaf: str, says_time: Callable[[], int] | None = None) -> int:
        """(Re)starts the server `name` presenting `leaf` of `pki`; returns its port. Asked, it
        tells its time: the world's (real time + shift), or what `says_time` says (an attacker)."""
        old = self.servers.pop(name, None)
        if old is not None:
            old.__exit__(None, None, None)
        clock = says_time or self.time
        srv = TlsServer(pki.chain_pem(leaf), getattr(pki, leaf).key_pem, reply=lambda _line: b"%d\n" % clock())
        srv.__enter__()
        self.servers[name] = srv
        return srv.port

    def boot(self, bundle: bytes, label: str, count: int | None = None) -> list[VirtualBoard]:
        new = []
        for _ in range(count if count is not None else self.devices):
            i = len(self.boards)
            b = VirtualBoard(device_id=f"dev-{i:02d}", fleet=FLEET, seed_bundle=bundle, signers=self.signers,
                             runtime=self.runtime)
            self.stack.enter_context(b)
            b.bundle_label = label  # type: ignore[attr-defined]
            self.boards.append(b)
            new.append(b)
        self.log(f"{len(new)} devices boot with bundle {label}")
        return new

    def time(self) -> int:
        """The real time in the drill's world."""
        return int(time.time()) + self.shift

    def advance(self, seconds: int) -> None:
        """Time passes: the servers' time moves, and every device's clock follows (SNTP, honest)."""
        self.shift += seconds
        for b in self.boards:
            b.set_clock(self.time())

    def sync_time(self, boards: list[VirtualBoard], server: str = "api") -> dict[str, str]:
        """Each device's application asks `server` for the time over a pinned connection and
        hands it to agent.server_time, which takes it only if the pin matched. On the cpython
        runtime the application runs in this process; on micropython it is the board's own
        /app.py (time_app), run by main.py after the listening window of a power cycle."""
        port = self.servers[server].port
        on_board = [b for b in boards if b.agent is None]
        for b in on_board:  # all at once: each waits out its own listening window
            b.install_app(time_app(API, port))
        if on_board:
            self.log(f"  {len(on_board)} device(s) get the application as /app.py and restart: main.py runs it "
                     "after its listening window")
        results = {}
        for b in boards:
            if b in on_board:
                outcome = b.app_output(APP_MARK)
            else:
                outcome = b.run_app(lambda agent: _time_app(agent, port))
            results[b.device_id or "?"] = outcome
            self.log(f"  {b.device_id} [{b.bundle_label}] app asks {server} for the time: {outcome}")  # type: ignore[attr-defined]
        return results

    # ---- an application on a device: MQTT through the agent's pinned context

    def start_app(self, board: VirtualBoard, pki: Pki, leaf: str) -> MqttApp | None:
        """Starts the MQTT broker (presenting `leaf` of `pki` under the API's name) and an
        application on `board` that talks to it through agent.tls_context(); None on a runtime
        whose agent lives in another process (only the cpython board runtime runs apps)."""
        if board.agent is None:
            self.log(f"  {board.device_id}: no MQTT application (the {board.runtime} runtime runs none)")
            return None
        if self.broker is None:
            self.broker = SimBroker(pki.chain_pem(leaf), getattr(pki, leaf).key_pem).__enter__()
        app = MqttApp(lambda: board.agent, board.device_id or "app", API, self.broker.port).start()
        self.apps.append(app)
        self.log(f"  {board.device_id} runs an MQTT application through its pinned TLS context")
        return app

    def rotate_broker(self, pki: Pki, leaf: str) -> None:
        """The broker moves to `leaf`'s key: open connections drop, as at a broker restart."""
        if self.broker is not None:
            self.broker.serve(pki.chain_pem(leaf), getattr(pki, leaf).key_pem)

    def app_alive(self, app: MqttApp | None, what: str, connects: int = 0) -> None:
        """Expects the application to be connected (at least `connects` connections made so far)
        and its messages to come back through the broker."""
        if app is None:
            return
        end = time.monotonic() + 10
        while len(app.connects) < connects and time.monotonic() < end:
            time.sleep(0.02)
        ok = len(app.connects) >= connects and app.wait_for_messages(app.received, 10)
        self.log(f"  {app.client_id} MQTT: {'messages flowing' if ok else 'NO MESSAGES'}, {app.received} so far; "
                 f"connections {', '.join(app.connects)}; refused {len(app.refusals)}")
        self.expect(ok, f"{what}: the MQTT application on {app.client_id} is connected and its messages flow")
        self.expect(not app.refusals, f"{what}: the MQTT application was never refused ({app.refusals})")

    def close(self) -> None:
        for app in self.apps:
            app.stop()
        if self.broker is not None:
            self.broker.__exit__(None, None, None)
            self.broker = None
        for srv in self.servers.values():
            srv.__exit__(None, None, None)
        self.servers.clear()
        self.stack.close()

    # ---- asking devices, over serial

    def session(self, board: VirtualBoard) -> Transport:
        t = Transport.open(board.port, timeout=10.0)
        try:
            t.connect()
        except BaseException:
            t.close()  # a port left open would be "busy" for every later session with this board
            raise
        return t

    def connect(self, board: VirtualBoard, server: str) -> dict[str, Any]:
        with self.session(board) as t:
            verdict: dict[str, Any] = t.call(t.client.test_connect(API, self.servers[server].port), "TEST_CONNECT")
        return verdict

    def connect_all(self, server: str, boards: list[VirtualBoard] | None = None) -> dict[str, dict[str, Any]]:
        verdicts = {}
        for b in boards if boards is not None else self.boards:
            v = self.connect(b, server)
            verdicts[b.device_id or "?"] = v
            what = "ALLOWED" if v.get("allowed") else "BLOCKED"
            label = f" ({v['matched_label']} at depth {v['matched_depth']})" if v.get("matched_label") else ""
            self.log(f"  {b.device_id} [{b.bundle_label}] -> {server}: {what} {v.get('reason')}{label}")  # type: ignore[attr-defined]
        return verdicts

    def update(self, board: VirtualBoard, bundle: bytes, label: str) -> str:
        """Installs `bundle` over serial; returns "installed" or the device's refusal code."""
        with self.session(board) as t:
            try:
                t.upload(bundle)
            except DeviceRefused as e:
                self.log(f"  {board.device_id}: bundle {label} refused: {e.code_name} ({e.remote_message})")
                return e.code_name
            ident = t.call(t.client.identify(), "IDENTIFY")
        if ident.get("bundle_sha256") != hashlib.sha256(bundle).hexdigest():
            self.expect(False, f"{board.device_id} reports another digest after installing {label}")
        board.bundle_label = label  # type: ignore[attr-defined]
        self.log(f"  {board.device_id}: bundle {label} installed (digest checked)")
        return "installed"

    def rescue(self, boards: list[VirtualBoard], bundle: bytes, label: str) -> set[str]:
        """Field-updates `boards`; the ids of those that installed the bundle."""
        return {b.device_id or "" for b in boards if self.update(b, bundle, label) == "installed"}

    def reports(self, board: VirtualBoard) -> list[dict[str, Any]]:
        with self.session(board) as t:
            log = t.read_all("reports")
        entries = []
        for line in log.splitlines()[1:]:  # first line: the ring's counters
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
        return entries

    # ---- the final account

    def account(self, server: str, updated: set[str] = frozenset(), expect_blocked: bool = False) -> None:  # type: ignore[assignment]
        """Every device: can it reach `server` now? Is it still updatable (answers IDENTIFY)?"""
        for b in self.boards:
            dev = b.device_id or "?"
            try:
                v = self.connect(b, server)
                with self.session(b) as t:
                    t.call(t.client.identify(), "IDENTIFY")
                alive = True
            except FleetpinError as e:
                v, alive = {"allowed": False, "reason": f"no answer: {e}"}, False
            if v.get("allowed"):
                status = "updated" if dev in updated else "connected"
            elif alive and expect_blocked:
                status = "blocked"
            else:
                status = "UNREACHABLE"
                self.failures.append(f"{dev} ended unreachable ({v.get('reason')})")
            self.outcomes.append(Outcome(dev, b.bundle_label, status, str(v.get("reason"))))  # type: ignore[attr-defined]


APP_MARK = "fleetpin-app:"
# What an application does to learn authenticated time: read it from its own server over a
# pinned connection, then agent.server_time(check, t). One source for both board runtimes: run
# in this process for an agent on CPython (Python's SSL sockets have read and write too), and as
# the board's /app.py on MicroPython (time_app), where main.py calls main(agent) after the
# listening window; that one prints its outcome, removes itself (a one-shot job) and returns.
SYNC_SOURCE = """\
def sync_time(agent, host, port):
    from pinagent.connect import ConnectError
    try:
        sock, check = agent.open(host, port, 5)
    except ConnectError as e:
        return "refused (%s)" % e.reason
    try:
        sock.write(b"TIME\\n")
        data = b""
        while not data.endswith(b"\\n"):
            chunk = sock.read(64)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    try:
        t = int(data)
    except ValueError:
        return "no time in the answer"
    return "taken as trusted time" if agent.server_time(check, t) else "not taken (%s)" % check.verdict.reason
"""
_TIME_APP_MAIN = """

def main(agent):
    import os
    try:
        outcome = sync_time(agent, %(host)r, %(port)d)
    except Exception as e:
        outcome = "failed (%%r)" %% (e,)
    os.remove("/app.py")
    print(%(mark)r, outcome)
"""


def time_app(host: str, port: int) -> str:
    """The board's /app.py that syncs the time from host:port once."""
    return SYNC_SOURCE + _TIME_APP_MAIN % {"host": host, "port": port, "mark": APP_MARK}


def _time_app(agent: Any, port: int) -> str:
    namespace: dict[str, Any] = {}
    exec(SYNC_SOURCE, namespace)
    outcome: str = namespace["sync_time"](agent, API, port)
    return outcome


def _fresh_signer(name: str) -> LocalKeySigner:
    key = ec.generate_private_key(ec.SECP256R1())
    return LocalKeySigner(key, keys.public_info(key.public_key(), name, "production"))


def _new_key_pin() -> str:
    """The pin of a brand-new backup key (its private half would go offline)."""
    return pin_of_key(ec.generate_private_key(ec.SECP256R1()))


# ---- scenarios ----------------------------------------------------------------------------


def primary_key_lost(w: World) -> None:
    p = w.pki
    w.start_pinned()
    app = w.start_app(w.boards[0], p, "leaf")  # its broker shares the API's name and keys
    verdicts = w.connect_all("api")
    w.expect(all(v["allowed"] and v["matched_label"] == "primary" for v in verdicts.values()), "v1 devices match the primary key")
    w.app_alive(app, "v1, primary key", connects=1)
    w.log("INCIDENT: the primary private key is lost; the server switches to the backup key")
    w.serve("api", p, "backup_leaf")
    w.rotate_broker(p, "backup_leaf")
    verdicts = w.connect_all("api")
    w.expect(all(v["allowed"] and v["matched_label"] == "backup" for v in verdicts.values()),
             "every device keeps connecting through the backup pin, no update needed")
    w.app_alive(app, "after the rotation to the backup key", connects=2)
    w.log("follow-up: bundle v2 promotes the backup and ships a new backup pin")
    v2 = w.bundle(2, [("primary", p.backup_leaf.pin), ("backup", _new_key_pin())], [p.root.der])
    for b in w.boards:
        w.update(b, v2, "v2")
    w.rotate_broker(p, "backup_leaf")  # the broker restarts: the application reconnects under v2
    w.app_alive(app, "with bundle v2", connects=3)
    if app is not None:
        w.expect(app.connects[:3] == ["matched/primary", "matched/backup", "matched/primary"],
                 "the application matched the primary pin, then the backup, then v2's primary (the same key)")
    w.account("api")


def ca_distrusted(w: World) -> None:
    p = w.pki
    new = make_pki(API, namespace=w.ns + "-newca")  # a new CA and a new server key
    only_old = w.bundle(1, [("primary", p.leaf.pin), ("backup", p.backup_leaf.pin)], [p.root.der])
    prepared = w.bundle(1, [("primary", p.leaf.pin), ("backup", new.leaf.pin)], [p.root.der, new.root.der])
    w.serve("api", p, "leaf")
    a = w.boot(only_old, "v1-old-CA-only", max(1, w.devices // 2))
    b = w.boot(prepared, "v1-with-new-CA", max(1, w.devices - len(a)))
    w.connect_all("api")
    w.log("INCIDENT: the CA is distrusted; the server moves to a new CA and a new key")
    w.serve("api", new, "leaf")
    verdicts = w.connect_all("api")
    w.expect(all(not verdicts[x.device_id or ""]["allowed"] for x in a), "bundles without the new CA cannot connect")
    w.expect(all(verdicts[x.device_id or ""]["allowed"] for x in b), "bundles that shipped the new CA and key survive")
    w.log("rescue: a field update with bundle v2 (new CA, new pin, a fresh backup) for the stranded devices")
    v2 = w.bundle(2, [("primary", new.leaf.pin), ("backup", _new_key_pin())], [new.root.der])
    w.account("api", w.rescue(a, v2, "v2"))


def emergency_rotation(w: World) -> None:
    p = w.pki
    v1 = w.start_pinned()
    w.connect_all("api")
    w.log("INCIDENT: the primary key is compromised; the server moves to the backup key and v2 revokes the old pin")
    w.serve("api", p, "backup_leaf")
    v2 = w.bundle(2, [("primary", p.backup_leaf.pin), ("backup", _new_key_pin())], [p.root.der])
    for b in w.boards:
        w.update(b, v2, "v2")
    w.log("the attacker serves the stolen key with its still-valid certificate")
    w.serve("attacker", p, "leaf")
    verdicts = w.connect_all("attacker")
    w.expect(all(not v["allowed"] and v["reason"] == "mismatch" for v in verdicts.values()),
             "the revoked key is refused by every updated device")
    w.log("the attacker replays the old signed bundle v1 to bring its key back")
    results = [w.update(b, v1, "v1 (replayed)") for b in w.boards]
    w.expect(all(r == "rollback" for r in results), "every device refuses the rollback to v1")
    reports = w.reports(w.boards[0])
    w.expect(any(r.get("validation-result") == "mismatch" for r in reports),
             "the attack is in the device's failure reports")
    w.log(f"  {w.boards[0].device_id}: {len(reports)} failure report(s) recorded, read over serial")
    w.account("api")


def stolen_signing_key(w: World) -> None:
    p = w.pki
    w.start_pinned()
    w.connect_all("api")
    top = 2**31 - 1
    w.log(f"INCIDENT: the everyday signing key is stolen; the thief installs bundle v{top}, the highest version "
          "there is, pinning its own server (pushed over serial from a laptop it controls)")
    thief = w.bundle(top, [("primary", p.rogue_leaf.pin)], [p.rogue_root.der])
    for b in w.boards:
        w.update(b, thief, f"v{top} (the thief's)")
    w.serve("mitm", p, "rogue_leaf")
    w.connect_all("mitm")
    w.log("the owner's next ordinary bundle is older than the thief's: refused, as every bundle would be")
    v2 = w.bundle(2, [("primary", p.leaf.pin), ("backup", p.backup_leaf.pin)], [p.root.der])
    w.expect(all(w.update(b, v2, "v2") == "rollback" for b in w.boards), "an ordinary bundle cannot undo the thief's version")
    w.log("RECOVERY: a new everyday key; v3 installs the set {new key, vault key}, retiring the stolen one, signed "
          "by the stolen key and the offline vault key (the rotation threshold: the thief alone cannot make it)")
    new_ops = _fresh_signer("ops-new")
    v3 = w.bundle(3, [("primary", p.leaf.pin), ("backup", p.backup_leaf.pin)], [p.root.der],
                  signers=[w.ops, w.vault], new_signers=[new_ops, w.vault])
    updated = w.rescue(w.boards, v3, "v3 (rotation)")
    w.expect(len(updated) == len(w.boards), "the rotation resets the version record on every device")
    verdicts = w.connect_all("mitm")
    w.expect(all(not v["allowed"] and v["reason"] == "mismatch" for v in verdicts.values()),
             "the thief's server is refused again")
    w.log("the thief signs another bundle with the stolen key")
    again = w.bundle(top, [("primary", p.rogue_leaf.pin)], [p.rogue_root.der])
    w.expect(all(w.update(b, again, "the thief's again") == "signature" for b in w.boards),
             "the retired key signs nothing any more")
    v4 = w.bundle(4, [("primary", p.leaf.pin), ("backup", p.backup_leaf.pin)], [p.root.der], signers=[new_ops])
    w.expect(all(w.update(b, v4, "v4") == "installed" for b in w.boards), "the new everyday key updates the fleet")
    w.account("api", updated)


def wrong_pin_shipped(w: World) -> None:
    p = w.pki
    w.start_pinned()
    w.log("MISTAKE: v2 pins the wrong key (a typo'd primary) and drops the real one")
    typo = base64.b64encode(hashlib.sha256(b"not the server key").digest()).decode()
    v2 = w.bundle(2, [("primary", typo), ("backup", p.backup_leaf.pin)], [p.root.der])
    with tempfile.TemporaryDirectory(prefix="fleetpin-drill-") as tmp:
        path = Path(tmp, "v2.fpb")
        path.write_bytes(v2)
        view = load_view(path)
        served = ServedChain(f"{API}:{w.servers['api'].port}", p.chain_der("leaf"), host=API)
        findings = lint(view, [served], now=w.now)
        w.log("  lint: " + ", ".join(sorted({f.rule for f in findings if f.severity == 'error'})) + " (errors)")
        w.expect(has_errors(findings), "lint refuses the wrong pin against the served chain")
        report = preflight.run(view, [parse_host(f"{API}:{w.servers['api'].port}@127.0.0.1")], now=w.now)
        w.log(f"  preflight: {report.summary()}")
        w.expect(report.failed, "preflight exits 1: devices would be locked out")
    w.log("v2 is never pushed; devices keep v1")
    w.connect_all("api")
    w.account("api")


def pins_expired(w: World) -> None:
    p = w.pki
    expires = w.now + 30 * DAY
    pins = [("primary", p.leaf.pin), ("backup", p.backup_leaf.pin)]
    fallback = w.bundle(1, pins, [p.root.der], expires=expires, on_expiry="fallback")
    enforce = w.bundle(1, pins, [p.root.der], expires=expires, on_expiry="enforce")
    w.serve("api", p, "leaf")
    third = max(1, w.devices // 3)
    a = w.boot(fallback, "v1-fallback", third)
    c = w.boot(fallback, "v1-fallback-offline", third)
    b = w.boot(enforce, "v1-enforce", max(1, w.devices - 2 * third))
    w.connect_all("api")
    w.log("60 days pass: the pins expired 30 days ago and nobody updated these devices")
    w.advance(60 * DAY)
    w.log("the devices in service keep talking to the API: their application takes its time over the pinned "
          "connection (authenticated); the offline devices were switched off the whole time")
    synced = w.sync_time(a + b)
    w.expect(all(r == "taken as trusted time" for r in synced.values()), "the API's time, pinned, is trusted time")
    w.log("the server renews its certificate (same CA) with a fresh key that no bundle pins")
    w.serve("api", p, "renewed_leaf")
    verdicts = w.connect_all("api")

    def of(x: VirtualBoard) -> dict[str, Any]:
        return verdicts[x.device_id or ""]

    w.expect(all(of(x)["allowed"] and of(x)["reason"] == "expired_fallback" for x in a),
             "on_expiry=fallback, expiry confirmed by trusted time: CA validation decides, the devices connect")
    w.expect(all(not of(x)["allowed"] for x in b),
             "on_expiry=enforce: the expired pins are still enforced, the devices refuse the new key")
    w.expect(all(not of(x)["allowed"] and of(x)["reason"] == "expiry_unconfirmed" for x in c),
             "offline devices: only their clock says the pins expired, so the pins stay in force")
    w.log("rescue: bundle v2 (the renewed key, a fresh backup, a new expiry) for the devices still pinned")
    v2 = w.bundle(2, [("primary", p.renewed_leaf.pin), ("backup", _new_key_pin())], [p.root.der],
                  expires=w.time() + 240 * DAY, on_expiry="enforce", issued=w.time() - 60)
    w.account("api", w.rescue(b + c, v2, "v2"))


def clock_spoofed(w: World) -> None:
    p = w.pki
    expires = w.now + 30 * DAY
    # The bundle trusts two CAs (one of them will mis-issue); on_expiry is the default, "fallback".
    v1 = w.bundle(1, [("primary", p.leaf.pin), ("backup", p.backup_leaf.pin)], [p.root.der, p.rogue_root.der],
                  expires=expires)
    w.serve("api", p, "leaf")
    w.boot(v1, "v1")
    w.connect_all("api")
    w.log("ATTACK: on the path, the attacker answers SNTP with a time 60 s past the pins' expiry and serves "
          "a certificate a trusted CA mis-issued for the API")
    for b in w.boards:
        b.set_clock(expires + 60)
    w.serve("mitm", p, "rogue_leaf", says_time=lambda: expires + 60)
    verdicts = w.connect_all("mitm")
    w.expect(all(not v["allowed"] and v["reason"] == "expiry_unconfirmed" and v["expired"] for v in verdicts.values()),
             "the clock alone does not end pinning: the rogue certificate is blocked")
    synced = w.sync_time(w.boards, "mitm")
    w.expect(all(r.startswith("refused") for r in synced.values()),
             "the attacker's server cannot hand the devices its time: the pin check refuses it first")
    for b in w.boards:
        reports = w.reports(b)
        w.expect(any(r.get("validation-result") == "expiry_unconfirmed" and p.rogue_leaf.pin in json.dumps(r)
                     for r in reports), f"{b.device_id} reported the rogue chain under the spoofed clock")
    w.log("the real server still connects, whatever the clock says: its key is pinned")
    w.account("api")


def rogue_ca(w: World) -> None:
    p = w.pki
    # The bundle trusts two CAs (say, two public CAs the servers may use); one of them mis-issues.
    v1 = w.bundle(1, [("primary", p.leaf.pin), ("backup", p.backup_leaf.pin)], [p.root.der, p.rogue_root.der])
    w.serve("api", p, "leaf")
    w.boot(v1, "v1")
    w.connect_all("api")
    w.log("ATTACK: a trusted CA mis-issues a certificate for the API; the attacker sits in the middle")
    w.serve("mitm", p, "rogue_leaf")
    verdicts = w.connect_all("mitm")
    w.expect(all(not v["allowed"] and v["reason"] == "mismatch" for v in verdicts.values()),
             "CA validation passes but the pin check blocks the rogue certificate")
    for b in w.boards:
        reports = w.reports(b)
        rogue = [r for r in reports if p.rogue_leaf.pin in json.dumps(r)]
        w.expect(bool(rogue), f"{b.device_id} reported the rogue chain")
    w.log(f"  every device recorded a failure report naming the rogue key ({p.rogue_leaf.pin[:12]}...)")
    w.account("api")


def report_only_rollout(w: World) -> None:
    p = w.pki
    planned = make_pki(API, namespace=w.ns + "-planned")
    # The team believes the server will present `planned` keys: start report-only.
    v1 = w.bundle(1, [("primary", planned.leaf.pin), ("backup", planned.backup_leaf.pin)], [p.root.der], enforce=False)
    w.serve("api", p, "leaf")
    w.boot(v1, "v1-report-only")
    verdicts = w.connect_all("api")
    w.expect(all(v["allowed"] and v["reason"] == "report_only_mismatch" for v in verdicts.values()),
             "report-only: the mismatch is recorded, nothing is blocked")
    counts = [len(w.reports(b)) for b in w.boards]
    w.expect(all(c >= 1 for c in counts), "every device recorded the mismatch")
    w.log(f"  reports read over serial: {sum(counts)} (the pins were wrong: they were caught before enforcing)")
    w.log("fix: v2 pins the keys the server really uses, and enforces")
    v2 = w.bundle(2, [("primary", p.leaf.pin), ("backup", p.backup_leaf.pin)], [p.root.der], enforce=True)
    for b in w.boards:
        w.update(b, v2, "v2-enforce")
    verdicts = w.connect_all("api")
    w.expect(all(v["allowed"] and v["reason"] == "matched" for v in verdicts.values()), "enforced and matching")
    w.account("api")


DRILLS: dict[str, Drill] = {d.name: d for d in [
    Drill("primary-key-lost", "Primary key lost", "The server moves to the backup key.", primary_key_lost),
    Drill("ca-distrusted", "CA distrusted", "New CA and new key: which bundles survive, and the update that rescues the rest.", ca_distrusted),
    Drill("emergency-rotation", "Emergency rotation", "Key compromise: a new bundle revokes the old pin; the old bundle is refused afterwards.", emergency_rotation),
    Drill("stolen-signing-key", "Signing key stolen",
          "The thief installs the highest version; a rotation that retires its key resets the fleet.", stolen_signing_key),
    Drill("wrong-pin", "Wrong pin shipped", "Caught by lint and preflight before any device sees it.", wrong_pin_shipped),
    Drill("pins-expired", "Pins expired", "Devices never updated, past expiry, per on-expiry policy.", pins_expired),
    Drill("rogue-ca", "Rogue CA in the middle", "A trusted CA mis-issues: blocked and reported.", rogue_ca),
    Drill("clock-spoof", "Clock spoofed past expiry", "SNTP moved past the pins' expiry and a rogue CA: still blocked.",
          clock_spoofed),
    Drill("report-only", "Report-only rollout", "Mismatches recorded, nothing blocked, then switched to enforce.", report_only_rollout),
]}


@dataclass
class DrillResult:
    name: str
    passed: bool
    outcomes: list[Outcome]
    failures: list[str]
    timeline: list[str]
    seconds: float
    runtime: str = DEFAULT_RUNTIME  # where the boards' agents ran (fleetpin.sim.board.RUNTIMES)

    def to_obj(self) -> dict[str, Any]:
        return {
            "scenario": self.name,
            "runtime": self.runtime,
            "passed": self.passed,
            "devices": [o.__dict__ for o in self.outcomes],
            "failures": self.failures,
            "timeline": self.timeline,
            "seconds": round(self.seconds, 2),
        }


def run_drill(name: str, devices: int = 3, echo: Callable[[str], None] = lambda s: None,
              runtime: str = DEFAULT_RUNTIME) -> DrillResult:
    drill = DRILLS[name]
    started = time.monotonic()
    w = World(name, devices, runtime, echo)
    try:
        drill.run(w)
    except FleetpinError as e:
        w.failures.append(f"the drill stopped: {e}")
    finally:
        w.close()
    if not w.outcomes:
        w.failures.append("no device was accounted for")
    return DrillResult(name, not w.failures, w.outcomes, w.failures, w.timeline, time.monotonic() - started, runtime)

