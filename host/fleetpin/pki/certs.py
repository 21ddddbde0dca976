"""Loading the objects people pin from: certificates and chains, public and private keys, CSRs
(PEM, DER, PKCS#7, PKCS#12), and the chain a live server presents. Each object becomes a
`KeyRecord` carrying its SubjectPublicKeyInfo and pin.

Why the SPKI bytes are taken raw: a pin is SHA-256 over the SPKI exactly as it stands in the
certificate. `public_bytes()` re-encodes the key, which for some key types (RSA-PSS with
parameters, EC keys with explicit or compressed points) gives different bytes and so a pin the
device never sees. For certificates and CSRs we walk the DER and cut the SPKI out. For keys
there is no "as it stands" (a private key file holds no SPKI), so `public_bytes` is the only
option; those records say `spki_source="re-encoded"`. A PUBLIC KEY block is an SPKI already
and is kept as is. RSA-PSS keys are the case where this matters: cryptography drops the PSS
algorithm identifier; we restore it from unencrypted PKCS#8 (`_restore_algorithm`), but an
ENCRYPTED RSA-PSS key still gets the plain-RSA pin: pin its certificate or CSR instead.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
import shutil
import subprocess
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dh, dsa, ec, ed448, ed25519, rsa, x448, x25519
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12

from fleetpin.errors import FleetpinError, UsageError

Kind = Literal["certificate", "public key", "private key", "csr"]

# Asked for a passphrase when a file holds an encrypted key: gets the file name, returns the
# passphrase (or None to give up).
PasswordSource = Callable[[str], "bytes | None"]


@dataclass(frozen=True)
class KeyRecord:
    """One pinnable object. `depth` is the position of a certificate in its chain (0 = the
    leaf, as the server sent it); None for keys and CSRs."""

    source: str  # the file, or HOST:PORT
    index: int  # position of the object in its source
    kind: Kind
    subject: str  # certificate/CSR subject; for keys, empty
    spki: bytes
    key_type: str  # "EC P-256", "RSA 2048", "Ed25519", ...
    depth: int | None = None
    der: bytes | None = None  # the certificate's DER (certificates only)
    spki_source: Literal["raw", "re-encoded"] = "raw"
    note: str = ""  # e.g. "trust anchor from --ca, not sent by the server"
    from_host: bool = False  # source is HOST:PORT, not a file

    @property
    def pin(self) -> str:
        return spki_pin(self.spki)

    @property
    def description(self) -> str:
        """The subject, or for keys what key it is."""
        return self.subject or self.key_type


def spki_pin(spki: bytes) -> str:
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


# ---------------------------------------------------------------------------------------------
# A minimal DER walk: just enough to cut the SPKI out of a TBSCertificate or a
# CertificationRequestInfo without re-encoding anything.


class _BadDer(ValueError):
    pass


def _tlv(buf: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, content start, end) of the TLV at pos."""
    if pos + 2 > len(buf):
        raise _BadDer("truncated")
    tag, first = buf[pos], buf[pos + 1]
    if tag & 0x1F == 0x1F:
        raise _BadDer("multi-byte tags are not used in X.509 headers")
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(buf):
            raise _BadDer("bad length")
        length = int.from_bytes(buf[pos : pos + count], "big")
        pos += count
    if pos + length > len(buf):
        raise _BadDer("content runs past the end")
    return tag, pos, pos + length


def _children(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(tag, tlv start, tlv end) of each element inside a constructed value."""
    pos = start
    while pos < end:
        tag, _, stop = _tlv(buf, pos)
        yield tag, pos, stop
        pos = stop


def _tbs_field(tbs: bytes, position: int, csr: bool, what: str) -> bytes:
    """The TLV of a field of a DER TBSCertificate (version [0] optional, serial, signature,
    issuer, validity, subject, SPKI) or CertificationRequestInfo (version, subject, SPKI)."""
    tag, start, end = _tlv(tbs, 0)
    if tag != 0x30:
        raise _BadDer("not a SEQUENCE")
    fields = list(_children(tbs, start, end))
    if not csr and fields and fields[0][0] == 0xA0:
        fields = fields[1:]
    if len(fields) <= position or fields[position][0] != 0x30:
        raise _BadDer(f"no {what} where it belongs")
    _, s, e = fields[position]
    return tbs[s:e]


def raw_spki_of_tbs(tbs: bytes, csr: bool = False) -> bytes:
    """The SPKI bytes of a DER TBSCertificate or CertificationRequestInfo."""
    return _tbs_field(tbs, 2 if csr else 5, csr, "SubjectPublicKeyInfo")


# RFC 4514's short names (and cryptography's) for the attributes names usually carry.
_ATTRIBUTE_NAMES = {
    "2.5.4.3": "CN", "2.5.4.6": "C", "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.9": "STREET", "2.5.4.10": "O",
    "2.5.4.11": "OU", "0.9.2342.19200300.100.1.25": "DC", "0.9.2342.19200300.100.1.1": "UID",
    "2.5.4.5": "2.5.4.5", "1.2.840.113549.1.9.1": "1.2.840.113549.1.9.1",
}
_STRING_CODECS = {0x0C: "utf-8", 0x1E: "utf-16-be", 0x1C: "utf-32-be"}  # other string types: bytes as ASCII


def _escaped_value(tag: int, value: bytes) -> str:
    """An attribute value as text: decoded when it is valid for its type, every byte that is not
    printable ASCII shown as \\xNN otherwise; RFC 4514's special characters escaped."""
    text = None
    codec = _STRING_CODECS.get(tag)
    if codec is not None:
        try:
            text = value.decode(codec)
        except UnicodeDecodeError:
            text = None
    if text is None:
        text = "".join(chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}" for b in value)
    else:
        text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    out = "".join("\\" + c if c in ',+"<>;' else c for c in text)
    return "\\" + out if out.startswith(("#", " ")) else out


def escaped_name(name_der: bytes) -> str:
    """A DER Name in RFC 4514 order (last RDN first), read by this module's own DER walk: for
    names cryptography refuses to decode (a string type it does not accept, bytes invalid for
    their type), which OpenSSL and mbedTLS accept; such values are shown escaped."""
    tag, start, end = _tlv(name_der, 0)
    if tag != 0x30:
        raise _BadDer("a Name is not a SEQUENCE")
    rdns = []
    for _, rdn_start, rdn_end in _children(name_der, start, end):
        _, set_start, set_end = _tlv(name_der, rdn_start)
        parts = []
        for _, atv_start, _ in _children(name_der, set_start, set_end):
            _, seq_start, seq_end = _tlv(name_der, atv_start)
            oid_tag, oid_start, oid_end = _tlv(name_der, seq_start)
            value_tag, value_start, value_end = _tlv(name_der, oid_end)
            oid = _decode_oid(name_der[oid_start:oid_end]) if oid_tag == 0x06 else "?"
            parts.append(f"{_ATTRIBUTE_NAMES.get(oid, oid)}={_escaped_value(value_tag, name_der[value_start:value_end])}")
        rdns.append("+".join(parts))
    return ",".join(reversed(rdns))


def check_certificate(der: bytes) -> None:
    """ValueError unless `der` is an X.509 certificate that cryptography, or else the device
    agent's own DER parser (as strict about structure, lenient about name strings like OpenSSL
    and mbedTLS), reads."""
    try:
        x509.load_der_x509_certificate(der)
    except ValueError as e:
        from pinagent.der import DerError, parse_certificate

        try:
            parse_certificate(der)
        except DerError:
            raise e from None


def tbs_of_certificate(der: bytes) -> bytes:
    """The TBSCertificate TLV of a DER certificate (SEQUENCE { tbs, signatureAlgorithm, signature })."""
    tag, start, end = _tlv(der, 0)
    if tag != 0x30:
        raise _BadDer("a certificate is not a SEQUENCE")
    tbs_tag, _, tbs_end = _tlv(der, start)
    if tbs_tag != 0x30:
        raise _BadDer("no TBSCertificate")
    return der[start:tbs_end]


def subject_text(der: bytes) -> str:
    """A certificate's subject as RFC 4514 text; escaped from the raw DER when cryptography
    cannot decode it."""
    try:
        return x509.load_der_x509_certificate(der).subject.rfc4514_string() or "(empty subject)"
    except ValueError:
        try:
            return escaped_name(_tbs_field(tbs_of_certificate(der), 4, False, "subject")) or "(empty subject)"
        except (_BadDer, ValueError, IndexError):
            return "(a subject nothing can decode)"


# ---------------------------------------------------------------------------------------------
# Describing keys


_SPKI_ALGORITHMS = {  # for keys cryptography cannot load (the record still gets its pin)
    "1.2.840.113549.1.1.10": "RSA-PSS",
    "1.2.840.113549.1.1.1": "RSA",
    "1.2.840.10045.2.1": "EC",
    "1.3.101.112": "Ed25519",
    "1.3.101.113": "Ed448",
}


def describe_key(key: Any) -> str:
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        names = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        return f"EC {names.get(key.curve.name, key.curve.name)}"
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey | ed448.Ed448PrivateKey):
        return "Ed448"
    if isinstance(key, dsa.DSAPublicKey | dsa.DSAPrivateKey):
        return f"DSA {key.key_size}"
    if isinstance(key, x25519.X25519PublicKey | x25519.X25519PrivateKey):
        return "X25519"
    if isinstance(key, x448.X448PublicKey | x448.X448PrivateKey):
        return "X448"
    if isinstance(key, dh.DHPublicKey | dh.DHPrivateKey):
        return f"DH {key.key_size}"
    return type(key).__name__


def _spki_oid(spki: bytes) -> str | None:
    try:
        _, start, _ = _tlv(spki, 0)
        _, alg_start, _ = _tlv(spki, start)
        tag, oid_start, oid_end = _tlv(spki, alg_start)
        return _decode_oid(spki[oid_start:oid_end]) if tag == 0x06 else None
    except (_BadDer, ValueError, IndexError):
        return None


def _describe_spki(spki: bytes, load: Callable[[], Any]) -> str:
    """Key type of an SPKI; falls back to its algorithm OID when cryptography cannot load it."""
    oid = _spki_oid(spki)
    try:
        described = describe_key(load())
    except (ValueError, UnsupportedAlgorithm):
        return _SPKI_ALGORITHMS.get(oid or "", f"key {oid}" if oid else "unknown key")
    if oid == _RSA_PSS and described.startswith("RSA "):
        described = "RSA-PSS " + described[4:]  # cryptography loads RSA-PSS keys as plain RSA
    return described


_RSA_PSS = "1.2.840.113549.1.1.10"


def _der_header(tag: int, length: int) -> bytes:
    if length < 0x80:
        return bytes([tag, length])
    size = (length.bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + length.to_bytes(size, "big")


def _restore_algorithm(spki: bytes, pkcs8: bytes | None) -> bytes:
    """cryptography re-encodes an RSA-PSS key as plain rsaEncryption, which changes its pin
    (the certificate keeps the RSA-PSS algorithm and parameters). For an unencrypted PKCS#8
    key we still have the original AlgorithmIdentifier: put it back in front of the key bits."""
    if pkcs8 is None:
        return spki
    try:
        _, start, end = _tlv(pkcs8, 0)
        fields = list(_children(pkcs8, start, end))
        if len(fields) < 3 or fields[0][0] != 0x02 or fields[1][0] != 0x30:
            return spki
        algorithm = pkcs8[fields[1][1] : fields[1][2]]
        if _spki_oid(_der_header(0x30, len(algorithm)) + algorithm) != _RSA_PSS:
            return spki
        _, start, end = _tlv(spki, 0)
        parts = list(_children(spki, start, end))
        if len(parts) != 2:
            return spki
        body = algorithm + spki[parts[1][1] : parts[1][2]]
        return _der_header(0x30, len(body)) + body
    except _BadDer:
        return spki


def _decode_oid(body: bytes) -> str:
    if not body:
        raise ValueError("empty OID")
    parts, value = [], 0
    for byte in body:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    first = min(parts[0] // 40, 2)
    return ".".join(str(p) for p in [first, parts[0] - 40 * first, *parts[1:]])


# ---------------------------------------------------------------------------------------------
# Records from loaded objects


def certificate_record(source: str, index: int, der: bytes, depth: int, note: str = "",
                       from_host: bool = False) -> KeyRecord:
    """A certificate's record. The SPKI and subject are cut from the DER by this module's own
    walk: cryptography refuses some certificates OpenSSL and mbedTLS accept (a name with bytes
    invalid for its string type), and such a certificate is still pinned, its name escaped."""
    check_certificate(der)
    tbs = tbs_of_certificate(der)
    spki = raw_spki_of_tbs(tbs)
    return KeyRecord(
        source=source,
        index=index,
        kind="certificate",
        subject=subject_text(der),
        spki=spki,
        key_type=_describe_spki(spki, lambda: serialization.load_der_public_key(spki)),
        depth=depth,
        der=der,
        note=note,
        from_host=from_host,
    )


def _csr_record(source: str, index: int, csr: x509.CertificateSigningRequest) -> KeyRecord:
    spki = raw_spki_of_tbs(csr.tbs_certrequest_bytes, csr=True)
    return KeyRecord(source, index, "csr", csr.subject.rfc4514_string(), spki, _describe_spki(spki, csr.public_key))


def _public_record(source: str, index: int, key: Any, raw: bytes | None = None) -> KeyRecord:
    spki = raw or key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return KeyRecord(source, index, "public key", "", spki, _describe_spki(spki, lambda: key),
                     spki_source="raw" if raw else "re-encoded")


def _private_record(source: str, index: int, key: Any, pkcs8: bytes | None = None) -> KeyRecord:
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    spki = _restore_algorithm(spki, pkcs8)
    return KeyRecord(source, index, "private key", "", spki, _describe_spki(spki, lambda: key),
                     spki_source="re-encoded")


# ---------------------------------------------------------------------------------------------
# Files

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL)
_CERT_LABELS = {b"CERTIFICATE", b"X509 CERTIFICATE", b"TRUSTED CERTIFICATE"}
_PRIVATE_LABELS = {b"PRIVATE KEY", b"ENCRYPTED PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY",
                   b"DSA PRIVATE KEY", b"OPENSSH PRIVATE KEY"}
_CSR_LABELS = {b"CERTIFICATE REQUEST", b"NEW CERTIFICATE REQUEST"}

_INSPECT_HINT = "check it with `openssl x509 -in {0} -text -noout` (or `openssl pkey`/`openssl req` for keys and CSRs)"


def _unreadable(path: str, why: str) -> UsageError:
    return UsageError(f"{path}: {why}", hint=_INSPECT_HINT.format(path))


class _Loader:
    """Turns the objects of one file into records, in file order."""

    def __init__(self, path: str, password: PasswordSource | None) -> None:
        self.path = path
        self.password_source = password
        self._password: bytes | None = None
        self.records: list[KeyRecord] = []
        self.cert_depth = 0  # certificates in a file form a chain, leaf first

    def password(self) -> bytes:
        if self._password is None:
            given = self.password_source(self.path) if self.password_source else None
            if not given:
                raise UsageError(f"{self.path}: the private key is encrypted and no passphrase was given",
                                 hint="pass --passphrase-file FILE, or set FLEETPIN_KEY_PASSPHRASE")
            self._password = given
        return self._password

    def wrong_password(self) -> UsageError:
        return UsageError(f"{self.path}: wrong passphrase for the encrypted private key",
                          hint="check --passphrase-file / FLEETPIN_KEY_PASSPHRASE")

    def add_certificate(self, der: bytes) -> None:
        self.records.append(certificate_record(self.path, len(self.records), der, self.cert_depth))
        self.cert_depth += 1

    def add_private(self, load: Callable[[bytes | None], Any], encrypted: bool, pkcs8: bytes | None = None) -> None:
        try:
            key = load(self.password() if encrypted else None)
        except TypeError as e:  # "Password was not given but private key is encrypted"
            if encrypted or "not given" not in str(e):
                raise
            return self.add_private(load, encrypted=True)  # no plaintext PKCS#8 to look at
        except ValueError as e:
            if encrypted and ("decrypt" in str(e).lower() or "password" in str(e).lower()):
                raise self.wrong_password() from None
            raise
        self.records.append(_private_record(self.path, len(self.records), key, None if encrypted else pkcs8))

    def add_pkcs7(self, data: bytes, load: Callable[[bytes], list[x509.Certificate]]) -> None:
        with warnings.catch_warnings():  # `openssl crl2pkcs7` output is BER, not DER: fine here
            warnings.simplefilter("ignore", UserWarning)
            certs = load(data)
        for cert in _chain_order(certs):
            self.add_certificate(cert.public_bytes(serialization.Encoding.DER))

    # -- PEM

    def pem(self, data: bytes) -> None:
        labels = []
        for match in _PEM_BLOCK.finditer(data):
            label, block = match.group(1), match.group(0)
            labels.append(label.decode())
            try:
                self.pem_block(label, block, match.group(2))
            except (ValueError, TypeError, UnsupportedAlgorithm, _BadDer) as e:
                raise _unreadable(self.path, f"cannot read its {label.decode()} block ({_reason(e)})") from None
        if not self.records:
            what = f"only {', '.join(sorted(set(labels)))} blocks" if labels else "no PEM blocks"
            raise _unreadable(self.path, f"nothing to pin: {what}")

    def pem_block(self, label: bytes, block: bytes, body: bytes) -> None:
        if label in _CERT_LABELS:
            self.add_certificate(_pem_certificate(label, body))
        elif label == b"PUBLIC KEY":
            der = _b64(body)
            self.records.append(_public_record(self.path, len(self.records), serialization.load_der_public_key(der), der))
        elif label == b"RSA PUBLIC KEY":
            self.records.append(_public_record(self.path, len(self.records), serialization.load_pem_public_key(block)))
        elif label in _PRIVATE_LABELS:
            encrypted = label == b"ENCRYPTED PRIVATE KEY" or b"Proc-Type: 4,ENCRYPTED" in body
            if label == b"OPENSSH PRIVATE KEY":
                loader: Callable[[bytes | None], Any] = lambda pw: serialization.load_ssh_private_key(block, pw)
            else:
                loader = lambda pw: serialization.load_pem_private_key(block, pw)
            self.add_private(loader, encrypted, _b64(body) if label == b"PRIVATE KEY" else None)
        elif label in _CSR_LABELS:
            self.records.append(_csr_record(self.path, len(self.records), x509.load_pem_x509_csr(block)))
        elif label in (b"PKCS7", b"CMS"):
            self.add_pkcs7(block, pkcs7.load_pem_pkcs7_certificates)
        # Other blocks (EC PARAMETERS from `openssl ecparam -genkey`, CRLs...) hold nothing to
        # pin and are skipped; a file with nothing pinnable at all is refused in pem().

    # -- DER: try each format in turn

    def der(self, data: bytes) -> None:
        for attempt in (self._der_certificates, self._der_csr, self._der_public, self._der_private,
                        self._der_pkcs7, self._der_pkcs12):
            try:
                if attempt(data):
                    return
            except (ValueError, UnsupportedAlgorithm, _BadDer):
                continue
        raise _unreadable(self.path, "not a PEM file, nor a DER certificate, CSR, public key, private key, "
                                     "PKCS#7 or PKCS#12")

    def _der_certificates(self, data: bytes) -> bool:
        ders = _der_sequences(data)  # one or more DER certificates back to back (a chain)
        if not ders:
            return False
        for der in ders:
            check_certificate(der)
        for der in ders:
            self.add_certificate(der)
        return True

    def _der_csr(self, data: bytes) -> bool:
        self.records.append(_csr_record(self.path, 0, x509.load_der_x509_csr(data)))
        return True

    def _der_public(self, data: bytes) -> bool:
        self.records.append(_public_record(self.path, 0, serialization.load_der_public_key(data), data))
        return True

    def _der_private(self, data: bytes) -> bool:
        try:
            self.add_private(lambda pw: serialization.load_der_private_key(data, pw), encrypted=False, pkcs8=data)
        except TypeError:
            return False
        return True

    def _der_pkcs7(self, data: bytes) -> bool:
        self.add_pkcs7(data, pkcs7.load_der_pkcs7_certificates)
        return bool(self.records)

    def _der_pkcs12(self, data: bytes) -> bool:
        try:
            bundle = pkcs12.load_pkcs12(data, None)
        except ValueError:
            # Wrong format or needs a passphrase: only ask for one if this looks like a PFX.
            if not _looks_like_pfx(data):
                raise
            try:
                bundle = pkcs12.load_pkcs12(data, self.password())
            except ValueError:
                raise self.wrong_password() from None
        if bundle.key is not None:
            self.records.append(_private_record(self.path, len(self.records), bundle.key))
        certs = ([bundle.cert] if bundle.cert else []) + list(bundle.additional_certs)
        for cert in certs:
            self.add_certificate(cert.certificate.public_bytes(serialization.Encoding.DER))
        return bool(self.records)


def _chain_order(certs: list[x509.Certificate]) -> list[x509.Certificate]:
    """PKCS#7 holds a SET of certificates, in no order: leaf first when they form one chain
    (each issued by the next), else as stored."""
    issuers = {c.issuer for c in certs if c.issuer != c.subject}
    leaves = [c for c in certs if c.subject not in issuers]
    if len(leaves) != 1:
        return certs
    by_subject = {c.subject: c for c in certs}
    chain = [leaves[0]]
    while chain[-1].issuer != chain[-1].subject and chain[-1].issuer in by_subject and len(chain) < len(certs):
        chain.append(by_subject[chain[-1].issuer])
    return chain if len(chain) == len(certs) else certs


def _looks_like_pfx(data: bytes) -> bool:
    # PFX ::= SEQUENCE { version INTEGER (3), authSafe ContentInfo { OID 1.2.840.113549.1.7.x ...
    try:
        _, start, _ = _tlv(data, 0)
        tag, v_start, v_end = _tlv(data, start)
        if tag != 0x02 or data[v_start:v_end] != b"\x03":
            return False
        _, info_start, _ = _tlv(data, v_end)
        return data[info_start : info_start + 10] == b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07"
    except _BadDer:
        return False


def _pem_certificate(label: bytes, body: bytes) -> bytes:
    """The DER of a certificate PEM block (label in _CERT_LABELS)."""
    der = _b64(body)
    if label == b"TRUSTED CERTIFICATE":  # OpenSSL's: the certificate, then trust settings
        der = der[: _tlv(der, 0)[2]]
    return der


def _der_sequences(data: bytes) -> list[bytes]:
    """DER SEQUENCEs back to back (a chain of DER certificates), split, not parsed."""
    ders, pos = [], 0
    while pos < len(data):
        tag, _, end = _tlv(data, pos)
        if tag != 0x30:
            raise _BadDer(f"no SEQUENCE at byte {pos}")
        ders.append(data[pos:end])
        pos = end
    return ders


def _b64(body: bytes) -> bytes:
    lines = [line for line in body.splitlines() if line.strip() and b":" not in line]  # drop PEM headers
    return base64.b64decode(b"".join(lines), validate=True)


def _reason(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def read_input(path: Path, hint: str = "check the path") -> bytes:
    """The bytes of an input file; UsageError naming it when it is missing (with `hint`, e.g.
    what the file should be) or unreadable."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file", hint=hint) from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read it ({e.strerror or e})") from None


def load_file(path: Path, password: PasswordSource | None = None) -> list[KeyRecord]:
    """Every pinnable object in a file, in file order. Raises UsageError naming the file when it
    is missing, unreadable, of an unknown format, or its passphrase is wrong."""
    data = read_input(path)
    loader = _Loader(str(path), password)
    if b"-----BEGIN " in data:
        loader.pem(data)
    else:
        loader.der(data)
    return loader.records


def load_certificates(path: Path, what: str) -> list[bytes]:
    """DER of every certificate in a file, in file order: the CERTIFICATE blocks of a PEM file,
    or one or more DER certificates back to back. Split and decoded, not parsed: each caller
    checks them with the parser that matters to it (the device's DER walker, cryptography).
    `what` says what the file was given as ("chain", "--ca file"); UsageError names the file."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"{path}: cannot read {what}: {e.strerror or e}", hint="check the path") from None
    if b"-----BEGIN " in data:
        ders = []
        for m in _PEM_BLOCK.finditer(data):
            if m.group(1) not in _CERT_LABELS:
                continue
            try:
                ders.append(_pem_certificate(m.group(1), m.group(2)))
            except (binascii.Error, ValueError):  # _BadDer is a ValueError
                raise UsageError(f"{path}: certificate {len(ders)}: bad PEM base64") from None
        if not ders:
            raise UsageError(f"{path}: no CERTIFICATE in this PEM file",
                             hint=f"the {what} must hold certificates (-----BEGIN CERTIFICATE-----)")
        return ders
    if not data:
        raise UsageError(f"{path}: empty file", hint=f"the {what} must hold PEM or DER certificates")
    try:
        return _der_sequences(data)
    except _BadDer as e:
        raise UsageError(f"{path}: neither PEM nor DER certificates ({e})",
                         hint="pass a PEM or DER certificate file") from None


# ---------------------------------------------------------------------------------------------
# Live servers: the presented chain, via `openssl s_client`.
#
# Python 3.11's ssl module exposes only the leaf (getpeercert); the whole presented chain is
# public API only from 3.13 (SSLSocket.get_unverified_chain). `openssl s_client -showcerts`
# prints every certificate the server sent, validates the chain and the host name in the same
# handshake (-verify_return_error aborts on failure), and is on every machine that has OpenSSL.


@dataclass(frozen=True)
class HostTarget:
    host: str  # the name for SNI and the name check
    port: int
    connect: str  # the address to connect to (= host unless given after '@')

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_host(text: str) -> HostTarget:
    """HOST[:PORT][@ADDRESS], port 443 by default; IPv6 in brackets: [::1]:8443."""
    spec, _, connect = text.partition("@")
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:\[\]/\s]+)(?::(\d+))?", spec)
    if not m:
        raise UsageError(f"--host {text!r}: expected HOST:PORT, e.g. api.example.com:443 or [::1]:8443")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4) or 443)
    if not 0 < port < 65536:
        raise UsageError(f"--host {text!r}: port {port} is out of range")
    return HostTarget(host, port, connect.strip("[]") or host)


def is_ip(host: str) -> bool:
    """An IPv4 or IPv6 literal (which gets no SNI, RFC 6066, and an IP-address name check)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def host_name(host: str) -> x509.IPAddress | x509.DNSName:
    """The name a certificate for `host` must carry: an IP address entry for a literal."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _bracket(address: str) -> str:
    return f"[{address}]" if ":" in address else address


_VERIFY_ERROR = re.compile(r"verify error:num=\d+:(.+)")


class FetchError(FleetpinError):
    """No chain from a live server. The message names the target; `reason` is the same without
    it, for reports that already show the target."""

    def __init__(self, target: HostTarget, reason: str, hint: str | None = None) -> None:
        super().__init__(f"{target}: {reason}", hint=hint)
        self.reason = reason


def fetch_chain(target: HostTarget, ca_file: Path | None = None, timeout: float = 20.0,
                verify: bool = True) -> list[bytes]:
    """The DER certificates `target` presents, leaf first. With verify (the default) only after
    validating them and the host name against the system trust store, or only against `ca_file`
    when given (FetchError if they fail). verify=False returns the chain as served, unvalidated,
    so that a chain that fails validation can still be looked at (and validated by the caller,
    e.g. against a bundle's CAs); ca_file is then unused."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise FleetpinError("--host needs the `openssl` command, which is not on PATH",
                            hint="install OpenSSL 3, or pin the server's certificate file instead")
    if verify and ca_file is not None and not ca_file.is_file():
        raise UsageError(f"{ca_file}: no such file (--ca)")
    cmd = [openssl, "s_client", "-connect", f"{_bracket(target.connect)}:{target.port}", "-showcerts"]
    # No SNI for addresses (RFC 6066).
    cmd += ["-noservername"] if is_ip(target.host) else ["-servername", target.host]
    if verify:
        cmd += ["-verify_return_error", "-verify_ip" if is_ip(target.host) else "-verify_hostname", target.host]
        if ca_file is not None:
            # Only the given CAs, as on the device, which trusts only its bundle's CAs.
            cmd += ["-CAfile", str(ca_file), "-no-CApath", "-no-CAstore"]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise FetchError(target, f"no TLS handshake within {timeout:g} s",
                         hint="check the host and port, and that the server speaks TLS") from None
    out = proc.stdout.decode("utf-8", "replace")
    err = proc.stderr.decode("utf-8", "replace")
    ders = [_b64(m.group(2)) for m in _PEM_BLOCK.finditer(proc.stdout) if m.group(1) == b"CERTIFICATE"]
    if verify:
        failed = _VERIFY_ERROR.search(out + err)
        if failed:
            reason = failed.group(1).strip()
            hint = ("pass --ca FILE with the CA certificate(s) the server chains to"
                    if "issuer" in reason or "self-signed" in reason or "self signed" in reason
                    else "check the server's certificate (host name, dates) or pass --ca FILE")
            raise FetchError(target, f"TLS validation failed: {reason}", hint=hint)
    # Unverified, any chain printed means a handshake; verified, only openssl's "ok" does.
    handshake = (proc.returncode == 0 and "Verify return code: 0 (ok)" in out) if verify else bool(ders)
    if not handshake:
        raise FetchError(target, _connect_failure(err) or "TLS handshake failed",
                         hint="check the host and port, that the server is up and speaks TLS")
    if not ders:
        raise FetchError(target, "the server sent no certificate")
    return ders


def _connect_failure(stderr: str) -> str:
    for needle, reason in (("Connection refused", "connection refused"),
                           ("errno=111", "connection refused"),
                           ("Name or service not known", "unknown host name"),
                           ("nodename nor servname", "unknown host name"),
                           ("timed out", "connection timed out"),
                           ("No route to host", "no route to host")):
        if needle in stderr:
            return reason
    lines = [line for line in stderr.splitlines() if line.strip() and "depth=" not in line]
    return lines[-1].strip() if lines else ""


def _anchor_for(last: bytes, ca_file: Path) -> bytes | None:
    """The certificate in ca_file that issued `last`, when the server did not send it."""
    cert = x509.load_der_x509_certificate(last)
    if cert.issuer == cert.subject:
        return None  # the server sent its root itself
    try:
        cas = x509.load_pem_x509_certificates(ca_file.read_bytes())
    except ValueError:
        return None
    for ca in cas:
        if ca.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(ca)
        except Exception:  # noqa: BLE001 (whatever the failure, this CA is not the issuer)
            continue
        return ca.public_bytes(serialization.Encoding.DER)
    return None


def load_host(target: HostTarget, ca_file: Path | None = None, timeout: float = 20.0,
              verify: bool = True) -> list[KeyRecord]:
    """Records for the chain `target` presents, depth 0 = leaf (see fetch_chain for verify).
    With --ca, the trust anchor the chain ends at is added as the last depth (the device sees
    it there too, since mbedTLS includes the anchor it built the chain to), marked as not sent
    by the server."""
    ders = fetch_chain(target, ca_file, timeout, verify)
    records = [certificate_record(str(target), i, der, i, from_host=True) for i, der in enumerate(ders)]
    if verify and ca_file is not None:
        anchor = _anchor_for(ders[-1], ca_file)
        if anchor is not None:
            records.append(certificate_record(str(target), len(ders), anchor, len(ders),
                                              note="trust anchor from --ca, not sent by the server",
                                              from_host=True))
    return records
