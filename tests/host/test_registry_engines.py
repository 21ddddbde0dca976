"""The registry (fleetpin.line.registry) on both engines: the same tests on a SQLite file and on a
real PostgreSQL 18 server (tests/pg.py), migration from fleetpin 0.1's SQLite registry, refusal
of a newer schema, and real concurrent station processes, some SIGKILLed mid-write."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from fleetpin.errors import FleetpinError, UsageError
from fleetpin.line import registry as R
from fleetpin.line.registry import (
    BUSY,
    CLAIMED,
    CONFIRMED,
    FAILED,
    NEW,
    RESUMED,
    SKIP,
    TAKEN_OVER,
    WRITTEN,
    Attempt,
    ClaimLost,
    NewerSchemaError,
    OlderSchemaError,
    Registry,
)

STATION = Path(__file__).with_name("registry_station.py")
REPO = Path(__file__).resolve().parents[2]
MAC = "aa:bb:cc:00:00:01"


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def _claim(reg: Registry, station: str, image: str = "img-1", mac: str = MAC, **kw: object) -> R.Claim:
    return reg.claim(mac, station=station, image_id=image, bundle_sha256="b" * 64, board="esp32", port="/dev/x", operator="op", **kw)  # type: ignore[arg-type]


# ---- URLs ---------------------------------------------------------------------------------


def test_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert R.engine_url("postgresql://u:pw@db:5433/line").drivername == "postgresql+psycopg"
    assert R.engine_url("postgres://u@db/line").drivername == "postgresql+psycopg"
    assert R.engine_url(tmp_path / "r.sqlite").database == str(tmp_path / "r.sqlite")
    assert R.engine_url("plain.sqlite").database == "plain.sqlite"
    assert "pw" not in R.display_url("postgresql://u:pw@db/line")
    monkeypatch.setenv(R.ENV_VAR, "sqlite:///from-env.sqlite")
    assert R.resolve_url(None) == "sqlite:///from-env.sqlite"
    monkeypatch.delenv(R.ENV_VAR)
    assert R.resolve_url(None) == R.DEFAULT_URL
    for bad in ("mysql://u@h/db", "sqlite://", "postgresql+psycopg2://u@h/db"):
        with pytest.raises(UsageError):
            R.engine_url(bad)


# ---- claims -------------------------------------------------------------------------------


def test_claim_write_confirm_and_skip_across_stations(url: str) -> None:
    with Registry(url) as reg:
        assert reg.schema_revision() == R.head_revision()
        c = _claim(reg, "line1:slot1")
        assert (c.outcome, c.state, c.may_write) == (NEW, CLAIMED, True)
        assert reg.written(c).state == WRITTEN
        assert reg.written(c).state == WRITTEN  # a retried step changes nothing
        assert reg.confirmed(c).state == CONFIRMED
        assert reg.confirmed(c).state == CONFIRMED
        s = _claim(reg, "line2:slot4")  # another station, same image: nothing to write
        assert (s.outcome, s.may_write, s.holder) == (SKIP, False, "line1:slot1")
        assert reg.confirmed_macs("img-1") == {MAC}
        new_image = _claim(reg, "line2:slot4", image="img-2")  # a new image is a new claim
        assert new_image.outcome == NEW and new_image.token != c.token
        with pytest.raises(ClaimLost):
            reg.confirmed(c)  # the old claim moves nothing any more
        assert reg.board(MAC).image_id == "img-2"  # type: ignore[union-attr]
        assert len(reg.boards()) == 1


def test_same_board_at_two_stations_one_writes(url: str) -> None:
    clock = Clock()
    with Registry(url, clock=clock) as reg:
        a = _claim(reg, "s1", lease=60)
        b = _claim(reg, "s2", lease=60)
        assert a.may_write and (b.outcome, b.holder, b.may_write) == (BUSY, "s1", False)
        again = _claim(reg, "s1", lease=60)  # the same station retrying: the same claim
        assert (again.outcome, again.token) == (RESUMED, a.token)
        reg.written(a)
        assert _claim(reg, "s1").state == WRITTEN  # resuming reports how far it got
        clock.t += 30
        assert _claim(reg, "s2", lease=60).outcome == BUSY  # the resume renewed the lease
        clock.t += 301
        t = _claim(reg, "s2", lease=60)  # s1's lease ran out: s2 takes over
        assert (t.outcome, t.previous, t.state) == (TAKEN_OVER, "s1", CLAIMED)
        with pytest.raises(ClaimLost):
            reg.written(a)
        with pytest.raises(ClaimLost):
            reg.renew(a)
        reg.renew(t)
        reg.confirmed(t)
        row = reg.board(MAC)
        assert row is not None and (row.state, row.station, row.takeovers, row.token) == (CONFIRMED, "s2", 1, t.token)


def test_failed_board_is_claimed_again(url: str) -> None:
    with Registry(url) as reg:
        c = _claim(reg, "s1")
        reg.written(c)
        f = reg.failed(c, "agent check failed: wrong bundle")
        assert (f.state, f.error) == (FAILED, "agent check failed: wrong bundle")
        with pytest.raises(ClaimLost):
            reg.confirmed(c)  # failed is final for this claim
        again = _claim(reg, "s2")
        assert again.outcome == NEW and again.token != c.token
        reg.confirmed(again)
        assert reg.board(MAC).state == CONFIRMED  # type: ignore[union-attr]
        forced = _claim(reg, "s3", force=True)
        assert forced.outcome == NEW


def test_attempts_audit_log(url: str) -> None:
    with Registry(url) as reg:
        a = Attempt(MAC, "esp32", "img-1", "b" * 64, "s1", "/dev/x", "op", 1.0, 2.0, "failed", "wrong chip")
        i = reg.record(a)
        j = reg.record(Attempt(None, "esp32", "img-1", "b" * 64, "s1", "/dev/x", "op", 3.0, 4.0, "failed", "no board"))
        assert j > i
        assert [x.error for x in reg.attempts()] == ["wrong chip", "no board"]
        assert [x.id for x in reg.attempts(MAC)] == [i]
        with pytest.raises(ValueError):
            reg.record(Attempt(MAC, "esp32", "i", "b", "s", "p", "o", 1.0, 2.0, "bogus"))
        assert R.to_csv(reg.attempts()).splitlines()[0].startswith("id,mac,board")


# ---- schema versions ------------------------------------------------------------------------


# fleetpin 0.1's registry (host/fleetpin/line/registry.py before the shared registry), frozen:
# the schema it created and the query it read the attempts back with.
_V01_SCHEMA = """
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    mac TEXT, board TEXT NOT NULL, image_id TEXT NOT NULL, bundle_sha256 TEXT NOT NULL,
    station TEXT NOT NULL, port TEXT NOT NULL, operator TEXT NOT NULL,
    started REAL NOT NULL, ended REAL NOT NULL, result TEXT NOT NULL, error TEXT
);
CREATE INDEX IF NOT EXISTS attempts_mac ON attempts (mac);
"""
_V01_COLUMNS = "mac, board, image_id, bundle_sha256, station, port, operator, started, ended, result, error"


def _v01_attempts(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT id, {_V01_COLUMNS} FROM attempts ORDER BY id").fetchall()


def _legacy_registry(path: Path) -> None:
    """A registry exactly as fleetpin 0.1 made it, with four attempts."""
    rows = [
        ("aa:00:00:00:00:01", "esp32", "img-1", "b" * 64, "s1", "/dev/a", "op", 1.0, 2.0, "failed", "wrong chip"),
        ("aa:00:00:00:00:01", "esp32", "img-1", "b" * 64, "s1", "/dev/a", "op", 3.0, 4.0, "provisioned", None),
        ("aa:00:00:00:00:02", "esp32", "img-1", "b" * 64, "s2", "/dev/b", "op", 5.0, 6.0, "failed", "flash too small"),
        (None, "esp32", "img-1", "b" * 64, "s2", "/dev/b", "op", 7.0, 8.0, "failed", "no board"),
    ]
    with sqlite3.connect(path) as db:
        db.executescript(_V01_SCHEMA)
        db.executemany(f"INSERT INTO attempts ({_V01_COLUMNS}) VALUES ({', '.join('?' * 11)})", rows)
    db.close()


def test_migrates_the_old_sqlite_registry(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    _legacy_registry(path)
    with pytest.raises(OlderSchemaError) as e:
        Registry(path)
    assert "fleetpin registry migrate" in (e.value.hint or "")
    assert R.migrate(path) == ("0001", R.head_revision())
    assert R.migrate(path) == (R.head_revision(), R.head_revision())  # idempotent
    with Registry(path) as reg:
        assert [a.result for a in reg.attempts()] == ["failed", "provisioned", "failed", "failed"]  # kept as they were
        boards = {b.mac: b for b in reg.boards()}
        assert set(boards) == {"aa:00:00:00:00:01", "aa:00:00:00:00:02"}
        assert (boards["aa:00:00:00:00:01"].state, boards["aa:00:00:00:00:02"].state) == (CONFIRMED, FAILED)
        assert boards["aa:00:00:00:00:02"].error == "flash too small"
        assert _claim(reg, "s9", mac="aa:00:00:00:00:01").outcome == SKIP  # a re-run skips what 0.1 provisioned
        assert _claim(reg, "s9", mac="aa:00:00:00:00:02").outcome == NEW
    # fleetpin 0.1 still reads the migrated file (the attempts table is unchanged)
    assert [r[10] for r in _v01_attempts(path)] == ["failed", "provisioned", "failed", "failed"]


def test_migrates_a_late_01_file_with_its_bundles(tmp_path: Path) -> None:
    """Late 0.1 also kept the bundles boards got, per fleet (refuse_older_bundle): kept as they are."""
    path = tmp_path / "late.sqlite"
    _legacy_registry(path)
    with sqlite3.connect(path) as db:
        db.executescript("CREATE TABLE IF NOT EXISTS bundles (fleet TEXT NOT NULL, version INTEGER NOT NULL, "
                         "sha256 TEXT NOT NULL, first_seen REAL NOT NULL, PRIMARY KEY (fleet, sha256));")
        db.execute("INSERT INTO bundles VALUES ('acme', 7, 'c7', 5.0)")
    db.close()
    assert R.migrate(path) == ("0001", R.head_revision())
    with Registry(path) as reg:
        assert reg.newest_bundle("acme") == (7, "c7")
        with pytest.raises(R.OlderBundle, match="older than v7"):
            R.refuse_older_bundle(reg, "acme", 6, "image x")
        reg.note_bundle("acme", 8, "c8", 9.0)
        reg.note_bundle("acme", 8, "c8", 10.0)  # kept once
        assert reg.newest_bundle("acme") == (8, "c8")


def test_auto_migrate_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    _legacy_registry(path)
    with Registry(path, auto_migrate=True) as reg:
        assert reg.schema_revision() == R.head_revision()
    with pytest.raises(UsageError):
        Registry(tmp_path / "none.sqlite", create=False)


def test_a_database_created_meanwhile_is_not_taken_for_an_old_one(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stations starting together on an empty database: one creates the schema (committing its
    tables and revision at once) exactly while another looks at what is there. The other must
    see a current database, never 'tables but no revision', which is what fleetpin 0.1 left."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy.engine.reflection import Inspector

    armed = [True]

    def meanwhile(real):  # type: ignore[no-untyped-def]
        def look(*args, **kw):  # type: ignore[no-untyped-def]
            got = real(*args, **kw)
            if armed[0]:  # right after this station's first look, another one creates everything
                armed[0] = False
                R.migrate(url)
            return got
        return look

    monkeypatch.setattr(Inspector, "has_table", meanwhile(Inspector.has_table))
    monkeypatch.setattr(MigrationContext, "get_current_revision", meanwhile(MigrationContext.get_current_revision))
    if url.startswith("sqlite"):
        Path(url.removeprefix("sqlite:///")).touch()  # migrate() creates no missing file
    with Registry(url) as reg:
        assert not armed[0] and reg.schema_revision() == R.head_revision()


def test_stations_opening_a_new_sqlite_file_at_once_all_get_in(tmp_path: Path) -> None:
    # A new file's first connections each switch it to WAL, which needs the file to itself:
    # SQLite refuses the loser of that race at once ('database is locked', no busy wait), and a
    # station then failed to open the registry, saying it had waited 60 s. 4 at once, 10 times
    # (the old code failed about half of the rounds).
    import threading

    for n in range(10):
        url = f"sqlite:///{tmp_path / f'new-{n}.sqlite'}"
        barrier = threading.Barrier(4)
        errors: list[str] = []

        def open_it(url: str = url, barrier: threading.Barrier = barrier, errors: list[str] = errors) -> None:
            barrier.wait()
            try:
                Registry(url).close()
            except FleetpinError as e:
                errors.append(str(e))

        threads = [threading.Thread(target=open_it) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == [], errors
        with Registry(url) as reg:
            assert reg.schema_revision() == R.head_revision()


def test_refuses_a_newer_schema(url: str) -> None:
    Registry(url).close()
    engine = R.make_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0099_from_the_future'"))
    engine.dispose()
    with pytest.raises(NewerSchemaError) as e:
        Registry(url)
    assert "0099_from_the_future" in str(e.value) and "newer than this fleetpin" in str(e.value)
    assert e.value.hint and "upgrade fleetpin" in e.value.hint
    with pytest.raises(NewerSchemaError):
        R.migrate(url)
    assert isinstance(e.value, FleetpinError) and e.value.exit_code == 1


# ---- real concurrency: 8+ station processes, some killed mid-write ----------------------------


def _run_stations(url: str, flash: Path, macs: list[str], stations: int = 8, killed: tuple[int, ...] = (0, 3)) -> None:
    flash.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "host"), str(REPO / "device"), os.environ.get("PYTHONPATH", "")])}
    procs: dict[int, subprocess.Popen[str]] = {}

    def start(i: int) -> None:
        # every MAC is offered to three stations (overlapping sets), so two killed stations leave
        # each board at least one live station
        mine = [m for k, m in enumerate(macs) if (k % stations) in (i, (i + 1) % stations, (i + 2) % stations)]
        args = [sys.executable, str(STATION), url, str(flash), f"station-{i}", ",".join(mine), "--lease", "2",
                "--fail-every", "17", "--work", "0.002"]
        if i in killed:
            args += ["--hang-after", "5"]
        procs[i] = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    # The stations to be killed start first and hang at their 6th write: started together with
    # the others, a slow start could find all their boards done and never hang.
    for i in killed:
        start(i)
    for i in killed:
        line = procs[i].stdout.readline  # type: ignore[union-attr]
        while (got := line()) and got.strip() != "hanging":
            pass
        assert got.strip() == "hanging", procs[i].stderr.read()  # type: ignore[union-attr]
    for i in range(stations):
        if i not in killed:
            start(i)
    for i in killed:  # SIGKILL each hung station, holding a claim, its flash half-written, the others running
        procs[i].send_signal(signal.SIGKILL)
    results = []
    for i, p in sorted(procs.items()):
        out, err = p.communicate(timeout=180)
        assert "database is locked" not in err
        if i in killed:
            assert p.returncode == -signal.SIGKILL
        else:
            assert p.returncode == 0, f"station-{i} exited {p.returncode}: {err[-2000:]}"
            results.append(json.loads(out.strip().splitlines()[-1]))
    with Registry(url) as reg:
        rows = reg.boards()
        assert sorted(b.mac for b in rows) == sorted(macs)  # exactly one row per board, none lost
        for b in rows:
            assert b.state == CONFIRMED, b
            assert (flash / b.mac).read_bytes() == b.token.encode(), b  # the flash holds the confirmed claim's write
        assert sum(b.takeovers for b in rows) >= len(killed)  # the killed stations' boards were taken over
        engine = R.make_engine(url)
        with engine.connect() as conn:
            assert conn.scalar(sa.text("SELECT count(*) FROM boards")) == len(macs)
        engine.dispose()
        assert sum(r["failed"] for r in results) > 0 and sum(r["busy"] + r["skipped"] for r in results) > 0


@pytest.mark.parametrize("stations", [8])
def test_concurrent_stations_with_kills(url: str, tmp_path: Path, stations: int) -> None:
    macs = [f"24:0a:c4:00:{k // 256:02x}:{k % 256:02x}" for k in range(240)]
    _run_stations(url, tmp_path / "flash", macs, stations)
