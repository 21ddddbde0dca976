"""fleetpin export android|trustkit|okhttp and fleetpin import android: the outputs parsed back,
the warnings for what each format cannot express asserted exactly, and policy -> Android XML ->
import -> policy round trips."""

from __future__ import annotations

import base64
import datetime as dt
import json
import plistlib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from fleetpin import cli
from fleetpin.bundles.policy import parse_policy_toml
from fleetpin.errors import FleetpinError, UsageError
from fleetpin.formats import export
from fleetpin.formats.android_import import NEVER, import_android
from fleetpin.formats.okhttp import okhttp_matches
from pinagent import bundle as dev_bundle
from pinagent.policy_load import policy_from_obj

A = base64.b64encode(bytes([1]) * 32).decode()
B = base64.b64encode(bytes([2]) * 32).decode()
C = base64.b64encode(bytes([3]) * 32).decode()
JAN_2027 = int(dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc).timestamp())
NEVER_EXPIRES = "OkHttp pins never expire: after 2027-01-01T00:00:00Z the app keeps enforcing them where the " \
                "devices fall back to CA validation; ship an app update with new pins before then"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def dom(host: str, pins: tuple[str, ...] = (A, B), extra: str = "", labels: tuple[str, ...] = ()) -> str:
    items = [f'{{ pin = "{p}", label = "{lab}" }}' for p, lab in zip(pins, labels)]
    items += [f'"{p}"' for p in pins[len(labels):]]
    return f'[[domain]]\nhost = "{host}"\n{extra}\npins = [{", ".join(items)}]\n'


def policy(domains: str, defaults: str = "expires = 2027-01-01") -> dict[str, Any]:
    return parse_policy_toml(f"[defaults]\n{defaults}\n\n{domains}", "p.toml")


def warnings_of(fmt: str, obj: dict[str, Any], **kw: Any) -> list[str]:
    return [str(w) for w in export(fmt, obj, "p.toml", **kw).warnings]


def canonical(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return [r.to_obj() for r in policy_from_obj(obj).rules]


# --- Android --------------------------------------------------------------------------------

EXPRESSIBLE = (
    dom("api.example.com", labels=("primary", "backup"))
    + dom("telemetry.example.net", (C, A), 'include_subdomains = true\nexpires = 2026-06-30')
    + dom("static.example.net", (B,), 'on_expiry = "enforce"')  # keeps enforcing: no expiration
)


def test_android_export_parses_back_to_the_policy() -> None:
    obj = policy(EXPRESSIBLE)
    result = export("android", obj, "p.toml")
    assert result.warnings == []
    root = ET.fromstring(result.text.encode())
    assert root.tag == "network-security-config"
    configs = root.findall("domain-config")
    got = [(c.find("domain").text, c.find("domain").get("includeSubdomains"),  # type: ignore[union-attr]
            c.find("pin-set").get("expiration"),  # type: ignore[union-attr]
            [(p.get("digest"), p.text) for p in c.iter("pin")]) for c in configs]
    assert got == [
        ("api.example.com", "false", "2027-01-01", [("SHA-256", A), ("SHA-256", B)]),
        ("telemetry.example.net", "true", "2026-06-30", [("SHA-256", C), ("SHA-256", A)]),
        ("static.example.net", "false", None, [("SHA-256", B)]),
    ]


def test_round_trip_policy_android_import_policy() -> None:
    obj = policy(EXPRESSIBLE)
    xml = export("android", obj, "p.toml").text
    imported = import_android(xml.encode(), "nsc.xml")
    assert imported.warnings == [] and imported.notes == []
    back = parse_policy_toml(imported.toml, "back.toml")
    want = canonical(obj)
    # the one thing Android cannot keep: the date of a pin set that is enforced past its expiry
    want[2]["expires"] = NEVER
    assert canonical(back) == want
    assert want[0]["pins"][0]["label"] == "primary"  # labels survive as comments


def test_round_trip_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "policy.toml"
    src.write_text(f"[defaults]\nexpires = 2027-01-01\n\n{dom('api.example.com')}")
    xml, back = tmp_path / "res" / "nsc.xml", tmp_path / "back.toml"
    code, out, err = run(capsys, "export", "android", str(src), "-o", str(xml), "--strict")
    assert code == 0 and err == f"{xml}: android export, 0 warning(s)\n"
    code, out, err = run(capsys, "import", "android", str(xml), "-o", str(back), "--strict")
    assert code == 0, err
    assert canonical(parse_policy_toml(back.read_text())) == canonical(parse_policy_toml(src.read_text()))
    code, out, err = run(capsys, "import", "android", str(xml), "-o", str(back))
    assert code == 2 and "exists" in err  # a policy file is never overwritten silently
    assert run(capsys, "import", "android", str(xml), "-o", str(back), "--force")[0] == 0


def test_android_report_only_is_exported_without_pins() -> None:
    obj = policy(dom("api.example.com", extra="enforce = false") + dom("example.com", (C, A), "include_subdomains = true"))
    result = export("android", obj, "p.toml")
    assert [str(w) for w in result.warnings] == [
        "api.example.com: report-only: Android has no report-only mode; exported without a pin-set "
        "(CA validation only, nothing reported)",
    ]
    # its own domain-config, without a pin-set, so the pinned parent does not catch it
    first = ET.fromstring(result.text.encode()).findall("domain-config")[0]
    assert first.find("domain").text == "api.example.com" and first.find("pin-set") is None  # type: ignore[union-attr]


def test_android_wildcards_widen_and_names_are_unique() -> None:
    assert warnings_of("android", policy(dom("*.example.org"))) == [
        "*.example.org: example.org; other names two or more labels below example.org: Android would apply "
        "the pins of *.example.org, fleetpin no pins (CA validation only)",
    ]
    assert warnings_of("android", policy(dom("**.example.org"))) == [
        "**.example.org: example.org: Android would apply the pins of **.example.org, fleetpin no pins "
        "(CA validation only)",
    ]
    # "**.x" widened to x is harmless when x has the same pins
    obj = policy(dom("**.example.org") + dom("*.example.org", (C, A)) + dom("example.org", (C, B)))
    result = export("android", obj, "p.toml")
    assert [str(w) for w in result.warnings] == [
        "**.example.org: not exported: Android allows each name once, and example.org is taken by the rule "
        "for example.org",
        "*.example.org: not exported: Android allows each name once, and example.org is taken by the rule "
        "for example.org",
    ]
    assert [d.text for d in ET.fromstring(result.text.encode()).iter("domain")] == ["example.org"]


def test_android_expiry_ip_and_unpinned_block() -> None:
    obj = policy(dom("api.example.com", extra="expires = 2026-06-30T12:00:00+02:00") + dom("10.0.0.5"),
                 defaults='expires = 2027-01-01\nunpinned = "block"')
    assert warnings_of("android", obj) == [
        '(hosts without a rule): unpinned = "block" refuses hosts without a rule; Android cannot say that: '
        "the app uses plain CA validation for them",
        "api.example.com: expires 2026-06-30T10:00:00Z is not 00:00 UTC and Android takes a date: exported as "
        "2026-06-30, so the app falls back to CA validation up to a day earlier",
        "10.0.0.5: IP literal: Android documents <domain> for host names; it compares the text, so this pins "
        "only connections made to this exact literal (test it on a device)",
    ]


def test_android_most_specific_rule_matches_fleetpin() -> None:
    # exact beats includeSubdomains, the longest includeSubdomains wins: the same as the agent
    obj = policy(dom("example.com", extra="include_subdomains = true") + dom("api.example.com", (C, A))
                 + dom("eu.example.com", (C, B), "include_subdomains = true"))
    assert warnings_of("android", obj) == []


# --- TrustKit -------------------------------------------------------------------------------


def test_trustkit_plist_and_json() -> None:
    obj = policy(dom("api.example.com") + dom("telemetry.example.net", (C, A), 'include_subdomains = true')
                 + dom("static.example.net", extra='on_expiry = "enforce"'))
    result = export("trustkit", obj, "p.toml", report_uris=("https://r.example.com/pins",))
    assert result.warnings == []
    config = plistlib.loads(result.text.encode())["TSKConfiguration"]
    assert config == json.loads(export("trustkit", obj, "p.toml", trustkit_format="json",
                                       report_uris=("https://r.example.com/pins",)).text)
    common = {"TSKEnforcePinning": True, "TSKDisableDefaultReportUri": True,
              "TSKReportUris": ["https://r.example.com/pins"]}
    assert config == {"TSKSwizzleNetworkDelegates": False, "TSKPinnedDomains": {
        "api.example.com": {"TSKPublicKeyHashes": [A, B], "TSKIncludeSubdomains": False,
                            "TSKExpirationDate": "2027-01-01", **common},
        "telemetry.example.net": {"TSKPublicKeyHashes": [C, A], "TSKIncludeSubdomains": True,
                                  "TSKExpirationDate": "2027-01-01", **common},
        "static.example.net": {"TSKPublicKeyHashes": [A, B], "TSKIncludeSubdomains": False, **common},
    }}


def test_trustkit_refusals_become_warnings() -> None:
    obj = policy(dom("api.example.com", (A,)) + dom("10.0.0.5") + dom("ro.example.com", (A,), "enforce = false")
                 + dom("ok.example.com"))
    result = export("trustkit", obj, "p.toml")
    assert [str(w) for w in result.warnings] == [
        "api.example.com: not exported: TrustKit refuses an enforced domain with fewer than 2 pins (it would "
        "throw at start-up); add a backup pin",
        "10.0.0.5: not exported: TrustKit refuses IP addresses as pinned domains (it would throw at start-up)",
        "ro.example.com: report-only (TSKEnforcePinning NO): without --report-uri TrustKit reports pin failures "
        "nowhere (only to the app's validation callback)",
    ]
    domains = plistlib.loads(result.text.encode())["TSKConfiguration"]["TSKPinnedDomains"]
    assert list(domains) == ["ro.example.com", "ok.example.com"]  # one pin is enough when not enforced
    assert domains["ro.example.com"]["TSKEnforcePinning"] is False


def test_trustkit_nested_include_subdomains_is_ambiguous() -> None:
    obj = policy(dom("example.com", extra="include_subdomains = true")
                 + dom("api.example.com", (C, A), "include_subdomains = true"))
    assert warnings_of("trustkit", obj) == [
        "api.example.com: other names one label below api.example.com; other names two or more labels below "
        "api.example.com: TrustKit would apply the pins of api.example.com or example.com, whichever it finds "
        "first, fleetpin the pins of api.example.com",
    ]


def test_trustkit_with_nothing_to_pin_is_refused() -> None:
    with pytest.raises(FleetpinError, match="TrustKit refuses a configuration without pinned domains"):
        export("trustkit", policy(dom("10.0.0.5")), "p.toml")


# --- OkHttp ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "name", "matches"), [
    # okhttp3.CertificatePinner's documented examples
    ("www.publicobject.com", "www.publicobject.com", True),
    ("www.publicobject.com", "us-west.www.publicobject.com", False),
    ("www.publicobject.com", "publicobject.com", False),
    ("**.publicobject.com", "us-west.www.publicobject.com", True),
    ("**.publicobject.com", "www.publicobject.com", True),
    ("**.publicobject.com", "publicobject.com", True),
    ("*.publicobject.com", "www.publicobject.com", True),
    ("*.publicobject.com", "us-west.www.publicobject.com", False),
    ("*.publicobject.com", "publicobject.com", False),
    ("**.publicobject.com", "notpublicobject.com", False),
])
def test_okhttp_pattern_semantics(pattern: str, name: str, matches: bool) -> None:
    assert okhttp_matches(pattern, name) is matches


def test_okhttp_generated_lines() -> None:
    enforce = 'on_expiry = "enforce"'
    obj = policy(dom("api.example.com", extra=enforce, labels=("primary",))
                 + dom("telemetry.example.net", (C,), f"include_subdomains = true\n{enforce}")
                 + dom("*.cdn.example.org", (B,), enforce) + dom("10.0.0.5", (A,), enforce))
    result = export("okhttp", obj, "p.toml")
    assert result.warnings == []
    lines = [line.strip() for line in result.text.splitlines() if line.strip().startswith(".")]
    assert lines == [
        f'.add("api.example.com", "sha256/{A}") // primary',
        f'.add("api.example.com", "sha256/{B}")',
        f'.add("**.telemetry.example.net", "sha256/{C}")',
        f'.add("*.cdn.example.org", "sha256/{B}")',
        f'.add("10.0.0.5", "sha256/{A}")',
        ".build()",
    ]
    assert "import okhttp3.CertificatePinner" in result.text


def test_okhttp_expiry_report_only_and_overlaps() -> None:
    assert warnings_of("okhttp", policy(dom("api.example.com"))) == [f"api.example.com: {NEVER_EXPIRES}"]
    enforce = 'on_expiry = "enforce"'
    # a report-only host below an enforced "**." rule: OkHttp would enforce the parent's pins there
    obj = policy(dom("api.example.com", extra="enforce = false") + dom("**.example.com", (C, A), enforce))
    assert warnings_of("okhttp", obj) == [
        "api.example.com: not exported: report-only, and OkHttp has no report-only mode (CA validation only)",
        "api.example.com: api.example.com: OkHttp would apply the pins of **.example.com, fleetpin no pins "
        "(api.example.com is report-only)",
        "**.example.com: example.com: OkHttp would apply the pins of **.example.com, fleetpin no pins "
        "(CA validation only)",
    ]
    # OkHttp accepts the pins of every matching pattern; fleetpin only the most specific rule's
    obj = policy(dom("api.example.com", extra=enforce) + dom("example.com", (C, A), f"include_subdomains = true\n{enforce}"))
    assert warnings_of("okhttp", obj) == [
        "api.example.com: api.example.com: OkHttp would apply the pins of api.example.com and example.com "
        "(any of them), fleetpin the pins of api.example.com",
    ]
    # ... which is harmless when the pins are the same
    obj = policy(dom("api.example.com", extra=enforce) + dom("example.com", extra=f"include_subdomains = true\n{enforce}"))
    assert warnings_of("okhttp", obj) == []


# --- the export command ---------------------------------------------------------------------


def fake_bundle(obj: dict[str, Any]) -> bytes:
    """A bundle with an unverifiable signature: export reads bundles without checking trust."""
    kid = bytes(range(8))
    header = json.dumps({"format": 1, "fleet": "f", "version": 3, "issued": 0, "channel": "production",
                         "key_ids": [kid.hex()]}, sort_keys=True, separators=(",", ":")).encode()
    payload = json.dumps({"policy": obj}, sort_keys=True, separators=(",", ":")).encode()
    data: bytes = dev_bundle.encode_bundle(dev_bundle.encode_signed(header, payload, []), [(kid, bytes(64))])
    return data


def test_export_reads_a_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    obj = policy(dom("api.example.com", extra='on_expiry = "enforce"'))
    path = tmp_path / "b.fpb"
    path.write_bytes(fake_bundle(obj))
    code, out, err = run(capsys, "export", "okhttp", str(path))
    assert code == 0 and err == ""
    assert f'.add("api.example.com", "sha256/{A}")' in out
    path.write_bytes(fake_bundle(obj)[:-5])
    code, out, err = run(capsys, "export", "okhttp", str(path))
    assert code == 2 and "not a bundle a device would read" in err


def test_export_policy_with_bundle_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.toml"
    path.write_text(f"[defaults]\nexpires = 2027-01-01\n\n{dom('api.example.com')}\n[bundle]\nca_certs = "
                    '["missing.pem"]\n\n[report]\nmax_entries = 8\n')
    code, out, err = run(capsys, "export", "android", str(path))
    assert code == 0, err
    assert "<domain includeSubdomains=\"false\">api.example.com</domain>" in out


def test_strict_refuses_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.toml"
    path.write_text(f"[defaults]\nexpires = 2027-01-01\n\n{dom('api.example.com')}")
    out_file = tmp_path / "Pins.kt"
    code, out, err = run(capsys, "export", "okhttp", str(path), "-o", str(out_file), "--strict")
    assert code == 1 and not out_file.exists() and out == ""
    assert err.splitlines()[0] == f"warning: api.example.com: {NEVER_EXPIRES}"
    assert "error: --strict: 1 warning: the okhttp export does not express the policy exactly" in err
    code, out, err = run(capsys, "export", "okhttp", str(path))  # without --strict: output and warning
    assert code == 0 and ".build()" in out and err == f"warning: api.example.com: {NEVER_EXPIRES}\n"


def test_export_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.toml"
    path.write_text(f"[defaults]\nexpires = 2027-01-01\n\n{dom('api.example.com')}")
    assert run(capsys, "export", "android", str(path), "--format", "json")[0] == 2
    assert run(capsys, "export", "windows", str(path))[0] == 2
    code, out, err = run(capsys, "export", "android", str(tmp_path / "nope.toml"))
    assert code == 2 and "no such file" in err
    (tmp_path / "bad.toml").write_text("[[domain]]\nhost = 'x.com'\npins = []\n")
    code, out, err = run(capsys, "export", "android", str(tmp_path / "bad.toml"))
    assert code == 2 and "domain[0]" in err


# --- import android -------------------------------------------------------------------------


def nsc(body: str) -> bytes:
    return f'<?xml version="1.0" encoding="utf-8"?>\n<network-security-config>\n{body}\n</network-security-config>\n'.encode()


def pinset(*pins: str, expiration: str | None = "2027-01-01") -> str:
    attr = "" if expiration is None else f' expiration="{expiration}"'
    return f"<pin-set{attr}>" + "".join(f'<pin digest="SHA-256">{p}</pin>' for p in pins) + "</pin-set>"


def imported(body: str) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    result = import_android(nsc(body), "nsc.xml")
    return canonical(parse_policy_toml(result.toml)), result.warnings, result.notes


def test_import_nesting_inherits_the_parent_pin_set() -> None:
    rules, warnings, notes = imported(f"""
      <domain-config cleartextTrafficPermitted="false">
        <domain includeSubdomains="true">example.com</domain>
        {pinset(A, B)}
        <domain-config><domain>api.example.com</domain><domain>cdn.example.com</domain></domain-config>
        <domain-config><domain includeSubdomains="TRUE">eu.example.com</domain>{pinset(C, expiration=None)}</domain-config>
        <trust-anchors><certificates src="@raw/ca"/></trust-anchors>
      </domain-config>""")
    assert [(r["host"], r["include_subdomains"], [p["pin"] for p in r["pins"]], r["expires"], r["on_expiry"])
            for r in rules] == [
        ("example.com", True, [A, B], JAN_2027, "fallback"),
        ("api.example.com", False, [A, B], JAN_2027, "fallback"),
        ("cdn.example.com", False, [A, B], JAN_2027, "fallback"),
        ("eu.example.com", True, [C], NEVER, "enforce"),
    ]
    assert all(r["enforce"] for r in rules) and warnings == []
    assert notes == ["domain-config[1]: cleartextTrafficPermitted ignored (not pinning)",
                     "domain-config[1]: trust-anchors ignored (fleetpin bundles carry their own CA certificates)"]


def test_import_unpinned_exception_and_override_pins_warn() -> None:
    rules, warnings, notes = imported(f"""
      <base-config><trust-anchors><certificates src="user" overridePins="true"/></trust-anchors></base-config>
      <domain-config><domain includeSubdomains="true">example.com</domain>{pinset(A, B)}
        <domain-config><domain>legacy.example.com</domain><pin-set/></domain-config>
      </domain-config>
      <debug-overrides><trust-anchors><certificates src="user"/></trust-anchors></debug-overrides>""")
    assert [r["host"] for r in rules] == ["example.com"]
    assert warnings == [
        'base-config: trust anchors user have overridePins="true": the app skips the pins for chains ending at '
        "them; fleetpin devices never do",
        "domain-config[1].domain-config[1].domain[1]: legacy.example.com is not pinned in the app, but the policy "
        "pins it with the rule for example.com (a policy cannot exempt a name below an include_subdomains rule)",
    ]
    assert notes == ["debug-overrides ignored (debug builds only)",
                     "domain-config[1].domain-config[1].domain[1]: legacy.example.com has no pins in the app: "
                     "not in the policy"]


def test_import_expires_option_and_strict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nsc.xml"
    path.write_bytes(nsc(f"<domain-config><domain>a.example.com</domain>{pinset(A, B, expiration=None)}</domain-config>"
                         f'<domain-config><domain>b.example.com</domain><pin-set/></domain-config>'
                         f'<domain-config><domain includeSubdomains="true">example.com</domain>{pinset(C)}</domain-config>'))
    code, out, err = run(capsys, "import", "android", str(path), "--expires", "2028-03-01")
    assert code == 0, err
    rules = canonical(parse_policy_toml(out))
    assert rules[0]["expires"] == int(dt.datetime(2028, 3, 1, tzinfo=dt.timezone.utc).timestamp())
    assert "warning: domain-config[2].domain[1]: b.example.com is not pinned in the app" in err
    code, out, err = run(capsys, "import", "android", str(path), "--strict")
    assert code == 1 and out == "" and "--strict: 1 warning(s)" in err
    assert run(capsys, "import", "android", str(path), "--expires", "soon")[0] == 2


@pytest.mark.parametrize(("body", "message"), [
    (f'<domain-config><domain>a.com</domain><pin-set><pin digest="SHA-1">{A}</pin></pin-set></domain-config>',
     "domain-config[1].pin-set.pin[1]: digest 'SHA-1': Android and fleetpin pins are SHA-256 only"),
    ('<domain-config><domain>a.com</domain><pin-set><pin digest="SHA-256">AAAA</pin></pin-set></domain-config>',
     "domain-config[1].pin-set.pin[1]: "),
    (f'<domain-config><domain>a.com</domain>{pinset(A, expiration="2027-13-01")}</domain-config>',
     "domain-config[1].pin-set: expiration '2027-13-01' is not a date yyyy-MM-dd"),
    (f'<domain-config><domain>a.com</domain>{pinset(A)}</domain-config>'
     f'<domain-config><domain includeSubdomains="true">a.com</domain>{pinset(B)}</domain-config>',
     "domain-config[2].domain[1]: a.com has already been specified (domain-config[1].domain[1])"),
    (f"<domain-config>{pinset(A)}</domain-config>", "domain-config[1]: no domain elements in domain-config"),
    (f"<domain-config><domain>a.com</domain>{pinset(A)}{pinset(B)}</domain-config>",
     "domain-config[1]: more than one pin-set"),
    (f"<base-config>{pinset(A)}</base-config>", "base-config: pin-set is allowed in domain-config only"),
    ('<domain-config><domain>a.com</domain><pin-set/></domain-config>', "no pinned domains: nothing to import"),
    (f'<domain-config><domain includeSubdomains="true">com</domain>{pinset(A)}</domain-config>',
     "fleetpin cannot take this: domains[0].host: a wildcard or include_subdomains would cover a whole "
     "top-level domain (domain-config[1].domain[1])"),
])
def test_import_refuses(body: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        import_android(nsc(body), "nsc.xml")
    assert str(info.value).startswith("nsc.xml: " + message)
    assert info.value.exit_code == 2


def test_import_refuses_entities_and_other_documents() -> None:
    xxe = (b'<?xml version="1.0"?>\n<!DOCTYPE n [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
           b"<network-security-config><domain-config><domain>&x;</domain></domain-config></network-security-config>")
    with pytest.raises(UsageError, match="DOCTYPE or ENTITY declarations are not allowed"):
        import_android(xxe, "nsc.xml")
    with pytest.raises(UsageError, match="root element is <plist>"):
        import_android(b"<plist/>", "nsc.xml")
    with pytest.raises(UsageError, match="not well-formed XML"):
        import_android(b"<network-security-config>", "nsc.xml")


def test_import_labels_only_from_same_line_comments() -> None:
    rules, _, _ = imported(f"""<domain-config><domain>a.example.com</domain><pin-set>
        <!-- a comment above is not a label -->
        <pin digest="SHA-256"> {A} </pin> <!-- primary -->
        <pin digest="SHA-256">{B}</pin>
        <!-- nor is one on the next line -->
      </pin-set></domain-config>""")
    assert rules[0]["pins"] == [{"pin": A, "label": "primary"}, {"pin": B}]


def test_import_output_escapes_labels_for_toml() -> None:
    label = 'say "hi" \\ \x7f ünï'
    rules, _, _ = imported(f'<domain-config><domain>a.example.com</domain><pin-set>'
                           f'<pin digest="SHA-256">{A}</pin><!--{label}--></pin-set></domain-config>')
    assert rules[0]["pins"][0]["label"] == label.strip()


def test_example_policy_exports_to_every_format() -> None:
    from fleetpin.bundles.policy import load_policy_toml

    obj = load_policy_toml(Path(__file__).resolve().parents[2] / "examples" / "policy.toml")
    for fmt in ("android", "trustkit", "okhttp"):
        result = export(fmt, obj, "policy.toml")
        assert result.text and all(w.domain in ("*.ota.example.org", "10.0.0.5", "api.example.com",
                                                "telemetry.example.net") for w in result.warnings)
