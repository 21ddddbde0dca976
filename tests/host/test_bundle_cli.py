"""`fleetpin key` and `fleetpin bundle build|verify` end to end, through fleetpin.cli.main, and the
CLI-built bundle on the MicroPython VM (verification, every single-byte change, heap)."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetpin import cli
from fleetpin.vm import wasm

PASS = "correct horse battery"
FLEET = "acme-sensors"
PIN_A = "sha256/oSrp/5XXFZvdPgB/zusqKsySlTDQS6TMwLxYGO7OEfE="
PIN_B = "sha256/STrzqpZCtgNeLswOo+p7u+rUjwK0QieED7THMpfQnGs="


@pytest.fixture(autouse=True)
def commands(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETPIN_KEY_PASSPHRASE", PASS)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def ca_pem(name: str = "Test Root CA", ca: bool = True) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


POLICY = f"""
[defaults]
expires = 2099-01-01

[[domain]]
host = "api.example.com"
pins = [{{ pin = "{PIN_A}", label = "primary" }}, {{ pin = "{PIN_B}", label = "backup" }}]

[[domain]]
host = "**.telemetry.example.net"
on_expiry = "enforce"
pins = [{{ pin = "{PIN_A}", label = "primary" }}, {{ pin = "{PIN_B}", label = "backup" }}]

[bundle]
ca_certs = ["ca/root.pem"]

[report]
max_entries = 20
"""


class Setup:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.keys = root / "keys"
        self.policy = root / "policy.toml"
        self.signers = root / "signers.json"

    def key(self, name: str) -> str:
        return str(self.keys / f"{name}.key.pem")


@pytest.fixture
def setup(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Setup:
    s = Setup(tmp_path)
    (tmp_path / "ca").mkdir()
    (tmp_path / "ca" / "root.pem").write_bytes(ca_pem())
    s.policy.write_text(POLICY)
    for name, role in (("everyday", "production"), ("backup", "production"), ("next", "production"),
                       ("dev1", "development"), ("dev2", "development")):
        code, out, err = run(capsys, "key", "new", "--signing", "--id", name, "--role", role, "-o", str(s.keys))
        assert code == 0, err
    code, out, err = run(capsys, "key", "signers", str(s.keys / "everyday.pub.json"), str(s.keys / "backup.pub.json"),
                         "-o", str(s.signers))
    assert code == 0, err
    return s


def build(capsys: pytest.CaptureFixture[str], s: Setup, out: str, *extra: str, version: int = 5,
          keys: tuple[str, ...] = ("everyday",)) -> tuple[int, str, str]:
    args = ["bundle", "build", str(s.policy), "--fleet", FLEET, "--version", str(version), "-o", str(s.root / out)]
    for k in keys:
        args += ["--key", s.key(k)]
    return run(capsys, *args, *extra)


def verify(capsys: pytest.CaptureFixture[str], s: Setup, name: str, *extra: str,
           trust: Path | None = None) -> tuple[int, dict[str, Any], str]:
    code, out, err = run(capsys, "bundle", "verify", str(s.root / name), "--trust", str(trust or s.signers),
                         "--fleet", FLEET, "--json", *extra)
    return code, json.loads(out), err


# --- keys ------------------------------------------------------------------------------


def test_key_new_prints_id_and_role(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    meta = json.loads((setup.keys / "dev1.pub.json").read_text())
    assert meta["role"] == "development" and len(meta["key_id"]) == 16
    code, out, err = run(capsys, "key", "new", "--signing", "--id", "x", "-o", str(setup.keys), "--json")
    assert code == 0 and json.loads(out)["role"] == "production"


def test_key_new_needs_a_kind_and_an_id(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "key", "new", "-o", str(setup.keys))[0] == 2
    code, out, err = run(capsys, "key", "new", "--signing", "-o", str(setup.keys))
    assert code == 2 and "--id is required" in err


def test_key_new_backup_pin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "key", "new", "--backup-pin", "-o", str(tmp_path))
    assert code == 0, err
    pin = out.strip()
    assert pin.startswith("sha256/") and len(pin) == 7 + 44
    assert "offline" in err and (tmp_path / "backup-tls.key.pem").exists()


def test_signer_set_needs_two_keys_of_one_role(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "key", "signers", str(setup.keys / "everyday.pub.json"), "-o", str(setup.root / "x.json"))
    assert code == 2 and "at least 2" in err and "backup" in err
    code, out, err = run(capsys, "key", "signers", str(setup.keys / "everyday.pub.json"),
                         str(setup.keys / "dev1.pub.json"), "-o", str(setup.root / "x.json"))
    assert code == 2 and "one role" in err


# --- build and verify ------------------------------------------------------------------


def test_build_then_verify(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = build(capsys, setup, "b.fpb")
    assert code == 0, err
    assert "production bundle v5 for fleet acme-sensors" in out and "2 domains, 1 CA certificates" in out
    code, result, err = verify(capsys, setup, "b.fpb")
    assert code == 0, err
    assert result["result"] == "ok" and result["version"] == 5 and result["ca_certs"] == 1
    code, out, err = run(capsys, "bundle", "verify", str(setup.root / "b.fpb"), "--trust", str(setup.signers))
    assert code == 0 and "ok: production bundle v5" in out and "everyday" in out and "fleet not checked" in out


def test_verify_refusals_name_the_check(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    assert build(capsys, setup, "b.fpb")[0] == 0
    code, result, err = verify(capsys, setup, "b.fpb", "--installed-version", "5")
    assert code == 0 and result["result"] == "same_version"
    code, result, err = verify(capsys, setup, "b.fpb", "--installed-version", "9")
    assert code == 1 and result["error"] == "BundleRollback" and "BundleRollback" in err
    code, out, err = run(capsys, "bundle", "verify", str(setup.root / "b.fpb"), "--trust", str(setup.signers),
                         "--fleet", "other")
    assert code == 1 and "BundleWrongFleet" in err and "next:" in err
    code, result, err = verify(capsys, setup, "b.fpb", "--now", "@1000000000")
    assert code == 1 and result["error"] == "BundleFromFuture"
    data = bytearray((setup.root / "b.fpb").read_bytes())
    data[30] ^= 1
    (setup.root / "c.fpb").write_bytes(data)
    code, result, err = verify(capsys, setup, "c.fpb")
    assert code == 1 and result["error"] in ("BundleMalformed", "BundleSignatureError")


def test_backup_key_signs_alone_and_both_keys_together(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    assert build(capsys, setup, "b.fpb", keys=("backup",))[0] == 0
    assert verify(capsys, setup, "b.fpb")[1]["result"] == "ok"
    assert build(capsys, setup, "c.fpb", keys=("everyday", "backup"))[0] == 0
    assert len(verify(capsys, setup, "c.fpb")[1]["key_ids"]) == 2


def test_development_bundle_never_with_production_key(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = build(capsys, setup, "d.fpb", "--development")
    assert code == 1 and "production key" in err and not (setup.root / "d.fpb").exists()
    code, out, err = build(capsys, setup, "p.fpb", keys=("dev1",))
    assert code == 1 and "development key" in err
    # A development bundle properly signed: production devices refuse it, development ones take it.
    assert build(capsys, setup, "d.fpb", "--development", keys=("dev1",))[0] == 0
    code, result, err = verify(capsys, setup, "d.fpb")
    assert code == 1 and result["error"] == "BundleSignatureError" and "development bundle" in result["reason"]
    dev_set = setup.root / "dev.json"
    assert run(capsys, "key", "signers", str(setup.keys / "dev1.pub.json"), str(setup.keys / "dev2.pub.json"),
               "-o", str(dev_set))[0] == 0
    assert verify(capsys, setup, "d.fpb", trust=dev_set)[1]["channel"] == "development"


def test_key_rotation_through_the_cli(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    new_set = setup.root / "new.json"
    assert run(capsys, "key", "signers", str(setup.keys / "next.pub.json"), str(setup.keys / "backup.pub.json"),
               "-o", str(new_set))[0] == 0
    # Issue 12, item 5: changing the signer set takes two keys of the current set (its rotation
    # threshold, 2 unless the set says more): the everyday key alone is refused at build.
    code, out, err = build(capsys, setup, "v6.fpb", "--new-signers", str(new_set), version=6)
    assert code == 1 and "needs 2" in err and "signed by 1" in err, err
    assert not (setup.root / "v6.fpb").exists()
    code, out, err = build(capsys, setup, "v6.fpb", "--new-signers", str(new_set), version=6,
                           keys=("everyday", "backup"))
    assert code == 0 and "new signer set of 2 keys" in out, err
    code, result, err = verify(capsys, setup, "v6.fpb", "--installed-version", "5")
    assert code == 0 and len(result["new_signers"]) == 2
    assert build(capsys, setup, "v7.fpb", version=7, keys=("next",))[0] == 0
    assert verify(capsys, setup, "v7.fpb", "--installed-version", "6", trust=new_set)[0] == 0
    # Not yet rotated devices do not know the new key; the retired everyday key no longer counts.
    assert verify(capsys, setup, "v7.fpb", "--installed-version", "6")[1]["error"] == "BundleSignatureError"
    assert build(capsys, setup, "v7old.fpb", version=7)[0] == 0
    assert verify(capsys, setup, "v7old.fpb", "--installed-version", "6", trust=new_set)[1]["error"] == "BundleSignatureError"


def test_thresholds_are_stated_and_shown(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    # Issue 12, item 5: `key signers`, `bundle build`, `verify` and `inspect` say the threshold
    # and who signed.
    code, out, err = run(capsys, "key", "signers", str(setup.keys / "everyday.pub.json"),
                         str(setup.keys / "backup.pub.json"), "-o", str(setup.root / "s.json"))
    assert code == 0 and "1 of 2 keys signs a bundle, 2 of 2 change the signer set" in out, out
    t2 = setup.root / "t2.json"
    code, out, err = run(capsys, "key", "signers", *(str(setup.keys / f"{n}.pub.json") for n in ("everyday", "backup", "next")),
                         "--threshold", "2", "-o", str(t2))
    assert code == 0 and "2 of 3 keys sign a bundle, 2 of 3 change the signer set" in out, out
    assert json.loads(t2.read_text())["threshold"] == 2
    code, out, err = run(capsys, "key", "signers", str(setup.keys / "everyday.pub.json"),
                         str(setup.keys / "backup.pub.json"), "--rotation-threshold", "1", "-o", str(setup.root / "x.json"))
    assert code == 2 and "SignerThresholdInvalid" in err and not (setup.root / "x.json").exists()

    code, out, err = build(capsys, setup, "b.fpb", keys=("everyday", "backup"))
    assert code == 0 and "signed by everyday" in out and "backup" in out, out
    code, result, err = verify(capsys, setup, "b.fpb")
    assert result["signed_by"] == [{"key_id": k, "name": n} for k, n in zip(result["key_ids"], ("everyday", "backup"))]
    assert result["needs"] == {"keys": 1, "why": "a bundle", "threshold": 1, "rotation_threshold": 2}
    code, out, err = run(capsys, "bundle", "verify", str(setup.root / "b.fpb"), "--trust", str(setup.signers))
    assert "signed by everyday" in out and "2 of the 2 trusted keys; a bundle needs 1" in out, out
    # a device whose set needs 2 for every bundle refuses one key, and says so; --trust at build too
    assert build(capsys, setup, "one.fpb")[0] == 0
    code, result, err = verify(capsys, setup, "one.fpb", trust=t2)
    assert code == 1 and result["error"] == "BundleThresholdError" and "needs 2" in result["reason"]
    code, out, err = build(capsys, setup, "one.fpb", "--trust", str(t2))
    assert code == 1 and "BundleThresholdError" in err and "needs 2" in err, err
    code, out, err = run(capsys, "bundle", "inspect", str(setup.root / "b.fpb"), "--trust", str(t2), "--json")
    assert code == 0, err
    sig = json.loads(out)["signatures"]
    assert sig["needs"]["keys"] == 2 and [s["name"] for s in sig["signed_by"]] == ["everyday", "backup"]


def test_build_refuses_an_invalid_new_signer_set(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    # Issue 12, item 6: a hand-edited set with a key off the curve, or a key and its negation,
    # would lock devices out: refused at build, by name, before any passphrase is asked.
    from pinagent.signers import key_id_of_point

    p = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
    good = json.loads(setup.signers.read_text())
    point = bytes.fromhex(good["signers"][0]["key"])
    y = int.from_bytes(point[33:], "big")
    for name, bad_point, error in (
        ("off-curve", point[:33] + ((y + 1) % p).to_bytes(32, "big"), "SignerKeyInvalid"),
        ("zero", b"\x04" + bytes(64), "SignerKeyInvalid"),
        ("negated", point[:33] + (p - y).to_bytes(32, "big"), "SignerKeyRepeated"),
    ):
        bad = json.loads(setup.signers.read_text())
        entry = {"id": key_id_of_point(bad_point).hex(), "key": bad_point.hex(), "name": name}
        if name == "negated":
            bad["signers"].append(entry)
        else:
            bad["signers"][0] = entry
        path = setup.root / f"{name}.json"
        path.write_text(json.dumps(bad))
        code, out, err = build(capsys, setup, "r.fpb", "--new-signers", str(path), version=6,
                               keys=("everyday", "backup"))
        assert code == 2 and error in err, (name, err)
        assert not (setup.root / "r.fpb").exists()


def test_sign_command(setup: Setup, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from fleetpin.pki import keys

    key = keys.load_private_key(Path(setup.key("everyday")), PASS.encode())
    hsm = tmp_path / "hsm.pem"
    hsm.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    code, out, err = run(capsys, "bundle", "build", str(setup.policy), "--fleet", FLEET, "--version", "5",
                         "--key", str(setup.keys / "everyday.pub.json"),
                         "--sign-command", f"openssl pkeyutl -sign -inkey {hsm}", "-o", str(setup.root / "h.fpb"))
    assert code == 0, err
    assert verify(capsys, setup, "h.fpb")[1]["result"] == "ok"


def test_build_refuses_bad_inputs(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    (setup.root / "ca" / "leaf.pem").write_bytes(ca_pem("leaf", ca=False))
    setup.policy.write_text(POLICY.replace("ca/root.pem", "ca/leaf.pem"))
    code, out, err = build(capsys, setup, "b.fpb")
    assert code == 2 and "not a CA certificate" in err
    setup.policy.write_text(POLICY + "\n[bundle2]\nx = 1\n")
    code, out, err = build(capsys, setup, "b.fpb")
    assert code == 2 and "bundle2" in err
    setup.policy.write_text(POLICY.replace("max_entries = 20", "max_entries = 0"))
    code, out, err = build(capsys, setup, "b.fpb")
    assert code == 1 and "report.max_entries" in err
    setup.policy.write_text(POLICY.replace("max_entries = 20", "url = 'x'"))
    code, out, err = build(capsys, setup, "b.fpb")
    assert code == 2 and "report.url" in err
    setup.policy.write_text(POLICY.replace('label = "backup"', 'label = ""'))
    code, out, err = build(capsys, setup, "b.fpb")
    assert code == 2 and "domain[0].pins[1].label" in err
    setup.policy.write_text(POLICY)
    code, out, err = build(capsys, setup, "b.fpb", "--passphrase-file", str(setup.policy))  # wrong passphrase
    assert code == 1 and "wrong passphrase" in err
    assert build(capsys, setup, "b.fpb", version=0)[0] == 2
    assert not (setup.root / "b.fpb").exists()


# --- on the MicroPython VM -----------------------------------------------------------------


def test_verify_on_micropython_vm(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    assert build(capsys, setup, "b.fpb")[0] == 0
    code, result, err = verify(capsys, setup, "b.fpb", "--runtime", "micropython")
    assert code == 0, err
    _, on_cpython, _ = verify(capsys, setup, "b.fpb")
    assert {**result, "runtime": "device"} == on_cpython
    code, result, err = verify(capsys, setup, "b.fpb", "--runtime", "micropython", "--installed-version", "6")
    assert code == 1 and result["error"] == "BundleRollback"


# The VM never collects garbage within one call and one P-256 verification allocates ~0.8 MB of
# bigints, so the variants run in chunks, each chunk its own call (garbage collected between
# chunks) on ONE VM. A change anywhere must be caught by size/structure checks or the signature:
# the signature covers every byte before the signature block, and the header binds its key ids.
_FLIP_SETUP = """
import time
from pinagent import bundle, signers
data = open("/t/b.fpb", "rb").read()
trust = signers.load_signers(open("/t/signers.json", "rb").read())
buf = bytearray(data)
counts = {}
accepted = []
bundle.decode_bundle(buf, trust, %r, 0, %d, 0)  # the unchanged bundle is accepted
started = time.ticks_ms()
"""
_FLIP_CHUNK = """
for i in range(%d, %d):
    buf[i] ^= 0x01
    try:
        bundle.decode_bundle(buf, trust, %r, 0, %d, 0)
        accepted.append(i)
    except bundle.BundleError as e:
        name = type(e).__name__
        counts[name] = counts.get(name, 0) + 1
    buf[i] ^= 0x01
"""
_FLIP_END = """
print("FLIP", time.ticks_diff(time.ticks_ms(), started), len(buf), accepted, sorted(counts.items()))
"""


def test_every_single_byte_change_is_refused_on_the_vm(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    assert build(capsys, setup, "b.fpb")[0] == 0
    data = (setup.root / "b.fpb").read_bytes()
    now = int(time.time())
    chunk = 25
    steps = ["import sys\nsys.path[:0] = ['/fp/device']\n", _FLIP_SETUP % (FLEET, now)]
    steps += [_FLIP_CHUNK % (i, min(i + chunk, len(data)), FLEET, now) for i in range(0, len(data), chunk)]
    steps.append(_FLIP_END)
    started = time.perf_counter()
    run_ = wasm.run_steps(steps, {**wasm.device_files(), "/t/b.fpb": data, "/t/signers.json": setup.signers.read_bytes()},
                          heap_kb=100, timeout=300)
    wall = time.perf_counter() - started
    failed = [s.error for s in run_.steps if s.error]
    assert not failed, failed[0]
    line = run_.steps[-1].stdout.split()
    assert line[0] == "FLIP"
    vm_ms, size = int(line[1]), int(line[2])
    summary = " ".join(line[3:])
    assert size == len(data)
    assert summary.startswith("[] "), "variants accepted: " + summary  # no variant accepted
    counts = dict(eval(summary[3:]))  # [(name, count), ...] as printed by the VM
    assert sum(counts.values()) == len(data)
    assert set(counts) <= {"BundleTooLarge", "BundleMalformed", "BundleSignatureError"}, counts
    with capsys.disabled():
        print(f"\nbyte flips on the VM: {len(data)} variants of a {len(data)}-byte bundle in {vm_ms / 1000:.1f} s "
              f"({wall:.1f} s wall), {counts}")


def test_decoder_heap_on_the_vm(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    """Everything but the ECDSA arithmetic: what decode allocates in one call (no GC ran, so it
    bounds the peak) and what the decoded bundle keeps; the verification's own peak is
    pinagent.ecdsa's (its benchmark)."""
    assert build(capsys, setup, "b.fpb")[0] == 0
    files = {"/t/b.fpb": (setup.root / "b.fpb").read_bytes()}
    setup_code = "from pinagent import bundle\ndata = open('/t/b.fpb', 'rb').read()\nbundle.decode_unverified(data)\n"
    use = wasm.heap_use("b = bundle.decode_unverified(data)", setup_code, files)
    with capsys.disabled():
        print(f"\ndecode without ECDSA, {len(files['/t/b.fpb'])}-byte bundle: allocated {use.allocated} B, "
              f"kept {use.retained} B")
    # 10.4 KB before the update path became lazily loaded (pinagent.policy_load and the forgetting
    # of modules); 34 KB since, on this VM that never collects within a call: garbage, not live
    # data (it keeps 1.5 KB), and the live heap is bench_agent's, on real MicroPython. Bounded
    # here so growth is seen; why it grew is not yet isolated (issue 19 note).
    assert use.allocated < 40 * 1024


def test_output_paths_that_cannot_be_written_are_usage_errors_and_keys_are_written_whole(tmp_path: Path) -> None:
    """A file where a folder should be: exit 2 naming the path, no traceback; a key name whose
    public file exists already: refused before the private key is written."""
    from fleetpin.cli import main

    (tmp_path / "afile").write_text("x")
    env = {"FLEETPIN_KEY_PASSPHRASE": "a long enough passphrase"}
    import os

    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert main(["key", "new", "--signing", "--id", "k", "-o", str(tmp_path / "afile" / "keys")]) == 2
        (tmp_path / "keys").mkdir()
        (tmp_path / "keys" / "k.pub.json").write_text("{}")
        assert main(["key", "new", "--signing", "--id", "k", "-o", str(tmp_path / "keys")]) == 1
        assert not (tmp_path / "keys" / "k.key.pem").exists()
        assert main(["key", "new", "--signing", "--id", "a", "-o", str(tmp_path / "keys")]) == 0
        assert main(["key", "new", "--signing", "--id", "b", "-o", str(tmp_path / "keys")]) == 0
        signers = [str(tmp_path / "keys" / "a.pub.json"), str(tmp_path / "keys" / "b.pub.json")]
        assert main(["key", "signers", *signers, "-o", str(tmp_path / "afile" / "s.json")]) == 2
        assert main(["key", "signers", *signers, "-o", str(tmp_path / "s.json")]) == 0
        assert not list(tmp_path.glob("*.tmp"))
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
