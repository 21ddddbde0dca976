"""Private keys at rest: how they are encrypted (the KDF a stolen key file must be attacked through)
and where they are written (folders only their owner can open, whatever the umask)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleetpin.cli import main
from fleetpin.errors import FleetpinError
from fleetpin.pki import keys

PASS = b"correct horse battery"


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask: every mode bit the code asks for is granted."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _der(pem: bytes) -> bytes:
    import base64

    lines = pem.decode().strip().splitlines()
    assert lines[0] == "-----BEGIN ENCRYPTED PRIVATE KEY-----", lines[0]
    return base64.b64decode("".join(lines[1:-1]))


def _tlv(data: bytes, i: int = 0) -> tuple[int, bytes, int]:
    tag, n = data[i], data[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(data[i:i + k], "big")
        i += k
    return tag, data[i:i + n], i + n


def _seq(data: bytes) -> list[tuple[int, bytes]]:
    out, i = [], 0
    while i < len(data):
        tag, value, i = _tlv(data, i)
        out.append((tag, value))
    return out


SCRYPT_OID = bytes.fromhex("2b06010401da47040b")  # 1.3.6.1.4.1.11591.4.11
PBES2_OID = bytes.fromhex("2a864886f70d01050d")  # 1.2.840.113549.1.5.13
PBKDF2_OID = bytes.fromhex("2a864886f70d01050c")


def kdf_of(pem: bytes) -> dict[str, int | str]:
    """The key-derivation function of a PKCS#8 EncryptedPrivateKeyInfo, read from its ASN.1
    (independently of fleetpin's own reader)."""
    [(_, outer)] = _seq(_der(pem))[:1]
    (_, alg), _ = _seq(outer)
    (_, oid), (_, params) = _seq(alg)
    assert oid == PBES2_OID, oid.hex()
    (_, kdf), _enc = _seq(params)
    (_, kdf_oid), (_, kdf_params) = _seq(kdf)
    items = _seq(kdf_params)
    if kdf_oid == SCRYPT_OID:
        n, r, p = (int.from_bytes(v, "big") for _, v in items[1:4])
        return {"kdf": "scrypt", "n": n, "r": r, "p": p}
    assert kdf_oid == PBKDF2_OID, kdf_oid.hex()
    return {"kdf": "pbkdf2", "iterations": int.from_bytes(items[1][1], "big")}


def meets_owasp(kdf: dict[str, int | str]) -> bool:
    """OWASP Password Storage Cheat Sheet: scrypt N=2^17 r=8 p=1 or an equal-cost set (N=2^14 r=8
    p=5 among them); PBKDF2-HMAC-SHA256 at 600,000 iterations."""
    if kdf["kdf"] == "scrypt":
        return int(kdf["r"]) >= 8 and int(kdf["n"]) >= 2**13 and int(kdf["n"]) * int(kdf["p"]) >= 5 * 2**14
    return int(kdf["iterations"]) >= 600_000


@pytest.mark.parametrize("kind", ["signing", "backup-pin"])
def test_private_keys_are_encrypted_with_a_memory_hard_kdf(tmp_path: Path, kind: str) -> None:
    if kind == "signing":
        _, key_path, _ = keys.new_signing_key("everyday", "production", tmp_path, PASS)
    else:
        _, key_path, _ = keys.new_backup_tls_key("spare", tmp_path, PASS)
    pem = key_path.read_bytes()
    kdf = kdf_of(pem)
    assert kdf["kdf"] == "scrypt" and meets_owasp(kdf), kdf
    assert keys.key_protection(pem) == kdf  # what fleetpin itself reads back
    # a standard PKCS#8 file: cryptography (and OpenSSL) read it with the passphrase
    key = serialization.load_pem_private_key(pem, PASS)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert keys.load_private_key(key_path, PASS).private_numbers() == key.private_numbers()
    with pytest.raises(FleetpinError, match="wrong passphrase"):
        keys.load_private_key(key_path, b"not the passphrase")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command to read the key with")
def test_openssl_reads_the_key_file(tmp_path: Path) -> None:
    _, key_path, _ = keys.new_signing_key("everyday", "production", tmp_path, PASS)
    done = subprocess.run(["openssl", "pkey", "-in", str(key_path), "-passin", "pass:" + PASS.decode(), "-noout"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _old_style_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """A key as fleetpin wrote them before: PKCS#8, PBKDF2 at 2,048 iterations."""
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(PASS)))
    return key


def test_old_keys_are_still_read_and_can_be_reencrypted(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    old = tmp_path / "old.key.pem"
    key = _old_style_key(old)
    assert kdf_of(old.read_bytes()) == {"kdf": "pbkdf2", "iterations": 2048}
    loaded = keys.load_private_key(old, PASS)
    assert loaded.private_numbers() == key.private_numbers()
    err = capsys.readouterr().err
    assert "2048" in err and "fleetpin key reencrypt" in err  # it says so, and what to do
    os.chmod(old, 0o600)
    monkeypatch.setenv(keys.PASSPHRASE_ENV, PASS.decode())
    assert main(["key", "reencrypt", str(old)]) == 0, capsys.readouterr()
    assert [p.name for p in tmp_path.iterdir()] == ["old.key.pem"]  # no temporary file left
    pem = old.read_bytes()
    assert meets_owasp(kdf_of(pem)) and stat.S_IMODE(old.stat().st_mode) == 0o600
    assert keys.load_private_key(old, PASS).private_numbers() == key.private_numbers()
    assert "reencrypt" not in capsys.readouterr().err  # no warning for a key that is up to date


def test_reencrypt_refuses_a_wrong_passphrase_and_leaves_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    old = tmp_path / "old.key.pem"
    _old_style_key(old)
    before = old.read_bytes()
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "wrong passphrase")
    assert main(["key", "reencrypt", str(old)]) == 1
    assert "wrong passphrase" in capsys.readouterr().err
    assert old.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["old.key.pem"]


@pytest.mark.parametrize("kind", ["signing", "backup-pin", "import"])
def test_key_folders_are_created_0700_whatever_the_umask(tmp_path: Path, open_umask: None, kind: str) -> None:
    out = tmp_path / "a" / "b" / "keys"
    if kind == "signing":
        _, key_path, _ = keys.new_signing_key("everyday", "production", out, PASS)
    elif kind == "backup-pin":
        _, key_path, _ = keys.new_backup_tls_key("spare", out, PASS)
    else:
        pub = ec.generate_private_key(ec.SECP256R1()).public_key()
        _, key_path = keys.import_public_key(
            pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
            "hsm", "production", out)
    for d in (tmp_path / "a", tmp_path / "a" / "b", out):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, (d, oct(d.stat().st_mode))
    if kind != "import":
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_an_existing_folder_keeps_its_mode(tmp_path: Path, open_umask: None) -> None:
    out = tmp_path / "shared"
    out.mkdir(mode=0o755)
    os.chmod(out, 0o755)
    keys.new_signing_key("everyday", "production", out, PASS)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755  # not ours to change
