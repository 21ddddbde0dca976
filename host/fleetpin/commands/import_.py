"""`fleetpin import android network_security_config.xml`: an app's existing pins -> a policy file
(the mapping and what it cannot keep: fleetpin.formats.android_import)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from fleetpin.errors import FleetpinError, UsageError
from fleetpin.files import write_atomic, write_output
from fleetpin.formats.android_import import NEVER, import_android
from fleetpin.output import secho
from fleetpin.times import parse_time

FORMATS = ("android",)


@click.command("import", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("fmt", metavar="FORMAT", type=click.Choice(FORMATS))
@click.argument("source", metavar="network_security_config.xml", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--out", "out_file", type=click.Path(dir_okay=False, path_type=Path),
              help="write the policy here instead of standard output")
@click.option("--expires", "expires_text", metavar="ISO8601|@SECONDS",
              help="expires for pin-sets without an expiration (Android enforces those forever; default 9999-12-31)")
@click.option("--force", is_flag=True, help="overwrite -o FILE if it exists")
@click.option("--strict", is_flag=True, help="exit 1, writing nothing, if the policy cannot say what the app does")
@click.option("--json", "as_json", is_flag=True,
              help="print a JSON object (format, source, out, warnings, notes, and the policy unless -o)")
def import_(fmt: str, source: Path, out_file: Path | None, expires_text: str | None, force: bool,
            strict: bool, as_json: bool) -> None:
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
    never = NEVER if expires_text is None else parse_time(expires_text, "--expires")
    try:
        data = source.read_bytes()
    except OSError as e:
        raise UsageError(f"{source}: cannot read: {e.strerror or e}") from None
    result = import_android(data, source.name, never_expires=never)
    if not as_json:
        for note in result.notes:
            click.echo(f"note: {note}", err=True)
        for warning in result.warnings:
            secho(f"warning: {warning}", fg="yellow", err=True)
    if strict and result.warnings:
        raise FleetpinError(f"--strict: {len(result.warnings)} warning(s): the policy would not do what the app does",
                            hint="review the warnings, or drop --strict and edit the policy by hand")
    if out_file is not None and out_file.exists() and not force:
        raise UsageError(f"{out_file} exists", hint="pass --force to overwrite it, or choose another -o")
    if as_json:
        if out_file is not None:
            write_atomic(out_file, result.toml)
        click.echo(json.dumps({
            "format": fmt, "source": str(source), "out": None if out_file is None else str(out_file),
            "warnings": list(result.warnings), "notes": list(result.notes),
            "policy": result.toml if out_file is None else None,
        }, indent=2))
        return
    write_output(out_file, result.toml, "policy written")
