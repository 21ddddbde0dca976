# Hardware adapters (tls sockets, flash files, console) for the ESP32; nothing runs at import.
