"""`fleetpin bundle fetch-cas`: the command that fixes lint's FP010. It fetches the chain a live
server presents (TLS servers on 127.0.0.1 only), validates it against --ca FILE or the system
store, and saves the CA certificate it chains to, ready for `[bundle] ca_certs`."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleetpin.pki.certs import load_certificates
from fleetpin.sim.pki import Pki, PkiFiles, make_pki

HOST = "device.test"


def at(server: Any, host: str = HOST) -> str:
    return f"{host}:{server.port}@127.0.0.1"


def policy(tmp_path: Path, pki: Pki, cas: str | None) -> Path:
    expires = dt.datetime.fromtimestamp(time.time() + 100 * 86400, dt.timezone.utc).strftime("%Y-%m-%d")
    text = (f'[defaults]\nexpires = {expires}\n\n[[domain]]\nhost = "{HOST}"\n'
            f'pins = [{{ pin = "{pki.pins["leaf"]}", label = "primary" }}, '
            f'{{ pin = "{pki.pins["backup"]}", label = "backup" }}]\n')
    if cas is not None:
        text += f'\n[bundle]\nca_certs = ["{cas}"]\n'
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


def test_fp010_is_fixed_by_fetch_cas(fleetpin: Callable[..., Any], tls_server: Callable[..., Any], pki: Pki,
                                     pki_files: PkiFiles, tmp_path: Path) -> None:
    server = tls_server("leaf")
    no_cas = fleetpin("bundle", "lint", policy(tmp_path, pki, None), "--json")
    assert no_cas.exit_code == 1 and "FP010" in [f["rule"] for f in json.loads(no_cas.stdout)["findings"]]
    assert "fetch-cas" in json.loads(no_cas.stdout)["findings"][0]["hint"]

    result = fleetpin("bundle", "fetch-cas", at(server), "--ca", pki_files.cert("root"), "-o", tmp_path / "cas.pem")
    assert result.exit_code == 0, result.stderr
    # the anchor the chain validates to (the server does not send it), not the server's certificates
    assert load_certificates(tmp_path / "cas.pem", "test") == [pki.root.der]
    assert f"chains to {pki.root.cert.subject.rfc4514_string()}" in result.stdout
    assert f"sha256/{pki.pins['root']}" in result.stdout and "ca_certs" in result.stdout

    fixed = fleetpin("bundle", "lint", policy(tmp_path, pki, "cas.pem"), "--host", at(server), "--json")
    assert fixed.exit_code == 0, fixed.stdout
    assert json.loads(fixed.stdout)["findings"] == []


def test_several_servers_one_file_and_json(fleetpin: Callable[..., Any], tls_server: Callable[..., Any], pki: Pki,
                                           pki_files: PkiFiles, tmp_path: Path) -> None:
    a, b = tls_server("leaf"), tls_server("backup_leaf")
    result = fleetpin("bundle", "fetch-cas", at(a), at(b), "--ca", pki_files.cert("root"), "--json")
    assert result.exit_code == 0, result.stderr
    obj = json.loads(result.stdout)
    assert [s["ca"] for s in obj["servers"]] == [pki.root.cert.subject.rfc4514_string()] * 2
    assert obj["pem"].count("BEGIN CERTIFICATE") == 1  # one anchor for both: written once
    piped = fleetpin("bundle", "fetch-cas", at(a), "--ca", pki_files.cert("root"))
    assert piped.stdout.startswith("-----BEGIN CERTIFICATE-----") and "chains to" in piped.stderr


def test_system_store_is_the_default(fleetpin: Callable[..., Any], tls_server: Callable[..., Any], pki: Pki,
                                     pki_files: PkiFiles, tmp_path: Path) -> None:
    server = tls_server("leaf")
    # OpenSSL's own override of its default store: here the test root is "the system store"
    result = fleetpin("bundle", "fetch-cas", at(server), "-o", tmp_path / "cas.pem",
                      env={"SSL_CERT_FILE": str(pki_files.cert("root")), "SSL_CERT_DIR": str(tmp_path / "none")})
    assert result.exit_code == 0, result.stderr
    assert "the system CA store" in result.stdout
    assert load_certificates(tmp_path / "cas.pem", "test") == [pki.root.der]


def test_a_chain_that_does_not_validate_is_refused(fleetpin: Callable[..., Any], tls_server: Callable[..., Any],
                                                    pki: Pki, pki_files: PkiFiles, tmp_path: Path) -> None:
    server = tls_server("leaf")
    other = make_pki(HOST, namespace="fetch-cas-other").write(tmp_path / "other")
    result = fleetpin("bundle", "fetch-cas", at(server), "--ca", other.cert("root"), "-o", tmp_path / "cas.pem")
    assert result.exit_code == 1 and "does not validate against --ca" in result.stderr and "next:" in result.stderr
    assert not (tmp_path / "cas.pem").exists()
    wrong_name = fleetpin("bundle", "fetch-cas", at(server, "other.test"), "--ca", pki_files.cert("root"))
    assert wrong_name.exit_code == 1 and "does not validate" in wrong_name.stderr
    closed = fleetpin("bundle", "fetch-cas", f"{HOST}:1@127.0.0.1", "--ca", pki_files.cert("root"))
    assert closed.exit_code == 1 and "connection refused" in closed.stderr
    assert fleetpin("bundle", "fetch-cas", "not a host", "--ca", pki_files.cert("root")).exit_code == 2
