"""Virtual production stations: a board in its ROM bootloader on a fixture, flashed by the real
esptool, then reset into the agent that boots from the flash esptool wrote.

    with VirtualStation(Path("slot1.img")) as st:
        provision([Station("slot1", st.port)], image, ProvisionOptions(confirm=None), registry)
        board = st.reset_into_agent()     # hard reset out of the bootloader: a VirtualBoard
        board.port                        # a NEW pty: a USB board's port name changes on reset

    with VirtualStations(4, dir) as line:   # several at once; line.confirm() is provision's
        provision(line.fixture(), image, ProvisionOptions(confirm=line.confirm()), registry)

The bootloader is fleetpin.sim.rom (esp32-mock-bootloader with its SPI flash memory-mapped from
the flash file) in its own process: unplug() kills it, as pulling the cable would. Its flash is
4 MiB and it reports a 4 MB flash chip whatever the board file allows, so an image built for a
bigger flash is refused by esptool ("flash too small"); a smaller chip cannot be emulated.
Each station reports a base MAC derived from its flash file (sim.flashfs.board_mac; its agent reports the same one), so the
registry tells them apart; a board whose config.json (written by `fleetpin image build`) has
no device_id gets a stable one from the flash file's name: slot1.img -> "sim-slot1".
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fleetpin.errors import FleetpinError
from fleetpin.line.boards import get_board
from fleetpin.line.provision import Confirm, ConfirmFailed, Station, agent_confirm
from fleetpin.sim.board import FlashInUse, VirtualBoard
from fleetpin.sim.flashfs import FlashError

ROM_START_TIMEOUT = 60.0  # seconds; returns as soon as the ROM is up (a loaded machine starts Python slowly)


class StationError(FleetpinError):
    """A virtual station could not be started or reset."""


class VirtualStation:
    """One fixture slot with a virtual board in it (a context manager).

    `.port` is the ROM bootloader's pty (what `fleetpin provision --port` takes); after
    `reset_into_agent()` the board answers on `.agent_port`, a different pty."""

    def __init__(self, flash: str | Path, board: str = "esp32", chip: str | None = None, name: str | None = None) -> None:
        self.flash = Path(flash)
        self.board_name = board
        self.chip = chip or get_board(board).chip
        self.name = name or self.flash.stem
        self.port = ""  # the ROM's pty while it runs (stale after unplug, like a vanished tty)
        self.board: VirtualBoard | None = None
        self._rom: subprocess.Popen[bytes] | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="fleetpin-station-")
        self._lock = threading.Lock()

    # ---- the ROM bootloader

    def start(self) -> VirtualStation:
        """Powers the board up in its ROM bootloader (download mode) and waits for its pty."""
        self._launch_rom()
        self._await_rom()
        return self

    def _launch_rom(self) -> None:
        self.flash.parent.mkdir(parents=True, exist_ok=True)
        port_file = Path(self._tmp.name) / "port"
        port_file.unlink(missing_ok=True)
        log = open(Path(self._tmp.name) / "rom.log", "wb")
        with log:  # the child keeps its own descriptor
            self._rom = subprocess.Popen(
                [sys.executable, "-m", "fleetpin.sim.rom", "--flash", str(self.flash), "--chip", self.chip, "--port-file", str(port_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def _await_rom(self) -> None:
        assert self._rom is not None
        port_file = Path(self._tmp.name) / "port"
        deadline = time.monotonic() + ROM_START_TIMEOUT
        while time.monotonic() < deadline:
            text = port_file.read_text().strip() if port_file.exists() else ""
            if text:
                self.port = text
                return
            if self._rom.poll() is not None:
                break
            time.sleep(0.01)
        self._kill_rom()
        log = (Path(self._tmp.name) / "rom.log").read_text(errors="replace").strip().splitlines()
        raise StationError(
            f"station {self.name}: the mock ROM bootloader did not start ({log[-1] if log else 'no output'})",
            hint="check that esp32-mock-bootloader is installed (pip install -e '.[dev]')",
        )

    def _kill_rom(self) -> None:
        rom, self._rom = self._rom, None
        if rom is not None and rom.poll() is None:
            rom.kill()
        if rom is not None:
            rom.wait()

    @property
    def in_bootloader(self) -> bool:
        return self._rom is not None and self._rom.poll() is None

    # ---- the agent

    def reset_into_agent(self, **board_kwargs: Any) -> VirtualBoard:
        """Hard reset out of the bootloader: the ROM process stops (everything esptool wrote is
        in the flash file) and a VirtualBoard boots the agent from that flash. Raises FlashError
        if the flash does not boot (the real board would loop printing warnings, silent on the
        protocol). The board is stopped with the station."""
        with self._lock:
            self._kill_rom()
            self._stop_board()
            board = VirtualBoard(flash=self.flash, board=self.board_name, **board_kwargs)
            self.board = board.start()
            return board

    @property
    def agent_port(self) -> str | None:
        """The running board's pty (None while in the bootloader)."""
        return self.board.port if self.board is not None else None

    def enter_bootloader(self) -> VirtualStation:
        """Back into download mode (BOOT held during reset): the agent stops, the ROM starts on a
        new pty, so the station can be flashed again."""
        with self._lock:
            self._stop_board()
            self._kill_rom()
            return self.start()

    def _stop_board(self) -> None:
        board, self.board = self.board, None
        if board is not None:
            board.stop()

    # ---- the cable

    def unplug(self) -> None:
        """Pulls the cable: the ROM process is killed (its pty disappears), any agent stops."""
        self._kill_rom()
        self._stop_board()

    def stop(self) -> None:
        self.unplug()
        self._tmp.cleanup()

    def __enter__(self) -> VirtualStation:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def station_confirm(stations: Sequence[VirtualStation], *, timeout: float = 10.0, **board_kwargs: Any) -> Confirm:
    """provision()'s confirm step for virtual stations: the station flashed on `port` is reset
    into its agent, which must answer IDENTIFY on its new port with the image's bundle digest.
    Returns the agent's answer plus the port it answered on."""

    def confirm(port: str, digest: str) -> dict[str, Any]:
        station = next((s for s in stations if s.port == port), None)
        if station is None:
            raise ConfirmFailed(f"{port} is not the port of a virtual station")
        try:
            board = station.reset_into_agent(**board_kwargs)
        except FlashInUse as e:  # the same board at two stations (a shared flash file)
            raise ConfirmFailed(f"the board is running at another station: {e}", hint="check it there") from None
        except FlashError as e:
            raise ConfirmFailed(
                f"agent not answering: the board does not boot from its flash ({e})",
                hint="reflash with --force; if it persists, erase the flash first",
            ) from None
        info = agent_confirm(board.port, digest, baud=board.board.default_baud, timeout=timeout)
        return info | {"port": board.port}

    return confirm


class VirtualStations:
    """n virtual stations at once (a context manager), flash files `dir`/slotN.img (a temporary
    directory if dir is None). ROMs start in parallel; chips[i] overrides station i's chip."""

    def __init__(self, n: int, dir: str | Path | None = None, board: str = "esp32", chips: Sequence[str | None] | None = None) -> None:
        self._tmp = None if dir is not None else tempfile.TemporaryDirectory(prefix="fleetpin-line-")
        base = Path(dir if dir is not None else self._tmp.name)  # type: ignore[union-attr]
        chips = list(chips or []) + [None] * n
        self.stations = [VirtualStation(base / f"slot{i + 1}.img", board, chips[i]) for i in range(n)]

    def __enter__(self) -> VirtualStations:
        try:
            for s in self.stations:
                s._launch_rom()
            for s in self.stations:
                s._await_rom()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for s in self.stations:
            with contextlib.suppress(Exception):
                s.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __iter__(self) -> Iterator[VirtualStation]:
        return iter(self.stations)

    def __len__(self) -> int:
        return len(self.stations)

    def __getitem__(self, i: int) -> VirtualStation:
        return self.stations[i]

    def fixture(self) -> list[Station]:
        """provision()'s stations: one per slot, named as the flash files are."""
        return [Station(s.name, s.port) for s in self.stations]

    def confirm(self, *, timeout: float = 10.0, **board_kwargs: Any) -> Confirm:
        return station_confirm(self.stations, timeout=timeout, **board_kwargs)
