"""`fleetpin demo`: the whole story on a virtual fleet (fleetpin.sim.demo)."""

from __future__ import annotations

from pathlib import Path

import click

from fleetpin.errors import FleetpinError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("fleetpin-demo"),
              show_default=True, help="Where the demo writes its keys, bundles, images and receipts "
                                      "(a previous demo's folder is replaced; any other non-empty folder is refused).")
def demo(out_dir: Path) -> None:
    """Run the whole fleetpin story on a virtual fleet, no hardware needed.

    \b
    Production line through esptool and the ROM emulator, field verdicts against loopback TLS
    servers, a rogue CA, a lost key, a signed field update with receipts, and rotation drills.
    Every step is a real fleetpin command, printed as you would type it. Needs fleetpin[sim].
    """
    from fleetpin.sim import demo as story  # the simulation is an extra: load it only here

    if story.run(out_dir) != 0:
        raise FleetpinError("the demo did not run to the end (see above)")


