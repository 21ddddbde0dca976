"""The device registry: every provisioning attempt, one SQLite row, whatever its outcome. The
line's record of which board (by base MAC) got which image and bundle, where, from whom, when.
Safe to write from several station threads: each call opens its own connection."""

from __future__ import annotations

import csv
import io
import sqlite3
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from fleetpin.errors import UsageError
from fleetpin.times import iso8601

DEFAULT_PATH = Path("fleetpin-registry.sqlite")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    mac TEXT, board TEXT NOT NULL, image_id TEXT NOT NULL, bundle_sha256 TEXT NOT NULL,
    station TEXT NOT NULL, port TEXT NOT NULL, operator TEXT NOT NULL,
    started REAL NOT NULL, ended REAL NOT NULL, result TEXT NOT NULL, error TEXT
);
CREATE INDEX IF NOT EXISTS attempts_mac ON attempts (mac);
"""
RESULTS = ("provisioned", "already-provisioned", "failed")


@dataclass
class Attempt:
    mac: str | None
    board: str
    image_id: str
    bundle_sha256: str
    station: str
    port: str
    operator: str
    started: float  # POSIX seconds
    ended: float
    result: str  # one of RESULTS
    error: str | None = None
    id: int | None = None


_COLUMNS = [f.name for f in fields(Attempt) if f.name != "id"]


class Registry:
    def __init__(self, path: Path = DEFAULT_PATH) -> None:
        self.path = path
        self._lock = threading.Lock()  # one writer at a time across station threads
        try:
            with self._connect() as db:
                db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise UsageError(f"cannot open the registry {path}: {e}", hint="pass --registry with a writable path") from None

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def record(self, a: Attempt) -> int:
        if a.result not in RESULTS:
            raise ValueError(f"result must be one of {RESULTS}")
        row = [getattr(a, c) for c in _COLUMNS]
        with self._lock, self._connect() as db:
            cur = db.execute(f"INSERT INTO attempts ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})", row)
            return int(cur.lastrowid or 0)

    def attempts(self, mac: str | None = None) -> list[Attempt]:
        sql = f"SELECT id, {', '.join(_COLUMNS)} FROM attempts"
        args: tuple[str, ...] = ()
        if mac is not None:
            sql += " WHERE mac = ?"
            args = (mac,)
        with self._connect() as db:
            rows = db.execute(sql + " ORDER BY id", args).fetchall()
        return [Attempt(**dict(zip(["id", *_COLUMNS], r))) for r in rows]


def export_obj(a: Attempt) -> dict[str, object]:
    """An attempt as exports show it: every field, times in ISO 8601 (UTC), plus its duration."""
    return {**asdict(a), "started": iso8601(a.started), "ended": iso8601(a.ended),
            "seconds": round(a.ended - a.started, 3)}


def to_csv(attempts: list[Attempt]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["id", *_COLUMNS, "seconds"])
    w.writeheader()
    for a in attempts:
        w.writerow(export_obj(a))
    return buf.getvalue()
