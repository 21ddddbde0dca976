"""Virtual boards on MicroPython's unix port (the "micropython" runtime): device/main.py and the
agent's .mpy files from a flash image that `fleetpin image build` made, run as the ESP32 runs
them, with mbedTLS, littlefs and a hard heap. Where this build differs from the ESP32 port, the
test says so and device/PORTS.md explains."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import serial
from runtimes import needs_unix_port

from fleetpin.field.transport import NoAnswer, Transport
from fleetpin.line.boards import MIB, get_board
from fleetpin.line.image import build_image
from fleetpin.sim.board import HEAP_KB, VirtualBoard
from fleetpin.sim.demo_bundles import demo_bundle, demo_signer_set
from fleetpin.sim.firmware import stand_in_firmware
from fleetpin.sim.flashfs import FlashFS
from fleetpin.sim.pki import Pki

pytestmark = needs_unix_port

ESP32 = get_board("esp32")
FLEET = "acme"
DEVICE = Path(__file__).resolve().parents[2] / "device"


def identify(port: str) -> dict[str, Any]:
    with Transport.open(port, timeout=10) as t:
        t.connect()
        return dict(t.call(t.client.identify(), "IDENTIFY"))


def flash_from_image(image_dir: Path, out: Path) -> Path:
    """The 4 MB flash an ESP32 holds after esptool wrote the image's regions."""
    manifest = json.loads((image_dir / "manifest.json").read_text())
    data = bytearray(b"\xff" * manifest["flash_size"])
    for r in manifest["regions"]:
        blob = (image_dir / r["file"]).read_bytes()
        data[r["offset"] : r["offset"] + len(blob)] = blob
    out.write_bytes(data)
    return out


@pytest.fixture
def imaged(tmp_path: Path, pki: Pki) -> Path:
    """A flash image built by image build: the stand-in firmware, the agent from device/ and a
    bundle pinning the PKI's leaf and backup keys under its root."""
    bundle = demo_bundle(FLEET, 1, {pki.host: [pki.pins["leaf"], pki.pins["backup"]]}, ca_der=[pki.root.der])
    build_image(ESP32, stand_in_firmware("esp32"), bundle, demo_signer_set(), 4 * MIB, tmp_path / "image")
    return flash_from_image(tmp_path / "image", tmp_path / "board.img")


@pytest.fixture
def boards() -> Iterator[list[VirtualBoard]]:
    started: list[VirtualBoard] = []
    yield started
    for b in started:
        b.stop()


def start(boards: list[VirtualBoard], **kw: Any) -> VirtualBoard:
    b = VirtualBoard(runtime="micropython", **kw)
    boards.append(b)
    return b.start()


def test_a_board_boots_the_image_and_answers_as_a_board(fleetpin: Any, imaged: Path, boards: list[VirtualBoard],
                                                        pki: Pki, tls_server: Any, tmp_path: Path) -> None:
    started = time.monotonic()
    b = start(boards, flash=imaged)
    info = json.loads(fleetpin("device", "info", "--port", b.port, "--json").stdout)
    print(f"RESULT: unix-port board: start to IDENTIFY answer {time.monotonic() - started:.2f} s (-X heapsize={b.heap_kb}K)")
    assert info["mode"] == "ok" and info["bundle_version"] == 1 and info["fleet"] == FLEET and info["clock"] == "trusted"
    # what runs is what the image installed: main.py at the root, the agent as .mpy under /lib
    with FlashFS.open_image(imaged, ESP32, create=False) as flash:
        assert flash.read_file("/main.py") == (DEVICE / "main.py").read_bytes()
        assert flash.read_file("/lib/pinagent/agent.mpy")[:1] == b"M"
        assert flash.read_file("/lib/pinagent/agent.py") is None
    # test-connect reaches the loopback server through mbedTLS, and a rogue CA's chain is refused
    good = tls_server("leaf")
    r = fleetpin("device", "test-connect", "--port", b.port, f"{pki.host}:{good.port}", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["matched_label"] == "primary", r.stdout + r.stderr
    rogue = tls_server("rogue_leaf")
    r = fleetpin("device", "test-connect", "--port", b.port, f"{pki.host}:{rogue.port}", "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["reason"] == "mismatch" and rogue.requests == []
    reports = json.loads(fleetpin("device", "reports", "--port", b.port, "--json").stdout)["reports"]
    assert [x["validation-result"] for x in reports] == ["mismatch"]
    # an update, kept across a power cycle (the process killed and started again) and a REBOOT
    v2 = demo_bundle(FLEET, 2, {pki.host: [pki.pins["backup"]]}, ca_der=[pki.root.der])
    (tmp_path / "v2.bin").write_bytes(v2)
    r = fleetpin("device", "update", "--port", b.port, tmp_path / "v2.bin", "--yes", "--receipt", tmp_path / "r.json")
    assert r.exit_code == 0, r.stderr
    b.reset()
    assert identify(b.port)["bundle_version"] == 2
    r = fleetpin("device", "reboot", "--port", b.port)
    assert r.exit_code == 0 and "bundle v2" in r.stdout, r.stderr
    assert b.boots == 3
    r = fleetpin("device", "test-connect", "--port", b.port, f"{pki.host}:{good.port}")
    assert r.exit_code == 1 and "REFUSED mismatch" in r.stdout  # v2 no longer pins the primary key
    # the reports survived every restart: they are on the flash
    reports = json.loads(fleetpin("device", "reports", "--port", b.port, "--json").stdout)["reports"]
    assert len(reports) == 2


def test_the_app_hook_runs_after_the_window_with_pinned_connections(imaged: Path, boards: list[VirtualBoard],
                                                                    pki: Pki, tls_server: Any) -> None:
    """main.py's step 4: no HELLO within the window, so /app.py's main(agent) runs; its
    agent.connect is pinned (mbedTLS + the pin check). Then main.py serves for good."""
    good, rogue = tls_server("leaf"), tls_server("rogue_leaf")
    app = f"""
def main(agent):
    for port in ({good.port}, {rogue.port}):
        try:
            agent.connect("{pki.host}", port).close()
            print("APP", port, "connected")
        except Exception as e:
            print("APP", port, "refused", e.reason)
"""
    with FlashFS.open_image(imaged, ESP32) as flash:
        flash.write_file("/app.py", app.encode())
    b = start(boards, flash=imaged)
    with serial.Serial(b.port, 115200, timeout=0.2) as s:
        out = b""
        deadline = time.monotonic() + 15
        while out.count(b"APP ") < 2 and time.monotonic() < deadline:
            out += s.read(4096)
    assert f"APP {good.port} connected".encode() in out and f"APP {rogue.port} refused mismatch".encode() in out, out
    assert good.requests == [] and rogue.requests == []  # connect() sends nothing by itself
    assert identify(b.port)["mode"] == "ok"  # and the console serves again


def test_ctrl_c_never_stops_a_locked_board(imaged: Path, boards: list[VirtualBoard]) -> None:
    """main.py turns Ctrl-C off first thing and keeps it off (no "repl" in config.json): 0x03
    bytes on the console, in the window and after it, are only noise to the protocol. (The unix
    port would die of the SIGINT; the board support's kbd_intr keeps it a data byte, as the
    ESP32's UART driver does: device/PORTS.md, the console.)"""
    b = start(boards, flash=imaged)
    with serial.Serial(b.port, 115200, timeout=0.2) as s:
        for _ in range(8):  # across the 3 s window and past it
            s.write(b"\x03\x03\r\n\x03")
            s.read(4096)
            time.sleep(0.5)
    assert identify(b.port)["mode"] == "ok"
    assert b.boots == 1 and b._core is not None and b._core.proc is not None and b._core.proc.poll() is None


def test_a_development_board_hands_the_console_to_the_repl(boards: list[VirtualBoard], tmp_path: Path) -> None:
    """"repl": true: after the window main.py returns and the REPL takes the console; Ctrl-C
    interrupts code there; Ctrl-D is a soft reset, after which main.py runs again."""
    flash = tmp_path / "dev.img"
    with FlashFS.open_image(flash, ESP32) as f:
        f.write_file("/fleetpin/config.json", b'{"repl": true, "fleet": "acme"}')
    b = start(boards, flash=flash)

    def read_until(s: serial.Serial, marker: bytes, limit: float = 10) -> bytes:
        out = b""
        deadline = time.monotonic() + limit
        while marker not in out and time.monotonic() < deadline:
            out += s.read(4096)
        assert marker in out, out
        return out

    with serial.Serial(b.port, 115200, timeout=0.1) as s:
        read_until(s, b">>> ")  # after the 3 s window
        s.write(b"print(6 * 7)\r")
        assert b"42" in read_until(s, b">>> ")
        s.write(b"while True: pass\r\r")
        time.sleep(0.3)
        s.write(b"\x03")
        assert b"KeyboardInterrupt" in read_until(s, b">>> ")
        s.write(b"\x04")
        deadline = time.monotonic() + 10
        while b.boots < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert b.boots == 2
    assert identify(b.port)["mode"] == "safe-no-bundle"  # main.py serves again after the soft reset


def test_the_board_clock_is_the_virtual_boards(boards: list[VirtualBoard]) -> None:
    """time.time() on the board is the board's settable clock (unset: the ESP32's 2000-01-01
    after power loss, which the agent reports as unset). The unix port's epoch is 1970, the
    ESP32's 2000 (device/PORTS.md, time)."""
    b = start(boards, clock="unset", fleet=FLEET)
    assert identify(b.port)["clock"] == "unset"
    b.set_clock(1_800_000_000)
    info = identify(b.port)
    assert info["clock"] == "trusted" and 1_800_000_000 <= info["now"] < 1_800_000_010


def test_the_heap_is_a_hard_limit(boards: list[VirtualBoard]) -> None:
    """-X heapsize is enforced. At 96 KB the agent boots (it loads the serial service only when
    a host says HELLO), but the service does not fit beside it: the board prints the MemoryError
    and the host's error quotes it, instead of a bare "restarted" or a timeout. A 64-bit heap:
    about 1.4 times the ESP32's for the same objects, and mbedTLS is not in it (device/PORTS.md)."""
    assert HEAP_KB["micropython"] == 256
    b = start(boards, heap_kb=96, fleet=FLEET)
    with pytest.raises(NoAnswer, match=r"its console said: MemoryError: memory allocation failed"):
        identify(b.port)
    assert identify(start(boards, heap_kb=256, fleet=FLEET).port)["mode"] != "broken"
