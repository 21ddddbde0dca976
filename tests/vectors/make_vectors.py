"""Generates the certificate test vectors under tests/vectors/ (see README.md there).

    .venv/bin/python tests/vectors/make_vectors.py

Keys are fresh each run, so every run rewrites all certificates, keys and pins.json together;
the output is committed. The expected values in pins.json come from tools independent of
pinagent.der: pins from the openssl command pipeline, the raw SPKI's position from
`openssl asn1parse`, subject CN and dates from pyca/cryptography.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import pathlib
import re
import subprocess
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

HERE = pathlib.Path(__file__).resolve().parent
UTC = datetime.timezone.utc
NOT_BEFORE = datetime.datetime(2024, 1, 1, tzinfo=UTC)
NOT_AFTER = datetime.datetime(2034, 1, 1, tzinfo=UTC)


def run(cmd: list[str], stdin: bytes | None = None) -> bytes:
    return subprocess.run(cmd, input=stdin, capture_output=True, check=True).stdout


# --- keys and certificates ---------------------------------------------------------------


def new_key(kind: str):  # type: ignore[no-untyped-def]
    if kind.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[3:]))
    curves: dict[str, ec.EllipticCurve] = {"p256": ec.SECP256R1(), "p384": ec.SECP384R1(), "p521": ec.SECP521R1()}
    if kind in curves:
        return ec.generate_private_key(curves[kind])
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ed448.Ed448PrivateKey.generate()


def sign_hash(key):  # type: ignore[no-untyped-def]
    return None if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)) else hashes.SHA256()


def name(cn: str | None, cn_type: _ASN1Type | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fleetpin test vectors")]
    if cn is not None:
        if cn_type is None:
            attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
        else:
            attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn, _type=cn_type))
    return x509.Name(attrs)


def make_cert(  # type: ignore[no-untyped-def]
    subject: x509.Name,
    key,
    issuer: x509.Name | None = None,
    issuer_key=None,
    ca: bool = False,
    path_length: int | None = None,
    not_before: datetime.datetime = NOT_BEFORE,
    not_after: datetime.datetime = NOT_AFTER,
    dns: str | None = None,
) -> x509.Certificate:
    issuer_key = issuer_key or key
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer or subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer_key is not key:
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    if dns:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
    return b.sign(issuer_key, sign_hash(issuer_key))


def key_pem(key) -> bytes:  # type: ignore[no-untyped-def]
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def openssl_rsa_pss(cn: str, params: bool, tmp: pathlib.Path) -> tuple[bytes, bytes]:
    """A self-signed certificate with an RSA-PSS key (SPKI OID 1.2.840.113549.1.1.10), which
    pyca/cryptography cannot create. With params, the SPKI carries RSASSA-PSS-params."""
    opts = ["-pkeyopt", "rsa_keygen_bits:2048"]
    if params:
        opts += ["-pkeyopt", "rsa_pss_keygen_md:sha256", "-pkeyopt", "rsa_pss_keygen_mgf1_md:sha256"]
        opts += ["-pkeyopt", "rsa_pss_keygen_saltlen:32"]
    keyfile, certfile = tmp / "pss.key", tmp / "pss.pem"
    run(["openssl", "req", "-x509", "-newkey", "rsa-pss", *opts, "-nodes", "-keyout", str(keyfile),
         "-out", str(certfile), "-subj", "/O=fleetpin test vectors/CN=" + cn, "-days", "3650"])
    der = run(["openssl", "x509", "-in", str(certfile), "-outform", "DER"])
    return der, keyfile.read_bytes()


# --- expected values, from tools other than pinagent --------------------------------------


def openssl_pin(der: bytes) -> str:
    """The pin as DESIGN.md defines it: the openssl pipeline, step by step."""
    pub = run(["openssl", "x509", "-inform", "DER", "-pubkey", "-noout"], der)
    pub_der = run(["openssl", "pkey", "-pubin", "-outform", "DER"], pub)
    digest = run(["openssl", "dgst", "-sha256", "-binary"], pub_der)
    return run(["base64"], digest).decode().strip()


def openssl_spki_span(der: bytes) -> tuple[int, int]:
    """(offset, length) of the SPKI TLV, from `openssl asn1parse`: the children of the
    TBSCertificate are the first depth-2 elements; the SPKI is the 6th after the version."""
    out = run(["openssl", "asn1parse", "-inform", "DER"], der).decode()
    rows = re.findall(r"^\s*(\d+):d=2\s+hl=\s*(\d+)\s+l=\s*(\d+)\s+\w+:\s*(.*)$", out, re.M)
    index = 6 if rows[0][3].startswith("cont [ 0 ]") else 5
    offset, hl, length, _ = rows[index]
    return int(offset), int(hl) + int(length)


def expected(der: bytes, key_type: str) -> dict:  # type: ignore[type-arg]
    cert = x509.load_der_x509_certificate(der)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    offset, length = openssl_spki_span(der)
    raw_sha = base64.b64encode(hashlib.sha256(der[offset : offset + length]).digest()).decode()
    pin = openssl_pin(der)
    entry = {
        "key_type": key_type,
        "pin": pin,
        "spki_offset": offset,
        "spki_length": length,
        "spki_sha256": raw_sha,
        "subject_cn": cns[-1].value if cns else None,
        "not_before": int(cert.not_valid_before_utc.timestamp()),
        "not_after": int(cert.not_valid_after_utc.timestamp()),
    }
    if pin != raw_sha:
        entry["pin_differs_from_raw_spki"] = True
    # What a tool that re-encodes the key would compute (pyca/cryptography changes RSA-PSS).
    reencoded = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    reencoded_pin = base64.b64encode(hashlib.sha256(reencoded).digest()).decode()
    if reencoded_pin != pin:
        entry["reencoded_pin"] = reencoded_pin
    return entry


# --- DER surgery for the edited vectors (independent of pinagent.der) ----------------------


def split_tlvs(data: bytes) -> list[tuple[int, bytes]]:
    """[(tag, content)] of a concatenation of well-formed DER TLVs."""
    out, pos = [], 0
    while pos < len(data):
        tag, n = data[pos], data[pos + 1]
        pos += 2
        if n & 0x80:
            k = n & 0x7F
            n = int.from_bytes(data[pos : pos + k], "big")
            pos += k
        out.append((tag, data[pos : pos + n]))
        pos += n
    return out


def tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    k = (n.bit_length() + 7) // 8
    return bytes([tag, 0x80 | k]) + n.to_bytes(k, "big") + content


def header_len(data: bytes) -> int:
    return 2 + (data[1] & 0x7F if data[1] & 0x80 else 0)


def rebuild(der: bytes, edit_tbs) -> bytes:  # type: ignore[no-untyped-def]
    """The certificate with its TBSCertificate's children edited (signature left stale)."""
    (_, outer), = split_tlvs(der)
    (_, tbs), sig_alg, sig = split_tlvs(outer)
    children = edit_tbs(split_tlvs(tbs))
    new_tbs = tlv(0x30, b"".join(tlv(t, c) for t, c in children))
    return tlv(0x30, new_tbs + tlv(*sig_alg) + tlv(*sig))


def malformed(good: bytes, utf8_cert: bytes) -> dict[str, tuple[bytes, str, str | None]]:
    """name -> (bytes, reason parse_certificate gives, reason spki_of_certificate gives;
    None: the fast path accepts it, since it reads nothing past the SPKI's header)."""
    h = header_len(good)
    body = good[h:]
    tbs_tag_at = h
    deep = b"\x30\x00"
    for _ in range(63):
        deep = tlv(0x30, deep)

    def bad_month(d: bytes) -> bytes:
        i = d.index(b"\x17\x0d") + 4  # UTCTime content: YYMM..., month at +2
        return d[:i] + b"13" + d[i + 2 :]

    def bad_utf8(d: bytes) -> bytes:
        i = d.index("ü".encode())
        return d[:i] + b"\xff" + d[i + 1 :]

    def spki_unused_bits(d: bytes) -> bytes:
        # SPKI = SEQ { AlgorithmIdentifier (short form), BIT STRING { unused-bits byte, key } }
        off, _ = openssl_spki_span(d)
        alg_at = off + header_len(d[off:])
        bits_at = alg_at + 2 + d[alg_at + 1]
        unused_at = bits_at + header_len(d[bits_at:])
        return d[:unused_at] + b"\x03" + d[unused_at + 1 :]

    def drop_spki(children):  # type: ignore[no-untyped-def]
        return children[:6] + children[7:]

    def serial_as_octets(children):  # type: ignore[no-untyped-def]
        return [children[0], (0x04, children[1][1])] + children[2:]

    def extensions_twice(children):  # type: ignore[no-untyped-def]
        return children + [children[7]]

    return {
        "empty": (b"", "empty", "empty"),
        "truncated-1-byte": (good[:1], "truncated", "truncated"),
        "truncated-in-length": (good[:3], "truncated", "truncated"),
        "truncated-in-tbs": (good[: len(good) // 2], "truncated", "truncated"),
        "truncated-last-byte": (good[:-1], "truncated", "truncated"),
        "wrong-outer-tag": (b"\x31" + good[1:], "unexpected tag 0x31 for Certificate",
                            "unexpected tag 0x31 for Certificate"),
        "wrong-tbs-tag": (good[:tbs_tag_at] + b"\x31" + good[tbs_tag_at + 1 :],
                          "unexpected tag 0x31 for TBSCertificate", "unexpected tag 0x31 for TBSCertificate"),
        "high-tag-number": (b"\x3f" + good[1:], "high tag number", "high tag number"),
        "length-overflow": (b"\x30\x84\xff\xff\xff\xff" + body, "length overflows", "length overflows"),
        "length-past-end": (tlv(0x30, body + b"\x00")[: -len(body) - 1] + body, "truncated", "truncated"),
        "indefinite-length": (b"\x30\x80" + body + b"\x00\x00", "indefinite length", "indefinite length"),
        "trailing-bytes": (good + b"\x00", "trailing bytes", "trailing bytes"),
        "deep-nesting": (deep, "nesting too deep", "missing signatureAlgorithm"),
        "non-minimal-length-zero": (b"\x30\x83\x00" + good[2:], "non-minimal length", "non-minimal length"),
        "non-minimal-length-short": (b"\x30\x81\x05\x02\x01\x01\x05\x00", "non-minimal length",
                                     "non-minimal length"),
        "missing-spki": (rebuild(good, drop_spki), "unexpected tag 0xa3 for SubjectPublicKeyInfo",
                         "unexpected tag 0xa3 for SubjectPublicKeyInfo"),
        "serial-not-integer": (rebuild(good, serial_as_octets), "unexpected tag 0x04 for serialNumber",
                               "unexpected tag 0x04 for serialNumber"),
        "extensions-twice": (rebuild(good, extensions_twice), "unexpected tag 0xa3 after SubjectPublicKeyInfo", None),
        "spki-unused-bits": (spki_unused_bits(good), "whole number of bytes", None),
        "bad-month": (bad_month(good), "bad time", None),
        "bad-utf8-cn": (bad_utf8(utf8_cert), "bad UTF8String", None),
    }


# --- main --------------------------------------------------------------------------------


def main() -> None:
    # Remove what the previous run wrote (listed in its pins.json), nothing else: other
    # vector scripts share tests/vectors/.
    if (HERE / "pins.json").exists():
        previous = json.loads((HERE / "pins.json").read_text())
        for cname, e in previous.get("certs", {}).items():
            for path in (e["der"], "certs/" + cname + ".pem", "keys/" + cname + ".key.pem"):
                (HERE / path).unlink(missing_ok=True)
        for e in previous.get("malformed", {}).values():
            (HERE / e["der"]).unlink(missing_ok=True)
    for sub in ("certs", "keys", "malformed"):
        (HERE / sub).mkdir(exist_ok=True)

    certs: dict[str, tuple[bytes, bytes, str]] = {}  # name -> (der, key pem, key type)

    def add(cname: str, cert: x509.Certificate, key, key_type: str) -> None:  # type: ignore[no-untyped-def]
        certs[cname] = (cert.public_bytes(serialization.Encoding.DER), key_pem(key), key_type)

    printable = _ASN1Type.PrintableString
    for kind, key_type in [("rsa2048", "RSA 2048"), ("rsa3072", "RSA 3072"), ("rsa4096", "RSA 4096"),
                           ("p256", "EC P-256"), ("p384", "EC P-384"), ("p521", "EC P-521"),
                           ("ed25519", "Ed25519"), ("ed448", "Ed448")]:
        cname = kind if kind.startswith("rsa") or kind.startswith("ed") else "ec-" + kind
        key = new_key(kind)
        cn_type = _ASN1Type.IA5String if kind == "rsa4096" else printable
        add(cname, make_cert(name(cname + ".example", cn_type), key), key, key_type)

    key = new_key("p256")
    add("utf8-cn", make_cert(name("Zürich ☃ 𝄞.example", _ASN1Type.UTF8String), key), key, "EC P-256")
    key = new_key("p256")
    add("bmp-cn", make_cert(name("Ωmega.example", _ASN1Type.BMPString), key), key, "EC P-256")
    key = new_key("p256")
    add("no-cn", make_cert(name(None), key), key, "EC P-256")
    key = new_key("ed25519")  # under 256 bytes: one-byte long-form lengths ("30 81 ..")
    small = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "s", _type=printable)])
    add("ed25519-small", x509.CertificateBuilder().subject_name(small).issuer_name(small)
        .public_key(key.public_key()).serial_number(1).not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER).sign(key, None), key, "Ed25519")
    key = new_key("p256")  # UTCTime up to its last second, then GeneralizedTime from 2050
    add("generalized-time", make_cert(name("gentime.example", printable), key,
                                      not_before=datetime.datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC),
                                      not_after=datetime.datetime(2050, 1, 1, tzinfo=UTC)), key, "EC P-256")
    key = new_key("p256")  # before 1970 (negative POSIX) and past 2^32 seconds
    add("wide-validity", make_cert(name("wide.example", printable), key,
                                   not_before=datetime.datetime(1950, 1, 1, tzinfo=UTC),
                                   not_after=datetime.datetime(2106, 2, 7, 6, 28, 16, tzinfo=UTC)), key, "EC P-256")

    root_key, int_key, leaf_key = new_key("p384"), new_key("p256"), new_key("p256")
    root_name, int_name = name("fleetpin chain root", printable), name("fleetpin chain intermediate", printable)
    add("chain-root", make_cert(root_name, root_key, ca=True, path_length=1), root_key, "EC P-384")
    add("chain-intermediate", make_cert(int_name, int_key, root_name, root_key, ca=True, path_length=0),
        int_key, "EC P-256")
    add("chain-leaf", make_cert(name("chain-leaf.example", printable), leaf_key, int_name, int_key,
                                dns="chain-leaf.example"), leaf_key, "EC P-256")

    with tempfile.TemporaryDirectory() as tmp:
        der, pem = openssl_rsa_pss("rsa-pss.example", False, pathlib.Path(tmp))
        certs["rsa-pss"] = (der, pem, "RSA-PSS 2048")
        der, pem = openssl_rsa_pss("rsa-pss-params.example", True, pathlib.Path(tmp))
        certs["rsa-pss-params"] = (der, pem, "RSA-PSS 2048, SHA-256 params")

    # A v1 certificate (no [0] version, no extensions), cut from ec-p256: signature stale.
    v1 = rebuild(certs["ec-p256"][0], lambda ch: ch[1:7])
    certs["ec-p256-v1"] = (v1, certs["ec-p256"][1], "EC P-256")

    entries = {}
    for cname, (der, pem, key_type) in sorted(certs.items()):
        (HERE / "certs" / (cname + ".der")).write_bytes(der)
        (HERE / "certs" / (cname + ".pem")).write_bytes(run(["openssl", "x509", "-inform", "DER"], der))
        if cname != "ec-p256-v1":
            (HERE / "keys" / (cname + ".key.pem")).write_bytes(pem)
        entries[cname] = dict(expected(der, key_type), der="certs/" + cname + ".der")
    chain = ["chain-leaf", "chain-intermediate", "chain-root"]
    (HERE / "certs" / "chain.pem").write_bytes(
        b"".join((HERE / "certs" / (c + ".pem")).read_bytes() for c in chain))

    bad = {}
    for bname, (data, reason, fast_reason) in sorted(malformed(certs["ec-p256"][0], certs["utf8-cn"][0]).items()):
        (HERE / "malformed" / (bname + ".der")).write_bytes(data)
        bad[bname] = {"der": "malformed/" + bname + ".der", "reason": reason, "fast_reason": fast_reason}

    doc = {"certs": entries, "chain": chain, "malformed": bad}
    (HERE / "pins.json").write_text(json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    for cname, e in entries.items():
        if e.get("pin_differs_from_raw_spki"):
            print("NOTE: %s: openssl pipeline pin %s != SHA-256 of raw SPKI %s" % (cname, e["pin"], e["spki_sha256"]))
    print("wrote %d certificates, %d malformed vectors" % (len(entries), len(bad)))


if __name__ == "__main__":
    main()
