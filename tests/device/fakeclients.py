# Fakes for the pinned-client device tests (test_tlsctx.py, test_http.py): a TLS adapter that
# presents the certificate vectors as server chains, as mbedTLS would (verify callback top
# first, leaf last; deferred handshakes on the first read or write), and serves scripted HTTP
# responses; and an agent booted over it from the signed agent vectors.

from faultfs import FaultFS
from support import read_vector

from pinagent import connect as C
from pinagent import store as S
from pinagent.agent import Agent

FLEET = "acme-sensors"
NOW = 1767225600
GOOD = ["chain-root", "chain-intermediate", "chain-leaf"]
WRONG = ["chain-root", "chain-intermediate", "ec-p384"]  # pinned nowhere
HOST = "chain-leaf.example"


class Raw:
    """A connected TCP socket before TLS."""

    def __init__(self):
        self.closed = False

    def close(self):
        self.closed = True


class TlsSock:
    """A TLS socket: its handshake runs the check (now, or on the first read or write when
    deferred); then it serves `response` in pieces of at most `piece` bytes."""

    def __init__(self, tls, host, check, chain, response, deferred):
        self.tls = tls
        self.host = host
        self.check = check
        self.chain = chain
        self.response = response
        self.pos = 0
        self.sent = b""
        self.closed = False
        self.done = False
        self.blocked_once = deferred and tls.would_block
        if not deferred:
            self.handshake()

    def handshake(self):
        if self.done:
            return
        chain = self.chain
        if self.tls.skip_check:
            self.done = True
            return
        for i in range(len(chain)):
            if self.check.on_cert(memoryview(read_vector("certs/" + chain[i] + ".der")), len(chain) - 1 - i):
                raise OSError(-0x2700, "verify failed")  # MBEDTLS_ERR_X509_CERT_VERIFY_FAILED
        self.done = True

    def _ready(self):
        if self.closed:
            raise OSError(9, "closed")
        if self.blocked_once:  # non-blocking: the server's first flight has not arrived yet
            self.blocked_once = False
            return False
        self.handshake()
        return True

    def write(self, data):
        if not self._ready():
            return None
        self.sent += bytes(data)
        return len(data)

    def read(self, n=-1):
        if not self._ready():
            return None
        end = len(self.response) if n < 0 else min(len(self.response), self.pos + min(n, self.tls.piece))
        data = self.response[self.pos:end]
        self.pos = end
        return data

    def readinto(self, buf, n=-1):
        data = self.read(len(buf) if n < 0 else n)
        buf[:len(data)] = data
        return len(data)

    def readline(self):
        if not self._ready():
            return None
        end = self.response.find(b"\n", self.pos)
        end = len(self.response) if end < 0 else end + 1
        data = self.response[self.pos:end]
        self.pos = end
        return data

    def close(self):
        self.closed = True


class FakeTls:
    """The adapter (pinagent.connect's interface): chains and HTTP responses by host name."""

    def __init__(self):
        self.chains = {}
        self.responses = {}  # host -> [response bytes, ...], one per connection
        self.calls = []
        self.sockets = []
        self.piece = 1 << 20
        self.would_block = False
        self.skip_check = False

    def _sock(self, host, check, deferred):
        chain = self.chains.get(host)
        if chain is None:
            raise C.NetworkError("network", None, "no such host")
        queue = self.responses.get(host) or [b""]
        s = TlsSock(self, host, check, chain, queue.pop(0) if len(queue) > 1 else queue[0], deferred)
        self.sockets.append(s)
        return s

    def open(self, host, port, timeout, ca_certs, check):
        self.calls.append(("open", host, port))
        return self._sock(host, check, False)

    def wrap(self, sock, host, ca_certs, check, client_cert=None, do_handshake=True):
        self.calls.append(("wrap", host, client_cert, do_handshake, len(ca_certs)))
        try:
            return self._sock(host, check, not do_handshake)
        except BaseException:
            sock.close()
            raise


def make_agent(bundle="v1.bin"):
    ffs = FaultFS(dirs=["/fleetpin"])
    signers = read_vector("bundle/signers_prod.json")
    ffs.files["/fleetpin/signers.bin"] = signers
    if bundle is not None:
        ffs.files["/fleetpin/bundle.bin"] = S.encode_slot(signers, read_vector("agent/" + bundle))
    tls = FakeTls()
    a = Agent(S.FS(ffs, ffs.open), lambda: NOW, "a0b1c2d3e4f5", FLEET, tls)
    a.boot()
    return a, tls


def _reasons(agent):
    return [r["validation-result"] for r in agent.reports.read()]



def reasons(agent):
    return [r["validation-result"] for r in agent.reports.read()]
