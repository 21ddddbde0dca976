"""The fleet in the registry (fleetpin.field.fleet, `fleetpin fleet`, `device reports --store`):
reports stored per device and deduplicated, saved report files imported, lockouts recorded,
and the status a security engineer reads after a rotation; on SQLite and on PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from fleetpin.errors import UsageError
from fleetpin.field import fleet as F
from fleetpin.field.reports import parse_report_file
from fleetpin.line.registry import Registry, make_engine

MAC = "aa:bb:cc:00:00:01"
T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


def _report(key: str, host: str, first: str, last: str, count: int, enforce: bool | None, device: str = "dev-1") -> dict[str, Any]:
    return {"key": key, "date-time": first, "last-seen": last, "count": count, "hostname": host, "port": 443,
            "noted-hostname": host, "enforce-pinning": enforce, "allowed": not enforce, "validation-result": "mismatch",
            "served-certificate-chain": [{"depth": 0, "pin-sha256": "x"}], "bundle-version": 3, "device-id": device}


def _confirm(reg: Registry, mac: str, bundle: str) -> None:
    c = reg.claim(mac, station="line1:/dev/ttyUSB0", image_id="img", bundle_sha256=bundle)
    reg.confirmed(c)


def test_reports_deduplicated_and_fleet_status(url: str) -> None:
    clock = Clock()
    with Registry(url, clock=clock) as reg:
        doc = {"counters": {"fleetpin-reports": 1, "total": 5, "dropped": 0}, "cleared": False,
               "reports": [_report("k1", "api.example", "2026-01-01T00:00:00Z", "2026-01-01T00:10:00Z", 2, True),
                           _report("k2", "mqtt.example", "2026-01-02T00:00:00Z", "2026-01-02T00:00:00Z", 1, False)]}
        first, again = F.store_reports(reg, doc), F.store_reports(reg, doc)
        assert (first.added, first.merged, again.added, again.merged) == (2, 0, 0, 2)  # read twice: counted once
        doc["reports"][0] = _report("k1", "api.example", "2026-01-01T00:00:00Z", "2026-01-03T00:00:00Z", 4, True)
        assert F.store_reports(reg, doc).added == 0  # the same entry, seen again since: merged
        # after a clear the agent starts a new entry for the same failure: a new row
        assert F.store_reports(reg, [_report("k1", "api.example", "2026-02-01T00:00:00Z", "2026-02-01T00:00:00Z", 1, True)]).added == 1
        clock.t += 10
        F.store_reports(reg, {"reports": [_report("k1", "api.example", "2026-01-05T00:00:00Z", "2026-01-05T00:00:00Z", 1, True, "dev-2")]},
                        identity={"device_id": "dev-2", "bundle_version": 4, "bundle_sha256": "c" * 64, "mac": MAC.upper()})
        F.store_reports(reg, {"reports": []}, device_id="dev-3", seen_at=clock.t - 1000)
        with pytest.raises(UsageError, match="do not say which device"):
            F.store_reports(reg, {"reports": [{"key": "k"}]})
        with pytest.raises(UsageError, match="come from 2 devices"):
            F.store_reports(reg, [_report("k", "h", "2026-01-01T00:00:00Z", "", 1, True, d) for d in ("a", "b")])
        engine = make_engine(url)
        with engine.connect() as conn:
            assert conn.scalar(sa.text("SELECT count(*) FROM reports")) == 4
            assert conn.scalar(sa.text("SELECT count FROM reports WHERE device_id = 'dev-1' AND report_key = 'k1' "
                                       "ORDER BY first_seen LIMIT 1")) == 4
        engine.dispose()

        preflight = {"servers": [{"host": "api.example", "port": 443, "status": "lockout", "lockout_reason": "mismatch: ..."},
                                 {"host": "ok.example", "port": 443, "status": "ok"}]}
        assert F.record_preflight(reg, "c" * 64, 4, preflight) == 1
        _confirm(reg, "aa:bb:cc:00:00:09", "c" * 64)  # on the line with that bundle, never seen in the field
        _confirm(reg, MAC, "c" * 64)  # dev-2's board: seen in the field (its MAC), counted there only
        drills = [{"scenario": "emergency-rotation", "devices": [{"device": "d1", "bundle": "v1", "status": "UNREACHABLE"},
                                                                 {"device": "d2", "bundle": "v1", "status": "blocked"},
                                                                 {"device": "d3", "bundle": "v2", "status": "updated"}]},
                  {"scenario": "rogue-ca", "devices": [{"device": "d1", "bundle": "v1", "status": "connected"}]}]
        assert F.record_drill(reg, drills) == 1

        st = F.fleet_status(reg, not_seen_since=clock.t - 500, sample=5)
        assert st["devices"] == 3
        assert [(b["bundle_version"], b["devices"]) for b in st["by_bundle_version"]] == [(4, 1), (3, 1), (None, 1)]
        mism = {(m["host"], m["mode"]): (m["devices"], m["sample"]) for m in st["mismatches"]}
        assert mism == {("api.example", "enforced"): (2, ["dev-1", "dev-2"]), ("mqtt.example", "report-only"): (1, ["dev-1"])}
        assert st["not_seen"]["devices"] == 1 and st["not_seen"]["sample"][0]["device_id"] == "dev-3"
        assert F.recount(reg) == 2 and F.fleet_status(reg, sample=5)["mismatches"] == st["mismatches"]  # kept exactly at ingest
        locks = {lk["source"]: lk for lk in st["lockouts"]}
        assert (locks["preflight"]["devices"], locks["preflight"]["sample"], locks["preflight"]["line_boards"]) == (1, ["dev-2"], 1)
        assert (locks["preflight"]["host"], locks["preflight"]["port"], locks["preflight"]["bundle_version"]) == ("api.example", 443, 4)
        assert (locks["drill"]["scenario"], locks["drill"]["devices"]) == ("emergency-rotation", 2)
        assert "1 UNREACHABLE, 1 blocked of 3 devices" in locks["drill"]["reason"]
        assert st["line_boards"] == {"confirmed": 2}
        rows = list(csv.DictReader(io.StringIO(F.status_csv(st))))
        assert any(r["section"] == "mismatch" and r["key"] == "api.example" and r["mode"] == "enforced" and r["devices"] == "2"
                   for r in rows)
        assert [r["devices"] for r in rows if r["section"] == "lockout-drill"] == ["2"]
        json.dumps(st)  # JSON-ready as it is

        # a later preflight of the bundle that finds none clears it; a drill that locks none out too
        assert F.record_preflight(reg, "c" * 64, 4, {"servers": [{"host": "api.example", "port": 443, "status": "ok"}]}) == 0
        assert F.record_drill(reg, [{"scenario": "emergency-rotation", "devices": []}]) == 0
        assert F.fleet_status(reg)["lockouts"] == []


def test_counts_stay_exact_with_technicians_storing_at_once(url: str) -> None:
    """8 threads store 200 devices' reports on the same hosts at once (some devices twice): the
    devices per host kept at ingest equal a recount from the reports, and no deadlock."""
    import threading

    hosts = ["a.example", "b.example", "c.example"]
    errors: list[BaseException] = []

    def technician(reg: Registry, i: int) -> None:
        try:
            for d in range(i * 25, i * 25 + 30):  # 5 devices overlap with the next technician's
                dev = f"dev-{d % 200}"
                reps = [_report(f"k{h}", hosts[(d + h) % 3], "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", 1, h % 2 == 0, dev)
                        for h in range(2)]
                F.store_reports(reg, reps)
        except BaseException as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    with Registry(url) as reg:
        threads = [threading.Thread(target=technician, args=(reg, i)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        kept = F.fleet_status(reg, sample=0)["mismatches"]
        F.recount(reg)
        assert F.fleet_status(reg, sample=0)["mismatches"] == kept and sum(m["devices"] for m in kept) == 400


def test_a_newer_file_of_a_device_is_not_overwritten_by_an_older_one(url: str) -> None:
    with Registry(url) as reg:
        F.store_reports(reg, [], identity={"device_id": "d", "bundle_version": 5, "mac": MAC}, seen_at=T0)
        F.store_reports(reg, [], identity={"device_id": "d", "bundle_version": 4, "mac": MAC}, seen_at=T0 - 86400)
        st = F.fleet_status(reg, not_seen_since=T0 - 3600)
        assert st["by_bundle_version"] == [{"bundle_version": 5, "devices": 1}] and st["not_seen"]["devices"] == 0


def test_report_files_parse() -> None:
    log = '{"fleetpin-reports":1,"total":2,"dropped":0}\n{"key":"k","count":2}\nnot json\n'
    assert parse_report_file(log) == {"counters": {"fleetpin-reports": 1, "total": 2, "dropped": 0}, "reports": [{"key": "k", "count": 2}],
                                      "device": None, "read_at": None}
    doc = json.dumps({"counters": {}, "reports": [{"key": "k"}], "cleared": False, "device": {"device_id": "d"},
                      "read_at": "2027-01-15T00:00:00Z"})
    got = parse_report_file(doc)
    assert got["reports"] == [{"key": "k"}] and got["device"] == {"device_id": "d"} and got["read_at"] == 1_799_971_200.0
    with pytest.raises(UsageError):
        parse_report_file("hello")


# ---- the commands ----------------------------------------------------------------------------


def _seed(url: str) -> None:
    clock = Clock()
    with Registry(url, clock=clock) as reg:
        F.store_reports(reg, [_report("k1", "api.example", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", 1, True)],
                        identity={"device_id": "dev-1", "bundle_version": 3, "mac": MAC}, seen_at=T0)
        F.store_reports(reg, [_report("k2", "api.example", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", 1, False, "dev-2")],
                        seen_at=T0 - 90 * 86400)
        F.record_preflight(reg, "c" * 64, 4, {"servers": [{"host": "api.example", "port": 443, "status": "lockout",
                                                           "lockout_reason": "mismatch"}]})


def test_status_command_table_json_csv(fleetpin: Any, url: str, tmp_path: Path) -> None:
    _seed(url)
    r = fleetpin("fleet", "status", "--registry", url, "--not-seen-since", "2026-12-01")
    assert r.exit_code == 0, r.stderr
    for text in ("2 devices", "devices per bundle version", "api.example", "enforced", "report-only",
                 "1 devices not seen since 2026-12-01", "dev-2", "would be locked out", "preflight"):
        assert text in r.stdout, (text, r.stdout)
    st = json.loads(fleetpin("fleet", "status", "--registry", url, "--json").stdout)
    assert st["devices"] == 2 and st["not_seen"] is None and st["lockouts"][0]["bundle_sha256"] == "c" * 64
    r = fleetpin("fleet", "status", "--registry", url, "--csv", "--not-seen-since", "2026-12-01T00:00:00Z", "-o", str(tmp_path / "s.csv"))
    assert r.exit_code == 0
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert [r["devices"] for r in rows if r["section"] == "not-seen"] == ["1"]
    assert {r["mode"] for r in rows if r["section"] == "mismatch"} == {"enforced", "report-only"}
    env = {"FLEETPIN_REGISTRY": url}  # the environment names the registry as well
    assert json.loads(fleetpin("fleet", "status", "--json", env=env).stdout)["devices"] == 2
    bad = fleetpin("fleet", "status", "--registry", url, "--not-seen-since", "last week")
    assert bad.exit_code == 2 and "ISO 8601" in bad.stderr


def test_status_of_a_missing_or_unusable_registry(fleetpin: Any, tmp_path: Path) -> None:
    r = fleetpin("fleet", "status", "--registry", str(tmp_path / "none.sqlite"))
    assert r.exit_code == 2 and "no registry at" in r.stderr and not (tmp_path / "none.sqlite").exists()
    r = fleetpin("fleet", "status", "--registry", "mysql://u@h/db")
    assert r.exit_code == 2 and "unsupported registry URL" in r.stderr
    r = fleetpin("fleet", "status", "--registry", "postgresql://nobody@127.0.0.1:1/none")
    assert r.exit_code == 2 and "cannot open the registry" in r.stderr and "Traceback" not in r.stderr


def test_import_saved_files(fleetpin: Any, url: str, tmp_path: Path) -> None:
    new = tmp_path / "dev-1.json"  # as `device reports --json` writes it now: the device is named
    new.write_text(json.dumps({"device": {"device_id": "dev-1", "mac": MAC, "bundle_version": 3, "fleet": "acme"},
                               "read_at": "2026-03-01T10:00:00Z", "counters": {"total": 1}, "cleared": False,
                               "reports": [_report("k1", "api.example", "2026-02-01T00:00:00Z", "2026-02-01T00:00:00Z", 1, True)]}))
    old = tmp_path / "old.json"  # as it wrote it before: the reports name their device
    old.write_text(json.dumps({"counters": {}, "cleared": True,
                               "reports": [_report("k9", "mqtt.example", "2026-02-02T00:00:00Z", "2026-02-02T00:00:00Z", 2, False, "dev-7")]}))
    anonymous = tmp_path / "anon.log"  # an agent's log without device ids
    anonymous.write_text('{"fleetpin-reports":1,"total":1,"dropped":0}\n{"key":"k3","hostname":"x.example","date-time":"2026-02-03T00:00:00Z"}\n')
    r = fleetpin("fleet", "import", str(new), str(old), str(anonymous), "--registry", url)
    assert r.exit_code == 1 and "2 of 3 files stored" in r.stdout and "anon.log: not stored" in r.stderr and "--device" in r.stderr
    r = fleetpin("fleet", "import", str(new), str(old), "--registry", url, "--json")
    assert r.exit_code == 0 and [(d["device_id"], d["added"], d["merged"]) for d in json.loads(r.stdout)] == [("dev-1", 0, 1), ("dev-7", 0, 1)]
    assert fleetpin("fleet", "import", str(anonymous), "--device", "dev-9", "--registry", url).exit_code == 0
    st = json.loads(fleetpin("fleet", "status", "--registry", url, "--json").stdout)
    assert st["devices"] == 3
    with Registry(url) as reg, reg.transaction(write=False) as conn:
        row = conn.execute(sa.text("SELECT mac, fleet, last_seen FROM devices WHERE device_id = 'dev-1'")).one()
    assert (row.mac, row.fleet, row.last_seen) == (MAC, "acme", 1_772_359_200.0)  # read_at, not the file's mtime


def test_what_devices_said_is_printed_safely(fleetpin: Any, tmp_path: Path) -> None:
    """Device ids and host names come from devices: an escape sequence in one is shown escaped,
    never sent to the terminal (which it could rewrite)."""
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    with Registry(url) as reg:
        F.store_reports(reg, [_report("k", "evil\x1b[2J.example", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", 1, True,
                                      "dev\x1b]0;owned\x07")])
    r = fleetpin("fleet", "status", "--registry", url)
    assert r.exit_code == 0 and "\x1b" not in r.stdout and "\\x1b[2J" in r.stdout and "\\x07" in r.stdout
