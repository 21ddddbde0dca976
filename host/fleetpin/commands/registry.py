"""`fleetpin registry list|boards|export|migrate`: the registry the line's stations share."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from fleetpin.files import write_atomic
from fleetpin.line.registry import (
    ENV_VAR,
    STATES,
    URL_HELP,
    Registry,
    attempts_csv,
    display_url,
    head_revision,
    migrate,
)

_registry_opt = click.option("--registry", "url", envvar=ENV_VAR, default=None, metavar="URL", help=URL_HELP)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal:  # a pipe or a log gets whole columns, not a table squeezed to 80
        console.width = max(console.width, 200)
    return console


@click.group()
def registry() -> None:
    """The registry the line's stations share: every provisioning attempt, and one row per
    board (by MAC) with its claim: claimed, written, confirmed, or failed with the reason.

    \b
    It is a SQLite file (one machine) or a PostgreSQL database (stations on several machines):
    --registry URL or $FLEETPIN_REGISTRY. After upgrading fleetpin, run `fleetpin registry
    migrate` once; a registry a newer fleetpin migrated is refused, never half-read.
    """


@registry.command("list")
@_registry_opt
@click.option("--mac", default=None, help="Only this device (base MAC, aa:bb:cc:dd:ee:ff).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_(url: str | None, mac: str | None, as_json: bool) -> None:
    """Show the recorded attempts, oldest first."""
    with Registry(url, create=False) as reg:
        rows = reg.attempts(mac.lower() if mac else None)
    if as_json:
        click.echo(json.dumps([asdict(a) for a in rows], indent=2))
        return
    t = Table("#", "ended", "mac", "board", "image", "bundle", "station", "operator", "result", "error")
    for a in rows:
        t.add_row(
            str(a.id),
            _when(a.ended),
            a.mac or "-",
            a.board,
            a.image_id[:12],
            a.bundle_sha256[:12],
            f"{a.station} ({a.port})" if a.station != a.port else a.port,
            a.operator,
            a.result,
            a.error or "",
        )
    _console().print(t)


@registry.command("boards")
@_registry_opt
@click.option("--state", type=click.Choice(STATES), default=None, help="Only boards in this state.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def boards(url: str | None, state: str | None, as_json: bool) -> None:
    """One row per board: where its claim stands, which station holds it, the image."""
    with Registry(url, create=False) as reg:
        rows = reg.boards(state)
    if as_json:
        click.echo(json.dumps([{k: v for k, v in asdict(b).items() if k != "token"} for b in rows], indent=2))
        return
    t = Table("mac", "state", "station", "image", "bundle", "updated", "taken over", "error")
    for b in rows:
        t.add_row(b.mac, b.state, b.station, b.image_id[:12], b.bundle_sha256[:12], _when(b.updated_at), str(b.takeovers or ""),
                  b.error or "")
    _console().print(t)
    click.echo(", ".join(f"{sum(b.state == s for b in rows)} {s}" for s in STATES))


@registry.command()
@_registry_opt
@click.option("--csv", "fmt", flag_value="csv", help="CSV with a header row.")
@click.option("--json", "fmt", flag_value="json", default=True, help="JSON array (default).")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write to a file instead of stdout.")
def export(url: str | None, fmt: str, out: Path | None) -> None:
    """Export every attempt as CSV or JSON."""
    with Registry(url, create=False) as reg:
        rows = reg.attempts()
    text = attempts_csv(rows) if fmt == "csv" else json.dumps([asdict(a) for a in rows], indent=2) + "\n"
    if out is None:
        click.echo(text, nl=False)
    else:
        write_atomic(out, text)


@registry.command("migrate")
@_registry_opt
@click.option("--json", "as_json", is_flag=True, help="Print {before, after} as JSON.")
def migrate_(url: str | None, as_json: bool) -> None:
    """Bring the registry's schema up to this fleetpin's (a fleetpin 0.1 SQLite file too).

    \b
    Run it once after upgrading fleetpin, from any one station (others that start meanwhile
    wait for it). It only adds tables and indexes; the attempts recorded so far stay as they
    are, and boards confirmed before are recognised by the new claims. A registry migrated by
    a newer fleetpin is refused: upgrade this machine instead. Back the database up first.
    """
    before, after = migrate(url)
    if as_json:
        click.echo(json.dumps({"registry": display_url(url), "before": before, "after": after}))
    elif before == after:
        click.echo(f"{display_url(url)}: schema {after}, already up to date")
    else:
        click.echo(f"{display_url(url)}: schema {before or '(new)'} -> {after} (this fleetpin's: {head_revision()})")
