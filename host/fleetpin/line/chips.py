"""Chip facts from esptool's own definitions (its CHIP_DEFS), not a copy of them.

esptool is GPL-2.0-or-later and fleetpin runs it only as a separate process, never importing
it, so its licence stays apart from fleetpin's: the table is read once per run by a short
esptool-side process and kept for the rest of it.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys

from fleetpin.errors import FleetpinError

_READ_CHIP_DEFS = (
    "import json\n"
    "from esptool.targets import CHIP_DEFS\n"
    "print(json.dumps({name: chip.IMAGE_CHIP_ID for name, chip in CHIP_DEFS.items()"
    " if chip.IMAGE_CHIP_ID is not None}))\n"
)


@functools.cache
def image_chip_ids() -> dict[str, int]:
    """esptool chip name -> the chip id an ESP-IDF image header carries for it."""
    done = subprocess.run([sys.executable, "-c", _READ_CHIP_DEFS], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise FleetpinError(f"cannot read esptool's chip definitions: {done.stderr.strip()[-300:]}",
                            hint="reinstall fleetpin (it depends on esptool)")
    ids: dict[str, int] = json.loads(done.stdout)
    return ids


def image_chip_id(chip: str) -> int:
    ids = image_chip_ids()
    if chip not in ids:
        raise FleetpinError(f"esptool knows no chip {chip!r}", hint="one of " + ", ".join(sorted(ids)))
    return ids[chip]
