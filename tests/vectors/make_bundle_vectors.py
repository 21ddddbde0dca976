"""Generates the signed-bundle test vectors under tests/vectors/bundle/ (device/pinagent/bundle.py).

    .venv/bin/python tests/vectors/make_bundle_vectors.py

The device has no signer, so every bundle the device tests decode is made here, with fixed test
keys (private scalars derived from their names: NEVER use them for anything else) and RFC 6979
deterministic signatures with low s (fleetpin.pki.signing): running the script again gives the
same bytes. The CA certificate is self-signed with a fixed key, fixed dates and a deterministic
signature too.

Files:
  signers_prod.json   production signer set: keys "everyday" (A) and "backup" (B)
  signers_dev.json    development signer set: "dev1", "dev2"
  signers_new.json    the production set a rotation bundle installs: "next" (C), "next-backup" (E)
  signers_t2.json     A, B and C, stating threshold 2 and rotation_threshold 3
  signers_negated.json  A, B and A's negation (x, p - y): a set only an older agent could have
                      stored; the device loads it without key checks and counts the pair once
  <case>.bin          one bundle per case (stolen_top, recover_v6_*, rotate_v6_retires_backup:
                      the reset after a stolen key, tests/device/test_agent_trust.py)
  cases.json          {case: {"file", "trust", "fleet", "installed", "now", "floor", "error",
                      "reason" (substring of the error's reason) or "expect" (fields of the
                      decoded Bundle)}}

The good bundle is built by the host tool's own code (fleetpin.bundles.build.build_bundle from a
policy TOML, with LocalKeySigner). Every other case changes ONE thing and re-signs where the
point is that the signature is fine and a later check must catch it; the low-level cases use
pinagent.bundle.encode_signed/encode_bundle directly to make what the host tool refuses to make
(a development bundle signed with a production key, unknown fields, a newer format...).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import pathlib
import sys
import tempfile
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetpin.bundles.build import BundleSource, build_bundle, canonical_json, load_bundle_source
from fleetpin.pki import keys
from fleetpin.pki.signing import LocalKeySigner
from pinagent import bundle as B

OUT = pathlib.Path(__file__).resolve().parent / "bundle"
FLEET = "acme-sensors"
NOW = 1767225600  # 2026-01-01T00:00:00Z: the device clock in the tests
ISSUED = NOW - 3600
EXPIRES = 1798761600  # 2027-01-01
PIN_PRIMARY = "sha256/oSrp/5XXFZvdPgB/zusqKsySlTDQS6TMwLxYGO7OEfE="
PIN_BACKUP = "sha256/STrzqpZCtgNeLswOo+p7u+rUjwK0QieED7THMpfQnGs="
# P-256: field prime p, order n, curve constant b (y^2 = x^3 - 3x + b mod p).
P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
CURVE_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B


def fixed_key(name: str) -> ec.EllipticCurvePrivateKey:
    scalar = int.from_bytes(hashlib.sha256(b"fleetpin test key " + name.encode()).digest(), "big")
    return ec.derive_private_key(scalar % (2**255), ec.SECP256R1())


def signer(name: str, role: str = "production") -> LocalKeySigner:
    key = fixed_key(name)
    return LocalKeySigner(key, keys.public_info(key.public_key(), name, role))


def negated_signer(s: LocalKeySigner, name: str) -> LocalKeySigner:
    key = ec.derive_private_key(N - s.key.private_numbers().private_value, ec.SECP256R1())
    return LocalKeySigner(key, keys.public_info(key.public_key(), name, s.info.role))


A, BK = signer("everyday"), signer("backup")
C, E = signer("next"), signer("next-backup")
X = signer("stranger")  # a production key no device trusts
# The everyday key's negation: private key n - d, public point (x, p - y). The same key as A to
# anyone who holds d, under another id; a signer set must never hold both (two ids, one key).
A_NEG = negated_signer(A, "everyday-negated")
D1, D2 = signer("dev1", "development"), signer("dev2", "development")


def ca_cert_pem() -> bytes:
    key = fixed_key("test-root-ca")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetpin test root CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc))
        .not_valid_after(dt.datetime(2035, 1, 1, tzinfo=dt.timezone.utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256(), ecdsa_deterministic=True)
    )
    return cert.public_bytes(serialization.Encoding.PEM)


POLICY_TOML = f"""
[defaults]
expires = 2027-01-01
on_expiry = "fallback"

[[domain]]
host = "api.example.com"
pins = [{{ pin = "{PIN_PRIMARY}", label = "primary" }}, {{ pin = "{PIN_BACKUP}", label = "backup" }}]

[[domain]]
host = "*.ota.example.org"
enforce = false
pins = [{{ pin = "{PIN_PRIMARY}", label = "primary" }}, {{ pin = "{PIN_BACKUP}", label = "backup" }}]

[bundle]
ca_certs = ["root.pem"]

[report]
max_entries = 16
"""


def good_source() -> BundleSource:
    with tempfile.TemporaryDirectory() as tmp:
        d = pathlib.Path(tmp)
        (d / "root.pem").write_bytes(ca_cert_pem())
        (d / "policy.toml").write_text(POLICY_TOML)
        return load_bundle_source(d / "policy.toml")


def signer_set(*signers: LocalKeySigner, threshold: int | None = None, rotation_threshold: int | None = None) -> bytes:
    obj = keys.signer_set_obj([s.info for s in signers])
    # Thresholds at their defaults (1 and 2) are left out, as the host and the device write them.
    if threshold is not None:
        obj["threshold"] = threshold
    if rotation_threshold is not None:
        obj["rotation_threshold"] = rotation_threshold
    return canonical_json(obj)


def small_x_point() -> tuple[int, int]:
    """The curve point with the smallest x >= 1 (y the smaller root): x + p still fits 32 bytes, so
    04 || x+p || y is a point that satisfies the curve equation mod p with a coordinate >= p."""
    x = 1
    while True:
        rhs = (x * x * x - 3 * x + CURVE_B) % P
        y = pow(rhs, (P + 1) // 4, P)  # p = 3 mod 4
        if y * y % P == rhs:
            return x, min(y, P - y)
        x += 1


def entry(point: bytes, name: str) -> dict[str, str]:
    from pinagent.signers import key_id_of_point

    return {"id": key_id_of_point(point).hex(), "key": point.hex(), "name": name}


def bad_signer_sets(good_set: dict[str, Any]) -> list[tuple[str, dict[str, Any], str]]:
    """(case name, signer set, reason substring): good_set with its first key replaced by (or, for
    the negation, joined by) a key the device must refuse; ids recomputed so only the key is wrong."""
    first = bytes.fromhex(good_set["signers"][0]["key"])
    x, y = int.from_bytes(first[1:33], "big"), int.from_bytes(first[33:], "big")
    sx, sy = small_x_point()

    def pt(px: int, py: int) -> bytes:
        return b"\x04" + px.to_bytes(32, "big") + py.to_bytes(32, "big")

    def replaced(point: bytes) -> dict[str, Any]:
        obj = json.loads(json.dumps(good_set))
        obj["signers"][0] = entry(point, "bad")
        return obj

    negated = json.loads(json.dumps(good_set))
    negated["signers"].append(entry(pt(x, P - y), "negated"))
    return [
        ("off_curve", replaced(pt(x, (y + 1) % P)), "not on the curve"),
        ("zero_point", replaced(bytes([4]) + bytes(64)), "not on the curve"),
        # x + p is x on the curve (mod p), but not a canonical encoding; y = p is never one
        ("x_above_p", replaced(pt(sx + P, sy)), "below p"),
        ("y_is_p", replaced(pt(x, P)), "below p"),
        ("negated_pair", negated, "negation"),
    ]


def raw(header: dict[str, Any], payload: Any, certs: list[bytes], sign_with: list[LocalKeySigner],
        key_ids: list[str] | None = None) -> bytes:
    """Low-level: encode and sign exactly what is given (no host-side checks)."""
    h = dict(header, key_ids=key_ids if key_ids is not None else [s.info.key_id for s in sign_with])
    p = payload if isinstance(payload, bytes) else canonical_json(payload)
    signed = B.encode_signed(canonical_json(h), p, certs)
    digest = hashlib.sha256(signed).digest()
    return B.encode_bundle(signed, [(s.info.key_id_bytes, s.sign_digest(digest)) for s in sign_with])


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for old in OUT.glob("*.bin"):
        old.unlink()
    (OUT / "signers_prod.json").write_bytes(signer_set(A, BK))
    (OUT / "signers_dev.json").write_bytes(signer_set(D1, D2))
    new_set_bytes = signer_set(C, E)
    (OUT / "signers_new.json").write_bytes(new_set_bytes)
    new_set = json.loads(new_set_bytes)
    (OUT / "signers_t2.json").write_bytes(signer_set(A, BK, C, threshold=2, rotation_threshold=3))
    negated = json.loads(signer_set(A, BK))
    negated["signers"].append({"id": A_NEG.info.key_id, "key": A_NEG.info.point.hex(), "name": "everyday-negated"})
    (OUT / "signers_negated.json").write_bytes(canonical_json(negated))

    src = good_source()
    header = {"format": 1, "fleet": FLEET, "version": 5, "issued": ISSUED, "channel": "production"}
    payload = {"policy": src.policy, "report": src.report}
    certs = src.ca_certs
    cases: dict[str, dict[str, Any]] = {}

    def case(name: str, data: bytes, error: str | None = None, reason: str = "", trust: str = "signers_prod.json",
             installed: int | None = 4, now: int | None = NOW, floor: int = NOW - 86400, fleet: str = FLEET,
             expect: dict[str, Any] | None = None, same_as: str | None = None) -> None:
        """One case; `same_as` reuses that case's bundle file with other device state."""
        if same_as is None:
            (OUT / (name + ".bin")).write_bytes(data)
        cases[name] = {"file": (same_as or name) + ".bin", "trust": trust, "fleet": fleet, "installed": installed, "now": now,
                       "floor": floor, "error": error, "reason": reason, "expect": expect}

    def build(**kw: Any) -> bytes:
        args: dict[str, Any] = dict(fleet=FLEET, version=5, issued=ISSUED, development=False, signers=[A])
        args.update(kw)
        return build_bundle(src, **args)

    def flip_last(data: bytes) -> bytes:
        return data[:-1] + bytes([data[-1] ^ 1])

    good = build()
    assert good == raw(header, payload, certs, [A]), "the host builder and the raw encoder disagree"
    good_fields = {"fleet": FLEET, "version": 5, "issued": ISSUED, "channel": "production", "domains": 2,
                   "ca_certs": 1, "key_ids": [A.info.key_id], "report": {"enabled": True, "max_entries": 16,
                   "max_bytes": 4096}, "signers": None, "digest": hashlib.sha256(good[: -73]).hexdigest()}
    case("good", good, expect=good_fields)
    case("good_no_installed", good, installed=None, expect={"version": 5}, same_as="good")
    case("good_clock_unknown", good, now=None, expect={"version": 5}, same_as="good")
    case("good_backup_key", build(signers=[BK]), expect={"key_ids": [BK.info.key_id]})
    case("good_two_keys", build(signers=[A, BK]), expect={"key_ids": [A.info.key_id, BK.info.key_id]})
    case("good_unknown_key_skipped", build(signers=[X, A]), expect={"key_ids": [X.info.key_id, A.info.key_id]})
    case("good_development", build(development=True, signers=[D1]), trust="signers_dev.json",
         expect={"channel": "development"})

    # 1. size limits
    case("too_large", good + bytes(B.MAX_BUNDLE + 1 - len(good)), "BundleTooLarge", "32768")
    big = bytearray(good)
    big[4:6] = (B.MAX_HEADER + 1).to_bytes(2, "big")
    case("header_too_large", bytes(big), "BundleTooLarge", "header")
    # 2. envelope structure
    case("bad_magic", b"FPB2" + good[4:], "BundleMalformed", "magic")
    case("truncated", good[:-1], "BundleMalformed", "signature block")
    case("trailing_byte", good + b"\x00", "BundleMalformed", "signature block")
    case("no_signature", good[:-73] + b"\x00", "BundleMalformed", "no signature")
    case("format_2", raw(dict(header, format=2), payload, certs, [A]), "BundleMalformed", "format 2")
    case("header_unknown_field", raw(dict(header, note="x"), payload, certs, [A]), "BundleMalformed", "note")
    case("header_version_text", raw(dict(header, version="5"), payload, certs, [A]), "BundleMalformed", "version")
    case("header_key_ids_mismatch", raw(header, payload, certs, [A], key_ids=[BK.info.key_id]),
         "BundleMalformed", "key_ids")
    # 3. signatures
    case("untrusted_key", build(signers=[X]), "BundleSignatureError", "not signed by a trusted key")
    case("bad_signature", flip_last(good), "BundleSignatureError", "does not verify")
    other = raw(dict(header, version=6), payload, certs, [A])
    case("signature_of_other_bundle", good[:-64] + other[-64:], "BundleSignatureError", "does not verify")
    case("trusted_bad_after_good", flip_last(build(signers=[A, BK])), "BundleSignatureError", "does not verify")
    case("development_signed_by_production_key", raw(dict(header, channel="development"), payload, certs, [A]),
         "BundleSignatureError", "development bundle")
    case("development_on_production_device", build(development=True, signers=[D1]), "BundleSignatureError",
         "development bundle")
    case("production_on_development_device", good, "BundleSignatureError", "production bundle",
         trust="signers_dev.json", same_as="good")
    # 4. fleet
    case("wrong_fleet", build(fleet="other-fleet"), "BundleWrongFleet", "other-fleet")
    # 5. version
    case("rollback", build(version=3), "BundleRollback", "older")
    case("same_version", good, "BundleSameVersion", "already installed", installed=5, same_as="good")
    # 6. issue time (skew: B.CLOCK_SKEW)
    case("from_future", build(issued=NOW + B.CLOCK_SKEW + 1), "BundleFromFuture", "ahead")
    case("future_within_skew", build(issued=NOW + B.CLOCK_SKEW), expect={"issued": NOW + B.CLOCK_SKEW})
    case("future_clock_below_floor", b"", now=NOW - 86400 * 2, expect={"issued": NOW + B.CLOCK_SKEW + 1},
         same_as="from_future")
    case("future_clock_unknown", b"", now=None, expect={"issued": NOW + B.CLOCK_SKEW + 1}, same_as="from_future")
    # 7. payload schema
    case("payload_unknown_field", raw(header, dict(payload, extra=1), certs, [A]), "BundleSchemaError", "extra")
    case("payload_not_json", raw(header, b"{not json", certs, [A]), "BundleSchemaError", "not a JSON object")
    case("payload_no_policy", raw(header, {"report": {}}, certs, [A]), "BundleSchemaError", "policy missing")
    bad_policy = json.loads(json.dumps(src.policy))
    bad_policy["domains"][0]["pins"][0]["pin"] = "sha256/AAAA"
    case("policy_bad_pin", raw(header, dict(payload, policy=bad_policy), certs, [A]), "BundleSchemaError",
         "domains[0].pins[0].pin")
    unknown_policy = json.loads(json.dumps(src.policy))
    unknown_policy["domains"][1]["max_age"] = 1
    case("policy_unknown_field", raw(header, dict(payload, policy=unknown_policy), certs, [A]),
         "BundleSchemaError", "max_age")
    case("report_out_of_range", raw(header, dict(payload, report={"max_entries": 0}), certs, [A]),
         "BundleSchemaError", "report.max_entries")
    case("report_unknown_field", raw(header, dict(payload, report={"url": "http://x"}), certs, [A]),
         "BundleSchemaError", "report: unknown field url")
    case("ca_cert_not_der", raw(header, payload, [b"\x30\x03\x02\x01\x01"], [A]), "BundleSchemaError",
         "CA certificate 0")
    one_key = json.loads(new_set_bytes)
    one_key["signers"] = one_key["signers"][:1]
    case("new_signers_one_key", raw(header, dict(payload, signers=one_key), certs, [A]), "BundleSchemaError",
         "at least 2")
    dev_set = json.loads((OUT / "signers_dev.json").read_bytes())
    case("new_signers_other_channel", raw(header, dict(payload, signers=dev_set), certs, [A]), "BundleSchemaError",
         "cannot install development signers")

    # The order of the checks: each bundle fails two checks; the earlier one must be reported.
    case("order_structure_before_signature", raw(dict(header, note="x"), payload, certs, [X]), "BundleMalformed", "note")
    case("order_signature_before_fleet", build(signers=[X], fleet="other-fleet"), "BundleSignatureError", "trusted")
    case("order_fleet_before_version", build(fleet="other-fleet", version=3), "BundleWrongFleet", "other-fleet")
    case("order_version_before_time", build(version=3, issued=NOW + 86400), "BundleRollback", "older")
    case("order_time_before_schema", raw(dict(header, issued=NOW + 86400), dict(payload, extra=1), certs, [A]),
         "BundleFromFuture", "ahead")

    # Key rotation: v6 (signed by the everyday AND the backup key: the rotation threshold of the
    # set, 2 by default) installs {next, next-backup}; v7 by "next" verifies against the new set
    # only; v7 by the retired everyday key no longer does.
    case("rotate_v6", build(version=6, new_signers=new_set, signers=[A, BK]), installed=5,
         expect={"version": 6, "signers": [C.info.key_id, E.info.key_id]})
    # One stolen key cannot rotate the other away: a rotation signed by one key of the set, or by
    # one key of the set and one the device does not know, is refused.
    case("rotate_v6_one_key", raw(dict(header, version=6), dict(payload, signers=new_set), certs, [A]),
         "BundleThresholdError", "needs 2", installed=5)
    case("rotate_v6_backup_only", raw(dict(header, version=6), dict(payload, signers=new_set), certs, [BK]),
         "BundleThresholdError", "needs 2", installed=5)
    case("rotate_v6_one_key_and_stranger", raw(dict(header, version=6), dict(payload, signers=new_set), certs, [A, X]),
         "BundleThresholdError", "needs 2", installed=5)
    # A set stating its thresholds: ordinary bundles need 2 of its 3 keys, rotations all 3.
    case("threshold2_one_key", good, "BundleThresholdError", "needs 2", trust="signers_t2.json", same_as="good")
    case("threshold2_two_keys", b"", trust="signers_t2.json", expect={"key_ids": [A.info.key_id, BK.info.key_id]},
         same_as="good_two_keys")
    case("threshold2_rotation_two_keys", b"", "BundleThresholdError", "needs 3", trust="signers_t2.json",
         installed=5, same_as="rotate_v6")
    case("threshold2_rotation_three_keys", build(version=6, new_signers=new_set, signers=[A, BK, C]),
         trust="signers_t2.json", installed=5, expect={"signers": [C.info.key_id, E.info.key_id]})

    # Signer keys that would lock the fleet out (or defeat the two-key rule) are refused at install,
    # each with its named error; the bundle is otherwise good and signed by the rotation threshold.
    for bad_name, bad_set, reason in bad_signer_sets(new_set):
        case("new_signers_" + bad_name, raw(dict(header, version=6), dict(payload, signers=bad_set), certs, [A, BK]),
             "BundleSignerKeyError", reason, installed=5)
    # A set already in flash holding a key and its negation (installed by an older agent): the
    # device loads it (refusing it now would brick the board) but counts the pair as ONE key.
    case("negated_pair_rotation", raw(dict(header, version=6), dict(payload, signers=new_set), certs, [A, A_NEG]),
         "BundleThresholdError", "needs 2", trust="signers_negated.json", installed=5)
    case("rotate_v7_by_new_key", build(version=7, signers=[C]), installed=6, trust="signers_new.json",
         expect={"version": 7, "key_ids": [C.info.key_id]})
    case("rotate_v7_by_retired_key", build(version=7, signers=[A]), "BundleSignatureError", "not signed by a trusted key",
         installed=6, trust="signers_new.json")
    case("rotate_v7_on_old_set", b"", "BundleSignatureError", "not signed by a trusted key", installed=6,
         same_as="rotate_v7_by_new_key")

    # A stolen key (pinagent.store, "A stolen key"): the thief signs the highest version there is
    # with the everyday key alone; a rotation signed at the rotation threshold that retires the
    # everyday key resets the version record (the store decides: below the installed version the
    # decoder holds the refusal back only when asked, below_ok); one that retires only the backup
    # key, which did not sign the thief's bundle, resets nothing.
    case("stolen_top", build(version=2**31 - 1, signers=[A]), installed=5, expect={"version": 2**31 - 1})
    retire_a = json.loads(signer_set(BK, C))
    case("recover_v6_retires_everyday", build(version=6, new_signers=retire_a, signers=[A, BK]), installed=5,
         expect={"version": 6, "signers": [BK.info.key_id, C.info.key_id]})
    case("recover_v6_below_installed", b"", "BundleRollback", "older", installed=2**31 - 1,
         same_as="recover_v6_retires_everyday")
    retire_b = json.loads(signer_set(A, C))
    case("rotate_v6_retires_backup", build(version=6, new_signers=retire_b, signers=[A, BK]), installed=5,
         expect={"version": 6, "signers": [A.info.key_id, C.info.key_id]})

    (OUT / "cases.json").write_text(json.dumps(cases, sort_keys=True, separators=(",", ":")) + "\n")
    print(f"{len(cases)} cases, {len(list(OUT.glob('*.bin')))} bundles in {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
