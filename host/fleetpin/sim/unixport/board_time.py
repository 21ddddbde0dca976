# `time` on the virtual board: time() is the board's settable clock, everything else the unix
# port's. The host keeps the clock in a small file: "unset" (power lost: the board reads
# 2000-01-01 plus its uptime, as an ESP32 does), or the seconds to add to the host's clock.
# Seconds are POSIX (this port's epoch is 1970; the ESP32's is 2000: pinagent.io.console converts).
import time as _time

EPOCH_2000 = 946684800
_f = None
_start = 0


def init(path):
    global _f, _start
    _f = open(path, "rb")
    _start = _time.ticks_ms()


def time():
    _f.seek(0)
    text = _f.read(32)
    if text[:5] == b"unset" or not text:
        return EPOCH_2000 + _time.ticks_diff(_time.ticks_ms(), _start) // 1000
    return int(_time.time() + float(text))


def time_ns():
    return time() * 1000000000


def gmtime(secs=None):
    return _time.gmtime(time() if secs is None else secs)


def localtime(secs=None):
    return _time.localtime(time() if secs is None else secs)


def __getattr__(name):
    return getattr(_time, name)
