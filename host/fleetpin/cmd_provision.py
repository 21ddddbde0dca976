"""`fleetpin provision`: flash a verified image onto several boards at once, record each."""

from __future__ import annotations

import functools
import getpass
import json
import threading
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from .errors import FleetpinError, UsageError
from .image import verify_image
from .provision import RESULT_FAILED, RESULT_OK, RESULT_SAME, ProvisionOptions, Station, StationResult, agent_confirm, provision
from .registry import DEFAULT_PATH, Registry


def _live_table(stations: list[Station]) -> Table:
    t = Table("station", "port", "try", "mac", "phase", "progress")
    for s in stations:
        t.add_row(s.name, s.port, str(s.attempt), s.mac or "", s.phase, f"{s.percent:5.1f}%")
    return t


def _summary(results: list[StationResult]) -> Table:
    t = Table()
    for col in ("station", "port", "mac", "result", "seconds"):
        t.add_column(col, no_wrap=True)
    t.add_column("error", overflow="fold")
    for r in results:
        style = "green" if r.ok else "red"
        t.add_row(r.station, r.port, r.mac or "-", f"[{style}]{r.result}[/{style}]", f"{r.ended - r.started:.1f}", r.error or "")
    return t


@click.command(name="provision")
@click.option("--board", required=True, help="Board name; must be the one the image was built for.")
@click.option("--image", "image_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="Image directory (fleetpin image build).")
@click.option("--port", "ports", multiple=True, required=True, help="Serial port of a station, or NAME=PORT; repeat for each.")
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="Stations flashed at once (default: all).")
@click.option("--registry", "registry_path", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_PATH, show_default=True, help="Device registry (SQLite).")
@click.option("--operator", default=None, help="Who runs the line (default: the login name).")
@click.option("--force", is_flag=True, help="Reflash boards that already hold this image.")
@click.option("--no-confirm", is_flag=True, help="Do not wait for the agent to confirm its bundle after reset.")
@click.option("--confirm-timeout", type=float, default=15.0, show_default=True, help="Seconds to wait for the agent.")
@click.option("--retries", type=click.IntRange(min=0), default=3, show_default=True, help="Retries after a transient serial error.")
@click.option("--baud", type=int, default=None, help="Flashing baud rate (default: the board's max_baud).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--boards-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Directory of board TOML files.")
def provision_cmd(
    board: str,
    image_dir: Path,
    ports: tuple[str, ...],
    jobs: int | None,
    registry_path: Path,
    operator: str | None,
    force: bool,
    no_confirm: bool,
    confirm_timeout: float,
    retries: int,
    baud: int | None,
    as_json: bool,
    boards_dir: Path | None,
) -> int:
    """Flash the image onto the board on each --port, in parallel, and record every attempt.

    \b
    Per station: esptool connects, refuses another chip or too small a flash, skips a board
    that already holds this image (unless --force), writes and MD5-verifies the firmware
    and the filesystem, reads the MAC, resets; then the agent must answer IDENTIFY with the
    image's bundle digest (skip with --no-confirm). Exit 1 if any station failed.
    """
    image = verify_image(image_dir, boards_dir)  # never flash an image that does not check out
    if image.board.name != board:
        raise UsageError(f"the image is for {image.board.name}, not {board}", hint="build an image for this board")
    stations = [Station.parse(p) for p in ports]
    confirm = None if no_confirm else functools.partial(agent_confirm, baud=image.board.default_baud, timeout=confirm_timeout)
    opts = ProvisionOptions(force=force, confirm=confirm, retries=retries, baud=baud, operator=operator or getpass.getuser())
    reg = Registry(registry_path)
    console = Console(stderr=True)
    if as_json or not console.is_terminal:
        results = provision(stations, image, opts, reg, jobs)
    else:
        lock = threading.Lock()
        with Live(_live_table(stations), console=console, refresh_per_second=8) as live:

            def refresh(station: Station, event: str, detail: dict[str, Any]) -> None:
                with lock:
                    live.update(_live_table(stations))

            results = provision(stations, image, opts, reg, jobs, refresh)
    failed = [r for r in results if not r.ok]
    if as_json:
        click.echo(json.dumps({"image_id": image.image_id, "results": [r.as_json() for r in results]}, indent=2))
    else:
        Console().print(_summary(results))
        counts = {k: sum(r.result == k for r in results) for k in (RESULT_OK, RESULT_SAME, RESULT_FAILED)}
        click.echo(", ".join(f"{n} {k}" for k, n in counts.items()) + f"; recorded in {registry_path}")
    if failed:
        if not as_json:
            raise FleetpinError(f"{len(failed)} station(s) failed", hint="see the error column; fix and rerun those ports")
        return 1
    return 0
