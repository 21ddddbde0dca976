"""Generated PKIs for the tests: a root CA, an intermediate, leaves for one host name, and the
certificates that must be refused (a rogue CA's leaf, an expired leaf, a leaf for another host).

    pki = make_pki("device.test")           # cached: the same object on every call
    pki.chain_pem("leaf")                   # leaf + intermediate, as a server presents them
    pki.pins["backup"]                      # the backup leaf key's pin, to put in a policy
    files = pki.write(tmp_path)             # PEM files: files.chain("leaf"), files.key("leaf")

Keys are EC P-256 by default (fast) and cached per process by (namespace, role, key type), so
building many PKIs costs only certificate signatures. Pins here are computed from the key
(`public_bytes`), independently of fleetpin's raw-SPKI code, so tests can compare the two.

The refused leaves are built to catch one mistake each:
- `rogue_leaf`: same host name, different key, issued by `rogue_root` (what a mis-issuing or
  compromised CA produces): CA validation under the rogue root passes, the pin check must not.
- `expired_leaf` and `wrong_host_leaf` carry the PRIMARY leaf key: the pin matches, so only CA
  validation (expiry, host name) can refuse them; a pin must never stand in for validation.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetpin.pki.certs import host_name, is_ip

KEY_TYPES = ("ec", "ec384", "rsa", "ed25519")

# Roles of the certificates in a PKI, in the order they are built (issuers first).
CA_NAMES = ("root", "intermediate", "rogue_root")
LEAF_NAMES = ("leaf", "backup_leaf", "renewed_leaf", "rogue_leaf", "expired_leaf", "wrong_host_leaf")


@functools.lru_cache(maxsize=None)
def private_key(role: str, key_type: str = "ec", namespace: str = "fleetpin-test") -> CertificateIssuerPrivateKeyTypes:
    """A fresh key per (namespace, role, key type), generated once per process."""
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError("key_type must be one of %s, not %r" % (KEY_TYPES, key_type))


def spki_of_key(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def pin_of_spki(spki: bytes) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo DER)): the pin format of DESIGN.md."""
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def pin_of_key(key: CertificateIssuerPrivateKeyTypes) -> str:
    return pin_of_spki(spki_of_key(key))


@dataclass(frozen=True)
class Issued:
    """One certificate and its private key."""

    name: str
    cert: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def pin(self) -> str:
        return pin_of_key(self.key)


@dataclass(frozen=True)
class PkiFiles:
    """Where `Pki.write` put things: <name>.pem (certificate), <name>.key (PKCS#8 key),
    <name>-chain.pem (the certificate and its issuers below the root, as a server presents them)."""

    directory: Path

    def cert(self, name: str) -> Path:
        return self.directory / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.directory / f"{name}.key"

    def chain(self, name: str) -> Path:
        return self.directory / f"{name}-chain.pem"


@dataclass(frozen=True)
class Pki:
    host: str
    key_type: str
    now: dt.datetime
    issued: dict[str, Issued] = field(repr=False)
    issuer_of: dict[str, str | None] = field(repr=False)

    def __getattr__(self, name: str) -> Issued:
        # pki.root, pki.leaf, pki.rogue_leaf ... (dataclass fields are found before this runs)
        try:
            issued: dict[str, Issued] = self.__dict__["issued"]
            return issued[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def pins(self) -> dict[str, str]:
        """Pin of every key: root, intermediate, leaf (primary), backup, rogue_root, rogue_leaf."""
        return {
            "root": self.root.pin,
            "intermediate": self.intermediate.pin,
            "leaf": self.leaf.pin,
            "backup": self.backup_leaf.pin,
            "rogue_root": self.rogue_root.pin,
            "rogue_leaf": self.rogue_leaf.pin,
        }

    def chain(self, name: str, with_root: bool = False) -> list[Issued]:
        """`name` and its issuers, leaf first; the self-signed root only if with_root."""
        out = [self.issued[name]]
        parent = self.issuer_of[name]
        while parent is not None:
            if self.issuer_of[parent] is None and not with_root:
                break
            out.append(self.issued[parent])
            parent = self.issuer_of[parent]
        return out

    def chain_der(self, name: str, with_root: bool = False) -> list[bytes]:
        return [c.der for c in self.chain(name, with_root)]

    def chain_pem(self, name: str, with_root: bool = False) -> bytes:
        return b"".join(c.pem for c in self.chain(name, with_root))

    def write(self, directory: Path) -> PkiFiles:
        directory.mkdir(parents=True, exist_ok=True)
        files = PkiFiles(directory)
        for name, item in self.issued.items():
            files.cert(name).write_bytes(item.pem)
            files.key(name).write_bytes(item.key_pem)
            files.chain(name).write_bytes(self.chain_pem(name))
        return files


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fleetpin tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _sign(
    subject: str,
    key: CertificateIssuerPrivateKeyTypes,
    issuer: Issued | None,
    not_before: dt.datetime,
    not_after: dt.datetime,
    ca: bool,
    host: str | None = None,
) -> x509.Certificate:
    signer_key = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.cert.subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=(None if issuer is None else 0) if ca else None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()),
            critical=False,
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        assert host is not None
        rsa_leaf = isinstance(key, rsa.RSAPrivateKey)
        builder = (
            builder.add_extension(x509.KeyUsage(True, False, rsa_leaf, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([host_name(host)]), critical=False)
        )
    # Ed25519 signs without a separate hash; everything else uses SHA-256.
    algorithm = None if isinstance(signer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(signer_key, algorithm)


@functools.lru_cache(maxsize=None)
def make_pki(
    host: str = "device.test",
    key_type: str = "ec",
    namespace: str = "fleetpin-test",
    now: dt.datetime | None = None,
) -> Pki:
    """A PKI for `host`. Same arguments, same object (cached); a different `namespace` gives
    independent keys (e.g. a second fleet, or a CA rotation). Certificates are valid from a
    day before `now` (default: the time of the first call) for a year; CAs for ten years."""
    now = now or dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    day = dt.timedelta(days=1)
    valid = (now - day, now + 365 * day)

    def key(role: str) -> CertificateIssuerPrivateKeyTypes:
        return private_key(role, key_type, namespace)

    issued: dict[str, Issued] = {}
    issuer_of: dict[str, str | None] = {}

    def add(name: str, subject: str, role: str, issuer: str | None, window: tuple[dt.datetime, dt.datetime],
            ca: bool = False, leaf_host: str | None = None) -> None:
        k = key(role)
        parent = issued[issuer] if issuer else None
        issued[name] = Issued(name, _sign(subject, k, parent, window[0], window[1], ca, leaf_host), k)
        issuer_of[name] = issuer

    ca_window = (now - day, now + 3650 * day)
    add("root", "fleetpin Test Root CA", "root", None, ca_window, ca=True)
    add("intermediate", "fleetpin Test Intermediate CA", "intermediate", "root", ca_window, ca=True)
    add("rogue_root", "fleetpin Rogue Root CA", "rogue_root", None, ca_window, ca=True)
    add("leaf", host, "leaf", "intermediate", valid, leaf_host=host)
    add("backup_leaf", host, "backup", "intermediate", valid, leaf_host=host)
    add("renewed_leaf", host, "renewed", "intermediate", valid, leaf_host=host)  # a renewal with a fresh key
    add("rogue_leaf", host, "rogue_leaf", "rogue_root", valid, leaf_host=host)
    add("expired_leaf", host, "leaf", "intermediate", (now - 60 * day, now - day), leaf_host=host)
    wrong = "wrong." + host if not is_ip(host) else "wrong.test"
    add("wrong_host_leaf", wrong, "leaf", "intermediate", valid, leaf_host=wrong)
    return Pki(host, key_type, now, issued, issuer_of)

