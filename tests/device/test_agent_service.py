# pinagent.agent as the service Handler: bundle upload, read_bundle, reports, test_connect, and
# the boot cases a signed upload repairs (helpers: agent_support.py). These load the service
# modules (a refusal is a service.ServiceError), so they live apart from test_agent.py: both
# fit the VM's heap next to the whole agent. Runs unchanged under CPython and on the MicroPython VM.

import hashlib

from agent_support import (
    E_BUNDLE,
    E_DIGEST,
    E_FLEET,
    E_INCOMPLETE,
    E_NO_SPACE,
    E_NO_WRITE,
    E_RANGE,
    E_ROLLBACK,
    E_SIGNATURE,
    E_STORAGE,
    FLEET,
    GOOD,
    NOW,
    FakeTls,
    R,
    _agent,
    _board,
    _bundle,
    _refused,
    _reports,
    _signers,
    _upload,
)
from faultfs import FaultFS
from support import raises

from pinagent import connect as C
from pinagent import policy as P
from pinagent import store as S

# ---- updates


def test_upload_installs_and_changes_behaviour():
    tls = FakeTls()
    tls.chains["elsewhere.example"] = GOOD
    ffs = _board("v1.bin")
    a = _agent(ffs, tls=tls)
    a.connect("elsewhere.example", 443)
    ans = _upload(a, _bundle("v2.bin"))
    assert ans["installed"] and ans["version"] == 2 and ans["bundle_sha256"] == a.bundle_sha256
    assert a.identify()["bundle_version"] == 2 and a.state.time_floor == NOW - 1800
    e = raises(C.PinBlocked, a.connect, "elsewhere.example", 443)  # v2: unpinned "block"
    assert e.reason == P.NO_POLICY_BLOCKED
    assert _agent(ffs.reboot()).identify()["bundle_version"] == 2  # it survives a reboot
    assert a.write_commit() == ans  # a repeated commit: the same answer


def test_refused_updates_map_to_codes_and_touch_nothing():
    ffs = _board("v1.bin")
    a = _agent(ffs)
    _upload(a, _bundle("v2.bin"))
    for name, code in (("v1.bin", E_ROLLBACK), ("v2_other_fleet.bin", E_FLEET),
                       ("v2_bad_signature.bin", E_SIGNATURE)):
        before = dict(ffs.files)
        ffs.counts = {}
        e = _refused(_upload, a, _bundle(name))
        assert e.code == code, (name, e.code, e.reason)
        assert ffs.files == before and "write" not in ffs.counts and "rename" not in ffs.counts, name
    e = _refused(_upload, a, b"FPB1" + bytes(200))
    assert e.code == E_BUNDLE
    same = _upload(a, _bundle("v2.bin"))
    assert same["installed"] is False and same["version"] == 2


def test_upload_checks_completeness_and_digest():
    a = _agent(_board("v1.bin"))
    data = _bundle("v2.bin")
    e = _refused(a.write_commit)
    assert e.code == E_NO_WRITE
    _refused(a.write_chunk, 0, b"x")
    a.write_begin(len(data), hashlib.sha256(data).digest())
    a.write_chunk(0, data[:100])
    a.write_chunk(200, data[200:])
    e = _refused(a.write_commit)
    assert e.code == E_INCOMPLETE
    a.write_begin(len(data), hashlib.sha256(data).digest())  # the same upload: keeps the chunks
    a.write_chunk(50, data[50:200])  # overlapping retransmission
    assert a.write_commit()["version"] == 2
    e = _refused(a.write_chunk, 0, b"x")
    assert e.code == E_NO_WRITE
    a.write_begin(len(data), bytes(32))
    a.write_chunk(0, data)
    e = _refused(a.write_commit)
    assert e.code == E_DIGEST
    e = _refused(a.write_chunk, len(data) - 1, b"xy")
    assert e.code == E_RANGE
    e = _refused(a.write_begin, 40000, bytes(32))
    assert e.code == E_BUNDLE


def test_scattered_chunks_are_refused_before_they_cost_heap_and_a_refused_commit_frees_its_buffer():
    from pinagent.handler import MAX_GAPS

    a = _agent(_board("v1.bin"))
    data = _bundle("v2.bin")
    a.write_begin(len(data), hashlib.sha256(data).digest())
    for i in range(MAX_GAPS):  # one byte every other byte: MAX_GAPS separate pieces are fine
        a.write_chunk(2 * i, data[2 * i:2 * i + 1])
    e = _refused(a.write_chunk, 2 * MAX_GAPS, data[2 * MAX_GAPS:2 * MAX_GAPS + 1])
    assert e.code == E_RANGE and "WRITE_BEGIN" in e.reason
    assert _refused(a.write_commit).code == E_NO_WRITE  # the piece list and its buffer are gone
    _upload(a, data)  # in order, it goes through
    e = _refused(_upload, a, _bundle("v2_bad_signature.bin"))
    assert e.code == E_SIGNATURE and a._incoming is None


def test_storage_failures_are_reported_and_the_old_bundle_stays():
    ffs = _board("v1.bin")
    a = _agent(ffs)
    ffs.fail("rename", times=3)
    e = _refused(_upload, a, _bundle("v2.bin"))
    assert e.code == E_STORAGE
    assert _agent(ffs.reboot()).identify()["bundle_version"] == 1
    full = FaultFS(dirs=["/fleetpin"], blocks=4)
    full.files[R + "signers.bin"] = _signers()
    full.files[R + "bundle.bin"] = S.encode_slot(_signers(), _bundle("v1.bin"))
    a = _agent(full)
    data = _bundle("v2.bin")
    e = _refused(a.write_begin, len(data), hashlib.sha256(data).digest())
    assert e.code == E_NO_SPACE


def test_read_bundle_serves_the_installed_bytes():
    a = _agent(_board("v1.bin"))
    data = _bundle("v1.bin")
    got = b""
    while len(got) < len(data):
        total, chunk = a.read_bundle(len(got), 512)
        assert total == len(data)
        got += bytes(chunk)
    assert got == data
    e = _refused(a.read_bundle, len(data) + 1, 10)
    assert e.code == E_RANGE
    assert _agent(FaultFS()).read_bundle(0, 10) == (0, b"")


# ---- boot cases an upload repairs


def test_a_board_without_fleet_config_adopts_the_bundles_fleet():
    a = _agent(_board("v1.bin"), fleet=None)
    assert a.state.mode == S.MODE_OK and a.fleet == FLEET
    e = _refused(_upload, a, _bundle("v2_other_fleet.bin"))
    assert e.code == E_FLEET


def test_empty_flash_is_safe_mode_and_refuses_every_connection():
    tls = FakeTls()
    tls.chains["chain-leaf.example"] = GOOD
    a = _agent(FaultFS(), tls=tls)
    assert a.identify()["mode"] == S.MODE_SAFE and not a.identify()["trust"]
    e = raises(C.NoBundle, a.connect, "chain-leaf.example", 443)
    assert e.verdict.reason == C.NO_BUNDLE and not e.verdict.allowed and tls.calls == []
    assert a.test_connect("chain-leaf.example", 443)["reason"] == C.NO_BUNDLE
    assert _reports(a) == []  # safe mode says why in IDENTIFY; no flash wear per refusal
    e = _refused(_upload, a, _bundle("v1.bin"))
    assert e.code == E_SIGNATURE and "reprovision" in e.reason


def test_a_corrupt_bundle_boots_safe_and_a_signed_bundle_repairs_it():
    ffs = _board("v1.bin")
    slot = bytearray(ffs.files[R + "bundle.bin"])
    slot[100] ^= 1
    ffs.files[R + "bundle.bin"] = bytes(slot)
    a = _agent(ffs)
    assert a.state.mode == S.MODE_SAFE and a.identify()["problems"]
    assert _upload(a, _bundle("v1.bin"))["installed"]
    assert a.state.mode == S.MODE_OK and a.identify()["bundle_version"] == 1
