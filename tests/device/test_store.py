# pinagent.store: installed bundle, last good bundle, signer rotation, time floor, boot recovery.
# Runs unchanged under CPython and on the MicroPython VM, over tests/device/faultfs.py.

from faultfs import EIO, ENOSPC, FakeRefused, FaultFS, fake_bundle, fake_verify
from support import raises

from pinagent import store as S
from pinagent.install import install

S1 = b"signers:factory-k1,k2"
S2 = b"signers:rotated-k3,k4"
S3 = b"signers:rotated-k5,k6"
R = "/fleetpin/"


def _board(bundles=(), signers=S1, **kw):
    """A FaultFS with the factory anchor, and the given bundles installed in order."""
    ffs = FaultFS(dirs=["/fleetpin"], **kw)
    ffs.files[R + "signers.bin"] = signers
    store = S.Store(S.FS(ffs, ffs.open), fake_verify)
    store.boot()
    for b in bundles:
        install(store, b)
    return ffs


def _boot(ffs):
    ffs = ffs.reboot()
    return ffs, S.Store(S.FS(ffs, ffs.open), fake_verify).boot()


def _flip(data, i):
    b = bytearray(data)
    b[i] ^= 0x01
    return bytes(b)


V1 = fake_bundle(1, S1)
V2 = fake_bundle(2, S1)
V3 = fake_bundle(3, S1)


# ---- boot on boards in every state


def test_empty_flash_boots_safe_without_raising():
    ffs = FaultFS()
    st = S.Store(S.FS(ffs, ffs.open), fake_verify).boot()
    assert st.mode == S.MODE_SAFE
    assert st.bundle is None and st.signers is None
    assert any("/fleetpin" in p for p in st.problems)
    assert "write" not in ffs.counts and "rename" not in ffs.counts


def test_factory_board_is_safe_and_trusts_the_anchor():
    ffs, st = _boot(_board())
    assert st.mode == S.MODE_SAFE
    assert st.signers == S1
    assert st.version is None and st.max_version == -1
    assert st.problems == []


def test_install_then_boot_loads_it_verified():
    ffs, st = _boot(_board([V1]))
    assert st.mode == S.MODE_OK and st.source == S.BUNDLE
    assert st.bundle == V1 and st.version == 1 and st.decoded == {"version": 1}
    assert R + "bundle.prev" not in ffs.files and R + "bundle.new" not in ffs.files
    assert st.updates == 1 and st.max_version == 1
    assert st.problems == []


def test_normal_boot_writes_nothing():
    ffs, st = _boot(_board([V1, V2]))
    assert st.mode == S.MODE_OK
    for op in ("write", "rename", "remove", "mkdir"):
        assert op not in ffs.counts, op


def test_second_install_keeps_the_first_as_previous():
    ffs = _board([V1, V2])
    assert S.decode_slot(ffs.files[R + "bundle.prev"])[1] == V1
    assert S.decode_slot(ffs.files[R + "bundle.bin"])[1] == V2
    ffs, st = _boot(ffs)
    assert st.version == 2 and st.updates == 2


def test_device_written_slot_is_what_encode_slot_makes():
    ffs = _board([V1])
    assert ffs.files[R + "bundle.bin"] == S.encode_slot(S1, V1)
    signers, bundle, digest = S.decode_slot(S.encode_slot(S1, V1))
    assert (signers, bundle, digest) == (S1, V1, S.slot_digest(S1, V1))


def test_decode_slot_refuses_damage_with_slot_corrupt():
    good = S.encode_slot(S1, V1)
    for bad in (b"", good[:41], good[:-1], good + b"\0", b"FPS2" + good[4:], _flip(good, 20), _flip(good, len(good) - 1)):
        raises(S.SlotCorrupt, S.decode_slot, bad)
    raises(S.TooLarge, S.encode_slot, S1, b"x" * (S.MAX_BUNDLE + 1))
    raises(S.TooLarge, S.encode_slot, b"s" * (S.MAX_SIGNERS + 1), V1)


def _damaged_variants(good):
    return [
        ("empty", b""),
        ("one byte short", good[:-1]),
        ("half", good[: len(good) // 2]),
        ("one byte more", good + b"\0"),
        ("bit flip in bundle", _flip(good, 60)),
        ("bit flip in digest", _flip(good, len(good) - 3)),
        ("bit flip in header", _flip(good, 5)),
        ("junk text", b"hello, world\n" * 20),
        ("lying lengths", good[:4] + b"\xff\xff\xff\xff\xff\xff" + good[10:]),
        ("oversized", b"\0" * (S.MAX_SLOT + 1)),
    ]


def test_damaged_installed_bundle_recovers_the_previous_one():
    base = _board([V1, V2])
    for what, bad in _damaged_variants(base.files[R + "bundle.bin"]):
        ffs = base.reboot()
        ffs.files[R + "bundle.bin"] = bad
        ffs, st = _boot(ffs)
        assert st.mode == S.MODE_RECOVERED, what
        assert st.bundle == V1 and st.version == 1, what
        assert st.problems and st.problems[0].startswith("bundle.bin"), (what, st.problems)


def test_damaged_installed_bundle_without_previous_is_safe():
    base = _board([V1])
    for what, bad in _damaged_variants(base.files[R + "bundle.bin"]):
        ffs = base.reboot()
        ffs.files[R + "bundle.bin"] = bad
        ffs, st = _boot(ffs)
        assert st.mode == S.MODE_SAFE and st.bundle is None, what
        assert st.signers == S1, what


def test_oversized_junk_is_not_read_into_the_heap():
    ffs = _board([V1])
    ffs.files[R + "bundle.bin"] = b"\0" * (S.MAX_SLOT + 1)
    ffs = ffs.reboot()
    ffs.fail("open", R + "bundle.bin")  # opening it would show as an I/O error instead
    st = S.Store(S.FS(ffs, ffs.open), fake_verify).boot()
    assert "not a slot" in st.problems[0], st.problems


def test_bundle_that_no_longer_verifies_is_refused_at_boot():
    ffs = _board([V1, V2])
    # an intact slot (digest recomputed) whose stored signer set does not verify its bundle
    ffs.files[R + "bundle.bin"] = S.encode_slot(S2, V2)
    ffs, st = _boot(ffs)
    assert st.mode == S.MODE_RECOVERED and st.version == 1
    assert "refused" in st.problems[0] and "signature" in st.problems[0]


def test_both_slots_damaged_is_safe_and_keeps_the_rotated_trust():
    ffs = _board([fake_bundle(1, S1, rotate=S2), fake_bundle(2, S2)])
    ffs.files[R + "bundle.bin"] = b"junk"
    ffs.files[R + "bundle.prev"] = S.encode_slot(S2, fake_bundle(1, S1))  # intact, fails verify
    ffs, st = _boot(ffs)
    assert st.mode == S.MODE_SAFE and st.bundle is None
    # the intact slot's signer set (the fleet's current keys), not the retired factory keys
    assert st.signers == S2


def test_missing_or_damaged_anchor_on_a_board_without_bundle():
    ffs = _board()
    del ffs.files[R + "signers.bin"]
    ffs, st = _boot(ffs)
    assert st.mode == S.MODE_SAFE and st.signers is None
    assert any(p.startswith("signers.bin") for p in st.problems)
    e = raises(S.NoTrustAnchor, install, S.Store(S.FS(ffs, ffs.open), fake_verify), V1)
    assert e.reason
    ffs.files[R + "signers.bin"] = b"x" * (S.MAX_SIGNERS + 1)
    ffs, st = _boot(ffs)
    assert st.signers is None


def test_stale_temps_are_removed_at_boot():
    ffs = _board([V1])
    ffs.files[R + "bundle.new"] = b"half a bundle"
    ffs.files[R + "state.new"] = b"half a state"
    ffs, st = _boot(ffs)
    assert st.mode == S.MODE_OK and st.version == 1
    assert R + "bundle.new" not in ffs.files and R + "state.new" not in ffs.files


def test_valid_temp_beside_a_good_bundle_is_discarded_not_installed():
    # power cut after the new slot was closed, before the commit: the old bundle stays
    ffs = _board([V1])
    ffs.files[R + "bundle.new"] = S.encode_slot(S1, V2)
    ffs, st = _boot(ffs)
    assert st.version == 1 and R + "bundle.new" not in ffs.files


def test_commit_interrupted_between_the_renames_is_finished_at_boot():
    ffs = _board([V1])
    ffs.files[R + "bundle.prev"] = ffs.files.pop(R + "bundle.bin")
    ffs.files[R + "bundle.new"] = S.encode_slot(S1, V2)
    ffs, st = _boot(ffs)
    assert st.mode == S.MODE_OK and st.version == 2 and st.source == S.BUNDLE
    assert S.decode_slot(ffs.files[R + "bundle.bin"])[1] == V2
    assert R + "bundle.new" not in ffs.files
    ffs, st = _boot(ffs)
    assert st.version == 2 and st.problems == []


def test_junk_files_and_directories_are_ignored():
    ffs = _board([V1, V2])
    ffs.files[R + "notes.txt"] = b"hello"
    ffs.files[R + "bundle.bin.bak"] = b"\xff" * 100
    ffs.dirs.add(R + "subdir")
    del ffs.files[R + "bundle.prev"]
    ffs.dirs.add(R + "bundle.prev")  # a directory where the last good bundle should be
    ffs, st = _boot(ffs)
    assert st.mode == S.MODE_OK and st.version == 2
    ffs.files[R + "bundle.bin"] = b"bad"
    ffs, st = _boot(ffs)
    assert st.mode == S.MODE_SAFE
    assert any(p.startswith("bundle.prev") for p in st.problems)


def test_root_squatted_by_a_file_boots_safe_and_an_update_repairs_it():
    ffs = FaultFS()
    ffs.files["/fleetpin"] = b"not a directory"
    store = S.Store(S.FS(ffs, ffs.open), fake_verify)
    st = store.boot()
    assert st.mode == S.MODE_SAFE and st.signers is None
    st.signers = S1  # as if provisioned over serial
    install(store, V1)
    ffs, st = _boot(ffs)
    assert st.mode == S.MODE_OK and st.version == 1


def test_an_io_error_at_any_step_of_boot_never_raises():
    base = _board([V1, V2])
    base.files[R + "bundle.new"] = b"stale"
    ffs = base.reboot()
    S.Store(S.FS(ffs, ffs.open), fake_verify).boot()
    total = ffs.ticks
    assert total > 5
    for k in range(total):
        for errno in (EIO, 2):
            ffs = base.reboot()
            _fail_kth(ffs, k, errno)
            st = S.Store(S.FS(ffs, ffs.open), fake_verify).boot()
            assert st.mode in (S.MODE_OK, S.MODE_RECOVERED, S.MODE_SAFE)
            assert st.version in (None, 1, 2), (k, st.version)
            if st.bundle is not None:
                assert st.bundle == (V2 if st.version == 2 else V1)
            ffs, again = _boot(ffs)
            assert again.version == 2, (k, again.problems)  # nothing was lost for good


def _fail_kth(ffs, k, errno):
    """Makes the k-th operation (0-based, any kind) raise OSError(errno)."""
    orig = ffs._tick

    def tick(op, path):
        n = ffs.ticks
        orig(op, path)
        if n == k:
            raise OSError(errno)

    ffs._tick = tick


# ---- updates


def test_refused_update_changes_nothing():
    ffs = _board([V1])
    before = dict(ffs.files)
    store = S.Store(S.FS(ffs, ffs.open), fake_verify)
    store.boot()
    for bad, reason in (
        (_flip(V2, 20), "signature"),
        (fake_bundle(2, S2), "signature"),
        (V1, "same_version"),
        (fake_bundle(0, S1), "rollback"),
        (b"xx", "malformed"),
    ):
        e = raises(FakeRefused, install, store, bad)
        assert e.reason == reason
    assert ffs.files == before
    assert store.state.version == 1


def test_update_after_recovery_accepts_the_lost_version_but_nothing_older():
    ffs = _board([V1, V2, V3])
    ffs.files[R + "bundle.bin"] = b"rotten"
    store = S.Store(S.FS(ffs, ffs.open), fake_verify)
    st = store.boot()
    assert st.mode == S.MODE_RECOVERED and st.version == 2 and st.max_version == 3
    assert raises(FakeRefused, install, store, V2).reason == "same_version"
    install(store, V3)
    assert S.decode_slot(ffs.files[R + "bundle.prev"])[1] == V2  # not replaced by the rotten one
    ffs, st = _boot(ffs)
    assert st.mode == S.MODE_OK and st.version == 3


def test_safe_board_still_refuses_retired_versions():
    ffs = _board([V1, V2, V3])
    ffs.files[R + "bundle.bin"] = b"rotten"
    ffs.files[R + "bundle.prev"] = b"rotten too"
    store = S.Store(S.FS(ffs, ffs.open), fake_verify)
    st = store.boot()
    assert st.mode == S.MODE_SAFE and st.max_version == 3
    raises(S.Rollback, install, store, V2)
    install(store, V3)  # the lost newest one can be sent again
    assert store.state.mode == S.MODE_OK and store.state.version == 3


def test_rotation_is_committed_with_its_bundle():
    r1 = fake_bundle(1, S1, rotate=S2)
    ffs = _board([r1])
    store = S.Store(S.FS(ffs, ffs.open), fake_verify)
    st = store.boot()
    assert st.signers == S2
    assert raises(FakeRefused, install, store, fake_bundle(2, S1)).reason == "signature"
    install(store, fake_bundle(2, S2, rotate=S3))
    install(store, fake_bundle(3, S3))
    ffs, st = _boot(ffs)
    assert st.version == 3 and st.signers == S3
    assert ffs.files[R + "signers.bin"] == S1  # the factory anchor is never rewritten
    # losing the newest slot goes back to the previous bundle AND the signer set it came with
    ffs.files[R + "bundle.bin"] = b"rotten"
    ffs, st = _boot(ffs)
    assert st.mode == S.MODE_RECOVERED and st.version == 2 and st.signers == S3


# ---- issue 12, item 4: no recovery and no power cut takes the signer set or the version back


def test_recovery_keeps_the_rotated_signers_and_the_highest_version():
    # v2 rotated S1 -> S2. One bit of bundle.bin goes bad: the board runs v1 again (its pins), but
    # trusts S2 for the next update and refuses anything older than v2: the retired keys of S1
    # cannot sign for it any more.
    ffs = _board([fake_bundle(1, S1), fake_bundle(2, S1, rotate=S2)])
    ffs.files[R + "bundle.bin"] = _flip(ffs.files[R + "bundle.bin"], 60)
    ffs, st = _boot(ffs)
    assert st.mode == S.MODE_RECOVERED and st.version == 1
    assert st.signers == S2, st.signers
    assert st.max_version == 2
    store = S.Store(S.FS(ffs, ffs.open), fake_verify)
    store.boot()
    assert raises(FakeRefused, install, store, fake_bundle(3, S1)).reason == "signature"  # a retired key
    install(store, fake_bundle(3, S2))  # the operator's genuine next bundle
    ffs, st = _boot(ffs)
    assert st.mode == S.MODE_OK and st.version == 3 and st.signers == S2


def test_trust_survives_the_loss_of_every_slot():
    ffs = _board([fake_bundle(1, S1), fake_bundle(2, S1, rotate=S2)])
    ffs.files[R + "bundle.bin"] = b"rotten"
    ffs.files[R + "bundle.prev"] = b"rotten too"
    ffs, st = _boot(ffs)
    assert st.mode == S.MODE_SAFE and st.signers == S2 and st.max_version == 2


def test_losing_the_state_record_is_covered_by_the_installed_slot():
    # the state record and bundle.bin each hold the newest trust: one of them is enough
    ffs = _board([fake_bundle(1, S1), fake_bundle(2, S1, rotate=S2)])
    ffs.files[R + "state.bin"] = _flip(ffs.files[R + "state.bin"], 20)
    ffs, st = _boot(ffs)
    assert st.version == 2 and st.signers == S2 and st.max_version == 2
    assert S.decode_state(ffs.files[R + "state.bin"])[4] == S2  # boot rewrote it
    ffs.files[R + "bundle.bin"] = _flip(ffs.files[R + "bundle.bin"], 60)
    ffs, st = _boot(ffs)
    assert st.version == 1 and st.signers == S2 and st.max_version == 2


def _state_v1(floor, maxv, updates, failed):
    """A state record as agents before the signer record wrote it (format 1, 40 bytes)."""
    import hashlib
    import struct

    body = struct.pack("<4sBxxxQqII", b"FPST", 1, floor, maxv, updates, failed)
    return body + hashlib.sha256(body).digest()[:8]


def test_state_record_from_before_signers_still_loads():
    ffs = _board([fake_bundle(1, S1, rotate=S2)])
    floor, maxv, updates, failed = S.decode_state(ffs.files[R + "state.bin"])[:4]
    ffs.files[R + "state.bin"] = _state_v1(floor, maxv, updates, failed)
    ffs, st = _boot(ffs)
    assert st.mode == S.MODE_OK and st.signers == S2 and st.updates == 1
    assert S.decode_state(ffs.files[R + "state.bin"])[4] == S2  # upgraded in place


def test_no_space_is_refused_before_writing_and_changes_nothing():
    big = fake_bundle(2, S1, size=9000)
    ffs = _board([fake_bundle(1, S1, size=2000)], blocks=5)  # metadata 2 + bin 1: 2 free, 4 needed
    before = dict(ffs.files)
    store = S.Store(S.FS(ffs, ffs.open), fake_verify)
    store.boot()
    ffs.counts = {}
    e = raises(S.NoSpace, install, store, big)
    assert "needed" in e.reason
    assert ffs.files == before and "write" not in ffs.counts


def test_previous_bundle_is_dropped_when_it_is_the_only_way_to_fit():
    sized = [fake_bundle(v, S1, size=2000) for v in (1, 2, 3)]
    ffs = _board(sized[:2], blocks=5)  # metadata 2 + bin 1 + prev 1: 1 free, 2 needed
    store = S.Store(S.FS(ffs, ffs.open), fake_verify)
    store.boot()
    install(store, sized[2])
    ffs, st = _boot(ffs)
    assert st.version == 3
    assert S.decode_slot(ffs.files[R + "bundle.prev"])[1] == sized[1]


def test_a_staged_upload_is_dropped_before_the_previous_bundle_to_make_room():
    sized = [fake_bundle(v, S1, size=2000) for v in (1, 2, 3)]
    ffs = _board(sized[:2], blocks=6)  # metadata 2 + bin 1 + prev 1 + upload.part 1: 1 free, 2 needed
    ffs.files[R + S.UPLOAD] = b"FPU1" + bytes(2000)  # an abandoned upload a session staged
    ffs.files[R + S.UPLOAD_NEW] = b"FPU1" + bytes(10)  # and a temp a power cut left
    store = S.Store(S.FS(ffs, ffs.open), fake_verify)
    store.boot()
    assert R + S.UPLOAD_NEW not in ffs.files  # boot removes the temp
    install(store, sized[2])
    ffs, st = _boot(ffs)
    assert st.version == 3 and R + S.UPLOAD not in ffs.files
    assert S.decode_slot(ffs.files[R + "bundle.prev"])[1] == sized[1]  # the spare that was enough


def test_the_decoded_form_of_the_bundle_being_replaced_is_the_first_spare_to_go():
    sized = [fake_bundle(v, S1, size=2000) for v in (1, 2, 3)]
    ffs = _board(sized[:2], blocks=6)  # metadata 2 + bin 1 + prev 1 + bundle.idx 1: 1 free, 2 needed
    ffs.files[R + S.INDEX] = b"{}" + bytes(2000)  # what pinagent.installed kept for v2
    store = S.Store(S.FS(ffs, ffs.open), fake_verify)
    store.boot()
    install(store, sized[2])
    ffs, st = _boot(ffs)
    assert st.version == 3 and R + S.INDEX not in ffs.files
    assert S.decode_slot(ffs.files[R + "bundle.prev"])[1] == sized[1]


def test_flash_full_while_writing_is_no_space_and_keeps_the_old_bundle():
    ffs = _board([V1])
    store = S.Store(S.FS(ffs, ffs.open), fake_verify)
    store.boot()
    ffs.fail("write", errno=ENOSPC)
    raises(S.NoSpace, install, store, V2)
    assert R + "bundle.new" not in ffs.files
    assert store.state.version == 1 and store.state.failed_updates == 1
    install(store, V2)  # and the next try works
    ffs, st = _boot(ffs)
    assert st.version == 2


def test_an_io_error_at_any_step_of_an_update_leaves_old_or_new():
    base = _board([V1])
    probe = base.reboot()
    store = S.Store(S.FS(probe, probe.open), fake_verify)
    store.boot()
    start = probe.ticks
    install(store, V2)
    total = probe.ticks
    for k in range(start, total):
        ffs = base.reboot()
        store = S.Store(S.FS(ffs, ffs.open), fake_verify)
        store.boot()
        _fail_kth(ffs, k, EIO)
        try:
            install(store, V2)
            ok = True
        except S.StoreError as e:
            ok = False
            assert isinstance(e, S.StorageFailed), (k, e)
            assert store.state.version == 1
        ffs, st = _boot(ffs)
        assert st.version == (2 if ok else 1), (k, ok, st.version, st.problems)
        assert st.mode == S.MODE_OK


class _Flipper(FaultFS):
    """Flash that corrupts the first byte written to bundle.new: caught by the read-back."""

    def open(self, path, mode="r"):
        f = FaultFS.open(self, path, mode)
        if path.endswith("bundle.new") and mode == "wb":
            write = f.write
            state = {"first": True}

            def flipped(data):
                if state["first"]:
                    state["first"] = False
                    data = bytes([data[0] ^ 1]) + bytes(data[1:])
                return write(data)

            f.write = flipped
        return f


def test_read_back_mismatch_is_storage_failed_and_nothing_installed():
    ffs = _Flipper(dirs=["/fleetpin"])
    ffs.files[R + "signers.bin"] = S1
    store = S.Store(S.FS(ffs, ffs.open), fake_verify)
    store.boot()
    e = raises(S.StorageFailed, install, store, V1)
    assert "read-back" in e.reason
    assert R + "bundle.bin" not in ffs.files and R + "bundle.new" not in ffs.files


# ---- time floor and counters


def test_time_floor_persists_and_only_rises():
    ffs = _board([fake_bundle(1, S1, issued=1700000000)])
    store = S.Store(S.FS(ffs, ffs.open), fake_verify)
    st = store.boot()
    assert st.time_floor == 1700000000
    assert store.raise_time_floor(1700000500) is True
    assert store.raise_time_floor(1600000000) is False
    ffs, st = _boot(ffs)
    assert st.time_floor == 1700000500


def test_damaged_state_falls_back_to_the_bundle_issue_time():
    ffs = _board([fake_bundle(1, S1, issued=1700000000)])
    store = S.Store(S.FS(ffs, ffs.open), fake_verify)
    store.boot()
    store.raise_time_floor(1800000000)
    for bad in (b"", b"x" * 40, _flip(ffs.files[R + "state.bin"], 12), b"y" * 5000):
        ffs.files[R + "state.bin"] = bad
        ffs, st = _boot(ffs)
        assert st.mode == S.MODE_OK
        assert st.time_floor == 1700000000
        assert st.problems and st.problems[0].startswith("state.bin")


def _state_v2(floor, maxv, updates, failed, signers):
    """A state record as agents before the vouchers wrote it (format 2)."""
    import hashlib
    import struct

    body = struct.pack("<4sBxxxQqII", b"FPST", 2, floor, maxv, updates, failed) + struct.pack("<H", len(signers))
    body += signers
    return body + hashlib.sha256(body).digest()[:8]


def test_state_record_round_trip_and_damage():
    k1, k2 = b"\x01" * 8, b"\x02" * 8
    rec = S.encode_state(1700000000, 7, 3, 1, S2, k1 + k2, k2)
    assert S.decode_state(rec) == (1700000000, 7, 3, 1, S2, k1 + k2, k2)
    assert S.decode_state(S.encode_state(0, -1, 0, 0, None)) == (0, -1, 0, 0, None, b"", b"")
    for bad in (rec[:-1], rec + b"\0", _flip(rec, 0), _flip(rec, 10), _flip(rec, 39), _flip(rec, len(rec) - 1)):
        raises(S.SlotCorrupt, S.decode_state, bad)
    old = _state_v1(1700000000, 7, 3, 1)  # what agents before the signer record wrote
    assert len(old) == 40 and S.decode_state(old) == (1700000000, 7, 3, 1, None, b"", b"")
    raises(S.SlotCorrupt, S.decode_state, _flip(old, 12))
    v2 = _state_v2(1700000000, 7, 3, 1, S2)  # before the vouchers: none, so no reset until the next install
    assert S.decode_state(v2) == (1700000000, 7, 3, 1, S2, b"", b"")
    raises(S.SlotCorrupt, S.decode_state, _flip(v2, 33))


def test_boot_state_to_obj_is_json_able():
    import json

    ffs, st = _boot(_board([V1]))
    obj = json.loads(json.dumps(st.to_obj()))
    assert obj["mode"] == "ok" and obj["version"] == 1 and obj["trust"] is True


# ---- the FS wrapper over a real os module (CPython: a temp dir; the VM: its in-memory fs)


def test_fs_over_the_real_os_module():
    import os
    import sys

    if sys.implementation.name == "micropython":
        root = "/fp-store-test"
    else:
        import tempfile

        root = tempfile.mkdtemp() + "/fleetpin"
    fs = S.FS(os, open)
    fs.ensure_dir(root)
    with open(root + "/signers.bin", "wb") as f:
        f.write(S1)
    store = S.Store(fs, fake_verify, root=root)
    assert store.boot().mode == S.MODE_SAFE
    install(store, V1)
    install(store, V2)
    st = S.Store(fs, fake_verify, root=root).boot()
    assert st.mode == S.MODE_OK and st.version == 2
    assert fs.free(root)[0] > 0
    with open(root + "/bundle.bin", "wb") as f:
        f.write(b"rotten")
    st = S.Store(fs, fake_verify, root=root).boot()
    assert st.mode == S.MODE_RECOVERED and st.version == 1
    assert fs.size(root + "/nothing-here") == -1
    for name in os.listdir(root):
        os.remove(root + "/" + name)
    os.rmdir(root)
    if sys.implementation.name != "micropython":
        os.rmdir(root[: root.rfind("/")])


# ---- a stolen key: a rotation that retires it resets what it vouched for (store docstring)

STOLEN_MAX = 2**31 - 1  # the highest version a bundle may carry
FAR_FUTURE = 4102444800  # 2100-01-01: an issue time that would raise the floor for good


def _stolen(issued=1700000000):
    """A board on v1 whose S1 key was stolen: the thief installed the highest version there is."""
    ffs = _board([V1, fake_bundle(STOLEN_MAX, S1, issued=issued)])
    store = S.Store(S.FS(ffs, ffs.open), fake_verify)
    store.boot()
    return ffs, store


def test_after_a_stolen_key_took_the_highest_version_ordinary_bundles_are_still_rollbacks():
    # only a rotation that retires the key resets the record (below); nothing else goes back
    ffs, store = _stolen()
    assert raises(FakeRefused, install, store, fake_bundle(5, S1)).reason == "rollback"
    assert store.state.version == STOLEN_MAX


def test_a_rotation_that_retires_the_stolen_key_resets_the_version_record():
    ffs, store = _stolen()
    install(store, fake_bundle(5, S1, rotate=S2, issued=1700000100))  # signed at the rotation threshold
    assert store.state.version == 5 and store.state.max_version == 5
    assert store.state.signers == S2
    assert R + "bundle.prev" not in ffs.files  # no slot keeps the thief's version around
    ffs, st = _boot(ffs)
    assert st.mode == S.MODE_OK and st.version == 5 and st.max_version == 5 and st.signers == S2
    store = S.Store(S.FS(ffs, ffs.open), fake_verify)
    store.boot()
    assert raises(FakeRefused, install, store, fake_bundle(STOLEN_MAX, S1)).reason == "signature"  # retired
    install(store, fake_bundle(6, S2))  # the fleet is updatable again
    assert _boot(ffs)[1].version == 6


def test_a_rotation_that_keeps_every_key_resets_nothing():
    ffs, store = _stolen()
    same_keys = b"signers:factory-k1,k2,k7"  # adds a key, retires none
    assert raises(FakeRefused, install, store, fake_bundle(5, S1, rotate=same_keys)).reason == "rollback"
    assert store.state.version == STOLEN_MAX and store.state.signers == S1


def test_the_reset_is_not_replayable():
    # after the recovery and newer bundles by the new keys, the recovery bundle is an old bundle
    ffs, store = _stolen()
    recovery = fake_bundle(5, S1, rotate=S2)
    install(store, recovery)
    install(store, fake_bundle(6, S2))
    install(store, fake_bundle(7, S2, rotate=S3))  # and a later, ordinary rotation
    assert raises(FakeRefused, install, store, fake_bundle(6, S2)).reason == "signature"
    ffs, st = _boot(ffs)
    store = S.Store(S.FS(ffs, ffs.open), fake_verify)
    store.boot()
    assert store.state.version == 7 and store.state.signers == S3
    assert raises(FakeRefused, install, store, fake_bundle(8, S2, rotate=S3)).reason == "signature"


def test_a_forward_rotation_that_retires_the_floor_s_keys_lowers_the_floor_to_its_own_time():
    ffs, store = _stolen(issued=FAR_FUTURE)
    assert store.state.time_floor == FAR_FUTURE  # every clock now reads "below the floor"
    install(store, fake_bundle(5, S1, rotate=S2, issued=1700000100))
    assert store.state.time_floor == 1700000100
    ffs, st = _boot(ffs)
    assert st.time_floor == 1700000100


def test_the_floor_a_stolen_key_raised_is_reset_even_under_newer_bundles():
    # the thief's bundle raised the floor but not the version record far; the operator, unaware,
    # shipped v3 by the same keys; the rotation that retires them still takes the floor back
    ffs = _board([V1, fake_bundle(2, S1, issued=FAR_FUTURE), fake_bundle(3, S1)])
    store = S.Store(S.FS(ffs, ffs.open), fake_verify)
    store.boot()
    install(store, fake_bundle(4, S1, rotate=S2, issued=1700000200))
    assert store.state.time_floor == 1700000200 and store.state.version == 4


def test_an_ordinary_rotation_keeps_a_floor_newer_than_its_own_time():
    ffs = _board([V1, fake_bundle(2, S1, issued=1700000500)])
    store = S.Store(S.FS(ffs, ffs.open), fake_verify)
    store.boot()
    store.raise_time_floor(1800000000)  # trusted time from a pinned server
    install(store, fake_bundle(3, S1, rotate=b"signers:factory-k1,k2,k8"))  # retires nothing
    assert store.state.time_floor == 1800000000
    ffs, st = _boot(ffs)
    assert st.time_floor == 1800000000


def test_a_reset_whose_record_write_was_cut_is_finished_at_boot():
    ffs, store = _stolen(issued=FAR_FUTURE)
    before = ffs.files[R + "state.bin"]
    install(store, fake_bundle(5, S1, rotate=S2, issued=1700000100))
    ffs.files[R + "state.bin"] = before  # the record as it was before step 6
    ffs, st = _boot(ffs)
    assert st.version == 5 and st.max_version == 5 and st.signers == S2 and st.time_floor == 1700000100
    assert S.decode_state(ffs.files[R + "state.bin"])[1] == 5  # boot wrote the record again


def test_after_a_reset_damage_never_brings_the_stolen_version_back():
    ffs, store = _stolen()
    install(store, fake_bundle(5, S1, rotate=S2))
    ffs.files[R + "bundle.bin"] = _flip(ffs.files[R + "bundle.bin"], 60)
    ffs, st = _boot(ffs)
    assert st.mode == S.MODE_SAFE and st.signers == S2 and st.max_version == 5
    store = S.Store(S.FS(ffs, ffs.open), fake_verify)
    store.boot()
    assert raises(FakeRefused, install, store, fake_bundle(5, S1, rotate=S2)).reason == "signature"  # S1 is retired
    install(store, fake_bundle(6, S2))  # the next bundle by the new keys repairs it
    assert store.state.version == 6


def test_a_board_whose_record_predates_the_vouchers_is_reset_by_nothing():
    # format 2 records say nothing of who vouched: a reset needs one install under this agent first
    ffs, store = _stolen()
    st = store.state
    ffs.files[R + "state.bin"] = _state_v2(st.time_floor, st.max_version, st.updates, st.failed_updates, st.signers)
    ffs, st = _boot(ffs)
    store = S.Store(S.FS(ffs, ffs.open), fake_verify)
    store.boot()
    assert raises(FakeRefused, install, store, fake_bundle(5, S1, rotate=S2)).reason == "rollback"
