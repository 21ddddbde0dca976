# A fault-injecting, in-memory file system that stands in for MicroPython's `os` + `open` on
# an ESP32's LittleFS, for the device-core tests (CPython and the MicroPython VM alike).
#
# It offers the os subset the agent uses (open "rb"/"wb", read, write, close, rename, remove,
# stat, listdir, mkdir, statvfs), counts every operation and every written byte as a "tick",
# and cuts the power at a chosen tick: the operation at that tick does not happen, PowerCut is
# raised, and every later call raises PowerCut too (a dead board runs no cleanup code).
# reboot() then gives a fresh file system holding only what was durable.
#
# What survives a cut ("littlefs" semantics, the default). littlefs is copy-on-write and
# commits metadata atomically (littlefs DESIGN.md, "power-loss resilience"); checked here
# against the real littlefs (littlefs-python 0.12+, block 4096, prog 32) by cutting power at
# every block prog/erase of the same sequences:
#   - open(path, "wb") of a NEW file commits an empty entry at once (lfs_file_opencfg with
#     LFS_O_CREAT commits the name): after a cut the file exists, empty.
#   - open(path, "wb") of an EXISTING file truncates only in RAM (LFS_O_TRUNC marks the file
#     dirty): until close the old contents stay.
#   - written bytes are invisible until close (close = lfs_file_sync: one atomic metadata
#     commit); a cut before close leaves the state as of open.
#   - rename (even over an existing target), remove and mkdir are single atomic commits.
#   - there is no os.sync on LittleFS: close is the durability point.
# A cut "at" an operation means power fails before it takes effect; the next tick is the
# state just after it, so both sides of every commit are tried.
#
# "writethrough" semantics is a deliberately worse file system (FAT-like, no copy-on-write):
# "wb" truncates at once and every landed byte is durable, so a cut mid-write leaves a torn
# file. Storage code that only ever writes temp files and renames them survives both.

ENOENT = 2
EIO = 5
EEXIST = 17
EISDIR = 21
EINVAL = 22
ENOSPC = 28
ENOTEMPTY = 39

LITTLEFS = "littlefs"
WRITETHROUGH = "writethrough"


class PowerCut(BaseException):
    """The power failed. A BaseException, so `except Exception` in the code under test cannot
    swallow it and carry on writing, which a real board could not do either."""


def _parent(path):
    i = path.rfind("/")
    return "/" if i <= 0 else path[:i]


def _blocks(n, block):
    return (n + block - 1) // block


class FaultFS:
    """os-like file system over a dict of durable files {path: bytes} and a set of dirs."""

    def __init__(self, files=None, dirs=None, cut_at=None, semantics=LITTLEFS, blocks=256, block=4096):
        self.files = dict(files or {})
        self.dirs = set(dirs or ())
        self.dirs.add("/")
        self.cut_at = cut_at  # tick at which the power fails; None: never
        self.semantics = semantics
        self.blocks = blocks  # capacity, for ENOSPC and statvfs
        self.block = block
        self.ticks = 0
        self.dead = False
        self.counts = {}  # op name -> calls, for tests that assert what an operation did
        self._faults = []  # [op, path, errno, remaining]
        self._open = []  # write handles not yet closed (their bytes use space too)

    # ---- test controls

    def reboot(self):
        """A fresh board over what was durable: open handles gone, power on, no cut planned."""
        return FaultFS(self.files, self.dirs, None, self.semantics, self.blocks, self.block)

    def fail(self, op, path=None, errno=EIO, times=1):
        """The next `times` calls of op (on path, or any path) raise OSError(errno)."""
        self._faults.append([op, path, errno, times])

    def used_blocks(self):
        # two blocks of metadata (the root directory's pair); small files are inlined in the
        # metadata (littlefs inline_max is at most block/8); others take whole blocks
        n = 2
        for data in self.files.values():
            n += self._file_blocks(len(data))
        for h in self._open:
            n += self._file_blocks(len(h.buf))
        return n

    def _file_blocks(self, size):
        return 0 if size <= self.block // 8 else _blocks(size, self.block)

    # ---- ticks and faults

    def _tick(self, op, path):
        if self.dead:
            raise PowerCut("dead")
        if self.cut_at is not None and self.ticks >= self.cut_at:
            self.dead = True
            raise PowerCut("cut at tick %d (%s %s)" % (self.ticks, op, path))
        self.ticks += 1
        self.counts[op] = self.counts.get(op, 0) + 1
        for f in self._faults:
            if f[0] == op and (f[1] is None or f[1] == path) and f[3] > 0:
                f[3] -= 1
                raise OSError(f[2])

    # ---- the os subset

    def open(self, path, mode="r"):
        self._tick("open", path)
        if path in self.dirs:
            raise OSError(EISDIR)
        if mode in ("r", "rb"):
            if path not in self.files:
                raise OSError(ENOENT)
            return _Reader(self, path, self.files[path])
        if mode in ("w", "wb"):
            if _parent(path) not in self.dirs:
                raise OSError(ENOENT)
            if path not in self.files or self.semantics == WRITETHROUGH:
                self.files[path] = b""  # the create (or the truncate) is committed now
            h = _Writer(self, path)
            self._open.append(h)
            return h
        raise OSError(EINVAL)

    def rename(self, src, dst):
        self._tick("rename", src)
        if src not in self.files:
            raise OSError(ENOENT)
        if dst in self.dirs or _parent(dst) not in self.dirs:
            raise OSError(EISDIR if dst in self.dirs else ENOENT)
        self.files[dst] = self.files.pop(src)  # one atomic commit, replacing dst

    def remove(self, path):
        self._tick("remove", path)
        if path in self.files:
            del self.files[path]
        elif path in self.dirs and path != "/":
            if self.listdir(path, tick=False):
                raise OSError(ENOTEMPTY)
            self.dirs.discard(path)
        else:
            raise OSError(ENOENT)

    def mkdir(self, path):
        self._tick("mkdir", path)
        if path in self.files or path in self.dirs:
            raise OSError(EEXIST)
        if _parent(path) not in self.dirs:
            raise OSError(ENOENT)
        self.dirs.add(path)

    def stat(self, path):
        self._tick("stat", path)
        if path in self.dirs:
            return (0x4000, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        if path in self.files:
            return (0x8000, 0, 0, 0, 0, 0, len(self.files[path]), 0, 0, 0)
        raise OSError(ENOENT)

    def listdir(self, path="/", tick=True):
        if tick:
            self._tick("listdir", path)
        if path not in self.dirs:
            raise OSError(ENOENT)
        prefix = "/" if path == "/" else path + "/"
        names = []
        for p in list(self.files) + list(self.dirs):
            if p != "/" and p.startswith(prefix) and "/" not in p[len(prefix):]:
                names.append(p[len(prefix):])
        names.sort()
        return names

    def statvfs(self, path="/"):
        self._tick("statvfs", path)
        free = max(0, self.blocks - self.used_blocks())
        return (self.block, self.block, self.blocks, free, free, 0, 0, 0, 0, 255)


class _Reader:
    def __init__(self, fs, path, data):
        self.fs = fs
        self.path = path
        self.data = data  # a snapshot: what was durable at open
        self.pos = 0

    def read(self, n=-1):
        self.fs._tick("read", self.path)
        end = len(self.data) if n is None or n < 0 else min(len(self.data), self.pos + n)
        out = self.data[self.pos:end]
        self.pos = end
        return out

    def close(self):
        self.fs._tick("close", self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Writer:
    def __init__(self, fs, path):
        self.fs = fs
        self.path = path
        self.buf = bytearray()
        self.closed = False

    def write(self, data):
        fs = self.fs
        if fs.dead:
            raise PowerCut("dead")
        n = len(data)
        # one tick per byte (at least one per call): a cut at byte k lands bytes [0, k)
        if fs.cut_at is not None and fs.ticks + max(n, 1) > fs.cut_at:
            self._land(data[: fs.cut_at - fs.ticks])
            fs.ticks = fs.cut_at
            fs.dead = True
            raise PowerCut("cut in write of %s" % self.path)
        fs.ticks += max(n, 1) - 1
        fs._tick("write", self.path)
        if fs.used_blocks() - fs._file_blocks(len(self.buf)) + fs._file_blocks(len(self.buf) + n) > fs.blocks:
            raise OSError(ENOSPC)
        self._land(data)
        return n

    def _land(self, data):
        self.buf.extend(data)
        if self.fs.semantics == WRITETHROUGH:
            self.fs.files[self.path] = bytes(self.buf)

    def close(self):
        fs = self.fs
        fs._tick("close", self.path)
        if not self.closed:
            self.closed = True
            fs._open.remove(self)
            fs.files[self.path] = bytes(self.buf)  # the atomic commit of the new contents

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---- a stand-in for the signed bundle codec, so the storage tests need no real signatures
# A fake bundle: b"TB" | u32 version | u32 issued | u16 rotate_len | rotate (new signer set) |
# padding | SHA-256(signers + everything before). "Signed by" a signer set = hashed with it.

import hashlib as _hashlib
import struct as _struct


class FakeRefused(Exception):
    """What fake_verify raises; `reason` is signature / rollback / same_version / malformed."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def fake_bundle(version, signers, size=300, issued=1700000000, rotate=b""):
    head = b"TB" + _struct.pack("<IIH", version, issued, len(rotate)) + rotate
    pad = max(0, size - len(head) - 32)
    body = head + bytes((version + i) & 0xFF for i in range(pad))
    return body + _hashlib.sha256(signers + body).digest()


def fake_keys(signers):
    """The fake signer set's keys (b"signers:name1,name2"), as store voucher ids (8 bytes each)."""
    names = bytes(signers).split(b":", 1)[-1].split(b",")
    return b"".join(_hashlib.sha256(n).digest()[:8] for n in names if n)


def _ids(keys):
    return [keys[i:i + 8] for i in range(0, len(keys), 8)]


def fake_verify(data, signers, installed_version):
    """The contract of store.Store's verify: a store.Verified, or raise. Every key of the signing
    set signed; a bundle that rotates (a new set) at or below the installed version is returned
    with the refusal in .below, as the agent's verify does."""
    from pinagent.store import Verified

    n = len(data)
    if n < 44 or bytes(data[:2]) != b"TB":
        raise FakeRefused("malformed")
    h = _hashlib.sha256(signers)
    h.update(memoryview(data)[: n - 32])  # hashed in place: the sweeps run thousands of boots
    if h.digest() != bytes(data[n - 32:]):
        raise FakeRefused("signature")
    version, issued, n = _struct.unpack("<IIH", bytes(data[2:12]))
    rotate = bytes(data[12:12 + n])
    below = None
    if installed_version is not None:
        if version == installed_version:
            below = FakeRefused("same_version")
        if version < installed_version:
            below = FakeRefused("rollback")
        if below is not None and not n:
            raise below
    keys = b""  # at boot nothing is verified: who signed is not known
    if installed_version is not None:  # the signing set's keys that stay trusted after it
        signed, kept = _ids(fake_keys(signers)), _ids(fake_keys(rotate if n else signers))
        keys = b"".join([k for k in signed if k in kept])
    return Verified({"version": version}, version, issued, rotate if n else bytes(signers), keys,
                    fake_keys(rotate) if n else None, below)
