"""The registry: one database for the production line and the fleet, on SQLite (one station, or
stations sharing a file on one machine) or PostgreSQL (stations on several machines), with one
code path for both (SQLAlchemy Core; schema migrations by Alembic, shipped in this package).

What it holds:
  - `attempts`: every provisioning attempt, whatever its outcome (the audit log; fleetpin 0.1's
    table, unchanged);
  - `boards`: one row per board, keyed by base MAC: the claim a station takes before writing it,
    claimed -> written -> confirmed, or failed with the reason. Taking a claim is one short
    transaction that locks the board's row (PostgreSQL: INSERT .. ON CONFLICT DO NOTHING, then
    SELECT .. FOR UPDATE; SQLite: BEGIN IMMEDIATE), so two stations that get the same board at
    once cannot both be told to write it. A station renews its claim while it works; each claim
    has a token, and every later step names it, so a station whose claim was taken over (its
    lease ran out: it was killed, hung, or cut off) cannot move the board's state any more. A
    retry by the same station, for the same image, resumes its claim (same token). A board confirmed with the same image is skipped, whichever station
    confirmed it.
  - `bundles`: per fleet, the bundles boards were provisioned with (version, SHA-256, first
    seen), so that an image whose bundle is older than the newest one seen is refused
    (refuse_older_bundle): a board re-imaged with an old bundle would accept every bundle since,
    retired ones included, from anyone with a cable;
  - `devices`, `reports`, `lockouts`: the fleet's side (fleetpin.field.fleet reads and writes
    them): devices by id (and base MAC, which joins them to `boards`), their pin-failure reports
    deduplicated, and what a preflight or a drill found would lock devices out.

URLs: `sqlite:///relative/path`, `sqlite:////absolute/path`, a bare path (SQLite), or
`postgresql://user@host:port/db` (driven by psycopg 3: `pip install 'fleetpin[postgres]'`).

Schema versions: a database made by fleetpin 0.1 (the `attempts` table alone) or by an older
fleetpin is brought up to date by `migrate(url)` (`fleetpin registry migrate`); opening it
otherwise refuses with that hint. A database whose revision this code does not know (made by a
newer fleetpin) is refused by every operation, before anything is read or written.

Times are POSIX seconds (float) from the station's clock: stations sharing a registry must keep
their clocks within a small fraction of the claim lease (NTP).
"""

from __future__ import annotations

import contextlib
import csv
import io
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.url import URL, make_url

from fleetpin.errors import FleetpinError, UsageError
from fleetpin.line.registry_url import DEFAULT_URL, ENV_VAR, URL_HELP, resolve_url  # noqa: F401  (re-exported)
from fleetpin.times import iso8601

BUSY_TIMEOUT_S = 60.0  # SQLite: how long a writer waits for another station's transaction
DEFAULT_LEASE_S = 120.0  # a claim not renewed for this long may be taken over (stations renew every third of it)
_PG_MIGRATE_LOCK = 0x666C7470  # pg_advisory_xact_lock key held while migrating ("fltp")
_MIGRATIONS = Path(__file__).resolve().parent / "migrations"

# board states
CLAIMED, WRITTEN, CONFIRMED, FAILED = "claimed", "written", "confirmed", "failed"
STATES = (CLAIMED, WRITTEN, CONFIRMED, FAILED)
# claim outcomes: the first three mean "write it", the last two "do not"
NEW, RESUMED, TAKEN_OVER, SKIP, BUSY = "claimed", "resumed", "taken-over", "already-confirmed", "busy"
RESULTS = ("provisioned", "already-provisioned", "failed")  # attempts.result


class NewerSchemaError(FleetpinError):
    """The database was migrated by a newer fleetpin than this one."""


class OlderSchemaError(FleetpinError):
    """The database needs `fleetpin registry migrate` before this fleetpin can use it."""


class OlderBundle(FleetpinError):
    """An image's bundle is older than the newest the registry has seen for its fleet."""


class ClaimLost(FleetpinError):
    """The board's claim is no longer this station's (taken over after its lease ran out, or
    reclaimed): the station must not go on writing or recording the board."""


# ---- schema (head revision; the migrations in migrations/versions are the history) ---------

_BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
metadata = sa.MetaData()
attempts_t = sa.Table(
    "attempts", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("mac", sa.Text), sa.Column("board", sa.Text, nullable=False), sa.Column("image_id", sa.Text, nullable=False),
    sa.Column("bundle_sha256", sa.Text, nullable=False), sa.Column("station", sa.Text, nullable=False),
    sa.Column("port", sa.Text, nullable=False), sa.Column("operator", sa.Text, nullable=False),
    sa.Column("started", sa.Float, nullable=False), sa.Column("ended", sa.Float, nullable=False),
    sa.Column("result", sa.Text, nullable=False), sa.Column("error", sa.Text),
)
boards_t = sa.Table(
    "boards", metadata,
    sa.Column("mac", sa.Text, primary_key=True), sa.Column("state", sa.Text, nullable=False),
    sa.Column("board", sa.Text, nullable=False), sa.Column("image_id", sa.Text, nullable=False),
    sa.Column("bundle_sha256", sa.Text, nullable=False), sa.Column("station", sa.Text, nullable=False),
    sa.Column("port", sa.Text, nullable=False), sa.Column("operator", sa.Text, nullable=False),
    sa.Column("token", sa.Text, nullable=False), sa.Column("lease_until", sa.Float, nullable=False),
    sa.Column("claimed_at", sa.Float, nullable=False), sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("error", sa.Text), sa.Column("takeovers", sa.Integer, nullable=False, server_default="0"),
)
bundles_t = sa.Table(
    "bundles", metadata,
    sa.Column("fleet", sa.Text, primary_key=True), sa.Column("sha256", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False), sa.Column("first_seen", sa.Float, nullable=False),
)
devices_t = sa.Table(
    "devices", metadata,
    sa.Column("device_id", sa.Text, primary_key=True), sa.Column("mac", sa.Text), sa.Column("fleet", sa.Text),
    sa.Column("bundle_version", sa.Integer), sa.Column("bundle_sha256", sa.Text),
    sa.Column("first_seen", sa.Float, nullable=False), sa.Column("last_seen", sa.Float, nullable=False),
    sa.Column("reports_total", sa.Integer), sa.Column("reports_dropped", sa.Integer),
)
reports_t = sa.Table(
    "reports", metadata,
    sa.Column("id", _BIGID, primary_key=True, autoincrement=True),
    sa.Column("device_id", sa.Text, nullable=False), sa.Column("report_key", sa.Text, nullable=False),
    sa.Column("first_seen", sa.Float, nullable=False), sa.Column("last_seen", sa.Float, nullable=False),
    sa.Column("count", sa.Integer, nullable=False), sa.Column("hostname", sa.Text), sa.Column("port", sa.Integer),
    sa.Column("noted_hostname", sa.Text), sa.Column("enforce", sa.Boolean), sa.Column("allowed", sa.Boolean),
    sa.Column("validation_result", sa.Text), sa.Column("bundle_version", sa.Integer),
    sa.Column("body", sa.Text, nullable=False), sa.Column("stored_at", sa.Float, nullable=False),
    sa.UniqueConstraint("device_id", "report_key", "first_seen", name="reports_dedup"),
)
mismatch_counts_t = sa.Table(  # per host and mode, how many devices reported it: kept at ingest
    "mismatch_counts", metadata,
    sa.Column("hostname", sa.Text, primary_key=True), sa.Column("mode", sa.Text, primary_key=True),
    sa.Column("devices", sa.Integer, nullable=False),
)
lockouts_t = sa.Table(
    "lockouts", metadata,
    sa.Column("id", _BIGID, primary_key=True, autoincrement=True),
    sa.Column("source", sa.Text, nullable=False),  # "preflight" or "drill"
    sa.Column("subject", sa.Text, nullable=False),  # preflight: the bundle's SHA-256; drill: the scenario
    sa.Column("bundle_version", sa.Integer), sa.Column("host", sa.Text, nullable=False),
    sa.Column("port", sa.Integer, nullable=False), sa.Column("reason", sa.Text),
    sa.Column("devices", sa.Integer),  # drill: devices it left locked out; preflight: NULL (counted in the fleet)
    sa.Column("found_at", sa.Float, nullable=False),
    sa.UniqueConstraint("source", "subject", "host", "port", name="lockouts_dedup"),
)


# ---- records --------------------------------------------------------------------------------


@dataclass
class Attempt:
    """One provisioning attempt (fleetpin 0.1's record, unchanged)."""

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


_ATTEMPT_COLUMNS = [f.name for f in fields(Attempt) if f.name != "id"]


@dataclass(frozen=True)
class Board:
    """A board's row: where its claim stands."""

    mac: str
    state: str  # one of STATES
    board: str
    image_id: str
    bundle_sha256: str
    station: str
    port: str
    operator: str
    token: str
    lease_until: float
    claimed_at: float
    updated_at: float
    error: str | None
    takeovers: int


@dataclass(frozen=True)
class Claim:
    """The answer to `claim()`. `may_write`: this station holds the board (`token`) and writes
    it; otherwise `outcome` says why not (SKIP: confirmed with this image already; BUSY: another
    station's live claim, `holder`)."""

    mac: str
    outcome: str
    token: str | None
    state: str  # the board's state after the call
    station: str  # the station that asked
    holder: str  # the station that holds the board now
    previous: str | None = None  # TAKEN_OVER: the station whose lease ran out

    @property
    def may_write(self) -> bool:
        return self.outcome in (NEW, RESUMED, TAKEN_OVER)


# ---- URLs and engines -----------------------------------------------------------------------


def engine_url(url: str | Path | None = None) -> URL:
    """The SQLAlchemy URL: a bare path is a SQLite file; postgresql:// and postgres:// use
    psycopg 3. Other schemes are refused."""
    text = resolve_url(url)
    if "://" not in text:
        text = f"sqlite:///{text}"
    try:
        u = make_url(text)
    except sa.exc.ArgumentError as e:
        raise UsageError(f"not a registry URL: {text!r} ({e})", hint="use sqlite:///PATH or postgresql://USER@HOST/DB") from None
    backend, _, driver = u.drivername.partition("+")
    if backend in ("postgresql", "postgres"):
        if driver not in ("", "psycopg"):
            raise UsageError(f"registry driver {driver!r} is not supported", hint="use postgresql://... (psycopg 3)")
        return u.set(drivername="postgresql+psycopg")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        if not u.database or u.database == ":memory:":
            raise UsageError("the SQLite registry needs a file", hint="use sqlite:///PATH")
        return u.set(drivername="sqlite+pysqlite")
    raise UsageError(f"unsupported registry URL scheme {u.drivername!r}", hint="use sqlite:///PATH or postgresql://USER@HOST/DB")


def display_url(url: str | Path | None) -> str:
    """The URL as the user gave it, for messages: a plain path as sqlite:///PATH, no password."""
    text = resolve_url(url)
    if "://" not in text:
        return f"sqlite:///{text}"
    try:
        return make_url(text).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return text


def make_engine(url: str | Path | None = None) -> Engine:
    u = engine_url(url)
    if u.get_backend_name() == "postgresql":
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise UsageError("a PostgreSQL registry needs psycopg 3", hint="pip install 'fleetpin[postgres]'") from None
        return sa.create_engine(u, pool_size=2, max_overflow=4, connect_args={"connect_timeout": 10})
    engine = sa.create_engine(u, connect_args={"timeout": BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _sqlite_connect(dbapi_conn: Any, _rec: Any) -> None:
        # Take transaction control from the sqlite3 module (it would BEGIN DEFERRED on the first
        # write, which in WAL mode fails at once with 'database is locked' when another writer
        # committed since this transaction's first read): BEGIN is emitted below, IMMEDIATE for
        # every transaction that writes.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        _use_wal(cur)
        cur.execute("PRAGMA synchronous = FULL")  # a commit survives a power cut: this is the line's record
        cur.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("fleetpin_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _use_wal(cur: Any) -> None:
    """WAL mode (readers never block the writer, nor it them), which a new file gets from the
    first connection that opens it. Switching needs the file to itself, and SQLite refuses the
    loser of two connections switching at once with 'database is locked' at once, without a
    busy wait: stations starting together on a new registry. So try again, within the busy
    timeout, until one of them has switched it."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cur.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def upsert(conn: Connection, table: sa.Table) -> Any:
    """INSERT with ON CONFLICT support: the one statement both dialects spell the same way but
    SQLAlchemy builds per dialect."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


def greatest(a: Any, b: Any) -> Any:
    """The larger of two SQL values (GREATEST, which SQLite spells max(a, b))."""
    return sa.case((a > b, a), else_=b)


# ---- migrations -----------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _script() -> Any:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(_MIGRATIONS))


def head_revision() -> str:
    return str(_script().get_current_head())


def known_revisions() -> list[str]:
    return [s.revision for s in reversed(list(_script().walk_revisions()))]


def _state(conn: Connection) -> tuple[str | None, bool]:
    """(alembic revision, has any fleetpin table) of the database. The table is looked for
    first: a station migrating a fresh database commits both at once, so a reader that sees its
    table then sees its revision too (the other order could read "no revision" just before that
    commit and "a table" just after it, which is what a fleetpin 0.1 file looks like)."""
    from alembic.runtime.migration import MigrationContext

    exists = sa.inspect(conn).has_table("attempts")
    rev = MigrationContext.configure(conn).get_current_revision()
    return rev, exists or rev is not None


def _newer(url: str | Path | None, rev: str) -> NewerSchemaError:
    return NewerSchemaError(
        f"the registry {display_url(url)} has schema revision {rev}, newer than this fleetpin understands "
        f"(it knows up to {head_revision()}); nothing was read or written",
        hint="upgrade fleetpin on this machine (every station sharing a registry needs the same or a newer version)",
    )


def _write_tx(engine: Engine) -> contextlib.AbstractContextManager[Connection]:
    return _tx(engine, write=True)


@contextlib.contextmanager
def _tx(engine: Engine, write: bool) -> Iterator[Connection]:
    with engine.connect() as conn:
        if write:
            conn.execution_options(fleetpin_begin="IMMEDIATE")
        with conn.begin():
            yield conn


def migrate(url: str | Path | None = None, *, engine: Engine | None = None) -> tuple[str | None, str]:
    """Brings the database up to the newest schema: (revision before, revision now). A fleetpin
    0.1 SQLite file (attempts only) is stamped 0001 first. Safe to run from several stations at
    once: one migrates while the others wait (SQLite's write lock; PostgreSQL's advisory lock)."""
    from alembic import command
    from alembic.config import Config

    own = engine is None
    if own:
        _refuse_missing_file(url)
    eng = engine or make_engine(url)
    try:
        with _write_tx(eng) as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATE_LOCK})
            before, exists = _state(conn)
            if before is not None and before not in known_revisions():
                raise _newer(url, before)
            cfg = Config()
            cfg.set_main_option("script_location", str(_MIGRATIONS))
            cfg.attributes["connection"] = conn
            if before is None and exists:
                command.stamp(cfg, "0001")  # fleetpin 0.1: its schema is revision 0001
                before = "0001"
            command.upgrade(cfg, "head")
        return before, head_revision()
    except sa.exc.SQLAlchemyError as e:
        raise _db_error(url, e) from None
    finally:
        if own:
            eng.dispose()


def missing_file(url: str | Path | None) -> bool:
    """Whether the registry is a SQLite file that does not exist (yet)."""
    u = engine_url(url)
    return u.get_backend_name() == "sqlite" and not Path(str(u.database)).exists()


def _refuse_missing_file(url: str | Path | None) -> None:
    """A SQLite registry that does not exist is not created by reading or migrating it."""
    if missing_file(url):
        raise UsageError(f"no registry at {display_url(url)}", hint="pass --registry (or set $FLEETPIN_REGISTRY), or provision a board first")


def _db_error(url: str | Path | None, e: BaseException) -> FleetpinError:
    msg = str(getattr(e, "orig", None) or e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "database is locked" in msg:
        return FleetpinError(f"the registry {display_url(url)} stayed locked for over {BUSY_TIMEOUT_S:.0f} s: {msg}",
                             hint="another program holds a long transaction on it; stations sharing a file must be on one machine")
    return FleetpinError(f"registry {display_url(url)}: {msg}", hint="check --registry / $FLEETPIN_REGISTRY and that the database is reachable")


# ---- the registry ---------------------------------------------------------------------------


class Registry:
    """One registry database. `create=True` (the default) makes the schema in an empty database;
    an older schema raises OlderSchemaError unless `auto_migrate`; a newer one NewerSchemaError.
    Safe to share between threads (each call takes a pooled connection) and processes."""

    def __init__(self, url: str | Path | None = None, *, create: bool = True, auto_migrate: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self.url = resolve_url(url)
        self.clock = clock
        if not create:
            _refuse_missing_file(self.url)
        self.engine = make_engine(self.url)
        try:
            self._check(create, auto_migrate)
        except BaseException:
            self.engine.dispose()
            raise

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, create: bool, auto_migrate: bool) -> None:
        try:
            with self.engine.connect() as conn:
                rev, exists = _state(conn)
        except sa.exc.SQLAlchemyError as e:
            raise UsageError(f"cannot open the registry {display_url(self.url)}: {_db_error(self.url, e)}",
                             hint="pass --registry (or set $FLEETPIN_REGISTRY) to a writable database") from None
        head = head_revision()
        if rev == head:
            return
        if rev is not None and rev not in known_revisions():
            raise _newer(self.url, rev)
        if not exists:
            if not create:
                raise UsageError(f"no registry at {display_url(self.url)}", hint="pass --registry, or provision a board first")
        elif not auto_migrate:
            raise OlderSchemaError(
                f"the registry {display_url(self.url)} has schema revision {rev or '0001 (fleetpin 0.1)'}, older than this "
                f"fleetpin's {head}", hint=f"run: fleetpin registry migrate --registry {display_url(self.url)}")
        migrate(self.url, engine=self.engine)

    @contextlib.contextmanager
    def transaction(self, write: bool = True) -> Iterator[Connection]:
        """One transaction on a pooled connection; `write` takes the write lock up front (SQLite)."""
        try:
            with _tx(self.engine, write) as conn:
                yield conn
        except sa.exc.OperationalError as e:
            raise _db_error(self.url, e) from None

    def schema_revision(self) -> str | None:
        with self.transaction(write=False) as conn:
            return _state(conn)[0]

    # ---- attempts (the audit log)

    def record(self, a: Attempt) -> int:
        if a.result not in RESULTS:
            raise ValueError(f"result must be one of {RESULTS}")
        with self.transaction() as conn:
            res = conn.execute(attempts_t.insert().values({c: getattr(a, c) for c in _ATTEMPT_COLUMNS}))
            return int(res.inserted_primary_key[0])  # type: ignore[index]

    def attempts(self, mac: str | None = None) -> list[Attempt]:
        q = sa.select(attempts_t).order_by(attempts_t.c.id)
        if mac is not None:
            q = q.where(attempts_t.c.mac == mac)
        with self.transaction(write=False) as conn:
            return [Attempt(**r._asdict()) for r in conn.execute(q)]

    def confirmed_macs(self, image_id: str) -> set[str]:
        """MACs of boards confirmed with this image (what a re-run recognises and skips)."""
        q = sa.select(boards_t.c.mac).where(boards_t.c.image_id == image_id, boards_t.c.state == CONFIRMED)
        with self.transaction(write=False) as conn:
            return set(conn.scalars(q))

    # ---- boards: claims

    def claim(self, mac: str, *, station: str, image_id: str, bundle_sha256: str, board: str = "", port: str = "",
              operator: str = "", lease: float = DEFAULT_LEASE_S, force: bool = False) -> Claim:
        """Claims the board for `station` (unique on the line: host name and slot). See the
        module's docstring for the rules; `force` reclaims a board confirmed with this image."""
        mac = mac.lower()
        now = self.clock()
        values = dict(mac=mac, state=CLAIMED, board=board, image_id=image_id, bundle_sha256=bundle_sha256, station=station,
                      port=port, operator=operator, lease_until=now + lease, claimed_at=now, updated_at=now, error=None)
        with self.transaction() as conn:
            token = uuid.uuid4().hex
            ins = upsert(conn, boards_t).values(token=token, takeovers=0, **values).on_conflict_do_nothing(index_elements=["mac"])
            if conn.execute(ins.returning(boards_t.c.mac)).first() is not None:  # (rowcount is not portable here)
                return Claim(mac, NEW, token, CLAIMED, station, station)
            row = conn.execute(sa.select(boards_t).where(boards_t.c.mac == mac).with_for_update()).one()
            live = row.state in (CLAIMED, WRITTEN)
            if row.state == CONFIRMED and row.image_id == image_id and not force:
                return Claim(mac, SKIP, None, CONFIRMED, station, row.station)
            if live and row.station == station and row.image_id == image_id:
                conn.execute(boards_t.update().where(boards_t.c.mac == mac).values(lease_until=now + lease, updated_at=now))
                return Claim(mac, RESUMED, row.token, row.state, station, station)
            if live and row.station != station and row.lease_until > now:
                return Claim(mac, BUSY, None, row.state, station, row.station)
            outcome = TAKEN_OVER if live and row.station != station else NEW
            conn.execute(boards_t.update().where(boards_t.c.mac == mac).values(
                token=token, takeovers=row.takeovers + (outcome == TAKEN_OVER), **values))
            return Claim(mac, outcome, token, CLAIMED, station, station, row.station if outcome == TAKEN_OVER else None)

    def _advance(self, claim: Claim | tuple[str, str], to: str, sources: Sequence[str], *, lease: float | None = None,
                 error: str | None = None) -> Board:
        mac, token = (claim.mac, claim.token) if isinstance(claim, Claim) else claim
        if token is None:
            raise ValueError(f"claim outcome {claim.outcome if isinstance(claim, Claim) else '?'} holds no board")  # a caller bug
        now = self.clock()
        vals: dict[str, Any] = {"state": to, "updated_at": now}
        if lease is not None:
            vals["lease_until"] = now + lease
        if to == FAILED:
            vals["error"] = error or "failed"
        b = boards_t.c
        with self.transaction() as conn:
            # one statement when the step applies (the row lock is the UPDATE's); the reasons it
            # does not are read only then
            moved = conn.execute(boards_t.update().where(b.mac == mac, b.token == token, b.state.in_(sources)).values(**vals)
                                 .returning(*boards_t.c)).one_or_none()
            if moved is not None:
                return Board(**moved._asdict())
            row = conn.execute(sa.select(boards_t).where(b.mac == mac)).one_or_none()
            if row is None or row.token != token:
                who = "nobody" if row is None else f"station {row.station} ({row.state})"
                raise ClaimLost(f"board {mac}: this station's claim is gone; the board is now held by {who}",
                                hint="do not record this board from here; its current holder finishes it")
            if row.state == to:  # a retry of the same step: nothing changes
                return Board(**row._asdict())
            raise ClaimLost(f"board {mac} is {row.state}: it cannot become {to}", hint="claim it again to start over")


    def renew(self, claim: Claim, lease: float = DEFAULT_LEASE_S) -> None:
        """Extends a live claim (call it during long writes); ClaimLost if it was taken over."""
        now = self.clock()
        with self.transaction() as conn:
            res = conn.execute(boards_t.update().where(boards_t.c.mac == claim.mac, boards_t.c.token == claim.token,
                                                       boards_t.c.state.in_((CLAIMED, WRITTEN)))
                               .values(lease_until=now + lease, updated_at=now))
            if res.rowcount != 1:
                raise ClaimLost(f"board {claim.mac}: this station's claim is gone", hint="stop writing this board")

    def written(self, claim: Claim, lease: float = DEFAULT_LEASE_S) -> Board:
        """The image is on the board's flash (esptool verified it)."""
        return self._advance(claim, WRITTEN, (CLAIMED, WRITTEN), lease=lease)

    def confirmed(self, claim: Claim) -> Board:
        """The agent booted with the expected bundle: done."""
        return self._advance(claim, CONFIRMED, (CLAIMED, WRITTEN))

    def failed(self, claim: Claim, reason: str) -> Board:
        """The attempt failed for `reason`; the board may be claimed again by any station."""
        return self._advance(claim, FAILED, (CLAIMED, WRITTEN), error=reason)

    def board(self, mac: str) -> Board | None:
        with self.transaction(write=False) as conn:
            r = conn.execute(sa.select(boards_t).where(boards_t.c.mac == mac.lower())).one_or_none()
        return None if r is None else Board(**r._asdict())

    def note_bundle(self, fleet: str, version: int, sha256: str, when: float) -> None:
        """Records that boards of `fleet` got this bundle (kept once, with when it was first seen)."""
        with self.transaction() as conn:
            conn.execute(upsert(conn, bundles_t).values(fleet=fleet, version=version, sha256=sha256, first_seen=when)
                         .on_conflict_do_nothing(index_elements=["fleet", "sha256"]))

    def newest_bundle(self, fleet: str) -> tuple[int, str] | None:
        """(version, sha256) of the newest bundle boards of `fleet` were provisioned with."""
        q = (sa.select(bundles_t.c.version, bundles_t.c.sha256).where(bundles_t.c.fleet == fleet)
             .order_by(bundles_t.c.version.desc(), bundles_t.c.first_seen).limit(1))
        with self.transaction(write=False) as conn:
            row = conn.execute(q).first()
        return None if row is None else (int(row[0]), str(row[1]))

    def boards(self, state: str | None = None) -> list[Board]:
        q = sa.select(boards_t).order_by(boards_t.c.mac)
        if state is not None:
            q = q.where(boards_t.c.state == state)
        with self.transaction(write=False) as conn:
            return [Board(**r._asdict()) for r in conn.execute(q)]


def refuse_older_bundle(registry: Registry, fleet: str, version: int, where: str) -> None:
    """OlderBundle if the registry has seen a newer bundle for `fleet` than `version`."""
    newest = registry.newest_bundle(fleet)
    if newest is not None and version < newest[0]:
        raise OlderBundle(
            f"{where}: bundle v{version} of fleet {fleet!r} is older than v{newest[0]}, which boards of that fleet "
            f"were provisioned with (registry {display_url(registry.url)}): a board imaged with it would accept every "
            f"bundle from v{version + 1} on, retired ones included",
            hint=f"build the image with bundle v{newest[0]} or newer; to go back on purpose, pass --allow-older-bundle",
        )


def export_obj(a: Attempt) -> dict[str, object]:
    """An attempt as exports show it: every field, times in ISO 8601 (UTC), plus its duration."""
    return {**asdict(a), "started": iso8601(a.started), "ended": iso8601(a.ended),
            "seconds": round(a.ended - a.started, 3)}


def to_csv(attempts: list[Attempt]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["id", *_ATTEMPT_COLUMNS, "seconds"])
    w.writeheader()
    for a in attempts:
        w.writerow(export_obj(a))
    return buf.getvalue()
