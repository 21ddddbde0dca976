"""Pluggable bundle signing: a local encrypted PEM key, or an external command (HSM, cloud KMS).

Every signer signs the SHA-256 digest of the bundle's signed bytes with ECDSA P-256 and returns
the 64-byte raw r||s the bundle carries. Whatever signs, the result is verified here against
the public key in NAME.pub.json before it goes into a bundle, so a misconfigured command, a
wrong key or a garbled output fails the build instead of a field update.

Low s: (r, s) and (r, n - s) are both valid signatures of one digest. Every signature is
written with s <= n/2 (what an HSM returns is normalised), so a bundle fleetpin builds has one
encoding. A bundle's identity is still the SHA-256 of its signed bytes, not of the file
(pinagent.bundle): a signature by a key a device does not know is never checked there.

External command protocol (--sign-command CMD):
- CMD is split like a shell command line (shlex) and run without a shell, once per signature;
  use a script for pipes.
- stdin: the 32-byte digest, raw. Environment: FLEETPIN_DIGEST_HEX, FLEETPIN_DIGEST_B64 (the
  digest as hex / base64), FLEETPIN_KEY_ID (16 hex), FLEETPIN_KEY_NAME (from NAME.pub.json).
  The digest is already SHA-256 of the data: the signer must NOT hash it again (openssl
  `pkeyutl -sign` without -rawin; AWS KMS `sign --message-type DIGEST`; GCP KMS
  `asymmetricSign` with a `digest.sha256`; PKCS#11 mechanism CKM_ECDSA, not CKM_ECDSA_SHA256).
- stdout: the signature, as DER (ECDSA-Sig-Value, what openssl, KMS and PKCS#11 wrappers
  mostly return) or raw 64-byte r||s, either as binary or as hex or base64 text. Every reading
  is tried and the one that verifies under the public key is taken.
- exit status 0; anything else fails the build with the command's stderr. Timeout: 120 s.
"""

from __future__ import annotations

import base64
import binascii
import os
import shlex
import subprocess
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from fleetpin.errors import FleetpinError, UsageError
from fleetpin.pki.keys import PublicKeyInfo

COMMAND_TIMEOUT = 120.0
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # the group order


class Signer(Protocol):
    info: PublicKeyInfo

    def sign_digest(self, digest: bytes) -> bytes:
        """64-byte r||s over a 32-byte SHA-256 digest, verified against info's public key."""
        ...


def raw_of_der(der: bytes) -> bytes:
    r, s = utils.decode_dss_signature(der)
    if not (0 < r < 2**256 and 0 < s < 2**256):
        raise ValueError("r or s out of range")
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def low_s(raw: bytes) -> bytes:
    """The same signature r||s with s <= n/2 ((r, n - s) verifies exactly when (r, s) does)."""
    s = int.from_bytes(raw[32:], "big")
    if s > P256_N // 2:
        return raw[:32] + (P256_N - s).to_bytes(32, "big")
    return raw


def verifies(info: PublicKeyInfo, digest: bytes, raw: bytes) -> bool:
    if len(raw) != 64:
        return False
    der = utils.encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    try:
        info.public_key().verify(der, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    except InvalidSignature:
        return False
    return True


class LocalKeySigner:
    """Signs with a private key in memory (loaded from an encrypted NAME.key.pem)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, info: PublicKeyInfo) -> None:
        self.key = key
        self.info = info

    def sign_digest(self, digest: bytes) -> bytes:
        # RFC 6979 deterministic nonces: no dependence on the RNG at signing time, and the same
        # input gives the same bundle (reproducible test vectors).
        algorithm = ec.ECDSA(utils.Prehashed(hashes.SHA256()), deterministic_signing=True)
        raw = low_s(raw_of_der(self.key.sign(digest, algorithm)))
        if not verifies(self.info, digest, raw):
            raise FleetpinError(
                f"key {self.info.name}: the private key does not match {self.info.path or 'its public key file'}",
                hint="NAME.key.pem and NAME.pub.json must come from the same `fleetpin key new`",
            )
        return raw


def signature_candidates(out: bytes) -> list[bytes]:
    """Every 64-byte r||s the command's output could mean (binary or text, DER or raw)."""
    blobs = [out]
    text = out.strip()
    if text and all(32 < b < 127 for b in text):
        try:
            blobs.append(bytes.fromhex(text.decode()))
        except ValueError:
            pass
        try:
            blobs.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            pass
    result = []
    for blob in blobs:
        try:
            result.append(raw_of_der(blob))
        except ValueError:
            pass
        if len(blob) == 64:
            result.append(blob)
    return result


class CommandSigner:
    """Signs by running an external command (see the module docstring for the protocol)."""

    def __init__(self, command: str, info: PublicKeyInfo) -> None:
        try:
            self.argv = shlex.split(command)
        except ValueError as e:
            raise UsageError(f"--sign-command: {e}") from None
        if not self.argv:
            raise UsageError("--sign-command is empty")
        self.info = info

    def sign_digest(self, digest: bytes) -> bytes:
        env = dict(
            os.environ,
            FLEETPIN_DIGEST_HEX=digest.hex(),
            FLEETPIN_DIGEST_B64=base64.b64encode(digest).decode(),
            FLEETPIN_KEY_ID=self.info.key_id,
            FLEETPIN_KEY_NAME=self.info.name,
        )
        name = self.argv[0]
        try:
            proc = subprocess.run(self.argv, input=digest, capture_output=True, env=env, timeout=COMMAND_TIMEOUT)
        except FileNotFoundError:
            raise UsageError(f"--sign-command: {name}: command not found") from None
        except subprocess.TimeoutExpired:
            raise FleetpinError(f"--sign-command {name} did not answer within {COMMAND_TIMEOUT:.0f} s") from None
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip()[-500:]
            raise FleetpinError(
                f"--sign-command {name} failed (exit {proc.returncode}) for key {self.info.name}: {err}",
                hint="run the command by hand with the digest on stdin",
            )
        for raw in signature_candidates(proc.stdout):
            if verifies(self.info, digest, raw):
                return low_s(raw)
        raise FleetpinError(
            f"--sign-command {name}: its output is not a valid signature by key {self.info.name} ({self.info.key_id})",
            hint="the command must sign the given SHA-256 digest (not hash it again) with the key of "
            f"{self.info.path or 'this key'}; output DER or raw r||s, binary, hex or base64",
        )
