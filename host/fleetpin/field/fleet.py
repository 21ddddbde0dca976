"""The fleet in the registry: what field technicians read from devices, and what a preflight or a
drill found, in the same database as the production line (fleetpin.line.registry), so that a
security engineer sees the whole fleet after a rotation.

    store_reports(reg, doc, identity=...)    one device's reports (`fleetpin device reports`)
    record_preflight(reg, sha256, ver, obj)  the servers a preflight says would lock devices out
    record_drill(reg, results)               the devices a drill left unreachable or blocked
    fleet_status(reg, not_seen_since=...)    what `fleetpin fleet status` shows

Devices are keyed by the id their agent reports (IDENTIFY's device_id) and carry its base MAC
(IDENTIFY's mac), which joins them to the boards the line provisioned. Reports are deduplicated
by (device, report key, first seen): reading the same reports twice counts them once, and the
new entry the agent starts for the same failure after a clear is a new row.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from fleetpin.errors import UsageError
from fleetpin.field.reports import report_time
from fleetpin.line.registry import (
    CONFIRMED,
    Registry,
    boards_t,
    devices_t,
    greatest,
    lockouts_t,
    mismatch_counts_t,
    reports_t,
    upsert,
)
from fleetpin.times import iso8601

PREFLIGHT, DRILL = "preflight", "drill"
LOCKED_OUT = ("UNREACHABLE", "blocked")  # drill outcomes counted as locked out


@dataclass(frozen=True)
class StoreResult:
    device_id: str
    added: int  # reports not stored before
    merged: int  # reports already stored (count and last seen brought up to date)


def _mac(value: Any) -> str | None:
    return value.strip().lower() if isinstance(value, str) and value.strip() else None


def _report_row(device_id: str, r: Mapping[str, Any], seen: float, now: float) -> dict[str, Any]:
    first = report_time(r.get("date-time"))
    last = report_time(r.get("last-seen")) or first
    key = r.get("key")
    if not isinstance(key, str) or not key:  # a report without the ring's key: key it as the agent does
        from pinagent.reports import report_key

        key = report_key(dict(r))
    port, version = r.get("port"), r.get("bundle-version")
    enforce, allowed = r.get("enforce-pinning"), r.get("allowed")
    count = r.get("count")
    return dict(device_id=device_id, report_key=key, first_seen=first if first is not None else seen,
                last_seen=last if last is not None else seen, count=count if isinstance(count, int) and count > 0 else 1,
                hostname=str(r.get("hostname") or ""), port=port if isinstance(port, int) else None, noted_hostname=r.get("noted-hostname"),
                enforce=enforce if isinstance(enforce, bool) else None, allowed=allowed if isinstance(allowed, bool) else None,
                validation_result=r.get("validation-result"), bundle_version=version if isinstance(version, int) else None,
                body=json.dumps(dict(r), sort_keys=True, separators=(",", ":")), stored_at=now)


# ---- writing -------------------------------------------------------------------------------


def store_reports(reg: Registry, doc: Mapping[str, Any] | Sequence[Mapping[str, Any]], *, identity: Mapping[str, Any] | None = None,
                  device_id: str | None = None, seen_at: float | None = None) -> StoreResult:
    """Records one device's reports: `doc` is a parse_report_file() result, what `fleetpin device
    reports --json` prints, or a bare list of reports. The device is `identity` (the agent's
    IDENTIFY answer: device_id, mac, fleet, bundle_version, bundle_sha256; else the document's
    "device"), else `device_id`, else the reports' "device-id". `seen_at` (default now): when
    the device was read."""
    counters: Mapping[str, Any] = {}
    if isinstance(doc, Mapping):
        counters = doc.get("counters") or {}
        reports = [r for r in doc.get("reports") or () if isinstance(r, Mapping)]
        identity = identity or (doc.get("device") if isinstance(doc.get("device"), Mapping) else None)
    else:
        reports = [r for r in doc if isinstance(r, Mapping)]
    ident = dict(identity or {})
    ids = {str(r["device-id"]) for r in reports if r.get("device-id") is not None}
    dev = ident.get("device_id") or device_id or (next(iter(ids)) if len(ids) == 1 else None)
    if not dev:
        raise UsageError("these reports do not say which device they are from" if len(ids) <= 1 else
                         f"these reports come from {len(ids)} devices: store one device's at a time",
                         hint="pass --device ID, or read the reports from the device itself (fleetpin device reports --store)")
    dev = str(dev)
    now = reg.clock()
    seen = float(seen_at if seen_at is not None else now)
    rows = [_report_row(dev, r, seen, now) for r in reports]
    latest = max(rows, key=lambda r: r["last_seen"], default=None)
    version = ident.get("bundle_version", latest["bundle_version"] if latest else None)
    dvals = dict(device_id=dev, mac=_mac(ident.get("mac")), fleet=ident.get("fleet"),
                 bundle_version=version if isinstance(version, int) else None, bundle_sha256=ident.get("bundle_sha256"),
                 first_seen=seen, last_seen=seen, reports_total=counters.get("total"), reports_dropped=counters.get("dropped"))
    with reg.transaction() as conn:
        ins = upsert(conn, devices_t).values(**dvals)
        newer = ins.excluded.last_seen >= devices_t.c.last_seen  # an older file never overwrites a newer reading
        conn.execute(ins.on_conflict_do_update(index_elements=["device_id"], set_={
            "last_seen": greatest(ins.excluded.last_seen, devices_t.c.last_seen),
            "first_seen": sa.case((ins.excluded.first_seen < devices_t.c.first_seen, ins.excluded.first_seen),
                                  else_=devices_t.c.first_seen),
            **{c: sa.case((sa.and_(newer, ins.excluded[c].is_not(None)), ins.excluded[c]), else_=devices_t.c[c])
               for c in ("mac", "fleet", "bundle_version", "bundle_sha256", "reports_total", "reports_dropped")},
        }))
        if not rows:
            return StoreResult(dev, 0, 0)
        # (the upsert above locks the device's row: two readings of one device are stored in turn)
        r = reports_t.c
        known = {(k, f) for k, f in conn.execute(sa.select(r.report_key, r.first_seen).where(r.device_id == dev))}
        fresh = [row for row in rows if (row["report_key"], row["first_seen"]) not in known]
        added = len(fresh)
        had = {(h, _mode(e)) for h, e in conn.execute(sa.select(r.hostname, r.enforce).where(r.device_id == dev).distinct())}
        new_pairs = sorted({(row["hostname"], _mode(row["enforce"])) for row in fresh} - had)  # sorted: one lock order
        rins = upsert(conn, reports_t)
        conn.execute(rins.on_conflict_do_update(index_elements=["device_id", "report_key", "first_seen"], set_={
            "count": greatest(rins.excluded["count"], reports_t.c["count"]),
            "last_seen": greatest(rins.excluded.last_seen, reports_t.c.last_seen),
            "body": sa.case((rins.excluded.last_seen >= reports_t.c.last_seen, rins.excluded.body), else_=reports_t.c.body),
            "stored_at": rins.excluded.stored_at,
        }), rows)
        if new_pairs:  # this device reported these hosts (in these modes) for the first time
            cins = upsert(conn, mismatch_counts_t)
            conn.execute(cins.on_conflict_do_update(index_elements=["hostname", "mode"], set_={
                "devices": mismatch_counts_t.c.devices + cins.excluded.devices}),
                [{"hostname": h, "mode": m, "devices": 1} for h, m in new_pairs])
    return StoreResult(dev, added, len(rows) - added)


def _mode_sql(enforce: Any) -> Any:
    return sa.case((enforce.is_(None), sa.literal("no-rule")), (enforce == sa.true(), sa.literal("enforced")),
                   else_=sa.literal("report-only"))


def recount(reg: Registry) -> int:
    """Recomputes the devices per host and mode from the reports themselves (store_reports keeps
    them as it goes; this is for reports loaded by other means). Returns how many (host, mode)."""
    r = reports_t.c
    with reg.transaction() as conn:
        conn.execute(mismatch_counts_t.delete())
        pairs = (sa.select(r.hostname, _mode_sql(r.enforce).label("mode"), sa.func.count(sa.distinct(r.device_id)))
                 .group_by(r.hostname, r.enforce))
        conn.execute(mismatch_counts_t.insert().from_select(["hostname", "mode", "devices"], pairs))
        return conn.scalar(sa.select(sa.func.count()).select_from(mismatch_counts_t)) or 0


def lockouts_from_preflight(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The servers of a preflight report (`fleetpin preflight --json`) that would lock devices out."""
    return [{"host": str(s.get("host")), "port": int(s.get("port") or 443), "reason": s.get("lockout_reason")}
            for s in report.get("servers") or () if s.get("status") == "lockout"]


def _replace(reg: Registry, source: str, subject: str, rows: Iterable[Mapping[str, Any]], found_at: float | None) -> int:
    """The newest finding of `source` about `subject` replaces the earlier ones (none: cleared)."""
    at = reg.clock() if found_at is None else found_at
    values = [{"source": source, "subject": subject, "found_at": at, **r} for r in rows]
    with reg.transaction() as conn:
        conn.execute(lockouts_t.delete().where(lockouts_t.c.source == source, lockouts_t.c.subject == subject))
        if values:
            conn.execute(lockouts_t.insert(), values)
    return len(values)


def record_preflight(reg: Registry, bundle_sha256: str, bundle_version: int | None, report: Mapping[str, Any],
                     found_at: float | None = None) -> int:
    """Records the servers this preflight of the bundle found would lock its devices out (and
    forgets what an earlier preflight of the same bundle found). Returns how many."""
    rows = [{"bundle_version": bundle_version, "devices": None, **f} for f in lockouts_from_preflight(report)]
    return _replace(reg, PREFLIGHT, bundle_sha256, rows, found_at)


def record_drill(reg: Registry, results: Iterable[Mapping[str, Any]], found_at: float | None = None) -> int:
    """Records, per drill scenario (`fleetpin drill --json` results), the devices it left
    unreachable or blocked, counted as locked out. A scenario that locked none out clears its
    earlier finding. Returns how many scenarios locked devices out."""
    found = 0
    for r in results:
        devices = [d for d in r.get("devices") or () if isinstance(d, Mapping)]
        out = [d for d in devices if d.get("status") in LOCKED_OUT]
        rows = []
        if out:
            counts = ", ".join(f"{sum(d.get('status') == s for d in out)} {s}" for s in LOCKED_OUT
                               if any(d.get("status") == s for d in out))
            bundles = ", ".join(sorted({str(d.get("bundle")) for d in out}))
            rows.append({"host": "", "port": 0, "bundle_version": None, "devices": len(out),
                         "reason": f"{counts} of {len(devices)} devices (bundles {bundles})"})
            found += 1
        _replace(reg, DRILL, str(r.get("scenario")), rows, found_at)
    return found


# ---- fleet status ------------------------------------------------------------------------------


def _mode(enforce: bool | None) -> str:
    return "no-rule" if enforce is None else "enforced" if enforce else "report-only"


def fleet_status(reg: Registry, *, not_seen_since: float | None = None, sample: int = 10) -> dict[str, Any]:
    """What `fleetpin fleet status` shows (JSON-ready): devices per bundle version; per host and
    mode (enforced, report-only, no-rule) the devices that reported mismatches; devices not seen
    since a time; the lockouts found, with the devices (and boards still on the line) they
    concern; the line's boards per state."""
    d, r, b, lk, mc = devices_t.c, reports_t.c, boards_t.c, lockouts_t.c, mismatch_counts_t.c
    count = sa.func.count()
    with reg.transaction(write=False) as conn:
        total = conn.scalar(sa.select(count).select_from(devices_t)) or 0
        by_version = [{"bundle_version": v, "devices": n} for v, n in conn.execute(
            sa.select(d.bundle_version, count).group_by(d.bundle_version).order_by(d.bundle_version.desc().nulls_last()))]
        # the devices per host and mode are kept as reports arrive (counting them here would read
        # every report); the sample comes from the index reports_host_mode
        mismatches = []
        for host, mode, n in conn.execute(sa.select(mc.hostname, mc.mode, mc.devices).where(mc.devices > 0)
                                          .order_by(mc.devices.desc(), mc.hostname, mc.mode)):
            same_mode = {"no-rule": r.enforce.is_(None), "enforced": r.enforce == sa.true()}.get(mode, r.enforce == sa.false())
            ids = list(conn.scalars(sa.select(r.device_id).where(r.hostname == host, same_mode)
                                    .group_by(r.device_id).order_by(r.device_id).limit(sample)))
            mismatches.append({"host": host, "mode": mode, "devices": n, "sample": ids})
        stale: dict[str, Any] | None = None
        if not_seen_since is not None:
            old = d.last_seen < not_seen_since
            stale = {"since": iso8601(not_seen_since), "devices": conn.scalar(sa.select(count).select_from(devices_t).where(old)) or 0,
                     "sample": [{"device_id": i, "mac": m, "last_seen": iso8601(t)} for i, m, t in conn.execute(
                         sa.select(d.device_id, d.mac, d.last_seen).where(old).order_by(d.last_seen, d.device_id).limit(sample))]}
        lockouts = []
        seen_in_field = sa.exists().where(d.mac == b.mac)
        for row in conn.execute(sa.select(lockouts_t).order_by(lk.source.desc(), lk.subject, lk.host, lk.port)):
            entry: dict[str, Any] = {"source": row.source, "host": row.host or None, "port": row.port or None,
                                     "reason": row.reason, "found_at": iso8601(row.found_at)}
            if row.source == PREFLIGHT:
                on_bundle = d.bundle_sha256 == row.subject
                entry |= {"bundle_sha256": row.subject, "bundle_version": row.bundle_version,
                          "devices": conn.scalar(sa.select(count).select_from(devices_t).where(on_bundle)) or 0,
                          "line_boards": conn.scalar(sa.select(count).select_from(boards_t).where(
                              b.bundle_sha256 == row.subject, b.state == CONFIRMED, ~seen_in_field)) or 0,
                          "sample": list(conn.scalars(sa.select(d.device_id).where(on_bundle).order_by(d.device_id).limit(sample)))}
            else:
                entry |= {"scenario": row.subject, "devices": row.devices or 0, "line_boards": 0, "sample": []}
            lockouts.append(entry)
        line = {state: n for state, n in conn.execute(sa.select(b.state, count).group_by(b.state).order_by(b.state))}
    return {"devices": total, "by_bundle_version": by_version, "mismatches": mismatches, "not_seen": stale,
            "lockouts": lockouts, "line_boards": line}


def status_csv(status: Mapping[str, Any]) -> str:
    """A fleet_status() as one CSV table for dashboards: one row per finding, its section first."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["section", "key", "host", "port", "mode", "bundle_version", "bundle_sha256", "devices", "line_boards", "detail"])
    w.writerow(["devices", "total", "", "", "", "", "", status["devices"], "", ""])
    for v in status["by_bundle_version"]:
        w.writerow(["bundle", v["bundle_version"] if v["bundle_version"] is not None else "unknown", "", "", "", v["bundle_version"],
                    "", v["devices"], "", ""])
    for m in status["mismatches"]:
        w.writerow(["mismatch", m["host"], m["host"], "", m["mode"], "", "", m["devices"], "", " ".join(m["sample"])])
    if status.get("not_seen"):
        n = status["not_seen"]
        w.writerow(["not-seen", n["since"], "", "", "", "", "", n["devices"], "", " ".join(s["device_id"] for s in n["sample"])])
    for lk in status["lockouts"]:
        key = lk.get("scenario") or lk.get("bundle_sha256")
        w.writerow(["lockout-" + lk["source"], key, lk["host"] or "", lk["port"] or "", "", lk.get("bundle_version") or "",
                    lk.get("bundle_sha256") or "", lk["devices"], lk["line_boards"], lk["reason"] or ""])
    for state, n in status["line_boards"].items():
        w.writerow(["line", state, "", "", "", "", "", n, "", ""])
    return buf.getvalue()
