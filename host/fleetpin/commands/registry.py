"""`fleetpin registry list|boards|export|migrate`: the registry the line's stations share."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from fleetpin import output
from fleetpin.field.transport import printable
from fleetpin.files import write_atomic
from fleetpin.line.registry import (
    ENV_VAR,
    STATES,
    URL_HELP,
    Registry,
    display_url,
    export_obj,
    head_revision,
    migrate,
    to_csv,
)
from fleetpin.times import iso8601

_registry_opt = click.option("--registry", "url", envvar=ENV_VAR, default=None, metavar="URL", help=URL_HELP)


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
            printable(a.error or "", 400),  # may quote what a board said
        )
    t.print(output.console())


@registry.command("boards")
@_registry_opt
@click.option("--state", type=click.Choice(STATES), default=None, help="Only boards in this state.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def boards(url: str | None, state: str | None, as_json: bool) -> None:
    """One row per board: where its claim stands, which station holds it, the image."""
    with Registry(url, create=False) as reg:
        rows = reg.boards(state)
    if as_json:
        click.echo(json.dumps([{k: v for k, v in asdict(b).items() if k != "token"}
                               | {"claimed_at": iso8601(b.claimed_at), "updated_at": iso8601(b.updated_at),
                                  "lease_until": iso8601(b.lease_until)} for b in rows], indent=2))
        return
    t = output.Table("mac", "state", "station", "image", "bundle", "updated", "taken over", "error", right=("taken over",))
    for b in rows:
        t.add(b.mac, b.state, b.station, b.image_id[:12], b.bundle_sha256[:12], iso8601(b.updated_at), str(b.takeovers or ""),
              printable(b.error or "", 400))
    out = output.console()
    t.print(out)
    out.print(", ".join(f"{sum(b.state == s for b in rows)} {s}" for s in STATES))


@registry.command()
@_registry_opt
@click.option("--csv", "fmt", flag_value="csv", help="CSV with a header row.")
@click.option("--json", "fmt", flag_value="json", default=True, help="JSON array (default).")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write to a file instead of stdout.")
def export(url: str | None, fmt: str, out: Path | None) -> None:
    """Export every attempt as CSV or JSON."""
    with Registry(url, create=False) as reg:
        rows = reg.attempts()
    text = to_csv(rows) if fmt == "csv" else json.dumps([export_obj(a) for a in rows], indent=2) + "\n"
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
