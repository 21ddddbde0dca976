# A minimal, strict DER walker for X.509 certificates: just enough to find the
# SubjectPublicKeyInfo (the bytes a pin hashes), the subject CN and the validity dates.
#
# Three entry points, one walk:
# - spki_of_certificate: the hot path (every TLS handshake, every certificate). It checks the
#   outer SEQUENCE spans the input exactly, the TBSCertificate fits and is followed by a
#   SEQUENCE, and every field up to the SPKI has its tag and fits; it reads nothing after the
#   SPKI's header. About 15 us a certificate on the VM, ~300 bytes of heap.
# - subject_cn: the same walk, then the subject Name only (the pin check keeps it for reports,
#   for every certificate of every handshake).
# - parse_certificate: everything else too: the whole tree is well-formed DER (nesting
#   bounded), the signature fields, the SPKI's inside, the order of the optional fields,
#   both Names, and the dates. For bytes nobody has parsed yet (host side, tests, bundles).
#
# Zero-copy: the input is wrapped in a memoryview once; the SPKI is a slice of it. No tuple
# per TLV: the reader returns the element's end and leaves the tag and content start in a
# small list allocated once per certificate.
#
# Every malformed input raises DerError with a reason; nothing else escapes (no IndexError,
# no UnicodeError) and every loop advances through a bounded buffer.

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


_SEQ = const(0x30)
_SET = const(0x31)
_INTEGER = const(0x02)
_BIT_STRING = const(0x03)
_OID = const(0x06)
_VERSION = const(0xA0)  # [0] EXPLICIT Version
_UTC_TIME = const(0x17)
_GENERALIZED_TIME = const(0x18)

# Deepest nesting of constructed elements parse_certificate accepts. Real certificates reach
# about 8 (an RSA-PSS SPKI's parameters); the structure check keeps its stack of enclosing
# ends in a list of this size, so the bound is also its memory bound.
MAX_DEPTH = const(16)

# Slots of the per-certificate scratch list `m` (one allocation per walk).
_TAG = const(0)  # tag of the TLV just read by _tlv
_START = const(1)  # content start of the TLV just read by _tlv
_FIELDS = const(2)  # TLV start of serialNumber, the first TBS field after the version
_SPKI = const(3)  # SubjectPublicKeyInfo TLV start (header included)
_SPKI_END = const(4)  # its end = start of what follows it in the TBSCertificate
_TBS_END = const(5)
_M_SIZE = const(6)

# The TBSCertificate fields from serialNumber to subjectPublicKeyInfo: tags and names.
_TBS_TAGS = b"\x02\x30\x30\x30\x30\x30"
_TBS_NAMES = ("serialNumber", "signature", "issuer", "validity", "subject", "SubjectPublicKeyInfo")


class DerError(ValueError):
    """A malformed (or unsupported) DER input; `reason` says what is wrong."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class Certificate:
    """What the agent needs from a certificate. `spki` is a memoryview into the input: it is
    only valid as long as the input buffer is (mbedTLS's callback buffer is not, past the call)."""

    __slots__ = ("spki", "subject_cn", "not_before", "not_after")

    def __init__(self, spki, subject_cn, not_before, not_after):
        self.spki = spki
        self.subject_cn = subject_cn
        self.not_before = not_before
        self.not_after = not_after


def _tlv(buf, pos, end, m):
    """Reads the TLV at buf[pos:end]: stores its tag in m[0] and content start in m[1] and
    returns its end offset. Refuses high tag numbers, indefinite and non-minimal lengths,
    lengths over 3 bytes and any element that does not fit before `end`."""
    if pos >= end:
        raise DerError("truncated")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise DerError("high tag number form unsupported")
    pos += 1
    if pos >= end:
        raise DerError("truncated")
    n = buf[pos]
    pos += 1
    if n & 0x80:
        n &= 0x7F
        if n == 0:
            raise DerError("indefinite length")
        if n > 3:  # 16 MB is far beyond any certificate; also keeps ints small on the device
            raise DerError("length overflows")
        if pos + n > end:
            raise DerError("truncated")
        first = buf[pos]
        if first == 0:
            raise DerError("non-minimal length (leading zero byte)")
        if n == 1:
            length = first
        elif n == 2:
            length = (first << 8) | buf[pos + 1]
        else:
            length = (first << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
        if length < 0x80:
            raise DerError("non-minimal length (long form for a short length)")
        pos += n
        n = length
    if pos + n > end:
        raise DerError("truncated")
    m[_TAG] = tag
    m[_START] = pos
    return pos + n


def _expect(buf, pos, end, m, tag, what):
    """_tlv, and the element must be there and carry `tag`."""
    if pos >= end:
        raise DerError("missing " + what)
    e = _tlv(buf, pos, end, m)
    if m[_TAG] != tag:
        raise DerError("unexpected tag 0x%02x for %s" % (m[_TAG], what))
    return e


def _walk(buf, m):
    """Walks Certificate -> TBSCertificate -> fields up to the SPKI: the outer SEQUENCE must
    span the whole input, the TBSCertificate must fit in it, and every field on the way must
    carry its tag and fit in the TBSCertificate. Fills the slots of m.

    This is the whole hot path, so it reads only the 9 headers on the way (each costs a few
    microseconds on the VM) and decodes the field headers inline rather than per call."""
    n = len(buf)
    pos = 0
    # Certificates of 256 B to 64 KB start "30 82 LL LL 30 82 LL LL": read that inline.
    if n > 8 and buf[0] == _SEQ and buf[1] == 0x82 and buf[2] and buf[4] == _SEQ and buf[5] == 0x82 and buf[6]:
        end = 4 + ((buf[2] << 8) | buf[3])
        tbs_end = 8 + ((buf[6] << 8) | buf[7])
        if end == n and tbs_end < end:
            pos = 8
    if pos == 0:  # any other shape, and every error: the careful reader says what is wrong
        if n == 0:
            raise DerError("empty")
        end = _expect(buf, 0, n, m, _SEQ, "Certificate")
        if end != n:
            raise DerError("trailing bytes after Certificate")
        tbs_end = _expect(buf, m[_START], end, m, _SEQ, "TBSCertificate")
        pos = m[_START]
    m[_TBS_END] = tbs_end
    # A one-byte check that signatureAlgorithm follows: a TBSCertificate length that is off
    # usually lands elsewhere. (parse_certificate checks the signature fields in full.)
    if tbs_end == end:
        raise DerError("missing signatureAlgorithm")
    if buf[tbs_end] != _SEQ:
        raise DerError("unexpected tag 0x%02x for signatureAlgorithm" % buf[tbs_end])
    # [0] EXPLICIT version: "a0 03 02 01 0v" in practically every certificate (skipped
    # without a full header decode), absent in v1 ones.
    if pos + 5 <= tbs_end and buf[pos] == _VERSION and buf[pos + 1] == 3:
        pos += 5
    elif pos < tbs_end and buf[pos] == _VERSION:
        pos = _tlv(buf, pos, tbs_end, m)
    m[_FIELDS] = pos
    start = pos
    i = 0
    for tag in _TBS_TAGS:
        if pos >= tbs_end:
            raise DerError("missing " + _TBS_NAMES[i])
        if buf[pos] != tag:
            raise DerError("unexpected tag 0x%02x for %s" % (buf[pos], _TBS_NAMES[i]))
        start = pos
        if pos + 2 < tbs_end:
            ln = buf[pos + 1]
            if ln < 0x80:  # the usual forms, inline; anything else via the careful reader
                pos += 2 + ln
            elif ln == 0x81 and buf[pos + 2] >= 0x80:
                pos += 3 + buf[pos + 2]
            elif ln == 0x82 and buf[pos + 2] and pos + 3 < tbs_end:
                pos += 4 + ((buf[pos + 2] << 8) | buf[pos + 3])
            else:
                pos = _tlv(buf, pos, tbs_end, m)
            if pos > tbs_end:
                raise DerError("truncated")
        else:
            pos = _tlv(buf, pos, tbs_end, m)
        i += 1
    m[_SPKI] = start
    m[_SPKI_END] = pos


def _check_rest(buf, m):
    """What parse_certificate checks beyond the hot path: signatureAlgorithm and
    signatureValue close the Certificate, the SPKI's own structure, and the optional TBS
    fields after the SPKI."""
    end = len(buf)
    tbs_end = m[_TBS_END]
    e = _expect(buf, tbs_end, end, m, _SEQ, "signatureAlgorithm")
    if _expect(buf, e, end, m, _BIT_STRING, "signatureValue") != end:
        raise DerError("trailing bytes in Certificate")

    # SubjectPublicKeyInfo ::= SEQUENCE { algorithm AlgorithmIdentifier, subjectPublicKey BIT STRING }
    spki_end = m[_SPKI_END]
    _tlv(buf, m[_SPKI], spki_end, m)
    e = _expect(buf, m[_START], spki_end, m, _SEQ, "SPKI algorithm")
    _expect(buf, m[_START], e, m, _OID, "SPKI algorithm OID")
    e = _expect(buf, e, spki_end, m, _BIT_STRING, "subjectPublicKey")
    if e != spki_end:
        raise DerError("trailing bytes in SubjectPublicKeyInfo")
    if m[_START] == e or buf[m[_START]] != 0:
        raise DerError("subjectPublicKey is not a whole number of bytes")

    # What may follow: [1] issuerUniqueID, [2] subjectUniqueID, [3] extensions, in order.
    last = 0
    while e < tbs_end:
        e = _tlv(buf, e, tbs_end, m)
        t = m[_TAG]
        if (t != 0x81 and t != 0x82 and t != 0xA3) or t & 0x1F <= last:
            raise DerError("unexpected tag 0x%02x after SubjectPublicKeyInfo" % t)
        last = t & 0x1F


def _check_tree(buf, pos, end, m):
    """Checks that buf[pos:end] is a sequence of well-formed TLVs, descending into every
    constructed one. Iterative: the stack of enclosing ends is a list of MAX_DEPTH ints."""
    stack = [0] * MAX_DEPTH
    depth = 0
    while True:
        # A finished container ends exactly where its parent continues: pop until one is open.
        while pos == end:
            if depth == 0:
                return
            depth -= 1
            end = stack[depth]
        e = _tlv(buf, pos, end, m)
        if m[_TAG] & 0x20:  # constructed: its content is TLVs too
            if depth == MAX_DEPTH:
                raise DerError("nesting too deep (over %d levels)" % MAX_DEPTH)
            stack[depth] = end
            depth += 1
            end = e
            pos = m[_START]
        else:
            pos = e


def _digits(buf, pos, n):
    v = 0
    for i in range(pos, pos + n):
        c = buf[i] - 0x30
        if c < 0 or c > 9:
            raise DerError("bad time: non-digit")
        v = v * 10 + c
    return v


def _days_from_civil(y, mo, d):
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm). Not
    time.mktime: it is local time on CPython and counts from 2000 on the ESP32."""
    if mo <= 2:
        y -= 1
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (mo - 3 if mo > 2 else mo + 9) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _month_days(y, mo):
    if mo == 2:
        return 29 if (y % 4 == 0 and y % 100 != 0) or y % 400 == 0 else 28
    return 30 if mo in (4, 6, 9, 11) else 31


def _time(buf, tag, s, e):
    """POSIX seconds (UTC) of a DER UTCTime (YYMMDDHHMMSSZ, YY < 50 is 20YY) or
    GeneralizedTime (YYYYMMDDHHMMSSZ), the only forms RFC 5280 allows. Either tag is
    accepted for any year (RFC 5280 wants GeneralizedTime only from 2050; issuers slip)."""
    if tag == _UTC_TIME:
        if e - s != 13:
            raise DerError("bad time: UTCTime must be YYMMDDHHMMSSZ")
        y = _digits(buf, s, 2)
        y += 1900 if y >= 50 else 2000
        s += 2
    elif tag == _GENERALIZED_TIME:
        if e - s != 15:
            raise DerError("bad time: GeneralizedTime must be YYYYMMDDHHMMSSZ")
        y = _digits(buf, s, 4)
        s += 4
    else:
        raise DerError("unexpected tag 0x%02x for Time" % tag)
    if buf[e - 1] != 0x5A:  # 'Z'
        raise DerError("bad time: not UTC (no 'Z')")
    mo = _digits(buf, s, 2)
    d = _digits(buf, s + 2, 2)
    h = _digits(buf, s + 4, 2)
    mi = _digits(buf, s + 6, 2)
    sec = _digits(buf, s + 8, 2)
    if mo < 1 or mo > 12 or d < 1 or d > _month_days(y, mo) or h > 23 or mi > 59 or sec > 59:
        raise DerError("bad time: field out of range")
    return _days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec


def _ascii(buf, s, e, what):
    for i in range(s, e):
        if buf[i] > 0x7F:
            raise DerError("non-ASCII byte in " + what)
    return str(buf[s:e], "ascii")


def _code_units(buf, s, e, size, what):
    """Text of a BMPString (size 2, UTF-16BE) or UniversalString (size 4, UTF-32BE)."""
    if (e - s) % size:
        raise DerError("odd length " + what)
    out = []
    i = s
    while i < e:
        c = (buf[i] << 8) | buf[i + 1]
        if size == 4:
            c = (c << 16) | (buf[i + 2] << 8) | buf[i + 3]
        elif 0xD800 <= c <= 0xDBFF and i + 3 < e:  # a surrogate pair
            lo = (buf[i + 2] << 8) | buf[i + 3]
            if 0xDC00 <= lo <= 0xDFFF:
                c = 0x10000 + ((c - 0xD800) << 10) + (lo - 0xDC00)
                i += 2
        if c > 0x10FFFF or 0xD800 <= c <= 0xDFFF:
            raise DerError("bad character in " + what)
        out.append(chr(c))
        i += size
    return "".join(out)


def _string(buf, tag, s, e):
    """The text of a DirectoryString-like value, or None for a type not decoded here.

    UTF8String is strictly decoded; PrintableString, IA5String, VisibleString and
    NumericString must be ASCII (their character sets are not enforced further, since real
    issuers put '*', '@' or '_' in PrintableString); T61String is read as Latin-1, which is
    what issuers actually put in it; BMPString and UniversalString are UTF-16BE and UTF-32BE.
    Any other type gives None: the CN is then treated as absent."""
    if tag == 0x0C:  # UTF8String
        try:
            return str(buf[s:e], "utf-8")
        except ValueError:  # UnicodeError on MicroPython, UnicodeDecodeError on CPython
            raise DerError("bad UTF8String")
    if tag == 0x13 or tag == 0x16 or tag == 0x1A or tag == 0x12:
        return _ascii(buf, s, e, "PrintableString/IA5String")
    if tag == 0x14:  # T61String
        return "".join([chr(buf[i]) for i in range(s, e)])
    if tag == 0x1E:
        return _code_units(buf, s, e, 2, "BMPString")
    if tag == 0x1C:
        return _code_units(buf, s, e, 4, "UniversalString")
    return None


def _name_cn(buf, pos, end, m):
    """Walks a Name (SEQUENCE OF SET OF AttributeTypeAndValue) given its content bounds and
    returns its commonName (OID 2.5.4.3). With several CNs the last, most specific one wins
    (RFC 6125 6.4.4). None when there is none."""
    cn = None
    while pos < end:
        set_end = _expect(buf, pos, end, m, _SET, "RelativeDistinguishedName")
        p = m[_START]
        if p == set_end:
            raise DerError("empty RelativeDistinguishedName")
        while p < set_end:
            atv_end = _expect(buf, p, set_end, m, _SEQ, "AttributeTypeAndValue")
            oid_end = _expect(buf, m[_START], atv_end, m, _OID, "AttributeType")
            o = m[_START]
            if oid_end >= atv_end:
                raise DerError("missing AttributeValue")
            value_end = _tlv(buf, oid_end, atv_end, m)
            if value_end != atv_end:
                raise DerError("trailing bytes in AttributeTypeAndValue")
            if oid_end - o == 3 and buf[o] == 0x55 and buf[o + 1] == 0x04 and buf[o + 2] == 0x03:
                cn = _string(buf, m[_TAG], m[_START], value_end)
            p = atv_end
        pos = set_end
    return cn


def spki_of_certificate(der):
    """The whole SubjectPublicKeyInfo TLV of a DER certificate (bytes, bytearray or
    memoryview), as a memoryview slice of the input: the bytes a pin hashes.

    The hot path: it checks the structure on the way to the SPKI (outer span, tags, lengths,
    a SEQUENCE after the TBSCertificate) and nothing past the SPKI's header: not its inside,
    the extensions, the signature fields, the names or the dates. On the device mbedTLS has
    parsed the whole certificate before the callback sees it; use parse_certificate for
    bytes nobody has checked."""
    buf = der if type(der) is memoryview else memoryview(der)
    m = [0] * _M_SIZE
    _walk(buf, m)
    return buf[m[_SPKI] : m[_SPKI_END]]


def subject_cn(der):
    """The subject's commonName of a DER certificate (None if it has none), by the hot path's
    walk and then the subject Name: for certificates mbedTLS has parsed already (the verify
    callback). parse_certificate checks everything else as well, for bytes nobody has checked."""
    buf = der if type(der) is memoryview else memoryview(der)
    m = [0] * _M_SIZE
    _walk(buf, m)
    tbs_end = m[_TBS_END]
    pos = m[_FIELDS]
    for _ in range(4):  # serialNumber, signature, issuer, validity: walked already, so plain reads
        pos = _tlv(buf, pos, tbs_end, m)
    s, e = _content(buf, pos, tbs_end, m)
    return _name_cn(buf, s, e, m)


def _content(buf, pos, end, m):
    """Content start and end of the (already walked) TLV at pos."""
    e = _tlv(buf, pos, end, m)
    return m[_START], e


def parse_certificate(der):
    """A Certificate (spki, subject_cn, not_before, not_after) from a DER certificate, after
    checking that all of it is well-formed DER (every length, every nesting level) and that
    its structure up to the SPKI and around it is X.509's."""
    buf = der if type(der) is memoryview else memoryview(der)
    m = [0] * _M_SIZE
    n = len(buf)
    if n == 0:
        raise DerError("empty")
    # The outer span first, so trailing bytes are reported as such, then the whole tree.
    if _expect(buf, 0, n, m, _SEQ, "Certificate") != n:
        raise DerError("trailing bytes after Certificate")
    _check_tree(buf, 0, n, m)
    _walk(buf, m)
    _check_rest(buf, m)
    spki = buf[m[_SPKI] : m[_SPKI_END]]
    # serialNumber, signature, issuer, validity, subject: already walked, so plain reads
    tbs_end = m[_TBS_END]
    issuer = _tlv(buf, _tlv(buf, m[_FIELDS], tbs_end, m), tbs_end, m)
    validity = _tlv(buf, issuer, tbs_end, m)
    subject = _tlv(buf, validity, tbs_end, m)

    s, e = _content(buf, issuer, tbs_end, m)
    _name_cn(buf, s, e, m)  # validated, value unused
    s, e = _content(buf, subject, tbs_end, m)
    cn = _name_cn(buf, s, e, m)

    # Validity ::= SEQUENCE { notBefore Time, notAfter Time }
    pos, end = _content(buf, validity, tbs_end, m)
    if pos >= end:
        raise DerError("missing notBefore")
    e = _tlv(buf, pos, end, m)
    not_before = _time(buf, m[_TAG], m[_START], e)
    if e >= end:
        raise DerError("missing notAfter")
    e2 = _tlv(buf, e, end, m)
    not_after = _time(buf, m[_TAG], m[_START], e2)
    if e2 != end:
        raise DerError("trailing bytes in Validity")
    return Certificate(spki, cn, not_before, not_after)
