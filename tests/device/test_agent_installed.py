# pinagent.installed (issue 19, item 6): the installed bundle's decoded form beside its slot, so a
# boot needs neither the bundle decoder nor a payload parse. Used only for the slot it names, and
# for the device's fleet; anything else about it (missing, stale, torn, damaged) costs one decode.
# Runs unchanged under CPython and on the MicroPython runtimes (helpers: agent_support.py).

import json

from agent_support import GOOD, FakeTls, R, _agent, _board, _bundle, _upload

from pinagent import store as S

INDEX = R + S.INDEX


def _from_index(agent):
    # pinagent.installed.Installed, not pinagent.bundle.Bundle (by name: on MicroPython a boot
    # forgets both modules, and a second import makes another class)
    return type(agent.state.decoded).__name__ == "Installed"


def _same(a, b):
    """Two agents hold the same decoded bundle: policy, CA certificates, report settings, id."""
    da, db = a.state.decoded, b.state.decoded
    assert [r.to_obj() for r in da.policy.rules] == [r.to_obj() for r in db.policy.rules]
    assert (da.policy.unpinned, da.policy.clock_lead) == (db.policy.unpinned, db.policy.clock_lead)
    assert [bytes(c) for c in da.ca_certs] == [bytes(c) for c in db.ca_certs]
    assert (da.report, da.digest, da.fleet, a.state.version, a.state.issued, a.state.signers) == (
        db.report, db.digest, db.fleet, b.state.version, b.state.issued, b.state.signers)
    assert a.bundle_id == b.bundle_id and a.bundle_sha256 == b.bundle_sha256


def _connect(agent):
    agent.tls.chains["chain-leaf.example"] = GOOD
    agent.connect("chain-leaf.example", 443)
    return agent.last_verdict


def test_the_first_boot_decodes_and_keeps_it_the_next_boots_use_it():
    ffs = _board("v1.bin")
    first = _agent(ffs, tls=FakeTls())
    assert not _from_index(first) and INDEX in ffs.files
    again = _agent(ffs.reboot(), tls=FakeTls())
    assert _from_index(again) and again.state.mode == S.MODE_OK, again.state.problems
    _same(first, again)
    assert _connect(again).allowed
    before = dict(again.fs.os.files)
    third = _agent(again.fs.os.reboot())
    assert third.fs.os.files == before  # a boot with it writes nothing


def test_the_first_boot_after_an_install_keeps_the_new_bundle_decoded():
    a = _agent(_board("v1.bin"))
    assert _upload(a, _bundle("v2.bin"))["installed"]
    first = _agent(a.fs.os.reboot())
    assert not _from_index(first) and first.state.version == 2  # the index named v1's slot
    b = _agent(first.fs.os.reboot())
    assert _from_index(b) and b.state.version == 2
    decoded = _agent(_board("v2.bin"))  # the same bundle, decoded
    assert not _from_index(decoded)
    assert [r.to_obj() for r in b.state.decoded.policy.rules] == [r.to_obj() for r in decoded.state.decoded.policy.rules]


def test_an_index_of_another_slot_or_fleet_or_damaged_is_ignored():
    ffs = _board("v1.bin")
    _agent(ffs)
    good = ffs.files[INDEX]
    obj = json.loads(good)
    other_fleet = dict(obj, fleet="elsewhere")
    other_slot = dict(obj, k="00" * 32)
    cases = (good[:-9], good[:40], b"", b"\xff" * 50, json.dumps(other_fleet).encode(),
             json.dumps(other_slot).encode(), json.dumps(dict(obj, f=99)).encode(),
             json.dumps(dict(obj, rules=[["x"]])).encode(), json.dumps(dict(obj, certs=[[0]])).encode())
    for bad in cases:
        ffs.files[INDEX] = bad
        a = _agent(ffs.reboot())
        assert a.state.mode == S.MODE_OK and a.state.version == 1 and not _from_index(a), a.state.problems
        assert a.fs.os.files[INDEX] == good  # and the boot wrote it again
        ffs = a.fs.os


def test_a_recovery_boots_the_previous_bundle_decoded_not_the_index_of_the_lost_one():
    ffs = _board("v1.bin")
    a = _agent(ffs)
    assert _upload(a, _bundle("v2.bin"))["installed"]
    ffs = _agent(a.fs.os.reboot()).fs.os.reboot()  # that boot kept v2 decoded
    slot = bytearray(ffs.files[R + "bundle.bin"])
    slot[len(slot) // 2] ^= 1
    ffs.files[R + "bundle.bin"] = bytes(slot)
    b = _agent(ffs)
    assert b.state.mode == S.MODE_RECOVERED and b.state.version == 1 and not _from_index(b)
    assert _connect(b).allowed


def test_a_torn_index_write_is_cleaned_up_at_boot():
    ffs = _board("v1.bin")
    ffs.files[R + S.INDEX_NEW] = b'{"f": 1, "k": "'
    a = _agent(ffs)
    assert R + S.INDEX_NEW not in a.fs.os.files and a.state.mode == S.MODE_OK
