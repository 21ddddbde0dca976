"""The simulation: generated PKIs, loopback TLS servers, virtual boards and fleets (no hardware)."""
