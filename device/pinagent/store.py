"""Device storage that survives power loss: installed bundle, last good bundle, trusted signer
set, time floor and counters, on the board's LittleFS through an injected file system.

Files (root /fleetpin):
    bundle.bin    the installed bundle, as a slot (below)
    bundle.new    temp slot while an update is written; used only if bundle.bin is gone or bad
    bundle.prev   the bundle installed before bundle.bin (last good), as a slot
    signers.bin   the factory trust anchor (signer set bytes, written at provisioning, never
                  rewritten by the agent)
    state.bin     the trust record: highest version installed, the signer set trusted for the
                  next update, time floor and counters (binary record with a digest); state.new
                  is its temp
    reports.bin   failure reports (pinagent.reports)
    upload.part   the received start of an upload a session left uncommitted (written and
                  read by pinagent.handler; upload.new is its temp); a spare, dropped when a
                  commit needs its room
    bundle.idx    the installed bundle decoded, so a boot needs no decoder (pinagent.installed;
                  bundle.idt is its temp); used only for the slot it names

Slot format (one file = one atomic rename commits both the bundle AND the signer set it was
accepted under, so a rotation can never be half applied):
    b"FPS1" | u16 signers_len | u32 bundle_len | signers | bundle | SHA-256 of everything before
The signer set stored with a bundle is the one that verified it at install time. The set trusted
for the NEXT update is the bundle's own replacement set if it carries one (rotation), else that
same set; `verify` (injected) says which. So a rotation takes effect exactly when its bundle is
installed. It is never undone: the trust record in state.bin keeps the highest version installed
and the signer set trusted after it, so a recovery to bundle.prev (bundle.bin damaged) runs the
older bundle's pins but keeps trusting the newer signers and refusing older versions; otherwise a
retired key, perhaps a compromised one, would be trusted again. The factory signers.bin is only
the anchor for a board that has never installed a bundle.

Threat model: authenticity is established once, by the signature check at install time. At boot
the store re-checks each slot's digest against corruption, torn or stale files, and runs `verify`
with installed_version None, which the agent makes a decode without any signature check (so a
wake from deep sleep pays no ECDSA), or a read of the slot's decoded form (pinagent.installed); it
does not defend against someone who can write the flash (they could replace the agent).

Injected verification (the agent wires pinagent.bundle and pinagent.signers into it):
    verify(bundle_bytes, signers_bytes, installed_version) -> Verified(bundle, version, issued,
        next_signers)   or raise any Exception to refuse.
    installed_version is None at boot (loading what is installed: no rollback or same-version
    check, and no from-the-future check against a clock that may read 2000), else the version
    an update must exceed. Its exceptions reach the caller of install() unchanged.

Update (install), in this order; each step is one atomic LittleFS commit:
    1. verify against the trusted signer set and installed version (nothing written if refused)
    2. remove a stale bundle.new; write bundle.new, close (its contents commit at close)
    3. read bundle.new back, compare its digest with what was written
    4. if bundle.bin is the good bundle in use: rename bundle.bin -> bundle.prev
    5. rename bundle.new -> bundle.bin                        (the commit point)
       (if 4 or 5 fails, bundle.prev is renamed back; if even that fails, boot finishes step 5)
    6. write state.new, rename -> state.bin (max version, the signer set now trusted, time
       floor, update count); a cut before it leaves the newest trust in bundle.bin only, and the
       next boot writes the record again
Boot (never raises; repairs are best effort and each is atomic):
    - bundle.bin whose slot digest is good and that verifies -> mode "ok"; a bundle.new beside
      it is an update cut before step 5: removed.
    - else bundle.new that checks and verifies -> mode "ok": an update cut between steps 4 and
      5 (or bundle.bin rotted meanwhile); finished by renaming it to bundle.bin.
    - else bundle.prev that checks and verifies -> mode "recovered-previous"; bundle.bin is
      left as it is (the next update replaces it, and bundle.prev is then kept).
    - else mode "safe-no-bundle".
    So after a power cut at any point of an update, boot yields the old or the new bundle.
    Missing, empty, truncated, oversized, corrupt or junk files are each a problem string in
    BootState.problems, never an exception.
Trusted signers for the next update, and the highest version: never backwards. Two copies hold
the newest: the trust record (state.bin) and the installed slot (bundle.bin), so one damaged file,
or a power cut at any point, cannot take them back (tests/device/test_power_loss.py damages
bundle.bin after a cut at every point of a rotation):
    - the loaded bundle's next_signers if its version is at least the record's max version;
    - else the record's signer set (the loaded bundle is older: a recovery);
    - with neither, the signer set of the first slot whose digest is good even if its bundle no
      longer verifies (so a fleet that rotated away from the factory keys stays updatable); else
      signers.bin; else none (updates refused with NoTrustAnchor: the board needs reprovisioning).
    Max version: the larger of the record's and the loaded bundle's. Boot writes the record again
    when it is missing, damaged, from an older agent or behind the slots (an update cut before
    step 6), so both copies hold the newest again; a normal boot writes nothing.
Time floor: the larger of state.bin's and the loaded bundle's issue time (so losing state.bin
never lowers it below what the bundle proves).
Rollback: verify gets the loaded bundle's version (0 in safe mode) as installed_version, and the
store also refuses (Rollback) any version below the highest ever installed (state.bin), so after a
recovery the lost newest version can be sent again (a bundle the current signers sign), but
nothing older, with one exception:

A stolen key. Whoever steals a key that may sign ordinary bundles can install the highest version
a bundle may carry (2^31 - 1), and an issue time far in the future. Without a way back, every
later bundle would be a rollback (the thief's pins stay for good) and the time floor would stay
above every clock. So the record keeps who vouched for it: max_keys, the keys whose signatures
verified the bundle that set max_version, and floor_keys, those of the bundle whose issue time set
the time floor (ids of the keys' x coordinates, so a key and its negation are one key; only keys
still trusted after that bundle: a rotation's own signers it retires do not count). A bundle with
a new signer set, signed at the trusted set's rotation threshold (which one stolen key cannot
meet), that leaves out a key of max_keys resets the version record: it is installed even at or
below the installed version (verify returns the refusal it held back in Verified.below), and the
record becomes its version. One that leaves out a key of floor_keys resets the time floor to its
own issue time. Replays stay refused: a rotation resets only what a key it retires vouched for,
and after it the record is vouched for by keys of the new set. A reset below the record replaces
bundle.bin and removes bundle.prev, so no slot with the thief's version is left for a damaged
file to bring back; a cut before the record is written is finished at boot (the installed
rotation retires the record's keys: the same reset). A record that names no vouchers (lost, or
from an agent before them: format 2) learns them at boot from the installed slot: the keys of the
slot's signer set among its bundle's signatures (all of which verified at install).

State record (state.bin), format 3, little-endian:
    b"FPST" | u8 3 | 3 zero bytes | i64 time floor | i64 max version (-1: none) | u32 updates |
    u32 failed updates | u16 L | L bytes of signer set (0: none) | u8 M | M 8-byte key ids (max
    version's vouchers) | u8 F | F 8-byte key ids (the time floor's) | first 8 bytes of the
    SHA-256 of everything before
Format 2 is the same without the vouchers; format 1 (agents before the signer record) without L
and the signer set either (40 bytes). Both are read; format 1 is rewritten at the next boot,
format 2 at the next write.

Safe state ("safe-no-bundle"): no pins and no CA certificates are known (the ESP32 port has no
built-in CA store, the CAs come in the bundle), so the agent refuses every TLS connection
(fail-closed) while the serial update service keeps running. Why fail-closed rather than CA-only:
CA-only would need CA certificates the board does not have, and a board that quietly dropped to
weaker checking whenever its flash was damaged would turn a storage fault (or a forced one) into a
downgrade. Safe state is loud instead: IDENTIFY reports the mode and problems, and one signed
bundle over serial brings the board back to "ok" without reflashing.

What LittleFS leaves after a power cut (littlefs is copy-on-write with atomic metadata commits;
checked against the real littlefs, via littlefs-python, by cutting power at every block program
and erase): open(path, "wb") of a new file commits an empty file at once; of an existing file it
keeps the old contents until close; written bytes become visible only at close; rename (over an
existing target too), remove and mkdir are atomic. There is no os.sync: close is the durability
point. tests/device/faultfs.py models exactly this; the tests also run on a write-through model
(torn files durable), which the temp-then-rename scheme survives as well.

File system interface (FS): a wrapper over an os-like module and an open function, the subset
MicroPython gives on the ESP32: open(path, "rb"/"wb") with read/write/close, os.rename, os.remove,
os.stat, os.listdir, os.mkdir, os.statvfs. The device passes FS(os, open); tests pass a
fault-injecting in-memory file system (tests/device/faultfs.py).
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


import hashlib
import struct

ROOT = "/fleetpin"
BUNDLE = "bundle.bin"
BUNDLE_NEW = "bundle.new"
BUNDLE_PREV = "bundle.prev"
SIGNERS = "signers.bin"
STATE = "state.bin"
STATE_NEW = "state.new"
UPLOAD = "upload.part"  # an upload a session left uncommitted (pinagent.handler.stage)
UPLOAD_NEW = "upload.new"
INDEX = "bundle.idx"  # the installed bundle, decoded (pinagent.installed)
INDEX_NEW = "bundle.idt"

MODE_OK = "ok"
MODE_RECOVERED = "recovered-previous"
MODE_SAFE = "safe-no-bundle"

SLOT_MAGIC = b"FPS1"
_SLOT_HEAD = "<4sHI"
SLOT_HEAD_LEN = const(10)
DIGEST_LEN = const(32)
SLOT_OVERHEAD = const(42)  # head + digest
MAX_BUNDLE = const(32768)  # pinagent.bundle's size limit
MAX_SIGNERS = const(4096)
MAX_SLOT = const(36906)  # SLOT_OVERHEAD + MAX_SIGNERS + MAX_BUNDLE

STATE_MAGIC = b"FPST"
_STATE_FMT = "<4sBxxxQqII"  # magic, format, time floor, max version (-1: none), updates, failed
_STATE_LEN = const(32)
_STATE_FORMAT = const(3)  # + u16 signer set length, the signer set, the two vouchers
_STATE_V2 = const(2)  # without the vouchers
_STATE_V1 = const(1)  # without the signer set
KEY_XID_SIZE = const(8)  # pinagent.signers.xid_of_point
_STATE_MAX = const(4268)  # _STATE_LEN + 2 + MAX_SIGNERS + 2 * (1 + 8 keys * KEY_XID_SIZE) + 8


ENOENT = const(2)
ENOSPC = const(28)


class StoreError(Exception):
    """A storage operation failed; `reason` says what."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class SlotCorrupt(StoreError):
    """A slot file is missing its magic, has wrong lengths, or its digest does not match."""


class TooLarge(StoreError):
    """A bundle or signer set over the slot limits (MAX_BUNDLE, MAX_SIGNERS)."""


class Rollback(StoreError):
    """An update older than a bundle the board installed before (state.bin's max version):
    refused even when the newer bundle was lost, so retired pins never come back."""


class NoSpace(StoreError):
    """Not enough free flash for the update (nothing was changed)."""


class StorageFailed(StoreError):
    """The file system refused a write, rename or read-back (nothing was changed)."""


class NoTrustAnchor(StoreError):
    """No signer set is readable, so no update can be verified: reprovision the board."""


class Verified:
    """What `verify` returns: the decoded bundle (opaque to the store), its version and issue
    time (POSIX seconds), the signer set bytes trusted for the next update, and for the version
    record (module docstring, "A stolen key"): keys, the keys whose signatures verified and that
    stay trusted after it (b"" at boot: nothing is checked); new_keys, those of the signer set
    the bundle installs (None: no new set); below, the refusal verify held back for a new set at
    or below installed_version (None: above it). Keys are KEY_XID_SIZE-byte ids, concatenated."""

    __slots__ = ("bundle", "version", "issued", "next_signers", "keys", "new_keys", "below")

    def __init__(self, bundle, version, issued, next_signers, keys=b"", new_keys=None, below=None):
        self.bundle = bundle
        self.version = version
        self.issued = issued
        self.next_signers = next_signers
        self.keys = keys
        self.new_keys = new_keys
        self.below = below


def holds(keys, key):
    """Whether `keys` (KEY_XID_SIZE-byte ids, concatenated) holds the id `key`."""
    for i in range(0, len(keys), KEY_XID_SIZE):
        if keys[i:i + KEY_XID_SIZE] == key:
            return True
    return False


def retires(vouchers, new_keys):
    """Whether a new signer set (new_keys) leaves out a key of `vouchers` (both KEY_XID_SIZE-byte
    ids, concatenated): the keys that vouched for a record are not all trusted any more."""
    if new_keys is None:
        return False
    for i in range(0, len(vouchers), KEY_XID_SIZE):
        if not holds(new_keys, vouchers[i:i + KEY_XID_SIZE]):
            return True
    return False


class FS:
    """The file operations the store needs, over an os-like module and an open function."""

    def __init__(self, os_mod, open_fn):
        self.os = os_mod
        self.open = open_fn

    def size(self, path):
        """Size in bytes, or -1 if there is no such file (any stat error: the errno for "no such
        file" is 2 on the ESP32 but the host's own on the VM's VfsPosix, 44 under Emscripten)."""
        try:
            st = self.os.stat(path)
        except OSError:
            return -1
        if st[0] & 0x4000:  # a directory where a file should be: treat as junk
            raise OSError(21)
        return st[6]

    def read(self, path, limit):
        """The whole file; StoreError if it is larger than limit (checked before reading, so junk
        cannot exhaust the heap)."""
        n = self.size(path)
        if n < 0:
            raise OSError(ENOENT)
        if n > limit:
            raise SlotCorrupt("%s: %d bytes, over the %d limit" % (path, n, limit))
        f = self.open(path, "rb")
        try:
            return read_exact(f, n)
        finally:
            f.close()

    def write_atomic(self, path, tmp, chunks):
        """Writes chunks to tmp, closes it, renames it over path (atomic on LittleFS)."""
        self.remove_quiet(tmp)
        f = self.open(tmp, "wb")
        try:
            for c in chunks:
                write_all(f, c)
        finally:
            f.close()
        self.os.rename(tmp, path)

    def rename(self, src, dst):
        self.os.rename(src, dst)

    def remove_quiet(self, path):
        """Removes path if it exists (checked with stat, not by errno); errors propagate."""
        try:
            self.os.stat(path)
        except OSError:
            return
        self.os.remove(path)

    def listdir(self, path):
        return self.os.listdir(path)

    def ensure_dir(self, path):
        try:
            st = self.os.stat(path)
        except OSError:
            st = None
        if st is not None:
            if st[0] & 0x4000:
                return
            self.os.remove(path)  # a file squatting on the directory's name
        self.os.mkdir(path)

    def free(self, path):
        """Bytes available to a new file (statvfs f_bavail * f_bsize), and the block size."""
        st = self.os.statvfs(path)
        return st[4] * st[0], st[0]


def errno_of(e):
    return e.args[0] if e.args else None


def read_exact(f, n):
    data = f.read(n)
    if data is None:
        data = b""
    if len(data) == n:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = f.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def write_all(f, data):
    mv = memoryview(data)
    while len(mv):
        n = f.write(mv)
        if n is None:  # some streams return None for "all written"
            return
        if n <= 0:
            raise OSError(ENOSPC)
        mv = mv[n:]


# ---- slots


def slot_head(signers, bundle):
    return struct.pack(_SLOT_HEAD, SLOT_MAGIC, len(signers), len(bundle))


def slot_digest(signers, bundle):
    h = hashlib.sha256(slot_head(signers, bundle))
    h.update(signers)
    h.update(bundle)
    return h.digest()


def encode_slot(signers, bundle):
    """The bytes of a slot file (for the host's provisioning image; the device writes the
    parts without joining them)."""
    check_slot_sizes(signers, bundle)
    return slot_head(signers, bundle) + bytes(signers) + bytes(bundle) + slot_digest(signers, bundle)


def check_slot_sizes(signers, bundle):
    if len(signers) > MAX_SIGNERS:
        raise TooLarge("signer set of %d bytes, over %d" % (len(signers), MAX_SIGNERS))
    if len(bundle) > MAX_BUNDLE:
        raise TooLarge("bundle of %d bytes, over %d" % (len(bundle), MAX_BUNDLE))


def _slot_lengths(head, total):
    magic, sl, bl = struct.unpack(_SLOT_HEAD, head)
    if magic != SLOT_MAGIC:
        raise SlotCorrupt("bad magic")
    if sl > MAX_SIGNERS or bl > MAX_BUNDLE or total != SLOT_OVERHEAD + sl + bl:
        raise SlotCorrupt("lengths %d+%d do not match %d bytes" % (sl, bl, total))
    return sl, bl


def decode_slot(data):
    """(signers, bundle, digest) of a slot's bytes; SlotCorrupt if anything is off."""
    n = len(data)
    if n < SLOT_OVERHEAD:
        raise SlotCorrupt("%d bytes, shorter than a slot" % n)
    sl, bl = _slot_lengths(bytes(data[:SLOT_HEAD_LEN]), n)
    mv = memoryview(data)
    signers = bytes(mv[SLOT_HEAD_LEN:SLOT_HEAD_LEN + sl])
    bundle = bytes(mv[SLOT_HEAD_LEN + sl:n - DIGEST_LEN])
    digest = slot_digest(signers, bundle)
    if digest != bytes(mv[n - DIGEST_LEN:]):
        raise SlotCorrupt("digest mismatch")
    return signers, bundle, digest


def read_slot(fs, path):
    """(signers, bundle, digest) of a slot file, read part by part so the bundle is one bytes
    object of its own (no second copy of it on the heap); SlotCorrupt if anything is off."""
    n = fs.size(path)
    if n < 0:
        raise OSError(ENOENT)
    if n < SLOT_OVERHEAD or n > MAX_SLOT:
        raise SlotCorrupt("%d bytes, not a slot" % n)
    f = fs.open(path, "rb")
    try:
        head = read_exact(f, SLOT_HEAD_LEN)
        if len(head) != SLOT_HEAD_LEN:
            raise SlotCorrupt("truncated")
        sl, bl = _slot_lengths(head, n)
        signers = read_exact(f, sl)
        bundle = read_exact(f, bl)
        stored = read_exact(f, DIGEST_LEN)
    finally:
        f.close()
    if len(signers) != sl or len(bundle) != bl or len(stored) != DIGEST_LEN:
        raise SlotCorrupt("truncated")
    digest = slot_digest(signers, bundle)
    if digest != stored:
        raise SlotCorrupt("digest mismatch")
    return signers, bundle, digest


# ---- state record


def encode_state(time_floor, max_version, updates, failed, signers, max_keys=b"", floor_keys=b""):
    """The state record (format 3): signers is the signer set bytes trusted after max_version, or
    None; max_keys and floor_keys the keys that vouched for max_version and time_floor."""
    signers = signers or b""
    if len(signers) > MAX_SIGNERS:
        raise TooLarge("signer set of %d bytes, over %d" % (len(signers), MAX_SIGNERS))
    body = struct.pack(_STATE_FMT, STATE_MAGIC, _STATE_FORMAT, time_floor, max_version, updates, failed) + bytes(
        (len(signers) & 0xFF, len(signers) >> 8)) + bytes(signers) + bytes(
        (len(max_keys) // KEY_XID_SIZE,)) + max_keys + bytes((len(floor_keys) // KEY_XID_SIZE,)) + floor_keys
    return body + hashlib.sha256(body).digest()[:8]


def decode_state(data):
    """(time_floor, max_version, updates, failed, signers or None, max_keys, floor_keys);
    SlotCorrupt if the record is damaged. Reads formats 1 (no signer set) and 2 (no vouchers:
    b"", so the first rotation after an agent update resets nothing)."""
    n = len(data)
    if n < _STATE_LEN + 8:
        raise SlotCorrupt("state: %d bytes" % n)
    if hashlib.sha256(memoryview(data)[: n - 8]).digest()[:8] != data[n - 8:]:
        raise SlotCorrupt("state: digest mismatch")
    magic, fmt, floor, maxv, updates, failed = struct.unpack(_STATE_FMT, data[:_STATE_LEN])
    if magic != STATE_MAGIC or fmt not in (_STATE_V1, _STATE_V2, _STATE_FORMAT):
        raise SlotCorrupt("state: bad magic or format")
    at = _STATE_LEN
    signers = None
    if fmt != _STATE_V1:
        sl = data[at] | (data[at + 1] << 8) if n >= at + 10 else n
        at += 2 + sl
        signers = bytes(data[at - sl:at]) if sl > 0 else None
    vouchers = [b"", b""]
    for i in range(2 if fmt == _STATE_FORMAT else 0):
        size = data[at] * KEY_XID_SIZE if at < n - 8 else n
        vouchers[i] = bytes(data[at + 1:at + 1 + size])
        at += 1 + size
    if at != n - 8:
        raise SlotCorrupt("state: %d bytes" % n)
    return floor, maxv, updates, failed, signers, vouchers[0], vouchers[1]


class BootState:
    """What boot found. mode: MODE_OK / MODE_RECOVERED / MODE_SAFE. bundle: the installed bundle
    bytes (None in safe mode); decoded: verify's decoded bundle; version, issued; source: the
    file it came from; signers: the signer set bytes trusted for the next update (None: no
    anchor); time_floor: never believe a clock below it; max_version, updates, failed_updates:
    counters; max_keys, floor_keys: the keys that vouched for max_version and time_floor (module
    docstring, "A stolen key"); problems: one short string per thing found wrong."""

    def __init__(self):
        self.saved = False  # state.bin holds this max_version and these signers
        self.mode = MODE_SAFE
        self.bundle = None
        self.decoded = None
        self.version = None
        self.issued = 0
        self.source = None
        self.signers = None
        self.time_floor = 0
        self.max_version = -1
        self.max_keys = b""
        self.floor_keys = b""
        self.updates = 0
        self.failed_updates = 0
        self.problems = []

    def to_obj(self):
        return {
            "mode": self.mode,
            "source": self.source,
            "version": self.version,
            "time_floor": self.time_floor,
            "max_version": self.max_version,
            "updates": self.updates,
            "failed_updates": self.failed_updates,
            "trust": self.signers is not None,
            "problems": list(self.problems),
        }


class Store:
    """Store(fs, verify).boot() -> BootState; updates: pinagent.install.install(store, data)
    (an update path module: a board holds its code only while it installs)."""

    def __init__(self, fs, verify, root=ROOT):
        self.fs = fs
        self.verify = verify
        self.root = root
        self.state = None

    def path(self, name):
        return self.root + "/" + name

    # ---- boot

    def boot(self):
        """Loads what is installed, repairing an interrupted update. Never raises for anything in
        storage (a PowerCut in tests, a BaseException, does pass through)."""
        st = BootState()
        self.state = st
        try:
            self._boot(st)
        except Exception as e:  # a bug or an unexpected error: keep what was loaded, stay up
            st.problems.append("boot: %s: %s" % (type(e).__name__, e))
        return st

    def _boot(self, st):
        try:
            names = self.fs.listdir(self.root)
        except Exception as e:
            st.problems.append("%s: unreadable (%s)" % (self.root, why(e)))
            names = ()
        self._load_state(st, names)
        saved = (st.max_version, st.signers, st.time_floor, st.max_keys, st.floor_keys)
        spare_signers = None
        for name in (BUNDLE, BUNDLE_NEW, BUNDLE_PREV):
            if name not in names:
                continue
            try:
                signers, bundle, _ = read_slot(self.fs, self.path(name))
            except Exception as e:
                st.problems.append("%s: %s" % (name, why(e)))
                continue
            if spare_signers is None:
                spare_signers = signers
            try:
                v = self.verify(bundle, signers, None)
            except Exception as e:
                st.problems.append("%s: refused: %s" % (name, why(e)))
                continue
            self.take(st, name, bundle, v)
            break
        if st.bundle is not None:
            st.mode = MODE_RECOVERED if st.source == BUNDLE_PREV else MODE_OK
        st.saved = saved == (st.max_version, st.signers, st.time_floor, st.max_keys, st.floor_keys) and saved[1] is not None
        if st.signers is None:
            st.signers = spare_signers
        if st.signers is None:
            try:
                st.signers = self.fs.read(self.path(SIGNERS), MAX_SIGNERS)
            except Exception as e:
                st.problems.append("%s: %s" % (SIGNERS, why(e)))
        self._repair(st, names)

    def take(self, st, name, bundle, v):
        """Makes v (verify's Verified for `bundle`, from file `name`) what st holds (boot, install)."""
        # A new signer set that leaves out a key which vouched for the version record or the time
        # floor undoes what that key vouched for (module docstring, "A stolen key"); at boot too,
        # where it is a reset whose record write a power cut lost.
        if retires(st.max_keys, v.new_keys):
            st.max_version, st.max_keys = -1, b""
        if retires(st.floor_keys, v.new_keys):
            st.time_floor, st.floor_keys = 0, b""
        st.bundle = bundle
        st.decoded = v.bundle
        st.version = v.version
        st.issued = v.issued
        # Never backwards: a bundle older than the record (a recovery) keeps the record's signers.
        if st.signers is None or v.version >= st.max_version:
            st.signers = v.next_signers
        st.source = name
        if v.issued > st.time_floor or (v.issued == st.time_floor and not st.floor_keys):
            st.time_floor = v.issued
            st.floor_keys = v.keys
        if v.version > st.max_version or (v.version == st.max_version and not st.max_keys):
            st.max_version = v.version
            st.max_keys = v.keys  # a record that did not say who vouched (lost, format 2) learns it

    def _load_state(self, st, names):
        if STATE not in names:
            return
        try:
            (st.time_floor, st.max_version, st.updates, st.failed_updates, st.signers, st.max_keys,
             st.floor_keys) = decode_state(self.fs.read(self.path(STATE), _STATE_MAX))
        except Exception as e:
            st.problems.append("%s: %s" % (STATE, why(e)))

    def _repair(self, st, names):
        # Best effort: a failure (or a cut) here leaves files that the next boot sorts out the same way.
        try:
            if st.source == BUNDLE_NEW:
                self.fs.rename(self.path(BUNDLE_NEW), self.path(BUNDLE))
                st.source = BUNDLE
            elif BUNDLE_NEW in names:
                self.fs.remove_quiet(self.path(BUNDLE_NEW))
            if STATE_NEW in names:
                self.fs.remove_quiet(self.path(STATE_NEW))
            for temp in (UPLOAD_NEW, INDEX_NEW):
                if temp in names:
                    self.fs.remove_quiet(self.path(temp))
        except Exception as e:
            st.problems.append("repair: %s" % why(e))
        # The trust record must hold the newest trust too (module docstring): rewrite it when it
        # is missing, damaged, from an older agent, or behind the slots.
        if st.max_version >= 0 and st.signers is not None and not st.saved:
            self.save_state(st)

    # ---- state record

    def raise_time_floor(self, t):
        """Records a newer trusted time (POSIX seconds). Writes flash: call it rarely (e.g.
        after a trusted time sync, at most hourly). Returns True if the floor moved."""
        st = self.state
        if st is None or t <= st.time_floor:
            return False
        st.time_floor = t
        return self.save_state(st)

    def save_state(self, st):
        """Writes st's trust record (state.bin, atomically); False, with a problem noted, if it failed."""
        try:
            self.fs.ensure_dir(self.root)
            self.fs.write_atomic(
                self.path(STATE),
                self.path(STATE_NEW),
                (encode_state(st.time_floor, st.max_version, st.updates, st.failed_updates, st.signers, st.max_keys,
                              st.floor_keys),),
            )
            st.saved = True
            return True
        except Exception as e:
            st.problems.append("%s: not saved (%s)" % (STATE, why(e)))
            return False


def why(e):
    reason = getattr(e, "reason", None)
    if reason is not None:
        return "%s: %s" % (type(e).__name__, reason)
    if isinstance(e, OSError):
        return "OSError %s" % (errno_of(e),)
    return "%s: %s" % (type(e).__name__, e)
