"""The report documents field technicians handle: the agent's report log (JSON lines, read with
READ_REPORTS), and what `fleetpin device reports --json` prints (the reports, the ring's
counters, and since the shared registry the device's identity and when it was read), which
`fleetpin fleet import` takes back. Parsing only: fleetpin.field.fleet stores them."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from fleetpin.errors import UsageError


def parse_report_log(log: bytes | str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(counters, reports) of the agent's report log: JSON lines, the first the ring's counters."""
    text = log.decode("utf-8", "replace") if isinstance(log, bytes) else log
    head: dict[str, Any] = {}
    entries: list[dict[str, Any]] = []
    for i, line in enumerate(text.split("\n")):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        if i == 0 and "fleetpin-reports" in obj:
            head = obj
        else:
            entries.append(obj)
    return head, entries


def parse_report_file(text: str) -> dict[str, Any]:
    """A saved report file -> {"counters", "reports", "device", "read_at"}: the document
    `fleetpin device reports --json` prints (its "device" and "read_at" are there since this
    registry; older files have neither), or the agent's log itself."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            obj = json.loads(stripped)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("reports"), list):
            device = obj.get("device") if isinstance(obj.get("device"), dict) else None
            return {"counters": obj.get("counters") or {}, "reports": list(obj["reports"]), "device": device,
                    "read_at": report_time(obj.get("read_at"))}
    head, entries = parse_report_log(stripped)
    if not head and not entries:
        raise UsageError("not a report file: neither `fleetpin device reports --json` output nor an agent's report log",
                         hint="save the reports with: fleetpin device reports --port PORT --json > FILE")
    return {"counters": head, "reports": entries, "device": None, "read_at": None}


def report_time(text: Any) -> float | None:
    """RFC 3339 UTC as the agent and this tool write it ("2026-01-01T00:00:00Z") -> POSIX seconds."""
    if not isinstance(text, str) or not text:
        return None
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()
