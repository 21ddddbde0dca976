"""`fleetpin sim board`: a virtual board on a pseudo-terminal, for trying fleetpin without
hardware (and for tests and demos). It runs the real agent -- by default device/main.py on
MicroPython's unix port with mbedTLS, else on CPython or on the WebAssembly VM -- with its flash
in an image file that survives restarts, a settable clock, loopback-only network, and optionally
the line rate and line faults of a real cable."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import click

from fleetpin.errors import UsageError
from fleetpin.sim.board import DEFAULT_RUNTIME, HEAP_KB, RUNTIMES, VirtualBoard
from fleetpin.sim.line import Faults


@click.group()
def sim() -> None:
    """Simulated hardware: virtual boards behind pseudo-terminals."""


def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as e:
        raise UsageError(f"{what} {path}: cannot read: {e.strerror or e}") from None


@sim.command("board")
@click.option("--runtime", type=click.Choice(RUNTIMES), default=DEFAULT_RUNTIME, show_default=True,
              help="micropython: device/main.py on MicroPython's unix port (mbedTLS, littlefs, a hard heap), "
                   "as on the board; cpython: the agent in this process (TLS through Python's ssl); "
                   "wasm: the agent on the WebAssembly VM (no TLS)")
@click.option("--flash", type=click.Path(dir_okay=False, path_type=Path),
              help="flash image file (created blank if missing; kept across runs). Default: a temporary one")
@click.option("--board", "board_name", default="esp32", show_default=True, help="board definition (fleetpin boards)")
@click.option("--baud", type=click.IntRange(300, 4_000_000), help="enforce this line rate (10 bits per byte, each way)")
@click.option("--faults", help='line faults per byte, each way, e.g. "drop=0.002,flip=0.002,dup=0.001,seed=7" '
              "(0.5% of the bytes: updates get through, slower); add disconnect=P,outage=S for a loose cable")
@click.option("--device-id", help="device identity written to the flash's config.json")
@click.option("--fleet", help="fleet written to the flash's config.json")
@click.option("--clock", default="now", show_default=True, help="device clock: now, unset, or an ISO time (then it runs)")
@click.option("--seed-bundle", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="pre-install this bundle (as provisioning does); needs --signers")
@click.option("--signers", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="signer set file to store as the factory trust anchor")
@click.option("--heap-kb", type=click.IntRange(16, 65536),
              help="GC heap in KB (micropython: -X heapsize, a hard limit; the unix port is a 64-bit build, "
                   "about 1.4x the ESP32's need). Default: " + ", ".join(f"{r} {k}" for r, k in HEAP_KB.items()))
@click.option("--link", "link_path", type=click.Path(dir_okay=False, path_type=Path),
              help="also make this path a link to the pty (a port name that stays the same: -p PATH)")
@click.option("--json", "as_json", is_flag=True, help="print the port and settings as one JSON line")
def board(runtime: str, flash: Path | None, board_name: str, baud: int | None, faults: str | None,
          device_id: str | None, fleet: str | None, clock: str, seed_bundle: Path | None, signers: Path | None,
          heap_kb: int | None, link_path: Path | None, as_json: bool) -> None:
    """Open a pseudo-terminal, print its path, and run a board's agent behind it until Ctrl-C.

    A board in your fleet, trusting your signers and running your current bundle, in one
    command (as the production line would have left it):

    \b
      fleetpin sim board --fleet acme-sensors --signers signers.json --seed-bundle acme-v7.fpb --link ./board &
      export FLEETPIN_PORT=./board
      fleetpin device info
      fleetpin device update acme-v8.fpb

    Without --signers and --seed-bundle (or --fleet) the board is blank, like one fresh from
    the factory: it refuses every bundle until it is provisioned.
    """
    vb = VirtualBoard(
        flash=flash, board=board_name, runtime=runtime, baud=baud, faults=Faults.parse(faults), device_id=device_id,
        fleet=fleet, clock=clock, seed_bundle=_read(seed_bundle, "--seed-bundle"), signers=_read(signers, "--signers"),
        heap_kb=heap_kb,
    )
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with vb:
            if link_path is not None:
                _link_port(link_path, vb.port)
            blank = _blank_warning(vb)
            if blank:
                click.echo(blank, err=True)
            info = {"port": vb.port, "link": str(link_path) if link_path else None, "runtime": runtime,
                    "heap_kb": vb.heap_kb or None, "board": vb.board.name,
                    "flash": str(flash) if flash else None, "device_id": vb.device_id, "baud": baud,
                    "faults": faults}
            if as_json:
                click.echo(json.dumps(info), nl=True)
            else:
                click.echo(vb.port)
                click.echo(f"virtual {vb.board.name} board {vb.device_id} ({runtime}"
                           f"{f', heap {vb.heap_kb} KB' if vb.heap_kb else ''}"
                           f"{', ' + str(baud) + ' baud' if baud else ''}{', faults ' + faults if faults else ''}); "
                           f"flash {flash or '(temporary)'}; Ctrl-C to stop", err=True)
            try:
                while not stop.wait(0.5):
                    pass
            except KeyboardInterrupt:
                pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if link_path is not None and link_path.is_symlink():
            link_path.unlink()


def _link_port(path: Path, port: str) -> None:
    """`path` -> the pty, replacing an old link (never a file that is not a link)."""
    if path.is_symlink():
        path.unlink()
    elif path.exists():
        raise UsageError(f"--link {path}: exists and is not a link", hint="pass a new path, e.g. ./board")
    os.symlink(port, path)


def _blank_warning(vb: VirtualBoard) -> str | None:
    """What a technician must know about a board that cannot take any bundle yet."""
    from fleetpin.sim.board import SIGNERS, read_config

    cfg = read_config(vb.flash)
    missing = []
    if vb.flash.read_file(SIGNERS) is None:
        missing.append("no signer set")
    if not cfg.get("fleet"):
        missing.append("no fleet")
    if not missing:
        return None
    return (f"warning: this board has {' and '.join(missing)}, like one fresh from the factory: it refuses every "
            "bundle. For a board in your fleet: fleetpin sim board --fleet FLEET --signers signers.json "
            "--seed-bundle CURRENT.fpb")
