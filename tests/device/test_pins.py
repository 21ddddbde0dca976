# pinagent.pins: strict pin text, digests of SPKIs, chain digests. Runs under CPython and on
# the MicroPython VM.

import hashlib

from support import raises, read_vector, vector_json

from pinagent.der import DerError
from pinagent.pins import PinError, chain_digests, parse_pin, pin_to_text, spki_digest

EMPTY_SHA256 = hashlib.sha256(b"").digest()
EMPTY_PIN = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="  # SHA-256 of nothing, well known


def test_pin_text_round_trip():
    assert pin_to_text(EMPTY_SHA256) == EMPTY_PIN
    assert len(EMPTY_PIN) == 44
    assert parse_pin(EMPTY_PIN) == EMPTY_SHA256
    assert parse_pin("sha256/" + EMPTY_PIN) == EMPTY_SHA256
    assert parse_pin(EMPTY_PIN.encode()) == EMPTY_SHA256  # bytes as read from a file
    for i in range(0, 256, 37):
        digest = hashlib.sha256(bytes([i])).digest()
        assert parse_pin(pin_to_text(digest)) == digest


def test_pin_to_text_wants_32_bytes():
    assert "32 bytes" in raises(PinError, pin_to_text, b"\x00" * 31).reason
    assert "32 bytes" in raises(PinError, pin_to_text, b"\x00" * 33).reason


def _refused(text, why):
    e = raises(PinError, parse_pin, text)
    assert why in e.reason, "%r: %s" % (text, e.reason)


def test_refuses_values_that_are_not_32_bytes():
    _refused(pin_to_text_any(b"\x01" * 31), "31 bytes")  # 44 chars, "=="
    _refused(pin_to_text_any(b"\x01" * 33), "33 bytes")  # 44 chars, no padding
    _refused("sha256/" + pin_to_text_any(b"\x01" * 20), "20 bytes")  # a SHA-1 pin
    _refused(pin_to_text_any(b"\x01" * 64), "64 bytes")
    _refused("AAAAA", "cannot encode whole bytes")


def pin_to_text_any(data):
    import binascii

    return binascii.b2a_base64(data)[:-1].decode()


def test_refuses_invalid_characters():
    _refused(EMPTY_PIN[:10] + "*" + EMPTY_PIN[11:], "invalid character '*'")
    _refused(EMPTY_PIN.replace("+", "-").replace("/", "_"), "invalid character '-'")  # base64url
    _refused(EMPTY_PIN[:10] + "\u00e9" + EMPTY_PIN[11:], "invalid character 0xc3")
    _refused(EMPTY_PIN[:10] + "\x00" + EMPTY_PIN[11:], "invalid character 0x00")
    _refused("sha256:" + EMPTY_PIN, "invalid character ':'")


def test_refuses_whitespace_anywhere():
    for text in (" " + EMPTY_PIN, EMPTY_PIN + "\n", EMPTY_PIN[:20] + " " + EMPTY_PIN[20:], "sha256/ " + EMPTY_PIN,
                 EMPTY_PIN[:20] + "\t" + EMPTY_PIN[20:]):
        _refused(text, "whitespace")


def test_refuses_bad_padding():
    _refused(EMPTY_PIN[:-1], "missing its '=' padding")
    _refused(EMPTY_PIN + "=", "2 '=' padding")
    _refused(EMPTY_PIN[:20] + "=" + EMPTY_PIN[21:], "'=' padding in the middle")
    _refused("=" + EMPTY_PIN[1:], "'=' padding in the middle")


def test_refuses_non_canonical_base64():
    # "U" is 20 = 0b010100: the 2 unused low bits are clear. "V" (21) sets one of them and
    # would decode to the same digest with a lenient decoder.
    assert EMPTY_PIN[42] == "U"
    for last in "VWX":
        _refused(EMPTY_PIN[:42] + last + "=", "non-canonical")


def test_refuses_empty_and_other_prefixes():
    _refused("", "empty")
    _refused("sha256/", "empty")
    _refused("sha256/sha256/" + EMPTY_PIN, "given twice")
    _refused("sha1/" + pin_to_text_any(b"\x01" * 20), "unsupported pin prefix 'sha1/'")
    _refused("SHA256/" + EMPTY_PIN, "unsupported pin prefix 'SHA256/'")
    _refused(None, "not NoneType")
    _refused(32, "not int")


def test_spki_digests_of_the_chain_match_the_openssl_pins():
    vectors = vector_json("pins.json")
    names = vectors["chain"]
    assert names == ["chain-leaf", "chain-intermediate", "chain-root"]
    certs = vectors["certs"]
    ders = [read_vector(certs[n]["der"]) for n in names]
    got = chain_digests(ders)
    assert [d for d, _ in got] == [0, 1, 2]
    for (depth, digest), n in zip(got, names):
        assert digest == parse_pin(certs[n]["pin"]), n
    # spki_digest hashes a view in place and agrees with hashing a copy
    from pinagent.der import spki_of_certificate

    spki = spki_of_certificate(ders[0])
    assert spki_digest(spki) == hashlib.sha256(bytes(spki)).digest() == got[0][1]


def test_chain_digests_refuses_a_malformed_certificate():
    leaf = read_vector(vector_json("pins.json")["certs"]["chain-leaf"]["der"])
    e = raises(DerError, chain_digests, [leaf, leaf[:-1]])
    assert e.reason == "truncated"
    assert chain_digests([]) == []
