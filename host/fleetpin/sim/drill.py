"""Rotation drills: the ways pinning fails in production, rehearsed on a virtual fleet.

Each scenario builds fresh keys and PKIs, boots virtual boards (the real agent behind real
ptys, fleetpin.sim.board) with a signed bundle, serves TLS on 127.0.0.1, and then plays the
incident: servers change keys or CAs, the clock moves, bundles are pushed over serial. Every
device question goes over the serial protocol, as a technician's laptop would ask it:
TEST_CONNECT gives the device's own verdict, WRITE_* installs a bundle, READ_REPORTS reads
its failure reports.

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
from fleetpin.sim.board import VirtualBoard
from fleetpin.sim.pki import Pki, make_pki, pin_of_key
from fleetpin.sim.tlsserver import TlsServer

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
    pki: Pki = field(init=False)
    boards: list[VirtualBoard] = field(default_factory=list)
    servers: dict[str, TlsServer] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)
    stack: ExitStack = field(default_factory=ExitStack)
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
               expires: int | None = None, on_expiry: str = "fallback", issued: int | None = None) -> bytes:
        policy = {"domains": [{
            "host": API,
            "pins": [{"pin": p, "label": label} for label, p in pins],
            "enforce": enforce,
            "expires": expires if expires is not None else self.now + 180 * DAY,
            "on_expiry": on_expiry,
        }]}
        return build_bundle(BundleSource(policy=policy, ca_certs=cas), fleet=FLEET, version=version,
                            issued=issued if issued is not None else self.now - 60, development=False,
                            signers=[self.ops])

    # ---- servers and boards

    def start_pinned(self) -> bytes:
        """The usual start: bundle v1 pins the primary and the backup leaf keys under the root,
        the API serves the primary key, every device boots with v1. Returns v1."""
        p = self.pki
        v1 = self.bundle(1, [("primary", p.leaf.pin), ("backup", p.backup_leaf.pin)], [p.root.der])
        self.serve("api", p, "leaf")
        self.boot(v1, "v1")
        return v1

    def serve(self, name: str, pki: Pki, leaf: str) -> int:
        """(Re)starts the server `name` presenting `leaf` of `pki`; returns its port."""
        old = self.servers.pop(name, None)
        if old is not None:
            old.__exit__(None, None, None)
        srv = TlsServer(pki.chain_pem(leaf), getattr(pki, leaf).key_pem)
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

    def close(self) -> None:
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
    verdicts = w.connect_all("api")
    w.expect(all(v["allowed"] and v["matched_label"] == "primary" for v in verdicts.values()), "v1 devices match the primary key")
    w.log("INCIDENT: the primary private key is lost; the server switches to the backup key")
    w.serve("api", p, "backup_leaf")
    verdicts = w.connect_all("api")
    w.expect(all(v["allowed"] and v["matched_label"] == "backup" for v in verdicts.values()),
             "every device keeps connecting through the backup pin, no update needed")
    w.log("follow-up: bundle v2 promotes the backup and ships a new backup pin")
    v2 = w.bundle(2, [("primary", p.backup_leaf.pin), ("backup", _new_key_pin())], [p.root.der])
    for b in w.boards:
        w.update(b, v2, "v2")
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
    a = w.boot(fallback, "v1-fallback", max(1, w.devices // 2))
    b = w.boot(enforce, "v1-enforce", max(1, w.devices - len(a)))
    w.connect_all("api")
    w.log("60 days pass: the pins expired 30 days ago and nobody updated these devices")
    for x in w.boards:
        x.set_clock(w.now + 60 * DAY)
    w.log("the server renews its certificate (same CA) with a fresh key that no bundle pins")
    w.serve("api", p, "renewed_leaf")
    verdicts = w.connect_all("api")
    w.expect(all(verdicts[x.device_id or ""]["allowed"] and verdicts[x.device_id or ""]["reason"] == "expired_fallback"
                 for x in a), "on_expiry=fallback: CA validation decides, the devices connect")
    w.expect(all(not verdicts[x.device_id or ""]["allowed"] for x in b),
             "on_expiry=enforce: the expired pins are still enforced, the devices refuse the new key")
    w.log("rescue: bundle v2 (the renewed key, a fresh backup, a new expiry) for the enforcing devices")
    v2 = w.bundle(2, [("primary", p.renewed_leaf.pin), ("backup", _new_key_pin())], [p.root.der],
                  expires=w.now + 240 * DAY, on_expiry="enforce")
    w.account("api", w.rescue(b, v2, "v2"))


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
    Drill("wrong-pin", "Wrong pin shipped", "Caught by lint and preflight before any device sees it.", wrong_pin_shipped),
    Drill("pins-expired", "Pins expired", "Devices never updated, past expiry, per on-expiry policy.", pins_expired),
    Drill("rogue-ca", "Rogue CA in the middle", "A trusted CA mis-issues: blocked and reported.", rogue_ca),
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

    def to_obj(self) -> dict[str, Any]:
        return {
            "scenario": self.name,
            "passed": self.passed,
            "devices": [o.__dict__ for o in self.outcomes],
            "failures": self.failures,
            "timeline": self.timeline,
            "seconds": round(self.seconds, 2),
        }


def run_drill(name: str, devices: int = 3, echo: Callable[[str], None] = lambda s: None) -> DrillResult:
    drill = DRILLS[name]
    started = time.monotonic()
    w = World(name, devices, "cpython", echo)
    try:
        drill.run(w)
    except FleetpinError as e:
        w.failures.append(f"the drill stopped: {e}")
    finally:
        w.close()
    if not w.outcomes:
        w.failures.append("no device was accounted for")
    return DrillResult(name, not w.failures, w.outcomes, w.failures, w.timeline, time.monotonic() - started)

