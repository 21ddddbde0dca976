"""`fleetpin devices`: the serial ports a board could be on, with their USB ids (like
`mpremote devs`), and which one `fleetpin device` would use without -p."""

from __future__ import annotations

import json
import os

import click

from fleetpin.errors import FleetpinError
from fleetpin.field import ports
from fleetpin.field.ports import ENV_PORT, choose_port


@click.command()
@click.option("--json", "as_json", is_flag=True, help="print the ports as JSON")
def devices(as_json: bool) -> None:
    """List serial ports with their USB ids; ESP32-style USB bridges (CP210x, CH340, CH9102,
    FTDI, Espressif USB) are marked, and the one `fleetpin device` uses without -p is starred.

    \b
    Exit codes: 0 (also when no port is found).
    """
    found = ports.candidates()
    try:
        chosen: str | None = choose_port(None, found)
    except FleetpinError:
        chosen = None
    if as_json:
        click.echo(json.dumps([{"port": p.device, "usb_id": None if p.usb_id == "-" else p.usb_id,
                                "serial_number": p.serial_number, "description": p.description,
                                "esp32_bridge": p.bridge, "default": p.device == chosen} for p in found], indent=2))
        return
    if not found:
        click.echo("no serial ports found")
    for p in found:
        star = "*" if p.device == chosen else " "
        click.echo(f"{star} {p.device}  {p.usb_id}  {p.serial_number or '-'}  {p.bridge or '-'}  {p.description}")
    if os.environ.get(ENV_PORT):
        click.echo(f"{ENV_PORT}={os.environ[ENV_PORT]} (used when -p is not given)")
    elif chosen is None and found:
        click.echo("no single ESP32-style board: pass -p PORT to fleetpin device")
