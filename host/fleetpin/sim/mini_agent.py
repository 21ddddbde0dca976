# Runs on the device runtimes too (CPython and the MicroPython VM): device subset only.
"""A minimal agent for virtual boards, used until pinagent.agent.Agent exists (and on a board
asked for it): the update service's Handler over pinagent.store.Store, with `verify` built
from pinagent.bundle.decode_bundle, and the failure-report ring. No TLS: test_connect is
answered `unsupported`.

    agent = MiniAgent(fs, clock, device_id, fleet)   # fs: pinagent.store.FS; clock() -> POSIX s or None
    agent.boot(); svc = Service(agent)
"""

import hashlib

import pinagent
from pinagent import bundle as _bundle
from pinagent import reports as _reports
from pinagent import signers as _signers
from pinagent import store as _store
from pinagent.service import (
    E_BUNDLE,
    E_CHANGED,
    E_DIGEST,
    E_FLEET,
    E_INCOMPLETE,
    E_NO_SPACE,
    E_NO_WRITE,
    E_RANGE,
    E_ROLLBACK,
    E_SIGNATURE,
    E_STORAGE,
    E_UNSUPPORTED,
    Handler,
    ServiceError,
)


def _hex(b):
    return "".join("%02x" % x for x in b)


class MiniAgent(Handler):
    def __init__(self, fs, clock, device_id, fleet, board=None):
        self.fs = fs
        self.clock = clock
        self.device_id = device_id
        self.fleet = fleet
        self.board = board
        self.store = _store.Store(fs, self._verify)
        self.reports = _reports.Reports(fs)
        self.state = None
        self._rx = None  # bundle being received: bytearray
        self._rx_sha = None
        self._rx_have = None  # bytearray of flags, one per byte received (sizes are small)
        self._rx_missing = 0

    def boot(self):
        self.state = self.store.boot()
        return self.state

    # -- verification wired into the store
    def _now(self):
        t = self.clock()
        st = self.state
        if t is None or (st is not None and t < st.time_floor):
            return None
        return t

    def _verify(self, data, signers_bytes, installed_version):
        trusted = _signers.load_signers(signers_bytes)
        now = None if installed_version is None else self._now()
        floor = self.state.time_floor if self.state is not None else 0
        b = _bundle.decode_bundle(data, trusted, self.fleet, installed_version, now, floor)
        nxt = _signers.dump_signers(b.signers) if b.signers is not None else signers_bytes
        return _store.Verified(b, b.version, b.issued, nxt)

    # -- Handler
    def identify(self):
        st = self.state
        bundle = st.bundle if st is not None else None
        t = self.clock()
        if t is None:
            clock = "unset"
        elif t < st.time_floor:
            clock = "floor"
        else:
            clock = "trusted"
        try:
            free = self.fs.free(_store.ROOT)[0]
        except Exception:
            free = None
        stats = self.reports.stats()
        return {
            "device_id": self.device_id,
            "agent": pinagent.VERSION,
            "agent_impl": "mini",
            "format": _bundle.FORMAT,
            "fleet": self.fleet,
            "board": self.board,
            "mode": st.mode,
            "bundle_version": st.version,
            "bundle_sha256": _hex(hashlib.sha256(bundle).digest()) if bundle is not None else None,
            "clock": clock,
            "time": t,
            "time_floor": st.time_floor,
            "free": free,
            "reports": stats["entries"],
            "problems": list(st.problems),
        }

    def read_bundle(self, offset, length):
        b = self.state.bundle
        if b is None:
            return 0, b""
        if offset > len(b):
            raise ServiceError(E_RANGE, "offset %d beyond the bundle's %d bytes" % (offset, len(b)))
        return len(b), memoryview(b)[offset:offset + length]

    def write_begin(self, size, sha256):
        if size == 0 or size > _bundle.MAX_BUNDLE:
            raise ServiceError(E_RANGE, "bundle size %d, the limit is %d" % (size, _bundle.MAX_BUNDLE))
        if self._rx is not None and len(self._rx) == size and self._rx_sha == sha256:
            return  # same upload begun again: keep what was received
        self._rx = bytearray(size)
        self._rx_have = bytearray(size)
        self._rx_missing = size
        self._rx_sha = bytes(sha256)

    def write_chunk(self, offset, data):
        if self._rx is None:
            raise ServiceError(E_NO_WRITE, "WRITE_BEGIN first")
        end = offset + len(data)
        if end > len(self._rx):
            raise ServiceError(E_RANGE, "chunk %d..%d beyond the bundle's %d bytes" % (offset, end, len(self._rx)))
        self._rx[offset:end] = data
        have = self._rx_have
        for i in range(offset, end):
            if not have[i]:
                have[i] = 1
                self._rx_missing -= 1

    def write_commit(self):
        st = self.state
        if self._rx is None:
            if self._rx_sha is not None and st.bundle is not None and hashlib.sha256(st.bundle).digest() == self._rx_sha:
                return self._result()  # a commit answered once and asked again: same answer
            raise ServiceError(E_NO_WRITE, "WRITE_BEGIN first")
        if self._rx_missing:
            raise ServiceError(E_INCOMPLETE, "%d bytes missing" % self._rx_missing)
        data = bytes(self._rx)
        if hashlib.sha256(data).digest() != self._rx_sha:
            self._rx = None
            raise ServiceError(E_DIGEST, "received bytes do not match WRITE_BEGIN's sha256")
        if st.bundle is not None and data == st.bundle:
            self._rx = None
            return self._result()
        try:
            self.store.install(data)
        except _bundle.BundleSignatureError as e:
            raise ServiceError(E_SIGNATURE, e.reason)
        except _bundle.BundleWrongFleet as e:
            raise ServiceError(E_FLEET, e.reason)
        except (_bundle.BundleRollback, _bundle.BundleSameVersion, _store.Rollback) as e:
            raise ServiceError(E_ROLLBACK, e.reason)
        except _bundle.BundleError as e:
            raise ServiceError(E_BUNDLE, e.reason)
        except _signers.SignerSetError as e:
            raise ServiceError(E_SIGNATURE, "trusted signer set unreadable: " + e.reason)
        except _store.NoTrustAnchor as e:
            raise ServiceError(E_SIGNATURE, e.reason)
        except (_store.NoSpace, _store.TooLarge) as e:
            raise ServiceError(E_NO_SPACE, e.reason)
        except _store.StoreError as e:
            raise ServiceError(E_STORAGE, e.reason)
        self._rx = None  # keep _rx_sha: a repeated commit answers from the installed bundle
        return self._result()

    def _result(self):
        st = self.state
        return {"version": st.version, "sha256": _hex(hashlib.sha256(st.bundle).digest()), "mode": st.mode}

    def read_reports(self, offset, length):
        data = self.reports.export()
        if offset > len(data):
            raise ServiceError(E_RANGE, "offset %d beyond the log's %d bytes" % (offset, len(data)))
        return len(data), memoryview(data)[offset:offset + length]

    def clear_reports(self, size):
        try:
            self.reports.clear(size)
        except _reports.ReportsChanged as e:
            raise ServiceError(E_CHANGED, e.reason)

    def test_connect(self, host, port):
        raise ServiceError(E_UNSUPPORTED, "this virtual board has no TLS (mini agent)")

    def reboot(self):
        return None
