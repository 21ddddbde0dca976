"""`fleetpin pin`: pins equal the openssl pipeline for every input format and runtime; live
servers are validated before their chain is pinned; bad input names the file and exits 2."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fleetpin.sim.pki import Pki, PkiFiles, make_pki

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
PINS_JSON = VECTORS / "pins.json"
RUNTIMES = ["host", "device", "micropython", "wasm"]
PASSWORD = "correct horse"


def openssl(*args: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=True).stdout


def openssl_pin(cert_pem: bytes) -> str:
    """The reference: x509 -pubkey | pkey -pubin -outform DER | dgst -sha256 -binary | base64."""
    pubkey = openssl("x509", "-pubkey", "-noout", stdin=cert_pem)
    der = openssl("pkey", "-pubin", "-outform", "DER", stdin=pubkey)
    digest = openssl("dgst", "-sha256", "-binary", stdin=der)
    return base64.b64encode(digest).decode()


def vector_certs() -> dict[str, dict[str, object]]:
    if not PINS_JSON.exists():
        pytest.skip("tests/vectors/pins.json not generated yet")
    certs: dict[str, dict[str, object]] = json.loads(PINS_JSON.read_text())["certs"]
    return certs


def runtime_available(runtime: str) -> None:
    if runtime == "wasm" and importlib.util.find_spec("fleetpin.vm.wasm") is None:
        pytest.skip("fleetpin.vm.wasm not available yet")
    if runtime == "micropython":
        from runtimes import require_micropython

        require_micropython()


def pins_of(result_stdout: str) -> list[str]:
    return [record["pin"] for record in json.loads(result_stdout)]


# ---------------------------------------------------------------------------------------------
# Certificates: the vectors (every key type), on every runtime


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_vector_certificate_pins_equal_openssl_pipeline(fleetpin: Callable, runtime: str) -> None:
    runtime_available(runtime)
    certs = vector_certs()
    names = sorted(certs)
    files = [VECTORS / "certs" / f"{n}.der" for n in names] + [VECTORS / "certs" / f"{n}.pem" for n in names]
    result = fleetpin("pin", "--json", "--runtime", runtime, *files)
    assert result.exit_code == 0, result.stderr
    records = json.loads(result.stdout)
    assert len(records) == 2 * len(names)
    for record, name in zip(records, names + names):
        assert record["pin"] == certs[name]["pin"], name
        assert record["runtime"] == runtime
        assert record["key_type"].split(",")[0] == str(certs[name]["key_type"]).split(",")[0]


def test_vector_pins_json_agrees_with_a_fresh_openssl_run() -> None:
    # pins.json is the reference above: check it against openssl itself, here and now.
    for name, entry in vector_certs().items():
        assert openssl_pin((VECTORS / "certs" / f"{name}.pem").read_bytes()) == entry["pin"], name


def test_rsa_pss_pin_is_the_raw_spki_not_a_re_encoding() -> None:
    # cryptography re-encodes RSA-PSS keys as plain RSA: a different pin the device never sees.
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    entry = vector_certs()["rsa-pss-params"]
    cert = x509.load_der_x509_certificate((VECTORS / "certs" / "rsa-pss-params.der").read_bytes())
    re_encoded = cert.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    assert base64.b64encode(hashlib.sha256(re_encoded).digest()).decode() != entry["pin"]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_chain_file_lists_one_line_per_depth(fleetpin: Callable, runtime: str) -> None:
    runtime_available(runtime)
    certs = vector_certs()
    result = fleetpin("pin", "--runtime", runtime, VECTORS / "certs" / "chain.pem")
    assert result.exit_code == 0, result.stderr
    expected = [f"{certs[n]['pin']}  depth {d}  " for d, n in enumerate(["chain-leaf", "chain-intermediate", "chain-root"])]
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    for line, prefix in zip(lines, expected):
        assert line.startswith(prefix)
    assert "CN=chain-leaf.example" in lines[0]


def test_micropython_runtime_starts_one_vm_for_all_files(fleetpin: Callable, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime_available("wasm")
    import fleetpin.vm.wasm as mpvm

    calls: list[dict[str, bytes]] = []
    real = mpvm.run_steps

    def counting(steps: list[str], files: dict[str, bytes], heap_kb: int = 100) -> object:
        calls.append(files)
        return real(steps, files, heap_kb)

    monkeypatch.setattr(mpvm, "run_steps", counting)
    names = sorted(vector_certs())[:4]
    result = fleetpin("pin", "--runtime", "wasm", *[VECTORS / "certs" / f"{n}.der" for n in names])
    assert result.exit_code == 0, result.stderr
    assert len(calls) == 1 and sum(name.endswith(".der") for name in calls[0]) == 4


def test_runtime_disagreeing_with_host_fails(fleetpin: Callable, monkeypatch: pytest.MonkeyPatch,
                                             pki_files: PkiFiles) -> None:
    import fleetpin.commands.pin as cmd_pin

    monkeypatch.setattr(cmd_pin, "device_pins", lambda ders: ["A" * 43 + "="] * len(ders))
    result = fleetpin("pin", "--runtime", "device", pki_files.cert("leaf"))
    assert result.exit_code == 1
    assert "disagree" in result.stderr and str(pki_files.cert("leaf")) in result.stderr


def test_device_runtime_refuses_a_certificate_the_agent_cannot_parse(fleetpin: Callable, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # The host (cryptography) reads it; the device agent would not: that is a finding, exit 1.
    import fleetpin.commands.pin as cmd_pin
    from pinagent import der

    def refuse(d: bytes) -> object:
        raise der.DerError("unsupported")

    monkeypatch.setattr(der, "spki_of_certificate", refuse)
    result = fleetpin("pin", "--runtime", "device", VECTORS / "certs" / "ec-p256.der")
    assert result.exit_code == 1 and "cannot parse" in result.stderr
    assert cmd_pin  # imported so the patch target is the module the command uses


# ---------------------------------------------------------------------------------------------
# Keys and CSRs: every form pins to the same value as the key's certificate


KEY_FORMS = ["private-pem", "private-der", "encrypted-pem", "encrypted-der", "public-pem", "public-der",
             "csr-pem", "csr-der", "traditional-pem"]


def make_key_form(form: str, key_pem: Path, out: Path) -> Path:
    """Writes `key_pem` in the given form with the openssl CLI (an independent encoder)."""
    kind, _, encoding = form.partition("-")
    target = out / f"{form}.{encoding}"
    enc = "DER" if encoding == "der" else "PEM"
    if kind == "private":
        target.write_bytes(openssl("pkey", "-in", str(key_pem), "-outform", enc))
    elif kind == "encrypted":
        target.write_bytes(openssl("pkcs8", "-topk8", "-in", str(key_pem), "-v2", "aes-256-cbc",
                                   "-passout", f"pass:{PASSWORD}", "-outform", enc))
    elif kind == "public":
        target.write_bytes(openssl("pkey", "-in", str(key_pem), "-pubout", "-outform", enc))
    elif kind == "csr":
        target.write_bytes(openssl("req", "-new", "-key", str(key_pem), "-subj", "/CN=csr.example",
                                   "-outform", enc))
    elif kind == "traditional":  # "BEGIN EC/RSA PRIVATE KEY", legacy-encrypted
        target.write_bytes(openssl("pkey", "-in", str(key_pem), "-traditional", "-aes128",
                                   "-passout", f"pass:{PASSWORD}"))
    return target


@pytest.mark.parametrize("form", KEY_FORMS)
@pytest.mark.parametrize("name", ["rsa2048", "ec-p256", "ec-p384", "ed25519", "ed448", "rsa-pss-params"])
def test_key_and_csr_pins_equal_their_certificates_pin(fleetpin: Callable, tmp_path: Path, name: str,
                                                      form: str) -> None:
    entry = vector_certs()[name]
    if name.startswith("ed") and form == "traditional-pem":
        pytest.skip("EdDSA keys have no traditional (non-PKCS#8) encoding")
    if name == "rsa-pss-params" and form in ("encrypted-pem", "encrypted-der", "traditional-pem"):
        pytest.skip("known limitation: an encrypted RSA-PSS key loses its PSS algorithm on load")
    path = make_key_form(form, VECTORS / "keys" / f"{name}.key.pem", tmp_path)
    result = fleetpin("pin", "--json", path, env={"FLEETPIN_KEY_PASSPHRASE": PASSWORD})
    assert result.exit_code == 0, result.stderr
    (record,) = json.loads(result.stdout)
    assert record["pin"] == entry["pin"]
    assert record["kind"] == {"csr": "csr", "public": "public key"}.get(form.split("-")[0], "private key")
    assert record["depth"] is None


def test_key_and_csr_lines_name_their_kind(fleetpin: Callable, tmp_path: Path) -> None:
    key = VECTORS / "keys" / "ec-p256.key.pem"
    pub, csr = make_key_form("public-pem", key, tmp_path), make_key_form("csr-pem", key, tmp_path)
    pin = vector_certs()["ec-p256"]["pin"]
    result = fleetpin("pin", key, pub, csr)
    lines = [line for line in result.stdout.splitlines() if not line.startswith("# ")]
    assert lines == [f"{pin}  private key  EC P-256", f"{pin}  public key  EC P-256", f"{pin}  csr  CN=csr.example"]


def test_passphrase_from_environment_or_file(fleetpin: Callable, tmp_path: Path) -> None:
    path = make_key_form("encrypted-pem", VECTORS / "keys" / "ec-p256.key.pem", tmp_path)
    result = fleetpin("pin", path, env={"FLEETPIN_KEY_PASSPHRASE": PASSWORD})
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(str(vector_certs()["ec-p256"]["pin"]))
    (tmp_path / "pass.txt").write_text(PASSWORD + "\n")
    result = fleetpin("pin", "--passphrase-file", tmp_path / "pass.txt", path, env={"FLEETPIN_KEY_PASSPHRASE": None})
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(str(vector_certs()["ec-p256"]["pin"]))


def test_passphrase_is_asked_for_on_a_terminal(fleetpin: Callable, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from fleetpin import passphrase

    monkeypatch.setattr(passphrase, "interactive", lambda: True)
    path = make_key_form("encrypted-der", VECTORS / "keys" / "ec-p256.key.pem", tmp_path)
    result = fleetpin("pin", path, input=PASSWORD + "\n", env={"FLEETPIN_KEY_PASSPHRASE": None})
    assert result.exit_code == 0, result.stderr
    assert f"Passphrase for {path}" in result.stderr and PASSWORD not in result.stderr + result.stdout
    assert result.stdout.startswith(str(vector_certs()["ec-p256"]["pin"]))


@pytest.mark.parametrize("form", ["encrypted-pem", "encrypted-der", "traditional-pem"])
def test_wrong_or_missing_password_exits_2_naming_the_file(fleetpin: Callable, tmp_path: Path, form: str) -> None:
    path = make_key_form(form, VECTORS / "keys" / "ec-p256.key.pem", tmp_path)
    wrong = fleetpin("pin", path, env={"FLEETPIN_KEY_PASSPHRASE": "nope"})
    assert wrong.exit_code == 2 and str(path) in wrong.stderr and "wrong passphrase" in wrong.stderr
    missing = fleetpin("pin", path, env={"FLEETPIN_KEY_PASSPHRASE": None})  # and no terminal: no prompt
    assert missing.exit_code == 2 and str(path) in missing.stderr and "no terminal" in missing.stderr
    assert "--passphrase-file" in missing.stderr and "FLEETPIN_KEY_PASSPHRASE" in missing.stderr


# ---------------------------------------------------------------------------------------------
# Containers: several objects per file, DER chains, PKCS#7, PKCS#12


def test_mixed_pem_file_keeps_file_order(fleetpin: Callable, tmp_path: Path, pki: Pki) -> None:
    key = VECTORS / "keys" / "ec-p256.key.pem"
    mixed = tmp_path / "mixed.pem"
    ecparams = b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
    mixed.write_bytes(ecparams + pki.chain_pem("leaf") + key.read_bytes() + make_key_form("csr-pem", key, tmp_path).read_bytes())
    records = json.loads(fleetpin("pin", "--json", mixed).stdout)
    assert [(r["index"], r["kind"], r["depth"]) for r in records] == [
        (0, "certificate", 0), (1, "certificate", 1), (2, "private key", None), (3, "csr", None)]
    assert [r["pin"] for r in records[:2]] == [pki.pins["leaf"], pki.pins["intermediate"]]


def test_der_chain_pkcs7_and_pkcs12(fleetpin: Callable, tmp_path: Path, pki: Pki, pki_files: PkiFiles) -> None:
    chain = [pki.pins["leaf"], pki.pins["intermediate"]]
    der_chain = tmp_path / "chain.der"
    der_chain.write_bytes(b"".join(pki.chain_der("leaf")))
    assert pins_of(fleetpin("pin", "--json", der_chain).stdout) == chain

    p7b = tmp_path / "chain.p7b"
    p7b.write_bytes(openssl("crl2pkcs7", "-nocrl", "-certfile", str(pki_files.chain("leaf"))))
    p7der = tmp_path / "chain.p7der"
    p7der.write_bytes(openssl("pkcs7", "-in", str(p7b), "-outform", "DER"))
    assert pins_of(fleetpin("pin", "--json", p7b).stdout) == chain  # leaf first, though a SET is unordered
    assert pins_of(fleetpin("pin", "--json", p7der).stdout) == chain

    p12 = tmp_path / "leaf.p12"
    p12.write_bytes(openssl("pkcs12", "-export", "-in", str(pki_files.chain("leaf")), "-inkey",
                            str(pki_files.key("leaf")), "-passout", f"pass:{PASSWORD}"))
    result = fleetpin("pin", "--json", p12, env={"FLEETPIN_KEY_PASSPHRASE": PASSWORD})
    assert result.exit_code == 0, result.stderr
    records = json.loads(result.stdout)
    assert [(r["kind"], r["pin"]) for r in records] == [
        ("private key", pki.pins["leaf"]), ("certificate", pki.pins["leaf"]), ("certificate", pki.pins["intermediate"])]
    wrong = fleetpin("pin", p12, env={"FLEETPIN_KEY_PASSPHRASE": "nope"})
    assert wrong.exit_code == 2 and "wrong passphrase" in wrong.stderr


# ---------------------------------------------------------------------------------------------
# Bad input: exit 2, the file named, what to do next


def test_missing_file(fleetpin: Callable, tmp_path: Path) -> None:
    result = fleetpin("pin", tmp_path / "nope.pem")
    assert result.exit_code == 2 and f"{tmp_path / 'nope.pem'}: no such file" in result.stderr


@pytest.mark.parametrize("content", [
    b"", b"hello, I am not a certificate\n", b"\x30\x03\x02\x01\x01",
    b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n",
    b"-----BEGIN CERTIFICATE-----\nMIIBkTCB+wIJAK==\n-----END CERTIFICATE-----\n",
    b"-----BEGIN CERTIFICATE-----\n!!!notbase64!!!\n-----END CERTIFICATE-----\n",
], ids=["empty", "text", "der-integer", "only-params", "truncated-cert", "bad-base64"])
def test_unreadable_file_exits_2_with_inspection_hint(fleetpin: Callable, tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pem"
    path.write_bytes(content)
    result = fleetpin("pin", path)
    assert result.exit_code == 2, result.stderr
    assert str(path) in result.stderr and f"openssl x509 -in {path}" in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_vector_der_exits_2(fleetpin: Callable) -> None:
    path = VECTORS / "malformed" / "truncated-in-tbs.der"
    if not path.exists():
        pytest.skip("malformed vectors not generated")
    result = fleetpin("pin", path)
    assert result.exit_code == 2 and str(path) in result.stderr


@pytest.mark.parametrize("args, message", [
    ((), "nothing to pin"),
    (("--ca", "root.pem", "x.pem"), "--ca only applies to --host"),
    (("--host", "bad host:99"), "expected HOST:PORT"),
    (("--host", "h:70000"), "out of range"),
])
def test_usage_errors(fleetpin: Callable, args: tuple[str, ...], message: str) -> None:
    result = fleetpin("pin", *args)
    assert result.exit_code == 2 and message in result.stderr


def test_help_teaches(fleetpin: Callable) -> None:
    result = fleetpin("pin", "--help")
    assert result.exit_code == 0
    for phrase in ("base64(SHA-256(SubjectPublicKeyInfo))", "backup key", "openssl dgst -sha256", "--host",
                   "Exit codes", "keys and CSRs are always pinned on the host"):
        assert phrase in " ".join(result.stdout.split()), phrase


# ---------------------------------------------------------------------------------------------
# Live servers


def test_host_with_ca_prints_every_depth_and_the_anchor(fleetpin: Callable, tls_server: Callable,
                                                        pki: Pki, pki_files: PkiFiles) -> None:
    server = tls_server("leaf")
    result = fleetpin("pin", "--host", f"{pki.host}:{server.port}@127.0.0.1", "--ca", pki_files.cert("root"))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split("  ")[:2] for line in lines] == [
        [pki.pins["leaf"], "depth 0"], [pki.pins["intermediate"], "depth 1"], [pki.pins["root"], "depth 2"]]
    assert "not sent by the server" in lines[2]
    assert server.server_names == [pki.host]  # SNI = the host name, not the address
    assert server.requests == []  # pinning sends no application data


def test_host_json_shape(fleetpin: Callable, tls_server: Callable, pki: Pki, pki_files: PkiFiles) -> None:
    server = tls_server("leaf")
    result = fleetpin("pin", "--json", "--host", f"{pki.host}:{server.port}@127.0.0.1", "--ca", pki_files.cert("root"),
                      pki_files.key("backup_leaf"))
    records = json.loads(result.stdout)
    assert {tuple(sorted(r)) for r in records} == {tuple(sorted(
        ["file", "host", "index", "kind", "depth", "subject", "key_type", "pin", "spki_source", "runtime", "note"]))}
    key, leaf = records[0], records[1]
    assert key == {**key, "file": str(pki_files.key("backup_leaf")), "host": None, "kind": "private key",
                   "depth": None, "pin": pki.pins["backup"], "key_type": "EC P-256", "spki_source": "re-encoded"}
    assert leaf == {**leaf, "file": None, "host": f"{pki.host}:{server.port}", "kind": "certificate", "depth": 0,
                    "subject": f"CN={pki.host},O=fleetpin tests", "pin": pki.pins["leaf"], "spki_source": "raw"}


def test_host_without_ca_is_refused_with_a_hint(fleetpin: Callable, tls_server: Callable, pki: Pki) -> None:
    server = tls_server("leaf")
    result = fleetpin("pin", "--host", f"{pki.host}:{server.port}@127.0.0.1")
    assert result.exit_code == 1 and result.stdout == ""
    assert "TLS validation failed" in result.stderr and "--ca" in result.stderr


@pytest.mark.parametrize("leaf, reason", [
    ("rogue_leaf", "unable to get local issuer certificate"),
    ("expired_leaf", "certificate has expired"),
    ("wrong_host_leaf", "hostname mismatch"),
])
def test_host_failing_validation_is_refused(fleetpin: Callable, tls_server: Callable, pki: Pki,
                                            pki_files: PkiFiles, leaf: str, reason: str) -> None:
    server = tls_server(leaf)
    result = fleetpin("pin", "--host", f"{pki.host}:{server.port}@127.0.0.1", "--ca", pki_files.cert("root"))
    assert result.exit_code == 1 and result.stdout == ""
    assert reason in result.stderr


def test_ca_means_only_that_ca(fleetpin: Callable, tls_server: Callable, pki: Pki, pki_files: PkiFiles) -> None:
    # The rogue leaf validates under the rogue root only; the device trusts only its bundle's CAs.
    server = tls_server("rogue_leaf")
    ok = fleetpin("pin", "--host", f"{pki.host}:{server.port}@127.0.0.1", "--ca", pki_files.cert("rogue_root"))
    assert ok.exit_code == 0 and pins_of(fleetpin("pin", "--json", "--host", f"{pki.host}:{server.port}@127.0.0.1",
                                                  "--ca", pki_files.cert("rogue_root")).stdout) == [
        pki.pins["rogue_leaf"], pki.pins["rogue_root"]]


def test_several_hosts_and_key_types(fleetpin: Callable, tls_server: Callable, tmp_path: Path) -> None:
    rsa, ed = make_pki("rsa.test", "rsa"), make_pki("ed.test", "ed25519")
    ca = tmp_path / "cas.pem"
    ca.write_bytes(rsa.root.pem + ed.root.pem)
    s1, s2 = tls_server("leaf", rsa), tls_server("leaf", ed)
    result = fleetpin("pin", "--json", "--host", f"rsa.test:{s1.port}@127.0.0.1", "--host",
                      f"ed.test:{s2.port}@127.0.0.1", "--ca", ca)
    assert result.exit_code == 0, result.stderr
    records = json.loads(result.stdout)
    assert [(r["host"], r["depth"], r["pin"]) for r in records] == [
        (f"rsa.test:{s1.port}", 0, rsa.pins["leaf"]), (f"rsa.test:{s1.port}", 1, rsa.pins["intermediate"]),
        (f"rsa.test:{s1.port}", 2, rsa.pins["root"]),
        (f"ed.test:{s2.port}", 0, ed.pins["leaf"]), (f"ed.test:{s2.port}", 1, ed.pins["intermediate"]),
        (f"ed.test:{s2.port}", 2, ed.pins["root"])]
    assert records[0]["key_type"] == "RSA 2048" and records[3]["key_type"] == "Ed25519"


def test_unreachable_host(fleetpin: Callable, tls_server: Callable, pki_files: PkiFiles) -> None:
    server = tls_server("leaf")
    port = server.port
    server.stop()  # nothing listens on the port any more
    result = fleetpin("pin", "--host", f"127.0.0.1:{port}", "--ca", pki_files.cert("root"))
    assert result.exit_code == 1 and "connection refused" in result.stderr


def test_silent_host_times_out(fleetpin: Callable) -> None:
    with socket.socket() as silent:  # accepts TCP connections, never answers the ClientHello
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        started = time.monotonic()
        result = fleetpin("pin", "--timeout", "1", "--host", f"127.0.0.1:{port}")
    assert result.exit_code == 1 and "no TLS handshake within 1 s" in result.stderr
    assert time.monotonic() - started < 5


def test_ip_address_host_validates_against_an_ip_san(fleetpin: Callable, tls_server: Callable, tmp_path: Path) -> None:
    ip = make_pki("127.0.0.1")
    root = tmp_path / "root.pem"
    root.write_bytes(ip.root.pem)
    server = tls_server("leaf", ip)
    result = fleetpin("pin", "--host", f"127.0.0.1:{server.port}", "--ca", root)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(ip.pins["leaf"] + "  depth 0")
    assert server.server_names == [None]  # no SNI for an address


def test_parse_host() -> None:
    from fleetpin.pki.certs import HostTarget, parse_host

    assert parse_host("a.example") == HostTarget("a.example", 443, "a.example")
    assert parse_host("a.example:8443@10.0.0.1") == HostTarget("a.example", 8443, "10.0.0.1")
    assert parse_host("[::1]:8443") == HostTarget("::1", 8443, "::1")
    assert str(parse_host("a.example:1@[::1]")) == "a.example:1"
