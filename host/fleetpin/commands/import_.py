"""`fleetpin import android network_security_config.xml`: an app's existing pins -> a policy file
(the mapping and what it cannot keep: fleetpin.formats.android_import)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from fleetpin.errors import FleetpinError, UsageError
from fleetpin.files import write_output
from fleetpin.formats.android_import import NEVER, import_android

FORMATS = ("android",)


@click.command("import", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("fmt", metavar="FORMAT", type=click.Choice(FORMATS))
@click.argument("source", metavar="network_security_config.xml", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--out", "out_file", type=click.Path(dir_okay=False, path_type=Path),
              help="write the policy here instead of standard output")
@click.option("--expires", "expires_text", metavar="YYYY-MM-DD",
              help="expires for pin-sets without an expiration (Android enforces those forever; default 9999-12-31)")
@click.option("--force", is_flag=True, help="overwrite -o FILE if it exists")
@click.option("--strict", is_flag=True, help="exit 1, writing nothing, if the policy cannot say what the app does")
def import_(fmt: str, source: Path, out_file: Path | None, expires_text: str | None, force: bool,
            strict: bool) -> None:
    """Turn an app's pins into a fleetpin policy TOML file. FORMAT is android (a
    network_security_config.xml: domain-config nesting, includeSubdomains, pin-set expiration).

    \b
    Each domain becomes a [[domain]] with enforce = true and, for a pin-set with an expiration
    date, expires = that date and on_expiry = "fallback" (Android's behaviour after it); without
    one, on_expiry = "enforce". Settings that are not pinning (cleartext traffic, trust anchors)
    are listed as notes; differences in behaviour as warnings (--strict: exit 1).

    \b
    Example:
      fleetpin import android app/src/main/res/xml/network_security_config.xml -o policy.toml
    """
    never = NEVER
    if expires_text is not None:
        try:
            day = dt.date.fromisoformat(expires_text)
        except ValueError:
            raise UsageError(f"--expires {expires_text!r}: not a date YYYY-MM-DD") from None
        never = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp())
    try:
        data = source.read_bytes()
    except OSError as e:
        raise UsageError(f"{source}: cannot read: {e.strerror or e}") from None
    result = import_android(data, source.name, never_expires=never)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    for warning in result.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    if strict and result.warnings:
        raise FleetpinError(f"--strict: {len(result.warnings)} warning(s): the policy would not do what the app does",
                            hint="review the warnings, or drop --strict and edit the policy by hand")
    if out_file is not None and out_file.exists() and not force:
        raise UsageError(f"{out_file} exists", hint="pass --force to overwrite it, or choose another -o")
    write_output(out_file, result.toml, "policy written")
