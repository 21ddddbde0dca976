"""Runs the device-core tests (tests/device/test_*.py) on the MicroPython 1.27 WebAssembly VM.

This VM is kept for version coverage (1.27 is the release the ESP32 target ships); the heap
the agent needs is proven on real MicroPython under a hard heap (tools/run_device_tests_unix.py,
bench_agent). Its heap is 128 KB so a test module, its fixtures and the agent fit beside one
another (the test modules themselves take 20-30 KB that a board never holds).

Same tests, same asserts as under pytest.  Per test module: one fresh VM (Node process) with the
repo mirrored in its filesystem (/fp/device/pinagent, /fp/tests/device, /fp/tests/vectors).
pinagent and the tests are loaded as .mpy compiled by mpy-cross, as the agent ships to the
board (so compiling a source in the VM does not count against the heap; --source to import .py).

Heap checks (this VM never collects garbage inside a call, and grows its heap instead of
failing; see fleetpin/wasm.py):
  * each import runs as its own call, then the heap must not have grown: code + module data
    must fit the heap, or the module fails ("does not fit");
  * each test runs as its own call (garbage is collected between tests); what it keeps live
    afterwards must fit;
  * what a test allocates within its call is measured.  Over the heap, its peak live use on a
    board is unproven (the VM could not collect): reported as a "heap?" line, and a failure
    with --strict-heap.
Prints one line per failure with the traceback and one per skipped test with its reason, then
`N passed, N failed, N skipped, N heap-unproven` (passed within the heap; heap-unproven passed
but allocated past the heap in one call); exit 1 on failure.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fleetpin import agent_files
from fleetpin.errors import FleetpinError
from fleetpin.vm import wasm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from device_tests_common import HOST_PEERS, ROOT, TESTS, VECTORS, helper_modules, pinagent_imports, test_names  # noqa: E402

VM_TESTS = "/fp/tests/device"
VM_VECTORS = "/fp/tests/vectors"


@dataclass
class ModuleResult:
    name: str
    passed: int = 0
    skipped: list[str] = field(default_factory=list)  # "module::test: reason"
    failures: list[str] = field(default_factory=list)  # one entry per failed test (or module)
    heap_notes: list[str] = field(default_factory=list)
    results: list[str] = field(default_factory=list)  # "RESULT: ..." lines the tests printed
    wall_ms: float = 0.0
    vm_ms: float = 0.0


def vm_files(test_modules: list[Path], as_source: bool) -> tuple[dict[str, bytes], list[str]]:
    """The mirrored repo: device code, the test helpers and the given test modules (as .mpy
    unless as_source), and the vectors.  Test modules may live elsewhere (e.g. /tmp).

    Also returns compile errors; a module that fails to compile is left out (importers then fail).
    """
    helpers = helper_modules()
    sources = {f"{VM_TESTS}/{p.name}": p for p in [*helpers, *test_modules]}
    sources.update({f"/fp/device/fleetpin/protocol/{p.name}": p for p in HOST_PEERS})
    files: dict[str, bytes] = {}
    errors: list[str] = []
    try:
        files.update(wasm.device_files(compiled=not as_source))
    except FleetpinError:  # a module does not compile: do them one by one below, to report each
        sources.update({f"{wasm.VM_DEVICE_DIR}/{p.relative_to(ROOT / 'device').as_posix()}": p
                        for p in sorted((ROOT / "device" / "pinagent").rglob("*.py"))})
    for vm_path, host_path in sources.items():
        try:
            if as_source:
                files[vm_path] = host_path.read_bytes()
            else:
                files[vm_path[:-3] + ".mpy"] = agent_files.compile_mpy(host_path, vm_path)
        except FleetpinError as e:
            errors.append(str(e))
    if VECTORS.is_dir():
        for p in sorted(VECTORS.rglob("*")):
            if p.is_file():
                files[f"{VM_VECTORS}/{p.relative_to(VECTORS).as_posix()}"] = p.read_bytes()
    return files, errors


SETUP = "import sys\nsys.path[:0] = [%r, %r]\ndel sys\n" % (wasm.VM_DEVICE_DIR, VM_TESTS)

# One test per call.  Exceptions are caught here so the next test still runs; the allocation
# count is exact because nothing is collected within the call.
RUN_TEST = """import gc as _g, sys as _s
_a = _g.mem_alloc()
try:
    {module}.{test}()
    print("FP-RESULT pass")
except BaseException as _e:
    if type(_e).__name__ == "Skipped":
        print("FP-RESULT skip", _e)
    else:
        print("FP-RESULT fail")
        _s.print_exception(_e)
print("FP-ALLOC", _g.mem_alloc() - _a)
del _g, _s, _a
"""

LIST_TESTS = "print('FP-TESTS', sorted(n for n in dir({module}) if n.startswith('test_')))"


def kb(n: int) -> str:
    return f"{n / 1024:.0f} KB"


def run_module(path: Path, files: dict[str, bytes], selector: str | None, heap_kb: int,
               strict_heap: bool, timeout: float) -> ModuleResult:
    module = path.stem
    result = ModuleResult(module)
    names = [n for n in test_names(path) if selector is None or selector in f"{module}::{n}"]
    if not names:
        return result
    imports = [*pinagent_imports(path), "support", module]
    steps = [SETUP, *(f"import {m}" for m in imports), LIST_TESTS.format(module=module)]
    steps += [RUN_TEST.format(module=module, test=n) for n in names]
    try:
        run = wasm.run_steps(steps, files, heap_kb, timeout)
    except FleetpinError as e:
        result.failures.append(f"{module}: VM run failed: {e}")
        return result
    result.wall_ms, result.vm_ms = run.wall_ms, sum(s.ms for s in run.steps)
    limit = run.heap_initial

    # imports: an uncaught error or any heap growth fails the whole module
    n_setup = 1 + len(imports)
    for i, step in enumerate(run.steps[:n_setup]):
        what = "setting up" if i == 0 else f"importing {imports[i - 1]}"
        if step.error is not None:
            result.failures.append(f"{module}: error {what} ({len(names)} tests not run):\n{step.error}")
            return result
        if step.heap_total > limit:
            result.failures.append(
                f"{module}: does not fit a {heap_kb} KB heap: {what} grew the heap to {kb(step.heap_total)} "
                f"(live afterwards: {kb(step.heap_used)}; {len(names)} tests not run)")
            return result
    if len(run.steps) <= n_setup:
        result.failures.append(f"{module}: the VM stopped after importing")
        return result

    listed = run.steps[n_setup]
    in_vm = ast.literal_eval(listed.stdout.split("FP-TESTS", 1)[1].strip()) if listed.error is None else []
    missing = sorted(set(test_names(path)) - set(in_vm))
    if missing:
        result.failures.append(f"{module}: test functions not found in the VM: {', '.join(missing)}")

    live_before = listed.heap_used
    for name, step in zip(names, run.steps[n_setup + 1:]):
        out = step.stdout
        text, _, tail = out.rpartition("FP-ALLOC")
        allocated = int(tail.split()[0]) if tail.strip() else 0
        body, _, verdict = text.rpartition("FP-RESULT")
        if step.error is None and verdict.startswith(" skip"):
            result.skipped.append(f"{module}::{name}: {verdict[len(' skip'):].strip()}")
            live_before = step.heap_used
            continue
        ok = step.error is None and verdict.startswith(" pass")
        detail = (verdict[len(" fail"):].strip() if verdict else "") or (step.error or out).strip()
        if not ok:
            result.failures.append(f"{module}::{name}\n{body.rstrip()}\n{detail}".replace("\n\n", "\n"))
        elif step.heap_used > limit and step.heap_used > live_before:  # blame the test that grew it
            result.failures.append(f"{module}::{name}: keeps {kb(step.heap_used)} live, over the {heap_kb} KB heap")
        elif live_before <= limit < live_before + allocated:  # (over already: blamed above)
            note = f"{module}::{name}: allocated {kb(allocated)} in one call, {kb(live_before)} live before"
            if strict_heap:
                result.failures.append(note + " [--strict-heap]")
            else:
                result.heap_notes.append(note)
        else:
            result.passed += 1
        if ok:  # figures a test reports (see tests/conftest.py): shown in CI's output too
            result.results += [line for line in body.splitlines() if line.startswith("RESULT: ")]
        live_before = step.heap_used
    not_run = len(names) - (len(run.steps) - n_setup - 1)
    if not_run > 0:
        result.failures.append(f"{module}: the VM stopped; {not_run} tests not run")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="test modules (default: tests/device/test_*.py)")
    parser.add_argument("-k", dest="selector", help="only tests whose 'module::name' contains this")
    parser.add_argument("--heap-kb", type=int, default=128)
    parser.add_argument("--strict-heap", action="store_true",
                        help="fail tests that allocate more than the heap within one call")
    parser.add_argument("--source", action="store_true", help="import .py sources (compiled in the VM) instead of .mpy")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per test module")
    parser.add_argument("-v", "--verbose", action="store_true", help="print timings per module")
    args = parser.parse_args(argv)

    paths = args.files or sorted(TESTS.glob("test_*.py"))
    started = time.perf_counter()
    try:
        files, compile_errors = vm_files(paths, args.source)
    except FleetpinError as e:
        print(f"error: {e}" + (f"\n  next: {e.hint}" if e.hint else ""), file=sys.stderr)
        return 1
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:  # one Node process per module
        # biggest modules first (a rough guess at the slowest), so no long one starts last
        futures = {p: pool.submit(run_module, p, files, args.selector, args.heap_kb, args.strict_heap, args.timeout)
                   for p in sorted(paths, key=lambda p: -p.stat().st_size)}
        results = [futures[p].result() for p in paths]

    passed = sum(r.passed for r in results)
    failures = compile_errors + [f for r in results for f in r.failures]
    for r in results:
        if args.verbose:
            for note in r.heap_notes:
                print("heap? " + note)
            print(f"{r.name}: {r.passed} passed, {len(r.failures)} failed, "
                  f"VM {r.vm_ms:.0f} ms, wall {r.wall_ms:.0f} ms")
    for r in results:
        for line in r.results:
            print(f"{line} [{r.name}, MicroPython VM]")
    notes = [n for r in results for n in r.heap_notes]
    skipped = [s for r in results for s in r.skipped]
    if notes:
        print(f"heap? {len(notes)} tests passed but allocated more than the {args.heap_kb} KB heap within one call; "
              "this VM cannot collect garbage mid-call, so their peak live use is unproven (-v lists them, "
              "--strict-heap fails them)")
    for s in skipped:
        print("SKIP " + s)
    for f in failures:
        print("FAIL " + f)
    if args.verbose:
        print(f"{len(paths)} modules in {time.perf_counter() - started:.1f} s, heap {args.heap_kb} KB")
    # passed = passed within the heap; heap-unproven = passed, but the heap could not be proven
    print(f"{passed} passed, {len(failures)} failed, {len(skipped)} skipped, {len(notes)} heap-unproven")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
