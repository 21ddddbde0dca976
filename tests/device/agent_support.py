# Helpers for the agent tests (test_agent.py, test_agent_service.py): the signed vectors of
# tests/vectors/make_agent_vectors.py, a board on tests/device/faultfs.py, and a fake TLS adapter
# that presents the certificate vectors as server chains. Two test modules, not one: each is
# compiled bytecode on the VM's 100 KB heap next to the whole agent.

import hashlib
import json

from faultfs import FaultFS
from support import read_vector

from pinagent import connect as C
from pinagent import store as S
from pinagent.agent import Agent

# Service error codes (device/PROTOCOL.md, "Error codes"; tests/host/test_pinned_tls.py checks
# them against pinagent.service). Not imported here: the service and link modules would not
# fit the 100 KB VM heap next to the whole agent and this module.
E_NO_WRITE, E_RANGE, E_INCOMPLETE, E_DIGEST, E_SIGNATURE, E_BUNDLE = 6, 7, 8, 9, 10, 11
E_ROLLBACK, E_FLEET, E_STORAGE, E_NO_SPACE, E_CHANGED, E_CONNECT = 12, 13, 14, 15, 16, 17


class ServiceError(Exception):
    """Stands for pinagent.service.ServiceError in raises(): any error with a code."""

FLEET = "acme-sensors"
NOW = 1767225600
V1_ISSUED = NOW - 3600
EXPIRES = 1798761600  # chain-leaf.example's pins (tests/vectors/make_agent_vectors.py)
R = "/fleetpin/"


def _signers():
    return read_vector("bundle/signers_prod.json")


def _bundle(name):
    return read_vector("agent/" + name)


class Sock:
    def __init__(self):
        self.sent = b""
        self.closed = False

    def write(self, data):
        self.sent += data

    def close(self):
        self.closed = True


class FakeTls:
    """Serves chains by host name: a list of certificate vector names, top first; or an
    exception to raise before (NetworkError) or after (handshake failure) the callback."""

    def __init__(self):
        self.chains = {}
        self.after = {}
        self.sockets = []
        self.calls = []

    def open(self, host, port, timeout, ca_certs, check):
        self.calls.append((host, port, timeout, [bytes(c) for c in ca_certs]))
        chain = self.chains.get(host)
        if chain is None:
            raise C.NetworkError("network", None, "OSError: -202 (no such host)")
        for i in range(len(chain)):
            if check.on_cert(memoryview(read_vector("certs/" + chain[i] + ".der")), len(chain) - 1 - i):
                raise OSError(1, "verify callback refused")
        if host in self.after:
            raise self.after[host]
        s = Sock()
        self.sockets.append(s)
        return s


GOOD = ["chain-root", "chain-intermediate", "chain-leaf"]
BACKUP = ["chain-root", "chain-intermediate", "ec-p256"]  # the backup pin of chain-leaf.example
WRONG = ["chain-root", "chain-intermediate", "ec-p384"]  # pinned nowhere


def _board(installed=None, signers=True, config=None):
    ffs = FaultFS(dirs=["/fleetpin"])
    if signers:
        ffs.files[R + "signers.bin"] = _signers()
    if installed is not None:
        ffs.files[R + "bundle.bin"] = S.encode_slot(_signers(), _bundle(installed))
    return ffs


def _agent(ffs, clock=NOW, fleet=FLEET, tls=None, mac="a0:b1:c2:d3:e4:f5"):
    fs = S.FS(ffs, ffs.open)
    a = Agent(fs, lambda: clock, "a0b1c2d3e4f5", fleet, tls or FakeTls(), mac=mac)
    a.boot()
    return a


def _upload(agent, data):
    """WRITE_BEGIN, the chunks, WRITE_COMMIT; then the update path is forgotten, as when a board's
    session ends (pinagent.io.console; a no-op on CPython), so a test holds what a board holds."""
    from pinagent import forget

    try:
        agent.write_begin(len(data), hashlib.sha256(data).digest())
        for off in range(0, len(data), 187):
            agent.write_chunk(off, memoryview(data)[off:off + 187])
        return agent.write_commit()
    finally:
        forget()


def _refused(fn, *args):
    """The ServiceError fn raised (anything with a code and a reason)."""
    try:
        fn(*args)
    except Exception as e:
        if getattr(e, "code", None) is None or type(e).__name__ != "ServiceError":
            raise AssertionError("expected ServiceError, got %s: %s" % (type(e).__name__, e))
        return e
    raise AssertionError("expected ServiceError, nothing was raised")


def _reports(agent):
    total, data = agent.read_reports(0, 100000)
    return [json.loads(line) for line in bytes(data).split(b"\n")[1:] if line]
