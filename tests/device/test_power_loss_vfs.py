# Power cuts on MicroPython's own littlefs: the store's update (pinagent.store) on vfs.VfsLfs2,
# the filesystem driver the ESP32 firmware mounts, over a block device in RAM that cuts the
# power at every program (writeblocks) and erase (ioctl 6) of the update, once before the
# operation and once in the middle of it (a torn program or erase: its first half done). After
# each cut the board reboots (a fresh VfsLfs2 over what the flash holds) and must boot the old
# or the new bundle, verified, with the signer set it was installed under; a second boot agrees
# with the first, and the board still takes the update.
#
# test_power_loss.py sweeps the same update on faultfs's model and on littlefs-python (CPython);
# this is the MicroPython build of littlefs with the board's geometry (block 4096, read/prog 32,
# lookahead 32). Runtimes: MicroPython's unix port (tools/run_device_tests_unix.py) and the
# ESP32; CPython and the WebAssembly VM have no vfs.VfsLfs2 and skip it.

from faultfs import PowerCut, fake_bundle, fake_verify
from support import skip

from pinagent import store as S
from pinagent.install import install

BS = 4096  # the board's geometry (boards/esp32.toml)
BLOCKS = 16  # a small filesystem: a few updates' worth of blocks, and a small heap
GEOMETRY = {"readsize": 32, "progsize": 32, "lookahead": 32}
S1 = b"signers:factory-k1,k2"
S2 = b"signers:rotated-k3,k4"
SIZE = 4096  # a typical bundle
_BLANK = b"\xff" * BS


class CutFlash:
    """A block device for VfsLfs2 (the extended interface: offsets, erase by ioctl 6). Blocks
    written since reset() live apart from the base image (copy on write), so every trial starts
    from the same flash without copying all of it. arm(cut, torn): the power fails at the
    cut-th program or erase from now, after half of it if torn; then every call fails."""

    def __init__(self, base):
        self.base = base
        self.dirty = {}
        self.ops = 0
        self.cut = -1
        self.torn = False
        self.dead = False
        self.mounts = 0

    def reset(self):
        self.dirty = {}
        self.disarm()
        self.dead = False

    def arm(self, cut, torn):
        self.ops = 0
        self.cut = cut
        self.torn = torn

    def disarm(self):
        self.cut = -1

    def commit(self):
        """What is on the flash now becomes the base every reset() returns to."""
        for n, b in self.dirty.items():
            self.base[n * BS:(n + 1) * BS] = b
        self.dirty = {}

    def _block(self, n):
        b = self.dirty.get(n)
        if b is None:
            b = bytearray(memoryview(self.base)[n * BS:(n + 1) * BS])
            self.dirty[n] = b
        return b

    def _cut_now(self):
        if self.dead:
            raise PowerCut("dead")
        if self.cut < 0:
            return False
        if self.ops == self.cut:
            self.dead = True
            return True
        self.ops += 1
        return False

    def readblocks(self, n, buf, off=0):
        b = self.dirty.get(n)
        src = memoryview(b) if b is not None else memoryview(self.base)[n * BS:(n + 1) * BS]
        buf[:] = src[off:off + len(buf)]

    def writeblocks(self, n, buf, off=None):
        if off is None:  # the simple interface (littlefs does not use it): erase, then program
            self.ioctl(6, n)
            off = 0
        if self._cut_now():
            if self.torn:
                half = len(buf) // 2
                self._block(n)[off:off + half] = memoryview(buf)[:half]
            raise PowerCut("cut in a program of block %d" % n)
        self._block(n)[off:off + len(buf)] = buf

    def ioctl(self, op, arg):
        if op == 4:
            return BLOCKS
        if op == 5:
            return BS
        if op == 6:
            if self._cut_now():
                if self.torn:
                    self._block(arg)[:BS // 2] = memoryview(_BLANK)[:BS // 2]
                raise PowerCut("cut in an erase of block %d" % arg)
            self._block(arg)[:] = _BLANK
        return 0


class Mounted:
    """The flash as one mount sees it: only the newest mount reaches it. A cut leaves files open
    in the dropped mount, and MicroPython closes them when they are collected, which would write
    through a filesystem state the board no longer has (a board without power writes nothing)."""

    def __init__(self, flash):
        flash.mounts += 1
        self.flash = flash
        self.gen = flash.mounts

    def _live(self):
        if self.gen != self.flash.mounts:
            raise PowerCut("a dropped mount")
        return self.flash

    def readblocks(self, n, buf, off=0):
        self._live().readblocks(n, buf, off)

    def writeblocks(self, n, buf, off=None):
        self._live().writeblocks(n, buf, off)

    def ioctl(self, op, arg):
        if op == 4 or op == 5:
            return self.flash.ioctl(op, arg)
        return self._live().ioctl(op, arg)


class LfsOs:
    """The os calls pinagent.store.FS uses, on one VfsLfs2 object (not mounted in the VFS, so a
    filesystem left broken by a cut is simply dropped)."""

    def __init__(self, lfs):
        self.lfs = lfs

    def stat(self, path):
        return self.lfs.stat(path)

    def listdir(self, path):
        return [entry[0] for entry in self.lfs.ilistdir(path)]

    def rename(self, src, dst):
        self.lfs.rename(src, dst)

    def remove(self, path):
        self.lfs.remove(path)

    def mkdir(self, path):
        self.lfs.mkdir(path)

    def statvfs(self, path):
        return self.lfs.statvfs(path)

    def open(self, path, mode):
        return self.lfs.open(path, mode)


def _store(flash, vfs):
    fs = LfsOs(vfs.VfsLfs2(Mounted(flash), **GEOMETRY))  # mounts: fails if the cut left it unmountable
    return S.Store(S.FS(fs, fs.open), fake_verify)


def test_power_cut_at_every_program_and_erase_on_micropython_littlefs():
    try:
        import vfs

        vfs.VfsLfs2
    except (ImportError, AttributeError):
        skip("needs MicroPython's vfs.VfsLfs2 (the unix port, the ESP32)")
    old = fake_bundle(1, S1, size=SIZE)
    new = fake_bundle(2, S1, size=SIZE, rotate=S2)
    blank = bytearray(BS * BLOCKS)
    for n in range(BLOCKS):
        blank[n * BS:(n + 1) * BS] = _BLANK
    flash = CutFlash(blank)
    vfs.VfsLfs2.mkfs(flash, **GEOMETRY)
    lfs = vfs.VfsLfs2(Mounted(flash), **GEOMETRY)
    lfs.mkdir("/fleetpin")
    with lfs.open("/fleetpin/signers.bin", "wb") as f:
        f.write(S1)
    store = S.Store(S.FS(LfsOs(lfs), lfs.open), fake_verify)
    store.boot()
    install(store, old)
    flash.commit()  # the factory state every trial starts from
    blank = lfs = store = None

    expected = {1: (old, S1), 2: (new, S2)}
    seen = {}
    cuts = 0
    cut = 0
    while True:
        completed = False
        for torn in (False, True):
            flash.reset()
            store = _store(flash, vfs)
            store.boot()  # the power is good while booting
            flash.arm(cut, torn)
            try:
                install(store, new)
                completed = True
            except PowerCut:
                cuts += 1
            flash.disarm()
            flash.dead = False
            st = _store(flash, vfs).boot()  # the reboot
            assert st.mode == S.MODE_OK, (cut, torn, st.problems)
            assert st.version in expected and (st.bundle, st.signers) == expected[st.version], (cut, torn, st.version)
            assert st.decoded == {"version": st.version}  # it went through verify: verified
            assert st.version == 2 or not completed
            again = _store(flash, vfs).boot()  # its repairs changed nothing about the choice
            assert (again.version, again.bundle, again.signers) == (st.version, st.bundle, st.signers), (cut, torn)
            if st.version == 1:  # and the board still takes the update
                store = _store(flash, vfs)
                store.boot()
                install(store, new)
                assert _store(flash, vfs).boot().version == 2, (cut, torn)
            seen[st.version] = seen.get(st.version, 0) + 1
            store = st = again = None
            if completed:
                break
        if completed:
            break
        cut += 1
    print("RESULT: power loss, MicroPython VfsLfs2: %d cut points (%d programs/erases, each cut before and torn), outcomes %s" % (
        cuts, cut, sorted(seen.items())))
    assert cut > 10 and seen.get(1) and seen.get(2)
