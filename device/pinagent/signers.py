"""The trusted signer set: the public keys whose signatures the device accepts on a bundle.

Stored in flash (the factory trust anchor, signers.json) and carried, optionally, inside a
bundle payload ("signers") to rotate the keys. The same JSON object in both places:

    {"format": 1,
     "channel": "production" | "development",   every key in the set signs for this channel
     "signers": [
        {"id": "<16 hex chars>",                first 8 bytes of SHA-256(SPKI DER), lowercase hex
         "key": "<130 hex chars>",              the P-256 public key, uncompressed SEC1 (04||X||Y)
         "name": "everyday"},                   optional label for people, 1..64 printable ASCII
        ...]}

Rules (checked here, on the device and by the host tool alike):
- at least MIN_SIGNERS (2) keys: the everyday key and an offline backup, so losing one is
  survivable; at most MAX_SIGNERS; no key or id twice;
- each id must be the id of its key (recomputed: the SPKI of a P-256 point is a fixed prefix
  plus the point), so a mislabelled key can never be trusted under another key's id;
- one channel per set: a production device trusts production keys only, so a development
  bundle can never verify on it, and a bundle may only install a set of its own channel;
- unknown fields are refused, as everywhere in the format.

Keys are hex rather than base64: the VM's base64 is slow, and `bytes.fromhex` is built in.
Whether a point is on the curve is checked by pinagent.ecdsa at verification time.
"""

import hashlib
import json

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


FORMAT = const(1)
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

_SET_KEYS = ("format", "channel", "signers")
_SIGNER_KEYS = ("id", "key", "name")
_HEX = "0123456789abcdef"


class SignerSetError(ValueError):
    """An invalid signer set; `reason` says what is wrong (field named)."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class Signer:
    __slots__ = ("key_id", "point", "name")


class SignerSet:
    """A validated set. `keys` maps the raw 8-byte id to its Signer."""

    __slots__ = ("channel", "signers", "keys")

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
        return {"format": FORMAT, "channel": self.channel, "signers": out}


def key_id_of_point(point):
    """The key id (raw 8 bytes) of a 65-byte P-256 point: SHA-256 of its SPKI DER, truncated."""
    h = hashlib.sha256(SPKI_PREFIX)
    h.update(point)
    return h.digest()[:KEY_ID_SIZE]


def load_signers(data):
    """Parses a serialised signer set (bytes or memoryview of JSON); raises SignerSetError."""
    if len(data) > _MAX_TEXT:
        raise SignerSetError("signer set larger than %d bytes" % _MAX_TEXT)
    try:
        try:
            obj = json.loads(data)
        except TypeError:  # CPython's json takes no memoryview
            obj = json.loads(bytes(data))
    except Exception:
        raise SignerSetError("signer set is not valid JSON")
    return signers_from_obj(obj)


def dump_signers(signer_set):
    """Canonical JSON (sorted keys, no spaces), as the host writes signers.json. Spelled out:
    MicroPython's json.dumps has no sort_keys and its dicts keep no order."""
    parts = ['{"channel":', json.dumps(signer_set.channel), ',"format":%d,"signers":[' % FORMAT]
    for i in range(len(signer_set.signers)):
        s = signer_set.signers[i]
        parts.append(',{"id":"' if i else '{"id":"')
        parts.append(s.key_id.hex() + '","key":"' + s.point.hex() + '"')
        if s.name is not None:
            parts.append(',"name":' + json.dumps(s.name))
        parts.append("}")
    parts.append("]}")
    return "".join(parts).encode()


def signers_from_obj(obj):
    """Validates a decoded signer set object; raises SignerSetError naming the field."""
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
    result.signers = []
    result.keys = {}
    for i in range(len(entries)):
        s = _signer(entries[i], "signers[%d]" % i)
        if s.key_id in result.keys:
            raise SignerSetError("signers[%d]: same key as another entry" % i)
        result.keys[s.key_id] = s
        result.signers.append(s)
    return result


def _signer(entry, where):
    if not isinstance(entry, dict):
        raise SignerSetError(where + ": not an object")
    for key in entry:
        if key not in _SIGNER_KEYS:
            raise SignerSetError(where + ": unknown field %s" % key)
    s = Signer()
    s.point = _hex(entry, "key", 65, where)
    if s.point[0] != 4:
        raise SignerSetError(where + ".key: not an uncompressed P-256 point (04||X||Y)")
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
