"""Virtual boards: the real agent behind a pseudo-terminal, its flash an image file, its clock
settable, its network loopback only. pyserial talks to `board.port` as to a board on a cable.

    with VirtualBoard(flash="dev.img", fleet="acme", device_id="dev-1") as board:
        board.port            # "/dev/pts/7"
        board.reset()         # power cycle: the agent boots again from the flash file
        board.unplug(); board.plug()
        board.run_app(fn)     # fn(agent), as /app.py's main(agent) runs on the board (CPython runtime)
    with VirtualFleet(3, fleet="acme") as fleet: [b.port for b in fleet]

Runtimes:
  "micropython" (the default) is the board itself, as near as a host gets: the real device/main.py
      on MicroPython's unix port (fleetpin.vm.unix; mbedTLS `tls`, a hard GC heap). Its
      filesystem is the flash image's, mounted with vfs.VfsLfs2 over the file; the agent runs
      from the files on that flash (main.py and /lib/pinagent/*.mpy, as `image build` installs
      them; a flash without main.py gets them installed at boot, as the production line would).
      The console is a pseudo-terminal (Ctrl-C as on the board), reached through the same Line.
      A small board-support layer (sim/unixport/) stands in for what the ESP32 has and the unix
      port lacks; device/PORTS.md lists the differences. Reset = the process is killed and
      started again; REBOOT's machine.reset() asks for exactly that.
  "cpython" runs the agent's service core in this process (a thread pumps the line); TLS goes
      through fleetpin.sim.tls (Python's ssl), not mbedTLS.
  "wasm" runs the service core on the WebAssembly MicroPython VM (fleetpin.vm.wasm.spawn_stream,
      a Node process; no tls, no socket), whose in-memory files are replayed onto the flash image
      (see vm_main.py), and restarts the VM on reboot/reset.

The agent is the real one (pinagent.agent.Agent) on every runtime. The board boots
from /fleetpin/{signers.bin, bundle.bin, config.json} on its flash; blank flash -> safe mode,
still serving the protocol. `seed_bundle` + `signers` pre-install a bundle (as provisioning does).
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import signal
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from fleetpin.errors import FleetpinError, UsageError
from fleetpin.line.boards import Board, get_board
from fleetpin.sim.flashfs import FlashError, FlashFS, board_mac, mac_text
from fleetpin.sim.line import Faults, Line

T = TypeVar("T")
RUNTIMES = ("micropython", "cpython", "wasm")
DEFAULT_RUNTIME = "micropython"
# GC heap per runtime. The unix port is a 64-bit build (objects twice as wide as on the ESP32):
# there the agent boots with a small bundle from 168 KB and takes a 4 KB update from 192 KB, an
# 8 KB one from 224 KB (measured, fleetpin 0.1.0); 256 KB leaves room for the board support.
HEAP_KB = {"micropython": 256, "wasm": 100}
CONFIG = "/fleetpin/config.json"
SIGNERS = "/fleetpin/signers.bin"
BUNDLE = "/fleetpin/bundle.bin"
_HERE = Path(__file__).resolve().parent
UNIXPORT = _HERE / "unixport"  # the board support for the "micropython" runtime (MicroPython code)
SOFT_RESET_MIN_S = 0.5  # a board that soft-resets at once boots again no faster than this
CONSOLE_KEPT = 65536  # bytes of a micropython board's console output kept for app_output()


class FlashInUse(FlashError):
    """Another virtual board is running from this flash file."""


class Clock:
    """The board's clock: POSIX seconds advancing with real time, or None (unset: an ESP32 after
    power loss reads 2000). set() changes it while the board runs."""

    def __init__(self, start: float | None) -> None:
        self.set(start)

    def set(self, t: float | None) -> None:
        self._base = t
        self._at = time.monotonic()

    def __call__(self) -> int | None:
        if self._base is None:
            return None
        return int(self._base + time.monotonic() - self._at)

    def offset(self) -> float | None:
        """Seconds to add to this host's wall clock to read this clock (None: unset)."""
        if self._base is None:
            return None
        return self._base + time.monotonic() - self._at - time.time()

    @staticmethod
    def parse(text: str | None) -> float | None:
        """"now", "unset", or an ISO 8601 time (UTC if no zone) -> POSIX seconds or None."""
        if text is None or text == "now":
            return time.time()
        if text == "unset":
            return None
        try:
            t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise UsageError(f"bad clock {text!r}", hint="now, unset, or an ISO time like 2026-01-01T00:00:00Z") from None
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.timezone.utc)
        return t.timestamp()


def _make_cpython_agent(fs: Any, clock: Clock, cfg: dict[str, Any], mac: str) -> Any:
    from pinagent.agent import Agent

    return Agent(fs, clock, cfg.get("device_id"), cfg.get("fleet"), _sim_tls(), mac=mac)


def _sim_tls() -> Any:
    """The simulation's TLS adapter for pinagent.connect (loopback only), if it is there yet."""
    try:
        from fleetpin.sim import tls
    except ImportError:
        return None
    factory = getattr(tls, "SimTls", None)
    if factory is None:
        return None
    return factory()  # its default network: every name resolves to 127.0.0.1


def read_config(flash: FlashFS) -> dict[str, Any]:
    raw = flash.read_file(CONFIG)
    try:
        obj = json.loads(raw) if raw else {}
    except ValueError:
        obj = {}
    return obj if isinstance(obj, dict) else {}


class _CPythonCore:
    """The agent in this process: bytes in from the line, bytes out to it."""

    def __init__(self, board: VirtualBoard) -> None:
        self.b = board
        self.link: Any = None
        self.svc: Any = None
        self.agent: Any = None

    def boot(self) -> None:
        from pinagent.link import DeviceLink
        from pinagent.service import Service

        b = self.b
        self.agent = _make_cpython_agent(b.flash.store_fs(), b.clock, read_config(b.flash), b.mac)
        self.agent.boot()
        self.svc = Service(self.agent)
        self.link = DeviceLink(self.svc.dispatch)
        b.line.send(bytes(self.link.announce()))

    def feed(self, data: bytes) -> None:
        out = self.link.receive_data(data)
        if out:
            self.b.line.send(bytes(out))
        if self.svc.reboot_requested:
            self.b._reboot_soon()

    def stop(self) -> None:
        self.link = None

    def close(self) -> None:
        self.stop()


class _VmCore:
    """The agent on the WebAssembly MicroPython VM ("wasm"); the flash image follows the VM's file operations."""

    def __init__(self, board: VirtualBoard) -> None:
        self.b = board
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr: collections.deque[str] = collections.deque(maxlen=50)
        self._rx = b""
        self._wlock = threading.Lock()

    def _setup(self) -> str:
        prelude = (
            "from pinagent.agent import Agent\n"
            "def make_agent(fs, clock, cfg):\n"
            f"    return Agent(fs, clock, cfg.get('device_id'), cfg.get('fleet'), None, mac={self.b.mac!r})\n"
        )
        return prelude + (_HERE / "vm_main.py").read_text()

    def boot(self) -> None:
        from fleetpin.vm import wasm

        flash = self.b.flash
        files: dict[str, bytes] = {}
        try:
            names = flash.os.listdir("/fleetpin")
        except OSError:
            names = []
        for name in names:
            data = flash.read_file("/fleetpin/" + name)
            if data is not None:
                files["/fleetpin/" + name] = data
        if not names:
            files["/fleetpin/.keep"] = b""  # the VM writes files only under existing directories
        self._rx = b""
        self.proc = wasm.spawn_stream(self._setup(), "handler", files, heap_kb=self.b.heap_kb, device_mpy=True)
        proc = self.proc
        threading.Thread(target=self._read_out, args=(proc,), daemon=True, name="vm stdout").start()
        threading.Thread(target=self._read_err, args=(proc,), daemon=True, name="vm stderr").start()
        self._send(b"")  # a clock record: the VM answers with its start-up announcement

    def _send(self, data: bytes) -> None:
        proc = self.proc
        if proc is None or proc.stdin is None:
            return
        with self.b._flash_lock:
            free, bs = self.b.flash.store_fs().free("/")
        t = self.b.clock()
        recs = struct.pack("<BIqII", 0x54, 16, -1 if t is None else t * 1000, free // bs, bs)
        if data:
            recs += struct.pack("<BI", 0x44, len(data)) + data
        with self._wlock:
            try:
                proc.stdin.write(recs)
                proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                pass  # the VM is restarting or gone; bytes lost, as on a board mid-reset

    def feed(self, data: bytes) -> None:
        self._send(data)

    def _read_err(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.stderr.append(line.decode(errors="replace").rstrip())

    def _read_out(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        buf = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while len(buf) >= 5:
                t, n = struct.unpack_from("<BI", buf)
                if len(buf) < 5 + n:
                    break
                body, buf = buf[5 : 5 + n], buf[5 + n :]
                if not self._record(proc, t, body):
                    return  # output of a VM that was reset: the board is gone

    def _record(self, proc: subprocess.Popen[bytes], t: int, body: bytes) -> bool:
        b = self.b
        try:
            with b._flash_lock:
                if proc is not self.proc:
                    return False
                if t == 0x53:
                    b.line.send(body)
                elif t == 0x57:
                    path, _, data = body.partition(b"\0")
                    with b.flash.open(path.decode(), "wb") as f:
                        f.write(data)
                elif t == 0x52:
                    src, _, dst = body.partition(b"\0")
                    b.flash.os.rename(src.decode(), dst.decode())
                elif t == 0x58:
                    b.flash.os.remove(body.decode())
                elif t == 0x4D:
                    b.flash.os.mkdir(body.decode())
                elif t == 0x42:
                    b._reboot_soon()
        except OSError as e:  # the image refused what the VM's memory file system did
            self.stderr.append(f"flash replay failed: {e}")
        return True

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                proc.kill()
            except OSError:
                pass
            proc.wait(5)
            for s in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    if s is not None:
                        s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self.stop()


class _UnixCore:
    """device/main.py on MicroPython's unix port, one process per boot (module docstring).

    The process's stdin is the slave of a pseudo-terminal of its own (its controlling terminal,
    so the line discipline can turn the interrupt character into SIGINT while kbd_intr allows
    it), its stdout a pipe: both relayed to and from the board's Line. Its stderr carries the
    board support's own messages (a machine.reset() request, a crash) and never the console."""

    RESET_REQUEST = b"fleetpin-board: reset"

    def __init__(self, board: VirtualBoard) -> None:
        self.b = board
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr: collections.deque[str] = collections.deque(maxlen=50)
        self.overruns = 0  # bytes the console dropped because the board was not reading (UART overflow)
        self.console = bytearray()  # what the board wrote on its console since this boot (the last 64 KB)
        self.console_changed = threading.Condition()
        self._master = -1
        self._out: threading.Thread | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="fleetpin-unixboard-")
        self.clock_file = Path(self._dir.name) / "clock"
        self.write_clock()

    def write_clock(self) -> None:
        """The board's clock for board_time.py: "unset", or seconds from this host's clock. Written
        in place (the board holds the file open), fixed width, so a read never sees half of it."""
        off = self.b.clock.offset()
        text = b"unset" if off is None else b"%.3f" % off
        with open(self.clock_file, "r+b" if self.clock_file.exists() else "wb") as f:
            f.write(text.ljust(24) + b"\n")

    def _install_agent(self) -> None:
        """A flash without main.py gets the agent as `fleetpin image build` installs it."""
        flash = self.b.flash
        if flash.read_file("/main.py") is not None:
            return
        from fleetpin.agent_files import board_files

        with self.b._flash_lock:
            for path, data in board_files(self.b.board.mpy_arch).items():
                flash.write_file(path, data)

    def boot(self) -> None:
        import termios
        import tty

        from fleetpin.vm import unix

        b = self.b
        try:
            binary = unix.executable()
        except FleetpinError as e:
            raise FleetpinError(f"a virtual board on the micropython runtime needs the unix port: {e}",
                                hint=f"{e.hint}; or use the CPython stand-in (--runtime cpython)") from None
        self._install_agent()
        self.write_clock()
        flash = b.flash
        bs = b.board.fs_block_size
        master, slave = os.openpty()
        try:
            tty.setraw(slave)
            attrs = termios.tcgetattr(slave)
            attrs[3] |= termios.ISIG | termios.NOFLSH  # Ctrl-C is on at power-up, as on the ESP32
            attrs[6][termios.VINTR] = b"\x03"
            for c in (termios.VQUIT, termios.VSUSP):  # only the interrupt character is special
                attrs[6][c] = b"\x00"
            termios.tcsetattr(slave, termios.TCSANOW, attrs)
            cfg = {
                "image": str(b.flash_path.resolve()), "offset": flash.fs_offset, "block_size": bs,
                "block_count": flash.fs_size // bs, "read_size": b.board.fs_read_size,
                "prog_size": b.board.fs_prog_size, "lookahead": b.board.fs_lookahead_size,
                "clock": str(self.clock_file), "tty": os.ttyname(slave), "mac": bytes(board_mac(b.flash_path)).hex(),
                "isig": termios.ISIG, "vintr": termios.VINTR,
            }
            # nothing from ~/.micropython/lib: the board support sets the board's sys.path; the REPL's history stays here
            env = {"PATH": os.environ.get("PATH", ""), "HOME": self._dir.name, "MICROPYPATH": unix.FROZEN}
            (Path(self._dir.name) / "board.json").write_text(json.dumps(cfg))
            self.proc = subprocess.Popen(
                [str(binary), "-X", f"heapsize={b.heap_kb}K", str(UNIXPORT / "_boot.py"), "board.json"],
                stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=self._dir.name, env=env,
                start_new_session=True,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        self._master = master
        with self.console_changed:
            self.console = bytearray()
        proc = self.proc
        self._out = threading.Thread(target=self._read_out, args=(proc,), daemon=True, name="board stdout")
        self._out.start()
        threading.Thread(target=self._read_err, args=(proc, time.monotonic()), daemon=True, name="board stderr").start()

    def feed(self, data: bytes) -> None:
        """Bytes from the line into the console; what the board's input buffer cannot take is
        lost, as on a UART without flow control."""
        if self._master < 0:
            return
        try:
            n = os.write(self._master, data)
        except BlockingIOError:
            n = 0
        except OSError:
            return  # the process is gone (restarting): bytes lost, as on a board mid-reset
        self.overruns += len(data) - n

    def _read_out(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            self.b.line.send(chunk)
            with self.console_changed:
                if proc is self.proc:
                    self.console += chunk
                    del self.console[:-CONSOLE_KEPT]
                    self.console_changed.notify_all()
        proc.stdout.close()

    def _read_err(self, proc: subprocess.Popen[bytes], started: float) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith(self.RESET_REQUEST):
                if proc is self.proc:
                    self.b._reboot_soon()
                continue
            self.stderr.append(line.decode(errors="replace").rstrip())
        proc.stderr.close()
        code = proc.wait()
        if proc is not self.proc:
            return  # killed by a reset or stop
        if code == 0:  # a soft reset (SystemExit, Ctrl-D at the REPL): the board boots again
            time.sleep(max(0.0, SOFT_RESET_MIN_S - (time.monotonic() - started)))  # a reset loop, not a busy one
            if proc is self.proc:
                self.b._reboot_soon()
        else:
            self.stderr.append(f"the board's process ended with code {code}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the power is cut: the board's session, at once
            except OSError:
                pass
            proc.wait(5)
            if self._out is not None:
                self._out.join(5)  # what the board wrote before the cut is on the line
        if self._master >= 0:
            os.close(self._master)
            self._master = -1

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()


class VirtualBoard:
    """One virtual board (a context manager): start() opens the pty and boots the agent.

    `flash` is the host's view of the flash image (FlashFS), opened at each boot. On the
    "micropython" runtime the board's own process writes the file while it runs, so that view
    is the flash as it was at boot: open the file again to see what the board wrote since, and
    never write through it while the board runs. heap_kb: the GC heap (HEAP_KB by runtime)."""

    def __init__(
        self,
        flash: str | Path | None = None,
        board: str | Board = "esp32",
        runtime: str = DEFAULT_RUNTIME,
        baud: int | None = None,
        faults: Faults | str | None = None,
        device_id: str | None = None,
        fleet: str | None = None,
        clock: float | str | None = "now",
        seed_bundle: bytes | None = None,
        signers: bytes | None = None,
        heap_kb: int | None = None,
    ) -> None:
        if runtime not in RUNTIMES:
            raise UsageError(f"unknown runtime {runtime!r}", hint=", ".join(RUNTIMES))
        if seed_bundle is not None and signers is None:
            raise UsageError("a seed bundle needs the signer set that verifies it", hint="pass --signers too")
        self.board = board if isinstance(board, Board) else get_board(board)
        self.runtime = runtime
        self.baud = baud
        self.faults = faults if isinstance(faults, Faults) else Faults.parse(faults)
        self.clock = Clock(Clock.parse(clock) if isinstance(clock, str) or clock is None else clock)
        self.heap_kb = heap_kb if heap_kb is not None else HEAP_KB.get(runtime, 0)
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        if flash is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="fleetpin-board-")
            flash = Path(self._tmpdir.name) / "flash.img"
        self.flash_path = Path(flash)
        self.mac = mac_text(self.flash_path)  # the base MAC its ROM bootloader reports too (a board is its flash)
        self._provision = (device_id, fleet, seed_bundle, signers)
        self.flash: FlashFS = None  # type: ignore[assignment]
        self.line: Line = None  # type: ignore[assignment]
        self._core: _CPythonCore | _VmCore | _UnixCore | None = None
        self._lock = threading.RLock()  # one feed or reset at a time
        self._flash_lock = threading.RLock()
        self._pending_reboot = False
        self._held: Any = None  # the flash file, locked while the board runs
        self.boots = 0

    # ---- lifecycle

    def start(self) -> VirtualBoard:
        self.flash = FlashFS.open_image(self.flash_path, self.board)
        try:
            self._hold_flash()
            self._provision_flash(*self._provision)
            self.line = Line(self._on_receive, self.baud, self.faults)
            cores: dict[str, type[_UnixCore | _CPythonCore | _VmCore]] = {
                "micropython": _UnixCore, "cpython": _CPythonCore, "wasm": _VmCore}
            self._core = cores[self.runtime](self)
            self._boot()
            self.line.start()
        except BaseException:
            self.stop()
            raise
        return self

    def _hold_flash(self) -> None:
        """A board runs in one place: a second board booting the same flash file (a virtual
        station given a board another one is running, a second `fleetpin sim board`) is refused,
        instead of two agents writing one filesystem. The lock goes with this process."""
        import fcntl

        held = open(self.flash_path, "rb")  # noqa: SIM115  (kept open while the board runs)
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            held.close()
            raise FlashInUse(f"{self.flash_path}: this board is already running (its flash file is in use)",
                             hint="stop the other board (or station) first") from None
        self._held = held

    def stop(self) -> None:
        if self._core is not None:
            self._core.close()
            self._core = None
        if self.line is not None:
            self.line.close()
        if self._held is not None:
            self._held.close()
            self._held = None
        if self.flash is not None:
            self.flash.close()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> VirtualBoard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> str:
        return self.line.port

    @property
    def agent(self) -> Any:
        """The running agent, as an application on the board holds it (app.main(agent)); None on
        the micropython runtime, whose agent lives in another process."""
        return getattr(self._core, "agent", None)

    @property
    def device_id(self) -> str | None:
        return read_config(self.flash).get("device_id")

    def _provision_flash(self, device_id: str | None, fleet: str | None, bundle: bytes | None, signers: bytes | None) -> None:
        from pinagent import bundle as dev_bundle
        from pinagent.store import encode_slot

        cfg = read_config(self.flash)
        changed = False
        if bundle is not None and signers is not None:
            try:
                bundle_fleet = dev_bundle.decode_unverified(bundle).fleet
            except dev_bundle.BundleError as e:
                raise UsageError(f"the seed bundle does not parse: {e}", hint="build it with fleetpin bundle build") from None
            if fleet is None and "fleet" not in cfg:
                fleet = bundle_fleet
            self.flash.write_file(SIGNERS, signers)
            self.flash.write_file(BUNDLE, encode_slot(signers, bundle))
        elif signers is not None:
            self.flash.write_file(SIGNERS, signers)
        for key, value in (("device_id", device_id), ("fleet", fleet), ("board", self.board.name)):
            if value is not None and cfg.get(key) != value:
                cfg[key] = value
                changed = True
        if "device_id" not in cfg:  # stable across restarts: the board is its flash file
            cfg["device_id"] = "sim-" + self.flash_path.stem
            changed = True
        if changed:
            self.flash.write_file(CONFIG, json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode())

    def _boot(self) -> None:
        assert self._core is not None
        with self._lock:
            self._pending_reboot = False
            self.line.discard_input()
            self._core.boot()
            self.boots += 1

    # ---- the line

    def _on_receive(self, data: bytes) -> None:
        with self._lock:
            if self._core is None:
                return
            self._core.feed(data)
        if self._pending_reboot:
            self._reboot_now()

    def _reboot_soon(self) -> None:
        """The agent asked to reboot: after its answer is on the line (CPython: now; the other
        runtimes ask from a reader thread, so a helper thread does it)."""
        self._pending_reboot = True
        if self.runtime != "cpython":
            threading.Thread(target=self._reboot_now, daemon=True).start()

    def _reboot_now(self) -> None:
        with self._lock:
            if not self._pending_reboot or self._core is None:
                return
            self.reset()

    # ---- control

    def reset(self, while_off: Callable[[FlashFS], None] | None = None) -> None:
        """Power cycle: the agent's memory is gone; it boots again from the flash file (the
        image is remounted from disk, so only what reached the file survives). while_off(flash)
        runs with the power off, as a programmer writing the flash would."""
        with self._lock, self._flash_lock:
            assert self._core is not None
            self._core.stop()
            self.flash.close()
            self.flash = FlashFS.open_image(self.flash_path, self.board, create=False)
            if while_off is not None:
                while_off(self.flash)
            self._boot()

    def install_app(self, source: str) -> None:
        """micropython runtime: `source` becomes the board's /app.py and the board is power-cycled;
        main.py runs its main(agent) after the listening window (3 s), as on the board, then
        serves the protocol again. What it prints is in app_output()."""
        if not isinstance(self._core, _UnixCore):
            raise UsageError("install_app puts an /app.py on a micropython virtual board",
                             hint="on the cpython runtime, run_app(fn) runs fn(agent) in this process")
        self.reset(lambda flash: flash.write_file("/app.py", source.encode()))

    def app_output(self, marker: str, timeout: float = 20.0) -> str:
        """micropython runtime: what follows `marker` up to the end of its line, the first time it
        appears on the console since the last boot (what the board's application printed; the
        protocol's frames may precede it on the line); FleetpinError if it did not come within
        `timeout` seconds."""
        core = self._core
        if not isinstance(core, _UnixCore):
            raise UsageError("app_output reads a micropython virtual board's console")
        want = marker.encode()
        deadline = time.monotonic() + timeout
        with core.console_changed:
            while True:
                seen = bytes(core.console)
                at = seen.find(want)
                end = seen.find(b"\n", at)
                if at >= 0 and end >= 0:
                    return seen[at + len(want):end].decode(errors="replace").strip()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FleetpinError(f"{self.device_id}: the application printed no {marker!r} line within {timeout:g} s",
                                        hint="; ".join(core.stderr) or "see the board's console")
                core.console_changed.wait(min(left, 0.5))

    def unplug(self) -> None:
        self.line.unplug()

    def plug(self) -> None:
        self.line.plug()

    def set_clock(self, t: float | None) -> None:
        self.clock.set(t)
        if isinstance(self._core, _UnixCore):
            self._core.write_clock()

    def run_app(self, fn: Callable[[Any], T]) -> T:
        """Runs fn(agent) as the board's application (main.py's app.main(agent)) would: pinned
        connections through the running agent. CPython runtime only (the VM has no network)."""
        with self._lock:
            core = self._core
            if not isinstance(core, _CPythonCore) or core.agent is None:
                raise UsageError("an application runs in this process on a cpython virtual board only",
                                 hint="on the micropython runtime, install it on the board: install_app(source)")
            return fn(core.agent)


class VirtualFleet:
    """n virtual boards at once, each with its own flash and pty; `dir` keeps their images."""

    def __init__(self, n: int, dir: str | Path | None = None, **options: Any) -> None:
        self._tmpdir = None if dir is not None else tempfile.TemporaryDirectory(prefix="fleetpin-fleet-")
        base = Path(dir if dir is not None else self._tmpdir.name)  # type: ignore[union-attr]
        base.mkdir(parents=True, exist_ok=True)
        ids = options.pop("device_ids", None) or [f"sim-{i:03d}" for i in range(n)]
        self.boards = [VirtualBoard(flash=base / f"{ids[i]}.img", device_id=ids[i], **options) for i in range(n)]

    def __enter__(self) -> VirtualFleet:
        try:
            for b in self.boards:
                b.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for b in self.boards:
            b.stop()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()

    def __iter__(self) -> Iterator[VirtualBoard]:
        return iter(self.boards)

    def __len__(self) -> int:
        return len(self.boards)

    def __getitem__(self, i: int) -> VirtualBoard:
        return self.boards[i]

    @property
    def ports(self) -> list[str]:
        return [b.port for b in self.boards]
