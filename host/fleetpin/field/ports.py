"""Finding the board's serial port: `-p/--port`, else $FLEETPIN_PORT, else the one USB serial
device whose USB bridge is one ESP32 boards carry (the VID:PID pairs esptool and mpremote
know). `fleetpin devices` lists the candidates, like `mpremote devs`.

    choose_port(None)      -> "/dev/ttyUSB0"  (or UsageError saying what to pass)
    candidates()           -> [PortInfo, ...] every serial port pyserial sees, ESP32-style first
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from fleetpin.errors import UsageError

ENV_PORT = "FLEETPIN_PORT"

# USB bridges and native USB of ESP32 boards: (vid, pid) -> what it is.
ESP32_USB: dict[tuple[int, int], str] = {
    (0x10C4, 0xEA60): "CP210x",
    (0x10C4, 0xEA70): "CP2105",
    (0x1A86, 0x7523): "CH340",
    (0x1A86, 0x5523): "CH341",
    (0x1A86, 0x55D4): "CH9102",
    (0x1A86, 0x55D3): "CH343",
    (0x0403, 0x6001): "FTDI FT232R",
    (0x0403, 0x6010): "FTDI FT2232",
    (0x0403, 0x6014): "FTDI FT232H",
    (0x0403, 0x6015): "FTDI FT-X",
    (0x303A, 0x1001): "Espressif USB-JTAG/serial",
    (0x303A, 0x0002): "Espressif USB CDC (ESP32-S2)",
    (0x303A, 0x4001): "Espressif USB CDC (MicroPython)",
}


@dataclass(frozen=True)
class PortInfo:
    device: str
    vid: int | None
    pid: int | None
    serial_number: str | None
    description: str

    @property
    def usb_id(self) -> str:
        return f"{self.vid:04x}:{self.pid:04x}" if self.vid is not None and self.pid is not None else "-"

    @property
    def bridge(self) -> str | None:
        """The known ESP32 USB bridge this port is, or None."""
        if self.vid is None or self.pid is None:
            return None
        return ESP32_USB.get((self.vid, self.pid))


def candidates() -> list[PortInfo]:
    """Every serial port pyserial lists, ESP32-style USB bridges first, then by name."""
    from serial.tools import list_ports

    out = [PortInfo(p.device, p.vid, p.pid, p.serial_number, p.description or "") for p in list_ports.comports()]
    return sorted(out, key=lambda p: (p.bridge is None, p.device))


def choose_port(port: str | None, found: list[PortInfo] | None = None) -> str:
    """The port to use: the one given, else $FLEETPIN_PORT, else the only ESP32-style USB serial
    device. UsageError (exit 2) when none or several could be meant, naming what to pass."""
    if port:
        return port
    env = os.environ.get(ENV_PORT)
    if env:
        return env
    boards = [p for p in (candidates() if found is None else found) if p.bridge is not None]
    if len(boards) == 1:
        return boards[0].device
    if not boards:
        raise UsageError("no board found: no USB serial device of a known ESP32 USB bridge is connected",
                         hint=f"plug the board in, or pass -p PORT (or set {ENV_PORT}); `fleetpin devices` lists the ports")
    names = ", ".join(f"{p.device} ({p.bridge}, {p.serial_number or 'no serial'})" for p in boards)
    raise UsageError(f"{len(boards)} boards found: {names}",
                     hint=f"pass -p PORT (or set {ENV_PORT}) to say which one")
