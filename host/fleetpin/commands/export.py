"""`fleetpin export android|trustkit|okhttp BUNDLE|POLICY.toml`: the fleet's pins for mobile apps
(formats and their limits: fleetpin.formats.export)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from fleetpin import formats
from fleetpin.errors import FleetpinError, UsageError
from fleetpin.files import write_atomic, write_output
from fleetpin.formats import FORMATS
from fleetpin.formats.common import TRUSTKIT_FORMATS, ExportWarning, load_policy_source
from fleetpin.output import secho


def print_warnings(warnings: list[ExportWarning]) -> None:
    for w in warnings:
        secho(f"warning: {w}", fg="yellow", err=True)


def refuse_if_strict(strict: bool, warnings: list[ExportWarning], what: str) -> None:
    if strict and warnings:
        raise FleetpinError(
            f"--strict: {len(warnings)} warning{'s' if len(warnings) != 1 else ''}: {what}",
            hint="change the policy so the format can express it, or drop --strict")


@click.command("export", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("fmt", metavar="FORMAT", type=click.Choice(FORMATS))
@click.argument("source", metavar="BUNDLE|POLICY.toml", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--out", "out_file", type=click.Path(dir_okay=False, path_type=Path),
              help="write here instead of standard output")
@click.option("--format", "trustkit_format", type=click.Choice(TRUSTKIT_FORMATS), default=None,
              help="trustkit only: plist (Info.plist TSKConfiguration, default) or json (the same dictionary)")
@click.option("--report-uri", "report_uris", multiple=True, metavar="URL",
              help="trustkit only: TSKReportUris for every domain (repeatable)")
@click.option("--strict", is_flag=True, help="exit 1, writing nothing, if the format cannot express the policy exactly")
@click.option("--json", "as_json", is_flag=True,
              help="print a JSON object (format, source, out, warnings, and the exported text unless -o)")
def export(fmt: str, source: Path, out_file: Path | None, trustkit_format: str | None,
               report_uris: tuple[str, ...], strict: bool, as_json: bool) -> None:
    """Export the pins of a bundle or policy file for the mobile apps that talk to the same
    servers: FORMAT is android (network-security-config XML), trustkit (iOS/macOS) or okhttp
    (Kotlin CertificatePinner). A bundle's signature is not checked: this only reads it.

    \b
    Where a format cannot say what the policy says (report-only rules, expiry, wildcards,
    overlapping rules), the export does the closest safe thing and prints a warning on stderr
    naming the domain; --strict turns warnings into exit code 1.

    \b
    Examples:
      fleetpin export android policy.toml -o app/src/main/res/xml/network_security_config.xml
      fleetpin export trustkit bundle-7.fpb --report-uri https://reports.example.com/pins
      fleetpin export okhttp policy.toml --strict
    """
    if fmt != "trustkit" and (trustkit_format is not None or report_uris):
        raise UsageError("--format and --report-uri apply to trustkit only")
    obj = load_policy_source(source)
    result = formats.export(fmt, obj, source.name, trustkit_format=trustkit_format or "plist", report_uris=report_uris)
    if not as_json:
        print_warnings(result.warnings)
    refuse_if_strict(strict, result.warnings, f"the {fmt} export does not express the policy exactly")
    if as_json:
        if out_file is not None:
            write_atomic(out_file, result.text)
        click.echo(json.dumps({
            "format": fmt, "source": str(source), "out": None if out_file is None else str(out_file),
            "warnings": [{"domain": w.domain, "message": w.message} for w in result.warnings],
            "text": result.text if out_file is None else None,
        }, indent=2))
        return
    write_output(out_file, result.text, f"{fmt} export, {len(result.warnings)} warning(s)")

