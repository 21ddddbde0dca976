"""Builds a fake but well-formed MicroPython `firmware.bin` for tests: an ESP-IDF bootloader
image, a real ESP-IDF binary partition table at flash 0x8000, and an app image in the factory
partition, laid out as MicroPython's combined image is (file offset = flash offset - the
board's firmware offset). The images carry no real code, but their headers, checksums and
appended SHA-256 are what esptool's `image-info` accepts, so esptool treats them as it would
a real build.

    make_firmware(chip="esp32", firmware_offset=0x1000) -> bytes
    MockBoard("esp32"): a mock ROM bootloader on a pty to flash it onto, with the real esptool
    (its flash lives in its process; fleetpin.sim.station.VirtualStation keeps it in a file and
    then boots the agent from it)
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fleetpin.sim.firmware import (  # noqa: F401  (the builder lives in the package: the demo uses it too)
    MICROPYTHON_PARTITIONS,
    SMALL_APP_PARTITIONS,
    esp_image,
    make_firmware,
    partition_table,
)

# What an image carries besides the firmware: the test vectors' signed bundle and signer set.
_VECTORS = Path(__file__).resolve().parent / "vectors" / "bundle"
BUNDLE = (_VECTORS / "good.bin").read_bytes()
SIGNERS = (_VECTORS / "signers_prod.json").read_bytes()


# The raw mock, less its session timer that breaks long esptool runs on a busy host (issue 18;
# fleetpin.sim.rom explains it): the same override the virtual stations apply. Its first argument
# is the board's base MAC (the mock would give every board of a chip the same one).
_MOCK_WITHOUT_SESSION_TIMER = (
    "import sys\n"
    "from esp32_mock_bootloader import registers, server\n"
    "from esp32_mock_bootloader.cli import main\n"
    "from fleetpin.sim.rom import MOCK_SESSION_END_AFTER_FLASH_END\n"
    "server._FLASH_END_IDLE_SEC = MOCK_SESSION_END_AFTER_FLASH_END\n"
    "mac = tuple(bytes.fromhex(sys.argv[1].replace(':', '')))\n"
    "registers.mac_bytes_for_chip = lambda chip: mac\n"
    "registers.rom_profile.cache_clear()\n"
    "sys.exit(main(sys.argv[2:]))\n"
)
_macs = itertools.count(1)


class MockBoard:
    """esp32-mock-bootloader (PyPI) emulating one board's ROM bootloader on a fresh pty, in its
    own process (so a test can "unplug" it by killing that process). Its flash is 4 MiB, kept in
    the process's memory across esptool sessions; its base MAC is `mac`, by default one of its
    own (24:0a:c4:fe + this process's id and a counter), as real boards have.

        with MockBoard("esp32") as board: ... board.port ... board.mac ...
    """

    def __init__(self, chip: str = "esp32", mac: str | None = None) -> None:
        self.chip = chip
        n = next(_macs)
        self.mac = mac or f"24:0a:c4:fe:{os.getpid() % 256:02x}:{n % 256:02x}"
        self.port = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> MockBoard:
        with tempfile.TemporaryDirectory() as tmp:
            port_file = Path(tmp) / "port"
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _MOCK_WITHOUT_SESSION_TIMER, self.mac, "run", "--pty", "--chip", self.chip,
                 "--port-file", str(port_file)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if port_file.exists() and port_file.read_text().strip():
                    self.port = port_file.read_text().strip()
                    return self
                if self.proc.poll() is not None:
                    break
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("esp32-mock-bootloader did not start")

    def stop(self) -> None:
        """Unplugs the board: kills the mock (its pty disappears)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> MockBoard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
