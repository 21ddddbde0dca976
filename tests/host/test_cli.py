"""The command table is the CLI: every command in it loads, `--help` lists them all without
importing any, and no module but the CLI imports a command module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import click
import pytest

from fleetpin import cli

PACKAGE = Path(cli.__file__).parent
EXPECTED = {"pin", "check", "key", "bundle", "boards", "image", "provision", "registry", "preflight", "drill",
            "device", "devices", "sim", "export", "import", "demo", "fleet"}


def test_every_command_a_user_runs_is_in_the_table() -> None:
    assert set(cli.COMMANDS) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_command_loads_from_the_commands_package(name: str) -> None:
    target, help_line = cli.COMMANDS[name]
    assert target.startswith("fleetpin.commands.") and help_line.endswith(".")
    command = cli.cli.get_command(click.Context(cli.cli), name)
    assert isinstance(command, click.Command)
    assert cli.main([name, "--help"]) == 0


def test_help_lists_every_command_and_imports_none() -> None:
    code = ("import sys\nfrom fleetpin import cli\nrc = cli.main(['--help'])\n"
            "print('LOADED', sorted(m for m in sys.modules if m.startswith('fleetpin.commands.')))\nsys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout
    for name in EXPECTED:
        assert f"  {name} " in done.stdout


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_only_the_cli_table_reaches_command_modules() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "cli.py" and path.parent == PACKAGE:
            continue
        for module in _imports(path):
            if module.startswith("fleetpin.commands") and module != "fleetpin.commands":
                offenders.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert offenders == []


def test_every_device_error_has_words_and_a_next_step() -> None:
    """One table for what the agent can say (fleetpin.device_errors), held against the device's
    own names: the protocol's error names and the bundle decoder's error classes."""
    from fleetpin.device_errors import ERRORS
    from pinagent import bundle, service

    names = set(service.ERROR_NAMES.values())
    names |= {n for n, v in vars(bundle).items() if isinstance(v, type) and issubclass(v, bundle.BundleError)
              and v is not bundle.BundleError}
    assert names == set(ERRORS)
    assert all(e.words and e.hint for e in ERRORS.values())
