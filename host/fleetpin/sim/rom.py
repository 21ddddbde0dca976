"""The ROM bootloader of a virtual board: esp32-mock-bootloader on a pty, with its SPI flash
kept in a file (the same flash image a VirtualBoard boots the agent from).

esp32-mock-bootloader keeps its 4 MiB flash in process memory; this entry point swaps in a
flash backed by a memory-mapped file before the mock starts, so what esptool writes survives
the "reset" into the agent:

    python -m fleetpin.sim.rom --flash dev.img --chip esp32 --port-file p.txt

It runs until killed (unplugging the board). The mock is Apache-2.0 and runs in its own
process, like esptool itself.
"""

from __future__ import annotations

import argparse
import math
import mmap
import os
import sys
import threading
from pathlib import Path

from esp32_mock_bootloader import protocol, registers, server
from esp32_mock_bootloader.cli import main as mock_main

from fleetpin.sim.flashfs import board_mac

FLASH_SIZE = protocol.FLASH_MOCK_SIZE

# The mock ends its client session (and forgets the flasher stub: its next answers are the
# ROM's) once this long has passed since the FIRST FLASH_END/FLASH_DEFL_END of the session,
# even while esptool is still talking: esptool sends FLASH_DEFL_END after every region it
# writes, so a session whose later regions and their MD5 check take longer than 3 s (a 2 MB
# filesystem on a busy host) gets its last MD5 answered in the ROM's 32-hex-char format while
# esptool expects the stub's 16 bytes, and esptool fails with "Failed to calculate md5sum
# (result was <hex digits 16-17 of the digest>)" (issue 18). Never end it: the virtual board
# stays in the stub, as a real board does after esptool's --after hard-reset on a port with no
# reset lines (esptool finds the running stub on its next connect); the station emulates its
# resets itself by restarting this process (VirtualStation.reset_into_agent, enter_bootloader).
MOCK_SESSION_END_AFTER_FLASH_END = math.inf


class FileFlash(server.FlashImage):
    """The mock's flash, but every byte lives in a shared memory map of `path`."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        _create_erased(path)
        self._file = open(path, "r+b")
        self.data = mmap.mmap(self._file.fileno(), FLASH_SIZE)  # type: ignore[assignment]


def _create_erased(path: Path) -> None:
    """A new board's flash: FLASH_SIZE bytes of 0xFF, made whole beside it and linked into place,
    so two ROMs started on one new board at once (two stations offered the same board) cannot
    both extend it (appending at once, they made 6 and 8 MB files that no board boots)."""
    if path.exists():
        if path.stat().st_size < FLASH_SIZE:  # a short image from elsewhere: erased to full size
            with open(path, "ab") as f:
                f.write(b"\xff" * (FLASH_SIZE - f.tell()))
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.new")
    try:
        tmp.write_bytes(b"\xff" * FLASH_SIZE)
        try:
            os.link(tmp, path)  # never replaces: if another ROM was first, its flash is the board's
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleetpin.sim.rom", description=__doc__.splitlines()[0])
    parser.add_argument("--flash", required=True, type=Path, help="flash image file (created erased if missing)")
    parser.add_argument("--chip", default="esp32")
    parser.add_argument("--port-file", required=True, help="where to write the pty path")
    args = parser.parse_args(argv)
    server._persistent_flash = FileFlash(args.flash)
    server._FLASH_END_IDLE_SEC = MOCK_SESSION_END_AFTER_FLASH_END  # read by handle_client's loop
    mac = board_mac(args.flash)
    registers.mac_bytes_for_chip = lambda chip: mac  # read through rom_profile (cached per chip)
    registers.rom_profile.cache_clear()
    return mock_main(["run", "--pty", "--chip", args.chip, "--port-file", args.port_file])


if __name__ == "__main__":
    sys.exit(main())
