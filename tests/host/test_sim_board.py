"""Virtual boards: the flash image file (LittleFS at the board's fs_start, surviving restarts and
kills), the line (rate, faults), and boards on every runtime booting from their flash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial
from runtimes import needs_unix_port, runtime_params

from fleetpin.errors import UsageError
from fleetpin.field.transport import Transport
from fleetpin.line.boards import MIB, get_board
from fleetpin.line.image import FsGeometry, make_littlefs, mount_littlefs
from fleetpin.sim.board import VirtualBoard, VirtualFleet
from fleetpin.sim.demo_bundles import demo_signer_set, sized_bundle
from fleetpin.sim.flashfs import FlashError, FlashFS
from fleetpin.sim.line import Faults
from pinagent.store import encode_slot

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "bundle"
ESP32 = get_board("esp32")
RUNTIMES = runtime_params()


def geometry(size: int = 4 * MIB) -> FsGeometry:
    return FsGeometry.for_board(ESP32, ESP32.fs_start, size - ESP32.fs_start)


def identify(port: str) -> dict:
    with Transport.open(port, timeout=10) as t:
        t.connect()
        return dict(t.call(t.client.identify(), "IDENTIFY"))


# ---- flash image ---------------------------------------------------------------------------


def test_blank_flash_is_formatted_and_changes_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "flash.img"
    with FlashFS.open_image(path, ESP32) as flash:
        assert flash.formatted and path.stat().st_size == 4 * MIB
        flash.write_file("/fleetpin/config.json", b'{"fleet":"a"}')
    with FlashFS.open_image(path, ESP32) as flash:
        assert not flash.formatted
        assert flash.read_file("/fleetpin/config.json") == b'{"fleet":"a"}'
    # the same bytes as the production image tool reads: LittleFS at fs_start, to the end of flash
    region = path.read_bytes()[ESP32.fs_start :]
    assert mount_littlefs(region, geometry()) == {"/fleetpin/config.json": b'{"fleet":"a"}'}


@needs_unix_port
def test_a_provisioned_image_boots_on_a_virtual_board(tmp_path: Path) -> None:
    """What `fleetpin image build` writes at fs_start (and esptool flashes) is what the board mounts."""
    signers = (VECTORS / "signers_prod.json").read_bytes()
    good = (VECTORS / "good.bin").read_bytes()
    # bundle.bin holds a store slot (pinagent.store.encode_slot), not the bare bundle
    fs_bin = make_littlefs(geometry(), {"/fleetpin/bundle.bin": encode_slot(signers, good), "/fleetpin/signers.bin": signers,
                                        "/fleetpin/config.json": b'{"fleet":"acme-sensors","device_id":"prov-1"}'})
    image = bytearray(b"\xff" * 4 * MIB)
    image[ESP32.fs_start :] = fs_bin
    (tmp_path / "flash.img").write_bytes(image)
    with VirtualBoard(flash=tmp_path / "flash.img", clock="2026-01-01T00:00:00Z") as board:
        info = identify(board.port)
    assert info["device_id"] == "prov-1" and info["mode"] == "ok" and info["bundle_version"] == 5


def test_an_unmountable_non_blank_flash_is_refused_like_the_real_board(tmp_path: Path) -> None:
    path = tmp_path / "flash.img"
    data = bytearray(b"\xff" * 4 * MIB)
    data[ESP32.fs_start : ESP32.fs_start + 16] = b"not a filesystem"
    path.write_bytes(data)
    with pytest.raises(FlashError, match="does not mount and is not blank"):
        FlashFS.open_image(path, ESP32)
    (tmp_path / "fs.bin").write_bytes(b"\xff" * 1024)
    with pytest.raises(FlashError, match="not a flash size"):
        FlashFS.open_image(tmp_path / "fs.bin", ESP32)


_WRITER = """
import sys
from fleetpin.line.boards import get_board
from fleetpin.sim.flashfs import FlashFS
flash = FlashFS.open_image(sys.argv[1], get_board("esp32"))
fs = flash.store_fs()
fs.ensure_dir("/fleetpin")
print("ready", flush=True)
i = 0
while True:
    i += 1
    fs.write_atomic("/fleetpin/counter", "/fleetpin/counter.new", [str(i).encode() * 700])
"""


def test_a_killed_board_process_leaves_a_mountable_image(tmp_path: Path) -> None:
    """Writes go through to the file in littlefs's order: a SIGKILL mid-write is a power cut."""
    path = tmp_path / "flash.img"
    for delay in (0.05, 0.13, 0.21):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        with FlashFS.open_image(path, ESP32, create=False) as flash:
            data = flash.read_file("/fleetpin/counter")
            assert data is not None and data == data[: len(data) // 700] * 700  # one whole value


# ---- line ----------------------------------------------------------------------------------


def test_fault_spec_parsing() -> None:
    f = Faults.parse("drop=0.01,flip=0.02,dup=0.005,disconnect=0.001,seed=7,outage=2")
    assert (f.drop, f.flip, f.dup, f.disconnect, f.seed, f.outage) == (0.01, 0.02, 0.005, 0.001, 7, 2.0)
    assert not Faults.parse(None).any
    for bad in ("drop=2", "loss=0.1", "flip=x"):
        with pytest.raises(UsageError):
            Faults.parse(bad)


@needs_unix_port
def test_the_line_rate_is_enforced() -> None:
    """4 KB at 19200 baud takes at least 10 bits per byte each way."""
    signers = demo_signer_set()
    old, new = sized_bundle("acme", 1, 512), sized_bundle("acme", 2, 4096)
    with VirtualBoard(baud=19200, fleet="acme", seed_bundle=old, signers=signers) as board:
        with Transport.open(board.port, 19200, timeout=10) as t:
            t.connect()
            start = time.monotonic()
            assert t.upload(new)["installed"] is True
            elapsed = time.monotonic() - start
    floor = len(new) * 10 / 19200
    assert floor <= elapsed < floor * 2, (elapsed, floor)


# ---- boards ---------------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_blank_flash_boots_in_safe_mode_and_still_serves_the_protocol(runtime: str) -> None:
    with VirtualBoard(runtime=runtime, device_id="blank-1", fleet="acme") as board:
        info = identify(board.port)
    assert info["mode"] == "safe-no-bundle" and info["bundle_version"] is None
    assert info["device_id"] == "blank-1" and info["fleet"] == "acme" and info["proto"] == 1


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_an_update_persists_across_reset_and_runtimes(runtime: str, tmp_path: Path) -> None:
    """The flash image is the board's state: written on one runtime, booted on the other."""
    flash = tmp_path / "flash.img"
    signers = demo_signer_set()
    v1, v2 = sized_bundle("acme", 1, 600), sized_bundle("acme", 2, 900)
    with VirtualBoard(flash=flash, runtime=runtime, fleet="acme", seed_bundle=v1, signers=signers) as board:
        with Transport.open(board.port) as t:
            t.connect()
            assert t.upload(v2)["version"] == 2
        board.reset()
        assert identify(board.port)["bundle_version"] == 2
        assert board.boots == 2
    other = "cpython" if runtime != "cpython" else "wasm"
    with VirtualBoard(flash=flash, runtime=other) as board:
        info = identify(board.port)
    assert info["bundle_version"] == 2 and info["fleet"] == "acme" and info["mode"] == "ok"
    with FlashFS.open_image(flash, ESP32) as f:  # the installed slot, as the store wrote it
        assert f.read_file("/fleetpin/bundle.bin") == encode_slot(signers, v2)


@needs_unix_port
def test_a_virtual_fleet_runs_boards_side_by_side() -> None:
    with VirtualFleet(3, fleet="acme") as fleet:
        assert len(set(fleet.ports)) == 3
        ids = [identify(b.port)["device_id"] for b in fleet]
    assert ids == ["sim-000", "sim-001", "sim-002"]


@needs_unix_port
def test_the_port_is_exclusive() -> None:
    with VirtualBoard() as board:
        first = serial.Serial(board.port, 115200, exclusive=True)
        try:
            with pytest.raises(serial.SerialException):
                serial.Serial(board.port, 115200, exclusive=True)
        finally:
            first.close()


def test_a_board_runs_in_one_place(tmp_path: Path) -> None:
    """Two boards booting one flash file (the same board at two virtual stations) would be two
    agents writing one filesystem: the second is refused until the first stops."""
    from fleetpin.sim.board import FlashInUse
    from fleetpin.sim.flashfs import mac_text

    flash = tmp_path / "board.img"
    with VirtualBoard(flash=flash) as first:
        with pytest.raises(FlashInUse, match="already running"):
            VirtualBoard(flash=flash).start()
        assert first.mac == mac_text(flash)
    with VirtualBoard(flash=flash) as again:  # stopped: its flash is free
        assert again.mac == first.mac
