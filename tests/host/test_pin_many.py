"""`fleetpin pin` on many inputs, as sha256sum does: an unreadable file is reported and the rest
still pinned (exit 1 at the end); certificates whose names cryptography refuses to decode are
pinned anyway, their names escaped; and the MicroPython runtimes pin 600 certificates in one run
(the WebAssembly VM's reply was cut at 64 KB, ending in a JSONDecodeError traceback)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetpin.sim.pki import Pki, PkiFiles


def test_one_unreadable_file_among_many(fleetpin: Callable[..., Any], pki: Pki, pki_files: PkiFiles,
                                        tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    files = [pki_files.cert("leaf"), tmp_path / "missing.pem", garbage, pki_files.cert("root")]
    result = fleetpin("pin", *files)
    assert result.exit_code == 1
    assert f"{pki.pins['leaf']}  depth 0" in result.stdout and f"{pki.pins['root']}  depth 0" in result.stdout
    assert f"# {pki_files.cert('root')}" in result.stdout  # each source still headed
    assert "missing.pem: no such file" in result.stderr and "garbage.pem: not a PEM file" in result.stderr
    assert "2 of 4 inputs could not be pinned" in result.stderr
    as_json = fleetpin("pin", "--json", *files)
    assert as_json.exit_code == 1
    assert [r["pin"] for r in json.loads(as_json.stdout)] == [pki.pins["leaf"], pki.pins["root"]]
    # one input that fails is the error itself, with its own exit code (2: unreadable input)
    single = fleetpin("pin", tmp_path / "missing.pem")
    assert single.exit_code == 2 and single.stdout == "" and "could not be pinned" not in single.stderr


def _cert_with_cn(tag: int, value: bytes) -> bytes:
    """A self-signed certificate whose subject CN (and issuer CN) is `value` under string tag
    `tag`, put in after signing: what some devices and old CAs produce, and OpenSSL reads."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "QQQQ"), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(7).not_valid_before(now).not_valid_after(now + dt.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    der = cert.public_bytes(serialization.Encoding.DER)
    assert len(value) == 4
    return der.replace(b"\x0c\x04QQQQ", bytes([tag, 4]) + value)


def _openssl_pin(der: bytes) -> str:
    pub = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-pubkey"], input=der,
                         capture_output=True, check=True).stdout
    spki = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub, capture_output=True,
                          check=True).stdout
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.mark.parametrize("tag, value, shown, openssl_reads", [
    (0x14, b"\xe9tat", r"CN=\xe9tat", True),   # TeletexString with a Latin-1 byte: cryptography refuses it
    (0x13, b"a*b!", "CN=a*b!", True),          # PrintableString with characters it may not hold
    (0x16, b"\xffabc", r"CN=\xffabc", True),   # IA5String with a byte above 0x7f
    (0x0C, b"\xff\xfeab", r"CN=\xff\xfeab", False),  # invalid UTF-8 in a UTF8String
])
def test_names_cryptography_refuses_are_pinned_and_shown_escaped(fleetpin: Callable[..., Any], tmp_path: Path,
                                                                 tag: int, value: bytes, shown: str,
                                                                 openssl_reads: bool) -> None:
    der = _cert_with_cn(tag, value)
    try:  # the premise: cryptography cannot show this name
        x509.load_der_x509_certificate(der).subject.rfc4514_string()
        pytest.fail("cryptography decoded the name: the test needs a name it refuses")
    except ValueError:
        pass
    path = tmp_path / "odd.der"
    path.write_bytes(der)
    result = fleetpin("pin", path)
    assert result.exit_code == 0, result.stderr
    pin, _, rest = result.stdout.strip().partition("  ")
    assert rest == f"depth 0  O=Acme,{shown}"
    if openssl_reads:
        assert pin == _openssl_pin(der)
    device = fleetpin("pin", "--runtime", "device", "--json", path)  # the agent's own DER walk agrees
    assert device.exit_code == 0 and json.loads(device.stdout)[0]["pin"] == pin


def _many_certificates(count: int) -> bytes:
    issuer_key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    out = []
    for i in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"host-{i:03d}.fleet.example.com")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(i + 1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=30))
                .sign(issuer_key, hashes.SHA256()))
        out.append(cert.public_bytes(serialization.Encoding.PEM))
    return b"".join(out)


@pytest.fixture(scope="module")
def six_hundred(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("many") / "600.pem"
    path.write_bytes(_many_certificates(600))
    return path


@pytest.mark.parametrize("runtime", ["wasm", "micropython"])
def test_600_certificates_in_one_run(fleetpin: Callable[..., Any], six_hundred: Path, runtime: str) -> None:
    if runtime == "micropython":
        from runtimes import require_micropython

        require_micropython()
    host = fleetpin("pin", "--json", six_hundred)
    result = fleetpin("pin", "--json", "--runtime", runtime, six_hundred)
    assert result.exit_code == 0, result.stderr[-2000:]
    records = json.loads(result.stdout)
    assert len(records) == 600 and {r["runtime"] for r in records} == {runtime}
    assert [r["pin"] for r in records] == [r["pin"] for r in json.loads(host.stdout)]
