# pinagent.ecdsa against tests/vectors/ecdsa_p256.json (made by make_ecdsa_vectors.py with
# pyca/cryptography and an independent affine implementation, never with pinagent). Runs
# under CPython and on the MicroPython VM. A full verification costs ~10 ms on the VM, so the
# suite keeps their number to about 25.

import hashlib

from support import raises, vector_json

from pinagent import ecdsa
from pinagent.ecdsa import SignatureError, decode_der_signature, public_key_from_spki, verify_p256

N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _x(text):
    return bytes.fromhex(text)


def _section(name):
    # One section at a time: the whole file parsed at once is a large part of an ESP32 heap.
    data = vector_json("ecdsa_p256.json")
    if name == "valid":
        return data["keys"], data["valid"]
    return data[name]


def _k1_case():
    keys, valid = _section("valid")
    for v in valid:
        if v["name"] == "k1_msg1":
            return _x(keys["k1"]["point"]), _x(v["digest"]), _x(v["sig"])
    raise AssertionError("k1_msg1 missing")


def test_every_valid_vector_verifies():
    keys, valid = _section("valid")
    assert len(valid) >= 11
    for v in valid:
        result = verify_p256(_x(keys[v["key"]]["point"]), _x(v["digest"]), _x(v["sig"]))
        assert result is None, v["name"]  # None, never a bool that a caller could ignore


def test_every_invalid_vector_is_refused_with_its_reason():
    cases = _section("invalid")
    assert len(cases) >= 20
    for v in cases:
        e = raises(SignatureError, verify_p256, _x(v["point"]), _x(v["digest"]), _x(v["sig"]))
        assert v["reason"] in e.reason, v["name"] + ": " + e.reason
        assert str(e) == e.reason


def test_the_vectors_cover_the_cases_that_matter():
    keys, valid = _section("valid")
    names = [v["name"] for v in valid] + [v["name"] for v in _section("invalid")]
    for name in (
        "high_s",
        "x_above_n",
        "digest_zero",
        "u1g_equals_u2q",
        "r_zero",
        "s_zero",
        "r_n",
        "s_n",
        "r_above_n",
        "wrong_digest",
        "wrong_key",
        "swapped_r_s",
        "r_at_infinity",
        "key_off_curve",
        "key_x_is_p",
        "key_compressed",
    ):
        assert name in names, name


def test_one_flipped_bit_anywhere_is_refused():
    point, digest, sig = _k1_case()
    for where, i in (("r", 31), ("s", 32), ("s", 63)):
        bad = bytearray(sig)
        bad[i] ^= 1
        e = raises(SignatureError, verify_p256, point, digest, bytes(bad))
        assert e.reason == "signature does not match", where
    bad = bytearray(digest)
    bad[0] ^= 0x80
    assert raises(SignatureError, verify_p256, point, bytes(bad), sig).reason == "signature does not match"
    bad = bytearray(point)
    bad[1] ^= 1  # another X: almost surely off the curve, refused before any ladder work
    assert "not on the curve" in raises(SignatureError, verify_p256, bytes(bad), digest, sig).reason


def test_accepts_memoryview_and_bytearray_inputs():
    point, digest, sig = _k1_case()
    buf = bytearray(b"\x00" + point + digest + sig)
    mv = memoryview(buf)
    assert verify_p256(mv[1:66], mv[66:98], mv[98:162]) is None


def test_the_g_table_is_rebuilt_identically():
    point, digest, sig = _k1_case()
    before = ecdsa._g_odd_multiples()
    ecdsa._g_table = None  # as on a fresh boot: the table is built lazily by the next verify
    assert verify_p256(point, digest, sig) is None
    assert ecdsa._g_table == before


def test_der_vectors():
    cases = _section("der")
    good = 0
    for v in cases:
        if "raw" in v:
            assert decode_der_signature(_x(v["der"])) == _x(v["raw"]), v["name"]
            good += 1
        else:
            e = raises(SignatureError, decode_der_signature, _x(v["der"]))
            assert v["reason"] in e.reason, v["name"] + ": " + e.reason
    assert good >= 12 and len(cases) - good >= 18


def test_der_signature_then_verify_end_to_end():
    point, digest, sig = _k1_case()
    for v in _section("der"):
        if v["name"] == "from_k1_msg1":
            raw = decode_der_signature(memoryview(_x(v["der"])))
            assert raw == sig
            assert verify_p256(point, digest, raw) is None
            return
    raise AssertionError("from_k1_msg1 missing")


def test_spki_vectors():
    cases = _section("spki")
    for v in cases:
        if "point" in v:
            assert public_key_from_spki(_x(v["spki"])) == _x(v["point"]), v["name"]
        else:
            e = raises(SignatureError, public_key_from_spki, _x(v["spki"]))
            assert v["reason"] in e.reason, v["name"] + ": " + e.reason
    assert len(cases) >= 8


def test_wrong_lengths_never_leak_other_errors():
    point, digest, sig = _k1_case()
    for args in (
        (b"", digest, sig),
        (point, b"", sig),
        (point, digest, b""),
        (point + b"\x00", digest, sig),
        (point, digest + b"\x00", sig),
        (point, digest, sig + b"\x00"),
    ):
        raises(SignatureError, verify_p256, *args)
    for der in (b"\x30", b"\x30\x00", b"\x30\x02\x02\x00", b"\x30\x03\x02\x01", b"\x02\x01\x01"):
        raises(SignatureError, decode_der_signature, der)
    raises(SignatureError, public_key_from_spki, b"\x30")


def test_signature_error_is_a_value_error():
    e = raises(ValueError, verify_p256, b"", b"", b"")
    assert isinstance(e, SignatureError)
    assert e.reason


def test_high_s_and_low_s_both_verify():
    point, digest, sig = _k1_case()
    s = int.from_bytes(sig[32:], "big")
    other = sig[:32] + (N - s).to_bytes(32, "big")
    assert verify_p256(point, digest, sig) is None
    assert verify_p256(point, digest, other) is None


def test_wnaf_digits_add_up_to_the_scalar():
    for k in (0, 1, 2, 3, 15, 16, 17, 31, 255, 2**255, 2**256 - 1, N - 1, N - 2, (N - 1) // 2):
        for w in (4, 5, 6):
            naf = ecdsa._wnaf(k, w)
            total = 0
            last = -w
            for i in range(len(naf) - 1, -1, -1):
                d = naf[i]
                if d > 127:
                    d -= 256
                total = total * 2 + d
                if d:
                    assert d & 1 and -(1 << (w - 1)) < d < (1 << (w - 1)), (k, w, i, d)
            assert total == k, (k, w)
            for i in range(len(naf)):  # non-adjacency: a nonzero digit, then w-1 zeros
                if naf[i]:
                    assert i - last >= w, (k, w, i)
                    last = i


def test_digest_is_not_rehashed():
    # verify_p256 takes the SHA-256 digest, not the message: the message itself is refused
    point, digest, sig = _k1_case()
    assert len(digest) == 32
    assert hashlib.sha256(b"fleetpin bundle v1 payload").digest() == digest
    e = raises(SignatureError, verify_p256, point, b"fleetpin bundle v1 payload", sig)
    assert "32 bytes" in e.reason
