"""The `fleetpin` command line: a table of subcommands, each in its own module, loaded lazily
so `fleetpin --help` stays fast. Errors are caught once, here, and mapped to exit codes:
0 ok, 1 refused or failed check, 2 usage."""

from __future__ import annotations

import importlib
import sys

import click

from fleetpin import __version__
from fleetpin.errors import FleetpinError
from fleetpin.output import error

# The command table: name -> ("module:attribute" of a click command or group, one-line help).
# `fleetpin --help` reads the help from here, so it imports no command module; a command's
# module is imported only when that command runs. Nothing else imports a command module.
COMMANDS: dict[str, tuple[str, str]] = {
    "pin": ("fleetpin.commands.pin:pin", "Print the pin of every certificate, key and CSR in FILEs or of a live server."),
    "check": ("fleetpin.commands.check:check", "Check a certificate chain against a policy, as the device would decide."),
    "key": ("fleetpin.commands.key:key", "Bundle signing keys, backup TLS keys, and the signer set devices trust."),
    "bundle": ("fleetpin.commands.bundle:bundle", "Build, sign, verify, inspect, diff and lint pin bundles."),
    "boards": ("fleetpin.commands.boards:boards", "List the board definitions: chip, firmware offset, flash sizes."),
    "image": ("fleetpin.commands.image:image", "Build and verify production images (firmware + filesystem + manifest)."),
    "provision": ("fleetpin.commands.provision:provision_cmd", "Flash an image onto boards, many at once, and record them."),
    "registry": ("fleetpin.commands.registry:registry", "The registry stations share: boards by MAC, every attempt, schema migrations."),
    "fleet": ("fleetpin.commands.fleet:fleet", "The fleet's reports and lockouts in the registry: import them, see the status after a rotation."),
    "preflight": ("fleetpin.commands.preflight:preflight", "Check live servers against a bundle before it ships: does any device get locked out."),
    "drill": ("fleetpin.commands.drill:drill", "Rehearse a pinning incident (rotation, lost key, rogue CA) on a virtual fleet."),
    "devices": ("fleetpin.commands.devices:devices", "List the serial ports a board could be on, with their USB ids."),
    "device": ("fleetpin.commands.device:device", "Talk to one device over serial: info, update, reports, test-connect."),
    "sim": ("fleetpin.commands.sim:sim", "Virtual boards behind pseudo-terminals, for trying everything without hardware."),
    "export": ("fleetpin.commands.export:export", "Export pins for mobile apps (Android, TrustKit, OkHttp)."),
    "import": ("fleetpin.commands.import_:import_", "Turn an app's pins (Android network-security-config) into a policy."),
    "demo": ("fleetpin.commands.demo:demo", "The whole story on a virtual fleet: line, field, rogue CA, update, drills."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module_name, attr = entry[0].split(":")
        return getattr(importlib.import_module(module_name), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from the table's help lines, without importing every command."""
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in self.list_commands(ctx)])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fleetpin")
def cli() -> None:
    """fleetpin: certificate pinning for fleets of ESP32 devices, without bricking the fleet.

    \b
    Exit codes: 0 ok, 1 refused or failed check, 2 usage error.
    """


def main(argv: list[str] | None = None, *, refusal_expected: bool = False) -> int:
    """Runs one command; returns its exit code. `refusal_expected` (the demo, showing a refusal
    on purpose) prints a refusal (exit 1) as the expected outcome it is, not as an error."""
    try:
        # Without standalone mode click returns ctx.exit(n)'s code instead of raising.
        rv = cli.main(args=argv, prog_name="fleetpin", standalone_mode=False)
    except FleetpinError as e:
        if refusal_expected and e.exit_code == 1:
            click.echo(f"refused, as expected: {e}")
            return e.exit_code
        error(str(e), e.hint)
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
