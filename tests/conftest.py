"""Shared pytest fixtures for the host tests (the device-core tests use none: they must also run
on the MicroPython VM). The PKI helpers live in fleetpin.sim.pki, the TLS servers in
fleetpin.sim.tlsserver (the demo and the drills use them too).

Figures a test must show in CI's output (e.g. how many power-cut points were tried) are
printed on lines starting with "RESULT: "; they are collected here (and by the VM test runner)
and printed at the end of the run."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click.testing
import pytest
from pg import pg_server, pg_url, url  # noqa: F401  (the registry's fixtures: a PostgreSQL server, a URL per engine)

from fleetpin.sim.pki import Pki, PkiFiles, make_pki
from fleetpin.sim.tlsserver import TlsServer

_RESULTS: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.passed:
        _RESULTS.extend(f"{line} [{report.nodeid.split('::')[-1]}]" for line in report.capstdout.splitlines()
                        if line.startswith("RESULT: "))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    import pg

    if pg.UNAVAILABLE:
        terminalreporter.write_line(f"SKIPPED the PostgreSQL registry tests: PostgreSQL cannot start here: {pg.UNAVAILABLE[0]}",
                                    yellow=True)
    if _RESULTS:
        terminalreporter.section("results the tests report")
        for line in _RESULTS:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def pki() -> Pki:
    """The default PKI (host device.test, EC P-256), shared by the whole session."""
    return make_pki("device.test")


@pytest.fixture(scope="session")
def pki_files(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> PkiFiles:
    """The default PKI written as PEM files: pki_files.cert("root"), .chain("leaf"), .key("leaf")."""
    return pki.write(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_server(pki: Pki) -> Iterator[Callable[..., TlsServer]]:
    """Starts TLS servers on 127.0.0.1 and stops them after the test:
    tls_server("leaf") serves pki.chain("leaf"); tls_server("rogue_leaf", other_pki, reply=b"X\\n")."""
    servers: list[TlsServer] = []

    def start(name: str = "leaf", of: Pki | None = None, **options: Any) -> TlsServer:
        source = of or pki
        server = TlsServer(source.chain_pem(name), source.issued[name].key_pem, **options)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def fleetpin() -> Callable[..., CliResult]:
    """Runs `fleetpin ARGS...` in-process through cli.main (so exit codes are the real mapping):
    fleetpin("pin", "x.pem", input="passphrase\\n", env={"FLEETPIN_KEY_PASSPHRASE": "pw"})."""
    from fleetpin.cli import main

    def run(*args: str | Path, input: str | None = None, env: dict[str, str | None] | None = None) -> CliResult:
        runner = click.testing.CliRunner()
        with runner.isolation(input=input, env=env) as (out, err, _):
            code = main([str(a) for a in args])
        return CliResult(code, out.getvalue().decode(), err.getvalue().decode())

    return run
