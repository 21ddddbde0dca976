"""Which device runtimes a test may need, and what happens where one is missing."""

from __future__ import annotations

import pytest

from fleetpin.errors import FleetpinError
from fleetpin.vm import unix


def require_micropython() -> None:
    """Real MicroPython (the unix port): a test that needs it skips with one line where its wheel
    does not exist for the platform, and fails where it does (Linux x86_64, CI) but is missing."""
    try:
        unix.executable()
    except FleetpinError as e:
        if unix.wheel_exists_here():
            pytest.fail(f"real MicroPython should be installed on this platform: {e} ({e.hint})")
        pytest.skip(f"no real MicroPython for this platform: {e}")
