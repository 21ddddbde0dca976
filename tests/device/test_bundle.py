# pinagent.bundle and pinagent.signers: the signed bundle decoder and the trusted signer set.
# Runs unchanged under CPython and on the MicroPython VM. The bundles come from
# tests/vectors/make_bundle_vectors.py (fixed test keys; the device cannot sign): each case
# changes one thing in a good bundle and names the exact error the decoder must raise.

from support import raises, read_vector, vector_json

from pinagent import bundle as B
from pinagent import signers as S

ERRORS = (
    "BundleTooLarge", "BundleMalformed", "BundleSignatureError", "BundleThresholdError", "BundleWrongFleet",
    "BundleRollback", "BundleSameVersion", "BundleFromFuture", "BundleSchemaError", "BundleSignerKeyError",
)


def _trust(name="signers_prod.json"):
    # as the agent loads the set it holds: without the key checks a NEW set gets (pinagent.signers)
    return S.load_signers(read_vector("bundle/" + name), False)


def _case(name):
    """Decodes one vector with its device state; checks the exact error or the expected fields."""
    c = vector_json("bundle/cases.json")[name]
    data = read_vector("bundle/" + c["file"])
    args = (data, _trust(c["trust"]), c["fleet"], c["installed"], c["now"], c["floor"])
    if c["error"] is not None:
        cls = getattr(B, c["error"], None)
        assert cls is not None, "%s: pinagent.bundle has no %s" % (name, c["error"])
        e = raises(B.BundleError, B.decode_bundle, *args)
        assert type(e) is cls, "%s: expected %s, got %s: %s" % (name, c["error"], type(e).__name__, e.reason)
        assert c["reason"] in e.reason, "%s: reason %r lacks %r" % (name, e.reason, c["reason"])
        return e
    b = B.decode_bundle(*args)
    for key, want in c["expect"].items():
        if key == "domains":
            got = len(b.policy.rules)
        elif key == "ca_certs":
            got = len(b.ca_certs)
        elif key == "key_ids":
            got = [k.hex() for k in b.key_ids]
        elif key == "digest":
            got = b.digest.hex()
        elif key == "signers":
            got = None if b.signers is None else [s.key_id.hex() for s in b.signers.signers]
        else:
            got = getattr(b, key)
        assert got == want, "%s: %s is %r, expected %r" % (name, key, got, want)
    return b


# --- accepted bundles ----------------------------------------------------------------------


def test_good_bundle_decodes_every_field():
    b = _case("good")
    assert b.format == 1
    assert b.size == len(read_vector("bundle/good.bin"))
    rule = b.policy.rules[0]
    assert rule.host == "api.example.com" and rule.labels == ["primary", "backup"]
    assert b.policy.rules[1].enforce is False
    # CA certificates are views into the bundle, not copies, and hold the DER certificate.
    cert = b.ca_certs[0]
    assert isinstance(cert, memoryview)
    assert cert[0] == 0x30
    data = read_vector("bundle/good.bin")
    assert bytes(cert) in data


def test_good_bundle_without_installed_version_or_clock():
    _case("good_no_installed")
    _case("good_clock_unknown")


def test_offline_backup_key_alone_is_enough():
    _case("good_backup_key")


def test_two_signatures_both_verified():
    _case("good_two_keys")


def test_signature_by_unknown_key_is_skipped_when_a_trusted_one_verifies():
    _case("good_unknown_key_skipped")


def test_development_bundle_on_development_device():
    _case("good_development")


def test_issue_time_exactly_at_skew_is_accepted():
    _case("future_within_skew")


def test_future_issue_time_accepted_when_clock_untrusted():
    # Below the time floor or unknown: no trusted time to compare with (module docstring).
    _case("future_clock_below_floor")
    _case("future_clock_unknown")


# --- one refusal per check -----------------------------------------------------------------


def test_too_large():
    _case("too_large")
    _case("header_too_large")


def test_malformed_envelopes():
    for name in ("bad_magic", "truncated", "trailing_byte", "no_signature"):
        _case(name)


def test_newer_format_is_refused_not_guessed():
    _case("format_2")


def test_malformed_headers():
    for name in ("header_unknown_field", "header_version_text", "header_key_ids_mismatch"):
        _case(name)


def test_untrusted_key():
    _case("untrusted_key")


def test_tampered_signature():
    _case("bad_signature")


def test_signature_of_another_bundle():
    _case("signature_of_other_bundle")


def test_every_trusted_signature_must_verify():
    _case("trusted_bad_after_good")


def test_development_bundle_never_on_production_device():
    _case("development_signed_by_production_key")
    _case("development_on_production_device")
    _case("production_on_development_device")


def test_wrong_fleet():
    _case("wrong_fleet")


def test_rollback():
    _case("rollback")


def test_same_version_is_its_own_result():
    e = _case("same_version")
    assert isinstance(e, B.BundleError)


def test_from_future():
    _case("from_future")


def test_payload_schema_errors():
    for name in (
        "payload_unknown_field", "payload_not_json", "payload_no_policy", "policy_bad_pin",
        "policy_unknown_field", "report_out_of_range", "report_unknown_field", "ca_cert_not_der",
        "new_signers_one_key", "new_signers_other_channel",
    ):
        _case(name)


def test_checks_run_in_the_documented_order():
    for name in (
        "order_structure_before_signature", "order_signature_before_fleet", "order_fleet_before_version",
        "order_version_before_time", "order_time_before_schema",
    ):
        _case(name)


def test_every_error_is_a_distinct_bundle_error():
    seen = []
    for name in ERRORS:
        cls = getattr(B, name)
        assert issubclass(cls, B.BundleError)
        assert cls not in seen
        seen.append(cls)


# --- key rotation --------------------------------------------------------------------------


def test_rotation_installs_new_signers_and_retires_the_old_key():
    b = _case("rotate_v6")
    new_set = b.signers
    assert new_set.channel == "production"
    # The set the bundle carries is exactly the one the tests trust afterwards.
    assert S.dump_signers(new_set) == S.dump_signers(_trust("signers_new.json"))
    _case("rotate_v7_by_new_key")
    _case("rotate_v7_by_retired_key")
    _case("rotate_v7_on_old_set")


# --- thresholds (issue 12, item 5): changing the signer set takes the set's rotation threshold ----


def test_rotation_signed_by_one_key_is_refused():
    # One stolen everyday key (or the backup alone) cannot replace the signer set.
    for name in ("rotate_v6_one_key", "rotate_v6_backup_only"):
        e = _case(name)
        assert isinstance(e, B.BundleSignatureError)  # a signature refusal (E_SIGNATURE on the wire)
        assert "signed by 1" in e.reason, e.reason


def test_rotation_signature_by_an_unknown_key_does_not_count():
    e = _case("rotate_v6_one_key_and_stranger")
    assert "signed by 1" in e.reason, e.reason


def test_thresholds_stated_in_the_signer_set():
    trust = _trust("signers_t2.json")
    assert trust.threshold == 2 and trust.rotation_threshold == 3
    _case("threshold2_one_key")
    _case("threshold2_two_keys")
    _case("threshold2_rotation_two_keys")
    _case("threshold2_rotation_three_keys")


def test_a_key_and_its_negation_count_once():
    # A set written by an older agent may hold both; they are one private key, so one vote.
    trust = _trust("signers_negated.json")
    assert len(trust.signers) == 3
    e = _case("negated_pair_rotation")
    assert "signed by 1" in e.reason, e.reason


# --- signer keys (issue 12, item 6): a rotation cannot install a key that locks the fleet out ----


def test_new_signer_keys_are_validated_at_install():
    for name, signer_error in (
        ("new_signers_off_curve", "SignerKeyInvalid"), ("new_signers_zero_point", "SignerKeyInvalid"),
        ("new_signers_x_above_p", "SignerKeyInvalid"), ("new_signers_y_is_p", "SignerKeyInvalid"),
        ("new_signers_negated_pair", "SignerKeyRepeated"),
    ):
        e = _case(name)
        assert isinstance(e, B.BundleSchemaError)  # E_BUNDLE on the wire
        assert signer_error in e.reason, (name, e.reason)


# --- structure without signatures (cheap, so exhaustive) -----------------------------------


def test_every_truncation_is_malformed_and_nothing_else_leaks():
    data = read_vector("bundle/good.bin")
    for n in range(len(data)):
        e = raises(B.BundleError, B.parse_envelope, data[:n])
        assert type(e) is B.BundleMalformed, "prefix %d: %s" % (n, type(e).__name__)


def test_parse_envelope_sections():
    data = read_vector("bundle/good_two_keys.bin")
    env = B.parse_envelope(data)
    assert env.header["version"] == 5
    assert len(env.certs) == 1 and len(env.sigs) == 2
    assert env.signed_len == len(data) - 1 - 2 * 72
    assert env.payload[0] == ord("{")


def test_decode_unverified_fills_report_defaults():
    header = b'{"channel":"production","fleet":"f","format":1,"issued":0,"key_ids":["0001020304050607"],"version":1}'
    payload = b'{"policy":{"domains":[]}}'
    data = B.encode_bundle(B.encode_signed(header, payload, []), [(bytes(range(8)), bytes(64))])
    b = B.decode_unverified(data)
    assert b.report == B.REPORT_DEFAULTS
    assert b.signers is None and b.ca_certs == []
    # ...and a zero signature never verifies, whatever the device trusts.
    e = raises(B.BundleError, B.decode_bundle, data, _trust(), "f", 0, None, 0)
    assert type(e) is B.BundleSignatureError


# --- signer sets ---------------------------------------------------------------------------


def _set_obj():
    import json

    return json.loads(read_vector("bundle/signers_prod.json"))


def test_signer_set_loads_and_round_trips():
    s = _trust()
    assert s.channel == "production"
    assert s.threshold == 1 and s.rotation_threshold == 2  # not stated: the defaults
    assert [x.name for x in s.signers] == ["everyday", "backup"]
    for x in s.signers:
        assert s.get(memoryview(x.key_id)) is x
        assert S.key_id_of_point(x.point) == x.key_id
    assert S.dump_signers(s) == read_vector("bundle/signers_prod.json")


def test_signer_set_needs_two_keys():
    obj = _set_obj()
    obj["signers"] = obj["signers"][:1]
    e = raises(S.SignerSetError, S.signers_from_obj, obj)
    assert "at least 2" in e.reason


def test_signer_set_refuses_mislabelled_id():
    obj = _set_obj()
    obj["signers"][0]["id"] = obj["signers"][1]["id"]
    e = raises(S.SignerSetError, S.signers_from_obj, obj)
    assert "signers[0].id" in e.reason


def test_signer_set_refuses_duplicates_unknown_fields_and_bad_hex():
    obj = _set_obj()
    obj["signers"][1] = obj["signers"][0]
    e = raises(S.SignerSetError, S.signers_from_obj, obj)
    assert type(e) is S.SignerKeyRepeated and "same key" in e.reason
    obj = _set_obj()
    obj["signers"][0]["role"] = "x"
    assert "unknown field role" in raises(S.SignerSetError, S.signers_from_obj, obj).reason
    obj = _set_obj()
    obj["signers"][0]["key"] = obj["signers"][0]["key"].upper()
    assert "hex" in raises(S.SignerSetError, S.signers_from_obj, obj).reason
    obj = _set_obj()
    obj["channel"] = "staging"
    assert "channel" in raises(S.SignerSetError, S.signers_from_obj, obj).reason
    obj = _set_obj()
    obj["format"] = 2
    assert "format" in raises(S.SignerSetError, S.signers_from_obj, obj).reason
    assert "JSON" in raises(S.SignerSetError, S.load_signers, b"{").reason
    assert "not an object" in raises(S.SignerSetError, S.signers_from_obj, []).reason
