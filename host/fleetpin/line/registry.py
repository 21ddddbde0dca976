"""The device registry: every provisioning attempt, one SQLite row, whatever its outcome. The
line's record of which board (by base MAC) got which image and bundle, where, from whom, when.
Safe to write from several station threads: each call opens its own connection.

It also keeps, per fleet, the bundles boards were provisioned with (`bundles`: fleet, version,
SHA-256, first seen), so that an image whose bundle is older than the newest one seen is
refused (refuse_older_bundle): a board re-imaged with an old bundle would accept every bundle
since, retired ones included, from anyone with a cable."""

from __future__ import annotations

import csv
import io
import sqlite3
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from fleetpin.errors import FleetpinError, UsageError
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
CREATE TABLE IF NOT EXISTS bundles (
    fleet TEXT NOT NULL, version INTEGER NOT NULL, sha256 TEXT NOT NULL, first_seen REAL NOT NULL,
    PRIMARY KEY (fleet, sha256)
);
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

    def note_bundle(self, fleet: str, version: int, sha256: str, when: float) -> None:
        """Records that boards of `fleet` got this bundle (kept once, with when it was first seen)."""
        with self._lock, self._connect() as db:
            db.execute("INSERT OR IGNORE INTO bundles (fleet, version, sha256, first_seen) VALUES (?, ?, ?, ?)",
                       (fleet, version, sha256, when))

    def newest_bundle(self, fleet: str) -> tuple[int, str] | None:
        """(version, sha256) of the newest bundle boards of `fleet` were provisioned with."""
        with self._connect() as db:
            row = db.execute("SELECT version, sha256 FROM bundles WHERE fleet = ? ORDER BY version DESC, first_seen "
                             "LIMIT 1", (fleet,)).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))


class OlderBundle(FleetpinError):
    """An image's bundle is older than the newest the registry has seen for its fleet."""


def refuse_older_bundle(registry: Registry, fleet: str, version: int, where: str) -> None:
    """OlderBundle if the registry has seen a newer bundle for `fleet` than `version`."""
    newest = registry.newest_bundle(fleet)
    if newest is not None and version < newest[0]:
        raise OlderBundle(
            f"{where}: bundle v{version} of fleet {fleet!r} is older than v{newest[0]}, which boards of that fleet "
            f"were provisioned with (registry {registry.path}): a board imaged with it would accept every bundle "
            f"from v{version + 1} on, retired ones included",
            hint=f"build the image with bundle v{newest[0]} or newer; to go back on purpose, pass --allow-older-bundle",
        )


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
