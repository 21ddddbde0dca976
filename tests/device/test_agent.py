# pinagent.agent: boot through the store, pinned connections with reports, and the service
# Handler (identify, bundle upload, reports, test_connect, reboot). Bundles are the signed
# vectors of tests/vectors/make_agent_vectors.py; the board is tests/device/faultfs.py; the TLS
# adapter is a fake that presents the certificate vectors as server chains.
# Runs unchanged under CPython and on the MicroPython VM.

import hashlib
import json

from faultfs import FaultFS
from support import raises, read_vector

from pinagent import connect as C
from pinagent import policy as P
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
    agent.write_begin(len(data), hashlib.sha256(data).digest())
    for off in range(0, len(data), 187):
        agent.write_chunk(off, memoryview(data)[off:off + 187])
    return agent.write_commit()


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


# ---- boot and identify


def test_boot_loads_the_provisioned_bundle_and_identifies():
    a = _agent(_board("v1.bin"))
    info = a.identify()
    assert info["mode"] == S.MODE_OK and info["bundle_version"] == 1 and info["fleet"] == FLEET
    assert info["bundle_sha256"] == hashlib.sha256(_bundle("v1.bin")).digest().hex()
    assert info["device_id"] == "a0b1c2d3e4f5" and info["format"] == 1 and info["agent"]
    assert info["mac"] == "a0:b1:c2:d3:e4:f5"  # the base MAC: the registry joins the line's records by it
    assert info["clock"] == "trusted" and info["time_floor"] == V1_ISSUED and info["now"] == NOW
    assert info["reports"] == 0 and info["trust"] and info["problems"] == [] and info["free"] > 0


def test_boot_with_the_clock_at_2000_keeps_the_installed_bundle():
    a = _agent(_board("v1.bin"), clock=946684800 + 5)  # after power loss: the ESP32's epoch
    info = a.identify()
    assert info["mode"] == S.MODE_OK and info["bundle_version"] == 1 and info["clock"] == "floor"
    a = _agent(_board("v1.bin"), clock=None)
    assert a.identify()["clock"] == "unset" and a.state.mode == S.MODE_OK


def test_a_board_without_fleet_config_adopts_the_bundles_fleet():
    a = _agent(_board("v1.bin"), fleet=None)
    assert a.state.mode == S.MODE_OK and a.fleet == FLEET
    e = _refused(_upload, a, _bundle("v2_other_fleet.bin"))
    assert e.code == E_FLEET


def test_empty_flash_is_safe_mode_and_refuses_every_connection():
    tls = FakeTls()
    tls.chains["chain-leaf.example"] = GOOD
    a = _agent(FaultFS(), tls=tls)
    assert a.identify()["mode"] == S.MODE_SAFE and not a.identify()["trust"]
    e = raises(C.NoBundle, a.connect, "chain-leaf.example", 443)
    assert e.verdict.reason == C.NO_BUNDLE and not e.verdict.allowed and tls.calls == []
    assert a.test_connect("chain-leaf.example", 443)["reason"] == C.NO_BUNDLE
    assert _reports(a) == []  # safe mode says why in IDENTIFY; no flash wear per refusal
    e = _refused(_upload, a, _bundle("v1.bin"))
    assert e.code == E_SIGNATURE and "reprovision" in e.reason


def test_a_corrupt_bundle_boots_safe_and_a_signed_bundle_repairs_it():
    ffs = _board("v1.bin")
    slot = bytearray(ffs.files[R + "bundle.bin"])
    slot[100] ^= 1
    ffs.files[R + "bundle.bin"] = bytes(slot)
    a = _agent(ffs)
    assert a.state.mode == S.MODE_SAFE and a.identify()["problems"]
    assert _upload(a, _bundle("v1.bin"))["installed"]
    assert a.state.mode == S.MODE_OK and a.identify()["bundle_version"] == 1


# ---- connect


def test_connect_with_the_pinned_key_returns_the_socket():
    tls = FakeTls()
    tls.chains["chain-leaf.example"] = GOOD
    a = _agent(_board("v1.bin"), tls=tls)
    sock = a.connect("chain-leaf.example", 443)
    assert sock is tls.sockets[0] and a.last_verdict.reason == P.MATCHED
    host, port, timeout, cas = tls.calls[0]
    assert cas == [read_vector("certs/chain-root.der")] and timeout == 10 and port == 443
    assert _reports(a) == []
    tls.chains["chain-leaf.example"] = BACKUP  # the server moved to its backup key
    a.connect("chain-leaf.example", 443)
    assert a.last_verdict.reason == P.MATCHED and a.last_verdict.rule.label_of(a.last_verdict.matched_pin) == "backup"


def test_blocked_connection_raises_with_the_verdict_and_records_a_report():
    tls = FakeTls()
    tls.chains["chain-leaf.example"] = WRONG
    a = _agent(_board("v1.bin"), tls=tls)
    e = raises(C.PinBlocked, a.connect, "chain-leaf.example", 8443, 3)
    assert e.verdict.reason == P.MISMATCH and tls.sockets == [] and tls.calls[0][2] == 3
    reps = _reports(a)
    assert len(reps) == 1
    r = reps[0]
    assert r["hostname"] == "chain-leaf.example" and r["port"] == 8443 and r["validation-result"] == "mismatch"
    assert r["device-id"] == "a0b1c2d3e4f5" and r["bundle-version"] == 1 and r["allowed"] is False
    assert r["date-time"] == "2026-01-01T00:00:00Z"
    assert [c["depth"] for c in r["served-certificate-chain"]] == [0, 1, 2]
    assert r["served-certificate-chain"][1]["subject"] == "fleetpin chain intermediate"
    assert a.identify()["reports"] == 1
    raises(C.PinBlocked, a.connect, "chain-leaf.example", 8443)  # the same failure again: merged
    assert _reports(a)[0]["count"] == 2


def test_report_only_domain_connects_and_records_the_mismatch():
    tls = FakeTls()
    tls.chains["report.example"] = GOOD
    a = _agent(_board("v1.bin"), tls=tls)
    assert a.connect("report.example", 443) is tls.sockets[0]
    assert a.last_verdict.reason == P.REPORT_ONLY_MISMATCH
    r = _reports(a)[0]
    assert r["allowed"] is True and r["validation-result"] == "report_only_mismatch" and r["enforce-pinning"] is False


def test_expiry_policies_and_unpinned_hosts():
    tls = FakeTls()
    for host in ("expired.example", "strict.example", "elsewhere.example"):
        tls.chains[host] = GOOD
    a = _agent(_board("v1.bin"), tls=tls)
    a.connect("expired.example", 443)  # pins expired, on_expiry fallback: CA validation decides
    assert a.last_verdict.reason == P.EXPIRED_FALLBACK
    e = raises(C.PinBlocked, a.connect, "strict.example", 443)  # on_expiry enforce
    assert e.reason == P.MISMATCH and e.verdict.expired
    a.connect("elsewhere.example", 443)  # no rule, unpinned "ca"
    assert a.last_verdict.reason == P.NO_POLICY


def test_clock_below_the_floor_is_not_believed():
    tls = FakeTls()
    tls.chains["expired.example"] = GOOD
    a = _agent(_board("v1.bin"), clock=946684800 + 5, tls=tls)
    e = raises(C.PinBlocked, a.connect, "expired.example", 443)
    assert e.reason == P.CLOCK_UNTRUSTED and not e.verdict.clock_trusted
    assert _reports(a)[0]["date-time"] is None  # a 2000 date would mislead


def test_tls_failure_and_network_failure():
    tls = FakeTls()
    tls.chains["chain-leaf.example"] = GOOD
    tls.after["chain-leaf.example"] = ValueError("The certificate Common Name (CN) does not match")
    a = _agent(_board("v1.bin"), tls=tls)
    e = raises(C.TlsRefused, a.connect, "chain-leaf.example", 443)
    assert e.reason == C.TLS_FAILED and "Common Name" in e.detail
    r = _reports(a)[0]
    assert r["validation-result"] == "tls_failed" and "Common Name" in r["detail"]
    e = raises(C.NetworkError, a.connect, "nowhere.example", 443)
    assert e.verdict is None and len(_reports(a)) == 1  # nothing was decided: no report


def test_reports_can_be_disabled_by_the_bundle():
    tls = FakeTls()
    tls.chains["chain-leaf.example"] = WRONG
    a = _agent(_board("v1.bin"), tls=tls)
    _upload(a, _bundle("v3_reports_off.bin"))
    raises(C.PinBlocked, a.connect, "chain-leaf.example", 443)
    assert _reports(a) == []


def test_test_connect_answers_the_verdict():
    tls = FakeTls()
    tls.chains["chain-leaf.example"] = GOOD
    tls.chains["report.example"] = WRONG
    tls.chains["strict.example"] = GOOD
    a = _agent(_board("v1.bin"), tls=tls)
    ok = a.test_connect("chain-leaf.example", 443)
    assert ok["allowed"] and ok["reason"] == "matched" and ok["matched_label"] == "primary"
    assert ok["rule"] == "chain-leaf.example" and ok["matched_depth"] == 0 and len(ok["chain"]) == 3
    assert tls.sockets[0].closed and tls.sockets[0].sent == b""  # the handshake is the test
    bad = a.test_connect("strict.example", 443)
    assert not bad["allowed"] and bad["reason"] == "mismatch" and bad["expired"]
    e = _refused(a.test_connect, "nowhere.example", 443)
    assert e.code == E_CONNECT and "nowhere.example:443" in e.reason
    assert len(_reports(a)) == 1


# ---- updates


def test_upload_installs_and_changes_behaviour():
    tls = FakeTls()
    tls.chains["elsewhere.example"] = GOOD
    ffs = _board("v1.bin")
    a = _agent(ffs, tls=tls)
    a.connect("elsewhere.example", 443)
    ans = _upload(a, _bundle("v2.bin"))
    assert ans["installed"] and ans["version"] == 2 and ans["bundle_sha256"] == a.bundle_sha256
    assert a.identify()["bundle_version"] == 2 and a.state.time_floor == NOW - 1800
    e = raises(C.PinBlocked, a.connect, "elsewhere.example", 443)  # v2: unpinned "block"
    assert e.reason == P.NO_POLICY_BLOCKED
    assert _agent(ffs.reboot()).identify()["bundle_version"] == 2  # it survives a reboot
    assert a.write_commit() == ans  # a repeated commit: the same answer


def test_refused_updates_map_to_codes_and_touch_nothing():
    ffs = _board("v1.bin")
    a = _agent(ffs)
    _upload(a, _bundle("v2.bin"))
    for name, code in (("v1.bin", E_ROLLBACK), ("v2_other_fleet.bin", E_FLEET),
                       ("v2_bad_signature.bin", E_SIGNATURE)):
        before = dict(ffs.files)
        ffs.counts = {}
        e = _refused(_upload, a, _bundle(name))
        assert e.code == code, (name, e.code, e.reason)
        assert ffs.files == before and "write" not in ffs.counts and "rename" not in ffs.counts, name
    e = _refused(_upload, a, b"FPB1" + bytes(200))
    assert e.code == E_BUNDLE
    same = _upload(a, _bundle("v2.bin"))
    assert same["installed"] is False and same["version"] == 2


def test_upload_checks_completeness_and_digest():
    a = _agent(_board("v1.bin"))
    data = _bundle("v2.bin")
    e = _refused(a.write_commit)
    assert e.code == E_NO_WRITE
    _refused(a.write_chunk, 0, b"x")
    a.write_begin(len(data), hashlib.sha256(data).digest())
    a.write_chunk(0, data[:100])
    a.write_chunk(200, data[200:])
    e = _refused(a.write_commit)
    assert e.code == E_INCOMPLETE
    a.write_begin(len(data), hashlib.sha256(data).digest())  # the same upload: keeps the chunks
    a.write_chunk(50, data[50:200])  # overlapping retransmission
    assert a.write_commit()["version"] == 2
    e = _refused(a.write_chunk, 0, b"x")
    assert e.code == E_NO_WRITE
    a.write_begin(len(data), bytes(32))
    a.write_chunk(0, data)
    e = _refused(a.write_commit)
    assert e.code == E_DIGEST
    e = _refused(a.write_chunk, len(data) - 1, b"xy")
    assert e.code == E_RANGE
    e = _refused(a.write_begin, 40000, bytes(32))
    assert e.code == E_BUNDLE


def test_scattered_chunks_are_refused_before_they_cost_heap_and_a_refused_commit_frees_its_buffer():
    from pinagent.agent import MAX_GAPS

    a = _agent(_board("v1.bin"))
    data = _bundle("v2.bin")
    a.write_begin(len(data), hashlib.sha256(data).digest())
    for i in range(MAX_GAPS):  # one byte every other byte: MAX_GAPS separate pieces are fine
        a.write_chunk(2 * i, data[2 * i:2 * i + 1])
    e = _refused(a.write_chunk, 2 * MAX_GAPS, data[2 * MAX_GAPS:2 * MAX_GAPS + 1])
    assert e.code == E_RANGE and "WRITE_BEGIN" in e.reason
    assert _refused(a.write_commit).code == E_NO_WRITE  # the piece list and its buffer are gone
    _upload(a, data)  # in order, it goes through
    e = _refused(_upload, a, _bundle("v2_bad_signature.bin"))
    assert e.code == E_SIGNATURE and a._incoming is None


def test_storage_failures_are_reported_and_the_old_bundle_stays():
    ffs = _board("v1.bin")
    a = _agent(ffs)
    ffs.fail("rename", times=3)
    e = _refused(_upload, a, _bundle("v2.bin"))
    assert e.code == E_STORAGE
    assert _agent(ffs.reboot()).identify()["bundle_version"] == 1
    full = FaultFS(dirs=["/fleetpin"], blocks=4)
    full.files[R + "signers.bin"] = _signers()
    full.files[R + "bundle.bin"] = S.encode_slot(_signers(), _bundle("v1.bin"))
    a = _agent(full)
    data = _bundle("v2.bin")
    e = _refused(a.write_begin, len(data), hashlib.sha256(data).digest())
    assert e.code == E_NO_SPACE


def test_read_bundle_serves_the_installed_bytes():
    a = _agent(_board("v1.bin"))
    data = _bundle("v1.bin")
    got = b""
    while len(got) < len(data):
        total, chunk = a.read_bundle(len(got), 512)
        assert total == len(data)
        got += bytes(chunk)
    assert got == data
    e = _refused(a.read_bundle, len(data) + 1, 10)
    assert e.code == E_RANGE
    assert _agent(FaultFS()).read_bundle(0, 10) == (0, b"")


# ---- reports over the service


def test_clear_reports_only_what_was_read():
    tls = FakeTls()
    tls.chains["chain-leaf.example"] = WRONG
    a = _agent(_board("v1.bin"), tls=tls)
    a.clear_reports(0)  # empty: succeeds
    raises(C.PinBlocked, a.connect, "chain-leaf.example", 443)
    total, _ = a.read_reports(0, 512)
    raises(C.PinBlocked, a.connect, "chain-leaf.example", 443)  # merged: same length, new count
    assert len(a.reports.export()) == total
    e = _refused(a.clear_reports, total)
    assert e.code == E_CHANGED and len(_reports(a)) == 1
    total, _ = a.read_reports(0, 512)
    a.clear_reports(total)
    assert _reports(a) == [] and a.identify()["reports"] == 0
    e = _refused(a.read_reports, 10000, 10)
    assert e.code == E_RANGE


def test_clear_without_a_read_is_refused_unless_empty():
    tls = FakeTls()
    tls.chains["chain-leaf.example"] = WRONG
    ffs = _board("v1.bin")
    a = _agent(ffs, tls=tls)
    raises(C.PinBlocked, a.connect, "chain-leaf.example", 443)
    b = _agent(ffs.reboot())  # rebooted between the host's read and its clear
    e = _refused(b.clear_reports, len(b.reports.export()))
    assert e.code == E_CHANGED


def test_reboot_and_trusted_time():
    ffs = _board("v1.bin")
    a = _agent(ffs)
    a.reboot()
    assert a.reboot_requested
    assert not a.trusted_time(V1_ISSUED + 60)  # too close to the floor: no flash write
    assert a.trusted_time(NOW + 7200)
    assert _agent(ffs.reboot(), clock=NOW).identify()["clock"] == "floor"  # NOW is below it now
