"""Bundle signing keys and backup TLS keys: generation, files, key ids, passphrases.

A signing key named NAME lives in two files in one directory:

    NAME.key.pem    the P-256 private key, PKCS#8 PEM encrypted with a passphrase
                    (absent for a key held in an HSM or a cloud KMS)
    NAME.pub.json   {"name", "key_id", "role", "public_key", "created"}: what the signer set,
                    the bundle builder and people need; public, safe to commit

Private keys at rest (signing keys and backup TLS keys): PKCS#8 EncryptedPrivateKeyInfo, PBES2
with scrypt (N=2^14, r=8, p=5: one of OWASP's equal-cost settings for scrypt, 16 MiB, inside
OpenSSL's default scrypt memory limit, so `openssl pkey` reads the files too) and AES-256-CBC.
Keys written by fleetpin before this (PBKDF2-HMAC-SHA256 at 2,048 iterations) are still read;
loading one says so on stderr, and `fleetpin key reencrypt` rewrites it. Key folders fleetpin
creates are 0700 whatever the umask; key files 0600, never overwritten (except by reencrypt,
which replaces the file whole).

key_id = the first 8 bytes of SHA-256(SubjectPublicKeyInfo DER), 16 lowercase hex characters
(pinagent.signers.key_id_of_point computes the same from the point). role = "production" or
"development": a development bundle is never signed with a production key, and devices trust
the keys of one channel only.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives import padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from fleetpin import passphrase
from fleetpin.errors import FleetpinError, UsageError
from pinagent import signers as dev_signers

ROLES = (dev_signers.PRODUCTION, dev_signers.DEVELOPMENT)
# scrypt cost: N=2^14, r=8, p=5 (OWASP Password Storage Cheat Sheet's equal-cost alternative to
# N=2^17, r=8, p=1, whose 128 MiB OpenSSL refuses by default); derives an AES-256 key.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 5
PASSPHRASE_ENV = passphrase.ENV
MIN_PASSPHRASE = 8
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_META_KEYS = {"name", "key_id", "role", "public_key", "created"}


@dataclass(frozen=True)
class PublicKeyInfo:
    """The contents of a NAME.pub.json file."""

    name: str
    key_id: str  # 16 hex
    role: str
    point: bytes  # 65-byte uncompressed P-256 point
    path: Path | None = None

    @property
    def key_id_bytes(self) -> bytes:
        return bytes.fromhex(self.key_id)

    def to_obj(self, created: str | None = None) -> dict[str, Any]:
        obj: dict[str, Any] = {"name": self.name, "key_id": self.key_id, "role": self.role, "public_key": self.point.hex()}
        if created:
            obj["created"] = created
        return obj

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), self.point)


def spki_of(public_key: ec.EllipticCurvePublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def point_of(public_key: ec.EllipticCurvePublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def key_id_of_spki(spki: bytes) -> str:
    return hashlib.sha256(spki).digest()[:8].hex()


def check_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise UsageError(f"--id {name!r}: use 1-64 letters, digits, '.', '_' or '-'", hint="e.g. --id everyday-2025")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise UsageError(f"role {role!r}: must be production or development")
    return role


def public_info(public_key: ec.EllipticCurvePublicKey, name: str, role: str) -> PublicKeyInfo:
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != "secp256r1":
        raise UsageError("signing keys must be EC P-256 (secp256r1)", hint="the device verifies ECDSA P-256 only")
    return PublicKeyInfo(name, key_id_of_spki(spki_of(public_key)), check_role(role), point_of(public_key))


def read_passphrase(passphrase_file: Path | None, *, confirm: bool, prompt: str = "key passphrase") -> bytes:
    """--passphrase-file, else $FLEETPIN_KEY_PASSPHRASE, else a prompt on a terminal (fleetpin.passphrase)."""
    text = passphrase.read(passphrase_file, prompt=prompt, confirm=confirm)
    if len(text) < MIN_PASSPHRASE:
        raise UsageError(
            f"passphrase shorter than {MIN_PASSPHRASE} characters",
            hint=f"use --passphrase-file, ${PASSPHRASE_ENV} or type a longer one",
        )
    return text.encode("utf-8")


# ---- private keys at rest: PKCS#8 PBES2 (scrypt, AES-256-CBC), written and read here

_OID_PBES2 = "1.2.840.113549.1.5.13"
_OID_PBKDF2 = "1.2.840.113549.1.5.12"
_OID_SCRYPT = "1.3.6.1.4.1.11591.4.11"
_OID_AES256_CBC = "2.16.840.1.101.3.4.1.42"


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _der_int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _der_oid(dotted: str) -> bytes:
    parts = [int(x) for x in dotted.split(".")]
    body = bytearray([40 * parts[0] + parts[1]])
    for v in parts[2:]:
        chunk = [v & 0x7F]
        v >>= 7
        while v:
            chunk.append(0x80 | (v & 0x7F))
            v >>= 7
        body += bytes(reversed(chunk))
    return _der(0x06, bytes(body))


def _der_seq(*items: bytes) -> bytes:
    return _der(0x30, b"".join(items))


def _der_items(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag, value) items of DER `data`, one level deep; ValueError if it is not DER."""
    out: list[tuple[int, bytes]] = []
    i = 0
    while i < len(data):
        if i + 2 > len(data):
            raise ValueError("truncated DER")
        tag, n = data[i], data[i + 1]
        i += 2
        if n & 0x80:
            k = n & 0x7F
            if not 0 < k <= 4 or i + k > len(data):
                raise ValueError("bad DER length")
            n = int.from_bytes(data[i:i + k], "big")
            i += k
        if i + n > len(data):
            raise ValueError("truncated DER")
        out.append((tag, data[i:i + n]))
        i += n
    return out


def _oid_text(body: bytes) -> str:
    parts = [body[0] // 40, body[0] % 40]
    v = 0
    for b in body[1:]:
        v = (v << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(v)
            v = 0
    return ".".join(map(str, parts))


def encrypt_private_key(key: ec.EllipticCurvePrivateKey, passphrase: bytes) -> bytes:
    """The key as PKCS#8 PEM, encrypted with PBES2: scrypt (SCRYPT_N/R/P) and AES-256-CBC.
    (cryptography writes PKCS#8 with PBKDF2 at a fixed 2,048 iterations only, so the
    EncryptedPrivateKeyInfo is put together here; cryptography and OpenSSL read it.)"""
    plain = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    salt, iv = os.urandom(16), os.urandom(16)
    kek = Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(passphrase)
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(kek), modes.CBC(iv)).encryptor()
    sealed = encryptor.update(padder.update(plain) + padder.finalize()) + encryptor.finalize()
    kdf = _der_seq(_der_oid(_OID_SCRYPT), _der_seq(_der(0x04, salt), _der_int(SCRYPT_N), _der_int(SCRYPT_R),
                                                     _der_int(SCRYPT_P), _der_int(32)))
    scheme = _der_seq(_der_oid(_OID_AES256_CBC), _der(0x04, iv))
    info = _der_seq(_der_seq(_der_oid(_OID_PBES2), _der_seq(kdf, scheme)), _der(0x04, sealed))
    text = base64.b64encode(info).decode()
    lines = [text[i:i + 64] for i in range(0, len(text), 64)]
    return ("-----BEGIN ENCRYPTED PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END ENCRYPTED PRIVATE KEY-----\n").encode()


def key_protection(pem: bytes) -> dict[str, Any] | None:
    """How an encrypted PKCS#8 PEM key is protected: {"kdf": "scrypt", "n", "r", "p"} or
    {"kdf": "pbkdf2", "iterations"}; None if it is not PBES2 PKCS#8 (or does not parse)."""
    try:
        text = pem.decode("ascii")
        begin, end = "-----BEGIN ENCRYPTED PRIVATE KEY-----", "-----END ENCRYPTED PRIVATE KEY-----"
        body = text[text.index(begin) + len(begin):text.index(end)]
        [(_, outer)] = _der_items(base64.b64decode("".join(body.split())))[:1]
        (_, alg), _sealed = _der_items(outer)
        (_, oid), (_, params) = _der_items(alg)
        if _oid_text(oid) != _OID_PBES2:
            return None
        (_, kdf), _scheme = _der_items(params)
        (_, kdf_oid), (_, kdf_params) = _der_items(kdf)
        items = _der_items(kdf_params)
        if _oid_text(kdf_oid) == _OID_SCRYPT:
            n, r, p = (int.from_bytes(v, "big") for _, v in items[1:4])
            return {"kdf": "scrypt", "n": n, "r": r, "p": p}
        if _oid_text(kdf_oid) == _OID_PBKDF2:
            return {"kdf": "pbkdf2", "iterations": int.from_bytes(items[1][1], "big")}
    except (ValueError, IndexError, UnicodeDecodeError):
        pass
    return None


def _weakly_protected(pem: bytes) -> str | None:
    """Why the key file should be re-encrypted (a KDF below today's), or None."""
    p = key_protection(pem)
    if p is None:
        return "it is not encrypted with PBES2 (scrypt or PBKDF2)"
    if p["kdf"] == "pbkdf2":
        return f"it is encrypted with PBKDF2 at {p['iterations']} iterations (as fleetpin wrote keys before)"
    if p["r"] < SCRYPT_R or p["n"] * p["r"] * p["p"] < SCRYPT_N * SCRYPT_R * SCRYPT_P:
        return f"it is encrypted with scrypt N={p['n']}, r={p['r']}, p={p['p']}, below N={SCRYPT_N}, r={SCRYPT_R}, p={SCRYPT_P}"
    return None


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Writes a file that must not exist yet (never overwrite a key)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise FleetpinError(f"{path} exists already", hint="keys are never overwritten: pick another --id or -o") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot write: {e.strerror or e}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_private_dir(path: Path) -> None:
    """Creates `path` and any missing parents 0700 whatever the umask (mkdir's mode is masked
    by it, so each folder made here is set with chmod); folders that exist keep their mode."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:  # made meanwhile by someone else: not ours to change
            continue
        os.chmod(d, 0o700)


def _prepare(out_dir: Path, *paths: Path) -> None:
    """Creates out_dir (0700, see make_private_dir) and refuses before anything is written if
    any of the key files exists: a key pair is written whole or not at all."""
    try:
        make_private_dir(out_dir)
        if not out_dir.is_dir():
            raise NotADirectoryError(20, "not a directory")
    except OSError as e:
        raise UsageError(f"{out_dir}: cannot create the key folder: {e.strerror or e}") from None
    for p in paths:
        if p.exists():
            raise FleetpinError(f"{p} exists already", hint="keys are never overwritten: pick another --id or -o")


def write_public_info(info: PublicKeyInfo, out_dir: Path) -> Path:
    _prepare(out_dir)
    path = out_dir / f"{info.name}.pub.json"
    created = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    _write_new(path, (json.dumps(info.to_obj(created), indent=2) + "\n").encode(), 0o644)
    return path


def new_signing_key(name: str, role: str, out_dir: Path, passphrase: bytes) -> tuple[PublicKeyInfo, Path, Path]:
    """Generates a P-256 signing key; returns (info, private key path, public info path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    info = public_info(key.public_key(), check_name(name), role)
    key_path = out_dir / f"{name}.key.pem"
    _prepare(out_dir, key_path, out_dir / f"{name}.pub.json")
    _write_new(key_path, encrypt_private_key(key, passphrase), 0o600)
    return info, key_path, write_public_info(info, out_dir)


def import_public_key(pem_or_der: bytes, name: str, role: str, out_dir: Path) -> tuple[PublicKeyInfo, Path]:
    """Metadata for a key held elsewhere (HSM, KMS): from its public key, PEM or DER SPKI."""
    try:
        if b"-----BEGIN" in pem_or_der:
            pub = serialization.load_pem_public_key(pem_or_der)
        else:
            pub = serialization.load_der_public_key(pem_or_der)
    except ValueError:
        raise UsageError("not a public key (PEM or DER SubjectPublicKeyInfo)") from None
    info = public_info(pub, check_name(name), role)  # type: ignore[arg-type]
    return info, write_public_info(info, out_dir)


def new_backup_tls_key(name: str, out_dir: Path, passphrase: bytes) -> tuple[str, Path, Path]:
    """A backup TLS key pair for the pin policy: returns (pin, private key path, public PEM path).
    The private key goes offline; only its pin goes into the policy now."""
    key = ec.generate_private_key(ec.SECP256R1())
    check_name(name)
    key_path = out_dir / f"{name}.key.pem"
    pub_path = out_dir / f"{name}.pub.pem"
    _prepare(out_dir, key_path, pub_path)
    _write_new(key_path, encrypt_private_key(key, passphrase), 0o600)
    _write_new(pub_path, key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)
    pin = base64.b64encode(hashlib.sha256(spki_of(key.public_key())).digest()).decode()
    return pin, key_path, pub_path


def load_public_info(path: Path) -> PublicKeyInfo:
    """Reads NAME.pub.json (checks the key id against the key)."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror or e}") from None
    except ValueError:
        raise UsageError(f"{path}: not a key metadata file (JSON)", hint="pass the NAME.pub.json `fleetpin key new` wrote") from None
    if not isinstance(obj, dict) or not {"name", "key_id", "role", "public_key"} <= set(obj) or set(obj) - _META_KEYS:
        raise UsageError(f"{path}: not a key metadata file", hint="pass the NAME.pub.json `fleetpin key new` wrote")
    try:
        point = bytes.fromhex(obj["public_key"])
        pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except (ValueError, TypeError):
        raise UsageError(f"{path}: public_key is not a P-256 point in hex") from None
    info = public_info(pub, str(obj["name"]), str(obj["role"]))
    if info.key_id != obj["key_id"]:
        raise UsageError(f"{path}: key_id {obj['key_id']} is not the id of this key ({info.key_id})", hint="the file was edited: regenerate it with `fleetpin key import`")
    return PublicKeyInfo(info.name, info.key_id, info.role, info.point, path)


def paths_for(key_arg: Path) -> tuple[Path, Path]:
    """(private key path, public info path) for a --key given as either file of a pair."""
    name = key_arg.name
    for suffix in (".key.pem", ".pub.json"):
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            return key_arg.with_name(stem + ".key.pem"), key_arg.with_name(stem + ".pub.json")
    raise UsageError(f"--key {key_arg}: expected NAME.key.pem or NAME.pub.json", hint="pass a key made by `fleetpin key new --signing`")


def load_private_key(path: Path, passphrase: bytes, warn: bool = True) -> ec.EllipticCurvePrivateKey:
    """The P-256 key in an encrypted PEM file. A file protected by a weaker KDF than fleetpin
    writes today (an older fleetpin's PBKDF2 at 2,048 iterations) is still read, and (warn)
    a line on stderr says so and how to re-encrypt it."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror or e}", hint="or sign with --sign-command for a key in an HSM/KMS") from None
    if b"-----BEGIN ENCRYPTED PRIVATE KEY-----" not in data:
        raise UsageError(f"{path}: not an encrypted PEM private key", hint="pass a NAME.key.pem made by `fleetpin key new`")
    try:
        key = serialization.load_pem_private_key(data, passphrase)
    except (ValueError, TypeError):
        raise FleetpinError(f"{path}: wrong passphrase", hint=f"check --passphrase-file / ${PASSPHRASE_ENV}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise UsageError(f"{path}: not an EC P-256 private key")
    why = _weakly_protected(data) if warn else None
    if why:
        click.echo(f"warning: {path}: {why}; re-encrypt it: fleetpin key reencrypt {path}", err=True)
    return key


def reencrypt_private_key(path: Path, passphrase: bytes, new_passphrase: bytes | None = None) -> dict[str, Any]:
    """Rewrites an encrypted key file with today's KDF (and new_passphrase if given): read with
    the passphrase first (a wrong one changes nothing), then the new file is written beside it
    (created exclusively, 0600) and renamed over it, so the key is never half-written. Returns
    the new protection (key_protection)."""
    key = load_private_key(path, passphrase, warn=False)
    pem = encrypt_private_key(key, new_passphrase or passphrase)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise UsageError(f"{path}: cannot rewrite: {e.strerror or e}") from None
    protection = key_protection(pem)
    assert protection is not None
    return protection


def signer_set_obj(infos: list[PublicKeyInfo], threshold: int = 1, rotation_threshold: int = 2) -> dict[str, Any]:
    """The device's signer set for these keys (validated by pinagent.signers itself, with its key
    checks). threshold: signatures an ordinary bundle needs; rotation_threshold: signatures a
    bundle that changes the set needs. Defaults (1 and 2) are left out of the object, as the
    device writes it."""
    roles = {i.role for i in infos}
    if len(roles) > 1:
        raise UsageError("a signer set holds keys of one role only (production or development)", hint="make one set per channel")
    obj: dict[str, Any] = {
        "format": dev_signers.FORMAT,
        "channel": infos[0].role if infos else dev_signers.PRODUCTION,
        "signers": [{"id": i.key_id, "key": i.point.hex(), "name": i.name} for i in infos],
    }
    if threshold != 1:
        obj["threshold"] = threshold
    if rotation_threshold != 2:
        obj["rotation_threshold"] = rotation_threshold
    check_signer_set(obj)
    return obj


def threshold_text(threshold: int, rotation_threshold: int, keys_count: int) -> str:
    """How many of a set's keys a bundle needs, in words."""
    verb = "signs" if threshold == 1 else "sign"
    return (f"{threshold} of {keys_count} keys {verb} a bundle, {rotation_threshold} of {keys_count} "
            "change the signer set")


def check_signer_set(obj: Any, where: str = "") -> Any:
    """The pinagent.signers.SignerSet of obj, checked as a device checks a NEW set (keys on the
    curve, no key twice, thresholds in range); UsageError naming the rule otherwise."""
    try:
        return dev_signers.signers_from_obj(obj)
    except dev_signers.SignerSetError as e:
        name = type(e).__name__
        hints = {
            "SignerThresholdInvalid": "1 <= threshold <= rotation threshold <= keys, and a rotation threshold of at "
                                      "least 2 (no single key may change the set)",
            "SignerKeyInvalid": "every key must be a P-256 public key on the curve: regenerate NAME.pub.json with "
                                "`fleetpin key new` or `fleetpin key import`",
            "SignerKeyRepeated": "one private key may appear once only (a key and its negation are the same key)",
        }
        text = e.reason if name == "SignerSetError" else f"{name}: {e.reason}"
        raise UsageError(f"{where}: {text}" if where else text,
                         hint=hints.get(name, "a device trusts at least two keys: the everyday key and an offline backup")) from None
