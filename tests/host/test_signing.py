"""Signing keys (fleetpin.pki.keys) and pluggable signers (fleetpin.pki.signing): local PEM and command."""

from __future__ import annotations

import hashlib
import json
import stat
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleetpin.errors import FleetpinError, UsageError
from fleetpin.pki import keys
from fleetpin.pki.signing import CommandSigner, LocalKeySigner, signature_candidates, verifies
from pinagent import ecdsa
from pinagent import signers as dev_signers

PASS = b"correct horse battery"
DIGEST = hashlib.sha256(b"bundle bytes").digest()


@pytest.fixture
def signing_key(tmp_path: Path) -> tuple[keys.PublicKeyInfo, Path, Path]:
    return keys.new_signing_key("everyday", "production", tmp_path / "keys", PASS)


def test_new_signing_key_files(signing_key: tuple[keys.PublicKeyInfo, Path, Path]) -> None:
    info, key_path, pub_path = signing_key
    pem = key_path.read_bytes()
    assert b"ENCRYPTED PRIVATE KEY" in pem
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    with pytest.raises(TypeError):  # needs the passphrase
        serialization.load_pem_private_key(pem, None)
    key = serialization.load_pem_private_key(pem, PASS)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    # key id = first 8 bytes of SHA-256 of the SPKI, and the device computes the same from the point
    assert info.key_id == hashlib.sha256(spki).hexdigest()[:16]
    assert dev_signers.key_id_of_point(info.point).hex() == info.key_id
    meta = json.loads(pub_path.read_text())
    assert meta["key_id"] == info.key_id and meta["role"] == "production" and meta["name"] == "everyday"
    assert keys.load_public_info(pub_path).point == info.point


def test_keys_are_never_overwritten(signing_key: tuple[keys.PublicKeyInfo, Path, Path], tmp_path: Path) -> None:
    before = signing_key[1].read_bytes()
    with pytest.raises(FleetpinError, match="exists already"):
        keys.new_signing_key("everyday", "production", tmp_path / "keys", PASS)
    assert signing_key[1].read_bytes() == before


def test_edited_metadata_is_refused(signing_key: tuple[keys.PublicKeyInfo, Path, Path], tmp_path: Path) -> None:
    _, _, pub_path = signing_key
    meta = json.loads(pub_path.read_text())
    meta["key_id"] = "00" * 8
    pub_path.write_text(json.dumps(meta))
    with pytest.raises(UsageError, match="not the id of this key"):
        keys.load_public_info(pub_path)


def test_wrong_passphrase(signing_key: tuple[keys.PublicKeyInfo, Path, Path]) -> None:
    with pytest.raises(FleetpinError, match="wrong passphrase"):
        keys.load_private_key(signing_key[1], b"wrong passphrase")


def test_passphrase_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "pass.txt"
    f.write_text("from the file\n")
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "from the environment")
    assert keys.read_passphrase(f, confirm=False) == b"from the file"
    assert keys.read_passphrase(None, confirm=False) == b"from the environment"
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "short")
    with pytest.raises(UsageError, match="shorter than"):
        keys.read_passphrase(None, confirm=False)


def test_local_signer_signs_what_the_device_verifies(signing_key: tuple[keys.PublicKeyInfo, Path, Path]) -> None:
    info, key_path, _ = signing_key
    signer = LocalKeySigner(keys.load_private_key(key_path, PASS), info)
    sig = signer.sign_digest(DIGEST)
    assert len(sig) == 64
    assert sig == signer.sign_digest(DIGEST)  # RFC 6979: deterministic
    ecdsa.verify_p256(info.point, DIGEST, sig)  # the device's verifier accepts it


def test_local_signer_refuses_a_mismatched_pair(tmp_path: Path) -> None:
    a, a_key, _ = keys.new_signing_key("a", "production", tmp_path, PASS)
    b, _, _ = keys.new_signing_key("b", "production", tmp_path, PASS)
    with pytest.raises(FleetpinError, match="does not match"):
        LocalKeySigner(keys.load_private_key(a_key, PASS), b).sign_digest(DIGEST)


def _script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "signer.py"
    path.write_text("import sys, os, base64, hashlib\n" + body)
    return f"{sys.executable} {path}"


@pytest.fixture
def pem_plain(signing_key: tuple[keys.PublicKeyInfo, Path, Path], tmp_path: Path) -> Path:
    """The key unencrypted, as an 'HSM' the test command can use."""
    key = keys.load_private_key(signing_key[1], PASS)
    path = tmp_path / "hsm.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


@pytest.mark.parametrize("output", ["der", "raw", "hex-der", "b64-raw", "b64-der"])
def test_command_signer_accepts_every_documented_output(
    output: str, signing_key: tuple[keys.PublicKeyInfo, Path, Path], pem_plain: Path, tmp_path: Path
) -> None:
    info = signing_key[0]
    cmd = _script(tmp_path, f"""
from cryptography.hazmat.primitives import serialization, hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
digest = sys.stdin.buffer.read()
assert digest.hex() == os.environ["FLEETPIN_DIGEST_HEX"], "stdin and env disagree"
assert os.environ["FLEETPIN_KEY_ID"] == {info.key_id!r}
key = serialization.load_pem_private_key(open({str(pem_plain)!r}, "rb").read(), None)
der = key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
r, s = utils.decode_dss_signature(der)
raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
out = {{"der": der, "raw": raw, "hex-der": der.hex().encode() + b"\\n", "b64-raw": base64.b64encode(raw),
       "b64-der": base64.b64encode(der) + b"\\n"}}[{output!r}]
sys.stdout.buffer.write(out)
""")
    sig = CommandSigner(cmd, info).sign_digest(DIGEST)
    ecdsa.verify_p256(info.point, DIGEST, sig)


def test_command_signer_with_openssl(signing_key: tuple[keys.PublicKeyInfo, Path, Path], pem_plain: Path) -> None:
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("no openssl")
    # openssl pkeyutl signs its input as a digest (no -rawin): the documented protocol.
    sig = CommandSigner(f"openssl pkeyutl -sign -inkey {pem_plain}", signing_key[0]).sign_digest(DIGEST)
    ecdsa.verify_p256(signing_key[0].point, DIGEST, sig)


def test_command_signer_that_hashes_again_is_refused(
    signing_key: tuple[keys.PublicKeyInfo, Path, Path], pem_plain: Path, tmp_path: Path
) -> None:
    cmd = _script(tmp_path, f"""
from cryptography.hazmat.primitives import serialization, hashes
from cryptography.hazmat.primitives.asymmetric import ec
key = serialization.load_pem_private_key(open({str(pem_plain)!r}, "rb").read(), None)
sys.stdout.buffer.write(key.sign(sys.stdin.buffer.read(), ec.ECDSA(hashes.SHA256())))
""")
    with pytest.raises(FleetpinError, match="not a valid signature by key everyday"):
        CommandSigner(cmd, signing_key[0]).sign_digest(DIGEST)


def test_command_signer_failures(signing_key: tuple[keys.PublicKeyInfo, Path, Path], tmp_path: Path) -> None:
    info = signing_key[0]
    with pytest.raises(FleetpinError, match=r"failed \(exit 3\).*HSM locked"):
        CommandSigner(_script(tmp_path, "sys.stderr.write('HSM locked'); sys.exit(3)"), info).sign_digest(DIGEST)
    with pytest.raises(FleetpinError, match="not a valid signature"):
        CommandSigner(_script(tmp_path, "sys.stdout.write('garbage')"), info).sign_digest(DIGEST)
    with pytest.raises(UsageError, match="command not found"):
        CommandSigner("/nonexistent/signer", info).sign_digest(DIGEST)
    with pytest.raises(UsageError, match="empty"):
        CommandSigner("  ", info)


N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _s(sig: bytes) -> int:
    return int.from_bytes(sig[32:], "big")


def test_local_signer_signs_with_low_s(signing_key: tuple[keys.PublicKeyInfo, Path, Path]) -> None:
    # Issue 12, item 7: one bundle, one encoding. (r, n - s) verifies as well as (r, s); fleetpin
    # always writes the low one, so building the same bundle twice gives the same bytes.
    info, key_path, _ = signing_key
    signer = LocalKeySigner(keys.load_private_key(key_path, PASS), info)
    for i in range(32):  # RFC 6979 nonces: about half of these would come out with a high s
        digest = hashlib.sha256(b"bundle %d" % i).digest()
        sig = signer.sign_digest(digest)
        assert _s(sig) <= N // 2, i
        ecdsa.verify_p256(info.point, digest, sig)
        assert signer.sign_digest(digest) == sig


def test_command_signer_returns_low_s_whatever_the_hsm_gives(
    signing_key: tuple[keys.PublicKeyInfo, Path, Path], pem_plain: Path, tmp_path: Path
) -> None:
    # An HSM or KMS may return either s; the bundle carries the low one.
    cmd = _script(tmp_path, f"""
from cryptography.hazmat.primitives import serialization, hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
n = {N}
key = serialization.load_pem_private_key(open({str(pem_plain)!r}, "rb").read(), None)
r, s = utils.decode_dss_signature(key.sign(sys.stdin.buffer.read(), ec.ECDSA(utils.Prehashed(hashes.SHA256()))))
s = max(s, n - s)  # always the high one
sys.stdout.buffer.write(utils.encode_dss_signature(r, s))
""")
    info = signing_key[0]
    sig = CommandSigner(cmd, info).sign_digest(DIGEST)
    assert _s(sig) <= N // 2
    ecdsa.verify_p256(info.point, DIGEST, sig)


def test_signature_candidates_ignore_nonsense() -> None:
    assert signature_candidates(b"") == []
    assert signature_candidates(b"zz not hex or base64 !") == []
    assert signature_candidates(bytes(64)) == [bytes(64)]


def test_verifies_rejects_wrong_lengths(signing_key: tuple[keys.PublicKeyInfo, Path, Path]) -> None:
    assert verifies(signing_key[0], DIGEST, bytes(63)) is False


def test_signer_set_rules(tmp_path: Path) -> None:
    a, _, _ = keys.new_signing_key("a", "production", tmp_path, PASS)
    b, _, _ = keys.new_signing_key("b", "production", tmp_path, PASS)
    d, _, _ = keys.new_signing_key("d", "development", tmp_path, PASS)
    obj = keys.signer_set_obj([a, b])
    assert obj["channel"] == "production" and [s["id"] for s in obj["signers"]] == [a.key_id, b.key_id]
    dev_signers.signers_from_obj(obj)
    with pytest.raises(UsageError, match="at least 2"):
        keys.signer_set_obj([a])
    with pytest.raises(UsageError, match="one role"):
        keys.signer_set_obj([a, d])
    with pytest.raises(UsageError, match="same key"):
        keys.signer_set_obj([a, a])


def test_signer_set_thresholds(tmp_path: Path) -> None:
    # Issue 12, item 5: the set states how many of its keys a bundle needs; defaults 1 and 2
    # are not written (sets made before thresholds keep their bytes).
    a, b, c = (keys.new_signing_key(n, "production", tmp_path, PASS)[0] for n in "abc")
    assert "threshold" not in keys.signer_set_obj([a, b]) and "rotation_threshold" not in keys.signer_set_obj([a, b])
    obj = keys.signer_set_obj([a, b, c], threshold=2, rotation_threshold=3)
    assert obj["threshold"] == 2 and obj["rotation_threshold"] == 3
    trusted = dev_signers.signers_from_obj(obj)
    assert (trusted.threshold, trusted.rotation_threshold) == (2, 3)
    for infos, kw in (([a, b], {"rotation_threshold": 1}), ([a, b], {"threshold": 3}), ([a, b], {"threshold": 0}),
                      ([a, b, c], {"rotation_threshold": 4}), ([a, b, c], {"threshold": 3})):
        with pytest.raises(UsageError, match="SignerThresholdInvalid"):
            keys.signer_set_obj(infos, **kw)


def test_signer_set_refuses_a_key_with_its_negation(tmp_path: Path) -> None:
    # Issue 12, item 6: (x, p - y) is the public key of n - d: one private key under two ids.
    a, _, _ = keys.new_signing_key("a", "production", tmp_path, PASS)
    p = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
    y = int.from_bytes(a.point[33:], "big")
    negated = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), a.point[:33] + (p - y).to_bytes(32, "big"))
    twin = keys.public_info(negated, "a-twin", "production")
    assert twin.key_id != a.key_id
    with pytest.raises(UsageError, match="SignerKeyRepeated"):
        keys.signer_set_obj([a, twin])


def test_backup_tls_key_pin(tmp_path: Path) -> None:
    pin, key_path, pub_path = keys.new_backup_tls_key("backup-tls", tmp_path, PASS)
    pub = serialization.load_pem_public_key(pub_path.read_bytes())
    spki = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    import base64

    assert pin == base64.b64encode(hashlib.sha256(spki).digest()).decode()
    assert b"ENCRYPTED PRIVATE KEY" in key_path.read_bytes()


def test_import_public_key_for_an_hsm(signing_key: tuple[keys.PublicKeyInfo, Path, Path], tmp_path: Path) -> None:
    key = keys.load_private_key(signing_key[1], PASS)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    info, path = keys.import_public_key(pem, "hsm-key", "production", tmp_path / "hsm")
    assert info.key_id == signing_key[0].key_id
    assert keys.load_public_info(path) == keys.PublicKeyInfo("hsm-key", info.key_id, "production", info.point, path)
    with pytest.raises(UsageError, match="P-256"):
        other = ec.generate_private_key(ec.SECP384R1()).public_key()
        keys.import_public_key(other.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
                               "p384", "production", tmp_path / "hsm")
