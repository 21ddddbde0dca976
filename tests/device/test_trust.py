# pinagent.signers: what a signer set may hold (issue 12: thresholds, item 5; key validation,
# item 6). Each test changes one field of a good set and expects the named error. Runs unchanged
# under CPython and on the MicroPython VM. Bundle-level cases (a rotation installing these sets)
# are vectors in tests/device/test_bundle.py.

import json

from support import raises, read_vector

from pinagent import signers as S

# P-256 field prime and curve constant (y^2 = x^3 - 3x + b mod p)
P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
CURVE_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B


def _obj(name="signers_prod.json"):
    return json.loads(read_vector("bundle/" + name))


def _point(obj, i):
    key = bytes.fromhex(obj["signers"][i]["key"])
    return int.from_bytes(key[1:33], "big"), int.from_bytes(key[33:], "big")


def _entry(x, y, name="k"):
    point = b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")
    return {"id": S.key_id_of_point(point).hex(), "key": point.hex(), "name": name}


def _refused(cls, obj, words):
    e = raises(S.SignerSetError, S.signers_from_obj, obj)
    assert type(e) is cls, "expected %s, got %s: %s" % (cls.__name__, type(e).__name__, e.reason)
    assert words in e.reason, e.reason
    return e


# --- item 6: every key is a valid P-256 point, and no private key appears twice --------------------


def test_a_point_off_the_curve_is_refused():
    obj = _obj()
    x, y = _point(obj, 0)
    obj["signers"][0] = _entry(x, (y + 1) % P)  # id recomputed: only the key is wrong
    e = _refused(S.SignerKeyInvalid, obj, "not on the curve")
    assert e.reason.startswith("signers[0].key"), e.reason


def test_the_zero_point_is_refused():
    obj = _obj()
    obj["signers"][1] = _entry(0, 0)
    _refused(S.SignerKeyInvalid, obj, "not on the curve")


def test_coordinates_of_p_or_more_are_refused():
    # x + p is the same field element as x: the equation holds mod p, the encoding is not canonical.
    x = 1
    while True:
        rhs = (x * x * x - 3 * x + CURVE_B) % P
        y = pow(rhs, (P + 1) // 4, P)
        if y * y % P == rhs:
            break
        x += 1
    obj = _obj()
    obj["signers"][0] = _entry(x + P, y)
    _refused(S.SignerKeyInvalid, obj, "below p")
    obj = _obj()
    gx, gy = _point(obj, 0)
    obj["signers"][0] = _entry(gx, P)
    _refused(S.SignerKeyInvalid, obj, "below p")
    # and the same point, canonically encoded, is a good key
    obj = _obj()
    obj["signers"].append(_entry(x, y))
    assert len(S.signers_from_obj(obj).signers) == 3


def test_a_key_with_its_negation_is_refused():
    # (x, p - y) is the public key of n - d: whoever holds one private key holds both, under two
    # ids, and would meet a two-key threshold alone.
    obj = _obj()
    x, y = _point(obj, 0)
    obj["signers"].append(_entry(x, P - y, "negated"))
    e = _refused(S.SignerKeyRepeated, obj, "negation")
    assert "signers[2]" in e.reason and "signers[0]" in e.reason, e.reason


def test_an_uncompressed_prefix_is_required():
    obj = _obj()
    key = obj["signers"][0]["key"]
    obj["signers"][0]["key"] = "02" + key[2:]
    obj["signers"][0]["id"] = S.key_id_of_point(bytes.fromhex(obj["signers"][0]["key"])).hex()
    _refused(S.SignerKeyInvalid, obj, "04")


def test_a_stored_set_is_loaded_without_key_checks():
    # A set an older agent installed stays usable (refusing it at boot would brick the board):
    # check_keys=False skips the key checks, nothing else.
    obj = _obj()
    x, y = _point(obj, 0)
    obj["signers"].append(_entry(x, P - y, "negated"))
    data = json.dumps(obj).encode()
    assert len(S.load_signers(data, False).signers) == 3
    assert type(raises(S.SignerSetError, S.load_signers, data)) is S.SignerKeyRepeated
    obj["threshold"] = 9
    assert type(raises(S.SignerSetError, S.load_signers, json.dumps(obj).encode(), False)) is S.SignerThresholdInvalid


# --- item 5: thresholds, stated in the set ---------------------------------------------------------


def test_thresholds_default_to_one_and_two():
    s = S.signers_from_obj(_obj())
    assert (s.threshold, s.rotation_threshold) == (1, 2)
    # defaults are not written out: sets made before thresholds keep their bytes
    assert b"threshold" not in S.dump_signers(s)


def test_thresholds_round_trip():
    obj = _obj()
    x, y = _point(_obj("signers_new.json"), 0)
    obj["signers"].append(_entry(x, y, "third"))
    obj["threshold"] = 2
    obj["rotation_threshold"] = 3
    s = S.signers_from_obj(obj)
    assert (s.threshold, s.rotation_threshold) == (2, 3)
    again = S.load_signers(S.dump_signers(s))
    assert (again.threshold, again.rotation_threshold) == (2, 3)
    assert S.dump_signers(again) == S.dump_signers(s)
    assert s.to_obj()["threshold"] == 2 and s.to_obj()["rotation_threshold"] == 3


def test_bad_thresholds_are_refused():
    for field, value, words in (
        ("threshold", 0, "threshold"),
        ("threshold", 3, "threshold"),  # more than the 2 keys
        ("threshold", True, "threshold"),
        ("threshold", "1", "threshold"),
        ("rotation_threshold", 1, "rotation_threshold"),  # one key may never change the set
        ("rotation_threshold", 3, "rotation_threshold"),
        ("rotation_threshold", 2.0, "rotation_threshold"),
    ):
        obj = _obj()
        obj[field] = value
        _refused(S.SignerThresholdInvalid, obj, words)
    obj = _obj()
    obj["threshold"] = 2
    obj["rotation_threshold"] = 2
    assert S.signers_from_obj(obj).threshold == 2
    x, y = _point(_obj("signers_new.json"), 0)
    obj["signers"].append(_entry(x, y, "third"))
    obj["threshold"] = 3  # ordinary bundles may not need more keys than a rotation
    _refused(S.SignerThresholdInvalid, obj, "rotation_threshold")
