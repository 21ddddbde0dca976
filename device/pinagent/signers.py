"""The trusted signer set: the public keys whose signatures the device accepts on a bundle, and
how many of them a bundle needs.

Stored in flash (the factory trust anchor, signers.json) and carried, optionally, inside a
bundle payload ("signers") to rotate the keys. The same JSON object in both places:

    {"format": 1,
     "channel": "production" | "development",   every key in the set signs for this channel
     "threshold": 1,                            optional (default 1): trusted signatures an
                                                ordinary bundle needs
     "rotation_threshold": 2,                   optional (default 2): trusted signatures a bundle
                                                that carries a new signer set needs
     "signers": [
        {"id": "<16 hex chars>",                first 8 bytes of SHA-256(SPKI DER), lowercase hex
         "key": "<130 hex chars>",              the P-256 public key, uncompressed SEC1 (04||X||Y)
         "name": "everyday"},                   optional label for people, 1..64 printable ASCII
        ...]}

Rules (checked here, on the device and by the host tool alike; one named error each):
- at least MIN_SIGNERS (2) keys: the everyday key and an offline backup, so losing one is
  survivable; at most MAX_SIGNERS;                                          SignerSetError
- thresholds (as TUF does for root metadata): 1 <= threshold <= rotation_threshold <= keys, and
  rotation_threshold >= 2, so no single key, stolen or not, can replace the set; a threshold
  counts distinct keys of the set whose signatures verify (pinagent.bundle). SignerThresholdInvalid
- each key is a valid P-256 public key: uncompressed, both coordinates below p, on the curve
  (which refuses (0, 0) too); an invalid key would never verify, and a set of them locks the
  fleet out of every future update;                                         SignerKeyInvalid
- no private key twice: not the same key twice, and not a key together with its negation
  (x, p - y), which is the public key of n - d: one private key under two ids would meet a
  two-key threshold alone;                                                  SignerKeyRepeated
- each id must be the id of its key (recomputed: the SPKI of a P-256 point is a fixed prefix
  plus the point), so a mislabelled key can never be trusted under another key's id;
- one channel per set: a production device trusts production keys only, so a development
  bundle can never verify on it, and a bundle may only install a set of its own channel;
- unknown fields are refused, as everywhere in the format.

Key checks run on every set that is about to be trusted: a bundle's new set (at install, and by
the host tool at build). A set the device already holds (signers.bin, or one an older agent
installed) is loaded with check_keys=False: refusing it at boot would brick the board, and a bad
key in it can do no harm there (it never verifies; a key and its negation count once).

Canonical JSON (dump_signers, and the host tool): sorted keys, no spaces, and a threshold equal to
its default is left out, so a set without thresholds keeps its bytes (and stays readable by
agents from before thresholds).

Keys are hex rather than base64: the VM's base64 is slow, and `bytes.fromhex` is built in.
"""

import hashlib
import json

from . import ecdsa as _ecdsa
from .store import KEY_XID_SIZE, holds

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


FORMAT = const(1)
_THRESHOLD = const(1)  # default: signatures an ordinary bundle needs
_ROTATION_THRESHOLD = const(2)  # default, and the least allowed: signatures a new signer set needs
MIN_SIGNERS = const(2)
MAX_SIGNERS = const(8)
KEY_ID_SIZE = const(8)
_MAX_NAME = const(64)
_MAX_TEXT = const(4096)  # a serialised set is about 200 bytes per key

PRODUCTION = "production"
DEVELOPMENT = "development"
CHANNELS = (PRODUCTION, DEVELOPMENT)

# DER SubjectPublicKeyInfo of an id-ecPublicKey / prime256v1 key, up to the 65-byte point.
SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")

_SET_KEYS = ("format", "channel", "threshold", "rotation_threshold", "signers")
_SIGNER_KEYS = ("id", "key", "name")
_HEX = "0123456789abcdef"


class SignerSetError(ValueError):
    """An invalid signer set; `reason` says what is wrong (field named)."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class SignerKeyInvalid(SignerSetError):
    """A key that is not a valid P-256 public key (not 04||X||Y, a coordinate >= p, off the curve)."""


class SignerKeyRepeated(SignerSetError):
    """One private key twice in a set: the same key, or a key and its negation."""


class SignerThresholdInvalid(SignerSetError):
    """A threshold that is not an integer in its range (module docstring)."""


class Signer:
    __slots__ = ("key_id", "point", "name")


class SignerSet:
    """A validated set. `keys` maps the raw 8-byte id to its Signer; `threshold` and
    `rotation_threshold` are the signatures an ordinary bundle and a signer-set change need."""

    __slots__ = ("channel", "threshold", "rotation_threshold", "signers", "keys")

    def get(self, key_id):
        """The Signer for a raw 8-byte id (bytes or memoryview), or None."""
        return self.keys.get(bytes(key_id))

    def to_obj(self):
        out = []
        for s in self.signers:
            entry = {"id": s.key_id.hex(), "key": s.point.hex()}
            if s.name is not None:
                entry["name"] = s.name
            out.append(entry)
        obj = {"format": FORMAT, "channel": self.channel, "signers": out}
        if self.threshold != _THRESHOLD:
            obj["threshold"] = self.threshold
        if self.rotation_threshold != _ROTATION_THRESHOLD:
            obj["rotation_threshold"] = self.rotation_threshold
        return obj


def key_id_of_point(point):
    """The key id (raw 8 bytes) of a 65-byte P-256 point: SHA-256 of its SPKI DER, truncated."""
    h = hashlib.sha256(SPKI_PREFIX)
    h.update(point)
    return h.digest()[:KEY_ID_SIZE]


def xid_of_point(point):
    """The private key's id (raw 8 bytes): SHA-256 of the point's x coordinate, truncated. A key
    and its negation (one private key: SignerKeyRepeated) share it, so a signer set that swaps a
    key for its negation does not retire it (pinagent.store, "A stolen key")."""
    return hashlib.sha256(memoryview(point)[1:33]).digest()[:KEY_XID_SIZE]


def xids(signers, kept_by=None):
    """The xid_of_point of each Signer, concatenated (pinagent.store's voucher form); with
    kept_by (a SignerSet), only those of keys it holds too."""
    keep = None if kept_by is None else xids(kept_by.signers)
    out = b""
    for s in signers:
        x = xid_of_point(s.point)
        if keep is None or holds(keep, x):
            out += x
    return out


def load_signers(data, check_keys=True):
    """Parses a serialised signer set (bytes or memoryview of JSON); raises SignerSetError.
    check_keys=False: a set already trusted (module docstring)."""
    if len(data) > _MAX_TEXT:
        raise SignerSetError("signer set larger than %d bytes" % _MAX_TEXT)
    try:
        try:
            obj = json.loads(data)
        except TypeError:  # CPython's json takes no memoryview
            obj = json.loads(bytes(data))
    except Exception:
        raise SignerSetError("signer set is not valid JSON")
    return signers_from_obj(obj, check_keys)


def dump_signers(signer_set):
    """Canonical JSON (sorted keys, no spaces), as the host writes signers.json. Spelled out:
    MicroPython's json.dumps has no sort_keys and its dicts keep no order."""
    parts = ['{"channel":', json.dumps(signer_set.channel), ',"format":%d,' % FORMAT]
    if signer_set.rotation_threshold != _ROTATION_THRESHOLD:
        parts.append('"rotation_threshold":%d,' % signer_set.rotation_threshold)
    parts.append('"signers":[')
    for i in range(len(signer_set.signers)):
        s = signer_set.signers[i]
        parts.append(',{"id":"' if i else '{"id":"')
        parts.append(s.key_id.hex() + '","key":"' + s.point.hex() + '"')
        if s.name is not None:
            parts.append(',"name":' + json.dumps(s.name))
        parts.append("}")
    parts.append("]")
    if signer_set.threshold != _THRESHOLD:
        parts.append(',"threshold":%d' % signer_set.threshold)
    parts.append("}")
    return "".join(parts).encode()


def signers_from_obj(obj, check_keys=True):
    """Validates a decoded signer set object; raises SignerSetError (or the subclass naming the
    rule) naming the field. check_keys=False skips the key checks only (module docstring)."""
    if not isinstance(obj, dict):
        raise SignerSetError("signer set: not an object")
    for key in obj:
        if key not in _SET_KEYS:
            raise SignerSetError("signer set: unknown field %s" % key)
    if obj.get("format") != FORMAT or type(obj.get("format")) is not int:
        raise SignerSetError("signer set: format must be %d" % FORMAT)
    channel = obj.get("channel")
    if not isinstance(channel, str) or channel not in CHANNELS:
        raise SignerSetError("signer set: channel must be production or development")
    entries = obj.get("signers")
    if not isinstance(entries, list):
        raise SignerSetError("signer set: signers missing or not a list")
    if len(entries) < MIN_SIGNERS:
        raise SignerSetError("signer set: at least %d keys (everyday + offline backup)" % MIN_SIGNERS)
    if len(entries) > MAX_SIGNERS:
        raise SignerSetError("signer set: at most %d keys" % MAX_SIGNERS)
    result = SignerSet()
    result.channel = channel
    result.threshold = _threshold(obj, "threshold", _THRESHOLD, 1, len(entries))
    result.rotation_threshold = _threshold(obj, "rotation_threshold", _ROTATION_THRESHOLD,
                                           max(_ROTATION_THRESHOLD, result.threshold), len(entries))
    result.signers = []
    result.keys = {}
    for i in range(len(entries)):
        where = "signers[%d]" % i
        s = _signer(entries[i], where)
        if check_keys:
            try:
                _ecdsa.check_point(s.point)
            except _ecdsa.SignatureError as e:
                raise SignerKeyInvalid(where + ".key: " + e.reason)
        for j in range(i):
            other = result.signers[j].point
            if other == s.point:
                raise SignerKeyRepeated("%s: same key as signers[%d]" % (where, j))
            # same x, other y: on the curve that is y' = p - y, the negation (a checked set's
            # points are on the curve; an unchecked one's are not trusted to be)
            if check_keys and other[1:33] == s.point[1:33]:
                raise SignerKeyRepeated("%s: negation of signers[%d] (same private key)" % (where, j))
        result.keys[s.key_id] = s
        result.signers.append(s)
    return result


def _threshold(obj, key, default, low, high):
    value = obj.get(key, default)
    if type(value) is not int or value < low or value > high:  # bool is an int subclass: refused too
        raise SignerThresholdInvalid("signer set: %s not an integer in %d..%d" % (key, low, high))
    return value


def _signer(entry, where):
    if not isinstance(entry, dict):
        raise SignerSetError(where + ": not an object")
    for key in entry:
        if key not in _SIGNER_KEYS:
            raise SignerSetError(where + ": unknown field %s" % key)
    s = Signer()
    s.point = _hex(entry, "key", 65, where)
    if s.point[0] != 4:
        raise SignerKeyInvalid(where + ".key: not an uncompressed P-256 point (04||X||Y)")
    s.key_id = _hex(entry, "id", KEY_ID_SIZE, where)
    if s.key_id != key_id_of_point(s.point):
        raise SignerSetError(where + ".id: not the id of this key")
    name = entry.get("name")
    if name is not None and (not isinstance(name, str) or not name or len(name) > _MAX_NAME or not _plain(name)):
        raise SignerSetError(where + ".name: not 1 to %d printable ASCII characters" % _MAX_NAME)
    s.name = name
    return s


def _plain(text):
    # Printable ASCII without quote or backslash: every JSON encoder writes it the same way.
    for c in text:
        if c < " " or c > "~" or c == '"' or c == "\\":
            return False
    return True


def _hex(entry, key, size, where):
    text = entry.get(key)
    field = where + "." + key
    if not isinstance(text, str) or len(text) != 2 * size:
        raise SignerSetError(field + ": not %d lowercase hex characters" % (2 * size))
    for c in text:
        if c not in _HEX:  # fromhex would accept upper case and spaces: one spelling only
            raise SignerSetError(field + ": not %d lowercase hex characters" % (2 * size))
    return bytes.fromhex(text)
