"""Virtual production stations: the real esptool writes each board's flash through the mock ROM
bootloader, then the board is reset and the agent boots from exactly that flash and reports
the bundle it runs. Failures are recorded with their reason while the other stations finish."""

from __future__ import annotations

import hashlib
import json
import random
import struct
import threading
from pathlib import Path
from typing import Any

import pytest
from fakefirmware import BUNDLE, SIGNERS, SMALL_APP_PARTITIONS, make_firmware
from runtimes import needs_unix_port

from fleetpin import cli
from fleetpin.line.boards import MIB, get_board
from fleetpin.line.image import LoadedImage, build_image, verify_image
from fleetpin.line.provision import (
    RESULT_FAILED,
    RESULT_OK,
    RESULT_SAME,
    ProvisionOptions,
    Station,
    agent_confirm,
    provision,
)
from fleetpin.line.registry import Registry
from fleetpin.sim.board import BUNDLE as FS_BUNDLE
from fleetpin.sim.board import VirtualBoard
from fleetpin.sim.flashfs import FlashError, FlashFS, blank_image, board_mac
from fleetpin.sim.station import StationError, VirtualStation, VirtualStations
from pinagent.store import encode_slot

ESP32 = get_board("esp32")


def mac_of(st: VirtualStation) -> str:
    """The base MAC the station's ROM reports: stable per flash file."""
    return ":".join(f"{b:02x}" for b in board_mac(st.flash))


def _image(out: Path, device_dir: Path, flash_mb: int = 4, **fw: Any) -> LoadedImage:
    build_image(ESP32, make_firmware(ESP32.chip, ESP32.firmware_offset, **fw), BUNDLE, SIGNERS, flash_mb * MIB, out, device_dir)
    return verify_image(out)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, device_dir: Path) -> LoadedImage:
    return _image(tmp_path_factory.mktemp("img"), device_dir)


def opts(**kw: Any) -> ProvisionOptions:
    return ProvisionOptions(**({"operator": "tester", "retries": 1, "backoff": 0.05} | kw))


def region(image: LoadedImage, name: str) -> tuple[int, bytes]:
    r = next(r for r in image.regions if r["name"] == name)
    return int(r["offset"]), (image.directory / r["file"]).read_bytes()


@needs_unix_port  # the board boots on the default runtime
def test_several_stations_boot_the_agent_from_what_esptool_wrote(tmp_path: Path, image: LoadedImage) -> None:
    reg = Registry(tmp_path / "reg.sqlite")
    with VirtualStations(3, tmp_path / "line") as line:
        rom_ports = [s.port for s in line]
        results = provision(line.fixture(), image, opts(confirm=line.confirm(timeout=5)), reg)
        assert [r.result for r in results] == [RESULT_OK] * 3, [r.error for r in results]
        assert max(r.started for r in results) < min(r.ended for r in results)  # in parallel
        fw_at, fw = region(image, "firmware")
        for i, (st, r) in enumerate(zip(line, results)):
            assert r.station == f"slot{i + 1}" and r.port == rom_ports[i] and r.mac == mac_of(st)
            assert not st.in_bootloader and st.board is not None and st.agent_port == st.board.port
            # the agent answered on the board's own port, from the flash esptool wrote
            assert r.agent is not None and r.agent["port"] == st.agent_port
            assert r.agent["bundle_sha256"] == image.bundle_sha256 and r.agent["mode"] == "ok"
            assert r.agent["device_id"] == f"sim-slot{i + 1}"  # image build's config has none: from the file name
            assert r.agent["mac"] == r.mac  # the agent says the MAC esptool read: field reports join this row
            assert r.agent["fleet"] == image.manifest["content"]["fleet"]
            assert st.flash.read_bytes()[fw_at : fw_at + len(fw)] == fw
            assert st.board.flash.read_file(FS_BUNDLE) == encode_slot(SIGNERS, BUNDLE)
        rows = reg.attempts()
        assert sorted((a.station, a.result, a.error, a.mac, a.bundle_sha256) for a in rows) == [
            (f"slot{i + 1}", RESULT_OK, None, mac_of(st), image.bundle_sha256) for i, st in enumerate(line)
        ]
        assert len({a.mac for a in rows}) == 3  # the registry tells the boards apart
        # back into the bootloader on a new pty: the registry knows this board (by its MAC) with
        # this image, so nothing is written, not even the filesystem the agent has written to
        # since (its state stays); it is reset and confirmed again
        st = line[0].enter_bootloader()
        [again] = provision([Station("slot1", st.port)], image, opts(confirm=line.confirm(timeout=5)), reg)
        assert again.result == RESULT_SAME and again.mac == mac_of(st), again.error
        assert again.regions == {"firmware.bin": "skipped", "fs.bin": "skipped"}
        assert again.agent is not None and again.agent["device_id"] == "sim-slot1"
        assert reg.attempts()[-1].result == RESULT_SAME
        # unless forced: then every region is written again
        st = line[0].enter_bootloader()
        [forced] = provision([Station("slot1", st.port)], image, opts(force=True, confirm=line.confirm(timeout=5)), reg)
        assert forced.result == RESULT_OK and forced.regions == {"firmware.bin": "written", "fs.bin": "written"}


@needs_unix_port  # the board boots on the default runtime
def test_the_filesystem_is_found_where_the_flashed_partition_table_puts_it(tmp_path: Path, device_dir: Path) -> None:
    img = _image(tmp_path / "img", device_dir, partitions=SMALL_APP_PARTITIONS)
    fs_at, fs_bin = region(img, "filesystem")
    assert fs_at == 0x180000 != ESP32.fs_start
    with VirtualStations(1, tmp_path / "line") as line:
        [r] = provision(line.fixture(), img, opts(confirm=line.confirm(timeout=5)), None)
        assert r.result == RESULT_OK, r.error
        assert r.agent is not None and r.agent["bundle_sha256"] == img.bundle_sha256
        assert line[0].board is not None and line[0].board.flash.fs_offset == 0x180000


def test_flash_without_a_table_falls_back_and_a_broken_table_does_not_boot(tmp_path: Path) -> None:
    blank = tmp_path / "blank.img"
    with FlashFS.open_image(blank, ESP32) as fs:
        assert fs.fs_offset == ESP32.fs_start and fs.formatted
    broken = tmp_path / "broken.img"
    blank_image(broken, 4 * MIB)
    with open(broken, "r+b") as f:
        f.seek(ESP32.partition_table_offset)
        f.write(b"\xaa\x50" + b"\x00" * 30 + b"\xeb\xeb" + b"\x00" * 30)  # one entry, MD5 wrong
    with pytest.raises(FlashError, match="no valid partition table at 0x8000.*MD5.*would not boot"):
        FlashFS.open_image(broken, ESP32)


@needs_unix_port  # the board boots on the default runtime
def test_failures_are_recorded_with_their_reason_while_the_others_finish(tmp_path: Path, device_dir: Path) -> None:
    # 1 MB of random app bytes: incompressible, so the write lasts long enough to pull the cable
    slow = _image(tmp_path / "slow", device_dir, app_payload=random.Random(1).randbytes(1024 * 1024))
    reg = Registry(tmp_path / "reg.sqlite")
    with VirtualStations(4, tmp_path / "line", chips=[None, "esp32c3"]) as line:
        good, wrong, unplugged, silent = line
        names = {s.port: n for n, s in zip(("good", "wrong", "unplugged", "silent"), line)}
        fs_at, _ = region(slow, "filesystem")

        def events(station: Station, event: str, detail: dict[str, Any]) -> None:
            if station.port == unplugged.port and event == "progress" and detail["region"] == "firmware.bin":
                unplugged.unplug()  # pulled out mid-write
            if station.port == silent.port and event == "confirm":
                with open(silent.flash, "r+b") as f:  # the filesystem is damaged after esptool verified it
                    f.seek(fs_at)
                    f.write(b"\x00" * 2 * 4096)  # both superblocks (littlefs keeps a pair)

        stations = [Station(names[s.port], s.port) for s in line]
        results = {r.station: r for r in provision(stations, slow, opts(confirm=line.confirm(timeout=5)), reg, events=events)}
        assert results["good"].result == RESULT_OK and results["good"].agent is not None
        assert results["good"].agent["bundle_sha256"] == slow.bundle_sha256
        assert results["wrong"].error == "wrong chip: the board is an ESP32-C3, the image is for ESP32 (esp32)"
        assert results["wrong"].attempts == 1 and wrong.in_bootloader  # refused, never reset
        assert (results["unplugged"].error or "").startswith("serial link lost while writing firmware.bin")
        # retried, and the port stayed gone (its name may even have been reused by a new pty by then)
        assert "then after" in (results["unplugged"].error or "") and results["unplugged"].attempts >= 2
        assert unplugged.board is None  # nothing to boot: no agent was ever asked
        err = results["silent"].error or ""
        assert err.startswith("agent check failed: agent not answering: the board does not boot from its flash")
        assert "does not mount and is not blank" in err and silent.board is None
        assert all(results[n].result == RESULT_FAILED for n in ("wrong", "unplugged", "silent"))
    rows = {a.station: a for a in reg.attempts()}
    assert {s: (a.result, a.error) for s, a in rows.items()} == {s: (r.result, r.error) for s, r in results.items()}
    assert rows["good"].mac == mac_of(good) and rows["wrong"].mac is None  # refused before the MAC is read


def test_flash_too_small_is_refused_before_writing(tmp_path: Path, device_dir: Path) -> None:
    """The mock always has a 4 MB chip (it cannot emulate a smaller one): an 8 MB image is what
    does not fit. esptool refuses before writing; nothing is reset or confirmed."""
    big = _image(tmp_path / "8mb", device_dir, flash_mb=8)
    reg = Registry(tmp_path / "r.sqlite")
    with VirtualStation(tmp_path / "s.img") as st:
        asked: list[str] = []
        [r] = provision([Station("s", st.port)], big, opts(confirm=lambda p, d: asked.append(p)), reg)
        assert r.result == RESULT_FAILED and r.error == "flash too small: the board has 4MB, the image needs 8MB"
        assert r.regions == {} and asked == [] and st.in_bootloader
        assert set(st.flash.read_bytes()) == {0xFF}  # still an erased chip
    [row] = reg.attempts()
    assert (row.result, row.error) == (RESULT_FAILED, r.error)


def test_the_rom_keeps_its_stub_session_after_a_region_is_finished(tmp_path: Path) -> None:
    """Issue 18: esptool ends every region with FLASH_DEFL_END; the mock used to drop its session
    3 s after the first one, mid-run, and answer the last region's MD5 as the ROM does (32 hex
    chars) to an esptool in stub mode (which reads 16 bytes): "Failed to calculate md5sum".
    Over raw SLIP: start the stub, end a region, stay past the mock's 3 s, ask an MD5."""
    import time

    import serial
    from esp32_mock_bootloader import protocol, server
    from esp32_mock_bootloader.protocol_client import make_command, parse_response, slip_decode_frames

    def ask(ser: serial.Serial, cmd: int, data: bytes) -> bytes:
        ser.reset_input_buffer()
        ser.write(make_command(cmd, data))
        raw, deadline = b"", time.monotonic() + 5
        while time.monotonic() < deadline:
            raw += ser.read(4096)
            answers = [f for f in slip_decode_frames(raw) if len(f) >= 8 and f[1] == cmd]
            if answers:
                return parse_response(answers[0])[4]
        raise AssertionError(f"no answer to command {cmd:#x}")

    with VirtualStation(tmp_path / "s.img") as st:
        ser = serial.serial_for_url(st.port, baudrate=115200, timeout=0.05)
        try:
            ask(ser, protocol.CMD_MEM_END, struct.pack("<II", 0, 0x4008_0000))  # run the "stub"
            assert ask(ser, protocol.CMD_FLASH_DEFL_END, struct.pack("<I", 1)) == b"\0\0"  # stay in the loader
            time.sleep(server._FLASH_END_IDLE_SEC + 0.5)  # the mock's own default (3 s) in this process
            md5 = ask(ser, protocol.CMD_SPI_FLASH_MD5, struct.pack("<IIII", 0, 4096, 0, 0))
        finally:
            ser.close()
    assert md5 == hashlib.md5(b"\xff" * 4096).digest() + b"\0\0"  # the stub's 16 bytes, not 32 hex chars


@needs_unix_port  # the board boots on the default runtime
def test_a_station_reset_twice_keeps_its_identity(tmp_path: Path, image: LoadedImage) -> None:
    with VirtualStation(tmp_path / "bench7.img") as st:
        [r] = provision([Station("s", st.port)], image, opts(), None)
        assert r.result == RESULT_OK
        first = st.reset_into_agent()
        assert first.device_id == "sim-bench7"
        again = st.reset_into_agent()  # the first board is stopped, the id is in config.json now
        assert again is st.board and again.device_id == "sim-bench7"
        named = st.reset_into_agent(device_id="line-7")
        assert named.device_id == "line-7"


@needs_unix_port  # the board boots on the default runtime
def test_cli_virtual_stations(tmp_path: Path, image: LoadedImage, capsys: pytest.CaptureFixture[str]) -> None:
    reg = tmp_path / "reg.sqlite"
    base = ["provision", "--board", "esp32", "--image", str(image.directory), "--registry", str(reg), "--operator", "ana"]
    assert cli.main([*base, "--virtual", "2", "--sim-dir", str(tmp_path / "line"), "--json", "--confirm-timeout", "5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(r["station"], r["result"], r["agent"]["device_id"], r["agent"]["bundle_sha256"]) for r in out["results"]] == [
        (f"slot{i}", RESULT_OK, f"sim-slot{i}", image.bundle_sha256) for i in (1, 2)
    ]
    assert sorted(p.name for p in (tmp_path / "line").iterdir()) == ["slot1.img", "slot2.img"]
    # the readable table the demo prints: every column whole, even into a pipe
    assert cli.main([*base, "--virtual", "1"]) == 0
    text = capsys.readouterr().out
    assert "sim-slot1 on /dev/pts/" in text and f"ok, bundle {image.bundle_sha256[:12]}" in text
    assert "1 provisioned, 0 already-provisioned, 0 failed" in text
    assert len(Registry(reg).attempts()) == 3
    for bad in (["--virtual", "1", "--port", "/dev/null"], ["--sim-dir", str(tmp_path)], []):
        assert cli.main([*base, *bad]) == 2


def test_station_start_failure_is_reported(tmp_path: Path) -> None:
    st = VirtualStation(tmp_path / "s.img", chip="esp8266x")  # a chip the mock does not know
    with pytest.raises(StationError, match="mock ROM bootloader did not start"):
        st.start()
    st.stop()


@needs_unix_port  # the board boots on the default runtime
def test_a_virtual_board_boots_the_flash_a_station_wrote(tmp_path: Path, image: LoadedImage) -> None:
    """The flash file outlives the station: `fleetpin sim board --flash` (VirtualBoard) boots it."""
    flash = tmp_path / "kept.img"
    with VirtualStation(flash) as st:
        assert provision([Station("s", st.port)], image, opts(), None)[0].result == RESULT_OK
    with VirtualBoard(flash=flash, device_id="kept") as board:
        info = agent_confirm(board.port, image.bundle_sha256, timeout=5)
        assert info["device_id"] == "kept"


def test_a_retry_never_flashes_another_board_that_took_the_port_name(tmp_path: Path, device_dir: Path) -> None:
    """Board A is pulled out mid-write and board B appears under the same port name (a USB
    port name reused): the retry reads B's MAC, refuses, and B's flash is left untouched."""
    slow = _image(tmp_path / "slow", device_dir, app_payload=random.Random(2).randbytes(1024 * 1024))
    port = tmp_path / "ttyUSB0"  # the fixture's port name, pointing at whichever board is plugged in
    with VirtualStations(2, tmp_path / "line") as line:
        a, b = line
        port.symlink_to(a.port)

        def events(station: Station, event: str, detail: dict[str, Any]) -> None:
            if event == "progress" and detail["region"] == "firmware.bin" and a.in_bootloader:
                a.unplug()
                port.unlink()
                port.symlink_to(b.port)

        [r] = provision([Station("slot", str(port))], slow, opts(retries=2, backoff=0.1), Registry(tmp_path / "r.sqlite"), events=events)
        assert r.result == RESULT_FAILED
        expected = ":".join("%02x" % x for x in board_mac(a.flash))
        assert r.mac == expected
        assert "another board (MAC " + ":".join("%02x" % x for x in board_mac(b.flash)) in (r.error or "")
        assert "not flashed" in (r.error or "") and r.attempts == 2
        fw_at = get_board("esp32").firmware_offset
        with open(b.flash, "rb") as f:
            f.seek(fw_at)
            assert f.read(4096) == b"\xff" * 4096  # B was never written


def test_a_full_line_on_one_busy_machine(tmp_path: Path, image: LoadedImage) -> None:
    """Issue 18: one station of 16 boards and 8 stations of 2, all at once, while a CPU hog runs
    on every core: every board is provisioned and confirmed by its agent (32 of 32)."""
    import os
    import subprocess
    import sys

    hog = "import time\nend = time.monotonic() + 240\nwhile time.monotonic() < end:\n    pass\n"
    hogs = [subprocess.Popen([sys.executable, "-c", hog]) for _ in range(os.cpu_count() or 2)]
    runs: list[tuple[int, subprocess.Popen[str]]] = []
    try:
        for i, boards in enumerate([16] + [2] * 8):
            argv = [sys.executable, "-m", "fleetpin", "provision", "--board", "esp32", "--image", str(image.directory),
                    "--virtual", str(boards), "--registry", str(tmp_path / f"station{i}.sqlite"), "--json"]
            runs.append((boards, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        outcomes = []
        for boards, proc in runs:
            out, err = proc.communicate(timeout=600)
            results = json.loads(out)["results"] if out.strip() else []
            assert len(results) == boards, err
            outcomes += [(r["result"], (r.get("agent") or {}).get("bundle_sha256"), r["error"]) for r in results]
    finally:
        for h in hogs:
            h.kill()
        for _, proc in runs:
            if proc.poll() is None:
                proc.kill()
    bad = [o for o in outcomes if o[0] != RESULT_OK or o[1] != image.bundle_sha256]
    assert len(outcomes) == 32 and bad == [], bad


def test_two_roms_started_on_one_new_board_erase_it_once(tmp_path: Path) -> None:
    """Two stations offered the same new board start their ROMs on one flash file at once: it
    is created whole (4 MB of 0xFF), never extended twice (they made 6 and 8 MB files that the
    agent check refused: "6291456 bytes is not a flash size of esp32")."""
    from fleetpin.sim.rom import FLASH_SIZE, FileFlash

    for trial in range(5):
        path = tmp_path / f"board{trial}.img"
        start = threading.Barrier(4)

        def rom(path: Path = path, start: threading.Barrier = start) -> None:
            start.wait()
            FileFlash(path)

        roms = [threading.Thread(target=rom) for _ in range(4)]
        for t in roms:
            t.start()
        for t in roms:
            t.join()
        assert path.stat().st_size == FLASH_SIZE and path.read_bytes() == b"\xff" * FLASH_SIZE, trial
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"board{i}.img" for i in range(5)]  # no temp left
