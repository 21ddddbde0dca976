# pinagent.der against the committed vectors (tests/vectors/README.md): the expected values
# come from openssl and pyca/cryptography, never from pinagent itself. Runs under CPython and
# on the MicroPython VM; reads one certificate at a time (the VM heap is ESP32-sized).

import hashlib

from support import raises, read_vector, vector_json

from pinagent import der as _der
from pinagent.der import DerError, parse_certificate, spki_of_certificate, subject_cn
from pinagent.pins import parse_pin


def _vectors():
    return vector_json("pins.json")


def test_every_good_vector_parses_to_the_openssl_values():
    certs = _vectors()["certs"]
    assert len(certs) >= 20
    for name in sorted(certs):
        v = certs[name]
        data = read_vector(v["der"])
        c = parse_certificate(data)
        where = name + ": "
        digest = hashlib.sha256(c.spki).digest()
        assert digest == parse_pin(v["pin"]), where + "SPKI digest differs from the openssl pin"
        assert digest == parse_pin(v["spki_sha256"]), where + "SPKI digest differs from the raw SPKI's"
        assert bytes(c.spki) == data[v["spki_offset"] : v["spki_offset"] + v["spki_length"]], where + "span"
        if "reencoded_pin" in v:  # a re-encoded key hashes differently: the raw bytes are the pin
            assert digest != parse_pin(v["reencoded_pin"]), where + "matched the re-encoded key"
        assert c.subject_cn == v["subject_cn"], where + repr(c.subject_cn)
        assert c.not_before == v["not_before"], where + "not_before %d" % c.not_before
        assert c.not_after == v["not_after"], where + "not_after %d" % c.not_after
        assert bytes(spki_of_certificate(data)) == bytes(c.spki), where + "fast path differs"
        assert subject_cn(data) == v["subject_cn"], where + "subject_cn %r" % (subject_cn(data),)


def test_subject_cn_walks_to_the_subject_and_refuses_what_it_reads_badly():
    # what the pin check keeps for reports, without parse_certificate's full check
    certs = _vectors()["certs"]
    assert subject_cn(read_vector(certs["no-cn"]["der"])) is None
    data = read_vector(certs["ec-p256"]["der"])
    for n in (0, 1, 10, len(data) - 1):
        raises(DerError, subject_cn, data[:n])
    buf = bytearray(read_vector(certs["chain-leaf"]["der"]))
    for i in range(len(buf)):  # a damaged certificate: a DerError or some text, nothing else
        saved = buf[i]
        for value in (saved ^ 0xFF, saved ^ 0x01):
            buf[i] = value
            try:
                cn = subject_cn(buf)
            except DerError:
                cn = None
            assert cn is None or isinstance(cn, str), i
        buf[i] = saved


def test_edge_vectors_cover_what_they_claim():
    certs = _vectors()["certs"]
    assert certs["no-cn"]["subject_cn"] is None
    assert read_vector(certs["ed25519-small"]["der"])[1] == 0x81  # the other header shape
    assert "reencoded_pin" in certs["rsa-pss"] and "reencoded_pin" in certs["rsa-pss-params"]
    assert certs["utf8-cn"]["subject_cn"] == "Z\u00fcrich \u2603 \U0001d11e.example"  # a non-BMP char too
    assert certs["bmp-cn"]["subject_cn"] == "\u03a9mega.example"
    assert certs["generalized-time"]["not_after"] == 2524608000  # 2050-01-01, GeneralizedTime
    assert certs["generalized-time"]["not_before"] == 2524607999  # 2049-12-31 23:59:59, UTCTime
    assert certs["wide-validity"]["not_before"] == -631152000  # 1950-01-01: UTCTime "50" is 1950
    assert certs["wide-validity"]["not_after"] == 4294967296  # past 32-bit seconds


def test_spki_is_a_view_into_the_input_not_a_copy():
    v = _vectors()["certs"]["ec-p256"]
    buf = bytearray(read_vector(v["der"]))
    for fn in (spki_of_certificate, lambda d: parse_certificate(d).spki):
        spki = fn(buf)
        assert type(spki) is memoryview
        first = spki[0]
        buf[v["spki_offset"]] ^= 0xFF  # the change shows through: same memory
        assert spki[0] == first ^ 0xFF
        buf[v["spki_offset"]] ^= 0xFF


def test_accepts_a_memoryview_slice_of_a_larger_buffer():
    # mbedTLS hands the verify callback a memoryview; it may sit inside a larger buffer
    v = _vectors()["certs"]["chain-leaf"]
    data = read_vector(v["der"])
    view = memoryview(b"\x30\x00" + data + b"\xff")[2:-1]
    spki = spki_of_certificate(view)
    assert hashlib.sha256(spki).digest() == parse_pin(v["pin"])
    assert parse_certificate(view).subject_cn == "chain-leaf.example"


def test_every_malformed_vector_raises_der_error_with_its_reason():
    bad = _vectors()["malformed"]
    assert len(bad) >= 21
    for name in sorted(bad):
        v = bad[name]
        data = read_vector(v["der"])
        e = raises(DerError, parse_certificate, data)
        assert v["reason"] in e.reason, name + ": " + e.reason
        if v["fast_reason"] is None:  # a part the fast path deliberately does not read
            spki_of_certificate(data)
        else:
            e = raises(DerError, spki_of_certificate, data)
            assert v["fast_reason"] in e.reason, name + " (fast path): " + e.reason


def test_every_truncation_of_a_good_certificate_is_refused():
    data = read_vector(_vectors()["certs"]["ec-p256"]["der"])
    view = memoryview(data)
    for n in range(len(data)):
        e = raises(DerError, spki_of_certificate, view[:n])
        assert e.reason in ("empty", "truncated"), "%d: %s" % (n, e.reason)
        e = raises(DerError, parse_certificate, view[:n])
        assert e.reason in ("empty", "truncated"), "%d: %s" % (n, e.reason)


def _outcome(fn, data):
    try:
        got = fn(data)
    except DerError:
        return None
    return bytes(got if fn is spki_of_certificate else got.spki)


def test_single_byte_corruptions_raise_only_der_error():
    # Any exception but DerError fails the test. Both paths must agree: when the full parse
    # accepts, the fast path gives the same SPKI; when the fast path refuses, so does the full.
    data = read_vector(_vectors()["certs"]["chain-leaf"]["der"])
    buf = bytearray(data)
    # Certificate tag and length, TBSCertificate tag and length form: always caught. (A
    # smaller TBS length byte may still frame the same SPKI: only the full parse refuses it.)
    header = 6
    assert buf[1] == 0x82 and buf[5] == 0x82
    for i in range(len(buf)):
        saved = buf[i]
        for value in (saved ^ 0xFF, saved ^ 0x01, 0x80):
            buf[i] = value
            full = _outcome(parse_certificate, buf)
            fast = _outcome(spki_of_certificate, buf)
            if full is not None:
                assert fast == full, i
            if fast is None:
                assert full is None, i
            if i < header:
                assert fast is None, "header byte %d corrupted to 0x%02x accepted" % (i, value)
        buf[i] = saved


def test_nesting_bound_allows_real_depth_refuses_one_more():
    # MAX_DEPTH nested SEQUENCEs are walked; one more is refused, and not by recursion
    inner = b"\x30\x00"
    for _ in range(_der.MAX_DEPTH - 1):
        inner = _tlv(0x30, inner)
    m = [0] * 10
    _der._check_tree(memoryview(inner), 0, len(inner), m)
    deeper = _tlv(0x30, inner)
    e = raises(DerError, _der._check_tree, memoryview(deeper), 0, len(deeper), m)
    assert "nesting too deep" in e.reason


def test_length_forms():
    m = [0, 0]
    assert _der._tlv(b"\x04\x81\x80" + b"\x00" * 128, 0, 131, m) == 131 and m[1] == 3
    assert _der._tlv(b"\x04\x82\x01\x00" + b"\x00" * 256, 0, 260, m) == 260 and m[1] == 4
    assert "non-minimal" in raises(DerError, _der._tlv, b"\x04\x82\x00\x80" + b"\x00" * 128, 0, 132, m).reason
    assert "non-minimal" in raises(DerError, _der._tlv, b"\x04\x81\x7f" + b"\x00" * 127, 0, 130, m).reason
    assert "overflows" in raises(DerError, _der._tlv, b"\x04\x84\x00\x00\x00\x01\x00", 0, 7, m).reason
    assert "truncated" in raises(DerError, _der._tlv, b"\x04\x83\x01\x00\x00", 0, 5, m).reason
    # a child may not run past its parent even when the buffer goes on
    assert "truncated" in raises(DerError, _der._tlv, b"\x04\x02\x00\x00", 0, 3, m).reason


def _tlv(tag, content):
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    if n < 0x100:
        return bytes([tag, 0x81, n]) + content
    return bytes([tag, 0x82, n >> 8, n & 0xFF]) + content


def _time(text, tag=0x17):
    b = text.encode()
    return _der._time(memoryview(b), tag, 0, len(b))


def test_time_conversion_without_mktime():
    assert _time("700101000000Z") == 0
    assert _time("000101000000Z") == 946684800  # the ESP32 epoch, as POSIX seconds
    assert _time("491231235959Z") == 2524607999
    assert _time("500101000000Z") == -631152000  # UTCTime YY >= 50 is 19YY
    assert _time("20000229120000Z", 0x18) == 951825600  # leap day of a /400 year
    assert _time("20500101000000Z", 0x18) == 2524608000
    assert _time("99991231235959Z", 0x18) == 253402300799
    for text, tag, why in (
        ("21000229000000Z", 0x18, "out of range"),  # 2100 is not a leap year
        ("240230000000Z", 0x17, "out of range"),
        ("241301000000Z", 0x17, "out of range"),
        ("240101240000Z", 0x17, "out of range"),
        ("240101000060Z", 0x17, "out of range"),
        ("2401010000Z", 0x17, "YYMMDDHHMMSSZ"),  # no seconds
        ("240101000000+0100", 0x17, "YYMMDDHHMMSSZ"),
        ("240101000000", 0x17, "YYMMDDHHMMSSZ"),
        ("2401010000001", 0x17, "not UTC"),
        ("24010100000aZ", 0x17, "non-digit"),
        ("20240101000000.5Z", 0x18, "YYYYMMDDHHMMSSZ"),
        ("240101000000Z", 0x04, "unexpected tag 0x04"),
    ):
        e = raises(DerError, _time, text, tag)
        assert why in e.reason, text + ": " + e.reason


def _name(*atvs):
    """A Name with one RDN per (oid_last_byte, tag, value bytes)."""
    rdns = b""
    for oid, tag, value in atvs:
        rdns += _tlv(0x31, _tlv(0x30, _tlv(0x06, bytes([0x55, 0x04, oid])) + _tlv(tag, value)))
    return memoryview(rdns)


def _cn(*atvs):
    name = _name(*atvs)
    return _der._name_cn(name, 0, len(name), [0, 0])


def test_common_name_string_types():
    assert _cn((3, 0x0C, "caf\u00e9".encode())) == "caf\u00e9"  # UTF8String
    assert _cn((3, 0x13, b"a.example")) == "a.example"  # PrintableString
    assert _cn((3, 0x16, b"*.example")) == "*.example"  # IA5String
    assert _cn((3, 0x14, b"caf\xe9")) == "caf\u00e9"  # T61String read as Latin-1
    assert _cn((3, 0x1E, b"\x00a\xd8\x34\xdd\x1e")) == "a\U0001d11e"  # BMPString, surrogate pair
    assert _cn((3, 0x1C, b"\x00\x01\xd1\x1e")) == "\U0001d11e"  # UniversalString
    assert _cn((3, 0x04, b"raw")) is None  # a type not decoded: treated as absent
    assert _cn((10, 0x13, b"org")) is None  # O only, no CN
    assert _cn((3, 0x13, b"first"), (10, 0x13, b"org"), (3, 0x13, b"last")) == "last"


def test_common_name_bad_strings_are_der_errors():
    for atv, why in (
        ((3, 0x0C, b"\xc3"), "bad UTF8String"),
        ((3, 0x0C, b"\xff"), "bad UTF8String"),
        ((3, 0x13, b"\xe9"), "non-ASCII"),
        ((3, 0x1E, b"\x00a\x00"), "odd length"),
        ((3, 0x1E, b"\xdc\x00"), "bad character"),  # lone low surrogate
        ((3, 0x1C, b"\x00\x11\x00\x00"), "bad character"),  # past U+10FFFF
    ):
        e = raises(DerError, _cn, atv)
        assert why in e.reason, e.reason


def test_name_structure_errors():
    for raw, why in (
        (b"\x31\x00", "empty RelativeDistinguishedName"),
        (b"\x30\x00", "unexpected tag 0x30 for RelativeDistinguishedName"),
        (_tlv(0x31, _tlv(0x31, b"")), "unexpected tag 0x31 for AttributeTypeAndValue"),
        (_tlv(0x31, _tlv(0x30, _tlv(0x06, b"\x55\x04\x03"))), "missing AttributeValue"),
        (_tlv(0x31, _tlv(0x30, _tlv(0x06, b"\x55\x04\x03") + b"\x13\x00\x13\x00")), "trailing bytes"),
    ):
        view = memoryview(raw)
        e = raises(DerError, _der._name_cn, view, 0, len(view), [0, 0])
        assert why in e.reason, e.reason


def test_der_error_is_a_value_error_with_a_reason():
    e = raises(DerError, spki_of_certificate, b"")
    assert isinstance(e, ValueError)
    assert e.reason == "empty" and str(e) == "empty"
