"""The agent's heap on real MicroPython (unix port, 64-bit) against the wasm VM (32-bit), in one run.

Per pinagent module, in dependency order, each import its own step with garbage collected
after it: the live heap the module adds (its bytecode and globals), loaded from .mpy (as
`fleetpin image build` installs it) and from source.  Then the booted agent's data (the same
bundle as bench_agent).  The ratio unix/VM of the totals is the factor to scale an ESP32 heap
budget by on the unix port (tools/run_device_tests_unix.py --ratio). Last, the code an update's
commit holds on the 32-bit heap (its peak: the booted agent's modules with the whole update path),
against the 64 KB the whole life must fit in.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench import TARGET_KB
from bench.bench_bundle import FLEET, make_case
from fleetpin.vm import unix
from fleetpin.vm import wasm as mpvm
from pinagent import store as dev_store
from pinagent.io.console import SESSION_MODULES

MODULES = ["pinagent", "pinagent.der", "pinagent.pins", "pinagent.policy", "pinagent.store", "pinagent.ecdsa",
           "pinagent.signers", "pinagent.bundle", "pinagent.connect", "pinagent.install", "pinagent.reports", "pinagent.agent",
           "pinagent.policy_load", "pinagent.handler", "pinagent.link", "pinagent.service", "pinagent.io",
           "pinagent.io.flash", "pinagent.io.tls", "pinagent.io.console", "pinagent.io.board"]
# What an update's commit holds (its heap peak): every module here but the application's connection
# code (tests/device/test_console.py, ...never_loads_the_applications_connection_code); the
# session's share is what it loads and forgets (pinagent.io.console.SESSION_MODULES).
NOT_AT_COMMIT = ("pinagent.connect",)
# (the boot forgets the bundle decoder on MicroPython: not here, where every module stays to be weighed)
BOOT = ("pinagent.agent.forget = lambda *names: None\n"
        "AG = pinagent.agent.Agent(pinagent.store.FS(os, open), lambda: NOW, 'bench-1', %r, None)\n"
        "AG.boot()\nassert AG.state.mode == 'ok', AG.state.mode")

# On the unix port: one process, live heap after each step (gc.collect() works mid-script there).
UNIX_SCRIPT = """\
import gc, os, sys, vfs
vfs.mount(vfs.VfsPosix(sys.argv[-1]), '/fleetpin')
NOW = %d
gc.collect()
print('FP', 'baseline', gc.mem_alloc())
for name in %r:
    __import__(name)
    gc.collect()
    print('FP', name, gc.mem_alloc())
import pinagent
%s
gc.collect()
print('FP', 'booted', gc.mem_alloc())
"""


def unix_steps(compiled: bool, flash: Path, now: int, modules: list[str] = MODULES) -> dict[str, int]:
    with tempfile.TemporaryDirectory(prefix="fleetpin-bench-") as tmp:
        lib = unix.install_pinagent(Path(tmp) / "lib", compiled=compiled)
        script = Path(tmp) / "bench.py"
        script.write_text(UNIX_SCRIPT % (now, modules, BOOT % FLEET))
        done = unix.run(script, heap="heapsize=4M", path=[lib], args=[str(flash)])
    if not done.ok:
        raise RuntimeError(done.output)
    return {line.split()[1]: int(line.split()[2]) for line in done.stdout.splitlines() if line.startswith("FP ")}


def vm_steps(compiled: bool, files: dict[str, bytes], now: int, modules: list[str] = MODULES) -> dict[str, int]:
    steps = ["import sys\nsys.path.insert(0, %r)\nimport os\nNOW = %d" % (mpvm.VM_DEVICE_DIR, now)]
    steps += [f"import {name}" for name in modules] + ["import pinagent\n" + BOOT % FLEET]
    run = mpvm.run_steps(steps, {**mpvm.device_files(compiled=compiled), **files}, heap_kb=100)
    failed = next((s for s in run.steps if s.error is not None), None)
    if failed is not None:
        raise mpvm.VMError(failed.error or "")
    used = [s.heap_used for s in run.steps]
    return dict(zip(["baseline", *modules, "booted"], used))


def deltas(steps: dict[str, int]) -> dict[str, int]:
    names = list(steps)
    return {b: steps[b] - steps[a] for a, b in zip(names, names[1:])}


def run() -> None:
    data, signers, _ = make_case()
    now = int(time.time())
    with tempfile.TemporaryDirectory(prefix="fleetpin-flash-") as tmp:
        flash = Path(tmp)
        (flash / "signers.bin").write_bytes(signers)
        (flash / "bundle.bin").write_bytes(dev_store.encode_slot(signers, data))
        vm_files = {"/fleetpin/signers.bin": signers, "/fleetpin/bundle.bin": dev_store.encode_slot(signers, data)}
        table = {(rt, c): deltas(unix_steps(c, flash, now) if rt == "unix" else vm_steps(c, vm_files, now))
                 for rt in ("unix", "vm") for c in (True, False)}
    print("   live heap each step adds (KB), garbage collected: unix = real MicroPython 64-bit, vm = wasm 32-bit")
    print(f"   {'step':<22} {'unix .mpy':>9} {'vm .mpy':>8} {'ratio':>6}   {'unix .py':>8} {'vm .py':>7} {'ratio':>6}")
    for name in [*MODULES, "booted"]:
        row = [table[k][name] for k in (("unix", True), ("vm", True), ("unix", False), ("vm", False))]
        r1 = f"{row[0] / row[1]:.2f}" if row[1] else "-"
        r2 = f"{row[2] / row[3]:.2f}" if row[3] else "-"
        label = name.removeprefix("pinagent.") if name != "booted" else "booted agent (data)"
        print(f"   {label:<22} {row[0] / 1024:9.1f} {row[1] / 1024:8.1f} {r1:>6}   {row[2] / 1024:8.1f} {row[3] / 1024:7.1f} {r2:>6}")
    for compiled in (True, False):
        u = sum(v for k, v in table[("unix", compiled)].items() if k != "booted")
        v = sum(v for k, v in table[("vm", compiled)].items() if k != "booted")
        ub, vb = table[("unix", compiled)]["booted"], table[("vm", compiled)]["booted"]
        kind = ".mpy" if compiled else "source"
        print(f"   all modules ({kind}): unix {u / 1024:.1f} KB, vm {v / 1024:.1f} KB, ratio {u / v:.2f}; "
              f"with the booted agent: ratio {(u + ub) / (v + vb):.2f}")
    vm = table[("vm", True)]
    held = sum(v for k, v in vm.items() if k in MODULES and k not in NOT_AT_COMMIT)
    session = sum(vm[k] for k in SESSION_MODULES if k in vm)  # (pinagent.installed is the boot's: not weighed)
    print(f"   code an update's commit holds (.mpy, 32-bit): {held / 1024:.1f} KB, before any data "
          f"(target for the whole life: {TARGET_KB} KB); of it the update session's {session / 1024:.1f} KB, "
          f"the rest {(held - session) / 1024:.1f} KB")
