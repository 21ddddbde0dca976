"""The generated PKIs and the loopback TLS servers every later test relies on: the good chain
validates, each refused certificate fails for exactly its one reason, pins are right, and the
servers bind only 127.0.0.1, run side by side and stop cleanly."""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleetpin.sim.pki import KEY_TYPES, LEAF_NAMES, Pki, PkiFiles, make_pki
from fleetpin.sim.tlsserver import LOOPBACK, TlsServer, fetch


def openssl_pin(cert_pem: bytes) -> str:
    def run(args: list[str], data: bytes) -> bytes:
        return subprocess.run(["openssl", *args], input=data, capture_output=True, check=True).stdout

    der = run(["pkey", "-pubin", "-outform", "DER"], run(["x509", "-pubkey", "-noout"], cert_pem))
    return base64.b64encode(run(["dgst", "-sha256", "-binary"], der)).decode()


# ---------------------------------------------------------------------------------------------
# The PKI


def test_pins_match_openssl_and_tell_keys_apart(pki: Pki) -> None:
    for name in ("root", "intermediate", "leaf", "backup_leaf", "rogue_root", "rogue_leaf"):
        assert openssl_pin(getattr(pki, name).pem) == getattr(pki, name).pin, name
    assert len(set(pki.pins.values())) == len(pki.pins)  # six distinct keys


def test_expired_and_wrong_host_leaves_carry_the_primary_key(pki: Pki) -> None:
    # Their pin matches, so only CA validation can refuse them: tests that pins never replace it.
    assert pki.expired_leaf.pin == pki.wrong_host_leaf.pin == pki.pins["leaf"]
    assert pki.expired_leaf.cert.not_valid_after_utc < pki.now
    san = pki.wrong_host_leaf.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert pki.host not in san.get_values_for_type(x509.DNSName)


def test_chains_and_issuers(pki: Pki) -> None:
    assert [c.name for c in pki.chain("leaf")] == ["leaf", "intermediate"]
    assert [c.name for c in pki.chain("leaf", with_root=True)] == ["leaf", "intermediate", "root"]
    assert [c.name for c in pki.chain("rogue_leaf", with_root=True)] == ["rogue_leaf", "rogue_root"]
    for name in LEAF_NAMES:
        chain = pki.chain(name, with_root=True)
        for child, parent in zip(chain, chain[1:]):
            child.cert.verify_directly_issued_by(parent.cert)
    leaf = pki.leaf.cert
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [pki.host]
    assert leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == pki.host
    assert pki.chain_pem("leaf") == pki.leaf.pem + pki.intermediate.pem


def test_cached_and_namespaced(pki: Pki) -> None:
    start = time.perf_counter()
    assert make_pki("device.test") is pki
    other_host = make_pki("other.test")
    assert time.perf_counter() - start < 0.5  # keys are reused: only signatures are new
    assert other_host.pins["leaf"] == pki.pins["leaf"]
    rotated = make_pki("device.test", namespace="rotation")
    assert set(rotated.pins.values()).isdisjoint(pki.pins.values())


def test_write_files(pki: Pki, pki_files: PkiFiles) -> None:
    assert pki_files.cert("root").read_bytes() == pki.root.pem
    assert pki_files.chain("leaf").read_bytes().count(b"BEGIN CERTIFICATE") == 2
    key = serialization.load_pem_private_key(pki_files.key("backup_leaf").read_bytes(), None)
    assert key.public_key() == pki.backup_leaf.key.public_key()


def test_unknown_key_type() -> None:
    with pytest.raises(ValueError, match="key_type"):
        make_pki("x.test", key_type="dsa")


# ---------------------------------------------------------------------------------------------
# The TLS servers (and, through a verifying client, that the PKI is what it claims to be)


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_good_chain_validates_and_data_flows(tls_server: Callable, key_type: str, tmp_path: Path) -> None:
    pki = make_pki("device.test", key_type)
    root = tmp_path / "root.pem"
    root.write_bytes(pki.root.pem)
    server = tls_server("leaf", pki)
    assert fetch(server.port, "device.test", root, b"ping\n") == b"HELLO\n"
    assert server.requests == [b"ping\n"] and server.server_names == ["device.test"]


@pytest.mark.parametrize("leaf, ca, reason", [
    ("rogue_leaf", "root", "unable to get local issuer certificate"),
    ("expired_leaf", "root", "certificate has expired"),
    ("wrong_host_leaf", "root", "Hostname mismatch"),
    ("leaf", "rogue_root", "unable to get local issuer certificate"),
])
def test_refused_certificates_fail_for_their_reason(tls_server: Callable, pki: Pki, pki_files: PkiFiles,
                                                    leaf: str, ca: str, reason: str) -> None:
    server = tls_server(leaf)
    with pytest.raises(ssl.SSLCertVerificationError, match=reason):
        fetch(server.port, pki.host, pki_files.cert(ca))
    assert server.requests == []  # no application byte reached the server
    deadline = time.monotonic() + 5
    while not server.failed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.failed  # recorded, and the server lives on:
    assert fetch(tls_server("leaf").port, pki.host, pki_files.cert("root")) == b"HELLO\n"


def test_rogue_leaf_validates_under_its_own_root(tls_server: Callable, pki: Pki, pki_files: PkiFiles) -> None:
    # What an attacker with a mis-issued certificate has: CA validation alone would accept it.
    server = tls_server("rogue_leaf")
    assert fetch(server.port, pki.host, pki_files.cert("rogue_root")) == b"HELLO\n"


def test_several_servers_side_by_side(tls_server: Callable, pki: Pki, pki_files: PkiFiles) -> None:
    servers = [tls_server("leaf", reply=b"ONE\n"), tls_server("backup_leaf", reply=b"TWO\n"), tls_server("leaf")]
    assert len({s.port for s in servers}) == 3
    replies = [fetch(s.port, pki.host, pki_files.cert("root")) for s in servers]
    assert replies == [b"ONE\n", b"TWO\n", b"HELLO\n"]
    for s in servers:
        assert s.address == (LOOPBACK, s.port) and s._listener is not None
        assert s._listener.getsockname() == (LOOPBACK, s.port)


def test_tls12_only_server(tls_server: Callable, pki: Pki, pki_files: PkiFiles) -> None:
    server = tls_server("leaf", maximum_version=ssl.TLSVersion.TLSv1_2)
    context = ssl.create_default_context(cafile=str(pki_files.cert("root")))
    with socket.create_connection(server.address, timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=pki.host) as tls:
            assert tls.version() == "TLSv1.2"


def test_stop_releases_the_port(pki: Pki) -> None:
    with TlsServer(pki.chain_pem("leaf"), pki.leaf.key_pem) as server:
        port = server.port
        with socket.create_connection((LOOPBACK, port), timeout=5):
            pass  # a client that connects and leaves without a handshake must not hang stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((LOOPBACK, port), timeout=5).close()
    assert all(not w.is_alive() for w in server._workers)
