"""Pinned HTTPS with the interface of MicroPython's `requests`: every connection is made by
agent.connect, so every one runs the pin check (and records its failure reports).

    r = agent.requests.get("https://api.example.com/v1/state", headers={"Accept": "..."}, timeout=10)
    r = agent.requests.post(url, json={"t": 21.5}, auth=("user", "secret"))
    r.status_code, r.reason, r.headers, r.content, r.text, r.json(), r.close()
    agent.requests.request(method, url, data=None, json=None, headers=None, stream=None,
                           auth=None, timeout=None)         also get, head, post, put, patch, delete

Loaded only when the application first uses agent.requests (pinagent.agent), so a board that
never speaks HTTP never holds it. The global `requests` module is left alone: it checks no
certificate at all (it sets CERT_NONE), which is why this one exists.

- https:// URLs only (a plain http:// URL or redirect is refused with ValueError): an
  unencrypted connection cannot be pinned. Credentials in the URL (user@host) are refused too.
- Redirects (301, 302, 303, 307, 308; at most MAX_REDIRECTS) open a new pinned connection to
  the target, decided by the target host's own rule: with unpinned = "block" a redirect to a
  host without a rule raises PinBlocked. 301/302/303 continue as GET without a body (HEAD
  stays HEAD), 307/308 repeat the method and body. Authorization is dropped when the host
  changes.
- Bodies: Content-Length, chunked transfer encoding, or up to the end of the connection. The
  body is read when r.content (or .text, .json()) is first used; r.raw.read(n) reads it in
  pieces instead (stream=True is accepted for compatibility: the body is always read lazily).
  Content-Length bodies are read into one buffer of their size.
- One request per connection (Connection: close). Header names and values, and the path, may
  not contain CR or LF (no header injection).

Errors: pinagent.connect.ConnectError (PinBlocked, TlsRefused, NetworkError, NoBundle) from
the connection, as agent.connect raises them; OSError from the socket; ValueError for a URL
this client refuses or a response it cannot parse.
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


MAX_REDIRECTS = const(5)
MAX_HEADER_LINE = const(2048)  # bytes in one response header line
MAX_HEADERS = const(64)  # response header lines
_READ = const(512)  # piece size for bodies without a length

_REDIRECTS = (301, 302, 303, 307, 308)


class Response:
    """One response. The connection stays open until the body was read or close() is called."""

    def __init__(self, status, reason, headers, raw):
        self.status_code = status
        self.reason = reason
        self.headers = headers
        self.raw = raw
        self.encoding = "utf-8"
        self._content = None

    @property
    def content(self):
        if self._content is None:
            try:
                self._content = self.raw.read()
            finally:
                self.raw.close()
        return self._content

    @property
    def text(self):
        return str(self.content, self.encoding)

    def json(self):
        import json

        return json.loads(self.content)

    def close(self):
        self.raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Body:
    """The response body as a stream: read(n=-1) -> bytes (b"" at the end), close()."""

    def __init__(self, sock, length, chunked):
        self._sock = sock
        # bytes left: of the body (its length known), of the current chunk (chunked), else -1
        self._left = -1 if chunked else length
        self._chunked = chunked
        self._done = length == 0 and not chunked
        if self._done:
            self.close()

    def close(self):
        sock, self._sock = self._sock, None
        self._done = True
        if sock is not None:
            try:
                sock.close()
            except Exception:
                pass

    def read(self, n=-1):
        if self._done:
            return b""
        if n < 0:
            return self._read_all()
        if self._chunked and self._left <= 0 and not self._next_chunk():
            return b""
        want = n if self._left < 0 else min(n, self._left)
        data = self._sock.read(want)
        if not data:
            if self._left >= 0:
                raise ValueError("the connection closed inside the body")
            self.close()
            return b""
        if self._left >= 0:
            self._left -= len(data)
            if self._left == 0 and not self._chunked:
                self.close()
        return data

    def _read_all(self):
        if not self._chunked and self._left > 0:
            data = self._exactly(self._left)
            self.close()
            return data
        pieces = []
        while True:
            piece = self.read(_READ)
            if not piece:
                break
            pieces.append(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _exactly(self, n):
        # One read usually brings the whole body (a TLS record holds up to 16 KB): no copy then.
        sock = self._sock
        first = sock.read(n)
        if first is not None and len(first) == n:
            return first
        buf = bytearray(n)
        got = 0 if not first else len(first)
        if got:
            buf[:got] = first
        first = None
        mv = memoryview(buf)
        while got < n:
            k = sock.readinto(mv[got:])
            if not k:
                raise ValueError("the connection closed after %d of %d body bytes" % (got, n))
            got += k
        return bytes(buf)

    def _next_chunk(self):
        sock = self._sock
        if self._left == 0:  # the CRLF after the previous chunk's data
            if _line(sock) not in (b"\r\n", b"\n"):
                raise ValueError("bad chunked encoding")
        line = _line(sock)
        semi = line.find(b";")
        size = line[:semi] if semi >= 0 else line
        try:
            size = int(size.strip(), 16)
        except ValueError:
            raise ValueError("bad chunk size line %r" % (line[:40],))
        if size < 0:
            raise ValueError("bad chunk size line %r" % (line[:40],))
        if size == 0:
            while _line(sock) not in (b"\r\n", b"\n", b""):  # trailers, up to the empty line
                pass
            self.close()
            return False
        self._left = size
        return True


class Client:
    """request() and one method per HTTP verb, as the `requests` module has them."""

    def __init__(self, agent):
        self.agent = agent

    def request(self, method, url, data=None, json=None, headers=None, stream=None, auth=None, timeout=None):
        if json is not None:
            if data is not None:
                raise ValueError("pass data or json, not both")
            import json as _json

            data = _json.dumps(json)
        if isinstance(data, str):
            data = data.encode("utf-8")
        hdrs = {}
        if headers:
            for k in headers:
                hdrs[k] = headers[k]
        if json is not None and not _has(hdrs, "content-type"):
            hdrs["Content-Type"] = "application/json"
        if auth is not None:
            import binascii

            token = binascii.b2a_base64(("%s:%s" % (auth[0], auth[1])).encode("utf-8"))[:-1]
            hdrs["Authorization"] = "Basic " + str(token, "ascii")
        host = None
        for _ in range(MAX_REDIRECTS + 1):
            target = split_url(url)
            if host is not None and target[0] != host:
                _drop(hdrs, "authorization")  # credentials stay with the host they were given for
                _drop(hdrs, "host")
            host = target[0]
            resp, location = self._once(method, target, hdrs, data, timeout)
            if resp.status_code not in _REDIRECTS or location is None:
                return resp
            resp.close()
            url = join_url(target, location)
            if resp.status_code in (301, 302, 303):
                if method != "HEAD":
                    method = "GET"
                data = None
                _drop(hdrs, "content-type")
        raise ValueError("more than %d redirects" % MAX_REDIRECTS)

    def _once(self, method, target, hdrs, data, timeout):
        host, port, path = target
        head = _request_head(method, host, port, path, hdrs, data)
        sock = self.agent.connect(host, port, timeout)
        try:
            sock.write(head)
            head = None
            if data:
                sock.write(data)
            status, reason, headers, length, chunked, location = _read_head(sock)
            if method == "HEAD" or status == 204 or status == 304 or status < 200:
                length, chunked = 0, False
            raw = Body(sock, length, chunked)
        except BaseException:
            try:
                sock.close()
            except Exception:
                pass
            raise
        return Response(status, reason, headers, raw), location

    def get(self, url, **kw):
        return self.request("GET", url, **kw)

    def head(self, url, **kw):
        return self.request("HEAD", url, **kw)

    def post(self, url, **kw):
        return self.request("POST", url, **kw)

    def put(self, url, **kw):
        return self.request("PUT", url, **kw)

    def patch(self, url, **kw):
        return self.request("PATCH", url, **kw)

    def delete(self, url, **kw):
        return self.request("DELETE", url, **kw)


def split_url(url):
    """"https://host[:port]/path?query" -> (host, port, "/path?query"); ValueError otherwise.
    An IPv6 literal is written in brackets ("https://[fd00::1]:8443/")."""
    if not isinstance(url, str) or url[:8].lower() != "https://":
        raise ValueError("pinned requests take https:// URLs only, not %r" % (str(url)[:60],))
    rest = url[8:]
    end = len(rest)
    for c in "/?#":
        i = rest.find(c)
        if 0 <= i < end:
            end = i
    netloc, path = rest[:end], rest[end:]
    hash_at = path.find("#")
    if hash_at >= 0:
        path = path[:hash_at]
    if not path or path[0] != "/":
        path = "/" + path
    if "@" in netloc:
        raise ValueError("credentials in the URL are refused: pass auth=(user, password)")
    port = "443"
    if netloc[:1] == "[":
        close = netloc.find("]")
        if close < 0:
            raise ValueError("bad IPv6 address in %r" % (url[:60],))
        host, after = netloc[1:close], netloc[close + 1:]
        if after:
            if after[0] != ":":
                raise ValueError("bad URL %r" % (url[:60],))
            port = after[1:]
    else:
        colon = netloc.find(":")
        host = netloc if colon < 0 else netloc[:colon]
        if colon >= 0:
            port = netloc[colon + 1:]
    if not host:
        raise ValueError("no host in %r" % (url[:60],))
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("bad port in %r" % (url[:60],))
    _no_crlf(path)
    return host, int(port), path


def join_url(target, location):
    """The URL a Location header points to, seen from `target` (host, port, path)."""
    if "://" in location[:12]:
        return location
    host, port, path = target
    netloc = ("[%s]" % host) if ":" in host else host
    if port != 443:
        netloc += ":%d" % port
    if location[:2] == "//":
        return "https:" + location
    if location[:1] != "/":
        q = path.find("?")
        base = path if q < 0 else path[:q]
        location = base[: base.rfind("/") + 1] + location
    return "https://" + netloc + location


def _request_head(method, host, port, path, hdrs, data):
    _no_crlf(method)
    out = [method, " ", path, " HTTP/1.1\r\n"]
    if not _has(hdrs, "host"):
        name = ("[%s]" % host) if ":" in host else host
        out.append("Host: %s\r\n" % (name if port == 443 else "%s:%d" % (name, port)))
    for k in hdrs:
        if k.lower() in ("content-length", "connection", "transfer-encoding"):
            continue  # this client frames the body itself
        v = hdrs[k]
        if not isinstance(v, str):
            v = str(v, "utf-8") if isinstance(v, (bytes, bytearray)) else str(v)
        _no_crlf(k)
        _no_crlf(v)
        out.append("%s: %s\r\n" % (k, v))
    if data is not None:
        out.append("Content-Length: %d\r\n" % len(data))
    out.append("Connection: close\r\n\r\n")
    return "".join(out).encode("utf-8")


def _read_head(sock):
    """(status, reason, headers, length, chunked, location) of the response; header names as
    the server wrote them."""
    line = _line(sock)
    parts = line.split(None, 2)
    if len(parts) < 2 or parts[0][:5] != b"HTTP/" or not parts[1].isdigit():
        raise ValueError("not an HTTP response: %r" % (line[:40],))
    status = int(parts[1])
    reason = str(parts[2].rstrip(), "utf-8") if len(parts) > 2 else ""
    headers = {}
    length = -1
    chunked = False
    location = None
    for _ in range(MAX_HEADERS + 1):
        line = _line(sock)
        if line in (b"\r\n", b"\n", b""):
            return status, reason, headers, length, chunked, location
        colon = line.find(b":")
        if colon <= 0:
            raise ValueError("bad header line %r" % (line[:40],))
        name = str(line[:colon].strip(), "utf-8")
        value = str(line[colon + 1:].strip(), "utf-8")
        low = name.lower()
        if low == "content-length":
            if not value.isdigit():
                raise ValueError("bad Content-Length %r" % (value[:20],))
            length = int(value)
        elif low == "transfer-encoding":
            chunked = value.lower().endswith("chunked")
        elif low == "location":
            location = value
        headers[name] = value if name not in headers else headers[name] + ", " + value
    raise ValueError("more than %d response headers" % MAX_HEADERS)


def _line(sock):
    line = sock.readline()
    if line is None:
        raise OSError("no data: the socket is non-blocking")  # readline on a blocking socket never returns None
    if len(line) > MAX_HEADER_LINE:
        raise ValueError("a response line longer than %d bytes" % MAX_HEADER_LINE)
    return line


def _has(hdrs, name):
    for k in hdrs:
        if k.lower() == name:
            return True
    return False


def _drop(hdrs, name):
    for k in list(hdrs):
        if k.lower() == name:
            del hdrs[k]


def _no_crlf(text):
    if "\r" in text or "\n" in text:
        raise ValueError("CR or LF in a request line or header: %r" % (text[:40],))
