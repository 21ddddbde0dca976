"""fleetpin.bundles.policy: the human policy file -> the device's policy JSON object."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

import pytest

from fleetpin.bundles.policy import load_policy_toml, parse_policy_toml
from fleetpin.errors import UsageError
from pinagent.policy_load import policy_from_obj

REPO = Path(__file__).resolve().parents[2]
PIN_A = base64.b64encode(bytes([1]) * 32).decode()
PIN_B = base64.b64encode(bytes([2]) * 32).decode()
JAN_2027 = int(dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc).timestamp())


def _toml(domains: str, defaults: str = 'expires = 2027-01-01') -> str:
    return f"[defaults]\n{defaults}\n\n{domains}"


def _domain(host: str = "api.example.com", extra: str = "") -> str:
    return (f'[[domain]]\nhost = "{host}"\n{extra}\n'
            f'pins = [{{ pin = "sha256/{PIN_A}", label = "primary" }}, {{ pin = "{PIN_B}" }}]\n')


def _error(text: str) -> UsageError:
    with pytest.raises(UsageError) as info:
        parse_policy_toml(text, "fleet.toml")
    assert info.value.exit_code == 2
    assert str(info.value).startswith("fleet.toml: ")
    return info.value


def test_example_policy_loads_and_is_valid() -> None:
    obj = load_policy_toml(REPO / "examples" / "policy.toml")
    policy = policy_from_obj(obj)
    assert [r.host for r in policy.rules] == ["api.example.com", "telemetry.example.net", "*.ota.example.org",
                                              "10.0.0.5"]
    assert obj["unpinned"] == "ca"
    assert all(len(r.pins) >= 2 for r in policy.rules)


def test_defaults_are_inherited_and_overridden() -> None:
    obj = parse_policy_toml(_toml(
        _domain("a.example.com") + _domain("b.example.com", 'enforce = false\non_expiry = "enforce"'),
        defaults='enforce = true\nexpires = 2027-01-01\non_expiry = "fallback"\nunpinned = "block"',
    ))
    a, b = obj["domains"]
    assert (a["enforce"], a["on_expiry"], a["expires"]) == (True, "fallback", JAN_2027)
    assert (b["enforce"], b["on_expiry"], b["expires"]) == (False, "enforce", JAN_2027)
    assert obj["unpinned"] == "block"
    assert a["pins"][0] == {"pin": "sha256/" + PIN_A, "label": "primary"}


def test_device_defaults_apply_when_nothing_is_said() -> None:
    obj = parse_policy_toml(_toml(_domain()))
    assert "unpinned" not in obj and "enforce" not in obj["domains"][0]
    rule = policy_from_obj(obj).rules[0]
    assert rule.enforce is True and rule.on_expiry == "fallback" and rule.include_subdomains is False


def test_plain_string_pins() -> None:
    text = f'[[domain]]\nhost = "a.example.com"\nexpires = 2027-01-01\npins = ["sha256/{PIN_A}", "{PIN_B}"]\n'
    assert parse_policy_toml(text)["domains"][0]["pins"] == [{"pin": "sha256/" + PIN_A}, {"pin": PIN_B}]


def test_no_domains_is_a_valid_empty_policy() -> None:
    assert parse_policy_toml("") == {"domains": []}


def test_expires_date_is_midnight_utc_and_datetime_offset_is_converted() -> None:
    obj = parse_policy_toml(_toml(
        _domain("a.example.com", "expires = 2027-01-01T02:00:00+02:00")
        + _domain("b.example.com", "expires = 2027-01-01T00:00:00Z")
        + _domain("c.example.com", "expires = 2027-01-01T00:00:01.9Z")
    ))
    assert [d["expires"] for d in obj["domains"]] == [JAN_2027, JAN_2027, JAN_2027 + 1]
    assert parse_policy_toml(_toml(_domain()))["domains"][0]["expires"] == JAN_2027


@pytest.mark.parametrize("value", ["2027-01-01T00:00:00", "1798761600", '"2027-01-01"', "12:00:00"])
def test_expires_must_be_a_date_or_zoned_datetime(value: str) -> None:
    e = _error(_toml(_domain(extra=f"expires = {value}")))
    assert "domain[0].expires" in str(e)
    assert e.hint and "offset" in e.hint


def test_naive_default_expires_names_defaults() -> None:
    e = _error(_toml(_domain(), defaults="expires = 2027-01-01T00:00:00"))
    assert "defaults.expires: datetime without a time zone" in str(e)


def test_expires_missing_everywhere() -> None:
    e = _error(_toml(_domain(), defaults=""))
    assert "fleet.toml: domain[0].expires: missing" == str(e)
    assert e.hint and "[defaults]" in e.hint


def test_unknown_top_level_table_refused() -> None:
    e = _error(_toml(_domain()) + '\n[report]\nurl = "x"\n')
    assert "fleet.toml: report: unknown field" == str(e)


def test_unknown_defaults_key_refused() -> None:
    e = _error(_toml(_domain(), defaults="expires = 2027-01-01\ninclude_subdomain = true"))
    assert "defaults.include_subdomain: unknown field" in str(e)


def test_unknown_domain_key_refused() -> None:
    e = _error(_toml(_domain() + _domain("b.example.com", "includeSubdomains = true")))
    assert "domain[1].includeSubdomains: unknown field" in str(e)
    assert e.hint and "include_subdomains" in e.hint


def test_unknown_pin_key_refused_by_the_device_rules() -> None:
    text = _toml(_domain()).replace('label = "primary"', 'lable = "primary"')
    assert "domain[0].pins[0].lable: unknown field" in str(_error(text))


def test_bad_pin_names_the_domain_and_pin() -> None:
    text = _toml(_domain() + _domain("b.example.com").replace(PIN_B, PIN_B[:-2] + "=="))
    e = _error(text)
    assert str(e).startswith("fleet.toml: domain[1].pins[1].pin: ")
    assert e.hint and "'b.example.com'" in e.hint


def test_invalid_host_names_the_field() -> None:
    e = _error(_toml(_domain("a.*.example.com")))
    assert str(e).startswith("fleet.toml: domain[0].host: ")
    assert "wildcard" in str(e)


def test_duplicate_host_names_both_domains_in_file_terms() -> None:
    e = _error(_toml(_domain("a.example.com") + _domain("A.example.com.")))
    assert "domain[1].host: covers the same names as domain[0] (a.example.com)" in str(e)


def test_invalid_default_names_defaults() -> None:
    e = _error(_toml(_domain(), defaults='expires = 2027-01-01\nenforce = "yes"'))
    assert "fleet.toml: defaults.enforce (used by domain[0]): not a boolean" == str(e)
    e = _error(_toml(_domain(), defaults='expires = 2027-01-01\nunpinned = "allow"'))
    assert str(e).startswith("fleet.toml: defaults.unpinned: must be one of")


def test_clock_lead_is_a_policy_wide_setting_in_defaults() -> None:
    obj = parse_policy_toml(_toml(_domain(), defaults="expires = 2027-01-01\nclock_lead = 86400"))
    assert obj["clock_lead"] == 86400 and "clock_lead" not in obj["domains"][0]
    assert policy_from_obj(obj).clock_lead == 86400
    assert "clock_lead" not in parse_policy_toml(_toml(_domain()))
    e = _error(_toml(_domain(), defaults="expires = 2027-01-01\nclock_lead = 31536000"))
    assert str(e).startswith("fleet.toml: defaults.clock_lead: not an integer in 0..2592000")


def test_invalid_domain_value_names_the_domain() -> None:
    e = _error(_toml(_domain(extra='on_expiry = "ignore"')))
    assert str(e).startswith("fleet.toml: domain[0].on_expiry: must be one of")


def test_wrong_table_shapes() -> None:
    assert "domain: must be an array of tables" in str(_error('domain = "x"'))
    assert "defaults: must be a table" in str(_error("defaults = 1"))
    assert "domain[0]: must be a table" in str(_error("domain = [1]"))


def test_toml_syntax_error() -> None:
    assert "not valid TOML" in str(_error("[[domain]\nhost = 1"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as info:
        load_policy_toml(tmp_path / "nope.toml")
    assert "nope.toml: cannot read policy" in str(info.value)


def test_load_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "prod.toml"
    path.write_text(_toml(_domain(extra="enforce = 1")))
    with pytest.raises(UsageError) as info:
        load_policy_toml(path)
    assert str(info.value) == "prod.toml: domain[0].enforce: not a boolean"
