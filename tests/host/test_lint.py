"""fleetpin.bundles.lint and `fleetpin bundle lint`: one minimal policy per rule, asserting the exact rule
ids it triggers; served chains from files and from a live TLS server on 127.0.0.1; and
`bundle build` refusing to sign a bundle with lint errors unless --allow-lint-errors."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fleetpin.bundles.lint import RULES, lint
from fleetpin.bundles.view import ServedChain, load_view
from fleetpin.sim.pki import Pki, PkiFiles, make_pki

NOW = int(time.time())
DAY = 86400
HOST = "device.test"
PASS = "correct horse battery"


def _date(days: int, now: int = NOW) -> str:
    return dt.datetime.fromtimestamp(now + days * DAY, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def domain(pins: list[tuple[str, str]], host: str = HOST, extra: str = "") -> str:
    entries = ", ".join(f'{{ pin = "{p}", label = "{label}" }}' for p, label in pins)
    return f'[[domain]]\nhost = "{host}"\n{extra}\npins = [{entries}]\n'


class Policies:
    """Writes minimal policy files: CA certificates = the test PKI's root unless told otherwise."""

    def __init__(self, root: Path, pki: Pki, files: PkiFiles) -> None:
        self.root, self.pki, self.files = root, pki, files
        self.count = 0

    @property
    def good_pins(self) -> list[tuple[str, str]]:
        return [(self.pki.pins["leaf"], "primary"), (self.pki.pins["backup"], "backup")]

    def write(self, *domains: str, cas: tuple[Path, ...] | None = None, expires_days: int = 200) -> Path:
        cas = (self.files.cert("root"),) if cas is None else cas
        text = f"[defaults]\nexpires = {_date(expires_days)}\n\n" + "\n".join(domains)
        if cas:
            text += "\n[bundle]\nca_certs = [" + ", ".join(f'"{c}"' for c in cas) + "]\n"
        self.count += 1
        path = self.root / f"policy{self.count}.toml"
        path.write_text(text)
        return path


@pytest.fixture
def policies(tmp_path: Path, pki: Pki, pki_files: PkiFiles) -> Policies:
    return Policies(tmp_path, pki, pki_files)


def ids(path: Path, chains: tuple[ServedChain, ...] = (), now: int = NOW, **options: Any) -> list[str]:
    return [f.rule for f in lint(load_view(path, lenient=True), chains, now=now, **options)]


def served(pki: Pki, name: str = "leaf", host: str | None = None) -> ServedChain:
    return ServedChain(name, pki.chain_der(name), host)


# --- one rule at a time -----------------------------------------------------------------------


def test_clean_policy_has_no_findings(policies: Policies, pki: Pki) -> None:
    path = policies.write(domain(policies.good_pins))
    assert ids(path) == []
    assert ids(path, (served(pki),)) == []  # the chain validates, the leaf is pinned, the backup is not in it


def test_fp001_enforced_domain_with_one_pin(policies: Policies) -> None:
    assert ids(policies.write(domain(policies.good_pins[:1]))) == ["FP001"]
    # a report-only domain may start with one pin: only the report-only note
    assert ids(policies.write(domain(policies.good_pins[:1], extra="enforce = false"))) == ["FP014"]


def test_fp002_no_backup_outside_the_served_chain(policies: Policies, pki: Pki) -> None:
    path = policies.write(domain([(pki.pins["leaf"], "primary"), (pki.pins["intermediate"], "second")]))
    assert ids(path) == []  # without a chain, nothing says both keys are in use
    assert ids(path, (served(pki),)) == ["FP002"]


def test_fp003_served_chain_matches_no_pin(policies: Policies, pki: Pki) -> None:
    pins = [(pki.pins["rogue_leaf"], "primary"), (pki.pins["backup"], "backup")]
    assert ids(policies.write(domain(pins)), (served(pki),)) == ["FP003"]
    findings = lint(load_view(policies.write(domain(pins, extra="enforce = false"))), (served(pki),), now=NOW)
    assert [(f.rule, f.severity) for f in findings] == [("FP003", "warning"), ("FP014", "info")]


def test_fp004_expired(policies: Policies) -> None:
    assert ids(policies.write(domain(policies.good_pins), expires_days=-1)) == ["FP004"]


def test_fp005_beyond_the_horizon(policies: Policies) -> None:
    path = policies.write(domain(policies.good_pins), expires_days=500)
    assert ids(path) == ["FP005"]
    assert ids(path, max_horizon_days=600) == []


def test_fp006_expiring_soon(policies: Policies) -> None:
    path = policies.write(domain(policies.good_pins), expires_days=10)
    assert ids(path) == ["FP006"]
    assert ids(path, warn_days=5) == []


def test_fp007_malformed_pin_is_reported_not_fatal(policies: Policies) -> None:
    path = policies.write(domain(policies.good_pins + [("sha256/abc=", "typo")]))
    findings = lint(load_view(path, lenient=True), now=NOW)
    assert [f.rule for f in findings] == ["FP007"] and "pins[2]" in findings[0].message
    # a domain left without any valid pin is reported and skipped by the other rules
    assert ids(policies.write(domain([("nope", "x")]), domain(policies.good_pins, host="b.test"))) == ["FP007"]


def test_fp008_duplicate_pin(policies: Policies, pki: Pki) -> None:
    leaf = pki.pins["leaf"]
    assert ids(policies.write(domain(policies.good_pins + [("sha256/" + leaf, "again")]))) == ["FP008"]


@pytest.mark.parametrize("host, extra", [("*.co.uk", ""), ("**.github.io", ""), ("github.io", "include_subdomains = true")])
def test_fp009_wildcard_on_a_public_suffix(policies: Policies, host: str, extra: str) -> None:
    assert ids(policies.write(domain(policies.good_pins, host=host, extra=extra))) == ["FP009"]


def test_fp009_not_for_a_registered_domain(policies: Policies) -> None:
    assert ids(policies.write(domain(policies.good_pins, host="**.example.co.uk"))) == []


def test_fp010_an_empty_policy_without_ca_certificates(policies: Policies) -> None:
    # no domain and no CA: after this update every TLS connection of the device would fail
    assert ids(policies.write(cas=())) == ["FP010"]


def test_fp010_no_ca_certificates(policies: Policies) -> None:
    assert ids(policies.write(domain(policies.good_pins), cas=())) == ["FP010"]


def test_fp011_chain_does_not_validate_against_the_bundle_cas(policies: Policies, tmp_path: Path) -> None:
    other = make_pki(HOST, namespace="lint-other-ca")
    pins = [(other.pins["leaf"], "primary"), (other.pins["backup"], "backup")]
    path = policies.write(domain(pins))  # the bundle carries the default PKI's root, not other's
    assert ids(path, (served(other),)) == ["FP011"]
    # a chain for another host name than the one it is used for does not validate either
    assert ids(policies.write(domain(policies.good_pins, host="api.test")),
               (served(policies.pki, host="api.test"),)) == ["FP011"]


def test_fp012_ca_pin_without_the_ca_certificate(policies: Policies, pki: Pki, tmp_path: Path) -> None:
    pins = [(pki.pins["intermediate"], "issuing CA"), (pki.pins["backup"], "backup")]
    other = make_pki(HOST, namespace="lint-other-ca").write(tmp_path / "other")
    path = policies.write(domain(pins), cas=(other.cert("root"),))
    assert ids(path, (served(pki),)) == ["FP011", "FP012", "FP013"]
    # with the right root the intermediate pin counts (depth 1 of a validated chain)
    assert ids(policies.write(domain(pins), cas=(policies.files.cert("root"), policies.files.cert("intermediate"))),
               (served(pki),)) == []


def test_fp013_ca_label_matching_no_bundle_ca(policies: Policies, pki: Pki) -> None:
    pins = [(pki.pins["leaf"], "primary"), (pki.pins["backup"], "backup CA")]
    assert ids(policies.write(domain(pins))) == ["FP013"]
    pins = [(pki.pins["leaf"], "primary"), (pki.pins["root"], "root CA")]
    assert ids(policies.write(domain(pins))) == []  # the root's certificate is in the bundle


def test_fp014_report_only(policies: Policies) -> None:
    assert ids(policies.write(domain(policies.good_pins, extra="enforce = false"))) == ["FP014"]


def test_fp015_chain_under_no_domain(policies: Policies, pki: Pki) -> None:
    path = policies.write(domain(policies.good_pins, host="other.test"))
    assert ids(path, (served(pki),)) == ["FP015"]
    assert [f.severity for f in lint(load_view(path), (served(pki),), now=NOW)] == ["warning"]


def test_fp015_is_an_error_when_devices_block_hosts_without_a_rule(policies: Policies, pki: Pki) -> None:
    path = policies.write(domain(policies.good_pins, host="other.test"))
    path.write_text(path.read_text().replace("[defaults]\n", '[defaults]\nunpinned = "block"\n'))
    [finding] = lint(load_view(path), (served(pki),), now=NOW)
    assert (finding.rule, finding.severity) == ("FP015", "error") and "devices will refuse it" in finding.message


def test_fp016_ca_certificate_expiring(policies: Policies, pki: Pki) -> None:
    later = int(pki.root.cert.not_valid_after_utc.timestamp()) - 5 * DAY
    path = policies.root / "late.toml"
    path.write_text(f"[defaults]\nexpires = {_date(100, later)}\n\n{domain(policies.good_pins)}"
                    f'\n[bundle]\nca_certs = ["{policies.files.cert("root")}"]\n')
    assert ids(path, now=later) == ["FP016"]


@pytest.mark.parametrize("written, canonical", [("fd00:0::1", "fd00::1"), ("::ffff:10.0.0.5", "10.0.0.5"),
                                                ("FD00::1", "fd00::1"), ("API.device.test", "api.device.test"),
                                                ("api.device.test.", "api.device.test")])
def test_fp017_a_host_not_written_as_devices_compare_it(policies: Policies, written: str, canonical: str) -> None:
    path = policies.write(domain(policies.good_pins, host=written))
    findings = lint(load_view(path, lenient=True), now=NOW)
    assert [(f.rule, f.severity) for f in findings] == [("FP017", "error")]
    assert repr(written) in findings[0].message and repr(canonical) in findings[0].message
    assert ids(policies.write(domain(policies.good_pins, host=canonical))) == []


def test_fp017_in_a_built_bundle(policies: Policies, fleetpin: Callable[..., Any], tmp_path: Path) -> None:
    keys = _keys(fleetpin, tmp_path)
    path = policies.write(domain(policies.good_pins, host="fd00:0:0::1"))
    out = tmp_path / "b.fpb"
    assert fleetpin("bundle", "build", path, "--fleet", "f", "--version", "1", "--key", keys, "-o", out,
                    "--allow-lint-errors", env={"FLEETPIN_KEY_PASSPHRASE": PASS}).exit_code == 0
    result = fleetpin("bundle", "lint", out, "--json")
    assert result.exit_code == 1 and [f["rule"] for f in json.loads(result.stdout)["findings"]] == ["FP017"]


@pytest.mark.parametrize("host", ["127.1", "0x7f.0.0.1", "0177.0.0.1", "2130706433", "10.0.0.05",
                                  "api.device.test:443"])
def test_a_host_with_no_canonical_form_is_refused(policies: Policies, fleetpin: Callable[..., Any], host: str) -> None:
    result = fleetpin("bundle", "lint", policies.write(domain(policies.good_pins, host=host)))
    assert result.exit_code == 2 and "domain[0].host" in result.stderr


def test_every_rule_has_a_severity_and_a_hint() -> None:
    assert sorted(RULES) == [f"FP{i:03d}" for i in range(1, 25)]
    assert all(r.severity in ("error", "warning", "info") and r.hint and r.title for r in RULES.values())


# --- the command ---------------------------------------------------------------------------------


def test_cli_exit_codes_and_json(policies: Policies, fleetpin: Callable[..., Any], pki_files: PkiFiles) -> None:
    clean = policies.write(domain(policies.good_pins))
    result = fleetpin("bundle", "lint", clean, "--chain", pki_files.chain("leaf"))
    assert result.exit_code == 0 and "0 errors, 0 warnings, 0 infos" in result.stdout
    bad = policies.write(domain(policies.good_pins[:1]), expires_days=10)
    result = fleetpin("bundle", "lint", bad, "--json")
    assert result.exit_code == 1
    out = json.loads(result.stdout)
    assert out["ok"] is False and [f["rule"] for f in out["findings"]] == ["FP001", "FP006"]
    assert set(out["findings"][0]) == {"rule", "severity", "title", "domain", "message", "hint"}
    warn_only = policies.write(domain(policies.good_pins), expires_days=10)
    assert fleetpin("bundle", "lint", warn_only).exit_code == 0
    assert fleetpin("bundle", "lint", policies.root / "missing.toml").exit_code == 2
    assert fleetpin("bundle", "lint", clean, "--now", "yesterday").exit_code == 2


def test_cli_chain_host_equals_file(policies: Policies, fleetpin: Callable[..., Any], pki_files: PkiFiles) -> None:
    pins = [(policies.pki.pins["rogue_leaf"], "primary"), (policies.pki.pins["backup"], "backup")]
    path = policies.write(domain(pins))
    result = fleetpin("bundle", "lint", path, "--chain", f"{HOST}={pki_files.chain('leaf')}", "--json")
    assert result.exit_code == 1
    assert [f["rule"] for f in json.loads(result.stdout)["findings"]] == ["FP003"]


def test_cli_lint_live_host(policies: Policies, fleetpin: Callable[..., Any], pki_files: PkiFiles,
                            tls_server: Callable[..., Any]) -> None:
    server = tls_server("leaf")
    target = f"{HOST}:{server.port}@127.0.0.1"
    clean = policies.write(domain(policies.good_pins))
    result = fleetpin("bundle", "lint", clean, "--host", target, "--json")  # validated with the bundle's CAs
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["findings"] == []
    locked = policies.write(domain([(policies.pki.pins["rogue_leaf"], "a"), (policies.pki.pins["backup"], "b")]))
    result = fleetpin("bundle", "lint", locked, "--host", target, "--ca", pki_files.cert("root"))
    assert result.exit_code == 1 and "FP003 ERROR" in result.stdout and "devices will refuse it" in result.stdout


def test_cli_lint_live_host_failing_the_bundles_cas_is_fp011(policies: Policies, fleetpin: Callable[..., Any],
                                                            tls_server: Callable[..., Any]) -> None:
    # The served chain is fetched as is and validated against the bundle's CAs, as for --chain:
    # a finding, not a fetch error that stops the lint.
    server = tls_server("rogue_leaf")
    path = policies.write(domain([(policies.pki.pins["rogue_leaf"], "primary"), (policies.pki.pins["backup"], "b")]))
    result = fleetpin("bundle", "lint", path, "--host", f"{HOST}:{server.port}@127.0.0.1", "--json")
    assert result.exit_code == 1, result.stderr
    findings = json.loads(result.stdout)["findings"]
    assert [f["rule"] for f in findings] == ["FP011"]
    assert findings[0]["message"].startswith(f"{HOST}: {HOST}:{server.port}: ")


def test_lint_a_built_bundle(policies: Policies, fleetpin: Callable[..., Any], tmp_path: Path) -> None:
    keys = _keys(fleetpin, tmp_path)
    path = policies.write(domain(policies.good_pins, extra="enforce = false"))
    out = tmp_path / "b.fpb"
    assert fleetpin("bundle", "build", path, "--fleet", "f", "--version", "1", "--key", keys, "-o", out,
                    env={"FLEETPIN_KEY_PASSPHRASE": PASS}).exit_code == 0
    result = fleetpin("bundle", "lint", out, "--json")
    assert result.exit_code == 0 and [f["rule"] for f in json.loads(result.stdout)["findings"]] == ["FP014"]


# --- bundle build's gate -------------------------------------------------------------------------


def _keys(fleetpin: Callable[..., Any], tmp_path: Path) -> Path:
    result = fleetpin("key", "new", "--signing", "--id", "everyday", "-o", tmp_path / "keys",
                      env={"FLEETPIN_KEY_PASSPHRASE": PASS})
    assert result.exit_code == 0, result.stderr
    return tmp_path / "keys" / "everyday.key.pem"


def test_build_refuses_lint_errors_unless_allowed(policies: Policies, fleetpin: Callable[..., Any],
                                                  tmp_path: Path) -> None:
    key = _keys(fleetpin, tmp_path)
    path = policies.write(domain(policies.good_pins[:1]))
    out = tmp_path / "b.fpb"
    args = ("bundle", "build", path, "--fleet", "f", "--version", "1", "--key", key, "-o", out)
    env = {"FLEETPIN_KEY_PASSPHRASE": PASS}
    result = fleetpin(*args, env=env)
    assert result.exit_code == 1 and "FP001" in result.stderr and "--allow-lint-errors" in result.stderr
    assert not out.exists()
    result = fleetpin(*args, "--allow-lint-errors", "--json", env=env)
    assert result.exit_code == 0, result.stderr
    assert "WARNING: signing a bundle with 1 lint error(s)" in result.stderr and out.exists()
    summary = json.loads(result.stdout)
    assert summary["lint_errors_allowed"] is True and [f["rule"] for f in summary["lint"]] == ["FP001"]


# --- the device's limits on a bundle, one rule each (pinagent.bundle) -----------------------------


def ca_files(directory: Path, count: int, pad: int = 0) -> tuple[Path, ...]:
    """`count` self-signed CA certificates (EC P-256), each padded with `pad` bytes of a private
    extension to reach a size; one PEM file each."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    out = []
    start = dt.datetime.fromtimestamp(NOW - DAY, dt.timezone.utc)
    for i in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Limit Test CA {i}")])
        builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(i + 1).not_valid_before(start).not_valid_after(start + dt.timedelta(days=3650))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True))
        if pad:
            oid = x509.ObjectIdentifier("1.3.6.1.4.1.55555.1")
            builder = builder.add_extension(x509.UnrecognizedExtension(oid, b"\x04\x82" + pad.to_bytes(2, "big")
                                                                       + b"p" * pad), critical=False)
        cert = builder.sign(key, hashes.SHA256())
        path = directory / f"ca{i}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out.append(path)
    return tuple(out)


def test_fp018_more_ca_certificates_than_a_device_accepts(policies: Policies, tmp_path: Path) -> None:
    assert ids(policies.write(domain(policies.good_pins), cas=ca_files(tmp_path / "ok", 8))) == []
    assert ids(policies.write(domain(policies.good_pins), cas=ca_files(tmp_path / "cas", 9))) == ["FP018"]


def test_fp019_a_ca_certificate_over_the_device_limit(policies: Policies, tmp_path: Path) -> None:
    big = ca_files(tmp_path / "big", 1, pad=4200)
    assert len(load_view(policies.write(domain(policies.good_pins), cas=big)).ca_certs[0].der) > 4096
    assert ids(policies.write(domain(policies.good_pins), cas=big)) == ["FP019"]


def test_fp020_a_ca_certificate_the_device_parser_refuses(policies: Policies, monkeypatch: pytest.MonkeyPatch) -> None:
    # cryptography and the device's DER walker disagree rarely; the rule is what catches it when they do
    from pinagent import der

    def refuse(data: Any) -> Any:
        raise der.DerError("non-minimal length (long form for a short length)")

    monkeypatch.setattr(der, "spki_of_certificate", refuse)
    path = policies.write(domain(policies.good_pins))
    [finding] = lint(load_view(path), now=NOW)
    assert finding.rule == "FP020" and "non-minimal length" in finding.message


def test_fp021_a_policy_larger_than_a_payload(policies: Policies) -> None:
    many = [domain(policies.good_pins, host=f"host-{i:04d}.fleet.example.com") for i in range(120)]
    assert ids(policies.write(*many)) == ["FP021"]
    assert "FP021" not in ids(policies.write(*many[:40]))


def test_fp022_a_bundle_larger_than_a_device_accepts_and_fp024_near_it(policies: Policies, tmp_path: Path) -> None:
    cas = ca_files(tmp_path / "cas", 8, pad=3700)  # 4042 bytes each: 8 fit the count, not the 32 KB
    assert ids(policies.write(domain(policies.good_pins), cas=cas)) == ["FP022"]
    near = ca_files(tmp_path / "near", 8, pad=3500)  # 3841 bytes each: over 90% of the 32 KB
    assert ids(policies.write(domain(policies.good_pins), cas=near)) == ["FP024"]
    assert ids(policies.write(domain(policies.good_pins), cas=cas[:5])) == []


@pytest.mark.parametrize("report, message", [
    ("max_entries = 0", "report.max_entries = 0"),
    ("max_bytes = 100000", "report.max_bytes = 100000"),
    ('enabled = "yes"', "report.enabled = 'yes'"),
])
def test_fp023_report_settings_outside_the_device_limits(policies: Policies, report: str, message: str) -> None:
    path = policies.write(domain(policies.good_pins))
    path.write_text(path.read_text() + f"\n[report]\n{report}\n")
    [finding] = lint(load_view(path), now=NOW)
    assert finding.rule == "FP023" and message in finding.message


def test_build_names_the_device_limit_it_would_break(policies: Policies, fleetpin: Callable[..., Any],
                                                     tmp_path: Path) -> None:
    # `bundle build` used to say only "header, payload or certificate count over its limit"
    key = _keys(fleetpin, tmp_path)
    path = policies.write(domain(policies.good_pins), cas=ca_files(tmp_path / "cas", 9))
    result = fleetpin("bundle", "build", path, "--fleet", "f", "--version", "1", "--key", key, "-o", tmp_path / "b.fpb",
                      env={"FLEETPIN_KEY_PASSPHRASE": PASS})
    assert result.exit_code == 1 and not (tmp_path / "b.fpb").exists()
    assert "FP018" in result.stderr and "9 CA certificates: a device accepts at most 8" in result.stderr


# --- every rule, listed; the README carries the same table ------------------------------------------


def test_list_rules_prints_every_rule_whole(fleetpin: Callable[..., Any]) -> None:
    result = fleetpin("bundle", "lint", "--list-rules")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    for rule in RULES.values():  # piped: one line per rule, nothing cut
        [line] = [x for x in lines if f" {rule.id} " in x]
        assert rule.severity in line and rule.title in line and rule.hint in line
    assert "\x1b[" not in result.stdout
    obj = json.loads(fleetpin("bundle", "lint", "--list-rules", "--json").stdout)
    assert [(r["rule"], r["severity"], r["catches"], r["fix"]) for r in obj["rules"]] == [
        (r.id, r.severity, r.title, r.hint) for r in RULES.values()]
    assert fleetpin("bundle", "lint").exit_code == 2  # neither a file nor --list-rules


def _readme() -> str:
    root = Path(__file__).resolve().parents[2]
    return (root / "README.md").read_text()


def test_readme_carries_the_rule_table() -> None:
    text = _readme()
    for rule in RULES.values():
        assert f"| {rule.id} | {rule.severity} | {rule.title} | {rule.hint} |" in text, rule.id
