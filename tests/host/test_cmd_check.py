"""`fleetpin check`, driven through fleetpin.cli.main on generated PKIs (fleetpin.sim.pki)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from fleetpin.cli import main
from fleetpin.sim.pki import Pki, PkiFiles, make_pki

HOST = "device.test"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki(HOST)


@pytest.fixture
def files(pki: Pki, tmp_path: Path) -> PkiFiles:
    return pki.write(tmp_path / "pki")


def _iso(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def write_policy(tmp_path: Path, pins: list[str], host: str = HOST, extra: str = "",
                 expires: str = "2099-01-01", defaults: str = "") -> Path:
    entries = ", ".join(f'{{ pin = "sha256/{p}", label = "k{i}" }}' for i, p in enumerate(pins))
    path = tmp_path / "policy.toml"
    path.write_text(f'[defaults]\nexpires = {expires}\n{defaults}\n\n'
                    f'[[domain]]\nhost = "{host}"\n{extra}\npins = [{entries}]\n')
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["check", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code, out, err = run(capsys, *argv, "--json")
    return code, json.loads(out)


def test_leaf_pin_allows(capsys: pytest.CaptureFixture[str], pki: Pki, files: PkiFiles, tmp_path: Path) -> None:
    policy = write_policy(tmp_path, [pki.pins["leaf"], pki.pins["backup"]])
    code, out, err = run(capsys, "--policy", str(policy), "--host", HOST, str(files.chain("leaf")))
    assert code == 0, err
    assert "ALLOWED" in out and "matched" in out
    assert "device.test" in out and "fleetpin Test Intermediate CA" in out
    assert err == ""


def test_rogue_leaf_blocked(capsys: pytest.CaptureFixture[str], pki: Pki, files: PkiFiles, tmp_path: Path) -> None:
    policy = write_policy(tmp_path, [pki.pins["leaf"], pki.pins["backup"]])
    # CA validation against the rogue root passes; the pin check must not
    code, out, err = run(capsys, "--policy", str(policy), "--host", HOST, "--ca", str(files.cert("rogue_root")),
                         str(files.chain("rogue_leaf")))
    assert code == 1
    assert "BLOCKED" in out and "mismatch" in out
    assert "would refuse" in err and "next:" in err


def test_backup_leaf_allowed(capsys: pytest.CaptureFixture[str], pki: Pki, files: PkiFiles, tmp_path: Path) -> None:
    policy = write_policy(tmp_path, [pki.pins["leaf"], pki.pins["backup"]])
    code, obj = run_json(capsys, "--policy", str(policy), "--host", HOST, str(files.chain("backup_leaf")))
    assert code == 0
    assert obj["verdict"]["matched_pin"] == pki.pins["backup"]
    assert obj["verdict"]["matched_label"] == "k1"


def test_json_shape(capsys: pytest.CaptureFixture[str], pki: Pki, files: PkiFiles, tmp_path: Path) -> None:
    policy = write_policy(tmp_path, [pki.pins["intermediate"], pki.pins["backup"]])
    code, obj = run_json(capsys, "--policy", str(policy), "--host", "Device.Test.", "--ca", str(files.cert("root")),
                         "--now", _iso(pki.now), str(files.chain("leaf")))
    assert code == 0
    assert set(obj) == {"verdict", "certificates", "not_on_path", "verification", "now", "runtime"}
    assert obj["runtime"] == "device"
    assert obj["now"] == int(pki.now.timestamp())
    assert obj["verification"] == {"verified": True, "anchor": "--ca root.pem", "error": None}
    # the chain the device pins: built up to the anchor, which the server did not send
    assert [c["pin"] for c in obj["certificates"]] == [pki.pins["leaf"], pki.pins["intermediate"], pki.pins["root"]]
    assert [c["subject_cn"] for c in obj["certificates"]] == [HOST, "fleetpin Test Intermediate CA",
                                                              "fleetpin Test Root CA"]
    assert [c["sent"] for c in obj["certificates"]] == [True, True, False] and obj["not_on_path"] == []
    assert obj["certificates"][0]["not_after"] == int(pki.leaf.cert.not_valid_after_utc.timestamp())
    v = obj["verdict"]
    assert v["allowed"] is True and v["reason"] == "matched"
    assert v["host"] == "device.test"
    assert v["matched_depth"] == 1 and v["matched_pin"] == pki.pins["intermediate"]
    assert v["verified"] is True and v["clock_trusted"] is True and v["expired"] is False
    assert v["chain"] == [{"depth": 0, "pin": pki.pins["leaf"]}, {"depth": 1, "pin": pki.pins["intermediate"]},
                          {"depth": 2, "pin": pki.pins["root"]}]
    assert v["rule"]["host"] == HOST and v["rule"]["enforce"] is True
    assert [p["pin"] for p in v["rule"]["pins"]] == [pki.pins["intermediate"], pki.pins["backup"]]


def test_intermediate_pin_needs_a_verified_chain(capsys: pytest.CaptureFixture[str], pki: Pki, files: PkiFiles,
                                                 tmp_path: Path) -> None:
    policy = write_policy(tmp_path, [pki.pins["intermediate"], pki.pins["backup"]])
    args = ["--policy", str(policy), "--host", HOST]
    # no anchor: the chain file holds no root, so it is not verified, and the intermediate pin does not count
    code, obj = run_json(capsys, *args, str(files.chain("leaf")))
    assert code == 1 and obj["verdict"]["reason"] == "mismatch"
    assert obj["verification"]["verified"] is False and "--ca" in obj["verification"]["error"]
    # the chain's own self-signed root is taken as the anchor
    with_root = tmp_path / "with-root.pem"
    with_root.write_bytes(pki.chain_pem("leaf", with_root=True))
    code, obj = run_json(capsys, *args, str(with_root))
    assert code == 0 and obj["verdict"]["matched_depth"] == 1
    assert obj["verification"]["anchor"].startswith("the chain's own root")
    # --unverified forces the device's no-CA-validation mode
    code, out, err = run(capsys, *args, "--unverified", str(with_root))
    assert code == 1 and "not counted" in out


def test_wrong_host_leaf_is_not_verified(capsys: pytest.CaptureFixture[str], pki: Pki, files: PkiFiles,
                                         tmp_path: Path) -> None:
    # the wrong-host leaf carries the primary key: only CA validation can refuse it
    policy = write_policy(tmp_path, [pki.pins["intermediate"], pki.pins["backup"]])
    code, obj = run_json(capsys, "--policy", str(policy), "--host", HOST, "--ca", str(files.cert("root")),
                         str(files.chain("wrong_host_leaf")))
    assert code == 1
    assert obj["verification"]["verified"] is False and obj["verification"]["error"]


def test_report_only_mismatch_allowed(capsys: pytest.CaptureFixture[str], pki: Pki, files: PkiFiles,
                                      tmp_path: Path) -> None:
    policy = write_policy(tmp_path, [pki.pins["leaf"], pki.pins["backup"]], extra="enforce = false")
    args = ["--policy", str(policy), "--host", HOST, str(files.chain("rogue_leaf"))]
    code, obj = run_json(capsys, *args, "--ca", str(files.cert("rogue_root")))
    assert code == 0 and obj["verdict"]["reason"] == "report_only_mismatch"
    code, obj = run_json(capsys, *args)  # report-only never means no validation at all
    assert code == 1 and obj["verdict"]["reason"] == "unverified"


def test_expired_pins_fall_back_to_ca_validation(capsys: pytest.CaptureFixture[str], pki: Pki, files: PkiFiles,
                                                 tmp_path: Path) -> None:
    policy = write_policy(tmp_path, [pki.pins["backup"], pki.pins["intermediate"]],
                          expires=_iso(pki.now + dt.timedelta(days=10)))
    later = _iso(pki.now + dt.timedelta(days=20))  # pins expired, certificates still valid
    args = ["--policy", str(policy), "--host", HOST, "--now", later, str(files.chain("rogue_leaf"))]
    code, obj = run_json(capsys, *args, "--ca", str(files.cert("rogue_root")))
    assert code == 0
    assert obj["verdict"]["reason"] == "expired_fallback" and obj["verdict"]["expired"] is True


def test_unknown_clock(capsys: pytest.CaptureFixture[str], pki: Pki, files: PkiFiles, tmp_path: Path) -> None:
    policy = write_policy(tmp_path, [pki.pins["backup"], pki.pins["intermediate"]])
    code, obj = run_json(capsys, "--policy", str(policy), "--host", HOST, "--now", "unknown",
                         str(files.chain("rogue_leaf")))
    assert code == 1
    assert obj["now"] is None
    assert obj["verdict"]["reason"] == "clock_untrusted" and obj["verdict"]["clock_trusted"] is False


def test_no_rule_for_host(capsys: pytest.CaptureFixture[str], pki: Pki, files: PkiFiles, tmp_path: Path) -> None:
    policy = write_policy(tmp_path, [pki.pins["backup"], pki.pins["leaf"]], host="other.test")
    code, obj = run_json(capsys, "--policy", str(policy), "--host", HOST, "--ca", str(files.cert("root")),
                         str(files.chain("leaf")))
    assert code == 0 and obj["verdict"]["reason"] == "no_policy" and obj["verdict"]["rule"] is None
    policy = write_policy(tmp_path, [pki.pins["backup"], pki.pins["leaf"]], host="other.test",
                          defaults='unpinned = "block"')
    code, out, err = run(capsys, "--policy", str(policy), "--host", HOST, str(files.chain("leaf")))
    assert code == 1 and "no_policy_blocked" in out


def test_der_chain_same_as_pem(capsys: pytest.CaptureFixture[str], pki: Pki, files: PkiFiles, tmp_path: Path) -> None:
    policy = write_policy(tmp_path, [pki.pins["intermediate"], pki.pins["backup"]])
    der = tmp_path / "chain.der"
    der.write_bytes(b"".join(pki.chain_der("leaf")))  # concatenated DER certificates
    args = ["--policy", str(policy), "--host", HOST, "--ca", str(files.cert("root")), "--now", _iso(pki.now)]
    _, from_pem = run_json(capsys, *args, str(files.chain("leaf")))
    _, from_der = run_json(capsys, *args, str(der))
    assert from_der == from_pem
    assert from_der["verdict"]["matched_depth"] == 1


def test_bad_policy_exit_2_names_the_field(capsys: pytest.CaptureFixture[str], pki: Pki, files: PkiFiles,
                                           tmp_path: Path) -> None:
    policy = write_policy(tmp_path, [pki.pins["leaf"][:-2] + "==", pki.pins["backup"]])
    code, out, err = run(capsys, "--policy", str(policy), "--host", HOST, str(files.chain("leaf")))
    assert code == 2
    assert "policy.toml: domain[0].pins[0].pin: " in err
    assert out == ""


@pytest.mark.parametrize("content", [b"", b"hello", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
                                     b"\x30\x84\xff\xff\xff\xff", b"\x30\x03\x02\x01\x01"])
def test_bad_chain_file_exit_2(capsys: pytest.CaptureFixture[str], pki: Pki, tmp_path: Path, content: bytes) -> None:
    policy = write_policy(tmp_path, [pki.pins["leaf"], pki.pins["backup"]])
    chain = tmp_path / "chain.bin"
    chain.write_bytes(content)
    code, out, err = run(capsys, "--policy", str(policy), "--host", HOST, str(chain))
    assert code == 2
    assert "chain.bin" in err


@pytest.mark.parametrize("now", ["2026-05-01T12:00:00", "yesterday"])
def test_bad_now_exit_2(capsys: pytest.CaptureFixture[str], pki: Pki, files: PkiFiles, tmp_path: Path,
                        now: str) -> None:
    policy = write_policy(tmp_path, [pki.pins["leaf"], pki.pins["backup"]])
    code, out, err = run(capsys, "--policy", str(policy), "--host", HOST, "--now", now, str(files.chain("leaf")))
    assert code == 2 and "--now" in err


def test_micropython_runtime_agrees_with_device_runtime(capsys: pytest.CaptureFixture[str], pki: Pki,
                                                         files: PkiFiles, tmp_path: Path) -> None:
    policy = write_policy(tmp_path, [pki.pins["intermediate"], pki.pins["backup"]])
    with_root = tmp_path / "with-root.pem"
    with_root.write_bytes(pki.chain_pem("leaf", with_root=True))
    base = ["--policy", str(policy), "--host", HOST, "--now", _iso(pki.now)]
    cases = [
        [str(with_root)],  # intermediate pin, verified against the chain's root: matched at depth 1
        ["--unverified", str(with_root)],  # mismatch: the intermediate pin does not count
        ["--now", "unknown", str(files.chain("rogue_leaf"))],  # clock_untrusted
    ]
    for case in cases:
        code_dev, dev = run_json(capsys, *base, *case)
        code_vm, vm = run_json(capsys, *base, *case, "--runtime", "micropython")
        assert vm["runtime"] == "micropython"
        assert code_vm == code_dev
        assert vm["verdict"] == dev["verdict"], case


def test_a_pinned_leaf_under_a_ca_the_device_does_not_trust_is_refused(capsys: pytest.CaptureFixture[str], pki: Pki,
                                                                        files: PkiFiles, tmp_path: Path) -> None:
    """The rogue leaf's own key is pinned, but its chain does not validate against the CAs the
    device trusts: on the board the TLS handshake fails before any pin counts, so: refused."""
    policy = write_policy(tmp_path, [pki.pins["rogue_leaf"], pki.pins["backup"]])
    code, obj = run_json(capsys, "--policy", str(policy), "--host", HOST, "--ca", str(files.cert("root")),
                         str(files.chain("rogue_leaf")))
    assert code == 1
    assert obj["verdict"]["allowed"] is False and obj["verdict"]["reason"] == "tls_failed"
    assert obj["verdict"]["pin_verdict"] == "matched"  # what the pins alone would have said
    # the same CAs from the policy file's [bundle] ca_certs, as the device gets them
    (tmp_path / "root.pem").write_bytes(files.cert("root").read_bytes())
    policy.write_text(policy.read_text() + '\n[bundle]\nca_certs = ["root.pem"]\n')
    code, obj = run_json(capsys, "--policy", str(policy), "--host", HOST, str(files.chain("rogue_leaf")))
    assert code == 1 and obj["verdict"]["reason"] == "tls_failed"


def test_pins_are_matched_on_the_chain_the_device_builds(capsys: pytest.CaptureFixture[str], pki: Pki,
                                                         files: PkiFiles, tmp_path: Path) -> None:
    """A root the server does not send is pinned (the device builds up to it); a pinned CA sent
    off the signing path is not (the device never sees it). tests/host/test_chain_agreement.py
    runs a whole table of such chains through check, preflight, lint and the device."""
    root_pin = write_policy(tmp_path, [pki.pins["root"], pki.pins["backup"]])
    code, obj = run_json(capsys, "--policy", str(root_pin), "--host", HOST, "--ca", str(files.cert("root")),
                         str(files.chain("leaf")))
    assert code == 0 and obj["verdict"]["matched_depth"] == 2
    rogue_chain = tmp_path / "rogue-plus-intermediate.pem"
    rogue_chain.write_bytes(pki.rogue_leaf.pem + pki.intermediate.pem)
    cas = tmp_path / "cas.pem"
    cas.write_bytes(pki.root.pem + pki.rogue_root.pem)
    intermediate_pin = write_policy(tmp_path, [pki.pins["intermediate"], pki.pins["backup"]])
    code, out, err = run(capsys, "--policy", str(intermediate_pin), "--host", HOST, "--ca", str(cas), str(rogue_chain))
    assert code == 1 and "BLOCKED" in out and "mismatch" in out
    assert "not on the verified path" in out and "never seen by the device" in out
