"""The simulation: generated PKIs, loopback TLS servers, virtual boards and fleets (no hardware).

The boards run the same agent code as the ESP32 (pinagent): by default device/main.py itself on
MicroPython's unix port (mbedTLS, littlefs; fleetpin.sim.unixport boots it as the firmware does),
or the agent under CPython, with fleetpin.sim.tls as its TLS adapter over CPython's `ssl` (the
board's is pinagent.io.tls over the native `tls` module), or on the WebAssembly VM."""
