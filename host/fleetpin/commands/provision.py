"""`fleetpin provision`: flash a verified image onto several boards at once, record each."""

from __future__ import annotations

import contextlib
import functools
import getpass
import json
import threading
from pathlib import Path
from typing import Any

import click
from rich.live import Live
from rich.table import Table

from fleetpin import output
from fleetpin.errors import FleetpinError, UsageError
from fleetpin.line.image import LoadedImage, verify_image
from fleetpin.line.provision import (
    RESULT_FAILED,
    RESULT_OK,
    RESULT_SAME,
    Confirm,
    ProvisionOptions,
    Station,
    StationResult,
    agent_confirm,
    provision,
)
from fleetpin.line.registry import DEFAULT_PATH, Registry


def _live_table(stations: list[Station]) -> Table:
    t = output.Table("station", "port", "try", "mac", "phase", "progress", right=("try", "progress"))
    for s in stations:
        t.add(s.name, s.port, str(s.attempt), s.mac or "", s.phase, f"{s.percent:5.1f}%")
    return t.rich_table()


def _agent_cell(r: StationResult) -> str:
    """What the agent said after reset: its id, the port it came back on, its mode."""
    a = r.agent
    if not a:
        return "-"
    where = f" on {a['port']}" if a.get("port") else ""
    return f"{a.get('device_id') or '?'}{where}: {a.get('mode') or '?'}, bundle {str(a.get('bundle_sha256'))[:12]}"


def _summary(results: list[StationResult]) -> output.Table:
    show_agent = any(r.agent for r in results)
    columns = ["station", "port", "mac", "result", "seconds"] + (["agent (after reset)"] if show_agent else []) + ["error"]
    t = output.Table(*columns, right=("seconds",))
    for r in results:
        result = output.styled(r.result, "green" if r.ok else "red")
        t.add(r.station, r.port, r.mac, result, f"{r.ended - r.started:.1f}",
              *([_agent_cell(r)] if show_agent else []), r.error or "")
    return t


@click.command(name="provision")
@click.option("--board", required=True, help="Board name; must be the one the image was built for.")
@click.option("--image", "image_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="Image directory (fleetpin image build).")
@click.option("--port", "-p", "ports", multiple=True, help="Serial port of a station, or NAME=PORT; repeat for each.")
@click.option("--virtual", type=click.IntRange(min=1), default=None, metavar="N",
              help="Instead of --port: N virtual stations (mock ROM bootloader, flash in a file) that boot the agent after flashing.")
@click.option("--sim-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="With --virtual: keep the stations' flash images here (slotN.img; default: a temporary directory).")
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="Stations flashed at once (default: all).")
@click.option("--registry", "registry_path", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_PATH, show_default=True, help="Device registry (SQLite).")
@click.option("--operator", default=None, help="Who runs the line (default: the login name).")
@click.option("--force", is_flag=True, help="Reflash boards that already hold this image.")
@click.option("--no-confirm", is_flag=True, help="Do not wait for the agent to confirm its bundle after reset.")
@click.option("--confirm-timeout", type=float, default=15.0, show_default=True, help="Seconds to wait for the agent.")
@click.option("--retries", type=click.IntRange(min=0), default=3, show_default=True, help="Retries after a transient serial error.")
@click.option("--baud", "-b", type=int, default=None, help="Flashing baud rate (default: the board's max_baud).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--boards-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Directory of board TOML files.")
def provision_cmd(
    board: str,
    image_dir: Path,
    ports: tuple[str, ...],
    virtual: int | None,
    sim_dir: Path | None,
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
    the registry records (by MAC) as provisioned with this image and regions that already
    hold the image's bytes (unless --force), writes and MD5-verifies the firmware and the
    filesystem, reads the MAC, resets; then the agent must answer IDENTIFY with the image's
    bundle digest (skip with --no-confirm). Exit 1 if any station failed.

    \b
    --virtual N runs the same line without hardware: N virtual boards in their ROM bootloader
    (esp32-mock-bootloader), flashed by the real esptool, then reset so each boots the agent
    from the flash esptool wrote and answers IDENTIFY on its new port.
    """
    if virtual is None and not ports:
        raise UsageError("no station given", hint="pass --port for each fixture slot, or --virtual N to simulate N")
    if virtual is not None and ports:
        raise UsageError("--virtual and --port exclude each other", hint="simulate stations or flash real ones, not both")
    if sim_dir is not None and virtual is None:
        raise UsageError("--sim-dir only goes with --virtual", hint="add --virtual N")
    image = verify_image(image_dir, boards_dir)  # never flash an image that does not check out
    if image.board.name != board:
        raise UsageError(f"the image is for {image.board.name}, not {board}", hint="build an image for this board")
    with contextlib.ExitStack() as stack:
        if virtual is not None:
            from fleetpin.sim.station import VirtualStations

            line = stack.enter_context(VirtualStations(virtual, sim_dir, board))
            stations = line.fixture()
            confirm: Confirm | None = None if no_confirm else line.confirm(timeout=confirm_timeout)
        else:
            stations = [Station.parse(p) for p in ports]
            confirm = None if no_confirm else functools.partial(agent_confirm, baud=image.board.default_baud, timeout=confirm_timeout)
        return _run(stations, image, confirm, force, retries, baud, operator, registry_path, jobs, as_json)


def _run(
    stations: list[Station],
    image: LoadedImage,
    confirm: Confirm | None,
    force: bool,
    retries: int,
    baud: int | None,
    operator: str | None,
    registry_path: Path,
    jobs: int | None,
    as_json: bool,
) -> int:
    opts = ProvisionOptions(force=force, confirm=confirm, retries=retries, baud=baud, operator=operator or getpass.getuser())
    reg = Registry(registry_path)
    console = output.console(err=True)
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
        _summary(results).print(output.console())
        counts = {k: sum(r.result == k for r in results) for k in (RESULT_OK, RESULT_SAME, RESULT_FAILED)}
        click.echo(", ".join(f"{n} {k}" for k, n in counts.items()) + f"; recorded in {registry_path}")
    if failed:
        if not as_json:
            raise FleetpinError(f"{len(failed)} station(s) failed", hint="see the error column; fix and rerun those ports")
        return 1
    return 0
