"""Signed pin bundles: the binary envelope and the device's decoder.

A bundle is what a field update installs: the pin policy, the CA certificates its domains
chain to and the report settings, under a header saying which fleet, which version, when it
was issued and which keys signed it, and the signatures over the exact bytes.

Envelope (all integers big-endian; format 1):

    offset     size
    0          4      magic b"FPB1"
    4          2      H = header length, 2..MAX_HEADER
    6          H      header: canonical JSON object (below)
    6+H        4      P = payload length, 2..MAX_PAYLOAD
    10+H       P      payload: canonical JSON object (below)
    10+H+P     1      C = CA certificate count, 0..MAX_CERTS
                      C times: u16 L (1..MAX_CERT), then L bytes of certificate DER
    S          1      N = signature count, 1..MAX_SIGS
                      N times: 8-byte key id, then 64-byte ECDSA P-256 signature r||s
                      nothing may follow; the whole bundle is at most MAX_BUNDLE bytes

    signed bytes = data[0:S] (everything before the signature count); digest = SHA-256 of them;
    every signature is over that one digest (ECDSA P-256 with SHA-256).

    header  = {"format": 1, "fleet": "<1..64 chars>", "version": <int 1..2^31-1>,
               "issued": <POSIX seconds UTC>, "channel": "production" | "development",
               "key_ids": ["<16 hex chars>", ...]}     the signature block's key ids, in order
    payload = {"policy": <pinagent.policy JSON>,
               "report": {"enabled": true, "max_entries": 32, "max_bytes": 4096},  optional,
                                                       each field optional (these defaults)
               "signers": <pinagent.signers set>}      optional: replaces the trusted signer set

Canonical JSON = json.dumps(sort_keys=True, separators=(",", ":")), UTF-8, written by the host
tool. The device never re-encodes anything: it hashes and verifies the bytes it received. CA
certificates are raw DER in their own section so the device keeps them as memoryviews over the
bundle (no base64, no copy). Signing the key ids in the header means no signature can be
added, dropped or relabelled without breaking the signature.

decode_bundle checks, in this order, and raises one named error each (all BundleError):

    1. BundleTooLarge       the input exceeds MAX_BUNDLE, or a section exceeds its limit
                            (header, payload, certificate length or count, signature count)
    2. BundleMalformed      the envelope does not add up: magic, lengths, trailing bytes; the
                            header is not a JSON object of exactly the fields above with valid
                            types; a format other than FORMAT (a newer format is refused, not
                            guessed at); header key ids differ from the signature block's
    3. BundleSignatureError the bundle's channel is not the channel of the trusted signer set
                            (a development bundle on a production device); no signature is by
                            a trusted key; or a signature by a trusted key does not verify.
                            Signatures by keys the device does not know are skipped (a bundle
                            may be signed by an old and a new key during a rotation); at least
                            one trusted signature is needed and every trusted one must verify.
       BundleThresholdError (a BundleSignatureError) fewer distinct trusted keys signed than the
                            set's `threshold` (pinagent.signers; default 1). A key and its
                            negation are one key here (counted by their x coordinate).
    4. BundleWrongFleet     header fleet != the device's fleet
    5. BundleRollback       version < installed_version
       BundleSameVersion    version == installed_version: nothing to do (report it as a no-op)
                            (with below_ok, a bundle carrying a new signer set is checked to the
                            end and returned with this refusal held back: pinagent.store decides
                            whether it resets the version record, "A stolen key" there)
    6. BundleFromFuture     the clock is trusted (now is not None and now >= time_floor) and
                            issued > now + CLOCK_SKEW. With an untrusted clock (unset, or below
                            the time floor, the newest trusted time seen) there is nothing to
                            compare against; the bundle is accepted and its signed issue time
                            becomes trusted time (the agent raises its floor to it).
    7. BundleSchemaError    the payload is not a JSON object of the fields above; unknown fields
                            anywhere; the policy, report settings or signer set is invalid; a CA
                            certificate is not a well-formed X.509 certificate; a new signer set
                            is for another channel than the bundle.
       BundleSignerKeyError (a BundleSchemaError) a key of the new signer set is not a valid
                            P-256 key (SignerKeyInvalid), or one private key is in it twice
                            (SignerKeyRepeated: a key and its negation); the reason names which.
       BundleThresholdError the payload carries a new signer set and fewer distinct trusted keys
                            signed it than the trusted set's `rotation_threshold` (default 2):
                            one key, stolen or not, can never replace the set (as TUF requires a
                            threshold of the old root to sign a new root).

Trust is established at install. At boot (at_boot=True) the installed bundle is decoded, not
verified again: no signature, threshold, key or CA certificate check (steps 3, 5, 6 and the
certificates' and new set's checks of 7), since all of them passed when it was installed (by the
agent, or by `fleetpin image build` for the factory image), and pinagent.store has just checked
the slot's digest against damage. So a board that deep-sleeps pays no ECDSA verification at each
wake, and a bundle an older agent installed under older rules never turns into a bricked board
(pinagent.store keeps the signer set and the highest version from going back). Whoever can rewrite
the slot and its digest in flash can rewrite the agent itself: the signatures never defended that.

Identity: a bundle is named by `digest`, the SHA-256 of its signed bytes, never by a hash of the
whole file: ECDSA signatures are malleable ((r, n - s) verifies too) and a signature by a key the
device does not know is skipped unchecked, so one bundle can arrive with different signature bytes.
The host tool signs with low s (s <= n/2), so what it builds is canonical.

Heap: the input stays one buffer; certificates and signatures are memoryviews into it; the
header and payload JSON are parsed straight from memoryviews on MicroPython (CPython's json
needs bytes: one transient copy there). The payload dict is dropped once the policy is built.
pinagent.ecdsa and pinagent.signers are imported only when a signature is checked or the payload
carries a signer set: a boot loads neither (a bundle that rotates the keys loads signers).
"""

import hashlib
import json
import struct

from .policy import PolicyError
from .policy_load import policy_from_obj

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


MAGIC = b"FPB1"
FORMAT = const(1)
MAX_BUNDLE = const(32768)
MAX_HEADER = const(1024)
MAX_PAYLOAD = const(16384)
MAX_CERTS = const(8)
MAX_CERT = const(4096)
MAX_SIGS = const(4)
KEY_ID_SIZE = const(8)
SIG_SIZE = const(64)
CLOCK_SKEW = const(600)  # seconds a bundle may be issued ahead of a trusted device clock
MAX_VERSION = const(0x7FFFFFFF)
MAX_TIME = 253402300799  # 9999-12-31T23:59:59Z
_MAX_FLEET = const(64)

PRODUCTION = "production"  # the channels of pinagent.signers (not imported at boot)
DEVELOPMENT = "development"

_HEADER_KEYS = ("format", "fleet", "version", "issued", "channel", "key_ids")
_PAYLOAD_KEYS = ("policy", "report", "signers")
_REPORT_KEYS = ("enabled", "max_entries", "max_bytes")
REPORT_DEFAULTS = {"enabled": True, "max_entries": 32, "max_bytes": 4096}
_REPORT_LIMITS = {"max_entries": (1, 256), "max_bytes": (512, 16384)}


class BundleError(ValueError):
    """A refused bundle; `reason` says why. Subclasses name the check that failed."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class BundleTooLarge(BundleError):
    pass


class BundleMalformed(BundleError):
    pass


class BundleSignatureError(BundleError):
    pass


class BundleThresholdError(BundleSignatureError):
    """Signed by trusted keys, but by fewer than the signer set's threshold for this bundle."""


class BundleWrongFleet(BundleError):
    pass


class BundleRollback(BundleError):
    pass


class BundleSameVersion(BundleError):
    """Not a failure: the installed bundle has this version already; report a no-op."""


class BundleFromFuture(BundleError):
    pass


class BundleSchemaError(BundleError):
    pass


class BundleSignerKeyError(BundleSchemaError):
    """The new signer set holds an invalid P-256 key or one private key twice (reason names the
    pinagent.signers error: SignerKeyInvalid or SignerKeyRepeated)."""


class Envelope:
    """The parsed envelope, before any check of its meaning. `header` is the decoded header
    dict; `payload` and each of `certs` a memoryview into the input (`spans`: each one's [offset,
    length] there); `sigs` a list of (key id memoryview, signature memoryview); `signed_len` the
    length of the signed bytes."""

    __slots__ = ("data", "header", "payload", "certs", "spans", "sigs", "signed_len")

    def digest(self):
        return hashlib.sha256(self.data[: self.signed_len]).digest()


class Bundle:
    """A verified bundle. Header fields, `policy` (pinagent.policy.Policy), `ca_certs` (DER
    memoryviews into the input), `report` (settings dict, defaults filled in), `signers` (a new
    SignerSet or None), `key_ids` (raw ids of the signatures), `digest` (of the signed bytes: the
    bundle's identity), `keys` (pinagent.signers.xids of the trusted keys whose signatures verified;
    b"" when nothing was verified), `below` (decode_bundle's below_ok)."""

    __slots__ = (
        "format", "fleet", "version", "issued", "channel", "key_ids",
        "policy", "ca_certs", "report", "signers", "digest", "size", "keys", "below",
    )


def _json(view):
    try:
        try:
            return json.loads(view)
        except TypeError:  # CPython's json takes no memoryview
            return json.loads(bytes(view))
    except MemoryError:
        raise
    except Exception:  # syntax, encoding, nesting depth: all the same to the caller
        return _BAD


_BAD = object()


def parse_envelope(data):
    """Checks sizes and structure (steps 1 and 2); returns an Envelope. No signature check."""
    n = len(data)
    if n > MAX_BUNDLE:
        raise BundleTooLarge("bundle is %d bytes, the limit is %d" % (n, MAX_BUNDLE))
    mv = memoryview(data)
    if n < 10 or bytes(mv[0:4]) != MAGIC:
        raise BundleMalformed("not a fleetpin bundle (no FPB1 magic)")
    hlen = (mv[4] << 8) | mv[5]
    if hlen > MAX_HEADER:
        raise BundleTooLarge("header is %d bytes, the limit is %d" % (hlen, MAX_HEADER))
    pos = 6 + hlen
    if pos + 4 > n:
        raise BundleMalformed("truncated in the header")
    header_view = mv[6:pos]
    plen = struct.unpack_from(">I", mv, pos)[0]
    if plen > MAX_PAYLOAD:
        raise BundleTooLarge("payload is %d bytes, the limit is %d" % (plen, MAX_PAYLOAD))
    pos += 4
    if pos + plen + 1 > n:
        raise BundleMalformed("truncated in the payload")
    env = Envelope()
    env.data = mv
    env.payload = mv[pos : pos + plen]
    pos += plen
    count = mv[pos]
    pos += 1
    if count > MAX_CERTS:
        raise BundleTooLarge("%d CA certificates, the limit is %d" % (count, MAX_CERTS))
    env.certs = []
    env.spans = []
    for i in range(count):
        if pos + 2 > n:
            raise BundleMalformed("truncated in the CA certificates")
        clen = (mv[pos] << 8) | mv[pos + 1]
        if clen > MAX_CERT:
            raise BundleTooLarge("CA certificate %d is %d bytes, the limit is %d" % (i, clen, MAX_CERT))
        if clen == 0:
            raise BundleMalformed("CA certificate %d is empty" % i)
        pos += 2
        if pos + clen > n:
            raise BundleMalformed("truncated in the CA certificates")
        env.certs.append(mv[pos : pos + clen])
        env.spans.append([pos, clen])
        pos += clen
    if pos >= n:
        raise BundleMalformed("truncated before the signatures")
    env.signed_len = pos
    count = mv[pos]
    pos += 1
    if count > MAX_SIGS:
        raise BundleTooLarge("%d signatures, the limit is %d" % (count, MAX_SIGS))
    if count == 0:
        raise BundleMalformed("no signature")
    if n != pos + count * (KEY_ID_SIZE + SIG_SIZE):
        raise BundleMalformed("signature block is not %d signatures (truncated or trailing bytes)" % count)
    env.sigs = []
    for i in range(count):
        env.sigs.append((mv[pos : pos + KEY_ID_SIZE], mv[pos + KEY_ID_SIZE : pos + KEY_ID_SIZE + SIG_SIZE]))
        pos += KEY_ID_SIZE + SIG_SIZE
    env.header = _check_header(_json(header_view), env.sigs)
    return env


def _check_header(h, sigs):
    if not isinstance(h, dict):
        raise BundleMalformed("header is not a JSON object")
    fmt = h.get("format")
    if type(fmt) is not int:
        raise BundleMalformed("header: format missing")
    if fmt != FORMAT:
        raise BundleMalformed("bundle format %d is not supported by this agent (it reads %d)" % (fmt, FORMAT))
    for key in h:
        if key not in _HEADER_KEYS:
            raise BundleMalformed("header: unknown field %s" % key)
    fleet = h.get("fleet")
    if not isinstance(fleet, str) or not fleet or len(fleet) > _MAX_FLEET:
        raise BundleMalformed("header: fleet is not a string of 1 to %d characters" % _MAX_FLEET)
    _int(h, "version", 1, MAX_VERSION)
    _int(h, "issued", 0, MAX_TIME)
    if h.get("channel") not in (PRODUCTION, DEVELOPMENT):
        raise BundleMalformed("header: channel must be production or development")
    ids = h.get("key_ids")
    if not isinstance(ids, list) or len(ids) != len(sigs):
        raise BundleMalformed("header: key_ids do not match the signature block")
    for i in range(len(ids)):
        kid = ids[i]
        # Lowercase hex only, compared as text: no hex decoding of untrusted input needed.
        if not isinstance(kid, str) or kid != bytes(sigs[i][0]).hex():
            raise BundleMalformed("header: key_ids[%d] does not match signature %d" % (i, i))
        if kid in ids[:i]:
            raise BundleMalformed("header: key_ids[%d] is a duplicate" % i)
    return h


def _int(h, key, low, high):
    v = h.get(key)
    if type(v) is not int or v < low or v > high:  # bool is an int subclass: refused too
        raise BundleMalformed("header: %s is not an integer in %d..%d" % (key, low, high))


def check_signatures(env, signers, digest):
    """Step 3: at least one signature by a trusted key of the bundle's channel; every trusted
    signature must verify. Signatures by unknown keys are skipped (rotation overlap). Returns the
    Signers of the distinct keys whose signatures verified (a key and its negation count once);
    thresholds are the caller's (check_threshold)."""
    from . import ecdsa as _ecdsa

    channel = env.header["channel"]
    if channel != signers.channel:
        raise BundleSignatureError("a %s bundle, and this device trusts %s keys only" % (channel, signers.channel))
    signed = []
    for kid, sig in env.sigs:
        signer = signers.get(kid)
        if signer is None:
            continue
        try:
            _ecdsa.verify_p256(signer.point, digest, sig)
        except _ecdsa.SignatureError as e:
            raise BundleSignatureError("signature by key %s does not verify: %s" % (bytes(kid).hex(), e))
        for other in signed:
            if other.point[1:33] == signer.point[1:33]:
                break
        else:
            signed.append(signer)
    if not signed:
        raise BundleSignatureError("not signed by a trusted key (signed by %s)" % ", ".join(env.header["key_ids"]))
    return signed


def check_threshold(signed, needed, what):
    """BundleThresholdError unless `signed` (check_signatures's list) has `needed` keys."""
    if len(signed) < needed:
        names = []
        for s in signed:
            names.append(s.name or s.key_id.hex())
        raise BundleThresholdError("%s needs %d of the trusted keys, signed by %d (%s)" % (
            what, needed, len(signed), ", ".join(names)))


def decode_bundle(data, signers, fleet, installed_version, now, time_floor, at_boot=False, below_ok=False):
    """Verifies and decodes a bundle for this device (checks and errors: module docstring).

    signers: the trusted pinagent.signers.SignerSet. fleet: this device's fleet id.
    installed_version: version of the installed bundle, 0 or None if there is none.
    now: POSIX seconds (UTC) or None if the clock is unknown; time_floor: newest trusted time.
    at_boot: decoding the installed bundle, verified when it was installed (module docstring):
    steps 1, 2, 4 and the policy and report schema only; signers may be None, and so may fleet
    (the bundle's own is taken).
    below_ok: a bundle that carries a new signer set and is at or below installed_version is
    returned, every other check passed, with the step 5 refusal in .below instead of raised: only
    pinagent.store knows whether it resets the version record ("A stolen key" there).
    """
    env = parse_envelope(data)
    h = env.header
    digest = env.digest()
    if at_boot:
        if fleet is not None and h["fleet"] != fleet:
            raise BundleWrongFleet("bundle is for fleet %r, this device is in fleet %r" % (h["fleet"], fleet))
        return _decode(env, digest, False)
    signed = check_signatures(env, signers, digest)
    check_threshold(signed, signers.threshold, "a bundle")
    if h["fleet"] != fleet:
        raise BundleWrongFleet("bundle is for fleet %r, this device is in fleet %r" % (h["fleet"], fleet))
    version = h["version"]
    installed = installed_version or 0
    below = None if version > installed else (
        BundleRollback("bundle version %d is older than the installed %d" % (version, installed)) if version < installed
        else BundleSameVersion("bundle version %d is already installed" % version))
    if below is not None and not below_ok:
        raise below
    if now is not None and now >= (time_floor or 0) and h["issued"] > now + CLOCK_SKEW:
        raise BundleFromFuture(
            "bundle issued at %d, %d s ahead of the device clock %d" % (h["issued"], h["issued"] - now, now)
        )
    b = _decode(env, digest, True)
    if b.signers is not None:
        check_threshold(signed, signers.rotation_threshold, "a signer-set change")
    elif below is not None:
        raise below
    from . import signers as _signers

    b.keys = _signers.xids(signed, b.signers)  # who vouches for it from now on
    b.below = below
    return b


def decode_unverified(data):
    """Steps 1, 2 and 7 only: NO signature, fleet, version or time check. For host tools that
    inspect or lint a bundle; never use it to install one."""
    env = parse_envelope(data)
    return _decode(env, env.digest(), True)


def _decode(env, digest, checks):
    h = env.header
    b = Bundle()
    b.format = h["format"]
    b.fleet = h["fleet"]
    b.version = h["version"]
    b.issued = h["issued"]
    b.channel = h["channel"]
    b.key_ids = [bytes(kid) for kid, _ in env.sigs]
    b.digest = digest
    b.size = len(env.data)
    b.keys = b""
    b.below = None
    _decode_payload(b, env, checks)
    return b


def _decode_payload(b, env, checks):
    # checks: the new signer set's key checks and the CA certificates' DER walk (not at boot)
    obj = _json(env.payload)
    if not isinstance(obj, dict):
        raise BundleSchemaError("payload is not a JSON object")
    for key in obj:
        if key not in _PAYLOAD_KEYS:
            raise BundleSchemaError("payload: unknown field %s" % key)
    if "policy" not in obj:
        raise BundleSchemaError("payload: policy missing")
    try:
        b.policy = policy_from_obj(obj["policy"])
    except PolicyError as e:
        raise BundleSchemaError("policy." + str(e))
    b.report = _report(obj.get("report", {}))
    b.signers = None
    if "signers" in obj:
        from . import signers as _signers

        try:
            b.signers = _signers.signers_from_obj(obj["signers"], checks)
        except (_signers.SignerKeyInvalid, _signers.SignerKeyRepeated) as e:
            raise BundleSignerKeyError("payload: new signer set: %s: %s" % (type(e).__name__, e.reason))
        except _signers.SignerSetError as e:
            raise BundleSchemaError("payload: new " + e.reason)
        if b.signers.channel != b.channel:
            raise BundleSchemaError("payload: a %s bundle cannot install %s signers" % (b.channel, b.signers.channel))
    if checks:
        from . import der as _der

        for i in range(len(env.certs)):
            try:
                _der.spki_of_certificate(env.certs[i])
            except _der.DerError as e:
                raise BundleSchemaError("CA certificate %d: %s" % (i, e))
    b.ca_certs = env.certs


def _report(obj):
    if not isinstance(obj, dict):
        raise BundleSchemaError("report: not an object")
    out = {}
    for key in obj:
        if key not in _REPORT_KEYS:
            raise BundleSchemaError("report: unknown field %s" % key)
    for key in _REPORT_KEYS:
        value = obj.get(key, REPORT_DEFAULTS[key])
        if key == "enabled":
            if value is not True and value is not False:
                raise BundleSchemaError("report.enabled: not a boolean")
        else:
            low, high = _REPORT_LIMITS[key]
            if type(value) is not int or value < low or value > high:
                raise BundleSchemaError("report.%s: not an integer in %d..%d" % (key, low, high))
        out[key] = value
    return out


# --- encoding (host side; kept here so the format is defined in one place) ----------------


def encode_signed(header, payload, certs):
    """The signed bytes from the header and payload JSON bytes and the CA certificates' DER."""
    if len(header) > MAX_HEADER or len(payload) > MAX_PAYLOAD or len(certs) > MAX_CERTS:
        raise BundleTooLarge("header, payload or certificate count over its limit")
    parts = [MAGIC, struct.pack(">H", len(header)), header, struct.pack(">I", len(payload)), payload,
             bytes([len(certs)])]
    for cert in certs:
        if not 0 < len(cert) <= MAX_CERT:
            raise BundleTooLarge("a CA certificate is over %d bytes" % MAX_CERT)
        parts.append(struct.pack(">H", len(cert)))
        parts.append(bytes(cert))
    return b"".join(parts)


def encode_bundle(signed, sigs):
    """The whole bundle: signed bytes plus [(8-byte key id, 64-byte r||s), ...]."""
    if not 0 < len(sigs) <= MAX_SIGS:
        raise BundleTooLarge("1 to %d signatures" % MAX_SIGS)
    parts = [signed, bytes([len(sigs)])]
    for kid, sig in sigs:
        if len(kid) != KEY_ID_SIZE or len(sig) != SIG_SIZE:
            raise BundleMalformed("a signature is not an 8-byte key id and 64 bytes r||s")
        parts.append(bytes(kid))
        parts.append(bytes(sig))
    out = b"".join(parts)
    if len(out) > MAX_BUNDLE:
        raise BundleTooLarge("bundle is %d bytes, the limit is %d" % (len(out), MAX_BUNDLE))
    return out
