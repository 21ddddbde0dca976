"""The `fleetpin` command line: a table of subcommands, each in its own module, loaded lazily
so `fleetpin --help` stays fast. Errors are caught once, here, and mapped to exit codes:
0 ok, 1 refused or failed check, 2 usage."""

from __future__ import annotations

import importlib
import sys

import click

from . import __version__
from .errors import FleetpinError

# name -> "module:attribute" of a click command or group
COMMANDS: dict[str, str] = {
    "pin": "fleetpin.cmd_pin:pin",
    "check": "fleetpin.cmd_check:check",
    "key": "fleetpin.cmd_key:key",
    "bundle": "fleetpin.cmd_bundle:bundle",
    "boards": "fleetpin.cmd_boards:boards",
    "image": "fleetpin.cmd_image:image",
    "provision": "fleetpin.cmd_provision:provision_cmd",
    "registry": "fleetpin.cmd_registry:registry",
    "preflight": "fleetpin.cmd_preflight:preflight",
    "drill": "fleetpin.cmd_drill:drill",
    "device": "fleetpin.cmd_device:device",
    "sim": "fleetpin.cmd_sim:sim",
    "export": "fleetpin.cmd_export:export",
    "import": "fleetpin.cmd_import:import_",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fleetpin")
def cli() -> None:
    """fleetpin: certificate pinning for fleets of ESP32 devices, without bricking the fleet.

    \b
    Exit codes: 0 ok, 1 refused or failed check, 2 usage error.
    """


def main(argv: list[str] | None = None) -> int:
    try:
        # Without standalone mode click returns ctx.exit(n)'s code instead of raising.
        rv = cli.main(args=argv, prog_name="fleetpin", standalone_mode=False)
    except FleetpinError as e:
        click.secho(f"error: {e}", fg="red", err=True)
        if e.hint:
            click.echo(f"  next: {e.hint}", err=True)
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except click.ClickException as e:
        e.show()
        return 2
    except click.exceptions.Exit as e:
        return e.exit_code
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
