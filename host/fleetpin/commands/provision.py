"""`fleetpin provision`: flash a verified image onto several boards at once, record each."""

from __future__ import annotations

import contextlib
import functools
import getpass
import json
import threading
import time
from pathlib import Path
from typing import Any

import click
from rich.live import Live
from rich.table import Table

from fleetpin import output
from fleetpin.errors import FleetpinError, UsageError
from fleetpin.field.transport import printable
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
from fleetpin.line.registry import DEFAULT_LEASE_S, ENV_VAR, URL_HELP, Registry, display_url, refuse_older_bundle


def _live_table(stations: list[Station]) -> Table:
    t = output.Table("station", "port", "try", "mac", "phase", "progress", right=("try", "progress"))
    for s in stations:
        t.add(s.name, s.port, str(s.attempt), s.mac or "", s.phase, f"{s.percent:5.1f}%")
    return t.rich_table()


def _shown(value: Any, limit: int = 64) -> str:
    """Text from a board (untrusted), made printable for a table cell (cells are never markup)."""
    return printable(value, limit)


def _agent_cell(r: StationResult) -> str:
    """What the agent said after reset: its id, the port it came back on, its mode."""
    a = r.agent
    if not a:
        return "-"
    where = f" on {_shown(a['port'])}" if a.get("port") else ""
    return (f"{_shown(a.get('device_id') or '?')}{where}: {_shown(a.get('mode') or '?')}, "
            f"bundle {_shown(a.get('bundle_sha256'), 12)}")


def _summary(results: list[StationResult]) -> output.Table:
    show_agent = any(r.agent for r in results)
    columns = ["station", "port", "mac", "result", "seconds"] + (["agent (after reset)"] if show_agent else []) + ["error"]
    t = output.Table(*columns, right=("seconds",))
    for r in results:
        result = output.styled(r.result, "green" if r.ok else "red")
        t.add(r.station, r.port, _shown(r.mac or "-"), result, f"{r.ended - r.started:.1f}",
              *([_agent_cell(r)] if show_agent else []), _shown(r.error or "", 400))
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
@click.option("--registry", "registry_url", envvar=ENV_VAR, default=None, metavar="URL", help=URL_HELP)
@click.option("--claim-lease", type=click.FloatRange(min=3), default=DEFAULT_LEASE_S, show_default=True, metavar="SECONDS",
              help="A station sharing the registry may take over a board this station claimed once it has been silent this long (killed, or cut off).")
@click.option("--operator", default=None, help="Who runs the line (default: the login name).")
@click.option("--force", is_flag=True, help="Reflash boards that already hold this image.")
@click.option("--allow-older-bundle", is_flag=True,
              help="Provision even if the registry has seen a newer bundle for the image's fleet.")
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
    registry_url: str | None,
    claim_lease: float,
    operator: str | None,
    force: bool,
    allow_older_bundle: bool,
    no_confirm: bool,
    confirm_timeout: float,
    retries: int,
    baud: int | None,
    as_json: bool,
    boards_dir: Path | None,
) -> int:
    """Flash the image onto the board on each --port, in parallel, and record every attempt.

    \b
    Per station: esptool reads the board's MAC and the station claims the board in the
    registry (stations sharing one never both write a board); esptool refuses another chip or
    too small a flash, skips a board the registry records (by MAC) as confirmed with this image,
    at any station, and regions that already hold the image's bytes (unless --force), writes
    and MD5-verifies the firmware and the filesystem, resets; then the agent must answer
    IDENTIFY with the image's bundle digest (skip with --no-confirm). Exit 1 if any station
    failed, or found its board being written at another station.

    \b
    --virtual N runs the same line without hardware: N virtual boards in their ROM bootloader
    (esp32-mock-bootloader), flashed by the real esptool, then reset so each boots the agent
    from the flash esptool wrote and answers IDENTIFY on its new port.

    \b
    The registry keeps the bundles boards were provisioned with, per fleet: an image whose
    bundle is older than the newest of its fleet is refused before any board is touched
    (unless --allow-older-bundle), since a board re-imaged with it would accept every bundle
    since, retired ones included.
    """
    if virtual is None and not ports:
        raise UsageError("no station given", hint="pass --port for each fixture slot, or --virtual N to simulate N")
    if virtual is not None and ports:
        raise UsageError("--virtual and --port exclude each other", hint="simulate stations or flash real ones, not both")
    if sim_dir is not None and virtual is None:
        raise UsageError("--sim-dir only goes with --virtual", hint="add --virtual N")
    with contextlib.ExitStack() as stack:
        reg = stack.enter_context(Registry(registry_url))  # first: a registry this station cannot use stops it here
        image = verify_image(image_dir, boards_dir)  # never flash an image that does not check out
        if image.board.name != board:
            raise UsageError(f"the image is for {image.board.name}, not {board}", hint="build an image for this board")
        if not allow_older_bundle and image.bundle_version is not None:
            refuse_older_bundle(reg, image.fleet, image.bundle_version, f"image {image_dir}")
        if virtual is not None:
            from fleetpin.sim.station import VirtualStations

            line = stack.enter_context(VirtualStations(virtual, sim_dir, board))
            stations = line.fixture()
            confirm: Confirm | None = None if no_confirm else line.confirm(timeout=confirm_timeout)
        else:
            stations = [Station.parse(p) for p in ports]
            confirm = None if no_confirm else functools.partial(agent_confirm, baud=image.board.default_baud, timeout=confirm_timeout)
        opts = ProvisionOptions(force=force, confirm=confirm, retries=retries, baud=baud, operator=operator or getpass.getuser(),
                                lease=claim_lease)
        return _run(stations, image, opts, reg, jobs, as_json)


def _run(stations: list[Station], image: LoadedImage, opts: ProvisionOptions, reg: Registry, jobs: int | None, as_json: bool) -> int:
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
    if any(r.ok for r in results) and image.bundle_version is not None:
        reg.note_bundle(image.fleet, image.bundle_version, image.bundle_sha256, time.time())
    failed = [r for r in results if not r.ok]
    if as_json:
        click.echo(json.dumps({"image_id": image.image_id, "results": [r.as_json() for r in results]}, indent=2))
    else:
        _summary(results).print(output.console())
        counts = {k: sum(r.result == k for r in results) for k in (RESULT_OK, RESULT_SAME, RESULT_FAILED)}
        click.echo(", ".join(f"{n} {k}" for k, n in counts.items()) + f"; recorded in {display_url(reg.url)}")
    if failed:
        if not as_json:
            raise FleetpinError(f"{len(failed)} station(s) failed", hint="see the error column; fix and rerun those ports")
        return 1
    return 0
