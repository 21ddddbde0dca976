"""The host end of the serial protocol (device/PROTOCOL.md): sans-I/O, used by the field
commands and the production line alike. Kept MicroPython-compatible: the device tests run it
as the device's peer."""
