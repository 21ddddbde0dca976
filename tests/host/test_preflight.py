"""`fleetpin preflight` against real TLS servers on 127.0.0.1 (fleetpin.sim.tlsserver, fleetpin.sim.pki).

Every --host is NAME:PORT@127.0.0.1: the device's name goes out as SNI and is checked, the
connection stays on loopback."""

from __future__ import annotations

import datetime as dt
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from fleetpin import cli
from fleetpin.bundles.build import build_bundle, canonical_json, load_bundle_source
from fleetpin.bundles.view import load_view
from fleetpin.field import preflight
from fleetpin.pki import keys
from fleetpin.pki.certs import FetchError, HostTarget, fetch_chain
from fleetpin.pki.signing import LocalKeySigner
from fleetpin.sim.pki import Pki, PkiFiles
from fleetpin.sim.tlsserver import TlsServer

HOST = "device.test"
DAY = 86400


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_policy(tmp_path: Path, files: PkiFiles, pins: list[tuple[str, str | None]], *, host: str = HOST,
                 expires: float | None = None, domain_extra: str = "", more: str = "",
                 ca: str = "root", defaults: str = "") -> Path:
    entries = ", ".join(f'{{ pin = "{p}", label = "{label}" }}' if label else f'"{p}"' for p, label in pins)
    path = tmp_path / "policy.toml"
    path.write_text(
        f"[defaults]\nexpires = {iso(expires if expires is not None else time.time() + 200 * DAY)}\n{defaults}\n"
        f'[[domain]]\nhost = "{host}"\n{domain_extra}\npins = [{entries}]\n{more}\n'
        f'[bundle]\nca_certs = ["{files.cert(ca)}"]\n'
    )
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = cli.main(["preflight", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, dict[str, Any], str]:
    code, out, err = run(capsys, *argv, "--json")
    return code, json.loads(out), err


def at(server: TlsServer, host: str = HOST) -> str:
    return f"{host}:{server.port}@127.0.0.1"


StartServer = Callable[..., TlsServer]


# --- devices connect ------------------------------------------------------------------------------


def test_served_leaf_pinned_exit_0(capsys: pytest.CaptureFixture[str], pki: Pki, pki_files: PkiFiles,
                                   tls_server: StartServer, tmp_path: Path) -> None:
    server = tls_server("leaf")
    policy = write_policy(tmp_path, pki_files, [(pki.pins["leaf"], "primary"), (pki.pins["backup"], "backup")])
    code, obj, err = run_json(capsys, policy, "--host", at(server))
    assert code == 0, err
    [s] = obj["servers"]
    assert s["status"] == "ok" and s["would_connect"] is True and s["problems"] == []
    assert s["domain"] == HOST and s["source"] == "--host" and s["address"] == "127.0.0.1"
    assert s["ca_validation"] == {"verified": True, "error": None, "anchor": "fleetpin Test Root CA"}
    assert s["verdict"]["reason"] == "matched"
    assert (s["verdict"]["matched_label"], s["verdict"]["matched_depth"]) == ("primary", 0)
    roles = {p["label"]: (p["role"], p["depths"]) for p in s["pins"]}
    assert roles == {"primary": ("matched", [0]), "backup": ("backup", [])}
    # The device's view: the served leaf and intermediate, then the bundle's root it was built to.
    assert [(c["depth"], c["sent"]) for c in s["chain"]] == [(0, True), (1, True), (2, False)]
    assert s["chain"][2]["pin"] == "sha256/" + pki.pins["root"]
    assert obj["summary"]["line"] == "1 server checked, 0 would lock devices out"
    assert server.server_names == [HOST]  # the device's name went out as SNI


def test_human_report(capsys: pytest.CaptureFixture[str], pki: Pki, pki_files: PkiFiles,
                      tls_server: StartServer, tmp_path: Path) -> None:
    server = tls_server("leaf")
    policy = write_policy(tmp_path, pki_files, [(pki.pins["leaf"], "primary"), (pki.pins["backup"], "backup")])
    code, out, err = run(capsys, policy, "--host", at(server))
    assert code == 0, err
    assert f"{HOST} — {HOST}:{server.port} @ 127.0.0.1" in out
    assert "sha256/" + pki.pins["leaf"] in out and "sha256/" + pki.pins["backup"] in out  # never cut
    assert "✓ primary (matched)" in out and "(backup)" in out
    assert "CA validation: ok" in out and "devices connect" in out
    assert out.rstrip().endswith("1 server checked, 0 would lock devices out")
    assert err == ""


def test_intermediate_pin_matches_at_depth_1(capsys: pytest.CaptureFixture[str], pki: Pki, pki_files: PkiFiles,
                                             tls_server: StartServer, tmp_path: Path) -> None:
    server = tls_server("backup_leaf")
    policy = write_policy(tmp_path, pki_files, [(pki.pins["intermediate"], "issuing CA"),
                                                (pki.pins["leaf"], "spare")])
    code, obj, err = run_json(capsys, policy, "--host", at(server))
    assert code == 0, err
    v = obj["servers"][0]["verdict"]
    assert (v["reason"], v["matched_label"], v["matched_depth"]) == ("matched", "issuing CA", 1)


def test_report_only_mismatch_connects_with_warning(capsys: pytest.CaptureFixture[str], pki: Pki,
                                                    pki_files: PkiFiles, tls_server: StartServer,
                                                    tmp_path: Path) -> None:
    server = tls_server("leaf")
    policy = write_policy(tmp_path, pki_files, [(pki.pins["backup"], "a"), (pki.pins["rogue_leaf"], "b")],
                          domain_extra="enforce = false")
    code, obj, err = run_json(capsys, policy, "--host", at(server))
    assert code == 0, err
    s = obj["servers"][0]
    assert s["verdict"]["reason"] == "report_only_mismatch" and s["status"] == "warning"
    assert any("enforcing this rule would lock devices out" in p["message"] for p in s["problems"])


# --- devices locked out ---------------------------------------------------------------------------


def test_pinning_only_keys_not_served_exit_1(capsys: pytest.CaptureFixture[str], pki: Pki, pki_files: PkiFiles,
                                             tls_server: StartServer, tmp_path: Path) -> None:
    server = tls_server("leaf")
    policy = write_policy(tmp_path, pki_files, [(pki.pins["backup"], "backup"), (pki.pins["rogue_leaf"], "old")])
    code, obj, err = run_json(capsys, policy, "--host", at(server))
    assert code == 1
    s = obj["servers"][0]
    assert s["status"] == "lockout" and s["would_connect"] is False
    assert s["ca_validation"]["verified"] is True  # the chain is fine: the pins are not
    assert s["verdict"]["reason"] == "mismatch" and s["lockout_reason"].startswith("mismatch")
    assert obj["summary"]["lockouts"] == 1 and obj["ok"] is False
    assert "1 server checked, 1 would lock devices out" in err and "next:" in err


def test_lockout_in_human_report(capsys: pytest.CaptureFixture[str], pki: Pki, pki_files: PkiFiles,
                                 tls_server: StartServer, tmp_path: Path) -> None:
    server = tls_server("leaf")
    policy = write_policy(tmp_path, pki_files, [(pki.pins["backup"], "backup"), (pki.pins["rogue_leaf"], "old")])
    code, out, err = run(capsys, policy, "--host", at(server))
    assert code == 1
    assert "WOULD LOCK DEVICES OUT" in out and "mismatch" in out
    assert "error: 1 server checked, 1 would lock devices out" in err


def test_rogue_ca_chain_exit_1_even_if_its_leaf_is_pinned(capsys: pytest.CaptureFixture[str], pki: Pki,
                                                          pki_files: PkiFiles, tls_server: StartServer,
                                                          tmp_path: Path) -> None:
    server = tls_server("rogue_leaf")
    # Even a pin on the rogue leaf's key cannot save a chain the bundle's CAs do not validate:
    # CERT_REQUIRED fails the handshake before any pin is looked at.
    policy = write_policy(tmp_path, pki_files, [(pki.pins["rogue_leaf"], "primary"), (pki.pins["backup"], "backup")])
    code, obj, err = run_json(capsys, policy, "--host", at(server))
    assert code == 1
    s = obj["servers"][0]
    assert s["status"] == "lockout" and s["ca_validation"]["verified"] is False
    assert s["ca_validation"]["error"]
    assert "does not validate against the bundle's CA certificates" in s["lockout_reason"]
    assert [c["sent"] for c in s["chain"]] == [True]  # what was served is still shown


def test_ca_missing_from_bundle_exit_1(capsys: pytest.CaptureFixture[str], pki: Pki, pki_files: PkiFiles,
                                       tls_server: StartServer, tmp_path: Path) -> None:
    # The system store is never consulted: only the bundle's CAs (here the wrong one) count.
    server = tls_server("leaf")
    policy = write_policy(tmp_path, pki_files, [(pki.pins["leaf"], "primary"), (pki.pins["backup"], "backup")],
                          ca="rogue_root")
    code, obj, _ = run_json(capsys, policy, "--host", at(server))
    assert code == 1
    assert obj["servers"][0]["ca_validation"]["verified"] is False


def test_unreachable_server_is_not_a_pass(capsys: pytest.CaptureFixture[str], pki: Pki, pki_files: PkiFiles,
                                          tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    policy = write_policy(tmp_path, pki_files, [(pki.pins["leaf"], "primary"), (pki.pins["backup"], "backup")])
    code, obj, err = run_json(capsys, policy, "--host", f"{HOST}:{port}@127.0.0.1", "--timeout", "5")
    assert code == 1
    s = obj["servers"][0]
    assert (s["status"], s["would_connect"], s["fetch_error"]) == ("unreachable", None, "connection refused")
    assert "0 servers checked" in err and "1 unreachable" in err


def test_fetch_chain_unverified_returns_the_chain_verification_refuses(pki: Pki, pki_files: PkiFiles,
                                                                      tls_server: StartServer) -> None:
    # preflight fetches with verify=False: a chain the bundle's CAs refuse must still be seen.
    server = tls_server("rogue_leaf")
    target = HostTarget(HOST, server.port, "127.0.0.1")
    assert fetch_chain(target, timeout=10, verify=False) == pki.chain_der("rogue_leaf")
    with pytest.raises(FetchError) as info:
        fetch_chain(target, pki_files.cert("root"), timeout=10)
    assert "TLS validation failed" in info.value.reason and str(info.value).startswith(f"{target}: ")


# --- backups ----------------------------------------------------------------------------------------


def test_backup_pin_in_served_chain_warns(capsys: pytest.CaptureFixture[str], pki: Pki, pki_files: PkiFiles,
                                          tls_server: StartServer, tmp_path: Path) -> None:
    server = tls_server("leaf")
    policy = write_policy(tmp_path, pki_files, [(pki.pins["leaf"], "primary"), (pki.pins["intermediate"], "backup")])
    code, obj, err = run_json(capsys, policy, "--host", at(server))
    assert code == 0, err  # devices connect today: a warning, not a failure
    s = obj["servers"][0]
    assert s["status"] == "warning"
    assert {p["label"]: p["role"] for p in s["pins"]} == {"primary": "matched", "backup": "in chain"}
    messages = " | ".join(p["message"] for p in s["problems"])
    assert "pin 'backup' is in the served chain (depth 1): it is not a backup" in messages
    assert "every pin is a key of the served chain: no backup" in messages


def test_real_backup_outside_chain_gives_no_backup_warning(capsys: pytest.CaptureFixture[str], pki: Pki,
                                                           pki_files: PkiFiles, tls_server: StartServer,
                                                           tmp_path: Path) -> None:
    server = tls_server("leaf")
    policy = write_policy(tmp_path, pki_files, [(pki.pins["leaf"], None), (pki.pins["intermediate"], None),
                                                (pki.pins["backup"], None)])
    code, obj, err = run_json(capsys, policy, "--host", at(server))
    assert code == 0, err
    s = obj["servers"][0]
    assert [p["role"] for p in s["pins"]] == ["matched", "in chain", "backup"]
    assert not any("backup" in p["message"] for p in s["problems"])


# --- time ---------------------------------------------------------------------------------------


def test_now_past_expiry_with_fallback_exit_0(capsys: pytest.CaptureFixture[str], pki: Pki, pki_files: PkiFiles,
                                              tls_server: StartServer, tmp_path: Path) -> None:
    server = tls_server("leaf")
    expires = time.time() + 10 * DAY
    policy = write_policy(tmp_path, pki_files, [(pki.pins["leaf"], "primary"), (pki.pins["backup"], "backup")],
                          expires=expires, domain_extra='on_expiry = "fallback"')
    code, obj, err = run_json(capsys, policy, "--host", at(server), "--now", iso(expires + 10 * DAY))
    assert code == 0, err
    s = obj["servers"][0]
    assert s["verdict"]["reason"] == "expired_fallback" and s["verdict"]["expired"] is True
    assert s["rule"]["days_left"] < 0
    assert any("expired" in p["message"] and p["severity"] == "warning" for p in s["problems"])


def test_now_past_expiry_with_enforce_exit_1(capsys: pytest.CaptureFixture[str], pki: Pki, pki_files: PkiFiles,
                                             tls_server: StartServer, tmp_path: Path) -> None:
    server = tls_server("leaf")
    expires = time.time() + 10 * DAY
    policy = write_policy(tmp_path, pki_files, [(pki.pins["leaf"], "primary"), (pki.pins["backup"], "backup")],
                          expires=expires, domain_extra='on_expiry = "enforce"')
    code, obj, err = run_json(capsys, policy, "--host", at(server), "--now", iso(expires + 10 * DAY))
    assert code == 1
    s = obj["servers"][0]
    # The pins still match, so devices connect that day; but they enforce pins nobody renews.
    assert s["verdict"]["reason"] == "matched" and s["would_connect"] is True
    assert s["status"] == "error"
    assert any(p["severity"] == "error" and "on_expiry = enforce" in p["message"] for p in s["problems"])
    assert "1 with errors" in err


def test_now_after_leaf_expiry_locks_out(capsys: pytest.CaptureFixture[str], pki: Pki, pki_files: PkiFiles,
                                         tls_server: StartServer, tmp_path: Path) -> None:
    # "Will devices still connect on that date?" No: the server's certificate has expired by then.
    server = tls_server("leaf")
    policy = write_policy(tmp_path, pki_files, [(pki.pins["leaf"], "primary"), (pki.pins["backup"], "backup")],
                          expires=time.time() + 2000 * DAY)
    later = pki.leaf.cert.not_valid_after_utc.timestamp() + DAY
    code, obj, _ = run_json(capsys, policy, "--host", at(server), "--now", iso(later))
    assert code == 1
    assert obj["servers"][0]["ca_validation"]["verified"] is False


def test_headroom_warnings(capsys: pytest.CaptureFixture[str], pki: Pki, pki_files: PkiFiles,
                           tls_server: StartServer, tmp_path: Path) -> None:
    server = tls_server("leaf")
    policy = write_policy(tmp_path, pki_files, [(pki.pins["leaf"], "primary"), (pki.pins["backup"], "backup")],
                          expires=time.time() + 10 * DAY)
    code, obj, err = run_json(capsys, policy, "--host", at(server))
    assert code == 0, err
    assert any("the pins expire on" in p["message"] for p in obj["servers"][0]["problems"])
    # Pins that outlive the CA certificates: the CA's expiry is the real deadline.
    policy = write_policy(tmp_path, pki_files, [(pki.pins["leaf"], "primary"), (pki.pins["backup"], "backup")],
                          expires=time.time() + 4000 * DAY)
    code, obj, err = run_json(capsys, policy, "--host", at(server))
    assert code == 0, err
    assert any("fleetpin Test Root CA expires on" in p["message"] and "before the pins" in p["message"]
               for p in obj["servers"][0]["problems"])


# --- which servers -------------------------------------------------------------------------------


def test_wildcard_without_host_reported_not_checked(capsys: pytest.CaptureFixture[str], pki: Pki,
                                                    pki_files: PkiFiles, tls_server: StartServer,
                                                    tmp_path: Path) -> None:
    server = tls_server("leaf")
    more = f'[[domain]]\nhost = "*.fleet.test"\npins = ["{pki.pins["leaf"]}", "{pki.pins["backup"]}"]\n'
    policy = write_policy(tmp_path, pki_files, [(pki.pins["leaf"], "primary"), (pki.pins["backup"], "backup")],
                          more=more)
    code, obj, err = run_json(capsys, policy, "--host", at(server))
    assert code == 0, err
    assert obj["not_checked"] == [{"domain": "*.fleet.test", "reason": "not checked: give --host x.fleet.test "
                                   "(a name the wildcard covers, [:PORT][@ADDRESS] as needed)"}]
    assert "1 not checked" in obj["summary"]["line"]
    code, out, _ = run(capsys, policy, "--host", at(server))
    assert "*.fleet.test: not checked: give --host x.fleet.test" in out


def test_wildcard_checked_with_host(capsys: pytest.CaptureFixture[str], tls_server: StartServer,
                                    tmp_path: Path) -> None:
    from fleetpin.sim.pki import make_pki

    wild = make_pki("api.fleet.test")
    files = wild.write(tmp_path / "pki")
    server = tls_server("leaf", wild)
    policy = write_policy(tmp_path, files, [(wild.pins["leaf"], "primary"), (wild.pins["backup"], "backup")],
                          host="*.fleet.test")
    code, obj, err = run_json(capsys, policy, "--host", at(server, "api.fleet.test"))
    assert code == 0, err
    assert obj["not_checked"] == []
    s = obj["servers"][0]
    assert (s["domain"], s["host"], s["verdict"]["reason"]) == ("*.fleet.test", "api.fleet.test", "matched")
    assert server.server_names == ["api.fleet.test"]


def test_plan_defaults_overrides_and_uncovered(pki: Pki, pki_files: PkiFiles, tmp_path: Path) -> None:
    more = ('[[domain]]\nhost = "other.test"\npins = ["%s"]\n[[domain]]\nhost = "**.fleet.test"\npins = ["%s"]\n'
            % (pki.pins["leaf"], pki.pins["leaf"]))
    view = load_view(write_policy(tmp_path, pki_files, [(pki.pins["leaf"], None)], more=more))
    given = [HostTarget(HOST, 8443, "127.0.0.1"), HostTarget(HOST, 8443, "127.0.0.2"),
             HostTarget("nowhere.test", 443, "nowhere.test")]
    servers, not_checked = preflight.plan(view, given)
    got = [(s.target.host, s.target.port, s.target.connect, s.rule.host if s.rule else None, s.given) for s in servers]
    assert got == [
        (HOST, 8443, "127.0.0.1", HOST, True),  # --host for the same name replaces HOST:443 ...
        (HOST, 8443, "127.0.0.2", HOST, True),  # ... and several servers of one name are each checked
        ("other.test", 443, "other.test", "other.test", False),  # exact domain: port 443 by default
        ("nowhere.test", 443, "nowhere.test", None, True),  # no domain covers it: checked, listed last
    ]
    assert [n.domain for n in not_checked] == ["**.fleet.test"]


def test_plan_subdomain_host_does_not_replace_the_domain_itself(pki: Pki, pki_files: PkiFiles,
                                                                tmp_path: Path) -> None:
    view = load_view(write_policy(tmp_path, pki_files, [(pki.pins["leaf"], None)],
                                  domain_extra="include_subdomains = true"))
    servers, _ = preflight.plan(view, [HostTarget("eu." + HOST, 443, "127.0.0.1")])
    assert [(s.target.host, s.given) for s in servers] == [(HOST, False), ("eu." + HOST, True)]


def test_uncovered_host_is_checked_against_unpinned(capsys: pytest.CaptureFixture[str], pki: Pki,
                                                    pki_files: PkiFiles, tls_server: StartServer,
                                                    tmp_path: Path) -> None:
    server = tls_server("leaf")
    policy = write_policy(tmp_path, pki_files, [(pki.pins["leaf"], None)], host="other.test",
                          defaults='unpinned = "block"')
    # other.test's own server (port 443 by default) is pointed at a dead loopback port: tests
    # connect to 127.0.0.1 only.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, obj, _ = run_json(capsys, policy, "--host", at(server), "--host", f"other.test:{port}@127.0.0.1")
    assert code == 1
    by_host = {s["host"]: s for s in obj["servers"]}
    assert by_host[HOST]["domain"] is None
    assert by_host[HOST]["verdict"]["reason"] == "no_policy_blocked" and by_host[HOST]["status"] == "lockout"


# --- signed bundles, usage ----------------------------------------------------------------------


def _signed_bundle(tmp_path: Path, policy: Path) -> tuple[Path, Path, Path]:
    """bundle.fpb signed by key a; trust.json = {a, b}; other.json = {c, d} (not the signer)."""
    ks = [ec.generate_private_key(ec.SECP256R1()) for _ in range(4)]
    infos = [keys.public_info(k.public_key(), f"k{i}", "production") for i, k in enumerate(ks)]
    data = build_bundle(load_bundle_source(policy), fleet="acme", version=3, issued=int(time.time()) - 60,
                        development=False, signers=[LocalKeySigner(ks[0], infos[0])])
    bundle, trust, other = tmp_path / "bundle.fpb", tmp_path / "trust.json", tmp_path / "other.json"
    bundle.write_bytes(data)
    trust.write_bytes(canonical_json(keys.signer_set_obj(infos[:2])))
    other.write_bytes(canonical_json(keys.signer_set_obj(infos[2:])))
    return bundle, trust, other


def test_signed_bundle_with_trust(capsys: pytest.CaptureFixture[str], pki: Pki, pki_files: PkiFiles,
                                  tls_server: StartServer, tmp_path: Path) -> None:
    server = tls_server("leaf")
    policy = write_policy(tmp_path, pki_files, [(pki.pins["leaf"], "primary"), (pki.pins["backup"], "backup")])
    bundle, trust, other = _signed_bundle(tmp_path, policy)
    code, obj, err = run_json(capsys, bundle, "--host", at(server), "--trust", trust)
    assert code == 0, err
    assert obj["signatures"]["verified"] is True
    assert obj["servers"][0]["verdict"]["reason"] == "matched"
    code, out, err = run(capsys, bundle, "--host", at(server), "--trust", other)
    assert code == 1 and "signatures do not verify" in err
    assert server.server_names == [HOST]  # a bundle that fails its signature check connects nowhere


def test_usage_errors(capsys: pytest.CaptureFixture[str], pki: Pki, pki_files: PkiFiles, tmp_path: Path) -> None:
    policy = write_policy(tmp_path, pki_files, [(pki.pins["leaf"], None)])
    assert run(capsys, policy, "--now", "unknown")[0] == 2
    assert run(capsys, policy, "--now", "next tuesday")[0] == 2
    assert run(capsys, policy, "--host", "a:b:c")[0] == 2
    assert run(capsys, tmp_path / "missing.fpb")[0] == 2
    code, _, err = run(capsys, policy, "--trust", policy)
    assert code == 2 and "policy file, not a signed bundle" in err


def test_unreadable_served_certificate_is_not_a_pass(pki: Pki, pki_files: PkiFiles, tmp_path: Path) -> None:
    view = load_view(write_policy(tmp_path, pki_files, [(pki.pins["leaf"], None)]))
    report = preflight.run(view, [HostTarget(HOST, 1, "127.0.0.1")], int(time.time()),
                           fetch=lambda target, timeout: [b"\x30\x03abc"])
    [r] = report.results
    assert r.status == "unreachable" and r.fetch_error is not None and "cannot parse" in r.fetch_error
    assert report.failed


def test_record_puts_the_lockouts_in_the_registry_and_a_clean_run_clears_them(
        capsys: pytest.CaptureFixture[str], pki: Pki, pki_files: PkiFiles, tls_server: StartServer, tmp_path: Path) -> None:
    import hashlib

    from fleetpin.field.fleet import fleet_status
    from fleetpin.line.registry import Registry

    server = tls_server("leaf")
    reg = f"sqlite:///{tmp_path / 'reg.sqlite'}"
    bad = write_policy(tmp_path, pki_files, [(pki.pins["backup"], "backup"), (pki.pins["rogue_leaf"], "old")])
    bundle, _, _ = _signed_bundle(tmp_path, bad)
    digest = hashlib.sha256(bundle.read_bytes()).hexdigest()
    code, obj, _ = run_json(capsys, bundle, "--host", at(server), "--record", "--registry", reg)
    assert code == 1 and obj["recorded"]["lockouts"] == 1 and obj["recorded"]["bundle_sha256"] == digest
    with Registry(reg) as r:
        [lk] = fleet_status(r)["lockouts"]
    assert (lk["source"], lk["bundle_sha256"], lk["bundle_version"], lk["host"], lk["port"]) == ("preflight", digest, 3, HOST, server.port)
    assert lk["reason"].startswith("mismatch")
    # the same bundle checked again once the server is fixed (here: served what it pins): cleared
    good_server = tls_server("backup_leaf")
    code, out, _ = run(capsys, bundle, "--host", at(good_server), "--record", "--registry", reg)
    assert code == 0 and "recorded in" in out
    with Registry(reg) as r:
        assert fleet_status(r)["lockouts"] == []
    # a policy has no digest devices could report: --record refuses it before connecting
    code, _, err = run(capsys, bad, "--host", at(server), "--record", "--registry", reg)
    assert code == 2 and "--record needs the built bundle" in err
