# ECDSA P-256 / SHA-256 signature verification in pure Python, for MicroPython on an ESP32.
#
# Public API:
#   verify_p256(public_key, digest, signature) -> None, or raises SignatureError
#       public_key: 65-byte uncompressed SEC1 point 04||X||Y
#       digest:     32-byte SHA-256 of the message (the caller hashes: hashlib is native)
#       signature:  64 bytes r||s, big-endian, 32 bytes each
#   decode_der_signature(der) -> 64 bytes r||s     (strict DER, as KMS/HSMs return it)
#   public_key_from_spki(spki) -> 65 bytes         (P-256 SubjectPublicKeyInfo DER, uncompressed)
#   check_point(public_key) -> None, or raises SignatureError: 04||X||Y, X and Y below p, on
#       the curve ((0, 0) is not). pinagent.signers checks every key of a new signer set with it.
#
# How it is fast enough (bigints are software on the device; 3-argument pow is native C):
# - Jacobian coordinates, a = -3 doubling: no inversion inside the ladder.
# - u1*G + u2*Q in one pass of ~256 doublings (interleaved width-5 wNAF): the additions for G
#   use G, 3G, .. 15G in affine form (mixed additions, 11 multiplications), built on the first
#   verification and kept (~1.8 KB); Q, 3Q, .. 15Q are built per call in Jacobian form with
#   Z^2 and Z^3 cached (general additions, 14 multiplications; ~3.6 KB while verifying).
# - No inversion at the end either: x(R) = X/Z^2 is compared as X == r*Z^2 (mod p), and
#   X == (r+n)*Z^2 when r+n < p, since x(R) mod n == r means x(R) is r or r+n.
# - Values are reduced mod p after multiplications only (sums and differences stay small).
# Constant time is not a goal: verification only handles public data.
# Measured by bench/bench_ecdsa.py: ~10 ms per verification on the WebAssembly VM, estimated
# 0.35-0.5 s on an ESP32 at 240 MHz (+-2x, method in the bench); ~16 KB peak live heap
# including this module's code; each verification leaves ~780 KB of garbage for the GC.

# High-s signatures (s > n/2) are valid ECDSA and are accepted: the bundle format does not rely
# on signatures being non-malleable. A bundle's identity is the SHA-256 of its signed bytes (the
# digest every signature covers), never of the whole file: (r, n - s) is as valid as (r, s), and a
# signature by a key the device does not know is not checked at all, so the signature bytes of one
# bundle can always differ. The host tool signs with low s (s <= n/2) so its own output is
# canonical; refusing high s here would not make the bytes unique (unknown keys' signatures) and
# would refuse bundles installed before, when the agent re-verifies them at boot.

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


# Curve P-256 (SEC 2 / FIPS 186-4): y^2 = x^3 - 3x + b over GF(p), prime order n.
_P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
_GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
_GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5

# wNAF widths: G's table holds 2^(W_G-2) affine points, Q's 2^(W_Q-2) Jacobian points.
_W_G = const(5)
_W_Q = const(5)

# The DER header of a P-256 SubjectPublicKeyInfo with an uncompressed point: SEQUENCE {
# SEQUENCE { OID id-ecPublicKey, OID prime256v1 }, BIT STRING { 0 unused bits, 04 ... } }.
# DER is canonical, so every such key starts with exactly these bytes.
_SPKI_HEADER = b"\x30\x59\x30\x13\x06\x07\x2a\x86\x48\xce\x3d\x02\x01\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07\x03\x42\x00"
_SPKI_COMPRESSED_HEADER = b"\x30\x39\x30\x13\x06\x07\x2a\x86\x48\xce\x3d\x02\x01\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07\x03\x22\x00"

_g_table = None  # odd multiples of G, affine, built on first use (see _g_odd_multiples)


class SignatureError(ValueError):
    """A signature that does not verify, or an input that is not a well-formed P-256 key,
    digest or signature; `reason` says which."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


# ---- public API ----------------------------------------------------------------------------


def verify_p256(public_key, digest, signature):
    """Returns None if `signature` (r||s, 64 bytes) is a valid ECDSA P-256 signature of the
    SHA-256 `digest` (32 bytes) under `public_key` (04||X||Y, 65 bytes); raises SignatureError
    otherwise. Never returns a bool, so a forgotten check cannot pass silently."""
    qx, qy = _decode_point(public_key)
    if len(digest) != 32:
        raise SignatureError("digest must be 32 bytes, got %d" % len(digest))
    if len(signature) != 64:
        raise SignatureError("signature must be 64 bytes r||s, got %d" % len(signature))
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if not 0 < r < _N:
        raise SignatureError("r out of range [1, n-1]")
    if not 0 < s < _N:
        raise SignatureError("s out of range [1, n-1]")
    n = _N
    e = int.from_bytes(digest, "big")  # 256-bit digest, 256-bit n: no truncation needed
    w = pow(s, n - 2, n)  # n is prime: Fermat inverse, native
    u1 = e * w % n
    u2 = r * w % n
    X, Z = _mul_add(u1, u2, qx, qy)
    if Z == 0:
        raise SignatureError("signature does not match")  # R is the point at infinity
    p = _P
    zz = Z * Z % p
    if (r * zz - X) % p == 0:
        return None
    if r + n < p and ((r + n) * zz - X) % p == 0:
        return None
    raise SignatureError("signature does not match")


def decode_der_signature(der):
    """The 64-byte r||s of a DER ECDSA-Sig-Value SEQUENCE { INTEGER r, INTEGER s }. Strict:
    short-form lengths only (a P-256 signature is at most 72 bytes), minimal non-negative
    integers of at most 32 significant bytes, nothing after the SEQUENCE or inside it after s.
    Range checks (r, s in [1, n-1]) are verify_p256's."""
    der = memoryview(der)
    if len(der) < 2 or der[0] != 0x30:
        raise SignatureError("DER signature: not a SEQUENCE")
    if der[1] & 0x80:
        raise SignatureError("DER signature: long-form length")
    if der[1] + 2 != len(der):
        raise SignatureError("DER signature: length does not match the input (trailing bytes?)")
    r, i = _der_integer(der, 2)
    s, i = _der_integer(der, i)
    if i != len(der):
        raise SignatureError("DER signature: bytes after s")
    out = bytearray(64)
    out[32 - len(r) : 32] = r
    out[64 - len(s) :] = s
    return bytes(out)


def public_key_from_spki(spki):
    """The 65-byte uncompressed point of a P-256 SubjectPublicKeyInfo (DER): id-ecPublicKey
    with the named curve prime256v1 and an uncompressed point, checked to be on the curve."""
    spki = memoryview(spki)
    if bytes(spki[:26]) == _SPKI_COMPRESSED_HEADER:
        raise SignatureError("SPKI: compressed point (only uncompressed 04||X||Y is supported)")
    if len(spki) != 91 or bytes(spki[:26]) != _SPKI_HEADER:
        raise SignatureError("SPKI: not a P-256 (prime256v1) key with an uncompressed point")
    key = bytes(spki[26:])
    _decode_point(key)
    return key


def check_point(public_key):
    """Returns None if `public_key` (65 bytes 04||X||Y) is a valid P-256 public key: X and Y
    below p and on the curve; raises SignatureError saying which check failed otherwise."""
    _decode_point(public_key)


# ---- encoding checks ---------------------------------------------------------------------


def _decode_point(key):
    if len(key) != 65:
        raise SignatureError("public key must be 65 bytes 04||X||Y, got %d" % len(key))
    if key[0] != 0x04:
        raise SignatureError("public key is not an uncompressed point (prefix 0x%02x)" % key[0])
    p = _P
    x = int.from_bytes(key[1:33], "big")
    y = int.from_bytes(key[33:65], "big")
    if x >= p or y >= p:
        raise SignatureError("public key coordinate not below p")
    # (0, 0) and every other off-curve pair fail here; 04||.. cannot encode infinity.
    if (y * y - (x * x * x - 3 * x + _B)) % p != 0:
        raise SignatureError("public key is not on the curve")
    return x, y


def _der_integer(der, i):
    # Returns (the integer's significant big-endian bytes, index after it).
    if i + 2 > len(der) or der[i] != 0x02:
        raise SignatureError("DER signature: INTEGER expected")
    n = der[i + 1]
    i += 2
    if n & 0x80:
        raise SignatureError("DER signature: long-form length")
    if n == 0 or i + n > len(der):
        raise SignatureError("DER signature: bad INTEGER length")
    v = der[i : i + n]
    if v[0] & 0x80:
        raise SignatureError("DER signature: negative INTEGER")
    if n > 1 and v[0] == 0 and not v[1] & 0x80:
        raise SignatureError("DER signature: non-minimal INTEGER")
    if v[0] == 0 and n > 1:
        v = v[1:]
    if len(v) > 32:
        raise SignatureError("DER signature: INTEGER longer than 32 bytes")
    return v, i + n


# ---- scalar multiplication ---------------------------------------------------------------


def _wnaf(k, w):
    # Width-w NAF of k >= 0 as a bytearray, least significant digit first: each digit is 0
    # or odd in [-(2^(w-1)-1), 2^(w-1)-1] (stored as a signed byte), and a nonzero digit is
    # followed by at least w-1 zeros. Works on k's bytes with small ints: no bigint per bit.
    kb = k.to_bytes(34, "little")  # 2 spare bytes so the window read below never overruns
    out = bytearray(258)
    mask = (1 << w) - 1
    half = 1 << (w - 1)
    i = 0
    carry = 0  # 1 when the remaining value is (k >> i) + 1
    while i < 257:
        j = i >> 3
        bit = (kb[j] >> (i & 7)) & 1
        if bit ^ carry:  # remaining value is odd: emit a digit
            win = (((kb[j] | (kb[j + 1] << 8)) >> (i & 7)) & mask) + carry
            if win >= half:
                out[i] = (win - (1 << w)) & 0xFF
                carry = 1
            else:
                out[i] = win
                carry = 0
            i += w
        else:
            i += 1
    return out


def _top(naf):
    i = len(naf) - 1
    while i >= 0 and not naf[i]:
        i -= 1
    return i


def _g_odd_multiples():
    # G, 3G, 5G, ... (2^(W_G-1)-1)G in affine form: built once (~1 ms of bigint work on the
    # first verification), then kept for the life of the program.
    global _g_table
    if _g_table is None:
        jac = _odd_multiples(_GX, _GY, 1 << (_W_G - 2))
        # One inversion for all of them (Montgomery's trick), then x = X/Z^2, y = Y/Z^3.
        p = _P
        count = len(jac)
        prefix = [1] * (count + 1)
        for k in range(count):
            prefix[k + 1] = prefix[k] * jac[k][2] % p
        inv = pow(prefix[count], p - 2, p)
        table = [None] * count
        for k in range(count - 1, -1, -1):
            X, Y, Z, zz, zzz = jac[k]
            zinv = inv * prefix[k] % p
            inv = inv * Z % p
            z2 = zinv * zinv % p
            table[k] = (X * z2 % p, Y * z2 * zinv % p)
        _g_table = table
    return _g_table


def _odd_multiples(x, y, count):
    # [P, 3P, 5P, ...] (count points) in Jacobian form with Z^2 and Z^3 cached:
    # (X, Y, Z, Z^2, Z^3). P = (x, y) affine.
    p = _P
    dX, dY, dZ = _double(x, y, 1)
    dzz = dZ * dZ % p
    dzzz = dzz * dZ % p
    pts = [(x, y, 1, 1, 1)]
    X, Y, Z = x, y, 1
    for k in range(1, count):
        X, Y, Z = _add_jacobian(X, Y, Z, dX, dY, dZ, dzz, dzzz)
        zz = Z * Z % p
        pts.append((X, Y, Z, zz, zz * Z % p))
    return pts


def _mul_add(u1, u2, qx, qy):
    # u1*G + u2*Q, interleaved wNAF. Returns (X, Z) of the Jacobian result; Z == 0 means
    # the point at infinity.
    p = _P
    gt = _g_odd_multiples()
    qt = _odd_multiples(qx, qy, 1 << (_W_Q - 2))
    ng = _wnaf(u1, _W_G)
    nq = _wnaf(u2, _W_Q)
    X, Y, Z = 1, 1, 0
    i = max(_top(ng), _top(nq))
    while i >= 0:
        if Z:
            # The doubling (same formulas as _double), inlined: 256 of them make up about
            # two thirds of the work, and a call plus a tuple costs as much as a multiplication.
            delta = Z * Z % p
            gamma = Y * Y % p
            beta = X * gamma % p
            alpha = 3 * (X - delta) * (X + delta) % p
            Z = (Y * Z << 1) % p
            X = (alpha * alpha - (beta << 3)) % p
            Y = (alpha * ((beta << 2) - X) - (gamma * gamma << 3)) % p
        d = ng[i]
        if d:
            if d < 128:
                x2, y2 = gt[d >> 1]
                X, Y, Z = _add_affine(X, Y, Z, x2, y2)
            else:
                x2, y2 = gt[(256 - d) >> 1]
                X, Y, Z = _add_affine(X, Y, Z, x2, p - y2)
        d = nq[i]
        if d:
            if d < 128:
                X2, Y2, Z2, zz2, zzz2 = qt[d >> 1]
            else:
                X2, Y2, Z2, zz2, zzz2 = qt[(256 - d) >> 1]
                Y2 = p - Y2
            X, Y, Z = _add_jacobian(X, Y, Z, X2, Y2, Z2, zz2, zzz2)
        i -= 1
    return X, Z


# ---- point arithmetic (Jacobian: x = X/Z^2, y = Y/Z^3; Z == 0 is infinity) -----------------


def _double(X, Y, Z):
    # dbl-2001-b for a = -3: 3M + 5S.
    p = _P
    delta = Z * Z % p
    gamma = Y * Y % p
    beta = X * gamma % p
    alpha = 3 * (X - delta) * (X + delta) % p
    X3 = (alpha * alpha - 8 * beta) % p
    Z3 = 2 * Y * Z % p
    Y3 = (alpha * (4 * beta - X3) - 8 * gamma * gamma) % p
    return X3, Y3, Z3


def _add_affine(X1, Y1, Z1, x2, y2):
    # (X1, Y1, Z1) + (x2, y2) with the second point affine (Z2 = 1): 8M + 3S.
    if Z1 == 0:
        return x2, y2, 1
    p = _P
    z1z1 = Z1 * Z1 % p
    H = x2 * z1z1 % p - X1
    R = y2 * (Z1 * z1z1 % p) % p - Y1
    if H == 0:
        if R == 0:
            return _double(x2, y2, 1)
        return 1, 1, 0  # P + (-P)
    HH = H * H % p
    HHH = H * HH % p
    V = X1 * HH % p
    X3 = (R * R - HHH - 2 * V) % p
    Y3 = (R * (V - X3) - Y1 * HHH) % p
    return X3, Y3, Z1 * H % p


def _add_jacobian(X1, Y1, Z1, X2, Y2, Z2, zz2, zzz2):
    # (X1, Y1, Z1) + (X2, Y2, Z2) with Z2 != 0 and zz2 = Z2^2, zzz2 = Z2^3: 12M + 2S.
    if Z1 == 0:
        return X2, Y2, Z2
    p = _P
    z1z1 = Z1 * Z1 % p
    U1 = X1 * zz2 % p
    S1 = Y1 * zzz2 % p
    H = X2 * z1z1 % p - U1
    R = Y2 * (Z1 * z1z1 % p) % p - S1
    if H == 0:
        if R == 0:
            return _double(X1, Y1, Z1)
        return 1, 1, 0
    HH = H * H % p
    HHH = H * HH % p
    V = U1 * HH % p
    X3 = (R * R - HHH - 2 * V) % p
    Y3 = (R * (V - X3) - S1 * HHH) % p
    return X3, Y3, Z1 * Z2 % p * H % p
