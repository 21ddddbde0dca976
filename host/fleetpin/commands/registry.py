"""`fleetpin registry list|export`: the provisioning attempts recorded on this line."""

from __future__ import annotations

import json
from pathlib import Path

import click

from fleetpin import output
from fleetpin.errors import UsageError
from fleetpin.files import write_atomic
from fleetpin.line.registry import DEFAULT_PATH, Registry, export_obj, to_csv
from fleetpin.times import iso8601

_registry_opt = click.option(
    "--registry", "path", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_PATH, show_default=True, help="Registry database."
)


def _open(path: Path) -> Registry:
    if not path.exists():
        raise UsageError(f"no registry at {path}", hint="pass --registry, or provision a board first")
    return Registry(path)


@click.group()
def registry() -> None:
    """The device registry: one row per provisioning attempt (MAC, image, station, result)."""


@registry.command("list")
@_registry_opt
@click.option("--mac", default=None, help="Only this device (base MAC, aa:bb:cc:dd:ee:ff).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_(path: Path, mac: str | None, as_json: bool) -> None:
    """Show the recorded attempts, oldest first."""
    rows = _open(path).attempts(mac.lower() if mac else None)
    if as_json:
        click.echo(json.dumps([export_obj(a) for a in rows], indent=2))
        return
    t = output.Table("#", "ended", "mac", "board", "image", "bundle", "station", "operator", "result", "error",
                     right=("#",))
    for a in rows:
        t.add(
            str(a.id),
            iso8601(a.ended),
            a.mac or "-",
            a.board,
            a.image_id[:12],
            a.bundle_sha256[:12],
            f"{a.station} ({a.port})" if a.station != a.port else a.port,
            a.operator,
            a.result,
            a.error or "",
        )
    t.print(output.console())


@registry.command()
@_registry_opt
@click.option("--csv", "fmt", flag_value="csv", help="CSV with a header row.")
@click.option("--json", "fmt", flag_value="json", default=True, help="JSON array (default).")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write to a file instead of stdout.")
def export(path: Path, fmt: str, out: Path | None) -> None:
    """Export every attempt as CSV or JSON."""
    rows = _open(path).attempts()
    text = to_csv(rows) if fmt == "csv" else json.dumps([export_obj(a) for a in rows], indent=2) + "\n"
    if out is None:
        click.echo(text, nl=False)
    else:
        write_atomic(out, text)
