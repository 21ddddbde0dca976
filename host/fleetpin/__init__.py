"""fleetpin: the host tool for pinned ESP32 fleets."""

__version__ = "0.1.0"
