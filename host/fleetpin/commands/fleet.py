"""`fleetpin fleet import|status`: the fleet's reports in the registry the line shares."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from fleetpin import output
from fleetpin.errors import FleetpinError, UsageError
from fleetpin.field.fleet import fleet_status, status_csv, store_reports
from fleetpin.field.reports import parse_report_file
from fleetpin.field.transport import printable
from fleetpin.files import write_atomic
from fleetpin.line.registry import ENV_VAR, URL_HELP, Registry, display_url
from fleetpin.times import parse_time

_registry_opt = click.option("--registry", "url", envvar=ENV_VAR, default=None, metavar="URL", help=URL_HELP)


@click.group()
def fleet() -> None:
    """The fleet as the registry knows it: devices, their pin-failure reports, and what
    preflights and drills found would lock devices out.

    \b
    Reports get there from `fleetpin device reports --store` (a technician at a device) or
    `fleetpin fleet import` (the --json files technicians saved); lockouts from `fleetpin
    preflight --record` and `fleetpin drill --record`. Devices are known by their id and base
    MAC, which joins them to the boards the line provisioned.
    """


@fleet.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_registry_opt
@click.option("--device", "device_id", default=None, help="The device the files come from, when they do not say it.")
@click.option("--json", "as_json", is_flag=True, help="Print what was stored per file as JSON.")
def import_(files: tuple[Path, ...], url: str | None, device_id: str | None, as_json: bool) -> None:
    """Record saved report FILES: `fleetpin device reports --json` output, or an agent's report
    log. A report already stored is counted once however often it is imported.

    \b
    Exit codes: 0 every file stored, 1 a file could not be stored (the others are), 2 usage.
    """
    done: list[dict[str, Any]] = []
    failed = 0
    with Registry(url) as reg:
        for f in files:
            try:
                doc = parse_report_file(f.read_text(encoding="utf-8", errors="replace"))
                # when it was read: the file says so (since this registry), else its mtime
                seen = doc["read_at"] if doc["read_at"] is not None else f.stat().st_mtime
                r = store_reports(reg, doc, device_id=device_id, seen_at=seen)
                done.append({"file": str(f), "device_id": r.device_id, "added": r.added, "merged": r.merged})
            except (UsageError, OSError) as e:
                failed += 1
                done.append({"file": str(f), "error": str(e)})
    if as_json:
        click.echo(json.dumps(done, indent=2))
    else:
        for d in done:
            if "error" in d:
                click.echo(f"{d['file']}: not stored: {printable(d['error'], 400)}", err=True)
            else:
                click.echo(f"{d['file']}: {printable(d['device_id'])}: {d['added']} new, {d['merged']} already there")
        click.echo(f"{len(files) - failed} of {len(files)} files stored in {display_url(reg.url)}")
    if failed:
        raise FleetpinError(f"{failed} file(s) not stored", hint="pass --device ID for files that do not name their device")


@fleet.command("status")
@_registry_opt
@click.option("--not-seen-since", "since", metavar="DATE", default=None,
              help="Also list devices not read since DATE (ISO 8601, e.g. 2026-03-01).")
@click.option("--sample", type=click.IntRange(0, 1000), default=10, show_default=True, help="Device ids listed per finding.")
@click.option("--json", "fmt", flag_value="json", help="Print JSON (for dashboards).")
@click.option("--csv", "fmt", flag_value="csv", help="Print CSV, one row per finding (for dashboards).")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write to a file instead of stdout.")
def status(url: str | None, since: str | None, sample: int, fmt: str | None, out: Path | None) -> None:
    """After a rotation: devices per bundle version; per host, the devices that reported
    mismatches (enforced and report-only); devices not seen since a date; the devices a
    preflight or a drill says would be locked out (and boards confirmed on the line with that
    bundle that no field report has seen yet)."""
    not_seen = parse_time(since, "--not-seen-since") if since is not None else None
    with Registry(url, create=False) as reg:
        st = fleet_status(reg, not_seen_since=not_seen, sample=sample)
    if fmt is not None or out is not None:
        text = status_csv(st) if fmt == "csv" else json.dumps(st, indent=2) + "\n"
        if out is None:
            click.echo(text, nl=False)
        else:
            write_atomic(out, text)
        return
    _print_status(st, display_url(reg.url))


def _p(value: Any) -> str:
    """Text that came from devices (ids, host names, reasons), safe to print on a terminal."""
    return printable(value if value is not None else "-")


def _print_status(st: dict[str, Any], where: str) -> None:
    out = output.console()
    out.print(output.assemble((f"{st['devices']} devices", "bold"), f" in {where}"))
    t = output.Table("bundle version", "devices", title="devices per bundle version", right=("devices",))
    for v in st["by_bundle_version"]:
        t.add(str(v["bundle_version"]) if v["bundle_version"] is not None else "unknown", str(v["devices"]))
    t.print(out)
    if st["mismatches"]:
        t = output.Table("host", "mode", "devices", "some of them", title="devices that reported mismatches, per host",
                         right=("devices",))
        for m in st["mismatches"]:
            t.add(_p(m["host"] or "-"), output.styled(m["mode"], "red" if m["mode"] == "enforced" else "yellow"), str(m["devices"]),
                  " ".join(_p(d) for d in m["sample"]))
        t.print(out)
    else:
        out.print("no mismatches reported")
    if st["not_seen"] is not None:
        n = st["not_seen"]
        some = ": " + ", ".join(f"{_p(s['device_id'])} ({s['last_seen'][:10]})" for s in n["sample"]) if n["sample"] else ""
        out.print(output.assemble((str(n["devices"]), "bold"), f" devices not seen since {n['since']}{some}"))
    if st["lockouts"]:
        t = output.Table("found by", "bundle / scenario", "server", "devices", "on the line, not seen yet", "reason",
                         title="would be locked out", right=("devices", "on the line, not seen yet"))
        for lk in st["lockouts"]:
            what = lk.get("scenario") or f"v{lk.get('bundle_version')} {str(lk.get('bundle_sha256'))[:12]}"
            server = f"{lk['host']}:{lk['port']}" if lk["host"] else "-"
            t.add(f"{lk['source']} {(lk['found_at'] or '')[:10]}", _p(what), _p(server), output.styled(str(lk["devices"]), "red"),
                  str(lk["line_boards"]), _p(lk["reason"] or ""))
        t.print(out)
    else:
        out.print("no lockout recorded (fleetpin preflight --record, fleetpin drill --record)")
    if st["line_boards"]:
        out.print("line: " + ", ".join(f"{n} {s}" for s, n in st["line_boards"].items()) + " boards")
