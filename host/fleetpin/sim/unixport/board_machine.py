# `machine` on the virtual board: what the agent uses of the ESP32's machine module, the rest is
# the unix port's own. unique_id() is the board's base MAC (6 bytes, as on the ESP32); reset()
# never returns: it asks the host (the board's power supply) to power-cycle the process.
import sys

import machine as _machine

_mac = b"\x00" * 6


def init(mac):
    global _mac
    _mac = mac


def unique_id():
    return _mac


def reset():
    sys.stderr.write("fleetpin-board: reset\n")
    while True:  # the host kills this process; nothing after reset() may run
        try:
            _machine.idle()
        except BaseException:  # a Ctrl-C while waiting: still no way back
            pass


def __getattr__(name):
    return getattr(_machine, name)
