"""Bundle signing keys and backup TLS keys: generation, files, key ids, passphrases.

A signing key named NAME lives in two files in one directory:

    NAME.key.pem    the P-256 private key, PKCS#8 PEM encrypted with a passphrase
                    (absent for a key held in an HSM or a cloud KMS)
    NAME.pub.json   {"name", "key_id", "role", "public_key", "created"}: what the signer set,
                    the bundle builder and people need; public, safe to commit

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleetpin import passphrase
from fleetpin.errors import FleetpinError, UsageError
from pinagent import signers as dev_signers

ROLES = (dev_signers.PRODUCTION, dev_signers.DEVELOPMENT)
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


def _prepare(out_dir: Path, *paths: Path) -> None:
    """Creates out_dir and refuses before anything is written if any of the key files exists:
    a key pair is written whole or not at all."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
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
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(passphrase)
    )
    _write_new(key_path, pem, 0o600)
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
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(passphrase)
    )
    _write_new(key_path, pem, 0o600)
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


def load_private_key(path: Path, passphrase: bytes) -> ec.EllipticCurvePrivateKey:
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
    return key


def signer_set_obj(infos: list[PublicKeyInfo]) -> dict[str, Any]:
    """The device's signer set for these keys (validated by pinagent.signers itself)."""
    roles = {i.role for i in infos}
    if len(roles) > 1:
        raise UsageError("a signer set holds keys of one role only (production or development)", hint="make one set per channel")
    obj = {
        "format": dev_signers.FORMAT,
        "channel": infos[0].role if infos else dev_signers.PRODUCTION,
        "signers": [{"id": i.key_id, "key": i.point.hex(), "name": i.name} for i in infos],
    }
    try:
        dev_signers.signers_from_obj(obj)
    except dev_signers.SignerSetError as e:
        raise UsageError(e.reason, hint="a device trusts at least two keys: the everyday key and an offline backup") from None
    return obj
