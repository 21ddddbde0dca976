"""`fleetpin drill SCENARIO`: rehearse a pinning incident on a virtual fleet."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from fleetpin import output
from fleetpin.errors import FleetpinError, UsageError
from fleetpin.line.registry_url import ENV_VAR, URL_HELP
from fleetpin.sim.board import DEFAULT_RUNTIME
from fleetpin.sim.drill import DRILLS, DrillResult, run_drill

if TYPE_CHECKING:
    from rich.console import Console

STATUS_STYLE = {"connected": "green", "updated": "cyan", "blocked": "yellow", "UNREACHABLE": "bold red"}


def _scenario_help() -> str:
    return "\n".join(f"  {d.name:<20} {d.story}" for d in DRILLS.values())


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, epilog="\b\nScenarios:\n" + _scenario_help())
@click.argument("scenario", metavar="SCENARIO|all")
@click.option("--devices", type=click.IntRange(1, 16), default=3, show_default=True, help="virtual boards in the fleet")
@click.option("--runtime", type=click.Choice(["micropython", "cpython"]), default=DEFAULT_RUNTIME, show_default=True,
              help="micropython: each board runs device/main.py on MicroPython's unix port, TLS on mbedTLS; "
                   "cpython: the agent in this process, TLS through Python's ssl")
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
@click.option("--record", is_flag=True,
              help="record in the registry the devices each scenario left UNREACHABLE or blocked (fleetpin fleet status)")
@click.option("--registry", "registry_url", envvar=ENV_VAR, default=None, metavar="URL", help="with --record: " + URL_HELP)
def drill(scenario: str, devices: int, runtime: str, as_json: bool, record: bool, registry_url: str | None) -> None:
    """Rehearse a pinning incident on a virtual fleet before production lives through it.

    Each scenario boots virtual boards (the real agent behind real serial ports) with a
    signed bundle, serves TLS on 127.0.0.1, plays the incident (a lost or compromised key, a
    distrusted CA, a wrong pin, expired pins, a rogue CA, a report-only rollout), asks every
    device for its own verdict over serial, pushes the field updates that rescue it, and
    accounts for every device: connected, updated, blocked, or UNREACHABLE (bricked).

    Each board runs device/main.py on MicroPython's unix port by default: the agent's own
    TLS adapter on mbedTLS, its flash a LittleFS image. --runtime cpython runs the agents in
    this process instead, their TLS through Python's ssl module (the WebAssembly VM has no
    tls or socket module, so it cannot play a drill).

    \b
    Exit codes: 0 every expectation held and no device ended unreachable, 1 otherwise.
    """
    names = list(DRILLS) if scenario == "all" else [scenario]
    for n in names:
        if n not in DRILLS:
            raise UsageError(f"unknown scenario {n!r}", hint="one of: " + ", ".join(DRILLS) + ", or all")
    reg = None
    if record:
        from fleetpin.line.registry import Registry

        reg = Registry(registry_url)  # a bad URL or schema stops here, before any drill runs
    console = output.console()
    results: list[DrillResult] = []
    for n in names:
        d = DRILLS[n]
        if not as_json:
            output.heading(console, f"drill: {d.title} ({n})")
            console.print(d.story, markup=False)
        echo = (lambda line: None) if as_json else (lambda line: console.print(line, markup=False, highlight=False))
        r = run_drill(n, devices=devices, echo=echo, runtime=runtime)
        results.append(r)
        if not as_json:
            print_result(console, r)
    if reg is not None:
        from fleetpin.field.fleet import record_drill
        from fleetpin.line.registry import display_url

        with reg:
            locked = record_drill(reg, [r.to_obj() for r in results])
        if not as_json:
            console.print(f"recorded in {display_url(reg.url)}: {locked} of {len(results)} scenario(s) left devices locked out",
                          markup=False)
    if as_json:
        click.echo(json.dumps([r.to_obj() for r in results], indent=2))
    failed = [r.name for r in results if not r.passed]
    if failed:
        raise FleetpinError(f"drill failed: {', '.join(failed)}", hint="read the timeline above: the first EXPECTATION FAILED line says what broke")


def print_result(console: Console, r: DrillResult) -> None:
    table = output.Table("device", "bundle", "status", "last verdict", title=f"{r.name}: every device accounted for")
    for o in r.outcomes:
        style = STATUS_STYLE.get(o.status, "")
        table.add(o.device, o.bundle, output.styled(o.status, style) if style else o.status, o.detail)
    table.print(console)
    for f in r.failures:
        console.print(output.assemble(("FAILED: ", "red"), f))
    verdict = ("PASSED", "green") if r.passed else ("FAILED", "red")
    console.print(output.assemble(verdict, f" in {r.seconds:.1f} s (agents on {r.runtime})\n"))
