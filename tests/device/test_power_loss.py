# Power-loss sweeps: an update (and every other storage write) replayed with the power cut at
# every file-system operation and at every byte of every write (tests/device/faultfs.py); after
# each cut the board reboots and must come up with the old or the new bundle, intact and
# verified, and must still accept the update. Each sweep prints how many cut points it tried.
# One sweep (issue 12, item 4) then damages bundle.bin after every cut of a key rotation: whatever
# the board recovers to, the signer set and the highest version it trusted must not go back.
#
# Runtimes: CPython sweeps every cut point of every scenario (stride 1). The MicroPython VM sweeps
# every cut point of the main scenario (an update over an installed bundle on LittleFS: 4,246 cut
# points, about 4 s of VM time) and every 11th of the others (STRIDE). Not for time (all of them
# exhaustive take about 19 s on the VM) but for heap: this VM never collects garbage within one
# call, and each exhaustive sweep allocates 30-90 MB in its call (about 20 KB per cut point) out of
# the ~128 MB the VM can grow by; sampling keeps every step kind (operations, and bytes of every
# write) in the other scenarios while CPython runs them all, with the same code.

import hashlib
import sys

from faultfs import LITTLEFS, WRITETHROUGH, FaultFS, PowerCut, fake_bundle, fake_verify
from support import skip

from pinagent import reports as RP
from pinagent import store as S
from pinagent.install import install

VM = sys.implementation.name == "micropython"
STRIDE = 11 if VM else 1

S1 = b"signers:factory-k1,k2"
S2 = b"signers:rotated-k3,k4"
SIZE = 4096  # a typical bundle
R = "/fleetpin/"


def _store(ffs):
    return S.Store(S.FS(ffs, ffs.open), fake_verify)


def _board(bundles, semantics=LITTLEFS, signers=S1):
    ffs = FaultFS(dirs=["/fleetpin"], semantics=semantics)
    ffs.files[R + "signers.bin"] = signers
    store = _store(ffs)
    store.boot()
    for b in bundles:
        install(store, b)
    return ffs.reboot()


def _sweep(base, action, check, stride=STRIDE):
    """Runs action(store, ffs) on copies of base, cutting the power at its k-th tick for k = 0,
    stride, 2*stride... until it completes; after each run, check(rebooted_fs, completed).
    Returns the number of cut points tried (the completing run not included)."""
    k = 0
    cuts = 0
    while True:
        ffs = base.reboot()
        store = _store(ffs)
        store.boot()  # power is good while booting: the cut counts from the update's first step
        ffs.cut_at = ffs.ticks + k
        try:
            action(store, ffs)
            completed = True
        except PowerCut:
            completed = False
        check(ffs.reboot(), completed)
        if completed:
            return cuts
        cuts += 1
        k += stride


def _shape(ffs):
    """What boot's choices depend on: which files exist and which of them are intact slots.
    Cuts that leave the same shape (e.g. every byte of a write on LittleFS) get one deep check."""
    shape = []
    for path in sorted(ffs.files):
        data = ffs.files[path]
        n = len(data)
        # an intact slot: magic, and the SHA-256 of all before its last 32 bytes is those bytes
        # (hashed in place: decode_slot's copies would add up over thousands of cut points)
        ok = n >= S.SLOT_OVERHEAD and data[:4] == S.SLOT_MAGIC and (
            hashlib.sha256(memoryview(data)[: n - 32]).digest() == data[n - 32:])
        shape.append((path, ok, n == 0))
    return tuple(shape)


class _Boots:
    """check() for a bundle update: boot yields old or new, verified; a cut during that boot
    (its repairs) changes nothing; and the board still takes the update afterwards."""

    def __init__(self, old, new, old_signers, new_signers, old_mode=S.MODE_OK, redo=True):
        self.old = old  # (version, bundle) or None for a board without one
        self.new = new
        self.signers = {None if old is None else old[0]: old_signers, new[0]: new_signers}
        self.old_mode = old_mode
        self.redo = redo
        self.boots = 0
        self.seen = {}
        self.states = {}  # flash shapes already checked in depth: most cuts leave the same one

    def _expect(self, st, completed):
        if st.version is None:
            assert self.old is None and not completed, st.problems
            assert st.mode == S.MODE_SAFE and st.bundle is None
        else:
            v, b = self.new if st.version == self.new[0] else self.old
            assert st.version == v and st.bundle == b, (st.version, st.problems)
            assert st.decoded == {"version": v}  # what verify returned: it was verified
            assert st.mode == (S.MODE_OK if v == self.new[0] else self.old_mode), (st.mode, st.problems)
        if completed:
            assert st.version == self.new[0]
        assert st.signers == self.signers[st.version]
        self.seen[st.version] = self.seen.get(st.version, 0) + 1

    def __call__(self, ffs, completed):
        st = _store(ffs.reboot()).boot()
        self.boots += 1
        self._expect(st, completed)
        key = _shape(ffs)
        if key in self.states:
            return
        self.states[key] = 1
        # a second cut, during the boot that repairs the first one's leftovers
        probe = ffs.reboot()
        _store(probe).boot()
        for j in range(probe.ticks):
            cut = ffs.reboot()
            cut.cut_at = j
            try:
                _store(cut).boot()
            except PowerCut:
                pass
            again = _store(cut.reboot()).boot()
            self.boots += 2
            assert again.version == st.version, (j, again.version, st.version, again.problems)
            assert again.bundle == st.bundle and again.signers == st.signers
        # and the board still takes the update
        if self.redo and not completed:
            store = _store(ffs.reboot())
            store.boot()
            if store.state.version != self.new[0]:
                install(store, self.new[1])
            assert store.state.version == self.new[0]
            assert _store(store.fs.os.reboot()).boot().version == self.new[0]


def _report(name, cuts, check, stride=STRIDE):
    print("RESULT: power loss, %s: %d cut points (stride %d), %d flash shapes, %d boots, outcomes (version, times) %s" % (
        name, cuts, stride, len(check.states), check.boots,
        sorted([(-1 if k is None else k, n) for k, n in check.seen.items()])))


def _update_sweep(semantics, name, stride):
    old = fake_bundle(1, S1, size=SIZE)
    new = fake_bundle(2, S1, size=SIZE)
    base = _board([old], semantics)
    check = _Boots((1, old), (2, new), S1, S1)
    cuts = _sweep(base, lambda store, ffs: install(store, new), check, stride)
    _report(name, cuts, check, stride)
    assert cuts >= SIZE // stride  # every byte of the slot write was a cut point
    assert check.seen.get(1) and check.seen.get(2)  # both outcomes happened


def test_power_cut_anywhere_in_an_update_littlefs():
    _update_sweep(LITTLEFS, "update (littlefs)", 1)  # exhaustive on both runtimes


def test_power_cut_anywhere_in_an_update_on_a_writethrough_fs():
    # torn files are durable here: only temp-then-rename keeps the bundle intact
    _update_sweep(WRITETHROUGH, "update (writethrough)", STRIDE)


def test_power_cut_anywhere_in_an_update_with_a_previous_bundle():
    b0, b1, b2 = (fake_bundle(v, S1, size=SIZE) for v in (1, 2, 3))
    base = _board([b0, b1])
    check = _Boots((2, b1), (3, b2), S1, S1)
    cuts = _sweep(base, lambda store, ffs: install(store, b2), check)
    _report("update over bin+prev", cuts, check)


def test_power_cut_anywhere_in_a_signer_rotation():
    old = fake_bundle(1, S1, size=SIZE)
    new = fake_bundle(2, S1, size=SIZE, rotate=S2)
    base = _board([old])
    check = _Boots((1, old), (2, new), S1, S2)
    cuts = _sweep(base, lambda store, ffs: install(store, new), check)
    _report("rotation", cuts, check)
    assert check.seen.get(1) and check.seen.get(2)


def test_power_cut_anywhere_in_a_rotation_then_a_damaged_bundle():
    # Issue 12, item 4: after the cut the board boots (old or new, as above); then one bit of
    # bundle.bin goes bad and it boots again. Whatever it recovers to, the signer set and the
    # highest version it trusted before the damage must not go back.
    b0, old = fake_bundle(1, S1, size=SIZE), fake_bundle(2, S1, size=SIZE)
    new = fake_bundle(3, S1, size=SIZE, rotate=S2)
    base = _board([b0, old])
    check = _Boots((2, old), (3, new), S1, S2)
    seen = {}

    def damaged(ffs, completed):
        check(ffs, completed)
        first = _store(ffs.reboot())
        st = first.boot()
        after = first.fs.os.reboot()
        after.files[R + "bundle.bin"] = _flip(after.files[R + "bundle.bin"], SIZE // 2)
        again = _store(after).boot()
        assert again.signers == st.signers, (st.version, again.version, again.problems)
        assert again.max_version >= st.version, (again.max_version, st.version)
        seen[(st.version, again.version)] = seen.get((st.version, again.version), 0) + 1

    cuts = _sweep(base, lambda store, ffs: install(store, new), damaged)
    _report("rotation, then one bit of bundle.bin damaged", cuts, check)
    print("RESULT: power loss, rotation then damage: (version before, version recovered) %s" % sorted(seen.items()))
    assert seen.get((3, 2)), seen  # rotated, then recovered to the bundle before the rotation


def test_power_cut_anywhere_in_a_reset_after_a_stolen_key():
    # A thief installed the highest version with a stolen key of S1; the rotation to S2 resets the
    # version record (pinagent.store, "A stolen key"). After every cut the board boots the thief's
    # bundle under S1 or the recovery under S2, never a mix; and once it booted the recovery, one
    # bit of damage to bundle.bin never brings the thief's version or keys back.
    top = 2**31 - 1
    b0, stolen = fake_bundle(1, S1, size=SIZE), fake_bundle(top, S1, size=SIZE, issued=4102444800)
    new = fake_bundle(5, S1, size=SIZE, rotate=S2)
    base = _board([b0, stolen])
    check = _Boots((top, stolen), (5, new), S1, S2)
    seen = {}

    def damaged(ffs, completed):
        check(ffs, completed)
        first = _store(ffs.reboot())
        st = first.boot()  # it repairs what the cut left (the record, when step 6 was cut)
        if st.version == 5:
            assert st.max_version == 5 and st.time_floor == 1700000000, (st.max_version, st.time_floor)
        after = first.fs.os.reboot()
        after.files[R + "bundle.bin"] = _flip(after.files[R + "bundle.bin"], SIZE // 2)
        again = _store(after).boot()
        if st.version == 5:
            assert again.version is None and again.signers == S2 and again.max_version == 5, (
                again.version, again.problems)
        seen[(st.version, again.version)] = seen.get((st.version, again.version), 0) + 1

    cuts = _sweep(base, lambda store, ffs: install(store, new), damaged)
    _report("reset after a stolen key", cuts, check)
    print("RESULT: power loss, reset then damage: (version before, version recovered) %s" % sorted(
        [(k, n) for k, n in seen.items()], key=lambda x: (x[0][0], -1 if x[0][1] is None else x[0][1])))
    assert check.seen.get(top) and check.seen.get(5)


def _flip(data, i):
    b = bytearray(data)
    b[i] ^= 0x01
    return bytes(b)


def test_power_cut_anywhere_in_the_first_install_on_a_factory_board():
    new = fake_bundle(1, S1, size=SIZE)
    check = _Boots(None, (1, new), S1, S1)
    cuts = _sweep(_board([]), lambda store, ffs: install(store, new), check)
    _report("first install", cuts, check)
    assert check.seen.get(None) and check.seen.get(1)


def test_power_cut_anywhere_in_an_update_of_a_recovered_board():
    b1, b2, b3 = (fake_bundle(v, S1, size=SIZE) for v in (1, 2, 3))
    base = _board([b1, b2])
    base.files[R + "bundle.bin"] = base.files[R + "bundle.bin"][:100]  # rotten: running b1
    check = _Boots((1, b1), (3, b3), S1, S1, old_mode=S.MODE_RECOVERED)
    cuts = _sweep(base, lambda store, ffs: install(store, b3), check)
    _report("update of a recovered board", cuts, check)


def test_power_cut_while_raising_the_time_floor():
    base = _board([fake_bundle(1, S1, size=SIZE, issued=1000)])
    seen = {}

    def check(ffs, completed):
        st = _store(ffs).boot()
        assert st.mode == S.MODE_OK and st.version == 1
        assert st.time_floor in (1000, 5000), st.time_floor
        assert st.time_floor == 5000 or not completed
        seen[st.time_floor] = 1

    cuts = _sweep(base, lambda store, ffs: store.raise_time_floor(5000), check, 1)
    print("RESULT: power loss, time floor: %d cut points, all recovered" % cuts)
    assert len(seen) == 2


def _report_obj(port, now):
    return {"date-time": RP.rfc3339(now), "hostname": "api.example.com", "port": port,
            "noted-hostname": "example.com", "validation-result": "mismatch",
            "served-certificate-chain": [{"depth": 0, "pin-sha256": "A" * 43 + "="}]}


def _ring(ffs):
    return RP.Reports(S.FS(ffs, ffs.open), max_entries=3)


def test_power_cut_anywhere_in_a_report_write():
    ffs = FaultFS(dirs=["/fleetpin"])
    ring = _ring(ffs)
    for port in (1, 2, 3):
        ring.add(_report_obj(port, 100))
    base = ffs.reboot()
    old = (_ring(base.reboot()).export(), _ring(base.reboot()).read())
    for name, report in (("new entry, oldest dropped", _report_obj(4, 200)), ("merge", _report_obj(2, 300))):
        ring = _ring(base.reboot())
        ring.add(report)
        new = (ring.export(), ring.read())
        assert new != old
        seen = {}

        def add(store, ffs):
            _ring(ffs).add(report)

        def check(ffs, completed):
            ring = _ring(ffs)
            got = (ring.export(), ring.read())
            assert got == new or (got == old and not completed), name
            assert ring.stats()["bad_lines"] == 0
            seen[got == new] = 1

        cuts = _sweep(base, add, check)
        print("RESULT: power loss, report %s: %d cut points (stride %d), all recovered" % (name, cuts, STRIDE))
        assert cuts > len(new[0]) // STRIDE and len(seen) == 2


# ---- the same update on the real littlefs (CPython only: littlefs-python, the C library the
# ESP32 port uses, with MicroPython's geometry), power cut at every block program and erase.
# This is what shows faultfs's LittleFS model is the real one. The VM has no littlefs binding.


class _LfsOs:
    """os-like calls over a littlefs.LittleFS, errors as OSError, as MicroPython's VfsLfs2."""

    def __init__(self, lfs):
        self.lfs = lfs

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except OSError:
            raise
        except Exception as e:  # littlefs.errors.LittleFSError(code < 0)
            raise OSError(-getattr(e, "code", -5))

    def stat(self, path):
        st = self._call(self.lfs.stat, path)
        return (0x4000 if st.type == 2 else 0x8000, 0, 0, 0, 0, 0, st.size, 0, 0, 0)

    def listdir(self, path):
        return self._call(self.lfs.listdir, path)

    def rename(self, a, b):
        self._call(self.lfs.rename, a, b)

    def remove(self, path):
        self._call(self.lfs.remove, path)

    def mkdir(self, path):
        self._call(self.lfs.mkdir, path)

    def statvfs(self, path):
        free = self.lfs.block_count - self.lfs.used_block_count
        return (4096, 4096, self.lfs.block_count, free, free, 0, 0, 0, 0, 255)

    def open(self, path, mode):
        return self._call(self.lfs.open, path, mode)


def test_power_cut_at_every_flash_program_on_real_littlefs():
    try:
        import littlefs
        from littlefs.context import UserContext
    except ImportError:
        skip("littlefs-python (the littlefs C library) is CPython only")

    class CutFlash(UserContext):
        """Flash that photographs itself just before its n-th program or erase: the state a
        power cut there leaves (a half-done program is caught by littlefs's CRCs likewise)."""

        def __init__(self, buffer, cut):
            super().__init__(buffer=buffer)
            self.calls = 0
            self.cut = cut
            self.photo = None

        def _step(self):
            if self.calls == self.cut:
                self.photo = bytes(self.buffer)
            self.calls += 1

        def prog(self, cfg, block, off, data):
            self._step()
            return super().prog(cfg, block, off, data)

        def erase(self, cfg, block):
            self._step()
            return super().erase(cfg, block)

    geometry = dict(block_size=4096, block_count=32, read_size=32, prog_size=32, lookahead_size=32, block_cycles=100)

    def mount(image, cut=-1):
        flash = CutFlash(bytearray(image), cut)
        lfs = littlefs.LittleFS(context=flash, mount=True, **geometry)
        return flash, S.FS(_LfsOs(lfs), _LfsOs(lfs).open)

    old = fake_bundle(1, S1, size=SIZE)
    new = fake_bundle(2, S1, size=SIZE, rotate=S2)
    flash = CutFlash(bytearray(b"\xff" * 4096 * 32), -1)
    lfs = littlefs.LittleFS(context=flash, mount=False, **geometry)
    lfs.format()
    lfs.mount()
    lfs.mkdir("/fleetpin")
    with lfs.open("/fleetpin/signers.bin", "wb") as f:
        f.write(S1)
    store = S.Store(S.FS(_LfsOs(lfs), _LfsOs(lfs).open), fake_verify)
    store.boot()
    install(store, old)
    lfs.unmount()
    image = bytes(flash.buffer)

    seen = {}
    cut = 0
    while True:
        flash, fs = mount(image, cut)
        store = S.Store(fs, fake_verify)
        store.boot()
        install(store, new)
        if flash.photo is None:  # the update needed fewer programs than `cut`: all tried
            break
        _, fs = mount(flash.photo)
        st = S.Store(fs, fake_verify).boot()
        assert st.mode == S.MODE_OK, (cut, st.problems)
        assert (st.version, st.bundle, st.signers) in ((1, old, S1), (2, new, S2)), (cut, st.version)
        seen[st.version] = seen.get(st.version, 0) + 1
        cut += 1
    print("RESULT: power loss, real littlefs: %d cut points (every program/erase), outcomes %s" % (cut, sorted(seen.items())))
    assert seen.get(1) and seen.get(2)
