# pinagent.agent and issue 12 ("trust hardening"): what a board trusts after a rotation, a
# recovery, a one-key rotation or an invalid key, and a bundle's identity, through the agent with
# the signed vectors of tests/vectors/make_bundle_vectors.py (helpers: agent_support.py; a module
# of its own for the VM's heap). Runs unchanged under CPython and on the MicroPython runtimes.

import hashlib
import json

from agent_support import E_BUNDLE, E_ROLLBACK, E_SIGNATURE, R, _agent, _bundle, _refused, _signers, _upload
from faultfs import FaultFS
from support import read_vector

from pinagent import connect as C  # noqa: F401  (imported first, on its own: less garbage per VM step)
from pinagent import store as S
from pinagent.agent import Agent  # noqa: F401  (likewise)


def _board(installed):
    ffs = FaultFS(dirs=["/fleetpin"])
    ffs.files[R + "signers.bin"] = _signers()
    ffs.files[R + "bundle.bin"] = S.encode_slot(_signers(), installed)
    return ffs


def _vector(name):
    return read_vector("bundle/" + name)


def _rotated_board():
    """A board on bundle v5 (signers_prod) that then installed rotate_v6 (everyday + backup sign;
    new set {next, next-backup})."""
    ffs = _board(_vector("good.bin"))
    a = _agent(ffs)
    assert a.identify()["bundle_version"] == 5
    assert _upload(a, _vector("rotate_v6.bin"))["installed"]
    return ffs


def test_a_recovery_does_not_undo_a_key_rotation():
    # Item 4: one bit of bundle.bin goes bad after a rotation. The board runs v5 again, but the
    # retired everyday key can no longer sign for it, and the new key's bundle is taken.
    ffs = _rotated_board()
    slot = bytearray(ffs.files[R + "bundle.bin"])
    slot[len(slot) // 2] ^= 1
    ffs.files[R + "bundle.bin"] = bytes(slot)
    a = _agent(ffs.reboot())
    info = a.identify()
    assert info["mode"] == S.MODE_RECOVERED and info["bundle_version"] == 5
    e = _refused(_upload, a, _vector("rotate_v7_by_retired_key.bin"))
    assert e.code == E_SIGNATURE and "not signed by a trusted key" in e.reason, e.reason
    assert _upload(a, _vector("rotate_v7_by_new_key.bin"))["installed"]
    assert _agent(a.fs.os.reboot()).identify()["bundle_version"] == 7


def test_one_key_cannot_rotate_the_signer_set():
    # Item 5: the everyday key alone (stolen) cannot replace the set; the device says so.
    ffs = _board(_vector("good.bin"))
    a = _agent(ffs)
    before = dict(ffs.files)
    e = _refused(_upload, a, _vector("rotate_v6_one_key.bin"))
    assert e.code == E_SIGNATURE and "needs 2" in e.reason and "signed by 1" in e.reason, e.reason
    assert ffs.files == before


def test_a_rotation_that_retires_a_stolen_key_makes_the_board_updatable_again():
    # The everyday key was stolen and the thief installed the highest version a bundle may carry:
    # every later bundle is a rollback, the thief's pins would stay for good. A rotation signed at
    # the rotation threshold that retires the everyday key resets the version record (store, "A
    # stolen key"); one that retires only the backup key (which did not sign the thief's bundle)
    # resets nothing; and the thief's key is refused afterwards.
    ffs = _board(_vector("good.bin"))
    a = _agent(ffs)
    assert _upload(a, _vector("stolen_top.bin"))["installed"]
    trust = a.identify()["signers"]
    assert trust["vouched"] == trust["ids"][:1]  # the everyday key signed it (IDENTIFY says so)
    e = _refused(_upload, a, _vector("rotate_v6_retires_backup.bin"))
    assert e.code == E_ROLLBACK and "older" in e.reason, e.reason
    assert a.identify()["bundle_version"] == 2**31 - 1
    answer = _upload(a, _vector("recover_v6_retires_everyday.bin"))
    assert answer["installed"] and answer["version"] == 6
    a = _agent(a.fs.os.reboot())
    info = a.identify()
    assert info["mode"] == S.MODE_OK and info["bundle_version"] == 6, info
    assert a.state.max_version == 6 and R + "bundle.prev" not in a.fs.os.files
    assert info["signers"]["vouched"] == info["signers"]["ids"][:1]  # of v6's signers, the backup stays
    e = _refused(_upload, a, _vector("stolen_top.bin"))
    assert e.code == E_SIGNATURE and "not signed by a trusted key" in e.reason, e.reason


def test_a_record_lost_after_the_theft_learns_who_signed_from_the_slot():
    # state.bin damaged right after the thief's install: the boot rebuilds the record from the
    # installed slot, who signed included (the slot's keys among its signatures), so the
    # rotation that retires the stolen key still resets it.
    ffs = _board(_vector("good.bin"))
    a = _agent(ffs)
    assert _upload(a, _vector("stolen_top.bin"))["installed"]
    ffs = a.fs.os.reboot()
    for name in ("state.bin", "bundle.idx"):  # the record, and what the boot after it would know
        ffs.files.pop(R + name, None)
    a = _agent(ffs)
    trust = a.identify()["signers"]
    assert a.state.max_version == 2**31 - 1 and trust["vouched"] == trust["ids"][:1], trust
    assert _upload(a, _vector("recover_v6_retires_everyday.bin"))["installed"]
    assert _agent(a.fs.os.reboot()).identify()["bundle_version"] == 6


def test_the_recovery_bundle_sent_again_is_refused():
    # it carries the retired everyday key's signature and the backup's: one trusted key now, under
    # the rotation threshold of the set it installed
    ffs = _board(_vector("good.bin"))
    a = _agent(ffs)
    _upload(a, _vector("stolen_top.bin"))
    _upload(a, _vector("recover_v6_retires_everyday.bin"))
    a = _agent(a.fs.os.reboot())
    e = _refused(_upload, a, _vector("recover_v6_retires_everyday.bin"))
    assert e.code == E_SIGNATURE, e.reason  # signed by the retired everyday key and the backup: one trusted key
    assert a.identify()["bundle_version"] == 6


def test_a_rotation_to_an_invalid_key_is_refused_at_install():
    # Item 6: a set with a point off the curve would lock the fleet out; refused by name.
    ffs = _board(_vector("good.bin"))
    a = _agent(ffs)
    for name, words in (("new_signers_off_curve.bin", "SignerKeyInvalid"),
                        ("new_signers_negated_pair.bin", "SignerKeyRepeated")):
        e = _refused(_upload, a, _vector(name))
        assert e.code == E_BUNDLE and words in e.reason, (name, e.reason)
    assert a.identify()["bundle_version"] == 5


def test_identify_states_the_trusted_keys_and_thresholds():
    a = _agent(_board(_bundle("v1.bin")))
    trust = json.loads(_signers())
    info = a.identify()
    assert info["signers"] == {"ids": [s["id"] for s in trust["signers"]], "threshold": 1, "rotation_threshold": 2,
                               "vouched": [trust["signers"][0]["id"]]}  # v1 is signed by the everyday key
    a = _agent(_rotated_board().reboot())
    new = json.loads(_vector("signers_new.json"))
    assert a.identify()["signers"]["ids"] == [s["id"] for s in new["signers"]]
    assert _agent(FaultFS()).identify()["signers"] is None


_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _other_s(data):
    """The same bundle with its last signature's s replaced by n - s: still a valid signature, other
    bytes (ECDSA malleability)."""
    s = int.from_bytes(data[-32:], "big")
    return data[:-32] + (_N - s).to_bytes(32, "big")


def test_a_bundle_has_one_identity_whatever_its_signature_encoding():
    # Item 7: a bundle's identity is the SHA-256 of its signed bytes (what the signatures cover),
    # so a re-encoded signature is the same bundle to IDENTIFY, receipts and the registry.
    v2 = _bundle("v2.bin")
    v2b = _other_s(v2)
    assert v2b != v2
    signed_id = hashlib.sha256(v2[:-73]).digest().hex()  # one signature: 1 + 8 + 64 bytes after
    answers = []
    for data in (v2, v2b):
        ffs = _board(_bundle("v1.bin"))
        a = _agent(ffs)
        ans = _upload(a, data)
        assert ans["installed"] and ans["bundle_id"] == signed_id, ans
        info = _agent(ffs.reboot()).identify()
        assert info["bundle_id"] == signed_id
        assert info["bundle_sha256"] == hashlib.sha256(data).digest().hex()  # the bytes, for read-back
        answers.append(info)
    assert answers[0]["bundle_sha256"] != answers[1]["bundle_sha256"]
    assert _agent(FaultFS()).identify()["bundle_id"] is None
