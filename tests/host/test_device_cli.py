"""`fleetpin device ...` through pyserial over ptys against virtual boards, on every runtime:
updates (with the pin diff, the digest check and the receipt), refusals that leave the device
unchanged, interrupted updates retried, a noisy line, and the errors a technician meets."""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
import tty
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import serial
from runtimes import runtime_params

from fleetpin.field.transport import DeviceRefused, Transport
from fleetpin.sim.board import VirtualBoard
from fleetpin.sim.demo_bundles import FILLER_PINS, demo_bundle, demo_signer, demo_signer_set
from fleetpin.sim.pki import Pki
from pinagent.reports import Reports

FLEET = "acme"
RUNTIMES = runtime_params()
P1, P2, P3 = FILLER_PINS[:3]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bundles")
    made = {
        "v1": demo_bundle(FLEET, 1, {"api.example.com": [P1, P2], "old.example.com": [P1]}),
        "v2": demo_bundle(FLEET, 2, {"api.example.com": [P2, P3], "new.example.com": [P3]}),
        "v3": demo_bundle(FLEET, 3, {"api.example.com": [P3]}),
        "v2_other": demo_bundle(FLEET, 2, {"api.example.com": [P3]}),  # v2 again, other contents
        "other_fleet": demo_bundle("other", 9, {"api.example.com": [P1]}),
        "stranger": demo_bundle(FLEET, 9, {"api.example.com": [P1]}, signer="stranger"),
    }
    v9 = demo_bundle(FLEET, 9, {"api.example.com": [P1]})  # signed by a key the device trusts...
    made["bad_signature"] = v9[:-1] + bytes([v9[-1] ^ 1])  # ...but not over these bytes
    # a key rotation signed by the everyday key alone (one key may not replace the set), made
    # with the low-level encoder, as a tool without fleetpin's own checks would make it
    made["rotate_one_key"] = _raw_rotation(2, demo_signer_set("next", "backup"), demo_signer("everyday"))
    # the everyday key stolen: the thief's bundle at the highest version; the operator's rotations
    made["stolen_top"] = demo_bundle(FLEET, 2**31 - 1, {"api.example.com": [P3]})
    made["recover_v4"] = demo_bundle(FLEET, 4, {"api.example.com": [P1, P2]}, signer=("everyday", "backup"),
                                     new_signers=("backup", "next"))
    made["retire_backup_v4"] = demo_bundle(FLEET, 4, {"api.example.com": [P1, P2]}, signer=("everyday", "backup"),
                                           new_signers=("everyday", "next"))
    out = {}
    for name, data in made.items():
        (d / f"{name}.bin").write_bytes(data)
        out[name] = d / f"{name}.bin"
    return out


def _raw_rotation(version: int, new_set: bytes, signer: Any) -> bytes:
    from fleetpin.bundles.build import canonical_json
    from pinagent import bundle as dev_bundle

    header = {"format": 1, "fleet": FLEET, "version": version, "issued": int(time.time()) - 3600,
              "channel": "production", "key_ids": [signer.info.key_id]}
    policy = {"domains": [{"host": "api.example.com", "expires": 1893456000,
                           "pins": [{"pin": P2, "label": "primary"}, {"pin": P3, "label": "backup"}]}]}
    signed = dev_bundle.encode_signed(canonical_json(header), canonical_json({"policy": policy, "signers": json.loads(new_set)}), [])
    digest = hashlib.sha256(signed).digest()
    return dev_bundle.encode_bundle(signed, [(signer.info.key_id_bytes, signer.sign_digest(digest))])


@pytest.fixture
def board(request: pytest.FixtureRequest, bundles: dict[str, Path]) -> Iterator[Callable[..., VirtualBoard]]:
    started: list[VirtualBoard] = []

    def start(runtime: str = "cpython", seed: str | None = "v1", **kw: Any) -> VirtualBoard:
        kw.setdefault("fleet", FLEET)
        b = VirtualBoard(runtime=runtime, signers=demo_signer_set(), device_id="dev-1",
                         seed_bundle=bundles[seed].read_bytes() if seed else None, **kw)
        b.start()
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


def version_of(fleetpin: Callable[..., Any], port: str) -> int | None:
    r = fleetpin("device", "info", "--port", port, "--json")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)["bundle_version"]


# ---- info and update -----------------------------------------------------------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_info_shows_identity_bundle_clock_and_reports(fleetpin: Any, board: Any, runtime: str) -> None:
    b = board(runtime)
    r = fleetpin("device", "info", "--port", b.port)
    assert r.exit_code == 0, r.stderr
    assert "dev-1" in r.stdout and "fleet: acme" in r.stdout and "v1" in r.stdout and "0 pending" in r.stdout
    info = json.loads(fleetpin("device", "info", "--port", b.port, "--json").stdout)
    assert info["device_id"] == "dev-1" and info["bundle_version"] == 1 and info["clock"] == "trusted"
    assert info["pending_reports"] == 0 and info["mode"] == "ok" and len(info["bundle_sha256"]) == 64


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_update_shows_the_diff_installs_checks_and_leaves_a_receipt(
    fleetpin: Any, board: Any, bundles: dict[str, Path], tmp_path: Path, runtime: str
) -> None:
    b = board(runtime, baud=115200)
    receipt = tmp_path / "r.json"
    r = fleetpin("device", "update", "--port", b.port, bundles["v2"], "--receipt", receipt, input="y\n")
    assert r.exit_code == 0, r.stderr
    out = r.stdout
    assert "bundle v1 -> v2" in out
    assert f"  api.example.com:\n      starts accepting server key {P3} (backup-1)\n" in out
    assert f"      stops accepting server key {P1} (primary)\n" in out
    assert "  new pinned domain new.example.com: checked; pins expire 2030-01-01T00:00:00Z\n" in out
    assert f"      accepts server key {P3} (primary)" in out
    # security-relevant lines are marked: a domain no longer pinned, a fallback to CA validation
    assert "! old.example.com: NO LONGER PINNED" in out
    assert "!     after 2030-01-01T00:00:00Z: falls back to CA validation only" in out
    assert "digest checked" in out
    rec = json.loads(receipt.read_text())
    new_sha = hashlib.sha256(bundles["v2"].read_bytes()).hexdigest()
    assert rec["result"] == "installed" and rec["device_id"] == "dev-1" and rec["error"] is None
    old_bytes, new_bytes = bundles["v1"].read_bytes(), bundles["v2"].read_bytes()
    assert rec["old"] == {"version": 1, "sha256": hashlib.sha256(old_bytes).hexdigest(), "id": _bundle_id(old_bytes)}
    assert rec["new"] == {"version": 2, "sha256": new_sha, "id": _bundle_id(new_bytes)}
    assert rec["started"].endswith("Z") and rec["duration_s"] > 0
    assert version_of(fleetpin, b.port) == 2
    # the same bundle again: nothing to do, exit 0, and a receipt that says so
    r = fleetpin("device", "update", "--port", b.port, bundles["v2"], "--yes", "--json", "--receipt", receipt)
    assert r.exit_code == 0 and json.loads(r.stdout)["result"] == "already-installed"


def test_declining_changes_nothing_and_is_recorded(fleetpin: Any, board: Any, bundles: dict[str, Path], tmp_path: Path) -> None:
    b = board()
    r = fleetpin("device", "update", "--port", b.port, bundles["v2"], "--receipt", tmp_path / "r.json", input="n\n")
    assert r.exit_code == 1 and "declined" in r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["result"] == "aborted"
    assert version_of(fleetpin, b.port) == 1


def _bundle_id(data: bytes) -> str:
    """A bundle's identity: the SHA-256 of its signed bytes (pinagent.bundle)."""
    from pinagent.bundle import decode_unverified

    return bytes(decode_unverified(data).digest).hex()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_the_confirmation_says_who_signed_and_what_the_device_needs(
    fleetpin: Any, board: Any, bundles: dict[str, Path], tmp_path: Path, runtime: str
) -> None:
    # Issue 12, item 5: the technician sees who signed and the device's rule before saying yes.
    b = board(runtime)
    r = fleetpin("device", "update", "--port", b.port, bundles["v2"], "--receipt", tmp_path / "r.json", input="n\n")
    out = r.stdout
    everyday = json.loads(demo_signer_set())["signers"][0]["id"]
    assert f"signed by {everyday}: 1 of the device's 2 keys; a bundle needs 1" in out, out
    info = json.loads(fleetpin("device", "info", "--port", b.port, "--json").stdout)
    assert info["signers"] == {"ids": [s["id"] for s in json.loads(demo_signer_set())["signers"]],
                               "threshold": 1, "rotation_threshold": 2, "vouched": [everyday]}


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_one_key_rotation_is_refused_before_sending(
    fleetpin: Any, board: Any, bundles: dict[str, Path], tmp_path: Path, runtime: str
) -> None:
    b = board(runtime)
    receipt = tmp_path / "r.json"
    r = fleetpin("device", "update", "--port", b.port, bundles["rotate_one_key"], "--yes", "--receipt", receipt)
    assert r.exit_code == 1 and "a signer-set change needs 2 of the device's keys, signed by 1" in r.stderr, r.stderr
    assert "(nothing sent)" in r.stderr
    rec = json.loads(receipt.read_text())
    assert rec["result"] == "refused" and rec["transfer"]["wire_bytes_sent"] < bundles["rotate_one_key"].stat().st_size
    assert version_of(fleetpin, b.port) == 1
    # and sent anyway (a host that skips fleetpin's checks), the device refuses it itself
    with Transport.open(b.port) as t:
        t.connect()
        with pytest.raises(DeviceRefused) as refused:
            t.upload(bundles["rotate_one_key"].read_bytes())
    assert refused.value.code_name == "signature" and "needs 2" in str(refused.value), str(refused.value)
    assert version_of(fleetpin, b.port) == 1


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_re_encoded_copy_of_the_installed_bundle_is_already_installed(
    fleetpin: Any, board: Any, bundles: dict[str, Path], tmp_path: Path, runtime: str
) -> None:
    # Issue 12, item 7: (r, n - s) is the same signature of the same bundle in other bytes. Its
    # identity (IDENTIFY's bundle_id, receipts) is the digest of the signed bytes, so it is the
    # installed bundle, not a second v2 to refuse.
    b = board(runtime, seed="v2")
    data = bundles["v2"].read_bytes()
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    copy = data[:-32] + (n - int.from_bytes(data[-32:], "big")).to_bytes(32, "big")
    path = tmp_path / "v2-copy.bin"
    path.write_bytes(copy)
    receipt = tmp_path / "r.json"
    r = fleetpin("device", "update", "--port", b.port, path, "--yes", "--receipt", receipt, "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["result"] == "already-installed"
    rec = json.loads(receipt.read_text())
    assert rec["new"]["id"] == rec["old"]["id"] == _bundle_id(data)
    info = json.loads(fleetpin("device", "info", "--port", b.port, "--json").stdout)
    assert info["bundle_id"] == _bundle_id(data)


# ---- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize(
    "name, message, sent",
    [
        ("other_fleet", "is for fleet 'other', the device dev-1 is in fleet 'acme' (nothing sent)", False),
        ("v2_other", "v2 is the same version as the installed v2", False),
        ("stranger", "not signed by a key the device trusts (a bundle needs 1 of its keys) (nothing sent)", False),
        ("bad_signature", "the device refused the bundle: signature: signature by key", True),
    ],
)
def test_refused_bundles_leave_the_device_unchanged(
    fleetpin: Any, board: Any, bundles: dict[str, Path], tmp_path: Path, runtime: str, name: str, message: str, sent: bool
) -> None:
    b = board(runtime, seed="v2")
    before = json.loads(fleetpin("device", "info", "--port", b.port, "--json").stdout)
    receipt = tmp_path / "r.json"
    r = fleetpin("device", "update", "--port", b.port, bundles[name], "--yes", "--receipt", receipt)
    assert r.exit_code == 1
    assert message in r.stderr and "next:" in r.stderr
    rec = json.loads(receipt.read_text())
    assert rec["result"] == "refused" and message in rec["error"] and rec["old"]["version"] == 2
    # refused before sending a byte of the bundle: only HELLO, PING, IDENTIFY went out
    assert (rec["transfer"]["wire_bytes_sent"] > bundles[name].stat().st_size) is sent
    after = json.loads(fleetpin("device", "info", "--port", b.port, "--json").stdout)
    assert after["bundle_sha256"] == before["bundle_sha256"] and after["mode"] == "ok"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_rollback_is_refused_before_sending(fleetpin: Any, board: Any, bundles: dict[str, Path], tmp_path: Path, runtime: str) -> None:
    b = board(runtime, seed="v3")
    r = fleetpin("device", "update", "--port", b.port, bundles["v2"], "--yes", "--receipt", tmp_path / "r.json")
    assert r.exit_code == 1 and "v2 is older than the installed v3" in r.stderr
    assert version_of(fleetpin, b.port) == 3


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_the_device_itself_refuses_a_rollback_sent_anyway(fleetpin: Any, board: Any, bundles: dict[str, Path], runtime: str) -> None:
    """A host that skips fleetpin's checks (an attacker replaying an old signed bundle) meets
    the device's own: the old version is refused at commit, the installed one stays."""
    b = board(runtime, seed="v3")
    with Transport.open(b.port) as t:
        t.connect()
        with pytest.raises(DeviceRefused) as refused:
            t.upload(bundles["v2"].read_bytes())
    assert refused.value.code_name == "rollback"
    assert version_of(fleetpin, b.port) == 3


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_fleet_frozen_by_a_stolen_key_is_recovered_by_a_rotation_that_retires_it(
        fleetpin: Any, board: Any, bundles: dict[str, Path], tmp_path: Path, runtime: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The everyday key was stolen and the thief installed the highest version there is: before,
    no bundle could ever follow it. A rotation signed by two keys that retires the everyday key
    is sent despite its lower version, and the device resets its version record; a rotation that
    retires only the backup key (which did not sign the thief's bundle) is refused by the device."""
    monkeypatch.chdir(tmp_path)  # the receipts of the updates without --receipt
    b = board(runtime, seed="v1")
    assert fleetpin("device", "update", "--port", b.port, bundles["stolen_top"], "--yes").exit_code == 0
    r = fleetpin("device", "update", "--port", b.port, bundles["v3"], "--yes")
    assert r.exit_code == 1 and "older than the installed" in r.stderr and "nothing sent" in r.stderr
    info = json.loads(fleetpin("device", "info", "--port", b.port, "--json").stdout)
    everyday, backup = info["signers"]["ids"]
    assert info["signers"]["vouched"] == [everyday]  # who signed the thief's version
    assert f"its highest version was signed by {everyday}" in fleetpin("device", "info", "--port", b.port).stdout
    r = fleetpin("device", "update", "--port", b.port, bundles["retire_backup_v4"], "--yes")
    assert r.exit_code == 1 and f"retires ({backup}) did not sign that version (signed by {everyday})" in r.stderr
    assert "(nothing sent)" in r.stderr, r.stderr
    with Transport.open(b.port) as t:  # sent anyway, by a host that skips fleetpin's checks
        t.connect()
        with pytest.raises(DeviceRefused) as refused:
            t.upload(bundles["retire_backup_v4"].read_bytes())
    assert refused.value.code_name == "rollback"
    assert version_of(fleetpin, b.port) == 2**31 - 1
    r = fleetpin("device", "update", "--port", b.port, bundles["recover_v4"], "--yes", "--receipt", tmp_path / "r.json")
    assert r.exit_code == 0, r.stderr
    assert f"retires {everyday}, which signed v2147483647: the device resets its version record" in r.stdout
    assert json.loads((tmp_path / "r.json").read_text())["new"]["version"] == 4
    assert version_of(fleetpin, b.port) == 4
    r = fleetpin("device", "update", "--port", b.port, bundles["stolen_top"], "--yes")
    assert r.exit_code != 0 and version_of(fleetpin, b.port) == 4  # the retired key signs nothing now


# ---- interruptions and noise ---------------------------------------------------------------


def _interrupt_when(b: VirtualBoard, after_bytes: int, action: Callable[[], None]) -> threading.Thread:
    def watch() -> None:
        deadline = time.monotonic() + 20
        start = b.line.bytes_in
        while b.line.bytes_in - start < after_bytes and time.monotonic() < deadline:
            time.sleep(0.001)
        action()

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("how", ["unplug", "reset"])
def test_an_interrupted_update_keeps_the_old_bundle_and_can_be_retried(
    fleetpin: Any, board: Any, bundles: dict[str, Path], tmp_path: Path, runtime: str, how: str
) -> None:
    rng = random.Random(f"{runtime}-{how}")
    size = bundles["v2"].stat().st_size
    for trial in range(1 if how == "unplug" else 3):  # an unplugged run waits out --timeout
        b = board(runtime, baud=115200)
        cut = rng.randrange(60, size)  # somewhere in the transfer (the commit comes after)
        watcher = _interrupt_when(b, cut, b.unplug if how == "unplug" else b.reset)
        receipt = tmp_path / f"{how}{trial}.json"
        r = fleetpin("device", "update", "--port", b.port, bundles["v2"], "--yes", "--timeout", "1.5", "--receipt", receipt)
        watcher.join()
        assert r.exit_code == 1, r.stdout
        assert ("no agent answering" in r.stderr) if how == "unplug" else ("restarted" in r.stderr)
        assert "keeps bundle v1" in r.stderr
        assert json.loads(receipt.read_text())["result"] == "failed"
        b.plug()
        assert version_of(fleetpin, b.port) == 1  # the old bundle still in force
        r = fleetpin("device", "update", "--port", b.port, bundles["v2"], "--yes", "--receipt", receipt)
        assert r.exit_code == 0, r.stderr
        assert json.loads(receipt.read_text())["result"] == "installed"
        assert version_of(fleetpin, b.port) == 2
        b.stop()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_noisy_line_still_installs_the_exact_bundle(fleetpin: Any, board: Any, bundles: dict[str, Path], tmp_path: Path, runtime: str) -> None:
    b = board(runtime, baud=115200, faults="drop=0.002,flip=0.002,dup=0.001,seed=11")
    r = fleetpin("device", "update", "--port", b.port, bundles["v2"], "--yes", "--json", "--receipt", tmp_path / "r.json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["result"] == "installed" and out["transfer"]["retransmissions"] > 0
    assert sum(b.faults.counts.values()) > 0
    import hashlib

    assert out["new"]["sha256"] == hashlib.sha256(bundles["v2"].read_bytes()).hexdigest()


def test_disconnect_faults_are_survived(fleetpin: Any, board: Any, bundles: dict[str, Path], tmp_path: Path) -> None:
    b = board(baud=115200, faults="disconnect=0.002,outage=0.3,seed=3")
    r = fleetpin("device", "update", "--port", b.port, bundles["v2"], "--yes", "--receipt", tmp_path / "r.json")
    assert r.exit_code == 0, r.stderr
    assert b.faults.counts["disconnect"] > 0
    assert version_of(fleetpin, b.port) == 2


# ---- errors a technician meets ---------------------------------------------------------------


def test_a_busy_port_is_named_with_a_next_step(fleetpin: Any, board: Any) -> None:
    b = board()
    other = serial.Serial(b.port, 115200, exclusive=True)
    try:
        r = fleetpin("device", "info", "--port", b.port)
    finally:
        other.close()
    assert r.exit_code == 1 and "is busy" in r.stderr and "close the other program" in r.stderr


def test_no_agent_answering(fleetpin: Any) -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        started = time.monotonic()
        r = fleetpin("device", "info", "--port", os.ttyname(slave), "--timeout", "1")
        assert time.monotonic() - started < 5
    finally:
        os.close(master)
        os.close(slave)
    assert r.exit_code == 1 and "no agent answering" in r.stderr and "not the REPL" in r.stderr


def test_missing_port_and_bad_bundle_file(fleetpin: Any, tmp_path: Path, board: Any) -> None:
    r = fleetpin("device", "info", "--port", "/dev/does-not-exist")
    assert r.exit_code == 1 and "no such serial port" in r.stderr
    (tmp_path / "junk.bin").write_bytes(b"junk")
    r = fleetpin("device", "update", "--port", board().port, tmp_path / "junk.bin", "--yes")
    assert r.exit_code == 2 and "not a valid bundle" in r.stderr


# ---- reports, reboot, test-connect ---------------------------------------------------------------


def test_reports_are_read_and_acknowledged_never_erased(fleetpin: Any, board: Any, tmp_path: Path) -> None:
    from fleetpin.line.boards import get_board
    from fleetpin.sim.flashfs import FlashFS

    flash = tmp_path / "flash.img"
    with FlashFS.open_image(flash, get_board("esp32")) as f:
        Reports(f.store_fs()).add({"date-time": "2026-01-01T00:00:00Z", "hostname": "api.example.com", "port": 443,
                                   "validation-result": "pin_mismatch"})
    b = board(flash=flash)
    assert json.loads(fleetpin("device", "info", "--port", b.port, "--json").stdout)["pending_reports"] == 1
    r = fleetpin("device", "reports", "--port", b.port)
    assert r.exit_code == 0 and "api.example.com:443" in r.stdout and "pin_mismatch" in r.stdout
    r = fleetpin("device", "reports", "--port", b.port, "--ack", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["acked"] == {"acked": 1, "pending": 0}
    out = json.loads(fleetpin("device", "reports", "--port", b.port, "--json").stdout)
    assert len(out["reports"]) == 1 and out["pending"] == 0 and out["counters"]["total"] == 1  # kept
    assert json.loads(fleetpin("device", "info", "--port", b.port, "--json").stdout)["pending_reports"] == 0
    r = fleetpin("device", "reports", "--port", b.port)
    assert "no pending reports (1 kept" in r.stdout and "[acknowledged]" in r.stdout
    assert fleetpin("device", "reports", "--port", b.port, "--clear").exit_code == 2  # no such thing


def test_reports_are_stored_in_the_registry_before_they_are_acknowledged(fleetpin: Any, board: Any, tmp_path: Path) -> None:
    import sqlalchemy as sa

    from fleetpin.line.boards import get_board
    from fleetpin.line.registry import Registry
    from fleetpin.sim.flashfs import FlashFS

    flash = tmp_path / "flash.img"
    with FlashFS.open_image(flash, get_board("esp32")) as f:
        Reports(f.store_fs()).add({"date-time": "2026-01-01T00:00:00Z", "hostname": "api.example.com", "port": 443,
                                   "validation-result": "mismatch", "enforce-pinning": True, "device-id": "dev-1"})
    b = board(flash=flash)
    # a registry this fleetpin cannot use: nothing is stored, so nothing is acknowledged either
    newer = f"sqlite:///{tmp_path / 'newer.sqlite'}"
    Registry(newer).close()
    with sa.create_engine(newer).begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0099'"))
    r = fleetpin("device", "reports", "--port", b.port, "--store", "--ack", "--registry", newer)
    assert r.exit_code == 1 and "newer than this fleetpin" in r.stderr
    assert json.loads(fleetpin("device", "info", "--port", b.port, "--json").stdout)["pending_reports"] == 1

    reg = f"sqlite:///{tmp_path / 'reg.sqlite'}"
    r = fleetpin("device", "reports", "--port", b.port, "--store", "--registry", reg, "--json")
    out = json.loads(r.stdout)
    assert r.exit_code == 0 and out["stored"] == {"added": 1, "merged": 0} and out["acked"] is None
    assert out["device"]["device_id"] == "dev-1" and out["device"]["mac"] == b.mac and out["read_at"].endswith("Z")
    (tmp_path / "saved.json").write_text(r.stdout)
    r = fleetpin("device", "reports", "--port", b.port, "--store", "--ack", "--registry", reg)
    assert r.exit_code == 0 and "0 new, 1 already there" in r.stdout and "acknowledged 1 report(s)" in r.stdout
    assert json.loads(fleetpin("device", "info", "--port", b.port, "--json").stdout)["pending_reports"] == 0
    st = json.loads(fleetpin("fleet", "status", "--registry", reg, "--json").stdout)
    assert st["devices"] == 1 and [(m["host"], m["mode"], m["sample"]) for m in st["mismatches"]] == [("api.example.com", "enforced", ["dev-1"])]
    # what a technician saved with --json goes into another registry as it is
    other = f"sqlite:///{tmp_path / 'office.sqlite'}"
    r = fleetpin("fleet", "import", str(tmp_path / "saved.json"), "--registry", other)
    assert r.exit_code == 0 and "dev-1: 1 new, 0 already there" in r.stdout


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_reboot_waits_for_the_device_to_come_back(fleetpin: Any, board: Any, runtime: str) -> None:
    b = board(runtime)
    r = fleetpin("device", "reboot", "--port", b.port)
    assert r.exit_code == 0, r.stderr
    assert "rebooted: dev-1 is back, mode ok, bundle v1" in r.stdout
    assert b.boots == 2


@pytest.mark.parametrize("runtime", runtime_params("micropython", "cpython"))
def test_test_connect_gives_the_devices_own_verdict(fleetpin: Any, board: Any, pki: Pki, tls_server: Any, tmp_path: Path,
                                                     runtime: str) -> None:
    """micropython: the agent's own TLS adapter on mbedTLS; cpython: fleetpin.sim.tls on ssl."""
    b = board(runtime, seed=None)
    bundle = demo_bundle(FLEET, 1, {pki.host: [pki.pins["leaf"], pki.pins["backup"]]}, ca_der=[pki.root.der])
    (tmp_path / "b.bin").write_bytes(bundle)
    assert fleetpin("device", "update", "--port", b.port, tmp_path / "b.bin", "--yes", "--receipt", tmp_path / "r.json").exit_code == 0
    good = tls_server("leaf")
    r = fleetpin("device", "test-connect", "--port", b.port, f"{pki.host}:{good.port}", "--json")
    assert r.exit_code == 0, r.stderr + r.stdout
    verdict = json.loads(r.stdout)
    assert verdict["allowed"] is True and verdict["reason"] == "matched"
    assert [c["depth"] for c in verdict["chain"]] == [0, 1, 2]  # the whole chain was seen, root included
    rogue = tls_server("rogue_leaf")
    r = fleetpin("device", "test-connect", "--port", b.port, f"{pki.host}:{rogue.port}", "--json")
    assert r.exit_code == 1
    refused = json.loads(r.stdout)
    # Refused either way. On the board (mbedTLS) the pin check sees the chain before mbedTLS fails
    # it for its CA, so the verdict is the pin check's: a mismatch at depth 0 (device/PORTS.md).
    # Python's ssl fails the CA first, and the check never sees the chain.
    assert refused["allowed"] is False
    assert refused["reason"] == ("mismatch" if runtime == "micropython" else "tls_failed"), refused
    assert rogue.requests == []  # not one application byte sent to the rogue server
    # and the device recorded it, with the chain it was shown
    reports = json.loads(fleetpin("device", "reports", "--port", b.port, "--json").stdout)["reports"]
    assert [(x["port"], x["validation-result"]) for x in reports] == [(rogue.port, refused["reason"])]
    shown = [c["pin-sha256"] for c in reports[0].get("served-certificate-chain", [])]
    assert shown == ([pki.pins["rogue_leaf"]] if runtime == "micropython" else [])


# ---- `fleetpin sim board` as its own process ----------------------------------------------------

_SIM = """
import sys
from fleetpin import cli
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_sim_board_command_serves_a_pty_and_keeps_its_flash(fleetpin: Any, bundles: dict[str, Path], tmp_path: Path, runtime: str) -> None:
    import subprocess
    import sys

    flash = tmp_path / "board.img"
    signers = tmp_path / "signers.json"
    signers.write_bytes(demo_signer_set())

    def run_board(*extra: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
        proc = subprocess.Popen([sys.executable, "-c", _SIM, "sim", "board", "--runtime", runtime, "--flash", str(flash),
                                 "--json", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        return proc, json.loads(line)

    proc, info = run_board("--fleet", FLEET, "--device-id", "field-7", "--signers", str(signers),
                           "--seed-bundle", str(bundles["v1"]), "--baud", "115200")
    try:
        assert info["device_id"] == "field-7" and info["runtime"] == runtime
        r = fleetpin("device", "update", "--port", info["port"], bundles["v2"], "--yes", "--receipt", tmp_path / "r.json")
        assert r.exit_code == 0, r.stderr
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    proc, info = run_board()  # the same flash file: the same board, with what it installed
    try:
        out = json.loads(fleetpin("device", "info", "--port", info["port"], "--json").stdout)
        assert out["device_id"] == "field-7" and out["bundle_version"] == 2
    finally:
        proc.terminate()
        proc.wait(10)


def test_an_unwritable_receipt_is_refused_before_anything_is_sent(fleetpin: Any, board: Any, bundles: dict[str, Path], tmp_path: Path) -> None:
    b = board(seed="v1")
    (tmp_path / "afile").write_text("not a directory")
    r = fleetpin("device", "update", "--port", b.port, bundles["v2"], "--yes", "--receipt", tmp_path / "afile" / "r.json")
    assert r.exit_code == 2 and "cannot write the receipt" in r.stderr and "nothing sent" in r.stderr
    assert version_of(fleetpin, b.port) == 1
