"""`fleetpin preflight BUNDLE`: would devices holding this bundle still connect to the servers
as they are now (or on --now)? The checks live in fleetpin.field.preflight; this module is the
command line and the report."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fleetpin import output
from fleetpin.bundles.view import View, iso_date, load_view
from fleetpin.errors import FleetpinError, UsageError
from fleetpin.field import preflight as checks
from fleetpin.field.preflight import Report, ServerResult
from fleetpin.line.registry_url import ENV_VAR, URL_HELP
from fleetpin.pki.certs import HostTarget, parse_host

if TYPE_CHECKING:
    from rich.console import Console


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source", metavar="BUNDLE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--host", "host_args", multiple=True, metavar="HOST[:PORT][@ADDRESS]",
              help="A server to check (repeatable). Replaces the default HOST:443 of an exact domain with the "
                   "same name; required for wildcard domains. @ADDRESS connects there while HOST is still the "
                   "name sent (SNI) and checked.")
@click.option("--trust", "trust_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Verify the bundle's signatures against this signer set first (fleetpin key signers).")
@click.option("--now", "now_text", metavar="ISO8601|@SECONDS",
              help="Evaluate at this time instead of now, e.g. 2027-03-01 (will devices still connect then?).")
@click.option("--timeout", type=click.FloatRange(0.1), default=10.0, show_default=True,
              help="Seconds to wait for each server's TLS handshake.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--record", is_flag=True,
              help="Record in the registry the servers that would lock out devices running this bundle (fleetpin fleet status).")
@click.option("--registry", "registry_url", envvar=ENV_VAR, default=None, metavar="URL", help="With --record: " + URL_HELP)
def preflight(source: Path, host_args: tuple[str, ...], trust_path: Path | None, now_text: str | None,
                  timeout: float, as_json: bool, record: bool, registry_url: str | None) -> None:
    """Connect to every domain's live server(s) and report what devices holding BUNDLE (a
    bundle file, or the POLICY.toml it is built from) would conclude: CA validation against
    the bundle's CA certificates only (as on the device), the pin verdict from the agent's own
    code, which pin matched at which depth, whether the backup pins are really outside the
    served chain, and how many days the pins and certificates have left.

    Run it before pushing a bundle and before rotating a server key.

    \b
    Examples:
      fleetpin preflight bundle-7.fpb
      fleetpin preflight policy.toml --host 'x.example.com' --now 2027-03-01
      fleetpin preflight bundle-7.fpb --host api.example.com:8443@10.0.0.5
    Exit codes: 0 devices would connect to every server checked (warnings allowed),
    1 a device would be locked out, a server could not be reached, or the bundle has an
    error (pins expired with on_expiry = enforce), 2 usage error.
    """
    from fleetpin.bundles.inspect import check_signatures
    from fleetpin.times import parse_now

    now = parse_now(now_text)
    if now is None:
        raise UsageError("--now unknown: preflight needs a time to validate certificates at",
                         hint="e.g. --now 2027-03-01T00:00:00Z")
    targets: list[HostTarget] = [parse_host(h) for h in host_args]
    view = load_view(source)
    signatures = check_signatures(view, trust_path)
    if not view.rules and not targets:
        raise UsageError(f"{source}: no domains, and no --host: nothing to check")
    if record and view.data is None:
        raise UsageError(f"--record needs the built bundle, not {source}",
                         hint="devices are matched by the digest of the bundle they run: pass the bundle file")

    console = _console()
    status_console = _console(stderr=True)
    if status_console.is_terminal and not as_json:
        with status_console.status("connecting to the servers...") as status:
            done: list[ServerResult] = []

            def tick(result: ServerResult) -> None:
                done.append(result)
                status.update(f"checked {len(done)} servers (last: {result.server.target})")

            report = checks.run(view, targets, now, timeout, progress=tick)
    else:
        report = checks.run(view, targets, now, timeout)

    recorded = _record(registry_url, view, report) if record else None
    if as_json:
        click.echo(json.dumps({**report.to_obj(), "signatures": signatures, **({"recorded": recorded} if record else {})}, indent=2))
    else:
        if trust_path is not None:
            console.print(signatures["status"], markup=False)
        print_report(report, console)
        if recorded is not None:
            console.print(f"recorded in {recorded['registry']}: {recorded['lockouts']} server(s) would lock out devices "
                          f"running bundle {recorded['bundle_sha256'][:16]}", markup=False)
    if report.failed:
        raise FleetpinError(report.summary(), hint=report.hint())


def _record(url: str | None, view: View, report: Report) -> dict[str, Any]:
    """The lockouts this preflight found, in the registry (replacing the bundle's earlier ones)."""
    import hashlib

    from fleetpin.field.fleet import record_preflight
    from fleetpin.line.registry import Registry, display_url

    assert view.data is not None
    digest = hashlib.sha256(view.data).hexdigest()  # what IDENTIFY reports for the installed bundle
    version = (view.header or {}).get("version")
    with Registry(url) as reg:
        n = record_preflight(reg, digest, version if isinstance(version, int) else None, report.to_obj())
        return {"registry": display_url(reg.url), "bundle_sha256": digest, "lockouts": n}


# --- the report -----------------------------------------------------------------------------


def _console(stderr: bool = False) -> Console:
    return output.console(err=stderr)


_STATUS: dict[str, tuple[tuple[str, str], ...]] = {
    checks.OK: (("devices connect", "bold green"),),
    checks.WARN: (("devices connect", "bold green"), (" (with warnings)", "yellow")),
    checks.FAILED: (("devices connect", "bold green"), (" (bundle error)", "red")),
    checks.LOCKOUT: (("WOULD LOCK DEVICES OUT", "bold red"),),
    checks.UNREACHABLE: (("NOT CHECKED: unreachable", "bold red"),),
}


def print_report(report: Report, console: Console) -> None:
    say = _say(console)
    say(f"preflight of {report.source} at {iso_date(report.now)}")
    for result in report.results:
        say()
        _print_server(result, console)
    for n in report.not_checked:
        say()
        say((n.domain, "yellow"), f": {n.reason}")
    say()
    say((report.summary(), "red" if report.failed else "green"))


def _say(console: Console) -> Callable[..., None]:
    def say(*parts: str | tuple[str, str]) -> None:
        console.print(output.assemble(*parts))

    return say


def _print_server(r: ServerResult, console: Console) -> None:
    say = _say(console)
    t = r.server.target
    rule = r.server.rule
    where = f"{t}" + (f" @ {t.connect}" if t.connect != t.host else "")
    domain = rule.host if rule is not None else "(no domain covers it)"
    title = f"{domain} — {where}" + ("" if r.server.given else " (default port)")
    if r.fetch_error is not None:
        say((title, "bold"))
        say("  verdict:  ", *_STATUS[r.status], f": {r.fetch_error}")
        return
    obj = r.to_obj()
    labels = {p["pin"]: p for p in obj["pins"]}
    table = output.Table("depth", "pin (sha256 of SPKI)", "certificate", "expires", "pinned as", title=title,
                         right=("depth",))
    for c in obj["chain"]:
        p = labels.get(c["pin"])
        mark = output.assemble()
        if p is not None:
            mark = output.assemble(p["label"] or "(no label)")
            if p["role"] == "matched":
                mark = output.assemble((f"✓ {p['label'] or '(no label)'} (matched)", "green"))
        subject = output.assemble(c["subject"], ("" if c["sent"] else (" (the bundle's CA; not sent)", "dim")))
        table.add(str(c["depth"]), c["pin"], subject, c["expires"][:10], mark)
    for p in obj["pins"]:
        if p["role"] == "backup":
            table.add("-", p["pin"], output.styled("(not in the served chain)", "dim"), "",
                      output.assemble(p["label"] or "(no label)", (" (backup)", "cyan")))
    table.print(console)
    ca = obj["ca_validation"]
    if ca["verified"]:
        say(f"  CA validation: ok, to {ca['anchor'] or 'a bundle CA'}")
    else:
        say("  CA validation: ", ("FAILED", "red"), f": {ca['error']}")
    if rule is not None:
        left = obj["rule"]["days_left"]
        mode = "enforced" if rule.enforce else "report-only"
        when = f"{left} days left" if left >= 0 else f"expired {-left} days ago"
        say(f"  pins:     {mode}, expire {obj['rule']['expires'][:10]} ({when}), on expiry {rule.on_expiry}")
    v = obj["verdict"]
    matched = ""
    if v["matched_depth"] >= 0:
        matched = f"; matched {v['matched_label'] or 'a pin'} at depth {v['matched_depth']}"
    say(f"  pin verdict: {v['reason']} ({v['explain']}){matched}")
    reason = f": {r.lockout_reason}" if r.lockout_reason else ""
    say("  verdict:  ", *_STATUS[r.status], reason)
    for p in r.problems:
        say("  ", (p.severity, "red" if p.severity == checks.ERROR else "yellow"), f": {p.message}")
