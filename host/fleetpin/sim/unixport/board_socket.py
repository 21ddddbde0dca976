# `socket` on the virtual board: its network is loopback only. Every host name resolves to
# 127.0.0.1 (where the simulation's servers listen), whatever DNS would say; everything else is
# the unix port's socket module.
import socket as _socket


def getaddrinfo(host, port, af=0, type=0, proto=0, flags=0):
    return _socket.getaddrinfo("127.0.0.1", port, _socket.AF_INET, type, proto, flags)


def __getattr__(name):
    return getattr(_socket, name)
