"""The device registry: every attempt kept, concurrent writers, list and export."""

from __future__ import annotations

import csv
import io
import json
import re
import threading
from pathlib import Path

import pytest

from fleetpin import cli
from fleetpin.line.registry import Attempt, Registry


def attempt(i: int, result: str = "provisioned", error: str | None = None) -> Attempt:
    return Attempt(f"24:0a:c4:00:00:{i:02x}", "esp32", "i" * 64, "b" * 64, f"slot{i}", f"/dev/ttyUSB{i}", "ana", 1000.0 + i, 1010.0 + i, result, error)


def test_attempts_from_many_threads_are_all_kept(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.sqlite")
    threads = [threading.Thread(target=reg.record, args=(attempt(i),)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = Registry(tmp_path / "r.sqlite").attempts()  # reopened: it is on disk
    assert sorted(a.station for a in rows) == sorted(f"slot{i}" for i in range(16))
    assert reg.attempts(mac="24:0a:c4:00:00:03")[0].port == "/dev/ttyUSB3"


def test_unknown_result_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Registry(tmp_path / "r.sqlite").record(attempt(1, result="maybe"))


def test_list_and_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.sqlite"
    reg = Registry(path)
    reg.record(attempt(1))
    reg.record(attempt(2, "failed", "wrong chip: the board is an ESP32-C3"))
    assert cli.main(["registry", "export", "--registry", str(path), "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["station"], r["result"], r["error"]) for r in rows] == [("slot1", "provisioned", ""), ("slot2", "failed", "wrong chip: the board is an ESP32-C3")]
    assert set(rows[0]) == {"id", "mac", "board", "image_id", "bundle_sha256", "station", "port", "operator", "started", "ended", "result", "error", "seconds"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", rows[0]["started"])  # ISO 8601, UTC
    assert cli.main(["registry", "export", "--registry", str(path), "--json", "-o", str(tmp_path / "x.json")]) == 0
    assert [r["mac"] for r in json.loads((tmp_path / "x.json").read_text())] == ["24:0a:c4:00:00:01", "24:0a:c4:00:00:02"]
    assert cli.main(["registry", "list", "--registry", str(path), "--mac", "24:0A:C4:00:00:02", "--json"]) == 0
    assert [r["station"] for r in json.loads(capsys.readouterr().out)] == ["slot2"]
    assert cli.main(["registry", "list", "--registry", str(path)]) == 0
    assert "slot1" in capsys.readouterr().out
    assert cli.main(["registry", "list", "--registry", str(tmp_path / "none.sqlite")]) == 2


def _v01_file(path: Path) -> None:
    """A registry as fleetpin 0.1 wrote it (its schema, frozen), with one provisioned board."""
    import sqlite3

    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE attempts (id INTEGER PRIMARY KEY AUTOINCREMENT, mac TEXT, board TEXT NOT NULL, image_id TEXT NOT NULL,"
            " bundle_sha256 TEXT NOT NULL, station TEXT NOT NULL, port TEXT NOT NULL, operator TEXT NOT NULL,"
            " started REAL NOT NULL, ended REAL NOT NULL, result TEXT NOT NULL, error TEXT);"
            "CREATE INDEX attempts_mac ON attempts (mac);")
        db.execute("INSERT INTO attempts (mac, board, image_id, bundle_sha256, station, port, operator, started, ended, result)"
                   " VALUES ('24:0a:c4:00:00:01', 'esp32', 'i', 'b', 'slot1', '/dev/ttyUSB0', 'ana', 1.0, 2.0, 'provisioned')")
    db.close()


def test_every_command_refuses_an_older_schema_until_migrated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "old.sqlite"
    _v01_file(path)
    for argv in (["registry", "list"], ["registry", "boards"], ["fleet", "status"], ["fleet", "import", str(path)]):
        assert cli.main([*argv, "--registry", str(path)]) == 1, argv
        err = capsys.readouterr().err
        assert "older than this fleetpin's" in err and "next: run: fleetpin registry migrate --registry" in err, err
    assert cli.main(["registry", "migrate", "--registry", str(path)]) == 0
    assert "schema 0001 -> 0002" in capsys.readouterr().out
    assert cli.main(["registry", "migrate", "--registry", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) | {"registry": None} == {"registry": None, "before": "0002", "after": "0002"}
    assert cli.main(["registry", "boards", "--registry", str(path), "--json"]) == 0
    [board] = json.loads(capsys.readouterr().out)
    assert (board["mac"], board["state"], board["station"]) == ("24:0a:c4:00:00:01", "confirmed", "slot1")  # what 0.1 provisioned
    assert "token" not in board


def test_every_command_refuses_a_newer_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import sqlalchemy as sa

    path = tmp_path / "new.sqlite"
    Registry(path).close()
    with sa.create_engine(f"sqlite:///{path}").begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0099'"))
    for argv in (["registry", "list"], ["registry", "migrate"], ["fleet", "status"], ["fleet", "import", str(path)],
                 ["provision", "--board", "esp32", "--image", str(tmp_path), "--port", "/dev/null"]):  # (no image there)
        assert cli.main([*argv, "--registry", str(path)]) == 1, argv
        err = capsys.readouterr().err
        assert "has schema revision 0099, newer than this fleetpin understands" in err and "nothing was read or written" in err, err
        assert "next: upgrade fleetpin on this machine" in err
