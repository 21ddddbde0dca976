"""`fleetpin bundle inspect` and `fleetpin bundle diff` on bundles built with the CLI."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fleetpin.sim.pki import Pki, PkiFiles

PASS = "correct horse battery"
ENV = {"FLEETPIN_KEY_PASSPHRASE": PASS}
NOW = int(time.time())
DAY = 86400


def _date(days: int) -> str:
    return dt.datetime.fromtimestamp(NOW + days * DAY, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _domain(host: str, pins: list[tuple[str, str]], extra: str = "") -> str:
    entries = ", ".join(f'{{ pin = "{p}", label = "{label}" }}' for p, label in pins)
    return f'[[domain]]\nhost = "{host}"\n{extra}\npins = [{entries}]\n'


@dataclass
class Built:
    root: Path
    old_policy: Path
    new_policy: Path
    old: Path
    new: Path
    signers: Path
    other_signers: Path


@pytest.fixture
def built(tmp_path: Path, pki: Pki, pki_files: PkiFiles, fleetpin: Callable[..., Any]) -> Built:
    keys = tmp_path / "keys"
    for name in ("everyday", "backup", "next", "other1", "other2"):
        assert fleetpin("key", "new", "--signing", "--id", name, "-o", keys, env=ENV).exit_code == 0
    signers, other, rotated = tmp_path / "signers.json", tmp_path / "other.json", tmp_path / "rotated.json"
    for out, names in ((signers, ("everyday", "backup")), (other, ("other1", "other2")), (rotated, ("next", "backup"))):
        assert fleetpin("key", "signers", *[keys / f"{n}.pub.json" for n in names], "-o", out).exit_code == 0
    leaf, backup = (pki.pins["leaf"], "primary"), (pki.pins["backup"], "backup")
    old_policy = tmp_path / "old.toml"
    old_policy.write_text(
        f"[defaults]\nexpires = {_date(300)}\n\n"
        + _domain("device.test", [leaf, backup])
        + _domain("report.test", [leaf, backup], "enforce = false")
        + f'\n[bundle]\nca_certs = ["{pki_files.cert("root")}"]\n\n[report]\nmax_entries = 20\n')
    new_policy = tmp_path / "new.toml"
    new_policy.write_text(
        f"[defaults]\nexpires = {_date(300)}\n\n"
        + _domain("device.test", [backup, (pki.pins["rogue_leaf"], "next")], f"expires = {_date(200)}")
        + _domain("report.test", [leaf, backup])
        + _domain("new.test", [leaf, backup])
        + f'\n[bundle]\nca_certs = ["{pki_files.cert("intermediate")}"]\n')
    old, new = tmp_path / "v1.fpb", tmp_path / "v2.fpb"
    backup_key = ("--key", keys / "backup.key.pem")  # a signer-set change needs both keys of the set
    for policy, out, version, extra in ((old_policy, old, 1, ()),
                                        (new_policy, new, 2, ("--new-signers", rotated, *backup_key))):
        result = fleetpin("bundle", "build", policy, "--fleet", "acme", "--version", str(version),
                          "--key", keys / "everyday.key.pem", "-o", out, *extra, env=ENV)
        assert result.exit_code == 0, result.stderr
    return Built(tmp_path, old_policy, new_policy, old, new, signers, other)


# --- inspect ---------------------------------------------------------------------------------------


def test_inspect_json_shape(built: Built, fleetpin: Callable[..., Any], pki: Pki) -> None:
    result = fleetpin("bundle", "inspect", built.old, "--json")
    assert result.exit_code == 0, result.stderr
    obj = json.loads(result.stdout)
    assert set(obj) == {"file", "kind", "signatures", "header", "unpinned", "clock_lead", "domains", "ca_certs", "report",
                        "report_defaults", "signers", "now"}
    assert obj["kind"] == "bundle" and obj["signatures"]["verified"] is False
    assert "signatures not verified" in obj["signatures"]["status"]
    h = obj["header"]
    assert (h["format"], h["fleet"], h["version"], h["channel"]) == (1, "acme", 1, "production")
    assert len(h["key_ids"]) == 1 and len(h["digest"]) == 64 and h["size"] == built.old.stat().st_size
    d = obj["domains"][0]
    assert set(d) == {"host", "include_subdomains", "enforce", "mode", "expires", "expires_at", "days_left",
                      "on_expiry", "pins"}
    assert d["host"] == "device.test" and d["mode"] == "enforce" and d["days_left"] in (299, 300)
    assert d["pins"] == [{"pin": "sha256/" + pki.pins["leaf"], "label": "primary"},
                         {"pin": "sha256/" + pki.pins["backup"], "label": "backup"}]
    assert obj["domains"][1]["mode"] == "report-only"
    assert obj["ca_certs"] == [{"subject": pki.root.cert.subject.rfc4514_string(), "pin": "sha256/" + pki.pins["root"],
                                "sha256": obj["ca_certs"][0]["sha256"], "expires": obj["ca_certs"][0]["expires"],
                                "expires_at": int(pki.root.cert.not_valid_after_utc.timestamp()),
                                "days_left": obj["ca_certs"][0]["days_left"]}]
    assert obj["report"] == {"enabled": True, "max_entries": 20, "max_bytes": 4096} and not obj["report_defaults"]
    assert obj["signers"] is None


def test_inspect_human_shows_rotation_and_unverified(built: Built, fleetpin: Callable[..., Any]) -> None:
    result = fleetpin("bundle", "inspect", built.new)
    assert result.exit_code == 0
    assert "signatures not verified" in result.stdout and "signer-set rotation" in result.stdout
    assert "new.test  enforce" in result.stdout and "fleetpin Test Intermediate CA" in result.stdout


def test_inspect_verifies_with_trust(built: Built, fleetpin: Callable[..., Any]) -> None:
    result = fleetpin("bundle", "inspect", built.old, "--trust", built.signers, "--json")
    assert result.exit_code == 0
    sig = json.loads(result.stdout)["signatures"]
    assert sig["verified"] is True and [s["name"] for s in sig["signed_by"]] == ["everyday"]
    result = fleetpin("bundle", "inspect", built.old, "--trust", built.other_signers)
    assert result.exit_code == 1 and "do not verify" in result.stderr
    assert fleetpin("bundle", "inspect", built.old_policy, "--trust", built.signers).exit_code == 2


def test_inspect_shows_the_threshold_and_who_signed(built: Built, fleetpin: Callable[..., Any]) -> None:
    # Issue 12, item 5: the rotation bundle needs 2 of the set, and says who gave them.
    result = fleetpin("bundle", "inspect", built.new, "--trust", built.signers)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "2 of its 2 keys signed, a signer-set change needs 2" in out, out
    assert "signed by everyday (" in out and "signed by backup (" in out
    assert "1 of 2 keys signs a bundle, 2 of 2 change the signer set" in out  # the new set's own rule
    sig = json.loads(fleetpin("bundle", "inspect", built.new, "--trust", built.signers, "--json").stdout)["signatures"]
    assert sig["needs"] == {"keys": 2, "why": "a signer-set change", "threshold": 1, "rotation_threshold": 2}
    unverified = fleetpin("bundle", "inspect", built.new).stdout
    assert "it changes the signer set: devices need their set's rotation threshold" in unverified


def test_inspect_refuses_bad_input(built: Built, fleetpin: Callable[..., Any]) -> None:
    damaged = built.root / "damaged.fpb"
    damaged.write_bytes(built.old.read_bytes()[:-10])
    result = fleetpin("bundle", "inspect", damaged)
    assert result.exit_code == 2 and "BundleMalformed" in result.stderr
    assert fleetpin("bundle", "inspect", built.root / "nope.fpb").exit_code == 2


# --- diff -------------------------------------------------------------------------------------------


def test_diff_two_bundles(built: Built, fleetpin: Callable[..., Any], pki: Pki, pki_files: PkiFiles) -> None:
    result = fleetpin("bundle", "diff", built.old, built.new, "--chain", pki_files.chain("leaf"), "--json")
    assert result.exit_code == 0, result.stderr
    d = json.loads(result.stdout)
    assert d["header"]["version"] == [1, 2]
    assert [r["host"] for r in d["domains"]["added"]] == ["new.test"] and d["domains"]["removed"] == []
    changed = {c["host"]: c for c in d["domains"]["changed"]}
    dev = changed["device.test"]
    assert dev["pins_removed"] == [{"pin": "sha256/" + pki.pins["leaf"], "label": "primary"}]
    assert dev["pins_added"] == [{"pin": "sha256/" + pki.pins["rogue_leaf"], "label": "next"}]
    assert dev["changes"]["expires"][1] < dev["changes"]["expires"][0]
    assert changed["report.test"]["changes"] == {"enforce": [False, True]}
    assert [c["subject"] for c in d["ca_certs"]["added"]] == [pki.intermediate.cert.subject.rfc4514_string()]
    assert [c["subject"] for c in d["ca_certs"]["removed"]] == [pki.root.cert.subject.rfc4514_string()]
    assert d["report"] == {"max_entries": [20, 32]}
    assert d["new_signers"] is not None
    kinds = {r["kind"] for r in d["refuse"]}
    assert kinds == {"pin_removed", "enforce", "expiry_earlier", "domain_added", "ca_removed", "signers", "chain"}
    chain = [c for c in d["chains"] if c["host"] == "device.test"][0]
    assert chain["old"] == {"allowed": True, "reason": "matched"}
    assert chain["new"] == {"allowed": False, "reason": "mismatch"}


def test_diff_without_changes_refuses_nothing_but_the_version(built: Built, fleetpin: Callable[..., Any]) -> None:
    result = fleetpin("bundle", "diff", built.old, built.old, "--json")
    assert result.exit_code == 0
    d = json.loads(result.stdout)
    assert d["domains"] == {"added": [], "removed": [], "changed": []} and d["header"] == {}
    assert [r["kind"] for r in d["refuse"]] == ["bundle"]  # same version: installed devices see a no-op


def test_diff_policy_files_human(built: Built, fleetpin: Callable[..., Any]) -> None:
    result = fleetpin("bundle", "diff", built.old_policy, built.new_policy)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "+ domain new.test" in out and "~ domain device.test" in out and "enforce: False -> True" in out
    assert "what devices will start to refuse:" in out and "report-only -> enforce" in out


def test_diff_bad_input_is_a_usage_error(built: Built, fleetpin: Callable[..., Any]) -> None:
    junk = built.root / "junk.toml"
    junk.write_text("this is = = not toml")
    assert fleetpin("bundle", "diff", built.old, junk).exit_code == 2
    assert fleetpin("bundle", "diff", built.old, built.root / "missing.fpb").exit_code == 2
