"""Makes tests/vectors/ecdsa_p256.json, the vectors for pinagent.ecdsa (run: .venv/bin/python
tests/vectors/make_ecdsa_vectors.py). Deterministic: fixed private keys, RFC 6979 signing
(cryptography's deterministic_signing), no randomness, so re-running gives the same file.

The expected results never come from pinagent: every "valid" vector is checked here to verify
with pyca/cryptography, every "invalid" signature to be refused by it (or its key to be
refused when loaded), and the constructed cases use the small affine arithmetic below, which
shares no code with the device.

Layout (all byte strings are lowercase hex):
  keys:    name -> {"priv": int as decimal string ("" for solved keys), "point": 04||X||Y}
  valid:   [{"name", "key", "digest", "sig" (raw r||s), "why"}] (their DER forms are der/from_*)
           verify_p256(keys[key].point, digest, sig) must return None
  invalid: [{"name", "point", "digest", "sig", "reason", "why"}]
           verify_p256 must raise SignatureError whose reason contains `reason`
  der:     [{"name", "der", "raw"}] decode_der_signature gives raw r||s
           [{"name", "der", "reason"}] it raises SignatureError, reason containing `reason`
  spki:    [{"name", "spki", "point"}] / [{"name", "spki", "reason"}] public_key_from_spki

How each was made:
  valid/k1_*, k2_*       RFC 6979 signatures by two fixed keys over SHA-256 of fixed messages.
  valid/high_s           k1's signature with s replaced by n - s. ECDSA accepts both (s, n-s);
                         the device does too: bundle security rests on the signed bytes and the
                         version number, not on signatures being non-malleable (documented in
                         pinagent/ecdsa.py).
  valid/digest_zero      prehashed signature of the all-zero digest: e = 0, so u1 = 0 and the
                         G half of the ladder is empty.
  valid/digest_ff        digest ff..ff: e > n, reduced mod n.
  valid/key_is_g,        private keys 1 and n-1: Q = G and Q = -G share the x of the G table.
    key_is_minus_g
  valid/r_small_s_one    Wycheproof-style: r and s chosen (r the x of a point R with a tiny x,
                         s = 1), then the public key is solved for: Q = r^-1 (s R - e G).
  valid/x_above_n        x(R) in [n, p): r = x(R) - n, exercising the r + n check.
  valid/u1g_equals_u2q   u1*G == u2*Q: the ladder meets the same point from both sides.
  invalid/*              range checks (r, s = 0, n, > n, 2^256-1), unreduced r = x(R) of the
                         x_above_n case, wrong digest, wrong key, r/s swapped, r+1, R at infinity
                         (u1*G + u2*Q = O, constructed with e = -r*d mod n), malformed keys
                         (off curve, X = p, Y = p, compressed, wrong prefix, (0, 0)), lengths.
  der/*                  cryptography's DER plus hand-made edge cases: 33-byte r (leading 00),
                         tiny r, non-minimal integers, negative integers, long-form and
                         indefinite lengths, trailing bytes, extra element, truncation.
  spki/*                 cryptography's SPKI for P-256, hand-made compressed-point SPKI, a
                         P-384 key, an Ed25519 key, an off-curve point, a trailing byte.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)

OUT = Path(__file__).with_name("ecdsa_p256.json")

P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
G = (
    0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
    0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
)
Point = tuple[int, int] | None  # None is the point at infinity

# ---- a small, obviously-correct affine arithmetic (independent of pinagent) ----------------


def add(a: Point, b: Point) -> Point:
    if a is None:
        return b
    if b is None:
        return a
    if a[0] == b[0] and (a[1] + b[1]) % P == 0:
        return None
    if a == b:
        lam = (3 * a[0] * a[0] - 3) * pow(2 * a[1], -1, P) % P
    else:
        lam = (b[1] - a[1]) * pow(b[0] - a[0], -1, P) % P
    x = (lam * lam - a[0] - b[0]) % P
    return x, (lam * (a[0] - x) - a[1]) % P


def mul(k: int, pt: Point) -> Point:
    acc: Point = None
    while k:
        if k & 1:
            acc = add(acc, pt)
        pt = add(pt, pt)
        k >>= 1
    return acc


def lift_x(x: int) -> tuple[int, int] | None:
    # p = 3 mod 4: sqrt(a) = a^((p+1)/4) when a is a square.
    rhs = (x**3 - 3 * x + B) % P
    y = pow(rhs, (P + 1) // 4, P)
    return (x, y) if y * y % P == rhs else None


def h(b: bytes) -> str:
    return b.hex()


def b32(v: int) -> bytes:
    return v.to_bytes(32, "big")


def encode_point(pt: tuple[int, int]) -> bytes:
    return b"\x04" + b32(pt[0]) + b32(pt[1])


def raw(r: int, s: int) -> bytes:
    return b32(r) + b32(s)


# ---- checks against pyca/cryptography ----------------------------------------------------


def crypto_verifies(point: bytes, digest: bytes, sig: bytes) -> bool:
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError:
        return False
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    except (InvalidSignature, ValueError):
        return False
    return True


# ---- vectors ---------------------------------------------------------------------------


def make() -> dict[str, Any]:
    keys: dict[str, Any] = {}
    spkis: dict[str, bytes] = {}
    privs: dict[str, int] = {
        "k1": 0x1F2E3D4C5B6A79881F2E3D4C5B6A79881F2E3D4C5B6A79881F2E3D4C5B6A7988,
        "k2": 0x0102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F20,
        "one": 1,
        "minus_one": N - 1,
    }
    for name, d in privs.items():
        pk = ec.derive_private_key(d, ec.SECP256R1()).public_key()
        point = pk.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        assert point == encode_point(mul(d, G))  # type: ignore[arg-type]
        spki_der = pk.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        keys[name] = {"priv": str(d), "point": h(point)}
        spkis[name] = spki_der

    def sign(key: str, digest: bytes) -> bytes:
        sk = ec.derive_private_key(privs[key], ec.SECP256R1())
        der = sk.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()), deterministic_signing=True))
        r, s = decode_dss_signature(der)
        return raw(r, s)

    valid: list[dict[str, str]] = []
    valid_der: list[tuple[str, bytes, int, int]] = []
    extra_keys: dict[str, tuple[int, int]] = {}

    def add_valid(name: str, key: str, digest: bytes, sig: bytes, why: str) -> None:
        point = bytes.fromhex(keys[key]["point"]) if key in keys else encode_point(extra_keys[key])
        assert crypto_verifies(point, digest, sig), name
        r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
        valid.append({"name": name, "key": key, "digest": h(digest), "sig": h(sig), "why": why})
        valid_der.append((name, encode_dss_signature(r, s), r, s))

    msg1 = b"fleetpin bundle v1 payload"
    msg2 = b"fleetpin bundle v2 payload, signed by the backup key"
    d1, d2 = hashlib.sha256(msg1).digest(), hashlib.sha256(msg2).digest()
    s1 = sign("k1", d1)
    add_valid("k1_msg1", "k1", d1, s1, "RFC 6979 signature by k1")
    add_valid("k2_msg2", "k2", d2, sign("k2", d2), "RFC 6979 signature by k2")
    add_valid("k1_msg2", "k1", d2, sign("k1", d2), "RFC 6979 signature by k1")
    r1, s1v = int.from_bytes(s1[:32], "big"), int.from_bytes(s1[32:], "big")
    add_valid("high_s", "k1", d1, raw(r1, N - s1v), "s replaced by n - s: still valid ECDSA, accepted")
    add_valid("digest_zero", "k1", bytes(32), sign("k1", bytes(32)), "e = 0, so u1 = 0")
    add_valid("digest_ff", "k2", b"\xff" * 32, sign("k2", b"\xff" * 32), "e > n, reduced mod n")
    add_valid("key_is_g", "one", d1, sign("one", d1), "private key 1: Q = G")
    add_valid("key_is_minus_g", "minus_one", d1, sign("minus_one", d1), "private key n-1: Q = -G")

    # Wycheproof-style: choose R and s, solve for the public key Q = r^-1 (s R - e G).
    def solved_key(R: tuple[int, int], r: int, s: int, e: int) -> tuple[int, int]:
        q = mul(pow(r, -1, N), add(mul(s, R), mul((-e) % N, G)))
        assert q is not None
        return q

    x = 2
    while lift_x(x) is None:
        x += 1
    R_small = lift_x(x)
    assert R_small is not None
    extra_keys["solved_r_small"] = solved_key(R_small, x, 1, int.from_bytes(d1, "big"))
    add_valid("r_small_s_one", "solved_r_small", d1, raw(x, 1), "r = %d (tiny x of R), s = 1" % x)

    x = N
    while lift_x(x) is None:
        x += 1
    R_big = lift_x(x)
    assert R_big is not None and N <= x < P
    r_big = x - N
    s_big = 0x2222222222222222222222222222222222222222222222222222222222222222
    extra_keys["solved_x_above_n"] = solved_key(R_big, r_big, s_big, int.from_bytes(d2, "big"))
    add_valid("x_above_n", "solved_x_above_n", d2, raw(r_big, s_big), "x(R) in [n, p): r = x(R) - n")

    # u1*G == u2*Q with Q = dG: pick u1, R = 2*u1*G, r = x(R) mod n, w = u1 / (r d), e = r d.
    d = privs["k2"]
    u1 = 0x0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF
    R = mul(2 * u1, G)
    assert R is not None
    r = R[0] % N
    w = u1 * pow(r * d, -1, N) % N
    e = r * d % N
    add_valid("u1g_equals_u2q", "k2", b32(e), raw(r, pow(w, -1, N)), "u1*G == u2*Q (the sum doubles a point)")

    # ---- invalid signatures ----
    invalid: list[dict[str, str]] = []
    k1 = bytes.fromhex(keys["k1"]["point"])
    k2 = bytes.fromhex(keys["k2"]["point"])

    def add_invalid(
        name: str, point: bytes, digest: bytes, sig: bytes, reason: str, why: str, format_only: bool = False
    ) -> None:
        # format_only: a signature cryptography accepts, refused by the device for its encoding
        if len(digest) == 32 and len(sig) == 64:
            assert crypto_verifies(point, digest, sig) == format_only, name
        invalid.append({"name": name, "point": h(point), "digest": h(digest), "sig": h(sig), "reason": reason, "why": why})

    add_invalid("wrong_digest", k1, d2, s1, "does not match", "k1's signature of msg1 checked against msg2")
    add_invalid("wrong_key", k2, d1, s1, "does not match", "k1's signature checked with k2")
    add_invalid("swapped_r_s", k1, d1, raw(s1v, r1), "does not match", "r and s swapped")
    add_invalid("r_plus_one", k1, d1, raw(r1 + 1, s1v), "does not match", "r off by one")
    add_invalid("r_zero", k1, d1, raw(0, s1v), "r out of range", "r = 0")
    add_invalid("s_zero", k1, d1, raw(r1, 0), "s out of range", "s = 0")
    add_invalid("r_n", k1, d1, raw(N, s1v), "r out of range", "r = n")
    add_invalid("s_n", k1, d1, raw(r1, N), "s out of range", "s = n")
    add_invalid("r_above_n", k1, d1, raw(N + 1, s1v), "r out of range", "r = n + 1")
    add_invalid("s_max", k1, d1, raw(r1, 2**256 - 1), "s out of range", "s = 2^256 - 1")
    add_invalid(
        "x_above_n_unreduced",
        encode_point(extra_keys["solved_x_above_n"]),
        d2,
        raw(x, s_big),
        "r out of range",
        "r = x(R) itself, not reduced mod n",
    )
    # R = u1 G + u2 Q = infinity: Q = dG, e = -r d mod n makes u1 + u2 d = 0.
    r_inf, s_inf = 0x3333333333333333333333333333333333333333333333333333333333333333, 0x4444
    add_invalid(
        "r_at_infinity", k2, b32((-r_inf * d) % N), raw(r_inf, s_inf), "does not match", "u1*G + u2*Q is the point at infinity"
    )
    q1 = mul(privs["k1"], G)
    assert q1 is not None
    add_invalid("key_off_curve", k1[:-1] + bytes([k1[-1] ^ 1]), d1, s1, "not on the curve", "Y's last bit flipped")
    add_invalid("key_x_is_p", b"\x04" + b32(P) + b32(q1[1]), d1, s1, "not below p", "X = p")
    add_invalid("key_y_is_p", b"\x04" + b32(q1[0]) + b32(P), d1, s1, "not below p", "Y = p")
    add_invalid("key_zero", b"\x04" + bytes(64), d1, s1, "not on the curve", "(0, 0)")
    add_invalid("key_compressed", bytes([2 + (q1[1] & 1)]) + b32(q1[0]), d1, s1, "65 bytes", "33-byte compressed point", True)
    add_invalid("key_prefix_03", b"\x03" + k1[1:], d1, s1, "not an uncompressed point", "65 bytes, prefix 03")
    add_invalid("key_hybrid_06", bytes([6 + (q1[1] & 1)]) + k1[1:], d1, s1, "not an uncompressed point", "hybrid form")
    add_invalid("key_infinity", b"\x00", d1, s1, "65 bytes", "SEC1 encoding of infinity")
    add_invalid("sig_63_bytes", k1, d1, s1[:-1], "64 bytes", "truncated signature")
    add_invalid("sig_der_not_raw", k1, d1, encode_dss_signature(r1, s1v), "64 bytes", "DER passed where raw is expected")
    add_invalid("digest_31_bytes", k1, d1[:-1], s1, "32 bytes", "short digest")
    add_invalid("digest_is_message", k1, msg1, s1, "32 bytes", "the message instead of its SHA-256")

    # ---- DER signatures ----
    der: list[dict[str, str]] = []

    def der_ok(name: str, data: bytes, r: int, s: int) -> None:
        assert decode_dss_signature(data) == (r, s), name
        der.append({"name": name, "der": h(data), "raw": h(raw(r, s))})

    def der_bad(name: str, data: bytes, reason: str) -> None:
        der.append({"name": name, "der": h(data), "reason": reason})

    def integer(v: bytes) -> bytes:
        return b"\x02" + bytes([len(v)]) + v

    def seq(body: bytes) -> bytes:
        return b"\x30" + bytes([len(body)]) + body

    for name, data, r, s in valid_der:
        der_ok("from_" + name, data, r, s)
    hi = 0x80 << 248 | 0x1234
    der_ok("r_high_bit", seq(integer(b"\x00" + b32(hi)) + integer(b"\x05")), hi, 5)
    der_ok("r_zero", seq(integer(b"\x00") + integer(b"\x01")), 0, 1)  # valid DER; verify refuses r = 0
    der_ok("max_32_bytes", seq(integer(b"\x00" + b"\xff" * 32) + integer(b"\x00" + b"\xff" * 32)), 2**256 - 1, 2**256 - 1)
    good = seq(integer(b"\x01\x02") + integer(b"\x03"))
    der_ok("tiny", good, 0x0102, 3)
    der_bad("non_minimal_r", seq(integer(b"\x00\x01\x02") + integer(b"\x03")), "non-minimal")
    der_bad("non_minimal_zero", seq(integer(b"\x00\x00") + integer(b"\x03")), "non-minimal")
    der_bad("negative_r", seq(integer(b"\x81\x02") + integer(b"\x03")), "negative")
    der_bad("negative_s", seq(integer(b"\x01") + integer(b"\xff")), "negative")
    der_bad("empty_integer", seq(integer(b"") + integer(b"\x03")), "INTEGER length")
    der_bad("r_33_significant_bytes", seq(integer(b"\x01" + bytes(32)) + integer(b"\x03")), "longer than 32")
    der_bad("trailing_byte", good + b"\x00", "length")
    der_bad("extra_element", seq(integer(b"\x01") + integer(b"\x02") + integer(b"\x03")), "after s")
    der_bad("missing_s", seq(integer(b"\x01")), "INTEGER expected")
    der_bad("long_form_seq_length", b"\x30\x81" + bytes([len(good) - 2]) + good[2:], "long-form")
    der_bad("long_form_int_length", seq(b"\x02\x81\x01\x01" + integer(b"\x03")), "long-form")
    der_bad("indefinite_length", b"\x30\x80" + good[2:] + b"\x00\x00", "long-form")
    der_bad("truncated", good[:-1], "length")
    der_bad("seq_length_short", b"\x30" + bytes([len(good) - 3]) + good[2:], "length")
    der_bad("int_length_overruns", seq(b"\x02\x05\x01" + integer(b"\x03")), "INTEGER length")
    der_bad("wrong_outer_tag", b"\x31" + good[1:], "not a SEQUENCE")
    der_bad("wrong_int_tag", seq(b"\x03\x01\x01" + integer(b"\x03")), "INTEGER expected")
    der_bad("empty", b"", "not a SEQUENCE")
    assert s1[0] != 0x30
    der_bad("raw_64_bytes", s1, "not a SEQUENCE")
    for v in der:  # cryptography's DER parser is strict too: it must refuse every malformed case
        if "reason" in v and v["name"] != "r_33_significant_bytes":  # well-formed, too big for P-256
            try:
                decode_dss_signature(bytes.fromhex(v["der"]))
            except ValueError:
                continue
            raise AssertionError(v["name"] + " is accepted by cryptography")

    # ---- SPKI ----
    spki: list[dict[str, str]] = []
    k1_spki = spkis["k1"]
    spki.append({"name": "k1", "spki": h(k1_spki), "point": h(k1)})
    spki.append({"name": "k2", "spki": h(spkis["k2"]), "point": h(k2)})
    compressed = bytes([2 + (q1[1] & 1)]) + b32(q1[0])
    comp_spki = b"\x30\x39" + k1_spki[2:23] + b"\x03\x22\x00" + compressed
    ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), compressed)  # a valid compressed point
    assert serialization.load_der_public_key(comp_spki) is not None
    spki.append({"name": "compressed", "spki": h(comp_spki), "reason": "compressed"})
    p384 = ec.derive_private_key(12345, ec.SECP384R1()).public_key()
    spki.append(
        {
            "name": "p384",
            "spki": h(p384.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)),
            "reason": "not a P-256",
        }
    )
    ed = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32))).public_key()
    spki.append(
        {
            "name": "ed25519",
            "spki": h(ed.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)),
            "reason": "not a P-256",
        }
    )
    spki.append({"name": "off_curve", "spki": h(k1_spki[:-1] + bytes([k1_spki[-1] ^ 1])), "reason": "not on the curve"})
    spki.append({"name": "trailing_byte", "spki": h(k1_spki + b"\x00"), "reason": "not a P-256"})
    spki.append({"name": "truncated", "spki": h(k1_spki[:-1]), "reason": "not a P-256"})
    spki.append({"name": "empty", "spki": "", "reason": "not a P-256"})

    for name, pt in extra_keys.items():
        keys[name] = {"priv": "", "point": h(encode_point(pt))}
    return {
        "about": "pinagent.ecdsa vectors; made by make_ecdsa_vectors.py (see its docstring)",
        "keys": keys,
        "valid": valid,
        "invalid": invalid,
        "der": der,
        "spki": spki,
    }


def main() -> None:
    data = make()
    # One object per line: readable diffs, and small enough for the VM's ESP32-sized heap.
    lines = []
    for section in ("keys", "valid", "invalid", "der", "spki"):
        items = data[section]
        rows = [json.dumps({k: v}, sort_keys=True)[1:-1] for k, v in items.items()] if section == "keys" else [
            json.dumps(v, sort_keys=True) for v in items
        ]
        opener, closer = ("{", "}") if section == "keys" else ("[", "]")
        lines.append(' "%s": %s\n  %s\n %s' % (section, opener, ",\n  ".join(rows), closer))
    OUT.write_text('{"about": %s,\n%s\n}\n' % (json.dumps(data["about"]), ",\n".join(lines)))
    assert json.loads(OUT.read_text()) == data
    print(
        "wrote %s: %d valid, %d invalid, %d DER, %d SPKI"
        % (OUT, len(data["valid"]), len(data["invalid"]), len(data["der"]), len(data["spki"]))
    )


if __name__ == "__main__":
    main()
