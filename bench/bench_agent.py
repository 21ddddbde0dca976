"""The agent's RAM on the MicroPython VM (100 KB initial heap), as the board would hold it:
modules loaded from .mpy (as `fleetpin image build` installs them), the agent booted from its
flash (a bundle of 3 domains and 2 CA certificates), then the serial service loaded, then one
pin decision of the connection path.

Printed: live heap after each stage (garbage collected between stages: each is its own
top-level call, the only place this VM collects), split into code and data. On a production
build with pinagent frozen into the firmware, the bytecode stays in flash and only the data
part uses the heap.
"""

from __future__ import annotations

import time

from bench.bench_bundle import FLEET, make_case
from fleetpin.sim.pki import make_pki
from fleetpin.vm import wasm
from pinagent import store as dev_store

STAGES = [
    ("baseline", "import gc"),
    ("agent code (agent, store, bundle, policy, ecdsa, der, pins, reports, connect)",
     "from pinagent import agent as A, store as S, bundle, policy, ecdsa, der, pins, reports, connect, signers"),
    ("booted agent: verified bundle, policy, reports ring",
     "import os\nAG = A.Agent(S.FS(os, open), lambda: NOW, 'bench-1', %r, None)\nAG.boot()\n"
     "assert AG.state.mode == 'ok', AG.state.mode"),
    ("serial service code (service, link)", "from pinagent import service, link\nSVC = service.Service(AG)\nLNK = link.DeviceLink(SVC.dispatch)"),
    ("one pin decision on a 3-certificate chain (kept: the last verdict)",
     "CH = connect.PinCheck(AG.state.decoded.policy, 'api.bench.test', NOW, 0)\n"
     "for depth in (2, 1, 0):\n    CH.on_cert(CERTS[depth], depth)\nassert CH.verdict.allowed, CH.verdict.reason"),
]


def run() -> None:
    data, signers, _ = make_case()
    pki = make_pki("api.bench.test", namespace="fleetpin-bench-bundle")
    chain = pki.chain_der("leaf", with_root=True)
    files = {
        "/fleetpin/signers.bin": signers,
        "/fleetpin/bundle.bin": dev_store.encode_slot(signers, data),
        **{f"/bench/c{i}.der": d for i, d in enumerate(chain)},
    }
    setup = "NOW = %d\nCERTS = [open('/bench/c%%d.der' %% i, 'rb').read() for i in range(3)]" % int(time.time())
    steps = ["import sys\nsys.path.insert(0, %r)" % wasm.VM_DEVICE_DIR, setup]
    steps += [code % FLEET if "%r" in code else code for _, code in STAGES]
    run_ = wasm.run_steps(steps, {**wasm.device_files(compiled=True), **files}, heap_kb=100)
    failed = next((s for s in run_.steps if s.error is not None), None)
    if failed is not None:
        raise wasm.VMError(failed.error or "")
    used = [s.heap_used for s in run_.steps[2:]]
    base = used[0]
    print(f"   live heap on the VM (bundle {len(data)} bytes), collected between stages:")
    for (name, _), before, after in zip(STAGES[1:], used, used[1:]):
        print(f"   {(after - before) / 1024:6.1f} KB  {name}")
    code = (used[1] - used[0]) + (used[3] - used[2])
    total = used[-1] - base
    print(f"   {total / 1024:6.1f} KB  in all: {code / 1024:.1f} KB of it the modules (.mpy code and their globals), "
          f"{(total - code) / 1024:.1f} KB data")
    print("   frozen into the firmware, the bytecode stays in flash: the agent then needs the data part only")
