"""What a board sends is untrusted: `fleetpin device ...` against a hostile board (the real
protocol service, pinagent.service.Service, over a pty, with a Handler that answers whatever the
test says). Control and escape characters never reach the terminal, every field is type-checked,
and a malformed answer or installed bundle gives a clear error (and, for update, a receipt),
never a traceback."""

from __future__ import annotations

import hashlib
import json
import os
import select
import threading
import tty
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetpin.field import receipts
from fleetpin.sim.demo_bundles import FILLER_PINS, demo_bundle
from pinagent.link import DeviceLink
from pinagent.service import E_STORAGE, Handler, Service, ServiceError

FLEET = "acme"
ESC = "\x1b]0;pwned\x07\x1b[2J\x1b[31m"  # set the window title, clear the screen, red
BIDI = "\u202e"  # right-to-left override: shows text reversed
CONTROL = [chr(c) for c in range(0x20) if c not in (0x0A,)] + ["\x7f", "\x9b", BIDI]


def clean(text: str) -> bool:
    """No control character but newline, no C1 control, no bidi override."""
    return not any(c in text for c in CONTROL)


def identity(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"device_id": "dev-1", "agent": "0.1.0", "format": 1, "fleet": FLEET, "mode": "ok",
                            "bundle_version": 1, "bundle_sha256": None, "clock": "trusted", "now": 1_800_000_000,
                            "time_floor": 1_700_000_000, "trust": True, "free": 100_000, "reports": 0,
                            "problems": []}
    base.update(over)
    return base


class Hostile(Handler):
    def __init__(self, ident: dict[str, Any], bundle: bytes = b"", reports: bytes = b"",
                 verdict: Any = None, refuse: str | None = None) -> None:
        self.ident = ident
        self.bundle = bundle
        self.reports = reports
        self.verdict = verdict
        self.refuse = refuse

    def identify(self) -> dict[str, Any]:
        if self.refuse is not None:
            raise ServiceError(E_STORAGE, self.refuse)
        return self.ident

    def read_bundle(self, offset: int, length: int) -> tuple[int, memoryview]:
        return len(self.bundle), memoryview(self.bundle)[offset:offset + length]

    def read_reports(self, offset: int, length: int) -> tuple[int, memoryview]:
        return len(self.reports), memoryview(self.reports)[offset:offset + length]

    def test_connect(self, host: str, port: int) -> Any:
        return self.verdict


@pytest.fixture
def hostile() -> Iterator[Callable[[Hostile], str]]:
    """hostile(handler) -> the pty path of a board answering with that handler."""
    stops: list[Callable[[], None]] = []

    def start(handler: Hostile) -> str:
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        path = os.ttyname(slave)
        link = DeviceLink(Service(handler).dispatch)
        stop = threading.Event()

        def pump() -> None:
            os.write(master, bytes(link.announce()))
            while not stop.is_set():
                r, _, _ = select.select([master], [], [], 0.05)
                if not r:
                    continue
                try:
                    data = os.read(master, 4096)
                except OSError:
                    return
                out = link.receive_data(data)
                if out:
                    os.write(master, bytes(out))

        t = threading.Thread(target=pump, daemon=True)
        t.start()

        def halt() -> None:
            stop.set()
            t.join(2)
            os.close(master)
            os.close(slave)

        stops.append(halt)
        return path

    yield start
    for halt in stops:
        halt()


def test_info_strips_control_and_escape_characters(fleetpin: Any, hostile: Any) -> None:
    port = hostile(Hostile(identity(device_id="dev" + ESC + "-1", fleet=FLEET + BIDI + "moc.live",
                                    mode="ok\r\x1b[Kfine", clock="trusted\x08\x08\x08",
                                    problems=["flash " + ESC + "damaged"])))
    r = fleetpin("device", "info", "--port", port)
    assert r.exit_code == 0, r.stderr
    assert clean(r.stdout) and clean(r.stderr), repr(r.stdout)
    assert "dev\\x1b]0;pwned\\x07" in r.stdout and "\\u202e" in r.stdout  # shown, harmlessly
    # --json carries the same text, escaped by JSON itself
    r = fleetpin("device", "info", "--port", port, "--json")
    assert r.exit_code == 0 and clean(r.stdout)
    assert json.loads(r.stdout)["device_id"] == "dev" + ESC + "-1"


@pytest.mark.parametrize("field,value", [
    ("device_id", 42), ("device_id", ["dev-1"]), ("device_id", ""), ("fleet", {"x": 1}),
    ("bundle_version", "7"), ("bundle_version", True), ("bundle_sha256", "not hex"), ("problems", "x"),
    ("problems", [1, 2]), ("mode", None), ("clock", 5),
])
def test_info_refuses_a_field_of_the_wrong_type(fleetpin: Any, hostile: Any, field: str, value: Any) -> None:
    port = hostile(Hostile(identity(**{field: value})))
    r = fleetpin("device", "info", "--port", port)
    assert r.exit_code == 1 and field in r.stderr and "IDENTIFY" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and clean(r.stderr)


def test_a_device_error_message_is_made_printable(fleetpin: Any, hostile: Any) -> None:
    port = hostile(Hostile(identity(), refuse="flash " + ESC + " gone"))
    r = fleetpin("device", "info", "--port", port)
    assert r.exit_code == 1 and "storage" in r.stderr and clean(r.stderr), repr(r.stderr)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bundles")
    out = {}
    for name, version in (("v1", 1), ("v2", 2)):
        out[name] = d / f"{name}.bin"
        out[name].write_bytes(demo_bundle(FLEET, version, {"api.example.com": FILLER_PINS[:2]}))
    return out


def test_update_with_a_non_string_device_id_fails_clearly_with_a_receipt(
        fleetpin: Any, hostile: Any, bundles: dict[str, Path], tmp_path: Path) -> None:
    port = hostile(Hostile(identity(device_id=12345)))
    receipt = tmp_path / "r.json"
    r = fleetpin("device", "update", "--port", port, bundles["v2"], "--yes", "--receipt", receipt)
    assert r.exit_code == 1 and "device_id" in r.stderr and "Traceback" not in r.stderr
    rec = json.loads(receipt.read_text())
    assert rec["result"] == "failed" and "device_id" in rec["error"] and rec["device_id"] is None


def test_update_with_a_non_string_device_id_and_the_default_receipt_name(
        fleetpin: Any, hostile: Any, bundles: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    port = hostile(Hostile(identity(device_id={"../../etc/passwd": 1})))
    r = fleetpin("device", "update", "--port", port, bundles["v2"], "--yes")
    assert r.exit_code == 1 and "device_id" in r.stderr
    [receipt] = list(tmp_path.glob("receipt-unknown-device-*.json"))
    assert json.loads(receipt.read_text())["result"] == "failed"


@pytest.mark.parametrize("junk", [b"not a bundle at all", b"FPB1" + b"\xff" * 200, b""])
def test_update_with_a_malformed_installed_bundle_fails_clearly_with_a_receipt(
        fleetpin: Any, hostile: Any, bundles: dict[str, Path], tmp_path: Path, junk: bytes) -> None:
    """The board reports v1 and the digest of what it then sends: bytes that are no bundle."""
    port = hostile(Hostile(identity(bundle_sha256=hashlib.sha256(junk).hexdigest()), bundle=junk))
    receipt = tmp_path / "r.json"
    r = fleetpin("device", "update", "--port", port, bundles["v2"], "--yes", "--receipt", receipt)
    assert r.exit_code == 1 and "installed bundle" in r.stderr and "Traceback" not in r.stderr, r.stderr
    rec = json.loads(receipt.read_text())
    assert rec["result"] == "failed" and "installed bundle" in rec["error"] and rec["device_id"] == "dev-1"


def test_reports_are_made_printable(fleetpin: Any, hostile: Any) -> None:
    log = (json.dumps({"fleetpin-reports": 1, "total": 1, "dropped": 0}) + "\n"
           + json.dumps({"date-time": "2026-01-01T00:00:00Z" + ESC, "hostname": "api" + BIDI + ".example.com",
                         "port": 443, "count": 2, "validation-result": "mismatch\r", "last-seen": ESC}) + "\n"
           + json.dumps(["not", "a", "report"]) + "\n" + "\x1b[2J not json\n").encode()
    port = hostile(Hostile(identity(), reports=log))
    r = fleetpin("device", "reports", "--port", port)
    assert r.exit_code == 0, r.stderr
    assert clean(r.stdout) and "api\\u202e.example.com" in r.stdout


def test_test_connect_verdict_is_made_printable_and_checked(fleetpin: Any, hostile: Any) -> None:
    verdict = {"allowed": False, "reason": "mismatch" + ESC, "host": "device.test", "port": 443,
               "rule": "device.test" + BIDI, "matched_label": None, "matched_depth": -1, "clock_trusted": True,
               "expired": False, "chain": [{"depth": 0, "pin": "x" + ESC}], "detail": "boom\x1b[2J"}
    r = fleetpin("device", "test-connect", "device.test:443", "--port", hostile(Hostile(identity(), verdict=verdict)))
    assert r.exit_code == 1 and clean(r.stdout) and clean(r.stderr), (r.stdout, r.stderr)
    assert "REFUSED" in r.stdout
    bad = dict(verdict, chain="not a list")
    r = fleetpin("device", "test-connect", "device.test:443", "--port", hostile(Hostile(identity(), verdict=bad)))
    assert r.exit_code == 1 and "chain" in r.stderr and "Traceback" not in r.stderr


def test_the_receipt_probe_follows_no_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "r.json.probe").symlink_to(victim)
    receipts.check_writable(tmp_path / "r.json")
    assert victim.read_bytes() == b"precious"


def test_what_a_crashed_board_printed_is_quoted_and_frames_are_not() -> None:
    """console_says: the last error line of the text a board printed between frames (what the
    host's "no answer" error quotes), made printable; a frame's body (binary, escaped) is never
    read as text, even when its payload holds an error message."""
    from fleetpin.field.transport import console_says

    announce = b"~\x00\x80\x00}!\x00}!\x00}!\x08}!\x94\x9a\xd4\xa0~"
    crash = (b"fleetpin: listening window failed:\nTraceback (most recent call last):\n"
             b'  File "main.py", line 143, in main\nMemoryError: memory allocation failed, allocating 464 bytes\n')
    assert console_says(announce + crash + announce) == "MemoryError: memory allocation failed, allocating 464 bytes"
    assert console_says(announce + b"fleetpin: agent not installed or damaged: ImportError('no module')\n") == \
        "fleetpin: agent not installed or damaged: ImportError('no module')"
    refused = b"~\x81\x05\x01internal: MemoryError: no heap\n\x00\x12\x34\x56\x78~"
    assert console_says(announce + refused) is None
    assert console_says(announce + b"boot banner, no error\n" + announce) is None
    # C1 controls and a bidirectional override are quoted escaped; C0 controls (ESC) make the
    # piece binary, so it is not quoted at all
    hostile = console_says(announce + "ValueError: \x9b31m\u202e evil\n".encode())
    assert hostile == "ValueError: \\x9b31m\\u202e evil"
    assert console_says(announce + b"ValueError: " + ESC.encode() + b"\n") is None
