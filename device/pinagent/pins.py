# Pins: base64(SHA-256(SubjectPublicKeyInfo DER)), the format of Android, TrustKit, OkHttp
# and HPKP. Decisions compare the raw 32-byte digests; base64 is only for text at the edges
# (bundle loading, reports), because the VM's binascii is slow and allocates.

import binascii
import hashlib

_PREFIX = b"sha256/"
_DIGEST_SIZE = 32
_TEXT_SIZE = 44  # 43 base64 characters and one '='
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


class PinError(ValueError):
    """A pin that is not exactly one canonical base64 SHA-256 digest; `reason` says why."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def spki_digest(spki):
    """The 32-byte SHA-256 of an SPKI (bytes or memoryview, hashed in place)."""
    return hashlib.sha256(spki).digest()


def pin_to_text(digest):
    """Standard base64 text of a 32-byte digest: 44 characters, no prefix, no newline."""
    if len(digest) != _DIGEST_SIZE:
        raise PinError("a SHA-256 pin is 32 bytes, got %d" % len(digest))
    text = binascii.b2a_base64(digest)
    if text[-1:] == b"\n":
        text = text[:-1]
    return text.decode()


def _sextet(c):
    """The 6-bit value of a base64 alphabet byte, or -1."""
    if 0x41 <= c <= 0x5A:  # A-Z
        return c - 0x41
    if 0x61 <= c <= 0x7A:  # a-z
        return c - 0x61 + 26
    if 0x30 <= c <= 0x39:  # 0-9
        return c - 0x30 + 52
    if c == 0x2B:  # +
        return 62
    if c == 0x2F:  # /
        return 63
    return -1


def parse_pin(text):
    """The 32 raw bytes of a pin given as text, with or without the "sha256/" prefix.

    Everything is checked before decoding, because MicroPython's base64 decoder silently
    skips characters it does not know: alphabet, padding, size and canonical form."""
    if isinstance(text, str):
        raw = text.encode()
    elif isinstance(text, (bytes, bytearray)):
        raw = bytes(text)
    else:
        raise PinError("a pin is text, not %s" % type(text).__name__)
    if raw[: len(_PREFIX)] == _PREFIX:
        raw = raw[len(_PREFIX) :]
    # The usual case, checked by C string methods: 43 characters of the alphabet, one '=', the
    # last character's unused bits zero. Anything else goes through the checks below, which say why.
    if len(raw) == _TEXT_SIZE and raw[-1] == 0x3D and not raw[:-1].strip(_ALPHABET) and not _sextet(raw[-2]) & 3:
        digest = binascii.a2b_base64(raw)
        if len(digest) == _DIGEST_SIZE:
            return digest
    n = len(raw)
    if raw[: len(_PREFIX)] == _PREFIX:
        raise PinError("prefix 'sha256/' given twice")
    slash = raw.find(b"/")
    if n != _TEXT_SIZE and 3 <= slash <= 7 and raw[:3] in (b"sha", b"SHA", b"Sha"):
        # "sha1/...", "SHA256/...": say so, rather than "pin is 36 bytes"
        raise PinError("unsupported pin prefix %r (only 'sha256/')" % raw[: slash + 1].decode())
    if n == 0:
        raise PinError("empty pin")
    pad = 0
    for i in range(n):
        c = raw[i]
        if c in b" \t\r\n\x0b\x0c":
            raise PinError("whitespace in pin")
        if c == 0x3D:  # '='
            pad += 1
        elif pad:
            raise PinError("'=' padding in the middle of the pin")
        elif _sextet(c) < 0:
            if c < 0x20 or c > 0x7E:
                raise PinError("invalid character 0x%02x in pin" % c)
            raise PinError("invalid character %r in pin" % chr(c))
    chars = n - pad
    if chars % 4 == 1:
        raise PinError("not base64: %d characters cannot encode whole bytes" % chars)
    size = chars * 3 // 4
    if size != _DIGEST_SIZE:
        raise PinError("pin is %d bytes, a SHA-256 pin is 32" % size)
    if pad == 0:
        raise PinError("pin is missing its '=' padding")
    if pad != 1:
        raise PinError("pin has %d '=' padding characters, wants 1" % pad)
    # 43 characters carry 258 bits: the last one's 2 low bits are unused and must be zero,
    # otherwise several texts decode to the same digest.
    if _sextet(raw[chars - 1]) & 3:
        raise PinError("non-canonical base64: unused bits set in the last character")
    digest = binascii.a2b_base64(raw)
    if len(digest) != _DIGEST_SIZE:  # unreachable after the checks above; never trust a decoder
        raise PinError("pin decodes to %d bytes" % len(digest))
    return digest


def chain_digests(ders):
    """[(depth, SPKI SHA-256)] for a chain of DER certificates, leaf first (depth 0).
    Raises pinagent.der.DerError for a malformed certificate."""
    from pinagent.der import spki_of_certificate  # (pins are parsed at boot, before der is needed)

    out = []
    depth = 0
    for der in ders:
        out.append((depth, hashlib.sha256(spki_of_certificate(der)).digest()))
        depth += 1
    return out
