# Setup code for a virtual board on the MicroPython VM (fleetpin.sim.board.VmCore sends it to
# fleetpin.vm.wasm.spawn_stream): runs the agent behind the VM's stdin/stdout. Device subset only.
#
# Stdin and stdout carry records: type u8, length u32le, payload (the pipe splits them anyhow).
#   host -> VM   T  clock i64le (POSIX ms, -1: unset), free blocks u32le, block size u32le
#                D  serial bytes received by the board
#   VM -> host   S  serial bytes the board writes
#                W  path NUL contents   a file was written and closed (LittleFS commits at close)
#                R  src NUL dst         renamed (atomic on LittleFS)
#                X  path                removed
#                M  path                directory made
#                B  (empty)             the agent asked to reboot, after the last S was written
# The VM's file system is in memory: file operations are replayed by the host on the board's
# LittleFS flash image, in order, before the serial bytes that follow them are sent, so an
# answer on the line means its flash writes are in the image.
import os
import struct
import sys

sys.path.append("/fp/sim")

from pinagent.store import FS

_clock = [None]
_vfs = [0, 4096]
_out = []
_inbuf = [b""]
_booted = [False]


def _rec(t, payload):
    _out.append(struct.pack("<BI", t, len(payload)))
    _out.append(payload)


class _JFile:
    def __init__(self, path, mode):
        self._f = open(path, mode)
        self._path = path
        self._w = "w" in mode

    def read(self, n=-1):
        if n is None or n < 0:
            return self._f.read()
        return self._f.read(n)

    def write(self, data):
        return self._f.write(data)

    def close(self):
        self._f.close()
        if self._w:
            self._w = False
            f = open(self._path, "rb")
            data = f.read()
            f.close()
            _rec(0x57, self._path.encode() + b"\x00" + data)


class _JOs:
    def stat(self, p):
        return os.stat(p)

    def listdir(self, p):
        return os.listdir(p)

    def mkdir(self, p):
        os.mkdir(p)
        _rec(0x4D, p.encode())

    def remove(self, p):
        os.remove(p)
        _rec(0x58, p.encode())

    def rename(self, a, b):
        try:
            os.remove(b)  # LittleFS renames over a file; the VM's VFS may not
        except OSError:
            pass
        os.rename(a, b)
        _rec(0x52, a.encode() + b"\x00" + b.encode())

    def statvfs(self, p):
        return (_vfs[1], _vfs[1], 0, _vfs[0], _vfs[0], 0, 0, 0, 0, 255)


def _clock_fn():
    return _clock[0]


def _boot():
    import json

    fs = FS(_JOs(), _JFile)
    try:
        cfg = json.loads(fs.read("/fleetpin/config.json", 4096))
    except Exception:
        cfg = {}
    agent = make_agent(fs, _clock_fn, cfg)  # noqa: F821 (defined by the host-written prelude)
    agent.boot()
    # imported after the boot, which forgets the update path (pinagent.forget): a Service from
    # before it would catch another ServiceError class than the one the handler raises
    from pinagent.link import DeviceLink
    from pinagent.service import Service

    svc = Service(agent)
    return svc, DeviceLink(svc.dispatch)


_svc, _link = _boot()


def handler(data):
    buf = _inbuf[0] + data
    i = 0
    n = len(buf)
    if not _booted[0]:
        _booted[0] = True
        _rec(0x53, bytes(_link.announce()))
    while n - i >= 5:
        t, ln = struct.unpack_from("<BI", buf, i)
        if n - i - 5 < ln:
            break
        body = buf[i + 5 : i + 5 + ln]
        i += 5 + ln
        if t == 0x54:
            ms, free, bs = struct.unpack("<qII", body)
            _clock[0] = None if ms < 0 else ms // 1000
            _vfs[0] = free
            _vfs[1] = bs
        elif t == 0x44:
            out = _link.receive_data(body)
            if out:
                _rec(0x53, bytes(out))
            if _svc.reboot_requested:
                _rec(0x42, b"")
                _inbuf[0] = b""
                break
    _inbuf[0] = buf[i:]
    res = b"".join(_out)
    del _out[:]
    return res
