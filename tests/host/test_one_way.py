"""One way to say each thing, in every command: the passphrase is --passphrase-file or
$FLEETPIN_KEY_PASSPHRASE (and no prompt without a terminal); times are ISO 8601 or @SECONDS in,
ISO 8601 out; every command that prints data has --json."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fleetpin.sim.pki import Pki, PkiFiles

PASS = "correct horse battery"
FLEET = "acme"
T0 = 1777636800  # 2026-05-01T12:00:00Z
ISO0 = "2026-05-01T12:00:00Z"
_TODAY = dt.datetime.now(dt.timezone.utc).date()
EXPIRES = str(_TODAY + dt.timedelta(days=100))  # pins valid now (lint would refuse expired ones)
LATER = str(_TODAY + dt.timedelta(days=200))


class Kit:
    """Keys, a signer set, a policy and a bundle, made through the CLI."""

    def __init__(self, fleetpin: Callable[..., Any], root: Path, pki: Pki, pki_files: PkiFiles) -> None:
        self.fleetpin, self.root = fleetpin, root
        env = {"FLEETPIN_KEY_PASSPHRASE": PASS}
        for name in ("ops", "vault"):
            assert fleetpin("key", "new", "--signing", "--id", name, "-o", root / "keys", env=env).exit_code == 0
        self.key = root / "keys" / "ops.key.pem"
        self.signers = root / "signers.json"
        assert fleetpin("key", "signers", root / "keys/ops.pub.json", root / "keys/vault.pub.json",
                        "-o", self.signers).exit_code == 0
        self.policy = root / "policy.toml"
        self.write_policy(EXPIRES)
        self.pki, self.pki_files = pki, pki_files

    def write_policy(self, expires: str, path: Path | None = None) -> Path:
        from fleetpin.sim.pki import make_pki

        pki = make_pki("device.test")
        path = path or self.policy
        root = self.root / "root.pem"
        root.write_bytes(pki.root.pem)
        path.write_text(f'[defaults]\nexpires = {expires}\n\n[[domain]]\nhost = "device.test"\n'
                        f'pins = [{{ pin = "{pki.pins["leaf"]}", label = "primary" }}, '
                        f'{{ pin = "{pki.pins["backup"]}", label = "backup" }}]\n\n[bundle]\nca_certs = ["root.pem"]\n')
        return path

    def build(self, out: str, *extra: str | Path, policy: Path | None = None, version: int = 1) -> Any:
        return self.fleetpin("bundle", "build", policy or self.policy, "--fleet", FLEET, "--version", str(version),
                             "--key", self.key, "-o", self.root / out, "--allow-lint-errors", *extra,
                             env={"FLEETPIN_KEY_PASSPHRASE": PASS})


@pytest.fixture
def kit(fleetpin: Callable[..., Any], tmp_path: Path, pki: Pki, pki_files: PkiFiles) -> Kit:
    return Kit(fleetpin, tmp_path, pki, pki_files)


# --- the passphrase ------------------------------------------------------------------------------------


def test_pin_takes_the_passphrase_as_every_command_does(fleetpin: Callable[..., Any], tmp_path: Path) -> None:
    result = fleetpin("pin", "--password", "x", tmp_path / "k.pem")
    assert result.exit_code == 2 and "No such option '--password'" in result.stderr
    assert "--passphrase-file" in fleetpin("pin", "--help").stdout


@pytest.mark.parametrize("command", ["key new", "bundle build", "pin"])
def test_no_prompt_without_a_terminal(kit: Kit, command: str) -> None:
    # stdin is not a terminal here (as in a script or CI): a prompt would read the script's next
    # input line, or hang; instead the error says which flag to use
    encrypted = kit.root / "tls.key.pem"
    assert kit.fleetpin("key", "new", "--backup-pin", "--id", "tls", "-o", kit.root,
                        env={"FLEETPIN_KEY_PASSPHRASE": PASS}).exit_code == 0
    args = {
        "key new": ["key", "new", "--signing", "--id", "third", "-o", kit.root / "keys2"],
        "bundle build": ["bundle", "build", kit.policy, "--fleet", FLEET, "--version", "1", "--key", kit.key,
                         "-o", kit.root / "b.fpb"],
        "pin": ["pin", encrypted],
    }[command]
    result = kit.fleetpin(*args, input="typed ahead\n", env={"FLEETPIN_KEY_PASSPHRASE": None})
    assert result.exit_code == 2, result.stderr
    assert "no terminal" in result.stderr
    assert "--passphrase-file" in result.stderr and "FLEETPIN_KEY_PASSPHRASE" in result.stderr
    assert not (kit.root / "b.fpb").exists() and not (kit.root / "keys2").exists()


def test_passphrase_file_works_for_every_command(kit: Kit) -> None:
    secret = kit.root / "secret.txt"
    secret.write_text(PASS + "\n")
    env = {"FLEETPIN_KEY_PASSPHRASE": None}
    assert kit.fleetpin("key", "new", "--backup-pin", "--id", "tls", "-o", kit.root, "--passphrase-file", secret,
                        env=env).exit_code == 0
    assert kit.fleetpin("pin", kit.root / "tls.key.pem", "--passphrase-file", secret, env=env).exit_code == 0
    result = kit.fleetpin("bundle", "build", kit.policy, "--fleet", FLEET, "--version", "1", "--key", kit.key,
                          "-o", kit.root / "b.fpb", "--passphrase-file", secret, env=env)
    assert result.exit_code == 0, result.stderr


def test_a_wrong_passphrase_says_wrong_passphrase(kit: Kit) -> None:
    secret = kit.root / "wrong.txt"
    secret.write_text("not the passphrase\n")
    result = kit.fleetpin("bundle", "build", kit.policy, "--fleet", FLEET, "--version", "1", "--key", kit.key,
                          "-o", kit.root / "b.fpb", "--passphrase-file", secret)
    assert result.exit_code == 1 and f"{kit.key}: wrong passphrase" in result.stderr
    plain_key = kit.root / "keys" / "plain.key.pem"  # not encrypted: not a passphrase problem
    plain_key.write_bytes(kit.pki.leaf.key_pem)
    (kit.root / "keys" / "plain.pub.json").write_text((kit.root / "keys" / "ops.pub.json").read_text())
    result = kit.fleetpin("bundle", "build", kit.policy, "--fleet", FLEET, "--version", "1", "--key", plain_key,
                          "-o", kit.root / "b.fpb", "--passphrase-file", secret)
    assert result.exit_code == 2 and "not an encrypted PEM private key" in result.stderr
    assert "wrong passphrase" not in result.stderr


# --- times: ISO 8601 or @SECONDS in, ISO 8601 out -------------------------------------------------------


def test_bundle_verify_takes_now_and_time_floor_as_times(kit: Kit) -> None:
    assert kit.build("b.fpb", "--issued", ISO0).exit_code == 0
    verify = ["bundle", "verify", kit.root / "b.fpb", "--trust", kit.signers, "--json"]
    results = []
    for now in (ISO0, f"@{T0}", "2026-05-01T14:00:00+02:00"):
        result = kit.fleetpin(*verify, "--now", now)
        assert result.exit_code == 0, result.stderr
        results.append(json.loads(result.stdout))
    assert results[0] == results[1] == results[2] and results[0]["issued"] == T0
    early = kit.fleetpin(*verify, "--now", "2026-04-30")  # a day before the issue time: from the future
    assert early.exit_code == 1 and json.loads(early.stdout)["error"] == "BundleFromFuture"
    floor = kit.fleetpin(*verify, "--now", "unknown", "--time-floor", "2026-05-01T11:59:00Z")
    assert floor.exit_code == 0, floor.stderr
    bare = kit.fleetpin(*verify, "--now", str(T0))
    assert bare.exit_code == 2 and f"@{T0}" in bare.stderr  # the hint shows the way to write it
    assert kit.fleetpin(*verify, "--time-floor", "yesterday").exit_code == 2


def test_bundle_build_issued_takes_the_same_times(kit: Kit) -> None:
    assert kit.build("a.fpb", "--issued", ISO0).exit_code == 0
    assert kit.build("b.fpb", "--issued", f"@{T0}").exit_code == 0
    result = kit.fleetpin("bundle", "inspect", kit.root / "a.fpb", "--json", "--now", f"@{T0}")
    header = json.loads(result.stdout)["header"]
    assert header["issued"] == T0 and header["issued_iso"] == ISO0
    assert (kit.root / "a.fpb").read_bytes()[:200] == (kit.root / "b.fpb").read_bytes()[:200]


@pytest.mark.parametrize("command", ["check", "bundle inspect", "bundle lint", "bundle diff", "preflight"])
def test_now_is_the_same_everywhere(kit: Kit, command: str) -> None:
    args = {
        "check": ["check", "--policy", kit.policy, "--host", "device.test", kit.pki_files.chain("leaf"), "--json"],
        "bundle inspect": ["bundle", "inspect", kit.policy, "--json"],
        "bundle lint": ["bundle", "lint", kit.policy, "--json"],
        "bundle diff": ["bundle", "diff", kit.policy, kit.policy, "--json"],
        "preflight": ["preflight", kit.policy, "--host", "device.test:1@127.0.0.1", "--json", "--timeout", "1"],
    }[command]
    now = int(dt.datetime.now(dt.timezone.utc).timestamp())
    iso = dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    a = kit.fleetpin(*args, "--now", iso)
    b = kit.fleetpin(*args, "--now", f"@{now}")
    assert a.exit_code == b.exit_code and a.exit_code != 2, a.stderr
    assert a.stdout == b.stdout
    bad = kit.fleetpin(*args, "--now", str(now))
    assert bad.exit_code == 2 and f"@{now}" in bad.stderr


def test_times_in_bundle_diff_are_iso_8601(kit: Kit) -> None:
    later = kit.write_policy(LATER, kit.root / "later.toml")
    assert kit.build("a.fpb", "--issued", ISO0).exit_code == 0
    assert kit.build("b.fpb", "--issued", "@1777723200", policy=later, version=2).exit_code == 0
    result = kit.fleetpin("bundle", "diff", kit.root / "a.fpb", kit.root / "b.fpb", "--json", "--now", ISO0)
    d = json.loads(result.stdout)
    assert d["header"]["issued"] == [ISO0, "2026-05-02T12:00:00Z"]
    assert d["domains"]["changed"][0]["changes"]["expires"] == [f"{EXPIRES}T00:00:00Z", f"{LATER}T00:00:00Z"]
    assert d["now"] == ISO0
    text = kit.fleetpin("bundle", "diff", kit.root / "a.fpb", kit.root / "b.fpb", "--now", ISO0).stdout
    assert f"issued: {ISO0} -> 2026-05-02T12:00:00Z" in text
    assert f"expires: {EXPIRES}T00:00:00Z -> {LATER}T00:00:00Z" in text


# --- --json on every command that prints data -------------------------------------------------------------


def test_key_signers_and_key_import_json(kit: Kit) -> None:
    result = kit.fleetpin("key", "signers", kit.root / "keys/ops.pub.json", kit.root / "keys/vault.pub.json",
                          "-o", kit.root / "s2.json", "--json")
    assert result.exit_code == 0
    obj = json.loads(result.stdout)
    ids = [json.loads((kit.root / f"keys/{n}.pub.json").read_text())["key_id"] for n in ("ops", "vault")]
    assert obj == {"file": str(kit.root / "s2.json"), "channel": "production", "threshold": 1, "rotation_threshold": 2,
                   "signers": [{"id": ids[0], "name": "ops"}, {"id": ids[1], "name": "vault"}]}
    pub = kit.root / "hsm.pem"
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pub.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    result = kit.fleetpin("key", "import", pub, "--id", "hsm", "--role", "production", "-o", kit.root / "k", "--json")
    assert result.exit_code == 0, result.stderr
    obj = json.loads(result.stdout)
    assert obj["name"] == "hsm" and obj["role"] == "production" and len(obj["key_id"]) == 16
    assert obj["public_info"] == str(kit.root / "k" / "hsm.pub.json")


def test_export_and_import_json(kit: Kit) -> None:
    result = kit.fleetpin("export", "okhttp", kit.policy, "--json")
    assert result.exit_code == 0, result.stderr
    obj = json.loads(result.stdout)
    assert obj["format"] == "okhttp" and obj["out"] is None and "CertificatePinner" in obj["text"]
    assert isinstance(obj["warnings"], list) and result.stderr == ""
    xml = kit.root / "nsc.xml"
    result = kit.fleetpin("export", "android", kit.policy, "-o", xml, "--json")
    assert json.loads(result.stdout)["out"] == str(xml) and json.loads(result.stdout)["text"] is None
    result = kit.fleetpin("import", "android", xml, "--json")
    assert result.exit_code == 0, result.stderr
    obj = json.loads(result.stdout)
    assert obj["format"] == "android" and "[[domain]]" in obj["policy"] and isinstance(obj["notes"], list)
    result = kit.fleetpin("import", "android", xml, "--json", "-o", kit.root / "p.toml")
    assert json.loads(result.stdout)["policy"] is None and (kit.root / "p.toml").exists()
