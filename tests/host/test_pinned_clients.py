"""The clients MicroPython applications use, pinned by the agent, on the real MicroPython unix
port (mbedTLS, the real pinagent.io.tls adapter) against real servers on 127.0.0.1: an HTTPS
server and an amqtt MQTT broker with TLS listeners, each serving in turn

    legit      the pinned leaf, chained to the bundle's CA                  -> connects
    rogue      a rogue CA's leaf for the same name                           -> refused
    unpinned   a leaf from the trusted CA whose key no pin names             -> refused (mismatch)
    wrong      the pinned key in a certificate for another name              -> refused (CA check)

through agent.requests (pinned HTTP), asyncio streams with agent.tls_context() (handshake on
the first read or write) and an MQTT client written to umqtt.simple's interface
(fleetpin.sim.mqtt, ssl=agent.tls_context()). A refused connection never carries an
application byte (the servers' logs stay empty) and leaves a failure report. Plain `requests`
is shown accepting the rogue server: why the pinned client exists.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from clients_support import (
    BODY_4K,
    HttpsServer,
    MqttBroker,
    client_identity,
    make_bundle,
    micropython_or_skip,
    rule,
    run_app,
    write_flash,
)

from fleetpin.sim.pki import Pki, make_pki
from fleetpin.sim.tlsserver import TlsServer

HOST = "device.test"
CHAINS = {"legit": "leaf", "rogue": "rogue_leaf", "unpinned": "renewed_leaf", "wrong": "wrong_host_leaf"}
# what each refused chain raises, and the verdict's reason. On mbedTLS the verify callback sees
# the rogue leaf before the CA check fails, so the pin check refuses it first (mismatch).
REFUSED = {"rogue": ("PinBlocked", "mismatch"), "unpinned": ("PinBlocked", "mismatch"),
           "wrong": ("TlsRefused", "tls_failed")}


@pytest.fixture(scope="module")
def mp() -> Path:
    return micropython_or_skip()


@pytest.fixture(scope="module")
def other() -> Pki:
    """A second pinned host, with its own CA (redirect targets)."""
    return make_pki("other.test", namespace="fleetpin-clients-other")


@pytest.fixture(scope="module")
def free() -> Pki:
    """A host no rule names, under its own CA."""
    return make_pki("free.test", namespace="fleetpin-clients-free")


@pytest.fixture
def flash(tmp_path: Path, pki: Pki, other: Pki, free: Pki) -> Path:
    bundle = make_bundle([rule(HOST, pki.pins["leaf"], pki.pins["backup"]), rule("other.test", other.pins["leaf"])],
                         [pki.root.der, other.root.der, free.root.der])
    return write_flash(tmp_path, bundle)


@pytest.fixture
def https(pki: Pki) -> Any:
    servers = {name: HttpsServer(pki, leaf) for name, leaf in CHAINS.items()}
    for s in servers.values():
        s.__enter__()
    yield servers
    for s in servers.values():
        s.__exit__()


def assert_refused(result: dict[str, Any], name: str) -> None:
    error, reason = REFUSED[name]
    assert not result["ok"], result
    assert (result["error"], result["verdict"], result["allowed"]) == (error, reason, False), result
    assert result["host"] == HOST


def report_reasons(result: dict[str, Any]) -> list[str]:
    return [r[0] for r in result["reports"]]


# ---- HTTP


def test_pinned_requests_reach_only_the_pinned_server(mp: Path, tmp_path: Path, flash: Path, https: Any) -> None:
    cases = [{"id": name, "kind": "requests", "method": "GET", "url": f"https://{HOST}:{s.port}/4k"}
             for name, s in https.items()]
    got = run_app(mp, tmp_path, flash, cases)
    legit = got["legit"]
    assert legit["ok"] and legit["status"] == 200 and legit["last_verdict"] == "matched"
    assert legit["global_requests_loaded"] is False  # nothing patched, nothing loaded
    assert legit["length"] == 4096 and legit["sha256"] == __import__("hashlib").sha256(BODY_4K).hexdigest()
    for name in REFUSED:
        assert_refused(got[name], name)
        assert https[name].log == [], f"{name}: an application byte reached the server"
    assert [p for p, *_ in https["legit"].log] == ["GET"]
    # the same failure reports as agent.connect: one per refused server (ports differ)
    assert sorted(report_reasons(got["wrong"])) == ["mismatch", "mismatch", "tls_failed"]
    assert {r[2] for r in got["wrong"]["reports"]} == {https[n].port for n in REFUSED}


def test_plain_requests_accepts_the_rogue_server(mp: Path, tmp_path: Path, flash: Path, https: Any) -> None:
    """micropython-lib's requests sets CERT_NONE: it talks to anyone. Why agent.requests exists."""
    got = run_app(mp, tmp_path, flash, [
        {"id": "plain", "kind": "plain_requests", "url": f"https://{HOST}:{https['rogue'].port}/json"},
        {"id": "pinned", "kind": "requests", "method": "GET", "url": f"https://{HOST}:{https['rogue'].port}/json"},
    ])
    assert got["plain"]["ok"] and json.loads(got["plain"]["text"])["server"] == "device.test/rogue_leaf"
    assert_refused(got["pinned"], "rogue")
    assert len(https["rogue"].log) == 1  # plain requests' GET only


def test_requests_interface(mp: Path, tmp_path: Path, flash: Path, https: Any) -> None:
    base = f"https://{HOST}:{https['legit'].port}"
    cases: list[dict[str, Any]] = [
        {"id": "post_json", "kind": "requests", "method": "POST", "url": base + "/echo",
         "kwargs": {"json": {"t": 21.5}, "headers": {"X-Test": "yes"}}},
        {"id": "put_data", "kind": "requests", "method": "PUT", "url": base + "/echo?x=1",
         "kwargs": {"data": "raw text", "auth": ["user", "secret"], "timeout": 5}},
        {"id": "patch", "kind": "requests", "method": "PATCH", "url": base + "/echo", "kwargs": {"data": "p"}},
        {"id": "delete", "kind": "requests", "method": "DELETE", "url": base + "/echo"},
        {"id": "head", "kind": "requests", "method": "HEAD", "url": base + "/4k"},
        {"id": "chunked", "kind": "requests", "method": "GET", "url": base + "/chunked", "kwargs": {"stream": True}},
        {"id": "until_close", "kind": "requests", "method": "GET", "url": base + "/until-close"},
        {"id": "not_found", "kind": "requests", "method": "GET", "url": base + "/nope"},
        {"id": "relative_redirect", "kind": "requests", "method": "POST", "url": base + "/redirect?code=303&to=/json",
         "kwargs": {"data": "x"}},
        {"id": "redirect_307", "kind": "requests", "method": "POST",
         "url": base + "/redirect?code=307&to=" + base + "/echo", "kwargs": {"data": "kept"}},
        {"id": "http", "kind": "requests", "method": "GET", "url": f"http://{HOST}:{https['legit'].port}/"},
        {"id": "to_http", "kind": "requests", "method": "GET",
         "url": base + "/redirect?to=http://" + HOST + "/json"},
        {"id": "userinfo", "kind": "requests", "method": "GET", "url": f"https://u:p@{HOST}:{https['legit'].port}/"},
        {"id": "crlf", "kind": "requests", "method": "GET", "url": base + "/echo",
         "kwargs": {"headers": {"X-Test": "a\r\nInjected: 1"}}},
    ]
    got = run_app(mp, tmp_path, flash, cases)
    echo = json.loads(got["post_json"]["text"])
    assert (echo["method"], json.loads(echo["body"]), echo["content_type"], echo["x_test"]) == \
        ("POST", {"t": 21.5}, "application/json", "yes")
    assert echo["host"] == f"{HOST}:{https['legit'].port}"
    echo = json.loads(got["put_data"]["text"])
    assert (echo["method"], echo["path"], echo["body"]) == ("PUT", "/echo?x=1", "raw text")
    assert echo["authorization"] == "Basic dXNlcjpzZWNyZXQ="
    assert json.loads(got["patch"]["text"])["method"] == "PATCH"
    assert json.loads(got["delete"]["text"])["method"] == "DELETE"
    assert got["head"]["status"] == 200 and got["head"]["length"] == 0
    assert got["chunked"]["length"] == 1025 and got["chunked"]["text"].startswith("first piece, aaa")
    assert got["until_close"]["text"] == "no length, the end of the connection ends the body"
    assert got["not_found"]["status"] == 404 and got["not_found"]["text"] == "not here"
    assert got["relative_redirect"]["status"] == 200 and json.loads(got["relative_redirect"]["text"])["ok"]
    echo = json.loads(got["redirect_307"]["text"])
    assert (echo["method"], echo["body"]) == ("POST", "kept")
    for refused in ("http", "to_http", "userinfo", "crlf"):
        assert got[refused]["error"] == "ValueError", got[refused]
    methods = [m for m, *_ in https["legit"].log]
    assert "Injected" not in json.dumps([h for _, _, h, _ in https["legit"].log])
    # post_json, relative_redirect (then GET), redirect_307 twice (307 repeats the method)
    assert methods.count("POST") == 4 and methods.count("GET") >= 4


def test_a_redirect_is_decided_by_the_target_hosts_rule(mp: Path, tmp_path: Path, pki: Pki, other: Pki,
                                                        free: Pki, https: Any) -> None:
    with HttpsServer(other, "leaf") as other_ok, HttpsServer(other, "renewed_leaf") as other_unpinned, \
            HttpsServer(free, "leaf") as free_ok:
        base = f"https://{HOST}:{https['legit'].port}/redirect?to="
        cases: list[dict[str, Any]] = [
            {"id": "to_pinned", "kind": "requests", "method": "GET", "url": base + f"https://other.test:{other_ok.port}/json"},
            {"id": "to_mismatch", "kind": "requests", "method": "GET",
             "url": base + f"https://other.test:{other_unpinned.port}/json"},
            {"id": "to_unpinned", "kind": "requests", "method": "GET", "url": base + f"https://free.test:{free_ok.port}/json"},
            {"id": "auth_dropped", "kind": "requests", "method": "GET",
             "url": base + f"https://other.test:{other_ok.port}/echo", "kwargs": {"auth": ["u", "p"]}},
        ]
        domains = [rule(HOST, pki.pins["leaf"]), rule("other.test", other.pins["leaf"])]
        cas = [pki.root.der, other.root.der, free.root.der]
        ca_board = run_app(mp, tmp_path, write_flash(tmp_path, make_bundle(domains, cas), "ca"), cases)
        block_board = run_app(mp, tmp_path, write_flash(tmp_path, make_bundle(domains, cas, unpinned="block"), "block"),
                              cases[2:3])
        assert json.loads(ca_board["to_pinned"]["text"])["server"] == "other.test/leaf"
        assert ca_board["to_pinned"]["last_verdict"] == "matched"
        r = ca_board["to_mismatch"]
        assert (r["error"], r["verdict"], r["host"]) == ("PinBlocked", "mismatch", "other.test")
        assert other_unpinned.log == []
        # unpinned "ca": a host without a rule gets CA validation; "block": refused, nothing sent
        assert ca_board["to_unpinned"]["ok"] and ca_board["to_unpinned"]["last_verdict"] == "no_policy"
        r = block_board["to_unpinned"]
        assert (r["error"], r["verdict"], r["host"]) == ("PinBlocked", "no_policy_blocked", "free.test")
        assert len(free_ok.log) == 1  # the "ca" board's request only
        assert json.loads(ca_board["auth_dropped"]["text"])["authorization"] is None
        assert any(h.get("Authorization") == "Basic dTpw" for _, _, h, _ in https["legit"].log)


# ---- asyncio streams and ctx.wrap_socket


def test_asyncio_streams_are_pinned_on_the_first_read_or_write(mp: Path, tmp_path: Path, flash: Path,
                                                                tls_server: Any) -> None:
    servers: dict[str, TlsServer] = {name: tls_server(leaf) for name, leaf in CHAINS.items()}
    got = run_app(mp, tmp_path, flash, [{"id": n, "kind": "asyncio", "host": HOST, "port": s.port}
                                         for n, s in servers.items()])
    assert got["legit"] == {**got["legit"], "ok": True, "line": "HELLO\n"}
    assert servers["legit"].requests == [b"hello over asyncio\n"]
    for name in REFUSED:
        assert_refused(got[name], name)
        # asyncio asks for do_handshake_on_connect=False: the verdict comes with the first write
        assert got[name]["stage"] in ("write", "read"), got[name]
        assert servers[name].requests == []
    assert sorted(report_reasons(got["wrong"])) == ["mismatch", "mismatch", "tls_failed"]


def test_wrap_socket_as_clients_call_it(mp: Path, tmp_path: Path, flash: Path, tls_server: Any) -> None:
    legit, rogue = tls_server("leaf"), tls_server("rogue_leaf")
    got = run_app(mp, tmp_path, flash, [
        {"id": "no_hostname", "kind": "wrap", "port": legit.port},
        {"id": "empty_hostname", "kind": "wrap", "port": legit.port, "server_hostname": ""},
        {"id": "now", "kind": "wrap", "port": legit.port, "server_hostname": "DEVICE.test."},
        {"id": "deferred", "kind": "wrap", "port": legit.port, "server_hostname": HOST, "do_handshake_on_connect": False},
        {"id": "rogue_now", "kind": "wrap", "port": rogue.port, "server_hostname": HOST},
        {"id": "rogue_deferred", "kind": "wrap", "port": rogue.port, "server_hostname": HOST,
         "do_handshake_on_connect": False},
    ])
    for name in ("no_hostname", "empty_hostname"):
        r = got[name]
        assert (r["error"], r["reason"], r["stage"]) == ("PinBlocked", "invalid_host", "wrap_socket"), r
    assert got["now"]["data"] == "HELLO\n"  # the host canonicalised as rules are
    assert got["deferred"]["data"] == "HELLO\n"
    assert (got["rogue_now"]["error"], got["rogue_now"]["stage"]) == ("PinBlocked", "wrap_socket")
    r = got["rogue_deferred"]
    assert (r["error"], r["verdict"], r["stage"], r["second"]) == ("PinBlocked", "mismatch", "write", "PinBlocked")
    assert rogue.requests == [] and legit.requests == [b"hi\n", b"hi\n"]
    assert report_reasons(got["rogue_deferred"]) == ["mismatch"]
    assert got["rogue_deferred"]["reports"][0][3] == 2  # the same failure twice: one entry, counted


# ---- MQTT


@pytest.fixture
def broker(pki: Pki, tmp_path: Path) -> Any:
    ca, cert, key = client_identity(tmp_path)
    listeners: dict[str, tuple[bytes, bytes, bytes | None]] = {
        name: (pki.chain_pem(leaf), pki.issued[leaf].key_pem, None) for name, leaf in CHAINS.items()}
    listeners["mtls"] = (pki.chain_pem("leaf"), pki.leaf.key_pem, ca.read_bytes())
    with MqttBroker(listeners, tmp_path) as b:
        b.client_cert, b.client_key = cert, key  # type: ignore[attr-defined]
        yield b


def mqtt_case(name: str, port: int, **extra: Any) -> dict[str, Any]:
    return {"id": name, "kind": "mqtt", "client_id": "unix-" + name, "server": HOST, "port": port,
            "topic": "fleet/unix-01/" + name, "message": "payload for " + name, **extra}


def test_mqtt_over_the_pinned_context(mp: Path, tmp_path: Path, flash: Path, broker: Any) -> None:
    got = run_app(mp, tmp_path, flash, [mqtt_case(name, broker.ports[name]) for name in CHAINS])
    assert got["legit"]["ok"] and got["legit"]["received"] == [["fleet/unix-01/legit", "payload for legit"]]
    for name in REFUSED:
        assert_refused(got[name], name)
        assert got[name]["stage"] == "connect"
    assert sorted(report_reasons(got["wrong"])) == ["mismatch", "mismatch", "tls_failed"]


def test_mqtt_with_a_client_certificate(mp: Path, tmp_path: Path, flash: Path, broker: Any) -> None:
    """Mutual TLS, as AWS IoT asks for it: the broker requires a certificate from its device CA."""
    port = broker.ports["mtls"]
    got = run_app(mp, tmp_path, flash, [
        mqtt_case("with_cert", port, client_cert=str(broker.client_cert), client_key=str(broker.client_key)),
        mqtt_case("without_cert", port),
    ])
    assert got["with_cert"]["ok"], got["with_cert"]
    assert got["with_cert"]["received"] == [["fleet/unix-01/with_cert", "payload for with_cert"]]
    r = got["without_cert"]
    # the pin check allowed the chain; the broker refused the handshake: a TLS failure
    assert (r["ok"], r["error"], r["verdict"], r["stage"]) == (False, "TlsRefused", "tls_failed", "connect"), r


# ---- RAM: each client together with the agent within the whole-life target


TARGET_KB = 64  # the agent's whole-life heap target on an ESP32 (32-bit)


def test_a_pinned_get_and_an_mqtt_publish_fit_the_heap_target(mp: Path, tmp_path: Path, flash: Path, https: Any,
                                                               broker: Any) -> None:
    """The unix port is 64-bit: the same objects take more heap than on the 32-bit ESP32. The
    ratio is measured in this run, on the same modules (.mpy, as `fleetpin image build` installs
    them): live heap on the unix port / live heap on the 32-bit WebAssembly VM. The agent's
    modules are counted apart: a production build freezes them into the firmware (README), and
    the 64 KB target is for everything else, here 64 KB x the ratio on top of the modules."""
    from clients_support import modules_on_wasm, mpy_lib, run_ram

    lib = mpy_lib(tmp_path)
    status, unix = run_ram(mp, tmp_path, lib, {"root": str(flash), "scenario": "modules"}, 1024)
    ratio = unix["modules"] / modules_on_wasm()
    assert 1.2 < ratio < 2.0, ratio  # a 64-bit build: pointers twice as wide, bytecode as long
    jobs = {"get": {"scenario": "get", "url": f"https://{HOST}:{https['legit'].port}/4k"},
            "mqtt": {"scenario": "mqtt", "server": HOST, "port": broker.ports["legit"]}}
    for name, job in jobs.items():
        status, big = run_ram(mp, tmp_path, lib, {"root": str(flash), **job}, 1024)
        assert status == "ok", (name, status)
        heap_kb = int((big["modules"] + TARGET_KB * 1024 * ratio) // 1024)
        status, figures = run_ram(mp, tmp_path, lib, {"root": str(flash), **job}, heap_kb)
        print(f"RESULT: {name}: fits -X heapsize={heap_kb}K = modules {big['modules'] // 1024} KB + "
              f"{TARGET_KB} KB x {ratio:.2f} (64-bit/32-bit): {status}")
        assert status == "ok", f"{name} does not fit {TARGET_KB} KB (ESP32 estimate) next to the agent"
