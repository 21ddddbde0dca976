# pinagent.http: agent.requests, pinned HTTPS with the interface of MicroPython's `requests`,
# over a fake TLS adapter serving scripted responses (fakeclients.py). The real thing, on the
# unix port against a real HTTPS server, is tests/host/test_pinned_clients.py. Runs unchanged
# under CPython and on the MicroPython VM.

import json

from fakeclients import GOOD, HOST, WRONG, make_agent
from support import raises

from pinagent import agent, store  # noqa: F401  (fakeclients' imports, named here: the VM runner loads each alone)
from pinagent import connect as C
from pinagent import http as H

# ---- HTTP


def _response(status=200, body=b"", headers=(), reason="OK"):
    head = "HTTP/1.1 %d %s\r\n" % (status, reason)
    for k, v in headers:
        head += "%s: %s\r\n" % (k, v)
    return head.encode() + b"\r\n" + body


def test_split_and_join_urls():
    assert H.split_url("https://a.example/x?y=1#frag") == ("a.example", 443, "/x?y=1")
    assert H.split_url("https://a.example") == ("a.example", 443, "/")
    assert H.split_url("https://a.example?q") == ("a.example", 443, "/?q")
    assert H.split_url("HTTPS://a.example:8443/") == ("a.example", 8443, "/")
    assert H.split_url("https://[fd00::1]:8443/p") == ("fd00::1", 8443, "/p")
    for bad in ("http://a.example/", "ftp://a.example/", "https://", "https://:443/", "https://a.example:0/",
                "https://a.example:x/", "https://u:p@a.example/", "https://[fd00::1/", "https://a.example/\r\nX: 1"):
        raises(ValueError, H.split_url, bad)
    target = ("a.example", 8443, "/dir/page?q=1")
    assert H.join_url(target, "/other") == "https://a.example:8443/other"
    assert H.join_url(target, "next") == "https://a.example:8443/dir/next"
    assert H.join_url(target, "//b.example/x") == "https://b.example/x"
    assert H.join_url(target, "https://c.example/") == "https://c.example/"
    assert H.join_url(("fd00::1", 443, "/"), "/x") == "https://[fd00::1]/x"


def test_get_with_a_length_reads_one_buffer_even_in_pieces():
    agent, tls = make_agent()
    tls.chains[HOST] = GOOD
    body = bytes(range(256)) * 16
    tls.responses[HOST] = [_response(200, body, [("Content-Length", "4096"), ("X-A", "1"), ("x-a", "2")])]
    tls.piece = 100  # the body arrives in many reads
    r = agent.requests.get("https://chain-leaf.example/state", headers={"Accept": "*/*"}, timeout=3)
    assert (r.status_code, r.reason) == (200, "OK")
    assert r.content == body and tls.sockets[0].closed
    assert r.headers["X-A"] == "1" and r.headers["x-a"] == "2"
    sent = tls.sockets[0].sent
    assert sent.startswith(b"GET /state HTTP/1.1\r\n")
    assert b"\r\nAccept: */*\r\n" in sent and b"\r\nHost: chain-leaf.example\r\n" in sent
    assert b"Connection: close\r\n\r\n" in sent and b"Content-Length" not in sent
    assert tls.calls == [("open", HOST, 443)]


def test_post_json_auth_and_headers_on_the_wire():
    agent, tls = make_agent()
    tls.chains[HOST] = GOOD
    tls.responses[HOST] = [_response(201, b'{"id": 7}', [("Content-Length", "9")], "Created")]
    r = agent.requests.post("https://chain-leaf.example:8443/items", json={"t": 21}, auth=("user", "secret"))
    assert r.status_code == 201 and r.json() == {"id": 7} and r.text == '{"id": 7}'
    head, _, body = tls.sockets[0].sent.partition(b"\r\n\r\n")
    assert json.loads(body) == {"t": 21}
    assert b"Content-Type: application/json" in head and b"Content-Length: %d" % len(body) in head
    assert b"Authorization: Basic dXNlcjpzZWNyZXQ=" in head and b"Host: chain-leaf.example:8443" in head
    raises(ValueError, agent.requests.get, "https://chain-leaf.example/", headers={"X": "a\r\nEvil: 1"})
    raises(ValueError, agent.requests.post, "https://chain-leaf.example/", data=b"x", json={})


def test_chunked_bodies_and_streams():
    agent, tls = make_agent()
    tls.chains[HOST] = GOOD
    chunked = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n"
    tls.responses[HOST] = [_response(200, chunked, [("Transfer-Encoding", "chunked")])]
    assert agent.requests.get("https://chain-leaf.example/").content == b"hello, world"
    r = agent.requests.get("https://chain-leaf.example/", stream=True)
    pieces = []
    while True:
        p = r.raw.read(3)
        if not p:
            break
        pieces.append(p)
    assert b"".join(pieces) == b"hello, world" and max(len(p) for p in pieces) <= 3
    tls.responses[HOST] = [_response(200, b"zz\r\nhello\r\n", [("Transfer-Encoding", "chunked")])]
    raises(ValueError, lambda: agent.requests.get("https://chain-leaf.example/").content)


def test_short_bodies_and_bad_responses_are_errors():
    agent, tls = make_agent()
    tls.chains[HOST] = GOOD
    tls.responses[HOST] = [_response(200, b"only this", [("Content-Length", "100")])]
    tls.piece = 4
    raises(ValueError, lambda: agent.requests.get("https://chain-leaf.example/").content)
    assert tls.sockets[-1].closed
    for bad in (b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
                _response(200, b"", [("Content-Length", "-1")])):
        tls.responses[HOST] = [bad]
        raises(ValueError, agent.requests.get, "https://chain-leaf.example/")
        assert tls.sockets[-1].closed


def test_no_body_for_head_and_204():
    agent, tls = make_agent()
    tls.chains[HOST] = GOOD
    tls.responses[HOST] = [_response(200, b"", [("Content-Length", "4096")]), _response(204, b"")]
    r = agent.requests.head("https://chain-leaf.example/")
    assert r.content == b"" and r.headers["Content-Length"] == "4096" and tls.sockets[0].closed
    assert agent.requests.delete("https://chain-leaf.example/x").content == b""


def test_redirects_open_a_pinned_connection_to_the_target():
    agent, tls = make_agent()
    tls.chains[HOST] = GOOD
    tls.chains["intermediate.example"] = GOOD  # pinned to the intermediate: allowed
    tls.responses[HOST] = [_response(302, b"", [("Location", "https://intermediate.example/next"),
                                                ("Content-Length", "0")])]
    tls.responses["intermediate.example"] = [_response(200, b"there", [("Content-Length", "5")])]
    r = agent.requests.post("https://chain-leaf.example/go", data=b"form", auth=("u", "p"))
    assert r.content == b"there"
    assert [c[:2] for c in tls.calls] == [("open", HOST), ("open", "intermediate.example")]
    second = tls.sockets[1].sent
    assert second.startswith(b"GET /next HTTP/1.1\r\nHost: intermediate.example\r\n")  # 302: GET, no body
    assert b"chain-leaf" not in second
    assert b"Authorization" not in second and b"form" not in second  # credentials stay with their host
    # 307 keeps the method and the body; same host keeps the credentials
    tls.responses[HOST] = [_response(307, b"", [("Location", "/again"), ("Content-Length", "0")]),
                           _response(200, b"ok", [("Content-Length", "2")])]
    assert agent.requests.put("https://chain-leaf.example/go", data=b"form", auth=("u", "p")).content == b"ok"
    again = tls.sockets[-1].sent
    assert again.startswith(b"PUT /again HTTP/1.1\r\n") and again.endswith(b"form") and b"Authorization" in again


def test_a_redirect_to_a_refused_host_is_refused_by_its_rule():
    agent, tls = make_agent()
    tls.chains[HOST] = GOOD
    tls.chains["strict.example"] = WRONG  # its rule pins another key
    tls.responses[HOST] = [_response(301, b"", [("Location", "https://strict.example/")])]
    e = raises(C.PinBlocked, agent.requests.get, "https://chain-leaf.example/")
    assert e.verdict.host == "strict.example" and e.reason == "mismatch"
    tls.responses[HOST] = [_response(301, b"", [("Location", "http://chain-leaf.example/")])]
    raises(ValueError, agent.requests.get, "https://chain-leaf.example/")  # never unencrypted
    tls.responses[HOST] = [_response(302, b"", [("Location", "/loop")])]
    raises(ValueError, agent.requests.get, "https://chain-leaf.example/")  # too many redirects
    assert all(s.closed for s in tls.sockets)


def test_unpinned_block_refuses_a_redirect_to_a_host_without_a_rule():
    agent, tls = make_agent("v2.bin")  # unpinned "block"
    tls.chains[HOST] = GOOD
    tls.chains["cdn.example"] = GOOD
    tls.responses[HOST] = [_response(302, b"", [("Location", "https://cdn.example/file")])]
    e = raises(C.PinBlocked, agent.requests.get, "https://chain-leaf.example/")
    assert (e.reason, e.verdict.host) == ("no_policy_blocked", "cdn.example")
    assert [s.host for s in tls.sockets] == [HOST]  # no socket to cdn.example survived the handshake
