"""`fleetpin boards`: the board definitions the production line knows."""

from __future__ import annotations

import json
from pathlib import Path

import click

from fleetpin import output
from fleetpin.line.boards import load_boards


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the boards as JSON.")
@click.option(
    "--boards-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory of board TOML files (default: $FLEETPIN_BOARDS or the repo's boards/).",
)
def boards(as_json: bool, boards_dir: Path | None) -> None:
    """List the boards: chip, firmware offset, flash sizes, where the filesystem starts, arch."""
    all_boards = load_boards(boards_dir)
    if as_json:
        click.echo(json.dumps([b.as_json() for b in all_boards.values()], indent=2))
        return
    t = output.Table("board", "chip", "firmware at", "flash MiB", "fs start", "mpy arch", "baud", "description")
    for b in all_boards.values():
        t.add(
            b.name,
            b.chip,
            f"0x{b.firmware_offset:x}",
            ", ".join(str(s) for s in b.flash_sizes),
            f"0x{b.fs_start:x}",
            b.mpy_arch,
            f"{b.default_baud} / {b.max_baud}",
            b.description,
        )
    t.print(output.console())
