"""The agent's pinned connections on CPython (fleetpin.sim.tls over `ssl`) against real TLS servers
on 127.0.0.1, with signed bundles built by the host tool and installed through the store.

Every connection's SSL contexts are recorded (ssl.SSLContext is wrapped for the whole module):
a test fails if any context ever handshakes without CERT_REQUIRED and check_hostname.
`server.requests` empty proves no application byte was sent on a refused connection.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from fleetpin.bundles.build import BundleSource, build_bundle, canonical_json
from fleetpin.pki import keys
from fleetpin.pki.signing import LocalKeySigner
from fleetpin.sim.pki import Pki
from fleetpin.sim.tls import SimTls, verified_chain
from fleetpin.sim.tlsserver import TlsServer
from pinagent import connect as C
from pinagent import policy as P
from pinagent import service as SV
from pinagent import store as S
from pinagent.agent import Agent

FLEET = "sim-fleet"
HOST = "device.test"
DAY = 86400
EPOCH_2000 = 946684800

# ---- every client context, recorded at handshake time


@pytest.fixture(autouse=True)
def verification_always_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[ssl.VerifyMode, bool, str | None]]]:
    """(verify_mode, check_hostname, server_hostname) of every client handshake in the test;
    after it, each must have verified. (The class's method is wrapped, not ssl.SSLContext
    replaced: ssl's own code refers to the class by that name.)"""
    seen: list[tuple[ssl.VerifyMode, bool, str | None]] = []
    real = ssl.SSLContext.wrap_socket

    def recording(self: ssl.SSLContext, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        if not kwargs.get("server_side"):
            seen.append((self.verify_mode, self.check_hostname, kwargs.get("server_hostname")))
        return real(self, sock, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "wrap_socket", recording)
    yield seen
    for mode, check_hostname, name in seen:
        assert mode == ssl.CERT_REQUIRED and check_hostname and name, "a connection was made with verification off"


# ---- boards


def _signer(name: str) -> LocalKeySigner:
    key = ec.generate_private_key(ec.SECP256R1())
    return LocalKeySigner(key, keys.public_info(key.public_key(), name, "production"))


SIGNERS = [_signer("everyday"), _signer("backup")]
SIGNER_SET = canonical_json(keys.signer_set_obj([s.info for s in SIGNERS]))


def _pin(pki: Pki, name: str, label: str | None = None) -> dict[str, str]:
    entry = {"pin": pki.pins[name]}
    if label:
        entry["label"] = label
    return entry


def make_bundle(pki: Pki, domains: list[dict[str, Any]], *, unpinned: str = "ca", version: int = 1,
                issued: int | None = None, cas: list[bytes] | None = None) -> bytes:
    source = BundleSource({"unpinned": unpinned, "domains": domains}, cas if cas is not None else [pki.root.der])
    return build_bundle(source, fleet=FLEET, version=version, issued=issued or int(time.time()) - 3600,
                        development=False, signers=SIGNERS[:1])


def pinned(pki: Pki, **rule: Any) -> dict[str, Any]:
    domain = {"host": HOST, "pins": [_pin(pki, "leaf", "primary"), _pin(pki, "backup", "backup")],
              "expires": int(time.time()) + 365 * DAY}
    domain.update(rule)
    return domain


def board(tmp_path: Path, bundle: bytes | None, clock: Callable[[], int | None] = lambda: int(time.time())) -> Agent:
    root = tmp_path / "fleetpin"
    root.mkdir(parents=True, exist_ok=True)
    (root / "signers.bin").write_bytes(SIGNER_SET)
    if bundle is not None:
        (root / "bundle.bin").write_bytes(S.encode_slot(SIGNER_SET, bundle))
    import os

    agent = Agent(S.FS(os, open), clock, "sim-0001", FLEET, SimTls(resolve=lambda h, p: ("127.0.0.1", p)), root=str(root))
    agent.boot()
    return agent


def exchange(sock: ssl.SSLSocket) -> bytes:
    sock.sendall(b"hi\n")
    data = sock.recv(100)
    sock.close()
    return data


@pytest.fixture
def servers(pki: Pki, tls_server: Callable[..., TlsServer]) -> dict[str, TlsServer]:
    return {name: tls_server(name) for name in ("leaf", "backup_leaf", "rogue_leaf", "wrong_host_leaf", "expired_leaf")}


# ---- the scenarios


def test_primary_and_backup_keys_are_allowed(tmp_path: Path, pki: Pki, servers: dict[str, TlsServer],
                                             verification_always_on: list[Any]) -> None:
    agent = board(tmp_path, make_bundle(pki, [pinned(pki)]))
    assert agent.state.mode == S.MODE_OK
    for name, label in (("leaf", "primary"), ("backup_leaf", "backup")):
        sock, check = agent.open(HOST, servers[name].port, 5)
        assert check.verdict.reason == P.MATCHED and check.verdict.rule.label_of(check.verdict.matched_pin) == label
        assert check.verdict.matched_depth == 0 and [d for d, _ in check.verdict.chain] == [0, 1, 2]
        assert exchange(sock) == b"HELLO\n"
    assert len(verification_always_on) == 2
    assert agent.reports.read() == []


def test_intermediate_pin_allows_only_chains_the_ca_verified(tmp_path: Path, pki: Pki,
                                                             servers: dict[str, TlsServer]) -> None:
    agent = board(tmp_path, make_bundle(pki, [pinned(pki, pins=[_pin(pki, "intermediate")])]))
    sock, check = agent.open(HOST, servers["backup_leaf"].port, 5)
    assert check.verdict.matched_depth == 1 and exchange(sock) == b"HELLO\n"


@pytest.mark.parametrize("name", ["rogue_leaf", "wrong_host_leaf", "expired_leaf"])
def test_rogue_ca_wrong_host_and_expired_certificates_are_blocked(tmp_path: Path, pki: Pki, name: str,
                                                                   servers: dict[str, TlsServer]) -> None:
    agent = board(tmp_path, make_bundle(pki, [pinned(pki)]))
    with pytest.raises(C.TlsRefused) as info:
        agent.connect(HOST, servers[name].port, 5)
    assert info.value.reason == C.TLS_FAILED and not info.value.verdict.allowed
    assert "certificate verify failed" in (info.value.detail or "")
    assert servers[name].requests == []  # not one application byte
    [report] = agent.reports.read()
    assert report["validation-result"] == "tls_failed" and report["port"] == servers[name].port


def test_pin_mismatch_is_blocked_before_any_application_byte(tmp_path: Path, pki: Pki,
                                                             servers: dict[str, TlsServer]) -> None:
    # the CA (rogue root included as a trusted CA) validates the chain; only the pin refuses it
    agent = board(tmp_path, make_bundle(pki, [pinned(pki)], cas=[pki.root.der, pki.rogue_root.der]))
    with pytest.raises(C.PinBlocked) as info:
        agent.connect(HOST, servers["rogue_leaf"].port, 5)
    assert info.value.reason == P.MISMATCH
    assert servers["rogue_leaf"].requests == [] and servers["rogue_leaf"].server_names == [HOST]
    [report] = agent.reports.read()
    assert report["validation-result"] == "mismatch"
    assert report["served-certificate-chain"][0]["pin-sha256"] == pki.pins["rogue_leaf"]
    assert report["served-certificate-chain"][1]["subject"] == "fleetpin Rogue Root CA"


def test_report_only_domain_connects_and_records(tmp_path: Path, pki: Pki, servers: dict[str, TlsServer]) -> None:
    agent = board(tmp_path, make_bundle(pki, [pinned(pki, enforce=False, pins=[_pin(pki, "rogue_leaf")])]))
    sock, check = agent.open(HOST, servers["leaf"].port, 5)
    assert check.verdict.reason == P.REPORT_ONLY_MISMATCH and exchange(sock) == b"HELLO\n"
    [report] = agent.reports.read()
    assert report["allowed"] is True and report["enforce-pinning"] is False


def test_domains_without_a_policy(tmp_path: Path, pki: Pki, servers: dict[str, TlsServer]) -> None:
    other = pinned(pki, host="elsewhere.test")
    agent = board(tmp_path, make_bundle(pki, [other]))
    sock, check = agent.open(HOST, servers["backup_leaf"].port, 5)
    assert check.verdict.reason == P.NO_POLICY and exchange(sock) == b"HELLO\n"  # plain CA validation
    agent = board(tmp_path / "b", make_bundle(pki, [other], unpinned="block"))
    with pytest.raises(C.PinBlocked) as info:
        agent.connect(HOST, servers["leaf"].port, 5)
    assert info.value.reason == P.NO_POLICY_BLOCKED and servers["leaf"].requests == []


def test_expired_pins_follow_their_on_expiry_policy(tmp_path: Path, pki: Pki, servers: dict[str, TlsServer]) -> None:
    past = int(time.time()) - DAY
    only_primary = [_pin(pki, "leaf", "primary")]
    fallback = board(tmp_path / "f", make_bundle(pki, [pinned(pki, pins=only_primary, expires=past)]))
    sock, check = fallback.open(HOST, servers["backup_leaf"].port, 5)
    assert check.verdict.reason == P.EXPIRED_FALLBACK and check.verdict.expired and exchange(sock) == b"HELLO\n"
    enforce = board(tmp_path / "e", make_bundle(pki, [pinned(pki, pins=only_primary, expires=past, on_expiry="enforce")]))
    with pytest.raises(C.PinBlocked) as info:
        enforce.connect(HOST, servers["backup_leaf"].port, 5)
    assert info.value.reason == P.MISMATCH and info.value.verdict.expired
    sock, check = enforce.open(HOST, servers["leaf"].port, 5)  # the pinned key still works
    assert check.verdict.reason == P.MATCHED
    sock.close()


def test_a_spoofed_clock_past_expiry_does_not_let_a_rogue_ca_through(tmp_path: Path, pki: Pki,
                                                                      servers: dict[str, TlsServer]) -> None:
    # The bundle trusts the rogue CA too (two public CAs, one mis-issues); on_expiry is the default
    # "fallback". An attacker on the path answers SNTP with a time 60 s past the pins' expiry.
    expires = int(time.time()) + 30 * DAY
    bundle = make_bundle(pki, [pinned(pki, expires=expires)], cas=[pki.root.der, pki.rogue_root.der])
    agent = board(tmp_path, bundle, clock=lambda: expires + 60)
    with pytest.raises(C.PinBlocked) as info:
        agent.connect(HOST, servers["rogue_leaf"].port, 5)
    assert info.value.reason == P.EXPIRY_UNCONFIRMED and info.value.verdict.expired
    assert servers["rogue_leaf"].requests == []  # not one application byte
    [report] = agent.reports.read()
    assert report["validation-result"] == "expiry_unconfirmed"
    assert report["served-certificate-chain"][0]["pin-sha256"] == pki.pins["rogue_leaf"]
    # the real server still connects (its key is pinned), and the time it tells over that
    # pinned connection is authenticated: once it is past the expiry, the pins really expired
    sock, check = agent.open(HOST, servers["leaf"].port, 5)
    assert check.verdict.reason == P.MATCHED and exchange(sock) == b"HELLO\n"
    assert agent.server_time(check, expires + 30)
    sock, check = agent.open(HOST, servers["rogue_leaf"].port, 5)
    assert check.verdict.reason == P.EXPIRED_FALLBACK
    sock.close()


@pytest.mark.parametrize("host", ["127.1", "0x7f.0.0.1", "0177.0.0.1", "2130706433", "127.0.0.01",
                                  "device.test:443", "[::1]"])
def test_other_spellings_of_an_address_are_refused_before_any_connection(tmp_path: Path, pki: Pki, host: str,
                                                                         servers: dict[str, TlsServer]) -> None:
    # the bundle pins 127.0.0.1; getaddrinfo reads every one of these as that address (or a
    # name with a port), and compared as text none would find the rule
    rule = pinned(pki, host="127.0.0.1")
    agent = board(tmp_path, make_bundle(pki, [rule, pinned(pki)]))
    with pytest.raises(C.PinBlocked) as info:
        agent.connect(host, servers["rogue_leaf"].port, 5)
    assert info.value.reason == P.INVALID_HOST
    assert servers["rogue_leaf"].server_names == [] and servers["rogue_leaf"].failed == []  # no TCP, no TLS


def test_the_canonical_name_is_the_name_tls_checks(tmp_path: Path, pki: Pki, servers: dict[str, TlsServer],
                                                   verification_always_on: list[Any]) -> None:
    agent = board(tmp_path, make_bundle(pki, [pinned(pki)]))
    sock, check = agent.open("DEVICE.Test.", servers["leaf"].port, 5)
    assert check.verdict.reason == P.MATCHED and check.verdict.host == HOST and exchange(sock) == b"HELLO\n"
    assert servers["leaf"].server_names == [HOST] and verification_always_on[-1][2] == HOST


@pytest.mark.parametrize("clock", [EPOCH_2000 + 5, None])
def test_clock_before_the_trusted_floor_is_untrusted(tmp_path: Path, pki: Pki, servers: dict[str, TlsServer],
                                                     clock: int | None) -> None:
    past = int(time.time()) - DAY
    bundle = make_bundle(pki, [pinned(pki, pins=[_pin(pki, "leaf")], expires=past)], issued=past - DAY)
    agent = board(tmp_path, bundle, clock=lambda: clock)
    assert agent.state.mode == S.MODE_OK  # the 2000 clock does not reject the installed bundle
    with pytest.raises(C.PinBlocked) as info:  # it cannot tell that the pins expired: keep enforcing
        agent.connect(HOST, servers["backup_leaf"].port, 5)
    assert info.value.reason == P.CLOCK_UNTRUSTED and not info.value.verdict.clock_trusted
    assert servers["backup_leaf"].requests == []
    sock, check = agent.open(HOST, servers["leaf"].port, 5)
    assert check.verdict.reason == P.MATCHED
    sock.close()


def test_safe_mode_refuses_and_network_errors_are_named(tmp_path: Path, pki: Pki, servers: dict[str, TlsServer],
                                                        verification_always_on: list[Any]) -> None:
    agent = board(tmp_path, None)
    with pytest.raises(C.NoBundle):
        agent.connect(HOST, servers["leaf"].port, 5)
    assert servers["leaf"].server_names == [] and verification_always_on == []
    agent = board(tmp_path / "b", make_bundle(pki, [pinned(pki)]))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(C.NetworkError) as info:
        agent.connect(HOST, closed_port, 2)
    assert info.value.verdict is None and "Connection refused" in (info.value.detail or "")


def test_adapter_refuses_to_connect_without_verification(monkeypatch: pytest.MonkeyPatch, pki: Pki) -> None:
    class Lax(ssl.SSLContext):  # a context that silently keeps verification off
        @property  # type: ignore[override]
        def verify_mode(self) -> ssl.VerifyMode:
            return ssl.CERT_NONE

        @verify_mode.setter
        def verify_mode(self, value: ssl.VerifyMode) -> None:
            pass

    monkeypatch.setattr(ssl, "SSLContext", Lax)
    from fleetpin.sim.tls import VerificationOff

    with pytest.raises(VerificationOff):
        SimTls().context([pki.root.der])


def test_verified_chain_is_root_last_in_der(pki: Pki, servers: dict[str, TlsServer]) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=pki.root.der)
    with socket.create_connection(("127.0.0.1", servers["leaf"].port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=HOST) as tls:
            chain = verified_chain(tls)
    assert chain == [pki.leaf.der, pki.intermediate.der, pki.root.der]


# ---- the agent behind the serial service, end to end


def test_test_connect_and_reports_through_the_service(tmp_path: Path, pki: Pki, servers: dict[str, TlsServer]) -> None:
    from fleetpin.protocol.client import Client
    from pinagent.link import DeviceLink

    agent = board(tmp_path, make_bundle(pki, [pinned(pki)]))
    svc = SV.Service(agent)
    dev = DeviceLink(svc.dispatch)
    client = Client(rto_ms=200)

    def run(*calls: Any) -> None:
        now = 0
        while not all(c.done for c in calls):
            out = client.data_to_send(now)
            if out:
                back = dev.receive_data(out)
                if back:
                    client.receive_data(back, now)
            client.tick(now)
            now += 1
            assert now < 100000

    ident = client.identify()
    good = client.test_connect(HOST, servers["leaf"].port)
    bad = client.test_connect(HOST, servers["rogue_leaf"].port)
    run(ident, good, bad)
    assert ident.result["bundle_sha256"] == agent.bundle_sha256 and ident.result["clock"] == "trusted"
    assert good.result["allowed"] and good.result["matched_label"] == "primary"
    assert not bad.result["allowed"] and bad.result["reason"] == "tls_failed"
    assert servers["leaf"].requests == [] and servers["rogue_leaf"].requests == []  # nothing sent
    data = b""
    while True:
        part = client.read_reports(len(data))
        run(part)
        total, chunk = part.result
        data += chunk
        if len(data) >= total:
            break
    assert b'"validation-result":"tls_failed"' in data and total == len(data)
    seq = agent.reports.read()[0]["seq"]
    ack = client.ack_reports(seq)
    run(ack)
    assert ack.result == {"acked": seq, "pending": 0} and len(agent.reports.read()) == 1  # kept
    nowhere = client.test_connect("localhost", 1)
    run(nowhere)
    assert nowhere.error.name == "connect"
    # no rule for the name: the device does not connect at all (the cable is no network probe)
    seen = len(servers["leaf"].server_names)
    unpinned = client.test_connect("elsewhere.test", servers["leaf"].port)
    run(unpinned)
    assert unpinned.error.name == "connect" and "no rule" in unpinned.error.message
    assert len(servers["leaf"].server_names) == seen and servers["leaf"].failed == []


def test_device_test_codes_match_the_service() -> None:
    # tests/device/test_agent.py spells the codes out (the VM heap has no room for service.py)
    assert (SV.E_NO_WRITE, SV.E_RANGE, SV.E_INCOMPLETE, SV.E_DIGEST, SV.E_SIGNATURE, SV.E_BUNDLE) == (6, 7, 8, 9, 10, 11)
    assert (SV.E_ROLLBACK, SV.E_FLEET, SV.E_STORAGE, SV.E_NO_SPACE, SV.E_CHANGED, SV.E_CONNECT) == (12, 13, 14, 15, 16, 17)


def test_bundle_digest_is_of_the_bundle_bytes(tmp_path: Path, pki: Pki) -> None:
    bundle = make_bundle(pki, [pinned(pki)])
    agent = board(tmp_path, bundle)
    assert agent.identify()["bundle_sha256"] == hashlib.sha256(bundle).hexdigest()  # as fleetpin image records it
