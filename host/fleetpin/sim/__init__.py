"""The simulation: generated PKIs, loopback TLS servers, virtual boards and fleets (no hardware).

The boards run the same agent code as the ESP32 (pinagent), under CPython or on the MicroPython
VM, with host adapters for what the board does natively: fleetpin.sim.tls is the TLS adapter
over CPython's `ssl` (the board's is pinagent.io.tls over the native `tls` module)."""
