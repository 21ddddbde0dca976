"""`fleetpin sim board`: a virtual board on a pseudo-terminal, for trying fleetpin without
hardware (and for tests and demos). It runs the real agent -- by default device/main.py on
MicroPython's unix port with mbedTLS, else on CPython or on the WebAssembly VM -- with its flash
in an image file that survives restarts, a settable clock, loopback-only network, and optionally
the line rate and line faults of a real cable."""

from __future__ import annotations

import json
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
@click.option("--faults", help='line faults, e.g. "drop=0.01,flip=0.01,dup=0.005,disconnect=0.001,seed=7"')
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
@click.option("--json", "as_json", is_flag=True, help="print the port and settings as one JSON line")
def board(runtime: str, flash: Path | None, board_name: str, baud: int | None, faults: str | None,
          device_id: str | None, fleet: str | None, clock: str, seed_bundle: Path | None, signers: Path | None,
          heap_kb: int | None, as_json: bool) -> None:
    """Open a pseudo-terminal, print its path, and run a board's agent behind it until Ctrl-C.

    \b
    Then, in another terminal:
      fleetpin device info --port /dev/pts/N
      fleetpin device update --port /dev/pts/N bundle.bin
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
            info = {"port": vb.port, "runtime": runtime, "heap_kb": vb.heap_kb or None, "board": vb.board.name,
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
