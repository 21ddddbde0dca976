# pinagent.reports: failure reports from verdicts, the deduplicating ring in flash.
# Runs unchanged under CPython and on the MicroPython VM, over tests/device/faultfs.py.

import json

from faultfs import EIO, FaultFS
from support import raises

from pinagent.policy_load import policy_from_obj
from pinagent import policy as P
from pinagent import reports as RP
from pinagent import store as S
from pinagent.pins import pin_to_text

NOW = 1700000000
LEAF = bytes([1]) * 32
INTER = bytes([2]) * 32
ROOT_ = bytes([3]) * 32
GOOD = bytes([9]) * 32
BACKUP = bytes([8]) * 32
SUBJECTS = ["CN=api.example.com", "CN=Example Intermediate CA", "CN=Example Root CA"]


def _verdict(host="api.example.com", chain=((0, LEAF), (1, INTER), (2, ROOT_))):
    policy = policy_from_obj({
        "domains": [{
            "host": "example.com",
            "include_subdomains": True,
            "pins": [{"pin": pin_to_text(GOOD), "label": "primary"}, {"pin": pin_to_text(BACKUP), "label": "backup"}],
            "expires": NOW + 86400,
        }]
    })
    v = P.decide(policy, host, list(chain), NOW, True)
    assert not v.allowed
    return v.to_obj()


def _report(now=NOW, port=443, host="api.example.com", chain=((0, LEAF), (1, INTER), (2, ROOT_))):
    return RP.make_report(_verdict(host, chain), port, SUBJECTS, now, 7, "esp32-a1b2c3")


def _ring(**kw):
    ffs = FaultFS(dirs=["/fleetpin"])
    return ffs, RP.Reports(S.FS(ffs, ffs.open), **kw)


def _reopen(ffs, **kw):
    ffs = ffs.reboot()
    return ffs, RP.Reports(S.FS(ffs, ffs.open), **kw)


def test_rfc3339_dates():
    assert RP.rfc3339(0) == "1970-01-01T00:00:00Z"
    assert RP.rfc3339(946684799) == "1999-12-31T23:59:59Z"
    assert RP.rfc3339(951782400) == "2000-02-29T00:00:00Z"
    assert RP.rfc3339(NOW) == "2023-11-14T22:13:20Z"
    assert RP.rfc3339(4102444800) == "2100-01-01T00:00:00Z"
    assert RP.rfc3339(None) is None


def test_report_has_the_hpkp_and_trustkit_fields():
    r = _report()
    assert r["date-time"] == "2023-11-14T22:13:20Z"
    assert r["hostname"] == "api.example.com" and r["port"] == 443
    assert r["noted-hostname"] == "example.com"
    assert r["include-subdomains"] is True and r["enforce-pinning"] is True
    assert r["effective-expiration-date"] == RP.rfc3339(NOW + 86400)
    assert r["known-pins"] == ['pin-sha256="%s"' % pin_to_text(GOOD), 'pin-sha256="%s"' % pin_to_text(BACKUP)]
    assert r["served-certificate-chain"] == [
        {"depth": 0, "pin-sha256": pin_to_text(LEAF), "subject": "CN=api.example.com"},
        {"depth": 1, "pin-sha256": pin_to_text(INTER), "subject": "CN=Example Intermediate CA"},
        {"depth": 2, "pin-sha256": pin_to_text(ROOT_), "subject": "CN=Example Root CA"},
    ]
    assert r["validation-result"] == P.MISMATCH
    assert r["allowed"] is False and r["chain-verified"] is True and r["clock-trusted"] is True
    assert r["bundle-version"] == 7 and r["device-id"] == "esp32-a1b2c3"
    json.dumps(r)  # JSON-able as it is


def test_report_bounds_subjects_and_chain_length():
    long_chain = [(d, bytes([d + 20]) * 32) for d in range(7)]
    v = _verdict(chain=long_chain)
    r = RP.make_report(v, 8443, {0: "CN=" + "x" * 200}, NOW, 1, "d")
    chain = r["served-certificate-chain"]
    assert len(chain) == RP.MAX_CHAIN
    assert chain[0]["subject"] == ("CN=" + "x" * 200)[: RP.MAX_SUBJECT]
    assert "subject" not in chain[1]
    r = RP.make_report(v, 8443, None, NOW, 1, "d")
    assert "subject" not in r["served-certificate-chain"][0]


def test_report_without_a_rule():
    obj = {"allowed": False, "reason": P.NO_POLICY_BLOCKED, "host": "x.test", "rule": None, "chain": []}
    r = RP.make_report(obj, 443, None, NOW, None, "d")
    assert r["noted-hostname"] is None and r["known-pins"] == [] and r["include-subdomains"] is False


def test_key_ignores_time_and_counts_but_not_what_failed():
    a = _report(now=NOW)
    b = _report(now=NOW + 3600)
    b["count"] = 5
    assert RP.report_key(a) == RP.report_key(b)
    assert len(RP.report_key(a)) == 16
    assert RP.report_key(a) != RP.report_key(_report(port=8443))
    assert RP.report_key(a) != RP.report_key(_report(host="b.example.com"))
    assert RP.report_key(a) != RP.report_key(_report(chain=((0, bytes([5]) * 32), (1, INTER))))


def test_duplicates_bump_count_and_last_seen():
    ffs, ring = _ring()
    assert ring.add(_report(now=NOW)) == RP.ADDED
    assert ring.add(_report(now=NOW + 60)) == RP.MERGED
    assert ring.add(_report(now=NOW + 120)) == RP.MERGED
    (entry,) = ring.read()
    assert entry["count"] == 3
    assert entry["date-time"] == RP.rfc3339(NOW) and entry["last-seen"] == RP.rfc3339(NOW + 120)
    assert ring.stats()["total"] == 3 and ring.stats()["entries"] == 1


def test_ring_keeps_the_newest_entries_and_counts_the_dropped():
    ffs, ring = _ring(max_entries=3)
    for port in range(1, 6):
        ring.add(_report(port=port))
    ports = [e["port"] for e in ring.read()]
    assert ports == [3, 4, 5]
    st = ring.stats()
    assert st["total"] == 5 and st["dropped"] == 2 and st["entries"] == 3


def test_a_recurring_failure_is_not_the_one_dropped():
    ffs, ring = _ring(max_entries=3)
    for port in (1, 2, 3):
        ring.add(_report(port=port))
    ring.add(_report(port=1, now=NOW + 5))  # seen again: now the most recent
    ring.add(_report(port=4))
    assert [e["port"] for e in ring.read()] == [3, 1, 4]
    assert ring.read()[1]["count"] == 2


def test_ring_never_exceeds_its_byte_limit():
    ffs, ring = _ring(max_bytes=2000, max_entries=100)
    one = len(ring.export())
    for port in range(40):
        ring.add(_report(port=port))
        assert len(ffs.files["/fleetpin/reports.bin"]) <= 2000
    st = ring.stats()
    assert st["entries"] >= 1 and st["dropped"] == 40 - st["entries"] and st["total"] == 40
    assert st["bytes"] == len(ring.export()) and one < 100
    print("report entry: %d bytes; %d fit in %d bytes" % ((st["bytes"] - one) // st["entries"], st["entries"], 2000))


def test_a_report_larger_than_the_ring_is_counted_not_stored():
    ffs, ring = _ring(max_bytes=300)
    assert ring.add(_report()) == RP.DROPPED
    assert ring.read() == [] and ring.stats()["dropped"] == 1 and ring.stats()["total"] == 1
    ffs, ring = _reopen(ffs, max_bytes=300)
    assert ring.stats()["dropped"] == 1


def test_entries_and_counters_survive_a_reboot():
    ffs, ring = _ring(max_entries=2)
    for port in (1, 2, 3):
        ring.add(_report(port=port))
    ring.add(_report(port=3))
    ffs, again = _reopen(ffs, max_entries=2)
    assert again.read() == ring.read()
    assert again.stats()["total"] == 4 and again.stats()["dropped"] == 1
    assert again.export() == ring.export()


def test_export_is_json_lines_with_a_counter_header():
    ffs, ring = _ring()
    ring.add(_report(port=1))
    ring.add(_report(port=2))
    data = ring.export()
    assert data == ffs.files["/fleetpin/reports.bin"] and data.endswith(b"\n")
    lines = data.split(b"\n")[:-1]
    assert json.loads(lines[0]) == {"fleetpin-reports": 1, "total": 2, "dropped": 0, "acked": 0}
    assert [json.loads(x)["port"] for x in lines[1:]] == [1, 2]


def test_damaged_log_never_raises():
    for junk in (b"", b"\xff\xfe garbage", b"[1,2,3]\n", b"{\"fleetpin-reports\": 99}\n", b"x" * 20000):
        ffs, ring = _ring()
        ffs.files["/fleetpin/reports.bin"] = junk
        ffs, ring = _reopen(ffs)
        assert ring.read() == [], junk[:20]
        assert ring.add(_report()) == RP.ADDED
        assert len(ring.read()) == 1


def test_a_bad_line_is_skipped_and_the_rest_kept():
    ffs, ring = _ring()
    for port in (1, 2, 3):
        ring.add(_report(port=port))
    lines = ffs.files["/fleetpin/reports.bin"].split(b"\n")
    lines[2] = lines[2][:30]  # the port 2 entry, torn
    ffs.files["/fleetpin/reports.bin"] = b"\n".join(lines)
    ffs, ring = _reopen(ffs)
    assert [e["port"] for e in ring.read()] == [1, 3]
    assert ring.stats()["bad_lines"] == 1 and ring.stats()["total"] == 3


def test_acknowledged_reports_are_kept_and_only_newer_ones_are_pending():
    ffs, ring = _ring()
    assert not hasattr(ring, "clear")  # nothing erases reports: they are acknowledged
    ring.add(_report(port=1))
    ring.add(_report(port=2))
    first, second = ring.read()
    assert (first["seq"], second["seq"]) == (1, 2) and ring.stats()["pending"] == 2
    assert ring.ack(first["seq"]) == 1
    assert len(ring.read()) == 2 and ring.stats()["pending"] == 1 and ring.stats()["acked"] == 1
    assert ring.ack(0) == 1  # an acknowledgement never goes back
    assert ring.ack(10 ** 6) == 2  # nor covers reports not recorded yet
    assert ring.stats()["pending"] == 0 and len(ring.read()) == 2
    ring.add(_report(port=1, now=NOW + 9))  # seen again: pending again, under a new number
    assert ring.read()[-1]["seq"] == 3 and ring.stats()["pending"] == 1
    ffs, ring = _reopen(ffs)
    assert ring.stats()["acked"] == 2 and ring.stats()["pending"] == 1 and len(ring.read()) == 2
    head = json.loads(ring.export().split(b"\n")[0])
    assert head["acked"] == 2 and head["total"] == 3


def test_newer_reports_overwrite_acknowledged_ones_first():
    ffs, ring = _ring(max_entries=3)
    for port in (1, 2, 3):
        ring.add(_report(port=port))
    ring.ack(ring.read()[1]["seq"])  # ports 1 and 2 acknowledged
    ring.add(_report(port=4))
    assert [e["port"] for e in ring.read()] == [2, 3, 4]
    ring.add(_report(port=5))
    assert [e["port"] for e in ring.read()] == [3, 4, 5]  # only then pending ones, oldest first
    ring.add(_report(port=6))
    assert [e["port"] for e in ring.read()] == [4, 5, 6] and ring.stats()["dropped"] == 3


def test_a_log_from_an_older_agent_is_all_pending():
    ffs, ring = _ring()
    entry = _report(port=1)
    entry.update({"key": RP.report_key(entry), "count": 1, "last-seen": entry["date-time"]})  # no "seq"
    lines = [{"fleetpin-reports": 1, "total": 1, "dropped": 0}, entry]
    ffs.files["/fleetpin/reports.bin"] = b"\n".join(json.dumps(x).encode() for x in lines) + b"\n"
    ffs, ring = _reopen(ffs)
    assert ring.stats()["pending"] == 1 and ring.read()[0]["port"] == 1


def test_write_failures_keep_reports_in_ram_until_the_next_save():
    ffs, ring = _ring()
    ffs.fail("open", "/fleetpin/reports.new", EIO)
    assert ring.add(_report(port=1)) == RP.ADDED
    assert ring.stats()["write_errors"] == 1
    assert "/fleetpin/reports.bin" not in ffs.files
    ring.add(_report(port=2))
    ffs, again = _reopen(ffs)
    assert [e["port"] for e in again.read()] == [1, 2]


def test_missing_directory_is_created_on_first_report():
    ffs = FaultFS()
    ring = RP.Reports(S.FS(ffs, ffs.open))
    assert ring.read() == []
    ring.add(_report())
    assert "/fleetpin/reports.bin" in ffs.files


def test_add_refuses_what_is_not_a_report():
    ffs, ring = _ring()
    e = raises(RP.ReportError, ring.add, ["not", "a", "dict"])
    assert "dict" in e.reason
    assert ring.stats()["total"] == 0


def test_repeats_of_one_failure_do_not_wear_the_flash():
    ffs, ring = _ring()
    saves = []
    real = ring._save

    def counting_save():
        saves.append(1)
        return real()

    ring._save = counting_save
    for i in range(1000):  # one blocked connection a second, for 1000 s
        ring.add(_report(now=NOW + i))
    assert len(saves) == 10  # the first, then counts 2, 4, ..., 512
    [entry] = ring.read()
    assert entry["count"] == 1000  # what READ_REPORTS serves is exact
    assert _reopen(ffs)[1].read()[0]["count"] == 512  # what a power cut would leave
